/* Topics: broadcast channels in shared memory (issue 8). docs/topics.md is the prose;
 * shmipc/topic.py the Python side; tests/unit/topic/test_slot_model.py a model of the slot
 * protocol below whose every interleaving, with any actor killed or stopped between any two
 * steps, is checked against these invariants.
 *
 * Shared state: the control block (config; the publisher lock and its cached room bound;
 * the published line: tail T, sequence counter N, oldest intact position O), a table of
 * subscriber slots (word W = pid << 32 | generation << 8 | state, the owner's start time,
 * and on its own cache line the cursor C and the expected sequence number E) and a byte ring
 * of records (u32 length, u32 kind, u64 sequence number, payload; 16-aligned; a record never
 * straddles the end of the ring: a PAD record fills the rest of the lap and carries the
 * sequence number of the record after it).
 *
 * Actors: publishers (any number, any processes; serialised by one robust lock, so each
 * subscriber sees each publisher's messages in that publisher's order), subscribers (each
 * reads lock-free through its own slot; it writes only its own slot), and the liveness pass
 * of a blocked publisher (shmipc/topic.py: evicts the dead and the stopped).
 *
 * INVARIANTS
 *  T1 (publish is invisible until whole) A record's bytes and header are written before the
 *     release store of T past it; a subscriber reads only below the T it acquire-loaded. A
 *     publisher that dies mid-write left T unmoved: nothing of its record is visible, and
 *     the next holder of the lock (taken over from the dead) writes there again.
 *  T2 (overwrite announces itself) Before any byte of a lap-old record is overwritten, O is
 *     moved past it (relaxed store, then a release fence, then the writes). A reader that
 *     read from position P checks, after its copy and an acquire fence, that O <= P: if so,
 *     nothing it read was overwritten (seqlock order); if not, it discards the copy and
 *     reports Lagged(seq(O) - E) and resumes at O. So no reader returns a torn record.
 *  T3 (block keeps what the living need) With policy "block", a publisher writes [T, end)
 *     only if end <= min(C of ACTIVE slots) + capacity. C is stored (release) only after the
 *     copy it ends, so the bytes of an ACTIVE reader's unread records are never touched.
 *  T4 (one owner per slot) W leaves FREE only by a CAS to CLAIMING naming the claimer's pid;
 *     every other transition is a CAS from the exact word observed, and every return to FREE
 *     bumps the generation, so a stale observer's CAS fails (no ABA within 2^24 reuses).
 *  T5 (a subscriber starts at the present) CLAIMING -> ACTIVE happens under the publisher
 *     lock, with C = T and E = N read under it and the cached room bound lowered to T +
 *     capacity: no publisher can have planned to write over C before the slot counted.
 *  T6 (eviction is seen) A publisher evicts only an ACTIVE slot whose owner is dead, or
 *     stopped (state T) for the whole liveness interval, by CAS ACTIVE -> FREE (dead) or
 *     ACTIVE -> EVICTED (stopped), and only then stops counting its C. The owner re-reads W
 *     after every copy (after the acquire fence) and before every read: a W that is not its
 *     own ACTIVE word is Evicted, the copy discarded. An EVICTED slot returns to FREE by its
 *     owner's close, or by anyone once its owner is dead. "Cannot tell" is never dead.
 *  T7 (bounded by the mapping) Every position, length and slot index read from shared
 *     memory is checked before use (a position is masked into the ring, a record must end
 *     inside the ring and below T, a length is at most capacity / 2); a check that fails is
 *     SHMIPC_CORRUPT, never a read outside the mapping.
 *  T8 (no lost wake-up; one wake per sleep) A sleeper sets its side's flag (seq_cst RMW:
 *     DATA_WAITERS for subscribers, SPACE_WAITERS + SPACE_NEED for publishers), then looks
 *     again, then futex-waits on a word it just read; a waker makes its change, fences
 *     (seq_cst), and only if it exchanges the flag from set to clear makes the wake syscall.
 *     Either the waker sees the flag or the sleeper sees the change, and a sleeper not yet in
 *     the kernel is refused by the futex's own check. Flags are hints: a stale or scribbled
 *     one costs one futex call, a lost one at most a slice (publishers also poll every ms).
 *
 * Every step of the slot protocol is ONE atomic operation on a shared word.
 *
 * POOLED TOPICS (shmipc/topic_pool.py states P-T1..P-T4 and who holds each pool reference;
 * tests/unit/topic/test_topic_pool_model.py checks them): records of kind
 * SHMIPC_TOPIC_K_POOLED name pool blocks. Policy "block": the publisher counts the ACTIVE
 * slots and hands each a transit reference under the publisher lock (count_active, then
 * place_locked); a slot leaves ACTIVE on a pooled topic only by retire, under the same lock,
 * which also marks the slot's cursor (fetch_or 1). A subscriber moves its cursor by a release
 * CAS from the value it last stored, so exactly one of {its claim, the retirer's walk of its
 * unread records} takes each record's reference. Policy "overwrite": place() refuses to
 * overwrite a pooled record unless called from the pooled section (pooled_ok), which first
 * drops that record's ring reference (SHMIPC_TOPIC_POOLED_AHEAD sends the fast path there).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <limits.h>
#include <pthread.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "shmipc.h"
#include "ring_internal.h"
#include "fastcall_args.h"

#define A64(t, off) ((_Atomic uint64_t *)((t) + (off)))
#define A32(t, off) ((_Atomic uint32_t *)((t) + (off)))
#define RELAXED memory_order_relaxed
#define ACQUIRE memory_order_acquire
#define RELEASE memory_order_release
#define SEQ_CST memory_order_seq_cst
#define BIG_COPY (64 << 10)

#define W_STATE(w) ((uint32_t)((w) & 0xFF))
#define W_GEN(w) (((w) >> 8) & 0xFFFFFF)
#define W_PID(w) ((uint32_t)((w) >> 32))
#define MAKE_W(pid, gen, st) (((uint64_t)(pid) << 32) | (((uint64_t)(gen) & 0xFFFFFF) << 8) | (st))

static inline uint64_t rec16(uint64_t len) { return (SHMIPC_TOPIC_REC_HEADER + len + 15) & ~(uint64_t)15; }

static inline char *slot_at(char *t, uint32_t i) {
    return t + SHMIPC_TOPIC_HEADER_SIZE + (size_t)i * SHMIPC_TOPIC_SLOT_SIZE;
}

static inline char *data_of(char *t, uint32_t max_subs) {
    return t + SHMIPC_TOPIC_HEADER_SIZE + (size_t)max_subs * SHMIPC_TOPIC_SLOT_SIZE;
}

static inline uint32_t ld32(const char *p) {
    return atomic_load_explicit((_Atomic uint32_t *)p, RELAXED);
}
static inline uint64_t ld64(const char *p) {
    return atomic_load_explicit((_Atomic uint64_t *)p, RELAXED);
}

/* ---- setup ------------------------------------------------------------------------------ */

int shmipc_topic_init(char *t, uint64_t cap, uint32_t max_subs, uint32_t policy,
                      uint64_t liveness_ns, uint64_t spin_ns) {
    memset(t, 0, SHMIPC_TOPIC_HEADER_SIZE + (size_t)max_subs * SHMIPC_TOPIC_SLOT_SIZE);
    *(uint64_t *)(t + SHMIPC_TOPIC_OFF_CAPACITY) = cap;
    *(uint32_t *)(t + SHMIPC_TOPIC_OFF_MAX_SUBS) = max_subs;
    *(uint32_t *)(t + SHMIPC_TOPIC_OFF_POLICY) = policy;
    *(uint64_t *)(t + SHMIPC_TOPIC_OFF_LIVENESS_NS) = liveness_ns;
    *(uint64_t *)(t + SHMIPC_TOPIC_OFF_SPIN_NS) = spin_ns;
    *(uint64_t *)(t + SHMIPC_TOPIC_OFF_ROOM) = cap;
    *(uint32_t *)(t + SHMIPC_TOPIC_OFF_VERSION) = SHMIPC_TOPIC_VERSION;
    /* Release: the segment's READY store publishes all this anyway; the magic goes last. */
    atomic_store_explicit(A32(t, SHMIPC_TOPIC_OFF_MAGIC), SHMIPC_TOPIC_MAGIC, RELEASE);
    return SHMIPC_OK;
}

/* ---- subscriber slots (T4..T6) ---------------------------------------------------------- */

/* Room may have been made (a cursor moved to `cursor`, or a slot went away: UINT64_MAX):
 * wake sleeping publishers, if any sleeps and the cursor reached the one they wait for (a
 * quarter of the ring past what they need, or the tail: so a reader keeping pace with a
 * waiting publisher costs one wake per quarter ring, not one per message). */
static void wake_publishers(char *t, uint64_t cursor) {
    /* seq_cst fence: pairs with the publisher's seq_cst registration in wait_space. */
    atomic_thread_fence(SEQ_CST);
    _Atomic uint32_t *flag = A32(t, SHMIPC_TOPIC_OFF_SPACE_WAITERS);
    /* The flag is cleared by the one waker (exchange), so the publisher it wakes is woken by
     * one syscall, not by one per message read until it gets a CPU to look (T8). */
    if (atomic_load_explicit(flag, RELAXED) &&
        cursor >= atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_SPACE_NEED), RELAXED) &&
        atomic_exchange_explicit(flag, 0, SEQ_CST)) {
        atomic_fetch_add_explicit(A32(t, SHMIPC_TOPIC_OFF_SPACE_SEQ), 1, SEQ_CST);
        shmipc_futex_wake(t, SHMIPC_TOPIC_OFF_SPACE_SEQ, INT_MAX);
    }
}

int64_t shmipc_topic_claim(char *t, uint32_t max_subs, uint32_t pid, uint64_t start,
                           uint64_t *word) {
    for (uint32_t i = 0; i < max_subs; i++) {
        char *s = slot_at(t, i);
        uint64_t w = atomic_load_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_WORD), ACQUIRE);
        if (W_STATE(w) != SHMIPC_TOPIC_FREE) continue;
        uint64_t mine = MAKE_W(pid, W_GEN(w), SHMIPC_TOPIC_CLAIMING);
        /* step "claim": FREE(g) -> CLAIMING(g, pid). acq_rel: later stores stay after it. */
        if (atomic_compare_exchange_strong_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_WORD), &w, mine,
                                                    memory_order_acq_rel, RELAXED)) {
            /* step "identify": a reader of the word sees 0 (unknown: never dead) or this. */
            atomic_store_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_START), start, RELEASE);
            *word = mine;
            return (int64_t)i;
        }
    }
    return -SHMIPC_FULL;
}

int shmipc_topic_activate(char *t, uint64_t cap, uint32_t max_subs, uint32_t slot,
                          uint64_t word, uint64_t *out, int64_t deadline_ns) {
    if (slot >= max_subs) return SHMIPC_CORRUPT;
    int64_t spin = (int64_t)ld64(t + SHMIPC_TOPIC_OFF_SPIN_NS);
    if (spin < 0 || spin > 1000000) spin = 50000;
    int rc = shmipc_lock_acquire(t, SHMIPC_TOPIC_OFF_LOCK, deadline_ns, spin);
    if (rc != SHMIPC_OK) return rc;
    char *s = slot_at(t, slot);
    uint64_t tail = ld64(t + SHMIPC_TOPIC_OFF_TAIL);
    uint64_t seq = ld64(t + SHMIPC_TOPIC_OFF_PUBLISHED);
    uint64_t active = (word & ~(uint64_t)0xFF) | SHMIPC_TOPIC_ACTIVE;
    rc = SHMIPC_OK;
    if (tail % 16) {
        rc = SHMIPC_CORRUPT;
    } else {
        atomic_store_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_CURSOR), tail, RELAXED);
        atomic_store_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_EXPECTED), seq, RELAXED);
        /* step "activate": CLAIMING -> ACTIVE (release: the cursor is seen with the word). */
        uint64_t w = word;
        if (!atomic_compare_exchange_strong_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_WORD), &w,
                                                     active, RELEASE, RELAXED))
            rc = SHMIPC_EVICTED; /* taken back while claiming (judged dead): start again */
        else if (ld64(t + SHMIPC_TOPIC_OFF_ROOM) > tail + cap)
            atomic_store_explicit(A64(t, SHMIPC_TOPIC_OFF_ROOM), tail + cap, RELAXED);
    }
    shmipc_lock_release(t, SHMIPC_TOPIC_OFF_LOCK);
    out[0] = tail;
    out[1] = seq;
    out[2] = active;
    return rc;
}

int shmipc_topic_evict(char *t, uint32_t max_subs, uint32_t slot, uint64_t observed,
                       int to_free) {
    if (slot >= max_subs || W_STATE(observed) == SHMIPC_TOPIC_FREE) return 0;
    char *s = slot_at(t, slot);
    uint64_t next = to_free ? MAKE_W(0, W_GEN(observed) + 1, SHMIPC_TOPIC_FREE)
                            : (observed & ~(uint64_t)0xFF) | SHMIPC_TOPIC_EVICTED;
    if (!to_free && W_STATE(observed) != SHMIPC_TOPIC_ACTIVE) return 0;
    uint64_t w = observed;
    /* step "evict": seq_cst, so that every write this publisher makes after it (over the
     * slot's unread records) is ordered after it (T6). */
    if (!atomic_compare_exchange_strong_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_WORD), &w, next,
                                                 SEQ_CST, RELAXED))
        return 0;
    if (W_STATE(observed) == SHMIPC_TOPIC_ACTIVE)
        atomic_fetch_add_explicit(A64(t, SHMIPC_TOPIC_OFF_EVICTIONS), 1, RELAXED);
    wake_publishers(t, UINT64_MAX);
    return 1;
}

int shmipc_topic_release(char *t, uint32_t max_subs, uint32_t slot, uint64_t word) {
    /* The owner's close: its ACTIVE word, or the EVICTED/CLAIMING one of the same claim. */
    if (slot >= max_subs) return 0;
    char *s = slot_at(t, slot);
    uint64_t base = word & ~(uint64_t)0xFF;
    uint32_t states[] = {SHMIPC_TOPIC_ACTIVE, SHMIPC_TOPIC_EVICTED, SHMIPC_TOPIC_CLAIMING};
    for (int k = 0; k < 3; k++) {
        uint64_t w = base | states[k];
        if (atomic_compare_exchange_strong_explicit(
                A64(s, SHMIPC_TOPIC_SLOT_OFF_WORD), &w,
                MAKE_W(0, W_GEN(word) + 1, SHMIPC_TOPIC_FREE), SEQ_CST, RELAXED)) {
            wake_publishers(t, UINT64_MAX);
            return 1;
        }
    }
    return 0;
}

int shmipc_topic_steal(char *t, uint64_t observed) {
    if (shmipc_lock_steal(t, SHMIPC_TOPIC_OFF_LOCK, observed) != SHMIPC_OWNERDEAD) return 0;
    /* Nothing to repair (T1): the dead holder's tail store never happened, or it did and the
     * record is whole. A cached room bound it lowered only makes us rescan. */
    shmipc_lock_release(t, SHMIPC_TOPIC_OFF_LOCK);
    return 1;
}

/* ---- publishing (T1..T3) ---------------------------------------------------------------- */

/* The spin budget for a wait: `spin_ns` while the machine has a core for every runnable
 * thread, else OVERSUBSCRIBED_SPIN_NS. When more threads are runnable than there are cores
 * (a publisher and four subscribers on two cores), a waiter that spins burns the time slice
 * the one it waits for needs to run; sleeping at once gives it the core. The count is the
 * kernel's runnable count (/proc/loadavg, 4th field, ourselves included), read at most every
 * LOAD_EVERY_NS per process: a wait costs one clock read, not a file read. */
#define OVERSUBSCRIBED_SPIN_NS 2000
#define LOAD_EVERY_NS 20000000
static _Atomic int64_t load_checked_ns;
static _Atomic int oversubscribed;

static int64_t spin_budget(int64_t spin_ns) {
    if (spin_ns <= OVERSUBSCRIBED_SPIN_NS) return spin_ns;
    int64_t now = shmipc_monotonic_ns();
    if (now - atomic_load_explicit(&load_checked_ns, RELAXED) >= LOAD_EVERY_NS) {
        atomic_store_explicit(&load_checked_ns, now, RELAXED);
        static long cores;
        if (cores <= 0) cores = sysconf(_SC_NPROCESSORS_ONLN);
        char buf[128];
        int over = 0;
        int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0) {
                buf[n] = 0;
                long running = 0;
                /* "0.50 0.40 0.30 3/200 1234": runnable/total after the third space. */
                char *p = buf;
                for (int sp = 0; *p && sp < 3; p++)
                    if (*p == ' ') sp++;
                running = strtol(p, NULL, 10);
                over = cores > 0 && running > cores;
            }
        }
        atomic_store_explicit(&oversubscribed, over, RELAXED);
    }
    return atomic_load_explicit(&oversubscribed, RELAXED) ? OVERSUBSCRIBED_SPIN_NS : spin_ns;
}

/* The slowest ACTIVE cursor, or `tail` when none: SHMIPC_OK, or SHMIPC_CORRUPT for a cursor
 * that cannot be (ahead of the tail, more than a lap behind, unaligned). */
static int slowest(char *t, uint64_t cap, uint32_t max_subs, uint64_t tail, uint64_t *min) {
    uint64_t m = tail;
    for (uint32_t i = 0; i < max_subs; i++) {
        char *s = slot_at(t, i);
        uint64_t w = atomic_load_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_WORD), ACQUIRE);
        if (W_STATE(w) != SHMIPC_TOPIC_ACTIVE) continue;
        /* Acquire: pairs with the subscriber's release store of its cursor after its copy. */
        uint64_t c = atomic_load_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_CURSOR), ACQUIRE);
        if (c % 16 == 1 &&
            W_STATE(atomic_load_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_WORD), ACQUIRE)) !=
                SHMIPC_TOPIC_ACTIVE)
            continue; /* retired (P-T2) since we read its word: no longer counted */
        if (c > tail || tail - c > cap || c % 16) return SHMIPC_CORRUPT;
        if (c < m) m = c;
    }
    *min = m;
    return SHMIPC_OK;
}

/* Wait (without the lock) until the slowest cursor is at least `need`, or a slice ends. */
static int wait_space(char *t, uint64_t cap, uint32_t max_subs, uint64_t need,
                      int64_t deadline_ns, int64_t spin_ns) {
    atomic_fetch_add_explicit(A64(t, SHMIPC_TOPIC_OFF_PUB_WAITS), 1, RELAXED);
    int64_t now = shmipc_monotonic_ns();
    int64_t spin_until = now + spin_budget(spin_ns);
    uint64_t m;
    for (unsigned i = 1;; i++) {
        uint64_t tail = atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_TAIL), ACQUIRE);
        if (slowest(t, cap, max_subs, tail, &m) != SHMIPC_OK || m >= need) return SHMIPC_OK;
        if ((i & 15) == 0 && shmipc_monotonic_ns() >= spin_until) break;
        shmipc_cpu_relax();
    }
    /* Register (set the flag), then look again, then sleep on the sequence word: a
     * subscriber stores its cursor, fences (seq_cst) and reads the flag (wake_publishers), so
     * either it sees us or we see its cursor; the futex re-checks the sequence word
     * atomically. The waker clears the flag; a stale one costs one wake. Subscribers
     * wake us only once the cursor we wait for is a quarter ring past `need` (or at the
     * tail); a subscriber that pauses between the two is caught by polling every
     * millisecond, so waiting costs at most 1000 wake-ups a second, never a syscall per
     * message read. */
    int64_t slice_end = shmipc_monotonic_ns() + SHMIPC_SLICE_NS;
    for (;;) {
        uint64_t tail = atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_TAIL), ACQUIRE);
        uint64_t want = need + cap / 4 < tail ? need + cap / 4 : tail;
        if (want < need) want = need;
        /* The bound subscribers compare their cursor with: ours if none sleeps yet, else the
         * lower one (a publisher that sleeps past it is caught by its poll). */
        uint32_t before =
            atomic_exchange_explicit(A32(t, SHMIPC_TOPIC_OFF_SPACE_WAITERS), 1, SEQ_CST);
        uint64_t cur = atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_SPACE_NEED), RELAXED);
        if (before == 0 || want < cur)
            atomic_store_explicit(A64(t, SHMIPC_TOPIC_OFF_SPACE_NEED), want, SEQ_CST);
        atomic_thread_fence(SEQ_CST);
        uint32_t seq = atomic_load_explicit(A32(t, SHMIPC_TOPIC_OFF_SPACE_SEQ), SEQ_CST);
        tail = atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_TAIL), SEQ_CST);
        int rc = SHMIPC_OK;
        if (slowest(t, cap, max_subs, tail, &m) == SHMIPC_OK && m < need) {
            int64_t poll = shmipc_monotonic_ns() + 1000000;
            int64_t until = deadline_ns >= 0 && deadline_ns < poll ? deadline_ns : poll;
            rc = shmipc_futex_wait(t, SHMIPC_TOPIC_OFF_SPACE_SEQ, seq, until);
        }
        if (rc == SHMIPC_CHANGED || rc == SHMIPC_OK) return SHMIPC_OK;
        if (rc != SHMIPC_TIMEDOUT) return rc; /* SLICE, INTERRUPTED, ERROR */
        int64_t now = shmipc_monotonic_ns();
        if (deadline_ns >= 0 && now >= deadline_ns) return SHMIPC_TIMEDOUT;
        tail = atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_TAIL), ACQUIRE);
        if (slowest(t, cap, max_subs, tail, &m) != SHMIPC_OK || m >= need) return SHMIPC_OK;
        if (now >= slice_end) return SHMIPC_SLICE;
    }
}

/* One record, under the lock held by the caller: SHMIPC_OK, SHMIPC_FULL (policy block, no
 * room: *need gets the cursor the slowest must reach) or SHMIPC_CORRUPT. */
static int place(char *t, uint64_t cap, uint32_t max_subs, uint32_t policy, const char *p,
                 uint64_t len, uint32_t kind, uint64_t *need, int pooled_ok) {
    char *data = data_of(t, max_subs);
    uint64_t mask = cap - 1, rec = rec16(len);
    uint64_t tail = ld64(t + SHMIPC_TOPIC_OFF_TAIL);
    uint64_t oldest = ld64(t + SHMIPC_TOPIC_OFF_OLDEST);
    if (tail % 16 || oldest % 16 || oldest > tail || tail - oldest > cap) return SHMIPC_CORRUPT;
    uint64_t idx = tail & mask;
    uint64_t pad = cap - idx < rec ? cap - idx : 0;
    uint64_t end = tail + pad + rec;
    if (policy == SHMIPC_TOPIC_BLOCK) {
        uint64_t room = ld64(t + SHMIPC_TOPIC_OFF_ROOM);
        if (end > room || room - tail > cap) {
            uint64_t m;
            if (slowest(t, cap, max_subs, tail, &m) != SHMIPC_OK) return SHMIPC_CORRUPT;
            room = m + cap;
            atomic_store_explicit(A64(t, SHMIPC_TOPIC_OFF_ROOM), room, RELAXED);
        }
        if (end > room) {
            *need = end - cap;
            return SHMIPC_FULL;
        }
    }
    /* T2: move O past every record the write will touch, then fence, then write. */
    uint64_t o = oldest;
    while (o + cap < end) {
        uint64_t oi = o & mask;
        uint32_t olen = ld32(data + oi), okind = ld32(data + oi + 4);
        uint64_t step = okind == SHMIPC_TOPIC_REC_PAD ? cap - oi : rec16(olen);
        if ((okind != SHMIPC_TOPIC_REC_PAD && olen > cap / 2) || oi + step > cap) return SHMIPC_CORRUPT;
        /* A pooled record holds a ring reference that its overwriter must drop: only the
         * pooled publish section (Python, shmipc/topic_pool.py) may overwrite one. Nothing
         * was written yet. */
        if (okind == SHMIPC_TOPIC_K_POOLED && !pooled_ok && policy == SHMIPC_TOPIC_OVERWRITE)
            return SHMIPC_TOPIC_POOLED_AHEAD;
        o += step;
        if (o > tail) return SHMIPC_CORRUPT;
    }
    if (o != oldest) {
        atomic_store_explicit(A64(t, SHMIPC_TOPIC_OFF_OLDEST), o, RELAXED);
        /* Release fence: the new O is visible before any byte written below (pairs with the
         * reader's acquire fence between its copy and its load of O). */
        atomic_thread_fence(RELEASE);
    }
    uint64_t seq = ld64(t + SHMIPC_TOPIC_OFF_PUBLISHED);
    if (pad) {
        uint32_t h[2] = {0, SHMIPC_TOPIC_REC_PAD};
        memcpy(data + idx, h, 8);
        memcpy(data + idx + 8, &seq, 8);
        idx = 0;
    }
    uint32_t h[2] = {(uint32_t)len, kind};
    memcpy(data + idx, h, 8);
    memcpy(data + idx + 8, &seq, 8);
    memcpy(data + idx + SHMIPC_TOPIC_REC_HEADER, p, (size_t)len);
    atomic_store_explicit(A64(t, SHMIPC_TOPIC_OFF_PUBLISHED), seq + 1, RELAXED);
    /* Release: pairs with the subscribers' acquire load of T (T1). */
    atomic_store_explicit(A64(t, SHMIPC_TOPIC_OFF_TAIL), end, RELEASE);
    return SHMIPC_OK;
}

/* ---- subscribers' sleep on the tail (T8) ----------------------------------------------
 *
 * DATA_WAITERS is a flag, not a count: "a subscriber may sleep on the tail". A subscriber
 * about to sleep sets it (seq_cst RMW), then re-reads T, then futex-waits on T's low word;
 * a publisher, after its release store of T, fences (seq_cst) and, if it sees the flag,
 * clears it (exchange) and wakes every sleeper with ONE syscall. Either the publisher sees
 * the flag or the subscriber's re-read sees the new T (seq_cst fence/RMW order), and a
 * sleeper not yet in the kernel is refused by the futex's own check of T: no wake is lost.
 * A count would make every publish pay a syscall until the woken subscribers get a CPU to
 * unregister (milliseconds when subscribers outnumber cores); the flag costs one wake per
 * sleep episode. A stale flag (a sleeper that timed out) costs one futex call. The asyncio
 * helper (csrc/aio.c, nslots -1) sets the flag the same way before its futex_waitv and never
 * clears it: only a waker does, so no sleeper's flag is ever taken away. */
static inline void wake_subscribers(char *t) {
    /* seq_cst fence: pairs with the sleeper's seq_cst flag store in wait_data. */
    atomic_thread_fence(SEQ_CST);
    _Atomic uint32_t *flag = A32(t, SHMIPC_TOPIC_OFF_DATA_WAITERS);
    if (atomic_load_explicit(flag, RELAXED) && atomic_exchange_explicit(flag, 0, SEQ_CST))
        shmipc_futex_wake(t, SHMIPC_TOPIC_OFF_TAIL, INT_MAX);
}

/* Wait while T's low word is `low` (a subscriber's cursor): spin up to spin_ns, then sleep
 * until a publisher's wake, the deadline or the end of a slice. OK/CHANGED when T moved (or
 * may have), TIMEDOUT, SLICE, INTERRUPTED, ERROR. */
static int wait_data(char *t, uint32_t low, int64_t deadline_ns, int64_t spin_ns) {
    _Atomic uint32_t *word = A32(t, SHMIPC_TOPIC_OFF_TAIL);
    if (atomic_load_explicit(word, ACQUIRE) != low) return SHMIPC_OK;
    spin_ns = spin_budget(spin_ns);
    if (spin_ns > 0) {
        int64_t spin_until = shmipc_monotonic_ns() + spin_ns;
        if (deadline_ns >= 0 && deadline_ns < spin_until) spin_until = deadline_ns;
        for (unsigned i = 1;; i++) {
            shmipc_cpu_relax();
            /* Acquire: pairs with the publisher's release store of T (T1). */
            if (atomic_load_explicit(word, ACQUIRE) != low) return SHMIPC_OK;
            if ((i & 15) == 0 && i >= 128) sched_yield();
            if ((i & 63) == 0 && shmipc_monotonic_ns() >= spin_until) break;
        }
    }
    /* seq_cst RMW: pairs with the publisher's seq_cst fence in wake_subscribers. */
    atomic_exchange_explicit(A32(t, SHMIPC_TOPIC_OFF_DATA_WAITERS), 1, SEQ_CST);
    if (atomic_load_explicit(word, SEQ_CST) != low) return SHMIPC_OK;
    int rc = shmipc_futex_wait(t, SHMIPC_TOPIC_OFF_TAIL, low, deadline_ns);
    if (rc == SHMIPC_CHANGED) rc = SHMIPC_OK;
    if (rc == SHMIPC_OK && atomic_load_explicit(word, ACQUIRE) == low)
        rc = SHMIPC_CHANGED; /* woken (or spurious) but the word is back: caller re-evaluates */
    return rc;
}

/* Publish one record, waiting for the lock and (policy block) for room as the deadline
 * allows, one slice at most. SHMIPC_TRY_ONLY: no waiting at all (a held lock is TIMEDOUT). */
static int publish(char *t, uint64_t cap, uint32_t max_subs, uint32_t policy, int64_t spin,
                   const char *p, size_t len, uint32_t kind, int64_t deadline) {
    if (len > UINT32_MAX || rec16(len) > cap / 2) return SHMIPC_TOOBIG;
    int64_t lock_deadline = deadline;
    if (deadline == SHMIPC_TRY_ONLY) lock_deadline = 0;
    else if (deadline == 0) lock_deadline = shmipc_monotonic_ns() + 20000000; /* held mid-call */
    for (;;) {
        int rc = shmipc_lock_acquire(t, SHMIPC_TOPIC_OFF_LOCK, lock_deadline,
                                     deadline == SHMIPC_TRY_ONLY ? 0 : spin);
        /* A lock that stays held past the deadline is a publish that timed out (queue.Full);
         * only the GIL-held first attempt (TRY_ONLY) reports it as TIMEDOUT, to retry. */
        if (rc == SHMIPC_TIMEDOUT && deadline != SHMIPC_TRY_ONLY) rc = SHMIPC_FULL;
        if (rc != SHMIPC_OK) return rc;
        uint64_t need = 0;
        rc = place(t, cap, max_subs, policy, p, len, kind, &need, 0);
        shmipc_lock_release(t, SHMIPC_TOPIC_OFF_LOCK);
        if (rc == SHMIPC_OK) {
            wake_subscribers(t);
            return rc;
        }
        if (rc != SHMIPC_FULL || deadline == 0) return rc;
        if (deadline == SHMIPC_TRY_ONLY) return SHMIPC_TIMEDOUT; /* wait without the GIL */
        rc = wait_space(t, cap, max_subs, need, deadline, spin);
        if (rc == SHMIPC_TIMEDOUT) return SHMIPC_FULL;
        if (rc != SHMIPC_OK) return rc; /* SLICE/INTERRUPTED: Python's liveness pass runs */
    }
}

int shmipc_topic_publish(char *t, uint64_t cap, uint32_t max_subs, const char *data, size_t len,
                         uint32_t kind, int64_t deadline_ns) {
    uint32_t policy = ld32(t + SHMIPC_TOPIC_OFF_POLICY);
    int64_t spin = (int64_t)ld64(t + SHMIPC_TOPIC_OFF_SPIN_NS);
    if (spin < 0 || spin > 1000000) spin = 50000;
    return publish(t, cap, max_subs, policy, spin, data, len, kind, deadline_ns);
}

/* ---- pooled records (shmipc/topic_pool.py; invariants P-T1..P-T4 there) ---------------
 * The caller holds the publisher lock (shmipc_lock_acquire at SHMIPC_TOPIC_OFF_LOCK) around
 * count_active, the pool reference adjustments and place_locked, and around retire and its
 * walk of the retired slot's unread records: so the set of ACTIVE slots a record was counted
 * for is exactly the set that will see it, and no retire runs between count and place. */

/* ACTIVE slots now (exact while the caller holds the publisher lock: only activate, under
 * the lock, makes a slot ACTIVE; only retire, under the lock, takes it out on a pooled topic). */
uint32_t shmipc_topic_count_active(char *t, uint32_t max_subs) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < max_subs; i++)
        if (W_STATE(atomic_load_explicit(A64(slot_at(t, i), SHMIPC_TOPIC_SLOT_OFF_WORD),
                                         ACQUIRE)) == SHMIPC_TOPIC_ACTIVE)
            n++;
    return n;
}

/* place() under the caller's lock, then wake the readers: SHMIPC_OK, SHMIPC_FULL (*need: the
 * cursor the slowest must reach), SHMIPC_TOOBIG or SHMIPC_CORRUPT. Writes nothing unless OK. */
int shmipc_topic_place_locked(char *t, uint64_t cap, uint32_t max_subs, const char *data,
                              size_t len, uint32_t kind, uint64_t *need) {
    if (len > UINT32_MAX || rec16(len) > cap / 2) return SHMIPC_TOOBIG;
    uint32_t policy = ld32(t + SHMIPC_TOPIC_OFF_POLICY);
    int rc = place(t, cap, max_subs, policy, data, len, kind, need, 1);
    if (rc == SHMIPC_OK)
        shmipc_wake32(t, SHMIPC_TOPIC_OFF_TAIL, SHMIPC_TOPIC_OFF_DATA_WAITERS, INT_MAX);
    return rc;
}

/* Wait, without the lock, until the slowest ACTIVE cursor reaches `need` (one slice at most). */
int shmipc_topic_wait_space(char *t, uint64_t cap, uint32_t max_subs, uint64_t need,
                            int64_t deadline_ns) {
    int64_t spin = (int64_t)ld64(t + SHMIPC_TOPIC_OFF_SPIN_NS);
    if (spin < 0 || spin > 1000000) spin = 50000;
    return wait_space(t, cap, max_subs, need, deadline_ns, spin);
}

/* Retire a slot, under the caller's publisher lock: CAS its word from `observed` (ACTIVE ->
 * FREE or EVICTED, EVICTED/CLAIMING -> FREE with to_free), then, if it was ACTIVE, mark its
 * cursor (fetch_or 1: the owner's next cursor CAS fails, so it discards what it was reading)
 * and hand back in *cursor the position from which its unread records are now the
 * retirer's. 1 if it was ACTIVE (walk [*cursor, tail)), 2 if retired but was not ACTIVE
 * (nothing to walk), 0 if the word moved on, SHMIPC_CORRUPT for a cursor that cannot be. */
int shmipc_topic_retire(char *t, uint32_t max_subs, uint32_t slot, uint64_t observed,
                        int to_free, int count_eviction, uint64_t *cursor) {
    if (slot >= max_subs || W_STATE(observed) == SHMIPC_TOPIC_FREE) return 0;
    char *s = slot_at(t, slot);
    int was_active = W_STATE(observed) == SHMIPC_TOPIC_ACTIVE;
    if (!to_free && !was_active) return 0;
    uint64_t next = to_free ? MAKE_W(0, W_GEN(observed) + 1, SHMIPC_TOPIC_FREE)
                            : (observed & ~(uint64_t)0xFF) | SHMIPC_TOPIC_EVICTED;
    uint64_t w = observed;
    /* seq_cst as in evict (T6) */
    if (!atomic_compare_exchange_strong_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_WORD), &w, next,
                                                 SEQ_CST, RELAXED))
        return 0;
    int rc = 2;
    if (was_active) {
        /* acq_rel: the owner's release CAS of its cursor (after its copy) either came first
         * (we read it and start after its record) or fails on our mark. */
        uint64_t c = atomic_fetch_or_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_CURSOR), 1,
                                              memory_order_acq_rel);
        *cursor = c & ~(uint64_t)1;
        rc = (c % 16) ? SHMIPC_CORRUPT : 1;
        if (count_eviction) atomic_fetch_add_explicit(A64(t, SHMIPC_TOPIC_OFF_EVICTIONS), 1, RELAXED);
    }
    wake_publishers(t, UINT64_MAX);
    return rc;
}

/* ---- the TopicPort type ------------------------------------------------------------------
 *
 * TopicPort(mapping, offset, cap, max_subs, policy, slot, word, cursor, expected, encode,
 * decode, deadline, slow_put, slow_get, bytes_as_is): one publisher's or one subscriber's
 * (slot >= 0) hot paths. Lifetime as the Queue's Port (csrc/fastpath.c,
 * docs/internals/lifetime.md): it holds an export of the mapping, counts the calls inside
 * (enter/leave, under the GIL) and close() refuses later calls (SHMIPC_CLOSED).
 *
 * A subscriber's state (cursor, expected, tail seen) lives in this object and changes only
 * while the GIL is held: a receive lets the GIL go only to wait, never between reading a
 * record and moving its cursor. */

static PyObject *TopicMiss;

/* Bumped in every forked child: a subscriber made before the fork belongs to its parent (its
 * slot names the parent, its cursor is the parent's), so the child's calls are refused
 * (SHMIPC_NOTOWNER) for the price of one compare, instead of a getpid() per message. */
static unsigned fork_generation;
static void forked(void) { fork_generation++; }

typedef struct {
    PyObject_HEAD
    char *t;             /* the control block; NULL once closed */
    Py_ssize_t inflight;
    uint64_t cap;
    uint32_t max_subs;
    uint32_t policy;
    int64_t spin;
    int32_t slot;        /* -1: a publisher */
    unsigned forks;      /* fork_generation when it was made */
    int bytes_as_is;
    uint64_t word;       /* the slot's ACTIVE word, as this subscriber claimed it */
    uint64_t cursor;     /* next position to read */
    uint64_t expected;   /* sequence number expected next */
    uint64_t tail_seen;
    uint64_t missed;     /* the last Lagged report's count */
    PyObject *encode, *decode, *deadline, *slow_put, *slow_get, *pooled;
    Py_buffer lease;
} TopicPort;

static inline char *enter(TopicPort *self) {
    char *t = self->t;
    if (t) self->inflight++;
    return t;
}

static void drop_lease(TopicPort *self) {
    if (self->lease.obj) PyBuffer_Release(&self->lease);
}

static inline void leave(TopicPort *self) {
    if (--self->inflight == 0 && !self->t) drop_lease(self);
}

/* (first, timeout=None) or (timeout=None): a deadline from `timeout` (deadline_ns). */
/* Parse ([obj,] timeout=None) into *first and an absolute deadline (csrc/fastcall_args.h). */
static inline int parse_args(TopicPort *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames, const shmipc_wait_sig *sig, PyObject **first,
                             int64_t *deadline) {
    return shmipc_parse_wait(sig, self->deadline, args, nargs, kwnames, first, deadline);
}

static const shmipc_wait_sig SIG_PUBLISH = {"publish", "obj", 0},
                             SIG_PUBLISH_BYTES = {"publish_bytes", "obj", 0},
                             SIG_RECEIVE = {"receive", NULL, 0},
                             SIG_RECEIVE_BYTES = {"receive_bytes", NULL, 0};

/* ---- publisher methods ---- */

static int put_buffer(TopicPort *self, char *t, const char *p, size_t n, uint32_t kind,
                      int64_t deadline) {
    int rc = SHMIPC_TIMEDOUT;
    if (n < BIG_COPY)
        rc = publish(t, self->cap, self->max_subs, self->policy, self->spin, p, n, kind,
                     SHMIPC_TRY_ONLY);
    if (rc == SHMIPC_TIMEDOUT && deadline != SHMIPC_TRY_ONLY) {
        uint64_t cap = self->cap;
        uint32_t ms = self->max_subs, pol = self->policy;
        int64_t spin = self->spin;
        Py_BEGIN_ALLOW_THREADS
        rc = publish(t, cap, ms, pol, spin, p, n, kind, deadline);
        Py_END_ALLOW_THREADS
    }
    return rc;
}

static int put_object(TopicPort *self, PyObject *data, uint32_t kind, int64_t deadline) {
    int rc;
    if (PyBytes_CheckExact(data)) {
        char *t = enter(self);
        if (!t) return SHMIPC_CLOSED;
        rc = put_buffer(self, t, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data), kind,
                        deadline);
        leave(self);
        return rc;
    }
    if (!self->t) return SHMIPC_CLOSED;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return SHMIPC_NOTBUF;
    }
    char *t = enter(self);
    rc = t ? put_buffer(self, t, view.buf, (size_t)view.len, kind, deadline) : SHMIPC_CLOSED;
    if (t) leave(self);
    PyBuffer_Release(&view);
    return rc;
}

/* put(data, kind, deadline_ns) -> status */
static PyObject *tp_put(TopicPort *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "put(data, kind, deadline_ns)");
        return NULL;
    }
    long kind = PyLong_AsLong(args[1]);
    if (kind == -1 && PyErr_Occurred()) return NULL;
    if (kind < 0 || kind > SHMIPC_REC_TYPE_MAX) {
        PyErr_SetString(PyExc_ValueError, "kind out of range");
        return NULL;
    }
    int64_t deadline;
    if (shmipc_as_deadline(args[2], &deadline)) return NULL;
    if (deadline < -1) deadline = 0;
    return PyLong_FromLong(put_object(self, args[0], (uint32_t)kind, deadline));
}

#define K_OBJ 1
#define K_BYTES 2
#define K_POOLED 3 /* a frame naming pool blocks (shmipc/topic_pool.py) */

static PyObject *publish_impl(TopicPort *self, PyObject *obj, int framed, int64_t deadline) {
    PyObject *data = obj;
    uint32_t kind = K_BYTES;
    if (framed && !(self->bytes_as_is && PyBytes_CheckExact(obj))) {
        if (self->encode == Py_None) {
            PyErr_SetString(PyExc_TypeError, "this TopicPort has no encoder");
            return NULL;
        }
        data = PyObject_CallOneArg(self->encode, obj);
        if (!data) return NULL;
        kind = K_OBJ;
    } else {
        Py_INCREF(data);
    }
    int rc = put_object(self, data, kind, deadline);
    PyObject *out;
    if (rc == SHMIPC_OK) {
        out = Py_NewRef(Py_None);
    } else {
        PyObject *argv[4] = {PyLong_FromLong(rc), data, PyLong_FromUnsignedLong(kind),
                             PyLong_FromLongLong(deadline)};
        out = NULL;
        if (argv[0] && argv[2] && argv[3]) out = PyObject_Vectorcall(self->slow_put, argv, 4, NULL);
        Py_XDECREF(argv[0]);
        Py_XDECREF(argv[2]);
        Py_XDECREF(argv[3]);
    }
    Py_DECREF(data);
    return out;
}

static PyObject *tp_publish(TopicPort *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
    PyObject *obj;
    int64_t deadline;
    if (parse_args(self, args, PyVectorcall_NARGS(nargs), kwnames, &SIG_PUBLISH, &obj, &deadline))
        return NULL;
    return publish_impl(self, obj, 1, deadline);
}

static PyObject *tp_publish_bytes(TopicPort *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames) {
    PyObject *obj;
    int64_t deadline;
    if (parse_args(self, args, PyVectorcall_NARGS(nargs), kwnames, &SIG_PUBLISH_BYTES, &obj,
                   &deadline))
        return NULL;
    return publish_impl(self, obj, 0, deadline);
}

/* ---- subscriber methods ---- */

/* The lapped path (T2): resume at O, with the sequence number its header carries, checked
 * against O again after an acquire fence. */
static int lagged(TopicPort *self, char *t) {
    char *data = data_of(t, self->max_subs);
    uint64_t cap = self->cap, mask = cap - 1;
    char *s = slot_at(t, (uint32_t)self->slot);
    for (int tries = 0; tries < 100000; tries++) {
        uint64_t o = atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_OLDEST), ACQUIRE);
        uint64_t tail = atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_TAIL), ACQUIRE);
        if (o % 16 || o > tail || tail - o > cap) {
            if (atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_OLDEST), RELAXED) != o) continue;
            return SHMIPC_CORRUPT;
        }
        uint64_t seq;
        if (o == tail)
            seq = ld64(t + SHMIPC_TOPIC_OFF_PUBLISHED);
        else
            seq = ld64(data + (o & mask) + 8);
        atomic_thread_fence(ACQUIRE);
        if (atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_OLDEST), RELAXED) != o) continue;
        /* seq(O) - E: exactly the records published after E that can no longer be read. */
        self->missed = seq >= self->expected ? seq - self->expected : 0;
        self->cursor = o;
        self->expected = seq;
        self->tail_seen = tail;
        atomic_store_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_CURSOR), o, RELEASE);
        atomic_store_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_EXPECTED), seq, RELAXED);
        atomic_fetch_add_explicit(A64(t, SHMIPC_TOPIC_OFF_LAPS), 1, RELAXED);
        atomic_fetch_add_explicit(A64(t, SHMIPC_TOPIC_OFF_MISSED), self->missed, RELAXED);
        return SHMIPC_LAGGED;
    }
    return SHMIPC_CORRUPT;
}

/* One attempt, no waiting, GIL held: SHMIPC_OK with *out (new bytes) and *kind, EMPTY,
 * LAGGED, EVICTED, CORRUPT; -1 with an exception set (out of memory). */
static int try_take(TopicPort *self, char *t, PyObject **out, uint32_t *kind) {
    char *s = slot_at(t, (uint32_t)self->slot);
    char *data = data_of(t, self->max_subs);
    uint64_t cap = self->cap, mask = cap - 1;
    if (atomic_load_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_WORD), ACQUIRE) != self->word)
        return SHMIPC_EVICTED;
    uint64_t c0 = self->cursor, c = c0, tail = self->tail_seen;
    if (c == tail) {
        /* Acquire: pairs with the publisher's release store of T (T1). */
        tail = atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_TAIL), ACQUIRE);
        self->tail_seen = tail;
        if (c == tail) return SHMIPC_EMPTY;
    }
    uint64_t idx, len, seq;
    uint32_t k;
    for (int hop = 0;; hop++) {
        if (c > tail || tail - c > cap || c % 16 || hop > 1) goto lapped_or_corrupt;
        idx = c & mask;
        len = ld32(data + idx);
        k = ld32(data + idx + 4);
        seq = ld64(data + idx + 8);
        if (k != SHMIPC_TOPIC_REC_PAD) break;
        c += cap - idx; /* the rest of the lap is padding */
        if (c == tail) goto lapped_or_corrupt;
    }
    uint64_t rec = rec16(len);
    if (len > cap / 2 || idx + rec > cap || c + rec > tail || k > SHMIPC_REC_TYPE_MAX)
        goto lapped_or_corrupt;
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len); /* no lock is held */
    if (!b) return -1;
    memcpy(PyBytes_AS_STRING(b), data + idx + SHMIPC_TOPIC_REC_HEADER, (size_t)len);
    /* Acquire fence: pairs with the publisher's release fence after its store of O, and
     * orders the copy before the checks of O and W below (T2, T6). */
    atomic_thread_fence(ACQUIRE);
    if (self->policy == SHMIPC_TOPIC_OVERWRITE &&
        atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_OLDEST), RELAXED) > c0) {
        Py_DECREF(b);
        return lagged(self, t);
    }
    if (atomic_load_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_WORD), RELAXED) != self->word) {
        Py_DECREF(b);
        return SHMIPC_EVICTED;
    }
    /* Release CAS from the cursor this subscriber last stored: publishers (T3) reuse the
     * bytes only after seeing the cursor past them. It fails only when a retire (eviction,
     * under the publisher lock) marked the cursor since: the retirer has taken over this
     * slot's unread records from c0 (and their pool references, P-T2), so the copy is
     * discarded, never returned. */
    uint64_t mine = c0;
    if (!atomic_compare_exchange_strong_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_CURSOR), &mine,
                                                 c + rec, RELEASE, RELAXED)) {
        Py_DECREF(b);
        return SHMIPC_EVICTED;
    }
    self->cursor = c + rec;
    self->expected = seq + 1;
    atomic_store_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_EXPECTED), seq + 1, RELAXED);
    if (self->policy == SHMIPC_TOPIC_BLOCK) wake_publishers(t, c + rec);
    *out = b;
    *kind = k;
    return SHMIPC_OK;
lapped_or_corrupt:
    atomic_thread_fence(ACQUIRE);
    if (atomic_load_explicit(A64(s, SHMIPC_TOPIC_SLOT_OFF_WORD), RELAXED) != self->word)
        return SHMIPC_EVICTED;
    if (atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_OLDEST), RELAXED) > c0) return lagged(self, t);
    return SHMIPC_CORRUPT;
}

/* Take the next record, waiting (without the GIL) as the deadline allows, one slice at most. */
static int take(TopicPort *self, int64_t deadline, PyObject **out, uint32_t *kind) {
    if (self->slot < 0 || self->forks != fork_generation) return SHMIPC_NOTOWNER;
    char *t = enter(self);
    if (!t) return SHMIPC_CLOSED;
    int rc;
    for (;;) {
        rc = try_take(self, t, out, kind);
        if (rc != SHMIPC_EMPTY || deadline == 0) break;
        uint32_t low = (uint32_t)self->cursor;
        int64_t spin = self->spin;
        Py_BEGIN_ALLOW_THREADS
        rc = wait_data(t, low, deadline, spin);
        Py_END_ALLOW_THREADS
        if (rc == SHMIPC_OK || rc == SHMIPC_CHANGED) continue;
        if (rc == SHMIPC_TIMEDOUT) rc = SHMIPC_EMPTY;
        break;
    }
    leave(self);
    return rc;
}

/* K_POOLED only on a topic with a pool (a pooled hook): elsewhere it is corruption. */
static inline int known_kind(TopicPort *self, uint32_t kind) {
    return kind == K_OBJ || kind == K_BYTES || (kind == K_POOLED && self->pooled && self->pooled != Py_None);
}

static PyObject *deliver(TopicPort *self, PyObject *payload, uint32_t kind, int decode) {
    if (kind == K_POOLED) {
        /* the pooled hook claims the blocks (decode) or gives their references back */
        PyObject *obj = PyObject_CallFunctionObjArgs(self->pooled, payload,
                                                     decode ? Py_True : Py_False, NULL);
        Py_DECREF(payload);
        return obj;
    }
    if (kind != K_OBJ || !decode || self->decode == Py_None) return payload;
    PyObject *obj = PyObject_CallOneArg(self->decode, payload);
    Py_DECREF(payload);
    return obj;
}

static PyObject *miss(int status, TopicPort *self) {
    PyObject *args = Py_BuildValue("(iK)", status, (unsigned long long)self->missed);
    if (args) {
        PyErr_SetObject(TopicMiss, args);
        Py_DECREF(args);
    }
    return NULL;
}

/* get(deadline_ns, decode) -> object; TopicMiss(status, missed) otherwise. */
static PyObject *tp_get(TopicPort *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "get(deadline_ns, decode)");
        return NULL;
    }
    int64_t deadline;
    if (shmipc_as_deadline(args[0], &deadline)) return NULL;
    int decode = PyObject_IsTrue(args[1]);
    if (decode < 0) return NULL;
    PyObject *payload = NULL;
    uint32_t kind = 0;
    int rc = take(self, deadline, &payload, &kind);
    if (rc == -1) return NULL;
    if (rc != SHMIPC_OK) return miss(rc, self);
    if (!known_kind(self, kind)) {
        Py_DECREF(payload);
        return miss(SHMIPC_CORRUPT, self);
    }
    return deliver(self, payload, kind, decode);
}

/* get_many(max_items, deadline_ns, decode) -> (list, status, error): at least one record
 * (waiting for it as the deadline allows; TopicMiss if none), then those already there, up
 * to max_items, each taken as get() takes one. What ended the batch early (a lap, an
 * eviction, a corrupt record: `status`; a message that failed to decode: `error`, the
 * exception) is handed back with the records taken before it, for the next call to raise:
 * nothing taken is lost with it. */
static PyObject *tp_get_many(TopicPort *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "get_many(max_items, deadline_ns, decode)");
        return NULL;
    }
    Py_ssize_t max_items = PyLong_AsSsize_t(args[0]);
    if (max_items == -1 && PyErr_Occurred()) return NULL;
    int64_t deadline;
    if (shmipc_as_deadline(args[1], &deadline)) return NULL;
    int decode = PyObject_IsTrue(args[2]);
    if (decode < 0) return NULL;
    if (max_items < 1) {
        PyErr_SetString(PyExc_ValueError, "max_items must be >= 1");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    PyObject *error = NULL;
    int status = SHMIPC_OK;
    for (Py_ssize_t i = 0; i < max_items; i++) {
        PyObject *payload = NULL;
        uint32_t kind = 0;
        int rc = take(self, i == 0 ? deadline : 0, &payload, &kind);
        if (rc == -1) {
            if (i == 0) goto fail;
            PyObject *type, *tb;
            PyErr_Fetch(&type, &error, &tb);
            PyErr_NormalizeException(&type, &error, &tb);
            if (error && tb) PyException_SetTraceback(error, tb);
            Py_XDECREF(type);
            Py_XDECREF(tb);
            break;
        }
        if (rc == SHMIPC_OK && !known_kind(self, kind)) {
            Py_DECREF(payload);
            rc = SHMIPC_CORRUPT;
        }
        if (rc != SHMIPC_OK) {
            if (i == 0) {
                Py_DECREF(out);
                return miss(rc, self);
            }
            if (rc != SHMIPC_EMPTY) status = rc;
            break;
        }
        PyObject *obj = deliver(self, payload, kind, decode);
        if (!obj) {
            if (i == 0) goto fail;
            PyObject *type, *tb;
            PyErr_Fetch(&type, &error, &tb);
            PyErr_NormalizeException(&type, &error, &tb);
            if (error && tb) PyException_SetTraceback(error, tb);
            Py_XDECREF(type);
            Py_XDECREF(tb);
            break;
        }
        int added = PyList_Append(out, obj);
        Py_DECREF(obj);
        if (added < 0) goto fail;
    }
    return Py_BuildValue("(NiN)", out, status, error ? error : Py_NewRef(Py_None));
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *receive_impl(TopicPort *self, int decode, int64_t deadline) {
    PyObject *payload = NULL;
    uint32_t kind = 0;
    int rc = take(self, deadline, &payload, &kind);
    if (rc == -1) return NULL;
    if (rc == SHMIPC_OK && known_kind(self, kind))
        return deliver(self, payload, kind, decode);
    if (rc == SHMIPC_OK) {
        Py_DECREF(payload);
        rc = SHMIPC_CORRUPT;
    }
    PyObject *argv[3] = {PyLong_FromLong(rc), PyLong_FromLongLong(deadline),
                         decode ? Py_True : Py_False};
    PyObject *out = NULL;
    if (argv[0] && argv[1]) out = PyObject_Vectorcall(self->slow_get, argv, 3, NULL);
    Py_XDECREF(argv[0]);
    Py_XDECREF(argv[1]);
    return out;
}

static PyObject *tp_receive(TopicPort *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
    int64_t deadline;
    if (parse_args(self, args, PyVectorcall_NARGS(nargs), kwnames, &SIG_RECEIVE, NULL,
                   &deadline))
        return NULL;
    return receive_impl(self, 1, deadline);
}

static PyObject *tp_receive_bytes(TopicPort *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames) {
    int64_t deadline;
    if (parse_args(self, args, PyVectorcall_NARGS(nargs), kwnames, &SIG_RECEIVE_BYTES, NULL,
                   &deadline))
        return NULL;
    return receive_impl(self, 0, deadline);
}

/* ---- the type ---- */

static PyObject *tp_close(TopicPort *self, PyObject *unused) {
    self->t = NULL;
    if (self->inflight == 0) drop_lease(self);
    Py_RETURN_NONE;
}

static PyObject *tp_owned(TopicPort *self, PyObject *unused) {
    /* False in a child forked after this port was made (see fork_generation). */
    return PyBool_FromLong(self->forks == fork_generation);
}

static PyObject *tp_lag(TopicPort *self, PyObject *unused) {
    /* Messages published and not yet received: N - E (N read now). */
    char *t = self->t;
    if (!t || self->slot < 0) return PyLong_FromLong(0);
    uint64_t n = atomic_load_explicit(A64(t, SHMIPC_TOPIC_OFF_PUBLISHED), ACQUIRE);
    return PyLong_FromUnsignedLongLong(n > self->expected ? n - self->expected : 0);
}

static int tp_init(TopicPort *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"mapping", "offset", "cap", "max_subs", "policy", "slot", "word",
                             "cursor", "expected", "encode", "decode", "deadline", "slow_put",
                             "slow_get", "bytes_as_is", "pooled", NULL};
    PyObject *mapping, *encode = Py_None, *decode = Py_None, *deadline = Py_None;
    PyObject *slow_put = Py_None, *slow_get = Py_None, *pooled = Py_None;
    Py_ssize_t offset;
    unsigned long long cap, word = 0, cursor = 0, expected = 0;
    unsigned int max_subs, policy;
    int slot = -1, bytes_as_is = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnKII|iKKKOOOOOpO", kwlist, &mapping, &offset,
                                     &cap, &max_subs, &policy, &slot, &word, &cursor, &expected,
                                     &encode, &decode, &deadline, &slow_put, &slow_get,
                                     &bytes_as_is, &pooled))
        return -1;
    if (self->t || self->lease.obj) {
        PyErr_SetString(PyExc_TypeError, "a TopicPort is initialised once");
        return -1;
    }
    if (cap < 256 || (cap & (cap - 1)) || cap > (1ULL << 40) || max_subs < 1 ||
        max_subs > 65536 || policy > 1 || slot >= (int)max_subs || cursor % 16) {
        PyErr_SetString(PyExc_ValueError, "TopicPort: bad capacity, table size, policy or slot");
        return -1;
    }
    PyObject *callables[] = {encode, decode, deadline, slow_put, slow_get, pooled};
    for (size_t i = 0; i < 6; i++) {
        if (callables[i] != Py_None && !PyCallable_Check(callables[i])) {
            PyErr_SetString(PyExc_TypeError, "TopicPort's callables must be callable or None");
            return -1;
        }
    }
    Py_buffer lease;
    if (PyObject_GetBuffer(mapping, &lease, PyBUF_WRITABLE) < 0) return -1;
    unsigned long long need = (unsigned long long)SHMIPC_TOPIC_HEADER_SIZE +
                              (unsigned long long)max_subs * SHMIPC_TOPIC_SLOT_SIZE + cap;
    if (offset < 0 || offset % 64 || (unsigned long long)lease.len < (unsigned long long)offset ||
        (unsigned long long)lease.len - (unsigned long long)offset < need) {
        PyBuffer_Release(&lease);
        PyErr_SetString(PyExc_ValueError, "TopicPort's topic does not fit its mapping");
        return -1;
    }
    self->lease = lease;
    self->t = (char *)lease.buf + offset;
    self->cap = cap;
    self->max_subs = max_subs;
    self->policy = policy;
    self->spin = 50000;
    uint64_t spin = ld64(self->t + SHMIPC_TOPIC_OFF_SPIN_NS);
    if (spin <= 1000000) self->spin = (int64_t)spin;
    self->slot = slot;
    self->forks = fork_generation;
    self->word = word;
    self->cursor = self->tail_seen = cursor;
    self->expected = expected;
    self->bytes_as_is = bytes_as_is;
    Py_XSETREF(self->encode, Py_NewRef(encode));
    Py_XSETREF(self->decode, Py_NewRef(decode));
    Py_XSETREF(self->deadline, Py_NewRef(deadline));
    Py_XSETREF(self->slow_put, Py_NewRef(slow_put));
    Py_XSETREF(self->slow_get, Py_NewRef(slow_get));
    Py_XSETREF(self->pooled, Py_NewRef(pooled));
    return 0;
}

static int tp_traverse(TopicPort *self, visitproc visit, void *arg) {
    Py_VISIT(self->encode);
    Py_VISIT(self->decode);
    Py_VISIT(self->deadline);
    Py_VISIT(self->slow_put);
    Py_VISIT(self->slow_get);
    Py_VISIT(self->pooled);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int tp_clear(TopicPort *self) {
    Py_CLEAR(self->encode);
    Py_CLEAR(self->decode);
    Py_CLEAR(self->deadline);
    Py_CLEAR(self->slow_put);
    Py_CLEAR(self->slow_get);
    Py_CLEAR(self->pooled);
    return 0;
}

static void tp_dealloc(TopicPort *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    tp_clear(self);
    self->t = NULL;
    drop_lease(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef tp_methods[] = {
    {"put", (PyCFunction)(void (*)(void))tp_put, METH_FASTCALL,
     "put(data, kind, deadline_ns) -> status"},
    {"publish", (PyCFunction)(void (*)(void))tp_publish, METH_FASTCALL | METH_KEYWORDS,
     "publish($self, /, obj, timeout=None)\n--\n\nEncode and publish obj in one call."},
    {"publish_bytes", (PyCFunction)(void (*)(void))tp_publish_bytes,
     METH_FASTCALL | METH_KEYWORDS,
     "publish_bytes($self, /, obj, timeout=None)\n--\n\nPublish a bytes-like payload as is."},
    {"get", (PyCFunction)(void (*)(void))tp_get, METH_FASTCALL,
     "get(deadline_ns, decode) -> object; TopicMiss(status, missed) otherwise"},
    {"get_many", (PyCFunction)(void (*)(void))tp_get_many, METH_FASTCALL,
     "get_many(max_items, deadline_ns, decode) -> (list, status, error)"},
    {"receive", (PyCFunction)(void (*)(void))tp_receive, METH_FASTCALL | METH_KEYWORDS,
     "receive($self, /, timeout=None)\n--\n\nThe next message, decoded, in one call."},
    {"receive_bytes", (PyCFunction)(void (*)(void))tp_receive_bytes,
     METH_FASTCALL | METH_KEYWORDS,
     "receive_bytes($self, /, timeout=None)\n--\n\nThe next message's payload, undecoded."},
    {"lag", (PyCFunction)tp_lag, METH_NOARGS, "messages published and not yet received"},
    {"owned", (PyCFunction)tp_owned, METH_NOARGS,
     "False in a process forked after this port was made"},
    {"close", (PyCFunction)tp_close, METH_NOARGS,
     "Refuse every later call; let go of the mapping once no call is inside it."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef tp_members[] = {
    {"inflight", T_PYSSIZET, offsetof(TopicPort, inflight), READONLY, "calls inside now"},
    {"cursor", T_ULONGLONG, offsetof(TopicPort, cursor), READONLY, "next position to read"},
    {"expected", T_ULONGLONG, offsetof(TopicPort, expected), READONLY,
     "sequence number expected next"},
    {"missed", T_ULONGLONG, offsetof(TopicPort, missed), READONLY,
     "messages missed at the last Lagged report"},
    {"slot", T_INT, offsetof(TopicPort, slot), READONLY, "subscriber slot (-1: publisher)"},
    {"word", T_ULONGLONG, offsetof(TopicPort, word), READONLY, "the slot's ACTIVE word"},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot tp_slots[] = {
    {Py_tp_doc, "A topic's hot paths for one publisher or one subscriber (csrc/topic.c)."},
    {Py_tp_members, tp_members},
    {Py_tp_init, tp_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_methods, tp_methods},
    {Py_tp_traverse, tp_traverse},
    {Py_tp_clear, tp_clear},
    {Py_tp_dealloc, tp_dealloc},
    {0, NULL},
};

static PyType_Spec tp_spec = {
    .name = "shmipc._native_ext.TopicPort",
    .basicsize = sizeof(TopicPort),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = tp_slots,
};

int shmipc_topic_install(void) {
    static int installed = 0;
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc = 0;
    if (!installed) {
        pthread_atfork(NULL, NULL, forked);
        PyObject *module = PyImport_AddModule("shmipc._native_ext");
        PyObject *type = module ? PyType_FromSpec(&tp_spec) : NULL;
        TopicMiss = type ? PyErr_NewException("shmipc._native_ext.TopicMiss", NULL, NULL) : NULL;
        if (TopicMiss && PyModule_AddObjectRef(module, "TopicPort", type) == 0 &&
            PyModule_AddObjectRef(module, "TopicMiss", TopicMiss) == 0) {
            installed = 1;
        } else {
            PyErr_Clear();
            rc = -1;
        }
        Py_XDECREF(type);
    }
    PyGILState_Release(gil);
    return rc;
}
