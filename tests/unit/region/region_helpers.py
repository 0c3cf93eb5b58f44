"""Helpers for the region tests: raw writes into a segment's bytes, and a look at how much of
a mapping is resident. Forked children that report through pipes (``fork_call``) come from
tests/_procs.py.

Imported by tests/unit/region and tests/fault (which puts this folder on ``sys.path``). The
module name is specific on purpose: pytest's default import mode puts every test folder on
``sys.path``, and a generic ``helpers.py`` elsewhere would shadow this one.
"""

from __future__ import annotations

import os
import struct

from shmipc._native import ffi
from shmipc.layout import SEGMENT_LAYOUT
from shmipc.region import Region

SHM_DIR = "/dev/shm"


def segment_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def segment_exists(name: str) -> bool:
    return os.path.exists(segment_path(name))


def scribble(name: str, offset: int, data: bytes) -> None:
    """Overwrite bytes of segment ``name`` at ``offset`` as a foreign process would."""
    fd = os.open(segment_path(name), os.O_RDWR)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
    finally:
        os.close(fd)


def scribble_field(name: str, field: str, value: int | bytes) -> None:
    """Overwrite one field of the common header (see shmipc.layout) with ``value``."""
    f = SEGMENT_LAYOUT.fields[field]
    data = value if isinstance(value, bytes) else struct.pack("<" + f.fmt, value)
    assert len(data) == f.size
    scribble(name, f.offset, data)


def header_bytes(name: str) -> bytes:
    with open(segment_path(name), "rb") as f:
        return f.read(SEGMENT_LAYOUT.size)


def resident_kib(region: Region) -> int:
    """Resident KiB of ``region``'s mapping in this process (Rss in /proc/self/smaps)."""
    addr = int(ffi.cast("uintptr_t", region._base))
    with open("/proc/self/smaps") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        first = line.split()[0]
        if "-" in first and int(first.split("-")[0], 16) == addr:
            for entry in lines[i + 1 :]:
                if entry.startswith("Rss:"):
                    return int(entry.split()[1])
    raise AssertionError(f"no mapping at {addr:#x} in /proc/self/smaps")


def spawn_writer(region: Region, data: bytes, offset: int) -> None:
    """Target of a spawn-context child: ``region`` arrived pickled (by name)."""
    assert region.name is not None and not region.owner
    region.buffer[offset : offset + len(data)] = data
    region.close()
