/* asyncio wake-ups through io_uring (shmipc/aio.py, docs/asyncio.md): the event loop's own
 * thread waits on the shared futex words, with one IORING_OP_FUTEX_WAIT (Linux 6.7+) per
 * watched word on a per-loop ring whose fd the loop polls (add_reader). A wake then costs one
 * sleeping thread (the loop's), where the helper-thread backend (csrc/aio.c) costs two.
 *
 * Invariants (U1-U6; the no-lost-wakeup argument is the one of shmipc_wait_while32 in
 * csrc/native.c and of the helper in csrc/aio.c, with the kernel's futex wait queued by the
 * SQE instead of by a blocking call):
 *  U1 Before a word's wait is submitted, the loop thread registers in the word's sleeper
 *     count, registry or sleep flag (shmipc_aio_reg_add, a seq_cst RMW), then looks at the
 *     word again (seq_cst load). A waker stores the word, then (seq_cst fence or RMW) reads
 *     the registration: either it sees ours and issues the futex wake, or our re-check sees
 *     its store (then nothing is submitted: arm returns 1). A wake issued before the SQE
 *     reaches the kernel is not lost either: the kernel's futex_wait_setup re-reads the word
 *     under the futex bucket lock and completes the request with -EAGAIN when it differs.
 *  U2 The registration stays for as long as the loop wants the wake-up: it is taken back
 *     (shmipc_aiou_unreg) only after the request's completion was reaped, or when no
 *     coroutine waits on the word any more (just before the request is cancelled). Holding
 *     it longer only costs a waker a futex syscall; taking it back early could let a waker
 *     skip the wake a pending request needs, so nothing else takes it back. A sleep flag
 *     (nslots -1, the Topic's DATA_WAITERS, T8 in csrc/topic.c) is set at every arm and never
 *     cleared here: the waker that sees it clears it and wakes every sleeper at once.
 *  U3 Every completion wakes the word's waiters, whatever its result (0 woken, -EAGAIN the
 *     word had already changed, -ECANCELED, an error): they look again, so a spurious
 *     completion costs a retry, never a lost message.
 *  U4 The kernel reads the word only while it handles the SQE (synchronously, inside the
 *     io_uring_enter of arm or of a later flush); a queued futex wait is found by its key
 *     and touches no user memory. Python keeps the word's mapping pinned until the
 *     request's completion is reaped or the ring closed anyway (docs/internals/lifetime.md),
 *     and the registration (U2) is always taken back before that pin goes.
 *  U5 A ring belongs to the process (and loop) that made it: a forked child sees
 *     shmipc_aiou_* refuse its parent's rings (ECHILD, a fork generation bumped at fork),
 *     and Python frees them in the child without touching the parent's registrations.
 *  U6 A request completed with 0 after nobody wanted it any more (cancelled too late) took
 *     a wake-up: a Lock's release wakes one sleeper, so Python passes it on (one
 *     FUTEX_WAKE of the word, still pinned) rather than let a blocking waiter sleep through
 *     its slice. A spurious wake only costs its receiver a look.
 * Only the loop's thread calls these functions for a given ring (no lock: asyncio loops are
 * single-threaded; Python's table lock covers the rest).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "shmipc.h"

#if __has_include(<linux/io_uring.h>) && defined(__NR_io_uring_setup)
#include <linux/io_uring.h>
#define AIOU_HAVE 1
#else
#define AIOU_HAVE 0
#endif

/* Refuse io_uring as if io_uring_setup failed with this errno (tests simulate ENOSYS/EPERM;
 * EINVAL simulates a kernel without IORING_OP_FUTEX_WAIT). 0: do not simulate. */
int shmipc_aiou_refuse = 0;

static unsigned fork_gen; /* bumped in every forked child: a ring of an older one is foreign */
static void aiou_forked(void) { fork_gen++; }
__attribute__((constructor)) static void aiou_atfork(void) {
    pthread_atfork(NULL, NULL, aiou_forked);
}

#if AIOU_HAVE

#define AIOU_OP_FUTEX_WAIT 51     /* IORING_OP_FUTEX_WAIT (6.7), absent from older headers */
#define AIOU_FUTEX2_SIZE_U32 0x02 /* shared (no FUTEX2_PRIVATE): words in shared mappings */
#define AIOU_MATCH_ANY 0xffffffffu /* FUTEX_BITSET_MATCH_ANY: any FUTEX_WAKE reaches it */
#define AIOU_CANCEL_TAG 0          /* user_data of the cancel requests themselves */

struct shmipc_aiou {
    int fd;
    unsigned gen;
    uint32_t sq_entries, sq_mask, cq_mask;
    uint32_t tail;      /* our next SQ tail (only we write it) */
    uint32_t submitted; /* the tail as far as the kernel has been told (io_uring_enter) */
    _Atomic uint32_t *sq_head, *sq_tail, *sq_flags, *cq_head, *cq_tail;
    uint32_t *sq_array;
    struct io_uring_cqe *cqes;
    struct io_uring_sqe *sqes;
    char *sq_map, *cq_map;
    size_t sq_len, cq_len, sqes_len;
};

static int enter(int fd, unsigned submit, unsigned wait, unsigned flags) {
    return (int)syscall(__NR_io_uring_enter, fd, submit, wait, flags, NULL, 0);
}

static void unmap_all(struct shmipc_aiou *u) {
    if (u->sqes && (void *)u->sqes != MAP_FAILED) munmap(u->sqes, u->sqes_len);
    if (u->cq_map && u->cq_map != MAP_FAILED && u->cq_map != u->sq_map)
        munmap(u->cq_map, u->cq_len);
    if (u->sq_map && u->sq_map != MAP_FAILED) munmap(u->sq_map, u->sq_len);
}

void *shmipc_aiou_new(unsigned sq_entries, unsigned cq_entries) {
    if (shmipc_aiou_refuse && shmipc_aiou_refuse != EINVAL) {
        errno = shmipc_aiou_refuse;
        return NULL;
    }
    struct io_uring_params par;
    memset(&par, 0, sizeof par);
    par.flags = IORING_SETUP_CQSIZE;
    par.cq_entries = cq_entries;
    int fd = (int)syscall(__NR_io_uring_setup, sq_entries, &par); /* O_CLOEXEC by the kernel */
    if (fd < 0) return NULL;
    struct shmipc_aiou *u = calloc(1, sizeof *u);
    if (!u) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    u->fd = fd;
    u->gen = fork_gen;
    u->sq_len = par.sq_off.array + par.sq_entries * sizeof(uint32_t);
    u->cq_len = par.cq_off.cqes + par.cq_entries * sizeof(struct io_uring_cqe);
    u->sqes_len = par.sq_entries * sizeof(struct io_uring_sqe);
    int single = (par.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single && u->cq_len > u->sq_len) u->sq_len = u->cq_len;
    u->sq_map = mmap(NULL, u->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     IORING_OFF_SQ_RING);
    if (u->sq_map == MAP_FAILED) goto fail;
    u->cq_map = single ? u->sq_map
                       : mmap(NULL, u->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                              fd, IORING_OFF_CQ_RING);
    if (u->cq_map == MAP_FAILED) goto fail;
    u->sqes = mmap(NULL, u->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   IORING_OFF_SQES);
    if ((void *)u->sqes == MAP_FAILED) goto fail;
    u->sq_entries = par.sq_entries;
    u->sq_head = (_Atomic uint32_t *)(u->sq_map + par.sq_off.head);
    u->sq_tail = (_Atomic uint32_t *)(u->sq_map + par.sq_off.tail);
    u->sq_flags = (_Atomic uint32_t *)(u->sq_map + par.sq_off.flags);
    u->sq_mask = *(uint32_t *)(u->sq_map + par.sq_off.ring_mask);
    u->sq_array = (uint32_t *)(u->sq_map + par.sq_off.array);
    u->cq_head = (_Atomic uint32_t *)(u->cq_map + par.cq_off.head);
    u->cq_tail = (_Atomic uint32_t *)(u->cq_map + par.cq_off.tail);
    u->cq_mask = *(uint32_t *)(u->cq_map + par.cq_off.ring_mask);
    u->cqes = (struct io_uring_cqe *)(u->cq_map + par.cq_off.cqes);
    u->tail = u->submitted = atomic_load_explicit(u->sq_tail, memory_order_relaxed);
    return u;
fail : {
    int saved = errno;
    unmap_all(u);
    close(fd);
    free(u);
    errno = saved;
    return NULL;
}
}

int shmipc_aiou_fd(void *p) { return ((struct shmipc_aiou *)p)->fd; }

void shmipc_aiou_free(void *p) {
    struct shmipc_aiou *u = p;
    if (!u) return;
    /* Closing the fd cancels whatever is still queued (the ring's exit work); a forked
     * child's copy only drops its reference and its own mappings (U5). */
    unmap_all(u);
    close(u->fd);
    free(u);
}

static int foreign(struct shmipc_aiou *u) {
    if (u->gen == fork_gen) return 0;
    errno = ECHILD;
    return 1;
}

/* Tell the kernel about the SQEs written since the last call. 0 when all were taken, 2 when
 * some wait (EBUSY/EAGAIN: the CQ backlog; the next reap or arm tries again), -1 error. */
static int flush(struct shmipc_aiou *u) {
    while (u->submitted != u->tail) {
        int r = enter(u->fd, u->tail - u->submitted, 0, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EBUSY || errno == EAGAIN) return 2;
            return -1;
        }
        if (r == 0) return 2;
        u->submitted += (uint32_t)r;
    }
    return 0;
}

int shmipc_aiou_flush(void *p) {
    struct shmipc_aiou *u = p;
    if (foreign(u)) return -1;
    return flush(u);
}

/* A free SQE (flushing first when the SQ ring is full), or NULL (errno EBUSY). */
static struct io_uring_sqe *next_sqe(struct shmipc_aiou *u) {
    /* acquire: pairs with the kernel's release of the SQ head (it has read those SQEs) */
    uint32_t head = atomic_load_explicit(u->sq_head, memory_order_acquire);
    if (u->tail - head >= u->sq_entries) {
        if (flush(u) < 0) return NULL;
        head = atomic_load_explicit(u->sq_head, memory_order_acquire);
        if (u->tail - head >= u->sq_entries) {
            errno = EBUSY;
            return NULL;
        }
    }
    uint32_t idx = u->tail & u->sq_mask;
    struct io_uring_sqe *e = &u->sqes[idx];
    memset(e, 0, sizeof *e);
    u->sq_array[idx] = idx;
    return e;
}

static void publish(struct shmipc_aiou *u) {
    u->tail++;
    /* release: pairs with the kernel's acquire of the SQ tail (the SQE is written) */
    atomic_store_explicit(u->sq_tail, u->tail, memory_order_release);
}

int shmipc_aiou_arm(void *p, char *base, uint64_t off, uint32_t expected, uint64_t reg_off,
                    int32_t nslots, uint64_t user_data, uint64_t me, int32_t *slot) {
    struct shmipc_aiou *u = p;
    if (foreign(u)) return -1;
    /* U1: register, then the last look (seq_cst: pairs with the wakers' fences). */
    *slot = shmipc_aio_reg_add(base, reg_off, nslots, me);
    _Atomic uint32_t *word = (_Atomic uint32_t *)(base + off);
    if (atomic_load_explicit(word, memory_order_seq_cst) != expected) {
        shmipc_aio_reg_remove(base, reg_off, *slot, me);
        return 1;
    }
    struct io_uring_sqe *e = next_sqe(u);
    if (!e) {
        int saved = errno;
        shmipc_aio_reg_remove(base, reg_off, *slot, me);
        errno = saved;
        return -1;
    }
    e->opcode = AIOU_OP_FUTEX_WAIT;
    e->fd = AIOU_FUTEX2_SIZE_U32; /* the futex2 flags travel in the fd field */
    e->addr = (uint64_t)(uintptr_t)word;
    e->off = expected;         /* addr2: the value to sleep on */
    e->addr3 = AIOU_MATCH_ANY; /* the wait mask */
    e->user_data = user_data;
    publish(u);
    int r = flush(u);
    if (r < 0) return 2; /* the SQE is in the ring: the next flush retries; U3 covers it */
    return r;            /* 0 submitted, 2 queued for the next flush */
}

void shmipc_aiou_unreg(char *base, uint64_t reg_off, int32_t slot, uint64_t me) {
    shmipc_aio_reg_remove(base, reg_off, slot, me); /* U2: the caller no longer wants the wake */
}

int shmipc_aiou_cancel(void *p, uint64_t user_data) {
    struct shmipc_aiou *u = p;
    if (foreign(u)) return -1;
    struct io_uring_sqe *e = next_sqe(u);
    if (!e) return -1;
    e->opcode = IORING_OP_ASYNC_CANCEL;
    e->fd = -1;
    e->addr = user_data; /* the request to cancel */
    e->user_data = AIOU_CANCEL_TAG;
    publish(u);
    int r = flush(u);
    return r < 0 ? 2 : r;
}

int shmipc_aiou_reap(void *p, uint64_t *user_data, int32_t *res, int max) {
    struct shmipc_aiou *u = p;
    if (foreign(u)) return -1;
    int n = 0;
    for (;;) {
        uint32_t head = atomic_load_explicit(u->cq_head, memory_order_relaxed); /* ours */
        /* acquire: pairs with the kernel's release of the CQ tail (the CQEs are written) */
        uint32_t tail = atomic_load_explicit(u->cq_tail, memory_order_acquire);
        while (head != tail && n < max) {
            struct io_uring_cqe *c = &u->cqes[head & u->cq_mask];
            user_data[n] = c->user_data;
            res[n] = c->res;
            n++;
            head++;
        }
        /* release: pairs with the kernel's acquire of the CQ head (the slots are free) */
        atomic_store_explicit(u->cq_head, head, memory_order_release);
        if (n == max) break;
        /* Completions the full CQ ring could not take wait in the kernel's overflow list:
         * have them moved into the ring (IORING_FEAT_NODROP), and go on reaping. */
        if (atomic_load_explicit(u->sq_flags, memory_order_acquire) & IORING_SQ_CQ_OVERFLOW) {
            if (enter(u->fd, 0, 0, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR &&
                errno != EBUSY && errno != EAGAIN)
                break;
            if (atomic_load_explicit(u->cq_tail, memory_order_acquire) != head) continue;
        }
        break;
    }
    if (u->submitted != u->tail) flush(u); /* room in the CQ now: what waited goes in */
    return n;
}

/* Whether this kernel (and its policy) gives us io_uring with IORING_OP_FUTEX_WAIT: 1, or
 * -errno (ENOSYS no io_uring, EPERM refused by io_uring_disabled or seccomp, EINVAL or
 * EOPNOTSUPP no futex op, ...). Submits one wait whose value is wrong on purpose: a kernel
 * that knows the op completes it at once with -EAGAIN. */
int shmipc_aiou_probe(void) {
    void *p = shmipc_aiou_new(4, 8);
    if (!p) return -errno;
    struct shmipc_aiou *u = p;
    int rc = 1;
    static _Atomic uint32_t word = 0;
    struct io_uring_sqe *e = next_sqe(u);
    e->opcode = AIOU_OP_FUTEX_WAIT;
    e->fd = AIOU_FUTEX2_SIZE_U32;
    e->addr = (uint64_t)(uintptr_t)&word;
    e->off = 1; /* the word holds 0 */
    e->addr3 = AIOU_MATCH_ANY;
    e->user_data = 1;
    publish(u);
    int r;
    do
        r = enter(u->fd, 1, 1, IORING_ENTER_GETEVENTS);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        rc = -errno;
    } else {
        uint64_t ud;
        int32_t res = 0;
        if (shmipc_aiou_reap(u, &ud, &res, 1) != 1) rc = -EIO;
        else if (res != -EAGAIN) rc = res < 0 ? res : -EINVAL;
    }
    if (shmipc_aiou_refuse == EINVAL) rc = -EINVAL;
    shmipc_aiou_free(u);
    return rc;
}

#else /* no io_uring headers at build time: the helper-thread backend serves */

void *shmipc_aiou_new(unsigned sq_entries, unsigned cq_entries) {
    errno = ENOSYS;
    return NULL;
}
int shmipc_aiou_fd(void *p) { return -1; }
void shmipc_aiou_free(void *p) {}
int shmipc_aiou_flush(void *p) { return -1; }
int shmipc_aiou_arm(void *p, char *base, uint64_t off, uint32_t expected, uint64_t reg_off,
                    int32_t nslots, uint64_t user_data, uint64_t me, int32_t *slot) {
    errno = ENOSYS;
    return -1;
}
void shmipc_aiou_unreg(char *base, uint64_t reg_off, int32_t slot, uint64_t me) {
    shmipc_aio_reg_remove(base, reg_off, slot, me);
}
int shmipc_aiou_cancel(void *p, uint64_t user_data) { return -1; }
int shmipc_aiou_reap(void *p, uint64_t *user_data, int32_t *res, int max) { return -1; }
int shmipc_aiou_probe(void) { return -ENOSYS; }

#endif
