"""Every async test here runs under both wake-up backends of shmipc.aio: "uring" (the loop's
thread waits through io_uring FUTEX_WAIT) and "thread" (a helper thread per loop)."""

from __future__ import annotations

import pytest

from shmipc import aio

BACKENDS = ["uring", "thread"]


def pytest_generate_tests(metafunc):
    if "aio_backend" in metafunc.fixturenames:
        metafunc.parametrize("aio_backend", BACKENDS, indirect=True)


@pytest.fixture
def aio_backend(request, monkeypatch):
    """Run the test with new waits on ``request.param`` (skipped where io_uring is refused)."""
    if request.param == "uring" and not aio._uring_usable():
        pytest.skip("io_uring with IORING_OP_FUTEX_WAIT is not available here")
    monkeypatch.setattr(aio, "_BACKEND", request.param)
    yield request.param
