"""SPSC rings and queues under load: one producer process and one consumer process (fork, and
spawn, where the children attach by name through pickling), 200,000 sequence-numbered messages
through a 4 KiB ring, so that it wraps, pads and fills all the time; copying paths, batches,
zero-copy and mixes; a Queue(spsc=True) with objects, raw bytes, batches, a message bound and
spilled messages; and a producer thread and a consumer thread in one process.

Checked (tests/_procs.py frames every message): each message arrives exactly once, in order,
untorn. The parent puts the stop message once the producer has exited, so it takes the
producer side over from a dead process every time (nothing pending: nothing abandoned).
"""

from __future__ import annotations

import os
import threading

import pytest
from _procs import (
    check_streams,
    load_result,
    run_stress,
    send_stops,
    stress_consumer,
    stress_producer,
    wait_for,
)

from shmipc._native import lib
from shmipc.queue import Queue
from shmipc.ring import Ring

pytestmark = pytest.mark.timeout(120)

KIB4 = 4096
TOTAL = 200_000

R_COPY = (("put",), ("get",))
R_BATCH = (("put_many",), ("get_many",))
R_ZEROCOPY = (("reserve",), ("peek",))
R_MIXED = (("put", "put_many", "reserve"), ("get", "get_many", "peek"))
Q_COPY = (("put", "put_obj"), ("get",))
Q_BATCH = (("put_many",), ("get_many",))
Q_MIXED = (("put", "put_obj", "put_many", "reserve"), ("get", "get_many", "peek"))
Q_SPILL = (("put", "put_obj", "put_many", "spill"), ("get", "get_many"))
NAMES = {
    R_COPY: "copy",
    R_BATCH: "batch",
    R_ZEROCOPY: "zerocopy",
    R_MIXED: "mixed",
    Q_COPY: "copy",
    Q_BATCH: "batch",
    Q_MIXED: "mixed",
    Q_SPILL: "mixed+spill",
}

# (kind, start method, maxsize, (producer ops, consumer ops), messages)
CASES = [
    ("ring", "fork", 0, R_COPY, TOTAL),
    ("ring", "fork", 0, R_BATCH, TOTAL),
    ("ring", "fork", 0, R_ZEROCOPY, TOTAL),
    ("ring", "spawn", 0, R_COPY, TOTAL),
    ("ring", "spawn", 0, R_BATCH, TOTAL),
    ("ring", "spawn", 0, R_MIXED, TOTAL),
    ("queue", "fork", 0, Q_COPY, TOTAL),
    ("queue", "fork", 16, Q_MIXED, TOTAL),
    ("queue", "spawn", 0, Q_BATCH, TOTAL),
    ("queue", "spawn", 0, Q_SPILL, 100_000),
]


def _id(case) -> str:
    kind, method, maxsize, ops, _ = case
    return f"{kind}-{method}{f'-maxsize{maxsize}' if maxsize else ''}-{NAMES[ops]}"


def _ring_of(chan) -> Ring:
    return chan if isinstance(chan, Ring) else chan._live_ring()


def _check_stats(ring: Ring, total: int) -> None:
    stats = ring.statistics()
    assert stats.messages_in == stats.messages_out == total + 1  # + the stop message
    assert stats.bytes_in == stats.bytes_out
    assert (stats.depth, stats.depth_bytes) == (0, 0)
    assert (stats.abandoned, stats.consumers_recovered) == (0, 0)
    assert (stats.revoked, stats.quarantined) == (0, 0)
    assert stats.producer_waits > 0  # the 4 KiB ring really filled up
    # The producer side is the parent's now (it put the stop message after taking it over).
    word = lib.shmipc_load64_acquire(ring._ptr, lib.SHMIPC_RING_OFF_P_LOCK)
    assert word == lib.shmipc_lock_identity()


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_spsc_exactly_once_in_order(case, tmp_path):
    kind, method, maxsize, (p_ops, c_ops), total = case
    # Named: spawned children attach it by name (pickled); forked ones inherit it.
    chan = (
        Ring.create(KIB4, spsc=True) if kind == "ring" else Queue(maxsize, capacity=KIB4, spsc=True)
    )
    try:
        assert _ring_of(chan).spsc
        out = run_stress(kind, chan, method, 1, 1, p_ops, c_ops, total, str(tmp_path), 13)
        assert not out["problems"], out["problems"]
        (res,) = out["results"]
        assert list(res["stream"]) == list(range(total))  # producer 0: seq 0, 1, 2, ...
        _check_stats(_ring_of(chan), total)
        print(f"{_id(case)}: {out['elapsed']:.2f} s, {_ring_of(chan).statistics()}")
    finally:
        chan.close()


@pytest.mark.parametrize("kind", ["ring", "queue"])
def test_spsc_threads_in_one_process(kind, tmp_path):
    """A producer thread and a consumer thread of one process (waits release the GIL)."""
    chan = Ring.create(KIB4, spsc=True) if kind == "ring" else Queue(capacity=KIB4, spsc=True)
    ring = _ring_of(chan)
    p_ops, c_ops = R_MIXED if kind == "ring" else Q_MIXED
    path = os.path.join(str(tmp_path), "consumer.pickle")
    errors: list[BaseException] = []

    def run(fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as exc:
            errors.append(exc)

    consumer = threading.Thread(
        target=run, args=(stress_consumer, kind, chan, c_ops, 5, path), daemon=True
    )
    producer = threading.Thread(
        target=run, args=(stress_producer, kind, chan, 0, TOTAL, p_ops, 6), daemon=True
    )
    try:
        consumer.start()
        producer.start()
        producer.join(90)
        assert not producer.is_alive() and not errors, errors
        # The producer thread has ended; its OS thread goes a moment later (Thread.join
        # returns first: see test_takeover_right_after_join in tests/unit/ring/test_spsc.py).
        # The stop message below then takes the producer side over from it.
        word = lib.shmipc_load64_acquire(ring._ptr, lib.SHMIPC_RING_OFF_P_LOCK)
        tid = word & 0xFFFFFFFF & ~lib.SHMIPC_LOCK_PARKED
        wait_for(lambda: not os.path.exists(f"/proc/self/task/{tid}"), what="thread exit")
        send_stops(kind, chan, 1)
        consumer.join(90)
        assert not consumer.is_alive() and not errors, errors
        res = load_result(path)
        assert check_streams([res["stream"]], [TOTAL]) == []
        assert list(res["stream"]) == list(range(TOTAL))
        _check_stats(ring, TOTAL)
    finally:
        chan.close()  # a thread still inside a call keeps the mapping alive (daemon threads)
