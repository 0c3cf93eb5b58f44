"""Helpers for the Queue tests: forked children that report through pipes, a custom codec,
a look at spill segments in /dev/shm, and module-level targets for spawned and forkserver
children (they import this module by name: multiprocessing hands them the parent's
``sys.path``). The name is specific so that no other test folder's helpers shadow it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

SHM_DIR = "/dev/shm"
CHILD_TIMEOUT = 30.0


def segment_exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name))


class SpillRecorder:
    """Records the names of the spill segments this process makes (by wrapping the name
    generator shmipc._spill uses), so a test can check that its own spills are gone, even
    those of a spill that failed half-way, without looking at segments that other processes
    on the machine make at the same time."""

    def __init__(self, monkeypatch) -> None:
        from shmipc import _spill

        self.names: list[str] = []
        real = _spill.random_name

        def recording(*args, **kwargs):
            name = real(*args, **kwargs)
            self.names.append(name)
            return name

        monkeypatch.setattr(_spill, "random_name", recording)

    def existing(self) -> list[str]:
        return [n for n in self.names if segment_exists(n)]

    def remove_left(self) -> list[str]:
        left = self.existing()
        for n in left:
            try:
                os.unlink(os.path.join(SHM_DIR, n))
            except FileNotFoundError:
                pass
        return left


def wait_exit(pid: int, timeout: float = CHILD_TIMEOUT) -> int:
    """Wait (without polling) for child ``pid``; return its exit code, or -signal."""
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
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise AssertionError(f"pipe still open after {timeout} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            return out
        out += chunk


class Child:
    """A forked child running ``fn(report_fd)``; ``finish()`` returns (exit code, report).

    The child leaves with ``os._exit`` (0 when ``fn`` returned, 1 with the traceback on
    stderr when it raised): no atexit handler or pytest machinery of the parent runs in it.
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


@dataclass(frozen=True)
class Point:
    """Something msgpack cannot carry but pickle can."""

    x: int
    y: int


class JsonCodec:
    """A custom codec (the Codec protocol: name, encode, decode)."""

    name = "json-test"

    def encode(self, obj: object) -> bytes:
        try:
            return json.dumps(obj).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(str(exc)) from None

    def decode(self, data) -> object:
        return json.loads(bytes(data))


# ---- targets for spawned / forkserver children -------------------------------------------


def square_worker(jobs, results, count: int) -> None:
    """Get ``count`` numbers from ``jobs``, put their squares on ``results``."""
    for _ in range(count):
        n = jobs.get(timeout=20)
        results.put((os.getpid(), n * n))
    jobs.close()
    results.close()


def close_and_exit(q) -> None:
    """An attacher that closes its handle and exits normally."""
    q.put("bye")
    q.close()
