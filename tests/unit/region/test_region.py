"""Region: anonymous, named (POSIX shm) and file mappings; sizes, options, lifetime, errors."""

from __future__ import annotations

import errno
import gc
import multiprocessing
import os
import pickle
import re
import stat
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _procs import fork_call, read_exact_or_fail, wait_exit
from region_helpers import (
    SHM_DIR,
    resident_kib,
    segment_exists,
    segment_path,
    spawn_writer,
)

from shmipc import Closed, CorruptedError, Region
from shmipc import layout as layout_mod
from shmipc.layout import LAYOUT_VERSION, MAGIC, SEGMENT_LAYOUT, InitState, Kind
from shmipc.region import PAGE_SIZE, _unlink_owned_at_exit

pytestmark = pytest.mark.timeout(60)

ADVICE = ["normal", "sequential", "random", "willneed", "dontneed", "hugepage"]


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in an unrelated interpreter (not a fork of this one)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _hugepages_free() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("HugePages_Free:"):
                return int(line.split()[1])
    return 0


# ---- anonymous ---------------------------------------------------------------------------


def test_anonymous_is_zeroed_and_exactly_sized():
    r = Region.anonymous(10_000)
    assert r.size == len(r.buffer) == 10_000
    assert bytes(r.buffer) == bytes(10_000)
    assert r.name is None and r.path is None and r.header is None and not r.owner


def test_anonymous_shared_with_forked_child():
    r = Region.anonymous(PAGE_SIZE * 3)

    def child(report_fd: int) -> None:
        r.buffer[PAGE_SIZE * 2 + 5 : PAGE_SIZE * 2 + 10] = b"child"
        r.buffer[0] = 0xAB

    code, _ = fork_call(child)
    assert code == 0
    assert bytes(r.buffer[PAGE_SIZE * 2 + 5 : PAGE_SIZE * 2 + 10]) == b"child"
    assert r.buffer[0] == 0xAB


def test_anonymous_parent_writes_seen_by_child():
    r = Region.anonymous(64)

    def child(report_fd: int) -> None:
        os.write(report_fd, bytes(r.buffer[:6]))

    r.buffer[:6] = b"parent"
    code, seen = fork_call(child)
    assert (code, seen) == (0, b"parent")


@pytest.mark.parametrize(
    ("size", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (-(1 << 40), ValueError),
        (1.5, TypeError),
        (4096.0, TypeError),
        ("4096", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
)
def test_bad_sizes_are_refused(size, error, shm_name, tmp_path):
    with pytest.raises(error, match="size"):
        Region.anonymous(size)
    with pytest.raises(error, match="size"):
        Region.create(size, name=shm_name)
    assert not segment_exists(shm_name)
    if size is not None:  # None means "map the whole existing file" for Region.file
        with pytest.raises(error, match="size"):
            Region.file(tmp_path / "f.bin", size)


@pytest.mark.skipif(_hugepages_free() > 0, reason="this machine has free reserved hugepages")
def test_hugepages_true_without_reserved_pages_is_a_clear_oserror():
    with pytest.raises(OSError, match=r"hugepages.*nr_hugepages") as info:
        Region.anonymous(PAGE_SIZE, hugepages=True)
    assert info.value.errno == errno.ENOMEM
    assert "hugepages='auto'" in str(info.value)


@pytest.mark.parametrize("prefault", [False, True])
def test_hugepages_auto_works(prefault):
    r = Region.anonymous(4 << 20, hugepages="auto", prefault=prefault)
    r.buffer[-1] = 7
    assert r.size == 4 << 20 and r.buffer[-1] == 7


def test_named_hugepages(shm_name):
    with pytest.raises(ValueError, match="MAP_HUGETLB"):
        Region.create(PAGE_SIZE, name=shm_name, hugepages=True)
    assert not segment_exists(shm_name)
    with Region.create(4 << 20, name=shm_name, hugepages="auto") as r:
        r.buffer[-1] = 1
        assert r.buffer[-1] == 1


@pytest.mark.parametrize("bad", ["yes", 2, None])
def test_hugepages_bad_value(bad, shm_name):
    with pytest.raises(ValueError, match="hugepages"):
        Region.anonymous(PAGE_SIZE, hugepages=bad)
    with pytest.raises(ValueError, match="hugepages"):
        Region.create(PAGE_SIZE, name=shm_name, hugepages=bad)
    assert not segment_exists(shm_name)  # the failed create unlinked what it had made


def test_prefault_makes_every_page_resident(shm_name):
    size = 2 << 20
    lazy = Region.anonymous(size)
    eager = Region.anonymous(size, prefault=True)
    assert resident_kib(lazy) == 0
    assert resident_kib(eager) >= size // 1024
    with Region.create(size, name=shm_name, prefault=True) as named:
        assert resident_kib(named) >= size // 1024
        assert bytes(named.buffer[:16]) == bytes(16)  # prefaulting keeps the zeroes


@pytest.mark.parametrize("advice", ADVICE)
def test_advise_each_name_keeps_shared_contents(advice, shm_name):
    anon = Region.anonymous(8 * PAGE_SIZE)
    with Region.create(8 * PAGE_SIZE, name=shm_name) as named:
        for r in (anon, named):
            r.buffer[:4] = b"keep"
            r.buffer[5 * PAGE_SIZE + 3] = 9
            r.advise(advice)  # the whole payload
            r.advise(advice, 3, 100)  # an unaligned range inside one page
            r.advise(advice, 2 * PAGE_SIZE + 1, 3 * PAGE_SIZE)  # a range across pages
            # Even "dontneed" only drops this process's page-table entries of a shared
            # mapping: the pages, and so the contents, stay.
            assert bytes(r.buffer[:4]) == b"keep"
            assert r.buffer[5 * PAGE_SIZE + 3] == 9


@pytest.mark.parametrize("bad", ["free", "SEQUENTIAL", "", 1])
def test_advise_unknown_name(bad):
    r = Region.anonymous(PAGE_SIZE)
    with pytest.raises(ValueError, match="unknown advice"):
        r.advise(bad)


def test_anonymous_cannot_be_pickled_or_unlinked():
    r = Region.anonymous(PAGE_SIZE)
    with pytest.raises(TypeError, match="anonymous Region cannot be pickled"):
        pickle.dumps(r)
    with pytest.raises(ValueError, match="named"):
        r.unlink()


# ---- named: create / attach ----------------------------------------------------------------


def test_create_attach_round_trip(shm_name):
    with Region.create(5000, name=shm_name) as r, Region.attach(shm_name) as a:
        assert r.name == a.name == shm_name
        assert r.size == a.size == 5000
        assert r.owner and not a.owner
        assert r.kind == a.kind == Kind.REGION
        r.buffer[100:105] = b"hello"
        assert bytes(a.buffer[100:105]) == b"hello"
        a.buffer[-3:] = b"end"
        assert bytes(r.buffer[-3:]) == b"end"
        h = a.header
        assert h == r.header
        assert h.magic == MAGIC and h.layout_version == LAYOUT_VERSION
        assert h.init_state == InitState.READY and h.kind == Kind.REGION
        assert h.creator_pid == os.getpid() and h.creator_uid == os.getuid()
        assert h.total_size == os.stat(segment_path(shm_name)).st_size == 5000 + 128
        assert h.data_offset == SEGMENT_LAYOUT.size == 128


def test_name_may_carry_one_leading_slash(shm_name):
    with Region.create(64, name="/" + shm_name) as r:
        assert r.name == shm_name
        with Region.attach("/" + shm_name) as a:
            assert a.name == shm_name


@pytest.mark.parametrize("bad", ["", "/", "a/b", "x" * 251])
def test_invalid_names(bad):
    with pytest.raises(ValueError, match="invalid segment name"):
        Region.create(64, name=bad)
    with pytest.raises(ValueError, match="invalid segment name"):
        Region.attach(bad)


def test_random_names_are_distinct_and_unlinked_on_close():
    regions = []
    try:
        for _ in range(20):
            regions.append(Region.create(64))
        names = [r.name for r in regions]
        assert len(set(names)) == 20
        assert all(re.fullmatch(r"shmipc_[0-9a-f]{16}", n) for n in names)
        assert all(segment_exists(n) for n in names)
    finally:
        for r in regions:
            r.close()
    assert not any(segment_exists(r.name) for r in regions)


def test_attach_from_unrelated_process(shm_name):
    with Region.create(PAGE_SIZE, name=shm_name) as r:
        r.buffer[:5] = b"ready"
        proc = _run_python(
            """
            import sys
            from shmipc import Region
            a = Region.attach(sys.argv[1])
            assert bytes(a.buffer[:5]) == b"ready", bytes(a.buffer[:5])
            a.buffer[10:20] = b"unrelated!"
            assert not a.owner
            a.close()
            print("wrote")
            """,
            shm_name,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "wrote"
        assert bytes(r.buffer[10:20]) == b"unrelated!"
        assert segment_exists(shm_name)  # the attacher's exit did not unlink it


def test_spawn_child_receives_region_pickled_by_name(shm_name):
    ctx = multiprocessing.get_context("spawn")
    with Region.create(PAGE_SIZE, name=shm_name) as r:
        p = ctx.Process(target=spawn_writer, args=(r, b"spawned", 300))
        p.start()
        p.join(timeout=30)
        if p.exitcode is None:
            p.kill()
            p.join()
        assert p.exitcode == 0
        assert bytes(r.buffer[300:307]) == b"spawned"
        assert segment_exists(shm_name)  # the child's exit did not unlink it
    assert not segment_exists(shm_name)


def test_pickle_in_process_attaches_without_ownership(shm_name):
    with Region.create(PAGE_SIZE, name=shm_name) as r:
        copy = pickle.loads(pickle.dumps(r))
        assert copy is not r and copy.name == shm_name and not copy.owner
        copy.buffer[0] = 42
        assert r.buffer[0] == 42
        copy.close()
        assert segment_exists(shm_name)


# ---- named: permissions ----------------------------------------------------------------


def test_default_mode_is_0600(shm_name):
    with Region.create(64, name=shm_name):
        st = os.stat(segment_path(shm_name))
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()


def _drop_privileges() -> None:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to drop to another user in a child")
def test_other_user_cannot_attach_a_0600_segment(shm_name):
    with Region.create(64, name=shm_name):

        def child(report_fd: int) -> None:
            _drop_privileges()
            try:
                Region.attach(shm_name)
            except PermissionError as exc:
                os.write(report_fd, b"denied:" + str(exc).encode())
            else:
                os.write(report_fd, b"attached")

        code, reported = fork_call(child)
        assert code == 0
        assert reported.startswith(b"denied:") and shm_name.encode() in reported
        assert segment_exists(shm_name)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o666, 0o400])
def test_mode_is_exact_whatever_the_umask(mode, shm_name):
    old = os.umask(0o077)
    try:
        with Region.create(64, name=shm_name, mode=mode):
            assert stat.S_IMODE(os.stat(segment_path(shm_name)).st_mode) == mode
    finally:
        os.umask(old)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to drop to another user in a child")
def test_widened_mode_lets_another_user_attach(shm_name):
    old = os.umask(0o077)
    try:
        r = Region.create(64, name=shm_name, mode=0o666)
    finally:
        os.umask(old)
    with r:

        def child(report_fd: int) -> None:
            _drop_privileges()
            # Root's segment: another user's, so it takes trusting its owner explicitly.
            with Region.attach(shm_name, trusted_uids=(0,)) as a:
                a.buffer[:6] = b"nobody"
            os.write(report_fd, b"ok")

        assert fork_call(child) == (0, b"ok")
        assert bytes(r.buffer[:6]) == b"nobody"


def test_exclusive_create_refuses_an_existing_name(shm_name):
    with Region.create(64, name=shm_name) as r:
        r.buffer[:3] = b"one"
        with pytest.raises(FileExistsError, match=shm_name) as info:
            Region.create(64, name=shm_name)
        assert info.value.errno == errno.EEXIST
        # The failed create left the existing segment alone.
        assert segment_exists(shm_name)
        with Region.attach(shm_name) as a:
            assert bytes(a.buffer[:3]) == b"one"


def test_attach_missing_name(shm_name):
    with pytest.raises(FileNotFoundError, match=shm_name) as info:
        Region.attach(shm_name)
    assert info.value.errno == errno.ENOENT


def test_no_space_is_a_clear_oserror_and_leaves_nothing(shm_name):
    vfs = os.statvfs(SHM_DIR)
    too_big = vfs.f_bavail * vfs.f_frsize + (1 << 30)
    with pytest.raises(OSError, match="not enough space") as info:
        Region.create(too_big, name=shm_name)
    assert info.value.errno == errno.ENOSPC
    assert SHM_DIR in str(info.value)
    assert not segment_exists(shm_name)
    # Still usable afterwards: nothing was left half-made.
    with Region.create(64, name=shm_name) as r:
        assert r.size == 64


# ---- named: lifetime -------------------------------------------------------------------


def test_creator_close_unlinks_attacher_close_does_not(shm_name):
    r = Region.create(PAGE_SIZE, name=shm_name)
    a = Region.attach(shm_name)
    a.close()
    assert a.closed and segment_exists(shm_name)
    a2 = Region.attach(shm_name)
    r.close()
    assert r.closed and not segment_exists(shm_name)
    # The name is gone, the memory is not: a2 still maps it.
    a2.buffer[:4] = b"live"
    assert bytes(a2.buffer[:4]) == b"live"
    a2.close()
    r.close()  # closing twice is harmless
    a2.close()


def test_forked_child_with_creators_handle_never_unlinks(shm_name):
    r = Region.create(PAGE_SIZE, name=shm_name)

    def child(report_fd: int) -> None:
        assert not r.owner  # the name belongs to the parent
        r.buffer[:5] = b"child"
        r.__del__()  # what garbage collection of the handle runs
        _unlink_owned_at_exit()  # what the child's own interpreter exit runs
        r.close()
        os.write(report_fd, b"closed")

    assert fork_call(child) == (0, b"closed")
    assert segment_exists(shm_name)
    assert r.owner and bytes(r.buffer[:5]) == b"child"
    r.close()
    assert not segment_exists(shm_name)


def test_multiprocessing_fork_child_never_unlinks(shm_name):
    ctx = multiprocessing.get_context("fork")
    with Region.create(PAGE_SIZE, name=shm_name) as r:
        p = ctx.Process(target=r.close)
        p.start()
        p.join(timeout=30)
        assert p.exitcode == 0
        assert segment_exists(shm_name)


def test_gc_of_creators_handle_unlinks(shm_name):
    r = Region.create(64, name=shm_name)
    assert segment_exists(shm_name)
    del r
    gc.collect()
    assert not segment_exists(shm_name)


def test_gc_of_attachers_handle_does_not_unlink(shm_name):
    with Region.create(64, name=shm_name):
        a = Region.attach(shm_name)
        del a
        gc.collect()
        assert segment_exists(shm_name)


def test_interpreter_exit_unlinks_what_it_created(shm_name):
    proc = _run_python(
        """
        import os, sys
        from shmipc import Region
        kept = Region.create(64, name=sys.argv[1])   # never closed: a global at exit
        kept.buffer[:3] = b"bye"
        print("exists", os.path.exists("/dev/shm/" + sys.argv[1]), flush=True)
        """,
        shm_name,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["exists", "True"]
    assert not segment_exists(shm_name)


def test_unlink_removes_the_name_now(shm_name):
    r = Region.create(64, name=shm_name)
    a = Region.attach(shm_name)
    a.unlink()  # any process may
    assert not segment_exists(shm_name)
    with pytest.raises(FileNotFoundError):
        r.unlink()
    r.buffer[0] = 5
    assert a.buffer[0] == 5
    r.close()  # the creator's close finds nothing to unlink: fine
    a.close()


def test_creator_unlink_then_another_creator_takes_the_name(shm_name):
    first = Region.create(64, name=shm_name)
    first.unlink()
    with Region.create(64, name=shm_name) as second:
        first.close()  # gave the name up with unlink(): must not remove the new segment
        assert segment_exists(shm_name)
        assert second.owner
    assert not segment_exists(shm_name)


# ---- close, views, context manager -------------------------------------------------------


def _three_kinds(shm_name, tmp_path):
    return [
        Region.anonymous(PAGE_SIZE),
        Region.create(PAGE_SIZE, name=shm_name),
        Region.file(tmp_path / "f.bin", PAGE_SIZE),
    ]


def test_close_while_a_view_is_held_keeps_the_view_working(shm_name, tmp_path):
    for r in _three_kinds(shm_name, tmp_path):
        view = r.buffer[10:20]
        whole = r.buffer
        r.close()
        assert r.closed and r.size == 0
        view[:] = b"0123456789"
        assert bytes(whole[10:20]) == b"0123456789"
        del view, whole
    assert not segment_exists(shm_name)


def test_attacher_close_while_a_view_is_held(shm_name):
    with Region.create(PAGE_SIZE, name=shm_name) as r:
        a = Region.attach(shm_name)
        view = a.buffer
        a.close()
        view[0] = 3
        assert r.buffer[0] == 3
        view.release()


def test_use_after_close_raises_closed(shm_name, tmp_path):
    for r in _three_kinds(shm_name, tmp_path):
        r.close()
        with pytest.raises(Closed):
            r.buffer  # noqa: B018
        with pytest.raises(Closed):
            r.flush()
        with pytest.raises(Closed):
            r.advise("normal")
        with pytest.raises(Closed):
            r.header  # noqa: B018
        with pytest.raises(Closed):
            r.pointer(0)
        r.close()
        assert "closed" in repr(r)


def test_context_manager(shm_name):
    with Region.create(64, name=shm_name) as r:
        assert segment_exists(shm_name) and not r.closed
    assert r.closed and not segment_exists(shm_name)
    with pytest.raises(RuntimeError), Region.create(64, name=shm_name) as r:
        raise RuntimeError("boom")
    assert r.closed and not segment_exists(shm_name)


def test_pointer_bounds(shm_name):
    with Region.create(256, name=shm_name) as r:
        base, off = r.pointer(0)
        assert off == SEGMENT_LAYOUT.size
        assert r.pointer(256)[1] == SEGMENT_LAYOUT.size + 256
        for bad in (-1, 257):
            with pytest.raises(ValueError, match="outside"):
                r.pointer(bad)
        del base


# ---- layout table ------------------------------------------------------------------------


def test_header_offsets_match_the_documented_table():
    """The offset table in shmipc.layout's docstring (copied into docs/regions.md) is true."""
    table = {}
    for line in layout_mod.__doc__.splitlines():
        m = re.match(r"^(\d+)\s+(\d+)\s+(\w+)\s", line)
        if m:
            table[m.group(3)] = (int(m.group(1)), int(m.group(2)))
    fields = {f.name: (f.offset, f.size) for f in SEGMENT_LAYOUT.fields.values()}
    reserved = table.pop("reserved")
    assert table == fields
    assert reserved == (64, SEGMENT_LAYOUT.size - 64)
    assert SEGMENT_LAYOUT.size == 128
    header = layout_mod.SegmentHeader(MAGIC, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    packed = header.pack()
    for name, value in zip(
        ["layout_version", "kind", "init_state", "creator_pid"], [1, 2, 3, 4], strict=True
    ):
        assert struct.unpack_from("<I", packed, SEGMENT_LAYOUT[name])[0] == value
    assert layout_mod.SegmentHeader.unpack(packed + bytes(64)) == header


def test_header_table_in_docs_matches_the_layout():
    doc = Path(__file__).resolve().parents[3] / "docs" / "regions.md"
    rows = re.findall(r"^\| (\d+) \| (\d+) \| `?(\w+)`? \|", doc.read_text(), re.MULTILINE)
    table = {name: (int(off), int(size)) for off, size, name in rows}
    assert table.pop("reserved") == (64, SEGMENT_LAYOUT.size - 64)
    assert table == {f.name: (f.offset, f.size) for f in SEGMENT_LAYOUT.fields.values()}


# ---- file regions ------------------------------------------------------------------------


def test_file_creates_and_grows(tmp_path):
    path = tmp_path / "new.bin"
    with Region.file(path, 3 * PAGE_SIZE) as r:
        assert r.size == 3 * PAGE_SIZE and r.path == str(path)
        assert r.name is None and r.header is None
        assert os.path.getsize(path) == 3 * PAGE_SIZE
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0  # created private
    old = tmp_path / "old.bin"
    old.write_bytes(b"kept" * 25)
    with Region.file(old, 2 * PAGE_SIZE) as r:
        assert os.path.getsize(old) == 2 * PAGE_SIZE
        assert bytes(r.buffer[:100]) == b"kept" * 25
        assert bytes(r.buffer[100:200]) == bytes(100)


def test_file_smaller_size_maps_a_prefix_and_keeps_the_file(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * 40)
    with Region.file(path, 100) as r:
        assert r.size == 100 and bytes(r.buffer) == bytes(range(100))
    assert os.path.getsize(path) == 256 * 40


def test_file_write_at_offset_flush_and_read_back(tmp_path):
    path = tmp_path / "array.bin"
    with Region.file(path, 4 * PAGE_SIZE) as r:
        r.buffer[1024:1028] = (42).to_bytes(4, "little")
        r.buffer[3 * PAGE_SIZE + 7 : 3 * PAGE_SIZE + 12] = b"tail!"
        r.flush()
        r.flush(1024, 4)  # an unaligned range
        r.flush(3 * PAGE_SIZE + 7, 5)
        with open(path, "rb") as f:
            data = f.read()
        assert int.from_bytes(data[1024:1028], "little") == 42
        assert data[3 * PAGE_SIZE + 7 : 3 * PAGE_SIZE + 12] == b"tail!"
        # and the other way: a plain write to the file shows in the mapping
        with open(path, "r+b") as f:
            f.seek(2048)
            f.write(b"from I/O")
        assert bytes(r.buffer[2048:2056]) == b"from I/O"


def test_two_file_mappings_of_one_file_share_pages(tmp_path):
    path = tmp_path / "shared.bin"
    with Region.file(path, PAGE_SIZE) as a, Region.file(path) as b:
        a.buffer[:4] = b"abcd"
        assert bytes(b.buffer[:4]) == b"abcd"

        def child(report_fd: int) -> None:
            with Region.file(path) as c:
                c.buffer[4:8] = b"efgh"

        assert fork_call(child)[0] == 0
        assert bytes(a.buffer[:8]) == b"abcdefgh"


def test_file_size_none_maps_the_existing_file(tmp_path):
    path = tmp_path / "existing.bin"
    path.write_bytes(b"x" * 5000)
    with Region.file(path) as r:
        assert r.size == 5000 and bytes(r.buffer) == b"x" * 5000


def test_file_errors(tmp_path):
    empty = tmp_path / "empty.bin"
    empty.touch()
    with pytest.raises(ValueError, match="empty"):
        Region.file(empty)
    with pytest.raises(ValueError, match="empty"):
        Region.file(empty, private=True)
    with pytest.raises(FileNotFoundError):
        Region.file(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="not a regular file"):
        Region.file("/dev/zero", PAGE_SIZE)
    with pytest.raises(IsADirectoryError):
        Region.file(tmp_path, PAGE_SIZE)


def test_file_private_writes_never_reach_the_file(tmp_path):
    path = tmp_path / "cow.bin"
    original = b"o" * (2 * PAGE_SIZE)
    path.write_bytes(original)
    with Region.file(path, private=True) as priv, Region.file(path) as shared:
        priv.buffer[:7] = b"private"
        priv.flush()  # a no-op: nothing of a private mapping is ever written back
        assert bytes(priv.buffer[:7]) == b"private"
        assert bytes(shared.buffer[:7]) == b"ooooooo"
        # A page this process has not written still follows the file.
        shared.buffer[PAGE_SIZE : PAGE_SIZE + 3] = b"new"
        assert bytes(priv.buffer[PAGE_SIZE : PAGE_SIZE + 3]) == b"new"

        def child(report_fd: int) -> None:
            os.write(report_fd, bytes(priv.buffer[:7]))

        assert fork_call(child) == (0, b"private")  # a forked child gets a copy
    assert path.read_bytes()[:7] == b"ooooooo"


def test_file_truncated_by_another_process_is_caught_by_check_size(tmp_path):
    path = tmp_path / "shrinks.bin"
    r = Region.file(path, 4 * PAGE_SIZE)
    r.buffer[:4] = b"safe"
    r.check_size()  # the right size: no error
    proc = _run_python("import os, sys; os.truncate(sys.argv[1], 100)", str(path))
    assert proc.returncode == 0, proc.stderr
    # Never touch the mapping's pages past byte 100 from here on: that is SIGBUS.
    with pytest.raises(CorruptedError, match="truncated to 100 bytes"):
        r.check_size()
    with pytest.raises(CorruptedError, match="SIGBUS"):
        r.flush()
    r.close()  # unmapping does not touch the pages


def test_check_size_passes_for_intact_shm_and_anonymous(shm_name):
    Region.anonymous(64).check_size()
    with Region.create(64, name=shm_name) as r:
        r.check_size()


@pytest.mark.parametrize("private", [False, True])
def test_pickling_a_file_region_maps_the_file_again(private, tmp_path):
    path = tmp_path / "pickled.bin"
    path.write_bytes(bytes(PAGE_SIZE))
    with Region.file(path, private=private) as r:
        copy = pickle.loads(pickle.dumps(r))
        with copy:
            assert copy is not r and copy.path == str(path) and copy.size == PAGE_SIZE
            copy.buffer[:4] = b"copy"
            copy.flush()
            if private:
                # Still copy-on-write after the trip: the file never sees the copy's writes.
                assert path.read_bytes()[:4] == bytes(4)
            else:
                assert path.read_bytes()[:4] == b"copy"
                assert bytes(r.buffer[:4]) == b"copy"


def test_file_region_works_in_a_spawned_child(tmp_path):
    path = tmp_path / "spawned.bin"
    ctx = multiprocessing.get_context("spawn")
    with Region.file(path, PAGE_SIZE) as r:
        p = ctx.Process(target=spawn_file_writer, args=(r,))
        p.start()
        p.join(timeout=30)
        assert p.exitcode == 0
        assert bytes(r.buffer[:7]) == b"spawned"


def spawn_file_writer(region: Region) -> None:
    region.buffer[:7] = b"spawned"
    region.close()


def test_repr(shm_name, tmp_path):
    assert repr(Region.anonymous(64)) == "<shmipc.Region anonymous 64 bytes>"
    with Region.create(64, name=shm_name) as r:
        assert repr(r) == f"<shmipc.Region {shm_name} 64 bytes>"
    with Region.file(tmp_path / "r.bin", 64) as f:
        assert str(tmp_path) in repr(f)


# ---- a waiting attacher ------------------------------------------------------------------


def test_attach_waits_for_a_live_creator_to_finish(shm_name):
    """An attach made while the creator is still in ``init`` times out (the creator lives),
    and one that is still waiting when the creator publishes READY returns the segment."""
    go_r, go_w = os.pipe()
    ev_r, ev_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the creator
        code = 1
        try:

            def init(region: Region) -> None:
                region.buffer[:4] = b"init"
                os.write(ev_w, b"i")
                read_exact_or_fail(go_r, 1)  # hold the segment in CREATING until told

            with Region._create_segment(PAGE_SIZE, kind=Kind.REGION, name=shm_name, init=init):
                os.write(ev_w, b"r")
                read_exact_or_fail(go_r, 1)  # keep the segment (and its name) until told
            code = 0
        finally:
            os._exit(code)
    try:
        assert read_exact_or_fail(ev_r, 1) == b"i"
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="still being initialised"):
            Region.attach(shm_name, timeout=0.2)
        assert 0.15 <= time.monotonic() - t0 < 5
        os.write(go_w, b"g")  # let init finish, racing the attach below
        with Region.attach(shm_name, timeout=20) as a:
            assert bytes(a.buffer[:4]) == b"init"
            assert a.header.init_state == InitState.READY
        assert read_exact_or_fail(ev_r, 1) == b"r"
        os.write(go_w, b"g")
        assert wait_exit(pid) == 0
        pid = 0
        assert not segment_exists(shm_name)  # the creator's close unlinked it
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        for fd in (go_r, go_w, ev_r, ev_w):
            os.close(fd)
