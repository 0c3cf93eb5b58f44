"""Where the zero-copy calls' time goes, for 64-byte messages: each side apart, then mixed.

``python -m shmipc.bench.zcsplit [--rounds N] [--repeat K]`` runs two measurements that
the main benchmark's rows cannot separate:

* **in one process** (pinned to one CPU, one queue, nothing waits): a message through
  ``put_bytes``/``get_bytes``, then with only the producer side (``reserve`` + fill +
  ``commit``) or only the consumer side (``peek``/``release``, ``peek_next``) zero-copy.
  The differences are each side's own cost, free of any cross-core effect.
* **ping-pong, styles mixed** (two processes, each pinned when the machine has two CPUs):
  the pinging and echoing sides each either copy or work in place, so that a slower round
  trip is put on the side (and direction) that causes it. The pairs take turns in blocks
  within one pair of processes, so that all of them see the same placement of the CPUs.
* **the same ring calls in C** (probes.ring_pingpong, two threads): what the ring protocol
  itself costs each style, with no Python in the loop.

In one process each figure is the median over ``repeat`` interleaved runs of the best of
three loops of ``rounds`` messages; a ping-pong figure is the median of its blocks' medians.
This is a diagnostic for docs/performance.md, not a comparison with peers:
``python -m shmipc.bench`` is that.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..queue import Queue
from . import probes
from .verify import SEQ as _SEQ
from .workloads import _MSG_64 as _MSG  # 64 bytes, the sequence number first

__all__ = [
    "ECHOES",
    "LOOPS",
    "NATIVE_PAIRS",
    "PAIRS",
    "PINGS",
    "main",
    "native",
    "one_process",
    "pingpong",
]

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


def _echo(style: str, inp: Queue[Any], out: Queue[Any], n: int) -> None:
    """Send `n` messages back; `style` says how each is read and how its reply is written."""
    if style in ("copy", "peek+put"):
        recv: Callable[[], Any] = inp.get_bytes if style == "copy" else inp.peek_next
        put = out.put_bytes
        for _ in range(n):
            put(recv())
    else:  # "in place" (peek_next, reserve/commit) or "get+reserve"
        recv = inp.peek_next if style == "in place" else inp.get_bytes
        reserve, commit = out.reserve, out.commit
        for _ in range(n):
            message = recv()
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
#: the pairs main() runs
PAIRS = [("copy", e) for e in ECHOES] + [("in place", "copy"), ("in place", "peek+put")]
PAIRS += [("in place", "in place")]


def pingpong(
    pairs: Sequence[tuple[str, str]], *, block: int = 2_000, cycles: int = 10
) -> dict[tuple[str, str], tuple[float, float]]:
    """(median, p90) round trip in ns of each (ping, echo) pair, the echo in a forked child.

    The pairs take turns in blocks of `block` rounds, `cycles` times over, in one pair of
    processes: on a VM the two CPUs' placement changes within seconds and moves a round
    trip by up to 2x, so pairs measured one after the other would differ by that alone. Each
    figure is the median over the pair's blocks of the block's median (p90). With two CPUs or
    more, this process runs on the first and the echo on the second (with one, both share
    it, and every round trip is two context switches)."""
    pairs = list(pairs)
    for ping, echo in pairs:
        if ping not in PINGS or echo not in ECHOES:
            raise ValueError(f"ping must be one of {PINGS} and echo one of {ECHOES}")
    if not pairs or block < 10 or cycles < 1:
        raise ValueError("pingpong needs a pair, block >= 10 and cycles >= 1")
    cpus = _cpus()
    out: Queue[Any] = Queue(capacity=_CAPACITY)
    back: Queue[Any] = Queue(capacity=_CAPACITY)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 1
        try:
            _pin(cpus, 1)
            for _ in range(cycles):
                for _, echo in pairs:
                    _echo(echo, out, back, block)
            code = 0
        except BaseException:
            # An empty reply: the pinging side fails on it at once instead of waiting forever.
            back.put_bytes(b"", timeout=5)
        finally:
            os._exit(code)
    blocks: dict[tuple[str, str], list[tuple[float, float]]] = {p: [] for p in pairs}
    reaped: list[int] = []  # the echo's wait status, once reaped
    done = False

    def echo_ended(signum: int, frame: Any) -> None:
        # An echo killed outright (SIGKILL, the OOM killer) sends no empty reply, and the
        # pinging side would wait forever. Its SIGCHLD ends the wait instead: a blocked get
        # comes back to Python for signals at least every 100 ms.
        if reaped:
            return
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            reaped.append(status)
            if not done and os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"the echo process failed (status {status})")

    def reap() -> None:
        if reaped:
            return
        if not done:  # the echo may still wait for messages that will not come
            os.kill(pid, signal.SIGKILL)
        reaped.append(os.waitpid(pid, 0)[1])

    # Unwound in reverse order, each step even if one before it raised (the handler may
    # raise up to the moment it is taken back).
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(back.close)
        cleanup.callback(out.close)
        cleanup.callback(reap)
        cleanup.callback(_unpin, cpus)
        try:
            old_handler = signal.signal(signal.SIGCHLD, echo_ended)
            cleanup.callback(signal.signal, signal.SIGCHLD, old_handler)
        except ValueError:  # not the main thread: no handler
            pass
        try:
            _pin(cpus, 0)
            for _ in range(cycles):
                for pair in pairs:
                    lat = sorted(_ping(pair[0], out, back, block))
                    blocks[pair].append((lat[len(lat) // 2], lat[len(lat) * 9 // 10]))
            done = True
        except struct.error as e:  # the echo's empty reply (see above)
            raise RuntimeError(f"the echo process failed ({e})") from None
    if os.waitstatus_to_exitcode(reaped[0]) != 0:
        raise RuntimeError(f"the echo process failed (status {reaped[0]})")
    return {
        p: (statistics.median(m for m, _ in b), statistics.median(q for _, q in b))
        for p, b in blocks.items()
    }


#: the native pairs (probes.ring_pingpong): the same ring calls with no Python in the loop
NATIVE_PAIRS = [("copy", "copy"), ("copy", "in place"), ("in place", "copy")]
NATIVE_PAIRS += [("in place", "in place")]


def native(block: int = 2_000, cycles: int = 20) -> dict[str, dict[tuple[str, str], float]]:
    """Median ns of each NATIVE_PAIRS round trip, for a Queue's ring ("shared": a lock a
    side) and an SPSC one, pinned as pingpong() pins (probes.ring_pingpong)."""
    cpus = _cpus()
    pair = (cpus[0], cpus[1]) if len(cpus) >= 2 else None
    got = {}
    for name, spsc in (("shared", False), ("spsc", True)):
        r = probes.ring_pingpong(NATIVE_PAIRS, block=block, cycles=cycles, spsc=spsc, cpus=pair)
        got[name] = {p: statistics.median(v) for p, v in r["blocks"].items()}
    return got


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
    block = max(args.rounds // 50, 10)
    for (ping, echo), (median, p90) in pingpong(PAIRS, block=block, cycles=args.repeat).items():
        print(f"| {ping} / {echo} | {median:.0f} | {p90:.0f} |")
    print()
    print("| the same ring calls in C, no Python: ping / echo | Queue ring, ns | SPSC ring, ns |")
    print("| --- | ---: | ---: |")
    nat = native(block=block, cycles=max(args.repeat, 5))
    for p in NATIVE_PAIRS:
        print(f"| {p[0]} / {p[1]} | {nat['shared'][p]:.0f} | {nat['spsc'][p]:.0f} |")
    print()
    print(
        "- copy: put_bytes/get_bytes; in place: reserve + fill + commit, and peek_next; "
        "peek+put: the echo reads in place and replies with put_bytes(view); get+reserve: "
        "it reads with get_bytes and replies in place"
    )
    print(
        f"- ping-pong: the pairs take turns in blocks of {block} rounds, {args.repeat} times "
        "over, in one pair of processes (C: two threads); each figure is the median of the "
        "blocks' medians"
    )
    print(f"- in one process: medians of {args.repeat} interleaved runs; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
