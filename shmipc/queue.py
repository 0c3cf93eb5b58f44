"""``shmipc.Queue``: the ``multiprocessing.Queue`` interface over a shared-memory ring.

Many producers and many consumers, in any processes: forked children inherit the handle,
spawned children and unrelated processes attach by name (the handle pickles by name). Objects
are framed by a codec (msgpack by default, see :mod:`shmipc.codec`). There is no feeder
thread: ``put`` has stored the message in shared memory when it returns, so nothing is lost
or stuck at exit. A message larger than half the ring is spilled to a side segment (or, with
``spill=False``, refused at once with :class:`~shmipc.MessageTooLarge`); see
:mod:`shmipc._spill` for how a spill is tied to its queue and checked.
"""

from __future__ import annotations

import dataclasses
import queue as _stdlib_queue
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from . import _spill
from ._native import Port, RingMiss, lib
from .buffers import BufferPool, Loan, PoolExhausted, PoolHook, channel_tag
from .buffers import _attach_cached as _attach_pool
from .codec import Codec, get_codec
from .errors import Closed, CorruptedError, Revoked
from .layout import Kind
from .region import ATTACH_TIMEOUT
from .ring import DEFAULT_LIVENESS, DEFAULT_SPIN_NS, Ring, RingStatistics, byte_view
from .sync import deadline_ns

__all__ = ["Empty", "Full", "Queue"]

Empty = _stdlib_queue.Empty
Full = _stdlib_queue.Full

# Record types (the ring's type field). get_bytes relies on T_OBJ and T_BYTES being adjacent.
T_OBJ = 1  # a codec frame
T_BYTES = 2  # raw bytes from put_bytes: get() returns them as bytes
T_SPILL_OBJ = 3  # a reference to a spilled codec frame
T_SPILL_BYTES = 4  # a reference to spilled raw bytes

DEFAULT_ZERO_COPY_THRESHOLD = 64 * 1024

# Which codec a queue was made with, kept in its segment header's flags.
_CODEC_IDS = {"msgpack": 1, "pickle": 2, "raw": 3}
_CODEC_NAMES = {v: k for k, v in _CODEC_IDS.items()}

_OK = lib.SHMIPC_OK
_FULL = lib.SHMIPC_FULL
_TOOBIG = lib.SHMIPC_TOOBIG
_CLOSED = lib.SHMIPC_CLOSED
_NOTBUF = lib.SHMIPC_NOTBUF
_REVOKED = lib.SHMIPC_REVOKED
# What the port's zero-copy calls hand to _zc_slow (csrc/fastpath.c, "zero-copy calls").
_ZC_RESERVE, _ZC_COMMIT, _ZC_ABORT, _ZC_PEEK, _ZC_RELEASE = range(5)


_T = TypeVar("_T")


class Queue(Generic[_T]):
    """A FIFO queue between processes, through shared memory; ``Queue[int]`` types its items.

    ``maxsize`` bounds the number of messages (0: no bound but the ring's bytes);
    ``capacity`` is the ring's size in bytes (a power of two). ``codec`` frames objects:
    "msgpack" (default), "pickle" (trusted peers only: unpickling runs code), "raw" (bytes
    only), or a :class:`~shmipc.codec.Codec`. ``spsc=True`` makes a single-producer/
    single-consumer queue: one thread puts and one thread gets (see ``Ring.spsc``), and
    neither side pays for a lock per message. ``max_message`` is the largest message this
    handle spills or reads from a spill (``MessageTooLarge`` on put; a reference claiming more
    is ``CorruptedError``, refused before allocating); ``max_spilled`` bounds the bytes of
    this queue's spilled messages waiting at once when this handle spills (``queue.Full``).
    ``pool`` (a :class:`~shmipc.BufferPool`) sends numpy arrays and top-level bytes-like
    objects of ``zero_copy_threshold`` bytes or more, loans and loaned arrays by handle to a
    pool block (docs/zero-copy.md); ``get`` then returns a read-only view of the block.
    """

    def __init__(
        self,
        maxsize: int = 0,
        *,
        capacity: int = 1 << 20,
        name: str | None = None,
        codec: str | Codec = "msgpack",
        spill: bool = True,
        mode: int = 0o600,
        spin_ns: int = DEFAULT_SPIN_NS,
        spsc: bool = False,
        liveness: float = DEFAULT_LIVENESS,
        max_message: int = _spill.DEFAULT_MAX_MESSAGE,
        max_spilled: int = _spill.DEFAULT_MAX_SPILLED,
        pool: BufferPool | None = None,
        zero_copy_threshold: int = DEFAULT_ZERO_COPY_THRESHOLD,
    ) -> None:
        codec_obj = get_codec(codec)
        _check_pool(pool, zero_copy_threshold)
        _spill.check_bounds(max_message, max_spilled)  # before there is a segment to leak
        codec_id = _CODEC_IDS.get(codec, 0) if isinstance(codec, str) else 0
        ring = Ring.create(
            capacity,
            name=name,
            max_count=max(0, maxsize),
            spin_ns=spin_ns,
            mode=mode,
            kind=Kind.QUEUE,
            flags=codec_id,
            spsc=spsc,
            liveness=liveness,
        )
        self._bind(
            ring,
            codec_obj,
            max(0, maxsize),
            spill,
            max_message,
            max_spilled,
            pool,
            zero_copy_threshold,
        )

    @classmethod
    def create(cls, name: str | None = None, **kwargs: Any) -> Queue[Any]:
        """``Queue(name=name, **kwargs)``, spelled like the other structures' constructors."""
        return cls(name=name, **kwargs)

    def _bind(
        self,
        ring: Ring,
        codec: Codec,
        maxsize: int,
        spill: bool,
        max_message: int = _spill.DEFAULT_MAX_MESSAGE,
        max_spilled: int = _spill.DEFAULT_MAX_SPILLED,
        pool: BufferPool | None = None,
        zero_copy_threshold: int = DEFAULT_ZERO_COPY_THRESHOLD,
    ) -> None:
        self._ring: Ring | None = ring
        self._closed_ring: Ring | None = None
        self._cap = ring._cap
        self._codec = codec
        self._encode: Callable[..., bytes] = codec.encode
        self._decode_frame: Callable[[Any], Any] = codec.decode
        self._maxsize = maxsize
        # With the built-in codecs a bytes object decodes to itself, so it can skip framing.
        self._bytes_as_is = getattr(codec, "name", None) in _CODEC_IDS
        self.spill = spill
        # Where this queue's large messages go, and the bounds this handle holds them to.
        header = ring.region.header
        file_owner = ring.region.file_owner  # a queue's ring is always a named segment
        assert header is not None and ring.name is not None and file_owner is not None
        self._spills = _spill.SpillSpace.of_queue(
            ring.name,
            header.creator_pid,
            header.creator_start,
            file_owner,
            max_message=max_message,
            max_spilled=max_spilled,
        )
        # The hot paths, one native call a message (csrc/fastpath.c): a Port on this ring
        # decodes T_OBJ records and returns T_BYTES ones as bytes. Its send/recv methods are
        # put/get whole (block and timeout included); they become this instance's own put,
        # put_bytes, get and get_bytes unless a subclass overrides those. Every outcome but
        # the fast one comes back to _put_slow/_get_miss, reached through a weak reference so
        # that the port does not keep this handle alive. The port holds an export of the
        # mapping itself: a bound method that outlives this handle (or a call still inside the
        # ring) keeps the memory mapped, and answers Closed (docs/internals/lifetime.md).
        # With a pool, every frame goes through one PoolHook (shmipc.buffers): large arrays
        # and bytes travel as handles to pool blocks, claimed by the receiver on decode.
        self._pool_hook: PoolHook | None = None
        if pool is not None:
            tag = channel_tag(ring.name, header.creator_pid, header.creator_start)
            self._pool_hook = PoolHook(
                pool, codec, tag, zero_copy_threshold, ring.region._trusted_uids
            )
            self._encode = self._pool_hook.encode
            self._decode_frame = self._pool_hook.decode
            self._bytes_as_is = False
        me = weakref.ref(self)
        self._port = port = Port(
            ring._mapping,
            ring._map_off,
            ring._cap,
            self._decode_frame,
            T_OBJ,
            T_BYTES,
            encode=self._encode,
            deadline=deadline_ns,
            slow_put=lambda *a: _handle(me)._put_slow(*a),
            slow_get=lambda *a: _handle(me)._get_miss(*a),
            bytes_as_is=self._bytes_as_is,
            slow_zc=lambda *a: _handle(me)._zc_slow(*a),
        )
        self._fput = port.put
        self._fput_many = port.put_many
        self._fget_many = port.get_many
        # The zero-copy calls are the port's too (one native call each, claims kept per
        # thread in the port); the ring asks it whether this thread holds one (its errors).
        ring._claims_elsewhere = port.holds_claim
        cls = type(self)
        if self._pool_hook is not None:
            return  # put goes through _put_pooled (encode, then undo on failure); get is fast
        for name, fast in (
            ("reserve", port.reserve),
            ("commit", port.commit),
            ("abort", port.abort),
            ("peek", port.peek),
            ("peek_next", port.peek_next),
            ("release", port.release),
        ):
            if getattr(cls, name) is getattr(Queue, name):
                setattr(self, name, fast)
        for name, fast in (
            ("put", port.send),
            ("put_bytes", port.send_bytes),
            ("get", port.recv),
            ("get_bytes", port.recv_bytes),
        ):
            if getattr(cls, name) is getattr(Queue, name):
                setattr(self, name, fast)

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        codec: str | Codec | None = None,
        spill: bool = True,
        timeout: float = ATTACH_TIMEOUT,
        trusted_uids: Iterable[int] = (),
        max_message: int = _spill.DEFAULT_MAX_MESSAGE,
        max_spilled: int = _spill.DEFAULT_MAX_SPILLED,
        pool: BufferPool | str | None = None,
        zero_copy_threshold: int = DEFAULT_ZERO_COPY_THRESHOLD,
    ) -> Queue[Any]:
        """Attach the queue another process created under ``name``.

        ``codec=None`` takes the codec named in the segment, except "pickle": unpickling runs
        code, so only ``codec="pickle"`` from the caller ever unpickles. A queue another user
        owns is refused unless that uid is in ``trusted_uids``; ``timeout`` bounds the wait
        for a creator still initialising it (see ``Region.attach``). ``max_message`` and
        ``max_spilled`` bound this handle's spills (see ``Queue``). ``pool`` is the block pool
        (or its name, attached with ``trusted_uids``) whose handles this queue carries.
        """
        if isinstance(pool, str):
            pool = _attach_pool(pool, trusted_uids)
        _check_pool(pool, zero_copy_threshold)
        ring = Ring.attach(name, kind=Kind.QUEUE, timeout=timeout, trusted_uids=trusted_uids)
        try:
            header = ring.region.header
            assert header is not None
            made_with = _CODEC_NAMES.get(header.flags & 0xFF)
            if codec is None:
                if made_with == "pickle":
                    # The header is shared memory anyone with write access can scribble: it
                    # may refuse a codec, never choose the one that runs code.
                    raise ValueError(
                        f"queue {name!r} says it was made with codec 'pickle', and unpickling "
                        "runs code: attach never picks pickle by itself. Pass "
                        "codec='pickle' if you trust every process that can write this queue"
                    )
                if made_with is None:
                    raise ValueError(
                        f"queue {name!r} uses a custom codec: pass the same codec= to attach"
                    )
                codec = made_with
            else:
                given = codec if isinstance(codec, str) else getattr(codec, "name", None)
                if made_with is not None and given != made_with:
                    raise ValueError(
                        f"queue {name!r} was made with codec {made_with!r}, not {given!r}"
                    )
            maxsize = lib.shmipc_load64_relaxed(ring._ptr, lib.SHMIPC_RING_OFF_MAX_COUNT)
            self = cls.__new__(cls)
            self._bind(
                ring,
                get_codec(codec),
                maxsize,
                spill,
                max_message,
                max_spilled,
                pool,
                zero_copy_threshold,
            )
        except BaseException:
            ring.close()
            raise
        return self

    # ---- properties ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The segment name other processes attach with."""
        name = self._live_ring().name
        assert name is not None
        return name

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def spsc(self) -> bool:
        """True for a single-producer/single-consumer queue (``Queue(spsc=True)``)."""
        return self._live_ring().spsc

    @property
    def codec(self) -> Codec:
        return self._codec

    def _live_ring(self) -> Ring:
        if self._ring is None:
            raise Closed("this queue handle is closed")
        return self._ring

    # ---- put -----------------------------------------------------------------------------

    # put/put_bytes/get/get_bytes: each handle binds its port's one-call versions over these
    # (see _bind); these definitions document them and serve subclasses that override one.

    def put(self, obj: _T, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj`` on the queue; queue.Full if no room came within ``timeout``."""
        if self._pool_hook is not None:
            self._put_pooled(obj, block, timeout)
            return
        self._port.send(obj, block, timeout)

    def _put_pooled(self, obj: Any, block: bool, timeout: float | None) -> None:
        """put with a pool: encode (copying large payloads once into blocks, adding transit
        references), store the frame; if storing fails, the references are dropped again."""
        hook = self._pool_hook
        assert hook is not None
        self._live_ring()
        deadline = deadline_ns(timeout) if block else deadline_ns(0)
        remaining = None if deadline == -1 else max(0.0, (deadline - time.monotonic_ns()) / 1e9)
        try:
            frame = hook.encode(obj, timeout=remaining)
        except PoolExhausted as exc:
            raise Full(str(exc)) from exc
        try:
            rc = self._fput(frame, T_OBJ, deadline)
            if rc != _OK:
                self._put_slow(rc, frame, T_OBJ, deadline)
        except BaseException:
            hook.discard(frame)
            raise

    # ---- loans ---------------------------------------------------------------------------

    @property
    def pool(self) -> BufferPool | None:
        """The block pool this queue sends large payloads through (None: none)."""
        return self._pool_hook.pool if self._pool_hook is not None else None

    def loan(self, nbytes: int, timeout: float | None = None) -> Loan:
        """A writable block of this queue's pool; ``put(loan)`` sends it without a copy."""
        return self._need_pool().loan(nbytes, timeout)

    def loan_array(self, shape: Any, dtype: Any, timeout: float | None = None) -> Any:
        """A writable ndarray in a block of this queue's pool; ``put`` sends it by handle."""
        return self._need_pool().loan_array(shape, dtype, timeout)

    def _need_pool(self) -> BufferPool:
        if self._pool_hook is None:
            raise ValueError("this queue has no block pool: create it with pool=BufferPool...")
        return self._pool_hook.pool

    def put_nowait(self, obj: _T) -> None:
        self.put(obj, False)

    def put_bytes(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put a bytes-like payload as is; ``get`` returns it as bytes."""
        self._port.send_bytes(obj, block, timeout)

    def _put_slow(self, rc: int, data: Any, rtype: int, deadline: int) -> None:
        """Everything but the one-call fast path: spill, retries between slices, errors.
        ``deadline`` is the caller's, so a retry never stretches the timeout."""
        ring = self._live_ring()
        if not isinstance(data, bytes):
            data = byte_view(data)  # any buffer, flattened only if it is not contiguous
            if rc == _NOTBUF:
                rc = self._fput(data, rtype, deadline)
                if rc == _OK:
                    return
        if rc == _TOOBIG and self.spill:
            ref = self._spills.write(data)
            try:
                ring._put(ref, T_SPILL_OBJ if rtype == T_OBJ else T_SPILL_BYTES, deadline)
            except BaseException:
                self._spills.discard(ref)
                raise
            return
        # SLICE/INTERRUPTED (a wait came back so signal handlers could run), FULL or an
        # error: Ring._put owns that loop and raises what is left.
        ring._put(data, rtype, deadline)

    def put_many(
        self, objs: Iterable[Any], block: bool = True, timeout: float | None = None
    ) -> None:
        """Put every object in order with as few native calls as the ring's room allows."""
        ring = self._live_ring()
        if self._pool_hook is not None:
            for i, obj in enumerate(objs):  # each frame's blocks are undone on its own failure
                try:
                    self._put_pooled(obj, block, timeout)
                except Full:
                    if i:
                        raise Full(f"{i} items were put before the queue filled") from None
                    raise
            return
        deadline = deadline_ns(timeout) if block else 0
        items = list(objs)
        total = len(items)
        if self._bytes_as_is and self._port.first_not_bytes(items, 0) == total:
            self._put_frames(ring, items, T_BYTES, deadline, 0, total)  # bytes go as they are
            return
        # Encode everything first, so that an object the codec refuses stores nothing. Runs
        # of bytes still travel as they are (a run of frames, then a run of bytes, ...).
        as_is, encode = self._bytes_as_is, self._encode
        raw = [as_is and type(x) is bytes for x in items]
        frames = [x if r else encode(x) for x, r in zip(items, raw, strict=True)]
        frames = [f if type(f) is bytes else byte_view(f).tobytes() for f in frames]
        i = 0
        while i < total:
            j = i + 1
            while j < total and raw[j] == raw[i]:
                j += 1
            self._put_frames(ring, frames[i:j], T_BYTES if raw[i] else T_OBJ, deadline, i, total)
            i = j

    def _put_frames(
        self, ring: Ring, frames: list[bytes], rtype: int, deadline: int, offset: int, total: int
    ) -> None:
        """put_many's loop: store every frame, in order, with as few calls as the room
        allows. ``offset`` and ``total`` place the frames in the caller's whole batch, for
        queue.Full's message."""
        done, n = 0, len(frames)
        while done < n:
            r = self._fput_many(frames, done, rtype, deadline)
            if r > 0:
                done += r
                continue
            if -r == _TOOBIG:  # keeps its place in the order: it goes alone, maybe spilled
                self._put_slow(_TOOBIG, frames[done], rtype, deadline)
                done += 1
                continue
            if -r != _CLOSED and ring._retry(-r):
                continue
            self._live_ring()
            if offset + done and -r == _FULL:
                raise Full(f"{offset + done} of {total} items were put before the ring filled")
            ring._raise(-r, len(frames[done]))

    # ---- get -----------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        """Remove and return the next object; queue.Empty if none came within ``timeout``."""
        return self._port.recv(block, timeout)

    def get_nowait(self) -> _T:
        return self.get(False)

    # ---- asyncio (shmipc/aio.py: one helper thread per loop, no polling; docs/asyncio.md) ----

    async def get_async(self, timeout: float | None = None) -> _T:
        """``await`` the next object without blocking the loop; queue.Empty after ``timeout``.
        Cancelling it never loses a message: nothing is taken until it returns."""
        try:  # the fast path: a message is there (no coroutine of aio's to build)
            return self.get(False)
        except _stdlib_queue.Empty:
            if timeout == 0:
                raise
        from .aio import queue_get_async

        return await queue_get_async(self, timeout)

    async def get_bytes_async(self, timeout: float | None = None) -> bytes:
        """``await`` the next raw payload (as get_bytes)."""
        try:
            return self.get_bytes(False)
        except _stdlib_queue.Empty:
            if timeout == 0:
                raise
        from .aio import queue_get_bytes_async

        return await queue_get_bytes_async(self, timeout)

    async def put_async(self, obj: _T, timeout: float | None = None) -> None:
        """``await`` room and put ``obj``; queue.Full after ``timeout``. Cancelling it never
        half-sends: the message is either whole in the queue or not there at all."""
        try:
            self.put(obj, False)
            return
        except _stdlib_queue.Full:
            if timeout == 0:
                raise
        from .aio import queue_put_async

        await queue_put_async(self, obj, timeout)

    async def put_bytes_async(self, data: Any, timeout: float | None = None) -> None:
        """``await`` room and put raw bytes (as put_bytes)."""
        try:
            self.put_bytes(data, False)
            return
        except _stdlib_queue.Full:
            if timeout == 0:
                raise
        from .aio import queue_put_bytes_async

        await queue_put_bytes_async(self, data, timeout)

    def get_bytes(self, block: bool = True, timeout: float | None = None) -> bytes:
        """The next message's raw payload (a codec frame, or what put_bytes stored)."""
        return self._port.recv_bytes(block, timeout)

    def _get_miss(self, status: int, rtype: int, payload: Any, deadline: int, decode: bool) -> Any:
        """Everything but the port's fast case: a record type it leaves to Python (a spill
        reference; status OK), or no record yet (see _get_slow)."""
        if status != _OK:
            rtype, payload = self._get_slow(status, deadline)
        if decode:
            return self._decode(rtype, payload)
        if rtype in (T_OBJ, T_BYTES):
            return payload
        if rtype in (T_SPILL_OBJ, T_SPILL_BYTES):
            return self._spills.read(payload)
        raise CorruptedError(f"queue record of unknown type {rtype}")

    def _get_slow(self, status: int, deadline: int) -> tuple[int, bytes]:
        """After the port came back empty-handed: a closed handle, a wait slice that ended
        (signal handlers have run by now), a timeout or an error. Ring._get_record owns the
        retry loop (taking over dead lock holders) and raises what is left."""
        return self._live_ring()._get_record(deadline)

    def get_many(
        self, max_items: int, timeout: float | None = None, *, block: bool = True
    ) -> list[Any]:
        """Up to ``max_items`` objects: at least one, waiting up to ``timeout`` for it
        (queue.Empty if none came), then whatever else is already there."""
        deadline = deadline_ns(timeout) if block else 0
        try:
            return self._fget_many(max_items, deadline)
        except RingMiss as exc:
            status, rtype, payload = exc.args
        if status != _OK:
            rtype, payload = self._get_slow(status, deadline)
        return [self._decode(rtype, payload)]

    def _decode(self, rtype: int, payload: Any) -> Any:
        if rtype == T_OBJ:
            return self._decode_counted(payload)
        if rtype == T_BYTES:
            return payload
        if rtype == T_SPILL_OBJ:
            return self._decode_counted(self._spills.read(payload, frame=True))
        if rtype == T_SPILL_BYTES:
            return self._spills.read(payload)
        raise CorruptedError(f"queue record of unknown type {rtype}")

    def _decode_counted(self, frame: Any) -> Any:
        """Decode a frame taken off the ring; one that fails is counted (``undecodable``)."""
        try:
            return self._decode_frame(frame)
        except Exception:
            self._port.undecodable += 1
            raise

    # ---- zero-copy -----------------------------------------------------------------------

    # reserve/commit/abort/peek/peek_next/release: each handle binds its port's one-call
    # versions over these (see _bind); these definitions document them and serve subclasses.

    def reserve(self, nbytes: int, block: bool = True, timeout: float | None = None) -> memoryview:
        """A writable view of ``nbytes`` in the ring; ``commit()`` sends it as bytes.

        Until this thread commits or aborts, other producers wait: fill the view promptly.
        Drop whatever was made from the view (slices, arrays) before committing.
        """
        return self._port.reserve(nbytes, block, timeout)

    def commit(self) -> None:
        """Publish this thread's reservation; its view becomes unusable. BufferError (nothing
        published, the reservation kept) while anything made from the view is alive."""
        self._port.commit()

    def abort(self) -> None:
        """Drop this thread's reservation: nothing is published. BufferError (the
        reservation kept) while anything made from its view is alive."""
        self._port.abort()

    def peek(self, block: bool = True, timeout: float | None = None) -> memoryview:
        """A read-only view of the next message's raw payload; ``release()`` frees it.

        Until this thread releases it, other consumers wait.
        """
        return self._port.peek(block, timeout)

    def peek_next(self, block: bool = True, timeout: float | None = None) -> memoryview:
        """``release()`` the message this thread peeked, if any, then ``peek()``: a consumer
        loop's step in one call. The last view is freed by ``release()`` (or ``close()``).

        If the release fails (BufferError while something made from the view is alive),
        nothing changes: the message stays peeked.
        """
        return self._port.peek_next(block, timeout)

    def release(self) -> None:
        """Free the message this thread peeked; its view becomes unusable. BufferError (the
        message kept, still peeked) while anything made from the view is alive."""
        self._port.release()

    def _zc_slow(self, op: int, status: int, arg: int, deadline: int) -> Any:
        """Everything but the port's fast zero-copy outcome: retries between wait slices
        (with the ring's liveness pass), and every error. ``arg``: the reservation's size,
        or the type of a record peek leaves in place (status OK)."""
        if op == _ZC_RESERVE:
            return self._reserve_slow(status, arg, deadline)
        if op == _ZC_PEEK:
            return self._peek_slow(status, arg, deadline)
        # commit/abort/release after the port let go of the claim
        if status == _CLOSED:
            what = "nothing was published" if op == _ZC_COMMIT else "the message was not consumed"
            raise Closed(f"this queue handle was closed; {what}")
        ring = self._ring or self._closed_ring
        if status == _REVOKED:
            label = ring._label if ring is not None else "this queue"
            raise Revoked(
                f"this thread's reservation of {arg} bytes on {label} was revoked while the "
                "process was stopped for longer than the ring's liveness interval; nothing "
                "of it was published: reserve again to send it"
            )
        if ring is None:  # pragma: no cover - a port always has its ring
            raise Closed("this queue handle is closed")
        ring._raise(status)

    def _reserve_slow(self, status: int, nbytes: int, deadline: int) -> memoryview:
        while True:
            if status == _CLOSED:
                self._live_ring()
                raise Closed("this queue handle is closed")
            ring = self._live_ring()
            if not ring._retry(status):
                ring._raise(status, nbytes)
            r = self._port.try_reserve(nbytes, deadline)
            if not isinstance(r, int):
                return r
            status = r

    def _peek_slow(self, status: int, rtype: int, deadline: int) -> memoryview:
        while True:
            if status == _OK:  # a record peek does not show: it stays the next one
                if rtype in (T_SPILL_OBJ, T_SPILL_BYTES):
                    raise ValueError(
                        "the next message was larger than half the ring and travels in a side "
                        "segment, so it has no view in the ring: read it with get() or "
                        "get_bytes()"
                    )
                raise CorruptedError(f"queue record of unknown type {rtype}")
            if status == _CLOSED:
                self._live_ring()
                raise Closed("this queue handle is closed")
            ring = self._live_ring()
            if not ring._retry(status):
                ring._raise(status)
            r = self._port.try_peek(deadline)
            if not isinstance(r, tuple):
                return r
            status, rtype = r

    # ---- state ---------------------------------------------------------------------------

    def qsize(self) -> int:
        """Messages in the queue now (exact while no put or get is under way)."""
        return self._live_ring().qsize()

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        """True when ``maxsize`` messages are waiting (never for a queue without maxsize)."""
        size = self.qsize()  # raises Closed on a closed handle
        return self._maxsize > 0 and size >= self._maxsize

    def statistics(self) -> RingStatistics:
        """The ring's counters, and ``undecodable``: the messages this handle took off the
        queue that failed to decode (each raised CorruptedError; none took others with it)."""
        stats = self._live_ring().statistics()
        return dataclasses.replace(stats, undecodable=self._port.undecodable)

    # ---- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Drop this handle. In the creating process this also unlinks the name: processes
        already attached keep working, new ones can no longer attach; and it removes the
        queue's spilled messages still waiting."""
        ring = self._ring
        if ring is not None:
            # This thread's reservation and peek: BufferError, nothing changed, while a view
            # of either is in use.
            self._port.let_go()
            ring._let_go()
        self._ring = None
        # The next fast-path call fails, and _live_ring says why. A call inside the ring in
        # another thread keeps the mapping (the port's export until it leaves, or its frame's
        # ring object); the ring object stays with this handle so that another thread's
        # reservation or peek can still be given back (docs/internals/lifetime.md).
        self._port.close()
        if ring is not None:
            _aio_closing(ring)  # coroutines awaiting this handle wake up and see Closed
            if ring.region.owner:
                self._spills.remove_all()
            self._closed_ring = ring
            ring.close()

    def unlink(self) -> None:
        """Remove the name now (the memory lives on while any process maps it)."""
        self._live_ring().unlink()

    def join_thread(self) -> None:
        """A no-op: there is no feeder thread to join (``put`` stores synchronously)."""

    def cancel_join_thread(self) -> None:
        """A no-op: there is no feeder thread whose join could block exit."""

    def __enter__(self) -> Queue[_T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # The handle carries the codec and the trust this process chose (never left to the
        # header): a spawned child of a pickle queue unpickles because its parent asked to.
        trusted = self._live_ring().region._trusted_uids
        spills = self._spills
        hook = self._pool_hook
        return (
            _attach_queue,
            (
                self.name,
                self._codec_spec(),
                self.spill,
                trusted,
                spills.max_message,
                spills.max_spilled,
                hook.pool.name if hook is not None else None,
                hook.threshold if hook is not None else DEFAULT_ZERO_COPY_THRESHOLD,
            ),
        )

    def _codec_spec(self) -> str | Codec:
        name = getattr(self._codec, "name", None)
        return name if name in _CODEC_IDS else self._codec

    def __repr__(self) -> str:
        if self._ring is None:
            return "<shmipc.Queue closed>"
        return f"<shmipc.Queue {self.name} qsize={self.qsize()} capacity={self._cap}>"


def _handle(ref: weakref.ref[Queue[Any]]) -> Queue[Any]:
    queue = ref()
    if queue is None:  # pragma: no cover - a port outliving its queue is never called
        raise Closed("this queue handle is closed (garbage-collected)")
    return queue


def _attach_queue(
    name: str,
    codec: str | Codec | None,
    spill: bool,
    trusted_uids: tuple[int, ...] = (),
    max_message: int = _spill.DEFAULT_MAX_MESSAGE,
    max_spilled: int = _spill.DEFAULT_MAX_SPILLED,
    pool: str | None = None,
    zero_copy_threshold: int = 64 * 1024,
) -> Queue[Any]:
    return Queue.attach(
        name,
        codec=codec,
        spill=spill,
        trusted_uids=trusted_uids,
        max_message=max_message,
        max_spilled=max_spilled,
        pool=pool,
        zero_copy_threshold=zero_copy_threshold,
    )


def _check_pool(pool: Any, threshold: int) -> None:
    if pool is not None and not isinstance(pool, BufferPool):
        raise TypeError(f"pool must be a BufferPool (or its name, on attach), not {pool!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"zero_copy_threshold must be an int >= 1, not {threshold!r}")


def _aio_closing(ring: Ring) -> None:
    aio = sys.modules.get("shmipc.aio")
    if aio is not None:
        aio._closing(ring)
