"""Revocation of a stopped producer's reservation: docs/internals/ring.md, "Revocation".

A producer SIGSTOPped while it holds a reservation (between reserve and commit) for longer
than the ring's liveness interval has its reservation revoked by a waiting producer: the
record becomes a skipped REVOKED record, its space is quarantined (never written over) until
the stopped producer resumes and sees the revocation, or dies; the other producers go on at
once. Resumed, the stopped producer may still write into its view: that must corrupt
nothing, and its commit raises Revoked. A slow but running holder is never revoked.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import struct
import time

import pytest
from _procs import frame, parse, proc_state, read_exact, wait_for, wait_stopped

from shmipc import Event, Queue, Revoked
from shmipc.ring import Ring

pytestmark = pytest.mark.timeout(120)

LIVENESS = 0.3  # seconds: short, so that the tests are quick
CAP = 16 << 10
_TS = struct.Struct("<qq")


def _reserve_half_then_commit(ring: Ring, msg: bytes, go: Event, w: int) -> None:
    """Reserve ``msg``'s room, fill half, report "R" and wait for ``go`` (the parent stops us
    there); resumed, scribble the whole view (a revoked holder's late writes land in
    quarantined space) and commit, reporting "V" (Revoked) or "C" (it went through)."""
    view = ring.reserve(len(msg), timeout=5)
    view[:150] = msg[:150]
    os.write(w, b"R")
    assert go.wait(60)
    view[:] = b"\xee" * len(view)
    try:
        ring.commit()
    except Revoked:
        os.write(w, b"V")
    else:
        os.write(w, b"C")


def _stopped_reserver(ring: Ring, go: Event, w: int, n_before: int = 10) -> None:
    """Producer 0: some messages, then a reservation it fills half of before it reports and
    waits (the parent stops it there); resumed, it scribbles its whole view, commits (which
    must raise Revoked), then sends the message again and more."""
    for s in range(n_before):
        ring.put(frame(0, s, 20), timeout=5)
    msg = frame(0, n_before, 300)
    _reserve_half_then_commit(ring, msg, go, w)
    ring.put(msg, timeout=5)  # sent again, now for real
    for s in range(n_before + 1, n_before + 20):
        ring.put(frame(0, s, 20), timeout=5)


def _other_producer(ring: Ring, w: int, count: int, size: int = 20) -> None:
    """Producer 1: reports when its first put got through, then sends the rest."""
    ring.put(frame(1, 0, size), timeout=30)
    os.write(w, _TS.pack(time.monotonic_ns(), 0))
    for s in range(1, count):
        ring.put(frame(1, s, size), timeout=30)


def test_stopped_reservation_is_revoked_and_its_commit_fails_cleanly(procs):
    ring = Ring.anonymous(CAP, liveness=LIVENESS)
    go = Event()
    r, w = os.pipe()
    a = procs.fork(lambda: _stopped_reserver(ring, go, w))
    assert read_exact(r, 1, 10) == b"R"
    os.kill(a, signal.SIGSTOP)
    wait_stopped(a)
    t_stop = time.monotonic_ns()
    b = procs.fork(lambda: _other_producer(ring, w, 200))
    got = [parse(ring.get(timeout=10)) for _ in range(10)]
    assert got == [(0, s) for s in range(10)]
    b_first, _ = _TS.unpack(read_exact(r, _TS.size, 20))
    waited = (b_first - t_stop) / 1e9
    assert LIVENESS * 0.9 <= waited < LIVENESS + 2.0  # revoked after the interval, not before
    assert proc_state(a) == "T"  # still stopped: B went on without it
    stats = ring.statistics()
    assert stats.revoked == 1 and stats.abandoned == 0
    msg_len = len(frame(0, 10, 300))
    assert stats.quarantined == (8 + msg_len + 7) // 8 * 8  # the REVOKED record's span
    got = [parse(ring.get(timeout=10)) for _ in range(200)]
    assert got == [(1, s) for s in range(200)]  # B's messages, none torn by A
    os.kill(a, signal.SIGCONT)
    go.set()
    assert read_exact(r, 1, 10) == b"V"  # A's commit raised Revoked
    got = [parse(ring.get(timeout=10)) for _ in range(20)]
    assert got == [(0, s) for s in range(10, 30)]  # A's message once, sent again, in order
    assert procs.join(a) == 0 and procs.join(b) == 0
    stats = ring.statistics()
    assert stats.quarantined == 0 and stats.revoked == 1
    assert stats.messages_in == stats.messages_out == 230 and stats.depth_bytes == 0
    for k in range(500):  # still a sound ring: many more wraps over the old hole
        ring.put(frame(2, k, k % 97), timeout=1)
        assert parse(ring.get(timeout=1)) == (2, k)
    os.close(r)
    os.close(w)


def test_quarantine_keeps_the_revoked_space_until_its_holder_resumes(procs):
    """After revocation the producers may write up to one capacity past the revoked record's
    start and no further, even with the consumer keeping up: the stopped producer could
    resume at any instant and write there. Its revoked commit ends the quarantine."""
    ring = Ring.anonymous(4096, liveness=LIVENESS)
    go = Event()
    r, w = os.pipe()
    a = procs.fork(lambda: _stopped_reserver(ring, go, w, n_before=3))
    assert read_exact(r, 1, 10) == b"R"
    os.kill(a, signal.SIGSTOP)
    wait_stopped(a)
    b = procs.fork(lambda: _other_producer(ring, w, 400, size=100))
    got = [parse(ring.get(timeout=10)) for _ in range(3)]
    read_exact(r, _TS.size, 20)  # B got through: revoked
    # Drain as B goes: B stops short of the hole, one capacity past its start.
    while True:
        try:
            got.append(parse(ring.get(timeout=1.0)))
        except queue.Empty:
            break
    stats = ring.statistics()
    assert stats.quarantined > 0 and stats.depth == 0
    n_b = len([p for p, _ in got if p == 1])
    assert 0 < n_b < 400  # B is held back by the quarantine, not by the consumer
    rec = (8 + len(frame(1, 0, 100)) + 7) // 8 * 8
    room = 4096 - stats.quarantined  # from the hole's end round to its start
    assert room // rec - 1 <= n_b <= room // rec  # (less one record if a padding fell in it)
    os.kill(a, signal.SIGCONT)
    go.set()
    assert read_exact(r, 1, 10) == b"V"
    while len(got) < 3 + 400 + 20:
        got.append(parse(ring.get(timeout=10)))
    assert procs.join(a) == 0 and procs.join(b) == 0
    assert [s for p, s in got if p == 1] == list(range(400))
    assert [s for p, s in got if p == 0] == list(range(23))
    assert ring.statistics().quarantined == 0
    os.close(r)
    os.close(w)


def test_quarantine_of_a_holder_that_dies_stopped_ends(procs):
    """SIGKILLed while stopped after its reservation was revoked: the quarantine's owner is
    dead, so a waiting producer's liveness pass ends it and the ring is whole again."""
    ring = Ring.anonymous(4096, liveness=LIVENESS)
    go = Event()
    r, w = os.pipe()
    a = procs.fork(lambda: _stopped_reserver(ring, go, w, n_before=3))
    assert read_exact(r, 1, 10) == b"R"
    os.kill(a, signal.SIGSTOP)
    wait_stopped(a)
    b = procs.fork(lambda: _other_producer(ring, w, 400, size=100))
    read_exact(r, _TS.size, 20)  # revoked, B on its way
    wait_for(lambda: ring.statistics().depth > 20, 20, "B filling up to the hole")
    os.kill(a, signal.SIGKILL)
    assert procs.join(a) == -signal.SIGKILL
    got = [parse(ring.get(timeout=10)) for _ in range(3 + 400)]
    assert procs.join(b) == 0
    assert [s for p, s in got if p == 1] == list(range(400))
    assert [s for p, s in got if p == 0] == [0, 1, 2]
    stats = ring.statistics()
    assert stats.quarantined == 0 and stats.revoked == 1 and stats.depth_bytes == 0
    os.close(r)
    os.close(w)


def test_a_slow_running_holder_is_never_revoked(procs):
    """Alive and running (here: asleep in time.sleep, state S) past the liveness interval:
    not stopped, so not revoked; the other producer waits and the commit goes through."""
    ring = Ring.anonymous(CAP, liveness=LIVENESS)
    r, w = os.pipe()

    def slow_holder() -> None:
        view = ring.reserve(100, timeout=5)
        os.write(w, b"R")
        time.sleep(4 * LIVENESS)
        view[:] = frame(0, 0, 100 - 16)
        ring.commit()

    a = procs.fork(slow_holder)
    assert read_exact(r, 1, 10) == b"R"
    t0 = time.monotonic_ns()
    b = procs.fork(lambda: _other_producer(ring, w, 5))
    b_first, _ = _TS.unpack(read_exact(r, _TS.size, 20))
    assert (b_first - t0) / 1e9 >= 3 * LIVENESS  # waited for the commit
    got = [parse(ring.get(timeout=10)) for _ in range(6)]
    assert got == [(0, 0)] + [(1, s) for s in range(5)]
    assert procs.join(a) == 0 and procs.join(b) == 0
    assert ring.statistics().revoked == 0
    os.close(r)
    os.close(w)


def test_a_stop_shorter_than_the_liveness_interval_revokes_nothing(procs):
    ring = Ring.anonymous(CAP, liveness=30.0)
    go = Event()
    r, w = os.pipe()

    def holder() -> None:
        view = ring.reserve(100, timeout=5)
        os.write(w, b"R")
        assert go.wait(60)
        view[:] = frame(0, 0, 100 - 16)
        ring.commit()

    a = procs.fork(holder)
    assert read_exact(r, 1, 10) == b"R"
    os.kill(a, signal.SIGSTOP)
    wait_stopped(a)
    with pytest.raises(queue.Full):
        ring.put(frame(1, 0, 10), timeout=1.0)  # many liveness passes, none revokes
    assert ring.statistics().revoked == 0
    os.kill(a, signal.SIGCONT)
    go.set()
    assert procs.join(a) == 0
    ring.put(frame(1, 0, 10), timeout=5)
    assert [parse(ring.get(timeout=5)) for _ in range(2)] == [(0, 0), (1, 0)]
    os.close(r)
    os.close(w)


def test_queue_liveness_is_configurable_and_revokes_a_stopped_reserver(procs):
    q = Queue(capacity=CAP, liveness=LIVENESS)
    go = Event()
    r, w = os.pipe()

    def holder() -> None:
        q.reserve(64)[:] = b"x" * 64
        os.write(w, b"R")
        assert go.wait(60)
        try:
            q.commit()
        except Revoked:
            os.write(w, b"V")

    try:
        a = procs.fork(holder)
        assert read_exact(r, 1, 10) == b"R"
        os.kill(a, signal.SIGSTOP)
        wait_stopped(a)
        q.put({"after": 1}, timeout=LIVENESS + 5)  # gets through once the reservation goes
        assert q.get(timeout=5) == {"after": 1}
        os.kill(a, signal.SIGCONT)
        go.set()
        assert read_exact(r, 1, 10) == b"V"
        assert procs.join(a) == 0
        assert q.statistics().revoked == 1 and q.statistics().quarantined == 0
        with pytest.raises(queue.Empty):
            q.get(timeout=0.1)  # the revoked message never arrives
    finally:
        q.close()
        os.close(r)
        os.close(w)


def test_liveness_must_be_positive():
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="liveness"):
            Ring.anonymous(4096, liveness=bad)


def _reserving_producer(ring: Ring, pid: int, count: int, seed: int, w: int) -> None:
    """Sends seq 0..count-1 through reserve/commit (every fifth through put), lingering
    inside each reservation; a revoked commit sends the same seq again. Reports how many
    commits were revoked."""
    rng = random.Random(seed)
    revoked = 0
    seq = 0
    while seq < count:
        msg = frame(pid, seq, rng.randint(0, 200))
        if seq % 5 == 4:
            ring.put(msg, timeout=30)
            seq += 1
            continue
        view = ring.reserve(len(msg), timeout=30)
        half = len(msg) // 2
        view[:half] = msg[:half]
        time.sleep(rng.uniform(0, 0.003))
        view[half:] = msg[half:]
        try:
            ring.commit()
        except Revoked:
            revoked += 1
            continue  # the same seq again
        seq += 1
    os.write(w, struct.pack("<q", revoked))


def test_random_long_stops_of_reservers_lose_and_tear_nothing(procs):
    """Three producers linger inside their reservations while they are stopped at random
    for up to several liveness intervals: every message arrives exactly once, in each
    producer's order, untorn; every revoked commit was reported to its producer."""
    rng = random.Random(0x5709)
    liveness = 0.15
    ring = Ring.anonymous(8 << 10, liveness=liveness)
    count = 400
    r, w = os.pipe()
    seeds = [rng.getrandbits(32) for _ in range(3)]
    pids = [
        procs.fork(lambda i=i, s=seeds[i]: _reserving_producer(ring, i, count, s, w))
        for i in range(3)
    ]
    got: list[tuple[int, int]] = []
    stops = long_stops = 0
    end = time.monotonic() + 90
    while len(got) < 3 * count and time.monotonic() < end:
        alive = [p for p in pids if proc_state(p) not in ("Z", "X", "?")]
        if alive and rng.random() < 0.5:
            victim = rng.choice(alive)
            os.kill(victim, signal.SIGSTOP)
            pause = rng.choice([rng.uniform(0, 0.02), rng.uniform(liveness, 2 * liveness)])
            long_stops += pause >= liveness
            stop_end = time.monotonic() + pause
            while time.monotonic() < stop_end:  # keep draining while it is stopped
                try:
                    got.append(parse(ring.get(timeout=0.05)))
                except queue.Empty:
                    pass
            os.kill(victim, signal.SIGCONT)
            stops += 1
        try:
            got.append(parse(ring.get(timeout=0.05)))
        except queue.Empty:
            pass
    for p in pids:
        assert procs.join(p, 30) == 0
    revoked = sum(struct.unpack("<q", read_exact(r, 8, 10))[0] for _ in pids)
    for p in range(3):
        assert [s for q, s in got if q == p] == list(range(count)), f"producer {p}"
    stats = ring.statistics()
    print(f"{stops} stops ({long_stops} long), {stats.revoked} revoked; {stats}")
    assert stats.revoked == revoked  # every revocation was seen by its holder's commit
    assert stats.quarantined == 0 and stats.abandoned == 0 and stats.depth_bytes == 0
    assert stats.messages_in == stats.messages_out == 3 * count
    os.close(r)
    os.close(w)


# ---- a revoker caught between its steps (issue 7, item 3) ----------------------------------
#
# shmipc_claim_pause_after(step) makes the calling process stop itself (SIGSTOP) right after
# that step of a revocation (a test hook, process-local): the parent then resumes, commits or
# kills the actors in the order it wants. tests/unit/ring/test_claim_model.py explores every
# interleaving of the same steps in a model; these replay the ones that broke the old design.


def _paused_holder(ring: Ring, go: Event, done: Event, w: int) -> None:
    """Reserves, fills half, reports "R" and waits (the parent stops it there); resumed, it
    scribbles its whole view (late writes of a revoked holder), commits ("V": Revoked, "C":
    went through) and stays alive until ``done``: a live holder's quarantine must end by its
    own commit, not by its death."""
    _reserve_half_then_commit(ring, frame(0, 0, 300), go, w)
    assert done.wait(60)


def _pausing_revoker(ring: Ring, step: int, count: int) -> None:
    """Producer 1: its first put waits on the parked lock, revokes it and stops itself after
    ``step`` of the revocation; resumed, it sends the rest (several laps of the ring)."""
    from shmipc._native import lib

    lib.shmipc_claim_pause_after(step)
    for s in range(count):
        ring.put(frame(1, s, 100), timeout=30)


def _start_paused_revocation(procs, ring: Ring, step: int, count: int):
    go, done = Event(), Event()
    r, w = os.pipe()
    a = procs.fork(lambda: _paused_holder(ring, go, done, w))
    assert read_exact(r, 1, 10) == b"R"
    os.kill(a, signal.SIGSTOP)
    wait_stopped(a)
    b = procs.fork(lambda: _pausing_revoker(ring, step, count))
    wait_stopped(b, timeout=30)  # stopped itself inside the revocation
    return a, b, go, done, r, w


@pytest.mark.timeout(90)
@pytest.mark.parametrize("step", ["TAKE", "MARK", "PUBLISH"])
def test_holder_that_commits_while_its_revoker_is_mid_way_leaves_no_quarantine(procs, step):
    """The race of the old design: the revoker has taken the parked lock word; the holder
    resumes, fails to unpark and concludes it was revoked; only then does the revoker go on.
    The old revoker stored the quarantine owner after that, nobody ever cleared it, and the
    producers blocked for good once the ring lapped. The ring must keep moving."""
    from shmipc._native import lib

    ring = Ring.anonymous(4096, liveness=LIVENESS)
    count = 200  # ~24 KiB through a 4 KiB ring: six laps
    pause = getattr(lib, f"SHMIPC_CLAIM_PAUSE_{step}", None)
    if pause is None:
        pytest.skip(f"no pause point {step} in this build")
    a, b, go, done, r, w = _start_paused_revocation(procs, ring, pause, count)
    os.kill(a, signal.SIGCONT)
    go.set()
    assert read_exact(r, 1, 10) == b"V"  # its unpark failed: revoked
    os.kill(b, signal.SIGCONT)
    got = [parse(ring.get(timeout=10)) for _ in range(count)]
    assert got == [(1, s) for s in range(count)]
    assert procs.join(b) == 0
    stats = ring.statistics()
    assert stats.quarantined == 0 and stats.revoked == 1 and stats.depth_bytes == 0
    done.set()
    assert procs.join(a) == 0
    os.close(r)
    os.close(w)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("step", ["TAKE", "MARK", "PUBLISH"])
def test_revoker_killed_mid_way_frees_nothing_the_holder_may_write(procs, step):
    """The revoker dies between two of its steps while the holder is still stopped. Another
    producer takes the dead revoker's lock over and goes on; the holder then resumes and
    writes its whole view. The old design handed the holder's space out again (the takeover
    counted the claim abandoned): the holder's late writes tore the new records. Nothing may
    be torn, the holder's commit says Revoked, and the ring keeps moving for laps after."""
    from shmipc._native import lib

    ring = Ring.anonymous(4096, liveness=LIVENESS)
    pause = getattr(lib, f"SHMIPC_CLAIM_PAUSE_{step}", None)
    if pause is None:
        pytest.skip(f"no pause point {step} in this build")
    a, b, go, done, r, w = _start_paused_revocation(procs, ring, pause, 1)
    os.kill(b, signal.SIGKILL)
    assert procs.join(b) == -signal.SIGKILL
    go_c = Event()

    def producer_c() -> None:
        for s in range(5):  # fits without lapping: lands right after the revoked claim
            ring.put(frame(2, s, 100), timeout=30)
        os.write(w, b"P")
        assert go_c.wait(60)
        for s in range(5, 200):
            ring.put(frame(2, s, 100), timeout=30)

    c = procs.fork(producer_c)
    assert read_exact(r, 1, 30) == b"P"
    os.kill(a, signal.SIGCONT)
    go.set()  # the holder scribbles its whole view, then commits
    assert read_exact(r, 1, 10) == b"V"
    go_c.set()
    got = [parse(ring.get(timeout=10)) for _ in range(200)]
    assert got == [(2, s) for s in range(200)]
    assert procs.join(c) == 0
    stats = ring.statistics()
    assert stats.quarantined == 0 and stats.depth_bytes == 0
    done.set()
    assert procs.join(a) == 0
    os.close(r)
    os.close(w)


@pytest.mark.timeout(90)
def test_holder_killed_while_its_revoker_is_mid_way_leaves_no_quarantine(procs):
    """The holder dies (SIGKILL, while stopped) after its revoker took the parked word and
    before the revoker goes on: the revoker finishes, the quarantine's owner is dead, and the
    producers' liveness passes end it; the ring keeps moving for laps."""
    from shmipc._native import lib

    ring = Ring.anonymous(4096, liveness=LIVENESS)
    count = 200
    pause = lib.SHMIPC_CLAIM_PAUSE_TAKE
    a, b, _, _, r, w = _start_paused_revocation(procs, ring, pause, count)
    os.kill(a, signal.SIGKILL)
    assert procs.join(a) == -signal.SIGKILL
    os.kill(b, signal.SIGCONT)
    got = [parse(ring.get(timeout=10)) for _ in range(count)]
    assert got == [(1, s) for s in range(count)]
    assert procs.join(b) == 0
    stats = ring.statistics()
    assert stats.quarantined == 0 and stats.revoked == 1 and stats.depth_bytes == 0
    os.close(r)
    os.close(w)
