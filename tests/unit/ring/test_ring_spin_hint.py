"""A consumer whose publisher last ran on its own CPU sleeps at once instead of spinning
(csrc/ring.c, ``wait_position``; docs/internals/ring.md, "Waiting").

What shows whether a waiter spun is whether it needed waking: a consumer that spins through a
short gap between messages finds each one without sleeping, so its producer issues no futex
wake; one that sleeps at once needs a wake for nearly every message
(``RingStatistics.consumer_wakes``). A count, not a timing: the bounds are wide.
"""

from __future__ import annotations

import os
import queue
import struct
import time

import pytest
from ring_helpers import control, write_u32

from shmipc import Queue
from shmipc._native import lib
from shmipc.ring import Ring

pytestmark = pytest.mark.timeout(60)

OFF_CPU = lib.SHMIPC_RING_OFF_P_CPU
SPIN_NS = 1_000_000  # the most a ring spins: far longer than the gap below
GAP = 0.0003  # between messages: time.sleep overshoots, but stays well under the spin
MESSAGES = 200
CPUS = sorted(os.sched_getaffinity(0))


def _cpu_word(ring: Ring) -> int:
    return struct.unpack_from("<I", control(ring), OFF_CPU)[0]


def _pinned(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


def test_a_publish_records_the_cpu_it_ran_on():
    ring = Ring.anonymous(4096)
    before = os.sched_getaffinity(0)
    try:
        assert _cpu_word(ring) == 0  # nobody has published: not known
        for cpu in CPUS[:2]:
            _pinned(cpu)
            ring.put(b"x")
            assert _cpu_word(ring) == cpu + 1
            assert ring.get() == b"x"
    finally:
        os.sched_setaffinity(0, before)
        ring.close()


def _consumer_wakes(procs, producer_cpu: int, consumer_cpu: int) -> int:
    """Wakes the producer issued while a consumer waited for each of MESSAGES messages sent
    GAP apart, each side pinned to its CPU."""
    q = Queue(spin_ns=SPIN_NS)
    try:

        def produce() -> None:
            _pinned(producer_cpu)
            q.put_bytes(b"hello")  # the first message: the consumer is there
            for i in range(MESSAGES):
                time.sleep(GAP)
                q.put_bytes(i.to_bytes(4, "little"))

        _pinned(consumer_cpu)
        pid = procs.fork(produce)
        assert q.get_bytes(timeout=30) == b"hello"
        before = q.statistics().consumer_wakes
        got = [int.from_bytes(q.get_bytes(timeout=30), "little") for _ in range(MESSAGES)]
        wakes = q.statistics().consumer_wakes - before
        assert procs.join(pid) == 0
        assert got == list(range(MESSAGES))
        return wakes
    finally:
        os.sched_setaffinity(0, set(CPUS))
        q.close()


def test_a_consumer_on_its_publishers_cpu_sleeps_at_once(procs):
    """Spinning there would only keep the CPU from the producer it waits for: the consumer
    sleeps, and the producer wakes it for (nearly) every message."""
    wakes = _consumer_wakes(procs, CPUS[0], CPUS[0])
    assert wakes >= MESSAGES * 0.8, wakes


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
def test_a_consumer_on_another_cpu_spins_through_short_gaps(procs):
    """The control: the same stream across two CPUs is caught by the spin, without wakes
    (a few when another process takes the consumer's CPU for longer than the spin)."""
    wakes = _consumer_wakes(procs, CPUS[0], CPUS[1])
    assert wakes <= MESSAGES * 0.5, wakes


@pytest.mark.parametrize("word", [0, 1, 2, 0xFFFF, 0xFFFFFFFF])
def test_any_cpu_word_only_chooses_between_spinning_and_sleeping(word):
    """The word is a hint read from shared memory: whatever it holds, a wait still ends
    with its message or its timeout."""
    ring = Ring.anonymous(4096)
    try:
        write_u32(ring, OFF_CPU, word)
        start = time.monotonic()
        with pytest.raises(queue.Empty):
            ring.get(timeout=0.05)
        assert time.monotonic() - start < 2.0
        write_u32(ring, OFF_CPU, word)
        ring.put(b"y")
        assert ring.get(timeout=1) == b"y"
    finally:
        ring.close()
