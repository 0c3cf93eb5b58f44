/* This thread's identity (shmipc_lock_identity, csrc/native.c) read inline: the hot paths ask
 * for it several times a message (lock words, sleeper slots, claims), and a call each time
 * cost ~10% of a reserve + commit. The thread-local is computed on first use and reset in a
 * forked child by native.c; 0 means "not computed yet", which takes the call. */
#ifndef SHMIPC_IDENTITY_H
#define SHMIPC_IDENTITY_H

#include <stdint.h>

/* initial-exec: one load off the thread pointer, no __tls_get_addr call; hidden: never
 * resolved through the dynamic symbol table. */
extern _Thread_local uint64_t shmipc_tls_identity
    __attribute__((tls_model("initial-exec"), visibility("hidden")));

uint64_t shmipc_lock_identity(void);

static inline uint64_t shmipc_identity(void) {
    uint64_t id = shmipc_tls_identity;
    return __builtin_expect(id != 0, 1) ? id : shmipc_lock_identity();
}

#endif
