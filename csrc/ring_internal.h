/* The ring's building blocks, shared by csrc/ring.c (which defines them) and csrc/fastpath.c
 * (the CPython entry points that build Python objects straight from the ring). Not part of
 * the cdef: Python never calls these. The protocol they implement is docs/internals/ring.md.
 *
 * Producer side: claim (lock + find room, waiting as the deadline allows; the lock stays held
 * on SHMIPC_OK), find_room (more room under the held lock, for a batch), place (padding and
 * record header; returns the payload's data index), publish (release-store the tail, unlock,
 * wake sleeping consumers).
 * Consumer side: await_record (lock + find the next record; the lock stays held on
 * SHMIPC_OK), next_record (the record after it, under the held lock), retire (release-store
 * the head, unlock, wake sleeping producers).
 */
#ifndef SHMIPC_RING_INTERNAL_H
#define SHMIPC_RING_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#define SHMIPC_HIDDEN __attribute__((visibility("hidden")))
#define DATA(ring) ((ring) + SHMIPC_RING_HEADER_SIZE)

/* Bytes a record of `len` payload bytes occupies: header plus payload, 8-aligned. */
static inline uint64_t rec_size(uint64_t len) {
    return (SHMIPC_REC_HEADER + len + 7) & ~(uint64_t)7;
}

/* A deadline for the Port's first attempt, made holding the GIL: wait for nothing, not even
 * for a side lock another thread holds for a moment; a lock found held gives SHMIPC_TIMEDOUT
 * (the Port then lets the GIL go and calls again with the caller's deadline). Deadline 0
 * (non-blocking) still waits for a side lock held mid-call: only a full or empty ring makes
 * a non-blocking call fail. */
#define SHMIPC_TRY_ONLY (-2)

SHMIPC_HIDDEN int shmipc_ri_find_room(char *ring, uint64_t cap, uint64_t t, uint64_t rec,
                                      uint64_t *pad, uint64_t *head_seen);
SHMIPC_HIDDEN int shmipc_ri_claim(char *ring, uint64_t cap, uint64_t rec, int64_t deadline_ns,
                                  uint64_t *tail, uint64_t *pad);
SHMIPC_HIDDEN uint64_t shmipc_ri_place(char *ring, uint64_t cap, uint64_t t, uint64_t pad,
                                       size_t len, uint32_t type);
SHMIPC_HIDDEN void shmipc_ri_publish(char *ring, uint64_t end, uint64_t msgs, uint64_t bytes);

SHMIPC_HIDDEN int shmipc_ri_next_record(char *ring, uint64_t cap, uint64_t *head, uint64_t *len,
                                        uint32_t *type, uint64_t *end, uint64_t *tail_seen);
SHMIPC_HIDDEN int shmipc_ri_await_record(char *ring, uint64_t cap, int64_t deadline_ns,
                                         uint64_t *head, uint64_t *len, uint32_t *type,
                                         uint64_t *end);
/* Let go of a side's lock after a call that found nothing to do with it (a no-op on an SPSC
 * ring, whose roles stay taken). */
/* Without any lock: the payload length and type of the record a consumer would take next, as
 * far as can be told now (another consumer may take it first). SHMIPC_OK, or SHMIPC_EMPTY
 * when no record can be seen. The Port sizes the bytes object it fills before it locks. */
SHMIPC_HIDDEN int shmipc_ri_guess_next(char *ring, uint64_t cap, uint64_t *pos, uint64_t *len,
                                       uint32_t *type);
SHMIPC_HIDDEN void shmipc_ri_unlock(char *ring, int producer);
SHMIPC_HIDDEN void shmipc_ri_retire(char *ring, uint64_t cap, uint64_t end, uint64_t msgs,
                                    uint64_t bytes);

/* The batch put's room check for item i of a batch whose first i items are claimed but not
 * yet published (a Queue(maxsize) counts them against its limit). */
SHMIPC_HIDDEN int shmipc_ri_batch_room(char *ring, uint64_t cap, uint64_t t, uint64_t len,
                                       size_t i, uint64_t *pad);

/* Wake the sleepers waiting for room (producers: 1) or for data (0), if any sleep. */
SHMIPC_HIDDEN void shmipc_ri_wake(char *ring, int producers);

/* ---- claims: park, revoke, quarantine (csrc/claim.c; its invariants are at its top) ----
 * park: at reserve, with the producer lock held and the claim [start, end) placed: register
 * as the quarantine owner and park the lock word (1), or neither (0: SPSC, or another
 * quarantine stands). unpark: at commit/abort: SHMIPC_OK (the lock is ours again) or
 * SHMIPC_REVOKED (our quarantine is ended). recover: from recover_producer, the lock just
 * taken from `observed` (dead): ends its registration or finishes its revocation (1 if it
 * published one). room: find_room's check, under the lock, for `need` bytes at t: OK, FULL
 * (the quarantine holds the room back) or CORRUPT. end_quarantine: the ONE place a
 * quarantine ends (CAS of the owner to 0, then a wake of the producers); 1 if it did. */
SHMIPC_HIDDEN int shmipc_claim_park(char *ring, uint64_t start, uint64_t end);
SHMIPC_HIDDEN int shmipc_claim_unpark(char *ring);
SHMIPC_HIDDEN int shmipc_claim_recover(char *ring, uint64_t cap, uint64_t observed);
SHMIPC_HIDDEN int shmipc_claim_room(char *ring, uint64_t cap, uint64_t t, uint64_t need);
SHMIPC_HIDDEN int shmipc_claim_end_quarantine(char *ring, uint64_t owner);

#endif
