"""Module-level bodies for spawned children of the topic tests (spawn imports them by name)."""

from __future__ import annotations

import os
import signal
import struct
import zlib
from typing import Any

CHECKED = struct.Struct("<IIQI")  # publisher id, length of the fill, sequence number, crc32


_PATTERN = bytes(range(256)) * 2


def _fill(pub: int, seq: int, n: int) -> bytes:
    start = (pub * 31 + seq * 7) & 0xFF
    reps = _PATTERN[start : start + 256] * (n // 256 + 1)
    return reps[:n]


def checked(pub: int, seq: int, n: int) -> bytes:
    """A payload that proves itself: header, fill derived from (pub, seq), crc32 of both."""
    fill = bytes((pub * 31 + seq * 7 + i) & 0xFF for i in range(n))
    head = struct.pack("<IIQ", pub, n, seq)
    return head + struct.pack("<I", zlib.crc32(head + fill)) + fill


def verify(payload: bytes) -> tuple[int, int]:
    """(publisher, seq) of a payload made by ``checked``; AssertionError if it is not one."""
    pub, n, seq, crc = CHECKED.unpack_from(payload)
    fill = payload[CHECKED.size :]
    assert len(fill) == n, f"length {len(fill)} != {n}"
    assert zlib.crc32(payload[:16] + fill) == crc, f"torn payload (pub {pub}, seq {seq})"
    assert fill == bytes((pub * 31 + seq * 7 + i) & 0xFF for i in range(n)), "wrong fill"
    return pub, seq


def spawned_receiver(topic: Any, ready: Any, n: int, out: Any) -> None:
    """Subscribe (in a spawned child that got ``topic`` by pickle), say so, receive n."""
    sub = topic.subscribe()
    ready.set()
    got = [sub.receive(timeout=30) for _ in range(n)]
    out.put((topic.codec.name, got))
    sub.close()
    topic.close()


def stop_self() -> None:
    os.kill(os.getpid(), signal.SIGSTOP)


def receive_all(sub: Any, total: int, timeout: float = 30.0) -> dict[int, int]:
    """Receive ``total`` checked payloads; every publisher's sequence numbers must come as
    0, 1, 2, ...: returns {publisher: count}. AssertionError on a gap, repeat or torn one."""
    expect: dict[int, int] = {}
    for _ in range(total):
        pub, seq = verify(sub.receive_bytes(timeout=timeout))
        assert seq == expect.get(pub, 0), (
            f"publisher {pub}: seq {seq}, expected {expect.get(pub, 0)}"
        )
        expect[pub] = seq + 1
    return expect
