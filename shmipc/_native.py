"""The compiled core, checked at import: a stale or missing build is a clear ImportError.

Everything else imports ``ffi`` and ``lib`` from here, never from the generated module.
"""

from __future__ import annotations

try:
    from ._native_ext import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on how the package was installed
    raise ImportError(
        "shmipc's compiled core (shmipc._native_ext) is missing: install the package with "
        "`pip install .` (or `pip install -e .`) so that setup.py builds csrc/ "
        f"({exc})"
    ) from exc

__all__ = ["ABI_VERSION", "ffi", "lib"]

#: The ABI stamp this Python code was written against; csrc/shmipc.h must say the same.
ABI_VERSION = 2

if lib.shmipc_abi_version() != ABI_VERSION:  # pragma: no cover - only with a stale build
    raise ImportError(
        f"shmipc's compiled core has ABI {lib.shmipc_abi_version()} but this code expects "
        f"{ABI_VERSION}: the build is stale; rebuild it with `pip install -e .`"
    )
