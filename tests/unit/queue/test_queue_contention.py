"""Contention on a side lock (issue 7, items 5 and 6; docs/queue.md, "Blocking and the GIL").

* A non-blocking call fails only on a full (``put_nowait``) or empty (``get_nowait``) ring,
  never because another thread held the side's lock for a moment: it waits for that holder.
* A timed call honours its deadline while the lock keeps changing hands.
* No side lock is held while its taker waits for the GIL: a consumer woken in a process whose
  GIL a CPU-bound thread holds must not keep consumers of other processes waiting.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time

import pytest
from _procs import read_exact, wait_for

from shmipc import Queue
from shmipc._native import lib

pytestmark = pytest.mark.timeout(120)


def _hammer(q: Queue, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(100):
            q.put_bytes(b"h" * 16, timeout=30)
            q.get_bytes(timeout=30)


@pytest.mark.parametrize("maxsize", [0, 64])
def test_nowait_calls_fail_only_on_a_full_or_empty_ring(procs, maxsize):
    """Two other processes put then get, so the producer and consumer locks change hands all
    the time, while the queue never holds more than three messages: this process's put_nowait
    must never raise Full, and its get_nowait (after its own put) never Empty."""
    q = Queue(maxsize=maxsize)
    seconds = 3.0
    hammers = [procs.fork(lambda: _hammer(q, seconds)) for _ in range(2)]
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline or n < 2000:
        q.put_nowait(b"mine")  # never Full: at most three messages in a queue of 64+
        q.get_nowait()  # never Empty: every process puts before it gets
        n += 1
    for pid in hammers:
        assert procs.join(pid) == 0
    q.close()


def _put_forever(q: Queue, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put_bytes(b"p" * 32, timeout=0.5)
        except queue.Full:
            pass


def _drain(q: Queue, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.get_many(8, timeout=0.5)
        except queue.Empty:
            pass


def test_a_timed_put_honours_its_deadline_while_the_lock_changes_hands():
    """Eight threads keep a small ring full while one drains it: the producer lock and the
    room change hands constantly. A put(timeout=0.01) must come back (stored or Full) within
    a bounded time, however often it sees the lock or the room move."""
    q = Queue(capacity=4096)
    stop = threading.Event()
    threads = [threading.Thread(target=_put_forever, args=(q, stop)) for _ in range(8)]
    threads.append(threading.Thread(target=_drain, args=(q, stop)))
    for t in threads:
        t.start()
    try:
        worst = 0.0
        for _ in range(50):
            t0 = time.monotonic()
            try:
                q.put_bytes(b"x" * 32, timeout=0.01)
            except queue.Full:
                pass
            worst = max(worst, time.monotonic() - t0)
        assert worst < 2.0
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    q.close()


# ---- no side lock held while the GIL is awaited ----------------------------------------------

SWITCH_INTERVAL = 5.0  # the GIL-starved thread waits this long for the GIL


def _starved_caller(q: Queue, op: str, w: int) -> None:
    """A thread blocked in a call (q.get, get_bytes, get_many, put_many) without the GIL,
    then a CPU-bound thread that keeps the GIL for SWITCH_INTERVAL at a time: once woken, the
    blocked thread waits that long for the GIL."""
    calls = {
        "get": lambda: q.get(),
        "get_bytes": lambda: q.get_bytes(),
        "get_many": lambda: q.get_many(10),
        "put_many": lambda: q.put_many([b"first", b"second"]),
    }
    consumer = threading.Thread(target=calls[op], daemon=True)
    consumer.start()
    sys.setswitchinterval(SWITCH_INTERVAL)

    def spin() -> None:
        os.write(w, b"C")
        x = 0
        while True:
            x += 1

    threading.Thread(target=spin, daemon=True).start()
    consumer.join()


def _lock(q: Queue, producer: bool) -> int:
    off = lib.SHMIPC_RING_OFF_P_LOCK if producer else lib.SHMIPC_RING_OFF_C_LOCK
    return lib.shmipc_load64_acquire(q._ring._ptr, off)


def _sleepers(q: Queue, producer: bool) -> int:
    off = lib.SHMIPC_RING_OFF_SPACE_WAITERS if producer else lib.SHMIPC_RING_OFF_DATA_WAITERS
    return lib.shmipc_load32_relaxed(q._ring._ptr, off)


@pytest.mark.parametrize("op", ["get", "get_bytes", "get_many", "put_many"])
def test_a_caller_starved_of_its_gil_holds_no_lock(procs, op):
    """A process's consumer (producer) is woken by a message (by room) while a CPU-bound
    thread of that process holds its GIL, for seconds (its switch interval). It must not hold
    the side's lock meanwhile: a consumer in another process takes the message at once (for
    put_many: the first message, which the woken producer stored before it awaited the GIL)."""
    producer = op.startswith("put")
    q = Queue(maxsize=1 if producer else 0)
    if producer:
        q.put_bytes(b"filler")
    r, w = os.pipe()
    child = procs.fork(lambda: _starved_caller(q, op, w))
    try:
        assert read_exact(r, 1, 30) == b"C"  # the CPU-bound thread runs
        wait_for(lambda: _sleepers(q, producer) == 1, 30, "the child's thread asleep in the call")
        if producer:
            assert q.get_bytes(timeout=5) == b"filler"
        else:
            q.put_bytes(b"first")
        wait_for(lambda: _sleepers(q, producer) == 0, 30, "the child's thread woken")
        # Woken, the child's thread now waits for its GIL, for seconds, holding no lock: the
        # message is this process's to take at once. (Unless the child's thread had already
        # left the port for its slow path, as it does when a wait slice ends: that one takes
        # a record whole without the GIL, so it may have got it, and still holds nothing.)
        limit = time.monotonic() + SWITCH_INTERVAL / 2
        while True:
            try:
                assert q.get_bytes(block=False) == b"first"
                break
            except queue.Empty:
                if q.statistics().messages_out == 1 + producer and _lock(q, producer) == 0:
                    break  # taken whole by the child's slow path
            assert time.monotonic() < limit, "the woken caller holds its side while starved"
    finally:
        procs.kill(child)
        os.close(r)
        os.close(w)
    q.close()
