"""A three-stage fork pipeline over shmipc Queues: source -> transform workers -> sink.

The source process puts numbered items into a first Queue; several forked transform workers
take items from it, square them and put the results into a second Queue; the sink (the parent
process) reads every result and checks the sequence: each number 0..count-1 arrives exactly
once with the right value, and each worker's results arrive in the order it sent them (a Queue
keeps every producer's order). No pipes, no pickling: msgpack messages in shared memory.

    python examples/pipeline.py [--count N] [--workers W]

Prints the items each worker handled and "pipeline OK: N items in sequence"; exits 1 if an
item is missing, duplicated, wrong or out of order.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import shmipc


def source(out: shmipc.Queue, count: int, workers: int) -> None:
    """Stage 1: put items 0..count-1, then one ``None`` per worker to say "no more"."""
    for n in range(count):
        out.put([n, n])
    for _ in range(workers):
        out.put(None)


def transform(inq: shmipc.Queue, outq: shmipc.Queue, wid: int) -> None:
    """Stage 2: square each item; tag it with this worker's id and its own running count."""
    k = 0
    while True:
        item = inq.get(timeout=60)
        if item is None:
            outq.put(["done", wid, k])
            return
        n, x = item
        outq.put([n, x * x, wid, k])
        k += 1


def child(fn, *args) -> int:  # type: ignore[no-untyped-def]
    """Fork a process that runs ``fn(*args)`` and exits (0 on success, 1 on an exception)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        except BaseException as exc:  # report, then leave without running the parent's exit
            print(f"child {os.getpid()}: {exc!r}", file=sys.stderr, flush=True)
        finally:
            os._exit(code)
    return pid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()

    start = time.perf_counter()
    with shmipc.Queue(capacity=1 << 16) as stage1, shmipc.Queue(capacity=1 << 16) as stage2:
        pids = [child(source, stage1, args.count, args.workers)]
        pids += [child(transform, stage1, stage2, w) for w in range(args.workers)]

        # Stage 3, the sink: check every item once, right value, each worker's order kept.
        seen = bytearray(args.count)
        next_k = [0] * args.workers
        per_worker = [0] * args.workers
        errors = []
        done = 0
        while done < args.workers:
            msg = stage2.get(timeout=60)
            if msg[0] == "done":
                _, wid, k = msg
                if k != next_k[wid]:
                    errors.append(f"worker {wid} said {k} items, sink got {next_k[wid]}")
                done += 1
                continue
            n, y, wid, k = msg
            if k != next_k[wid]:
                errors.append(f"worker {wid}: item {k} arrived when {next_k[wid]} was due")
            next_k[wid] = k + 1
            per_worker[wid] += 1
            if y != n * n:
                errors.append(f"item {n}: got {y}, expected {n * n}")
            if seen[n]:
                errors.append(f"item {n} arrived twice")
            seen[n] = 1
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            if status != 0:
                errors.append(f"process {pid} ended with status {status}")
    missing = args.count - sum(seen)
    if missing:
        errors.append(f"{missing} items never arrived")
    elapsed = time.perf_counter() - start
    for wid, n in enumerate(per_worker):
        print(f"worker {wid}: {n} items")
    if errors:
        for e in errors[:20]:
            print("ERROR:", e)
        return 1
    print(f"pipeline OK: {args.count} items in sequence ({elapsed:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
