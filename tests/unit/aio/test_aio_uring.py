"""The io_uring backend of shmipc.aio (csrc/aio_uring.c, U1-U5): fallback when io_uring is
refused, no ring fd left behind by many loops, forked children, cancellation, more waiters
than the rings hold, a word that moved before the wait."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import platform
import queue
import struct
import threading

import pytest
from _procs import fork_call, wait_for
from aio_loops import LOOPS, run, uvloop

import shmipc
from shmipc import aio
from shmipc._native import ffi, lib


def uring_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += "io_uring" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return n


def data_waiters(qq) -> int:
    return int(lib.shmipc_load32_acquire(qq._live_ring()._p, lib.SHMIPC_RING_OFF_DATA_WAITERS))


@pytest.fixture
def uring(monkeypatch):
    if not aio._uring_usable():
        pytest.skip("io_uring with IORING_OP_FUTEX_WAIT is not available here")
    monkeypatch.setattr(aio, "_BACKEND", "uring")
    assert aio.backend() == "uring"


@pytest.fixture
def q():
    qq = shmipc.Queue.create(capacity=1 << 14)
    yield qq
    qq.close()


async def _feed_and_get(qq, n: int = 50) -> list:
    feeder = threading.Thread(target=lambda: [qq.put(i) for i in range(n)])
    got = []
    started = False
    for _ in range(n):
        task = asyncio.ensure_future(qq.get_async(timeout=20))
        if not started:  # the first get is asleep before anything is sent
            await asyncio.sleep(0.02)
            started = True
            feeder.start()
        got.append(await task)
    await asyncio.to_thread(feeder.join)
    return got


# ---- fallback -------------------------------------------------------------------------------


@pytest.mark.parametrize("refusal", [errno.ENOSYS, errno.EPERM, errno.EINVAL],
                         ids=["ENOSYS", "EPERM", "EINVAL"])
@pytest.mark.timeout(30)
def test_refused_io_uring_falls_back_to_the_helper_thread(monkeypatch, q, refusal):
    """ENOSYS (no io_uring), EPERM (io_uring_disabled, seccomp), EINVAL (no FUTEX_WAIT op)."""
    monkeypatch.setattr(aio, "_BACKEND", None)
    monkeypatch.setattr(aio, "_uring_state", None)
    wait_for(lambda: not aio.helper_threads(), 10, "earlier loops' helpers to end")
    lib.shmipc_aiou_refuse = refusal
    try:
        assert lib.shmipc_aiou_probe() == -refusal
        assert aio.backend() == "thread"

        async def main():
            task = asyncio.ensure_future(q.get_async(timeout=20))
            await asyncio.sleep(0.05)
            assert len(aio.helper_threads()) == 1 and aio.rings() == 0
            q.put("via the helper")
            return await task

        assert asyncio.run(main()) == "via the helper"
    finally:
        lib.shmipc_aiou_refuse = 0
    aio._uring_state = None
    assert aio.backend() == "uring"


def _deny_io_uring_setup() -> None:
    """A seccomp filter (as a container runtime installs) making io_uring_setup fail EPERM."""
    libc = ctypes.CDLL(None, use_errno=True)
    ld_w, jeq_k, ret_k = 0x20, 0x15, 0x06
    audit_arch_x86_64, nr_io_uring_setup = 0xC000003E, 425
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM
    prog = [
        (ld_w, 0, 0, 4), (jeq_k, 1, 0, audit_arch_x86_64), (ret_k, 0, 0, allow),
        (ld_w, 0, 0, 0), (jeq_k, 0, 1, nr_io_uring_setup), (ret_k, 0, 0, deny),
        (ret_k, 0, 0, allow),
    ]
    raw = b"".join(struct.pack("<HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(len(prog), ctypes.addressof(buf))
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter is written for x86_64")
@pytest.mark.timeout(60)
def test_io_uring_denied_by_seccomp_falls_back_in_that_process(uring, q):
    def child(report_fd: int) -> None:
        _deny_io_uring_setup()
        aio._uring_state = None  # a process probes once: this one is new
        aio._BACKEND = None
        assert lib.shmipc_aiou_probe() == -errno.EPERM
        assert aio.backend() == "thread"
        asyncio.events._set_running_loop(None)
        got = asyncio.run(_feed_and_get(q, 20))
        assert got == list(range(20)) and aio.rings() == 0
        os.write(report_fd, b"ok")

    code, report = fork_call(child, timeout=50)
    assert (code, report) == (0, b"ok")


# ---- fds and loops ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.timeout(60)
def test_no_ring_fd_leaks_across_many_loops(uring, kind):
    ev = shmipc.Event()
    try:
        base = uring_fds()
        for _ in range(40):  # each loop shuts down with a ring and a request pending
            assert run(kind, ev.wait_async(0.002)) is False
            assert uring_fds() == base and aio.rings() == 0
        for _ in range(10):  # loops closed without shutdown_asyncgens: the next ring sweeps
            loop = asyncio.new_event_loop() if kind == "asyncio" else uvloop.new_event_loop()
            assert loop.run_until_complete(ev.wait_async(0.002)) is False
            loop.close()
            assert uring_fds() <= base + 1
        assert run(kind, ev.wait_async(0.002)) is False
        assert uring_fds() == base and aio.rings() == 0
    finally:
        ev.close()


@pytest.mark.timeout(30)
def test_an_idle_ring_goes_while_its_loop_runs(uring, monkeypatch, q):
    monkeypatch.setattr(aio, "IDLE_EXIT", 0.05)
    base = uring_fds()

    async def main():
        with pytest.raises(queue.Empty):
            await q.get_async(timeout=0.01)
        assert aio.rings() == 1 and uring_fds() == base + 1
        for _ in range(200):
            await asyncio.sleep(0.01)
            if aio.rings() == 0:
                break
        assert aio.rings() == 0 and uring_fds() == base
        return await _feed_and_get(q, 10)  # a new ring on demand

    assert asyncio.run(main()) == list(range(10))


@pytest.mark.timeout(60)
def test_a_forked_child_never_uses_its_parents_ring(uring, q):
    other = shmipc.Queue.create(capacity=1 << 12)

    def child(report_fd: int) -> None:
        # The parent's ring was dropped at the fork, and its registration left alone.
        assert aio.rings() == 0 and uring_fds() == 0
        assert data_waiters(q) == 1
        asyncio.events._set_running_loop(None)  # inherited from the parent's running loop
        got = asyncio.run(_feed_and_get(other, 20))
        assert got == list(range(20)) and uring_fds() == 0
        os.write(report_fd, b"ok")

    async def main():
        waiter = asyncio.ensure_future(q.get_async(timeout=30))
        await asyncio.sleep(0.05)
        assert aio.rings() == 1 and data_waiters(q) == 1
        code, report = await asyncio.to_thread(fork_call, child, 50)
        assert (code, report) == (0, b"ok")
        assert not waiter.done()
        q.put("the parent's ring still works")
        return await waiter

    try:
        assert asyncio.run(main()) == "the parent's ring still works"
        assert data_waiters(q) == 0
    finally:
        other.close()


@pytest.mark.timeout(30)
def test_a_ring_refuses_a_forked_childs_calls(uring):
    ring = lib.shmipc_aiou_new(4, 8)
    assert ring != ffi.NULL
    word = ffi.new("uint32_t[2]")
    slot = ffi.new("int32_t *")

    def child(report_fd: int) -> None:
        base = ffi.cast("char *", word)
        rc = lib.shmipc_aiou_arm(ring, base, 0, 0, 4, 0, 7, 1, slot)
        assert rc == -1 and ffi.errno == errno.ECHILD
        assert word[1] == 0  # nothing registered
        os.write(report_fd, b"ok")

    try:
        assert fork_call(child, timeout=20) == (0, b"ok")
    finally:
        lib.shmipc_aiou_free(ring)


# ---- waits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.timeout(60)
def test_cancelled_waits_take_their_registration_back(uring, kind, q):
    async def main():
        u = None
        for _ in range(50):
            tasks = [asyncio.ensure_future(q.get_async()) for _ in range(5)]
            await asyncio.sleep(0.002)
            assert data_waiters(q) == 1
            u = aio._urings[asyncio.get_running_loop()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert data_waiters(q) == 0  # U2: taken back before the cancel is even sent
        for _ in range(500):  # every cancelled request completes (and lets go of its pin)
            if not u.by_id:
                break
            await asyncio.sleep(0.002)
        assert not u.by_id and not u.watches
        return await _feed_and_get(q, 10)

    assert run(kind, main()) == list(range(10))
    assert data_waiters(q) == 0


@pytest.mark.parametrize("sizes", [(4, 8), (64, 1024)])
@pytest.mark.timeout(60)
def test_more_waiters_than_the_rings_hold(uring, monkeypatch, sizes):
    """400 distinct words awaited at once: more than the SQ holds (and, small, the CQ: the
    kernel's overflow list is drained)."""
    monkeypatch.setattr(aio, "_URING_SQ", sizes[0])
    monkeypatch.setattr(aio, "_URING_CQ", sizes[1])
    events = [shmipc.Event() for _ in range(400)]
    try:
        async def main():
            tasks = [asyncio.ensure_future(ev.wait_async(30)) for ev in events]
            await asyncio.sleep(0.1)
            assert not any(t.done() for t in tasks)
            assert aio.rings() == 1
            assert len(aio._urings[asyncio.get_running_loop()].by_id) == len(events)
            setter = threading.Thread(target=lambda: [ev.set() for ev in events])
            setter.start()
            ok = await asyncio.wait_for(asyncio.gather(*tasks), 30)
            await asyncio.to_thread(setter.join)
            return ok

        assert all(asyncio.run(main()))
        for ev in events:
            assert lib.shmipc_load32_acquire(ev._base, ev._off + ev._WAITERS) == 0
    finally:
        for ev in events:
            ev.close()


@pytest.mark.timeout(30)
def test_a_word_that_moved_before_the_wait_wakes_at_once(uring, q):
    # The kernel completes a wait on a word that no longer holds the value with -EAGAIN.
    assert lib.shmipc_aiou_probe() == 1
    ring = q._live_ring()
    spec = aio.WordSpec(ring._p, lib.SHMIPC_RING_OFF_P_TAIL, lib.SHMIPC_RING_OFF_DATA_WAITERS,
                        lib.SHMIPC_RING_SLEEPER_SLOTS, ring)

    async def main():
        stale = (spec.load() - 1) & 0xFFFFFFFF  # a value the word no longer holds
        await asyncio.wait_for(aio.wait_for_change([(spec, stale)]), 5)  # no timeout of its own
        u = aio._urings[asyncio.get_running_loop()]
        assert not u.by_id and data_waiters(q) == 0  # nothing armed, nothing registered
        q.put(1)  # moves the word after the value was read: the same
        seen = (spec.load() - 1) & 0xFFFFFFFF
        await asyncio.wait_for(aio.wait_for_change([(spec, seen)]), 5)
        return q.get_nowait()

    assert asyncio.run(main()) == 1
    wait_for(lambda: data_waiters(q) == 0, 5, "no registration left")


def _asleep_in_futex(tid: int) -> bool:
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            return f.read().split()[0] == "202"  # futex, x86_64
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(platform.machine() != "x86_64", reason="reads the x86_64 syscall number")
@pytest.mark.timeout(60)
def test_a_wake_taken_by_a_cancelled_request_is_passed_on(uring):
    """U6: a wake-one (as a Lock's release) that completes the request of a coroutine being
    cancelled is passed on to the next sleeper, here a blocking wait behind it."""
    ev = shmipc.Event()
    base, flag, count = ev._base, ev._off + ev._FLAG, ev._off + ev._WAITERS
    spec = aio.WordSpec(base, flag, count, 0, base)
    tid, rc = [], []

    def blocking_sleeper():
        tid.append(threading.get_native_id())
        deadline = lib.shmipc_monotonic_ns() + 30 * 10**9
        rc.append(lib.shmipc_wait_while32(base, flag, 0, count, deadline, 0))

    async def main():
        waiter = asyncio.ensure_future(aio.wait_for_change([(spec, 0)]))  # no timeout
        await asyncio.sleep(0.01)
        assert lib.shmipc_load32_acquire(base, count) == 1  # armed: first in the queue
        b = threading.Thread(target=blocking_sleeper)
        b.start()
        await asyncio.to_thread(wait_for, lambda: tid and _asleep_in_futex(tid[0]), 20,
                                "the blocking sleeper to sleep")
        u = aio._urings[asyncio.get_running_loop()]
        # On the loop thread, synchronously: one wake (the word unchanged) completes our
        # request, whose completion waits unreaped while the coroutine is cancelled.
        assert lib.shmipc_futex_wake(base, flag, 1) == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.to_thread(b.join, 30)
        return u.forwarded

    try:
        assert asyncio.run(main()) == 1
        assert rc == [lib.SHMIPC_CHANGED]  # woken by the passed-on wake, not its deadline
        assert lib.shmipc_load32_acquire(base, count) == 0
    finally:
        ev.close()
