"""The source distribution carries what a user needs to build and test shmipc (issue 12)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.timeout(300)  # an sdist only (no wheel, no compile); slow under load


def test_sdist_carries_sources_tests_examples_and_license(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert r.returncode == 0, r.stderr
    (tarball,) = tmp_path.glob("shmipc-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    c_sources = {p.name for p in (ROOT / "csrc").glob("*.c")}
    assert c_sources and {f"csrc/{n}" for n in c_sources} <= names
    for needed in ("csrc/shmipc.h", "csrc/build_native.py", "LICENSE", "pyproject.toml",
                   "setup.py", "README.md", "shmipc/py.typed", "shmipc/_native_ext.pyi"):
        assert needed in names, needed
    for tree in ("tests/", "examples/", "docs/"):
        assert any(n.startswith(tree) and n.endswith((".py", ".md")) for n in names), tree
    assert not any(n.endswith((".so", ".pyc")) for n in names)
