"""A live topic whose shared words a hostile or broken peer overwrites (issue 8).

Every shared word of the control block and of the subscriber table, the records' headers
and random bytes anywhere in the topic are overwritten while other processes publish,
subscribe, receive, close, take statistics and inspect the segment. The contract: every call
succeeds or raises a typed error (``shmipc.ShmipcError`` and its subclasses, ``queue.Empty``,
``queue.Full``); never a crash (a death by signal), a hang, or a read outside the mapping.
Everything that touches the scribbled topic runs in forked children."""

from __future__ import annotations

import os
import queue
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from _procs import Procs, fork_call, typed_errors_only

from shmipc import ShmipcError, Topic
from shmipc.topic import CONTROL, HEADER_SIZE, SLOT, SLOT_SIZE, inspect_segment

pytestmark = pytest.mark.timeout(120)

CAP = 4096
MAX_SUBS = 4
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
HOSTILE = (0, 1, 8, 16, CAP - 16, CAP, CAP + 16, 1 << 31, 1 << 40, 2**63, 2**64 - 16, 2**64 - 1)


def _fields() -> list[tuple[int, int]]:
    """(offset in the topic, width) of every shared word: control block and slot table."""
    out = [(f.offset, f.size) for f in CONTROL.fields.values() if f.size in (4, 8)]
    out.append((CONTROL["lock"], 8))
    out.append((CONTROL["lock"] + 8, 4))
    for i in range(MAX_SUBS):
        base = HEADER_SIZE + i * SLOT_SIZE
        out += [(base + f.offset, f.size) for f in SLOT.fields.values()]
    return out


FIELDS = _fields()
DATA = HEADER_SIZE + MAX_SUBS * SLOT_SIZE


def _ops(t: Topic) -> tuple[list, list]:
    subs: list = []
    pub = t.publisher()

    def subscribe(rng: random.Random) -> None:
        if len(subs) < 2:
            try:
                subs.append(t.subscribe(timeout=0.05))
            except TimeoutError:
                pass

    def receive(rng: random.Random) -> None:
        if subs:
            rng.choice(subs).receive(timeout=rng.choice((0, 0.01)))

    def receive_many(rng: random.Random) -> None:
        if subs:
            rng.choice(subs).receive_many(rng.randint(1, 8), timeout=0)

    def close_one(rng: random.Random) -> None:
        if subs:
            subs.pop(rng.randrange(len(subs))).close()

    def look(rng: random.Random) -> None:
        t.statistics()
        if subs:
            subs[0].lag  # noqa: B018
        inspect_segment(memoryview(t._mapping))

    def publish(rng: random.Random) -> None:
        pub.publish_bytes(os.urandom(rng.choice((0, 1, 50, 700, CAP // 2 - 16))), timeout=0.01)

    def publish_obj(rng: random.Random) -> None:
        pub.publish({"k": rng.random()}, timeout=0)

    def publish_many(rng: random.Random) -> None:
        pub.publish_many([b"x" * rng.randint(0, 300) for _ in range(rng.randint(1, 6))], timeout=0)

    def recover(rng: random.Random) -> None:
        t.recover()

    return [subscribe, receive, receive_many, close_one, look, recover], [
        publish,
        publish_obj,
        publish_many,
        subscribe,
        receive,
        recover,
    ]


def _scribble(t: Topic, seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    buf = memoryview(t._mapping)[t._map_off :]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        what = rng.random()
        if what < 0.4:  # a shared word, a hostile value
            off, width = rng.choice(FIELDS)
            v = rng.choice(HOSTILE) if rng.random() < 0.7 else rng.getrandbits(64)
            if width == 8:
                _U64.pack_into(buf, off, v % 2**64)
            else:
                _U32.pack_into(buf, off, v % 2**32)
        elif what < 0.6:  # a record header
            idx = DATA + rng.randrange(CAP // 16) * 16
            _U32.pack_into(buf, idx, rng.choice((0, 16, CAP // 2, CAP, 2**31, rng.getrandbits(32))))
            _U32.pack_into(buf, idx + 4, rng.choice((1, 2, 0xFFFF, 0x10000, 0xFFFFFFFF)))
            _U64.pack_into(buf, idx + 8, rng.getrandbits(64))
        elif what < 0.85:  # random bytes anywhere in the topic
            off = rng.randrange(len(buf) - 16)
            k = rng.randint(1, 16)
            buf[off : off + k] = os.urandom(k)
        else:  # a consistent-looking reset, so that the others get going again
            pos = rng.randrange(1 << 20) * 16
            for name in ("tail", "oldest", "room"):
                _U64.pack_into(buf, CONTROL[name], pos + (CAP if name == "room" else 0))
            for i in range(MAX_SUBS):
                _U64.pack_into(buf, HEADER_SIZE + i * SLOT_SIZE, 0)
            _U64.pack_into(buf, CONTROL["lock"], 0)
        time.sleep(rng.uniform(0, 0.0005))


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_scribbled_live_topic_gives_typed_errors_only(procs: Procs, policy: str):
    seconds = 2.0
    with Topic.create(capacity=CAP, policy=policy, max_subscribers=MAX_SUBS) as t:

        def run(which: int, seed: int) -> None:
            ops = _ops(t)[which]
            typed_errors_only(ops, seconds + 0.5, seed)

        reader = procs.fork(lambda: run(0, 1))
        writer = procs.fork(lambda: run(1, 2))
        scribbler = procs.fork(lambda: _scribble(t, seconds, 3))
        assert procs.join(scribbler, 30) == 0
        codes = {"reader": procs.join(reader, 60), "writer": procs.join(writer, 60)}
        assert codes == {"reader": 0, "writer": 0}, (
            f"exit codes {codes} (negative: killed by that signal; 3: an untyped error)"
        )


def _steps(t: Topic, pub: Any, sub: Any) -> list[Callable[[], object]]:
    return [
        lambda: pub.publish_bytes(b"y" * 100, timeout=0.01),
        lambda: sub and sub.receive(timeout=0),
        lambda: sub and sub.receive_many(4, timeout=0),
        lambda: t.subscribe(timeout=0.02).close(),
        t.statistics,
        lambda: inspect_segment(memoryview(t._mapping)),
        t.recover,
        lambda: sub and sub.close(),
    ]


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_every_shared_word_with_every_hostile_value(policy: str):
    """Each shared word in turn holds each hostile value while every operation runs once;
    in a forked child, which must end with exit 0 (no signal, no untyped error)."""

    def body(fd: int) -> None:
        with Topic.create(capacity=CAP, policy=policy, max_subscribers=MAX_SUBS) as t:
            buf = memoryview(t._mapping)[t._map_off :]
            pristine = bytes(buf[:DATA])
            untyped = []
            for off, width in FIELDS:
                for v in HOSTILE:
                    buf[:DATA] = pristine
                    pub = t.publisher()
                    try:
                        sub = t.subscribe(timeout=0.05)
                    except (ShmipcError, TimeoutError):
                        sub = None
                    pub.publish_bytes(b"ok", timeout=0)
                    if width == 8:
                        _U64.pack_into(buf, off, v % 2**64)
                    else:
                        _U32.pack_into(buf, off, v % 2**32)
                    for step in _steps(t, pub, sub):
                        try:
                            step()
                        except (ShmipcError, queue.Empty, queue.Full, TimeoutError):
                            pass
                        except Exception as exc:
                            untyped.append(f"{off}={v}: {exc!r}")
                    pub.close()
                    if sub:
                        sub.close()
            os.write(fd, "\n".join(untyped[:10]).encode())

    code, report = fork_call(body, timeout=100)
    assert code == 0, f"child ended with {code} (negative: a signal)"
    assert report == b"", report.decode()
