/* The block pool's shared protocol: allocation, references and their holders, takeover.
 *
 * shmipc/buffers.py owns the policy (which class, when to wait, who is dead); this file owns
 * every write to a block header. The header layout is in csrc/shmipc.h ("B1: block pool").
 *
 * Invariants (checked by tests/unit/buffers/test_pool_model.py, which runs every interleaving
 * of these steps with any actor killed or stopped between two of them):
 *
 *  P1  Every write to a block header's state, nbytes and slots happens under its block lock
 *      (the lock word holds the locker's identity). Steps outside the lock only read.
 *  P2  The slots are the truth: a block is in use iff some slot has a non-zero count. The
 *      state word's in_use bit is derived from the slots at the end of every critical section
 *      (and by takeover, which repairs a section its locker died in), so a locker killed
 *      mid-section leaves, after takeover, a header whose state agrees with its slots.
 *  P3  A block is handed out (alloc) only under its lock, only when every slot is empty, and
 *      with a new generation; a reference is added or moved (adjust) only while the
 *      generation the caller names is current and the block is in use. So a handle whose
 *      block was freed and reused can never gain a reference: it gets SHMIPC_POOL_STALE.
 *  P4  adjust is all-or-nothing: it checks that from_key holds from_n references and that
 *      to_key has (or can get) a slot before it writes anything; the writes follow in one
 *      section. A reference moved from a sender to a channel's transit key, or from the
 *      transit key to a receiver, is therefore never counted twice nor lost, whoever dies.
 *  P5  The block is freed (in_use 0, free sequence bumped with a release store, sleepers
 *      woken) by whichever section removes its last reference. Nothing else frees a block.
 *  P6  Nothing here trusts a number read from shared memory to reach memory: offsets come
 *      from the caller (validated geometry); slot counts only ever compare and add, and an
 *      addition that would overflow 16 bits is refused (SHMIPC_POOL_NOSLOT).
 *  P7  A sole holder may map writable (csrc/pool_sole.c): only a holder adds references, so
 *      a process that finds, under the block lock, that it holds the block's only reference
 *      stays the only one until it sends the block on itself.
 *
 * Memory orders: the lock CAS is acq_rel (acquire pairs with the previous locker's release
 * store of 0 at unlock, so a locker sees every write of the section before). The state word
 * is stored with release inside the section and loaded with acquire by alloc's unlocked
 * pre-check (a hint only, rechecked under the lock) and by statistics. The free sequence
 * increment is acq_rel and pairs with the acquire load of a waiter in shmipc_wait_while32.
 */

#include <Python.h>

#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "shmipc.h"
#include "identity.h"

#define A64(base, off) ((_Atomic uint64_t *)((base) + (off)))
#define SPIN_TRIES 4096
#define YIELD_TRIES 64
#define COUNT_MAX 0xFFFFu

static inline uint64_t slot_key(uint64_t w) { return w & SHMIPC_POOL_KEY_MASK; }
static inline uint32_t slot_count(uint64_t w) { return (uint32_t)(w >> SHMIPC_POOL_COUNT_SHIFT); }
static inline uint64_t make_slot(uint64_t key, uint32_t n) {
    return n ? (key | ((uint64_t)n << SHMIPC_POOL_COUNT_SHIFT)) : 0;
}

/* Try to take the block lock; spin, then yield, then give up with the holder in *busy. */
static int block_lock(char *base, size_t hdr, uint64_t me, int tries, uint64_t *busy) {
    _Atomic uint64_t *lock = A64(base, hdr + SHMIPC_POOL_OFF_LOCK);
    uint64_t seen = 0;
    for (int i = 0; i < tries; i++) {
        uint64_t expected = 0;
        /* acquire: pairs with the release store of 0 in block_unlock */
        if (atomic_compare_exchange_strong_explicit(lock, &expected, me, memory_order_acq_rel,
                                                    memory_order_acquire))
            return 1;
        seen = expected;
        if (i < SPIN_TRIES)
            shmipc_cpu_relax();
        else
            sched_yield();
    }
    if (busy) *busy = seen;
    return 0;
}

static void block_unlock(char *base, size_t hdr) {
    /* release: pairs with the acquire CAS of the next locker */
    atomic_store_explicit(A64(base, hdr + SHMIPC_POOL_OFF_LOCK), 0, memory_order_release);
}

static uint64_t slot_load(char *base, size_t hdr, int i) {
    return atomic_load_explicit(A64(base, hdr + SHMIPC_POOL_OFF_SLOTS + 8 * (size_t)i),
                                memory_order_relaxed);
}

static void slot_store(char *base, size_t hdr, int i, uint64_t w) {
    atomic_store_explicit(A64(base, hdr + SHMIPC_POOL_OFF_SLOTS + 8 * (size_t)i), w,
                          memory_order_relaxed);
}

static int any_held(char *base, size_t hdr) {
    for (int i = 0; i < SHMIPC_POOL_SLOTS; i++)
        if (slot_count(slot_load(base, hdr, i))) return 1;
    return 0;
}

/* P2 + P5: derive in_use from the slots; free the block if it was in use and is no longer. */
static int settle(char *base, size_t hdr, size_t seq_off, size_t waiters_off) {
    _Atomic uint64_t *state = A64(base, hdr + SHMIPC_POOL_OFF_STATE);
    uint64_t st = atomic_load_explicit(state, memory_order_relaxed);
    uint64_t held = (uint64_t)any_held(base, hdr);
    int freed = (st & 1) && !held;
    /* release: pairs with alloc's acquire pre-check and with statistics readers */
    atomic_store_explicit(state, (st & ~(uint64_t)0xFFFFFFFF) | held, memory_order_release);
    if (!held) {
        for (int i = 0; i < SHMIPC_POOL_SLOTS; i++)
            if (slot_load(base, hdr, i)) slot_store(base, hdr, i, 0); /* keys of count 0 */
    }
    return freed;
}

static void announce_free(char *base, size_t seq_off, size_t waiters_off) {
    /* acq_rel: pairs with the acquire load in shmipc_wait_while32 */
    shmipc_fetch_add32_acq_rel(base, seq_off, 1);
    shmipc_wake32(base, seq_off, waiters_off, 0x7FFFFFFF);
}

int64_t shmipc_pool_alloc(char *base, size_t hdr0, uint32_t count, uint32_t start,
                          uint32_t cls, uint64_t key, uint64_t nbytes, uint32_t *gen_out) {
    uint64_t me = shmipc_identity();
    if (!count) return SHMIPC_POOL_NONE;
    key &= SHMIPC_POOL_KEY_MASK;
    /* The first `warm` blocks first, lowest index first, then the rest from `start` round:
     * see SHMIPC_POOL_WARM. Every block is looked at once. */
    uint32_t warm = count < SHMIPC_POOL_WARM ? count : SHMIPC_POOL_WARM;
    uint32_t rest = count - warm, from = start >= warm ? start - warm : 0;
    for (uint32_t k = 0; k < count; k++) {
        uint32_t i = k < warm ? k : warm + (from + (k - warm)) % rest;
        size_t hdr = hdr0 + (size_t)i * SHMIPC_POOL_BLOCK_HEADER;
        _Atomic uint64_t *state = A64(base, hdr + SHMIPC_POOL_OFF_STATE);
        /* acquire: a hint, pairs with settle's release store; rechecked under the lock */
        if (atomic_load_explicit(state, memory_order_acquire) & 1) continue;
        if (!block_lock(base, hdr, me, 1, NULL)) continue;
        uint64_t st = atomic_load_explicit(state, memory_order_relaxed);
        if ((st & 1) || any_held(base, hdr)) {
            block_unlock(base, hdr);
            continue;
        }
        uint32_t gen = (uint32_t)(st >> 32) + 1;
        if (!gen) gen = 1; /* generation 0 never names a loan */
        for (int s = 1; s < SHMIPC_POOL_SLOTS; s++) slot_store(base, hdr, s, 0);
        slot_store(base, hdr, 0, make_slot(key, 1));
        atomic_store_explicit((_Atomic uint32_t *)(base + hdr + SHMIPC_POOL_OFF_CLASS), cls,
                              memory_order_relaxed);
        atomic_store_explicit(A64(base, hdr + SHMIPC_POOL_OFF_NBYTES), nbytes,
                              memory_order_relaxed);
        /* release: pairs with the acquire loads of readers outside the lock */
        atomic_store_explicit(state, ((uint64_t)gen << 32) | 1, memory_order_release);
        block_unlock(base, hdr);
        *gen_out = gen;
        return (int64_t)i;
    }
    return SHMIPC_POOL_NONE;
}

int shmipc_pool_adjust(char *base, size_t hdr, uint32_t gen, uint64_t from_key,
                       uint32_t from_n, uint64_t to_key, uint32_t to_n, size_t seq_off,
                       size_t waiters_off, uint64_t *busy) {
    uint64_t me = shmipc_identity();
    from_key &= SHMIPC_POOL_KEY_MASK;
    to_key &= SHMIPC_POOL_KEY_MASK;
    if ((from_n && !from_key) || (to_n && !to_key) || from_n > COUNT_MAX || to_n > COUNT_MAX)
        return SHMIPC_POOL_NOTHELD;
    if (!block_lock(base, hdr, me, SPIN_TRIES + YIELD_TRIES, busy)) return SHMIPC_POOL_BUSY;
    uint64_t st = atomic_load_explicit(A64(base, hdr + SHMIPC_POOL_OFF_STATE),
                                       memory_order_relaxed);
    int rc = SHMIPC_POOL_DONE;
    int from_i = -1, to_i = -1, empty_i = -1;
    if ((uint32_t)(st >> 32) != gen || !any_held(base, hdr)) {
        rc = SHMIPC_POOL_STALE;
        goto out;
    }
    for (int i = 0; i < SHMIPC_POOL_SLOTS; i++) {
        uint64_t w = slot_load(base, hdr, i);
        if (!slot_count(w)) {
            if (empty_i < 0) empty_i = i;
            continue;
        }
        if (from_n && from_i < 0 && slot_key(w) == from_key) from_i = i;
        if (to_n && to_i < 0 && slot_key(w) == to_key) to_i = i;
    }
    /* P4: every check before any write */
    if (from_n && (from_i < 0 || slot_count(slot_load(base, hdr, from_i)) < from_n)) {
        rc = SHMIPC_POOL_NOTHELD;
        goto out;
    }
    if (to_n) {
        uint32_t have = to_i >= 0 ? slot_count(slot_load(base, hdr, to_i)) : 0;
        if (from_n && from_key == to_key) have -= from_n;
        if (have + to_n > COUNT_MAX) {
            rc = SHMIPC_POOL_NOSLOT;
            goto out;
        }
        if (to_i < 0) {
            /* the slot from_key empties may serve */
            if (empty_i < 0 && from_i >= 0 &&
                slot_count(slot_load(base, hdr, from_i)) == from_n)
                empty_i = from_i;
            if (empty_i < 0) {
                rc = SHMIPC_POOL_NOSLOT;
                goto out;
            }
        }
    }
    if (from_n) {
        uint64_t w = slot_load(base, hdr, from_i);
        slot_store(base, hdr, from_i, make_slot(from_key, slot_count(w) - from_n));
    }
    if (to_n) {
        if (to_i >= 0) {
            uint64_t w = slot_load(base, hdr, to_i);
            slot_store(base, hdr, to_i, make_slot(to_key, slot_count(w) + to_n));
        } else {
            slot_store(base, hdr, empty_i, make_slot(to_key, to_n));
        }
    }
out:;
    int freed = settle(base, hdr, seq_off, waiters_off);
    block_unlock(base, hdr);
    if (freed) {
        announce_free(base, seq_off, waiters_off);
        if (rc == SHMIPC_POOL_DONE) rc = SHMIPC_POOL_FREED;
    }
    return rc;
}

int shmipc_pool_takeover(char *base, size_t hdr, uint64_t observed, size_t seq_off,
                         size_t waiters_off) {
    uint64_t me = shmipc_identity();
    if (!observed) return 0;
    /* acquire: pairs with the dead locker's last release (if any); its section may be half
     * done, which settle repairs (P2) */
    if (shmipc_cas64_acq_rel(base, hdr + SHMIPC_POOL_OFF_LOCK, observed, me) != observed)
        return 0;
    int freed = settle(base, hdr, seq_off, waiters_off);
    block_unlock(base, hdr);
    if (freed) announce_free(base, seq_off, waiters_off);
    return freed ? 2 : 1;
}

/* ---- the PoolBuffer type -------------------------------------------------------------------
 *
 * PoolBuffer(mapping, offset, length, readonly, on_release): the exporter of one reference to
 * a pool block. It pins the mapping with an export of its own (as View in fastpath.c does)
 * and counts the buffers made from it. release() refuses (BufferError) while any is alive;
 * else it ends the buffer and calls on_release() once. When the object is freed without
 * release() (its last memoryview or array was collected), on_release() runs then. */

typedef struct {
    PyObject_HEAD
    Py_buffer src;
    char *buf;
    Py_ssize_t len;
    int readonly;
    Py_ssize_t exports;
    PyObject *on_release; /* NULL once called */
} PoolBuffer;

static int pb_init(PoolBuffer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"mapping", "offset", "length", "readonly", "on_release", NULL};
    PyObject *mapping, *on_release;
    Py_ssize_t offset, length;
    int readonly;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnnpO", kwlist, &mapping, &offset, &length,
                                     &readonly, &on_release))
        return -1;
    if (self->src.obj || self->on_release) {
        PyErr_SetString(PyExc_TypeError, "a PoolBuffer is initialised once");
        return -1;
    }
    Py_buffer src;
    if (PyObject_GetBuffer(mapping, &src, PyBUF_SIMPLE) < 0) return -1;
    if (offset < 0 || length < 0 || offset > src.len || length > src.len - offset) {
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_ValueError, "PoolBuffer's range does not fit its mapping");
        return -1;
    }
    self->src = src;
    self->buf = (char *)src.buf + offset;
    self->len = length;
    self->readonly = readonly;
    Py_INCREF(on_release);
    self->on_release = on_release;
    return 0;
}

static int pb_getbuffer(PoolBuffer *self, Py_buffer *view, int flags) {
    if (!self->buf) {
        PyErr_SetString(PyExc_BufferError, "this pool buffer was released");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->buf, self->len, self->readonly, flags) <
        0)
        return -1;
    self->exports++;
    return 0;
}

static void pb_releasebuffer(PoolBuffer *self, Py_buffer *view) { self->exports--; }

/* End the buffer and run on_release (once). Returns -1 with an exception set if the callback
 * raised (the buffer is ended anyway). */
static int pb_end(PoolBuffer *self) {
    self->buf = NULL;
    if (self->src.obj) PyBuffer_Release(&self->src);
    PyObject *cb = self->on_release;
    self->on_release = NULL;
    if (!cb) return 0;
    PyObject *r = PyObject_CallNoArgs(cb);
    Py_DECREF(cb);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *pb_release(PoolBuffer *self, PyObject *unused) {
    if (self->exports > 0) {
        PyErr_SetString(PyExc_BufferError,
                        "this loan is still seen by a memoryview or an array: drop them (or "
                        "let them be collected) and release again");
        return NULL;
    }
    if (pb_end(self) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *pb_get_exports(PoolBuffer *self, void *closure) {
    return PyLong_FromSsize_t(self->exports);
}

static PyObject *pb_get_released(PoolBuffer *self, void *closure) {
    return PyBool_FromLong(self->buf == NULL);
}

static PyObject *pb_get_nbytes(PoolBuffer *self, void *closure) {
    return PyLong_FromSsize_t(self->len);
}

static PyObject *pb_get_readonly(PoolBuffer *self, void *closure) {
    return PyBool_FromLong(self->readonly);
}

static void pb_dealloc(PoolBuffer *self) {
    PyTypeObject *tp = Py_TYPE(self);
    if (self->on_release || self->src.obj) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (pb_end(self) < 0) PyErr_WriteUnraisable((PyObject *)self);
        PyErr_Restore(type, value, tb);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef pb_methods[] = {
    {"release", (PyCFunction)pb_release, METH_NOARGS,
     "release($self, /)\n--\n\nGive the reference back now; BufferError while a view of it is "
     "alive."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef pb_getset[] = {
    {"exports", (getter)pb_get_exports, NULL, "buffers made from this one still alive", NULL},
    {"released", (getter)pb_get_released, NULL, "True once the reference was given back", NULL},
    {"nbytes", (getter)pb_get_nbytes, NULL, "bytes of the buffer", NULL},
    {"readonly", (getter)pb_get_readonly, NULL, "True for a receiver's buffer", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot pb_slots[] = {
    {Py_tp_doc, "One reference to a pool block: PoolBuffer(mapping, offset, length, readonly, "
                "on_release)."},
    {Py_tp_init, pb_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, pb_dealloc},
    {Py_tp_methods, pb_methods},
    {Py_tp_getset, pb_getset},
    {Py_bf_getbuffer, pb_getbuffer},
    {Py_bf_releasebuffer, pb_releasebuffer},
    {0, NULL},
};

static PyType_Spec pb_spec = {
    .name = "shmipc._native_ext.PoolBuffer",
    .basicsize = sizeof(PoolBuffer),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = pb_slots,
};

int shmipc_pool_install(void) {
    static int installed = 0;
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc = 0;
    if (!installed) {
        PyObject *module = PyImport_AddModule("shmipc._native_ext"); /* borrowed */
        PyObject *tp = module ? PyType_FromSpec(&pb_spec) : NULL;
        if (tp && PyModule_AddObjectRef(module, "PoolBuffer", tp) == 0) {
            installed = 1;
        } else {
            PyErr_Clear();
            rc = -1;
        }
        Py_XDECREF(tp);
    }
    PyGILState_Release(gil);
    return rc;
}
