"""P7/B5: a receiver that asked for writable buffers (``PoolHook.writable``) maps a block
writable only when it is the block's sole holder; a block with another holder is never
mapped writable (the receiver gets a private copy)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from shmipc import BufferPool, Queue
from shmipc.buffers import _find_loan, _Received, _self_key

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pool():
    p = BufferPool.create(size=16 << 20)
    yield p
    p.close()


def _queue(pool: BufferPool, writable: bool = True) -> Queue:
    q = Queue(pool=pool, zero_copy_threshold=1024, codec="pickle")
    q._pool_hook.writable = writable
    return q


def in_use(p: BufferPool) -> int:
    return sum(c.in_use for c in p.statistics().classes)


def test_sole_holder_gets_the_block_writable_in_place(pool):
    q = _queue(pool)
    try:
        arr = np.arange(4096, dtype=np.float64)
        q.put(arr)  # copied once into a block; the sender's reference moves to the channel
        got = q.get(timeout=5)
        assert got.flags.writeable
        assert isinstance(_find_loan(got), _Received)  # in the block, not a copy
        got += 1.0
        assert got.sum() == (arr + 1.0).sum()
        del got
        gc.collect()
        assert in_use(pool) == 0
    finally:
        q.close()


def test_block_with_another_holder_is_never_mapped_writable(pool):
    q = _queue(pool)
    try:
        loan = pool.loan_array((4096,), np.float64)  # the sender keeps this reference
        loan[:] = 7.0
        q.put(loan)
        got = q.get(timeout=5)
        assert got.flags.writeable
        assert _find_loan(got) is None  # a private copy: the loan's holder can still see it
        got[:] = 1.0
        assert float(loan[0]) == 7.0  # the copy does not alias the block
        del got
        gc.collect()
        assert in_use(pool) == 1  # only the sender's loan
        del loan
        gc.collect()
        assert in_use(pool) == 0
    finally:
        q.close()


def test_sole_check_counts_every_other_holder(pool):
    loan = pool.loan(4096)
    b, m = loan._block, loan._map
    me = _self_key()
    assert m.sole(b.cls, b.index, b.gen, me)
    other = (me + 1) & ((1 << 47) - 1)
    assert m.adjust(b.cls, b.index, b.gen, 0, 0, other, 1) >= 0  # a second holder
    assert not m.sole(b.cls, b.index, b.gen, me)
    assert not m.sole(b.cls, b.index, b.gen, other)
    assert m.adjust(b.cls, b.index, b.gen, other, 1, 0, 0) >= 0
    assert m.adjust(b.cls, b.index, b.gen, 0, 0, me, 1) >= 0  # two references of ours
    assert not m.sole(b.cls, b.index, b.gen, me)
    assert m.adjust(b.cls, b.index, b.gen, me, 1, 0, 0) >= 0
    assert m.sole(b.cls, b.index, b.gen, me)
    assert not m.sole(b.cls, b.index, b.gen + 1, me)  # another generation: stale
    loan.release()


def test_forwarded_block_arrives_as_a_copy(pool):
    q1, q2 = _queue(pool), _queue(pool)
    try:
        q1.put(np.full(4096, 3.0))
        first = q1.get(timeout=5)
        assert isinstance(_find_loan(first), _Received) and first.flags.writeable
        q2.put(first)  # forwarded by handle: we still hold our reference
        second = q2.get(timeout=5)
        assert _find_loan(second) is None and second.flags.writeable
        second[:] = 0.0
        assert float(first[0]) == 3.0
    finally:
        q1.close()
        q2.close()


def test_without_writable_blocks_stay_read_only(pool):
    q = _queue(pool, writable=False)
    try:
        q.put(np.arange(4096, dtype=np.float64))
        got = q.get(timeout=5)
        assert not got.flags.writeable
    finally:
        q.close()
