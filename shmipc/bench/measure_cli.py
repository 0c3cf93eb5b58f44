"""``python -m shmipc.bench --limits`` / ``--io``: the reference page's claims, measured here.

``main(argv)`` parses its own options (``--limits``, ``--io``, ``--quick``, ``--size``,
``--dir``, ``--json FILE``, ``--markdown``), runs ``limits.run`` and/or ``iobench.run`` with
progress on stderr, and prints the report: a rich table by default, Markdown with
``--markdown``; ``--json FILE`` also writes the JSON ("-" for stdout). Exit status 0, or 2 for
a bad command line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import TextIO

__all__ = ["main", "parse_size"]

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'1G', '64MiB', '1048576' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 64M or 1G)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m shmipc.bench",
        description="Measure the reference page's claims about memory mappings (--limits) "
        "and its mmap / read / O_DIRECT / io_uring table (--io) on this machine.",
    )
    p.add_argument("--limits", action="store_true", help="page faults, TLB, memcpy, round trips")
    p.add_argument("--io", action="store_true", help="the I/O comparison table")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--size", type=parse_size, help="--io scratch file size (default 1G)")
    p.add_argument("--dir", help="--io scratch directory (default: a temporary one on disk)")
    p.add_argument("--json", metavar="FILE", help="also write the report(s) as JSON ('-': stdout)")
    p.add_argument("--markdown", action="store_true", help="print Markdown, not a rich table")
    return p


def _progress(done: int, total: int, label: str) -> None:
    end = "\n" if done >= total else ""
    print(f"\r\x1b[K[{done}/{total}] {label}", end=end, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if not (args.limits or args.io):
        parser.print_usage(sys.stderr)
        print("choose --limits and/or --io", file=sys.stderr)
        return 2
    out = out or sys.stdout
    progress = _progress if sys.stderr.isatty() else None
    reports = []
    if args.limits:
        from . import limits

        reports.append(limits.run(quick=args.quick, progress=progress))
    if args.io:
        from . import iobench

        try:
            reports.append(
                iobench.run(size=args.size, directory=args.dir, quick=args.quick, progress=progress)
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.markdown:
        out.write("\n".join(r.to_markdown() for r in reports))
    else:
        from rich.console import Console

        console = Console(file=out)
        for r in reports:
            r.render(console)
    if args.json:
        data = [r.to_json() for r in reports]
        payload = json.dumps(data[0] if len(data) == 1 else data, indent=2)
        if args.json == "-":
            out.write(payload + "\n")
        else:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write(payload + "\n")
    out.flush()
    return 0
