"""No implicit pickle, and no segment of another user without the caller's say-so.

A segment's header is shared memory: anyone who can create the name first, or write the
segment, chooses its bytes. So the header may refuse a codec but never choose pickle, and an
attach refuses a segment another uid owns unless the caller trusts that uid explicitly.
"""

from __future__ import annotations

import os
import pickle
import struct

import pytest
from queue_helpers import Point

from shmipc import Event, Queue, Region
from shmipc.layout import SEGMENT_LAYOUT, Kind
from shmipc.queue import T_OBJ
from shmipc.ring import Ring

pytestmark = pytest.mark.timeout(60)

SHM_DIR = "/dev/shm"
PICKLE_ID = 2  # shmipc.queue._CODEC_IDS["pickle"], as a hostile writer would store it
NOBODY = 65534


class _Mkdir:
    """Unpickling this runs os.mkdir(path): stands for any code a hostile pickle runs."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _scribble_flags(name: str, flags: int) -> None:
    field = SEGMENT_LAYOUT.fields["flags"]
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
    try:
        os.pwrite(fd, struct.pack("<" + field.fmt, flags), field.offset)
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["scribbled header", "made with pickle"])
def test_default_attach_never_unpickles(how, shm_name, tmp_path):
    marker = str(tmp_path / "code-ran")
    payload = pickle.dumps(_Mkdir(marker))
    codec = "msgpack" if how == "scribbled header" else "pickle"
    with Queue(capacity=4096, name=shm_name, codec=codec) as q:
        q._ring.put(payload, type=T_OBJ)  # a pickle frame, queued as a codec frame
        if how == "scribbled header":
            _scribble_flags(shm_name, PICKLE_ID)
        with pytest.raises(ValueError, match="codec='pickle'"):
            Queue.attach(shm_name)
        with pytest.raises(ValueError, match="'pickle', not 'msgpack'"):
            Queue.attach(shm_name, codec="msgpack")
        assert not os.path.exists(marker)
        # Only a caller who asks for pickle unpickles (and then it does run the code).
        with Queue.attach(shm_name, codec="pickle") as trusting:
            trusting.get(timeout=5)
        assert os.path.isdir(marker)


def test_a_pickled_handle_carries_the_codec_its_process_chose(shm_name):
    with Queue(capacity=4096, name=shm_name, codec="pickle") as q:
        copy = pickle.loads(pickle.dumps(q))
        try:
            assert copy.codec.name == "pickle"
            q.put(Point(1, 2))
            assert copy.get(timeout=5) == Point(1, 2)
        finally:
            copy.close()
        with Queue.attach(shm_name, codec="pickle") as attached:
            again = pickle.loads(pickle.dumps(attached))
            assert again.codec.name == "pickle"
            again.close()


def test_default_attach_still_follows_safe_codecs(shm_name):
    with Queue(capacity=4096, name=shm_name, codec="raw") as q:
        with Queue.attach(shm_name) as other:
            assert other.codec.name == "raw"
        q.put(b"x")


# ---- the segment's owner ---------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to chown a segment")


def _create(what: str, name: str):
    if what == "Event":
        return Event.create(name)
    if what == "Region":
        return Region.create(64, name=name)
    if what == "Ring":
        return Ring.create(4096, name=name, kind=Kind.QUEUE)
    return Queue(capacity=4096, name=name)


ATTACH = {
    "Region": Region.attach,
    "Ring": lambda n, **kw: Ring.attach(n, kind=Kind.QUEUE, **kw),
    "Queue": Queue.attach,
    "Event": Event.attach,
}


@needs_root
@pytest.mark.parametrize("what", list(ATTACH))
def test_attach_refuses_another_users_segment_unless_trusted(what, shm_name):
    handle = _create(what, shm_name)
    try:
        os.chown(os.path.join(SHM_DIR, shm_name), NOBODY, NOBODY)  # now nobody's segment
        with pytest.raises(PermissionError, match=rf"trusted_uids=\({NOBODY},\)") as info:
            ATTACH[what](shm_name)
        assert f"uid {NOBODY}" in str(info.value)
        with pytest.raises(PermissionError):
            ATTACH[what](shm_name, trusted_uids=(1000, 4242))  # other uids trusted: no
        trusted = ATTACH[what](shm_name, trusted_uids=(NOBODY,))
        try:
            # The trust travels with a pickled handle: the sender chose it.
            copy = pickle.loads(pickle.dumps(trusted))
            copy.close()
        finally:
            trusted.close()
    finally:
        handle.close()
    assert not os.path.exists(os.path.join(SHM_DIR, shm_name))


@needs_root
def test_a_segment_made_by_another_user_in_a_child(shm_name):
    """The owner is what the kernel says (fstat), whoever wrote the header."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            q = Queue(capacity=4096, name=shm_name)
            q.put("from nobody")
            os.write(w, b"made")
            code = 0
        finally:
            os._exit(code)  # leaves the segment (no atexit): the parent removes it
    os.close(w)
    try:
        assert os.read(r, 4) == b"made"
        assert os.waitpid(pid, 0)[1] == 0
        with pytest.raises(PermissionError, match="trusted_uids"):
            Queue.attach(shm_name)
        with Queue.attach(shm_name, trusted_uids=[NOBODY]) as q:
            assert q.get(timeout=5) == "from nobody"
    finally:
        os.close(r)


def test_trusted_uids_must_be_uids(shm_name):
    with Region.create(64, name=shm_name):
        for bad in (65534, "0", (-1,), (1.5,), (True,)):
            with pytest.raises(TypeError, match="trusted_uids"):
                Region.attach(shm_name, trusted_uids=bad)
        Region.attach(shm_name, trusted_uids=()).close()
        Region.attach(shm_name, trusted_uids=[os.geteuid()]).close()
