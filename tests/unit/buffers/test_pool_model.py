"""Exhaustive interleavings of the block pool's reference protocol (csrc/pool.c, P1-P6).

A pure-Python model of one block's header (lock word, state word, holder slots, data) and of
the steps of the C calls that touch it, one model step per atomic store or CAS (the writes
inside a locked section are separate steps, so that a holder killed mid-section leaves a
half-written header behind, as it would in shared memory). Actors:

* ``S``, a sender: alloc (lock, write slot, write state, unlock), fill, put (adjust: lock,
  add transit slot, settle, unlock; then append the handle to the ring), release its loan
  (lock, drop slot, settle, unlock);
* ``R``, a receiver: take the handle off the ring, claim (lock, check generation and transit
  count, take transit, give to R, settle, unlock), read the data, release;
* ``A``, another process allocating the same block (lock, write slot, write state, unlock,
  scribble its own data, release), which must never get the block while anyone holds it;
* ``LV``, the liveness pass of some live process: take over a lock whose locker is dead
  (takeover: CAS, settle, unlock), and take back the references of a dead key (lock,
  drop, settle, unlock). LV never takes a transit reference (B4).

S, R and A may be SIGKILLed between any two steps (a stop is not scheduling the actor,
which the interleavings cover). Checked in every reachable state:

* never handed out twice: A never holds the block while S (between alloc and its release)
  or R (between a successful claim and its release) does, or a handle is in the ring;
* data intact: R reads exactly what S wrote, for the generation its handle names;
* no honest claim fails: R's claim of a handle S put never finds the block stale.

And in every terminal state (no step enabled): the lock is free; the block is free, except
for the references of handles still in the ring (a receiver killed before taking them) and
the two documented limits, found by this checker: R killed between taking the handle off
the ring and claiming it, and S killed between adding the transit reference and storing the
handle in the ring (each a window of microseconds inside one get or put call): the transit
reference then stays with the channel, no process ever frees it. Nothing else leaks.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import pytest

pytestmark = pytest.mark.timeout(300)

KILLABLE = ("S", "R", "A")


class St(NamedTuple):
    lock: str | None = None
    inuse: bool = False
    gen: int = 0
    slots: tuple = ()  # sorted ((key, count), ...) with count > 0
    data: str = ""
    ring: tuple = ()  # generations of handles in the ring
    dead: frozenset = frozenset()
    s_pc: str = "alloc_lock"
    s_gen: int = -1
    r_pc: str = "take"
    r_gen: int = -1
    r_claimed: bool = False
    a_pc: str = "alloc_lock"
    a_gen: int = -1
    lv_pc: str = "idle"
    lv_key: str = ""
    lv_n: int = 0
    failed: str = ""


def _slots(slots: tuple) -> dict:
    return dict(slots)


def _pack(d: dict) -> tuple:
    return tuple(sorted((k, n) for k, n in d.items() if n > 0))


def _settle(s: St) -> St:
    held = bool(s.slots)
    return s._replace(inuse=held)


def _free_for_alloc(s: St) -> bool:
    return s.lock is None and not s.inuse and not s.slots


# ---- each actor's enabled steps: a list of (label, next state) ---------------------------------


def sender(s: St) -> list:
    pc = s.s_pc
    if "S" in s.dead or pc == "done":
        return []
    if pc == "alloc_lock":
        if s.lock is None and not s.inuse:  # alloc's unlocked hint, then the CAS
            if s.slots:  # rechecked under the lock: not free, unlock and retry later
                return []
            return [("S.alloc_lock", s._replace(lock="S", s_pc="alloc_slot"))]
        return []
    if pc == "alloc_slot":
        return [("S.alloc_slot", s._replace(slots=(("S", 1),), s_pc="alloc_state"))]
    if pc == "alloc_state":
        g = s.gen + 1
        return [("S.alloc_state", s._replace(inuse=True, gen=g, s_gen=g, s_pc="alloc_unlock"))]
    if pc == "alloc_unlock":
        return [("S.alloc_unlock", s._replace(lock=None, s_pc="fill"))]
    if pc == "fill":
        return [("S.fill", s._replace(data=f"S{s.s_gen}", s_pc="put_lock"))]
    if pc == "put_lock":
        return [("S.put_lock", s._replace(lock="S", s_pc="put_add"))] if s.lock is None else []
    if pc == "put_add":
        if s.gen != s.s_gen or not s.slots:  # P3: stale
            return [("S.put_stale", s._replace(failed="sender's own loan went stale"))]
        d = _slots(s.slots)
        d["T"] = d.get("T", 0) + 1
        return [("S.put_add", s._replace(slots=_pack(d), s_pc="put_settle"))]
    if pc == "put_settle":
        return [("S.put_settle", _settle(s)._replace(s_pc="put_unlock"))]
    if pc == "put_unlock":
        return [("S.put_unlock", s._replace(lock=None, s_pc="put_ring"))]
    if pc == "put_ring":
        return [("S.put_ring", s._replace(ring=(*s.ring, s.s_gen), s_pc="rel_lock"))]
    if pc == "rel_lock":
        return [("S.rel_lock", s._replace(lock="S", s_pc="rel_drop"))] if s.lock is None else []
    if pc == "rel_drop":
        d = _slots(s.slots)
        d["S"] = d.get("S", 0) - 1
        return [("S.rel_drop", s._replace(slots=_pack(d), s_pc="rel_settle"))]
    if pc == "rel_settle":
        return [("S.rel_settle", _settle(s)._replace(s_pc="rel_unlock"))]
    if pc == "rel_unlock":
        return [("S.rel_unlock", s._replace(lock=None, s_pc="done"))]
    raise AssertionError(pc)


def receiver(s: St) -> list:
    pc = s.r_pc
    if "R" in s.dead or pc == "done":
        return []
    if pc == "take":
        if s.ring:
            return [("R.take", s._replace(ring=s.ring[1:], r_gen=s.ring[0], r_pc="claim_lock"))]
        if "S" in s.dead and s.s_pc in _BEFORE_RING:
            return [("R.nothing_came", s._replace(r_pc="done"))]
        return []
    if pc == "claim_lock":
        return [("R.claim_lock", s._replace(lock="R", r_pc="claim_take"))] if s.lock is None else []
    if pc == "claim_take":
        d = _slots(s.slots)
        if s.gen != s.r_gen or not s.slots or d.get("T", 0) < 1:
            return [("R.claim_stale", s._replace(failed="an honest claim found the block stale"))]
        d["T"] -= 1
        return [("R.claim_take", s._replace(slots=_pack(d), r_pc="claim_give"))]
    if pc == "claim_give":
        d = _slots(s.slots)
        d["R"] = d.get("R", 0) + 1
        return [("R.claim_give", s._replace(slots=_pack(d), r_pc="claim_settle"))]
    if pc == "claim_settle":
        return [("R.claim_settle", _settle(s)._replace(r_pc="claim_unlock"))]
    if pc == "claim_unlock":
        return [("R.claim_unlock", s._replace(lock=None, r_claimed=True, r_pc="read"))]
    if pc == "read":
        if s.data != f"S{s.r_gen}":
            return [("R.read_bad", s._replace(failed=f"receiver read {s.data!r}"))]
        return [("R.read", s._replace(r_pc="rel_lock"))]
    if pc == "rel_lock":
        return [("R.rel_lock", s._replace(lock="R", r_pc="rel_drop"))] if s.lock is None else []
    if pc == "rel_drop":
        d = _slots(s.slots)
        d["R"] = d.get("R", 0) - 1
        return [("R.rel_drop", s._replace(slots=_pack(d), r_pc="rel_settle"))]
    if pc == "rel_settle":
        return [("R.rel_settle", _settle(s)._replace(r_pc="rel_unlock"))]
    if pc == "rel_unlock":
        return [("R.rel_unlock", s._replace(lock=None, r_claimed=False, r_pc="done"))]
    raise AssertionError(pc)


_BEFORE_RING = {
    "alloc_lock",
    "alloc_slot",
    "alloc_state",
    "alloc_unlock",
    "fill",
    "put_lock",
    "put_add",
    "put_settle",
    "put_unlock",
    "put_ring",
}


def other(s: St) -> list:
    pc = s.a_pc
    if "A" in s.dead or pc == "done":
        return []
    if pc == "alloc_lock":
        return (
            [("A.alloc_lock", s._replace(lock="A", a_pc="alloc_slot"))]
            if _free_for_alloc(s)
            else []
        )
    if pc == "alloc_slot":
        return [("A.alloc_slot", s._replace(slots=(("A", 1),), a_pc="alloc_state"))]
    if pc == "alloc_state":
        g = s.gen + 1
        return [("A.alloc_state", s._replace(inuse=True, gen=g, a_gen=g, a_pc="alloc_unlock"))]
    if pc == "alloc_unlock":
        return [("A.alloc_unlock", s._replace(lock=None, a_pc="scribble"))]
    if pc == "scribble":
        return [("A.scribble", s._replace(data="A", a_pc="rel_lock"))]
    if pc == "rel_lock":
        return [("A.rel_lock", s._replace(lock="A", a_pc="rel_drop"))] if s.lock is None else []
    if pc == "rel_drop":
        d = _slots(s.slots)
        d["A"] = d.get("A", 0) - 1
        return [("A.rel_drop", s._replace(slots=_pack(d), a_pc="rel_settle"))]
    if pc == "rel_settle":
        return [("A.rel_settle", _settle(s)._replace(a_pc="rel_unlock"))]
    if pc == "rel_unlock":
        return [("A.rel_unlock", s._replace(lock=None, a_pc="done"))]
    raise AssertionError(pc)


def liveness(s: St) -> list:
    pc = s.lv_pc
    if pc == "idle":
        out = []
        if s.lock is not None and s.lock in s.dead:  # takeover: the CAS from the dead locker
            out.append(("LV.takeover", s._replace(lock="LV", lv_pc="settle")))
        if s.lock is None and s.inuse:
            for key, n in s.slots:
                if key in s.dead:  # B4: only dead process keys, never the transit key
                    out.append(
                        (f"LV.lock_{key}", s._replace(lock="LV", lv_pc="drop", lv_key=key, lv_n=n))
                    )
        return out
    if pc == "drop":
        d = _slots(s.slots)
        if d.get(s.lv_key, 0) < s.lv_n:  # P4: NOTHELD, nothing written
            return [("LV.notheld", s._replace(lv_pc="settle"))]
        d[s.lv_key] -= s.lv_n
        return [("LV.drop", s._replace(slots=_pack(d), lv_pc="settle"))]
    if pc == "settle":
        return [("LV.settle", _settle(s)._replace(lv_pc="unlock"))]
    if pc == "unlock":
        return [("LV.unlock", s._replace(lock=None, lv_pc="idle", lv_key="", lv_n=0))]
    raise AssertionError(pc)


def kills(s: St) -> list:
    out = []
    for actor, pc in (("S", s.s_pc), ("R", s.r_pc), ("A", s.a_pc)):
        if actor not in s.dead and pc != "done":
            out.append((f"kill {actor}", s._replace(dead=s.dead | {actor})))
    return out


def steps(s: St) -> list:
    if s.failed:
        return []
    return sender(s) + receiver(s) + other(s) + liveness(s) + kills(s)


# ---- checks -----------------------------------------------------------------------------------

_S_HOLDS = {
    "alloc_unlock",
    "fill",
    "put_lock",
    "put_add",
    "put_settle",
    "put_unlock",
    "put_ring",
    "rel_lock",
    "rel_drop",
}
_A_HOLDS = {"scribble", "rel_lock", "rel_drop"}


def violation(s: St) -> str:
    if s.failed:
        return s.failed
    s_holds = "S" not in s.dead and s.s_pc in _S_HOLDS
    r_holds = "R" not in s.dead and s.r_claimed
    a_holds = "A" not in s.dead and s.a_pc in _A_HOLDS and s.a_gen == s.gen
    if a_holds and (s_holds or r_holds or s.ring):
        return "A was handed the block while it was referenced"
    return ""


def terminal_problem(s: St) -> str:
    if s.lock is not None:
        return f"lock left held by {s.lock}"
    d = _slots(s.slots)
    stuck_ok = len(s.ring)
    if "R" in s.dead and s.r_pc in ("claim_lock", "claim_take"):
        stuck_ok += 1  # documented limit 1: R killed between taking the handle and claiming
    if "S" in s.dead and s.s_pc in ("put_settle", "put_unlock", "put_ring"):
        stuck_ok += 1  # documented limit 2: S killed between adding transit and the ring put
    if d.get("T", 0) > stuck_ok:
        return f"transit references {d.get('T')} for {stuck_ok} undelivered handles"
    others = {k: n for k, n in d.items() if k != "T"}
    if others:
        return f"references left with {others}"
    if s.inuse != bool(s.slots):
        return "state word disagrees with the slots"
    for actor, pc in (("S", s.s_pc), ("R", s.r_pc), ("A", s.a_pc)):
        if actor not in s.dead and pc != "done":
            return f"{actor} stuck at {pc}"
    return ""


def explore(start: St) -> tuple[int, str, list]:
    seen = {start: None}
    todo = deque([start])
    while todo:
        s = todo.popleft()
        problem = violation(s)
        nxt = steps(s)
        if not problem and not nxt:
            problem = terminal_problem(s)
        if problem:
            trace = []
            cur = s
            while seen[cur] is not None:
                prev, label = seen[cur]
                trace.append(label)
                cur = prev
            return len(seen), problem, trace[::-1]
        for label, t in nxt:
            if t not in seen:
                seen[t] = (s, label)
                todo.append(t)
    return len(seen), "", []


def test_every_interleaving_with_kills_keeps_the_invariants():
    count, problem, trace = explore(St())
    assert not problem, f"{problem} after {trace}"
    assert count > 10_000  # the model really branched (kills, takeovers, reclaims)


def test_the_checker_finds_a_reclaim_of_transit_references():
    """The same checker with a liveness pass that also takes back transit references (what
    B4 forbids) finds the lost message: the check can fail."""
    global liveness
    original = liveness

    def greedy(s: St) -> list:
        out = original(s)
        if s.lv_pc == "idle" and s.lock is None and s.inuse and "S" in s.dead:
            for key, n in s.slots:
                if key == "T":
                    out.append(
                        ("LV.lock_T", s._replace(lock="LV", lv_pc="drop", lv_key=key, lv_n=n))
                    )
        return out

    liveness = greedy
    try:
        _, problem, trace = explore(St())
    finally:
        liveness = original
    assert problem, "the checker missed a reclaimed transit reference"
    assert "LV.lock_T" in trace
