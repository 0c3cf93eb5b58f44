"""Blocking waits: Ctrl-C interrupts each of them promptly, and they sleep rather than poll.

The design target is that Ctrl-C stops a wait within 100 ms: a signal interrupts the futex
sleep (EINTR) and control returns to Python at once, and without a signal a native wait
returns to Python every 100 ms slice anyway. The bounds asserted here are wider (1 s) so that
a loaded machine cannot fail them; the measured latency is a few milliseconds.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable

import pytest
from _procs import asleep_in_futex, wait_for

from shmipc import AtomicCounter, Barrier, Event, Lock, Semaphore

pytestmark = pytest.mark.timeout(60)

KEYBOARD_INTERRUPT = 42  # exit code of a child that got KeyboardInterrupt
RETURNED = 43  # exit code of a child whose wait returned normally


def fork_blocked(block: Callable[[], object]) -> int:
    """Fork a child that runs ``block`` with Python's default SIGINT handler."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            block()
            code = RETURNED
        except KeyboardInterrupt:
            code = KEYBOARD_INTERRUPT
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def reap(pid: int, timeout: float) -> tuple[int | None, float]:
    """(exit code or None if still running after timeout, seconds until it exited)."""
    t = time.monotonic()
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    elapsed = time.monotonic() - t
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None, elapsed
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), elapsed


def interrupt(block: Callable[[], object]) -> float:
    """Run ``block`` in a child, SIGINT it once asleep; the seconds it took to exit."""
    pid = fork_blocked(block)
    try:
        wait_for(lambda: asleep_in_futex(pid), what="child asleep")
    except AssertionError:
        reap(pid, 0)
        raise
    os.kill(pid, signal.SIGINT)
    code, elapsed = reap(pid, 5.0)
    assert code == KEYBOARD_INTERRUPT, f"child exit {code}"
    return elapsed


def test_ctrl_c_stops_event_wait():
    ev = Event()
    for _ in range(3):
        assert interrupt(ev.wait) < 1.0
    assert not ev.is_set()


def test_ctrl_c_stops_event_wait_with_timeout():
    ev = Event()
    assert interrupt(lambda: ev.wait(30)) < 1.0


def test_ctrl_c_stops_lock_acquire():
    lock = Lock()
    lock.acquire()
    for _ in range(3):
        assert interrupt(lock.acquire) < 1.0
    lock.release()
    # The interrupted acquirers took nothing: the lock is ours to take, not recovered.
    assert lock.acquire(timeout=5)
    assert lock.recovered is False
    assert lock.recoveries == 0
    lock.release()


def test_ctrl_c_stops_semaphore_acquire():
    sem = Semaphore(0)
    for _ in range(3):
        assert interrupt(sem.acquire) < 1.0
    assert sem.value == 0
    sem.release()
    assert sem.acquire(block=False)


def test_ctrl_c_stops_barrier_wait_and_withdraws():
    b = Barrier(2)
    for _ in range(3):
        assert interrupt(b.wait) < 1.0
        assert b.n_waiting == 0  # the interrupted party's arrival was taken back
    # Still a two-party barrier: one party alone times out.
    with pytest.raises(TimeoutError):
        b.wait(timeout=0.05)


def test_signal_handler_that_returns_lets_the_wait_go_on():
    """A handler that does not raise: the wait resumes and still sees the later set()."""
    ev = Event()
    handled = AtomicCounter()

    def block() -> None:
        signal.signal(signal.SIGUSR1, lambda *_: handled.add(1))
        assert ev.wait(30) is True

    pid = fork_blocked(block)
    wait_for(lambda: asleep_in_futex(pid), what="child asleep")
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: handled.load() == 1, what="handler ran")
    wait_for(lambda: asleep_in_futex(pid), what="child asleep again")
    ev.set()
    code, _ = reap(pid, 10.0)
    assert code == RETURNED


def test_blocked_waits_sleep_instead_of_polling():
    """Four children each blocked ~1 s (event, lock, semaphore, barrier) use little CPU.

    The children's own user + system time comes from wait4's rusage; a polling wait would
    burn close to a full second each.
    """
    ev, lock, sem, bar = Event(), Lock(), Semaphore(0), Barrier(2)
    lock.acquire()

    def lock_wait() -> None:
        assert lock.acquire(timeout=1.0) is False

    def barrier_wait() -> None:
        with pytest.raises(TimeoutError):
            bar.wait(timeout=1.0)

    blocks = [
        lambda: ev.wait(1.0),
        lock_wait,
        lambda: sem.acquire(timeout=1.0),
        barrier_wait,
    ]
    started = time.monotonic()
    pids = [fork_blocked(b) for b in blocks]
    usages = []
    for pid in pids:
        _, status, usage = os.wait4(pid, 0)
        assert os.waitstatus_to_exitcode(status) == RETURNED
        usages.append(usage.ru_utime + usage.ru_stime)
    assert time.monotonic() - started >= 0.95
    assert max(usages) < 0.2, f"CPU seconds per blocked child: {usages}"
    lock.release()
