"""Exhaustive interleavings of the topic's slot protocol (csrc/topic.c, invariants T1..T7).

A pure-Python model of the atomic steps, named as in csrc/topic.c and shmipc/topic.py: one
model step per atomic operation on a shared word. Actors, at small bounds (one slot, a ring
of CAP records, N records published):

* ``S1``, ``S2``, subscribers: claim (CAS FREE -> CLAIMING naming itself), lock, activate
  (CLAIMING -> ACTIVE with cursor = tail, room bound lowered, under the publisher lock),
  unlock; then per record: read (its word, then the record at its cursor below the tail),
  check (after the copy: its word again; deliver or Evicted), advance (store the cursor);
  close (CAS its word -> FREE, generation + 1) at any time after activating;
* ``P``, a publisher: lock, scan (the slot's word, then its cursor: the room bound), write
  (over the record a lap older), publish (tail + 1), unlock; when there is no room: unlock
  and wait for the cursor to move or the slot to go;
* ``E``, the liveness pass of any waiter: steal (the lock of a dead holder), observe (a slot
  whose owner is dead, or ACTIVE and stopped), evict (CAS from the word observed: to FREE for
  the dead, to EVICTED for the stopped).

Between any two steps S1, S2 and P may be SIGKILLed, and S1, S2 SIGSTOPped and continued.

Checked in EVERY reachable state: no subscriber delivers a record other than the next one it
expects (nothing torn: the record it copied was not overwritten before its check; nothing
stale; no gap); no publisher writes over a record an ACTIVE subscriber has not read (T3);
two subscribers never both own the slot. From every reachable state with the stopped
continued and no more kills or stops, every run ends (no trap cycle) with P done (or dead),
every subscriber done (or dead), the lock free and the slot FREE. Each mutant (a deliberate
bug in one step) is caught.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

FREE, CLAIMING, ACTIVE, EVICTED = "free", "claiming", "active", "evicted"
SUBS = ("S1", "S2")
KILLABLE = ("S1", "S2", "P")


class Sub(NamedTuple):
    pc: str = "claim"
    my: tuple | None = None  # the word it claimed / activated
    cur: int = 0  # local cursor (record index)
    exp: int = 0  # sequence number expected next
    rd: int = -2  # what the copy read
    got: int = 0  # records delivered


class S(NamedTuple):
    word: tuple = (0, FREE, None)  # (generation, state, owner)
    cursor: int = 0  # the slot's shared cursor
    lock: str | None = None
    room: int = 0
    tail: int = 0
    ring: tuple = ()
    p_pc: str = "lock"
    p_seq: int = 0
    p_w: tuple | None = None  # the word P's scan loaded
    subs: tuple = (Sub(), Sub())
    e_pc: str = "idle"
    e_obs: tuple | None = None
    alive: frozenset = frozenset(KILLABLE)
    stopped: frozenset = frozenset()
    bad: str = ""


class Model:
    def __init__(self, *, cap: int = 2, n: int = 3, mutant: str = "") -> None:
        self.cap = cap
        self.n = n
        self.mutant = mutant

    def initial(self) -> S:
        return S(room=self.cap, ring=(-1,) * self.cap)

    # ---- helpers -----------------------------------------------------------------------------

    def set_sub(self, s: S, i: int, **kw: Any) -> S:
        subs = list(s.subs)
        subs[i] = subs[i]._replace(**kw)
        return s._replace(subs=tuple(subs))

    def p_finished(self, s: S) -> bool:
        return s.p_pc == "done" or "P" not in s.alive

    # ---- subscribers -------------------------------------------------------------------------

    def subscriber(self, s: S, i: int) -> Iterator[tuple[str, S]]:
        me = SUBS[i]
        u = s.subs[i]
        g, st, _owner = s.word
        if u.pc == "claim" and st == FREE:  # CAS FREE(g) -> CLAIMING(g, me)
            w = (g, CLAIMING, me)
            yield "claim", self.set_sub(s._replace(word=w), i, my=w, pc="lock")
        elif u.pc == "lock" and s.lock is None:
            if self.mutant == "activate_unlocked":
                yield "lock", self.set_sub(s, i, pc="activate")
            else:
                yield "lock", self.set_sub(s._replace(lock=me), i, pc="activate")
        elif u.pc == "activate":  # under the lock: the cursor at the tail (relaxed stores)
            yield (
                "cursor",
                self.set_sub(s._replace(cursor=s.tail), i, cur=s.tail, exp=s.tail, pc="activate2"),
            )
        elif u.pc == "activate2":  # then CAS CLAIMING -> ACTIVE (release), room lowered
            nxt = "read" if self.mutant == "activate_unlocked" else "unlock"
            if s.word == u.my:
                w = (g, ACTIVE, me)
                room = s.room
                if self.mutant != "activate_unlocked":
                    room = min(s.room, u.cur + self.cap)
                s2 = s._replace(word=w, room=room)
                yield "activate", self.set_sub(s2, i, my=w, pc=nxt)
            else:
                yield "activate", self.set_sub(s, i, pc="unlock_gone")
        elif u.pc in ("unlock", "unlock_gone"):
            nxt = "read" if u.pc == "unlock" else "close"
            yield "unlock", self.set_sub(s._replace(lock=None), i, pc=nxt)
        elif u.pc == "read":
            if s.word != u.my:
                yield "read", self.set_sub(s, i, pc="evicted")
            elif u.cur < s.tail:  # acquire load of the tail, then the copy's first half
                rd = s.ring[u.cur % self.cap]
                s2 = s
                if self.mutant == "cursor_before_copy":
                    s2 = s._replace(cursor=u.cur + 1)
                yield "read", self.set_sub(s2, i, rd=rd, pc="check")
            elif self.p_finished(s):
                yield "read", self.set_sub(s, i, pc="close")
        elif u.pc == "check":  # after the copy and an acquire fence: the word again
            torn = s.ring[u.cur % self.cap] != u.rd
            if s.word != u.my and self.mutant != "no_check_after_copy":
                yield "check", self.set_sub(s, i, pc="evicted")
            else:
                bad = s.bad
                if torn or u.rd != u.exp:
                    bad = bad or f"{me} delivered {u.rd} (torn={torn}) expecting {u.exp}"
                yield "check", self.set_sub(s._replace(bad=bad), i, pc="advance", got=u.got + 1)
        elif u.pc == "advance":  # release store of the cursor past the copied record
            s2 = s._replace(cursor=u.cur + 1) if s.word == u.my else s
            yield "advance", self.set_sub(s2, i, cur=u.cur + 1, exp=u.exp + 1, pc="read")
        elif u.pc in ("evicted", "close"):  # CAS own word (any state of this claim) -> FREE
            if s.word[0] == (u.my or (-1,))[0] and s.word[2] == me and s.word[1] != FREE:
                s = s._replace(word=(g + 1, FREE, None))
            yield "close", self.set_sub(s, i, pc="done")
        if u.pc == "read" and u.got >= 1:  # leaves early (a close at any time once reading)
            yield "close_early", self.set_sub(s, i, pc="close")

    # ---- publisher ----------------------------------------------------------------------------

    def publisher(self, s: S) -> Iterator[tuple[str, S]]:
        pc = s.p_pc
        end = s.tail + 1
        if pc == "lock" and s.lock is None:
            yield "lock", s._replace(lock="P", p_pc="room")
        elif pc == "room":
            if end <= s.room:
                yield "room", s._replace(p_pc="write")
            else:
                yield "scan_word", s._replace(p_w=s.word, p_pc="scan_cursor")
        elif pc == "scan_cursor":
            m = s.cursor if s.p_w[1] == ACTIVE else s.tail
            room = m + self.cap
            nxt = "write" if end <= room else "unlock_wait"
            yield "scan_cursor", s._replace(room=room, p_pc=nxt)
        elif pc == "write":
            bad = s.bad
            old = s.tail - self.cap  # the record this write destroys
            for i, u in enumerate(s.subs):
                if (
                    old >= 0
                    and s.word == u.my
                    and s.word[1] == ACTIVE
                    and u.pc in ("read", "check", "advance")
                    and u.cur <= old
                ):
                    bad = bad or f"P overwrote record {old} unread by active {SUBS[i]}"
            ring = list(s.ring)
            ring[s.tail % self.cap] = s.p_seq
            yield "write", s._replace(ring=tuple(ring), bad=bad, p_pc="publish")
        elif pc == "publish":  # release store of the tail
            yield "publish", s._replace(tail=end, p_seq=s.p_seq + 1, p_pc="unlock")
        elif pc == "unlock":
            nxt = "lock" if s.p_seq < self.n else "done"
            yield "unlock", s._replace(lock=None, p_pc=nxt)
        elif pc == "unlock_wait":
            yield "unlock", s._replace(lock=None, p_pc="wait")
        elif pc == "wait" and (s.word[1] != ACTIVE or s.cursor + self.cap >= end):
            yield "woken", s._replace(p_pc="lock")

    # ---- liveness pass ------------------------------------------------------------------------

    def liveness(self, s: S) -> Iterator[tuple[str, S]]:
        if s.lock is not None and s.lock not in s.alive:
            yield "steal", s._replace(lock=None)
        g, st, owner = s.word
        if s.e_pc == "idle":
            if st != FREE and owner not in s.alive:
                yield "observe", s._replace(e_pc="evict", e_obs=(s.word, "free"))
            elif st == ACTIVE and owner in s.stopped:
                yield "observe", s._replace(e_pc="evict", e_obs=(s.word, "evict"))
        elif s.e_pc == "evict":
            w, how = s.e_obs
            if s.word == w:
                nw = (g + 1, FREE, None) if how == "free" else (g, EVICTED, owner)
                s = s._replace(word=nw)
            yield "evict", s._replace(e_pc="idle", e_obs=None)

    # ---- all steps -----------------------------------------------------------------------------

    def steps(self, s: S, calm: bool = False) -> Iterator[tuple[str, S]]:
        for i, me in enumerate(SUBS):
            if me in s.alive and me not in s.stopped and s.subs[i].pc != "done":
                for label, t in self.subscriber(s, i):
                    yield f"{me}:{label}", t
        if "P" in s.alive and s.p_pc != "done":
            for label, t in self.publisher(s):
                yield f"P:{label}", t
        for label, t in self.liveness(s):
            yield f"E:{label}", t
        if calm:
            return
        for who in KILLABLE:
            if who in s.alive:
                yield f"kill {who}", s._replace(alive=s.alive - {who}, stopped=s.stopped - {who})
        for who in SUBS:
            if who in s.alive and who not in s.stopped:
                yield f"stop {who}", s._replace(stopped=s.stopped | {who})
            elif who in s.stopped:
                yield f"cont {who}", s._replace(stopped=s.stopped - {who})

    def violation(self, s: S) -> str | None:
        if s.bad:
            return s.bad
        owners = [
            SUBS[i]
            for i, u in enumerate(s.subs)
            if u.my == s.word and s.word[1] == ACTIVE and u.pc not in ("done",)
        ]
        if len(owners) > 1:
            return f"two owners {owners}"
        return None

    def settled_ok(self, s: S) -> str | None:
        if not self.p_finished(s):
            return f"publisher stuck at {s.p_pc}"
        for i, u in enumerate(s.subs):
            if SUBS[i] in s.alive and u.pc != "done":
                return f"{SUBS[i]} stuck at {u.pc}"
        if s.lock is not None:
            return f"lock left with {s.lock}"
        if s.word[1] != FREE:
            return f"slot left {s.word}"
        return None


def check(model: Model) -> tuple[int, str | None]:
    """(states explored, the first problem found with its trace, or None)."""
    start = model.initial()
    parent: dict[S, tuple[S | None, str]] = {start: (None, "")}
    todo = deque([start])

    def trace(s: S) -> str:
        out = []
        cur: S | None = s
        while cur is not None and parent[cur][0] is not None:
            prev, label = parent[cur]
            out.append(label)
            cur = prev
        return " -> ".join(reversed(out))

    while todo:
        s = todo.popleft()
        problem = model.violation(s)
        if problem:
            return len(parent), f"{problem}: {trace(s)}"
        for label, t in model.steps(s):
            if t not in parent:
                parent[t] = (s, label)
                todo.append(t)
    # Liveness: from each state with every stopped actor continued, the calm runs end well.
    calm_starts = {s._replace(stopped=frozenset()) for s in parent}
    succ: dict[S, list[S]] = {}
    stack = list(calm_starts)
    while stack:
        s = stack.pop()
        if s in succ:
            continue
        nxt = [t for _, t in model.steps(s, calm=True)]
        succ[s] = nxt
        stack.extend(t for t in nxt if t not in succ)
    # no cycles (iterative three-colour DFS), and every end state is a good one
    colour: dict[S, int] = {}
    for root in succ:
        if root in colour:
            continue
        work = [(root, iter(succ[root]))]
        colour[root] = 1
        while work:
            node, it = work[-1]
            for t in it:
                c = colour.get(t, 0)
                if c == 1:
                    return len(succ), f"a calm run can cycle forever through {t}"
                if c == 0:
                    colour[t] = 1
                    work.append((t, iter(succ[t])))
                    break
            else:
                colour[node] = 2
                work.pop()
    for s, nxt in succ.items():
        if not nxt:
            problem = model.settled_ok(s)
            if problem:
                return len(succ), f"{problem} in {s}"
    return len(parent), None


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("cap", "n"), [(2, 2), (1, 1)])
def test_slot_protocol_keeps_its_invariants_in_every_interleaving(cap, n):
    explored, problem = check(Model(cap=cap, n=n))
    assert problem is None, problem
    assert explored > 1000  # the model really branched


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "mutant", ["activate_unlocked", "no_check_after_copy", "cursor_before_copy"]
)
def test_the_checker_catches_each_mutant(mutant):
    _, problem = check(Model(cap=1, n=2, mutant=mutant))
    assert problem is not None, f"mutant {mutant} went unnoticed"
