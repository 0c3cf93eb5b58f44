"""Attaching to a ring that other processes are using at that moment.

Attach validates the head and tail before trusting them. On a live ring both move between the
two loads; a validation that read the tail first saw heads past it and refused thousands of
sound rings a second (found by a spawn stress run in CI).
"""

from __future__ import annotations

import os
import time

import pytest

import shmipc
from shmipc.errors import CorruptedError


@pytest.mark.timeout(30)
def test_attach_never_calls_a_live_ring_corrupt():
    q = shmipc.Queue(capacity=4096)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: keep both positions moving
            try:
                end = time.monotonic() + 1.5
                while time.monotonic() < end:
                    q.put_bytes(b"x" * 24)
                    q.get_bytes()
            finally:
                os._exit(0)
        refused = attached = 0
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                shmipc.Queue.attach(q.name).close()
                attached += 1
            except CorruptedError:
                refused += 1
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert attached > 0
        total = refused + attached
        assert refused == 0, f"{refused} of {total} attaches called a live ring corrupt"
    finally:
        q.close()
