"""The ``shmipc`` command: run the demo and the benchmark, list and clean up segments.

shmipc demo            the quickstart producer/consumer job, with its numbers
shmipc bench [...]     shmipc beside multiprocessing, faster-fifo and pyzmq
shmipc ls              shmipc's segments in /dev/shm, with their kind and creator
shmipc gc [--yes]      list (or, with --yes, remove) segments nobody alive can still use

/dev/shm is shared with every other user and container: nothing in it is trusted. Entries
are examined without following symlinks or blocking (a FIFO, a device), only regular files
are read, and names are escaped before they reach the terminal. ``gc`` removes a segment
only when every user it can have is known to be dead; whatever it cannot know, it keeps.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from . import _proc, _spill
from .layout import MAGIC, SEGMENT_LAYOUT, InitState, Kind, SegmentHeader, pid_namespace
from .region import SHM_DIR

__all__ = ["GcReport", "SegmentInfo", "collect_garbage", "display_name", "list_segments", "main"]

_SPILL_PREFIX = "shmipc_spill_"
UNREADABLE = "unreadable"  # the kind shown for a shmipc-named file we may not read
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class SegmentInfo:
    """What ``shmipc ls`` knows of one regular file in /dev/shm.

    ``creator_alive`` is True, False (known dead) or None (not known: another pid namespace,
    /proc hiding it; or a spill segment, which has no creator header).
    """

    name: str
    size: int
    kind: str
    creator_pid: int | None
    creator_alive: bool | None
    state: str
    age: float
    inode: tuple[int, int] = (0, 0)  # (st_dev, st_ino): unlink only the file examined
    uid: int = -1
    gid: int = -1
    mode: int = 0
    foreign_pidns: bool = False


def display_name(name: str) -> str:
    """``name`` safe for a terminal: control and non-printable characters (and bytes that
    are not UTF-8) escaped as repr does, backslashes doubled."""
    out = []
    for ch in name:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # a byte os.listdir could not decode (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)


def _read_entry(name: str) -> tuple[os.stat_result, bytes | None] | None:
    """(stat, first header bytes) of /dev/shm/NAME if it is a regular file, None otherwise;
    the bytes are None for a spill segment (never opened: its name says what it is) or a
    file we may not read. Never follows a symlink, never blocks (a FIFO), never opens a
    device, socket or directory."""
    path = os.path.join(SHM_DIR, name)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    if name.startswith(_SPILL_PREFIX):
        return st, None
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except PermissionError:
        return st, None
    except OSError:
        return None
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            return None  # replaced between lstat and open
        return st, os.pread(fd, SEGMENT_LAYOUT.size, 0)
    except OSError:
        return None
    finally:
        os.close(fd)


def _describe(name: str) -> SegmentInfo | None:
    entry = _read_entry(name)
    if entry is None:
        return None
    st, raw = entry
    age = time.time() - st.st_mtime
    base = SegmentInfo(  # as a spill segment; a headed one replaces what its header says
        name, st.st_size, "spill", None, None, "-", age,
        (st.st_dev, st.st_ino), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode),
    )  # fmt: skip
    if name.startswith(_SPILL_PREFIX):
        return base
    if raw is None:  # another user's, not readable to us: say so rather than hide it
        return replace(base, kind=UNREADABLE) if name.startswith("shmipc") else None
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
    ours = pid_namespace()
    foreign = bool(header.creator_pidns and ours and header.creator_pidns != ours)
    alive: bool | None
    if foreign:
        alive = None  # its pid means another process (or none) here: cannot tell
    else:
        verdict = _proc.process_state(header.creator_pid, header.creator_start)
        alive = None if verdict is _proc.Liveness.UNKNOWN else verdict is _proc.Liveness.ALIVE
    return replace(
        base,
        kind=kind,
        creator_pid=header.creator_pid,
        creator_alive=alive,
        state=state,
        foreign_pidns=foreign,
    )


def list_segments() -> list[SegmentInfo]:
    """Every shmipc segment (and spill segment) in /dev/shm: regular files only."""
    try:
        names = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return []
    return [info for info in map(_describe, names) if info is not None]


# ---- who uses a segment -------------------------------------------------------------------


@dataclass
class _Users:
    """The /dev/shm names that visible processes map or hold open (unlinked ones too), and
    the (uid, gid) of processes that could not be inspected."""

    names: set[str] = field(default_factory=set)
    hidden: set[tuple[int, int]] = field(default_factory=set)
    invisible: bool = False  # /proc hides other users' processes from us (hidepid)

    def may_use(self, info: SegmentInfo) -> bool:
        """Whether a process we could not inspect may use ``info``: its mode lets that
        process's uid or gid in, or lets others in while some processes are invisible.
        Root's processes are counted only by their ids (root may open anything; counting
        that would stop an unprivileged gc for good): a limit, see docs/queue.md."""
        if info.mode & 0o006 and (self.hidden or self.invisible):
            return True
        if info.mode & 0o060 and self.invisible:
            return True
        return any(
            uid == info.uid or (gid == info.gid and info.mode & 0o060) for uid, gid in self.hidden
        )


_SHM_PREFIX = SHM_DIR + "/"


def _shm_name(path: str) -> str | None:
    if not path.startswith(_SHM_PREFIX):
        return None
    name = path[len(_SHM_PREFIX) :]
    return name[: -len(" (deleted)")] if name.endswith(" (deleted)") else name


def _proc_hides_others() -> bool:
    if os.geteuid() == 0:
        return False
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and parts[4] == "/proc" and " - proc " in line:
                    opts = line.rsplit(" ", 1)[-1]
                    return any(
                        o.startswith("hidepid=") and o not in ("hidepid=0", "hidepid=off")
                        for o in opts.strip().split(",")
                    )
    except OSError:
        return True
    return False


def _scan_users() -> _Users:
    users = _Users(invisible=_proc_hides_others())
    me = str(os.getpid())
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
    except OSError:
        users.invisible = True
        return users
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
                for line in f:
                    parts = line.rstrip("\n").split(maxsplit=5)
                    if len(parts) == 6 and (name := _shm_name(parts[5])):
                        users.names.add(name)
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    name = _shm_name(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except OSError:
                    continue
                if name:
                    users.names.add(name)
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended meanwhile
        except OSError:
            try:
                st = os.stat(f"/proc/{pid}")
            except OSError:
                continue
            users.hidden.add((st.st_uid, st.st_gid))
    return users


# ---- gc -----------------------------------------------------------------------------------


@dataclass
class GcReport:
    """What ``collect_garbage`` did (or, in a dry run, would do), segment by segment."""

    removed: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (name, what failed)


def _why_keep(info: SegmentInfo, users: _Users) -> str | None:
    """Why ``info`` (not a spill) must stay, or None if every user it can have is dead."""
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
    users = _scan_users()
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


def _ls(_: argparse.Namespace) -> int:
    rows = list_segments()
    if not rows:
        print(f"no shmipc segments in {SHM_DIR}")
        return 0
    print(f"{'name':40} {'kind':14} {'bytes':>12} {'creator':>8} {'alive':>6} state")
    for r in rows:
        if r.creator_pid is None:
            alive = "-"
        else:
            alive = "?" if r.creator_alive is None else ("yes" if r.creator_alive else "DEAD")
        pid = "-" if r.creator_pid is None else str(r.creator_pid)
        print(f"{display_name(r.name):40} {r.kind:14} {r.size:>12,} {pid:>8} {alive:>6} {r.state}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    dry_run = not args.yes
    report = collect_garbage(dry_run=dry_run, names=args.names or None)
    verb = "would remove" if dry_run else "removed"
    for name in report.removed:
        print(f"{verb} {display_name(name)}")
    if args.verbose:
        for name, why in report.kept:
            print(f"kept {display_name(name)}: {why}")
    for name, what in report.errors:
        print(f"cannot remove {display_name(name)}: {what}", file=sys.stderr)
    print(f"{verb} {len(report.removed)} segment(s), kept {len(report.kept)}", end="")
    print(f", {len(report.errors)} error(s)" if report.errors else "")
    if dry_run and report.removed:
        print("(a dry run: pass --yes to remove them)")
    return 1 if report.errors else 0


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
    gc = sub.add_parser("gc", help="list (--yes: remove) segments nobody alive can use")
    how = gc.add_mutually_exclusive_group()
    how.add_argument("--yes", action="store_true", help="remove them (default: only list)")
    how.add_argument("--dry-run", action="store_true", help="only list (the default)")
    gc.add_argument("names", nargs="*", metavar="NAME", help="only these segments")
    gc.add_argument("-v", "--verbose", action="store_true", help="say why others are kept")
    gc.set_defaults(func=_gc)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
