"""The machine a benchmark ran on: CPU, cores, Python, kernel and the contenders' versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata

__all__ = ["describe"]

#: Distributions whose versions the report shows (shmipc and its rivals).
PACKAGES = ("shmipc", "faster-fifo", "pyzmq", "msgpack", "numpy", "iceoryx2")


def describe() -> list[tuple[str, str]]:
    """(label, value) pairs for the top of the report."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    return [
        ("CPU", _cpu_model()),
        ("CPUs", f"{os.cpu_count()} online, {usable} usable by this process"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("kernel", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("load", _load()),
        ("packages", _package_versions()),
    ]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> str:
    """The load averages: a busy machine makes every number of the run suspect."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min) when the run started"


def _package_versions() -> str:
    parts = []
    for name in PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed"
        if name == "pyzmq" and version != "not installed":
            try:
                import zmq

                version += f" (libzmq {zmq.zmq_version()})"
            except ImportError:
                pass
        parts.append(f"{name} {version}")
    return ", ".join(parts)
