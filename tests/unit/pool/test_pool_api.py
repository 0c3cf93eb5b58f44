"""shmipc.Pool and shmipc.Executor: the interface, initializer and maxtasksperchild, remote
tracebacks, callbacks, waiting from several threads and from callbacks, Executor semantics
(shutdown with cancel_futures, map with timeout and chunksize), start methods, and a pool left
open at interpreter exit. Task functions are module-level: spawned workers import them."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest

import shmipc
from shmipc.pool import BrokenWorker, Executor, Pool

pytestmark = pytest.mark.timeout(120)

FORK = multiprocessing.get_context("fork")

# ---- tasks -----------------------------------------------------------------------------------

_state: dict[str, object] = {}


def square(x: int) -> int:
    return x * x


def add(x: int, y: int = 0) -> int:
    return x + y


def pid_of(_: object = None) -> int:
    return os.getpid()


def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def init(tag: str) -> None:
    _state["tag"] = tag
    _state["pid"] = os.getpid()


def tag_of(_: object = None) -> tuple[object, int]:
    return _state.get("tag"), os.getpid()


def fail(message: str) -> None:
    raise LookupError(message)  # the line the remote traceback must show


# ---- Pool ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_every_call_under_each_start_method(method: str) -> None:
    with Pool(2, context=multiprocessing.get_context(method)) as pool:
        assert pool.map(square, range(50)) == [x * x for x in range(50)]
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.map_async(square, [3]).get(timeout=60) == [9]
        assert pool.starmap_async(add, [(5, 5)]).get(timeout=60) == [10]
        assert pool.apply(add, (1,), {"y": 5}) == 6
        assert pool.apply_async(square, (4,)).get(timeout=60) == 16
        assert pool.submit(add, 2, y=3).result(timeout=60) == 5
        assert list(pool.imap(square, range(10), chunksize=3)) == [x * x for x in range(10)]
        assert sorted(pool.imap_unordered(square, range(10))) == [x * x for x in range(10)]
    pool.join()


def test_initializer_runs_in_every_worker_before_tasks() -> None:
    with Pool(2, initializer=init, initargs=("hello",), context=FORK) as pool:
        got = pool.map(tag_of, range(40), chunksize=1)
        assert {tag for tag, _ in got} == {"hello"}
        assert {pid for _, pid in got} <= {p.pid for p in pool._pool}
    pool.join()


def test_maxtasksperchild_replaces_workers() -> None:
    pool = Pool(2, maxtasksperchild=3, context=FORK)
    try:
        first = {p.pid for p in pool._pool}
        pids = [pool.apply(pid_of) for _ in range(20)]
        counts = {pid: pids.count(pid) for pid in set(pids)}
        assert max(counts.values()) <= 3, counts
        assert len(counts) >= 7  # 20 tasks, at most 3 each
        assert set(pids) - first
    finally:
        pool.close()
        pool.join()
    assert all(p.exitcode is not None for p in pool._pool)


@pytest.mark.parametrize("bad", [0, -1, 0.5, "3"])
def test_bad_arguments(bad: object) -> None:
    with pytest.raises(ValueError):
        Pool(2, maxtasksperchild=bad, context=FORK)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Pool(0, context=FORK)
    with pytest.raises(TypeError):
        Pool(1, initializer=3, context=FORK)  # type: ignore[arg-type]


def test_remote_traceback_text() -> None:
    with Pool(1, context=FORK) as pool:
        with pytest.raises(LookupError, match="nope") as info:
            pool.apply(fail, ("nope",))
        fut = pool.submit(fail, "again")
        assert isinstance(fut.exception(timeout=60), LookupError)
    pool.join()
    cause = info.value.__cause__
    assert isinstance(cause, multiprocessing.pool.RemoteTraceback)
    assert "the line the remote traceback must show" in cause.tb
    assert "in fail" in cause.tb


def test_callbacks_run_and_may_wait_on_other_results() -> None:
    """A callback runs in the parent (in whichever thread is reading results) and may wait on
    another result of the same pool without deadlock."""
    got: list[object] = []
    done = threading.Event()
    with Pool(2, context=FORK) as pool:
        other = pool.apply_async(slow, (0.05,))

        def callback(value: int) -> None:
            got.append((value, other.get(timeout=60)))
            done.set()

        res = pool.apply_async(square, (7,), callback=callback, error_callback=got.append)
        assert res.get(timeout=60) == 49
        assert done.wait(60)
        errors: list[BaseException] = []
        bad = pool.apply_async(fail, ("x",), error_callback=errors.append)
        bad.wait(60)
        assert not bad.successful() and isinstance(errors[0], LookupError)
    pool.join()
    assert got == [(49, 0.05)]


def test_many_threads_wait_at_once() -> None:
    with Pool(2, context=FORK) as pool:
        failures: list[BaseException] = []

        def client(k: int) -> None:
            try:
                for i in range(200):
                    if i % 2:
                        assert pool.submit(add, k, i).result(timeout=60) == k + i
                    else:
                        assert pool.apply_async(add, (k, i)).get(timeout=60) == k + i
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not failures
    pool.join()


def test_get_timeout_then_result() -> None:
    with Pool(1, context=FORK) as pool:
        res = pool.apply_async(slow, (0.3,))
        with pytest.raises(multiprocessing.TimeoutError):
            res.get(timeout=0.01)
        assert not res.ready()
        assert res.get(timeout=60) == 0.3
        fut = pool.submit(slow, 0.3)
        with pytest.raises(concurrent.futures.TimeoutError):
            fut.result(timeout=0.01)
        assert fut.result(timeout=60) == 0.3
    pool.join()


def test_close_join_finishes_work_and_threads() -> None:
    before = set(threading.enumerate())
    pool = Pool(2, context=FORK)
    results = [pool.apply_async(slow, (0.01,)) for _ in range(20)]
    futures = [pool.submit(square, i) for i in range(20)]
    pool.close()
    with pytest.raises(ValueError):
        pool.apply_async(square, (1,))
    pool.join()
    assert all(r.ready() and r.get() == 0.01 for r in results)
    assert [f.result(0) for f in futures] == [i * i for i in range(20)]
    assert all(p.exitcode == 0 for p in pool._pool)
    assert not (set(threading.enumerate()) - before)


def test_terminate_fails_or_cancels_futures() -> None:
    pool = Pool(1, context=FORK)
    futures = [pool.submit(slow, 30) for _ in range(20)]
    while not futures[0].running():
        time.sleep(0.01)
    pool.terminate()
    pool.join()
    for f in futures:
        assert f.cancelled() or isinstance(f.exception(timeout=0), BrokenWorker)


def test_pool_does_not_pickle() -> None:
    with Pool(1, context=FORK) as pool, pytest.raises(NotImplementedError):
        pickle.dumps(pool)
    pool.join()


def test_broken_worker_is_exported_and_pickles() -> None:
    assert shmipc.BrokenWorker is BrokenWorker
    assert shmipc.Pool is Pool and shmipc.Executor is Executor
    err = BrokenWorker("worker process 5 was killed by SIGKILL", 5, -9)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.pid, copy.exitcode, copy.signal, str(copy)) == (5, -9, "SIGKILL", str(err))
    assert isinstance(err, concurrent.futures.process.BrokenProcessPool)
    assert isinstance(err, shmipc.ShmipcError)


UNCLOSED = textwrap.dedent(
    """
    import multiprocessing, sys
    import shmipc

    class A:
        def __init__(self):
            self.pool = shmipc.Pool(1, context=multiprocessing.get_context(sys.argv[1]))

    def test():
        global problem
        problem = A()
        assert problem.pool.map(float, tuple(range(10))) == [float(x) for x in range(10)]
        pool = problem.pool
        names = [pool._results.name, pool._slots.name] + [w.queue.name for w in pool._workers]
        print(" ".join(names), flush=True)

    if __name__ == "__main__":
        test()
    """
)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_unclosed_pool_at_exit(method: str, tmp_path) -> None:
    """CPython's test_worker_finalization_via_atexit_handler_of_multiprocessing, with
    shmipc.Pool: a pool never closed ends with the interpreter, cleanly."""
    script = tmp_path / "unclosed.py"
    script.write_text(UNCLOSED)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, str(script), method],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    names = out.stdout.split()
    assert len(names) == 3
    assert not [n for n in names if os.path.exists(os.path.join("/dev/shm", n))]


# ---- Executor --------------------------------------------------------------------------------


def test_executor_submit_map_and_chunks() -> None:
    with Executor(2, mp_context=FORK) as ex:
        assert ex.submit(add, 1, y=2).result(timeout=60) == 3
        assert list(ex.map(square, range(30))) == [x * x for x in range(30)]
        assert list(ex.map(add, range(30), range(30), chunksize=7)) == [2 * x for x in range(30)]
        with pytest.raises(LookupError):
            list(ex.map(fail, ["a"], chunksize=2))
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_executor_map_timeout() -> None:
    with Executor(1, mp_context=FORK) as ex:
        it = ex.map(slow, [0.0, 2.0, 2.0], timeout=0.5)
        assert next(it) == 0.0
        with pytest.raises(concurrent.futures.TimeoutError):
            next(it)
        started = time.monotonic()
    assert time.monotonic() - started < 20  # the timed-out map cancelled what it could


def test_executor_shutdown_cancel_futures() -> None:
    ex = Executor(1, mp_context=FORK)
    futures = [ex.submit(slow, 0.2) for _ in range(30)]
    while not futures[0].running():
        time.sleep(0.01)
    ex.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    finished = [f for f in futures if not f.cancelled()]
    assert len(cancelled) >= 25  # only those already at the worker ran
    assert all(f.result(0) == 0.2 for f in finished)


def test_executor_shutdown_without_wait_then_work_finishes() -> None:
    ex = Executor(2, mp_context=FORK)
    futures = [ex.submit(square, i) for i in range(50)]
    ex.shutdown(wait=False)
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(50)]


def test_executor_initializer_and_arguments() -> None:
    with pytest.raises(ValueError):
        Executor(0)
    with Executor(2, mp_context=FORK, initializer=init, initargs=("ex",)) as ex:
        assert ex.submit(tag_of).result(timeout=60)[0] == "ex"


def test_imap_keeps_the_workers_fed() -> None:
    """imap reads its iterable in a thread that waits for room in the line; it must be woken
    as the line drains, not poll (20,000 one-item tasks took 25 s when it polled)."""
    with Pool(2, context=FORK) as pool:
        started = time.monotonic()
        assert sum(pool.imap(square, iter(range(20_000)))) == sum(x * x for x in range(20_000))
        assert time.monotonic() - started < 10
    pool.join()


def test_segments_are_private_to_this_user() -> None:
    """Whoever can write a pool's queues can make its workers (and the parent) unpickle
    anything: the segments are this uid's, mode 0600, like every shmipc segment."""
    with Pool(2, context=FORK) as pool:
        names = [pool._results.name, pool._slots.name] + [w.queue.name for w in pool._workers]
        for name in names:
            st = os.stat(os.path.join("/dev/shm", name))
            assert st.st_mode & 0o777 == 0o600, (name, oct(st.st_mode))
            assert st.st_uid == os.getuid()
    pool.join()


def test_a_callback_on_the_result_thread_may_wait_on_other_results() -> None:
    """With nobody waiting, callbacks run on the pool's result thread; one that waits on
    another result must read the results there, not wait for itself."""
    got: list[object] = []
    done = threading.Event()
    with Pool(2, context=FORK) as pool:
        other = pool.apply_async(slow, (0.2,))

        def callback(value: int) -> None:
            got.append((value, other.get(timeout=60)))
            done.set()

        pool.apply_async(square, (6,), callback=callback)  # nobody waits on it
        assert done.wait(60)
    pool.join()
    assert got == [(36, 0.2)]


def _ghost_module(name: str) -> types.ModuleType:
    """A module that exists in this process only (no file): what is pickled by reference to
    it does not unpickle in another process that has not made it."""
    mod = types.ModuleType(name)
    exec("def ghost(x):\n    return x\n\nclass Ghost:\n    pass\n", mod.__dict__)
    sys.modules[name] = mod
    return mod


def ghost_result(_: object = None) -> object:
    """Returns an object of a class that only this worker has."""
    return _ghost_module("shmipc_test_worker_only").Ghost()


def test_a_task_that_does_not_unpickle_in_the_worker_fails_alone() -> None:
    """Its function's module is not importable in a spawned worker: the task fails saying so,
    the worker lives on (no crash, no loop of replacements)."""
    mod = _ghost_module("shmipc_test_parent_only")
    try:
        with Pool(1, context=multiprocessing.get_context("spawn")) as pool:
            pid = pool.apply(pid_of)
            with pytest.raises(RuntimeError, match="could not be unpickled in worker"):
                pool.apply(mod.ghost, (1,))
            fut = pool.submit(mod.ghost, 2)
            assert "could not be unpickled" in str(fut.exception(timeout=60))
            assert pool.apply(pid_of) == pid  # the same worker, still there
        pool.join()
    finally:
        del sys.modules["shmipc_test_parent_only"]


def test_a_result_that_does_not_unpickle_in_the_parent_fails_its_task() -> None:
    with Pool(1, context=FORK) as pool:
        with pytest.raises(RuntimeError, match="result could not be unpickled"):
            pool.apply(ghost_result)
        assert pool.apply(square, (5,)) == 25
    pool.join()
    assert "shmipc_test_worker_only" not in sys.modules
