"""Topic fan-out through the block pool: one block, N subscribers, a reference each.

A topic made with ``pool=`` publishes numpy arrays and bytes-like payloads of at least
``zero_copy_threshold`` bytes (and every loan) as small handles to pool blocks, in records of
kind ``K_POOLED``; a subscriber's ``receive()`` returns a read-only view of the block. This
module owns who holds each reference (docs/topics.md "Pooled topics", docs/zero-copy.md).

Who holds what (policy "block"; "overwrite" with a pool is refused for now)
---------------------------------------------------------------------------
* The publisher's own process key holds one reference per block of a frame from ``encode``
  until the publish section (a loan keeps its own reference besides, until released).
* Publish section, under the topic's publisher lock: count the ACTIVE slots ``n``, move the
  publisher's reference to ``n`` references of the topic's transit key (``n == 0``: drop it),
  then place the record (``shmipc_topic_place_locked``). A slot becomes ACTIVE only under
  that lock (``activate``) and, on a pooled topic, leaves ACTIVE only under it (``retire``),
  so the ``n`` slots counted are exactly the subscribers that will see the record.
* Each subscriber's receive copies the record, moves its cursor by a CAS (which fails if a
  retire marked it: the copy is dropped, Evicted), then claims: moves one transit reference
  to its own process key (a ``PoolBuffer`` view; the block is freed when the last view goes).
  ``receive_bytes`` of a pooled record gives the reference straight back (no claim) and
  returns the frame.
* Retire (a subscriber's close, or the eviction of a dead or stopped one), under the publisher
  lock: CAS the slot out of ACTIVE, mark its cursor (fetch_or 1), then walk its unread records
  from that cursor to the tail and drop one transit reference of every block they name.

INVARIANTS (tests/unit/topic/test_topic_pool_model.py runs every interleaving of these
steps, any actor killed or stopped between two of them)

* P-T1 For every pooled record R and block B it names: transit refs of B from R = number of
  slots counted for R that have neither claimed it nor had it walked by a retire. Publish adds
  exactly the count (under the lock), each counted slot takes it away exactly once.
* P-T2 A slot's unread record is taken away by exactly one of: its owner's claim (after a
  successful cursor CAS past it) or a retire's walk (from the cursor it marked). The mark
  makes the two exclusive: the CAS succeeds first (the walk starts after the record) or
  fails (the owner discards its copy and never claims).
* P-T3 The records a retire walks are intact: the slot was ACTIVE until the retire's CAS
  under the lock, so no publisher wrote past its cursor (T3), and none can while the
  retirer holds the lock.
* P-T4 Nothing read from the ring places memory: the walk checks every position and length
  as try_take does (CorruptedError), and handles are parsed by PoolHook (B1, B2).

Dead processes
--------------
* Publisher killed before its publish section: its references are on its own key, taken back
  by the pool's liveness reclaim. Killed inside the section after moving references and
  before the tail store: those ``n`` transit references stay until the pool is destroyed (a
  window of microseconds, as the Queue's put; see shmipc/buffers.py "Known limits").
* Subscriber killed holding views: its own key's references, by the pool's liveness reclaim.
  Its slot's unread records: by the topic's eviction (a blocked publisher's liveness pass or
  a subscribe that needs a slot), which walks them. Killed between its cursor CAS and its
  claim (one call): that one transit reference stays (the same known limit).
* Subscriber stopped (SIGSTOP) for the liveness interval while a publisher waits: evicted,
  walked as above; its own views' references stay with its (live) process until it lets go.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from ._native import ffi, lib
from .buffers import BufferPool, PoolHook, _self_key, channel_tag
from .errors import Closed, CorruptedError, Lagged, ShmipcError

K_POOLED = lib.SHMIPC_TOPIC_K_POOLED
_OK = lib.SHMIPC_OK
_REC = struct.Struct("<IIQ")
_PAD = lib.SHMIPC_TOPIC_REC_PAD


class TopicPool:
    """The pool side of one topic handle: encoding with the publisher's key, the locked
    publish section, the subscriber's claim, and the retire walk."""

    def __init__(self, topic: Any, pool: BufferPool, threshold: int) -> None:
        if not isinstance(pool, BufferPool):
            raise TypeError(f"pool must be a BufferPool (or its name, on attach), not {pool!r}")
        header = topic._region.header
        self.topic = topic
        self.pool = pool
        self.threshold = threshold
        tag = channel_tag(topic.name, header.creator_pid, header.creator_start)
        trusted = topic._region._trusted_uids
        self.hook = PoolHook(pool, topic._codec, tag, threshold, trusted)  # transit key
        self.overwrite = topic.policy == "overwrite"
        if self.overwrite:
            # The ring's reference holds the block; a receiver adds one of its own, and a
            # block freed or reused since (the record was lapped) is Lagged, never mapped.
            self.hook.claim_from = 0
            self.hook.on_stale = lambda: Lagged(
                1, "a pooled message was overwritten before its block was claimed: missed 1"
            )
        self._enc: PoolHook | None = None
        self._enc_pid = 0
        self._tag, self._trusted = tag, trusted

    # ---- publisher --------------------------------------------------------------------------

    def _encoder(self) -> PoolHook:
        """A hook whose "transit" key is this process's own key (fork-aware)."""
        if self._enc is None or self._enc_pid != os.getpid():
            enc = PoolHook(self.pool, self.topic._codec, self._tag, self.threshold, self._trusted)
            enc.key = _self_key()
            self._enc, self._enc_pid = enc, os.getpid()
        return self._enc

    def encode(self, obj: Any, timeout: float | None) -> tuple[bytes, list[Any]]:
        """The frame and the blocks it names, each holding one reference of this process."""
        enc = self._encoder()
        sent: list[Any] = []
        from .sync import deadline_ns

        enc._tls.ctx = (sent, 1, deadline_ns(timeout))
        try:
            frame = enc._encode(obj)
        except BaseException:
            enc._tls.ctx = None
            enc._undo(sent)
            raise
        enc._tls.ctx = None
        return frame, sent

    def give_back(self, sent: list[Any]) -> None:
        """Drop the publisher's references of a frame that was not published."""
        self._encoder()._undo(sent)

    def move(self, sent: list[Any], n: int) -> None:
        """Under the publisher lock: each block's publisher reference -> n transit ones
        (all or nothing: undone on the first failure, which is CorruptedError)."""
        me = self._encoder().key
        transit = self.hook.key
        done: list[tuple[Any, int, int, int]] = []
        for _block, _, handle in sent:
            m, cls, index, gen, *_ = self.hook._parse(handle)
            rc = m.adjust(cls, index, gen, me, 1, transit if n else 0, n)
            if rc < 0:
                for m2, c2, i2, g2 in done:
                    m2.adjust(c2, i2, g2, transit if n else 0, n, me, 1)
                raise CorruptedError(
                    f"could not hand block {index} (class {cls}) to {n} subscribers "
                    f"(pool status {rc}: at most {lib.SHMIPC_POOL_SLOTS} holders per block)"
                )
            done.append((m, cls, index, gen))

    def unmove(self, sent: list[Any], n: int) -> None:
        """Undo ``move`` (the record did not fit: it was never placed)."""
        me = self._encoder().key
        transit = self.hook.key
        for _, _, handle in sent:
            m, cls, index, gen, *_ = self.hook._parse(handle)
            m.adjust(cls, index, gen, transit if n else 0, n, me, 1)

    def publish_locked(self, frame: bytes, sent: list[Any], need: Any) -> int:
        """The publish section; the caller holds the publisher lock. "block": n transit
        references per block, n = ACTIVE slots now. "overwrite": drop the ring reference of
        every pooled record this one overwrites (before its bytes go: a reader that still
        copies it then finds the block freed or reused, i.e. Lagged), then one ring
        reference per block. Returns the place status (references undone unless OK)."""
        topic = self.topic
        if self.overwrite:
            for old in self._overwritten(len(frame)):
                self.drop_frame(old)
            n = 1
        else:
            n = lib.shmipc_topic_count_active(topic._ptr, topic._max_subs)
        self.move(sent, n)
        rc = lib.shmipc_topic_place_locked(
            topic._ptr, topic._cap, topic._max_subs, frame, len(frame), K_POOLED, need
        )
        if rc != _OK:
            self.unmove(sent, n)
        return rc

    def _overwritten(self, length: int) -> list[bytes]:
        """The frames of the pooled records a record of ``length`` bytes will overwrite (as
        place() walks them, under the lock; CorruptedError where it would fail)."""
        topic = self.topic
        p, cap = topic._ptr, topic._cap
        mask = cap - 1
        tail = lib.shmipc_load64_acquire(p, lib.SHMIPC_TOPIC_OFF_TAIL)
        o = lib.shmipc_load64_acquire(p, lib.SHMIPC_TOPIC_OFF_OLDEST)
        rec = (lib.SHMIPC_TOPIC_REC_HEADER + length + 15) & ~15
        if tail % 16 or o % 16 or o > tail or tail - o > cap or rec > cap // 2:
            return []  # place() reports it (CORRUPT / TOOBIG)
        idx = tail & mask
        end = tail + (cap - idx if cap - idx < rec else 0) + rec
        out = []
        mm, data = topic._mapping, self._data_off()
        while o + cap < end:
            oi = o & mask
            olen, okind, _ = _REC.unpack_from(mm, data + oi)
            step = cap - oi if okind == _PAD else (lib.SHMIPC_TOPIC_REC_HEADER + olen + 15) & ~15
            if (okind != _PAD and olen > cap // 2) or oi + step > cap or o + step > tail:
                raise CorruptedError(f"topic record at {o} overruns the ring or the tail")
            if okind == K_POOLED:
                b = data + oi + lib.SHMIPC_TOPIC_REC_HEADER
                out.append(bytes(mm[b : b + olen]))
            o += step
        return out

    def _data_off(self) -> int:
        topic = self.topic
        return (
            topic._map_off
            + lib.SHMIPC_TOPIC_HEADER_SIZE
            + topic._max_subs * lib.SHMIPC_TOPIC_SLOT_SIZE
        )

    def drain(self) -> int:
        """Under the publisher lock ("overwrite", the topic being unlinked): drop the ring
        reference of every pooled record still in the ring. Returns how many."""
        p = self.topic._ptr
        o = lib.shmipc_load64_acquire(p, lib.SHMIPC_TOPIC_OFF_OLDEST)
        tail = lib.shmipc_load64_acquire(p, lib.SHMIPC_TOPIC_OFF_TAIL)
        n = self.walk_drop(o)
        # O moves to the tail: nobody walks these records again (no double drop), and a
        # reader still behind sees itself lapped (T2).
        lib.shmipc_store64_release(p, lib.SHMIPC_TOPIC_OFF_OLDEST, tail)
        return n

    def drop_frame(self, frame: bytes) -> int:
        """Drop one transit reference of every block ``frame`` names. A handle that does
        not parse (a hostile record) names nothing this topic gave references to: skipped,
        so that a scribbled record never stops a walk or an overwrite half-way (P-T4)."""
        dropped = 0
        for data in self.hook._handles_in(frame):
            try:
                m, cls, index, gen, *_ = self.hook._parse(data)
            except CorruptedError:
                continue
            dropped += m.adjust(cls, index, gen, self.hook.key, 1, 0, 0) >= 0
        return dropped

    # ---- subscriber -------------------------------------------------------------------------

    def receive(self, payload: bytes, decode: bool) -> Any:
        """A pooled record just taken by a subscriber: claim its blocks (decode), or give
        this subscriber's references back and return the frame (receive_bytes)."""
        if decode:
            if self.overwrite:
                return self.hook.decode(payload)
            try:
                return self.hook.decode(payload)
            except CorruptedError:
                # "block": a claim that failed (e.g. no free holder slot) leaves this
                # subscriber's transit reference; give it back when the frame names one
                # block (nothing of it was claimed). With several, which ones were claimed
                # is not known here: those stay (docs/topics.md, limits).
                if len(self.hook._handles_in(bytes(payload))) == 1:
                    self.drop_frame(bytes(payload))
                raise
        if not self.overwrite:  # "overwrite": the ring's reference is not this reader's
            self.drop_frame(payload)
        return payload

    # ---- retire -----------------------------------------------------------------------------

    def walk_drop(self, start: int) -> int:
        """Under the publisher lock, for a slot just retired at cursor ``start``: drop one
        transit reference of every block its unread records name. Returns records walked."""
        topic = self.topic
        p = topic._ptr
        cap = topic._cap
        mask = cap - 1
        tail = lib.shmipc_load64_acquire(p, lib.SHMIPC_TOPIC_OFF_TAIL)
        mm = topic._mapping
        data = self._data_off()
        c = start
        walked = 0
        if c > tail or tail - c > cap or c % 16:
            raise CorruptedError(f"retired cursor {c} is not a position of this topic")
        while c < tail:
            idx = c & mask
            length, kind, _seq = _REC.unpack_from(mm, data + idx)
            if kind == _PAD:
                c += cap - idx
                continue
            rec = (lib.SHMIPC_TOPIC_REC_HEADER + length + 15) & ~15
            if length > cap // 2 or idx + rec > cap or c + rec > tail:
                raise CorruptedError(f"topic record at {c} overruns the ring or the tail")
            if kind == K_POOLED:
                start_b = data + idx + lib.SHMIPC_TOPIC_REC_HEADER
                self.drop_frame(bytes(mm[start_b : start_b + length]))
            c += rec
            walked += 1
        return walked


def lock(topic: Any, deadline: int) -> None:
    """Take the topic's publisher lock (taking it over from a dead holder); TimeoutError."""
    from .sync import take_over_if_dead

    p = topic._p()
    off = topic._lock_off
    while True:
        rc = lib.shmipc_lock_acquire(p, off, deadline, 50_000)
        if rc == _OK:
            return
        if rc in (lib.SHMIPC_SLICE, lib.SHMIPC_INTERRUPTED):
            take_over_if_dead(p, off, lambda holder: _steal_keep(p, holder))
            continue
        if rc == lib.SHMIPC_TIMEDOUT:
            raise TimeoutError("timed out waiting for the topic's publisher lock")
        if rc == lib.SHMIPC_OWNERDEAD:
            return  # taken over from a dead holder: held now
        if rc == lib.SHMIPC_DEADLOCK:
            raise CorruptedError("the topic's publisher lock names this thread")
        raise ShmipcError(f"publisher lock: status {rc}")


def _steal_keep(p: Any, holder: int) -> bool:
    # Take a dead holder's lock and let it go again (its section needs no repair, T1).
    return bool(lib.shmipc_topic_steal(p, holder))


def unlock(topic: Any) -> None:
    lib.shmipc_lock_release(topic._ptr, topic._lock_off)


def retire(topic: Any, slot: int, observed: int, to_free: bool, eviction: bool) -> bool:
    """Take a slot out (close, eviction, a dead owner) and give back its unread records'
    references, all under the publisher lock. True if the slot's word was retired."""
    tp: TopicPool | None = topic._tpool
    if tp is None:
        raise Closed("topic handle has no pool")
    cur = ffi.new("uint64_t *")
    lock(topic, -1)
    try:
        rc = lib.shmipc_topic_retire(
            topic._ptr, topic._max_subs, slot, observed, int(to_free), int(eviction), cur
        )
        if rc == lib.SHMIPC_CORRUPT:
            raise CorruptedError(f"topic slot {slot}'s cursor is not a position")
        if rc == 1:
            tp.walk_drop(cur[0])
        return rc != 0
    finally:
        unlock(topic)
