"""shmipc: cross-process shared-memory IPC for Python at memory speed.

Regions of shared memory, robust sync primitives, rings, queues and topics that forked,
spawned and unrelated processes share without pickling through pipes. Linux only.
"""

import platform as _platform
import sys as _sys
from typing import TYPE_CHECKING as _TYPE_CHECKING

if not _sys.platform.startswith("linux"):
    raise ImportError(
        f"shmipc needs Linux (futexes and POSIX shared memory); this is {_sys.platform!r}"
    )
if _platform.machine() not in ("x86_64", "aarch64", "AMD64", "arm64"):
    raise ImportError(
        f"shmipc supports x86_64 and aarch64; this machine is {_platform.machine()!r}"
    )
if _sys.implementation.name != "cpython":
    # The fast paths are CPython-API types (csrc/fastpath.c); PyPy's cpyext would be slower
    # than the pure-Python fallbacks we do not ship.
    raise ImportError(
        f"shmipc needs CPython; this is {_sys.implementation.name!r} (see the classifiers)"
    )
if _sys.version_info < (3, 10):  # noqa: UP036 - setup.py refuses these too
    raise ImportError("shmipc needs CPython 3.10 or newer")

from ._version import __version__
from .buffers import BufferPool, Loan, PoolExhausted, PoolStatistics
from .errors import (
    Closed,
    CorruptedError,
    Evicted,
    Lagged,
    LayoutMismatch,
    MessageTooLarge,
    PeerDied,
    Revoked,
    ShmipcError,
)
from .joinable import JoinableQueue  # issue 10 (shmipc.mp)
from .queue import Queue
from .region import Region
from .ring import Ring, RingStatistics
from .sync import (  # issue 10 (shmipc.mp)
    AtomicCounter,
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    Lock,
    RLock,
    Semaphore,
)
from .topic import Publisher, Subscriber, Topic, TopicStatistics

__all__ = [
    "AtomicCounter",
    "Barrier",
    "BoundedSemaphore",
    "BrokenWorker",
    "BufferPool",
    "Closed",
    "Condition",
    "CorruptedError",
    "Event",
    "Evicted",
    "Executor",
    "JoinableQueue",
    "Lagged",
    "LayoutMismatch",
    "Loan",
    "Lock",
    "MessageTooLarge",
    "PeerDied",
    "Pool",
    "PoolExhausted",
    "PoolStatistics",
    "Publisher",
    "Queue",
    "RLock",
    "Region",
    "Revoked",
    "Ring",
    "RingStatistics",
    "Semaphore",
    "ShmipcError",
    "Subscriber",
    "Topic",
    "TopicStatistics",
    "__version__",
]

if _TYPE_CHECKING:
    from .pool import BrokenWorker, Executor, Pool


def __getattr__(name: str) -> object:
    # Pool, Executor and BrokenWorker load shmipc.pool (and multiprocessing.pool,
    # concurrent.futures.process) on first use, not with every `import shmipc`.
    if name in ("BrokenWorker", "Executor", "Pool"):
        from . import pool

        return getattr(pool, name)
    raise AttributeError(f"module 'shmipc' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names appear in dir() too, so completion and the surface test see them.
    return sorted(set(globals()) | {"BrokenWorker", "Executor", "Pool"})
