"""AtomicCounter: a signed 64-bit integer updated atomically across processes."""

from __future__ import annotations

import os
import pickle

import pytest

from shmipc import AtomicCounter, Event, LayoutMismatch, Region

pytestmark = pytest.mark.timeout(60)

PROCS_JOIN_TIMEOUT = 30.0  # procs.join's default (the procs fixture, tests/conftest.py)

MAX = (1 << 63) - 1
MIN = -(1 << 63)


# ---- values ---------------------------------------------------------------------------------


def test_starts_at_zero_or_given_value():
    assert AtomicCounter().load() == 0
    assert AtomicCounter(-5).value == -5
    assert AtomicCounter(value=MAX).load() == MAX


def test_store_load_and_value_property():
    c = AtomicCounter()
    c.store(12)
    assert c.load() == 12
    c.value = -3
    assert c.value == -3


def test_add_returns_new_value():
    c = AtomicCounter(10)
    assert c.add() == 11
    assert c.add(5) == 16
    assert c.add(-20) == -4
    assert c.load() == -4


def test_signed_range_round_trips():
    c = AtomicCounter()
    for v in (MIN, -1, 0, 1, MAX, 1 << 32, -(1 << 32)):
        c.store(v)
        assert c.load() == v


@pytest.mark.parametrize("bad", [MAX + 1, MIN - 1, 1 << 64, -(1 << 64), (1 << 64) - 1])
def test_out_of_range_values_raise_overflow(bad):
    c = AtomicCounter(7)
    with pytest.raises(OverflowError):
        c.store(bad)
    with pytest.raises(OverflowError):
        c.add(bad)
    with pytest.raises(OverflowError):
        c.exchange(bad)
    with pytest.raises(OverflowError):
        c.compare_exchange(bad, 0)
    with pytest.raises(OverflowError):
        c.compare_exchange(7, bad)
    with pytest.raises(OverflowError):
        AtomicCounter(bad)
    assert c.load() == 7  # nothing was written


def test_add_wraps_around_like_int64():
    c = AtomicCounter(MAX)
    assert c.add(1) == MIN
    assert c.load() == MIN
    assert c.add(-1) == MAX
    c.store(MIN)
    assert c.add(MIN) == 0  # -2**63 + -2**63 wraps to 0


def test_exchange_returns_previous():
    c = AtomicCounter(4)
    assert c.exchange(-9) == 4
    assert c.exchange(MAX) == -9
    assert c.load() == MAX


def test_compare_exchange():
    c = AtomicCounter(1)
    assert c.compare_exchange(1, 2) is True
    assert c.load() == 2
    assert c.compare_exchange(1, 3) is False
    assert c.load() == 2  # unchanged on failure
    c.store(-1)
    assert c.compare_exchange(-1, MIN) is True
    assert c.load() == MIN


def test_repr_shows_value():
    c = AtomicCounter(33)
    assert "AtomicCounter" in repr(c)
    assert "value=33" in repr(c)
    assert "anonymous" in repr(c)


# ---- across processes -----------------------------------------------------------------------


def test_increments_from_forked_children_are_exact(procs):
    c = AtomicCounter()
    n = 5000

    def work() -> None:
        for _ in range(n):
            c.add(1)

    pids = [procs.fork(work) for _ in range(4)]
    assert [procs.join(p) for p in pids] == [0] * 4
    assert c.load() == 4 * n


def test_create_and_attach_by_name(shm_name, procs):
    c = AtomicCounter.create(shm_name, value=5)
    try:
        assert c.name == shm_name
        other = AtomicCounter.attach(shm_name)
        assert other.load() == 5
        other.add(2)
        assert c.load() == 7

        def child() -> None:
            mine = AtomicCounter.attach(shm_name)
            mine.add(100)
            mine.close()

        assert procs.join(procs.fork(child)) == 0
        assert c.load() == 107
        other.close()
        assert os.path.exists(f"/dev/shm/{shm_name}")  # an attacher's close keeps the name
    finally:
        c.close()
    assert not os.path.exists(f"/dev/shm/{shm_name}")  # the creator's close unlinks it
    with pytest.raises(FileNotFoundError):
        AtomicCounter.attach(shm_name)


def test_create_with_existing_name_fails(shm_name):
    c = AtomicCounter.create(shm_name)
    try:
        with pytest.raises(FileExistsError):
            AtomicCounter.create(shm_name)
    finally:
        c.close()


def test_attach_other_kind_is_layout_mismatch(shm_name):
    ev = Event.create(shm_name)
    try:
        with pytest.raises(LayoutMismatch):
            AtomicCounter.attach(shm_name)
    finally:
        ev.close()


def test_pickles_by_name(shm_name):
    c = AtomicCounter.create(shm_name, value=1)
    try:
        copy = pickle.loads(pickle.dumps(c))
        copy.add(1)
        assert c.load() == 2
        assert copy.name == shm_name
        copy.close()
    finally:
        c.close()


def test_anonymous_does_not_pickle():
    with pytest.raises(TypeError, match="forked"):
        pickle.dumps(AtomicCounter())


# ---- placement --------------------------------------------------------------------------------


def test_at_two_primitives_in_one_region():
    region = Region.anonymous(4096)
    c = AtomicCounter.at(region, 0, create=True, value=3)
    ev = Event.at(region, 64, create=True)
    d = AtomicCounter.at(region, 128, create=True, value=-1)
    ev.set()
    c.add(1)
    assert c.load() == 4
    assert d.load() == -1
    assert ev.is_set()
    assert AtomicCounter.at(region, 0, create=False).load() == 4  # a second handle, same value
    c.close()  # a placed primitive's close leaves the region alone
    assert not region.closed
    region.close()


def test_at_in_named_region_pickles_through_the_region(shm_name):
    region = Region.create(4096, name=shm_name)
    try:
        c = AtomicCounter.at(region, 256, create=True, value=9)
        copy = pickle.loads(pickle.dumps(c))
        assert copy.load() == 9
        copy.add(1)
        assert c.load() == 10
        again = pickle.loads(pickle.dumps(copy))  # a re-attached handle passes on too
        assert again.load() == 10
        again.close()
        copy.close()
    finally:
        region.close()


def test_at_without_create_keeps_value():
    region = Region.anonymous(4096)
    AtomicCounter.at(region, 64, create=True, value=77)
    assert AtomicCounter.at(region, 64, create=False).load() == 77
    region.close()


@pytest.mark.parametrize("offset", [1, 4, 8, 32, 63, 65])
def test_at_misaligned_offset_is_value_error(offset):
    region = Region.anonymous(4096)
    with pytest.raises(ValueError, match="aligned"):
        AtomicCounter.at(region, offset, create=True)
    region.close()


@pytest.mark.parametrize("offset", [-64, 4096, 8192])
def test_at_out_of_range_offset_is_value_error(offset):
    region = Region.anonymous(4096)
    with pytest.raises(ValueError):
        AtomicCounter.at(region, offset, create=True)
    region.close()


def test_at_past_the_end_of_a_small_region():
    region = Region.anonymous(AtomicCounter.SIZE)
    AtomicCounter.at(region, 0, create=True)
    with pytest.raises(ValueError, match="needs"):
        AtomicCounter.at(Region.anonymous(AtomicCounter.SIZE - 8), 0, create=True)
    region.close()


def test_attaching_takes_no_parameters():
    region = Region.anonymous(4096)
    with pytest.raises(TypeError, match="no parameters"):
        AtomicCounter.at(region, 0, create=False, value=1)
    region.close()


def test_layout_matches_docstring():
    assert AtomicCounter.LAYOUT["value"] == 0
    assert AtomicCounter.SIZE == 64
    assert AtomicCounter.ALIGN == 64
