"""Event: a flag processes wait on, across fork, spawn and unrelated processes."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

import pytest
from _procs import wait_for

from shmipc import AtomicCounter, Event, Region
from shmipc._native import lib

pytestmark = pytest.mark.timeout(60)

PROCS_JOIN_TIMEOUT = 30.0  # procs.join's default (the procs fixture, tests/conftest.py)


def sleepers(ev: Event) -> int:
    """How many processes are registered asleep on the event (past their spin)."""
    return lib.shmipc_load32_acquire(ev._base, ev._off + Event._WAITERS)


# ---- in one process -------------------------------------------------------------------------


def test_starts_clear():
    ev = Event()
    assert not ev.is_set()
    assert "unset" in repr(ev)  # multiprocessing.Event says "unset" too


def test_set_clear_is_set():
    ev = Event()
    ev.set()
    assert ev.is_set()
    assert "set" in repr(ev)
    ev.set()  # idempotent
    assert ev.is_set()
    ev.clear()
    assert not ev.is_set()
    ev.clear()
    assert not ev.is_set()


def test_wait_when_set_returns_true_at_once():
    ev = Event()
    ev.set()
    t = time.monotonic()
    assert ev.wait() is True
    assert ev.wait(0) is True
    assert ev.wait(10) is True
    assert ev.wait(float("inf")) is True
    assert ev.wait(1e12) is True  # far beyond an int64 nanosecond deadline: forever
    assert time.monotonic() - t < 0.5


def test_wait_timeout_when_clear_returns_false():
    ev = Event()
    t = time.monotonic()
    assert ev.wait(0.1) is False
    assert 0.09 <= time.monotonic() - t < 1.0
    t = time.monotonic()
    assert ev.wait(0) is False
    assert ev.wait(-1) is False
    assert time.monotonic() - t < 0.5
    assert sleepers(ev) == 0


def test_wait_nan_timeout_is_value_error():
    with pytest.raises(ValueError, match="NaN"):
        Event().wait(float("nan"))


def test_layout_matches_docstring():
    assert Event.LAYOUT["flag"] == 0
    assert Event.LAYOUT["waiters"] == 4
    assert Event.SIZE == 64


# ---- across processes -----------------------------------------------------------------------


def test_fork_child_woken_by_set(procs):
    ev = Event()

    def child() -> None:
        assert ev.wait(20) is True

    pid = procs.fork(child)
    wait_for(lambda: sleepers(ev) == 1, what="child asleep")
    ev.set()
    assert procs.join(pid) == 0


def test_fork_child_sets_parent_wakes(procs):
    ev, go = Event(), Event()

    def child() -> None:
        go.wait(20)
        ev.set()

    pid = procs.fork(child)
    go.set()
    assert ev.wait(20) is True
    assert procs.join(pid) == 0


def test_wait_forever_in_child_is_woken(procs):
    ev = Event()

    def child() -> None:
        assert ev.wait(float("inf")) is True

    pid = procs.fork(child)
    wait_for(lambda: sleepers(ev) == 1, what="child asleep")
    ev.set()
    assert procs.join(pid) == 0


def test_many_waiters_all_woken_by_one_set(procs):
    ev = Event()
    woken = AtomicCounter()
    n = 6

    def child() -> None:
        assert ev.wait(20) is True
        woken.add(1)

    pids = [procs.fork(child) for _ in range(n)]
    wait_for(lambda: sleepers(ev) == n, what=f"{n} sleepers")
    ev.set()
    assert [procs.join(p) for p in pids] == [0] * n
    assert woken.load() == n
    assert sleepers(ev) == 0


def test_waiters_that_only_spin_are_woken_too(procs):
    ev = Event()
    started = AtomicCounter()

    def child() -> None:
        started.add(1)
        assert ev.wait(20) is True

    pids = [procs.fork(child) for _ in range(3)]
    wait_for(lambda: started.load() == 3, what="children started")
    ev.set()  # some may still be spinning or not yet waiting: every one must get through
    assert [procs.join(p) for p in pids] == [0, 0, 0]


def test_clear_makes_later_waits_block(procs):
    ev = Event()
    ev.set()
    ev.clear()

    def child() -> None:
        assert ev.wait(0.05) is False

    assert procs.join(procs.fork(child)) == 0


def _spawn_waiter(ev: Event, ready: Event) -> None:
    ready.set()
    ok = ev.wait(30)
    ev.close()
    ready.close()
    sys.exit(0 if ok else 3)


def test_spawn_child_gets_event_pickled_by_name(shm_name):
    ev = Event.create(shm_name)
    ready = Event.create()
    try:
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=_spawn_waiter, args=(ev, ready))
        proc.start()
        try:
            wait_for(lambda: ready.wait(0.05) or proc.exitcode is not None, timeout=30)
            assert ready.is_set(), f"spawned child never attached (exit {proc.exitcode})"
            wait_for(lambda: sleepers(ev) == 1, what="spawned child asleep")
            ev.set()
            proc.join(30)
            assert proc.exitcode == 0
        finally:
            if proc.is_alive():
                proc.kill()
                proc.join()
    finally:
        ev.close()
        ready.close()
    assert not os.path.exists(f"/dev/shm/{shm_name}")


_UNRELATED = """
import sys
from shmipc import Event
ev = Event.attach(sys.argv[1])
print("attached", flush=True)
ok = ev.wait(30)
print("woken" if ok else "timeout", flush=True)
ev.close()
sys.exit(0 if ok else 3)
"""


def test_unrelated_process_attaches_by_name(shm_name):
    ev = Event.create(shm_name)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _UNRELATED, shm_name],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "attached"
            wait_for(lambda: sleepers(ev) == 1, what="unrelated process asleep")
            ev.set()
            out, _ = proc.communicate(timeout=30)
            assert out.strip() == "woken"
            assert proc.returncode == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        ev.close()


def test_unrelated_process_sets_event_we_wait_on(shm_name):
    ev = Event.create(shm_name)
    code = "import sys; from shmipc import Event; e = Event.attach(sys.argv[1]); e.set()"
    try:
        proc = subprocess.Popen([sys.executable, "-c", code, shm_name])
        try:
            # Wait for the set, but stop early if the child died without making it.
            wait_for(lambda: ev.wait(0.05) or proc.poll() is not None, timeout=30)
            assert proc.wait(30) == 0
            assert ev.is_set()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        ev.close()


def test_attached_handle_sees_state(shm_name):
    ev = Event.create(shm_name)
    try:
        ev.set()
        other = Event.attach(shm_name)
        assert other.is_set()
        other.clear()
        assert not ev.is_set()
        other.close()
    finally:
        ev.close()


def test_at_create_resets_stale_state():
    """A placed Event made over used bytes starts clear, whatever was there before."""
    region = Region.anonymous(4096)
    region.buffer[64 : 64 + Event.SIZE] = b"\x01" * Event.SIZE
    ev = Event.at(region, 64, create=True)
    assert not ev.is_set()
    assert sleepers(ev) == 0
    assert ev.wait(0.01) is False
    region.close()
