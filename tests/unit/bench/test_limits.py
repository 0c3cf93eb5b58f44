"""``--limits``: the report's shape on a quick run, the native loops' argument checks, and that
a measurement the machine refuses becomes a row saying why (never a number).

Timings are never asserted: only that values are positive and rows carry units and reasons.
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

from shmipc._native import ffi, lib
from shmipc.bench import claims, limits, probes
from shmipc.bench.claims import NOT_COMPARABLE, UNAVAILABLE, Report, Row

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def quick_report() -> tuple[Report, list[tuple[int, int, str]]]:
    calls: list[tuple[int, int, str]] = []
    report = limits.run(quick=True, progress=lambda d, t, label: calls.append((d, t, label)))
    return report, calls


def check_rows(report: Report) -> None:
    """Every row: a known status; a value with a unit, or a reason why there is none."""
    assert report.rows
    for row in report.rows:
        assert row.status in claims.STATUSES, row
        if row.value is None:
            assert row.shown or row.note, f"{row.name}: no value and no reason"
            if row.status == UNAVAILABLE:
                assert row.note, f"{row.name}: unavailable without a reason"
        else:
            assert row.value >= 0, row
            assert row.unit, f"{row.name}: a number without a unit"


def test_quick_run_has_every_measurement(quick_report):
    report, _ = quick_report
    check_rows(report)
    names = " | ".join(row.name for row in report.rows)
    for expected in (
        "page size",
        "minor fault",
        "MAP_POPULATE",
        "MADV_POPULATE_WRITE",
        "4 KiB pages",
        "transparent hugepages",
        "explicit hugepages",
        "memcpy",
        "pread",
        "futex wake, across two CPUs",
        "pipe, across two CPUs",
        "cache line",
        "truncated end",
    ):
        assert expected in names, expected


def test_timed_rows_are_positive(quick_report):
    report, _ = quick_report
    timed = [r for r in report.rows if r.unit in ("µs", "ns", "GB/s") and r.value is not None]
    assert len(timed) >= 10
    assert all(r.value > 0 for r in timed)


def test_progress_counts_up_to_done(quick_report):
    _, calls = quick_report
    assert calls[0][0] == 0
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)
    assert calls[-1] == (calls[-1][1], calls[-1][1], "done")


def test_verdicts_name_held_or_not(quick_report):
    report, _ = quick_report
    verdicts = report.verdicts()
    assert verdicts
    assert {v["status"] for v in verdicts} <= set(claims.STATUSES) - {NOT_COMPARABLE}
    assert any("minor fault" in v["claim"] for v in verdicts)


def test_json_markdown_and_rich(quick_report):
    report, _ = quick_report
    data = json.loads(json.dumps(report.to_json()))
    assert set(data) == {"title", "machine", "method", "rows", "verdicts"}
    assert {"name", "value", "unit", "page", "status", "note"} <= set(data["rows"][0])
    md = report.to_markdown()
    assert "| measurement | here | the page says | verdict | note |" in md
    assert "Which of the page's claims held here" in md
    from rich.console import Console

    buf = io.StringIO()
    report.render(Console(file=buf, width=200))
    assert "minor fault" in buf.getvalue()
    assert "[madvise]" in buf.getvalue()  # the THP setting is printed, not eaten as markup


def test_a_refused_prefault_is_a_reason_not_a_number(monkeypatch):
    real = probes.fault

    def refusing(nbytes, *, prefault="none", **kwargs):
        if prefault == "populate_write":
            raise OSError(errno.EINVAL, "fault(populate_write): Invalid argument (EINVAL)")
        return real(nbytes, prefault=prefault, **kwargs)

    monkeypatch.setattr(probes, "fault", refusing)
    report = Report("t")
    limits._faults(report, limits.QUICK)
    rows = [r for r in report.rows if "MADV_POPULATE_WRITE" in r.name]
    assert len(rows) == 1
    assert rows[0].status == UNAVAILABLE and rows[0].value is None
    assert "EINVAL" in rows[0].note
    assert any("MAP_POPULATE" in r.name and r.value for r in report.rows)


def test_refused_hugetlb_says_why(monkeypatch):
    real = probes.random_access

    def refusing(nbytes, *, pages="4k", **kwargs):
        if pages == "hugetlb":
            raise OSError(errno.ENOMEM, "random_access(hugetlb): Cannot allocate memory")
        return real(nbytes, pages=pages, **kwargs)

    monkeypatch.setattr(probes, "random_access", refusing)
    report = Report("t")
    limits._tlb(report, limits.QUICK)
    row = next(r for r in report.rows if "MAP_HUGETLB" in r.name)
    assert row.status == UNAVAILABLE and "HugePages" in row.note


def test_row_refuses_a_verdict_without_a_value():
    with pytest.raises(ValueError):
        Row("x", None, "µs", "~1 µs", claims.HELD)
    with pytest.raises(ValueError):
        Row("x", 1.0, "µs", "", "maybe")
    assert Row("x", float("nan"), "µs", "", UNAVAILABLE, note="n").value is None


def test_near():
    assert claims.near(1.2, 1.0) and claims.near(0.34, 1.0)
    assert not claims.near(3.5, 1.0) and not claims.near(0.0, 1.0)


# ---- the native loops' argument checks --------------------------------------------------


@pytest.mark.parametrize(
    ("call", "kwargs"),
    [
        (probes.fault, {"nbytes": 0}),
        (probes.fault, {"nbytes": 4097}),
        (probes.fault, {"nbytes": -4096}),
        (probes.fault, {"nbytes": 2 << 40}),
        (probes.fault, {"nbytes": 4096, "prefault": "bogus"}),
        (probes.fault, {"nbytes": 4096, "fd": 0, "shared": False}),
        (probes.random_access, {"nbytes": 4096}),
        (probes.random_access, {"nbytes": 1 << 20, "pages": "1g"}),
        (probes.random_access, {"nbytes": 1 << 20, "pages": "hugetlb"}),
        (probes.random_access, {"nbytes": 1 << 20, "accesses": 0}),
        (probes.random_access, {"nbytes": 128 << 30}),
        (probes.memcpy, {"nbytes": 10, "total": 100}),
        (probes.memcpy, {"nbytes": 4096, "total": 10}),
        (probes.memcpy, {"nbytes": 8 << 30, "total": 8 << 30}),
        (probes.pingpong, {"kind": "carrier-pigeon", "rounds": 10}),
        (probes.pingpong, {"kind": "futex", "rounds": 0}),
        (probes.pingpong, {"kind": "futex", "rounds": 10, "cpus": (-5, 0)}),
        (probes.pingpong, {"kind": "futex", "rounds": 10, "cpus": (0, 5000)}),
        (probes.ring_pingpong, {"pairs": []}),
        (probes.ring_pingpong, {"pairs": [("copy", "copy")] * 17}),
        (probes.ring_pingpong, {"pairs": [("copy", "telegram")]}),
        (probes.ring_pingpong, {"pairs": [("copy", "copy")], "block": 9}),
        (probes.ring_pingpong, {"pairs": [("copy", "copy")], "cycles": 0}),
        (probes.ring_pingpong, {"pairs": [("copy", "copy")], "block": 10**6, "cycles": 2000}),
        (probes.ring_pingpong, {"pairs": [("copy", "copy")], "cpus": (0, -7)}),
    ],
)
def test_python_checks_refuse_bad_arguments(call, kwargs):
    with pytest.raises(ValueError):
        call(**kwargs)


def test_native_entry_points_refuse_bad_arguments_without_crashing():
    """The C side checks too (-EINVAL before mapping anything), called directly."""
    code = r"""
import errno
from shmipc._native import ffi, lib
out = ffi.new("double[8]")
E = -errno.EINVAL
checks = [
    lib.shmipc_measure_fault(-1, 0, 0, 0, out),
    lib.shmipc_measure_fault(-1, 4097, 0, 0, out),
    lib.shmipc_measure_fault(-1, 4096, 0, 7, out),
    lib.shmipc_measure_fault(-1, 4096, 0, 0, ffi.NULL),
    lib.shmipc_measure_fault(3, 4096, 0, 0, out),
    lib.shmipc_measure_random_access(4096, 0, 10, 1, out),
    lib.shmipc_measure_random_access(1 << 20, 3, 10, 1, out),
    lib.shmipc_measure_random_access(3 << 20, 2, 10, 1, out),
    lib.shmipc_measure_random_access(1 << 20, 0, 0, 1, out),
    lib.shmipc_measure_random_access((1 << 20) + 1, 0, 10, 1, out),
    lib.shmipc_measure_tlb_info(ffi.NULL),
    lib.shmipc_measure_memcpy(8, 64, out),
    lib.shmipc_measure_memcpy(4096, 10, out),
    lib.shmipc_measure_pingpong(3, 10, 0, 1, out),
    lib.shmipc_measure_pingpong(0, 0, 0, 1, out),
    lib.shmipc_measure_pingpong(0, 10, -2, 1, out),
    lib.shmipc_measure_ring_pingpong(ffi.new("int[2]", [0, 2]), 1, 100, 1, 0, -1, -1, out),
    lib.shmipc_measure_ring_pingpong(ffi.new("int[2]", [0, 0]), 0, 100, 1, 0, -1, -1, out),
    lib.shmipc_measure_ring_pingpong(ffi.new("int[2]", [0, 0]), 17, 100, 1, 0, -1, -1, out),
    lib.shmipc_measure_ring_pingpong(ffi.new("int[2]", [0, 0]), 1, 9, 1, 0, -1, -1, out),
    lib.shmipc_measure_ring_pingpong(ffi.new("int[2]", [0, 0]), 1, 100, 0, 0, -1, -1, out),
    lib.shmipc_measure_ring_pingpong(ffi.new("int[2]", [0, 0]), 1, 100, 1, 2, -1, -1, out),
    lib.shmipc_measure_ring_pingpong(ffi.new("int[2]", [0, 0]), 1, 100, 1, 0, -3, -1, out),
    lib.shmipc_measure_ring_pingpong(ffi.NULL, 1, 100, 1, 0, -1, -1, out),
    lib.shmipc_measure_ring_pingpong(ffi.new("int[2]", [0, 0]), 1, 100, 1, 0, -1, -1, ffi.NULL),
    lib.shmipc_io_read(-1, 0, 1 << 20, 4096, 1, 10, 1, 0, 1, 0, out),
    lib.shmipc_io_read(-1, 1, 1 << 20, 4, 1, 10, 1, 0, 1, 0, out),
    lib.shmipc_io_read(-1, 1, 1 << 20, 4096, 1, 0, 1, 0, 1, 0, out),
    lib.shmipc_io_read(0, 2, 1 << 20, 4096, 1, 10, 1, 0, 0, 0, out),
    lib.shmipc_io_read(0, 5, 1 << 20, 4096, 1, 10, 1, 0, 1, 0, out),
    lib.shmipc_io_read(-1, 1, 1 << 20, 4096, 1, 10, 1, 9, 1, 0, out),
    lib.shmipc_io_resident(-1, 4096, out),
    lib.shmipc_io_resident(0, 0, out),
    lib.shmipc_io_msync(-1, 4096, out),
    lib.shmipc_io_msync(0, 4096, ffi.NULL),
]
bad = [i for i, rc in enumerate(checks) if rc != E]
print("bad", bad)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr  # never killed by a signal
    assert proc.stdout.strip() == "bad []"


def test_native_errno_becomes_oserror():
    """A mapping the kernel refuses comes back as OSError with its errno."""
    with pytest.raises(OSError) as info:
        probes.fault(4096, shared=True, fd=10_000)  # not an open descriptor
    assert info.value.errno == errno.EBADF


def test_small_measurements_run():
    assert probes.fault(1 << 20)["touch_faults_per_page"] > 0.5
    assert probes.fault(1 << 20, prefault="populate")["touch_faults_per_page"] < 0.5
    assert probes.random_access(1 << 20, accesses=1000)["ns_per_access"] > 0
    assert probes.memcpy(4096, total=1 << 20)["bytes_per_s"] > 0
    for kind in ("futex", "pipe", "cacheline"):
        r = probes.pingpong(kind, 50, cpus=None)
        assert r["ns_per_round_trip"] > 0 and not r["pinned"]


@pytest.mark.timeout(60)
def test_ring_pingpong_runs_every_pair_and_checks_every_reply():
    """The C loop checks each reply's round number itself (a wrong one is -EPROTO, an
    OSError here); a run that returns gave one median per block, for every pair."""
    pairs = [(p, e) for p in probes.RING_STYLES for e in probes.RING_STYLES]
    for spsc in (False, True):
        r = probes.ring_pingpong(pairs, block=50, cycles=3, spsc=spsc, cpus=None)
        assert set(r["blocks"]) == set(pairs) and not r["pinned"]
        assert all(len(v) == 3 and all(x > 0 for x in v) for v in r["blocks"].values())


@pytest.mark.timeout(60)
def test_ring_pingpong_pins_where_it_may_and_restores_the_affinity():
    before = os.sched_getaffinity(0)
    cpus = sorted(before)
    pair = (cpus[0], cpus[-1])
    r = probes.ring_pingpong([("copy", "in place")], block=20, cycles=1, cpus=pair)
    assert r["pinned"] and os.sched_getaffinity(0) == before


def test_out_pointer_is_checked_not_written_past():
    out = ffi.new("double[8]")
    for i in range(8):
        out[i] = -1.0
    assert lib.shmipc_measure_memcpy(4096, 8192, out) == 0
    assert out[2] == -1.0  # memcpy writes two results only


def test_cli_limits_quick_json():
    proc = subprocess.run(
        [sys.executable, "-m", "shmipc.bench", "--limits", "--quick", "--json", "-", "--markdown"],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    start = proc.stdout.index("\n{")
    data = json.loads(proc.stdout[start:])
    assert data["rows"] and data["verdicts"]


def test_cli_usage_errors():
    from shmipc.bench.measure_cli import main, parse_size

    assert main(["--quick"], out=io.StringIO()) == 2
    assert main(["--limits", "--size", "12X"], out=io.StringIO()) == 2
    assert parse_size("64M") == 64 << 20 and parse_size("1GiB") == 1 << 30
    assert parse_size("4096") == 4096


def test_a_file_shorter_than_the_mapping_is_refused_not_sigbus(tmp_path):
    """Touching a mapping past its file's end is SIGBUS: the C side checks the size first."""
    code = r"""
import errno, os, sys
from shmipc.bench import probes
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 4096)
calls = [
    lambda: probes.fault(1 << 20, shared=True, fd=fd),
    lambda: probes.io_read(fd, "mmap", size=1 << 20, block=4096, random=True, count=10),
    lambda: probes.io_msync(fd, 1 << 20),
    lambda: probes.io_resident(fd, 1 << 20),
]
for call in calls:
    try:
        call()
    except OSError as exc:
        assert exc.errno == errno.EINVAL, exc
    else:
        raise AssertionError("not refused")
print("refused")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "short")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.strip() == "refused"
