"""asyncio consumers: shmipc (``await q.get_bytes_async()``) beside pyzmq.asyncio (PUSH/PULL
over ipc://), in one run. ``python -m shmipc.bench --asyncio`` or
``python -m shmipc.bench.aiobench [--quick]``.

Two measurements per transport, each with the producer in its own (forked) process and the
consumer an asyncio coroutine in this one, every message checked for its sequence number:

* throughput: the producer sends N 64-byte messages as fast as it can; messages per second
  from the first message received to the last;
* wake-up latency: the producer sends one message every ``GAP`` seconds, stamped with
  CLOCK_MONOTONIC, so that the consumer is asleep (awaiting) each time; the latency is the
  time from the send to the coroutine holding the message (p50, p99).

Targets (issue 12): shmipc >= 3x pyzmq.asyncio throughput, p50 wake-up <= 0.5x its.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

#: Bytes per message: sequence number, send time, fill.
SIZE = 64
#: Rounds (each transport once per round, alternating) of a full run.
ROUNDS = 3
#: The gap between two messages of the latency run (the consumer falls asleep in it).
GAP = 0.002
_HEAD = struct.Struct("<qq")
_FILL = b"\xa5" * (SIZE - _HEAD.size)

Progress = Callable[[int, int, str], None]


def _message(i: int) -> bytes:
    return _HEAD.pack(i, time.monotonic_ns()) + _FILL


@dataclasses.dataclass
class Row:
    transport: str
    throughput: float | None  # messages per second
    p50_us: float | None
    p99_us: float | None
    note: str = ""


@dataclasses.dataclass
class AioReport:
    rows: list[Row]
    count: int
    samples: int
    loop: str
    rounds: int = 1
    backend: str = ""  # how shmipc's coroutines were woken (shmipc.aio.backend())

    def ratios(self) -> dict[str, float]:
        by = {r.transport: r for r in self.rows}
        s, z = by.get("shmipc"), by.get("pyzmq.asyncio")
        out: dict[str, float] = {}
        if s and z and s.throughput and z.throughput:
            out["throughput"] = s.throughput / z.throughput
        if s and z and s.p50_us and z.p50_us:
            out["p50"] = s.p50_us / z.p50_us
        return out

    def to_markdown(self) -> str:
        lines = [
            f"asyncio consumer ({self.loop} loop), producer in another process, "
            f"{SIZE}-byte messages; throughput: median of {self.rounds} rounds over "
            f"{self.count:,} messages in all; wake-up latency over {self.samples:,} messages "
            f"{GAP * 1000:g} ms apart (rounds alternate the transports); shmipc wake-ups: "
            f"{_BACKENDS.get(self.backend, self.backend)}",
            "",
            "| transport | throughput (msg/s) | wake-up p50 (µs) | wake-up p99 (µs) | note |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.transport} | {_fmt(r.throughput, ',.0f')} | {_fmt(r.p50_us, '.1f')} "
                f"| {_fmt(r.p99_us, '.1f')} | {r.note} |"
            )
        ratios = self.ratios()
        if ratios:
            lines.append("")
            lines.append(
                "shmipc / pyzmq.asyncio: throughput "
                f"{ratios.get('throughput', float('nan')):.1f}x (target >= 3x), p50 wake-up "
                f"{ratios.get('p50', float('nan')):.2f}x (target <= 0.5x)"
            )
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "samples": self.samples,
            "size": SIZE,
            "gap_s": GAP,
            "loop": self.loop,
            "rounds": self.rounds,
            "backend": self.backend,
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "ratios": self.ratios(),
        }

    def render(self, console: Any) -> None:
        console.print(self.to_markdown())


_BACKENDS = {
    "uring": "the loop thread waits (io_uring FUTEX_WAIT)",
    "thread": "a helper thread per loop (futex_waitv)",
    "poll": "a helper thread per loop, polling",
}


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _pct(sorted_vals: list[float], p: float) -> float:
    return sorted_vals[min(len(sorted_vals) - 1, int(p * len(sorted_vals)))]


def _fork(body: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def _reap(pid: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"the producer process failed ({status})")
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise RuntimeError("the producer process did not finish")


def _producer_body(send: Callable[[bytes], None], n: int, gap: float) -> None:
    for i in range(n):
        send(_message(i))
        if gap:
            time.sleep(gap)


def _check(i: int, msg: bytes) -> int:
    seq, sent = _HEAD.unpack_from(msg)
    if seq != i or len(msg) != SIZE:
        raise RuntimeError(f"message {i} arrived as {seq} ({len(msg)} bytes)")
    return int(sent)


async def _consume(recv: Callable[[], Any], n: int, latency: bool) -> tuple[float, list[float]]:
    lat: list[float] = []
    msg = await recv()
    t0 = time.perf_counter()
    sent = _check(0, msg)
    if latency:
        lat.append((time.monotonic_ns() - sent) / 1e3)
    for i in range(1, n):
        msg = await recv()
        sent = _check(i, msg)
        if latency:
            lat.append((time.monotonic_ns() - sent) / 1e3)
    return time.perf_counter() - t0, lat


def _loop_factory(use_uvloop: bool) -> Any:
    if use_uvloop:
        import uvloop

        return uvloop.new_event_loop
    return None


def _run_shmipc(n: int, gap: float, factory: Any) -> tuple[float, list[float]]:
    from shmipc import Queue

    q = Queue.create(capacity=1 << 20)
    try:
        r, w = os.pipe()

        def producer() -> None:
            os.close(w)
            os.read(r, 1)  # go
            _producer_body(q.put_bytes, n, gap)

        pid = _fork(producer)
        os.close(r)

        async def main() -> tuple[float, list[float]]:
            os.write(w, b"g")
            # No per-message timeout, as zmq's recv(): one bound on the whole run instead.
            return await asyncio.wait_for(_consume(q.get_bytes_async, n, gap > 0), 120)

        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                elapsed, lat = runner.run(main())
        finally:
            os.close(w)
            _reap(pid)
        return elapsed, lat
    finally:
        q.close()


def _run_zmq(n: int, gap: float, factory: Any) -> tuple[float, list[float]]:
    import zmq
    import zmq.asyncio

    path = os.path.join(tempfile.mkdtemp(prefix="shmipc-aiobench-"), "s")
    addr = f"ipc://{path}"
    r, w = os.pipe()

    def producer() -> None:
        os.close(w)
        ctx = zmq.Context()
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, 0)
        s.connect(addr)
        os.read(r, 1)  # go
        _producer_body(s.send, n, gap)
        s.close(linger=-1)
        ctx.term()

    pid = _fork(producer)
    os.close(r)
    try:

        async def main() -> tuple[float, list[float]]:
            ctx = zmq.asyncio.Context()
            s = ctx.socket(zmq.PULL)
            s.setsockopt(zmq.RCVHWM, 0)
            s.bind(addr)
            try:
                await asyncio.sleep(0.2)  # let the producer connect
                os.write(w, b"g")
                return await asyncio.wait_for(_consume(s.recv, n, gap > 0), 120)
            finally:
                s.close(linger=0)
                ctx.term()

        with asyncio.Runner(loop_factory=factory) as runner:
            elapsed, lat = runner.run(main())
    finally:
        os.close(w)
        _reap(pid)
        try:
            os.unlink(path)
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass
    return elapsed, lat


def run(
    quick: bool = False, progress: Progress | None = None, *, use_uvloop: bool = False
) -> AioReport:
    """Both transports, both measurements; a report with to_markdown/to_json/render."""
    count = 20_000 if quick else 300_000
    samples = 100 if quick else 1000
    factory = _loop_factory(use_uvloop)
    runners: list[tuple[str, Callable[[int, float, Any], tuple[float, list[float]]]]] = [
        ("shmipc", _run_shmipc)
    ]
    try:
        import zmq.asyncio  # noqa: F401
    except ImportError:
        zmq_note = "pyzmq is not installed"
    else:
        zmq_note = ""
        runners.append(("pyzmq.asyncio", _run_zmq))
    # Rounds alternate the transports, so that load from elsewhere on the machine (which
    # comes and goes) weighs on both alike: throughput is the median round, latencies are
    # pooled over the rounds.
    rounds = 1 if quick else ROUNDS
    thr: dict[str, list[float]] = {name: [] for name, _ in runners}
    lats: dict[str, list[float]] = {name: [] for name, _ in runners}
    total = 2 * len(runners) * rounds
    step = 0
    for _ in range(rounds):
        for name, fn in runners:
            if progress:
                progress(step, total, f"{name} throughput")
            elapsed, _lat = fn(count // rounds, 0.0, factory)
            thr[name].append(count // rounds / elapsed)
            step += 1
            if progress:
                progress(step, total, f"{name} wake-up latency")
            _, lat = fn(samples // rounds, GAP, factory)
            lats[name].extend(lat)
            step += 1
    rows = []
    for name, _ in runners:
        lat = sorted(lats[name])
        rows.append(Row(name, statistics.median(thr[name]), _pct(lat, 0.50), _pct(lat, 0.99)))
    if zmq_note:
        rows.append(Row("pyzmq.asyncio", None, None, None, zmq_note))
    if progress:
        progress(total, total, "done")
    from shmipc import aio

    return AioReport(
        rows, count, samples, "uvloop" if use_uvloop else "asyncio", rounds, aio.backend()
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m shmipc.bench --asyncio", description=__doc__)
    p.add_argument("--asyncio", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    p.add_argument("--uvloop", action="store_true", help="run the consumers on uvloop")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = p.parse_args(argv)
    report = run(args.quick, use_uvloop=args.uvloop)
    sys.stdout.write(report.to_markdown())
    if args.json:
        import json

        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
