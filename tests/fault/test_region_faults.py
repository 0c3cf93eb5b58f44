"""Region faults: corrupt or foreign headers, creators that die or stall during init, a file
truncated under its mapping. Attach must answer each with a typed error, quickly, and never
crash the interpreter, hang, or read outside the mapping."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import posix_ipc
import pytest
from _procs import fork_call
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmipc import (
    CorruptedError,
    Event,
    LayoutMismatch,
    PeerDied,
    Region,
    ShmipcError,
)
from shmipc._proc import is_alive, self_identity
from shmipc.layout import LAYOUT_VERSION, MAGIC, SEGMENT_LAYOUT, InitState, Kind, SegmentHeader
from shmipc.region import _unlink_quietly

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit", "region"))
from region_helpers import (
    header_bytes,
    scribble,
    scribble_field,
    segment_exists,
    segment_path,
)

pytestmark = pytest.mark.timeout(60)

PAGE = os.sysconf("SC_PAGE_SIZE")
QUICK = 2.0  # seconds: a bound for "at once", wide enough for a loaded machine


def _foreign_segment(name: str, content: bytes = b"", size: int | None = None) -> None:
    """A segment made without shmipc (posix_ipc directly), holding ``content``."""
    shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=0)
    try:
        if size is not None:
            os.ftruncate(shm.fd, size)
        if content:
            os.pwrite(shm.fd, content, 0)
    finally:
        shm.close_fd()


# ---- corrupted headers -------------------------------------------------------------------


def test_bad_magic(shm_name):
    with Region.create(PAGE, name=shm_name):
        scribble_field(shm_name, "magic", b"NOTOURS!")
        t0 = time.monotonic()
        with pytest.raises(CorruptedError, match="not a shmipc segment"):
            Region.attach(shm_name)
        assert time.monotonic() - t0 < QUICK


def test_one_flipped_bit_in_the_magic(shm_name):
    with Region.create(PAGE, name=shm_name):
        scribble(shm_name, 7, bytes([MAGIC[7] ^ 0x01]))
        with pytest.raises(CorruptedError):
            Region.attach(shm_name)


@pytest.mark.parametrize("version", [0, LAYOUT_VERSION + 1, 0xFFFFFFFF])
def test_wrong_layout_version(version, shm_name):
    with Region.create(PAGE, name=shm_name):
        scribble_field(shm_name, "layout_version", version)
        with pytest.raises(LayoutMismatch, match=f"layout version {version}"):
            Region.attach(shm_name)


def test_typed_attach_of_the_wrong_kind(shm_name):
    with Region.create(PAGE, name=shm_name):
        with pytest.raises(LayoutMismatch, match="holds a region, not a event"):
            Event.attach(shm_name)
        # A plain Region.attach takes any kind.
        Region.attach(shm_name).close()


def test_typed_attach_of_an_unknown_kind(shm_name):
    with Region.create(PAGE, name=shm_name):
        scribble_field(shm_name, "kind", 999)
        with pytest.raises(LayoutMismatch, match="unknown kind 999"):
            Event.attach(shm_name)


def test_region_attach_of_a_typed_segment_sees_its_kind(shm_name):
    ev = Event.create(shm_name)
    try:
        with Region.attach(shm_name) as r:
            assert r.kind == Kind.EVENT
    finally:
        ev.close()
    assert not segment_exists(shm_name)


@pytest.mark.parametrize("delta", [-1, 1, PAGE, -(PAGE + 128)])
def test_total_size_mismatch(delta, shm_name):
    with Region.create(PAGE, name=shm_name):
        scribble_field(shm_name, "total_size", PAGE + 128 + delta)
        with pytest.raises(CorruptedError, match="header says"):
            Region.attach(shm_name)


def test_segment_grown_behind_the_header(shm_name):
    with Region.create(PAGE, name=shm_name):
        os.truncate(segment_path(shm_name), 4 * PAGE)
        with pytest.raises(CorruptedError, match="header says"):
            Region.attach(shm_name)


def test_wrong_data_offset(shm_name):
    with Region.create(PAGE, name=shm_name):
        scribble_field(shm_name, "data_offset", 64)
        with pytest.raises(CorruptedError, match="data offset 64"):
            Region.attach(shm_name)


def test_unknown_init_state(shm_name):
    with Region.create(PAGE, name=shm_name):
        scribble_field(shm_name, "init_state", 77)
        with pytest.raises(CorruptedError, match="init state 77"):
            Region.attach(shm_name, timeout=0.1)


# ---- segments that are not ours ----------------------------------------------------------


def test_foreign_segment_of_zero_bytes(shm_name):
    _foreign_segment(shm_name)
    t0 = time.monotonic()
    with pytest.raises(CorruptedError, match="0 bytes, too small"):
        Region.attach(shm_name, timeout=0.1)
    assert time.monotonic() - t0 < QUICK


def test_foreign_segment_smaller_than_a_header(shm_name):
    _foreign_segment(shm_name, b"\x01" * 64)
    with pytest.raises(CorruptedError, match="64 bytes, too small"):
        Region.attach(shm_name, timeout=0.1)


def test_foreign_segment_of_zeroes(shm_name):
    _foreign_segment(shm_name, size=PAGE)
    t0 = time.monotonic()
    with pytest.raises(CorruptedError, match="no shmipc header"):
        Region.attach(shm_name, timeout=0.1)
    assert time.monotonic() - t0 < QUICK


def test_foreign_segment_of_random_bytes(shm_name):
    _foreign_segment(shm_name, b"\xff" + os.urandom(PAGE - 1))  # a magic that is not zero
    t0 = time.monotonic()
    with pytest.raises(CorruptedError, match="not a shmipc segment"):
        Region.attach(shm_name)  # the default timeout: a wrong magic is judged at once
    assert time.monotonic() - t0 < QUICK
    with pytest.raises(CorruptedError):
        Event.attach(shm_name)


def test_header_published_while_attach_waits(shm_name):
    """A segment already sized but with its header not yet written is one being created:
    attach waits for the header instead of calling it corrupt (the create/attach race)."""
    _foreign_segment(shm_name, size=PAGE + SEGMENT_LAYOUT.size)
    pid, started = self_identity()
    header = SegmentHeader(
        MAGIC,
        LAYOUT_VERSION,
        Kind.REGION,
        InitState.READY,
        pid,
        started,
        PAGE + SEGMENT_LAYOUT.size,
        SEGMENT_LAYOUT.size,
        os.getuid(),
        0,
    ).pack()
    failures: list[BaseException] = []
    attach_returned = threading.Event()

    def creator() -> None:
        try:
            while segment_path(shm_name) not in Path("/proc/self/maps").read_text():
                if attach_returned.is_set():
                    return  # attach gave up without waiting: the test reports that
            # The attacher has the segment mapped: publish the header as a creator does,
            # every field first and the magic last.
            scribble(shm_name, 8, header[8:])
            scribble(shm_name, 0, header[:8])
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=creator)
    thread.start()
    try:
        with Region.attach(shm_name, timeout=20) as region:
            assert region.size == PAGE and region.header.creator_pid == pid
    finally:
        attach_returned.set()
        thread.join(30)
        _unlink_quietly(shm_name)
    assert not failures, failures


# ---- creators that die or stall ----------------------------------------------------------


def test_creator_killed_during_init_is_peer_died(shm_name):
    def child(report_fd: int) -> None:
        def die(region: Region) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        Region._create_segment(PAGE, kind=Kind.REGION, name=shm_name, init=die)

    code, _ = fork_call(child)
    assert code == -signal.SIGKILL
    try:
        assert segment_exists(shm_name)  # a SIGKILLed creator unlinks nothing
        header = SegmentHeader.unpack(header_bytes(shm_name))
        assert header.init_state == InitState.CREATING
        t0 = time.monotonic()
        with pytest.raises(PeerDied, match=f"pid {header.creator_pid}"):
            Region.attach(shm_name)  # no need to wait out the timeout: it is dead
        assert time.monotonic() - t0 < QUICK
    finally:
        _unlink_quietly(shm_name)


def test_creator_alive_but_stuck_in_init_is_timeout(shm_name):
    seen: list[BaseException] = []

    def init(region: Region) -> None:
        t0 = time.monotonic()
        try:
            Region.attach(shm_name, timeout=0.2)
        except TimeoutError as exc:
            seen.append(exc)
        assert 0.15 <= time.monotonic() - t0 < QUICK + 0.2

    with Region._create_segment(PAGE, kind=Kind.REGION, name=shm_name, init=init):
        assert len(seen) == 1 and "still being initialised" in str(seen[0])
        Region.attach(shm_name, timeout=0.2).close()  # READY now


def test_failed_init_unlinks_the_segment(shm_name):
    def init(region: Region) -> None:
        raise RuntimeError("init failed")

    with pytest.raises(RuntimeError, match="init failed"):
        Region._create_segment(PAGE, kind=Kind.REGION, name=shm_name, init=init)
    assert not segment_exists(shm_name)


def test_creator_killed_after_ready_leaves_a_usable_segment(shm_name):
    """SIGKILL runs no cleanup: the segment stays (for ``shmipc gc``), still attachable."""

    def child(report_fd: int) -> None:
        r = Region.create(PAGE, name=shm_name)
        r.buffer[:4] = b"left"
        os.kill(os.getpid(), signal.SIGKILL)

    assert fork_call(child)[0] == -signal.SIGKILL
    try:
        with Region.attach(shm_name) as a:
            assert bytes(a.buffer[:4]) == b"left"
            assert not is_alive(a.header.creator_pid, a.header.creator_start)
    finally:
        _unlink_quietly(shm_name)


# ---- hypothesis: any header bytes --------------------------------------------------------


_FIELDS = list(SEGMENT_LAYOUT.fields.values())


@st.composite
def _headers(draw, valid: bytes) -> bytes:
    """128 random bytes; or the valid header with 1-3 whole fields replaced (by random bytes
    or small values such as 0, 1, 2) to reach the checks past the magic; or with a random
    patch anywhere."""
    how = draw(st.sampled_from(["random", "fields", "patch"]))
    if how == "random":
        return draw(st.binary(min_size=len(valid), max_size=len(valid)))
    data = bytearray(valid)
    if how == "fields":
        for field in draw(st.lists(st.sampled_from(_FIELDS), min_size=1, max_size=3)):
            if field.fmt == "8s":
                value = draw(st.binary(min_size=8, max_size=8))
            else:
                small = st.integers(0, 3).map(lambda v, f=field: struct.pack("<" + f.fmt, v))
                value = draw(small | st.binary(min_size=field.size, max_size=field.size))
            data[field.offset : field.offset + field.size] = value
    else:
        offset = draw(st.integers(0, len(valid) - 1))
        patch = draw(st.binary(min_size=1, max_size=len(valid) - offset))
        data[offset : offset + len(patch)] = patch
    return bytes(data)


def test_random_header_bytes_raise_only_shmipc_errors(shm_name):
    with Region.create(PAGE, name=shm_name):
        valid = header_bytes(shm_name)
    counter = iter(range(1 << 30))

    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(_headers(valid))
    def check(data: bytes) -> None:
        # A fresh segment per example (same size, so the valid header fits it): no example
        # sees what an earlier one left, and no segment lives longer than one example.
        name = f"{shm_name}_{next(counter)}"
        with Region.create(PAGE, name=name):
            scribble(name, 0, data)
            header = SegmentHeader.unpack(data)
            for kind in (None, Kind.EVENT):  # any kind (Region.attach), a typed attach
                try:
                    got = Region._attach_segment(name, kind=kind, timeout=0.02)
                except ShmipcError:
                    continue
                except TimeoutError:
                    # Only a header that is whole, still CREATING and names a live creator
                    # (this process, kept from the valid header) may make attach wait.
                    assert header.init_state == InitState.CREATING
                    assert is_alive(header.creator_pid, header.creator_start)
                    continue
                got.close()
        assert not segment_exists(name)

    check()


# ---- a file truncated under its mapping --------------------------------------------------


def test_touching_truncated_file_pages_is_sigbus(tmp_path):
    """What docs/regions.md warns about: check_size() sees the truncation; touching the lost
    pages through ``buffer`` kills the process with SIGBUS. Run in a throwaway process."""
    code = textwrap.dedent(
        """
        import os, sys
        from shmipc import CorruptedError, Region
        r = Region.file(sys.argv[1], 4 * 4096)
        view = r.buffer
        os.truncate(sys.argv[1], 100)
        try:
            r.check_size()
        except CorruptedError:
            print("check_size caught it", flush=True)
        view[3 * 4096] = 1   # SIGBUS here
        print("not reached", flush=True)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "t.bin")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.stdout.splitlines() == ["check_size caught it"]
    assert proc.returncode == -signal.SIGBUS, proc.stderr


def test_header_field_offsets_used_here_are_the_layouts():
    # scribble_field writes by SEGMENT_LAYOUT offsets; pin the ones these tests rely on.
    assert SEGMENT_LAYOUT["magic"] == 0
    assert SEGMENT_LAYOUT["layout_version"] == 8
    assert SEGMENT_LAYOUT["kind"] == 12
    assert SEGMENT_LAYOUT["init_state"] == 16
    assert SEGMENT_LAYOUT["total_size"] == 32
    assert struct.calcsize("<Q") == SEGMENT_LAYOUT.fields["total_size"].size
