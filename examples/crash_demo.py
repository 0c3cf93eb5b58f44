"""A crash demo: kill a worker with SIGKILL in the middle of a run and watch the rest go on.

Part 1, ``shmipc.Pool``: one task reports its worker's pid and hangs; the parent kills that
worker with SIGKILL. That task's future fails with ``shmipc.BrokenWorker`` (naming the pid and
the signal), the pool starts a replacement, and every other task, including those submitted
after the kill, completes. (``multiprocessing.Pool`` would hang for ever here.)

Part 2, plain Queue consumers: three forked consumers drain a work Queue, announcing each item
they take and each item they finish on a result Queue. One is killed mid-run. The survivors
drain everything that was left; the parent sees which item the dead consumer had taken but
not finished and puts it back, so every item is done exactly once.

    python examples/crash_demo.py [--count N]

Prints what happened in each part and "carried on: ..." lines; exits 1 if anything was lost.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import time

import shmipc


def square(x: int) -> int:
    return x * x


def hang(pids: shmipc.Queue) -> None:
    """The task that gets its worker killed: say which process runs it, then wait."""
    pids.put(os.getpid())
    time.sleep(120)


def pool_part(count: int) -> bool:
    print("part 1: shmipc.Pool with 2 workers")
    with shmipc.Pool(2, context="fork") as pool, shmipc.Queue() as pids:
        before = [pool.submit(square, i) for i in range(count)]
        doomed = pool.submit(hang, pids)
        pid = pids.get(timeout=60)
        os.kill(pid, signal.SIGKILL)
        print(f"  killed worker {pid} (SIGKILL) while it ran a task")
        after = [pool.submit(square, i) for i in range(count, 2 * count)]
        try:
            doomed.result(timeout=60)
            print("  ERROR: the killed task returned")
            return False
        except shmipc.BrokenWorker as exc:
            print(f"  that task failed: BrokenWorker(pid={exc.pid}, signal={exc.signal})")
            ok = exc.pid == pid and exc.signal == "SIGKILL"
        results = [f.result(timeout=60) for f in before + after]
        ok &= results == [i * i for i in range(2 * count)]
        print(
            f"  carried on: {sum(r == i * i for i, r in enumerate(results))} of {2 * count} "
            "other tasks succeeded, before and after the kill"
        )
        pool.close()
        pool.join()
    return ok


def consumer(work: shmipc.Queue, results: shmipc.Queue, wid: int) -> None:
    while True:
        item = work.get(timeout=60)
        if item is None:
            return
        results.put(["took", wid, item])
        time.sleep(0.0002)  # the work
        results.put(["done", wid, item])


def queue_part(count: int) -> bool:
    print("part 2: three Queue consumers, one killed mid-run")
    with shmipc.Queue() as work, shmipc.Queue() as results:
        pids = []
        for wid in range(3):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    consumer(work, results, wid)
                    code = 0
                except BaseException as exc:
                    print(f"consumer {wid}: {exc!r}", file=sys.stderr, flush=True)
                finally:
                    os._exit(code)
            pids.append(pid)
        victim = 0
        for item in range(count):
            work.put(item)
        done: dict[int, int] = {}
        taken_by_victim: set[int] = set()
        killed = False
        taken: set[int] = set()
        deadline = time.monotonic() + 60
        while len(done) < count:
            try:
                kind, wid, item = results.get(timeout=2)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise
                if killed and work.qsize() == 0:
                    # The consumer died between taking an item and saying so: the queue is
                    # empty and the survivors idle, so what nobody took is that item.
                    for lost in sorted(set(range(count)) - taken - done.keys()):
                        print(f"  item {lost} was taken by it as it died: put back")
                        work.put(lost)
                continue
            if kind == "took":
                taken.add(item)
            if kind == "took" and wid == victim:
                taken_by_victim.add(item)
            elif kind == "done":
                if item in done:
                    print(f"  ERROR: item {item} done twice")
                    return False
                done[item] = wid
            elif kind == "dead":
                # Everything the dead consumer put is ahead of this marker (a put has stored
                # its message when it returns), so what it took and never finished is known.
                for lost in sorted(taken_by_victim - done.keys()):
                    print(f"  it held item {lost} when it died: put back")
                    work.put(lost)
            took = len(taken_by_victim)
            if not killed and (took >= 5 or len(done) > count // 2):
                os.kill(pids[victim], signal.SIGKILL)
                os.waitpid(pids[victim], 0)
                killed = True
                print(f"  killed consumer {victim} (pid {pids[victim]}) after it took {took} items")
                results.put(["dead", victim, None])
        for _ in range(2):
            work.put(None)
        ok = True
        for pid in pids[1:]:
            ok &= os.waitpid(pid, 0)[1] == 0
    per = {w: sum(1 for x in done.values() if x == w) for w in range(3)}
    print(f"  items done per consumer: {per}")
    ok &= sorted(done) == list(range(count))
    print(f"  carried on: {len(done)} of {count} items done exactly once" if ok else "  ERROR")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    ok = pool_part(args.count)
    ok &= queue_part(args.count)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
