"""A live ring whose shared bytes a hostile or broken peer overwrites.

Hypothesis writes random bytes (and well-chosen positions and record headers) at random
offsets of a live ring's control block and data area, then drives get/get_many/peek/put/
put_many/reserve without blocking (or with short timeouts). The contract
(docs/internals/ring.md, "Shared memory is untrusted input" in DESIGN.md): every call
succeeds or raises a ``shmipc.ShmipcError`` subclass, ``queue.Empty`` or ``queue.Full``;
never a crash, never a hang, never a read or write outside the mapping.

The side that reads always runs in a forked child: a crash kills the child, and the test
sees the signal instead of losing the pytest worker. One test lets ANOTHER process scribble
while the reader runs. Two scopes are fuzzed: everything except the two pthread mutexes, and
everything including them (the mutexes are glibc's state: see the deterministic tests at the
end for what a scribbled mutex does today).
"""

from __future__ import annotations

import os
import queue
import random
import select
import struct
import threading
import time
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ring_fuzz_helpers import Child, describe, report, run_child

from shmipc import CorruptedError, ShmipcError
from shmipc._native import lib
from shmipc.ring import Ring

pytestmark = pytest.mark.timeout(180)

HEADER = lib.SHMIPC_RING_HEADER_SIZE
P_MUTEX = lib.SHMIPC_RING_OFF_P_LOCK
C_MUTEX = lib.SHMIPC_RING_OFF_C_LOCK
MUTEX_SLOT = 64  # each mutex has a 64-byte slot (pthread_mutex_t is 40 bytes on x86_64)
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
    lib.SHMIPC_RING_OFF_C_HEAD,
    lib.SHMIPC_RING_OFF_C_TAIL_CACHE,
    lib.SHMIPC_RING_OFF_C_MSGS,
    lib.SHMIPC_RING_OFF_C_PEEK,
    lib.SHMIPC_RING_OFF_DATA_WAITERS,
    lib.SHMIPC_RING_OFF_SPACE_WAITERS,
]
U64_VALUES = st.one_of(
    st.sampled_from([0, 1, 7, 8, 16, 56, 64, 128, 248, 256, 1024, 1 << 32, 2**63, 2**64 - 8]),
    st.sampled_from([2**64 - 1, 2**64 - 16, (1 << 40) + 8, 1 << 20]),
    st.integers(0, 2**64 - 1),
    st.integers(0, 4096).map(lambda n: n * 8),
)
# words worth writing into a mutex's fields: kinds (type | robust | PI | PP | pshared), lock
# words with the owner-died bit, small thread ids, anything
MUTEX_FIELDS = [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]
MUTEX_WORDS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 0x92, 0x90, 0x12, 0xB2, 0xC0, 0x40, 0x80, 0x100, 0x200]),
    st.sampled_from([0x40000000, 0x80000000, 0xC0000000, 0x3FFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF]),
    st.integers(0, 255).map(lambda k: k | 0x80),
    st.integers(1, 1 << 22),
    st.integers(0, 2**32 - 1),
)
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
]


def _outside_mutexes(offset: int, length: int) -> bool:
    for slot in (P_MUTEX, C_MUTEX):
        if offset < slot + MUTEX_SLOT and slot < offset + length:
            return False
    return True


@st.composite
def scribbles(draw, capacity: int, mutexes: bool):
    """One write into the ring's bytes: (offset from the control block's start, bytes)."""
    kinds = ["bytes", "u64", "header"] + (["mutex"] if mutexes else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "mutex":  # a field of one of the pthread mutexes (glibc x86_64 layout)
        off = draw(st.sampled_from([P_MUTEX, C_MUTEX])) + draw(st.sampled_from(MUTEX_FIELDS))
        data = struct.pack("<I", draw(MUTEX_WORDS))
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
    if not mutexes and not _outside_mutexes(off, len(data)):
        # move it to the same place in the data area instead
        off = HEADER + (off % (capacity - len(data) + 1))
    return off, data


@st.composite
def sessions(draw, mutexes: bool):
    capacity = draw(st.sampled_from(CAPACITIES))
    prefill = draw(st.lists(st.integers(0, capacity // 2 - 8), max_size=12))
    steps = draw(
        st.lists(
            st.one_of(
                scribbles(capacity, mutexes).map(lambda s: ("scribble", s)),
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
@given(session=sessions(mutexes=False), seed=st.integers(0, 2**32 - 1))
def test_scribbled_positions_and_records(session, seed):
    """Everything but the mutexes: positions, caches, counters, record headers, payloads."""
    capacity, prefill, steps = session
    code, out = run_child(_session(capacity, prefill, steps, seed))
    assert code == 0, f"the reader ended with {describe(code)}:\n{out}"


@FUZZ
@given(session=sessions(mutexes=True), seed=st.integers(0, 2**32 - 1))
def test_scribbled_anywhere_including_the_mutexes(session, seed):
    """The whole control block, the pthread mutexes included."""
    capacity, prefill, steps = session
    code, out = run_child(_session(capacity, prefill, steps, seed))
    assert code == 0, f"the reader ended with {describe(code)}:\n{out}"


# ---- another process scribbles while this one reads --------------------------------------


def _concurrent(seed: int, capacity: int, mutexes: bool, budget: float = 0.3) -> tuple[int, str]:
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
            if not mutexes and not _outside_mutexes(off, n):
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
    code, out = _concurrent(seed, capacity, mutexes=False)
    assert code == 0, f"the reader ended with {describe(code)}:\n{out}"


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), capacity=st.sampled_from(CAPACITIES))
def test_another_process_scribbles_the_mutexes_while_this_one_reads(seed, capacity):
    code, out = _concurrent(seed, capacity, mutexes=True)
    assert code == 0, f"the reader ended with {describe(code)}:\n{out}"


# ---- deterministic: what a scribbled pthread mutex does --------------------------------------
#
# Offsets inside glibc's x86_64 pthread_mutex_t: __lock (0), __count (4), __owner (8),
# __nusers (12), __kind (16), __spins (20), __list.__prev (24), __list.__next (32).

LOCK, OWNER, KIND, LIST = 0, 8, 16, 24
PSHARED = 128  # PTHREAD_MUTEX_PSHARED_BIT
ROBUST = 16
PI = 32
PP = 64


def _expect_contract(setup, call) -> None:
    """In a child: build a ring, let ``setup(ring, buf)`` scribble, then ``call(ring)``;
    the call must succeed or raise an allowed error, and the child must exit normally."""

    def child(fd: int) -> None:
        ring = Ring.anonymous(256, spin_ns=1000)
        ring.put(b"abc")
        buf = ring.region.buffer
        setup(ring, buf)
        try:
            call(ring)
            report(fd, "ok")
        except ALLOWED as exc:
            report(fd, type(exc).__name__)

    code, out = run_child(child)
    assert code == 0, f"the call ended with {describe(code)}:\n{out}"


def _on_x86_64() -> bool:
    return os.uname().machine == "x86_64"


needs_x86_64 = pytest.mark.skipif(not _on_x86_64(), reason="glibc x86_64 mutex layout")


@needs_x86_64
def test_peer_overwriting_a_held_mutex_links_does_not_crash():
    """While this process holds the consumer mutex (between peek and release), a peer writes
    the mutex's robust-list links. glibc's unlock follows them: SIGSEGV today."""

    def setup(ring, buf):
        ring.peek()
        struct.pack_into("<QQ", buf, C_MUTEX + LIST, 0x10, 0x20)

    _expect_contract(setup, lambda ring: ring.release())


@needs_x86_64
def test_peer_setting_an_invalid_mutex_kind_is_corrupted_error():
    """An invalid __kind makes pthread return EINVAL: OSError today, not a ShmipcError."""

    def setup(ring, buf):
        struct.pack_into("<i", buf, C_MUTEX + KIND, 0x12345678)

    def call(ring):
        with pytest.raises(CorruptedError):
            ring.get(block=False)

    _expect_contract(setup, call)


@needs_x86_64
def test_peer_setting_a_priority_protect_mutex_kind_does_not_abort():
    """__kind = PTHREAD_MUTEX_PP_NORMAL_NP with a garbage owner: glibc's
    __pthread_tpp_change_priority asserts and the process aborts today (SIGABRT), even for a
    non-blocking get."""

    def setup(ring, buf):
        struct.pack_into("<i", buf, C_MUTEX + OWNER, 5)
        struct.pack_into("<i", buf, C_MUTEX + KIND, PP | PSHARED)

    _expect_contract(setup, lambda ring: ring.get(block=False))


@needs_x86_64
def test_peer_setting_a_robust_pi_mutex_with_a_dead_owner_does_not_abort():
    """__kind = robust PI, lock word = a thread id nobody has: a blocking get makes glibc
    assert (pthread_mutex_timedlock.c: e != ESRCH || !robust) and abort today."""

    def setup(ring, buf):
        struct.pack_into("<I", buf, C_MUTEX + LOCK, 0x3FFFFFFF)
        struct.pack_into("<i", buf, C_MUTEX + KIND, 2 | ROBUST | PI | PSHARED)

    _expect_contract(setup, lambda ring: ring.get(timeout=0.2))


@needs_x86_64
def test_peer_writing_our_thread_id_into_the_lock_word_is_not_a_runtime_error():
    """A peer stores this thread's id in the consumer mutex's lock word: the error-checking
    mutex reports EDEADLK and Ring raises RuntimeError ("this thread holds a reservation or
    a peeked record"), which is false: the ring is corrupted."""

    def setup(ring, buf):
        struct.pack_into("<I", buf, C_MUTEX + LOCK, threading.get_native_id())

    _expect_contract(setup, lambda ring: ring.get(block=False))
