"""Helpers for the Queue tests: a custom codec, a look at spill segments in /dev/shm, and
module-level targets for spawned and forkserver children (they import this module by name:
multiprocessing hands them the parent's ``sys.path``). Forked children that report through
pipes (``Child``, ``fork_call``) come from tests/_procs.py. The name is specific so that no
other test folder's helpers shadow it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

SHM_DIR = "/dev/shm"


def segment_exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name))


class SpillRecorder:
    """Records the names of the spill segments this process makes (by wrapping the name
    generator shmipc._spill uses), so a test can check that its own spills are gone, even
    those of a spill that failed half-way, without looking at segments that other processes
    on the machine make at the same time."""

    def __init__(self, monkeypatch) -> None:
        from shmipc import _spill

        self.names: list[str] = []
        real = _spill.random_name

        def recording(*args, **kwargs):
            name = real(*args, **kwargs)
            self.names.append(name)
            return name

        monkeypatch.setattr(_spill, "random_name", recording)

    def existing(self) -> list[str]:
        return [n for n in self.names if segment_exists(n)]

    def remove_left(self) -> list[str]:
        left = self.existing()
        for n in left:
            try:
                os.unlink(os.path.join(SHM_DIR, n))
            except FileNotFoundError:
                pass
        return left


@dataclass(frozen=True)
class Point:
    """Something msgpack cannot carry but pickle can."""

    x: int
    y: int


class JsonCodec:
    """A custom codec (the Codec protocol: name, encode, decode)."""

    name = "json-test"

    def encode(self, obj: object) -> bytes:
        try:
            return json.dumps(obj).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(str(exc)) from None

    def decode(self, data) -> object:
        return json.loads(bytes(data))


# ---- targets for spawned / forkserver children -------------------------------------------


def square_worker(jobs, results, count: int) -> None:
    """Get ``count`` numbers from ``jobs``, put their squares on ``results``."""
    for _ in range(count):
        n = jobs.get(timeout=20)
        results.put((os.getpid(), n * n))
    jobs.close()
    results.close()


def close_and_exit(q) -> None:
    """An attacher that closes its handle and exits normally."""
    q.put("bye")
    q.close()
