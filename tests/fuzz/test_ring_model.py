"""Each ring (many-producer/many-consumer, and SPSC) under a hypothesis state machine, against
a model.

The model is a deque of (type, payload, end position) plus the producer's and consumer's
positions, so that room is exact: a record of n bytes occupies align8(8 + n) bytes, preceded
by a padding record when it would straddle the end of the data area (docs/internals/ring.md).
Every call is non-blocking, so Full and Empty must be exactly the model's: Empty iff the model
is empty; Full iff the record (with its padding) does not fit between tail and head + capacity,
or the message limit is reached. The statistics must match the model after every step.
"""

from __future__ import annotations

import queue
from collections import deque
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from shmipc import MessageTooLarge
from shmipc.ring import Ring

pytestmark = pytest.mark.timeout(120)

TYPES = st.one_of(st.sampled_from([0, 1, 2, 0xFFFF]), st.integers(0, 0xFFFF))


def rec_size(n: int) -> int:
    return (8 + n + 7) & ~7


class RingModel(RuleBasedStateMachine):
    ring: Ring | None

    def __init__(self) -> None:
        super().__init__()
        self.ring = None
        self.model: deque[tuple[int, bytes, int]] = deque()
        self.tail = self.head = 0
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0
        self.seq = 0

    # ---- helpers -------------------------------------------------------------------------

    @property
    def cap(self) -> int:
        assert self.ring is not None
        return self.ring.capacity

    def payload(self, n: int) -> bytes:
        self.seq += 1
        stamp = self.seq.to_bytes(4, "little")
        return (stamp * (n // 4 + 1))[:n]

    def place(self, pos: int, n: int) -> int | None:
        """The end position of an n-byte record put at ``pos``, or None if it has no room."""
        rec = rec_size(n)
        idx = pos % self.cap
        pad = self.cap - idx if idx + rec > self.cap else 0
        end = pos + pad + rec
        if end - self.head > self.cap:
            return None
        return end

    def count_full(self, extra: int = 0) -> bool:
        limit = self.max_count
        return bool(limit) and len(self.model) + extra >= limit

    def size(self, data: st.DataObject, too_large_one_in: int = 5) -> int:
        """A payload size: small, near max_payload, anything up to it, and now and then
        (one draw in ``too_large_one_in``) beyond it."""
        assert self.ring is not None
        mp = self.ring.max_payload
        if data.draw(st.integers(1, too_large_one_in), label="too large?") == 1:
            return data.draw(st.integers(mp + 1, mp + 64), label="size")
        return data.draw(
            st.one_of(
                st.integers(0, 24),
                st.integers(max(0, mp - 16), mp),
                st.integers(0, mp),
            ),
            label="size",
        )

    def stored(self, rtype: int, data: bytes, end: int) -> None:
        self.model.append((rtype, data, end))
        self.tail = end
        self.msgs_in += 1
        self.bytes_in += len(data)

    def removed(self) -> tuple[int, bytes]:
        rtype, data, end = self.model.popleft()
        self.head = end
        self.msgs_out += 1
        self.bytes_out += len(data)
        return rtype, data

    # ---- rules ---------------------------------------------------------------------------

    @initialize(
        capacity=st.sampled_from([128, 256, 512, 1024, 2048, 4096]),
        max_count=st.sampled_from([0, 0, 0, 1, 2, 5]),
        spsc=st.booleans(),
    )
    def make(self, capacity: int, max_count: int, spsc: bool) -> None:
        # Both rings: many-producer/many-consumer, and SPSC (this one thread holds both
        # sides' roles from its first call on).
        self.ring = Ring.anonymous(capacity, max_count=max_count, spsc=spsc)
        self.max_count = max_count
        event(f"spsc={spsc}")

    @rule(data=st.data(), rtype=TYPES)
    def put(self, data, rtype):
        assert self.ring is not None
        n = self.size(data)
        p = self.payload(n)
        if n > self.ring.max_payload:
            with pytest.raises(MessageTooLarge):
                self.ring.put(p, type=rtype, block=False)
            return
        end = self.place(self.tail, n)
        if end is None or self.count_full():
            event("put: Full by count" if end is not None else "put: Full by bytes")
            with pytest.raises(queue.Full):
                self.ring.put(p, type=rtype, block=False)
            return
        if end - self.tail > rec_size(n):
            event("put: padded")
        self.ring.put(p, type=rtype, block=False)
        self.stored(rtype, p, end)

    @rule()
    def get(self):
        assert self.ring is not None
        if not self.model:
            with pytest.raises(queue.Empty):
                self.ring.get_record(block=False)
            return
        rtype, payload = self.ring.get_record(block=False)
        assert (rtype, bytes(payload)) == self.removed()

    @rule(data=st.data(), rtype=TYPES, count=st.integers(1, 8))
    def put_many(self, data, rtype, count):
        assert self.ring is not None
        items = [self.payload(self.size(data, too_large_one_in=30)) for _ in range(count)]
        expect: type[BaseException] | None = None
        pos = self.tail
        accepted = []
        for p in items:
            if len(p) > self.ring.max_payload:
                expect = MessageTooLarge
                break
            end = self.place(pos, len(p))
            if end is None or self.count_full(len(accepted)):
                expect = queue.Full
                break
            accepted.append((p, end))
            pos = end
        event(f"put_many: {expect.__name__ if expect else 'all'} after {len(accepted)}")
        if expect is None:
            self.ring.put_many(items, type=rtype, block=False)
        else:
            with pytest.raises(expect):
                self.ring.put_many(items, type=rtype, block=False)
        for p, end in accepted:  # the ones before the refusal are stored, in order
            self.stored(rtype, p, end)

    @rule(max_items=st.integers(1, 10))
    def get_many(self, max_items):
        assert self.ring is not None
        if not self.model:
            with pytest.raises(queue.Empty):
                self.ring.get_many_records(max_items, block=False)
            return
        got = [(t, bytes(p)) for t, p in self.ring.get_many_records(max_items, block=False)]
        event("get_many: partial" if len(got) < len(self.model) else "get_many: all")
        assert len(got) == min(max_items, len(self.model))
        assert got == [self.removed() for _ in got]

    @rule(data=st.data(), rtype=TYPES, commit=st.booleans())
    def reserve(self, data, rtype, commit):
        assert self.ring is not None
        n = self.size(data)
        if n > self.ring.max_payload:
            with pytest.raises(MessageTooLarge):
                self.ring.reserve(n, type=rtype, block=False)
            return
        end = self.place(self.tail, n)
        if end is None or self.count_full():
            with pytest.raises(queue.Full):
                self.ring.reserve(n, type=rtype, block=False)
            return
        view = self.ring.reserve(n, type=rtype, block=False)
        assert len(view) == n and not view.readonly
        p = self.payload(n)
        view[:] = p
        with pytest.raises(RuntimeError):
            self.ring.put(b"", block=False)  # this thread holds the producer side
        if commit:
            self.ring.commit()
            self.stored(rtype, p, end)
        else:
            self.ring.abort()
        with pytest.raises(ValueError):
            view[0:0] = b""  # the view was released
        with pytest.raises(RuntimeError):
            self.ring.commit()

    @rule()
    def peek_release(self):
        assert self.ring is not None
        if not self.model:
            with pytest.raises(queue.Empty):
                self.ring.peek(block=False)
            return
        view = self.ring.peek(block=False)
        rtype, p, _ = self.model[0]
        assert bytes(view) == p and self.ring.peeked_type == rtype and view.readonly
        with pytest.raises(RuntimeError):
            self.ring.get(block=False)  # this thread holds the consumer side
        self.ring.release()
        assert self.removed() == (rtype, p)
        with pytest.raises(ValueError):
            bytes(view)

    @precondition(lambda self: self.ring is not None)
    @invariant()
    def statistics_match(self):
        assert self.ring is not None
        st_ = self.ring.statistics()
        assert st_.capacity == self.cap
        assert (st_.messages_in, st_.messages_out) == (self.msgs_in, self.msgs_out)
        assert (st_.bytes_in, st_.bytes_out) == (self.bytes_in, self.bytes_out)
        assert st_.depth == len(self.model) == self.ring.qsize()
        assert st_.depth_bytes == self.tail - self.head
        assert st_.consumer_waits == 0  # nothing here ever waits
        assert st_.consumer_wakes == st_.producer_wakes == 0
        assert st_.abandoned == st_.consumers_recovered == 0

    def teardown(self) -> None:
        # Drop the ring by reference count, here: a ring left to the cyclic garbage collector
        # can crash the interpreter (see tests/unit/ring: the reference-cycle test).
        if self.ring is not None:
            self.ring.close()
        self.ring = None


RingModel.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=50,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_ring_model = RingModel.TestCase
