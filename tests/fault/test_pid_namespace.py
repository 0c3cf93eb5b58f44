"""Segments are shared within one pid namespace: another namespace is refused at attach.

shmipc's robust locks name their holders by thread id; in another pid namespace that id
means another thread (or none), so a live holder could be taken for dead. Attach refuses
instead (LayoutMismatch), and a /proc that hides a holder never makes it look dead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from shmipc import Lock, _proc
from shmipc._native import lib

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None,
        reason="needs root and util-linux unshare to make a pid namespace",
    ),
]


def test_attach_from_another_pid_namespace_is_refused():
    lock = Lock.create()
    try:
        assert lock.acquire(timeout=1)
        code = textwrap.dedent(f"""
            from shmipc import Lock, LayoutMismatch
            try:
                Lock.attach({lock.name!r})
            except LayoutMismatch as exc:
                print("REFUSED", exc)
            else:
                print("ATTACHED")
        """)
        r = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if "Operation not permitted" in r.stderr:
            pytest.skip("this sandbox does not allow new pid namespaces")
        assert "REFUSED" in r.stdout, (r.stdout, r.stderr)
        assert "pid namespace" in r.stdout
        # Nothing took it over: the word still names this thread.
        assert lib.shmipc_load64_acquire(lock._base, lock._off) == lib.shmipc_lock_identity()
    finally:
        lock.release()
        lock.close()


def test_a_holder_hidden_by_proc_counts_as_alive(monkeypatch):
    """/proc will not show a holder that kill(pid, 0) says exists: unknown, so alive."""
    monkeypatch.setattr(_proc, "_stat", lambda pid: None)
    pid, started = _proc.self_identity()
    assert _proc.identity_alive(lib.shmipc_lock_identity()) is True
    assert _proc.is_alive(pid, started) is True
    assert _proc.is_alive(pid, started + 1) is True  # no start time to compare: unknown
