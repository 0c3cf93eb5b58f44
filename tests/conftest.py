"""Session-wide checks: every test leaves /dev/shm as it found it."""

from __future__ import annotations

import os

import pytest

SHM_DIR = "/dev/shm"


def _segments() -> set[str]:
    try:
        return set(os.listdir(SHM_DIR))
    except FileNotFoundError:  # pragma: no cover - every Linux we support has it
        return set()


@pytest.fixture(scope="session", autouse=True)
def dev_shm_left_clean():
    """Fail the session if segments appeared in /dev/shm during it and were not removed.

    Under pytest-xdist each worker runs this over its own tests; names shmipc makes carry
    64 random bits, so workers never see each other's segments as their own.
    """
    before = _segments()
    yield
    leaked = sorted(n for n in _segments() - before if n.startswith(("shmipc", "sem.shmipc")))
    for name in leaked:  # remove them so one leak does not fail every later run too
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass
    assert not leaked, f"tests left segments in {SHM_DIR}: {leaked}"


@pytest.fixture
def shm_name(request) -> str:
    """A segment name unique to this test and process, removed afterwards if left behind."""
    import secrets

    name = f"shmipc_t{os.getpid()}_{secrets.token_hex(4)}"
    yield name
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass
