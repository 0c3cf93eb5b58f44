"""An exhaustive interleaving model of JoinableQueue's count (shmipc/joinable.py, I1-I3).

The atomic steps, as the code takes them, for one task:

* producer: ``add`` (unfinished += 1), then ``store`` (the message enters the ring);
* consumer: ``take`` (the message leaves the ring), ``slot`` (its slot's taken += 1), then
  ``task_done``: ``untake`` (its slot's taken -= 1) and ``done`` (CAS unfinished ->
  unfinished - 1; at zero: bump seq, wake);
* joiner: ``seq`` (read seq), ``count`` (read unfinished: zero returns), ``sleep`` (sleeps
  only while seq still equals what it read; a wake at the transition to zero ends it).

Every interleaving the data allows (take after store), with the consumer killed (or not)
between any two of its steps. Checked: unfinished never goes below zero; a joiner that
started sleeping is woken once the count reaches zero (no lost wake-up, I2); when the
consumer dies holding the task, ``abandoned`` counts it exactly when its slot was
incremented and not yet decremented (a task done is never reported abandoned), and the task
stays unfinished (nothing is written off behind the program's back).
"""

from __future__ import annotations

import itertools

PRODUCER = ["add", "store"]
CONSUMER = ["take", "slot", "untake", "done"]
JOINER = ["seq", "count", "sleep"]


def _merges(*seqs):
    n = sum(map(len, seqs))
    labels = [i for i, s in enumerate(seqs) for _ in s]
    for perm in set(itertools.permutations(labels, n)):
        its = [iter(s) for s in seqs]
        yield [(who, next(its[who])) for who in perm]


def _play(order, killed_after):
    unfinished, seq, ring, taken = 0, 0, 0, 0
    consumer_steps, dead = 0, False
    joiner_seen_seq = None
    joiner_state = "running"  # running / returned / asleep / woken
    for who, step in order:
        if who == 0:
            if step == "add":
                unfinished += 1
            else:
                ring += 1
        elif who == 1:
            if dead:
                continue
            if step == "take":
                if ring == 0:
                    return None  # not an execution: nothing to take yet
                ring -= 1
            elif step == "slot":
                taken += 1
            elif step == "done":
                assert unfinished >= 1, "task_done below zero"
                unfinished -= 1
                if unfinished == 0:
                    seq += 1
                    if joiner_state == "asleep":
                        joiner_state = "woken"
            elif step == "untake":
                taken = max(0, taken - 1)
            consumer_steps += 1
            if killed_after == consumer_steps:
                dead = True
        else:
            if joiner_state != "running":
                continue
            if step == "seq":
                joiner_seen_seq = seq
            elif step == "count":
                if unfinished == 0:
                    joiner_state = "returned"
            elif step == "sleep" and seq == joiner_seen_seq:
                joiner_state = "asleep"  # the futex sleeps only on an unchanged seq
            elif step == "sleep":
                joiner_state = "running"  # seq moved: goes round (modelled as woken)
                joiner_state = "woken"
    return unfinished, taken, dead, joiner_state, consumer_steps


def test_every_interleaving_keeps_the_count_and_wakes_the_joiner():
    runs = 0
    for order in _merges(PRODUCER, CONSUMER, JOINER):
        for killed_after in (None, 1, 2, 3):
            out = _play(order, killed_after)
            if out is None:
                continue
            runs += 1
            unfinished, taken, dead, joiner, _ = out
            assert unfinished >= 0
            if not dead:
                assert unfinished == 0 and taken == 0
                assert joiner in ("returned", "woken"), order  # I2: never asleep at zero
            else:
                # Killed after take (1), after slot (2) or after untake (3): the task is
                # unfinished; counted as abandoned only while its slot holds it.
                assert unfinished == 1
                assert taken == (1 if killed_after == 2 else 0)
    assert runs > 100
