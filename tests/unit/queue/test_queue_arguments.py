"""Bad arguments to rings and queues (issue 7, items 16 and 17).

* timeouts: None, finite, +inf (forever) and -inf/negative (do not wait), never
  OverflowError; NaN is ValueError;
* ``liveness``: a positive number or +inf (never revoke); zero, negative, -inf and NaN are
  ValueError;
* ``get_many(max_items)``: an integer >= 1; a huge one is capped, never allocated for (nor
  cached) in proportion;
* a closed queue raises ``Closed``, a ``ValueError`` saying "is closed", like
  ``multiprocessing.Queue``, from put, get and qsize/empty/full alike.
"""

from __future__ import annotations

import queue

import pytest

from shmipc import Closed, Queue, Ring
from shmipc.ring import GET_MANY_MAX

pytestmark = pytest.mark.timeout(60)

INF = float("inf")
NAN = float("nan")
CAP = 1 << 16


@pytest.fixture
def ring():
    r = Ring.anonymous(CAP)
    yield r
    r.close()


@pytest.fixture
def q():
    qu = Queue(capacity=CAP)
    yield qu
    qu.close()


# ---- timeouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [-INF, -1e300, -1, 0])
def test_ring_no_wait_timeouts(ring, timeout):
    with pytest.raises(queue.Empty):
        ring.get(timeout=timeout)
    with pytest.raises(queue.Empty):
        ring.get_many(4, timeout=timeout)
    with pytest.raises(queue.Empty):
        ring.peek(timeout=timeout)
    ring.put(b"x", timeout=timeout)
    ring.put_many([b"y"], timeout=timeout)
    view = ring.reserve(1, timeout=timeout)
    view[:] = b"z"
    ring.commit()
    assert ring.get_many(10, timeout=timeout) == [b"x", b"y", b"z"]


@pytest.mark.parametrize("timeout", [-INF, -1e300, -1, 0])
def test_queue_no_wait_timeouts(q, timeout):
    for call in (q.get, q.get_bytes, lambda timeout: q.get_many(4, timeout=timeout), q.peek):
        with pytest.raises(queue.Empty):
            call(timeout=timeout)
    q.put(1, timeout=timeout)
    q.put_bytes(b"b", timeout=timeout)
    q.put_many([2], timeout=timeout)
    assert q.get_many(10, timeout=timeout) == [1, b"b", 2]


def test_full_queue_negative_timeout_is_full_at_once():
    q = Queue(1, capacity=CAP)
    try:
        q.put(1)
        for timeout in (-INF, -1):
            with pytest.raises(queue.Full):
                q.put(2, timeout=timeout)
    finally:
        q.close()


def test_infinite_timeouts(ring, q):
    ring.put(b"a", timeout=INF)
    assert ring.get(timeout=INF) == b"a"
    q.put("a", timeout=INF)
    assert q.get(timeout=INF) == "a"
    q.put_many(["b"], timeout=INF)
    assert q.get_many(3, timeout=INF) == ["b"]


def test_nan_timeouts_are_value_errors(ring, q):
    for call in (
        lambda: ring.get(timeout=NAN),
        lambda: ring.put(b"x", timeout=NAN),
        lambda: ring.get_many(2, timeout=NAN),
        lambda: q.get(timeout=NAN),
        lambda: q.put(1, timeout=NAN),
        lambda: q.get_many(2, timeout=NAN),
    ):
        with pytest.raises(ValueError, match="NaN"):
            call()


# ---- liveness -------------------------------------------------------------------------------


def test_infinite_liveness_means_never_revoke(shm_name):
    r = Ring.anonymous(CAP, liveness=INF)
    r.close()
    r = Ring.create(CAP, name=shm_name, liveness=INF)
    r.close()
    q = Queue(capacity=CAP, liveness=INF)
    q.put(1)
    assert q.get() == 1
    q.close()


@pytest.mark.parametrize("liveness", [0, -1, -INF, NAN])
def test_bad_liveness_is_value_error(liveness):
    with pytest.raises(ValueError, match="liveness"):
        Ring.anonymous(CAP, liveness=liveness)
    with pytest.raises(ValueError, match="liveness"):
        Queue(capacity=CAP, liveness=liveness)


# ---- get_many bounds ------------------------------------------------------------------------


def test_ring_get_many_caps_a_huge_max_items(ring):
    n = GET_MANY_MAX + 10
    for i in range(n):
        ring.put(i.to_bytes(2, "little"))
    table = len(ring._local.meta)
    got = ring.get_many(1 << 20)
    assert len(got) == GET_MANY_MAX
    assert got[0] == b"\x00\x00"
    assert len(ring._local.meta) == table  # nothing regrown and kept for the thread
    assert len(ring.get_many_records(1 << 40)) == 10


@pytest.mark.parametrize("bad", [2.5, "3", None])
def test_get_many_max_items_must_be_an_integer(ring, q, bad):
    ring.put(b"x")
    q.put(1)
    with pytest.raises(TypeError):
        ring.get_many(bad)
    with pytest.raises(TypeError):
        q.get_many(bad)


@pytest.mark.parametrize("bad", [0, -1])
def test_get_many_max_items_must_be_positive(ring, q, bad):
    with pytest.raises(ValueError, match="max_items"):
        ring.get_many(bad)
    with pytest.raises(ValueError, match="max_items"):
        q.get_many(bad)


def test_queue_get_many_huge_max_items(q):
    q.put_many(list(range(5)))
    assert q.get_many(1 << 62) == [0, 1, 2, 3, 4]


# ---- closed ---------------------------------------------------------------------------------


def test_closed_queue_raises_value_error_is_closed():
    """multiprocessing.Queue's contract: put and get on a closed queue raise ValueError whose
    message says "is closed"; shmipc's Closed is that ValueError."""
    q = Queue(capacity=CAP)
    q.close()
    for call in (
        lambda: q.put("foo"),
        q.get,
        q.get_nowait,
        lambda: q.put_nowait(1),
        q.qsize,
        q.empty,
        q.full,
    ):
        with pytest.raises(ValueError, match="is closed") as info:
            call()
        assert isinstance(info.value, Closed)


def test_closed_ring_raises_value_error_is_closed():
    r = Ring.anonymous(CAP)
    r.close()
    with pytest.raises(ValueError, match="is closed"):
        r.put(b"x")
    with pytest.raises(ValueError, match="is closed"):
        r.qsize()
