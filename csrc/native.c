/* shmipc native core: C11 atomics, futex waits and the robust lock (see shmipc.h). */
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
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "shmipc.h"
#include "identity.h"

#define A32(base, off) ((_Atomic uint32_t *)((base) + (off)))
#define A64(base, off) ((_Atomic uint64_t *)((base) + (off)))

_Static_assert(sizeof(_Atomic uint32_t) == 4, "lock-free 32-bit atomics required");
_Static_assert(sizeof(_Atomic uint64_t) == 8, "lock-free 64-bit atomics required");

uint32_t shmipc_abi_version(void) { return SHMIPC_ABI_VERSION; }

int64_t shmipc_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int shmipc_errno(void) { return errno; }

void shmipc_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* ---- atomics ---------------------------------------------------------------------------- */

uint32_t shmipc_load32_relaxed(char *b, size_t o) {
    return atomic_load_explicit(A32(b, o), memory_order_relaxed);
}
uint32_t shmipc_load32_acquire(char *b, size_t o) {
    return atomic_load_explicit(A32(b, o), memory_order_acquire);
}
void shmipc_store32_relaxed(char *b, size_t o, uint32_t v) {
    atomic_store_explicit(A32(b, o), v, memory_order_relaxed);
}
void shmipc_store32_release(char *b, size_t o, uint32_t v) {
    atomic_store_explicit(A32(b, o), v, memory_order_release);
}
uint32_t shmipc_fetch_add32_acq_rel(char *b, size_t o, uint32_t v) {
    return atomic_fetch_add_explicit(A32(b, o), v, memory_order_acq_rel);
}
uint32_t shmipc_exchange32_acq_rel(char *b, size_t o, uint32_t v) {
    return atomic_exchange_explicit(A32(b, o), v, memory_order_acq_rel);
}
uint32_t shmipc_cas32_acq_rel(char *b, size_t o, uint32_t expected, uint32_t desired) {
    atomic_compare_exchange_strong_explicit(A32(b, o), &expected, desired,
                                            memory_order_acq_rel, memory_order_acquire);
    return expected; /* on failure C11 stored the value found here; on success it is unchanged */
}

uint64_t shmipc_load64_relaxed(char *b, size_t o) {
    return atomic_load_explicit(A64(b, o), memory_order_relaxed);
}
uint64_t shmipc_load64_acquire(char *b, size_t o) {
    return atomic_load_explicit(A64(b, o), memory_order_acquire);
}
void shmipc_store64_relaxed(char *b, size_t o, uint64_t v) {
    atomic_store_explicit(A64(b, o), v, memory_order_relaxed);
}
void shmipc_store64_release(char *b, size_t o, uint64_t v) {
    atomic_store_explicit(A64(b, o), v, memory_order_release);
}
uint64_t shmipc_fetch_add64_acq_rel(char *b, size_t o, uint64_t v) {
    return atomic_fetch_add_explicit(A64(b, o), v, memory_order_acq_rel);
}
uint64_t shmipc_exchange64_acq_rel(char *b, size_t o, uint64_t v) {
    return atomic_exchange_explicit(A64(b, o), v, memory_order_acq_rel);
}
uint64_t shmipc_cas64_acq_rel(char *b, size_t o, uint64_t expected, uint64_t desired) {
    atomic_compare_exchange_strong_explicit(A64(b, o), &expected, desired,
                                            memory_order_acq_rel, memory_order_acquire);
    return expected;
}

/* ---- futex ------------------------------------------------------------------------------ */

/* The deadline of this sleep: the caller's, cut to one slice from now. Returns 1 when the cut
 * applied (so a timeout means "slice over", not "deadline passed"). */
static int slice_deadline(int64_t deadline_ns, struct timespec *ts) {
    int64_t now = shmipc_monotonic_ns();
    int64_t until = now + SHMIPC_SLICE_NS;
    int sliced = 1;
    if (deadline_ns >= 0 && deadline_ns <= until) {
        until = deadline_ns;
        sliced = 0;
    }
    ts->tv_sec = until / 1000000000LL;
    ts->tv_nsec = until % 1000000000LL;
    return sliced;
}

int shmipc_futex_wait(char *b, size_t o, uint32_t expected, int64_t deadline_ns) {
    struct timespec ts;
    if (deadline_ns >= 0 && shmipc_monotonic_ns() >= deadline_ns) return SHMIPC_TIMEDOUT;
    int sliced = slice_deadline(deadline_ns, &ts);
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline (no FUTEX_CLOCK_REALTIME),
     * so wall-clock jumps cannot stretch or cut the wait. Not private: the word is shared. */
    long r = syscall(SYS_futex, A32(b, o), FUTEX_WAIT_BITSET, expected, &ts, NULL,
                     FUTEX_BITSET_MATCH_ANY);
    if (r == 0) return SHMIPC_OK;
    switch (errno) {
    case EAGAIN: return SHMIPC_CHANGED;
    case EINTR: return SHMIPC_INTERRUPTED;
    case ETIMEDOUT: return sliced ? SHMIPC_SLICE : SHMIPC_TIMEDOUT;
    default: return SHMIPC_ERROR;
    }
}

int shmipc_futex_wake(char *b, size_t o, int n) {
    return (int)syscall(SYS_futex, A32(b, o), FUTEX_WAKE, n, NULL, NULL, 0);
}

/* Spin while *word == expected, for at most spin_ns (and not past the deadline); 1 if the
 * word changed. The first few microseconds only pause, which catches a partner running on
 * another core within ~0.1 µs. After that the loop also yields the CPU now and then: when
 * the partner is runnable on this same CPU (more processes than cores), pausing would only
 * burn our time slice while it cannot run, and sched_yield lets it run at once. Reading the
 * clock every 64 iterations keeps the spin bounded without paying for it per iteration. */
static int spin_while(_Atomic uint32_t *word, uint32_t expected, int64_t deadline_ns,
                      int64_t spin_ns) {
    int64_t spin_until = shmipc_monotonic_ns() + spin_ns;
    if (deadline_ns >= 0 && deadline_ns < spin_until) spin_until = deadline_ns;
    for (unsigned i = 1;; i++) {
        shmipc_cpu_relax();
        if (atomic_load_explicit(word, memory_order_acquire) != expected) return 1;
        if ((i & 15) == 0 && i >= 128) sched_yield();
        if ((i & 63) == 0 && shmipc_monotonic_ns() >= spin_until) return 0;
    }
}

int shmipc_wait_while32(char *b, size_t o, uint32_t expected, size_t waiters_off,
                        int64_t deadline_ns, int64_t spin_ns) {
    _Atomic uint32_t *word = A32(b, o);
    if (atomic_load_explicit(word, memory_order_acquire) != expected) return SHMIPC_OK;
    if (spin_ns > 0 && spin_while(word, expected, deadline_ns, spin_ns)) return SHMIPC_OK;
    /* Register as a sleeper before the last check. The seq_cst increment here and the waker's
     * seq_cst fence between its store and its read of the count (shmipc_wake32) order the two:
     * either the waker sees our registration and wakes us, or we see its store (the futex
     * syscall itself re-checks the word atomically), so no wake-up is lost. */
    atomic_fetch_add_explicit(A32(b, waiters_off), 1, memory_order_seq_cst);
    int rc;
    if (atomic_load_explicit(word, memory_order_seq_cst) != expected)
        rc = SHMIPC_OK;
    else
        rc = shmipc_futex_wait(b, o, expected, deadline_ns);
    atomic_fetch_sub_explicit(A32(b, waiters_off), 1, memory_order_seq_cst);
    if (rc == SHMIPC_CHANGED) rc = SHMIPC_OK;
    if (rc == SHMIPC_OK && atomic_load_explicit(word, memory_order_acquire) == expected)
        rc = SHMIPC_CHANGED; /* woken (or spurious) but the word is back: caller re-evaluates */
    return rc;
}

/* Register in a sleeper registry: count first (so a slot never names a sleeper the count
 * lacks), then a slot if one is free. Returns the slot taken, or -1. */
static int register_sleeper(char *b, size_t reg_off, int nslots, uint64_t me) {
    atomic_fetch_add_explicit(A32(b, reg_off), 1, memory_order_seq_cst);
    for (int i = 0; i < nslots; i++) {
        uint64_t expected = 0;
        if (atomic_compare_exchange_strong_explicit(A64(b, reg_off + 8 + 8 * (size_t)i),
                                                    &expected, me, memory_order_relaxed,
                                                    memory_order_relaxed))
            return i;
    }
    return -1;
}

static void unregister_sleeper(char *b, size_t reg_off, int slot, uint64_t me) {
    if (slot >= 0) {
        uint64_t expected = me;
        /* A reaper clears only the slots of sleepers known to be dead (shmipc_identity_alive),
         * and takes their count back with the slot. Should our slot be gone all the same
         * (a liveness error, a scribbling peer), that count was taken already: taking it
         * again would count one sleeper less than sleep, and a waker would skip its wake. */
        if (!atomic_compare_exchange_strong_explicit(A64(b, reg_off + 8 + 8 * (size_t)slot),
                                                     &expected, 0, memory_order_relaxed,
                                                     memory_order_relaxed))
            return;
    }
    atomic_fetch_sub_explicit(A32(b, reg_off), 1, memory_order_seq_cst);
}

int shmipc_wait_while32_reg(char *b, size_t o, uint32_t expected, size_t reg_off, int nslots,
                            int64_t deadline_ns, int64_t spin_ns) {
    _Atomic uint32_t *word = A32(b, o);
    if (atomic_load_explicit(word, memory_order_acquire) != expected) return SHMIPC_OK;
    if (spin_ns > 0 && spin_while(word, expected, deadline_ns, spin_ns)) return SHMIPC_OK;
    /* As in shmipc_wait_while32: the seq_cst count increment pairs with the waker's fence. */
    uint64_t me = shmipc_identity();
    int slot = register_sleeper(b, reg_off, nslots, me);
    int rc;
    if (atomic_load_explicit(word, memory_order_seq_cst) != expected)
        rc = SHMIPC_OK;
    else
        rc = shmipc_futex_wait(b, o, expected, deadline_ns);
    unregister_sleeper(b, reg_off, slot, me);
    if (rc == SHMIPC_CHANGED) rc = SHMIPC_OK;
    if (rc == SHMIPC_OK && atomic_load_explicit(word, memory_order_acquire) == expected)
        rc = SHMIPC_CHANGED;
    return rc;
}

int shmipc_reap_sleepers(char *b, size_t reg_off, int nslots) {
    int reaped = 0;
    for (int i = 0; i < nslots; i++) {
        _Atomic uint64_t *slot = A64(b, reg_off + 8 + 8 * (size_t)i);
        uint64_t who = atomic_load_explicit(slot, memory_order_relaxed);
        if (!who || shmipc_identity_alive(who)) continue;
        /* The sleeper died registered: take its registration back, once. */
        if (atomic_compare_exchange_strong_explicit(slot, &who, 0, memory_order_relaxed,
                                                    memory_order_relaxed)) {
            _Atomic uint32_t *count = A32(b, reg_off);
            uint32_t c = atomic_load_explicit(count, memory_order_relaxed);
            while (c && !atomic_compare_exchange_weak_explicit(count, &c, c - 1,
                                                               memory_order_seq_cst,
                                                               memory_order_relaxed)) {
            }
            reaped++;
        }
    }
    return reaped;
}

int shmipc_wake32(char *b, size_t o, size_t waiters_off, int n) {
    /* Pairs with the sleeper's seq_cst registration in shmipc_wait_while32. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(A32(b, waiters_off), memory_order_relaxed) == 0) return 0;
    return shmipc_futex_wake(b, o, n);
}

/* Wakes that woke nobody although the registry counted sleepers: a sleeper about to sleep or
 * just woken, or one killed in its sleep. Every REAP_EVERY of them (per thread) the registry
 * is reaped, so a dead sleeper costs a bounded number of syscalls. */
#define REAP_EVERY 64
static _Thread_local unsigned fruitless_wakes;

int shmipc_wake32_reg(char *b, size_t o, size_t reg_off, int nslots, int n) {
    int woken = shmipc_wake32(b, o, reg_off, n);
    if (woken == 0 && atomic_load_explicit(A32(b, reg_off), memory_order_relaxed) &&
        ++fruitless_wakes % REAP_EVERY == 0)
        shmipc_reap_sleepers(b, reg_off, nslots);
    return woken;
}

/* ---- robust lock ------------------------------------------------------------------------ */

/* This thread's identity, computed once per thread and again in a forked child (whose only
 * thread has a new id). 0 means "not computed yet". */
/* initial-exec: read without a __tls_get_addr call; 8 bytes of the static TLS surplus glibc
 * keeps for modules loaded later. Read inline by shmipc_identity (csrc/identity.h). */
_Thread_local uint64_t shmipc_tls_identity;

/* This process's pid, cached like the identity: the pool's Python paths ask for it several
 * times a transfer (holder keys, the fork check of every reference they give back), and a
 * getpid() is a system call each time. Reset in a forked child by the same handler. */
static _Atomic int32_t self_pid;

int32_t shmipc_self_pid(void) {
    int32_t pid = atomic_load_explicit(&self_pid, memory_order_relaxed);
    if (__builtin_expect(pid == 0, 0)) {
        pid = (int32_t)getpid();
        atomic_store_explicit(&self_pid, pid, memory_order_relaxed);
    }
    return pid;
}

static void forget_identity(void) {
    shmipc_tls_identity = 0;
    atomic_store_explicit(&self_pid, 0, memory_order_relaxed);
}

__attribute__((constructor)) static void register_fork_handler(void) {
    pthread_atfork(NULL, NULL, forget_identity);
}

/* Field 22 of a /proc stat file: the thread's start time in clock ticks since boot. 0 when
 * it cannot be read; *state gets field 3 (the state letter) when state is not NULL. */
static uint64_t stat_start_time(const char *path, char *state) {
    char buf[1024];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (!p) return 0;
    if (state && p[1] == ' ') *state = p[2];
    /* p is at the end of field 2; each space starts the next field: stop at field 22. */
    for (int field = 2; *p; p++) {
        if (*p == ' ' && ++field == 22) return strtoull(p + 1, NULL, 10);
    }
    return 0;
}

static uint64_t thread_start_time(void) { return stat_start_time("/proc/thread-self/stat", NULL); }

/* Whether the thread `tid` is in this process's time namespace, so that start times read
 * here compare with the one it recorded (/proc/TID/stat gives them in the reader's time
 * namespace). No time namespaces in this kernel: yes. Cannot tell: no. */
static int same_time_namespace(unsigned tid) {
    struct stat mine, theirs;
    if (stat("/proc/self/ns/time", &mine) != 0) return errno == ENOENT;
    char path[64];
    snprintf(path, sizeof path, "/proc/%u/ns/time", tid);
    if (stat(path, &theirs) != 0) return 0;
    return mine.st_ino == theirs.st_ino && mine.st_dev == theirs.st_dev;
}

int shmipc_identity_alive(uint64_t identity) {
    /* The rule of shmipc/_proc.py identity_state, where it is documented; 0 only for DEAD.
     * kill(tid, 0) decides existence (ESRCH: gone; EPERM: exists), /proc only what an
     * existing id is: a zombie is dead; another start time is a reused id, but only within
     * one time namespace; an unreadable /proc (hidepid, absent) says nothing: alive. */
    unsigned tid = (unsigned)(identity & 0x7fffffffu);
    if (tid == 0) return 0;
    if (kill((pid_t)tid, 0) != 0 && errno == ESRCH) return 0;
    char path[64], state = 0;
    snprintf(path, sizeof path, "/proc/%u/stat", tid);
    uint64_t started = stat_start_time(path, &state);
    if (!started) return 1; /* unreadable: unknown is never taken for dead */
    if (state == 'Z' || state == 'X') return 0;
    uint64_t recorded = identity >> 32;
    if ((started & 0xffffffffu) == recorded) return 1;
    if (!recorded) return 1; /* its holder could not read its own start time */
    return !same_time_namespace(tid);
}

uint64_t shmipc_lock_identity(void) {
    if (!shmipc_tls_identity) {
        uint64_t tid = (uint64_t)syscall(SYS_gettid);
        shmipc_tls_identity = (thread_start_time() << 32) | (tid & 0xffffffffu);
    }
    return shmipc_tls_identity;
}

int shmipc_lock_try(char *b, size_t o) {
    uint64_t me = shmipc_identity();
    uint64_t expected = 0;
    /* Acquire on success: pairs with the release in shmipc_lock_release, so the previous
     * holder's writes to the state the lock guards are visible to us. */
    if (atomic_compare_exchange_strong_explicit(A64(b, o), &expected, me, memory_order_acquire,
                                                memory_order_relaxed))
        return SHMIPC_OK;
    /* A word naming us, parked or not (a ring reservation, see shmipc.h), is a relock. */
    return (expected & ~(uint64_t)SHMIPC_LOCK_PARKED) == me ? SHMIPC_DEADLOCK : SHMIPC_TIMEDOUT;
}

/* Lock acquire and release with the sleepers registered at reg_off: the lock's own count
 * (nslots 0, plain shmipc_wait_while32) or a sleeper registry with identity slots. */
static int lock_acquire_impl(char *b, size_t o, size_t reg_off, int nslots, int64_t deadline_ns,
                             int64_t spin_ns) {
    int rc = shmipc_lock_try(b, o);
    if (rc != SHMIPC_TIMEDOUT || deadline_ns == 0) return rc;
    if (spin_ns > 0) {
        /* A handover takes far less than a futex round trip: spin (and yield) first, while
         * the holder's thread id stays in the word's low half. */
        uint64_t seen = atomic_load_explicit(A64(b, o), memory_order_relaxed);
        if (seen && spin_while(A32(b, o), (uint32_t)seen, deadline_ns, spin_ns)) {
            rc = shmipc_lock_try(b, o);
            if (rc != SHMIPC_TIMEDOUT) return rc;
        }
    }
    /* A lock that keeps changing hands never lets the futex below sleep (the word differs
     * each time we look), so the loop itself watches the clock: it honours the deadline and
     * comes back to Python after a slice like any other wait. */
    int64_t slice_end = shmipc_monotonic_ns() + SHMIPC_SLICE_NS;
    for (;;) {
        uint64_t seen = atomic_load_explicit(A64(b, o), memory_order_relaxed);
        if (seen == 0) {
            rc = shmipc_lock_try(b, o);
            if (rc != SHMIPC_TIMEDOUT) return rc;
            /* lost the race to another locker: it made progress, look again */
        } else {
            /* Sleep while the holder's thread id (the word's low half) stays. The futex
             * checks the word atomically, and the releaser reads the sleeper count after a
             * seq_cst fence: the same no-lost-wakeup argument as shmipc_wait_while32. */
            rc = nslots ? shmipc_wait_while32_reg(b, o, (uint32_t)seen, reg_off, nslots,
                                                  deadline_ns, 0)
                        : shmipc_wait_while32(b, o, (uint32_t)seen, reg_off, deadline_ns, 0);
            if (rc == SHMIPC_TIMEDOUT)
                return shmipc_lock_try(b, o) == SHMIPC_OK ? SHMIPC_OK : rc;
            if (rc != SHMIPC_OK && rc != SHMIPC_CHANGED)
                return rc; /* SLICE / INTERRUPTED / ERROR: Python checks signals and liveness */
        }
        int64_t now = shmipc_monotonic_ns();
        if (deadline_ns >= 0 && now >= deadline_ns)
            return shmipc_lock_try(b, o) == SHMIPC_OK ? SHMIPC_OK : SHMIPC_TIMEDOUT;
        if (now >= slice_end) return SHMIPC_SLICE;
    }
}

static int lock_release_impl(char *b, size_t o, size_t reg_off, int nslots) {
    uint64_t me = shmipc_identity();
    uint64_t expected = me;
    /* Release: pairs with the acquire of the next holder's CAS (shmipc_lock_try). */
    if (!atomic_compare_exchange_strong_explicit(A64(b, o), &expected, 0, memory_order_release,
                                                 memory_order_relaxed))
        return SHMIPC_NOTOWNER;
    if (nslots)
        shmipc_wake32_reg(b, o, reg_off, nslots, 1);
    else
        shmipc_wake32(b, o, reg_off, 1);
    return SHMIPC_OK;
}

int shmipc_lock_acquire(char *b, size_t o, int64_t deadline_ns, int64_t spin_ns) {
    return lock_acquire_impl(b, o, o + SHMIPC_LOCK_OFF_WAITERS, 0, deadline_ns, spin_ns);
}

int shmipc_lock_release(char *b, size_t o) {
    return lock_release_impl(b, o, o + SHMIPC_LOCK_OFF_WAITERS, 0);
}

int shmipc_lock_acquire_reg(char *b, size_t o, size_t reg_off, int nslots, int64_t deadline_ns,
                            int64_t spin_ns) {
    return lock_acquire_impl(b, o, reg_off, nslots, deadline_ns, spin_ns);
}

int shmipc_lock_release_reg(char *b, size_t o, size_t reg_off, int nslots) {
    return lock_release_impl(b, o, reg_off, nslots);
}

int shmipc_lock_steal(char *b, size_t o, uint64_t observed) {
    uint64_t me = shmipc_identity();
    if (observed == 0 || observed == me) return SHMIPC_CHANGED;
    uint64_t expected = observed;
    if (atomic_compare_exchange_strong_explicit(A64(b, o), &expected, me, memory_order_acquire,
                                                memory_order_relaxed))
        return SHMIPC_OWNERDEAD;
    return SHMIPC_CHANGED;
}
