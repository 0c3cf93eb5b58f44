"""shmipc.mp: the one-import switch, its contexts and shmipc.sharedctypes."""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import signal
import time
from multiprocessing.reduction import ForkingPickler

import pytest

import shmipc
import shmipc.mp
from shmipc import sharedctypes
from shmipc.joinable import JoinableQueue
from shmipc.sync import BoundedSemaphore, Condition, RLock

pytestmark = pytest.mark.timeout(60)

PROCS_JOIN_TIMEOUT = 30.0


def test_stdlib_names_are_the_stdlib_objects():
    for name in (
        "Process",
        "current_process",
        "parent_process",
        "active_children",
        "cpu_count",
        "freeze_support",
        "set_start_method",
        "get_start_method",
        "get_all_start_methods",
        "Pipe",
        "Manager",
        "TimeoutError",
        "ProcessError",
        "AuthenticationError",
        "BufferTooShort",
        "get_logger",
        "log_to_stderr",
        "reducer",
        "connection",
        "shared_memory",
    ):
        assert getattr(shmipc.mp, name) is getattr(multiprocessing, name), name
    assert shmipc.mp.sharedctypes is sharedctypes
    with pytest.raises(AttributeError):
        shmipc.mp.no_such_name  # noqa: B018


def test_every_multiprocessing_name_is_there():
    missing = [n for n in multiprocessing.__all__ if not hasattr(shmipc.mp, n)]
    assert missing == []
    assert set(shmipc.mp.__all__) >= set(multiprocessing.__all__)


def test_getting_a_context_does_not_fix_the_default_start_method():
    before = multiprocessing.get_start_method(allow_none=True)
    ctx = shmipc.mp.get_context()
    lock = ctx.Lock()
    lock.close()
    assert multiprocessing.get_start_method(allow_none=True) == before
    assert shmipc.mp.get_context("spawn") is shmipc.mp.get_context("spawn")
    assert shmipc.mp.get_context("spawn").get_context() is shmipc.mp.get_context("spawn")
    assert shmipc.mp.get_context("spawn").get_start_method() == "spawn"
    assert shmipc.mp.get_context("fork").Process is multiprocessing.get_context("fork").Process
    with pytest.raises(ValueError):
        shmipc.mp.get_context("no-such-method")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_context_objects_are_shmipc_and_named_unless_fork(method):
    ctx = shmipc.mp.get_context(method)
    objs = {
        "Lock": (ctx.Lock(), shmipc.Lock),
        "RLock": (ctx.RLock(), RLock),
        "Semaphore": (ctx.Semaphore(2), shmipc.Semaphore),
        "BoundedSemaphore": (ctx.BoundedSemaphore(2), BoundedSemaphore),
        "Event": (ctx.Event(), shmipc.Event),
        "Condition": (ctx.Condition(), Condition),
        "Barrier": (ctx.Barrier(2), shmipc.Barrier),
    }
    try:
        for name, (obj, cls) in objs.items():
            assert type(obj) is cls, name
            assert (obj.name is not None) == (method != "fork"), name
    finally:
        for obj, _ in objs.values():
            obj.close()
    for make, cls in ((ctx.Queue, shmipc.Queue), (ctx.SimpleQueue, shmipc.Queue)):
        q = make()
        assert type(q) is cls and q.codec.name == "pickle"
        q.put({1, 2})
        assert q.get(timeout=5) == {1, 2}
        q.close()
    jq = ctx.JoinableQueue(maxsize=3)
    assert type(jq) is JoinableQueue and jq.codec.name == "pickle" and jq.maxsize == 3
    jq.close()
    q = ctx.Queue(codec="msgpack")  # shmipc's own arguments pass through
    assert q.codec.name == "msgpack"
    q.close()


def test_module_level_names_use_the_default_context():
    q = shmipc.mp.Queue()
    assert q.codec.name == "pickle"
    q.close()
    lock = shmipc.mp.RLock()
    assert type(lock) is RLock
    lock.close()


def test_pool_is_resolved_lazily():
    try:
        importlib.import_module("shmipc.pool")
    except ImportError:
        with pytest.raises(ImportError, match=r"shmipc\.pool"):
            shmipc.mp.Pool(1)
    else:  # pragma: no cover - once shmipc.pool exists (helper P1's piece)
        with shmipc.mp.Pool(1) as pool:
            assert pool.apply(abs, (-3,)) == 3


# ---- shared ctypes --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_value_and_array(method):
    ctx = shmipc.mp.get_context(method)
    v = ctx.Value("d", 1.5)
    assert v.value == 1.5 and type(v.get_lock()) is RLock
    with v.get_lock():
        v.value += 1
    assert v.get_obj().value == 2.5
    a = ctx.Array("i", [1, 2, 3])
    assert a[:] == [1, 2, 3] and len(a) == 3
    a[1] = 7
    assert list(a) == [1, 7, 3]
    s = ctx.Array("c", b"hello")
    assert s.value == b"hello" and s.raw == b"hello"
    raw = ctx.RawArray(ctypes.c_uint8, 4)
    assert bytes(raw) == bytes(4)
    rv = ctx.RawValue("q", 2**40)
    assert rv.value == 2**40
    given = ctx.Lock()
    w = ctx.Value("i", 1, lock=given)
    assert w.get_lock() is given
    assert not hasattr(ctx.Value("i", 1, lock=False), "get_lock")
    with pytest.raises(AttributeError, match="acquire"):
        ctx.Value("i", 1, lock="nolock")
    given.close()


def test_raw_objects_pickle_only_while_spawning():
    ctx = shmipc.mp.get_context("spawn")
    raw = ctx.RawValue("i", 3)
    with pytest.raises(RuntimeError, match="inheritance"):  # as the stdlib's: by inheritance
        ForkingPickler.dumps(raw)


def test_anonymous_shared_ctypes_refuse_spawn_clearly():
    raw = shmipc.mp.get_context("fork").RawValue("i", 3)
    with pytest.raises(TypeError, match="anonymous Region"):
        raw._wrapper.__reduce__()[1][0].__reduce__()


def test_copy_and_structures():
    class Point(ctypes.Structure):
        _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]

    p = sharedctypes.Value(Point, 1, 2.5, ctx=shmipc.mp.get_context("fork"))
    assert (p.x, p.y) == (1, 2.5)
    c = sharedctypes.copy(p.get_obj(), ctx=shmipc.mp.get_context("fork"))
    assert (c.x, c.y) == (1, 2.5)


@pytest.mark.timeout(60)
def test_a_value_whose_lock_holder_was_killed_passes_on(procs):
    """SIGKILL the holder of a Value's lock: the next acquirer proceeds, told it recovered."""
    ctx = shmipc.mp.get_context("fork")
    v = ctx.Value("i", 0)
    held = ctx.Event()

    def hold():
        v.get_lock().acquire()
        v.value = 1
        held.set()
        time.sleep(60)

    pid = procs.fork(hold)
    assert held.wait(20)
    os.kill(pid, signal.SIGKILL)
    assert procs.join(pid) == -signal.SIGKILL
    t = time.monotonic()
    with v.get_lock():
        assert v.get_lock().recovered
        v.value += 1
    assert time.monotonic() - t < 10  # a wait slice (100 ms) plus a loaded machine's margin
    assert v.value == 2
    with v.get_lock():
        assert not v.get_lock().recovered
    held.close()
