"""The sleeper registry (csrc/native.c): sleepers' identities beside their count, so that a
sleeper killed in its sleep can be taken back, and the C liveness check it relies on."""

from __future__ import annotations

import os
import threading

import pytest
from _procs import asleep_in_futex, wait_for

from shmipc import Region, _proc
from shmipc._native import lib

pytestmark = pytest.mark.timeout(60)

SLOTS = 3
REG = 64  # the registry: u32 count, then SLOTS u64 slots from +8
WORD = 0  # the word sleepers wait on


def _dead_identity() -> int:
    """The identity of a thread that has ended (a forked child, reaped)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0)
    started = _proc.start_time(pid)
    os.waitpid(pid, 0)
    return ((started or 1) & 0xFFFFFFFF) << 32 | pid


def test_identity_alive_agrees_with_python():
    me = lib.shmipc_lock_identity()
    assert lib.shmipc_identity_alive(me) == 1
    assert lib.shmipc_identity_alive(me | lib.SHMIPC_LOCK_PARKED) == 1  # the mark is ignored
    reused = me ^ (1 << 40)  # this thread's id under another start time
    assert lib.shmipc_identity_alive(reused) == 0 and not _proc.identity_alive(reused)
    dead = _dead_identity()
    assert lib.shmipc_identity_alive(dead) == 0 and not _proc.identity_alive(dead)
    nobody = 0x3FFFFFFF | 5 << 32  # above any pid_max
    assert lib.shmipc_identity_alive(nobody) == 0


def test_reap_clears_only_the_dead_and_takes_their_count_back():
    region = Region.anonymous(4096)
    base, off = region.pointer(0)
    b = base + off
    dead = _dead_identity()
    me = lib.shmipc_lock_identity()
    lib.shmipc_store32_relaxed(b, REG, 3)  # two registered in slots, one counted only
    lib.shmipc_store64_relaxed(b, REG + 8, dead)
    lib.shmipc_store64_relaxed(b, REG + 16, me)
    assert lib.shmipc_reap_sleepers(b, REG, SLOTS) == 1
    assert lib.shmipc_load32_relaxed(b, REG) == 2
    assert lib.shmipc_load64_relaxed(b, REG + 8) == 0
    assert lib.shmipc_load64_relaxed(b, REG + 16) == me
    assert lib.shmipc_reap_sleepers(b, REG, SLOTS) == 0  # nothing more to take back
    region.close()


def test_a_sleeper_registers_its_identity_and_takes_it_back_when_woken():
    region = Region.anonymous(4096)
    base, off = region.pointer(0)
    b = base + off
    out: list[int] = []
    tid: list[int] = []

    def sleeper() -> None:
        tid.append(threading.get_native_id())
        out.append(lib.shmipc_wait_while32_reg(b, WORD, 0, REG, SLOTS, -1, 0))

    t = threading.Thread(target=sleeper)
    t.start()
    wait_for(lambda: lib.shmipc_load32_relaxed(b, REG) == 1, what="the sleeper registered")
    wait_for(lambda: asleep_in_futex(tid[0]), what="the sleeper asleep")
    slot = lib.shmipc_load64_relaxed(b, REG + 8)
    assert slot & 0x7FFFFFFF == tid[0] and lib.shmipc_identity_alive(slot) == 1
    assert lib.shmipc_reap_sleepers(b, REG, SLOTS) == 0  # alive: left alone
    lib.shmipc_store32_release(b, WORD, 1)
    assert lib.shmipc_wake32(b, WORD, REG, 1) == 1
    t.join(10)
    assert out == [lib.SHMIPC_OK]
    assert lib.shmipc_load32_relaxed(b, REG) == 0 and lib.shmipc_load64_relaxed(b, REG + 8) == 0
    region.close()
