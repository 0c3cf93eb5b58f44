"""Helpers for the region tests: forked children that report through pipes, raw writes into
a segment's bytes, and a look at how much of a mapping is resident.

Imported by tests/unit/region and tests/fault (which puts this folder on ``sys.path``). The
module name is specific on purpose: pytest's default import mode puts every test folder on
``sys.path``, and a generic ``helpers.py`` elsewhere would shadow this one.
"""

from __future__ import annotations

import os
import select
import signal
import struct
import sys
import traceback
from collections.abc import Callable

from shmipc._native import ffi
from shmipc.layout import SEGMENT_LAYOUT
from shmipc.region import Region

SHM_DIR = "/dev/shm"
CHILD_TIMEOUT = 30.0


def segment_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def segment_exists(name: str) -> bool:
    return os.path.exists(segment_path(name))


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


def fork_call(fn: Callable[[int], None]) -> tuple[int, bytes]:
    """Run ``fn(report_fd)`` in a forked child; return (exit code, bytes it reported).

    The child never returns into pytest: it leaves with ``os._exit`` (0 when ``fn`` returned,
    1 with the traceback on stderr when it raised), so no atexit handler of the parent runs.
    """
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
    try:
        reported = read_to_eof(rfd)  # EOF when the child exits (or dies)
        return wait_exit(pid), reported
    except BaseException:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        raise
    finally:
        os.close(rfd)


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


def scribble(name: str, offset: int, data: bytes) -> None:
    """Overwrite bytes of segment ``name`` at ``offset`` as a foreign process would."""
    fd = os.open(segment_path(name), os.O_RDWR)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
    finally:
        os.close(fd)


def scribble_field(name: str, field: str, value: int | bytes) -> None:
    """Overwrite one field of the common header (see shmipc.layout) with ``value``."""
    f = SEGMENT_LAYOUT.fields[field]
    data = value if isinstance(value, bytes) else struct.pack("<" + f.fmt, value)
    assert len(data) == f.size
    scribble(name, f.offset, data)


def header_bytes(name: str) -> bytes:
    with open(segment_path(name), "rb") as f:
        return f.read(SEGMENT_LAYOUT.size)


def resident_kib(region: Region) -> int:
    """Resident KiB of ``region``'s mapping in this process (Rss in /proc/self/smaps)."""
    addr = int(ffi.cast("uintptr_t", region._base))
    with open("/proc/self/smaps") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        first = line.split()[0]
        if "-" in first and int(first.split("-")[0], 16) == addr:
            for entry in lines[i + 1 :]:
                if entry.startswith("Rss:"):
                    return int(entry.split()[1])
    raise AssertionError(f"no mapping at {addr:#x} in /proc/self/smaps")


def spawn_writer(region: Region, data: bytes, offset: int) -> None:
    """Target of a spawn-context child: ``region`` arrived pickled (by name)."""
    assert region.name is not None and not region.owner
    region.buffer[offset : offset + len(data)] = data
    region.close()
