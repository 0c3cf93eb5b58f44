"""Spill references are untrusted input: a malformed or hostile one is CorruptedError, never a
crash, a hang, a giant allocation, a read or removal of another queue's segment, or a leak; and
the good messages around it are still delivered (issue 7, item 11)."""

from __future__ import annotations

import os
import secrets
import stat
import struct

import posix_ipc
import pytest
from queue_helpers import SpillRecorder

from shmipc import CorruptedError, MessageTooLarge, Queue, _spill
from shmipc.queue import T_SPILL_BYTES, T_SPILL_OBJ, Full
from shmipc.sync import deadline_ns

pytestmark = pytest.mark.timeout(60)

REF = struct.Struct("<Q")
SMALL = 4096  # messages over 2040 bytes spill
SHM = "/dev/shm"


def take_ref(q: Queue) -> tuple[int, bytes]:
    """The next record of ``q``'s ring as it is (a spill reference stays unread)."""
    rtype, payload = q._ring._get_record(deadline_ns(5))
    return rtype, bytes(payload)


def ref_name(ref: bytes) -> str:
    return ref[REF.size :].decode()


def our_name(q: Queue) -> str:
    """A fresh name under ``q``'s spill prefix."""
    return q._spills.prefix + secrets.token_hex(8)


def plant(q: Queue, payload: bytes, *, name: str | None = None, header: bytes | None = None):
    """Write a spill file by hand under ``q``'s prefix; returns (reference, path)."""
    name = name or our_name(q)
    path = os.path.join(SHM, name)
    if header is None:
        header = _spill.SPILL_HEADER.pack(_spill.SPILL_MAGIC, q._spills.tag, len(payload))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, header + payload)
    finally:
        os.close(fd)
    return REF.pack(len(payload)) + name.encode(), path


@pytest.fixture
def q():
    with Queue(capacity=SMALL) as queue:
        yield queue


def expect_refused_between_good_ones(q: Queue, ref, match: str | None = None) -> None:
    """Put good, bad reference, good; get delivers both good messages and CorruptedError for
    the bad one in between (with get, and with get_many). ``ref``: the reference, or a
    function making a fresh one (a refused segment of our queue is removed)."""
    make = ref if callable(ref) else lambda: ref
    for rtype in (T_SPILL_BYTES, T_SPILL_OBJ):
        q.put("before")
        q._ring.put(make(), type=rtype)
        q.put("after")
        assert q.get(timeout=5) == "before"
        with pytest.raises(CorruptedError, match=match):
            q.get(timeout=5)
        assert q.get(timeout=5) == "after"
    q.put("before")
    q._ring.put(make(), type=T_SPILL_BYTES)
    q.put("after")
    got, errors = [], 0
    while len(got) < 2:
        try:
            got += q.get_many(10, timeout=5)
        except CorruptedError:
            errors += 1
    assert got == ["before", "after"] and errors == 1


@pytest.mark.parametrize(
    "ref",
    [
        b"",
        REF.pack(1),  # a length and no name
        REF.pack(1) + b"x" * 300,  # a name longer than any segment name
        REF.pack(1) + "shmipc_spill_é".encode(),  # not ASCII
        REF.pack(1) + b"shmipc_0123456789abcdef",  # not a spill segment: never touched
        REF.pack(1) + b"shmipc_spill_../../etc",  # a path, not a name
        REF.pack(1) + b"shmipc_spill_doesnotexist",  # not this queue's
        REF.pack(1) + b"shmipc_spill_\x00",  # a NUL
    ],
    ids=["empty", "no-name", "long", "not-ascii", "not-spill", "path", "other-queue", "nul"],
)
def test_malformed_reference_is_corrupted_error(q, ref):
    expect_refused_between_good_ones(q, ref)


def test_missing_segment_of_our_queue_is_corrupted_error(q):
    expect_refused_between_good_ones(q, REF.pack(5) + our_name(q).encode(), "gone")


def test_foreign_segment_named_by_a_reference_is_left_alone(q, shm_name):
    shm = posix_ipc.SharedMemory("/" + shm_name, posix_ipc.O_CREX, size=16)
    shm.close_fd()
    expect_refused_between_good_ones(q, REF.pack(16) + shm_name.encode(), "not a spill segment")
    assert os.path.exists(f"{SHM}/{shm_name}")


def test_another_queues_spill_is_neither_read_nor_removed():
    """A producer of queue B hands B's consumer a reference to queue A's large message: B
    refuses it, and A's consumer still gets its message."""
    big = secrets.token_bytes(3000)
    with Queue(capacity=SMALL) as a, Queue(capacity=SMALL) as b:
        a.put_bytes(big)
        rtype, ref = take_ref(a)
        assert rtype == T_SPILL_BYTES
        expect_refused_between_good_ones(b, ref, "not a spill segment of queue")
        assert os.path.exists(os.path.join(SHM, ref_name(ref)))
        a._ring.put(ref, type=rtype)
        assert a.get(timeout=5) == big
        assert not os.path.exists(os.path.join(SHM, ref_name(ref)))


def test_spill_names_tie_them_to_their_queue(q):
    q.put_bytes(bytes(3000))
    _, ref = take_ref(q)
    name = ref_name(ref)
    assert _spill.owner_of(name) == q.name
    assert name.startswith(f"shmipc_spill_{q.name}_")
    os.unlink(os.path.join(SHM, name))


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("shmipc_spill_q_0123456789abcdef0123456789abcdef", "q"),
        ("shmipc_spill_my_queue_0123456789abcdef0123456789abcdef", "my_queue"),
        ("shmipc_spill_0123456789abcdef0123456789abcdef", None),  # no queue name
        ("shmipc_spill_q_0123456789abcdef0123456789abcdeg", None),  # not hex
        ("shmipc_spill_q-0123456789abcdef0123456789abcdef", None),  # no separator
        ("shmipc_spill_1a2b3c", None),  # an old-style spill name
        ("shmipc_q_0123456789abcdef0123456789abcdef", None),  # not a spill
        ("", None),
    ],
)
def test_owner_of(name, owner):
    assert _spill.owner_of(name) == owner


def test_symlink_is_refused_and_its_target_left_alone(q):
    _, target = plant(q, b"secret")
    links = []

    def link() -> bytes:
        links.append(os.path.join(SHM, our_name(q)))
        os.symlink(target, links[-1])
        return REF.pack(6) + os.path.basename(links[-1]).encode()

    try:
        expect_refused_between_good_ones(q, link, "symlink")
        assert os.path.exists(target)
        assert not [p for p in links if os.path.lexists(p)]  # the links were removed
    finally:
        os.unlink(target)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_fifo_or_directory_is_refused_without_waiting(q, kind):
    names = []

    def make() -> bytes:
        names.append(our_name(q))
        (os.mkfifo if kind == "fifo" else os.mkdir)(os.path.join(SHM, names[-1]), 0o700)
        return REF.pack(6) + names[-1].encode()

    try:
        expect_refused_between_good_ones(q, make, "not a regular file")
        if kind == "fifo":
            assert not [n for n in names if os.path.exists(os.path.join(SHM, n))]
    finally:
        for n in names:
            if os.path.isdir(os.path.join(SHM, n)):
                os.rmdir(os.path.join(SHM, n))


def test_hard_link_is_refused(q):
    _, path = plant(q, b"payload")

    def link() -> bytes:
        name = our_name(q)
        os.link(path, os.path.join(SHM, name))
        return REF.pack(7) + name.encode()

    try:
        expect_refused_between_good_ones(q, link, "links")
        with open(path, "rb") as f:
            assert f.read().endswith(b"payload")  # the other link is intact
        assert os.stat(path).st_nlink == 1  # the refused links were removed
    finally:
        os.unlink(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
def test_segment_of_a_stranger_is_refused(q):
    def stranger() -> bytes:
        ref, path = plant(q, b"payload")
        os.chown(path, 12345, 12345)
        return ref

    expect_refused_between_good_ones(q, stranger, "uid 12345")


def test_size_mismatch_is_refused_and_the_segment_removed(q):
    paths = []

    def mismatch() -> bytes:
        ref, path = plant(q, b"payload")
        paths.append(path)
        return REF.pack(8) + ref[REF.size :]

    expect_refused_between_good_ones(q, mismatch, "reference says 8")
    assert not [p for p in paths if os.path.exists(p)]


@pytest.mark.parametrize(
    "header",
    [
        struct.pack("<8s8sQ", b"NOTSPILL", b"\0" * 8, 7),  # magic
        struct.pack("<8s8sQ", b"SHMIPCsp", b"\0" * 8, 7),  # another queue's tag
        struct.pack("<8s8sQ", b"SHMIPCsp", b"TAGTAGTA", 6) + b"x",  # length
    ],
    ids=["magic", "tag", "length"],
)
def test_bad_header_is_refused(q, header):
    if header[8:16] == b"TAGTAGTA":
        header = header[:8] + q._spills.tag + header[16:]
    paths = []

    def bad() -> bytes:
        ref, path = plant(q, b"payload"[: 7 - (len(header) - 24)], header=header)
        paths.append(path)
        return REF.pack(7) + ref[REF.size :]

    expect_refused_between_good_ones(q, bad, "bad header")
    assert not [p for p in paths if os.path.exists(p)]


def test_reference_over_max_message_is_refused_before_opening():
    with Queue(capacity=SMALL, max_message=10_000) as q:
        paths = []

        def big() -> bytes:
            ref, path = plant(q, b"x" * 10_001)
            paths.append(path)
            return ref

        expect_refused_between_good_ones(q, big, "max_message=10000")
        assert not [p for p in paths if os.path.exists(p)]


def test_put_over_max_message_is_message_too_large():
    with Queue(capacity=SMALL, max_message=10_000) as q:
        q.put_bytes(bytes(10_000))
        with pytest.raises(MessageTooLarge, match="max_message=10000"):
            q.put_bytes(bytes(10_001))
        assert q.get_bytes(timeout=5) == bytes(10_000)
        assert q.empty()


def test_spilled_bytes_waiting_are_bounded(monkeypatch):
    recorder = SpillRecorder(monkeypatch)
    with Queue(capacity=SMALL, max_spilled=10_000) as q:
        for i in range(3):
            q.put_bytes(bytes([i]) * 3000)
        with pytest.raises(Full, match="max_spilled=10000"):
            q.put_bytes(bytes(3000))
        assert q.get_bytes(timeout=5) == bytes([0]) * 3000
        q.put_bytes(bytes([3]) * 3000)  # room again
        assert [q.get_bytes(timeout=5)[0] for _ in range(3)] == [1, 2, 3]
    assert recorder.existing() == []


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o666])
def test_spills_follow_the_queues_mode(mode):
    with Queue(capacity=SMALL, mode=mode) as q:
        q.put_bytes(bytes(3000))
        _, ref = take_ref(q)
        path = os.path.join(SHM, ref_name(ref))
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
        q._ring.put(ref, type=T_SPILL_BYTES)
        assert q.get_bytes(timeout=5) == bytes(3000)


def test_closing_the_creator_removes_pending_spills(monkeypatch):
    recorder = SpillRecorder(monkeypatch)
    q = Queue(capacity=SMALL)
    other = Queue.attach(q.name)
    for _ in range(3):
        q.put_bytes(bytes(3000))
    other.put_bytes(bytes(3000))
    assert len(recorder.existing()) == 4
    other.close()  # an attacher's close leaves them to their readers
    assert len(recorder.existing()) == 4
    q.close()
    assert recorder.existing() == []


def test_belongs_to_tells_a_reused_queue_name_apart(q):
    q.put_bytes(bytes(3000))
    _, ref = take_ref(q)
    name = ref_name(ref)
    header = q._ring.region.header
    try:
        assert _spill.belongs_to(name, q.name, header.creator_pid, header.creator_start)
        assert not _spill.belongs_to(name, q.name, header.creator_pid, header.creator_start + 1)
        assert not _spill.belongs_to(name, q.name + "x", header.creator_pid, header.creator_start)
        assert not _spill.belongs_to("shmipc_spill_1a2b", q.name, header.creator_pid, 0)
    finally:
        os.unlink(os.path.join(SHM, name))


def test_payloads_over_one_read_call_arrive_whole(monkeypatch):
    """Payloads over _CHUNK (1 GiB: one read call's limit) are written and read in chunks:
    shown with the chunk made small."""
    monkeypatch.setattr(_spill, "_CHUNK", 1000)
    with Queue(capacity=SMALL) as q:
        blob = secrets.token_bytes(5500)
        q.put_bytes(blob)
        q.put({"blob": blob})
        got = q.get_bytes(timeout=5)
        assert type(got) is bytes and got == blob
        assert q.get(timeout=5) == {"blob": blob}


def test_spill_bounds_are_checked_and_travel_with_a_pickled_handle():
    import pickle

    for bad in ({"max_message": -1}, {"max_spilled": -5}):
        with pytest.raises(ValueError, match="byte count"):
            Queue(capacity=SMALL, **bad)
    with pytest.raises(TypeError):
        Queue(capacity=SMALL, max_message=1.5)
    with Queue(capacity=SMALL, max_message=5000, max_spilled=7000) as q:
        clone = pickle.loads(pickle.dumps(q))
        try:
            assert (clone._spills.max_message, clone._spills.max_spilled) == (5000, 7000)
        finally:
            clone.close()


def test_the_spill_owner_is_the_segment_files_never_the_headers():
    """The uid spills are held to comes from fstat of the queue's segment file, not from the
    shared header's creator_uid, which any writer of the segment can scribble."""
    from shmipc.layout import SEGMENT_LAYOUT

    with Queue(capacity=4096) as q:
        struct.pack_into("<I", q._ring.region._view, SEGMENT_LAYOUT["creator_uid"], 12345)
        other = Queue.attach(q.name)
        try:
            assert other._spills.owner_uid == os.geteuid()
            assert other._ring.region.file_owner == (os.geteuid(), 0o600)
        finally:
            other.close()
