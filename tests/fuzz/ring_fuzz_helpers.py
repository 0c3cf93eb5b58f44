"""Helpers for the ring fuzz tests: run a function in a forked child and learn how it ended
(exit code, or the signal that killed it) and what it reported, without ever hanging.

The module name is specific on purpose: pytest's default import mode puts every test folder
on ``sys.path``, and a generic ``helpers.py`` elsewhere would shadow this one.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable

CHILD_TIMEOUT = 20.0


class Child:
    """``fn(report_fd)`` in a forked child. It leaves with ``os._exit``: 0 when ``fn``
    returned, 1 when it raised (the traceback goes to the report pipe), or killed by a
    signal when it crashed. No atexit handler or pytest machinery of the parent runs in it."""

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
                try:
                    os.write(wfd, traceback.format_exc().encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        os.close(wfd)
        self.pid = pid
        self.fd = rfd
        self._reaped = False

    def finish(self, timeout: float = CHILD_TIMEOUT) -> tuple[int, str]:
        """(exit code or -signal, what it reported). A child still running after ``timeout``
        (a hang) is killed and reported as such."""
        deadline = time.monotonic() + timeout
        out = b""
        try:
            while True:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([self.fd], [], [], max(0.0, left))
                if not ready:
                    self.kill()
                    return -signal.SIGKILL, out.decode(errors="replace") + "\n[HUNG: killed]"
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                out += chunk
            pidfd = os.pidfd_open(self.pid)
            try:
                ready, _, _ = select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
            finally:
                os.close(pidfd)
            if not ready:
                self.kill()
                return -signal.SIGKILL, out.decode(errors="replace") + "\n[HUNG: killed]"
            _, status = os.waitpid(self.pid, 0)
            self._reaped = True
            return os.waitstatus_to_exitcode(status), out.decode(errors="replace")
        finally:
            self.kill()
            os.close(self.fd)

    def kill(self) -> None:
        if self._reaped:
            return
        self._reaped = True
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass


def describe(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def run_child(fn: Callable[[int], None], timeout: float = CHILD_TIMEOUT) -> tuple[int, str]:
    return Child(fn).finish(timeout)


def report(fd: int, text: str) -> None:
    data = text.encode()
    while data:
        data = data[os.write(fd, data) :]


def flush_stdio() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
