"""Multi-process stress of the drop-in's primitives, with sequence checks: RLock (nested
holds exclude each other), Condition (a bounded buffer: every item arrives once, in order
per producer) and JoinableQueue (join returns only when every task is done)."""

from __future__ import annotations

import ctypes

import pytest

import shmipc.mp

pytestmark = pytest.mark.timeout(120)

PROCS_JOIN_TIMEOUT = 90.0
CTX = shmipc.mp.get_context("fork")


def test_rlock_nested_holds_exclude_each_other(procs):
    lock = CTX.RLock()
    shared = CTX.RawArray(ctypes.c_long, 3)  # [counter, owner, violations]
    n_procs, rounds = 4, 20000
    go = CTX.Barrier(n_procs)

    def worker(me: int) -> None:
        go.wait(60)  # all at once, so the holds really contend
        for _ in range(rounds):
            with lock, lock:  # nested: the depth goes to 2 and back
                if shared[1] != 0:
                    shared[2] += 1
                shared[1] = me
                value = shared[0]
                shared[0] = value + 1
                if shared[1] != me:
                    shared[2] += 1
                shared[1] = 0

    pids = [procs.fork(lambda me=me: worker(me)) for me in range(1, n_procs + 1)]
    assert [procs.join(p) for p in pids] == [0] * n_procs
    assert shared[2] == 0 and shared[0] == n_procs * rounds
    assert lock.depth == 0
    lock.close()
    go.close()


def test_condition_bounded_buffer_delivers_every_item_in_order(procs):
    """Producers and consumers on one Condition around a shared ring of 8 slots."""
    cond = CTX.Condition()
    size = 8
    ring = CTX.RawArray(ctypes.c_long, size)
    state = CTX.RawArray(ctypes.c_long, 2)  # head (next to read), tail (next to write)
    n_prod, n_cons, per = 3, 3, 600
    total = n_prod * per
    seen = CTX.RawArray(ctypes.c_long, n_prod)  # per producer: last sequence consumed
    errors = CTX.RawValue(ctypes.c_long, 0)
    taken = CTX.RawValue(ctypes.c_long, 0)

    def producer(p: int) -> None:
        for seq in range(1, per + 1):
            with cond:
                assert cond.wait_for(lambda: state[1] - state[0] < size, timeout=60)
                ring[state[1] % size] = p * 1_000_000 + seq
                state[1] += 1
                cond.notify_all()

    def consumer() -> None:
        while True:
            with cond:
                ok = cond.wait_for(lambda: state[1] > state[0] or taken.value >= total, 60)
                assert ok
                if state[1] == state[0]:
                    return  # everything was taken
                item = ring[state[0] % size]
                state[0] += 1
                taken.value += 1
                p, seq = divmod(item, 1_000_000)
                if seq != seen[p] + 1:  # in order per producer, none lost or repeated
                    errors.value += 1
                seen[p] = seq
                cond.notify_all()

    pids = [procs.fork(lambda p=p: producer(p)) for p in range(n_prod)]
    pids += [procs.fork(consumer) for _ in range(n_cons)]
    assert [procs.join(p) for p in pids] == [0] * (n_prod + n_cons)
    assert errors.value == 0 and taken.value == total
    assert list(seen) == [per] * n_prod
    assert cond._counts() == (0, 0)
    cond.close()


def test_joinable_queue_join_means_every_task_done(procs):
    jq = CTX.JoinableQueue()
    done = CTX.RawArray(ctypes.c_long, 2)  # tasks done, errors
    lock = CTX.Lock()
    n_prod, n_cons, per = 2, 3, 800
    last = CTX.RawArray(ctypes.c_long, n_cons * n_prod)  # per consumer and producer

    def producer(p: int) -> None:
        for seq in range(1, per + 1):
            jq.put((p, seq))

    def consumer(c: int) -> None:
        for p, seq in iter(lambda: jq.get(timeout=60), None):
            # Each consumer sees each producer's items in increasing order (a FIFO).
            if seq <= last[c * n_prod + p]:
                with lock:
                    done[1] += 1
            last[c * n_prod + p] = seq
            with lock:
                done[0] += 1
            jq.task_done()
        jq.task_done()

    cons = [procs.fork(lambda c=c: consumer(c)) for c in range(n_cons)]
    prods = [procs.fork(lambda p=p: producer(p)) for p in range(n_prod)]
    assert [procs.join(p) for p in prods] == [0] * n_prod
    assert jq.join(60)
    assert done[0] == n_prod * per  # join returned: every task was marked done
    for _ in cons:
        jq.put(None)
    assert jq.join(60)
    assert [procs.join(p) for p in cons] == [0] * n_cons
    assert done[1] == 0 and jq.unfinished == 0 and jq.abandoned() == 0
    jq.close()
    lock.close()
