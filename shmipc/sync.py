"""Cross-process sync primitives that live in shared memory.

``AtomicCounter``, ``Event``, ``Semaphore``, ``Lock`` and ``Barrier``, each usable three ways:

* standalone, ``Event()``: in its own anonymous region, shared with children forked after it;
* by name, ``Event.create(name)`` / ``Event.attach(name)``: a named segment that spawned and
  unrelated processes attach (the handle also pickles by name);
* placed, ``Event.at(region, offset, create=True)``: inside a region the caller owns, next to
  the data it guards (``Event.SIZE`` bytes, ``ALIGN``-aligned).

Waits sleep on a futex after a short spin (never a Python polling loop) and come back to
Python at least every 100 ms, so Ctrl-C interrupts any of them. ``Lock`` is a robust
process-shared lock: when its holder dies, the next acquirer takes it over within a wait
slice, sees ``lock.recovered`` set and can repair the state the lock guards.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

from . import _proc
from ._native import lib
from .errors import Closed, LayoutMismatch
from .layout import CACHE_LINE, Kind, Layout
from .region import ATTACH_TIMEOUT, Region

__all__ = [
    "SPIN_NS",
    "AtomicCounter",
    "Barrier",
    "BarrierTimeout",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Lock",
    "RLock",
    "Semaphore",
]

#: How long a waiter spins (checking the condition, with a CPU pause) before it sleeps.
#: A cross-core futex wake costs tens of µs here, so spinning that long first decides latency.
SPIN_NS = 20_000

#: The longest one native Lock wait lasts before Python regains control (see Lock.acquire).

_U64 = (1 << 64) - 1
#: Timeouts this long (about 146 years) or longer mean "no deadline".
_FOREVER_S = float(1 << 62) / 1e9
_INT_MAX = 0x7FFFFFFF

_T = TypeVar("_T", bound="_Primitive")


def deadline_ns(timeout: float | None) -> int:
    """Absolute CLOCK_MONOTONIC deadline for ``timeout`` seconds (-1: wait forever).

    None and +inf (or anything past what an int64 deadline holds) wait forever; zero and
    negative numbers, -inf included, do not wait (one attempt); NaN is ValueError.
    """
    if timeout is None:
        return -1
    try:
        if math.isnan(timeout):
            raise ValueError("timeout must be a number, not NaN")
    except OverflowError:  # an int past a float's range: as good as an infinity
        return -1 if timeout > 0 else time.monotonic_ns()
    if timeout >= _FOREVER_S:  # inf, or past what an int64 deadline holds: no deadline
        return -1
    if timeout <= 0:  # -inf too: int(-inf * 1e9) would be OverflowError
        return time.monotonic_ns()
    return time.monotonic_ns() + int(timeout * 1e9)


class _Primitive:
    """Shared plumbing: where the primitive lives, and the three ways to get one."""

    KIND: ClassVar[Kind]
    LAYOUT: ClassVar[Layout]
    SIZE: ClassVar[int]
    ALIGN: ClassVar[int] = CACHE_LINE

    _region: Region
    _base: Any
    _off: int
    _owns_region: bool

    def _bind(self, region: Region, offset: int, owns_region: bool) -> None:
        if offset % self.ALIGN:
            raise ValueError(f"{type(self).__name__} offset {offset} is not {self.ALIGN}-aligned")
        if offset < 0 or offset + self.SIZE > region.size:
            raise ValueError(
                f"{type(self).__name__} needs {self.SIZE} bytes at offset {offset}; the region "
                f"has {region.size}"
            )
        self._region = region
        self._base, self._off = region.pointer(offset)
        self._offset = offset
        self._owns_region = owns_region

    def _init_shared(self, **params: Any) -> None:
        """Write the primitive's initial state (memory is zeroed when a region is made)."""

    def _bind_standalone(self, **params: Any) -> None:
        """Live in an anonymous region of one's own: shared with children forked later."""
        self._bind(Region.anonymous(self.SIZE), 0, owns_region=True)
        self._init_shared(**params)

    @classmethod
    def at(cls: type[_T], region: Region, offset: int = 0, *, create: bool, **params: Any) -> _T:
        """The primitive at ``offset`` of ``region``; ``create=True`` initialises it there."""
        obj = cls.__new__(cls)
        obj._bind(region, offset, owns_region=False)
        if create:
            # Regions start zeroed, but a placed primitive may reuse bytes: a stale flag,
            # arrival count or sleeper count must not survive into the new primitive.
            region.buffer[offset : offset + cls.SIZE] = bytes(cls.SIZE)
            obj._init_shared(**params)
        elif params:
            raise TypeError(f"attaching takes no parameters, got {sorted(params)}")
        return obj

    @classmethod
    def _create_named(cls: type[_T], name: str | None, mode: int, **params: Any) -> _T:
        obj = cls.__new__(cls)

        def init(region: Region) -> None:
            obj._bind(region, 0, owns_region=True)
            obj._init_shared(**params)

        Region._create_segment(cls.SIZE, kind=cls.KIND, name=name, mode=mode, init=init)
        return obj

    @classmethod
    def attach(
        cls: type[_T],
        name: str,
        *,
        timeout: float = ATTACH_TIMEOUT,
        trusted_uids: Iterable[int] = (),
    ) -> _T:
        """Attach the primitive that ``create`` made under ``name`` (any process);
        ``timeout`` and ``trusted_uids`` as for ``Region.attach``."""
        region = Region._attach_segment(
            name, kind=cls.KIND, timeout=timeout, trusted_uids=trusted_uids
        )
        obj = cls.__new__(cls)
        try:
            if region.size < cls.SIZE:
                raise LayoutMismatch(f"segment {name!r} is too small for a {cls.__name__}")
            obj._bind(region, 0, owns_region=True)
            obj._check_attached()
        except BaseException:
            region.close()
            raise
        return obj

    def _check_attached(self) -> None:
        """Validate kind-specific shared state after attaching (override where it matters)."""

    @property
    def name(self) -> str | None:
        """The segment's name when made with ``create``, else None (or the region's name)."""
        return self._region.name

    @property
    def region(self) -> Region:
        self._base  # noqa: B018 - raises Closed on a closed handle
        return self._region

    def close(self) -> None:
        """Drop this handle; a creator's named segment is unlinked. Placed ones do nothing.

        Every later call on this handle raises :class:`~shmipc.Closed` (closing again is a
        no-op). Other handles on the same memory, in this process or others, keep working.
        """
        if "_base" not in self.__dict__:
            return
        # Every operation reads self._base. Without it, the closed class's __getattr__ raises
        # Closed; the open class has no __getattr__, so its hot paths pay nothing for the
        # check (attribute loads stay specialised). A call already under way in another
        # thread holds its own reference to the pointer, so the mapping outlives it.
        # The class first: a call racing this close in another thread then finds either the
        # pointer or Closed, never a bare AttributeError.
        self.__class__ = _closed_class(type(self))
        base = self.__dict__.pop("_base", None)
        aio = sys.modules.get("shmipc.aio")
        if aio is not None:
            aio._closing(base)  # coroutines awaiting this handle wake up and see Closed
        if self._owns_region:
            self._region.close()

    @property
    def closed(self) -> bool:
        """True once this handle was closed."""
        return "_base" not in self.__dict__

    def unlink(self) -> None:
        self._base  # noqa: B018 - raises Closed on a closed handle
        self._region.unlink()

    def __reduce__(self) -> tuple[Any, ...]:
        self._base  # noqa: B018 - raises Closed on a closed handle
        if self._region.name is None:
            raise TypeError(
                f"this {type(self).__name__} lives in anonymous memory, shared only with "
                f"children forked after it was made; use {type(self).__name__}.create(name) "
                "for one that spawned or unrelated processes can attach"
            )
        # The whole segment is ours when it was made (or attached) as this kind; otherwise
        # the primitive is placed in a Region and re-attaches through it, however often the
        # handle is passed on.
        whole_segment = self._region.kind == self.KIND
        trusted = self._region._trusted_uids  # the trust it was attached with goes along
        return (_reattach, (type(self), self._region.name, self._offset, whole_segment, trusted))

    def __repr__(self) -> str:
        # "<Event at WHERE set>", the shape of multiprocessing.synchronize's reprs.
        where = self._region.name or "anonymous"
        state = "closed" if self.closed else self._state()
        return f"<{type(self).__qualname__} at {where}@{self._offset} {state}>"

    def _state(self) -> str:
        return ""


_CLOSED_CLASSES: dict[type, type] = {}


def _closed_getattr(self: _Primitive, attr: str) -> Any:
    """A closed handle's missing attributes: its pointer (read by every operation) is Closed."""
    if attr == "_base":
        raise Closed(f"this {type(self).__name__} handle is closed")
    raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")


def _closed_class(cls: type) -> type:
    """The class a handle of ``cls`` takes when closed: ``cls`` with a ``__getattr__``."""
    if cls in _CLOSED_CLASSES.values():  # closed already (by a close racing this one)
        return cls
    closed = _CLOSED_CLASSES.get(cls)
    if closed is None:
        attrs = {"__getattr__": _closed_getattr, "__module__": cls.__module__}
        closed = type(cls.__name__, (cls,), attrs)
        closed.__qualname__ = cls.__qualname__
        _CLOSED_CLASSES[cls] = closed
    return closed


def _reattach(
    cls: type[_Primitive],
    name: str,
    offset: int,
    whole_segment: bool,
    trusted_uids: tuple[int, ...] = (),
) -> _Primitive:
    if whole_segment:
        return cls.attach(name, trusted_uids=trusted_uids)
    obj = cls.at(Region.attach(name, trusted_uids=trusted_uids), offset, create=False)
    obj._owns_region = True
    return obj


def _layout(name: str, *fields: tuple[str, int]) -> Layout:
    lay = Layout(name)
    for field, size in fields:
        lay.add(field, size)
    lay.pad_to(CACHE_LINE)
    return lay


def _wait_until(base: Any, word: int, waiters: int, blocked_value: int, deadline: int) -> bool:
    """Sleep while the 32-bit word equals ``blocked_value``. False once the deadline passed.

    Each native call spins briefly, then sleeps on the futex for at most one 100 ms slice;
    returning here between slices lets Python run signal handlers (Ctrl-C).
    """
    while True:
        rc = lib.shmipc_wait_while32(base, word, blocked_value, waiters, deadline, SPIN_NS)
        if rc == lib.SHMIPC_OK:
            return True
        if rc == lib.SHMIPC_TIMEDOUT:
            return False
        if rc == lib.SHMIPC_ERROR:
            err = lib.shmipc_errno()
            raise OSError(err, f"futex wait failed: {os.strerror(err)}")
        # SLICE, INTERRUPTED, CHANGED: the caller's condition may still hold; go round.


class AtomicCounter(_Primitive):
    """A signed 64-bit integer that processes update atomically.

    ======  ====  =======
    offset  size  field
    ======  ====  =======
    0       8     value (two's complement, acq_rel updates)
    ======  ====  =======
    """

    KIND = Kind.ATOMIC_COUNTER
    LAYOUT = _layout("atomic counter", ("value", 8))
    SIZE = LAYOUT.size

    def __init__(self, value: int = 0) -> None:
        self._bind_standalone(value=value)

    @classmethod
    def create(cls, name: str | None = None, *, value: int = 0, mode: int = 0o600) -> AtomicCounter:
        return cls._create_named(name, mode, value=value)

    def _init_shared(self, value: int = 0) -> None:
        self.store(value)

    def load(self) -> int:
        return _signed(lib.shmipc_load64_acquire(self._base, self._off))

    def store(self, value: int) -> None:
        lib.shmipc_store64_release(self._base, self._off, _unsigned(value))

    def add(self, n: int = 1) -> int:
        """Add ``n`` (may be negative) and return the new value."""
        old = lib.shmipc_fetch_add64_acq_rel(self._base, self._off, _unsigned(n))
        return _signed((old + n) & _U64)

    def exchange(self, value: int) -> int:
        """Store ``value`` and return the previous one."""
        return _signed(lib.shmipc_exchange64_acq_rel(self._base, self._off, _unsigned(value)))

    def compare_exchange(self, expected: int, desired: int) -> bool:
        """Set to ``desired`` if the value is ``expected``; True if it was."""
        exp = _unsigned(expected)
        return lib.shmipc_cas64_acq_rel(self._base, self._off, exp, _unsigned(desired)) == exp

    @property
    def value(self) -> int:
        return self.load()

    @value.setter
    def value(self, value: int) -> None:
        self.store(value)

    def _state(self) -> str:
        return f"value={self.load()}"


def _unsigned(v: int) -> int:
    if not -(1 << 63) <= v < (1 << 63):
        raise OverflowError(f"{v} does not fit a 64-bit counter")
    return v & _U64


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


class Event(_Primitive):
    """A flag processes wait on, like ``threading.Event``.

    ======  ====  ==========================================
    offset  size  field
    ======  ====  ==========================================
    0       4     flag: 0 clear, 1 set (the futex word)
    4       4     waiters: processes asleep on the flag
    ======  ====  ==========================================
    """

    KIND = Kind.EVENT
    LAYOUT = _layout("event", ("flag", 4), ("waiters", 4))
    SIZE = LAYOUT.size
    _FLAG = LAYOUT["flag"]
    _WAITERS = LAYOUT["waiters"]

    def __init__(self) -> None:
        self._bind_standalone()

    @classmethod
    def create(cls, name: str | None = None, *, mode: int = 0o600) -> Event:
        return cls._create_named(name, mode)

    def is_set(self) -> bool:
        return lib.shmipc_load32_acquire(self._base, self._off + self._FLAG) == 1

    def set(self) -> None:
        """Set the flag and wake every waiter (a syscall only if someone sleeps)."""
        # Release: pairs with the acquire load in is_set/wait of the woken process.
        lib.shmipc_store32_release(self._base, self._off + self._FLAG, 1)
        lib.shmipc_wake32(self._base, self._off + self._FLAG, self._off + self._WAITERS, _INT_MAX)

    def clear(self) -> None:
        lib.shmipc_store32_release(self._base, self._off + self._FLAG, 0)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set or ``timeout`` seconds pass; True if the flag is set."""
        deadline = deadline_ns(timeout)
        while not self.is_set():
            if not _wait_until(
                self._base, self._off + self._FLAG, self._off + self._WAITERS, 0, deadline
            ):
                return self.is_set()
        return True

    async def wait_async(self, timeout: float | None = None) -> bool:
        """``await`` the flag without blocking the loop (shmipc/aio.py); True once set."""
        from .aio import event_wait_async

        return await event_wait_async(self, timeout)

    def _state(self) -> str:
        return "set" if self.is_set() else "unset"


class Semaphore(_Primitive):
    """A counting semaphore shared between processes.

    ======  ====  ==========================================
    offset  size  field
    ======  ====  ==========================================
    0       4     count (the futex word; waiters sleep at 0)
    4       4     waiters: processes asleep on the count
    ======  ====  ==========================================
    """

    KIND = Kind.SEMAPHORE
    LAYOUT = _layout("semaphore", ("count", 4), ("waiters", 4))
    SIZE = LAYOUT.size
    _COUNT = LAYOUT["count"]
    _WAITERS = LAYOUT["waiters"]
    MAX_VALUE = _INT_MAX

    def __init__(self, value: int = 1) -> None:
        self._bind_standalone(value=value)

    @classmethod
    def create(cls, name: str | None = None, *, value: int = 1, mode: int = 0o600) -> Semaphore:
        return cls._create_named(name, mode, value=value)

    def _init_shared(self, value: int = 1) -> None:
        if not 0 <= value <= self.MAX_VALUE:
            raise ValueError(f"semaphore value must be in 0..{self.MAX_VALUE}, got {value}")
        lib.shmipc_store32_release(self._base, self._off + self._COUNT, value)

    def _try(self) -> bool:
        count_off = self._off + self._COUNT
        while True:
            c = lib.shmipc_load32_acquire(self._base, count_off)
            if c == 0:
                return False
            # Retry only when another process changed the count between load and CAS: each
            # failure means someone else made progress.
            if lib.shmipc_cas32_acq_rel(self._base, count_off, c, c - 1) == c:
                return True

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take one unit; False if none came within ``timeout`` (or at once, unblocking)."""
        if self._try():
            return True
        if not block:
            return False
        deadline = deadline_ns(timeout)
        while True:
            if not _wait_until(
                self._base, self._off + self._COUNT, self._off + self._WAITERS, 0, deadline
            ):
                return self._try()
            if self._try():
                return True

    def release(self, n: int = 1) -> None:
        """Return ``n`` units and wake up to ``n`` waiters."""
        if n < 1:
            raise ValueError(f"release count must be positive, got {n}")
        count_off = self._off + self._COUNT
        while True:
            c = lib.shmipc_load32_acquire(self._base, count_off)
            if c + n > self.MAX_VALUE:
                raise ValueError(f"semaphore released beyond {self.MAX_VALUE}")
            if lib.shmipc_cas32_acq_rel(self._base, count_off, c, c + n) == c:
                break
        lib.shmipc_wake32(self._base, count_off, self._off + self._WAITERS, n)

    @property
    def value(self) -> int:
        return lib.shmipc_load32_acquire(self._base, self._off + self._COUNT)

    def get_value(self) -> int:
        """The current count (``multiprocessing.Semaphore.get_value``'s spelling of ``value``)."""
        return self.value

    def __enter__(self) -> Semaphore:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _state(self) -> str:
        return f"value={self.value}"


def _lock_layout() -> Layout:
    lay = Layout("lock")
    lay.add("word", 8)
    lay.add("sleepers", 4)
    lay.add("recoveries", 4)
    lay.pad_to(CACHE_LINE)
    assert lay["sleepers"] == lib.SHMIPC_LOCK_OFF_WAITERS
    return lay


def take_over_if_dead(base: Any, off: int, steal: Any = None) -> bool:
    """If the lock word at ``off`` names a thread that no longer lives, take the lock over.

    ``steal(observed)`` does the taking (default: the bare lock's); True if it took over. A
    holder is dead when its thread id is gone or now belongs to a thread started at another
    time: a reused id never keeps a dead holder's lock alive.
    """
    holder = lib.shmipc_load64_acquire(base, off)
    if not holder or _proc.identity_alive(holder):
        return False
    if steal is None:
        return lib.shmipc_lock_steal(base, off, holder) == lib.SHMIPC_OWNERDEAD
    return bool(steal(holder))


class Lock(_Primitive):
    """A robust process-shared lock: a holder's death never blocks the living.

    The lock word names its holder: thread id and the low bits of the thread's start time.
    A waiter that finds the holder gone (checked each time a wait slice ends, at most every
    100 ms) takes the lock over, so the next ``acquire`` after a holder's death (even by
    SIGKILL) succeeds within a slice, with ``recovered`` set: the caller should repair what
    the lock guards. Ownership is per thread: the thread that acquired must release.

    ======  ====  ==================================================
    offset  size  field
    ======  ====  ==================================================
    0       8     word: 0 free, else holder tid | start time << 32
    8       4     sleepers: waiters asleep on the word
    12      4     recoveries: times a dead holder's lock passed on
    ======  ====  ==================================================
    """

    KIND = Kind.LOCK
    LAYOUT = _lock_layout()
    SIZE = LAYOUT.size
    _RECOVERIES = LAYOUT["recoveries"]

    #: True when the current holding was taken over from a holder that died.
    recovered: bool = False

    def __init__(self) -> None:
        self._bind_standalone()

    @classmethod
    def create(cls, name: str | None = None, *, mode: int = 0o600) -> Lock:
        return cls._create_named(name, mode)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; False if it stayed held for ``timeout`` seconds (or, unblocking, now)."""
        base, off = self._base, self._off
        deadline = deadline_ns(timeout) if block else 0
        while True:
            rc = lib.shmipc_lock_acquire(base, off, deadline, SPIN_NS)
            if rc == lib.SHMIPC_OK:
                self.recovered = False
                return True
            if rc == lib.SHMIPC_DEADLOCK:
                if not block or timeout is not None:
                    # threading.Lock's (and multiprocessing's) answer: it stays held, so the
                    # attempt fails; without waiting, since only this thread could free it.
                    return False
                raise RuntimeError("this thread already holds the Lock (it is not reentrant)")
            if rc == lib.SHMIPC_ERROR:
                err = lib.shmipc_errno()
                raise OSError(err, f"Lock acquire failed: {os.strerror(err)}")
            # Timed out, or a slice ended (pending signals such as Ctrl-C have run by now):
            # a holder that died cannot release, so take its lock over.
            if take_over_if_dead(base, off):
                self.recovered = True
                lib.shmipc_fetch_add32_acq_rel(base, off + self._RECOVERIES, 1)
                return True
            if rc == lib.SHMIPC_TIMEDOUT:
                return False

    async def acquire_async(self, timeout: float | None = None) -> bool:
        """``await`` the lock without blocking the loop (shmipc/aio.py); False after
        ``timeout``. The holder is the loop's thread: release it from that loop."""
        from .aio import lock_acquire_async

        return await lock_acquire_async(self, timeout)

    def release(self) -> None:
        rc = lib.shmipc_lock_release(self._base, self._off)
        if rc == lib.SHMIPC_NOTOWNER:
            raise RuntimeError(
                "release of a Lock that this thread does not hold (or whose holding was taken "
                "over after this thread was presumed dead)"
            )

    def _is_owned(self) -> bool:
        """True if the calling thread holds the lock (its identity is in the word)."""
        return lib.shmipc_load64_acquire(self._base, self._off) == lib.shmipc_lock_identity()

    def _release_save(self) -> Any:
        """Release for ``Condition.wait``; what ``_acquire_restore`` needs to take it back."""
        self.release()
        return None

    def _acquire_restore(self, saved: Any) -> None:
        self.acquire()

    @property
    def recoveries(self) -> int:
        """How many times this lock was taken over from a dead holder, by anyone."""
        return lib.shmipc_load32_acquire(self._base, self._off + self._RECOVERIES)

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class BarrierTimeout(threading.BrokenBarrierError, TimeoutError):
    """``Barrier.wait`` timed out and broke the barrier (as ``threading.Barrier`` does).

    A ``threading.BrokenBarrierError``, which the stdlib raises, and a ``TimeoutError``, so
    that code catching either works.
    """


class Barrier(_Primitive):
    """``parties`` processes wait until all have arrived, then all go on: ``threading.Barrier``
    across processes, with its ``action``, ``timeout``, ``abort()``, ``reset()`` and ``broken``.

    The state is one 64-bit word, so that arriving, releasing, breaking, resetting and an
    interrupted waiter's withdrawal are each a single compare-exchange. Its high half is the
    futex word waiters sleep on: every end of a generation (release or break) bumps the epoch
    in it, and a release also records the epoch it released, so a waiter that wakes late still
    knows whether its own generation went through or broke.

    ======  ====  ==============================================================
    offset  size  field
    ======  ====  ==============================================================
    0       4     arrived: bits 0-30 parties waiting now; bit 31 broken
    4       4     epoch: bits 0-15 generation (the futex word), 16-31 last released
    8       4     parties
    12      4     waiters: processes asleep on the epoch word
    ======  ====  ==============================================================
    """

    KIND = Kind.BARRIER
    LAYOUT = _layout("barrier", ("arrived", 4), ("epoch", 4), ("parties", 4), ("waiters", 4))
    SIZE = LAYOUT.size
    _STATE = LAYOUT["arrived"]  # the 64-bit word (arrived | epoch << 32), little-endian
    _GEN = LAYOUT["epoch"]
    _PARTIES = LAYOUT["parties"]
    _WAITERS = LAYOUT["waiters"]
    _BROKEN = 1 << 31
    _COUNT = _BROKEN - 1

    #: This handle's action (run by the last party to arrive) and default wait timeout. They
    #: belong to the handle, as in multiprocessing.Barrier, and travel with it when pickled.
    action: Callable[[], object] | None = None
    timeout: float | None = None

    def __init__(
        self,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
    ) -> None:
        self._bind_standalone(parties=parties)
        self._set_handle(action, timeout)

    @classmethod
    def create(
        cls,
        name: str | None = None,
        *,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
        mode: int = 0o600,
    ) -> Barrier:
        obj = cls._create_named(name, mode, parties=parties)
        obj._set_handle(action, timeout)
        return obj

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
        attach_timeout: float = ATTACH_TIMEOUT,
        trusted_uids: Iterable[int] = (),
    ) -> Barrier:
        """Attach a named Barrier; ``action`` and ``timeout`` are this handle's (as for the
        constructor), ``attach_timeout`` and ``trusted_uids`` as for ``Region.attach``."""
        obj = super().attach(name, timeout=attach_timeout, trusted_uids=trusted_uids)
        obj._set_handle(action, timeout)
        return obj

    @classmethod
    def at(  # type: ignore[override]
        cls,
        region: Region,
        offset: int = 0,
        *,
        create: bool,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> Barrier:
        obj = super().at(region, offset, create=create, **params)
        obj._set_handle(action, timeout)
        return obj

    def _set_handle(self, action: Callable[[], object] | None, timeout: float | None) -> None:
        if timeout is not None:
            deadline_ns(timeout)  # NaN or a non-number fails here, not at the first wait
        self.action = action
        self.timeout = timeout

    def _init_shared(self, parties: int = 0) -> None:
        if not 1 <= parties <= self._COUNT:
            raise ValueError(f"parties must be in 1..{self._COUNT}, got {parties}")
        lib.shmipc_store32_release(self._base, self._off + self._PARTIES, parties)
        # No generation released yet: "last released" must not name the current one (0).
        lib.shmipc_store32_release(self._base, self._off + self._GEN, 0xFFFF << 16)

    def _check_attached(self) -> None:
        if not 1 <= self.parties <= self._COUNT:
            raise LayoutMismatch(f"barrier has an invalid party count {self.parties}")

    @property
    def parties(self) -> int:
        return lib.shmipc_load32_acquire(self._base, self._off + self._PARTIES)

    @property
    def n_waiting(self) -> int:
        """Parties waiting in the current generation."""
        return lib.shmipc_load32_acquire(self._base, self._off + self._STATE) & self._COUNT

    @property
    def broken(self) -> bool:
        """True once a wait timed out, the action raised or ``abort()`` was called, until
        ``reset()``."""
        return bool(lib.shmipc_load32_acquire(self._base, self._off + self._STATE) & self._BROKEN)

    def wait(self, timeout: float | None = None) -> int:
        """Arrive and wait for the others; returns this party's arrival index, 0 .. parties-1.

        The last to arrive runs ``action`` (if any) before anyone goes on. Like
        ``threading.Barrier``: ``timeout`` (default: the handle's ``timeout``) passing breaks
        the barrier and raises :class:`BarrierTimeout` (a ``BrokenBarrierError``); every other
        waiter, and every later arrival until ``reset()``, gets ``BrokenBarrierError``; an
        exception in ``action`` breaks it too and propagates from the party that ran it. An
        interrupted wait (Ctrl-C) withdraws its arrival instead and leaves the barrier whole.
        """
        if timeout is None:
            timeout = self.timeout
        base = self._base
        parties = self.parties
        state_off, gen_off = self._off + self._STATE, self._off + self._GEN
        waiters_off = self._off + self._WAITERS
        deadline = deadline_ns(timeout)
        while True:
            state = lib.shmipc_load64_acquire(base, state_off)
            low, high = state & 0xFFFFFFFF, state >> 32
            if low & self._BROKEN:
                raise threading.BrokenBarrierError
            arrived = low & self._COUNT
            if arrived >= parties:
                # A generation is being released (its action runs): arrive in the next one.
                if not _wait_until(base, gen_off, waiters_off, high, deadline):
                    self._break_timed_out(high, timeout)
                continue
            last = arrived + 1 == parties
            # The last one in, with no action to run, starts the next generation (none
            # arrived); else arrived + 1 (== parties: releasing, while the action runs).
            new = _released(high) << 32 if last and self.action is None else state + 1
            # A failed CAS means another party arrived, withdrew or broke the barrier: each
            # retry follows progress.
            if lib.shmipc_cas64_acq_rel(base, state_off, state, new) == state:
                break
        if last:
            if self.action is not None:
                self._run_action(high, parties)
            else:
                lib.shmipc_wake32(base, gen_off, waiters_off, _INT_MAX)
            return arrived
        try:
            while lib.shmipc_load32_acquire(base, gen_off) == high:
                if not _wait_until(base, gen_off, waiters_off, high, deadline):
                    self._break_timed_out(high, timeout)
        except threading.BrokenBarrierError:
            raise
        except BaseException:
            # Interrupted (Ctrl-C) while waiting: withdraw, or the stale arrival would let
            # this generation through one party early.
            self._withdraw(high)
            raise
        # Our generation ended: it went through if it is the one last released.
        if lib.shmipc_load32_acquire(base, gen_off) >> 16 != high & 0xFFFF:
            raise threading.BrokenBarrierError
        return arrived

    def _run_action(self, high: int, parties: int) -> None:
        """The last party, every other waiting: run the action, then release them all (or
        break the barrier if the action raised)."""
        assert self.action is not None
        releasing = (high << 32) | parties
        try:
            self.action()
        except BaseException:
            self._end(releasing, (_bumped(high) << 32) | self._BROKEN)
            raise
        if not self._end(releasing, _released(high) << 32):
            raise threading.BrokenBarrierError  # broken or reset while the action ran

    def _end(self, expected: int, new: int) -> bool:
        """End a generation with one CAS from ``expected`` and wake its waiters; True if ours."""
        if lib.shmipc_cas64_acq_rel(self._base, self._off + self._STATE, expected, new) != expected:
            return False
        if new >> 32 != expected >> 32:  # the epoch word changed: the sleepers must see it
            gen_off, waiters_off = self._off + self._GEN, self._off + self._WAITERS
            lib.shmipc_wake32(self._base, gen_off, waiters_off, _INT_MAX)
        return True

    def _break_timed_out(self, high: int, timeout: float | None) -> None:
        """This waiter's timeout passed in generation ``high``: break the barrier, like
        threading.Barrier, unless the generation ended just now (then the caller looks)."""
        state_off = self._off + self._STATE
        while True:
            state = lib.shmipc_load64_acquire(self._base, state_off)
            if state >> 32 != high or state & self._BROKEN:
                return
            if self._end(state, (_bumped(high) << 32) | self._BROKEN):
                raise BarrierTimeout(
                    f"barrier timed out after {timeout} s with {state & self._COUNT} of "
                    f"{self.parties} parties arrived; it is broken until reset()"
                )

    def _withdraw(self, high: int) -> bool:
        """Take back our arrival unless our generation already ended or is being released."""
        state_off = self._off + self._STATE
        parties = self.parties
        while True:
            state = lib.shmipc_load64_acquire(self._base, state_off)
            count = state & self._COUNT
            if state >> 32 != high or state & self._BROKEN or not 0 < count < parties:
                return False
            if lib.shmipc_cas64_acq_rel(self._base, state_off, state, state - 1) == state:
                return True

    def abort(self) -> None:
        """Break the barrier: every waiter, and every later ``wait`` until ``reset()``, gets
        ``threading.BrokenBarrierError``."""
        state_off = self._off + self._STATE
        while True:
            state = lib.shmipc_load64_acquire(self._base, state_off)
            if state & self._BROKEN:
                return
            if self._end(state, (_bumped(state >> 32) << 32) | self._BROKEN):
                return

    def reset(self) -> None:
        """Return the barrier to its initial state: parties waiting now get
        ``threading.BrokenBarrierError``; a broken barrier becomes usable again."""
        state_off = self._off + self._STATE
        while True:
            state = lib.shmipc_load64_acquire(self._base, state_off)
            high = state >> 32
            if state & self._BROKEN:
                new = high << 32  # its waiters were woken when it broke: just mend it
            elif state & self._COUNT:
                new = _bumped(high) << 32  # end their generation unreleased: they see it broken
            else:
                return
            if self._end(state, new):
                return

    def __reduce__(self) -> tuple[Any, ...]:
        # The action and the default timeout are the handle's: they travel with it.
        return (*super().__reduce__(), {"action": self.action, "timeout": self.timeout})

    def _state(self) -> str:
        if self.broken:
            return "broken"
        return f"{self.n_waiting}/{self.parties} waiting"


def _bumped(high: int) -> int:
    """The epoch word with the next generation and the same last-released one."""
    return (high & 0xFFFF0000) | ((high + 1) & 0xFFFF)


def _released(high: int) -> int:
    """The epoch word after generation ``high`` went through: next one, and it released."""
    return ((high & 0xFFFF) << 16) | ((high + 1) & 0xFFFF)


# ---- the multiprocessing drop-in's primitives (issue 10): BoundedSemaphore, RLock, Condition ----


class BoundedSemaphore(Semaphore):
    """A ``Semaphore`` that refuses to be released above its initial value (``ValueError``),
    like ``threading.BoundedSemaphore`` and ``multiprocessing.BoundedSemaphore``.

    ======  ====  ==========================================
    offset  size  field
    ======  ====  ==========================================
    0       4     count (the futex word; waiters sleep at 0)
    4       4     waiters: processes asleep on the count
    8       4     bound: the initial value, the most the count may reach
    ======  ====  ==========================================

    The same kind as ``Semaphore`` (a plain Semaphore handle on it ignores the bound); one
    attached as a BoundedSemaphore must have a bound.
    """

    LAYOUT = _layout("bounded semaphore", ("count", 4), ("waiters", 4), ("bound", 4))
    SIZE = LAYOUT.size
    _BOUND = LAYOUT["bound"]

    def __init__(self, value: int = 1) -> None:
        self._bind_standalone(value=value)

    @classmethod
    def create(
        cls, name: str | None = None, *, value: int = 1, mode: int = 0o600
    ) -> BoundedSemaphore:
        return cls._create_named(name, mode, value=value)

    def _init_shared(self, value: int = 1) -> None:
        super()._init_shared(value)
        lib.shmipc_store32_release(self._base, self._off + self._BOUND, value)

    def _check_attached(self) -> None:
        if self.bound == 0:
            raise LayoutMismatch("this semaphore has no bound: attach it as a Semaphore")

    @property
    def bound(self) -> int:
        """The initial value: ``release`` never takes the count above it."""
        return lib.shmipc_load32_acquire(self._base, self._off + self._BOUND)

    def release(self, n: int = 1) -> None:
        """Return ``n`` units; ``ValueError`` (nothing released) past the initial value."""
        if n < 1:
            raise ValueError(f"release count must be positive, got {n}")
        count_off = self._off + self._COUNT
        bound = self.bound
        while True:
            c = lib.shmipc_load32_acquire(self._base, count_off)
            if c + n > bound:
                raise ValueError("Semaphore released too many times")
            if lib.shmipc_cas32_acq_rel(self._base, count_off, c, c + n) == c:
                break
        lib.shmipc_wake32(self._base, count_off, self._off + self._WAITERS, n)


def _rlock_layout() -> Layout:
    lay = Layout("rlock")
    lay.add("word", 8)
    lay.add("sleepers", 4)
    lay.add("recoveries", 4)
    lay.add("count", 4)
    lay.pad_to(CACHE_LINE)
    assert lay["sleepers"] == lib.SHMIPC_LOCK_OFF_WAITERS
    return lay


class RLock(Lock):
    """A reentrant robust lock: the holding thread may acquire it again, and must release it
    as many times (``threading.RLock``/``multiprocessing.RLock`` across processes).

    The lock word and its robustness are ``Lock``'s: a holder that dies (at any depth)
    passes the lock to the next acquirer within a wait slice, with ``recovered`` set and the
    depth starting again at 1. The depth lives next to the word; only the holder writes it.

    ======  ====  ==================================================
    offset  size  field
    ======  ====  ==================================================
    0       8     word: 0 free, else holder tid | start time << 32
    8       4     sleepers: waiters asleep on the word
    12      4     recoveries: times a dead holder's lock passed on
    16      4     count: the holder's depth (0 when free)
    ======  ====  ==================================================
    """

    KIND = Kind.RLOCK
    LAYOUT = _rlock_layout()
    SIZE = LAYOUT.size
    _COUNT = LAYOUT["count"]

    @classmethod
    def create(cls, name: str | None = None, *, mode: int = 0o600) -> RLock:
        return cls._create_named(name, mode)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take the lock, or go one deeper if this thread holds it; False on timeout."""
        base, count_off = self._base, self._off + self._COUNT
        if self._is_owned():
            # Only the holder reads or writes the depth while it holds the lock; the lock
            # word's acquire/release orders it between holders.
            lib.shmipc_store32_relaxed(
                base, count_off, lib.shmipc_load32_relaxed(base, count_off) + 1
            )
            return True
        if not Lock.acquire(self, block, timeout):
            return False
        lib.shmipc_store32_relaxed(base, count_off, 1)  # a dead holder's depth is dropped
        return True

    def release(self) -> None:
        """Go one level up; the last release frees the lock. ``RuntimeError`` if this thread
        does not hold it."""
        if not self._is_owned():
            raise RuntimeError("cannot release un-acquired lock")
        base, count_off = self._base, self._off + self._COUNT
        depth = lib.shmipc_load32_relaxed(base, count_off)
        if depth > 1:
            lib.shmipc_store32_relaxed(base, count_off, depth - 1)
            return
        lib.shmipc_store32_relaxed(base, count_off, 0)
        Lock.release(self)

    def _release_save(self) -> Any:
        depth = lib.shmipc_load32_relaxed(self._base, self._off + self._COUNT)
        lib.shmipc_store32_relaxed(self._base, self._off + self._COUNT, 0)
        Lock.release(self)
        return depth

    def _acquire_restore(self, saved: Any) -> None:
        Lock.acquire(self)
        lib.shmipc_store32_relaxed(self._base, self._off + self._COUNT, max(1, saved or 1))

    @property
    def depth(self) -> int:
        """How deep the holder holds it (0 when free); meaningful to the holder."""
        return lib.shmipc_load32_relaxed(self._base, self._off + self._COUNT)

    def _state(self) -> str:
        word = lib.shmipc_load64_acquire(self._base, self._off)
        if not word:
            return "unlocked"
        return f"held by thread {word & 0x7FFFFFFF} depth={self.depth}"


def _condition_layout() -> Layout:
    lay = Layout("condition")
    lay.add("lock", RLock.SIZE)  # the embedded RLock, used when no lock is given
    lay.add("cursor", 4)  # where the next notify starts looking (round robin)
    lay.add("sleepers", 4)  # waiters asleep on their slot (or on overflow_gen)
    lay.add("overflow", 4)  # waiters that found no free slot, waiting on overflow_gen
    lay.add("overflow_gen", 4)  # bumped by a notify when overflow waiters exist
    lay.pad_to(CACHE_LINE)
    lay.add("slots", 8 * Condition_SLOTS, align=CACHE_LINE)
    lay.pad_to(CACHE_LINE)
    return lay


#: How many waiters a Condition tracks one by one (more wait on a shared generation word).
Condition_SLOTS = 64
_RELEASED = 1 << 31  # in a slot: the waiter it names was notified (bit 31 of the tid half)


class Condition(_Primitive):
    """A condition variable shared between processes: ``threading.Condition``'s ``wait``,
    ``wait_for``, ``notify(n)`` and ``notify_all`` on a shmipc ``Lock`` or ``RLock``.

    Each waiter registers in a slot of its own (under the lock, so before any notify that
    could be meant for it) and sleeps on it; ``notify(n)`` marks up to ``n`` registered
    waiters' slots released and wakes exactly those. A waiter that registers after a notify
    can therefore never take the wake-up meant for an earlier one, and exactly as many waits
    return True as notify handed out. Its own ``RLock`` (used when no lock is given) sits at
    the start of its memory.

    ======  ====  ==============================================================
    offset  size  field
    ======  ====  ==============================================================
    0       64    the embedded RLock (see ``RLock``)
    64      4     cursor: the slot the next notify looks at first (round robin)
    68      4     sleepers: waiters asleep (on their slot or on overflow_gen)
    72      4     overflow: waiters beyond the slots, waiting on overflow_gen
    76      4     overflow_gen: bumped by a notify while overflow waiters exist
    128     512   slots: 64 x u64: 0 free; else the waiter's identity (tid |
                  start time << 32), with bit 31 set once it was notified. The
                  low half is the futex word that waiter sleeps on.
    ======  ====  ==============================================================

    Protocol (the actors: waiters, notifiers, the dead; a slot changes only by CAS):

    * I1 a slot goes 0 -> id (its waiter, under the lock), id -> id|RELEASED (a notifier,
      under the lock), id -> 0 (its waiter leaving on timeout or Ctrl-C) or id|RELEASED -> 0
      (its waiter collecting the wake-up). Waiter and notifier race only on the id, by CAS,
      so a waiter either leaves unnotified or returns True, never both or neither.
    * I2 a notifier wakes the slot's futex after its release CAS; the waiter sleeps only
      while its slot's low half still equals its tid, so the wake is never lost.
    * I3 a notifier that finds a slot naming a thread known dead frees it and does not count
      it: a waiter killed while waiting costs no later notify. (A waiter killed after being
      notified took its wake-up with it, as a killed thread does.)
    * Beyond ``Condition_SLOTS`` concurrent waiters, the extra ones wait on ``overflow_gen``
      and every notify that finds any wakes them all (they return True): a notify may then
      wake more than ``n`` of them.
    """

    KIND = Kind.CONDITION
    SLOTS = Condition_SLOTS
    LAYOUT = _condition_layout()
    SIZE = LAYOUT.size
    _CURSOR = LAYOUT["cursor"]
    _SLEEPERS = LAYOUT["sleepers"]
    _OVERFLOW = LAYOUT["overflow"]
    _OVERFLOW_GEN = LAYOUT["overflow_gen"]
    _SLOT0 = LAYOUT["slots"]

    _lock: Lock
    _own_lock: bool

    def __init__(self, lock: Lock | None = None) -> None:
        self._bind_standalone()
        self._set_lock(lock)

    @classmethod
    def create(
        cls, name: str | None = None, *, lock: Lock | None = None, mode: int = 0o600
    ) -> Condition:
        obj = cls._create_named(name, mode)
        obj._set_lock(lock)
        return obj

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        lock: Lock | None = None,
        timeout: float = ATTACH_TIMEOUT,
        trusted_uids: Iterable[int] = (),
    ) -> Condition:
        """Attach a named Condition; ``lock`` must be the lock it was made with, if any (by
        default, its own RLock)."""
        obj = super().attach(name, timeout=timeout, trusted_uids=trusted_uids)
        obj._set_lock(lock)
        return obj

    @classmethod
    def at(  # type: ignore[override]
        cls, region: Region, offset: int = 0, *, create: bool, lock: Lock | None = None
    ) -> Condition:
        obj = super().at(region, offset, create=create)
        obj._set_lock(lock)
        return obj

    def _set_lock(self, lock: Lock | None) -> None:
        if lock is None:
            lock = RLock.at(self._region, self._offset, create=False)
            self._own_lock = True
        elif isinstance(lock, Lock):
            self._own_lock = False
        else:
            raise TypeError(
                f"a shmipc Condition needs a shmipc Lock or RLock, not {type(lock).__name__} "
                "(it must tell whether the calling thread holds it)"
            )
        self._lock = lock
        self.acquire = lock.acquire
        self.release = lock.release

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._set_lock(state.get("lock"))

    def __reduce__(self) -> tuple[Any, ...]:
        return (*super().__reduce__(), {"lock": None if self._own_lock else self._lock})

    def close(self) -> None:
        if not self.closed and self._own_lock:
            self._lock.close()
        super().close()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def _counts(self) -> tuple[int, int]:
        """(waiters registered and not notified, notified waiters that have not yet
        collected their wake-up), overflow waiters included in the first: (0, 0) when
        nobody waits."""
        waiting = lib.shmipc_load32_acquire(self._base, self._off + self._OVERFLOW)
        released = 0
        for i in range(self.SLOTS):
            v = lib.shmipc_load64_acquire(self._base, self._off + self._SLOT0 + 8 * i)
            if v & _RELEASED:
                released += 1
            elif v:
                waiting += 1
        return waiting, released

    def _state(self) -> str:
        waiting, released = self._counts()
        return f"waiting={waiting} notified={released}"

    def _register(self, me: int) -> int:
        """A free slot, now naming ``me`` (I1), or -1 if all are taken (by the living)."""
        base, slot0 = self._base, self._off + self._SLOT0
        for i in range(self.SLOTS):
            off = slot0 + 8 * i
            if lib.shmipc_cas64_acq_rel(base, off, 0, me) == 0:
                return off
        for i in range(self.SLOTS):  # full: take back the slots of waiters that died (I3)
            off = slot0 + 8 * i
            v = lib.shmipc_load64_acquire(base, off)
            if (
                v
                and not _proc.identity_alive(v)
                and lib.shmipc_cas64_acq_rel(base, off, v, me) == v
            ):
                return off
        return -1

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, wait for a notify or ``timeout`` seconds, take the lock back.

        True if notified, False on timeout. ``RuntimeError`` unless this thread holds the
        lock. Ctrl-C leaves the wait (a notify that reached this waiter at that moment is
        passed on to another) and retakes the lock before raising.
        """
        lock = self._lock
        if not lock._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        deadline = deadline_ns(timeout)
        me = lib.shmipc_lock_identity()
        off = self._register(me)  # under the lock: before any notify meant for us
        if off < 0:
            return self._wait_overflow(deadline)
        base = self._base
        saved = lock._release_save()
        try:
            try:
                while lib.shmipc_load64_acquire(base, off) == me:
                    if not _wait_until(
                        base, off, self._off + self._SLEEPERS, me & 0xFFFFFFFF, deadline
                    ):
                        break
            except BaseException:
                if not self._leave(off, me):
                    self._notify(1)  # we were notified as we left: pass it on
                raise
            return not self._leave(off, me)
        finally:
            lock._acquire_restore(saved)

    def _leave(self, off: int, me: int) -> bool:
        """Free our slot (I1): True if we left unnotified, False if a notify reached us."""
        if lib.shmipc_cas64_acq_rel(self._base, off, me, 0) == me:
            return True
        lib.shmipc_store64_release(self._base, off, 0)  # id|RELEASED: collected
        return False

    def _wait_overflow(self, deadline: int) -> bool:
        """A waiter beyond the slots: wait for the next notify that finds overflow waiters."""
        base = self._base
        gen_off, of_off = self._off + self._OVERFLOW_GEN, self._off + self._OVERFLOW
        seen = lib.shmipc_load32_acquire(base, gen_off)
        lib.shmipc_fetch_add32_acq_rel(base, of_off, 1)
        saved = self._lock._release_save()
        try:
            return _wait_until(base, gen_off, self._off + self._SLEEPERS, seen, deadline)
        finally:
            lib.shmipc_fetch_add32_acq_rel(base, of_off, _U32_MINUS_1)
            self._lock._acquire_restore(saved)

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Wait until ``predicate()`` is true (``threading.Condition.wait_for``): its last
        value, false if ``timeout`` passed first."""
        endtime = None
        waittime = timeout
        result = predicate()
        while not result:
            if waittime is not None:
                if endtime is None:
                    endtime = time.monotonic() + waittime
                else:
                    waittime = endtime - time.monotonic()
                    if waittime <= 0:
                        break
            self.wait(waittime)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters; ``RuntimeError`` unless this thread holds the lock."""
        if not self._lock._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        self._notify(n)

    def _slot_values(self) -> list[int]:
        """A snapshot of the slots (plain loads; every change is then made by CAS)."""
        view = self.__dict__.get("_slots_view")
        if view is None:
            start = self._offset + self._SLOT0
            view = self._region.buffer[start : start + 8 * self.SLOTS].cast("Q")
            self._slots_view = view
        return view.tolist()  # type: ignore[no-any-return]

    def _notify(self, n: int) -> None:
        base = self._base
        slot0, sleepers = self._off + self._SLOT0, self._off + self._SLEEPERS
        values = self._slot_values()
        start = lib.shmipc_load32_relaxed(base, self._off + self._CURSOR) % self.SLOTS
        woken = 0
        last = start
        for step in range(self.SLOTS):
            if woken >= n:
                break
            i = (start + step) % self.SLOTS
            v = values[i]
            if not v or v & _RELEASED:
                continue
            off = slot0 + 8 * i
            if not _waiter_alive(v):  # I3: a waiter killed while waiting
                lib.shmipc_cas64_acq_rel(base, off, v, 0)
                continue
            # I1/I2: release, then wake its futex (the low half just changed).
            if lib.shmipc_cas64_acq_rel(base, off, v, v | _RELEASED) == v:
                lib.shmipc_wake32(base, off, sleepers, 1)
                woken += 1
                last = i
        if woken:
            lib.shmipc_store32_relaxed(base, self._off + self._CURSOR, (last + 1) % self.SLOTS)
        if woken < n and lib.shmipc_load32_acquire(base, self._off + self._OVERFLOW):
            gen_off = self._off + self._OVERFLOW_GEN
            lib.shmipc_fetch_add32_acq_rel(base, gen_off, 1)
            lib.shmipc_wake32(base, gen_off, sleepers, _INT_MAX)

    def notify_all(self) -> None:
        """Wake every waiter; ``RuntimeError`` unless this thread holds the lock."""
        self.notify(_INT_MAX)

    notifyAll = notify_all  # threading's old spelling


_U32_MINUS_1 = 0xFFFFFFFF

#: A waiter seen alive is not asked about again for this long (a /proc read costs tens of µs);
#: one seen dead stays dead (its identity carries its start time).
_ALIVE_FOR_NS = 1_000_000_000
_alive_seen: dict[int, int] = {}


def _waiter_alive(identity: int) -> bool:
    """False only when the thread a Condition slot names is known dead (I3)."""
    now = time.monotonic_ns()
    seen = _alive_seen.get(identity)
    if seen is not None and now - seen < _ALIVE_FOR_NS:
        return True
    if not _proc.identity_alive(identity):
        _alive_seen.pop(identity, None)
        return False
    if len(_alive_seen) > 4096:
        _alive_seen.clear()
    _alive_seen[identity] = now
    return True
