"""RLock, BoundedSemaphore and Condition: the primitives the multiprocessing drop-in adds."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time

import pytest
from _procs import wait_for

from shmipc import Lock, Region
from shmipc.errors import Closed, LayoutMismatch
from shmipc.sync import BoundedSemaphore, Condition, RLock, Semaphore

pytestmark = pytest.mark.timeout(60)

PROCS_JOIN_TIMEOUT = 30.0


# ---- RLock ----------------------------------------------------------------------------------


def test_rlock_is_reentrant_and_counts_depth():
    lock = RLock()
    assert lock.acquire() and lock.acquire(block=False) and lock.acquire(timeout=1)
    assert lock.depth == 3
    lock.release()
    lock.release()
    assert lock._is_owned()
    lock.release()
    assert not lock._is_owned() and lock.depth == 0
    with pytest.raises(RuntimeError, match="un-acquired"):
        lock.release()
    with lock, lock:
        assert lock.depth == 2
    assert "unlocked" in repr(lock)


def test_rlock_excludes_other_threads():
    lock = RLock()
    lock.acquire()
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=0.05)))
    t.start()
    t.join(10)
    assert got == [False]
    errors: list[BaseException] = []
    t = threading.Thread(target=_catch, args=(lock.release, errors))  # nor release it
    t.start()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    lock.release()


def _catch(fn, errors):
    try:
        fn()
    except BaseException as exc:  # handed to the test thread
        errors.append(exc)


def test_rlock_excludes_other_processes(procs):
    lock = RLock()
    lock.acquire()
    lock.acquire()
    pid = procs.fork(lambda: os._exit(0 if lock.acquire(timeout=0.05) is False else 3))
    assert procs.join(pid) == 0
    lock.release()
    lock.release()
    pid = procs.fork(lambda: os._exit(0 if lock.acquire(timeout=10) else 3))
    assert procs.join(pid) == 0


def test_rlock_passes_on_from_a_dead_holder_at_depth_one(procs):
    lock = RLock()
    held = Semaphore(0)

    def hold():
        lock.acquire()
        lock.acquire()
        held.release()
        time.sleep(60)

    pid = procs.fork(hold)
    assert held.acquire(timeout=20)
    os.kill(pid, signal.SIGKILL)
    assert procs.join(pid) == -signal.SIGKILL
    assert lock.acquire(timeout=20)
    assert lock.recovered and lock.depth == 1
    lock.release()
    assert not lock._is_owned()


def test_rlock_by_name_and_pickle(shm_name):
    lock = RLock.create(shm_name)
    other = pickle.loads(pickle.dumps(lock))
    assert type(other) is RLock
    with lock:
        assert other._is_owned()  # same thread, same memory
    with pytest.raises(LayoutMismatch):
        Lock.attach(shm_name)
    other.close()
    lock.close()
    with pytest.raises(Closed):
        lock.acquire()


# ---- BoundedSemaphore -----------------------------------------------------------------------


def test_bounded_semaphore_refuses_release_past_its_value():
    sem = BoundedSemaphore(2)
    assert sem.bound == 2 and sem.get_value() == 2
    with pytest.raises(ValueError, match="too many"):
        sem.release()
    sem.acquire()
    sem.acquire()
    with pytest.raises(ValueError, match="too many"):
        sem.release(3)
    assert sem.get_value() == 0  # nothing released by the refused call
    sem.release(2)
    assert sem.get_value() == 2


def test_bounded_semaphore_by_name(shm_name):
    sem = BoundedSemaphore.create(shm_name, value=3)
    other = BoundedSemaphore.attach(shm_name)
    assert other.bound == 3
    plain = Semaphore.create(shm_name + "p", value=1)
    with pytest.raises(LayoutMismatch, match="no bound"):
        BoundedSemaphore.attach(shm_name + "p")
    for handle in (plain, other, sem):
        handle.close()


# ---- Condition ------------------------------------------------------------------------------


def test_condition_needs_the_lock():
    cond = Condition()
    with pytest.raises(RuntimeError, match="un-acquired"):
        cond.wait(0)
    with pytest.raises(RuntimeError, match="un-acquired"):
        cond.notify()
    with cond:
        assert cond.wait(0) is False
        t = time.monotonic()
        assert cond.wait(0.1) is False
        assert time.monotonic() - t >= 0.09
        cond.notify()  # nobody waits: nothing happens
        cond.notify_all()
    assert cond._counts() == (0, 0)


def test_condition_takes_a_lock_or_rlock_only():
    with pytest.raises(TypeError, match="shmipc Lock or RLock"):
        Condition(threading.Lock())  # type: ignore[arg-type]
    lock = Lock()
    cond = Condition(lock)
    with cond:
        assert lock._is_owned()
        assert cond.wait(0.01) is False
        assert lock._is_owned()  # taken back
    assert not lock._is_owned()


def test_wait_releases_an_rlock_at_every_depth_and_restores_it():
    cond = Condition()
    lock = cond._lock
    done = threading.Event()
    seen: list[bool] = []

    def other():
        with cond:
            seen.append(True)
            cond.notify()
        done.set()

    with cond, cond:
        assert lock.depth == 2
        t = threading.Thread(target=other)
        t.start()
        assert cond.wait(20) is True
        assert lock.depth == 2
    t.join(10)
    assert seen == [True] and done.is_set()


def _waiters(
    cond: Condition, n: int, results: list, timeout: float | None = None, already: int = 0
) -> list:
    threads = []
    for _ in range(n):

        def run():
            with cond:
                results.append(cond.wait(timeout))

        t = threading.Thread(target=run)
        t.start()
        threads.append(t)
    wait_for(lambda: cond._counts()[0] == already + n, 20, "waiters registered")
    return threads


def test_notify_n_wakes_exactly_n():
    cond = Condition()
    results: list = []
    threads = _waiters(cond, 5, results)
    with cond:
        cond.notify(2)
    wait_for(lambda: len(results) == 2, 20, "two woken")
    time.sleep(0.1)  # a third would show up here
    assert results == [True, True] and cond._counts() == (3, 0)
    with cond:
        cond.notify_all()
    for t in threads:
        t.join(20)
    assert results == [True] * 5 and cond._counts() == (0, 0)


def test_a_later_waiter_never_takes_an_earlier_ones_wakeup():
    """The notifier waits right after notifying: the wake-up stays with the first waiter."""
    cond = Condition()
    results: list = []
    (first,) = _waiters(cond, 1, results)
    with cond:
        cond.notify()
        assert cond.wait(0.2) is False  # registered after the notify: not for us
    first.join(20)
    assert results == [True]


def test_timed_out_waiters_leave_no_trace():
    cond = Condition()
    results: list = []
    for t in _waiters(cond, 3, results, timeout=0.05):
        t.join(20)
    assert results == [False] * 3 and cond._counts() == (0, 0)


def test_wait_for():
    cond = Condition()
    state = {"n": 0}

    def bump():
        for _ in range(3):
            time.sleep(0.01)
            with cond:
                state["n"] += 1
                cond.notify()

    t = threading.Thread(target=bump)
    with cond:
        t.start()
        assert cond.wait_for(lambda: state["n"] == 3, timeout=20) is True
        assert cond.wait_for(lambda: state["n"] == 4, timeout=0.05) is False
    t.join(10)


def test_interrupted_wait_retakes_the_lock_and_leaves(procs):
    cond = Condition()

    def child():
        signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with cond:
            try:
                cond.wait(30)
            except KeyboardInterrupt:
                os._exit(0 if cond._lock._is_owned() else 4)
        os._exit(3)

    pid = procs.fork(child)
    assert procs.join(pid) == 0
    assert cond._counts() == (0, 0)


def test_a_waiter_killed_while_waiting_costs_no_notify(procs):
    cond = Condition()
    results: list = []

    def sleeper():
        with cond:
            cond.wait(60)

    pid = procs.fork(sleeper)
    wait_for(lambda: cond._counts()[0] == 1, 20, "the child waits")
    os.kill(pid, signal.SIGKILL)
    assert procs.join(pid) == -signal.SIGKILL
    threads = _waiters(cond, 1, results, already=1)  # registered after the dead one
    with cond:
        cond.notify()  # skips the dead waiter's slot, wakes the live one
    threads[0].join(20)
    assert results == [True] and cond._counts() == (0, 0)


def test_more_waiters_than_slots_still_wake():
    cond = Condition()
    results: list = []
    n = Condition.SLOTS + 3
    threads = _waiters(cond, n, results)
    with cond:
        cond.notify_all()
    for t in threads:
        t.join(30)
    assert results == [True] * n and cond._counts() == (0, 0)


def test_condition_by_name_with_its_own_lock_and_a_given_one(shm_name):
    cond = Condition.create(shm_name)
    other = pickle.loads(pickle.dumps(cond))
    assert other._own_lock
    with cond:
        assert other._lock._is_owned()  # the same embedded RLock
    lock = RLock.create(shm_name + "l")
    cond2 = Condition.create(shm_name + "c", lock=lock)
    again = pickle.loads(pickle.dumps(cond2))
    assert again._lock.name == lock.name
    for handle in (again, cond2, lock, other, cond):
        handle.close()
    with pytest.raises(Closed):
        cond.notify()


def test_condition_placed_in_a_region():
    region = Region.anonymous(Condition.SIZE)
    cond = Condition.at(region, 0, create=True)
    with cond:
        assert cond.wait(0) is False
    cond.close()
    region.close()
