"""The per-call fast paths of shmipc.Pool and shmipc.Executor (docs/pool.md, "Costs"):

* small task and result frames skip the block hook (plain values only: anything else, and
  anything that does not pickle, still goes through the queue's own put and its errors);
* AsyncResults make their Event, and Executor futures their Condition, only when a thread
  must block on them: waiting from other threads, done callbacks, cancel,
  ``concurrent.futures.wait``/``as_completed`` still behave as the standard library's;
* fast workers are sent up to ~5 ms of tasks ahead: a worker killed with hundreds of them
  queued fails at most the one it was running, the others run elsewhere, none hangs.

Task functions are module-level (spawned workers import them)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import threading
import time

import pytest

from shmipc.pool import BrokenWorker, Executor, Pool

pytestmark = pytest.mark.timeout(120)

FORK = multiprocessing.get_context("fork")


def square(x: int) -> int:
    return x * x


def echo(x: object) -> object:
    return x


def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def pid_after(x: int) -> tuple[int, int]:
    return x, os.getpid()


def test_plain_and_other_values_round_trip() -> None:
    """Plain values take the direct frame; big ones spill; the rest go through the hook."""
    big = "s" * (3 << 20)  # larger than a ring message: spilled beside the queue
    values: list[object] = [
        0,
        -(1 << 70),
        1.5,
        "text",
        b"bytes",
        None,
        True,
        3j,
        big,
        b"b" * (1 << 20),
        (1, [2, {"k": 3}]),
        bytearray(b"ba"),
    ]
    with Pool(2, context=FORK) as pool:
        for v in values:
            assert pool.apply(echo, (v,)) == v
            assert pool.apply_async(echo, (), {"x": v}).get(60) == v
        with Executor(2, mp_context=FORK) as ex:
            assert [f.result(60) for f in [ex.submit(echo, v) for v in values]] == values


def test_an_unpicklable_task_or_result_fails_alone() -> None:
    with Pool(2, context=FORK) as pool:
        r = pool.apply_async(echo, (lambda: 1,))
        with pytest.raises(TypeError, match="cannot pickle"):
            r.get(60)
        bad = pool.apply_async(lambda: 1)  # the function itself does not pickle
        with pytest.raises(TypeError, match="cannot pickle"):
            bad.get(60)
        assert pool.apply(square, (7,)) == 49


def test_executor_futures_without_and_with_a_condition() -> None:
    """The stdlib's waiting machinery works on futures that made their Condition late."""
    with Executor(2, mp_context=FORK) as ex:
        fs = [ex.submit(square, i) for i in range(200)]
        done, not_done = concurrent.futures.wait(fs, timeout=60)
        assert not not_done and len(done) == 200
        assert sorted(f.result() for f in concurrent.futures.as_completed(fs)) == sorted(
            i * i for i in range(200)
        )
        called = threading.Event()
        seen: list[object] = []
        f = ex.submit(slow, 0.2)
        f.add_done_callback(lambda fut: (seen.append(fut.result()), called.set()))
        assert called.wait(60) and seen == [0.2]
        late: list[object] = []
        f.add_done_callback(lambda fut: late.append(fut.result()))  # done: runs at once
        assert late == [0.2]
        assert f.done() and not f.running() and not f.cancelled()
        assert "finished returned float" in repr(f)
        g = ex.submit(fail_with, "boom")
        assert isinstance(g.exception(60), LookupError)
        with pytest.raises(LookupError):
            g.result()


def fail_with(message: str) -> None:
    raise LookupError(message)


def test_a_thread_blocks_while_another_receives() -> None:
    """Waiters that do not hold the receiving role block on the (lazily made) Event or
    Condition and are woken when another thread settles their result."""
    with Executor(2, mp_context=FORK) as ex, Pool(2, context=FORK) as pool:
        futs = [ex.submit(slow, 0.05 * (i % 4)) for i in range(40)]
        results = [pool.apply_async(slow, (0.05 * (i % 4),)) for i in range(40)]
        got: list[object] = []
        lock = threading.Lock()

        def wait_one(i: int) -> None:
            a = futs[i].result(60)
            b = results[i].get(60)
            with lock:
                got.append((a, b))

        threads = [threading.Thread(target=wait_one, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert len(got) == 40 and all(a == b for a, b in got)


def test_cancel_before_start_and_shutdown_cancel_futures() -> None:
    ex = Executor(1, mp_context=FORK)
    try:
        first = ex.submit(slow, 0.5)
        queued = [ex.submit(square, i) for i in range(50)]
        cancelled = [f for f in queued if f.cancel()]
        for f in cancelled:
            assert f.cancelled() and f.done()
            with pytest.raises(concurrent.futures.CancelledError):
                f.result(0)
        assert first.result(60) == 0.5
        for f in queued:
            if f not in cancelled:
                assert f.result(60) in {i * i for i in range(50)}
    finally:
        ex.shutdown(cancel_futures=True)


def test_apply_result_wait_timeout_then_ready() -> None:
    with Pool(1, context=FORK) as pool:
        r = pool.apply_async(slow, (0.5,))
        r.wait(0.01)
        assert not r.ready()
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(0.01)
        r.wait()
        assert r.ready() and r.successful() and r.get() == 0.5


@pytest.mark.parametrize("kind", ["pool", "executor"])
def test_a_worker_killed_with_many_queued_tasks(kind: str) -> None:
    """Hundreds of fast tasks queued at each worker; a worker is SIGKILLed mid-stream,
    several times: every task completes or fails with BrokenWorker (at most one per kill),
    none hangs, none is lost or run for another's result."""
    n, kills = 4000, 3
    if kind == "pool":
        pool: Pool | Executor = Pool(2, context=FORK)
    else:
        pool = Executor(2, mp_context=FORK)
    try:
        for _ in range(kills):
            if kind == "pool":
                assert isinstance(pool, Pool)
                handles = [pool.apply_async(pid_after, (i,)) for i in range(n)]
                first = handles[n // 4].get(60)
            else:
                assert isinstance(pool, Executor)
                handles = [pool.submit(pid_after, i) for i in range(n)]
                first = handles[n // 4].result(60)
            os.kill(first[1], signal.SIGKILL)
            broken = 0
            for i, h in enumerate(handles):
                try:
                    got = h.get(60) if kind == "pool" else h.result(60)  # type: ignore[union-attr]
                except BrokenWorker as exc:
                    broken += 1
                    assert exc.pid == first[1] and exc.signal == "SIGKILL"
                    continue
                assert got[0] == i
            assert broken <= 1
        if kind == "pool":
            assert isinstance(pool, Pool)
            assert pool.map(square, range(100)) == [i * i for i in range(100)]
        else:
            assert list(pool.map(square, range(100))) == [i * i for i in range(100)]
    finally:
        if isinstance(pool, Pool):
            pool.terminate()
            pool.join()
        else:
            pool.shutdown()


def test_task_frames_with_a_cached_function_reference() -> None:
    """A task frame with the function's opcodes cached unpickles to exactly the task: memo
    references among the arguments (a repeated string), keywords, sequence numbers of every
    size, large arguments (several pickle frames: pickled whole); anything not plain, or a
    function that is not module-level, is left to the queue's put or pickled whole."""
    import functools
    import pickle

    from shmipc.pool import _func_ops, _task_frame

    shared = "shared" * 3
    cases = [
        (1, square, (5,), {}),
        (255, echo, (shared, shared, "x", b"y", None, True, 1.5, 3j, -(1 << 80)), {}),
        (65_536, echo, (), {"x": shared, "y": shared}),
        (70_000, echo, ("z" * 100_000,), {}),
        (0x7FFF_FFFF, square, (1,), {}),  # beyond BININT: pickled whole
        (9, functools.partial(square), (1,), {}),  # not a function: pickled whole
    ]
    for task in cases:
        frame = _task_frame(*task)
        assert frame is not None
        got = pickle.loads(frame)
        assert got[0] == task[0] and got[2:] == task[2:]
        if not isinstance(task[1], functools.partial):
            assert got[1] is task[1]
    assert _task_frame(1, echo, ([1],), {}) is None  # not plain: the queue encodes it
    assert _task_frame(1, echo, (), {"x": bytearray(1)}) is None
    assert _func_ops(lambda: 1) is None and _func_ops(print) is None
    with Pool(1, context=FORK) as pool:
        assert pool.apply(echo, (), {"x": shared}) == shared


_RELEASE = FORK.Event()  # inherited by forked workers (the test below makes a fresh one)


def hold_until_released() -> str:
    return "released" if _RELEASE.wait(60) else "timed out"


def test_fast_tasks_do_not_pile_up_behind_a_long_one() -> None:
    """Once a worker has been running one task for the stall time (its slot says which and
    since when), it gets no more than the slow prefetch, however fast the tasks were."""
    global _RELEASE
    from shmipc.pool import _STALL_NS

    _RELEASE = FORK.Event()
    with Pool(2, context=FORK) as pool:
        # Each worker learns from its own results that its tasks are fast (then they are
        # queued ahead); on a loaded machine one burst may go mostly to one worker.
        deadline = time.monotonic() + 60
        while not all(w.limit > pool._prefetch for w in pool._workers):
            assert time.monotonic() < deadline, "the workers never learned the tasks are fast"
            handles = [pool.apply_async(square, (i,)) for i in range(3000)]
            assert [h.get(60) for h in handles] == [i * i for i in range(3000)]
        long = pool.apply_async(hold_until_released)
        deadline = time.monotonic() + 60
        while True:  # until its worker has run it for 3 stall times
            holder = next((w for w in pool._workers if w.tasks), None)
            if holder is not None:
                i = 2 * holder.index
                running, since = pool._slot_view[i], pool._slot_view[i + 1]
                if running in holder.tasks and time.monotonic_ns() - since > 3 * _STALL_NS:
                    break
            assert time.monotonic() < deadline, "the long task never started"
            time.sleep(0.001)
        fast = [pool.apply_async(square, (i,)) for i in range(400)]
        assert len(holder.tasks) <= pool._prefetch + 1
        _RELEASE.set()
        assert long.get(60) == "released"
        assert [h.get(60) for h in fast] == [i * i for i in range(400)]


def test_future_states_without_a_condition() -> None:
    """running/cancelled/done and cancel() of a started or finished future answer from the
    state alone (Executor.map cancels every future it read): no Condition is made."""
    with Executor(1, mp_context=FORK) as ex:
        f = ex.submit(square, 3)
        assert f.result(60) == 9
        assert f.done() and not f.running() and not f.cancelled()
        assert f.cancel() is False and f._cond is None  # type: ignore[attr-defined]
        assert list(ex.map(square, range(50))) == [i * i for i in range(50)]
        blocker = ex.submit(slow, 0.3)
        queued = [ex.submit(square, i) for i in range(20)]
        deadline = time.monotonic() + 60
        while not blocker.running():
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert blocker.cancel() is False and blocker.running()
        last = queued[-1]
        if last.cancel():  # not sent yet: cancelled as the stdlib's would be
            assert last.cancelled() and last.done() and not last.running()
        assert blocker.result(60) == 0.3


def test_direct_submits_start_running_and_queued_ones_stay_cancellable() -> None:
    """A submit whose frame went straight to a worker's queue is running (as
    ProcessPoolExecutor's once a worker has it: cancel() is False); past the executor's
    prefetch, behind a long task, submits wait in line and cancel as the stdlib's do."""
    with Executor(1, mp_context=FORK) as ex:
        blocker = ex.submit(slow, 0.5)
        deadline = time.monotonic() + 60
        while not blocker.running():
            assert time.monotonic() < deadline
            time.sleep(0.001)
        queued = [ex.submit(square, i) for i in range(30)]
        sent = [f for f in queued if f.running()]
        waiting = [f for f in queued if not f.running()]
        assert len(sent) <= ex._pool._prefetch  # behind a long task: the slow prefetch
        assert waiting and all(f.cancel() for f in waiting)
        assert all(f.cancelled() and f.done() for f in waiting)
        assert not any(f.cancel() for f in sent)
        assert blocker.result(60) == 0.5
        assert [f.result(60) for f in sent] == [queued.index(f) ** 2 for f in sent]


def test_submit_racing_shutdown_raises_or_completes() -> None:
    """Submits from several threads while another shuts the executor down (cancelling
    what waits): each submit raises RuntimeError or returns a future that completes or is
    cancelled; none hangs, and nothing submitted after the shutdown runs."""
    ex = Executor(2, mp_context=FORK)
    got: list[concurrent.futures.Future[int]] = []
    refused = []
    lock = threading.Lock()
    start = threading.Barrier(5)

    def submitter() -> None:
        start.wait(60)
        for i in range(2000):
            try:
                f = ex.submit(square, i)
            except RuntimeError:
                with lock:
                    refused.append(i)
                return
            with lock:
                got.append(f)

    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for t in threads:
        t.start()
    start.wait(60)
    time.sleep(0.01)
    ex.shutdown(wait=True, cancel_futures=True)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    for f in got:
        assert f.done()
        if not f.cancelled():
            f.result(0)
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


def test_an_idle_worker_with_an_unread_result_is_not_stalled() -> None:
    """A worker that has stored its last result marks its slot idle: while the parent has
    not read that result (busy submitting), the worker still gets fast tasks beyond the
    prefetch instead of being taken for one running a long task."""
    from shmipc.pool import _STALL_NS

    with Executor(1, mp_context=FORK) as ex:
        pool = ex._pool
        assert [f.result(60) for f in [ex.submit(square, i) for i in range(500)]] == [
            i * i for i in range(500)
        ]
        w = pool._workers[0]
        assert w.limit > pool._prefetch  # fast tasks
        assert pool._rx.acquire(timeout=60)  # nobody reads results for now
        try:
            first = [ex.submit(square, i) for i in range(pool._prefetch)]
            deadline = time.monotonic() + 60
            while pool._slot_view[1] != 0 or pool._slot_view[0] not in w.tasks:
                assert time.monotonic() < deadline, "the worker never finished"
                time.sleep(0.001)
            time.sleep(3 * _STALL_NS / 1e9)  # its (unread) last task looks long ago
            more = [ex.submit(square, i) for i in range(20)]
            assert all(f.running() for f in more)  # sent at once: not held in line
        finally:
            pool._rx.release()
        assert [f.result(60) for f in first + more] == [
            i * i for i in [*range(pool._prefetch), *range(20)]
        ]


def test_a_corrupt_raw_result_is_dropped_with_a_warning() -> None:
    """A raw result record that does not unpickle (shared memory is untrusted) is dropped
    with a RuntimeWarning; the pool goes on."""
    import warnings

    with Executor(1, mp_context=FORK) as ex:
        assert ex.submit(square, 3).result(60) == 9
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            ex._pool._results.put_bytes(b"\x80\x05not a pickle")
            assert ex.submit(square, 4).result(60) == 16
        assert any("dropped a result" in str(w.message) for w in seen)
        assert [f.result(60) for f in [ex.submit(square, i) for i in range(100)]] == [
            i * i for i in range(100)
        ]


def test_a_task_naming_an_unknown_function_number_fails_alone() -> None:
    """A task frame naming a function number its worker was never sent (a corrupt frame:
    shared memory is untrusted) fails that task with why; the worker is not lost."""
    import pickle

    from shmipc.pool import _OK, _T_RAW, _ApplyResult

    with Pool(1, context=FORK) as pool:
        assert pool.apply(pid_after, (0,))[0] == 0
        before = pool._workers[0].process.pid
        with pool._lock:  # as a direct submit does, with a number nobody defined
            w = pool._workers[0]
            seq = next(pool._seq)
            res = _ApplyResult(pool, None, None)
            pool._cache[res._job] = res
            w.tasks[seq] = [res._job, 0, square, (5,), {}, True]
            w.budget -= 1
            pool._inflight[seq] = w
            assert w.put(pickle.dumps((seq, 123_456, (5,), {}), 5), _T_RAW, 0) == _OK
        with pytest.raises(RuntimeError, match="never sent"):
            res.get(timeout=60)
        assert pool.apply(square, (6,)) == 36
        assert pool.apply(pid_after, (1,))[1] == before  # the same worker, still there


def test_functions_by_number_across_a_worker_replacement(monkeypatch: pytest.MonkeyPatch) -> None:
    """Module-level functions travel by a number each worker is told once; a replacement
    worker is told again before its first task; past the pool's limit of numbered functions,
    the function's reference travels in each frame. Every result is right."""
    import shmipc.pool as pool_mod

    monkeypatch.setattr(pool_mod, "_MAX_FUNCS", 2)
    with Executor(2, mp_context=FORK) as ex:
        funcs = [square, echo, pid_after]  # the third has no number (limit 2)
        futs = [(f, i, ex.submit(f, i)) for i in range(300) for f in funcs]
        for f, i, fut in futs:
            got = fut.result(60)
            if f is pid_after:
                assert got[0] == i
            else:
                assert got == f(i)
        assert set(ex._pool._fids.values()) == {0, 1} and pid_after not in ex._pool._fids
        victim = ex.submit(pid_after, 0).result(60)[1]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while victim in [w.process.pid for w in ex._pool._workers]:
            assert time.monotonic() < deadline, "the worker was not replaced"
            time.sleep(0.01)
        pids = set()
        for i in range(200):
            assert ex.submit(square, i).result(60) == i * i
            pids.add(ex.submit(pid_after, i).result(60)[1])
        assert victim not in pids
        assert all(w.fids for w in ex._pool._workers)  # the new one was told too


@pytest.mark.parametrize("kind", ["apply_async", "submit"])
def test_calls_held_as_their_job_go_again_after_a_kill(kind: str) -> None:
    """A call sent straight to a worker is held as its job and frame (a module-level
    function), or as a task list (any other callable). When the worker dies before running
    them, each is read back from what was held and runs elsewhere with its own arguments;
    a finished call keeps no frame."""
    import functools

    from shmipc.pool import _ApplyResult, _PoolFuture

    with Pool(1, context=FORK) as pool:

        def call(fn: object, x: object) -> object:
            if kind == "apply_async":
                return pool.apply_async(fn, (x,))  # type: ignore[arg-type]
            return pool.submit(fn, x)  # type: ignore[arg-type]

        def get(h: object) -> object:
            return h.get(60) if kind == "apply_async" else h.result(60)  # type: ignore[attr-defined]

        for i in range(100):  # its tasks are fast: it may hold many
            old = get(call(pid_after, i))
        os.kill(old[1], signal.SIGSTOP)  # idle, as far as the parent can tell
        by_ref = [call(pid_after, i) for i in range(50)]
        by_value = [call(functools.partial(pid_after), 100 + i) for i in range(50)]
        w = pool._workers[0]
        with pool._lock:
            held = list(w.tasks.values())
        assert not pool._pending
        assert [type(t) for t in held] == [
            _ApplyResult if kind == "apply_async" else _PoolFuture
        ] * 50 + [list] * 50
        assert all(t._frame is not None for t in held[:50])
        os.kill(old[1], signal.SIGKILL)
        got = [get(h) for h in by_ref + by_value]
        assert [g[0] for g in got] == list(range(50)) + [100 + i for i in range(50)]
        assert {g[1] for g in got} == {pool._workers[0].process.pid} != {old[1]}
        assert all(h._frame is None for h in by_ref)


def test_callbacks_run_while_calls_keep_coming() -> None:
    """The result thread lets results wait while a caller submits straight to the workers
    (they come in larger batches), but only briefly: a callback runs while a stream of calls
    goes on, long before the workers' queues would fill and force a line."""
    ran = threading.Event()
    with Pool(2, context=FORK) as pool:
        burst = [pool.apply_async(square, (i,)) for i in range(4000)]  # both learn: fast
        assert [h.get(60) for h in burst] == [i * i for i in range(4000)]
        room = sum(w.limit for w in pool._workers)  # calls they may hold without a line
        deadline = time.monotonic() + 60
        n = 0
        while not ran.is_set():
            assert time.monotonic() < deadline, f"no callback ran during {n} calls"
            pool.apply_async(square, (n,), callback=lambda _r: ran.set())
            n += 1
            if n % 16 == 0:
                time.sleep(0.001)  # a stream of ~15k calls/s at most
        # At most ~2 x 10 ms of results wait (~300 calls, fewer under load); without that
        # bound the first callback would wait for the line, `room` calls in.
        if room >= 2000:
            assert n < room // 2, (n, room)
