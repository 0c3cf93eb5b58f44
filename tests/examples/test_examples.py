"""Every program in examples/ runs as its own process, succeeds, says what it should, and
leaves no segment behind (each run is kept small with the example's own size argument)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _orphaned, _segments

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}


def start(name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def run(name: str, *args: str, timeout: float = 90) -> str:
    """Run an example to the end; assert exit code 0 and no segment left; return stdout."""
    before = _segments()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_no_leak(before)
    return proc.stdout


def assert_no_leak(before: set[str]) -> None:
    """No segment made since ``before`` is left without a live owner. Other tests running
    beside this one (xdist) make segments too, and one being created or a spill in flight
    looks ownerless for a moment: only a segment that stays ownerless for 5 s counts."""
    deadline = time.monotonic() + 5
    while True:
        leaked = sorted(n for n in _segments() - before if _orphaned(n))
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not leaked, f"left in /dev/shm: {leaked}"


def test_pipeline():
    out = run("pipeline.py", "--count", "5000", "--workers", "3")
    assert "pipeline OK: 5000 items in sequence" in out
    assert (
        sum(int(line.split()[2]) for line in out.splitlines() if line.startswith("worker")) == 5000
    )


def test_by_name_server_and_client(shm_name):
    """Two separate programs, started independently, share only the name."""
    before = _segments()
    server = start("by_name_server.py", "--name", shm_name, "--idle", "60")
    try:
        # The client may start before the server has made the names: it waits for them.
        client = start("by_name_client.py", "--name", shm_name, "--count", "300", "--wait", "60")
        c_out, c_err = client.communicate(timeout=90)
        s_out, s_err = server.communicate(timeout=90)
    finally:
        for p in (server, locals().get("client")):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert client.returncode == 0, c_out + c_err
    assert server.returncode == 0, s_out + s_err
    assert "client OK: 300 answers checked" in c_out
    assert s_out.splitlines() == ["ready", "served 300 requests"]
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(shm_name)]
    assert_no_leak(before)


def test_image_pool():
    pytest.importorskip("numpy")
    out = run("image_pool.py", "--count", "12", "--size", "256", "--workers", "2")
    assert "frames: 12 of (256, 256, 3)" in out
    assert "checksums OK: 12 frames" in out


def test_market_data_both_policies():
    out = run("market_data.py", "--policy", "both", "--count", "1500", "--fast", "2")
    assert "policy block: every tick accounted for" in out
    assert "policy overwrite: every tick accounted for" in out
    block, overwrite = out.split("policy overwrite: published")
    rows = [line.split() for line in block.splitlines() if "received" in line]
    assert [r[0] for r in rows] == ["fast0", "fast1", "slow"]
    assert all(r[2] == "1500" and r[4] == "0" for r in rows), block  # nothing lost
    slow = next(line.split() for line in overwrite.splitlines() if line.strip().startswith("slow"))
    received, missed, lagged = int(slow[2]), int(slow[4]), int(slow[7])
    assert missed > 0 and lagged >= 1 and received + missed == 1500, overwrite


def test_asyncio_stream():
    """Two clients connect at once; each reads N consecutive ticks as JSON lines."""
    import json
    import socket

    before = _segments()
    server = start("asyncio_stream.py", "--count", "50", "--clients", "2")
    try:
        first = server.stdout.readline()
        assert first.startswith("listening on 127.0.0.1:"), first + server.stderr.read()
        port = int(first.rsplit(":", 1)[1])
        conns = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(2)]
        for conn in conns:
            with conn, conn.makefile() as lines:
                seqs = [json.loads(lines.readline())["seq"] for _ in range(50)]
                assert seqs == list(range(seqs[0], seqs[0] + 50))
                assert lines.readline() == ""  # the server closed the stream after N
        out, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, out + err
    assert out.count("sent 50 ticks") == 2 and out.endswith("done\n"), out
    assert_no_leak(before)


def test_crash_demo():
    out = run("crash_demo.py", "--count", "300")
    assert "that task failed: BrokenWorker(" in out and "signal=SIGKILL)" in out, out
    assert "carried on: 600 of 600 other tasks succeeded" in out, out
    assert "killed consumer 0" in out, out
    assert "carried on: 300 of 300 items done exactly once" in out, out
