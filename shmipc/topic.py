"""``shmipc.Topic``: a broadcast channel in shared memory (publish once, every subscriber reads).

A topic is one named segment: a control block, a table of subscriber slots and a byte ring
of records. Publishers (any number, in any processes) append records under one robust lock,
so every subscriber sees each publisher's messages in that publisher's order; subscribers
read lock-free, each through its own slot (owner identity, cursor on its own cache line).
The hot paths are one native call each (csrc/topic.c, ``TopicPort``); this module holds the
policy: creation and validation, subscribing, the liveness pass that evicts dead and stopped
subscribers, errors, statistics. docs/topics.md is the user's guide.

Policies:

* ``"block"``: a publisher waits (``queue.Full`` after ``timeout``) for the slowest live
  subscriber. A blocked publisher runs a liveness pass every wait slice (100 ms): a
  subscriber whose process is dead is freed at once; one whose process it has seen stopped
  (SIGSTOP, state T) for the whole liveness interval is evicted. So no publisher blocks longer
  than the liveness interval (plus a slice) on a subscriber that cannot read.
* ``"overwrite"``: publishers never wait. A subscriber lapped by them gets
  :class:`~shmipc.Lagged` with ``missed``, the exact number of messages it lost, and resumes
  at the oldest message still in the ring.

INVARIANTS of the slot protocol (the C side, csrc/topic.c, states them with the memory orders
as T1..T7; tests/unit/topic/test_slot_model.py checks every interleaving of its steps):

* A slot's word is ``pid << 32 | generation << 8 | state``. It leaves FREE only by a CAS to
  CLAIMING naming the claimer; every other change is a CAS from the exact word observed, and
  every return to FREE bumps the generation: a stale observer can never take a reused slot.
* A subscriber becomes ACTIVE under the publisher lock with its cursor at the tail: it sees
  exactly the messages published after ``subscribe()`` returned (and perhaps some published
  while it ran), and no publisher planned to overwrite them before it counted.
* Only a process known to be DEAD (shmipc._proc; "cannot tell" is alive) loses its slot to
  FREE; only one seen STOPPED for the whole interval is EVICTED (a slow reader that runs is
  never evicted). An evicted subscriber learns it on its next call (:class:`~shmipc.Evicted`),
  including a copy it was making when it was stopped: the copy is discarded, never returned.
* This module writes no shared word itself except through the native steps.
"""

from __future__ import annotations

import queue as _stdlib_queue
import struct
import sys
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from . import _proc
from . import topic_pool as _tp
from ._native import TopicMiss, TopicPort, ffi, lib
from .codec import Codec, get_codec
from .errors import (
    Closed,
    CorruptedError,
    Evicted,
    Lagged,
    LayoutMismatch,
    MessageTooLarge,
    ShmipcError,
)
from .layout import CACHE_LINE, SEGMENT_LAYOUT, Kind, Layout, SegmentHeader
from .region import ATTACH_TIMEOUT, Region
from .ring import DEFAULT_SPIN_NS
from .sync import deadline_ns, take_over_if_dead
from .topic_pool import TopicPool

__all__ = [
    "Publisher",
    "Subscriber",
    "SubscriberStatistics",
    "Topic",
    "TopicStatistics",
    "inspect_segment",
]

Full = _stdlib_queue.Full
Empty = _stdlib_queue.Empty

# ---- layout ------------------------------------------------------------------------------------


def _control_layout() -> Layout:
    lay = Layout("topic control block")
    lay.add("magic", 4, "I")
    lay.add("version", 4, "I")
    lay.add("capacity", 8, "Q")
    lay.add("max_subscribers", 4, "I")
    lay.add("policy", 4, "I")
    lay.add("liveness_ns", 8, "Q")
    lay.add("spin_ns", 8, "Q")
    lay.pad_to(CACHE_LINE)
    lay.add("lock", 16, None, align=8)  # robust lock: holder identity u64, sleepers u32
    lay.add("room", 8, "Q")  # publishers' cached bound: slowest cursor + capacity
    lay.add("publisher_waits", 8, "Q")
    lay.pad_to(CACHE_LINE)
    lay.add("tail", 8, "Q")  # the published line: end of published records
    lay.add("published", 8, "Q")  # sequence numbers handed out
    lay.add("oldest", 8, "Q")  # oldest intact record
    lay.pad_to(CACHE_LINE)
    lay.add("data_waiters", 4, "I")
    lay.pad_to(CACHE_LINE)
    lay.add("space_waiters", 4, "I")
    lay.add("space_seq", 4, "I")
    lay.add("space_need", 8, "Q")  # the cursor a sleeping publisher waits for
    lay.pad_to(CACHE_LINE)
    lay.add("laps", 8, "Q")
    lay.add("missed", 8, "Q")
    lay.add("evictions", 8, "Q")
    lay.pad_to(512)
    return lay


def _slot_layout() -> Layout:
    lay = Layout("topic subscriber slot")
    lay.add("word", 8, "Q")  # pid << 32 | generation << 8 | state
    lay.add("start", 8, "Q")  # owner's start time (0: not known yet)
    lay.pad_to(CACHE_LINE)
    lay.add("cursor", 8, "Q")  # its own line: written by the owner only
    lay.add("expected", 8, "Q")
    lay.pad_to(2 * CACHE_LINE)
    return lay


CONTROL = _control_layout()
SLOT = _slot_layout()

# The C side spells the same offsets (csrc/shmipc.h): both must agree, or nothing works.
for _name, _const in (
    ("magic", "MAGIC"),
    ("version", "VERSION"),
    ("capacity", "CAPACITY"),
    ("max_subscribers", "MAX_SUBS"),
    ("policy", "POLICY"),
    ("liveness_ns", "LIVENESS_NS"),
    ("spin_ns", "SPIN_NS"),
    ("lock", "LOCK"),
    ("room", "ROOM"),
    ("publisher_waits", "PUB_WAITS"),
    ("tail", "TAIL"),
    ("published", "PUBLISHED"),
    ("oldest", "OLDEST"),
    ("data_waiters", "DATA_WAITERS"),
    ("space_waiters", "SPACE_WAITERS"),
    ("space_seq", "SPACE_SEQ"),
    ("space_need", "SPACE_NEED"),
    ("laps", "LAPS"),
    ("missed", "MISSED"),
    ("evictions", "EVICTIONS"),
):
    assert CONTROL[_name] == getattr(lib, f"SHMIPC_TOPIC_OFF_{_const}"), _name
assert CONTROL.size == lib.SHMIPC_TOPIC_HEADER_SIZE
for _name, _const in (("word", "WORD"), ("start", "START"), ("cursor", "CURSOR")):
    assert SLOT[_name] == getattr(lib, f"SHMIPC_TOPIC_SLOT_OFF_{_const}"), _name
assert SLOT["expected"] == lib.SHMIPC_TOPIC_SLOT_OFF_EXPECTED
assert SLOT.size == lib.SHMIPC_TOPIC_SLOT_SIZE

HEADER_SIZE = CONTROL.size
SLOT_SIZE = SLOT.size
REC_HEADER = lib.SHMIPC_TOPIC_REC_HEADER

FREE, CLAIMING, ACTIVE, EVICTED = (
    lib.SHMIPC_TOPIC_FREE,
    lib.SHMIPC_TOPIC_CLAIMING,
    lib.SHMIPC_TOPIC_ACTIVE,
    lib.SHMIPC_TOPIC_EVICTED,
)
_STATE_NAMES = {FREE: "free", CLAIMING: "claiming", ACTIVE: "active", EVICTED: "evicted"}
POLICIES = {"block": lib.SHMIPC_TOPIC_BLOCK, "overwrite": lib.SHMIPC_TOPIC_OVERWRITE}
_POLICY_NAMES = {v: k for k, v in POLICIES.items()}

# Record kinds: a codec frame, or raw bytes (publish_bytes; an exact bytes object publish()
# gets with a built-in codec, which decodes it to itself anyway).
K_OBJ = 1
K_BYTES = 2

# Which codec a topic was made with, kept in its segment header's flags (low byte); the
# policy is in the next byte (informational: the control block's is the one used).
_CODEC_IDS = {"msgpack": 1, "pickle": 2, "raw": 3}
_CODEC_NAMES = {v: k for k, v in _CODEC_IDS.items()}
_POOLED_FLAG = 1 << 16  # segment header flag: records may name blocks of a pool

DEFAULT_LIVENESS = 1.0
MAX_SUBSCRIBERS = 65536

_OK = lib.SHMIPC_OK
_SLICE = lib.SHMIPC_SLICE
_INTERRUPTED = lib.SHMIPC_INTERRUPTED
_TIMEDOUT = lib.SHMIPC_TIMEDOUT
_FULL = lib.SHMIPC_FULL
_EMPTY = lib.SHMIPC_EMPTY
_TOOBIG = lib.SHMIPC_TOOBIG
_CORRUPT = lib.SHMIPC_CORRUPT
_CLOSED = lib.SHMIPC_CLOSED
_NOTBUF = lib.SHMIPC_NOTBUF
_NOTOWNER = lib.SHMIPC_NOTOWNER
_LAGGED = lib.SHMIPC_LAGGED
_EVICTED = lib.SHMIPC_EVICTED
_POOLED_AHEAD = lib.SHMIPC_TOPIC_POOLED_AHEAD
_U64 = (1 << 64) - 1
#: Linux's PID_MAX_LIMIT: no process id is ever larger (a slot naming one is nonsense).
_PID_MAX_LIMIT = 1 << 22


def _deadline(timeout: float | None) -> int:
    """A native deadline: -1 none, 0 "never wait" (timeout <= 0), else absolute ns."""
    if timeout is not None and timeout <= 0:
        return 0
    return deadline_ns(timeout)


def footprint(capacity: int, max_subscribers: int) -> int:
    """Bytes a topic needs after the segment header: control block, slots, ring."""
    return HEADER_SIZE + max_subscribers * SLOT_SIZE + capacity


def _check_params(capacity: int, policy: str, max_subscribers: int, liveness: float) -> None:
    if capacity < 256 or capacity & (capacity - 1) or capacity > 1 << 40:
        raise ValueError(f"capacity must be a power of two in 256 .. 2**40, got {capacity}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be 'block' or 'overwrite', got {policy!r}")
    if not 1 <= max_subscribers <= MAX_SUBSCRIBERS:
        raise ValueError(
            f"max_subscribers must be in 1 .. {MAX_SUBSCRIBERS}, got {max_subscribers}"
        )
    if not liveness > 0:
        raise ValueError(f"liveness_interval must be a positive number of seconds, got {liveness}")


# ---- statistics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriberStatistics:
    """One occupied slot of a topic's subscriber table (a snapshot)."""

    slot: int
    pid: int
    state: str  # "active", "evicted" or "claiming"
    lag: int  # messages published and not yet received
    cursor: int  # byte position it reads next


@dataclass(frozen=True)
class TopicStatistics:
    """A snapshot of a topic's counters, read without any lock."""

    capacity: int
    policy: str
    published: int  # sequence numbers handed out (messages published)
    laps: int  # Lagged reports (policy "overwrite")
    missed: int  # messages the lagged subscribers missed, in all
    evictions: int  # subscribers taken back from dead or stopped processes
    publisher_waits: int  # times a publisher waited for room (policy "block")
    depth_bytes: int  # bytes between the oldest intact record and the tail
    subscribers: list[SubscriberStatistics] = field(default_factory=list)


# ---- the topic ---------------------------------------------------------------------------------


class Topic:
    """A broadcast channel: every subscriber sees every message published after it
    subscribed; a publisher writes each message once whatever the number of subscribers.

    Make one with :meth:`create`, attach it elsewhere with :meth:`attach` (or pickle it: it
    travels by name, with its codec). ``publisher()`` and ``subscribe()`` give the handles
    that publish and receive.
    """

    def __init__(self) -> None:
        raise TypeError("use Topic.create(...) or Topic.attach(name)")

    @classmethod
    def create(
        cls,
        name: str | None = None,
        *,
        capacity: int = 1 << 20,
        policy: Literal["block", "overwrite"] = "block",
        max_subscribers: int = 64,
        codec: str | Codec = "msgpack",
        mode: int = 0o600,
        liveness_interval: float = DEFAULT_LIVENESS,
        spin_ns: int = DEFAULT_SPIN_NS,
        pool: Any = None,
        zero_copy_threshold: int = 64 * 1024,
    ) -> Topic:
        """A new topic in a new named segment (a random name if ``name`` is None).

        ``capacity``: bytes of the record ring (a power of two; a message takes its length
        plus 16 bytes, rounded up to 16, and may be at most half of it). ``policy``: "block"
        (publishers wait for the slowest live subscriber) or "overwrite" (they never wait;
        lapped subscribers get Lagged). ``liveness_interval``: seconds a subscriber may stay
        stopped before a blocked publisher evicts it. ``pool`` (a :class:`~shmipc.BufferPool`)
        publishes numpy arrays and bytes-like payloads of ``zero_copy_threshold`` bytes or
        more, and loans, as handles to pool blocks (docs/topics.md "Pooled topics"; policy
        "block" only).
        """
        _check_params(capacity, policy, max_subscribers, liveness_interval)
        _check_pool(pool, policy)
        codec_obj = get_codec(codec)
        codec_id = _CODEC_IDS.get(codec, 0) if isinstance(codec, str) else 0
        liveness_ns = (
            2**63 - 1 if liveness_interval >= 2**63 / 1e9 else int(liveness_interval * 1e9)
        )

        def init(region: Region) -> None:
            base, off = region.pointer(0)
            lib.shmipc_topic_init(
                base + off,
                capacity,
                max_subscribers,
                POLICIES[policy],
                liveness_ns,
                max(0, min(int(spin_ns), 1_000_000)),
            )

        region = Region._create_segment(
            footprint(capacity, max_subscribers),
            kind=Kind.TOPIC,
            name=name,
            mode=mode,
            flags=codec_id | POLICIES[policy] << 8 | (_POOLED_FLAG if pool is not None else 0),
            init=init,
        )
        self = cls.__new__(cls)
        try:
            self._bind(region, codec_obj, pool, zero_copy_threshold)
        except BaseException:
            region.close()
            raise
        return self

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        codec: str | Codec | None = None,
        trusted_uids: Iterable[int] = (),
        timeout: float = ATTACH_TIMEOUT,
        pool: Any = None,
        zero_copy_threshold: int = 64 * 1024,
    ) -> Topic:
        """Attach the topic another process created under ``name``.

        ``codec=None`` takes the codec named in the segment, except "pickle": unpickling
        runs code, so only the caller's ``codec="pickle"`` ever unpickles. A topic another
        user owns is refused unless that uid is in ``trusted_uids``. A topic made with a
        pool needs ``pool=`` (the BufferPool or its name, attached with the same trust).
        """
        region = Region._attach_segment(
            name, kind=Kind.TOPIC, timeout=timeout, trusted_uids=trusted_uids
        )
        try:
            header = region.header
            assert header is not None
            made_with = _CODEC_NAMES.get(header.flags & 0xFF)
            if codec is None:
                if made_with == "pickle":
                    raise ValueError(
                        f"topic {name!r} says it was made with codec 'pickle', and unpickling "
                        "runs code: attach never picks pickle by itself. Pass codec='pickle' "
                        "if you trust every process that can write this topic"
                    )
                if made_with is None:
                    raise ValueError(
                        f"topic {name!r} uses a custom codec: pass the same codec= to attach"
                    )
                codec = made_with
            else:
                given = codec if isinstance(codec, str) else getattr(codec, "name", None)
                if made_with is not None and given != made_with:
                    raise ValueError(
                        f"topic {name!r} was made with codec {made_with!r}, not {given!r}"
                    )
            pooled = bool(header.flags & _POOLED_FLAG)
            if pooled and pool is None:
                raise ValueError(
                    f"topic {name!r} publishes through a block pool: attach it with pool="
                )
            if not pooled and pool is not None:
                raise ValueError(f"topic {name!r} was made without a block pool")
            if isinstance(pool, str):
                from .buffers import _attach_cached

                pool = _attach_cached(pool, trusted_uids)
            self = cls.__new__(cls)
            self._bind(region, get_codec(codec), pool, zero_copy_threshold)
        except BaseException:
            region.close()
            raise
        return self

    def _bind(
        self, region: Region, codec: Codec, pool: Any = None, threshold: int = 64 * 1024
    ) -> None:
        self._region: Region | None = region
        base, off = region.pointer(0)
        self._base = base  # keeps the mapping alive while this handle holds addresses
        self._ptr: Any = base + off
        self._mapping, self._map_off = region._mapping(0)
        self._codec = codec
        self._bytes_as_is = getattr(codec, "name", None) in _CODEC_IDS
        self._cap, self._max_subs, self._policy, self._liveness_ns = self._validate()
        self._stopped_since: dict[int, int] = {}  # slot word -> first seen stopped (ns)
        self._children: weakref.WeakSet[Publisher | Subscriber] = weakref.WeakSet()
        self._lock_off = CONTROL["lock"]
        self._tpool: TopicPool | None = None
        if pool is not None:
            self._tpool = TopicPool(self, pool, threshold)

    def _validate(self) -> tuple[int, int, int, int]:
        """Check the control block before any native call trusts it."""
        assert self._region is not None
        size = self._region.size
        p = self._ptr
        load32, load64 = lib.shmipc_load32_acquire, lib.shmipc_load64_acquire
        if size < HEADER_SIZE:
            raise CorruptedError(f"topic segment of {size} bytes has no room for its header")
        magic = load32(p, CONTROL["magic"])
        if magic != lib.SHMIPC_TOPIC_MAGIC:
            raise CorruptedError(f"no topic control block here (magic {magic:#x})")
        version = load32(p, CONTROL["version"])
        if version != lib.SHMIPC_TOPIC_VERSION:
            raise LayoutMismatch(
                f"topic layout version {version}; this shmipc speaks {lib.SHMIPC_TOPIC_VERSION}"
            )
        cap = load64(p, CONTROL["capacity"])
        max_subs = load32(p, CONTROL["max_subscribers"])
        policy = load32(p, CONTROL["policy"])
        if (
            cap < 256
            or cap & (cap - 1)
            or cap > 1 << 40
            or not 1 <= max_subs <= MAX_SUBSCRIBERS
            or footprint(cap, max_subs) > size
            or policy not in _POLICY_NAMES
        ):
            raise CorruptedError(
                f"topic header is inconsistent (capacity {cap}, max_subscribers {max_subs}, "
                f"policy {policy}, {size} bytes)"
            )
        return cap, max_subs, policy, load64(p, CONTROL["liveness_ns"])

    # ---- properties ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        name = self._live_region().name
        assert name is not None
        return name

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def policy(self) -> str:
        return _POLICY_NAMES[self._policy]

    @property
    def max_subscribers(self) -> int:
        return self._max_subs

    @property
    def codec(self) -> Codec:
        return self._codec

    @property
    def liveness_interval(self) -> float:
        return self._liveness_ns / 1e9

    @property
    def max_message(self) -> int:
        """The largest payload one message may have (half the ring, less its header)."""
        return self._cap // 2 - REC_HEADER

    def _live_region(self) -> Region:
        if self._region is None:
            raise Closed("this topic handle is closed")
        return self._region

    def _p(self) -> Any:
        self._live_region()
        return self._ptr

    # ---- handles -------------------------------------------------------------------------

    def publisher(self) -> Publisher:
        """A handle that publishes (any number may exist, in any processes)."""
        pub = Publisher(self)
        self._children.add(pub)
        return pub

    def subscribe(self, timeout: float | None = None) -> Subscriber:
        """A new subscriber: it receives every message published after this returns.

        Claims a free slot of the table (a slot whose owner died is reclaimed first when
        none is free); raises ShmipcError naming ``max_subscribers`` when all are taken.
        ``timeout`` bounds the wait for the publisher lock (TimeoutError).
        """
        p = self._p()
        pid, start = _proc.self_identity()
        word = ffi.new("uint64_t[1]")
        out = ffi.new("uint64_t[3]")
        deadline = deadline_ns(timeout)
        while True:
            slot = lib.shmipc_topic_claim(p, self._max_subs, pid, start, word)
            if slot < 0:
                if self._reclaim_dead():
                    continue
                raise ShmipcError(
                    f"topic {self.name!r} has all its max_subscribers={self._max_subs} "
                    "subscriber slots taken: close a subscriber, or create the topic with a "
                    "larger max_subscribers"
                )
            try:
                while True:
                    rc = lib.shmipc_topic_activate(
                        p, self._cap, self._max_subs, slot, word[0], out, deadline
                    )
                    if rc in (_SLICE, _INTERRUPTED):
                        self._liveness_pass()
                        continue
                    break
            except BaseException:
                lib.shmipc_topic_release(p, self._max_subs, slot, word[0])
                raise
            if rc == _EVICTED:
                continue  # judged dead while claiming (cannot happen to a live process)
            if rc != _OK:
                lib.shmipc_topic_release(p, self._max_subs, slot, word[0])
                if rc == _TIMEDOUT:
                    raise TimeoutError("subscribe() timed out waiting for the publisher lock")
                if rc in (_CORRUPT, lib.SHMIPC_DEADLOCK):
                    raise CorruptedError(
                        f"topic {self.name!r}: its tail or its publisher lock word is corrupted"
                    )
                raise OSError(f"subscribe failed ({rc})")
            sub = Subscriber(self, slot, out[2], out[0], out[1])
            self._children.add(sub)
            return sub

    # ---- liveness --------------------------------------------------------------------------

    def _slot_word(self, i: int) -> int:
        return lib.shmipc_load64_acquire(self._ptr, HEADER_SIZE + i * SLOT_SIZE + SLOT["word"])

    def _owner_state(self, i: int, word: int) -> _proc.Liveness:
        pid = word >> 32
        if not pid:
            return _proc.Liveness.UNKNOWN
        if pid > _PID_MAX_LIMIT:
            return _proc.Liveness.DEAD  # no process can have that id: a scribbled word
        start = lib.shmipc_load64_acquire(self._ptr, HEADER_SIZE + i * SLOT_SIZE + SLOT["start"])
        return _proc.process_state(pid, start)

    def _evict(self, p: Any, i: int, w: int, to_free: bool) -> bool:
        """Evict slot ``i`` seen as ``w``; on a pooled "block" topic, under the publisher
        lock, with its unread records' pool references given back (shmipc/topic_pool.py)."""
        if self._tpool is None or self._tpool.overwrite:
            return bool(lib.shmipc_topic_evict(p, self._max_subs, i, w, int(to_free)))
        return _tp.retire(self, i, w, to_free, True)

    @property
    def pool(self) -> Any:
        """The block pool this topic publishes large payloads through (None: none)."""
        return self._tpool.pool if self._tpool is not None else None

    def _reclaim_dead(self) -> bool:
        """Free every slot whose owner is dead; True if any was freed."""
        p = self._p()
        freed = False
        for i in range(self._max_subs):
            w = self._slot_word(i)
            if w & 0xFF == FREE:
                continue
            if self._owner_state(i, w) is _proc.Liveness.DEAD:
                freed |= self._evict(p, i, w, True)
        return freed

    def _liveness_pass(self) -> bool:
        """What a blocked publisher does every wait slice: take the publisher lock over from
        a dead holder; free the slots of dead subscribers; evict the ones it has seen stopped
        for the whole liveness interval. True if anything was freed."""
        p = self._p()
        took = take_over_if_dead(
            p, CONTROL["lock"], lambda holder: lib.shmipc_topic_steal(p, holder)
        )
        now = time.monotonic_ns()
        seen: set[int] = set()
        for i in range(self._max_subs):
            w = self._slot_word(i)
            st = w & 0xFF
            if st == FREE:
                continue
            state = self._owner_state(i, w)
            if state is _proc.Liveness.DEAD:
                took |= self._evict(p, i, w, True)
                continue
            if st != ACTIVE or state is not _proc.Liveness.ALIVE:
                continue
            if not _proc.identity_stopped(w >> 32):
                continue
            seen.add(w)
            since = self._stopped_since.setdefault(w, now)
            if now - since >= self._liveness_ns:
                took |= self._evict(p, i, w, False)
        # A word not seen stopped this time starts a new interval if it stops again.
        for w in list(self._stopped_since):
            if w not in seen:
                del self._stopped_since[w]
        return took

    def recover(self) -> bool:
        """The liveness pass on demand (blocked publishers make it by themselves)."""
        return self._liveness_pass()

    # ---- observation -----------------------------------------------------------------------

    def statistics(self) -> TopicStatistics:
        """Counters, and every occupied slot with its lag (read without any lock)."""
        p = self._p()
        u = lib.shmipc_load64_relaxed
        published = u(p, CONTROL["published"])
        subs = []
        for i in range(self._max_subs):
            w = self._slot_word(i)
            st = w & 0xFF
            if st == FREE:
                continue
            base = HEADER_SIZE + i * SLOT_SIZE
            expected = u(p, base + SLOT["expected"])
            subs.append(
                SubscriberStatistics(
                    slot=i,
                    pid=w >> 32,
                    state=_STATE_NAMES.get(st, f"unknown {st}"),
                    lag=max(0, published - expected) if st == ACTIVE else 0,
                    cursor=u(p, base + SLOT["cursor"]),
                )
            )
        return TopicStatistics(
            capacity=self._cap,
            policy=self.policy,
            published=published,
            laps=u(p, CONTROL["laps"]),
            missed=u(p, CONTROL["missed"]),
            evictions=u(p, CONTROL["evictions"]),
            publisher_waits=u(p, CONTROL["publisher_waits"]),
            depth_bytes=max(0, u(p, CONTROL["tail"]) - u(p, CONTROL["oldest"])),
            subscribers=subs,
        )

    # ---- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Close this handle and every publisher and subscriber made from it (subscribers
        give their slots back). In the creating process this also unlinks the name."""
        for child in list(self._children):
            child.close()  # (before the region goes: a pooled subscriber walks its records)
        if self._region is not None and self._region.owner:
            self._drain_pool()
        region, self._region = self._region, None
        if region is not None:
            region.close()

    def unlink(self) -> None:
        """Remove the name now (the memory lives on while any process maps it). A pooled
        "overwrite" topic gives back the blocks of the records still in its ring."""
        self._live_region().unlink()
        self._drain_pool()

    def _drain_pool(self) -> None:
        tp = self._tpool
        if tp is None or not tp.overwrite or self._region is None:
            return
        _tp.lock(self, -1)
        try:
            tp.drain()
        finally:
            _tp.unlock(self)

    def __enter__(self) -> Topic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # The codec and the trust travel with the handle, never read from the header.
        region = self._live_region()
        name = getattr(self._codec, "name", None)
        spec = name if name in _CODEC_IDS else self._codec
        tp = self._tpool
        if tp is None:
            return (_attach_topic, (self.name, spec, region._trusted_uids))
        return (
            _attach_topic,
            (self.name, spec, region._trusted_uids, tp.pool.name, tp.threshold),
        )

    def __repr__(self) -> str:
        if self._region is None:
            return "<shmipc.Topic closed>"
        return f"<shmipc.Topic {self.name} policy={self.policy} capacity={self._cap}>"


def _attach_topic(
    name: str,
    codec: str | Codec,
    trusted_uids: tuple[int, ...] = (),
    pool: str | None = None,
    threshold: int = 64 * 1024,
) -> Topic:
    return Topic.attach(
        name, codec=codec, trusted_uids=trusted_uids, pool=pool, zero_copy_threshold=threshold
    )


def _check_pool(pool: Any, policy: str) -> None:
    if pool is None:
        return
    from .buffers import BufferPool

    if not isinstance(pool, BufferPool):
        raise TypeError(f"pool must be a BufferPool, not {pool!r}")


# ---- publisher ---------------------------------------------------------------------------------


class Publisher:
    """Publishes to a topic. ``publish(obj, timeout=None)`` encodes with the topic's codec;
    ``publish_bytes(b, timeout=None)`` sends a bytes-like payload as is. Policy "block":
    ``queue.Full`` when no room came within ``timeout`` (0: never wait)."""

    def __init__(self, topic: Topic) -> None:
        topic._live_region()
        self._topic: Topic | None = topic
        me = weakref.ref(self)
        self._port = port = TopicPort(
            topic._mapping,
            topic._map_off,
            topic._cap,
            topic._max_subs,
            topic._policy,
            encode=topic._codec.encode,
            deadline=_deadline,
            slow_put=lambda *a: _alive(me)._slow_put(*a),
            bytes_as_is=topic._bytes_as_is,
        )
        self._put = port.put
        self.publish_bytes = port.publish_bytes  # type: ignore[method-assign]
        if topic._tpool is None:
            self.publish = port.publish  # type: ignore[method-assign]

    def publish(self, obj: Any, timeout: float | None = None) -> None:
        """Encode ``obj`` and publish it (one native call; see the class doc). On a pooled
        topic, large arrays and bytes-like payloads and loans go by handle."""
        topic = self._live_topic()
        if topic._tpool is None:
            self._port.publish(obj, timeout)
            return
        self._publish_pooled(topic, obj, timeout)

    def _publish_pooled(self, topic: Topic, obj: Any, timeout: float | None) -> None:
        """Encode (blocks held by this process), then under the publisher lock: count the
        ACTIVE subscribers, hand each a transit reference, place the record (topic_pool)."""
        tp = topic._tpool
        assert tp is not None
        deadline = _deadline(timeout)
        from .buffers import PoolExhausted

        try:
            frame, sent = tp.encode(obj, timeout)
        except PoolExhausted as exc:
            raise Full(str(exc)) from exc
        if not sent:
            rc = self._put(frame, K_OBJ, deadline)
            if rc != _OK:
                self._slow_put(rc, frame, K_OBJ, deadline)
            return
        self._publish_locked(topic, frame, sent, deadline)

    def _publish_locked(self, topic: Topic, frame: bytes, sent: list[Any], deadline: int) -> None:
        """The pooled publish section (topic_pool.TopicPool.publish_locked), waiting for room
        (policy "block") as ``deadline`` allows; on failure the blocks' references are given
        back. Also the path of an inline frame that would overwrite a pooled record."""
        tp = topic._tpool
        assert tp is not None
        need = ffi.new("uint64_t *")
        try:
            while True:
                _tp.lock(topic, deadline if deadline != 0 else time.monotonic_ns() + 20_000_000)
                try:
                    rc = tp.publish_locked(frame, sent, need)
                finally:
                    _tp.unlock(topic)
                if rc == _OK:
                    return
                if rc == _FULL and deadline != 0:
                    rc = lib.shmipc_topic_wait_space(
                        topic._ptr, topic._cap, topic._max_subs, need[0], deadline
                    )
                    if rc in (_SLICE, _INTERRUPTED):
                        topic._liveness_pass()
                    elif rc == _TIMEDOUT:
                        raise Full
                    elif rc not in (_OK, _CORRUPT):
                        raise OSError(f"publish failed ({rc})")
                    continue
                self._slow_put(rc, frame, K_OBJ, deadline)  # raises what rc means
                raise OSError(f"publish failed ({rc})")  # pragma: no cover
        except TimeoutError:
            tp.give_back(sent)
            raise Full from None
        except BaseException:
            tp.give_back(sent)
            raise

    def _publish_locked_kind(self, topic: Topic, frame: bytes, kind: int) -> None:
        tp = topic._tpool
        assert tp is not None
        need = ffi.new("uint64_t *")
        _tp.lock(topic, -1)
        try:
            for old in tp._overwritten(len(frame)):
                tp.drop_frame(old)
            rc = lib.shmipc_topic_place_locked(
                topic._ptr, topic._cap, topic._max_subs, frame, len(frame), kind, need
            )
        finally:
            _tp.unlock(topic)
        if rc != _OK:
            self._slow_put(rc, frame, kind, 0)

    def loan(self, nbytes: int, timeout: float | None = None) -> Any:
        """A writable block of the topic's pool; ``publish(loan)`` sends it without a copy."""
        return self._need_pool().loan(nbytes, timeout)

    def loan_array(self, shape: Any, dtype: Any = float, timeout: float | None = None) -> Any:
        """A writable ndarray in a block of the topic's pool; ``publish`` sends it by handle."""
        return self._need_pool().loan_array(shape, dtype, timeout)

    def _need_pool(self) -> Any:
        tp = self._live_topic()._tpool
        if tp is None:
            raise ValueError("this topic has no block pool: create it with pool=BufferPool...")
        return tp.pool

    def publish_bytes(self, obj: Any, timeout: float | None = None) -> None:
        """Publish a bytes-like payload as is; ``receive`` returns it as bytes."""
        self._port.publish_bytes(obj, timeout)

    def publish_many(self, items: Iterable[Any], timeout: float | None = None) -> None:
        """Publish every item in order, all within one ``timeout``. Everything is encoded
        first, so an object the codec refuses publishes nothing."""
        topic = self._live_topic()
        if topic._tpool is not None:
            # Each pooled message is its own locked section; all within one timeout.
            end = None if timeout is None else time.monotonic() + max(timeout, 0.0)
            for i, x in enumerate(list(items)):
                left = None if end is None else max(end - time.monotonic(), 0.0)
                try:
                    self.publish(x, left)
                except Full:
                    raise Full(f"{i} items were published before the timeout") from None
            return
        deadline = _deadline(timeout)
        encode, as_is = topic._codec.encode, topic._bytes_as_is
        frames = [(x, K_BYTES) if as_is and type(x) is bytes else (encode(x), K_OBJ) for x in items]
        for i, (data, kind) in enumerate(frames):
            rc = self._put(data, kind, deadline)
            if rc != _OK:
                try:
                    self._slow_put(rc, data, kind, deadline)
                except Full:
                    raise Full(
                        f"{i} of {len(frames)} items were published before the timeout"
                    ) from None

    def _live_topic(self) -> Topic:
        topic = self._topic
        if topic is None:
            raise Closed("this publisher is closed")
        return topic

    def _slow_put(self, rc: int, data: Any, kind: int, deadline: int) -> None:
        """Every outcome but the one-call fast path: waits that came back for a liveness
        pass, buffers to flatten, errors."""
        while rc != _OK:
            if rc == _CLOSED:
                raise Closed("this publisher is closed")
            topic = self._live_topic()
            if rc in (_SLICE, _INTERRUPTED):
                topic._liveness_pass()  # evict the dead and the stopped, free a dead lock
            elif rc == _NOTBUF:
                data = memoryview(data).tobytes()
            elif rc == _POOLED_AHEAD:
                # An inline record would overwrite a pooled one ("overwrite"): the pooled
                # section drops that record's ring reference first.
                frame = data if type(data) is bytes else memoryview(data).tobytes()
                self._publish_locked_kind(topic, frame, kind)
                return
            elif rc in (_FULL, _TIMEDOUT):
                raise Full
            elif rc == _TOOBIG:
                raise MessageTooLarge(
                    f"a message of {len(memoryview(data).cast('B'))} bytes exceeds this topic's "
                    f"limit of {topic.max_message} (half its capacity of {topic.capacity})"
                )
            elif rc == _CORRUPT:
                raise CorruptedError(
                    f"topic {topic.name!r} is corrupted: a position, record header or "
                    "subscriber cursor breaks its rules (docs/topics.md)"
                )
            elif rc == lib.SHMIPC_DEADLOCK:
                raise CorruptedError(
                    "the topic's publisher lock names this thread, which does not hold it: "
                    "the lock word was overwritten"
                )
            else:
                raise OSError(f"publish failed ({rc})")
            rc = self._put(data, kind, deadline)

    def close(self) -> None:
        """Refuse later calls (Closed)."""
        self._topic = None
        self._port.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a Publisher does not pickle: pickle its Topic and call publisher()")


# ---- subscriber --------------------------------------------------------------------------------


class Subscriber:
    """Receives every message published to its topic after it subscribed, in order.

    ``receive(timeout=None)`` decodes, ``receive_bytes`` does not; ``queue.Empty`` when
    nothing came within ``timeout`` (0: never wait); :class:`~shmipc.Lagged` when it was lapped
    (policy "overwrite"; it resumes at the oldest message still there);
    :class:`~shmipc.Evicted` once its slot was taken back. A subscriber belongs to the
    process (and, at a time, the thread) that made it; it does not pickle.
    """

    def __init__(self, topic: Topic, slot: int, word: int, cursor: int, expected: int) -> None:
        self._topic: Topic | None = topic
        self._ptr = topic._ptr
        self._base = topic._base  # keeps the mapping for the slot's release at close
        self._max_subs = topic._max_subs
        self._slot = slot
        self._word = word
        self._pending: BaseException | None = None
        me = weakref.ref(self)
        self._port = port = TopicPort(
            topic._mapping,
            topic._map_off,
            topic._cap,
            topic._max_subs,
            topic._policy,
            slot,
            word,
            cursor,
            expected,
            decode=topic._codec.decode,
            deadline=_deadline,
            slow_get=lambda *a: _alive(me)._slow_get(*a),
            pooled=topic._tpool.receive if topic._tpool is not None else None,
        )
        self._get = port.get
        self._get_many = port.get_many
        self._bind_fast()

    def _bind_fast(self) -> None:
        self.receive = self._port.receive  # type: ignore[method-assign]
        self.receive_bytes = self._port.receive_bytes  # type: ignore[method-assign]

    def receive(self, timeout: float | None = None) -> Any:
        """The next message, decoded (one native call; see the class doc)."""
        return self._port.receive(timeout)

    def receive_bytes(self, timeout: float | None = None) -> bytes:
        """The next message's payload, undecoded (a codec frame, or what publish_bytes sent)."""
        return self._port.receive_bytes(timeout)

    def _slow_get(self, rc: int, deadline: int, decode: bool) -> Any:
        while True:
            if rc == _CLOSED:
                raise Closed("this subscriber is closed")
            if rc == _EMPTY:
                raise Empty
            if rc == _LAGGED:
                raise Lagged(self._port.missed)
            if rc == _EVICTED:
                raise Evicted(
                    "this subscriber was evicted: its process was seen stopped for the topic's "
                    "liveness interval while a publisher waited for it; close it and "
                    "subscribe again"
                )
            if rc == _CORRUPT:
                raise CorruptedError(
                    "the topic is corrupted: a position, record header or this subscriber's "
                    "slot breaks its rules (docs/topics.md)"
                )
            if rc == _NOTOWNER:
                raise RuntimeError(
                    "this Subscriber belongs to the process that subscribed (this one was "
                    "forked from it): subscribe again here"
                )
            if rc not in (_SLICE, _INTERRUPTED):
                raise OSError(f"receive failed ({rc})")
            try:
                return self._get(deadline, decode)
            except TopicMiss as exc:
                rc = exc.args[0]

    def _raise_pending(self, timeout: float | None = None) -> Any:
        exc, self._pending = self._pending, None
        self._bind_fast()
        assert exc is not None
        raise exc

    def receive_many(self, max_items: int, timeout: float | None = None) -> list[Any]:
        """Up to ``max_items`` messages in one native call: at least one (waiting up to
        ``timeout``), then those already there. A Lagged (or other error) met after the
        first is raised by the next call, so no message received is lost with it."""
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        if self._pending is not None:
            self._raise_pending()
        deadline = _deadline(timeout)
        while True:
            try:
                out, status, error = self._get_many(max_items, deadline, True)
                break
            except TopicMiss as exc:
                rc = exc.args[0]
            if rc not in (_SLICE, _INTERRUPTED):
                self._slow_get(rc, deadline, True)  # raises what rc means
        if status != _OK or error is not None:
            try:
                if error is not None:
                    raise error
                self._slow_get(status, 0, True)
            except BaseException as err:  # kept for the next call
                self._pending = err
                self.receive = self.receive_bytes = self._raise_pending  # type: ignore
        return out

    def __iter__(self) -> Iterator[Any]:
        """Messages as they come, forever (until this subscriber is closed)."""
        while True:
            try:
                yield self.receive()
            except Closed:
                return

    @property
    def lag(self) -> int:
        """Messages published and not yet received by this subscriber."""
        return self._port.lag()

    @property
    def slot(self) -> int:
        return self._slot

    # ---- asyncio (shmipc/aio.py: one helper thread per loop, no polling; docs/asyncio.md) ----

    async def receive_async(self, timeout: float | None = None) -> Any:
        """``receive`` for a coroutine: the loop's one helper thread sleeps on the tail."""
        from .aio import subscriber_receive_async

        return await subscriber_receive_async(self, timeout)

    async def receive_bytes_async(self, timeout: float | None = None) -> bytes:
        """``receive_bytes`` for a coroutine."""
        from .aio import subscriber_receive_async

        return await subscriber_receive_async(self, timeout, raw=True)  # type: ignore[no-any-return,unused-ignore]

    def __aiter__(self) -> AsyncIterator[Any]:
        """``async for msg in sub``: messages until the subscriber is closed."""
        from .aio import subscriber_iter

        return subscriber_iter(self)

    def _aio_words(self) -> list[Any]:
        """What a coroutine sleeps on: the tail's low word, announced by the data sleep flag
        (T8 in csrc/topic.c: nslots -1, set by the sleeper, cleared by the waking publisher)."""
        if self._topic is None:
            raise Closed("this subscriber is closed")
        from .aio import WordSpec

        return [
            WordSpec(
                self._ptr,
                lib.SHMIPC_TOPIC_OFF_TAIL,
                lib.SHMIPC_TOPIC_OFF_DATA_WAITERS,
                -1,
                self._base,
            )
        ]

    def close(self) -> None:
        """Give the slot back (publishers stop waiting for this subscriber)."""
        if self._topic is None:
            return
        topic = self._topic
        self._topic = None
        owned = self._port.owned()  # a forked child's copy must not free its parent's slot
        self._port.close()
        aio = sys.modules.get("shmipc.aio")
        if aio is not None:
            aio._closing(self._base)  # coroutines awaiting this subscriber wake and see Closed
        if not owned:
            return
        # A pooled topic: give back the unread records' references (under the publisher
        # lock), unless an evictor already took the slot (then it walked them).
        if (
            topic._tpool is not None
            and not topic._tpool.overwrite
            and topic._region is not None
            and _tp.retire(topic, self._slot, self._word, True, False)
        ):
            return
        lib.shmipc_topic_release(self._ptr, self._max_subs, self._slot, self._word)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            "a Subscriber does not pickle (it is one process's slot): pickle its Topic and "
            "call subscribe() there"
        )


def _alive(ref: weakref.ref[Any]) -> Any:
    obj = ref()
    if obj is None:  # pragma: no cover - a port outliving its handle is never called
        raise Closed("this handle is closed (garbage-collected)")
    return obj


# ---- inspection --------------------------------------------------------------------------------

_U32 = struct.Struct("<I")
_Q = struct.Struct("<Q")


def inspect_segment(view: memoryview) -> dict[str, Any]:
    """A read-only description of a whole Topic segment (offset 0: the common segment
    header), for ``shmipc ls`` / ``shmipc inspect``. JSON-serialisable; CorruptedError on
    nonsense (LayoutMismatch for another kind of segment or layout version); never writes,
    never waits."""
    view = memoryview(view).cast("B") if memoryview(view).format != "B" else memoryview(view)
    header = SegmentHeader.unpack(view)
    header.validate(kind=Kind.TOPIC, mapped_size=len(view), name="topic segment")
    base = SEGMENT_LAYOUT.size

    def u32(off: int) -> int:
        return _U32.unpack_from(view, base + off)[0]

    def u64(off: int) -> int:
        return _Q.unpack_from(view, base + off)[0]

    if len(view) < base + HEADER_SIZE:
        raise CorruptedError("topic segment too small for its control block")
    if u32(CONTROL["magic"]) != lib.SHMIPC_TOPIC_MAGIC:
        raise CorruptedError("topic control block has a wrong magic")
    version = u32(CONTROL["version"])
    if version != lib.SHMIPC_TOPIC_VERSION:
        raise LayoutMismatch(f"topic layout version {version}")
    cap = u64(CONTROL["capacity"])
    max_subs = u32(CONTROL["max_subscribers"])
    policy = u32(CONTROL["policy"])
    if (
        cap < 256
        or cap & (cap - 1)
        or cap > 1 << 40
        or not 1 <= max_subs <= MAX_SUBSCRIBERS
        or base + footprint(cap, max_subs) > len(view)
        or policy not in _POLICY_NAMES
    ):
        raise CorruptedError(
            f"topic header is inconsistent (capacity {cap}, max_subscribers {max_subs}, "
            f"policy {policy})"
        )
    tail, oldest, published = (
        u64(CONTROL["tail"]),
        u64(CONTROL["oldest"]),
        u64(CONTROL["published"]),
    )
    if oldest > tail or tail - oldest > cap:
        raise CorruptedError(f"topic positions are inconsistent (oldest {oldest}, tail {tail})")
    subs = []
    for i in range(max_subs):
        off = HEADER_SIZE + i * SLOT_SIZE
        w = u64(off + SLOT["word"])
        st = w & 0xFF
        if st == FREE:
            continue
        if st not in _STATE_NAMES:
            raise CorruptedError(f"topic slot {i} has state {st}")
        expected = u64(off + SLOT["expected"])
        subs.append(
            {
                "slot": i,
                "pid": w >> 32,
                "start_time": u64(off + SLOT["start"]),
                "state": _STATE_NAMES[st],
                "cursor": u64(off + SLOT["cursor"]),
                "lag": max(0, published - expected) if st == ACTIVE else 0,
            }
        )
    codec = _CODEC_NAMES.get(header.flags & 0xFF, "custom")
    return {
        "kind": "topic",
        "codec": codec,
        "pooled": bool(header.flags & _POOLED_FLAG),  # records may name block-pool blocks
        "policy": _POLICY_NAMES[policy],
        "capacity": cap,
        "max_subscribers": max_subs,
        "liveness_interval": u64(CONTROL["liveness_ns"]) / 1e9,
        "published": published,
        "laps": u64(CONTROL["laps"]),
        "missed": u64(CONTROL["missed"]),
        "evictions": u64(CONTROL["evictions"]),
        "publisher_waits": u64(CONTROL["publisher_waits"]),
        "depth_bytes": tail - oldest,
        "publisher_lock_holder": u64(CONTROL["lock"]) & 0x7FFFFFFF,
        "subscribers": subs,
    }
