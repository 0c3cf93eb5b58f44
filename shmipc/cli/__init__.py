"""The ``shmipc`` command: see, inspect and clean what lives in /dev/shm, and measure.

shmipc ls [--json] [--all]     every segment: kind, owner, creator, users, depth, rates
shmipc inspect NAME [--json]   one segment's header, positions, statistics, sleepers...
shmipc top                     a live table of every segment's message and byte rates
shmipc rm NAME...              remove named shmipc segments
shmipc gc [--yes]              list (remove) segments nobody alive can still use
shmipc demo                    the quickstart producer/consumer job
shmipc bench [...]             shmipc beside multiprocessing, faster-fifo and pyzmq

One module per job: ``segments`` (reading /dev/shm safely), ``describe`` (decoding a
segment's bytes), ``survey`` (the rows of ls/top), ``rates`` (the state file), ``gc`` (gc
and rm), ``app`` (the click group, exit codes), ``commands``/``live``/``jobs`` (commands).
docs/cli.md documents the commands, their JSON and their exit codes.
"""

from __future__ import annotations

from .app import main
from .gc import GcReport, RmResult, collect_garbage, remove
from .segments import (
    INCOMPLETE,
    UNREADABLE,
    SegmentInfo,
    _read_entry,
    _scan_users,
    display_name,
    list_segments,
)

__all__ = [
    "INCOMPLETE",
    "UNREADABLE",
    "GcReport",
    "RmResult",
    "SegmentInfo",
    "collect_garbage",
    "display_name",
    "list_segments",
    "main",
    "remove",
]

_ = (_read_entry, _scan_users)  # kept importable for the tests of the hardening issue
