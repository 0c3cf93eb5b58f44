"""``--io``: the report's shape on a small quick run, the scratch file's removal, the native
read loop's argument checks, and that a method the kernel or filesystem refuses is a row
saying why. Timings are never asserted.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shmipc.bench import iobench, probes
from shmipc.bench.claims import STATUSES, UNAVAILABLE, Report

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[3]
SIZE = 4 << 20


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> tuple[Report, Path]:
    d = tmp_path_factory.mktemp("io")
    return iobench.run(size=SIZE, directory=str(d), quick=True), d


def test_rows_have_values_units_or_reasons(quick_report):
    report, _ = quick_report
    assert report.rows
    for row in report.rows:
        assert row.status in STATUSES
        if row.value is None:
            assert row.status == UNAVAILABLE and row.note, row
        else:
            assert row.value >= 0 and row.unit, row
    groups = {row.group for row in report.rows}
    for expected in (
        "random 8 KiB reads, cold page cache",
        "random 8 KiB reads, file in the page cache",
        "random 8 KiB reads, regions in memory",
        "sequential 1 MiB reads, cold page cache",
        "sequential 1 MiB reads, regions in memory",
        "writeback",
        "the page's claims",
    ):
        assert expected in groups, expected
    names = {row.name for row in report.rows}
    for expected in (
        "pread",
        "mmap",
        "mmap + MADV_RANDOM",
        "O_DIRECT pread (aligned)",
        "io_uring, 1 in flight",
        "anonymous MAP_SHARED",
        "shm_open region (tmpfs)",
    ):
        assert expected in names, expected


def test_rates_and_latencies_are_positive(quick_report):
    report, _ = quick_report
    timed = [r for r in report.rows if r.unit in ("µs/read", "GB/s") and r.value is not None]
    assert len(timed) >= 10 and all(r.value > 0 for r in timed)


def test_says_how_the_cache_was_dropped(quick_report):
    report, _ = quick_report
    cold = next(m for m in report.method if m.startswith("Cold rows"))
    assert "drop_caches was" in cold and "mincore" in cold


def test_scratch_file_removed(quick_report):
    _, d = quick_report
    assert os.listdir(d) == []


def test_json_and_markdown(quick_report):
    report, _ = quick_report
    data = json.loads(json.dumps(report.to_json()))
    assert data["rows"] and data["verdicts"]
    assert "| measurement | here |" in report.to_markdown()
    from rich.console import Console

    buf = io.StringIO()
    report.render(Console(file=buf, width=200))
    assert "io_uring" in buf.getvalue()


def test_bad_size_is_a_value_error(tmp_path):
    for size in (12345, 1 << 19):
        with pytest.raises(ValueError):
            iobench.run(size=size, directory=str(tmp_path), quick=True)


def test_refused_io_uring_and_o_direct_are_rows_with_reasons(tmp_path, monkeypatch):
    real_read, real_open = probes.io_read, iobench._open

    def no_uring(fd, method, **kwargs):
        if method == "io_uring":
            raise OSError(errno.ENOSYS, "io_uring read: Function not implemented (ENOSYS)")
        return real_read(fd, method, **kwargs)

    def no_direct(path, direct):
        if direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, direct)

    monkeypatch.setattr(probes, "io_read", no_uring)
    monkeypatch.setattr(iobench, "_open", no_direct)
    report = iobench.run(size=2 << 20, directory=str(tmp_path), quick=True)
    uring = [r for r in report.rows if r.name.startswith("io_uring") and "O_DIRECT" not in r.name]
    assert uring and all(r.status == UNAVAILABLE and "ENOSYS" in r.note for r in uring)
    direct = [r for r in report.rows if "O_DIRECT" in r.name and r.group != "the page's claims"]
    assert direct and all(r.status == UNAVAILABLE and "O_DIRECT" in r.note for r in direct)
    claim = next(r for r in report.rows if "io_uring (32 in flight)" in r.name)
    assert claim.status == UNAVAILABLE and claim.value is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 0, "block": 4096},
        {"size": 1 << 20, "block": 7},
        {"size": 1 << 20, "block": 12},
        {"size": (1 << 20) + 8, "block": 4096},
        {"size": 1 << 20, "block": 2 << 20},
        {"size": 1 << 20, "block": 4096, "count": 0},
        {"size": 1 << 20, "block": 4096, "depth": 0},
        {"size": 1 << 20, "block": 4096, "advice": "whatever"},
        {"size": 1 << 20, "block": 4096, "method": "sendfile"},
    ],
)
def test_io_read_argument_checks(tmp_path, kwargs):
    path = tmp_path / "f"
    path.write_bytes(b"\0" * (1 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        args = {"random": True, "count": 10, **kwargs}
        method = args.pop("method", "pread")
        with pytest.raises(ValueError):
            probes.io_read(fd, method, **args)
    finally:
        os.close(fd)
    with pytest.raises(ValueError):
        probes.io_read(-1, "pread", size=1 << 20, block=4096, random=True, count=1)


def test_io_read_small_file_every_method(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        for method in ("pread", "mmap"):
            r = probes.io_read(fd, method, size=1 << 20, block=8192, random=True, count=64)
            assert r["reads"] == 64 and r["bytes"] == 64 * 8192
        assert probes.io_resident(fd, 1 << 20) > 0
        try:
            r = probes.io_read(
                fd, "io_uring", size=1 << 20, block=8192, random=False, count=128, depth=4
            )
        except OSError as exc:  # refused here: the report would say so; nothing to check
            assert exc.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES, errno.ENOMEM)
        else:
            assert r["reads"] == 128
    finally:
        os.close(fd)


def test_cli_io_quick(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmipc.bench",
            "--io",
            "--quick",
            "--size",
            "2M",
            "--dir",
            str(tmp_path),
            "--json",
            str(tmp_path / "out.json"),
        ],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "io_uring" in proc.stdout
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["rows"]
    assert sorted(os.listdir(tmp_path)) == ["out.json"]
