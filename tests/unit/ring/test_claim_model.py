"""Exhaustive interleavings of the claim/park/revoke/quarantine protocol (csrc/claim.c).

A pure-Python model of the protocol's atomic steps, named as in csrc/claim.c (one model
step per atomic operation on a shared word; plain stores to words only the producer lock's
holder reads ride with the step they belong to). Actors:

* ``H``, a holder: reserve (lock, find_room, place, register_read, register, note, park),
  then commit or abort (unpark, then unregister + publish/unlock, or end_quarantine if revoked);
* ``G``, a second holder doing the same (in the bounds that have it): it may reserve while
  H's quarantine stands (then it does not register: an ordinary lock holder), or register
  once the quarantine is gone, so the search covers ``register_read`` + ``register`` racing
  every step that clears Q;
* ``R1``, ``R2``, two revokers: observe (a parked word whose holder is stopped: what the
  Python liveness pass decides), revoke_take, revoke_mark, revoke_publish, revoke_release;
* ``P``, a producer putting records (lock, find_room, place, publish, unlock) until it has
  lapped the ring;
* ``LV``, the liveness pass of any waiter: steal (a lock word naming a dead thread), then
  recover (shmipc_claim_recover's decision: recover_unregister, or recover_finish, which
  is revoke_mark + revoke_publish of a dead revoker's revocation), recover_abandon
  (recover_producer's bookkeeping), release; and unquarantine (a dead owner);
* ``K``, a consumer that frees published records and reads their headers.

Between any two steps, any of H, G, R1, R2, P may be SIGKILLed, and H and G may be
SIGSTOPped and continued (a stop of any other actor is just not scheduling it, which the
interleavings already cover; LV and K stand for "some live waiter" and "some live
consumer").

Checked in EVERY reachable state (breadth-first, memoised):

* no space handed out twice: while a holder may still write its claim (alive, between place
  and its unpark), no record of P that is claimed or unconsumed occupies the same bytes,
  nor the other holder's claim while that one may still write it;
* nothing torn: the consumer never reads H's header unless H itself published it, nor a
  header left from another position;
* no step reports the ring corrupt (the model never scribbles);
* I1 of csrc/claim.c: while a holder lives and the lock word is parked for it, Q names it
  and its claim.

And from every reachable state with every stopped actor continued, over all runs of the
living actors with no further kill or stop: every run ends (no trap cycle), and every end
has the quarantine drained, the lock free, P done (producers made progress past laps) and
the holders done. The same checker run on the OLD protocol (layout 3) finds the race of
issue 7 item 3 (a counterexample trace) and the space a killed revoker handed out again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest

HOLDERS = ("H", "G")
KILLABLE = (*HOLDERS, "R1", "R2", "P")
MAY_WRITE = ("register_read", "register", "note", "park", "unpark")  # H: place..unpark
# H and P pcs at which they hold the producer lock (their own view: H parked or not)
HOLDS = {
    "find_room",
    "place",
    "register_read",
    "register",
    "note",
    "park",
    "unpark",
    "unregister",
    "publish",
    "unlock",
    "wait_unlock",
}


class S(NamedTuple):
    """One state: the shared words, then each actor's program counter and locals."""

    lock: tuple | None = None  # (identity, parked) or None when free
    q: str | None = None  # quarantine owner (Q_OWNER)
    qs: int = -1  # Q_START
    qe: int = -1  # Q_END
    tail: int = 0
    head: int = 0
    claim: int | None = None  # P_CLAIM
    recs: tuple = ()  # ((unit index, position, kind), ...) headers in the data area
    p_live: tuple = ()  # positions of P's records claimed and not yet consumed
    # per holder (H, G): program counter, where its claim starts, whether it published it
    h_pc: tuple = ("lock", "done")
    h_pos: tuple = (-1, -1)
    h_published: tuple = (False, False)
    h_outcome: tuple = ("", "")
    torn: bool = False  # the consumer read a header nobody published whole
    r_pc: tuple = ("observe", "observe")
    r_obs: tuple = (None, None)
    p_pc: str = "lock"
    p_done: int = 0
    lv_pc: str = "idle"
    lv_obs: tuple | None = None
    alive: frozenset = frozenset(KILLABLE)
    stopped: frozenset = frozenset()


def replace(s: S, **changes: Any) -> S:
    return s._replace(**changes)


def _put(t: tuple, i: int, v: Any) -> tuple:
    """Tuple t with item i replaced by v."""
    return (*t[:i], v, *t[i + 1 :])


class Model:
    """The protocol's steps. ``old=True`` models layout 3 (before issue 7)."""

    def __init__(
        self,
        *,
        cap: int,
        puts: int,
        ends: str = "commit",
        old: bool = False,
        revokers: int = 2,
        holders: int = 1,
        mutant: str = "",
    ) -> None:
        self.mutant = mutant  # a deliberate bug: test_the_checker_catches_each_mutant
        self.cap = cap
        self.puts = puts
        self.ends = ends
        self.old = old
        self.revokers = revokers
        self.holders = holders

    # ---- helpers -----------------------------------------------------------------------------

    def header_at(self, s: S, unit: int) -> tuple | None:
        for u, pos, kind in s.recs:
            if u == unit:
                return pos, kind
        return None

    def write_header(self, s: S, pos: int, kind: str) -> tuple:
        unit = pos % self.cap
        return tuple(sorted([r for r in s.recs if r[0] != unit] + [(unit, pos, kind)]))

    def room(self, s: S) -> str:
        """find_room for one unit at the tail: "ok", "full" or "corrupt" (shmipc_claim_room)."""
        t = s.tail
        if t - s.head + 1 > self.cap:
            return "full"
        if s.q is not None and self.mutant != "no_room_check":
            if self.old:
                if s.qs > t or t - s.qs > self.cap:
                    return "corrupt"
            elif not (s.qs < s.qe <= t and t - s.qs <= self.cap):
                return "corrupt"
            if t + 1 - s.qs > self.cap:
                return "full"
        return "ok"

    def dead(self, s: S, who: str) -> bool:
        return who in KILLABLE and who not in s.alive

    # ---- H and G: reserve, then commit or abort ----------------------------------------------

    def holder(self, s: S, i: int) -> Iterator[tuple[str, S]]:
        me, pc, pos = HOLDERS[i], s.h_pc[i], s.h_pos[i]

        def go(st: S, nxt: str, **mine: Any) -> S:
            """st with this holder's pc (and any of pos, published, outcome) changed."""
            out = {"h_pc": nxt, **{f"h_{k}": v for k, v in mine.items()}}
            return replace(st, **{k: _put(getattr(st, k), i, v) for k, v in out.items()})

        if pc == "lock" and s.lock is None:
            yield "lock", go(replace(s, lock=(me, False)), "find_room")
        elif pc == "find_room":
            r = self.room(s)
            if r == "corrupt":
                yield "find_room", go(s, "CORRUPT")
            elif r == "full":
                yield "find_room", go(s, "wait_unlock")
            else:
                yield "find_room", go(replace(s, claim=s.tail), "place", pos=s.tail)
        elif pc == "wait_unlock":
            yield "unlock", go(replace(s, lock=None), "wait")
        elif pc == "wait" and self.room(s) != "full":
            yield "retry", go(s, "lock")
        elif pc == "place":
            recs = self.write_header(s, pos, me)
            yield "place", go(replace(s, recs=recs), "park" if self.old else "register_read")
        elif pc == "register_read":  # relaxed load of Q: a quarantine stands, or none
            blind = self.mutant == "register_blind"  # a store without the load
            yield "register_read", go(s, "register" if s.q is None or blind else "unpark")
        elif pc == "register":  # relaxed store Q = me (it read 0, under the lock)
            nxt = "park" if self.mutant == "park_before_note" else "note"
            yield "register", go(replace(s, q=me), nxt)
        elif pc == "note":
            nxt = "unpark" if self.mutant == "park_before_note" else "park"
            yield "note", go(replace(s, qs=pos, qe=pos + 1), nxt)
        elif pc == "park":  # release store of me|PARKED
            nxt = "note" if self.mutant == "park_before_note" else "unpark"
            yield "park", go(replace(s, lock=(me, True)), nxt)
        elif pc == "unpark":  # CAS me|PARKED -> me
            if s.lock == (me, False):  # never parked (not registered): ours all along
                yield "unpark", go(s, "publish")
            elif s.lock == (me, True):
                nxt = "publish" if self.old else "unregister"
                yield "unpark", go(replace(s, lock=(me, False)), nxt)
            else:
                yield "unpark", go(s, "end_quarantine")
        elif pc == "unregister":  # Q = 0 under the lock
            yield "unregister", go(replace(s, q=None), "publish")
        elif pc == "publish":
            if self.ends == "commit":  # release store of the tail past the record
                yield "publish", go(replace(s, tail=pos + 1), "unlock", published=True)
            else:
                yield "abort", go(s, "unlock")
        elif pc == "unlock":
            yield "unlock", go(replace(s, claim=None, lock=None), "done", outcome=self.ends)
        elif pc == "end_quarantine":  # CAS Q me -> 0
            ended = s.q == me and self.mutant != "no_end_quarantine"
            yield (
                "end_quarantine",
                go(replace(s, q=None if ended else s.q), "done", outcome="revoked"),
            )

    # ---- revokers --------------------------------------------------------------------------

    def revoker(self, s: S, i: int) -> Iterator[tuple[str, S]]:
        me = f"R{i + 1}"
        pc = s.r_pc[i]

        def go(st: S, nxt: str, obs: object = ...) -> S:
            pcs = list(st.r_pc)
            pcs[i] = nxt
            st = replace(st, r_pc=tuple(pcs))
            if nxt == "done":
                obs = None
            if obs is not ...:
                o = list(st.r_obs)
                o[i] = obs
                st = replace(st, r_obs=tuple(o))
            return st

        if pc == "observe":
            yield "give_up", go(s, "done")
            w = s.lock
            if w is not None and w[1] and w[0] in s.stopped and (not self.old or s.q is None):
                yield "observe", go(s, "revoke_take", w)
        elif pc == "revoke_take":  # CAS observed -> me
            if s.lock == s.r_obs[i]:
                yield "revoke_take", go(replace(s, lock=(me, False)), "revoke_mark")
            else:
                yield "revoke_take", go(s, "done")
        elif pc == "revoke_mark":
            yield from self.mark(s, lambda st, nxt: go(st, nxt), "revoke")
        elif pc == "note":  # old: the quarantine bounds, then the owner
            yield "note", go(replace(s, qs=s.claim, qe=s.claim + 1), "set_owner")
        elif pc == "set_owner":
            yield "set_owner", go(replace(s, q=s.r_obs[i][0]), "revoke_publish")
        elif pc == "revoke_publish":  # release store of the tail past the REVOKED record
            end = s.claim + 1 if self.old else s.qe
            yield "revoke_publish", go(replace(s, tail=end), "revoke_release")
        elif pc == "revoke_release":
            yield "revoke_release", go(replace(s, claim=None, lock=None), "done")

    def mark(self, s: S, go: Callable[[S, str], S], who: str) -> Iterator[tuple[str, S]]:
        """revoke_mark: check the bounds, write the REVOKED header (shared with recover)."""
        if self.old:
            ok = s.claim == s.tail
            pos = s.claim
        else:
            ok = s.qs == s.tail == s.claim and s.qe == s.qs + 1
            pos = s.qs
        if not ok:
            yield "revoke_mark", go(s, "CORRUPT")
            return
        nxt = "note" if self.old and who == "revoke" else "revoke_publish"
        yield "revoke_mark", go(replace(s, recs=self.write_header(s, pos, "REV")), nxt)

    # ---- P: puts ---------------------------------------------------------------------------

    def producer(self, s: S) -> Iterator[tuple[str, S]]:
        pc = s.p_pc
        if pc == "lock" and s.p_done < self.puts and s.lock is None:
            yield "lock", replace(s, lock=("P", False), p_pc="find_room")
        elif pc == "find_room":
            r = self.room(s)
            if r == "corrupt":
                yield "find_room", replace(s, p_pc="CORRUPT")
            elif r == "full":
                yield "find_room", replace(s, p_pc="wait_unlock")
            else:  # claim + place: plain stores under the lock
                yield (
                    "find_room",
                    replace(
                        s,
                        claim=s.tail,
                        p_live=(*s.p_live, s.tail),
                        recs=self.write_header(s, s.tail, "P"),
                        p_pc="publish",
                    ),
                )
        elif pc == "wait_unlock":
            yield "unlock", replace(s, lock=None, p_pc="wait")
        elif pc == "wait" and self.room(s) != "full":
            yield "retry", replace(s, p_pc="lock")
        elif pc == "publish":
            yield "publish", replace(s, tail=s.tail + 1, p_pc="unlock")
        elif pc == "unlock":
            yield "unlock", replace(s, claim=None, lock=None, p_pc="lock", p_done=s.p_done + 1)

    # ---- LV: the liveness pass -------------------------------------------------------------

    def liveness(self, s: S) -> Iterator[tuple[str, S]]:
        pc = s.lv_pc

        def go(st: S, nxt: str) -> S:
            return replace(st, lv_pc=nxt)

        if pc == "idle":
            if s.lock is not None and self.dead(s, s.lock[0]):  # CAS observed -> LV
                st = replace(s, lock=("LV", False), lv_obs=s.lock)
                yield "steal", go(st, "recover")
            if s.q is not None and self.dead(s, s.q):  # CAS owner -> 0
                yield "unquarantine", replace(s, q=None)
        elif pc == "recover":  # shmipc_claim_recover's decision (reads Q, claim, tail, QS)
            if self.old or s.q is None:
                yield "recover", go(s, "recover_abandon")
            elif s.q == s.lv_obs[0]:
                yield "recover", go(s, "recover_unregister")
            elif s.claim == s.tail == s.qs and self.mutant != "no_recover_finish":
                yield "recover", go(s, "revoke_mark")
            else:
                yield "recover", go(s, "recover_abandon")
        elif pc == "recover_unregister":  # end_quarantine: CAS Q observed -> 0
            q = None if s.q == s.lv_obs[0] else s.q
            yield "recover_unregister", go(replace(s, q=q), "recover_abandon")
        elif pc == "revoke_mark":
            yield from self.mark(s, go, "recover")
        elif pc == "revoke_publish":
            yield "revoke_publish", go(replace(s, tail=s.qe), "recover_abandon")
        elif pc == "recover_abandon":  # published or abandoned: the claim is cleared
            live = s.p_live
            if s.claim == s.tail:  # abandoned: a dead P's unpublished record is gone
                live = tuple(p for p in live if p != s.claim)
            yield "recover_abandon", go(replace(s, claim=None, p_live=live), "release")
        elif pc == "release":
            yield "release", go(replace(s, lock=None, lv_obs=None), "idle")

    # ---- K: the consumer -------------------------------------------------------------------

    def consumer(self, s: S) -> Iterator[tuple[str, S]]:
        if s.head < s.tail:
            h = s.head
            hdr = self.header_at(s, h % self.cap)
            unpublished = hdr is not None and any(
                hdr[1] == who and not s.h_published[i] for i, who in enumerate(HOLDERS)
            )
            if hdr is None or hdr[0] != h or unpublished:
                yield "consume", replace(s, head=h + 1, torn=True)  # flagged below
                return
            live = tuple(p for p in s.p_live if p != h)
            yield "consume", replace(s, head=h + 1, p_live=live)

    # ---- the transition relation ------------------------------------------------------------

    def steps(self, s: S, calm: bool = False) -> Iterator[tuple[str, S]]:
        for i, who in enumerate(HOLDERS):
            if who in s.alive and who not in s.stopped:
                for name, t in self.holder(s, i):
                    yield f"{who}.{name}", t
        for i in range(self.revokers):
            if f"R{i + 1}" in s.alive:
                for name, t in self.revoker(s, i):
                    yield f"R{i + 1}.{name}", t
        if "P" in s.alive:
            for name, t in self.producer(s):
                yield f"P.{name}", t
        for name, t in self.liveness(s):
            yield f"LV.{name}", t
        for name, t in self.consumer(s):
            yield f"K.{name}", t
        if calm:
            return
        for who in KILLABLE:
            if who in s.alive and not self.finished(s, who):
                yield f"kill {who}", replace(s, alive=s.alive - {who})
        for i, who in enumerate(HOLDERS):
            if who not in s.alive:
                continue
            if who in s.stopped:
                yield f"SIGCONT {who}", replace(s, stopped=s.stopped - {who})
            elif s.h_pc[i] != "done":
                yield f"SIGSTOP {who}", replace(s, stopped=s.stopped | {who})

    def finished(self, s: S, who: str) -> bool:
        if who in HOLDERS:
            return s.h_pc[HOLDERS.index(who)] == "done"
        if who == "P":
            return s.p_done == self.puts
        return s.r_pc[int(who[1]) - 1] == "done"

    def initial(self) -> S:
        r_pc = tuple("observe" if i < self.revokers else "done" for i in range(2))
        h_pc = tuple("lock" if i < self.holders else "done" for i in range(2))
        return S(r_pc=r_pc, h_pc=h_pc)

    # ---- the properties ----------------------------------------------------------------------

    def violation(self, s: S) -> str | None:
        """The safety property a state breaks, if any."""
        if s.torn:
            return "torn: the consumer read a header nobody published whole"
        if "CORRUPT" in (*s.h_pc, s.p_pc, s.lv_pc, *s.r_pc):
            return "a step found the (unscribbled) ring corrupt"
        # I1, checked on the intact protocol (a mutant must fail by what it does, not by it)
        i1 = not self.old and not self.mutant
        writing = [
            (who, s.h_pos[i] % self.cap)
            for i, who in enumerate(HOLDERS)
            if who in s.alive and s.h_pc[i] in MAY_WRITE
        ]
        for i, who in enumerate(HOLDERS):
            parked = s.lock == (who, True) and who in s.alive
            if i1 and parked and not (s.q == who and s.qs == s.h_pos[i]):
                return f"I1 broken: {who} is parked but not registered with its claim"
        for who, unit in writing:
            if any(p % self.cap == unit for p in s.p_live):
                return f"space handed out twice: P's record lies where {who} may still write"
        if len(writing) == 2 and writing[0][1] == writing[1][1]:
            return "space handed out twice: H and G may both still write the same bytes"
        return None

    def settled_ok(self, s: S) -> str | None:
        """What is wrong with a state where no calm step is left, if anything."""
        if s.q is not None:
            return f"wedge: the quarantine of {s.q} never drains"
        if s.lock is not None:
            return f"wedge: the producer lock stays with {s.lock}"
        if "P" in s.alive and s.p_done < self.puts:
            return f"wedge: P is blocked after {s.p_done} of {self.puts} puts"
        for i, who in enumerate(HOLDERS):
            if who in s.alive and s.h_pc[i] != "done":
                return f"wedge: {who} is stuck at {s.h_pc[i]}"
        return None


@dataclass
class Result:
    states: int
    calm_states: int
    failure: str | None
    trace: list[str]


def check(model: Model) -> Result:
    """Every interleaving (BFS, so a counterexample is a shortest one)."""
    init = model.initial()
    parent: dict[S, tuple[S | None, str]] = {init: (None, "")}
    todo = deque([init])

    def trace(s: S) -> list[str]:
        out = []
        while parent[s][0] is not None:
            prev, step = parent[s]
            out.append(step)
            s = prev  # type: ignore[assignment]
        return out[::-1]

    while todo:
        s = todo.popleft()
        bad = model.violation(s)
        if bad:
            return Result(len(parent), 0, bad, trace(s))
        for name, t in model.steps(s):
            if t not in parent:
                parent[t] = (s, name)
                todo.append(t)
    # Liveness: from every state with H continued, the living actors' calm runs all end
    # well (and can always end: no state from which no end is reachable).
    starts = {replace(s, stopped=frozenset()): s for s in parent}
    succ: dict[S, list[tuple[str, S]]] = {}
    calm_parent: dict[S, tuple[S | None, str]] = {c: (None, "") for c in starts}
    todo = deque(starts)
    while todo:
        s = todo.popleft()
        bad = model.violation(s)
        nxt = list(model.steps(s, calm=True))
        succ[s] = nxt
        if bad is None and not nxt:
            bad = model.settled_ok(s)
        if bad:
            tail: list[str] = []
            cur: S | None = s
            while cur is not None and calm_parent[cur][0] is not None:
                prev, step = calm_parent[cur]
                tail.append(step)
                cur = prev
            assert cur is not None
            stopped = sorted(starts[cur].stopped)
            full = trace(starts[cur]) + [f"SIGCONT {who}" for who in stopped]
            return Result(len(parent), len(succ), bad, full + tail[::-1])
        for _, t in nxt:
            if t not in calm_parent:
                calm_parent[t] = (s, _)
                todo.append(t)
    # No trap: every calm state reaches a settled one (reverse reachability).
    pred: dict[S, list[S]] = {s: [] for s in succ}
    for s, nxt in succ.items():
        for _, t in nxt:
            pred[t].append(s)
    reach = deque(s for s, nxt in succ.items() if not nxt)
    seen = set(reach)
    while reach:
        for p in pred[reach.popleft()]:
            if p not in seen:
                seen.add(p)
                reach.append(p)
    trapped = [s for s in succ if s not in seen]
    if trapped:
        return Result(len(parent), len(succ), "livelock: runs that never end", [])
    return Result(len(parent), len(succ), None, [])


# Bounds: a ring of 2 or 3 record slots, P putting until it has lapped it; with two revokers
# the smaller bound (the state count grows ~6x with the second revoker). ~20-40 s each; the
# second holder's, 1.2 million states, ~60 s.
BOUNDS = [
    pytest.param(2, 2, 2, 1, id="cap2-puts2-two-revokers"),
    pytest.param(3, 4, 1, 1, id="cap3-puts4-one-revoker"),
    pytest.param(2, 1, 1, 2, id="cap2-puts1-two-holders"),
]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("ends", ["commit", "abort"])
@pytest.mark.parametrize(("cap", "puts", "revokers", "holders"), BOUNDS)
def test_claim_protocol_keeps_its_invariants_in_every_interleaving(
    cap, puts, revokers, holders, ends
):
    """csrc/claim.c's protocol: every interleaving, any actor killed or stopped between any
    two steps: nothing handed out twice, nothing torn, the quarantine always drains and P
    laps the ring."""
    model = Model(cap=cap, puts=puts, ends=ends, revokers=revokers, holders=holders)
    result = check(model)
    print(f"{result.states} states, {result.calm_states} calm states")
    assert result.failure is None, f"{result.failure}\n  " + "\n  ".join(result.trace)
    assert result.states > 10_000  # the search did explore


MUTANTS = {
    # the holder parks before it notes its bounds: a revoker sees stale bounds (I1)
    "park_before_note": "a step found the (unscribbled) ring corrupt",
    # a failed unpark does not end the holder's quarantine (I4)
    "no_end_quarantine": "wedge: the quarantine",
    # the taker-over of a dead revoker abandons the claim instead of finishing (I2, I3):
    # shmipc_claim_room's own check (QE <= tail) then reports a corrupt ring, not a reuse
    "no_recover_finish": "a step found the (unscribbled) ring corrupt",
    # producers ignore the quarantine (I3)
    "no_room_check": "space handed out twice",
    # register stores Q without reading it first: a second holder overwrites a standing
    # quarantine, which then ends early (I1, I3); only the two-holder bound can see it
    "register_blind": "space handed out twice",
}
TWO_HOLDERS = {"register_blind"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_checker_catches_each_mutant(mutant):
    """Each invariant is load-bearing: break the step that keeps it and the search finds a
    counterexample (so a passing search means something)."""
    bounds = dict(cap=2, puts=1, holders=2) if mutant in TWO_HOLDERS else dict(cap=2, puts=2)
    result = check(Model(revokers=1, mutant=mutant, **bounds))
    print(result.failure, "\n  " + "\n  ".join(result.trace))
    assert result.failure is not None and result.failure.startswith(MUTANTS[mutant])


@pytest.mark.timeout(300)
def test_register_needs_its_read_only_with_a_second_holder():
    """The blind register is invisible to one holder (Q is always 0 when it registers), so
    the two-holder bound is what checks that register_read + register are enough."""
    assert check(Model(cap=2, puts=2, revokers=1, mutant="register_blind")).failure is None


def test_old_protocol_hangs_when_the_holder_commits_mid_revocation():
    """Layout 3, with nothing killed: the revoker takes the parked word, the resumed holder
    fails its unpark and finds no quarantine to end, the revoker then names it the
    quarantine's owner: nobody clears it, and P blocks once it laps the ring."""
    model = Model(cap=2, puts=2, old=True, revokers=1)
    no_kills = _without_kills(model)
    result = check(no_kills)
    assert result.failure is not None and result.failure.startswith("wedge: the quarantine")
    steps = result.trace
    print("\n".join(steps))
    take, unpark, owner = (steps.index(x) for x in ("R1.revoke_take", "H.unpark", "R1.set_owner"))
    assert take < unpark < owner  # the race, as issue 7 describes it
    assert steps.index("H.end_quarantine") < owner


def test_old_protocol_hands_out_a_killed_revokers_space():
    """Layout 3: a revoker killed after taking the word; the takeover counts the claim
    abandoned and P writes where the stopped holder may still write."""
    result = check(Model(cap=2, puts=2, old=True, revokers=1))
    print(result.failure, "\n".join(result.trace))
    assert result.failure is not None and result.failure.startswith("space handed out twice")
    assert "kill R1" in result.trace


def _without_kills(model: Model) -> Model:
    """The same model with no kill steps (the race needs none)."""

    class NoKills(Model):
        def steps(self, s: S, calm: bool = False) -> Iterator[tuple[str, S]]:
            return (x for x in super().steps(s, calm) if not x[0].startswith("kill"))

    return NoKills(cap=model.cap, puts=model.puts, old=model.old, revokers=model.revokers)
