"""The sync examples run as their own processes and print what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=50,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_counter_fork_is_exact():
    proc = run("counter_fork.py")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^count: 160000 \(expected 160000\)$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^time: \d+\.\d+ s for 8 children x 20000 increments", proc.stdout, re.M)
    assert proc.stderr == ""


def test_counter_fork_other_sizes():
    proc = run("counter_fork.py", "--children", "3", "--increments", "1000")
    assert proc.returncode == 0, proc.stderr
    assert "count: 3000 (expected 3000)" in proc.stdout


def test_futex_wake_prints_latency():
    proc = run("futex_wake.py", "--rounds", "5")
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"median (\d+\.\d) us, min (\d+\.\d) us, max (\d+\.\d) us", proc.stdout)
    assert m, proc.stdout
    median, low, high = map(float, m.groups())
    assert 0 < low <= median <= high
    assert median < 1_000_000  # under a second: woken, not timed out
    assert "over 5 rounds" in proc.stdout
    assert proc.stderr == ""
