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

__all__ = ["SPIN_NS", "AtomicCounter", "Barrier", "BarrierTimeout", "Event", "Lock", "Semaphore"]

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
