"""Helpers for the ring tests: record arithmetic, the control block's bytes, and module-level
targets for spawned children. Forked children that report through pipes (``Child``,
``fork_call``) come from tests/_procs.py.

The module name is specific on purpose: pytest's default import mode puts every test folder
on ``sys.path``, and a generic ``helpers.py`` elsewhere would shadow this one. Spawned
children import it by name (multiprocessing hands them the parent's ``sys.path``).
"""

from __future__ import annotations

import struct

from shmipc._native import lib

HEADER = lib.SHMIPC_RING_HEADER_SIZE
PAD_TYPE = 0xFFFFFFFF


def rec_size(n: int) -> int:
    """Bytes a record with an ``n``-byte payload occupies: align8(8 + n)."""
    return (8 + n + 7) & ~7


def payload(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that differ from one (n, seed) to the next."""
    return bytes((seed * 131 + i * 7 + n) & 0xFF for i in range(n))


def control(ring) -> memoryview:
    """The ring's 512-byte control block, writable."""
    return ring.region.buffer[ring._offset : ring._offset + HEADER]


def data_area(ring) -> memoryview:
    start = ring._offset + HEADER
    return ring.region.buffer[start : start + ring.capacity]


def read_u64(ring, off: int) -> int:
    return struct.unpack_from("<Q", control(ring), off)[0]


def write_u64(ring, off: int, value: int) -> None:
    struct.pack_into("<Q", control(ring), off, value)


def write_u32(ring, off: int, value: int) -> None:
    struct.pack_into("<I", control(ring), off, value)


def record_header(ring, index: int) -> tuple[int, int]:
    """(length, type) of the record header at data ``index``."""
    return struct.unpack_from("<II", data_area(ring), index)


# ---- targets for spawned children (must be importable by name) ---------------------------


def spawn_echo(ring, count: int, conn) -> None:
    """Get ``count`` records from ``ring`` and send them back through ``conn``."""
    got = [ring.get(timeout=20) for _ in range(count)]
    conn.send(got)
    ring.put(b"from spawn", type=7)
    conn.close()
    ring.close()
