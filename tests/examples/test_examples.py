"""Every program in examples/ runs as its own process, succeeds, says what it should, and
leaves no segment behind (each run is kept small with the example's own size argument)."""

from __future__ import annotations

import os
import subprocess
import sys
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
    """No segment made since ``before`` is left without a live owner (other tests running
    beside this one under xdist own theirs)."""
    leaked = sorted(n for n in _segments() - before if _orphaned(n))
    assert not leaked, f"left in /dev/shm: {leaked}"


def test_pipeline():
    out = run("pipeline.py", "--count", "5000", "--workers", "3")
    assert "pipeline OK: 5000 items in sequence" in out
    assert sum(int(line.split()[2]) for line in out.splitlines() if line.startswith("worker")) \
        == 5000
