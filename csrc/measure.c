/* Native timing loops behind `python -m shmipc.bench --limits` and `--io`.
 *
 * Python cannot time a page fault, a cache line's round trip or an io_uring submission
 * honestly (the interpreter's own cost is larger than the thing measured), so each loop here
 * runs whole in C and hands back raw totals (nanoseconds, bytes, operations, fault counts);
 * shmipc/bench/probes.py turns them into rates. Every entry point checks its arguments first
 * and returns -EINVAL before it maps or starts anything; any other failure is a negated errno
 * saying why the measurement could not run (the report prints it: nothing is made up).
 *
 * Clock: CLOCK_MONOTONIC. Fault counts: getrusage(RUSAGE_THREAD), so that another thread of
 * the caller cannot inflate them.
 *
 * Memory ordering in the two-thread loops: each round's store of the shared word is a release
 * store paired with the other thread's acquire load of the same word (the only data either
 * side reads is that word, so the pairing only keeps the loop honest, not any payload).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "shmipc.h"

/* x86 only: cpuid and the pause hint. Elsewhere the TLB row says "unavailable". */
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define HAVE_CPUID 1
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() __asm__ __volatile__("" ::: "memory")
#endif

/* io_uring needs the kernel's uapi header and syscall numbers (Linux 5.1+ headers); without
 * them the io_uring rows say ENOSYS. */
#if defined(__has_include)
#if __has_include(<linux/io_uring.h>) && defined(__NR_io_uring_setup)
#include <linux/io_uring.h>
#define HAVE_IO_URING 1
#endif
#endif

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define PAGE_4K 4096u
#define HUGE_2M ((size_t)2 << 20)
#define MAX_BYTES ((size_t)1 << 40) /* no measurement maps more than 1 TiB */

static volatile uint64_t sink; /* keeps the compiler from dropping loads whose value is unused */

int64_t shmipc_measure_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void faults(long *minor, long *major)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    *minor = ru.ru_minflt;
    *major = ru.ru_majflt;
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static uint64_t sum_words(const char *p, size_t n)
{
    const uint64_t *w = (const uint64_t *)p;
    uint64_t s = 0;
    for (size_t i = 0; i < n / 8; i++)
        s += w[i];
    return s;
}

/* A mapping of `bytes` of fd must not reach past the file's end: touching there is SIGBUS.
 * 0 if fd is a regular file at least that long, else a negated errno. */
static int covers(int fd, size_t bytes)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    if (!S_ISREG(st.st_mode) || st.st_size < 0 || (size_t)st.st_size < bytes)
        return -EINVAL;
    return 0;
}

/* ---- page faults -------------------------------------------------------------------- */

int shmipc_measure_fault(int fd, size_t bytes, int shared, int prefault, double *out)
{
    long page = sysconf(_SC_PAGESIZE);
    if (!out || page <= 0 || bytes == 0 || bytes % (size_t)page || bytes > MAX_BYTES ||
        prefault < 0 || prefault > 2 || (fd >= 0 && !shared))
        return -EINVAL;
    if (fd >= 0) {
        int c = covers(fd, bytes);
        if (c)
            return c;
    }
    int flags = (shared ? MAP_SHARED : MAP_PRIVATE) | (fd < 0 ? MAP_ANONYMOUS : 0);
    if (prefault == 1)
        flags |= MAP_POPULATE;
    long m0, j0, m1, j1, m2, j2;
    faults(&m0, &j0);
    int64_t t0 = shmipc_measure_now_ns();
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, flags, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    if (prefault == 2 && madvise(p, bytes, MADV_POPULATE_WRITE) != 0) {
        int e = errno;
        munmap(p, bytes);
        return -e;
    }
    int64_t t1 = shmipc_measure_now_ns();
    faults(&m1, &j1);
    for (size_t off = 0; off < bytes; off += (size_t)page)
        ((volatile char *)p)[off] = 1; /* a write: one fault per page, no fault-around */
    int64_t t2 = shmipc_measure_now_ns();
    faults(&m2, &j2);
    munmap(p, bytes);
    int64_t t3 = shmipc_measure_now_ns();
    out[0] = (double)(t1 - t0);  /* mmap (+ populate) */
    out[1] = (double)(t2 - t1);  /* first write to every page */
    out[2] = (double)(t3 - t2);  /* munmap */
    out[3] = (double)(m1 - m0);  /* minor faults during mmap/populate */
    out[4] = (double)(m2 - m1);  /* minor faults during the writes */
    out[5] = (double)(bytes / (size_t)page);
    return 0;
}

/* ---- random access and TLB reach ---------------------------------------------------- */

/* AnonHugePages of the whole process in kB (smaps_rollup), or -1. */
static long anon_huge_kb(void)
{
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (!f)
        return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* mode 0: 4 KiB pages (MADV_NOHUGEPAGE); 1: transparent hugepages (MADV_HUGEPAGE on a 2 MiB
 * aligned range); 2: explicit hugepages (MAP_HUGETLB). A dependent pointer chase visits every
 * 4 KiB page of `bytes` once per lap in a random order, at a random cache line within the
 * page, so each step is one load the CPU cannot overlap with the next. */
int shmipc_measure_random_access(size_t bytes, int mode, size_t accesses, uint64_t seed,
                                 double *out)
{
    if (!out || mode < 0 || mode > 2 || bytes < 2 * PAGE_4K || bytes % PAGE_4K ||
        (mode == 2 && bytes % HUGE_2M) || bytes > ((size_t)64 << 30) || accesses == 0)
        return -EINVAL;
    size_t span = mode == 1 ? bytes + HUGE_2M : bytes;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | (mode == 2 ? MAP_HUGETLB : 0);
    long huge0 = anon_huge_kb();
    char *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (raw == MAP_FAILED)
        return -errno;
    char *p = raw;
    if (mode == 1)
        p = (char *)(((uintptr_t)raw + HUGE_2M - 1) & ~(uintptr_t)(HUGE_2M - 1));
    if (mode == 0 && madvise(p, bytes, MADV_NOHUGEPAGE) != 0) {
        int e = errno;
        munmap(raw, span);
        return -e;
    }
    if (mode == 1 && madvise(p, bytes, MADV_HUGEPAGE) != 0) {
        int e = errno;
        munmap(raw, span);
        return -e;
    }
    size_t n = bytes / PAGE_4K;
    uint32_t *order = malloc(n * sizeof *order);
    if (!order) {
        munmap(raw, span);
        return -ENOMEM;
    }
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++)
        order[i] = (uint32_t)i;
    for (size_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
        size_t j = xorshift(&s) % (i + 1);
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    int64_t t0 = shmipc_measure_now_ns();
    /* A node per page at a random line: node(order[i]) points at node(order[i + 1]). */
    char **node = malloc(n * sizeof *node);
    if (!node) {
        free(order);
        munmap(raw, span);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        node[i] = p + (size_t)order[i] * PAGE_4K + (xorshift(&s) % (PAGE_4K / 64)) * 64;
    for (size_t i = 0; i < n; i++)
        *(char **)node[i] = node[(i + 1) % n];
    int64_t t1 = shmipc_measure_now_ns();
    long huge1 = anon_huge_kb();
    char *cur = node[0];
    free(node);
    free(order);
    for (size_t i = 0; i < n && i < accesses; i++) /* warm: caches and TLB as steady as they get */
        cur = *(char **)cur;
    int64_t t2 = shmipc_measure_now_ns();
    for (size_t i = 0; i < accesses; i++)
        cur = *(char **)cur;
    int64_t t3 = shmipc_measure_now_ns();
    sink = (uint64_t)(uintptr_t)cur;
    munmap(raw, span);
    out[0] = (double)(t3 - t2);
    out[1] = (double)accesses;
    out[2] = (huge0 >= 0 && huge1 >= 0) ? (double)(huge1 - huge0) : -1.0; /* kB in THP */
    out[3] = (double)(t1 - t0); /* building the chain (first touch of every page) */
    return 0;
}

/* cpuid's TLB description (AMD leaves 0x80000005/6): out = {L1 dTLB 4K entries, L1 dTLB 2M
 * entries, L2 dTLB 4K entries, L2 dTLB 2M entries}; -ENOTSUP where the CPU does not say. */
int shmipc_measure_tlb_info(double *out)
{
    if (!out)
        return -EINVAL;
#ifndef HAVE_CPUID
    return -ENOTSUP;
#else
    unsigned a, b, c, d;
    if (!__get_cpuid(0x80000000, &a, &b, &c, &d) || a < 0x80000006)
        return -ENOTSUP;
    unsigned a5 = 0, b5 = 0, c5 = 0, d5 = 0, a6 = 0, b6 = 0, c6 = 0, d6 = 0;
    __get_cpuid(0x80000005, &a5, &b5, &c5, &d5);
    __get_cpuid(0x80000006, &a6, &b6, &c6, &d6);
    if (b5 == 0 && b6 == 0)
        return -ENOTSUP; /* Intel leaves these zero: its leaf 0x18 is not decoded here */
    out[0] = (double)((b5 >> 16) & 0xff);
    out[1] = (double)((a5 >> 16) & 0xff);
    out[2] = (double)((b6 >> 16) & 0xfff);
    out[3] = (double)((a6 >> 16) & 0xfff);
    return 0;
#endif
}

/* ---- memcpy ---------------------------------------------------------------------------- */

int shmipc_measure_memcpy(size_t bytes, size_t total, double *out)
{
    if (!out || bytes < 64 || bytes > ((size_t)4 << 30) || total < bytes || total > MAX_BYTES)
        return -EINVAL;
    char *src = mmap(NULL, 2 * bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    if (src == MAP_FAILED)
        return -errno;
    char *dst = src + bytes;
    memset(src, 0x5a, 2 * bytes); /* fault everything in before the clock starts */
    size_t reps = total / bytes;
    memcpy(dst, src, bytes);
    int64_t t0 = shmipc_measure_now_ns();
    for (size_t i = 0; i < reps; i++) {
        memcpy(dst, src, bytes);
        __asm__ __volatile__("" ::: "memory");
    }
    int64_t t1 = shmipc_measure_now_ns();
    sink = (uint64_t)dst[bytes - 1];
    munmap(src, 2 * bytes);
    out[0] = (double)(t1 - t0);
    out[1] = (double)(reps * bytes);
    return 0;
}

/* ---- two-thread round trips ------------------------------------------------------------ */

struct pingpong {
    int kind;             /* 0 futex, 1 pipe, 2 cache line */
    size_t rounds;
    int cpu;              /* -1: not pinned */
    _Atomic uint32_t *word;
    int to_b[2], to_a[2];
    _Atomic int ready;
    int pinned;
    double sleeps;        /* futex waits that slept, on B's side */
};

static long futex(_Atomic uint32_t *w, int op, uint32_t val)
{
    /* Not FUTEX_PRIVATE_FLAG: the word lives in a MAP_SHARED page, as shmipc's do, so the
     * kernel takes its shared-key path, the one two processes would use. */
    return syscall(SYS_futex, (uint32_t *)w, op, val, NULL, NULL, 0);
}

static int pin(int cpu)
{
    if (cpu < 0)
        return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

static inline void relax(unsigned *spins)
{
    CPU_RELAX();
    if (++*spins % 4096 == 0)
        sched_yield(); /* the other side lost its CPU: give ours up rather than burn it */
}

/* Side B: answers round i (odd value 2i+1) with 2i+2. */
static void *side_b(void *arg)
{
    struct pingpong *pp = arg;
    int pinned = pin(pp->cpu);
    atomic_store_explicit(&pp->ready, 1 + pinned, memory_order_release);
    long slept = 0;
    char c = 0;
    for (size_t i = 0; i < pp->rounds; i++) {
        uint32_t want = (uint32_t)(2 * i + 1);
        if (pp->kind == 1) {
            if (read(pp->to_b[0], &c, 1) != 1 || write(pp->to_a[1], &c, 1) != 1)
                break;
            continue;
        }
        unsigned spins = 0;
        uint32_t v;
        /* acquire: pairs with A's release store of 2i+1 */
        while ((v = atomic_load_explicit(pp->word, memory_order_acquire)) != want) {
            if (pp->kind == 0) {
                if (futex(pp->word, FUTEX_WAIT, v) == 0)
                    slept++;
            } else {
                relax(&spins);
            }
        }
        /* release: pairs with A's acquire load */
        atomic_store_explicit(pp->word, want + 1, memory_order_release);
        if (pp->kind == 0)
            futex(pp->word, FUTEX_WAKE, 1);
    }
    pp->sleeps = (double)slept;
    return NULL;
}

/* The two-thread loops' setup: this thread's affinity saved and pinned to cpu_a, then the
 * partner thread started; it pins itself and stores 1 + (pinned) into *ready. */
struct pair_run {
    cpu_set_t saved;
    int have_saved;
    int pinned; /* both threads pinned, as asked */
    pthread_t partner;
};

/* 0 once the partner runs, or a negated errno (no partner to join; the affinity is restored
 * all the same by pair_restore). */
static int pair_start(struct pair_run *r, int cpu_a, int cpu_b, void *(*fn)(void *), void *arg,
                      _Atomic int *ready)
{
    r->have_saved = pthread_getaffinity_np(pthread_self(), sizeof r->saved, &r->saved) == 0;
    int pinned_a = pin(cpu_a);
    int e = pthread_create(&r->partner, NULL, fn, arg);
    if (e != 0)
        return -e;
    while (atomic_load_explicit(ready, memory_order_acquire) == 0)
        sched_yield();
    int pinned_b = atomic_load_explicit(ready, memory_order_acquire) == 2;
    r->pinned = pinned_a && pinned_b && cpu_a >= 0 && cpu_b >= 0;
    return 0;
}

static void pair_restore(struct pair_run *r)
{
    if (r->have_saved)
        pthread_setaffinity_np(pthread_self(), sizeof r->saved, &r->saved);
}

int shmipc_measure_pingpong(int kind, size_t rounds, int cpu_a, int cpu_b, double *out)
{
    if (!out || kind < 0 || kind > 2 || rounds == 0 || rounds > ((size_t)1 << 30) ||
        cpu_a < -1 || cpu_b < -1 || cpu_a >= CPU_SETSIZE || cpu_b >= CPU_SETSIZE)
        return -EINVAL;
    struct pingpong pp = {.kind = kind, .rounds = rounds, .cpu = cpu_b,
                          .to_b = {-1, -1}, .to_a = {-1, -1}};
    char *page = mmap(NULL, PAGE_4K, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED)
        return -errno;
    pp.word = (_Atomic uint32_t *)page;
    int rc = 0;
    if (kind == 1 && (pipe(pp.to_b) != 0 || pipe(pp.to_a) != 0)) {
        rc = -errno;
        goto done;
    }
    struct pair_run run;
    if ((rc = pair_start(&run, cpu_a, cpu_b, side_b, &pp, &pp.ready)) != 0)
        goto restore;
    long slept = 0;
    char c = 1;
    int64_t t0 = shmipc_measure_now_ns();
    size_t i;
    for (i = 0; i < rounds; i++) {
        uint32_t mine = (uint32_t)(2 * i + 1);
        if (kind == 1) {
            if (write(pp.to_b[1], &c, 1) != 1 || read(pp.to_a[0], &c, 1) != 1) {
                rc = -(errno ? errno : EIO);
                break;
            }
            continue;
        }
        /* release: pairs with B's acquire load of 2i+1 */
        atomic_store_explicit(pp.word, mine, memory_order_release);
        if (kind == 0)
            futex(pp.word, FUTEX_WAKE, 1);
        unsigned spins = 0;
        uint32_t v;
        /* acquire: pairs with B's release store of 2i+2 */
        while ((v = atomic_load_explicit(pp.word, memory_order_acquire)) != mine + 1) {
            if (kind == 0) {
                if (futex(pp.word, FUTEX_WAIT, v) == 0)
                    slept++;
            } else {
                relax(&spins);
            }
        }
    }
    int64_t t1 = shmipc_measure_now_ns();
    if (kind == 1 && i < rounds) { /* unblock B so that the join returns */
        close(pp.to_b[1]);
        pp.to_b[1] = -1;
    }
    pthread_join(run.partner, NULL);
    out[0] = (double)(t1 - t0);
    out[1] = (double)rounds;
    out[2] = (double)run.pinned;
    out[3] = (double)slept + pp.sleeps; /* futex waits that really slept, both sides */
restore:
    pair_restore(&run);
done:
    for (int k = 0; k < 2; k++) {
        if (pp.to_b[k] >= 0)
            close(pp.to_b[k]);
        if (pp.to_a[k] >= 0)
            close(pp.to_a[k]);
    }
    munmap(page, PAGE_4K);
    return rc;
}

/* ---- file and region reads (--io) ------------------------------------------------------- */

static size_t offset_of(size_t i, int random, size_t blocks, uint64_t *s, size_t block)
{
    return (random ? (size_t)(xorshift(s) % blocks) : i % blocks) * block;
}

static int io_uring_reads(int fd, size_t file_size, size_t block, int random, size_t count,
                          uint64_t seed, unsigned depth, double *out);

/* method 0: pread into an aligned buffer (also the O_DIRECT row: the caller opens fd with
 * O_DIRECT); 1: mmap the file (fd >= 0) or an anonymous MAP_SHARED region (fd < 0, filled
 * before the clock starts), madvise(advice) and read through the mapping; 2: io_uring with
 * `depth` reads in flight. Every method sums each block it reads (the same work for all).
 * Random reads take block-aligned offsets from `seed`, so every method reads the same blocks.
 * warm: one untimed pass over the same offsets first. */
int shmipc_io_read(int fd, int method, size_t file_size, size_t block, int random, size_t count,
                   uint64_t seed, int advice, unsigned depth, int warm, double *out)
{
    if (!out || method < 0 || method > 2 || block < 8 || block % 8 || block > ((size_t)64 << 20) ||
        file_size < block || file_size > MAX_BYTES || count == 0 || count > ((size_t)1 << 32) ||
        (method != 1 && fd < 0) || (method == 2 && (depth == 0 || depth > 4096)) ||
        advice < 0 || advice > 4 || (fd >= 0 && file_size % block))
        return -EINVAL;
    if (fd >= 0) {
        int c = covers(fd, file_size);
        if (c)
            return c;
    }
    if (method == 2)
        return io_uring_reads(fd, file_size, block, random, count, seed, depth, out);
    size_t blocks = file_size / block;
    long m0, j0, m1, j1;
    uint64_t total = 0;
    if (method == 0) {
        char *buf;
        if (posix_memalign((void **)&buf, PAGE_4K, block < PAGE_4K ? PAGE_4K : block) != 0)
            return -ENOMEM;
        for (int pass = warm ? 0 : 1; pass < 2; pass++) {
            uint64_t s = seed;
            faults(&m0, &j0);
            int64_t t0 = shmipc_measure_now_ns();
            for (size_t i = 0; i < count; i++) {
                size_t off = offset_of(i, random, blocks, &s, block);
                ssize_t got = pread(fd, buf, block, (off_t)off);
                if (got != (ssize_t)block) {
                    int e = got < 0 ? errno : EIO;
                    free(buf);
                    return -e;
                }
                total += sum_words(buf, block);
            }
            int64_t t1 = shmipc_measure_now_ns();
            faults(&m1, &j1);
            out[0] = (double)(t1 - t0);
        }
        free(buf);
    } else {
        int shared_anon = fd < 0;
        char *p = mmap(NULL, file_size, PROT_READ | (shared_anon ? PROT_WRITE : 0),
                       MAP_SHARED | (shared_anon ? MAP_ANONYMOUS : 0), fd, 0);
        if (p == MAP_FAILED)
            return -errno;
        if (shared_anon)
            memset(p, 0x5a, file_size);
        static const int advices[] = {MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED,
                                      MADV_HUGEPAGE};
        if (advice && madvise(p, file_size, advices[advice]) != 0) {
            int e = errno;
            munmap(p, file_size);
            return -e;
        }
        for (int pass = warm ? 0 : 1; pass < 2; pass++) {
            uint64_t s = seed;
            faults(&m0, &j0);
            int64_t t0 = shmipc_measure_now_ns();
            for (size_t i = 0; i < count; i++)
                total += sum_words(p + offset_of(i, random, blocks, &s, block), block);
            int64_t t1 = shmipc_measure_now_ns();
            faults(&m1, &j1);
            out[0] = (double)(t1 - t0);
        }
        munmap(p, file_size);
    }
    sink = total;
    out[1] = (double)count * (double)block;
    out[2] = (double)count;
    out[3] = (double)(m1 - m0);
    out[4] = (double)(j1 - j0);
    out[5] = 0;
    return 0;
}

#ifndef HAVE_IO_URING
static int io_uring_reads(int fd, size_t file_size, size_t block, int random, size_t count,
                          uint64_t seed, unsigned depth, double *out)
{
    return -ENOSYS;
}
#else
static int uring_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int uring_enter(int ring, unsigned submit, unsigned wait, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, ring, submit, wait, flags, NULL, 0);
}

static int io_uring_reads(int fd, size_t file_size, size_t block, int random, size_t count,
                          uint64_t seed, unsigned depth, double *out)
{
    struct io_uring_params par;
    memset(&par, 0, sizeof par);
    int ring = uring_setup(depth, &par);
    if (ring < 0)
        return -errno;
    int rc = 0;
    size_t sq_len = par.sq_off.array + par.sq_entries * sizeof(uint32_t);
    size_t cq_len = par.cq_off.cqes + par.cq_entries * sizeof(struct io_uring_cqe);
    int single = (par.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single && cq_len > sq_len)
        sq_len = cq_len;
    char *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                    IORING_OFF_SQ_RING);
    char *cq = MAP_FAILED;
    struct io_uring_sqe *sqes = MAP_FAILED;
    size_t sqes_len = par.sq_entries * sizeof(struct io_uring_sqe);
    char *bufs = NULL;
    struct iovec *iov = NULL;
    if (sq == MAP_FAILED) {
        rc = -errno;
        goto out_ring;
    }
    cq = single ? sq : mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                            ring, IORING_OFF_CQ_RING);
    if (cq == MAP_FAILED) {
        rc = -errno;
        goto out_maps;
    }
    sqes = mmap(NULL, sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                IORING_OFF_SQES);
    if (sqes == MAP_FAILED) {
        rc = -errno;
        goto out_maps;
    }
    _Atomic uint32_t *sq_tail = (_Atomic uint32_t *)(sq + par.sq_off.tail);
    uint32_t sq_mask = *(uint32_t *)(sq + par.sq_off.ring_mask);
    uint32_t *sq_array = (uint32_t *)(sq + par.sq_off.array);
    _Atomic uint32_t *cq_head = (_Atomic uint32_t *)(cq + par.cq_off.head);
    _Atomic uint32_t *cq_tail = (_Atomic uint32_t *)(cq + par.cq_off.tail);
    uint32_t cq_mask = *(uint32_t *)(cq + par.cq_off.ring_mask);
    struct io_uring_cqe *cqes = (struct io_uring_cqe *)(cq + par.cq_off.cqes);

    size_t slot_len = (block + PAGE_4K - 1) & ~(size_t)(PAGE_4K - 1);
    if (posix_memalign((void **)&bufs, PAGE_4K, slot_len * depth) != 0 ||
        !(iov = calloc(depth, sizeof *iov))) {
        rc = -ENOMEM;
        goto out_maps;
    }
    memset(bufs, 0, slot_len * depth);
    for (unsigned k = 0; k < depth; k++) {
        iov[k].iov_base = bufs + k * slot_len;
        iov[k].iov_len = slot_len;
    }
    /* Registered (pinned) buffers as the page's row says; plain reads if the kernel refuses
     * (RLIMIT_MEMLOCK), and out[5] says which ran. */
    int fixed = syscall(__NR_io_uring_register, ring, IORING_REGISTER_BUFFERS, iov, depth) == 0;

    size_t blocks = file_size / block;
    uint64_t s = seed, total = 0;
    size_t issued = 0, done = 0;
    unsigned inflight = 0;
    long m0, j0, m1, j1;
    faults(&m0, &j0);
    int64_t t0 = shmipc_measure_now_ns();
    unsigned free_slots[4096];
    unsigned nfree = depth;
    for (unsigned k = 0; k < depth; k++)
        free_slots[k] = depth - 1 - k;
    while (done < count) {
        unsigned submit = 0;
        uint32_t tail = atomic_load_explicit(sq_tail, memory_order_relaxed); /* ours alone */
        while (issued < count && nfree > 0 && inflight < par.sq_entries) {
            unsigned slot = free_slots[--nfree];
            uint32_t idx = (tail + submit) & sq_mask;
            struct io_uring_sqe *e = &sqes[idx];
            memset(e, 0, sizeof *e);
            e->opcode = fixed ? IORING_OP_READ_FIXED : IORING_OP_READ;
            e->fd = fd;
            e->off = offset_of(issued, random, blocks, &s, block);
            e->addr = (uint64_t)(uintptr_t)iov[slot].iov_base;
            e->len = (uint32_t)block;
            e->buf_index = (uint16_t)(fixed ? slot : 0);
            e->user_data = slot;
            sq_array[idx] = idx;
            submit++;
            issued++;
            inflight++;
        }
        /* release: pairs with the kernel's acquire of the SQ tail (the sqes are written) */
        atomic_store_explicit(sq_tail, tail + submit, memory_order_release);
        if (uring_enter(ring, submit, 1, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR) {
            rc = -errno;
            break;
        }
        uint32_t head = atomic_load_explicit(cq_head, memory_order_relaxed);
        /* acquire: pairs with the kernel's release of the CQ tail (the cqes are written) */
        uint32_t ctail = atomic_load_explicit(cq_tail, memory_order_acquire);
        for (; head != ctail; head++) {
            struct io_uring_cqe *c = &cqes[head & cq_mask];
            if (c->res < 0) {
                rc = c->res;
                break;
            }
            if ((size_t)c->res != block) {
                rc = -EIO;
                break;
            }
            unsigned slot = (unsigned)c->user_data;
            total += sum_words(iov[slot].iov_base, block);
            free_slots[nfree++] = slot;
            inflight--;
            done++;
        }
        /* release: pairs with the kernel's acquire of the CQ head (the slots are free) */
        atomic_store_explicit(cq_head, head, memory_order_release);
        if (rc)
            break;
    }
    int64_t t1 = shmipc_measure_now_ns();
    faults(&m1, &j1);
    /* After an error, reads may still be in flight into bufs: reap them before the buffers
     * are freed (a plain read completes by copying into them). */
    while (inflight > 0) {
        if (uring_enter(ring, 0, 1, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR)
            break;
        uint32_t head = atomic_load_explicit(cq_head, memory_order_relaxed);
        /* acquire: pairs with the kernel's release of the CQ tail */
        uint32_t ctail = atomic_load_explicit(cq_tail, memory_order_acquire);
        inflight -= ctail - head;
        /* release: pairs with the kernel's acquire of the CQ head */
        atomic_store_explicit(cq_head, ctail, memory_order_release);
    }
    sink = total;
    out[0] = (double)(t1 - t0);
    out[1] = (double)count * (double)block;
    out[2] = (double)count;
    out[3] = (double)(m1 - m0);
    out[4] = (double)(j1 - j0);
    out[5] = fixed;
out_maps:
    if (sqes != MAP_FAILED)
        munmap(sqes, sqes_len);
    if (cq != MAP_FAILED && cq != sq)
        munmap(cq, cq_len);
    if (sq != MAP_FAILED)
        munmap(sq, sq_len);
out_ring:
    close(ring);
    free(iov);
    free(bufs);
    return rc;
}

#endif /* HAVE_IO_URING */

/* Fraction of the file's pages in the page cache (mincore), in out[0]. */
int shmipc_io_resident(int fd, size_t file_size, double *out)
{
    if (!out || fd < 0 || file_size == 0 || file_size > MAX_BYTES)
        return -EINVAL;
    int c = covers(fd, file_size);
    if (c)
        return c;
    char *p = mmap(NULL, file_size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    size_t pages = (file_size + PAGE_4K - 1) / PAGE_4K;
    unsigned char *vec = malloc(pages);
    if (!vec) {
        munmap(p, file_size);
        return -ENOMEM;
    }
    int rc = 0;
    if (mincore(p, file_size, vec) != 0) {
        rc = -errno;
    } else {
        size_t in = 0;
        for (size_t i = 0; i < pages; i++)
            in += vec[i] & 1;
        out[0] = (double)in / (double)pages;
    }
    free(vec);
    munmap(p, file_size);
    return rc;
}

/* Writes every byte of a MAP_SHARED file mapping, then msync(MS_SYNC): out = {ns writing,
 * ns in msync, bytes}. The file must already be file_size long. */
int shmipc_io_msync(int fd, size_t file_size, double *out)
{
    if (!out || fd < 0 || file_size == 0 || file_size > MAX_BYTES)
        return -EINVAL;
    int c = covers(fd, file_size);
    if (c)
        return c;
    char *p = mmap(NULL, file_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    int64_t t0 = shmipc_measure_now_ns();
    memset(p, 0xa5, file_size);
    int64_t t1 = shmipc_measure_now_ns();
    int rc = msync(p, file_size, MS_SYNC) == 0 ? 0 : -errno;
    int64_t t2 = shmipc_measure_now_ns();
    munmap(p, file_size);
    out[0] = (double)(t1 - t0);
    out[1] = (double)(t2 - t1);
    out[2] = (double)file_size;
    return rc;
}

/* ---- ring round trips without Python (python -m shmipc.bench.zcsplit) ------------------
 *
 * The zero-copy calls cost more from Python than put_bytes/get_bytes; this loop says how
 * much of that is the ring protocol itself. This thread pings and an echo thread answers,
 * 64-byte messages through two rings made as a Queue makes them (same spin, same flags),
 * each side either copying (0: put, get into a buffer) or in place (1: reserve, write,
 * commit; peek, read, release). The combinations are interleaved in blocks, so that every
 * one of them sees the same placement of the two CPUs (on a VM it changes within seconds and
 * moves a round trip by 2x). Each message's first 8 bytes are its round number, checked. */

#define RPP_MSG 64
#define RPP_SLICES_MAX 100 /* 100 ms slices without progress: the other side is gone */

struct ring_pp {
    char *q1, *q2; /* ping -> echo, echo -> ping */
    uint64_t cap;
    const int *styles; /* [2k]: ping's, [2k+1]: echo's style of combination k */
    int ncombos;
    size_t block, total;
    int cpu;
    _Atomic int ready;
    _Atomic int stop;
    int rc; /* the echo's: 0 or a negated errno */
};

/* A blocking ring call's status loop: retry after a slice (or a spurious empty/full), give up
 * once `stop` is set or after RPP_SLICES_MAX slices. */
static int rpp_retry(int status, int *slices, _Atomic int *stop)
{
    if (status != SHMIPC_SLICE && status != SHMIPC_EMPTY && status != SHMIPC_FULL &&
        status != SHMIPC_INTERRUPTED)
        return 0;
    if (status == SHMIPC_SLICE && ++*slices > RPP_SLICES_MAX)
        return 0;
    return !atomic_load_explicit(stop, memory_order_relaxed);
}

static int rpp_send(char *ring, uint64_t cap, int in_place, uint64_t seq, const char *msg,
                    _Atomic int *stop)
{
    int slices = 0;
    if (!in_place) {
        int rc;
        while ((rc = shmipc_ring_put(ring, cap, msg, RPP_MSG, 1, -1)) != SHMIPC_OK)
            if (!rpp_retry(rc, &slices, stop))
                return -EIO;
        return 0;
    }
    int64_t at;
    while ((at = shmipc_ring_reserve(ring, cap, RPP_MSG, 1, -1)) < 0)
        if (!rpp_retry((int)-at, &slices, stop))
            return -EIO;
    char *dst = ring + SHMIPC_RING_HEADER_SIZE + at;
    memcpy(dst, msg, RPP_MSG);
    memcpy(dst, &seq, sizeof seq);
    return shmipc_ring_commit(ring, cap, RPP_MSG) == SHMIPC_OK ? 0 : -EIO;
}

/* Receive one message: copied into buf (style 0), or peeked and handed to `echo` (style 1:
 * sent on from where it lies, then released). Its round number in *seq. */
static int rpp_recv(char *ring, uint64_t cap, int in_place, char *buf, uint64_t *seq,
                    char *echo_to, int echo_in_place, _Atomic int *stop)
{
    int slices = 0;
    if (!in_place) {
        int64_t n;
        while ((n = shmipc_ring_get(ring, cap, buf, RPP_MSG, -1)) < 0)
            if (!rpp_retry((int)-n, &slices, stop))
                return -EIO;
        if ((n & 0xffffffffff) != RPP_MSG)
            return -EPROTO;
        memcpy(seq, buf, sizeof *seq);
        return echo_to ? rpp_send(echo_to, cap, echo_in_place, *seq, buf, stop) : 0;
    }
    uint64_t meta[2];
    int64_t at;
    while ((at = shmipc_ring_peek(ring, cap, meta, -1)) < 0)
        if (!rpp_retry((int)-at, &slices, stop))
            return -EIO;
    const char *src = ring + SHMIPC_RING_HEADER_SIZE + at;
    int rc = meta[0] == RPP_MSG ? 0 : -EPROTO;
    memcpy(seq, src, sizeof *seq);
    if (rc == 0 && echo_to)
        rc = rpp_send(echo_to, cap, echo_in_place, *seq, src, stop);
    if (shmipc_ring_release(ring, cap) != SHMIPC_OK && rc == 0)
        rc = -EIO;
    return rc;
}

static void *rpp_echo(void *arg)
{
    struct ring_pp *pp = arg;
    int pinned = pin(pp->cpu);
    atomic_store_explicit(&pp->ready, 1 + pinned, memory_order_release);
    char buf[RPP_MSG];
    for (size_t i = 0; i < pp->total && pp->rc == 0; i++) {
        const int *st = pp->styles + 2 * ((i / pp->block) % (size_t)pp->ncombos);
        uint64_t seq;
        pp->rc = rpp_recv(pp->q1, pp->cap, st[1], buf, &seq, pp->q2, st[1], &pp->stop);
        if (pp->rc == 0 && seq != i)
            pp->rc = -EPROTO;
    }
    if (pp->rc)
        atomic_store_explicit(&pp->stop, 1, memory_order_relaxed);
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int shmipc_measure_ring_pingpong(const int *styles, int ncombos, size_t block, size_t cycles,
                                 uint32_t flags, int cpu_a, int cpu_b, double *out)
{
    if (!styles || !out || ncombos < 1 || ncombos > 16 || block < 10 || block > 1000000 ||
        cycles < 1 || cycles > 10000 || block * cycles * (size_t)ncombos > ((size_t)1 << 30) ||
        (flags & ~(uint32_t)SHMIPC_RING_SPSC) || cpu_a < -1 || cpu_b < -1 ||
        cpu_a >= CPU_SETSIZE || cpu_b >= CPU_SETSIZE)
        return -EINVAL;
    for (int k = 0; k < 2 * ncombos; k++)
        if (styles[k] != 0 && styles[k] != 1)
            return -EINVAL;
    const uint64_t cap = 1 << 16;
    size_t span = SHMIPC_RING_HEADER_SIZE + cap;
    char *area = mmap(NULL, 2 * span, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED)
        return -errno;
    int64_t *lat = malloc(block * sizeof *lat);
    if (!lat) {
        munmap(area, 2 * span);
        return -ENOMEM;
    }
    struct ring_pp pp = {.q1 = area, .q2 = area + span, .cap = cap, .styles = styles,
                         .ncombos = ncombos, .block = block,
                         .total = block * cycles * (size_t)ncombos, .cpu = cpu_b};
    /* spin 50 µs and liveness 1 s: shmipc/ring.py's DEFAULT_SPIN_NS and DEFAULT_LIVENESS */
    shmipc_ring_init(pp.q1, cap, 0, 50000, flags, 1000000000);
    shmipc_ring_init(pp.q2, cap, 0, 50000, flags, 1000000000);
    struct pair_run run;
    int rc = pair_start(&run, cpu_a, cpu_b, rpp_echo, &pp, &pp.ready);
    if (rc != 0)
        goto restore;
    char msg[RPP_MSG] = {0}, buf[RPP_MSG];
    for (size_t i = 0; i < pp.total && rc == 0; i++) {
        size_t k = (i / block) % (size_t)ncombos;
        const int *st = styles + 2 * k;
        uint64_t seq = i;
        int64_t t0 = shmipc_measure_now_ns();
        memcpy(msg, &seq, sizeof seq);
        rc = rpp_send(pp.q1, cap, st[0], seq, msg, &pp.stop);
        if (rc == 0)
            rc = rpp_recv(pp.q2, cap, st[0], buf, &seq, NULL, 0, &pp.stop);
        lat[i % block] = shmipc_measure_now_ns() - t0;
        if (rc == 0 && seq != i)
            rc = -EPROTO;
        if (rc == 0 && i % block == block - 1) {
            qsort(lat, block, sizeof *lat, cmp_i64);
            out[k * cycles + i / (block * (size_t)ncombos)] = (double)lat[block / 2];
        }
    }
    if (rc)
        atomic_store_explicit(&pp.stop, 1, memory_order_relaxed);
    pthread_join(run.partner, NULL);
    /* The echo's own error says more than the -EIO its stop caused here. */
    if (rc == 0 || (rc == -EIO && pp.rc != 0 && pp.rc != -EIO))
        rc = pp.rc;
    out[(size_t)ncombos * cycles] = (double)run.pinned;
restore:
    pair_restore(&run);
    free(lat);
    munmap(area, 2 * span);
    return rc;
}
