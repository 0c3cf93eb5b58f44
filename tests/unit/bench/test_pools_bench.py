"""The pool benchmark (shmipc.bench.pools) runs end to end at a tiny size and reports every
row; numbers are not judged here (docs/performance.md has them)."""

from __future__ import annotations

import pytest

from shmipc.bench import pools

pytestmark = pytest.mark.timeout(120)


def test_tiny_run_reports_every_row(monkeypatch) -> None:
    monkeypatch.setattr(pools, "MAP_N", 400)
    monkeypatch.setattr(pools, "SINGLE_N", 200)
    monkeypatch.setattr(pools, "ARRAY_BYTES", 1 << 20)
    seen: list[str] = []
    report = pools.run(quick=True, progress=lambda i, n, what: seen.append(what))
    subjects = {row.subject for row in report.rows}
    assert {
        "shmipc.Pool",
        "shmipc.Executor",
        "multiprocessing.Pool",
        "ProcessPoolExecutor",
    } <= subjects
    assert {row.workload for row in report.rows} == set(report.units)
    failed = [(r.subject, r.workload, r.note) for r in report.rows if r.value is None]
    assert not failed
    md = report.to_markdown()
    assert "| map of 20,000 x*x | shmipc.Pool |" in md
    assert report.to_json()["rows"]
    assert seen[-1] == "done"


def test_only_pools_delegates_to_the_pool_benchmark(monkeypatch) -> None:
    from shmipc.bench import cli

    seen: list[list[str]] = []
    monkeypatch.setattr(pools, "main", lambda argv: seen.append(list(argv)) or 7)
    assert cli.main(["--only", "pools", "--quick", "--markdown", "--repeat", "2"]) == 7
    assert cli.main(["--only=pools"]) == 7
    assert seen == [["--quick", "--markdown", "--rounds", "2"], []]
    assert cli._pools_request(["--only", "pools,ping-pong"]) is None
    assert cli._pools_request(["--quick"]) is None
