"""Two unrelated programs talking by name: this is the client (see by_name_server.py).

It attaches the server's Queue ``NAME-req`` and Topic ``NAME-news`` by name alone (waiting up
to ``--wait`` seconds for the server to create them), subscribes to the news first so that it
sees every answer, sends ``--count`` requests, checks each answer, then sends ``"stop"``. The
client created nothing, so closing its handles leaves the names to the server.

    python examples/by_name_server.py --name demo &
    python examples/by_name_client.py --name demo --count 100

Prints "client OK: N answers checked"; exits 1 on a wrong or missing answer.
"""

from __future__ import annotations

import argparse
import sys
import time

import shmipc


def attach(kind, name: str, wait: float):  # type: ignore[no-untyped-def]
    """``kind.attach(name)``, retried until the server has created it or ``wait`` passed."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return kind.attach(name)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="shmipc-demo")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--wait", type=float, default=30.0)
    args = parser.parse_args()

    requests = attach(shmipc.Queue, f"{args.name}-req", args.wait)
    news = attach(shmipc.Topic, f"{args.name}-news", args.wait)
    with requests, news:
        sub = news.subscribe()  # before the first request: it sees every answer
        bad = 0
        for n in range(args.count):
            text = f"request {n}"
            requests.put({"n": n, "text": text})
            answer = sub.receive(timeout=args.wait)
            if answer != {"n": n, "reply": text[::-1]}:
                print(f"ERROR: request {n}: answer {answer!r}")
                bad += 1
        requests.put("stop")
        sub.close()
    if bad:
        return 1
    print(f"client OK: {args.count} answers checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
