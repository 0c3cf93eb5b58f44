"""A live ring whose shared bytes a hostile or broken peer overwrites.

Hypothesis writes random bytes (and well-chosen positions and record headers) at random
offsets of a live ring's control block and data area, then drives get/get_many/peek/put/
put_many/reserve without blocking (or with short timeouts). The contract
(docs/internals/ring.md, "Shared memory is untrusted input" in DESIGN.md): every call
succeeds or raises a ``shmipc.ShmipcError`` subclass, ``queue.Empty`` or ``queue.Full``;
never a crash, never a hang, never a read or write outside the mapping.

The side that reads always runs in a forked child: a crash kills the child, and the test
sees the signal instead of losing the pytest worker. One test lets ANOTHER process scribble
while the reader runs. Two scopes are fuzzed: everything except the two side locks, and
everything including them. A lock is shmipc's own (no libc state in shared memory): its word
names the holder thread (id | start time << 32), so a scribbled word names a thread that does
not exist or no longer runs (a dead holder: the next call takes the lock over), a live thread
of another process (calls wait and time out), or this very thread (refused at once); a
scribbled sleeper count only costs a wake. The deterministic tests at the end pin each case.
"""

from __future__ import annotations

import os
import queue
import random
import select
import struct
import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ring_fuzz_helpers import Child, describe, report, run_child

from shmipc import ShmipcError, _proc
from shmipc._native import Port, RingMiss, lib
from shmipc.ring import Ring

pytestmark = pytest.mark.timeout(180)

HEADER = lib.SHMIPC_RING_HEADER_SIZE
P_LOCK = lib.SHMIPC_RING_OFF_P_LOCK
C_LOCK = lib.SHMIPC_RING_OFF_C_LOCK
LOCK_SIZE = lib.SHMIPC_LOCK_SIZE  # u64 word (holder identity), u32 sleepers, u32 spare
ALLOWED = (ShmipcError, queue.Empty, queue.Full)
CAPACITIES = [64, 256, 1024]

# u64 fields of the control block, and values worth writing there
U64_FIELDS = [
    lib.SHMIPC_RING_OFF_CAPACITY,
    lib.SHMIPC_RING_OFF_MAX_COUNT,
    lib.SHMIPC_RING_OFF_SPIN_NS,
    lib.SHMIPC_RING_OFF_P_TAIL,
    lib.SHMIPC_RING_OFF_P_HEAD_CACHE,
    lib.SHMIPC_RING_OFF_P_OUT_CACHE,
    lib.SHMIPC_RING_OFF_P_CLAIM,
    lib.SHMIPC_RING_OFF_P_MSGS,
    lib.SHMIPC_RING_OFF_P_BYTES,
    lib.SHMIPC_RING_OFF_P_PEND_MSGS,
    lib.SHMIPC_RING_OFF_P_PEND_BYTES,
    lib.SHMIPC_RING_OFF_C_HEAD,
    lib.SHMIPC_RING_OFF_C_TAIL_CACHE,
    lib.SHMIPC_RING_OFF_C_MSGS,
    lib.SHMIPC_RING_OFF_C_PEEK,
    lib.SHMIPC_RING_OFF_C_PEND_END,
    lib.SHMIPC_RING_OFF_C_PEND_MSGS,
    lib.SHMIPC_RING_OFF_C_PEND_BYTES,
    lib.SHMIPC_RING_OFF_DATA_WAITERS,
    lib.SHMIPC_RING_OFF_SPACE_WAITERS,  # and the room sequence in its upper half
    lib.SHMIPC_RING_OFF_LIVENESS_NS,
    lib.SHMIPC_RING_OFF_P_REVOKED,
    lib.SHMIPC_RING_OFF_Q_START,
    lib.SHMIPC_RING_OFF_Q_END,
    lib.SHMIPC_RING_OFF_Q_OWNER,
    lib.SHMIPC_RING_OFF_MISSED_WAKES,
]
U64_VALUES = st.one_of(
    st.sampled_from([0, 1, 7, 8, 16, 56, 64, 128, 248, 256, 1024, 1 << 32, 2**63, 2**64 - 8]),
    st.sampled_from([2**64 - 1, 2**64 - 16, (1 << 40) + 8, 1 << 20]),
    st.integers(0, 2**64 - 1),
    st.integers(0, 4096).map(lambda n: n * 8),
)
# u32 words worth writing into a lock's fields (the word's thread id and start-time halves,
# the sleeper count, the spare word): thread ids no kernel issues, small ones (pid 1, ids that
# may run under another start time), anything
LOCK_FIELDS = [0, 4, 8, 12]
LOCK_WORDS = st.one_of(
    st.sampled_from([0, 1, 2, 0x3FFFFFFF, 0x40000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]),
    st.integers(1, 1 << 22),
    st.integers(0, 2**32 - 1),
)
U32 = (1 << 32) - 1
NOBODY = 0x3FFFFFFF | 12345 << 32  # a thread id above any pid_max: nobody holds it


def identity_of(tid: int) -> int:
    """The lock word that names thread ``tid`` (it must be running)."""
    started = _proc.start_time(tid)
    assert started is not None, f"thread {tid} is not running"
    return (started & U32) << 32 | tid


@st.composite
def lock_words(draw):
    """A whole lock word: free, nobody's, a live thread of another process (the main thread of
    this process, which outlives the child that uses the ring), that thread's id under another
    start time (a reused id), or anything. Never the child's own identity: that one is
    refused with RuntimeError (see the deterministic test)."""
    who = draw(st.sampled_from(["free", "nobody", "foreign", "reused", "any"]))
    if who == "free":
        return 0
    if who == "nobody":
        return NOBODY
    if who == "foreign":
        return identity_of(os.getpid())
    if who == "reused":
        return identity_of(os.getpid()) ^ draw(st.integers(1, U32)) << 32
    return draw(st.integers(0, 2**64 - 1))


REC_LENGTHS = st.one_of(
    st.sampled_from([0, 1, 8, 24, 56, 120, 248, 500, 1016, 0xFFFFFFFF, 0x7FFFFFFF]),
    st.integers(0, 2**32 - 1),
)
REC_TYPES = st.one_of(
    st.sampled_from([0, 1, 0xFFFF, 0x10000, 0xFFFFFFFF, 0xFFFFFFFE]), st.integers(0, 2**32 - 1)
)

OPS = [
    "get",
    "get_many",
    "peek",
    "put",
    "put_many",
    "reserve",
    "abort",
    "get_wait",
    "put_wait",
    "peek_wait",
    "recover",
    "stats",
    "port_put",
    "port_get",
    "port_put_many",
    "port_get_many",
]


def _outside_locks(offset: int, length: int) -> bool:
    for lock in (P_LOCK, C_LOCK):
        if offset < lock + LOCK_SIZE and lock < offset + length:
            return False
    return True


@st.composite
def scribbles(draw, capacity: int, locks: bool):
    """One write into the ring's bytes: (offset from the control block's start, bytes)."""
    kinds = ["bytes", "u64", "header"] + (["lock", "lock_word"] if locks else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "lock":  # a u32 field of one of the side locks
        off = draw(st.sampled_from([P_LOCK, C_LOCK])) + draw(st.sampled_from(LOCK_FIELDS))
        data = struct.pack("<I", draw(LOCK_WORDS))
    elif kind == "lock_word":  # a whole holder identity
        off = draw(st.sampled_from([P_LOCK, C_LOCK]))
        data = struct.pack("<Q", draw(lock_words()))
    elif kind == "u64":
        off = draw(st.sampled_from(U64_FIELDS))
        data = struct.pack("<Q", draw(U64_VALUES))
    elif kind == "header":
        index = draw(st.integers(0, capacity // 8 - 1)) * 8
        off = HEADER + index
        data = struct.pack("<II", draw(REC_LENGTHS), draw(REC_TYPES))
    else:
        data = draw(st.binary(min_size=1, max_size=16))
        off = draw(st.integers(0, HEADER + capacity - len(data)))
    if not locks and not _outside_locks(off, len(data)):
        # move it to the same place in the data area instead
        off = HEADER + (off % (capacity - len(data) + 1))
    return off, data


@st.composite
def sessions(draw, locks: bool):
    capacity = draw(st.sampled_from(CAPACITIES))
    prefill = draw(st.lists(st.integers(0, capacity // 2 - 8), max_size=12))
    steps = draw(
        st.lists(
            st.one_of(
                scribbles(capacity, locks).map(lambda s: ("scribble", s)),
                st.sampled_from(OPS).map(lambda op: ("op", op)),
            ),
            min_size=1,
            max_size=30,
        )
    )
    return capacity, prefill, steps


def _build(capacity: int, prefill: list[int]) -> Ring:
    """A ring that has wrapped and holds some records (some behind a padding record)."""
    ring = Ring.anonymous(capacity, spin_ns=1000)
    for i, n in enumerate(prefill):
        try:
            ring.put(bytes([i & 0xFF]) * n, type=i & 0xFFFF, block=False)
        except queue.Full:
            ring.get(block=False)
    return ring


def _op(ring: Ring, op: str, rng: random.Random) -> str:
    """One call; returns what happened. Raises only what the contract forbids."""
    mp = ring.max_payload
    try:
        if op == "get":
            return f"get {len(ring.get(block=False))}"
        if op == "get_many":
            return f"get_many {len(ring.get_many(rng.randint(1, 5), block=False))}"
        if op == "peek":
            view = ring.peek(block=False)
            n = len(bytes(view))
            ring.release()
            return f"peek {n}"
        if op == "put":
            ring.put(bytes(rng.randint(0, mp)), type=rng.randint(0, 0xFFFF), block=False)
            return "put"
        if op == "put_many":
            ring.put_many([bytes(rng.randint(0, mp)) for _ in range(3)], block=False)
            return "put_many"
        if op in ("reserve", "abort"):
            view = ring.reserve(rng.randint(0, mp), block=False)
            view[:] = b"\xab" * len(view)
            if op == "abort":
                ring.abort()
            else:
                ring.commit()
            return op
        if op == "get_wait":
            return f"get {len(ring.get(timeout=0.002))}"
        if op == "put_wait":
            ring.put(b"w" * rng.randint(0, mp), timeout=0.002)
            return "put"
        if op == "peek_wait":
            n = len(bytes(ring.peek(timeout=0.002)))
            ring.release()
            return f"peek {n}"
        if op == "recover":
            return f"recover {ring.recover()}"
        if op.startswith("port_"):
            # The Queue's hot paths (csrc/fastpath.c) over the same ring: a status or a
            # RingMiss carrying one, never anything else.
            port = Port(ring._mapping, ring._map_off, ring.capacity, None, 1, 2)
            try:
                if op == "port_put":
                    return f"port_put {port.put(b'p' * rng.randint(0, mp), 2, 0)}"
                if op == "port_put_many":
                    frames = [b"m" * rng.randint(0, 40) for _ in range(rng.randint(1, 6))]
                    return f"port_put_many {port.put_many(frames, 0, 2, 0)}"
                if op == "port_get":
                    return f"port_get {len(port.get_bytes(0))}"
                return f"port_get_many {len(port.get_many(rng.randint(1, 5), 0))}"
            except RingMiss as miss:
                return f"{op} miss {miss.args[0]}"
            finally:
                port.close()
        if op == "stats":
            ring.statistics()
            ring.qsize()
            return "stats"
        raise AssertionError(op)
    except ALLOWED as exc:
        # a call that failed must not leave this thread holding a claim or a peek
        local = ring._local
        if local.reserved is not None:
            ring.abort()
        if local.peeked is not None:
            ring.release()
        return type(exc).__name__


def _session(capacity: int, prefill: list[int], steps: list, seed: int):
    def child(fd: int) -> None:
        ring = _build(capacity, prefill)
        control = ring.region.buffer
        rng = random.Random(seed)
        log = []
        for kind, what in steps:
            if kind == "scribble":
                off, data = what
                control[off : off + len(data)] = data
            else:
                try:
                    log.append(_op(ring, what, rng))
                except ALLOWED as exc:  # (from the cleanup in _op)
                    log.append(type(exc).__name__)
        report(fd, " | ".join(log))

    return child


FUZZ = settings(
    max_examples=200,
    deadline=timedelta(seconds=20),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(session=sessions(locks=False), seed=st.integers(0, 2**32 - 1))
def test_scribbled_positions_and_records(session, seed):
    """Everything but the locks: positions, caches, counters (pending ones included), record
    headers, payloads."""
    capacity, prefill, steps = session
    code, out = run_child(_session(capacity, prefill, steps, seed))
    assert code == 0, f"the reader ended with {describe(code)}:\n{out}"


@FUZZ
@given(session=sessions(locks=True), seed=st.integers(0, 2**32 - 1))
def test_scribbled_anywhere_including_the_locks(session, seed):
    """The whole control block, the side locks included: only typed errors, Empty, Full or
    success, never a death by a signal or a hang."""
    capacity, prefill, steps = session
    code, out = run_child(_session(capacity, prefill, steps, seed))
    assert code == 0, f"the reader ended with {describe(code)}:\n{out}"


# ---- another process scribbles while this one reads --------------------------------------


def _concurrent(seed: int, capacity: int, locks: bool, budget: float = 0.3) -> tuple[int, str]:
    ring = Ring.anonymous(capacity, spin_ns=1000)
    buf = ring.region.buffer
    size = HEADER + capacity
    done_r, done_w = os.pipe()

    def scribbler(fd: int) -> None:
        os.close(done_w)
        rng = random.Random(seed)
        i = 0
        while True:
            i += 1
            if i % 64 == 0 and select.select([done_r], [], [], 0)[0]:
                return  # the reader finished (its end of the pipe closed)
            n = rng.randint(1, 8)
            off = rng.randint(0, size - n)
            if not locks and not _outside_locks(off, n):
                continue
            if rng.random() < 0.3 and off % 8 == 0 and off + 8 <= size:
                data = struct.pack("<Q", rng.choice([0, 8, 64, capacity, 2**64 - 8, off]))
            else:
                data = rng.randbytes(n)
            buf[off : off + len(data)] = data

    def reader(fd: int) -> None:
        os.close(done_r)
        rng = random.Random(seed ^ 0x5EED)
        log: dict[str, int] = {}
        stop = time.monotonic() + budget
        while time.monotonic() < stop:
            what = _op(ring, rng.choice(OPS), rng).split()[0]
            log[what] = log.get(what, 0) + 1
        report(fd, repr(sorted(log.items())))
        os.close(done_w)

    s = Child(scribbler)
    r = Child(reader)
    os.close(done_r)
    os.close(done_w)
    try:
        code, out = r.finish(60)
    finally:
        r.kill()
        s_code, s_out = s.finish(20)
    assert s_code == 0, f"the scribbler ended with {describe(s_code)}:\n{s_out}"
    return code, out


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), capacity=st.sampled_from(CAPACITIES))
def test_another_process_scribbles_while_this_one_reads(seed, capacity):
    code, out = _concurrent(seed, capacity, locks=False)
    assert code == 0, f"the reader ended with {describe(code)}:\n{out}"


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), capacity=st.sampled_from(CAPACITIES))
def test_another_process_scribbles_the_locks_while_this_one_reads(seed, capacity):
    code, out = _concurrent(seed, capacity, locks=True)
    assert code == 0, f"the reader ended with {describe(code)}:\n{out}"


# ---- deterministic: what a scribbled lock does ------------------------------------------------


def _in_child(body) -> str:
    """In a child: build a ring holding one record (b"abc"), run ``body(ring, buf)``; it
    must return (a report) or raise an allowed error, and the child must exit normally."""

    def child(fd: int) -> None:
        ring = Ring.anonymous(256, spin_ns=1000)
        ring.put(b"abc")
        buf = ring.region.buffer
        try:
            report(fd, body(ring, buf) or "ok")
        except ALLOWED as exc:
            report(fd, type(exc).__name__)

    code, out = run_child(child)
    assert code == 0, f"the call ended with {describe(code)}:\n{out}"
    return out


def _word(buf, off: int) -> int:
    return struct.unpack_from("<Q", buf, off)[0]


@pytest.mark.parametrize("side", ["consumer", "producer"])
@pytest.mark.parametrize("word", ["nobody", "tid-only", "pid-reused"])
def test_lock_word_naming_no_live_thread_is_taken_over(side, word):
    """A peer writes a holder into a free lock's word that names no running thread: a thread
    id no kernel issues, or this process's live pid under another start time (a reused id).
    The holder is dead as far as the word says, so the next blocking call takes the lock over
    within a slice or so and proceeds; the recovery is counted, and the lock is free again
    afterwards. A live thread's id without its start time (high half 0) is "unknown", which
    is never dead: that call waits out its timeout and robs nobody."""

    def body(ring, buf) -> str:
        me = lib.shmipc_lock_identity()
        value = {
            "nobody": NOBODY,
            "tid-only": me & U32,
            "pid-reused": identity_of(os.getpid()) ^ 1 << 32,
        }[word]
        off = C_LOCK if side == "consumer" else P_LOCK
        struct.pack_into("<Q", buf, off, value)
        t = time.monotonic()
        if word == "tid-only":
            # A start time of 0 is what a holder records where /proc could not be read: the
            # liveness module cannot compare it, so the holder is "unknown", never dead. The
            # call waits out its own timeout and the word stays as the peer wrote it.
            with pytest.raises(queue.Empty if side == "consumer" else queue.Full):
                if side == "consumer":
                    ring.get(timeout=0.3)
                else:
                    ring.put(b"xyz", timeout=0.3)
            assert time.monotonic() - t < 2.0
            assert _word(buf, off) == value
            return "proceeded"
        if side == "consumer":
            assert ring.get(timeout=5) == b"abc"
        else:
            ring.put(b"xyz", timeout=5)
        elapsed = time.monotonic() - t
        assert elapsed < 1.5, f"took {elapsed:.3f} s to take the lock over"
        stats = ring.statistics()
        if side == "consumer":
            assert stats.consumers_recovered == 1 and stats.messages_out == 1
        else:
            assert stats.messages_in == 2 and stats.abandoned == 0  # no claim was open
            assert ring.get(block=False) == b"abc" and ring.get(block=False) == b"xyz"
        assert _word(buf, off) == 0
        return "proceeded"

    assert _in_child(body) == "proceeded"


@pytest.mark.parametrize("side", ["consumer", "producer"])
def test_lock_word_naming_a_dead_holder_is_taken_over_by_a_non_blocking_call(side):
    """Also a call that may not wait takes a dead holder's lock over (it checks the holder
    when it finds the lock busy) and proceeds."""

    def body(ring, buf) -> str:
        off = C_LOCK if side == "consumer" else P_LOCK
        struct.pack_into("<Q", buf, off, NOBODY)
        if side == "consumer":
            assert ring.get(block=False) == b"abc"
        else:
            ring.put(b"xyz", block=False)
        assert _word(buf, off) == 0
        return "proceeded"

    assert _in_child(body) == "proceeded"


@pytest.mark.parametrize("side", ["consumer", "producer"])
@pytest.mark.parametrize("timeout", [None, 5, 0])
def test_lock_word_naming_this_thread_does_not_hang(side, timeout):
    """A peer stores this thread's own identity in the lock word: the lock says this thread
    holds it, which it does not. The call is refused at once (RuntimeError, as for a real
    relock, or a typed error), whether it may wait (even without a timeout) or not: never a
    hang, never a crash."""

    def body(ring, buf) -> str:
        off = C_LOCK if side == "consumer" else P_LOCK
        struct.pack_into("<Q", buf, off, lib.shmipc_lock_identity())
        block = timeout != 0
        t = time.monotonic()
        try:
            if side == "consumer":
                ring.get(block=block, timeout=timeout if block else None)
            else:
                ring.put(b"xyz", block=block, timeout=timeout if block else None)
            outcome = "returned"
        except RuntimeError:
            outcome = "RuntimeError"
        except ShmipcError as exc:
            outcome = f"typed {type(exc).__name__}"
        assert time.monotonic() - t < 1.0
        return outcome

    out = _in_child(body)
    assert out == "RuntimeError" or out.startswith("typed "), out


@pytest.mark.parametrize("side", ["consumer", "producer"])
def test_lock_word_naming_a_live_foreign_thread_times_out(side):
    """A peer writes the identity of a live thread of another process (here the parent's main
    thread) into the word: for all anyone can tell, that thread holds the lock. Calls wait
    for it and time out (queue.Empty / queue.Full), and nothing is taken over."""

    def body(ring, buf) -> str:
        off = C_LOCK if side == "consumer" else P_LOCK
        foreign = identity_of(os.getppid())
        struct.pack_into("<Q", buf, off, foreign)
        expected = queue.Empty if side == "consumer" else queue.Full
        for kwargs in ({"block": False}, {"timeout": 0.3}):
            t = time.monotonic()
            with pytest.raises(expected):
                if side == "consumer":
                    ring.get(**kwargs)
                else:
                    ring.put(b"xyz", **kwargs)
            if "timeout" in kwargs:
                assert 0.29 <= time.monotonic() - t < 2.0
        assert ring.recover() is False
        stats = ring.statistics()
        assert stats.consumers_recovered == 0 and stats.abandoned == 0
        assert stats.messages_in == 1 and stats.messages_out == 0
        assert _word(buf, off) == foreign  # untouched
        return "timed out"

    assert _in_child(body) == "timed out"


@pytest.mark.parametrize("sleepers", [1, 7, 0x7FFFFFFF, 0xFFFFFFFF])
def test_scribbled_sleeper_counts_only_cost_a_wake(sleepers):
    """A peer writes sleeper counts (and the spare word) of both locks: every release then
    issues a futex wake to nobody, and everything works as before."""

    def body(ring, buf) -> str:
        for off in (P_LOCK, C_LOCK):
            struct.pack_into("<II", buf, off + 8, sleepers, sleepers ^ 0x5A5A5A5A)
        assert ring.get(timeout=5) == b"abc"
        for k in range(50):
            ring.put(bytes([k]) * k, timeout=5)
            view = ring.reserve(3, timeout=5)
            view[:] = b"res"
            ring.commit()
            assert ring.get(timeout=5) == bytes([k]) * k
            assert bytes(ring.peek(timeout=5)) == b"res"
            ring.release()
        t = time.monotonic()
        with pytest.raises(queue.Empty):
            ring.get(timeout=0.2)
        assert time.monotonic() - t < 2.0
        stats = ring.statistics()
        assert stats.messages_in == stats.messages_out == 101
        assert stats.consumers_recovered == 0 and stats.abandoned == 0
        assert _word(buf, P_LOCK) == _word(buf, C_LOCK) == 0
        return "ok"

    assert _in_child(body) == "ok"


@pytest.mark.parametrize("owner", ["nobody", "foreign", "self"])
@pytest.mark.parametrize("bounds", ["garbage", "plausible", "unfinished"])
def test_scribbled_claim_registration_never_hangs(owner, bounds):
    """A peer writes a quarantine owner and claim bounds (csrc/claim.c) into a ring with no
    reservation out: a thread that no longer lives, a live thread of another process, or this
    very thread; bounds that break the rules, that look like a revoked claim, or that look
    like an unfinished revocation at the tail. Every call returns or raises a typed error
    (CorruptedError, Full, Empty) in bounded time, a dead owner's registration is ended by
    the liveness pass, and nothing is written outside the ring."""

    def body(ring, buf) -> str:
        me = lib.shmipc_lock_identity()
        who = {"nobody": NOBODY, "foreign": identity_of(os.getppid()), "self": me}[owner]
        tail = _word(buf, lib.SHMIPC_RING_OFF_P_TAIL)
        qs, qe = {
            "garbage": (2**64 - 8, 24),
            "plausible": (tail - 16, tail - 8) if tail >= 16 else (0, 8),
            "unfinished": (tail, tail + 64),
        }[bounds]
        struct.pack_into("<QQQ", buf, lib.SHMIPC_RING_OFF_Q_START, qs, qe, who)
        outcomes = []
        for call in ("put", "reserve", "get", "recover"):
            t = time.monotonic()
            try:
                if call == "put":
                    for k in range(20):
                        ring.put(bytes([k]) * 20, timeout=0.2)
                elif call == "reserve":
                    view = ring.reserve(16, timeout=0.2)
                    view[:] = b"r" * 16
                    ring.commit()
                elif call == "get":
                    while True:
                        ring.get(timeout=0.1)
                else:
                    ring.recover()
                outcomes.append(f"{call}:ok")
            except ALLOWED as exc:
                outcomes.append(f"{call}:{type(exc).__name__}")
            assert time.monotonic() - t < 3.0, f"{call} took too long"
        if owner == "nobody":  # a dead owner's registration never outlives a liveness pass
            assert _word(buf, lib.SHMIPC_RING_OFF_Q_OWNER) == 0
        return " ".join(outcomes)

    out = _in_child(body)
    assert "get:" in out and "recover:" in out, out


@pytest.mark.parametrize("head", [1, 7, 255, 2**64 - 1, 2**64 - 9])
def test_port_get_sizes_its_bytes_safely_from_a_scribbled_head(head):
    """The port sizes a get's bytes by a lock-free look at the next record (head, tail,
    header) before it locks. A scribbled head (unaligned, or near the top of its range, at the
    last bytes of the data area) must make that look give up, never read outside the ring or
    unaligned: the call then raises a typed error (CorruptedError from the locked path) or
    says Empty, and the process lives."""

    def body(ring, buf) -> str:
        struct.pack_into("<Q", buf, lib.SHMIPC_RING_OFF_C_HEAD, head)
        port = Port(ring._mapping, ring._map_off, ring.capacity, None, 0, 1)
        outcomes = []
        for call in (lambda: port.get_bytes(0), lambda: port.get_many(4, 0)):
            try:
                outcomes.append(repr(call()))
            except RingMiss as exc:
                outcomes.append(f"miss {exc.args[0]}")
        return " ".join(outcomes)

    out = _in_child(body)
    assert "miss" in out or out == "ok", out
