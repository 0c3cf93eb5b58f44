"""A counter in a shared anonymous mapping, incremented by forked children.

The C example from the memory-mapped I/O reference, in Python:

    region_t *r = mmap(NULL, sizeof(region_t), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (fork() == 0) { atomic_fetch_add(&r->counter, 1); _exit(0); }

``Region.anonymous`` is the ``MAP_SHARED | MAP_ANONYMOUS`` mapping, shared with every child
forked after it is made; ``AtomicCounter.at(region, 0)`` is the atomic in its first cache line.
Eight children add 20,000 each; the total is exact, with no lock and no pickling.

    python examples/counter_fork.py [--children N] [--increments M]

Prints the count and the time taken, and exits 1 if the count is not exact.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from shmipc import AtomicCounter, Region


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=8)
    parser.add_argument("--increments", type=int, default=20_000)
    args = parser.parse_args(argv)

    region = Region.anonymous(4096)  # MAP_SHARED | MAP_ANONYMOUS, one page
    counter = AtomicCounter.at(region, 0, create=True)  # the atomic in the first cache line

    start = time.perf_counter()
    pids = []
    for _ in range(args.children):
        pid = os.fork()
        if pid == 0:  # the child: add, then leave without running the parent's cleanup
            code = 1
            try:
                for _ in range(args.increments):
                    counter.add(1)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    failed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    elapsed = time.perf_counter() - start

    expected = args.children * args.increments
    count = counter.load()
    print(f"count: {count} (expected {expected})")
    print(
        f"time: {elapsed:.3f} s for {args.children} children x {args.increments} increments "
        f"({elapsed / max(expected, 1) * 1e9:.0f} ns per increment, fork included)"
    )
    region.close()
    if failed or count != expected:
        print("MISMATCH" if count != expected else f"{failed} children failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
