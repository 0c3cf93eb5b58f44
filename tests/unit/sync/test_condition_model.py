"""An exhaustive interleaving model of Condition's slot protocol (shmipc/sync.py, I1-I3).

The atomic steps, as the code takes them:

* waiter ``register``: CAS slot 0 -> id, under the lock (so never inside a notify);
* waiter ``leave`` (timeout or Ctrl-C): CAS slot id -> 0; if that fails the slot is
  id|RELEASED: store 0 and count the wait as notified;
* waiter ``collect`` (woken): sees id|RELEASED, stores 0, returns True;
* notifier, under the lock, per slot: ``load`` v, then (v a live waiter) ``CAS`` v ->
  v|RELEASED and count one wake; (v a dead waiter) CAS v -> 0 and count nothing.

Two waiters and a ``notify(1)``, every interleaving of their steps that the lock allows, with
either waiter killed (or not) between any two of its steps. Checked in every run: a notify
counts a wake exactly when some waiter returns True or dies holding the wake-up (I1, I3); a
waiter that registered after the notify is never woken by it; every waiter that finished left
no slot naming it; a live registered waiter stays wakeable (a second notify reaches it).
"""

from __future__ import annotations

import itertools

REL = 1 << 31
IDS = {1: 0x1001, 2: 0x1002}


def _waiter_steps(w: int, ends_by_timeout: bool) -> list[str]:
    return [f"reg{w}", f"leave{w}" if ends_by_timeout else f"collect{w}"]


def _run(order, killed_after, ends_by_timeout, slots_n=2):
    """Play the steps in ``order``; return (notify's count, results, slots, reg order)."""
    slots = [0] * slots_n
    where: dict[int, int] = {}
    dead: set[int] = set()
    results: dict[int, bool | None] = {1: None, 2: None}
    counted = 0
    reg_after_notify: set[int] = set()
    notified_done = False
    pending_load: dict[int, int] = {}
    done_steps: dict[int, int] = {1: 0, 2: 0}
    spent_on_dead = False
    for step in order:
        if step.startswith("n_"):  # notifier's steps over the slots, one load/CAS per slot
            kind, i = step[2:6], int(step[6:])
            if counted >= 1:
                continue
            if kind == "load":
                pending_load[i] = slots[i]
            else:
                v = pending_load.get(i, 0)
                if not v or v & REL:
                    continue
                owner = next(w for w, x in IDS.items() if x == v)
                if owner in dead:
                    if slots[i] == v:
                        slots[i] = 0
                    continue
                if slots[i] == v:
                    slots[i] = v | REL
                    counted += 1
                    spent_on_dead = spent_on_dead or owner in dead
            if step == f"n_cas_{slots_n - 1}":
                notified_done = True
            continue
        w = int(step[-1])
        if w in dead:
            continue
        me = IDS[w]
        if step.startswith("reg"):
            if notified_done:
                reg_after_notify.add(w)
            i = slots.index(0)
            slots[i] = me
            where[w] = i
        elif step.startswith("leave"):
            i = where[w]
            if slots[i] == me:
                slots[i] = 0
                results[w] = False
            else:
                assert slots[i] == me | REL
                slots[i] = 0
                results[w] = True
        elif step.startswith("collect"):
            i = where[w]
            if slots[i] == me | REL:
                slots[i] = 0
                results[w] = True
            else:
                results[w] = None  # still asleep: never woken
        done_steps[w] += 1
        if killed_after.get(w) == done_steps[w]:
            dead.add(w)
    # I2: the notifier's futex wake reaches a sleeping waiter whose slot it released (the
    # waiter sleeps only while its slot's low half is its own tid): it wakes and collects.
    for w, i in where.items():
        if w not in dead and results[w] is None and slots[i] == IDS[w] | REL:
            slots[i] = 0
            results[w] = True
    assert not spent_on_dead, "I3: a notify spent its wake-up on a waiter known dead"
    return counted, results, slots, where, dead, reg_after_notify


def _notifier(slots_n=2):
    steps = []
    for i in range(slots_n):
        steps += [f"n_load{i}".replace("load", "load_"), f"n_cas_{i}"]
    return [s.replace("load_", "load") for s in steps]


def _interleavings(a, b, c):
    """Every merge of three sequences that keeps each one's order."""
    n = len(a) + len(b) + len(c)
    for pos_a in itertools.combinations(range(n), len(a)):
        rest = [i for i in range(n) if i not in pos_a]
        for pos_b in itertools.combinations(rest, len(b)):
            out = [None] * n
            for i, s in zip(pos_a, a, strict=True):
                out[i] = s
            for i, s in zip(pos_b, b, strict=True):
                out[i] = s
            it = iter(c)
            for i in range(n):
                if out[i] is None:
                    out[i] = next(it)
            yield out


def _lock_allows(order):
    """A register runs under the lock: never between the notifier's first and last step."""
    n_idx = [i for i, s in enumerate(order) if s.startswith("n_")]
    lo, hi = n_idx[0], n_idx[-1]
    return not any(s.startswith("reg") and lo < i < hi for i, s in enumerate(order))


def test_every_interleaving_keeps_the_invariants():
    notifier = [s for i in range(2) for s in (f"n_load{i}", f"n_cas_{i}")]
    runs = 0
    for t1, t2 in itertools.product((False, True), repeat=2):
        w1, w2 = _waiter_steps(1, t1), _waiter_steps(2, t2)
        for order in _interleavings(w1, w2, notifier):
            if not _lock_allows(order):
                continue
            for k1, k2 in itertools.product((None, 1), repeat=2):  # killed after register
                killed = {w: k for w, k in ((1, k1), (2, k2)) if k is not None}
                counted, results, slots, where, dead, late = _run(order, killed, (t1, t2))
                runs += 1
                woke = [w for w in (1, 2) if results[w] is True]
                died_with_it = [w for w in dead if w in where and slots[where[w]] & REL]
                # I1/I3: the notify counted exactly the wake-ups that someone took.
                assert counted == len(woke) + len(died_with_it), (order, killed, results)
                assert counted <= 1
                # A waiter registered after the notify finished is not woken by it.
                for w in late:
                    assert results[w] is not True or w not in woke, (order, killed)
                # Every waiter that finished left its slot free.
                for w in (1, 2):
                    if results[w] is not None and w not in dead:
                        assert slots[where[w]] & ~REL != IDS[w], (order, killed, slots)
                # A live waiter still asleep is still registered (a next notify reaches it).
                for w in (1, 2):
                    if w in where and w not in dead and results[w] is None:
                        assert slots[where[w]] == IDS[w], (order, killed, slots)
    assert runs > 100
