"""One process sleeps on an Event, another wakes it: how long the wake-up takes.

A waiter in ``Event.wait()`` spins for ~20 µs, then registers as a sleeper and sleeps on a
futex in the shared page. ``set()`` stores the flag and, because a sleeper is registered,
makes one FUTEX_WAKE syscall. The time from just before ``set()`` to just after ``wait()``
returns in the other process is the wake latency printed here (both read CLOCK_MONOTONIC,
which is one clock for the whole machine). Across cores of a virtual machine expect tens of
microseconds; that cost is why waiters spin first and wakers skip the syscall when nobody
sleeps.

    python examples/futex_wake.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from shmipc import AtomicCounter, Event


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    rounds = args.rounds

    # One set of events per round, made before fork so both processes share them: a round
    # never reuses a flag the other side might still be looking at.
    ready = [Event() for _ in range(rounds)]  # the waiter is about to wait
    go = [Event() for _ in range(rounds)]  # the one it waits on
    sent = [AtomicCounter() for _ in range(rounds)]  # monotonic ns just before set()
    latency = [AtomicCounter() for _ in range(rounds)]  # ns from set() to wait() returning

    pid = os.fork()
    if pid == 0:  # the sleeper
        code = 1
        try:
            for i in range(rounds):
                ready[i].set()
                if not go[i].wait(timeout=30):
                    break
                woke = time.monotonic_ns()
                latency[i].store(woke - sent[i].load())
            else:
                code = 0
        finally:
            os._exit(code)

    # The waker.
    for i in range(rounds):
        if not ready[i].wait(timeout=30):
            print("the sleeper never got ready", file=sys.stderr)
            return 1
        # Let the sleeper get past its spin and fall asleep on the futex, so that what is
        # measured is a real wake-up (not synchronisation: the result is correct either way).
        time.sleep(0.02)
        sent[i].store(time.monotonic_ns())
        go[i].set()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print("the sleeper failed", file=sys.stderr)
        return 1

    micros = [c.load() / 1000 for c in latency]
    print(f"wake latency over {rounds} rounds (set() in one process -> wait() returns in another):")
    print(
        f"  median {statistics.median(micros):.1f} us, min {min(micros):.1f} us, "
        f"max {max(micros):.1f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
