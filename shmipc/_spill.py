"""Side segments for messages too large for a channel's ring.

The producer writes the payload into a fresh file in /dev/shm and sends a small record naming
it; the consumer checks it, reads it with one copy and unlinks it at once. Data moves by
write/read on the tmpfs file (one kernel copy each way), so no mapping of it can ever SIGBUS,
and a full /dev/shm is an OSError for the producer, before anything is sent.

A reference is untrusted input (any process that can write the queue can put one), so a spill
belongs to one queue and the reader believes nothing it has not checked:

* **Names.** ``shmipc_spill_<queue name>_<tag><random>``: the tag (16 hex digits) is a digest
  of the queue's name and its creator's pid and start time, so it changes when the name is
  reused; the random part is 16 more. A reader accepts only names under its own queue's prefix,
  so a producer can neither read nor delete another queue's large messages.
* **The file.** Opened ``O_RDONLY | O_NOFOLLOW | O_NONBLOCK`` (no symlink, no FIFO wait), then
  ``fstat``: a regular file with one link (a hard link of someone else's file is refused), owned
  by the queue's owner or the reader's own uid, not sparse (a writer allocates it whole), whose
  size is exactly the header plus the length the reference says, which is at most the reader's
  ``max_message``: all before allocating.
* **The header** (below): magic, the queue's tag, and the payload length again.
* **One copy:** ``os.pread`` of exactly the verified length into a new ``bytes``.

Spills get the queue segment's permission bits, so any uid the queue admits can read them.
/dev/shm is sticky, so a reader of another uid cannot unlink a spill: it truncates it to an
empty tombstone instead, and the creator's ``close`` (:meth:`SpillSpace.remove_all`) removes
what is left under the queue's prefix. A producer refuses to spill past ``max_spilled`` bytes
waiting under the prefix (``queue.Full``).

Spill file header (little-endian), :data:`SPILL_HEADER`:

======  ====  ==========  ======================================================
offset  size  field       meaning
======  ====  ==========  ======================================================
0       8     magic       ``b"SHMIPCsp"``
8       8     tag         the owning queue's tag (its name carries it as hex)
16      8     length      payload bytes; the file is exactly 24 + length bytes
24      ...   payload
======  ====  ==========  ======================================================
"""

from __future__ import annotations

import errno
import hashlib
import operator
import os
import queue as _stdlib_queue
import secrets
import stat
import struct
from typing import Any

from .errors import CorruptedError, MessageTooLarge

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "DEFAULT_MAX_SPILLED",
    "SPILL_HEADER",
    "SpillSpace",
    "belongs_to",
    "owner_of",
]

SHM_DIR = "/dev/shm"
PREFIX = "shmipc_spill_"
SPILL_MAGIC = b"SHMIPCsp"
SPILL_HEADER = struct.Struct("<8s8sQ")  # magic, tag, payload length (see the table above)
_REF = struct.Struct("<Q")  # a reference: payload length, then the segment name (ASCII)
_TAG_HEX = 16
_RAND_HEX = 16
_SUFFIX = 1 + _TAG_HEX + _RAND_HEX  # "_" + tag + random
_MAX_NAME = 255  # NAME_MAX of /dev/shm
_CHUNK = 1 << 30  # read/write at most this much per syscall (Linux caps one call near 2 GiB)
_HEX = frozenset("0123456789abcdef")

DEFAULT_MAX_MESSAGE = 1 << 30
"""The largest message a queue handle spills or reads from a spill by default (1 GiB)."""

DEFAULT_MAX_SPILLED = 4 << 30
"""How many bytes of a queue's spilled messages may wait at once by default; ``max_spilled=``."""


def owner_of(spill_name: str) -> str | None:
    """The name of the queue a spill segment belongs to, or None if ``spill_name`` is not a
    well-formed spill name (for ``shmipc gc``: a spill whose queue is gone is an orphan)."""
    if not spill_name.startswith(PREFIX) or len(spill_name) > _MAX_NAME:
        return None
    queue, suffix = spill_name[len(PREFIX) : -_SUFFIX], spill_name[-_SUFFIX:]
    if not queue or suffix[0] != "_" or not _HEX.issuperset(suffix[1:]):
        return None
    return queue


def belongs_to(spill_name: str, queue_name: str, creator_pid: int, creator_start: int) -> bool:
    """True if ``spill_name`` is a spill of this incarnation of ``queue_name`` (whose header
    names ``creator_pid`` and ``creator_start``); False for a spill of an earlier queue that
    had the same name, or anything else."""
    if owner_of(spill_name) != queue_name:
        return False
    tag = spill_name[-_TAG_HEX - _RAND_HEX : -_RAND_HEX]
    return tag == queue_tag(queue_name, creator_pid, creator_start).hex()


def check_bounds(max_message: int, max_spilled: int) -> None:
    """ValueError (TypeError) unless both bounds are byte counts (ints >= 0)."""
    for what, value in (("max_message", max_message), ("max_spilled", max_spilled)):
        if operator.index(value) < 0:
            raise ValueError(f"{what} must be a byte count >= 0, not {value!r}")


def queue_tag(queue_name: str, creator_pid: int, creator_start: int) -> bytes:
    """The 8 bytes that tie spills to one incarnation of the queue ``queue_name``."""
    seed = f"{queue_name}\0{creator_pid}\0{creator_start}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(seed, digest_size=_TAG_HEX // 2, person=b"shmipc-spill").digest()


class SpillSpace:
    """The spill segments of one queue, as one handle sees them: where they are named, which
    owner and mode they have, and the bounds this handle applies to them."""

    def __init__(
        self,
        queue_name: str,
        tag: bytes,
        *,
        owner_uid: int,
        mode: int,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_spilled: int = DEFAULT_MAX_SPILLED,
    ) -> None:
        check_bounds(max_message, max_spilled)
        self.queue_name = queue_name
        self.tag = tag
        self.prefix = f"{PREFIX}{queue_name}_{tag.hex()}"
        self.owner_uid = owner_uid
        self.mode = mode & 0o777
        self.max_message = max_message
        self.max_spilled = max_spilled

    @classmethod
    def of_queue(
        cls,
        queue_name: str,
        creator_pid: int,
        creator_start: int,
        file_owner: tuple[int, int],
        *,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_spilled: int = DEFAULT_MAX_SPILLED,
    ) -> SpillSpace:
        """The spill space of the queue segment ``queue_name``: spills are held to the owner
        and mode of the segment file this handle mapped (``Region.file_owner``, from fstat;
        nothing read from shared memory chooses them)."""
        owner_uid, mode = file_owner
        tag = queue_tag(queue_name, creator_pid, creator_start)
        return cls(
            queue_name,
            tag,
            owner_uid=owner_uid,
            mode=mode,
            max_message=max_message,
            max_spilled=max_spilled,
        )

    # ---- producer --------------------------------------------------------------------------

    def write(self, payload: Any) -> bytes:
        """Store ``payload`` (bytes-like) in a new spill segment; returns the reference to
        send. MessageTooLarge past ``max_message``, queue.Full past ``max_spilled``."""
        view = memoryview(payload).cast("B")
        total = len(view)
        if total > self.max_message:
            raise MessageTooLarge(
                f"message of {total} bytes is larger than max_message={self.max_message} of "
                f"queue {self.queue_name!r}"
            )
        name = random_name(self.prefix)
        if len(name) > _MAX_NAME:
            raise MessageTooLarge(
                f"queue name {self.queue_name!r} is too long to name a spill segment: use a "
                "shorter name, or a larger capacity"
            )
        waiting = self.outstanding()
        if waiting + total > self.max_spilled:
            raise _stdlib_queue.Full(
                f"queue {self.queue_name!r} already has {waiting} bytes of spilled messages "
                f"waiting; {total} more would pass max_spilled={self.max_spilled}"
            )
        path = os.path.join(SHM_DIR, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            os.fchmod(fd, self.mode)  # the queue's mode, whatever the umask
            size = SPILL_HEADER.size + total
            os.posix_fallocate(fd, 0, size)
            os.pwrite(fd, SPILL_HEADER.pack(SPILL_MAGIC, self.tag, total), 0)
            done = 0
            while done < total:
                done += os.pwrite(fd, view[done : done + _CHUNK], SPILL_HEADER.size + done)
        except OSError as exc:
            _unlink_quietly(path)
            raise OSError(
                exc.errno, f"cannot spill a message to /dev/shm: {os.strerror(exc.errno or 0)}"
            ) from exc
        except BaseException:
            _unlink_quietly(path)  # whatever went wrong, the half-written file must not stay
            raise
        finally:
            os.close(fd)
        return _REF.pack(total) + name.encode("ascii")

    def discard(self, ref: bytes | memoryview) -> None:
        """Remove the spill segment of a reference that was never sent."""
        _, name = self._parse(ref)
        _unlink_quietly(os.path.join(SHM_DIR, name))

    def outstanding(self) -> int:
        """Bytes of this queue's spill segments now in /dev/shm (read ones are gone or empty)."""
        total = 0
        try:
            with os.scandir(SHM_DIR) as entries:
                for entry in entries:
                    if entry.name.startswith(self.prefix):
                        try:
                            total += entry.stat(follow_symlinks=False).st_size
                        except OSError:
                            pass  # read and removed meanwhile
        except OSError:
            pass
        return total

    def remove_all(self) -> int:
        """Unlink every spill segment under this queue's prefix (the creator's close); those
        that cannot be removed (another uid's, in the sticky /dev/shm) stay. Returns how many
        went."""
        removed = 0
        try:
            names = [n for n in os.listdir(SHM_DIR) if n.startswith(self.prefix)]
        except OSError:
            return 0
        for name in names:
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed += 1
            except OSError:
                pass
        return removed

    # ---- consumer --------------------------------------------------------------------------

    def _parse(self, ref: bytes | memoryview) -> tuple[int, str]:
        ref = bytes(ref)
        if len(ref) <= _REF.size or len(ref) > _REF.size + _MAX_NAME:
            raise CorruptedError(f"spill reference of {len(ref)} bytes is malformed")
        (total,) = _REF.unpack_from(ref)
        raw = ref[_REF.size :]
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            raise CorruptedError(f"spill reference names no valid segment: {raw!r}") from None
        rest = name[len(self.prefix) :]
        if not name.startswith(self.prefix) or len(rest) != _RAND_HEX or not _HEX.issuperset(rest):
            raise CorruptedError(
                f"spill reference names {name!r}, which is not a spill segment of queue "
                f"{self.queue_name!r} (its spills are named {self.prefix}<16 hex digits>): "
                "left alone"
            )
        return total, name

    def read(self, ref: bytes | memoryview, *, frame: bool = False) -> bytes | bytearray:
        """The payload a reference names, checked and read with one copy; its segment is
        unlinked (or emptied). CorruptedError for any reference that fails a check.
        ``frame=True`` (a codec frame, to be decoded): a payload over 1 GiB may come back as
        the bytearray it was read into, sparing the second copy ``bytes`` would cost."""
        total, name = self._parse(ref)
        path = os.path.join(SHM_DIR, name)
        if total > self.max_message:
            _unlink_quietly(path)
            raise CorruptedError(
                f"spill reference claims {total} bytes, more than max_message="
                f"{self.max_message} of this queue handle: refused before allocating"
            )
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CorruptedError(
                f"spilled message segment {name!r} is gone (removed by someone else?)"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                _unlink_quietly(path)  # a symlink under our prefix: remove the link only
                raise CorruptedError(f"spill segment {name!r} is a symlink: refused") from None
            raise CorruptedError(f"cannot open spill segment {name!r}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            checked = False
            try:
                self._check(name, st, total)
                checked = True
                data = self._read_payload(fd, name, total, frame)
            finally:
                self._dispose(path, st, may_empty=checked)
        finally:
            os.close(fd)
        return data

    def _check(self, name: str, st: os.stat_result, total: int) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise CorruptedError(f"spill segment {name!r} is not a regular file: refused")
        if st.st_nlink != 1:
            raise CorruptedError(
                f"spill segment {name!r} has {st.st_nlink} links (a hard link of another "
                "file?): refused"
            )
        if st.st_uid not in (self.owner_uid, os.geteuid()):
            raise CorruptedError(
                f"spill segment {name!r} belongs to uid {st.st_uid}, neither the queue's "
                f"owner ({self.owner_uid}) nor this process ({os.geteuid()}): refused"
            )
        if st.st_blocks * 512 < st.st_size:  # a writer fallocates all: this one is sparse
            raise CorruptedError(
                f"spill segment {name!r} claims {st.st_size} bytes but has only "
                f"{st.st_blocks * 512} allocated (a sparse file): refused before allocating"
            )
        if st.st_size != SPILL_HEADER.size + total:
            raise CorruptedError(
                f"spilled message segment {name!r} holds {st.st_size - SPILL_HEADER.size} "
                f"bytes, its reference says {total}: refused before allocating"
            )

    def _read_payload(self, fd: int, name: str, total: int, frame: bool) -> bytes | bytearray:
        head = os.pread(fd, SPILL_HEADER.size, 0)
        if len(head) != SPILL_HEADER.size:
            raise CorruptedError(f"spill segment {name!r} ended early")
        magic, tag, length = SPILL_HEADER.unpack(head)
        if magic != SPILL_MAGIC or tag != self.tag or length != total:
            raise CorruptedError(
                f"spill segment {name!r} has a bad header (magic {magic!r}, length {length}, "
                f"reference {total}; or another queue's tag)"
            )
        data: bytes | bytearray
        if total <= _CHUNK:
            data = os.pread(fd, total, SPILL_HEADER.size)  # the one copy, into the result
        else:  # one call reads at most ~2 GiB: fill a buffer (raw bytes then copy it once more)
            buf = bytearray(total)
            with memoryview(buf) as view:
                done = 0
                while done < total:
                    n = os.preadv(fd, [view[done : done + _CHUNK]], SPILL_HEADER.size + done)
                    if n == 0:
                        break
                    done += n
            if done != total:
                raise CorruptedError(f"spilled message segment {name!r} ended early")
            data = buf if frame else bytes(buf)
        if len(data) != total:
            raise CorruptedError(f"spilled message segment {name!r} ended early")
        return data

    @staticmethod
    def _dispose(path: str, st: os.stat_result, *, may_empty: bool) -> None:
        """Unlink the segment just read (if the name still is that file); in the sticky
        /dev/shm a reader of another uid may not, so it empties the file instead, but only
        a file that passed the checks (a refused one may be a link to someone's data)."""
        try:
            now = os.stat(path, follow_symlinks=False)
        except OSError:
            return
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return  # the name was replaced meanwhile: not ours to remove
        try:
            os.unlink(path)
            return
        except OSError:
            pass
        if not may_empty:
            return
        try:
            wfd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return  # the creator's close removes it
        try:
            again = os.fstat(wfd)
            if (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino):
                os.ftruncate(wfd, 0)
        except OSError:
            pass
        finally:
            os.close(wfd)


def random_name(prefix: str) -> str:
    """``prefix`` and 16 random hex digits: the name of a new spill segment."""
    return prefix + secrets.token_hex(_RAND_HEX // 2)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
