"""``shmipc ls`` and ``shmipc gc``: never hang, never lie, never remove what is in use.

Every test works on segments it made itself (unique ``shmipc_test_...`` names, removed
afterwards) and runs gc on those names only, since other test runs share /dev/shm.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from _procs import Child

from shmipc import _proc, _spill, cli
from shmipc.cli import commands, survey
from shmipc.layout import (
    LAYOUT_VERSION,
    MAGIC,
    SEGMENT_LAYOUT,
    InitState,
    Kind,
    SegmentHeader,
    pid_namespace,
)
from shmipc.region import SHM_DIR

pytestmark = pytest.mark.timeout(90)

NOBODY = 65534
# The uid of the unprivileged gc below: one no other process uses (random, high), since a
# process of the segment owner's uid that gc cannot inspect (one that changed uid is not
# dumpable) rightly keeps the segment.
GC_UID = 100_000 + secrets.randbelow(1 << 20)


@pytest.fixture
def made():
    """Names of the test's /dev/shm entries: each is removed at teardown."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass


def _name(tag: str) -> str:
    return f"shmipc_test_{tag}_{secrets.token_hex(6)}"


def _dead_pid() -> tuple[int, int]:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0)
    started = _proc.self_identity()[1] + 1
    os.waitpid(pid, 0)
    return pid, started


def _segment(
    made, tag, *, pid, started, pidns=None, uid=None, gid=None, mode=0o600, name=None
) -> str:
    """A regular file in /dev/shm with a shmipc header naming creator (pid, started)."""
    name = name or _name(tag)
    size = SEGMENT_LAYOUT.size + 64
    header = SegmentHeader(
        MAGIC,
        LAYOUT_VERSION,
        int(Kind.REGION),
        int(InitState.READY),
        pid,
        started,
        size,
        SEGMENT_LAYOUT.size,
        os.geteuid(),
        0,
        pid_namespace() if pidns is None else pidns,
    )
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    made.append(name)
    try:
        os.write(fd, header.pack().ljust(size, b"\0"))
    finally:
        os.close(fd)
    if uid is not None:
        os.chown(path, uid, uid if gid is None else gid)
        os.chmod(path, mode)
    return name


def _spill_file(made, *, age=0.0) -> str:
    name = f"shmipc_spill_test_{secrets.token_hex(6)}"
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    made.append(name)
    os.write(fd, b"payload")
    os.close(fd)
    os.chown(path, NOBODY, NOBODY)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return name


def _exists(name: str) -> bool:
    return os.path.lexists(os.path.join(SHM_DIR, name))


def _run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(
        [sys.executable, "-m", "shmipc.cli", *args],
        capture_output=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


# ---- gc: only what every user has left ---------------------------------------------------------


def test_gc_is_a_dry_run_unless_told_yes(made):
    pid, started = _dead_pid()
    name = _segment(made, "gcdry", pid=pid, started=started, uid=NOBODY)
    r = _run_cli("gc", name)
    assert r.returncode == 0, r.stderr
    assert f"would remove {name}".encode() in r.stdout
    assert _exists(name)
    r = _run_cli("gc", "--yes", name)
    assert r.returncode == 0, r.stderr
    assert f"removed {name}".encode() in r.stdout
    assert not _exists(name)


def test_gc_keeps_a_live_creators_segment(made):
    pid, started = _proc.self_identity()
    name = _segment(made, "gclive", pid=pid, started=started, uid=NOBODY)
    report = cli.collect_garbage(dry_run=False, names=[name])
    assert report.removed == [] and _exists(name)
    assert "alive" in dict(report.kept)[name]


def test_gc_keeps_a_segment_made_in_another_pid_namespace(made):
    """Its creator pid means another process here (or none): its liveness is unknown."""
    pid, started = _dead_pid()
    name = _segment(made, "gcns", pid=pid, started=started, pidns=pid_namespace() + 1, uid=NOBODY)
    report = cli.collect_garbage(dry_run=False, names=[name])
    assert report.removed == [] and _exists(name)
    assert "pid namespace" in dict(report.kept)[name]


@contextlib.contextmanager
def _used_by_child(name: str, *, mapped: bool) -> Iterator[None]:
    """A child process that maps /dev/shm/NAME (its fd closed) or holds it open, until the
    block ends; entered once gc's scan sees it."""
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - child: waits for EOF, then exits
        m = mmap.mmap(fd, 0) if mapped else None
        if mapped:
            os.close(fd)
        os.close(wfd)
        os.read(rfd, 1)
        if m is not None:
            m.close()
        os._exit(0)
    os.close(fd)
    os.close(rfd)
    try:
        deadline = time.monotonic() + 20
        while name not in cli._scan_users().names:
            assert time.monotonic() < deadline, "the child never mapped or opened the segment"
            time.sleep(0.01)
        yield
    finally:
        os.close(wfd)
        os.waitpid(child, 0)


def _incomplete(made, tag: str, *, size: int, age: float) -> str:
    """A shmipc-named file as a maker killed before its header leaves it: ``size`` zero
    bytes (0: not even its space reserved), last changed ``age`` seconds ago, owned by
    NOBODY (so that root's processes gc cannot inspect do not count)."""
    name = _name(tag)
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    made.append(name)
    try:
        if size:
            os.ftruncate(fd, size)
        os.fchown(fd, NOBODY, NOBODY)
    finally:
        os.close(fd)
    then = time.time() - age
    os.utime(path, (then, then))
    return name


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another uid")
@pytest.mark.parametrize("size", [0, SEGMENT_LAYOUT.size + 64], ids=["empty", "reserved"])
def test_an_incomplete_segment_is_listed_and_collected_once_nobody_can_be_making_it(
    made, size
):
    """A maker killed between creating the name and writing the header (the OOM killer, while
    the space was being reserved) leaves a header-less file: ls shows it, gc keeps it while
    it may still be being made (young, or held open) and removes it after."""
    young = _incomplete(made, "young", size=size, age=0)
    old = _incomplete(made, "old", size=size, age=600)
    held = _incomplete(made, "held", size=size, age=600)
    rows = {r["name"]: r for r in survey.rows()}
    for name in (young, old, held):
        assert rows[name]["kind"] == cli.INCOMPLETE and rows[name]["creator"]["pid"] is None
        assert "no header" in rows[name]["note"]
        shown = commands.inspect_segment(name)  # inspect agrees with ls
        assert shown["kind"] == cli.INCOMPLETE and "no header" in shown["note"]
    with _used_by_child(held, mapped=False):  # as its maker holds it
        report = cli.collect_garbage(dry_run=False, names=[young, old, held])
    kept = dict(report.kept)
    assert report.removed == [old] and not _exists(old)
    assert "may still be being made" in kept[young] and _exists(young)
    assert "open by a live process" in kept[held] and _exists(held)


def test_rm_removes_an_incomplete_segment_but_not_a_stranger(made):
    empty = _incomplete(made, "rmempty", size=0, age=0)
    blank = _incomplete(made, "rmblank", size=4096, age=0)
    stranger = _name("rmstranger")
    with open(os.path.join(SHM_DIR, stranger), "wb") as f:
        f.write(b"not ours at all")
    made.append(stranger)
    results = {r.name: r for r in cli.remove([empty, blank, stranger])}
    assert results[empty].status == results[blank].status == "removed"
    assert not _exists(empty) and not _exists(blank)
    assert results[stranger].status == "refused" and _exists(stranger)


def test_gc_keeps_a_dead_creators_segment_still_mapped(made):
    pid, started = _dead_pid()
    name = _segment(made, "gcmapped", pid=pid, started=started, uid=NOBODY)
    with _used_by_child(name, mapped=True):
        report = cli.collect_garbage(dry_run=False, names=[name])
        assert report.removed == [] and _exists(name)
        assert "mapped" in dict(report.kept)[name]


def test_gc_keeps_an_old_spill_whose_queue_is_unknown(made):
    """A spilled message still queued, however old, is not garbage."""
    name = _spill_file(made, age=2 * 3600)
    report = cli.collect_garbage(dry_run=False, names=[name])
    assert report.removed == [] and _exists(name)
    assert "queue" in dict(report.kept)[name]


def test_gc_removes_a_spill_only_when_its_queue_is_known_gone(made, monkeypatch):
    pid, started = _proc.self_identity()
    queue = _segment(made, "gcq", pid=pid, started=started, uid=NOBODY)
    spill = _spill_file(made)
    monkeypatch.setattr(_spill, "owner_of", lambda name: queue if name == spill else None)
    report = cli.collect_garbage(dry_run=False, names=[spill])
    assert report.removed == [] and _exists(spill)  # its queue is there
    os.unlink(os.path.join(SHM_DIR, queue))
    report = cli.collect_garbage(dry_run=False, names=[spill])
    assert report.removed == [spill] and not _exists(spill)


def test_gc_removes_the_spills_of_a_queue_it_removes(made, monkeypatch):
    pid, started = _dead_pid()
    queue = _segment(made, "gcq", pid=pid, started=started, uid=NOBODY)
    spill = _spill_file(made)
    monkeypatch.setattr(_spill, "owner_of", lambda name: queue if name == spill else None)
    report = cli.collect_garbage(dry_run=True, names=[queue, spill])
    assert sorted(report.removed) == sorted([queue, spill])
    assert _exists(queue) and _exists(spill)  # a dry run


def test_gc_reports_a_permission_error_and_goes_on(made):
    """An unprivileged gc meets a segment it may read (its group's) but not unlink (sticky
    /dev/shm, another user's file) first: reported, and the next one is still removed."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make files of two other users")
    pid, started = _dead_pid()
    tag = secrets.token_hex(6)
    theirs = _segment(
        made,
        "",
        pid=pid,
        started=started,
        uid=GC_UID + 1,
        gid=GC_UID,
        mode=0o640,
        name=f"shmipc_test_gcperm_a_{tag}",
    )
    mine = _segment(
        made, "", pid=pid, started=started, uid=GC_UID, name=f"shmipc_test_gcperm_b_{tag}"
    )
    assert stat.S_IMODE(os.stat(SHM_DIR).st_mode) & stat.S_ISVTX

    def gc(fd: int) -> None:
        os.setgroups([])
        os.setgid(GC_UID)
        os.setuid(GC_UID)
        report = cli.collect_garbage(dry_run=False, names=[theirs, mine])
        os.write(fd, repr((report.removed, [n for n, _ in report.errors])).encode())

    code, out = Child(gc).finish()
    assert code == 0
    assert out == repr(([mine], [theirs])).encode()
    assert _exists(theirs) and not _exists(mine)


def test_another_users_unreadable_segment_is_listed_and_kept(made):
    """An unprivileged ls/gc cannot read a root 0600 segment: it says so and keeps it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a reader of another uid")
    pid, started = _dead_pid()
    name = _segment(made, "gcunread", pid=pid, started=started)

    def look(fd: int) -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        kinds = [i.kind for i in cli.list_segments() if i.name == name]
        report = cli.collect_garbage(dry_run=False, names=[name])
        os.write(fd, repr((kinds, report.removed, [n for n, _ in report.kept])).encode())

    code, out = Child(look).finish()
    assert code == 0
    assert out == repr(([cli.UNREADABLE], [], [name])).encode()
    assert _exists(name)


# ---- ls and gc: never hang, never follow, never print raw -------------------------------------


def test_ls_and_gc_survive_a_fifo_a_symlink_and_a_control_character_name(made):
    pid, started = _dead_pid()
    target = _segment(made, "gctarget", pid=pid, started=started, uid=NOBODY)
    fifo = _name("fifo")
    os.mkfifo(os.path.join(SHM_DIR, fifo))
    made.append(fifo)
    link = _name("link")
    os.symlink(os.path.join(SHM_DIR, target), os.path.join(SHM_DIR, link))
    made.append(link)
    weird = _segment(
        made,
        "",
        pid=pid,
        started=started,
        uid=NOBODY,
        name=f"shmipc_test_\x1b[2J\x07\n_{secrets.token_hex(6)}",
    )
    r = _run_cli("ls")  # a FIFO opened for reading would block here forever
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert b"\x1b" not in out and b"\x07" not in out
    assert display(weird).encode() in out
    assert b"\\x1b[2J\\x07\\n" in out
    assert target.encode() in out
    assert link.encode() not in out and fifo.encode() not in out  # not segments
    r = _run_cli("gc", "--yes", fifo, link, weird)
    assert r.returncode == 0, r.stderr
    assert b"\x1b" not in r.stdout
    assert _exists(fifo) and _exists(link) and _exists(target)  # gc removes regular files only
    assert not _exists(weird)


def display(name: str) -> str:
    return cli.display_name(name)


def test_display_name_escapes_what_a_terminal_would_act_on():
    assert cli.display_name("shmipc_abc") == "shmipc_abc"
    assert cli.display_name("a\x1bb\nc\td") == "a\\x1bb\\nc\\td"
    assert cli.display_name("a\\b") == "a\\\\b"
    assert cli.display_name(os.fsdecode(b"a\xffb")) == "a\\xffb"
    assert cli.display_name("a\u202eb") == "a\\u202eb"  # right-to-left override
