"""CPython's own pool tests, run against ``shmipc.Pool`` (issue 10).

``test._test_multiprocessing`` defines ``_TestPool``, ``_TestPoolWorkerLifetime`` and
``_TestPoolWorkerErrors`` as mixins. ``_TestPool`` makes its pools with ``self.Pool``; the
other two call ``multiprocessing.Pool(...)`` themselves. Here ``self.Pool`` is shmipc's Pool
with the class's start method, and each case runs with the name ``multiprocessing`` in its
globals bound to a module whose ``Pool`` is shmipc's (everything else is the real module:
``multiprocessing.TimeoutError``, ``multiprocessing.pool.RemoteTraceback``...). Every case runs
under fork and spawn; the one that cannot apply is skipped with its reason (docs/migrating.md
lists it). The module is skipped when this Python has no ``test`` package.
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
        "pool cases from",
        allow_module_level=True,
    )

import shmipc
import shmipc.pool

pytestmark = pytest.mark.timeout(120)

MIXINS = ("_TestPool", "_TestPoolWorkerLifetime", "_TestPoolWorkerErrors")
SKIP: dict[str, dict[str, str]] = {
    "_TestPoolWorkerLifetime": {
        "test_worker_finalization_via_atexit_handler_of_multiprocessing": "runs a script that "
        "imports the stdlib's own multiprocessing.Pool in a fresh interpreter (no class under "
        "test); tests/unit/pool/test_pool_api.py::test_unclosed_pool_at_exit runs the same "
        "script with shmipc.Pool",
    },
}


class _Multiprocessing(types.ModuleType):
    """``multiprocessing`` as the cases that name it see it: shmipc's Pool, the real module
    for everything else."""

    def __init__(self, make_pool: Any) -> None:
        super().__init__("multiprocessing")
        self.Pool = make_pool

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def _with_multiprocessing(func: Any, module: types.ModuleType) -> Any:
    """``func`` with the name ``multiprocessing`` in its globals bound to ``module``."""
    globs = dict(func.__globals__)
    globs["multiprocessing"] = module
    new = types.FunctionType(func.__code__, globs, func.__name__, func.__defaults__)
    new.__qualname__, new.__doc__ = func.__qualname__, func.__doc__
    return new


class ShmipcPoolMixin:
    """Sets the start method for the class's run and makes ``self.Pool`` shmipc's."""

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

    @classmethod
    def Pool(cls, *args: Any, **kwargs: Any) -> shmipc.Pool:
        kwargs.setdefault("context", multiprocessing.get_context(cls.START_METHOD))
        return shmipc.Pool(*args, **kwargs)

    @classmethod
    def _multiprocessing(cls) -> types.ModuleType:
        return _Multiprocessing(cls.Pool)


def _rebound_test(func: Any) -> Any:
    @functools.wraps(func)
    def run(self: ShmipcPoolMixin) -> None:
        _with_multiprocessing(func, self._multiprocessing())(self)

    return run


def _install(start_method: str) -> None:
    for mixin_name in MIXINS:
        base = getattr(cpython, mixin_name)
        attrs: dict[str, Any] = {"START_METHOD": start_method, "__module__": __name__}
        skips = SKIP.get(mixin_name, {})
        for name in dir(base):
            if not name.startswith("test_"):
                continue
            if name in skips:
                attrs[name] = unittest.skip(skips[name])(lambda self: None)
            else:
                attrs[name] = _rebound_test(getattr(base, name))
        name = f"WithShmipc{start_method.capitalize()}{mixin_name[5:]}"
        cls = type(name, (ShmipcPoolMixin, base, cpython.ProcessesMixin, unittest.TestCase), attrs)
        cls.__qualname__ = name
        globals()[name] = cls


_install("fork")
_install("spawn")


def test_the_cases_get_shmipc_pools():
    """The pools the CPython cases exercise are shmipc's, also where a case names
    ``multiprocessing.Pool`` itself, and with the class's start method."""
    for method in ("fork", "spawn"):
        for mixin in MIXINS:
            cls = globals()[f"WithShmipc{method.capitalize()}{mixin[5:]}"]
            pool = cls._multiprocessing().Pool(1)
            try:
                assert isinstance(pool, shmipc.pool.Pool)
                assert pool._ctx.get_start_method() == method
                assert cls._multiprocessing().TimeoutError is multiprocessing.TimeoutError
            finally:
                pool.terminate()
                pool.join()
