"""``shmipc gc`` and ``shmipc rm``: remove segments, and only what was examined.

``collect_garbage`` removes a segment only when every user it can have is known to be dead
(unknown keeps: docs/queue.md says exactly what it keeps); ``remove`` removes the named
segments the user asks for, refusing anything that is not a shmipc segment. Both unlink a
name only while it still names the regular file examined (same inode), never follow a
symlink and never open a FIFO or a device.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import _spill
from ..region import SHM_DIR
from .segments import (
    _SPILL_PREFIX,
    INCOMPLETE,
    MAGIC,
    UNREADABLE,
    NotASegment,
    SegmentInfo,
    _Users,
    display_name,
    is_incomplete,
    list_segments,
    open_regular,
    scan_users,
)

__all__ = ["GcReport", "RmResult", "collect_garbage", "remove"]


@dataclass
class GcReport:
    """What ``collect_garbage`` did (or, in a dry run, would do), segment by segment."""

    removed: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (name, what failed)


#: An incomplete segment (no header) younger than this may still be being made.
INCOMPLETE_GRACE_S = 60.0


def _why_keep(info: SegmentInfo, users: _Users) -> str | None:
    """Why ``info`` (not a spill) must stay, or None if every user it can have is dead."""
    if info.kind == INCOMPLETE:
        # Its maker holds the name open from creating it until it has mapped it (and the
        # header written): held by nobody we can see, and older than any creation takes,
        # its maker is gone. Whoever we cannot inspect may be the maker.
        if info.name in users.names:
            return "being made: open by a live process"
        if users.may_use(info):
            return "processes this user cannot inspect may be making it"
        if info.age < INCOMPLETE_GRACE_S:
            return f"no header yet, made {info.age:.0f} s ago: it may still be being made"
        return None
    if info.kind == UNREADABLE:
        return "cannot read its header (another user's segment)"
    if info.foreign_pidns:
        return "created in another pid namespace: its creator's liveness is unknown here"
    if info.creator_alive is None:
        return f"creator pid {info.creator_pid} may be alive (/proc does not say)"
    if info.creator_alive:
        return f"creator pid {info.creator_pid} is alive"
    if info.name in users.names:
        return "mapped or open by a live process"
    if users.may_use(info):
        return "processes this user cannot inspect may use it"
    return None


def _why_keep_spill(
    info: SegmentInfo, users: _Users, present: set[str], going: set[str]
) -> str | None:
    """Why a spill segment must stay: it stays unless its queue is known to be gone."""
    owner = _spill.owner_of(info.name)
    if owner is None:
        return "its queue is not known (a message may still be queued)"
    if info.name in users.names:
        return "open by a live process"
    if owner in present and owner not in going:
        return f"its queue {display_name(owner)} exists"
    if owner in users.names:
        return f"its queue {display_name(owner)} is still mapped by a live process"
    if users.may_use(info):
        return "processes this user cannot inspect may use its queue"
    return None


def _unlink_examined(info: SegmentInfo) -> None:
    """Unlink /dev/shm/NAME only if it is still the regular file examined (same inode)."""
    path = os.path.join(SHM_DIR, info.name)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != info.inode:
        raise FileExistsError(f"{display_name(info.name)} was replaced since it was examined")
    os.unlink(path)


def collect_garbage(*, dry_run: bool = True, names: Iterable[str] | None = None) -> GcReport:
    """Remove (with ``dry_run=False``) segments that nobody alive can still use: the creator
    is known to be dead and no visible process maps or holds it; spill segments only when
    their queue is known to be gone. Unknown means keep. An error on one segment is
    reported in the result and the others are still examined. ``names`` limits it to those
    segments (spill segments are judged against the whole of /dev/shm all the same)."""
    report = GcReport()
    try:
        present = set(os.listdir(SHM_DIR))  # every entry, readable to us or not
    except FileNotFoundError:
        present = set()
    segments = list_segments()
    if names is not None:
        wanted = set(names)
        segments = [info for info in segments if info.name in wanted]
    users = scan_users()
    going: set[str] = set()
    ordered = [i for i in segments if i.kind != "spill"] + [
        i for i in segments if i.kind == "spill"
    ]
    for info in ordered:
        if info.kind == "spill":
            why = _why_keep_spill(info, users, present, going)
        else:
            why = _why_keep(info, users)
        if why is not None:
            report.kept.append((info.name, why))
            continue
        if not dry_run:
            try:
                _unlink_examined(info)
            except FileNotFoundError:
                going.add(info.name)
                continue  # someone else removed it: gone all the same
            except OSError as exc:
                report.errors.append((info.name, exc.strerror or str(exc)))
                continue
        going.add(info.name)
        report.removed.append(info.name)
    return report


# ---- rm -------------------------------------------------------------------------------------


@dataclass
class RmResult:
    """What ``remove`` did with one name: ``status`` is "removed", "missing", "denied" or
    "refused", ``detail`` says why in words."""

    name: str
    status: str
    detail: str = ""


def _remove_one(name: str) -> RmResult:
    try:
        with open_regular(name) as (fd, st):
            if not name.startswith(_SPILL_PREFIX):
                head = os.pread(fd, len(MAGIC), 0)
                if head != MAGIC and not is_incomplete(name, st.st_size, head):
                    return RmResult(name, "refused", "not a shmipc segment (no shmipc header)")
            inode = (st.st_dev, st.st_ino)
    except FileNotFoundError:
        return RmResult(name, "missing", f"no such segment in {SHM_DIR}")
    except PermissionError:
        return RmResult(name, "denied", "permission denied (cannot read its header)")
    except NotASegment as exc:
        return RmResult(name, "refused", str(exc))
    except OSError as exc:
        return RmResult(name, "refused", exc.strerror or str(exc))
    path = os.path.join(SHM_DIR, name)
    try:
        now = os.lstat(path)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != inode:
            return RmResult(name, "refused", "replaced since it was examined")
        os.unlink(path)
    except FileNotFoundError:
        return RmResult(name, "missing", "removed by someone else meanwhile")
    except PermissionError as exc:
        return RmResult(name, "denied", exc.strerror or str(exc))
    except OSError as exc:
        return RmResult(name, "refused", exc.strerror or str(exc))
    return RmResult(name, "removed")


def remove(names: Iterable[str]) -> list[RmResult]:
    """Remove each named shmipc segment (or spill segment) from /dev/shm. A name that is
    invalid, missing, not a regular file or without a shmipc header is refused and the
    others are still handled. Processes that have a removed segment mapped keep using it;
    nobody can attach it any more."""
    from .._names import check_name

    results = []
    for raw in names:
        try:
            name = check_name(raw)
        except (TypeError, ValueError) as exc:
            results.append(RmResult(raw, "refused", str(exc)))
            continue
        results.append(_remove_one(name))
    return results
