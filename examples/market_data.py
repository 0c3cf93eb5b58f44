"""Market-data fan-out: one publisher, several subscriber processes, one of them slow.

A publisher writes ``--count`` price ticks to a Topic; every subscriber (a forked process)
sees every tick published after it subscribed. One subscriber is slow. The run is made under
each policy:

* ``"block"``: the publisher waits for the slowest live subscriber, so nothing is lost;
  every subscriber gets every tick, in order.
* ``"overwrite"``: the publisher never waits. The slow subscriber (which here stalls until the
  publisher has finished, so it is certainly a ring behind) is lapped: its next ``receive``
  raises ``shmipc.Lagged`` with ``missed``, the exact number of ticks it lost, and it resumes
  at the oldest tick still in the ring. Received plus missed always equals published.

    python examples/market_data.py [--policy block|overwrite|both] [--count N] [--fast K]

Prints one line of statistics per subscriber and policy (received, missed, Lagged raised,
order checked); exits 1 if a tick is unaccounted for or out of order.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import shmipc

END = "end"


def subscriber(
    topic: shmipc.Topic,
    results: shmipc.Queue,
    go: shmipc.Queue,
    name: str,
    slow: bool,
    policy: str,
) -> None:
    """Receive ticks until the end marker; report what arrived and what was missed."""
    sub = topic.subscribe()
    results.put(["ready", name])
    received = missed = lagged = 0
    last = -1
    in_order = True
    first = True
    while True:
        try:
            tick = sub.receive(timeout=60)
        except shmipc.Lagged as exc:
            lagged += 1
            missed += exc.missed
            last += exc.missed  # the ticks in between are gone, and counted
            continue
        if tick == END:
            break
        if tick["seq"] != last + 1:
            in_order = False
        last = tick["seq"]
        received += 1
        if slow:
            if first and policy == "overwrite":
                # A stall: wait until everything is published (the ring is then lapped).
                go.get(timeout=60)
            elif policy == "block":
                time.sleep(0.0005)  # slow on every tick: the publisher waits for it
            first = False
    results.put(["stats", name, received, missed, lagged, in_order])
    sub.close()


def run(policy: str, count: int, fast: int) -> bool:
    """One run under ``policy``; True if every subscriber accounted for every tick."""
    names = [f"fast{i}" for i in range(fast)] + ["slow"]
    # 4 KiB of ring: about a hundred ticks, so a stalled subscriber is lapped many times over.
    with (
        shmipc.Topic.create(capacity=1 << 12, policy=policy) as topic,
        shmipc.Queue() as results,
        shmipc.Queue() as go,
    ):
        pids = []
        for name in names:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    subscriber(topic, results, go, name, name == "slow", policy)
                    code = 0
                except BaseException as exc:
                    print(f"subscriber {name}: {exc!r}", file=sys.stderr, flush=True)
                finally:
                    os._exit(code)
            pids.append(pid)
        for _ in names:  # every subscriber has subscribed: it will see the first tick
            assert results.get(timeout=60)[0] == "ready"

        pub = topic.publisher()
        start = time.perf_counter()
        for seq in range(count):
            pub.publish({"seq": seq, "sym": "ABC", "px": 100 + (seq % 50) / 100}, timeout=60)
        pub.publish(END, timeout=60)
        elapsed = time.perf_counter() - start
        if policy == "overwrite":
            go.put("published")  # the slow subscriber's stall ends
        stats = {}
        for _ in names:
            _, name, received, missed, lagged, in_order = results.get(timeout=60)
            stats[name] = (received, missed, lagged, in_order)
        ok = True
        for pid in pids:
            ok &= os.waitpid(pid, 0)[1] == 0
    print(f"policy {policy}: published {count} ticks in {elapsed:.3f} s")
    for name in names:
        received, missed, lagged, in_order = stats[name]
        print(
            f"  {name:6} received {received:6}  missed {missed:6}  Lagged raised {lagged:3}"
            f"  in order {'yes' if in_order else 'NO'}"
        )
        ok &= in_order and received + missed == count
        if policy == "block":
            ok &= missed == 0
    if policy == "overwrite" and stats["slow"][1] == 0:
        print("  (the slow subscriber was never lapped?)")
        ok = False
    print(f"policy {policy}: {'every tick accounted for' if ok else 'ERROR'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=["block", "overwrite", "both"], default="both")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--fast", type=int, default=2, help="number of fast subscribers")
    args = parser.parse_args()
    policies = ["block", "overwrite"] if args.policy == "both" else [args.policy]
    ok = all([run(p, args.count, args.fast) for p in policies])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
