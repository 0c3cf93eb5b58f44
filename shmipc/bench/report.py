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
from .workloads import GROUPS, Workload

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
                f"repeats: each row ran {repeat} times, in rounds of one run of every row of its "
                "workload (so that rows compared share the machine's moments); the run with the "
                "median figure is shown, ± is half the range of the runs' figures relative to it."
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


# --- fan-out and arrays: their own tables ------------------------------------------------------

#: Fan-out rows are compared with these peers' per-subscriber rates in the same workload.
FANOUT_PEERS = (("pyzmq", "vs pyzmq"), ("iceoryx2", "vs iceoryx2"))
_FANOUT_HEADINGS = (
    "workload",
    "transport",
    "per subscriber",
    "aggregate",
    "CPU µs/delivery",
    *(heading for _, heading in FANOUT_PEERS),
    "vs 1 subscriber",
    "msgs",
)
_ARRAY_HEADINGS = (
    "workload",
    "transport",
    "result",
    "per round trip",
    "CPU ms/round trip",
    "vs best copying peer",
    "vs memcpy",
    "round trips",
)


def _rate(value: float, unit: str = "msgs/s") -> str:
    return f"{value:,.0f} {unit}"


def _times(speed: float | None, base: float | None) -> str:
    return f"{speed / base:.2f}x" if speed and base else "-"


def _fanout_cells(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    """Per subscriber: messages over the span that ends with the slowest subscriber's end
    mark; aggregate: that times the subscribers."""
    speeds = {(r.workload.name, r.transport.label): _speed(r) for r in rows}
    peers = {
        (r.workload.name, key): _speed(r)
        for r in rows
        for key, _ in FANOUT_PEERS
        if r.transport.key == key
    }
    cells: list[tuple[str, ...]] = []
    for row in rows:
        w, outcome = row.workload, row.outcome
        speed = speeds[(w.name, row.transport.label)]
        single = w.name.rsplit("-", 1)[0] + "-1"
        if not outcome.ok:
            result, aggregate = outcome.status, "-"
        else:
            result = _rate(outcome.figure) + _spread(outcome)
            aggregate = _rate(outcome.figure * w.consumers)
        cells.append(
            (
                w.name,
                row.transport.label,
                result,
                aggregate,
                _cpu(outcome),
                *(_times(speed, peers.get((w.name, key))) for key, _ in FANOUT_PEERS),
                _times(speed, speeds.get((single, row.transport.label))),
                f"{outcome.count:,}",
            )
        )
    return cells


def _gbps(row: Row) -> float | None:
    outcome = row.outcome
    if not outcome.ok or outcome.elapsed <= 0 or not outcome.volume:
        return None
    return outcome.volume / outcome.elapsed / 1e9


def _array_cells(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    """GB/s of payload (both directions of every round trip); ratios to the fastest copying
    peer and to memcpy of the same size, in the same run."""
    best: dict[str, float] = {}
    memcpy: dict[str, float] = {}
    for row in rows:
        rate = _gbps(row)
        if rate is None:
            continue
        if "copies" in row.transport.tags:
            best[row.workload.name] = max(best.get(row.workload.name, 0.0), rate)
        if "reference" in row.transport.tags:
            memcpy[row.workload.name] = rate
    cells: list[tuple[str, ...]] = []
    for row in rows:
        outcome, rate = row.outcome, _gbps(row)
        reference = "reference" in row.transport.tags
        if rate is None:
            result = outcome.status if not outcome.ok else "-"
            per = cpu = "-"
        else:
            result = f"{rate:.2f} GB/s{_spread(outcome)}"
            per = f"{1e3 * outcome.elapsed / max(outcome.count, 1):.2f} ms"
            if reference:
                per += " a copy"
            cpu = "-" if reference else f"{1e3 * outcome.cpu / max(outcome.cpu_units, 1):.2f}"
        cells.append(
            (
                row.workload.name,
                row.transport.label,
                result,
                per,
                cpu,
                "-" if reference else _times(rate, best.get(row.workload.name)),
                _times(rate, memcpy.get(row.workload.name)),
                f"{outcome.count:,}",
            )
        )
    return cells


def _table(headings: Sequence[str], cells: list[tuple[str, ...]], markdown: bool) -> list[str]:
    right = (False, False, *([True] * (len(headings) - 2)))
    if markdown:
        return [
            "| " + " | ".join(headings) + " |",
            "| " + " | ".join("---:" if r else "---" for r in right) + " |",
            *("| " + " | ".join(c) + " |" for c in cells),
        ]
    widths = [max(len(c[i]) for c in [tuple(headings), *cells]) for i in range(len(headings))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ).rstrip()

    out = [line(headings), "  ".join("-" * w for w in widths)]
    previous = None
    for c in cells:
        if previous is not None and c[0] != previous:
            out.append("")
        out.append(line(c))
        previous = c[0]
    return out


def _fanout_notes(rows: Sequence[Row]) -> list[str]:
    return [
        "fan-out: one publisher process, every subscriber its own process and subscribed "
        "before the first message (each adapter's publisher waits for every subscription "
        "before the start barrier); the span runs from the barrier's release to the slowest "
        "subscriber's receipt of the end mark that follows the last message.",
        "per subscriber: messages each subscriber received over that span; aggregate: times "
        "the subscribers. CPU µs/delivery: CPU of every process over the span divided by "
        "messages x subscribers.",
        "vs pyzmq / vs iceoryx2: per-subscriber rate over that peer's in the same workload; "
        "vs 1 subscriber: over the same transport's rate with one subscriber.",
        "verified: every subscriber received every message exactly once and in the order "
        "published (a failed check shows FAILED with the counts per subscriber).",
    ]


def _array_notes(rows: Sequence[Row]) -> list[str]:
    return [
        "arrays: round trips of float64 arrays between two processes; each side stamps its "
        "outgoing array (one float64 per 4 KiB page: sequence number + page index, and the "
        "sequence number in the last element), the receiver reads every page's stamp and "
        "checks the sum (a sample checksum), lets the array go and replies with a new array "
        "of the same size the same way. Warm-up round trips run first, untimed.",
        "result: payload GB/s, both directions (2 x size per round trip; GB = 10^9 bytes); "
        "memcpy: bytes copied per second by numpy.copyto of one array of the size (a 1 MiB "
        "pair stays in the CPU cache, 32 and 256 MiB do not).",
        "vs best copying peer: over the fastest of multiprocessing.Queue, shared_memory "
        "(segment per array) and pyzmq copy=False in the same workload; vs memcpy: over the "
        "memcpy row of the same size.",
        "verified: every transfer arrived once, in order, with its stamp intact; memcpy: the "
        "copy's samples checked after the clock stopped.",
    ]


def _split_notes(
    rows: Sequence[Row], workloads: Sequence[Workload], sizing: str, repeat: int
) -> tuple[list[str], list[str]]:
    """The stream table's notes (only the general ones when it has no rows), and its
    "how each transport sends" lines."""
    stream = [w for w in workloads if w.kind == "stream"]
    notes = _notes(rows, stream, sizing, repeat)
    cut = notes.index("how each transport sends:")
    head, hows = notes[:cut], notes[cut + 1 :]
    if not rows:
        keep = ("msgs:", "repeats:", "each producer")
        head = [n for n in head if n.startswith(keep)]
    others = [w for w in workloads if w.kind != "stream"]
    if others:
        described = [GROUPS.get(w.group) or f"{w.name} = {w.description}" for w in others]
        head.append("other workloads: " + "; ".join(dict.fromkeys(described)) + ".")
    return head, hows


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
    """The whole report as one string: the stream table, then fan-out's and arrays' own."""
    all_rows = rows
    rows = [r for r in all_rows if r.workload.kind == "stream"]
    fanout = [r for r in all_rows if r.workload.kind == "fanout"]
    arrays = [r for r in all_rows if r.workload.kind == "arrays"]
    width = max(len(label) for label, _ in machine)
    notes, hows = _split_notes(rows, workloads, sizing, repeat)
    if fanout:
        notes += _fanout_notes(fanout)
    if arrays:
        notes += _array_notes(arrays)
    for row in (*fanout, *arrays):  # labels of their own kind (pyzmq is used differently)
        how = f"  {row.workload.kind} / {row.transport.label}: {row.transport.serialisation}"
        if how not in hows:
            hows.append(how)
    notes += ["how each transport sends:", *hows]
    tables = [_text_table(_cells(rows))] if rows else []
    if fanout:
        tables.append(_table(_FANOUT_HEADINGS, _fanout_cells(fanout), markdown))
    if arrays:
        tables.append(_table(_ARRAY_HEADINGS, _array_cells(arrays), markdown))
    if markdown:
        if rows:
            tables[0] = _markdown_table(_cells(rows))
        out = [f"- **{label}**: {value}" for label, value in machine]
        for table in tables:
            out += ["", *table]
        out += [""]
        out += [f"- {note.strip()}" for note in notes]
    else:
        out = [f"{label.ljust(width)}  {value}" for label, value in machine]
        for table in tables:
            out += ["", *table]
        out += [""]
        out += [note if note.startswith("  ") else f"* {note}" for note in notes]
    rows = all_rows
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
