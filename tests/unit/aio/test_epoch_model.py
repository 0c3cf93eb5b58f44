"""Exhaustive interleaving model of the pin/epoch protocol between the loop and the helper
(csrc/aio.c, shmipc/aio.py ``_unregister``/``_trim``): a removed word's mapping is let go
only once the helper's epoch has moved past the removal, so the helper never touches a word
after its mapping is gone. Every interleaving of the atomic steps, at small bounds."""

from __future__ import annotations

import itertools

# Helper steps per cycle (as in shmipc_aio_serve): snapshot the set under the mutex; sleep;
# after the wait, touch the snapshotted words (unregister, last loads); bump the epoch.
HELPER_CYCLE = ("snap", "touch", "bump")
# Loop steps: remove the entry under the mutex (reading the epoch there), then a trim that
# drops the pin if the epoch is past the removal, then unmap if the pin is gone.
LOOP = ("remove", "trim", "unmap")


def run(order: tuple[str, ...], epoch_check: bool) -> bool:
    """Play one interleaving; False if the helper touched an unmapped word."""
    used, mapped, pinned = True, True, True
    epoch, removed_at = 0, None
    snapshot = False
    h = lp = 0
    helper_steps = HELPER_CYCLE * 2
    for actor in order:
        if actor == "h":
            step = helper_steps[h]
            h += 1
            if step == "snap":
                snapshot = used
            elif step == "touch":
                if snapshot and not mapped:
                    return False
            else:
                epoch += 1
        else:
            step = LOOP[lp]
            lp += 1
            if step == "remove":
                used = False
                removed_at = epoch
            elif step == "trim":
                if not epoch_check or epoch > removed_at:
                    pinned = False
            elif not pinned:
                mapped = False  # the last export went: unmapped
    return True


def interleavings():
    n_h, n_l = len(HELPER_CYCLE) * 2, len(LOOP)
    for pos in itertools.combinations(range(n_h + n_l), n_l):
        order = ["h"] * (n_h + n_l)
        for p in pos:
            order[p] = "l"
        yield tuple(order)


def test_the_epoch_keeps_every_touched_word_mapped():
    orders = list(interleavings())
    assert len(orders) == 84
    assert all(run(o, epoch_check=True) for o in orders)


def test_without_the_epoch_the_model_finds_the_crash():
    assert not all(run(o, epoch_check=False) for o in interleavings())
