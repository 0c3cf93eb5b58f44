"""Arrays and large buffers through a Pool's block pool: they arrive intact (checksums) in
both directions, writable where docs/pool.md promises, no block is leaked (the block pool's
statistics come back to their baseline, its segments go with the pool), and a worker
SIGKILLed while holding a block-backed argument gives the block back."""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import pickle
import signal
import time

import numpy as np
import pytest

from shmipc.buffers import _find_loan, _Received
from shmipc.pool import BrokenWorker, Pool
from shmipc.region import SHM_DIR

pytestmark = pytest.mark.timeout(120)

FORK = multiprocessing.get_context("fork")


def digest(obj: object) -> str:
    return hashlib.blake2b(memoryview(obj).cast("B")).hexdigest()  # type: ignore[arg-type]


def check_and_add(arr: np.ndarray, want: str) -> tuple[str, bool, np.ndarray]:
    """Checksum of the argument as it arrived, whether it is writable, and a new result."""
    return digest(arr), bool(arr.flags.writeable), arr * 2.0


def scribble(arr: np.ndarray) -> np.ndarray:
    arr += 1.0  # writable in the worker: the caller's copy was moved to it
    return arr


def same(obj: object) -> object:
    return obj


def hold(arr: np.ndarray, path: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(600)


def in_use(pool: Pool) -> int:
    stats = pool.buffer_pool.statistics()
    return sum(c.in_use for c in stats.classes) + stats.dedicated_segments


def wait_for(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_arrays_in_and_out_arrive_intact_and_writable(ctx):
    rng = np.random.default_rng(1)
    with Pool(2, context=multiprocessing.get_context(ctx)) as pool:
        base = in_use(pool)
        for n in (1 << 10, 1 << 16, 3 << 17, 1 << 21):  # below and above the threshold
            arr = rng.standard_normal(n)
            got_digest, writable, out = pool.apply(check_and_add, (arr, digest(arr)))
            assert got_digest == digest(arr)
            assert writable
            assert out.flags.writeable and np.array_equal(out, arr * 2.0)
            if out.nbytes >= 1 << 16:  # a new result, copied once: only the transit holds it
                assert isinstance(_find_loan(out), _Received)  # the worker's block, handed over
            out += 1.0  # a drop-in: results are writable, as multiprocessing's
        # The worker returns its (changed) argument: it holds that block until its put has
        # returned, so the caller gets the block in place or, if it claimed first, a private
        # copy (both writable; which one is a race, docs/pool.md).
        out = pool.apply(scribble, (np.zeros(1 << 17),))
        assert out.flags.writeable and float(out.sum()) == float(1 << 17)
        # a worker that returns its argument still holds it: the result is a private copy
        arr = np.arange(1 << 17, dtype=np.int64)
        back = pool.apply(same, (arr,))
        assert np.array_equal(back, arr) and back.flags.writeable
        # any pickle protocol 5 out-of-band buffer goes by block
        blob = os.urandom(1 << 18)
        assert pool.apply(digest, (pickle.PickleBuffer(bytearray(blob)),)) == digest(blob)
        del out, back, arr
        gc.collect()
        assert wait_for(lambda: in_use(pool) == base, 10), pool.buffer_pool.statistics()


def test_no_block_or_segment_left_after_close():
    pool = Pool(2, context=FORK, buffer_pool_size=1 << 20)  # largest class 128 KiB
    name = pool.buffer_pool.name
    big = np.ones(1 << 18)  # 2 MiB: a dedicated segment each way
    results = [pool.apply_async(check_and_add, (big, "")) for _ in range(4)]
    outs = [r.get(timeout=60)[2] for r in results]
    assert all(float(o.sum()) == 2.0 * big.size for o in outs)
    del outs, results
    gc.collect()
    assert wait_for(lambda: in_use(pool) == 0, 10), pool.buffer_pool.statistics()
    pool.close()
    pool.join()
    left = [n for n in os.listdir(SHM_DIR) if n.startswith(name)]
    assert left == []


def test_without_threshold_arrays_are_pickled():
    with Pool(1, context=FORK, zero_copy_threshold=None) as pool:
        assert pool.buffer_pool is None
        arr = np.arange(1 << 17, dtype=np.float64)
        assert digest(pool.apply(same, (arr,))) == digest(arr)


def test_worker_killed_holding_a_block_gives_it_back(tmp_path):
    liveness = 0.5
    with Pool(2, context=FORK, liveness=liveness) as pool:
        base = in_use(pool)
        path = str(tmp_path / "held")
        fut = pool.submit(hold, np.ones(1 << 18), path)
        assert wait_for(lambda: os.path.exists(path), 30)
        assert in_use(pool) == base + 1  # the argument's block, held by the worker
        with open(path) as f:
            pid = int(f.read())
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenWorker):
            fut.result(timeout=30)
        killed = time.monotonic()
        assert wait_for(lambda: in_use(pool) == base, 10 * liveness + 5)
        assert time.monotonic() - killed < 10 * liveness + 5
        # the pool goes on, arrays and all
        arr = np.arange(1 << 17, dtype=np.float64)
        assert digest(pool.apply(check_and_add, (arr, ""))[2] / 2.0) == digest(arr)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_threshold_is_refused(bad):
    with pytest.raises(ValueError, match="zero_copy_threshold"):
        Pool(1, context=FORK, zero_copy_threshold=bad)
