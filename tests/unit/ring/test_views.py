"""Exported views (issue 7, item 2): the views reserve() and peek() hand out count what is made
from them, as mmap does. commit, abort, release, unpeek and close with any of those alive raise
BufferError before they touch the ring, so the caller drops it and calls again: exactly one
record is published, the side is let go, and other threads see the record. No view (nor an
array made from one) ever shows a later record's bytes. See docs/internals/lifetime.md."""

from __future__ import annotations

import pickle
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from shmipc import Closed, Ring
from shmipc.queue import Queue

pytestmark = pytest.mark.timeout(60)

EXPORTS: dict[str, Callable[[memoryview], Any]] = {
    "slice": lambda v: v[1:],
    "PickleBuffer": pickle.PickleBuffer,
    "np.frombuffer": lambda v: np.frombuffer(v, dtype=np.uint8),
    "np.frombuffer of a slice": lambda v: np.frombuffer(v[2:], dtype=np.uint8),
    "memoryview": memoryview,
    "memoryview of the exporter": lambda v: memoryview(v.obj),
    "cast": lambda v: v.cast("B"),
}


def in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` run on another thread (its own reservation/peek state): result or exception."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert not t.is_alive()
    return out[0]


@pytest.fixture
def ring():
    r = Ring.anonymous(4096)
    yield r
    r.close()


# ---- producer side: commit, abort, close ----------------------------------------------------


@pytest.mark.parametrize("export", EXPORTS)
def test_commit_with_an_export_publishes_nothing_until_retried(ring, export):
    view = ring.reserve(8)
    view[:] = b"abcdefgh"
    held = EXPORTS[export](view)
    with pytest.raises(BufferError):
        ring.commit()
    assert ring.qsize() == 0  # nothing published, the reservation kept
    assert isinstance(in_thread(lambda: ring.put(b"other", block=False)), queue.Full)
    del held
    ring.commit()
    assert ring.qsize() == 1
    with pytest.raises(RuntimeError, match="no reservation"):
        ring.commit()  # exactly once
    assert in_thread(lambda: ring.get(timeout=5)) == b"abcdefgh"


@pytest.mark.parametrize("export", EXPORTS)
def test_abort_with_an_export_keeps_the_reservation_until_retried(ring, export):
    view = ring.reserve(8)
    held = EXPORTS[export](view)
    with pytest.raises(BufferError):
        ring.abort()
    assert isinstance(in_thread(lambda: ring.put(b"other", block=False)), queue.Full)
    del held
    ring.abort()
    assert in_thread(lambda: ring.put(b"other", timeout=5)) is None
    assert ring.get_many(10, block=False) == [b"other"]


@pytest.mark.parametrize("export", EXPORTS)
def test_close_with_a_reservation_exported_changes_nothing_until_retried(export):
    ring = Ring.anonymous(4096)
    other = Ring.at(ring.region, create=False)
    view = ring.reserve(8)
    held = EXPORTS[export](view)
    with pytest.raises(BufferError):
        ring.close()
    assert isinstance(in_thread(lambda: other.put(b"x", block=False)), queue.Full)
    del held
    ring.close()  # aborts the reservation: nothing published, the side let go
    with pytest.raises(Closed):
        ring.put(b"x")
    assert in_thread(lambda: other.put(b"after", timeout=5)) is None
    assert other.get_many(10, block=False) == [b"after"]
    other.close()


# ---- consumer side: release, unpeek, close --------------------------------------------------


@pytest.mark.parametrize("export", EXPORTS)
def test_release_with_an_export_keeps_the_record_until_retried(ring, export):
    ring.put(b"first!!!")
    ring.put(b"second!!")
    view = ring.peek()
    held = EXPORTS[export](view)
    with pytest.raises(BufferError):
        ring.release()
    assert ring.qsize() == 2  # not consumed, and still peeked by this thread
    assert isinstance(in_thread(lambda: ring.get(block=False)), queue.Empty)
    del held
    ring.release()
    assert ring.qsize() == 1
    assert in_thread(lambda: ring.get(timeout=5)) == b"second!!"  # other consumers see it


@pytest.mark.parametrize("export", EXPORTS)
def test_unpeek_with_an_export_keeps_the_peek_until_retried(ring, export):
    ring.put(b"first!!!")
    view = ring.peek()
    held = EXPORTS[export](view)
    with pytest.raises(BufferError):
        ring.unpeek()
    assert isinstance(in_thread(lambda: ring.get(block=False)), queue.Empty)
    del held
    ring.unpeek()
    assert in_thread(lambda: ring.get(timeout=5)) == b"first!!!"  # still the next record


@pytest.mark.parametrize("export", EXPORTS)
def test_close_with_a_peek_exported_changes_nothing_until_retried(export):
    ring = Ring.anonymous(4096)
    other = Ring.at(ring.region, create=False)
    ring.put(b"first!!!")
    view = ring.peek()
    held = EXPORTS[export](view)
    with pytest.raises(BufferError):
        ring.close()
    assert isinstance(in_thread(lambda: other.get(block=False)), queue.Empty)
    del held
    ring.close()  # unpeeks: the record stays the next one
    assert other.get(timeout=5) == b"first!!!"
    other.close()


def test_an_array_from_a_peeked_view_never_shows_a_later_record():
    with Queue(capacity=4096) as q:
        q.put_bytes(b"A" * 64)
        q.put_bytes(b"B" * 64)
        arr = np.frombuffer(q.peek(), dtype=np.uint8)
        with pytest.raises(BufferError):
            q.release()
        assert isinstance(in_thread(lambda: q.get_bytes(block=False)), queue.Empty)
        for _ in range(3):  # nothing a producer does can reach the peeked record's bytes
            q.put_bytes(b"C" * 64)
        assert bytes(arr) == b"A" * 64
        del arr
        q.release()
        assert q.get_many(10, block=False) == [b"B" * 64] + [b"C" * 64] * 3


def test_a_retired_view_and_its_exporter_refuse_further_use(ring):
    view = ring.reserve(4)
    exporter = view.obj
    ring.abort()
    with pytest.raises(ValueError, match="released"):
        view[0]
    with pytest.raises(BufferError, match="no longer valid"):
        memoryview(exporter)
    ring.put(b"rec")
    view = ring.peek()
    assert view.readonly
    with pytest.raises(TypeError):
        view[0] = 1
    exporter = view.obj
    ring.release()
    with pytest.raises(BufferError, match="no longer valid"):
        memoryview(exporter)


def test_queue_views_count_exports_too():
    with Queue(capacity=4096) as q:
        view = q.reserve(3)
        view[:] = b"abc"
        part = view[:1]
        with pytest.raises(BufferError):
            q.commit()
        assert q.qsize() == 0
        del part
        q.commit()
        view = q.peek()
        held = pickle.PickleBuffer(view)
        with pytest.raises(BufferError):
            q.close()
        assert q.qsize() == 1
        del held
        q.release()
        assert q.qsize() == 0
