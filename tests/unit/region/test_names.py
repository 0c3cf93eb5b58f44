"""Segment names and attach timeouts are checked at every entry point, before any system call.

A NUL in a name used to crash posix_ipc (SIGSEGV), so every bad name runs in a forked child
that must come back with a ValueError, never die by a signal.
"""

from __future__ import annotations

import math
import os
import pickle
import signal

import posix_ipc
import pytest
from _procs import fork_call
from region_helpers import segment_exists

from shmipc import AtomicCounter, Barrier, CorruptedError, Event, Lock, Queue, Region, Semaphore
from shmipc import queue as queue_mod
from shmipc import region as region_mod
from shmipc import ring as ring_mod
from shmipc import sync as sync_mod
from shmipc._names import MAX_NAME_BYTES, check_name
from shmipc._spill import _REF
from shmipc.layout import Kind
from shmipc.queue import T_SPILL_OBJ
from shmipc.ring import Ring

pytestmark = pytest.mark.timeout(120)


class _Reduce:
    """Pickles as ``fn(*args)``: what unpickling a handle with this name would run."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _unpickle(fn, *args):
    return pickle.loads(pickle.dumps(_Reduce(fn, *args)))


ENTRY_POINTS = {
    "Region.create": lambda n: Region.create(64, name=n),
    "Region.attach": lambda n: Region.attach(n),
    "Ring.create": lambda n: Ring.create(4096, name=n),
    "Ring.attach": lambda n: Ring.attach(n),
    "Queue": lambda n: Queue(capacity=4096, name=n),
    "Queue.attach": lambda n: Queue.attach(n),
    "AtomicCounter.create": lambda n: AtomicCounter.create(n),
    "AtomicCounter.attach": lambda n: AtomicCounter.attach(n),
    "Event.create": lambda n: Event.create(n),
    "Event.attach": lambda n: Event.attach(n),
    "Semaphore.create": lambda n: Semaphore.create(n),
    "Semaphore.attach": lambda n: Semaphore.attach(n),
    "Lock.create": lambda n: Lock.create(n),
    "Lock.attach": lambda n: Lock.attach(n),
    "Barrier.create": lambda n: Barrier.create(n, parties=2),
    "Barrier.attach": lambda n: Barrier.attach(n),
    "unpickle Region": lambda n: _unpickle(region_mod._attach_by_name, n),
    "unpickle Ring": lambda n: _unpickle(ring_mod._attach_ring, n, Kind.RING),
    "unpickle placed Ring": lambda n: _unpickle(ring_mod._attach_ring_at, n, 0),
    "unpickle Queue": lambda n: _unpickle(queue_mod._attach_queue, n, None, True),
    "unpickle Event": lambda n: _unpickle(sync_mod._reattach, Event, n, 0, True),
    "unpickle placed Lock": lambda n: _unpickle(sync_mod._reattach, Lock, n, 0, False),
    "unlink by name": lambda n: region_mod._unlink_quietly(n),
}

BAD_NAMES = {
    "NUL": "a\x00b",
    "only NUL": "\x00",
    "NUL after slash": "/\x00",
    "slash": "/",
    "inner slash": "a/b",
    "two slashes": "//a",
    "dotdot": "..",
    "dot": ".",
    "slash dotdot": "/..",
    "hidden": ".hidden",
    "empty": "",
    "too long": "x" * (MAX_NAME_BYTES + 1),
    "too long in bytes": "é" * 150,
    "non-ASCII": "caf\u00e9",
    "CJK": "\u540d\u524d",
    "newline": "a\nb",
    "escape": "a\x1b[31mred",
    "DEL": "a\x7f",
    "tab": "a\tb",
    "space": "a b",
    "surrogate": "a\udcff",
}


@pytest.mark.parametrize("bad", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_bad_names_are_value_errors_at_every_entry_point(entry, bad):
    def child(report_fd: int) -> None:
        try:
            ENTRY_POINTS[entry](bad)
        except Exception as exc:
            os.write(report_fd, f"{type(exc).__name__}: {exc}".encode(errors="replace"))
        else:
            os.write(report_fd, b"accepted")

    code, reported = fork_call(child)
    assert code != -signal.SIGSEGV, f"{entry}({bad!r}) crashed the interpreter"
    assert code == 0, (code, reported)
    assert reported.startswith(b"ValueError: invalid segment name"), reported


@pytest.mark.parametrize(
    "bad, rule",
    [
        ("a\x00b", "character '\\x00' is not allowed"),
        ("a/b", "character '/' is not allowed"),
        ("..", "must not start with '.'"),
        ("", "it is empty"),
        ("x" * (MAX_NAME_BYTES + 1), f"more than the limit of {MAX_NAME_BYTES}"),
        ("é" * 150, f"more than the limit of {MAX_NAME_BYTES} bytes"),
        ("a\x1b", "character '\\x1b' is not allowed"),
    ],
)
def test_the_error_names_the_rule(bad, rule):
    with pytest.raises(ValueError, match="invalid segment name") as info:
        check_name(bad)
    assert rule in str(info.value)
    assert "\x00" not in str(info.value) and "\x1b" not in str(info.value)  # escaped


def test_a_long_bad_name_is_cut_short_in_the_message():
    with pytest.raises(ValueError) as info:
        check_name("x" * 100_000)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("bad", [None, b"name", 42])
def test_a_name_that_is_not_a_str_is_a_type_error(bad):
    with pytest.raises(TypeError, match="must be a str"):
        Region.attach(bad)


@pytest.mark.parametrize(
    "good", ["a{p}", "A-b_c.d{p}", "a..b{p}", "-dash{p}", "9{p}lives", "trailing{p}.", "long"]
)
def test_valid_names_round_trip(good):
    p = f"{os.getpid()}x{id(good) % 1000}"
    name = good.format(p=p) if good != "long" else p + "x" * (MAX_NAME_BYTES - len(p))
    with Region.create(64, name=name) as r:
        assert r.name == name and segment_exists(name)
        with Region.attach("/" + name) as a:  # one leading slash is the POSIX spelling
            assert a.name == name
    assert not segment_exists(name)


# ---- attach timeouts ---------------------------------------------------------------------

ATTACHES = {
    "Region.attach": lambda n, **kw: Region.attach(n, **kw),
    "Ring.attach": lambda n, **kw: Ring.attach(n, kind=Kind.QUEUE, **kw),
    "Queue.attach": lambda n, **kw: Queue.attach(n, **kw),
    "Event.attach": lambda n, **kw: Event.attach(n, **kw),
}


@pytest.mark.parametrize("timeout", [math.nan, -1.0, -math.inf, -0.001])
@pytest.mark.parametrize("attach", list(ATTACHES))
def test_attach_refuses_nan_and_negative_timeouts(attach, timeout, shm_name):
    if attach == "Event.attach":
        handle = Event.create(shm_name)
    else:
        handle = Queue(capacity=4096, name=shm_name)
    try:
        with pytest.raises(ValueError, match="timeout"):
            ATTACHES[attach](shm_name, timeout=timeout)
    finally:
        handle.close()


def test_attach_accepts_zero_and_infinite_timeouts(shm_name):
    with Queue(capacity=4096, name=shm_name):
        for timeout in (0, 0.0, math.inf, 5):
            Queue.attach(shm_name, timeout=timeout).close()
        with pytest.raises(TypeError, match="timeout"):
            Region.attach(shm_name, timeout="5")


def test_nan_timeout_on_a_segment_never_sized_does_not_loop(shm_name):
    """The old loop compared against a NaN deadline, which is never reached: forever."""
    shm = posix_ipc.SharedMemory("/" + shm_name, posix_ipc.O_CREX, mode=0o600, size=0)
    shm.close_fd()
    try:

        def child(report_fd: int) -> None:
            try:
                Region.attach(shm_name, timeout=math.nan)
            except ValueError:
                os.write(report_fd, b"refused")

        code, reported = fork_call(child, timeout=20)
        assert (code, reported) == (0, b"refused")
    finally:
        posix_ipc.unlink_shared_memory("/" + shm_name)


# ---- names read from shared memory -------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [b"shmipc_spill_\x00x", b"shmipc_spill_a\nb", b"shmipc_spill_\x1b[2J", b"shmipc_spill_ "],
)
def test_a_spill_reference_naming_a_bad_name_is_corrupted_not_a_crash(name):
    """A spill reference is a name a peer wrote into the ring: the reader checks it too."""

    def child(report_fd: int) -> None:
        with Queue(capacity=4096) as q:
            try:
                q._spills.read(_REF.pack(4) + name)
            except CorruptedError:
                pass
            q._ring.put(_REF.pack(4) + name, type=T_SPILL_OBJ)
            q.put("next")
            try:
                q.get(timeout=5)
            except CorruptedError:
                os.write(report_fd, b"corrupted;")
            os.write(report_fd, q.get(timeout=5).encode())

    code, reported = fork_call(child)
    assert code != -signal.SIGSEGV, "a NUL in a spill reference crashed the reader"
    assert (code, reported) == (0, b"corrupted;next")
