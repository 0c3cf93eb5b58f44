"""The Python face of csrc/measure.c: argument checks, errno -> OSError, raw totals -> rates.

Each function runs one native timing loop (the loops themselves are C: Python's own overhead
would swamp a page fault or a cache line's round trip) and returns a small dict of results.
Bad arguments raise ValueError here, before the C code sees them (which would refuse them too,
with -EINVAL); a measurement the machine cannot make raises OSError with the kernel's errno.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from .._native import ffi, lib

__all__ = [
    "PREFAULT",
    "fault",
    "io_msync",
    "io_read",
    "io_resident",
    "memcpy",
    "pingpong",
    "random_access",
    "ring_pingpong",
    "tlb_info",
]

#: prefault= values: how the pages are populated before the first write.
PREFAULT = {"none": 0, "populate": 1, "populate_write": 2}
#: random_access mode= values.
PAGES = {"4k": 0, "thp": 1, "hugetlb": 2}
#: pingpong kind= values.
PINGPONG = {"futex": 0, "pipe": 1, "cacheline": 2}
#: ring_pingpong styles: how a side sends and receives (put/get, or reserve+commit and
#: peek+release).
RING_STYLES = {"copy": 0, "in place": 1}
#: io_read method= and advice= values.
METHODS = {"pread": 0, "mmap": 1, "io_uring": 2}
ADVICE = {"normal": 0, "random": 1, "sequential": 2, "willneed": 3, "hugepage": 4}

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TIB = 1 << 40


def _check(rc: int, what: str) -> None:
    if rc < 0:
        code = -rc
        raise OSError(code, f"{what}: {os.strerror(code)} ({errno.errorcode.get(code, code)})")


def _positive(name: str, value: int, *, limit: int = _TIB, multiple: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    if value <= 0 or value > limit:
        raise ValueError(f"{name} must be in 1..{limit}, not {value}")
    if value % multiple:
        raise ValueError(f"{name} must be a multiple of {multiple}, not {value}")
    return value


def _choice(name: str, value: str, table: dict[str, int]) -> int:
    try:
        return table[value]
    except KeyError:
        raise ValueError(f"{name} must be one of {', '.join(table)}, not {value!r}") from None


def fault(
    nbytes: int, *, prefault: str = "none", shared: bool = False, fd: int = -1
) -> dict[str, float]:
    """Map ``nbytes`` (anonymous, or ``fd`` shared), populate as asked, write each page once."""
    _positive("nbytes", nbytes, multiple=_PAGE)
    mode = _choice("prefault", prefault, PREFAULT)
    if fd >= 0 and not shared:
        raise ValueError("a file mapping is measured MAP_SHARED: pass shared=True")
    out = ffi.new("double[8]")
    _check(lib.shmipc_measure_fault(fd, nbytes, int(shared), mode, out), f"fault({prefault})")
    pages = out[5]
    return {
        "setup_ns_per_page": out[0] / pages,
        "touch_ns_per_page": out[1] / pages,
        "total_ns_per_page": (out[0] + out[1]) / pages,
        "unmap_ns_per_page": out[2] / pages,
        "setup_faults_per_page": out[3] / pages,
        "touch_faults_per_page": out[4] / pages,
        "pages": pages,
    }


def random_access(
    nbytes: int, *, pages: str = "4k", accesses: int = 1_000_000, seed: int = 1
) -> dict[str, float]:
    """Dependent loads at random 4 KiB pages of an ``nbytes`` mapping: ns per load."""
    _positive("nbytes", nbytes, limit=64 << 30, multiple=_PAGE)
    if nbytes < 2 * _PAGE:
        raise ValueError(f"nbytes must be at least two pages ({2 * _PAGE}), not {nbytes}")
    mode = _choice("pages", pages, PAGES)
    if mode == 2 and nbytes % (2 << 20):
        raise ValueError("explicit hugepages need nbytes a multiple of 2 MiB")
    _positive("accesses", accesses, limit=1 << 40)
    out = ffi.new("double[8]")
    _check(
        lib.shmipc_measure_random_access(nbytes, mode, accesses, seed & (2**64 - 1), out),
        f"random_access({pages})",
    )
    return {"ns_per_access": out[0] / out[1], "thp_kb": out[2], "setup_ns": out[3]}


def tlb_info() -> dict[str, int]:
    """The data TLB's entries as cpuid describes them (AMD leaves); OSError where it does not."""
    out = ffi.new("double[4]")
    _check(lib.shmipc_measure_tlb_info(out), "cpuid TLB leaves")
    keys = ("l1_4k", "l1_2m", "l2_4k", "l2_2m")
    return {key: int(out[i]) for i, key in enumerate(keys)}


def memcpy(nbytes: int, *, total: int) -> dict[str, float]:
    """Copy ``nbytes`` from one buffer to another until ``total`` bytes moved: bytes/s."""
    _positive("nbytes", nbytes, limit=4 << 30)
    if nbytes < 64:
        raise ValueError(f"nbytes must be at least 64, not {nbytes}")
    _positive("total", total)
    if total < nbytes:
        raise ValueError("total must be at least nbytes")
    out = ffi.new("double[2]")
    _check(lib.shmipc_measure_memcpy(nbytes, total, out), "memcpy")
    return {"bytes_per_s": out[1] / out[0] * 1e9, "seconds": out[0] / 1e9}


def pingpong(kind: str, rounds: int, *, cpus: tuple[int, int] | None = (0, 1)) -> dict[str, float]:
    """Round trips between two threads (pinned to ``cpus`` where allowed): ns per round trip."""
    code = _choice("kind", kind, PINGPONG)
    _positive("rounds", rounds, limit=1 << 30)
    a, b = cpus if cpus is not None else (-1, -1)
    for cpu in (a, b):
        if not isinstance(cpu, int) or cpu < -1 or cpu >= 1024:
            raise ValueError(f"cpu numbers must be in -1..1023, not {cpu!r}")
    out = ffi.new("double[4]")
    _check(lib.shmipc_measure_pingpong(code, rounds, a, b, out), f"pingpong({kind})")
    return {
        "ns_per_round_trip": out[0] / out[1],
        "pinned": bool(out[2]),
        "sleeps_per_round_trip": out[3] / out[1],
    }


def ring_pingpong(
    pairs: list[tuple[str, str]],
    *,
    block: int = 2_000,
    cycles: int = 20,
    spsc: bool = False,
    cpus: tuple[int, int] | None = (0, 1),
) -> dict[str, Any]:
    """64-byte round trips through two rings with no Python in the loop, for each (ping, echo)
    pair of RING_STYLES, the pairs interleaved in blocks of ``block`` rounds, ``cycles``
    times over: ``{"blocks": {pair: [each block's median ns]}, "pinned": bool}``."""
    if not pairs or len(pairs) > 16:
        raise ValueError(f"between 1 and 16 pairs, not {len(pairs)}")
    codes = [_choice("style", side, RING_STYLES) for pair in pairs for side in pair]
    _positive("block", block, limit=1_000_000)
    _positive("cycles", cycles, limit=10_000)
    if block < 10:
        raise ValueError(f"block must be at least 10, not {block}")
    if block * cycles * len(pairs) > 1 << 30:
        raise ValueError("at most 2**30 round trips in all")
    a, b = cpus if cpus is not None else (-1, -1)
    for cpu in (a, b):
        if not isinstance(cpu, int) or cpu < -1 or cpu >= 1024:
            raise ValueError(f"cpu numbers must be in -1..1023, not {cpu!r}")
    styles = ffi.new("int[]", codes)
    out = ffi.new("double[]", len(pairs) * cycles + 1)
    flags = lib.SHMIPC_RING_SPSC if spsc else 0
    rc = lib.shmipc_measure_ring_pingpong(styles, len(pairs), block, cycles, flags, a, b, out)
    _check(rc, "ring_pingpong")
    blocks = {pair: [out[k * cycles + i] for i in range(cycles)] for k, pair in enumerate(pairs)}
    return {"blocks": blocks, "pinned": bool(out[len(pairs) * cycles])}


def io_read(
    fd: int,
    method: str,
    *,
    size: int,
    block: int,
    random: bool,
    count: int,
    seed: int = 7,
    advice: str = "normal",
    depth: int = 1,
    warm: bool = False,
) -> dict[str, Any]:
    """Read ``count`` blocks of ``fd`` (or an anonymous MAP_SHARED region: fd -1, mmap)."""
    code = _choice("method", method, METHODS)
    adv = _choice("advice", advice, ADVICE)
    _positive("size", size)
    _positive("block", block, limit=64 << 20, multiple=8)
    if size < block or (fd >= 0 and size % block):
        raise ValueError(f"size must be a multiple of block ({block}), not {size}")
    _positive("count", count, limit=1 << 32)
    _positive("depth", depth, limit=4096)
    if fd < 0 and method != "mmap":
        raise ValueError("only the mmap method reads an anonymous region (fd -1)")
    out = ffi.new("double[6]")
    _check(
        lib.shmipc_io_read(
            fd, code, size, block, int(random), count, seed, adv, depth, int(warm), out
        ),
        f"{method} read",
    )
    return {
        "seconds": out[0] / 1e9,
        "bytes": out[1],
        "reads": out[2],
        "us_per_read": out[0] / out[2] / 1e3,
        "bytes_per_s": out[1] / out[0] * 1e9,
        "minor_faults": out[3],
        "major_faults": out[4],
        "fixed_buffers": bool(out[5]),
    }


def io_resident(fd: int, size: int) -> float:
    """The fraction of the file's pages in the page cache (mincore)."""
    _positive("size", size)
    out = ffi.new("double[1]")
    _check(lib.shmipc_io_resident(fd, size, out), "mincore")
    return out[0]


def io_msync(fd: int, size: int) -> dict[str, float]:
    """Write every byte of the file through a shared mapping, then msync(MS_SYNC)."""
    _positive("size", size)
    out = ffi.new("double[3]")
    _check(lib.shmipc_io_msync(fd, size, out), "msync")
    return {
        "write_bytes_per_s": out[2] / out[0] * 1e9,
        "msync_bytes_per_s": out[2] / out[1] * 1e9,
        "msync_seconds": out[1] / 1e9,
    }
