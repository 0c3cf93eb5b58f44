"""Model check of how shmipc.Pool settles the tasks of a worker that died
(``shmipc.pool.lost_tasks``), with the worker killed between any two of its steps.

The actors and their atomic steps: the parent sends tasks to the worker's queue (in order,
some possibly after the worker died but before the parent noticed); the worker, for each
task, takes it off its queue (TAKE), writes its number to its slot (SLOT), runs it (RUN: the
task's side effects happen) and puts its result (PUT: committed whole, or discarded whole if
the worker dies inside the put). The parent handles results in queue order; when it notices
the death it reads the slot and puts a marker behind the results, and at the marker calls
``lost_tasks`` on what it still holds. Every kill point, every number of tasks sent before
and after the death, and every moment the parent handles results are tried. Invariants:

* every task ends exactly once: completed with its result, failed, or sent again;
* completed exactly when its PUT happened;
* at most one task fails, and only one whose SLOT happened and whose PUT did not;
* no task whose RUN happened is sent again (nothing runs twice);
* no task whose RUN happened without its PUT is lost silently: it fails.
"""

from __future__ import annotations

import itertools

import pytest

from shmipc.pool import lost_tasks

STEPS = ("TAKE", "SLOT", "RUN", "PUT")


def _simulate(before: int, late: int, kill_after: int, handle_at: int) -> None:
    """``before`` tasks sent before the worker starts, ``late`` after it died; the worker
    dies after ``kill_after`` steps; the parent handles the results committed by then after
    ``handle_at`` of them (the rest at the marker: handling order never changes)."""
    sent = list(range(1, before + 1))
    held = {seq: f"task{seq}" for seq in sent}
    slot = 0
    happened: set[tuple[int, str]] = set()
    results: list[int] = []  # committed results, in queue order
    steps = [(seq, step) for seq in sent for step in STEPS]
    for seq, step in steps[:kill_after]:
        happened.add((seq, step))
        if step == "SLOT":
            slot = seq
        elif step == "PUT":
            results.append(seq)
    # The parent may have handled some results while the worker still ran.
    completed: list[int] = []
    for seq in results[:handle_at]:
        del held[seq]
        completed.append(seq)
    # Sent after the death, before the parent noticed: never taken.
    for seq in range(before + 1, before + late + 1):
        held[seq] = f"task{seq}"
    # Noticed: slot read, marker put behind everything committed; handled in order.
    for seq in results[handle_at:]:
        del held[seq]
        completed.append(seq)
    failed, again = lost_tasks(dict(held), slot)
    failed_seqs = [] if failed is None else [int(failed[4:])]
    again_seqs = [int(t[4:]) for t in again]

    everything = list(range(1, before + late + 1))
    assert sorted(completed + failed_seqs + again_seqs) == everything, "a task lost or doubled"
    assert sorted(completed) == sorted(seq for seq, step in happened if step == "PUT")
    for seq in failed_seqs:
        assert (seq, "SLOT") in happened and (seq, "PUT") not in happened
    for seq in again_seqs:
        assert (seq, "RUN") not in happened, f"task {seq} ran and would run again"
    for seq in everything:
        if (seq, "RUN") in happened and (seq, "PUT") not in happened:
            assert seq in failed_seqs, f"task {seq} ran, never finished, and was not failed"
    assert again_seqs == sorted(again_seqs), "tasks sent again out of order"


@pytest.mark.parametrize("before", [0, 1, 2, 3])
@pytest.mark.parametrize("late", [0, 1, 2])
def test_every_kill_point(before: int, late: int) -> None:
    total_steps = before * len(STEPS)
    cases = 0
    for kill_after in range(total_steps + 1):  # total_steps: it died after its last PUT
        committed = sum(
            1
            for seq, step in itertools.product(range(before), STEPS)
            if seq * len(STEPS) + STEPS.index(step) < kill_after and step == "PUT"
        )
        for handle_at in range(committed + 1):
            _simulate(before, late, kill_after, handle_at)
            cases += 1
    assert cases >= total_steps + 1


def test_the_running_task_is_the_one_in_the_slot() -> None:
    held = {7: "a", 8: "b", 9: "c"}
    assert lost_tasks(held, 7) == ("a", ["b", "c"])
    assert lost_tasks(held, 6) == (None, ["a", "b", "c"])  # died between two tasks
    assert lost_tasks({}, 5) == (None, [])
