"""The report of ``--limits`` and ``--io``: this machine's numbers beside the reference page's.

A ``Row`` is one measurement: its value and unit here, the page's own figure, and a status
(``held``, ``did not hold``, ``not comparable`` when the page gives no figure for it, or
``unavailable`` when the machine could not make the measurement, with the reason in the note).
A ``Report`` holds the rows, how they were measured, and renders as Markdown, JSON or a rich
table. The rule for the page's approximate figures ("~1 µs") is ``near``: within a factor of
three either way, because the page states orders of magnitude, not benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "HELD",
    "NOT_COMPARABLE",
    "NOT_HELD",
    "UNAVAILABLE",
    "Report",
    "Row",
    "near",
    "verdict",
]

HELD = "held"
NOT_HELD = "did not hold"
NOT_COMPARABLE = "not comparable"
UNAVAILABLE = "unavailable"
STATUSES = (HELD, NOT_HELD, NOT_COMPARABLE, UNAVAILABLE)

#: How far from the page's "~X" a value may be and still count as the page's figure.
FACTOR = 3.0


def near(value: float, figure: float, factor: float = FACTOR) -> bool:
    """Whether ``value`` is within ``factor`` of the page's approximate ``figure``."""
    return value > 0 and figure / factor <= value <= figure * factor


def verdict(ok: bool) -> str:
    return HELD if ok else NOT_HELD


@dataclass
class Row:
    """One measurement beside the page's figure (``page`` empty when the page gives none)."""

    name: str
    value: float | None
    unit: str
    page: str
    status: str
    note: str = ""
    claim: str = ""  # the page's claim this row tests, in our words ("" for context rows)
    group: str = ""
    shown: str = ""  # what to print in place of a number, for a qualitative result

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        if self.value is not None and not math.isfinite(self.value):
            self.value = None
        if self.value is None and not self.shown and self.status in (HELD, NOT_HELD):
            raise ValueError(f"row {self.name!r} has no value but says {self.status!r}")

    def value_text(self) -> str:
        if self.shown:
            return self.shown
        if self.value is None:
            return "n/a"
        v = self.value
        if v == int(v) and abs(v) < 1e15:
            text = f"{int(v):,}"
        elif abs(v) >= 100:
            text = f"{v:,.0f}"
        elif abs(v) >= 10:
            text = f"{v:.1f}"
        else:
            text = f"{v:.3g}"
        return f"{text} {self.unit}".strip()


@dataclass
class Report:
    """Rows, the machine, the method; Markdown / JSON / rich renderings."""

    title: str
    machine: list[tuple[str, str]] = field(default_factory=list)
    method: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    def add(self, *args: Any, **kwargs: Any) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def unavailable(self, name: str, unit: str, page: str, why: str, **kwargs: Any) -> Row:
        return self.add(name, None, unit, page, UNAVAILABLE, note=why, **kwargs)

    def verdicts(self) -> list[dict[str, str]]:
        """Which of the page's claims held here and which did not (and which could not run)."""
        found = []
        for row in self.rows:
            if not row.claim:
                continue
            evidence = f"{row.name}: {row.value_text()}"
            if row.note:
                evidence += f" ({row.note})"
            found.append({"claim": row.claim, "status": row.status, "evidence": evidence})
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "machine": {label: value for label, value in self.machine},
            "method": list(self.method),
            "rows": [asdict(row) for row in self.rows],
            "verdicts": self.verdicts(),
        }

    def to_markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        for label, value in self.machine:
            lines.append(f"- **{label}**: {value}")
        if self.machine:
            lines.append("")
        lines += [
            "| measurement | here | the page says | verdict | note |",
            "|---|---|---|---|---|",
        ]
        group = None
        for row in self.rows:
            if row.group and row.group != group:
                group = row.group
                lines.append(f"| **{group}** | | | | |")
            cells = (row.name, row.value_text(), row.page or "-", row.status, row.note)
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
        verdicts = self.verdicts()
        if verdicts:
            lines += ["### Which of the page's claims held here", ""]
            for v in verdicts:
                lines.append(f"- **{v['status']}**: {v['claim']}. {v['evidence']}.")
            lines.append("")
        if self.method:
            lines += ["### Method", ""] + [f"- {m}" for m in self.method] + [""]
        return "\n".join(lines)

    def render(self, console: Any) -> None:
        """Print to a rich Console: the machine, the table, the verdicts."""
        from rich.markup import escape
        from rich.table import Table

        for label, value in self.machine:
            console.print(f"[bold]{escape(label)}[/bold]: {escape(value)}", highlight=False)
        table = Table(title=escape(self.title), show_lines=False)
        table.add_column("measurement")
        table.add_column("here", justify="right")
        table.add_column("the page says")
        table.add_column("verdict")
        table.add_column("note", overflow="fold")
        group = None
        for row in self.rows:
            if row.group and row.group != group:
                group = row.group
                table.add_section()
                table.add_row(f"[bold]{escape(group)}[/bold]", "", "", "", "")
            table.add_row(
                escape(row.name),
                escape(row.value_text()),
                escape(row.page or "-"),
                _styled(row.status),
                escape(row.note),
            )
        console.print(table)
        verdicts = self.verdicts()
        if verdicts:
            console.print("[bold]Which of the page's claims held here[/bold]")
            for v in verdicts:
                console.print(
                    f"  {_styled(v['status'])}: {escape(v['claim'])}. {escape(v['evidence'])}.",
                    highlight=False,
                )
        for m in self.method:
            console.print(f"  [dim]{escape(m)}[/dim]", highlight=False)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _styled(status: str) -> str:
    colour = {HELD: "green", NOT_HELD: "red", NOT_COMPARABLE: "cyan", UNAVAILABLE: "yellow"}
    return f"[{colour[status]}]{status}[/{colour[status]}]"
