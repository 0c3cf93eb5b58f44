"""Spill references are untrusted input: a malformed one is CorruptedError, never a crash,
a hang, a read of a foreign segment, or a leak."""

from __future__ import annotations

import os
import struct

import posix_ipc
import pytest

from shmipc import CorruptedError, Queue, _spill
from shmipc.queue import T_SPILL_BYTES, T_SPILL_OBJ

pytestmark = pytest.mark.timeout(60)

REF = struct.Struct("<Q")


@pytest.mark.parametrize(
    "ref",
    [
        b"",
        REF.pack(1),  # a length and no name
        REF.pack(1) + b"x" * 300,  # a name longer than any segment name
        REF.pack(1) + "shmipc_spill_é".encode(),  # not ASCII
        REF.pack(1) + b"shmipc_0123456789abcdef",  # not a spill segment: never touched
        REF.pack(1) + b"shmipc_spill_../../etc",  # a path, not a name
        REF.pack(1) + b"shmipc_spill_doesnotexist",  # gone
    ],
)
def test_malformed_reference_is_corrupted_error(ref):
    with pytest.raises(CorruptedError):
        _spill.read_spill(ref)


def test_foreign_segment_named_by_a_reference_is_left_alone(shm_name):
    shm = posix_ipc.SharedMemory("/" + shm_name, posix_ipc.O_CREX, size=16)
    shm.close_fd()
    with pytest.raises(CorruptedError):
        _spill.read_spill(REF.pack(16) + shm_name.encode())
    assert os.path.exists(f"/dev/shm/{shm_name}")


def test_length_mismatch_is_corrupted_and_the_segment_is_removed():
    ref = _spill.write_spill(b"payload")
    name = ref[REF.size :].decode()
    with pytest.raises(CorruptedError, match="holds 7 bytes"):
        _spill.read_spill(REF.pack(8) + ref[REF.size :])
    assert not os.path.exists(f"/dev/shm/{name}")


@pytest.mark.parametrize("rtype", [T_SPILL_OBJ, T_SPILL_BYTES])
def test_queue_with_a_hostile_spill_record_stays_usable(rtype):
    """A peer puts a spill record naming garbage: get raises CorruptedError for that one
    message and the next message still arrives."""
    with Queue(capacity=4096) as q:
        q._ring.put(REF.pack(5) + b"shmipc_spill_nothere", type=rtype)
        q.put({"next": 1})
        with pytest.raises(CorruptedError):
            q.get(timeout=1)
        assert q.get(timeout=1) == {"next": 1}
