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
 *    With the watch set served here (below), an entry marked fired is never touched again
 *    (it was marked after the wait that saw it had ended, registrations taken back); an entry
 *    removed at epoch E may still be in the snapshot of a wait under way, which ends by
 *    bumping the epoch: Python lets go of its pin once the epoch exceeds E.
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
#include "identity.h"

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

int32_t shmipc_aio_reg_add(char *b, uint64_t reg_off, int32_t nslots, uint64_t me) {
    if (reg_off == SHMIPC_AIO_NO_REG) return -2;
    if (nslots < 0) {
        /* A sleep flag (the Topic's DATA_WAITERS, T8 in csrc/topic.c): set it, seq_cst like
         * the blocking sleeper's exchange; the waker clears it, so removal leaves it alone (a
         * decrement could clear a blocking sleeper's flag and lose its wake-up). */
        atomic_exchange_explicit(A32(b, reg_off), 1, memory_order_seq_cst);
        return -2;
    }
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

void shmipc_aio_reg_remove(char *b, uint64_t reg_off, int32_t slot, uint64_t me) {
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
    uint64_t me = shmipc_identity();
    int slots[SHMIPC_AIO_MAX_WORDS];
    for (uint32_t i = 0; i < n; i++)
        slots[i] = shmipc_aio_reg_add(bases[i], reg_offs[i], nslots[i], me);
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
    for (uint32_t i = 0; i < n; i++) shmipc_aio_reg_remove(bases[i], reg_offs[i], slots[i], me);
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

/* ---- the watch set served in C ------------------------------------------------------------
 * The helper thread (a Python thread) calls shmipc_aio_serve, which loops without the GIL:
 * snapshot the set, shmipc_aio_waitv on it, mark the entries whose word changed and signal
 * the loop's eventfd; the loop (its reader callback, under the GIL) takes the fired ids
 * with shmipc_aio_take. So a wake-up costs the loop one eventfd hop and no Python code on the
 * helper's side. The mutex guards the entries; ctl is bumped (shmipc_aio_kick) after every
 * change the helper must see. */
#include <pthread.h>
#include <stdlib.h>

struct aio_entry {
    char *base;
    uint64_t off, reg_off, id;
    uint32_t expected;
    int32_t nslots;
    int used, fired;
};

struct shmipc_aio_set {
    pthread_mutex_t mu;
    uint32_t ctl;
    int efd;
    int stop;
    uint64_t next_id;
    /* Bumped after every wait of the serve loop, once its registrations are taken back: an
     * entry removed at epoch E is no longer touched by the helper once epoch > E, and only
     * then may Python let go of what pins its mapping (docs/internals/lifetime.md). */
    uint64_t epoch;
    struct aio_entry e[SHMIPC_AIO_MAX_WORDS];
};

void *shmipc_aio_set_new(int efd) {
    struct shmipc_aio_set *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    pthread_mutex_init(&s->mu, NULL);
    s->efd = efd;
    s->next_id = 1;
    return s;
}

void shmipc_aio_set_free(void *p) {
    struct shmipc_aio_set *s = p;
    pthread_mutex_destroy(&s->mu);
    free(s);
}

int64_t shmipc_aio_add(void *p, char *base, uint64_t off, uint32_t expected, uint64_t reg_off,
                       int32_t nslots) {
    struct shmipc_aio_set *s = p;
    int64_t id = -1;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < SHMIPC_AIO_MAX_WORDS; i++) {
        struct aio_entry *e = &s->e[i];
        if (e->used) continue;
        e->base = base;
        e->off = off;
        e->expected = expected;
        e->reg_off = reg_off;
        e->nslots = nslots;
        e->fired = 0;
        e->id = s->next_id++;
        e->used = 1;
        id = (int64_t)e->id;
        break;
    }
    pthread_mutex_unlock(&s->mu);
    if (id >= 0) shmipc_aio_kick(&s->ctl);
    return id;
}

uint64_t shmipc_aio_epoch(void *p) {
    struct shmipc_aio_set *s = p;
    return __atomic_load_n(&s->epoch, __ATOMIC_ACQUIRE);
}

uint64_t shmipc_aio_remove(void *p, uint64_t id) {
    struct shmipc_aio_set *s = p;
    int found = 0;
    pthread_mutex_lock(&s->mu);
    uint64_t epoch = __atomic_load_n(&s->epoch, __ATOMIC_ACQUIRE);
    for (int i = 0; i < SHMIPC_AIO_MAX_WORDS; i++)
        if (s->e[i].used && s->e[i].id == id) {
            s->e[i].used = 0;
            found = 1;
        }
    pthread_mutex_unlock(&s->mu);
    if (found) shmipc_aio_kick(&s->ctl); /* let go of the word's registration now */
    return epoch;
}

int shmipc_aio_take(void *p, uint64_t *ids, int max) {
    struct shmipc_aio_set *s = p;
    uint64_t junk;
    /* One read takes the eventfd's whole counter (non-blocking: EAGAIN when already 0). */
    if (read(s->efd, &junk, sizeof junk) < 0) { /* nothing to drain */
    }
    int n = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < SHMIPC_AIO_MAX_WORDS && n < max; i++)
        if (s->e[i].used && s->e[i].fired) {
            ids[n++] = s->e[i].id;
            s->e[i].used = 0;
        }
    pthread_mutex_unlock(&s->mu);
    return n;
}

void shmipc_aio_stop(void *p) {
    struct shmipc_aio_set *s = p;
    __atomic_store_n(&s->stop, 1, __ATOMIC_SEQ_CST);
    shmipc_aio_kick(&s->ctl);
}

int shmipc_aio_serve(void *p, int64_t budget_ns, int64_t idle_ns, int poll_ns) {
    struct shmipc_aio_set *s = p;
    char *bases[SHMIPC_AIO_MAX_WORDS];
    uint64_t offs[SHMIPC_AIO_MAX_WORDS], regs[SHMIPC_AIO_MAX_WORDS], ids[SHMIPC_AIO_MAX_WORDS];
    uint32_t exp[SHMIPC_AIO_MAX_WORDS];
    int32_t slots[SHMIPC_AIO_MAX_WORDS];
    uint8_t fired[SHMIPC_AIO_MAX_WORDS];
    int64_t start = shmipc_monotonic_ns(), idle_since = -1;
    for (;;) {
        if (__atomic_load_n(&s->stop, __ATOMIC_SEQ_CST)) return 2;
        int64_t now = shmipc_monotonic_ns();
        uint32_t n = 0;
        pthread_mutex_lock(&s->mu);
        uint32_t ctl_seen = __atomic_load_n(&s->ctl, __ATOMIC_SEQ_CST);
        for (int i = 0; i < SHMIPC_AIO_MAX_WORDS; i++) {
            struct aio_entry *e = &s->e[i];
            if (!e->used || e->fired) continue;
            bases[n] = e->base;
            offs[n] = e->off;
            exp[n] = e->expected;
            regs[n] = e->reg_off;
            slots[n] = e->nslots;
            ids[n] = e->id;
            n++;
        }
        pthread_mutex_unlock(&s->mu);
        if (n == 0) {
            if (idle_since < 0) idle_since = now;
            else if (now - idle_since >= idle_ns) return 1;
        } else {
            idle_since = -1;
        }
        if (now - start >= budget_ns) return 0; /* back to Python: is the loop still open? */
        int64_t deadline = start + budget_ns;
        if (n == 0 && (idle_since < 0 ? now : idle_since) + idle_ns < deadline)
            deadline = (idle_since < 0 ? now : idle_since) + idle_ns;
        if (poll_ns > 0 && n > 0 && now + poll_ns < deadline) deadline = now + poll_ns;
        int rc = shmipc_aio_waitv(bases, offs, exp, regs, slots, n, &s->ctl, ctl_seen, deadline,
                                  poll_ns > 0, fired);
        /* Release: pairs with Python's acquire load (shmipc_aio_epoch); our last touch of
         * every snapshotted word came before. */
        __atomic_add_fetch(&s->epoch, 1, __ATOMIC_RELEASE);
        if (rc <= 0) continue;
        int any = 0;
        pthread_mutex_lock(&s->mu);
        for (uint32_t j = 0; j < n; j++) {
            if (!fired[j]) continue;
            for (int i = 0; i < SHMIPC_AIO_MAX_WORDS; i++)
                if (s->e[i].used && s->e[i].id == ids[j]) {
                    s->e[i].fired = 1;
                    any = 1;
                }
        }
        pthread_mutex_unlock(&s->mu);
        if (any) {
            uint64_t one = 1;
            if (write(s->efd, &one, sizeof one) < 0) { /* EAGAIN: the counter is already set */
            }
        }
    }
}
