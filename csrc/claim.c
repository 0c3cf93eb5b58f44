/* shmipc rings: claims, parking, revocation and quarantine, as one unit.
 *
 * A reservation (shmipc_ring_reserve .. commit/abort) is the one claim whose holder runs
 * Python code while it holds the producer lock. If the holder is stopped (SIGSTOP) for the
 * ring's liveness interval, another producer may REVOKE it: publish its record as a skipped
 * REVOKED record so the others go on, and keep its space from reuse (QUARANTINE) for as long
 * as the holder may still write into it. docs/internals/ring.md, "Claims, revocation and
 * quarantine", is the prose; tests/unit/ring/test_claim_model.py is a model of exactly the
 * steps below (same names) whose every interleaving, with any actor killed or stopped
 * between any two steps, is checked against these invariants.
 *
 * Shared words: the producer lock word L (holder identity, SHMIPC_LOCK_PARKED while a
 * reservation is out), the quarantine owner Q (identity or 0) with the claim's bounds
 * [QS, QE), the tail T and the claim position C (recovery accounting).
 *
 * INVARIANTS (H is a holder, R a revoker, "dead" means really dead: docs/sync.md liveness)
 *  I1 (registered before parked) L == H|PARKED with H alive implies Q == H and [QS, QE) is
 *     H's current claim. H sets Q (register) and the bounds (note) before it parks, with the
 *     lock held; only a lock holder ever sets Q, and nobody but H clears it while H lives
 *     (the bounds stay H's even after: nobody else can register without the lock).
 *  I2 (one winner) L leaves H|PARKED exactly once, by a compare-exchange: H's unpark
 *     (commit/abort go on normally) or R's revoke_take (H's unpark then fails). There is no
 *     roll-back: a revoker that has taken the word finishes the revocation, or dies and
 *     whoever takes its lock over finishes it (recover_finish).
 *  I3 (quarantine) While Q == H and H is neither finished nor dead, no producer hands out a
 *     byte of [QS, QE) again: a revoked claim is published as one REVOKED record (the tail
 *     moves past QE) and room ends at QS + capacity (shmipc_claim_room); an unfinished
 *     revocation (T == QS) is never handed out, because its lock is held until the tail
 *     has moved past it (by the revoker, or by the taker-over of a dead revoker).
 *  I4 (drains) Q returns to 0 when H finishes (unpark: unregister, or end_quarantine after a
 *     failed unpark) or dies (a liveness pass's unquarantine, or recover_unregister when
 *     its lock is taken over). None of these depends on a revoker surviving, and Q is never
 *     set by anyone after H has looked at it: H reads the outcome (its unpark CAS) after Q
 *     was set, so it always clears its own quarantine.
 *  I5 (nothing torn) The tail moves past [QS, QE) only by H's commit (H wrote it all) or by
 *     revoke_publish after revoke_mark wrote the REVOKED header (consumers skip it).
 *  A reservation made while another quarantine stands does not register (I1 needs Q) and so
 *  does not park: it is not revocable (other producers wait for it, as for any lock holder).
 *
 * Every step below is ONE atomic operation on a shared word (plus plain stores to words only
 * the producer lock's holder reads, or to the claim's own unpublished bytes); register is two,
 * register_read and register, modelled apart.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "shmipc.h"
#include "identity.h"
#include "ring_internal.h"

#define W64(ring, off) ((_Atomic uint64_t *)((ring) + (off)))
#define RELAXED memory_order_relaxed
#define NO_CLAIM UINT64_MAX
#define PARKED ((uint64_t)SHMIPC_LOCK_PARKED)

/* ---- test hook: stop this process after a revocation step (tests/fault) ----------------- */

static int pause_after; /* process-local: never in shared memory */

void shmipc_claim_pause_after(int step) { pause_after = step; }

static inline void maybe_pause(int step) {
    if (__builtin_expect(pause_after == step, 0)) raise(SIGSTOP);
}

static inline int spsc(char *ring) {
    return (atomic_load_explicit((_Atomic uint32_t *)(ring + SHMIPC_RING_OFF_FLAGS), RELAXED) &
            SHMIPC_RING_SPSC) != 0;
}

static inline void write_header(char *data, uint64_t idx, uint32_t len, uint32_t type) {
    uint64_t h = (uint64_t)len | ((uint64_t)type << 32);
    memcpy(data + idx, &h, sizeof h);
}

/* ---- the one place a quarantine ends ----------------------------------------------------- */

/* end_quarantine: Q from `owner` to 0 (a CAS: whoever else ended it first, nothing
 * happens), then wake producers the quarantine held back. Release: pairs with the acquire
 * load of Q in shmipc_claim_room, so the owner's last writes into its claim happen before
 * any producer that sees Q == 0 reuses those bytes. Callers: the holder after a failed
 * unpark, a liveness pass that found the owner dead, the taker-over of a dead owner's lock.
 * The ONLY function that ends a quarantine. */
int shmipc_claim_end_quarantine(char *ring, uint64_t owner) {
    uint64_t expected = owner;
    if (!owner || !atomic_compare_exchange_strong_explicit(W64(ring, SHMIPC_RING_OFF_Q_OWNER),
                                                           &expected, 0, memory_order_release,
                                                           RELAXED))
        return 0;
    shmipc_ri_wake(ring, 1);
    return 1;
}

/* ---- holder ------------------------------------------------------------------------------ */

int shmipc_claim_park(char *ring, uint64_t start, uint64_t end) {
    if (spsc(ring)) return 0; /* never revoked: the side is the holder's role */
    uint64_t me = shmipc_identity();
    /* register_read, register: Q from 0 to me, as a load and a store. No compare-exchange is
     * needed: only a lock holder ever sets Q, and everyone else only clears a Q that names
     * somebody (end_quarantine), so a 0 read here with the lock held stays 0 until our store
     * (the claim model's second holder races every step that clears Q against it).
     * (Layout 4's compare-exchange, together with Q on the tail's adjacent line, cost every
     * reservation's round trip 40-80 ns across cores: csrc/shmipc.h, layout 5.) Relaxed: made
     * visible by the park's release below (I1). While another holder's quarantine stands,
     * nothing is stored: no park, not revocable. */
    _Atomic uint64_t *q = W64(ring, SHMIPC_RING_OFF_Q_OWNER);
    if (atomic_load_explicit(q, RELAXED) != 0) return 0;
    atomic_store_explicit(q, me, RELAXED);
    /* note: the claim's bounds, after register (so a standing quarantine's bounds are never
     * overwritten) and before park. Plain: read only by the revoker and the taker-over, after
     * their acquire CAS of the lock word. */
    atomic_store_explicit(W64(ring, SHMIPC_RING_OFF_Q_START), start, RELAXED);
    atomic_store_explicit(W64(ring, SHMIPC_RING_OFF_Q_END), end, RELAXED);
    /* park: L = me|PARKED. Release: pairs with revoke_take's acquire CAS, which then sees Q,
     * the bounds, the claim position and the record headers written before. */
    atomic_store_explicit(W64(ring, SHMIPC_RING_OFF_P_LOCK), me | PARKED, memory_order_release);
    return 1;
}

int shmipc_claim_unpark(char *ring) {
    uint64_t me = shmipc_identity();
    _Atomic uint64_t *lock = W64(ring, SHMIPC_RING_OFF_P_LOCK);
    /* Not parked (SPSC, or not registered): the lock was ours all along. Relaxed: our own
     * last store to the word, or a revoker's (which never writes `me`). */
    if (atomic_load_explicit(lock, RELAXED) == me) return SHMIPC_OK;
    /* unpark: L from me|PARKED to me. Won: the word still holds our own park, nothing to
     * pair with (acquire for the lock's usual contract). Lost: a revoker's revoke_take
     * wrote it; we need nothing of the revoker's, only to stop writing (end_quarantine). */
    uint64_t expected = me | PARKED;
    if (atomic_compare_exchange_strong_explicit(lock, &expected, me, memory_order_acquire,
                                                RELAXED)) {
        /* unregister: Q = 0. Relaxed, with the lock held: producers read Q under the lock,
         * after the acquire of our release; no quarantine was in force (never revoked). */
        atomic_store_explicit(W64(ring, SHMIPC_RING_OFF_Q_OWNER), 0, RELAXED);
        return SHMIPC_OK;
    }
    /* Revoked (a revoker's revoke_take won, I2). We write nothing more: end_quarantine (I4).
     * Q is ours since register (I1), whatever the revoker has done or not done yet. */
    shmipc_claim_end_quarantine(ring, me);
    return SHMIPC_REVOKED;
}

/* ---- revoker ----------------------------------------------------------------------------- */

/* revoke_mark: with the lock held and the claim [QS, QE) unpublished at the tail, write the
 * REVOKED header (after a padding header if the claim wraps). Plain stores into the claim's
 * own bytes; published by revoke_publish's release store. 0 if the bounds break the ring's
 * rules (scribbled): then nothing is published and shmipc_claim_room answers CORRUPT for as
 * long as the quarantine stands (never a reuse of the space). */
static int revoke_mark(char *ring, uint64_t cap, uint64_t *end) {
    uint64_t t = atomic_load_explicit(W64(ring, SHMIPC_RING_OFF_P_TAIL), RELAXED);
    uint64_t qs = atomic_load_explicit(W64(ring, SHMIPC_RING_OFF_Q_START), RELAXED);
    uint64_t qe = atomic_load_explicit(W64(ring, SHMIPC_RING_OFF_Q_END), RELAXED);
    uint64_t c = atomic_load_explicit(W64(ring, SHMIPC_RING_OFF_P_CLAIM), RELAXED);
    if (qs != t || c != t || (t & 7) || (qe & 7) || qe <= t || qe - t > cap) return 0;
    uint64_t idx = t & (cap - 1), span = qe - t, pad = 0;
    if (idx + span > cap) { /* a padding record, then the record at index 0 */
        pad = cap - idx;
        write_header(DATA(ring), idx, (uint32_t)(pad - SHMIPC_REC_HEADER), SHMIPC_REC_PAD);
        idx = 0;
    }
    if (span - pad < SHMIPC_REC_HEADER || idx + (span - pad) > cap) return 0;
    write_header(DATA(ring), idx, (uint32_t)(span - pad - SHMIPC_REC_HEADER),
                 SHMIPC_REC_REVOKED);
    *end = qe;
    return 1;
}

/* revoke_publish: the tail past the REVOKED record. Release: pairs with the consumers'
 * acquire load of the tail (shmipc_ri_next_record), which then see the REVOKED header. The
 * pending counters are the current ones (nothing is counted in), for recover_producer. */
static void revoke_publish(char *ring, uint64_t end) {
    for (int i = 0; i < 2; i++) {
        size_t cur = i ? SHMIPC_RING_OFF_P_BYTES : SHMIPC_RING_OFF_P_MSGS;
        size_t pend = i ? SHMIPC_RING_OFF_P_PEND_BYTES : SHMIPC_RING_OFF_P_PEND_MSGS;
        atomic_store_explicit(W64(ring, pend), atomic_load_explicit(W64(ring, cur), RELAXED),
                              RELAXED);
    }
    _Atomic uint64_t *n = W64(ring, SHMIPC_RING_OFF_P_REVOKED);
    atomic_store_explicit(n, atomic_load_explicit(n, RELAXED) + 1, RELAXED);
    atomic_store_explicit(W64(ring, SHMIPC_RING_OFF_P_TAIL), end, memory_order_release);
}

int shmipc_ring_revoke(char *ring, uint64_t cap, uint64_t observed) {
    if (!(observed & PARKED) || spsc(ring)) return 0;
    /* revoke_take: L from the parked holder to us. Acquire: pairs with park's release store
     * (I1: Q, the bounds and the headers are the holder's current claim). Exactly one of
     * this and the holder's unpark wins (I2); from here there is no going back. */
    uint64_t expected = observed;
    if (!atomic_compare_exchange_strong_explicit(W64(ring, SHMIPC_RING_OFF_P_LOCK), &expected,
                                                 shmipc_identity(), memory_order_acquire,
                                                 RELAXED))
        return 0;
    maybe_pause(SHMIPC_CLAIM_PAUSE_TAKE);
    uint64_t end = 0;
    int ok = revoke_mark(ring, cap, &end);
    maybe_pause(SHMIPC_CLAIM_PAUSE_MARK);
    if (ok) {
        revoke_publish(ring, end);
        maybe_pause(SHMIPC_CLAIM_PAUSE_PUBLISH);
    }
    /* revoke_release: clear the claim, then the lock word (release CAS inside
     * shmipc_lock_release_reg: pairs with the next holder's acquire CAS). */
    atomic_store_explicit(W64(ring, SHMIPC_RING_OFF_P_CLAIM), NO_CLAIM, RELAXED);
    shmipc_lock_release_reg(ring, SHMIPC_RING_OFF_P_LOCK, SHMIPC_RING_OFF_P_LOCK_SLEEPERS,
                            SHMIPC_RING_P_LOCK_SLOTS);
    if (ok) shmipc_ri_wake(ring, 0);
    return ok;
}

/* ---- liveness pass and takeover ------------------------------------------------------------ */

int shmipc_ring_unquarantine(char *ring, uint64_t owner) {
    /* unquarantine: the caller found `owner` dead; it writes nothing more (I4). */
    return shmipc_claim_end_quarantine(ring, owner);
}

int shmipc_claim_recover(char *ring, uint64_t cap, uint64_t observed) {
    /* Called by recover_producer with the lock just taken from `observed`, found dead. Q:
     * acquire, pairs with end_quarantine's release (a Q seen 0 was ended by its owner or for
     * its death); a Q set by register was made visible by the steal's acquire CAS. */
    uint64_t q = atomic_load_explicit(W64(ring, SHMIPC_RING_OFF_Q_OWNER), memory_order_acquire);
    if (!q) return 0;
    if (q == (observed & ~PARKED)) {
        /* recover_unregister: the dead holder's own registration (parked or not, revoked or
         * not): it writes nothing more. */
        shmipc_claim_end_quarantine(ring, q);
        return 0;
    }
    /* recover_finish: Q names a live-or-dead holder other than the dead lock holder, and the
     * claim is still unpublished at the tail: the dead one was its revoker (I1: nobody else
     * held the lock since the holder parked). Finish the revocation (I2, I3). */
    uint64_t t = atomic_load_explicit(W64(ring, SHMIPC_RING_OFF_P_TAIL), RELAXED);
    if (atomic_load_explicit(W64(ring, SHMIPC_RING_OFF_P_CLAIM), RELAXED) != t ||
        atomic_load_explicit(W64(ring, SHMIPC_RING_OFF_Q_START), RELAXED) != t)
        return 0; /* a standing quarantine of an earlier revocation: not this claim */
    uint64_t end = 0;
    if (revoke_mark(ring, cap, &end)) {
        revoke_publish(ring, end);
        return 1;
    }
    return 0;
}

/* ---- producers' room ------------------------------------------------------------------------ */

int shmipc_claim_room(char *ring, uint64_t cap, uint64_t t, uint64_t need) {
    /* Acquire: pairs with end_quarantine's release CAS (the owner's writes are done). */
    if (!atomic_load_explicit(W64(ring, SHMIPC_RING_OFF_Q_OWNER), memory_order_acquire))
        return SHMIPC_OK;
    uint64_t qs = atomic_load_explicit(W64(ring, SHMIPC_RING_OFF_Q_START), RELAXED);
    uint64_t qe = atomic_load_explicit(W64(ring, SHMIPC_RING_OFF_Q_END), RELAXED);
    /* The lock holder here is not the owner (its lock is parked or revoked), so the claim
     * was revoked and published: QS < QE <= T < QS + cap (I3). Anything else is scribbled. */
    if ((qs & 7) || (qe & 7) || qe <= qs || qe > t || t - qs > cap) return SHMIPC_CORRUPT;
    return t + need - qs > cap ? SHMIPC_FULL : SHMIPC_OK;
}
