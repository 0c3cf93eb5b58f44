"""The raw native core: atomics, futex wait/wake, spin-then-sleep waits, the robust mutex.

These call ``shmipc._native.lib`` directly, below the Python classes, so that each status code
and return value of csrc/native.c is pinned on its own. Memory comes from anonymous shared
regions, shared with forked children.
"""

from __future__ import annotations

import os
import select
import signal
import time
import traceback
from collections.abc import Callable

import pytest

from shmipc import Region
from shmipc._native import ABI_VERSION, lib

pytestmark = pytest.mark.timeout(60)

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
INT_MAX = 0x7FFFFFFF
SLICE_S = lib.SHMIPC_SLICE_NS / 1e9


# ---- helpers --------------------------------------------------------------------------------


class Procs:
    """Forked children that always end: reaped by ``join``, SIGKILLed at teardown."""

    def __init__(self) -> None:
        self.live: set[int] = set()

    def fork(self, fn: Callable[[], object]) -> int:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                fn()
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        self.live.add(pid)
        return pid

    def join(self, pid: int, timeout: float = 20.0) -> int:
        """The child's exit code (negative signal number if killed); fails after timeout."""
        fd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        if not ready:
            self.kill(pid)
            raise AssertionError(f"child {pid} still running after {timeout} s")
        _, status = os.waitpid(pid, 0)
        self.live.discard(pid)
        return os.waitstatus_to_exitcode(status)

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        self.live.discard(pid)

    def cleanup(self) -> None:
        for pid in list(self.live):
            self.kill(pid)


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.cleanup()


@pytest.fixture
def mem():
    """(base, offset) of a zeroed 4 KiB anonymous shared mapping."""
    region = Region.anonymous(4096)
    base, off = region.pointer(0)
    yield base, off
    region.close()


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a condition another process makes true (not a sleep: it returns as soon as true)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def asleep_in_futex(pid: int) -> bool:
    """True while ``pid`` sleeps inside a futex wait (its kernel wait channel says so)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return "futex" in f.read()
    except FileNotFoundError:
        return False


def in_ns(seconds: float) -> int:
    return time.monotonic_ns() + int(seconds * 1e9)


# ---- basics ---------------------------------------------------------------------------------


def test_abi_version_matches_python():
    assert lib.shmipc_abi_version() == ABI_VERSION == lib.SHMIPC_ABI_VERSION


def test_monotonic_clock_is_python_monotonic():
    before = time.monotonic_ns()
    now = lib.shmipc_monotonic_ns()
    after = time.monotonic_ns()
    assert before <= now <= after


def test_status_codes_are_distinct():
    codes = [
        lib.SHMIPC_OK,
        lib.SHMIPC_TIMEDOUT,
        lib.SHMIPC_CHANGED,
        lib.SHMIPC_INTERRUPTED,
        lib.SHMIPC_SLICE,
        lib.SHMIPC_OWNERDEAD,
        lib.SHMIPC_DEADLOCK,
        lib.SHMIPC_NOTOWNER,
        lib.SHMIPC_ERROR,
    ]
    assert len(set(codes)) == len(codes)
    assert lib.SHMIPC_OK == 0
    assert lib.SHMIPC_SLICE_NS == 100_000_000


def test_cpu_relax_returns():
    for _ in range(100):
        lib.shmipc_cpu_relax()


# ---- 32-bit atomics -------------------------------------------------------------------------


def test_load_store32(mem):
    b, o = mem
    lib.shmipc_store32_release(b, o, 7)
    assert lib.shmipc_load32_acquire(b, o) == 7
    lib.shmipc_store32_relaxed(b, o + 4, U32)
    assert lib.shmipc_load32_relaxed(b, o + 4) == U32
    assert lib.shmipc_load32_acquire(b, o) == 7  # neighbours untouched


def test_fetch_add32_returns_old_and_wraps(mem):
    b, o = mem
    lib.shmipc_store32_release(b, o, U32 - 1)
    assert lib.shmipc_fetch_add32_acq_rel(b, o, 1) == U32 - 1
    assert lib.shmipc_fetch_add32_acq_rel(b, o, 1) == U32
    assert lib.shmipc_load32_acquire(b, o) == 0  # wrapped around
    assert lib.shmipc_fetch_add32_acq_rel(b, o, U32) == 0  # adding 2**32-1 is subtracting 1
    assert lib.shmipc_load32_acquire(b, o) == U32


def test_fetch_add32_does_not_touch_neighbours(mem):
    b, o = mem
    lib.shmipc_store32_release(b, o + 4, 0)
    lib.shmipc_store32_release(b, o, U32)
    lib.shmipc_fetch_add32_acq_rel(b, o, 1)
    assert lib.shmipc_load32_acquire(b, o + 4) == 0  # no carry into the next word


def test_exchange32(mem):
    b, o = mem
    lib.shmipc_store32_release(b, o, 3)
    assert lib.shmipc_exchange32_acq_rel(b, o, 9) == 3
    assert lib.shmipc_load32_acquire(b, o) == 9


def test_cas32_success_returns_expected(mem):
    b, o = mem
    lib.shmipc_store32_release(b, o, 5)
    assert lib.shmipc_cas32_acq_rel(b, o, 5, 6) == 5
    assert lib.shmipc_load32_acquire(b, o) == 6


def test_cas32_failure_returns_found_value_and_leaves_it(mem):
    b, o = mem
    lib.shmipc_store32_release(b, o, 42)
    assert lib.shmipc_cas32_acq_rel(b, o, 5, 6) == 42
    assert lib.shmipc_load32_acquire(b, o) == 42


def test_atomics32_reject_out_of_range_arguments(mem):
    b, o = mem
    with pytest.raises(OverflowError):
        lib.shmipc_store32_release(b, o, 1 << 32)
    with pytest.raises(OverflowError):
        lib.shmipc_store32_release(b, o, -1)


# ---- 64-bit atomics -------------------------------------------------------------------------


def test_load_store64(mem):
    b, o = mem
    lib.shmipc_store64_release(b, o, 1 << 40)
    assert lib.shmipc_load64_acquire(b, o) == 1 << 40
    lib.shmipc_store64_relaxed(b, o + 8, U64)
    assert lib.shmipc_load64_relaxed(b, o + 8) == U64


def test_fetch_add64_returns_old_and_wraps(mem):
    b, o = mem
    lib.shmipc_store64_release(b, o, U64)
    assert lib.shmipc_fetch_add64_acq_rel(b, o, 1) == U64
    assert lib.shmipc_load64_acquire(b, o) == 0
    assert lib.shmipc_fetch_add64_acq_rel(b, o, U64) == 0  # two's complement -1
    assert lib.shmipc_load64_acquire(b, o) == U64


def test_fetch_add64_carries_across_32_bits(mem):
    b, o = mem
    lib.shmipc_store64_release(b, o, U32)
    lib.shmipc_fetch_add64_acq_rel(b, o, 1)
    assert lib.shmipc_load64_acquire(b, o) == 1 << 32
    assert lib.shmipc_load32_acquire(b, o + 4) == 1  # little-endian: high half at +4


def test_exchange64(mem):
    b, o = mem
    lib.shmipc_store64_release(b, o, 1 << 50)
    assert lib.shmipc_exchange64_acq_rel(b, o, 1) == 1 << 50
    assert lib.shmipc_load64_acquire(b, o) == 1


def test_cas64_returns_found_value(mem):
    b, o = mem
    lib.shmipc_store64_release(b, o, 1 << 60)
    assert lib.shmipc_cas64_acq_rel(b, o, 1 << 60, 2) == 1 << 60  # success: expected back
    assert lib.shmipc_load64_acquire(b, o) == 2
    assert lib.shmipc_cas64_acq_rel(b, o, 1 << 60, 3) == 2  # failure: the value found
    assert lib.shmipc_load64_acquire(b, o) == 2


def test_atomic_increments_across_processes_are_exact(mem, procs):
    b, o = mem
    n = 5000

    def work() -> None:
        for _ in range(n):
            lib.shmipc_fetch_add32_acq_rel(b, o, 1)
            lib.shmipc_fetch_add64_acq_rel(b, o + 8, 1)

    pids = [procs.fork(work) for _ in range(3)]
    assert [procs.join(p) for p in pids] == [0, 0, 0]
    assert lib.shmipc_load32_acquire(b, o) == 3 * n
    assert lib.shmipc_load64_acquire(b, o + 8) == 3 * n


# ---- raw futex --------------------------------------------------------------------------------


def test_futex_wait_changed_when_word_differs(mem):
    b, o = mem
    lib.shmipc_store32_release(b, o, 1)
    assert lib.shmipc_futex_wait(b, o, 0, in_ns(5)) == lib.SHMIPC_CHANGED


def test_futex_wait_timedout_at_past_deadline(mem):
    b, o = mem
    t = time.monotonic()
    assert lib.shmipc_futex_wait(b, o, 0, time.monotonic_ns() - 1) == lib.SHMIPC_TIMEDOUT
    assert lib.shmipc_futex_wait(b, o, 0, 0) == lib.SHMIPC_TIMEDOUT
    assert time.monotonic() - t < 0.5


def test_futex_wait_timedout_after_short_deadline(mem):
    b, o = mem
    t = time.monotonic()
    assert lib.shmipc_futex_wait(b, o, 0, in_ns(0.03)) == lib.SHMIPC_TIMEDOUT
    assert 0.025 <= time.monotonic() - t < 1.0


def test_futex_wait_returns_slice_without_deadline(mem):
    b, o = mem
    t = time.monotonic()
    assert lib.shmipc_futex_wait(b, o, 0, -1) == lib.SHMIPC_SLICE
    assert SLICE_S * 0.9 <= time.monotonic() - t < 1.0


def test_futex_wait_returns_slice_before_far_deadline(mem):
    b, o = mem
    t = time.monotonic()
    assert lib.shmipc_futex_wait(b, o, 0, in_ns(30)) == lib.SHMIPC_SLICE
    assert time.monotonic() - t < 1.0


def test_futex_wake_without_sleepers_wakes_none(mem):
    b, o = mem
    assert lib.shmipc_futex_wake(b, o, INT_MAX) == 0


def test_futex_wake_counts(mem, procs):
    """Three processes asleep on one word: wake(2) wakes exactly two, the rest wakes one."""
    b, o = mem
    word, woken = o, o + 64

    def sleeper() -> None:
        while lib.shmipc_load32_acquire(b, word) == 0:
            if lib.shmipc_futex_wait(b, word, 0, -1) == lib.SHMIPC_OK:
                lib.shmipc_fetch_add32_acq_rel(b, woken, 1)
                return

    pids = [procs.fork(sleeper) for _ in range(3)]
    wait_for(lambda: all(asleep_in_futex(p) for p in pids), what="three sleepers")
    assert lib.shmipc_futex_wake(b, word, 2) == 2
    wait_for(lambda: lib.shmipc_load32_acquire(b, woken) == 2, what="two wake-ups")
    # The third may be between two 100 ms slices at this instant: wake until it is out.
    total = 2
    while lib.shmipc_load32_acquire(b, woken) < 3:
        wait_for(
            lambda: (
                any(asleep_in_futex(p) for p in pids) or lib.shmipc_load32_acquire(b, woken) == 3
            ),
            what="the third sleeper",
        )
        total += lib.shmipc_futex_wake(b, word, INT_MAX)
        assert total <= 3
    wait_for(lambda: lib.shmipc_load32_acquire(b, woken) == 3, what="third wake-up")
    assert [procs.join(p) for p in pids] == [0, 0, 0]
    assert lib.shmipc_futex_wake(b, word, INT_MAX) == 0


def test_futex_wait_woken_by_other_process_returns_ok(mem, procs):
    b, o = mem
    word, rc = o, o + 64
    lib.shmipc_store32_release(b, rc, 99)

    def sleeper() -> None:
        r = lib.shmipc_futex_wait(b, word, 0, -1)
        while r == lib.SHMIPC_SLICE:
            r = lib.shmipc_futex_wait(b, word, 0, -1)
        lib.shmipc_store32_release(b, rc, r)

    pid = procs.fork(sleeper)
    wait_for(lambda: asleep_in_futex(pid), what="sleeper")
    lib.shmipc_store32_release(b, word, 1)
    while procs.live and lib.shmipc_load32_acquire(b, rc) == 99:
        if lib.shmipc_futex_wake(b, word, 1) == 1:
            break
        # Not in the queue this instant (between slices): it will see word == 1 and return
        # CHANGED by itself, so stop waking once it has reported.
        wait_for(lambda: asleep_in_futex(pid) or lib.shmipc_load32_acquire(b, rc) != 99)
    assert procs.join(pid) == 0
    assert lib.shmipc_load32_acquire(b, rc) in (lib.SHMIPC_OK, lib.SHMIPC_CHANGED)


# ---- spin-then-sleep wait -----------------------------------------------------------------------


def test_wait_while32_returns_ok_at_once_when_word_differs(mem):
    b, o = mem
    word, waiters = o, o + 4
    lib.shmipc_store32_release(b, word, 1)
    t = time.monotonic()
    assert lib.shmipc_wait_while32(b, word, 0, waiters, -1, 10**9) == lib.SHMIPC_OK
    assert time.monotonic() - t < 0.5  # did not spin the whole second
    assert lib.shmipc_load32_acquire(b, waiters) == 0


def test_wait_while32_times_out_and_unregisters(mem):
    b, o = mem
    word, waiters = o, o + 4
    t = time.monotonic()
    assert lib.shmipc_wait_while32(b, word, 0, waiters, in_ns(0.05), 20_000) == (
        lib.SHMIPC_TIMEDOUT
    )
    assert 0.045 <= time.monotonic() - t < 1.0
    assert lib.shmipc_load32_acquire(b, waiters) == 0


def test_wait_while32_past_deadline_times_out(mem):
    b, o = mem
    assert lib.shmipc_wait_while32(b, o, 0, o + 4, 0, 20_000) == lib.SHMIPC_TIMEDOUT
    assert lib.shmipc_wait_while32(b, o, 0, o + 4, 0, 0) == lib.SHMIPC_TIMEDOUT
    assert lib.shmipc_load32_acquire(b, o + 4) == 0


def test_wait_while32_spin_is_bounded_by_deadline(mem):
    b, o = mem
    t = time.monotonic()
    rc = lib.shmipc_wait_while32(b, o, 0, o + 4, in_ns(0.02), 10 * 10**9)  # 10 s spin asked
    assert rc == lib.SHMIPC_TIMEDOUT
    assert time.monotonic() - t < 1.0


def test_wait_while32_returns_slice_without_deadline(mem):
    b, o = mem
    t = time.monotonic()
    assert lib.shmipc_wait_while32(b, o, 0, o + 4, -1, 20_000) == lib.SHMIPC_SLICE
    assert SLICE_S * 0.9 <= time.monotonic() - t < 1.0
    assert lib.shmipc_load32_acquire(b, o + 4) == 0


def test_wake32_without_sleepers_issues_no_wake(mem):
    b, o = mem
    assert lib.shmipc_wake32(b, o, o + 4, INT_MAX) == 0


def test_wait_while32_registers_a_sleeper_and_wake32_wakes_it(mem, procs):
    b, o = mem
    word, waiters, rc = o, o + 4, o + 64
    lib.shmipc_store32_release(b, rc, 99)

    def sleeper() -> None:
        r = lib.shmipc_wait_while32(b, word, 0, waiters, -1, 20_000)
        while r == lib.SHMIPC_SLICE:
            r = lib.shmipc_wait_while32(b, word, 0, waiters, -1, 20_000)
        lib.shmipc_store32_release(b, rc, r)

    pid = procs.fork(sleeper)
    wait_for(lambda: lib.shmipc_load32_acquire(b, waiters) == 1, what="registration")
    wait_for(lambda: asleep_in_futex(pid), what="sleep")
    lib.shmipc_store32_release(b, word, 1)
    woke = lib.shmipc_wake32(b, word, waiters, INT_MAX)
    assert woke in (0, 1)  # 0 only if it was between two slices this very instant
    assert procs.join(pid) == 0
    assert lib.shmipc_load32_acquire(b, rc) == lib.SHMIPC_OK
    assert lib.shmipc_load32_acquire(b, waiters) == 0  # unregistered on the way out


def test_wake32_returns_number_of_sleepers_woken(mem, procs):
    b, o = mem
    word, waiters = o, o + 4

    def sleeper() -> None:
        while lib.shmipc_wait_while32(b, word, 0, waiters, -1, 20_000) != lib.SHMIPC_OK:
            pass

    pids = [procs.fork(sleeper) for _ in range(2)]
    wait_for(lambda: lib.shmipc_load32_acquire(b, waiters) == 2, what="two registrations")
    wait_for(lambda: all(asleep_in_futex(p) for p in pids), what="two sleepers")
    lib.shmipc_store32_release(b, word, 1)
    assert lib.shmipc_wake32(b, word, waiters, INT_MAX) == 2
    assert [procs.join(p) for p in pids] == [0, 0]
    assert lib.shmipc_load32_acquire(b, waiters) == 0
    assert lib.shmipc_wake32(b, word, waiters, INT_MAX) == 0


def test_spinning_waiter_is_not_registered(mem, procs):
    """A waiter still spinning has not registered, so the waker makes no syscall for it."""
    b, o = mem
    word, waiters, started = o, o + 4, o + 64

    def spinner() -> None:
        lib.shmipc_store32_release(b, started, 1)
        # Spin up to 20 s (never reached): the change below ends the spin.
        rc = lib.shmipc_wait_while32(b, word, 0, waiters, in_ns(30), 20 * 10**9)
        assert rc == lib.SHMIPC_OK, rc

    pid = procs.fork(spinner)
    wait_for(lambda: lib.shmipc_load32_acquire(b, started) == 1, what="spinner start")
    assert lib.shmipc_load32_acquire(b, waiters) == 0
    lib.shmipc_store32_release(b, word, 1)
    assert lib.shmipc_wake32(b, word, waiters, INT_MAX) == 0
    assert procs.join(pid) == 0
    assert lib.shmipc_load32_acquire(b, waiters) == 0


def test_wait_while32_woken_with_word_unchanged_reports_changed(mem, procs):
    """A wake-up that finds the word back at the blocked value is CHANGED: re-evaluate."""
    b, o = mem
    word, waiters, rc = o, o + 4, o + 64
    lib.shmipc_store32_release(b, rc, 99)

    def sleeper() -> None:
        r = lib.shmipc_wait_while32(b, word, 0, waiters, -1, 0)
        while r == lib.SHMIPC_SLICE:
            r = lib.shmipc_wait_while32(b, word, 0, waiters, -1, 0)
        lib.shmipc_store32_release(b, rc, r)

    pid = procs.fork(sleeper)
    while lib.shmipc_load32_acquire(b, rc) == 99:
        wait_for(lambda: asleep_in_futex(pid) or lib.shmipc_load32_acquire(b, rc) != 99)
        lib.shmipc_futex_wake(b, word, 1)  # a wake without a change of the word
        wait_for(lambda: asleep_in_futex(pid) or lib.shmipc_load32_acquire(b, rc) != 99)
    assert procs.join(pid) == 0
    assert lib.shmipc_load32_acquire(b, rc) == lib.SHMIPC_CHANGED


# ---- robust mutex ---------------------------------------------------------------------------


@pytest.fixture
def mutex(mem):
    b, o = mem
    assert lib.shmipc_mutex_init(b, o) == lib.SHMIPC_OK
    return b, o


def test_mutex_size_is_a_pthread_mutex():
    assert lib.shmipc_mutex_size() in (24, 32, 40, 48, 64)  # 40 on x86_64/glibc, 48 on arm64


def test_mutex_lock_unlock(mutex):
    b, o = mutex
    assert lib.shmipc_mutex_lock(b, o, -1) == lib.SHMIPC_OK
    assert lib.shmipc_mutex_unlock(b, o) == lib.SHMIPC_OK
    assert lib.shmipc_mutex_trylock(b, o) == lib.SHMIPC_OK
    assert lib.shmipc_mutex_unlock(b, o) == lib.SHMIPC_OK


def test_mutex_relock_by_holder_is_deadlock(mutex):
    b, o = mutex
    assert lib.shmipc_mutex_lock(b, o, -1) == lib.SHMIPC_OK
    assert lib.shmipc_mutex_lock(b, o, -1) == lib.SHMIPC_DEADLOCK
    assert lib.shmipc_mutex_unlock(b, o) == lib.SHMIPC_OK


def test_mutex_trylock_by_holder_is_deadlock(mutex):
    b, o = mutex
    assert lib.shmipc_mutex_lock(b, o, -1) == lib.SHMIPC_OK
    # glibc's robust error-checking trylock reports EDEADLK to the holder, not EBUSY.
    assert lib.shmipc_mutex_trylock(b, o) == lib.SHMIPC_DEADLOCK
    assert lib.shmipc_mutex_unlock(b, o) == lib.SHMIPC_OK


def test_mutex_unlock_when_not_held_is_notowner(mutex):
    b, o = mutex
    assert lib.shmipc_mutex_unlock(b, o) == lib.SHMIPC_NOTOWNER


def _hold(b, o, held_off: int) -> Callable[[], None]:
    def holder() -> None:
        assert lib.shmipc_mutex_lock(b, o, -1) == lib.SHMIPC_OK
        lib.shmipc_store32_release(b, held_off, 1)
        while lib.shmipc_load32_acquire(b, held_off) == 1:  # until told to release or killed
            lib.shmipc_futex_wait(b, held_off, 1, -1)
        assert lib.shmipc_mutex_unlock(b, o) == lib.SHMIPC_OK

    return holder


def test_mutex_held_elsewhere(mutex, procs):
    b, o = mutex
    held = o + 128
    pid = procs.fork(_hold(b, o, held))
    wait_for(lambda: lib.shmipc_load32_acquire(b, held) == 1, what="holder")
    assert lib.shmipc_mutex_trylock(b, o) == lib.SHMIPC_TIMEDOUT
    assert lib.shmipc_mutex_unlock(b, o) == lib.SHMIPC_NOTOWNER  # not ours to release
    assert lib.shmipc_mutex_lock(b, o, 0) == lib.SHMIPC_TIMEDOUT  # deadline already past
    t = time.monotonic()
    assert lib.shmipc_mutex_lock(b, o, in_ns(0.05)) == lib.SHMIPC_TIMEDOUT
    assert 0.045 <= time.monotonic() - t < 1.0
    t = time.monotonic()
    assert lib.shmipc_mutex_lock(b, o, -1) == lib.SHMIPC_SLICE
    assert SLICE_S * 0.9 <= time.monotonic() - t < 1.0
    lib.shmipc_store32_release(b, held, 2)
    lib.shmipc_futex_wake(b, held, 1)
    assert procs.join(pid) == 0
    assert lib.shmipc_mutex_lock(b, o, in_ns(5)) == lib.SHMIPC_OK
    assert lib.shmipc_mutex_unlock(b, o) == lib.SHMIPC_OK


def test_mutex_ownerdead_then_consistent(mutex, procs):
    b, o = mutex
    held = o + 128
    pid = procs.fork(_hold(b, o, held))
    wait_for(lambda: lib.shmipc_load32_acquire(b, held) == 1, what="holder")
    procs.kill(pid)
    assert lib.shmipc_mutex_lock(b, o, in_ns(5)) == lib.SHMIPC_OWNERDEAD
    assert lib.shmipc_mutex_unlock(b, o) == lib.SHMIPC_OK
    # Marked consistent on the way: usable as normal afterwards.
    assert lib.shmipc_mutex_lock(b, o, in_ns(5)) == lib.SHMIPC_OK
    assert lib.shmipc_mutex_unlock(b, o) == lib.SHMIPC_OK


def test_mutex_trylock_reports_ownerdead(mutex, procs):
    b, o = mutex
    held = o + 128
    pid = procs.fork(_hold(b, o, held))
    wait_for(lambda: lib.shmipc_load32_acquire(b, held) == 1, what="holder")
    procs.kill(pid)
    assert lib.shmipc_mutex_trylock(b, o) == lib.SHMIPC_OWNERDEAD
    assert lib.shmipc_mutex_unlock(b, o) == lib.SHMIPC_OK
