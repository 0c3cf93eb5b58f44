"""codec under hypothesis: random values round-trip exactly; random, mutated and truncated frames
decode to a value or raise CorruptedError, never anything else, and quickly."""

from __future__ import annotations

import struct
import sys
import tracemalloc
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import hypothesis.extra.numpy as hnp
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from shmipc.codec import MAX_NESTING, decode, encode
from shmipc.errors import CorruptedError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "codec"))
from codec_helpers import assert_same

pytestmark = pytest.mark.timeout(60)

# A decode that takes longer than this on a frame of a few KiB is a bug (a hang or a blow-up).
FAST = settings(
    deadline=timedelta(milliseconds=500),
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies for values ------------------------------------------------------------------------

texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)  # surrogates too
ints = st.integers() | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1])
floats = st.floats(allow_nan=True, allow_infinity=True)
fixed_zones = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)),
) | st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)),
    texts,
)
zones = st.none() | fixed_zones | st.timezones()
hashable_leaves = (  # no NaN here: a set holding NaN never equals its own copy
    st.none()
    | st.booleans()
    | ints
    | st.floats(allow_nan=False)
    | texts
    | st.binary(max_size=20)
    | st.complex_numbers(allow_nan=False)
    | st.datetimes(timezones=zones)
    | st.dates()
    | st.times(timezones=zones)
    | st.timedeltas()
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: (
        st.lists(inner, max_size=3).map(tuple) | st.frozensets(hashable_leaves, max_size=3)
    ),
    max_leaves=6,
)
arrays = hnp.arrays(
    dtype=hnp.scalar_dtypes()
    | hnp.byte_string_dtypes()
    | hnp.unicode_string_dtypes()
    | hnp.integer_dtypes(endianness=">")
    | hnp.floating_dtypes(endianness=">")
    | hnp.complex_number_dtypes(endianness=">")
    | hnp.datetime64_dtypes(endianness=">"),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
).flatmap(lambda a: st.sampled_from([a, np.asfortranarray(a), a.T, a[::2] if a.ndim else a]))
leaves = (
    hashable_leaves
    | floats
    | st.complex_numbers()
    | st.binary(max_size=20).map(bytearray)
    | arrays
    | hnp.from_dtype(np.dtype("f8"))
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(hashables, inner, max_size=4)
        | st.sets(hashables, max_size=4)
        | st.frozensets(hashables, max_size=4)
    ),
    max_leaves=20,
)


def _expected(value: object) -> object:
    """What decode should return: bytes-likes arrive as bytes, everything else unchanged."""
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, list):
        return [_expected(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_expected(v) for v in value)
    if isinstance(value, dict):
        return {k: _expected(v) for k, v in value.items()}
    return value


def decode_or_corrupted(frame: bytes | bytearray | memoryview) -> None:
    """The one promise to a reader of untrusted frames: a value, or CorruptedError."""
    try:
        decode(frame)
    except CorruptedError as exc:
        assert str(exc)


# --- round trips ----------------------------------------------------------------------------------


@FAST
@given(values)
def test_random_values_round_trip_exactly(value):
    frame = encode(value)
    assert_same(decode(frame), _expected(value))
    assert_same(decode(memoryview(frame)), _expected(value))


# --- hostile frames -------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=2000))
@example(b"\xdd\xff\xff\xff\xff")
@example(b"\x91" * 5000)
def test_random_bytes(frame):
    decode_or_corrupted(frame)
    decode_or_corrupted(memoryview(frame))


@FAST
@given(values, st.data())
def test_mutated_frames(value, data):
    frame = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(frame) - 1, 0)))
        if kind == "flip" and frame:
            frame[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set" and frame:
            frame[at] = data.draw(st.sampled_from([0x00, 0x7F, 0x80, 0xC1, 0xC9, 0xDD, 0xFF]))
        elif kind == "insert":
            frame[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif frame:
            del frame[at : at + data.draw(st.integers(1, 8))]
    decode_or_corrupted(bytes(frame))


@FAST
@given(values, st.data())
def test_truncated_frames_are_always_corrupted(value, data):
    frame = encode(value)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(CorruptedError):
        decode(frame[:cut])  # msgpack is prefix-free: no proper prefix is a whole frame
    with pytest.raises(CorruptedError):
        decode(frame + b"\xc0")  # nor is a frame followed by anything


# Ext records of every code shmipc uses, with random payloads or mutated real ones, so that the
# fuzzing reaches each ext decoder rather than stopping at msgpack's own checks.
SAMPLES = {
    1: (1, "a"),
    2: {1, 2},
    3: frozenset({3}),
    4: 2**100,
    5: 1j,
    6: datetime(2024, 1, 2, tzinfo=timezone(timedelta(hours=1), "X")),
    7: date(2024, 1, 2),
    8: time(1, 2),
    9: timedelta(days=-2, seconds=5),
    10: timezone.utc,
    16: np.arange(6, dtype=">i2").reshape(2, 3),
    17: np.float32(1.5),
}


def _payload(code: int) -> bytes:
    obj = msgpack.unpackb(encode(SAMPLES[code]), ext_hook=msgpack.ExtType, strict_map_key=False)
    assert obj.code == code
    return obj.data


@FAST
@given(
    st.sampled_from([*sorted(SAMPLES), 0, 11, 12, 63, 64, 127, -2, -128]),
    st.binary(max_size=64) | st.sampled_from(sorted(SAMPLES)).map(_payload),
    st.data(),
)
def test_ext_records_with_hostile_payloads(code, payload, data):
    payload = bytearray(payload)
    if payload and data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(payload) - 1))
        payload[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        payload = payload[: data.draw(st.integers(0, len(payload)))]
    frame = b"\xc9" + struct.pack(">Ib", len(payload), code) + payload
    decode_or_corrupted(frame)
    decode_or_corrupted(msgpack.packb([1, {"k": (None,)}])[:-1] + frame)  # inside a container


@FAST
@given(st.integers(MAX_NESTING - 2, MAX_NESTING + 50), st.sampled_from([1, 2, 3, 6]))
def test_deeply_nested_ext_records(depth, code):
    frame = b"\xc0"
    for _ in range(depth):
        if code == 6:  # a datetime whose tzinfo slot holds the next level
            payload = struct.pack(">HBBBBBIB", 2020, 1, 1, 0, 0, 0, 0, 0) + frame
        else:
            payload = b"\x91" + frame
        frame = b"\xc9" + struct.pack(">Ib", len(payload), code) + payload
    decode_or_corrupted(frame)


# --- absurd declared lengths ----------------------------------------------------------------------


def _numpy_frame(shape: list[int], dtype: str, data: bytes) -> bytes:
    header = encode([dtype, shape, 0])
    payload = struct.pack(">I", len(header)) + header + data
    return b"\xc9" + struct.pack(">Ib", len(payload), 16) + payload


@pytest.mark.parametrize(
    "frame",
    [
        b"\xdd\x80\x00\x00\x00",  # an array of 2**31 items
        b"\xdd\xff\xff\xff\xff" + b"\x00" * 64,
        b"\xdf\x80\x00\x00\x00" + b"\x00" * 64,  # a map of 2**31 pairs
        b"\xc6\xff\xff\xff\xff" + b"\x00" * 64,  # a bin of 4 GiB
        b"\xdb\xff\xff\xff\xff" + b"\x00" * 64,  # a str of 4 GiB
        b"\xc9\xff\xff\xff\xff\x10" + b"\x00" * 64,  # an ext of 4 GiB
        b"\xc9\x00\x00\x00\x05\x04\xff\xff\xff\xff",  # a bigint ext declaring more than it has
        _numpy_frame([2**31], "<f8", b"\x00" * 8),  # 16 GiB of items declared
        _numpy_frame([2**31, 2**31, 2**31], "<u1", b""),
        _numpy_frame([2**40], "S0", b""),
        _numpy_frame([1], "V4294967295", b"\x00"),
        _numpy_frame([2**63, 0], "<u1", b""),
    ],
    ids=[
        "array",
        "array-max",
        "map",
        "bin",
        "str",
        "ext",
        "bigint",
        "ndarray",
        "ndarray-3d",
        "S0",
        "huge-void",
        "huge-by-zero",
    ],
)
def test_absurd_declared_lengths_raise_without_allocating(frame):
    tracemalloc.start()
    try:
        with pytest.raises(CorruptedError):
            decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decode allocated {peak} bytes for a {len(frame)}-byte frame"


@FAST
@given(st.lists(st.integers(0, 2**64 - 1), max_size=4), st.binary(max_size=64))
def test_numpy_ext_with_random_shapes(shape, data):
    assume(len(shape) <= 3)
    decode_or_corrupted(_numpy_frame(shape, "<i4", data))


def test_an_empty_array_with_a_huge_side_is_valid_and_allocates_nothing():
    tracemalloc.start()
    try:
        got = decode(_numpy_frame([0, 2**62], "<u1", b""))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.shape == (0, 2**62) and got.size == 0
    assert peak < 1 << 20


# --- hash-colliding keys: time per byte stays bounded (issue 7, item 12) --------------------------

_P = 2**61 - 1  # int hashes are taken modulo this
_EQUAL_HASH_INTS = [5 + j * _P for j in range(1, 9)]  # 8 uint64 values hashing like 5


def _family(kind: str, n: int) -> tuple[list[object], list[object]]:
    """``n`` distinct keys of ``kind`` that all share one hash, and ``n`` of the same kind and
    encoded size whose hashes differ."""
    import itertools

    if kind == "bigint":
        return [2**64 + i * _P for i in range(n)], [2**64 + i * (_P + 1) for i in range(n)]
    if kind == "tuple-of-bigint":
        return [(2**64 + i * _P,) for i in range(n)], [(2**64 + i * (_P + 1),) for i in range(n)]
    if kind == "tuple-of-ints":  # plain uint64 items: only the tuple is an ext value
        combos = list(itertools.islice(itertools.product(_EQUAL_HASH_INTS, repeat=4), n))
        return combos, [(2**62 + i, 2**62 + 1, 2**62 + 2, 2**62 + 3) for i in range(len(combos))]
    if kind == "frozenset":
        return (
            [frozenset([2**64 + i * _P]) for i in range(n)],
            [frozenset([2**64 + i * (_P + 1)]) for i in range(n)],
        )
    assert kind == "complex"  # 2.0 ** (61 * k) all hash to 1
    powers = [2.0 ** (61 * k) for k in range(-17, 17)]
    pairs = list(itertools.islice(itertools.product(powers, repeat=2), n))
    return [complex(a, b) for a, b in pairs], [complex(i + 0.5, 1.5) for i in range(len(pairs))]


def _best_times(*frames: bytes) -> list[float]:
    """Each frame's fastest decode in 5 interleaved rounds (so that load hits them alike)."""
    import time as _time

    best = [float("inf")] * len(frames)
    for _ in range(5):
        for i, frame in enumerate(frames):
            start = _time.perf_counter()
            decode_or_corrupted(frame)
            best[i] = min(best[i], _time.perf_counter() - start)
    return best


@settings(
    deadline=None,
    max_examples=12,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    kind=st.sampled_from(["bigint", "tuple-of-bigint", "tuple-of-ints", "frozenset", "complex"]),
    n=st.integers(2000, 4000),
    container=st.sampled_from(["map", "set", "map-in-tuple"]),
    value=st.none() | st.integers(0, 2**64 - 1) | st.text(max_size=8),
)
@pytest.mark.timeout(300)
def test_colliding_keys_decode_in_time_linear_in_the_frame(kind, n, container, value):
    colliding, honest = _family(kind, n)

    def frame(keys: list[object]) -> bytes:
        if container == "set":
            return encode(set(keys))
        mapping = dict.fromkeys(keys, value)
        return encode((mapping,) if container == "map-in-tuple" else mapping)

    hostile, control = frame(colliding), frame(honest)
    assert abs(len(hostile) - len(control)) <= len(control) // 10
    # The bound is relative, measured here from an honest frame of the same size and shape,
    # and generous (10x); quadratic decoding of these 2 000+ keys costs 25x and more.
    hostile_time, control_time = _best_times(hostile, control)
    assert hostile_time / len(hostile) < 10 * control_time / len(control)
