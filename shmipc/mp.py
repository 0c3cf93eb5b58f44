"""``import shmipc.mp as multiprocessing``: the one-import switch to shmipc.

The names a multiprocessing program uses, with shmipc's shared-memory objects where shmipc
has them and the standard library's own everywhere else:

* shmipc's: ``Queue``, ``JoinableQueue``, ``SimpleQueue`` (the pickle codec by default, as
  multiprocessing: a drop-in must carry whatever the program sends), ``Lock``, ``RLock``,
  ``Semaphore``, ``BoundedSemaphore``, ``Event``, ``Condition``, ``Barrier``, ``Value``,
  ``Array``, ``RawValue``, ``RawArray`` (:mod:`shmipc.sharedctypes`), and ``Pool``
  (:mod:`shmipc.pool`, imported when first used);
* the stdlib's, re-exported as they are: ``Process``, ``current_process``,
  ``parent_process``, ``active_children``, ``cpu_count``, ``set_start_method``,
  ``get_start_method``, ``get_all_start_methods``, ``freeze_support``, ``Pipe``,
  ``Manager``, ``TimeoutError``, ``ProcessError``, ``AuthenticationError``,
  ``BufferTooShort``, the logging helpers, and any other attribute or submodule of
  ``multiprocessing`` (looked up when asked for).

``get_context(method)`` returns a :class:`Context` with the same names, whose objects suit
that start method: under "fork" the sync objects live in anonymous memory that forked
children inherit; under "spawn" and "forkserver" they are named segments that pickle by name
while the child starts (and in fact through any shmipc queue). Module-level names use the
process's default context and follow ``set_start_method``. docs/migrating.md has the
side-by-side table.
"""

from __future__ import annotations

import importlib
import multiprocessing as _mp
from multiprocessing import (
    AuthenticationError,
    BufferTooShort,
    Process,
    ProcessError,
    TimeoutError,
    active_children,
    current_process,
    parent_process,
)
from typing import Any

from . import sharedctypes as _sct
from .joinable import JoinableQueue as _JoinableQueue
from .queue import Queue as _Queue
from .sync import Barrier as _Barrier
from .sync import BoundedSemaphore as _BoundedSemaphore
from .sync import Condition as _Condition
from .sync import Event as _Event
from .sync import Lock as _Lock
from .sync import RLock as _RLock
from .sync import Semaphore as _Semaphore

__all__ = [
    "Array",
    "AuthenticationError",
    "Barrier",
    "BoundedSemaphore",
    "BufferTooShort",
    "Condition",
    "Context",
    "Event",
    "JoinableQueue",
    "Lock",
    "Manager",
    "Pipe",
    "Pool",
    "Process",
    "ProcessError",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "Semaphore",
    "SimpleQueue",
    "TimeoutError",
    "Value",
    "active_children",
    "allow_connection_pickling",
    "cpu_count",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "parent_process",
    "reducer",  # noqa: F822 - the stdlib's, through __getattr__ (a property of its context)
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
]

#: What shmipc.mp gives of its own; every other name is the standard library's.
SHMIPC_NAMES = (
    "Queue",
    "JoinableQueue",
    "SimpleQueue",
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Event",
    "Condition",
    "Barrier",
    "Value",
    "Array",
    "RawValue",
    "RawArray",
    "Pool",
    "get_context",
)


class Context:
    """A multiprocessing context whose queues, sync objects and shared ctypes are shmipc's.

    ``method`` None is the process's default context (it follows ``set_start_method``);
    otherwise the context of that start method. Every name it does not define itself
    (``Process``, ``Pipe``, ``Manager``, ``cpu_count``...) is the stdlib context's.
    """

    def __init__(self, method: str | None = None) -> None:
        self._method = method
        # The stdlib context to delegate to: the module itself follows the default context.
        self._std: Any = _mp if method is None else _mp.get_context(method)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._std, name)

    def __repr__(self) -> str:
        return f"<shmipc.mp.Context {self._method or 'default'}>"

    def _named(self) -> bool:
        """True when objects must pickle by name: children of this context are not forked."""
        return _sct.uses_names(self)

    def get_start_method(self, allow_none: bool = False) -> str | None:
        return self._std.get_start_method(allow_none)  # type: ignore[no-any-return]

    def get_context(self, method: str | None = None) -> Context:
        """The shmipc context of ``method`` (None: this one)."""
        if method is None:
            return self
        return get_context(method)

    # ---- queues (pickle, as multiprocessing) ---------------------------------------------

    def Queue(self, maxsize: int = 0, **kwargs: Any) -> _Queue[Any]:
        """A ``shmipc.Queue`` with the pickle codec; ``kwargs`` as for ``shmipc.Queue``."""
        kwargs.setdefault("codec", "pickle")
        return _Queue(maxsize, **kwargs)

    def JoinableQueue(self, maxsize: int = 0, **kwargs: Any) -> _JoinableQueue:
        """A ``shmipc.JoinableQueue`` (``task_done``/``join``) with the pickle codec."""
        kwargs.setdefault("codec", "pickle")
        return _JoinableQueue(maxsize, **kwargs)

    def SimpleQueue(self, **kwargs: Any) -> _Queue[Any]:
        """A ``shmipc.Queue`` (pickle codec): it has ``put``/``get``/``empty``/``close``."""
        kwargs.setdefault("codec", "pickle")
        return _Queue(**kwargs)

    # ---- sync ----------------------------------------------------------------------------

    def Lock(self) -> _Lock:
        """A robust ``shmipc.Lock``."""
        return _Lock.create() if self._named() else _Lock()

    def RLock(self) -> _RLock:
        """A robust reentrant ``shmipc.RLock``."""
        return _RLock.create() if self._named() else _RLock()

    def Semaphore(self, value: int = 1) -> _Semaphore:
        return _Semaphore.create(value=value) if self._named() else _Semaphore(value)

    def BoundedSemaphore(self, value: int = 1) -> _BoundedSemaphore:
        if self._named():
            return _BoundedSemaphore.create(value=value)
        return _BoundedSemaphore(value)

    def Event(self) -> _Event:
        return _Event.create() if self._named() else _Event()

    def Condition(self, lock: _Lock | None = None) -> _Condition:
        """A ``shmipc.Condition`` on ``lock`` (a shmipc Lock or RLock; default: its own
        RLock)."""
        return _Condition.create(lock=lock) if self._named() else _Condition(lock)

    def Barrier(self, parties: int, action: Any = None, timeout: float | None = None) -> _Barrier:
        if self._named():
            return _Barrier.create(parties=parties, action=action, timeout=timeout)
        return _Barrier(parties, action, timeout)

    # ---- shared ctypes -------------------------------------------------------------------

    def Value(self, typecode_or_type: Any, *args: Any, lock: Any = True) -> Any:
        """A shared ctypes value; its default lock is a robust RLock (``shmipc.sharedctypes``)."""
        return _sct.Value(typecode_or_type, *args, lock=lock, ctx=self)

    def Array(self, typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True) -> Any:
        """A shared ctypes array; its default lock is a robust RLock."""
        return _sct.Array(typecode_or_type, size_or_initializer, lock=lock, ctx=self)

    def RawValue(self, typecode_or_type: Any, *args: Any) -> Any:
        return _sct.RawValue(typecode_or_type, *args, ctx=self)

    def RawArray(self, typecode_or_type: Any, size_or_initializer: Any) -> Any:
        return _sct.RawArray(typecode_or_type, size_or_initializer, ctx=self)

    # ---- pool ----------------------------------------------------------------------------

    def Pool(
        self,
        processes: int | None = None,
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
        maxtasksperchild: int | None = None,
    ) -> Any:
        """``shmipc.pool.Pool`` (imported now: a program that never makes a pool never
        imports it)."""
        try:
            pool = importlib.import_module("shmipc.pool")
            cls = pool.Pool
        except (ImportError, AttributeError) as exc:
            raise ImportError(
                "shmipc.mp.Pool needs shmipc.pool, which this installation of shmipc does not "
                f"have ({exc}); use multiprocessing.Pool until it does"
            ) from exc
        return cls(processes, initializer, initargs, maxtasksperchild, context=self)


_contexts: dict[str | None, Context] = {}


def get_context(method: str | None = None) -> Context:
    """The shmipc context of start method ``method`` ("fork", "spawn", "forkserver"; None:
    the default context, which follows ``set_start_method``)."""
    ctx = _contexts.get(method)
    if ctx is None:
        ctx = _contexts.setdefault(method, Context(method))
    return ctx


_default = get_context(None)

Queue = _default.Queue
JoinableQueue = _default.JoinableQueue
SimpleQueue = _default.SimpleQueue
Lock = _default.Lock
RLock = _default.RLock
Semaphore = _default.Semaphore
BoundedSemaphore = _default.BoundedSemaphore
Event = _default.Event
Condition = _default.Condition
Barrier = _default.Barrier
Value = _default.Value
Array = _default.Array
RawValue = _default.RawValue
RawArray = _default.RawArray
Pool = _default.Pool

# The stdlib's own functions, bound to its default context as multiprocessing's are.
cpu_count = _mp.cpu_count
freeze_support = _mp.freeze_support
set_start_method = _mp.set_start_method
get_start_method = _mp.get_start_method
get_all_start_methods = _mp.get_all_start_methods
set_executable = _mp.set_executable
set_forkserver_preload = _mp.set_forkserver_preload
get_logger = _mp.get_logger
log_to_stderr = _mp.log_to_stderr
allow_connection_pickling = _mp.allow_connection_pickling
Pipe = _mp.Pipe
Manager = _mp.Manager

_STDLIB_REEXPORTS = (
    Process,
    current_process,
    parent_process,
    active_children,
    TimeoutError,
    ProcessError,
    AuthenticationError,
    BufferTooShort,
)


def __getattr__(name: str) -> Any:
    """Everything else is the standard library's: an attribute of ``multiprocessing``
    (``reducer``...), or one of its submodules (``connection``, ``shared_memory``...)."""
    if name.startswith("__"):
        raise AttributeError(name)
    if name == "sharedctypes":
        return _sct  # shmipc's, with the stdlib's functions and arguments
    try:
        return getattr(_mp, name)
    except AttributeError:
        pass
    try:
        return importlib.import_module(f"multiprocessing.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'shmipc.mp' has no attribute {name!r}") from None
