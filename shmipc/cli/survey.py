"""The rows of ``shmipc ls`` and ``shmipc top``: every segment with who holds it and how it moves.

One pass over /dev/shm (shmipc.cli.segments), one over /proc for the processes that map or
hold each segment, and for each segment the few numbers of shmipc.cli.describe. Rows are
plain JSON-ready dicts, so ``ls --json`` prints exactly what the table shows.
"""

from __future__ import annotations

import pwd
import time
from typing import Any

from ..errors import ShmipcError
from . import rates as _rates
from .describe import PREFIX_BYTES, Summary, describe, needs_whole, summarize
from .segments import (
    INCOMPLETE,
    INCOMPLETE_NOTE,
    UNREADABLE,
    NotASegment,
    SegmentInfo,
    let_go,
    list_others,
    list_segments,
    read_segment,
    scan_users,
)

__all__ = ["rows", "sample_key", "segment_summary"]


def _user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def _alive(info: SegmentInfo) -> str | None:
    if info.creator_pid is None:
        return None
    if info.creator_alive is None:
        return "unknown"
    return "alive" if info.creator_alive else "dead"


def sample_key(info: SegmentInfo) -> str:
    return f"{info.name}:{info.inode[0]}:{info.inode[1]}"


def segment_summary(info: SegmentInfo) -> tuple[Summary, str]:
    """The ls/top numbers of one shmipc segment and a note ("" or what went wrong)."""
    if info.kind == INCOMPLETE:
        return Summary(), INCOMPLETE_NOTE
    if info.kind in (UNREADABLE, "spill") or info.creator_pid is None:
        return Summary(), ""
    try:
        limit = None if needs_whole(info.kind) else PREFIX_BYTES
        st, view = read_segment(info.name, limit)
        try:
            summary = summarize(describe(view, st.st_size))
        finally:
            let_go(view)
    except PermissionError:
        return Summary(), "unreadable"
    except FileNotFoundError:
        return Summary(), "removed meanwhile"
    except (ShmipcError, NotASegment, OSError) as exc:
        return Summary(), f"cannot describe: {exc}"
    return summary, summary.note


def rows(*, include_all: bool = False, previous: dict[str, Any] | None = None) -> list[dict]:
    """Every shmipc segment as a dict (``include_all``: every other /dev/shm entry too, from
    lstat alone). Rates are against ``previous`` (key -> rates.Sample) when given."""
    segments = list_segments()
    users = scan_users()
    complete = not users.hidden and not users.invisible
    out = []
    for info in segments:
        summary, note = segment_summary(info)
        sample = _rates.Sample(sample_key(info), time.time(), summary.messages, summary.bytes)
        before = (previous or {}).get(sample.key)
        msg_rate, byte_rate = _rates.rates(before, sample)
        pids = sorted(users.pids.get(info.name, ()))
        out.append(
            {
                "name": info.name,
                "kind": info.kind,
                "size": info.size,
                "owner": {"uid": info.uid, "user": _user(info.uid), "mode": f"{info.mode:04o}"},
                "creator": {"pid": info.creator_pid, "alive": _alive(info)},
                "state": info.state,
                "participants": {"pids": pids, "complete": complete},
                "messages": summary.messages,
                "bytes": summary.bytes,
                "depth": summary.depth,
                "lag": summary.lag,
                "rates": {"messages_per_s": msg_rate, "bytes_per_s": byte_rate},
                "age_s": round(info.age, 3),
                "shmipc": True,
                "note": note,
                "_sample": sample,
            }
        )
    if include_all:
        for info in list_others({i.name for i in segments}):
            pids = sorted(users.pids.get(info.name, ()))
            out.append(
                {
                    "name": info.name,
                    "kind": info.kind,
                    "size": info.size,
                    "owner": {
                        "uid": info.uid,
                        "user": _user(info.uid),
                        "mode": f"{info.mode:04o}",
                    },
                    "creator": {"pid": None, "alive": None},
                    "state": "-",
                    "participants": {"pids": pids, "complete": complete},
                    "messages": None,
                    "bytes": None,
                    "depth": None,
                    "lag": None,
                    "rates": {"messages_per_s": None, "bytes_per_s": None},
                    "age_s": round(info.age, 3),
                    "shmipc": False,
                    "note": "",
                    "_sample": None,
                }
            )
    return out


def public(row: dict) -> dict:
    """A row without its private fields (for JSON)."""
    return {k: v for k, v in row.items() if not k.startswith("_")}
