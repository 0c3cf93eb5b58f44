"""Benchmarks: shmipc beside multiprocessing.Queue/Pipe, faster-fifo and pyzmq, in one run.

``python -m shmipc.bench`` (or ``shmipc.bench.main(argv)``) runs every workload over every
transport that imports, each producer and consumer in its own forked process, verifies that
every message arrived exactly once, and prints a table of rates, CPU per message and ratios
to ``multiprocessing.Queue``. Modules, one job each: ``verify`` (sequence numbers, the exactly-
once check), ``transports`` (adapters), ``workloads`` (the loops), ``fanout`` (one publisher
to many subscriber processes: Topic, pyzmq XPUB/SUB, iceoryx2), ``arrays`` (round trips of
large arrays: pool loans and copies, mp.Queue, shared_memory, pyzmq, iceoryx2, memcpy),
``harness`` (processes, timing, timeouts, sizing), ``report`` (the tables), ``machine`` (what
it ran on), ``cli``.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
