"""The Port of csrc/fastpath.c: the rings' per-message hot paths as CPython methods.

A ``Port(mapping, offset, cap, decode, obj_type, raw_type)`` wraps one ring (``mapping`` is the
buffer it lives in, which the port keeps exported while it may touch it). ``put`` returns a status,
``put_many`` a count or a negated status, and the get methods return the payload (decoded when
of ``obj_type``) or raise ``RingMiss(status, type, payload)``. These tests drive a Port on a
``Ring`` directly, below the Queue, and pin each status, each record count and the ring's
statistics; the Queue's own behaviour is tests/unit/queue's, except how it maps a port closed
under a call that is blocked.

Constants: statuses are ``lib.SHMIPC_*``; deadlines are absolute ``time.monotonic_ns()``
values, -1 waits (in slices of ``SHMIPC_SLICE_NS``), 0 does not wait.
"""

from __future__ import annotations

import faulthandler
import os
import struct
import sys
import threading
import time
from array import array
from collections.abc import Callable
from typing import Any

import pytest
from _procs import Child, fork_call, wait_for

from shmipc import Closed, Ring
from shmipc._native import Port, RingMiss, ffi, lib
from shmipc.queue import Queue

pytestmark = pytest.mark.timeout(60)

OK = lib.SHMIPC_OK
SLICE = lib.SHMIPC_SLICE
EMPTY = lib.SHMIPC_EMPTY
FULL = lib.SHMIPC_FULL
TOOBIG = lib.SHMIPC_TOOBIG
CLOSED = lib.SHMIPC_CLOSED
NOTBUF = lib.SHMIPC_NOTBUF
DEADLOCK = lib.SHMIPC_DEADLOCK
SLICE_S = lib.SHMIPC_SLICE_NS / 1e9
TYPE_MAX = lib.SHMIPC_REC_TYPE_MAX

# The Queue's record types: obj records go through decode, raw ones come back as bytes, any
# other type (a spill reference, for the Queue) is handed back through RingMiss.
OBJ, RAW, OTHER = 1, 2, 3

CAP = 4096  # max payload 2040 bytes
SMALL_CAP = 256  # 16 records of 8-byte payloads (16 bytes each) fill it
WAIT_S = 0.05  # deadlines that must pass: generous bounds below, never exact ones


# ---- helpers --------------------------------------------------------------------------------


class Decoder:
    """A decode callable that records what it was given; raises on ``fail_on``."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.calls: list[Any] = []
        self.fail_on = fail_on

    def __call__(self, frame: Any) -> Any:
        self.calls.append(frame)
        if frame == self.fail_on:
            raise ValueError(f"cannot decode {frame!r}")
        return ("obj", frame)


def make_port(ring: Ring, decode: Any = None, obj_type: int = OBJ, raw_type: int = RAW) -> Port:
    return Port(ring._mapping, ring._map_off, ring._cap, decode, obj_type, raw_type)


def after(seconds: float) -> int:
    """An absolute deadline ``seconds`` from now."""
    return time.monotonic_ns() + int(seconds * 1e9)


def miss_of(call: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """The (status, type, payload) of the RingMiss that ``call(*args)`` raises."""
    with pytest.raises(RingMiss) as info:
        call(*args)
    return info.value.args


def u32(ring: Ring, off: int) -> int:
    return lib.shmipc_load32_acquire(ring._ptr, off)


def fill(port: Port, size: int = 8, rtype: int = RAW) -> int:
    """Put ``size``-byte records without waiting until the ring is full; how many went in."""
    n = 0
    while True:
        rc = port.put(bytes([n & 0xFF]) * size, rtype, 0)
        if rc == FULL:
            return n
        assert rc == OK
        n += 1


def get_retrying(call: Callable[..., Any], *args: Any) -> Any:
    """A get method called again for as long as it comes back at the end of a wait slice."""
    while True:
        try:
            return call(*args)
        except RingMiss as exc:
            if exc.args[0] != SLICE:
                raise


def put_retrying(call: Callable[..., int], *args: Any) -> int:
    """put called again for as long as it returns at the end of a wait slice."""
    while True:
        rc = call(*args)
        if rc != SLICE:
            return rc


def put_many_retrying(call: Callable[..., int], *args: Any) -> int:
    """put_many called again for as long as it returns at the end of a wait slice (-SLICE;
    a positive 4 is a count)."""
    while True:
        r = call(*args)
        if r != -SLICE:
            return r


@pytest.fixture
def ring():
    r = Ring.create(CAP)
    yield r
    r.close()


@pytest.fixture
def small_ring():
    r = Ring.create(SMALL_CAP)
    yield r
    r.close()


@pytest.fixture
def dec():
    return Decoder()


@pytest.fixture
def port(ring, dec):
    p = make_port(ring, dec)
    yield p
    p.close()


@pytest.fixture
def small_port(small_ring, dec):
    p = make_port(small_ring, dec)
    yield p
    p.close()


# ---- the module -----------------------------------------------------------------------------


def test_port_and_ringmiss_live_in_the_extension():
    from shmipc import _native_ext

    assert _native_ext.Port is Port and _native_ext.RingMiss is RingMiss
    assert Port.__module__ == "shmipc._native_ext"
    assert issubclass(RingMiss, Exception)
    assert RingMiss.__module__ == "shmipc._native_ext"


# ---- 1. round trips -------------------------------------------------------------------------


def test_put_get_bytes_round_trip(ring, port, dec):
    assert port.put(b"hello", RAW, 0) == OK
    s = ring.statistics()
    assert (s.messages_in, s.bytes_in, s.depth, s.depth_bytes) == (1, 5, 1, 16)
    got = port.get(0)
    assert type(got) is bytes and got == b"hello"
    s = ring.statistics()
    assert (s.messages_out, s.bytes_out, s.depth, s.depth_bytes) == (1, 5, 0, 0)
    assert dec.calls == []
    assert miss_of(port.get, 0) == (EMPTY, 0, None)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b""),
        (bytearray(b"bytearray"), b"bytearray"),
        (memoryview(b"memoryview"), b"memoryview"),
        (memoryview(bytearray(b"xyz-slice"))[4:], b"slice"),
        (memoryview(b"abcdef")[::2].tobytes(), b"ace"),
        (array("i", [1, -2]), struct.pack("=ii", 1, -2)),  # its size in bytes, not in items
        (memoryview(array("H", [1, 2, 3])), struct.pack("=HHH", 1, 2, 3)),
    ],
    ids=["empty", "bytearray", "memoryview", "sliced", "flattened", "array", "mv-of-array"],
)
def test_put_takes_any_contiguous_buffer(ring, port, data, expected):
    assert port.put(data, RAW, 0) == OK
    got = port.get(0)
    assert type(got) is bytes and got == expected
    s = ring.statistics()
    assert (s.messages_in, s.bytes_in, s.messages_out, s.bytes_out) == (1, len(expected)) * 2


@pytest.mark.parametrize(
    "data",
    [memoryview(b"abcdef")[::2], memoryview(bytearray(b"abcdef"))[::-1], "text", 5, None],
    ids=["step-2", "reversed", "str", "int", "none"],
)
def test_put_of_a_non_contiguous_buffer_or_non_buffer_is_notbuf_and_leaves_the_ring(
    ring, port, data
):
    assert port.put(b"before", RAW, 0) == OK
    before = ring.statistics()
    for deadline in (0, -1, after(5)):  # no wait either: the data is refused before the ring
        assert port.put(data, RAW, deadline) == NOTBUF
        assert port.put(data, OBJ, deadline) == NOTBUF
    assert ring.statistics() == before
    assert port.get(0) == b"before"
    assert miss_of(port.get, 0) == (EMPTY, 0, None)


def test_put_too_big_is_toobig_and_leaves_the_ring(ring, port):
    limit = CAP // 2 - 8
    before = ring.statistics()
    assert port.put(b"x" * (limit + 1), RAW, 0) == TOOBIG
    assert port.put(bytearray(limit + 1), RAW, -1) == TOOBIG  # never waits for room
    assert port.put(memoryview(bytes(limit + 8)), RAW, after(5)) == TOOBIG
    assert ring.statistics() == before
    assert port.put(b"y" * limit, RAW, 0) == OK
    assert port.get(0) == b"y" * limit


def test_raw_type_comes_back_as_bytes_without_decode(port, dec):
    assert port.put(b"\x93\x01\x02\x03", RAW, 0) == OK  # even if it looks like a frame
    assert port.get(0) == b"\x93\x01\x02\x03"
    assert dec.calls == []


def test_obj_type_goes_through_decode_once(port, dec):
    assert port.put(bytearray(b"frame"), OBJ, 0) == OK
    assert port.get(0) == ("obj", b"frame")
    assert dec.calls == [b"frame"] and type(dec.calls[0]) is bytes


def test_decode_none_returns_obj_records_as_bytes(ring):
    port = make_port(ring, None)
    try:
        assert port.put(b"frame", OBJ, 0) == OK
        assert port.put(b"raw", RAW, 0) == OK
        assert port.get(0) == b"frame"
        assert port.get(0) == b"raw"
    finally:
        port.close()


def test_port_types_are_its_own(ring):
    """obj_type and raw_type are whatever the Port was made with (not the Queue's 1 and 2)."""
    port = make_port(ring, Decoder(), obj_type=TYPE_MAX, raw_type=0)
    try:
        assert port.put(b"o", TYPE_MAX, 0) == OK
        assert port.put(b"r", 0, 0) == OK
        assert port.put(b"x", RAW, 0) == OK
        assert port.get(0) == ("obj", b"o")
        assert port.get(0) == b"r"
        assert miss_of(port.get, 0) == (OK, RAW, b"x")
    finally:
        port.close()


@pytest.mark.parametrize("rtype", [0, OTHER, 4, TYPE_MAX])
@pytest.mark.parametrize("method", ["get", "get_bytes"])
def test_other_type_is_handed_over_through_ringmiss_exactly_once(ring, port, dec, method, rtype):
    get = getattr(port, method)
    assert port.put(b"spill ref", rtype, 0) == OK
    assert port.put(b"next", RAW, 0) == OK
    exc_args = miss_of(get, 0)
    assert exc_args == (OK, rtype, b"spill ref")
    assert type(exc_args[2]) is bytes
    s = ring.statistics()
    assert (s.messages_out, s.bytes_out, s.depth) == (1, 9, 1)  # taken off the ring
    assert get(0) == b"next"  # not handed over again
    assert miss_of(get, 0) == (EMPTY, 0, None)
    assert dec.calls == []


def test_port_and_ring_calls_share_records(ring, port, dec):
    """Records a Port writes are the Ring's records, and the other way round."""
    ring.put(b"from ring", type=OBJ)
    assert port.put(b"from port", OTHER, 0) == OK
    assert port.get(0) == ("obj", b"from ring")
    assert ring.get_record(block=False) == (OTHER, b"from port")
    ring.put_many([b"a", b"b"], type=RAW)
    assert port.put_many([b"c", b"d"], 0, OBJ, 0) == 2
    assert port.get_many(3, 0) == [b"a", b"b", ("obj", b"c")]
    assert ring.get_many_records(5, block=False) == [(OBJ, b"d")]
    assert ring.statistics().depth == 0


def test_two_ports_on_one_ring(ring):
    a = make_port(ring, Decoder())
    b = make_port(ring, None)
    try:
        assert a.put(b"1", OBJ, 0) == OK
        assert b.put(b"2", OBJ, 0) == OK
        assert b.get(0) == b"1"
        assert a.get(0) == ("obj", b"2")
    finally:
        a.close()
        b.close()


# ---- 2. get_bytes ---------------------------------------------------------------------------


def test_get_bytes_returns_obj_and_raw_records_undecoded(port, dec):
    assert port.put(b"frame", OBJ, 0) == OK
    assert port.put(b"raw", RAW, 0) == OK
    assert port.put(b"", OBJ, 0) == OK
    got = [port.get_bytes(0) for _ in range(3)]
    assert got == [b"frame", b"raw", b""]
    assert all(type(g) is bytes for g in got)
    assert dec.calls == []
    assert miss_of(port.get_bytes, 0) == (EMPTY, 0, None)


# ---- 3. get_many ----------------------------------------------------------------------------


def test_get_many_takes_at_most_max_items(ring, port):
    items = [b"m%d" % i for i in range(10)]
    assert port.put_many(items, 0, RAW, 0) == 10
    assert port.get_many(3, 0) == items[:3]
    assert ring.statistics().messages_out == 3
    assert port.get_many(1, 0) == items[3:4]
    assert port.get_many(100, 0) == items[4:]
    s = ring.statistics()
    assert (s.messages_out, s.bytes_out, s.depth, s.depth_bytes) == (10, 20, 0, 0)
    assert miss_of(port.get_many, 5, 0) == (EMPTY, 0, None)


@pytest.mark.parametrize(
    "types",
    [
        [OBJ, OBJ, OBJ],
        [RAW, RAW, RAW],
        [OBJ, RAW, OBJ, RAW, RAW],
        [RAW, OBJ, OBJ, RAW, OBJ],
        [RAW, RAW, RAW, OBJ],
        [OBJ, RAW],
    ],
    ids=["obj", "raw", "obj-first", "raw-first", "late-change", "two"],
)
def test_get_many_keeps_order_and_decodes_only_obj_records(ring, port, dec, types):
    payloads = [b"p%d" % i for i in range(len(types))]
    for p, t in zip(payloads, types, strict=True):
        assert port.put(p, t, 0) == OK
    expected = [("obj", p) if t == OBJ else p for p, t in zip(payloads, types, strict=True)]
    assert port.get_many(len(types) + 5, 0) == expected
    assert dec.calls == [p for p, t in zip(payloads, types, strict=True) if t == OBJ]
    assert ring.statistics().messages_out == len(types)


def test_get_many_without_decode_returns_bytes(ring):
    port = make_port(ring, None)
    try:
        for i, t in enumerate([OBJ, RAW, OBJ]):
            assert port.put(b"%d" % i, t, 0) == OK
        assert port.get_many(10, 0) == [b"0", b"1", b"2"]
    finally:
        port.close()


@pytest.mark.parametrize("other", [0, OTHER, TYPE_MAX])
def test_get_many_hands_a_leading_other_type_over_alone(ring, port, dec, other):
    assert port.put(b"ref", other, 0) == OK
    assert port.put(b"after", OBJ, 0) == OK
    assert miss_of(port.get_many, 10, 0) == (OK, other, b"ref")
    s = ring.statistics()
    assert (s.messages_out, s.bytes_out) == (1, 3)
    assert dec.calls == []
    assert port.get_many(10, 0) == [("obj", b"after")]


@pytest.mark.parametrize(
    "before",
    [[RAW], [OBJ], [RAW, RAW], [RAW, OBJ], [OBJ, RAW, RAW], [RAW, OBJ, OBJ]],
    ids=["raw", "obj", "raw-raw", "raw-obj", "obj-raw-raw", "raw-obj-obj"],
)
def test_get_many_stops_before_another_type_in_the_middle(ring, port, dec, before):
    """Whether the other type comes while the batch has one type or after a change of type,
    the batch ends before it and it is the next record read."""
    payloads = [b"b%d" % i for i in range(len(before))]
    for p, t in zip(payloads, before, strict=True):
        assert port.put(p, t, 0) == OK
    assert port.put(b"ref", OTHER, 0) == OK
    assert port.put(b"tail", RAW, 0) == OK
    expected = [("obj", p) if t == OBJ else p for p, t in zip(payloads, before, strict=True)]
    assert port.get_many(100, 0) == expected
    assert ring.statistics().messages_out == len(before)
    assert miss_of(port.get_many, 100, 0) == (OK, OTHER, b"ref")
    assert port.get_many(100, 0) == [b"tail"]
    assert ring.statistics().depth == 0


@pytest.mark.parametrize("max_items", [0, -1, -(2**40)])
def test_get_many_needs_at_least_one_item(ring, port, max_items):
    assert port.put(b"x", RAW, 0) == OK
    before = ring.statistics()
    for deadline in (0, -1):
        with pytest.raises(ValueError, match="max_items must be >= 1"):
            port.get_many(max_items, deadline)
    assert ring.statistics() == before
    assert port.get_many(1, 0) == [b"x"]


def test_get_many_with_a_huge_max_items(small_ring, small_port, dec):
    """A ring holds at most cap/8 records (empty payloads): max_items beyond that is fine,
    and a batch of exactly that many, of both types, comes out whole and in order."""
    n = SMALL_CAP // 8
    for i in range(n):
        assert small_port.put(b"", OBJ if i % 3 == 0 else RAW, 0) == OK
    assert small_port.put(b"", RAW, 0) == FULL
    got = small_port.get_many(sys.maxsize, 0)
    assert got == [("obj", b"") if i % 3 == 0 else b"" for i in range(n)]
    assert len(dec.calls) == len(range(0, n, 3))
    assert small_port.put(b"z", RAW, 0) == OK
    assert small_port.get_many(2**40, 0) == [b"z"]
    assert small_ring.statistics().messages_out == n + 1


def test_get_many_across_the_wrap(small_ring, small_port):
    """A batch whose second record went to index 0 behind a padding record."""
    assert small_port.put(b"a" * 100, RAW, 0) == OK  # 112 bytes at 0
    assert small_port.get(0) == b"a" * 100
    assert small_port.put(b"b" * 40, RAW, 0) == OK  # 48 bytes at 112
    assert small_port.get(0) == b"b" * 40
    # at 160: 48 bytes fit before the end, then 112 do not (96 bytes of padding)
    assert small_port.put_many([b"c" * 40, b"d" * 100], 0, RAW, 0) == 2
    s = small_ring.statistics()
    assert (s.depth, s.depth_bytes) == (2, 48 + 48 + 112)
    assert small_port.get_many(10, 0) == [b"c" * 40, b"d" * 100]
    s = small_ring.statistics()
    assert (s.depth, s.depth_bytes, s.messages_out, s.bytes_out) == (0, 0, 4, 280)


# ---- 4. put_many ----------------------------------------------------------------------------


def test_put_many_from_a_start_index(ring, port, dec):
    frames = [b"a", b"bb", b"ccc", b"dddd"]
    assert port.put_many(frames, 2, OBJ, 0) == 2
    s = ring.statistics()
    assert (s.messages_in, s.bytes_in) == (2, 7)
    assert port.get_many(10, 0) == [("obj", b"ccc"), ("obj", b"dddd")]
    assert port.put_many(frames, 0, RAW, 0) == 4
    assert port.get_many(10, 0) == frames


@pytest.mark.parametrize("start", [4, 5, 2**40, -1, -4, -(2**40)])
def test_put_many_with_nothing_from_start_stores_nothing(ring, port, start):
    before = ring.statistics()
    assert port.put_many([b"a", b"b", b"c", b"d"], start, RAW, 0) == 0
    assert port.put_many([], 0, RAW, -1) == 0
    assert ring.statistics() == before


@pytest.mark.parametrize(
    "odd",
    [bytearray(b"c"), memoryview(b"c"), "c", 3, None, type("B", (bytes,), {})(b"c")],
    ids=["bytearray", "memoryview", "str", "int", "none", "bytes-subclass"],
)
def test_put_many_stops_at_an_item_that_is_not_bytes(ring, port, odd):
    frames = [b"a", b"b", odd, b"d"]
    assert port.put_many(frames, 0, RAW, 0) == 2
    before = ring.statistics()
    assert (before.messages_in, before.bytes_in) == (2, 2)
    for deadline in (0, -1):
        assert port.put_many(frames, 2, RAW, deadline) == -NOTBUF
    assert ring.statistics() == before
    assert port.put_many(frames, 3, RAW, 0) == 1
    assert port.get_many(10, 0) == [b"a", b"b", b"d"]


def test_put_many_with_a_first_frame_too_big(ring, port):
    limit = CAP // 2 - 8
    before = ring.statistics()
    for deadline in (0, -1, after(5)):
        assert port.put_many([b"x" * (limit + 1), b"small"], 0, RAW, deadline) == -TOOBIG
    assert ring.statistics() == before
    assert port.put_many([b"x" * limit], 0, RAW, 0) == 1


def test_put_many_stops_before_a_later_frame_too_big(ring, port):
    big = b"x" * (CAP // 2 - 7)
    frames = [b"a", b"b", big, b"c"]
    assert port.put_many(frames, 0, RAW, 0) == 2
    assert port.put_many(frames, 2, RAW, 0) == -TOOBIG
    assert port.put_many(frames, 3, RAW, 0) == 1
    assert port.get_many(10, 0) == [b"a", b"b", b"c"]


def test_put_many_fills_what_room_there_is_then_is_full(small_ring, small_port):
    frames = [b"%08d" % i for i in range(20)]  # 8 bytes: 16 bytes a record, 16 fit
    assert small_port.put_many(frames, 0, RAW, 0) == 16
    s = small_ring.statistics()
    assert (s.messages_in, s.bytes_in, s.depth_bytes) == (16, 128, SMALL_CAP)
    assert small_port.put_many(frames, 16, RAW, 0) == -FULL
    assert small_port.put_many(frames, 16, RAW, 1) == -FULL  # a deadline already past
    assert small_ring.statistics().producer_waits == 0  # neither is a wait
    assert small_port.get_many(3, 0) == frames[:3]
    assert small_port.put_many(frames, 16, RAW, 0) == 3  # as many as there is room for
    assert small_port.get_many(100, 0) == frames[3:19]
    assert small_port.put_many(frames, 19, RAW, 0) == 1
    assert small_port.get_many(100, 0) == frames[19:]
    s = small_ring.statistics()
    assert (s.messages_in, s.messages_out, s.bytes_in, s.bytes_out) == (20, 20, 160, 160)


def test_put_many_respects_a_message_limit():
    ring = Ring.create(CAP, max_count=3)
    port = make_port(ring)
    try:
        frames = [b"a", b"b", b"c", b"d", b"e"]
        assert port.put_many(frames, 0, RAW, 0) == 3
        assert port.put_many(frames, 3, RAW, 0) == -FULL
        assert port.put(b"d", RAW, 0) == FULL
        assert port.get(0) == b"a"
        assert port.put_many(frames, 3, RAW, 0) == 1
        assert port.get_many(10, 0) == [b"b", b"c", b"d"]
        assert port.put_many(frames, 4, RAW, 0) == 1
        assert port.get(0) == b"e"
    finally:
        port.close()
        ring.close()


def test_put_many_keeps_the_order_across_calls(small_ring, small_port):
    """put_many's loop as the Queue runs it, with a consumer taking a few at a time."""
    frames = [b"f%03d" % i + b"." * (i % 23) for i in range(200)]
    got: list[bytes] = []
    done = 0
    while done < len(frames):
        r = small_port.put_many(frames, done, RAW, 0)
        if r > 0:
            done += r
        else:
            assert r == -FULL
            got.extend(small_port.get_many(5, 0))
    while len(got) < len(frames):
        got.extend(small_port.get_many(7, 0))
    assert got == frames


# ---- 5. without waiting, and deadlines ------------------------------------------------------


_GETS = {
    "get": lambda p, d: p.get(d),
    "get_bytes": lambda p, d: p.get_bytes(d),
    "get_many": lambda p, d: p.get_many(4, d),
}


@pytest.mark.parametrize("get", list(_GETS.values()), ids=list(_GETS))
def test_get_on_an_empty_ring_without_waiting(ring, port, get):
    for deadline in (0, 1):  # 1: long past
        start = time.monotonic()
        assert miss_of(get, port, deadline) == (EMPTY, 0, None)
        assert time.monotonic() - start < 1.0
    assert ring.statistics().consumer_waits == 0  # a call that may not wait never waits


def test_put_on_a_full_ring_without_waiting(small_ring, small_port):
    assert fill(small_port) == 16
    before = small_ring.statistics()
    for deadline in (0, 1):
        assert small_port.put(b"x" * 8, RAW, deadline) == FULL
        assert small_port.put(bytearray(8), RAW, deadline) == FULL
        assert small_port.put_many([b"x"], 0, RAW, deadline) == -FULL
    assert small_ring.statistics() == before
    assert before.producer_waits == 0


@pytest.mark.parametrize("get", list(_GETS.values()), ids=list(_GETS))
def test_get_waits_until_the_deadline(ring, port, get):
    start = time.monotonic_ns()
    assert miss_of(get, port, start + int(WAIT_S * 1e9)) == (EMPTY, 0, None)
    elapsed = (time.monotonic_ns() - start) / 1e9
    assert WAIT_S <= elapsed < 2.0, elapsed
    assert ring.statistics().consumer_waits == 1


@pytest.mark.parametrize(
    "put",
    [
        lambda p, d: p.put(b"x" * 8, RAW, d),
        lambda p, d: p.put(memoryview(bytearray(8)), RAW, d),
        lambda p, d: -p.put_many([b"x" * 8], 0, RAW, d),
    ],
    ids=["bytes", "buffer", "put_many"],
)
def test_put_waits_until_the_deadline(small_ring, small_port, put):
    fill(small_port)
    start = time.monotonic_ns()
    assert put(small_port, start + int(WAIT_S * 1e9)) == FULL
    elapsed = (time.monotonic_ns() - start) / 1e9
    assert WAIT_S <= elapsed < 2.0, elapsed
    assert small_ring.statistics().producer_waits == 1


@pytest.mark.parametrize("far", [-1, 5.0], ids=["forever", "5s"])
def test_a_long_wait_comes_back_after_one_slice(ring, small_ring, port, small_port, far):
    """Waits return to Python every slice (SHMIPC_SLICE) so that signal handlers run; the
    caller calls again with the same deadline."""
    deadline = -1 if far == -1 else after(far)
    for call in (port.get, port.get_bytes, lambda d: port.get_many(3, d)):
        start = time.monotonic()
        assert miss_of(call, deadline) == (SLICE, 0, None)
        assert SLICE_S * 0.9 <= time.monotonic() - start < 2.0
    fill(small_port)
    for call in (
        lambda d: small_port.put(b"x", RAW, d),
        lambda d: -small_port.put_many([b"x"], 0, RAW, d),
    ):
        start = time.monotonic()
        assert call(deadline) == SLICE
        assert SLICE_S * 0.9 <= time.monotonic() - start < 2.0
    assert ring.statistics().consumer_waits == 3
    assert small_ring.statistics().producer_waits == 2


def test_put_with_room_never_waits(ring, port):
    for deadline in (-1, after(5), 0):
        start = time.monotonic()
        assert port.put(b"x", RAW, deadline) == OK
        assert time.monotonic() - start < 1.0
    assert port.put_many([b"y", b"z"], 0, RAW, -1) == 2
    assert port.get_many(10, -1) == [b"x", b"x", b"x", b"y", b"z"]
    s = ring.statistics()
    assert (s.producer_waits, s.consumer_waits) == (0, 0)


# ---- 6. close -------------------------------------------------------------------------------


def test_a_closed_port_refuses_every_call_and_leaves_the_ring(ring, dec):
    port = make_port(ring, dec)
    assert port.put(b"kept", OBJ, 0) == OK
    assert port.close() is None
    before = ring.statistics()
    for deadline in (0, -1, after(5)):
        start = time.monotonic()
        assert port.put(b"x", RAW, deadline) == CLOSED
        assert port.put(memoryview(b"abc")[::2], RAW, deadline) == CLOSED
        assert port.put_many([b"x"], 0, RAW, deadline) == -CLOSED
        assert port.put_many([1], 5, RAW, deadline) == -CLOSED
        assert miss_of(port.get, deadline) == (CLOSED, 0, None)
        assert miss_of(port.get_bytes, deadline) == (CLOSED, 0, None)
        assert miss_of(port.get_many, 10, deadline) == (CLOSED, 0, None)
        assert time.monotonic() - start < 1.0
    port.close()  # twice is fine
    assert miss_of(port.get, 0) == (CLOSED, 0, None)
    assert ring.statistics() == before
    assert dec.calls == []
    other = make_port(ring, dec)  # the ring itself is untouched
    try:
        assert other.get(0) == ("obj", b"kept")
    finally:
        other.close()


def test_close_with_a_call_blocked_in_another_thread(ring):
    """The blocked call keeps its own copy of the ring (the port's export keeps the mapping):
    it comes back at the end of its slice, and the next call finds the port closed."""
    port = make_port(ring)
    statuses: list[int] = []

    def consumer() -> None:
        while True:
            try:
                port.get(-1)
            except RingMiss as exc:
                statuses.append(exc.args[0])
                if exc.args[0] != SLICE:
                    return
            else:
                statuses.append(-999)
                return

    t = threading.Thread(target=consumer)
    t.start()
    try:
        wait_for(lambda: u32(ring, lib.SHMIPC_RING_OFF_DATA_WAITERS) == 1, 5, "a sleeping get")
        port.close()
        closed = time.monotonic()
    finally:
        port.close()
        t.join(5)
    assert not t.is_alive()
    assert time.monotonic() - closed < 2.0
    assert statuses[-1] == CLOSED and set(statuses[:-1]) <= {SLICE}
    assert ring.statistics().messages_out == 0


def test_the_port_pins_its_mapping_until_the_last_call_leaves():
    """A port holds an export of its mapping (a bytearray here, which cannot resize while
    exported): close() with a call blocked in another thread keeps it until that call
    leaves; with none inside, close() lets go at once (docs/internals/lifetime.md)."""
    mem = bytearray(lib.SHMIPC_RING_HEADER_SIZE + SMALL_CAP)
    ptr = ffi.from_buffer(mem)
    assert lib.shmipc_ring_init(ptr, SMALL_CAP, 0, 0, 0, 10**9) == OK
    ffi.release(ptr)
    port = Port(mem, 0, SMALL_CAP, None, OBJ, RAW)
    with pytest.raises(BufferError):
        mem.append(0)  # exported while the port may use it
    out: list[Any] = []

    def consumer() -> None:
        try:
            port.get(-1)
        except RingMiss as exc:
            out.append(exc.args[0])

    t = threading.Thread(target=consumer)
    t.start()
    try:
        wait_for(lambda: port.inflight == 1, 5, "a call inside the ring")
        port.close()
        assert port.inflight == 1
        with pytest.raises(BufferError):
            mem.append(0)  # the blocked call still uses it
    finally:
        port.close()
        t.join(5)
    assert not t.is_alive()
    assert out == [SLICE] and port.inflight == 0
    mem.append(0)  # let go by the call that left last
    with pytest.raises(RingMiss) as info:
        port.get(0)
    assert info.value.args[0] == CLOSED

    mem2 = bytearray(lib.SHMIPC_RING_HEADER_SIZE + SMALL_CAP)
    port2 = Port(mem2, 0, SMALL_CAP, None, OBJ, RAW)
    port2.close()
    mem2.append(0)  # nothing inside: let go at once


_QUEUE_CALLS = {
    "get": lambda q: q.get(),
    "get_bytes": lambda q: q.get_bytes(),
    "get_many": lambda q: q.get_many(5),
    "put": lambda q: q.put(1),
    "put_bytes": lambda q: q.put_bytes(b"x"),
    "put_many": lambda q: q.put_many([1, b"x"]),
}


@pytest.mark.parametrize("op", list(_QUEUE_CALLS))
def test_queue_call_blocked_without_timeout_raises_closed_when_closed(op):
    """tests/unit/queue covers a closed handle and a get with a timeout that may end in
    Empty; here a call with no timeout, asleep in the port, must end in Closed (the port's
    slice ends, and the Queue sees its handle closed), not wait on or report Empty/Full."""
    q = Queue(1, capacity=CAP)
    if op.startswith("put"):
        q.put(0)  # full: maxsize 1
    waits = "producer_waits" if op.startswith("put") else "consumer_waits"
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(_QUEUE_CALLS[op](q))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_for(lambda: getattr(q.statistics(), waits) >= 1, 5, "a blocked call")
        q.close()
        closed = time.monotonic()
    finally:
        q.close()
        t.join(5)
    assert not t.is_alive()
    assert time.monotonic() - closed < 2.0
    assert len(outcome) == 1 and type(outcome[0]) is Closed, outcome


# ---- 7. the GIL, and large payloads ---------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    ["get-forever", "get-deadline", "get_bytes", "get_many", "put", "put-buffer", "put_many"],
)
def test_a_blocked_call_lets_other_threads_run(small_ring, small_port, op):
    """While a thread sleeps in the port (its sleeper count is 1), this thread keeps running
    Python code: it counts, and then makes the move that wakes the sleeper. Were the GIL held
    during the wait, no other thread could ever see the sleeper count at 1."""
    port, ring = small_port, small_ring
    producer = op.startswith("put")
    n = fill(port) if producer else 0
    deadline = after(5) if op == "get-deadline" else -1
    pair = [b"w" * 8, b"v" * 8]
    calls: dict[str, Callable[[], Any]] = {
        "get-forever": lambda: get_retrying(port.get, deadline),
        "get-deadline": lambda: get_retrying(port.get, deadline),
        "get_bytes": lambda: get_retrying(port.get_bytes, deadline),
        "get_many": lambda: get_retrying(port.get_many, 10, deadline),
        "put": lambda: put_retrying(port.put, b"w" * 8, RAW, deadline),
        "put-buffer": lambda: put_retrying(port.put, bytearray(b"w" * 8), RAW, deadline),
        "put_many": lambda: put_many_retrying(port.put_many, pair, 0, RAW, deadline),
    }
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(calls[op]()))
    sleepers = lib.SHMIPC_RING_OFF_SPACE_WAITERS if producer else lib.SHMIPC_RING_OFF_DATA_WAITERS
    t.start()
    try:
        counted = 0
        limit = time.monotonic() + 10
        while counted < 1000:  # Python code run while the other thread sleeps in the port
            assert time.monotonic() < limit, f"counted {counted} with the other thread asleep"
            if u32(ring, sleepers) == 1:
                counted += 1
        assert not result
        if producer:
            assert port.get_many(100, 0) == [bytes([i]) * 8 for i in range(n)]
        else:
            assert port.put(b"wake", RAW, 0) == OK
    finally:
        t.join(5)
        if t.is_alive():  # a failure above: end the thread before the ring goes
            port.close()
            t.join(5)
    assert not t.is_alive()
    expected = {
        "put": OK,
        "put-buffer": OK,
        "put_many": 2,
        "get_many": [b"wake"],
    }.get(op, b"wake")
    assert result == [expected]
    if producer:
        assert port.get_many(10, 0) == pair[: 2 if op == "put_many" else 1]


BIG = 300 << 10  # above the port's 64 KiB threshold for copying without the GIL


def _big(seed: int, n: int = BIG) -> bytes:
    block = bytes((seed * 37 + i) & 0xFF for i in range(251))
    return (block * (n // 251 + 1))[:n]


def test_large_payloads_round_trip_intact():
    ring = Ring.create(1 << 20)
    dec = Decoder()
    port = make_port(ring, dec)
    try:
        for rnd in range(4):  # the third record of each round moves the wrap point along
            a, b, c = _big(3 * rnd), _big(3 * rnd + 1), _big(3 * rnd + 2, BIG - 5)
            assert port.put(a, RAW, -1) == OK
            assert port.put(bytearray(b), OBJ, -1) == OK
            assert port.get(0) == a
            assert port.get(0) == ("obj", b)
            assert dec.calls.pop() == b
            assert port.put(memoryview(c), RAW, 0) == OK
            assert port.put(b"small", RAW, 0) == OK
            assert port.put(a, OBJ, 0) == OK
            assert port.get_many(10, 0) == [c, b"small", ("obj", a)]
            assert port.put_many([b, c], 0, RAW, 0) == 2
            assert port.get_bytes(0) == b
            assert port.get_many(1, 0) == [c]
        s = ring.statistics()
        assert (s.messages_in, s.messages_out, s.depth) == (28, 28, 0)
        assert s.bytes_in == s.bytes_out == 4 * (4 * BIG + 2 * (BIG - 5) + 5)
    finally:
        port.close()
        ring.close()


def test_large_payload_too_big_for_the_ring(ring, port):
    assert port.put(_big(1), RAW, 0) == TOOBIG
    assert port.put(bytearray(_big(1)), RAW, -1) == TOOBIG
    assert port.put_many([_big(1)], 0, RAW, -1) == -TOOBIG
    assert ring.statistics().messages_in == 0


def test_threads_share_a_port_with_large_and_small_payloads():
    """Two producer threads (large payloads, copied without the GIL, and batches of small
    ones) and a consumer thread on one port: no deadlock between the GIL and the ring's
    locks, each producer's messages arrive whole and in order."""
    ring = Ring.create(1 << 20)
    port = make_port(ring)
    n_big, n_small = 30, 3000
    got: list[bytes] = []
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    def big_producer() -> None:
        for i in range(n_big):
            assert put_retrying(port.put, b"B%04d" % i + _big(i, 200 << 10), RAW, after(20)) == OK

    def small_producer() -> None:
        frames = [b"S%04d" % i for i in range(n_small)]
        done = 0
        while done < n_small:
            r = put_many_retrying(port.put_many, frames, done, RAW, after(20))
            assert r > 0, r
            done += r

    def consumer() -> None:
        k = 0
        while len(got) < n_big + n_small:
            if k % 2:
                got.append(get_retrying(port.get, after(20)))
            else:
                got.extend(get_retrying(port.get_many, 16, after(20)))
            k += 1

    threads = [threading.Thread(target=guarded(f)) for f in (consumer, big_producer)]
    threads.append(threading.Thread(target=guarded(small_producer)))
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join(40)
        assert not any(t.is_alive() for t in threads)
    finally:
        port.close()
        for t in threads:
            t.join(5)
        ring.close()
    assert errors == []
    bigs = [g for g in got if g[:1] == b"B"]
    smalls = [g for g in got if g[:1] == b"S"]
    assert bigs == [b"B%04d" % i + _big(i, 200 << 10) for i in range(n_big)]
    assert smalls == [b"S%04d" % i for i in range(n_small)]


# ---- 8. bad arguments -----------------------------------------------------------------------


def _bad_calls(port: Port) -> list[tuple[str, type[BaseException], Callable[[], object]]]:
    big_type, big_deadline = 0x10000, 2**63
    return [
        ("put()", TypeError, lambda: port.put()),
        ("put/2", TypeError, lambda: port.put(b"x", RAW)),
        ("put/4", TypeError, lambda: port.put(b"x", RAW, 0, 0)),
        ("put kw", TypeError, lambda: port.put(b"x", RAW, deadline_ns=0)),
        ("put type big", ValueError, lambda: port.put(b"x", big_type, 0)),
        ("put type 2**40", ValueError, lambda: port.put(b"x", 2**40, 0)),
        ("put type -1", ValueError, lambda: port.put(b"x", -1, 0)),
        ("put type str", TypeError, lambda: port.put(b"x", "1", 0)),
        ("put type float", TypeError, lambda: port.put(b"x", 1.0, 0)),
        ("put deadline float", TypeError, lambda: port.put(b"x", RAW, 0.5)),
        ("put deadline None", TypeError, lambda: port.put(b"x", RAW, None)),
        ("put deadline str", TypeError, lambda: port.put(b"x", RAW, "0")),
        ("put deadline 2**63", OverflowError, lambda: port.put(b"x", RAW, big_deadline)),
        ("put_many/3", TypeError, lambda: port.put_many([b"x"], 0, RAW)),
        ("put_many/5", TypeError, lambda: port.put_many([b"x"], 0, RAW, 0, 0)),
        ("put_many tuple", TypeError, lambda: port.put_many((b"x",), 0, RAW, 0)),
        ("put_many iter", TypeError, lambda: port.put_many(iter([b"x"]), 0, RAW, 0)),
        ("put_many bytes", TypeError, lambda: port.put_many(b"x", 0, RAW, 0)),
        ("put_many subclass", TypeError, lambda: port.put_many(type("L", (list,), {})(), 0, 1, 0)),
        ("put_many type big", ValueError, lambda: port.put_many([b"x"], 0, big_type, 0)),
        ("put_many start str", TypeError, lambda: port.put_many([b"x"], "0", RAW, 0)),
        ("put_many start float", TypeError, lambda: port.put_many([b"x"], 0.0, RAW, 0)),
        ("put_many deadline float", TypeError, lambda: port.put_many([b"x"], 0, RAW, 0.0)),
        ("get()", TypeError, lambda: port.get()),
        ("get/2", TypeError, lambda: port.get(0, 0)),
        ("get kw", TypeError, lambda: port.get(deadline_ns=0)),
        ("get float", TypeError, lambda: port.get(0.0)),
        ("get None", TypeError, lambda: port.get(None)),
        ("get 2**63", OverflowError, lambda: port.get(big_deadline)),
        ("get_bytes()", TypeError, lambda: port.get_bytes()),
        ("get_bytes float", TypeError, lambda: port.get_bytes(1.5)),
        ("get_many/1", TypeError, lambda: port.get_many(1)),
        ("get_many/3", TypeError, lambda: port.get_many(1, 0, 0)),
        ("get_many zero", ValueError, lambda: port.get_many(0, 0)),
        ("get_many max float", TypeError, lambda: port.get_many(1.0, 0)),
        ("get_many max None", TypeError, lambda: port.get_many(None, 0)),
        ("get_many deadline float", TypeError, lambda: port.get_many(1, 0.0)),
        ("close/1", TypeError, lambda: port.close(0)),
    ]


def test_bad_arguments_raise_and_never_touch_the_ring(ring, port, dec):
    assert port.put(b"first", OBJ, 0) == OK
    before = ring.statistics()
    for what, exc, call in _bad_calls(port):
        with pytest.raises(exc):
            call()
        assert ring.statistics() == before, what
    assert u32(ring, lib.SHMIPC_RING_OFF_P_LOCK) == 0  # neither lock left held
    assert u32(ring, lib.SHMIPC_RING_OFF_C_LOCK) == 0
    assert dec.calls == []
    assert port.get(0) == ("obj", b"first")  # the port still works
    assert port.put(b"x", RAW, 0) == OK


def test_bad_arguments_name_the_call(port):
    with pytest.raises(TypeError, match=r"put\(data, type, deadline_ns\) takes 3 arguments"):
        port.put(b"x", RAW)
    with pytest.raises(TypeError, match=r"takes 4 arguments \(3 given\)"):
        port.put_many([b"x"], 0, RAW)
    with pytest.raises(TypeError, match=r"get\(deadline_ns\) takes 1 arguments \(0 given\)"):
        port.get_bytes()
    with pytest.raises(TypeError, match=r"get_many\(max_items, deadline_ns\)"):
        port.get_many(1)
    with pytest.raises(ValueError, match=r"record type must be in 0\.\.65535"):
        port.put(b"x", 0x10000, 0)
    with pytest.raises(TypeError, match="needs a list of bytes"):
        port.put_many((b"x",), 0, RAW, 0)


def test_port_construction_checks_its_arguments(ring):
    mm, off = ring._mapping, ring._map_off
    before = ring.statistics()
    bad: list[tuple[type[BaseException], Callable[[], object]]] = [
        (TypeError, lambda: Port(0, off, CAP, None, OBJ, RAW)),  # no mapping: no address
        (BufferError, lambda: Port(b"x" * 8192, 0, CAP, None, OBJ, RAW)),  # read-only buffer
        (ValueError, lambda: Port(bytearray(CAP), 0, CAP, None, OBJ, RAW)),  # too small
        (ValueError, lambda: Port(mm, off + 64, CAP, None, OBJ, RAW)),  # past the end
        (ValueError, lambda: Port(mm, off + 8, CAP - 8, None, OBJ, RAW)),  # misaligned
        (ValueError, lambda: Port(mm, -64, CAP, None, OBJ, RAW)),
        (ValueError, lambda: Port(mm, off, CAP - 8, None, OBJ, RAW)),
        (ValueError, lambda: Port(mm, off, 3 * 1024, None, OBJ, RAW)),
        (ValueError, lambda: Port(mm, off, 32, None, OBJ, RAW)),  # a power of two below 64
        (ValueError, lambda: Port(mm, off, 0, None, OBJ, RAW)),
        (TypeError, lambda: Port(mm, off, CAP, 5, OBJ, RAW)),
        (TypeError, lambda: Port(mm, off, CAP, "decode", OBJ, RAW)),
        (TypeError, lambda: Port(mm, off, CAP, None, OBJ)),
        (TypeError, lambda: Port(mm, off, CAP, None, OBJ, RAW, 0)),
        (TypeError, lambda: Port()),
        (TypeError, lambda: Port(mm, "off", CAP, None, OBJ, RAW)),
        (TypeError, lambda: Port(mm, off, float(CAP), None, OBJ, RAW)),
        (TypeError, lambda: Port(mm, off, CAP, None, OBJ, RAW, flags=1)),
        (OverflowError, lambda: Port(mm, off, 2**64 + CAP, None, OBJ, RAW)),  # never wrapped
        (ValueError, lambda: Port(mm, off, CAP, None, 0x10000, RAW)),
        (ValueError, lambda: Port(mm, off, CAP, None, OBJ, 2**32 + RAW)),
        (ValueError, lambda: Port(mm, off, CAP, None, -1, RAW)),
        (TypeError, lambda: Port(mm, off, CAP, None, OBJ, RAW, slow_put=print)),  # no encode
        (TypeError, lambda: Port(mm, off, CAP, None, OBJ, RAW, encode=5)),
    ]
    for exc, make in bad:
        with pytest.raises(exc):
            make()
    with pytest.raises(ValueError, match="power-of-two capacity"):
        Port(mm, off, 0, None, OBJ, RAW)
    with pytest.raises(ValueError, match="does not fit its mapping"):
        Port(mm, off + 64, CAP, None, OBJ, RAW)
    with pytest.raises(TypeError, match="must be callable or None"):
        Port(mm, off, CAP, 5, OBJ, RAW)
    assert ring.statistics() == before
    port = Port(mapping=mm, offset=off, cap=CAP, decode=len, obj_type=OBJ, raw_type=RAW)
    try:
        assert port.put(b"four", OBJ, 0) == OK
        assert port.get(0) == 4
        with pytest.raises(TypeError, match="initialised once"):
            port.__init__(mm, off, CAP, len, OBJ, RAW)
    finally:
        port.close()


# ---- channel-level methods (what Queue binds as put/put_bytes/get/get_bytes) ----------------


class SlowPaths:
    """Records what a channel port hands back to Python."""

    def __init__(self) -> None:
        self.puts: list[tuple[int, Any, int, int]] = []
        self.gets: list[tuple[int, int, Any, int, bool]] = []

    def put(self, status: int, data: Any, rtype: int, deadline: int) -> str:
        self.puts.append((status, data, rtype, deadline))
        return "slow put"

    def get(self, status: int, rtype: int, payload: Any, deadline: int, decode: bool) -> str:
        self.gets.append((status, rtype, payload, deadline, decode))
        return "slow get"


def channel_port(ring: Ring, slow: SlowPaths, *, as_is: bool = True) -> Port:
    return Port(
        ring._mapping,
        ring._map_off,
        ring._cap,
        lambda frame: ("decoded", frame),
        OBJ,
        RAW,
        encode=lambda obj: repr(obj).encode(),
        deadline=lambda timeout: 0,
        slow_put=slow.put,
        slow_get=slow.get,
        bytes_as_is=as_is,
    )


def test_channel_methods_fast_cases(ring):
    slow = SlowPaths()
    port = channel_port(ring, slow)
    try:
        assert port.send({"a": 1}) is None  # framed: OBJ
        assert port.send(b"raw") is None  # exact bytes travel as they are: RAW
        assert port.send(bytearray(b"ba")) is None  # not exact bytes: framed
        assert port.send_bytes(memoryview(b"view")) is None  # any buffer, RAW
        assert port.recv() == ("decoded", b"{'a': 1}")
        assert port.recv(True) == b"raw"
        assert port.recv_bytes(block=False) == b"bytearray(b'ba')"  # undecoded
        assert port.recv_bytes(True, None) == b"view"
        assert slow.puts == slow.gets == []
    finally:
        port.close()


def test_channel_methods_hand_everything_else_to_python(ring):
    slow = SlowPaths()
    port = channel_port(ring, slow)
    try:
        # Empty, without waiting: the status and the deadline (0) go to slow_get.
        assert port.recv(False) == "slow get"
        assert port.recv_bytes(block=False) == "slow get"
        assert slow.gets == [
            (lib.SHMIPC_EMPTY, 0, None, 0, True),
            (lib.SHMIPC_EMPTY, 0, None, 0, False),
        ]
        # A timeout goes through the deadline callable, and the deadline it returns is the
        # one the port waits with and hands on (here 0: no waiting).
        slow.gets.clear()
        assert port.recv(timeout=5) == "slow get"
        assert slow.gets[0][3] == 0
        # A record of another type is handed over whole, decoded or not as asked.
        assert port.put(b"other", 7, 0) == OK
        assert port.recv() == "slow get"
        assert slow.gets[-1] == (OK, 7, b"other", -1, True)
        # Too big for the ring: the status, the data and its type go to slow_put.
        big = b"x" * CAP
        assert port.send_bytes(big, False) == "slow put"
        assert slow.puts[-1] == (lib.SHMIPC_TOOBIG, big, RAW, 0)
        # Not a contiguous buffer: NOTBUF, for Python to flatten.
        odd = memoryview(b"abcdef")[::2]
        assert port.send_bytes(odd) == "slow put"
        assert slow.puts[-1][0] == lib.SHMIPC_NOTBUF and slow.puts[-1][2] == RAW
        # Closed: every method says so through the slow paths.
        port.close()
        assert port.send(1) == "slow put" and slow.puts[-1][0] == lib.SHMIPC_CLOSED
        assert port.recv() == "slow get" and slow.gets[-1][0] == lib.SHMIPC_CLOSED
    finally:
        port.close()


def test_channel_methods_parse_their_arguments_like_queue(ring):
    slow = SlowPaths()
    port = channel_port(ring, slow)
    plain = make_port(ring)  # made without slow paths: no channel methods
    try:
        for call in (
            lambda: port.send(),
            lambda: port.send(1, True, None, 5),
            lambda: port.recv(True, None, 5),
            lambda: port.send(1, block=True, blok=False),
            lambda: port.send(1, True, block=True),
            lambda: port.recv(True, block=False),
            lambda: port.recv(timeout=1, timeout2=2),
            lambda: plain.send(b"x"),
            lambda: plain.recv(),
        ):
            with pytest.raises(TypeError):
                call()
        with pytest.raises(ZeroDivisionError):
            port.recv(block=Truthless())  # block's truth is asked, and may raise
        assert ring.statistics().messages_in == 0
    finally:
        port.close()
        plain.close()


class Truthless:
    def __bool__(self) -> bool:
        raise ZeroDivisionError


# ---- 9. decode raising ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "get_many"])
def test_decode_raising_consumes_the_record_and_the_port_goes_on(ring, method):
    dec = Decoder(fail_on=b"bad")
    port = make_port(ring, dec)
    get = port.get if method == "get" else lambda d: port.get_many(1, d)
    try:
        assert port.put(b"bad", OBJ, 0) == OK
        assert port.put(b"good", OBJ, 0) == OK
        with pytest.raises(ValueError, match="cannot decode b'bad'"):
            get(0)
        s = ring.statistics()
        assert (s.messages_out, s.bytes_out, s.depth) == (1, 3, 1)  # taken, not put back
        expected = ("obj", b"good")
        assert get(0) == (expected if method == "get" else [expected])
        assert dec.calls == [b"bad", b"good"]
        assert port.put(b"again", RAW, 0) == OK
        assert port.get_many(5, 0) == [b"again"]
        assert miss_of(port.get, 0) == (EMPTY, 0, None)
    finally:
        port.close()


def test_a_record_that_fails_to_decode_never_takes_the_batch_with_it(ring):
    """get_many takes the batch off the ring before it decodes: a record that fails to decode
    is counted and dropped, every valid one is delivered in order, and the error is raised by
    the next consumer call (issue 7, item 7)."""
    dec = Decoder(fail_on=b"bad")
    port = make_port(ring, dec)
    try:
        assert port.put_many([b"one", b"two", b"three", b"bad", b"four"], 0, OBJ, 0) == 5
        assert port.put(b"raw", RAW, 0) == OK
        assert port.put(b"ref", OTHER, 0) == OK
        assert port.put(b"last", OBJ, 0) == OK
        got = port.get_many(10, 0)
        assert got == [
            ("obj", b"one"),
            ("obj", b"two"),
            ("obj", b"three"),
            ("obj", b"four"),
            b"raw",
        ]
        assert port.undecodable == 1
        with pytest.raises(ValueError, match="cannot decode b'bad'"):
            port.get_many(10, 0)  # the kept error, before anything is taken
        s = ring.statistics()
        assert (s.messages_out, s.depth) == (6, 2)
        assert miss_of(port.get_many, 10, 0) == (OK, OTHER, b"ref")
        assert port.get_many(10, 0) == [("obj", b"last")]
        # A batch of nothing but bad records raises at once; so does get().
        assert port.put_many([b"bad", b"bad"], 0, OBJ, 0) == 2
        with pytest.raises(ValueError, match="cannot decode"):
            port.get_many(10, 0)
        assert port.undecodable == 3
        assert miss_of(port.get_many, 10, 0)[0] == lib.SHMIPC_EMPTY  # one error, not two
        assert port.put(b"bad", OBJ, 0) == OK
        with pytest.raises(ValueError, match="cannot decode"):
            port.get(0)
        assert port.undecodable == 4
        # The kept error is raised by whichever consumer call comes next.
        assert port.put_many([b"bad", b"five"], 0, OBJ, 0) == 2
        assert port.get_many(10, 0) == [("obj", b"five")]
        with pytest.raises(ValueError, match="cannot decode"):
            port.get_bytes(0)
        assert miss_of(port.get_bytes, 0)[0] == lib.SHMIPC_EMPTY
    finally:
        port.close()


def test_decode_runs_with_the_ring_unlocked(ring):
    """decode may use the port itself (the consumer lock was let go before it runs)."""
    nested: list[Any] = []
    port: Port | None = None

    def decode(frame: bytes) -> Any:
        assert port is not None
        try:
            nested.append(port.get_bytes(0))
        except RingMiss as exc:
            nested.append(exc.args)
        return frame.upper()

    port = make_port(ring, decode)
    try:
        assert port.put_many([b"a", b"b", b"c", b"d"], 0, OBJ, 0) == 4
        assert port.get(0) == b"A"
        assert nested == [b"b"]
        assert port.get_many(1, 0) == [b"C"]
        assert nested == [b"b", b"d"]
        assert port.put(b"e", OBJ, 0) == OK
        assert port.get(0) == b"E"
        assert nested[-1] == (EMPTY, 0, None)
        assert DEADLOCK not in [n[0] for n in nested if isinstance(n, tuple)]
    finally:
        port.close()


# ---- 10. across processes -------------------------------------------------------------------

N_CROSS = 20000
GROUP = 5  # a put_many batch is one group of sequence numbers, all of one type


def _cross_msg(seq: int) -> bytes:
    return struct.pack("<Q", seq) + bytes([seq & 0xFF]) * (seq % 41)


def _cross_type(seq: int) -> int:
    return OBJ if (seq // GROUP) % 2 else RAW


def test_forked_producer_through_a_port_consumer_by_get_many_and_get():
    ring = Ring.create(CAP)  # 4 KiB: the producer fills it and waits, over and over

    def producer(fd: int) -> None:
        port = make_port(ring)  # the child's own Port on the mapping it inherited
        for group in range(N_CROSS // GROUP):
            seqs = range(group * GROUP, (group + 1) * GROUP)
            rtype = _cross_type(seqs[0])
            if group % 3 == 0:
                for s in seqs:
                    rc = put_retrying(port.put, _cross_msg(s), rtype, after(20))
                    assert rc == OK, rc
            else:
                frames = [_cross_msg(s) for s in seqs]
                done = 0
                while done < GROUP:
                    r = put_many_retrying(port.put_many, frames, done, rtype, after(20))
                    assert r > 0, r
                    done += r
        os.write(fd, b"ok")

    port = make_port(ring, lambda b: ("obj", b))
    child = Child(producer)
    got: list[Any] = []
    try:
        k = 0
        while len(got) < N_CROSS:
            if k % 2:
                got.append(get_retrying(port.get, after(20)))
            else:
                got.extend(get_retrying(port.get_many, 1 + k % 37, after(20)))
            k += 1
        code, report = child.finish()
    finally:
        child.kill()
        port.close()
    stats = ring.statistics()
    ring.close()
    assert (code, report) == (0, b"ok")
    assert len(got) == N_CROSS
    for seq, item in enumerate(got):
        msg = _cross_msg(seq)
        if item != (("obj", msg) if _cross_type(seq) == OBJ else msg):
            raise AssertionError(f"message {seq}: {item!r}")
    assert (stats.messages_in, stats.messages_out, stats.depth) == (N_CROSS, N_CROSS, 0)
    assert stats.bytes_in == stats.bytes_out == sum(8 + s % 41 for s in range(N_CROSS))


# ---- a list edited while put_many waits ----------------------------------------------------


def test_put_many_survives_the_list_shrinking_while_it_waits():
    """Run in a forked child (a crash must not take the test run down), on an anonymous ring
    (a crash must not leave a segment in /dev/shm)."""

    def child(fd: int) -> None:
        faulthandler.disable()  # a crash here is expected: no traceback dump on the terminal
        ring = Ring.anonymous(SMALL_CAP)
        port = make_port(ring)
        for _attempt in range(5):  # again if the wait's slice ended before the list shrank
            n = fill(port)
            frames = [b"a", b"b", b"c"]
            result: list[int] = []
            waits = ring.statistics().producer_waits
            t = threading.Thread(
                target=lambda f=frames, r=result: r.append(port.put_many(f, 2, RAW, after(5)))
            )
            t.start()
            wait_for(lambda w=waits: ring.statistics().producer_waits > w, 5, "a waiting put")
            frames.clear()
            assert len(port.get_many(100, 0)) == n  # drained: the producer goes on
            t.join(5)
            assert not t.is_alive()
            stored = port.get_many(100, 0) if ring.statistics().depth else []
            if result != [-SLICE]:
                break
        # the frame it held on to went in alone, or nothing did: either way, no crash
        assert (result, stored) in (([1], [b"c"]), ([0], [])), (result, stored)
        os.write(fd, b"ok")

    code, report = fork_call(child)
    assert (code, report) == (0, b"ok")
