"""Workers of ``shmipc.Pool`` that die mid-task, and parents that die under their workers.

multiprocessing.Pool hangs forever when a worker dies mid-task; shmipc's fails that task's
result with ``BrokenWorker`` (naming the worker's pid and signal or exit code), replaces the
worker and goes on. A worker never outlives a dead parent by more than the liveness interval
(plus a margin here, for a loaded machine), and removes the pool's segment names on its way
out. The task functions are module-level so that spawned workers import them by name.
"""

from __future__ import annotations

import ctypes
import faulthandler
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import shmipc
from shmipc import _proc

pytestmark = pytest.mark.timeout(180)

SHM = "/dev/shm"


# ---- tasks (module level: spawned workers import them) -------------------------------------


def hold(report: shmipc.Queue) -> None:
    """Say which worker runs this, then block until killed."""
    report.put(os.getpid())
    time.sleep(600)


def hold_file(path: str) -> None:
    """``hold``, reporting through a file (a parent about to be SIGKILLed makes no queue:
    its segment would outlive it)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()} ")
    time.sleep(600)


def square(x: int) -> int:
    return x * x


def exit_now(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    faulthandler.disable()  # pytest's, inherited: its dump would only be noise here
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def big_result(seed: int) -> bytes:
    """A result larger than the queue's fast path, so that a kill may land in its put."""
    return bytes([seed % 251]) * (256 * 1024 + seed % 4096)


# ---- helpers ---------------------------------------------------------------------------------


def _gone(pid: int) -> bool:
    return _proc.process_state(pid, 0) is _proc.Liveness.DEAD or _is_zombie_or_absent(pid)


def _is_zombie_or_absent(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return True
    return raw[raw.rindex(b")") + 2 :].split()[0] in (b"Z", b"X")


def _pool_names(pool: shmipc.Pool) -> list[str]:
    names = [pool._results.name, pool._slots.name]
    names += [w.queue.name for w in pool._workers]
    return names


def _wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# ---- a worker killed mid-task ----------------------------------------------------------------


@pytest.mark.parametrize(("method", "rounds"), [("fork", 100), ("spawn", 5)])
def test_worker_sigkilled_mid_task_many_times(method: str, rounds: int) -> None:
    ctx = multiprocessing.get_context(method)
    report = shmipc.Queue(codec="msgpack")
    pool = shmipc.Pool(2, context=ctx)
    seen_pids: set[int] = set()
    try:
        first_names = _pool_names(pool)
        for i in range(rounds):
            fut = pool.submit(hold, report)
            pid = report.get(timeout=60)
            seen_pids.add(pid)
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(shmipc.BrokenWorker) as info:
                fut.result(timeout=60)
            err = info.value
            assert err.pid == pid and err.exitcode == -signal.SIGKILL
            assert err.signal == "SIGKILL"
            assert str(pid) in str(err) and "SIGKILL" in str(err)
            assert isinstance(err, concurrent_broken())
            # Later work passes, on the replacement and the other worker alike.
            assert pool.map(square, range(i, i + 8), chunksize=1) == [
                x * x for x in range(i, i + 8)
            ]
            assert pool.apply(square, (i,)) == i * i
        assert len(pool._pool) == 2
        live = [p.pid for p in pool._pool]
        seen_pids.update(live)
        names = first_names + _pool_names(pool)
    finally:
        pool.terminate()
        pool.join()
        report.close()
    for pid in seen_pids:
        assert _gone(pid), f"worker {pid} still runs"
    assert not multiprocessing.active_children()
    left = [n for n in set(names) if n and os.path.exists(os.path.join(SHM, n))]
    assert not left, f"segments left behind: {left}"


def concurrent_broken() -> type:
    from concurrent.futures.process import BrokenProcessPool

    return BrokenProcessPool


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_exit_and_segfault_mid_task(method: str) -> None:
    """os._exit and a segfault in a task: each fails that task with what happened."""
    with shmipc.Pool(2, context=multiprocessing.get_context(method)) as pool:
        with pytest.raises(shmipc.BrokenWorker, match="exited with code 3") as info:
            pool.apply(exit_now, (3,))
        assert info.value.exitcode == 3 and info.value.signal is None
        res = pool.apply_async(segfault)
        with pytest.raises(shmipc.BrokenWorker, match="SIGSEGV"):
            res.get(timeout=60)
        assert not res.successful()
        assert pool.map(square, range(100)) == [x * x for x in range(100)]
    pool.join()


def test_only_the_running_task_fails() -> None:
    """Tasks queued behind the one that killed its worker run on, elsewhere."""
    with shmipc.Pool(1, context=multiprocessing.get_context("fork")) as pool:
        doomed = pool.apply_async(exit_now, (5,))
        after = [pool.apply_async(square, (i,)) for i in range(6)]  # queued on the same worker
        with pytest.raises(shmipc.BrokenWorker):
            doomed.get(timeout=60)
        assert [r.get(timeout=60) for r in after] == [i * i for i in range(6)]
    pool.join()


def test_kills_during_large_results_keep_the_queue_working() -> None:
    """Workers SIGKILLed at random moments while they put large results (some kills land
    inside a put holding the result queue's claim): every result is either right or a
    BrokenWorker, and the pool ends working."""
    rng = random.Random(1234)
    with shmipc.Pool(2, context=multiprocessing.get_context("fork")) as pool:
        kills = 0
        for rnd in range(30):
            futs = [pool.submit(big_result, rnd * 100 + k) for k in range(8)]
            time.sleep(rng.uniform(0, 0.004))
            victim = rng.choice(pool._pool).pid
            if victim is not None:
                try:
                    os.kill(victim, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            for k, fut in enumerate(futs):
                try:
                    got = fut.result(timeout=60)
                except shmipc.BrokenWorker:
                    continue
                assert got == big_result(rnd * 100 + k)
        assert kills >= 20
        assert pool.map(big_result, range(16)) == [big_result(s) for s in range(16)]
    pool.join()


# ---- the parent killed -----------------------------------------------------------------------

PARENT = textwrap.dedent(
    """
    import multiprocessing, os, sys, time
    import numpy
    import shmipc
    from test_pool_worker_faults import hold_file, square

    if __name__ == "__main__":
        ctx = multiprocessing.get_context(sys.argv[1])
        pool = shmipc.Pool(2, context=ctx, buffer_pool_size=1 << 20)  # blocks up to 128 KiB
        assert pool.apply(square, (3,)) == 9
        busy = [pool.apply_async(hold_file, (sys.argv[2],)) for _ in range(2)]
        while len(open(sys.argv[2]).read().split()) < 2:  # both workers inside a task
            time.sleep(0.01)
        # Queued behind one of them, too large for its ring: waits in a spill file.
        big = pool.apply_async(len, (b"x" * (3 << 20),))
        # ... and one whose buffer is above the block pool's classes: a dedicated segment.
        blocked = pool.apply_async(len, (numpy.ones(1 << 17),))
        names = [pool._results.name, pool._slots.name] + [w.queue.name for w in pool._workers]
        names.append(pool.buffer_pool.name)
        print(" ".join(str(p.pid) for p in pool._pool), flush=True)
        print(" ".join(names), flush=True)
        time.sleep(600)
    """
)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_workers_exit_when_the_parent_is_sigkilled(method: str, tmp_path) -> None:
    script = tmp_path / "parent.py"
    (tmp_path / "running").write_text("")
    script.write_text(PARENT)
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([here, *sys.path])
    parent = subprocess.Popen(
        [sys.executable, str(script), method, str(tmp_path / "running")],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        pids = [int(x) for x in parent.stdout.readline().split()]
        names = parent.stdout.readline().split()
        assert len(pids) == 2 and len(names) == 5, (pids, names)
        spills = [f"shmipc_spill_{n}" for n in names]
        assert any(e.startswith(tuple(spills)) for e in os.listdir(SHM)), "no spill pending"
        dedicated = names[-1] + ".d"
        assert any(e.startswith(dedicated) for e in os.listdir(SHM)), "no dedicated block"
        parent.kill()
        parent.wait(30)
        killed = time.monotonic()
        # liveness interval 1 s + a wide margin for a loaded 2-core machine
        _wait(lambda: all(_gone(p) for p in pids), 1.0 + 5.0, f"workers {pids} to exit")
        took = time.monotonic() - killed
        spills = [f"shmipc_spill_{n}" for n in names] + [dedicated]

        def cleaned() -> bool:
            left = [e for e in os.listdir(SHM) if e in names or e.startswith(tuple(spills))]
            return not left

        _wait(cleaned, 5.0, f"the pool's segments {names} and their spills to be removed")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)
        for p in locals().get("pids", []):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert took < 6.0
