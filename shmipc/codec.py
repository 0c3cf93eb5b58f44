"""Message framing: Python objects to frames of bytes and back.

A *frame* is the bytes of one message, as a channel stores it in a ring record. Three codecs:

- ``"msgpack"`` (the default): msgpack, plus extension (ext) records for the Python types msgpack
  lacks, so that values round-trip exactly, type included. Safe on untrusted input: a hostile or
  corrupt frame makes :func:`decode` raise :class:`~shmipc.errors.CorruptedError`, within time and
  memory bounded by the frame's length.
- ``"pickle"``: any picklable object, for trusted peers only (unpickling runs code).
- ``"raw"``: bytes-like objects in, ``bytes`` out, no framing at all.

Design notes
------------
The hot path is one call into msgpack's C packer or unpacker. Encoding reuses one ``Packer`` per
thread (a ``Packer`` is not thread-safe); ``strict_types=True`` makes every type msgpack would
otherwise coerce (tuple, subclasses, big ints) reach our ``default`` hook, which turns it into an
ext record. Containers inside ext records (a tuple's items, a datetime's tzinfo) are packed as a
nested frame by a fresh packer, one nesting level deeper; both sides refuse more than
:data:`MAX_NESTING` levels, so a hostile frame cannot recurse without bound. Decoding uses
``msgpack.unpackb``, which reads any buffer in place (a read-only memoryview of shared memory
included) and bounds every declared length by the buffer's own length: a frame of n bytes can
never make it allocate more than O(n) per ext nesting level. Decoded values never refer to the
input buffer, so a ring may reuse its record as soon as :func:`decode` returns. More than
:data:`MAX_EQUAL_HASHES` map keys or set members with one hash are refused, so colliding keys
cannot make decoding quadratic (see :func:`decode` for the three tiers). Subclasses of
supported types (IntEnum, OrderedDict, namedtuple, ...) raise ``TypeError`` unless registered:
the receiver could only rebuild the base type, and code relying on the subclass would break there.

Measured costs (Python 3.11, msgpack 1.2.4, the 2-vCPU development machine under load, timeit,
best of 25 x 5 runs) for ``{"id": 1, "name": "x", "vals": [1.0, 2.0]}``: :func:`encode` 0.27 us
(``msgpack.packb`` 0.42 us, a reused ``Packer.pack`` 0.22 us); :func:`decode` 0.41 us
(``msgpack.unpackb`` 0.34 us), the same from a ``memoryview``. Each tuple adds ~0.8 us to encode
and ~0.4 us to decode, each naive or UTC datetime ~0.8 us each way, other aware ones ~2 us.
"""

from __future__ import annotations

import enum
import math
import pickle
import struct
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from functools import partial
from operator import itemgetter
from typing import Any, Protocol, runtime_checkable

from msgpack import ExtType, Packer, unpackb

from .errors import CorruptedError

__all__ = [
    "MAX_EQUAL_HASHES",
    "MAX_NESTING",
    "USER_EXT_CODES",
    "Buffer",
    "Codec",
    "MsgpackCodec",
    "PickleCodec",
    "RawCodec",
    "decode",
    "encode",
    "get_codec",
    "register_type",
    "unregister_type",
]

Buffer = bytes | bytearray | memoryview
"""What decoders accept: any C-contiguous bytes-like object, read-only ones included."""

MAX_NESTING = 32
"""How many ext records may nest inside each other (a tuple in a tuple in a set ...).

Lists and dicts do not count (msgpack bounds those itself). Decoding a frame of n bytes copies at
most ``MAX_NESTING * n`` bytes, which is why the bound is small.
"""

MAX_EQUAL_HASHES = 64
"""How many keys of one map, or members of one set, may share one hash value on decode.

Inserting k keys with equal hashes costs k*k/2 comparisons, and ext-typed keys (big ints
``2**64 + i * (2**61 - 1)``, tuples or frozensets of such, complex numbers, msgpack Timestamps)
can be made to collide at will; a frame with more is refused with ``CorruptedError``, so that
decoding time stays linear in the frame. Honest data stays far below: distinct values share a
hash by chance about once in 2**61, and the most regular case, powers of two, puts at most 35
floats (all of them) or 64 ints below 2**3904 on one hash value.
"""

_FAST_MAP_LEN = 32  # maps up to this long are built by msgpack directly (see decode)

USER_EXT_CODES = range(64, 128)
"""The ext codes :func:`register_type` accepts. 0-63 are shmipc's; msgpack owns -128..-1."""

# --- ext codes shmipc writes (docs/codec.md has the payload of each) -------------------------
_TUPLE = 1  # payload: a nested frame holding a msgpack array of the items
_SET = 2  # same
_FROZENSET = 3  # same
_BIGINT = 4  # two's complement, big-endian, minimal length; only outside [-2**63, 2**64)
_COMPLEX = 5  # >dd: real, imag
_DATETIME = 6  # >HBBBBBIB: y, mo, d, h, mi, s, us, fold; then the tzinfo as a nested frame
_DATE = 7  # >HBB: y, mo, d
_TIME = 8  # >BBBIB: h, mi, s, us, fold; then the tzinfo as a nested frame
_TIMEDELTA = 9  # >iII: days, seconds, microseconds
_TIMEZONE = 10  # >qB: offset in microseconds, has-name flag; then the name in UTF-8
_ZONEINFO = 11  # the IANA key in UTF-8
_NDARRAY = 16  # >I header length; header (nested frame [descr, shape, flags]); the items' bytes
_NPSCALAR = 17  # a numpy scalar, as a 0-d array in the _NDARRAY payload
# Codes 12-15 and 18-63 are reserved for shmipc (18: arrays by reference to pool blocks).

_DATETIME_HEAD = struct.Struct(">HBBBBBIB")
_DATE_BODY = struct.Struct(">HBB")
_TIME_HEAD = struct.Struct(">BBBIB")
_TIMEDELTA_BODY = struct.Struct(">iII")
_TIMEZONE_HEAD = struct.Struct(">qB")
_COMPLEX_BODY = struct.Struct(">dd")
_U32 = struct.Struct(">I")

_NP_FORTRAN = 1  # header flags bit: the items are in Fortran (column-major) order
_NP_KINDS = frozenset("biufcmMSUV")  # dtypes whose items are plain bytes (no pointers)
_NP_MAXDIMS = 64
_ONE_US = timedelta(microseconds=1)
_KEEP_PACKER_BUFFER = 1 << 18  # a thread's packer whose buffer grew past this is replaced


def _ext(code: int, data: bytes) -> ExtType:
    """``ExtType(code, data)`` without its argument checks (0.1 us instead of 0.35 us)."""
    return tuple.__new__(ExtType, (code, data))


@runtime_checkable
class Codec(Protocol):
    """Turns objects into frames and back; ``get_codec`` accepts any object with this shape."""

    name: str

    def encode(self, obj: object) -> bytes:
        """Return the frame for ``obj``; raise ``TypeError`` for what this codec cannot carry."""
        ...

    def decode(self, data: Buffer) -> object:
        """Return the object in ``data``; raise ``CorruptedError`` for a frame that breaks rules."""
        ...


# --- encoding ----------------------------------------------------------------------------------

_tls = threading.local()  # .pack: this thread's reused Packer.pack


def _new_packer(depth: int, surrogates: bool) -> Packer:
    """A packer whose ``default`` hook encodes ext values found ``depth`` levels down."""
    return Packer(
        default=_DEFAULTS[surrogates][depth],
        strict_types=True,
        unicode_errors="surrogatepass" if surrogates else None,
        buf_size=256 if depth else 1 << 16,
    )


def _thread_pack() -> Callable[[object], bytes]:
    pack = _new_packer(0, False).pack
    _tls.pack = pack
    return pack


def encode(obj: object) -> bytes:
    """Encode ``obj`` into a msgpack frame; ``TypeError`` if it holds an unsupported type."""
    try:
        pack = _tls.pack
    except AttributeError:
        pack = _thread_pack()
    try:
        frame = pack(obj)
    except UnicodeEncodeError:
        return _encode_slow(obj, surrogates=True)
    except BufferError as exc:
        raise _not_contiguous(exc) from exc
    if len(frame) > _KEEP_PACKER_BUFFER:
        _tls.pack = _new_packer(0, False).pack  # msgpack never shrinks a packer's buffer
    return frame


def _encode_slow(obj: object, surrogates: bool) -> bytes:
    # For a str with lone surrogates (os.fsdecode of a non-UTF-8 name): rare, so kept off the
    # fast path, where the error handler would cost ~30% more per str.
    try:
        return _new_packer(0, surrogates).pack(obj)
    except BufferError as exc:
        raise _not_contiguous(exc) from exc


def _not_contiguous(exc: BufferError) -> TypeError:
    return TypeError(f"cannot encode a non-contiguous buffer ({exc}): pass bytes(view) instead")


def _pack_nested(obj: object, depth: int, surrogates: bool) -> bytes:
    """Pack the contents of an ext value found at ``depth`` as a frame of its own."""
    if depth >= MAX_NESTING:
        raise ValueError(
            f"cannot encode ext values (tuple, set, ...) nested over {MAX_NESTING} deep"
        )
    return _new_packer(depth + 1, surrogates).pack(obj)


def _enc_tuple(obj: Any, depth: int, surrogates: bool) -> ExtType:
    return _ext(_TUPLE, _pack_nested(list(obj), depth, surrogates))


def _enc_set(obj: Any, depth: int, surrogates: bool) -> ExtType:
    return _ext(_SET, _pack_nested(list(obj), depth, surrogates))


def _enc_frozenset(obj: Any, depth: int, surrogates: bool) -> ExtType:
    return _ext(_FROZENSET, _pack_nested(list(obj), depth, surrogates))


def _enc_bigint(obj: Any, depth: int, surrogates: bool) -> ExtType:
    # Reached only when the packer overflows: the value is outside [-2**63, 2**64).
    size = ((obj if obj >= 0 else ~obj).bit_length() + 8) // 8
    return _ext(_BIGINT, obj.to_bytes(size, "big", signed=True))


def _enc_complex(obj: Any, depth: int, surrogates: bool) -> ExtType:
    return _ext(_COMPLEX, _COMPLEX_BODY.pack(obj.real, obj.imag))


def _enc_tzinfo(tz: tzinfo | None, depth: int, surrogates: bool) -> bytes:
    if tz is None:
        return b""
    if tz is timezone.utc:  # the common case, kept off the nested packer (~1 us each way)
        return _UTC_FRAME
    return _pack_nested(tz, depth, surrogates)


def _enc_datetime(obj: Any, depth: int, surrogates: bool) -> ExtType:
    head = _DATETIME_HEAD.pack(
        obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold
    )
    return _ext(_DATETIME, head + _enc_tzinfo(obj.tzinfo, depth, surrogates))


def _enc_date(obj: Any, depth: int, surrogates: bool) -> ExtType:
    return _ext(_DATE, _DATE_BODY.pack(obj.year, obj.month, obj.day))


def _enc_time(obj: Any, depth: int, surrogates: bool) -> ExtType:
    head = _TIME_HEAD.pack(obj.hour, obj.minute, obj.second, obj.microsecond, obj.fold)
    return _ext(_TIME, head + _enc_tzinfo(obj.tzinfo, depth, surrogates))


def _enc_timedelta(obj: Any, depth: int, surrogates: bool) -> ExtType:
    return _ext(_TIMEDELTA, _TIMEDELTA_BODY.pack(obj.days, obj.seconds, obj.microseconds))


def _enc_timezone(obj: Any, depth: int, surrogates: bool) -> ExtType:
    args = obj.__getinitargs__()  # (offset,) or (offset, name): tells an explicit name apart
    head = _TIMEZONE_HEAD.pack(args[0] // _ONE_US, len(args) > 1)
    name = args[1].encode("utf-8", "surrogatepass") if len(args) > 1 else b""
    return _ext(_TIMEZONE, head + name)


_ENCODERS: dict[type, Callable[[Any, int, bool], ExtType]] = {
    tuple: _enc_tuple,
    set: _enc_set,
    frozenset: _enc_frozenset,
    int: _enc_bigint,
    complex: _enc_complex,
    datetime: _enc_datetime,
    date: _enc_date,
    time: _enc_time,
    timedelta: _enc_timedelta,
    timezone: _enc_timezone,
}

_UTC_FRAME = Packer().pack(_enc_timezone(timezone.utc, 0, False))  # what _pack_nested would make

_NATIVE_TYPES = frozenset(
    {type(None), bool, int, float, str, bytes, bytearray, memoryview, list, dict}
)


def _default(depth: int, surrogates: bool, obj: object) -> ExtType:
    """The packer's hook for every value msgpack does not carry natively under strict types."""
    encoder = _ENCODERS.get(type(obj))
    if encoder is not None:
        return encoder(obj, depth, surrogates)
    zoneinfo = sys.modules.get("zoneinfo")
    if zoneinfo is not None and type(obj) is zoneinfo.ZoneInfo:
        if obj.key is None:  # type: ignore[attr-defined]
            raise TypeError("cannot encode a ZoneInfo made from a file (it has no key)")
        return _ext(_ZONEINFO, obj.key.encode())  # type: ignore[attr-defined]
    np = sys.modules.get("numpy")
    if np is not None:
        if type(obj) is np.ndarray:
            return _ext(_NDARRAY, _ndarray_payload(np, obj, depth, surrogates))
        if isinstance(obj, np.generic):
            return _ext(_NPSCALAR, _ndarray_payload(np, np.asarray(obj), depth, surrogates))
    for base in type(obj).__mro__:
        entry = _USER_BY_TYPE.get(base)
        if entry is not None:
            return _ext(entry[0], _call_user_encode(entry[1], obj))
    raise _unsupported(obj)


_DEFAULTS = tuple(
    tuple(partial(_default, depth, surrogates) for depth in range(MAX_NESTING + 1))
    for surrogates in (False, True)
)


def _ndarray_payload(np: Any, arr: Any, depth: int, surrogates: bool) -> bytes:
    dtype = arr.dtype
    _check_dtype(dtype, TypeError)
    if dtype.itemsize == 0 and arr.size:
        raise TypeError(f"cannot encode a numpy array of {dtype}: its items have no bytes")
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        arr = np.array(arr, order="K", copy=True)  # keeps a Fortran-ordered view in F order
    fortran = not arr.flags.c_contiguous
    if dtype.fields is None:
        descr: object = dtype.str
    else:
        from numpy.lib import format as npformat

        descr = npformat.dtype_to_descr(dtype)
    header = _pack_nested(
        [descr, list(arr.shape), _NP_FORTRAN if fortran else 0], depth, surrogates
    )
    if not arr.nbytes:
        return _U32.pack(len(header)) + header
    items = (arr.T if fortran else arr).reshape(-1).view(np.uint8)  # a view: no copy
    return b"".join((_U32.pack(len(header)), header, memoryview(items)))


def _check_dtype(dtype: Any, error: type[Exception]) -> None:
    """Refuse dtypes whose items are not plain bytes (object pointers, StringDType)."""
    if dtype.hasobject or dtype.kind not in _NP_KINDS:
        raise error(
            f"numpy dtype {dtype} holds Python objects or pointers, not plain bytes: convert the "
            "array (e.g. arr.tolist() or arr.astype(str)), or use codec='pickle'"
        )
    if dtype.type.__module__ != "numpy":  # a third-party dtype (bfloat16, ...) would arrive as void
        raise error(f"numpy dtype {dtype} is not one of numpy's own: register_type a wrapper")
    if dtype.fields is not None:
        for field in dtype.fields.values():
            _check_dtype(field[0], error)
    elif dtype.subdtype is not None:
        _check_dtype(dtype.subdtype[0], error)


def _call_user_encode(fn: Callable[[Any], bytes], obj: object) -> bytes:
    # The user's function may call encode() itself: hand it this thread's packer only after
    # our own pack call is over, by making it build a fresh one meanwhile.
    saved = _tls.__dict__.pop("pack", None)
    try:
        data = fn(obj)
    finally:
        if saved is not None:
            _tls.pack = saved
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"the encode function registered for {_type_name(type(obj))} returned "
                f"{_type_name(type(data))}, not bytes"
            )
        data = bytes(data)
    return data


_CONVERSIONS = (
    (dict, "dict(obj)"),
    (list, "list(obj)"),
    (tuple, "tuple(obj)"),
    (bool, "bool(obj)"),
    (int, "int(obj)"),
    (float, "float(obj)"),
    (str, "str(obj)"),
    (bytes, "bytes(obj)"),
)


def _type_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _unsupported(obj: object) -> TypeError:
    hint = ""
    if isinstance(obj, enum.Enum):
        hint = " (for example obj.value)"
    else:
        for base, conversion in _CONVERSIONS:
            if isinstance(obj, base):
                hint = f" (for example {conversion})"
                break
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.ndarray):
        hint = " (for example np.asarray(obj))"
    return TypeError(
        f"cannot encode an object of type {_type_name(type(obj))} with the msgpack codec: "
        "register it with shmipc.codec.register_type(cls, code, encode, decode), use "
        "codec='pickle' (trusted peers only: unpickling runs code), or convert it to a "
        f"supported type first{hint}"
    )


# --- decoding ----------------------------------------------------------------------------------


def decode(data: Buffer) -> object:
    """Decode one msgpack frame; ``CorruptedError`` if it is malformed, truncated or hostile."""
    # unpackb's max_str_len, max_bin_len, max_array_len, max_ext_len default to len(data): a
    # declared length the frame cannot hold fails before allocating. Maps are held to
    # _FAST_MAP_LEN entries on this fast tier (so at most that many keys can collide); a
    # longer map, like any error, sends the frame to the guarded tiers, which decide.
    try:
        return unpackb(
            data,
            ext_hook=_HOOK,
            strict_map_key=False,
            unicode_errors="surrogatepass",
            max_map_len=_FAST_MAP_LEN,
        )
    except (_HashFlood, MemoryError):
        raise  # the same on every tier
    except Exception:
        pass
    return _decode_guarded(data)


def _decode_guarded(data: Buffer) -> object:
    """The frames the fast tier gave up on (a map longer than _FAST_MAP_LEN, or an error).

    First with str/bytes map keys only (their hashes are randomised, so they cannot be made to
    collide), any length; then, if that fails too, with every map built by :func:`_guarded_map`,
    which refuses more than MAX_EQUAL_HASHES keys sharing one hash. Each tier is linear in the
    frame, so decoding stays linear whatever the frame holds."""
    try:
        return unpackb(
            data,
            ext_hook=_HOOKS_BY_MODE[_STRICT][0],
            strict_map_key=True,
            unicode_errors="surrogatepass",
        )
    except (_HashFlood, MemoryError):
        raise
    except Exception:
        pass
    try:
        return unpackb(
            data,
            ext_hook=_HOOKS_BY_MODE[_GUARDED][0],
            strict_map_key=False,
            unicode_errors="surrogatepass",
            object_pairs_hook=_guarded_map,
        )
    except (CorruptedError, MemoryError):
        raise
    except Exception as exc:
        raise _decode_error(data, exc) from exc


class _HashFlood(CorruptedError):
    """Too many keys or members with one hash: every decoding tier would refuse it alike."""


def _check_hashes(items: list[Any], what: str) -> None:
    """Refuse ``items`` (a map's keys or a set's members) if more than MAX_EQUAL_HASHES of them
    share one hash: inserting k colliding keys costs k*k/2 comparisons. Linear: one hash each."""
    # k items sharing a hash make the set of hashes k - 1 smaller: a small shortfall needs no
    # count per hash (the common case: no collision at all).
    if len(items) - len(set(map(hash, items))) < MAX_EQUAL_HASHES:
        return
    worst = max(Counter(map(hash, items)).values(), default=0)
    if worst > MAX_EQUAL_HASHES:
        raise _HashFlood(
            f"{what} of {len(items)} items has {worst} with one hash value, more than "
            f"MAX_EQUAL_HASHES = {MAX_EQUAL_HASHES} (colliding keys would make decoding "
            "quadratic): refused"
        )


def _guarded_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """The guarded tier's map builder: checks the keys' hashes before inserting them."""
    if len(pairs) > MAX_EQUAL_HASHES:
        _check_hashes(list(map(itemgetter(0), pairs)), "map")
    return dict(pairs)


def _decode_error(data: object, exc: Exception) -> Exception:
    try:
        nbytes = memoryview(data).nbytes  # type: ignore[arg-type]
    except TypeError:
        return TypeError(f"decode() needs a bytes-like object, not {_type_name(type(data))}")
    if isinstance(exc, BufferError):
        return TypeError(f"decode() needs a C-contiguous buffer: {exc}")
    if isinstance(exc, RecursionError):
        return CorruptedError(f"frame of {nbytes} bytes nests too deeply for this stack")
    detail = str(exc) or "malformed msgpack"
    return CorruptedError(f"corrupt frame of {nbytes} bytes: {type(exc).__name__}: {detail}")


def _decode_nested(data: Buffer, depth: int, mode: int) -> object:
    """Decode the nested frame inside an ext record found at ``depth``, on ``mode``'s tier."""
    if depth >= MAX_NESTING:
        raise CorruptedError(f"ext values nested over {MAX_NESTING} deep")
    hook = _HOOKS_BY_MODE[mode][depth + 1]
    if mode == _FAST:
        return unpackb(
            data,
            ext_hook=hook,
            strict_map_key=False,
            unicode_errors="surrogatepass",
            max_map_len=_FAST_MAP_LEN,
        )
    if mode == _STRICT:
        return unpackb(data, ext_hook=hook, strict_map_key=True, unicode_errors="surrogatepass")
    return unpackb(
        data,
        ext_hook=hook,
        strict_map_key=False,
        unicode_errors="surrogatepass",
        object_pairs_hook=_guarded_map,
    )


def _ext_hook(mode: int, depth: int, code: int, data: bytes) -> object:
    """msgpack's hook for every ext record; ``data`` is a fresh ``bytes`` copy of the payload."""
    decoder = _DECODERS.get(code)
    try:
        if decoder is not None:
            return decoder(data, depth, mode)
        entry = _USER_BY_CODE.get(code)
        if entry is not None:
            return entry[1](data)
    except (CorruptedError, MemoryError):
        raise
    except Exception as exc:
        what = _EXT_NAMES.get(code) or _type_name(_USER_BY_CODE[code][0])
        raise CorruptedError(
            f"malformed {what} ext record (code {code}, {len(data)} bytes): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if code in USER_EXT_CODES:
        raise CorruptedError(
            f"ext code {code} is not registered in this process: call register_type with the "
            "same class and code in every process"
        )
    raise CorruptedError(f"unknown ext code {code} ({len(data)} bytes)")


# The decoding tiers (see decode): fast (maps of at most MAX_EQUAL_HASHES entries), strict
# (str/bytes map keys only), guarded (every map's keys checked). Nested frames stay on their
# frame's tier.
_FAST, _STRICT, _GUARDED = 0, 1, 2
_HOOKS_BY_MODE = tuple(
    tuple(partial(_ext_hook, mode, depth) for depth in range(MAX_NESTING + 1))
    for mode in (_FAST, _STRICT, _GUARDED)
)
_HOOK = _HOOKS_BY_MODE[_FAST][0]


def _dec_items(data: bytes, depth: int, mode: int) -> list[Any]:
    items = _decode_nested(data, depth, mode)
    if type(items) is not list:
        raise ValueError(f"payload holds {_type_name(type(items))}, not an array")
    return items


def _dec_tuple(data: bytes, depth: int, mode: int) -> tuple[Any, ...]:
    return tuple(_dec_items(data, depth, mode))


def _set_items(data: bytes, depth: int, mode: int) -> list[Any]:
    items = _dec_items(data, depth, mode)
    if len(items) > MAX_EQUAL_HASHES:
        _check_hashes(items, "set")
    return items


def _dec_set(data: bytes, depth: int, mode: int) -> set[Any]:
    return set(_set_items(data, depth, mode))


def _dec_frozenset(data: bytes, depth: int, mode: int) -> frozenset[Any]:
    return frozenset(_set_items(data, depth, mode))


def _dec_bigint(data: bytes, depth: int, mode: int) -> int:
    value = int.from_bytes(data, "big", signed=True)
    if -(1 << 63) <= value < (1 << 64):
        raise ValueError("value fits in 64 bits: it should be a msgpack int")
    if len(data) != ((value if value >= 0 else ~value).bit_length() + 8) // 8:
        raise ValueError("value is not in its shortest form")
    return value


def _dec_complex(data: bytes, depth: int, mode: int) -> complex:
    real, imag = _COMPLEX_BODY.unpack(data)
    return complex(real, imag)


def _dec_tzinfo(data: bytes, offset: int, depth: int, mode: int) -> tzinfo | None:
    if len(data) == offset:
        return None
    if len(data) - offset == len(_UTC_FRAME) and data.endswith(_UTC_FRAME):
        return timezone.utc
    tz = _decode_nested(memoryview(data)[offset:], depth, mode)
    if not isinstance(tz, tzinfo):
        raise ValueError(f"tzinfo slot holds {_type_name(type(tz))}")
    return tz


def _dec_datetime(data: bytes, depth: int, mode: int) -> datetime:
    year, month, day, hour, minute, second, us, fold = _DATETIME_HEAD.unpack_from(data)
    tz = _dec_tzinfo(data, _DATETIME_HEAD.size, depth, mode)
    return datetime(year, month, day, hour, minute, second, us, tz, fold=fold)


def _dec_date(data: bytes, depth: int, mode: int) -> date:
    return date(*_DATE_BODY.unpack(data))


def _dec_time(data: bytes, depth: int, mode: int) -> time:
    hour, minute, second, us, fold = _TIME_HEAD.unpack_from(data)
    tz = _dec_tzinfo(data, _TIME_HEAD.size, depth, mode)
    return time(hour, minute, second, us, tz, fold=fold)


def _dec_timedelta(data: bytes, depth: int, mode: int) -> timedelta:
    days, seconds, us = _TIMEDELTA_BODY.unpack(data)
    if seconds >= 86400 or us >= 1_000_000:
        raise ValueError("seconds or microseconds out of their normalised range")
    return timedelta(days, seconds, us)


def _dec_timezone(data: bytes, depth: int, mode: int) -> timezone:
    offset_us, has_name = _TIMEZONE_HEAD.unpack_from(data)
    offset = timedelta(microseconds=offset_us)
    if has_name > 1 or (not has_name and len(data) > _TIMEZONE_HEAD.size):
        raise ValueError("bad name flag")
    if has_name:
        return timezone(offset, data[_TIMEZONE_HEAD.size :].decode("utf-8", "surrogatepass"))
    return timezone(offset)


def _dec_zoneinfo(data: bytes, depth: int, mode: int) -> tzinfo:
    import zoneinfo

    return zoneinfo.ZoneInfo(data.decode())


def _dec_ndarray(data: bytes, depth: int, mode: int) -> Any:
    try:
        import numpy as np
    except ImportError as exc:
        raise CorruptedError("frame holds a numpy array but numpy is not installed here") from exc
    (header_len,) = _U32.unpack_from(data)
    start = _U32.size + header_len
    if start > len(data):
        raise ValueError(f"header of {header_len} bytes overruns the payload")
    header = _decode_nested(memoryview(data)[_U32.size : start], depth, mode)
    if type(header) is not list or len(header) != 3:
        raise ValueError("header is not [descr, shape, flags]")
    descr, shape, flags = header
    if type(descr) is str:
        dtype = np.dtype(descr)
    else:
        from numpy.lib import format as npformat

        dtype = npformat.descr_to_dtype(descr)
    _check_dtype(dtype, ValueError)
    if type(shape) is not list or len(shape) > _NP_MAXDIMS:
        raise ValueError("shape is not a list of at most 64 sizes")
    if not all(type(n) is int and n >= 0 for n in shape) or flags not in (0, _NP_FORTRAN):
        raise ValueError("bad shape or flags")
    count = math.prod(shape)
    if dtype.itemsize == 0 and count:
        raise ValueError(f"{count} items of {dtype}, which has no bytes")
    if count * dtype.itemsize != len(data) - start:
        raise ValueError(
            f"shape {tuple(shape)} of {dtype} needs {count * dtype.itemsize} bytes, "
            f"payload carries {len(data) - start}"
        )
    arr = np.empty(shape, dtype, order="F" if flags else "C")  # owned and writable
    if count:  # copy bytes, not items: numpy's item copy would skip structs' padding bytes
        items = (arr.T if flags else arr).reshape(-1).view(np.uint8)
        items[...] = np.frombuffer(data, np.uint8, len(data) - start, start)
    return arr


def _dec_npscalar(data: bytes, depth: int, mode: int) -> Any:
    arr = _dec_ndarray(data, depth, mode)
    if arr.ndim:
        raise ValueError("a numpy scalar must be a 0-d array")
    return arr[()]


_DECODERS: dict[int, Callable[[bytes, int, int], Any]] = {
    _TUPLE: _dec_tuple,
    _SET: _dec_set,
    _FROZENSET: _dec_frozenset,
    _BIGINT: _dec_bigint,
    _COMPLEX: _dec_complex,
    _DATETIME: _dec_datetime,
    _DATE: _dec_date,
    _TIME: _dec_time,
    _TIMEDELTA: _dec_timedelta,
    _TIMEZONE: _dec_timezone,
    _ZONEINFO: _dec_zoneinfo,
    _NDARRAY: _dec_ndarray,
    _NPSCALAR: _dec_npscalar,
}

_EXT_NAMES = {
    _TUPLE: "tuple",
    _SET: "set",
    _FROZENSET: "frozenset",
    _BIGINT: "bigint",
    _COMPLEX: "complex",
    _DATETIME: "datetime",
    _DATE: "date",
    _TIME: "time",
    _TIMEDELTA: "timedelta",
    _TIMEZONE: "timezone",
    _ZONEINFO: "zoneinfo",
    _NDARRAY: "numpy array",
    _NPSCALAR: "numpy scalar",
}


# --- the registry of user types ------------------------------------------------------------------

_USER_BY_TYPE: dict[type, tuple[int, Callable[[Any], bytes]]] = {}
_USER_BY_CODE: dict[int, tuple[type, Callable[[bytes], Any]]] = {}
_registry_lock = threading.Lock()


def register_type(
    cls: type, code: int, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]
) -> None:
    """Carry instances of ``cls`` (and of its subclasses) as ext records with ``code``.

    ``encode(obj)`` returns the payload bytes, ``decode(payload)`` rebuilds the object. Every
    process that exchanges such frames must register the same class with the same code. A code
    already taken by another class, a class already under another code, or a type shmipc
    carries itself raise ``ValueError``; registering the same pair again replaces the functions.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_type() needs a class, not {_type_name(type(cls))}")
    if type(code) is not int or code not in USER_EXT_CODES:
        raise ValueError(
            f"ext code {code!r} is outside the user range {USER_EXT_CODES.start}-"
            f"{USER_EXT_CODES.stop - 1} (0-63 are shmipc's, negative codes are msgpack's)"
        )
    if not callable(encode) or not callable(decode):
        raise TypeError("register_type() needs callable encode and decode functions")
    if _is_builtin(cls):
        raise ValueError(f"{_type_name(cls)} is carried by shmipc itself and cannot be registered")
    with _registry_lock:
        taken = _USER_BY_CODE.get(code)
        if taken is not None and taken[0] is not cls:
            raise ValueError(f"ext code {code} is already registered for {_type_name(taken[0])}")
        current = _USER_BY_TYPE.get(cls)
        if current is not None and current[0] != code:
            raise ValueError(f"{_type_name(cls)} is already registered with ext code {current[0]}")
        _USER_BY_TYPE[cls] = (code, encode)
        _USER_BY_CODE[code] = (cls, decode)


def unregister_type(cls: type) -> None:
    """Forget a class given to :func:`register_type`; ``KeyError`` if it was not registered."""
    with _registry_lock:
        code, _ = _USER_BY_TYPE.pop(cls)
        del _USER_BY_CODE[code]


def _is_builtin(cls: type) -> bool:
    if cls is object or cls in _NATIVE_TYPES or cls in _ENCODERS:
        return True
    if cls.__module__ == "zoneinfo" and cls.__qualname__ == "ZoneInfo":
        return True
    np = sys.modules.get("numpy")
    return np is not None and (cls is np.ndarray or issubclass(cls, np.generic))


# --- the codecs ----------------------------------------------------------------------------------


class MsgpackCodec:
    """The default codec: msgpack with ext records, exact round trips, safe on hostile input."""

    name = "msgpack"
    encode = staticmethod(encode)
    decode = staticmethod(decode)

    def __repr__(self) -> str:
        return "<shmipc codec 'msgpack'>"


class PickleCodec:
    """Pickle protocol 5, for objects msgpack cannot carry. Trusted peers only: it runs code."""

    name = "pickle"

    @staticmethod
    def encode(obj: object) -> bytes:
        """Pickle ``obj``; ``TypeError`` if it cannot be pickled."""
        try:
            return pickle.dumps(obj, protocol=5)
        except (pickle.PicklingError, AttributeError) as exc:
            raise TypeError(f"cannot pickle {_type_name(type(obj))}: {exc}") from exc

    @staticmethod
    def decode(data: Buffer) -> object:
        """Unpickle ``data``, running whatever code it names; ``CorruptedError`` if it fails."""
        try:
            return pickle.loads(data)
        except (CorruptedError, MemoryError):
            raise
        except Exception as exc:
            raise _decode_error(data, exc) from exc

    def __repr__(self) -> str:
        return "<shmipc codec 'pickle'>"


class RawCodec:
    """No framing: bytes-like objects in, ``bytes`` out, for callers that serialise themselves."""

    name = "raw"

    @staticmethod
    def encode(obj: object) -> bytes:
        """Return ``obj``'s bytes; ``TypeError`` unless it is bytes-like."""
        if type(obj) is bytes:
            return obj
        try:
            return bytes(memoryview(obj))  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"the raw codec carries bytes-like objects only, not {_type_name(type(obj))}: "
                "encode it yourself or use codec='msgpack'"
            ) from None

    @staticmethod
    def decode(data: Buffer) -> bytes:
        """Return a copy of ``data`` as ``bytes`` (``data`` itself if it is ``bytes``)."""
        if type(data) is bytes:
            return data
        try:
            return bytes(memoryview(data))
        except TypeError:
            raise TypeError(
                f"decode() needs a bytes-like object, not {_type_name(type(data))}"
            ) from None

    def __repr__(self) -> str:
        return "<shmipc codec 'raw'>"


_CODECS: dict[str, Codec] = {
    "msgpack": MsgpackCodec(),
    "pickle": PickleCodec(),
    "raw": RawCodec(),
}


def get_codec(codec: str | Codec = "msgpack") -> Codec:
    """Return the codec named ``codec`` ('msgpack', 'pickle', 'raw'), or ``codec`` itself."""
    if isinstance(codec, str):
        try:
            return _CODECS[codec]
        except KeyError:
            choices = ", ".join(repr(name) for name in _CODECS)
            raise ValueError(
                f"unknown codec {codec!r}: choose one of {choices}, or pass a Codec instance"
            ) from None
    if isinstance(codec, Codec):
        return codec
    raise TypeError(
        f"codec must be a name or an object with name, encode and decode, not "
        f"{_type_name(type(codec))}"
    )
