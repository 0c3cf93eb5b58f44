"""Rates "since the last look" for ``shmipc ls``: a small per-user state file of counters.

Each ``ls`` stores, per segment (name and inode, so a new segment under an old name starts
afresh), the time and its message and byte counters; the next ``ls`` divides the difference
by the time between. The file lives in ``$XDG_RUNTIME_DIR/shmipc`` (else
``~/.cache/shmipc``; ``$SHMIPC_STATE_DIR`` overrides both). It is only a convenience: a
missing, unreadable, corrupt or oversized file means "no previous look", and a failure to
write it is ignored. It is created 0600 in a 0700 directory, written to a temporary file
and renamed into place, and opened without following symlinks; a directory that is a
symlink, another user's or writable by others is neither read nor written.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Sample", "load", "rates", "save", "state_path"]

_MAX_BYTES = 1 << 20
_FILE = "ls-state.json"


@dataclass(frozen=True)
class Sample:
    """One segment's counters at one moment."""

    key: str  # name + inode
    when: float  # time.time()
    messages: int | None
    bytes: int | None


def state_path() -> Path:
    """Where the state file lives for this user."""
    override = os.environ.get("SHMIPC_STATE_DIR")
    if override:
        return Path(override) / _FILE
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "shmipc" / _FILE
    return Path.home() / ".cache" / "shmipc" / _FILE


def _ours(directory: Path) -> bool:
    """Whether ``directory`` is a real directory (not a symlink) of this user, not writable
    by others: only then is what we read there what we wrote."""
    try:
        st = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def load(path: Path | None = None) -> dict[str, Sample]:
    """The previous look's samples; {} whenever the file is absent or not what we wrote."""
    path = path or state_path()
    if not _ours(path.parent):
        return {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(_MAX_BYTES + 1)
        if len(raw) > _MAX_BYTES:
            return {}
        data = json.loads(raw)
        out = {}
        for key, value in data.get("samples", {}).items():
            when, messages, nbytes = value
            if not isinstance(when, (int, float)):
                continue
            out[str(key)] = Sample(
                str(key),
                float(when),
                messages if isinstance(messages, int) else None,
                nbytes if isinstance(nbytes, int) else None,
            )
        return out
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def save(samples: Iterable[Sample], path: Path | None = None) -> None:
    """Store this look's samples (best effort: any failure leaves the old file or none)."""
    path = path or state_path()
    data = {"samples": {s.key: [s.when, s.messages, s.bytes] for s in samples}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _ours(path.parent):
            return  # a directory someone else controls: keep nothing there
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def rates(before: Sample | None, now: Sample) -> tuple[float | None, float | None]:
    """(messages/s, bytes/s) between two samples of one segment; None where unknown (no
    previous look, counters that went backwards, no time between)."""
    if before is None:
        return None, None
    dt = now.when - before.when
    if dt <= 0:
        return None, None

    def rate(a: int | None, b: int | None) -> float | None:
        if a is None or b is None or b < a:
            return None
        return (b - a) / dt

    return rate(before.messages, now.messages), rate(before.bytes, now.bytes)


def now() -> float:
    return time.time()
