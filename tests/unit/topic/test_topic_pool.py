"""Topic fan-out through the block pool (shmipc/topic_pool.py): references counted under the
publisher lock, claimed by each subscriber, given back by close and by eviction."""

from __future__ import annotations

import gc
import os
import signal
import struct
import time

import pytest

np = pytest.importorskip("numpy")

import queue  # noqa: E402

from shmipc import BufferPool, CorruptedError, Evicted, Lagged, Topic  # noqa: E402
from shmipc import topic_pool as _tp  # noqa: E402
from shmipc._native import ffi, lib  # noqa: E402
from shmipc.buffers import PoolExhausted  # noqa: E402
from tests._procs import wait_for  # noqa: E402

N = 40
SHAPE = (64, 1024)  # 512 KiB of float64


@pytest.fixture
def pool():
    p = BufferPool.create(size=24 << 20)
    yield p
    p.unlink()
    p.close()


def _free(pool: BufferPool) -> int:
    gc.collect()
    pool.reclaim()
    return pool.statistics().free_bytes


def _fork(fn) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Run fn(write_fd) in a forked child; returns (pid, read_fd)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(r)
            fn(w)
            code = 0
        except BaseException as exc:
            os.write(w, f"E{type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _read_line(fd: int, timeout: float = 30.0) -> str:
    import select

    buf = b""
    end = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = end - time.monotonic()
        assert left > 0, f"child said nothing in {timeout}s (so far {buf!r})"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            assert chunk, f"child closed its pipe (so far {buf!r})"
            buf += chunk
    return buf.decode().strip()


def _wait(pid: int, timeout: float = 30.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not exit within {timeout}s")


def _checksum(arr) -> int:  # type: ignore[no-untyped-def]
    return int(arr.view(np.uint64).sum() & 0xFFFFFFFF)


@pytest.mark.timeout(60)
def test_loaned_arrays_fan_out_to_three_processes(pool: BufferPool) -> None:
    topic = Topic.create(pool=pool, capacity=1 << 12)
    base = _free(pool)
    name, pname = topic.name, pool.name

    def child(w: int) -> None:
        t = Topic.attach(name, pool=pname)
        sub = t.subscribe()
        os.write(w, b"ready\n")
        sums = []
        held = []
        for _ in range(N):
            msg = sub.receive(timeout=30)
            arr = msg["a"]
            assert not arr.flags.writeable and arr.shape == SHAPE
            sums.append(_checksum(arr) == msg["sum"] and arr[0, 0] == msg["seq"])
            held.append(arr)  # keep views alive across later receives
            if len(held) > 3:
                held.pop(0)
        os.write(w, f"ok {sum(sums)}\n".encode())
        sub.close()

    kids = [_fork(child) for _ in range(3)]
    try:
        for _, r in kids:
            assert _read_line(r) == "ready"
        pub = topic.publisher()
        for seq in range(N):
            arr = pub.loan_array(SHAPE, np.float64, timeout=10)
            arr[:] = seq
            arr[-1, -1] = seq * 7 + 1
            pub.publish({"a": arr, "seq": seq, "sum": _checksum(arr)}, timeout=30)
            del arr
        for pid, r in kids:
            line = _read_line(r)
            assert line == f"ok {N}", line
            assert _wait(pid) == 0
    finally:
        for pid, r in kids:
            os.close(r)
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    wait_for(lambda: _free(pool) == base, 10, "free space back to baseline")
    topic.unlink()
    topic.close()


@pytest.mark.timeout(60)
def test_killed_and_stopped_subscribers_give_their_blocks_back(pool: BufferPool) -> None:
    topic = Topic.create(pool=pool, capacity=1 << 10, liveness_interval=0.5)
    base = _free(pool)
    name, pname = topic.name, pool.name
    arr = np.arange(8192, dtype=np.float64)  # 64 KiB: the pool outlasts the ring

    def holder(w: int) -> None:  # receives two, holds the views, waits to be killed
        t = Topic.attach(name, pool=pname)
        sub = t.subscribe()
        os.write(w, b"ready\n")
        views = [sub.receive(timeout=30), sub.receive(timeout=30)]
        assert all((v == arr).all() for v in views)
        os.write(w, b"holding\n")
        time.sleep(60)

    def idle(w: int) -> None:  # subscribes, then is stopped with everything unread
        t = Topic.attach(name, pool=pname)
        sub = t.subscribe()
        os.write(w, b"ready\n")
        time.sleep(60)
        sub.receive(timeout=0)

    (kpid, kr), (spid, sr) = _fork(holder), _fork(idle)
    try:
        assert _read_line(kr) == "ready" and _read_line(sr) == "ready"
        os.kill(spid, signal.SIGSTOP)
        pub = topic.publisher()
        pub.publish(arr, timeout=10)
        pub.publish(arr, timeout=10)
        assert _read_line(kr) == "holding"
        assert _free(pool) < base
        os.kill(kpid, signal.SIGKILL)
        os.waitpid(kpid, 0)
        # Publishing goes on: the blocked publisher evicts the dead and the stopped one
        # (walking their unread records back), within the liveness interval + a margin.
        t0 = time.monotonic()
        for _ in range(12):
            pub.publish(arr, timeout=10)
        assert time.monotonic() - t0 < 0.5 + 5.0
        assert topic.statistics().evictions >= 2
        wait_for(lambda: _free(pool) == base, 0.5 + 5.0, "free space back to baseline")
    finally:
        for pid in (kpid, spid):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(kr)
        os.close(sr)
    topic.unlink()
    topic.close()


def test_stopped_subscriber_learns_it_was_evicted(pool: BufferPool) -> None:
    topic = Topic.create(pool=pool, capacity=1 << 12)
    base = _free(pool)
    sub = topic.subscribe()
    pub = topic.publisher()
    pub.publish(np.ones(SHAPE))
    pub.publish(np.ones(SHAPE))
    # Evict it as a blocked publisher would (the owner is alive: to_free=False).
    assert topic._evict(topic._ptr, sub.slot, sub._word, False)
    assert _free(pool) == base  # its two unread records' references were walked back
    with pytest.raises(Evicted):
        sub.receive(timeout=0)
    sub.close()
    topic.unlink()
    topic.close()


def test_receive_bytes_gives_the_reference_back(pool: BufferPool) -> None:
    topic = Topic.create(pool=pool)
    base = _free(pool)
    subs = [topic.subscribe(), topic.subscribe()]
    topic.publisher().publish(np.ones(SHAPE))
    frame = subs[0].receive_bytes(timeout=1)
    assert frame.startswith(b"\x00SH") or len(frame) < 1024  # a frame, not the payload
    view = subs[1].receive(timeout=1)
    assert view.sum() == SHAPE[0] * SHAPE[1]
    assert _free(pool) < base
    del view
    assert _free(pool) == base
    for s in subs:
        s.close()
    topic.unlink()
    topic.close()


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_hostile_handle_in_a_record_is_corrupted_error(pool: BufferPool, policy: str) -> None:
    topic = Topic.create(pool=pool, policy=policy, capacity=1 << 12)
    sub = topic.subscribe()
    pub = topic.publisher()
    good = pub.loan(1 << 16)
    frame, sent = topic._tpool.encode(good, None)
    topic._tpool.give_back(sent)
    head = struct.Struct("<BBBBIIIQQQ")
    fields = list(head.unpack_from(frame, 3))
    # index, offset, length, class; and (block) a generation that is not the block's: under
    # "overwrite" that one reads as a lapped record (Lagged), never as the reused block.
    cases = [(4, 10**6), (7, 1 << 40), (9, 1 << 40), (2, 77), (5, fields[5] + 1)]
    for i, value in cases:
        bad = list(fields)
        bad[i] = value
        forged = frame[:3] + head.pack(*bad) + frame[3 + head.size :]
        need = ffi.new("uint64_t *")
        _tp.lock(topic, -1)
        try:
            rc = lib.shmipc_topic_place_locked(
                topic._ptr, topic._cap, topic._max_subs, forged, len(forged), _tp.K_POOLED, need
            )
        finally:
            _tp.unlock(topic)
        assert rc == lib.SHMIPC_OK
        expect = Lagged if (policy, i) == ("overwrite", 5) else CorruptedError
        with pytest.raises(expect):
            sub.receive(timeout=1)
    good.release()
    base = _free(pool)
    for _ in range(3):  # forged records left unread, walked, or overwritten: no error
        pub.publish(np.ones(8192), timeout=5)
    for _ in range(5):
        _tp.lock(topic, -1)
        try:
            lib.shmipc_topic_place_locked(
                topic._ptr, topic._cap, topic._max_subs, forged, len(forged), _tp.K_POOLED, need
            )
        finally:
            _tp.unlock(topic)
    sub.close()  # "block": walks the unread ones, forged or not
    if policy == "overwrite":
        for _ in range(100):  # overwrite them all
            pub.publish(np.ones(8192), timeout=5)
    topic.unlink()
    topic.close()
    assert _free(pool) == base


def test_pool_rules(pool: BufferPool) -> None:
    topic = Topic.create(pool=pool)
    with pytest.raises(ValueError, match="pool="):
        Topic.attach(topic.name)
    plain = Topic.create()
    with pytest.raises(ValueError, match="without a block pool"):
        Topic.attach(plain.name, pool=pool)
    with pytest.raises(ValueError, match="no block pool"):
        plain.publisher().loan(10)
    small = topic.publisher()
    sub = topic.subscribe()
    small.publish({"small": np.ones(4)})  # below the threshold: inline
    assert sub.receive(timeout=1)["small"].sum() == 4
    for t in (topic, plain):
        sub.close()
        t.unlink()
        t.close()


def _drain(sub):  # type: ignore[no-untyped-def]
    """Everything a subscriber can still read: (messages, missed per Lagged)."""
    got, missed = [], 0
    while True:
        try:
            got.append(sub.receive(timeout=0))
        except Lagged as exc:
            missed += exc.missed
        except queue.Empty:
            return got, missed


@pytest.mark.timeout(60)
def test_overwrite_slow_subscriber_lags_and_nothing_leaks(pool: BufferPool) -> None:
    topic = Topic.create(pool=pool, capacity=1 << 11, policy="overwrite")
    base = _free(pool)
    pub = topic.publisher()
    slow, fast = topic.subscribe(), topic.subscribe()
    arr = np.zeros(16384)
    seen = []
    for i in range(300):
        arr[0] = i
        pub.publish(arr, timeout=0)  # never waits for the ring
        if i % 4 == 0:
            pub.publish({"i": i})  # inline records overwrite pooled ones too
        got, missed = _drain(fast)
        assert missed == 0
        seen.extend(int(m[0]) for m in got if isinstance(m, np.ndarray))
    assert seen == list(range(300))  # a reader that keeps up loses nothing
    got, missed = _drain(slow)
    assert missed > 0 and got  # lapped, told how many, then the live messages
    assert all(not m.flags.writeable for m in got if isinstance(m, np.ndarray))
    assert _free(pool) < base  # the ring's records still hold their blocks
    del got
    slow.close()
    fast.close()
    topic.unlink()  # gives the ring's references back
    assert _free(pool) == base
    topic.close()


def test_overwrite_lapped_claim_never_maps_a_reused_block(pool: BufferPool) -> None:
    topic = Topic.create(pool=pool, capacity=1 << 10, policy="overwrite")
    base = _free(pool)
    pub = topic.publisher()
    sub = topic.subscribe()
    pub.publish(np.full(16384, 1.0))
    frame = sub.receive_bytes(timeout=1)  # the frame, no reference taken
    for _ in range(40):  # lap it: its ring reference goes, the block is freed and reused
        pub.publish(np.full(16384, 2.0))
    with pytest.raises(Lagged):
        topic._tpool.receive(frame, True)
    _drain(sub)
    sub.close()
    topic.unlink()
    assert _free(pool) == base
    topic.close()


@pytest.mark.timeout(60)
def test_overwrite_publisher_waits_for_the_pool_at_most_its_timeout() -> None:
    pool = BufferPool.create(size=1 << 20)
    try:
        topic = Topic.create(pool=pool, capacity=1 << 12, policy="overwrite")
        pub = topic.publisher()
        held = []
        with pytest.raises(PoolExhausted):
            for _ in range(1000):  # the pool runs dry: loans held here
                held.append(pub.loan(64 << 10, timeout=0.2))
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            pub.publish(np.zeros(8 << 10), timeout=0.2)
        assert time.monotonic() - t0 < 0.2 + 2.0
        del held
        gc.collect()
        pub.publish(np.zeros(8 << 10), timeout=5)  # blocks are back: it goes
        topic.unlink()
        topic.close()
    finally:
        pool.unlink()
        pool.close()


def test_publish_many_and_pickling_carry_the_pool(pool: BufferPool) -> None:
    import pickle

    topic = Topic.create(pool=pool, zero_copy_threshold=1024)
    base = _free(pool)
    again = pickle.loads(pickle.dumps(topic))
    assert again.pool is not None and again.pool.name == pool.name
    sub = again.subscribe()
    topic.publisher().publish_many([np.full(256, float(i)) for i in range(5)], timeout=5)
    got = [sub.receive(timeout=1) for _ in range(5)]
    assert [float(a[0]) for a in got] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert _free(pool) < base  # 2 KiB arrays went by handle (threshold 1024)
    del got
    sub.close()
    again.close()
    assert _free(pool) == base
    topic.unlink()
    topic.close()


def test_a_failed_claim_gives_the_subscribers_reference_back(
    pool: BufferPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = Topic.create(pool=pool)
    base = _free(pool)
    sub = topic.subscribe()
    topic.publisher().publish(np.ones(SHAPE))

    def no_slot(data: bytes, raw: bool = False) -> None:
        raise CorruptedError("no free holder slot (as with more than 10 holders)")

    monkeypatch.setattr(topic._tpool.hook, "_claim", no_slot)
    with pytest.raises(CorruptedError):
        sub.receive(timeout=1)
    assert _free(pool) == base
    sub.close()
    topic.unlink()
    topic.close()
