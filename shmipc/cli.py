"""The ``shmipc`` command: run the demo and the benchmark, list and clean up segments.

shmipc demo            the quickstart producer/consumer job, with its numbers
shmipc bench [...]     shmipc beside multiprocessing, faster-fifo and pyzmq
shmipc ls              shmipc's segments in /dev/shm, with their kind and creator
shmipc gc [--dry-run]  remove segments whose creator died (and orphaned spill segments)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

from . import _proc
from .layout import MAGIC, SEGMENT_LAYOUT, InitState, Kind, SegmentHeader
from .region import SHM_DIR

__all__ = ["SegmentInfo", "collect_garbage", "list_segments", "main"]

#: A spill segment older than this, whose reference nobody read, is taken for an orphan.
SPILL_ORPHAN_AGE = 3600.0


@dataclass(frozen=True)
class SegmentInfo:
    """What ``shmipc ls`` knows of one file in /dev/shm."""

    name: str
    size: int
    kind: str
    creator_pid: int | None
    creator_alive: bool | None
    state: str
    age: float


def _describe(name: str) -> SegmentInfo | None:
    path = os.path.join(SHM_DIR, name)
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            raw = f.read(SEGMENT_LAYOUT.size)
    except OSError:
        return None
    age = time.time() - st.st_mtime
    if name.startswith("shmipc_spill_"):
        return SegmentInfo(name, st.st_size, "spill", None, None, "-", age)
    if len(raw) < SEGMENT_LAYOUT.size or raw[: len(MAGIC)] != MAGIC:
        return None
    header = SegmentHeader.unpack(raw)
    try:
        kind = Kind(header.kind).name.lower()
    except ValueError:
        kind = f"kind {header.kind}"
    try:
        state = InitState(header.init_state).name.lower()
    except ValueError:
        state = f"state {header.init_state}"
    alive = _proc.is_alive(header.creator_pid, header.creator_start)
    return SegmentInfo(name, st.st_size, kind, header.creator_pid, alive, state, age)


def list_segments() -> list[SegmentInfo]:
    """Every shmipc segment (and spill segment) in /dev/shm."""
    try:
        names = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return []
    return [info for info in map(_describe, names) if info is not None]


def collect_garbage(*, dry_run: bool = False) -> list[str]:
    """Unlink segments whose creator is dead (the creator owns a name; with it gone, nobody
    will unlink it), and spill segments older than an hour. Returns the names removed.

    A process that still maps such a segment keeps its memory; only the name goes.
    """
    removed = []
    for info in list_segments():
        orphan = info.creator_alive is False or (
            info.kind == "spill" and info.age > SPILL_ORPHAN_AGE
        )
        if not orphan:
            continue
        if not dry_run:
            try:
                os.unlink(os.path.join(SHM_DIR, info.name))
            except FileNotFoundError:
                continue
        removed.append(info.name)
    return removed


def _ls(_: argparse.Namespace) -> int:
    rows = list_segments()
    if not rows:
        print(f"no shmipc segments in {SHM_DIR}")
        return 0
    print(f"{'name':40} {'kind':14} {'bytes':>12} {'creator':>8} {'alive':>6} state")
    for r in rows:
        alive = "-" if r.creator_alive is None else ("yes" if r.creator_alive else "DEAD")
        pid = "-" if r.creator_pid is None else str(r.creator_pid)
        print(f"{r.name:40} {r.kind:14} {r.size:>12,} {pid:>8} {alive:>6} {r.state}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    removed = collect_garbage(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for name in removed:
        print(f"{verb} {name}")
    print(f"{verb} {len(removed)} segment(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from .bench.__main__ import main as bench_main

        return bench_main(argv[1:]) or 0
    if argv and argv[0] == "demo":
        from .demo import main as demo_main

        return demo_main(argv[1:])
    parser = argparse.ArgumentParser(prog="shmipc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="the quickstart producer/consumer job")
    sub.add_parser("bench", help="the side-by-side benchmark (see shmipc bench --help)")
    sub.add_parser("ls", help="list shmipc segments in /dev/shm").set_defaults(func=_ls)
    gc = sub.add_parser("gc", help="remove segments whose creator died")
    gc.add_argument("--dry-run", action="store_true", help="only say what would go")
    gc.set_defaults(func=_gc)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
