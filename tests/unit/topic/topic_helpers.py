"""Module-level bodies for spawned children of the topic tests (spawn imports them by name)."""

from __future__ import annotations

import os
import signal
import struct
import zlib
from typing import Any

CHECKED = struct.Struct("<IIQI")  # publisher id, length of the fill, sequence number, crc32


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
