"""BufferPool: loans, views, lifetimes, exhaustion, statistics, attach and inspection."""

from __future__ import annotations

import gc
import mmap
import os
import pickle
import time

import numpy as np
import pytest
from _procs import fork_call

import shmipc
from shmipc import BufferPool, Closed, CorruptedError, Loan, PoolExhausted
from shmipc._names import check_name
from shmipc.buffers import MAX_BLOCK, MIN_BLOCK, dedicated_owner, inspect_segment, plan

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pool():
    p = BufferPool.create(size=16 << 20)
    yield p
    p.close()


def in_use(p: BufferPool) -> int:
    return sum(c.in_use for c in p.statistics().classes)


def run_in_child(body, timeout: float = 60.0) -> bytes:
    """Run ``body`` in a forked child; fail unless it returned (exit 0, no signal)."""

    def child(fd: int) -> None:
        os.write(fd, repr(body()).encode())

    code, report = fork_call(child, timeout)
    assert code >= 0, f"the child died by signal {-code}"
    assert code == 0, f"the child failed (exit {code})"
    return report


def test_plan_spans_a_few_kib_to_tens_of_mib():
    for size in (1 << 20, 64 << 20, 1 << 30, 8 << 30):
        classes = plan(size)
        sizes = [b for b, _ in classes]
        assert sizes[0] == MIN_BLOCK and sizes == sorted(sizes)
        assert sizes[-1] <= MAX_BLOCK and sizes[-1] <= size // 8
        assert all(count >= 1 for _, count in classes)
        assert sum(b * c for b, c in classes) <= size
    assert plan(8 << 30)[-1][0] == MAX_BLOCK


def test_loan_is_a_writable_buffer_of_exactly_nbytes(pool):
    with pool.loan(10_000) as loan:
        assert isinstance(loan, Loan) and loan.nbytes == 10_000
        mv = memoryview(loan)
        assert not mv.readonly and len(mv) == 10_000
        mv[:5] = b"hello"
        assert bytes(mv[:5]) == b"hello"
        mv.release()
    assert loan.released and in_use(pool) == 0


def test_release_refuses_while_a_view_sees_the_loan(pool):
    loan = pool.loan(4096)
    arr = np.frombuffer(loan, np.uint8)
    with pytest.raises(BufferError):
        loan.release()
    assert in_use(pool) == 1
    del arr
    loan.release()
    assert in_use(pool) == 0
    with pytest.raises(BufferError):
        memoryview(loan)


def test_dropping_the_last_view_gives_the_block_back(pool):
    arr = pool.loan_array((100, 100), np.float64)
    arr[:] = 1.5
    view = arr[10:20]
    del arr
    gc.collect()
    assert in_use(pool) == 1  # the slice still sees it
    assert float(view.sum()) == 1.5 * 1000
    del view
    assert in_use(pool) == 0


def test_loan_array_shapes_and_dtypes(pool):
    a = pool.loan_array(7, "u2")
    assert a.shape == (7,) and a.dtype == np.uint16 and a.flags.writeable
    b = pool.loan_array((2, 3, 4), np.complex128)
    assert b.shape == (2, 3, 4) and b.flags.c_contiguous
    with pytest.raises(TypeError):
        pool.loan_array(3, object)


def test_statistics_track_loans(pool):
    stats = pool.statistics()
    base = stats.free_bytes
    assert stats.size == 16 << 20 and stats.reclaimed == 0 and stats.dedicated_segments == 0
    loans = [pool.loan(100_000) for _ in range(3)]
    stats = pool.statistics()
    assert sum(c.in_use for c in stats.classes) == 3
    assert stats.free_bytes < base
    del loans
    assert pool.statistics().free_bytes == base


def dedicated(p: BufferPool) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if dedicated_owner(n) == p.name)


def test_a_request_above_the_largest_class_gets_a_dedicated_segment(pool):
    n = pool.largest_block + 1
    loan = pool.loan(n)
    names = dedicated(pool)
    assert len(names) == 1 and pool.statistics().dedicated_segments == 1
    assert check_name(names[0]) == names[0] and names[0].startswith(pool.name + ".d")
    mv = memoryview(loan)
    assert len(mv) == n and not mv.readonly
    mv[-3:] = b"end"
    del mv
    loan.release()
    assert dedicated(pool) == [] and pool.statistics().dedicated_segments == 0
    arr = pool.loan_array(pool.largest_block // 4 + 1, np.float64)
    assert len(dedicated(pool)) == 1
    del arr  # garbage collection gives it back too
    assert dedicated(pool) == []


def test_the_creators_close_removes_dedicated_segments_but_keeps_views_valid():
    p = BufferPool.create(size=1 << 20, classes={65536: 2})
    loan = p.loan(200_000)
    memoryview(loan)[:2] = b"ok"
    p.close()
    assert dedicated(p) == []
    assert bytes(memoryview(loan)[:2]) == b"ok"
    loan.release()


def test_exit_without_close_removes_the_pool_and_its_dedicated_segments():
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import shmipc, sys
        p = shmipc.BufferPool.create(size=1 << 20, classes={65536: 2})
        loan = p.loan(100_000)
        print(p.name, flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    name = out.stdout.strip()
    assert name and not os.path.exists(f"/dev/shm/{name}")
    assert [n for n in os.listdir("/dev/shm") if dedicated_owner(n) == name] == []


def test_a_dead_holders_dedicated_block_is_reclaimed(pool):
    def child(fd: int) -> None:
        loan = pool.loan(pool.largest_block * 2)
        os.write(fd, b"x")
        time.sleep(60)
        del loan

    from _procs import Child

    c = Child(child)
    assert os.read(c.fd, 1) == b"x"
    assert len(dedicated(pool)) == 1
    c.kill()
    assert pool.reclaim() == 1
    assert dedicated(pool) == [] and pool.statistics().reclaimed == 1


def test_inspect_segment_describes_a_dedicated_block(pool):
    loan = pool.loan(pool.largest_block + 10)
    (name,) = dedicated(pool)
    with open(f"/dev/shm/{name}", "rb") as f:
        data = f.read()
    info = inspect_segment(memoryview(data))
    assert info["kind"] == "buffer_pool_dedicated_block" and info["in_use"]
    assert info["nbytes"] == pool.largest_block + 10 and info["references"] == 1
    loan.release()


def test_dedicated_owner_parses_only_dedicated_names():
    assert dedicated_owner("pool.d0123abcd_0123456789abcdef") == "pool"
    assert dedicated_owner("pool.d0123abcd_0123456789abcdeg") is None
    assert dedicated_owner("pool_0123456789abcdef") is None
    assert dedicated_owner("shmipc_spill_q_0123456789abcdef0123456789abcdef") is None


def test_exhaustion_waits_then_names_the_pool_size():
    p = BufferPool.create(size=1 << 20, classes={65536: 2})
    try:
        held = [p.loan(65536), p.loan(65536)]
        start = time.monotonic()
        with pytest.raises(PoolExhausted, match=str(1 << 20)) as info:
            p.loan(1000, timeout=0.2)
        assert isinstance(info.value, BufferError)
        assert time.monotonic() - start >= 0.15
        with pytest.raises(PoolExhausted):
            p.loan(1000, timeout=0)
        held.pop().release()
        assert p.loan(1000, timeout=0).nbytes == 1000
    finally:
        p.close()


def test_a_waiting_loan_wakes_when_a_block_is_freed():
    p = BufferPool.create(size=1 << 20, classes={65536: 1})
    try:
        held = p.loan(10)

        def child(fd: int) -> None:
            # a forked child shares the pool; its loan waits for the parent's release
            loan = p.loan(10, timeout=30)
            os.write(fd, b"got %d" % loan.nbytes)

        import threading

        t = threading.Timer(0.3, held.release)
        t.start()
        code, report = fork_call(child, 40)
        t.join()
        assert code == 0 and report == b"got 10"
    finally:
        p.close()


def test_a_forked_child_does_not_give_back_its_parents_reference(pool):
    loan = pool.loan(100)

    def body() -> int:
        nonlocal loan
        del loan
        gc.collect()
        return in_use(pool)

    assert run_in_child(body) == b"1"
    assert in_use(pool) == 1
    loan.release()


def test_attach_by_name_shares_blocks(pool):
    other = BufferPool.attach(pool.name)
    try:
        assert other.size == pool.size and other.largest_block == pool.largest_block
        loan = pool.loan(100)
        assert in_use(other) == 1
        loan.release()
        assert in_use(other) == 0
    finally:
        other.close()


def test_pickles_by_name(pool):
    clone = pickle.loads(pickle.dumps(pool))
    assert clone is pool  # this process's one handle of the pool


def test_attach_refuses_other_kinds():
    q = shmipc.Queue()
    try:
        with pytest.raises(shmipc.LayoutMismatch):
            BufferPool.attach(q.name)
    finally:
        q.close()


def test_closed_pool_refuses_loans(pool):
    pool.close()
    with pytest.raises(Closed):
        pool.loan(10)
    pool.close()  # twice is fine


def test_closing_the_pool_with_live_views_does_not_crash():
    def body() -> str:
        p = BufferPool.create(size=4 << 20)
        arr = p.loan_array(1000, np.int64)
        arr[:] = np.arange(1000)
        view = memoryview(p.loan(64))
        p.close()
        gc.collect()
        total = int(arr.sum())
        view[:3] = b"abc"
        del arr, view
        gc.collect()
        return f"ok {total}"

    assert run_in_child(body) == repr("ok 499500").encode()


def test_inspect_segment_describes_the_pool(pool):
    loan = pool.loan(5000)
    with open(f"/dev/shm/{pool.name}", "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    try:
        view = memoryview(mm)
        info = inspect_segment(view)
        view.release()
    finally:
        mm.close()
    assert info["kind"] == "buffer_pool" and info["size"] == pool.size
    assert sum(c["in_use"] for c in info["classes"]) == 1
    import json

    json.dumps(info)
    loan.release()


def test_inspect_segment_refuses_nonsense():
    with pytest.raises(CorruptedError):
        inspect_segment(memoryview(bytes(4096)))
    with pytest.raises(CorruptedError):
        inspect_segment(memoryview(b"x"))


def test_create_checks_its_arguments():
    with pytest.raises(ValueError):
        BufferPool.create(size=1000)
    with pytest.raises(ValueError):
        BufferPool.create(size=1 << 20, classes={5000: 1})
    with pytest.raises(ValueError):
        BufferPool.create(size=1 << 20, classes={1 << 20: 4})
    with pytest.raises(ValueError):
        BufferPool.create(name="../x", size=1 << 20)


def test_threads_share_a_small_pool_without_handing_a_block_out_twice():
    import threading

    p = BufferPool.create(size=1 << 20, classes={4096: 3, 8192: 2})
    errors: list[str] = []

    def worker(ident: int) -> None:
        try:
            for i in range(1500):
                with p.loan(4000 + (i % 2) * 100, timeout=30) as loan:
                    mv = memoryview(loan)
                    stamp = bytes([ident, i & 0xFF]) * 2100
                    mv[:] = stamp[: len(mv)]
                    time.sleep(0)
                    if bytes(mv) != stamp[: len(mv)]:
                        errors.append(f"thread {ident}: block changed under its loan")
                    mv.release()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors[:3]
        assert in_use(p) == 0
    finally:
        p.close()
