"""The raw native core: atomics, futex wait/wake, spin-then-sleep waits, the robust lock.

These call ``shmipc._native.lib`` directly, below the Python classes, so that each status code
and return value of csrc/native.c is pinned on its own. Memory comes from anonymous shared
regions, shared with forked children.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from _procs import asleep_in_futex, wait_for

from shmipc import Region, _proc
from shmipc._native import ABI_VERSION, lib

pytestmark = pytest.mark.timeout(60)

PROCS_JOIN_TIMEOUT = 20.0  # procs.join's default (the procs fixture, tests/conftest.py)

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
INT_MAX = 0x7FFFFFFF
SLICE_S = lib.SHMIPC_SLICE_NS / 1e9


# ---- helpers --------------------------------------------------------------------------------


@pytest.fixture
def mem():
    """(base, offset) of a zeroed 4 KiB anonymous shared mapping."""
    region = Region.anonymous(4096)
    base, off = region.pointer(0)
    yield base, off
    region.close()


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


# ---- robust lock ----------------------------------------------------------------------------
#
# The lock word (u64 at the lock's offset) is 0 when free, else the holder's identity: thread
# id in bits 0..31 | low 32 bits of that thread's start time (clock ticks) in bits 32..63.
# The u32 at +8 counts the waiters asleep on the word. Nothing in C decides that a holder is
# dead: the caller checks (/proc) and then steals the word it observed.

SPIN = 20_000
WAITERS = lib.SHMIPC_LOCK_OFF_WAITERS


def identity_of(tid: int) -> int:
    """What the lock word holds for thread ``tid`` (read from /proc, as Python checks it)."""
    started = _proc.start_time(tid)
    assert started is not None, f"thread {tid} is not running"
    return (started & U32) << 32 | tid


def test_lock_size_and_layout():
    assert lib.SHMIPC_LOCK_SIZE == 16
    assert lib.SHMIPC_LOCK_OFF_WAITERS == 8


def test_lock_identity_is_thread_id_and_start_time():
    me = lib.shmipc_lock_identity()
    tid = threading.get_native_id()
    assert me & U32 == tid
    assert me >> 32 == _proc.start_time(tid) & U32
    assert me == identity_of(tid)
    assert lib.shmipc_lock_identity() == me  # stable
    assert _proc.identity_alive(me)


def test_lock_identity_is_per_thread():
    got: list[int] = []

    def other() -> None:
        got.append(lib.shmipc_lock_identity())
        got.append(identity_of(threading.get_native_id()))

    t = threading.Thread(target=other)
    t.start()
    t.join(20)
    theirs, expected = got
    assert theirs == expected
    assert theirs & U32 != lib.shmipc_lock_identity() & U32
    # Once the thread has ended, nothing lives under its identity. (join() returns when the
    # Python thread is done, a moment before the OS thread is gone.)
    wait_for(lambda: not _proc.identity_alive(theirs), what="the thread's end")


def test_forked_child_gets_a_fresh_identity(mem, procs):
    """The identity is cached per thread; a forked child's only thread has another id (and
    start time), so it must not inherit the parent's: it would hold the parent's locks."""
    b, o = mem
    lock, reported = o, o + 64
    parent = lib.shmipc_lock_identity()  # computed (and cached) before the fork
    assert lib.shmipc_lock_try(b, lock) == lib.SHMIPC_OK  # the parent holds it
    lib.shmipc_store32_release(b, reported + 8, 99)

    def child() -> None:
        lib.shmipc_store64_release(b, reported, lib.shmipc_lock_identity())
        # Not the holder: busy (not DEADLOCK), and its release is refused.
        assert lib.shmipc_lock_try(b, lock) == lib.SHMIPC_TIMEDOUT
        assert lib.shmipc_lock_release(b, lock) == lib.SHMIPC_NOTOWNER
        assert lib.shmipc_load64_acquire(b, lock) == parent  # untouched

    pid = procs.fork(child)
    assert procs.join(pid) == 0
    theirs = lib.shmipc_load64_acquire(b, reported)
    assert theirs != parent
    assert theirs & U32 == pid  # a forked child's only thread id is its pid
    assert not _proc.identity_alive(theirs)  # (reaped)
    assert lib.shmipc_lock_identity() == parent  # the parent's own is unchanged
    assert lib.shmipc_lock_release(b, lock) == lib.SHMIPC_OK


def test_lock_try_acquire_release(mem):
    b, o = mem
    me = lib.shmipc_lock_identity()
    assert lib.shmipc_lock_try(b, o) == lib.SHMIPC_OK
    assert lib.shmipc_load64_acquire(b, o) == me  # the word names the holder
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK
    assert lib.shmipc_load64_acquire(b, o) == 0
    assert lib.shmipc_lock_acquire(b, o, -1, SPIN) == lib.SHMIPC_OK
    assert lib.shmipc_load64_acquire(b, o) == me
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK
    assert lib.shmipc_lock_acquire(b, o, 0, 0) == lib.SHMIPC_OK  # free: no wait needed
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK
    assert lib.shmipc_lock_acquire(b, o, in_ns(5), SPIN) == lib.SHMIPC_OK
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK
    assert lib.shmipc_load64_acquire(b, o) == 0
    assert lib.shmipc_load32_acquire(b, o + WAITERS) == 0


def test_lock_relock_by_holder_is_deadlock(mem):
    b, o = mem
    assert lib.shmipc_lock_acquire(b, o, -1, SPIN) == lib.SHMIPC_OK
    t = time.monotonic()
    assert lib.shmipc_lock_acquire(b, o, -1, SPIN) == lib.SHMIPC_DEADLOCK
    assert lib.shmipc_lock_acquire(b, o, in_ns(5), SPIN) == lib.SHMIPC_DEADLOCK
    assert lib.shmipc_lock_acquire(b, o, 0, 0) == lib.SHMIPC_DEADLOCK
    assert time.monotonic() - t < 0.5  # at once, no wait
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK


def test_lock_try_by_holder_is_deadlock(mem):
    b, o = mem
    assert lib.shmipc_lock_acquire(b, o, -1, SPIN) == lib.SHMIPC_OK
    assert lib.shmipc_lock_try(b, o) == lib.SHMIPC_DEADLOCK
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK


def test_lock_release_when_not_held_is_notowner(mem):
    b, o = mem
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_NOTOWNER
    assert lib.shmipc_load64_acquire(b, o) == 0
    # Held by another identity (here: this thread's id with another start time): refused,
    # and the word is left as it was.
    other = lib.shmipc_lock_identity() ^ (1 << 32)
    lib.shmipc_store64_release(b, o, other)
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_NOTOWNER
    assert lib.shmipc_load64_acquire(b, o) == other


def test_lock_held_by_another_thread_of_this_process(mem):
    """Ownership is per thread: another thread's hold is not this thread's."""
    b, o = mem
    held, stop = threading.Event(), threading.Event()
    codes: list[int] = []

    def holder() -> None:
        codes.append(lib.shmipc_lock_acquire(b, o, -1, SPIN))
        held.set()
        stop.wait(20)
        codes.append(lib.shmipc_lock_release(b, o))

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(20)
        assert lib.shmipc_lock_try(b, o) == lib.SHMIPC_TIMEDOUT
        assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_NOTOWNER
        assert lib.shmipc_lock_acquire(b, o, in_ns(0.02), SPIN) == lib.SHMIPC_TIMEDOUT
    finally:
        stop.set()
        t.join(20)
    assert codes == [lib.SHMIPC_OK, lib.SHMIPC_OK]
    assert lib.shmipc_lock_try(b, o) == lib.SHMIPC_OK
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK


def _hold(b, o, held_off: int) -> Callable[[], None]:
    def holder() -> None:
        assert lib.shmipc_lock_acquire(b, o, -1, SPIN) == lib.SHMIPC_OK
        lib.shmipc_store32_release(b, held_off, 1)
        while lib.shmipc_load32_acquire(b, held_off) == 1:  # until told to release or killed
            lib.shmipc_futex_wait(b, held_off, 1, -1)
        assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK

    return holder


def test_lock_held_elsewhere(mem, procs):
    b, o = mem
    held = o + 128
    pid = procs.fork(_hold(b, o, held))
    wait_for(lambda: lib.shmipc_load32_acquire(b, held) == 1, what="holder")
    assert lib.shmipc_load64_acquire(b, o) == identity_of(pid)  # the child's own identity
    assert lib.shmipc_lock_try(b, o) == lib.SHMIPC_TIMEDOUT
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_NOTOWNER  # not ours to release
    assert lib.shmipc_lock_acquire(b, o, 0, SPIN) == lib.SHMIPC_TIMEDOUT  # no wait allowed
    t = time.monotonic()
    assert lib.shmipc_lock_acquire(b, o, time.monotonic_ns() - 1, SPIN) == lib.SHMIPC_TIMEDOUT
    assert time.monotonic() - t < 0.5
    t = time.monotonic()
    assert lib.shmipc_lock_acquire(b, o, in_ns(0.05), SPIN) == lib.SHMIPC_TIMEDOUT
    assert 0.045 <= time.monotonic() - t < 1.0
    t = time.monotonic()
    assert lib.shmipc_lock_acquire(b, o, -1, SPIN) == lib.SHMIPC_SLICE
    assert SLICE_S * 0.9 <= time.monotonic() - t < 1.0
    t = time.monotonic()
    assert lib.shmipc_lock_acquire(b, o, in_ns(30), SPIN) == lib.SHMIPC_SLICE  # far deadline
    assert SLICE_S * 0.9 <= time.monotonic() - t < 1.0
    assert lib.shmipc_load32_acquire(b, o + WAITERS) == 0  # unregistered on the way out
    assert lib.shmipc_load64_acquire(b, o) == identity_of(pid)  # still the child's
    lib.shmipc_store32_release(b, held, 2)
    lib.shmipc_futex_wake(b, held, 1)
    assert procs.join(pid) == 0
    assert lib.shmipc_load64_acquire(b, o) == 0  # released by its holder
    assert lib.shmipc_lock_acquire(b, o, in_ns(5), SPIN) == lib.SHMIPC_OK
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK


def test_lock_release_wakes_a_sleeping_waiter(mem, procs):
    b, o = mem
    rc = o + 64
    lib.shmipc_store32_release(b, rc, 99)
    assert lib.shmipc_lock_try(b, o) == lib.SHMIPC_OK

    def waiter() -> None:
        r = lib.shmipc_lock_acquire(b, o, -1, SPIN)
        while r == lib.SHMIPC_SLICE:
            r = lib.shmipc_lock_acquire(b, o, -1, SPIN)
        lib.shmipc_store32_release(b, rc, r)
        assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK

    pid = procs.fork(waiter)
    wait_for(lambda: lib.shmipc_load32_acquire(b, o + WAITERS) == 1, what="registration")
    wait_for(lambda: asleep_in_futex(pid), what="sleep")
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK
    assert procs.join(pid) == 0
    assert lib.shmipc_load32_acquire(b, rc) == lib.SHMIPC_OK
    assert lib.shmipc_load32_acquire(b, o + WAITERS) == 0
    assert lib.shmipc_load64_acquire(b, o) == 0


def test_dead_holders_word_stays_until_stolen(mem, procs):
    """Nothing hands a dead holder's lock on by itself: its word keeps naming the dead thread,
    acquirers time out, until one that found the holder dead steals it (OWNERDEAD)."""
    b, o = mem
    held = o + 128
    pid = procs.fork(_hold(b, o, held))
    wait_for(lambda: lib.shmipc_load32_acquire(b, held) == 1, what="holder")
    word = lib.shmipc_load64_acquire(b, o)
    assert word == identity_of(pid)
    assert _proc.identity_alive(word)
    procs.kill(pid)
    assert not _proc.identity_alive(word)
    assert lib.shmipc_load64_acquire(b, o) == word
    assert lib.shmipc_lock_try(b, o) == lib.SHMIPC_TIMEDOUT
    assert lib.shmipc_lock_acquire(b, o, in_ns(0.05), SPIN) == lib.SHMIPC_TIMEDOUT
    assert lib.shmipc_lock_steal(b, o, word) == lib.SHMIPC_OWNERDEAD
    assert lib.shmipc_load64_acquire(b, o) == lib.shmipc_lock_identity()  # ours now
    # Another waiter that saw the same dead holder comes too late: the word has moved on.
    assert lib.shmipc_lock_steal(b, o, word) == lib.SHMIPC_CHANGED
    assert lib.shmipc_lock_try(b, o) == lib.SHMIPC_DEADLOCK  # held, by us
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK
    # Usable as normal afterwards.
    assert lib.shmipc_lock_acquire(b, o, in_ns(5), SPIN) == lib.SHMIPC_OK
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK


def test_dead_threads_word_can_be_stolen(mem):
    """A thread of this process that ended holding the lock: same as a dead process."""
    b, o = mem
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(lib.shmipc_lock_acquire(b, o, -1, SPIN)))
    t.start()
    t.join(20)
    assert got == [lib.SHMIPC_OK]
    word = lib.shmipc_load64_acquire(b, o)
    assert word & U32 != threading.get_native_id()
    # join() returns when the Python thread is done, a moment before the OS thread is gone.
    wait_for(lambda: not _proc.identity_alive(word), what="the thread's end")
    assert lib.shmipc_load64_acquire(b, o) == word  # nobody released it
    assert lib.shmipc_lock_try(b, o) == lib.SHMIPC_TIMEDOUT
    assert lib.shmipc_lock_steal(b, o, word) == lib.SHMIPC_OWNERDEAD
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK


def test_steal_with_a_stale_observed_value_is_changed(mem):
    b, o = mem
    dead = 0x3FFFFFFF | 12345 << 32  # a thread id no kernel issues
    lib.shmipc_store64_release(b, o, dead)
    for stale in (dead + 1, dead ^ (1 << 32), 0, lib.shmipc_lock_identity()):
        assert lib.shmipc_lock_steal(b, o, stale) == lib.SHMIPC_CHANGED
        assert lib.shmipc_load64_acquire(b, o) == dead  # untouched
    # A free lock is not stolen either: observed 0 never matches a holder.
    lib.shmipc_store64_release(b, o, 0)
    assert lib.shmipc_lock_steal(b, o, 0) == lib.SHMIPC_CHANGED
    assert lib.shmipc_load64_acquire(b, o) == 0
    # Nor is our own hold "stolen" from ourselves.
    assert lib.shmipc_lock_try(b, o) == lib.SHMIPC_OK
    assert lib.shmipc_lock_steal(b, o, lib.shmipc_lock_identity()) == lib.SHMIPC_CHANGED
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK
    # The real one takes it.
    lib.shmipc_store64_release(b, o, dead)
    assert lib.shmipc_lock_steal(b, o, dead) == lib.SHMIPC_OWNERDEAD
    assert lib.shmipc_lock_release(b, o) == lib.SHMIPC_OK
