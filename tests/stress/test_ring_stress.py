"""Ring under load: N producers x M consumers in separate processes, fork and spawn.

Every message names its producer and sequence number (tests/_procs.py); each consumer reports
the stream it received, in order. Checked: every message sent arrives exactly once (no loss,
no duplicate, nothing that was never sent, no torn payload), and within one consumer's stream
each producer's sequence numbers increase. Small rings (4 KiB) force wraps, padding records
and waits on both sides; the default ring (1 MiB) with larger messages wraps a few times too.
Shapes with more processes than the 2 cores (4x3) preempt holders inside their claims.
"""

from __future__ import annotations

import pytest
from _procs import run_stress

from shmipc.ring import Ring

pytestmark = pytest.mark.timeout(90)

KIB4 = 4096
DEFAULT = 1 << 20

COPY = (("put",), ("get",))
BATCH = (("put_many",), ("get_many",))
ZEROCOPY = (("reserve",), ("peek",))
MIXED = (("put", "put_many", "reserve"), ("get", "get_many", "peek"))

# (start method, producers, consumers, capacity, (producer ops, consumer ops), messages)
CASES = [
    ("fork", 1, 1, KIB4, COPY, 80000),
    ("fork", 2, 2, DEFAULT, BATCH, 150000),
    ("fork", 4, 3, KIB4, MIXED, 100000),
    ("fork", 3, 1, KIB4, ZEROCOPY, 80000),
    ("fork", 3, 1, DEFAULT, MIXED, 100000),
    ("spawn", 1, 1, DEFAULT, ZEROCOPY, 80000),
    ("spawn", 2, 2, KIB4, MIXED, 100000),
    ("spawn", 4, 3, KIB4, BATCH, 150000),
    ("spawn", 3, 1, KIB4, COPY, 80000),
]


def _id(case) -> str:
    method, n_p, n_c, cap, ops, _ = case
    names = {COPY: "copy", BATCH: "batch", ZEROCOPY: "zerocopy", MIXED: "mixed"}
    return f"{method}-{n_p}x{n_c}-{'4KiB' if cap == KIB4 else '1MiB'}-{names[ops]}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_ring_exactly_once_in_order(case, tmp_path):
    method, n_p, n_c, cap, (p_ops, c_ops), total = case
    ring = Ring.create(cap)  # named: spawned children attach it by name
    try:
        out = run_stress("ring", ring, method, n_p, n_c, p_ops, c_ops, total, str(tmp_path), 7)
        assert not out["problems"], out["problems"]
        stats = ring.statistics()
        # + the stop messages (a consumer that got two in one batch puts one back)
        assert stats.messages_in == stats.messages_out >= total + n_c
        assert stats.depth == 0 and stats.depth_bytes == 0
        assert stats.abandoned == 0 and stats.consumers_recovered == 0
        if cap == KIB4:
            assert stats.producer_waits > 0  # the small ring really filled up
        assert stats.bytes_in == stats.bytes_out
        print(f"{_id(case)}: {out['elapsed']:.2f} s, {stats}")
    finally:
        ring.close()
