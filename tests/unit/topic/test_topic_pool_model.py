"""Exhaustive interleavings of pooled topic fan-out (shmipc/topic_pool.py, P-T1..P-T4).

A pure-Python model, one step per atomic operation of the protocol. A pool adjust is one step
here (its own steps are checked by tests/unit/buffers/test_pool_model.py); so is each CAS or
store of a slot word or cursor. Policy "block":

* ``P``, the publisher, publishes ``RECORDS`` records: alloc a block (its own reference),
  lock, count the ACTIVE slots n, move its reference to n transit ones, place (tail += 1),
  unlock.
* ``S0``, ``S1``, subscribers: claim a slot and activate it (under the lock, cursor = tail);
  then, any number of times: copy the record at the cursor, check the slot word, CAS the
  cursor past it (fails if marked by a retire), claim (transit -> own key; must succeed),
  drop the view. Or close: lock, retire (CAS ACTIVE -> FREE, mark the cursor), walk the
  unread records dropping one transit reference each, unlock.
* ``E``, a live process's eviction: for an ACTIVE slot whose owner is dead or stopped: lock,
  retire (CAS -> FREE/EVICTED, mark), walk, unlock; takes the lock over from a dead holder.
* ``LV``, the pool's liveness reclaim, drops every reference of a dead process's key (never
  a transit one, B4). It commutes with every step here (it touches only dead keys), so the
  terminal check applies it instead of interleaving it.

P, S0 and S1 may be killed, and S0 stopped (once; then continued), between any two steps;
E may be killed once mid-eviction (another live process then takes its role). Checked in
every state: a walk or a claim never finds fewer transit references than it takes (that
would be a reference counted twice, i.e. a block freed while a subscriber still has it to
claim). In every terminal state, after LV: every block is free, except after one of the
documented windows: P killed between its move and its place (the n transit references
stay), a subscriber killed between its cursor CAS and its claim (its one transit reference
stays), a retirer killed mid-walk (the references not yet walked stay).

Policy "overwrite" (``test_overwrite_model``): a ring of one record; each publish drops the
overwritten record's ring reference, then moves its own to one ring reference, then places.
A reader copies the record, checks O (T2), claims by adding a reference under the generation
check. Two physical blocks are reused. Checked: a successful claim always reads the data of
the publish its handle names (a reused block is never mapped); terminal states leak nothing
once the ring is drained (unlink), except P killed between move and place.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(300)

RECORDS = 2
SUBS = ("S0", "S1")


def _freeze(d: dict) -> tuple:
    return tuple(sorted(d.items()))


class M:
    """A mutable copy of a state (a dict of fields), frozen back to a hashable tuple."""

    def __init__(self, st: tuple) -> None:
        self.__dict__.update(dict(st))

    def freeze(self) -> tuple:
        return tuple(sorted(self.__dict__.items()))


def _refs(m: M, b: int) -> dict:
    return dict(m.refs[b])


def _adjust(m: M, b: int, frm: str | None, n_from: int, to: str | None, n_to: int) -> bool:
    """One pool adjust on block b: all or nothing; False if frm holds fewer than n_from."""
    r = _refs(m, b)
    if frm is not None and r.get(frm, 0) < n_from:
        return False
    if frm is not None:
        r[frm] -= n_from
    if to is not None and n_to:
        r[to] = r.get(to, 0) + n_to
    r = {k: v for k, v in r.items() if v}
    refs = list(m.refs)
    refs[b] = _freeze(r)
    m.refs = tuple(refs)
    return True


def _initial() -> tuple:
    st: dict[str, Any] = {
        "lock": None,
        "tail": 0,
        "refs": tuple(() for _ in range(RECORDS)),
        "dead": frozenset(),
        "stopped": frozenset(),
        "was_stopped": frozenset(),
        "leak_ok": frozenset(),  # actors killed inside a documented window
        "failed": "",
        "p_pc": "alloc",
        "p_i": 0,
        "e_pc": "idle",
        "e_slot": "",
        "e_c": 0,
    }
    for s in SUBS:
        st[f"{s}_w"] = "free"  # free / claiming / active / evicted
        st[f"{s}_c"] = 0
        st[f"{s}_mark"] = False
        st[f"{s}_pc"] = "claim"
        st[f"{s}_got"] = -1  # record copied (or claimed)
        st[f"{s}_views"] = 0
        st[f"{s}_walk"] = 0
    return tuple(sorted(st.items()))


def _lock_free(m: M, who: str) -> bool:
    return m.lock is None or m.lock == who


def _sub_steps(m: M, s: str) -> list[tuple[str, Any]]:
    pc = getattr(m, f"{s}_pc")
    out: list[tuple[str, Any]] = []
    if pc == "claim" and m.lock is None:

        def subscribe(m: M) -> None:  # claim; under the lock: activate at the tail
            setattr(m, f"{s}_c", m.tail)
            setattr(m, f"{s}_w", "active")
            setattr(m, f"{s}_pc", "idle")

        out.append(("subscribe", subscribe))
    if pc in ("idle", "closed", "done") and getattr(m, f"{s}_views"):

        def drop(m: M) -> None:  # a view outlives a close, and an eviction
            setattr(m, f"{s}_views", getattr(m, f"{s}_views") - 1)
            b = getattr(m, f"{s}_held")[0]
            setattr(m, f"{s}_held", getattr(m, f"{s}_held")[1:])
            if not _adjust(m, b, s, 1, None, 0):
                m.failed = f"{s} dropped a view it did not hold"

        out.append(("drop", drop))
    if pc == "idle":
        c = getattr(m, f"{s}_c")
        # (at most one view held at a time: bounds the state space)
        if c < m.tail and getattr(m, f"{s}_w") == "active" and not getattr(m, f"{s}_views"):

            def copy(m: M) -> None:  # copy, then the check of the slot word (T6)
                setattr(m, f"{s}_got", getattr(m, f"{s}_c"))
                setattr(m, f"{s}_pc", "cas")

            out.append(("copy", copy))
        if getattr(m, f"{s}_w") == "active" and m.lock is None:

            def close(m: M) -> None:
                m.lock = s
                setattr(m, f"{s}_pc", "retire")

            out.append(("close", close))
    elif pc == "cas":

        def cas(m: M) -> None:
            if getattr(m, f"{s}_mark"):
                setattr(m, f"{s}_pc", "done")  # retired meanwhile: Evicted, discarded
                setattr(m, f"{s}_got", -1)
            else:
                setattr(m, f"{s}_c", getattr(m, f"{s}_got") + 1)
                setattr(m, f"{s}_pc", "claim_ref")

        out.append(("cas", cas))
    elif pc == "claim_ref":

        def claim_ref(m: M) -> None:
            b = getattr(m, f"{s}_got")
            if not _adjust(m, b, "T", 1, s, 1):
                m.failed = f"{s}'s honest claim of record {b} found no transit reference"
            setattr(m, f"{s}_views", getattr(m, f"{s}_views") + 1)
            setattr(m, f"{s}_held", (*getattr(m, f"{s}_held"), b))
            setattr(m, f"{s}_got", -1)
            setattr(m, f"{s}_pc", "idle")

        out.append(("claim_ref", claim_ref))
    elif pc == "retire":

        def retire(m: M) -> None:
            if getattr(m, f"{s}_w") == "active":
                setattr(m, f"{s}_w", "free")
                setattr(m, f"{s}_mark", True)
                setattr(m, f"{s}_walk", getattr(m, f"{s}_c"))
                setattr(m, f"{s}_pc", "walk")
            else:  # an evictor took it (and walked): plain release
                setattr(m, f"{s}_w", "free")
                setattr(m, f"{s}_pc", "close_unlock")

        out.append(("retire", retire))
    elif pc == "walk":

        def walk(m: M) -> None:
            i = getattr(m, f"{s}_walk")
            if i < m.tail:
                if not _adjust(m, i, "T", 1, None, 0):
                    m.failed = f"{s}'s close walk of record {i} found no transit reference"
                setattr(m, f"{s}_walk", i + 1)
            else:
                setattr(m, f"{s}_pc", "close_unlock")
                setattr(m, f"{s}_walk", 0)

        out.append(("walk", walk))
    elif pc == "close_unlock":

        def cu(m: M) -> None:
            m.lock = None
            setattr(m, f"{s}_pc", "closed")

        out.append(("unlock", cu))
    return out


def _pub_steps(m: M) -> list[tuple[str, Any]]:
    pc = m.p_pc
    if pc == "alloc" and m.p_i < RECORDS:

        def alloc(m: M) -> None:
            _adjust(m, m.p_i, None, 0, "P", 1)
            m.p_pc = "lock"

        return [("alloc", alloc)]
    if pc == "lock" and m.lock is None:

        def lock(m: M) -> None:
            m.lock = "P"
            m.p_pc = "count"

        return [("lock", lock)]
    if pc == "count":

        def count_move(m: M) -> None:  # count (no shared effect), then move: one step
            n = sum(getattr(m, f"{s}_w") == "active" for s in SUBS)
            _adjust(m, m.p_i, "P", 1, "T" if n else None, n)
            m.p_pc = "place"

        return [("count+move", count_move)]
    if pc == "place":

        def place(m: M) -> None:
            m.tail += 1
            m.p_i += 1
            m.p_pc = "unlock"

        return [("place", place)]
    if pc == "unlock":

        def unlock(m: M) -> None:
            m.lock = None
            m.p_pc = "alloc"

        return [("unlock", unlock)]
    return []


def _evict_steps(m: M) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if m.lock in m.dead:  # any live process takes a dead holder's lock over (no repair: T1)

        def steal(m: M) -> None:
            m.lock = None

        out.append(("steal", steal))
    if m.e_pc == "idle":
        for s in SUBS:
            gone = s in m.dead or s in m.stopped
            if gone and getattr(m, f"{s}_w") == "active":

                def start(m: M, s: str = s) -> None:
                    m.e_slot = s
                    m.e_pc = "lock"

                out.append((f"evict {s}", start))
    elif m.e_pc == "lock" and m.lock is None:

        def lock(m: M) -> None:
            m.lock = "E"
            m.e_pc = "retire"

        out.append(("lock", lock))
    elif m.e_pc == "retire":

        def retire(m: M) -> None:
            s = m.e_slot
            if getattr(m, f"{s}_w") == "active":
                setattr(m, f"{s}_w", "free" if s in m.dead else "evicted")
                setattr(m, f"{s}_mark", True)
                m.e_c = getattr(m, f"{s}_c")
                m.e_pc = "walk"
            else:
                m.e_pc = "unlock"
            m.e_slot = ""

        out.append(("retire", retire))
    elif m.e_pc == "walk":

        def walk(m: M) -> None:
            if m.e_c < m.tail:
                if not _adjust(m, m.e_c, "T", 1, None, 0):
                    m.failed = f"eviction walk of record {m.e_c} found no transit reference"
                m.e_c += 1
            else:
                m.e_pc = "unlock"
                m.e_c = 0

        out.append(("walk", walk))
    elif m.e_pc == "unlock":

        def unlock(m: M) -> None:
            m.lock = None
            m.e_pc = "idle"

        out.append(("unlock", unlock))
    return out


_WINDOWS = {
    "P": ("place",),  # moved, not placed
    "S0": ("claim_ref",),
    "S1": ("claim_ref",),
}


def _kill_steps(m: M) -> list[tuple[str, Any]]:
    out = []
    if m.e_pc != "idle" and "E+" not in m.dead:
        # The evicting process dies; another live process takes the role over (eviction
        # and lock takeover are what every blocked publisher and subscribe() do).
        def kill_e(m: M, pc: str = m.e_pc) -> None:
            if pc == "walk":
                m.leak_ok = m.leak_ok | {"E"}
            if m.lock == "E":
                m.lock = "E+"
            m.dead = m.dead | {"E+"}
            m.e_pc = "idle"

        out.append(("kill E", kill_e))
    for a in ("P", *SUBS):
        if a in m.dead or a in m.stopped:
            continue
        pc = m.p_pc if a == "P" else getattr(m, f"{a}_pc")
        if pc in ("done", "closed") or (a == "P" and m.p_i >= RECORDS and pc == "alloc"):
            continue

        def kill(m: M, a: str = a, pc: str = pc) -> None:
            m.dead = m.dead | {a}
            if pc in _WINDOWS.get(a, ()) or pc == "walk":
                m.leak_ok = m.leak_ok | {a}

        out.append((f"kill {a}", kill))
        if a == "S0" and a not in m.was_stopped:

            def stop(m: M, a: str = a) -> None:
                m.stopped = m.stopped | {a}
                m.was_stopped = m.was_stopped | {a}

            out.append((f"stop {a}", stop))
    for a in m.stopped:
        if a not in m.dead:

            def cont(m: M, a: str = a) -> None:  # SIGCONT: it runs on from where it was
                m.stopped = m.stopped - {a}

            out.append((f"cont {a}", cont))
    return out


def _steps(m: M) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if "P" not in m.dead:
        out += _pub_steps(m)
    for s in SUBS:
        if s not in m.dead and s not in m.stopped:
            out += _sub_steps(m, s)
    out += _evict_steps(m)
    return out


def _explore(initial: tuple, steps: Any, kills: Any, terminal_check: Any) -> int:
    seen = {initial}
    todo = deque([initial])
    while todo:
        st = todo.popleft()
        m0 = M(st)
        moves = steps(m0)
        for _name, fn in moves + kills(m0):
            m = M(st)
            fn(m)
            assert not m.failed, m.failed
            nxt = m.freeze()
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
        if not moves and not getattr(m0, "stopped", ()):  # a stopped actor will run on
            terminal_check(m0)
    return len(seen)


def _block_terminal(m: M) -> None:
    leaks = []
    for b in range(RECORDS):
        for key, n in m.refs[b]:
            if key in m.dead:
                continue  # the pool's liveness reclaim takes these back (P-T: LV)
            leaks.append((b, key, n))
    if leaks and not m.leak_ok:
        raise AssertionError(f"leaked {leaks} in terminal state {m.freeze()}")


def _with_held(st: tuple) -> tuple:
    d = dict(st)
    for s in SUBS:
        d[f"{s}_held"] = ()
    return tuple(sorted(d.items()))


def test_block_model() -> None:
    states = _explore(_with_held(_initial()), _steps, _kill_steps, _block_terminal)
    assert states > 10_000  # the model really branched


def test_block_model_finds_a_double_drop_without_the_mark() -> None:
    """The cursor mark is what makes claim and walk exclusive (P-T2): without it, an
    evictor's walk and the owner's claim both take the same record's reference."""

    def unmarked(m: M) -> list[tuple[str, Any]]:
        return [(n, _no_mark(fn)) for n, fn in _steps(m)]

    def _no_mark(fn: Any) -> Any:
        def run(m: M) -> None:
            fn(m)
            for s in SUBS:
                setattr(m, f"{s}_mark", False)

        return run

    with pytest.raises(AssertionError, match="transit reference"):
        _explore(_with_held(_initial()), unmarked, _kill_steps, _block_terminal)


# ---- policy "overwrite" ------------------------------------------------------------------

PUBLISHES = 3
BLOCKS = 2


def _ow_initial() -> tuple:
    st: dict[str, Any] = {
        "gen": (0,) * BLOCKS,  # current generation of each physical block
        "data": (-1,) * BLOCKS,  # which publish wrote it
        "refs": ((),) * BLOCKS,
        "ring": None,  # (block, gen, publish) of the one record in the ring, or None
        "o_seq": 0,  # publishes overwritten (O), bumped before the bytes change
        "lock": None,
        "dead": frozenset(),
        "leak_ok": frozenset(),
        "failed": "",
        "p_pc": "alloc",
        "p_i": 0,
        "p_b": -1,
        "r_pc": "copy",
        "r_copy": None,
        "r_o": 0,
        "r_view": None,
        "drained": False,
    }
    return tuple(sorted(st.items()))


def _ow_steps(m: M, gen_check: bool = True) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if "P" not in m.dead:
        pc = m.p_pc
        if pc == "alloc" and m.p_i < PUBLISHES:
            for b in range(BLOCKS):
                if not m.refs[b]:

                    def alloc(m: M, b: int = b) -> None:
                        gens, data = list(m.gen), list(m.data)
                        gens[b] += 1
                        data[b] = m.p_i  # fill
                        m.gen, m.data = tuple(gens), tuple(data)
                        _adjust(m, b, None, 0, "P", 1)
                        m.p_b = b
                        m.p_pc = "lock"

                    out.append(("alloc", alloc))
        elif pc == "lock" and m.lock is None:

            def lock(m: M) -> None:
                m.lock = "P"
                m.p_pc = "drop_old"

            out.append(("lock", lock))
        elif pc == "drop_old":

            def drop_old(m: M) -> None:
                if m.ring is not None:
                    b, g, _ = m.ring
                    if m.gen[b] == g and not _adjust(m, b, "T", 1, None, 0):
                        m.failed = "overwrite dropped a ring reference it did not hold"
                m.p_pc = "move"

            out.append(("drop_old", drop_old))
        elif pc == "move":

            def move(m: M) -> None:
                _adjust(m, m.p_b, "P", 1, "T", 1)
                m.p_pc = "place"

            out.append(("move", move))
        elif pc == "place":

            def place(m: M) -> None:
                if m.ring is not None:
                    m.o_seq += 1  # O past the old record, then the bytes change
                m.ring = (m.p_b, m.gen[m.p_b], m.p_i)
                m.p_i += 1
                m.p_pc = "unlock"

            out.append(("place", place))
        elif pc == "unlock":

            def unlock(m: M) -> None:
                m.lock = None
                m.p_pc = "alloc"

            out.append(("unlock", unlock))
    if "R" not in m.dead:
        pc = m.r_pc
        if pc == "copy" and m.ring is not None:

            def copy(m: M) -> None:
                m.r_copy = m.ring
                m.r_o = m.o_seq
                m.r_pc = "check"

            out.append(("copy", copy))
        elif pc == "check":

            def check(m: M) -> None:
                m.r_pc = "claim" if m.o_seq == m.r_o else "copy"  # T2: lapped, retry

            out.append(("check", check))
        elif pc == "claim":

            def claim(m: M) -> None:
                b, g, pub = m.r_copy
                if (m.gen[b] == g or not gen_check) and m.refs[b]:  # the pool's check (P3)
                    _adjust(m, b, None, 0, "R", 1)
                    if m.data[b] != pub:
                        m.failed = f"mapped block {b} of publish {m.data[b]}, not {pub}"
                    m.r_view = b
                    m.r_pc = "release"
                else:
                    m.r_pc = "done"  # Lagged

            out.append(("claim", claim))
        elif pc == "release":

            def release(m: M) -> None:
                _adjust(m, m.r_view, "R", 1, None, 0)
                m.r_view = None
                m.r_pc = "done"

            out.append(("release", release))
    if m.lock in m.dead:

        def steal(m: M) -> None:
            m.lock = None

        out.append(("steal", steal))
    for b in range(BLOCKS):
        for key, _n in m.refs[b]:
            if key in m.dead:

                def reclaim(m: M, b: int = b, key: str = key) -> None:
                    _adjust(m, b, key, _refs(m, b)[key], None, 0)

                out.append(("reclaim", reclaim))
    done = ("P" in m.dead or (m.p_i >= PUBLISHES and m.p_pc == "alloc")) and (
        "R" in m.dead or m.r_pc in ("done", "copy")
    )
    if done and not m.drained and m.lock is None:

        def drain(m: M) -> None:  # the creator's unlink, under the lock
            if m.ring is not None:
                b, g, _ = m.ring
                if m.gen[b] == g and dict(m.refs[b]).get("T"):
                    _adjust(m, b, "T", 1, None, 0)
            m.drained = True

        out.append(("drain", drain))
    return out


def _ow_kills(m: M) -> list[tuple[str, Any]]:
    out = []
    for a in ("P", "R"):
        if a in m.dead:
            continue

        def kill(m: M, a: str = a) -> None:
            if a == "P" and m.p_pc == "place":
                m.leak_ok = m.leak_ok | {a}
            m.dead = m.dead | {a}

        out.append((f"kill {a}", kill))
    return out


def _ow_terminal(m: M) -> None:
    held = [(b, r) for b, r in enumerate(m.refs) if r]
    if held and not m.leak_ok:
        raise AssertionError(f"leaked {held} in terminal state {m.freeze()}")


def test_overwrite_model() -> None:
    states = _explore(_ow_initial(), _ow_steps, _ow_kills, _ow_terminal)
    assert states > 500


def test_overwrite_model_needs_the_generation_check() -> None:
    """Without the generation check, a lapped reader maps a reused block (the model sees it)."""
    with pytest.raises(AssertionError, match="mapped block"):
        _explore(_ow_initial(), lambda m: _ow_steps(m, gen_check=False), _ow_kills, _ow_terminal)
