"""``--limits``: the reference page's costed claims about mappings, measured on this machine.

``run(quick, progress)`` measures, in native loops (shmipc/bench/probes.py over
csrc/measure.c): the minor page-fault cost per 4 KiB page with and without prefault
(MAP_POPULATE, MADV_POPULATE_WRITE), random loads over a large mapping with 4 KiB pages versus
transparent and explicit hugepages (TLB reach), memcpy bandwidth, a read syscall on a hot page,
futex / pipe / cache-line round trips between two threads pinned to two CPUs, the usable
address space, and SIGBUS on a truncated mapping. It returns a ``claims.Report``; a measurement
the machine cannot make is a row saying why, never a number.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import probes
from .claims import HELD, NOT_COMPARABLE, NOT_HELD, UNAVAILABLE, Report, near, verdict
from .machine import describe

__all__ = ["busy_note", "machine_lines", "run"]

Progress = Callable[[int, int, str], None]
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Sizes:
    """How big and how long: the full run aims at stable numbers, --quick at a smoke run."""

    fault_bytes: int
    repeats: int
    walk_bytes: int
    accesses: int
    copy_large: int
    copy_total: int
    wake_rounds: int
    line_rounds: int
    pread_count: int
    trip_runs: int  # short runs of round trips: a median of many resists preemption


FULL = Sizes(256 * MIB, 5, 1 * GIB, 4_000_000, 256 * MIB, 4 * GIB, 4_000, 20_000, 200_000, 15)
QUICK = Sizes(16 * MIB, 1, 64 * MIB, 200_000, 32 * MIB, 128 * MIB, 1_000, 20_000, 10_000, 3)


def run(quick: bool = False, progress: Progress | None = None) -> Report:
    """Measure every limit; ``progress(done, total, label)`` is called before each step."""
    sizes = QUICK if quick else FULL
    report = Report(
        "The reference page's limits, measured here" + (" (--quick: a smoke run)" if quick else ""),
        machine=machine_lines(),
    )
    busy = busy_note()
    steps: list[tuple[str, Callable[[Report, Sizes], None]]] = [
        ("page and hugepage sizes, address space", _sizes),
        ("page faults and prefault", _faults),
        ("random access: 4 KiB pages and hugepages", _tlb),
        ("memcpy and a read syscall on a hot page", _copies),
        ("round trips: futex, pipe, cache line", _round_trips),
        ("mapping 1 TiB, SIGBUS on truncate", _mapping_edges),
    ]
    for done, (label, step) in enumerate(steps):
        if progress:
            progress(done, len(steps), label)
        try:
            step(report, sizes)
        except OSError as exc:  # a whole step the machine refused: one row says so
            report.unavailable(label, "", "", f"{exc}", group=label)
    if progress:
        progress(len(steps), len(steps), "done")
    report.method += [
        "Every loop runs in C (csrc/measure.c), timed with CLOCK_MONOTONIC; fault counts from "
        f"getrusage(RUSAGE_THREAD). Page-fault, large random-access and pread rows are medians of "
        f"{sizes.repeats} run(s); round trips are medians of {sizes.trip_runs} short runs "
        "(a run the scheduler preempts counts once), with the best run in the note.",
        "A figure the page gives as '~X' held if this machine's value lies within 3x of X "
        "(the page states orders of magnitude); comparisons held if the order came out as the "
        "page says.",
        "Machine load (other work on the same CPUs) shows up in every number: see the load line.",
    ]
    if busy:
        report.method.append(busy)
    return report


def busy_note() -> str | None:
    """A warning when other work already keeps the CPUs busy (every number is then inflated)."""
    try:
        load, cpus = os.getloadavg()[0], len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if load <= cpus / 2:
        return None
    return (
        f"Other work kept this machine busy when the run started (load {load:.1f} on {cpus} "
        "CPUs): timings are inflated and round trips most of all; rerun on a quiet machine "
        "for the machine's own figures."
    )


def machine_lines() -> list[tuple[str, str]]:
    """The machine description, plus what decides the page-size rows."""
    lines = [(k, v) for k, v in describe() if k != "packages"]
    lines.append(("memory", _meminfo_line()))
    lines.append(("transparent hugepages", _thp_setting()))
    return lines


# ---- steps ------------------------------------------------------------------------------


def _sizes(report: Report, sizes: Sizes) -> None:
    group = "sizes"
    page = os.sysconf("SC_PAGE_SIZE")
    report.add(
        "page size",
        page / KIB,
        "KiB",
        "4 KB",
        verdict(page == 4096),
        claim="the default page is 4 KB",
        group=group,
    )
    found = _hugepage_sizes()
    wanted = {2 * MIB: "2 MiB", GIB: "1 GiB"}
    have = [text for size, text in wanted.items() if size in found]
    report.add(
        "hugepage sizes the kernel offers",
        len(found),
        "sizes",
        "2 MB / 1 GB",
        verdict(len(have) == 2),
        note=", ".join(_bytes_text(s) for s in sorted(found)) or "none",
        claim="hugepages come in 2 MB and 1 GB",
        group=group,
    )
    bits = _address_bits()
    if bits is None:
        report.unavailable(
            "user address space",
            "bits",
            "47 bits (~128 TB)",
            "could not read /proc/self/maps",
            group=group,
        )
    else:
        report.add(
            "user address space (highest mapping)",
            bits,
            "bits",
            "47 bits (~128 TB)",
            verdict(bits == 47),
            note=f"{(1 << bits) / (1 << 40):,.0f} TiB",
            claim="64-bit Linux gives 47 bits of user address space",
            group=group,
        )


def _faults(report: Report, sizes: Sizes) -> None:
    group = "page faults (per 4 KiB page)"
    n = sizes.fault_bytes

    def median(**kwargs: Any) -> dict[str, float]:
        runs = [probes.fault(n, **kwargs) for _ in range(sizes.repeats)]
        return {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    # The page's "minor fault": the page is already in the page cache and the kernel only
    # installs a PTE. A memfd (tmpfs) file filled beforehand is exactly that.
    with _memfd(n) as fd:
        cached = median(shared=True, fd=fd)
    report.add(
        "minor fault, page already cached (tmpfs file, first write)",
        cached["touch_ns_per_page"] / 1e3,
        "µs",
        "~1 µs",
        verdict(near(cached["touch_ns_per_page"], 1000)),
        note=f"{cached['touch_faults_per_page']:.2f} faults/page, {_mib(n)} mapped",
        claim="a minor fault costs about 1 µs",
        group=group,
    )
    lazy = median(shared=False)
    report.add(
        "first write, anonymous MAP_PRIVATE (fault + zero-fill)",
        lazy["touch_ns_per_page"] / 1e3,
        "µs",
        "-",
        NOT_COMPARABLE,
        note=f"{lazy['touch_faults_per_page']:.2f} faults/page",
        group=group,
    )
    shared = median(shared=True)
    report.add(
        "first write, anonymous MAP_SHARED (fault + zero-fill)",
        shared["touch_ns_per_page"] / 1e3,
        "µs",
        "-",
        NOT_COMPARABLE,
        note=f"{shared['touch_faults_per_page']:.2f} faults/page",
        group=group,
    )
    report.add(
        "munmap of touched anonymous pages",
        lazy["unmap_ns_per_page"] / 1e3,
        "µs",
        "-",
        NOT_COMPARABLE,
        group=group,
    )
    for mode, label in (("populate", "MAP_POPULATE"), ("populate_write", "MADV_POPULATE_WRITE")):
        try:
            pre = median(shared=False, prefault=mode)
        except OSError as exc:
            report.unavailable(
                f"prefault with {label}",
                "µs",
                "-",
                f"the kernel refused it: {exc}",
                group=group,
                claim="prefaulting takes the faults out of later accesses",
            )
            continue
        report.add(
            f"{label}: prefault cost",
            pre["setup_ns_per_page"] / 1e3,
            "µs",
            "-",
            NOT_COMPARABLE,
            note=f"{pre['setup_faults_per_page']:.2f} faults/page in "
            "the populate call, vs the lazy first write above",
            group=group,
        )
        after = pre["touch_ns_per_page"]
        ok = pre["touch_faults_per_page"] < 0.01 and after < 0.25 * lazy["touch_ns_per_page"]
        report.add(
            f"{label}: first write afterwards",
            after / 1e3,
            "µs",
            "no fault after prefault",
            verdict(ok),
            note=f"{pre['touch_faults_per_page']:.3f} faults/page",
            claim=f"prefaulting ({label}) takes the faults out of later accesses",
            group=group,
        )
    # "Anonymous MAP_SHARED: cheaper than POSIX shm for parent/child only": set up and touch.
    # Interleaved, so that a burst of load on the machine hits both sides alike.
    anon_runs, shm_runs = [], []
    for _ in range(sizes.repeats):
        anon_runs.append(probes.fault(n, shared=True)["total_ns_per_page"])
        shm_runs.append(_shm_open_cost(n))
    anon_total = statistics.median(anon_runs)
    shm_ok = [v for v in shm_runs if v is not None]
    shm_total = statistics.median(shm_ok) if len(shm_ok) == len(shm_runs) else None
    if shm_total is None:
        report.unavailable(
            "shm_open region: create, map, first write",
            "µs",
            "-",
            "could not create a file in /dev/shm",
            group=group,
        )
    else:
        cheaper = anon_total < shm_total * 0.95
        if cheaper:
            how = ""
        elif anon_total > shm_total * 1.05:
            how = "; the anonymous one was dearer here"
        else:
            how = "; the same cost within 5%"
        report.add(
            "shm_open region: create, map, first write",
            shm_total / 1e3,
            "µs",
            "dearer than anonymous MAP_SHARED",
            verdict(cheaper),
            note=f"anonymous MAP_SHARED: {anon_total / 1e3:.3g} µs/page, measured in turn with "
            f"it; both are shmem pages{how}",
            claim="anonymous MAP_SHARED is cheaper than POSIX shm (parent/child)",
            group=group,
        )


def _tlb(report: Report, sizes: Sizes) -> None:
    group = "random access and TLB reach"
    try:
        tlb = probes.tlb_info()
    except OSError as exc:
        report.unavailable(
            "4 KiB TLB reach (cpuid)",
            "MiB",
            "~2 MB (512 entries)",
            f"cpuid does not describe the TLB here: {exc.strerror}",
            group=group,
        )
    else:
        reach = tlb["l2_4k"] * 4 * KIB
        report.add(
            "4 KiB TLB reach (largest dTLB, cpuid)",
            reach / MIB,
            "MiB",
            "~2 MB (512 entries)",
            verdict(near(reach, 2 * MIB)),
            note=f"L1 dTLB {tlb['l1_4k']}, L2 dTLB {tlb['l2_4k']} entries for 4 KiB",
            claim="with 4 KB pages the TLB reaches about 2 MB",
            group=group,
        )
        reach2 = tlb["l2_2m"] * 2 * MIB
        report.add(
            "2 MiB TLB reach (largest dTLB, cpuid)",
            reach2 / GIB,
            "GiB",
            "~1 GB",
            verdict(near(reach2, GIB)),
            note=f"L1 dTLB {tlb['l1_2m']}, L2 dTLB {tlb['l2_2m']} entries for 2 MiB",
            claim="with 2 MB hugepages the same TLB covers about 1 GB",
            group=group,
        )
    small = 16 * MIB
    hot = probes.random_access(small, pages="4k", accesses=sizes.accesses)
    report.add(
        f"random load, {_mib(small)} working set, 4 KiB pages",
        hot["ns_per_access"],
        "ns",
        "-",
        NOT_COMPARABLE,
        note="fits the last-level cache",
        group=group,
    )
    big = sizes.walk_bytes
    thp_why = _thp_unusable()
    # 4 KiB and THP runs alternate, so that a burst of load hits both alike; medians.
    base_runs, thp_runs = [], []
    for _ in range(sizes.repeats):
        base_runs.append(probes.random_access(big, pages="4k", accesses=sizes.accesses))
        if not thp_why:
            thp_runs.append(probes.random_access(big, pages="thp", accesses=sizes.accesses))
    base = {"ns_per_access": statistics.median(r["ns_per_access"] for r in base_runs)}
    report.add(
        f"random load, {_mib(big)} working set, 4 KiB pages",
        base["ns_per_access"],
        "ns",
        "~30 ns (memory-speed hit)",
        verdict(near(base["ns_per_access"], 30)),
        note="a resident page: a cache miss plus a TLB miss per load",
        claim="touching a page already mapped is a memory-speed hit, ~30 ns",
        group=group,
    )
    if thp_why:
        report.unavailable(
            f"random load, {_mib(big)}, transparent hugepages",
            "ns",
            "fewer TLB misses",
            thp_why,
            group=group,
            claim="hugepages make random access over a large set cheaper",
        )
    else:
        thp = {
            "ns_per_access": statistics.median(r["ns_per_access"] for r in thp_runs),
            "thp_kb": min(r["thp_kb"] for r in thp_runs),
        }
        got = thp["thp_kb"] * KIB
        if got <= 0:
            report.unavailable(
                f"random load, {_mib(big)}, transparent hugepages",
                "ns",
                "fewer TLB misses",
                "MADV_HUGEPAGE was accepted but the kernel "
                "gave no hugepage (AnonHugePages did not grow)",
                group=group,
                claim="hugepages make random access over a large set cheaper",
            )
        else:
            speedup = base["ns_per_access"] / thp["ns_per_access"]
            report.add(
                f"random load, {_mib(big)}, transparent hugepages",
                thp["ns_per_access"],
                "ns",
                "512x fewer TLB misses",
                verdict(speedup >= 1.1),
                note=f"{speedup:.2f}x the 4 KiB speed; {got / big:.0%} of the set in "
                "2 MiB pages; the page's 512x counts misses, this is time per load"
                + ("; in a VM the host's page size also limits TLB reach" if _hypervisor() else ""),
                claim="hugepages make random access over a large set cheaper",
                group=group,
            )
    try:
        huge = probes.random_access(
            big - big % (2 * MIB) or 2 * MIB, pages="hugetlb", accesses=sizes.accesses
        )
    except OSError as exc:
        report.unavailable(
            f"random load, {_mib(big)}, explicit hugepages (MAP_HUGETLB)",
            "ns",
            "fewer TLB misses",
            f"{exc.strerror}: {_hugetlb_state()}",
            group=group,
        )
    else:
        report.add(
            f"random load, {_mib(big)}, explicit hugepages (MAP_HUGETLB)",
            huge["ns_per_access"],
            "ns",
            "-",
            NOT_COMPARABLE,
            note=f"{base['ns_per_access'] / huge['ns_per_access']:.2f}x the 4 KiB speed",
            group=group,
        )


def _copies(report: Report, sizes: Sizes) -> None:
    group = "memcpy and read()"
    rates = {}
    for nbytes, where in ((32 * KIB, "L1"), (1 * MIB, "L2"), (sizes.copy_large, "memory")):
        total = max(sizes.copy_total // (4 if nbytes >= 64 * MIB else 1), nbytes)
        runs = [probes.memcpy(nbytes, total=total) for _ in range(max(1, sizes.repeats // 2))]
        rate = statistics.median(r["bytes_per_s"] for r in runs)
        rates[nbytes] = rate
        report.add(
            f"memcpy {_bytes_text(nbytes)} ({where})",
            rate / 1e9,
            "GB/s",
            "-",
            NOT_COMPARABLE,
            group=group,
        )
    size = 64 * MIB if sizes.repeats != 1 else 16 * MIB
    with _memfd(size) as fd:
        for block in (64, 4096):
            runs = [
                probes.io_read(
                    fd,
                    "pread",
                    size=size,
                    block=block,
                    random=True,
                    count=sizes.pread_count,
                    warm=True,
                )
                for _ in range(sizes.repeats)
            ]
            us = statistics.median(r["us_per_read"] for r in runs)
            if block == 64:
                report.add(
                    "pread 64 B of a hot page (syscall overhead)",
                    us * 1e3,
                    "ns",
                    "~100 ns",
                    verdict(near(us * 1e3, 100)),
                    note="includes summing the 64 bytes",
                    claim="a read syscall costs about 100 ns plus the copy",
                    group=group,
                )
            else:
                copy_ns = 4096 / rates[32 * KIB] * 1e9
                expect = 100 + copy_ns
                report.add(
                    "pread 4 KiB of a hot page",
                    us * 1e3,
                    "ns",
                    f"~100 ns + memcpy = {expect:.0f} ns",
                    verdict(near(us * 1e3, expect)),
                    note=f"memcpy of 4 KiB here: {copy_ns:.0f} ns",
                    claim="reading a hot page costs about 100 ns plus its memcpy",
                    group=group,
                )


def _round_trips(report: Report, sizes: Sizes) -> None:
    group = "round trips between two threads"
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except OSError:
        cpus = []
    across = (cpus[0], cpus[1]) if len(cpus) >= 2 else None
    same = (cpus[0], cpus[0]) if cpus else None
    cases = [
        ("futex wake, across two CPUs", "futex", across, sizes.wake_rounds),
        ("futex wake, both on one CPU", "futex", same, sizes.wake_rounds),
        ("pipe, across two CPUs", "pipe", across, sizes.wake_rounds),
        ("pipe, both on one CPU", "pipe", same, sizes.wake_rounds),
        ("cache line (atomic ping-pong), across two CPUs", "cacheline", across, sizes.line_rounds),
    ]
    for label, kind, pair, rounds in cases:
        if pair is None:
            report.unavailable(
                label, "µs", "-", f"this process may use only CPUs {cpus}", group=group
            )
            continue
        runs = [probes.pingpong(kind, rounds, cpus=pair) for _ in range(sizes.trip_runs)]
        ns = statistics.median(r["ns_per_round_trip"] for r in runs)
        best = min(r["ns_per_round_trip"] for r in runs)
        notes = [f"median of {len(runs)} runs of {rounds:,}; best run {_ns_text(best)}"]
        if not all(r["pinned"] for r in runs):
            notes.append("not pinned: sched_setaffinity refused")
        if kind == "futex":
            notes.append(
                f"{statistics.median(r['sleeps_per_round_trip'] for r in runs):.2f} "
                "sleeps per round trip"
            )
        value, unit = (ns, "ns") if ns < 1000 else (ns / 1e3, "µs")
        report.add(label, value, unit, "-", NOT_COMPARABLE, note="; ".join(notes), group=group)


def _mapping_edges(report: Report, sizes: Sizes) -> None:
    group = "mapping edges"
    tib = 1 << 40
    with tempfile.TemporaryDirectory(prefix="shmipc-limits-") as d:
        path = os.path.join(d, "sparse")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, tib)
                rss0 = _rss_kb()
                with mmap.mmap(fd, tib, access=mmap.ACCESS_READ) as m:
                    first = m[0] + m[tib - 1]
                    grew = _rss_kb() - rss0
            finally:
                os.close(fd)
        except (OSError, ValueError, OverflowError) as exc:
            report.unavailable(
                "map a 1 TiB sparse file",
                "TiB",
                "routine",
                f"{exc} (filesystem of {d})",
                group=group,
                claim="mapping 1 TB of files is routine",
            )
        else:
            report.add(
                "map a 1 TiB sparse file, read both ends",
                1,
                "TiB",
                "routine",
                HELD,
                shown="mapped",
                note=f"resident memory grew {grew:,} KiB (pages only where touched); read {first}",
                claim="mapping 1 TB of files is routine; pages come only when touched",
                group=group,
            )
    status, shown, note = _sigbus_after_truncate()
    report.add(
        "touch a mapping past the file's truncated end",
        None,
        "",
        "SIGBUS",
        status,
        note=note,
        shown=shown,
        claim="touching a mapping past a truncated end raises SIGBUS",
        group=group,
    )


# ---- helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def _memfd(nbytes: int) -> Iterator[int]:
    """A tmpfs file of nbytes, every page already in the page cache; no name in /dev/shm."""
    fd = os.memfd_create("shmipc-limits", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, nbytes)
        probes.fault(nbytes, shared=True, fd=fd)  # one write per page fills it
        yield fd
    finally:
        os.close(fd)


def _shm_open_cost(nbytes: int) -> float | None:
    """ns per page to create a /dev/shm file as shm_open does, map it and write every page."""
    path = f"/dev/shm/shmipc-limits-{os.getpid()}-{secrets.token_hex(4)}"
    t0 = time.perf_counter_ns()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        os.unlink(path)
        os.ftruncate(fd, nbytes)
        setup = time.perf_counter_ns() - t0
        r = probes.fault(nbytes, shared=True, fd=fd)
    finally:
        os.close(fd)
    return r["total_ns_per_page"] + setup / r["pages"]


def _sigbus_after_truncate() -> tuple[str, str, str]:
    code = textwrap.dedent(
        """
        import mmap, os, sys, tempfile
        fd, path = tempfile.mkstemp(dir=sys.argv[1])
        os.unlink(path)
        os.ftruncate(fd, 1 << 16)
        m = mmap.mmap(fd, 1 << 16)
        os.ftruncate(fd, 4096)
        sys.stdout.write("touching\\n"); sys.stdout.flush()
        m[1 << 15] = 1
        print("survived")
        """
    )
    with tempfile.TemporaryDirectory(prefix="shmipc-limits-") as d:
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code, d], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return UNAVAILABLE, "", f"could not run the child: {exc}"
    if proc.returncode == -signal.SIGBUS:
        return HELD, "SIGBUS", "a child process touched the page past the end and was killed"
    return NOT_HELD, f"status {proc.returncode}", f"child said {proc.stdout.strip()!r}"


def _hugepage_sizes() -> list[int]:
    try:
        names = os.listdir("/sys/kernel/mm/hugepages")
    except OSError:
        return []
    found = []
    for name in names:
        if name.startswith("hugepages-") and name.endswith("kB"):
            found.append(int(name[len("hugepages-") : -2]) * KIB)
    return found


def _address_bits() -> int | None:
    top = 0
    try:
        with open("/proc/self/maps", encoding="ascii") as f:
            for line in f:
                if "[vsyscall]" in line:
                    continue
                end = int(line.split("-", 1)[1].split()[0], 16)
                top = max(top, end - 1)
    except (OSError, ValueError):
        return None
    return top.bit_length() if top else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def _meminfo() -> dict[str, str]:
    out = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def _meminfo_line() -> str:
    info = _meminfo()
    return (
        f"{info.get('MemTotal', '?')} total, {info.get('MemAvailable', '?')} available, "
        f"HugePages_Total {info.get('HugePages_Total', '?')} of {info.get('Hugepagesize', '?')}"
    )


def _thp_setting() -> str:
    enabled = _read("/sys/kernel/mm/transparent_hugepage/enabled") or "not present"
    defrag = _read("/sys/kernel/mm/transparent_hugepage/defrag") or "not present"
    return f"enabled: {enabled}; defrag: {defrag}"


def _thp_unusable() -> str | None:
    enabled = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    if enabled is None:
        return "this kernel has no transparent hugepages (/sys/kernel/mm/transparent_hugepage)"
    if "[never]" in enabled:
        return f"transparent hugepages are disabled here ({enabled})"
    return None


def _hugetlb_state() -> str:
    info = _meminfo()
    total = info.get("HugePages_Total", "?")
    if total == "0":
        return (
            "explicit hugepages are not configured here (HugePages_Total 0 in /proc/meminfo;"
            " vm.nr_hugepages would reserve some)"
        )
    return f"HugePages_Total {total}, HugePages_Free {info.get('HugePages_Free', '?')}"


def _hypervisor() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and " hypervisor" in line for line in f)
    except OSError:
        return False


def _rss_kb() -> int:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _ns_text(ns: float) -> str:
    return f"{ns:.0f} ns" if ns < 1000 else f"{ns / 1e3:.3g} µs"


def _mib(n: int) -> str:
    return _bytes_text(n)


def _bytes_text(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"
