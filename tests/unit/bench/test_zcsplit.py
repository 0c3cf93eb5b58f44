"""The zero-copy split (shmipc.bench.zcsplit) runs every loop and every ping/echo pair at a
tiny size, checks each reply, and leaves this process's CPU affinity as it found it; the
numbers are not judged here (docs/performance.md has them)."""

from __future__ import annotations

import os

import pytest

from shmipc.bench import zcsplit

pytestmark = pytest.mark.timeout(120)


def _affinity() -> set[int] | None:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def test_every_loop_and_pair_runs_and_prints_its_row(capsys) -> None:
    before = _affinity()
    assert zcsplit.main(["--rounds", "200", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for what, _ in zcsplit.LOOPS.values():
        assert f"| `{what}` |" in out
    for ping in zcsplit.PINGS:
        assert f"| {ping} / in place |" in out
    for echo in zcsplit.ECHOES:
        assert f"| copy / {echo} |" in out
    assert _affinity() == before


@pytest.mark.parametrize("echo", zcsplit.ECHOES)
@pytest.mark.parametrize("ping", zcsplit.PINGS)
def test_each_pair_gives_a_median_and_p90(ping: str, echo: str) -> None:
    median, p90 = zcsplit.pingpong(ping, echo, rounds=100)
    assert 0 < median <= p90


def test_one_process_gives_every_loop() -> None:
    before = _affinity()
    got = zcsplit.one_process(rounds=100, repeat=1)
    assert set(got) == set(zcsplit.LOOPS) and all(v > 0 for v in got.values())
    assert _affinity() == before


def test_unknown_styles_are_refused() -> None:
    with pytest.raises(ValueError, match="ping must be one of"):
        zcsplit.pingpong("carrier pigeon", "copy")
    with pytest.raises(ValueError, match="echo one of"):
        zcsplit.pingpong("copy", "shout back")


def test_bad_arguments_exit_with_usage(capsys) -> None:
    with pytest.raises(SystemExit):
        zcsplit.main(["--rounds", "3"])
    assert "--rounds must be >= 10" in capsys.readouterr().err


def test_a_failing_echo_fails_the_run_instead_of_hanging(monkeypatch) -> None:
    def broken(style: str, inp, out) -> None:
        inp.get_bytes()
        raise OSError("the echo broke")

    monkeypatch.setattr(zcsplit, "_echo", broken)
    for ping in zcsplit.PINGS:
        with pytest.raises(RuntimeError, match="the echo process failed"):
            zcsplit.pingpong(ping, "copy", rounds=100)
