"""CPython's own multiprocessing tests, run against shmipc's classes (issue 7, item 17).

``test._test_multiprocessing`` (the standard library's test package) defines its cases as
mixins that take the classes under test from the test case: ``self.Queue``, ``self.Event``,
``self.Barrier``... ``install_tests_in_module_dict`` fills those from the ``multiprocessing``
module; here a mixin fills them with shmipc's instead and everything else (Process, Pipe, the
tests' own bookkeeping with ``multiprocessing.Lock`` and heap buffers) stays the stdlib's:

* ``Queue``: ``shmipc.Queue(..., codec="pickle")``. The tests put arbitrary objects, which
  msgpack (shmipc's default codec) does not carry; pickle is what multiprocessing uses.
* ``Event``, ``Barrier``: ``shmipc.Event`` and ``shmipc.Barrier``: standalone (anonymous
  memory) under fork, made by name (``create``) under spawn, where the handles are pickled
  into the children.

Two ``_TestQueue`` cases build ``multiprocessing.Queue()`` themselves instead of
``self.Queue()``; they run with a ``multiprocessing`` whose ``Queue`` (and ``JoinableQueue``,
see docs/migrating.md) is shmipc's. The cases that cannot apply are skipped, each with its
reason; docs/migrating.md lists them. The whole module is skipped when this Python has no
``test`` package (distributions often leave it out).
"""

from __future__ import annotations

import functools
import multiprocessing
import types
import unittest
from typing import Any, ClassVar

import pytest

try:
    from test import _test_multiprocessing as cpython
except (ImportError, unittest.SkipTest) as exc:  # pragma: no cover - depends on the install
    pytest.skip(
        f"CPython's test package is not installed ({exc}): nothing to run the stdlib's "
        "multiprocessing cases from",
        allow_module_level=True,
    )

import shmipc

pytestmark = pytest.mark.timeout(120)

PickleQueue = functools.partial(shmipc.Queue, codec="pickle")

# What runs, per mixin: every test_* method of the mixin is either listed in RUN or skipped
# with the reason in SKIP (a case this file does not know, e.g. from a newer CPython, is
# skipped as unreviewed rather than run blindly).
RUN: dict[str, set[str]] = {
    "_TestQueue": {
        "test_put",
        "test_get",
        "test_fork",
        "test_qsize",
        "test_timeout",
        "test_closed_queue_put_get_exceptions",
    },
    "_TestEvent": {"test_event", "test_repr"},
    "_TestBarrier": {
        "test_barrier",
        "test_barrier_10",
        "test_wait_return",
        "test_action",
        "test_abort",
        "test_reset",
        "test_abort_and_reset",
        "test_timeout",
        "test_default_timeout",
        "test_single_thread",
        "test_thousand",
    },
}
SKIP: dict[str, dict[str, str]] = {
    "_TestQueue": {
        "test_task_done": "needs JoinableQueue (task_done/join), which shmipc does not have yet "
        "(the multiprocessing-replacement issue)",
        "test_no_import_lock_contention": "checks the import lock with the stdlib's own "
        "multiprocessing.Queue in a generated module; no queue class under test",
        "test_queue_feeder_donot_stop_onexc": "tests the feeder thread surviving an object that "
        "fails to pickle; shmipc has no feeder thread: put() raises at once and stores nothing",
        "test_queue_feeder_on_queue_feeder_error": "subclasses multiprocessing.queues.Queue to "
        "hook its feeder thread's errors; shmipc has no feeder thread",
    },
}
UNREVIEWED = "not reviewed for shmipc (a case of a newer CPython than this file knows)"


class _Multiprocessing(types.ModuleType):
    """``multiprocessing`` as the tests that name it directly see it: shmipc's Queue, the
    real module for everything else."""

    def __init__(self, make_queue: Any) -> None:
        super().__init__("multiprocessing")
        self.Queue = make_queue
        # shmipc has no JoinableQueue yet; test_closed_queue_put_get_exceptions checks the
        # closed-queue errors of a Queue and a JoinableQueue, and runs with a Queue for both.
        self.JoinableQueue = make_queue

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def _with_multiprocessing(func: Any, module: types.ModuleType) -> Any:
    """``func`` with the name ``multiprocessing`` in its globals bound to ``module``."""
    globs = dict(func.__globals__)
    globs["multiprocessing"] = module
    new = types.FunctionType(func.__code__, globs, func.__name__, func.__defaults__)
    new.__qualname__, new.__doc__ = func.__qualname__, func.__doc__
    return new


class ShmipcMixin:
    """Puts shmipc's classes where the CPython mixins look for the classes under test, sets the
    start method for the class's run (the tests' bookkeeping objects, made with
    ``multiprocessing.Lock()``, must come from the context the children are started with) and
    closes every shmipc object a test made."""

    START_METHOD: ClassVar[str]
    _old_start_method: ClassVar[str | None]

    @classmethod
    def setUpClass(cls) -> None:
        cls._old_start_method = multiprocessing.get_start_method(allow_none=True)
        multiprocessing.set_start_method(cls.START_METHOD, force=True)
        super().setUpClass()  # type: ignore[misc]

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()  # type: ignore[misc]
        finally:
            multiprocessing.set_start_method(cls._old_start_method, force=True)

    def setUp(self) -> None:
        self._shmipc_objects: list[Any] = []
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        try:
            super().tearDown()  # type: ignore[misc]
        finally:
            for obj in reversed(self._shmipc_objects):
                obj.close()

    def _keep(self, obj: Any) -> Any:
        self._shmipc_objects.append(obj)
        return obj

    def Queue(self, maxsize: int = 0) -> shmipc.Queue:
        return self._keep(PickleQueue(maxsize))

    def Event(self) -> shmipc.Event:
        if self.START_METHOD == "fork":
            return self._keep(shmipc.Event())
        return self._keep(shmipc.Event.create())

    def Barrier(
        self, parties: int, action: Any = None, timeout: float | None = None
    ) -> shmipc.Barrier:
        if self.START_METHOD == "fork":
            return self._keep(shmipc.Barrier(parties, action, timeout))
        return self._keep(shmipc.Barrier.create(parties=parties, action=action, timeout=timeout))

    def _multiprocessing(self) -> types.ModuleType:
        return _Multiprocessing(lambda maxsize=0: self.Queue(maxsize))


def _install(start_method: str) -> None:
    for mixin_name, run in RUN.items():
        base = getattr(cpython, mixin_name)
        attrs: dict[str, Any] = {"START_METHOD": start_method, "__module__": __name__}
        skips = SKIP.get(mixin_name, {})
        for name in dir(base):
            if not name.startswith("test_") or name in run:
                continue
            reason = skips.get(name, UNREVIEWED)
            attrs[name] = unittest.skip(reason)(lambda self: None)
        if mixin_name == "_TestQueue":
            # The two cases that build multiprocessing.Queue() themselves.
            for name in ("test_timeout", "test_closed_queue_put_get_exceptions"):
                attrs[name] = _rebound_test(getattr(base, name))
        name = f"WithShmipc{start_method.capitalize()}{mixin_name[5:]}"
        cls = type(name, (ShmipcMixin, base, cpython.ProcessesMixin, unittest.TestCase), attrs)
        cls.__qualname__ = name
        globals()[name] = cls


def _rebound_test(func: Any) -> Any:
    @functools.wraps(func)
    def run(self: ShmipcMixin) -> None:
        _with_multiprocessing(func, self._multiprocessing())(self)

    return run


_install("fork")
_install("spawn")


def test_the_cases_get_shmipc_classes():
    """The classes the CPython cases exercise are shmipc's, also where a case names
    ``multiprocessing.Queue`` itself."""
    for method in ("fork", "spawn"):
        case = globals()[f"WithShmipc{method.capitalize()}Queue"]("test_qsize")
        case._shmipc_objects = []
        try:
            assert isinstance(case.Queue(), shmipc.Queue)
            assert case.Queue().codec.name == "pickle"
            assert isinstance(case.Event(), shmipc.Event)
            assert isinstance(case.Barrier(2, timeout=1.0), shmipc.Barrier)
            assert isinstance(case._multiprocessing().Queue(), shmipc.Queue)
        finally:
            for obj in case._shmipc_objects:
                obj.close()
