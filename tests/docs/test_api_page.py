"""The API reference page (docs/api.md) documents every public name of shmipc."""

from __future__ import annotations

import re
from pathlib import Path

import shmipc
import shmipc.errors

API = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_api_page_covers_the_public_surface() -> None:
    """A name added to shmipc.__all__ without a `::: shmipc.Name` entry fails here."""
    entries = set(re.findall(r"^::: shmipc\.(\w+)\s*$", API.read_text(), re.M))
    by_module = set()
    if "errors" in entries:  # `::: shmipc.errors` documents the whole module
        by_module = {n for n in dir(shmipc.errors) if not n.startswith("_")}
    missing = sorted(
        n for n in shmipc.__all__ if n != "__version__" and n not in entries | by_module
    )
    assert not missing, f"docs/api.md lacks `::: shmipc.NAME` for: {missing}"
    unknown = sorted(entries - set(shmipc.__all__) - {"errors", "mp"})
    assert not unknown, f"docs/api.md documents names shmipc does not export: {unknown}"
