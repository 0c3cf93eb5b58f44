"""The report: machine, table (fixed-width text or Markdown), notes and problems.

Pure formatting: takes finished rows, returns text. Ratios compare each row with
``multiprocessing.Queue`` in the same workload, as speed (greater than 1 is faster): rate over
rate, or for ping-pong the baseline's median latency over the row's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .harness import Outcome, latency_stats
from .transports import Transport
from .workloads import Workload

__all__ = ["BASELINE", "Row", "render", "to_json"]

#: The transport key every ratio divides by.
BASELINE = "mp-queue"
_HEADINGS = ("workload", "transport", "result", "CPU µs/msg", "vs mp.Queue", "msgs")
_RIGHT = (False, False, True, True, True, True)


@dataclass
class Row:
    """One line of the table."""

    workload: Workload
    transport: Transport
    outcome: Outcome


def _speed(row: Row) -> float | None:
    """A number that grows with speed, for ratios (None when the row has no result)."""
    if not row.outcome.ok or row.outcome.figure <= 0:
        return None
    figure = row.outcome.figure
    return 1.0 / figure if row.workload.pingpong else figure


def _spread(outcome: Outcome) -> str:
    """ " ±N%": half the range of the repeats' figures, relative to the one shown."""
    if len(outcome.samples) < 2 or outcome.figure <= 0:
        return ""
    half_range = (max(outcome.samples) - min(outcome.samples)) / 2
    return f" ±{100 * half_range / outcome.figure:.0f}%"


def _result(row: Row) -> str:
    outcome, workload = row.outcome, row.workload
    if not outcome.ok:
        return outcome.status
    if workload.pingpong:
        median, p99 = latency_stats(outcome.latencies_ns or [])
        return f"{median:.1f} / {p99:.1f} µs{_spread(outcome)}"
    rate = outcome.figure
    if workload.unit == "GB/s":
        return f"{rate * workload.size / 1e9:.2f} GB/s{_spread(outcome)}"
    return f"{rate:,.0f} msgs/s{_spread(outcome)}"


def _cpu(outcome: Outcome) -> str:
    if not outcome.ok or not outcome.cpu_units:
        return "-"
    value = outcome.cpu / outcome.cpu_units * 1e6
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def _ratio(row: Row, baselines: dict[str, float | None]) -> str:
    speed, base = _speed(row), baselines.get(row.workload.name)
    if speed is None or not base:
        return "-"
    return f"{speed / base:.2f}x"


def _cells(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    baselines = {row.workload.name: _speed(row) for row in rows if row.transport.key == BASELINE}
    return [
        (
            row.workload.name,
            row.transport.label,
            _result(row),
            _cpu(row.outcome),
            _ratio(row, baselines),
            f"{row.outcome.count:,}",
        )
        for row in rows
    ]


def _text_table(cells: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(c[i]) for c in [_HEADINGS, *cells]) for i in range(len(_HEADINGS))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, _RIGHT, strict=True)
        ).rstrip()

    out = [line(_HEADINGS), "  ".join("-" * w for w in widths)]
    previous = None
    for c in cells:
        if previous is not None and c[0] != previous:
            out.append("")
        out.append(line(c))
        previous = c[0]
    return out


def _markdown_table(cells: list[tuple[str, ...]]) -> list[str]:
    out = [
        "| " + " | ".join(_HEADINGS) + " |",
        "| " + " | ".join("---:" if right else "---" for right in _RIGHT) + " |",
    ]
    out += ["| " + " | ".join(c) + " |" for c in cells]
    return out


def _notes(
    rows: Sequence[Row], workloads: Sequence[Workload], duration: str, repeat: int
) -> list[str]:
    labels: dict[str, str] = {}
    for row in rows:
        labels.setdefault(row.transport.label, row.transport.serialisation)
    pingpong = next((r for r in rows if r.workload.pingpong and r.outcome.ok), None)
    warm = ""
    if pingpong is not None:
        warm = f" ({pingpong.outcome.cpu_units - pingpong.outcome.count:,} in the last row)"
    notes = [
        "result: messages/s; GB/s of payload (GB = 10^9 bytes, 1 MiB = 1,048,576 bytes); "
        "ping-pong: round-trip latency, median / p99 (nearest rank).",
        "timing: from the start barrier's release (all processes connected and ready) to the "
        "last consumer's receipt of its end-of-stream mark, which follows the last message "
        "(shared queues: posted by the parent once every producer has flushed and said so). "
        f"Ping-pong: each round trip timed by the pinging process, after warm-up rounds{warm}.",
        "CPU µs/msg: CPU time (user + system, all threads) of every process of the row during "
        "the timed span, divided by the messages (ping-pong: by the round trips, warm-up "
        "included).",
        "vs mp.Queue: speed relative to multiprocessing.Queue in the same workload, >1 is "
        "faster (ping-pong: its median latency over the row's).",
        "verified: each message carries producer id + counter (first 8 bytes of bytes payloads, "
        '1 MiB ones also in their last 8; the "id" field of dicts); the parent checked that '
        "every message arrived exactly once (a failed check shows FAILED, never a number).",
        f"msgs: messages (ping-pong: timed round trips) in the reported run; {duration}.",
        *(
            [
                f"repeats: each row ran {repeat} times; the run with the median figure is shown, "
                "± is half the range of the runs' figures relative to it."
            ]
            if repeat > 1
            else []
        ),
        "each producer and consumer is its own forked process; the Python-side loop (build "
        "message, note sequence number) costs about the same in every row.",
        "workloads: " + "; ".join(f"{w.name} = {w.description}" for w in workloads) + ".",
        "how each transport sends:",
    ]
    notes += [f"  {label}: {how}" for label, how in labels.items()]
    return notes


def render(
    rows: Sequence[Row],
    *,
    machine: Sequence[tuple[str, str]],
    workloads: Sequence[Workload],
    skipped: Sequence[str] = (),
    sizing: str = "",
    repeat: int = 1,
    markdown: bool = False,
) -> str:
    """The whole report as one string."""
    cells = _cells(rows)
    width = max(len(label) for label, _ in machine)
    if markdown:
        out = [f"- **{label}**: {value}" for label, value in machine]
        out += ["", *_markdown_table(cells), ""]
        out += [f"- {note.strip()}" for note in _notes(rows, workloads, sizing, repeat)]
    else:
        out = [f"{label.ljust(width)}  {value}" for label, value in machine]
        out += ["", *_text_table(cells), ""]
        out += [
            note if note.startswith("  ") else f"* {note}"
            for note in _notes(rows, workloads, sizing, repeat)
        ]
    bullet = "- " if markdown else "* "
    if skipped:
        out += ["", "skipped:"] + [f"{bullet}{s}" for s in skipped]
    problems = [
        f"{row.workload.name} / {row.transport.label}: {row.outcome.status}: {row.outcome.detail}"
        for row in rows
        if not row.outcome.ok
    ]
    remarks = [
        f"{row.workload.name} / {row.transport.label}: {row.outcome.detail}"
        for row in rows
        if row.outcome.ok and row.outcome.detail
    ]
    if problems:
        out += ["", "problems:"] + [f"{bullet}{p}" for p in problems]
    if remarks:
        out += ["", "remarks:"] + [f"{bullet}{r}" for r in remarks]
    return "\n".join(out) + "\n"


def to_json(
    rows: Sequence[Row],
    *,
    machine: Sequence[tuple[str, str]],
    skipped: Sequence[str] = (),
    sizing: str = "",
) -> dict:
    """The report as JSON-ready data: one dict per row with its raw figures."""
    baselines = {row.workload.name: _speed(row) for row in rows if row.transport.key == BASELINE}
    out_rows = []
    for row in rows:
        outcome = row.outcome
        speed, base = _speed(row), baselines.get(row.workload.name)
        median = p99 = None
        if outcome.ok and row.workload.pingpong:
            median, p99 = latency_stats(outcome.latencies_ns or [])
        out_rows.append(
            {
                "workload": row.workload.name,
                "transport": row.transport.label,
                "transport_key": row.transport.key,
                "status": outcome.status,
                "ok": outcome.ok,
                "count": outcome.count,
                "elapsed_s": outcome.elapsed,
                "messages_per_s": None if row.workload.pingpong or not outcome.ok
                else outcome.figure,
                "latency_median_us": median,
                "latency_p99_us": p99,
                "cpu_us_per_msg": outcome.cpu / outcome.cpu_units * 1e6
                if outcome.ok and outcome.cpu_units else None,
                "vs_baseline": speed / base if speed is not None and base else None,
                "detail": outcome.detail,
            }
        )  # fmt: skip
    return {
        "machine": dict(machine),
        "sizing": sizing,
        "rows": out_rows,
        "skipped": list(skipped),
    }
