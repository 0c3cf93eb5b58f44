"""Queue.reserve/commit/abort and peek/release as one native call each (issue 9, "zero-copy
calls at full speed"): the port keeps each thread's claim, waits like put/get, and keeps
the views' export counting and the lifetime rules (docs/internals/lifetime.md)."""

from __future__ import annotations

import gc
import inspect
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from _procs import fork_call

from shmipc import Closed, MessageTooLarge
from shmipc.queue import Queue

pytestmark = pytest.mark.timeout(60)

CAP = 4096
EXPORTS: dict[str, Callable[[memoryview], Any]] = {
    "slice": lambda v: v[1:],
    "PickleBuffer": pickle.PickleBuffer,
    "np.frombuffer": lambda v: np.frombuffer(v, dtype=np.uint8),
    "memoryview": memoryview,
    "memoryview of the exporter": lambda v: memoryview(v.obj),
    "cast": lambda v: v.cast("B"),
}


@pytest.fixture
def q():
    qu = Queue(capacity=CAP)
    yield qu
    qu.close()


def in_thread(fn: Callable[[], Any], timeout: float = 30) -> Any:
    """``fn()`` on another thread (its own claims): its result or its exception."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout)
    assert not t.is_alive()
    return out[0]


def fill(q: Queue) -> int:
    """Put 64-byte messages until the ring is full; how many went in."""
    n = 0
    while True:
        try:
            q.put_bytes(b"f" * 64, block=False)
        except queue.Full:
            return n
        n += 1


# ---- the calls are the port's, and look like Queue's ------------------------------------


def test_zero_copy_calls_are_the_ports_own_with_queue_signatures(q):
    port = q._port
    for name in ("reserve", "commit", "abort", "peek", "peek_next", "release"):
        assert getattr(q, name) == getattr(port, name), name
    assert str(inspect.signature(q.reserve)) == "(nbytes, block=True, timeout=None)"
    assert str(inspect.signature(q.peek)) == "(block=True, timeout=None)"
    assert str(inspect.signature(q.peek_next)) == "(block=True, timeout=None)"
    assert str(inspect.signature(q.commit)) == "()"
    view = q.reserve(nbytes=3, block=True, timeout=1)
    view[:] = b"abc"
    q.commit()
    assert bytes(q.peek(block=False)) == b"abc"
    q.release()
    with pytest.raises(TypeError, match="nbytes"):
        q.reserve()
    with pytest.raises(TypeError, match="unexpected keyword"):
        q.reserve(3, size=4)
    with pytest.raises(TypeError, match="multiple values"):
        q.reserve(3, nbytes=4)
    with pytest.raises(TypeError):
        q.reserve(1.5)
    with pytest.raises(ValueError, match=">= 0"):
        q.reserve(-1)
    with pytest.raises(ValueError, match="NaN"):
        q.reserve(1, timeout=float("nan"))
    with pytest.raises(MessageTooLarge):
        q.reserve(CAP)
    assert q.qsize() == 0 and not q._port.holds_claim()


def test_a_subclass_override_is_kept():
    class Logged(Queue):
        calls: list[str] = []

        def reserve(self, nbytes: int, block: bool = True, timeout: float | None = None) -> Any:
            self.calls.append("reserve")
            return super().reserve(nbytes, block, timeout)

    with Logged(capacity=CAP) as q:
        q.reserve(2)[:] = b"hi"
        q.commit()  # still the port's
        assert Logged.calls == ["reserve"] and q.get() == b"hi"


def test_reserved_bytes_travel_as_bytes_and_records_come_in_order(q):
    q.put({"obj": 1})
    for i in range(3):
        view = q.reserve(i + 1)
        view[:] = bytes([65 + i]) * (i + 1)
        q.commit()
    q.reserve(0)
    q.commit()
    view = q.peek()
    assert bytes(view) == q.codec.encode({"obj": 1})  # peek shows a frame as is
    q.release()
    assert [q.get() for _ in range(4)] == [b"A", b"BB", b"CCC", b""]


def test_abort_publishes_nothing_and_frees_the_side(q):
    q.reserve(10)[:] = b"0123456789"
    q.abort()
    assert q.qsize() == 0
    assert in_thread(lambda: q.put_bytes(b"x", timeout=5)) is None
    assert q.get_bytes(timeout=5) == b"x"


# ---- peek_next: release, then peek, in one call ------------------------------------------------


def test_peek_next_reads_every_message_in_order_and_consumes_the_one_before(q):
    for i in range(5):
        q.put_bytes(bytes([65 + i]) * (i + 1))
    seen, views = [], []
    for _ in range(5):
        view = q.peek_next(timeout=5)
        seen.append(bytes(view))
        views.append(view)
        assert q._port.holds_claim()
    assert seen == [b"A", b"BB", b"CCC", b"DDDD", b"EEEEE"]
    for old in views[:-1]:  # each ended when the next call consumed its record
        with pytest.raises(ValueError, match="released"):
            bytes(old)
    assert q.qsize() == 1  # the last one is still peeked: release() (or close) ends it
    q.release()
    assert q.qsize() == 0 and not q._port.holds_claim()
    with pytest.raises(ValueError, match="released"):
        views[-1][0]


def test_peek_next_without_a_peek_is_peek_and_mixes_with_peek_and_release(q):
    for i in range(4):
        q.put_bytes(bytes([i]))
    assert bytes(q.peek()) == b"\0"
    assert bytes(q.peek_next()) == b"\1"  # released the one peek() showed
    q.release()
    assert bytes(q.peek_next()) == b"\2"
    q.release()
    with pytest.raises(RuntimeError, match="not peeked"):
        q.release()
    assert q.get_bytes(timeout=5) == b"\3"


@pytest.mark.parametrize("export", list(EXPORTS))
def test_peek_next_with_an_export_alive_raises_and_changes_nothing(q, export):
    q.put_bytes(b"first")
    q.put_bytes(b"second")
    view = q.peek_next()
    made = EXPORTS[export](view)
    with pytest.raises(BufferError):
        q.peek_next()
    assert bytes(view) == b"first" and q.qsize() == 2 and q._port.holds_claim()
    del made
    gc.collect()
    assert bytes(q.peek_next()) == b"second"
    q.release()
    assert q.qsize() == 0


def test_peek_next_checks_its_arguments_before_releasing(q):
    q.put_bytes(b"kept")
    view = q.peek_next()
    with pytest.raises(ValueError, match="NaN"):
        q.peek_next(timeout=float("nan"))
    with pytest.raises(TypeError, match="unexpected keyword"):
        q.peek_next(wait=1)
    assert bytes(view) == b"kept" and q.qsize() == 1
    q.release()


def test_peek_next_on_an_empty_queue_consumes_the_last_and_times_out(q):
    q.put_bytes(b"only")
    assert bytes(q.peek_next()) == b"only"
    _times_out(queue.Empty, lambda: q.peek_next(timeout=0.2), 0.2)
    assert q.qsize() == 0 and not q._port.holds_claim()  # "only" was consumed first
    _times_out(queue.Empty, lambda: q.peek_next(block=False), 0)
    q.put_bytes(b"later")
    assert bytes(q.peek_next(block=False)) == b"later"
    q.release()


def test_peek_next_waits_for_data_and_wakes(q):
    q.put_bytes(b"1")
    assert bytes(q.peek_next()) == b"1"
    t = threading.Thread(target=lambda: (time.sleep(0.05), q.put_bytes(b"2", timeout=5)))
    t.start()
    try:
        assert bytes(q.peek_next(timeout=10)) == b"2"
        q.release()
    finally:
        t.join(10)


def test_peek_next_releases_only_its_own_threads_peek(q):
    q.put_bytes(b"mine")
    q.put_bytes(b"theirs")
    view = q.peek_next()
    # The other thread holds no peek; it waits for the consumer side this thread holds.
    assert isinstance(in_thread(lambda: q.peek_next(timeout=0.2)), queue.Empty)
    assert bytes(view) == b"mine" and q.qsize() == 2
    q.release()
    assert in_thread(lambda: bytes(q.peek_next(timeout=5))) == b"theirs"


def test_peek_next_after_another_thread_closed_keeps_the_message():
    q = Queue(capacity=CAP)
    other = Queue.attach(q.name)
    try:
        q.put_bytes(b"a")
        q.put_bytes(b"b")
        view = q.peek_next()
        assert bytes(view) == b"a"
        in_thread(q.close)
        with pytest.raises(Closed, match="not consumed"):
            q.peek_next()
        with pytest.raises(Closed):
            q.peek_next()
        assert other.get_many(5, timeout=5) == [b"a", b"b"]  # nothing was consumed
    finally:
        other.close()


# ---- misuse ---------------------------------------------------------------------------------


def test_misuse_raises_runtime_error_and_changes_nothing(q):
    with pytest.raises(RuntimeError, match="no reservation"):
        q.commit()
    with pytest.raises(RuntimeError, match="no reservation"):
        q.abort()
    with pytest.raises(RuntimeError, match="not peeked"):
        q.release()
    q.reserve(1)[:] = b"a"
    with pytest.raises(RuntimeError, match="already has a reservation"):
        q.reserve(1)
    with pytest.raises(RuntimeError, match="holds a reservation"):
        q.put_bytes(b"x", block=False)
    q.commit()
    q.peek()
    with pytest.raises(RuntimeError, match="already peeked"):
        q.peek()
    with pytest.raises(RuntimeError, match="peeked record"):
        q.get(block=False)
    q.release()
    assert q.qsize() == 0


def test_claims_belong_to_their_thread(q):
    view = q.reserve(2)
    view[:] = b"me"
    # Another thread has no reservation of its own, and waits for the producer side.
    assert isinstance(in_thread(q.commit), RuntimeError)
    assert isinstance(in_thread(lambda: q.reserve(1, timeout=0.2)), queue.Full)
    assert q._port.holds_claim() and not in_thread(q._port.holds_claim)
    q.commit()
    got = in_thread(lambda: bytes(q.peek(timeout=5)))  # its thread ends holding the peek
    assert got == b"me"
    assert q.get_bytes(timeout=10) == b"me"  # the dead peeker's consumer side is taken over


def test_a_thread_that_ends_holding_a_reservation_is_taken_over(q):
    def reserve_and_exit() -> None:
        q.reserve(8)[:] = b"12345678"

    assert in_thread(reserve_and_exit) is None
    view = q.reserve(3, timeout=10)  # the dead holder's producer side is taken over
    view[:] = b"new"
    q.commit()
    assert q.get_many(5, timeout=5) == [b"new"]
    assert q.statistics().abandoned == 1


# ---- views are counted ----------------------------------------------------------------------


@pytest.mark.parametrize("export", list(EXPORTS))
def test_an_exported_view_blocks_commit_abort_release_and_close(q, export):
    view = q.reserve(4)
    view[:] = b"data"
    held = EXPORTS[export](view)
    for call in (q.commit, q.abort, q.close):
        with pytest.raises(BufferError):
            call()
    assert q.qsize() == 0 and q._port.holds_claim()
    del held
    q.commit()
    view = q.peek()
    held = EXPORTS[export](view)
    for call in (q.release, q.close):
        with pytest.raises(BufferError):
            call()
    assert q.qsize() == 1
    assert isinstance(in_thread(lambda: q.get_bytes(block=False)), queue.Empty)
    del held
    q.release()
    assert q.qsize() == 0


def test_a_finished_views_memoryview_and_exporter_refuse_use(q):
    view = q.reserve(4)
    exporter = view.obj
    view[:] = b"abcd"
    q.commit()
    with pytest.raises(ValueError, match="released"):
        view[0]
    with pytest.raises(BufferError, match="no longer valid"):
        memoryview(exporter)
    again = q.reserve(4)  # a View still referred to is never recycled
    assert again.obj is not exporter
    q.abort()
    view = q.peek()
    assert view.readonly and bytes(view) == b"abcd"
    with pytest.raises(TypeError):
        view[0] = 1
    q.release()
    with pytest.raises(ValueError, match="released"):
        bytes(view)


def test_recycled_views_never_show_an_earlier_record(q):
    arrays = []
    for i in range(50):
        view = q.reserve(8)
        view[:] = i.to_bytes(8, "little")
        q.commit()
        view = q.peek()
        arrays.append(bytes(view))  # a copy: the view itself dies at release
        q.release()
        if i % 10 == 0:
            q.put_bytes(b"z" * 100)  # move the records around
            assert q.get_bytes() == b"z" * 100
    assert arrays == [i.to_bytes(8, "little") for i in range(50)]


# ---- waits and timeouts ---------------------------------------------------------------------


def _times_out(exc: type[BaseException], fn: Callable[[], Any], timeout: float) -> None:
    start = time.monotonic()
    with pytest.raises(exc):
        fn()
    elapsed = time.monotonic() - start
    assert timeout * 0.9 <= elapsed < 2.0, elapsed


def test_reserve_on_a_full_ring_and_peek_on_an_empty_one_time_out(q):
    _times_out(queue.Empty, lambda: q.peek(timeout=0.2), 0.2)
    _times_out(queue.Empty, lambda: q.peek(block=False), 0)
    fill(q)
    _times_out(queue.Full, lambda: q.reserve(64, timeout=0.2), 0.2)
    _times_out(queue.Full, lambda: q.reserve(64, block=False), 0)
    _times_out(queue.Full, lambda: q.reserve(64, timeout=-1), 0)
    assert not q._port.holds_claim()


def test_a_bounded_queue_reserve_waits_for_a_slot():
    with Queue(2, capacity=CAP) as q:
        q.put_bytes(b"1")
        q.put_bytes(b"2")
        _times_out(queue.Full, lambda: q.reserve(1, timeout=0.2), 0.2)
        got = threading.Event()

        def consumer() -> None:
            assert got.wait(10)
            q.get_bytes()

        t = threading.Thread(target=consumer)
        t.start()
        got.set()
        q.reserve(1, timeout=10)[:] = b"3"  # woken by the get
        q.commit()
        t.join(10)
        assert q.get_many(5) == [b"2", b"3"]


def test_a_blocked_reserve_and_peek_wake_for_room_and_data(q):
    n = fill(q)
    results: list[Any] = []

    def producer() -> None:
        view = q.reserve(64, timeout=10)
        view[:] = b"r" * 64
        q.commit()
        results.append("reserved")

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(0.05)  # let it wait (it also works if it has not started waiting yet)
    for _ in range(n):
        q.get_bytes(timeout=5)
    t.join(10)
    assert results == ["reserved"]
    assert bytes(q.peek(timeout=5)) == b"r" * 64
    q.release()

    def consumer() -> None:
        results.append(bytes(q.peek(timeout=10)))
        q.release()

    t = threading.Thread(target=consumer)
    t.start()
    q.put_bytes(b"late")
    t.join(10)
    assert results[-1] == b"late"


# ---- close ------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["reserve", "peek", "peek_next"])
def test_close_from_another_thread_ends_a_blocked_call_with_closed(side):
    q = Queue(capacity=CAP)
    other = Queue.attach(q.name)
    try:
        if side == "reserve":
            fill(q)
        call = {"reserve": lambda: q.reserve(64), "peek": q.peek, "peek_next": q.peek_next}[side]
        out: list[Any] = []

        def waiter() -> None:
            try:
                out.append(call())
            except BaseException as exc:
                out.append(exc)

        t = threading.Thread(target=waiter)
        t.start()
        deadline = time.monotonic() + 10
        waits = "producer_waits" if side == "reserve" else "consumer_waits"
        while getattr(q.statistics(), waits) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the call waits in the ring
        q.close()
        t.join(10)
        assert not t.is_alive() and isinstance(out[0], Closed), out
        # Nothing is left claimed: the other handle uses both sides.
        if side == "reserve":
            other.get_many(100, block=False)
        other.put_bytes(b"x", timeout=5)
        assert other.get_many(200, timeout=5) == [b"x"]
    finally:
        other.close()
        q.close()


def test_commit_after_another_thread_closed_aborts_and_raises_closed():
    q = Queue(capacity=CAP)
    other = Queue.attach(q.name)
    try:
        view = q.reserve(4)
        view[:] = b"lost"
        in_thread(q.close)
        with pytest.raises(Closed, match="nothing was published"):
            q.commit()
        with pytest.raises(Closed):
            q.reserve(1)
        assert not q._port.holds_claim()
        other.put_bytes(b"next", timeout=5)
        assert other.get_many(5, timeout=5) == [b"next"]
    finally:
        other.close()


def test_a_view_outliving_its_queue_keeps_the_mapping():
    """The views pin the mapping: writing into one after its queue was dropped (port and
    ring collected) touches mapped memory, never a crash."""

    def child(fd: int) -> None:
        q = Queue(capacity=CAP)
        q.unlink()
        view = q.reserve(16)
        del q
        gc.collect()
        view[:] = b"still mapped...!"
        os.write(fd, bytes(view))

    code, report = fork_call(child, 30)
    assert code == 0, f"the child failed or died (exit {code})"
    assert report == b"still mapped...!"


def test_the_port_answers_misses_without_the_queue():
    """try_reserve/try_peek (the slow paths' retries) give the status of a miss."""
    with Queue(capacity=CAP) as q:
        port = q._port
        assert port.try_peek(0) == (9, 0)  # SHMIPC_EMPTY
        q.put({"a": 1})
        view = port.try_peek(0)
        assert isinstance(view, memoryview)
        port.release()
        view = port.try_reserve(5, 0)
        assert isinstance(view, memoryview)
        port.abort()
        assert port.try_reserve(CAP, 0) == 11  # SHMIPC_TOOBIG


def test_a_memoryview_nobody_else_holds_is_reused_and_sees_only_its_record(q):
    """A view dropped before its commit/release may be handed out again, pointed at the next
    record (read-only for a peek): its contents, length and flags are always the new ones."""
    for i in range(40):
        n = 1 + i % 9
        q.reserve(n)[:] = bytes([i]) * n  # a temporary: nobody holds it at commit
        q.commit()
        first = q.peek()
        assert first.readonly and len(first) == n and bytes(first) == bytes([i]) * n
        with pytest.raises(TypeError):
            first[0] = 1
        del first
        q.release()
        view = q.reserve(n + 1)
        assert not view.readonly and len(view) == n + 1
        view[:] = b"w" * (n + 1)
        del view
        q.abort()
    assert q.qsize() == 0


def test_a_view_with_a_weak_reference_or_its_exporter_held_is_not_reused(q):
    import weakref

    view = q.reserve(3)
    view[:] = b"one"
    ref = weakref.ref(view)
    del view
    q.commit()
    assert ref() is None  # released and freed, never kept to show another record
    exporter = q.reserve(3).obj
    q.abort()
    with pytest.raises(BufferError, match="no longer valid"):
        memoryview(exporter)
    assert bytes(q.peek()) == b"one"
    q.release()
