"""The event loops the aio tests run on: asyncio's, and uvloop's where it is installed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

try:  # uvloop is in the test extra; the suite still runs without it
    import uvloop
except ImportError:  # pragma: no cover - depends on the environment
    uvloop = None

LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    uvloop is None, reason="uvloop is not installed"))]


def run(kind: str, coro: Any) -> Any:
    """Run ``coro`` to completion on a fresh loop of the given kind."""
    factory = uvloop.new_event_loop if kind == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
