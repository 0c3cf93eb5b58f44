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
#define SHMIPC_ABI_VERSION 1

/* Wait outcomes (shmipc_futex_wait, shmipc_wait_while32, shmipc_mutex_lock). */
#define SHMIPC_OK 0          /* woken, or the condition was already met */
#define SHMIPC_TIMEDOUT 1    /* the deadline passed */
#define SHMIPC_CHANGED 2     /* the word no longer held the expected value (futex EAGAIN) */
#define SHMIPC_INTERRUPTED 3 /* a signal arrived (EINTR): Python runs its handlers, then retries */
#define SHMIPC_SLICE 4       /* the 100 ms slice ended: Python checks for signals, then retries */
#define SHMIPC_OWNERDEAD 5   /* mutex acquired, but its previous holder died holding it */
#define SHMIPC_DEADLOCK 6    /* mutex already held by the calling thread */
#define SHMIPC_NOTOWNER 7    /* unlock by a thread that does not hold the mutex */
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

/* Robust process-shared mutex (glibc/musl pthread, PTHREAD_MUTEX_ROBUST, error-checking):
 * the kernel marks it owner-dead when its holder dies, even by SIGKILL, and wakes a waiter,
 * so a dead holder's lock passes on at once and pid reuse cannot keep it held. */
size_t shmipc_mutex_size(void);
int shmipc_mutex_init(char *base, size_t off);
int shmipc_mutex_lock(char *base, size_t off, int64_t deadline_ns);
int shmipc_mutex_trylock(char *base, size_t off);
int shmipc_mutex_unlock(char *base, size_t off);
