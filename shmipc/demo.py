"""The quickstart job: a real producer/consumer pipeline across processes, with its numbers.

Producers (forked processes) put small dicts on one ``shmipc.Queue``; consumers (forked
processes) get them and check sequence numbers; the parent prints throughput, latency of a
ping-pong round trip, and the same pipeline through ``multiprocessing.Queue`` for scale.
Run it as ``shmipc demo`` or ``python -m shmipc.demo``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

from .queue import Queue
from .sync import Barrier

__all__ = ["main", "run_pipeline"]

_CTX = mp.get_context("fork")


def _producer(q: Any, pid: int, count: int, start: Any, batch: int) -> None:
    start.wait()
    if batch > 1:
        for base in range(0, count, batch):
            q.put_many(
                [
                    {"p": pid, "seq": i, "name": "item", "vals": [1.0, 2.0, 3.0]}
                    for i in range(base, min(base + batch, count))
                ]
            )
    else:
        for i in range(count):
            q.put({"p": pid, "seq": i, "name": "item", "vals": [1.0, 2.0, 3.0]})


def _consumer(q: Any, results: Any, start: Any, batch: int) -> None:
    start.wait()
    last: dict[int, int] = {}
    got = 0
    errors = 0
    while True:
        items = q.get_many(batch, timeout=30) if batch > 1 else [q.get(timeout=30)]
        stops = 0
        for msg in items:
            if msg is None:
                stops += 1
                continue
            p, seq = msg["p"], msg["seq"]
            if seq <= last.get(p, -1):
                errors += 1  # duplicate or out of order for this producer
            last[p] = seq
            got += 1
        if stops:
            for _ in range(stops - 1):
                q.put(None)  # a batch took another consumer's stop marker: hand it back
            break
    results.put((got, errors, last, time.perf_counter()))


def run_pipeline(
    queue_factory: Any, producers: int, consumers: int, count: int, batch: int = 1
) -> dict[str, float]:
    """Run producers -> one queue -> consumers; returns messages/s and a correctness check."""
    q = queue_factory()
    results: Any = _CTX.SimpleQueue()
    start = Barrier(producers + consumers + 1)
    procs = [
        _CTX.Process(target=_producer, args=(q, i, count, start, batch)) for i in range(producers)
    ] + [_CTX.Process(target=_consumer, args=(q, results, start, batch)) for _ in range(consumers)]
    for p in procs:
        p.start()
    start.wait(timeout=60)
    t0 = time.perf_counter()
    for p in procs[:producers]:
        p.join()
    for _ in range(consumers):
        q.put(None)  # one stop marker per consumer, after every producer finished
    outcomes = [results.get() for _ in range(consumers)]
    for p in procs[producers:]:
        p.join()
    elapsed = max(o[3] for o in outcomes) - t0
    received = sum(o[0] for o in outcomes)
    errors = sum(o[1] for o in outcomes)
    if hasattr(q, "close"):
        q.close()
    expected = producers * count
    return {
        "messages": received,
        "expected": expected,
        "order_errors": errors,
        "seconds": elapsed,
        "rate": received / elapsed,
        "ok": float(received == expected and errors == 0),
    }


def _pong(q_in: Any, q_out: Any, n: int) -> None:
    for _ in range(n):
        q_out.put_bytes(q_in.get_bytes())


def ping_pong(rounds: int = 20000) -> tuple[float, float]:
    """Median and p99 round trip in µs between two processes over two shmipc queues."""
    a, b = Queue(), Queue()
    child = _CTX.Process(target=_pong, args=(a, b, rounds))
    child.start()
    samples = []
    msg = b"x" * 64
    for _ in range(rounds):
        t = time.perf_counter_ns()
        a.put_bytes(msg)
        b.get_bytes()
        samples.append(time.perf_counter_ns() - t)
    child.join()
    a.close()
    b.close()
    samples = samples[rounds // 10 :]  # drop warm-up
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shmipc demo", description=__doc__.splitlines()[0])
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--count", type=int, default=200_000, help="messages per producer")
    parser.add_argument("--no-baseline", action="store_true", help="skip multiprocessing.Queue")
    args = parser.parse_args(argv)

    print(
        f"shmipc demo: {args.producers} producers -> 1 queue -> {args.consumers} consumers, "
        f"{args.count:,} small dicts each, on {os.cpu_count()} CPUs"
    )
    shm = run_pipeline(lambda: Queue(capacity=1 << 22), args.producers, args.consumers, args.count)
    print(
        f"  shmipc.Queue put/get        {shm['rate']:>12,.0f} msgs/s   "
        f"{shm['messages']:,}/{shm['expected']:,} delivered exactly once: "
        f"{'yes' if shm['ok'] else 'NO'}"
    )
    batched = run_pipeline(
        lambda: Queue(capacity=1 << 22), args.producers, args.consumers, args.count, batch=256
    )
    print(
        f"  shmipc.Queue put_many/get_many {batched['rate']:>9,.0f} msgs/s   "
        f"exactly once: {'yes' if batched['ok'] else 'NO'}"
    )
    ok = shm["ok"] and batched["ok"]
    if not args.no_baseline:
        n = max(1, args.count // 4)
        base = run_pipeline(_CTX.Queue, args.producers, args.consumers, n)
        print(
            f"  multiprocessing.Queue        {base['rate']:>12,.0f} msgs/s   "
            f"(shmipc is {shm['rate'] / base['rate']:.1f}x)"
        )
    med, p99 = ping_pong()
    print(f"  ping-pong round trip         median {med:.1f} µs, p99 {p99:.1f} µs")
    print("  full side-by-side benchmark: shmipc bench (python -m shmipc.bench)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
