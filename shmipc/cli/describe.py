"""What a segment holds, decoded from a read-only copy of its bytes (``shmipc inspect``/``ls``).

Everything here reads a ``memoryview`` that :func:`shmipc.cli.segments.read_segment` made
(a private copy or a PROT_READ mapping): it never writes, never waits, never attaches as a
participant and never takes a lock, so looking cannot disturb a running pipeline. Offsets
come from the layout descriptors (``layout.SEGMENT_LAYOUT``, the ring control block's
``SHMIPC_RING_OFF_*`` constants of csrc/shmipc.h, the sync primitives' ``LAYOUT``); a value
read here may be torn by a concurrent writer, so it is shown, never acted upon, and every
offset or length is bounds-checked before it is used. Topic and block pool details come
from ``shmipc.topic.inspect_segment`` / ``shmipc.buffers.inspect_segment`` when those exist.
"""

from __future__ import annotations

import importlib
import struct
from dataclasses import dataclass
from typing import Any

from .. import _proc
from .._native import lib
from ..errors import CorruptedError, LayoutMismatch
from ..layout import LAYOUT_VERSION, MAGIC, SEGMENT_LAYOUT, InitState, Kind, SegmentHeader

__all__ = ["PREFIX_BYTES", "Summary", "describe", "header_dict", "needs_whole", "summarize"]

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_PARKED = lib.SHMIPC_LOCK_PARKED
_NO_CLAIM = (1 << 64) - 1
_CODECS = {1: "msgpack", 2: "pickle", 3: "raw"}  # shmipc.queue's codec ids (header flags)

#: Where the kind-specific details of kinds shmipc.cli does not decode itself come from.
_DELEGATES = {int(Kind.TOPIC): "shmipc.topic", int(Kind.BUFFER_POOL): "shmipc.buffers"}


def kind_name(kind: int) -> str:
    try:
        return Kind(kind).name.lower()
    except ValueError:
        return f"kind {kind}"


def header_dict(header: SegmentHeader) -> dict[str, Any]:
    """The common header as JSON-ready values."""
    try:
        state = InitState(header.init_state).name.lower()
    except ValueError:
        state = f"state {header.init_state}"
    return {
        "magic": header.magic.hex(),
        "layout_version": header.layout_version,
        "kind": kind_name(header.kind),
        "init_state": state,
        "creator_pid": header.creator_pid,
        "creator_start": header.creator_start,
        "total_size": header.total_size,
        "data_offset": header.data_offset,
        "creator_uid": header.creator_uid,
        "flags": header.flags,
        "creator_pidns": header.creator_pidns,
    }


def check_header(view: memoryview, file_size: int) -> SegmentHeader:
    """The header of a segment shmipc can describe; CorruptedError / LayoutMismatch with a
    message saying what is wrong otherwise (the pid namespace is not checked: a segment of
    another namespace is described, with its creator's liveness unknown)."""
    if len(view) < SEGMENT_LAYOUT.size or bytes(view[: len(MAGIC)]) != MAGIC:
        raise CorruptedError("not a shmipc segment (no shmipc header)")
    header = SegmentHeader.unpack(view)
    if header.layout_version != LAYOUT_VERSION:
        raise LayoutMismatch(
            f"layout version {header.layout_version}; this shmipc reads "
            f"{LAYOUT_VERSION}: inspect it with the shmipc version that created it"
        )
    if header.data_offset != SEGMENT_LAYOUT.size:
        raise CorruptedError(
            f"data offset {header.data_offset} in its header, expected "
            f"{SEGMENT_LAYOUT.size} (corrupt header)"
        )
    if header.total_size != file_size:
        raise CorruptedError(
            f"its header says {header.total_size} bytes but the file has {file_size} "
            "(truncated, or a corrupt header)"
        )
    return header


# ---- holders named in shared words -----------------------------------------------------------


def identity(word: int) -> dict[str, Any] | None:
    """A lock word / sleeper slot decoded: thread id, start time (low 32 bits), parked bit,
    and whether that thread lives (shmipc._proc's rules: unknown is never dead)."""
    if not word:
        return None
    return {
        "tid": word & 0x7FFFFFFF,
        "start": word >> 32,
        "parked": bool(word & _PARKED),
        "alive": _proc.identity_state(word).value,
    }


def _u32(view: memoryview, off: int) -> int:
    return int(_U32.unpack_from(view, off)[0])


def _u64(view: memoryview, off: int) -> int:
    return int(_U64.unpack_from(view, off)[0])


def _registry(view: memoryview, off: int, slots: int) -> dict[str, Any]:
    """A sleeper registry: the u32 count and the identities in its slots."""
    who = [identity(_u64(view, off + 8 + 8 * i)) for i in range(slots)]
    return {"count": _u32(view, off), "registered": [w for w in who if w is not None]}


# ---- rings and queues ------------------------------------------------------------------------


def describe_ring(view: memoryview, base: int, extent: int | None = None) -> dict[str, Any]:
    """The ring control block at ``base`` of ``view``: configuration, positions, statistics,
    lock holders, sleepers and the quarantine (docs/internals/ring.md). ``extent``: the
    segment's size when ``view`` holds only its beginning (the data area is not read)."""
    extent = len(view) if extent is None else extent
    header_size = lib.SHMIPC_RING_HEADER_SIZE
    if base % 64 or base + header_size > len(view):
        raise CorruptedError(f"no room for a ring control block at offset {base}")

    def u32(name: str) -> int:
        return _u32(view, base + getattr(lib, "SHMIPC_RING_OFF_" + name))

    def u64(name: str) -> int:
        return _u64(view, base + getattr(lib, "SHMIPC_RING_OFF_" + name))

    magic = u32("MAGIC")
    if magic != lib.SHMIPC_RING_MAGIC:
        raise CorruptedError(f"no ring control block at offset {base} (magic {magic:#x})")
    version = u32("VERSION")
    if version != lib.SHMIPC_RING_VERSION:
        raise LayoutMismatch(
            f"ring layout version {version}; this shmipc reads {lib.SHMIPC_RING_VERSION}"
        )
    cap = u64("CAPACITY")
    if cap < 64 or cap & (cap - 1) or base + header_size + cap > extent:
        raise CorruptedError(
            f"ring capacity {cap} is not a power of two that fits the segment ({extent} bytes)"
        )
    head, tail = u64("C_HEAD"), u64("P_TAIL")
    msgs_in, msgs_out = u64("P_MSGS"), u64("C_MSGS")
    claim, peek = u64("P_CLAIM"), u64("C_PEEK")
    p_lock, c_lock = u64("P_LOCK"), u64("C_LOCK")
    q_owner, q_start, q_end = u64("Q_OWNER"), u64("Q_START"), u64("Q_END")
    revoked_out = bool(q_owner) and (p_lock & ~_PARKED) != q_owner
    span = q_end - q_start if q_end >= q_start else 0
    quarantined = span if revoked_out and 0 < span <= cap and tail != q_start else 0
    consistent = head % 8 == 0 and tail % 8 == 0 and 0 <= tail - head <= cap
    slots = lib.SHMIPC_RING_SLEEPER_SLOTS
    return {
        "offset": base,
        "version": version,
        "capacity": cap,
        "max_count": u64("MAX_COUNT"),
        "spsc": bool(u32("FLAGS") & lib.SHMIPC_RING_SPSC),
        "spin_ns": u64("SPIN_NS"),
        "liveness_ns": u64("LIVENESS_NS"),
        "positions": {
            "head": head,
            "tail": tail,
            "claim": None if claim == _NO_CLAIM else claim,
            "peek": peek,
            "consistent": consistent,  # False: torn by a concurrent writer, or corrupt
        },
        "statistics": {
            "messages_in": msgs_in,
            "messages_out": msgs_out,
            "bytes_in": u64("P_BYTES"),
            "bytes_out": u64("C_BYTES"),
            "depth": max(0, msgs_in - msgs_out),
            "depth_bytes": max(0, tail - head) if consistent else None,
            "producer_waits": u64("P_WAITS"),
            "consumer_waits": u64("C_WAITS"),
            "consumer_wakes": u64("P_WAKES"),
            "producer_wakes": u64("C_WAKES"),
            "abandoned": u64("P_ABANDONED"),
            "consumers_recovered": u64("C_RECOVERED"),
            "revoked": u64("P_REVOKED"),
            "missed_wakes": u64("MISSED_WAKES"),
        },
        "locks": {"producer": identity(p_lock), "consumer": identity(c_lock)},
        "sleepers": {
            "consumers": _registry(view, base + lib.SHMIPC_RING_OFF_DATA_WAITERS, slots),
            "producers": _registry(view, base + lib.SHMIPC_RING_OFF_SPACE_WAITERS, slots),
            "producer_lock": _registry(
                view, base + lib.SHMIPC_RING_OFF_P_LOCK_SLEEPERS, lib.SHMIPC_RING_P_LOCK_SLOTS
            ),
            "consumer_lock": _registry(
                view, base + lib.SHMIPC_RING_OFF_C_LOCK_SLEEPERS, lib.SHMIPC_RING_C_LOCK_SLOTS
            ),
        },
        "quarantine": {
            "owner": identity(q_owner),
            "start": q_start if q_owner else None,
            "end": q_end if q_owner else None,
            "revoked": revoked_out,
            "bytes": quarantined,
        },
    }


# ---- sync primitives -------------------------------------------------------------------------


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def describe_sync(kind: int, view: memoryview, base: int) -> dict[str, Any]:
    """A sync primitive that fills a segment, decoded through its class's LAYOUT."""
    from .. import sync

    cls: Any = {
        Kind.ATOMIC_COUNTER: sync.AtomicCounter,
        Kind.EVENT: sync.Event,
        Kind.SEMAPHORE: sync.Semaphore,
        Kind.LOCK: sync.Lock,
        Kind.BARRIER: sync.Barrier,
    }[Kind(kind)]
    lay = cls.LAYOUT
    if base + lay.size > len(view):
        raise CorruptedError(f"the segment is too small for a {kind_name(kind)}")

    def field(name: str) -> int:
        f = lay.fields[name]
        return (_u64 if f.size == 8 else _u32)(view, base + f.offset)

    if kind == Kind.ATOMIC_COUNTER:
        return {"value": _signed64(field("value"))}
    if kind == Kind.EVENT:
        return {"set": field("flag") == 1, "sleepers": field("waiters")}
    if kind == Kind.SEMAPHORE:
        return {"value": field("count"), "sleepers": field("waiters")}
    if kind == Kind.LOCK:
        return {
            "holder": identity(field("word")),
            "sleepers": field("sleepers"),
            "recoveries": field("recoveries"),
        }
    arrived, epoch = field("arrived"), field("epoch")
    return {
        "parties": field("parties"),
        "waiting": arrived & 0x7FFFFFFF,
        "broken": bool(arrived & 0x80000000),
        "generation": epoch & 0xFFFF,
        "sleepers": field("waiters"),
    }


# ---- kinds other modules describe ------------------------------------------------------------


def _delegate(kind: int, view: memoryview) -> dict[str, Any]:
    module_name = _DELEGATES[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        module = None
    fn = getattr(module, "inspect_segment", None)
    if fn is None:
        return {"unavailable": f"details unavailable ({module_name}.inspect_segment is absent)"}
    result = fn(view)  # read-only view: it cannot write; CorruptedError on nonsense
    if not isinstance(result, dict):
        raise CorruptedError(f"{module_name}.inspect_segment returned {type(result).__name__}")
    return result


#: What ``describe`` needs of a segment whose details shmipc.cli decodes itself.
PREFIX_BYTES = SEGMENT_LAYOUT.size + lib.SHMIPC_RING_HEADER_SIZE


def needs_whole(kind: str) -> bool:
    """Whether ``describe`` needs the whole segment (kinds other modules decode) rather
    than its first PREFIX_BYTES."""
    return kind in {kind_name(k) for k in _DELEGATES}


def describe(view: memoryview, file_size: int) -> dict[str, Any]:
    """Header and kind-specific details of the segment in ``view`` (the whole file, or its
    first PREFIX_BYTES for kinds that ``needs_whole`` says no of). CorruptedError /
    LayoutMismatch with a clear message when it cannot be described."""
    header = check_header(view, file_size)
    out: dict[str, Any] = {"header": header_dict(header), "kind": kind_name(header.kind)}
    base = header.data_offset
    kind = header.kind
    if kind in (Kind.RING, Kind.QUEUE):
        out["ring"] = describe_ring(view, base, file_size)
        if kind == Kind.QUEUE:
            out["codec"] = _CODECS.get(header.flags, f"custom ({header.flags})")
    elif kind in (Kind.ATOMIC_COUNTER, Kind.EVENT, Kind.SEMAPHORE, Kind.LOCK, Kind.BARRIER):
        out["sync"] = describe_sync(kind, view, base)
    elif kind in _DELEGATES:
        out["details"] = _delegate(kind, view)
    elif kind == Kind.REGION:
        out["region"] = {"payload_bytes": header.total_size - base}
    else:
        out["unavailable"] = f"unknown kind {kind}: no details"
    return out


# ---- the few numbers ls and top show ---------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Counters for rates and the depth (queues, rings) or lag (topics) of one segment."""

    messages: int | None = None  # messages put / published so far
    bytes: int | None = None  # payload bytes put so far
    depth: int | None = None  # messages waiting (queues, rings)
    lag: int | None = None  # the largest subscriber lag (topics)
    note: str = ""


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _pool_note(details: dict[str, Any]) -> str:
    """A block pool's ls note: free of total, blocks in use per class, reclaimed."""
    free, size = _as_int(details.get("free_bytes")), _as_int(details.get("size"))
    parts = [f"free {_mib(free)} of {_mib(size)}"] if free is not None and size else []
    classes = details.get("classes")
    used = [
        f"{_mib(c['block_size'])}x{c['in_use']}"
        for c in (classes if isinstance(classes, list) else [])
        if isinstance(c, dict) and _as_int(c.get("in_use")) and _as_int(c.get("block_size"))
    ]
    parts.append("in use " + (" ".join(used) if used else "none"))
    if _as_int(details.get("reclaimed")):
        parts.append(f"reclaimed {details['reclaimed']}")
    if _as_int(details.get("dedicated_segments")):
        parts.append(f"dedicated {details['dedicated_segments']}")
    return ", ".join(parts)


def _mib(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f}M".replace(".0M", "M")
    return f"{n // 1024}K" if n >= 1024 else str(n)


def summarize(described: dict[str, Any]) -> Summary:
    """The ls/top numbers of a described segment (None where the kind has none)."""
    ring = described.get("ring")
    if ring is not None:
        st = ring["statistics"]
        return Summary(st["messages_in"], st["bytes_in"], st["depth"])
    details = described.get("details")
    if isinstance(details, dict):
        if "unavailable" in details:
            return Summary(note="details unavailable")
        if details.get("kind") == "buffer_pool":
            return Summary(note=_pool_note(details))
        subs = details.get("subscribers")
        lags = [
            lag
            for s in (subs if isinstance(subs, list) else [])
            if isinstance(s, dict) and (lag := _as_int(s.get("lag"))) is not None
        ]
        stats = details.get("statistics")
        pick = {**(stats if isinstance(stats, dict) else {}), **details}
        return Summary(
            _as_int(pick.get("published"))
            if "published" in pick
            else _as_int(pick.get("messages")),
            _as_int(pick.get("bytes_published")) or _as_int(pick.get("bytes")),
            None,
            max(lags) if lags else _as_int(pick.get("lag")),
        )
    return Summary()
