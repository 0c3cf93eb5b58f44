"""Side segments for messages too large for a channel's ring.

The producer writes the payload into a fresh named segment and sends a small record naming
it; the consumer reads it with one copy and unlinks it at once. Data moves by write/read on
the tmpfs file (one kernel copy each way), so no mapping of it can ever SIGBUS, and a full
/dev/shm is an OSError for the producer, before anything is sent.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import posix_ipc

from ._names import check_name
from .errors import CorruptedError
from .region import random_name

__all__ = ["owner_of", "read_spill", "write_spill"]

_REF = struct.Struct("<Q")  # payload length, then the segment name (ASCII)
_MAX_NAME = 255
_CHUNK = 1 << 30  # read/write at most this much per syscall (Linux caps one call near 2 GiB)


def write_spill(payload: Any, mode: int = 0o600) -> bytes:
    """Store ``payload`` (bytes-like) in a new segment; returns the reference to send."""
    name = random_name("shmipc_spill")
    shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=mode, size=0)
    try:
        view = memoryview(payload).cast("B")
        total = len(view)
        if total:
            os.posix_fallocate(shm.fd, 0, total)
        done = 0
        while done < total:
            done += os.pwrite(shm.fd, view[done : done + _CHUNK], done)
    except OSError as exc:
        shm.unlink()
        raise OSError(
            exc.errno,
            f"cannot spill a message to /dev/shm: {os.strerror(exc.errno or 0)}",
        ) from exc
    except BaseException:
        shm.unlink()  # whatever went wrong, the half-written segment must not stay behind
        raise
    finally:
        shm.close_fd()
    return _REF.pack(total) + name.encode("ascii")


def owner_of(name: str) -> str | None:
    """The name of the queue segment whose spill ``name`` is, or None when that is not known
    (``shmipc gc`` keeps a spill segment whose queue it cannot name). Today's spill names
    carry no owner."""
    return None


def discard_spill(ref: bytes | memoryview) -> None:
    """Remove a spill segment whose reference was never sent."""
    _, name = _parse(ref)
    try:
        posix_ipc.unlink_shared_memory("/" + name)
    except posix_ipc.ExistentialError:
        pass


def _parse(ref: bytes | memoryview) -> tuple[int, str]:
    ref = bytes(ref)
    if len(ref) <= _REF.size or len(ref) > _REF.size + _MAX_NAME:
        raise CorruptedError(f"spill reference of {len(ref)} bytes is malformed")
    (total,) = _REF.unpack_from(ref)
    try:
        name = ref[_REF.size :].decode("ascii")
    except UnicodeDecodeError as exc:
        raise CorruptedError("spill reference names no valid segment") from exc
    if not name.startswith("shmipc_spill_") or "/" in name:
        raise CorruptedError(f"spill reference names a foreign segment {name!r}")
    try:
        check_name(name)  # a NUL would crash posix_ipc
    except ValueError as exc:
        raise CorruptedError(f"spill reference: {exc}") from None
    return total, name


def read_spill(ref: bytes | memoryview) -> bytes:
    """Read the payload a reference names, with one copy, and unlink its segment."""
    total, name = _parse(ref)
    try:
        shm = posix_ipc.SharedMemory("/" + name)
    except posix_ipc.ExistentialError as exc:
        raise CorruptedError(
            f"spilled message segment {name!r} is gone (removed by someone else?)"
        ) from exc
    try:
        posix_ipc.unlink_shared_memory("/" + name)
        size = os.fstat(shm.fd).st_size
        if size != total:
            raise CorruptedError(
                f"spilled message segment {name!r} holds {size} bytes, its reference says {total}"
            )
        if total <= _CHUNK:
            data = os.pread(shm.fd, total, 0)
        else:
            buf = bytearray(total)
            view = memoryview(buf)
            done = 0
            while done < total:
                n = os.preadv(shm.fd, [view[done : done + _CHUNK]], done)
                if n == 0:
                    break
                done += n
            data = bytes(buf)
        if len(data) != total:
            raise CorruptedError(f"spilled message segment {name!r} ended early")
        return data
    finally:
        shm.close_fd()
