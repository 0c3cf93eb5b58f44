"""shmipc.Queue under load: N producers x M consumers in separate processes, fork and spawn.

As tests/stress/test_ring_stress.py, through the Queue's surface: bytes and tuples through
the msgpack codec, put_bytes, put_many/get_many, reserve/commit with peek/release and
peek_next, and messages larger than half the ring (spilled to side segments, alone or inside
put_many batches), with and without ``maxsize``. Checked: exactly once, each producer's
order kept within each consumer's stream, nothing torn, and no spill segment left behind
(the session fixture checks /dev/shm).
"""

from __future__ import annotations

import os
import random

import pytest
from _procs import (
    TIMEOUT,
    Procs,
    check_streams,
    decode_view,
    frame,
    load_result,
    parse,
    run_stress,
    send_stops,
)

from shmipc import _spill
from shmipc.queue import Queue

pytestmark = pytest.mark.timeout(90)

KIB4 = 4096
DEFAULT = 1 << 20

COPY = (("put", "put_obj"), ("get",))
COPY_SPILL = (("put", "put_obj", "spill"), ("get",))
BATCH = (("put_many",), ("get_many",))
BATCH_SPILL = (("put_many", "spill"), ("get_many",))
ZEROCOPY = (("reserve", "put"), ("peek",))
ZEROCOPY_NEXT = (("reserve", "put"), ("peek_next", "peek_next", "peek", "get"))
MIXED = (("put", "put_obj", "put_many", "reserve"), ("get", "get_many", "peek"))
MIXED_SPILL = (("put", "put_obj", "put_many", "reserve", "spill"), ("get", "get_many"))
NAMES = {
    COPY: "copy",
    COPY_SPILL: "copy+spill",
    BATCH: "batch",
    BATCH_SPILL: "batch+spill",
    ZEROCOPY: "zerocopy",
    ZEROCOPY_NEXT: "peek_next",
    MIXED: "mixed",
    MIXED_SPILL: "mixed+spill",
}

# (start method, producers, consumers, capacity, maxsize, (producer ops, consumer ops), msgs)
CASES = [
    ("fork", 1, 1, KIB4, 0, COPY, 50000),
    ("fork", 2, 2, DEFAULT, 0, BATCH_SPILL, 100000),
    ("fork", 4, 3, KIB4, 0, MIXED_SPILL, 50000),
    ("fork", 3, 1, KIB4, 0, ZEROCOPY, 50000),
    ("fork", 2, 2, KIB4, 0, ZEROCOPY_NEXT, 50000),
    ("fork", 4, 3, KIB4, 16, MIXED, 50000),
    ("spawn", 1, 1, DEFAULT, 0, ZEROCOPY, 50000),
    ("spawn", 2, 2, KIB4, 0, MIXED_SPILL, 50000),
    ("spawn", 4, 3, KIB4, 0, BATCH, 100000),
    ("spawn", 3, 1, DEFAULT, 0, COPY_SPILL, 50000),
    ("spawn", 2, 2, DEFAULT, 3, MIXED, 50000),
]


def _id(case) -> str:
    method, n_p, n_c, cap, maxsize, ops, _ = case
    bound = f"-maxsize{maxsize}" if maxsize else ""
    return f"{method}-{n_p}x{n_c}-{'4KiB' if cap == KIB4 else '1MiB'}{bound}-{NAMES[ops]}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_queue_exactly_once_in_order(case, tmp_path):
    method, n_p, n_c, cap, maxsize, (p_ops, c_ops), total = case
    q = Queue(maxsize, capacity=cap)
    try:
        out = run_stress("queue", q, method, n_p, n_c, p_ops, c_ops, total, str(tmp_path), 11)
        assert not out["problems"], out["problems"]
        stats = q.statistics()
        # + the stop messages (a consumer that got two in one batch puts one back)
        assert stats.messages_in == stats.messages_out >= total + n_c
        assert stats.depth == 0 and stats.depth_bytes == 0 and q.qsize() == 0
        assert stats.abandoned == 0 and stats.consumers_recovered == 0
        if cap == KIB4 or maxsize:
            assert stats.producer_waits > 0  # the queue really filled up
        print(f"{_id(case)}: {out['elapsed']:.2f} s, {stats}")
    finally:
        q.close()


def test_peek_consumers_meet_spilled_messages(tmp_path, monkeypatch):
    """Consumers reading with peek(), as the zero-copy path invites, on a queue that also
    carries a few messages larger than half the ring.

    Queue.peek raises ValueError for a spilled message and tells the caller to use
    get_bytes() for it; these consumers do exactly that. Every message must still arrive
    exactly once, and no spill segment may be left in /dev/shm.
    """
    spills: list[str] = []
    made = _spill.random_name

    def recording(prefix: str = "shmipc") -> str:
        name = made(prefix)
        spills.append(name)
        return name

    monkeypatch.setattr(_spill, "random_name", recording)
    q = Queue(capacity=KIB4)
    procs = Procs()
    paths = [str(tmp_path / f"c{c}.pickle") for c in range(2)]
    try:

        def consumer(c: int) -> None:
            stress_consumer_with_fallback(q, paths[c])

        pids = [procs.fork(lambda c=c: consumer(c)) for c in range(2)]
        rng = random.Random(3)
        total = 400
        for seq in range(total):  # this process is the one producer (id 0)
            big = seq % 20 == 7
            q.put(frame(0, seq, KIB4 if big else rng.randint(0, 100)), timeout=TIMEOUT)
        send_stops("queue", q, 2)
        codes = [procs.join(pid) for pid in pids]
        results = [load_result(p) for p in paths]
        assert codes == [0, 0], [r["error"] for r in results]
        problems = check_streams([r["stream"] for r in results], [total])
    finally:
        procs.kill_all()
        q.close()
        leaked = [n for n in spills if os.path.exists(f"/dev/shm/{n}")]
        for name in leaked:
            os.unlink(f"/dev/shm/{name}")
    assert not problems and not leaked, f"{problems}; spill segments left: {len(leaked)}"


def stress_consumer_with_fallback(q: Queue, out_path: str) -> None:
    """A peek consumer that follows Queue.peek's advice for spilled messages."""
    import pickle
    import traceback
    from array import array

    stream = array("Q")
    error = None
    try:
        while True:
            try:
                view = q.peek(timeout=TIMEOUT)
            except ValueError:  # a spilled message: "read it with get() or get_bytes()"
                pid, seq = decode_view("queue", q, memoryview(q.get_bytes(timeout=TIMEOUT)))
            else:
                try:
                    pid, seq = decode_view("queue", q, view)
                finally:
                    q.release()
            if pid == 0xFFFFFFFF:
                break
            stream.append(pid << 32 | seq)
    except BaseException:
        error = traceback.format_exc()
        raise
    finally:
        with open(out_path, "wb") as f:
            pickle.dump({"stream": stream.tobytes(), "ops": {}, "error": error}, f)


def test_stress_consumer_parses_what_it_is_given():
    """The checker itself: a torn message is refused (guards the tests above)."""
    msg = bytearray(frame(3, 9, 10))
    assert parse(bytes(msg)) == (3, 9)
    msg[-1] ^= 1
    with pytest.raises(AssertionError):
        parse(bytes(msg))
    assert check_streams([load_stream([(0, 0), (0, 1)])], [2]) == []
    assert check_streams([load_stream([(0, 1), (0, 0)])], [2])  # out of order
    assert check_streams([load_stream([(0, 0)]), load_stream([(0, 0)])], [1])  # duplicate
    assert check_streams([load_stream([(0, 0)])], [2])  # lost


def load_stream(pairs):
    from array import array

    return array("Q", [p << 32 | s for p, s in pairs])
