"""examples/mp_switch.py runs as its own program, both ways, and the answers agree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "mp_switch.py"


def run(*args: str, impl: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("MP_SWITCH_IMPL", None)
    if impl is not None:
        env["MP_SWITCH_IMPL"] = impl
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )


def test_both_implementations_agree():
    proc = run("--impl", "both", "--workers", "2", "--lines", "500")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "module: multiprocessing\n" in proc.stdout
    assert "module: shmipc.mp\n" in proc.stdout
    assert proc.stdout.count("words: 5250 (expected 5250)") == 2
    assert "same answer from both" in proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_shmipc_under_other_start_methods(method):
    proc = run("--start-method", method, "--workers", "2", "--lines", "300")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "module: shmipc.mp" in proc.stdout
    assert "processed: 300 of 300 lines" in proc.stdout
