/* P7 of the block pool (csrc/pool.c): "a sole holder may map writable".
 *
 * A receiver that holds the only reference of a block (the sender moved its own reference to
 * the channel on put, and the receiver moved the channel's to itself on get) may hand the block
 * out writable: nobody else can see the bytes change. References are only ever added by a
 * holder (adjust with from_n 0 is called by the Loan/received-view owner that forwards it), so
 * once this check says "sole" under the block lock, it stays true until this process itself
 * sends the block on; the next receiver then finds this process still holding it and maps it
 * read-only. The check reads the slots under the block lock (P1), so it never sees a section
 * half done. */

#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "shmipc.h"
#include "identity.h"

#define A64(base, off) ((_Atomic uint64_t *)((base) + (off)))

int shmipc_pool_sole(char *base, size_t hdr, uint32_t gen, uint64_t key, uint64_t *busy) {
    uint64_t me = shmipc_identity();
    _Atomic uint64_t *lock = A64(base, hdr + SHMIPC_POOL_OFF_LOCK);
    key &= SHMIPC_POOL_KEY_MASK;
    uint64_t seen = 0;
    int locked = 0;
    for (int i = 0; i < 4096 + 64; i++) {
        uint64_t expected = 0;
        /* acquire: pairs with the release store of 0 at every unlock (pool.c block_unlock) */
        if (atomic_compare_exchange_strong_explicit(lock, &expected, me, memory_order_acq_rel,
                                                    memory_order_acquire)) {
            locked = 1;
            break;
        }
        seen = expected;
        if (i < 4096)
            shmipc_cpu_relax();
        else
            sched_yield();
    }
    if (!locked) {
        if (busy) *busy = seen;
        return SHMIPC_POOL_BUSY;
    }
    uint64_t st = atomic_load_explicit(A64(base, hdr + SHMIPC_POOL_OFF_STATE), memory_order_relaxed);
    int rc = 0, mine = 0, others = 0;
    if ((uint32_t)(st >> 32) != gen) {
        rc = SHMIPC_POOL_STALE;
    } else {
        for (int i = 0; i < SHMIPC_POOL_SLOTS; i++) {
            uint64_t w = atomic_load_explicit(
                A64(base, hdr + SHMIPC_POOL_OFF_SLOTS + 8 * (size_t)i), memory_order_relaxed);
            uint32_t n = (uint32_t)(w >> SHMIPC_POOL_COUNT_SHIFT);
            if (!n) continue;
            if ((w & SHMIPC_POOL_KEY_MASK) == key)
                mine += (int)n;
            else
                others += (int)n;
        }
        rc = (mine == 1 && others == 0) ? 1 : 0;
    }
    /* release: pairs with the acquire CAS of the next locker */
    atomic_store_explicit(lock, 0, memory_order_release);
    return rc;
}
