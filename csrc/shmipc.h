/* shmipc native core: the declarations of every C function shmipc calls.
 *
 * This one file is both the C header (included by the .c files) and the cffi cdef (read by
 * csrc/build_native.py), so declarations cannot drift. It may therefore hold only what cffi's
 * cdef parser accepts: plain declarations, integer #defines, no #include, no #if.
 *
 * Conventions: every function is prefixed `shmipc_`; atomics take (base, offset) so that
 * shared state holds offsets, never raw pointers; the width (32/64) and the memory order are
 * in the name. Offsets must be aligned to the width (Python checks this once, at placement).
 * Deadlines are absolute CLOCK_MONOTONIC nanoseconds (time.monotonic_ns()), -1 = none.
 */

/* Bumped whenever a signature, a constant or a shared layout defined here changes: Python
 * refuses to import an extension whose stamp differs (a stale build). */
#define SHMIPC_ABI_VERSION 9

/* Wait outcomes (shmipc_futex_wait, shmipc_wait_while32, shmipc_lock_acquire, rings). */
#define SHMIPC_OK 0          /* woken, or the condition was already met */
#define SHMIPC_TIMEDOUT 1    /* the deadline passed */
#define SHMIPC_CHANGED 2     /* the word no longer held the expected value (futex EAGAIN) */
#define SHMIPC_INTERRUPTED 3 /* a signal arrived (EINTR): Python runs its handlers, then retries */
#define SHMIPC_SLICE 4       /* the 100 ms slice ended: Python checks for signals, then retries */
#define SHMIPC_OWNERDEAD 5   /* lock taken over from a holder that died holding it */
#define SHMIPC_DEADLOCK 6    /* lock already held by the calling thread */
#define SHMIPC_NOTOWNER 7    /* release by a thread that does not hold the lock */
#define SHMIPC_ERROR 8       /* anything else: errno says what */

/* The longest a blocking native call sleeps before it returns to Python, so that Ctrl-C and
 * other signal handlers run within this bound even where no EINTR arrives. */
#define SHMIPC_SLICE_NS 100000000

uint32_t shmipc_abi_version(void);
int64_t shmipc_monotonic_ns(void);
int shmipc_errno(void);
void shmipc_cpu_relax(void);

/* 32-bit atomics. cas returns the value found: the exchange happened iff it equals expected. */
uint32_t shmipc_load32_relaxed(char *base, size_t off);
uint32_t shmipc_load32_acquire(char *base, size_t off);
void shmipc_store32_relaxed(char *base, size_t off, uint32_t v);
void shmipc_store32_release(char *base, size_t off, uint32_t v);
uint32_t shmipc_fetch_add32_acq_rel(char *base, size_t off, uint32_t v);
uint32_t shmipc_exchange32_acq_rel(char *base, size_t off, uint32_t v);
uint32_t shmipc_cas32_acq_rel(char *base, size_t off, uint32_t expected, uint32_t desired);

/* 64-bit atomics, same contract. */
uint64_t shmipc_load64_relaxed(char *base, size_t off);
uint64_t shmipc_load64_acquire(char *base, size_t off);
void shmipc_store64_relaxed(char *base, size_t off, uint64_t v);
void shmipc_store64_release(char *base, size_t off, uint64_t v);
uint64_t shmipc_fetch_add64_acq_rel(char *base, size_t off, uint64_t v);
uint64_t shmipc_exchange64_acq_rel(char *base, size_t off, uint64_t v);
uint64_t shmipc_cas64_acq_rel(char *base, size_t off, uint64_t expected, uint64_t desired);

/* Raw futex on a shared (not FUTEX_PRIVATE_FLAG) 32-bit word. wait sleeps while the word
 * equals expected, until woken or the deadline; it never sleeps longer than one slice.
 * wake wakes up to n sleepers and returns how many it woke (or -1). */
int shmipc_futex_wait(char *base, size_t off, uint32_t expected, int64_t deadline_ns);
int shmipc_futex_wake(char *base, size_t off, int n);

/* Spin-then-sleep wait: while the word at `off` equals `expected`, spin up to spin_ns with a
 * CPU pause, then register in the 32-bit sleeper count at `waiters_off`, re-check and sleep on
 * the futex (one slice at most). Returns SHMIPC_OK once the word differs. */
int shmipc_wait_while32(char *base, size_t off, uint32_t expected, size_t waiters_off,
                        int64_t deadline_ns, int64_t spin_ns);
/* The matching wake: issues the futex syscall only when the sleeper count is non-zero. Call
 * it after the store that changes the word. Returns the number woken (0 when none slept). */
int shmipc_wake32(char *base, size_t off, size_t waiters_off, int n);

/* A sleeper registry: the u32 sleeper count at `reg_off` followed, from reg_off + 8, by
 * `nslots` u64 slots where sleepers also write their identity (shmipc_lock_identity), so that
 * the registration of a sleeper killed in its sleep can be taken back (shmipc_reap_sleepers)
 * instead of costing every later wake a futex syscall. The _reg wait is shmipc_wait_while32
 * with that registration; a sleeper that finds no free slot counts only (it cannot be reaped
 * if it dies asleep). shmipc_reap_sleepers clears the slots of threads that no longer live,
 * taking their counts back, and returns how many it cleared. */
int shmipc_wait_while32_reg(char *base, size_t off, uint32_t expected, size_t reg_off,
                            int nslots, int64_t deadline_ns, int64_t spin_ns);
int shmipc_reap_sleepers(char *base, size_t reg_off, int nslots);
/* shmipc_wake32 for a registry: every 64 wakes (per thread) that woke nobody although sleepers
 * were counted, the registry is reaped. */
int shmipc_wake32_reg(char *base, size_t off, size_t reg_off, int nslots, int n);
/* 1 while the thread a lock word names lives (or /proc cannot tell), 0 once it is gone. */
int shmipc_identity_alive(uint64_t identity);

/* Robust lock, owned by shmipc (no glibc state in shared memory, so a scribbled lock can
 * make a call wait or fail, never crash): SHMIPC_LOCK_SIZE bytes at an 8-aligned offset.
 *   bytes 0..7  word: 0 when free, else the holder's identity (shmipc_lock_identity):
 *               thread id in bits 0..31 (also the futex word) | low 32 bits of the
 *               thread's start time (clock ticks since boot) in bits 32..63, so a reused
 *               thread id is never mistaken for the holder.
 *   bytes 8..11 sleepers: waiters asleep on the word.
 * Ownership is per thread: the holder must release; a relock by the holder is DEADLOCK.
 * A dead holder's lock passes on through shmipc_lock_steal, which the caller invokes after
 * checking (in Python, /proc) that the identity it observed is no longer alive. */
#define SHMIPC_LOCK_SIZE 16
#define SHMIPC_LOCK_OFF_WAITERS 8
uint64_t shmipc_lock_identity(void);
/* This process's pid without a system call: cached, and forgotten in a forked child
 * (pthread_atfork, as the identity). */
int32_t shmipc_self_pid(void);
int shmipc_lock_acquire(char *base, size_t off, int64_t deadline_ns, int64_t spin_ns);
int shmipc_lock_try(char *base, size_t off);
int shmipc_lock_release(char *base, size_t off);
/* Take the lock from `observed` (a dead holder): SHMIPC_OWNERDEAD if taken, SHMIPC_CHANGED if
 * the word no longer holds `observed`. */
int shmipc_lock_steal(char *base, size_t off, uint64_t observed);
/* The same lock with its sleepers in a sleeper registry at reg_off (see below) instead of its
 * own count, so that a waiter killed asleep can be taken back (the rings' side locks). */
int shmipc_lock_acquire_reg(char *base, size_t off, size_t reg_off, int nslots,
                            int64_t deadline_ns, int64_t spin_ns);
int shmipc_lock_release_reg(char *base, size_t off, size_t reg_off, int nslots);

/* ==== Byte rings (csrc/ring.c; the protocol is docs/internals/ring.md) ====================
 *
 * A ring is a control block of SHMIPC_RING_HEADER_SIZE bytes followed by `capacity` bytes of
 * records (capacity a power of two). Ring calls take `ring`, a pointer to the control block,
 * and `cap`, the capacity as validated by Python when it attached: bounds never depend on a
 * capacity read back from shared memory. Positions are monotonic 64-bit byte counts; an index
 * is a position masked into the data area; offsets below are from the control block's start.
 */
#define SHMIPC_RING_MAGIC 0x474e4952       /* "RING" */
#define SHMIPC_RING_VERSION 5
#define SHMIPC_RING_HEADER_SIZE 512
/* config line (written once at init, read-only after) */
#define SHMIPC_RING_OFF_MAGIC 0            /* u32 */
#define SHMIPC_RING_OFF_VERSION 4          /* u32 */
#define SHMIPC_RING_OFF_CAPACITY 8         /* u64, power of two */
#define SHMIPC_RING_OFF_MAX_COUNT 16       /* u64, message limit (0 = only bytes limit) */
#define SHMIPC_RING_OFF_SPIN_NS 24         /* u64, how long waiters spin before sleeping */
#define SHMIPC_RING_OFF_FLAGS 32           /* u32: SHMIPC_RING_SPSC */
#define SHMIPC_RING_OFF_LIVENESS_NS 40     /* u64: a stopped reserver is revoked after this */
/* producer side: written only by the holder of the producer lock. Layout 5 keeps every word a
 * reservation writes (the lock word, the claim's registration) on the lock's own line, away
 * from the tail's: CPUs fetch 64-byte lines in 128-byte pairs, so a consumer spinning on the
 * tail may also hold the line at 192, and a write there is one more cross-core transfer.
 * Layout 4 registered claims at 216..239, by compare-exchange; with both, a reservation's
 * round trip cost 40-80 ns more than a put's across cores (docs/performance.md, session 9). */
#define SHMIPC_RING_OFF_P_LOCK 64          /* robust lock (SHMIPC_LOCK_SIZE bytes) */
#define SHMIPC_RING_OFF_P_PEND_MSGS 80     /* u64: messages in once the claim commits */
#define SHMIPC_RING_OFF_P_PEND_BYTES 88    /* u64: bytes in once the claim commits */
/* claim registration and quarantine (csrc/claim.c, docs/internals/ring.md "Claims,
 * revocation and quarantine"): the reservation out, registered at reserve; once revoked,
 * its space is kept from reuse until its holder has seen the revocation or died */
#define SHMIPC_RING_OFF_Q_START 96         /* u64: position where the registered claim starts */
#define SHMIPC_RING_OFF_Q_END 104          /* u64: position where it ends */
#define SHMIPC_RING_OFF_Q_OWNER 112        /* u64: identity of its holder; 0: none */
/* u32: the CPU the last publisher ran on, plus 1 (0: not known). A hint, never trusted for
 * anything but a waiter's choice to spin: a consumer about to wait for data whose publisher
 * last ran on its own CPU sleeps at once (csrc/ring.c, wait_position). On the lock's line,
 * which every publish writes anyway. */
#define SHMIPC_RING_OFF_P_CPU 120
/* offset 124: unused */
#define SHMIPC_RING_OFF_P_TAIL 128         /* u64: end of committed records (consumers read) */
#define SHMIPC_RING_OFF_P_HEAD_CACHE 136   /* u64: producers' last view of the head */
#define SHMIPC_RING_OFF_P_OUT_CACHE 144    /* u64: producers' last view of messages out */
#define SHMIPC_RING_OFF_P_CLAIM 152        /* u64: position of a claim in progress, or ~0 */
#define SHMIPC_RING_OFF_P_MSGS 160         /* u64: messages committed */
#define SHMIPC_RING_OFF_P_BYTES 168        /* u64: payload bytes committed */
#define SHMIPC_RING_OFF_P_ABANDONED 176    /* u64: claims of producers that died */
#define SHMIPC_RING_OFF_P_WAITS 184        /* u64: times a producer waited for room */
/* the tail's adjacent line: words written only now and then (a wake, a revocation, a
 * producer asleep on the lock), read on every unlock at most */
#define SHMIPC_RING_OFF_P_WAKES 192        /* u64: wake syscalls issued to consumers (atomic) */
/* offset 200: unused */
#define SHMIPC_RING_OFF_P_REVOKED 208      /* u64: reservations revoked from stopped producers */
#define SHMIPC_RING_OFF_P_LOCK_SLEEPERS 216 /* sleeper registry of the producer lock, 3 slots */
#define SHMIPC_RING_P_LOCK_SLOTS 3
/* waits that slept out a whole slice although what they waited for had already happened (a
 * lost wake-up; atomic, written only then) */
#define SHMIPC_RING_OFF_MISSED_WAKES 248   /* u64 */
/* consumer side: written only by the holder of the consumer lock */
#define SHMIPC_RING_OFF_C_LOCK 256         /* robust lock */
#define SHMIPC_RING_OFF_C_PEND_END 272     /* u64: head once the records being retired go */
#define SHMIPC_RING_OFF_C_PEND_MSGS 280    /* u64: messages out once they go */
#define SHMIPC_RING_OFF_C_PEND_BYTES 288   /* u64: bytes out once they go */
#define SHMIPC_RING_OFF_C_LOCK_SLEEPERS 296 /* sleeper registry of the consumer lock, 2 slots */
#define SHMIPC_RING_C_LOCK_SLOTS 2
#define SHMIPC_RING_OFF_C_HEAD 320         /* u64: end of released records (producers read) */
#define SHMIPC_RING_OFF_C_TAIL_CACHE 328   /* u64: consumers' last view of the tail */
#define SHMIPC_RING_OFF_C_MSGS 336         /* u64: messages released */
#define SHMIPC_RING_OFF_C_BYTES 344        /* u64: payload bytes released */
#define SHMIPC_RING_OFF_C_WAITS 352        /* u64: times a consumer waited for data */
#define SHMIPC_RING_OFF_C_WAKES 360        /* u64: wake syscalls issued to producers (atomic) */
#define SHMIPC_RING_OFF_C_RECOVERED 368    /* u64: consumer locks taken over from the dead */
#define SHMIPC_RING_OFF_C_PEEK 376         /* u64: end position of the peeked record */
/* sleeper counts, each alone on its line: read after every commit/release */
#define SHMIPC_RING_OFF_DATA_WAITERS 384   /* u32: consumers asleep on the tail's low word, */
#define SHMIPC_RING_OFF_SPACE_WAITERS 448  /* producers on the room sequence: each a registry */
/* u32 beside the producers' sleeper count: bumped by every event that frees room (a release,
 * a quarantine's end, a dead consumer's recovery), so that a producer waiting for room (bytes,
 * a Queue(maxsize) slot, the end of a quarantine) sleeps on a word each of them changes */
#define SHMIPC_RING_OFF_SPACE_SEQ 452
#define SHMIPC_RING_SLEEPER_SLOTS 7        /* u64 identity slots from +8 of each registry */

/* Record header: 8 bytes at an 8-aligned index, never straddling the end of the data area.
 *   bits 0..31  (bytes 0..3): payload length in bytes (explicit; never inferred from padding)
 *   bits 32..63 (bytes 4..7): type: SHMIPC_REC_PAD, or a channel's own type 0..0xFFFF
 * The payload follows; the record occupies align8(8 + length) bytes. */
#define SHMIPC_REC_HEADER 8
#define SHMIPC_REC_PAD 0xFFFFFFFF
#define SHMIPC_REC_TYPE_MAX 0xFFFF
#define SHMIPC_REC_REVOKED 0xFFFFFFFE /* a revoked reservation: skipped like padding */
/* The largest payload a ring of capacity C takes: a record of at most C/2 bytes always fits
 * an empty ring whatever the wrap point. Larger messages go through a channel's spill path. */

/* More outcomes for ring calls (returned negated where the result is an int64). */
#define SHMIPC_EMPTY 9        /* nothing to read (timeout or non-blocking) */
#define SHMIPC_FULL 10        /* no room (timeout or non-blocking) */
#define SHMIPC_TOOBIG 11      /* record larger than half the ring */
#define SHMIPC_CORRUPT 12     /* a header or position breaks the ring's rules */
#define SHMIPC_NEEDBUF 13     /* the next payload does not fit dst: its length is in dst[0..8) */
#define SHMIPC_CLOSED 14      /* the Port was closed (csrc/fastpath.c) */
#define SHMIPC_NOTBUF 15      /* the data is not a contiguous buffer: flatten it first */
#define SHMIPC_BUSY 16        /* an SPSC ring's side belongs to another live thread */
#define SHMIPC_REVOKED 17     /* this thread's reservation was revoked while it was stopped */

int shmipc_ring_init(char *ring, uint64_t cap, uint64_t max_count, uint64_t spin_ns,
                     uint32_t flags, uint64_t liveness_ns);

/* Flags (given to init). SPSC: one producer thread and one consumer thread; each side's lock
 * is a role its first user keeps between calls (no lock traffic per message); another thread
 * gets SHMIPC_BUSY while the role's holder lives. shmipc_ring_leave gives up the roles the
 * calling thread holds with nothing pending (returns how many). */
#define SHMIPC_RING_SPSC 1
int shmipc_ring_leave(char *ring);

/* Copying paths, one call per message: put returns a status; get returns
 * (type << 40 | length) >= 0 with the payload copied to dst, or a negated status. */
int shmipc_ring_put(char *ring, uint64_t cap, const char *data, size_t len, uint32_t type,
                    int64_t deadline_ns);
int64_t shmipc_ring_get(char *ring, uint64_t cap, char *dst, size_t dst_cap,
                        int64_t deadline_ns);
/* Batches: put_many stores the first k of n payloads, which lie back to back in src with
 * their lengths in lens, under one lock and one publish; it returns k (>= 1) or a negated
 * status. get_many copies up to max_items payloads back to back into dst, with their lengths
 * in meta[i] and their types in meta[max_items + i] (meta holds 2 * max_items words),
 * returning the count or a negated status. */
int64_t shmipc_ring_put_many(char *ring, uint64_t cap, const char *src, size_t *lens,
                             size_t n, uint32_t type, int64_t deadline_ns);
int64_t shmipc_ring_get_many(char *ring, uint64_t cap, char *dst, size_t dst_cap,
                             uint64_t *meta, size_t max_items, int64_t deadline_ns);

/* Zero-copy paths. reserve returns the data index of a writable payload of len bytes, the
 * producer lock staying held, or a negated status; commit(len) publishes it, abort drops it.
 * peek returns the data index of the next payload (consumer lock held) with its length and
 * type in out[0], out[1]; release frees it, unpeek lets go of it unread. The same thread must
 * finish what it started. */
int64_t shmipc_ring_reserve(char *ring, uint64_t cap, size_t len, uint32_t type,
                            int64_t deadline_ns);
int shmipc_ring_commit(char *ring, uint64_t cap, size_t len);
int shmipc_ring_abort(char *ring);
int64_t shmipc_ring_peek(char *ring, uint64_t cap, uint64_t *out, int64_t deadline_ns);
int shmipc_ring_release(char *ring, uint64_t cap);
int shmipc_ring_unpeek(char *ring);

/* Liveness: take a side's lock (producer: 1, consumer: 0) from `observed`, a holder the
 * caller found dead, do that side's recovery bookkeeping (docs/internals/ring.md) and let go.
 * Returns 1 if it took the lock over, 0 if the lock had moved on. */
int shmipc_ring_steal(char *ring, uint64_t cap, int producer, uint64_t observed);

/* Claims, revocation and quarantine (csrc/claim.c, whose invariants are at its top;
 * docs/internals/ring.md). While a reservation is out (between reserve and commit/abort,
 * the holder running Python code) its holder is registered as the quarantine owner and the
 * producer lock word carries SHMIPC_LOCK_PARKED. revoke takes the lock from `observed`, a
 * parked holder the caller found stopped for the ring's liveness interval, publishes its
 * record as a skipped REVOKED record and lets go: 1, or 0 if the word no longer holds
 * `observed`. The registration then stands as a quarantine (the space is not reused) until
 * the holder's commit (SHMIPC_REVOKED) or abort, or its death. unquarantine ends the
 * quarantine of `owner` (a holder the caller found dead): 1 if it did.
 * pause_after is a test hook: this process stops itself (SIGSTOP) right after that step of
 * a revocation (0: never); tests/fault/test_revocation.py uses it. */
#define SHMIPC_LOCK_PARKED 0x80000000
int shmipc_ring_revoke(char *ring, uint64_t cap, uint64_t observed);
int shmipc_ring_unquarantine(char *ring, uint64_t owner);
#define SHMIPC_CLAIM_PAUSE_TAKE 1
#define SHMIPC_CLAIM_PAUSE_MARK 2
#define SHMIPC_CLAIM_PAUSE_PUBLISH 3
void shmipc_claim_pause_after(int step);

/* ==== CPython entry points (csrc/fastpath.c) =============================================
 * Adds `Port` (a ring's per-message hot paths as METH_FASTCALL methods that build bytes
 * straight from the ring) and `RingMiss` to this extension module. Called once at import by
 * shmipc/_native.py; returns 0, or -1 if the module could not be extended. */
int shmipc_fastpath_install(void);

/* ---- B1: block pool (csrc/pool.c; invariants at its top, docs/zero-copy.md) ---------------
 * A block header is SHMIPC_POOL_BLOCK_HEADER bytes at a 64-aligned offset (calls take the
 * mapping's base and the header's absolute offset, computed by Python from the geometry it
 * validated at attach, never read back from shared memory):
 *   0   u64 lock    0 free, else the locker's shmipc_lock_identity()
 *   8   u64 state   generation << 32 | in_use (0 free, 1 held)
 *   16  u32 class   the block's size class (informational: Python knows it from the index)
 *   20  u32 flags   reserved
 *   24  u64 nbytes  bytes the current loan asked for
 *   32  SHMIPC_POOL_SLOTS x u64 holder slots: key (bits 0..47) | count (bits 48..63);
 *       a key is pid (22 bits) | start time low 26 bits << 22 for a process, or
 *       SHMIPC_POOL_TRANSIT | tag for references in transit in a channel. 0 = empty slot. */
#define SHMIPC_POOL_BLOCK_HEADER 128
#define SHMIPC_POOL_SLOTS 12
#define SHMIPC_POOL_OFF_LOCK 0
#define SHMIPC_POOL_OFF_STATE 8
#define SHMIPC_POOL_OFF_CLASS 16
#define SHMIPC_POOL_OFF_NBYTES 24
#define SHMIPC_POOL_OFF_SLOTS 32
#define SHMIPC_POOL_KEY_MASK 0xFFFFFFFFFFFF
#define SHMIPC_POOL_COUNT_SHIFT 48
/* adjust/alloc outcomes (>= 0 success) */
#define SHMIPC_POOL_DONE 0     /* done, the block is still in use */
#define SHMIPC_POOL_FREED 1    /* done, and the block became free (waiters were woken) */
#define SHMIPC_POOL_STALE -2   /* the block is free or has another generation */
#define SHMIPC_POOL_NOTHELD -3 /* from_key holds fewer than from_n references */
#define SHMIPC_POOL_NOSLOT -4  /* no free holder slot for to_key, or its count would overflow */
#define SHMIPC_POOL_BUSY -5    /* the block lock stayed held: *busy (if not NULL) is its holder */
#define SHMIPC_POOL_NONE -6    /* alloc: no free block in this class */
/* Take a free block among the `count` headers at hdr0 (stride SHMIPC_POOL_BLOCK_HEADER):
 * the lowest free one of the first SHMIPC_POOL_WARM, else the first free one of the rest from
 * `start` round (a caller's cursor). Returns its index with *gen_out its new generation, key
 * holding one reference, or SHMIPC_POOL_NONE. A block whose lock is held is skipped.
 * Why the first few first: a request/reply pair (each side frees what it received, then
 * loans its reply) then keeps to one or two blocks whose pages stay mapped in both processes
 * and in their caches; a cursor alone walks the whole class, and each block's first touch
 * in each process costs page faults (256 MiB: 20-700 ms on the development VM). Bounded, so
 * that a deep pipeline (those blocks busy) pays at most that many header reads more. */
#define SHMIPC_POOL_WARM 8
int64_t shmipc_pool_alloc(char *base, size_t hdr0, uint32_t count, uint32_t start,
                          uint32_t cls, uint64_t key, uint64_t nbytes, uint32_t *gen_out);
/* Under the block lock, for generation gen: take from_n references from from_key (0: none)
 * and give to_n to to_key (0: none), all or nothing; a block left without references is
 * freed (state in_use 0, the free sequence bumped, sleepers woken). */
int shmipc_pool_adjust(char *base, size_t hdr, uint32_t gen, uint64_t from_key,
                       uint32_t from_n, uint64_t to_key, uint32_t to_n, size_t seq_off,
                       size_t waiters_off, uint64_t *busy);
/* Take the block lock from `observed` (a locker the caller found dead), repair the state
 * word from the slots, let go. 1 if taken (2 if that freed the block), 0 if it moved on. */
int shmipc_pool_takeover(char *base, size_t hdr, uint64_t observed, size_t seq_off,
                         size_t waiters_off);
/* Adds the `PoolBuffer` type to the extension module (shmipc/_native.py calls it). */
int shmipc_pool_install(void);
/* ---- Topic core (T1: csrc/topic.c; invariants at its top, prose in docs/topics.md) ----
 *
 * A topic's control block (SHMIPC_TOPIC_HEADER_SIZE bytes) is followed by max_subscribers
 * slots of SHMIPC_TOPIC_SLOT_SIZE bytes and then `capacity` bytes of records (a power of two).
 * shmipc/topic.py describes the same offsets as a layout.Layout and checks at import that
 * both agree. Positions are monotonic 64-bit byte counts, 16-aligned. */
#define SHMIPC_TOPIC_MAGIC 0x43495054      /* "TPIC" */
#define SHMIPC_TOPIC_VERSION 1
#define SHMIPC_TOPIC_HEADER_SIZE 512
/* config line: written once by init */
#define SHMIPC_TOPIC_OFF_MAGIC 0           /* u32 */
#define SHMIPC_TOPIC_OFF_VERSION 4         /* u32 */
#define SHMIPC_TOPIC_OFF_CAPACITY 8        /* u64, power of two */
#define SHMIPC_TOPIC_OFF_MAX_SUBS 16       /* u32 */
#define SHMIPC_TOPIC_OFF_POLICY 20         /* u32: SHMIPC_TOPIC_BLOCK or _OVERWRITE */
#define SHMIPC_TOPIC_OFF_LIVENESS_NS 24    /* u64: a stopped subscriber is evicted after this */
#define SHMIPC_TOPIC_OFF_SPIN_NS 32        /* u64 */
/* publishers' line: written under the publisher lock only */
#define SHMIPC_TOPIC_OFF_LOCK 64           /* robust lock (SHMIPC_LOCK_SIZE bytes) */
#define SHMIPC_TOPIC_OFF_ROOM 80           /* u64: publishers' cached bound (slowest cursor + cap) */
#define SHMIPC_TOPIC_OFF_PUB_WAITS 88      /* u64: times a publisher waited for room */
/* the published line: written once per message, read by subscribers */
#define SHMIPC_TOPIC_OFF_TAIL 128          /* u64: end of published records (release) */
#define SHMIPC_TOPIC_OFF_PUBLISHED 136     /* u64: sequence numbers handed out */
#define SHMIPC_TOPIC_OFF_OLDEST 144        /* u64: position of the oldest intact record */
#define SHMIPC_TOPIC_OFF_DATA_WAITERS 192  /* u32 flag: a subscriber may sleep on the tail */
#define SHMIPC_TOPIC_OFF_SPACE_WAITERS 256 /* u32 flag: a publisher may sleep for room */
#define SHMIPC_TOPIC_OFF_SPACE_SEQ 260     /* u32: bumped when room may have been made */
#define SHMIPC_TOPIC_OFF_SPACE_NEED 264    /* u64: the cursor a sleeping publisher waits for */
#define SHMIPC_TOPIC_OFF_LAPS 320          /* u64: Lagged reports (atomic) */
#define SHMIPC_TOPIC_OFF_MISSED 328        /* u64: messages missed by lagged subscribers */
#define SHMIPC_TOPIC_OFF_EVICTIONS 336     /* u64: subscribers evicted (atomic) */
/* subscriber slots */
#define SHMIPC_TOPIC_SLOT_SIZE 128
#define SHMIPC_TOPIC_SLOT_OFF_WORD 0       /* u64: pid << 32 | generation << 8 | state */
#define SHMIPC_TOPIC_SLOT_OFF_START 8      /* u64: the owner's start time (0: not yet known) */
#define SHMIPC_TOPIC_SLOT_OFF_CURSOR 64    /* u64: next position to read (own cache line) */
#define SHMIPC_TOPIC_SLOT_OFF_EXPECTED 72  /* u64: sequence number it expects next */
#define SHMIPC_TOPIC_FREE 0
#define SHMIPC_TOPIC_CLAIMING 1
#define SHMIPC_TOPIC_ACTIVE 2
#define SHMIPC_TOPIC_EVICTED 3
#define SHMIPC_TOPIC_BLOCK 0
#define SHMIPC_TOPIC_OVERWRITE 1
/* Record: u32 length, u32 kind (SHMIPC_TOPIC_REC_PAD: the rest of the lap is padding),
 * u64 sequence number (a pad's: the next record's), payload; align16(16 + length) bytes. */
#define SHMIPC_TOPIC_REC_HEADER 16
#define SHMIPC_TOPIC_REC_PAD 0xFFFFFFFF
#define SHMIPC_LAGGED 18      /* the subscriber was lapped (Topic, policy "overwrite") */
#define SHMIPC_EVICTED 19     /* the subscriber's slot was taken back */

int shmipc_topic_init(char *t, uint64_t cap, uint32_t max_subs, uint32_t policy,
                      uint64_t liveness_ns, uint64_t spin_ns);
/* Claim a free slot for (pid, start): its index, with its word in *word, or -SHMIPC_FULL. */
int64_t shmipc_topic_claim(char *t, uint32_t max_subs, uint32_t pid, uint64_t start,
                           uint64_t *word);
/* Under the publisher lock: cursor = tail, expected = published, slot ACTIVE. out[0] =
 * cursor, out[1] = expected, out[2] = the ACTIVE word. A status (lock waits as the ring's). */
int shmipc_topic_activate(char *t, uint64_t cap, uint32_t max_subs, uint32_t slot,
                          uint64_t word, uint64_t *out, int64_t deadline_ns);
/* Take slot back from `observed` (its word as seen): to FREE (dead owner, or its own close)
 * or EVICTED (a stopped owner). 1 if this call did it. */
int shmipc_topic_evict(char *t, uint32_t max_subs, uint32_t slot, uint64_t observed, int to_free);
int shmipc_topic_release(char *t, uint32_t max_subs, uint32_t slot, uint64_t word);
/* The publisher lock from a dead holder: 1 if taken over (and let go). */
int shmipc_topic_steal(char *t, uint64_t observed);
/* Copying paths for tests and cold callers (the hot ones are TopicPort's methods). */
int shmipc_topic_publish(char *t, uint64_t cap, uint32_t max_subs, const char *data, size_t len,
                         uint32_t kind, int64_t deadline_ns);
/* Adds `TopicPort` and `TopicMiss` to the extension module (shmipc/_native.py). */
int shmipc_topic_install(void);
/* ---- Topic block pool (TP: csrc/topic.c "pooled records", shmipc/topic_pool.py) ---- */
#define SHMIPC_TOPIC_K_POOLED 3
/* publish (fast path) would overwrite a pooled record: the Python pooled section must. */
#define SHMIPC_TOPIC_POOLED_AHEAD 40
uint32_t shmipc_topic_count_active(char *t, uint32_t max_subs);
int shmipc_topic_place_locked(char *t, uint64_t cap, uint32_t max_subs, const char *data,
                              size_t len, uint32_t kind, uint64_t *need);
int shmipc_topic_wait_space(char *t, uint64_t cap, uint32_t max_subs, uint64_t need,
                            int64_t deadline_ns);
int shmipc_topic_retire(char *t, uint32_t max_subs, uint32_t slot, uint64_t observed,
                        int to_free, int count_eviction, uint64_t *cursor);
/* ---- measure ---- */
/* Native timing loops for `python -m shmipc.bench --limits` and `--io` (csrc/measure.c;
 * shmipc/bench/probes.py is their Python face). Each returns 0 with raw totals in out[], or a
 * negated errno: -EINVAL for bad arguments (checked before anything is mapped), otherwise the
 * reason the measurement could not run on this machine. */
int64_t shmipc_measure_now_ns(void);
/* fd -1: anonymous; prefault 0 none, 1 MAP_POPULATE, 2 MADV_POPULATE_WRITE.
 * out[6] = {ns mmap+populate, ns first writes, ns munmap, minor faults in mmap+populate,
 *           minor faults in the writes, pages} */
int shmipc_measure_fault(int fd, size_t bytes, int shared, int prefault, double *out);
/* mode 0: 4 KiB pages, 1: transparent hugepages, 2: MAP_HUGETLB.
 * out[4] = {ns for the timed accesses, accesses, kB of THP gained, ns building the chain} */
int shmipc_measure_random_access(size_t bytes, int mode, size_t accesses, uint64_t seed,
                                 double *out);
/* out[4] = {L1 dTLB 4K entries, L1 dTLB 2M entries, L2 dTLB 4K entries, L2 dTLB 2M entries} */
int shmipc_measure_tlb_info(double *out);
/* out[2] = {ns, bytes copied} */
int shmipc_measure_memcpy(size_t bytes, size_t total, double *out);
/* kind 0 futex, 1 pipe, 2 cache line; cpu -1: unpinned.
 * out[4] = {ns, rounds, 1 if both threads were pinned, futex waits that slept} */
int shmipc_measure_pingpong(int kind, size_t rounds, int cpu_a, int cpu_b, double *out);
/* 64-byte round trips through two rings, this thread pinging and another echoing; each side
 * copies (style 0: put, get) or works in place (1: reserve + commit, peek + release).
 * styles[2k], styles[2k+1]: ping's and echo's style of combination k (ncombos of them), run
 * interleaved in blocks of `block` rounds, `cycles` times over. flags: 0 or SHMIPC_RING_SPSC.
 * out[ncombos * cycles + 1] = {each block's median round trip in ns, combination-major;
 *                              then 1 if both threads were pinned} */
int shmipc_measure_ring_pingpong(const int *styles, int ncombos, size_t block, size_t cycles,
                                 uint32_t flags, int cpu_a, int cpu_b, double *out);
/* method 0 pread, 1 mmap (fd -1: anonymous MAP_SHARED), 2 io_uring; advice 0 normal,
 * 1 random, 2 sequential, 3 willneed, 4 hugepage (madvise, mmap only).
 * out[6] = {ns, bytes, reads, minor faults, major faults, 1 if io_uring used fixed buffers} */
int shmipc_io_read(int fd, int method, size_t file_size, size_t block, int random, size_t count,
                   uint64_t seed, int advice, unsigned depth, int warm, double *out);
/* out[1] = {fraction of the file's pages in the page cache} */
int shmipc_io_resident(int fd, size_t file_size, double *out);
/* out[3] = {ns writing every byte through a MAP_SHARED mapping, ns in msync(MS_SYNC), bytes} */
int shmipc_io_msync(int fd, size_t file_size, double *out);

/* ---- A1: asyncio helper (csrc/aio.c; shmipc/aio.py, docs/asyncio.md) ----------------------
 * shmipc_aio_waitv: register the calling (helper) thread in each word's sleeper count or
 * registry (reg_offs[i] from bases[i]; nslots[i] identity slots, 0 = a plain count;
 * SHMIPC_AIO_NO_REG = none), re-check, then sleep until any word differs from expected[i],
 * the private control word *ctl differs from ctl_seen (shmipc_aio_kick), or the absolute
 * CLOCK_MONOTONIC deadline (-1 none). poll (or a kernel without futex_waitv) sleeps on the
 * control word alone until the deadline. fired[i] = 1 for each word that differs on return.
 * Returns how many fired, or -SHMIPC_ERROR (errno). */
#define SHMIPC_AIO_MAX_WORDS 127
#define SHMIPC_AIO_NO_REG 0xFFFFFFFFFFFFFFFF
int shmipc_aio_has_waitv(void);
int shmipc_aio_waitv(char **bases, const uint64_t *offs, const uint32_t *expected,
                     const uint64_t *reg_offs, const int32_t *nslots, uint32_t n,
                     uint32_t *ctl, uint32_t ctl_seen, int64_t deadline_ns, int poll,
                     uint8_t *fired);
int shmipc_aio_kick(uint32_t *ctl);
/* The watch set served in C (see csrc/aio.c): the helper thread runs shmipc_aio_serve (GIL
 * released) for up to budget_ns, or until idle_ns with nothing to watch (returns 1), or
 * stop (returns 2); budget over returns 0. It signals the eventfd `efd` when entries fire;
 * the loop collects their ids with shmipc_aio_take (which drains the eventfd). add returns
 * an id, or -1 when SHMIPC_AIO_MAX_WORDS entries are in use. poll_ns > 0: look every poll_ns
 * instead of futex_waitv. */
void *shmipc_aio_set_new(int efd);
void shmipc_aio_set_free(void *set);
int64_t shmipc_aio_add(void *set, char *base, uint64_t off, uint32_t expected, uint64_t reg_off,
                       int32_t nslots);
/* remove returns the epoch at removal: the helper no longer touches the entry's word once
 * shmipc_aio_epoch (bumped after each of its waits) exceeds it; fired entries (take) are
 * never touched again. */
uint64_t shmipc_aio_remove(void *set, uint64_t id);
uint64_t shmipc_aio_epoch(void *set);
int shmipc_aio_take(void *set, uint64_t *ids, int max);
void shmipc_aio_stop(void *set);
int shmipc_aio_serve(void *set, int64_t budget_ns, int64_t idle_ns, int poll_ns);
/* ---- P3: pool arrays (sole-holder check; csrc/pool_sole.c, rule P7 in csrc/pool.c) ---- */
/* Under the block lock, for generation gen: 1 if key holds exactly one reference and no other
 * key (process or transit) holds any, else 0; SHMIPC_POOL_STALE or SHMIPC_POOL_BUSY (*busy
 * its holder) as adjust. Only a holder can add references, so a 1 stays true until this
 * process sends the block on: it may then map the block writable. */
int shmipc_pool_sole(char *base, size_t hdr, uint32_t gen, uint64_t key, uint64_t *busy);
/* ---- A2: asyncio io_uring backend (csrc/aio_uring.c, invariants U1-U6 there) ----
 * Registration in a word's sleeper count/registry/flag, as the helper takes it (csrc/aio.c):
 * reg_add returns the slot to hand back to reg_remove (-1 count only, -2 nothing to undo). */
int32_t shmipc_aio_reg_add(char *b, uint64_t reg_off, int32_t nslots, uint64_t me);
void shmipc_aio_reg_remove(char *b, uint64_t reg_off, int32_t slot, uint64_t me);
/* One ring per event loop (NULL + errno when io_uring is unavailable or refused). arm:
 * register (as `me`, the loop thread), re-check, queue an IORING_OP_FUTEX_WAIT tagged
 * user_data (> 0); returns 0 submitted, 2 queued for the next flush, 1 the word already
 * differs (nothing left registered), -1 error (errno; nothing left registered). unreg takes
 * the registration back; cancel queues an IORING_OP_ASYNC_CANCEL (its own completion has
 * user_data 0). reap copies out up to max completions. probe: 1, or -errno. */
extern int shmipc_aiou_refuse;
void *shmipc_aiou_new(unsigned sq_entries, unsigned cq_entries);
int shmipc_aiou_fd(void *u);
void shmipc_aiou_free(void *u);
int shmipc_aiou_flush(void *u);
int shmipc_aiou_arm(void *u, char *base, uint64_t off, uint32_t expected, uint64_t reg_off,
                    int32_t nslots, uint64_t user_data, uint64_t me, int32_t *slot);
void shmipc_aiou_unreg(char *base, uint64_t reg_off, int32_t slot, uint64_t me);
int shmipc_aiou_cancel(void *u, uint64_t user_data);
int shmipc_aiou_reap(void *u, uint64_t *user_data, int32_t *res, int max);
int shmipc_aiou_probe(void);
