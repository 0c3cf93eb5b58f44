"""asyncio adapters (shmipc/aio.py): one helper thread per loop, no message lost or duplicated
by cancellation, timeouts, Event/Lock, dead peers, closed loops; under asyncio and uvloop."""

from __future__ import annotations

import asyncio
import os
import queue
import random
import signal
import threading
import time

import pytest
from _procs import wait_for
from aio_loops import LOOPS, run

import shmipc
from shmipc import aio
from shmipc._native import lib

pytestmark = pytest.mark.usefixtures("aio_backend")  # both backends (conftest.py)


def no_helpers_left(timeout: float = 10.0) -> None:
    wait_for(lambda: not aio.helper_threads(), timeout, "the helper threads to end")


def uring_fds() -> int:
    """How many io_uring instances this process has open (fds)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += "io_uring" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # listdir's own fd, gone already
            pass
    return n


def waiters_of(qq) -> int:
    """The consumers' sleeper count of a Queue's ring (what producers read before a wake)."""
    return int(lib.shmipc_load32_acquire(qq._live_ring()._p, lib.SHMIPC_RING_OFF_DATA_WAITERS))


@pytest.fixture
def q():
    qq = shmipc.Queue.create(capacity=1 << 16)
    yield qq
    qq.close()


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.timeout(60)
def test_put_get_same_loop_in_order(kind, q):
    small = shmipc.Queue.create(capacity=1 << 12, maxsize=8)  # producers wait for room too
    try:
        async def main():
            async def produce():
                for i in range(5000):
                    await small.put_async(i)

            async def consume():
                return [await small.get_async(timeout=30) for _ in range(5000)]

            _, got = await asyncio.gather(produce(), consume())
            return got

        assert run(kind, main()) == list(range(5000))
    finally:
        small.close()
    no_helpers_left()


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.timeout(60)
def test_many_waiters_share_one_helper(kind, q, aio_backend):
    n = 300
    no_helpers_left()
    before = threading.active_count()

    async def main():
        tasks = [asyncio.ensure_future(q.get_async(timeout=30)) for _ in range(n)]
        for _ in range(20):  # let every task reach its wait
            await asyncio.sleep(0.01)
        # Every waiter is parked, on one helper thread or one ring for the whole loop.
        assert not any(t.done() for t in tasks)
        if aio_backend == "thread":
            assert threading.active_count() == before + 1
            assert len(aio.helper_threads()) == 1
        else:
            assert threading.active_count() == before
            assert aio.rings() == 1
        assert waiters_of(q) == 1  # one registration for the one word they all wait on
        feeder = threading.Thread(target=lambda: [q.put(i) for i in range(n)])
        feeder.start()
        got = await asyncio.gather(*tasks)
        await asyncio.to_thread(feeder.join)
        return got

    got = run(kind, main())
    assert sorted(got) == list(range(n))
    no_helpers_left()
    assert threading.active_count() == before
    assert aio.rings() == 0
    assert waiters_of(q) == 0


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.timeout(60)
def test_process_producer_to_asyncio_consumer_loses_nothing(kind, procs):
    n = 20000
    qq = shmipc.Queue.create(capacity=1 << 12)  # small: both sides wait often
    try:
        def producer():
            rnd = random.Random(1)
            for i in range(n):
                qq.put(i)
                if rnd.random() < 0.001:
                    time.sleep(0.01)  # let the consumer fall asleep now and then

        pid = procs.fork(producer)

        async def main():
            return [await qq.get_async(timeout=30) for _ in range(n)]

        assert run(kind, main()) == list(range(n))
        assert procs.join(pid) == 0
        with pytest.raises(queue.Empty):
            qq.get_nowait()
    finally:
        qq.close()


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.timeout(60)
def test_asyncio_producer_to_process_consumer_waits_for_room(kind, procs):
    n = 5000
    qq = shmipc.Queue.create(capacity=1 << 12, maxsize=4)
    r, w = os.pipe()
    try:
        def consumer():
            os.close(r)
            bad = sum(qq.get(timeout=30) != i for i in range(n))
            os.write(w, b"ok" if bad == 0 else b"no")

        pid = procs.fork(consumer)
        os.close(w)

        async def main():
            for i in range(n):
                await qq.put_async(i, timeout=30)

        run(kind, main())
        assert procs.join(pid) == 0
        assert os.read(r, 2) == b"ok"
    finally:
        os.close(r)
        qq.close()


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.timeout(60)
def test_cancelled_gets_never_lose_or_duplicate(kind, procs):
    n, pad = 3000, 16
    qq = shmipc.Queue.create(capacity=1 << 12, maxsize=64)
    try:
        def producer():
            rnd = random.Random(2)
            for i in range(n):
                qq.put(i)
                if rnd.random() < 0.01:
                    time.sleep(0.001)
            for _ in range(pad):  # for the gets still out when the last message arrives
                qq.put(-1)

        pid = procs.fork(producer)

        async def main():
            rnd = random.Random(3)
            got: list[int] = []
            while sum(x >= 0 for x in got) < n:
                tasks = [asyncio.ensure_future(qq.get_async(timeout=30)) for _ in range(8)]
                await asyncio.sleep(rnd.random() * 0.002)
                for t in tasks:
                    if rnd.random() < 0.5:
                        t.cancel()
                for t in tasks:
                    try:
                        got.append(await t)
                    except asyncio.CancelledError:
                        pass
                # wait_for cancels from inside a timeout as well
                try:
                    got.append(await asyncio.wait_for(qq.get_async(), rnd.random() * 0.001))
                except TimeoutError:
                    pass
            return got

        got = run(kind, main())
        assert procs.join(pid) == 0
        while True:
            try:
                got.append(qq.get_nowait())
            except queue.Empty:
                break
        assert sorted(got) == [-1] * pad + list(range(n))  # every message exactly once
    finally:
        qq.close()


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.timeout(60)
def test_cancelled_puts_never_half_send(kind):
    qq = shmipc.Queue.create(capacity=1 << 12, maxsize=16)
    try:
        async def main():
            rnd = random.Random(4)
            sent: set[int] = set()
            cancelled: set[int] = set()
            drained: list[int] = []
            seq = 0
            for _ in range(300):
                tasks = {}
                for _ in range(6):
                    tasks[seq] = asyncio.ensure_future(qq.put_async(seq, timeout=30))
                    seq += 1
                await asyncio.sleep(0)
                for t in tasks.values():
                    if rnd.random() < 0.5:
                        t.cancel()
                # a consumer makes room at a random point while cancellations are pending
                for _ in range(rnd.randrange(0, 10)):
                    try:
                        drained.append(qq.get_nowait())
                    except queue.Empty:
                        break
                    await asyncio.sleep(0)
                for i, t in tasks.items():
                    while not t.done():  # make room, one message at a time
                        try:
                            drained.append(qq.get_nowait())
                        except queue.Empty:
                            pass
                        await asyncio.sleep(0.0002)
                    try:
                        await t
                        sent.add(i)
                    except asyncio.CancelledError:
                        cancelled.add(i)
                while qq.qsize() > 14:  # nearly full: the next round's puts must wait
                    drained.append(qq.get_nowait())
            while True:
                try:
                    drained.append(qq.get_nowait())
                except queue.Empty:
                    break
            return sent, cancelled, drained

        sent, cancelled, drained = run(kind, main())
        assert len(drained) == len(set(drained))
        assert set(drained) == sent  # what completed arrived once; nothing cancelled did
        assert not sent & cancelled
        assert cancelled  # the storm did cancel puts
    finally:
        qq.close()


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.timeout(30)
def test_timeouts(kind):
    qq = shmipc.Queue.create(capacity=1 << 12, maxsize=1)
    try:
        async def main():
            t0 = time.monotonic()
            with pytest.raises(queue.Empty):
                await qq.get_async(timeout=0.2)
            assert 0.19 <= time.monotonic() - t0 < 2.2
            with pytest.raises(queue.Empty):
                await qq.get_async(timeout=0)
            await qq.put_async("x", timeout=0)
            t0 = time.monotonic()
            with pytest.raises(queue.Full):
                await qq.put_async("y", timeout=0.2)
            assert 0.19 <= time.monotonic() - t0 < 2.2
            assert await qq.get_async(timeout=0) == "x"
            await qq.put_bytes_async(b"raw")
            assert await qq.get_bytes_async(timeout=1) == b"raw"
            with pytest.raises(ValueError):
                await qq.get_async(timeout=-1)

        run(kind, main())
    finally:
        qq.close()


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.timeout(30)
def test_dead_producer_does_not_hang_consumer(kind, procs):
    qq = shmipc.Queue.create(capacity=1 << 12)
    r, w = os.pipe()
    try:
        def producer():
            for i in range(10):
                qq.put(i)
            os.write(w, b"x")
            time.sleep(60)

        pid = procs.fork(producer)
        assert os.read(r, 1) == b"x"
        procs.kill(pid)

        async def main():
            got = [await qq.get_async(timeout=5) for _ in range(10)]
            t0 = time.monotonic()
            with pytest.raises(queue.Empty):
                await qq.get_async(timeout=0.5)
            return got, time.monotonic() - t0

        got, waited = run(kind, main())
        assert got == list(range(10))
        assert waited < 3
    finally:
        os.close(r)
        os.close(w)
        qq.close()


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.timeout(30)
def test_event_wait_async(kind, procs):
    ev = shmipc.Event()

    async def main():
        assert await ev.wait_async(0.1) is False
        waiters = [asyncio.ensure_future(ev.wait_async(20)) for _ in range(50)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in waiters)
        pid = procs.fork(ev.set)  # set by another process
        assert all(await asyncio.gather(*waiters))
        assert await ev.wait_async(0) is True
        return pid

    pid = run(kind, main())
    assert procs.join(pid) == 0
    ev.close()


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.timeout(30)
def test_lock_acquire_async(kind, procs):
    lk = shmipc.Lock()
    r, w = os.pipe()
    go_r, go_w = os.pipe()

    def holder():
        lk.acquire()
        os.write(w, b"h")
        os.read(go_r, 1)
        lk.release()

    pid = procs.fork(holder)
    assert os.read(r, 1) == b"h"

    async def main():
        assert await lk.acquire_async(0.1) is False  # held by the child
        task = asyncio.ensure_future(lk.acquire_async(20))
        await asyncio.sleep(0.05)
        assert not task.done()
        os.write(go_w, b"g")
        assert await task is True
        assert not lk.recovered
        # another coroutine of this loop waits until the first lets go
        other = asyncio.ensure_future(lk.acquire_async(20))
        await asyncio.sleep(0.05)
        assert not other.done()
        lk.release()
        assert await other is True
        lk.release()

    run(kind, main())
    assert procs.join(pid) == 0
    for fd in (r, w, go_r, go_w):
        os.close(fd)
    lk.close()


@pytest.mark.timeout(30)
def test_lock_of_a_dead_holder_is_taken_over(procs):
    lk = shmipc.Lock()
    r, w = os.pipe()

    def holder():
        lk.acquire()
        os.write(w, b"h")
        time.sleep(60)

    pid = procs.fork(holder)
    assert os.read(r, 1) == b"h"

    async def main():
        task = asyncio.ensure_future(lk.acquire_async(20))
        await asyncio.sleep(0.05)
        procs.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        assert await task is True
        assert lk.recovered
        lk.release()
        return time.monotonic() - t0

    assert run("asyncio", main()) < 5
    os.close(r)
    os.close(w)
    lk.close()


@pytest.mark.timeout(30)
def test_loop_closed_with_waiters_pending_leaves_no_thread(q, aio_backend):
    no_helpers_left()  # those of earlier tests' loops end within a second
    before = threading.active_count()
    fds = uring_fds()
    helpers = 1 if aio_backend == "thread" else 0

    async def abandon():
        pending = [asyncio.ensure_future(q.get_async()) for _ in range(20)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in pending)
        assert len(aio.helper_threads()) == helpers
        assert aio.rings() == 1 - helpers
        assert waiters_of(q) == 1

    asyncio.run(abandon())  # asyncio.run cancels the pending gets
    no_helpers_left()
    assert uring_fds() == fds and aio.rings() == 0  # shutdown_asyncgens took the ring
    assert waiters_of(q) == 0
    # A loop closed without cancelling them: the helper notices the closed loop; a ring goes
    # when the next one is made.
    loop = asyncio.new_event_loop()
    pending = [loop.create_task(q.get_async()) for _ in range(20)]
    loop.run_until_complete(asyncio.sleep(0.05))
    assert not any(t.done() for t in pending)
    assert len(aio.helper_threads()) == helpers
    loop.close()
    no_helpers_left()
    if aio_backend == "uring":
        assert uring_fds() == fds + 1 and waiters_of(q) == 1
        other = shmipc.Queue.create(capacity=1 << 12)
        with pytest.raises(queue.Empty):
            asyncio.run(other.get_async(timeout=0.01))
        other.close()
        assert uring_fds() == fds
    assert waiters_of(q) == 0
    assert threading.active_count() == before
    q.put("still there")  # nothing was taken by the abandoned gets
    assert q.get_nowait() == "still there"


@pytest.mark.timeout(30)
def test_closing_the_queue_wakes_its_waiters():
    qq = shmipc.Queue.create(capacity=1 << 12)

    async def main():
        task = asyncio.ensure_future(qq.get_async())
        await asyncio.sleep(0.05)
        qq.close()
        with pytest.raises(shmipc.Closed):
            await asyncio.wait_for(task, 5)

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_polling_fallback_still_delivers(monkeypatch, q):
    monkeypatch.setattr(aio, "_FORCE_POLL", True)

    async def main():
        feeder = threading.Thread(target=lambda: [q.put(i) or time.sleep(0.0005)
                                                  for i in range(500)])
        feeder.start()
        got = [await q.get_async(timeout=10) for _ in range(500)]
        await asyncio.to_thread(feeder.join)
        return got

    assert asyncio.run(main()) == list(range(500))


@pytest.mark.timeout(30)
def test_futex_waitv_is_used_here():
    if tuple(int(x) for x in os.uname().release.split(".")[:2]) >= (5, 16):
        assert lib.shmipc_aio_has_waitv() == 1


# ---- Topic subscribers: the T1 contract, over a stand-in built on a Queue ----------------------


class StandInSubscriber(aio.AsyncSubscriberMixin):
    """receive(timeout=0) raising queue.Empty, receive_bytes, _aio_words: what aio needs."""

    def __init__(self, q):
        self.q = q

    def receive(self, timeout=None):
        return self.q.get(timeout=timeout)

    def receive_bytes(self, timeout=None):
        return self.q.get_bytes(timeout=timeout)

    def _aio_words(self):
        ring = self.q._live_ring()
        return [aio.WordSpec(ring._p, lib.SHMIPC_RING_OFF_P_TAIL,
                             lib.SHMIPC_RING_OFF_DATA_WAITERS, lib.SHMIPC_RING_SLEEPER_SLOTS,
                             ring)]


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.timeout(30)
def test_subscriber_receive_async_and_async_for(kind, q):
    sub = StandInSubscriber(q)

    async def main():
        with pytest.raises(queue.Empty):
            await sub.receive_async(0.05)
        threading.Thread(target=lambda: [q.put(i) for i in [*range(100), None]]).start()
        got = []
        async for msg in sub:
            if msg is None:
                break
            got.append(msg)
        return got

    assert run(kind, main()) == list(range(100))


@pytest.mark.timeout(60)
def test_pooled_queue_arrays_through_put_async_and_get_async():
    np = pytest.importorskip("numpy")
    pool = shmipc.BufferPool.create(size=8 << 20)
    qq = shmipc.Queue.create(capacity=1 << 12, maxsize=2, pool=pool, zero_copy_threshold=1024)
    try:
        async def main():
            async def produce():
                for i in range(50):  # maxsize 2: most puts wait for room
                    await qq.put_async(np.full(4096, i, dtype=np.float64), timeout=30)

            async def consume():
                seen = []
                for _ in range(50):
                    a = await qq.get_async(timeout=30)
                    seen.append(int(a[0]) if (a == a[0]).all() else -1)
                    del a
                return seen

            _, seen = await asyncio.gather(produce(), consume())
            return seen

        assert asyncio.run(main()) == list(range(50))
        assert pool.statistics() is not None
    finally:
        qq.close()
        pool.close()


def _collect_under_the_lock(report_fd: int) -> None:
    import gc

    qq = shmipc.Queue.create(capacity=1 << 12)
    loop = asyncio.new_event_loop()
    task = loop.create_task(qq.get_async())
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()  # the get is left pending, its coroutine held by the backend's tables
    # The tables let go of a closed loop's waits (the helper ends; the next ring sweeps).
    with pytest.raises(queue.Empty):
        asyncio.run(qq.get_async(timeout=0.01))
    wait_for(lambda: not aio.helper_threads(), 10, "the helper to end")
    del task
    with aio._lock:  # a collection while this thread holds the lock: no deadlock
        gc.collect()
        collected = len(aio._orphans)
    with pytest.raises(queue.Empty):  # the next wait runs the queued cleanup
        asyncio.run(qq.get_async(timeout=0.01))
    drained = not aio._orphans
    # (a helper thread takes its registration back once it wakes from its last wait)
    wait_for(lambda: waiters_of(qq) == 0, 10, "no registration left")
    ok = collected >= 1 and drained
    qq.close()
    os.write(report_fd, b"ok" if ok else f"no {collected}".encode())


@pytest.mark.timeout(60)
def test_a_wait_collected_while_the_lock_is_held_does_not_deadlock(aio_backend):
    from _procs import fork_call

    code, report = fork_call(_collect_under_the_lock, timeout=40)
    assert (code, report) == (0, b"ok")
