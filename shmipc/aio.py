"""asyncio adapters: await a Queue, an Event, a Lock or a Topic subscriber without blocking the
event loop, without a thread per waiting call and without polling.

Design (docs/asyncio.md): every async call first tries the non-blocking operation on the loop
thread (``get(block=False)``...). If that fails it reads the shared 32-bit words whose change
could make it succeed (the ones the blocking call sleeps on) and waits until any of them
differs, in one of two ways (``backend()`` says which):

* ``"uring"`` (the default where io_uring allows IORING_OP_FUTEX_WAIT, Linux 6.7+): the loop's
  own thread waits. Each loop has one io_uring (csrc/aio_uring.c, invariants U1-U6); each
  watched word gets one FUTEX_WAIT request, registered in the word's sleeper count first so
  the wakers' usual futex wake completes it; the ring's fd is one of the loop's readers, and
  its callback resolves the futures of the words whose requests completed.
* ``"thread"`` (io_uring missing or refused): one helper thread per loop (started on first
  need, gone after an idle half second or within a second of its loop closing) serves a
  watch set kept in C (csrc/aio.c) without the GIL: it sleeps on all the words at once with
  ``futex_waitv``, registered like a blocking sleeper, and writes an eventfd the loop reads.

The coroutine then tries again. ``SHMIPC_AIO_BACKEND=thread`` (or ``_BACKEND``, for tests)
chooses the helper thread where io_uring works.

Invariants:
  - The operation itself is always the synchronous non-blocking call, run on the loop thread;
    a coroutine is only ever suspended *between* attempts, so cancelling it (or its timeout)
    cannot take a message and drop it, nor half-send one.
  - No lost wake-up: a word's value is read *before* the attempt it guards; if it changes
    after that read, the helper's re-check (after registering) or futex_waitv sees it.
  - A watch pins the mapping its word lives in (``WordSpec.pin``: the object that holds the
    mapping's export) until the helper can no longer touch the word: a fired entry is never
    touched again; a removed one is kept in ``_Helper.retired`` until the helper's epoch
    (bumped after each of its waits) is past the removal (docs/internals/lifetime.md;
    tests/unit/aio/test_epoch_model.py).
  - Without futex_waitv (Linux < 5.16) the helper looks at its words every POLL_PERIOD
    seconds instead (documented; not a busy loop).
  - uring: a waker never skips a wake an armed request needs (U2 in csrc/aio_uring.c): the
    loop thread's registration in the word's sleeper count is taken back only once the
    request's completion was reaped, or when nobody waits on the word any more (then the
    request is cancelled); a completion of any kind wakes the word's waiters (U3). A forked
    child frees its parent's rings without touching them (U5); a ring goes when its loop
    shuts down (shutdown_asyncgens, as asyncio.run does), after IDLE_EXIT with nothing
    armed, or, for a loop closed without that, when the next ring is made.
  - A wait whose coroutine is garbage collected (GeneratorExit) never takes _lock: the
    collector may run on a thread that holds it; its cleanup waits in _orphans for the next
    wait, which runs it under the lock.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from ._native import ffi, lib

__all__ = [
    "POLL_PERIOD",
    "WordSpec",
    "backend",
    "event_wait_async",
    "helper_threads",
    "lock_acquire_async",
    "queue_get_async",
    "queue_get_bytes_async",
    "queue_put_async",
    "queue_put_bytes_async",
    "subscriber_iter",
    "subscriber_receive_async",
    "wait_for_change",
]

_T = TypeVar("_T")

#: How often the helper looks at its words where futex_waitv is missing (or too many words).
POLL_PERIOD = 0.002
#: A helper with nothing to watch for this long ends (a new one starts on demand).
IDLE_EXIT = 0.5
#: How often a waiter stuck behind a side lock re-checks that the holder lives (as the
#: blocking calls do at the end of every wait slice).
LOCK_SLICE = 0.1
#: How often a helper with waiters looks whether its loop was closed under them.
CLOSED_CHECK = 1.0

_MAX_WORDS = lib.SHMIPC_AIO_MAX_WORDS
_NO_REG = lib.SHMIPC_AIO_NO_REG
_FORCE_POLL = False  # tests set this to exercise the fallback on kernels that have waitv
#: Which backend new waits use: None chooses ("uring" where usable, else "thread"); tests and
#: SHMIPC_AIO_BACKEND set "uring" or "thread" ("uring" still falls back where refused).
_BACKEND: str | None = os.environ.get("SHMIPC_AIO_BACKEND") or None
#: io_uring sizes per loop: the SQ only holds requests not yet handed to the kernel (any
#: number may be pending); the CQ overflows into the kernel's list, which reap drains.
_URING_SQ = 64
_URING_CQ = 1024
_REAP = 256
_uring_state: int | None = None  # per process: 1 usable, else -errno of the probe


class WordSpec(NamedTuple):
    """A shared 32-bit word a coroutine may wait on, and who must be told it sleeps there.

    ``base`` is a cffi ``char *`` and ``off`` the word's offset from it; ``reg_off`` the
    offset of the sleeper count (``nslots`` 0), sleeper registry (``nslots`` identity slots)
    or sleep flag (``nslots`` -1: set on sleeping, cleared by the waker, as a Topic's)
    the word's wakers read before they issue a futex wake (None: nobody needs telling);
    ``pin`` the object that keeps the mapping alive while the helper may touch it.
    """

    base: Any
    off: int
    reg_off: int | None
    nslots: int
    pin: Any

    def load(self) -> int:
        """The word's current value (acquire)."""
        return int(lib.shmipc_load32_acquire(self.base, self.off))


# ---- the helper -----------------------------------------------------------------------------
#
# The watch set lives in C (csrc/aio.c, shmipc_aio_set): the helper thread serves it without
# the GIL and signals the loop through an eventfd the loop reads (add_reader); the loop's
# reader callback collects the fired entries and resolves their futures there and then. The
# Python side keeps, under _lock, which futures wait on which entry.

_lock = threading.Lock()  # guards every helper's Python-side tables and the helper table
_helpers: dict[Any, _Helper] = {}
_urings: dict[Any, _Uring] = {}  # the io_uring backend's per-loop state (also under _lock)
# Cleanups of waits whose coroutine was garbage collected (closed with GeneratorExit): the
# collector may run it on a thread that holds _lock (any allocation can collect), so it only
# queues its cleanup here (a deque append takes no lock); _run_orphans runs them under _lock.
_orphans: collections.deque[Callable[[], None]] = collections.deque()


def _run_orphans() -> None:
    """Under _lock: the queued cleanups of garbage-collected waits."""
    while _orphans:
        try:
            _orphans.popleft()()
        except Exception:  # pragma: no cover - a cleanup of a loop long gone
            pass


def _after_fork_in_child() -> None:
    # The child has none of the parent's helper threads (and the lock may have been held by
    # one at the fork): start afresh. Its loops, if it inherited any, are not usable anyway.
    global _lock
    _lock = threading.Lock()
    _helpers.clear()
    _orphans.clear()
    # The parent's rings are the parent's (U5): drop our copies (fd, mappings) and never touch
    # their loops (an inherited epoll instance is shared with the parent) or registrations.
    for u in _urings.values():
        u.forget()
    _urings.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Watch:
    __slots__ = ("armed", "futs", "id", "key", "me", "reg", "slot", "spec")

    def __init__(self, spec: WordSpec, key: tuple[int, int], id_: int) -> None:
        self.spec = spec  # holds the pin: the mapping stays while the entry may be served
        self.key = key
        self.id = id_
        self.futs: set[asyncio.Future[None]] = set()
        # uring only: registered (slot, as identity me) with a request pending
        self.armed = False
        self.reg = _NO_REG
        self.slot = -2
        self.me = 0


def _addr(spec: WordSpec) -> int:
    return int(ffi.cast("uintptr_t", spec.base)) + spec.off


class _Helper:
    """One thread per event loop, asleep in futex_waitv on every watched word (in C)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.watches: dict[tuple[int, int], _Watch] = {}
        self.by_id: dict[int, _Watch] = {}
        self.stopping = False
        self.freed = False
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.set = lib.shmipc_aio_set_new(self.efd)
        if self.set == ffi.NULL:
            os.close(self.efd)
            raise MemoryError("shmipc.aio: no memory for a watch set")
        self.ids = ffi.new("uint64_t[]", _MAX_WORDS)
        # (epoch at removal, pin) of removed entries the helper may still be asleep on.
        self.retired: list[tuple[int, Any]] = []
        loop.add_reader(self.efd, self._on_ready)  # called on the loop's thread
        self.thread = threading.Thread(target=self._run, name="shmipc-aio", daemon=True)

    # -- helper thread --

    def _run(self) -> None:
        poll_ns = int(POLL_PERIOD * 1e9) if _FORCE_POLL or not lib.shmipc_aio_has_waitv() else 0
        while True:
            rc = lib.shmipc_aio_serve(
                self.set, int(CLOSED_CHECK * 1e9), int(IDLE_EXIT * 1e9), poll_ns
            )
            if rc == 2 or self.loop.is_closed():
                break
            if rc == 1:
                with _lock:
                    if not self.watches:
                        break
        with _lock:
            self.stopping = True
            if _helpers.get(self.loop) is self:
                del _helpers[self.loop]
            # Anything added after the set was last looked at goes back to its waiter, which
            # tries again (and starts a new helper).
            orphans = [f for w in self.watches.values() for f in w.futs]
            self.watches.clear()
            self.by_id.clear()
        try:
            self.loop.call_soon_threadsafe(self._detach, orphans)
        except RuntimeError:  # the loop is closed (so is its selector): nobody else is left
            self._free()

    # -- loop thread --

    def _free(self) -> None:
        if not self.freed:
            self.freed = True
            os.close(self.efd)
            lib.shmipc_aio_set_free(self.set)
            self.retired.clear()  # the helper has left its serve loop for good

    def _detach(self, orphans: list[asyncio.Future[None]]) -> None:
        try:
            self.loop.remove_reader(self.efd)
        finally:
            self._free()
        _wake(orphans)

    def _trim(self) -> None:
        """Let go of the pins of removed entries the helper can no longer touch."""
        if self.retired and not self.freed:
            now = int(lib.shmipc_aio_epoch(self.set))
            self.retired = [r for r in self.retired if r[0] >= now]

    def _on_ready(self) -> None:
        if self.freed:
            return
        futs: list[asyncio.Future[None]] = []
        with _lock:
            n = lib.shmipc_aio_take(self.set, self.ids, _MAX_WORDS)
            for i in range(n):
                w = self.by_id.pop(int(self.ids[i]), None)
                if w is not None:
                    if self.watches.get(w.key) is w:
                        del self.watches[w.key]
                    futs.extend(w.futs)
            self._trim()
        _wake(futs)  # on the loop thread already: the tasks run in this very iteration's next

    def _deliver(self, futs: list[asyncio.Future[None]]) -> bool:
        try:
            self.loop.call_soon_threadsafe(_wake, futs)
        except RuntimeError:  # the loop is closed: nobody is left to wake
            return False
        return True


def _wake(futs: list[asyncio.Future[None]]) -> None:
    for f in futs:
        if not f.done():
            f.set_result(None)


# ---- the io_uring backend ---------------------------------------------------------------------
#
# The loop's own thread waits: one io_uring per loop (csrc/aio_uring.c), one FUTEX_WAIT request
# per watched (word, value), the ring's fd among the loop's readers. Everything runs on the
# loop's thread except _wake_pin (a handle closed elsewhere), hence the shared _lock.


def _uring_usable() -> bool:
    """Whether io_uring with IORING_OP_FUTEX_WAIT works in this process (probed once)."""
    global _uring_state
    if _uring_state is None:
        _uring_state = int(lib.shmipc_aiou_probe())
    return _uring_state == 1


def backend() -> str:
    """The backend new waits use: ``"uring"`` (the loop's thread waits through io_uring),
    ``"thread"`` (a helper thread per loop, futex_waitv) or ``"poll"`` (that helper, looking
    every POLL_PERIOD where futex_waitv is missing)."""
    if _BACKEND != "thread" and not _FORCE_POLL and _uring_usable():
        return "uring"
    return "poll" if _FORCE_POLL or not lib.shmipc_aio_has_waitv() else "thread"


class _Uring:
    """One io_uring per event loop; its futex waits are the loop thread's own."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        ring = lib.shmipc_aiou_new(_URING_SQ, _URING_CQ)
        if ring == ffi.NULL:
            raise OSError(ffi.errno, os.strerror(ffi.errno))
        self.loop = loop
        self.ring = ring
        self.fd = int(lib.shmipc_aiou_fd(ring))
        self.watches: dict[tuple[int, int], _Watch] = {}  # armed, by (address, value)
        self.by_id: dict[int, _Watch] = {}  # every request the kernel may still hold
        self.next_id = 1  # 0 tags the cancel requests' own completions
        self.closed = False
        self.broken = False  # a completion no retry can cure: new waits go to a helper
        self.forwarded = 0  # wakes passed on (U6; for tests)
        self.activity = 0  # bumped at every arm and every wake (the idle clock's evidence)
        self.idle_handle: asyncio.TimerHandle | None = None
        self.sentinel: Any = None
        self.uds = ffi.new("uint64_t[]", _REAP)
        self.res = ffi.new("int32_t[]", _REAP)
        self.slot = ffi.new("int32_t *")
        try:
            loop.add_reader(self.fd, self._on_ready)
        except BaseException:
            lib.shmipc_aiou_free(ring)
            raise

    async def start_sentinel(self) -> None:
        """Tie the ring to the loop's shutdown: an async generator started on the loop is
        closed by loop.shutdown_asyncgens() (asyncio.run, Runner.close, uvloop alike)."""
        agen = _sentinel(self)
        self.sentinel = agen
        await agen.__anext__()

    def register(
        self, fut: asyncio.Future[None], words: Sequence[tuple[WordSpec, int]]
    ) -> tuple[list[_Watch], bool]:
        """Arm a request per new (word, value) and add ``fut`` to their waiters; the bool
        says some word is not watched by the kernel yet (the caller looks again soon)."""
        mine: list[_Watch] = []
        soon = False
        for spec, expected in words:
            key = (_addr(spec), expected)
            w = self.watches.get(key)
            if w is None:
                id_ = self.next_id
                self.next_id += 1
                me = int(lib.shmipc_lock_identity())  # this (the loop's) thread
                reg = _NO_REG if spec.reg_off is None else spec.reg_off
                rc = lib.shmipc_aiou_arm(
                    self.ring, spec.base, spec.off, expected, reg, spec.nslots, id_, me,
                    self.slot,
                )
                if rc == 1:  # the word moved already: look again at once
                    fut.set_result(None)
                    break
                if rc < 0:  # no room or a foreign ring: nothing armed, look again soon
                    soon = True
                    continue
                w = _Watch(spec, key, id_)
                w.armed, w.reg, w.slot, w.me = True, reg, int(self.slot[0]), me
                self.watches[key] = self.by_id[id_] = w
                soon = soon or rc == 2  # queued for the next flush only
            w.futs.add(fut)
            mine.append(w)
        self._busy()
        return mine, soon

    def _disarm(self, w: _Watch) -> None:
        """Nobody waits on ``w`` any more: take the registration back (U2), then cancel."""
        w.armed = False
        if self.watches.get(w.key) is w:
            del self.watches[w.key]
        lib.shmipc_aiou_unreg(w.spec.base, w.reg, w.slot, w.me)
        if not self.closed:
            lib.shmipc_aiou_cancel(self.ring, w.id)  # by_id keeps w (its pin) till it completes

    def unregister(self, fut: asyncio.Future[None], mine: list[_Watch]) -> None:
        for w in mine:
            w.futs.discard(fut)
            if not w.futs and w.armed:
                self._disarm(w)
        self._busy()

    def _on_ready(self) -> None:
        futs: list[asyncio.Future[None]] = []
        by_id, watches, uds, res = self.by_id, self.watches, self.uds, self.res
        with _lock:
            if self.closed:
                return
            while True:
                n = lib.shmipc_aiou_reap(self.ring, uds, res, _REAP)
                for i in range(n):
                    w = by_id.pop(uds[i], None)
                    if w is None:
                        continue  # a cancel's own completion
                    if not w.armed:  # a request nobody wanted any more, now over
                        if res[i] == 0:
                            # U6: it took a wake (a Lock's release wakes one sleeper): pass
                            # it on, or a blocking waiter could sleep through its slice.
                            lib.shmipc_futex_wake(w.spec.base, w.spec.off, 1)
                            self.forwarded += 1
                        continue
                    # U3: whatever the result, the waiters look again; the registration
                    # goes first (U2: the request is over).
                    w.armed = False
                    if watches.get(w.key) is w:
                        del watches[w.key]
                    lib.shmipc_aiou_unreg(w.spec.base, w.reg, w.slot, w.me)
                    futs.extend(w.futs)
                    if res[i] not in _URING_WAKE_RESULTS:
                        self.broken = True  # e.g. EINVAL: retrying would spin
                if n < _REAP:
                    break
            if not by_id:
                self._busy()
        _wake(futs)  # on the loop thread: the tasks run in the loop's next iteration

    def _busy(self) -> None:
        """Count activity and keep the idle clock running: the ring goes once a whole
        IDLE_EXIT passed with no request left and nothing armed meanwhile."""
        self.activity += 1
        if self.idle_handle is None and not self.closed:
            self.idle_handle = self.loop.call_later(IDLE_EXIT, self._idle, self.activity)

    def _idle(self, seen: int) -> None:
        self.idle_handle = None
        if self.closed:
            return
        if self.by_id or self.activity != seen:
            self.idle_handle = self.loop.call_later(IDLE_EXIT, self._idle, self.activity)
        else:
            self.close()

    def close(self) -> None:
        """Tear the ring down: take every registration back (U2), close the fd (which
        cancels what is queued; U4: queued waits touch no user memory) and wake whoever
        still waits, unless the loop is closed."""
        with _lock:
            if self.closed:
                return
            self.closed = True
            if _urings.get(self.loop) is self:
                del _urings[self.loop]
            orphans = [f for w in self.watches.values() for f in w.futs]
            for w in list(self.watches.values()):
                self._disarm(w)
            pinned = list(self.by_id.values())  # let go only once the ring is gone
            self.by_id.clear()
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        if not self.loop.is_closed():
            try:
                self.loop.remove_reader(self.fd)
            except (RuntimeError, ValueError, OSError):  # pragma: no cover - closing loop
                pass
        lib.shmipc_aiou_free(self.ring)
        del pinned
        agen, self.sentinel = self.sentinel, None
        if agen is not None:
            try:
                agen.aclose().send(None)  # runs its (synchronous) finally: close() again
            except (StopIteration, RuntimeError):
                pass
        if orphans and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(_wake, orphans)
            except RuntimeError:  # pragma: no cover - closed meanwhile
                pass

    def forget(self) -> None:
        """In a forked child: drop this copy of the parent's ring (U5), touching nothing else."""
        if not self.closed:
            self.closed = True
            lib.shmipc_aiou_free(self.ring)
        self.watches.clear()
        self.by_id.clear()
        self.sentinel = None


_URING_WAKE_RESULTS = frozenset((0, -errno.EAGAIN, -errno.ECANCELED, -errno.EINTR))


async def _sentinel(u: _Uring) -> AsyncIterator[None]:
    try:
        yield
    finally:
        u.sentinel = None
        u.close()


def _uring_for(loop: asyncio.AbstractEventLoop) -> tuple[_Uring | None, bool]:
    """The loop's ring (and whether it is new), or None: use the helper thread."""
    u = _urings.get(loop)
    if u is not None and not u.closed:
        return (None, False) if u.broken else (u, False)
    if backend() != "uring":
        return None, False
    with _lock:
        stale = [v for lp, v in _urings.items() if lp.is_closed()]
    for v in stale:  # loops closed without shutdown_asyncgens: their rings go now
        v.close()
    try:
        u = _Uring(loop)
    except OSError:  # e.g. EMFILE, ENOMEM: this loop's waits use a helper thread
        return None, False
    with _lock:
        _urings[loop] = u
    return u, True


def rings() -> int:
    """How many io_uring instances this process holds for its loops (tests, stats)."""
    with _lock:
        return sum(1 for u in _urings.values() if not u.closed)


def helper_threads() -> list[threading.Thread]:
    """The helper threads alive now (one per event loop with waiters; for tests, stats)."""
    with _lock:
        live = [h.thread for h in _helpers.values() if h.thread.is_alive()]
    return live + [
        t for t in threading.enumerate() if t.name == "shmipc-aio" and t not in live
    ]


def _register(
    loop: asyncio.AbstractEventLoop,
    fut: asyncio.Future[None],
    words: Sequence[tuple[WordSpec, int]],
) -> tuple[_Helper, list[_Watch], bool]:
    """Add ``fut`` to the watches of ``words``; the bool says that some word found no room
    in the set (more than SHMIPC_AIO_MAX_WORDS): the caller then looks every POLL_PERIOD."""
    start = False
    overflow = False
    with _lock:
        _run_orphans()
        h = _helpers.get(loop)
        if h is None or h.stopping:
            h = _helpers[loop] = _Helper(loop)
            start = True
        mine = []
        for spec, expected in words:
            key = (_addr(spec), expected)
            w = h.watches.get(key)
            if w is None:
                reg = _NO_REG if spec.reg_off is None else spec.reg_off
                id_ = int(lib.shmipc_aio_add(h.set, spec.base, spec.off, expected, reg,
                                             spec.nslots))  # kicks the helper
                if id_ < 0:
                    overflow = True
                    continue
                w = h.watches[key] = h.by_id[id_] = _Watch(spec, key, id_)
            w.futs.add(fut)
            mine.append(w)
    if start:
        h.thread.start()
    return h, mine, overflow


def _unregister(h: _Helper, fut: asyncio.Future[None], mine: list[_Watch]) -> None:
    with _lock:
        _unregister_locked(h, fut, mine)


def _unregister_locked(h: _Helper, fut: asyncio.Future[None], mine: list[_Watch]) -> None:
    for w in mine:
        w.futs.discard(fut)
        if not w.futs and h.watches.get(w.key) is w:
            del h.watches[w.key]
            h.by_id.pop(w.id, None)
            if not h.stopping:
                # The helper may still be asleep on the word: its pin stays until the
                # helper's epoch moves past the removal (_trim).
                epoch = int(lib.shmipc_aio_remove(h.set, w.id))
                h.retired.append((epoch, w.spec.pin))
    h._trim()


def _wake_pin(pin: Any) -> None:
    """Wake every coroutine waiting on a word pinned by ``pin`` (its handle was closed)."""
    with _lock:
        by_loop = [
            (h, [f for w in h.watches.values() if w.spec.pin is pin for f in w.futs])
            for h in _helpers.values()
        ]
        by_ring = [
            (u.loop, [f for w in u.watches.values() if w.spec.pin is pin for f in w.futs])
            for u in _urings.values()
        ]
    for h, futs in by_loop:
        if futs:
            h._deliver(futs)
    for loop, futs in by_ring:
        if futs:
            try:
                loop.call_soon_threadsafe(_wake, futs)
            except RuntimeError:  # the loop is closed: nobody is left to wake
                pass


def _uring_begin(
    u: _Uring,
    loop: asyncio.AbstractEventLoop,
    fut: asyncio.Future[None],
    words: Sequence[tuple[WordSpec, int]],
    timeout: float | None,
) -> tuple[list[_Watch], asyncio.TimerHandle | None]:
    """Arm ``words`` on the loop's ring for ``fut``; with its timeout's handle."""
    with _lock:
        _run_orphans()
        mine, soon = u.register(fut, words)
    if soon:
        timeout = POLL_PERIOD if timeout is None else min(timeout, POLL_PERIOD)
    return mine, None if timeout is None else loop.call_later(timeout, _wake, [fut])


def _uring_orphan(u: _Uring, fut: asyncio.Future[None], mine: list[_Watch]) -> None:
    if not u.closed:
        u.unregister(fut, mine)


def _uring_end(
    u: _Uring, fut: asyncio.Future[None], mine: list[_Watch], handle: asyncio.TimerHandle | None
) -> None:
    if handle is not None:
        handle.cancel()
    for w in mine:
        if w.armed:  # else: every word fired, nothing to take back
            with _lock:
                if not u.closed:
                    u.unregister(fut, mine)
            return


async def wait_for_change(
    words: Sequence[tuple[WordSpec, int]], timeout: float | None = None
) -> None:
    """Return once any word differs from the value paired with it, or after ``timeout``
    seconds (no exception: the caller re-checks). Costs no thread of its own."""
    if timeout is not None and timeout <= 0:
        return
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    end: Callable[[], None]  # after the wait, on the loop's thread
    orphan: Callable[[], None]  # instead, if the waiting coroutine is garbage collected
    u, new = _uring_for(loop)
    if u is not None:
        if new:
            await u.start_sentinel()
        mine, handle = _uring_begin(u, loop, fut, words, timeout)
        end = functools.partial(_uring_end, u, fut, mine, handle)
        orphan = functools.partial(_uring_orphan, u, fut, mine)
    else:
        h, mine_h, overflow = _register(loop, fut, words)
        if overflow:
            timeout = POLL_PERIOD if timeout is None else min(timeout, POLL_PERIOD)
        timer = None if timeout is None else loop.call_later(timeout, _wake, [fut])

        def end() -> None:
            if timer is not None:
                timer.cancel()
            _unregister(h, fut, mine_h)

        orphan = functools.partial(_unregister_locked, h, fut, mine_h)
    try:
        await fut
    except GeneratorExit:  # garbage collected: see _orphans
        _orphans.append(orphan)
        raise
    except BaseException:
        end()
        raise
    end()


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return time.monotonic() + timeout


# ---- Queue ------------------------------------------------------------------------------------

_P_TAIL = lib.SHMIPC_RING_OFF_P_TAIL
_C_HEAD = lib.SHMIPC_RING_OFF_C_HEAD
_DATA_REG = lib.SHMIPC_RING_OFF_DATA_WAITERS
_SPACE_SEQ = lib.SHMIPC_RING_OFF_SPACE_SEQ
_SPACE_REG = lib.SHMIPC_RING_OFF_SPACE_WAITERS
_SLOTS = lib.SHMIPC_RING_SLEEPER_SLOTS
_C_LOCK = lib.SHMIPC_RING_OFF_C_LOCK
_C_LOCK_REG = lib.SHMIPC_RING_OFF_C_LOCK_SLEEPERS
_C_LOCK_SLOTS = lib.SHMIPC_RING_C_LOCK_SLOTS
_P_LOCK = lib.SHMIPC_RING_OFF_P_LOCK
_P_LOCK_REG = lib.SHMIPC_RING_OFF_P_LOCK_SLEEPERS
_P_LOCK_SLOTS = lib.SHMIPC_RING_P_LOCK_SLOTS


async def _ring_op(
    q: Any,
    attempt: Callable[[], _T],
    miss: type[Exception],
    word: tuple[int, int],
    side_lock: tuple[int, int, int],
    timeout: float | None,
) -> _T:
    """Try ``attempt`` (non-blocking) until it succeeds, sleeping on ``word`` (the data or
    room word with its registry) and, while another thread holds the side lock, on the lock
    word too, between tries."""
    deadline = _deadline(timeout)
    contended = 0
    load = lib.shmipc_load32_acquire
    while True:
        ring = q._live_ring()  # Closed once the handle is closed
        p = ring._p
        seen = load(p, word[0])  # before the attempt: a change after this read wakes us
        try:
            return attempt()
        except miss:
            pass
        left = _remaining(deadline)
        if left is not None and left <= 0:
            raise miss()
        data = WordSpec(p, word[0], word[1], _SLOTS, ring)
        lock = WordSpec(p, side_lock[0], side_lock[1], side_lock[2], ring)
        held = lock.load()
        words = [(data, seen)]
        slice_: float | None = None
        if held:
            # The try may have failed on the side lock alone: wake when it changes hands too,
            # and look at the holder's liveness as often as the blocking calls do.
            words.append((lock, held))
            slice_ = LOCK_SLICE
            # (the first time round, a holder mid-call is the likely reason: just wait)
            if contended > 0 and ring._take_over_dead_holders():
                continue
            contended += 1
        elif data.load() != seen:
            await asyncio.sleep(0)  # the word moved during the try: look again at once
            continue
        else:
            contended = 0
        if left is not None:
            slice_ = left if slice_ is None else min(slice_, left)
        await wait_for_change(words, slice_)


async def queue_get_async(q: Any, timeout: float | None = None) -> Any:
    """``await q.get_async(timeout)``: the next object; queue.Empty after ``timeout``."""
    return await _ring_op(
        q, lambda: q.get(False), queue.Empty, (_P_TAIL, _DATA_REG),
        (_C_LOCK, _C_LOCK_REG, _C_LOCK_SLOTS), timeout,
    )


async def queue_get_bytes_async(q: Any, timeout: float | None = None) -> bytes:
    """``await q.get_bytes_async(timeout)``: the next raw payload."""
    return await _ring_op(
        q, lambda: q.get_bytes(False), queue.Empty, (_P_TAIL, _DATA_REG),
        (_C_LOCK, _C_LOCK_REG, _C_LOCK_SLOTS), timeout,
    )


async def queue_put_async(q: Any, obj: Any, timeout: float | None = None) -> None:
    """``await q.put_async(obj, timeout)``; queue.Full if no room came within ``timeout``."""
    await _ring_op(
        q, lambda: q.put(obj, False), queue.Full, (_SPACE_SEQ, _SPACE_REG),
        (_P_LOCK, _P_LOCK_REG, _P_LOCK_SLOTS), timeout,
    )


async def queue_put_bytes_async(q: Any, data: Any, timeout: float | None = None) -> None:
    """``await q.put_bytes_async(data, timeout)``."""
    await _ring_op(
        q, lambda: q.put_bytes(data, False), queue.Full, (_SPACE_SEQ, _SPACE_REG),
        (_P_LOCK, _P_LOCK_REG, _P_LOCK_SLOTS), timeout,
    )


# ---- sync primitives ------------------------------------------------------------------------


async def event_wait_async(ev: Any, timeout: float | None = None) -> bool:
    """``await event.wait_async(timeout)``: True once set, False if ``timeout`` passed."""
    deadline = _deadline(timeout)
    while True:
        base, off = ev._base, ev._off  # Closed on a closed handle
        if ev.is_set():
            return True
        left = _remaining(deadline)
        if left is not None and left <= 0:
            return False
        flag = WordSpec(base, off + ev._FLAG, off + ev._WAITERS, 0, base)
        # The flag was 0 when is_set looked: set() stores 1, then wakes counted sleepers.
        await wait_for_change([(flag, 0)], left)


async def lock_acquire_async(lk: Any, timeout: float | None = None) -> bool:
    """``await lock.acquire_async(timeout)``: True once held (by this loop's thread), False
    after ``timeout``. Coroutines of one loop share its thread, so, as with asyncio.Lock, the
    lock is not reentrant and any coroutine on that thread may release it."""
    from .sync import take_over_if_dead

    deadline = _deadline(timeout)
    while True:
        base, off = lk._base, lk._off
        seen = int(lib.shmipc_load32_acquire(base, off))
        rc = lib.shmipc_lock_try(base, off)
        if rc == lib.SHMIPC_OK:
            lk.recovered = False
            return True
        # TIMEDOUT: held by another thread; DEADLOCK: held by this thread (another coroutine).
        left = _remaining(deadline)
        if seen and left is not None and left <= 0:
            return False
        if seen == 0:
            await asyncio.sleep(0)  # released between the load and the try: look again
            continue
        word = WordSpec(base, off, off + lib.SHMIPC_LOCK_OFF_WAITERS, 0, base)
        before = time.monotonic()
        slice_ = LOCK_SLICE if left is None else min(LOCK_SLICE, left)
        await wait_for_change([(word, seen)], slice_)
        if time.monotonic() - before >= slice_ * 0.9 and take_over_if_dead(base, off):
            # The holder died holding it (the blocking acquire's check at a slice end).
            lk.recovered = True
            lib.shmipc_fetch_add32_acq_rel(base, off + lk._RECOVERIES, 1)
            return True


# ---- Topic subscribers (T1 contract) --------------------------------------------------------
#
# What the Subscriber must provide: ``receive(timeout=0)`` / ``receive_bytes(timeout=0)``
# raising queue.Empty when nothing is there (never waiting), and ``_aio_words()`` returning
# the WordSpecs its blocking receive sleeps on: the Topic's publish sequence word (any 32-bit
# word every publish changes, with the sleeper count or registry the publisher reads before
# it issues its futex wake), pinned by the object that holds the Topic's mapping.


async def subscriber_receive_async(
    sub: Any, timeout: float | None = None, *, raw: bool = False
) -> Any:
    """``await sub.receive_async(timeout)``: the next message; queue.Empty after ``timeout``;
    shmipc.Lagged (raised by ``receive``) passes through."""
    deadline = _deadline(timeout)
    receive = sub.receive_bytes if raw else sub.receive
    while True:
        specs: Sequence[WordSpec] = sub._aio_words()
        words = [(s, s.load()) for s in specs]  # before the attempt
        try:
            return receive(timeout=0)
        except queue.Empty:
            pass
        left = _remaining(deadline)
        if left is not None and left <= 0:
            raise queue.Empty()
        await wait_for_change(words, left)


async def subscriber_iter(sub: Any) -> AsyncIterator[Any]:
    """``async for msg in sub``: messages until the subscriber is closed."""
    from .errors import Closed

    while True:
        try:
            yield await subscriber_receive_async(sub)
        except Closed:
            return


class AsyncSubscriberMixin:
    """Methods the lead mixes into Topic's Subscriber: ``receive_async`` and ``async for``."""

    async def receive_async(self, timeout: float | None = None) -> Any:
        return await subscriber_receive_async(self, timeout)

    async def receive_bytes_async(self, timeout: float | None = None) -> bytes:
        return await subscriber_receive_async(self, timeout, raw=True)  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[Any]:
        return subscriber_iter(self)


def _closing(pin: Any) -> None:
    """Called by handles' close(): wake their waiters so they see Closed (if aio is in use)."""
    if _helpers or _urings:
        _wake_pin(pin)
