"""``JoinableQueue``: a ``shmipc.Queue`` with ``task_done`` and ``join``, as multiprocessing's.

The count of unfinished tasks lives in shared memory, in a small companion segment named after
the queue (``<queue name>.joinable``), so that every process holding the queue (forked,
spawned, or attached by name) counts in the same place:

* ``put`` adds one *before* the message is stored (and takes it back if the put fails), so a
  consumer can never call ``task_done`` for a task not yet counted;
* ``task_done`` takes one off (``ValueError`` if none is unfinished, like the stdlib) and,
  when the count reaches zero, bumps a sequence word and wakes the joiners sleeping on it;
* ``join`` sleeps on that word (spin, then futex) until the count is zero.

Consumers that die. Each process that takes messages off the queue owns a slot with the
number it took and has not yet marked done (``task_done`` by the same process). A consumer
killed between ``get`` and ``task_done`` leaves its slot's number behind: ``abandoned()``
adds up the slots of processes known dead, so a program (or ``join(timeout=...)``'s caller)
can tell "the tasks are slow" from "the tasks died with their consumer". The unfinished count
itself is not changed behind the program's back: whether a task that died with its worker is
done, retried or lost is the program's decision (``task_done`` as many times to write them
off). Not counted: a death in the few instructions between the message leaving the ring and
the slot's increment, or between ``task_done``'s slot decrement and its count decrement (a
task done is never reported abandoned); tasks marked done by another process than the one
that took them (the taker's slot keeps them, so they count as abandoned once it exits);
processes beyond the ``SLOTS`` table's size (they take and finish tasks normally, uncounted).

Invariants (the actors: producers, consumers, joiners; any may die between two steps):

* I1 ``unfinished`` >= number of messages in the ring + tasks taken and not done, as long as
  no process calls ``task_done`` more often than it took (the stdlib's own contract);
  ``unfinished`` is never made negative (compare-exchange refuses).
* I2 every transition of ``unfinished`` to zero bumps ``seq`` after it (release) and wakes
  the joiners; a joiner reads ``seq`` before ``unfinished`` (acquire), so it sleeps only on a
  ``seq`` value that the next transition to zero changes: no lost wake-up.
* I3 a slot is owned by at most one process: claimed by compare-exchange from 0 (or from a
  dead owner whose count is zero) to the claimer's identity.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from . import _proc
from ._native import lib
from .codec import Codec
from .layout import CACHE_LINE, Kind, Layout
from .queue import Queue
from .region import Region
from .sync import _INT_MAX, _wait_until, deadline_ns

__all__ = ["JoinableQueue"]

#: How many consuming processes a queue counts abandoned tasks for.
SLOTS = 62
_SLOT = 16  # owner u64 (pid | start time low 32 bits << 32), taken i64
_U64 = (1 << 64) - 1


def _state_layout() -> Layout:
    lay = Layout("joinable queue state")
    lay.add("unfinished", 8)
    lay.add("seq", 4)  # the futex word joiners sleep on: bumped at every return to zero
    lay.add("joiners", 4)  # joiners asleep on seq
    lay.pad_to(CACHE_LINE)
    lay.add("slots", SLOTS * _SLOT, align=CACHE_LINE)
    lay.pad_to(CACHE_LINE)
    return lay


STATE = _state_layout()
_UNFINISHED = STATE["unfinished"]
_SEQ = STATE["seq"]
_JOINERS = STATE["joiners"]
_SLOTS = STATE["slots"]


def state_name(queue_name: str) -> str:
    """The companion segment of the queue named ``queue_name``."""
    return f"{queue_name}.joinable"


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


class JoinableQueue(Queue):
    """A ``Queue`` whose consumers mark each task done, so that producers can ``join``.

    Takes every argument of ``Queue``; ``shmipc.mp.JoinableQueue`` makes one with the pickle
    codec, as multiprocessing's. ``task_done``/``join`` count in shared memory; see the
    module's docstring for consumers that die between ``get`` and ``task_done``.
    """

    _jregion: Region | None = None

    def __init__(self, maxsize: int = 0, **kwargs: Any) -> None:
        self._jmode = kwargs.get("mode", 0o600)
        super().__init__(maxsize, **kwargs)

    def _bind(self, ring: Any, codec: Codec, maxsize: int, spill: bool, *args: Any) -> None:
        super()._bind(ring, codec, maxsize, spill, *args)
        try:
            name = state_name(ring.name)
            if hasattr(self, "_jmode"):  # made by __init__: this process creates the state
                region = Region.create(STATE.size, name=name, mode=self._jmode)
            else:
                region = Region._attach_segment(
                    name, kind=Kind.REGION, trusted_uids=ring.region._trusted_uids
                )
                if region.size < STATE.size:
                    region.close()
                    raise ValueError(f"segment {name!r} is too small for a JoinableQueue state")
        except BaseException:
            ring.close()
            raise
        self._jregion = region
        self._jbase, self._joff = region.pointer(0)
        self._slot: tuple[int, int] | None = None  # (pid, slot offset) of this process

    # ---- counting ------------------------------------------------------------------------

    def _add(self, n: int) -> None:
        lib.shmipc_fetch_add64_acq_rel(self._jbase, self._joff + _UNFINISHED, n & _U64)

    def _finish(self, n: int, strict: bool) -> None:
        base, off = self._jbase, self._joff + _UNFINISHED
        while True:
            u = _signed(lib.shmipc_load64_acquire(base, off))
            if u < n:
                if strict:
                    raise ValueError("task_done() called too many times")
                n = max(u, 0)
                if n == 0:
                    return
            if lib.shmipc_cas64_acq_rel(base, off, u & _U64, (u - n) & _U64) == u & _U64:
                break
        if u == n:  # I2: back to zero: bump seq (release, after the CAS) and wake the joiners
            seq = self._joff + _SEQ
            lib.shmipc_fetch_add32_acq_rel(base, seq, 1)
            lib.shmipc_wake32(base, seq, self._joff + _JOINERS, _INT_MAX)

    def _my_slot(self) -> int | None:
        """This process's slot offset (claimed on first use), None if the table is full."""
        pid = os.getpid()
        if self._slot is not None and self._slot[0] == pid:
            return self._slot[1]
        pid, start = _proc.self_identity()
        me = pid | (start & 0xFFFFFFFF) << 32
        base = self._jbase
        found = None
        for i in range(SLOTS):  # I3: a free slot, else one whose owner died with none taken
            off = self._joff + _SLOTS + i * _SLOT
            owner = lib.shmipc_load64_acquire(base, off)
            if owner == me:
                found = off
                break
            if owner == 0 and lib.shmipc_cas64_acq_rel(base, off, 0, me) == 0:
                found = off
                break
        if found is None:
            for i in range(SLOTS):
                off = self._joff + _SLOTS + i * _SLOT
                owner = lib.shmipc_load64_acquire(base, off)
                if (
                    owner
                    and lib.shmipc_load64_acquire(base, off + 8) == 0
                    and _owner_dead(owner)
                    and lib.shmipc_cas64_acq_rel(base, off, owner, me) == owner
                ):
                    found = off
                    break
        if found is not None:
            self._slot = (pid, found)
        return found

    def _took(self, n: int) -> None:
        off = self._my_slot()
        if off is not None:
            lib.shmipc_fetch_add64_acq_rel(self._jbase, off + 8, n)

    def _untake(self) -> None:
        off = self._my_slot()
        if off is None:
            return
        base = self._jbase
        while True:  # only this process writes its slot's count, but stay exact anyway
            taken = _signed(lib.shmipc_load64_acquire(base, off + 8))
            if taken <= 0:
                return
            if lib.shmipc_cas64_acq_rel(base, off + 8, taken, taken - 1) == taken:
                return

    # ---- the queue with counting ---------------------------------------------------------

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj``; it counts as an unfinished task until someone calls ``task_done``."""
        self._add(1)
        try:
            self._port.send(obj, block, timeout)
        except BaseException:
            self._finish(1, strict=False)
            raise

    def put_bytes(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        self._add(1)
        try:
            self._port.send_bytes(obj, block, timeout)
        except BaseException:
            self._finish(1, strict=False)
            raise

    def put_many(
        self, objs: Iterable[Any], block: bool = True, timeout: float | None = None
    ) -> None:
        """Put each object in turn (each counted as it is stored), within one ``timeout``."""
        deadline = deadline_ns(timeout) if block else 0
        for obj in objs:
            self._add(1)
            try:
                self._fput_deadline(obj, deadline)
            except BaseException:
                self._finish(1, strict=False)
                raise

    def _fput_deadline(self, obj: Any, deadline: int) -> None:
        if deadline < 0:
            self._port.send(obj, True, None)
        elif deadline == 0:
            self._port.send(obj, False, None)
        else:
            self._port.send(obj, True, max(0.0, (deadline - time.monotonic_ns()) / 1e9))

    def commit(self) -> None:
        self._add(1)
        try:
            super().commit()
        except BaseException:
            self._finish(1, strict=False)
            raise

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        obj = self._port.recv(block, timeout)
        self._took(1)
        return obj

    def get_bytes(self, block: bool = True, timeout: float | None = None) -> bytes:
        data = self._port.recv_bytes(block, timeout)
        self._took(1)
        return data

    def get_many(
        self, max_items: int, timeout: float | None = None, *, block: bool = True
    ) -> list[Any]:
        items = super().get_many(max_items, timeout, block=block)
        self._took(len(items))
        return items

    def release(self) -> None:
        super().release()
        self._took(1)

    def task_done(self) -> None:
        """Mark one task taken off the queue as done; ``ValueError`` if none is unfinished."""
        # The slot first: a death between the two then leaves the task unfinished and not
        # counted (as a death between get and the slot's increment), never counted as
        # abandoned although it was done.
        self._untake()
        self._finish(1, strict=True)

    def join(self, timeout: float | None = None) -> bool:
        """Block until every task put was marked done; True then. With ``timeout`` (an
        extension: multiprocessing's ``join`` has none), False if it passed first."""
        deadline = deadline_ns(timeout)
        base, seq = self._jbase, self._joff + _SEQ
        while True:
            seen = lib.shmipc_load32_acquire(base, seq)  # I2: seq before the count
            if self.unfinished <= 0:
                return True
            if not _wait_until(base, seq, self._joff + _JOINERS, seen, deadline):
                return self.unfinished <= 0

    @property
    def unfinished(self) -> int:
        """Tasks put and not yet marked done (waiting in the queue or being worked on)."""
        return _signed(lib.shmipc_load64_acquire(self._jbase, self._joff + _UNFINISHED))

    def abandoned(self) -> int:
        """Tasks taken by consumers that are known to have died before ``task_done``."""
        total = 0
        for i in range(SLOTS):
            off = self._joff + _SLOTS + i * _SLOT
            owner = lib.shmipc_load64_acquire(self._jbase, off)
            if owner and _owner_dead(owner):
                total += max(0, _signed(lib.shmipc_load64_acquire(self._jbase, off + 8)))
        return total

    # ---- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        super().close()
        region = self._jregion
        if region is not None:
            self._jregion = None
            region.close()

    def __reduce__(self) -> tuple[Any, ...]:
        _, args = super().__reduce__()
        return (_attach_joinable, args)

    def __repr__(self) -> str:
        if self._ring is None:
            return "<shmipc.JoinableQueue closed>"
        return (
            f"<shmipc.JoinableQueue {self.name} qsize={self.qsize()} unfinished={self.unfinished}>"
        )


def _owner_dead(owner: int) -> bool:
    """True if the process a slot names (pid | start time low 32 bits << 32) is known dead."""
    state = _proc._judge(owner & 0xFFFFFFFF, owner >> 32, _proc._START_MASK, True)
    return state is _proc.Liveness.DEAD


def _attach_joinable(
    name: str,
    codec: str | Codec | None,
    spill: bool,
    trusted_uids: tuple[int, ...] = (),
    max_message: int | None = None,
    max_spilled: int | None = None,
    pool: str | None = None,
    zero_copy_threshold: int | None = None,
) -> JoinableQueue:
    # The same arguments as queue._attach_queue, in the same order (Queue.__reduce__'s).
    kwargs: dict[str, Any] = {"pool": pool}
    if zero_copy_threshold is not None:
        kwargs["zero_copy_threshold"] = zero_copy_threshold
    if max_message is not None:
        kwargs["max_message"] = max_message
    if max_spilled is not None:
        kwargs["max_spilled"] = max_spilled
    queue = JoinableQueue.attach(
        name, codec=codec, spill=spill, trusted_uids=trusted_uids, **kwargs
    )
    assert isinstance(queue, JoinableQueue)
    return queue
