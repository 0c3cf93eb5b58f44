"""The command line: choose workloads and transports, run the rows, print the report.

``main(argv)`` is what ``python -m shmipc.bench`` runs and what a wrapping CLI calls. It
returns 0 when every row that ran was verified, 1 when any row FAILED, timed out or broke,
and 2 for a bad command line. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from . import arrays as _arrays
from . import fanout as _fanout
from . import transports as _transports
from .harness import Outcome, median_run, run_row, size_row
from .machine import describe
from .report import BASELINE, Row, render, to_json
from .transports import Transport
from .workloads import WORKLOADS, Workload, workloads_named

__all__ = ["main"]

_ALIASES = {
    "mp-queue": ("mpqueue", "mp.queue", "queue", "multiprocessing.queue"),
    "mp-pipe": ("mppipe", "mp.pipe", "pipe", "multiprocessing.pipe"),
    "faster-fifo": ("faster_fifo", "fasterfifo"),
    "pyzmq": ("zmq",),
    "shmipc": (),
    "iceoryx2": ("iox2", "iceoryx"),
    "shared-memory": ("shared_memory", "shm", "multiprocessing.shared_memory"),
    "memcpy": (),
}


def _split(values: Sequence[str] | None) -> list[str]:
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shmipc.bench",
        description="Benchmark shmipc beside multiprocessing.Queue/Pipe, faster-fifo, pyzmq, "
        "multiprocessing.shared_memory and iceoryx2: every producer and consumer in its own "
        "process, every message verified.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny fixed counts: a smoke run, not a benchmark"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="aim each row's timed run at this long, sized by probe runs (default 2)",
    )
    parser.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="messages (ping-pong: round trips) per row instead of calibrating",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run each row N times, in rounds of every row of its workload, and show the "
        "median run with the spread (default 1)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="WORKLOAD",
        help="run only these workloads (comma-separated, repeatable): "
        + ", ".join(w.name for w in WORKLOADS)
        + "; or a group: fanout, arrays; or `pools` alone (Pool/Executor vs multiprocessing)",
    )
    parser.add_argument(
        "--transports",
        action="append",
        metavar="NAMES",
        help="run only these transports (comma-separated): " + ", ".join(_ALIASES),
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="kill a row's processes after this long (default: 30 + 10 x duration; "
        "30 with --quick; 300 with --count)",
    )
    parser.add_argument(
        "--asyncio",
        action="store_true",
        help="run the asyncio consumer benchmark instead (shmipc vs pyzmq.asyncio; "
        "takes --quick, --uvloop, --json)",
    )
    parser.add_argument(
        "--spin-ns",
        type=int,
        metavar="NS",
        help="how long shmipc queues' waiters spin before they sleep (default: the Queue's "
        "own, 50,000); a diagnostic for what wake-ups cost, not for published tables",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--json", metavar="FILE", help="also write the rows and the machine as JSON to FILE"
    )
    return parser


def _selection(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> tuple[list[Workload], set[str] | None]:
    """The workloads and transport keys asked for (None: all); parser.error on bad values."""
    if args.spin_ns is not None and args.spin_ns < 0:
        parser.error("--spin-ns must be >= 0")
    for flag, value in (("--count", args.count), ("--repeat", args.repeat)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1")
    if args.duration <= 0:
        parser.error("--duration must be positive")
    try:
        named = [(name, w) for name in _split(args.only) for w in workloads_named(name)]
    except KeyError as exc:
        parser.error(exc.args[0])
    chosen = named or [("", w) for w in WORKLOADS]
    # A smoke run leaves out the slow workloads unless they are named one by one.
    kept = [w.smoke or not args.quick or name.lower() == w.name.lower() for name, w in chosen]
    workloads = list(dict.fromkeys(w for (_, w), keep in zip(chosen, kept, strict=True) if keep))
    args.left_out = [w.name for (_, w), keep in zip(chosen, kept, strict=True) if not keep]
    if not args.transports:
        return workloads, None
    keys = set()
    for name in _split(args.transports):
        lowered = name.lower()
        for key, aliases in _ALIASES.items():
            if lowered == key or lowered in aliases:
                keys.add(key)
                break
        else:
            parser.error(f"unknown transport {name!r} (known: {', '.join(_ALIASES)})")
    return workloads, keys


def _warn_if_busy() -> None:
    """Say so on stderr when other work already keeps the CPUs busy."""
    try:
        load, cpus = os.getloadavg()[0], len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return
    if load > cpus / 2:
        print(
            f"warning: load average {load:.1f} on {cpus} CPUs: other work competes with the "
            "benchmark, expect noisy numbers",
            file=sys.stderr,
        )


#: progress(rows done, rows in all, what runs now): called before each row and after the last.
Progress = Callable[[int, int, str], None]


def main(
    argv: Sequence[str] | None = None,
    *,
    out: TextIO | None = None,
    progress: Progress | None = None,
) -> int:
    """Run the benchmark; ``argv`` without the program name (default ``sys.argv[1:]``).
    ``progress`` is told of each row as it starts (a caller's progress bar)."""
    if "--asyncio" in (sys.argv[1:] if argv is None else argv):  # shmipc/bench/aiobench.py
        from .aiobench import main as aio_main

        return aio_main(list(sys.argv[1:] if argv is None else argv))
    pools_argv = _pools_request(sys.argv[1:] if argv is None else list(argv))
    if pools_argv is not None:  # `--only pools`: the process pools' benchmark (bench/pools.py)
        from . import pools as _pools

        return _pools.main(pools_argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        workloads, keys = _selection(args, parser)
    except SystemExit as exc:  # argparse exits; a wrapping CLI wants a status
        return exc.code if isinstance(exc.code, int) else 2
    out = out or sys.stdout
    machine = describe()  # before the run: its load line is the load the run started in
    _warn_if_busy()

    runnable, skipped = [], []
    kinds = {w.kind for w in workloads}
    for transport in (*_transports.TRANSPORTS, *_fanout.TRANSPORTS, *_arrays.TRANSPORTS):
        if transport.kind not in kinds:
            continue  # no workload asked for would run it
        if keys is not None and transport.key not in keys and "reference" not in transport.tags:
            continue
        reason = transport.unavailable()
        if reason is None:
            runnable.append(transport)
        else:
            skipped.append(f"{transport.label}: {reason}")
            print(f"skipping {transport.label}: {reason}", file=sys.stderr)
    if keys is not None and BASELINE not in keys:
        skipped.append("ratios: multiprocessing.Queue (the baseline) was not run")

    if args.spin_ns is not None:  # the children are forked: they see it too
        _transports.SHMIPC_QUEUE_OPTIONS["spin_ns"] = args.spin_ns
    try:
        rows = _run(workloads, runnable, args, progress)
    finally:
        _transports.SHMIPC_QUEUE_OPTIONS.pop("spin_ns", None)
    if args.quick:
        sizing = "fixed tiny counts (--quick): a smoke run, not a measurement"
        if args.left_out:
            sizing += f" ({', '.join(args.left_out)} left out unless named)"
    elif args.count:
        sizing = f"fixed at {args.count:,} per row (--count)"
    else:
        sizing = f"sized by probe runs to take about {args.duration:g} s each"
    if args.spin_ns is not None:
        sizing += f"; shmipc queues spun {args.spin_ns:,} ns before sleeping (--spin-ns)"
    out.write(
        render(
            rows,
            machine=machine,
            workloads=workloads,
            skipped=skipped,
            sizing=sizing,
            repeat=args.repeat,
            markdown=args.markdown,
        )
    )
    out.flush()
    if args.json:
        import json

        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(to_json(rows, machine=machine, skipped=skipped, sizing=sizing), f, indent=2)
    return 0 if all(row.outcome.ok for row in rows) else 1


def _run(
    workloads: Sequence[Workload],
    runnable: Sequence[Transport],
    args: argparse.Namespace,
    progress: Progress | None = None,
) -> list[Row]:
    """Every row, in order, with progress on stderr (and to ``progress``, once per run).

    A workload's rows are sized first (probe runs, which also warm up); then its repeats run
    in rounds, each round one run of every row. Rows compared with each other thus share the
    machine's moments: on a VM the CPUs' placement changes within seconds and moves a
    round trip by up to 2x (docs/performance.md, session 9), so a row's runs taken back to
    back could all land in a better or worse moment than the next row's. Each row shows its
    median run."""
    repeat = max(args.repeat, 1)
    total = sum(t.runs(w) for w in workloads for t in runnable) * repeat
    timeout = args.timeout or (
        30.0 if args.quick else 300.0 if args.count else 30.0 + 10.0 * args.duration
    )
    rows: list[Row] = []
    done = 0
    for workload in workloads:
        active = [t for t in runnable if t.runs(workload)]
        sized: list[int | Outcome] = []
        for transport in active:
            if not (args.quick or args.count):
                print(f"{workload.name:>8}  {transport.label:<24}sizing", file=sys.stderr)
            count = size_row(
                transport,
                workload,
                duration=args.duration,
                timeout=timeout,
                count=args.count,
                quick=args.quick,
            )
            if isinstance(count, Outcome):
                print(
                    f"{workload.name:>8}  {transport.label:<24}{count.status}: {count.detail}",
                    file=sys.stderr,
                )
            sized.append(count)
        runs: list[list[Outcome]] = [[] for _ in active]
        failed: list[Outcome | None] = [o if isinstance(o, Outcome) else None for o in sized]
        for round_ in range(repeat):
            for i, transport in enumerate(active):
                what = f"{workload.name} / {transport.label}"
                if repeat > 1:
                    what += f" (round {round_ + 1} of {repeat})"
                if progress is not None:
                    progress(done, total, what)
                done += 1
                count = sized[i]
                if failed[i] is not None or isinstance(count, Outcome):
                    continue
                print(f"{workload.name:>8}  {transport.label:<24}", end="", file=sys.stderr)
                started = time.monotonic()
                outcome = run_row(transport, workload, count, timeout)
                note = "" if outcome.ok else f"  {outcome.status}: {outcome.detail}"
                print(f"{time.monotonic() - started:6.1f} s{note}", file=sys.stderr, flush=True)
                if outcome.ok:
                    runs[i].append(outcome)
                else:
                    failed[i] = outcome  # the first run that fails is the row's result
        for i, transport in enumerate(active):
            rows.append(Row(workload, transport, failed[i] or median_run(runs[i])))
    if progress is not None:
        progress(done, total, "done")
    return rows


def _pools_request(argv: list[str]) -> list[str] | None:
    """The arguments for ``shmipc.bench.pools`` when ``--only pools`` was asked (None if not):
    ``--quick`` and ``--markdown`` go through, ``--repeat N`` becomes ``--rounds N``."""
    only = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--only"]
    only += [a.split("=", 1)[1] for a in argv if a.startswith("--only=")]
    if [o.strip().lower() for o in only] != ["pools"]:
        return None
    out = [a for a in argv if a in ("--quick", "--markdown")]
    for i, a in enumerate(argv[:-1]):
        if a == "--repeat":
            out += ["--rounds", argv[i + 1]]
    return out
