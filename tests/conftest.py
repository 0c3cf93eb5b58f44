"""Session-wide checks: the whole test run leaves /dev/shm as it found it.

The check runs once, in the process that controls the run (the xdist controller, or the only
process without xdist), after every worker has finished: comparing per worker would flag the
other worker's live segments. A new segment counts as leaked when nobody alive owns it: its
shmipc header names a creator that has exited, or it has no header (a spill segment nobody
read). Segments whose creator is still alive belong to somebody else's run on this machine.
Nothing is deleted: the report names what to remove (``shmipc gc`` does it).
"""

from __future__ import annotations

import os
import secrets
import stat
import struct

import pytest
from _procs import Procs

SHM_DIR = "/dev/shm"
_MAGIC = b"SHMIPC\x00\x1a"


def _segments() -> set[str]:
    try:
        return {n for n in os.listdir(SHM_DIR) if n.startswith("shmipc")}
    except FileNotFoundError:  # pragma: no cover - every Linux we support has it
        return set()


def _orphaned(name: str) -> bool:
    """True if no live process owns the segment ``name`` (so this run leaked it)."""
    from shmipc import _proc

    # Never follow a symlink nor block on a FIFO (tests of `shmipc ls` make both).
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(os.path.join(SHM_DIR, name), flags)
    except FileNotFoundError:
        return False  # removed by its owner since we listed it
    except OSError:
        return not os.path.islink(os.path.join(SHM_DIR, name))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False  # not a segment
        head = os.pread(fd, 32, 0)
    finally:
        os.close(fd)
    if len(head) < 32 or head[:8] != _MAGIC:
        return True
    pid, started = struct.unpack_from("<IQ", head, 20)  # creator_pid, creator_start
    return pid == os.getpid() or not _proc.is_alive(pid, started)


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if _is_controller(config):
        config.stash[_BEFORE] = _segments()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not _is_controller(config) or _BEFORE not in config.stash:
        return
    leaked = sorted(n for n in _segments() - config.stash[_BEFORE] if _orphaned(n))
    if leaked:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        message = f"tests left {len(leaked)} segment(s) in {SHM_DIR}: {leaked}"
        if reporter is not None:
            reporter.write_line(message, red=True)
        else:  # pragma: no cover
            print(message)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[set]()


@pytest.fixture
def shm_name():
    """A segment name unique to this test and process, removed afterwards if left behind."""
    name = f"shmipc_t{os.getpid()}_{secrets.token_hex(4)}"
    yield name
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


@pytest.fixture
def procs(request):
    """A ``_procs.Procs``: forked children, every one still alive at teardown SIGKILLed and
    reaped. ``procs.join`` waits 60 s by default; a test module changes that with a
    module-level ``PROCS_JOIN_TIMEOUT``."""
    p = Procs(join_timeout=getattr(request.module, "PROCS_JOIN_TIMEOUT", 60.0))
    yield p
    p.kill_all()
