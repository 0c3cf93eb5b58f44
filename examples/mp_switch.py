"""The one-import switch from multiprocessing to shmipc, on a real program.

A small job pipeline written for the standard library's ``multiprocessing``: a
``JoinableQueue`` of jobs (numbered lines of text), worker ``Process``es that count the words
of each line, a ``Queue`` of results, a shared ``Value`` counting the lines processed (under
its own lock), and ``join()`` to wait until every job is done. Moving it to shmipc is the one
line marked "the switch" below; nothing else in the program changes:

    import multiprocessing                  # before
    import shmipc.mp as multiprocessing     # after

The program picks the line from the environment (``MP_SWITCH_IMPL=stdlib`` for the standard
library, otherwise shmipc) so that ``--impl both`` can run it both ways, each in its own
interpreter, and check that the answers agree.

    python examples/mp_switch.py [--impl shmipc|stdlib|both] [--start-method fork|spawn|forkserver]
                                 [--workers N] [--lines M]

Prints, per implementation, the module used, the word total, the lines processed and the
time taken; exits 1 if a run fails or the implementations disagree.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

if os.environ.get("MP_SWITCH_IMPL") == "stdlib":
    import multiprocessing
else:
    import shmipc.mp as multiprocessing  # the switch: this line is the whole change


def make_line(n: int) -> str:
    """Line ``n`` of the input: 1 to 20 words, known in advance so the total can be checked."""
    return " ".join(f"w{n}_{i}" for i in range(n % 20 + 1))


def worker(jobs, results, processed) -> None:  # type: ignore[no-untyped-def]
    """Count the words of each line until the ``None`` that says there is no more work."""
    while True:
        item = jobs.get()
        try:
            if item is None:
                return
            n, line = item
            results.put((n, len(line.split())))
            with processed.get_lock():
                processed.value += 1
        finally:
            jobs.task_done()


def _watch(procs: list) -> None:  # type: ignore[type-arg]
    """Exit the program (status 1) if a worker dies before the work is done."""
    while True:
        for p in procs:
            if p.exitcode not in (None, 0):
                print(f"worker {p.pid} died (exit code {p.exitcode})", file=sys.stderr)
                os._exit(1)
        time.sleep(0.2)


def run(start_method: str, workers: int, lines: int) -> int:
    ctx = multiprocessing.get_context(start_method)
    jobs = ctx.JoinableQueue()
    results = ctx.Queue()
    processed = ctx.Value("i", 0)
    procs = [ctx.Process(target=worker, args=(jobs, results, processed)) for _ in range(workers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for n in range(lines):
        jobs.put((n, make_line(n)))
    # jobs.join() waits for every line to be counted; a worker that died would make it wait
    # forever (with either module), so a watchdog ends the program if one does.
    threading.Thread(target=_watch, args=(procs,), daemon=True).start()
    jobs.join()
    counts = dict(results.get(timeout=60) for _ in range(lines))
    for _ in procs:
        jobs.put(None)
    for p in procs:
        p.join(60)
    elapsed = time.perf_counter() - t0
    words = sum(counts.values())
    expected = sum(n % 20 + 1 for n in range(lines))
    print(f"module: {multiprocessing.__name__}")
    print(f"words: {words} (expected {expected})")
    print(f"processed: {processed.value} of {lines} lines")
    print(f"time: {elapsed:.3f} s with {workers} workers ({start_method})")
    ok = words == expected and processed.value == lines and len(counts) == lines
    ok = ok and all(p.exitcode == 0 for p in procs)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=["shmipc", "stdlib", "both"], default="shmipc")
    parser.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], default="spawn")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--lines", type=int, default=2000)
    args = parser.parse_args(argv)
    impls = ["stdlib", "shmipc"] if args.impl == "both" else [args.impl]
    outputs = {}
    for impl in impls:
        if impl != (os.environ.get("MP_SWITCH_IMPL") or "shmipc") or len(impls) > 1:
            # The import is chosen when the program starts: run it afresh for this one.
            cmd = [sys.executable, __file__, "--impl", impl, "--start-method", args.start_method]
            cmd += ["--workers", str(args.workers), "--lines", str(args.lines)]
            env = {**os.environ, "MP_SWITCH_IMPL": impl}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            sys.stdout.write(f"[{impl}]\n{proc.stdout}")
            sys.stderr.write(proc.stderr)
            if proc.returncode:
                return 1
            outputs[impl] = [ln for ln in proc.stdout.splitlines() if ln.startswith("words:")]
        else:
            return run(args.start_method, args.workers, args.lines)
    if len(set(map(tuple, outputs.values()))) != 1:
        print("the implementations disagree")
        return 1
    print("same answer from both")
    return 0


if __name__ == "__main__":
    sys.exit(main())
