"""Every ```python block in docs/ and the README runs, unless an HTML comment marks it not
runnable with a reason.

Every other fenced block (shell sessions, output, diagrams) carries such a marker too.

A block is run as a script of its own in a fresh interpreter (the tree first on PYTHONPATH, a
scratch directory as the working directory), so a block cannot lean on an earlier one and a
hanging or crashing block fails only its own case. Leaked segments are caught by the session
fixture in tests/conftest.py (the block's process has exited, so anything it created and left
in /dev/shm has a dead creator). Mark a block that cannot run alone with
``<!-- not-run: why -->`` on the line just above its fence.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]
PYTHON_FENCE = re.compile(r"^```(python|py|python3)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->\s*$")
TIMEOUT = 45


class Block:
    """One fenced block: where it is, its language, its code, and why it is not run (if not)."""

    def __init__(self, page: Path, line: int, lang: str, code: str, not_run: str | None) -> None:
        self.page, self.line, self.lang, self.code, self.not_run = page, line, lang, code, not_run

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def python(self) -> bool:
        return bool(PYTHON_FENCE.match("```" + self.lang))


def _blocks() -> list[Block]:
    """Every fenced block of every page under docs/ and the README, with the not-run marker
    above it."""
    out: list[Block] = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("```"):
                i += 1
                continue
            start = i
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            mark = NOT_RUN.match(lines[k]) if k >= 0 else None
            code = "\n".join(lines[start + 1 : j]) + "\n"
            lang = lines[start][3:].strip()
            out.append(Block(page, start + 1, lang, code, mark.group("reason") if mark else None))
            i = j + 1
    return out


BLOCKS = _blocks()
SNIPPETS = [b for b in BLOCKS if b.python]


def test_snippets_found() -> None:
    """The extractor sees the docs' code (a broken pattern would pass every page silently)."""
    assert len(SNIPPETS) >= 10
    assert any(s.page.name == "getting-started.md" and s.not_run is None for s in SNIPPETS)


def test_other_blocks_say_why_they_are_not_run() -> None:
    """A block that is not Python (a shell session, output, a diagram) carries its reason."""
    unmarked = [b.id for b in BLOCKS if not b.python and not b.not_run]
    assert not unmarked, f"blocks neither run nor marked <!-- not-run: reason -->: {unmarked}"


def test_not_run_markers_sit_on_blocks() -> None:
    """A not-run marker that no block follows is stale: its block moved or changed."""
    used = {(b.page, b.line) for b in BLOCKS if b.not_run}
    stale = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        for n, text in enumerate(lines):
            if "not-run" not in text:
                continue
            k = n + 1
            while k < len(lines) and not lines[k].strip():
                k += 1
            if not (NOT_RUN.match(text) and (page, k + 1) in used):
                stale.append(f"{page.relative_to(ROOT)}:{n + 1}")
    assert not stale, f"not-run markers without a reason or not above a block: {stale}"


@pytest.mark.timeout(TIMEOUT + 15)
@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_snippet_runs(snippet: Block, tmp_path: Path) -> None:
    if snippet.not_run:
        pytest.skip(f"not runnable: {snippet.not_run}")
    script = tmp_path / "snippet.py"
    script.write_text(snippet.code)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, (
        f"{snippet.id} exited {proc.returncode}\n--- stdout\n{proc.stdout[-2000:]}"
        f"\n--- stderr\n{proc.stderr[-4000:]}"
    )
