"""The region examples run as users would run them: a fresh interpreter, exit code 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_file_array(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "file_array.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("mapped ") and lines[0].endswith(": 8192 bytes, file is 8192 bytes")
    assert lines[1] == "first 16 bytes: " + "00" * 16
    assert lines[2:] == [
        "stored 42 as 4 little-endian bytes at offset 1024",
        "flushed",
        "read back through open(): 42 at offset 1024",
        "ok",
    ]
    assert os.listdir(tmp_path) == []  # its temporary file is gone
