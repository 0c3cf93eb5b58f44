"""Tests of the benchmark harness: a quick run over the peers, the exactly-once checker, and
that broken transports end as FAILED or TIMEOUT rows instead of numbers or hangs.

Timing is never asserted: these check that the benchmark measures honestly, not how fast
anything is.
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import multiprocessing
import os
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import pytest

from shmipc.bench import main, transports
from shmipc.bench.harness import latency_stats
from shmipc.bench.transports import ChannelSpec, Receiver, Sender, Transport
from shmipc.bench.verify import END, END_SEQ, SEQ, check, make_seq, split_seq
from shmipc.bench.workloads import WORKLOADS

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[3]
HAVE_NUMPY = importlib.util.find_spec("numpy") is not None
#: The producers -> consumers workloads (fan-out and arrays are tested in their own files).
STREAM = [w for w in WORKLOADS if w.kind == "stream"]


def _peers() -> list[tuple[str, list[str]]]:
    """(--transports key, row labels) of the peers installed here."""
    peers = [
        ("mp-queue", ["multiprocessing.Queue"]),
        ("mp-pipe", ["multiprocessing.Pipe"]),
    ]
    if importlib.util.find_spec("faster_fifo"):
        peers.append(("faster-fifo", ["faster-fifo", "faster-fifo (batched)"]))
    if importlib.util.find_spec("zmq"):
        peers.append(("pyzmq", ["pyzmq PUSH/PULL"]))
    return peers


def _table_rows(report: str) -> dict[tuple[str, str], str]:
    """{(workload, transport label): the rest of the line} from a plain-text report."""
    names = {w.name for w in WORKLOADS}
    rows = {}
    for line in report.splitlines():
        workload, _, rest = line.partition("  ")
        if workload.strip() in names and rest:
            label, _, result = rest.strip().partition("  ")
            rows[(workload.strip(), label.strip())] = result.strip()
    return rows


# --- the real thing, as users run it --------------------------------------------------------


def test_quick_run_over_the_peers_prints_every_workload_verified() -> None:
    peers = _peers()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmipc.bench",
            "--quick",
            "--only",
            ",".join(w.name for w in STREAM),
            "--transports",
            ",".join(key for key, _ in peers),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = proc.stdout
    for heading in ("workload", "transport", "result", "CPU µs/msg", "vs mp.Queue"):
        assert heading in report
    assert report.startswith("CPU")
    rows = _table_rows(report)
    for workload in STREAM:
        for _, labels in peers:
            for label in labels:
                if label.endswith("(batched)") and workload.name != "64B":
                    continue
                result = rows.get((workload.name, label))
                assert result is not None, f"no row {workload.name} / {label}\n{report}"
                assert not result.startswith(("FAILED", "TIMEOUT", "ERROR")), result
    assert rows[("64B", "multiprocessing.Queue")].split()[-2] == "1.00x"
    assert "µs" in rows[("pingpong", "multiprocessing.Pipe")]
    assert "GB/s" in rows[("1MiB", "multiprocessing.Pipe")]
    assert "problems:" not in report


def test_markdown_table() -> None:
    out = io.StringIO()
    status = main(
        ["--quick", "--only", "64B,pingpong", "--transports", "mp-queue,pipe", "--markdown"],
        out=out,
    )
    assert status == 0
    lines = out.getvalue().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| workload | transport | result |")
    assert set(table[1].replace("|", "").split()) <= {"---", "---:"}
    assert len(table) == 2 + 4
    assert any(line.startswith("- **CPU**") for line in lines)


def test_quick_run_over_shmipc_when_it_imports() -> None:
    """The adapter against the real shmipc.Queue (skipped until that imports)."""
    reason = next(t for t in transports.TRANSPORTS if t.key == "shmipc").unavailable()
    if reason is not None:
        pytest.skip(reason)
    out = io.StringIO()
    status = main(
        ["--quick", "--only", ",".join(w.name for w in STREAM), "--transports", "shmipc"], out=out
    )
    rows = _table_rows(out.getvalue())
    assert status == 0, out.getvalue()
    for workload in STREAM:
        assert (workload.name, "shmipc") in rows, out.getvalue()
    # The SPSC row runs where one producer feeds one consumer, its producer posting the end.
    for name in ("64B", "dict", "pingpong"):
        assert rows[(name, "shmipc (spsc)")][0].isdigit(), out.getvalue()
    assert ("2x2", "shmipc (spsc)") not in rows


def test_repeat_shows_the_median_run_and_the_spread() -> None:
    out = io.StringIO()
    assert main(["--quick", "--repeat", "3", "--only", "64B", "--transports", "pipe"], out=out) == 0
    report = out.getvalue()
    assert "±" in _table_rows(report)[("64B", "multiprocessing.Pipe")]
    assert "each row ran 3 times" in report


# --- the checker ------------------------------------------------------------------------------


def _seqs(pairs: list[tuple[int, int]]) -> array:
    return array("Q", [make_seq(p, c) for p, c in pairs])


numpy_or_not = pytest.mark.parametrize(
    "use_numpy",
    [False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_NUMPY, reason="no numpy"))],
)


@numpy_or_not
def test_checker_accepts_exactly_once_in_any_order_split_across_consumers(
    use_numpy: bool,
) -> None:
    every = [(p, c) for p in range(2) for c in range(50)]
    first, second = every[::2][::-1], every[1::2]
    verdict = check([_seqs(first), _seqs(second).tobytes()], 2, 50, use_numpy=use_numpy)
    assert verdict.ok
    assert (verdict.expected, verdict.received) == (100, 100)
    assert verdict.describe().startswith("ok")


@numpy_or_not
def test_checker_detects_a_lost_message(use_numpy: bool) -> None:
    pairs = [(0, c) for c in range(10) if c != 7]
    verdict = check([_seqs(pairs)], 1, 10, use_numpy=use_numpy)
    assert not verdict.ok
    assert (verdict.lost, verdict.duplicated, verdict.unexpected) == (1, 0, 0)
    assert "1 lost" in verdict.describe()


@numpy_or_not
def test_checker_detects_a_duplicated_message(use_numpy: bool) -> None:
    pairs = [(0, c) for c in range(10)] + [(0, 3)]
    verdict = check([_seqs(pairs)], 1, 10, use_numpy=use_numpy)
    assert not verdict.ok
    assert (verdict.lost, verdict.duplicated, verdict.unexpected) == (0, 1, 0)
    assert "1 duplicated" in verdict.describe()


@numpy_or_not
def test_checker_detects_a_duplicate_seen_by_two_consumers(use_numpy: bool) -> None:
    a = _seqs([(0, c) for c in range(6)])
    b = _seqs([(1, c) for c in range(6)] + [(0, 5)])
    verdict = check([a, b], 2, 6, use_numpy=use_numpy)
    assert (verdict.lost, verdict.duplicated) == (0, 1)


@numpy_or_not
def test_checker_counts_a_loss_hidden_by_a_duplicate(use_numpy: bool) -> None:
    """The count is right (10 of 10) but one message came twice and another never."""
    pairs = [(0, c) for c in range(10) if c != 4] + [(0, 9)]
    verdict = check([_seqs(pairs)], 1, 10, use_numpy=use_numpy)
    assert verdict.received == verdict.expected
    assert (verdict.lost, verdict.duplicated) == (1, 1)
    assert not verdict.ok


@numpy_or_not
def test_checker_detects_sequence_numbers_nobody_sent(use_numpy: bool) -> None:
    pairs = [(0, c) for c in range(4)] + [(0, 4), (3, 0)]  # counter and producer beyond range
    verdict = check([_seqs(pairs), array("Q", [END_SEQ])], 1, 4, use_numpy=use_numpy)
    assert (verdict.lost, verdict.duplicated, verdict.unexpected) == (0, 0, 3)
    assert not verdict.ok


def test_checker_fails_on_corrupt_payloads_and_empty_input() -> None:
    assert not check([_seqs([(0, 0)])], 1, 1, corrupt=1).ok
    verdict = check([], 1, 3)
    assert (verdict.lost, verdict.received) == (3, 0)


def test_sequence_numbers() -> None:
    assert split_seq(make_seq(3, 12345)) == (3, 12345)
    assert SEQ.unpack(END)[0] == END_SEQ
    assert split_seq(END_SEQ)[0] == 0xFFFF
    with pytest.raises(ValueError):
        make_seq(0xFFFF, 0)  # would be able to spell the end mark
    with pytest.raises(ValueError):
        make_seq(0, 1 << 48)


def test_latency_stats() -> None:
    assert latency_stats([3000, 1000, 2000]) == (2.0, 3.0)
    median, p99 = latency_stats(list(range(1000, 101_000, 1000)))  # 1..100 us
    assert (median, p99) == (50.5, 99.0)


# --- broken transports end as FAILED / TIMEOUT rows -------------------------------------------


class _LossyPipe(transports._PipeChannel):
    """A Pipe that drops message 5 (and, duplicating, sends message 7 twice)."""

    duplicate = False

    def sender(self, producer: int) -> Sender:
        inner = super().sender(producer)
        counter = itertools.count()

        def send(message: Any) -> None:
            n = next(counter)
            if n == 5 and not self.duplicate:
                return
            inner.send(message)
            if n == 7 and self.duplicate:
                inner.send(message)

        return Sender(send=send, finish=inner.finish)


class _DuplicatingPipe(_LossyPipe):
    duplicate = True


class _SilentChannel(transports._PipeChannel):
    """Its consumers wait for ever."""

    def receiver(self, consumer: int) -> Receiver:
        return Receiver(recv=lambda: time.sleep(3600), ends=1)


def _test_transport(key: str, label: str, make: Any) -> Transport:
    return Transport(key, label, make, "test double")


def test_lost_and_duplicated_messages_make_failed_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        transports,
        "TRANSPORTS",
        (
            _test_transport("mp-pipe", "lossy", _LossyPipe),
            _test_transport("mp-pipe", "duplicating", _DuplicatingPipe),
        ),
    )
    out = io.StringIO()
    assert main(["--quick", "--only", "64B,dict,2x2"], out=out) == 1
    report = out.getvalue()
    rows = _table_rows(report)
    for workload in ("64B", "dict", "2x2"):
        assert rows[(workload, "lossy")].startswith("FAILED"), report
        assert rows[(workload, "duplicating")].startswith("FAILED"), report
    assert "64B / lossy: FAILED: 1 lost" in report
    assert "64B / duplicating: FAILED: 1 duplicated" in report
    assert "2x2 / lossy: FAILED: 2 lost" in report  # one per producer


def test_a_hanging_transport_times_out_and_leaves_no_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        transports,
        "TRANSPORTS",
        (
            _test_transport("mp-pipe", "silent", _SilentChannel),
            _test_transport("mp-queue", "multiprocessing.Queue", transports._MpQueueChannel),
        ),
    )
    out = io.StringIO()
    started = time.monotonic()
    assert main(["--quick", "--only", "64B", "--timeout", "2"], out=out) == 1
    assert time.monotonic() - started < 30
    rows = _table_rows(out.getvalue())
    assert rows[("64B", "silent")].startswith("TIMEOUT")
    assert "msgs/s" in rows[("64B", "multiprocessing.Queue")]
    assert "TIMEOUT: no report from producer0, consumer0" in out.getvalue()  # pipe full
    assert multiprocessing.active_children() == []


# --- the shmipc adapter, against a stand-in for shmipc.Queue -----------------------------------


class FakeShmipcQueue:
    """The shmipc.Queue methods the benchmark uses, over a multiprocessing.SimpleQueue.

    SimpleQueue writes synchronously, like a shared-memory ring (a multiprocessing.Queue's
    feeder thread would let the parent's end mark overtake the last messages).
    """

    def __init__(self, maxsize: int = 0, capacity: int = 1 << 20) -> None:
        self.capacity = capacity
        self._q = multiprocessing.get_context("fork").SimpleQueue()
        self._reserved: bytearray | None = None

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        self._q.put(obj)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self._q.get()

    def put_bytes(self, data: bytes) -> None:
        self._q.put(bytes(data))

    def get_bytes(self) -> bytes:
        return self._q.get()

    def put_many(self, objs: list[Any]) -> None:
        for obj in objs:
            self._q.put(obj)

    def get_many(self, max_items: int, timeout: float | None = None) -> list[Any]:
        items = [self._q.get()]
        while len(items) < max_items and not self._q.empty():
            items.append(self._q.get())
        return items

    def reserve(self, n: int) -> memoryview:
        self._reserved = bytearray(n)
        return memoryview(self._reserved)

    def commit(self) -> None:
        assert self._reserved is not None
        self._q.put(bytes(self._reserved))
        self._reserved = None

    def peek(self) -> memoryview:
        return memoryview(self._q.get())

    def release(self) -> None:
        pass

    def close(self) -> None:
        self._q.close()


def test_shmipc_rows_with_a_stand_in_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[FakeShmipcQueue] = []

    class Recording(FakeShmipcQueue):
        def __init__(self, maxsize: int = 0, capacity: int = 1 << 20) -> None:
            super().__init__(maxsize, capacity)
            made.append(self)

    monkeypatch.setattr(transports, "load_shmipc_queue", lambda: Recording)
    out = io.StringIO()
    only = ",".join(w.name for w in STREAM)
    argv = ["--quick", "--only", only, "--transports", "shmipc,mp-queue"]
    assert main(argv, out=out) == 0, out.getvalue()
    rows = _table_rows(out.getvalue())
    expected = {(w.name, "shmipc") for w in STREAM} | {
        ("64B", "shmipc (batched)"),
        ("1MiB", "shmipc (zero-copy)"),
    }
    for key in expected:
        assert key in rows, out.getvalue()
        assert not rows[key].startswith(("FAILED", "TIMEOUT", "ERROR")), rows[key]
    assert {q.capacity for q in made} == {1 << 20, 8 << 20}


def test_zero_copy_row_is_skipped_without_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    plain_methods = ("__init__", "put", "get", "put_bytes", "get_bytes", "put_many", "get_many")
    plain = type("PlainQueue", (), {name: getattr(FakeShmipcQueue, name) for name in plain_methods})
    plain.close = FakeShmipcQueue.close
    monkeypatch.setattr(transports, "load_shmipc_queue", lambda: plain)
    out = io.StringIO()
    assert main(["--quick", "--only", "1MiB", "--transports", "shmipc"], out=out) == 0
    report = out.getvalue()
    assert "shmipc (zero-copy): shmipc.Queue has no reserve/commit/peek/release" in report
    assert set(_table_rows(report)) == {("1MiB", "shmipc")}


def test_an_unimportable_shmipc_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> type:
        raise ImportError("not built yet")

    monkeypatch.setattr(transports, "load_shmipc_queue", broken)
    out = io.StringIO()
    assert main(["--quick", "--only", "64B", "--transports", "shmipc,pipe"], out=out) == 0
    report = out.getvalue()
    assert "shmipc: cannot import shmipc.Queue: ImportError: not built yet" in report
    rows = _table_rows(report)
    assert ("64B", "multiprocessing.Pipe") in rows
    assert not any(label.startswith("shmipc") for _, label in rows)


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--transports", "carrier-pigeon"],
        ["--only", "64KiB"],
        ["--count", "0"],
        ["--repeat", "0"],
        ["--nope"],
    ],
)
def test_bad_arguments_return_2(argv: list[str]) -> None:
    assert main(argv, out=io.StringIO()) == 2


def test_channel_spec_capacities() -> None:
    assert ChannelSpec(message_size=64).capacity == 1 << 20
    assert ChannelSpec(message_size=1 << 20).capacity == 8 << 20
    assert ChannelSpec(message_size=1 << 20).capacity_messages == 8
