"""``shmipc.Pool`` and ``shmipc.Executor``: process pools whose tasks and results travel over
shmipc queues, and that survive a worker dying mid-task.

The interface is ``multiprocessing.Pool``'s (the result classes are the standard library's own:
``ApplyResult``, ``MapResult``, ``IMapIterator``) plus ``submit() -> concurrent.futures.Future``;
:class:`Executor` is a ``concurrent.futures.Executor`` over the same machinery.

How it works, and the invariants the fault handling rests on:

* Every worker has its own task queue (one producer: the parent, under ``Pool._lock``) and all
  workers share one result queue (codec "pickle": a drop-in must carry anything). The parent
  sends a task to the live worker with the fewest outstanding tasks, at most ``_PREFETCH``
  each (while the worker's tasks run under ``_FAST_TASK``, ``_QUEUED_WORK`` seconds of them,
  ``_PREFETCH_FAST`` to ``_PREFETCH_MAX``, unless it has been running one for ``_STALL_NS``),
  so it always knows which tasks each worker holds (``_Worker.tasks``, in send order).
* Before running a task a worker stores its sequence number in its slot of a small shared
  region (and beside it when it started: only a hint for the prefetch). A worker processes
  its queue in order, so when it dies, of the tasks it held: the one whose number is in its
  slot was running (its result never came: it fails with :class:`BrokenWorker`), the ones
  after it never started (they are sent again, to another worker), and the ones before it
  have results in the result queue already (``put`` stores synchronously before it returns).
* A task queue also carries function definitions, ``(-1 - number, function, (), {})``: the
  parent sends one to a worker (``Pool._define``, remembered in ``_Worker.fids``) before the
  first task frame that names the function by that number, on the same queue, so the worker
  has read it first. Definitions are not tasks: no slot, no result, no ``maxtasksperchild``
  count; a replacement worker has a new queue and an empty ``fids``, and is told again.
* The parent learns of a death from the process sentinel (watcher thread). It reads the dead
  worker's slot, starts a replacement in the same slot, then puts a "worker lost" marker into
  the result queue. The result queue is FIFO and the dead worker's last put completed before
  it died (a put cut short is discarded by the queue's revocation), so when the result thread
  reaches the marker every result the dead worker produced has been handled: whatever of its
  tasks is still outstanding never finished.
* Arrays and large buffers (pickle protocol 5 out-of-band buffers of ``zero_copy_threshold``
  bytes or more) travel in blocks of a ``BufferPool`` the pool owns (``_tune``: writable on
  receipt, in place for a sole holder, else copied; a dedicated segment rather than a wait
  when the classes are busy). The parent reclaims a dead worker's blocks as it replaces it.
* Workers watch the parent: a watchdog thread polls its identity (pid + start time, through
  :mod:`shmipc._proc`) every quarter of the liveness interval; workers started from the
  parent's main thread also get ``PR_SET_PDEATHSIG`` (SIGTERM, handled). A worker that finds
  its parent dead unlinks the pool's segment names and exits.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import functools
import io
import itertools
import multiprocessing
import multiprocessing.connection
import multiprocessing.pool as _stdpool
import os
import pickle
import pickletools
import queue as _queue
import signal
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from . import _proc
from .codec import PickleCodec
from .errors import Closed, CorruptedError, ShmipcError
from .queue import _OK, T_BYTES, Queue
from .region import SHM_DIR, Region, _unlink_if_ours

try:  # the block pool (numpy arrays and large buffers travel in its blocks)
    from .buffers import BufferPool
except ImportError:  # pragma: no cover - a build without it: arrays are pickled
    BufferPool = None  # type: ignore[assignment,misc]

__all__ = ["BrokenWorker", "Executor", "Pool"]

# The standard library's pool module: its result classes, task helpers and remote-traceback
# wrapper are reused as they are (private names, stable since 3.8; typeshed leaves them out).
_mpp: Any = _stdpool
_T = TypeVar("_T")
_FINISHED_STATES = frozenset(("FINISHED", "CANCELLED", "CANCELLED_AND_NOTIFIED"))

# The standard library's pool states: tests and tools compare ``pool._state`` with them.
INIT, RUN, CLOSE, TERMINATE = _mpp.INIT, _mpp.RUN, _mpp.CLOSE, _mpp.TERMINATE

_EXECUTOR_PREFETCH = 2
_PREFETCH = 8  # tasks sent ahead to one worker (its queue holds them while it runs one)
_PREFETCH_FAST = 64  # ... when its tasks have been taking under _FAST_TASK seconds each
_FAST_TASK = 100e-6
_STALL_NS = 2_000_000  # a worker running one task this long (ns) may be running a long one
_QUEUED_WORK = 0.005  # seconds of fast tasks a worker may have queued (at least _PREFETCH_FAST)
_TASK_COST = 1e-6  # seconds a worker spends on a task besides running it (taking, replying)
_PREFETCH_MAX = 8192  # (5,000 calls at once of a trivial function go straight to the workers)
_MAX_FUNCS = 1024  # module-level functions a pool sends by number (Pool._define)
_TASK_CAPACITY = 1 << 20
_RESULT_CAPACITY = 1 << 22
_MARKER = -1  # first field of a "worker lost" message in the result queue
_NUDGE = -2  # first field of a message that only wakes the result thread
_RX_GRACE = 0.01  # seconds the result thread leaves the result queue to waiting callers
_RX_ASIDE = 2  # ... and at most this many times that while calls are being submitted
_RX_BATCH = 512  # results read at most at a time
_RERAISE = object()  # an imap task that is the iterable's own exception
_DEATHSIG = signal.SIGHUP  # what PR_SET_PDEATHSIG sends a worker (see _watch_parent)
ZERO_COPY_THRESHOLD = 64 * 1024  # arrays/buffers of this many bytes or more go by block


def _block_classes(processes: int) -> dict[int, int]:
    """The default size classes of a pool's block pool: blocks of 64 KiB to 64 MiB, enough
    of each for every worker to hold an argument and a result with one more in flight (a
    segment's pages cost memory only once touched; larger payloads get a segment each)."""
    n = processes + 2
    return {1 << 16: 8 * n, 1 << 18: 4 * n, 1 << 20: 4 * n, 1 << 22: 2 * n, 1 << 24: n, 1 << 26: n}


def _blocks_size(classes: dict[int, int]) -> int:
    """Bytes a block pool with these classes needs (headers, page alignment and all)."""
    return sum(b * n + 128 * n for b, n in classes.items()) + (1 << 20)


#: A default block pool takes at most 1/_BLOCKS_SHARE of /dev/shm's free space, and at most
#: _BLOCKS_MAX bytes: its space is reserved when the pool is made (a segment is fallocated, so
#: that a full /dev/shm is an error then, never a SIGBUS later), so it must leave room for the
#: rest (Docker's default /dev/shm is 64 MiB; 64 workers' full classes would take 6 GiB).
_BLOCKS_SHARE = 4
_BLOCKS_MAX = 1 << 30


def _shm_free() -> int | None:
    """Bytes free in /dev/shm for us, or None if that cannot be read."""
    try:
        vfs = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return vfs.f_bavail * vfs.f_frsize


def _default_classes(processes: int) -> dict[int, int]:
    """_block_classes(processes) cut to the budget: the largest class's count halved (at
    zero, the class dropped) until the pool fits. A payload above the largest class left gets
    a segment of its own. Empty (no block pool) if not even the smallest classes fit."""
    classes = _block_classes(processes)
    budget = _BLOCKS_MAX
    free = _shm_free()
    if free is not None:  # else cannot tell: the creation itself says if space is missing
        budget = min(budget, free // _BLOCKS_SHARE)
    while classes and _blocks_size(classes) > budget:
        big = max(classes)
        classes[big] //= 2
        if not classes[big]:
            del classes[big]
    return classes


def _tune(queue: Queue) -> None:
    """A pool queue's block settings (set in every process: they do not travel with the
    handle): pickle out-of-band buffers by block, writable on receipt (docs/pool.md), and a
    dedicated segment rather than a wait when the classes are busy."""
    hook = queue._pool_hook
    if hook is not None:
        hook.pickle = True
        hook.writable = True
        hook.overflow = True


class BrokenWorker(ShmipcError, BrokenProcessPool):
    """The worker running this task died before finishing it (killed by a signal, crashed, or
    exited). The pool replaced the worker and goes on; only this task is lost.

    ``pid``: the worker's process id; ``exitcode``: as ``Process.exitcode`` (negative: the
    signal that killed it); ``signal``: the signal's name, or None.
    """

    def __init__(self, message: str, pid: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = _signal_name(exitcode) if exitcode is not None and exitcode < 0 else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0] if self.args else "", self.pid, self.exitcode))


def _signal_name(exitcode: int) -> str:
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _death(pid: int | None, exitcode: int | None) -> str:
    if exitcode is None:
        return f"worker process {pid} was lost"
    if exitcode < 0:
        return f"worker process {pid} was killed by {_signal_name(exitcode)}"
    return f"worker process {pid} exited with code {exitcode}"


# ---- framing ---------------------------------------------------------------------------------


def _leading_seq(data: Any) -> int | None:
    """The sequence number a task or result frame starts with (the first item of the pickled
    tuple), read from the opcodes without unpickling; None if it does not start with one."""
    try:
        for op, arg, _ in pickletools.genops(bytes(data)):
            if op.name in ("BININT", "BININT1", "BININT2", "LONG1"):
                return int(arg)  # type: ignore[arg-type]
            if op.name not in ("PROTO", "FRAME", "MARK"):
                return None
    except Exception:
        return None
    return None


def _undecodable_task(message: str, *args: Any, **kwargs: Any) -> None:
    raise RuntimeError(message)


class _TaskCodec(PickleCodec):
    """Pickle, except that a task that does not unpickle in the worker (its function's module
    is not importable there, say) becomes a task that raises why, instead of an error that
    would kill the worker (and the task, sent again, the next one)."""

    name = "shmipc.pool.tasks"

    @staticmethod
    def decode(data: Any) -> object:
        try:
            return pickle.loads(data)
        except MemoryError:
            raise
        except Exception as exc:
            seq = _leading_seq(data)
            if seq is None:
                raise CorruptedError(f"a pool task frame does not unpickle: {exc!r}") from exc
            why = f"the task could not be unpickled in worker process {os.getpid()}: {exc!r}"
            return (seq, _undecodable_task, (why,), {})

    @classmethod
    def decode_with_buffers(cls, data: Any, buffers: list[Any]) -> object:
        """A task whose large buffers came in pool blocks (shmipc.buffers.PoolHook)."""
        return cls.decode(data) if not buffers else cls._loads(data, buffers)

    @staticmethod
    def _loads(data: Any, buffers: list[Any]) -> object:
        try:
            return pickle.loads(data, buffers=buffers)
        except MemoryError:
            raise
        except Exception as exc:
            seq = _leading_seq(data)
            if seq is None:
                raise CorruptedError(f"a pool task frame does not unpickle: {exc!r}") from exc
            why = f"the task could not be unpickled in worker process {os.getpid()}: {exc!r}"
            return (seq, _undecodable_task, (why,), {})


class _ResultCodec(PickleCodec):
    """Pickle, except that a result that does not unpickle in the parent fails its task with
    why, instead of being lost (its AsyncResult would never complete)."""

    name = "shmipc.pool.results"

    @staticmethod
    def decode(data: Any) -> object:
        try:
            return pickle.loads(data)
        except MemoryError:
            raise
        except Exception as exc:
            seq = _leading_seq(data)
            if seq is None:
                raise CorruptedError(f"a pool result frame does not unpickle: {exc!r}") from exc
            why = RuntimeError(f"the result could not be unpickled here: {exc!r}")
            return (seq, False, why, 0.0)

    @classmethod
    def decode_with_buffers(cls, data: Any, buffers: list[Any]) -> object:
        """A result whose large buffers came in pool blocks (shmipc.buffers.PoolHook)."""
        try:
            return pickle.loads(data, buffers=buffers)
        except MemoryError:
            raise
        except Exception as exc:
            seq = _leading_seq(data)
            if seq is None:
                raise CorruptedError(f"a pool result frame does not unpickle: {exc!r}") from exc
            why = RuntimeError(f"the result could not be unpickled here: {exc!r}")
            return (seq, False, why, 0.0)


_TASKS = _TaskCodec()
_RESULTS = _ResultCodec()

# Values that pickle without out-of-band buffers whatever their size, so that a frame made of
# them needs neither the queue's codec nor its block hook: it goes straight to the ring as a
# raw record (_put_frame), and the receiver unpickles it itself (_worker_main, _receive),
# without the hook's per-record decode.
_PLAIN = frozenset((int, float, str, bytes, bool, type(None), complex))
_T_RAW = T_BYTES  # the record type of such a frame: the queue's get returns it as bytes
_dumps = pickle.dumps
_loads = pickle.loads
_monotonic_ns = time.monotonic_ns
_new_object = object.__new__
_dict_set = dict.__setitem__
_dict_pop = dict.pop  # the pool's cache (a dict subclass) without its Python slot
_FunctionType = types.FunctionType


_FUNC_OPS: dict[Any, bytes] = {}  # function -> its reference's pickle opcodes (no memo)


def _func_ops(func: Any) -> bytes | None:
    """The opcodes that push ``func`` (a module-level function, pickled by reference) with
    no memo entries, made once per function: pickling the reference costs more than the
    rest of a small task. None for anything else (a bound method or a partial may change:
    pickled each time)."""
    ops = _FUNC_OPS.get(func)
    if ops is None:
        if type(func) is not _FunctionType:
            return None
        buf = io.BytesIO()
        pickler = pickle.Pickler(buf, 5)
        pickler.fast = True  # no MEMOIZE: the opcodes can go anywhere in a frame
        try:
            pickler.dump(func)
        except Exception:
            return None
        data = buf.getvalue()
        ops = data[11:-1] if data[2] == 0x95 else data[2:-1]  # less PROTO, FRAME and STOP
        if any(
            op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT")
            for op, _, _ in pickletools.genops(data)
        ):
            return None
        if len(_FUNC_OPS) >= 256:
            _FUNC_OPS.clear()
        _FUNC_OPS[func] = ops
    return ops


def _all_plain(args: tuple[Any, ...], kwds: dict[str, Any]) -> bool:
    """Whether every argument is of a type a raw frame carries (_PLAIN)."""
    for v in args:
        if type(v) not in _PLAIN:
            return False
    if kwds:
        for v in kwds.values():
            if type(v) not in _PLAIN:
                return False
    return True


def _task_frame(seq: int, func: Any, args: tuple[Any, ...], kwds: dict[str, Any]) -> bytes | None:
    """The frame of task ``(seq, func, args, kwds)`` when its arguments are plain (else None:
    the queue's put encodes it): ``MARK seq func args kwds TUPLE``, with the function's
    opcodes cached (_func_ops) and the arguments pickled now. They hold every memo entry
    of the frame (the rest has none), so their indices stand as pickle wrote them."""
    if not _all_plain(args, kwds):
        return None
    return _plain_task_frame(seq, func, args, kwds)


def _plain_task_frame(
    seq: int, func: Any, args: tuple[Any, ...], kwds: dict[str, Any]
) -> bytes | None:
    """_task_frame of arguments already known to be plain."""
    ops = _FUNC_OPS.get(func)
    if ops is None:
        ops = _func_ops(func)
    if ops is None or seq >= 0x7FFFFFFF:
        try:
            return _dumps((seq, func, args, kwds), 5)
        except Exception:
            return None  # the queue's put raises the codec's error
    if kwds:
        rest = _dumps((args, kwds), 5)
        # One frame (or none) and the pair's TUPLE2 MEMOIZE STOP at the end, as pickle
        # writes a small pair; a large one (several frames) is pickled whole instead.
        if len(rest) > 60000 or rest[-3:] != b"\x86\x94.":
            return _dumps((seq, func, args, kwds), 5)
        body = rest[11:-3] if rest[2] == 0x95 else rest[2:-3]
        return b"".join((b"\x80\x05(J", seq.to_bytes(4, "little"), ops, body, b"t."))
    # No keywords (the common call): the arguments' tuple, then an empty dict (no memo).
    rest = _dumps(args, 5)
    if len(rest) > 60000:
        return _dumps((seq, func, args, kwds), 5)
    body = rest[11:-1] if rest[2] == 0x95 else rest[2:-1]  # less PROTO, FRAME and STOP
    return b"".join((b"\x80\x05(J", seq.to_bytes(4, "little"), ops, body, b"}t."))


def _put_frame(queue: Queue, frame: bytes, deadline: int) -> None:
    """Store a ready frame of plain values as a raw record (one native call; the queue's own
    slow path for the rest: a frame too large for the ring is spilled, and comes out as
    bytes all the same)."""
    rc = queue._fput(frame, _T_RAW, deadline)
    if rc != _OK:
        queue._put_slow(rc, frame, _T_RAW, deadline)


# ---- the worker process -------------------------------------------------------------------


def _worker_main(
    tasks: Queue,
    results: Queue,
    slots: Region,
    index: int,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    maxtasks: int | None,
    parent: tuple[int, int],
    liveness: float,
    deathsig: bool,
    names: tuple[str, ...],
) -> None:
    """Run tasks from ``tasks`` until a ``None`` sentinel, ``maxtasks`` tasks, or the death
    of ``parent`` (pid, start time)."""
    spills: tuple[Any, ...] = (tasks._spills, results._spills)
    if tasks._pool_hook is not None:
        spills += (_Dedicated(tasks._pool_hook.pool),)
    _watch_parent(parent, liveness, deathsig, names, spills)
    _tune(tasks)
    _tune(results)
    slot = slots.buffer.cast("q")
    if initializer is not None:
        initializer(*initargs)
    get, put = tasks.get, results.put
    fput, put_slow = results._fput, results._put_slow
    loads, decode_task = pickle.loads, _TASKS.decode
    reraise = _mpp._helper_reraises_exception
    plain = _PLAIN
    clock, clock_ns = time.perf_counter, time.monotonic_ns
    i2 = 2 * index
    funcs: dict[int, Any] = {}  # the functions the parent sends by number
    done = 0
    while maxtasks is None or done < maxtasks:
        task = get()
        if type(task) is bytes:  # a frame of plain values (_put_frame)
            try:
                task = loads(task)
            except Exception:
                task = decode_task(task)  # a task that raises why (or CorruptedError)
        elif task is None:
            break
        seq, func, args, kwds = task
        if type(func) is int:  # a function by its number (Pool._frame)
            known = funcs.get(func)
            if known is None:  # a corrupt frame: this task fails, the worker goes on
                known = functools.partial(
                    _undecodable_task,
                    f"task {seq} names function number {func}, which this worker was never "
                    "sent (a corrupt task frame)",
                )
            func = known
        elif seq < 0:  # the definition of a function's number (Pool._define)
            funcs[-1 - seq] = functools.partial(func, *args) if args else func
            continue
        # The slot: [2i] the task running (what the parent reads once this process is dead),
        # [2i+1] since when (CLOCK_MONOTONIC ns; stored first: a reader that sees the new
        # number sees its time; 0 once its result is stored). The parent sends no more than
        # the slow prefetch to a worker that has been running one task for _STALL_NS.
        slot[i2 + 1] = clock_ns()
        slot[i2] = seq
        # A result is (seq, ok, value, seconds the call took): the parent queues fast tasks
        # ahead by how long they run here, which wall-clock gaps between results (the
        # workers share cores) cannot tell it.
        start = clock()
        try:
            result = (seq, True, func(*args, **kwds), clock() - start)
        except Exception as exc:
            if func is not reraise:
                exc = _mpp.ExceptionWithTraceback(exc, exc.__traceback__)
            result = (seq, False, exc, clock() - start)
        if type(result[2]) in plain:  # the common small result: straight to the ring
            frame = _dumps(result, 5)
            rc = fput(frame, _T_RAW, -1)
            if rc != _OK:
                put_slow(rc, frame, _T_RAW, -1)
        else:
            try:
                put(result)
            except Exception as exc:
                put((seq, False, _mpp.MaybeEncodingError(exc, result[2]), result[3]))
        # Its result is stored: not running it any more, whenever the parent reads the
        # result (a parent busy submitting may read it milliseconds later; until then the
        # task is still outstanding there, and must not look like a long one, _pick).
        slot[i2 + 1] = 0
        task = func = args = kwds = result = frame = None  # type: ignore[assignment]
        done += 1


class _Dedicated:
    """The block pool's dedicated segments, as a spill space that an orphaned worker empties
    (``_orphaned_exit``): nobody else will remove them once the parent is dead."""

    def __init__(self, blocks: Any) -> None:
        self._blocks = blocks

    def remove_all(self) -> None:
        from .buffers import _unlink_segment

        for name in self._blocks._dedicated_names():
            _unlink_segment(name)


def _parent_dead(parent: tuple[int, int], ppid: int) -> bool:
    if ppid == parent[0] and os.getppid() != ppid:
        return True  # reparented: our parent is gone
    return _proc.process_state(*parent) is _proc.Liveness.DEAD


def _segment_idents(names: tuple[str, ...]) -> list[tuple[str, tuple[int, int] | None]]:
    """(name, (st_dev, st_ino)) of the pool's segments as this worker found them at start."""
    out: list[tuple[str, tuple[int, int] | None]] = []
    for name in names:
        try:
            st = os.stat(os.path.join(SHM_DIR, name), follow_symlinks=False)
            out.append((name, (st.st_dev, st.st_ino)))
        except (OSError, ValueError):
            out.append((name, None))
    return out


def _orphaned_exit(
    segments: list[tuple[str, tuple[int, int] | None]], spills: tuple[Any, ...] = ()
) -> None:
    """The parent died without closing the pool: remove its segment names (nobody else
    will; only while a name still names the segment we knew) and the large messages spilled
    beside its queues, then leave at once."""
    for space in spills:
        try:
            space.remove_all()
        except Exception:
            pass
    for name, ident in segments:
        try:
            _unlink_if_ours(name, ident)
        except Exception:
            pass
    os._exit(70)


def _watch_parent(
    parent: tuple[int, int],
    liveness: float,
    deathsig: bool,
    names: tuple[str, ...],
    spills: tuple[Any, ...] = (),
) -> None:
    ppid = os.getppid()
    segments = _segment_idents(names)
    if deathsig and ppid == parent[0]:
        # PR_SET_PDEATHSIG: the kernel signals us as the parent exits (valid only when the
        # thread that started us lives as long as the parent: the main thread). The signal
        # can come before the parent looks dead from here, and anyone may send it: wait for
        # the death to show (up to the liveness interval), otherwise carry on.

        def on_hangup(signum: int, frame: object) -> None:
            end = time.monotonic() + liveness
            while time.monotonic() < end:
                if _parent_dead(parent, ppid):
                    _orphaned_exit(segments, spills)
                time.sleep(0.005)

        signal.signal(_DEATHSIG, on_hangup)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(_DEATHSIG), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if _parent_dead(parent, ppid):
        _orphaned_exit(segments, spills)

    def watch() -> None:
        while True:
            time.sleep(liveness / 4)
            if _parent_dead(parent, ppid):
                _orphaned_exit(segments, spills)

    threading.Thread(target=watch, name="shmipc-pool-parent-watch", daemon=True).start()


# ---- the parent -----------------------------------------------------------------------------


def lost_tasks(held: dict[int, _T], running: int) -> tuple[_T | None, list[_T]]:
    """What became of the tasks a dead worker held: ``held`` maps sequence number to task,
    in send order, for the tasks whose result had not come when its "worker lost" marker
    came out of the result queue; ``running`` is the number in its slot. Returns the task
    that was running (it fails) and the ones it never started (they go again, in order).

    The worker takes tasks in send order and writes a task's number to its slot before it
    runs it, so: a held task with the slot's number started and never finished; the slot
    holds an older number (whose result came) when it died before starting the next one;
    every held task after the running one was never taken or only taken. (Model-checked by
    tests/unit/pool/test_lost_model.py with a kill between any two steps.)
    """
    failed = held.get(running)
    return failed, [task for seq, task in held.items() if seq != running]


class _Worker:
    """One worker process and what the parent has sent it."""

    __slots__ = (
        "budget",
        "dead",
        "fids",
        "index",
        "limit",
        "ok_until",
        "process",
        "put",
        "queue",
        "svc",
        "tasks",
    )

    def __init__(self, index: int, process: Any, queue: Queue, budget: float) -> None:
        self.index = index
        self.process = process
        self.queue = queue
        self.put = queue._fput  # a ready frame into its queue: one native call (_put_frame)
        self.budget = budget  # tasks it may still be sent (maxtasksperchild)
        self.dead = False
        # seq -> task, in send order: [job, i, func, args, kwds, started], or the job itself
        # (a _PoolFuture or _ApplyResult) of a call sent straight, its frame in its _frame
        # (Pool._send_direct, Pool._task_of)
        self.tasks: dict[int, Any] = {}
        self.svc = 1.0  # seconds its tasks run (moving average; long until measured)
        self.limit = 0  # tasks it may have queued while they are fast (0: the prefetch)
        self.ok_until = 0  # (monotonic ns) not running one task for _STALL_NS before this
        self.fids: set[int] = set()  # the function numbers it has been sent (Pool._define)


class _Notifier:
    """The ``_PoolCache`` notifier: the cache emptied, wake ``join``."""

    def __init__(self, cond: threading.Condition, lock: Any) -> None:
        self._cond = cond
        self._lock = lock  # the condition's

    def put(self, _item: object) -> None:
        # Waiters check the cache and start waiting under the lock: when it is free, the
        # waiter list is complete, and it is usually empty (nobody joins).
        if self._lock.acquire(False):
            try:
                if self._cond._waiters:  # type: ignore[attr-defined]
                    self._cond.notify_all()
            finally:
                self._lock.release()
        else:
            with self._cond:
                self._cond.notify_all()


def _remaining(deadline: float | None, cap: float) -> float:
    if deadline is None:
        return cap
    return min(cap, deadline - time.monotonic())


class _Driven:
    """``wait`` of the pool's AsyncResults: the waiting thread reads the results itself."""

    _event: threading.Event

    def _keep_driver(self, pool: Pool) -> None:
        self._driver: Pool | None = pool

    def ready(self) -> bool:
        return self._event.is_set()

    def _block(self, timeout: float | None) -> None:
        """Wait for the result without reading the result queue."""
        self._event.wait(timeout)

    def wait(self, timeout: float | None = None) -> None:
        pool = self._driver
        if pool is not None and not self.ready():
            pool._drive(self.ready, timeout)
        self._block(0 if pool is not None and timeout is not None else timeout)
        if self.ready():
            self._driver = None


_FLAG_LOCK = threading.Lock()


def _new_flag_lock() -> None:
    global _FLAG_LOCK
    _FLAG_LOCK = threading.Lock()  # a fork may copy it held by a thread that is not copied


os.register_at_fork(after_in_child=_new_flag_lock)


class _ApplyResult(_Driven, _mpp.ApplyResult):
    """An AsyncResult whose Event is made only when a thread has to block on it (most never
    do: the waiting thread reads the results itself, see Pool._drive); until then its flag is
    ``_done`` (an Event costs more to make than the rest of a call's bookkeeping in the
    parent, and one more tracked object per call). Setting stores ``_done`` before it looks
    for the Event; a blocking waiter stores its Event before it looks at ``_done`` (the GIL
    orders them), so either the setter sets the Event or the waiter sees the flag. It enters
    the pool's cache when its call is submitted (``Pool._submit_call``), not when made."""

    _frame: bytes | None = None  # its call's frame while a worker holds it (_send_direct)
    _done = False
    _waiter: threading.Event | None = None

    def __init__(self, pool: Pool, callback: Any, error_callback: Any) -> None:
        # not ApplyResult.__init__: no Event, no cache entry yet
        self._pool: Pool | None = pool
        self._driver = pool
        self._job = next(_job_counter)
        self._cache = pool._cache
        self._callback = callback
        self._error_callback = error_callback

    def ready(self) -> bool:
        return self._done

    def _set_done(self) -> None:
        self._done = True
        waiter = self._waiter
        if waiter is not None:
            waiter.set()

    def _block(self, timeout: float | None) -> None:
        if self._done:
            return
        waiter = self._waiter
        if waiter is None:
            with _FLAG_LOCK:
                waiter = self._waiter
                if waiter is None:
                    waiter = self._waiter = threading.Event()
        if not self._done:
            waiter.wait(timeout)

    def _set(self, i: int, obj: tuple[bool, Any]) -> None:
        # ApplyResult._set, with the flag and the cache entry handled inline
        self._success, self._value = obj
        if self._callback and self._success:
            self._callback(self._value)
        if self._error_callback and not self._success:
            self._error_callback(self._value)
        self._set_done()
        cache = self._cache
        dict.__delitem__(cache, self._job)
        if not cache:
            cache.notifier.put(None)
        self._pool = None

    def get(self, timeout: float | None = None) -> Any:
        if not self._done:
            self.wait(timeout)
            if not self._done:
                raise multiprocessing.TimeoutError
        self._driver = None
        if self._success:
            return self._value
        raise self._value


class _MapResult(_Driven, _mpp.MapResult):
    def __init__(
        self, pool: Pool, chunksize: int, length: int, callback: Any, error_callback: Any
    ) -> None:
        _mpp.MapResult.__init__(self, pool, chunksize, length, callback, error_callback)
        self._keep_driver(pool)


_PENDING, _RUNNING, _FINISHED = "PENDING", "RUNNING", "FINISHED"
_OPEN_STATES = frozenset((_PENDING, _RUNNING))
_job_counter = _mpp.job_counter
_CANCELLED_STATES = frozenset(("CANCELLED", "CANCELLED_AND_NOTIFIED"))


class _PoolFuture(concurrent.futures.Future):  # type: ignore[type-arg,unused-ignore]
    """A Future whose ``result``/``exception`` read the pool's results in the waiting
    thread (see Pool._drive), and whose Condition is made on first use.

    Most futures of a pool are started, completed and read by threads that never wait on
    the Condition, so making one per future costs more than the rest of a call in the
    parent. Until it exists, the pool's own transitions (start, result, exception) run under
    the module's ``_FLAG_LOCK``; it is made under that lock too, so a transition either
    finished before it existed or runs under it, and whatever needs it (a waiter, a done
    callback, cancel, concurrent.futures.wait) makes it first.

    The waiter and callback lists are made with the Condition too (everything that uses them
    holds it): a future costs one tracked object, not three, which also spaces out the
    collector's passes. It is also its own job in the pool's cache (``_job``, ``_set``): a
    ``submit`` makes one object, not a future and a job beside it."""

    # Until the Condition is made: nothing waits and no callback (read-only stand-ins)
    _waiters: Any = ()
    _done_callbacks: Any = ()
    # Defaults a new future reads here until they are set (fewer stores per submit)
    _cond: threading.Condition | None = None
    _frame: bytes | None = None  # its task's frame while a worker holds it (submit)
    _result: Any = None
    _exception: BaseException | None = None

    def __init__(self, pool: Pool) -> None:
        # Future.__init__, less the Condition and its lists (the _condition property).
        # (Pool._submit_future makes them without this call: keep the two in step.)
        self._state = _PENDING
        self._driver: Pool | None = pool
        self._job = next(_job_counter)  # its key in the cache (the caller enters it)
        self._cache = pool._cache

    def _set(self, i: int, obj: tuple[bool, Any]) -> None:
        """The job's completion (the cache's interface): the result or the exception."""
        ok, value = obj
        lock = _FLAG_LOCK
        lock.acquire()  # set_result/set_exception inline, while nobody waits (see above)
        settled = self._cond is None and self._state in _OPEN_STATES
        if settled:
            if ok:
                self._result = value
            else:
                self._exception = value
            self._state = _FINISHED
        lock.release()
        self._driver = None  # nothing left to read for it (and the pool may go)
        if not settled:
            try:  # (one trip through the future's lock: it checks that it is not done)
                if ok:
                    self.set_result(value)
                else:
                    self.set_exception(value)
            except concurrent.futures.InvalidStateError:
                pass  # cancelled, or failed already
        cache = self._cache
        cache.pop(self._job, None)
        if not cache:
            cache.notifier.put(None)

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is None:
            with _FLAG_LOCK:
                cond = self._cond
                if cond is None:
                    self._waiters = []
                    self._done_callbacks = []
                    cond = self._cond = threading.Condition()
        return cond

    def set_running_or_notify_cancel(self) -> bool:
        with _FLAG_LOCK:
            if self._cond is None and self._state == _PENDING:
                self._state = _RUNNING
                return True
        return super().set_running_or_notify_cancel()

    def set_result(self, result: Any) -> None:
        with _FLAG_LOCK:
            if self._cond is None and self._state in (_PENDING, _RUNNING):
                self._result = result
                self._state = _FINISHED  # nobody waits and no callback: both need _cond
                return
        super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        with _FLAG_LOCK:
            if self._cond is None and self._state in (_PENDING, _RUNNING):
                self._exception = exception
                self._state = _FINISHED
                return
        super().set_exception(exception)

    def done(self) -> bool:
        return self._state in _FINISHED_STATES  # one read: the lock adds nothing

    def running(self) -> bool:
        return self._state == _RUNNING

    def cancelled(self) -> bool:
        return self._state in _CANCELLED_STATES

    def cancel(self) -> bool:
        # A started or finished future cannot be cancelled: say so without making the
        # Condition (Executor.map cancels every future it has read a result from).
        with _FLAG_LOCK:
            if self._cond is None and self._state in (_RUNNING, _FINISHED):
                return False
        return super().cancel()

    def _drive(self, timeout: float | None) -> float | None:
        pool = self._driver
        if pool is None or self._state in _FINISHED_STATES:
            return timeout
        start = time.monotonic()
        pool._drive(self._ready, timeout)
        if self._state in _FINISHED_STATES:
            self._driver = None
        return None if timeout is None else max(0.0, timeout - (time.monotonic() - start))

    def _ready(self) -> bool:
        # Read without the future's lock (a hint: result() then checks under it); _drive
        # asks after every batch of results, and the lock costs more than the rest of it.
        return self._state in _FINISHED_STATES

    def result(self, timeout: float | None = None) -> Any:
        if self._state == _FINISHED and self._exception is None:
            return self._result  # (set before the state, under a lock)
        timeout = self._drive(timeout)
        if self._state == _FINISHED and self._exception is None:
            return self._result
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        timeout = self._drive(timeout)
        if self._state == _FINISHED:
            return self._exception
        return super().exception(timeout)


class Pool:
    """A process pool with ``multiprocessing.Pool``'s interface whose tasks and results go
    through shmipc queues; a worker that dies mid-task fails that task with
    :class:`BrokenWorker` and is replaced, and the pool goes on. ``context``: a
    multiprocessing context (fork, spawn or forkserver); the default start method if None.
    """

    _wrap_exception = True

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        liveness: float = 1.0,
        zero_copy_threshold: int | None = ZERO_COPY_THRESHOLD,
        buffer_pool_size: int | None = None,
    ) -> None:
        self._pool: list[Any] = []  # the worker processes, as multiprocessing.Pool's _pool
        self._state = INIT
        self._workers: list[_Worker] = []
        if processes is None:
            processes = os.cpu_count() or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if liveness <= 0:
            raise ValueError("liveness must be positive")
        if zero_copy_threshold is not None and (
            isinstance(zero_copy_threshold, bool)
            or not isinstance(zero_copy_threshold, int)
            or zero_copy_threshold < 1
        ):
            raise ValueError(
                f"zero_copy_threshold must be an int >= 1 or None, not {zero_copy_threshold!r}"
            )
        self._ctx = context if context is not None else multiprocessing.get_context()
        if isinstance(self._ctx, str):
            self._ctx = multiprocessing.get_context(self._ctx)
        self._processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._maxtasksperchild = maxtasksperchild
        self._liveness = liveness
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._cache = _mpp._PoolCache(notifier=_Notifier(self._cond, self._lock))
        self._pending: collections.deque[list[Any]] = collections.deque()
        self._inflight: dict[int, _Worker] = {}
        self._seq = itertools.count(1)
        self._feeding = 0  # imap generators the task thread is still reading
        self._fids: dict[Any, int] = {}  # module-level function -> its number (_define)
        self._fid_fns: list[Any] = []  # number -> function (_define, _task_of)
        self._taskqueue: _queue.SimpleQueue[Any] = _queue.SimpleQueue()
        self._parent = _proc.self_identity()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._blocks: Any = None
        self._threshold = zero_copy_threshold
        if zero_copy_threshold is not None and BufferPool is not None:
            if buffer_pool_size is None:
                classes = _default_classes(processes)
                if classes:  # else too little /dev/shm: everything is pickled inline
                    self._blocks = BufferPool.create(
                        size=_blocks_size(classes), classes=classes, liveness_interval=liveness
                    )
            else:
                self._blocks = BufferPool.create(size=buffer_pool_size, liveness_interval=liveness)
        try:
            self._results = self._queue(_RESULT_CAPACITY, _RESULTS)
            self._slots = Region.create(16 * processes)
            self._slot_view = self._slots.buffer.cast("q")  # released before the close
        except BaseException:
            self._release_segments()
            raise
        self._stopping = False
        self._draining = False
        self._maintain_lock = threading.Lock()
        self._prefetch = _PREFETCH
        self._prefetch_fast = _PREFETCH_FAST
        self._feed_low = 2 * _PREFETCH * processes  # imap: refill the line below this
        self._rx = threading.Lock()
        self._rx_mutex = threading.Lock()  # _rx_cond's (taken directly where nobody waits)
        self._rx_cond = threading.Condition(self._rx_mutex)
        self._rx_owner: int | None = None
        self._rx_wanted = 0
        self._rx_in_get = False
        self._rx_left = 0.0
        self._calls = 0  # calls submitted (_submit_call): the result thread's "submitting now"
        self._rx_batch = 0  # results in the last batch read (_receive)
        self._lost: dict[int, tuple[_Worker, int, int | None, int | None]] = {}
        self._threads: list[threading.Thread] = []
        try:
            for index in range(processes):
                self._workers.append(self._start_worker(index))
                self._pool.append(self._workers[-1].process)
        except BaseException:
            self._kill_all()
            self._release_segments()
            raise
        for target, name in (
            (self._handle_results, "results"),
            (self._handle_workers, "workers"),
            (self._handle_tasks, "tasks"),
        ):
            t = threading.Thread(target=target, name=f"shmipc-pool-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self._terminate = multiprocessing.util.Finalize(
            self, Pool._finalize, args=(_Shutdown(self),), exitpriority=15
        )
        self._state = RUN

    # ---- workers ------------------------------------------------------------------------

    def _queue(self, capacity: int, codec: Any) -> Queue:
        if self._blocks is None or self._threshold is None:
            return Queue(capacity=capacity, codec=codec)
        queue: Queue[Any] = Queue(
            capacity=capacity, codec=codec, pool=self._blocks, zero_copy_threshold=self._threshold
        )
        _tune(queue)
        return queue

    @property
    def buffer_pool(self) -> Any:
        """The :class:`~shmipc.BufferPool` arrays travel through (None: they are pickled)."""
        return self._blocks

    def _start_worker(self, index: int) -> _Worker:
        queue = self._queue(_TASK_CAPACITY, _TASKS)
        names: tuple[str, ...] = (queue.name, self._results.name, self._slots.name or "")
        if self._blocks is not None:
            names += (self._blocks.name,)
        process = self._ctx.Process(
            target=_worker_main,
            args=(
                queue,
                self._results,
                self._slots,
                index,
                self._initializer,
                self._initargs,
                self._maxtasksperchild,
                self._parent,
                self._liveness,
                threading.current_thread() is threading.main_thread(),
                names,
            ),
            name=f"ShmipcPoolWorker-{index}",
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            queue.close()
            raise
        budget = self._maxtasksperchild or float("inf")
        return _Worker(index, process, queue, budget)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _handle_workers(self) -> None:
        """Watch the worker processes; replace the ones that end (see the module docstring)."""
        while not self._stopping:
            with self._lock:
                sentinels = {w.process.sentinel: w for w in self._workers if not w.dead}
            ready = multiprocessing.connection.wait([*sentinels, self._wake_r])
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass
            if self._stopping:
                break
            if any(s in sentinels for s in ready):
                self._maintain()

    def _maintain(self) -> None:
        """Replace every worker whose process has ended (while the pool runs or has work),
        then tell the result thread through a marker behind the dead worker's last result."""
        with self._maintain_lock:
            lost = []
            with self._lock:
                for index, w in enumerate(self._workers):
                    if w.dead or w.process.is_alive():
                        continue
                    w.process.join(0)
                    w.dead = True
                    token = next(self._seq)
                    running = self._slots.buffer.cast("q")[2 * index]
                    self._lost[token] = (w, running, w.process.pid, w.process.exitcode)
                    lost.append((index, token))
            blocks = self._blocks
            if lost and blocks is not None:
                try:  # the blocks the dead held (its arguments, a loan) go back now
                    blocks.reclaim()
                except Exception:
                    pass
            for index, token in lost:
                with self._lock:
                    replace = (
                        not self._draining
                        and self._state != TERMINATE
                        and (self._state == RUN or self._pending or self._inflight or self._feeding)
                    )
                if replace:
                    try:
                        new = self._start_worker(index)
                    except Exception as exc:  # cannot start a process: work waits
                        warnings.warn(
                            f"shmipc.Pool could not replace a worker: {exc}",
                            RuntimeWarning,
                            stacklevel=1,
                        )
                    else:
                        with self._lock:
                            self._workers[index] = new
                            self._pool[index] = new.process
                # Never dropped while the pool lives: the dead worker's tasks are settled
                # only when this marker comes out of the queue (a full queue drains).
                while not self._stopping:
                    try:
                        self._results.put((_MARKER, token), timeout=self._liveness)
                        break
                    except _queue.Full:
                        continue
                    except Exception:
                        break
        self._wake()

    def _repopulate_pool(self) -> None:
        """Replace workers that have exited now (multiprocessing.Pool's name for it)."""
        self._maintain()

    # ---- dispatch -----------------------------------------------------------------------

    def _pick(self) -> _Worker | None:
        """The live worker with the fewest tasks that has room for one more (lock held)."""
        best = None
        least = now = 0
        prefetch = self._prefetch
        for w in self._workers:
            n = len(w.tasks)
            if best is not None and n >= least:
                continue
            if w.dead or w.budget <= 0:
                continue
            if not n:
                return w
            if n >= prefetch:
                # Fast tasks may wait beyond the prefetch (w.limit, see _receive) unless it
                # has been running one of ours for _STALL_NS: a long one (or it has no CPU).
                # Its slot says since when (0: idle, its last result stored) and which. No
                # task it starts at or after `since` (or after an idle reading) can have run
                # that long before since + _STALL_NS: until then it is not read again.
                if n >= w.limit:
                    continue
                if now == 0:
                    now = _monotonic_ns()
                if now >= w.ok_until:
                    i = 2 * w.index
                    try:
                        since = self._slot_view[i + 1]
                        if not since:
                            w.ok_until = now + _STALL_NS
                        elif now - since < _STALL_NS:
                            w.ok_until = since + _STALL_NS
                        elif self._slot_view[i] in w.tasks:
                            continue
                    except (ValueError, IndexError):  # released: the pool is stopping
                        pass
            best, least = w, n
        return best

    def _pump(self, failed: list[tuple[Any, int, tuple[bool, Any]]]) -> None:
        """Send pending tasks while some worker has room (lock held). Tasks that cannot be
        sent (the arguments do not pickle) go to ``failed``, to be completed outside the lock."""
        pending = self._pending
        if not pending:
            return
        while pending:
            w = self._pick()
            if w is None:
                return
            task = pending[0]
            job = self._cache.get(task[0])
            if job is None:
                pending.popleft()
                continue
            if not task[5] and isinstance(job, _PoolFuture):
                if not job.set_running_or_notify_cancel():
                    pending.popleft()
                    self._cache.pop(task[0], None)
                    if not self._cache:
                        self._cond.notify_all()
                    continue
                task[5] = True
            seq = next(self._seq)
            msg = (seq, task[2], task[3], task[4])
            try:
                frame = self._frame(w, seq, task[2], task[3], task[4])
                if frame is not None:
                    _put_frame(w.queue, frame, 0)
                else:
                    w.queue.put(msg, timeout=0)
            except _queue.Full:
                w.budget, budget = 0, w.budget  # full ring: try another worker this round
                try:
                    self._pump(failed)
                finally:
                    w.budget = budget
                return
            except Closed:
                return
            except Exception as exc:
                pending.popleft()
                failed.append((task[0], task[1], (False, exc)))
                continue
            pending.popleft()
            w.tasks[seq] = task
            w.budget -= 1
            self._inflight[seq] = w
            if self._feeding and len(pending) == self._feed_low:
                self._cond.notify_all()  # the task thread waits for room (_handle_tasks)

    def _frame(
        self, w: _Worker, seq: int, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bytes | None:
        """The raw frame of a task for worker ``w`` when its arguments are plain (else None:
        the queue's put encodes it): ``(seq, number, args, kwargs)`` with a module-level
        function by the number ``w`` knows it by (one pickle call here, and no import
        lookup in the worker), else ``_task_frame`` (the function's reference spliced in)
        (lock held)."""
        if not _all_plain(args, kwargs):
            return None
        fid = self._fids.get(fn) if type(fn) is _FunctionType else None
        if fid is None or fid not in w.fids:
            fid = self._define(w, fn)
            if fid is None:
                return _plain_task_frame(seq, fn, args, kwargs)
        try:
            frame = _dumps((seq, fid, args, kwargs), 5)
        except Exception:
            return None  # the queue's put raises the codec's error
        return frame

    def _define(self, w: _Worker, fn: Any) -> int | None:
        """Send worker ``w`` the definition of ``fn``'s number, ahead of its first task that
        names it (its queue is FIFO); None if ``fn`` has no number (not a module-level
        function, or _MAX_FUNCS numbered already) or the definition cannot be sent now.
        A definition is ``(-1 - number, fn, (), {})``: one whose function does not unpickle
        in the worker comes out as ``(-1 - number, _undecodable_task, (why,), {})``
        (_TaskCodec), and the tasks that name it raise why there (lock held)."""
        if type(fn) is not _FunctionType:
            return None
        fid = self._fids.get(fn)
        if fid is None:
            if len(self._fids) >= _MAX_FUNCS:
                return None
            fid = self._fids[fn] = len(self._fids)
            self._fid_fns.append(fn)
        try:
            w.queue.put((-1 - fid, fn, (), {}), timeout=0)
        except Exception:
            return None
        w.fids.add(fid)
        return fid

    def _complete(self, done: list[tuple[Any, int, tuple[bool, Any]]]) -> None:
        cache = self._cache
        get = cache.get
        lock = _FLAG_LOCK
        settled = False
        for job_id, i, obj in done:
            job = get(job_id)
            if job is None:
                continue
            if type(job) is _PoolFuture and job._cond is None:
                # _PoolFuture._set inline while nobody waits on it (the common future)
                lock.acquire()
                if job._cond is None and job._state in _OPEN_STATES:
                    if obj[0]:
                        job._result = obj[1]
                    else:
                        job._exception = obj[1]
                    job._state = _FINISHED
                    lock.release()
                    job._driver = None
                    _dict_pop(cache, job_id, None)
                    settled = True
                    continue
                lock.release()
            elif type(job) is _ApplyResult and not job._callback and not job._error_callback:
                # _ApplyResult._set inline (nothing to call back)
                job._success, job._value = obj
                job._set_done()
                _dict_pop(cache, job_id, None)
                job._pool = None
                settled = True
                continue
            job._set(i, obj)
        if settled and not cache:
            cache.notifier.put(None)

    def _send_direct(
        self, job: Any, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool | None:
        """Send a new call past the line, straight to a worker with room (lock held, the line
        empty): True when sent (``job`` entered in the cache and the worker's tasks); False
        when no worker has room; None when it has to go through the line (arguments that are
        not plain, or a full ring: _pump deals with those)."""
        w = self._pick()
        if w is None:
            return False
        seq = next(self._seq)
        frame = self._frame(w, seq, fn, args, kwargs)
        if frame is None or w.put(frame, _T_RAW, 0) != _OK:
            return None
        if type(job) is _PoolFuture:
            # Nobody else has the future until it enters the cache: it starts without the
            # lock its transitions take once it is shared.
            job._state = _RUNNING
        jid = job._job
        _dict_set(self._cache, jid, job)
        if type(fn) is _FunctionType:
            # The job is the task, with its frame (no list, no arguments kept): one object
            # per call outlives the call, which spaces out the collector's passes. The frame
            # names the function by reference, so _task_of reads the same one back.
            job._frame = frame
            w.tasks[seq] = job
        else:
            w.tasks[seq] = [jid, 0, fn, args, kwargs, True]
        w.budget -= 1
        self._inflight[seq] = w
        return True

    def _submit_tasks(self, tasks: Iterable[list[Any]]) -> None:
        failed: list[tuple[Any, int, tuple[bool, Any]]] = []
        with self._lock:
            self._pending.extend(tasks)
            self._pump(failed)
        if failed:
            self._complete(failed)

    def _submit_call(
        self,
        job: Any,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        failed: list[tuple[Any, int, tuple[bool, Any]]],
    ) -> None:
        """Send one call of ``job`` (lock held): straight to a worker when nothing waits in
        line (_send_direct), else into the line. A call that joins a line already waiting
        needs no pump, nor one that just found no worker with room: the line waits because
        no worker has room, and room only comes with a result or a replaced worker's marker,
        after which _receive pumps."""
        self._calls += 1
        pending = self._pending
        sent = False if pending else self._send_direct(job, fn, args, kwargs)
        if sent:
            return
        jid = job._job
        _dict_set(self._cache, jid, job)
        pending.append([jid, 0, fn, args, kwargs, False])
        if sent is None:
            self._pump(failed)

    # ---- receiving results ------------------------------------------------------------
    #
    # One thread at a time reads the result queue: whoever holds ``_rx``. A caller waiting on
    # a result (AsyncResult.get/wait, Future.result/exception) takes that role itself, so a
    # result reaches it without a hop through another thread (the hop costs more than the
    # whole round trip to the worker); the result thread holds it otherwise, so callbacks
    # and join() progress with nobody waiting. The result thread steps aside while callers
    # want the role and for _RX_GRACE after the last one left (a caller in a loop of
    # submit-then-wait keeps it), and a caller that finds it blocked in the queue wakes it
    # with a _NUDGE message. ``_rx_wanted``/``_rx_in_get`` change under ``_rx_cond``: either
    # the result thread sees a caller wanting the role, or the caller sees it in the queue.
    # The holder does the bookkeeping of a batch (under ``_lock``) before it lets go of
    # ``_rx``, so results and "worker lost" markers are handled in queue order.

    def _receive(self, timeout: float) -> bool:
        """Take one batch off the result queue and handle it (``_rx`` held). False when the
        queue is closed or a stop message came."""
        try:
            batch = self._results.get_many(_RX_BATCH, timeout=timeout)
        except _queue.Empty:
            self._rx_batch = 0
            return True
        except Closed:
            return False
        except Exception as exc:  # a result that does not unpickle here: it is lost
            warnings.warn(f"shmipc.Pool dropped a result: {exc!r}", RuntimeWarning, stacklevel=1)
            return True
        self._rx_batch = len(batch)
        done: list[tuple[Any, int, tuple[bool, Any]]] = []
        go_on = True
        with self._lock:
            took = self._inflight.pop
            for msg in batch:
                if type(msg) is bytes:  # a result of plain values (_put_frame)
                    try:
                        msg = _loads(msg)
                    except Exception:
                        try:  # it fails its task with why, if its number can be read
                            msg = _RESULTS.decode(msg)
                        except Exception as exc:
                            warnings.warn(
                                f"shmipc.Pool dropped a result: {exc!r}",
                                RuntimeWarning,
                                stacklevel=1,
                            )
                            continue
                elif msg is None:
                    go_on = False
                    continue
                seq = msg[0]
                w = took(seq, None)
                if w is None:  # a marker, a nudge (negative numbers), or a task settled
                    if seq == _MARKER:
                        self._worker_lost(msg, done)
                    continue
                task = w.tasks.pop(seq)
                if type(task) is list:
                    done.append((task[0], task[1], (msg[1], msg[2])))
                else:  # the job of a call sent straight (_send_direct): its frame is done with
                    task._frame = None
                    done.append((task._job, 0, (msg[1], msg[2])))
                w.svc += (msg[3] - w.svc) * 0.25
            for w in self._workers:  # how many of its tasks may wait at each worker
                svc = w.svc
                w.limit = (
                    max(
                        self._prefetch_fast,
                        min(_PREFETCH_MAX, int(_QUEUED_WORK / (svc + _TASK_COST))),
                    )
                    if svc < _FAST_TASK
                    else 0
                )
            if self._pending:
                self._pump(done)
        batch = msg = task = None  # type: ignore[assignment]
        self._complete(done)
        return go_on and not self._stopping

    def _handle_results(self) -> None:
        cond = self._rx_cond
        seen = -1
        backlog = False  # the last batch was a full one: more wait, read on
        while True:
            with cond:
                aside = 0
                while not self._stopping:
                    if self._rx_wanted or time.monotonic() - self._rx_left < _RX_GRACE:
                        cond.wait(_RX_GRACE)
                        continue
                    # A thread is submitting calls straight to the workers (the line is
                    # empty: nothing waits for a result to make room): their results wait
                    # here a little and come in larger batches. Reading them one by one
                    # meanwhile, this thread would trade the GIL and the pool's lock with
                    # the submitter for every few results, which costs more than both
                    # threads' work. At most _RX_ASIDE rounds, so callbacks still run while
                    # a stream of calls goes on.
                    calls = self._calls
                    if calls != seen and aside < _RX_ASIDE and not (self._pending or backlog):
                        seen = calls
                        aside += 1
                        cond.wait(_RX_GRACE)
                        continue
                    seen = calls
                    break
                if self._stopping:
                    return
                self._rx_in_get = True
            got = self._rx.acquire(timeout=0.05)
            try:
                if got:
                    # A callback run from here that waits on a result receives in this
                    # thread (_drive checks _rx_owner), instead of waiting for itself.
                    self._rx_owner = threading.get_ident()
                    with cond:
                        wanted = self._rx_wanted
                    if not wanted:
                        if not self._receive(self._liveness):
                            return
                        backlog = self._rx_batch >= _RX_BATCH
            finally:
                with cond:
                    self._rx_in_get = False
                if got:
                    self._rx_owner = None
                    self._rx.release()

    def _drive(self, ready: Callable[[], bool], timeout: float | None) -> None:
        """Wait until ``ready()``, reading the result queue in this thread (see above)."""
        if ready():
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.get_ident()
        if self._rx_owner == me:  # a callback of ours waits: we hold the role already
            while not ready() and self._receive(_remaining(deadline, self._liveness)):
                if deadline is not None and time.monotonic() >= deadline:
                    return
            return
        mutex = self._rx_mutex
        with mutex:
            self._rx_wanted += 1
            nudge = self._rx_in_get
        try:
            if nudge:
                try:
                    self._results.put((_NUDGE,), timeout=0)
                except Exception:
                    pass
            rx, receive, liveness = self._rx, self._receive, self._liveness
            while not ready():
                if deadline is None:
                    if not rx.acquire(timeout=0.002):
                        continue  # another thread receives: it may be handling ours
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    if not rx.acquire(timeout=min(left, 0.002)):
                        continue
                self._rx_owner = me
                try:
                    while not ready():
                        if deadline is None:
                            if not receive(liveness):
                                return
                        else:
                            if not receive(min(liveness, deadline - time.monotonic())):
                                return
                            if time.monotonic() >= deadline:
                                return
                finally:
                    self._rx_owner = None
                    rx.release()
        finally:
            with mutex:
                self._rx_wanted -= 1
                self._rx_left = time.monotonic()

    def _worker_lost(self, msg: tuple[Any, ...], done: list[Any]) -> None:
        """The marker of a dead worker: every result it produced has been handled (lock held).
        The task in its slot was running and fails; the ones it had not started go again."""
        w, running, pid, exitcode = self._lost.pop(msg[1])
        for seq in w.tasks:
            self._inflight.pop(seq, None)
        failed, again = lost_tasks(w.tasks, running)
        if failed is not None:
            failed = self._task_of(failed)
        again = [self._task_of(task) for task in again]
        if failed is not None:
            err = BrokenWorker(
                f"{_death(pid, exitcode)} while running this task; the pool replaced it",
                pid,
                exitcode,
            )
            done.append((failed[0], failed[1], (False, err)))
        w.tasks.clear()
        self._pending.extendleft(reversed(again))
        try:
            w.queue.close()
        except Exception:
            pass

    def _task_of(self, task: Any) -> list[Any]:
        """A held task as a list ``[job, i, func, args, kwds, started]``: a call sent
        straight is held as its job and frame, which is read back here (a dead worker's
        tasks go again; rare enough that this, not every call, pays for it)."""
        if type(task) is list:
            return task
        _, fn, args, kwargs = _loads(task._frame)
        task._frame = None
        if type(fn) is int:
            fn = self._fid_fns[fn]
        return [task._job, 0, fn, args, kwargs, True]

    def _handle_tasks(self) -> None:
        """Read imap generators (they may be slow or raise) and queue their tasks."""
        for taskseq, set_length in iter(self._taskqueue.get, None):
            idx = -1
            try:
                for idx, task in enumerate(taskseq):  # noqa: B007 - read after the loop
                    if self._state == TERMINATE:
                        break
                    if task[2] is _RERAISE:
                        self._complete([(task[0], task[1], (False, task[3]))])
                        continue
                    with self._lock:
                        while len(self._pending) > 2 * self._feed_low:
                            if self._state == TERMINATE:
                                break
                            self._cond.wait(0.1)
                    self._submit_tasks([task])
                else:
                    set_length(idx + 1)
            finally:
                taskseq = None
                with self._lock:
                    self._feeding -= 1
                    self._cond.notify_all()

    def _guarded(
        self, job: Any, func: Callable[..., Any], iterable: Iterable[Any]
    ) -> Iterator[list[Any]]:
        """The tasks of an imap; an exception from the iterable completes the job's next
        index with it (in the parent: it is not a remote error)."""
        i = -1
        try:
            for i, x in enumerate(iterable):
                yield [job._job, i, func, (x,), {}, False]
        except Exception as exc:
            yield [job._job, i + 1, _RERAISE, exc]

    # ---- the multiprocessing.Pool interface -----------------------------------------------

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def apply(
        self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None
    ) -> Any:
        """``func(*args, **kwds)`` in a worker; waits for the result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> _mpp.ApplyResult:
        """Run ``func(*args, **kwds)`` in a worker; an AsyncResult."""
        if self._state != RUN:
            raise ValueError("Pool not running")
        result = _ApplyResult(self, callback, error_callback)
        failed: list[tuple[Any, int, tuple[bool, Any]]] = []
        with self._lock:
            self._submit_call(result, func, tuple(args), dict(kwds) if kwds else {}, failed)
        if failed:
            self._complete(failed)
        return result

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` in a worker; a concurrent.futures.Future."""
        return self._submit_future(fn, args, kwargs, None)

    def _submit_future(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], owner: Any
    ) -> _PoolFuture:
        """A ``submit``: when nothing waits in line and a worker has room, its frame goes
        straight to that worker's queue (the future starts running: a worker has it), else
        through the line (_pump). ``owner``: an Executor, whose shutdown is checked under
        the lock (submit after shutdown raises RuntimeError, as ProcessPoolExecutor's)."""
        # _PoolFuture(self), less the call of its __init__ (a tenth of the call's cost here)
        future = _new_object(_PoolFuture)  # (_cond, _result, _exception: the class's None)
        future._state = _PENDING
        future._driver = self
        future._job = next(_job_counter)
        future._cache = self._cache
        failed: list[tuple[Any, int, tuple[bool, Any]]] = []
        lock = self._lock
        lock.acquire()
        try:
            if owner is not None and owner._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._state != RUN:
                raise ValueError("Pool not running")
            self._submit_call(future, fn, args, kwargs, failed)
        finally:
            lock.release()
        if failed:
            self._complete(failed)
        return future

    def map(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = None
    ) -> list[Any]:
        """``list(map(func, iterable))`` computed by the workers, in chunks."""
        return self._map_async(func, iterable, _mpp.mapstar, chunksize).get()

    def starmap(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
    ) -> list[Any]:
        """``map`` with each item unpacked as the arguments."""
        return self._map_async(func, iterable, _mpp.starmapstar, chunksize).get()

    def map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> _mpp.MapResult:
        return self._map_async(func, iterable, _mpp.mapstar, chunksize, callback, error_callback)

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> _mpp.MapResult:
        return self._map_async(
            func, iterable, _mpp.starmapstar, chunksize, callback, error_callback
        )

    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        mapper: Any,
        chunksize: int | None = None,
        callback: Any = None,
        error_callback: Any = None,
    ) -> _mpp.MapResult:
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        n = len(iterable)  # type: ignore[arg-type]
        if chunksize is None:
            chunksize, extra = divmod(n, len(self._workers) * 4)
            if extra:
                chunksize += 1
        if n == 0:
            chunksize = 0
        result = _MapResult(self, chunksize, n, callback, error_callback=error_callback)
        if n:
            tasks = [
                [result._job, i, mapper, (chunk,), {}, False]
                for i, chunk in enumerate(_mpp.Pool._get_tasks(func, iterable, chunksize))
            ]
            self._submit_tasks(tasks)
        return result

    def imap(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1
    ) -> Iterator[Any]:
        """Results in order, as they come."""
        return self._imap(_mpp.IMapIterator, func, iterable, chunksize)

    def imap_unordered(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1
    ) -> Iterator[Any]:
        """Results in the order they finish."""
        return self._imap(_mpp.IMapUnorderedIterator, func, iterable, chunksize)

    def _imap(
        self, cls: Any, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int
    ) -> Iterator[Any]:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        result = cls(self)
        with self._lock:
            self._feeding += 1
        if chunksize == 1:
            self._taskqueue.put((self._guarded(result, func, iterable), result._set_length))
            return result  # type: ignore[no-any-return,unused-ignore]
        batches = _mpp.Pool._get_tasks(func, iterable, chunksize)
        self._taskqueue.put((self._guarded(result, _mpp.mapstar, batches), result._set_length))
        return (item for chunk in result for item in chunk)

    # ---- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """No more tasks; the workers exit once the submitted ones are done."""
        if self._state == RUN:
            self._state = CLOSE
            self._wake()

    def terminate(self) -> None:
        """Stop the workers now; outstanding work is abandoned (futures are cancelled or
        fail with BrokenWorker)."""
        self._state = TERMINATE
        self._terminate()

    def join(self) -> None:
        """Wait for the workers to exit (after close() or terminate())."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        if self._state == CLOSE:
            with self._lock:
                while (
                    self._cache or self._pending or self._inflight or self._feeding
                ) and self._state == CLOSE:
                    self._cond.wait(0.2)
        self._terminate()

    def _shutdown(self, terminate: bool) -> None:
        """Stop the threads and the workers and remove the segments (once)."""
        self._taskqueue.put(None)
        with self._lock:
            self._draining = True
        with self._maintain_lock:
            pass  # a replacement being started is in self._pool once this returns
        if terminate:
            with self._lock:
                self._pending.clear()
        else:
            # The workers leave on their sentinel once their queue is drained.
            with self._lock:
                for w in self._workers:
                    if not w.dead:
                        try:
                            w.queue.put(None, timeout=self._liveness)
                        except Exception:
                            w.process.terminate()
        deadline = time.monotonic() + (0.5 if terminate else 5.0)
        if terminate:
            self._kill_all()
        for p in self._pool:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                p.kill()
                p.join(5)
        self._stopping = True
        self._wake()
        with self._rx_cond:
            self._rx_cond.notify_all()
        try:
            self._results.put(None, timeout=self._liveness)
        except Exception:
            pass
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(5 + self._liveness)
        leftover: list[Any] = []
        with self._lock:
            for w in self._workers:
                for task in w.tasks.values():
                    leftover.append(task if type(task) is list else [task._job])
                w.tasks.clear()
            self._inflight.clear()
        for task in leftover:
            job = self._cache.get(task[0])
            if isinstance(job, _PoolFuture) and not job.done():
                job._set(
                    0, (False, BrokenWorker("the pool was terminated before this task finished"))
                )
        for job in list(self._cache.values()):
            if isinstance(job, _PoolFuture):
                if not job.cancel() and not job.done():
                    # sent to a worker once (running), then back in line when it died
                    job._set(
                        0,
                        (False, BrokenWorker("the pool was terminated before this task finished")),
                    )
                self._cache.pop(job._job, None)
        self._release_segments()

    def _cancel_pending(self) -> None:
        """Cancel the submitted futures no worker has started (Executor.shutdown)."""
        with self._lock:
            keep: collections.deque[list[Any]] = collections.deque()
            for task in self._pending:
                job = self._cache.get(task[0])
                if isinstance(job, _PoolFuture) and not task[5] and job.cancel():
                    self._cache.pop(task[0], None)
                    continue
                keep.append(task)
            self._pending = keep
            self._cond.notify_all()

    def _kill_all(self) -> None:
        for p in self._pool:
            if p.exitcode is None:
                try:
                    p.terminate()
                except Exception:
                    pass

    def _release_segments(self) -> None:
        for w in self._workers:
            try:
                w.queue.close()
            except Exception:
                pass
        view = getattr(self, "_slot_view", None)
        if view is not None:
            view.release()  # (a _pick after this reads nothing: the pool is stopping)
        for attr in ("_results", "_slots"):  # absent if __init__ failed before making them
            try:
                getattr(self, attr).close()
            except Exception:
                pass
        blocks = getattr(self, "_blocks", None)
        if blocks is not None and not blocks.closed:
            try:
                blocks.unlink()  # (and its dedicated segments)
            except Exception:
                pass
            blocks.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    @staticmethod
    def _finalize(shutdown: _Shutdown) -> None:
        shutdown()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self, _warn: Any = warnings.warn, RUN: str = RUN) -> None:
        if getattr(self, "_state", None) == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)

    def __repr__(self) -> str:
        cls = type(self)
        return (
            f"<{cls.__module__}.{cls.__qualname__} state={self._state} pool_size={len(self._pool)}>"
        )


class _Shutdown:
    """The pool's finaliser: runs ``_shutdown`` once (terminate, join, or interpreter exit)
    without the Finalize keeping the pool alive."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._done = False
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        pool = self._pool
        self._pool = None  # type: ignore[assignment]
        pool._shutdown(terminate=pool._state != CLOSE)


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` on a :class:`Pool`: ``submit``, ``map`` (with
    ``chunksize`` and ``timeout``) and ``shutdown(wait, cancel_futures)``, as
    ``ProcessPoolExecutor``. A worker that dies fails only the future it was running
    (:class:`BrokenWorker`, a ``BrokenProcessPool``); the executor replaces it and goes on.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        liveness: float = 1.0,
        zero_copy_threshold: int | None = ZERO_COPY_THRESHOLD,
        buffer_pool_size: int | None = None,
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._shut = False  # set under the pool's lock, read by submit under it
        self._pool = Pool(
            max_workers,
            initializer,
            initargs,
            context=mp_context,
            liveness=liveness,
            zero_copy_threshold=zero_copy_threshold,
            buffer_pool_size=buffer_pool_size,
        )
        # As ProcessPoolExecutor: a future is "running" once a worker has it, so keep few
        # queued at each worker and the rest cancellable (shutdown(cancel_futures=True)),
        # unless its tasks take under 0.1 ms (then 64 queued are done within ~6 ms anyway).
        self._pool._prefetch = _EXECUTOR_PREFETCH

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        return self._pool._submit_future(fn, args, kwargs, self)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Results in order; ``TimeoutError`` if one is not ready ``timeout`` seconds after
        the call. ``chunksize`` items travel as one task."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = _chunks(zip(*iterables, strict=False), chunksize)
        results = super().map(functools.partial(_run_chunk, fn), chunks, timeout=timeout)
        return itertools.chain.from_iterable(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; ``cancel_futures`` cancels those not started; ``wait`` waits
        for the running ones and the workers' exit."""
        pool = self._pool
        with pool._lock:
            self._shut = True
        if cancel_futures:
            pool._cancel_pending()
        if pool._state == RUN:
            pool.close()
        if wait:
            pool.join()
        else:
            threading.Thread(target=pool.join, name="shmipc-executor-shutdown", daemon=True).start()


def _chunks(items: Iterator[tuple[Any, ...]], size: int) -> Iterator[tuple[tuple[Any, ...], ...]]:
    while True:
        chunk = tuple(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def _run_chunk(fn: Callable[..., Any], chunk: tuple[tuple[Any, ...], ...]) -> list[Any]:
    return [fn(*args) for args in chunk]
