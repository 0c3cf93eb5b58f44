"""What lives in /dev/shm: shmipc's segments, read without trusting anything there.

/dev/shm is shared with every other user and container: nothing in it is trusted. Entries
are examined without following symlinks or blocking (a FIFO, a device), only regular files
are read (``lstat``, then ``open(O_NOFOLLOW|O_NONBLOCK)`` and an inode check), names are
escaped before they reach the terminal, and nothing here ever writes to a segment.
"""

from __future__ import annotations

import mmap
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from .. import _proc
from ..layout import MAGIC, SEGMENT_LAYOUT, InitState, Kind, SegmentHeader, pid_namespace
from ..region import SHM_DIR

__all__ = [
    "INCOMPLETE",
    "INCOMPLETE_NOTE",
    "UNREADABLE",
    "NotASegment",
    "SegmentInfo",
    "display_name",
    "is_incomplete",
    "let_go",
    "list_others",
    "list_segments",
    "read_segment",
    "scan_users",
]

_SPILL_PREFIX = "shmipc_spill_"
UNREADABLE = "unreadable"  # the kind shown for a shmipc-named file we may not read
#: The kind shown for a shmipc-named file with no header yet (empty, or zeros where the magic
#: goes): a segment whose maker died (or is still working) between creating the name and
#: writing its header, e.g. killed while its space was being reserved (see is_incomplete).
INCOMPLETE = "incomplete"
#: What ls, top and inspect say of an incomplete segment.
INCOMPLETE_NOTE = "no header: its maker died making it, or is making it now"
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
    layout_version: int = 0
    flags: int = 0  # the header's kind-specific bits (a queue's codec)


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


def is_incomplete(name: str, size: int, head: bytes) -> bool:
    """Whether a shmipc-named file is a segment whose header was never written: empty (its
    space not reserved yet) or zeros where the header's magic goes (reserved, not headed)."""
    blank = head[: len(MAGIC)] == bytes(len(MAGIC)) and len(head) >= len(MAGIC)
    return name.startswith("shmipc") and (size == 0 or blank)


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
    if is_incomplete(name, st.st_size, raw):
        return replace(base, kind=INCOMPLETE)
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
        layout_version=header.layout_version,
        flags=header.flags,
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
    pids: dict[str, set[int]] = field(default_factory=dict)  # name -> pids mapping/holding it
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
        found: set[str] = set()
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
                for line in f:
                    parts = line.rstrip("\n").split(maxsplit=5)
                    if len(parts) == 6 and (name := _shm_name(parts[5])):
                        found.add(name)
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    name = _shm_name(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except OSError:
                    continue
                if name:
                    found.add(name)
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended meanwhile
        except OSError:
            try:
                st = os.stat(f"/proc/{pid}")
            except OSError:
                continue
            users.hidden.add((st.st_uid, st.st_gid))
        finally:
            users.names |= found
            for name in found:
                users.pids.setdefault(name, set()).add(int(pid))
    return users


scan_users = _scan_users


# ---- everything else in /dev/shm (ls --all) -------------------------------------------------


def _file_type(mode: int) -> str:
    for test, what in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "char device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return what
    return "not shmipc"


def list_others(known: set[str]) -> list[SegmentInfo]:
    """Every /dev/shm entry not in ``known`` (the shmipc segments), from ``lstat`` alone:
    never opened, never followed."""
    try:
        names = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        return []
    out = []
    now = time.time()
    for name in names:
        if name in known:
            continue
        try:
            st = os.lstat(os.path.join(SHM_DIR, name))
        except OSError:
            continue
        info = SegmentInfo(name, st.st_size, _file_type(st.st_mode), None, None, "-", 0.0)
        out.append(
            replace(
                info,
                age=now - st.st_mtime,
                inode=(st.st_dev, st.st_ino),
                uid=st.st_uid,
                gid=st.st_gid,
                mode=stat.S_IMODE(st.st_mode),
            )
        )
    return out


# ---- reading one segment ------------------------------------------------------------------


class NotASegment(Exception):
    """NAME in /dev/shm is not something shmipc can read as a segment (a FIFO, a symlink,
    another program's file, a corrupt header): the message says which."""


#: Segments up to this size are read with one pread (a private copy: nothing another process
#: does to the file can hurt us); larger ones are mapped read-only.
READ_LIMIT = 64 << 20


@contextmanager
def open_regular(name: str) -> Iterator[tuple[int, os.stat_result]]:
    """(fd, stat) of /dev/shm/NAME opened read-only, only if it is a regular file: never
    follows a symlink, never blocks on a FIFO, and checks that the file opened is the one
    lstat saw. FileNotFoundError / PermissionError as the system says; NotASegment else."""
    path = os.path.join(SHM_DIR, name)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotASegment(f"it is a {_file_type(st.st_mode)}, not a segment")
    fd = os.open(path, _OPEN_FLAGS)
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise NotASegment("it was replaced while it was opened")
        yield fd, fst
    finally:
        os.close(fd)


def let_go(view: memoryview) -> None:
    """Release a view read_segment returned; one still exported (a slice a kind module
    kept) is left to the garbage collector rather than raising."""
    try:
        view.release()
    except BufferError:
        pass


def read_segment(name: str, limit: int | None = None) -> tuple[os.stat_result, memoryview]:
    """A read-only view of the first ``limit`` bytes (default: all) of /dev/shm/NAME: a
    private copy up to READ_LIMIT, a PROT_READ mapping above it. Never writes, never waits."""
    with open_regular(name) as (fd, st):
        size = st.st_size if limit is None else min(limit, st.st_size)
        if size <= READ_LIMIT:
            data = bytearray()
            while len(data) < size:  # pread may return less than asked
                chunk = os.pread(fd, size - len(data), len(data))
                if not chunk:
                    break
                data += chunk
            return st, memoryview(bytes(data))
        mapped = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        return st, memoryview(mapped)
