"""The sleep flags of a topic (csrc/topic.c, invariant T8): a sleeper sets its side's flag,
the one waker clears it before its single wake, and a stale flag costs nothing but a wake."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from shmipc import Topic
from shmipc._native import lib
from shmipc.topic import CONTROL

pytestmark = pytest.mark.timeout(60)


def _flag(topic: Topic, field: str) -> int:
    return int(lib.shmipc_load32_acquire(topic._p(), CONTROL[field]))


def _wait_for(cond, what: str, limit: float = 20.0) -> None:
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.001)


def _in_thread(fn):
    out: list = []
    th = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    th.start()
    return th, out


def test_a_sleeping_subscriber_is_woken_and_its_flag_cleared_by_one_publish():
    t = Topic.create(capacity=4096, spin_ns=0)
    try:
        sub, pub = t.subscribe(), t.publisher()
        th, out = _in_thread(lambda: sub.receive_bytes(timeout=30))
        _wait_for(lambda: _flag(t, "data_waiters") == 1, "the subscriber's sleep flag")
        pub.publish_bytes(b"wake")
        assert _flag(t, "data_waiters") == 0  # the publish that woke it cleared it
        th.join(30)
        assert out == [b"wake"]
        pub.publish_bytes(b"awake")  # nobody sleeps: the flag stays clear
        assert _flag(t, "data_waiters") == 0 and sub.receive_bytes(timeout=5) == b"awake"
        sub.close()
        pub.close()
    finally:
        t.close()


def test_a_publisher_waiting_for_room_is_woken_and_its_flag_cleared_by_the_reader():
    t = Topic.create(capacity=4096, spin_ns=0)
    try:
        sub, pub = t.subscribe(), t.publisher()
        sent = 0
        while True:
            try:
                pub.publish_bytes(b"x" * 48, timeout=0)
            except queue.Full:  # the ring is full for the subscriber
                break
            sent += 1
        th, out = _in_thread(lambda: pub.publish_bytes(b"last", timeout=30))
        _wait_for(lambda: _flag(t, "space_waiters") == 1, "the publisher's sleep flag")
        got = [sub.receive_bytes(timeout=30) for _ in range(sent)]
        th.join(30)
        assert not th.is_alive() and out == [None]
        assert _flag(t, "space_waiters") == 0  # the read that woke it cleared it
        assert got == [b"x" * 48] * sent and sub.receive_bytes(timeout=5) == b"last"
        sub.close()
        pub.close()
    finally:
        t.close()


def test_a_stale_or_scribbled_flag_costs_a_wake_and_is_cleared():
    t = Topic.create(capacity=4096, spin_ns=0)
    try:
        sub, pub = t.subscribe(), t.publisher()
        lib.shmipc_store32_release(t._p(), CONTROL["data_waiters"], 0xFFFFFFFF)
        lib.shmipc_store32_release(t._p(), CONTROL["space_waiters"], 7)
        pub.publish_bytes(b"a")
        assert _flag(t, "data_waiters") == 0
        assert sub.receive_bytes(timeout=5) == b"a"  # cursor past the stale need: cleared
        assert _flag(t, "space_waiters") == 0  # the read passed its (zero) need: cleared
        sub.close()
        pub.close()
    finally:
        t.close()
