"""Sync primitives under load: more processes than cores, exactness checked by counts and
sequence numbers, each scenario run several times (the ``round`` parameter).

The development machine has 2 vCPUs; every scenario here runs 4-8 processes at once, so
holders are preempted inside critical sections and waiters really sleep.
"""

from __future__ import annotations

import multiprocessing
import struct
import time
from collections.abc import Callable

import pytest
from _procs import Procs

from shmipc import AtomicCounter, Barrier, Event, Lock, Region, Semaphore

pytestmark = pytest.mark.timeout(120)

ROUNDS = range(3)


def run_together(procs: Procs, fns: list[Callable[[], object]]) -> None:
    """Fork all, release them together from a start line, require every one to exit 0."""
    go = Event()

    def gated(fn: Callable[[], object]) -> Callable[[], None]:
        def body() -> None:
            assert go.wait(30)
            fn()

        return body

    pids = [procs.fork(gated(fn)) for fn in fns]
    go.set()
    codes = [procs.join(p) for p in pids]
    assert codes == [0] * len(fns), codes


@pytest.mark.parametrize("round", ROUNDS)
def test_counter_8_processes_exact(procs, round):
    counter = AtomicCounter()
    n_procs, n = 8, 20_000

    def work() -> None:
        for _ in range(n):
            counter.add(1)

    run_together(procs, [work] * n_procs)
    assert counter.load() == n_procs * n


@pytest.mark.parametrize("round", ROUNDS)
def test_lock_sequence_log_exact(procs, round):
    """6 processes append (process, iteration) records under the lock at a shared sequence
    number read and written non-atomically. Afterwards every record is there exactly once, and
    each process's records are in its own order."""
    n_procs, n = 6, 5000
    total = n_procs * n
    rec = struct.Struct("<HH")  # process index, iteration
    seq_cell = struct.Struct("<Q")
    log_off = 64
    region = Region.anonymous(log_off + total * rec.size + 4096)
    lock = Lock.at(region, region.size - 4096, create=True)

    def worker(p: int) -> None:
        buf = region.buffer
        for i in range(n):
            with lock:
                (seq,) = seq_cell.unpack_from(buf, 0)
                if i % 7 == 0:
                    time.sleep(0)  # widen the window between read and write now and then
                rec.pack_into(buf, log_off + seq * rec.size, p + 1, i)
                seq_cell.pack_into(buf, 0, seq + 1)

    run_together(procs, [lambda p=p: worker(p) for p in range(n_procs)])
    buf = region.buffer
    assert seq_cell.unpack_from(buf, 0)[0] == total
    seen: dict[int, list[int]] = {p: [] for p in range(1, n_procs + 1)}
    for s in range(total):
        p, i = rec.unpack_from(buf, log_off + s * rec.size)
        seen[p].append(i)
    for p, iterations in seen.items():
        assert iterations == list(range(n)), f"process {p} records out of order or missing"
    assert lock.recoveries == 0
    region.close()


@pytest.mark.parametrize("round", ROUNDS)
def test_semaphore_never_oversubscribed(procs, round):
    value, n_procs, n = 3, 7, 3000
    sem = Semaphore(value)
    in_use, peak, done = AtomicCounter(), AtomicCounter(), AtomicCounter()

    def worker() -> None:
        for i in range(n):
            assert sem.acquire(timeout=30)
            now = in_use.add(1)
            while True:
                p = peak.load()
                if now <= p or peak.compare_exchange(p, now):
                    break
            if i % 3 == 0:
                time.sleep(0)
            in_use.add(-1)
            done.add(1)
            sem.release()

    run_together(procs, [worker] * n_procs)
    assert 1 <= peak.load() <= value
    assert done.load() == n_procs * n
    assert sem.value == value


@pytest.mark.parametrize("round", ROUNDS)
def test_barrier_generations(procs, round):
    parties, gens = 5, 1000
    region = Region.anonymous(64 * (1 + 2 * gens))
    bar = Barrier.at(region, 0, create=True, parties=parties)
    arrived = [AtomicCounter.at(region, 64 * (1 + g), create=True) for g in range(gens)]
    index_bits = [AtomicCounter.at(region, 64 * (1 + gens + g), create=True) for g in range(gens)]

    def party() -> None:
        for g in range(gens):
            arrived[g].add(1)
            idx = bar.wait(timeout=30)
            assert arrived[g].load() == parties
            index_bits[g].add(1 << (8 * idx))

    run_together(procs, [party] * parties)
    for g in range(gens):
        assert index_bits[g].load() == 0x0101010101, f"generation {g}"
    assert bar.n_waiting == 0
    region.close()


@pytest.mark.parametrize("round", ROUNDS)
def test_event_token_ring(procs, round):
    """A token passed round a ring of 5 processes by Events: the k-th pass is always made by
    process k mod 5, and none is lost or doubled."""
    n_procs, laps = 5, 1000
    events = [Event() for _ in range(n_procs)]
    seq = AtomicCounter()
    bad = AtomicCounter()

    def member(i: int) -> None:
        for _ in range(laps):
            assert events[i].wait(30)
            events[i].clear()  # only our predecessor sets it, and only after we pass on
            s = seq.load()
            if s % n_procs != i:
                bad.add(1)
            seq.store(s + 1)
            events[(i + 1) % n_procs].set()

    pids = [procs.fork(lambda i=i: member(i)) for i in range(n_procs)]
    events[0].set()
    assert [procs.join(p) for p in pids] == [0] * n_procs
    assert seq.load() == n_procs * laps
    assert bad.load() == 0


def _spawn_worker(lock: Lock, counter: AtomicCounter, start: Event, n: int) -> None:
    assert start.wait(30)
    for _ in range(n):
        with lock:
            v = counter.load()
            counter.store(v + 1)  # a load and a store: only the lock makes this exact
    for obj in (lock, counter, start):
        obj.close()


def test_spawned_processes_share_named_primitives():
    lock, counter, start = Lock.create(), AtomicCounter.create(), Event.create()
    ctx = multiprocessing.get_context("spawn")
    n_procs, n = 3, 3000
    workers = [
        ctx.Process(target=_spawn_worker, args=(lock, counter, start, n)) for _ in range(n_procs)
    ]
    try:
        for w in workers:
            w.start()
        start.set()
        for w in workers:
            w.join(60)
            assert w.exitcode == 0
        assert counter.load() == n_procs * n
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join()
        for obj in (lock, counter, start):
            obj.close()
