"""Semaphore: a counting semaphore shared between processes."""

from __future__ import annotations

import time

import pytest
from _procs import wait_for

from shmipc import AtomicCounter, Region, Semaphore
from shmipc._native import lib

pytestmark = pytest.mark.timeout(60)

PROCS_JOIN_TIMEOUT = 30.0  # procs.join's default (the procs fixture, tests/conftest.py)


def sleepers(sem: Semaphore) -> int:
    return lib.shmipc_load32_acquire(sem._base, sem._off + Semaphore._WAITERS)


# ---- counting -------------------------------------------------------------------------------


def test_default_value_is_one():
    assert Semaphore().value == 1


def test_acquire_release_counts():
    sem = Semaphore(3)
    assert sem.acquire() is True
    assert sem.acquire(block=False) is True
    assert sem.acquire(timeout=1) is True
    assert sem.value == 0
    assert sem.acquire(block=False) is False
    sem.release()
    assert sem.value == 1
    sem.release(2)
    assert sem.value == 3
    assert "value=3" in repr(sem)


def test_context_manager():
    sem = Semaphore(1)
    with sem:
        assert sem.value == 0
    assert sem.value == 1


def test_zero_initial_value():
    sem = Semaphore(0)
    assert sem.acquire(block=False) is False
    sem.release()
    assert sem.acquire(block=False) is True


@pytest.mark.parametrize("bad", [-1, Semaphore.MAX_VALUE + 1])
def test_bad_initial_value(bad):
    with pytest.raises(ValueError):
        Semaphore(bad)


@pytest.mark.parametrize("bad", [0, -1])
def test_release_needs_a_positive_count(bad):
    sem = Semaphore(0)
    with pytest.raises(ValueError):
        sem.release(bad)
    assert sem.value == 0


def test_release_beyond_max_value():
    sem = Semaphore(Semaphore.MAX_VALUE - 1)
    sem.release()
    with pytest.raises(ValueError, match="beyond"):
        sem.release()
    assert sem.value == Semaphore.MAX_VALUE


def test_acquire_timeout_is_bounded():
    sem = Semaphore(0)
    t = time.monotonic()
    assert sem.acquire(timeout=0.1) is False
    assert 0.09 <= time.monotonic() - t < 1.0
    t = time.monotonic()
    assert sem.acquire(timeout=0) is False
    assert sem.acquire(timeout=-5) is False
    assert time.monotonic() - t < 0.5
    assert sem.value == 0
    assert sleepers(sem) == 0


def test_layout_matches_docstring():
    assert Semaphore.LAYOUT["count"] == 0
    assert Semaphore.LAYOUT["waiters"] == 4
    assert Semaphore.SIZE == 64


# ---- across processes -----------------------------------------------------------------------


def test_in_use_never_exceeds_initial_value(procs):
    """N processes x M acquire/release: a shared in-use count never passes the value."""
    value, n_procs, rounds = 2, 4, 300
    sem = Semaphore(value)
    in_use, peak, done = AtomicCounter(), AtomicCounter(), AtomicCounter()

    def worker() -> None:
        for _ in range(rounds):
            assert sem.acquire(timeout=20)
            now = in_use.add(1)
            while True:  # record the peak: a CAS loop that retries only when it moved
                p = peak.load()
                if now <= p or peak.compare_exchange(p, now):
                    break
            time.sleep(0)  # give up the CPU while holding a unit
            in_use.add(-1)
            done.add(1)
            sem.release()

    pids = [procs.fork(worker) for _ in range(n_procs)]
    assert [procs.join(p) for p in pids] == [0] * n_procs
    assert 1 <= peak.load() <= value
    assert done.load() == n_procs * rounds
    assert in_use.load() == 0
    assert sem.value == value


def test_blocked_acquire_woken_by_release(procs):
    sem = Semaphore(0)

    def child() -> None:
        assert sem.acquire(timeout=20) is True

    pid = procs.fork(child)
    wait_for(lambda: sleepers(sem) == 1, what="child asleep")
    sem.release()
    assert procs.join(pid) == 0
    assert sem.value == 0


def test_release_n_wakes_n(procs):
    sem = Semaphore(0)
    got = AtomicCounter()

    def child() -> None:
        assert sem.acquire(timeout=20) is True
        got.add(1)

    pids = [procs.fork(child) for _ in range(3)]
    wait_for(lambda: sleepers(sem) == 3, what="three sleepers")
    sem.release(2)
    wait_for(lambda: got.load() == 2, what="two acquisitions")
    wait_for(lambda: sleepers(sem) == 1, what="the third back asleep")
    assert got.load() == 2  # exactly two got through; the third still waits
    assert sem.value == 0
    sem.release(1)
    assert [procs.join(p) for p in pids] == [0, 0, 0]
    assert got.load() == 3
    assert sem.value == 0


def test_timeout_in_child_while_others_hold(procs):
    sem = Semaphore(1)
    assert sem.acquire()

    def child() -> None:
        t = time.monotonic()
        assert sem.acquire(timeout=0.1) is False
        assert time.monotonic() - t < 1.0
        assert sem.acquire(block=False) is False

    assert procs.join(procs.fork(child)) == 0
    sem.release()


def test_create_attach_by_name(shm_name, procs):
    sem = Semaphore.create(shm_name, value=0)
    try:

        def child() -> None:
            mine = Semaphore.attach(shm_name)
            mine.release(5)
            mine.close()

        assert procs.join(procs.fork(child)) == 0
        assert sem.value == 5
    finally:
        sem.close()


def test_at_with_value_and_attach():
    region = Region.anonymous(4096)
    sem = Semaphore.at(region, 192, create=True, value=4)
    assert Semaphore.at(region, 192, create=False).value == 4
    assert sem.acquire(block=False)
    assert Semaphore.at(region, 192, create=False).value == 3
    with pytest.raises(TypeError):
        Semaphore.at(region, 192, create=False, value=1)
    with pytest.raises(ValueError):
        Semaphore.at(region, 256, create=True, value=-1)
    region.close()
