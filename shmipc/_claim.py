"""A ring's reservations seen from its waiters: revocation and quarantine, Python side.

The protocol is one unit, csrc/claim.c (steps, memory orders and invariants at its top;
prose in docs/internals/ring.md, "Claims, revocation and quarantine"; every interleaving of
its steps checked by tests/unit/ring/test_claim_model.py). This module only decides WHEN a
waiter calls into it, from what /proc says about the threads the shared words name:

* a quarantine whose owner is dead ends (``shmipc_ring_unquarantine``: the owner writes
  nothing more, invariant I4);
* a parked reservation whose holder this handle has seen stopped (SIGSTOP) for the ring's
  whole liveness interval is revoked (``shmipc_ring_revoke``). A slow holder that runs or
  sleeps is never revoked; neither is one on an SPSC ring (the side is its role).

Invariants this side keeps: it never writes a shared word itself (every step is a native
call, each one atomic operation); it judges a holder stopped or dead only from /proc
(shmipc._proc), never from time alone; a revocation needs the SAME parked word seen stopped
for the whole interval, so a holder that resumed and parked again starts a new interval.
"""

from __future__ import annotations

import time
from typing import Any

from . import _proc
from ._native import lib

__all__ = ["Claims"]

_PARKED = lib.SHMIPC_LOCK_PARKED


class Claims:
    """One ring handle's view of that ring's reservations (not shared between handles)."""

    def __init__(self, ptr: Any, cap: int, spsc: bool) -> None:
        self._ptr = ptr  # the ring's control block; the caller keeps the mapping alive
        self._cap = cap
        self._spsc = spsc
        self._stopped_since: dict[int, int] = {}  # parked lock word -> first seen stopped

    def liveness_pass(self) -> bool:
        """End a dead owner's quarantine, revoke a reservation stopped past the liveness
        interval. True if anything was freed."""
        freed = self._end_dead_quarantine()
        return self._revoke_stopped() or freed

    def _end_dead_quarantine(self) -> bool:
        owner = lib.shmipc_load64_acquire(self._ptr, lib.SHMIPC_RING_OFF_Q_OWNER)
        if not owner or _proc.identity_alive(owner):
            return False
        return bool(lib.shmipc_ring_unquarantine(self._ptr, owner))

    def _revoke_stopped(self) -> bool:
        if self._spsc:
            return False  # no other producer to unblock, and the side is its holder's role
        p = self._ptr
        word = lib.shmipc_load64_acquire(p, lib.SHMIPC_RING_OFF_P_LOCK)
        if not word & _PARKED or not _proc.identity_stopped(word):
            self._stopped_since.clear()
            return False
        now = time.monotonic_ns()
        since = self._stopped_since.setdefault(word, now)
        if now - since < lib.shmipc_load64_relaxed(p, lib.SHMIPC_RING_OFF_LIVENESS_NS):
            return False
        # Stopped (not merely slow) for the whole interval, as far as this handle has seen.
        self._stopped_since.pop(word, None)
        return bool(lib.shmipc_ring_revoke(p, self._cap, word))

    def quarantined(self) -> int:
        """Bytes of a revoked reservation kept from reuse now (0: none). A registered claim
        that is not revoked is not counted: its holder still holds the lock."""
        p = self._ptr
        owner = lib.shmipc_load64_relaxed(p, lib.SHMIPC_RING_OFF_Q_OWNER)
        if not owner:
            return 0
        word = lib.shmipc_load64_relaxed(p, lib.SHMIPC_RING_OFF_P_LOCK)
        if (word & ~_PARKED) == owner:
            return 0  # its holder still holds the lock (parked or finishing): not revoked
        start = lib.shmipc_load64_relaxed(p, lib.SHMIPC_RING_OFF_Q_START)
        span = lib.shmipc_load64_relaxed(p, lib.SHMIPC_RING_OFF_Q_END) - start
        tail = lib.shmipc_load64_relaxed(p, lib.SHMIPC_RING_OFF_P_TAIL)
        return span if 0 < span <= self._cap and tail != start else 0
