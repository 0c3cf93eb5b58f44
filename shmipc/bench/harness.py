"""Running one row: fork the producers and consumers, time them, check them, never hang.

Every producer and consumer is its own forked process. Each opens its end of the channel, then
all meet at a barrier; the measured span runs from the barrier's release (the earliest
producer's clock reading after it) to the latest consumer's receipt of its end-of-stream mark,
which follows the stream's last message. Each child also reports the CPU time it used in that
span (``time.process_time``: all its threads, e.g. a feeder or I/O thread; what a pyzmq I/O
thread still does after its producer's span ended is not counted), and its consumers'
sequence numbers, which the parent checks with :func:`~.verify.check` after the clock stopped.

A row has a deadline. When it passes, or a child fails or dies, the parent kills every child
of the row (SIGKILL) and reports TIMEOUT or ERROR, so one broken transport cannot stop the run.
:func:`size_row` sizes a row: unless a count is given, it runs probes and scales the final
run to the requested duration; :func:`median_run` picks a row's median run of its repeats.
Fan-out rows are judged per subscriber (fanout.py); arrays rows bring their own roles and
judgement (arrays.py).
"""

from __future__ import annotations

import math
import multiprocessing
import time
import traceback
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from .transports import Channel, ChannelSpec, Receiver, Sender, Transport
from .verify import Verdict, check
from .workloads import Workload, consume, ping, pong, produce, warmup_rounds

__all__ = ["OK", "Outcome", "latency_stats", "median_run", "run_row", "size_row"]

_CTX = multiprocessing.get_context("fork")

OK, FAILED, TIMEOUT, ERROR = "ok", "FAILED", "TIMEOUT", "ERROR"
#: Probe runs stop once one takes this long; the next aims at PROBE_AIM.
PROBE_ENOUGH, PROBE_AIM = 0.2, 0.3
#: How long finished children get to exit before they are killed.
EXIT_GRACE = 5.0


@dataclass
class Outcome:
    """The result of one run of one row."""

    status: str  #: OK, FAILED (verification), TIMEOUT or ERROR
    count: int  #: messages (round trips for ping-pong) measured
    elapsed: float = 0.0  #: seconds of the measured span
    cpu: float = 0.0  #: CPU seconds all the row's children used in the span
    cpu_units: int = 0  #: what ``cpu`` is divided by (includes ping-pong warm-up rounds)
    verdict: Verdict | None = None
    latencies_ns: array | None = None  #: ping-pong round trips
    detail: str = ""  #: why it is not OK, or a remark
    samples: list[float] = field(default_factory=list)  #: every repeat's figure, sorted
    volume: float = 0.0  #: payload bytes moved in the timed span (arrays rows)

    @property
    def ok(self) -> bool:
        """True when the run finished and every message arrived exactly once."""
        return self.status == OK

    @property
    def figure(self) -> float:
        """The headline number: messages per second, or median round trip in µs."""
        if self.latencies_ns is not None:
            return latency_stats(self.latencies_ns)[0]
        return self.count / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def seconds_per_unit(self) -> float:
        """Elapsed seconds per message or round trip (warm-up included), for sizing."""
        return self.elapsed / max(self.cpu_units, 1)


def latency_stats(latencies_ns: Sequence[int]) -> tuple[float, float]:
    """(median, 99th percentile) in microseconds; nearest-rank percentile."""
    ordered = sorted(latencies_ns)
    if not ordered:
        return math.nan, math.nan
    n = len(ordered)
    middle = n // 2
    median = ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    p99 = ordered[max(math.ceil(0.99 * n) - 1, 0)]
    return median / 1e3, p99 / 1e3


class _RowSync:
    """What a row's children share: the start barrier, the row-over event, the timeout."""

    def __init__(self, parties: int, timeout: float) -> None:
        self.barrier = _CTX.Barrier(parties)
        self.done = _CTX.Event()  #: set by the parent once every child has reported
        self.timeout = timeout
        self._t0 = self._c0 = 0.0

    def start(self) -> None:
        """Wait for the others, then start this child's measured span."""
        self.barrier.wait(self.timeout)
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()

    def stop(self, **extra: Any) -> dict[str, Any]:
        """End the span: this child's report (times, CPU seconds, ``extra``)."""
        cpu = time.process_time() - self._c0
        return {"t0": self._t0, "t1": time.perf_counter(), "cpu": cpu, **extra}


_Report = tuple[dict[str, Any], list[Sender | Receiver]]


# --- the children's roles (run after fork) -------------------------------------------------
# Each returns its report and its open ends, which stay alive (a pyzmq socket that is garbage
# collected drops what it has not sent yet) until the whole row is over and they are closed.


def _producer(sync: _RowSync, channel: Channel, workload: Workload, index: int, n: int) -> _Report:
    sender = channel.sender(index)
    sync.start()
    produce(workload, sender, index, n)
    sender.finish()
    return sync.stop(), [sender]


def _consumer(sync: _RowSync, channel: Channel, workload: Workload, index: int) -> _Report:
    receiver = channel.receiver(index)
    sync.start()
    result = consume(workload, receiver)
    return sync.stop(seqs=result.seqs.tobytes(), corrupt=result.corrupt), [receiver]


def _pinger(sync: _RowSync, out: Channel, back: Channel, rounds: int, warmup: int) -> _Report:
    sender, receiver = out.sender(0), back.receiver(0)
    sync.start()
    result = ping(sender, receiver, rounds, warmup)
    sender.finish()
    report = sync.stop(
        latencies=result.latencies_ns.tobytes(),
        seqs=result.seqs.tobytes(),
        corrupt=result.corrupt,
    )
    return report, [sender, receiver]


def _ponger(sync: _RowSync, inp: Channel, back: Channel) -> _Report:
    receiver, sender = inp.receiver(0), back.sender(0)
    sync.start()
    echoed = pong(receiver, sender)
    return sync.stop(echoed=echoed), [sender, receiver]


def _child_main(
    conn: Connection, sync: _RowSync, role: Callable[..., _Report], args: tuple[Any, ...]
) -> None:
    """Run a role and send ("ok", report) or ("error", traceback) to the parent.

    Ends are closed only once every child has reported. A pyzmq producer that closed its
    PUSH socket and terminated its context (LINGER -1) right after sending lost the tail of
    its stream about 9 times in 10 here when the consumer was behind (libzmq issues #1922 and
    #4660: closing with messages queued behind the peer's high-water mark drops them).
    """
    ends: list[Sender | Receiver] = []
    try:
        report, ends = role(sync, *args)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    else:
        conn.send(("ok", report))
    finally:
        conn.close()
    if ends and sync.done.wait(sync.timeout):
        for end in ends:
            end.close()


@dataclass
class _Role:
    name: str
    target: Callable[..., _Report]
    args: tuple[Any, ...]
    producer: bool  #: its channel's streams end once every producer has reported


# --- the parent ----------------------------------------------------------------------------


def run_row(transport: Transport, workload: Workload, count: int, timeout: float) -> Outcome:
    """Run ``count`` messages (round trips) of ``workload`` over ``transport`` once."""
    deadline = time.monotonic() + timeout
    spec = ChannelSpec(
        producers=workload.producers,
        consumers=workload.consumers,
        objects=workload.objects,
        message_size=workload.size,
    )
    channels: list[Channel] = []
    procs: list[Any] = []
    broken = True
    try:
        try:
            for _ in range(2 if workload.pingpong else 1):
                channels.append(transport.make(spec))
        except Exception as exc:
            return Outcome(ERROR, count, detail=f"making the channel: {_one_line(exc)}")
        roles, units = _roles(workload, channels, count)
        sync = _RowSync(len(roles), timeout)
        conns = []
        for role in roles:
            reader, writer = _CTX.Pipe(duplex=False)
            proc = _CTX.Process(
                target=_child_main,
                args=(writer, sync, role.target, role.args),
                name=f"bench-{workload.name}-{role.name}",
                daemon=True,
            )
            proc.start()
            writer.close()
            procs.append(proc)
            conns.append(reader)
        reports, failure = _collect(roles, procs, conns, channels[0], deadline)
        sync.done.set()
        if failure is not None:
            failure.count = count
            return failure
        broken = False
        if workload.kind == "arrays":
            outcome = _judge_arrays(channels[0], reports, count, units)
        else:
            outcome = _judge(workload, roles, reports, count, units)
        outcome.detail = _reap(procs) or outcome.detail
        return outcome
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
        for channel in channels:
            channel.close(broken=broken)


def _roles(workload: Workload, channels: list[Channel], count: int) -> tuple[list[_Role], int]:
    """The row's children, and how many units (messages, round trips) they will move."""
    if workload.kind == "arrays":
        from . import arrays

        listed, units = arrays.roles(channels[0], count)  # type: ignore[arg-type]
        return [_Role(*role) for role in listed], units
    if workload.pingpong:
        warmup = warmup_rounds(count)
        out, back = channels
        return [
            _Role("ping", _pinger, (out, back, count, warmup), producer=True),
            _Role("pong", _ponger, (out, back), producer=False),
        ], count + warmup
    per = workload.per_producer(count)
    channel = channels[0]
    roles = [
        _Role(f"producer{p}", _producer, (channel, workload, p, per), producer=True)
        for p in range(workload.producers)
    ]
    roles += [
        _Role(f"consumer{c}", _consumer, (channel, workload, c), producer=False)
        for c in range(workload.consumers)
    ]
    return roles, per * workload.producers


def _collect(
    roles: Sequence[_Role],
    procs: Sequence[Any],
    conns: Sequence[Connection],
    channel: Channel,
    deadline: float,
) -> tuple[list[dict[str, Any]], Outcome | None]:
    """Every child's report, or an Outcome saying why not. Ends the streams when it is time."""
    reports: list[dict[str, Any]] = [{} for _ in roles]
    pending = dict(zip(conns, range(len(roles)), strict=True))
    producers_left = sum(role.producer for role in roles)
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            late = ", ".join(roles[i].name for i in sorted(pending.values()))
            return reports, Outcome(TIMEOUT, 0, detail=f"no report from {late}")
        for conn in wait(list(pending), timeout=remaining):
            i = pending.pop(conn)
            try:
                status, report = conn.recv()
            except EOFError:
                procs[i].join(1.0)
                return reports, Outcome(
                    ERROR, 0, detail=f"{roles[i].name} died (exit code {procs[i].exitcode})"
                )
            if status != "ok":
                return reports, Outcome(ERROR, 0, detail=f"{roles[i].name}: {_last_line(report)}")
            reports[i] = report
            if roles[i].producer:
                producers_left -= 1
                if not producers_left:
                    try:
                        channel.end_streams(max(deadline - time.monotonic(), 0.001))
                    except Exception as exc:
                        return reports, Outcome(
                            ERROR, 0, detail=f"ending the streams: {_one_line(exc)}"
                        )
    return reports, None


def _judge(
    workload: Workload,
    roles: Sequence[_Role],
    reports: Sequence[dict[str, Any]],
    count: int,
    units: int,
) -> Outcome:
    """Turn the children's reports into an Outcome, verification included."""
    cpu = sum(report["cpu"] for report in reports)
    corrupt = sum(report.get("corrupt", 0) for report in reports)
    if workload.pingpong:
        pinger = reports[0]
        verdict = check([pinger["seqs"]], 1, units, corrupt=corrupt)
        latencies = array("q")
        latencies.frombytes(pinger["latencies"])
        elapsed = pinger["t1"] - pinger["t0"]
    else:
        consumers = [r for role, r in zip(roles, reports, strict=True) if not role.producer]
        producers = [r for role, r in zip(roles, reports, strict=True) if role.producer]
        latencies = None
        elapsed = max(r["t1"] for r in consumers) - min(r["t0"] for r in producers)
        count = units
        if workload.kind == "fanout":
            # Every subscriber must see every message, in order: judged one by one.
            from . import fanout

            verdict, failed = fanout.judge(consumers, units)
            return Outcome(
                OK if verdict.ok else FAILED,
                count,
                elapsed=elapsed,
                cpu=cpu,
                cpu_units=units * workload.consumers,  # CPU per delivery
                verdict=verdict,
                detail=failed,
            )
        verdict = check(
            [r["seqs"] for r in consumers],
            workload.producers,
            units // workload.producers,
            corrupt=corrupt,
        )
    return Outcome(
        OK if verdict.ok else FAILED,
        count,
        elapsed=elapsed,
        cpu=cpu,
        cpu_units=units,
        verdict=verdict,
        latencies_ns=latencies,
        detail="" if verdict.ok else verdict.describe(),
    )


def _judge_arrays(
    channel: Channel, reports: Sequence[dict[str, Any]], count: int, units: int
) -> Outcome:
    """The Outcome of an arrays row (see arrays.py): round trips (memcpy: copies) per second,
    with the bytes they moved."""
    from . import arrays

    verdict, elapsed, volume = arrays.judge(channel, reports, count, units)  # type: ignore[arg-type]
    return Outcome(
        OK if verdict.ok else FAILED,
        count,
        elapsed=elapsed,
        cpu=sum(report["cpu"] for report in reports),  # timed rounds only
        cpu_units=count,
        verdict=verdict,
        detail="" if verdict.ok else verdict.describe(),
        volume=volume,
    )


def _reap(procs: Sequence[Any]) -> str:
    """Let finished children exit; kill the ones that will not. A remark, or ""."""
    deadline = time.monotonic() + EXIT_GRACE
    stuck = []
    for proc in procs:
        proc.join(max(deadline - time.monotonic(), 0.0))
        if proc.is_alive():
            proc.kill()
            stuck.append(proc.name)
    return f"killed after reporting: {', '.join(stuck)}" if stuck else ""


def _last_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


# --- sizing ------------------------------------------------------------------------------------


def size_row(
    transport: Transport,
    workload: Workload,
    *,
    duration: float,
    timeout: float,
    count: int | None = None,
    quick: bool = False,
) -> int | Outcome:
    """How many messages (round trips) a run of this row takes: ``count``, the quick count,
    or a count that probe runs scaled to ``duration``; or the outcome of a probe that failed."""
    if count is not None:
        return count
    return workload.quick if quick else _calibrate(transport, workload, duration, timeout)


def median_run(runs: list[Outcome]) -> Outcome:
    """The run with the median figure, carrying every run's figure in ``samples``."""
    runs = sorted(runs, key=lambda run: run.figure)
    chosen = runs[(len(runs) - 1) // 2]
    chosen.samples = [run.figure for run in runs]
    return chosen


def _calibrate(
    transport: Transport, workload: Workload, duration: float, timeout: float
) -> int | Outcome:
    """The count that should take ``duration`` seconds, from probe runs (which also warm up);
    or the outcome of a probe that failed."""
    n = workload.probe
    for attempt in range(3):
        outcome = run_row(transport, workload, n, timeout)
        if not outcome.ok:
            return outcome
        per_unit = max(outcome.seconds_per_unit, 1e-9)
        if outcome.elapsed >= PROBE_ENOUGH or n >= workload.max_count or attempt == 2:
            break
        n = min(workload.max_count, max(2 * n, int(PROBE_AIM / per_unit)))
    units_per_count = outcome.cpu_units / max(outcome.count, 1)  # ping-pong warm-up
    final = int(duration / per_unit / units_per_count)
    return max(workload.quick, min(workload.max_count, final))
