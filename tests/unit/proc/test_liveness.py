"""shmipc/_proc.py, the one liveness module: a live process is never judged dead.

Death is known only from kill(pid, 0) saying ESRCH, a zombie, or a start time that differs
within one time namespace; /proc that hides a live process (hidepid, another user, a
non-dumpable one) or a time namespace's offset gives "unknown", which every caller treats as
alive. The C mirror (csrc/native.c shmipc_identity_alive) must agree.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from _procs import Child, wait_for

from shmipc import Lock, Region, _proc
from shmipc._native import lib
from shmipc.ring import Ring
from shmipc.sync import take_over_if_dead

pytestmark = pytest.mark.timeout(60)

U32 = 0xFFFFFFFF
NOBODY = 65534


def _sleeper() -> int:
    """A live child (killed and reaped by the fixture that asks for it)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            time.sleep(60)
        finally:
            os._exit(0)
    return pid


@pytest.fixture
def live_child():
    pid = _sleeper()
    started = _proc.start_time(pid)
    assert started is not None
    yield pid, started
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.mark.parametrize("error", [FileNotFoundError, PermissionError, ProcessLookupError])
def test_a_live_pid_that_proc_hides_is_alive(monkeypatch, live_child, error):
    """/proc/PID/stat unreadable (hidepid=2 says ENOENT) while kill(pid, 0) says it runs."""
    pid, started = live_child

    def hidden(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise error(path)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(_proc, "open", hidden, raising=False)
    assert _proc.is_alive(pid, started) is True
    assert _proc.identity_alive(pid | (started & U32) << 32) is True


def test_hidden_is_unknown_not_alive(monkeypatch, live_child):
    pid, started = live_child
    monkeypatch.setattr(_proc, "_stat", lambda pid: None)
    assert _proc.process_state(pid, started) is _proc.Liveness.UNKNOWN
    assert _proc.identity_state(pid | (started & U32) << 32) is _proc.Liveness.UNKNOWN
    assert _proc.process_state(pid, started + 1) is _proc.Liveness.UNKNOWN  # nothing to compare


def test_states_of_the_living_the_dead_and_the_reused(live_child):
    pid, started = live_child
    assert _proc.process_state(pid, started) is _proc.Liveness.ALIVE
    assert _proc.identity_state(pid | (started & U32) << 32) is _proc.Liveness.ALIVE
    # The same id under another start time: a reused pid, its holder gone.
    assert _proc.process_state(pid, started + 1) is _proc.Liveness.DEAD
    assert not _proc.is_alive(pid, started + 1)
    reused = pid | ((started + 1) & U32) << 32
    assert not _proc.identity_alive(reused) and lib.shmipc_identity_alive(reused) == 0
    me = lib.shmipc_lock_identity()
    assert _proc.identity_state(me) is _proc.Liveness.ALIVE
    assert _proc.identity_state(me ^ (1 << 40)) is _proc.Liveness.DEAD
    assert _proc.process_state(0, started) is _proc.Liveness.DEAD
    assert _proc.process_state(-1, started) is _proc.Liveness.DEAD


def test_a_dead_pid_is_dead():
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0)
    wait_for(lambda: _proc.start_time(pid) is None, what="the child's exit")  # a zombie
    started = _proc.self_identity()[1]  # any: a zombie is dead whatever its start time
    assert _proc.process_state(pid, started) is _proc.Liveness.DEAD
    os.waitpid(pid, 0)
    assert _proc.process_state(pid, started) is _proc.Liveness.DEAD  # gone: kill says ESRCH
    assert _proc.identity_state(pid | (started & U32) << 32) is _proc.Liveness.DEAD
    assert lib.shmipc_identity_alive(pid | (started & U32) << 32) == 0


def test_a_zombie_leader_with_running_threads_is_alive():
    """The main thread exited (pthread_exit), the others run on: the process lives."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        ctypes.CDLL(None).pthread_exit(None)
        os._exit(1)
    try:
        wait_for(
            lambda: _proc._stat(pid) is not None and _proc._stat(pid)[0] == b"Z",
            what="the leader's exit",
        )
        started = _proc._stat(pid)[1]
        assert _proc.is_alive(pid, started) is True
        # The leader thread itself has ended: a lock it held is its to lose.
        assert _proc.identity_state(pid | (started & U32) << 32) is _proc.Liveness.DEAD
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_start_time_mismatch_across_time_namespaces_is_not_death(tmp_path):
    """A process in a time namespace with a boottime offset records its start time in its
    own terms; read from here it differs by the offset. That is not a reused pid."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and util-linux unshare to make a time namespace")
    code = textwrap.dedent("""
        import sys
        from shmipc import _proc
        from shmipc._native import lib
        pid, started = _proc.self_identity()
        print(pid, started, lib.shmipc_lock_identity(), flush=True)
        sys.stdin.read()
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.Popen(
        ["unshare", "-T", "--boottime", "1000", "--fork", sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = p.stdout.readline()
        if not line:
            err = p.stderr.read()
            if "Operation not permitted" in err or "unrecognized option" in err:
                pytest.skip(f"no time namespaces here: {err.strip()}")
            raise AssertionError(err)
        pid, started, identity = map(int, line.split())
        assert _proc.start_time(pid) != started  # the offset shows
        assert _proc.is_alive(pid, started) is True
        assert _proc.process_state(pid, started) is _proc.Liveness.UNKNOWN
        assert _proc.identity_alive(identity) is True
        assert lib.shmipc_identity_alive(identity) == 1
    finally:
        p.stdin.close()
        p.wait(30)


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def test_another_users_process_judged_by_an_unprivileged_reader(live_child):
    """A reader of another uid: kill says EPERM for the root-owned live process: alive."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a reader of another uid")
    pid, started = live_child
    dead = os.fork()
    if dead == 0:  # pragma: no cover - child
        os._exit(0)
    os.waitpid(dead, 0)

    def reader(fd: int) -> None:
        _drop_to_nobody()
        try:
            os.kill(pid, 0)
        except PermissionError:
            pass  # what makes "exists" known without /proc
        out = [
            _proc.is_alive(pid, started),
            _proc.is_alive(os.getppid(), _proc.start_time(os.getppid()) or 0),
            _proc.is_alive(dead, started),
            _proc.identity_alive(pid | (started & U32) << 32),
            lib.shmipc_identity_alive(pid | (started & U32) << 32) == 1,
            # Another start time under a root process's pid: its time namespace cannot be
            # read by this user, so the difference may be an offset: unknown, not dead.
            _proc.process_state(pid, started + 1) is _proc.Liveness.UNKNOWN,
        ]
        os.write(fd, repr(out).encode())

    code, out = Child(reader).finish()
    assert code == 0
    assert out == repr([True, True, False, True, True, True]).encode()


# ---- a /proc mounted with hidepid=2, in a private mount namespace ------------------------------

_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18


def _hide_other_users_processes() -> str | None:
    """In this (forked, single-threaded) child: a private mount namespace whose /proc hides
    other users' processes, then become nobody. None on success, else why not."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        return f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}"
    if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return f"mount --make-rprivate /: {os.strerror(ctypes.get_errno())}"
    if libc.mount(b"proc", b"/proc", b"proc", 0, b"hidepid=2") != 0:
        return f"mount proc hidepid=2: {os.strerror(ctypes.get_errno())}"
    _drop_to_nobody()
    return None


def test_a_lock_holder_hidden_by_hidepid_is_not_robbed():
    """Under hidepid=2 another user's holder has no /proc entry at all (ENOENT, as if gone):
    the lock must not be taken over, its sleeper registration reaped, nor a quarantine it
    owns ended (it could still write the space)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount /proc and change uid")
    lock = Lock()
    assert lock.acquire(timeout=1)
    word = lib.shmipc_load64_acquire(lock._base, lock._off)
    # A ring quarantined by this (live) thread: a liveness pass must not end the quarantine.
    ring = Ring.anonymous(4096)
    lib.shmipc_store64_relaxed(ring._p, lib.SHMIPC_RING_OFF_Q_OWNER, word)
    registry = Region.anonymous(4096)  # a sleeper registry: u32 count, identity slots from +8
    base, off = registry.pointer(0)
    reg = base + off
    try:

        def hidden_reader(fd: int) -> None:
            why = _hide_other_users_processes()
            if why is not None:
                os.write(fd, f"SKIP {why}".encode())
                return
            tid = word & 0x7FFFFFFF
            assert not os.path.exists(f"/proc/{tid}/stat")  # hidden, as if gone
            assert _proc.identity_alive(word)
            assert lib.shmipc_identity_alive(word) == 1
            assert take_over_if_dead(lock._base, lock._off) is False
            assert lock.acquire(timeout=0.5) is False  # waited out, not robbed
            ring._take_over_dead_holders()
            assert lib.shmipc_load64_acquire(ring._p, lib.SHMIPC_RING_OFF_Q_OWNER) == word
            lib.shmipc_store32_relaxed(reg, 0, 1)
            lib.shmipc_store64_relaxed(reg, 8, word)
            assert lib.shmipc_reap_sleepers(reg, 0, 1) == 0  # alive: its count stays
            assert lib.shmipc_load32_relaxed(reg, 0) == 1
            os.write(fd, b"OK")

        code, out = Child(hidden_reader).finish()
        if out.startswith(b"SKIP"):
            pytest.skip(out.decode())
        assert (code, out) == (0, b"OK")
        assert lib.shmipc_load64_acquire(lock._base, lock._off) == word  # still ours
        assert lock.recoveries == 0
    finally:
        lock.release()
        lock.close()
        registry.close()
        lib.shmipc_store64_relaxed(ring._p, lib.SHMIPC_RING_OFF_Q_OWNER, 0)
        ring.close()


def test_a_sleeper_reaped_while_alive_does_not_take_its_count_back_twice():
    """Defence in depth for the sleeper registry (csrc/native.c): if a live sleeper's slot is
    ever taken back (with its count) by a reaper that erred, the sleeper's own unregistering
    must not decrement the count again (it would wrap, or hide another sleeper)."""
    region = Region.anonymous(4096)
    base, off = region.pointer(0)
    b = base + off
    reg, word = 64, 0
    out: list[int] = []
    tid: list[int] = []

    def sleeper() -> None:
        tid.append(threading.get_native_id())
        out.append(lib.shmipc_wait_while32_reg(b, word, 0, reg, 2, -1, 0))

    t = threading.Thread(target=sleeper)
    t.start()
    try:
        wait_for(lambda: lib.shmipc_load32_relaxed(b, reg) == 1, what="the sleeper registered")
        wait_for(lambda: lib.shmipc_load64_relaxed(b, reg + 8) != 0, what="its slot")
        # What a mistaken reaper does: clear the slot, take the count back.
        lib.shmipc_store64_relaxed(b, reg + 8, 0)
        lib.shmipc_store32_relaxed(b, reg, 0)
    finally:
        lib.shmipc_store32_release(b, word, 1)
        lib.shmipc_futex_wake(b, word, 1)
        t.join(10)
    assert not t.is_alive() and out == [lib.SHMIPC_OK]
    assert lib.shmipc_load32_relaxed(b, reg) == 0  # not 0xFFFFFFFF
    region.close()


@pytest.mark.parametrize("pid", [2**31, 2**32 - 1, 2**32 + 5, 2**63 - 1])
def test_a_pid_beyond_pid_t_is_no_process(pid):
    # Read from a scribbled slot: kill() cannot take it (OverflowError before); no process
    # can have it (pid_t is 32-bit, Linux caps pids at 2^22), so it names nobody alive.
    assert _proc.process_state(pid, 0) is _proc.Liveness.DEAD
    assert not _proc.is_alive(pid, 12345)
