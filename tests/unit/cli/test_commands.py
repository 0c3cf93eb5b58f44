"""The ``shmipc`` command on real segments: ls, inspect, top, rm, exit codes and --help.

Every test works on segments it made itself (unique ``shmipc_test_...`` names, removed
afterwards). Commands run as subprocesses (``python -m shmipc.cli``), as users run them,
except where a fake module has to be put in place (then ``cli.main`` runs in-process).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import subprocess
import sys
import time

import pytest
from _procs import Child, read_exact_or_fail, wait_for
from cli_schemas import INSPECT, LS, validate

import shmipc
from shmipc import _proc, cli
from shmipc._native import lib
from shmipc.cli import commands, jobs, live  # loaded before a child drops privileges
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

pytestmark = pytest.mark.timeout(120)

NOBODY = 65534
_LOADED = (commands, jobs, live)
COMMANDS = ["ls", "inspect", "top", "rm", "gc", "demo", "bench"]


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


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    """ls keeps its rate samples here, not in the user's cache."""
    monkeypatch.setenv("SHMIPC_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def _name(tag: str) -> str:
    return f"shmipc_test_{tag}_{secrets.token_hex(6)}"


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(
        [sys.executable, "-m", "shmipc.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _write_segment(made, tag, *, kind=Kind.REGION, size=None, total=None, body=b"") -> str:
    """A regular file in /dev/shm with a shmipc header (creator: this process)."""
    name = _name(tag)
    pid, started = _proc.self_identity()
    size = size or SEGMENT_LAYOUT.size + max(64, len(body))
    header = SegmentHeader(
        MAGIC, LAYOUT_VERSION, int(kind), int(InitState.READY), pid, started,
        size if total is None else total, SEGMENT_LAYOUT.size, os.geteuid(), 0, pid_namespace(),
    )  # fmt: skip
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    made.append(name)
    try:
        os.write(fd, (header.pack().ljust(SEGMENT_LAYOUT.size, b"\0") + body).ljust(size, b"\0"))
    finally:
        os.close(fd)
    return name


def _ls_json() -> dict:
    r = run("ls", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    validate(data, LS)
    return data


def _row(data: dict, name: str) -> dict:
    rows = [row for row in data["segments"] if row["name"] == name]
    assert len(rows) == 1, f"{name} listed {len(rows)} times"
    return rows[0]


def _sha(name: str) -> str:
    with open(os.path.join(SHM_DIR, name), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---- version, help, usage --------------------------------------------------------------------


def test_version_and_help_on_every_command():
    r = run("--version")
    assert r.returncode == 0 and shmipc.__version__ in r.stdout
    r = run("--help")
    assert r.returncode == 0
    for command in COMMANDS:
        assert command in r.stdout
    assert "Exit codes" in r.stdout
    for command in COMMANDS:
        r = run(command, "--help")
        assert r.returncode == 0, (command, r.stderr)
        assert "Examples:" in r.stdout, command
        assert f"shmipc {command}" in r.stdout, command


@pytest.mark.parametrize(
    "argv",
    [["ls", "--bogus"], ["nosuchcommand"], ["inspect"], ["rm"], ["inspect", "a/b"],
     ["top", "--interval", "0"], ["gc", "--yes", "--dry-run"], ["bench", "--size", "1G"]],
)  # fmt: skip
def test_usage_errors_exit_2(argv):
    r = run(*argv)
    assert r.returncode == 2, (argv, r.stdout, r.stderr)
    assert r.stderr.strip(), "a usage error says what is wrong"


def test_missing_segment_exits_3():
    name = _name("missing")
    r = run("inspect", name)
    assert r.returncode == 3 and "no segment" in r.stderr
    r = run("rm", name)
    assert r.returncode == 3 and name in r.stderr


# ---- ls ------------------------------------------------------------------------------------


def test_ls_lists_real_segments_with_depth_creator_and_users():
    qname, rname = _name("lsq"), _name("lsr")
    q = shmipc.Queue(name=qname, capacity=1 << 16)
    ring = shmipc.Ring.create(1 << 12, name=rname)
    lock = shmipc.Lock.create(_name("lslock"))
    try:
        for i in range(7):
            q.put({"i": i})
        data = _ls_json()
        row = _row(data, qname)
        assert row["kind"] == "queue" and row["depth"] == 7 and row["messages"] == 7
        assert row["creator"] == {"pid": os.getpid(), "alive": "alive"}
        assert os.getpid() in row["participants"]["pids"]  # we map it
        assert row["owner"]["uid"] == os.geteuid() and row["owner"]["mode"] == "0600"
        assert row["size"] == os.stat(os.path.join(SHM_DIR, qname)).st_size
        assert _row(data, rname)["depth"] == 0
        assert _row(data, lock.name)["kind"] == "lock"
        assert _row(data, lock.name)["depth"] is None
        r = run("ls")
        assert r.returncode == 0, r.stderr
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(qname))
        assert "queue" in line and "alive" in line
    finally:
        q.close()
        ring.close()
        lock.close()


def test_ls_rates_since_the_last_look_and_a_corrupt_state_file(state_dir):
    qname = _name("lsrate")
    q = shmipc.Queue(name=qname, capacity=1 << 16)
    try:
        first = _row(_ls_json(), qname)
        assert first["rates"] == {"messages_per_s": None, "bytes_per_s": None}
        for _ in range(50):
            q.put_bytes(b"x" * 10)
        second = _row(_ls_json(), qname)
        assert second["rates"]["messages_per_s"] > 0
        assert second["rates"]["bytes_per_s"] > 0
        (state_dir / "ls-state.json").write_bytes(b"\x00{not json")
        third = _row(_ls_json(), qname)  # a corrupt state file is no previous look
        assert third["rates"]["messages_per_s"] is None
        assert json.loads((state_dir / "ls-state.json").read_text())["samples"]
    finally:
        q.close()


def test_the_state_file_is_kept_only_in_a_directory_of_ours(tmp_path):
    from shmipc.cli import rates

    sample = rates.Sample("shmipc_x:1:2", 100.0, 5, 50)
    mine = tmp_path / "mine" / "ls-state.json"
    rates.save([sample], mine)
    assert rates.load(mine) == {sample.key: sample}
    assert os.stat(mine).st_mode & 0o777 == 0o600
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # writable by others: not trusted
    rates.save([sample], shared / "ls-state.json")
    assert not (shared / "ls-state.json").exists()
    link = tmp_path / "link"
    link.symlink_to(mine.parent)  # a symlinked directory is not followed
    assert rates.load(link / "ls-state.json") == {}
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        (theirs / "ls-state.json").write_text(mine.read_text())
        os.chown(theirs, NOBODY, NOBODY)
        assert rates.load(theirs / "ls-state.json") == {}


def test_ls_all_shows_a_fifo_and_a_symlink_without_opening_them(made):
    target = _write_segment(made, "lstarget")
    fifo, link = _name("lsfifo"), _name("lslink")
    os.mkfifo(os.path.join(SHM_DIR, fifo))
    made.append(fifo)
    os.symlink(os.path.join(SHM_DIR, target), os.path.join(SHM_DIR, link))
    made.append(link)
    data = _ls_json()  # a FIFO opened for reading would block here
    names = {row["name"] for row in data["segments"]}
    assert target in names and fifo not in names and link not in names
    r = run("ls", "--all", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    validate(data, LS)
    assert _row(data, fifo)["kind"] == "fifo" and not _row(data, fifo)["shmipc"]
    assert _row(data, link)["kind"] == "symlink"
    assert _row(data, target)["shmipc"]


def test_ls_shows_another_users_segment_and_a_corrupt_one(made):
    """A queue made by a setuid(65534) child is listed with its owner; a segment whose
    ring is garbage is listed with a note, not a crash."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a child as another uid")
    theirs = _name("lsnobody")
    go_r, go_w = os.pipe()

    def make(fd: int) -> None:
        os.close(go_w)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        q = shmipc.Queue(name=theirs, capacity=1 << 12)
        q.put(1)
        os.write(fd, b"ready")
        os.read(go_r, 1)  # until the parent closes its end
        q.close()

    child = Child(make)
    os.close(go_r)
    try:
        assert read_exact_or_fail(child.fd, 5) == b"ready"
        corrupt = _write_segment(made, "lscorrupt", kind=Kind.QUEUE, size=4096)
        data = _ls_json()
        row = _row(data, theirs)
        assert row["owner"]["uid"] == NOBODY and row["kind"] == "queue"
        assert row["creator"]["pid"] == child.pid and row["depth"] == 1
        bad = _row(data, corrupt)
        assert bad["kind"] == "queue" and bad["depth"] is None
        assert "cannot describe" in bad["note"] and "ring" in bad["note"]
        r = run("inspect", corrupt)
        assert r.returncode == 1 and "no ring control block" in r.stderr, r.stderr
    finally:
        os.close(go_w)
        code, _ = child.finish()
    assert code == 0


# ---- inspect -------------------------------------------------------------------------------


def test_inspect_a_queue_shows_ring_statistics_and_changes_nothing():
    qname = _name("insq")
    q = shmipc.Queue(name=qname, capacity=1 << 16)
    try:
        for _ in range(5):
            q.put_bytes(b"abcdefgh")
        q.get_bytes()
        before = _sha(qname)
        r = run("inspect", qname, "--json")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        validate(data, INSPECT)
        ring = data["ring"]
        assert data["kind"] == "queue" and data["codec"] == "msgpack"
        assert data["header"]["layout_version"] == LAYOUT_VERSION
        assert ring["capacity"] == 1 << 16
        assert ring["statistics"]["messages_in"] == 5
        assert ring["statistics"]["messages_out"] == 1
        assert ring["statistics"]["depth"] == 4
        assert ring["statistics"]["bytes_in"] == 40
        assert ring["positions"]["tail"] > ring["positions"]["head"] > 0
        assert ring["positions"]["consistent"] and ring["positions"]["claim"] is None
        assert ring["quarantine"]["bytes"] == 0 and ring["quarantine"]["owner"] is None
        assert data["creator"] == {"pid": os.getpid(), "alive": "alive"}
        assert _sha(qname) == before  # looking wrote nothing
        r = run("inspect", qname)
        assert r.returncode == 0, r.stderr
        assert "messages_in: 5" in r.stdout and "capacity: 65536" in r.stdout
    finally:
        q.close()


@pytest.mark.timeout(60)
def test_inspect_shows_a_sleeping_consumer_and_a_held_lock():
    qname = _name("inssleep")
    q = shmipc.Queue(name=qname, capacity=1 << 12)
    lock = shmipc.Lock.create(_name("inslock"))
    lock.acquire()

    def consume(fd: int) -> None:
        got = q.get(timeout=30)
        os.write(fd, repr(got).encode())

    child = Child(consume)
    try:
        seen: list[dict] = []

        def asleep() -> bool:
            """A snapshot with the consumer registered (it re-registers every wait slice,
            so a look between two slices finds none: look again)."""
            r = run("inspect", qname, "--json")
            assert r.returncode == 0, r.stderr
            sleepers = json.loads(r.stdout)["ring"]["sleepers"]["consumers"]
            seen[:] = [sleepers]
            return sleepers["count"] >= 1 and bool(sleepers["registered"])

        wait_for(asleep, timeout=30, what="the consumer to sleep")
        registered = seen[0]["registered"]
        assert [s["alive"] for s in registered] == ["alive"]
        assert registered[0]["tid"] == child.pid  # its only thread
        r = run("inspect", lock.name, "--json")
        held = json.loads(r.stdout)["sync"]
        assert held["holder"]["tid"] == lib.shmipc_lock_identity() & 0x7FFFFFFF
        assert held["holder"]["alive"] == "alive"
    finally:
        q.put("wake")
        code, out = child.finish()
        lock.release()
        lock.close()
        q.close()
    assert code == 0 and out == b"'wake'"


def test_inspect_refuses_corrupt_foreign_and_odd_entries(made):
    # a header whose size disagrees with the file's
    short = _write_segment(made, "insshort", size=512, total=4096)
    r = run("inspect", short)
    assert r.returncode == 1 and "truncated, or a corrupt header" in r.stderr
    # another layout version
    newer = _write_segment(made, "insver")
    path = os.path.join(SHM_DIR, newer)
    with open(path, "r+b") as f:
        f.seek(SEGMENT_LAYOUT["layout_version"])
        f.write(struct.pack("<I", LAYOUT_VERSION + 7))
    r = run("inspect", newer)
    assert r.returncode == 1 and "layout version" in r.stderr
    # another program's file under a shmipc-like name
    foreign = _name("insforeign")
    with open(os.path.join(SHM_DIR, foreign), "wb") as f:
        f.write(b"\x7fELF" + b"\0" * 300)
    made.append(foreign)
    r = run("inspect", foreign)
    assert r.returncode == 1 and "not a shmipc segment" in r.stderr
    # a FIFO (never opened) and a symlink (never followed)
    fifo, link = _name("insfifo"), _name("inslink")
    os.mkfifo(os.path.join(SHM_DIR, fifo))
    made.append(fifo)
    os.symlink(os.path.join(SHM_DIR, short), os.path.join(SHM_DIR, link))
    made.append(link)
    r = run("inspect", fifo, timeout=30)
    assert r.returncode == 1 and "fifo" in r.stderr
    r = run("inspect", link)
    assert r.returncode == 1 and "symlink" in r.stderr


def test_inspect_another_users_segment_it_may_not_read(made):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a reader of another uid")
    name = _write_segment(made, "insperm")

    def look(fd: int) -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        code = cli.main(["inspect", name])
        os.write(fd, str(code).encode())

    code, out = Child(look).finish()
    assert code == 0 and out == b"3"


def test_inspect_a_topic_and_a_pool_through_their_modules(made, monkeypatch, capsys):
    """Kinds other modules decode: their inspect_segment gets a read-only view of the whole
    segment; without one the row says the details are unavailable; a CorruptedError from
    one is a clear refusal."""
    topic = _write_segment(made, "instopic", kind=Kind.TOPIC, size=8192)
    pool = _write_segment(made, "inspool", kind=Kind.BUFFER_POOL, size=4096)
    seen: list[tuple[int, bool]] = []

    def inspect_topic(view: memoryview) -> dict:
        seen.append((len(view), view.readonly))
        return {"published": 42, "subscribers": [{"id": 0, "lag": 3}, {"id": 1, "lag": 9}]}

    fake = type(sys)("shmipc.topic")
    fake.inspect_segment = inspect_topic
    monkeypatch.setitem(sys.modules, "shmipc.topic", fake)
    monkeypatch.setitem(sys.modules, "shmipc.buffers", None)  # absent
    capsys.readouterr()
    assert cli.main(["inspect", topic, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    validate(data, INSPECT)
    assert data["details"]["subscribers"][1]["lag"] == 9
    assert seen == [(8192, True)]
    assert cli.main(["inspect", pool, "--json"]) == 0
    assert "details unavailable" in json.loads(capsys.readouterr().out)["details"]["unavailable"]
    assert cli.main(["ls", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    validate(data, LS)
    row = _row(data, topic)
    assert row["lag"] == 9 and row["messages"] == 42 and row["depth"] is None
    assert _row(data, pool)["note"] == "details unavailable"

    def corrupt(view: memoryview) -> dict:
        raise shmipc.CorruptedError("subscriber table overflows the segment")

    fake.inspect_segment = corrupt
    assert cli.main(["inspect", topic]) == 1
    assert "subscriber table overflows" in capsys.readouterr().err


# ---- top -----------------------------------------------------------------------------------


def test_top_refreshes_and_exits_with_rows():
    qname = _name("top")
    q = shmipc.Queue(name=qname, capacity=1 << 16)
    try:
        q.put_bytes(b"x")
        r = run("top", "--iterations", "3", "--interval", "0.1")
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("shmipc top") == 3  # three refreshes (not a terminal: printed)
        rows = [ln for ln in r.stdout.splitlines() if ln.startswith(qname)]
        assert len(rows) == 3 and all("queue" in ln for ln in rows)
        assert "/s" in rows[-1]  # a rate from the second refresh on
    finally:
        q.close()


def test_top_in_a_terminal_ends_on_ctrl_c():
    """Under a pseudo-terminal (rich Live redraws in place), SIGINT ends top with 0."""
    import pty
    import signal

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.environ["PYTHONPATH"] = os.pathsep.join(sys.path)
        os.execv(sys.executable, [sys.executable, "-m", "shmipc.cli", "top", "--interval", "0.1"])
    out = b""
    try:
        deadline = time.monotonic() + 30
        while b"shmipc top" not in out:
            assert time.monotonic() < deadline, out
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline, "top did not end on SIGINT"
            try:
                os.read(fd, 4096)  # keep the terminal drained
            except OSError:
                time.sleep(0.05)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0


# ---- rm ------------------------------------------------------------------------------------


def test_rm_removes_shmipc_segments_and_refuses_everything_else(made):
    seg = _write_segment(made, "rmseg")
    other = _name("rmother")
    with open(os.path.join(SHM_DIR, other), "wb") as f:
        f.write(b"not ours")
    made.append(other)
    target = _write_segment(made, "rmtarget")
    fifo, link = _name("rmfifo"), _name("rmlink")
    os.mkfifo(os.path.join(SHM_DIR, fifo))
    made.append(fifo)
    os.symlink(os.path.join(SHM_DIR, target), os.path.join(SHM_DIR, link))
    made.append(link)
    r = run("rm", seg)
    assert r.returncode == 0 and f"removed {seg}" in r.stdout
    assert not os.path.lexists(os.path.join(SHM_DIR, seg))
    for refused, why in ((other, "not a shmipc segment"), (fifo, "fifo"), (link, "symlink")):
        r = run("rm", refused, timeout=30)
        assert r.returncode == 1 and why in r.stderr, (refused, r.stderr)
        assert os.path.lexists(os.path.join(SHM_DIR, refused))
    assert os.path.exists(os.path.join(SHM_DIR, target))  # the symlink's target stays
    r = run("rm", "../etc/passwd")
    assert r.returncode == 1 and "invalid segment name" in r.stderr
    missing = _name("rmmissing")
    r = run("rm", missing, target)  # the others are still handled; exit 3 for the missing
    assert r.returncode == 3 and f"removed {target}" in r.stdout
    assert not os.path.exists(os.path.join(SHM_DIR, target))


def test_rm_another_users_segment_is_denied(made):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a remover of another uid")
    name = _write_segment(made, "rmperm")

    def remove(fd: int) -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        os.write(fd, str(cli.main(["rm", name])).encode())

    code, out = Child(remove).finish()
    assert code == 0 and out == b"3"
    assert os.path.exists(os.path.join(SHM_DIR, name))


def test_ls_and_top_never_cut_a_long_name():
    name = f"shmipc_test_long_{secrets.token_hex(6)}_" + "x" * 160
    q = shmipc.Queue(name=name, capacity=1 << 12)
    try:
        r = run("ls")
        assert r.returncode == 0 and name in r.stdout
        r = run("top", "--iterations", "1")
        assert r.returncode == 0 and name in r.stdout
    finally:
        q.close()


def test_ls_as_another_user_shows_an_unreadable_segment(made):
    """An unprivileged ls meets root's 0600 segment: listed as unreadable, with what lstat
    says (owner, size), never an error."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run an ls of another uid")
    name = _write_segment(made, "lsunread")

    def look(fd: int) -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        os.dup2(fd, 1)  # the command's stdout is the report pipe
        with open(1, "w", closefd=False) as out:
            sys.stdout = out
            code = cli.main(["ls", "--json"])
        if code:
            os._exit(10 + code)

    code, out = Child(look).finish()
    assert code == 0
    data = json.loads(out)
    validate(data, LS)
    row = _row(data, name)
    assert row["kind"] == cli.UNREADABLE and row["owner"]["uid"] == 0
    assert row["depth"] is None and row["creator"]["pid"] is None


def test_public_names_of_shmipc_cli_are_pinned():
    """What the hardening issue's callers import stays importable from shmipc.cli."""
    assert set(cli.__all__) == {
        "INCOMPLETE", "UNREADABLE", "GcReport", "RmResult", "SegmentInfo", "collect_garbage",
        "display_name", "list_segments", "main", "remove",
    }  # fmt: skip
    for name in cli.__all__:
        assert hasattr(cli, name)
    assert callable(cli._scan_users) and callable(cli._read_entry)


def test_ls_shows_a_block_pools_free_space_and_blocks_in_use():
    pool = shmipc.BufferPool.create(_name("lspool"), size=8 << 20)
    loans = [pool.loan(100_000), pool.loan(100_000)]
    try:
        row = _row(_ls_json(), pool.name)
        assert row["kind"] == "buffer_pool"
        assert "free " in row["note"] and "in use 128Kx2" in row["note"], row["note"]
        for loan in loans:
            loan.release()
        assert "in use none" in _row(_ls_json(), pool.name)["note"]
    finally:
        pool.unlink()
        pool.close()


def test_python_dash_m_shmipc_runs_the_command():
    r = subprocess.run(
        [sys.executable, "-m", "shmipc", "--version"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and shmipc.__version__ in r.stdout, r.stderr
