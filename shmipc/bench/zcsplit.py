"""Where the zero-copy calls' time goes, for 64-byte messages: each side apart, then mixed.

``python -m shmipc.bench.zcsplit [--rounds N] [--repeat K]`` runs two measurements that
the main benchmark's rows cannot separate:

* **in one process** (pinned to one CPU, one queue, nothing waits): a message through
  ``put_bytes``/``get_bytes``, then with only the producer side (``reserve`` + fill +
  ``commit``) or only the consumer side (``peek``/``release``, ``peek_next``) zero-copy.
  The differences are each side's own cost, free of any cross-core effect.
* **ping-pong, styles mixed** (two processes, each pinned when the machine has two CPUs):
  the pinging and echoing sides each either copy or work in place, so that a slower round
  trip is put on the side (and direction) that causes it.

Each figure is the median over ``repeat`` interleaved runs (in one process: of the best of
three loops of ``rounds`` messages; ping-pong: of each run's median round trip). This is a
diagnostic for docs/performance.md, not a comparison with peers: ``python -m shmipc.bench``
is that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..queue import Queue
from .verify import END as _END
from .verify import SEQ as _SEQ
from .workloads import _MSG_64 as _MSG  # 64 bytes, the sequence number first

__all__ = ["ECHOES", "LOOPS", "PINGS", "main", "one_process", "pingpong"]

_CAPACITY = 1 << 20


def _loop_copy(q: Queue[Any], n: int) -> None:
    put, get, pack, unpack = q.put_bytes, q.get_bytes, _MSG.pack, _SEQ.unpack_from
    for s in range(n):
        put(pack(s))
        unpack(get())


def _loop_reserve(q: Queue[Any], n: int) -> None:
    reserve, commit, get = q.reserve, q.commit, q.get_bytes
    pack_into, unpack, size = _MSG.pack_into, _SEQ.unpack_from, _MSG.size
    for s in range(n):
        pack_into(reserve(size), 0, s)
        commit()
        unpack(get())


def _loop_peek(q: Queue[Any], n: int) -> None:
    put, peek, release, pack, unpack = q.put_bytes, q.peek, q.release, _MSG.pack, _SEQ.unpack_from
    for s in range(n):
        put(pack(s))
        view = peek()
        unpack(view)
        del view
        release()


def _loop_peek_next(q: Queue[Any], n: int) -> None:
    put, peek, pack, unpack = q.put_bytes, q.peek_next, _MSG.pack, _SEQ.unpack_from
    for s in range(n):
        put(pack(s))
        unpack(peek())
    q.release()


#: name -> (what the loop does per message, the loop)
LOOPS: dict[str, tuple[str, Callable[[Queue[Any], int], None]]] = {
    "copy": ("put_bytes(pack(s)); unpack(get_bytes())", _loop_copy),
    "reserve": ("pack_into(reserve(64), 0, s); commit(); unpack(get_bytes())", _loop_reserve),
    "peek": ("put_bytes(pack(s)); v = peek(); unpack(v); del v; release()", _loop_peek),
    "peek_next": ("put_bytes(pack(s)); unpack(peek_next())", _loop_peek_next),
}


def _cpus() -> list[int]:
    """The CPUs this process may run on (read before anything is pinned)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return []


def _pin(cpus: Sequence[int], which: int) -> None:
    """Run this process on cpus[which] alone, if there is one and we may (best effort)."""
    if which < len(cpus):
        try:
            os.sched_setaffinity(0, {cpus[which]})
        except OSError:
            pass


def _unpin(cpus: Sequence[int]) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


def one_process(rounds: int = 100_000, repeat: int = 3) -> dict[str, float]:
    """ns per message of each of LOOPS, in this process, pinned to one CPU."""
    cpus = _cpus()
    _pin(cpus, 0)
    q: Queue[Any] = Queue(capacity=_CAPACITY)
    runs: dict[str, list[float]] = {name: [] for name in LOOPS}
    try:
        for _ in range(repeat):
            for name, (_, loop) in LOOPS.items():
                loop(q, 1_000)  # warm: kept views, caches
                best = min(_timed(loop, q, rounds) for _ in range(3))
                runs[name].append(best / rounds)
    finally:
        q.close()
        _unpin(cpus)
    return {name: statistics.median(v) for name, v in runs.items()}


def _timed(loop: Callable[[Queue[Any], int], None], q: Queue[Any], n: int) -> int:
    t0 = time.perf_counter_ns()
    loop(q, n)
    return time.perf_counter_ns() - t0


# ---- ping-pong, styles mixed ---------------------------------------------------------------


def _echo(style: str, inp: Queue[Any], out: Queue[Any]) -> None:
    """Send every message back until the end mark; `style` says how it is read and written."""
    if style in ("copy", "peek+put"):
        recv: Callable[[], Any] = inp.get_bytes if style == "copy" else inp.peek_next
        put = out.put_bytes
        while True:
            message = recv()
            if len(message) == len(_END) and message == _END:
                break
            put(message)
    else:  # "in place" (peek_next, reserve/commit) or "get+reserve"
        recv = inp.peek_next if style == "in place" else inp.get_bytes
        reserve, commit = out.reserve, out.commit
        while True:
            message = recv()
            if len(message) == len(_END) and message == _END:
                break
            reply = reserve(len(message))
            reply[:] = message
            commit()
    if style in ("peek+put", "in place"):
        inp.release()


def _ping(style: str, out: Queue[Any], back: Queue[Any], rounds: int) -> list[int]:
    """Round-trip latencies (ns) of `rounds` messages, each checked."""
    clock, pack, unpack = time.perf_counter_ns, _MSG.pack, _SEQ.unpack_from
    lat: list[int] = []
    note = lat.append
    bad = 0
    if style == "copy":
        put, get = out.put_bytes, back.get_bytes
        for s in range(rounds):
            t0 = clock()
            put(pack(s))
            got = unpack(get())[0]
            note(clock() - t0)
            bad += got != s
    else:  # in place: reserve + pack_into + commit, then peek_next
        reserve, commit, peek, size = out.reserve, out.commit, back.peek_next, _MSG.size
        pack_into = _MSG.pack_into
        for s in range(rounds):
            t0 = clock()
            view = reserve(size)
            pack_into(view, 0, s)
            commit()
            got = unpack(peek())[0]
            note(clock() - t0)
            bad += got != s
        del view
        back.release()
    if bad:
        raise AssertionError(f"{bad} replies carried the wrong sequence number")
    return lat


#: ping styles and echo styles that pingpong() mixes
PINGS = ("copy", "in place")
ECHOES = ("copy", "peek+put", "get+reserve", "in place")


def pingpong(ping: str, echo: str, rounds: int = 60_000) -> tuple[float, float]:
    """(median, p90) round trip in ns, the echo in a forked child; the first tenth is warm-up.

    With two CPUs or more, this process runs on the first and the echo on the second (with
    one, both share it, and every round trip is two context switches)."""
    if ping not in PINGS or echo not in ECHOES:
        raise ValueError(f"ping must be one of {PINGS} and echo one of {ECHOES}")
    cpus = _cpus()
    out: Queue[Any] = Queue(capacity=_CAPACITY)
    back: Queue[Any] = Queue(capacity=_CAPACITY)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 1
        try:
            _pin(cpus, 1)
            _echo(echo, out, back)
            code = 0
        except BaseException:
            # An empty reply: the pinging side fails on it at once instead of waiting forever.
            back.put_bytes(b"", timeout=5)
        finally:
            os._exit(code)
    try:
        _pin(cpus, 0)
        lat = _ping(ping, out, back, rounds)
    except struct.error as e:  # the echo's empty reply (see above)
        raise RuntimeError(f"the echo process failed ({e})") from None
    finally:
        _unpin(cpus)
        out.put_bytes(_END)
        _, status = os.waitpid(pid, 0)
        out.close()
        back.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the echo process failed (status {status})")
    lat = sorted(lat[rounds // 10 :])
    return float(lat[len(lat) // 2]), float(lat[len(lat) * 9 // 10])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shmipc.bench.zcsplit", description=__doc__)
    parser.add_argument(
        "--rounds", type=int, default=100_000, help="messages a loop (default 100,000)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="interleaved runs (default 5)")
    args = parser.parse_args(argv)
    if args.rounds < 10 or args.repeat < 1:
        parser.error("--rounds must be >= 10 and --repeat >= 1")
    print("| in one process, pinned (per message) | ns | vs copy |")
    print("| --- | ---: | ---: |")
    single = one_process(args.rounds, args.repeat)
    for name, (what, _) in LOOPS.items():
        print(f"| `{what}` | {single[name]:.0f} | {single[name] - single['copy']:+.0f} |")
    print()
    print("| ping-pong: ping / echo | median ns | p90 ns |")
    print("| --- | ---: | ---: |")
    pairs = [("copy", "copy"), ("copy", "peek+put"), ("copy", "get+reserve"), ("copy", "in place")]
    pairs += [("in place", "copy"), ("in place", "in place")]
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {p: [] for p in pairs}
    for _ in range(args.repeat):
        for p in pairs:
            runs[p].append(pingpong(*p, rounds=max(args.rounds * 6 // 10, 10)))
    for (ping, echo), r in runs.items():
        median = statistics.median(m for m, _ in r)
        p90 = statistics.median(p for _, p in r)
        print(f"| {ping} / {echo} | {median:.0f} | {p90:.0f} |")
    print()
    print(
        "- copy: put_bytes/get_bytes; in place: reserve + fill + commit, and peek_next; "
        "peek+put: the echo reads in place and replies with put_bytes(view); get+reserve: "
        "it reads with get_bytes and replies in place"
    )
    print(f"- medians of {args.repeat} interleaved runs; pid {os.getpid()}, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
