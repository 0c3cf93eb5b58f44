"""The quickstart job: a real producer/consumer pipeline across processes, with its numbers.

Producers (forked processes) put small dicts on one ``shmipc.Queue``; consumers (forked
processes) get them and check sequence numbers; the parent prints throughput, latency of a
ping-pong round trip, and the same pipeline through ``multiprocessing.Queue`` for scale.
Run it as ``shmipc demo`` or ``python -m shmipc.demo``.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import queue as _queue
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .queue import Queue
from .sync import AtomicCounter, Event, Semaphore

__all__ = ["DemoFailed", "main", "ping_pong", "run_demo", "run_pipeline"]

_CTX = mp.get_context("fork")
#: Consumers add to the shared progress counter once per this many messages.
_TICK = 256
#: How long the parent waits on anything before it checks its children again.
_POLL = 0.1
#: The default bound on one stage: whatever happens, a stage ends by then.
DEFAULT_TIMEOUT = 300.0

#: progress(stage, done, total): called by the parent while it waits.
Progress = Callable[[str, int, int], None]


class DemoFailed(RuntimeError):
    """A demo stage could not finish: a process of it died, or it ran out of time."""


def _producer(q: Any, pid: int, count: int, ready: Any, go: Any, batch: int) -> None:
    ready.release()
    if not go.wait(timeout=60):
        sys.exit(3)  # the parent gave up (or died) before the start
    if batch > 1:
        for base in range(0, count, batch):
            q.put_many(
                [
                    {"p": pid, "seq": i, "name": "item", "vals": [1.0, 2.0, 3.0]}
                    for i in range(base, min(base + batch, count))
                ]
            )
    else:
        for i in range(count):
            q.put({"p": pid, "seq": i, "name": "item", "vals": [1.0, 2.0, 3.0]})


def _consumer(q: Any, results: Any, ready: Any, go: Any, done: Any, batch: int) -> None:
    ready.release()
    if not go.wait(timeout=60):
        sys.exit(3)
    last: dict[int, int] = {}
    got = 0
    errors = 0
    while True:
        items = q.get_many(batch, timeout=30) if batch > 1 else [q.get(timeout=30)]
        stops = 0
        for msg in items:
            if msg is None:
                stops += 1
                continue
            p, seq = msg["p"], msg["seq"]
            if seq <= last.get(p, -1):
                errors += 1  # duplicate or out of order for this producer
            last[p] = seq
            got += 1
            if got % _TICK == 0:
                done.add(_TICK)
        if stops:
            for _ in range(stops - 1):
                q.put(None)  # a batch took another consumer's stop marker: hand it back
            break
    done.add(got % _TICK)
    results.put((got, errors, last, time.perf_counter()))


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class _Watch:
    """The parent's side of a stage: its children, a deadline, and the progress report.
    Every wait of the parent is a short one followed by ``check``, so a child that dies,
    whatever it held, ends the stage with DemoFailed instead of a hang."""

    def __init__(
        self, stage: str, procs: Sequence[tuple[str, Any]], timeout: float,
        progress: Progress | None, total: int, done: Any,
    ) -> None:  # fmt: skip
        self.stage = stage
        self.procs = procs
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.progress = progress
        self.total = total
        self.done = done

    def check(self) -> None:
        for role, proc in self.procs:
            code = proc.exitcode
            if code is not None and code != 0:
                raise DemoFailed(
                    f"{self.stage}: the {role} process {proc.pid} {_exit_reason(code)}; "
                    "the demo stopped the others and gives up"
                )
        if time.monotonic() > self.deadline:
            raise DemoFailed(f"{self.stage}: not finished after {self.timeout:g} s; gave up")
        if self.progress is not None and self.done is not None:
            self.progress(self.stage, min(self.done.load(), self.total), self.total)

    def until(self, attempt: Callable[[], bool]) -> None:
        """Call ``attempt`` (a wait of at most _POLL) until it succeeds, checking between."""
        while not attempt():
            self.check()


def _joined(proc: Any) -> bool:
    """Wait up to _POLL for ``proc`` to end; True once it ended well."""
    proc.join(_POLL)
    return proc.exitcode == 0


def _stop(procs: Sequence[tuple[str, Any]]) -> None:
    for _, proc in procs:
        if proc.exitcode is None:
            proc.kill()
    for _, proc in procs:
        proc.join(10)


def run_pipeline(
    queue_factory: Any,
    producers: int,
    consumers: int,
    count: int,
    batch: int = 1,
    *,
    stage: str = "pipeline",
    progress: Progress | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, float]:
    """Run producers -> one queue -> consumers; returns messages/s and a correctness check.
    DemoFailed (the others killed) if a process dies or ``timeout`` seconds pass."""
    q = queue_factory()
    results: Any = _CTX.Queue()
    ready, go, done = Semaphore(0), Event(), AtomicCounter(0)
    procs = [
        ("producer", _CTX.Process(target=_producer, args=(q, i, count, ready, go, batch)))
        for i in range(producers)
    ] + [
        ("consumer", _CTX.Process(target=_consumer, args=(q, results, ready, go, done, batch)))
        for _ in range(consumers)
    ]
    expected = producers * count
    watch = _Watch(stage, procs, timeout, progress, expected, done)
    try:
        for _, p in procs:
            p.start()
        for _ in procs:
            watch.until(lambda: ready.acquire(timeout=_POLL))
        t0 = time.perf_counter()
        go.set()
        for _, p in procs[:producers]:
            watch.until(functools.partial(_joined, p))

        def put_stop() -> bool:
            try:
                q.put(None, timeout=_POLL)  # one stop marker per consumer, after the producers
            except _queue.Full:
                return False
            return True

        for _ in range(consumers):
            watch.until(put_stop)
        outcomes = []

        def collect() -> bool:
            try:
                outcomes.append(results.get(timeout=_POLL))
            except _queue.Empty:
                if all(p.exitcode is not None for _, p in procs[producers:]) and results.empty():
                    time.sleep(_POLL)  # a result put just before exiting is on its way
                    if results.empty():
                        raise DemoFailed(
                            f"{stage}: a consumer ended without reporting its result"
                        ) from None
                return False
            return True

        for _ in range(consumers):
            watch.until(collect)
        for _, p in procs[producers:]:
            watch.until(functools.partial(_joined, p))
        watch.check()
    finally:
        _stop(procs)
        if hasattr(q, "close"):
            q.close()
        results.close()
    elapsed = max(o[3] for o in outcomes) - t0
    received = sum(o[0] for o in outcomes)
    errors = sum(o[1] for o in outcomes)
    return {
        "messages": received,
        "expected": expected,
        "order_errors": errors,
        "seconds": elapsed,
        "rate": received / elapsed,
        "ok": float(received == expected and errors == 0),
    }


def _pong(q_in: Any, q_out: Any, n: int) -> None:
    for _ in range(n):
        q_out.put_bytes(q_in.get_bytes(timeout=60))


def ping_pong(
    rounds: int = 20000, *, progress: Progress | None = None, timeout: float = DEFAULT_TIMEOUT
) -> tuple[float, float]:
    """Median and p99 round trip in µs between two processes over two shmipc queues.
    DemoFailed if the other process dies or ``timeout`` seconds pass."""
    a, b = Queue(), Queue()
    child = _CTX.Process(target=_pong, args=(a, b, rounds))
    procs = [("ping-pong partner", child)]
    watch = _Watch("ping-pong", procs, timeout, progress, rounds, None)
    samples = []
    msg = b"x" * 64
    try:
        child.start()
        for i in range(rounds):
            t = time.perf_counter_ns()
            a.put_bytes(msg)
            while True:
                try:
                    b.get_bytes(timeout=_POLL)
                    break
                except _queue.Empty:
                    watch.check()
            samples.append(time.perf_counter_ns() - t)
            if progress is not None and i % 1024 == 0:
                progress("ping-pong", i, rounds)
        watch.until(lambda: _joined(child))
    finally:
        _stop(procs)
        a.close()
        b.close()
    samples = samples[rounds // 10 :]  # drop warm-up
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def run_demo(
    producers: int = 2,
    consumers: int = 2,
    count: int = 200_000,
    *,
    baseline: bool = True,
    progress: Progress | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    echo: Callable[[str], None] = print,
) -> bool:
    """The whole demo, its lines given to ``echo``; True if every message arrived exactly
    once. DemoFailed when a stage cannot finish (a process died, time ran out)."""
    echo(
        f"shmipc demo: {producers} producers -> 1 queue -> {consumers} consumers, "
        f"{count:,} small dicts each, on {os.cpu_count()} CPUs"
    )
    shm = run_pipeline(
        lambda: Queue(capacity=1 << 22), producers, consumers, count,
        stage="shmipc.Queue put/get", progress=progress, timeout=timeout,
    )  # fmt: skip
    echo(
        f"  shmipc.Queue put/get        {shm['rate']:>12,.0f} msgs/s   "
        f"{shm['messages']:,}/{shm['expected']:,} delivered exactly once: "
        f"{'yes' if shm['ok'] else 'NO'}"
    )
    batched = run_pipeline(
        lambda: Queue(capacity=1 << 22), producers, consumers, count, batch=256,
        stage="shmipc.Queue put_many/get_many", progress=progress, timeout=timeout,
    )  # fmt: skip
    echo(
        f"  shmipc.Queue put_many/get_many {batched['rate']:>9,.0f} msgs/s   "
        f"exactly once: {'yes' if batched['ok'] else 'NO'}"
    )
    ok = bool(shm["ok"] and batched["ok"])
    if baseline:
        n = max(1, count // 4)
        base = run_pipeline(
            _CTX.Queue, producers, consumers, n,
            stage="multiprocessing.Queue", progress=progress, timeout=timeout,
        )  # fmt: skip
        echo(
            f"  multiprocessing.Queue        {base['rate']:>12,.0f} msgs/s   "
            f"(shmipc is {shm['rate'] / base['rate']:.1f}x)"
        )
    med, p99 = ping_pong(min(20000, max(1000, count // 10)), progress=progress, timeout=timeout)
    echo(f"  ping-pong round trip         median {med:.1f} µs, p99 {p99:.1f} µs")
    echo("  full side-by-side benchmark: shmipc bench (python -m shmipc.bench)")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shmipc demo", description=__doc__.splitlines()[0])
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--count", type=int, default=200_000, help="messages per producer")
    parser.add_argument("--no-baseline", action="store_true", help="skip multiprocessing.Queue")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds a stage may take"
    )
    args = parser.parse_args(argv)
    try:
        ok = run_demo(
            args.producers, args.consumers, args.count,
            baseline=not args.no_baseline, timeout=args.timeout,
        )  # fmt: skip
    except DemoFailed as exc:
        print(f"shmipc demo failed: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
