/* asyncio support (shmipc/aio.py): one helper thread per event loop sleeps on many shared
 * futex words at once (futex_waitv, Linux 5.16+) and tells the loop which of them changed.
 *
 * Invariants (the same no-lost-wakeup argument as shmipc_wait_while32 in csrc/native.c):
 *  - Each watched word comes with the sleeper count (or sleeper registry) its wakers read.
 *    shmipc_aio_waitv registers the helper thread in every one of them (a seq_cst RMW) BEFORE
 *    its last look at the words (seq_cst loads). A waker stores the word, then (seq_cst fence
 *    or RMW) reads the count: either it sees our registration and issues the futex wake, or
 *    our re-check sees its store. The futex_waitv syscall re-checks every word atomically.
 *  - Registrations are taken back before the call returns (a registry slot holds the helper
 *    thread's identity, so a helper killed asleep is reaped like any sleeper).
 *  - The control word is process-private memory owned by the Python helper: the loop thread
 *    bumps it (after changing the watch set) and wakes it, so the helper rebuilds its set.
 *  - The caller (Python) keeps every mapping pinned (a reference to the object holding the
 *    mapping's export) for as long as the call may touch it: docs/internals/lifetime.md.
 */
#include <errno.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "shmipc.h"

#define A32(base, off) ((_Atomic uint32_t *)((base) + (off)))
#define A64(base, off) ((_Atomic uint64_t *)((base) + (off)))

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449 /* the same number on every architecture (generic table) */
#endif

/* struct futex_waitv (linux/futex.h since 5.16; defined here for older headers). */
struct aio_futex_waitv {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};
#define AIO_FUTEX2_SIZE_U32 0x02
#define AIO_FUTEX2_PRIVATE 128

static int waitv_state; /* 0 unknown, 1 works, -1 ENOSYS */

int shmipc_aio_has_waitv(void) {
    if (waitv_state == 0) {
        /* A zero-length call: EINVAL where the syscall exists, ENOSYS where it does not. */
        long r = syscall(SYS_futex_waitv, NULL, 0, 0, NULL, CLOCK_MONOTONIC);
        waitv_state = (r < 0 && errno == ENOSYS) ? -1 : 1;
    }
    return waitv_state > 0;
}

static int reg_add(char *b, uint64_t reg_off, int32_t nslots, uint64_t me) {
    if (reg_off == SHMIPC_AIO_NO_REG) return -2;
    atomic_fetch_add_explicit(A32(b, reg_off), 1, memory_order_seq_cst);
    for (int i = 0; i < nslots; i++) {
        uint64_t expected = 0;
        if (atomic_compare_exchange_strong_explicit(A64(b, reg_off + 8 + 8 * (uint64_t)i),
                                                    &expected, me, memory_order_relaxed,
                                                    memory_order_relaxed))
            return i;
    }
    return -1;
}

static void reg_remove(char *b, uint64_t reg_off, int slot, uint64_t me) {
    if (slot == -2) return;
    if (slot >= 0) {
        uint64_t expected = me;
        /* As unregister_sleeper (native.c): a slot reaped meanwhile took its count with it. */
        if (!atomic_compare_exchange_strong_explicit(A64(b, reg_off + 8 + 8 * (uint64_t)slot),
                                                     &expected, 0, memory_order_relaxed,
                                                     memory_order_relaxed))
            return;
    }
    atomic_fetch_sub_explicit(A32(b, reg_off), 1, memory_order_seq_cst);
}

int shmipc_aio_waitv(char **bases, const uint64_t *offs, const uint32_t *expected,
                     const uint64_t *reg_offs, const int32_t *nslots, uint32_t n,
                     uint32_t *ctl, uint32_t ctl_seen, int64_t deadline_ns, int poll,
                     uint8_t *fired) {
    if (n > SHMIPC_AIO_MAX_WORDS) {
        errno = E2BIG;
        return -SHMIPC_ERROR;
    }
    uint64_t me = shmipc_lock_identity();
    int slots[SHMIPC_AIO_MAX_WORDS];
    for (uint32_t i = 0; i < n; i++) slots[i] = reg_add(bases[i], reg_offs[i], nslots[i], me);
    /* The last look, after every registration (seq_cst: pairs with the wakers' fences). */
    int changed = 0;
    for (uint32_t i = 0; i < n; i++)
        if (atomic_load_explicit(A32(bases[i], offs[i]), memory_order_seq_cst) != expected[i])
            changed = 1;
    if (atomic_load_explicit((_Atomic uint32_t *)ctl, memory_order_seq_cst) != ctl_seen)
        changed = 1;
    int rc = SHMIPC_OK;
    if (!changed) {
        struct timespec ts, *tsp = NULL;
        if (deadline_ns >= 0) {
            ts.tv_sec = deadline_ns / 1000000000;
            ts.tv_nsec = deadline_ns % 1000000000;
            tsp = &ts;
        }
        long r;
        if (!poll && shmipc_aio_has_waitv()) {
            struct aio_futex_waitv w[SHMIPC_AIO_MAX_WORDS + 1];
            memset(w, 0, sizeof w);
            for (uint32_t i = 0; i < n; i++) {
                w[i].val = expected[i];
                w[i].uaddr = (uint64_t)(uintptr_t)(bases[i] + offs[i]);
                w[i].flags = AIO_FUTEX2_SIZE_U32; /* shared: the words are in shared mappings */
            }
            w[n].val = ctl_seen;
            w[n].uaddr = (uint64_t)(uintptr_t)ctl;
            w[n].flags = AIO_FUTEX2_SIZE_U32 | AIO_FUTEX2_PRIVATE;
            r = syscall(SYS_futex_waitv, w, n + 1, 0, tsp, CLOCK_MONOTONIC);
        } else {
            /* No futex_waitv (or poll asked): sleep on the control word alone, until the
             * deadline the caller chose (its polling period), then look at every word. */
            r = syscall(SYS_futex, ctl, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, ctl_seen, tsp,
                        NULL, FUTEX_BITSET_MATCH_ANY);
        }
        if (r < 0) {
            switch (errno) {
            case EAGAIN: break; /* a word no longer held its value */
            case ETIMEDOUT: rc = SHMIPC_TIMEDOUT; break;
            case EINTR: rc = SHMIPC_INTERRUPTED; break;
            default: rc = SHMIPC_ERROR; break;
            }
        }
    }
    int saved = errno;
    for (uint32_t i = 0; i < n; i++) reg_remove(bases[i], reg_offs[i], slots[i], me);
    int count = 0;
    /* Acquire: pairs with the wakers' release stores, so the loop sees what they published. */
    for (uint32_t i = 0; i < n; i++) {
        fired[i] = atomic_load_explicit(A32(bases[i], offs[i]), memory_order_acquire) !=
                   expected[i];
        count += fired[i];
    }
    errno = saved;
    if (rc == SHMIPC_ERROR) return -SHMIPC_ERROR;
    return count;
}

int shmipc_aio_kick(uint32_t *ctl) {
    /* Release: the watch set the loop changed before this bump is visible to the helper,
     * which reads the control word (seq_cst) before it builds its next set. */
    atomic_fetch_add_explicit((_Atomic uint32_t *)ctl, 1, memory_order_seq_cst);
    return (int)syscall(SYS_futex, ctl, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, 1, NULL, NULL, 0);
}
