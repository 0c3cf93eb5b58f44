"""Shared helpers of the test suite (imported as ``from _procs import ...``).

* ``Procs``: forked children that always end (reaped by ``join``, SIGKILLed at teardown by
  the ``procs`` fixture of tests/conftest.py);
* ``Child`` and ``fork_call``: a forked child that reports through a pipe;
* waiting on other processes: ``wait_for``, ``asleep_in_futex``, ``wait_stopped``, pipe reads;
* message framing: every message names its producer and sequence number and carries a
  fill pattern derived from both, so a consumer can tell a well-formed message from a torn
  or stale one;
* the producer and consumer bodies of the stress tests. They are module-level functions so
  that children started with the ``spawn`` context can import them by name (pytest puts
  this directory on ``sys.path``, and multiprocessing passes ``sys.path`` on to them).
"""

from __future__ import annotations

import os
import pickle
import queue
import random
import select
import signal
import struct
import sys
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from shmipc import Region, ShmipcError
from shmipc._native import lib

# ---- children ---------------------------------------------------------------------------------


class Procs:
    """Forked children that always end: reaped by ``join``/``kill``, SIGKILLed at teardown."""

    def __init__(self, join_timeout: float = 60.0) -> None:
        self.live: set[int] = set()
        self.join_timeout = join_timeout  # the default of ``join``

    def fork(self, fn: Callable[[], object]) -> int:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                fn()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        self.live.add(pid)
        return pid

    def join(self, pid: int, timeout: float | None = None) -> int:
        """Wait for the child to end; its exit code (negative: the signal that ended it).
        A child still running after ``timeout`` (default: ``join_timeout``) is killed and the
        test fails."""
        if timeout is None:
            timeout = self.join_timeout
        code = self.wait(pid, timeout)
        if code is None:
            self.kill(pid)
            raise AssertionError(f"child {pid} still running after {timeout} s")
        return code

    def wait(self, pid: int, timeout: float) -> int | None:
        """Like join, but None (the child left running) if it did not end in time."""
        fd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        if not ready:
            return None
        _, status = os.waitpid(pid, 0)
        self.live.discard(pid)
        return os.waitstatus_to_exitcode(status)

    def join_rusage(self, pid: int, timeout: float = 60.0) -> tuple[int, Any]:
        """join, and the child's resource usage (os.wait4)."""
        fd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        if not ready:
            self.kill(pid)
            raise AssertionError(f"child {pid} still running after {timeout} s")
        _, status, usage = os.wait4(pid, 0)
        self.live.discard(pid)
        return os.waitstatus_to_exitcode(status), usage

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` (SIGKILL by default), SIGCONT in case it is stopped, and reap."""
        try:
            os.kill(pid, sig)
            if sig != signal.SIGKILL:
                os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
        self.live.discard(pid)
        return os.waitstatus_to_exitcode(status)

    def kill_all(self) -> None:
        for pid in list(self.live):
            self.kill(pid)


def proc_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (R, S, T, Z, ...), or "" if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    return stat[stat.rindex(b")") + 2 :].split()[0].decode()


def wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Wait until a SIGSTOPped child is really stopped (state T)."""
    deadline = time.monotonic() + timeout
    while proc_state(pid) != "T":
        if time.monotonic() > deadline:
            raise AssertionError(f"child {pid} did not stop (state {proc_state(pid)!r})")
        time.sleep(0.001)


def asleep_in_futex(pid: int) -> bool:
    """True while the (single-threaded) child sleeps in a futex wait."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return "futex" in f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a condition another process makes true (returns as soon as it holds)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.0005)


def read_exact(fd: int, n: int, timeout: float) -> bytes:
    """Read n bytes from a pipe, waiting at most ``timeout`` in all; b"" at EOF."""
    deadline = time.monotonic() + timeout
    out = b""
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"pipe: got {len(out)} of {n} bytes within {timeout} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, n - len(out))
            if not chunk:
                return out
            out += chunk
    return out


CHILD_TIMEOUT = 30.0  # default wait for a ``Child`` (or ``wait_exit``, ``read_to_eof``)


def read_exact_or_fail(fd: int, n: int, timeout: float = CHILD_TIMEOUT) -> bytes:
    """Like ``read_exact``, but the pipe closing before ``n`` bytes fails too."""
    out = read_exact(fd, n, timeout)
    if len(out) < n:
        raise AssertionError(f"pipe closed after {len(out)} of {n} bytes")
    return out


def read_to_eof(fd: int, timeout: float = CHILD_TIMEOUT) -> bytes:
    """Everything a pipe carries until its writers close it, waiting at most ``timeout``
    for each chunk."""
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise AssertionError(f"pipe still open after {timeout} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            return out
        out += chunk


def wait_exit(pid: int, timeout: float = CHILD_TIMEOUT) -> int:
    """Wait (without polling) for child ``pid``; return its exit code, or -signal.

    A child still running after ``timeout`` is killed and the test fails, rather than hang.
    """
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"child {pid} still running after {timeout} s: killed it")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class Child:
    """A forked child running ``fn(report_fd)``; ``finish()`` returns (exit code, report).

    The child leaves with ``os._exit`` (0 when ``fn`` returned, 1 with the traceback on
    stderr when it raised), so no atexit handler or pytest machinery of the parent runs in it.
    """

    def __init__(self, fn: Callable[[int], None]) -> None:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(rfd)
                fn(wfd)
                code = 0
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(code)
        os.close(wfd)
        self.pid = pid
        self.fd = rfd
        self._reaped = False
        self._closed = False

    def finish(self, timeout: float = CHILD_TIMEOUT) -> tuple[int, bytes]:
        try:
            reported = read_to_eof(self.fd, timeout)  # EOF when the child exits (or dies)
        except BaseException:
            self.kill()
            raise
        self._reaped = True  # wait_exit reaps it, whether it exits or has to be killed
        try:
            return wait_exit(self.pid, timeout), reported
        finally:
            self.kill()  # only closes the pipe now

    def kill(self) -> None:
        """Kill and reap the child unless it was reaped already; close the pipe."""
        if not self._reaped:
            self._reaped = True
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ChildProcessError, ProcessLookupError):
                pass
        if not self._closed:
            self._closed = True
            os.close(self.fd)


def fork_call(fn: Callable[[int], None], timeout: float = CHILD_TIMEOUT) -> tuple[int, bytes]:
    """Run ``fn(report_fd)`` in a forked child; return (exit code, bytes it reported)."""
    return Child(fn).finish(timeout)


# ---- messages ---------------------------------------------------------------------------------

MAGIC = 0xA5
HDR = struct.Struct("<BxxxIQ")  # magic, producer id, sequence number; then the fill
STOP = 0xFFFFFFFF  # the producer id of a stop message


def fill_byte(pid: int, seq: int) -> int:
    return (pid * 151 + seq * 7 + 1) & 0xFF


def frame(pid: int, seq: int, n: int = 0) -> bytes:
    """A message of producer ``pid``: header, then ``n`` fill bytes."""
    return HDR.pack(MAGIC, pid, seq) + bytes((fill_byte(pid, seq),)) * n


def reserve_in_halves(chan: Any, msg: bytes, linger: float = 0.0) -> None:
    """Send ``msg`` through a reservation (a Ring or a Queue), written in two halves with
    ``linger`` seconds of busy waiting between them, inside the claim, where kills and stops
    land; then commit."""
    view = chan.reserve(len(msg), timeout=5)
    half = len(msg) // 2
    view[:half] = msg[:half]
    until = time.perf_counter() + linger
    while time.perf_counter() < until:
        pass
    view[half:] = msg[half:]
    del view
    chan.commit()


def parse(buf: Any) -> tuple[int, int]:
    """(producer id, sequence number) of a message; AssertionError if it is malformed."""
    if len(buf) < HDR.size:
        raise AssertionError(f"message of {len(buf)} bytes is too short")
    magic, pid, seq = HDR.unpack_from(buf)
    if magic != MAGIC:
        raise AssertionError(f"bad magic {magic:#x} in a message of {len(buf)} bytes")
    n = len(buf) - HDR.size
    if n and buf[HDR.size :] != bytes((fill_byte(pid, seq),)) * n:
        raise AssertionError(f"torn message: producer {pid} seq {seq}, {n} fill bytes")
    return pid, seq


def obj_message(pid: int, seq: int, n: int) -> tuple[int, int, bytes]:
    """The Queue's object form of a message (goes through the codec as a tuple)."""
    return (pid, seq, bytes((fill_byte(pid, seq),)) * n)


def parse_obj(obj: Any) -> tuple[int, int]:
    """(producer id, sequence number) of whatever a Queue consumer got."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return parse(obj)
    if not isinstance(obj, tuple) or len(obj) != 3:
        raise AssertionError(f"unexpected object {type(obj).__name__} from the queue")
    pid, seq, fill = obj
    if fill != bytes((fill_byte(pid, seq),)) * len(fill):
        raise AssertionError(f"torn object: producer {pid} seq {seq}")
    return pid, seq


# ---- stress bodies ----------------------------------------------------------------------------

TIMEOUT = 30.0  # every blocking call in a stress child

# Producer ops: put (bytes), put_obj (Queue: a tuple through the codec), put_many (a batch of
# 1-16, for a Queue some of them tuples), reserve (reserve + fill + commit), spill (Queue: a
# message larger than half the ring; with spill, put_many batches also carry a few).
# Consumer ops: get, get_many (2-16), peek (peek + parse + release), peek_next (Queue: release
# the record peeked before, if any, and peek; the last one is released before any other op).


def _size(rng: random.Random, max_n: int) -> int:
    r = rng.random()
    if r < 0.70:
        return rng.randint(0, min(40, max_n))
    if r < 0.96:
        return rng.randint(0, min(300, max_n))
    return rng.randint(0, max_n)


def stress_producer(
    kind: str, chan: Any, pid: int, count: int, ops: tuple[str, ...], seed: int
) -> None:
    """Put ``count`` messages of producer ``pid`` on a Ring or Queue, each call's op drawn
    from ``ops`` (see above)."""
    rng = random.Random(seed)
    is_queue = kind == "queue"
    spill = "spill" in ops
    cap = chan.capacity
    # Room for the msgpack header of a bytes frame (<= 5 bytes) and the message header.
    max_n = min(cap // 2 - 8 - 8 - HDR.size, 16_000)
    seq = 0
    while seq < count:
        op = rng.choice(ops)
        if op == "spill" and rng.random() > 0.05:
            op = "put"  # spills are costly: a few percent of the draws
        if op == "put":
            chan.put(frame(pid, seq, _size(rng, max_n)), timeout=TIMEOUT)
            seq += 1
        elif op == "put_obj":
            chan.put(obj_message(pid, seq, _size(rng, max_n)), timeout=TIMEOUT)
            seq += 1
        elif op == "spill":
            n = rng.randint(cap // 2, cap // 2 + 4096)
            if rng.random() < 0.5:
                chan.put(frame(pid, seq, n), timeout=TIMEOUT)
            else:
                chan.put_bytes(frame(pid, seq, n), timeout=TIMEOUT)
            seq += 1
        elif op == "put_many":
            k = min(rng.randint(1, 16), count - seq)
            items: list[Any] = []
            for i in range(k):
                n = _size(rng, max_n)
                if is_queue and spill and rng.random() < 0.01:
                    n = rng.randint(cap // 2, cap // 2 + 4096)  # spilled inside a batch
                if is_queue and rng.random() < 0.3:
                    items.append(obj_message(pid, seq + i, n))
                else:
                    items.append(frame(pid, seq + i, n))
            chan.put_many(items, timeout=TIMEOUT)
            seq += k
        else:  # reserve
            msg = frame(pid, seq, _size(rng, max_n))
            view = chan.reserve(len(msg), timeout=TIMEOUT)
            view[:] = msg
            chan.commit()
            seq += 1


def _decode(kind: str, chan: Any, item: Any) -> tuple[int, int]:
    return parse_obj(item) if kind == "queue" else parse(item)


def decode_view(kind: str, chan: Any, view: memoryview) -> tuple[int, int]:
    """A peeked payload: the ring's bytes; for a Queue, a raw message or a codec frame."""
    if kind == "queue" and (len(view) == 0 or view[0] != MAGIC):
        return parse_obj(chan.codec.decode(view))
    return parse(view)


def _stop_message(kind: str, chan: Any) -> None:
    if kind == "queue":
        chan.put_bytes(frame(STOP, 0), timeout=TIMEOUT)
    else:
        chan.put(frame(STOP, 0), timeout=TIMEOUT)


def send_stops(kind: str, chan: Any, n: int) -> None:
    for _ in range(n):
        _stop_message(kind, chan)


def stress_consumer(kind: str, chan: Any, ops: tuple[str, ...], seed: int, out_path: str) -> None:
    """Take messages until a stop message; write the stream received, in order, to
    ``out_path`` (pickled: {"stream": packed (pid << 32 | seq), "ops": ..., "error": ...})."""
    stream = array("Q")
    ops_done: Counter[str] = Counter()
    error = None
    try:
        rng = random.Random(seed)
        holding = False  # a record peeked by peek_next, not yet released
        while True:
            op = rng.choice(ops)
            ops_done[op] += 1
            if holding and op != "peek_next":
                chan.release()
                holding = False
            if op == "peek_next":
                view = chan.peek_next(timeout=TIMEOUT)
                holding = True
                got = [decode_view(kind, chan, view)]
                del view
            elif op == "get":
                got = [_decode(kind, chan, chan.get(timeout=TIMEOUT))]
            elif op == "get_many":
                batch = chan.get_many(rng.randint(2, 16), timeout=TIMEOUT)
                got = [_decode(kind, chan, x) for x in batch]
            else:
                view = chan.peek(timeout=TIMEOUT)
                try:
                    got = [decode_view(kind, chan, view)]
                finally:
                    chan.release()
            stops = 0
            for pid, seq in got:
                if pid == STOP:
                    stops += 1
                    continue
                if stops:
                    raise AssertionError("a message came after a stop message")
                stream.append(pid << 32 | seq)
            if stops and holding:
                chan.release()
                holding = False
            if stops:
                # Stops come after all data: any extra one in a batch is another consumer's.
                send_stops(kind, chan, stops - 1)
                break
    except BaseException:
        error = traceback.format_exc()
        raise
    finally:
        with open(out_path, "wb") as f:
            pickle.dump({"stream": stream.tobytes(), "ops": dict(ops_done), "error": error}, f)


def load_result(path: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        res = pickle.load(f)
    stream = array("Q")
    stream.frombytes(res["stream"])
    res["stream"] = stream
    return res


def check_streams(streams: Iterable[array], counts: list[int]) -> list[str]:
    """Problems with what the consumers got: loss, duplicates, strays, order per producer
    within each consumer's stream. Empty when all is well."""
    problems: list[str] = []
    seen: Counter[int] = Counter()
    for ci, stream in enumerate(streams):
        last: dict[int, int] = {}
        for v in stream:
            p, s = v >> 32, v & 0xFFFFFFFF
            if s <= last.get(p, -1):
                problems.append(f"consumer {ci}: producer {p} seq {s} came after seq {last[p]}")
            last[p] = s
            seen[v] += 1
    dups = sorted(v for v, c in seen.items() if c > 1)
    if dups:
        some = [(v >> 32, v & 0xFFFFFFFF) for v in dups[:5]]
        problems.append(f"{len(dups)} duplicated, e.g. {some}")
    strays = [v for v in seen if v >> 32 >= len(counts) or v & 0xFFFFFFFF >= counts[v >> 32]]
    if strays:
        problems.append(f"{len(strays)} never sent, e.g. {strays[:5]}")
    missing = [(p, s) for p, n in enumerate(counts) for s in range(n) if (p << 32 | s) not in seen]
    if missing:
        problems.append(f"{len(missing)} lost, e.g. {missing[:5]}")
    return problems[:20]


def note_in_order(got: list[tuple[int, int]], expect: dict[int, int], errors: list[str]) -> bool:
    """Check a batch of (producer, seq) a consumer got: each producer's sequence numbers must
    come as 0, 1, 2, ... (``expect`` holds the next one of each; the first 20 departures go to
    ``errors``). True when the batch ends with a stop message."""
    for pid, seq in got:
        if pid == STOP:
            continue
        if seq != expect.get(pid, 0) and len(errors) < 20:
            errors.append(f"producer {pid}: seq {seq}, expected {expect.get(pid, 0)}")
        expect[pid] = seq + 1
    return got[-1][0] == STOP


def lost_commits(committed: Sequence[Any], expect: dict[int, int]) -> list[tuple[int, int, int]]:
    """(producer, last committed, last received) of each producer whose committed messages
    (``committed[i]``: an AtomicCounter, -1 for none) did not all arrive."""
    return [
        (i, c.load(), expect.get(i, 0) - 1)
        for i, c in enumerate(committed)
        if expect.get(i, 0) - 1 < c.load()
    ]


def run_stress(
    kind: str,
    chan: Any,
    method: str,
    n_producers: int,
    n_consumers: int,
    producer_ops: tuple[str, ...],
    consumer_ops: tuple[str, ...],
    total: int,
    out_dir: str,
    seed: int,
) -> dict[str, Any]:
    """Run producers and consumers (multiprocessing, start method ``method``) over ``chan``;
    stop the consumers with one stop message each once every producer is done. Returns the
    consumers' results, the per-producer counts and the problems found (empty: all good)."""
    import multiprocessing

    ctx = multiprocessing.get_context(method)
    counts = [total // n_producers + (i < total % n_producers) for i in range(n_producers)]
    paths = [os.path.join(out_dir, f"consumer{c}.pickle") for c in range(n_consumers)]
    consumers = [
        ctx.Process(
            target=stress_consumer,
            args=(kind, chan, consumer_ops, seed * 1000 + 500 + c, paths[c]),
            daemon=True,
        )
        for c in range(n_consumers)
    ]
    producers = [
        ctx.Process(
            target=stress_producer,
            args=(kind, chan, p, counts[p], producer_ops, seed * 1000 + p),
            daemon=True,
        )
        for p in range(n_producers)
    ]
    started = time.monotonic()
    try:
        for proc in consumers + producers:
            proc.start()
        for proc in producers:
            proc.join(90)
            assert proc.exitcode == 0, f"producer exit code {proc.exitcode}"
        send_stops(kind, chan, n_consumers)
        for proc in consumers:
            proc.join(90)
        results = [load_result(p) if os.path.exists(p) else None for p in paths]
        for proc, res in zip(consumers, results, strict=True):
            detail = res["error"] if res else "no result file"
            assert proc.exitcode == 0, f"consumer exit code {proc.exitcode}: {detail}"
    finally:
        for proc in consumers + producers:
            if proc.is_alive():
                proc.kill()
                proc.join(10)
    streams = [res["stream"] for res in results if res]
    return {
        "results": results,
        "counts": counts,
        "problems": check_streams(streams, counts),
        "elapsed": time.monotonic() - started,
    }


# ---- scribbling ------------------------------------------------------------------------------

TYPED_ERRORS = (ShmipcError, queue.Empty, queue.Full)


def typed_errors_only(
    ops: Sequence[Callable[[random.Random], object]], seconds: float, seed: int
) -> None:
    """Call ops drawn at random for ``seconds``; exits 3 if any error was not a typed one
    (the first of each kind is printed), after going on to the end: a crash still shows as
    a signal."""
    rng = random.Random(seed)
    untyped: set[str] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            ops[rng.randrange(len(ops))](rng)
        except TYPED_ERRORS:
            pass
        except Exception as exc:
            if type(exc).__name__ not in untyped:
                untyped.add(type(exc).__name__)
                traceback.print_exc()
    if untyped:
        os._exit(3)


def check_scribbled(
    procs: Procs,
    name: str,
    read_ops: Sequence[Callable[[random.Random], object]],
    write_ops: Sequence[Callable[[random.Random], object]],
    locks: bool,
    seed: int,
    seconds: float = 2.0,
) -> None:
    """A reader (``read_ops``) and a writer (``write_ops``) use segment ``name`` while
    another process scribbles over it (see ``scribble``): both must see typed errors only,
    and nobody may crash or hang."""
    reader = procs.fork(lambda: typed_errors_only(read_ops, seconds + 0.5, 1))
    writer = procs.fork(lambda: typed_errors_only(write_ops, seconds + 0.5, 2))
    scribbler = procs.fork(lambda: scribble(name, seconds, locks, seed))
    assert procs.join(scribbler, 30) == 0
    codes = {"reader": procs.join(reader, 30), "writer": procs.join(writer, 30)}
    assert codes == {"reader": 0, "writer": 0}, (
        f"exit codes {codes} (negative: killed by that signal; 3: an untyped error, "
        "traceback above)"
    )


_P_LOCK = range(lib.SHMIPC_RING_OFF_P_LOCK, lib.SHMIPC_RING_OFF_P_LOCK + lib.SHMIPC_LOCK_SIZE)
_C_LOCK = range(lib.SHMIPC_RING_OFF_C_LOCK, lib.SHMIPC_RING_OFF_C_LOCK + lib.SHMIPC_LOCK_SIZE)
_POSITIONS = (
    lib.SHMIPC_RING_OFF_P_TAIL,
    lib.SHMIPC_RING_OFF_P_HEAD_CACHE,
    lib.SHMIPC_RING_OFF_C_HEAD,
    lib.SHMIPC_RING_OFF_C_TAIL_CACHE,
    lib.SHMIPC_RING_OFF_P_CLAIM,
    lib.SHMIPC_RING_OFF_C_PEEK,
)
_U64 = struct.Struct("<Q")


def scribble(name: str, seconds: float, locks: bool, seed: int) -> None:
    """Attach the segment by name and write garbage over it: random bytes anywhere (but the
    two locks unless ``locks``), plausible-looking positions and record headers, and now and
    then a consistent-looking reset so that the readers get going again."""
    rng = random.Random(seed)
    region = Region.attach(name)
    buf = region.buffer
    cap = len(buf) - lib.SHMIPC_RING_HEADER_SIZE
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        what = rng.random()
        if what < 0.35:
            off = rng.randrange(len(buf) - 16)
            if not locks and (
                (off + 16 > _P_LOCK.start and off < _P_LOCK.stop)
                or (off + 16 > _C_LOCK.start and off < _C_LOCK.stop)
            ):
                continue
            k = rng.randint(1, 16)
            buf[off : off + k] = os.urandom(k)
        elif what < 0.55 and locks:
            # inside one lock: its word (holder thread id | start time) or sleeper count
            lock = rng.choice((_P_LOCK, _C_LOCK))
            off = lock.start + rng.randrange(len(lock))
            k = rng.randint(1, min(8, lock.stop - off))
            buf[off : off + k] = os.urandom(k)
        elif what < 0.75:
            base = (rng.randrange(1 << 20) + 1) * 8
            off = rng.choice(_POSITIONS)
            _U64.pack_into(buf, off, base + rng.choice((0, 8, -8, cap, cap + 8, 1, 1 << 40)))
        elif what < 0.9:
            idx = lib.SHMIPC_RING_HEADER_SIZE + rng.randrange(cap // 8) * 8
            length = rng.choice((0, 8, cap // 2, cap, 1 << 31, rng.randrange(1 << 32)))
            rtype = rng.choice((0, 1, 0xFFFF, 0x10000, 0xFFFFFFFF))
            _U64.pack_into(buf, idx, length | rtype << 32)
        else:
            base = rng.randrange(1 << 20) * 8
            for off in _POSITIONS[:4]:
                _U64.pack_into(buf, off, base)
        time.sleep(rng.uniform(0, 0.0005))
