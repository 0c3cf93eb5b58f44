"""The three ways to get every primitive, the same for all five classes.

* standalone (``Cls(...)``), shared with children forked afterwards;
* by name (``Cls.create(name)`` / ``Cls.attach(name)``, and pickling by name for spawn);
* placed (``Cls.at(region, offset, create=...)``) inside a caller's region.
"""

from __future__ import annotations

import os
import pickle

import pytest

from shmipc import AtomicCounter, Barrier, Event, LayoutMismatch, Lock, Region, Semaphore
from shmipc.errors import Closed

pytestmark = pytest.mark.timeout(60)

CLASSES = [AtomicCounter, Event, Semaphore, Lock, Barrier]
PARAMS = {Barrier: {"parties": 2}}  # required creation parameters
IDS = [c.__name__ for c in CLASSES]


def make(cls, **extra):
    return cls(**{**PARAMS.get(cls, {}), **extra})


def touch(obj) -> None:
    """One operation that reads and writes the primitive's shared state."""
    if isinstance(obj, AtomicCounter):
        obj.add(1)
    elif isinstance(obj, Event):
        obj.set()
        obj.clear()
    elif isinstance(obj, (Semaphore, Lock)):
        assert obj.acquire(block=False)
        obj.release()
    elif isinstance(obj, Barrier):
        assert obj.parties == 2


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_size_and_alignment(cls):
    assert cls.SIZE % 64 == 0
    assert cls.LAYOUT.size <= cls.SIZE
    assert cls.ALIGN == 64


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_standalone_is_anonymous(cls):
    obj = make(cls)
    touch(obj)
    assert obj.name is None
    assert obj.region.name is None
    assert "anonymous@0" in repr(obj)
    with pytest.raises(TypeError, match=r"create\(name\)"):
        pickle.dumps(obj)
    obj.close()


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_create_attach_close_unlink(cls, shm_name):
    obj = cls.create(shm_name, **PARAMS.get(cls, {}))
    path = f"/dev/shm/{shm_name}"
    try:
        assert obj.name == shm_name
        assert os.stat(path).st_mode & 0o777 == 0o600
        other = cls.attach(shm_name)
        touch(other)
        assert shm_name in repr(other)
        other.close()
        assert os.path.exists(path)
        with pytest.raises(FileExistsError):
            cls.create(shm_name, **PARAMS.get(cls, {}))
    finally:
        obj.close()
    assert not os.path.exists(path)
    obj.close()  # a second close does nothing


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_create_with_random_name(cls):
    obj = cls.create(**PARAMS.get(cls, {}))
    try:
        assert obj.name.startswith("shmipc_")
        assert os.path.exists(f"/dev/shm/{obj.name}")
    finally:
        obj.close()
    assert not os.path.exists(f"/dev/shm/{obj.name}")


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_unlink_removes_name_but_handle_works(cls, shm_name):
    obj = cls.create(shm_name, **PARAMS.get(cls, {}))
    obj.unlink()
    assert not os.path.exists(f"/dev/shm/{shm_name}")
    touch(obj)
    with pytest.raises(FileNotFoundError):
        cls.attach(shm_name)
    obj.close()


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_attach_missing_name(cls, shm_name):
    with pytest.raises(FileNotFoundError):
        cls.attach(shm_name)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_attach_other_kind(cls, shm_name):
    other_cls = Event if cls is not Event else Lock
    other = other_cls.create(shm_name, **PARAMS.get(other_cls, {}))
    try:
        with pytest.raises(LayoutMismatch):
            cls.attach(shm_name)
    finally:
        other.close()


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_attach_plain_region_is_layout_mismatch(cls, shm_name):
    region = Region.create(4096, name=shm_name)
    try:
        with pytest.raises(LayoutMismatch):
            cls.attach(shm_name)
    finally:
        region.close()


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_pickle_by_name_round_trip(cls, shm_name):
    obj = cls.create(shm_name, **PARAMS.get(cls, {}))
    try:
        copy = pickle.loads(pickle.dumps(obj))
        assert type(copy) is cls
        assert copy.name == shm_name
        touch(copy)
        again = pickle.loads(pickle.dumps(copy))  # a re-attached handle pickles as well
        touch(again)
        again.close()
        copy.close()
        assert os.path.exists(f"/dev/shm/{shm_name}")  # copies never unlink
    finally:
        obj.close()


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_placed_in_named_region_pickles_by_region_name(cls, shm_name):
    region = Region.create(4096, name=shm_name)
    try:
        obj = cls.at(region, 512, create=True, **PARAMS.get(cls, {}))
        copy = pickle.loads(pickle.dumps(obj))
        assert copy.region is not region
        touch(copy)
        again = pickle.loads(pickle.dumps(copy))
        touch(again)
        again.close()
        copy.close()
        obj.close()  # placed: leaves the region open
        assert not region.closed
    finally:
        region.close()


def test_all_five_placed_side_by_side():
    region = Region.anonymous(4096)
    offsets = {}
    off = 0
    objs = []
    for cls in CLASSES:
        objs.append(cls.at(region, off, create=True, **PARAMS.get(cls, {})))
        offsets[cls] = off
        off += cls.SIZE
    for obj in objs:
        touch(obj)
    counter, event, sem, lock, _barrier = objs
    counter.store(-7)
    event.set()
    assert sem.acquire(block=False)
    assert lock.acquire(block=False)
    # Each re-attached at its offset sees its own state only.
    assert AtomicCounter.at(region, offsets[AtomicCounter], create=False).load() == -7
    assert Event.at(region, offsets[Event], create=False).is_set()
    assert Semaphore.at(region, offsets[Semaphore], create=False).value == 0
    assert Barrier.at(region, offsets[Barrier], create=False).parties == 2
    lock.release()
    region.close()


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
@pytest.mark.parametrize("offset", [8, 32, 100])
def test_misaligned_offset(cls, offset):
    region = Region.anonymous(4096)
    with pytest.raises(ValueError, match="aligned"):
        cls.at(region, offset, create=True, **PARAMS.get(cls, {}))
    region.close()


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_offset_out_of_range(cls):
    region = Region.anonymous(4096)
    for offset in (-64, 4096, 4096 - 64 + 64 * ((cls.SIZE - 1) // 64)):
        if offset + cls.SIZE <= 4096 and offset >= 0:
            continue
        with pytest.raises(ValueError):
            cls.at(region, offset, create=True, **PARAMS.get(cls, {}))
    cls.at(region, 4096 - cls.SIZE, create=True, **PARAMS.get(cls, {}))  # the last slot fits
    region.close()


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_at_in_closed_region(cls):
    region = Region.anonymous(4096)
    region.close()
    # A closed region reports size 0, so this is the size check's ValueError today.
    with pytest.raises((Closed, ValueError)):
        cls.at(region, 0, create=True, **PARAMS.get(cls, {}))


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_handle_outlives_closed_region(cls):
    """Closing the region under a primitive never leaves it touching unmapped memory."""
    region = Region.anonymous(4096)
    obj = cls.at(region, 0, create=True, **PARAMS.get(cls, {}))
    region.close()
    touch(obj)


@pytest.mark.parametrize("cls", [Semaphore, Lock, Barrier, Event], ids=lambda c: c.__name__)
def test_attach_mode_takes_no_parameters(cls):
    region = Region.anonymous(4096)
    cls.at(region, 0, create=True, **PARAMS.get(cls, {}))
    with pytest.raises(TypeError, match="no parameters"):
        cls.at(region, 0, create=False, bogus=1)
    region.close()
