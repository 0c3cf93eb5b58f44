"""Ring: construction, records of every size, wraps and padding, types, limits, blocking and
timeouts, batches, zero-copy reserve/commit and peek/release, large records, statistics,
pickling, attach-time validation and threads (docs/internals/ring.md is the contract)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import queue
import random
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from _procs import Child, fork_call, read_exact_or_fail
from ring_helpers import (
    HEADER,
    PAD_TYPE,
    control,
    data_area,
    payload,
    read_u64,
    rec_size,
    record_header,
    spawn_echo,
    write_u32,
    write_u64,
)

from shmipc import Closed, CorruptedError, LayoutMismatch, MessageTooLarge, Region, ShmipcError
from shmipc._native import lib
from shmipc.layout import Kind
from shmipc.ring import SCRATCH_SIZE, Ring, RingStatistics

pytestmark = pytest.mark.timeout(60)

SHM = "/dev/shm"
TIMEOUT = 0.1  # waits that must time out: generous bounds below, never exact ones
OFF_TAIL = lib.SHMIPC_RING_OFF_P_TAIL
OFF_HEAD = lib.SHMIPC_RING_OFF_C_HEAD


def _assert_times_out(exc: type[BaseException], fn, *args, **kwargs) -> None:
    start = time.monotonic()
    with pytest.raises(exc):
        fn(*args, **kwargs)
    elapsed = time.monotonic() - start
    timeout = kwargs.get("timeout", 0)
    assert timeout * 0.9 <= elapsed < 2.0, elapsed


def _fill(ring: Ring, size: int) -> list[bytes]:
    """Put records of ``size`` bytes without blocking until the ring is full."""
    put = []
    while True:
        p = payload(size, len(put))
        try:
            ring.put(p, block=False)
        except queue.Full:
            return put
        put.append(p)


def _move_to_160(ring: Ring) -> None:
    """Move an empty ring of capacity 256 to position 160, where a 112-byte record (100 bytes
    of payload) does not fit before the end: it is padded (96 bytes) and goes to index 0."""
    ring.put(payload(100))  # 112 bytes at 0
    ring.get()
    ring.put(payload(40))  # 48 bytes at 112
    ring.get()
    assert read_u64(ring, OFF_TAIL) == read_u64(ring, OFF_HEAD) == 160


def _drain(ring: Ring) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(ring.get(block=False))
        except queue.Empty:
            return out


# ---- construction ------------------------------------------------------------------------


def test_create_attach_share_records(shm_name):
    with Ring.create(1024, name=shm_name) as ring:
        assert ring.name == shm_name
        assert ring.capacity == 1024
        assert ring.max_payload == 1024 // 2 - 8
        assert os.path.exists(os.path.join(SHM, shm_name))
        other = Ring.attach(shm_name)
        try:
            assert other.capacity == 1024 and other.name == shm_name
            ring.put(b"one", type=3)
            other.put(b"two")
            assert other.get_record()[0] == 3
            assert ring.get() == b"two"
        finally:
            other.close()
        # an attacher's close never unlinks
        assert os.path.exists(os.path.join(SHM, shm_name))
        assert repr(ring) == f"<shmipc.Ring {shm_name} capacity=1024>"
    # the creator's close does
    assert not os.path.exists(os.path.join(SHM, shm_name))


def test_create_refuses_an_existing_name(shm_name):
    with Ring.create(256, name=shm_name), pytest.raises(FileExistsError):
        Ring.create(256, name=shm_name)


def test_attach_missing_name_fails(shm_name):
    with pytest.raises(FileNotFoundError):
        Ring.attach(shm_name)


def test_create_without_name_picks_one():
    ring = Ring.create(256)
    try:
        assert ring.name and os.path.exists(os.path.join(SHM, ring.name))
    finally:
        ring.close()
    assert not os.path.exists(os.path.join(SHM, ring.name))


def test_attach_refuses_another_kind(shm_name):
    with Ring.create(256, name=shm_name, kind=Kind.QUEUE), pytest.raises(LayoutMismatch):
        Ring.attach(shm_name)


def test_anonymous_shared_with_forked_child():
    ring = Ring.anonymous(1024)
    assert ring.name is None
    assert repr(ring) == "<shmipc.Ring anonymous capacity=1024>"
    ring.put(b"to child")

    def child(fd: int) -> None:
        os.write(fd, ring.get(timeout=10))
        ring.put(b"to parent", type=5)

    code, got = fork_call(child)
    assert code == 0 and got == b"to child"
    assert ring.get_record(block=False)[0] == 5


@pytest.mark.parametrize(
    "capacity", [0, 32, 63, 100, 1000, 1025, -64], ids=lambda c: f"capacity={c}"
)
def test_bad_capacity_is_refused(capacity):
    with pytest.raises(ValueError):
        Ring.anonymous(capacity)


def test_bad_max_count_is_refused():
    with pytest.raises(ValueError):
        Ring.anonymous(256, max_count=-1)


def test_at_places_rings_in_a_region():
    fp = Ring.footprint(256)
    assert fp == HEADER + 256
    region = Region.anonymous(2 * fp + 64)
    a = Ring.at(region, 0, create=True, capacity=256)
    b = Ring.at(region, fp, create=True, capacity=256, max_count=2)
    a.put(b"in a")
    b.put(b"in b")
    # handles made later over the same bytes see the same rings
    a2 = Ring.at(region, 0, create=False)
    b2 = Ring.at(region, fp, create=False)
    assert a2.capacity == b2.capacity == 256
    assert b2.get() == b"in b"
    assert a2.get() == b"in a"
    a.close()  # at() does not own the region: it stays usable
    b.put(b"x")
    assert b2.get() == b"x"
    with pytest.raises(TypeError):
        pickle.dumps(a2)


def test_at_checks_placement():
    region = Region.anonymous(4096)
    with pytest.raises(ValueError):
        Ring.at(region, 8, create=True, capacity=256)  # not 64-byte aligned
    with pytest.raises(ValueError):
        Ring.at(region, 0, create=True, capacity=4096)  # does not fit
    with pytest.raises(CorruptedError):
        Ring.at(region, 0, create=False)  # nothing there: magic 0


def test_at_of_named_region_pickles_by_name_and_offset(shm_name):
    fp = Ring.footprint(256)
    with Region.create(fp + 64 + fp, name=shm_name) as region:
        ring = Ring.at(region, fp + 64, create=True, capacity=256)
        ring.put(b"deep")
        clone = pickle.loads(pickle.dumps(ring))
        try:
            assert clone.get() == b"deep"
            clone.put(b"back")
            assert ring.get() == b"back"
        finally:
            clone.close()


# ---- sizes, wraps, padding, types --------------------------------------------------------


@pytest.mark.parametrize("capacity", [64, 256, 1024])
def test_every_size_round_trips(capacity):
    ring = Ring.anonymous(capacity)
    for n in range(ring.max_payload + 1):
        p = payload(n, n)
        ring.put(p)
        assert ring.get(block=False) == p
    st = ring.statistics()
    assert st.messages_in == st.messages_out == ring.max_payload + 1
    assert st.depth == st.depth_bytes == 0


def test_max_payload_and_beyond():
    ring = Ring.anonymous(256)
    assert ring.max_payload == 120
    ring.put(bytes(120))
    assert ring.get() == bytes(120)
    for call in (
        lambda: ring.put(bytes(121)),
        lambda: ring.put(bytes(121), block=False),
        lambda: ring.reserve(121),
        lambda: ring.put_many([bytes(121)]),
    ):
        with pytest.raises(MessageTooLarge):
            call()
    assert issubclass(MessageTooLarge, ValueError) and issubclass(MessageTooLarge, ShmipcError)
    # nothing was stored by the refusals
    assert ring.statistics().messages_in == 1


def test_too_large_never_waits():
    ring = Ring.anonymous(256)
    _fill(ring, 50)  # full: a refusal that waited for room would take the whole timeout
    start = time.monotonic()
    with pytest.raises(MessageTooLarge):
        ring.put(bytes(1000), timeout=None)
    assert time.monotonic() - start < 1.0


def test_padding_record_when_a_record_would_straddle_the_end():
    ring = Ring.anonymous(256)
    _move_to_160(ring)
    ring.put(payload(100, 1))  # would straddle 160..272: pad 96 bytes, record at 0
    st = ring.statistics()
    assert st.depth == 1
    assert st.depth_bytes == 96 + 112
    assert record_header(ring, 160) == (96 - 8, PAD_TYPE)
    assert record_header(ring, 0) == (100, 0)
    assert read_u64(ring, OFF_TAIL) == 160 + 96 + 112
    assert ring.get() == payload(100, 1)
    assert ring.statistics().depth_bytes == 0
    assert read_u64(ring, OFF_HEAD) == read_u64(ring, OFF_TAIL)


def test_record_that_exactly_reaches_the_end_needs_no_padding():
    ring = Ring.anonymous(256)
    ring.put(payload(120))  # 128 bytes
    ring.get()
    ring.put(payload(120, 1))  # 128..256: exactly to the end
    assert ring.statistics().depth_bytes == 128
    ring.put(payload(0))  # next at index 0
    assert record_header(ring, 0) == (0, 0)
    assert ring.get() == payload(120, 1) and ring.get() == b""


@pytest.mark.parametrize("capacity", [64, 256, 1024])
def test_many_wraps_keep_order_and_content(capacity):
    rng = random.Random(capacity)
    ring = Ring.anonymous(capacity)
    pending: list[bytes] = []
    sent = 0
    for _ in range(3000):
        if rng.random() < 0.55:
            p = payload(rng.randint(0, ring.max_payload), sent)
            try:
                ring.put(p, block=False)
            except queue.Full:
                assert pending, "an empty ring refused a record of at most max_payload"
                continue
            pending.append(p)
            sent += 1
        elif pending:
            assert ring.get(block=False) == pending.pop(0)
        else:
            with pytest.raises(queue.Empty):
                ring.get(block=False)
    assert _drain(ring) == pending
    assert read_u64(ring, OFF_TAIL) > 10 * capacity  # it really wrapped, many times


def test_type_field_round_trips():
    ring = Ring.anonymous(1024)
    types = [0, 1, 2, 0xFF, 0x1234, 0xFFFF]
    for t in types:
        ring.put(struct.pack("<I", t), type=t)
    for t in types:
        rtype, data = ring.get_record()
        assert rtype == t and bytes(data) == struct.pack("<I", t)
    ring.put_many([b"a", b"b"], type=0xFFFF)
    assert [t for t, _ in ring.get_many_records(5)] == [0xFFFF, 0xFFFF]
    ring.reserve(3, type=42)[:] = b"abc"
    ring.commit()
    view = ring.peek()
    assert ring.peeked_type == 42 and bytes(view) == b"abc"
    ring.release()


@pytest.mark.parametrize("bad", [-1, 0x10000, 0xFFFFFFFF])
def test_type_out_of_range_is_refused(bad):
    ring = Ring.anonymous(256)
    with pytest.raises(ValueError):
        ring.put(b"x", type=bad)
    with pytest.raises(ValueError):
        ring.put_many([b"x"], type=bad)
    with pytest.raises(ValueError):
        ring.reserve(1, type=bad)
    assert ring.statistics().messages_in == 0


def test_put_takes_any_bytes_like():
    ring = Ring.anonymous(1024)
    ring.put(bytearray(b"bytearray"))
    ring.put(memoryview(b"xxmemoryview")[2:])
    ring.put(struct.pack("<q", -1))
    import array

    ring.put(array.array("i", [1, 2]))
    assert ring.get() == b"bytearray"
    assert ring.get() == b"memoryview"
    assert ring.get() == b"\xff" * 8
    assert ring.get() == array.array("i", [1, 2]).tobytes()
    with pytest.raises(TypeError):
        ring.put("text")  # type: ignore[arg-type]


# ---- Empty / Full, blocking, timeouts ----------------------------------------------------


def test_empty_without_blocking():
    ring = Ring.anonymous(256)
    for call in (
        lambda: ring.get(block=False),
        lambda: ring.get_record(block=False),
        lambda: ring.get_many(3, block=False),
        lambda: ring.peek(block=False),
        lambda: ring.get(timeout=0),
    ):
        start = time.monotonic()
        with pytest.raises(queue.Empty):
            call()
        assert time.monotonic() - start < 1.0


def test_full_without_blocking():
    ring = Ring.anonymous(256)
    stored = _fill(ring, 50)  # 64-byte records: exactly 4
    assert len(stored) == 4
    assert ring.statistics().depth_bytes == 256
    for call in (
        lambda: ring.put(b"", block=False),
        lambda: ring.put_many([b"a"], block=False),
        lambda: ring.reserve(0, block=False),
        lambda: ring.put(b"", timeout=0),
    ):
        start = time.monotonic()
        with pytest.raises(queue.Full):
            call()
        assert time.monotonic() - start < 1.0
    assert _drain(ring) == stored


def test_get_timeouts():
    ring = Ring.anonymous(256)
    _assert_times_out(queue.Empty, ring.get, timeout=TIMEOUT)
    _assert_times_out(queue.Empty, ring.get_many, 4, timeout=TIMEOUT)
    _assert_times_out(queue.Empty, ring.peek, timeout=TIMEOUT)
    _assert_times_out(queue.Empty, ring.get, timeout=0.3)  # more than one 100 ms slice


def test_put_timeouts():
    ring = Ring.anonymous(256)
    _fill(ring, 50)
    _assert_times_out(queue.Full, ring.put, b"x", timeout=TIMEOUT)
    _assert_times_out(queue.Full, ring.put_many, [b"x"], timeout=TIMEOUT)
    _assert_times_out(queue.Full, ring.reserve, 1, timeout=TIMEOUT)
    _assert_times_out(queue.Full, ring.put, b"x", timeout=0.3)


def test_blocked_get_wakes_when_a_record_arrives():
    ring = Ring.anonymous(256)
    got: list[bytes] = []
    started = threading.Event()

    def consumer() -> None:
        started.set()
        got.append(ring.get(timeout=20))

    t = threading.Thread(target=consumer)
    t.start()
    started.wait(10)
    ring.put(b"wake up")
    t.join(20)
    assert got == [b"wake up"]


def test_blocked_put_wakes_when_room_appears():
    ring = Ring.anonymous(256)
    stored = _fill(ring, 50)
    done = threading.Event()

    def producer() -> None:
        ring.put(b"late", timeout=20)
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert not done.wait(0.05)  # really blocked while full (bounded look)
    assert ring.get() == stored[0]
    t.join(20)
    assert done.is_set()
    assert _drain(ring) == [*stored[1:], b"late"]


def test_blocked_put_in_a_child_wakes_on_a_parent_get():
    ring = Ring.anonymous(256)
    stored = _fill(ring, 50)
    rfd, wfd = os.pipe()

    def child(fd: int) -> None:
        os.write(wfd, b"s")
        ring.put(b"from child", timeout=20)

    c = Child(child)
    try:
        os.close(wfd)
        read_exact_or_fail(rfd, 1)
        ring.get()
        code, _ = c.finish()
    finally:
        c.kill()
        os.close(rfd)
    assert code == 0
    assert _drain(ring) == [*stored[1:], b"from child"]


# ---- max_count ---------------------------------------------------------------------------


def test_max_count_limits_messages():
    ring = Ring.anonymous(4096, max_count=3)
    for i in range(3):
        ring.put(bytes([i]), block=False)
    with pytest.raises(queue.Full):
        ring.put(b"", block=False)
    with pytest.raises(queue.Full):
        ring.reserve(0, block=False)
    _assert_times_out(queue.Full, ring.put, b"x", timeout=TIMEOUT)
    assert ring.statistics().depth == 3 and ring.qsize() == 3
    assert ring.get() == b"\x00"
    ring.put(b"\x03", block=False)
    with pytest.raises(queue.Full):
        ring.put(b"", block=False)
    assert _drain(ring) == [b"\x01", b"\x02", b"\x03"]


def test_max_count_stops_a_batch():
    ring = Ring.anonymous(4096, max_count=3)
    with pytest.raises(queue.Full):
        ring.put_many([b"a", b"b", b"c", b"d", b"e"], block=False)
    assert ring.qsize() == 3
    assert ring.get_many(10) == [b"a", b"b", b"c"]
    ring.put_many([b"f", b"g"], block=False)
    ring.put(b"h", block=False)
    with pytest.raises(queue.Full):
        ring.put(b"i", block=False)
    assert ring.get_many(10) == [b"f", b"g", b"h"]


def test_max_count_batch_completes_with_a_consumer():
    ring = Ring.anonymous(4096, max_count=2)
    items = [payload(i % 30, i) for i in range(300)]

    def child(fd: int) -> None:
        got = []
        while len(got) < len(items):
            got.extend(ring.get_many(5, timeout=20))
        os.write(fd, hashlib.sha256(b"|".join(got)).digest())

    c = Child(child)
    try:
        ring.put_many(items, timeout=20)
        code, digest = c.finish()
    finally:
        c.kill()
    assert code == 0
    assert digest == hashlib.sha256(b"|".join(items)).digest()


# ---- batches -----------------------------------------------------------------------------


def test_put_many_get_many_round_trip():
    ring = Ring.anonymous(1024)
    items = [payload(n, n) for n in (0, 1, 7, 8, 9, 100)]
    ring.put_many(items)
    st = ring.statistics()
    assert st.messages_in == len(items) and st.bytes_in == sum(map(len, items))
    assert st.depth_bytes == sum(rec_size(len(p)) for p in items)
    assert ring.get_many(len(items)) == items
    ring.put_many([])  # nothing to do
    assert ring.statistics().messages_in == len(items)


def test_get_many_returns_what_is_there():
    ring = Ring.anonymous(1024)
    ring.put_many([b"a", b"b", b"c"])
    assert ring.get_many(10, block=False) == [b"a", b"b", b"c"]
    ring.put_many([b"d", b"e", b"f"])
    assert ring.get_many(2) == [b"d", b"e"]
    assert ring.get_many(2) == [b"f"]
    with pytest.raises(ValueError):
        ring.get_many(0)
    recs = []
    ring.put(b"x", type=1)
    ring.put(b"y", type=2)
    recs = [(t, bytes(p)) for t, p in ring.get_many_records(5)]
    assert recs == [(1, b"x"), (2, b"y")]


def test_partial_batches_across_wraps():
    ring = Ring.anonymous(256)
    rng = random.Random(7)
    expected: list[bytes] = []
    got: list[bytes] = []
    for round_ in range(400):
        batch = [payload(rng.randint(0, 60), round_ * 10 + i) for i in range(rng.randint(1, 8))]
        try:
            ring.put_many(batch, block=False)
            expected.extend(batch)
        except queue.Full:
            # a partial batch: the first k stored, in order, the rest not
            n_new = ring.statistics().messages_in - (len(expected))
            assert 0 <= n_new < len(batch)
            expected.extend(batch[:n_new])
        got.extend(ring.get_many(rng.randint(1, 6), block=False))
        assert got == expected[: len(got)]
    got.extend(_drain(ring))
    assert got == expected
    assert read_u64(ring, OFF_TAIL) > 20 * 256


def test_get_many_stops_at_the_buffer_limit():
    # 40 KiB records: two do not fit the 64 KiB per-thread scratch at once
    ring = Ring.anonymous(1 << 18)
    items = [payload(40_000, i) for i in range(4)]
    ring.put_many(items)
    first = ring.get_many(10)
    assert 1 <= len(first) < 4
    rest = []
    while len(first) + len(rest) < 4:
        rest.extend(ring.get_many(10, block=False))
    assert first + rest == items


def test_batch_larger_than_the_ring_with_a_consumer_process():
    ring = Ring.anonymous(1024)
    rng = random.Random(3)
    items = [payload(rng.randint(0, 120), i) for i in range(2000)]
    assert sum(rec_size(len(p)) for p in items) > 50 * ring.capacity

    def child(fd: int) -> None:
        got: list[bytes] = []
        while len(got) < len(items):
            got.extend(ring.get_many(7, timeout=20))
        os.write(fd, hashlib.sha256(b"|".join(got)).digest() + struct.pack("<Q", len(got)))

    c = Child(child)
    try:
        ring.put_many(items, timeout=20)
        code, report = c.finish()
    finally:
        c.kill()
    assert code == 0
    assert report == hashlib.sha256(b"|".join(items)).digest() + struct.pack("<Q", len(items))
    st = ring.statistics()
    assert st.messages_in == st.messages_out == len(items)
    assert st.bytes_in == st.bytes_out == sum(map(len, items))
    assert st.depth == st.depth_bytes == 0


def test_put_many_takes_any_bytes_like_as_put_does():
    """Lengths are byte lengths: an array('i') or a memoryview cast to 'I' has len() in
    items, not bytes (ring.py put_many takes len(x): records get the wrong boundaries)."""
    import array

    items = [
        array.array("i", [1, 2]),
        memoryview(b"abcdefgh").cast("I"),
        bytearray(b"xy"),
        memoryview(b"--view--")[2:6],
        b"z",
    ]
    ring = Ring.anonymous(1024)
    ring.put_many(items)
    got = ring.get_many(10)
    del ring
    assert got == [bytes(memoryview(x)) for x in items]


def test_put_many_takes_an_iterator():
    """put_many(iter(...)): the items must be read once. Today the lengths consume the
    iterator and the C side then reads the lengths' worth of bytes past an empty buffer
    (garbage from this process's heap goes into the ring, or SIGSEGV)."""
    ring = Ring.anonymous(1 << 22)
    items = [bytes([65 + i]) * 300_000 for i in range(6)]

    def child(fd: int) -> None:
        ring.put_many(iter(items))
        ring.put_many(x for x in [b"gen1", b"gen2"])
        got = []
        while True:
            try:
                got.extend(ring.get_many(10, block=False))
            except queue.Empty:
                break
        os.write(fd, b"same" if got == [*items, b"gen1", b"gen2"] else b"different")

    code, report = fork_call(child)
    ring = None  # (a failing assertion must not keep the ring in a frame: see the gc test)
    assert (code, report) == (0, b"same")


def test_put_many_with_an_oversized_item_stores_those_before_it():
    ring = Ring.anonymous(1024)
    with pytest.raises(MessageTooLarge):
        ring.put_many([b"a", b"b", bytes(ring.max_payload + 1), b"c"])
    assert ring.get_many(10) == [b"a", b"b"]
    ring.put(b"still fine")
    assert ring.get() == b"still fine"


# ---- reserve / commit / abort ------------------------------------------------------------


def test_reserve_commit_publishes():
    ring = Ring.anonymous(256)
    view = ring.reserve(5, type=9)
    assert len(view) == 5 and not view.readonly
    view[:] = b"hello"
    assert ring.statistics().messages_in == 0  # not visible before commit
    with pytest.raises(queue.Empty):
        ring.get(block=False)
    ring.commit()
    with pytest.raises(ValueError):
        view[0]  # released by commit
    rtype, data = ring.get_record()
    assert rtype == 9 and bytes(data) == b"hello"
    st = ring.statistics()
    assert st.messages_in == st.messages_out == 1 and st.bytes_in == 5


def test_reserve_zero_and_max():
    ring = Ring.anonymous(256)
    assert len(ring.reserve(0)) == 0
    ring.commit()
    ring.reserve(ring.max_payload)[:] = payload(ring.max_payload)
    ring.commit()
    assert ring.get() == b""
    assert ring.get() == payload(ring.max_payload)


def test_reserve_across_the_wrap_pads():
    ring = Ring.anonymous(256)
    _move_to_160(ring)
    view = ring.reserve(100)  # would straddle: padded to index 0
    assert record_header(ring, 160) == (96 - 8, PAD_TYPE)
    view[:] = payload(100, 5)
    ring.commit()
    assert ring.statistics().depth_bytes == 96 + 112
    assert ring.get() == payload(100, 5)


def test_abort_publishes_nothing():
    ring = Ring.anonymous(256)
    ring.put(b"before")
    before = ring.statistics()
    view = ring.reserve(10)
    view[:] = b"x" * 10
    ring.abort()
    with pytest.raises(ValueError):
        view[0]  # released by abort
    assert ring.statistics() == before
    ring.put(b"after")
    assert _drain(ring) == [b"before", b"after"]


def test_reservation_misuse():
    ring = Ring.anonymous(256)
    with pytest.raises(RuntimeError):
        ring.commit()
    with pytest.raises(RuntimeError):
        ring.abort()
    with pytest.raises(ValueError):
        ring.reserve(-1)
    ring.reserve(4)[:] = b"abcd"
    with pytest.raises(RuntimeError):
        ring.reserve(4)  # one reservation per thread
    ring.commit()
    with pytest.raises(RuntimeError):
        ring.commit()  # double commit
    assert _drain(ring) == [b"abcd"]


@pytest.mark.parametrize(
    "kwargs", [{}, {"timeout": 1.0}, {"block": False}], ids=["forever", "timeout", "nowait"]
)
def test_put_while_holding_a_reservation_is_a_runtime_error(kwargs):
    ring = Ring.anonymous(256)
    ring.reserve(3)[:] = b"res"
    start = time.monotonic()
    with pytest.raises(RuntimeError):
        ring.put(b"x", **kwargs)
    with pytest.raises(RuntimeError):
        ring.put_many([b"x"], **kwargs)
    assert time.monotonic() - start < 1.0  # refused at once, not after a wait
    ring.commit()
    ring.put(b"y")
    assert _drain(ring) == [b"res", b"y"]


def test_reservation_holds_other_producers_until_commit():
    ring = Ring.anonymous(256)
    ring.reserve(1)[:] = b"1"
    other: list[BaseException | None] = []
    done = threading.Event()

    def producer() -> None:
        try:
            ring.put(b"2", block=False)
        except queue.Full as exc:
            other.append(exc)
        ring.put(b"2", timeout=20)
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert not done.wait(0.05)
    ring.commit()
    t.join(20)
    assert done.is_set()
    assert len(other) == 1 and isinstance(other[0], queue.Full)
    assert _drain(ring) == [b"1", b"2"]


# ---- peek / release ----------------------------------------------------------------------


def test_peek_release():
    ring = Ring.anonymous(256)
    ring.put(b"peek me", type=4)
    ring.put(b"next")
    view = ring.peek()
    assert view.readonly and bytes(view) == b"peek me" and ring.peeked_type == 4
    with pytest.raises(TypeError):
        view[0] = 1
    assert ring.statistics().messages_out == 0
    ring.release()
    with pytest.raises(ValueError):
        view[0]  # released by release()
    st = ring.statistics()
    assert st.messages_out == 1 and st.bytes_out == 7
    assert ring.get() == b"next"


def test_peek_misuse():
    ring = Ring.anonymous(256)
    with pytest.raises(RuntimeError):
        ring.release()
    ring.put(b"a")
    ring.peek()
    with pytest.raises(RuntimeError):
        ring.peek()
    for kwargs in ({}, {"block": False}, {"timeout": 1.0}):
        with pytest.raises(RuntimeError):
            ring.get(**kwargs)
        with pytest.raises(RuntimeError):
            ring.get_many(2, **kwargs)
    ring.release()
    with pytest.raises(RuntimeError):
        ring.release()
    with pytest.raises(queue.Empty):
        ring.get(block=False)


def test_peek_holds_other_consumers_until_release():
    ring = Ring.anonymous(256)
    ring.put(b"a")
    ring.put(b"b")
    ring.peek()
    seen: list[object] = []
    tried = threading.Event()

    def consumer() -> None:
        try:
            seen.append(ring.get(block=False))
        except queue.Empty as exc:
            seen.append(exc)
        tried.set()
        seen.append(ring.get(timeout=20))

    t = threading.Thread(target=consumer)
    t.start()
    assert tried.wait(20)
    ring.release()
    t.join(20)
    assert isinstance(seen[0], queue.Empty)
    assert seen[1] == b"b"


def test_peek_after_padding_and_at_the_end():
    ring = Ring.anonymous(256)
    _move_to_160(ring)
    ring.put(payload(100, 2))  # behind a padding record
    view = ring.peek()
    assert bytes(view) == payload(100, 2)
    ring.release()
    assert ring.statistics().depth_bytes == 0
    assert read_u64(ring, OFF_HEAD) == 160 + 96 + 112


def test_lone_padding_record_is_stepped_over():
    # a padding record published with nothing after it yet: get steps over it, finds the
    # ring empty, and retires the padding
    ring = Ring.anonymous(256)
    ring.put(payload(100))
    ring.get()
    struct.pack_into("<II", data_area(ring), 112, 144 - 8, PAD_TYPE)
    write_u64(ring, OFF_TAIL, 256)
    with pytest.raises(queue.Empty):
        ring.get(block=False)
    assert read_u64(ring, OFF_HEAD) == 256
    assert ring.statistics().depth_bytes == 0
    ring.put(b"at zero")
    assert record_header(ring, 0) == (7, 0)
    assert ring.get() == b"at zero"


# ---- large records (NEEDBUF) -------------------------------------------------------------


def test_records_above_the_scratch_are_read_through_peek():
    """Payloads up to the 64 KiB per-thread scratch come back from the one native call;
    larger ones (NEEDBUF) are copied once straight out of the ring through peek/release."""
    ring = Ring.anonymous(1 << 18)  # max payload 128 KiB - 8
    assert len(ring._local.scratch) == SCRATCH_SIZE == 64 << 10
    exact = payload(SCRATCH_SIZE, 1)
    above = payload(SCRATCH_SIZE + 1, 2)
    big = payload(100_000, 3)
    ring.put(exact)
    ring.put(above, type=6)
    ring.put(big)
    ring.put(b"small")
    assert ring.get() == exact
    assert ring.get_record() == (6, above)
    got = ring.get()
    assert type(got) is bytes and got == big
    assert ring.get() == b"small"
    assert len(ring._local.scratch) == SCRATCH_SIZE  # never grown
    assert ring._local.peeked is None  # every peek was released
    st = ring.statistics()
    assert st.messages_in == st.messages_out == 4 and st.depth_bytes == 0
    assert st.bytes_out == len(exact) + len(above) + len(big) + 5


def test_get_many_with_a_large_first_record():
    ring = Ring.anonymous(1 << 18)
    big = payload(90_000, 3)
    ring.put_many([big, b"after"])
    got = ring.get_many(5)
    assert got[0] == big
    got += _drain(ring)
    assert got == [big, b"after"]


def test_records_above_one_mib_are_read_through_peek():
    ring = Ring.anonymous(4 << 20)  # max payload 2 MiB - 8
    huge = os.urandom((1 << 20) + 1)
    edge = os.urandom(1 << 20)
    ring.put(edge)
    ring.put(huge)
    ring.put(b"tail")
    assert ring.get() == edge
    rtype, data = ring.get_record()
    assert type(data) is bytes and data == huge and rtype == 0
    assert ring._local.peeked is None  # the peek was released
    ring.put(huge, type=8)
    got = ring.get_many(3)
    assert got == [b"tail"]  # a batch stops before a record too large for the scratch
    assert ring.get_many_records(3) == [(8, huge)]
    st = ring.statistics()
    assert st.messages_in == st.messages_out == 4 and st.depth_bytes == 0


def test_large_records_read_in_another_thread():
    ring = Ring.anonymous(1 << 18)
    big = payload(100_000, 4)
    ring.put(big)
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.append(ring.get(timeout=10)))
    t.start()
    t.join(20)
    assert out == [big]
    assert len(ring._local.scratch) == SCRATCH_SIZE


def test_large_record_from_a_child():
    ring = Ring.anonymous(4 << 20)
    huge = os.urandom(3 << 19)

    def child(fd: int) -> None:
        ring.put(huge)

    code, _ = fork_call(child)
    assert code == 0
    assert ring.get(timeout=10) == huge


# ---- statistics --------------------------------------------------------------------------


def test_recover_on_a_healthy_ring_does_nothing():
    ring = Ring.anonymous(256)
    ring.put(b"x")
    assert ring.recover() is False
    assert ring.statistics().abandoned == 0
    assert ring.get() == b"x"


def test_statistics_exact_in_a_quiet_ring():
    ring = Ring.anonymous(256)
    st = ring.statistics()
    assert st == RingStatistics(256, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    tail = head = 0
    msgs_in = msgs_out = bytes_in = bytes_out = 0
    pending: list[int] = []
    rng = random.Random(11)

    def advance(pos: int, n: int) -> int:
        rec = rec_size(n)
        idx = pos % 256
        pad = 256 - idx if idx + rec > 256 else 0
        return pos + pad + rec

    for _ in range(500):
        if rng.random() < 0.5:
            n = rng.randint(0, ring.max_payload)
            end = advance(tail, n)
            try:
                ring.put(bytes(n), block=False)
            except queue.Full:
                assert end - head > 256
                continue
            assert end - head <= 256
            tail = end
            msgs_in += 1
            bytes_in += n
            pending.append(n)
        elif pending:
            n = pending.pop(0)
            assert len(ring.get(block=False)) == n
            # the head moves past the record and any padding before it
            head = advance(head, n)
            msgs_out += 1
            bytes_out += n
        st = ring.statistics()
        assert (st.messages_in, st.messages_out) == (msgs_in, msgs_out)
        assert (st.bytes_in, st.bytes_out) == (bytes_in, bytes_out)
        assert st.depth == len(pending) == ring.qsize()
        assert st.depth_bytes == tail - head
        assert st.consumer_waits == st.consumer_wakes == st.producer_wakes == 0
        assert st.abandoned == st.consumers_recovered == 0


def test_failed_non_blocking_calls_do_not_count_as_waits():
    """waits count times a side *waited* (docs/internals/ring.md: "producer waits")."""
    ring = Ring.anonymous(256)
    with pytest.raises(queue.Empty):
        ring.get(block=False)
    _fill(ring, 50)
    with pytest.raises(queue.Full):
        ring.put(b"x", block=False)
    st = ring.statistics()
    del ring  # (a failing assertion must not keep the ring in a frame: see the gc test)
    assert st.consumer_waits == 0
    assert st.producer_waits == 0


def test_waits_and_wakes_are_counted():
    ring = Ring.anonymous(256, spin_ns=0)
    with pytest.raises(queue.Empty):
        ring.get(timeout=0.02)
    assert ring.statistics().consumer_waits >= 1
    started = threading.Event()
    got: list[bytes] = []

    def consumer() -> None:
        started.set()
        got.append(ring.get(timeout=20))

    t = threading.Thread(target=consumer)
    t.start()
    started.wait(10)
    # wait until the consumer is asleep on the futex: its registration shows in the count
    deadline = time.monotonic() + 10
    while read_u64(ring, lib.SHMIPC_RING_OFF_DATA_WAITERS) & 0xFFFFFFFF == 0:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    ring.put(b"x")
    t.join(20)
    assert got == [b"x"]
    assert ring.statistics().consumer_wakes >= 1


# ---- garbage collection ------------------------------------------------------------------


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("how", ["anonymous", "named", "at"])
def test_a_ring_in_a_reference_cycle_is_collected_safely(how):
    """A Ring only reachable from a reference cycle (an exception's traceback, a failing
    test's frame, ring.attr = ring) must be collected by gc without crashing, and a named
    one's segment unlinked."""
    result = _run(
        f"""
        import gc, os
        from shmipc import Region
        from shmipc.ring import Ring
        how = {how!r}
        if how == "anonymous":
            ring = Ring.anonymous(256)
        elif how == "named":
            ring = Ring.create(256)
        else:
            ring = Ring.at(Region.anonymous(4096), 0, create=True, capacity=256)
        name = ring.name
        ring.put(b"x")
        ring.cycle = ring
        del ring
        gc.collect()
        print("collected", name is None or not os.path.exists("/dev/shm/" + name))
        """
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.split() == ["collected", "True"]


# ---- pickling ----------------------------------------------------------------------------


def test_named_ring_pickles_by_name(shm_name):
    ring = Ring.create(1024, name=shm_name)
    try:
        clone = pickle.loads(pickle.dumps(ring))
        try:
            assert clone.name == shm_name and clone.capacity == 1024
            ring.put(b"x")
            assert clone.get() == b"x"
        finally:
            clone.close()
        assert os.path.exists(os.path.join(SHM, shm_name))  # the clone is only an attacher
    finally:
        ring.close()


def test_named_ring_passes_to_a_spawned_child(shm_name):
    ctx = multiprocessing.get_context("spawn")
    ring = Ring.create(4096, name=shm_name)
    parent_conn, child_conn = ctx.Pipe()
    try:
        ring.put(b"first")
        ring.put(b"second")
        p = ctx.Process(target=spawn_echo, args=(ring, 2, child_conn))
        p.start()
        child_conn.close()
        assert parent_conn.poll(30)
        assert parent_conn.recv() == [b"first", b"second"]
        p.join(30)
        assert p.exitcode == 0
        assert ring.get_record(timeout=5)[0] == 7
        assert os.path.exists(os.path.join(SHM, shm_name))  # the child never unlinked
    finally:
        parent_conn.close()
        ring.close()


def test_anonymous_ring_refuses_to_pickle():
    ring = Ring.anonymous(256)
    with pytest.raises(TypeError, match="anonymous"):
        pickle.dumps(ring)
    ctx = multiprocessing.get_context("spawn")
    with pytest.raises(TypeError):
        ctx.Process(target=print, args=(ring,)).start()


# ---- corrupted control blocks ------------------------------------------------------------


CORRUPTIONS = {
    "magic": (lambda r: write_u32(r, lib.SHMIPC_RING_OFF_MAGIC, 0x12345678), CorruptedError),
    "magic-zero": (lambda r: write_u32(r, lib.SHMIPC_RING_OFF_MAGIC, 0), CorruptedError),
    "version": (
        lambda r: write_u32(r, lib.SHMIPC_RING_OFF_VERSION, lib.SHMIPC_RING_VERSION + 1),
        LayoutMismatch,
    ),
    "version-zero": (lambda r: write_u32(r, lib.SHMIPC_RING_OFF_VERSION, 0), LayoutMismatch),
    "capacity-not-pow2": (
        lambda r: write_u64(r, lib.SHMIPC_RING_OFF_CAPACITY, 1000),
        CorruptedError,
    ),
    "capacity-zero": (lambda r: write_u64(r, lib.SHMIPC_RING_OFF_CAPACITY, 0), CorruptedError),
    "capacity-tiny": (lambda r: write_u64(r, lib.SHMIPC_RING_OFF_CAPACITY, 32), CorruptedError),
    "capacity-too-big": (
        lambda r: write_u64(r, lib.SHMIPC_RING_OFF_CAPACITY, 1 << 20),
        CorruptedError,
    ),
    "capacity-huge": (
        lambda r: write_u64(r, lib.SHMIPC_RING_OFF_CAPACITY, 1 << 63),
        CorruptedError,
    ),
    "tail-unaligned": (lambda r: write_u64(r, OFF_TAIL, 4), CorruptedError),
    "head-unaligned": (
        lambda r: (write_u64(r, OFF_TAIL, 16), write_u64(r, OFF_HEAD, 12)),
        CorruptedError,
    ),
    "head-past-tail": (lambda r: write_u64(r, OFF_HEAD, 8), CorruptedError),
    "tail-too-far": (lambda r: write_u64(r, OFF_TAIL, 1024 + 8), CorruptedError),
    "tail-wrapped-around": (lambda r: write_u64(r, OFF_TAIL, 2**64 - 8), CorruptedError),
}


@pytest.mark.parametrize("what", sorted(CORRUPTIONS))
def test_corrupted_control_block_on_attach(shm_name, what):
    corrupt, error = CORRUPTIONS[what]
    ring = Ring.create(1024, name=shm_name)
    try:
        saved = bytes(control(ring))
        corrupt(ring)
        with pytest.raises(error):
            Ring.attach(shm_name)
        with pytest.raises(error):
            Ring.at(ring.region, 0, create=False)
        control(ring)[:] = saved
        with Ring.attach(shm_name) as ok:
            ok.put(b"fine")
        assert ring.get() == b"fine"
    finally:
        ring.close()


def test_full_ring_positions_are_consistent(shm_name):
    ring = Ring.create(256, name=shm_name)
    try:
        _fill(ring, 50)
        assert read_u64(ring, OFF_TAIL) - read_u64(ring, OFF_HEAD) == 256
        with Ring.attach(shm_name) as other:  # tail - head == capacity is valid
            assert len(_drain(other)) == 4
    finally:
        ring.close()


def test_corrupted_record_headers_raise_corrupted_error():
    ring = Ring.anonymous(256)
    cases = [
        (struct.pack("<II", 300, 0), "length past the end"),
        (struct.pack("<II", 5, 0x10000), "type above 0xFFFF"),
        (struct.pack("<II", 40, PAD_TYPE), "padding not reaching the end"),
        (struct.pack("<II", 0xFFFFFFFF, 0), "length near 4 GiB"),
        (struct.pack("<II", 100, 0), "length past the tail"),
    ]
    for header, why in cases:
        ring.put(b"12345678")
        saved = bytes(data_area(ring)[0:8])
        data_area(ring)[0:8] = header
        for call in (
            lambda: ring.get(block=False),
            lambda: ring.get_many(3, block=False),
            lambda: ring.peek(block=False),
        ):
            with pytest.raises(CorruptedError):
                call()
        data_area(ring)[0:8] = saved
        assert ring.get() == b"12345678", why
        write_u64(ring, OFF_TAIL, 0)
        write_u64(ring, OFF_HEAD, 0)
        write_u64(ring, lib.SHMIPC_RING_OFF_C_TAIL_CACHE, 0)
        write_u64(ring, lib.SHMIPC_RING_OFF_P_HEAD_CACHE, 0)


def test_corrupted_positions_of_a_live_ring_raise_corrupted_error():
    ring = Ring.anonymous(256)
    ring.put(b"x")
    write_u64(ring, OFF_TAIL, 17)
    with pytest.raises(CorruptedError):
        ring.get(block=False)
    with pytest.raises(CorruptedError):
        ring.put(b"y", block=False)
    write_u64(ring, OFF_TAIL, 16)
    with pytest.raises(CorruptedError):
        ring.get(block=False)  # the consumers' cached view of the tail is still the bad one
    write_u64(ring, lib.SHMIPC_RING_OFF_C_TAIL_CACHE, 16)
    assert ring.get() == b"x"
    write_u64(ring, OFF_HEAD, 1 << 40)  # far ahead of the tail
    with pytest.raises(CorruptedError):
        ring.get(block=False)
    write_u64(ring, lib.SHMIPC_RING_OFF_P_HEAD_CACHE, 1 << 40)
    with pytest.raises(CorruptedError):
        ring.put(bytes(100), block=False)


# ---- threads -----------------------------------------------------------------------------


def test_four_threads_exactly_once():
    """Two producers (put; put_many + reserve/commit) and two consumers (get; get_many +
    peek/release) share a small ring: every message arrives once, each producer's in order."""
    ring = Ring.anonymous(1024)
    per_producer = 3000
    total = 2 * per_producer
    received: list[list[tuple[int, int]]] = [[], []]
    count_lock = threading.Lock()
    consumed = [0]
    done = threading.Event()
    errors: list[BaseException] = []

    def record(pid: int, seq: int) -> bytes:
        return struct.pack("<II", pid, seq) + bytes(seq % 50)

    def producer0() -> None:
        for seq in range(per_producer):
            ring.put(record(0, seq), timeout=20)

    def producer1() -> None:
        seq = 0
        while seq < per_producer:
            if seq % 2:
                batch = [record(1, s) for s in range(seq, min(seq + 5, per_producer))]
                ring.put_many(batch, timeout=20)
                seq += len(batch)
            else:
                rec = record(1, seq)
                ring.reserve(len(rec), timeout=20)[:] = rec
                ring.commit()
                seq += 1

    def note(me: int, data: bytes | memoryview) -> None:
        pid, seq = struct.unpack_from("<II", data)
        assert len(data) == 8 + seq % 50
        received[me].append((pid, seq))
        with count_lock:
            consumed[0] += 1
            if consumed[0] == total:
                done.set()

    def consumer0() -> None:
        while not done.is_set():
            try:
                note(0, ring.get(timeout=0.05))
            except queue.Empty:
                pass

    def consumer1() -> None:
        i = 0
        while not done.is_set():
            i += 1
            try:
                if i % 2:
                    for data in ring.get_many(4, timeout=0.05):
                        note(1, data)
                else:
                    view = ring.peek(timeout=0.05)
                    try:
                        note(1, bytes(view))
                    finally:
                        ring.release()
            except queue.Empty:
                pass

    def guarded(fn):
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)
                done.set()

        return run

    threads = [
        threading.Thread(target=guarded(f)) for f in (producer0, producer1, consumer0, consumer1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    everything = sorted(received[0] + received[1])
    assert everything == sorted((p, s) for p in (0, 1) for s in range(per_producer))
    for mine in received:  # each consumer sees each producer's messages in order
        for p in (0, 1):
            seqs = [s for q, s in mine if q == p]
            assert seqs == sorted(seqs)
    st = ring.statistics()
    assert st.messages_in == st.messages_out == total
    assert st.depth == st.depth_bytes == 0


def test_a_closed_ring_handle_raises_closed():
    """close() drops the handle: every later call says so (the memory stays mapped while
    the object lives, so a thread still inside a call never touches unmapped memory)."""
    ring = Ring.anonymous(1024)
    ring.put(b"x")
    ring.close()
    for call in (
        lambda: ring.put(b"y"),
        lambda: ring.get(block=False),
        lambda: ring.put_many([b"a"]),
        lambda: ring.get_many(4, block=False),
        lambda: ring.reserve(4),
        lambda: ring.peek(block=False),
        ring.statistics,
        ring.qsize,
    ):
        with pytest.raises(Closed):
            call()
