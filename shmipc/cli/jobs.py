"""``shmipc demo`` and ``shmipc bench``: the jobs that run processes, with progress bars.

The work itself lives in shmipc.demo and shmipc.bench (and, for ``bench --limits``/``--io``,
in shmipc.bench.limits / shmipc.bench.iobench, looked up only when asked for); this module
parses options, draws the progress bar on stderr and prints the report on stdout.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .app import EXIT_FAILURE, Failure, app, console, err_console

__all__ = ["load_measurement", "parse_size"]


@contextmanager
def _bar(transient: bool = True) -> Iterator[Progress]:
    """A progress bar: on the terminal when stdout is one (results then print above the bar
    through ``progress.console``), else on stderr, so that piped results stay clean."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console() if sys.stdout.isatty() else err_console(),
        transient=transient,
    )
    with progress:
        yield progress


def _echo(progress: Progress) -> Callable[[str], None]:
    """Print a result line: above the bar on a terminal, plainly to stdout otherwise."""
    out = progress.console if sys.stdout.isatty() else console()
    return lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True)


def _reporter(progress: Progress) -> Callable[[str, int, int], None]:
    """progress(stage, done, total) for shmipc.demo: one bar per stage."""
    tasks: dict[str, Any] = {}

    def report(stage: str, done: int, total: int) -> None:
        task = tasks.get(stage)
        if task is None:
            task = tasks[stage] = progress.add_task(stage, total=total)
        progress.update(task, completed=done, total=total)

    return report


# ---- demo ------------------------------------------------------------------------------------


@app.command(
    "demo",
    short_help="The quickstart producer/consumer job, with its numbers.",
    epilog="\b\nExamples:\n  shmipc demo\n  shmipc demo --producers 4 --consumers 2 --count 50000"
    "\n  shmipc demo --no-baseline --timeout 60\n\nExit codes: 0 every message arrived exactly "
    "once; 1 not, or a process of the demo died or it ran out of time; 2 usage.",
)
@click.option("--producers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--consumers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option(
    "--count", type=click.IntRange(1), default=200_000, show_default=True,
    help="Messages per producer.",
)  # fmt: skip
@click.option("--no-baseline", is_flag=True, help="Skip the multiprocessing.Queue comparison.")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True,
    help="Seconds one stage may take before the demo gives up.",
)  # fmt: skip
def demo_command(
    producers: int, consumers: int, count: int, no_baseline: bool, timeout: float
) -> int:
    """The quickstart's job: producers -> one shmipc.Queue -> consumers in separate
    processes, every message checked, beside multiprocessing.Queue, with a ping-pong round
    trip. If any process of it dies, the demo stops the others and exits 1 (it never hangs)."""
    from ..demo import DemoFailed, run_demo

    try:
        with _bar() as progress:
            ok = run_demo(
                producers, consumers, count, baseline=not no_baseline,
                progress=_reporter(progress), timeout=timeout, echo=_echo(progress),
            )  # fmt: skip
    except DemoFailed as exc:
        raise Failure(f"the demo failed: {exc}") from None
    return 0 if ok else EXIT_FAILURE


# ---- bench -----------------------------------------------------------------------------------

_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(i?b?)", re.I)


def parse_size(text: str) -> int:
    """ "256M", "1GiB", "4096" -> bytes (binary multiples)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 4096, 256M, 2GiB)")
    return int(m.group(1)) << (10 * " kmgt".index(m.group(2).lower() or " "))


def load_measurement(module_name: str, flag: str) -> Callable[..., Any]:
    """``run`` of shmipc.bench.<module>, imported only now; Failure (exit 1) when absent."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name not in (module_name, *module_name.split(".")[:1]):
            raise Failure(f"bench {flag}: {module_name} cannot be imported: {exc}") from None
        module = None
    except ImportError as exc:
        raise Failure(f"bench {flag}: {module_name} cannot be imported: {exc}") from None
    run = getattr(module, "run", None)
    if run is None:
        raise Failure(
            f"bench {flag} is not available in this installation: {module_name} (its "
            "measurements) is missing"
        )
    return run  # type: ignore[no-any-return]


def _measure(flag: str, module_name: str, markdown: bool, **kwargs: Any) -> tuple[str, Any]:
    run = load_measurement(module_name, flag)
    with _bar() as progress:
        task = progress.add_task(flag, total=None)

        def report(done: int, total: int, what: str) -> None:
            progress.update(task, completed=done, total=total, description=f"{flag} {what}")

        try:
            result = run(progress=report, **kwargs)
        except (OSError, RuntimeError, ValueError) as exc:
            raise Failure(f"bench {flag} failed: {type(exc).__name__}: {exc}") from None
    if markdown:
        click.echo(result.to_markdown())
    else:
        result.render(console())
    return flag.lstrip("-"), result


@app.command(
    "bench",
    short_help="Benchmarks; --limits and --io measure this machine.",
    epilog="\b\nExamples:\n  shmipc bench --quick\n  shmipc bench --only 64B,pingpong "
    "--transports shmipc,mp-queue\n  shmipc bench --markdown --json bench.json\n"
    "  shmipc bench --limits          # page faults, hugepages, memcpy, futex, pipe\n"
    "  shmipc bench --io --size 2G --dir /var/tmp\n\n"
    "Exit codes: 0 every row verified; 1 a row FAILED, timed out or broke, or a measurement "
    "is not available; 2 usage.",
)
@click.option("--quick", is_flag=True, help="Tiny fixed counts: a smoke run, not a benchmark.")
@click.option("--json", "json_file", metavar="FILE", help="Also write the results as JSON.")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@click.option("--only", metavar="WORKLOADS", multiple=True, help="Only these workloads.")
@click.option("--transports", metavar="NAMES", multiple=True, help="Only these transports.")
@click.option("--duration", type=float, metavar="SECONDS", help="Aim each row at this long.")
@click.option("--count", type=int, metavar="N", help="Messages per row instead of calibrating.")
@click.option("--repeat", type=int, metavar="N", help="Run each row N times, show the median.")
@click.option("--timeout", type=float, metavar="SECONDS", help="Kill a row after this long.")
@click.option(
    "--limits", is_flag=True,
    help="Measure this machine's mapping costs beside the reference page's figures.",
)  # fmt: skip
@click.option(
    "--io", "io_", is_flag=True,
    help="The I/O comparison table: mmap, read/write, O_DIRECT, io_uring, shm.",
)  # fmt: skip
@click.option("--size", metavar="BYTES", help="--io: the test file's size (e.g. 2G).")
@click.option(
    "--dir", "directory", metavar="DIR", type=click.Path(file_okay=False),
    help="--io: where the test file goes.",
)  # fmt: skip
def bench_command(
    quick: bool, json_file: str | None, markdown: bool, only: tuple[str, ...],
    transports: tuple[str, ...], duration: float | None, count: int | None,
    repeat: int | None, timeout: float | None, limits: bool, io_: bool, size: str | None,
    directory: str | None,
) -> int:  # fmt: skip
    """Benchmark shmipc beside multiprocessing.Queue/Pipe, faster-fifo and pyzmq (every
    producer and consumer in its own process, every message verified), with a progress bar;
    or, with --limits / --io, measure this machine against the reference page."""
    if (size or directory) and not io_:
        raise click.UsageError("--size and --dir go with --io")
    if limits or io_:
        results = []
        if limits:
            results.append(_measure("--limits", "shmipc.bench.limits", markdown, quick=quick))
        if io_:
            nbytes = parse_size(size) if size else None
            results.append(
                _measure(
                    "--io",
                    "shmipc.bench.iobench",
                    markdown,
                    size=nbytes,
                    directory=directory,
                    quick=quick,
                )
            )
        if json_file:
            data = {k: r.to_json() for k, r in results}
            with open(json_file, "w", encoding="utf-8") as f:
                json.dump(data[results[0][0]] if len(results) == 1 else data, f, indent=2)
        return 0
    from ..bench.cli import main as bench_main

    argv = ["--quick"] if quick else []
    for flag, value in (
        ("--duration", duration), ("--count", count), ("--repeat", repeat),
        ("--timeout", timeout), ("--json", json_file),
    ):  # fmt: skip
        if value is not None:
            argv += [flag, str(value)]
    for value in only:
        argv += ["--only", value]
    for value in transports:
        argv += ["--transports", value]
    if markdown:
        argv.append("--markdown")
    with _bar(transient=True) as progress:
        task = progress.add_task("bench", total=None)

        def report(done: int, total: int, what: str) -> None:
            progress.update(task, completed=done, total=total, description=what)

        return bench_main(argv, progress=report) or 0
