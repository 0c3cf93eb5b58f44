"""Byte rings of variable-length records in shared memory.

A :class:`Ring` carries opaque byte records from any number of producer processes to any
number of consumer processes, in order, each record delivered once. It knows nothing of
Python objects (that is :mod:`shmipc.codec` and :mod:`shmipc.queue`). The protocol, the
record format and the recovery rules are in docs/internals/ring.md; the hot paths are single
native calls in csrc/ring.c, and the control block's offsets come from csrc/shmipc.h.

Three ways to read and write:

* copying: ``put(data)`` / ``get()`` and the batches ``put_many`` / ``get_many``;
* zero-copy: ``reserve(n)`` returns a writable view inside the ring, ``commit()`` publishes it
  (``abort()`` drops it); ``peek()`` returns a read-only view of the next record and
  ``release()`` frees it. The thread that reserved (peeked) must commit (release). A view
  counts what is made from it (slices, PickleBuffers, numpy arrays): while any is alive,
  commit/abort/release/unpeek/close raise BufferError and change nothing, so no view ever
  outlives its record (docs/internals/lifetime.md).
"""

from __future__ import annotations

import operator
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from . import _proc
from ._claim import Claims
from ._native import View, ffi, lib
from .errors import Closed, CorruptedError, LayoutMismatch, MessageTooLarge, Revoked
from .layout import Kind
from .region import ATTACH_TIMEOUT, Region
from .sync import deadline_ns, take_over_if_dead

__all__ = ["DEFAULT_SPIN_NS", "Ring", "RingStatistics", "byte_view"]

#: How long a waiter spins before it sleeps on the futex. A wake across cores costs tens of
#: µs here while a message crosses in well under one, so a busy peer is caught by spinning.
DEFAULT_SPIN_NS = 50_000
#: How long a producer may stay stopped (SIGSTOP) holding a reservation before a waiter's
#: liveness pass revokes it (docs/internals/ring.md, "Revocation").
DEFAULT_LIVENESS = 1.0

HEADER_SIZE = lib.SHMIPC_RING_HEADER_SIZE
REC_HEADER = lib.SHMIPC_REC_HEADER
TYPE_MAX = lib.SHMIPC_REC_TYPE_MAX
_LEN_MASK = (1 << 40) - 1
#: Payloads up to this size are copied into a per-thread scratch by the one native call and
#: turned into bytes by ffi.unpack; larger ones are read with a single copy straight out of
#: the ring (peek, copy, release), since for them the copy costs more than two more calls.
SCRATCH_SIZE = 64 << 10
#: The most records one get_many/get_many_records call returns (a larger max_items is
#: capped): their lengths and types fit the per-thread table allocated once, so a huge
#: max_items never allocates, or keeps, memory in proportion to it.
GET_MANY_MAX = 1024
_unpack = ffi.unpack
_first = itemgetter(0)
_new_view = View.memoryview  # a View over a record and the memoryview handed out over it

_OK = lib.SHMIPC_OK
_SLICE = lib.SHMIPC_SLICE
_INTERRUPTED = lib.SHMIPC_INTERRUPTED
_EMPTY = lib.SHMIPC_EMPTY
_FULL = lib.SHMIPC_FULL
_NEEDBUF = lib.SHMIPC_NEEDBUF
_BUSY = lib.SHMIPC_BUSY
_SPSC = lib.SHMIPC_RING_SPSC


@dataclass(frozen=True)
class RingStatistics:
    """A snapshot of a ring's counters, read without taking either side's lock."""

    capacity: int
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    depth: int  # messages committed and not yet released
    depth_bytes: int  # bytes of the ring in use, record headers and padding included
    producer_waits: int
    consumer_waits: int
    consumer_wakes: int  # futex wakes producers issued to sleeping consumers
    producer_wakes: int  # futex wakes consumers issued to sleeping producers
    abandoned: int  # claims of producers that died between claim and commit
    consumers_recovered: int  # consumer locks taken over from consumers that died
    revoked: int = 0  # reservations taken from producers stopped past the liveness interval
    quarantined: int = 0  # bytes of a revoked reservation kept from reuse now (0: none)
    undecodable: int = 0  # (Queue) messages this handle took off that failed to decode
    #: waits that slept out a whole wait slice although what they waited for had happened
    #: (a lost wake-up; 0 on a sound ring)
    missed_wakes: int = 0


def byte_view(data: Any) -> memoryview:
    """``data`` as a flat memoryview of bytes (its length is its size in bytes), copying only
    a buffer that is not contiguous."""
    view = memoryview(data)
    if view.c_contiguous:
        return view.cast("B") if view.format != "B" or view.ndim != 1 else view
    return memoryview(view.tobytes())


def split_blob(blob: bytes, lens: list[int]) -> list[bytes]:
    """``blob`` cut into consecutive pieces of the given lengths.

    Equal lengths (the common batch) are cut by struct.iter_unpack in C, ~50 ns a piece;
    mixed lengths by slicing, ~90 ns a piece.
    """
    n = lens[0] if lens else 0
    if n and lens.count(n) == len(lens):
        return list(map(_first, struct.iter_unpack(f"{n}s", blob)))
    out = []
    pos = 0
    for k in lens:
        out.append(blob[pos : pos + k])
        pos += k
    return out


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class _PerThread(threading.local):
    """Per-thread state: the scratch buffer gets copy into, and pending zero-copy claims."""

    def __init__(self) -> None:
        self.scratch = bytearray(SCRATCH_SIZE)
        self.scratch_ptr = ffi.from_buffer(self.scratch)
        self.meta = ffi.new("uint64_t[]", 2 * GET_MANY_MAX)
        self.peek_out = ffi.new("uint64_t[2]")
        # (view, its View exporter, nbytes, ring address) while this thread holds a reservation
        self.reserved: tuple[memoryview, Any, int, Any] | None = None
        # (view or None, its View exporter or None, ring address) while it holds a peek
        self.peeked: tuple[memoryview | None, Any, Any] | None = None
        self.busy_retries = 0  # consecutive retries of a refused SPSC call (Ring._retry)


class Ring:
    """Records of bytes from many producers to many consumers, through shared memory."""

    def __init__(self, region: Region, offset: int, *, owns_region: bool) -> None:
        # Use create/attach/anonymous/at; this binds a ring already initialised at offset.
        self._region = region
        self._offset = offset
        self._owns_region = owns_region
        base, abs_off = region.pointer(offset)
        self._base = base  # keeps the mapping alive while this ring exists
        self._ptr: Any = base + abs_off
        # The mmap and the ring's offset in it: what a Port or a View exports to pin the
        # mapping for as long as it keeps an address into it (docs/internals/lifetime.md).
        self._mapping, self._map_off = region._mapping(offset)
        self._cap = self._validate()
        # The mode as it was when this handle attached: a ring that later answers "busy"
        # without being SPSC had its flags overwritten (CorruptedError, not RuntimeError).
        self._spsc = bool(lib.shmipc_load32_acquire(self._ptr, lib.SHMIPC_RING_OFF_FLAGS) & _SPSC)
        self._local = _PerThread()
        self._claims = Claims(self._ptr, self._cap, self._spsc)  # revocation, quarantine
        # Whether this thread holds a reservation or peek made through another object on
        # this ring (a Queue's port), for the errors that depend on it.
        self._claims_elsewhere: Callable[[], bool] = _holds_nothing

    # ---- construction --------------------------------------------------------------------

    @staticmethod
    def footprint(capacity: int) -> int:
        """Bytes a ring of ``capacity`` needs in a region (control block + data)."""
        return HEADER_SIZE + capacity

    @staticmethod
    def _init_at(
        region: Region,
        offset: int,
        capacity: int,
        max_count: int,
        spin_ns: int,
        spsc: bool = False,
        liveness: float = DEFAULT_LIVENESS,
    ) -> None:
        if not _pow2(capacity) or capacity < 64:
            raise ValueError(f"capacity must be a power of two >= 64, got {capacity}")
        if capacity > 1 << 40:
            raise ValueError("capacity above 1 TiB is not supported")
        if max_count < 0:
            raise ValueError(f"max_count must be >= 0, got {max_count}")
        if offset % 64:
            raise ValueError(f"ring offset {offset} is not 64-byte aligned")
        if offset + Ring.footprint(capacity) > region.size:
            raise ValueError(
                f"a ring of capacity {capacity} needs {Ring.footprint(capacity)} bytes at "
                f"offset {offset}; the region has {region.size}"
            )
        base, abs_off = region.pointer(offset)
        if not liveness > 0:  # also refuses NaN
            raise ValueError(f"liveness must be a positive number of seconds, got {liveness}")
        flags = lib.SHMIPC_RING_SPSC if spsc else 0
        # inf (or anything past an int64 of nanoseconds): never revoke.
        liveness_ns = 2**63 - 1 if liveness >= 2**63 / 1e9 else int(liveness * 1e9)
        if (
            lib.shmipc_ring_init(base + abs_off, capacity, max_count, spin_ns, flags, liveness_ns)
            != _OK
        ):
            err = lib.shmipc_errno()
            raise OSError(err, f"cannot initialise ring locks: {os.strerror(err)}")

    @classmethod
    def create(
        cls,
        capacity: int = 1 << 20,
        *,
        name: str | None = None,
        max_count: int = 0,
        spin_ns: int = DEFAULT_SPIN_NS,
        mode: int = 0o600,
        kind: int = Kind.RING,
        flags: int = 0,
        spsc: bool = False,
        liveness: float = DEFAULT_LIVENESS,
    ) -> Ring:
        """A ring in a new named segment that other processes attach by name. ``spsc``: one
        producer thread and one consumer thread (see :attr:`spsc`). ``liveness``: seconds a
        producer may stay stopped holding a reservation before it is revoked."""
        region = Region._create_segment(
            cls.footprint(capacity),
            kind=kind,
            name=name,
            mode=mode,
            flags=flags,
            init=lambda r: cls._init_at(r, 0, capacity, max_count, spin_ns, spsc, liveness),
        )
        return cls(region, 0, owns_region=True)

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        kind: int = Kind.RING,
        timeout: float = ATTACH_TIMEOUT,
        trusted_uids: Iterable[int] = (),
    ) -> Ring:
        """Attach the ring a ``create`` call made under ``name`` (``timeout`` and
        ``trusted_uids`` as for ``Region.attach``)."""
        region = Region._attach_segment(name, kind=kind, timeout=timeout, trusted_uids=trusted_uids)
        try:
            return cls(region, 0, owns_region=True)
        except BaseException:
            region.close()
            raise

    @classmethod
    def anonymous(
        cls,
        capacity: int = 1 << 20,
        *,
        max_count: int = 0,
        spin_ns: int = DEFAULT_SPIN_NS,
        spsc: bool = False,
        liveness: float = DEFAULT_LIVENESS,
    ) -> Ring:
        """A ring in anonymous shared memory: shared with children forked after it."""
        region = Region.anonymous(cls.footprint(capacity))
        cls._init_at(region, 0, capacity, max_count, spin_ns, spsc, liveness)
        return cls(region, 0, owns_region=True)

    @classmethod
    def at(
        cls,
        region: Region,
        offset: int = 0,
        *,
        create: bool,
        capacity: int = 1 << 20,
        max_count: int = 0,
        spin_ns: int = DEFAULT_SPIN_NS,
        spsc: bool = False,
        liveness: float = DEFAULT_LIVENESS,
    ) -> Ring:
        """The ring at ``offset`` of a region the caller owns; ``create=True`` builds it."""
        if create:
            cls._init_at(region, offset, capacity, max_count, spin_ns, spsc, liveness)
        return cls(region, offset, owns_region=False)

    def _validate(self) -> int:
        """Check the control block before any native call trusts it; returns the capacity."""
        if self._offset % 64 or self._offset + HEADER_SIZE > self._region.size:
            raise CorruptedError(f"no room for a ring control block at offset {self._offset}")
        p = self._p
        magic = lib.shmipc_load32_acquire(p, lib.SHMIPC_RING_OFF_MAGIC)
        if magic != lib.SHMIPC_RING_MAGIC:
            raise CorruptedError(f"no ring at offset {self._offset} (magic {magic:#x})")
        version = lib.shmipc_load32_acquire(p, lib.SHMIPC_RING_OFF_VERSION)
        if version != lib.SHMIPC_RING_VERSION:
            raise LayoutMismatch(
                f"ring layout version {version}; this shmipc speaks {lib.SHMIPC_RING_VERSION}"
            )
        cap = lib.shmipc_load64_acquire(p, lib.SHMIPC_RING_OFF_CAPACITY)
        if not _pow2(cap) or cap < 64 or self._offset + self.footprint(cap) > self._region.size:
            raise CorruptedError(
                f"ring capacity {cap} is not a power of two that fits the region "
                f"({self._region.size} bytes)"
            )
        # The ring may be live: consumers move the head up to the tail and producers move the
        # tail up to head + capacity meanwhile. Reading the head first keeps it <= the tail
        # read after it; a pair that breaks the rules only counts when a second read finds
        # both unchanged (a producer that lapped between the two loads is no corruption).
        load = lib.shmipc_load64_acquire
        for _ in range(100):
            head = load(p, lib.SHMIPC_RING_OFF_C_HEAD)
            tail = load(p, lib.SHMIPC_RING_OFF_P_TAIL)
            if tail % 8 or head % 8:
                break
            if 0 <= tail - head <= cap:
                return cap
            if (
                load(p, lib.SHMIPC_RING_OFF_C_HEAD) == head
                and load(p, lib.SHMIPC_RING_OFF_P_TAIL) == tail
            ):
                break
        raise CorruptedError(f"ring positions are inconsistent (head {head}, tail {tail})")

    # ---- properties ----------------------------------------------------------------------

    @property
    def _p(self) -> Any:
        """The control block's address; Closed once this handle was closed. (The mapping
        itself lives as long as this object, so a thread still inside a call is safe.)"""
        ptr = self._ptr
        if ptr is None:
            raise Closed("this ring handle is closed")
        return ptr

    @property
    def capacity(self) -> int:
        """Bytes of record space (a power of two)."""
        return self._cap

    @property
    def spsc(self) -> bool:
        """True for a single-producer/single-consumer ring: the first thread to put (get)
        keeps the producer (consumer) side between calls, so a message costs no lock
        traffic; another thread's put (get) raises RuntimeError while that one lives, and
        takes the side over once it has died. ``close()`` gives the sides up."""
        return self._spsc

    @property
    def max_payload(self) -> int:
        """The largest payload one record can carry: half the ring, less its header."""
        return self._cap // 2 - REC_HEADER

    @property
    def name(self) -> str | None:
        return self._region.name

    @property
    def _label(self) -> str:
        """How errors name this ring."""
        return f"ring {self.name}" if self.name else "this anonymous ring"

    @property
    def region(self) -> Region:
        return self._region

    # ---- errors and waits ----------------------------------------------------------------

    def _raise(self, rc: int, nbytes: int = 0) -> None:
        if rc == _FULL:
            raise queue.Full
        if rc == _EMPTY:
            raise queue.Empty
        if rc == lib.SHMIPC_TOOBIG:
            raise MessageTooLarge(
                f"a record of {nbytes} bytes exceeds this ring's limit of {self.max_payload} "
                f"(half its capacity of {self._cap}); use a larger capacity or a channel "
                "that spills large messages"
            )
        if rc == lib.SHMIPC_CORRUPT:
            raise CorruptedError(
                f"{self._label} is corrupted: a position or record header breaks "
                "its rules (see docs/internals/ring.md)"
            )
        if rc == _BUSY and not self._spsc:
            raise CorruptedError(
                f"{self._label} answers as single-producer/single-consumer but was "
                "not made so: its flags were overwritten"
            )
        if rc == _BUSY:
            raise RuntimeError(
                f"{self._label} is single-producer/single-consumer and another live "
                "thread holds this side (the first to put, or to get, keeps it until it closes "
                "its handle or dies): use one producer and one consumer thread, or a ring "
                "made without spsc=True"
            )
        if rc == lib.SHMIPC_DEADLOCK:
            local = self._local
            if local.reserved is None and local.peeked is None and not self._claims_elsewhere():
                raise CorruptedError(
                    "a side lock of this ring names this thread, which holds nothing on it: "
                    "the lock word was overwritten"
                )
            raise RuntimeError(
                "this thread holds a reservation or a peeked record of this ring: commit, "
                "abort or release it before the next call"
            )
        if rc == lib.SHMIPC_NOTOWNER:
            raise RuntimeError("nothing reserved or peeked by this thread on this ring")
        err = lib.shmipc_errno()
        raise OSError(err, f"ring operation failed ({rc}): {os.strerror(err)}")

    def _retry(self, rc: int) -> bool:
        """After a call came back without success: True to call again.

        SLICE/INTERRUPTED mean a wait returned to let Python run signal handlers (Ctrl-C);
        FULL/EMPTY mean the deadline passed. Either way, a side lock held by a thread that
        died is taken over first (its recovery is bookkeeping only, docs/internals/ring.md),
        and if that happened the call is worth one more try.
        """
        recovered = self._take_over_dead_holders()
        if rc != _BUSY:
            self._local.busy_retries = 0
        elif not recovered:
            # An SPSC side held by a thread of this process that has finished: its OS
            # thread (the identity in the word) outlives Thread.join() by a moment.
            recovered = self._await_finished_holders() and self._take_over_dead_holders()
            # Or another thread's liveness pass freed the side after this call was refused
            # (which side refused is not known here: a free one earns a few more tries).
            local = self._local
            if not recovered and local.busy_retries < 3:
                recovered = any(
                    lib.shmipc_load64_acquire(self._p, off) == 0
                    for off in (lib.SHMIPC_RING_OFF_P_LOCK, lib.SHMIPC_RING_OFF_C_LOCK)
                )
                local.busy_retries += recovered
            else:
                local.busy_retries = 0
        return rc in (_SLICE, _INTERRUPTED) or (recovered and rc in (_FULL, _EMPTY, _BUSY))

    def _await_finished_holders(self) -> bool:
        """Wait (up to a second) for side holders that are threads of this process no
        longer running Python code to be gone; True if any was waited for."""
        live = {t.native_id for t in threading.enumerate()}
        waited = False
        for off in (lib.SHMIPC_RING_OFF_P_LOCK, lib.SHMIPC_RING_OFF_C_LOCK):
            word = lib.shmipc_load64_acquire(self._p, off)
            tid = word & 0x7FFFFFFF
            if not word or tid in live or not _proc.is_own_thread(tid):
                continue
            waited = True
            deadline = time.monotonic() + 1.0
            while _proc.identity_alive(word) and time.monotonic() < deadline:
                time.sleep(0.001)
        return waited

    def _take_over_dead_holders(self) -> bool:
        """The liveness pass a waiter makes whenever a wait slice ends: take over a side lock
        whose holder died, then the claims' pass (shmipc/_claim.py: end a dead owner's
        quarantine, revoke a reservation stopped past the liveness interval). True if
        anything was freed."""
        p = self._p
        cap = self._cap
        took = False
        for producer, off in ((1, lib.SHMIPC_RING_OFF_P_LOCK), (0, lib.SHMIPC_RING_OFF_C_LOCK)):
            took |= take_over_if_dead(
                p, off, lambda holder, side=producer: lib.shmipc_ring_steal(p, cap, side, holder)
            )
        return self._claims.liveness_pass() or took

    # ---- copying paths -------------------------------------------------------------------

    def put(
        self, data: Any, *, type: int = 0, block: bool = True, timeout: float | None = None
    ) -> None:
        """Copy ``data`` (bytes-like) into the ring as one record; queue.Full on timeout."""
        self._put(data, type, deadline_ns(timeout) if block else 0)

    def _put(self, data: Any, type: int, deadline: int) -> None:
        if not 0 <= type <= TYPE_MAX:
            raise ValueError(f"record type must be in 0..{TYPE_MAX}, got {type}")
        if not isinstance(data, bytes):
            data = byte_view(data)
        n = len(data) if isinstance(data, bytes) else data.nbytes
        arg = data if isinstance(data, bytes) else ffi.from_buffer(data)
        rc = lib.shmipc_ring_put(self._p, self._cap, arg, n, type, deadline)
        while rc != _OK:
            if not self._retry(rc):
                self._raise(rc, n)
            rc = lib.shmipc_ring_put(self._p, self._cap, arg, n, type, deadline)

    def get_record(self, *, block: bool = True, timeout: float | None = None) -> tuple[int, bytes]:
        """The next record as (type, payload bytes); queue.Empty on timeout."""
        return self._get_record(deadline_ns(timeout) if block else 0)

    def _get_record(self, deadline: int) -> tuple[int, bytes]:
        scratch = self._local.scratch_ptr
        while True:
            r = lib.shmipc_ring_get(self._p, self._cap, scratch, SCRATCH_SIZE, deadline)
            if r >= 0:
                return r >> 40, _unpack(scratch, r & _LEN_MASK)
            if -r == _NEEDBUF:
                return self._get_large(deadline)
            if not self._retry(-r):
                self._raise(-r)

    def _get_large(self, deadline: int) -> tuple[int, bytes]:
        """A record too large for the scratch: a buffer of its size is made first, then the
        record is copied into it by one native call, so no Python object is allocated while
        the consumer lock is held (a GC pass or a finalizer could run there)."""
        need = self._local.scratch_ptr
        size = ffi.cast("uint64_t *", need)[0]  # the length the NEEDBUF answer left there
        while True:
            buf = bytearray(size)
            r = lib.shmipc_ring_get(self._p, self._cap, ffi.from_buffer(buf), size, deadline)
            if r >= 0:
                n = r & _LEN_MASK
                return r >> 40, bytes(buf) if n == size else bytes(memoryview(buf)[:n])
            if -r == _NEEDBUF:  # another consumer took that one: the next is larger
                size = ffi.cast("uint64_t *", ffi.from_buffer(buf))[0]
                continue
            if not self._retry(-r):
                self._raise(-r)

    def get(self, *, block: bool = True, timeout: float | None = None) -> bytes:
        """The next record's payload as bytes; queue.Empty on timeout."""
        return self.get_record(block=block, timeout=timeout)[1]

    def put_many(
        self,
        items: Iterable[Any],
        *,
        type: int = 0,
        block: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Put every item (bytes-like) in order, as few native calls as the room allows."""
        if not 0 <= type <= TYPE_MAX:
            raise ValueError(f"record type must be in 0..{TYPE_MAX}, got {type}")
        frames = [x if isinstance(x, bytes) else byte_view(x).tobytes() for x in items]
        if frames:
            self._put_joined(frames, type, deadline_ns(timeout) if block else 0)

    def _put_joined(
        self, frames: list[bytes], type: int, deadline: int, lens_list: list[int] | None = None
    ) -> None:
        """put_many's loop: the frames joined in one buffer that the C side walks by length;
        each native call stores as many as fit."""
        if lens_list is None:
            lens_list = list(map(len, frames))
        total = len(lens_list)
        lens = ffi.new("size_t[]", lens_list)
        src = b"".join(frames)
        base = ffi.from_buffer(src)
        done = offset = 0
        while done < total:
            r = lib.shmipc_ring_put_many(
                self._p, self._cap, base + offset, lens + done, total - done, type, deadline
            )
            if r > 0:
                offset += sum(lens_list[done : done + r])
                done += r
                continue
            if not self._retry(-r):
                if done and -r == _FULL:
                    raise queue.Full(f"{done} of {total} items were put before the ring filled")
                self._raise(-r, lens_list[done])

    def get_many_records(
        self, max_items: int, *, block: bool = True, timeout: float | None = None
    ) -> list[tuple[int, bytes]]:
        """Up to ``max_items`` records as (type, payload bytes): at least one, waiting up to
        ``timeout`` for it (queue.Empty if none came), then whatever else is there. One call
        returns at most :data:`GET_MANY_MAX` records, whatever ``max_items`` says."""
        max_items = operator.index(max_items)  # TypeError for a float or a str
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        max_items = min(max_items, GET_MANY_MAX)
        return self._get_many_records(max_items, deadline_ns(timeout) if block else 0)

    def _get_many_records(self, max_items: int, deadline: int) -> list[tuple[int, bytes]]:
        lens, types, blob = self._get_many_raw(max_items, deadline)
        return list(zip(types, split_blob(blob, lens), strict=True))

    def _get_many_raw(self, max_items: int, deadline: int) -> tuple[list[int], list[int], bytes]:
        """One native call's batch: the records' lengths, their types, and their payloads
        back to back in one bytes object (cheaper to slice than to build one by one)."""
        local = self._local
        assert max_items <= GET_MANY_MAX  # the callers cap it: the table is never regrown
        meta = local.meta
        while True:
            r = lib.shmipc_ring_get_many(
                self._p,
                self._cap,
                local.scratch_ptr,
                SCRATCH_SIZE,
                meta,
                max_items,
                deadline,
            )
            if r > 0:
                break
            if -r == _NEEDBUF:
                rtype, data = self._get_large(deadline)
                return [len(data)], [rtype], data
            if not self._retry(-r):
                self._raise(-r)
        lens = _unpack(meta, r)  # lists of ints, each in one call
        types = _unpack(meta + max_items, r)
        return lens, types, _unpack(local.scratch_ptr, sum(lens))

    def get_many(
        self, max_items: int, *, block: bool = True, timeout: float | None = None
    ) -> list[bytes]:
        """Up to ``max_items`` payloads as bytes (at least one; queue.Empty on timeout)."""
        return [p for _, p in self.get_many_records(max_items, block=block, timeout=timeout)]

    # ---- zero-copy paths -----------------------------------------------------------------

    def reserve(
        self, nbytes: int, *, type: int = 0, block: bool = True, timeout: float | None = None
    ) -> memoryview:
        """A writable view of ``nbytes`` inside the ring; ``commit()`` publishes it.

        Until this thread commits or aborts, other producers wait: fill the view promptly.
        Drop whatever was made from the view (slices, arrays) before committing.
        """
        if not 0 <= type <= TYPE_MAX:
            raise ValueError(f"record type must be in 0..{TYPE_MAX}, got {type}")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        local = self._local
        if local.reserved is not None:
            raise RuntimeError("this thread already has a reservation on this ring: commit it")
        deadline = deadline_ns(timeout) if block else 0
        while True:
            ptr = self._p
            r = lib.shmipc_ring_reserve(ptr, self._cap, nbytes, type, deadline)
            if r >= 0:
                try:
                    view = _new_view(self._mapping, self._map_off + HEADER_SIZE + r, nbytes, False)
                except BaseException:
                    lib.shmipc_ring_abort(ptr)
                    raise
                local.reserved = (view, view.obj, nbytes, ptr)
                return view
            if not self._retry(-r):
                self._raise(-r, nbytes)

    def commit(self) -> None:
        """Publish this thread's reservation; its view becomes unusable. BufferError (nothing
        published, the reservation kept) while anything made from the view is alive."""
        nbytes, ptr = self._take_reservation()
        if self._ptr is None:  # closed by another thread: give the claim back
            lib.shmipc_ring_abort(ptr)
            raise Closed("this ring handle was closed; nothing was published")
        rc = lib.shmipc_ring_commit(ptr, self._cap, nbytes)
        if rc == lib.SHMIPC_REVOKED:
            raise Revoked(
                f"this thread's reservation of {nbytes} bytes on {self._label} was "
                "revoked while the process was stopped for longer than the ring's liveness "
                "interval; nothing of it was published: reserve again to send it"
            )
        if rc != _OK:
            self._raise(rc)

    def abort(self) -> None:
        """Drop this thread's reservation: nothing is published. BufferError (the
        reservation kept) while anything made from its view is alive."""
        _, ptr = self._take_reservation()
        lib.shmipc_ring_abort(ptr)

    def _take_reservation(self) -> tuple[int, Any]:
        """End this thread's reservation's view (BufferError, nothing changed, while it is
        exported) and take the reservation: (nbytes, ring address)."""
        reserved = self._local.reserved
        if reserved is None:
            raise RuntimeError("this thread has no reservation on this ring")
        view, window, nbytes, ptr = reserved
        window.retire(view)  # BufferError, nothing changed, while anything holds its bytes
        self._local.reserved = None
        return nbytes, ptr

    def _peek_index(self, deadline: int) -> tuple[int, Any]:
        """Peek the next record: (its data index, the ring address the peek was made on)."""
        if self._local.peeked is not None:
            raise RuntimeError("this thread already peeked a record of this ring: release it")
        while True:
            ptr = self._p
            r = lib.shmipc_ring_peek(ptr, self._cap, self._local.peek_out, deadline)
            if r >= 0:
                self._local.peeked = (None, None, ptr)
                return r, ptr
            if not self._retry(-r):
                self._raise(-r)

    def peek(self, *, block: bool = True, timeout: float | None = None) -> memoryview:
        """A read-only view of the next record's payload; ``release()`` frees the record.

        Until this thread releases it, other consumers wait.
        """
        local = self._local
        idx, ptr = self._peek_index(deadline_ns(timeout) if block else 0)
        try:
            view = _new_view(
                self._mapping, self._map_off + HEADER_SIZE + idx, local.peek_out[0], True
            )
        except BaseException:
            local.peeked = None
            lib.shmipc_ring_unpeek(ptr)
            raise
        local.peeked = (view, view.obj, ptr)
        return view

    @property
    def peeked_type(self) -> int:
        """The type of the record this thread peeked."""
        return int(self._local.peek_out[1])

    def release(self) -> None:
        """Free the record this thread peeked; its view becomes unusable. BufferError (the
        record kept, still peeked) while anything made from the view is alive."""
        self._release_peeked()

    def unpeek(self) -> None:
        """Let go of the record this thread peeked without consuming it (it stays next).
        BufferError (still peeked) while anything made from the view is alive."""
        lib.shmipc_ring_unpeek(self._take_peek())

    def _take_peek(self) -> Any:
        """End this thread's peeked view (BufferError, nothing changed, while it is
        exported) and take the peek: the ring address it was made on."""
        peeked = self._local.peeked
        if peeked is None:
            raise RuntimeError("this thread has not peeked a record of this ring")
        view, window, ptr = peeked
        if window is not None:  # BufferError, nothing changed, while anything holds its bytes
            window.retire(view)
        self._local.peeked = None
        return ptr

    def _release_peeked(self) -> None:
        ptr = self._take_peek()
        if self._ptr is None:  # closed by another thread: the record stays the next one
            lib.shmipc_ring_unpeek(ptr)
            raise Closed("this ring handle was closed; the record was not consumed")
        rc = lib.shmipc_ring_release(ptr, self._cap)
        if rc != _OK:
            self._raise(rc)

    # ---- observation ---------------------------------------------------------------------

    def _u64(self, off: int) -> int:
        return lib.shmipc_load64_relaxed(self._p, off)

    def statistics(self) -> RingStatistics:
        """Counters and depth, read without locking (each value is atomic on its own)."""
        u = self._u64
        msgs_out = u(lib.SHMIPC_RING_OFF_C_MSGS)
        msgs_in = u(lib.SHMIPC_RING_OFF_P_MSGS)
        head = u(lib.SHMIPC_RING_OFF_C_HEAD)
        tail = u(lib.SHMIPC_RING_OFF_P_TAIL)
        return RingStatistics(
            capacity=self._cap,
            messages_in=msgs_in,
            messages_out=msgs_out,
            bytes_in=u(lib.SHMIPC_RING_OFF_P_BYTES),
            bytes_out=u(lib.SHMIPC_RING_OFF_C_BYTES),
            depth=max(0, msgs_in - msgs_out),
            depth_bytes=max(0, tail - head),
            producer_waits=u(lib.SHMIPC_RING_OFF_P_WAITS),
            consumer_waits=u(lib.SHMIPC_RING_OFF_C_WAITS),
            consumer_wakes=u(lib.SHMIPC_RING_OFF_P_WAKES),
            producer_wakes=u(lib.SHMIPC_RING_OFF_C_WAKES),
            abandoned=u(lib.SHMIPC_RING_OFF_P_ABANDONED),
            consumers_recovered=u(lib.SHMIPC_RING_OFF_C_RECOVERED),
            revoked=u(lib.SHMIPC_RING_OFF_P_REVOKED),
            quarantined=self._claims.quarantined(),
            missed_wakes=u(lib.SHMIPC_RING_OFF_MISSED_WAKES),
        )

    def qsize(self) -> int:
        """Messages committed and not yet released (exact when the ring is quiet)."""
        n = self._u64(lib.SHMIPC_RING_OFF_P_MSGS) - self._u64(lib.SHMIPC_RING_OFF_C_MSGS)
        return max(0, n)

    def recover(self) -> bool:
        """The liveness pass that waits make by themselves between slices, on demand: take
        over a side lock whose holder died, end a dead holder's quarantine, revoke a
        reservation stopped past the liveness interval (as far as this handle has watched
        it). True if anything was freed."""
        return self._take_over_dead_holders()

    # ---- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Drop this handle (a creator's named segment is unlinked); later calls on it raise
        Closed. A reservation (peek) this thread holds is aborted (unpeeked) first:
        BufferError, nothing changed, while anything made from its view is alive. On an SPSC
        ring, the sides this thread holds are given up. The mapping stays while this object
        lives, so a call another thread is inside ends with Closed, never a crash."""
        self._let_go()
        if self._ptr is not None:
            lib.shmipc_ring_leave(self._ptr)
        self._ptr = None
        if self._owns_region:
            self._region.close()

    def _let_go(self) -> None:
        """Abort this thread's reservation and unpeek its peek, checking both views' exports
        before touching either (BufferError)."""
        local = self._local
        for held in (local.reserved, local.peeked):
            if held is not None:  # retiring is idempotent: a retry after BufferError is fine
                _retire(held[0], held[1])
        if local.reserved is not None:
            self.abort()
        if local.peeked is not None:
            lib.shmipc_ring_unpeek(self._take_peek())

    def unlink(self) -> None:
        self._region.unlink()

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._region.name is None:
            raise TypeError(
                "this ring lives in anonymous memory, shared only with children forked after "
                "it was made; use Ring.create() for one that other processes attach by name"
            )
        trusted = self._region._trusted_uids  # the trust it was attached with goes along
        if self._owns_region:
            return (_attach_ring, (self._region.name, self._region.kind, trusted))
        return (_attach_ring_at, (self._region.name, self._offset, trusted))

    def __repr__(self) -> str:
        return f"<shmipc.Ring {self.name or 'anonymous'} capacity={self._cap}>"


def _holds_nothing() -> bool:
    return False


def _retire(view: memoryview | None, window: Any) -> None:
    """End a reserved or peeked record's view: BufferError, and nothing changed, while a
    slice, PickleBuffer, array or other buffer made from it is alive."""
    if window is not None:
        window.retire(view)  # counts the view's own exports and its slices' before any change


def _attach_ring(name: str, kind: int, trusted_uids: tuple[int, ...] = ()) -> Ring:
    return Ring.attach(name, kind=kind, trusted_uids=trusted_uids)


def _attach_ring_at(name: str, offset: int, trusted_uids: tuple[int, ...] = ()) -> Ring:
    ring = Ring.at(Region.attach(name, trusted_uids=trusted_uids), offset, create=False)
    ring._owns_region = True
    return ring
