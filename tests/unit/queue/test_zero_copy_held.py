"""Held views: a loop that keeps its zero-copy view in a variable until the next call
replaces it (``v = q.reserve(n); v[:] = data; q.commit()``).

At commit/abort/release the port releases the handed-out memoryview "softly" (csrc/fastpath.c,
"memoryviews kept for reuse"): exactly as ``memoryview.release()`` does for every use of it,
but keeping its managed buffer, so that once the holder drops it the port can point it at a
later record instead of making a new one. What must hold whatever the holder does: a view of
an ended claim never reads or writes ring memory nor shows a later record, exports made from
it still block the claim's end (BufferError), nothing leaks, and nothing pins the mapping once
the port lets go. Under a debug interpreter (python3.11-dbg) these tests also exercise
CPython's memoryview asserts.
"""

from __future__ import annotations

import gc
import os
import pickle
import struct
import threading
import tracemalloc
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from shmipc.queue import Queue

pytestmark = pytest.mark.timeout(60)

CAP = 4096
RELEASED = "released"


@pytest.fixture
def q():
    qu = Queue(capacity=CAP)
    yield qu
    qu.close()


USES: dict[str, Callable[[memoryview], Any]] = {
    "read": lambda v: v[0],
    "write": lambda v: v.__setitem__(0, 1),
    "slice": lambda v: v[:2],
    "slice assignment": lambda v: v.__setitem__(slice(0, 2), b"zz"),
    "len": len,
    "bytes": bytes,
    "tobytes": lambda v: v.tobytes(),
    "tolist": lambda v: v.tolist(),
    "hex": lambda v: v.hex(),
    "memoryview": memoryview,
    "obj": lambda v: v.obj,
    "nbytes": lambda v: v.nbytes,
    "cast": lambda v: v.cast("B"),
    "toreadonly": lambda v: v.toreadonly(),
    "PickleBuffer": pickle.PickleBuffer,
    "struct.unpack_from": lambda v: struct.unpack_from("<B", v),
    "iteration": lambda v: list(v),
}
#: uses that turn the buffer error into a TypeError of their own
TYPE_ERROR_USES: dict[str, Callable[[memoryview], Any]] = {
    "bytes.join": lambda v: b"".join([v]),
    "bytearray +=": lambda v: bytearray(b"x").__iadd__(v),
}


def assert_released(view: memoryview) -> None:
    """Every use of ``view`` is refused as for a released memoryview."""
    for name, use in USES.items():
        with pytest.raises(ValueError, match=RELEASED):
            use(view)
            pytest.fail(f"{name} worked on a finished view")
    for name, use in TYPE_ERROR_USES.items():
        with pytest.raises(TypeError):
            use(view)
            pytest.fail(f"{name} worked on a finished view")
    assert "released" in repr(view)
    view.release()  # a no-op, as for any released view


# ---- a held view is dead after its claim ends --------------------------------------------


def test_a_held_view_refuses_every_use_after_commit_and_release(q):
    for i in range(20):
        view = q.reserve(8)
        view[:] = i.to_bytes(8, "little")
        q.commit()
        assert_released(view)
        seen = q.peek()
        assert bytes(seen) == i.to_bytes(8, "little")
        q.release()
        assert_released(seen)
        assert_released(view)  # still, after other claims came and went


def test_a_held_view_never_shows_a_later_record(q):
    """Views kept across later claims (the port reuses only views nobody holds) stay dead,
    and each new view shows exactly its own record."""
    held = []
    for i in range(40):
        n = 1 + i % 13
        view = q.reserve(n)
        assert not view.readonly and len(view) == n
        view[:] = bytes([i]) * n
        if i % 5:
            q.commit()
        else:
            q.abort()
        held.append(view)
        if i % 5:
            seen = q.peek()
            assert seen.readonly and bytes(seen) == bytes([i]) * n
            assert all(seen is not h for h in held)
            held.append(seen)
            if i % 3:
                q.release()
            else:
                del seen
                q.release()
        for h in held[-8:]:
            with pytest.raises(ValueError, match=RELEASED):
                bytes(h)
        if len(held) > 20:
            del held[:10]  # dropped: these may come back, pointed at new records
    assert q.qsize() == 0


def test_a_dropped_view_comes_back_pointed_at_the_new_record_only(q):
    """The usual loop: the previous view is still held when the next call is made, then
    replaced. Each view read or written is the current record's, of its length and flags."""
    view = seen = None
    for i in range(200):
        n = 1 + i % 7
        view = q.reserve(n)
        view[:] = bytes([i % 256]) * n
        q.commit()
        seen = q.peek()
        assert seen.readonly and len(seen) == n and bytes(seen) == bytes([i % 256]) * n
        assert hash(seen) == hash(bytes([i % 256]) * n)  # a cached hash is never stale
        with pytest.raises(TypeError):
            seen[0] = 1
        q.release()
    assert_released(view)
    assert_released(seen)


def _kept_ids(q: Queue) -> set[int]:
    """The memoryviews the port keeps for reuse (its GC referents), by id only: holding
    them would keep them from being reused."""
    return {id(o) for o in gc.get_referents(q._port) if isinstance(o, memoryview)}


def test_a_held_view_is_reused_once_its_holder_lets_go(q):
    """The point of the soft release: a view held in a variable until the next call replaces
    it is handed out again (no new memoryview per call), and only then."""
    view = q.reserve(8)
    view[:] = b"first..."
    q.commit()
    first = id(view)
    assert first in _kept_ids(q)  # kept, released, while we still hold it
    again = q.reserve(8)  # ours is still held: another view
    second = id(again)
    assert again is not view
    q.abort()
    del view, again
    assert id(q.reserve(8)) in (first, second)  # nobody holds either now
    q.abort()
    assert q.get_bytes() == b"first..."
    seen = None
    ids = set()
    for i in range(100):  # the usual loop: a handful of views, never a new one each time
        view = q.reserve(8)
        view[:] = i.to_bytes(8, "little")
        q.commit()
        seen = q.peek()
        assert bytes(seen) == i.to_bytes(8, "little")
        q.release()
        ids |= {id(view), id(seen)}
    assert len(ids) <= 8, len(ids)


def test_a_held_view_released_by_its_holder_is_fine(q):
    view = q.reserve(4)
    view[:] = b"abcd"
    view.release()
    q.commit()
    seen = q.peek()
    assert bytes(seen) == b"abcd"
    seen.release()
    q.release()
    assert q.qsize() == 0


def test_context_manager_views(q):
    with q.reserve(4) as view:
        view[:] = b"wxyz"
        q.commit()  # inside the with: __exit__ then releases a released view (a no-op)
    with q.peek() as seen:
        assert bytes(seen) == b"wxyz"
    q.release()  # released by __exit__ first
    assert q.qsize() == 0


# ---- exports still block, and outlive nothing ------------------------------------------------


@pytest.mark.parametrize("kind", ["slice", "memoryview", "PickleBuffer", "cast", "exporter"])
def test_exports_of_a_held_view_block_its_end(q, kind):
    make: Callable[[memoryview], Any] = {
        "slice": lambda v: v[1:],
        "memoryview": memoryview,
        "PickleBuffer": pickle.PickleBuffer,
        "cast": lambda v: v.cast("B"),
        "exporter": lambda v: memoryview(v.obj),
    }[kind]
    for _ in range(3):  # fresh views and reused ones alike
        view = q.reserve(4)
        view[:] = b"data"
        held = make(view)
        with pytest.raises(BufferError):
            q.commit()
        del held
        q.commit()
        assert_released(view)
        seen = q.peek()
        held = make(seen)
        with pytest.raises(BufferError):
            q.release()
        assert bytes(seen) == b"data"
        del held
        q.release()
        assert_released(seen)


def test_numpy_arrays_of_a_held_view_block_its_end(q):
    np = pytest.importorskip("numpy")
    view = q.reserve(8)
    arr = np.frombuffer(view, dtype=np.uint8)
    with pytest.raises(BufferError):
        q.commit()
    del arr
    q.commit()
    with pytest.raises(ValueError, match=RELEASED):
        np.frombuffer(view, dtype=np.uint8)
    seen = q.peek()
    arr = np.frombuffer(seen, dtype=np.uint8)
    with pytest.raises(BufferError):
        q.release()
    del arr
    q.release()


def test_a_weak_reference_made_after_the_end_keeps_the_view_out_of_reuse(q):
    calls = []
    view = q.reserve(3)
    view[:] = b"one"
    q.commit()
    ref = weakref.ref(view, lambda r: calls.append(r))
    del view
    for _ in range(20):  # the weakly referenced view is never handed out again
        again = q.reserve(3)
        assert again is not ref()
        q.abort()
    assert ref() is None or RELEASED in repr(ref())
    q.close()  # lets go of every kept view: the callback runs, nothing else happens
    gc.collect()
    assert ref() is None and len(calls) == 1


# ---- nothing leaks, nothing stays pinned ----------------------------------------------------


@pytest.mark.parametrize("step", ["peek/release", "peek_next"])
def test_held_loops_do_not_leak(q, step):
    next_view = step == "peek_next"

    def loop(n: int) -> None:
        view = seen = None
        for i in range(n):
            view = q.reserve(16)
            view[:8] = i.to_bytes(8, "little")
            q.commit()
            seen = q.peek_next() if next_view else q.peek()
            assert seen[0] == i % 256
            if not next_view:
                q.release()
        if next_view:
            q.release()
        del view, seen

    loop(2000)  # warm up: the port's kept views, the allocator's pools
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        loop(100_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown


def test_views_held_beyond_what_the_port_keeps_are_released_for_real(q):
    """Holding many views: those the port stops keeping are released for real (they pin
    nothing); all of them refuse use; the refcounts come back."""
    views = []
    for i in range(50):
        view = q.reserve(4)
        view[:] = b"%04d" % i
        q.commit()
        views.append(view)
        seen = q.peek()
        assert bytes(seen) == b"%04d" % i
        q.release()
        views.append(seen)
    for v in views:
        assert_released(v)
    del views, v, view, seen
    gc.collect()
    view = q.reserve(4)  # the port goes on as before
    view[:] = b"last"
    q.commit()
    assert q.get_bytes() == b"last"


def test_a_closed_queue_lets_go_of_its_mapping_while_views_are_held():
    """Once the queue is closed and dropped, views still held (soft-released ones included)
    pin nothing: the named segment's mapping is gone from the process."""
    name = f"shmipc-heldtest-{os.getpid()}"
    q = Queue(capacity=CAP, name=name)
    held = []
    for _ in range(4):
        view = q.reserve(4)
        view[:] = b"abcd"
        q.commit()
        seen = q.peek()
        q.release()
        held += [view, seen]
    q.close()
    del q, view, seen  # the handle itself holds the mapping until it goes
    gc.collect()
    with open("/proc/self/maps") as maps:
        assert not [line for line in maps if name in line]
    for v in held:
        assert_released(v)


def test_a_collected_queue_leaves_held_views_released(q):
    other = Queue(capacity=CAP)
    view = other.reserve(4)
    view[:] = b"abcd"
    other.commit()
    seen = other.peek()
    other.release()
    other.close()
    del other
    gc.collect()
    assert_released(view)
    assert_released(seen)


# ---- threads --------------------------------------------------------------------------------


def test_threads_each_with_their_own_claims_and_held_views():
    """Producer threads write records in held views, consumer threads read them in held
    views: every record arrives once and intact, and no view ever shows a record it was not
    handed out for."""
    per, producers, consumers = 3000, 3, 2
    errors: list[BaseException] = []
    got: list[list[int]] = [[] for _ in range(consumers)]
    with Queue(capacity=1 << 14) as qu:

        def produce(p: int) -> None:
            try:
                view = None
                for i in range(per):
                    n = 16 + (i % 5) * 8
                    view = qu.reserve(n)
                    stamp = (p * per + i).to_bytes(8, "little")
                    view[:8] = stamp
                    view[8:n] = stamp * ((n - 8) // 8)
                    qu.commit()
                    with pytest.raises(ValueError, match=RELEASED):
                        view[0]
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def consume(c: int) -> None:
            try:
                seen = None
                while True:
                    seen = qu.peek(timeout=30)
                    data = bytes(seen)
                    qu.release()
                    with pytest.raises(ValueError, match=RELEASED):
                        len(seen)
                    if not data:
                        return
                    stamp = data[:8]
                    assert data == stamp * (len(data) // 8), "torn or stale record"
                    got[c].append(int.from_bytes(stamp, "little"))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        threads += [threading.Thread(target=consume, args=(c,)) for c in range(consumers)]
        for t in threads:
            t.start()
        for t in threads[:producers]:
            t.join(60)
        for _ in range(consumers):
            qu.put_bytes(b"")  # one end mark per consumer
        for t in threads[producers:]:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
    assert not errors, errors[0]
    every = sorted(x for g in got for x in g)
    assert every == list(range(producers * per))
