"""Shared ctypes objects in shmipc regions: ``multiprocessing.sharedctypes`` over shmipc.

``Value``, ``Array``, ``RawValue`` and ``RawArray`` take the stdlib's arguments and return the
stdlib's kinds of objects (a ctypes object, or a ``Synchronized``/``SynchronizedArray``/
``SynchronizedString`` wrapper with ``get_lock``/``get_obj``), but the memory is a shmipc
``Region`` of its own, and the default lock (``lock=True`` or ``None``) is a robust
``shmipc.RLock`` placed at the start of that same region: a process SIGKILLed while holding
it passes it to the next acquirer (within a wait slice) instead of blocking everyone forever.
``lock=False`` gives the bare ctypes object; any object with ``acquire``/``release`` may be
given instead (multiprocessing's rule).

Where the memory lives follows the start method of ``ctx`` (default: the process's): under
"fork", an anonymous region that forked children inherit; under "spawn" and "forkserver", a
named segment, so that the object pickles by name while a child is being started (the
stdlib's rule: shared ctypes travel only by inheritance). The segment is unlinked when the
object is garbage-collected in the process that made it, or at its exit; children that
attached keep their mapping.

Region layout: [RLock, ``RLock.SIZE`` bytes, when the default lock is used][the ctypes data].
"""

from __future__ import annotations

import ctypes
import multiprocessing
from multiprocessing import sharedctypes as _std
from typing import Any

from .region import Region
from .sync import RLock

__all__ = ["Array", "RawArray", "RawValue", "Value", "copy", "synchronized", "typecode_to_type"]

typecode_to_type: dict[str, Any] = _std.typecode_to_type  # type: ignore[attr-defined]
synchronized: Any = _std.synchronized
_rebuild_ctype: Any = _std.rebuild_ctype  # type: ignore[attr-defined]


def start_method(ctx: Any = None) -> str:
    """The start method ``ctx`` (a multiprocessing or shmipc.mp context; None: the process's
    default) starts children with, without fixing the default context as a side effect."""
    if ctx is None:
        method = multiprocessing.get_start_method(allow_none=True)
    else:
        method = ctx.get_start_method(allow_none=True)
    return method or multiprocessing.get_all_start_methods()[0]


def uses_names(ctx: Any = None) -> bool:
    """True when objects made for ``ctx`` must pickle by name (children not forked)."""
    return start_method(ctx) != "fork"


class RegionBuffer:
    """Bytes ``[offset, offset + size)`` of a region: the ``wrapper`` the stdlib's
    ``rebuild_ctype``/``reduce_ctype`` keep on a shared ctypes object. It pickles as the region
    (by name; an anonymous region refuses with a clear TypeError) and keeps the region, and so
    its name, alive as long as the object."""

    def __init__(self, region: Region, offset: int, size: int) -> None:
        self.region = region
        self.offset = offset
        self.size = size

    def create_memoryview(self) -> memoryview:
        return self.region.buffer[self.offset : self.offset + self.size]

    def __reduce__(self) -> tuple[Any, ...]:
        return (RegionBuffer, (self.region, self.offset, self.size))


def _new(type_: Any, with_lock: bool, ctx: Any) -> tuple[Any, RLock | None]:
    """A zeroed ctypes object of ``type_`` in a new region (after an RLock if asked)."""
    size = ctypes.sizeof(type_)
    data_off = RLock.SIZE if with_lock else 0
    total = data_off + max(size, 1)
    region = Region.create(total) if uses_names(ctx) else Region.anonymous(total)
    lock = RLock.at(region, 0, create=True) if with_lock else None
    obj = _rebuild_ctype(type_, RegionBuffer(region, data_off, size), None)
    return obj, lock


def _type(typecode_or_type: Any) -> Any:
    return typecode_to_type.get(typecode_or_type, typecode_or_type)


def RawValue(typecode_or_type: Any, *args: Any, ctx: Any = None) -> Any:
    """A ctypes object in shared memory, initialised with ``args`` (no lock)."""
    obj, _ = _new(_type(typecode_or_type), False, ctx)
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type: Any, size_or_initializer: Any, *, ctx: Any = None) -> Any:
    """A ctypes array in shared memory: zeroed of a given length, or a copy of a sequence."""
    type_ = _type(typecode_or_type)
    if isinstance(size_or_initializer, int):
        obj, _ = _new(type_ * size_or_initializer, False, ctx)
        return obj
    values = list(size_or_initializer)
    obj, _ = _new(type_ * len(values), False, ctx)
    obj.__init__(*values)
    return obj


def _check_lock(lock: Any) -> bool:
    """True for the default lock (True or None); AttributeError for an object that is no
    lock (the stdlib's rule and message)."""
    if lock is True or lock is None:
        return True
    if lock is not False and not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return False


def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None) -> Any:
    """A shared ctypes value behind a lock (default: a robust RLock in the same region)."""
    own = _check_lock(lock)
    obj, rlock = _new(_type(typecode_or_type), own, ctx)
    obj.__init__(*args)
    if lock is False:
        return obj
    return synchronized(obj, rlock if own else lock, ctx=ctx or _NO_CONTEXT)


def Array(
    typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True, ctx: Any = None
) -> Any:
    """A shared ctypes array behind a lock (default: a robust RLock in the same region)."""
    own = _check_lock(lock)
    type_ = _type(typecode_or_type)
    if isinstance(size_or_initializer, int):
        obj, rlock = _new(type_ * size_or_initializer, own, ctx)
    else:
        values = list(size_or_initializer)
        obj, rlock = _new(type_ * len(values), own, ctx)
        obj.__init__(*values)
    if lock is False:
        return obj
    return synchronized(obj, rlock if own else lock, ctx=ctx or _NO_CONTEXT)


def copy(obj: Any, *, ctx: Any = None) -> Any:
    """A new shared ctypes object (no lock) holding a copy of ``obj``."""
    new_obj, _ = _new(type(obj), False, ctx)
    ctypes.pointer(new_obj)[0] = obj
    return new_obj


class _NoContext:
    """Given to the stdlib's ``synchronized`` so that it does not call
    ``multiprocessing.get_context()``, which would fix the default start method; it is only
    consulted for a lock when none is given, and one always is here."""

    def RLock(self) -> Any:
        raise AssertionError("shared ctypes are always given their lock")


_NO_CONTEXT = _NoContext()
