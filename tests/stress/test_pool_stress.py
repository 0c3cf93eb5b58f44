"""Loaned arrays through a Queue under load: exactly once, in order, checksummed, and every
block back in the pool afterwards.

Producers and consumers hold a window of their last loans and views and re-check each one
right before letting it go: a block handed out again while still referenced would show
another message's bytes there (a checksum mismatch), so "never handed out while referenced"
is checked on every message, not sampled.
"""

from __future__ import annotations

import json
import os
import random
from collections import deque

import numpy as np
import pytest

from shmipc import BufferPool, Queue

pytestmark = pytest.mark.timeout(120)

TOTAL = 10_000
PRODUCERS = 2
CONSUMERS = 2
WINDOW = 6


def fill_value(producer: int, seq: int) -> int:
    return producer * 1_000_003 + seq * 7 + 1


def check(arr: np.ndarray) -> tuple[int, int]:
    producer, seq = int(arr[0]), int(arr[1])
    if not (arr[2:] == fill_value(producer, seq)).all():
        raise AssertionError(f"message ({producer}, {seq}) changed under its holder")
    return producer, seq


def producer(q: Queue, ident: int, count: int, seed: int) -> None:
    rng = random.Random(seed)
    held: deque = deque()
    for seq in range(count):
        n = rng.choice((16, 500, 4000, 20_000))
        arr = q.loan_array(n, np.int64, timeout=60)
        arr[0], arr[1] = ident, seq
        arr[2:] = fill_value(ident, seq)
        q.put(arr, timeout=60)
        held.append(arr)
        if len(held) > rng.randrange(WINDOW):
            check(held.popleft())
    while held:
        check(held.popleft())


def consumer(q: Queue, out_path: str, seed: int) -> None:
    rng = random.Random(seed)
    got = []
    held: deque = deque()
    while True:
        arr = q.get(timeout=60)
        if arr is None:
            break
        got.append(check(arr))
        assert not arr.flags.writeable
        held.append(arr)
        if len(held) > rng.randrange(WINDOW):
            check(held.popleft())
    while held:
        check(held.popleft())
    with open(out_path, "w") as f:
        json.dump(got, f)


@pytest.mark.parametrize("codec", ["msgpack", "pickle"])
def test_loaned_arrays_exactly_once_in_order_and_the_pool_back_to_baseline(procs, tmp_path, codec):
    pool = BufferPool.create(size=32 << 20)
    q = Queue(pool=pool, codec=codec, capacity=1 << 16)
    try:
        baseline = pool.statistics().free_bytes
        per = TOTAL // PRODUCERS
        outs = [str(tmp_path / f"c{i}.json") for i in range(CONSUMERS)]
        consumers = [procs.fork(lambda i=i: consumer(q, outs[i], i)) for i in range(CONSUMERS)]
        producers = [procs.fork(lambda i=i: producer(q, i, per, 100 + i)) for i in range(PRODUCERS)]
        for pid in producers:
            assert procs.join(pid) == 0
        for _ in consumers:
            q.put(None)
        for pid in consumers:
            assert procs.join(pid) == 0
        seen: dict[int, list[int]] = {i: [] for i in range(PRODUCERS)}
        for path in outs:
            last: dict[int, int] = {}
            with open(path) as f:
                for producer_id, seq in json.load(f):
                    assert seq > last.get(producer_id, -1), "out of order within a consumer"
                    last[producer_id] = seq
                    seen[producer_id].append(seq)
        for i in range(PRODUCERS):
            assert sorted(seen[i]) == list(range(per)), f"producer {i}: lost or duplicated"
        # every process has exited: the liveness pass returns anything a dying one held
        pool.reclaim()
        stats = pool.statistics()
        assert stats.free_bytes == baseline
        assert sum(c.in_use for c in stats.classes) == 0
    finally:
        q.close()
        pool.close()
    assert os.path.exists("/proc/self")
