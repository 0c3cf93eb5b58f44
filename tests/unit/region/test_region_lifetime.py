"""Region lifetime edges: truncation of named segments, fds of dropped handles, private file
mappings that must not touch the file, and a creator's close that must not remove a
newcomer's segment reusing the name."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import pytest
from _procs import fork_call
from region_helpers import segment_exists, segment_path

from shmipc import CorruptedError, Queue, Region
from shmipc.region import PAGE_SIZE

pytestmark = pytest.mark.timeout(60)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- check_size on named segments --------------------------------------------------------


def test_check_size_catches_a_named_segment_truncated_by_another_process(shm_name):
    with Region.create(4 * PAGE_SIZE, name=shm_name) as r, Region.attach(shm_name) as a:
        r.check_size()
        a.check_size()  # the right size: no error

        def child(report_fd: int) -> None:
            os.truncate(segment_path(shm_name), 100)

        assert fork_call(child)[0] == 0
        # Never touch the mapping past byte 100 from here on: that would be SIGBUS.
        for handle in (r, a):
            with pytest.raises(CorruptedError, match=f"segment '{shm_name}' was truncated"):
                handle.check_size()
    assert not segment_exists(shm_name)


def test_check_size_of_a_queues_region(shm_name):
    with Queue(capacity=4096, name=shm_name) as q:
        q._ring.region.check_size()
        os.truncate(segment_path(shm_name), 64)
        with pytest.raises(CorruptedError, match="truncated to 64 bytes"):
            q._ring.region.check_size()


# ---- fds ---------------------------------------------------------------------------------


def test_file_regions_dropped_unclosed_leak_no_fd(tmp_path):
    path = tmp_path / "dropped.bin"
    Region.file(path, PAGE_SIZE).close()
    gc.collect()
    before = _open_fds()
    for _ in range(200):
        r = Region.file(path, PAGE_SIZE)
        r.buffer[0] = 1
        del r
    for _ in range(50):
        Region.file(path, private=True)
    gc.collect()
    assert _open_fds() == before


def test_named_regions_dropped_unclosed_leak_no_fd(shm_name):
    with Region.create(PAGE_SIZE, name=shm_name):
        gc.collect()
        before = _open_fds()
        for _ in range(100):
            a = Region.attach(shm_name)
            a.buffer[0] = 1
            del a
        for _ in range(20):
            Queue(capacity=4096)  # created and dropped: unlinked and its fd closed
        gc.collect()
        assert _open_fds() == before


def test_a_region_holds_one_fd_in_its_mapping_until_closed(shm_name):
    before = _open_fds()
    r = Region.create(64, name=shm_name)
    a = Region.attach(shm_name)
    assert _open_fds() == before + 2
    a.close()
    r.close()
    assert _open_fds() == before


# ---- private file mappings never modify the file -----------------------------------------


def test_private_mapping_larger_than_the_file_is_refused_and_the_file_kept(tmp_path):
    path = tmp_path / "small.bin"
    path.write_bytes(b"s" * 100)
    mtime = os.stat(path).st_mtime_ns
    with pytest.raises(ValueError, match="private mapping never modifies the file"):
        Region.file(path, 2 * PAGE_SIZE, private=True)
    assert path.read_bytes() == b"s" * 100
    assert os.stat(path).st_mtime_ns == mtime


def test_private_mapping_never_creates_a_file(tmp_path):
    path = tmp_path / "missing.bin"
    with pytest.raises(FileNotFoundError):
        Region.file(path, PAGE_SIZE, private=True)
    assert not path.exists()


def test_private_mapping_with_a_size_within_the_file_maps_a_prefix(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * 32)
    with Region.file(path, 1000, private=True) as r:
        assert r.size == 1000 and bytes(r.buffer[:256]) == bytes(range(256))
        r.buffer[:4] = b"mine"
    assert path.read_bytes() == bytes(range(256)) * 32


# ---- close never unlinks a newcomer's segment --------------------------------------------


def test_close_leaves_a_newcomers_segment_alone(shm_name):
    r = Region.create(64, name=shm_name)
    os.unlink(segment_path(shm_name))  # removed behind our back (by hand, or a cleanup tool)
    newcomer = Region.create(64, name=shm_name)
    newcomer.buffer[:3] = b"new"
    r.close()
    assert segment_exists(shm_name)
    with Region.attach(shm_name) as a:
        assert bytes(a.buffer[:3]) == b"new"
    newcomer.close()
    assert not segment_exists(shm_name)


def test_garbage_collection_leaves_a_newcomers_segment_alone(shm_name):
    r = Region.create(64, name=shm_name)
    os.unlink(segment_path(shm_name))

    def child(report_fd: int) -> None:  # the newcomer is another process
        kept = Region.create(64, name=shm_name)
        os._exit(0 if kept.owner else 1)  # leaves its segment in place

    assert fork_call(child)[0] == 0
    del r
    gc.collect()
    assert segment_exists(shm_name)  # the fixture removes it


def test_exit_leaves_a_newcomers_segment_alone(shm_name):
    script = textwrap.dedent(
        """
        import os, sys
        from shmipc import Region
        r = Region.create(64, name=sys.argv[1])
        os.unlink("/dev/shm/" + sys.argv[1])
        print("unlinked", flush=True)
        sys.stdin.readline()
        # exits with r open: the atexit path closes it
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, shm_name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "unlinked"
        with Region.create(64, name=shm_name):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.wait(timeout=30) == 0
            assert segment_exists(shm_name)
        assert not segment_exists(shm_name)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
