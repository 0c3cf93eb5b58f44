"""The package surface: what it exports, what it refuses to import on, and its build stamp."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import shmipc

pytestmark = pytest.mark.timeout(60)

PUBLIC = {
    "AtomicCounter",
    "Barrier",
    "BufferPool",
    "BrokenWorker",
    "Closed",
    "CorruptedError",
    "Event",
    "Executor",
    "Lagged",
    "LayoutMismatch",
    "Loan",
    "Lock",
    "MessageTooLarge",
    "PeerDied",
    "PoolExhausted",
    "PoolStatistics",
    "Pool",
    "Queue",
    "Region",
    "Revoked",
    "Ring",
    "RingStatistics",
    "Semaphore",
    "ShmipcError",
    "__version__",
    # Topic (issue 8)
    "Evicted",
    "Publisher",
    "Subscriber",
    "Topic",
    "TopicStatistics",
    # issue 10 (shmipc.mp, the multiprocessing drop-in)
    "BoundedSemaphore",
    "Condition",
    "JoinableQueue",
    "RLock",
}


def test_public_surface_is_pinned():
    """Nothing leaks into (or silently drops out of) the top-level namespace."""
    assert set(shmipc.__all__) == PUBLIC
    for name in shmipc.__all__:
        assert hasattr(shmipc, name)


def test_dir_has_no_stray_names():
    """dir(shmipc) is the public names, private ones and submodules: no `annotations`, no
    helper modules imported under a public name (issue 12)."""
    import types

    assert set(dir(shmipc)) >= PUBLIC  # the lazy Pool names too
    stray = [
        name
        for name in dir(shmipc)
        if not name.startswith("_")
        and name not in PUBLIC
        and not (
            isinstance(getattr(shmipc, name), types.ModuleType)
            and getattr(shmipc, name).__name__ == f"shmipc.{name}"
        )
    ]
    assert stray == []


def test_generic_queue_subscripts():
    """Queue[int] is a typing alias at runtime; the class itself is unchanged."""
    alias = shmipc.Queue[int]
    assert alias.__origin__ is shmipc.Queue
    assert alias.__args__ == (int,)


def test_errors_derive_from_shmipc_error():
    for exc in (
        shmipc.MessageTooLarge,
        shmipc.CorruptedError,
        shmipc.LayoutMismatch,
        shmipc.Closed,
        shmipc.PeerDied,
        shmipc.Lagged,
        shmipc.Evicted,
    ):
        assert issubclass(exc, shmipc.ShmipcError)


def test_py_typed_marker_ships():
    import importlib.resources

    assert importlib.resources.files("shmipc").joinpath("py.typed").is_file()


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_non_linux_import_is_a_clear_import_error():
    r = _run("""
        import sys
        sys.platform = "darwin"
        try:
            import shmipc
        except ImportError as exc:
            print("IMPORTERROR", exc)
    """)
    assert "IMPORTERROR" in r.stdout, r.stderr
    assert "Linux" in r.stdout and "darwin" in r.stdout


def test_non_cpython_import_is_a_clear_import_error():
    r = _run("""
        import sys
        sys.implementation.name = "pypy"
        try:
            import shmipc
        except ImportError as exc:
            print("IMPORTERROR", exc)
    """)
    assert "IMPORTERROR" in r.stdout, r.stderr
    assert "CPython" in r.stdout and "pypy" in r.stdout


def test_unsupported_machine_is_a_clear_import_error():
    r = _run("""
        import platform
        platform.machine = lambda: "riscv64"
        try:
            import shmipc
        except ImportError as exc:
            print("IMPORTERROR", exc)
    """)
    assert "IMPORTERROR" in r.stdout, r.stderr
    assert "riscv64" in r.stdout


def test_stale_native_build_is_a_clear_import_error():
    """An extension whose ABI stamp differs from the Python code's is refused at import."""
    r = _run("""
        import sys, types
        import shmipc._native_ext as real

        class StaleLib:
            def __getattr__(self, name):
                return getattr(real.lib, name)
            def shmipc_abi_version(self):
                return 999

        fake = types.ModuleType("shmipc._native_ext")
        fake.ffi, fake.lib = real.ffi, StaleLib()
        sys.modules["shmipc._native_ext"] = fake
        del sys.modules["shmipc._native"]  # imported by the package: import it afresh
        try:
            import shmipc._native
        except ImportError as exc:
            print("IMPORTERROR", exc)
    """)
    assert "IMPORTERROR" in r.stdout, r.stderr
    assert "stale" in r.stdout and "999" in r.stdout


def test_missing_native_build_is_a_clear_import_error():
    r = _run("""
        import sys
        sys.modules["shmipc._native_ext"] = None  # as if the extension was never built
        try:
            import shmipc
        except ImportError as exc:
            print("IMPORTERROR", exc)
    """)
    assert "IMPORTERROR" in r.stdout, r.stderr
    assert "pip install" in r.stdout


def test_abi_stamp_matches_header():
    """csrc/shmipc.h and shmipc/_native.py must agree; the build carries the header's."""
    from shmipc._native import ABI_VERSION, lib

    assert lib.shmipc_abi_version() == ABI_VERSION == lib.SHMIPC_ABI_VERSION


def test_generic_queue_keeps_the_native_fast_path():
    """Subscripting must not cost the hot path: put/get are still the port's bound calls."""
    q = shmipc.Queue[int]()
    try:
        assert type(q) is shmipc.Queue
        assert q.put.__self__ is not q and q.get.__self__ is not q  # the port's, not ours
        q.put(7)
        assert q.get(timeout=5) == 7
    finally:
        q.unlink()
        q.close()


def test_native_stub_matches_the_extension():
    """shmipc/_native_ext.pyi names only what the built types have, and all their methods."""
    import ast
    import importlib.resources

    from shmipc import _native

    tree = ast.parse(importlib.resources.files("shmipc").joinpath("_native_ext.pyi").read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"Port", "View", "PoolBuffer", "TopicPort", "RingMiss", "TopicMiss"} <= set(classes)
    for name, node in classes.items():
        real = getattr(_native, name)
        stubbed = {
            s.name if isinstance(s, ast.FunctionDef) else s.target.id  # type: ignore[union-attr]
            for s in node.body
            if isinstance(s, ast.FunctionDef)
            or (isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name))
        }
        for attr in stubbed - {"__init__", "__buffer__"}:
            assert hasattr(real, attr), (name, attr)
        methods = {
            a for a, v in vars(real).items()
            if not a.startswith("_") and callable(v) and type(v).__name__ == "method_descriptor"
        }
        assert methods <= stubbed, (name, methods - stubbed)
