"""Every shared header, described once: field tables with offsets, and their validation.

Code that reads or writes shared state takes offsets from here and never spells a literal
one. Offsets are built by a running sum (:class:`Layout`), so adding a field cannot leave a
gap or an overlap unnoticed. Validation on attach turns every way a header can be wrong into
a typed error (:class:`LayoutMismatch`, :class:`CorruptedError`, :class:`PeerDied`).

The common segment header
=========================

Every named segment shmipc creates starts at offset 0 with this header (little-endian,
native alignment). A named Region's ``buffer`` begins at ``SEGMENT_HEADER.size`` (128), so
creator and attachers see the same bytes.

======  ====  ====================  ======================================================
offset  size  field                 meaning
======  ====  ====================  ======================================================
0       8     magic                 ``b"SHMIPC\\x00\\x1a"``: not ours / not a segment otherwise
8       4     layout_version        :data:`LAYOUT_VERSION`; any other is LayoutMismatch
12      4     kind                  what lives after the header (:class:`Kind`)
16      4     init_state            0 creating, 1 ready, 2 being destroyed (atomic)
20      4     creator_pid           pid of the creating process
24      8     creator_start         its start time in clock ticks since boot (/proc stat 22)
32      8     total_size            bytes of the whole segment, header included
40      8     data_offset           where the payload starts (== header size, 128)
48      4     creator_uid           uid of the creator (informational, for ``shmipc ls``)
52      4     flags                 kind-specific bits
56      8     creator_pidns         inode of the creator's pid namespace (0: unknown)
64      64    reserved              zero; room to grow without moving ``data_offset``
======  ====  ====================  ======================================================
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass

from .errors import CorruptedError, LayoutMismatch

__all__ = [
    "CACHE_LINE",
    "LAYOUT_VERSION",
    "MAGIC",
    "SEGMENT_HEADER",
    "Field",
    "InitState",
    "Kind",
    "Layout",
    "SegmentHeader",
    "align_up",
]

CACHE_LINE = 64
MAGIC = b"SHMIPC\x00\x1a"
#: Bumped whenever a shared layout changes meaning. 2: Barrier's epoch word (broken flag,
#: last released epoch) for the stdlib's abort/reset/broken semantics.
LAYOUT_VERSION = 2


def align_up(n: int, alignment: int) -> int:
    """Round ``n`` up to a multiple of ``alignment`` (a power of two)."""
    return (n + alignment - 1) & ~(alignment - 1)


class Kind(enum.IntEnum):
    """What a segment holds after its common header."""

    REGION = 1
    ATOMIC_COUNTER = 2
    EVENT = 3
    SEMAPHORE = 4
    LOCK = 5
    BARRIER = 6
    RING = 7
    QUEUE = 8
    TOPIC = 9
    BUFFER_POOL = 10
    RLOCK = 11  # shmipc.sync.RLock (issue 10, the multiprocessing drop-in)
    CONDITION = 12  # shmipc.sync.Condition (its own RLock, then its waiter state)


class InitState(enum.IntEnum):
    """The ``init_state`` word: attachers wait for READY (or a dead creator)."""

    CREATING = 0
    READY = 1
    DESTROYING = 2


@dataclass(frozen=True)
class Field:
    """One field of a shared header: where it is and how wide."""

    name: str
    offset: int
    size: int
    fmt: str | None  # struct format for Python-side reads, None for opaque areas


class Layout:
    """A header's fields as a running sum of offsets, each aligned as asked.

    >>> lay = Layout("demo"); lay.add("a", 4, "I"); lay.add("b", 8, "Q", align=8)
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.fields: dict[str, Field] = {}
        self._end = 0

    def add(self, name: str, size: int, fmt: str | None = None, *, align: int = 0) -> Field:
        """Append a field at the next offset aligned to ``align`` (default: its own size)."""
        alignment = align or (size if size in (1, 2, 4, 8) else 8)
        field = Field(name, align_up(self._end, alignment), size, fmt)
        self.fields[name] = field
        self._end = field.offset + size
        return field

    def line(self, name: str, size: int, fmt: str | None = None) -> Field:
        """Append a field alone on its own cache line (for a word another process writes)."""
        self._end = align_up(self._end, CACHE_LINE)
        field = self.add(name, size, fmt)
        self._end = align_up(self._end, CACHE_LINE)
        return field

    def pad_to(self, alignment: int) -> None:
        self._end = align_up(self._end, alignment)

    @property
    def size(self) -> int:
        return self._end

    def __getitem__(self, name: str) -> int:
        return self.fields[name].offset

    def table(self) -> str:
        """The offset table, for docs and ``shmipc inspect``."""
        rows = [f"{f.offset:>6}  {f.size:>4}  {f.name}" for f in self.fields.values()]
        return "\n".join([f"{self.name} ({self.size} bytes)", "offset  size  field", *rows])


def _segment_layout() -> Layout:
    lay = Layout("segment header")
    lay.add("magic", 8, "8s")
    lay.add("layout_version", 4, "I")
    lay.add("kind", 4, "I")
    lay.add("init_state", 4, "I")
    lay.add("creator_pid", 4, "I")
    lay.add("creator_start", 8, "Q")
    lay.add("total_size", 8, "Q")
    lay.add("data_offset", 8, "Q")
    lay.add("creator_uid", 4, "I")
    lay.add("flags", 4, "I")
    lay.add("creator_pidns", 8, "Q")
    lay.pad_to(2 * CACHE_LINE)
    return lay


SEGMENT_LAYOUT = _segment_layout()
_HEADER_STRUCT = struct.Struct("<8sIIIIQQQIIQ")
assert _HEADER_STRUCT.size == SEGMENT_LAYOUT["creator_pidns"] + 8


@dataclass(frozen=True)
class SegmentHeader:
    """A decoded common header (a snapshot; ``init_state`` is read atomically elsewhere)."""

    magic: bytes
    layout_version: int
    kind: int
    init_state: int
    creator_pid: int
    creator_start: int
    total_size: int
    data_offset: int
    creator_uid: int
    flags: int
    creator_pidns: int = 0

    size = SEGMENT_LAYOUT.size

    def pack(self) -> bytes:
        return _HEADER_STRUCT.pack(
            self.magic,
            self.layout_version,
            self.kind,
            self.init_state,
            self.creator_pid,
            self.creator_start,
            self.total_size,
            self.data_offset,
            self.creator_uid,
            self.flags,
            self.creator_pidns,
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> SegmentHeader:
        if len(data) < _HEADER_STRUCT.size:
            raise CorruptedError(
                f"segment is {len(data)} bytes, smaller than shmipc's {cls.size}-byte header"
            )
        return cls(*_HEADER_STRUCT.unpack_from(data, 0))

    def validate(self, *, kind: int | None, mapped_size: int, name: str) -> None:
        """Raise a precise error for each way this header can be wrong for ``name``."""
        if self.magic != MAGIC:
            raise CorruptedError(
                f"{name!r} is not a shmipc segment or its header is corrupted "
                f"(magic {self.magic!r}, expected {MAGIC!r})"
            )
        if self.layout_version != LAYOUT_VERSION:
            raise LayoutMismatch(
                f"{name!r} has layout version {self.layout_version}; this shmipc speaks "
                f"{LAYOUT_VERSION}: attach with the shmipc version that created it"
            )
        if kind is not None and self.kind != kind:
            raise LayoutMismatch(
                f"{name!r} holds a {_kind_name(self.kind)}, not a {_kind_name(kind)}"
            )
        if self.data_offset != SEGMENT_LAYOUT.size:
            raise CorruptedError(
                f"{name!r}: data offset {self.data_offset} in header, expected "
                f"{SEGMENT_LAYOUT.size}"
            )
        if self.total_size != mapped_size:
            raise CorruptedError(
                f"{name!r}: header says {self.total_size} bytes but the segment has "
                f"{mapped_size} (truncated, or the header is corrupted)"
            )
        ours = pid_namespace()
        if self.creator_pidns and ours and self.creator_pidns != ours:
            raise LayoutMismatch(
                f"{name!r} was created in another pid namespace: shmipc's robust locks name "
                "their holders by thread id, which only means something inside one pid "
                "namespace, so sharing across namespaces could break mutual exclusion; run "
                "the processes in one pid namespace (e.g. docker --pid=container:...)"
            )


SEGMENT_HEADER = SEGMENT_LAYOUT


_pidns: tuple[int, int] | None = None


def pid_namespace() -> int:
    """The inode of this process's pid namespace (0 if /proc does not say), cached per pid."""
    global _pidns
    pid = os.getpid()
    if _pidns is None or _pidns[0] != pid:
        try:
            ino = os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            ino = 0
        _pidns = (pid, ino)
    return _pidns[1]


def _kind_name(kind: int) -> str:
    try:
        return Kind(kind).name.lower().replace("_", " ")
    except ValueError:
        return f"unknown kind {kind}"
