"""Process identity: a pid plus its start time, so that a reused pid is never taken for the
process that once had it. The one place shmipc asks whether a peer is still alive.
"""

from __future__ import annotations

import os

__all__ = ["is_alive", "self_identity", "start_time"]


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (/proc/PID/stat field 22), or
    None when no such process exists (or it is a zombie, which is dead for our purposes)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


_identity: tuple[int, int] | None = None


def self_identity() -> tuple[int, int]:
    """(pid, start time) of the calling process, cached per process (fork-safe)."""
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:
        st = start_time(pid)
        assert st is not None
        _identity = (pid, st)
    return _identity


def is_alive(pid: int, started: int) -> bool:
    """True while the process that was ``pid`` at start time ``started`` still runs (or
    /proc will not say: unknown is never taken for dead)."""
    if pid <= 0:
        return False
    try:
        return start_time(pid) == started
    except PermissionError:
        return True


_TID_MASK = 0x7FFFFFFF  # thread ids stay below 2**22 (PID_MAX_LIMIT)


def identity_stopped(identity: int) -> bool:
    """True if the thread a lock word names is stopped (SIGSTOP, or a tracer's stop): alive,
    but running nothing until it is continued."""
    try:
        with open(f"/proc/{identity & _TID_MASK}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat[stat.rindex(b")") + 2 :].split()[0]
    return state in (b"T", b"t")


def identity_alive(identity: int) -> bool:
    """True while the thread a native lock word names (tid | start time low 32 bits << 32)
    still runs. /proc/TID resolves for any thread of any process."""
    if not _PROC_WORKS:
        return True  # no /proc to ask: unknown is never taken for dead
    tid = identity & _TID_MASK  # bit 31 may be a ring reservation's "parked" mark
    try:
        started = start_time(tid)
    except PermissionError:
        return True  # /proc hides it (hidepid): unknown is never taken for dead
    return started is not None and (started & 0xFFFFFFFF) == identity >> 32


#: Whether /proc answers at all; without it no holder can be judged dead (nor recovered).
_PROC_WORKS = os.path.exists("/proc/self/stat")
