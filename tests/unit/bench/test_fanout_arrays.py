"""Tests of the fan-out and large-array workloads: every row that can run here runs at tiny
sizes and ends verified, the reports have their shape, stand-ins for shmipc's Topic and
BufferPool (until those land) exercise the shmipc adapters exactly as the contracts spell
them, and broken transports end as FAILED rows. Timing is never asserted.
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import multiprocessing
import os
import re
import secrets
from array import array
from typing import Any

import pytest

from shmipc.bench import arrays, fanout, main, transports, workloads
from shmipc.bench.verify import check_ordered, combine, make_seq
from shmipc.bench.workloads import Workload

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(120)

HAVE_ZMQ = importlib.util.find_spec("zmq") is not None
HAVE_IOX2 = importlib.util.find_spec("iceoryx2") is not None
_CTX = multiprocessing.get_context("fork")

#: Tiny stand-ins of the real workloads (same kinds, same code paths).
TINY_FANOUT = tuple(
    Workload(
        f"fanout-{message}-{n}",
        "tiny fan-out",
        "msgs/s",
        consumers=n,
        objects=message == "dict",
        size=48 if message == "dict" else 64,
        quick=300,
        kind="fanout",
        group="fanout",
    )
    for message in ("64B", "dict")
    for n in (1, 2, 4)
)
TINY_ARRAYS = tuple(
    Workload(
        f"arrays-{kib}KiB",
        "tiny arrays",
        "GB/s",
        size=kib << 10,
        quick=3,
        kind="arrays",
        group="arrays",
    )
    for kib in (64, 200)  # 200 KiB: not a whole number of pages
)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """--only fanout / arrays select the tiny workloads."""
    stream = tuple(w for w in workloads.WORKLOADS if w.kind == "stream")
    monkeypatch.setattr(workloads, "WORKLOADS", stream + TINY_FANOUT + TINY_ARRAYS)


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    status = main(argv, out=out)
    return status, out.getvalue()


def _rows(report: str, headings: str) -> dict[tuple[str, str], list[str]]:
    """{(workload, label): the row's other cells} of the table whose heading line starts with
    ``headings``; cells are split on runs of two or more spaces."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(headings))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            continue
        if not line.startswith(("fanout-", "arrays-")):
            break
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        rows[(cells[0], cells[1])] = cells[2:]
    return rows


def _fanout_peers() -> list[tuple[str, str]]:
    peers = []
    if HAVE_ZMQ:
        peers.append(("pyzmq", "pyzmq XPUB/SUB"))
    if HAVE_IOX2:
        peers.append(("iceoryx2", "iceoryx2 pub/sub"))
    return peers


# --- fan-out over the real peers --------------------------------------------------------------


@pytest.mark.skipif(not (HAVE_ZMQ or HAVE_IOX2), reason="neither pyzmq nor iceoryx2")
@pytest.mark.usefixtures("tiny")
def test_fanout_over_the_peers_is_verified_per_subscriber() -> None:
    peers = _fanout_peers()
    keys = ",".join(key for key, _ in peers)
    status, report = _run(["--quick", "--only", "fanout", "--transports", keys])
    assert status == 0, report
    rows = _rows(report, "workload  ")
    heading = next(line for line in report.splitlines() if line.startswith("workload"))
    for column in ("per subscriber", "aggregate", "CPU µs/delivery", "vs 1 subscriber"):
        assert column in heading
    for workload in TINY_FANOUT:
        for _, label in peers:
            cells = rows[(workload.name, label)]
            per, aggregate = cells[0], cells[1]
            assert per.endswith("msgs/s") and aggregate.endswith("msgs/s"), cells
            per_value = float(per.split()[0].replace(",", ""))
            total = float(aggregate.split()[0].replace(",", ""))
            assert total == pytest.approx(per_value * workload.consumers, rel=1e-3, abs=2)
            assert cells[-1] == "300"  # messages per subscriber
    if HAVE_ZMQ:
        assert rows[("fanout-64B-2", "pyzmq XPUB/SUB")][3] == "1.00x"  # vs pyzmq
    assert rows[("fanout-dict-1", peers[0][1])][-2] == "1.00x"  # vs 1 subscriber
    assert "problems:" not in report
    assert multiprocessing.active_children() == []


def test_stream_runs_do_not_mention_fanout_or_array_rows() -> None:
    status, report = _run(["--quick", "--only", "64B", "--transports", "pipe"])
    assert status == 0
    for absent in ("Topic", "memcpy", "pub/sub", "loans", "fan-out", "arrays"):
        assert absent not in report


# --- fan-out: a stand-in for shmipc.Topic, as CONTRACTS.md T1 spells it -------------------------


class FakeTopic:
    """Topic.create/attach, publisher(), subscribe() over one SimpleQueue per subscriber
    slot (a pipe: writes are synchronous, like a shared ring). ``drop``/``swap`` (subscriber,
    message index) make it lose or reorder a message for one subscriber."""

    made: dict[str, FakeTopic] = {}
    drop: tuple[int, int] | None = None
    swap: tuple[int, int] | None = None

    def __init__(self, slots: int, policy: str) -> None:
        self.name = f"fake-topic-{secrets.token_hex(4)}"
        self.policy = policy
        self.queues = [_CTX.SimpleQueue() for _ in range(slots)]
        self.joined = _CTX.Value("i", 0)
        self.closed = self.unlinked = False

    @classmethod
    def create(
        cls,
        name: str | None = None,
        *,
        capacity: int = 1 << 20,
        policy: str = "block",
        max_subscribers: int = 64,
        **options: Any,
    ) -> FakeTopic:
        topic = cls(max_subscribers, policy)
        cls.made[topic.name] = topic
        return topic

    @classmethod
    def attach(cls, name: str, **options: Any) -> FakeTopic:
        return cls.made[name]

    def publisher(self) -> FakePublisher:
        return FakePublisher(self)

    def subscribe(self) -> FakeSubscriber:
        with self.joined.get_lock():
            slot = self.joined.value
            self.joined.value += 1
        return FakeSubscriber(self.queues[slot])

    def close(self) -> None:
        self.closed = True

    def unlink(self) -> None:
        assert not self.closed, "unlink needs a live handle (as shmipc's Topic does)"
        self.unlinked = True


class FakePublisher:
    def __init__(self, topic: FakeTopic) -> None:
        self._topic = topic
        self._sent = itertools.count()
        self._held: dict[int, Any] = {}

    def publish(self, obj: Any, timeout: float | None = None) -> None:
        n = next(self._sent)
        for slot, q in enumerate(self._topic.queues[: self._topic.joined.value]):
            if FakeTopic.drop == (slot, n):
                continue
            if FakeTopic.swap == (slot, n):
                self._held[slot] = obj  # goes out after the next one
                continue
            q.put(obj)
            if slot in self._held:
                q.put(self._held.pop(slot))

    def publish_bytes(self, data: Any, timeout: float | None = None) -> None:
        self.publish(bytes(data), timeout)

    def close(self) -> None:
        pass


class FakeSubscriber:
    def __init__(self, q: Any) -> None:
        self._q = q

    def receive(self, timeout: float | None = None) -> Any:
        return self._q.get()

    def receive_bytes(self, timeout: float | None = None) -> bytes:
        return self._q.get()

    def close(self) -> None:
        pass


@pytest.fixture
def fake_topic(monkeypatch: pytest.MonkeyPatch) -> type[FakeTopic]:
    monkeypatch.setattr(fanout, "load_topic", lambda: FakeTopic)
    monkeypatch.setattr(FakeTopic, "made", {})
    return FakeTopic


@pytest.mark.usefixtures("tiny")
def test_topic_rows_with_a_stand_in_topic(fake_topic: type[FakeTopic]) -> None:
    status, report = _run(["--quick", "--only", "fanout", "--transports", "shmipc"])
    assert status == 0, report
    rows = _rows(report, "workload  ")
    for workload in TINY_FANOUT:
        cells = rows[(workload.name, "shmipc Topic")]
        assert cells[0].endswith("msgs/s"), cells
    topics = list(fake_topic.made.values())
    assert len(topics) == len(TINY_FANOUT)
    assert {t.policy for t in topics} == {"block"}
    assert all(t.closed and t.unlinked for t in topics)  # the parent cleans up after each row
    assert sorted(t.joined.value for t in topics) == sorted(w.consumers for w in TINY_FANOUT)


@pytest.mark.usefixtures("tiny")
@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("drop", "1 lost (received 299 of 300)"),
        ("swap", "1 out of order (received 300 of 300)"),
    ],
)
def test_a_subscriber_missing_or_reordering_a_message_fails_the_row(
    fake_topic: type[FakeTopic], monkeypatch: pytest.MonkeyPatch, fault: str, expected: str
) -> None:
    monkeypatch.setattr(fake_topic, fault, (1, 7))
    status, report = _run(
        ["--quick", "--only", "fanout-64B-2,fanout-dict-2", "--transports", "shmipc"]
    )
    assert status == 1
    rows = _rows(report, "workload  ")
    assert rows[("fanout-64B-2", "shmipc Topic")][0] == "FAILED"
    # The stand-in's slot 1 is whichever subscriber subscribed second.
    for name in ("fanout-64B-2", "fanout-dict-2"):
        assert re.search(
            f"{name} / shmipc Topic: FAILED: subscriber [01]: {re.escape(expected)}\n", report
        ), report


def test_topic_row_is_skipped_with_the_reason_until_it_imports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing() -> type:
        raise ImportError("No module named 'shmipc.topic'")

    monkeypatch.setattr(fanout, "load_topic", missing)
    status, report = _run(["--quick", "--only", "fanout-64B-1", "--transports", "shmipc"])
    assert status == 0
    assert "shmipc Topic: cannot import shmipc.topic.Topic: ImportError" in report


# --- arrays over the real peers ----------------------------------------------------------------


def _array_peers() -> list[tuple[str, str]]:
    peers = [
        ("mp-queue", "multiprocessing.Queue"),
        ("shared-memory", "shared_memory + handles"),
    ]
    if HAVE_ZMQ:
        peers.append(("pyzmq", "pyzmq copy=False"))
    if HAVE_IOX2:
        peers.append(("iceoryx2", "iceoryx2 loans"))
    return peers


def _array_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("shmipc-bench-")}


@pytest.mark.usefixtures("tiny")
def test_arrays_over_the_peers_are_verified_with_memcpy_beside_them() -> None:
    before = _array_segments()
    peers = _array_peers()
    keys = ",".join(key for key, _ in peers)  # memcpy runs whatever --transports says
    status, report = _run(["--count", "4", "--only", "arrays", "--transports", keys])
    assert status == 0, report
    rows = _rows(report, "workload  ")
    heading = next(line for line in report.splitlines() if line.startswith("workload"))
    for column in ("result", "per round trip", "vs best copying peer", "vs memcpy"):
        assert column in heading
    for workload in TINY_ARRAYS:
        memcpy = rows[(workload.name, "memcpy (numpy.copyto)")]
        assert memcpy[0].endswith("GB/s") and memcpy[-2] == "1.00x", memcpy
        copying = []
        for _, label in peers:
            cells = rows[(workload.name, label)]
            assert cells[0].endswith("GB/s"), cells
            assert cells[-1] == "4"
            if label != "iceoryx2 loans":
                copying.append(cells[3])
        assert "1.00x" in copying  # the best copying peer is compared with itself
    assert "problems:" not in report
    assert _array_segments() == before  # every segment per array was unlinked
    assert multiprocessing.active_children() == []


def test_array_rows_of_the_real_sizes_exist() -> None:
    names = [w.name for w in workloads.WORKLOADS if w.kind == "arrays"]
    assert names == ["arrays-1MiB", "arrays-32MiB", "arrays-256MiB"]
    big = workloads.workload_named("arrays-256MiB")
    assert big.size == 256 << 20 and big.quick == 1
    # The caps leave a loan's row (about 1 ms a 32 MiB round trip, 10 ms at 256 MiB) room for
    # a timed span of about 2 s; probe runs keep the slow rows to the duration asked for.
    mid = workloads.workload_named("arrays-32MiB")
    assert mid.max_count * 0.001 >= 2 and big.max_count * 0.01 >= 2
    fan = [w for w in workloads.WORKLOADS if w.kind == "fanout"]
    assert sorted((w.objects, w.consumers) for w in fan) == [
        (o, n) for o in (False, True) for n in (1, 2, 4)
    ]


# --- arrays: stand-ins for shmipc's BufferPool and pooled Queue (CONTRACTS.md B1) ----------------


class FakePool:
    made: list[FakePool] = []

    def __init__(self, size: int) -> None:
        self.size = size
        self.closed = self.unlinked = False

    @classmethod
    def create(
        cls, name: str | None = None, *, size: int, mode: int = 0o600, classes: Any = None
    ) -> FakePool:
        pool = cls(size)
        cls.made.append(pool)
        return pool

    def close(self) -> None:
        self.closed = True

    def unlink(self) -> None:
        self.unlinked = True


class FakePoolQueue:
    """put(array)/get() through a pipe; get() gives read-only arrays, as the pool's do."""

    loans = _CTX.Value("i", 0)

    def __init__(self, maxsize: int = 0, *, pool: FakePool | None = None, **kw: Any) -> None:
        assert isinstance(pool, FakePool)
        self._q = _CTX.SimpleQueue()

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        self._q.put(obj)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        obj = self._q.get()
        if obj is not None:
            obj.flags.writeable = False
        return obj

    def loan_array(self, shape: Any, dtype: Any, timeout: float | None = None) -> Any:
        with self.loans.get_lock():
            self.loans.value += 1
        return np.empty(shape, dtype)

    def close(self) -> None:
        self._q.close()


@pytest.mark.usefixtures("tiny")
def test_shmipc_array_rows_with_stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arrays, "load_buffer_pool", lambda: FakePool)
    monkeypatch.setattr(transports, "load_shmipc_queue", lambda: FakePoolQueue)
    monkeypatch.setattr(FakePool, "made", [])
    FakePoolQueue.loans.value = 0
    status, report = _run(["--count", "3", "--only", "arrays", "--transports", "shmipc"])
    assert status == 0, report
    rows = _rows(report, "workload  ")
    for workload in TINY_ARRAYS:
        for label in ("shmipc copied once", "shmipc loaned"):
            assert rows[(workload.name, label)][0].endswith("GB/s"), rows
    # Each loaned row loans every outgoing array: (3 + warm-up) round trips, 2 each.
    warm = [arrays.warmup_rounds(w.size) for w in TINY_ARRAYS]
    assert FakePoolQueue.loans.value == sum(2 * (3 + n) for n in warm)
    assert len(FakePool.made) == 2 * len(TINY_ARRAYS)
    assert all(p.closed and p.unlinked for p in FakePool.made)
    assert min(p.size for p in FakePool.made) >= 64 << 10


def test_shmipc_array_rows_are_skipped_until_the_pool_imports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing() -> type:
        raise ImportError("No module named 'shmipc.buffers'")

    monkeypatch.setattr(arrays, "load_buffer_pool", missing)
    status, report = _run(["--count", "2", "--only", "arrays-1MiB", "--transports", "shmipc"])
    assert status == 0
    assert "shmipc copied once: cannot import shmipc.buffers.BufferPool" in report
    assert "shmipc loaned: cannot import shmipc.buffers.BufferPool" in report
    assert "memcpy (numpy.copyto)" in report  # the reference still runs


class _CorruptingQueue(FakePoolQueue):
    """Side 1's replies come back with one page's stamp changed."""

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        if obj is not None and multiprocessing.current_process().name.endswith("pong"):
            obj = obj.copy()
            obj[arrays.PAGE_ITEMS * 3] += 1.0
        super().put(obj)


@pytest.mark.usefixtures("tiny")
def test_a_corrupted_array_fails_the_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arrays, "load_buffer_pool", lambda: FakePool)
    monkeypatch.setattr(transports, "load_shmipc_queue", lambda: _CorruptingQueue)
    status, report = _run(["--count", "3", "--only", "arrays-64KiB", "--transports", "shmipc"])
    assert status == 1
    assert "arrays-64KiB / shmipc copied once: FAILED:" in report
    assert "corrupt" in report


# --- the pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("items", [512, 8192, 25_600, 3])
def test_stamp_round_trip_and_what_it_catches(items: int) -> None:
    stamp = arrays.Stamp(items)
    out = np.ones(items)
    stamp.write(out, 41)
    assert stamp.read(out) == (41, True)
    assert stamp.read(out.copy()) == (41, True)
    stale = out.copy()
    stamp.write(stale, 40)
    assert stamp.read(stale) == (40, True)  # a stale array reads as its own number...
    if items > arrays.PAGE_ITEMS:
        torn = out.copy()
        torn[arrays.PAGE_ITEMS :: arrays.PAGE_ITEMS] = stale[arrays.PAGE_ITEMS :: arrays.PAGE_ITEMS]
        assert stamp.read(torn) == (-1, False)  # ...and a mix of two fails
    assert stamp.read(out[:-1]) == (-1, False)  # truncated
    assert stamp.read(out.astype(np.float32)) == (-1, False)
    last = out.copy()
    last[-1] = 7
    assert stamp.read(last)[1] is (items <= 1)


def test_check_ordered_counts_late_receipts_per_producer() -> None:
    seqs = array("Q", [make_seq(0, c) for c in (0, 1, 3, 2, 4)])
    verdict = check_ordered(seqs, 1, 5)
    assert (verdict.lost, verdict.duplicated, verdict.reordered) == (0, 0, 1)
    assert not verdict.ok and "1 out of order" in verdict.describe()
    interleaved = array("Q", [make_seq(p, c) for c in range(4) for p in (1, 0)])
    assert check_ordered(interleaved.tobytes(), 2, 4).ok  # producers interleave freely
    total = combine([check_ordered(seqs, 1, 5), check_ordered(interleaved, 2, 4)])
    assert (total.expected, total.received, total.reordered) == (13, 13, 1)


@pytest.mark.usefixtures("tiny")
def test_markdown_report_has_a_table_per_kind(
    fake_topic: type[FakeTopic], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arrays, "load_buffer_pool", lambda: FakePool)
    monkeypatch.setattr(transports, "load_shmipc_queue", lambda: FakePoolQueue)
    argv = ["--count", "50", "--only", "64B,fanout-dict-2,arrays-64KiB", "--markdown"]
    status, report = _run([*argv, "--transports", "pipe,shmipc"])
    assert status == 0, report
    lines = report.splitlines()
    headings = [line for line in lines if line.startswith("| workload |")]
    assert [h.split(" | ")[2] for h in headings] == ["result", "per subscriber", "result"]
    assert (
        "| per round trip | CPU ms/round trip | vs best copying peer | vs memcpy |" in headings[2]
    )
    body = [line for line in lines if line.startswith("| fanout-") or line.startswith("| arrays-")]
    assert len(body) == 1 + 3  # Topic; memcpy + shmipc copied once + loaned
    assert any("fanout-M-N = 1 publisher -> N subscriber processes" in line for line in lines)
    assert any(line.startswith("- arrays / shmipc loaned: q.loan_array") for line in lines)


# --- the real shmipc rows, once T1/B1 are merged (skipped until then) ----------------------------


@pytest.mark.usefixtures("tiny")
def test_topic_rows_over_the_real_topic_when_it_imports() -> None:
    reason = fanout._topic_unavailable()
    if reason is not None:
        pytest.skip(reason)
    status, report = _run(["--quick", "--only", "fanout", "--transports", "shmipc"])
    assert status == 0, report
    rows = _rows(report, "workload  ")
    for workload in TINY_FANOUT:
        assert rows[(workload.name, "shmipc Topic")][0].endswith("msgs/s"), report


@pytest.mark.usefixtures("tiny")
def test_pool_rows_over_the_real_pool_when_it_imports() -> None:
    shmipc_rows = [t for t in arrays.TRANSPORTS if t.key == "shmipc"]
    reasons = [t.unavailable() for t in shmipc_rows]
    if all(reasons):
        pytest.skip(str(reasons[0]))
    status, report = _run(["--count", "3", "--only", "arrays", "--transports", "shmipc"])
    assert status == 0, report
    rows = _rows(report, "workload  ")
    for workload in TINY_ARRAYS:
        for transport, reason in zip(shmipc_rows, reasons, strict=True):
            if reason is None:
                assert rows[(workload.name, transport.label)][0].endswith("GB/s"), report


def test_quick_leaves_the_big_arrays_out_unless_named() -> None:
    status, report = _run(["--quick", "--only", "arrays", "--transports", "memcpy"])
    assert status == 0, report
    rows = _rows(report, "workload  ")
    assert set(rows) == {("arrays-1MiB", "memcpy (numpy.copyto)")}
    assert "(arrays-32MiB, arrays-256MiB left out unless named)" in report
    status, report = _run(["--quick", "--only", "arrays-32MiB", "--transports", "memcpy"])
    assert status == 0, report
    assert set(_rows(report, "workload  ")) == {("arrays-32MiB", "memcpy (numpy.copyto)")}
