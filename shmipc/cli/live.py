"""``shmipc top``: a live table of every segment's message rate, byte rate and depth.

Each refresh is one survey (shmipc.cli.survey: read-only, like ``ls``); rates are between
consecutive refreshes. On a terminal the table redraws in place (rich Live) until Ctrl-C;
otherwise (a pipe, a log) each refresh is printed below the last, with its time.
"""

from __future__ import annotations

import time

import click
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .app import EXIT_CODES_HELP, app, console
from .commands import human_rate
from .segments import display_name
from .survey import rows

__all__ = ["top_table"]


def top_table(found: list[dict], interval: float) -> Table:
    """The top table of survey rows, busiest first."""
    table = Table(
        title=f"shmipc top  {time.strftime('%H:%M:%S')}  every {interval:g} s  (Ctrl-C ends)",
        box=None,
        header_style="bold",
        pad_edge=False,
    )
    table.add_column("name", no_wrap=True)
    table.add_column("kind")
    table.add_column("msgs/s", justify="right")
    table.add_column("bytes/s", justify="right")
    table.add_column("depth", justify="right")
    table.add_column("users", justify="right")
    table.add_column("creator")

    def busy(row: dict) -> float:
        return -(row["rates"]["messages_per_s"] or 0.0)

    for row in sorted(found, key=busy):
        depth = row["depth"] if row["depth"] is not None else row["lag"]
        table.add_row(
            Text(display_name(row["name"])),
            Text(row["kind"]),
            human_rate(row["rates"]["messages_per_s"]),
            human_rate(row["rates"]["bytes_per_s"], "B"),
            "-" if depth is None else (f"lag {depth:,}" if row["depth"] is None else f"{depth:,}"),
            str(len(row["participants"]["pids"])),
            Text(f"{row['creator']['pid'] or '-'} {row['creator']['alive'] or ''}".strip()),
        )
    if not found:
        table.add_row(Text("(no shmipc segments)"), "", "", "", "", "", "")
    return table


@app.command(
    "top",
    short_help="A live table of message rates, byte rates and depth.",
    epilog="\b\nExamples:\n  shmipc top\n  shmipc top --interval 0.5\n"
    "  shmipc top --iterations 10 > top.log    # ten refreshes, then exit\n\n" + EXIT_CODES_HELP,
)
@click.option(
    "--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
    metavar="SECONDS", help="Time between refreshes.",
)  # fmt: skip
@click.option(
    "--iterations", type=click.IntRange(min=0), default=0, metavar="N",
    help="Stop after N refreshes (default: until Ctrl-C).",
)  # fmt: skip
def top_command(interval: float, iterations: int) -> int:
    """A live table of every shmipc segment's message rate, byte rate and depth (queues,
    rings) or lag (topics), refreshed every --interval seconds until Ctrl-C. Read-only."""
    out = console()
    previous: dict = {}

    def refresh() -> Table:
        nonlocal previous
        found = rows(previous=previous)
        previous = {r["_sample"].key: r["_sample"] for r in found if r["_sample"] is not None}
        return top_table(found, interval)

    done = 0
    try:
        if out.is_terminal:
            with Live(refresh(), console=out, auto_refresh=False, transient=False) as live:
                done = 1
                while not iterations or done < iterations:
                    time.sleep(interval)
                    live.update(refresh(), refresh=True)
                    done += 1
        else:
            while not iterations or done < iterations:
                if done:
                    time.sleep(interval)
                out.print(refresh())
                out.file.flush()
                done += 1
    except KeyboardInterrupt:
        pass
    return 0
