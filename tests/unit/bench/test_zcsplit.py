"""The zero-copy split (shmipc.bench.zcsplit) runs every loop and every ping/echo pair at a
tiny size, checks each reply, and leaves this process's CPU affinity as it found it; the
numbers are not judged here (docs/performance.md has them)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from shmipc.bench import zcsplit

pytestmark = pytest.mark.timeout(120)


def _affinity() -> set[int] | None:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def test_every_loop_and_pair_runs_and_prints_its_row(capsys) -> None:
    before = _affinity()
    assert zcsplit.main(["--rounds", "1000", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for what, _ in zcsplit.LOOPS.values():
        assert f"| `{what}` |" in out
    for ping, echo in zcsplit.PAIRS:
        assert f"| {ping} / {echo} |" in out
    assert {p for p, _ in zcsplit.PAIRS} == set(zcsplit.PINGS)
    assert {e for _, e in zcsplit.PAIRS} == set(zcsplit.ECHOES)
    for ping, echo in zcsplit.NATIVE_PAIRS:
        assert f"| {ping} / {echo} | " in out.split("the same ring calls in C")[1]
    assert _affinity() == before


def test_pairs_take_turns_and_each_gives_a_median_and_p90() -> None:
    pairs = [(p, e) for p in zcsplit.PINGS for e in zcsplit.ECHOES]
    got = zcsplit.pingpong(pairs, block=30, cycles=2)
    assert list(got) == pairs
    assert all(0 < median <= p90 for median, p90 in got.values())


def test_native_gives_both_rings_and_every_pair() -> None:
    before = _affinity()
    got = zcsplit.native(block=20, cycles=1)
    assert set(got) == {"shared", "spsc"}
    for ring in got.values():
        assert set(ring) == set(zcsplit.NATIVE_PAIRS) and all(v > 0 for v in ring.values())
    assert _affinity() == before


def test_one_process_gives_every_loop() -> None:
    before = _affinity()
    got = zcsplit.one_process(rounds=100, repeat=1)
    assert set(got) == set(zcsplit.LOOPS) and all(v > 0 for v in got.values())
    assert _affinity() == before


def test_unknown_styles_and_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="ping must be one of"):
        zcsplit.pingpong([("carrier pigeon", "copy")])
    with pytest.raises(ValueError, match="echo one of"):
        zcsplit.pingpong([("copy", "shout back")])
    with pytest.raises(ValueError, match="block >= 10"):
        zcsplit.pingpong([("copy", "copy")], block=5)
    with pytest.raises(ValueError, match="needs a pair"):
        zcsplit.pingpong([])


def test_bad_arguments_exit_with_usage(capsys) -> None:
    with pytest.raises(SystemExit):
        zcsplit.main(["--rounds", "3"])
    assert "--rounds must be >= 10" in capsys.readouterr().err


def test_a_failing_echo_fails_the_run_instead_of_hanging(monkeypatch) -> None:
    def broken(style: str, inp, out, n: int) -> None:
        inp.get_bytes()
        raise OSError("the echo broke")

    monkeypatch.setattr(zcsplit, "_echo", broken)
    for ping in zcsplit.PINGS:
        with pytest.raises(RuntimeError, match="the echo process failed"):
            zcsplit.pingpong([(ping, "copy")], block=100, cycles=1)


def test_a_failing_ping_side_stops_the_echo_instead_of_leaving_it(monkeypatch) -> None:
    """The echo follows the same schedule and would wait for blocks that never come: the
    pinging side kills it, reaps it and raises its own error."""
    real = zcsplit._ping
    calls = []

    def fails_second(style: str, out, back, rounds: int) -> list[int]:
        calls.append(style)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(style, out, back, rounds)

    forked = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(zcsplit, "_ping", fails_second)
    monkeypatch.setattr(os, "fork", fork)
    with pytest.raises(KeyboardInterrupt):
        zcsplit.pingpong([("copy", "copy"), ("in place", "in place")], block=50, cycles=3)
    assert len(forked) == 1
    with pytest.raises(ChildProcessError):
        os.waitpid(forked[0], os.WNOHANG)  # reaped already: no zombie left behind


def test_an_echo_killed_outright_fails_the_run_instead_of_hanging(monkeypatch) -> None:
    """SIGKILL leaves no chance for the empty reply: the echo's SIGCHLD ends the wait."""
    forked: list[int] = []
    real_fork, real_ping = os.fork, zcsplit._ping

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    calls = []

    def kills_the_echo_second(style: str, out, back, rounds: int) -> list[int]:
        calls.append(style)
        if len(calls) == 2:
            os.kill(forked[0], signal.SIGKILL)
        return real_ping(style, out, back, rounds)

    monkeypatch.setattr(os, "fork", fork)
    monkeypatch.setattr(zcsplit, "_ping", kills_the_echo_second)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the echo process failed"):
        zcsplit.pingpong([("copy", "copy"), ("in place", "in place")], block=50, cycles=3)
    assert time.monotonic() - started < 10  # a 100 ms slice or two, with a wide margin
    with pytest.raises(ChildProcessError):
        os.waitpid(forked[0], os.WNOHANG)  # reaped
    assert signal.getsignal(signal.SIGCHLD) in (signal.SIG_DFL, None)  # handler given back
