"""Mapping lifetime (issue 7, item 1): nothing that keeps an address into a queue's mapping
(its Port, a bound put/get, a call another thread is inside) ever touches it unmapped, and
close() racing a call in another thread ends that call with Closed, never a crash. Each case
runs in a forked child that must exit 0 (a crash there is a death by signal, not a failure of
the test process). See docs/internals/lifetime.md."""

from __future__ import annotations

import gc
import inspect
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest
from _procs import fork_call, wait_for

from shmipc import Closed, CorruptedError, Ring
from shmipc.queue import Queue

pytestmark = pytest.mark.timeout(120)


def run_in_child(body: Callable[[], object], timeout: float = 90.0) -> bytes:
    """Run ``body`` in a forked child; fail unless it returned (exit 0, no signal)."""

    def child(fd: int) -> None:
        os.write(fd, repr(body()).encode())

    code, report = fork_call(child, timeout)
    assert code >= 0, f"the child died by signal {-code}"
    assert code == 0, f"the child failed (exit {code})"
    return report


# ---- handles that outlive their queue --------------------------------------------------------


def test_a_bound_method_outliving_its_queue_keeps_the_mapping():
    def body() -> list[Any]:
        put = Queue().put_bytes
        get = Queue().get_bytes
        gc.collect()
        put(b"x")  # the port still works: its ring is mapped while it exists
        out: list[Any] = []
        try:
            get(timeout=0.01)
        except (Closed, queue.Empty) as exc:
            out.append(type(exc).__name__)
        return out

    assert run_in_child(body) in (b"['Closed']", b"['Empty']")


def test_dropping_the_last_reference_while_another_thread_waits_in_get():
    def body() -> str:
        q = Queue()
        get, ring = q.get, q._ring
        result: list[str] = []

        def consumer() -> None:
            try:
                result.append(repr(get()))
            except Closed:
                result.append("Closed")

        t = threading.Thread(target=consumer)
        t.start()
        waiting = lambda r=ring: r.statistics().consumer_waits >= 1  # noqa: E731
        wait_for(waiting, what="the consumer to wait")
        del waiting
        del q, ring
        gc.collect()
        t.join(30)
        assert not t.is_alive(), "get() never returned after its queue was dropped"
        return result[0]

    assert run_in_child(body) == b"'Closed'"


# ---- close() racing calls in other threads ---------------------------------------------------

Op = Callable[[Any], None]


def q_put(q: Queue) -> None:
    q.put_bytes(b"m" * 64, timeout=0.05)


def q_put_obj(q: Queue) -> None:
    q.put({"k": 1}, timeout=0.05)


def q_get(q: Queue) -> None:
    q.get(timeout=0.05)


def q_get_many(q: Queue) -> None:
    q.get_many(8, timeout=0.05)


def q_put_many(q: Queue) -> None:
    q.put_many([b"a", b"b", b"c"], timeout=0.05)


def q_peek(q: Any) -> None:
    view = q.peek(timeout=0.05)
    try:
        bytes(view[:4])
    finally:
        q.release()


def q_reserve(q: Any) -> None:
    view = q.reserve(16, timeout=0.05)
    view[:] = b"r" * 16
    q.commit()


QUEUE_OPS: list[Op] = [q_put, q_put_obj, q_get, q_get_many, q_put_many, q_peek, q_reserve]
RING_OPS: list[Op] = [
    lambda r: r.put(b"m" * 64, timeout=0.05),
    lambda r: r.get(timeout=0.05),
    lambda r: r.get_many(8, timeout=0.05),
    lambda r: r.put_many([b"a", b"b"], timeout=0.05),
    q_peek,
    q_reserve,
]


def race_close(make: Callable[[], Any], ops: list[Op], rounds: int) -> dict[str, int]:
    """``rounds`` times: threads run ``ops`` in a loop on a new handle; close it under them.
    Every op must end with Closed once the handle is closed; anything but Closed, Empty and
    Full is a failure. Returns how often each outcome was seen."""
    seen: dict[str, int] = {}
    lock = threading.Lock()
    for round_no in range(rounds):
        handle = make()
        calls = [0]
        errors: list[BaseException] = []

        def worker(
            op: Op, handle: Any = handle, calls: list[int] = calls, errors: list[Any] = errors
        ) -> None:
            while True:
                try:
                    op(handle)
                    outcome = "ok"
                except Closed:
                    outcome = "Closed"
                except (queue.Empty, queue.Full):
                    outcome = "empty/full"
                except BaseException as exc:
                    errors.append(exc)
                    return
                with lock:
                    calls[0] += 1
                    seen[outcome] = seen.get(outcome, 0) + 1
                if outcome == "Closed":
                    return

        threads = [threading.Thread(target=worker, args=(op,)) for op in ops]
        for t in threads:
            t.start()
        # Close early or later in the threads' loops, round by round.
        target = len(ops) * (1 + round_no % 7)
        wait_for(lambda c=calls, n=target: c[0] >= n, what="the ops to run")
        handle.close()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "a call never saw close()"
        assert not errors, errors
    return seen


def test_close_racing_queue_calls_in_other_threads_gives_closed():
    def body() -> str:
        seen = race_close(lambda: Queue(capacity=4096), QUEUE_OPS, rounds=150)
        return "ok" if seen.get("Closed", 0) >= 150 * len(QUEUE_OPS) else repr(seen)

    assert run_in_child(body) == b"'ok'"


def test_close_racing_ring_calls_in_other_threads_gives_closed():
    def body() -> str:
        seen = race_close(lambda: Ring.anonymous(4096), RING_OPS, rounds=150)
        return "ok" if seen.get("Closed", 0) >= 150 * len(RING_OPS) else repr(seen)

    assert run_in_child(body) == b"'ok'"


def test_a_claim_held_when_another_thread_closes_is_given_back():
    """A reservation or peek held while another thread closes the handle: commit/release
    raise Closed and give the claim back (nothing published, the record stays next), so a
    second handle on the same queue is not left waiting on a live lock holder."""
    q = Queue(capacity=4096)
    other = Queue.attach(q.name)
    try:
        q.put_bytes(b"first")
        view = q.reserve(4)
        view[:] = b"half"
        closer = threading.Thread(target=q.close)
        closer.start()
        closer.join()
        with pytest.raises(Closed):
            q.commit()
        other.put_bytes(b"second", timeout=5)  # the producer side is free
        assert other.get_many(5, timeout=5) == [b"first", b"second"]
    finally:
        other.close()
        q.close()


def test_a_peek_held_when_another_thread_closes_is_given_back():
    q = Queue(capacity=4096)
    other = Queue.attach(q.name)
    try:
        q.put_bytes(b"first")
        view = q.peek()
        assert bytes(view) == b"first"
        closer = threading.Thread(target=q.close)
        closer.start()
        closer.join()
        with pytest.raises(Closed):
            q.release()
        assert other.get_bytes(timeout=5) == b"first"  # not consumed, and the side is free
        with pytest.raises(Closed):
            q.peek(block=False)
    finally:
        other.close()
        q.close()


def test_close_on_the_peeking_thread_leaves_the_record_next():
    q = Queue(capacity=4096)
    other = Queue.attach(q.name)
    try:
        q.put_bytes(b"first")
        q.peek()
        q.close()
        assert other.get_bytes(timeout=5) == b"first"
    finally:
        other.close()


# ---- the Port's methods look like multiprocessing.Queue's ------------------------------------


def test_port_methods_take_keywords_and_show_their_signatures():
    with Queue() as q:
        assert str(inspect.signature(q.put)) == "(obj, block=True, timeout=None)"
        assert str(inspect.signature(q.put_bytes)) == "(obj, block=True, timeout=None)"
        assert str(inspect.signature(q.get)) == "(block=True, timeout=None)"
        assert str(inspect.signature(q.get_bytes)) == "(block=True, timeout=None)"
        q.put(obj={"a": 1}, block=True, timeout=1)
        q.put_bytes(obj=b"raw", timeout=1)
        assert q.get(block=False) == {"a": 1}
        assert q.get_bytes(timeout=1) == b"raw"
        with pytest.raises(TypeError, match="multiple values for argument 'obj'"):
            q.put(1, obj=2)
        with pytest.raises(TypeError, match="missing 1 required positional argument: 'obj'"):
            q.put(block=False)
        with pytest.raises(TypeError, match="unexpected keyword argument 'data'"):
            q.put_bytes(data=b"x")
        assert q.empty()


# ---- a bad record never takes good ones with it (item 7) -------------------------------------


def test_get_many_delivers_every_valid_message_around_a_corrupt_one():
    with Queue() as q:
        for i in range(3):
            q.put(i)
        q.put_bytes(b"\xc1", timeout=1)  # never valid msgpack...
        q._ring.put(b"\xc1", type=1)  # ...so as a codec frame it cannot decode
        for i in range(3, 6):
            q.put(i)
        got = q.get_many(100, timeout=1)
        errors = 0
        while True:
            try:
                got += q.get_many(100, block=False)
            except CorruptedError:
                errors += 1
            except queue.Empty:
                break
        assert got == [0, 1, 2, b"\xc1", 3, 4, 5]
        assert errors == 1
        assert q.statistics().undecodable == 1
        q._ring.put(b"\xc1", type=1)
        with pytest.raises(CorruptedError):
            q.get(timeout=1)
        assert q.statistics().undecodable == 2
