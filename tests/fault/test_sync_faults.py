"""Sync primitives when processes die: SIGKILL at chosen and at random points.

The Lock is the robust one: a holder's death hands it to the next acquirer with
``recovered`` set, so the state it guards can be repaired. Waiters of the other primitives
that die simply vanish from the futex queue; the survivors are woken as before.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from _procs import Procs, asleep_in_futex, wait_for

from shmipc import AtomicCounter, Barrier, Event, Lock, Region, Semaphore, _proc
from shmipc._native import lib

pytestmark = pytest.mark.timeout(60)

PROCS_JOIN_TIMEOUT = 30.0  # procs.join's default (the procs fixture, tests/conftest.py)


def holder(lock: Lock, held: Event) -> Callable[[], None]:
    """A child that takes the lock, says so, and then holds it until it is killed."""

    def body() -> None:
        assert lock.acquire(timeout=20)
        held.set()
        Event().wait(60)

    return body


# ---- the Lock outlives its holders --------------------------------------------------------------


def test_many_blocked_waiters_exactly_one_recovers(procs):
    lock, held = Lock(), Event()
    recovered, acquired = AtomicCounter(), AtomicCounter()
    h = procs.fork(holder(lock, held))
    assert held.wait(20)

    def waiter() -> None:
        assert lock.acquire(timeout=20)
        recovered.add(int(lock.recovered))
        acquired.add(1)
        lock.release()

    waiters = [procs.fork(waiter) for _ in range(3)]
    wait_for(lambda: all(asleep_in_futex(w) for w in waiters), what="waiters blocked")
    assert procs.kill(h) == -signal.SIGKILL
    assert [procs.join(w) for w in waiters] == [0, 0, 0]
    assert acquired.load() == 3
    assert recovered.load() == 1  # the first one repairs; the others find it consistent
    assert lock.recoveries == 1


_UNRELATED_HOLDER = """
import sys
from shmipc import Lock
lock = Lock.attach(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()  # hold until killed
"""


def test_unrelated_holder_killed(shm_name):
    """A holder in an unrelated process (attached by name, another mapping address) dies."""
    lock = Lock.create(shm_name)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _UNRELATED_HOLDER, shm_name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "held"
            assert lock.acquire(timeout=0.05) is False
            proc.kill()
            proc.wait(10)
            died = time.monotonic()
            assert lock.acquire(timeout=5) is True
            assert time.monotonic() - died < 1.0
            assert lock.recovered is True
            assert lock.recoveries == 1
            lock.release()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
    finally:
        lock.close()


# The shared state the random-kill test guards with the lock: a value, one slot per worker
# (value == sum of slots whenever the lock is free and consistent), and an undo record written
# before each update so that whoever recovers the lock can roll a half-done update back.
_CELL = struct.Struct("<q")
_UNDO = struct.Struct("<qqqq")  # valid, worker index, old value, old slot
VALUE_OFF, UNDO_OFF, SLOTS_OFF, PROGRESS_OFF, LOCK_OFF = 0, 64, 128, 1024, 8192
MAX_WORKERS = 100


def _slot(k: int) -> int:
    return SLOTS_OFF + 8 * k


def _repair(buf: memoryview) -> None:
    valid, k, old_value, old_slot = _UNDO.unpack_from(buf, UNDO_OFF)
    if valid:
        _CELL.pack_into(buf, VALUE_OFF, old_value)
        _CELL.pack_into(buf, _slot(k), old_slot)
        _UNDO.pack_into(buf, UNDO_OFF, 0, 0, 0, 0)


def _consistent(buf: memoryview) -> bool:
    slots = sum(_CELL.unpack_from(buf, _slot(k))[0] for k in range(MAX_WORKERS))
    clean = _UNDO.unpack_from(buf, UNDO_OFF)[0] == 0
    return clean and _CELL.unpack_from(buf, VALUE_OFF)[0] == slots


def test_random_sigkills_never_block_survivors(procs):
    """50 workers SIGKILLed at random moments of an acquire/modify/release loop.

    Three workers run at a time; the parent kills a random one once it has made a random
    amount of progress, checks that the lock can be taken within 1 s of the death, and starts
    a replacement. Every acquirer that finds the lock recovered rolls back the dead holder's
    half-done update, so the guarded state stays consistent throughout. A worker that cannot
    get the lock within 10 s exits with status 3 (blocked), which fails the test.
    """
    rng = random.Random(0x5EED)
    region = Region.anonymous(LOCK_OFF + 4096)
    lock = Lock.at(region, LOCK_OFF, create=True)
    recoveries_seen = AtomicCounter.at(region, PROGRESS_OFF - 64, create=True)
    progress = [
        AtomicCounter.at(region, PROGRESS_OFF + 64 * k, create=True) for k in range(MAX_WORKERS)
    ]
    assert PROGRESS_OFF + 64 * MAX_WORKERS <= LOCK_OFF

    def worker(k: int) -> None:
        buf = region.buffer
        while True:
            if not lock.acquire(timeout=10):
                os._exit(3)  # blocked by the dead: exactly what must never happen
            if lock.recovered:
                recoveries_seen.add(1)
                _repair(buf)
            if not _consistent(buf):
                os._exit(4)
            (value,) = _CELL.unpack_from(buf, VALUE_OFF)
            (mine,) = _CELL.unpack_from(buf, _slot(k))
            _UNDO.pack_into(buf, UNDO_OFF, 0, k, value, mine)
            _CELL.pack_into(buf, UNDO_OFF, 1)  # valid only once the record is complete
            _CELL.pack_into(buf, VALUE_OFF, value + 1)
            time.sleep(0)
            _CELL.pack_into(buf, _slot(k), mine + 1)
            _CELL.pack_into(buf, UNDO_OFF, 0)
            lock.release()
            progress[k].add(1)

    kills, n_workers = 50, 3
    running: dict[int, int] = {}  # pid -> worker index
    next_k = 0
    for _ in range(n_workers):
        running[procs.fork(lambda k=next_k: worker(k))] = next_k
        next_k += 1
    worst = 0.0
    for _ in range(kills):
        pid = rng.choice(sorted(running))
        k = running.pop(pid)
        target = progress[k].load() + rng.randint(1, 25)
        wait_for(lambda k=k, t=target: progress[k].load() >= t, what=f"worker {k} progress")
        assert procs.kill(pid) == -signal.SIGKILL, "worker exited by itself (blocked?)"
        died = time.monotonic()
        assert lock.acquire(timeout=5), "the survivor was blocked by a dead holder"
        worst = max(worst, time.monotonic() - died)
        if lock.recovered:
            recoveries_seen.add(1)
            _repair(region.buffer)
        assert _consistent(region.buffer)
        lock.release()
        running[procs.fork(lambda k=next_k: worker(k))] = next_k
        next_k += 1
    for pid in list(running):
        assert procs.kill(pid) == -signal.SIGKILL, "worker exited by itself (blocked?)"
    assert lock.acquire(timeout=5)
    if lock.recovered:
        recoveries_seen.add(1)
        _repair(region.buffer)
    assert _consistent(region.buffer)
    lock.release()
    assert worst < 1.0
    assert lock.recoveries == recoveries_seen.load()
    assert lock.recoveries >= 1  # with 53 kills, some landed inside the critical section
    print(f"recoveries {lock.recoveries} of {kills + n_workers} kills, worst {worst:.4f} s")
    assert _CELL.unpack_from(region.buffer, VALUE_OFF)[0] > 0
    region.close()


# ---- pid reuse ------------------------------------------------------------------------------


def _kill_a_holder(procs: Procs, lock: Lock) -> int:
    held = Event()
    pid = procs.fork(holder(lock, held))
    assert held.wait(20)
    assert procs.kill(pid) == -signal.SIGKILL
    return pid


def test_dead_holder_released_while_another_process_lives(procs):
    """The holder dies; the parent acquires while some other process runs: no pid of the
    living matters (see test_pid_reuse_cannot_keep_dead_holders_lock for why)."""
    lock = Lock()
    _kill_a_holder(procs, lock)
    other_ready, other_done = Event(), Event()

    def other() -> None:
        other_ready.set()
        assert other_done.wait(20)

    o = procs.fork(other)
    assert other_ready.wait(20)
    assert lock.acquire(timeout=1) is True
    assert lock.recovered is True
    lock.release()
    other_done.set()
    assert procs.join(o) == 0


def _force_next_pid(pid: int) -> None:
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))


def test_pid_reuse_cannot_keep_dead_holders_lock(procs):
    """A process that gets the dead holder's very pid is not the lock's owner.

    Why pid reuse cannot keep a dead holder's Lock held: the lock word names its holder by
    thread id AND the low 32 bits of that thread's start time (clock ticks since boot, field
    22 of /proc/TID/stat). Nobody clears the word when the holder dies, even by SIGKILL; a
    waiter checks, between wait slices or when its wait times out, whether the thread the
    word names still runs (``_proc.identity_alive``: /proc/TID exists and has that start
    time). A new process given the dead holder's pid has another start time, so the holder
    is still dead as far as the word says and the lock is taken over: the next acquirer,
    whoever it is, gets it with ``recovered`` set, while the pid is alive again. And the
    pid-reusing process is not the owner: its identity differs from the word's, so its
    release is refused (NOTOWNER -> RuntimeError) and leaves the word untouched.

    The test forces the reuse through /proc/sys/kernel/ns_last_pid (needs CAP_SYS_ADMIN in
    the pid namespace; skipped otherwise), retrying if another process takes the pid first.
    """
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("cannot set ns_last_pid here (needs CAP_SYS_ADMIN)")
    lock = Lock()
    dead = _kill_a_holder(procs, lock)
    word = lib.shmipc_load64_acquire(lock._base, lock._off)
    assert word & 0xFFFFFFFF == dead  # the word still names the dead holder's thread
    assert not _proc.identity_alive(word)
    # Start times count clock ticks: let one pass at least, so that the reissued pid starts
    # at another time than the dead holder did (a real reuse comes after a full wrap of the
    # pid space, far later than that).
    time.sleep(2.5 / os.sysconf("SC_CLK_TCK"))
    release_refused, go, done = AtomicCounter(-1), Event(), Event()

    def imposter() -> None:
        if os.getpid() != dead:
            return  # not the reused pid: the parent retries
        go.set()
        try:
            lock.release()
            release_refused.store(0)
        except RuntimeError:
            release_refused.store(1)
        assert lib.shmipc_load64_acquire(lock._base, lock._off) == word  # untouched
        assert done.wait(20)

    imp = None
    for _ in range(50):
        try:
            _force_next_pid(dead)
        except OSError as exc:
            pytest.skip(f"cannot set ns_last_pid: {exc}")
        pid = procs.fork(imposter)
        if pid == dead:
            imp = pid
            break
        procs.join(pid)  # someone else forked in between: try again
    if imp is None:
        pytest.skip("could not get the dead holder's pid reissued (a busy machine)")
    assert go.wait(20)
    wait_for(lambda: release_refused.load() != -1, what="imposter's release attempt")
    assert release_refused.load() == 1  # same pid, but not the owner
    # The pid runs again, under another start time: the word's holder is still dead.
    started = _proc.start_time(imp)
    assert started is not None and started & 0xFFFFFFFF != word >> 32
    assert not _proc.identity_alive(word)
    t = time.monotonic()
    assert lock.acquire(timeout=1) is True  # while the pid is alive again
    assert time.monotonic() - t < 1.0
    assert lock.recovered is True
    assert lock.recoveries == 1
    assert lib.shmipc_load64_acquire(lock._base, lock._off) == lib.shmipc_lock_identity()
    lock.release()
    done.set()
    assert procs.join(imp) == 0


# ---- the other primitives when processes die -----------------------------------------------------


def test_killed_semaphore_waiter_does_not_swallow_a_release(procs):
    sem = Semaphore(0)
    got = AtomicCounter()

    def waiter() -> None:
        assert sem.acquire(timeout=20)
        got.add(1)

    doomed = procs.fork(waiter)
    wait_for(lambda: asleep_in_futex(doomed), what="first waiter asleep")
    survivor = procs.fork(waiter)
    wait_for(lambda: asleep_in_futex(survivor), what="second waiter asleep")
    procs.kill(doomed)
    sem.release(1)  # a wake for one: it must reach the live waiter
    assert procs.join(survivor) == 0
    assert got.load() == 1
    assert sem.value == 0


def test_killed_event_waiter_does_not_stop_the_others(procs):
    ev = Event()
    woken = AtomicCounter()

    def waiter() -> None:
        assert ev.wait(20)
        woken.add(1)

    pids = [procs.fork(waiter) for _ in range(3)]
    wait_for(lambda: all(asleep_in_futex(p) for p in pids), what="waiters asleep")
    procs.kill(pids[1])
    ev.set()
    assert procs.join(pids[0]) == 0
    assert procs.join(pids[2]) == 0
    assert woken.load() == 2
    # The dead waiter never unregistered from the sleeper count: that costs a wake syscall
    # per later set(), and never blocks anyone.


def test_killed_barrier_party_lets_the_others_time_out(procs):
    """A party that dies while waiting cannot arrive; the others' timeouts still fire."""
    bar = Barrier(3)
    doomed = procs.fork(lambda: bar.wait(timeout=30))
    wait_for(lambda: asleep_in_futex(doomed), what="party asleep")
    procs.kill(doomed)
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        bar.wait(timeout=0.1)
    assert time.monotonic() - t < 1.0
