"""Queue: the multiprocessing.Queue interface over a ring (put/get with block and timeout,
the nowait forms, qsize/empty/full, maxsize, close), codecs, raw bytes, batches, the spill
path for large messages, fork/spawn/forkserver/unrelated processes, segment ownership, and
no feeder thread."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone

import msgpack
import pytest
from _procs import Child, fork_call
from queue_helpers import (
    JsonCodec,
    Point,
    SpillRecorder,
    close_and_exit,
    segment_exists,
    square_worker,
)

import shmipc
from shmipc import Closed, MessageTooLarge
from shmipc.codec import encode, get_codec
from shmipc.queue import Queue
from shmipc.region import _unlink_owned_at_exit

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 0.1
SMALL = 4096  # a ring whose max payload is 2040 bytes: larger messages spill


def _assert_times_out(exc: type[BaseException], fn, *args, timeout: float, **kwargs) -> float:
    start = time.monotonic()
    with pytest.raises(exc):
        fn(*args, timeout=timeout, **kwargs)
    elapsed = time.monotonic() - start
    assert timeout * 0.9 <= elapsed < 2.0, elapsed
    return elapsed


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in an unrelated interpreter (not a fork of this one)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=40,
    )


@pytest.fixture
def no_spill_leak(monkeypatch):
    """Fail if the spill segments this process wrote are still in /dev/shm after the test
    (removing them, so one leak fails one test only). Only our own spills are looked at:
    other processes on the machine may be spilling at the same time."""
    recorder = SpillRecorder(monkeypatch)
    yield recorder
    left = recorder.remove_left()
    assert not left, f"spill segments left in /dev/shm: {left}"


# ---- the basics --------------------------------------------------------------------------


def test_shmipc_exports_queue():
    assert shmipc.Queue is Queue


def test_put_get_objects_in_order(shm_name):
    values = [
        1,
        "two",
        [3, 3.5],
        {"four": 4},
        (5, "five"),
        None,
        b"six",
        {7, 8},
        2**70,
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    ]
    with Queue(capacity=SMALL, name=shm_name) as q:
        assert q.name == shm_name and q.capacity == SMALL and q.maxsize == 0
        assert q.codec.name == "msgpack"
        for v in values:
            q.put(v)
        got = [q.get() for _ in values]
    assert got == values
    assert [type(g) for g in got] == [type(v) for v in values]


def test_nowait_forms():
    with Queue(2, capacity=SMALL) as q:
        q.put_nowait("a")
        q.put_nowait("b")
        with pytest.raises(queue.Full):
            q.put_nowait("c")
        assert q.get_nowait() == "a"
        assert q.get_nowait() == "b"
        with pytest.raises(queue.Empty):
            q.get_nowait()
    assert shmipc.queue.Empty is queue.Empty and shmipc.queue.Full is queue.Full


def test_get_block_false_and_timeouts():
    with Queue(capacity=SMALL) as q:
        start = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(block=False)
        with pytest.raises(queue.Empty):
            q.get(False, 5)  # timeout ignored when not blocking, as in the stdlib
        with pytest.raises(queue.Empty):
            q.get_many(3, block=False)
        with pytest.raises(queue.Empty):
            q.get_bytes(block=False)
        assert time.monotonic() - start < 1.0
        _assert_times_out(queue.Empty, q.get, timeout=TIMEOUT)
        _assert_times_out(queue.Empty, q.get_many, 3, timeout=TIMEOUT)
        _assert_times_out(queue.Empty, q.get_bytes, timeout=TIMEOUT)
        _assert_times_out(queue.Empty, q.get, timeout=0.3)


def test_put_block_false_and_timeouts():
    with Queue(1, capacity=SMALL) as q:
        q.put(0)
        start = time.monotonic()
        with pytest.raises(queue.Full):
            q.put(1, block=False)
        with pytest.raises(queue.Full):
            q.put(1, False, 5)
        with pytest.raises(queue.Full):
            q.put_bytes(b"1", block=False)
        with pytest.raises(queue.Full):
            q.put_many([1], block=False)
        assert time.monotonic() - start < 1.0
        _assert_times_out(queue.Full, q.put, 1, timeout=TIMEOUT)
        _assert_times_out(queue.Full, q.put_bytes, b"1", timeout=TIMEOUT)
        _assert_times_out(queue.Full, q.put_many, [1], timeout=TIMEOUT)
        assert q.get() == 0 and q.empty()


def test_get_timeout_is_not_doubled():
    """get(timeout=t) waits about t, not 2t: the fast path's wait must not be followed by a
    second full wait on the slow path (queue.py: Queue.get falls back to get_record with a
    fresh deadline)."""
    q = Queue(capacity=SMALL)
    try:
        times = []
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(queue.Empty):
                q.get(timeout=0.05)
            times.append(time.monotonic() - start)
        waits = q.statistics().consumer_waits
    finally:
        q.close()
        del q
    assert min(times) < 0.09, times
    assert waits == 3, waits


def test_put_timeout_is_not_doubled():
    q = Queue(1, capacity=SMALL)
    try:
        q.put(0)
        times = []
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(queue.Full):
                q.put(1, timeout=0.05)
            times.append(time.monotonic() - start)
    finally:
        q.close()
        del q
    assert min(times) < 0.09, times


def test_blocked_get_wakes_on_a_put_from_a_thread():
    with Queue(capacity=SMALL) as q:
        got = []
        t = threading.Thread(target=lambda: got.append(q.get(timeout=20)))
        t.start()
        q.put({"wake": True})
        t.join(20)
        assert got == [{"wake": True}]


def test_blocked_put_wakes_when_a_get_makes_room():
    with Queue(1, capacity=SMALL) as q:
        q.put("first")
        done = threading.Event()

        def producer() -> None:
            q.put("second", timeout=20)
            done.set()

        t = threading.Thread(target=producer)
        t.start()
        assert not done.wait(0.05)
        assert q.get() == "first"
        t.join(20)
        assert done.is_set() and q.get(timeout=5) == "second"


def test_qsize_empty_full_maxsize(shm_name):
    with Queue(3, capacity=SMALL, name=shm_name) as q:
        assert q.maxsize == 3
        assert q.qsize() == 0 and q.empty() and not q.full()
        q.put(1)
        assert q.qsize() == 1 and not q.empty() and not q.full()
        q.put_many([2, 3])
        assert q.qsize() == 3 and q.full()
        other = Queue.attach(shm_name)
        try:
            assert other.maxsize == 3 and other.full() and other.qsize() == 3
            assert other.get() == 1
        finally:
            other.close()
        assert not q.full() and q.qsize() == 2


def test_unbounded_queue_is_never_full_but_its_ring_can_be():
    with Queue(capacity=256) as q:  # max payload 120
        assert q.maxsize == 0
        n = 0
        while True:
            try:
                q.put_bytes(bytes(100), block=False)
            except queue.Full:
                break
            n += 1
        assert n == 2 and not q.full() and q.qsize() == 2


@pytest.mark.parametrize("capacity", [0, 32, 1000, 3 << 10])
def test_bad_capacity_is_refused_and_leaves_nothing(shm_name, capacity):
    with pytest.raises(ValueError):
        Queue(capacity=capacity, name=shm_name)
    assert not segment_exists(shm_name)


def test_negative_maxsize_means_unbounded():
    with Queue(-5, capacity=SMALL) as q:
        assert q.maxsize == 0
        for i in range(20):
            q.put_nowait(i)
        assert q.qsize() == 20


def test_close_then_use_raises_closed():
    q = Queue(3, capacity=SMALL)
    q.put(1)
    q.close()
    calls = {
        "put": lambda: q.put(1),
        "put_nowait": lambda: q.put_nowait(1),
        "put_timeout": lambda: q.put(1, timeout=0.1),
        "put_bytes": lambda: q.put_bytes(b"x"),
        "put_many": lambda: q.put_many([1]),
        "get": lambda: q.get(),
        "get_nowait": lambda: q.get_nowait(),
        "get_timeout": lambda: q.get(timeout=0.1),
        "get_bytes": lambda: q.get_bytes(),
        "get_many": lambda: q.get_many(2),
        "qsize": lambda: q.qsize(),
        "empty": lambda: q.empty(),
        "full": lambda: q.full(),
        "name": lambda: q.name,
        "statistics": lambda: q.statistics(),
        "unlink": lambda: q.unlink(),
        "reserve": lambda: q.reserve(1),
        "peek": lambda: q.peek(),
        "pickle": lambda: pickle.dumps(q),
    }
    for what, call in calls.items():
        start = time.monotonic()
        with pytest.raises(Closed):
            call()
        assert time.monotonic() - start < 1.0, what
    q.close()  # twice is fine
    assert repr(q) == "<shmipc.Queue closed>"
    q.join_thread()
    q.cancel_join_thread()


def test_full_of_a_closed_unbounded_queue_raises_closed():
    """full() answers False from maxsize alone when maxsize is 0, even on a closed handle."""
    q = Queue(capacity=SMALL)
    q.close()
    try:
        outcome: object = q.full()
    except Closed as exc:
        outcome = type(exc)
    del q  # (a failing assertion must not keep the queue in a frame: see tests/unit/ring)
    assert outcome is Closed


def test_close_in_another_thread_does_not_break_a_blocked_get():
    """close() while another thread waits in get: that thread ends (message, Empty or
    Closed), and the process does not crash (the mapping stays alive)."""
    q = Queue(capacity=SMALL)
    outcome: list[object] = []
    started = threading.Event()

    def consumer() -> None:
        started.set()
        try:
            outcome.append(q.get(timeout=0.5))
        except (queue.Empty, Closed) as exc:
            outcome.append(type(exc))

    t = threading.Thread(target=consumer)
    t.start()
    started.wait(10)
    q.close()
    t.join(20)
    assert not t.is_alive()
    assert outcome and outcome[0] in (queue.Empty, Closed)


def test_join_thread_and_cancel_join_thread_are_no_ops():
    with Queue(capacity=SMALL) as q:
        q.put(1)
        assert q.join_thread() is None
        assert q.cancel_join_thread() is None
        assert q.get() == 1


def test_repr_and_context_manager(shm_name):
    with Queue(capacity=SMALL, name=shm_name) as q:
        q.put(1)
        assert repr(q) == f"<shmipc.Queue {shm_name} qsize=1 capacity={SMALL}>"
    assert not segment_exists(shm_name)
    with pytest.raises(Closed):
        q.get()


# ---- codecs ------------------------------------------------------------------------------


def test_pickle_codec_carries_any_picklable(shm_name):
    with Queue(capacity=SMALL, name=shm_name, codec="pickle") as q:
        assert q.codec.name == "pickle"
        q.put(Point(1, 2))
        q.put({"p": [Point(3, 4)]})
        with pytest.raises(ValueError, match="codec='pickle'"):
            Queue.attach(shm_name)  # the segment says pickle: never chosen from shared memory
        other = Queue.attach(shm_name, codec="pickle")
        try:
            assert other.codec.name == "pickle"
            assert other.get() == Point(1, 2)
        finally:
            other.close()
        assert q.get() == {"p": [Point(3, 4)]}
        with pytest.raises(TypeError):
            q.put(lambda: None)
        q.put("usable")
        assert q.get() == "usable"


def test_msgpack_refuses_what_only_pickle_carries():
    with Queue(capacity=SMALL) as q, pytest.raises(TypeError):
        q.put(Point(1, 2))


def test_raw_codec(shm_name, no_spill_leak):
    with Queue(capacity=SMALL, name=shm_name, codec="raw") as q:
        q.put(b"bytes")
        q.put(bytearray(b"bytearray"))
        q.put(memoryview(b"view"))
        for bad in (1, "text", 1.5, None, [1], {"a": 1}):
            with pytest.raises(TypeError):
                q.put(bad)
        with pytest.raises(TypeError):
            q.put_many([b"ok", "bad"])
        assert q.qsize() == 3  # the refusals stored nothing
        got = [q.get() for _ in range(3)]
        assert got == [b"bytes", b"bytearray", b"view"]
        assert all(type(g) is bytes for g in got)
        big = os.urandom(3 * SMALL)
        q.put(big)
        assert q.get(timeout=5) == big
        other = Queue.attach(shm_name)
        try:
            assert other.codec.name == "raw"
        finally:
            other.close()


def test_custom_codec_needs_codec_on_attach(shm_name):
    with Queue(capacity=SMALL, name=shm_name, codec=JsonCodec()) as q:
        assert q.codec.name == "json-test"
        q.put({"a": [1, 2]})
        with pytest.raises(ValueError, match="codec"):
            Queue.attach(shm_name)
        other = Queue.attach(shm_name, codec=JsonCodec())
        try:
            assert other.get() == {"a": [1, 2]}
            other.put([3])
        finally:
            other.close()
        assert q.get() == [3]
        clone = pickle.loads(pickle.dumps(q))  # the codec travels with the pickle
        try:
            assert isinstance(clone.codec, JsonCodec)
        finally:
            clone.close()


@pytest.mark.parametrize(
    "made, asked", [("msgpack", "pickle"), ("msgpack", "raw"), ("pickle", "msgpack")]
)
def test_attach_with_a_mismatching_codec_is_refused(shm_name, made, asked):
    with Queue(capacity=SMALL, name=shm_name, codec=made):
        with pytest.raises(ValueError, match="codec"):
            Queue.attach(shm_name, codec=asked)
        with Queue.attach(shm_name, codec=made) as same:
            assert same.codec.name == made
    assert not segment_exists(shm_name)


def test_attach_refuses_a_segment_that_is_not_a_queue(shm_name):
    from shmipc import LayoutMismatch
    from shmipc.ring import Ring

    with Ring.create(256, name=shm_name), pytest.raises(LayoutMismatch):
        Queue.attach(shm_name)


@pytest.mark.parametrize(
    "made, asked",
    [("msgpack", get_codec("pickle")), ("pickle", get_codec("raw"))],
    ids=["msgpack-vs-pickle-instance", "pickle-vs-raw-instance"],
)
def test_attach_with_a_mismatching_codec_instance_is_refused(shm_name, made, asked):
    q = Queue(capacity=SMALL, name=shm_name, codec=made)
    try:
        q.put([1, 2])
        try:
            other = Queue.attach(shm_name, codec=asked)
        except ValueError:
            refused = True
        else:
            refused = False
            other.close()
    finally:
        q.close()
        del q
    assert refused


def test_attach_with_the_same_codec_instance_is_accepted(shm_name):
    with Queue(capacity=SMALL, name=shm_name, codec="pickle") as q:
        q.put(Point(5, 6))
        with Queue.attach(shm_name, codec=get_codec("pickle")) as other:
            assert other.get() == Point(5, 6)


def test_unknown_codec_name_is_refused():
    with pytest.raises(ValueError):
        Queue(capacity=SMALL, codec="yaml")


# ---- raw payloads, frames ----------------------------------------------------------------


def test_put_bytes_then_get_returns_bytes():
    with Queue(capacity=SMALL) as q:
        q.put_bytes(b"\x00\x01raw")
        q.put_bytes(bytearray(b"ba"))
        q.put_bytes(memoryview(b"mv"))
        q.put_bytes(b"")
        got = [q.get() for _ in range(4)]
        assert got == [b"\x00\x01raw", b"ba", b"mv", b""]
        assert all(type(g) is bytes for g in got)


BYTES_LIKE = {
    "bytearray": bytearray,
    "memoryview": memoryview,
    "array": lambda b: __import__("array").array("B", b),
}


def test_put_bytes_of_a_non_contiguous_view():
    """A strided memoryview is bytes-like: bytes(view) is what arrives (BufferError since
    put_bytes hands the object to ffi.from_buffer, which takes contiguous buffers only)."""
    view = memoryview(b"a-b-c-d-")[::2]
    q = Queue(capacity=SMALL)
    try:
        try:
            q.put_bytes(view)
            outcome: object = q.get(timeout=5)
        except Exception as exc:
            outcome = repr(exc)
    finally:
        q.close()
        q = None
    assert outcome == b"abcd"


def test_put_bytes_of_any_bytes_like_on_a_full_queue():
    """The slow paths (Full, timeout) take the same bytes-like objects as the fast path."""
    q = Queue(1, capacity=SMALL)
    outcomes = {}
    try:
        q.put(0)
        for kind, make in BYTES_LIKE.items():
            for how, kwargs in (("nowait", {"block": False}), ("timeout", {"timeout": TIMEOUT})):
                try:
                    q.put_bytes(make(b"abc"), **kwargs)
                    outcomes[kind, how] = "stored"
                except queue.Full:
                    outcomes[kind, how] = "Full"
                except Exception as exc:
                    outcomes[kind, how] = repr(exc)
    finally:
        q.close()
        q = None  # (a failing assertion must not keep the queue in a frame)
    assert outcomes == {key: "Full" for key in outcomes}


def test_put_bytes_of_any_bytes_like_waits_for_room():
    """A blocked put_bytes outlives the 100 ms wait slices and stores once room appears."""
    q = Queue(1, capacity=SMALL)
    outcomes = {}
    try:
        q.put(0)
        for kind, make in BYTES_LIKE.items():
            result: list[object] = []
            started = threading.Event()

            def producer(data, result, started) -> None:
                started.set()
                try:
                    q.put_bytes(data, timeout=20)
                    result.append("stored")
                except Exception as exc:
                    result.append(repr(exc))

            t = threading.Thread(target=producer, args=(make(b"late"), result, started))
            t.start()
            started.wait(10)
            t.join(0.3)  # at least two slices of waiting before room appears
            q.get(timeout=5)
            t.join(20)
            outcomes[kind] = result[0] if result else "still blocked"
            if result == ["stored"]:
                assert q.qsize() == 1
            else:
                q.put(0)  # the queue full again for the next kind
    finally:
        q.close()
        q = None
    assert outcomes == {kind: "stored" for kind in BYTES_LIKE}


def test_put_bytes_of_any_bytes_like_spills(no_spill_leak):
    q = Queue(capacity=SMALL)
    blob = os.urandom(3 * SMALL)
    outcomes = {}
    try:
        for kind, make in BYTES_LIKE.items():
            try:
                q.put_bytes(make(blob))
                outcomes[kind] = q.get(timeout=5) == blob
            except Exception as exc:
                outcomes[kind] = repr(exc)
    finally:
        q.close()
        q = None
    assert outcomes == {kind: True for kind in BYTES_LIKE}


def test_get_bytes_returns_the_codec_frame():
    obj = {"id": 1, "vals": [1.0, 2.0], "t": (1, 2)}
    with Queue(capacity=SMALL) as q:
        q.put(obj)
        q.put({"plain": 1})
        q.put_bytes(b"as is")
        frame = q.get_bytes()
        assert type(frame) is bytes and frame == encode(obj)
        assert q.get_bytes() == msgpack.packb({"plain": 1})
        assert q.get_bytes() == b"as is"


def test_put_many_get_many():
    with Queue(capacity=SMALL) as q:
        items = [{"i": i, "s": "x" * (i % 30)} for i in range(100)]
        q.put_many(items)
        q.put_many(iter([("gen", 1), ("gen", 2)]))  # any iterable
        q.put_many([])
        got = []
        while len(got) < 102:
            got.extend(q.get_many(17, timeout=5))
        assert got == [*items, ("gen", 1), ("gen", 2)]
        with pytest.raises(queue.Empty):
            q.get_many(5, block=False)
        q.put_bytes(b"raw")
        q.put(1)
        assert q.get_many(10) == [b"raw", 1]


def test_put_many_larger_than_the_ring_with_a_consumer_process():
    with Queue(capacity=1024) as q:
        items = list(range(5000))

        def child(fd: int) -> None:
            got = []
            while len(got) < len(items):
                got.extend(q.get_many(50, timeout=20))
            os.write(fd, b"ok" if got == items else b"bad")

        c = Child(child)  # forked first: put_many then blocks for room as it drains
        try:
            q.put_many(items, timeout=20)
            result = c.finish()
        finally:
            c.kill()
        assert result == (0, b"ok")


def test_get_many_more_than_a_thousand():
    with Queue(capacity=1 << 16) as q:
        q.put_many(range(1500))
        assert q.get_many(5000) == list(range(1500))


def test_put_many_without_blocking_stops_when_full():
    with Queue(3, capacity=SMALL) as q:
        with pytest.raises(queue.Full):
            q.put_many([1, 2, 3, 4, 5], block=False)
        assert q.qsize() == 3
        assert q.get_many(10) == [1, 2, 3]


def test_unsupported_type_leaves_the_queue_usable():
    with Queue(capacity=SMALL) as q:
        q.put("before")
        for bad in (object(), {1: object()}, [threading.Lock()]):
            with pytest.raises(TypeError):
                q.put(bad)
            with pytest.raises(TypeError):
                q.put_many(["fine", bad])
        assert q.qsize() == 1  # nothing of a refused batch was stored
        q.put("after")
        assert q.get() == "before" and q.get() == "after"
        assert q.empty()


# ---- large messages ----------------------------------------------------------------------


def test_large_messages_spill_and_arrive_intact(no_spill_leak):
    with Queue(capacity=SMALL) as q:
        assert q.spill
        blob = os.urandom(3000)  # more than half the ring
        huge = os.urandom(5 << 20)  # much more than the whole ring
        obj = {"numbers": list(range(3000)), "text": "y" * 5000}
        q.put_bytes(blob)
        q.put(obj)
        q.put(huge)  # bytes through the codec
        q.put_bytes(b"small")
        assert len(no_spill_leak.existing()) == 3
        q.put_bytes(bytes(q.capacity // 2 - 8))  # exactly max payload: stays in the ring
        assert len(no_spill_leak.names) == 3
        q.put_bytes(bytes(q.capacity // 2 - 7))  # one more byte: spilled
        assert len(no_spill_leak.names) == 4
        assert q.get() == blob
        assert q.get() == obj
        assert q.get() == huge
        assert q.get() == b"small"
        assert q.get() == bytes(q.capacity // 2 - 8)
        assert q.get() == bytes(q.capacity // 2 - 7)
        q.put(obj)
        q.put_bytes(blob)
        assert q.get_bytes() == encode(obj)
        assert q.get_bytes() == blob


def test_large_messages_in_batches_keep_order(no_spill_leak):
    with Queue(capacity=SMALL) as q:
        big = "z" * 4000
        q.put_many([1, big, 2, big, 3])
        got = []
        while len(got) < 5:
            got.extend(q.get_many(10, timeout=5))
        assert got == [1, big, 2, big, 3]


def test_large_message_from_another_process(no_spill_leak):
    with Queue(capacity=SMALL) as q:
        blob = os.urandom(100_000)

        def child(fd: int) -> None:
            q.put_bytes(blob)
            q.put({"big": "q" * 10_000})

        code, _ = fork_call(child)
        assert code == 0
        assert q.get(timeout=10) == blob
        assert q.get(timeout=10) == {"big": "q" * 10_000}


def test_messages_above_the_scratch_but_not_spilled():
    with Queue(capacity=4 << 20) as q:  # max payload 2 MiB - 8: these stay in the ring
        mid = os.urandom(100_000)  # > 64 KiB scratch: read through peek
        big = os.urandom(1_500_000)  # > 1 MiB: read through peek
        q.put_bytes(mid)
        q.put(big)
        q.put_many([mid, "after"])
        assert q.get() == mid
        assert q.get() == big
        got = []
        while len(got) < 2:
            got.extend(q.get_many(5, timeout=5))
        assert got == [mid, "after"]
        assert q.statistics().depth == 0


def test_spill_false_refuses_at_once():
    with Queue(capacity=SMALL, spill=False) as q:
        assert not q.spill
        for call in (
            lambda: q.put_bytes(bytes(3000)),
            lambda: q.put(bytes(3000)),
            lambda: q.put("s" * 3000, timeout=None),
            lambda: q.put_many([1, "s" * 3000]),
        ):
            start = time.monotonic()
            with pytest.raises(MessageTooLarge):
                call()
            assert time.monotonic() - start < 1.0
        q.get()  # the 1 from put_many's first part
        # a full ring does not make the refusal wait either
        while True:
            try:
                q.put_bytes(bytes(1000), block=False)
            except queue.Full:
                break
        start = time.monotonic()
        with pytest.raises(MessageTooLarge):
            q.put_bytes(bytes(3000))  # timeout=None: would block forever if it waited
        assert time.monotonic() - start < 1.0


def test_spill_false_on_attach(shm_name):
    with Queue(capacity=SMALL, name=shm_name) as q:
        other = Queue.attach(shm_name, spill=False)
        try:
            with pytest.raises(MessageTooLarge):
                other.put_bytes(bytes(3000))
            clone = pickle.loads(pickle.dumps(other))  # spill=False travels with the pickle
            try:
                assert not clone.spill
            finally:
                clone.close()
        finally:
            other.close()
        assert q.empty()


def test_message_larger_than_the_ring_never_waits_out_its_timeout(no_spill_leak):
    with Queue(capacity=SMALL) as q:
        start = time.monotonic()
        q.put_bytes(bytes(10 * SMALL), timeout=5)
        assert time.monotonic() - start < 2.0
        assert len(q.get(timeout=5)) == 10 * SMALL
    with Queue(capacity=SMALL, spill=False) as q:
        start = time.monotonic()
        with pytest.raises(MessageTooLarge):
            q.put_bytes(bytes(10 * SMALL), timeout=5)
        assert time.monotonic() - start < 1.0


def test_spilled_message_on_a_full_queue_times_out_and_leaves_nothing(no_spill_leak):
    with Queue(1, capacity=SMALL) as q:
        q.put(0)
        _assert_times_out(queue.Full, q.put_bytes, bytes(3000), timeout=TIMEOUT)
        with pytest.raises(queue.Full):
            q.put_bytes(bytes(3000), block=False)
        assert q.get() == 0 and q.empty()


def test_a_failed_spill_leaves_no_segment(monkeypatch):
    """A spill creates its segment first: any failure after that (not only OSError) must
    unlink it (shmipc/_spill.py removes it only on OSError today)."""
    from shmipc import _spill

    recorder = SpillRecorder(monkeypatch)
    outcomes = []
    with Queue(capacity=SMALL) as q:
        with pytest.raises(TypeError):
            q._spills.write(object())  # type: ignore[arg-type]
        outcomes.append(recorder.remove_left())

        def interrupted(*args):
            raise KeyboardInterrupt

        monkeypatch.setattr(_spill.os, "pwrite", interrupted)
        with pytest.raises(KeyboardInterrupt):
            q._spills.write(bytes(100))
        monkeypatch.undo()
        outcomes.append(recorder.remove_left())
    assert outcomes == [[], []]


def test_peek_of_a_spilled_message_loses_nothing(monkeypatch):
    """peek() cannot show a spilled message; the message must stay in the queue (get_bytes
    still returns it) and its spill segment must not be leaked."""
    recorder = SpillRecorder(monkeypatch)
    q = Queue(capacity=SMALL)
    try:
        blob = os.urandom(3000)
        q.put_bytes(blob)
        raised = None
        try:
            q.peek(block=False)
        except ValueError as exc:  # a usage error: the message is fine, peek cannot show it
            raised = type(exc)
        try:
            after_peek = q.get_bytes(block=False)
        except queue.Empty:
            after_peek = None
    finally:
        q.close()
        del q
        leaked = recorder.remove_left()
    assert raised is not None  # peek refuses (no view of a spilled message in the ring)
    assert after_peek == blob
    assert not leaked


def test_reserve_commit_and_peek_release():
    with Queue(capacity=SMALL) as q:
        q.reserve(5)[:] = b"hello"
        q.commit()
        view = q.reserve(3)
        q.abort()
        with pytest.raises(ValueError):
            view[0]
        assert q.get() == b"hello"
        q.put({"k": 1})
        view = q.peek()
        assert bytes(view) == encode({"k": 1})
        q.release()
        assert q.empty()


# ---- processes ---------------------------------------------------------------------------


def test_forked_child_shares_the_queue():
    with Queue(capacity=SMALL) as q:
        q.put("to child")

        def child(fd: int) -> None:
            os.write(fd, q.get(timeout=10).encode())
            q.put(("from", "child"))

        code, got = fork_call(child)
        assert code == 0 and got == b"to child"
        assert q.get(timeout=5) == ("from", "child")


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_queue_passes_to_children_by_name(method):
    ctx = multiprocessing.get_context(method)
    with Queue(capacity=SMALL) as jobs, Queue(capacity=SMALL) as results:
        n = 20
        for i in range(n):
            jobs.put(i)
        procs = [ctx.Process(target=square_worker, args=(jobs, results, n // 2)) for _ in "ab"]
        for p in procs:
            p.start()
        got = [results.get(timeout=30) for _ in range(n)]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert sorted(sq for _, sq in got) == sorted(i * i for i in range(n))
        assert {pid for pid, _ in got} <= {p.pid for p in procs}
        assert segment_exists(jobs.name) and segment_exists(results.name)


def test_unrelated_process_attaches_by_name(shm_name):
    with Queue(capacity=SMALL, name=shm_name) as q:
        q.put({"job": 6})
        result = _run_python(
            """
            import sys
            from shmipc.queue import Queue
            q = Queue.attach(sys.argv[1])
            job = q.get(timeout=20)
            q.put({"answer": job["job"] * 7})
            q.close()
            """,
            shm_name,
        )
        assert result.returncode == 0, result.stderr
        assert q.get(timeout=5) == {"answer": 42}
        assert segment_exists(shm_name)  # the attacher's exit did not unlink
    assert not segment_exists(shm_name)


def test_put_has_stored_the_message_when_it_returns():
    with Queue(capacity=SMALL) as q:
        pid = os.fork()
        if pid == 0:  # child: put, then leave at once, no cleanup of any kind
            try:
                q.put("last words")
                q.put_bytes(b"and bytes")
                q.put_many([1, 2])
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert q.get(timeout=5) == "last words"
        assert q.get(timeout=5) == b"and bytes"
        assert q.get_many(5, timeout=5) == [1, 2]


# ---- ownership ---------------------------------------------------------------------------


def test_forked_child_that_closes_never_unlinks(shm_name):
    with Queue(capacity=SMALL, name=shm_name) as q:

        def child(fd: int) -> None:
            q.put("child was here")
            q.close()
            _unlink_owned_at_exit()  # what the interpreter's exit would run

        code, _ = fork_call(child)
        assert code == 0
        assert segment_exists(shm_name)
        assert q.get(timeout=5) == "child was here"
    assert not segment_exists(shm_name)


def test_forked_child_that_drops_its_handle_never_unlinks(shm_name):
    q = Queue(capacity=SMALL, name=shm_name)
    try:

        def child(fd: int) -> None:
            nonlocal q
            q = None  # the child's last reference: collected here
            import gc

            gc.collect()

        code, _ = fork_call(child)
        assert code == 0
        assert segment_exists(shm_name)
    finally:
        q.close()


def test_attacher_close_never_unlinks(shm_name):
    with Queue(capacity=SMALL, name=shm_name) as q:
        other = Queue.attach(shm_name)
        other.put(1)
        other.close()
        assert segment_exists(shm_name)
        assert q.get() == 1
        clone = pickle.loads(pickle.dumps(q))
        clone.close()
        assert segment_exists(shm_name)


def test_spawned_attacher_exit_never_unlinks(shm_name):
    ctx = multiprocessing.get_context("spawn")
    with Queue(capacity=SMALL, name=shm_name) as q:
        p = ctx.Process(target=close_and_exit, args=(q,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert segment_exists(shm_name)
        assert q.get(timeout=5) == "bye"


def test_creator_close_unlinks(shm_name):
    q = Queue(capacity=SMALL, name=shm_name)
    assert segment_exists(shm_name)
    other = Queue.attach(shm_name)
    q.close()
    assert not segment_exists(shm_name)
    # processes already attached keep working
    other.put("still")
    assert other.get() == "still"
    other.close()
    with pytest.raises(FileNotFoundError):
        Queue.attach(shm_name)


def test_creator_handle_collected_unlinks(shm_name):
    q = Queue(capacity=SMALL, name=shm_name)
    q.put(1)
    del q
    assert not segment_exists(shm_name)


def test_unlink_removes_the_name_now(shm_name):
    with Queue(capacity=SMALL, name=shm_name) as q:
        q.unlink()
        assert not segment_exists(shm_name)
        q.put(1)
        assert q.get() == 1
        with pytest.raises(FileNotFoundError):
            Queue.attach(shm_name)


def test_named_queue_refuses_an_existing_name(shm_name):
    with Queue(capacity=SMALL, name=shm_name), pytest.raises(FileExistsError):
        Queue(capacity=SMALL, name=shm_name)


# ---- no feeder thread --------------------------------------------------------------------


def test_no_hidden_feeder_thread():
    before = threading.active_count()
    names = {t.name for t in threading.enumerate()}
    with Queue(capacity=SMALL) as q:
        for i in range(100):
            q.put(i)
        q.put_many(list(range(10)))
        q.put_bytes(b"x" * 3000)  # spilled
        assert threading.active_count() == before
        while not q.empty():
            q.get()
    assert threading.active_count() == before
    assert {t.name for t in threading.enumerate()} == names


def test_statistics_pass_through():
    with Queue(capacity=SMALL) as q:
        q.put("a")
        q.put_bytes(b"bc")
        q.get()
        st = q.statistics()
        assert st.capacity == SMALL
        assert st.messages_in == 2 and st.messages_out == 1 and st.depth == 1


def test_bytes_travel_as_they_are_with_builtin_codecs():
    """put(bytes) skips framing (a bytes object decodes to itself with every built-in
    codec): get() returns it, get_bytes() returns the bytes themselves, not a frame."""
    for codec in ("msgpack", "pickle", "raw"):
        with Queue(capacity=SMALL, codec=codec) as q:
            q.put(b"plain")
            q.put_many([b"a", b"bb", b""])
            assert q.get_bytes() == b"plain"
            assert q.get_many(10) == [b"a", b"bb", b""]


def test_get_many_keeps_types_in_mixed_batches():
    with Queue(capacity=SMALL) as q:
        q.put_many([{"a": 1}, b"x", (1, 2), "s"])
        q.put_bytes(b"raw")
        assert q.get_many(10) == [{"a": 1}, b"x", (1, 2), "s", b"raw"]
