"""``shmipc demo`` and ``shmipc bench``: they finish, report, and never hang on the dead.

Timing is never asserted beyond the bound that says "it did not hang".
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import types

import pytest
from _procs import wait_for
from cli_schemas import BENCH, validate
from rich.console import Console

from shmipc import cli
from shmipc.bench import cli as bench_cli
from shmipc.cli import jobs

pytestmark = pytest.mark.timeout(120)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


def run(*args: str, timeout: float = 100) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shmipc.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )


# ---- demo ----------------------------------------------------------------------------------


def test_demo_runs_and_checks_every_message():
    r = run("demo", "--count", "3000", "--no-baseline")
    assert r.returncode == 0, r.stderr
    assert "delivered exactly once: yes" in r.stdout
    assert "ping-pong round trip" in r.stdout


def _workers(pid: int) -> list[int]:
    """The demo's forked workers: children of ``pid`` running the same command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
            ppid = int(raw[raw.rindex(b")") + 2 :].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read() == cmdline:
                    out.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(out)


@pytest.mark.parametrize("victim", [0, -1], ids=["producer", "consumer"])
def test_demo_exits_nonzero_when_a_worker_is_killed(victim):
    """A worker SIGKILLed mid-run: the demo stops the others and exits 1 with a message
    naming the process, instead of waiting forever for its result."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmipc.cli", "demo", "--count", "50000000", "--no-baseline"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    try:
        wait_for(lambda: len(_workers(proc.pid)) >= 4, timeout=60, what="the demo's workers")
        workers = _workers(proc.pid)
        target = workers[victim]  # forked in order: producers first, consumers last
        os.kill(target, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)  # the bound: it does not hang
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, (out, err)
    assert f"process {target} was killed by SIGKILL" in err, err
    wait_for(lambda: not _workers(proc.pid), timeout=10, what="the other workers to end")
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or _zombie_or_gone(pid)


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return True
    return raw[raw.rindex(b")") + 2 :].split()[0] in (b"Z", b"X")


# ---- bench ---------------------------------------------------------------------------------


def test_bench_quick_on_a_tiny_selection_with_json(tmp_path):
    path = tmp_path / "bench.json"
    r = run(
        "bench", "--quick", "--only", "64B,pingpong", "--transports", "mp-queue,shmipc",
        "--json", str(path),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "workload" in r.stdout and "vs mp.Queue" in r.stdout
    data = json.loads(path.read_text())
    validate(data, BENCH)
    labels = {(row["workload"], row["transport"]) for row in data["rows"]}
    assert ("64B", "multiprocessing.Queue") in labels and ("pingpong", "shmipc") in labels
    assert all(row["ok"] for row in data["rows"])
    base = next(
        r for r in data["rows"] if r["workload"] == "64B" and r["transport_key"] == "mp-queue"
    )
    assert base["vs_baseline"] == pytest.approx(1.0)
    ping = next(r for r in data["rows"] if r["workload"] == "pingpong")
    assert ping["latency_median_us"] > 0 and ping["messages_per_s"] is None


def test_bench_progress_callback_counts_rows():
    calls: list[tuple[int, int, str]] = []
    out = io.StringIO()
    status = bench_cli.main(
        ["--quick", "--only", "64B", "--transports", "mp-queue,pipe"],
        out=out,
        progress=lambda done, total, what: calls.append((done, total, what)),
    )
    assert status == 0, out.getvalue()
    assert calls[0] == (0, 2, "64B / multiprocessing.Queue")
    assert calls[1][:2] == (1, 2)
    assert calls[-1] == (2, 2, "done")


def test_bench_repeats_run_in_rounds_of_every_row(monkeypatch):
    """--repeat N runs a workload's rows in N rounds (one run of every row a round), not
    each row N times back to back; each row then shows its median run and all N figures."""
    from shmipc.bench import cli as cli_module

    order: list[str] = []
    real = cli_module.run_row

    def recording(transport, workload, count, timeout):
        order.append(transport.key)
        return real(transport, workload, count, timeout)

    monkeypatch.setattr(cli_module, "run_row", recording)
    calls: list[tuple[int, int, str]] = []
    out = io.StringIO()
    status = bench_cli.main(
        ["--quick", "--only", "64B", "--transports", "mp-queue,pipe", "--repeat", "3"],
        out=out,
        progress=lambda done, total, what: calls.append((done, total, what)),
    )
    assert status == 0, out.getvalue()
    assert order == ["mp-queue", "mp-pipe"] * 3
    assert calls[0] == (0, 6, "64B / multiprocessing.Queue (round 1 of 3)")
    assert calls[1] == (1, 6, "64B / multiprocessing.Pipe (round 1 of 3)")
    assert calls[-1] == (6, 6, "done")
    assert "in rounds of one run of every row" in out.getvalue()


def _spin_of(q) -> int:
    """The spin a queue's ring was made with, read back from its segment."""
    from shmipc.cli.describe import describe

    with open(f"/dev/shm/{q.name}", "rb") as f:
        data = f.read()
    return describe(memoryview(data), len(data))["ring"]["spin_ns"]


def test_bench_spin_ns_reaches_every_shmipc_queue_and_the_report(monkeypatch):
    """--spin-ns: every shmipc queue the rows make gets it (the stream rows' and the arrays
    rows'), the report says so, and it is undone after the run."""
    from shmipc.bench import transports

    spins: list[int] = []
    real = transports.load_shmipc_queue

    def recording():
        cls = real()

        class Recorded(cls):  # type: ignore[misc, valid-type]
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                spins.append(_spin_of(self))

        return Recorded

    monkeypatch.setattr(transports, "load_shmipc_queue", recording)
    out = io.StringIO()
    argv = ["--quick", "--only", "pingpong,arrays-1MiB", "--transports", "shmipc"]
    status = bench_cli.main([*argv, "--spin-ns", "1234"], out=out)
    assert status == 0, out.getvalue()
    assert len(spins) >= 3 and set(spins) == {1234}, spins  # ping-pong's queues, arrays'
    assert "shmipc queues spun 1,234 ns before sleeping (--spin-ns)" in out.getvalue()
    assert transports.SHMIPC_QUEUE_OPTIONS == {}
    q = real()(capacity=1 << 16)  # after the run: the Queue's own default again
    try:
        assert _spin_of(q) == 50_000
    finally:
        q.close()


def test_bench_spin_ns_refuses_a_negative_value(capsys):
    assert bench_cli.main(["--quick", "--spin-ns", "-1"]) == 2
    assert "--spin-ns must be >= 0" in capsys.readouterr().err


class _FakeReport:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def to_markdown(self) -> str:
        return f"| {self.kind} | markdown |"

    def to_json(self) -> dict:
        return {"kind": self.kind, "rows": [1, 2]}

    def render(self, console: Console) -> None:
        console.print(f"rendered {self.kind} report")


def _fake(monkeypatch: pytest.MonkeyPatch, name: str, calls: list) -> None:
    module = types.ModuleType(f"shmipc.bench.{name}")

    def run(progress=None, **kwargs):
        calls.append(kwargs)
        if progress is not None:
            progress(1, 2, "first")
            progress(2, 2, "second")
        return _FakeReport(name)

    module.run = run
    monkeypatch.setitem(sys.modules, f"shmipc.bench.{name}", module)


def test_bench_limits_and_io_render_what_their_modules_measure(monkeypatch, tmp_path, capsys):
    calls: list[dict] = []
    _fake(monkeypatch, "limits", calls)
    _fake(monkeypatch, "iobench", calls)
    assert cli.main(["bench", "--limits", "--quick"]) == 0
    assert "rendered limits report" in capsys.readouterr().out
    assert calls.pop() == {"quick": True}
    path = tmp_path / "io.json"
    argv = ["bench", "--io", "--size", "2G", "--dir", str(tmp_path), "--json", str(path)]
    assert cli.main(argv) == 0
    assert "rendered iobench report" in capsys.readouterr().out
    assert calls.pop() == {"size": 2 << 30, "directory": str(tmp_path), "quick": False}
    assert json.loads(path.read_text()) == {"kind": "iobench", "rows": [1, 2]}
    assert cli.main(["bench", "--limits", "--io", "--markdown", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| limits | markdown |" in out and "| iobench | markdown |" in out
    assert set(json.loads(path.read_text())) == {"limits", "io"}


def test_bench_limits_and_io_absent_exit_1_with_a_message(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "shmipc.bench.limits", None)
    monkeypatch.setitem(sys.modules, "shmipc.bench.iobench", None)
    assert cli.main(["bench", "--limits"]) == 1
    assert "bench --limits is not available" in capsys.readouterr().err
    assert cli.main(["bench", "--io", "--quick"]) == 1
    assert "bench --io is not available" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "module"), [("--limits", "shmipc.bench.limits"), ("--io", "shmipc.bench.iobench")]
)
def test_bench_limits_and_io_quick_for_real(flag, module, tmp_path):
    """The real measurements, once they are part of this installation: exit 0, a report on
    stdout, JSON that parses (its shape is the measuring module's to test)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not in this tree yet")
    path = tmp_path / "out.json"
    extra = ["--dir", str(tmp_path)] if flag == "--io" else []
    r = run("bench", flag, "--quick", "--json", str(path), *extra, timeout=110)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip()
    assert isinstance(json.loads(path.read_text()), dict)


def test_a_failing_measurement_exits_1_with_its_reason(monkeypatch, capsys):
    module = types.ModuleType("shmipc.bench.limits")

    def run(**kwargs):
        raise OSError(12, "Cannot allocate memory")

    module.run = run
    monkeypatch.setitem(sys.modules, "shmipc.bench.limits", module)
    assert cli.main(["bench", "--limits"]) == 1
    assert "bench --limits failed: OSError" in capsys.readouterr().err


def test_parse_size():
    assert jobs.parse_size("4096") == 4096
    assert jobs.parse_size("256M") == 256 << 20
    assert jobs.parse_size("2GiB") == 2 << 30
    assert jobs.parse_size("1k") == 1024
    with pytest.raises(Exception, match="not a size"):
        jobs.parse_size("lots")
