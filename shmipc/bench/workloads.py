"""The workloads: what each producer sends, what each consumer checks, and the ping-pong.

A workload is data (:class:`Workload`) plus the loops its children run. The loops take the
transport's own bound methods from a :class:`~.transports.Sender` or
:class:`~.transports.Receiver` into locals and do as little else as they can: build the message
(8-byte sequence number + padding, or a small dict), send it; receive, note the sequence number
in an ``array("Q")``. The same loops run for every transport, so their cost (about 0.1 us a
message on each side) is the same in every row. Checking happens after the clock stops.
"""

from __future__ import annotations

import struct
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .transports import BATCH, Receiver, Sender
from .verify import END, END_SEQ, SEQ, make_seq

__all__ = [
    "GROUPS",
    "WORKLOADS",
    "ConsumerResult",
    "PingResult",
    "Workload",
    "consume",
    "ping",
    "pong",
    "produce",
    "warmup_rounds",
    "workload_named",
    "workloads_named",
]

#: A 64-byte message: the little-endian sequence number, then zeros; one C call builds it.
_MSG_64 = struct.Struct(f"<Q{64 - SEQ.size}x")
_MSG_WORDS = _MSG_64.size // 8  # 64-bit words per 64-byte message
MIB = 1 << 20


@dataclass(frozen=True)
class Workload:
    """One section of the report."""

    name: str  #: key for ``--only`` and label in the table
    description: str
    unit: str  #: "msgs/s", "GB/s" or "us" (latency)
    producers: int = 1
    consumers: int = 1
    objects: bool = False  #: dict messages instead of bytes
    size: int = 64  #: payload bytes (estimate for dicts)
    pingpong: bool = False
    probe: int = 20_000  #: first calibration count
    quick: int = 2_000  #: count for --quick
    max_count: int = 50_000_000  #: never more than this many messages in one row
    #: "stream" (producers -> consumers through one channel), "fanout" (one publisher, every
    #: subscriber gets every message: see fanout.py) or "arrays" (round trips: see arrays.py)
    kind: str = "stream"
    group: str = ""  #: a name for --only that selects every workload of the group
    smoke: bool = True  #: part of a --quick run (False: only when named by itself)

    def per_producer(self, count: int) -> int:
        """Messages each producer sends when the row sends about ``count`` in all."""
        return max(1, count // self.producers)


WORKLOADS: tuple[Workload, ...] = (
    Workload("64B", "64-byte bytes messages, 1 producer -> 1 consumer", "msgs/s"),
    Workload(
        "dict",
        'small dicts {"id": i, "name": "item", "vals": [1.0, 2.0, 3.0]}, 1 -> 1',
        "msgs/s",
        objects=True,
        size=48,
        probe=10_000,
        quick=1_000,
    ),
    Workload(
        "1MiB",
        "1 MiB bytes messages, 1 -> 1",
        "GB/s",
        size=MIB,
        probe=64,
        quick=16,
        max_count=100_000,
    ),
    Workload(
        "pingpong",
        "64-byte round trip over two channels between two processes, blocking",
        "us",
        pingpong=True,
        probe=1_000,
        quick=200,
        max_count=2_000_000,
    ),
    Workload(
        "2x2",
        "64-byte bytes messages, 2 producers -> 2 consumers",
        "msgs/s",
        producers=2,
        consumers=2,
    ),
)


def _fanout(message: str, subscribers: int) -> Workload:
    objects = message == "dict"
    return Workload(
        f"fanout-{message}-{subscribers}",
        f"1 publisher -> {subscribers} subscriber process{'es' if subscribers > 1 else ''}, "
        f"{'small dicts' if objects else '64-byte messages'}, every subscriber gets every one",
        "msgs/s",
        consumers=subscribers,
        objects=objects,
        size=48 if objects else 64,
        probe=10_000 if objects else 20_000,
        quick=1_000 if objects else 2_000,
        max_count=10_000_000,
        kind="fanout",
        group="fanout",
    )


def _arrays(mib: int, probe: int, quick: int, max_count: int, smoke: bool = True) -> Workload:
    return Workload(
        f"arrays-{mib}MiB",
        f"round trips of {mib} MiB float64 arrays between two processes",
        "GB/s",
        size=mib * MIB,
        probe=probe,
        quick=quick,
        max_count=max_count,
        kind="arrays",
        group="arrays",
        smoke=smoke,
    )


#: What each group's workloads are, in one line for the report.
GROUPS = {
    "fanout": "fanout-M-N = 1 publisher -> N subscriber processes, each receiving every message "
    "(M: 64B = 64-byte bytes, dict = small dicts)",
    "arrays": "arrays-S = round trips of S float64 arrays between two processes",
}

#: One publisher to 1, 2 and 4 subscribers (fanout.py), then round trips of large arrays
#: (arrays.py). Probe runs size every row to the duration asked for; the caps only bound the
#: fastest rows, and leave loans (0.5-1 ms a 32 MiB round trip, 5-10 ms at 256 MiB) room for
#: about 2 s: a timed span of a tenth of a second swings by tens of percent with one hiccup.
WORKLOADS += (
    *(_fanout(message, n) for message in ("64B", "dict") for n in (1, 2, 4)),
    _arrays(1, probe=32, quick=8, max_count=20_000),
    _arrays(32, probe=2, quick=2, max_count=4000, smoke=False),
    _arrays(256, probe=1, quick=1, max_count=400, smoke=False),
)


def workload_named(name: str) -> Workload:
    """The workload called ``name`` (case-insensitive)."""
    for workload in WORKLOADS:
        if workload.name.lower() == name.lower():
            return workload
    known = ", ".join(w.name for w in WORKLOADS)
    raise KeyError(f"unknown workload {name!r} (known: {known})")


def workloads_named(name: str) -> list[Workload]:
    """The workload called ``name``, or every workload of the group called ``name``."""
    group = [w for w in WORKLOADS if w.group and w.group.lower() == name.lower()]
    return group or [workload_named(name)]


def warmup_rounds(rounds: int) -> int:
    """Untimed round trips a ping-pong makes before it measures ``rounds``."""
    return min(5_000, max(50, rounds // 10))


# --- producers ---------------------------------------------------------------------------


def produce(workload: Workload, sender: Sender, producer: int, count: int) -> None:
    """Send ``count`` messages of ``workload`` as producer ``producer`` (not the end mark).

    Small bytes go in batches when the sender offers ``send_many`` (the batched variants).
    """
    first = make_seq(producer, 0)
    seqs = range(first, first + count)
    if workload.objects:
        _produce_dicts(sender.send, seqs)
    elif workload.size >= MIB:
        _produce_large(sender, seqs, workload.size)
    elif sender.in_place is not None:
        _produce_in_place(sender, seqs)
    elif sender.send_many is not None:
        _produce_batched(sender, seqs)
    else:
        _produce_small(sender.send, seqs)


def _produce_small(send: Callable[[bytes], object], seqs: range) -> None:
    for message in map(_MSG_64.pack, seqs):
        send(message)


def _produce_batched(sender: Sender, seqs: range) -> None:
    send_many = sender.send_many
    assert send_many is not None
    pack = _MSG_64.pack
    for lo in range(seqs.start, seqs.stop, BATCH):
        send_many(list(map(pack, range(lo, min(lo + BATCH, seqs.stop)))))


def _produce_in_place(sender: Sender, seqs: range) -> None:
    """Each 64-byte message built where it is sent: reserve, pack into the view, commit."""
    assert sender.in_place is not None
    reserve, commit = sender.in_place
    pack_into, size = _MSG_64.pack_into, _MSG_64.size
    if sender.held:  # the view kept in a variable until the next one replaces it
        for seq in seqs:
            view = reserve(size)
            pack_into(view, 0, seq)
            commit()
        return
    for seq in seqs:
        pack_into(reserve(size), 0, seq)
        commit()


def _produce_dicts(send: Callable[[Any], object], seqs: range) -> None:
    for seq in seqs:
        send({"id": seq, "name": "item", "vals": [1.0, 2.0, 3.0]})


def _produce_large(sender: Sender, seqs: range, size: int) -> None:
    """Each message: sequence number, filler, the sequence number again (checks the length)."""
    send_parts = sender.send_parts
    assert send_parts is not None
    filler = bytes(range(256)) * ((size - 2 * SEQ.size) // 256) + b"\0" * (
        (size - 2 * SEQ.size) % 256
    )
    pack = SEQ.pack
    for seq in seqs:
        stamp = pack(seq)
        send_parts(stamp, filler, stamp)


# --- consumers ---------------------------------------------------------------------------


@dataclass
class ConsumerResult:
    """What a consumer saw: the sequence numbers, and payloads that failed their own check."""

    seqs: array
    corrupt: int = 0


def consume(workload: Workload, receiver: Receiver) -> ConsumerResult:
    """Receive until this consumer's stream ends; the end marks are not recorded.

    Small bytes come in batches when the receiver offers ``recv_many``.
    """
    if workload.objects:
        return _consume_dicts(receiver)
    if workload.size >= MIB:
        return _consume_large(receiver, workload.size)
    if receiver.in_place is not None:
        return _consume_in_place(receiver)
    if receiver.recv_many is not None:
        return _consume_batched(receiver)
    return _consume_small(receiver)


def _consume_small(receiver: Receiver) -> ConsumerResult:
    seqs = array("Q")
    recv, append, unpack = receiver.recv, seqs.append, SEQ.unpack_from
    ends, end = receiver.ends, END
    while True:
        message = recv()
        if message == end:
            ends -= 1
            if not ends:
                return ConsumerResult(seqs)
            continue
        append(unpack(message)[0])


def _consume_in_place(receiver: Receiver) -> ConsumerResult:
    """Each message read where it lies: peek, note its sequence number, release (held: each
    view kept until the next one replaces it, peek_next releasing the one before)."""
    assert receiver.in_place is not None
    peek, release = receiver.in_place
    seqs = array("Q")
    append, unpack, stamp = seqs.append, SEQ.unpack_from, SEQ.size
    ends = receiver.ends
    held = receiver.held
    while True:
        view = peek()
        seq = unpack(view)[0]
        is_end = seq == END_SEQ and len(view) == stamp
        if held:
            if is_end:
                release()
        else:
            del view  # dropped first: the queue may hand the same view out again
            release()
        if is_end:
            ends -= 1
            if not ends:
                return ConsumerResult(seqs)
            continue
        append(seq)


def _consume_batched(receiver: Receiver) -> ConsumerResult:
    """A batch of 64-byte messages is noted in bulk: joined, read as 64-bit words, every
    eighth word (each message's sequence number) kept; a batch with anything else in it (an
    end mark) goes message by message."""
    seqs = array("Q")
    recv_many = receiver.recv_many
    assert recv_many is not None
    append, extend, unpack = seqs.append, seqs.extend, SEQ.unpack_from
    ends, end, size = receiver.ends, END, _MSG_64.size
    bulk = sys.byteorder == "little" and array("Q").itemsize == 8
    while ends:
        batch = recv_many()
        blob = b"".join(batch)
        if bulk and len(blob) == size * len(batch) and end not in batch:
            words = array("Q")
            words.frombytes(blob)
            extend(words[::_MSG_WORDS])
            continue
        for message in batch:
            if message == end:
                ends -= 1
            else:
                append(unpack(message)[0])
    return ConsumerResult(seqs)


def _consume_dicts(receiver: Receiver) -> ConsumerResult:
    seqs = array("Q")
    recv, append = receiver.recv, seqs.append
    ends = receiver.ends
    while True:
        message = recv()
        if message is None:
            ends -= 1
            if not ends:
                return ConsumerResult(seqs)
            continue
        append(message["id"])


def _consume_large(receiver: Receiver, size: int) -> ConsumerResult:
    seqs = array("Q")
    recv_with = receiver.recv_with
    assert recv_with is not None
    unpack = SEQ.unpack_from
    stamp = SEQ.size

    def inspect(buffer: Any) -> tuple[int, int, int]:
        """(length, leading seq, trailing seq), read where the message lies."""
        n = len(buffer)
        if n < stamp:
            return n, -1, -2
        return n, unpack(buffer)[0], unpack(buffer, n - stamp)[0]

    ends, corrupt = receiver.ends, 0
    while True:
        n, head, tail = recv_with(inspect)
        if n == stamp and head == END_SEQ:
            ends -= 1
            if not ends:
                return ConsumerResult(seqs, corrupt)
            continue
        if n != size or head != tail:
            corrupt += 1
        if head >= 0:
            seqs.append(head)


# --- ping-pong -----------------------------------------------------------------------------


@dataclass
class PingResult:
    """Round-trip times (ns) of the measured rounds, and every reply's sequence number."""

    latencies_ns: array
    seqs: array
    corrupt: int


def ping(out: Sender, back: Receiver, rounds: int, warmup: int) -> PingResult:
    """Send a 64-byte message, wait for it to come back; ``warmup`` untimed rounds first."""
    if out.in_place is not None and back.in_place is not None:
        return _ping_in_place(out, back, rounds, warmup)
    send, recv, clock, pack = out.send, back.recv, time.perf_counter_ns, _MSG_64.pack
    latencies, seqs = array("q"), array("Q")
    note_latency, note_seq, unpack = latencies.append, seqs.append, SEQ.unpack_from
    corrupt = 0
    for seq in range(warmup + rounds):
        # Timed: making the message, sending it, receiving the reply and reading its number,
        # as the in-place loop below (whose fill and read cannot leave the window).
        t0 = clock()
        message = pack(seq)
        send(message)
        reply = recv()
        got = unpack(reply)[0]
        note_latency(clock() - t0)
        if reply != message:
            corrupt += 1
        note_seq(got)
    return PingResult(latencies[warmup:], seqs, corrupt)


def _ping_in_place(out: Sender, back: Receiver, rounds: int, warmup: int) -> PingResult:
    """ping, each message packed into its reservation and its reply read where it lies."""
    assert out.in_place is not None and back.in_place is not None
    (reserve, commit), (peek, release) = out.in_place, back.in_place
    clock, pack_into, size = time.perf_counter_ns, _MSG_64.pack_into, _MSG_64.size
    latencies, seqs = array("q"), array("Q")
    note_latency, note_seq, unpack = latencies.append, seqs.append, SEQ.unpack_from
    corrupt = 0
    if out.held:  # each view kept in a variable until the next one replaces it
        for seq in range(warmup + rounds):
            t0 = clock()
            view = reserve(size)
            pack_into(view, 0, seq)
            commit()
            reply = peek()  # peek_next: the reply before is released by this call
            got = unpack(reply)[0]
            n = len(reply)
            note_latency(clock() - t0)
            if got != seq or n != size:
                corrupt += 1
            note_seq(got)
        release()
        return PingResult(latencies[warmup:], seqs, corrupt)
    for seq in range(warmup + rounds):
        t0 = clock()
        pack_into(reserve(size), 0, seq)
        commit()
        reply = peek()
        got = unpack(reply)[0]
        n = len(reply)
        del reply  # dropped first: the queue may hand the same view out again
        release()
        note_latency(clock() - t0)
        if got != seq or n != size:
            corrupt += 1
        note_seq(got)
    return PingResult(latencies[warmup:], seqs, corrupt)


def pong(inp: Receiver, back: Sender) -> int:
    """Send every message back until the stream ends; returns how many."""
    if inp.in_place is not None and back.in_place is not None:
        return _pong_in_place(inp, back)
    recv, send, end = inp.recv, back.send, END
    n = 0
    while True:
        message = recv()
        if message == end:
            return n
        send(message)
        n += 1


def _pong_in_place(inp: Receiver, back: Sender) -> int:
    """pong, each message copied from where it lies straight into the reply's reservation."""
    assert inp.in_place is not None and back.in_place is not None
    (peek, release), (reserve, commit) = inp.in_place, back.in_place
    end, n, stamp = END, 0, len(END)
    if inp.held and back.held:  # views kept until the next ones replace them; peek_next
        while True:
            message = peek()  # peek_next: the message before is released by this call
            if len(message) == stamp and message == end:
                release()
                return n
            reply = reserve(len(message))
            reply[:] = message
            commit()
            n += 1
    while True:
        message = peek()
        if len(message) == stamp and message == end:
            release()
            return n
        reply = reserve(len(message))
        reply[:] = message
        del message, reply  # dropped first: the queue may hand the same views out again
        commit()  # the reply first: the pinging side waits for it, not for the release
        release()
        n += 1
