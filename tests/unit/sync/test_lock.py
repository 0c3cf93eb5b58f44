"""Lock: a robust process-shared lock (shmipc's own, not a pthread mutex), owned per thread,
not reentrant."""

from __future__ import annotations

import os
import re
import signal
import struct
import threading
import time
from collections.abc import Callable

import pytest
from _procs import asleep_in_futex, wait_for

from shmipc import AtomicCounter, Event, Lock, Region

pytestmark = pytest.mark.timeout(60)

PROCS_JOIN_TIMEOUT = 30.0  # procs.join's default (the procs fixture, tests/conftest.py)


def hold_until_released(lock: Lock, held: Event, release: Event) -> Callable[[], None]:
    def holder() -> None:
        lock.acquire()
        held.set()
        assert release.wait(30)
        lock.release()

    return holder


# ---- one process ----------------------------------------------------------------------------


def test_acquire_release():
    lock = Lock()
    assert lock.acquire() is True
    assert lock.recovered is False
    lock.release()
    assert lock.acquire(block=False) is True
    lock.release()
    assert lock.acquire(timeout=1) is True
    lock.release()
    assert lock.recoveries == 0


def test_context_manager():
    lock = Lock()
    with lock:
        assert lock.acquire(block=False) is False  # held (by this very thread)
    assert lock.acquire(block=False)
    lock.release()


def test_not_reentrant_blocking_acquire_is_refused():
    """A blocking acquire by the holder would deadlock forever: RuntimeError at once."""
    lock = Lock()
    lock.acquire()
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="reentrant"):
        lock.acquire()
    assert time.monotonic() - t < 0.5  # refused at once, no deadlock
    lock.release()  # still held exactly once
    with pytest.raises(RuntimeError):
        lock.release()


@pytest.mark.parametrize(
    "again",
    [
        lambda lk: lk.acquire(block=False),
        lambda lk: lk.acquire(False),
        lambda lk: lk.acquire(timeout=0.1),
        lambda lk: lk.acquire(timeout=0),
        lambda lk: lk.acquire(True, 30),
    ],
    ids=["nonblock", "positional", "timeout", "zero-timeout", "long-timeout"],
)
def test_not_reentrant_try_fails(again):
    """A non-blocking or timed acquire by the holder fails (False), as threading.Lock's and
    multiprocessing.Lock's do; at once, since only the holder itself could free it."""
    lock = Lock()
    lock.acquire()
    t = time.monotonic()
    assert again(lock) is False
    assert time.monotonic() - t < 0.5
    lock.release()  # still held exactly once
    with pytest.raises(RuntimeError):
        lock.release()


def test_release_unheld_is_runtime_error():
    lock = Lock()
    with pytest.raises(RuntimeError, match="does not hold"):
        lock.release()


def test_release_by_other_thread_is_runtime_error():
    lock = Lock()
    lock.acquire()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            lock.release()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    lock.release()


def test_other_thread_waits_for_holder():
    lock = Lock()
    lock.acquire()
    results: list[bool] = []

    def other() -> None:
        results.append(lock.acquire(timeout=0.05))  # held by the main thread: times out
        results.append(lock.acquire(timeout=20))  # released below
        lock.release()

    t = threading.Thread(target=other)
    t.start()
    wait_for(lambda: len(results) == 1, what="first try")
    lock.release()
    t.join(20)
    assert results == [False, True]


def test_layout_matches_docstring():
    from shmipc._native import lib

    # The Lock docstring's table: word 0 (8 bytes), sleepers 8 (4), recoveries 12 (4).
    assert Lock.LAYOUT["word"] == 0
    assert Lock.LAYOUT["sleepers"] == 8 == lib.SHMIPC_LOCK_OFF_WAITERS
    assert Lock.LAYOUT["recoveries"] == 12 == lib.SHMIPC_LOCK_SIZE - 4
    assert Lock.SIZE % 64 == 0
    doc = Lock.__doc__ or ""
    for offset, size, field in ((0, 8, "word"), (8, 4, "sleepers"), (12, 4, "recoveries")):
        assert re.search(rf"^\s*{offset}\s+{size}\s+{field}:", doc, re.M), field


# ---- across processes -----------------------------------------------------------------------


def test_held_by_another_process(procs):
    lock, held, release = Lock(), Event(), Event()
    pid = procs.fork(hold_until_released(lock, held, release))
    assert held.wait(20)
    assert lock.acquire(block=False) is False
    t = time.monotonic()
    assert lock.acquire(timeout=0.2) is False
    assert 0.19 <= time.monotonic() - t < 1.5
    t = time.monotonic()
    assert lock.acquire(timeout=0) is False
    assert time.monotonic() - t < 0.5
    with pytest.raises(RuntimeError):
        lock.release()  # a non-holder process cannot release it
    release.set()
    assert lock.acquire(timeout=20) is True
    assert lock.recovered is False
    lock.release()
    assert procs.join(pid) == 0


def test_blocked_acquirer_gets_it_on_release(procs):
    lock, got = Lock(), AtomicCounter()
    lock.acquire()

    def child() -> None:
        assert lock.acquire(timeout=20)
        got.add(1)
        lock.release()

    pid = procs.fork(child)
    wait_for(lambda: asleep_in_futex(pid), what="child blocked")
    assert got.load() == 0
    lock.release()
    assert procs.join(pid) == 0
    assert got.load() == 1


def test_mutual_exclusion_across_four_processes(procs):
    """A non-atomic read-modify-write (read, yield, write+1) under the lock loses nothing."""
    region = Region.anonymous(4096)
    lock = Lock.at(region, 0, create=True)
    cell = struct.Struct("<Q")
    value_off, n_procs, rounds = 1024, 4, 400

    def worker() -> None:
        buf = region.buffer
        for _ in range(rounds):
            with lock:
                (v,) = cell.unpack_from(buf, value_off)
                time.sleep(0)  # invite a competitor to run between the read and the write
                cell.pack_into(buf, value_off, v + 1)

    pids = [procs.fork(worker) for _ in range(n_procs)]
    assert [procs.join(p) for p in pids] == [0] * n_procs
    assert cell.unpack_from(region.buffer, value_off)[0] == n_procs * rounds
    region.close()


def test_dead_holder_passes_lock_on(procs):
    """A holder SIGKILLed mid-hold: the next acquire gets it within 1 s of the death."""
    lock, held, never = Lock(), Event(), Event()
    pid = procs.fork(hold_until_released(lock, held, never))
    assert held.wait(20)
    assert lock.acquire(block=False) is False
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    procs.live.discard(pid)
    died = time.monotonic()
    assert lock.acquire(timeout=5) is True
    assert time.monotonic() - died < 1.0
    assert lock.recovered is True
    assert lock.recoveries == 1
    lock.release()
    # Recovered for good: the next holding is an ordinary one.
    assert lock.acquire(timeout=5) is True
    assert lock.recovered is False
    assert lock.recoveries == 1
    lock.release()


def test_waiter_blocked_when_holder_dies_gets_it(procs):
    """A process already asleep in acquire() is handed the lock when the holder dies."""
    lock, held, never = Lock(), Event(), Event()
    got_at = AtomicCounter()  # CLOCK_MONOTONIC ns at which the waiter got the lock
    recovered = AtomicCounter(-1)
    holder = procs.fork(hold_until_released(lock, held, never))
    assert held.wait(20)

    def waiter() -> None:
        assert lock.acquire(timeout=20)
        got_at.store(time.monotonic_ns())
        recovered.store(int(lock.recovered))
        lock.release()

    w = procs.fork(waiter)
    wait_for(lambda: asleep_in_futex(w), what="waiter blocked")
    os.kill(holder, signal.SIGKILL)
    os.waitpid(holder, 0)
    procs.live.discard(holder)
    died = time.monotonic_ns()
    assert procs.join(w) == 0
    assert recovered.load() == 1
    assert (got_at.load() - died) / 1e9 < 1.0  # may be negative: handed over before reaping
    assert lock.recoveries == 1


def test_named_lock_across_attachers(shm_name, procs):
    lock = Lock.create(shm_name)
    try:
        counter = AtomicCounter()

        def child() -> None:
            mine = Lock.attach(shm_name)
            for _ in range(200):
                with mine:
                    v = counter.load()
                    time.sleep(0)
                    counter.store(v + 1)
            mine.close()

        pids = [procs.fork(child) for _ in range(3)]
        assert [procs.join(p) for p in pids] == [0, 0, 0]
        assert counter.load() == 600
    finally:
        lock.close()


def test_at_create_resets_recoveries(procs):
    region = Region.anonymous(4096)
    lock = Lock.at(region, 0, create=True)
    held, never = Event(), Event()
    pid = procs.fork(hold_until_released(lock, held, never))
    assert held.wait(20)
    procs.kill(pid)
    assert lock.acquire(timeout=5) and lock.recovered
    lock.release()
    assert lock.recoveries == 1
    fresh = Lock.at(region, 0, create=True)
    assert fresh.recoveries == 0
    assert fresh.acquire(block=False) and not fresh.recovered
    fresh.release()
    region.close()
