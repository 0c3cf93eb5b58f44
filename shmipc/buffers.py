"""A shared block pool: loan a block, fill it in place, send a small handle; the receiver maps
a read-only view of the same bytes. See docs/zero-copy.md for the user's guide.

Design
======
A pool is one named segment (``Kind.BUFFER_POOL``): the common header, the pool header
(:data:`POOL_LAYOUT`), a table of size classes, one 128-byte header per block (csrc/shmipc.h,
"B1: block pool") and the blocks themselves, each page-aligned. Block sizes are powers of two
from 4 KiB; :func:`plan` picks them from the pool's size (or the caller gives ``classes=``).
A request takes the smallest class that fits, or a larger one when that class has no free
block. A request above the largest class gets a *dedicated segment*: a named segment of its
own, ``<pool name>.d<pool tag>_<16 random hex>`` (the tag is a digest of the pool's name and
its creator's pid and start time, so it changes when the name is reused; the name passes
``_names.check_name``), holding one block header and the payload. It belongs to the pool,
not to the process that made it (its header names the pool's creator, and that process does
not unlink it at exit, so a block in transit outlives its sender). Whoever frees its block
removes its name; the pool creator's ``close`` removes those left; the liveness pass frees
those whose holders died; ``dedicated_owner(name)`` tells ``shmipc gc`` which pool one
belongs to. A receiver maps one only under its own pool's prefix.

References and holders
----------------------
Each block header keeps up to :data:`SLOTS` holder slots: a *key* and a count. A process's
key is its pid and the low bits of its start time (shmipc._proc), so a dead holder is
recognised and its references taken back; a channel's *transit* key holds the references of
messages that are in the channel (sent, not yet received). Every change is one call into
csrc/pool.c that runs under the block's lock (the protocol and its invariants are at the top
of that file). The life of a block sent through a Queue:

1. ``loan``: the sender allocates it (one reference, the sender's key).
2. ``put``: the sender adds one reference for the channel's transit key (a copied-once
   payload *moves* the sender's reference there instead). The sender's own reference stays
   with its ``Loan`` until that is released or collected.
3. ``get``: the receiver moves one reference from the transit key to its own key and wraps it
   in a read-only :class:`~shmipc._native.PoolBuffer`; the block is freed when the last
   reference goes (its last view collected, or ``release()``).

So a sender SIGKILLed after ``put`` loses nothing (the transit reference holds the block and
the receiver claims it), a receiver SIGKILLed while holding views gives its references back
through the liveness pass (below), and nothing is freed while a key holds a reference.

Invariants this module keeps (the shared-memory ones are P1-P6 in csrc/pool.c):

* B1 Nothing read from shared memory places memory: block offsets come from the class table
  validated once at attach and kept privately; a handle's class, index and offset must match
  it exactly, its length must fit the block, or the handle is ``CorruptedError``.
* B2 A receiver reaches a block only by claiming a transit reference of its own channel for
  the generation the handle names (P3): a stale, forged or replayed handle claims nothing.
* B3 A view holds one reference and an export of the mapping (``PoolBuffer``), so a view
  never outlives its block's reference nor its mapping, whatever is closed
  (docs/internals/lifetime.md). A forked child never gives back its parent's references.
* B4 The liveness pass takes back only the references of keys that ``_proc`` says are dead
  ("cannot tell" is alive), and a block lock only from a dead locker. Transit references are
  never taken back by it: they belong to messages still in a channel.
* B5 A receiver maps a block writable only when asked (``PoolHook.writable``) and only when
  it is the block's sole holder (P7: checked under the block lock right after the claim);
  otherwise it gets a private copy (so a writable result never aliases another holder's).

Known limits (found by the model test, tests/unit/buffers/test_pool_model.py): a receiver
killed inside ``get`` between taking the record off the ring and claiming its block, or a
sender killed inside ``put`` between adding the transit reference and storing the record
(each a window of microseconds inside one call), leaves that block held by the channel's
transit key until the pool is destroyed: the pool cannot tell whether the record is in the
ring, so it keeps the block rather than risk freeing a message still to be received.

Topic adoption (shmipc/topic_pool.py): a publisher encodes with a hook keyed to its own
process, then, under the topic's publisher lock, moves each block's reference to n transit
references (n = subscribers counted under that lock); each subscriber decodes with
``PoolHook.decode`` (claims one); whoever retires a subscriber walks its unread frames with
``PoolHook.discard(frame, 1)``. Under "overwrite" the ring holds one transit reference per
record, dropped by its overwriter, and subscribers claim by adding one of their own
(``claim_from = 0``; a stale generation raises ``on_stale()``, Lagged).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import mmap
import os
import pickle
import secrets
import stat
import struct
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, SupportsIndex

from msgpack import ExtType, Packer, packb, unpackb

from . import _proc
from . import codec as _codec
from ._names import check_name
from ._native import PoolBuffer, ffi, lib
from .errors import Closed, CorruptedError, Lagged, ShmipcError
from .layout import CACHE_LINE, SEGMENT_LAYOUT, InitState, Kind, Layout, align_up
from .region import PAGE_SIZE, SHM_DIR, Region, _owned
from .sync import deadline_ns

__all__ = [
    "BufferPool",
    "ClassStatistics",
    "Loan",
    "PoolExhausted",
    "PoolHook",
    "PoolStatistics",
    "inspect_segment",
    "plan",
]

MIN_BLOCK = 4096
MAX_BLOCK = 64 << 20
MAX_CLASSES = 16
SLOTS = lib.SHMIPC_POOL_SLOTS
BLOCK_HEADER = lib.SHMIPC_POOL_BLOCK_HEADER
POOL_VERSION = 1
DEFAULT_LIVENESS = 1.0
_SPIN_NS = 50_000
_KEY_MASK = (1 << 48) - 1
_TRANSIT = 1 << 47
_PID_BITS = 22
_START_BITS = 25
_COUNT_SHIFT = 48
_EXT_HANDLE = 18  # the codec ext code reserved for "arrays by reference to pool blocks"
_POOL_WARM = lib.SHMIPC_POOL_WARM
_checked_dtypes: set[Any] = set()  # numpy dtypes codec._check_dtype accepted (a few at most)

# Dedicated segments (a request above the largest class): one block each, named
# "<pool name>.d<pool tag, 8 hex>_<16 random hex>", segment kind BUFFER_POOL with flags bit
# DEDICATED_FLAG. Absolute offsets in such a segment (a layout of its own, never read back):
DEDICATED = 255  # the size class a handle names for a dedicated block
DEDICATED_FLAG = 1
_D_HDR = SEGMENT_LAYOUT.size  # the block header
_D_SEQ = _D_HDR + BLOCK_HEADER  # its own free-sequence word (nobody waits on it)
_D_WAITERS = _D_SEQ + 8
_D_DATA = PAGE_SIZE  # the payload, page-aligned
_RAND_HEX = 16


class PoolExhausted(ShmipcError, BufferError):
    """No block of the pool was free within the timeout (the pool is too small for the load,
    or holders keep their loans): raised by ``loan``; a Queue's ``put`` raises queue.Full."""


def _pool_layout() -> Layout:
    lay = Layout("buffer pool header")
    lay.line("free_seq", 4, "I")  # futex word: bumped by every free (csrc/pool.c announce_free)
    lay.line("waiters", 4, "I")  # sleepers on free_seq
    lay.line("reclaimed", 8, "Q")  # references taken back from dead holders
    lay.add("version", 4, "I")
    lay.add("nclasses", 4, "I")
    lay.add("slots", 4, "I")
    lay.add("block_header", 4, "I")
    lay.add("liveness_ns", 8, "Q")
    lay.add("classes", MAX_CLASSES * 32, None)  # per class: block size, count, header, data
    lay.pad_to(CACHE_LINE)
    return lay


POOL_LAYOUT = _pool_layout()
_CLASS = struct.Struct("<QQQQ")  # block size, block count, first header offset, first data offset


def plan(size: int) -> list[tuple[int, int]]:
    """The default size classes of a pool of ``size`` bytes: [(block size, count), ...].

    Powers of two from 4 KiB up to L, the largest power of two (at most 64 MiB) no larger
    than an eighth of the pool. Class L gets a quarter of the pool (so at least two blocks);
    every smaller class gets an equal share of the rest, as whole blocks.
    """
    usable = size - POOL_LAYOUT.size - 2 * PAGE_SIZE
    largest = MAX_BLOCK
    while largest > MIN_BLOCK and largest > usable // 8:
        largest //= 2
    n = largest.bit_length() - MIN_BLOCK.bit_length() + 1
    top = usable // 4
    rest = (usable - top) // max(n - 1, 1)
    classes = []
    for i in range(n):
        bsize = MIN_BLOCK << i
        share = top if bsize == largest else rest
        count = share // (bsize + BLOCK_HEADER)
        if count:
            classes.append((bsize, count))
    if not classes or usable < 1 << 15:
        raise ValueError(f"a pool of {size} bytes is too small: give at least 64 KiB")
    return classes


@dataclasses.dataclass(frozen=True)
class _Class:
    size: int
    count: int
    hdr: int  # absolute offset (from the mapping's start) of the first block header
    data: int  # absolute offset of the first block's data (page-aligned)


def _geometry(payload: int, classes: list[tuple[int, int]]) -> list[_Class]:
    """Where every class's headers and blocks go in a payload of ``payload`` bytes."""
    base = SEGMENT_LAYOUT.size
    hdr = base + POOL_LAYOUT.size
    total_headers = sum(c for _, c in classes) * BLOCK_HEADER
    data = align_up(hdr + total_headers, PAGE_SIZE)
    out = []
    for bsize, count in classes:
        out.append(_Class(bsize, count, hdr, data))
        hdr += count * BLOCK_HEADER
        data += count * bsize
    if data > base + payload:
        raise ValueError(
            f"classes {classes} need {data - base} bytes, more than the pool's {payload}"
        )
    return out


def _check_classes(classes: Mapping[int, int] | Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    items = sorted(dict(classes).items()) if not isinstance(classes, list) else sorted(classes)
    if not items or len(items) > MAX_CLASSES:
        raise ValueError(f"give 1 to {MAX_CLASSES} size classes")
    for bsize, count in items:
        if bsize < MIN_BLOCK or bsize & (bsize - 1) or count < 1 or count >= 1 << 31:
            raise ValueError(
                f"class ({bsize}, {count}): block sizes are powers of two >= {MIN_BLOCK}, "
                "counts >= 1"
            )
    return items


_self_pid = lib.shmipc_self_pid  # getpid() without a system call (csrc/native.c)
_key_cache = (0, 0)  # (pid, key) of the process that computed it


def _numpy() -> Any:
    """numpy (imported on first use: the pool itself does not need it)."""
    np = sys.modules.get("numpy")
    if np is None:
        import numpy as np
    return np


def _check_dtype(dtype: Any) -> None:
    """codec._check_dtype (TypeError), remembered for the few dtypes a process sends."""
    if dtype not in _checked_dtypes:
        _codec._check_dtype(dtype, TypeError)
        if len(_checked_dtypes) < 64:
            _checked_dtypes.add(dtype)


def _self_key() -> int:
    """This process's holder key: (pid, start time) packed; computed once per process."""
    global _key_cache
    pid = _self_pid()
    if _key_cache[0] != pid:
        pid, started = _proc.self_identity()
        key = (pid & ((1 << _PID_BITS) - 1)) | ((started & ((1 << _START_BITS) - 1)) << _PID_BITS)
        _key_cache = (pid, key)
    return _key_cache[1]


def _key_state(key: int) -> _proc.Liveness:
    if key & _TRANSIT:
        return _proc.Liveness.ALIVE  # a channel's references: never the liveness pass's
    pid = key & ((1 << _PID_BITS) - 1)
    started = key >> _PID_BITS
    return _proc._judge(pid, started, (1 << _START_BITS) - 1, True)


def transit_key(tag: bytes) -> int:
    """The holder key of references in transit in the channel whose tag is ``tag``."""
    return _TRANSIT | int.from_bytes(tag[:4], "little")


def channel_tag(name: str, creator_pid: int, creator_start: int) -> bytes:
    """4 bytes naming one incarnation of a channel (a queue or topic segment)."""
    seed = f"{name}\0{creator_pid}\0{creator_start}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(seed, digest_size=4, person=b"shmipc-transit").digest()


@dataclasses.dataclass(frozen=True)
class ClassStatistics:
    """One size class: its block size and how many of its blocks are free or in use."""

    block_size: int
    total: int
    free: int
    in_use: int


@dataclasses.dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a pool (read without locks: each block's state as it was when read)."""

    size: int
    free_bytes: int
    classes: list[ClassStatistics]
    reclaimed: int
    dedicated_segments: int = 0


class Loan(PoolBuffer):
    """A writable block of a pool, lent to this process: fill it, then send it (``q.put``).

    ``memoryview(loan)`` and ``numpy.frombuffer(loan)`` see the block in place. The block's
    reference is given back by ``release()`` (``BufferError`` while a view of it is alive) or
    when the loan and every view of it have been collected.
    """

    __slots__ = ("__weakref__", "_block", "_map", "_pool_name")
    _block: _Block
    _map: Any
    _pool_name: str

    def __enter__(self) -> Loan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        if int(protocol) < 5:
            raise TypeError("a Loan pickles only with protocol 5 (as an out-of-band buffer)")
        return (_loan_from_buffer, (pickle.PickleBuffer(self),))

    def __repr__(self) -> str:
        state = "released" if self.released else f"{self.nbytes} bytes"
        return f"<shmipc.Loan {state}>"


class _Received(PoolBuffer):
    """A receiver's read-only reference to a block; sending a view of it again (forwarding)
    adds a transit reference to the same block instead of copying it."""

    __slots__ = ("__weakref__", "_block", "_map", "_pool_name")
    _block: _Block
    _map: Any
    _pool_name: str


def _loan_from_buffer(buf: Any) -> Any:
    return buf  # an in-band copy (pickled without a pool): the bytes, as the buffer holds them


class _Block:
    """Where one reference lives: (class, index, generation) of a pool."""

    __slots__ = ("cls", "dmap", "gen", "index", "key", "offset", "pid")

    def __init__(
        self, cls: int, index: int, gen: int, offset: int, key: int, dmap: _DMap | None = None
    ) -> None:
        self.dmap = dmap  # the dedicated segment's map, or None for a block of the pool
        self.cls = cls
        self.index = index
        self.gen = gen
        self.offset = offset  # absolute offset of the block's data in the mapping
        self.key = key  # the holder key the reference was taken for
        self.pid = _self_pid()  # the process that holds it (a forked child does not)


class _Map:
    """The parts of a pool a reference needs after the pool handle is gone: the mapping's
    cffi pointer (which pins it, docs/internals/lifetime.md) and the validated geometry."""

    def __init__(self, region: Region, classes: list[_Class]) -> None:
        self.mm, _ = region._mapping(0)
        self.base = ffi.from_buffer("char[]", self.mm, require_writable=True)
        self.addr = int(ffi.cast("uintptr_t", self.base))
        self.classes = classes
        payload = SEGMENT_LAYOUT.size
        self.seq_off = payload + POOL_LAYOUT["free_seq"]
        self.waiters_off = payload + POOL_LAYOUT["waiters"]
        self.reclaimed_off = payload + POOL_LAYOUT["reclaimed"]

    def hdr(self, cls: int, index: int) -> int:
        return self.classes[cls].hdr + index * BLOCK_HEADER

    def adjust(
        self, cls: int, index: int, gen: int, from_key: int, from_n: int, to_key: int, to_n: int
    ) -> int:
        """One csrc/pool.c adjust, retried while a dead locker holds the block lock."""
        hdr = self.hdr(cls, index)
        args = (self.base, hdr, gen, from_key, from_n, to_key, to_n, self.seq_off, self.waiters_off)
        # The first try asks nobody for the lock's holder (pool.c takes NULL): a busy block
        # is rare, and the out-parameter costs an allocation a call.
        rc = lib.shmipc_pool_adjust(*args, ffi.NULL)
        if rc != lib.SHMIPC_POOL_BUSY:
            return rc
        busy = ffi.new("uint64_t *")
        while True:
            rc = lib.shmipc_pool_adjust(*args, busy)
            if rc != lib.SHMIPC_POOL_BUSY:
                return rc
            holder = busy[0]
            if holder and _proc.identity_state(holder) is _proc.Liveness.DEAD:
                lib.shmipc_pool_takeover(self.base, hdr, holder, self.seq_off, self.waiters_off)
            else:
                time.sleep(0.0005)

    def sole(self, cls: int, index: int, gen: int, key: int) -> bool:
        """Whether ``key`` holds the block's only reference (P7, under the block lock)."""
        busy = ffi.new("uint64_t *")
        hdr = self.hdr(cls, index)
        while True:
            rc = lib.shmipc_pool_sole(self.base, hdr, gen, key, busy)
            if rc != lib.SHMIPC_POOL_BUSY:
                return rc == 1
            holder = busy[0]
            if holder and _proc.identity_state(holder) is _proc.Liveness.DEAD:
                lib.shmipc_pool_takeover(self.base, hdr, holder, self.seq_off, self.waiters_off)
            else:
                time.sleep(0.0005)

    def drop(self, block: _Block) -> None:
        """Give back one reference of this process (a PoolBuffer's on_release)."""
        if _self_pid() != block.pid:
            return  # a forked child never held its parent's references (B3)
        self.adjust(block.cls, block.index, block.gen, block.key, 1, 0, 0)


class _DMap(_Map):
    """A dedicated segment's map: one block; whoever frees it removes the segment's name."""

    def __init__(self, region: Region) -> None:
        self.region = region
        self.mm, _ = region._mapping(0)
        self.base = ffi.from_buffer("char[]", self.mm, require_writable=True)
        self.addr = int(ffi.cast("uintptr_t", self.base))
        self.size = len(self.mm) - _D_DATA  # bytes of payload the block can hold
        self.classes = [_Class(self.size, 1, _D_HDR, _D_DATA)]
        self.seq_off = _D_SEQ
        self.waiters_off = _D_WAITERS
        self.name = region.name or ""

    def hdr(self, cls: int, index: int) -> int:
        return _D_HDR

    def adjust(
        self, cls: int, index: int, gen: int, from_key: int, from_n: int, to_key: int, to_n: int
    ) -> int:
        rc = super().adjust(cls, index, gen, from_key, from_n, to_key, to_n)
        if rc == lib.SHMIPC_POOL_FREED:
            _unlink_segment(self.name)  # a dedicated block is never reused
        return rc


def _unlink_segment(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except OSError:
        pass  # gone already, or another uid's (the pool creator's close or gc removes it)


_attached: dict[str, BufferPool] = {}
_attached_lock = threading.Lock()


class BufferPool:
    """A named shared block pool (see the module docstring and docs/zero-copy.md)."""

    def __init__(self, region: Region, classes: list[_Class], liveness_ns: int) -> None:
        # Use create() or attach().
        self._region: Region | None = region
        self._map = _Map(region, classes)
        self._classes = classes
        self._liveness_ns = liveness_ns
        self._hint = [0] * len(classes)
        self._last_pass = time.monotonic_ns()
        self._name = region.name
        self._name_bytes = (region.name or "").encode("ascii")  # as handles carry it
        self._size = region.size
        self._trusted = region._trusted_uids
        self._reclaim_lock = threading.Lock()
        header = region.header
        assert header is not None and region.file_owner is not None
        tag = channel_tag(self.name, header.creator_pid, header.creator_start)
        self._dedicated_prefix = f"{self.name}.d{tag.hex()}_"
        self._mode = region.file_owner[1]
        self._creator = (header.creator_pid, header.creator_start)

    # ---- creation ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str | None = None,
        *,
        size: int,
        mode: int = 0o600,
        classes: Mapping[int, int] | None = None,
        liveness_interval: float = DEFAULT_LIVENESS,
    ) -> BufferPool:
        """A new pool of ``size`` bytes. ``classes`` ({block size: count}) overrides
        :func:`plan`; ``liveness_interval`` is how often a waiting loan looks for dead
        holders."""
        if not isinstance(size, int) or size < 1 << 16:
            raise ValueError(f"size must be an int >= 64 KiB, not {size!r}")
        chosen = _check_classes(classes) if classes is not None else plan(size)
        geometry = _geometry(size, chosen)
        liveness_ns = int(liveness_interval * 1e9)
        if liveness_ns <= 0:
            raise ValueError("liveness_interval must be > 0")

        def init(region: Region) -> None:
            buf = region.buffer
            struct.pack_into(
                "<IIIIQ",
                buf,
                POOL_LAYOUT["version"],
                POOL_VERSION,
                len(geometry),
                SLOTS,
                BLOCK_HEADER,
                liveness_ns,
            )
            for i, c in enumerate(geometry):
                _CLASS.pack_into(
                    buf, POOL_LAYOUT["classes"] + 32 * i, c.size, c.count, c.hdr, c.data
                )
            for ci, c in enumerate(geometry):
                rel = c.hdr - SEGMENT_LAYOUT.size
                for i in range(c.count):
                    struct.pack_into("<I", buf, rel + i * BLOCK_HEADER + 16, ci)

        region = Region._create_segment(
            size, kind=Kind.BUFFER_POOL, name=name, mode=mode, init=init
        )
        pool = cls(region, geometry, liveness_ns)
        with _attached_lock:
            _attached[pool.name] = pool
        return pool

    @classmethod
    def attach(cls, name: str, *, trusted_uids: Iterable[int] = ()) -> BufferPool:
        """Map the pool another process created; its class table is checked (B1)."""
        region = Region._attach_segment(name, kind=Kind.BUFFER_POOL, trusted_uids=trusted_uids)
        try:
            geometry, liveness_ns = _read_geometry(region.buffer, region.size, name)
            return cls(region, geometry, liveness_ns)
        except BaseException:
            region.close()
            raise

    # ---- properties ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        assert self._name is not None
        return self._name

    @property
    def size(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._region is None

    @property
    def largest_block(self) -> int:
        return self._classes[-1].size

    def _live(self) -> _Map:
        if self._region is None:
            raise Closed("this pool handle is closed")
        return self._map

    # ---- loans ---------------------------------------------------------------------------

    def loan(self, nbytes: int, timeout: float | None = None) -> Loan:
        """A writable block of at least ``nbytes`` (the Loan is exactly ``nbytes`` long).
        Waits for a free block up to ``timeout`` (None: for ever); PoolExhausted after."""
        block = self._alloc(nbytes, deadline_ns(timeout))
        return self._loan_of(block, nbytes)

    def loan_array(self, shape: Any, dtype: Any, timeout: float | None = None) -> Any:
        """A writable C-ordered ``numpy.ndarray`` in a block; its base keeps the loan."""
        np = _numpy()
        dt = np.dtype(dtype)
        _check_dtype(dt)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = 1
        for n in shape:
            count *= int(n)
        loan = self.loan(max(count * dt.itemsize, 1), timeout)
        arr = np.frombuffer(loan, dt, count)
        return arr if len(shape) == 1 else arr.reshape(shape)

    def _loan_of(self, block: _Block, nbytes: int, readonly: bool = False) -> Any:
        m = block.dmap or self._map
        if readonly:
            return PoolBuffer(m.mm, block.offset, nbytes, readonly, _Release(m, block))
        buf = Loan(m.mm, block.offset, nbytes, readonly, _Release(m, block))
        buf._block = block
        buf._map = m
        buf._pool_name = self.name
        return buf

    def _alloc(self, nbytes: int, deadline: int) -> _Block:
        if (
            type(nbytes) is not int and (not isinstance(nbytes, int) or isinstance(nbytes, bool))
        ) or nbytes < 0:
            raise TypeError(f"nbytes must be an int >= 0, not {nbytes!r}")
        m = self._live()
        classes = self._classes
        first = 0
        for c in classes:
            if c.size >= nbytes:
                break
            first += 1
        else:
            return self._alloc_dedicated(nbytes)
        key = _self_key()
        gen = ffi.new("uint32_t *")
        hint = self._hint
        alloc = lib.shmipc_pool_alloc
        passes = 0
        while True:
            seq = lib.shmipc_load32_acquire(m.base, m.seq_off)
            for ci in range(first, len(classes)):
                c = classes[ci]
                idx = alloc(m.base, c.hdr, c.count, hint[ci], ci, key, nbytes, gen)
                if idx >= 0:
                    if idx >= _POOL_WARM:  # the cursor is the rest's (pool.c)
                        hint[ci] = (idx + 1) % c.count
                    if time.monotonic_ns() - self._last_pass >= self._liveness_ns:
                        self.reclaim()
                    return _Block(ci, idx, gen[0], c.data + idx * c.size, key)
            now = time.monotonic_ns()
            if passes == 0 or now - self._last_pass >= self._liveness_ns:
                passes += 1
                if self.reclaim():
                    continue
            if deadline != -1 and now >= deadline:
                raise PoolExhausted(
                    f"no free block of {nbytes} bytes or more in pool {self.name!r} "
                    f"({self.size} bytes; blocks of up to {self.largest_block} bytes) within "
                    "the timeout: holders keep their loans, or the pool is too small"
                )
            slice_end = now + min(self._liveness_ns, 100_000_000)
            wait_until = slice_end if deadline == -1 else min(deadline, slice_end)
            lib.shmipc_wait_while32(m.base, m.seq_off, seq, m.waiters_off, wait_until, _SPIN_NS)

    def _alloc_dedicated(self, nbytes: int) -> _Block:
        """A block of its own for a request above the largest class: a new segment named
        under this pool's prefix, owned by the pool (not by this process: it must outlive
        a sender that exits after put). Removed by whoever frees its block, by the pool
        creator's close, or by the liveness pass when its holders died."""
        name = check_name(self._dedicated_prefix + secrets.token_hex(_RAND_HEX // 2))

        pool_pid, pool_start = self._creator

        def init(region: Region) -> None:
            struct.pack_into("<I", region.buffer, _D_HDR - SEGMENT_LAYOUT.size + 16, DEDICATED)
            # The pool's creator is the segment's: `shmipc gc` must not take a block in
            # transit for an orphan because the process that made it exited.
            view = region._view
            struct.pack_into("<I", view, SEGMENT_LAYOUT["creator_pid"], pool_pid)
            struct.pack_into("<Q", view, SEGMENT_LAYOUT["creator_start"], pool_start)

        region = Region._create_segment(
            _D_DATA - SEGMENT_LAYOUT.size + nbytes,
            kind=Kind.BUFFER_POOL,
            name=name,
            mode=self._mode,
            init=init,
            flags=DEDICATED_FLAG,
        )
        region._owner_pid = None  # the pool owns it, not this process (see above)
        _owned.discard(region)
        dmap = _DMap(region)
        key = _self_key()
        gen = ffi.new("uint32_t *")
        idx = lib.shmipc_pool_alloc(dmap.base, _D_HDR, 1, 0, DEDICATED, key, nbytes, gen)
        if idx != 0:  # pragma: no cover - nobody else knows the name yet
            _unlink_segment(name)
            raise CorruptedError(f"dedicated segment {name!r} was taken while being made")
        return _Block(DEDICATED, 0, gen[0], _D_DATA, key, dmap)

    def _dedicated_names(self) -> list[str]:
        try:
            return [n for n in os.listdir(SHM_DIR) if _is_dedicated_of(n, self._dedicated_prefix)]
        except OSError:
            return []

    def _attach_dedicated(self, name: str, trusted_uids: Iterable[int]) -> _DMap:
        """Map a dedicated segment of this pool named by a handle (checked: B1)."""
        if not _is_dedicated_of(name, self._dedicated_prefix):
            raise CorruptedError(
                f"handle names segment {name!r}, not a dedicated block of pool {self.name!r}"
            )
        region = _map_dedicated(name, tuple(trusted_uids))
        header = region.header
        if header is None or not header.flags & DEDICATED_FLAG or region.size < _D_DATA:
            region.close()
            raise CorruptedError(f"segment {name!r} is not a dedicated block")
        return _DMap(region)

    # ---- liveness ------------------------------------------------------------------------

    def reclaim(self) -> int:
        """The liveness pass: take back every reference held by a process known to be dead,
        and every block lock a dead thread holds, in the pool and in its dedicated segments
        (a dedicated segment whose block is free is removed). Returns how many blocks it
        freed."""
        if not self._reclaim_lock.acquire(blocking=False):
            return 0
        try:
            self._last_pass = time.monotonic_ns()
            m = self._live()
            verdicts: dict[int, _proc.Liveness] = {}
            freed = 0
            for ci, c in enumerate(self._classes):
                for i in range(c.count):
                    freed += self._reclaim_block(m, m, ci, i, verdicts)
            for name in self._dedicated_names():
                try:
                    dmap = self._attach_dedicated(name, self._trusted)
                except CorruptedError:
                    continue
                try:
                    freed += self._reclaim_block(m, dmap, DEDICATED, 0, verdicts)
                    state = lib.shmipc_load64_acquire(dmap.base, _D_HDR + 8)
                    if not state & 1 and state >> 32:
                        _unlink_segment(name)  # freed: a dedicated block is never reused
                finally:
                    dmap.region.close()
            return freed
        finally:
            self._reclaim_lock.release()

    def _reclaim_block(
        self, pm: _Map, m: _Map, ci: int, i: int, verdicts: dict[int, _proc.Liveness]
    ) -> int:
        hdr = m.hdr(ci, i)
        lock = lib.shmipc_load64_acquire(m.base, hdr)
        freed = 0
        if lock and _proc.identity_state(lock) is _proc.Liveness.DEAD:
            freed += lib.shmipc_pool_takeover(m.base, hdr, lock, m.seq_off, m.waiters_off) == 2
        state = lib.shmipc_load64_acquire(m.base, hdr + 8)
        if not state & 1:
            return freed
        gen = state >> 32
        for s in range(SLOTS):
            w = lib.shmipc_load64_relaxed(m.base, hdr + 32 + 8 * s)
            n = w >> _COUNT_SHIFT
            key = w & _KEY_MASK
            if not n or key & _TRANSIT:
                continue
            v = verdicts.get(key)
            if v is None:
                v = verdicts[key] = _key_state(key)
            if v is _proc.Liveness.DEAD:
                rc = m.adjust(ci, i, gen, key, n, 0, 0)
                if rc >= 0:
                    lib.shmipc_fetch_add64_acq_rel(pm.base, pm.reclaimed_off, n)
                freed += rc == lib.SHMIPC_POOL_FREED
        return freed

    # ---- handles -------------------------------------------------------------------------

    def _block_at(self, cls: int, index: int, offset: int, nbytes: int) -> _Class:
        """The class of a handle's block, checked against the private geometry (B1)."""
        if not 0 <= cls < len(self._classes):
            raise CorruptedError(
                f"handle names size class {cls}; pool {self.name!r} has {len(self._classes)}"
            )
        c = self._classes[cls]
        if not 0 <= index < c.count:
            raise CorruptedError(f"handle names block {index} of class {cls}, which has {c.count}")
        if offset != c.data + index * c.size:
            raise CorruptedError(f"handle's offset {offset} is not block {index}'s")
        if not 0 <= nbytes <= c.size:
            raise CorruptedError(f"handle claims {nbytes} bytes of a {c.size}-byte block")
        return c

    # ---- state ---------------------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        m = self._live()
        stats = _statistics(memoryview(m.mm), self._classes, self.size, m.reclaimed_off)
        return dataclasses.replace(stats, dedicated_segments=len(self._dedicated_names()))

    # ---- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Drop this handle (the creator also unlinks the name). Live loans and views keep
        the mapping until they go (docs/internals/lifetime.md)."""
        region, self._region = self._region, None
        if region is not None:
            if region.owner:
                for name in self._dedicated_names():
                    _unlink_segment(name)  # mapped blocks stay valid where they are mapped
            with _attached_lock:
                if _attached.get(self._name or "") is self:
                    del _attached[self._name or ""]
            region.close()

    def unlink(self) -> None:
        """Remove the name now, and the pool's dedicated segments (the memory lives while
        mapped)."""
        if self._region is None:
            raise ValueError("this pool handle is closed")
        self._region.unlink()
        for name in self._dedicated_names():
            _unlink_segment(name)

    def __enter__(self) -> BufferPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_attach_cached, (self.name, self._trusted))

    def __repr__(self) -> str:
        return f"<shmipc.BufferPool {self._name} {self._size} bytes>"


class _Release:
    """A PoolBuffer's on_release: give back one reference (never twice)."""

    __slots__ = ("block", "map")

    def __init__(self, m: _Map, block: _Block) -> None:
        self.map = m
        self.block = block

    def __call__(self) -> None:
        self.map.drop(self.block)


def _is_dedicated_of(name: str, prefix: str) -> bool:
    rest = name[len(prefix) :]
    return name.startswith(prefix) and len(rest) == _RAND_HEX and _HEX.issuperset(rest)


_HEX = frozenset("0123456789abcdef")


def _map_dedicated(name: str, trusted: tuple[int, ...]) -> Region:
    """Map a dedicated block segment a handle names, believing nothing about the file: opened
    O_NONBLOCK | O_NOFOLLOW (a FIFO or a symlink planted under the name cannot block or
    redirect us), a regular file owned by us or a trusted uid, big enough, a valid header."""
    path = os.path.join(SHM_DIR, name)
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise CorruptedError(f"dedicated block {name!r} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptedError(f"dedicated block {name!r} is not a regular file")
        if st.st_uid != os.geteuid() and st.st_uid not in trusted:
            raise CorruptedError(
                f"dedicated block {name!r} belongs to uid {st.st_uid}, not to this process's "
                "uid nor a trusted one: refused"
            )
        if st.st_size < _D_DATA + 1 or st.st_blocks * 512 < st.st_size:
            raise CorruptedError(f"dedicated block {name!r} is too small or sparse: refused")
        mm = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    region = Region(
        mm,
        data_offset=SEGMENT_LAYOUT.size,
        name=name,
        kind=Kind.BUFFER_POOL,
        trusted_uids=trusted,
        file_owner=(st.st_uid, st.st_mode & 0o777),
    )
    try:
        header = region.header
        assert header is not None
        header.validate(kind=Kind.BUFFER_POOL, mapped_size=st.st_size, name=name)
        ready = lib.shmipc_load32_acquire(region._base, SEGMENT_LAYOUT["init_state"])
        if ready != InitState.READY:
            raise CorruptedError(f"dedicated block {name!r} is not ready")
    except BaseException as exc:
        region.close()
        if isinstance(exc, (CorruptedError, ShmipcError)):
            raise CorruptedError(f"dedicated block {name!r}: {exc}") from None
        raise
    return region


def dedicated_owner(name: str) -> str | None:
    """The pool a dedicated block segment belongs to (for ``shmipc gc``: one whose pool is
    gone is an orphan), or None if ``name`` is not a dedicated block's name."""
    head, sep, rand = name.rpartition("_")
    pool, dot, tag = head.rpartition(".d")
    if not (sep and dot and pool) or len(rand) != _RAND_HEX or len(tag) != 8:
        return None
    if not (_HEX.issuperset(rand) and _HEX.issuperset(tag)):
        return None
    return pool


@atexit.register
def _close_pools_at_exit() -> None:
    """The pools this process made: closed (name and dedicated segments removed) at exit.
    Registered after Region's own handler, so it runs first."""
    with _attached_lock:
        pools = list(_attached.values())
    for pool in pools:
        region = pool._region
        if region is not None and region.owner:
            pool.close()


def _attach_cached(name: str, trusted_uids: Iterable[int] = ()) -> BufferPool:
    """The process's one handle of pool ``name`` (attached once, with the caller's trust)."""
    with _attached_lock:
        pool = _attached.get(name)
        if pool is not None and not pool.closed:
            return pool
    pool = BufferPool.attach(name, trusted_uids=trusted_uids)
    with _attached_lock:
        other = _attached.get(name)
        if other is not None and not other.closed:
            pool.close()
            return other
        _attached[name] = pool
    return pool


def _read_geometry(buf: memoryview, payload: int, name: str) -> tuple[list[_Class], int]:
    """The class table of a pool payload, checked for self-consistency (B1)."""
    version, nclasses, slots, bhdr, liveness_ns = struct.unpack_from(
        "<IIIIQ", buf, POOL_LAYOUT["version"]
    )
    if version != POOL_VERSION or slots != SLOTS or bhdr != BLOCK_HEADER:
        raise CorruptedError(f"pool {name!r}: header version {version}/{slots}/{bhdr}")
    if not 1 <= nclasses <= MAX_CLASSES:
        raise CorruptedError(f"pool {name!r}: {nclasses} size classes")
    classes = []
    for i in range(nclasses):
        bsize, count, hdr, data = _CLASS.unpack_from(buf, POOL_LAYOUT["classes"] + 32 * i)
        classes.append((bsize, count, hdr, data))
    try:
        expected = _geometry(payload, _check_classes([(b, c) for b, c, _, _ in classes]))
    except ValueError as exc:
        raise CorruptedError(f"pool {name!r}: class table is corrupt: {exc}") from None
    got = [_Class(*c) for c in classes]
    if got != expected:
        raise CorruptedError(f"pool {name!r}: class table does not match its own sizes")
    if not 0 < liveness_ns < 1 << 62:
        raise CorruptedError(f"pool {name!r}: liveness interval {liveness_ns} ns")
    return expected, liveness_ns


def _statistics(
    view: memoryview, classes: list[_Class], size: int, reclaimed_off: int
) -> PoolStatistics:
    words = view.cast("B").cast("Q")
    try:
        out = []
        free_bytes = 0
        for c in classes:
            used = sum(words[(c.hdr + i * BLOCK_HEADER) // 8 + 1] & 1 for i in range(c.count))
            out.append(ClassStatistics(c.size, c.count, c.count - used, used))
            free_bytes += (c.count - used) * c.size
        reclaimed = words[reclaimed_off // 8]
    finally:
        words.release()
    return PoolStatistics(size, free_bytes, out, reclaimed, 0)


def inspect_segment(view: memoryview) -> dict[str, Any]:
    """A read-only, JSON-ready description of a whole pool segment (offset 0 = the common
    header), for ``shmipc ls/inspect``. CorruptedError on nonsense; never writes or waits."""
    from .layout import SegmentHeader

    view = view.cast("B") if view.format != "B" else view
    header = SegmentHeader.unpack(view[: SEGMENT_LAYOUT.size])
    header.validate(kind=Kind.BUFFER_POOL, mapped_size=len(view), name="<segment>")
    payload = len(view) - SEGMENT_LAYOUT.size
    if header.flags & DEDICATED_FLAG:
        if len(view) < _D_DATA:
            raise CorruptedError(f"dedicated block segment of {len(view)} bytes is too small")
        state, _cls, _flags, nbytes = struct.unpack_from("<QIIQ", view, _D_HDR + 8)
        holders = struct.unpack_from(f"<{SLOTS}Q", view, _D_HDR + 32)
        return {
            "kind": "buffer_pool_dedicated_block",
            "size": len(view) - _D_DATA,
            "in_use": bool(state & 1),
            "generation": state >> 32,
            "nbytes": nbytes,
            "references": sum(w >> _COUNT_SHIFT for w in holders),
        }
    geometry, liveness_ns = _read_geometry(view[SEGMENT_LAYOUT.size :], payload, "<segment>")
    stats = _statistics(view, geometry, payload, SEGMENT_LAYOUT.size + POOL_LAYOUT["reclaimed"])
    return {
        "kind": "buffer_pool",
        "size": payload,
        "free_bytes": stats.free_bytes,
        "reclaimed": stats.reclaimed,
        "liveness_interval": liveness_ns / 1e9,
        "dedicated_segments": 0,
        "classes": [dataclasses.asdict(c) for c in stats.classes],
    }


# ---- handles and the codec hook ---------------------------------------------------------------

# A handle (the payload of ext record 18), little-endian:
#   u8 version (1), u8 flavor (0 bytes, 1 ndarray, 2 pickle buffer), u8 class, u8 name length,
#   u32 block index, u32 generation, u32 reserved, u64 block offset (absolute, in the pool's
#   mapping), u64 offset inside the block, u64 nbytes; then the pool name (ASCII); then for an
#   ndarray a msgpack [descr, shape, fortran].
_HANDLE = struct.Struct("<BBBBIIIQQQ")
_FLAVOR_BYTES, _FLAVOR_ARRAY, _FLAVOR_PICKLE = 0, 1, 2
_TOP_HANDLE = b"\x00SH"  # a frame that is one handle (a top-level bytes-like payload)
_PICKLE_OOB = b"\x00SB"  # a pickle frame with out-of-band buffers in blocks


def _find_loan(obj: Any) -> Loan | _Received | None:
    """The Loan (or received block) whose bytes ``obj`` (an ndarray or memoryview chain)
    views, if any."""
    seen = 0
    while obj is not None and seen < 64:
        if isinstance(obj, (Loan, _Received)):
            return obj
        obj = getattr(obj, "base", None) if not isinstance(obj, memoryview) else obj.obj
        seen += 1
    return None


class PoolHook:
    """The object a channel passes its encode/decode through to send large payloads by
    handle: numpy arrays (and, at top level, bytes-like objects) of ``threshold`` bytes or
    more, loans and arrays made from loans. ``tag`` names the channel (its transit key)."""

    def __init__(
        self,
        pool: BufferPool,
        codec: Any,
        tag: bytes,
        threshold: int = 64 * 1024,
        trusted_uids: Iterable[int] = (),
    ) -> None:
        self.pool = pool
        self.codec = codec
        self.tag = tag
        self.key = transit_key(tag)
        self.threshold = max(int(threshold), 1)
        self.trusted_uids = tuple(trusted_uids)
        self.pickle = getattr(codec, "name", None) == "pickle"
        self.msgpack = getattr(codec, "name", None) == "msgpack"
        self._tls = threading.local()
        self.name = getattr(codec, "name", "custom")
        # How a receiver claims: move one transit reference (1, a Queue's or a "block"
        # Topic's), or add one of its own while the ring's reference holds the block (0, an
        # "overwrite" Topic's, shmipc/topic_pool.py); ``on_stale`` (if set) makes the error
        # raised when the block was freed or reused since the handle was made.
        self.claim_from = 1
        self.on_stale: Any = None
        # B5: hand received blocks out writable (in place when the sole holder, else a copy).
        self.writable = False
        # A copied payload that finds its classes busy goes to a dedicated segment instead of
        # waiting for a block (a pool's queues must not stall on blocks their peer holds).
        self.overflow = False

    # ---- encode ----------------------------------------------------------------------------

    def encode(self, obj: object, *, refs: int = 1, timeout: float | None = None) -> bytes:
        """The frame for ``obj``; each block it names holds ``refs`` transit references.
        PoolExhausted if a block for a copied payload did not come within ``timeout``."""
        np = sys.modules.get("numpy")
        if np is not None and type(obj) is np.ndarray and self.msgpack:
            frame = self._encode_loaned_array(obj, refs)
            if frame is not None:
                return frame
        sent: list[tuple[_Block, int, bytes]] = []
        self._tls.ctx = (sent, refs, deadline_ns(timeout))
        try:
            frame = self._encode(obj)
        except BaseException:
            self._tls.ctx = None
            self._undo(sent)
            raise
        self._tls.ctx = None
        return frame

    def _encode_loaned_array(self, arr: Any, refs: int) -> bytes | None:
        """The frame of a C-ordered array that lies in a loan (or a received block) of this
        pool, sent alone: what ``_encode`` makes of it (one ext record: a handle, one transit
        reference more), in a few steps. None for anything else (then ``_encode`` takes it)."""
        loan = _find_loan(arr)
        if (
            loan is None
            or loan._pool_name != self.pool.name
            or loan.released
            or not arr.flags.c_contiguous
            or arr.dtype not in _checked_dtypes
            or arr.dtype.fields is not None
        ):
            return None
        b: _Block = loan._block
        bm = loan._map
        if b.dmap is not None:
            return None
        self.pool._live()
        nbytes = arr.nbytes
        sub = int(ffi.cast("uintptr_t", ffi.from_buffer(arr))) - (bm.addr + b.offset)
        if sub < 0 or sub + nbytes > bm.classes[b.cls].size:
            return None
        key = (arr.dtype.str, arr.shape)
        meta = _meta_bytes.get(key)
        if meta is None:
            meta = _keep(_meta_bytes, key, packb([key[0], list(key[1]), 0]))
        handle = self._pack_handle(b, _FLAVOR_ARRAY, sub, nbytes) + meta
        if len(handle) > 255:
            return None
        rc = bm.adjust(b.cls, b.index, b.gen, 0, 0, self.key, refs)
        _check_rc(rc, "add transit references to a loan")
        return _EXT8_HEAD(0xC7, len(handle), _EXT_HANDLE) + handle

    def _encode(self, obj: object) -> bytes:
        if type(obj) in (bytes, bytearray, memoryview) or isinstance(obj, Loan):
            view = memoryview(obj)  # type: ignore[arg-type]
            if isinstance(obj, Loan) or view.nbytes >= self.threshold:
                return _TOP_HANDLE + self._handle_for(_find_loan(obj), view, _FLAVOR_BYTES)
            view.release()
        if self.pickle:
            return self._encode_pickle(obj)
        if not self.msgpack:
            return self.codec.encode(obj)  # a custom codec: only top-level buffers by handle
        try:
            pack = self._tls.pack
        except AttributeError:
            pack = self._tls.pack = Packer(default=self._default, strict_types=True).pack
        try:
            frame = pack(obj)
        except UnicodeEncodeError:
            # A str with lone surrogates (as the codec handles it): give back what the first
            # attempt sent, then pack again with the error handler on.
            sent = self._tls.ctx[0]
            self._undo(sent)
            sent.clear()
            slow = Packer(default=self._default, strict_types=True, unicode_errors="surrogatepass")
            return slow.pack(obj)
        except PoolExhausted:
            raise
        except BufferError as exc:
            raise _codec._not_contiguous(exc) from exc
        if len(frame) > _codec._KEEP_PACKER_BUFFER:
            del self._tls.pack  # msgpack never shrinks a packer's buffer
        return frame

    def _default(self, obj: Any) -> object:
        np = sys.modules.get("numpy")
        if np is not None and type(obj) is np.ndarray:
            loan = _find_loan(obj)
            if loan is not None or obj.nbytes >= self.threshold:
                return ExtType(_EXT_HANDLE, self._array_handle(np, obj, loan))
        if isinstance(obj, Loan):
            return ExtType(_EXT_HANDLE, self._handle_for(obj, memoryview(obj), _FLAVOR_BYTES))
        return _codec._default(0, False, obj)

    def _array_handle(self, np: Any, arr: Any, loan: Loan | _Received | None) -> bytes:
        _check_dtype(arr.dtype)
        fortran = not arr.flags.c_contiguous and arr.flags.f_contiguous
        if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
            arr, loan = np.ascontiguousarray(arr), None
        descr = arr.dtype.str if arr.dtype.fields is None else _descr(arr.dtype)
        meta = packb([descr, list(arr.shape), 1 if fortran else 0])
        flat = (arr.T if fortran else arr).reshape(-1).view(np.uint8)
        view = memoryview(flat)
        return self._handle_for(loan, view, _FLAVOR_ARRAY, arr_addr=arr.ctypes.data) + meta

    def _handle_for(self, loan: Any, view: memoryview, flavor: int, arr_addr: int = 0) -> bytes:
        """Send ``view`` by handle: in ``loan``'s block if it lies there, else copied once
        into a new block. Records the transit references added (undone if encode fails)."""
        sent, refs, deadline = self._tls.ctx
        pool = self.pool
        m = pool._live()
        nbytes = view.nbytes
        if (
            isinstance(loan, (Loan, _Received))
            and loan._pool_name == pool.name
            and not loan.released
        ):
            # (A loan of another handle of the same pool works too: its own map places it.)
            b: _Block = loan._block
            bm = loan._map
            addr = arr_addr or _buffer_addr(view)
            sub = addr - (bm.addr + b.offset)
            if sub >= 0 and sub + nbytes <= bm.classes[0 if b.dmap else b.cls].size:
                view.release()
                handle = self._pack_handle(b, flavor, sub, nbytes)
                if any(h == handle for _, _, h in sent):
                    return handle  # the same view twice in one frame: decoded once, one ref
                rc = bm.adjust(b.cls, b.index, b.gen, 0, 0, self.key, refs)
                _check_rc(rc, "add transit references to a loan")
                sent.append((b, refs, handle))
                return handle
        # Copy once into a new block, then move our reference to the channel's transit key.
        if self.overflow:
            try:
                block = pool._alloc(nbytes, deadline_ns(0))
            except PoolExhausted:
                block = pool._alloc_dedicated(nbytes)
        else:
            block = pool._alloc(nbytes, deadline)
        bm = block.dmap or m
        try:
            dst = memoryview(bm.mm)[block.offset : block.offset + nbytes]
            dst[:] = view.cast("B")
            dst.release()
            rc = bm.adjust(block.cls, block.index, block.gen, block.key, 1, self.key, refs)
            _check_rc(rc, "send a copied block")
        except BaseException:
            bm.drop(block)
            raise
        view.release()
        handle = self._pack_handle(block, flavor, 0, nbytes)
        sent.append((block, refs, handle))
        return handle

    def _pack_handle(self, block: _Block, flavor: int, sub: int, nbytes: int) -> bytes:
        name = block.dmap.name.encode("ascii") if block.dmap else self.pool._name_bytes
        head = _HANDLE.pack(
            1, flavor, block.cls, len(name), block.index, block.gen, 0, block.offset, sub, nbytes
        )
        return head + name

    def _encode_pickle(self, obj: object) -> bytes:
        oob: list[Any] = []

        def callback(pb: pickle.PickleBuffer) -> bool:
            raw = pb.raw()
            if raw.nbytes < self.threshold and _find_loan(raw.obj) is None:
                return True
            oob.append(raw)
            return False

        try:
            data = pickle.dumps(obj, protocol=5, buffer_callback=callback)
        except (pickle.PicklingError, AttributeError) as exc:
            raise TypeError(f"cannot pickle {type(obj).__name__}: {exc}") from exc
        if not oob:
            return data
        handles = [self._handle_for(_find_loan(raw.obj), raw, _FLAVOR_PICKLE) for raw in oob]
        return _PICKLE_OOB + packb([handles, data])

    def _undo(self, sent: list[tuple[_Block, int, bytes]]) -> None:
        m = self.pool._map
        for block, refs, _ in sent:
            m.adjust(block.cls, block.index, block.gen, self.key, refs, 0, 0)

    def discard(self, frame: bytes | memoryview, refs: int = 1) -> int:
        """Drop ``refs`` transit references of every block ``frame`` names (a frame that
        will never be decoded: a failed put, an evicted subscriber's share). Returns how
        many handles it found."""
        found = 0
        for data in self._handles_in(bytes(frame)):
            m, c, index, gen, *_ = self._parse(data)
            rc = m.adjust(c, index, gen, self.key, refs, 0, 0)
            found += rc >= 0
        return found

    def _handles_in(self, frame: bytes) -> list[bytes]:
        if frame.startswith(_TOP_HANDLE):
            return [frame[len(_TOP_HANDLE) :]]
        if frame.startswith(_PICKLE_OOB):
            handles, _ = unpackb(frame[len(_PICKLE_OOB) :])
            return list(handles)
        found: list[bytes] = []
        if not self.pickle:

            def hook(code: int, data: bytes) -> Any:
                if code == _EXT_HANDLE:
                    found.append(data)
                return None

            with contextlib.suppress(Exception):
                unpackb(frame, ext_hook=hook, strict_map_key=False)
        return found

    # ---- decode ----------------------------------------------------------------------------

    def decode(self, frame: Any) -> object:
        """The object in ``frame``; each block it names is claimed from this channel's transit
        references (CorruptedError if it cannot be: a stale, forged or foreign handle)."""
        n = len(frame)
        if (
            self.msgpack
            and n > 3
            and frame[0] == 0xC7
            and frame[2] == _EXT_HANDLE
            and frame[1] == n - 3
        ):
            # A frame that is one handle (an array sent alone, the common case): msgpack's
            # ext 8 record, claimed as unpackb's ext hook would, without the unpacker.
            return self._claim(bytes(frame[3:]))
        if frame[:3] == _TOP_HANDLE:
            return self._claim(bytes(frame[3:]))
        if frame[:3] == _PICKLE_OOB:
            try:
                handles, data = unpackb(bytes(frame[3:]))
            except Exception as exc:
                raise CorruptedError(f"corrupt pooled pickle frame: {exc}") from None
            if not self.pickle:
                raise CorruptedError(
                    "a pickle frame arrived on a channel that does not use the pickle codec"
                )
            buffers = [self._claim(h, raw=True) for h in handles]
            return (
                self.codec.decode_with_buffers(data, buffers)
                if hasattr(self.codec, "decode_with_buffers")
                else _unpickle(data, buffers)
            )
        if not self.msgpack:
            return self.codec.decode(frame)
        claimed: dict[bytes, Any] = {}

        def ext(mode: int, code: int, data: bytes) -> Any:
            if code == _EXT_HANDLE:
                got = claimed.get(data)
                if got is None:
                    got = claimed[data] = self._claim(data)
                return got
            return _codec._HOOKS_BY_MODE[mode][0](code, data)

        try:
            return unpackb(
                frame,
                ext_hook=lambda c, d: ext(_codec._FAST, c, d),
                strict_map_key=False,
                unicode_errors="surrogatepass",
                max_map_len=_codec._FAST_MAP_LEN,
            )
        except (_codec._HashFlood, MemoryError, Lagged):
            raise
        except CorruptedError:
            if claimed or not isinstance(frame, (bytes, bytearray, memoryview)):
                raise
        except Exception:
            pass
        try:
            return unpackb(
                frame,
                ext_hook=lambda c, d: ext(_codec._STRICT, c, d),
                strict_map_key=True,
                unicode_errors="surrogatepass",
            )
        except (_codec._HashFlood, MemoryError, Lagged):
            raise
        except Exception:
            pass
        try:
            return unpackb(
                frame,
                ext_hook=lambda c, d: ext(_codec._GUARDED, c, d),
                strict_map_key=False,
                unicode_errors="surrogatepass",
                object_pairs_hook=_codec._guarded_map,
            )
        except (CorruptedError, MemoryError, Lagged):
            raise
        except Exception as exc:
            raise _codec._decode_error(frame, exc) from exc

    def _parse(self, data: bytes) -> tuple[_Map, int, int, int, int, int, int, bytes]:
        if len(data) < _HANDLE.size:
            raise CorruptedError(f"pool handle of {len(data)} bytes is too short")
        (version, flavor, cls, name_len, index, gen, _r, offset, sub, nbytes) = _HANDLE.unpack_from(
            data
        )
        if version != 1 or flavor > _FLAVOR_PICKLE:
            raise CorruptedError(f"pool handle of version {version}, flavor {flavor}")
        end = _HANDLE.size + name_len
        if len(data) < end:
            raise CorruptedError("pool handle's name overruns it")
        pool = self.pool
        raw_name = data[_HANDLE.size : end]
        m: _Map
        if cls == DEDICATED:
            try:
                name = raw_name.decode("ascii")
            except UnicodeDecodeError:
                raise CorruptedError("pool handle names no valid pool") from None
            m = pool._attach_dedicated(name, self.trusted_uids)
            size = m.classes[0].size
            if index != 0 or offset != _D_DATA:
                raise CorruptedError(f"handle names block {index} at {offset} of {name!r}")
        else:
            if raw_name != pool._name_bytes:  # compared as the bytes handles carry
                shown = raw_name.decode("ascii", "backslashreplace")
                raise CorruptedError(
                    f"handle names pool {shown!r}; this channel's pool is {pool.name!r}: refused"
                )
            m = pool._live()
            size = pool._block_at(cls, index, offset, min(nbytes, 1 << 62)).size
        if sub > size or nbytes > size - sub:
            raise CorruptedError(f"handle's range {sub}+{nbytes} overruns a {size}-byte block")
        return m, cls, index, gen, flavor, sub, nbytes, data[end:]

    def _claim(self, data: bytes, raw: bool = False) -> Any:
        m, cls, index, gen, flavor, sub, nbytes, rest = self._parse(data)
        pool = self.pool
        meta = None
        if flavor == _FLAVOR_ARRAY:
            meta = _array_meta(rest, nbytes)
        me = _self_key()
        rc = m.adjust(cls, index, gen, self.key if self.claim_from else 0, self.claim_from, me, 1)
        if rc == lib.SHMIPC_POOL_STALE and self.on_stale is not None:
            raise self.on_stale()
        if rc < 0:
            raise CorruptedError(
                f"handle of block {index} (class {cls}, generation {gen}) of pool "
                f"{pool.name!r} has no reference in transit in this channel (status {rc}): "
                "stale, forged or already received"
            )
        dmap = m if isinstance(m, _DMap) else None
        c = m.classes[0 if dmap else cls]
        block = _Block(cls, index, gen, c.data + index * c.size, me, dmap)
        readonly = True
        if self.writable:
            if m.sole(cls, index, gen, me):
                readonly = False
            else:  # B5: another holder can see these bytes: a private writable copy
                copy = bytearray(memoryview(m.mm)[block.offset + sub : block.offset + sub + nbytes])
                m.adjust(cls, index, gen, me, 1, 0, 0)
                return self._wrap(copy, flavor, raw, meta, nbytes)
        buf = _Received(m.mm, block.offset + sub, nbytes, readonly, _Release(m, block))
        buf._block = block
        buf._map = m
        buf._pool_name = pool.name
        return self._wrap(buf, flavor, raw, meta, nbytes)

    @staticmethod
    def _wrap(buf: Any, flavor: int, raw: bool, meta: Any, nbytes: int) -> Any:
        if raw or flavor == _FLAVOR_PICKLE:
            return buf
        if flavor == _FLAVOR_BYTES:
            return memoryview(buf)
        np = _numpy()
        dtype, shape, fortran = meta
        arr = np.frombuffer(buf, np.uint8, nbytes).view(dtype)
        if fortran:
            return arr.reshape(shape[::-1]).T
        return arr.reshape(shape)


def _unpickle(data: bytes, buffers: list[Any]) -> object:
    try:
        return pickle.loads(data, buffers=buffers)
    except (CorruptedError, MemoryError):
        raise
    except Exception as exc:
        raise CorruptedError(f"corrupt pooled pickle frame: {exc}") from exc


_metas: dict[bytes, tuple[Any, tuple[int, ...], int, int]] = {}  # see _array_meta
_meta_bytes: dict[tuple[str, tuple[int, ...]], bytes] = {}  # (dtype.str, shape): packed meta
_EXT8_HEAD = struct.Struct("<BBB").pack  # msgpack ext 8: 0xc7, payload length, ext code
_METAS_KEPT = 256
_META_KEPT_BYTES = 512  # what read from shared memory may stay in _metas: 256 x 512 bytes


def _array_meta(rest: bytes, nbytes: int) -> tuple[Any, tuple[int, ...], int]:
    """(dtype, shape, fortran) of an array handle's metadata, checked against ``nbytes``.
    A stream of arrays repeats a few metadata strings: each is parsed and checked once and
    kept (by its exact bytes, with the byte count it implies), up to _METAS_KEPT of them."""
    known = _metas.get(rest)
    if known is not None and known[3] == nbytes:
        return known[0], known[1], known[2]
    dtype, shape, fortran = meta = _parse_array_meta(rest, nbytes)
    if len(rest) <= _META_KEPT_BYTES:  # a sender's long field lists are parsed every time
        _keep(_metas, rest, (dtype, shape, fortran, nbytes))
    return meta


def _keep(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    """``cache[key] = value``, emptying the cache first when it holds _METAS_KEPT entries."""
    if len(cache) >= _METAS_KEPT:
        cache.clear()
    cache[key] = value
    return value


def _parse_array_meta(rest: bytes, nbytes: int) -> tuple[Any, tuple[int, ...], int]:
    try:
        import numpy as np
    except ImportError as exc:
        raise CorruptedError("handle holds a numpy array but numpy is not installed") from exc
    try:
        meta = unpackb(rest, strict_map_key=True)
        descr, shape, fortran = meta
        if type(descr) is str:
            dtype = np.dtype(descr)
        else:
            from numpy.lib import format as npformat

            dtype = npformat.descr_to_dtype(descr)
        _codec._check_dtype(dtype, ValueError)
        if type(shape) is not list or len(shape) > 64 or fortran not in (0, 1):
            raise ValueError("bad shape or order")
        if not all(type(n) is int and 0 <= n < 1 << 62 for n in shape):
            raise ValueError("bad shape")
        count = 1
        for n in shape:
            count *= n
        if count * dtype.itemsize != nbytes or (dtype.itemsize == 0):
            raise ValueError(f"shape {shape} of {dtype} is not {nbytes} bytes")
    except CorruptedError:
        raise
    except Exception as exc:
        raise CorruptedError(f"corrupt array handle: {type(exc).__name__}: {exc}") from None
    return dtype, tuple(shape), fortran


def _descr(dtype: Any) -> Any:
    from numpy.lib import format as npformat

    return npformat.dtype_to_descr(dtype)


def _buffer_addr(view: memoryview) -> int:
    """The address of a (C-contiguous) buffer's first byte."""
    if view.nbytes == 0:
        return 0
    return int(ffi.cast("uintptr_t", ffi.from_buffer(view)))


def _check_rc(rc: int, what: str) -> None:
    if rc < 0:
        raise CorruptedError(
            f"could not {what}: pool status {rc} (the block was freed or its header is corrupt)"
        )
