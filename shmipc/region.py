"""Regions: the mappings every shared structure lives in.

Three kinds, one class (see docs/regions.md for which to pick):

* ``Region.anonymous(size)``: ``MAP_SHARED|MAP_ANONYMOUS``. Shared with children forked after
  it is made; gone when the last process that maps it exits. No name, nothing to leak.
* ``Region.create(size, name=...)`` / ``Region.attach(name)``: a named POSIX shared-memory
  segment (``shm_open`` through posix_ipc, a tmpfs file in /dev/shm) that unrelated processes
  attach by name. It starts with shmipc's common header (:mod:`shmipc.layout`); ``buffer`` is
  the part after it. Space is reserved with ``posix_fallocate`` at creation, so a full
  /dev/shm is an ``OSError`` then and never a SIGBUS later.
* ``Region.file(path, size)``: a file mapped ``MAP_SHARED`` (or ``MAP_PRIVATE``,
  copy-on-write). The file is the user's array: no header of ours is written into it.

The creator of a named segment owns the name: it unlinks it on ``close()``, when its handle is
garbage-collected, and at interpreter exit, while the name still names the segment it made
(compared by inode). Attachers and forked children never unlink. Names are checked by
:mod:`shmipc._names`; attach refuses a segment another uid owns unless ``trusted_uids`` names it.
"""

from __future__ import annotations

import atexit
import errno
import math
import mmap
import os
import secrets
import stat
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Literal

import posix_ipc

from . import _proc
from ._names import check_name
from ._native import ffi, lib
from .errors import Closed, CorruptedError, PeerDied
from .layout import (
    LAYOUT_VERSION,
    MAGIC,
    SEGMENT_LAYOUT,
    InitState,
    Kind,
    SegmentHeader,
    pid_namespace,
)

__all__ = ["ATTACH_TIMEOUT", "SHM_DIR", "Region"]

SHM_DIR = "/dev/shm"
#: How long ``attach`` waits for a segment whose creator is still initialising it.
ATTACH_TIMEOUT = 5.0
PAGE_SIZE = mmap.PAGESIZE
HUGEPAGE_SIZE = 2 << 20
_MAP_HUGETLB = 0x40000
_MADV_POPULATE_WRITE = 23  # Linux 5.14+

Advice = Literal["normal", "sequential", "random", "willneed", "dontneed", "hugepage"]
_ADVICE = {
    "normal": mmap.MADV_NORMAL,
    "sequential": mmap.MADV_SEQUENTIAL,
    "random": mmap.MADV_RANDOM,
    "willneed": mmap.MADV_WILLNEED,
    "dontneed": mmap.MADV_DONTNEED,
    "hugepage": getattr(mmap, "MADV_HUGEPAGE", 14),
}

_INIT_STATE_OFF = SEGMENT_LAYOUT["init_state"]
_MAGIC_OFF = SEGMENT_LAYOUT["magic"]
_MAGIC_END = _MAGIC_OFF + SEGMENT_LAYOUT.fields["magic"].size
_MAGIC_WORD = int.from_bytes(MAGIC, sys.byteorder)  # the magic as one native 64-bit store


def _shm_name(name: str) -> str:
    """posix_ipc's spelling of a valid segment name (see :mod:`shmipc._names`)."""
    return "/" + check_name(name)


def random_name(prefix: str = "shmipc") -> str:
    """An unguessable segment name (64 random bits), so that names cannot be squatted."""
    return f"{prefix}_{secrets.token_hex(8)}"


def _open_shm(name: str, flags: int = 0, mode: int = 0o600) -> posix_ipc.SharedMemory:
    """shm_open with posix_ipc's errors turned into the builtin ones users expect."""
    try:
        return posix_ipc.SharedMemory(_shm_name(name), flags, mode=mode, size=0)
    except posix_ipc.ExistentialError as exc:
        if flags & posix_ipc.O_EXCL:
            raise FileExistsError(errno.EEXIST, f"shared-memory segment {name!r} exists") from exc
        raise FileNotFoundError(errno.ENOENT, f"no shared-memory segment {name!r}") from exc
    except posix_ipc.PermissionsError as exc:
        raise PermissionError(
            errno.EACCES, f"no permission to open shared-memory segment {name!r}"
        ) from exc


def _reserve(fd: int, size: int, what: str, directory: str) -> None:
    """Reserve ``size`` bytes of real space now, so that touching them later cannot SIGBUS."""
    try:
        vfs = os.statvfs(directory)
        free = vfs.f_bavail * vfs.f_frsize
    except OSError:
        free = None
    if free is not None and size > free:
        raise OSError(
            errno.ENOSPC,
            f"not enough space in {directory} for {what}: need {size} bytes, "
            f"{free} free (raise the tmpfs size or ask for less)",
        )
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL) and directory != SHM_DIR:
            os.ftruncate(fd, size)  # a file system without fallocate: size it at least
            return
        raise OSError(
            exc.errno,
            f"cannot reserve {size} bytes in {directory} for {what}: {os.strerror(exc.errno)}"
            + (" (the file system is full)" if exc.errno == errno.ENOSPC else ""),
        ) from exc


def _prefault(mm: mmap.mmap) -> None:
    """Populate every page now (MADV_POPULATE_WRITE); on older kernels, touch each page."""
    try:
        mm.madvise(_MADV_POPULATE_WRITE)
    except OSError:
        view = memoryview(mm)
        try:
            for off in range(0, len(mm), PAGE_SIZE):
                view[off] = view[off]  # a write fault that keeps the byte as it was
        finally:
            view.release()


class Region:
    """A mapping of shared memory: ``buffer`` is a writable memoryview of its payload."""

    def __init__(
        self,
        mm: mmap.mmap,
        *,
        data_offset: int,
        name: str | None = None,
        path: str | None = None,
        ident: tuple[int, int] | None = None,
        owner: bool = False,
        kind: int = Kind.REGION,
        private: bool = False,
        trusted_uids: tuple[int, ...] = (),
        file_owner: tuple[int, int] | None = None,
    ) -> None:
        # Use the class methods; this constructor only takes ownership of a made mapping.
        # The mmap object keeps its own duplicate of the file's fd (check_size fstats it
        # through ``mm.size()``), so a region holds no other fd that dropping it could leak.
        self._mm: mmap.mmap | None = mm
        self._data_offset = data_offset
        self._name = name
        self._path = path
        self._trusted_uids = trusted_uids
        self._file_owner = file_owner  # (uid, mode) as fstat saw the file when it was mapped
        # (st_dev, st_ino) of the segment this process created: close unlinks the name only
        # while it still names that segment, never a newcomer's that reused the name.
        self._ident = ident
        self._owner_pid = os.getpid() if owner else None
        self._kind = kind
        self._private = private
        self._view = memoryview(mm)
        self._buffer = self._view[data_offset:]
        self._base_ptr: Any = None
        self._lock = threading.Lock()
        if owner:
            _owned.add(self)

    # ---- constructors --------------------------------------------------------------------

    @classmethod
    def anonymous(
        cls, size: int, *, hugepages: bool | Literal["auto"] = False, prefault: bool = False
    ) -> Region:
        """A ``MAP_SHARED|MAP_ANONYMOUS`` region shared with children forked after this call."""
        size = _check_size(size)
        if hugepages is True:
            mapped = -(-size // HUGEPAGE_SIZE) * HUGEPAGE_SIZE
            try:
                mm = mmap.mmap(-1, mapped, flags=mmap.MAP_SHARED | _MAP_HUGETLB)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"cannot map {mapped} bytes of hugepages ({os.strerror(exc.errno)}): "
                    "none are reserved or too few are free; reserve them with "
                    "`sysctl vm.nr_hugepages=N`, or pass hugepages='auto' to fall back to "
                    "transparent hugepages",
                ) from exc
        else:
            mm = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
        region = cls(mm, data_offset=0)
        region._apply_options(hugepages, prefault)
        return region

    @classmethod
    def create(
        cls,
        size: int,
        *,
        name: str | None = None,
        mode: int = 0o600,
        hugepages: bool | Literal["auto"] = False,
        prefault: bool = False,
    ) -> Region:
        """A new named segment of ``size`` payload bytes; an existing name is FileExistsError."""
        return cls._create_segment(
            size, kind=Kind.REGION, name=name, mode=mode, hugepages=hugepages, prefault=prefault
        )

    @classmethod
    def attach(
        cls, name: str, *, timeout: float = ATTACH_TIMEOUT, trusted_uids: Iterable[int] = ()
    ) -> Region:
        """Map an existing named segment (any kind). Never takes ownership of the name.

        A segment owned by another user is refused (PermissionError) unless its owner's uid
        is in ``trusted_uids``: whoever owns a segment can write anything into it.
        """
        return cls._attach_segment(name, kind=None, timeout=timeout, trusted_uids=trusted_uids)

    @classmethod
    def file(
        cls, path: str | os.PathLike[str], size: int | None = None, *, private: bool = False
    ) -> Region:
        """Map a file: offset N of ``buffer`` is offset N of the file.

        With ``size``, the file is created if missing and grown (space reserved) to at least
        ``size`` bytes; without it, the whole existing file is mapped. ``private=True`` maps
        copy-on-write (``MAP_PRIVATE``): writes stay in this process and the file is never
        modified, so it is neither created nor grown: a ``size`` larger than the file is a
        ValueError (pages past its end would SIGBUS).
        """
        path = os.fspath(path)
        flags = os.O_RDONLY if private else os.O_RDWR
        if size is not None:
            size = _check_size(size)
            if not private:
                flags = os.O_RDWR | os.O_CREAT
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{path!r} is not a regular file")
            if size is None:
                size = st.st_size
                if size == 0:
                    raise ValueError(f"{path!r} is empty: pass size= to grow it before mapping")
            elif st.st_size < size and private:
                raise ValueError(
                    f"{path!r} has {st.st_size} bytes, fewer than size={size}: a private "
                    "mapping never modifies the file, so it cannot grow it (and pages past its "
                    "end would SIGBUS); grow the file first or map it shared"
                )
            elif st.st_size < size:
                _reserve(fd, size, f"file {path!r}", os.path.dirname(os.path.abspath(path)))
            access = mmap.ACCESS_COPY if private else mmap.ACCESS_WRITE
            mm = mmap.mmap(fd, size, access=access)
        finally:
            os.close(fd)  # the mmap keeps a duplicate of its own, closed with it
        return cls(mm, data_offset=0, path=path, private=private)

    # ---- named segments (used by every structure that lives in one) -----------------------

    @classmethod
    def _create_segment(
        cls,
        size: int,
        *,
        kind: int,
        name: str | None = None,
        mode: int = 0o600,
        hugepages: bool | Literal["auto"] = False,
        prefault: bool = False,
        init: Callable[[Region], None] | None = None,
        flags: int = 0,
    ) -> Region:
        """Create, size, map and initialise a named segment; publish it READY last.

        ``init`` runs on the new region before attachers may use it. If anything fails, the
        name is unlinked before the error propagates.
        """
        size = _check_size(size)
        if hugepages is True:
            raise ValueError(
                "hugepages=True needs MAP_HUGETLB, which a POSIX shm segment on tmpfs cannot "
                "have; use hugepages='auto' (transparent hugepages) or Region.anonymous"
            )
        total = SEGMENT_LAYOUT.size + size
        if name is not None:
            name = check_name(name)
        chosen = name
        for _attempt in range(16):
            if name is None:
                chosen = random_name()
            try:
                shm = _open_shm(chosen, posix_ipc.O_CREX, mode)  # type: ignore[arg-type]
                break
            except FileExistsError:
                if name is not None:
                    raise
        else:  # pragma: no cover - 16 collisions of 64 random bits
            raise FileExistsError("could not find a free random segment name")
        assert chosen is not None
        region = None
        try:
            os.fchmod(shm.fd, mode)  # exactly the mode asked for, whatever the umask
            _reserve(shm.fd, total, f"segment {chosen!r}", SHM_DIR)
            mm = mmap.mmap(shm.fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            st = os.fstat(shm.fd)
            shm.close_fd()
            pid, started = _proc.self_identity()
            header = SegmentHeader(
                magic=MAGIC,
                layout_version=LAYOUT_VERSION,
                kind=int(kind),
                init_state=InitState.CREATING,
                creator_pid=pid,
                creator_start=started,
                total_size=total,
                data_offset=SEGMENT_LAYOUT.size,
                creator_uid=os.getuid(),
                flags=flags,
                creator_pidns=pid_namespace(),
            )
            region = cls(
                mm,
                data_offset=SEGMENT_LAYOUT.size,
                name=chosen,
                ident=(st.st_dev, st.st_ino),
                file_owner=(st.st_uid, st.st_mode & 0o777),
                owner=True,
                kind=kind,
            )
            # The segment already has its full size, so an attacher may map it now: write the
            # header's other fields first and its magic last. Release: pairs with the acquire
            # load of the magic in _attach_segment, so an attacher that sees the magic sees
            # the whole header (and never takes a half-written one for a corrupt one).
            packed = header.pack()
            region._view[_MAGIC_END : len(packed)] = packed[_MAGIC_END:]
            lib.shmipc_store64_release(region._base, _MAGIC_OFF, _MAGIC_WORD)
            region._apply_options(hugepages, prefault)
            if init is not None:
                init(region)
            # Release: pairs with the acquire load in _wait_ready, so an attacher that sees
            # READY also sees the header and everything ``init`` wrote.
            lib.shmipc_store32_release(region._base, _INIT_STATE_OFF, InitState.READY)
            return region
        except BaseException:
            if region is not None:
                region.close()
            else:
                try:
                    shm.unlink()
                finally:
                    if shm.fd >= 0:
                        shm.close_fd()
            raise

    @classmethod
    def _attach_segment(
        cls,
        name: str,
        *,
        kind: int | None,
        timeout: float = ATTACH_TIMEOUT,
        trusted_uids: Iterable[int] = (),
    ) -> Region:
        """Map a named segment and validate its owner and its header against ``kind`` (None:
        any). Every structure's attach comes through here."""
        name = check_name(name)
        deadline = time.monotonic() + _check_timeout(timeout)
        trusted = _check_uids(trusted_uids)
        shm = _open_shm(name)
        try:
            st = _check_owner(shm.fd, name, trusted)
            # A creator sizes the segment right after creating it: wait for that briefly.
            while True:
                total = os.fstat(shm.fd).st_size
                if total >= SEGMENT_LAYOUT.size:
                    break
                if time.monotonic() >= deadline:
                    raise CorruptedError(
                        f"segment {name!r} is {total} bytes, too small to be a shmipc segment "
                        "(its creator died before sizing it, or it is not one of ours)"
                    )
                time.sleep(0.001)
            mm = mmap.mmap(shm.fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            shm.close_fd()
        region = cls(
            mm,
            data_offset=SEGMENT_LAYOUT.size,
            name=name,
            trusted_uids=trusted,
            file_owner=(st.st_uid, st.st_mode & 0o777),
        )
        try:
            # A zero magic: the creator has sized the segment but not yet published its header
            # (see _create_segment). Wait for it; any other magic is judged at once.
            while lib.shmipc_load64_acquire(region._base, _MAGIC_OFF) == 0:
                if time.monotonic() >= deadline:
                    raise CorruptedError(
                        f"segment {name!r} has no shmipc header (its creator died before "
                        "writing it, or it is not one of ours)"
                    )
                time.sleep(0.001)
            header = SegmentHeader.unpack(region._view[: SEGMENT_LAYOUT.size])
            header.validate(kind=kind, mapped_size=total, name=name)
            region._kind = header.kind
            region._wait_ready(header, deadline)
        except BaseException:
            region.close()
            raise
        return region

    def _wait_ready(self, header: SegmentHeader, deadline: float) -> None:
        """Wait for the creator to publish READY; a dead creator is PeerDied, not a hang."""
        while True:
            state = lib.shmipc_load32_acquire(self._base, _INIT_STATE_OFF)
            if state == InitState.READY:
                return
            if state != InitState.CREATING:
                raise CorruptedError(f"segment {self._name!r} has init state {state}")
            if not _proc.is_alive(header.creator_pid, header.creator_start):
                raise PeerDied(
                    f"segment {self._name!r}: its creator (pid {header.creator_pid}) died "
                    "during initialisation; remove it with `shmipc gc`"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"segment {self._name!r} is still being initialised by pid {header.creator_pid}"
                )
            time.sleep(0.001)

    # ---- properties ----------------------------------------------------------------------

    @property
    def buffer(self) -> memoryview:
        """The payload as a writable memoryview (after the header, for named segments)."""
        self._check_open()
        return self._buffer

    @property
    def size(self) -> int:
        """Bytes of payload (``len(buffer)``)."""
        return len(self._buffer) if self._mm is not None else 0

    @property
    def name(self) -> str | None:
        """The segment's name (without the leading slash), or None if anonymous or a file."""
        return self._name

    @property
    def path(self) -> str | None:
        """The mapped file, for ``Region.file``."""
        return self._path

    @property
    def closed(self) -> bool:
        return self._mm is None

    @property
    def owner(self) -> bool:
        """True in the process that created the named segment (and will unlink it)."""
        return self._owner_pid == os.getpid()

    @property
    def kind(self) -> int:
        return self._kind

    @property
    def file_owner(self) -> tuple[int, int] | None:
        """For a named segment: (owner uid, permission bits) of the file, as fstat saw them
        when it was mapped (not read from the shared header); None for other regions."""
        return self._file_owner

    @property
    def header(self) -> SegmentHeader | None:
        """A snapshot of the common header of a named segment (None for others)."""
        self._check_open()
        if self._data_offset == 0:
            return None
        return SegmentHeader.unpack(self._view[: SEGMENT_LAYOUT.size])

    @property
    def _base(self) -> Any:
        """cffi ``char *`` to the start of the mapping (header included), made once."""
        if self._base_ptr is None:
            self._check_open()
            # From the mmap itself, not a memoryview of it: the gc may clear a memoryview in a
            # reference cycle while cffi still holds its buffer, which crashed the interpreter.
            self._base_ptr = ffi.from_buffer("char[]", self._mm, require_writable=True)
        return self._base_ptr

    def pointer(self, offset: int = 0) -> tuple[Any, int]:
        """(cffi base pointer, absolute offset) of payload ``offset``, for native calls.

        The pointer object keeps the mapping alive while it exists: a structure that holds it
        can never touch unmapped memory, whatever the user closes.
        """
        if offset < 0 or offset > self.size:
            raise ValueError(f"offset {offset} outside region of {self.size} bytes")
        return self._base, self._data_offset + offset

    def _mapping(self, offset: int = 0) -> tuple[mmap.mmap, int]:
        """(the mmap, absolute offset) of payload ``offset``: what a native object that keeps
        an address into the region exports, to pin the mapping for as long as it lives
        (docs/internals/lifetime.md)."""
        self._check_open()
        if offset < 0 or offset > self.size:
            raise ValueError(f"offset {offset} outside region of {self.size} bytes")
        assert self._mm is not None
        return self._mm, self._data_offset + offset

    # ---- operations ----------------------------------------------------------------------

    def flush(self, offset: int = 0, size: int | None = None) -> None:
        """msync the payload range to its file (a no-op for shm, anonymous and private maps)."""
        self._check_open()
        if self._path is None or self._private:
            return
        assert self._mm is not None
        size = self.size - offset if size is None else size
        self.check_size()
        start = offset - offset % PAGE_SIZE
        self._mm.flush(start, size + offset - start)

    def advise(self, advice: Advice, offset: int = 0, size: int | None = None) -> None:
        """madvise a payload range: sequential, random, willneed, dontneed, hugepage, normal."""
        self._check_open()
        assert self._mm is not None
        try:
            flag = _ADVICE[advice]
        except KeyError:
            raise ValueError(f"unknown advice {advice!r}; choose from {sorted(_ADVICE)}") from None
        start = self._data_offset + offset
        aligned = start - start % PAGE_SIZE
        size = self.size - offset if size is None else size
        self._mm.madvise(flag, aligned, size + start - aligned)

    def check_size(self) -> None:
        """For a file mapping or a named segment: raise CorruptedError if the file (the
        segment's file in /dev/shm) shrank below the mapping.

        Touching a page past the end of a truncated file kills the process with SIGBUS; this
        one fstat says so safely. ``flush()`` calls it; anonymous regions cannot shrink.
        """
        if self._mm is None or (self._name is None and self._path is None):
            return
        actual = self._mm.size()  # an fstat of the mapping's own fd
        if actual < len(self._mm):
            what = f"file {self._path!r}" if self._path is not None else f"segment {self._name!r}"
            raise CorruptedError(
                f"{what} was truncated to {actual} bytes while mapped with "
                f"{len(self._mm)}: touching the missing pages would raise SIGBUS"
            )

    def _apply_options(self, hugepages: bool | Literal["auto"], prefault: bool) -> None:
        assert self._mm is not None
        if hugepages == "auto":
            try:
                self._mm.madvise(_ADVICE["hugepage"])
            except OSError:
                pass  # transparent hugepages off for this mapping type: a hint, not a promise
        elif hugepages not in (True, False):
            raise ValueError(f"hugepages must be True, False or 'auto', not {hugepages!r}")
        if prefault:
            _prefault(self._mm)

    def close(self) -> None:
        """Drop this handle (and, in the creating process, unlink the name).

        The mapping itself goes away once no view or structure of this process uses it.
        """
        with self._lock:
            if self._mm is None:
                return
            mm, self._mm = self._mm, None
            _owned.discard(self)
            if self._owner_pid == os.getpid() and self._name is not None:
                _unlink_if_ours(self._name, self._ident)
            self._owner_pid = None
            # Drop (not release) our views: a structure may still hold a pointer made from
            # them, and it must keep the mapping alive rather than dangle.
            self._buffer = self._view = memoryview(b"")
            self._base_ptr = None
            try:
                mm.close()
            except BufferError:
                pass  # views or structures still use it: it is unmapped when they are freed

    def unlink(self) -> None:
        """Remove the segment's name now (any process may); the memory lives while mapped."""
        if self._name is None:
            raise ValueError("only a named region has a name to unlink")
        _unlink_quietly(self._name, missing_ok=False)
        self._owner_pid = None

    def _check_open(self) -> None:
        if self._mm is None:
            raise Closed("this region is closed")

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._mm is not None and self._owner_pid == os.getpid():
                self.close()
        except Exception:
            pass

    def __reduce__(self) -> tuple[Any, ...]:
        if self._name is not None:
            # The trust this handle was attached with travels with it: the sender chose it.
            return (_attach_by_name, (self._name, self._trusted_uids))
        if self._path is not None:
            return (_map_file, (self._path, self._private))
        raise TypeError(
            "an anonymous Region cannot be pickled: it is shared only with children forked "
            "after it was made; use Region.create(size) for a named one that a spawned or "
            "unrelated process can attach"
        )

    def __repr__(self) -> str:
        what = self._name or self._path or "anonymous"
        state = "closed" if self._mm is None else f"{self.size} bytes"
        return f"<shmipc.Region {what} {state}>"


def _attach_by_name(name: str, trusted_uids: tuple[int, ...] = ()) -> Region:
    return Region.attach(name, trusted_uids=trusted_uids)


def _map_file(path: str, private: bool) -> Region:
    return Region.file(path, private=private)


def _check_size(size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"size must be an int, not {type(size).__name__}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return size


def _check_timeout(timeout: float) -> float:
    """An attach timeout in seconds: a number, not NaN, not negative (inf: wait for good)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
    return timeout


def _check_uids(uids: Iterable[int]) -> tuple[int, ...]:
    if isinstance(uids, int):
        raise TypeError("trusted_uids must be a collection of uids, e.g. (1000,), not an int")
    checked = tuple(uids)
    for uid in checked:
        if isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
            raise TypeError(f"trusted_uids must hold uids (ints >= 0), not {uid!r}")
    return checked


def _check_owner(fd: int, name: str, trusted: tuple[int, ...]) -> os.stat_result:
    """Refuse a segment another user owns unless the caller trusts that user: its owner can
    write anything into it (and, with the pickle codec, that would be code to run). Returns
    the file's status, as checked."""
    st = os.fstat(fd)
    owner = st.st_uid
    euid = os.geteuid()
    if owner != euid and owner not in trusted:
        raise PermissionError(
            errno.EPERM,
            f"segment {name!r} is owned by uid {owner}, not by this process's uid {euid}: "
            f"its owner can write anything into it. If you trust that user, attach with "
            f"trusted_uids=({owner},)",
        )
    return st


def _unlink_if_ours(name: str, ident: tuple[int, int] | None) -> None:
    """Unlink ``name`` only while it still names the segment whose (st_dev, st_ino) is
    ``ident``: someone may have removed ours and created a new segment under the name.
    (A name replaced between this stat and the unlink is a window no POSIX call closes.)"""
    if ident is None:
        return
    try:
        st = os.stat(os.path.join(SHM_DIR, name), follow_symlinks=False)
    except OSError:
        return  # gone already (or not ours to judge): nothing of ours to remove
    if (st.st_dev, st.st_ino) == ident:
        _unlink_quietly(name)


def _unlink_quietly(name: str, *, missing_ok: bool = True) -> None:
    try:
        posix_ipc.unlink_shared_memory(_shm_name(name))
    except posix_ipc.ExistentialError:
        if not missing_ok:
            raise FileNotFoundError(errno.ENOENT, f"no shared-memory segment {name!r}") from None


# Named segments this process created and has not closed: unlinked at interpreter exit.
_owned: weakref.WeakSet[Region] = weakref.WeakSet()


@atexit.register
def _unlink_owned_at_exit() -> None:
    for region in list(_owned):
        if region._owner_pid == os.getpid():
            region.close()
