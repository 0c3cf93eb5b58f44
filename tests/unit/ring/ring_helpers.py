"""Helpers for the ring tests: forked children that report through pipes, record arithmetic,
the control block's bytes, and module-level targets for spawned children.

The module name is specific on purpose: pytest's default import mode puts every test folder
on ``sys.path``, and a generic ``helpers.py`` elsewhere would shadow this one. Spawned
children import it by name (multiprocessing hands them the parent's ``sys.path``).
"""

from __future__ import annotations

import os
import select
import signal
import struct
import sys
import traceback
from collections.abc import Callable

from shmipc._native import lib

CHILD_TIMEOUT = 30.0
HEADER = lib.SHMIPC_RING_HEADER_SIZE
PAD_TYPE = 0xFFFFFFFF


def rec_size(n: int) -> int:
    """Bytes a record with an ``n``-byte payload occupies: align8(8 + n)."""
    return (8 + n + 7) & ~7


def payload(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that differ from one (n, seed) to the next."""
    return bytes((seed * 131 + i * 7 + n) & 0xFF for i in range(n))


def control(ring) -> memoryview:
    """The ring's 512-byte control block, writable."""
    return ring.region.buffer[ring._offset : ring._offset + HEADER]


def data_area(ring) -> memoryview:
    start = ring._offset + HEADER
    return ring.region.buffer[start : start + ring.capacity]


def read_u64(ring, off: int) -> int:
    return struct.unpack_from("<Q", control(ring), off)[0]


def write_u64(ring, off: int, value: int) -> None:
    struct.pack_into("<Q", control(ring), off, value)


def write_u32(ring, off: int, value: int) -> None:
    struct.pack_into("<I", control(ring), off, value)


def record_header(ring, index: int) -> tuple[int, int]:
    """(length, type) of the record header at data ``index``."""
    return struct.unpack_from("<II", data_area(ring), index)


def wait_exit(pid: int, timeout: float = CHILD_TIMEOUT) -> int:
    """Wait (without polling) for child ``pid``; return its exit code, or -signal.

    A child still running after ``timeout`` is killed and the test fails, rather than hang.
    """
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"child {pid} still running after {timeout} s: killed it")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def read_to_eof(fd: int, timeout: float = CHILD_TIMEOUT) -> bytes:
    """Everything a pipe carries until its writers close it, waiting at most ``timeout``."""
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise AssertionError(f"pipe still open after {timeout} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            return out
        out += chunk


def read_exact(fd: int, n: int, timeout: float = CHILD_TIMEOUT) -> bytes:
    """Read ``n`` bytes from a pipe, waiting at most ``timeout`` for each chunk."""
    out = b""
    while len(out) < n:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise AssertionError(f"nothing on the pipe after {timeout} s")
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise AssertionError(f"pipe closed after {len(out)} of {n} bytes")
        out += chunk
    return out


class Child:
    """A forked child running ``fn(report_fd)``; ``finish()`` returns (exit code, report).

    The child leaves with ``os._exit`` (0 when ``fn`` returned, 1 with the traceback on
    stderr when it raised), so no atexit handler or pytest machinery of the parent runs in it.
    """

    def __init__(self, fn: Callable[[int], None]) -> None:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                os.close(rfd)
                fn(wfd)
                code = 0
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(code)
        os.close(wfd)
        self.pid = pid
        self.fd = rfd
        self._reaped = False
        self._closed = False

    def finish(self, timeout: float = CHILD_TIMEOUT) -> tuple[int, bytes]:
        try:
            reported = read_to_eof(self.fd, timeout)  # EOF when the child exits (or dies)
        except BaseException:
            self.kill()
            raise
        self._reaped = True  # wait_exit reaps it, whether it exits or has to be killed
        try:
            return wait_exit(self.pid, timeout), reported
        finally:
            self.kill()  # only closes the pipe now

    def kill(self) -> None:
        """Kill and reap the child unless it was reaped already; close the pipe."""
        if not self._reaped:
            self._reaped = True
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ChildProcessError, ProcessLookupError):
                pass
        if not self._closed:
            self._closed = True
            os.close(self.fd)


def fork_call(fn: Callable[[int], None], timeout: float = CHILD_TIMEOUT) -> tuple[int, bytes]:
    """Run ``fn(report_fd)`` in a forked child; return (exit code, bytes it reported)."""
    return Child(fn).finish(timeout)


# ---- targets for spawned children (must be importable by name) ---------------------------


def spawn_echo(ring, count: int, conn) -> None:
    """Get ``count`` records from ``ring`` and send them back through ``conn``."""
    got = [ring.get(timeout=20) for _ in range(count)]
    conn.send(got)
    ring.put(b"from spawn", type=7)
    conn.close()
    ring.close()
