"""A pool's default block pool fits the /dev/shm it finds.

A block pool's space is reserved when it is made (fallocated: a full /dev/shm is an error
then, never a SIGBUS later), so its default size classes are cut to a quarter of /dev/shm's
free space and 1 GiB at most: a Pool works in Docker's default 64 MiB /dev/shm, and 64
workers do not reserve 6 GiB.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from shmipc import pool as pool_mod
from shmipc.pool import _block_classes, _blocks_size, _default_classes

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20


def _with_free(monkeypatch: pytest.MonkeyPatch, free: int | None) -> None:
    """What the pool reads as /dev/shm's free space (the real space is left alone)."""
    monkeypatch.setattr(pool_mod, "_shm_free", lambda: free)


@pytest.mark.parametrize("processes", [1, 2, 8, 64])
def test_plenty_of_space_keeps_the_full_classes_up_to_one_gib(monkeypatch, processes):
    _with_free(monkeypatch, 1 << 40)
    classes = _default_classes(processes)
    full = _block_classes(processes)
    assert _blocks_size(classes) <= 1 << 30
    if _blocks_size(full) <= 1 << 30:
        assert classes == full
    else:  # 64 workers: the largest classes are cut, the small ones kept whole
        assert classes[1 << 16] == full[1 << 16] and classes != full


@pytest.mark.parametrize("free", [64 * MiB, 256 * MiB, 1 << 30, 8 << 30])
def test_the_classes_fit_a_quarter_of_the_free_space_cut_from_the_top(monkeypatch, free):
    _with_free(monkeypatch, free)
    classes = _default_classes(2)
    full = _block_classes(2)
    assert classes and _blocks_size(classes) <= free // 4
    # Only the largest classes lose blocks: each kept class below the largest is whole.
    kept = sorted(classes)
    for size in kept[:-1]:
        assert classes[size] == full[size], (size, classes)


def test_too_little_space_means_no_block_pool(monkeypatch):
    _with_free(monkeypatch, 4 * MiB)  # a quarter is 1 MiB: not even one 64 KiB block fits
    assert _default_classes(2) == {}
    with pool_mod.Pool(1) as p:
        assert p.buffer_pool is None
        assert p.apply(len, (b"x" * (1 << 20),)) == 1 << 20  # pickled inline instead


def test_unreadable_space_keeps_the_full_classes(monkeypatch):
    def refuse(path: str) -> None:
        raise PermissionError(13, "no")

    monkeypatch.setattr(pool_mod.os, "statvfs", refuse)
    assert pool_mod._shm_free() is None
    monkeypatch.undo()
    _with_free(monkeypatch, None)
    assert _default_classes(2) == _block_classes(2)


def test_the_free_space_is_read_from_dev_shm(monkeypatch):
    """The blocks available to us (not to root) times the fragment size, of /dev/shm. Read
    through a stand-in: other test processes make and remove segments meanwhile, so two live
    reads need not agree."""
    real = os.statvfs
    asked = []

    class Fake:
        f_bavail, f_bfree, f_frsize = 1000, 2000, 4096

    def fake(path):
        asked.append(os.fspath(path))
        return Fake()

    monkeypatch.setattr(pool_mod.os, "statvfs", fake)
    assert pool_mod._shm_free() == 1000 * 4096
    assert asked == ["/dev/shm"]
    monkeypatch.setattr(pool_mod.os, "statvfs", real)
    vfs = real("/dev/shm")
    assert 0 < pool_mod._shm_free() <= vfs.f_blocks * vfs.f_frsize


_SMALL_SHM_CHILD = r"""
import numpy as np
import shmipc
import shmipc.mp as mp

with shmipc.Pool(2) as p:
    classes = sorted(c.block_size for c in p.buffer_pool.statistics().classes)
    arrays = [np.full(n, 7, dtype=np.uint8) for n in (1 << 16, 1 << 20, 8 << 20)]
    sums = p.map(np.sum, arrays)
    assert sums == [7 * a.size for a in arrays], sums
with mp.Pool(2) as p:
    assert p.map(abs, range(-3, 3)) == [3, 2, 1, 0, 1, 2]
print("ok", max(classes))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")
def test_a_pool_works_in_a_64_mib_dev_shm():
    """Docker's default: before, Pool() failed with ENOSPC (its block pool wanted 375 MiB)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    script = (
        "mount -t tmpfs -o size=64m tmpfs /dev/shm || exit 77; "
        f'exec {sys.executable} -c "$0"'
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, _SMALL_SHM_CHILD],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )
    if r.returncode == 77 or "unshare failed" in r.stderr:
        pytest.skip(f"cannot make a private mount namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    out = r.stdout.split()
    assert out[0] == "ok" and int(out[1]) < 8 << 20  # the large classes were cut
