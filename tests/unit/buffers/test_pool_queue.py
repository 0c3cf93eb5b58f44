"""Queue + BufferPool: large payloads by handle, loans, pickle out-of-band buffers, transit
references, hostile handles and scribbled block headers."""

from __future__ import annotations

import gc
import os
import pickle
import queue
import struct

import numpy as np
import pytest
from _procs import Child, fork_call
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgpack import ExtType, packb

from shmipc import BufferPool, CorruptedError, Queue
from shmipc import buffers as _buffers
from shmipc.buffers import _HANDLE, _TOP_HANDLE, BLOCK_HEADER, SLOTS, PoolHook

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pool():
    p = BufferPool.create(size=32 << 20)
    yield p
    p.close()


@pytest.fixture
def q(pool):
    q = Queue(pool=pool, zero_copy_threshold=1024)
    yield q
    q.close()


def in_use(p: BufferPool) -> int:
    return sum(c.in_use for c in p.statistics().classes)


def test_a_large_array_arrives_as_a_read_only_view_of_a_block(q, pool):
    x = np.arange(100_000, dtype=np.float64)
    q.put(x)
    assert in_use(pool) == 1  # copied once into a block, held in transit
    y = q.get()
    assert isinstance(y, np.ndarray) and not y.flags.writeable
    assert np.array_equal(x, y) and y.dtype == x.dtype
    with pytest.raises(ValueError):
        y[0] = 1
    del y
    assert in_use(pool) == 0


def test_small_arrays_and_objects_stay_inline(q, pool):
    q.put({"a": np.arange(10), "b": (1, 2), "c": b"xy"})
    got = q.get()
    assert got["a"].flags.writeable and list(got["a"]) == list(range(10))
    assert got["b"] == (1, 2) and got["c"] == b"xy"
    assert in_use(pool) == 0


def test_large_bytes_arrive_as_a_read_only_memoryview(q, pool):
    q.put(b"z" * 5000)
    got = q.get()
    assert isinstance(got, memoryview) and got.readonly and bytes(got) == b"z" * 5000
    del got
    assert in_use(pool) == 0


def test_lone_surrogates_with_arrays_leak_nothing(q, pool):
    q.put({"name": "\udcff", "x": np.zeros(1000)})
    got = q.get()
    assert got["name"] == "\udcff" and in_use(pool) == 1
    del got
    assert in_use(pool) == 0


def test_fortran_and_strided_arrays(q):
    f = np.asfortranarray(np.arange(6000.0).reshape(60, 100))
    q.put(f)
    g = q.get()
    assert np.array_equal(f, g) and g.flags.f_contiguous
    s = np.arange(20_000, dtype=np.int32)[::2]
    q.put(s)
    assert np.array_equal(q.get(), s)
    rec = np.zeros(1000, dtype=[("a", "<i4"), ("b", "<f8")])
    rec["a"] = np.arange(1000)
    q.put(rec)
    assert np.array_equal(q.get()["a"], np.arange(1000))


def test_loans_travel_without_a_copy(q, pool):
    arr = q.loan_array((50, 50), np.int32)
    arr[:] = 7
    q.put(arr)
    assert in_use(pool) == 1  # the sender's loan and the transit reference share one block
    got = q.get()
    assert got.shape == (50, 50) and int(got.sum()) == 7 * 2500
    del arr
    assert in_use(pool) == 1  # the receiver's view still holds it
    del got
    assert in_use(pool) == 0
    loan = q.loan(3000)
    memoryview(loan)[:4] = b"abcd"
    q.put(loan)
    loan.release()
    got = q.get()
    assert isinstance(got, memoryview) and bytes(got[:4]) == b"abcd" and len(got) == 3000


def _block_offset(pool: BufferPool, arr: np.ndarray) -> int:
    """Where ``arr``'s block lies in the pool's mapping (the same in every process)."""
    return arr.ctypes.data - pool._map.addr


def test_a_freed_block_is_the_next_loan(pool):
    """A class's first blocks are taken lowest first, so the block freed last is the next
    loan (mapped and cached already), not the next block of the class."""
    first = pool.loan_array((1 << 15,), np.float64)
    where = _block_offset(pool, first)
    del first
    second = pool.loan_array((1 << 15,), np.float64)
    assert _block_offset(pool, second) == where


def test_a_class_is_taken_warm_blocks_first_then_round():
    """The first SHMIPC_POOL_WARM blocks lowest first; the rest round from the cursor."""
    from shmipc._native import lib

    p = BufferPool.create(size=4 << 20, classes={4096: 16})
    try:
        warm = lib.SHMIPC_POOL_WARM
        held = [p.loan_array((512,), np.float64) for _ in range(16)]
        offsets = [_block_offset(p, a) for a in held]
        assert offsets == sorted(offsets) and len(set(offsets)) == 16
        # a warm block and a later one come free: the warm one goes first, whatever the
        # cursor says, then the later one
        late = warm + 3
        held[late] = held[2] = None
        again = p.loan_array((512,), np.float64)
        assert _block_offset(p, again) == offsets[2]
        later = p.loan_array((512,), np.float64)
        assert _block_offset(p, later) == offsets[late]
        held[2], held[late] = again, later
        # taking a warm block leaves the cursor where the rest's last loan put it: with
        # `late` taken last, blocks late - 1 and late + 2 free, and a warm one: the warm one,
        # then late + 2 (after the cursor), not late - 1 (a scan of the rest from its start)
        held[late - 1] = held[late + 2] = held[5] = None
        warm_again = p.loan_array((512,), np.float64)
        assert _block_offset(p, warm_again) == offsets[5]
        onward = p.loan_array((512,), np.float64)
        assert _block_offset(p, onward) == offsets[late + 2]
    finally:
        p.close()  # with views alive: the mapping stays until they go


def test_a_request_reply_pair_keeps_to_two_blocks(pool):
    """Each side frees what the other sent before it loans its reply, and at a loan the other
    side holds at most one block (the one it sent or is sending), so both keep to the class's
    two lowest blocks, in both processes, however many round trips they make."""
    ping, pong = Queue(pool=pool), Queue(pool=pool)
    items, rounds = 1 << 15, 200  # 256 KiB arrays

    def child(fd: int) -> None:
        seen = set()
        for i in range(rounds):
            got = ping.get(timeout=30)
            ok = int(got[0]) == i
            del got
            out = pong.loan_array((items,), np.float64)
            seen.add(_block_offset(pool, out))
            out[0] = i if ok else -1
            pong.put(out)
            del out
        os.write(fd, ",".join(map(str, sorted(seen))).encode())

    try:
        side = Child(child)
        seen = set()
        for i in range(rounds):
            out = ping.loan_array((items,), np.float64)
            seen.add(_block_offset(pool, out))
            out[0] = i
            ping.put(out)
            del out
            back = pong.get(timeout=30)
            assert int(back[0]) == i
            del back
        code, report = side.finish(60)
        assert code == 0
        theirs = {int(x) for x in report.decode().split(",")}
        assert len(theirs | seen) <= 2, (theirs, seen)
        assert in_use(pool) == 0
    finally:
        ping.close()
        pong.close()


def test_a_sub_array_of_a_loan_is_sent_by_offset(q):
    arr = q.loan_array(10_000, np.float32)
    arr[:] = np.arange(10_000)
    q.put(arr[5000:])
    got = q.get()
    assert got[0] == 5000 and len(got) == 5000


def test_same_array_sent_twice_is_two_messages(q, pool):
    arr = q.loan_array(1000, np.int64)
    arr[:] = 3
    q.put([arr, arr])
    a, b = q.get()
    assert a is b and int(a.sum()) == 3000  # one handle claimed once per frame
    q.put(arr)
    q.put(arr)
    x, y = q.get(), q.get()
    assert int(x.sum()) == int(y.sum()) == 3000
    del a, b, x, y, arr
    gc.collect()
    assert in_use(pool) == 0


def test_pickle_codec_sends_out_of_band_buffers_through_the_pool(pool):
    q = Queue(pool=pool, codec="pickle", zero_copy_threshold=1024)
    try:
        x = np.arange(10_000.0)
        q.put({"x": x, "small": np.arange(3), "ba": bytearray(b"q" * 4000)})
        got = q.get()
        assert np.array_equal(got["x"], x) and not got["x"].flags.writeable
        assert got["ba"] == bytearray(b"q" * 4000)
        q.put(pickle.PickleBuffer(b"w" * 2000))
        assert bytes(q.get()) == b"w" * 2000
        q.put(b"v" * 3000)
        assert bytes(q.get()) == b"v" * 3000
        del got
        gc.collect()
        assert in_use(pool) == 0
    finally:
        q.close()


def test_a_full_queue_gives_the_blocks_back(pool):
    q = Queue(maxsize=1, pool=pool, zero_copy_threshold=1024)
    try:
        q.put(np.zeros(1000))
        loan = q.loan_array(1000, np.float64)
        with pytest.raises(queue.Full):
            q.put(np.zeros(1000), timeout=0.05)  # its copied block goes back
        with pytest.raises(queue.Full):
            q.put(loan, timeout=0)  # its transit reference goes back
        assert in_use(pool) == 2  # the message waiting, and the loan
        del loan
        got = q.get()
        assert in_use(pool) == 1
        del got
        assert in_use(pool) == 0
    finally:
        q.close()


def test_an_exhausted_pool_is_queue_full(pool):
    small = BufferPool.create(size=1 << 20, classes={65536: 1})
    q = Queue(pool=small, zero_copy_threshold=1024)
    try:
        q.put(np.zeros(2000))
        with pytest.raises(queue.Full, match=str(1 << 20)):
            q.put(np.zeros(2000), timeout=0.1)
        q.get()
        gc.collect()
        q.put(np.zeros(2000), timeout=5)
    finally:
        q.close()
        small.close()


def test_payload_above_the_largest_class_goes_through_a_dedicated_segment(procs):
    small = BufferPool.create(size=1 << 20, classes={65536: 2})
    q = Queue(pool=small, zero_copy_threshold=1024, capacity=1 << 16)
    try:

        def sender() -> None:
            q.put(np.arange(50_000, dtype=np.float64))  # 400 KB: above the 64 KiB class
            q.put(b"b" * 300_000)
            q.close()
            small.close()

        assert procs.join(procs.fork(sender)) == 0  # the sender exited after put
        x = q.get(timeout=5)
        b = q.get(timeout=5)
        assert np.array_equal(x, np.arange(50_000, dtype=np.float64)) and not x.flags.writeable
        assert bytes(b) == b"b" * 300_000
        assert small.statistics().dedicated_segments == 2
        del x, b
        small.reclaim()
        assert small.statistics().dedicated_segments == 0
    finally:
        q.close()
        small.close()


def test_the_queue_pickles_with_its_pool(q, pool):
    clone = pickle.loads(pickle.dumps(q))
    try:
        assert clone.pool is pool
        clone.put(np.ones(1000))
        assert float(q.get().sum()) == 1000.0
    finally:
        clone.close()


def test_attach_with_the_pool_name(q, pool):
    other = Queue.attach(q.name, pool=pool.name)
    try:
        q.put(np.ones(2000))
        assert float(other.get().sum()) == 2000.0
    finally:
        other.close()


def test_a_receiver_keeps_its_view_after_the_sender_exited(pool):
    q = Queue(pool=pool, zero_copy_threshold=1024)
    try:

        def sender(fd: int) -> None:
            arr = q.loan_array(100_000, np.int64)
            arr[:] = np.arange(100_000)
            q.put(arr)
            del arr
            q.close()
            pool.close()

        code, _ = fork_call(sender, 30)
        assert code == 0
        got = q.get(timeout=10)
        pool.reclaim()
        assert int(got.sum()) == sum(range(100_000))
        del got
        pool.reclaim()  # the dead sender's loan reference
        assert in_use(pool) == 0
    finally:
        q.close()


# ---- hostile handles and scribbled headers --------------------------------------------------


def _handle(pool: BufferPool, name: str | None = None, **over: int) -> bytes:
    raw = (name or pool.name).encode()
    fields = dict(
        version=1,
        flavor=0,
        cls=0,
        name_len=len(raw),
        index=0,
        gen=1,
        r=0,
        offset=pool._classes[0].data,
        sub=0,
        nbytes=16,
    )
    fields.update(over)
    return _TOP_HANDLE + _HANDLE.pack(*fields.values()) + raw


def put_frame(q: Queue, frame: bytes) -> None:
    """What a hostile writer of the queue can do: store any frame as an object record."""
    q._live_ring()._put(frame, 1, -1)


@pytest.mark.parametrize("plant", ["fifo", "symlink", "other_kind", "sparse"])
def test_a_planted_file_under_the_dedicated_prefix_is_refused(q, pool, plant):
    name = pool._dedicated_prefix + "0123456789abcdef"
    path = f"/dev/shm/{name}"
    if plant == "fifo":
        os.mkfifo(path, 0o600)
    elif plant == "symlink":
        os.symlink(f"/dev/shm/{pool.name}", path)
    elif plant == "other_kind":
        import shutil

        shutil.copyfile(f"/dev/shm/{q.name}", path)
    else:
        with open(path, "wb") as f:
            f.truncate(1 << 20)
    try:
        put_frame(q, _handle(pool, name=name, cls=255, offset=4096))
        with pytest.raises(CorruptedError):
            q.get(timeout=1)  # never blocks opening a FIFO, never follows the link
    finally:
        os.unlink(path)


def test_hostile_handles_are_corrupted_errors(q, pool):
    loan = pool.loan(16)  # block 0 of class 0, generation 1: a real block to aim at
    c0 = pool._classes[0]
    cases = [
        _handle(pool, offset=c0.data + 4096),  # wrong offset for the index
        _handle(pool, offset=0),
        _handle(pool, cls=99),
        _handle(pool, index=c0.count),
        _handle(pool, nbytes=c0.size + 1),
        _handle(pool, sub=c0.size, nbytes=1),
        _handle(pool, gen=2),  # a generation that is not current
        _handle(pool),  # right block, but no transit reference in this channel
        _handle(pool, name="shmipc_someone_else"),
        _handle(pool, version=9),
        _handle(pool, name=q.name, cls=255, offset=4096),  # a dedicated block: not this pool's
        _handle(pool, name=pool.name + ".d00000000_0123456789abcdef", cls=255, offset=4096),
        _handle(pool, name="../../etc/passwd", cls=255, offset=4096),
        _TOP_HANDLE + b"\x01",
    ]
    # Each also as the msgpack ext record an array sent alone travels in (PoolHook.decode
    # reads that one without the unpacker).
    cases += [packb(ExtType(18, frame[len(_TOP_HANDLE) :])) for frame in cases[:-1]]
    for frame in cases:
        put_frame(q, frame)
        with pytest.raises(CorruptedError):
            q.get(timeout=1)
    assert in_use(pool) == 1
    loan.release()
    assert in_use(pool) == 0


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    data=st.binary(min_size=0, max_size=120),
    prefix=st.sampled_from([b"", _TOP_HANDLE, b"ext"]),
)
def test_random_handles_raise_typed_errors_only(data, prefix):
    p = _shared_pool()
    q = _shared_queue()
    put_frame(q, packb(ExtType(18, data)) if prefix == b"ext" else prefix + data)
    try:
        q.get(timeout=1)
    except (CorruptedError, TypeError, ValueError):
        pass
    assert in_use(p) == 0


_cache: dict = {}


def _shared_pool() -> BufferPool:
    if "pool" not in _cache or _cache["pool"].closed:
        _cache["pool"] = BufferPool.create(size=4 << 20)
    return _cache["pool"]


def _shared_queue() -> Queue:
    if "q" not in _cache or _cache["q"]._ring is None:
        _cache["q"] = Queue(pool=_shared_pool(), zero_copy_threshold=1024)
    return _cache["q"]


@pytest.fixture(scope="module", autouse=True)
def _close_cache():
    yield
    for key in ("q", "pool"):
        if key in _cache:
            _cache.pop(key).close()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    words=st.lists(
        st.tuples(st.integers(0, 15), st.integers(0, (1 << 64) - 1)), min_size=1, max_size=12
    ),
    which=st.integers(0, 3),
)
def test_scribbled_block_headers_raise_typed_errors_only(words, which):
    """A writer scribbles the header of a block in transit; send, receive, release and the
    liveness pass raise typed errors (or succeed), never crash or touch memory elsewhere."""
    p = BufferPool.create(size=1 << 20, classes={4096: 4})
    q = Queue(pool=p, zero_copy_threshold=1024)
    try:
        loans = [p.loan(4096) for _ in range(4)]
        for i, loan in enumerate(loans):
            memoryview(loan)[:8] = struct.pack("<Q", i)
        q.put(loans[which])
        c = p._classes[0]
        hdr = c.hdr + which * BLOCK_HEADER
        view = memoryview(p._map.mm).cast("Q")
        for idx, value in words:
            if idx != 0:  # the lock word: a scribbled lock just makes callers wait for it
                view[hdr // 8 + idx % (4 + SLOTS)] = value
        view.release()
        for op in (lambda: q.get(timeout=0.5), p.reclaim, p.statistics):
            try:
                op()
            except (CorruptedError, queue.Empty):
                pass
        for loan in loans:
            loan.release()
        p.loan(10, timeout=0).release() if in_use(p) < 4 else None
        # the other blocks' bytes were never touched
        for loan in loans:
            assert loan.released
        gc.collect()
    finally:
        q.close()
        p.close()
    assert os.path.exists("/proc/self")


def test_forwarding_a_received_view_sends_the_same_block(q, pool):
    q.put(np.arange(5000))
    got = q.get()
    q.put(got[100:])  # forwarded by handle: no new block
    assert in_use(pool) == 1
    again = q.get()
    assert again[0] == 100 and len(again) == 4900
    q.put(memoryview(got))
    mv = q.get()
    assert in_use(pool) == 1 and bytes(mv[:64]) == got[:8].tobytes()
    del got, again, mv
    assert in_use(pool) == 0


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    flavor=st.integers(0, 3),
    cls=st.one_of(st.integers(0, 3), st.just(255), st.integers(0, 255)),
    index=st.one_of(st.integers(0, 4), st.integers(0, (1 << 32) - 1)),
    gen=st.integers(0, 4),
    offset_delta=st.one_of(st.just(0), st.integers(-(1 << 20), 1 << 20)),
    sub=st.one_of(st.just(0), st.integers(0, 1 << 64 - 1)),
    nbytes=st.one_of(st.integers(0, 8192), st.integers(0, (1 << 64) - 1)),
    meta=st.one_of(
        st.just(b""),
        st.binary(max_size=40),
        st.builds(
            lambda d, s, f: __import__("msgpack").packb([d, s, f]),
            st.sampled_from(["<f8", "|u1", "<i4", "O", "V0", "<U3"]),
            st.lists(st.integers(-2, 1 << 40), max_size=4),
            st.integers(-1, 2),
        ),
    ),
    as_ext=st.booleans(),
)
def test_structured_hostile_handles_raise_typed_errors_only(
    flavor, cls, index, gen, offset_delta, sub, nbytes, meta, as_ext
):
    """Well-formed handles with hostile fields, aimed at real blocks that loans hold (none with
    a transit reference of this channel): always a typed error, never a view of a block, a
    reference gained or lost, or a byte written."""
    p = _shared_pool()
    q = _shared_queue()
    loans = [p.loan(4096) for _ in range(3)]  # blocks of class 0 with generations >= 1
    for i, loan in enumerate(loans):
        memoryview(loan)[:] = bytes([i + 1]) * 4096
    c = p._classes[min(cls, len(p._classes) - 1)] if cls != 255 else p._classes[0]
    offset = c.data + (index % max(c.count, 1)) * c.size + offset_delta
    raw = p.name.encode()
    head = _HANDLE.pack(
        1, flavor, cls, len(raw), index, gen, 0, max(offset, 0), sub % (1 << 64), nbytes
    )
    before = p.statistics()
    handle = head + raw + meta
    put_frame(q, packb(ExtType(18, handle)) if as_ext else _TOP_HANDLE + handle)
    try:
        got = q.get(timeout=1)
    except (CorruptedError, TypeError, ValueError):
        got = None
    if got is not None:  # only a handle naming a block with a transit ref can succeed: none
        raise AssertionError(f"a forged handle was accepted: {got!r}")
    for i, loan in enumerate(loans):
        assert bytes(memoryview(loan)) == bytes([i + 1]) * 4096
        loan.release()
    assert in_use(p) == 0 and p.statistics().free_bytes == before.free_bytes + 3 * 4096


def test_a_loan_of_another_handle_of_the_same_pool_travels_without_a_copy(q, pool):
    other = BufferPool.attach(pool.name)
    try:
        arr = other.loan_array(1000, np.int64)
        arr[:] = 5
        q.put(arr[10:])
        assert in_use(pool) == 1  # the loan's block, no copy
        got = q.get()
        assert len(got) == 990 and int(got.sum()) == 5 * 990
        del arr, got
        assert in_use(pool) == 0
    finally:
        other.close()


def test_a_spawned_child_gets_the_queue_and_its_pool_by_name(pool):
    import multiprocessing

    from pool_helpers import echo_sum

    ctx = multiprocessing.get_context("spawn")
    jobs = Queue(pool=pool, zero_copy_threshold=1024)
    results = Queue(pool=pool, zero_copy_threshold=1024)
    try:
        jobs.put(np.arange(10_000, dtype=np.int64))
        p = ctx.Process(target=echo_sum, args=(jobs, results))
        p.start()
        total, doubled = results.get(timeout=60)
        p.join(30)
        assert p.exitcode == 0
        assert total == sum(range(10_000)) and int(doubled[-1]) == 2 * 9_999
        del doubled
        pool.reclaim()  # the child exited holding its loan: its reference is taken back
        assert in_use(pool) == 0
    finally:
        jobs.close()
        results.close()


class _SlowHook(PoolHook):
    """The hook without its short way for a loaned array sent alone."""

    def _encode_loaned_array(self, arr, refs):  # type: ignore[no-untyped-def]
        return None


def test_the_short_way_for_loaned_arrays_makes_the_same_frames(pool):
    """PoolHook.encode's short way (an array in a loan or a received block of this pool, sent
    alone) makes byte for byte the frame of the general one, or leaves the array to it."""
    other = BufferPool.create(size=4 << 20)
    q = Queue(pool=pool, zero_copy_threshold=1024)
    fast = q._pool_hook
    slow = _SlowHook(pool, fast.codec, fast.tag, fast.threshold)
    try:
        whole = pool.loan_array((64, 128), "<f4")
        whole[:] = np.arange(64 * 128, dtype="<f4").reshape(64, 128)
        q.put(np.arange(5000, dtype="<i8"))
        received = q.get()
        foreign = other.loan_array(4096, "u1")
        arrays = {
            "whole": whole,
            "rows": whole[3:10],  # at an offset inside the block
            "flat": whole.reshape(-1),
            "columns": whole[:, ::2],  # not contiguous: copied
            "fortran": np.asfortranarray(whole),  # a private copy: copied
            "big-endian": pool.loan_array(2048, ">u2"),
            "structured": pool.loan_array(100, [("a", "<i4"), ("b", "<f8")]),
            "received": received[10:],
            "foreign": foreign,
            "private": np.ones(4096),
            "empty": pool.loan_array((0, 3), "<f8"),
        }
        copied = {"columns", "fortran", "foreign", "private"}
        for label, arr in arrays.items():
            if label in copied or label == "structured":
                # Left to the general way: copied into a new block, or (a structured dtype)
                # described by numpy's descr list.
                assert fast._encode_loaned_array(arr, 1) is None, label
                continue
            got = fast.encode(arr)
            want = slow.encode(arr)
            assert got == want and got[:3] == b"\xc7" + bytes((len(got) - 3,)) + b"\x12", label
            fast.discard(got)
            fast.discard(want)
        # Both frames decode to the array, in place where it was a loan's.
        q.put(whole[3:10])
        back = q.get()
        assert back.shape == (7, 128) and not back.flags.writeable
        assert np.array_equal(back, whole[3:10])
        assert _buffers._buffer_addr(memoryview(back)) == whole[3:10].ctypes.data
        del back, received, whole, arrays, foreign, arr
        gc.collect()
        assert in_use(pool) == 0 and in_use(other) == 0
    finally:
        q.close()
        other.close()


def test_a_known_array_metadata_with_another_length_is_corrupt(q, pool):
    """Array metadata is parsed once and kept by its bytes, with the length it implies: the
    same metadata in a handle of another length is still refused."""
    arr = pool.loan_array(512, "<f8")
    q.put(arr)
    got = q.get()  # "<f8", [512] is now known, as 4096 bytes
    assert got.shape == (512,) and _buffers._find_loan(got)._block.cls == 0
    del got
    meta = packb(["<f8", [512], 0])
    head = _HANDLE.pack(1, 1, 0, len(pool.name), 0, 1, 0, pool._classes[0].data, 0, 2048)
    put_frame(q, packb(ExtType(18, head + pool.name.encode() + meta)))
    with pytest.raises(CorruptedError, match="corrupt array handle"):
        q.get(timeout=1)
    del arr
    assert in_use(pool) == 0


def test_a_forked_child_has_a_holder_key_of_its_own(pool):
    """The holder key and pid are cached per process: a forked child computes its own (its
    loans must not be taken for its parent's, alive or dead)."""
    parent_key = _buffers._self_key()
    loan = pool.loan(100)

    def child(fd: int) -> None:
        mine = pool.loan(100)
        facts = (_buffers._self_key(), _buffers._self_pid(), mine._block.key, os.getpid())
        os.write(fd, struct.pack("<4Q", *facts))
        mine.release()

    code, out = fork_call(child)
    assert code == 0
    key, pid, block_key, real_pid = struct.unpack("<4Q", out)
    assert key != parent_key and block_key == key and pid == real_pid != os.getpid()
    assert _buffers._self_key() == parent_key and _buffers._self_pid() == os.getpid()
    loan.release()
    assert in_use(pool) == 0
