"""SPSC rings and queues (``spsc=True``): each side's lock is a role that the first thread to
use that side keeps between calls. Checked: round trips on every path, the ``spsc`` flag as
creators, attachers and children see it, the refusal of a second thread (RuntimeError at once,
the ring untouched) for every Ring and Queue method of each side, takeover once the holder
thread has ended, ``close()`` giving up the caller's sides (and only its own), zero-copy
misuse on the holder thread, and blocking waits (timeouts, wakes) on an SPSC ring."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import queue
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from _procs import asleep_in_futex, fork_call, read_exact_or_fail, wait_for
from ring_helpers import control, data_area, payload, rec_size

import shmipc.ring as ring_module
from shmipc import Queue, Region, _spill
from shmipc._native import lib
from shmipc.layout import Kind
from shmipc.ring import SCRATCH_SIZE, Ring

pytestmark = pytest.mark.timeout(60)

SPSC_MSG = "single-producer/single-consumer"
TIMEOUT = 0.05  # waits that must time out (shorter than a 100 ms wait slice: one wait each)
REFUSED_WITHIN = 1.0  # a refused call returns at once, whatever its timeout (5 s below)
OFF_P_LOCK = lib.SHMIPC_RING_OFF_P_LOCK
OFF_C_LOCK = lib.SHMIPC_RING_OFF_C_LOCK


# ---- helpers ----------------------------------------------------------------------------------


def _thread_gone(tid: int) -> bool:
    return not os.path.exists(f"/proc/self/task/{tid}")


class Worker:
    """A thread that runs the calls it is handed, one at a time, until ``stop()``: a side of an
    SPSC ring it takes stays its own meanwhile. ``stop()`` returns once the OS thread is gone
    (``Thread.join`` returns a little before that, while the lock word still names a live
    thread: see test_takeover_right_after_join)."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        self._stopped = False
        self.tid: int = self.call(threading.get_native_id)

    def _loop(self) -> None:
        while True:
            fn = self._calls.get()
            if fn is None:
                return
            try:
                self._results.put((True, fn()))
            except BaseException as exc:
                self._results.put((False, exc))

    def submit(self, fn: Callable[[], Any]) -> None:
        self._calls.put(fn)

    def result(self, timeout: float = 10.0) -> Any:
        ok, value = self._results.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        self.submit(fn)
        return self.result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._calls.put(None)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "worker thread still running"
        wait_for(lambda: _thread_gone(self.tid), timeout, what="the worker's OS thread to end")


@pytest.fixture
def workers():
    """Make workers with ``workers()``; all are stopped at teardown."""
    made: list[Worker] = []

    def make() -> Worker:
        w = Worker()
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()


def _in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` run in a fresh thread that has ended (OS thread gone) when this returns."""
    w = Worker()
    try:
        return w.call(fn)
    finally:
        w.stop()


def _snapshot(ring: Ring) -> tuple[bytes, bytes, Any]:
    """Everything a call could change: control block, data area, statistics."""
    return bytes(control(ring)), bytes(data_area(ring)), ring.statistics()


def _assert_refused(
    ring: Ring, run: Callable[[Callable[[], Any]], Any], fn, quiet: bool = True
) -> None:
    """``run(fn)`` (fn called on a thread that holds no side) raises the SPSC RuntimeError at
    once, and leaves the ring exactly as it was: every byte, if nobody else is using it
    (``quiet``), else its statistics (a waiting holder registers and unregisters as a
    sleeper meanwhile)."""
    before = _snapshot(ring)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=SPSC_MSG):
        run(fn)
    assert time.monotonic() - start < REFUSED_WITHIN
    after = _snapshot(ring)
    assert after[2] == before[2]
    if quiet:
        assert after[0] == before[0]  # locks, positions, caches, counters: not a byte changed
        assert after[1] == before[1]


def _record_spills(monkeypatch) -> list[str]:
    """The names of the spill segments this process makes from now on."""
    names: list[str] = []
    real = _spill.random_name

    def recording(*args: Any, **kwargs: Any) -> str:
        names.append(real(*args, **kwargs))
        return names[-1]

    monkeypatch.setattr(_spill, "random_name", recording)
    return names


def _left(names: list[str]) -> list[str]:
    return [n for n in names if os.path.exists(f"/dev/shm/{n}")]


def _lock_word(ring: Ring, off: int) -> int:
    return lib.shmipc_load64_acquire(ring._ptr, off)


def _holder_tid(ring: Ring, off: int) -> int:
    """The thread id a side's lock word names (0: free), whether or not the word is parked
    (bit 31, set on the producer side while a reservation is out)."""
    return _lock_word(ring, off) & 0xFFFFFFFF & ~lib.SHMIPC_LOCK_PARKED


# ---- the spsc flag ----------------------------------------------------------------------------


def test_spsc_property_of_every_constructor(shm_name):
    with Ring.create(256, name=shm_name, spsc=True) as r:
        assert r.spsc is True
    with Ring.create(256) as r:
        assert r.spsc is False
    with Ring.anonymous(256, spsc=True) as r:
        assert r.spsc is True
    with Ring.anonymous(256) as r:
        assert r.spsc is False
    region = Region.anonymous(2 * Ring.footprint(256))
    try:
        a = Ring.at(region, 0, create=True, capacity=256, spsc=True)
        b = Ring.at(region, Ring.footprint(256), create=True, capacity=256)
        assert (a.spsc, b.spsc) == (True, False)
        # Binding an existing ring reads the flag from shared memory; spsc= is for create.
        assert Ring.at(region, 0, create=False).spsc is True
        assert Ring.at(region, Ring.footprint(256), create=False, spsc=True).spsc is False
        assert lib.shmipc_load32_relaxed(a._ptr, lib.SHMIPC_RING_OFF_FLAGS) == 1
        assert lib.shmipc_load32_relaxed(b._ptr, lib.SHMIPC_RING_OFF_FLAGS) == 0
        a.close()
        b.close()
    finally:
        region.close()
    with Queue(capacity=4096, spsc=True) as q:
        assert q._live_ring().spsc is True
    with Queue(capacity=4096) as q:
        assert q._live_ring().spsc is False


@pytest.mark.parametrize("spsc", [True, False])
def test_attach_and_pickle_see_the_flag(shm_name, spsc):
    with Ring.create(1024, name=shm_name, spsc=spsc) as ring:
        other = Ring.attach(shm_name)
        clone = pickle.loads(pickle.dumps(ring))
        try:
            assert other.spsc is spsc and clone.spsc is spsc
        finally:
            other.close()
            clone.close()
    with Queue(capacity=4096, spsc=spsc) as q:
        other_q = Queue.attach(q.name)
        clone_q = pickle.loads(pickle.dumps(q))
        try:
            assert other_q._live_ring().spsc is spsc
            assert clone_q._live_ring().spsc is spsc
            # Same segment as Ring.attach sees it.
            raw = Ring.attach(q.name, kind=Kind.QUEUE)
            assert raw.spsc is spsc
            raw.close()
        finally:
            other_q.close()
            clone_q.close()


def test_non_spsc_ring_lets_any_thread_use_either_side():
    with Ring.anonymous(1024) as ring:
        ring.put(b"main")
        assert ring.get() == b"main"
        _in_thread(lambda: ring.put(b"thread"))
        assert _in_thread(ring.get) == b"thread"
        assert ring.statistics().consumers_recovered == 0
        assert _lock_word(ring, OFF_P_LOCK) == _lock_word(ring, OFF_C_LOCK) == 0


# ---- round trips ------------------------------------------------------------------------------


@pytest.fixture(params=["create", "anonymous", "at"])
def spsc_ring(request, shm_name):
    """A 256-byte SPSC ring made each way (small: records wrap and pad)."""
    region = None
    if request.param == "create":
        ring = Ring.create(256, name=shm_name, spsc=True)
    elif request.param == "anonymous":
        ring = Ring.anonymous(256, spsc=True)
    else:
        region = Region.anonymous(64 + Ring.footprint(256))
        ring = Ring.at(region, 64, create=True, capacity=256, spsc=True)
    yield ring
    ring.close()
    if region is not None:
        region.close()


def test_ring_round_trips_on_one_thread(spsc_ring):
    ring = spsc_ring
    assert ring.spsc
    me = threading.get_native_id()
    # put_many / get_many from position 0: the batch splits where the ring fills
    batch = [payload(20, i) for i in range(12)]  # 32 bytes a record: 8 fit in 256
    with pytest.raises(queue.Full, match="8 of 12 items"):
        ring.put_many(batch, timeout=TIMEOUT)
    assert ring.get_many(5) == batch[:5]
    assert ring.get_many(10) == batch[5:8]
    ring.put_many(batch[8:], type=9)
    assert ring.get_many_records(10) == [(9, p) for p in batch[8:]]
    assert _holder_tid(ring, OFF_P_LOCK) == me and _holder_tid(ring, OFF_C_LOCK) == me
    # put / get / get_record, across wraps and padding
    sent = [payload(n, i) for i, n in enumerate([0, 1, 7, 8, 9, 100, 120, 50, 3, 119] * 3)]
    for i, p in enumerate(sent):
        ring.put(p, type=i % 5)
        rtype, got = ring.get_record()
        assert (rtype, got) == (i % 5, p)
    # reserve / commit / abort
    view = ring.reserve(10, type=4)
    view[:] = b"0123456789"
    ring.commit()
    ring.reserve(30)[:] = bytes(30)
    ring.abort()
    ring.reserve(0)
    ring.commit()
    assert ring.get_record() == (4, b"0123456789")
    assert ring.get_record() == (0, b"")
    # peek / release / unpeek
    ring.put(b"peeked", type=2)
    ring.put(b"next")
    view = ring.peek()
    assert (bytes(view), ring.peeked_type) == (b"peeked", 2)
    ring.unpeek()
    view = ring.peek()
    assert bytes(view) == b"peeked"
    ring.release()
    assert bytes(ring.peek()) == b"next"
    ring.release()
    with pytest.raises(queue.Empty):
        ring.get(block=False)
    n_msgs = len(sent) + len(batch) + 2 + 2
    n_bytes = sum(map(len, sent)) + sum(map(len, batch)) + 10 + len(b"peekednext")
    stats = ring.statistics()
    assert (stats.messages_in, stats.messages_out) == (n_msgs, n_msgs)
    assert (stats.bytes_in, stats.bytes_out) == (n_bytes, n_bytes)
    assert (stats.depth, stats.depth_bytes) == (0, 0)
    assert (stats.abandoned, stats.consumers_recovered) == (0, 0)
    # Still both sides' holder: the roles stayed with this thread through all of it.
    assert _holder_tid(ring, OFF_P_LOCK) == me and _holder_tid(ring, OFF_C_LOCK) == me


def test_ring_producer_thread_to_consumer_thread(workers):
    """One thread puts (put, put_many, reserve), the main thread gets (get, get_many, peek):
    5000 records through 1 KiB, in order."""
    ring = Ring.anonymous(1024, spsc=True)
    producer = workers()
    n = 5000

    def produce() -> None:
        seq = 0
        while seq < n:
            if seq % 3 == 0:
                ring.put(struct.pack("<I", seq) + bytes(seq % 40), timeout=10)
                seq += 1
            elif seq % 3 == 1:
                k = min(7, n - seq)
                ring.put_many(
                    [struct.pack("<I", s) + bytes(s % 40) for s in range(seq, seq + k)],
                    timeout=10,
                )
                seq += k
            else:
                rec = struct.pack("<I", seq) + bytes(seq % 40)
                ring.reserve(len(rec), timeout=10)[:] = rec
                ring.commit()
                seq += 1

    try:
        producer.submit(produce)
        got: list[int] = []
        while len(got) < n:
            if len(got) % 2:
                got += [struct.unpack_from("<I", m)[0] for m in ring.get_many(9, timeout=10)]
            else:
                view = ring.peek(timeout=10)
                got.append(struct.unpack_from("<I", view)[0])
                assert len(view) == 4 + got[-1] % 40
                ring.release()
        producer.result()
        assert got == list(range(n))
        assert _holder_tid(ring, OFF_P_LOCK) == producer.tid
        assert _holder_tid(ring, OFF_C_LOCK) == threading.get_native_id()
        stats = ring.statistics()
        assert stats.messages_in == stats.messages_out == n
        assert stats.producer_waits > 0  # the 1 KiB ring did fill up
    finally:
        producer.stop()
        ring.close()


def test_queue_round_trips(monkeypatch):
    spills = _record_spills(monkeypatch)
    with Queue(capacity=4096, spsc=True) as q:
        q.put({"a": [1, 2]})
        q.put_bytes(b"raw")
        q.put(b"bytes as is")
        q.put_nowait(("t", 1))
        assert q.get() == {"a": [1, 2]}
        assert q.get_bytes() == b"raw"
        assert q.get_nowait() == b"bytes as is"
        assert q.get(timeout=1) == ("t", 1)
        q.put_many([1, b"two", "three", None])
        assert q.get_many(10) == [1, b"two", "three", None]
        view = q.reserve(5)
        view[:] = b"hello"
        q.commit()
        q.reserve(9)
        q.abort()
        view = q.peek()
        assert bytes(view) == b"hello"
        q.release()
        q.put("x")
        assert bytes(q.peek()) == q.codec.encode("x")
        q.release()
        big = payload(5000, 3)  # above half the ring: spilled to a side segment
        q.put(big)
        q.put_many([b"small", big])
        assert q.get() == big
        assert q.get_many(5) == [b"small"]
        assert q.get_bytes() == big
        assert q.qsize() == 0 and q.empty()
        stats = q.statistics()
        assert stats.messages_in == stats.messages_out == 13
        assert (stats.abandoned, stats.consumers_recovered) == (0, 0)
    assert len(spills) == 2 and _left(spills) == []


def test_bounded_queue_round_trips_between_threads(workers):
    with Queue(3, capacity=4096, spsc=True) as q:
        producer = workers()
        producer.submit(lambda: [q.put(i, timeout=10) for i in range(500)])
        assert [q.get(timeout=10) for _ in range(500)] == list(range(500))
        producer.result()
        producer.call(lambda: q.put_many(["a", "b", "c"], timeout=10))
        with pytest.raises(queue.Full):
            producer.call(lambda: q.put("d", block=False))
        assert q.full() and q.qsize() == 3
        assert q.get_many(10) == ["a", "b", "c"]


# ---- children ---------------------------------------------------------------------------------


def spawn_spsc_child(kind: str, chan: Any, conn: Any) -> None:
    """In a spawned child: report the flag, the refusal of a put while the parent holds the
    producer side, and one get (the consumer side is free); then close the handle."""
    ring = chan if kind == "ring" else chan._live_ring()
    out: dict[str, Any] = {"spsc": ring.spsc}
    start = time.monotonic()
    try:
        if kind == "ring":
            chan.put(b"child", timeout=5)
        else:
            chan.put("child", timeout=5)
        out["put"] = "accepted"
    except RuntimeError as exc:
        out["put"] = str(exc)
    out["refused_in"] = time.monotonic() - start
    out["got"] = chan.get(timeout=10)
    chan.close()  # gives up the consumer side it took
    conn.send(out)
    conn.close()


@pytest.mark.parametrize("kind", ["ring", "queue"])
def test_spawned_child_attaches_by_pickle_and_sees_spsc(kind):
    ctx = multiprocessing.get_context("spawn")
    chan: Any = Ring.create(4096, spsc=True) if kind == "ring" else Queue(capacity=4096, spsc=True)
    ring = chan if kind == "ring" else chan._live_ring()
    parent_conn, child_conn = ctx.Pipe()
    first, second = (b"first", b"second") if kind == "ring" else ("first", "second")
    try:
        chan.put(first)  # the parent's main thread takes the producer side
        chan.put(second)
        p = ctx.Process(target=spawn_spsc_child, args=(kind, chan, child_conn))
        p.start()
        child_conn.close()
        assert parent_conn.poll(30), "no report from the spawned child"
        out = parent_conn.recv()
        p.join(30)
        assert p.exitcode == 0
        assert out["spsc"] is True
        assert SPSC_MSG in out["put"]
        assert out["refused_in"] < REFUSED_WITHIN
        assert out["got"] == first
        # The child closed its handle: the consumer side is free, no recovery needed.
        assert _lock_word(ring, OFF_C_LOCK) == 0
        assert chan.get(timeout=5) == second
        stats = ring.statistics()
        assert (stats.messages_in, stats.messages_out) == (2, 2)
        assert (stats.abandoned, stats.consumers_recovered) == (0, 0)
    finally:
        parent_conn.close()
        chan.close()


@pytest.mark.parametrize("kind", ["ring", "queue"])
def test_forked_child_inherits_spsc_and_is_refused(kind):
    """A forked child (a new thread id, the parent alive) is refused the parent's side; it
    takes the free consumer side, and dies holding it: the parent takes it over."""
    chan: Any = Ring.anonymous(4096, spsc=True) if kind == "ring" else Queue(4, spsc=True)
    ring = chan if kind == "ring" else chan._live_ring()
    msg = b"one" if kind == "ring" else "one"
    chan.put(msg)
    chan.put(msg * 2)

    def child(fd: int) -> None:
        refused = b"-"
        try:
            chan.put(msg, timeout=5)
        except RuntimeError as exc:
            refused = b"R" if SPSC_MSG in str(exc) else b"?"
        got = chan.get(timeout=5)
        os.write(fd, bytes([ring.spsc]) + refused + (got if kind == "ring" else got.encode()))

    try:
        code, out = fork_call(child)
        assert code == 0
        assert out == b"\x01R" + b"one"
        assert chan.get(timeout=5) == msg * 2  # took over the dead child's consumer side
        stats = ring.statistics()
        assert (stats.messages_in, stats.messages_out) == (2, 2)
        assert (stats.abandoned, stats.consumers_recovered) == (0, 1)
        assert _holder_tid(ring, OFF_C_LOCK) == threading.get_native_id()
    finally:
        chan.close()


def test_forked_child_reports_through_a_pipe_while_parent_holds_both(procs):
    """Both sides held by the parent: a forked child is refused on each, at once."""
    ring = Ring.anonymous(1024, spsc=True)
    ring.put(b"x")
    ring.put(b"y")
    assert ring.get() == b"x"
    before = _snapshot(ring)
    r, w = os.pipe()

    def child() -> None:
        for fn in (lambda: ring.put(b"z", timeout=5), lambda: ring.get(timeout=5)):
            start = time.monotonic()
            try:
                fn()
                os.write(w, b"A")
            except RuntimeError:
                os.write(w, b"R" if time.monotonic() - start < REFUSED_WITHIN else b"S")

    try:
        pid = procs.fork(child)
        assert read_exact_or_fail(r, 2, 20) == b"RR"
        assert procs.join(pid, 20) == 0
        after = _snapshot(ring)
        assert after == before
        assert ring.get(block=False) == b"y"
    finally:
        os.close(r)
        os.close(w)
        ring.close()


# ---- a second thread is refused ---------------------------------------------------------------

RING_PRODUCER_CALLS = {
    "put": lambda r: r.put(b"refused", timeout=5),
    "put-nowait": lambda r: r.put(b"refused", block=False),
    "put_many": lambda r: r.put_many([b"re", b"fused"], timeout=5),
    "reserve": lambda r: r.reserve(16, timeout=5),
}
RING_CONSUMER_CALLS = {
    "get": lambda r: r.get(timeout=5),
    "get-nowait": lambda r: r.get(block=False),
    "get_record": lambda r: r.get_record(timeout=5),
    "get_many": lambda r: r.get_many(4, timeout=5),
    "get_many_records": lambda r: r.get_many_records(4, timeout=5),
    "peek": lambda r: r.peek(timeout=5),
}


@pytest.mark.parametrize(
    "side,call",
    [("producer", c) for c in RING_PRODUCER_CALLS] + [("consumer", c) for c in RING_CONSUMER_CALLS],
)
def test_ring_second_thread_refused(workers, side, call):
    ring = Ring.anonymous(1024, spsc=True)
    other = workers()
    try:
        ring.put(b"first", type=1)
        ring.put(b"second", type=2)
        assert ring.get() == b"first"  # the main thread holds both sides, one record waits
        fn = (RING_PRODUCER_CALLS if side == "producer" else RING_CONSUMER_CALLS)[call]
        _assert_refused(ring, other.call, lambda: fn(ring))
        # The holder carries on as if nothing happened; the record waited for it.
        assert ring.get_record(block=False) == (2, b"second")
        ring.put(b"third")
        assert ring.get(block=False) == b"third"
        # The refused thread holds nothing: its later calls are refused again, on both sides.
        _assert_refused(ring, other.call, lambda: RING_PRODUCER_CALLS["put"](ring))
        _assert_refused(ring, other.call, lambda: RING_CONSUMER_CALLS["get"](ring))
    finally:
        ring.close()


def test_refused_at_once_on_empty_and_full_rings(workers):
    """A refusal never waits: not for data on an empty ring, not for room on a full one."""
    ring = Ring.anonymous(256, spsc=True)
    other = workers()
    try:
        with pytest.raises(queue.Empty):
            ring.get(block=False)  # the main thread takes the consumer side; the ring is empty
        _assert_refused(ring, other.call, lambda: ring.get(timeout=5))
        _assert_refused(ring, other.call, lambda: ring.peek(timeout=None))
        while True:
            try:
                ring.put(bytes(50), block=False)
            except queue.Full:
                break
        _assert_refused(ring, other.call, lambda: ring.put(b"x", timeout=5))
        _assert_refused(ring, other.call, lambda: ring.reserve(8, timeout=None))
        assert ring.statistics().messages_in == 4
    finally:
        ring.close()


QUEUE_PRODUCER_CALLS = {
    "put": lambda q: q.put("refused", timeout=5),
    "put_nowait": lambda q: q.put_nowait("refused"),
    "put_bytes": lambda q: q.put_bytes(b"refused", timeout=5),
    "put_many": lambda q: q.put_many(["re", b"fused"], timeout=5),
    "put_many_bytes": lambda q: q.put_many([b"re", b"fused"], timeout=5),
    "reserve": lambda q: q.reserve(16, timeout=5),
    "put-spilled": lambda q: q.put(bytes(3000), timeout=5),
    "put_many-spilled": lambda q: q.put_many([bytes(3000)], timeout=5),
}
QUEUE_CONSUMER_CALLS = {
    "get": lambda q: q.get(timeout=5),
    "get_nowait": lambda q: q.get_nowait(),
    "get_bytes": lambda q: q.get_bytes(timeout=5),
    "get_many": lambda q: q.get_many(4, timeout=5),
    "peek": lambda q: q.peek(timeout=5),
}


@pytest.mark.parametrize(
    "side,call",
    [("producer", c) for c in QUEUE_PRODUCER_CALLS]
    + [("consumer", c) for c in QUEUE_CONSUMER_CALLS],
)
def test_queue_second_thread_refused(workers, monkeypatch, side, call):
    spills = _record_spills(monkeypatch)
    q = Queue(capacity=4096, spsc=True)
    other = workers()
    try:
        q.put("first")
        q.put({"second": 2})
        assert q.get() == "first"
        fn = (QUEUE_PRODUCER_CALLS if side == "producer" else QUEUE_CONSUMER_CALLS)[call]
        _assert_refused(q._live_ring(), other.call, lambda: fn(q))
        # A refused spilled put removed the side segment it had written.
        assert _left(spills) == []
        assert len(spills) == (1 if call.endswith("spilled") else 0)
        assert q.get(block=False) == {"second": 2}
        q.put_many([1, 2])
        assert q.get_many(5) == [1, 2]
        stats = q.statistics()
        assert (stats.messages_in, stats.messages_out) == (4, 4)
    finally:
        q.close()


def test_same_thread_holds_both_sides_and_others_are_refused_on_each(workers):
    ring = Ring.anonymous(512, spsc=True)
    a, b = workers(), workers()
    try:
        a.call(lambda: [ring.put(payload(i % 90, i)) for i in range(3)])
        assert [a.call(lambda: ring.get()) for _ in range(3)] == [
            payload(i % 90, i) for i in range(3)
        ]
        for i in range(3, 200):  # wraps many times, both sides on one thread
            a.call(lambda i=i: ring.put(payload(i % 90, i)))
            assert a.call(ring.get) == payload(i % 90, i)
        assert _holder_tid(ring, OFF_P_LOCK) == _holder_tid(ring, OFF_C_LOCK) == a.tid
        for fn in (lambda: ring.put(b"x"), lambda: ring.get(timeout=5)):
            _assert_refused(ring, b.call, fn)
            _assert_refused(ring, lambda f: f(), fn)  # the main thread as well
    finally:
        ring.close()


# ---- the holder's thread ends -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ring", "queue"])
@pytest.mark.parametrize("side", ["producer", "consumer"])
def test_side_taken_over_once_its_holder_thread_ended(workers, kind, side):
    chan: Any = (
        Ring.anonymous(1024, spsc=True) if kind == "ring" else Queue(capacity=4096, spsc=True)
    )
    ring = chan if kind == "ring" else chan._live_ring()
    msg = (lambda i: b"m%d" % i) if kind == "ring" else (lambda i: ("m", i))
    holder = workers()
    try:
        if side == "producer":
            holder.call(lambda: chan.put(msg(0)))
            off, use = OFF_P_LOCK, (lambda: chan.put(msg(1), timeout=5))
        else:
            chan.put(msg(0))
            chan.put(msg(1))
            assert holder.call(lambda: chan.get(timeout=5)) == msg(0)
            off, use = OFF_C_LOCK, (lambda: chan.get(timeout=5))
        assert _holder_tid(ring, off) == holder.tid
        with pytest.raises(RuntimeError, match=SPSC_MSG):
            use()  # the holder lives
        holder.stop()
        assert _lock_word(ring, off) != 0  # still names the ended thread ...
        t = time.monotonic()
        result = use()  # ... and the next user takes the side over at once
        assert time.monotonic() - t < REFUSED_WITHIN
        assert _holder_tid(ring, off) == threading.get_native_id()
        if side == "producer":
            assert [chan.get(timeout=5) for _ in range(2)] == [msg(0), msg(1)]
        else:
            assert result == msg(1)
        stats = ring.statistics()
        assert (stats.messages_in, stats.messages_out) == (2, 2)
        # Nothing was pending: no claim abandoned; a consumer side taken over is a recovery.
        assert stats.abandoned == 0
        assert stats.consumers_recovered == (1 if side == "consumer" else 0)
    finally:
        chan.close()


def test_reservation_of_an_ended_thread_is_abandoned_not_published(workers):
    ring = Ring.anonymous(1024, spsc=True)
    holder = workers()
    try:
        holder.call(lambda: ring.put(b"committed"))
        holder.call(lambda: ring.reserve(40).__setitem__(slice(0, 8), b"half-way"))
        holder.stop()
        ring.put(b"after", timeout=5)  # takes the side over: the claim is counted abandoned
        assert ring.get_many(10, timeout=5) == [b"committed", b"after"]
        stats = ring.statistics()
        assert (stats.messages_in, stats.messages_out) == (2, 2)
        assert stats.bytes_in == stats.bytes_out == len(b"committedafter")
        assert stats.abandoned == 1
        assert stats.depth_bytes == 0
    finally:
        ring.close()


@pytest.mark.parametrize("kind", ["ring", "queue"])
def test_peek_of_an_ended_thread_is_read_again(workers, kind):
    chan: Any = (
        Ring.anonymous(1024, spsc=True) if kind == "ring" else Queue(capacity=1024, spsc=True)
    )
    ring = chan if kind == "ring" else chan._live_ring()
    holder = workers()
    try:
        put = chan.put_bytes if kind == "queue" else chan.put
        put(b"peeked")
        put(b"next")
        assert holder.call(lambda: bytes(chan.peek(timeout=5))) == b"peeked"
        holder.stop()
        # The record it never released comes again. (Queue.get_many hands over one record
        # when it had to take the side over: at least one, then whatever the fast path saw.)
        got = chan.get_many(5, timeout=5)
        got += chan.get_many(5, block=False) if len(got) == 1 else []
        assert got == [b"peeked", b"next"]
        stats = ring.statistics()
        assert (stats.messages_in, stats.messages_out, stats.consumers_recovered) == (2, 2, 1)
    finally:
        chan.close()


_DTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def test_takeover_right_after_join():
    """An ended Python thread keeps its SPSC sides until its OS thread is gone, which can be
    a moment after Thread.join() returns (the thread still runs its exit handlers; a C-level
    thread-exit destructor, as C libraries register, holds it open here for 0.3 s): a
    takeover right after join waits that moment out instead of refusing."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.pthread_setspecific.argtypes = [ctypes.c_uint, ctypes.c_void_p]
    entered, leave = threading.Event(), threading.Event()

    def exiting(_arg: int) -> None:  # runs after the Python thread state is gone
        entered.set()
        leave.wait(0.3)

    dtor = _DTOR(exiting)
    key = ctypes.c_uint()
    assert libc.pthread_key_create(ctypes.byref(key), dtor) == 0
    ring = Ring.anonymous(256, spsc=True)
    try:

        def holder() -> None:
            ring.put(b"a")
            libc.pthread_setspecific(key.value, ctypes.c_void_p(1))

        t = threading.Thread(target=holder)
        t.start()
        t.join(10)
        assert not t.is_alive()  # the Python thread has ended ...
        assert entered.wait(10)  # ... and its OS thread runs its last exit handler
        ring.put(b"b")  # the holder thread has ended: this must take the side over
        assert ring.get_many(2) == [b"a", b"b"]
    finally:
        leave.set()
        wait_for(lambda: _thread_gone(t.native_id), what="the holder thread gone")
        libc.pthread_key_delete(key.value)
        ring.close()


def test_takeover_races_another_threads_recovery_check(workers, monkeypatch):
    ring = Ring.anonymous(1024, spsc=True)
    checker = workers()
    try:
        _in_thread(lambda: ring.put(b"from the dead"))  # the producer side names a dead thread
        real = ring_module.take_over_if_dead
        started: list[bool] = []
        raced: list[bool] = []

        def racing(base, off, steal=None):
            if not started:
                started.append(True)
                # The interleaving under test: another thread's recovery check runs right
                # here, after this thread's lock attempt failed and before its own check.
                raced.append(checker.call(ring.recover))
            return real(base, off, steal)

        monkeypatch.setattr(ring_module, "take_over_if_dead", racing)
        try:
            ring.put(b"mine", timeout=5)  # nobody holds the side now: this must take it
        finally:
            monkeypatch.undo()
        assert raced == [True]  # the checker did recover the side
        assert _holder_tid(ring, OFF_P_LOCK) == threading.get_native_id()
        assert ring.get_many(5) == [b"from the dead", b"mine"]
    finally:
        ring.close()


# ---- close() ----------------------------------------------------------------------------------


def test_close_by_the_holder_frees_its_sides(workers):
    """A thread with its own handle (Ring.at on a shared region) uses both sides, closes
    that handle and lives on: another thread takes both sides, with no recovery."""
    region = Region.anonymous(Ring.footprint(1024))
    ring = Ring.at(region, create=True, capacity=1024, spsc=True)
    holder = workers()
    try:
        mine = holder.call(lambda: Ring.at(region, create=False))
        holder.call(lambda: mine.put(b"a"))
        holder.call(lambda: mine.put(b"b"))
        assert holder.call(mine.get) == b"a"
        with pytest.raises(RuntimeError, match=SPSC_MSG):
            ring.put(b"c", block=False)
        holder.call(mine.close)
        assert _lock_word(ring, OFF_P_LOCK) == _lock_word(ring, OFF_C_LOCK) == 0
        ring.put(b"c", block=False)
        assert ring.get_many(5) == [b"b", b"c"]
        stats = ring.statistics()
        assert (stats.messages_in, stats.messages_out) == (3, 3)
        assert (stats.abandoned, stats.consumers_recovered) == (0, 0)
        # The holder thread lives on and now is refused: the sides are the main thread's.
        other = holder.call(lambda: Ring.at(region, create=False))
        _assert_refused(ring, holder.call, lambda: other.put(b"x"))
        _assert_refused(ring, holder.call, lambda: other.get(timeout=5))
        holder.call(other.close)
    finally:
        ring.close()
        region.close()


def test_queue_close_by_the_holder_frees_its_sides(workers):
    with Queue(capacity=4096, spsc=True) as q:
        holder = workers()
        theirs = holder.call(lambda: Queue.attach(q.name))
        holder.call(lambda: theirs.put_many(["a", "b"]))
        assert holder.call(theirs.get) == "a"
        with pytest.raises(RuntimeError, match=SPSC_MSG):
            q.get(block=False)
        holder.call(theirs.close)
        ring = q._live_ring()
        assert _lock_word(ring, OFF_P_LOCK) == _lock_word(ring, OFF_C_LOCK) == 0
        q.put("c")
        assert q.get_many(5) == ["b", "c"]
        stats = q.statistics()
        assert (stats.abandoned, stats.consumers_recovered) == (0, 0)


def test_close_by_a_non_holder_frees_nothing(workers, shm_name):
    ring = Ring.create(1024, name=shm_name, spsc=True)
    holder = workers()
    try:
        holder.call(lambda: ring.put(b"a"))
        assert holder.call(ring.get) == b"a"
        before = _snapshot(ring)
        Ring.attach(shm_name).close()  # the main thread holds nothing: nothing is given up
        third = Ring.attach(shm_name)
        _in_thread(third.close)  # nor by a third thread
        assert _snapshot(ring) == before
        _assert_refused(ring, lambda f: f(), lambda: ring.put(b"b"))
        _assert_refused(ring, lambda f: f(), lambda: ring.get(timeout=5))
        holder.call(lambda: ring.put(b"b"))
        assert holder.call(ring.get) == b"b"  # the holder still holds both
        theirs = holder.call(lambda: Ring.attach(shm_name))
        holder.call(theirs.close)  # the holder's close frees them, through any handle
        assert _lock_word(ring, OFF_P_LOCK) == _lock_word(ring, OFF_C_LOCK) == 0
        ring.put(b"c")
        assert ring.get() == b"c"
        stats = ring.statistics()
        assert (stats.messages_in, stats.abandoned, stats.consumers_recovered) == (3, 0, 0)
    finally:
        ring.close()


def test_close_with_a_reservation_pending_aborts_it_and_gives_the_side_up(workers):
    """close() on the thread that holds a reservation aborts it first (nothing published;
    BufferError instead while its view is exported), so the side is given up at once rather
    than held until the thread ends (docs/internals/lifetime.md)."""
    region = Region.anonymous(Ring.footprint(1024))
    ring = Ring.at(region, create=True, capacity=1024, spsc=True)
    holder = workers()
    try:
        mine = holder.call(lambda: Ring.at(region, create=False))
        holder.call(lambda: mine.put(b"done"))
        view = holder.call(lambda: mine.reserve(16))
        part = view[4:]
        with pytest.raises(BufferError):
            holder.call(mine.close)
        assert _holder_tid(ring, OFF_P_LOCK) == holder.tid  # nothing changed
        del part
        holder.call(mine.close)
        assert _holder_tid(ring, OFF_P_LOCK) == 0
        ring.put(b"after", timeout=5)
        assert ring.get_many(5) == [b"done", b"after"]
        assert ring.statistics().abandoned == 0
    finally:
        holder.stop()
        ring.close()
        region.close()


# ---- zero-copy misuse on the holder's thread --------------------------------------------------


@pytest.mark.parametrize("spsc", [True, False])
def test_reserve_while_reserved(spsc):
    with Ring.anonymous(1024, spsc=spsc) as ring:
        view = ring.reserve(8, type=3)
        with pytest.raises(RuntimeError, match="already has a reservation"):
            ring.reserve(8)
        with pytest.raises(RuntimeError, match="holds a reservation"):
            ring.put(b"x", block=False)
        with pytest.raises(RuntimeError, match="holds a reservation"):
            ring.put_many([b"x"], timeout=1)
        view[:] = b"reserved"
        ring.commit()  # the reservation survived all of that
        assert ring.get_record(block=False) == (3, b"reserved")
        ring.put(b"then")
        assert ring.get(block=False) == b"then"
        stats = ring.statistics()
        assert (stats.messages_in, stats.messages_out, stats.abandoned) == (2, 2, 0)
        with pytest.raises(RuntimeError, match="no reservation"):
            ring.commit()


@pytest.mark.parametrize("spsc", [True, False])
def test_peek_while_peeked(spsc):
    with Ring.anonymous(1024, spsc=spsc) as ring:
        ring.put_many([b"one", b"two"])
        view = ring.peek()
        with pytest.raises(RuntimeError, match="already peeked"):
            ring.peek()
        with pytest.raises(RuntimeError, match="holds a reservation or a peeked record"):
            ring.get(block=False)
        with pytest.raises(RuntimeError, match="holds a reservation or a peeked record"):
            ring.get_many(3, timeout=1)
        assert bytes(view) == b"one"
        ring.release()
        assert ring.get(block=False) == b"two"
        assert ring.statistics().messages_out == 2


def test_queue_zero_copy_misuse_on_the_holder_thread():
    with Queue(capacity=4096, spsc=True) as q:
        view = q.reserve(3)
        with pytest.raises(RuntimeError, match="already has a reservation"):
            q.reserve(3)
        with pytest.raises(RuntimeError, match="holds a reservation"):
            q.put("x", block=False)
        with pytest.raises(RuntimeError, match="holds a reservation"):
            q.put_many(["x", "y"], timeout=1)
        view[:] = b"abc"
        q.commit()
        q.put("obj")
        assert bytes(q.peek()) == b"abc"
        with pytest.raises(RuntimeError, match="already peeked"):
            q.peek()
        with pytest.raises(RuntimeError, match="peeked record"):
            q.get(block=False)
        with pytest.raises(RuntimeError, match="peeked record"):
            q.get_many(2, timeout=1)
        q.release()
        assert q.get(block=False) == "obj"
        stats = q.statistics()
        assert (stats.messages_in, stats.messages_out) == (2, 2)


# ---- blocking ---------------------------------------------------------------------------------


def _times_out(exc: type[BaseException], fn: Callable[[], Any], timeout: float) -> None:
    start = time.monotonic()
    with pytest.raises(exc):
        fn()
    elapsed = time.monotonic() - start
    assert timeout <= elapsed < 2.0, elapsed


def test_ring_timeouts_on_empty_and_full():
    with Ring.anonymous(256, spsc=True) as ring:
        _times_out(queue.Empty, lambda: ring.get(timeout=TIMEOUT), TIMEOUT)
        _times_out(queue.Empty, lambda: ring.get_many(3, timeout=TIMEOUT), TIMEOUT)
        _times_out(queue.Empty, lambda: ring.peek(timeout=TIMEOUT), TIMEOUT)
        for i in range(4):
            ring.put(payload(56, i), block=False)  # 64 bytes a record: 4 fill 256
        _times_out(queue.Full, lambda: ring.put(b"x", timeout=TIMEOUT), TIMEOUT)
        _times_out(queue.Full, lambda: ring.put_many([b"x"], timeout=TIMEOUT), TIMEOUT)
        _times_out(queue.Full, lambda: ring.reserve(1, timeout=TIMEOUT), TIMEOUT)
        assert ring.get_many(10) == [payload(56, i) for i in range(4)]
        stats = ring.statistics()
        assert (stats.messages_in, stats.messages_out) == (4, 4)
        assert stats.consumer_waits == 3 and stats.producer_waits == 3


def test_queue_timeouts_on_empty_and_full():
    with Queue(2, capacity=4096, spsc=True) as q:
        _times_out(queue.Empty, lambda: q.get(timeout=TIMEOUT), TIMEOUT)
        _times_out(queue.Empty, lambda: q.get_bytes(timeout=TIMEOUT), TIMEOUT)
        _times_out(queue.Empty, lambda: q.get_many(3, timeout=TIMEOUT), TIMEOUT)
        q.put(1)
        q.put(2)
        _times_out(queue.Full, lambda: q.put(3, timeout=TIMEOUT), TIMEOUT)
        _times_out(queue.Full, lambda: q.put_bytes(b"3", timeout=TIMEOUT), TIMEOUT)
        _times_out(queue.Full, lambda: q.put_many([3], timeout=TIMEOUT), TIMEOUT)
        assert q.get_many(5) == [1, 2]


@pytest.mark.parametrize("kind", ["ring", "queue"])
def test_blocked_get_woken_by_the_producers_put(workers, kind):
    chan: Any = (
        Ring.anonymous(1024, spsc=True) if kind == "ring" else Queue(capacity=4096, spsc=True)
    )
    ring = chan if kind == "ring" else chan._live_ring()
    consumer = workers()
    try:
        chan.put(b"warm-up")  # the main thread is the producer
        assert consumer.call(lambda: chan.get(timeout=5)) == b"warm-up"

        def timed_get() -> tuple[Any, float]:
            t = time.monotonic()
            return chan.get(timeout=10), time.monotonic() - t

        consumer.submit(timed_get)
        wait_for(lambda: ring.statistics().consumer_waits >= 1, what="the consumer waiting")
        # The waiting consumer holds its side: a third party is refused, not queued.
        _assert_refused(ring, _in_thread, lambda: chan.get(timeout=5), quiet=False)
        wait_for(lambda: asleep_in_futex(consumer.tid), what="the consumer asleep")
        chan.put(b"wake up")
        got, waited = consumer.result()
        assert got == b"wake up"
        assert waited < 5.0  # woken by the put, long before its timeout
        stats = ring.statistics()
        assert (stats.messages_in, stats.messages_out) == (2, 2)
        # One wait, counted again each time a 100 ms wait slice ended; at most one futex wake.
        assert stats.consumer_waits >= 1 and stats.consumer_wakes <= 1
    finally:
        chan.close()


def test_blocked_put_woken_by_the_consumers_get(workers):
    ring = Ring.anonymous(256, spsc=True)
    producer = workers()
    try:
        for i in range(4):
            producer.call(lambda i=i: ring.put(payload(56, i), block=False))
        producer.submit(lambda: ring.put(b"fifth", timeout=10))
        wait_for(lambda: ring.statistics().producer_waits >= 1, what="the producer waiting")
        # Room appears only once the ring drains below half (or empties): take all four.
        assert ring.get_many(10, timeout=5) == [payload(56, i) for i in range(4)]
        producer.result()
        assert ring.get(timeout=5) == b"fifth"
        assert ring.statistics().messages_in == 5
    finally:
        ring.close()


def test_record_sizes_and_depth_on_spsc_ring():
    """Exact byte accounting on an SPSC ring: record = align8(8 + n), padding counted."""
    with Ring.anonymous(256, spsc=True) as ring:
        ring.put(payload(100))
        assert ring.statistics().depth_bytes == rec_size(100) == 112
        ring.put(payload(40))
        assert ring.statistics().depth_bytes == 112 + 48
        assert ring.get() == payload(100)
        assert ring.get() == payload(40)
        ring.put(payload(100))  # at 160: 96 bytes of padding, then 112 at the start
        assert ring.statistics().depth_bytes == 96 + 112
        assert ring.get() == payload(100)
        assert ring.statistics().depth_bytes == 0


def test_records_above_the_scratch_take_the_peek_path(workers):
    """A get of a record larger than the per-thread scratch peeks, copies and releases: on an
    SPSC ring that is the holder's own side, so it goes through (and a non-holder is still
    refused before anything is read)."""
    ring = Ring.anonymous(1 << 20, spsc=True)
    other = workers()
    try:
        big = [payload(SCRATCH_SIZE + 1000 * i, i) for i in range(1, 4)]
        ring.put(big[0], type=6)
        ring.put_many(big[1:])
        assert ring.get_record() == (6, big[0])
        _assert_refused(ring, other.call, lambda: ring.get(timeout=5))
        assert ring.get_many(5) == [big[1]]  # a large record comes alone
        assert ring.get(block=False) == big[2]
        stats = ring.statistics()
        assert (stats.messages_out, stats.bytes_out) == (3, sum(map(len, big)))
        assert _holder_tid(ring, OFF_C_LOCK) == threading.get_native_id()
    finally:
        ring.close()


def test_recover_frees_a_dead_holders_side_for_whoever_comes_next(workers):
    ring = Ring.anonymous(1024, spsc=True)
    holder = workers()
    try:
        holder.call(lambda: ring.put(b"a"))
        assert holder.call(ring.get) == b"a"
        assert ring.recover() is False  # the holder lives: nothing is taken from it
        assert _holder_tid(ring, OFF_P_LOCK) == _holder_tid(ring, OFF_C_LOCK) == holder.tid
        holder.stop()
        assert ring.recover() is True  # both sides, taken over and freed
        assert _lock_word(ring, OFF_P_LOCK) == _lock_word(ring, OFF_C_LOCK) == 0
        assert ring.recover() is False
        assert _in_thread(lambda: ring.put(b"b")) is None  # a new thread takes it, then ends
        stats = ring.statistics()
        assert (stats.abandoned, stats.consumers_recovered) == (0, 1)
    finally:
        ring.close()
