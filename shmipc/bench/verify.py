"""Exactly-once checking: sequence numbers in messages, and the verdict on what arrived.

Every benchmark message carries one 64-bit sequence number: the producer's index in the top 16
bits and the producer's own counter in the low 48 (:func:`make_seq`). Bytes payloads carry it
little-endian in their first 8 bytes (:data:`SEQ`), dicts in their ``"id"`` field. Consumers
only append what they see to an ``array("Q")`` (cheap enough for the hot loop); the parent
joins every consumer's array and :func:`check` counts what was lost, duplicated (also across
consumers) or never sent. Nothing here touches shared memory or transports.
"""

from __future__ import annotations

import dataclasses
import struct
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "END",
    "END_SEQ",
    "PRODUCER_SHIFT",
    "SEQ",
    "Verdict",
    "check",
    "check_ordered",
    "combine",
    "make_seq",
    "split_seq",
]

#: Little-endian unsigned 64-bit sequence number at the start of every bytes payload.
SEQ = struct.Struct("<Q")
#: The producer index sits above this many counter bits.
PRODUCER_SHIFT = 48
_COUNTER_MASK = (1 << PRODUCER_SHIFT) - 1
#: The sequence number no producer ever sends (producer 65535, last counter): end of stream.
END_SEQ = (1 << 64) - 1
#: End-of-stream mark of bytes workloads (8 bytes, shorter than any payload).
END = SEQ.pack(END_SEQ)


def make_seq(producer: int, counter: int) -> int:
    """The sequence number of message ``counter`` of producer ``producer``."""
    if not 0 <= producer < (1 << (64 - PRODUCER_SHIFT)) - 1:
        raise ValueError(f"producer index out of range: {producer}")
    if not 0 <= counter <= _COUNTER_MASK:
        raise ValueError(f"counter out of range: {counter}")
    return (producer << PRODUCER_SHIFT) | counter


def split_seq(seq: int) -> tuple[int, int]:
    """(producer, counter) of a sequence number."""
    return seq >> PRODUCER_SHIFT, seq & _COUNTER_MASK


@dataclass(frozen=True)
class Verdict:
    """What the consumers together received, compared with what the producers sent."""

    expected: int  #: messages sent: producers x per-producer count
    received: int  #: messages received, duplicates included
    lost: int  #: sent but never received
    duplicated: int  #: receipts beyond the first of a message
    unexpected: int  #: receipts of sequence numbers no producer sent
    corrupt: int = 0  #: receipts whose payload failed the consumer's own checks
    #: receipts older than the one before them from the same producer (ordered checks only)
    reordered: int = 0

    @property
    def ok(self) -> bool:
        """True when every message arrived exactly once, intact (and in order, when asked)."""
        return not (
            self.lost or self.duplicated or self.unexpected or self.corrupt or self.reordered
        )

    def describe(self) -> str:
        """One line for a report: "ok" or the counts that went wrong."""
        if self.ok:
            return f"ok ({self.received} of {self.expected} exactly once)"
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.lost, "lost"),
                (self.duplicated, "duplicated"),
                (self.unexpected, "unexpected"),
                (self.corrupt, "corrupt"),
                (self.reordered, "out of order"),
            )
            if n
        ]
        return f"{', '.join(parts)} (received {self.received} of {self.expected})"


def check(
    chunks: Iterable[bytes | bytearray | array],
    producers: int,
    per_producer: int,
    *,
    corrupt: int = 0,
    use_numpy: bool | None = None,
) -> Verdict:
    """Judge the sequence numbers the consumers received.

    ``chunks`` are the consumers' received sequence numbers, each as native uint64 values
    (an ``array("Q")`` or its bytes); producers ``0..producers-1`` each sent counters
    ``0..per_producer-1``. ``use_numpy`` forces (True) or forbids (False) the numpy path;
    by default numpy is used when importable.
    """
    if producers < 1 or per_producer < 0:
        raise ValueError("need at least one producer and a non-negative count")
    seqs = array("Q")
    for chunk in chunks:
        if isinstance(chunk, array):
            seqs.extend(chunk)
        else:
            seqs.frombytes(chunk)
    if use_numpy is None:
        try:
            import numpy  # noqa: F401
        except ImportError:
            use_numpy = False
        else:
            use_numpy = True
    counter = _count_numpy if use_numpy else _count_python
    lost, duplicated, unexpected = counter(seqs, producers, per_producer)
    return Verdict(
        expected=producers * per_producer,
        received=len(seqs),
        lost=lost,
        duplicated=duplicated,
        unexpected=unexpected,
        corrupt=corrupt,
    )


def check_ordered(
    chunk: bytes | bytearray | array, producers: int, per_producer: int, *, corrupt: int = 0
) -> Verdict:
    """Judge one consumer that must see every message of every producer, each producer's in
    order (a topic's subscriber): :func:`check`, plus a count of receipts that came after a
    later message of the same producer."""
    seqs = chunk if isinstance(chunk, array) else array("Q", bytes(chunk))
    verdict = check([seqs], producers, per_producer, corrupt=corrupt)
    try:
        import numpy as np
    except ImportError:
        last: dict[int, int] = {}
        reordered = 0
        for seq in seqs:
            producer = seq >> PRODUCER_SHIFT
            if seq < last.get(producer, -1):
                reordered += 1
            last[producer] = seq
    else:
        values = np.frombuffer(seqs, dtype=np.uint64) if len(seqs) else np.zeros(0, np.uint64)
        producer = values >> np.uint64(PRODUCER_SHIFT)
        order = np.argsort(producer, kind="stable")  # each producer's receipts, as received
        grouped, owners = values[order], producer[order]
        reordered = int(
            np.count_nonzero((grouped[1:] < grouped[:-1]) & (owners[1:] == owners[:-1]))
        )
    return dataclasses.replace(verdict, reordered=reordered)


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """One verdict summing several (a topic's subscribers, the two sides of a round trip)."""
    fields = ("expected", "received", "lost", "duplicated", "unexpected", "corrupt", "reordered")
    listed = list(verdicts)
    return Verdict(**{f: sum(getattr(v, f) for v in listed) for f in fields})


def _count_numpy(seqs: array, producers: int, per_producer: int) -> tuple[int, int, int]:
    """(lost, duplicated, unexpected), vectorised."""
    import numpy as np

    values = np.frombuffer(seqs, dtype=np.uint64) if len(seqs) else np.zeros(0, np.uint64)
    producer = values >> np.uint64(PRODUCER_SHIFT)
    counter = values & np.uint64(_COUNTER_MASK)
    valid = (producer < producers) & (counter < per_producer)
    slots = producer[valid] * np.uint64(per_producer) + counter[valid]
    counts = np.bincount(slots.astype(np.int64), minlength=producers * per_producer)
    lost = int(np.count_nonzero(counts == 0))
    duplicated = int(counts.sum() - (counts.size - lost))
    return lost, duplicated, int(values.size - slots.size)


def _count_python(seqs: array, producers: int, per_producer: int) -> tuple[int, int, int]:
    """(lost, duplicated, unexpected), without numpy."""
    seen = bytearray(producers * per_producer)
    duplicated = unexpected = 0
    for seq in seqs:
        producer, counter = seq >> PRODUCER_SHIFT, seq & _COUNTER_MASK
        if producer >= producers or counter >= per_producer:
            unexpected += 1
            continue
        slot = producer * per_producer + counter
        if seen[slot]:
            duplicated += 1
        else:
            seen[slot] = 1
    return seen.count(0), duplicated, unexpected
