"""Liveness: whether the process or thread a claim names still runs. The one place shmipc
decides it; every structure asks here and none judges on its own.

A claim names its holder by id (a pid, or a thread id in a native lock word) and start time
(field 22 of /proc/ID/stat, clock ticks since boot; a lock word keeps its low 32 bits), so a
reused id is never taken for the holder that once had it. The answer has three values
(:class:`Liveness`): ALIVE, DEAD and UNKNOWN, and every caller treats UNKNOWN as alive: a
claim is taken back only from a holder known to be dead. Taking from a live holder corrupts
(two writers), keeping a dead one's claim only delays, so every doubt falls on "alive".

How death is established:

* ``kill(id, 0)``: ESRCH means no process or thread has that id (in our pid namespace):
  dead, whatever /proc says. EPERM means it exists (another user's). This needs no /proc.
  ``kill`` accepts any thread's id, not only a process's. (A pidfd would pin the process
  but says nothing of its start time, so it adds nothing here.)
* /proc/ID/stat, read only once ``kill`` says the id exists: a zombie ("Z"/"X") is dead (a
  process only if no thread of it still runs); the recorded start time is ALIVE; another
  start time is a reused id: DEAD, but only when that comparison is sound (below) and a
  start time was recorded at all (0 means the holder could not read its own).
* /proc/ID that cannot be read (``hidepid=1/2``, another user's non-dumpable process, no
  /proc at all, a malformed line) while ``kill`` says the id exists: UNKNOWN.

Time namespaces: /proc/ID/stat gives start times in the *reader's* time namespace (boot
time plus that namespace's boottime offset, see /proc/ID/timens_offsets), and a holder
recorded its own in its namespace. A start time that differs is taken for a reused id only
when the process now holding the id is in the reader's time namespace (the inodes of
/proc/ID/ns/time and /proc/self/ns/time agree) or the kernel has no time namespaces; when
they differ, or cannot be compared (another user's process), the answer is UNKNOWN. We do not
convert between offsets: a holder in another time namespace whose id is reused is kept, not
recovered (a liveness cost, never a safety one).

Limits: ids mean something only within one pid namespace (attach refuses segments of
another, see layout.py; ``shmipc gc`` keeps them); a stopped (SIGSTOP) holder is alive (see
:func:`identity_stopped`); a holder whose id is reused within the same clock tick (10 ms)
by a process in the same time namespace would be taken for alive. The C side
(csrc/native.c ``shmipc_identity_alive``, used by the sleeper reaper) applies this same rule
and tests/unit/proc checks that the two agree.
"""

from __future__ import annotations

import enum
import os

__all__ = [
    "Liveness",
    "identity_alive",
    "identity_state",
    "identity_stopped",
    "is_alive",
    "is_own_thread",
    "process_state",
    "self_identity",
    "start_time",
]


class Liveness(enum.Enum):
    """What can be known of a holder. Callers treat UNKNOWN exactly as ALIVE."""

    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


_TID_MASK = 0x7FFFFFFF  # thread ids stay below 2**22 (PID_MAX_LIMIT); bit 31 may be "parked"
_START_MASK = 0xFFFFFFFF  # a lock word keeps the low 32 bits of its holder's start time

#: Whether /proc answers at all. Without it nothing but ``kill`` can be asked.
_PROC_WORKS = os.path.exists("/proc/self/stat")


def _exists(pid: int) -> bool | None:
    """Whether any process or thread has id ``pid`` (kill(pid, 0)); None if kill cannot say."""
    if pid <= 0:
        return False  # kill(0)/kill(-n) mean process groups: never a holder's id
    if pid > 0x7FFFFFFF:
        return False  # beyond pid_t (Linux caps pids at 2^22): a scribble, never a process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone we may not signal
    except OSError:
        return None
    return True


def _stat(pid: int) -> tuple[bytes, int] | None:
    """(state letter, start time) from /proc/PID/stat, or None if /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = raw[raw.rindex(b")") + 2 :].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


_TIMENS_SUPPORTED = os.path.exists("/proc/self/ns/time")


def _same_time_namespace(pid: int) -> bool:
    """True if start times of ``pid`` read here compare with the ones it recorded: it is in
    our time namespace (or the kernel has none). False when it is not, or we cannot tell."""
    if not _TIMENS_SUPPORTED:
        return True
    try:
        return os.stat(f"/proc/{pid}/ns/time").st_ino == os.stat("/proc/self/ns/time").st_ino
    except OSError:
        return False


def _only_zombies(pid: int) -> bool:
    """True if the zombie process ``pid`` has no thread left running."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        st = _stat(int(tid)) if tid.isdigit() else None
        if st is None or st[0] not in (b"Z", b"X"):
            return False
    return True


def _judge(pid: int, started: int, mask: int, whole_process: bool) -> Liveness:
    if pid <= 0:
        return Liveness.DEAD
    exists = _exists(pid)
    if exists is False:
        return Liveness.DEAD
    st = _stat(pid)
    if st is None:
        return Liveness.UNKNOWN  # hidden or unreadable while kill says it exists
    state, now = st
    if state in (b"Z", b"X"):
        if not whole_process or _only_zombies(pid):
            return Liveness.DEAD
        return Liveness.UNKNOWN  # a zombie leader whose other threads run on
    if now & mask == started & mask:
        return Liveness.ALIVE
    if not started & mask:
        return Liveness.UNKNOWN  # recorded where /proc could not be read: nothing to compare
    if _same_time_namespace(pid):
        return Liveness.DEAD  # the id now names another process: the holder is gone
    return Liveness.UNKNOWN  # the difference may be a time namespace's offset


def process_state(pid: int, started: int) -> Liveness:
    """Liveness of the process that was ``pid`` at start time ``started``."""
    return _judge(pid, started, ~0, True)


def identity_state(identity: int) -> Liveness:
    """Liveness of the thread a native lock word names (tid | start time low 32 bits << 32;
    bit 31 may be a ring reservation's "parked" mark, ignored)."""
    return _judge(identity & _TID_MASK, identity >> 32, _START_MASK, False)


def is_alive(pid: int, started: int) -> bool:
    """False only when the process that was ``pid`` at ``started`` is known to be dead."""
    return process_state(pid, started) is not Liveness.DEAD


def identity_alive(identity: int) -> bool:
    """False only when the thread a native lock word names is known to be dead."""
    return identity_state(identity) is not Liveness.DEAD


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (/proc/PID/stat field 22), or
    None when no such process exists (or it is a zombie, which is dead for our purposes).

    Raises PermissionError when the id exists but /proc will not say (hidden, unreadable).
    """
    if _exists(pid) is False:
        return None
    st = _stat(pid)
    if st is None:
        if _exists(pid) is False:
            return None  # it ended between the two questions
        raise PermissionError(f"/proc does not show the start time of {pid}")
    return None if st[0] in (b"Z", b"X") else st[1]


_identity: tuple[int, int] | None = None


def self_identity() -> tuple[int, int]:
    """(pid, start time) of the calling process, cached per process (fork-safe). The start
    time is 0 when /proc cannot be read (then nobody can judge us dead but ``kill``)."""
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:
        st = _stat(pid)
        _identity = (pid, st[1] if st is not None else 0)
    return _identity


def identity_stopped(identity: int) -> bool:
    """True if the thread a lock word names is known to be stopped (SIGSTOP, or a tracer's
    stop): alive, but running nothing until it is continued. Unknown is "not stopped"."""
    st = _stat(identity & _TID_MASK)
    return st is not None and st[0] in (b"T", b"t")


def is_own_thread(tid: int) -> bool:
    """True if ``tid`` is a thread of this process that the kernel still has."""
    return os.path.exists(f"/proc/self/task/{tid}")
