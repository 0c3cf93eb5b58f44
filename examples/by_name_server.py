"""Two unrelated programs talking by name: this is the server (by_name_client.py is the client).

The server creates two named structures: a Queue ``NAME-req`` that clients put requests into,
and a Topic ``NAME-news`` on which it publishes every answer (any number of clients may
subscribe). The two programs share no parent, no file descriptor and no pickled handle: only
the name. The server exits when a client sends ``"stop"`` (or after ``--idle`` seconds with no
request); closing the structures it created removes their names from /dev/shm.

    python examples/by_name_server.py --name demo &
    python examples/by_name_client.py --name demo --count 100

Prints "ready" once the names exist, then "served N requests" at the end.
"""

from __future__ import annotations

import argparse
import queue
import sys

import shmipc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="shmipc-demo")
    parser.add_argument("--idle", type=float, default=30.0, help="give up after this long idle")
    args = parser.parse_args()

    with (
        shmipc.Queue.create(f"{args.name}-req") as requests,
        shmipc.Topic.create(f"{args.name}-news", capacity=1 << 16) as news,
    ):
        pub = news.publisher()
        print("ready", flush=True)
        served = 0
        while True:
            try:
                msg = requests.get(timeout=args.idle)
            except queue.Empty:
                print(f"no request for {args.idle} s: giving up after {served} requests")
                return 1
            if msg == "stop":
                break
            # An answer every subscriber sees: the request number and its text reversed.
            pub.publish({"n": msg["n"], "reply": msg["text"][::-1]}, timeout=args.idle)
            served += 1
    print(f"served {served} requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
