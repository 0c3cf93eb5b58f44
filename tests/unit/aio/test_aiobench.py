"""The asyncio benchmark (shmipc/bench/aiobench.py) runs, verifies and reports both transports."""

from __future__ import annotations

import pytest

from shmipc.bench import aiobench


@pytest.mark.timeout(120)
def test_quick_run_reports_both_transports():
    report = aiobench.run(quick=True)
    rows = {r.transport: r for r in report.rows}
    assert rows["shmipc"].throughput > 0
    assert 0 < rows["shmipc"].p50_us <= rows["shmipc"].p99_us
    md = report.to_markdown()
    assert "| shmipc |" in md and "pyzmq.asyncio" in md
    assert report.to_json()["rows"][0]["transport"] == "shmipc"
    assert report.backend in ("uring", "thread", "poll") and "wake-ups:" in md
    if rows["pyzmq.asyncio"].throughput is not None:
        assert set(report.ratios()) == {"throughput", "p50"}
