"""Barrier: parties wait until all arrived, then all go on; reusable; threading.Barrier's
action, timeout, abort, reset and broken semantics, across processes."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time

import pytest
from _procs import wait_for

from shmipc import AtomicCounter, Barrier, Closed, Event, LayoutMismatch, Region
from shmipc._native import lib
from shmipc.sync import BarrierTimeout

pytestmark = pytest.mark.timeout(60)

PROCS_JOIN_TIMEOUT = 30.0  # procs.join's default (the procs fixture, tests/conftest.py)


def generation(b: Barrier) -> int:
    """The generation number (the low 16 bits of the epoch word)."""
    return lib.shmipc_load32_acquire(b._base, b._off + Barrier._GEN) & 0xFFFF


def sleepers(b: Barrier) -> int:
    return lib.shmipc_load32_acquire(b._base, b._off + Barrier._WAITERS)


# ---- one process ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1 << 31])
def test_bad_party_count(bad):
    with pytest.raises(ValueError, match="parties"):
        Barrier(bad)


def test_attributes():
    b = Barrier(3)
    assert b.parties == 3
    assert b.n_waiting == 0
    assert not b.broken
    assert "0/3 waiting" in repr(b)
    assert b.action is None and b.timeout is None


def test_single_party_never_waits():
    b = Barrier(1)
    for g in range(5):
        assert b.wait(timeout=0) == 0
        assert generation(b) == g + 1
    assert b.n_waiting == 0


def test_timeout_breaks_like_threading():
    """A timed-out wait breaks the barrier (threading.Barrier's rule) and raises an error that
    is both BrokenBarrierError and TimeoutError; later waits fail at once until reset()."""
    b = Barrier(2)
    t = time.monotonic()
    with pytest.raises(BarrierTimeout, match="1 of 2") as info:
        b.wait(timeout=0.1)
    assert isinstance(info.value, threading.BrokenBarrierError)
    assert isinstance(info.value, TimeoutError)
    assert 0.09 <= time.monotonic() - t < 5.0
    assert b.broken
    assert b.n_waiting == 0
    assert "broken" in repr(b)
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(timeout=0)
    b.reset()
    assert not b.broken
    assert b.n_waiting == 0


def test_default_timeout_used_when_wait_gives_none():
    b = Barrier(2, timeout=0.05)
    assert b.timeout == 0.05
    with pytest.raises(BarrierTimeout):
        b.wait()
    assert b.broken


@pytest.mark.parametrize("timeout", [float("-inf"), -1, 0])
def test_zero_or_negative_timeout_does_not_wait(timeout):
    b = Barrier(2)
    with pytest.raises(BarrierTimeout):
        b.wait(timeout=timeout)


def test_nan_timeout_is_value_error():
    with pytest.raises(ValueError, match="NaN"):
        Barrier(2, timeout=float("nan"))
    b = Barrier(2)
    with pytest.raises(ValueError, match="NaN"):
        b.wait(timeout=float("nan"))
    assert b.n_waiting == 0 and not b.broken


def test_abort_and_reset_one_process():
    b = Barrier(3)
    b.abort()
    assert b.broken
    b.abort()  # idempotent
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(timeout=5)
    b.reset()
    assert not b.broken
    b.reset()  # nothing waiting, not broken: a no-op
    assert not b.broken and b.n_waiting == 0


def test_action_runs_once_in_the_last_party():
    ran = []
    b = Barrier(1, action=lambda: ran.append(1))
    assert b.wait() == 0
    assert b.wait() == 0
    assert ran == [1, 1]


def test_action_exception_breaks_and_propagates():
    def boom() -> None:
        raise KeyError("in action")

    b = Barrier(1, action=boom)
    with pytest.raises(KeyError, match="in action"):
        b.wait()
    assert b.broken
    b.reset()
    b.action = None
    assert b.wait() == 0


def test_pickle_carries_action_and_timeout(shm_name):
    b = Barrier.create(shm_name, parties=2, action=print, timeout=3.5)
    try:
        other = pickle.loads(pickle.dumps(b))
        assert other.action is print and other.timeout == 3.5
        assert other.parties == 2
        other.close()
        mine = Barrier.attach(shm_name, timeout=1.0)
        assert mine.timeout == 1.0 and mine.action is None
        mine.close()
    finally:
        b.close()


def test_closed_barrier_raises_closed():
    b = Barrier(2)
    b.close()
    b.close()  # closing twice is fine
    calls = [b.wait, b.abort, b.reset, lambda: b.parties, lambda: b.n_waiting, lambda: b.broken]
    for call in calls:
        with pytest.raises(Closed, match="is closed"):
            call()
    assert "closed" in repr(b)


def test_layout_matches_docstring():
    assert Barrier.LAYOUT["arrived"] == 0
    assert Barrier.LAYOUT["epoch"] == 4
    assert Barrier.LAYOUT["parties"] == 8
    assert Barrier.LAYOUT["waiters"] == 12
    assert Barrier.SIZE == 64


# ---- across processes -----------------------------------------------------------------------


def test_two_parties_meet(procs):
    b = Barrier(2)

    def child() -> None:
        assert b.wait(timeout=20) in (0, 1)

    pid = procs.fork(child)
    assert b.wait(timeout=20) in (0, 1)
    assert procs.join(pid) == 0
    assert generation(b) == 1
    assert b.n_waiting == 0


def test_reusable_and_nobody_passes_early(procs):
    """4 processes x many generations: a party passes generation g only after all 4 arrived
    at g, and the arrival indices within each generation are 0..3, each once."""
    parties, gens = 4, 25
    region = Region.anonymous(4096 * 4)
    b = Barrier.at(region, 0, create=True, parties=parties)
    # Per generation: an arrival counter, and one bit per arrival index handed out.
    arrived = [AtomicCounter.at(region, 64 * (1 + g), create=True) for g in range(gens)]
    indices = [AtomicCounter.at(region, 64 * (1 + gens + g), create=True) for g in range(gens)]
    # Per party: the generation it is in (written before it arrives).
    at_gen = [AtomicCounter.at(region, 64 * (1 + 2 * gens + p), create=True) for p in range(4)]

    def party(p: int) -> None:
        for g in range(gens):
            at_gen[p].store(g)
            arrived[g].add(1)
            idx = b.wait(timeout=20)
            # Everyone has arrived at this generation before anyone leaves it ...
            assert arrived[g].load() == parties, (p, g, arrived[g].load())
            # ... so every party is in generation g or later.
            assert all(c.load() >= g for c in at_gen), (p, g)
            assert 0 <= idx < parties
            indices[g].add(1 << (8 * idx))  # a byte per index: a duplicate shows as 2

    pids = [procs.fork(lambda p=p: party(p)) for p in range(parties)]
    assert [procs.join(p) for p in pids] == [0] * parties
    for g in range(gens):
        assert arrived[g].load() == parties
        assert indices[g].load() == 0x01010101, f"generation {g}: {indices[g].load():#x}"
    assert generation(b) == gens
    assert b.n_waiting == 0
    region.close()


def test_timeout_breaks_for_every_waiter_then_reset_makes_it_usable(procs):
    """threading.Barrier's rule across processes: one waiter's timeout breaks the barrier for
    the others already waiting (they get BrokenBarrierError); reset() mends it."""
    b = Barrier(3)
    saw_broken = AtomicCounter()

    def patient() -> None:
        try:
            b.wait(timeout=30)
        except threading.BrokenBarrierError:
            saw_broken.add(1)

    pid = procs.fork(patient)
    wait_for(lambda: sleepers(b) == 1, what="child asleep")
    with pytest.raises(BarrierTimeout):
        b.wait(timeout=0.1)
    assert procs.join(pid) == 0
    assert saw_broken.load() == 1
    assert b.broken
    b.reset()

    def full() -> None:
        b.wait(timeout=20)

    pids = [procs.fork(full) for _ in range(2)]
    assert b.wait(timeout=20) in (0, 1, 2)
    assert [procs.join(p) for p in pids] == [0, 0]
    assert not b.broken
    assert b.n_waiting == 0


def test_abort_wakes_sleepers_in_other_processes(procs):
    b = Barrier(3)
    saw_broken = AtomicCounter()

    def waiter() -> None:
        try:
            b.wait(timeout=30)
        except threading.BrokenBarrierError:
            saw_broken.add(1)

    pids = [procs.fork(waiter) for _ in range(2)]
    wait_for(lambda: sleepers(b) == 2, what="two sleepers")
    b.abort()
    assert [procs.join(p) for p in pids] == [0, 0]
    assert saw_broken.load() == 2


def test_reset_frees_waiters_with_broken_and_stays_usable(procs):
    b = Barrier(2)
    saw_broken = AtomicCounter()

    def waiter() -> None:
        try:
            b.wait(timeout=30)
        except threading.BrokenBarrierError:
            saw_broken.add(1)
        b.wait(timeout=30)  # and the next generation works

    pid = procs.fork(waiter)
    wait_for(lambda: sleepers(b) == 1, what="child asleep")
    b.reset()
    assert not b.broken
    b.wait(timeout=30)
    assert procs.join(pid) == 0
    assert saw_broken.load() == 1


def test_late_waker_knows_its_generation_went_through(procs):
    """A party stopped (SIGSTOP) in its wait wakes after its generation was released and the
    next one broken and reset: it still returns normally (the epoch word records the last
    generation released)."""
    b = Barrier(2)
    passed = Event()

    def party() -> None:
        b.wait(timeout=60)
        passed.set()

    pid = procs.fork(party)
    wait_for(lambda: sleepers(b) == 1, what="child asleep")
    os.kill(pid, signal.SIGSTOP)
    try:
        b.wait(timeout=30)  # releases the child's generation while it is stopped
        b.abort()
        b.reset()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert passed.wait(30)
    assert procs.join(pid) == 0


def test_action_runs_once_per_generation_across_processes(procs):
    region = Region.anonymous(4096)
    runs = AtomicCounter.at(region, 64, create=True)
    b = Barrier.at(region, 0, create=True, parties=3, action=lambda: runs.add(1))
    seen = AtomicCounter.at(region, 128, create=True)

    def party() -> None:
        for _ in range(5):
            b.wait(timeout=30)
            seen.add(runs.load())

    pids = [procs.fork(party) for _ in range(2)]
    party()
    assert [procs.join(p) for p in pids] == [0, 0]
    assert runs.load() == 5  # one party ran it each generation
    # Every party saw its generation's action done before it went on: 3 x (1+2+3+4+5).
    assert seen.load() == 45
    region.close()


def test_sleeping_parties_all_released(procs):
    b = Barrier(5)
    pids = [procs.fork(lambda: b.wait(timeout=20)) for _ in range(4)]
    wait_for(lambda: sleepers(b) == 4, what="four sleepers")
    assert b.n_waiting == 4
    assert b.wait(timeout=20) == 4  # the last to arrive
    assert [procs.join(p) for p in pids] == [0] * 4


def test_create_attach_by_name(shm_name, procs):
    b = Barrier.create(shm_name, parties=2)
    try:

        def child() -> None:
            mine = Barrier.attach(shm_name)
            assert mine.parties == 2
            mine.wait(timeout=20)
            mine.close()

        pid = procs.fork(child)
        b.wait(timeout=20)
        assert procs.join(pid) == 0
    finally:
        b.close()


def test_attach_with_corrupt_party_count_is_layout_mismatch(shm_name):
    b = Barrier.create(shm_name, parties=2)
    try:
        lib.shmipc_store32_release(b._base, b._off + Barrier._PARTIES, 0)
        with pytest.raises(LayoutMismatch, match="party count"):
            Barrier.attach(shm_name)
    finally:
        b.close()


def test_at_create_resets_stale_arrivals():
    region = Region.anonymous(4096)
    region.buffer[0:64] = b"\x01" * 64
    b = Barrier.at(region, 0, create=True, parties=2)
    assert b.n_waiting == 0
    assert generation(b) == 0
    assert b.parties == 2
    region.close()


def test_generation_wraps_around():
    """The generation is 16 bits: passing 0xFFFF -> 0 keeps telling released from broken."""
    b = Barrier(2)
    lib.shmipc_store32_release(b._base, b._off + Barrier._GEN, 0xFFFC << 16 | 0xFFFD)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            for _ in range(6):
                b.wait(timeout=30)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    indices = [b.wait(timeout=30) for _ in range(6)]
    t.join(30)
    assert not errors
    assert all(i in (0, 1) for i in indices)
    assert generation(b) == (0xFFFD + 6) & 0xFFFF
    assert not b.broken
