"""shmipc.Queue when processes are interrupted, die, or scribble.

* Ctrl-C: a process blocked in get() or put() without a timeout (on an empty or full queue,
  or behind another process's peek or reservation) gets KeyboardInterrupt within 100 ms;
* waits sleep: a second blocked in get()/put() costs little CPU;
* producers SIGKILLed at random points of put / put_many / put_bytes / reserve on a bounded
  queue: nothing committed is lost or torn, and nobody is blocked by the dead;
* consumers SIGKILLed while stepping with peek_next: the message a dead one held peeked is
  the next one's first, and nothing is lost or read twice;
* a process that dies between publishing (or retiring) a record and updating the message
  counts must not leave a bounded queue unusable (docs/internals/ring.md, recovery rules);
* another process scribbling over a live queue: typed errors only.
"""

from __future__ import annotations

import os
import pickle
import queue
import random
import signal
import struct
import time
import traceback
from functools import partial

import pytest
from _procs import (
    STOP,
    Procs,
    asleep_in_futex,
    check_scribbled,
    frame,
    lost_commits,
    note_in_order,
    obj_message,
    parse_obj,
    read_exact,
)

from shmipc import AtomicCounter, Event, Region
from shmipc._native import lib
from shmipc.queue import Queue

pytestmark = pytest.mark.timeout(120)

_TS = struct.Struct("<q")


# ---- Ctrl-C -----------------------------------------------------------------------------------

BLOCKED_CALLS = ["get-empty", "put-full", "get-behind-peek", "put-behind-reservation"]


def _blocking_setup(procs: Procs, how: str) -> tuple[Queue, int | None]:
    """A queue on which ``how``'s call blocks; the pid of a child holding a side, if any."""
    q = Queue(maxsize=1, capacity=4096)
    holder = None
    if how == "put-full":
        q.put("filler")
    elif how in ("get-behind-peek", "put-behind-reservation"):
        held = Event()
        if how == "get-behind-peek":
            q.put_bytes(b"held by a peek")

        def hold() -> None:
            if how == "get-behind-peek":
                q.peek(timeout=5)
            else:
                q.reserve(16, timeout=5)
            held.set()
            time.sleep(60)

        holder = procs.fork(hold)
        assert held.wait(10)
    return q, holder


def _blocked_call(q: Queue, how: str, timeout: float | None) -> None:
    if how.startswith("get"):
        q.get(timeout=timeout)
    else:
        q.put("more", timeout=timeout)


@pytest.mark.parametrize("how", BLOCKED_CALLS)
def test_ctrl_c_interrupts_a_blocked_call_within_100ms(procs, how):
    """SIGINT to a process blocked without a timeout: KeyboardInterrupt, promptly. Waits on
    a position sleep on a futex that the signal interrupts (EINTR); waits for a side's lock
    return to Python at the end of each 100 ms slice. Measured five times per case."""
    q, holder = _blocking_setup(procs, how)
    latencies = []
    try:
        for _ in range(5):
            r, w = os.pipe()

            def child(w: int = w) -> None:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                os.write(w, b"B")
                try:
                    _blocked_call(q, how, None)
                except KeyboardInterrupt:
                    os.write(w, _TS.pack(time.monotonic_ns()))
                    os._exit(0)
                os._exit(1)  # the call returned: it did not block

            pid = procs.fork(child)
            try:
                assert read_exact(r, 1, 10) == b"B"
                deadline = time.monotonic() + 10
                while not asleep_in_futex(pid):
                    assert time.monotonic() < deadline, "the call did not block"
                    time.sleep(0.001)
                time.sleep(random.uniform(0, 0.1))  # anywhere in a slice
                sent = time.monotonic_ns()
                os.kill(pid, signal.SIGINT)
                got = read_exact(r, _TS.size, 5)
                assert len(got) == _TS.size, "no KeyboardInterrupt"
                latencies.append((_TS.unpack(got)[0] - sent) / 1e6)
                assert procs.join(pid, 10) == 0
            finally:
                os.close(r)
                os.close(w)
    finally:
        if holder is not None:
            procs.kill(holder)
        q.close()
    print(f"{how}: Ctrl-C latencies {[f'{x:.2f}' for x in latencies]} ms")
    assert max(latencies) < 1000


# ---- waits sleep ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", BLOCKED_CALLS)
def test_a_blocked_second_costs_little_cpu(procs, how):
    q, holder = _blocking_setup(procs, how)
    try:

        def child() -> None:
            t = time.monotonic()
            with pytest.raises((queue.Empty, queue.Full)):
                _blocked_call(q, how, 1.0)
            assert time.monotonic() - t >= 0.95

        pid = procs.fork(child)
        code, usage = procs.join_rusage(pid, 30)
        assert code == 0
    finally:
        if holder is not None:
            procs.kill(holder)
        q.close()
    cpu = usage.ru_utime + usage.ru_stime
    print(f"{how}: 1 s blocked cost {cpu * 1e3:.1f} ms of CPU")
    assert cpu < 0.3


# ---- producers SIGKILLed ----------------------------------------------------------------------

N_QUEUE_KILLS = 400


def _queue_producer_body(q: Queue, committed: AtomicCounter, i: int, wfd: int, seed: int) -> None:
    rng = random.Random(seed)
    q.put(obj_message(i, 0, 8), timeout=5)
    committed.store(0)
    os.write(wfd, _TS.pack(time.monotonic_ns()))
    seq = 1
    while True:
        op = rng.randrange(4)
        if op == 0:
            q.put(obj_message(i, seq, rng.randint(0, 100)), timeout=5)
            committed.store(seq)
            seq += 1
        elif op == 1:
            q.put_bytes(frame(i, seq, rng.randint(0, 100)), timeout=5)
            committed.store(seq)
            seq += 1
        elif op == 2:
            k = rng.randint(1, 10)
            q.put_many([obj_message(i, seq + j, rng.randint(0, 60)) for j in range(k)], timeout=5)
            committed.store(seq + k - 1)
            seq += k
        else:
            msg = frame(i, seq, rng.randint(0, 200))
            view = q.reserve(len(msg), timeout=5)
            view[:] = msg
            q.commit()
            committed.store(seq)
            seq += 1


def _queue_consumer_body(q: Queue, out_path: str) -> None:
    rng = random.Random(9)
    expect: dict[int, int] = {}
    errors: list[str] = []
    error = None
    try:
        while True:
            if rng.random() < 0.5:
                got = [parse_obj(q.get(timeout=30))]
            else:
                got = [parse_obj(x) for x in q.get_many(rng.randint(2, 16), timeout=30)]
            if note_in_order(got, expect, errors):
                break
    except BaseException:
        error = traceback.format_exc()
        raise
    finally:
        with open(out_path, "wb") as f:
            pickle.dump({"expect": expect, "errors": errors, "error": error}, f)


def test_sigkilled_producers_on_a_bounded_queue(procs, tmp_path):
    """400 producers in turn, each SIGKILLed at a random moment, on Queue(maxsize=32) that a
    consumer drains: every message received is whole and in order, nothing committed is
    lost, each next producer's first put is prompt."""
    rng = random.Random(0xFEED)
    q = Queue(maxsize=32, capacity=16 << 10)
    counters = Region.anonymous(64 * N_QUEUE_KILLS)
    committed = [
        AtomicCounter.at(counters, 64 * i, create=True, value=-1) for i in range(N_QUEUE_KILLS)
    ]
    out = str(tmp_path / "consumer.pickle")
    try:
        consumer = procs.fork(lambda: _queue_consumer_body(q, out))
        worst = 0
        prev_death = None
        for i in range(N_QUEUE_KILLS):
            seed = rng.getrandbits(32)
            r, w = os.pipe()
            try:
                pid = procs.fork(
                    lambda i=i, w=w, seed=seed: _queue_producer_body(q, committed[i], i, w, seed)
                )
                first = read_exact(r, _TS.size, 10)
                assert len(first) == _TS.size, f"producer {i} died before its first put"
                if prev_death is not None:
                    worst = max(worst, _TS.unpack(first)[0] - prev_death)
                time.sleep(rng.uniform(0, 0.002))
                prev_death = time.monotonic_ns()
                assert procs.kill(pid) == -signal.SIGKILL, f"producer {i} exited by itself"
            finally:
                os.close(r)
                os.close(w)
        q.put_bytes(frame(STOP, 0), timeout=5)
        assert procs.join(consumer, 60) == 0
        with open(out, "rb") as f:
            res = pickle.load(f)
        stats = q.statistics()
    finally:
        q.close()
    print(f"worst first put after a death {worst / 1e6:.1f} ms; {stats}")
    assert res["errors"] == [], res["errors"]
    lost = lost_commits(committed, res["expect"])
    assert lost == [], f"committed but never received (producer, committed, received): {lost}"
    assert worst < 1.1e9


N_PEEK_KILLS = 60
PEEK_MESSAGES = 20_000


def _peek_next_consumer(q: Queue, w: int, go: int, seed: int) -> None:
    """Step through the queue with peek_next, checking each view, until killed (or the end).
    Tells the parent the number of the first message it peeked, then holds that peek until
    the parent says go."""
    rng = random.Random(seed)
    first = True
    while True:
        view = q.peek_next(timeout=10)
        seq = struct.unpack_from("<Q", view)[0]
        assert bytes(view[8:]) == bytes([seq % 251]) * 8, seq
        if first:
            os.write(w, struct.pack("<Q", seq))
            assert read_exact(go, 1, 30) == b"!"
            first = False
        if seq == PEEK_MESSAGES - 1:
            time.sleep(60)  # the last one stays peeked until the kill
        if rng.random() < 0.05:
            time.sleep(rng.uniform(0, 0.0005))  # killed holding the peek more often


def test_consumers_sigkilled_holding_a_peek_next_lose_and_repeat_nothing(procs):
    """Consumers in turn step through a queue with peek_next and are SIGKILLed at random
    moments: each message released by a dead consumer is gone, the one it held peeked is the
    next one's first, so the survivors read the rest exactly once and in order."""
    rng = random.Random(0xBEE)
    q = Queue(capacity=1 << 20)
    try:
        for seq in range(PEEK_MESSAGES):
            q.put_bytes(struct.pack("<Q", seq) + bytes([seq % 251]) * 8, timeout=5)
        for i in range(N_PEEK_KILLS):
            r, w = os.pipe()
            go_r, go_w = os.pipe()
            seed = rng.getrandbits(32)
            try:
                pid = procs.fork(partial(_peek_next_consumer, q, w, go_r, seed))
                first = read_exact(r, 8, 30)
                assert len(first) == 8, f"consumer {i} died before its first peek"
                # Its first peek took over the dead one's side (the counts made whole) and
                # released nothing: what the one before held peeked (or had not reached)
                # comes first, once.
                released = q.statistics().messages_out
                assert struct.unpack("<Q", first)[0] == released, (i, released)
                os.write(go_w, b"!")
                time.sleep(rng.uniform(0, 0.0015))
                assert procs.kill(pid) == -signal.SIGKILL, f"consumer {i} exited by itself"
            finally:
                for fd in (r, w, go_r, go_w):
                    os.close(fd)
        consumed = q.statistics().messages_out
        assert 0 < consumed < PEEK_MESSAGES, consumed  # the kills fell inside the stream
        print(f"{consumed} of {PEEK_MESSAGES} consumed by the killed consumers")
        rest = q.get_many(PEEK_MESSAGES, timeout=10)  # takes over the dead peeker's side
        while len(rest) < PEEK_MESSAGES - consumed:
            rest += q.get_many(PEEK_MESSAGES, timeout=10)
        seqs = [struct.unpack_from("<Q", m)[0] for m in rest]
        assert seqs[0] == consumed and seqs == list(range(seqs[0], PEEK_MESSAGES))
        stats = q.statistics()
        # Most were killed holding a peek (so holding the consumer side), not mid-call.
        assert stats.depth == 0 and stats.consumers_recovered >= N_PEEK_KILLS // 2, stats
    finally:
        q.close()


# ---- death between publishing and bookkeeping -------------------------------------------------


def _u64(ring, off: int) -> int:
    return lib.shmipc_load64_relaxed(ring._ptr, off)


def _rec_size(n: int) -> int:
    return (lib.SHMIPC_REC_HEADER + n + 7) & ~7


def test_producer_dead_right_after_publishing_leaves_a_bounded_queue_usable(procs):
    """A producer killed after put step 5 (pending counters, then the tail store that
    commits) and before step 6 (messages in += 1): "the record is committed and will be
    delivered once", and the queue must go on working with exact counts. The child
    reproduces that state exactly: it reserves, then does what commit's publish() does up to
    and including the tail store (the pending fields first, as the recoverer reads them),
    and dies. (A SIGKILL lands in that window rarely, but it does land there.)"""
    q = Queue(maxsize=2, capacity=4096)
    ring = q._ring
    msg = frame(0, 0, 8)
    try:

        def dies_mid_commit() -> None:
            q.reserve(len(msg), timeout=5)[:] = msg
            p = ring._ptr
            t = _u64(ring, lib.SHMIPC_RING_OFF_P_TAIL)
            assert _u64(ring, lib.SHMIPC_RING_OFF_P_CLAIM) == t  # commit's own check
            rec = _rec_size(len(msg))
            idx = t & (ring.capacity - 1)
            pad = ring.capacity - idx if idx + rec > ring.capacity else 0
            # publish(): what messages/bytes in will become, then the release store of the tail
            msgs_in = _u64(ring, lib.SHMIPC_RING_OFF_P_MSGS) + 1
            bytes_in = _u64(ring, lib.SHMIPC_RING_OFF_P_BYTES) + len(msg)
            lib.shmipc_store64_relaxed(p, lib.SHMIPC_RING_OFF_P_PEND_MSGS, msgs_in)
            lib.shmipc_store64_relaxed(p, lib.SHMIPC_RING_OFF_P_PEND_BYTES, bytes_in)
            lib.shmipc_store64_release(p, lib.SHMIPC_RING_OFF_P_TAIL, t + pad + rec)
            os.kill(os.getpid(), signal.SIGKILL)  # before the counters, the claim, the unlock

        assert procs.join(procs.fork(dies_mid_commit)) == -signal.SIGKILL
        assert _u64(ring, lib.SHMIPC_RING_OFF_P_MSGS) == 0  # the dead one's counters lag
        assert parse_obj(q.get(timeout=1)) == (0, 0)
        for k in range(1, 6):  # put/get in turn: never more than one message waiting
            q.put(obj_message(0, k, 4), timeout=1)  # queue.Full here: the queue is wedged
            assert parse_obj(q.get(timeout=1)) == (0, k)
        assert q.qsize() == 0
        stats = ring.statistics()
        assert stats.messages_in == stats.messages_out == 6  # exact: the commit counted once
        assert stats.bytes_in == stats.bytes_out
        assert stats.abandoned == 0  # it was published, not abandoned
        assert stats.depth == 0
    finally:
        q.close()


def test_consumer_dead_right_after_retiring_leaves_a_bounded_queue_usable(procs):
    """A consumer killed after get step 5 (pending head and counters, then the head store
    that frees the record) and before step 6 (messages out += 1): "the record was consumed",
    and the queue must go on working with exact counts. The child reproduces that state
    exactly: it peeks, then does what release() and its retire() do up to and including the
    head store (the pending fields first, as the recoverer reads them), and dies. With
    maxsize=1 the queue must not stay "full" forever."""
    q = Queue(maxsize=1, capacity=4096)
    ring = q._ring
    try:
        q.put_bytes(frame(0, 0, 8))

        def dies_mid_release() -> None:
            n = len(q.peek(timeout=5))
            p = ring._ptr
            at = _u64(ring, lib.SHMIPC_RING_OFF_C_PEEK) - 1  # the peeked record's position
            assert at == _u64(ring, lib.SHMIPC_RING_OFF_C_HEAD)
            end = at + _rec_size(n)
            # release(): clear the peek; retire(): the pending head and what messages/bytes
            # out will become, then the release store of the head
            lib.shmipc_store64_relaxed(p, lib.SHMIPC_RING_OFF_C_PEEK, 0)
            msgs_out = _u64(ring, lib.SHMIPC_RING_OFF_C_MSGS) + 1
            bytes_out = _u64(ring, lib.SHMIPC_RING_OFF_C_BYTES) + n
            lib.shmipc_store64_relaxed(p, lib.SHMIPC_RING_OFF_C_PEND_END, end)
            lib.shmipc_store64_relaxed(p, lib.SHMIPC_RING_OFF_C_PEND_MSGS, msgs_out)
            lib.shmipc_store64_relaxed(p, lib.SHMIPC_RING_OFF_C_PEND_BYTES, bytes_out)
            lib.shmipc_store64_release(p, lib.SHMIPC_RING_OFF_C_HEAD, end)
            os.kill(os.getpid(), signal.SIGKILL)  # before the counters and the unlock

        assert procs.join(procs.fork(dies_mid_release)) == -signal.SIGKILL
        assert _u64(ring, lib.SHMIPC_RING_OFF_C_MSGS) == 0  # the dead one's counters lag
        with pytest.raises(queue.Empty):
            q.get(timeout=0.1)  # the dead consumer took it
        q.put(obj_message(0, 1, 4), timeout=1)  # queue.Full here: the queue is wedged
        assert parse_obj(q.get(timeout=1)) == (0, 1)
        assert q.qsize() == 0 and not q.full()
        stats = ring.statistics()
        assert stats.messages_in == stats.messages_out == 2  # exact: the dead get counted once
        assert stats.bytes_in == stats.bytes_out
        assert stats.consumers_recovered == 1
        assert stats.depth == 0
    finally:
        q.close()


# ---- scribbling -------------------------------------------------------------------------------


def test_scribbled_queue_gives_only_typed_errors(procs):
    """Another process writes garbage over a live queue's positions, record headers and
    payloads (the two locks aside: tests/fault/test_ring_faults.py has that case) while a
    reader decodes and a writer encodes: typed errors only, no crash, no hang."""
    q = Queue(capacity=4096)
    try:
        for k in range(20):
            q.put(obj_message(0, k, k))
        read_ops = [
            lambda rng: q.get(timeout=0.01),
            lambda rng: q.get_many(8, timeout=0.01),
            lambda rng: q.get_bytes(timeout=0.01),
        ]
        write_ops = [
            lambda rng: q.put(obj_message(0, 1, rng.randint(0, 100)), timeout=0.01),
            lambda rng: q.put_many(
                [obj_message(0, 2, 10), {"k": [1, 2.5, None]}, "text"], timeout=0.01
            ),
            lambda rng: q.put_bytes(frame(0, 3, 24), timeout=0.01),
        ]
        check_scribbled(procs, q.name, read_ops, write_ops, locks=False, seed=4)
    finally:
        q.close()


# ---- hostile spill references (issue 7, item 11) -----------------------------------------------

_SPILL_REF = struct.Struct("<Q")


def _spill_name(q: Queue) -> str:
    """A fresh name a reader of ``q`` takes for one of its spills."""
    spills = getattr(q, "_spills", None)
    prefix = spills.prefix if spills is not None else "shmipc_spill_"  # the old reader: any
    return prefix + os.urandom(8).hex()


@pytest.mark.parametrize("max_message", [None, 200 << 30], ids=["default", "200GiB"])
def test_sparse_spill_of_100_gib_is_refused_with_bounded_memory(max_message):
    """A producer names a sparse file that claims 100 GiB and costs nothing: the reader must
    refuse it (CorruptedError) without allocating it, in a child whose address space is
    limited to 1 GiB more than it uses, and the next message still arrives. Past the default
    max_message that bound refuses it; with a bound raised past 100 GiB, the file's holes do."""
    import resource

    from shmipc import _spill

    claimed = 100 << 30
    bound = {} if max_message is None else {"max_message": max_message}
    with Queue(capacity=4096, **bound) as q:
        name = _spill_name(q)
        path = os.path.join("/dev/shm", name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if hasattr(_spill, "SPILL_HEADER"):
                head = _spill.SPILL_HEADER.pack(_spill.SPILL_MAGIC, q._spills.tag, claimed)
                os.write(fd, head)
                os.ftruncate(fd, len(head) + claimed)
            else:
                os.ftruncate(fd, claimed)
        finally:
            os.close(fd)
        try:
            q._ring.put(_SPILL_REF.pack(claimed) + name.encode(), type=4)  # T_SPILL_BYTES
            q.put("next")

            def consumer(report: int) -> None:
                with open("/proc/self/statm") as f:
                    vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
                resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))
                try:
                    q.get_bytes(timeout=10)
                    outcome = "read it"
                except Exception as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                outcome += " | " + repr(q.get(timeout=10))
                os.write(report, outcome.encode())

            from _procs import fork_call

            code, report = fork_call(consumer)
            assert code == 0, f"consumer exited with {code}"
            outcome = report.decode()
            assert outcome.startswith("CorruptedError") and "refused before allocating" in outcome
            assert ("sparse" in outcome) == (max_message is not None)
            assert outcome.endswith("| 'next'")
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another uid")
def test_consumer_of_another_uid_reads_the_spills_of_a_0o666_queue(monkeypatch):
    """Spills take the queue's mode: a consumer running as nobody (65534) on a queue made
    0o666 by root gets the large messages; what it could not unlink (the sticky /dev/shm) it
    emptied, and the creator's close removes the rest."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit", "queue"))
    from _procs import fork_call
    from queue_helpers import SpillRecorder

    recorder = SpillRecorder(monkeypatch)
    big_bytes, big_obj = os.urandom(3000), {"blob": os.urandom(3000)}
    q = Queue(capacity=4096, mode=0o666)
    try:
        q.put_bytes(big_bytes)
        q.put(big_obj)
        q.put("small")

        def nobody(report: int) -> None:
            os.setgid(65534)
            os.setuid(65534)
            got = [q.get_bytes(timeout=10) == big_bytes, q.get(timeout=10) == big_obj]
            got.append(q.get(timeout=10) == "small")
            os.write(report, repr(got).encode())

        code, report = fork_call(nobody)
        assert (code, report) == (0, b"[True, True, True]")
        for name in recorder.existing():  # read, so gone or an empty tombstone
            assert os.stat(os.path.join("/dev/shm", name)).st_size == 0
    finally:
        q.close()
    assert recorder.existing() == []
