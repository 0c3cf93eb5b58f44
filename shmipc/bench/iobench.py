"""``--io``: the reference page's mmap / read / O_DIRECT / io_uring table, measured here.

``run(size, directory, quick, progress)`` writes a scratch file of ``size`` bytes in
``directory`` (default: a temporary directory on disk, never tmpfs when a disk is at hand),
then reads it with every method of the page's table, random 8 KiB reads and sequential 1 MiB
reads, from a cold page cache (the file's pages dropped before each row, and mincore() checked
to say how cold it really was) and from a warm one; plus anonymous MAP_SHARED and shm_open
regions for the in-memory columns, and the writeback rate of msync(MS_SYNC). The loops are
native (csrc/measure.c via shmipc/bench/probes.py); io_uring is driven through raw syscalls,
and a method the kernel or filesystem refuses is a row saying so with the errno. The file is
removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import probes
from .claims import NOT_COMPARABLE, Report, near, verdict
from .limits import busy_note, machine_lines

__all__ = ["run"]

Progress = Callable[[int, int, str], None]
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
RANDOM_BLOCK = 8 * KIB
SEQ_BLOCK = 1 * MIB
DEEP = 32  # io_uring reads in flight for the random rows
SEQ_DEEP = 4
#: A comparison the page makes held only if the winner was at least this much faster.
CLEAR = 1.1


@dataclass(frozen=True)
class Method:
    """One way of reading the file: the page's column and how to run it."""

    label: str
    method: str  # probes.METHODS key
    fadvise: int | None = None  # os.POSIX_FADV_* applied to the fd first
    madvise: str = "normal"
    direct: bool = False
    depth: int = 1
    page_random: str = ""  # the page's word for this column's random access
    page_seq: str = ""  # ... and for its sequential bulk


def _methods(random: bool) -> list[Method]:
    depth = DEEP if random else SEQ_DEEP
    adv = os.POSIX_FADV_RANDOM if random else os.POSIX_FADV_SEQUENTIAL
    madv = "random" if random else "sequential"
    adv_name = "RANDOM" if random else "SEQUENTIAL"
    return [
        Method("pread", "pread", page_random="painful: seek + read", page_seq="best"),
        Method(
            f"pread + fadvise {adv_name}",
            "pread",
            fadvise=adv,
            page_random="painful: seek + read",
            page_seq="best (read-ahead friendly)",
        ),
        Method("mmap", "mmap", page_random="excellent", page_seq="good"),
        Method(
            f"mmap + MADV_{adv_name}",
            "mmap",
            madvise=madv,
            page_random="excellent",
            page_seq="good (with MADV_SEQUENTIAL)",
        ),
        Method(
            "O_DIRECT pread (aligned)",
            "pread",
            direct=True,
            page_random="painful, alignment required",
            page_seq="excellent if aligned",
        ),
        Method("io_uring, 1 in flight", "io_uring", page_random="good", page_seq="excellent"),
        Method(
            f"io_uring, {depth} in flight",
            "io_uring",
            depth=depth,
            page_random="good",
            page_seq="excellent",
        ),
        Method(
            f"io_uring + O_DIRECT, {depth} in flight",
            "io_uring",
            depth=depth,
            direct=True,
            page_random="good",
            page_seq="excellent",
        ),
    ]


def run(
    size: int | None = None,
    directory: str | None = None,
    quick: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Measure the page's I/O table here; ``progress(done, total, label)`` before each row."""
    size = size or (64 * MIB if quick else 1 * GIB)
    if size < SEQ_BLOCK or size % SEQ_BLOCK:
        raise ValueError(f"size must be a positive multiple of 1 MiB, not {size}")
    count = 2_000 if quick else 20_000
    parent = directory or _disk_tempdir()
    report = Report(
        "The reference page's I/O table, measured here"
        + (" (--quick: a smoke run)" if quick else ""),
        machine=[*machine_lines(), ("scratch file", _device_line(parent, size))],
    )
    busy = busy_note()
    total = 2 * (len(_methods(True)) + 5) + 2
    done = 0

    def step(label: str) -> None:
        nonlocal done
        if progress:
            progress(done, total, label)
        done += 1

    with tempfile.TemporaryDirectory(prefix="shmipc-iobench-", dir=parent) as d:
        path = os.path.join(d, "data")
        step("writing the scratch file")
        _write_file(path, size)
        dropper = _Dropper(path)
        results: dict[tuple[str, str], dict[str, Any]] = {}
        for random in (True, False):
            kind = "random 8 KiB reads" if random else "sequential 1 MiB reads"
            group = f"{kind}, cold page cache"
            block = RANDOM_BLOCK if random else SEQ_BLOCK
            # Random rows read at most a quarter of the file's blocks, so that most reads
            # find their block cold however small the file is.
            n = min(count, max(1, size // RANDOM_BLOCK // 4)) if random else size // SEQ_BLOCK
            for m in _methods(random):
                step(f"{kind}: {m.label} (cold)")
                results[(group, m.label)] = _cold_row(
                    report, group, path, size, block, n, random, m, dropper
                )
            group = f"{kind}, file in the page cache"
            for m in (_methods(random)[0], _methods(random)[2], _methods(random)[5]):
                step(f"{kind}: {m.label} (warm)")
                results[(group, m.label)] = _row(
                    report, group, path, size, block, n, random, m, warm=True
                )
            group = f"{kind}, regions in memory"
            step(f"{kind}: anonymous MAP_SHARED")
            results[(group, "anon")] = _memory_row(
                report, group, "anonymous MAP_SHARED", -1, size, block, n, random
            )
            step(f"{kind}: shm_open region")
            with _shm_region(size) as fd:
                results[(group, "shm")] = _memory_row(
                    report, group, "shm_open region (tmpfs)", fd, size, block, n, random
                )
        step("writeback: msync(MS_SYNC)")
        _writeback_row(report, path, size)
        _claims(report, results, size)
        report.method += [
            f"A {size // MIB} MiB scratch file in {parent}, written from random bytes and "
            "fsync'd, removed afterwards. Random rows read "
            f"{min(count, max(1, size // RANDOM_BLOCK // 4)):,} blocks of 8 KiB at random "
            "8 KiB-aligned offsets (the same offsets for every "
            "method); sequential rows read the whole file in 1 MiB blocks. Every method sums "
            "each 8-byte word it reads, so all do the same work on the data.",
            "Cold rows: " + dropper.describe(),
            "Warm rows: one untimed pass over the same offsets first (the mmap row keeps its "
            "mapping, so its timed pass takes no faults).",
            "In-memory rows: the region is written before the clock starts (anonymous) or "
            "faulted in by an untimed pass (shm_open), then read like the file.",
            "A VM's virtual disk may be cached by its host: 'cold' then means 'not in this "
            "kernel's page cache', not 'read from the device'.",
            "A figure the page gives as '~X' held if this machine's value lies within 3x of X; "
            "comparisons held if the order came out as the page says.",
        ]
    if busy:
        report.method.append(busy)
    if progress:
        progress(total, total, "done")
    return report


# ---- rows -------------------------------------------------------------------------------


def _open(path: str, direct: bool) -> int:
    return os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))


def _row(
    report: Report,
    group: str,
    path: str,
    size: int,
    block: int,
    n: int,
    random: bool,
    m: Method,
    *,
    warm: bool = False,
    dropper: _Dropper | None = None,
) -> dict[str, Any]:
    """Run one method over the file and add its row; {} when the machine refused it."""
    unit = "µs/read" if random else "GB/s"
    page = m.page_random if random else m.page_seq
    try:
        fd = _open(path, m.direct)
    except OSError as exc:
        report.unavailable(
            m.label, unit, page, f"open(O_DIRECT) refused by the filesystem: {exc}", group=group
        )
        return {}
    try:
        if m.fadvise is not None:
            os.posix_fadvise(fd, 0, 0, m.fadvise)
        cold = dropper.drop() if dropper else None
        r = probes.io_read(
            fd,
            m.method,
            size=size,
            block=block,
            random=random,
            count=n,
            advice=m.madvise,
            depth=m.depth,
            warm=warm,
        )
        r["resident_after"] = probes.io_resident(fd, size)
    except OSError as exc:
        why = str(exc)
        if m.method == "io_uring":
            why = f"the kernel refused io_uring: {exc}"
        report.unavailable(m.label, unit, page, why, group=group)
        return {}
    finally:
        os.close(fd)
    notes = []
    if cold is not None:
        notes.append(f"{cold:.0%} resident before")
    if not warm:
        notes.append(f"{r['resident_after']:.0%} resident after")
    if r["major_faults"]:
        notes.append(f"{r['major_faults'] / n:.2f} major faults/read")
    elif m.method == "mmap" and r["minor_faults"]:
        notes.append(f"{r['minor_faults'] / n:.2f} minor faults/read")
    if m.method == "io_uring" and not r["fixed_buffers"]:
        notes.append("registered buffers refused: plain reads")
    elif m.method == "io_uring":
        notes.append("registered buffers")
    value = r["us_per_read"] if random else r["bytes_per_s"] / 1e9
    report.add(m.label, value, unit, page, NOT_COMPARABLE, note="; ".join(notes), group=group)
    return r


def _cold_row(
    report: Report,
    group: str,
    path: str,
    size: int,
    block: int,
    n: int,
    random: bool,
    m: Method,
    dropper: _Dropper,
) -> dict[str, Any]:
    return _row(report, group, path, size, block, n, random, m, dropper=dropper)


def _memory_row(
    report: Report,
    group: str,
    label: str,
    fd: int,
    size: int,
    block: int,
    n: int,
    random: bool,
) -> dict[str, Any]:
    unit = "µs/read" if random else "GB/s"
    page = "excellent" if random else ("excellent" if fd >= 0 else "n/a")
    try:
        r = probes.io_read(fd, "mmap", size=size, block=block, random=random, count=n, warm=fd >= 0)
    except OSError as exc:
        report.unavailable(label, unit, page, str(exc), group=group)
        return {}
    value = r["us_per_read"] if random else r["bytes_per_s"] / 1e9
    report.add(label, value, unit, page, NOT_COMPARABLE, note="resident, mapped", group=group)
    return r


def _writeback_row(report: Report, path: str, size: int) -> None:
    group = "writeback"
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        report.unavailable(
            "msync(MS_SYNC) of a fully dirtied mapping", "GB/s", "~3 GB/s", str(exc), group=group
        )
        return
    try:
        r = probes.io_msync(fd, size)
    except OSError as exc:
        report.unavailable(
            "msync(MS_SYNC) of a fully dirtied mapping", "GB/s", "~3 GB/s", str(exc), group=group
        )
        return
    finally:
        os.close(fd)
    rate = r["msync_bytes_per_s"]
    report.add(
        "msync(MS_SYNC) of a fully dirtied mapping",
        rate / 1e9,
        "GB/s",
        "~3 GB/s (NVMe Gen4)",
        verdict(near(rate, 3e9)),
        note=f"{size // MIB} MiB in {r['msync_seconds']:.2f} s; dirtying it ran at "
        f"{r['write_bytes_per_s'] / 1e9:.1f} GB/s; the device here is not the page's NVMe",
        claim="writeback sustains about the device's sequential write speed (~3 GB/s)",
        group=group,
    )


def _claims(report: Report, results: dict[tuple[str, str], dict[str, Any]], size: int) -> None:
    """The page's claims about its table, judged from the rows measured above."""
    group = "the page's claims"
    rc = "random 8 KiB reads, cold page cache"
    rw = "random 8 KiB reads, file in the page cache"
    rm = "random 8 KiB reads, regions in memory"
    sc = "sequential 1 MiB reads, cold page cache"

    def get(g: str, label: str) -> dict[str, Any]:
        return results.get((g, label)) or {}

    def compare(
        name: str, claim: str, a: dict, b: dict, key: str, lower: bool, what: str, page: str
    ) -> None:
        if not a or not b:
            report.unavailable(
                name, "x", page, "a row it needs could not run", claim=claim, group=group
            )
            return
        ratio = (b[key] / a[key]) if lower else (a[key] / b[key])
        if 1 / CLEAR < ratio < CLEAR:
            what += f"; within {CLEAR - 1:.0%} either way: no clear winner"
        report.add(
            name, ratio, "x", page, verdict(ratio >= CLEAR), note=what, claim=claim, group=group
        )

    pread = get(rc, "pread")
    if pread:
        us = pread["us_per_read"]
        report.add(
            "cold random 8 KiB pread",
            us,
            "µs/read",
            "~100 µs (disk) + a syscall",
            verdict(near(us, 100)),
            claim="an 8 KB pread from disk takes about 100 µs",
            group=group,
        )
    mm = get(rc, "mmap + MADV_RANDOM")
    if mm and mm.get("major_faults"):
        per = mm["seconds"] / mm["major_faults"] * 1e6
        report.add(
            "cold major fault (mmap + MADV_RANDOM)",
            per,
            "µs/fault",
            "~100 µs (SSD)",
            verdict(near(per, 100)),
            note=f"{mm['major_faults'] / mm['reads']:.2f} major faults per 8 KiB read",
            claim="a major fault costs about 100 µs on an SSD",
            group=group,
        )
    plain = get(rc, "mmap")
    why = "above 1: mmap was faster"
    if plain and pread and plain["resident_after"] > 2 * pread["resident_after"]:
        why += (
            f"; its fault read-around brought {plain['resident_after']:.0%} of the file in "
            f"(pread: {pread['resident_after']:.0%}), in "
            f"{plain['major_faults']:.0f} major faults"
        )
    compare(
        "random reads, cold: pread time / mmap time",
        "mmap beats read for random access (cold file)",
        plain,
        pread,
        "us_per_read",
        True,
        why,
        "mmap faster (excellent vs painful)",
    )
    compare(
        "random reads, cold: pread time / mmap + MADV_RANDOM time",
        "mmap beats read for random access (cold file, read-ahead off as the page advises)",
        get(rc, "mmap + MADV_RANDOM"),
        pread,
        "us_per_read",
        True,
        "above 1: mmap was faster; MADV_RANDOM faults in one page at a time",
        "mmap faster (excellent vs painful)",
    )
    compare(
        "random reads, warm: pread time / mmap time",
        "mmap beats read for random access (file in the page cache)",
        get(rw, "mmap"),
        get(rw, "pread"),
        "us_per_read",
        True,
        "above 1: mmap was faster (warm mmap takes no fault and no syscall)",
        "mmap faster (excellent vs painful)",
    )
    compare(
        f"random reads, cold: pread time / io_uring ({DEEP} in flight) time",
        "io_uring with many reads in flight beats one-at-a-time reads (high fan-out)",
        get(rc, f"io_uring, {DEEP} in flight"),
        pread,
        "us_per_read",
        True,
        "above 1: io_uring was faster",
        "io_uring faster (async fan-out)",
    )
    seq_read = get(sc, "pread + fadvise SEQUENTIAL")
    seq_mmap = get(sc, "mmap + MADV_SEQUENTIAL")
    compare(
        "sequential, cold: pread+fadvise rate / mmap+MADV_SEQUENTIAL rate",
        "for sequential bulk reads, read with a fat buffer and fadvise beats mmap",
        seq_read,
        seq_mmap,
        "bytes_per_s",
        False,
        "above 1: read was faster",
        "read faster (best vs good)",
    )
    direct = get(sc, "O_DIRECT pread (aligned)")
    if direct:
        report.add(
            "page cache after O_DIRECT reads",
            direct["resident_after"] * 100,
            "%",
            "bypassed",
            verdict(direct["resident_after"] < 0.01),
            claim="O_DIRECT bypasses the page cache",
            group=group,
        )
    if seq_read:
        report.add(
            "page cache after buffered reads",
            seq_read["resident_after"] * 100,
            "%",
            "used",
            verdict(seq_read["resident_after"] > 0.5),
            claim="read() and mmap go through the page cache",
            group=group,
        )
    anon, hot = get(rm, "anon"), get(rw, "pread")
    compare(
        "random reads: cached pread time / anonymous MAP_SHARED time",
        "a region in memory (anonymous MAP_SHARED) reads faster than a cached file with pread",
        anon,
        hot,
        "us_per_read",
        True,
        "above 1: the region was faster",
        "region faster (excellent vs painful)",
    )
    compare(
        "random reads: cached pread time / shm_open region time",
        "a shm_open (tmpfs) region reads faster than a cached file with pread",
        get(rm, "shm"),
        hot,
        "us_per_read",
        True,
        "above 1: the region was faster",
        "region faster (excellent vs painful)",
    )


# ---- the scratch file and the page cache ------------------------------------------------


def _write_file(path: str, size: int) -> None:
    chunk = secrets.token_bytes(8 * MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        left = size
        while left:
            n = min(left, len(chunk))
            view = memoryview(chunk)[:n]
            while view:
                view = view[os.write(fd, view) :]
            left -= n
        os.fsync(fd)
    finally:
        os.close(fd)


class _Dropper:
    """Drops the file's pages from the page cache before a cold row, and says how it did."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.global_drop: str | None = None  # None: not tried yet
        self.global_count = 0
        self.worst = 0.0

    def drop(self) -> float:
        """Drop the file's cached pages; returns the fraction still resident afterwards.

        /proc/sys/vm/drop_caches (the whole machine's clean page cache: root only, and other
        work on the machine pays for it) is written once, before the first cold row, to learn
        and report whether it is permitted, and again only if the file's own drop left pages
        resident; posix_fadvise(DONTNEED) on the (fsync'd, clean) file does the rest.
        """
        fd = os.open(self.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if self.global_drop is None:
                self._global()
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            resident = probes.io_resident(fd, size)
            if resident > 0.01 and self.global_drop == "permitted":
                self._global()
                resident = probes.io_resident(fd, size)
        finally:
            os.close(fd)
        self.worst = max(self.worst, resident)
        return resident

    def _global(self) -> None:
        self.global_drop = self._drop_caches()
        self.global_count += self.global_drop == "permitted"

    @staticmethod
    def _drop_caches() -> str:
        try:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as f:
                f.write("1\n")
        except OSError as exc:
            return f"refused ({exc.strerror})"
        return "permitted"

    def describe(self) -> str:
        if self.global_drop is None:
            return "no cold row ran."
        return (
            f"writing 1 to /proc/sys/vm/drop_caches was {self.global_drop} (done "
            f"{self.global_count} time(s)); before each cold row "
            "posix_fadvise(POSIX_FADV_DONTNEED) on the fsync'd file; mincore() then found at "
            f"most {self.worst:.1%} of the file resident."
        )


@contextlib.contextmanager
def _shm_region(size: int) -> Iterator[int]:
    """A region as shm_open makes it (a file in /dev/shm), unlinked at once; its fd."""
    path = f"/dev/shm/shmipc-iobench-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.unlink(path)
        os.ftruncate(fd, size)
        probes.fault(size, shared=True, fd=fd)  # one write per page fills it
        yield fd
    finally:
        os.close(fd)


def _is_tmpfs(path: str) -> bool:
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                mount = parts[4]
                tail = parts[parts.index("-") + 1 :]
                real = os.path.realpath(path)
                if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
                    best
                ):
                    best, fstype = mount, tail[0] if tail else ""
    except (OSError, ValueError, IndexError):
        return False
    return fstype in ("tmpfs", "ramfs")


def _disk_tempdir() -> str:
    for candidate in (tempfile.gettempdir(), "/var/tmp"):
        if os.path.isdir(candidate) and not _is_tmpfs(candidate):
            return candidate
    return tempfile.gettempdir()


def _device_line(directory: str, size: int) -> str:
    text = f"{size // MIB} MiB in {directory}"
    if _is_tmpfs(directory):
        return text + " (tmpfs: the 'disk' rows read memory)"
    try:
        st = os.stat(directory)
        base = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        queue = os.path.join(base, "queue")
        if not os.path.isdir(queue):
            queue = os.path.join(base, "..", "queue")
        name = os.path.basename(os.path.realpath(base))

        def read(what: str) -> str:
            with open(os.path.join(queue, what), encoding="ascii") as f:
                return f.read().strip()

        return (
            f"{text}, on /dev/{name} (rotational {read('rotational')}, read-ahead "
            f"{read('read_ahead_kb')} KiB, scheduler {read('scheduler')})"
        )
    except OSError:
        return text
