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
import time
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

from . import _proc
from ._native import lib
from .errors import LayoutMismatch
from .layout import CACHE_LINE, Kind, Layout
from .region import ATTACH_TIMEOUT, Region

__all__ = ["SPIN_NS", "AtomicCounter", "Barrier", "Event", "Lock", "Semaphore"]

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
    """Absolute CLOCK_MONOTONIC deadline for ``timeout`` seconds (-1: wait forever)."""
    if timeout is None:
        return -1
    if math.isnan(timeout):
        raise ValueError("timeout must be a number, not NaN")
    if timeout >= _FOREVER_S:  # inf, or past what an int64 deadline holds: no deadline
        return -1
    return time.monotonic_ns() + max(0, int(timeout * 1e9))


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
        return self._region

    def close(self) -> None:
        """Drop this handle; a creator's named segment is unlinked. Placed ones do nothing."""
        if self._owns_region:
            self._region.close()

    def unlink(self) -> None:
        self._region.unlink()

    def __reduce__(self) -> tuple[Any, ...]:
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
        where = self._region.name or "anonymous"
        return f"<shmipc.{type(self).__name__} {where}@{self._offset} {self._state()}>"

    def _state(self) -> str:
        return ""


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

    def _state(self) -> str:
        return "set" if self.is_set() else "clear"


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


class Barrier(_Primitive):
    """``parties`` processes wait until all have arrived, then all go on; reusable.

    The arrival count and the generation share one 64-bit word, so that arriving, the last
    arrival's reset and a timed-out waiter's withdrawal are each a single compare-exchange:
    a timeout withdraws cleanly and leaves the barrier usable (unlike threading.Barrier,
    which breaks).

    ======  ====  ===================================================
    offset  size  field
    ======  ====  ===================================================
    0       4     arrived: parties waiting in this generation
    4       4     generation: bumped when the last party arrives (futex)
    8       4     parties
    12      4     waiters: processes asleep on the generation
    ======  ====  ===================================================
    """

    KIND = Kind.BARRIER
    LAYOUT = _layout("barrier", ("arrived", 4), ("generation", 4), ("parties", 4), ("waiters", 4))
    SIZE = LAYOUT.size
    _STATE = LAYOUT["arrived"]  # the 64-bit word (arrived | generation << 32), little-endian
    _GEN = LAYOUT["generation"]
    _PARTIES = LAYOUT["parties"]
    _WAITERS = LAYOUT["waiters"]

    def __init__(self, parties: int) -> None:
        self._bind_standalone(parties=parties)

    @classmethod
    def create(cls, name: str | None = None, *, parties: int, mode: int = 0o600) -> Barrier:
        return cls._create_named(name, mode, parties=parties)

    def _init_shared(self, parties: int = 0) -> None:
        if not 1 <= parties <= _INT_MAX:
            raise ValueError(f"parties must be in 1..{_INT_MAX}, got {parties}")
        lib.shmipc_store32_release(self._base, self._off + self._PARTIES, parties)

    def _check_attached(self) -> None:
        if not 1 <= self.parties <= _INT_MAX:
            raise LayoutMismatch(f"barrier has an invalid party count {self.parties}")

    @property
    def parties(self) -> int:
        return lib.shmipc_load32_acquire(self._base, self._off + self._PARTIES)

    @property
    def n_waiting(self) -> int:
        return lib.shmipc_load32_acquire(self._base, self._off + self._STATE)

    def wait(self, timeout: float | None = None) -> int:
        """Arrive and wait for the others; returns this party's arrival index (0-based).

        Raises TimeoutError if the others did not all arrive within ``timeout`` seconds; the
        caller's arrival is then withdrawn and the barrier stays usable. An interrupted wait
        (Ctrl-C) withdraws the same way.
        """
        parties = self.parties
        state_off = self._off + self._STATE
        while True:
            state = lib.shmipc_load64_acquire(self._base, state_off)
            gen, arrived = state >> 32, state & 0xFFFFFFFF
            if arrived + 1 >= parties:
                new = ((gen + 1) & 0xFFFFFFFF) << 32  # last one in: next generation, count 0
            else:
                new = (gen << 32) | (arrived + 1)
            # A failed CAS means another party arrived or withdrew: each retry follows progress.
            if lib.shmipc_cas64_acq_rel(self._base, state_off, state, new) == state:
                break
        gen_off = self._off + self._GEN
        if arrived + 1 >= parties:
            lib.shmipc_wake32(self._base, gen_off, self._off + self._WAITERS, _INT_MAX)
            return arrived
        deadline = deadline_ns(timeout)
        try:
            while lib.shmipc_load32_acquire(self._base, gen_off) == gen:
                if not _wait_until(self._base, gen_off, self._off + self._WAITERS, gen, deadline):
                    if self._withdraw(gen):
                        raise TimeoutError(
                            f"barrier timed out after {timeout} s with {self.n_waiting + 1} "
                            f"of {parties} parties arrived"
                        )
                    return arrived  # the last party arrived just as we timed out
        except TimeoutError:
            raise
        except BaseException:
            # Interrupted (Ctrl-C) while waiting: withdraw like a timeout, or the stale arrival
            # would let the next generation through one party early.
            self._withdraw(gen)
            raise
        return arrived

    def _withdraw(self, gen: int) -> bool:
        """Take back our arrival unless the generation already moved on; True if taken back."""
        state_off = self._off + self._STATE
        while True:
            state = lib.shmipc_load64_acquire(self._base, state_off)
            if state >> 32 != gen:
                return False
            if lib.shmipc_cas64_acq_rel(self._base, state_off, state, state - 1) == state:
                return True

    def _state(self) -> str:
        return f"{self.n_waiting}/{self.parties} waiting"
