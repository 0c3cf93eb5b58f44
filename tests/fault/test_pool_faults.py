"""SIGKILL holders of pool blocks: their blocks come back, nobody else's data changes.

The 1,000-kill run forks a child in a loop that loans, fills, views and releases blocks of
every size as fast as it can (a dozen at once), and SIGKILLs it after a
random delay: mid-allocation, mid-release, inside a block's locked section, while holding a
dozen loans. Children race each other's liveness passes (an exhausted pool makes a loan run
one). Afterwards every block is back within the liveness interval, and the survivor's (this
process's) own loans and received views kept their bytes throughout.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import sys
import time

import numpy as np
import pytest
from _procs import Child, wait_exit

from shmipc import BufferPool, Queue

pytestmark = pytest.mark.timeout(180)

LIVENESS = 0.2
KILLS = int(os.environ.get("SHMIPC_POOL_KILLS", "1000"))


def churn(pool: BufferPool, seed: int) -> None:
    """A holder that never stops: loans, fills, views and releases. (It does not put: a kill
    inside put's few-microsecond window between adding the transit reference and storing
    the record leaves that block with the channel, the documented limit of buffers.py.)"""
    rng = random.Random(seed)
    held: list = []
    while True:
        r = rng.random()
        if r < 0.5 or not held:
            n = rng.choice((100, 5000, 60_000, 300_000))
            try:
                arr = pool.loan_array(n // 8, np.int64, timeout=0.05)
            except BufferError:
                continue
            arr[:] = seed
            held.append(arr)
        else:
            arr = held.pop(rng.randrange(len(held)))
            assert (arr == seed).all()
        if len(held) > 12:
            held.pop(0)


def in_use(p: BufferPool) -> int:
    return sum(c.in_use for c in p.statistics().classes)


def test_sigkill_holders_at_random_points(tmp_path):
    pool = BufferPool.create(size=8 << 20, liveness_interval=LIVENESS)
    q = Queue(pool=pool, zero_copy_threshold=1024, capacity=1 << 16)
    rng = random.Random(1234)
    try:
        baseline = pool.statistics().free_bytes
        # the survivor's own data: a loan it keeps writing, and views it received
        mine = pool.loan_array(10_000, np.int64)
        mine[:] = np.arange(10_000)
        q.put(np.full(5000, 77, np.int64))
        view = q.get()
        deadline = time.monotonic() + 0.12 * KILLS
        for i in range(KILLS):
            child = Child(lambda fd, i=i: churn(pool, 1000 + i))
            time.sleep(rng.random() * 0.004)
            os.kill(child.pid, signal.SIGKILL)
            code = wait_exit(child.pid, 30)
            child._reaped = True
            child.kill()
            assert code in (-signal.SIGKILL, 1), f"child ended with {code}"
            assert (mine == np.arange(10_000)).all() and (view == 77).all()
            assert time.monotonic() < deadline, f"only {i} kills in the time budget"
        # Within the liveness interval (wide margin), a loan's pass frees every dead holder's
        # blocks: the pool is back to its baseline less the survivor's two blocks.
        expect = baseline - _block_bytes(pool, mine) - _block_bytes(pool, view)
        give_up = time.monotonic() + 10 * LIVENESS + 5
        while pool.statistics().free_bytes != expect:
            assert time.monotonic() < give_up, f"{pool.statistics()} expected free {expect}"
            pool.loan(1, timeout=0.01).release()  # a loan runs the pass once an interval
            time.sleep(LIVENESS / 4)
        assert pool.statistics().reclaimed > 0
        assert (mine == np.arange(10_000)).all() and (view == 77).all()
        del mine, view
        gc.collect()
        assert pool.statistics().free_bytes == baseline
    finally:
        q.close()
        pool.close()


def _block_bytes(pool: BufferPool, arr: np.ndarray) -> int:
    return next(c.size for c in pool._classes if c.size >= arr.nbytes)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("SHMIPC_RUN_SLOW"), reason="slow: set SHMIPC_RUN_SLOW=1 to run it"
)
@pytest.mark.timeout(2400)
def test_sigkill_holders_ten_thousand_times(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "KILLS", 10_000)
    test_sigkill_holders_at_random_points(tmp_path)


def test_a_sender_killed_after_put_loses_nothing():
    pool = BufferPool.create(size=8 << 20, liveness_interval=LIVENESS)
    q = Queue(pool=pool, zero_copy_threshold=1024)
    try:
        baseline = pool.statistics().free_bytes

        def sender(fd: int) -> None:
            loaned = q.loan_array(50_000, np.float64)
            loaned[:] = 2.5
            q.put(loaned)
            q.put(np.full(30_000, 7, np.int32))  # copied once
            os.write(fd, b"sent")
            time.sleep(60)  # holding its loan until killed

        child = Child(sender)
        assert os.read(child.fd, 4) == b"sent"
        os.kill(child.pid, signal.SIGKILL)
        child.finish(30)
        a, b = q.get(timeout=5), q.get(timeout=5)
        pool.reclaim()
        assert (a == 2.5).all() and (b == 7).all()
        assert in_use(pool) == 2
        del a, b
        assert pool.statistics().free_bytes == baseline
    finally:
        q.close()
        pool.close()


def test_a_receiver_killed_holding_views_gives_them_back():
    pool = BufferPool.create(size=8 << 20, liveness_interval=LIVENESS)
    q = Queue(pool=pool, zero_copy_threshold=1024)
    try:
        baseline = pool.statistics().free_bytes
        for i in range(5):
            q.put(np.full(20_000, i, np.int64))

        def receiver(fd: int) -> None:
            views = [q.get(timeout=5) for _ in range(5)]
            os.write(fd, b"held")
            time.sleep(60)
            del views

        child = Child(receiver)
        assert os.read(child.fd, 4) == b"held"
        os.kill(child.pid, signal.SIGKILL)
        child.finish(30)
        assert in_use(pool) == 5
        assert pool.reclaim() == 5
        assert pool.statistics().free_bytes == baseline
        assert pool.statistics().reclaimed == 5
    finally:
        q.close()
        pool.close()


def test_closing_queue_and_pool_with_live_views_never_crashes():
    def body(fd: int) -> None:
        pool = BufferPool.create(size=4 << 20)
        q = Queue(pool=pool, zero_copy_threshold=1024)
        q.put(np.arange(10_000))
        got = q.get()
        loan = q.loan_array(1000, np.int8)
        q.close()
        pool.close()
        gc.collect()
        loan[:] = 1
        total = int(got.sum()) + int(loan.sum())
        del got, loan
        gc.collect()
        os.write(fd, str(total).encode())

    child = Child(body)
    code, report = child.finish(60)
    assert code == 0, f"the child ended with {code} (negative: a signal)"
    assert report == str(sum(range(10_000)) + 1000).encode()
