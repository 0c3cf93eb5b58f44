"""Barrier: parties wait until all arrived, then all go on; reusable; timeouts withdraw."""

from __future__ import annotations

import time

import pytest
from _procs import wait_for

from shmipc import AtomicCounter, Barrier, LayoutMismatch, Region
from shmipc._native import lib

pytestmark = pytest.mark.timeout(60)

PROCS_JOIN_TIMEOUT = 30.0  # procs.join's default (the procs fixture, tests/conftest.py)


def generation(b: Barrier) -> int:
    return lib.shmipc_load32_acquire(b._base, b._off + Barrier._GEN)


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
    assert "0/3 waiting" in repr(b)


def test_single_party_never_waits():
    b = Barrier(1)
    for g in range(5):
        assert b.wait(timeout=0) == 0
        assert generation(b) == g + 1
    assert b.n_waiting == 0


def test_timeout_raises_and_withdraws():
    b = Barrier(2)
    t = time.monotonic()
    with pytest.raises(TimeoutError, match="1 of 2"):
        b.wait(timeout=0.1)
    assert 0.09 <= time.monotonic() - t < 1.0
    assert b.n_waiting == 0  # the arrival was taken back
    assert generation(b) == 0
    with pytest.raises(TimeoutError):
        b.wait(timeout=0)
    assert b.n_waiting == 0


def test_layout_matches_docstring():
    assert Barrier.LAYOUT["arrived"] == 0
    assert Barrier.LAYOUT["generation"] == 4
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


def test_timeout_then_still_usable(procs):
    b = Barrier(3)

    def early() -> None:
        with pytest.raises(TimeoutError):
            b.wait(timeout=0.1)

    assert procs.join(procs.fork(early)) == 0
    assert b.n_waiting == 0
    assert generation(b) == 0

    def full() -> None:
        b.wait(timeout=20)

    pids = [procs.fork(full) for _ in range(2)]
    assert b.wait(timeout=20) in (0, 1, 2)
    assert [procs.join(p) for p in pids] == [0, 0]
    assert generation(b) == 1
    assert b.n_waiting == 0


def test_timed_out_party_does_not_count_for_the_next_generation(procs):
    """After one party timed out, the next round still needs all parties."""
    b = Barrier(2)
    with pytest.raises(TimeoutError):
        b.wait(timeout=0.05)
    passed = AtomicCounter()

    def child() -> None:
        b.wait(timeout=20)
        passed.add(1)

    pid = procs.fork(child)
    wait_for(lambda: sleepers(b) == 1, what="child asleep")
    assert passed.load() == 0  # alone, it waits: the withdrawn arrival did not count
    assert b.n_waiting == 1
    b.wait(timeout=20)
    assert procs.join(pid) == 0
    assert passed.load() == 1


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
