"""An asyncio consumer: a plain asyncio TCP server streaming a Topic's messages to clients.

A publisher process (forked) publishes a tick on a Topic every millisecond. The main process
runs an asyncio TCP server (``asyncio.start_server``, 127.0.0.1, a free port); for each
connection it subscribes to the topic and writes every tick to the socket as a line of JSON,
waiting with ``await sub.receive_async()``: the event loop is never blocked and no thread is
started per waiting call (one helper thread per loop watches all the waits, docs/asyncio.md).
Each client gets ``--count`` consecutive ticks; the server stops after ``--clients`` clients.

    python examples/asyncio_stream.py --count 20 --clients 1 &
    nc 127.0.0.1 PORT        # the port is printed on the first line

Prints "listening on 127.0.0.1:PORT", then a line per client served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import sys
import time

import shmipc


def publisher(topic: shmipc.Topic, stop_fd: int) -> None:
    """Publish a tick every millisecond until ``stop_fd`` becomes readable (the parent closed
    its end of the pipe)."""
    pub = topic.publisher()
    seq = 0
    while not select.select([stop_fd], [], [], 0.001)[0]:
        pub.publish({"seq": seq, "t": time.time()}, timeout=10)
        seq += 1


async def serve(topic: shmipc.Topic, count: int, clients: int) -> None:
    served = 0
    finished = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        with topic.subscribe() as sub:  # sees every tick published from now on
            try:
                for _ in range(count):
                    tick = await sub.receive_async(timeout=30)
                    writer.write(json.dumps(tick).encode() + b"\n")
                    await writer.drain()
            finally:
                writer.close()
        served += 1
        print(f"client {served}: sent {count} ticks", flush=True)
        if served >= clients:
            finished.set()

    server = await asyncio.start_server(stream, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    async with server:
        await finished.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="ticks sent to each client")
    parser.add_argument("--clients", type=int, default=1, help="stop after this many clients")
    args = parser.parse_args()

    with shmipc.Topic.create(capacity=1 << 16) as topic:
        stop_r, stop_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(stop_w)
                publisher(topic, stop_r)
                code = 0
            except BaseException as exc:
                print(f"publisher: {exc!r}", file=sys.stderr, flush=True)
            finally:
                os._exit(code)
        os.close(stop_r)
        try:
            asyncio.run(serve(topic, args.count, args.clients))
        finally:
            os.close(stop_w)  # the publisher sees EOF and stops
            status = os.waitpid(pid, 0)[1]
    print("done" if status == 0 else f"publisher ended with status {status}")
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
