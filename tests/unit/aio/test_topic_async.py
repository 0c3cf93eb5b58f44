"""asyncio on a real Topic: receive_async, async for, a publisher in another process, a
blocking subscriber beside an awaiting one (the sleep flag both use), close wakes the awaiter."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import threading

import pytest

import shmipc

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("aio_backend")]

N = 5_000


def _publish(name: str, n: int) -> None:
    topic = shmipc.Topic.attach(name)
    with topic.publisher() as pub:
        for i in range(n):
            pub.publish(i)
        pub.publish(None)
    topic.close()


def test_async_for_receives_everything_from_another_process_in_order():
    topic = shmipc.Topic.create(capacity=1 << 14)
    try:
        sub = topic.subscribe()
        proc = multiprocessing.get_context("fork").Process(target=_publish, args=(topic.name, N))

        async def main():
            with pytest.raises(queue.Empty):
                await sub.receive_async(0.05)
            proc.start()
            got = []
            async for msg in sub:
                if msg is None:
                    break
                got.append(msg)
            return got

        assert asyncio.run(main()) == list(range(N))
        proc.join(30)
        assert proc.exitcode == 0
        sub.close()
    finally:
        topic.unlink()
        topic.close()


def test_a_blocking_and_an_awaiting_subscriber_both_get_every_message():
    """The awaiting helper and a blocking receive share the data sleep flag: neither may
    clear the other's (a lost wake-up would stall the blocking one for a whole slice per
    message, far beyond this test's timeout at N messages)."""
    topic = shmipc.Topic.create(capacity=1 << 12)
    try:
        blocking, awaiting = topic.subscribe(), topic.subscribe()
        got_blocking: list = []

        def drain():
            while (msg := blocking.receive(timeout=30)) is not None:
                got_blocking.append(msg)

        reader = threading.Thread(target=drain)
        reader.start()
        proc = multiprocessing.get_context("fork").Process(target=_publish, args=(topic.name, N))

        async def main():
            proc.start()
            got = []
            while (msg := await awaiting.receive_async(timeout=30)) is not None:
                got.append(msg)
            return got

        assert asyncio.run(main()) == list(range(N))
        reader.join(30)
        assert got_blocking == list(range(N))
        proc.join(30)
        assert proc.exitcode == 0
        blocking.close()
        awaiting.close()
    finally:
        topic.unlink()
        topic.close()


def test_closing_the_subscriber_wakes_its_awaiter_with_closed():
    topic = shmipc.Topic.create(capacity=1 << 12)
    try:
        sub = topic.subscribe()

        async def main():
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, sub.close)
            with pytest.raises(shmipc.Closed):
                await sub.receive_async(timeout=20)
            out = []
            async for msg in sub:  # closed: ends at once
                out.append(msg)
            return out

        assert asyncio.run(main()) == []
    finally:
        topic.unlink()
        topic.close()
