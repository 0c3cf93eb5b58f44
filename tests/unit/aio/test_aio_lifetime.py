"""Closing what a coroutine waits on never lets the helper touch unmapped memory
(docs/internals/lifetime.md): run in a forked child, which must not die by a signal."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _procs import fork_call

import shmipc

pytestmark = pytest.mark.usefixtures("aio_backend")  # both backends (conftest.py)


def _churn(report_fd: int) -> None:
    async def main() -> None:
        for i in range(600):
            ev = shmipc.Event()  # anonymous: close() unmaps it at once
            waiter = asyncio.ensure_future(ev.wait_async(0.05))
            await asyncio.sleep(0)
            if i % 2:
                ev.close()  # under the waiting coroutine
                try:
                    await waiter
                except shmipc.Closed:
                    pass
            else:
                assert await ev.wait_async(0.0005) is False
                waiter.cancel()
                ev.close()  # right after its waits gave up
            q = shmipc.Queue.create(capacity=1 << 12)
            try:
                await q.get_async(timeout=0.0005)
            except queue.Empty:
                pass
            q.close()
        os.write(report_fd, b"ok")

    asyncio.run(main())


@pytest.mark.timeout(120)
def test_closing_under_waiters_never_crashes_the_helper():
    code, report = fork_call(_churn, timeout=100)
    assert code == 0, f"child ended with {code} (negative: killed by that signal)"
    assert report == b"ok"


@pytest.mark.timeout(60)
def test_docs_example_runs(aio_backend):
    text = (Path(__file__).resolve().parents[3] / "docs" / "asyncio.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), SHMIPC_AIO_BACKEND=aio_backend)
    out = subprocess.run(
        [sys.executable, "-c", block], capture_output=True, text=True, timeout=50, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "499500"
