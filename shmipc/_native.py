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

__all__ = [
    "ABI_VERSION",
    "PoolBuffer",
    "Port",
    "RingMiss",
    "TopicMiss",
    "TopicPort",
    "View",
    "ffi",
    "lib",
]

#: The ABI stamp this Python code was written against; csrc/shmipc.h must say the same.
ABI_VERSION = 9

if lib.shmipc_abi_version() != ABI_VERSION:  # pragma: no cover - only with a stale build
    raise ImportError(
        f"shmipc's compiled core has ABI {lib.shmipc_abi_version()} but this code expects "
        f"{ABI_VERSION}: the build is stale; rebuild it with `pip install -e .`"
    )

# The per-message hot paths (csrc/fastpath.c): plain CPython methods, added to the extension
# module here because cffi's calls cost more than the ring work they would wrap.
if lib.shmipc_fastpath_install() != 0:  # pragma: no cover - only if the interpreter refuses
    raise ImportError("shmipc's compiled core could not add its fast paths (Port)")

from ._native_ext import Port, RingMiss, View  # noqa: E402 - exist only after the install above

# The block pool's reference exporter (csrc/pool.c).
if lib.shmipc_pool_install() != 0:  # pragma: no cover - only if the interpreter refuses
    raise ImportError("shmipc's compiled core could not add PoolBuffer")
from ._native_ext import PoolBuffer  # noqa: E402

# The topics' hot paths (csrc/topic.c): TopicPort and TopicMiss, added the same way.
if lib.shmipc_topic_install() != 0:  # pragma: no cover - only if the interpreter refuses
    raise ImportError("shmipc's compiled core could not add its topic paths (TopicPort)")

from ._native_ext import TopicMiss, TopicPort  # noqa: E402 - exist only after the install above
