"""Bad arguments and closed handles (issue 7, items 16 and 17).

* every timeout takes None, a finite number, +inf (wait forever) and -inf or a negative
  number (do not wait) without OverflowError; NaN is ValueError;
* every public method of a closed primitive raises ``Closed``, which is a ``ValueError`` whose
  message says "is closed", as the standard library's closed objects do.
"""

from __future__ import annotations

import os
import pickle
import threading

import pytest
from _procs import fork_call

from shmipc import AtomicCounter, Barrier, Closed, Event, Lock, Semaphore
from shmipc.sync import BarrierTimeout, deadline_ns

pytestmark = pytest.mark.timeout(60)

INF = float("inf")
NAN = float("nan")


# ---- timeouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [-INF, -1e300, -(10**400), -1, -1e-9, 0])
def test_deadline_of_no_wait_is_now(timeout):
    import time

    before = time.monotonic_ns()
    assert before <= deadline_ns(timeout) <= time.monotonic_ns()


@pytest.mark.parametrize("timeout", [None, INF, 1e300, 2.0**62, 10**400])
def test_deadline_forever(timeout):
    assert deadline_ns(timeout) == -1


def test_deadline_nan_is_value_error():
    with pytest.raises(ValueError, match="NaN"):
        deadline_ns(NAN)


@pytest.mark.parametrize("timeout", [-INF, -1, 0])
def test_no_wait_timeouts_on_every_primitive(timeout):
    ev = Event()
    assert ev.wait(timeout) is False
    sem = Semaphore(0)
    assert sem.acquire(timeout=timeout) is False
    lock = Lock()
    held = threading.Event()
    done = threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            done.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(30)
        assert lock.acquire(timeout=timeout) is False
    finally:
        done.set()
        t.join()
    with pytest.raises(BarrierTimeout):
        Barrier(2).wait(timeout)


def test_infinite_timeouts_wait_and_succeed():
    ev = Event()
    ev.set()
    assert ev.wait(INF) is True
    sem = Semaphore(1)
    assert sem.acquire(timeout=INF) is True
    lock = Lock()
    assert lock.acquire(timeout=INF) is True
    lock.release()
    assert Barrier(1).wait(INF) == 0


def test_nan_timeouts_are_value_errors():
    with pytest.raises(ValueError):
        Event().wait(NAN)
    with pytest.raises(ValueError):
        Semaphore(0).acquire(timeout=NAN)
    lock = Lock()
    lock.acquire()
    try:
        t_result: list[BaseException] = []

        def other() -> None:
            try:
                lock.acquire(timeout=NAN)
            except BaseException as exc:
                t_result.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join(30)
        assert len(t_result) == 1 and isinstance(t_result[0], ValueError)
    finally:
        lock.release()


# ---- closed handles ------------------------------------------------------------------------


def _calls(obj):
    """Every public operation of ``obj``, as zero-argument callables."""
    common = [lambda: obj.region, obj.unlink, lambda: pickle.dumps(obj)]
    if isinstance(obj, AtomicCounter):
        specific = [
            obj.load,
            lambda: obj.store(1),
            obj.add,
            lambda: obj.exchange(2),
            lambda: obj.compare_exchange(0, 1),
            lambda: obj.value,
        ]
    elif isinstance(obj, Event):
        specific = [obj.set, obj.clear, obj.is_set, obj.wait, lambda: obj.wait(0)]
    elif isinstance(obj, Semaphore):
        specific = [obj.acquire, lambda: obj.acquire(False), obj.release, lambda: obj.value]
        specific.append(lambda: obj.__enter__())
    elif isinstance(obj, Lock):
        specific = [obj.acquire, lambda: obj.acquire(False), obj.release]
        specific += [lambda: obj.recoveries, lambda: obj.__enter__()]
    else:
        specific = [obj.wait, obj.abort, obj.reset, lambda: obj.parties, lambda: obj.n_waiting]
        specific.append(lambda: obj.broken)
    return specific + common


@pytest.mark.parametrize(
    "make",
    [AtomicCounter, Event, Semaphore, Lock, lambda: Barrier(2)],
    ids=["AtomicCounter", "Event", "Semaphore", "Lock", "Barrier"],
)
def test_every_method_of_a_closed_primitive_raises_closed(make):
    obj = make()
    assert not obj.closed
    obj.close()
    assert obj.closed
    obj.close()  # closing again is a no-op
    for call in _calls(obj):
        with pytest.raises(Closed, match="is closed"):
            call()
    assert "closed" in repr(obj)


def test_closing_one_handle_leaves_others_working(shm_name):
    ev = Event.create(shm_name)
    other = Event.attach(shm_name)
    try:
        other.close()
        ev.set()
        assert ev.is_set()
        with pytest.raises(Closed):
            other.is_set()
    finally:
        ev.close()


def test_closed_is_a_value_error():
    assert issubclass(Closed, ValueError)
    ev = Event()
    ev.close()
    with pytest.raises(ValueError, match="is closed"):
        ev.set()


def test_missing_attributes_are_still_attribute_errors():
    ev = Event()
    with pytest.raises(AttributeError, match="no_such"):
        ev.no_such  # noqa: B018
    ev.close()
    with pytest.raises(AttributeError, match="no_such"):
        ev.no_such  # noqa: B018


@pytest.mark.parametrize("cls", [AtomicCounter, Event, Semaphore, Lock, Barrier])
def test_open_handles_pay_nothing_for_the_closed_check(cls):
    """The open classes define no __getattr__ (which would slow every attribute load of the
    hot paths); only a closed handle's class has one, and it is still an instance of its own."""
    assert not hasattr(cls, "__getattr__")
    obj = cls(2) if cls is Barrier else cls()
    obj.close()
    assert isinstance(obj, cls)
    assert type(obj).__name__ == cls.__name__


def test_close_racing_calls_in_other_threads_gives_closed():
    """Threads hammering a primitive while another thread closes it end with Closed, never an
    AttributeError or a crash (run in a child: a crash there fails the test, not the run)."""

    def body(report: int) -> None:
        outcomes: list[str] = []
        for _ in range(20):
            objs = [AtomicCounter(), Event(), Semaphore(1), Barrier(1)]
            go = threading.Barrier(len(objs) + 1)

            def hammer(obj, go: threading.Barrier = go) -> None:
                go.wait()
                try:
                    while True:
                        if isinstance(obj, AtomicCounter):
                            obj.add(1)
                        elif isinstance(obj, Event):
                            obj.set()
                            obj.is_set()
                        elif isinstance(obj, Semaphore):
                            obj.acquire(timeout=1)
                            obj.release()
                        else:
                            obj.wait(timeout=1)
                except Closed:
                    outcomes.append("Closed")
                except BaseException as exc:
                    outcomes.append(repr(exc))

            threads = [threading.Thread(target=hammer, args=(o,)) for o in objs]
            for t in threads:
                t.start()
            go.wait()
            for obj in objs:
                obj.close()
            for t in threads:
                t.join(30)
        os.write(report, ",".join(sorted(set(outcomes))).encode())

    code, report = fork_call(body)
    assert code == 0
    assert report == b"Closed"
