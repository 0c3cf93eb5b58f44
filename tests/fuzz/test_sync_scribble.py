"""A Condition's waiter slots and a JoinableQueue's count segment overwritten by a hostile or
broken peer. Both hold only integers (identities, counts, sequence words), never offsets, so
the contract is: every call returns or raises a typed error (``shmipc.ShmipcError``, or the
stdlib's own ``ValueError`` for ``task_done`` with nothing unfinished), within its timeout,
and a live waiter still gets its notify when the slots name the dead."""

from __future__ import annotations

import os
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmipc import Condition, JoinableQueue, ShmipcError
from shmipc import joinable as jq
from shmipc.sync import Condition_SLOTS

pytestmark = pytest.mark.timeout(120)

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
HOSTILE64 = st.one_of(
    st.sampled_from([0, 1, 2**31, 2**31 - 1, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)
HOSTILE32 = st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _put(buf: memoryview, off: int, value: int, width: int) -> None:
    (_U64 if width == 8 else _U32).pack_into(buf, off, value)


def _dead_identity() -> int:
    """The identity (tid | start time << 32) of a process that has exited and been reaped."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        from shmipc._native import lib

        os.write(w, _U64.pack(lib.shmipc_lock_identity()))
        os._exit(0)
    os.close(w)
    ident = _U64.unpack(os.read(r, 8))[0]
    os.close(r)
    os.waitpid(pid, 0)
    return ident


@pytest.fixture
def cond():
    c = Condition.create()
    yield c
    c.close()


@SETTINGS
@given(
    slots=st.lists(HOSTILE64, min_size=Condition_SLOTS, max_size=Condition_SLOTS),
    counters=st.lists(HOSTILE32, min_size=4, max_size=4),
    n=st.integers(0, 100),
)
def test_condition_with_scribbled_slots_and_counters_never_hangs_or_crashes(
    cond, slots, counters, n
):
    buf = cond._region.buffer
    base = cond._offset
    fields = ("cursor", "sleepers", "overflow", "overflow_gen")
    for field, value in zip(fields, counters, strict=True):
        _put(buf, base + Condition.LAYOUT[field], value, 4)
    for i, value in enumerate(slots):
        _put(buf, base + Condition._SLOT0 + 8 * i, value, 8)
    t0 = time.monotonic()
    try:
        with cond:
            cond.notify(n)
            cond.notify_all()
            assert isinstance(cond.wait(0.01), bool)
        repr(cond)
    except ShmipcError:
        pass
    assert time.monotonic() - t0 < 30
    # Clean slots and counters for the next example (the lock word is not scribbled).
    buf[base + 64 : base + Condition.SIZE] = bytes(Condition.SIZE - 64)


def test_a_live_waiter_is_notified_when_every_other_slot_names_the_dead(cond):
    dead = _dead_identity()
    buf = cond._region.buffer
    for i in range(Condition_SLOTS):
        _put(buf, cond._offset + Condition._SLOT0 + 8 * i, dead, 8)
    _put(buf, cond._offset + Condition.LAYOUT["cursor"], 7, 4)
    registered, result = threading.Event(), []

    def waiter() -> None:
        with cond:
            registered.set()  # set under the lock: the notify below comes after its register
            result.append(cond.wait(30))

    t = threading.Thread(target=waiter)
    t.start()
    assert registered.wait(10)
    deadline = time.monotonic() + 10
    while not result and time.monotonic() < deadline:
        with cond:
            cond.notify(1)  # the dead are skipped (I3): one notify reaches the live waiter
        time.sleep(0.01)
    t.join(10)
    assert result == [True]


@pytest.fixture
def jqueue():
    q = JoinableQueue(capacity=1 << 16)
    yield q
    q.close()


@SETTINGS
@given(
    unfinished=HOSTILE64,
    seq=HOSTILE32,
    joiners=HOSTILE32,
    slots=st.lists(st.tuples(HOSTILE64, HOSTILE64), min_size=jq.SLOTS, max_size=jq.SLOTS),
)
def test_joinable_with_a_scribbled_count_segment_raises_only_typed_errors(
    jqueue, unfinished, seq, joiners, slots
):
    buf = jqueue._jregion.buffer
    _put(buf, jq._UNFINISHED, unfinished, 8)
    _put(buf, jq._SEQ, seq, 4)
    _put(buf, jq._JOINERS, joiners, 4)
    for i, (owner, taken) in enumerate(slots):
        _put(buf, jq._SLOTS + i * jq._SLOT, owner, 8)
        _put(buf, jq._SLOTS + i * jq._SLOT + 8, taken, 8)
    jqueue._slot = None  # as a process attaching now would see it
    t0 = time.monotonic()
    try:
        assert isinstance(jqueue.unfinished, int)
        assert jqueue.abandoned() >= 0
        jqueue.put_bytes(b"task")
        assert jqueue.get_bytes(timeout=5) == b"task"
        try:
            jqueue.task_done()
        except ValueError:
            pass  # the scribbled count said nothing was unfinished: the stdlib's error
        assert isinstance(jqueue.join(timeout=0.01), bool)
        repr(jqueue)
    except ShmipcError:
        pass
    assert time.monotonic() - t0 < 30
    buf[: jq.STATE.size] = bytes(jq.STATE.size)
    jqueue._slot = None
