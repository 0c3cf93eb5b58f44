"""Waits that lose no wake-up (issue 7, item 4; docs/internals/ring.md, "Waiting").

A producer waiting for room sleeps on the room sequence, which every event that frees room
bumps (a release, a quarantine's end, a dead consumer's recovery); a consumer sleeps on the
tail, which every publish moves. A wait that sleeps out a whole slice although what it waited
for had happened is a lost wake-up: the ring counts it (``RingStatistics.missed_wakes``). These
runs drive the waits hard, across processes, and require that count to stay zero, with every
message delivered exactly once and in order.
"""

from __future__ import annotations

import os
import signal
import struct

import pytest
from _procs import frame, parse, read_exact, wait_for, wait_stopped

from shmipc import Event, Queue, Revoked
from shmipc._native import lib
from shmipc.ring import Ring

pytestmark = pytest.mark.timeout(120)

N_PINGPONG = 3000


def _count_up(q: Queue, n: int) -> None:
    for i in range(n):
        q.put(i, timeout=30)


@pytest.mark.parametrize("get", ["get", "get_many"])
def test_maxsize_one_ping_pong_misses_no_wake_up(procs, get):
    """Queue(maxsize=1): every put waits for the previous message's release, which moves the
    message count, not only the head. The producer must be woken by each one."""
    q = Queue(maxsize=1)
    pid = procs.fork(lambda: _count_up(q, N_PINGPONG))
    got: list[int] = []
    while len(got) < N_PINGPONG:
        if get == "get":
            got.append(q.get(timeout=30))
        else:
            got.extend(q.get_many(10, timeout=30))
    assert procs.join(pid) == 0
    assert got == list(range(N_PINGPONG))  # exactly once, in order
    stats = q.statistics()
    assert stats.producer_waits > 0  # the producer did wait for room
    assert stats.missed_wakes == 0
    q.close()


LIVENESS = 0.3
_SEQ = struct.Struct("<I")


def _stopped_reserver(ring: Ring, go: Event, w: int) -> None:
    """Reserves, reports, waits (stopped by the parent meanwhile and revoked); resumed, its
    commit must raise Revoked (which ends the quarantine); then sends its message again."""
    for s in range(3):
        ring.put(frame(0, s, 20), timeout=30)
    view = ring.reserve(len(frame(0, 3, 100)), timeout=30)
    os.write(w, b"R")
    assert go.wait(60)
    view[:] = b"\xee" * len(view)
    try:
        ring.commit()
    except Revoked:
        os.write(w, b"V")
    for s in range(3, 40):
        ring.put(frame(0, s, 20), timeout=30)


def _producer(ring: Ring, who: int, count: int) -> None:
    for s in range(count):
        ring.put(frame(who, s, 100), timeout=30)


def test_quarantine_end_wakes_the_producers_it_held_back(procs):
    """A producer stopped with a reservation past the liveness interval is revoked; the others
    go on until the quarantine holds them back (the ring laps onto the revoked record), asleep.
    Resumed, the stopped producer's commit ends the quarantine: that must wake them, not the
    end of their slice. With max_count set every release wakes too, so no wait of this run may
    sleep out a slice with its condition met."""
    ring = Ring.anonymous(4096, liveness=LIVENESS, max_count=1000)
    go = Event()
    r, w = os.pipe()
    a = procs.fork(lambda: _stopped_reserver(ring, go, w))
    assert read_exact(r, 1, 30) == b"R"
    os.kill(a, signal.SIGSTOP)
    wait_stopped(a)
    counts = {1: 300, 2: 300}
    others = [procs.fork(lambda who=who, n=n: _producer(ring, who, n)) for who, n in counts.items()]
    got = [parse(ring.get(timeout=30)) for _ in range(3)]
    # Drain while they run, until both are held back by the quarantine and asleep.
    wait_for(lambda: ring.statistics().revoked == 1, 30, "the stopped reservation revoked")

    def held_back() -> bool:
        while True:
            try:
                got.append(parse(ring.get(block=False)))
            except Exception:
                break
        stats = ring.statistics()
        return stats.quarantined > 0 and stats.depth == 0 and _space_sleepers(ring) == 2

    wait_for(held_back, 30, "both producers asleep behind the quarantine")
    os.kill(a, signal.SIGCONT)
    go.set()
    assert read_exact(r, 1, 30) == b"V"
    total = 3 + sum(counts.values()) + 37
    while len(got) < total:
        got.append(parse(ring.get(timeout=30)))
    for pid in (a, *others):
        assert procs.join(pid) == 0
    for who, n in counts.items():
        assert [s for p, s in got if p == who] == list(range(n))
    assert [s for p, s in got if p == 0] == list(range(40))
    stats = ring.statistics()
    assert stats.quarantined == 0 and stats.revoked == 1 and stats.depth_bytes == 0
    assert stats.missed_wakes == 0
    os.close(r)
    os.close(w)
    ring.close()


def _space_sleepers(ring: Ring) -> int:
    return lib.shmipc_load32_relaxed(ring._ptr, lib.SHMIPC_RING_OFF_SPACE_WAITERS)


def test_many_producers_and_consumers_on_a_bounded_queue_miss_no_wake_up(procs):
    """Three producers and two consumers through Queue(maxsize=2): every put and get waits
    often. Each producer's sequence arrives once and in order at each consumer."""
    q = Queue(maxsize=2)
    n = 2000
    out = Queue()
    producers = [
        procs.fork(lambda p=p: [q.put((p, s), timeout=30) for s in range(n)]) for p in range(3)
    ]

    def consume() -> None:
        seen = []
        while True:
            item = q.get(timeout=30)
            if item is None:
                break
            seen.append(item)
        out.put(seen, timeout=30)

    consumers = [procs.fork(consume) for _ in range(2)]
    for pid in producers:
        assert procs.join(pid) == 0
    q.put(None, timeout=30)
    q.put(None, timeout=30)
    streams = [out.get(timeout=60) for _ in consumers]
    for pid in consumers:
        assert procs.join(pid) == 0
    for p in range(3):
        mine = [[s for pp, s in stream if pp == p] for stream in streams]
        for seq in mine:
            assert seq == sorted(seq)
        assert sorted(s for seq in mine for s in seq) == list(range(n))
    assert q.statistics().missed_wakes == 0
    q.close()
    out.close()


def test_a_wake_up_that_never_comes_is_counted(procs):
    """The statistic itself: a producer asleep for room on a Queue(maxsize=1) whose room is
    freed behind its back (the count of messages out raised and the room sequence bumped, as
    a release would, but no wake issued) sleeps out its slice, and that wait is counted."""
    q = Queue(maxsize=1)
    q.put_bytes(b"filler")
    pid = procs.fork(lambda: q.put_bytes(b"second", timeout=30))
    p = q._ring._ptr
    wait_for(lambda: _space_sleepers(q._ring) == 1, 30, "the producer asleep for room")
    out = lib.shmipc_load64_acquire(p, lib.SHMIPC_RING_OFF_C_MSGS)
    lib.shmipc_store64_release(p, lib.SHMIPC_RING_OFF_C_MSGS, out + 1)
    lib.shmipc_fetch_add32_acq_rel(p, lib.SHMIPC_RING_OFF_SPACE_SEQ, 1)
    assert procs.join(pid) == 0  # went on after its slice
    assert q.statistics().missed_wakes == 1
    q.close()
