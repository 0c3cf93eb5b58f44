/* shmipc byte rings: the fused hot paths (claim + copy + publish + wake in one call).
 *
 * Design (docs/internals/ring.md has the full protocol and the recovery rules):
 * - An SPSC core: the producer writes records at `tail` and publishes them by a release store
 *   of the new tail; the consumer reads them after an acquire load of the tail and frees them
 *   by a release store of the new head. A record is visible only once complete, so a writer
 *   that dies mid-write leaves nothing half-written behind.
 * - Many producers and many consumers take turns through one robust lock per side (see
 *   shmipc_lock_* in native.c: shmipc's own futex lock whose word names the holder thread).
 *   A dead holder's lock is taken over once Python has seen, between wait slices, that the
 *   holder no longer lives (shmipc_ring_steal). Since nothing is published before the
 *   release store, recovery is only bookkeeping: the dead producer's claim is counted
 *   abandoned, a dead consumer's unreleased record is read again by the next consumer.
 * - Waiters spin briefly, then register in a sleeper count and sleep on the low 32 bits of
 *   the position they wait on; the other side issues a futex wake only if that count is set.
 * - Every position and length read from shared memory is checked before use, against `cap`
 *   that Python validated when it attached: a corrupt ring yields SHMIPC_CORRUPT, never an
 *   access outside the mapping.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "shmipc.h"
#include "identity.h"
#include "ring_internal.h"


#define U64(ring, off) ((_Atomic uint64_t *)((ring) + (off)))
#define U32(ring, off) ((_Atomic uint32_t *)((ring) + (off)))
#define LOAD(p) atomic_load_explicit((p), memory_order_relaxed)
#define LOAD_ACQ(p) atomic_load_explicit((p), memory_order_acquire)
#define STORE(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define STORE_REL(p, v) atomic_store_explicit((p), (v), memory_order_release)
#define NO_CLAIM UINT64_MAX
#define MAX_SPIN_NS 1000000 /* a corrupt spin setting must not turn waits into busy loops */

static inline int64_t spin_ns(char *ring) {
    uint64_t s = LOAD(U64(ring, SHMIPC_RING_OFF_SPIN_NS));
    return s > MAX_SPIN_NS ? MAX_SPIN_NS : (int64_t)s;
}

static inline void bump(char *ring, size_t off, uint64_t n) {
    /* Statistics on the side's own line, written only under that side's lock. */
    _Atomic uint64_t *p = U64(ring, off);
    STORE(p, LOAD(p) + n);
}

static inline void write_header(char *data, uint64_t idx, uint32_t len, uint32_t type) {
    uint64_t h = (uint64_t)len | ((uint64_t)type << 32);
    memcpy(data + idx, &h, sizeof h);
}

static inline uint64_t read_header(const char *data, uint64_t idx) {
    uint64_t h;
    memcpy(&h, data + idx, sizeof h);
    return h;
}

/* ---- side locks ------------------------------------------------------------------------- */

/* Called with a side's lock just taken over from a dead holder. The holder wrote what its
 * counters would become (PEND_*) before its publishing store, so the recoverer can tell
 * whether that store happened and finish the bookkeeping: counters stay exact whatever
 * instant the holder died at (a bounded queue's message count depends on them). */
static void recover_producer(char *ring, uint64_t cap, uint64_t observed) {
    /* First the dead holder's claim registration, or a dead revoker's unfinished revocation
     * (csrc/claim.c: recover_unregister, recover_finish), then the bookkeeping. */
    shmipc_claim_recover(ring, cap, observed);
    _Atomic uint64_t *claim = U64(ring, SHMIPC_RING_OFF_P_CLAIM);
    uint64_t c = LOAD(claim);
    if (c == NO_CLAIM) return;
    if (c == LOAD(U64(ring, SHMIPC_RING_OFF_P_TAIL))) {
        bump(ring, SHMIPC_RING_OFF_P_ABANDONED, 1); /* never published */
    } else {
        STORE(U64(ring, SHMIPC_RING_OFF_P_MSGS), LOAD(U64(ring, SHMIPC_RING_OFF_P_PEND_MSGS)));
        STORE(U64(ring, SHMIPC_RING_OFF_P_BYTES), LOAD(U64(ring, SHMIPC_RING_OFF_P_PEND_BYTES)));
    }
    STORE(claim, NO_CLAIM);
}

static void recover_consumer(char *ring) {
    bump(ring, SHMIPC_RING_OFF_C_RECOVERED, 1);
    STORE(U64(ring, SHMIPC_RING_OFF_C_PEEK), 0);
    if (LOAD(U64(ring, SHMIPC_RING_OFF_C_HEAD)) == LOAD(U64(ring, SHMIPC_RING_OFF_C_PEND_END))) {
        STORE(U64(ring, SHMIPC_RING_OFF_C_MSGS), LOAD(U64(ring, SHMIPC_RING_OFF_C_PEND_MSGS)));
        STORE(U64(ring, SHMIPC_RING_OFF_C_BYTES), LOAD(U64(ring, SHMIPC_RING_OFF_C_PEND_BYTES)));
    }
}

#define SIDE_LOCK(producer) ((producer) ? SHMIPC_RING_OFF_P_LOCK : SHMIPC_RING_OFF_C_LOCK)
/* Each side lock's sleepers register in a registry of the control block (identity slots), so
 * that a waiter killed asleep on the lock can be taken back. */
#define SIDE_REG(producer) \
    ((producer) ? SHMIPC_RING_OFF_P_LOCK_SLEEPERS : SHMIPC_RING_OFF_C_LOCK_SLEEPERS)
#define SIDE_SLOTS(producer) ((producer) ? SHMIPC_RING_P_LOCK_SLOTS : SHMIPC_RING_C_LOCK_SLOTS)

static inline int lock_release(char *ring, int producer) {
    return shmipc_lock_release_reg(ring, SIDE_LOCK(producer), SIDE_REG(producer),
                                   SIDE_SLOTS(producer));
}

/* SPSC rings (SHMIPC_RING_SPSC): each side's lock is a role. The first thread to use a
 * side takes its lock and keeps it between calls, so a message costs no lock traffic; any
 * other thread is refused (SHMIPC_BUSY) while the holder lives, and takes the role over once
 * it has died (shmipc_ring_steal, as for any dead holder). shmipc_ring_leave gives roles up. */
static inline int is_spsc(char *ring) {
    return (LOAD(U32(ring, SHMIPC_RING_OFF_FLAGS)) & SHMIPC_RING_SPSC) != 0;
}

/* Whether this thread is between reserve and commit (peek and release) on that side. */
static inline int side_pending(char *ring, int producer) {
    return producer ? LOAD(U64(ring, SHMIPC_RING_OFF_P_CLAIM)) != NO_CLAIM
                    : LOAD(U64(ring, SHMIPC_RING_OFF_C_PEEK)) != 0;
}

/* Whether a side's lock is held for as long as its holder runs Python code: a reservation
 * (the parked word) or a peeked record. A non-blocking call does not wait for such a holder. */
static inline int side_held_long(char *ring, int producer) {
    if (producer) return (LOAD(U64(ring, SIDE_LOCK(1))) & SHMIPC_LOCK_PARKED) != 0;
    return LOAD(U64(ring, SHMIPC_RING_OFF_C_PEEK)) != 0;
}

/* How long a non-blocking call waits for a side lock at a time before it looks again whether
 * the holder went on to hold it long (side_held_long). */
#define NOWAIT_STEP_NS 1000000

/* Take a side's lock (spinning first, then sleeping for at most one slice). A dead holder's
 * lock is taken over from Python (shmipc_ring_steal) between slices. A non-blocking call
 * (deadline 0) waits too: holders mid-call keep the lock for a bounded, short time, and
 * only a full or empty ring may make such a call fail; it gives up (SHMIPC_TIMEDOUT) on a
 * holder that keeps the side while running Python code (a reservation or a peek), or that
 * keeps it for a whole slice.
 * SHMIPC_TRY_ONLY waits for nothing. */
static inline int side_lock(char *ring, int producer, int64_t deadline_ns) {
    if (is_spsc(ring)) {
        if (LOAD(U64(ring, SIDE_LOCK(producer))) == shmipc_identity())
            return side_pending(ring, producer) ? SHMIPC_DEADLOCK : SHMIPC_OK;
        int rc = shmipc_lock_try(ring, SIDE_LOCK(producer));
        return rc == SHMIPC_TIMEDOUT ? SHMIPC_BUSY : rc;
    }
    int rc = shmipc_lock_try(ring, SIDE_LOCK(producer));
    if (rc != SHMIPC_TIMEDOUT || deadline_ns == SHMIPC_TRY_ONLY) return rc;
    if (deadline_ns != 0)
        return shmipc_lock_acquire_reg(ring, SIDE_LOCK(producer), SIDE_REG(producer),
                                       SIDE_SLOTS(producer), deadline_ns, spin_ns(ring));
    int64_t slice_end = shmipc_monotonic_ns() + SHMIPC_SLICE_NS;
    for (;;) {
        if (side_held_long(ring, producer)) return SHMIPC_TIMEDOUT;
        int64_t now = shmipc_monotonic_ns();
        /* A holder mid-call that keeps the lock a whole slice is stopped, dead (Python takes
         * its lock over, then retries) or a scribble: the call ends as if on a full ring. */
        if (now >= slice_end) return SHMIPC_TIMEDOUT;
        rc = shmipc_lock_acquire_reg(ring, SIDE_LOCK(producer), SIDE_REG(producer),
                                     SIDE_SLOTS(producer), now + NOWAIT_STEP_NS, spin_ns(ring));
        if (rc != SHMIPC_TIMEDOUT) return rc;
    }
}

static inline void side_unlock(char *ring, int producer) {
    if (is_spsc(ring)) return; /* the role stays with this thread */
    lock_release(ring, producer);
}

void shmipc_ri_unlock(char *ring, int producer) { side_unlock(ring, producer); }

int shmipc_ring_leave(char *ring) {
    if (!is_spsc(ring)) return 0;
    int left = 0;
    for (int producer = 0; producer < 2; producer++) {
        if (LOAD(U64(ring, SIDE_LOCK(producer))) == shmipc_identity() &&
            !side_pending(ring, producer) && lock_release(ring, producer) == SHMIPC_OK)
            left++;
    }
    return left;
}

/* forward: defined below */
static inline void wake_producers(char *ring);
static inline void wake_consumers(char *ring);

int shmipc_ring_steal(char *ring, uint64_t cap, int producer, uint64_t observed) {
    if (shmipc_lock_steal(ring, SIDE_LOCK(producer), observed) != SHMIPC_OWNERDEAD) return 0;
    if (producer)
        recover_producer(ring, cap, observed);
    else
        recover_consumer(ring);
    lock_release(ring, producer); /* free, also on an SPSC ring: the role goes to whoever */
    if (!producer) wake_producers(ring); /* recovery may have counted messages out */
    return 1;                            /* uses that side next */
}


/* Wake sleepers of one side's registry (a dead sleeper's registration is reaped after a
 * bounded number of wakes that found nobody: shmipc_wake32_reg). */
static void wake_side(char *ring, size_t word_off, size_t reg_off, size_t stat_off) {
    if (shmipc_wake32_reg(ring, word_off, reg_off, SHMIPC_RING_SLEEPER_SLOTS, 0x7fffffff) > 0)
        atomic_fetch_add_explicit(U64(ring, stat_off), 1, memory_order_relaxed);
}

/* Wake the other side if anyone sleeps there (the check is the whole cost otherwise). */
static inline void wake_consumers(char *ring) {
    wake_side(ring, SHMIPC_RING_OFF_P_TAIL, SHMIPC_RING_OFF_DATA_WAITERS,
              SHMIPC_RING_OFF_P_WAKES);
}

/* Room was freed (after the stores that free it): bump the room sequence producers sleep
 * on, and wake them if `wake` and any sleeps. Release (part of the seq_cst RMW): a producer
 * whose acquire load of the sequence sees the bump sees the freed room (the head, the
 * messages out, the quarantine's end). The bump and the load of the sleeper count are both
 * seq_cst, as are the sleeper's registration and its re-check of the sequence
 * (shmipc_wait_while32_reg): either the sleeper sees the new sequence or we see it
 * registered (a seq_cst RMW is a full barrier, so no separate fence is paid per release). */
static inline void room_freed(char *ring, int wake) {
    atomic_fetch_add_explicit(U32(ring, SHMIPC_RING_OFF_SPACE_SEQ), 1, memory_order_seq_cst);
    if (wake && atomic_load_explicit(U32(ring, SHMIPC_RING_OFF_SPACE_WAITERS),
                                     memory_order_seq_cst))
        wake_side(ring, SHMIPC_RING_OFF_SPACE_SEQ, SHMIPC_RING_OFF_SPACE_WAITERS,
                  SHMIPC_RING_OFF_C_WAKES);
}

static inline void wake_producers(char *ring) { room_freed(ring, 1); }

void shmipc_ri_wake(char *ring, int producers) {
    if (producers)
        wake_producers(ring);
    else
        wake_consumers(ring);
}

/* A wait slept out a whole slice although what it waited for had happened: a lost wake-up. */
static inline void count_missed_wake(char *ring) {
    atomic_fetch_add_explicit(U64(ring, SHMIPC_RING_OFF_MISSED_WAKES), 1, memory_order_relaxed);
}

/* Deadlines that never wait for room or data. */
static inline int no_wait(int64_t deadline_ns) {
    return deadline_ns == 0 || deadline_ns == SHMIPC_TRY_ONLY;
}

/* The CPU this thread runs on, plus 1; 0 when it cannot be told. glibc reads it from the
 * thread's rseq area (or the vDSO): no system call. */
static inline uint32_t cpu_tag(void) {
    int cpu = sched_getcpu();
    return cpu < 0 ? 0 : (uint32_t)cpu + 1;
}

/* Wait (no lock held) while the low word at `off` still reads `seen`. Returns SHMIPC_OK to
 * retry, or the status to hand back to Python.
 *
 * A consumer whose publisher last ran on this very CPU does not spin: whatever it waits for
 * needs this CPU, and spinning (even with the yields of spin_while) only delays it. That is
 * the usual state of a request/reply pair, which the scheduler tends to keep on one CPU: on
 * the 2-core development VM the spin cost such a pair tens of microseconds a round trip
 * (docs/performance.md, session 11). The CPU word is a hint (stale after a migration, 0 from
 * a process that never wrote it): it only ever chooses between spinning and sleeping. */
static int wait_position(char *ring, size_t off, size_t waiters_off, uint64_t seen,
                         int64_t deadline_ns, int full) {
    if (no_wait(deadline_ns)) return full ? SHMIPC_FULL : SHMIPC_EMPTY;
    int64_t spin = spin_ns(ring);
    if (!full && spin > 0) {
        uint32_t theirs = LOAD(U32(ring, SHMIPC_RING_OFF_P_CPU));
        if (theirs != 0 && theirs == cpu_tag()) spin = 0;
    }
    int rc = shmipc_wait_while32_reg(ring, off, (uint32_t)seen, waiters_off,
                                     SHMIPC_RING_SLEEPER_SLOTS, deadline_ns, spin);
    switch (rc) {
    case SHMIPC_OK:
    case SHMIPC_CHANGED: return SHMIPC_OK;
    /* A deadline that passed gets one more look: the caller retries with deadline 0. */
    case SHMIPC_TIMEDOUT: return SHMIPC_TIMEDOUT;
    default: return rc; /* SLICE, INTERRUPTED, ERROR: back to Python, which retries */
    }
}

/* Whether a call with this deadline will wait (for the wait statistics). */
static inline int may_wait(int64_t deadline_ns) {
    return deadline_ns == -1 || (deadline_ns > 0 && deadline_ns > shmipc_monotonic_ns());
}

/* After a wait came back: whether the retry loop should stop and hand `rc` to Python. A wait
 * that returned at once (the word had changed) still counts against the deadline and the
 * slice, or a ring whose word keeps changing could keep a caller past both. */
static inline int wait_over(int64_t deadline_ns, int64_t slice_end, int *rc) {
    int64_t now = shmipc_monotonic_ns();
    if (deadline_ns >= 0 && now >= deadline_ns) {
        *rc = SHMIPC_TIMEDOUT;
        return 1;
    }
    if (now >= slice_end) {
        *rc = SHMIPC_SLICE;
        return 1;
    }
    return 0;
}

/* ---- init ------------------------------------------------------------------------------- */

int shmipc_ring_init(char *ring, uint64_t cap, uint64_t max_count, uint64_t spin,
                     uint32_t flags, uint64_t liveness_ns) {
    if (cap < 64 || (cap & (cap - 1))) return SHMIPC_ERROR;
    memset(ring, 0, SHMIPC_RING_HEADER_SIZE);
    STORE(U32(ring, SHMIPC_RING_OFF_VERSION), SHMIPC_RING_VERSION);
    STORE(U64(ring, SHMIPC_RING_OFF_CAPACITY), cap);
    STORE(U64(ring, SHMIPC_RING_OFF_MAX_COUNT), max_count);
    STORE(U64(ring, SHMIPC_RING_OFF_SPIN_NS), spin);
    STORE(U32(ring, SHMIPC_RING_OFF_FLAGS), flags);
    STORE(U64(ring, SHMIPC_RING_OFF_LIVENESS_NS), liveness_ns);
    STORE(U64(ring, SHMIPC_RING_OFF_P_CLAIM), NO_CLAIM);
    /* Release: pairs with the acquire load of the magic when Python attaches. */
    STORE_REL(U32(ring, SHMIPC_RING_OFF_MAGIC), SHMIPC_RING_MAGIC);
    return SHMIPC_OK;
}

/* ---- producer side ---------------------------------------------------------------------- */

/* With the producer lock held: find room for a record of `rec` bytes at position t (the
 * tail, or the end of a batch not yet published). Returns SHMIPC_OK with *pad set,
 * SHMIPC_FULL if there is no room now (*head_seen says what head to wait on), or
 * SHMIPC_CORRUPT. */
int shmipc_ri_find_room(char *ring, uint64_t cap, uint64_t t, uint64_t rec, uint64_t *pad,
                     uint64_t *head_seen) {
    if (t & 7) return SHMIPC_CORRUPT;
    uint64_t idx = t & (cap - 1);
    uint64_t p = (idx + rec > cap) ? cap - idx : 0; /* a record never straddles the end */
    uint64_t need = p + rec;
    _Atomic uint64_t *hc = U64(ring, SHMIPC_RING_OFF_P_HEAD_CACHE);
    uint64_t h = LOAD(hc);
    if (t - h + need > cap) {
        /* Acquire: pairs with the consumer's release store of the head, so the bytes it
         * freed are no longer being read when we overwrite them. */
        h = LOAD_ACQ(U64(ring, SHMIPC_RING_OFF_C_HEAD));
        if ((h & 7) || t - h > cap) return SHMIPC_CORRUPT;
        STORE(hc, h);
        if (t - h + need > cap) {
            *head_seen = h;
            return SHMIPC_FULL;
        }
    }
    /* A revoked reservation's space is quarantined (csrc/claim.c): the ring ends one
     * capacity past its start until the quarantine ends. */
    int qrc = shmipc_claim_room(ring, cap, t, need);
    if (qrc != SHMIPC_OK) {
        *head_seen = LOAD_ACQ(U64(ring, SHMIPC_RING_OFF_C_HEAD));
        return qrc;
    }
    uint64_t max_count = LOAD(U64(ring, SHMIPC_RING_OFF_MAX_COUNT));
    if (max_count) {
        uint64_t in = LOAD(U64(ring, SHMIPC_RING_OFF_P_MSGS));
        _Atomic uint64_t *oc = U64(ring, SHMIPC_RING_OFF_P_OUT_CACHE);
        if (in - LOAD(oc) >= max_count) {
            STORE(oc, LOAD_ACQ(U64(ring, SHMIPC_RING_OFF_C_MSGS)));
            if (LOAD(oc) > in) return SHMIPC_CORRUPT; /* more out than in: scribbled counters */
            if (in - LOAD(oc) >= max_count) {
                /* Every release bumps the room sequence, which the waiter sleeps on. */
                *head_seen = LOAD_ACQ(U64(ring, SHMIPC_RING_OFF_C_HEAD));
                return SHMIPC_FULL;
            }
        }
    }
    *pad = p;
    return SHMIPC_OK;
}

/* Lock the producer side and find room, waiting as the deadline allows. On SHMIPC_OK the
 * lock is held; on any other status it is not. */
int shmipc_ri_claim(char *ring, uint64_t cap, uint64_t rec, int64_t deadline_ns, uint64_t *tail,
                 uint64_t *pad) {
    int64_t slice_end = 0;
    for (;;) {
        int rc = side_lock(ring, 1, deadline_ns);
        if (rc == SHMIPC_TIMEDOUT && deadline_ns != SHMIPC_TRY_ONLY) return SHMIPC_FULL;
        if (rc != SHMIPC_OK) return rc;
        uint64_t head_seen = 0;
        uint32_t seq = 0;
        *tail = LOAD(U64(ring, SHMIPC_RING_OFF_P_TAIL));
        rc = shmipc_ri_find_room(ring, cap, *tail, rec, pad, &head_seen);
        if (rc == SHMIPC_FULL && !no_wait(deadline_ns)) {
            /* About to wait: read the room sequence, then look again. Acquire: pairs with
             * the release of room_freed, so room freed before the bump we read is seen by
             * this second look, and room freed after it changes the sequence we sleep on. */
            seq = LOAD_ACQ(U32(ring, SHMIPC_RING_OFF_SPACE_SEQ));
            rc = shmipc_ri_find_room(ring, cap, *tail, rec, pad, &head_seen);
        }
        if (rc == SHMIPC_OK) {
            STORE(U64(ring, SHMIPC_RING_OFF_P_CLAIM), *tail); /* for recover_producer */
            return rc;
        }
        /* Count waits that may block; a non-blocking put that finds no room is not one. */
        if (rc == SHMIPC_FULL && may_wait(deadline_ns)) bump(ring, SHMIPC_RING_OFF_P_WAITS, 1);
        side_unlock(ring, 1);
        if (rc != SHMIPC_FULL) return rc;
        if (!slice_end) slice_end = shmipc_monotonic_ns() + SHMIPC_SLICE_NS;
        rc = wait_position(ring, SHMIPC_RING_OFF_SPACE_SEQ, SHMIPC_RING_OFF_SPACE_WAITERS, seq,
                           deadline_ns, 1);
        if (rc == SHMIPC_SLICE && LOAD_ACQ(U32(ring, SHMIPC_RING_OFF_SPACE_SEQ)) != seq) {
            /* Room was freed while we slept and nobody woke us. Not a lost wake-up if a
             * byte-limited ring is still over half full: its consumers defer the wake until
             * it drains to half (shmipc_ri_retire). */
            uint64_t used = LOAD(U64(ring, SHMIPC_RING_OFF_P_TAIL)) -
                            LOAD_ACQ(U64(ring, SHMIPC_RING_OFF_C_HEAD));
            if (LOAD(U64(ring, SHMIPC_RING_OFF_MAX_COUNT)) || used <= cap / 2)
                count_missed_wake(ring);
        }
        if (rc == SHMIPC_OK) wait_over(deadline_ns, slice_end, &rc);
        if (rc == SHMIPC_TIMEDOUT) deadline_ns = 0; /* one last non-blocking try */
        else if (rc != SHMIPC_OK) return rc;
    }
}

/* Write the padding record (if any) and the record header; returns the payload's index. */
uint64_t shmipc_ri_place(char *ring, uint64_t cap, uint64_t t, uint64_t pad, size_t len,
                             uint32_t type) {
    char *data = DATA(ring);
    uint64_t idx = t & (cap - 1);
    if (pad) {
        write_header(data, idx, (uint32_t)(pad - SHMIPC_REC_HEADER), SHMIPC_REC_PAD);
        idx = 0;
    }
    write_header(data, idx, (uint32_t)len, type);
    return idx + SHMIPC_REC_HEADER;
}

/* Publish records ending at `end`, then let go of the producer side. */
void shmipc_ri_publish(char *ring, uint64_t end, uint64_t msgs, uint64_t bytes) {
    uint64_t in = LOAD(U64(ring, SHMIPC_RING_OFF_P_MSGS)) + msgs;
    uint64_t in_bytes = LOAD(U64(ring, SHMIPC_RING_OFF_P_BYTES)) + bytes;
    STORE(U64(ring, SHMIPC_RING_OFF_P_PEND_MSGS), in); /* for recover_producer */
    STORE(U64(ring, SHMIPC_RING_OFF_P_PEND_BYTES), in_bytes);
    /* Release: pairs with the consumers' acquire load of the tail; every byte of the records
     * below `end` is visible before the tail that makes them readable. */
    STORE_REL(U64(ring, SHMIPC_RING_OFF_P_TAIL), end);
    STORE(U64(ring, SHMIPC_RING_OFF_P_MSGS), in);
    STORE(U64(ring, SHMIPC_RING_OFF_P_BYTES), in_bytes);
    STORE(U64(ring, SHMIPC_RING_OFF_P_CLAIM), NO_CLAIM);
    STORE(U32(ring, SHMIPC_RING_OFF_P_CPU), cpu_tag()); /* the waiters' hint (wait_position) */
    side_unlock(ring, 1);
    wake_consumers(ring);
}

int shmipc_ring_put(char *ring, uint64_t cap, const char *data, size_t len, uint32_t type,
                    int64_t deadline_ns) {
    uint64_t rec = rec_size(len);
    if (len > UINT32_MAX || rec > cap / 2) return SHMIPC_TOOBIG;
    uint64_t t, pad;
    int rc = shmipc_ri_claim(ring, cap, rec, deadline_ns, &t, &pad);
    if (rc != SHMIPC_OK) return rc;
    uint64_t at = shmipc_ri_place(ring, cap, t, pad, len, type);
    memcpy(DATA(ring) + at, data, len);
    shmipc_ri_publish(ring, t + pad + rec, 1, len);
    return SHMIPC_OK;
}

int shmipc_ri_batch_room(char *ring, uint64_t cap, uint64_t t, uint64_t len, size_t i,
                         uint64_t *pad) {
    uint64_t rec = rec_size(len), head_seen;
    if (len > UINT32_MAX || rec > cap / 2) return SHMIPC_TOOBIG;
    int rc = shmipc_ri_find_room(ring, cap, t, rec, pad, &head_seen);
    if (rc != SHMIPC_OK) return rc;
    /* find_room counts messages by P_MSGS, which lags the batch: recheck the limit. */
    uint64_t max_count = LOAD(U64(ring, SHMIPC_RING_OFF_MAX_COUNT));
    if (max_count && LOAD(U64(ring, SHMIPC_RING_OFF_P_MSGS)) + i -
                         LOAD(U64(ring, SHMIPC_RING_OFF_P_OUT_CACHE)) >= max_count)
        return SHMIPC_FULL;
    return SHMIPC_OK;
}

int64_t shmipc_ring_put_many(char *ring, uint64_t cap, const char *src, size_t *lens,
                             size_t n, uint32_t type, int64_t deadline_ns) {
    if (n == 0) return 0;
    uint64_t rec = rec_size(lens[0]);
    if (lens[0] > UINT32_MAX || rec > cap / 2) return -SHMIPC_TOOBIG;
    uint64_t t, pad;
    int rc = shmipc_ri_claim(ring, cap, rec, deadline_ns, &t, &pad);
    if (rc != SHMIPC_OK) return -rc;
    uint64_t bytes = 0;
    size_t i = 0;
    for (;;) {
        uint64_t at = shmipc_ri_place(ring, cap, t, pad, lens[i], type);
        memcpy(DATA(ring) + at, src, lens[i]);
        src += lens[i];
        t += pad + rec; /* not published yet: the tail moves once, after the whole batch */
        bytes += lens[i];
        if (++i == n) break;
        if (shmipc_ri_batch_room(ring, cap, t, lens[i], i, &pad) != SHMIPC_OK) break;
        rec = rec_size(lens[i]);
    }
    shmipc_ri_publish(ring, t, i, bytes);
    return (int64_t)i;
}

int64_t shmipc_ring_reserve(char *ring, uint64_t cap, size_t len, uint32_t type,
                            int64_t deadline_ns) {
    uint64_t rec = rec_size(len);
    if (len > UINT32_MAX || rec > cap / 2) return -SHMIPC_TOOBIG;
    uint64_t t, pad;
    int rc = shmipc_ri_claim(ring, cap, rec, deadline_ns, &t, &pad);
    if (rc != SHMIPC_OK) return -rc;
    uint64_t at = shmipc_ri_place(ring, cap, t, pad, len, type);
    /* From here until commit/abort this thread runs Python code: register and park, so
     * that it may be revoked if it stops (csrc/claim.c). */
    shmipc_claim_park(ring, t, t + pad + rec);
    return (int64_t)at;
}

/* Take back the parked lock at commit/abort (csrc/claim.c): SHMIPC_REVOKED if the
 * reservation was revoked meanwhile (its record is already a skipped REVOKED one). */
static inline int unpark(char *ring) { return shmipc_claim_unpark(ring); }

int shmipc_ring_commit(char *ring, uint64_t cap, size_t len) {
    int rc = unpark(ring);
    if (rc != SHMIPC_OK) return rc;
    /* We hold the producer lock since reserve: the tail has not moved. */
    uint64_t t = LOAD(U64(ring, SHMIPC_RING_OFF_P_TAIL));
    uint64_t rec = rec_size(len);
    uint64_t idx = t & (cap - 1);
    uint64_t pad = (idx + rec > cap) ? cap - idx : 0;
    if (LOAD(U64(ring, SHMIPC_RING_OFF_P_CLAIM)) != t) {
        side_unlock(ring, 1);
        return SHMIPC_CORRUPT;
    }
    shmipc_ri_publish(ring, t + pad + rec, 1, len);
    return SHMIPC_OK;
}

int shmipc_ring_abort(char *ring) {
    if (unpark(ring) != SHMIPC_OK) return SHMIPC_OK; /* revoked: dropped already */
    STORE(U64(ring, SHMIPC_RING_OFF_P_CLAIM), NO_CLAIM);
    side_unlock(ring, 1);
    return SHMIPC_OK;
}

/* ---- consumer side ---------------------------------------------------------------------- */

/* With the consumer lock held: find the next data record at position *head (the head, or
 * the end of a batch not yet retired), stepping over a padding record. Returns SHMIPC_OK with
 * *head (the record's position), *len, *type and *end, SHMIPC_EMPTY with *tail_seen, or
 * SHMIPC_CORRUPT. */
int shmipc_ri_next_record(char *ring, uint64_t cap, uint64_t *head, uint64_t *len, uint32_t *type,
                       uint64_t *end, uint64_t *tail_seen) {
    _Atomic uint64_t *tc = U64(ring, SHMIPC_RING_OFF_C_TAIL_CACHE);
    uint64_t h = *head;
    uint64_t t = LOAD(tc);
    for (;;) {
        if (h == t) {
            /* Acquire: pairs with the producer's release store of the tail (publish). */
            t = LOAD_ACQ(U64(ring, SHMIPC_RING_OFF_P_TAIL));
            STORE(tc, t);
            if (h == t) {
                *head = h;
                *tail_seen = t;
                return SHMIPC_EMPTY;
            }
        }
        if ((h & 7) || (t & 7) || t - h > cap) return SHMIPC_CORRUPT;
        uint64_t idx = h & (cap - 1);
        uint64_t hdr = read_header(DATA(ring), idx);
        uint64_t n = hdr & 0xffffffffu;
        uint32_t ty = (uint32_t)(hdr >> 32);
        if (ty == SHMIPC_REC_PAD) {
            /* A padding record runs exactly to the end of the data area. */
            if (idx + SHMIPC_REC_HEADER + n != cap || cap - idx > t - h) return SHMIPC_CORRUPT;
            h += cap - idx; /* retired with the record that follows it */
            continue;
        }
        uint64_t rec = rec_size(n);
        if (ty == SHMIPC_REC_REVOKED) {
            /* A revoked reservation: stepped over, retired with the record that follows. */
            if (idx + rec > cap || rec > t - h) return SHMIPC_CORRUPT;
            h += rec;
            continue;
        }
        if (ty > SHMIPC_REC_TYPE_MAX) return SHMIPC_CORRUPT;
        if (idx + rec > cap || rec > t - h) return SHMIPC_CORRUPT;
        *head = h;
        *len = n;
        *type = ty;
        *end = h + rec;
        return SHMIPC_OK;
    }
}

/* Lock the consumer side and find a record, waiting as the deadline allows. On SHMIPC_OK the
 * lock is held; on any other status it is not. */
int shmipc_ri_await_record(char *ring, uint64_t cap, int64_t deadline_ns, uint64_t *head,
                        uint64_t *len, uint32_t *type, uint64_t *end) {
    int64_t slice_end = 0;
    for (;;) {
        int rc = side_lock(ring, 0, deadline_ns);
        if (rc == SHMIPC_TIMEDOUT && deadline_ns != SHMIPC_TRY_ONLY) return SHMIPC_EMPTY;
        if (rc != SHMIPC_OK) return rc;
        uint64_t tail_seen = 0;
        *head = LOAD(U64(ring, SHMIPC_RING_OFF_C_HEAD));
        uint64_t start = *head;
        rc = shmipc_ri_next_record(ring, cap, head, len, type, end, &tail_seen);
        int freed = rc == SHMIPC_EMPTY && *head != start;
        if (freed) STORE_REL(U64(ring, SHMIPC_RING_OFF_C_HEAD), *head); /* lone padding */
        if (rc == SHMIPC_OK) return rc;
        if (rc == SHMIPC_EMPTY && may_wait(deadline_ns)) bump(ring, SHMIPC_RING_OFF_C_WAITS, 1);
        side_unlock(ring, 0);
        if (freed) wake_producers(ring);
        if (rc != SHMIPC_EMPTY) return rc;
        if (!slice_end) slice_end = shmipc_monotonic_ns() + SHMIPC_SLICE_NS;
        /* Every event that brings data moves the tail (publish, and revoke, which wakes us
         * to step over the revoked record): sleeping on its low word loses none. */
        rc = wait_position(ring, SHMIPC_RING_OFF_P_TAIL, SHMIPC_RING_OFF_DATA_WAITERS, tail_seen,
                           deadline_ns, 0);
        if (rc == SHMIPC_SLICE &&
            (uint32_t)LOAD_ACQ(U64(ring, SHMIPC_RING_OFF_P_TAIL)) != (uint32_t)tail_seen)
            count_missed_wake(ring); /* data came while we slept and nobody woke us */
        if (rc == SHMIPC_OK) wait_over(deadline_ns, slice_end, &rc);
        if (rc == SHMIPC_TIMEDOUT) deadline_ns = 0; /* one last non-blocking try */
        else if (rc != SHMIPC_OK) return rc;
    }
}

int shmipc_ri_guess_next(char *ring, uint64_t cap, uint64_t *pos, uint64_t *len,
                         uint32_t *type) {
    /* Read-only and lock-free: every value may be stale or torn by a concurrent consumer or
     * producer, so it only bounds-checks and guesses (the locked claim checks again). The
     * header load is atomic (relaxed): a producer may be writing it. Acquire on the head
     * and tail: pair with the releases that move them, as in the locked paths. */
    uint64_t h = *pos == UINT64_MAX ? LOAD_ACQ(U64(ring, SHMIPC_RING_OFF_C_HEAD)) : *pos;
    uint64_t t = LOAD(U64(ring, SHMIPC_RING_OFF_C_TAIL_CACHE));
    for (int step = 0; step < 3; step++) {
        if (h & 7) return SHMIPC_EMPTY; /* the header load below must stay 8-aligned */
        if (h == t || t - h > cap) {
            t = LOAD_ACQ(U64(ring, SHMIPC_RING_OFF_P_TAIL));
            if (h == t || t - h > cap) return SHMIPC_EMPTY;
        }
        uint64_t idx = h & (cap - 1);
        uint64_t hdr = LOAD((_Atomic uint64_t *)(DATA(ring) + idx));
        uint64_t n = hdr & 0xffffffffu;
        uint32_t ty = (uint32_t)(hdr >> 32);
        if (ty == SHMIPC_REC_PAD) {
            h += cap - idx;
            continue;
        }
        uint64_t rec = rec_size(n);
        if (rec > t - h || idx + rec > cap) return SHMIPC_EMPTY;
        if (ty == SHMIPC_REC_REVOKED) {
            h += rec;
            continue;
        }
        if (ty > SHMIPC_REC_TYPE_MAX) return SHMIPC_EMPTY;
        *len = n;
        *type = ty;
        *pos = h + rec;
        return SHMIPC_OK;
    }
    return SHMIPC_EMPTY;
}

/* Free records up to `end`, then let go of the consumer side. */
void shmipc_ri_retire(char *ring, uint64_t cap, uint64_t end, uint64_t msgs,
                          uint64_t bytes) {
    uint64_t out = LOAD(U64(ring, SHMIPC_RING_OFF_C_MSGS)) + msgs;
    uint64_t out_bytes = LOAD(U64(ring, SHMIPC_RING_OFF_C_BYTES)) + bytes;
    STORE(U64(ring, SHMIPC_RING_OFF_C_PEND_END), end); /* for recover_consumer */
    STORE(U64(ring, SHMIPC_RING_OFF_C_PEND_MSGS), out);
    STORE(U64(ring, SHMIPC_RING_OFF_C_PEND_BYTES), out_bytes);
    /* Release: pairs with the producers' acquire load of the head (find_room): we are done
     * reading these bytes before anyone may overwrite them. */
    STORE_REL(U64(ring, SHMIPC_RING_OFF_C_HEAD), end);
    STORE(U64(ring, SHMIPC_RING_OFF_C_MSGS), out);
    STORE(U64(ring, SHMIPC_RING_OFF_C_BYTES), out_bytes);
    uint64_t used = LOAD(U64(ring, SHMIPC_RING_OFF_C_TAIL_CACHE)) - end;
    side_unlock(ring, 0);
    /* A ring limited by bytes wakes sleeping producers only once it has drained to half:
     * waking them at every release would make the slower side pay a wake syscall per
     * message while the faster one refills a single slot (spinning producers see every
     * release anyway). A sleeper that still finds no room sleeps again; draining to empty
     * always wakes, and a sleep lasts one slice at most. A ring limited by a message count
     * (Queue(maxsize)) wakes at every release, as a stdlib queue's put would unblock. */
    /* Every release moves the room sequence (after the head and the count it publishes), so
     * a producer spinning or about to sleep on it sees the room; only the wake is deferred. */
    room_freed(ring, used <= cap / 2 || LOAD(U64(ring, SHMIPC_RING_OFF_MAX_COUNT)));
}

int64_t shmipc_ring_get(char *ring, uint64_t cap, char *dst, size_t dst_cap,
                        int64_t deadline_ns) {
    uint64_t h, len, end;
    uint32_t type;
    int rc = shmipc_ri_await_record(ring, cap, deadline_ns, &h, &len, &type, &end);
    if (rc != SHMIPC_OK) return -rc;
    if (len > dst_cap) {
        side_unlock(ring, 0);
        if (dst_cap >= sizeof len) memcpy(dst, &len, sizeof len);
        return -SHMIPC_NEEDBUF;
    }
    memcpy(dst, DATA(ring) + (h & (cap - 1)) + SHMIPC_REC_HEADER, len);
    shmipc_ri_retire(ring, cap, end, 1, len);
    return (int64_t)(((uint64_t)type << 40) | len);
}

int64_t shmipc_ring_get_many(char *ring, uint64_t cap, char *dst, size_t dst_cap,
                             uint64_t *meta, size_t max_items, int64_t deadline_ns) {
    if (max_items == 0) return 0;
    uint64_t h, len, end, tail_seen;
    uint32_t type;
    int rc = shmipc_ri_await_record(ring, cap, deadline_ns, &h, &len, &type, &end);
    if (rc != SHMIPC_OK) return -rc;
    if (len > dst_cap) {
        side_unlock(ring, 0);
        if (dst_cap >= sizeof len) memcpy(dst, &len, sizeof len);
        return -SHMIPC_NEEDBUF;
    }
    size_t count = 0, used = 0;
    uint64_t bytes = 0;
    for (;;) {
        memcpy(dst + used, DATA(ring) + (h & (cap - 1)) + SHMIPC_REC_HEADER, len);
        meta[count] = len;
        meta[max_items + count] = type;
        count++;
        used += len;
        bytes += len;
        uint64_t done = end; /* not retired yet: the head moves once, after the batch */
        if (count == max_items) break;
        h = done;
        rc = shmipc_ri_next_record(ring, cap, &h, &len, &type, &end, &tail_seen);
        if (rc != SHMIPC_OK || len > dst_cap - used) {
            end = done;
            break;
        }
    }
    shmipc_ri_retire(ring, cap, end, count, bytes);
    return (int64_t)count;
}

int64_t shmipc_ring_peek(char *ring, uint64_t cap, uint64_t *out, int64_t deadline_ns) {
    uint64_t h, len, end;
    uint32_t type;
    int rc = shmipc_ri_await_record(ring, cap, deadline_ns, &h, &len, &type, &end);
    if (rc != SHMIPC_OK) return -rc;
    (void)end;
    STORE(U64(ring, SHMIPC_RING_OFF_C_PEEK), h + 1); /* +1: 0 means "nothing peeked" */
    out[0] = len;
    out[1] = type;
    return (int64_t)((h & (cap - 1)) + SHMIPC_REC_HEADER);
}

int shmipc_ring_release(char *ring, uint64_t cap) {
    /* We hold the consumer lock since peek: neither the head nor the record has moved. */
    uint64_t h = LOAD(U64(ring, SHMIPC_RING_OFF_C_HEAD));
    uint64_t at = LOAD(U64(ring, SHMIPC_RING_OFF_C_PEEK)) - 1;
    uint64_t t = LOAD(U64(ring, SHMIPC_RING_OFF_C_TAIL_CACHE));
    uint64_t len = 0, end = 0;
    if (at != UINT64_MAX && at - h < cap && !(at & 7)) {
        len = read_header(DATA(ring), at & (cap - 1)) & 0xffffffffu;
        end = at + rec_size(len);
    }
    if (end == 0 || end - h > t - h || t - h > cap) {
        side_unlock(ring, 0);
        return SHMIPC_CORRUPT;
    }
    STORE(U64(ring, SHMIPC_RING_OFF_C_PEEK), 0);
    shmipc_ri_retire(ring, cap, end, 1, len);
    return SHMIPC_OK;
}

int shmipc_ring_unpeek(char *ring) {
    STORE(U64(ring, SHMIPC_RING_OFF_C_PEEK), 0);
    side_unlock(ring, 0);
    return SHMIPC_OK;
}
