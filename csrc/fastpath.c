/* The rings' hot paths as CPython entry points: one call per message, no scratch buffer.
 *
 * Everything else in csrc/ is reached through cffi. For the per-message calls cffi's argument
 * conversion and ffi.unpack cost more than the ring work itself (~0.2 us a call and ~0.12 us
 * to turn the copied payload into bytes, against ~0.03 us for the claim, copy and publish),
 * so the Queue's put/get go through a `Port` instead: a small object holding a ring's address
 * and capacity whose METH_FASTCALL methods run the claim + copy + publish (or find + copy +
 * retire) of csrc/ring.c and build the result `bytes` straight from the ring (one copy).
 *
 * The port lives in the cffi extension itself: shmipc_fastpath_install(), declared in the
 * cdef, adds `Port`, `View` and `RingMiss` to the module once at import (shmipc/_native.py).
 *
 * Lifetime (docs/internals/lifetime.md): a Port is made over a mapping (any writable buffer
 * exporter, the region's mmap) and holds a buffer export on it, so the mapping cannot be
 * unmapped while the port may still use it. Every call that touches the ring counts itself
 * in `inflight` (under the GIL); close() refuses later calls (SHMIPC_CLOSED) and drops the
 * export once no call is inside, or else when the last one leaves. A `View` is the exporter
 * behind the memoryviews Ring.reserve/peek hand out: it counts its own exports, so that the
 * ring refuses to commit/release a record while any view of it is alive.
 *
 * GIL: a call first tries without waiting, holding the GIL (the common case costs no GIL
 * round trip); only if it would wait does it let the GIL go while it spins and sleeps. A
 * large payload is copied without the GIL too. A side lock is never held while the GIL is
 * awaited, nor while a Python object is allocated (a GC pass or a finalizer could run there):
 * the bytes a get fills are sized by a lock-free look at the next record and made before the
 * lock is taken, and a call that waited comes back to the GIL with no lock held. Anything but the fast case (a timeout, a wait
 * slice ending, a record type the port does not handle, a closed port) comes back to Python:
 * put returns the status, the get methods raise RingMiss(status, type, payload), where
 * payload is the record's bytes when one was taken off the ring (status SHMIPC_OK), else None.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdint.h>
#include <string.h>

#include "shmipc.h"
#include "identity.h"
#include "ring_internal.h"
#include "fastcall_args.h"

/* Payloads at least this large are copied with the GIL released. */
#define BIG_COPY (64 << 10)

/* Soft-released memoryviews a port keeps for reuse: two per side cover a loop that holds its
 * views in variables (the previous claim's view is still held when the next claim is made). */
#define ZC_KEEP 6

static PyObject *RingMiss;

struct Claim {
    uint64_t owner;  /* the holding thread (shmipc_lock_identity) */
    int producer;    /* 1: a reservation, 0: a peeked record */
    int plain;       /* mv is a plain bytes view of `view` (plain_mbuf): it may be kept */
    char *ring;      /* the claim's own copy of the ring's address (its view pins it) */
    PyObject *mv;    /* the memoryview handed out */
    PyObject *view;  /* its exporter (a View) */
    uint64_t len;    /* payload bytes */
};

typedef struct {
    PyObject_HEAD
    char *ring;       /* the ring's control block; NULL once closed */
    Py_ssize_t inflight; /* calls inside the ring now (changed under the GIL only) */
    PyObject *pending;   /* a decode error get_many kept for the next consumer call, or NULL */
    uint64_t cap;     /* capacity as validated by Python on attach */
    PyObject *decode; /* called on records of obj_type by get/get_many; None: returned as is */
    uint32_t obj_type;
    uint32_t raw_type;
    /* For the channel-level methods (send/send_bytes/recv/recv_bytes), else None: */
    PyObject *encode;    /* obj -> frame (bytes-like), for send */
    PyObject *deadline;  /* timeout seconds -> absolute deadline ns (shmipc.sync.deadline_ns) */
    PyObject *slow_put;  /* (status, data, type, deadline) -> None: every other outcome */
    PyObject *slow_get;  /* (status, type, payload, deadline, decode) -> result: likewise */
    int bytes_as_is;     /* send: an exact bytes object travels as raw_type, unframed */
    uint64_t last_len;   /* the last record get() took: its guess for a record still to come */
    /* The zero-copy calls (reserve/commit/abort, peek/release): */
    PyObject *slow_zc;   /* (op, status, arg, deadline) -> result: every other outcome */
    /* The claims of one thread per side ([1] its reservation, [0] its peek; owner 0: none),
     * then those of other threads (claims[0 .. nclaims)): */
    struct Claim own[2];
    Py_ssize_t nclaims;
    Py_ssize_t claims_cap;
    struct Claim *claims;   /* claims_inline, or a larger block once more threads hold one */
    struct Claim claims_inline[1];
    PyObject *spare[2];  /* ended Views nobody else refers to, kept (with their export of the
                            mapping) for the next claims: a View costs ~350 instructions */
    int nspare;
    /* Handed-out memoryviews whose claims ended, soft-released (see "memoryviews kept for
     * reuse" below), each with its View, oldest first: pointed at a later claim's bytes once
     * the port's reference is the only one left. */
    int nkept;
    struct Kept {
        PyObject *mv;
        PyObject *view;
    } kept[ZC_KEEP];
    /* Cold fields last, off the hot fields' cache lines: */
    Py_ssize_t undecodable; /* records taken off the ring that failed to decode */
    Py_buffer lease;  /* an export of the mapping the ring lives in (lease.obj NULL: none) */
} Port;

typedef struct Claim Claim;

static void claims_drop_all(Port *self);
static void claims_purge_dead(Port *self);

static PyObject *miss(int status, uint32_t type, PyObject *payload) {
    /* payload: a new reference (stolen) or NULL */
    PyObject *args = Py_BuildValue("(iIN)", status, type, payload ? payload : Py_NewRef(Py_None));
    if (args) {
        PyErr_SetObject(RingMiss, args);
        Py_DECREF(args);
    }
    return NULL;
}

static int arg_count(Py_ssize_t nargs, Py_ssize_t want, const char *usage) {
    if (nargs == want) return 0;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", usage, want, nargs);
    return -1;
}

static int as_type(PyObject *o, uint32_t *out) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        v = -1; /* out of range either way */
    }
    if (v < 0 || v > SHMIPC_REC_TYPE_MAX) {
        PyErr_Format(PyExc_ValueError, "record type must be in 0..%d", SHMIPC_REC_TYPE_MAX);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* ---- lifetime ------------------------------------------------------------------------- */

/* The ring's address for a call that is about to touch it, counted in `inflight`; NULL once
 * the port was closed (the caller answers SHMIPC_CLOSED). Every enter() is paired with one
 * leave(), both under the GIL; the GIL may be let go in between. */
static inline char *enter(Port *self) {
    char *ring = self->ring;
    if (ring) self->inflight++;
    return ring;
}

static void kept_drop_all(Port *self);

static void drop_lease(Port *self) {
    kept_drop_all(self); /* each released for real, and its View's export let go */
    while (self->nspare > 0) Py_DECREF(self->spare[--self->nspare]); /* their exports first */
    if (self->lease.obj) PyBuffer_Release(&self->lease); /* may unmap: the GIL is held */
}

/* After close(), the last call to leave lets go of the mapping. */
static inline void leave(Port *self) {
    if (--self->inflight == 0 && !self->ring) drop_lease(self);
}

/* A decode error get_many kept (it delivered the valid records of its batch first) is raised
 * by the next consumer call: -1 with it set, else 0. */
static inline int raise_pending(Port *self) {
    if (!self->pending) return 0;
    PyObject *exc = self->pending;
    self->pending = NULL;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return -1;
}

/* ---- producer side ---------------------------------------------------------------------- */

static int put_buffer(char *ring, uint64_t cap, const char *p, size_t n, uint32_t type,
                      int64_t deadline) {
    int rc = SHMIPC_TIMEDOUT; /* TRY_ONLY's "the lock is held": wait for it without the GIL */
    if (n < BIG_COPY) rc = shmipc_ring_put(ring, cap, p, n, type, SHMIPC_TRY_ONLY);
    if (rc == SHMIPC_TIMEDOUT || (rc == SHMIPC_FULL && deadline != 0)) {
        Py_BEGIN_ALLOW_THREADS
        rc = shmipc_ring_put(ring, cap, p, n, type, deadline);
        Py_END_ALLOW_THREADS
    }
    return rc;
}

/* Put `data` (exact bytes, or any contiguous buffer) as one record of `type`: a status;
 * SHMIPC_NOTBUF for a buffer that is not contiguous (Python flattens it and retries),
 * SHMIPC_CLOSED once the port was closed. */
static int put_object(Port *self, PyObject *data, uint32_t type, int64_t deadline) {
    int rc;
    if (PyBytes_CheckExact(data)) {
        char *ring = enter(self);
        if (!ring) return SHMIPC_CLOSED;
        rc = put_buffer(ring, self->cap, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data),
                        type, deadline);
        leave(self);
        return rc;
    }
    if (!self->ring) return SHMIPC_CLOSED;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) { /* may run Python code */
        PyErr_Clear();
        return SHMIPC_NOTBUF;
    }
    char *ring = enter(self);
    rc = ring ? put_buffer(ring, self->cap, view.buf, (size_t)view.len, type, deadline)
              : SHMIPC_CLOSED;
    if (ring) leave(self);
    PyBuffer_Release(&view);
    return rc;
}

/* put(data, type, deadline_ns) -> status: data is bytes or any contiguous buffer. */
static PyObject *port_put(Port *self, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t type;
    int64_t deadline;
    if (arg_count(nargs, 3, "put(data, type, deadline_ns)") || as_type(args[1], &type) ||
        shmipc_as_deadline(args[2], &deadline))
        return NULL;
    return PyLong_FromLong(put_object(self, args[0], type, deadline));
}

/* put_many's work on an entered ring (the caller pairs enter/leave around it). */
static PyObject *put_many_in(char *ring, uint64_t cap, PyObject *frames, Py_ssize_t start,
                             uint32_t type, int64_t deadline) {
    Py_ssize_t waited = 0; /* frames stored alone by a put that waited without the GIL */
    for (;;) {
        PyObject *first = PyList_GET_ITEM(frames, start);
        if (!PyBytes_CheckExact(first))
            return PyLong_FromSsize_t(waited ? waited : -SHMIPC_NOTBUF);
        Py_INCREF(first); /* ours even if another thread edits the list while we wait */
        uint64_t len = (uint64_t)PyBytes_GET_SIZE(first);
        uint64_t rec = rec_size(len);
        if (len > UINT32_MAX || rec > cap / 2) {
            Py_DECREF(first);
            return PyLong_FromSsize_t(waited ? waited : -SHMIPC_TOOBIG);
        }
        uint64_t t, pad;
        int rc = shmipc_ri_claim(ring, cap, rec, SHMIPC_TRY_ONLY, &t, &pad);
        if (!waited && (rc == SHMIPC_TIMEDOUT || (rc == SHMIPC_FULL && deadline != 0))) {
            /* Wait without the GIL, and never come back to it holding the producer lock:
             * the first frame (our own reference) goes alone, then the batch goes on. */
            const char *p = PyBytes_AS_STRING(first);
            Py_BEGIN_ALLOW_THREADS
            rc = shmipc_ring_put(ring, cap, p, (size_t)len, type, deadline);
            Py_END_ALLOW_THREADS
            Py_DECREF(first);
            if (rc != SHMIPC_OK) return PyLong_FromLong(-rc);
            waited = 1;
            if (++start >= PyList_GET_SIZE(frames)) return PyLong_FromLong(1);
            continue;
        }
        if (rc != SHMIPC_OK) {
            Py_DECREF(first);
            return PyLong_FromSsize_t(waited ? waited : -rc);
        }
        /* The producer lock is held from here to publish; nothing below can fail, wait or
         * allocate. The list may have changed while we waited: only `first` (our own
         * reference) and the items now at start + 1 .. len - 1 are read. */
        uint64_t bytes = 0;
        Py_ssize_t i = start, n = PyList_GET_SIZE(frames);
        PyObject *item = first;
        for (;;) {
            uint64_t at = shmipc_ri_place(ring, cap, t, pad, (size_t)len, type);
            memcpy(DATA(ring) + at, PyBytes_AS_STRING(item), (size_t)len);
            t += pad + rec; /* not published yet: the tail moves once, after the whole batch */
            bytes += len;
            if (++i >= n) break;
            item = PyList_GET_ITEM(frames, i);
            if (!PyBytes_CheckExact(item)) break;
            len = (uint64_t)PyBytes_GET_SIZE(item);
            if (shmipc_ri_batch_room(ring, cap, t, len, (size_t)(i - start), &pad) != SHMIPC_OK)
                break;
            rec = rec_size(len);
        }
        shmipc_ri_publish(ring, t, (uint64_t)(i - start), bytes);
        Py_DECREF(first);
        return PyLong_FromSsize_t(waited + i - start);
    }
}


/* put_many(frames, start, type, deadline_ns) -> count | -status: stores frames[start:] (a
 * list of bytes) in order, as many as the ring takes now (at least one, waiting for room for
 * the first as the deadline allows), under one claim and one publish. A frame that is not
 * bytes ends the batch (-SHMIPC_NOTBUF if it is the first). */
static PyObject *port_put_many(Port *self, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t type;
    int64_t deadline;
    if (arg_count(nargs, 4, "put_many(frames, start, type, deadline_ns)") ||
        as_type(args[2], &type) || shmipc_as_deadline(args[3], &deadline))
        return NULL;
    PyObject *frames = args[0];
    if (!PyList_CheckExact(frames)) {
        PyErr_SetString(PyExc_TypeError, "put_many() needs a list of bytes");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    if (!self->ring) return PyLong_FromLong(-SHMIPC_CLOSED);
    if (start < 0 || start >= PyList_GET_SIZE(frames)) return PyLong_FromLong(0);
    char *ring = enter(self);
    PyObject *result = put_many_in(ring, self->cap, frames, start, type, deadline);
    leave(self);
    return result;
}

/* first_not_bytes(items, start) -> index: of the first item at or after start that is not
 * an exact bytes object (len(items) if none): put_many's check, at ~1 ns an item. */
static PyObject *port_first_not_bytes(Port *self, PyObject *const *args, Py_ssize_t nargs) {
    if (arg_count(nargs, 2, "first_not_bytes(items, start)")) return NULL;
    if (!PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "first_not_bytes() needs a list");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0) i = 0;
    Py_ssize_t n = PyList_GET_SIZE(args[0]);
    while (i < n && PyBytes_CheckExact(PyList_GET_ITEM(args[0], i))) i++;
    return PyLong_FromSsize_t(i < n ? i : n);
}

/* ---- consumer side ---------------------------------------------------------------------- */

/* Whether the fast path hands a record of this type back itself (else Python does). */
static inline int fast_type(Port *self, uint32_t type) {
    return type == self->raw_type || type == self->obj_type;
}

/* Take up to k records, back to back from the next one, into dsts[i] if record i's payload
 * is exactly lens[i] bytes long (the caller made the buffers before locking), waiting for the
 * lock and the first record as the deadline allows: SHMIPC_OK with *got records taken and
 * their types in types[]; SHMIPC_NEEDBUF with the first record's length in lens[0] (nothing
 * taken, lock let go); or another status. A record of neither fast type is taken only alone,
 * first. Touches no Python object, so it runs with or without the GIL; the consumer lock is
 * held only inside it. */
static int take_into(char *ring, uint64_t cap, int64_t deadline, char **dsts, uint64_t *lens,
                     uint32_t *types, Py_ssize_t k, uint32_t obj_type, uint32_t raw_type,
                     Py_ssize_t *got) {
    uint64_t h, len, end, tail_seen, done = 0, bytes = 0;
    uint32_t type;
    Py_ssize_t i = 0;
    *got = 0;
    int rc = shmipc_ri_await_record(ring, cap, deadline, &h, &len, &type, &end);
    if (rc != SHMIPC_OK) return rc;
    while (i < k && len == lens[i]) {
        int fast = type == obj_type || type == raw_type;
        if (!fast && i > 0) break;
        memcpy(dsts[i], DATA(ring) + (h & (cap - 1)) + SHMIPC_REC_HEADER, (size_t)len);
        types[i++] = type;
        done = end;
        bytes += len;
        h = end;
        if (!fast || i == k ||
            shmipc_ri_next_record(ring, cap, &h, &len, &type, &end, &tail_seen) != SHMIPC_OK)
            break;
    }
    if (i == 0) {
        shmipc_ri_unlock(ring, 0);
        lens[0] = len;
        return SHMIPC_NEEDBUF;
    }
    shmipc_ri_retire(ring, cap, done, (uint64_t)i, bytes);
    *got = i;
    return SHMIPC_OK;
}

/* The most records one get_many call takes without allocating its bookkeeping. */
#define BATCH_STACK 64

/* Take up to max_items records (at least one, waiting for it as the deadline allows) as new
 * bytes in objs[] and their types in types[] (each with room for max_items): the count, or
 * -1 with the status in *rc (-1 with *rc SHMIPC_OK: an exception is set). The bytes are
 * sized by a lock-free look at the records (shmipc_ri_guess_next) and made first; the lock is
 * taken only to copy into them. A record whose length changed meanwhile ends the batch, or,
 * if it comes first, makes the call size its bytes again. */
static Py_ssize_t take_records(Port *self, Py_ssize_t max_items, int64_t deadline, int *rc,
                               PyObject **objs, uint32_t *types) {
    uint64_t cap = self->cap;
    *rc = SHMIPC_CLOSED;
    char *ring = enter(self); /* keeps the mapping while the GIL is let go below */
    if (!ring) return -1;
    uint64_t lens_stack[BATCH_STACK];
    char *dsts_stack[BATCH_STACK];
    uint64_t *lens = lens_stack;
    char **dsts = dsts_stack;
    if (max_items > BATCH_STACK) {
        lens = PyMem_Malloc((size_t)max_items * (sizeof *lens + sizeof *dsts));
        if (!lens) {
            leave(self);
            *rc = SHMIPC_OK;
            PyErr_NoMemory();
            return -1;
        }
        dsts = (char **)(lens + max_items);
    }
    Py_ssize_t k = 0, got = -1, i;
    for (;;) {
        /* Size the batch: records of fast types while they fit the ring (a record of
         * another type goes alone). None seen: take_into waits for one, then we look again. */
        uint64_t total = 0;
        if (k == 0) {
            uint64_t pos = UINT64_MAX;
            uint32_t ty;
            while (k < max_items && shmipc_ri_guess_next(ring, cap, &pos, &lens[k], &ty) ==
                                        SHMIPC_OK) {
                int fast = fast_type(self, ty);
                if ((!fast && k > 0) || total + lens[k] > cap) break;
                total += lens[k++];
                if (!fast) break;
            }
        } else {
            total = lens[0];
        }
        for (i = 0; i < k; i++) {
            if (!(objs[i] = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)lens[i]))) break;
            dsts[i] = PyBytes_AS_STRING(objs[i]);
        }
        if (i < k) { /* out of memory: nothing taken */
            while (i > 0) Py_DECREF(objs[--i]);
            *rc = SHMIPC_OK;
            break;
        }
        Py_ssize_t n = 0;
        *rc = SHMIPC_TIMEDOUT;
        if (total < BIG_COPY)
            *rc = take_into(ring, cap, SHMIPC_TRY_ONLY, dsts, lens, types, k, self->obj_type,
                            self->raw_type, &n);
        if (*rc == SHMIPC_TIMEDOUT || (*rc == SHMIPC_EMPTY && deadline != 0)) {
            Py_BEGIN_ALLOW_THREADS
            *rc = take_into(ring, cap, deadline, dsts, lens, types, k, self->obj_type,
                            self->raw_type, &n);
            Py_END_ALLOW_THREADS
        }
        for (i = *rc == SHMIPC_OK ? n : 0; i < k; i++) Py_DECREF(objs[i]); /* not taken */
        if (*rc == SHMIPC_OK) {
            got = n;
            break;
        }
        if (*rc != SHMIPC_NEEDBUF) break;
        k = 1; /* the next record's length is known now: lens[0] */
    }
    if (lens != lens_stack) PyMem_Free(lens);
    leave(self);
    return got;
}

/* Take the next record off the ring (waiting as the deadline allows): its payload as new
 * bytes, with its type in *type and *rc SHMIPC_OK; or NULL with the status in *rc (NULL with
 * *rc SHMIPC_OK: an exception is set, and the record stays the next one). */
static PyObject *take_record(Port *self, int64_t deadline, int *rc, uint32_t *type) {
    /* take_records' steps for one record, without its batch bookkeeping (this is get()'s
     * hot path): size by a lock-free look, make the bytes, lock only to copy in and retire. */
    *type = 0;
    if (raise_pending(self)) {
        *rc = SHMIPC_OK;
        return NULL;
    }
    uint64_t cap = self->cap, pos = UINT64_MAX, len = 0;
    uint32_t guessed;
    char *ring = enter(self); /* keeps the mapping while the GIL is let go below */
    if (!ring) {
        *rc = SHMIPC_CLOSED;
        return NULL;
    }
    Py_ssize_t k = shmipc_ri_guess_next(ring, cap, &pos, &len, &guessed) == SHMIPC_OK &&
                   len <= cap;
    if (!k && self->last_len && self->last_len < BIG_COPY) {
        /* Nothing there yet: make bytes of the last record's size before waiting, so that a
         * stream of equal sizes (a ping-pong) is copied straight in when its record comes;
         * another size answers NEEDBUF and is sized again below. */
        len = self->last_len;
        k = 1;
    }
    PyObject *payload = NULL;
    for (;;) {
        char *dst = NULL;
        if (k) {
            if (!(payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len))) {
                *rc = SHMIPC_OK; /* out of memory: nothing taken */
                break;
            }
            dst = PyBytes_AS_STRING(payload);
        }
        Py_ssize_t n = 0;
        *rc = SHMIPC_TIMEDOUT;
        if (!k || len < BIG_COPY)
            *rc = take_into(ring, cap, SHMIPC_TRY_ONLY, &dst, &len, type, k, self->obj_type,
                            self->raw_type, &n);
        if (*rc == SHMIPC_TIMEDOUT || (*rc == SHMIPC_EMPTY && deadline != 0)) {
            Py_BEGIN_ALLOW_THREADS
            *rc = take_into(ring, cap, deadline, &dst, &len, type, k, self->obj_type,
                            self->raw_type, &n);
            Py_END_ALLOW_THREADS
        }
        if (*rc == SHMIPC_OK) {
            self->last_len = len;
            break;
        }
        Py_CLEAR(payload); /* not taken */
        if (*rc != SHMIPC_NEEDBUF) break;
        k = 1; /* the next record's length is known now: len */
    }
    leave(self);
    return payload;
}

/* What a fast-path record becomes (steals payload): decoded if of obj_type and `decode` is
 * asked for and set, else the payload as it is. */
static PyObject *deliver(Port *self, PyObject *payload, uint32_t type, int decode) {
    if (type != self->obj_type || !decode || self->decode == Py_None) return payload;
    PyObject *obj = PyObject_CallOneArg(self->decode, payload);
    Py_DECREF(payload);
    if (!obj && PyErr_ExceptionMatches(PyExc_Exception)) self->undecodable++;
    return obj;
}

static PyObject *take_one(Port *self, PyObject *const *args, Py_ssize_t nargs, int decode) {
    int64_t deadline;
    if (arg_count(nargs, 1, "get(deadline_ns)") || shmipc_as_deadline(args[0], &deadline))
        return NULL;
    int rc;
    uint32_t type;
    PyObject *payload = take_record(self, deadline, &rc, &type);
    if (!payload) return rc == SHMIPC_OK ? NULL : miss(rc, 0, NULL);
    if (!fast_type(self, type)) return miss(SHMIPC_OK, type, payload);
    return deliver(self, payload, type, decode);
}

/* get(deadline_ns): the next record, decoded if of obj_type, as bytes if of raw_type. */
static PyObject *port_get(Port *self, PyObject *const *args, Py_ssize_t nargs) {
    return take_one(self, args, nargs, 1);
}

/* get_bytes(deadline_ns): the next record's payload as bytes, whether of obj or raw type. */
static PyObject *port_get_bytes(Port *self, PyObject *const *args, Py_ssize_t nargs) {
    return take_one(self, args, nargs, 0);
}

/* Decode the records of a retired batch in place (those is_obj marks, all if NULL). A record
 * that fails to decode never takes the others with it: it is counted and dropped, the valid
 * ones are returned in order, and its error is raised now if none was valid, else by the next
 * consumer call (raise_pending). Steals `out`. */
static PyObject *decode_batch(Port *self, PyObject *out, const unsigned char *is_obj) {
    Py_ssize_t count = PyList_GET_SIZE(out), kept = 0;
    PyObject *error = NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(out, i); /* ours from here: its slot is cleared */
        PyList_SET_ITEM(out, i, NULL);
        if (!is_obj || is_obj[i]) {
            PyObject *obj = PyObject_CallOneArg(self->decode, item);
            Py_DECREF(item);
            if (!obj) {
                if (PyErr_ExceptionMatches(PyExc_Exception)) self->undecodable++;
                PyObject *type, *value, *tb;
                PyErr_Fetch(&type, &value, &tb);
                PyErr_NormalizeException(&type, &value, &tb);
                if (value && tb) PyException_SetTraceback(value, tb);
                Py_XDECREF(type);
                Py_XDECREF(tb);
                if (!error)
                    error = value;
                else
                    Py_XDECREF(value);
                continue;
            }
            item = obj;
        }
        PyList_SET_ITEM(out, kept++, item);
    }
    Py_SET_SIZE(out, kept); /* slots kept.. are NULL: nothing to drop */
    if (!error) return out;
    if (kept == 0) {
        Py_DECREF(out);
        PyErr_SetObject((PyObject *)Py_TYPE(error), error);
        Py_DECREF(error);
        return NULL;
    }
    if (self->pending)
        Py_DECREF(error); /* one is waiting already; this one is counted */
    else
        self->pending = error;
    return out;
}

/* get_many(max_items, deadline_ns) -> list: at least one record (waiting for it as the
 * deadline allows), then those already there, up to max_items, under one lock and one
 * retire. Records of obj_type come out decoded, those of raw_type as bytes; a record of any
 * other type ends the batch before it, or, if it comes first, is handed over alone through
 * RingMiss. */
static PyObject *port_get_many(Port *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t deadline;
    if (arg_count(nargs, 2, "get_many(max_items, deadline_ns)") ||
        shmipc_as_deadline(args[1], &deadline))
        return NULL;
    Py_ssize_t max_items = PyLong_AsSsize_t(args[0]);
    if (max_items == -1 && PyErr_Occurred()) return NULL;
    if (max_items < 1) {
        PyErr_SetString(PyExc_ValueError, "max_items must be >= 1");
        return NULL;
    }
    if (raise_pending(self)) return NULL;
    uint64_t cap = self->cap;
    /* A record takes at least 8 bytes, so no batch holds more than cap / 8. */
    if ((uint64_t)max_items > cap / SHMIPC_REC_HEADER) max_items = (Py_ssize_t)(cap / 8);
    PyObject *objs_stack[BATCH_STACK];
    uint32_t types_stack[BATCH_STACK];
    PyObject **objs = objs_stack;
    uint32_t *types = types_stack;
    if (max_items > BATCH_STACK) {
        objs = PyMem_Malloc((size_t)max_items * (sizeof *objs + sizeof *types));
        if (!objs) return PyErr_NoMemory();
        types = (uint32_t *)(objs + max_items);
    }
    int rc;
    Py_ssize_t count = take_records(self, max_items, deadline, &rc, objs, types);
    PyObject *out = count < 1 ? NULL : PyList_New(count); /* no lock is held here */
    if (out) {
        for (Py_ssize_t i = 0; i < count; i++) PyList_SET_ITEM(out, i, objs[i]);
    } else {
        for (Py_ssize_t i = 0; i < count; i++) Py_DECREF(objs[i]);
    }
    uint32_t first_type = count > 0 ? types[0] : 0;
    if (out && self->decode != Py_None && fast_type(self, first_type)) {
        /* Each record decoded alone: a bad one is counted and raised later, never taking
         * the valid ones with it (decode_batch). types[] doubles as the map of which to. */
        unsigned char *is_obj = (unsigned char *)types;
        for (Py_ssize_t i = 0; i < count; i++) is_obj[i] = types[i] == self->obj_type;
        out = decode_batch(self, out, is_obj);
    }
    if (objs != objs_stack) PyMem_Free(objs);
    if (count < 1) return rc == SHMIPC_OK ? NULL : miss(rc, 0, NULL);
    if (out && !fast_type(self, first_type)) { /* taken alone: handed over through RingMiss */
        PyObject *payload = Py_NewRef(PyList_GET_ITEM(out, 0));
        Py_DECREF(out);
        return miss(SHMIPC_OK, first_type, payload);
    }
    return out;
}

/* ---- channel-level methods ------------------------------------------------------------
 *
 * The shape of multiprocessing.Queue's put/get: (obj, block=True, timeout=None). The channel
 * binds these as its instances' own put/put_bytes/get/get_bytes, so a message costs one
 * call from Python; every outcome but the fast one is handed to the channel's Python code
 * (slow_put / slow_get) with the status and the deadline it was given. */

/* Parse ([first,] block=True, timeout=None) into *first and an absolute deadline
 * (csrc/fastcall_args.h). */
static inline int parse_blocking(Port *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames, const shmipc_wait_sig *sig,
                                 PyObject **first, int64_t *deadline) {
    return shmipc_parse_wait(sig, self->deadline, args, nargs, kwnames, first, deadline);
}

static const shmipc_wait_sig SIG_PUT = {"put", "obj", 1}, SIG_PUT_BYTES = {"put_bytes", "obj", 1},
                             SIG_GET = {"get", NULL, 1}, SIG_GET_BYTES = {"get_bytes", NULL, 1},
                             SIG_RESERVE = {"reserve", "nbytes", 1}, SIG_PEEK = {"peek", NULL, 1},
                             SIG_PEEK_NEXT = {"peek_next", NULL, 1};

static int channel_ready(Port *self, const char *fname) {
    if (self->slow_put != Py_None && self->slow_get != Py_None && self->deadline != Py_None)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() needs a Port made with slow_put, slow_get and deadline",
                 fname);
    return -1;
}

static PyObject *call_slow_put(Port *self, int rc, PyObject *data, uint32_t type,
                               int64_t deadline) {
    PyObject *argv[4] = {PyLong_FromLong(rc), data, PyLong_FromUnsignedLong(type),
                         PyLong_FromLongLong(deadline)};
    PyObject *out = NULL;
    if (argv[0] && argv[2] && argv[3]) out = PyObject_Vectorcall(self->slow_put, argv, 4, NULL);
    Py_XDECREF(argv[0]);
    Py_XDECREF(argv[2]);
    Py_XDECREF(argv[3]);
    return out;
}

static PyObject *send_impl(Port *self, PyObject *obj, int framed, int64_t deadline) {
    PyObject *data = obj;
    uint32_t type = self->raw_type;
    if (framed && !(self->bytes_as_is && PyBytes_CheckExact(obj))) {
        data = PyObject_CallOneArg(self->encode, obj);
        if (!data) return NULL;
        type = self->obj_type;
    } else {
        Py_INCREF(data);
    }
    int rc = put_object(self, data, type, deadline);
    PyObject *out = rc == SHMIPC_OK ? Py_NewRef(Py_None)
                                    : call_slow_put(self, rc, data, type, deadline);
    Py_DECREF(data);
    return out;
}

/* send(obj, block=True, timeout=None): encode obj (an exact bytes object travels as is when
 * bytes_as_is) and put it; like Queue.put. */
static PyObject *port_send(Port *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames) {
    PyObject *obj;
    int64_t deadline;
    if (channel_ready(self, "put") ||
        parse_blocking(self, args, PyVectorcall_NARGS(nargs), kwnames, &SIG_PUT,
                       &obj, &deadline))
        return NULL;
    return send_impl(self, obj, 1, deadline);
}

/* send_bytes(obj, block=True, timeout=None): put a bytes-like payload as raw_type. */
static PyObject *port_send_bytes(Port *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames) {
    PyObject *obj;
    int64_t deadline;
    if (channel_ready(self, "put_bytes") ||
        parse_blocking(self, args, PyVectorcall_NARGS(nargs), kwnames, &SIG_PUT_BYTES,
                       &obj, &deadline))
        return NULL;
    return send_impl(self, obj, 0, deadline);
}

static PyObject *recv_impl(Port *self, int decode, int64_t deadline) {
    int rc;
    uint32_t type;
    PyObject *payload = take_record(self, deadline, &rc, &type);
    if (!payload && rc == SHMIPC_OK) return NULL;
    if (payload && fast_type(self, type)) return deliver(self, payload, type, decode);
    PyObject *argv[5] = {PyLong_FromLong(rc), PyLong_FromUnsignedLong(type),
                         payload ? payload : Py_NewRef(Py_None), PyLong_FromLongLong(deadline),
                         decode ? Py_True : Py_False};
    PyObject *out = NULL;
    if (argv[0] && argv[1] && argv[3]) out = PyObject_Vectorcall(self->slow_get, argv, 5, NULL);
    for (int i = 0; i < 4; i++) Py_XDECREF(argv[i]);
    return out;
}

/* recv(block=True, timeout=None): the next message, decoded; like Queue.get. */
static PyObject *port_recv(Port *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames) {
    int64_t deadline;
    if (channel_ready(self, "get") ||
        parse_blocking(self, args, PyVectorcall_NARGS(nargs), kwnames, &SIG_GET,
                       NULL, &deadline))
        return NULL;
    return recv_impl(self, 1, deadline);
}

/* recv_bytes(block=True, timeout=None): the next message's payload, undecoded. */
static PyObject *port_recv_bytes(Port *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames) {
    int64_t deadline;
    if (channel_ready(self, "get_bytes") ||
        parse_blocking(self, args, PyVectorcall_NARGS(nargs), kwnames, &SIG_GET_BYTES,
                       NULL, &deadline))
        return NULL;
    return recv_impl(self, 0, deadline);
}

/* ---- the Port type ---------------------------------------------------------------------- */

static PyObject *port_close(Port *self, PyObject *unused) {
    /* Later calls answer SHMIPC_CLOSED. A call inside the ring now (another thread, waiting
     * with the GIL let go) keeps its own copy of the address and the mapping with it: the
     * export is dropped by the last such call to leave, or here if there is none. */
    self->ring = NULL;
    if (self->inflight == 0) drop_lease(self);
    /* Claims of live threads stay, to be given back (commit aborts, release unpeeks); those
     * of threads that ended holding one are dropped with what their views pin. */
    claims_purge_dead(self);
    Py_RETURN_NONE;
}

static int port_init(Port *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"mapping",  "offset",   "cap",      "decode",
                             "obj_type", "raw_type", "encode",   "deadline",
                             "slow_put", "slow_get", "bytes_as_is", "slow_zc", NULL};
    PyObject *mapping, *decode, *encode = Py_None, *deadline = Py_None;
    PyObject *slow_put = Py_None, *slow_get = Py_None, *slow_zc = Py_None;
    PyObject *offset_obj, *cap_obj, *obj_type_obj, *raw_type_obj;
    int bytes_as_is = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO|$OOOOpO", kwlist, &mapping,
                                     &offset_obj, &cap_obj, &decode, &obj_type_obj,
                                     &raw_type_obj, &encode, &deadline, &slow_put, &slow_get,
                                     &bytes_as_is, &slow_zc))
        return -1;
    if (self->ring || self->lease.obj || self->inflight) {
        PyErr_SetString(PyExc_TypeError, "a Port is initialised once");
        return -1;
    }
    if (!PyLong_Check(offset_obj) || !PyLong_Check(cap_obj)) {
        PyErr_SetString(PyExc_TypeError, "Port's offset and cap must be ints");
        return -1;
    }
    unsigned long long cap = PyLong_AsUnsignedLongLong(cap_obj);
    if (cap == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    Py_ssize_t offset = PyLong_AsSsize_t(offset_obj);
    if (offset == -1 && PyErr_Occurred()) return -1;
    uint32_t obj_type, raw_type;
    if (as_type(obj_type_obj, &obj_type) || as_type(raw_type_obj, &raw_type)) return -1;
    if (cap < 64 || (cap & (cap - 1)) || cap > ((unsigned long long)1 << 40)) {
        PyErr_SetString(PyExc_ValueError, "Port needs a ring's power-of-two capacity");
        return -1;
    }
    PyObject *callables[] = {decode, encode, deadline, slow_put, slow_get, slow_zc};
    for (size_t i = 0; i < sizeof callables / sizeof *callables; i++) {
        if (callables[i] != Py_None && !PyCallable_Check(callables[i])) {
            PyErr_SetString(PyExc_TypeError,
                            "decode, encode, deadline, slow_put, slow_get and slow_zc must be "
                            "callable or None");
            return -1;
        }
    }
    if (encode == Py_None && slow_put != Py_None) {
        PyErr_SetString(PyExc_TypeError, "a Port with slow_put needs encode");
        return -1;
    }
    /* The export pins the mapping (an mmap refuses to close, and cannot be freed, while it
     * is exported) for as long as this port may touch it. */
    Py_buffer lease;
    if (PyObject_GetBuffer(mapping, &lease, PyBUF_WRITABLE) < 0) return -1;
    if (offset < 0 || offset % 64 ||
        (unsigned long long)lease.len < (unsigned long long)offset + SHMIPC_RING_HEADER_SIZE ||
        (unsigned long long)lease.len - (unsigned long long)offset - SHMIPC_RING_HEADER_SIZE <
            cap) {
        PyBuffer_Release(&lease);
        PyErr_SetString(PyExc_ValueError,
                        "Port's ring (offset, control block and cap) does not fit its mapping");
        return -1;
    }
    self->lease = lease;
    self->ring = (char *)lease.buf + offset;
    self->cap = cap;
    Py_XSETREF(self->decode, Py_NewRef(decode));
    Py_XSETREF(self->encode, Py_NewRef(encode));
    Py_XSETREF(self->deadline, Py_NewRef(deadline));
    Py_XSETREF(self->slow_put, Py_NewRef(slow_put));
    Py_XSETREF(self->slow_get, Py_NewRef(slow_get));
    Py_XSETREF(self->slow_zc, Py_NewRef(slow_zc));
    self->claims = self->claims_inline;
    self->claims_cap = sizeof self->claims_inline / sizeof *self->claims_inline;
    self->obj_type = obj_type;
    self->raw_type = raw_type;
    self->bytes_as_is = bytes_as_is;
    return 0;
}

static int port_traverse(Port *self, visitproc visit, void *arg) {
    Py_VISIT(self->pending);
    Py_VISIT(self->decode);
    Py_VISIT(self->encode);
    Py_VISIT(self->deadline);
    Py_VISIT(self->slow_put);
    Py_VISIT(self->slow_get);
    Py_VISIT(self->slow_zc);
    for (int side = 0; side < 2; side++) {
        Py_VISIT(self->own[side].mv);
        Py_VISIT(self->own[side].view);
    }
    for (Py_ssize_t i = 0; i < self->nclaims; i++) {
        Py_VISIT(self->claims[i].mv);
        Py_VISIT(self->claims[i].view);
    }
    for (int i = 0; i < self->nkept; i++) {
        Py_VISIT(self->kept[i].mv);
        Py_VISIT(self->kept[i].view);
    }
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int port_clear(Port *self) {
    Py_CLEAR(self->pending);
    Py_CLEAR(self->decode);
    Py_CLEAR(self->encode);
    Py_CLEAR(self->deadline);
    Py_CLEAR(self->slow_put);
    Py_CLEAR(self->slow_get);
    Py_CLEAR(self->slow_zc);
    kept_drop_all(self);
    claims_drop_all(self);
    return 0;
}

static void port_dealloc(Port *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    port_clear(self);
    self->ring = NULL;
    drop_lease(self); /* no call is inside: each holds a reference to the port */
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* The zero-copy calls (defined after the View type, below). */
static PyObject *port_reserve(Port *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames);
static PyObject *port_try_reserve(Port *self, PyObject *const *args, Py_ssize_t nargs);
static PyObject *port_commit(Port *self, PyObject *unused);
static PyObject *port_abort(Port *self, PyObject *unused);
static PyObject *port_peek(Port *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames);
static PyObject *port_peek_next(Port *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames);
static PyObject *port_try_peek(Port *self, PyObject *const *args, Py_ssize_t nargs);
static PyObject *port_release(Port *self, PyObject *unused);
static PyObject *port_let_go(Port *self, PyObject *unused);
static PyObject *port_holds_claim(Port *self, PyObject *unused);

static PyMethodDef port_methods[] = {
    {"reserve", (PyCFunction)(void (*)(void))port_reserve, METH_FASTCALL | METH_KEYWORDS,
     "reserve($self, /, nbytes, block=True, timeout=None)\n--\n\nQueue.reserve in one call."},
    {"try_reserve", (PyCFunction)(void (*)(void))port_try_reserve, METH_FASTCALL,
     "try_reserve(nbytes, deadline_ns) -> memoryview, or the status as an int"},
    {"commit", (PyCFunction)port_commit, METH_NOARGS,
     "commit($self, /)\n--\n\nQueue.commit in one call."},
    {"abort", (PyCFunction)port_abort, METH_NOARGS,
     "abort($self, /)\n--\n\nQueue.abort in one call."},
    {"peek", (PyCFunction)(void (*)(void))port_peek, METH_FASTCALL | METH_KEYWORDS,
     "peek($self, /, block=True, timeout=None)\n--\n\nQueue.peek in one call."},
    {"peek_next", (PyCFunction)(void (*)(void))port_peek_next, METH_FASTCALL | METH_KEYWORDS,
     "peek_next($self, /, block=True, timeout=None)\n--\n\nQueue.peek_next in one call."},
    {"try_peek", (PyCFunction)(void (*)(void))port_try_peek, METH_FASTCALL,
     "try_peek(deadline_ns) -> memoryview, or (status, record type)"},
    {"release", (PyCFunction)port_release, METH_NOARGS,
     "release($self, /)\n--\n\nQueue.release in one call."},
    {"let_go", (PyCFunction)port_let_go, METH_NOARGS,
     "Abort this thread's reservation and unpeek its peek (BufferError, nothing changed, "
     "while a view of either is exported)."},
    {"holds_claim", (PyCFunction)port_holds_claim, METH_NOARGS,
     "Whether this thread holds a reservation or a peeked record through this port."},
    {"put", (PyCFunction)(void (*)(void))port_put, METH_FASTCALL,
     "put(data, type, deadline_ns) -> status"},
    {"put_many", (PyCFunction)(void (*)(void))port_put_many, METH_FASTCALL,
     "put_many(frames, start, type, deadline_ns) -> count or -status"},
    {"first_not_bytes", (PyCFunction)(void (*)(void))port_first_not_bytes, METH_FASTCALL,
     "first_not_bytes(items, start) -> index"},
    {"get", (PyCFunction)(void (*)(void))port_get, METH_FASTCALL,
     "get(deadline_ns) -> object; RingMiss otherwise"},
    {"get_bytes", (PyCFunction)(void (*)(void))port_get_bytes, METH_FASTCALL,
     "get_bytes(deadline_ns) -> bytes; RingMiss otherwise"},
    {"get_many", (PyCFunction)(void (*)(void))port_get_many, METH_FASTCALL,
     "get_many(max_items, deadline_ns) -> list; RingMiss otherwise"},
    {"send", (PyCFunction)(void (*)(void))port_send, METH_FASTCALL | METH_KEYWORDS,
     "send($self, /, obj, block=True, timeout=None)\n--\n\nQueue.put in one call."},
    {"send_bytes", (PyCFunction)(void (*)(void))port_send_bytes, METH_FASTCALL | METH_KEYWORDS,
     "send_bytes($self, /, obj, block=True, timeout=None)\n--\n\nQueue.put_bytes in one call."},
    {"recv", (PyCFunction)(void (*)(void))port_recv, METH_FASTCALL | METH_KEYWORDS,
     "recv($self, /, block=True, timeout=None)\n--\n\nQueue.get in one call."},
    {"recv_bytes", (PyCFunction)(void (*)(void))port_recv_bytes, METH_FASTCALL | METH_KEYWORDS,
     "recv_bytes($self, /, block=True, timeout=None)\n--\n\nQueue.get_bytes in one call."},
    {"close", (PyCFunction)port_close, METH_NOARGS,
     "Refuse every later call; let go of the mapping once no call is inside it."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef port_members[] = {
    {"undecodable", T_PYSSIZET, offsetof(Port, undecodable), 0,
     "records this port took off the ring that failed to decode"},
    {"inflight", T_PYSSIZET, offsetof(Port, inflight), READONLY,
     "calls inside the ring now"},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot port_slots[] = {
    {Py_tp_doc, "A ring's hot paths: Port(mapping, offset, cap, decode, obj_type, raw_type)."},
    {Py_tp_members, port_members},
    {Py_tp_init, port_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_methods, port_methods},
    {Py_tp_traverse, port_traverse},
    {Py_tp_clear, port_clear},
    {Py_tp_dealloc, port_dealloc},
    {0, NULL},
};

static PyType_Spec port_spec = {
    .name = "shmipc._native_ext.Port",
    .basicsize = sizeof(Port),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = port_slots,
};

/* ---- the View type -----------------------------------------------------------------------
 *
 * View(mapping, offset, length, readonly): the exporter behind the memoryview Ring.reserve
 * and Ring.peek hand out. It pins the mapping with an export of its own, and counts the
 * exports made from it, as mmap does: every memoryview, slice, PickleBuffer or numpy array
 * made from the view holds one (a memoryview and its slices share one). retire() refuses
 * (BufferError) while any is alive, else ends the view for good: the ring calls it before it
 * commits, aborts, releases or unpeeks the record, so no view outlives its record and none
 * ever shows a later record's bytes. */

typedef struct {
    PyObject_HEAD
    Py_buffer src;      /* the export pinning the mapping (src.obj NULL once retired) */
    char *buf;          /* the record's bytes; NULL once retired */
    Py_ssize_t len;
    int readonly;
    Py_ssize_t exports; /* buffers handed out and not yet released */
} View;

static int view_setup(View *self, PyObject *mapping, Py_ssize_t offset, Py_ssize_t length,
                      int readonly) {
    if (self->src.obj || self->exports) {
        PyErr_SetString(PyExc_TypeError, "a View is initialised once");
        return -1;
    }
    Py_buffer src;
    if (PyObject_GetBuffer(mapping, &src, readonly ? PyBUF_SIMPLE : PyBUF_WRITABLE) < 0)
        return -1;
    if (offset < 0 || length < 0 || offset > src.len || length > src.len - offset) {
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_ValueError, "View's range does not fit its mapping");
        return -1;
    }
    self->src = src;
    self->buf = (char *)src.buf + offset;
    self->len = length;
    self->readonly = readonly;
    return 0;
}

static int view_init(View *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"mapping", "offset", "length", "readonly", NULL};
    PyObject *mapping;
    Py_ssize_t offset, length;
    int readonly;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Onnp", kwlist, &mapping, &offset, &length,
                                     &readonly))
        return -1;
    return view_setup(self, mapping, offset, length, readonly);
}

/* View.memoryview(mapping, offset, length, readonly) -> memoryview: a new View and the one
 * memoryview handed out over it (its exporter is mv.obj), in one call: the zero-copy paths'
 * per-record cost. */
static PyObject *view_memoryview(PyObject *cls, PyObject *const *args, Py_ssize_t nargs) {
    if (arg_count(nargs, 4, "View.memoryview(mapping, offset, length, readonly)")) return NULL;
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    if (offset == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t length = PyLong_AsSsize_t(args[2]);
    if (length == -1 && PyErr_Occurred()) return NULL;
    int readonly = PyObject_IsTrue(args[3]);
    if (readonly < 0) return NULL;
    PyTypeObject *tp = (PyTypeObject *)cls;
    View *self = (View *)tp->tp_alloc(tp, 0);
    if (!self) return NULL;
    PyObject *mv = NULL;
    if (view_setup(self, args[0], offset, length, readonly) == 0)
        mv = PyMemoryView_FromObject((PyObject *)self);
    Py_DECREF(self); /* the memoryview's export keeps it */
    return mv;
}

static int view_getbuffer(View *self, Py_buffer *view, int flags) {
    if (!self->buf) {
        PyErr_SetString(PyExc_BufferError,
                        "this view's record was committed, aborted or released: the view is "
                        "no longer valid");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->buf, self->len, self->readonly, flags) <
        0)
        return -1;
    self->exports++;
    return 0;
}

static void view_releasebuffer(View *self, Py_buffer *view) {
    self->exports--;
}

/* The check half of retire: how many holds on the view's bytes there are besides `mv` (the
 * memoryview made from it, or None), with *live set to mv if it still needs releasing (else
 * NULL); -1 with an exception for an mv that is not this view's. Changes nothing. */
static Py_ssize_t view_others(View *self, PyObject *mv, PyMemoryViewObject **live) {
    Py_ssize_t others = self->exports;
    *live = NULL;
    if (mv != Py_None) {
        if (!PyMemoryView_Check(mv)) {
            PyErr_SetString(PyExc_TypeError, "retire() takes a memoryview or None");
            return -1;
        }
        PyMemoryViewObject *m = (PyMemoryViewObject *)mv;
        if ((m->flags & _Py_MEMORYVIEW_RELEASED) || !m->mbuf) {
            /* released before (or cleared by the GC): it holds nothing */
        } else if (m->mbuf->master.obj != (PyObject *)self) {
            PyErr_SetString(PyExc_ValueError, "retire() was given another object's memoryview");
            return -1;
        } else {
            /* mv's managed buffer holds one export of ours, shared by every memoryview
             * registered on it (mbuf->exports of them); mv->exports counts its own. */
            others = self->exports - 1 + (m->mbuf->exports - 1) + m->exports;
            *live = m;
        }
    }
    return others;
}

static int view_in_use(void) {
    PyErr_SetString(PyExc_BufferError,
                    "a view of this record is still in use (a memoryview slice, a "
                    "PickleBuffer, a numpy array, ...): drop it and call again");
    return -1;
}

/* memoryview.release itself (found at install), called without a method lookup. */
static PyCFunction memoryview_release;

/* The end half of retire, once view_others found no other hold: release `live` (or NULL) and
 * refuse every later export. The export pinning the mapping is let go too, unless keep_src
 * (the port still touches the ring through it, then recycles the View or lets it go). -1
 * with an exception (nothing ended). Runs no Python code but the memoryview's own release. */
static int view_end(View *self, PyMemoryViewObject *live, int keep_src) {
    if (live) {
        PyObject *r;
        if (memoryview_release) {
            r = memoryview_release((PyObject *)live, NULL);
        } else {
            static PyObject *release_name;
            if (!release_name && !(release_name = PyUnicode_InternFromString("release")))
                return -1;
            r = PyObject_CallMethodNoArgs((PyObject *)live, release_name);
        }
        if (!r) return -1;
        Py_DECREF(r);
    }
    if (self->exports > 0) /* cannot happen after view_others; never retire under one */
        return view_in_use();
    self->buf = NULL;
    if (!keep_src && self->src.obj) PyBuffer_Release(&self->src);
    return 0;
}

/* retire(mv): end the view, first releasing `mv` (the memoryview made from it, or None).
 * BufferError, with nothing changed (mv still usable), while anything else holds the bytes:
 * an export of mv itself (a PickleBuffer, a numpy array), another memoryview sharing mv's
 * buffer (a slice, memoryview(mv)) or any other export of this view. */
static PyObject *view_retire(View *self, PyObject *mv) {
    PyMemoryViewObject *live;
    Py_ssize_t others = view_others(self, mv, &live);
    if (others < 0) return NULL;
    if (others > 0) return view_in_use(), NULL;
    if (view_end(self, live, 0) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *view_get_exports(View *self, void *closure) {
    return PyLong_FromSsize_t(self->exports);
}

static void view_dealloc(View *self) {
    PyTypeObject *tp = Py_TYPE(self);
    if (self->src.obj) PyBuffer_Release(&self->src); /* no export is alive: each refers to us */
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef view_methods[] = {
    {"memoryview", (PyCFunction)(void (*)(void))view_memoryview, METH_FASTCALL | METH_CLASS,
     "memoryview($cls, mapping, offset, length, readonly, /)\n--\n\nA new View over "
     "mapping[offset:offset + length] and the memoryview handed out over it."},
    {"retire", (PyCFunction)view_retire, METH_O,
     "retire($self, mv, /)\n--\n\nRelease mv (the memoryview made from this view, or None) "
     "and end the view; BufferError, nothing changed, while anything else holds its bytes."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef view_getset[] = {
    {"exports", (getter)view_get_exports, NULL, "buffers made from this view still alive", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot view_slots[] = {
    {Py_tp_doc, "The exporter of a reserved or peeked record: View(mapping, offset, length, "
                "readonly)."},
    {Py_tp_init, view_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, view_dealloc},
    {Py_tp_methods, view_methods},
    {Py_tp_getset, view_getset},
    {Py_bf_getbuffer, view_getbuffer},
    {Py_bf_releasebuffer, view_releasebuffer},
    {0, NULL},
};

static PyType_Spec view_spec = {
    .name = "shmipc._native_ext.View",
    .basicsize = sizeof(View),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = view_slots,
};

/* ---- zero-copy calls on the Port ---------------------------------------------------------
 *
 * Queue.reserve/commit/abort and peek/release, one call each, waiting as put/get do: a first
 * try holding the GIL; only if that would wait, the GIL is let go and csrc/ring.c spins, then
 * sleeps (SHMIPC_TRY_ONLY, then the caller's deadline). The ring side is csrc/ring.c's
 * reserve/commit/abort and peek/release/unpeek unchanged, so the claims protocol of
 * csrc/claim.c (register and park at reserve, unpark at commit/abort, revocation,
 * quarantine) is exactly the one the Ring's own calls follow.
 *
 * A claim (a reservation, or a peeked record) belongs to the thread that made it, as the
 * side lock it holds does: the port keeps (thread identity, side) -> the claim's own copy of
 * the ring's address, the memoryview handed out, its View and its length. A second claim of
 * one side in one port exists only after the first was revoked or its thread died, so the
 * table is nearly always empty or one entry; claims of threads that ended are dropped when
 * the table is full and at close().
 *
 * Order of commit, abort and release, every time: check the view's exports (BufferError,
 * nothing changed); end the view (no later export, the memoryview released); take the claim
 * off the port; touch the ring through the claim's address while still holding the view's
 * export of the mapping (so the memory is mapped whatever else let go); only then drop that
 * export. A claim outlives close(): commit then aborts, release unpeeks, and the slow path
 * raises Closed, so a side lock is never left to a holder that can no longer let go.
 * Anything but the fast outcome goes to slow_zc(op, status, arg, deadline) in Python: the
 * retries between wait slices, the liveness passes, and every error.
 */
enum { ZC_RESERVE, ZC_COMMIT, ZC_ABORT, ZC_PEEK, ZC_RELEASE };

static PyTypeObject *ViewType;

static inline Claim *claim_find(Port *self, uint64_t me, int producer) {
    if (self->own[producer].owner == me) return &self->own[producer];
    for (Py_ssize_t i = 0; i < self->nclaims; i++)
        if (self->claims[i].owner == me && self->claims[i].producer == producer)
            return &self->claims[i];
    return NULL;
}

/* Take claim c off the port: its references go to *out. */
static inline void claim_take(Port *self, Claim *c, Claim *out) {
    *out = *c;
    if (c == &self->own[0] || c == &self->own[1]) {
        c->owner = 0;
        c->mv = c->view = NULL;
    } else {
        *c = self->claims[--self->nclaims];
    }
}

static void claim_drop(Claim *c) {
    Py_XDECREF(c->mv); /* may run code (a finalizer): the claim is off the port already */
    Py_XDECREF(c->view);
}

/* Drop the claims of threads that have ended (their ring side is taken over as any dead
 * holder's is, by a liveness pass): whatever their views pin is let go. */
static void claims_purge_dead(Port *self) {
    for (int side = 0; side < 2; side++) {
        if (!self->own[side].owner || shmipc_identity_alive(self->own[side].owner)) continue;
        Claim dead;
        claim_take(self, &self->own[side], &dead);
        claim_drop(&dead); /* may run code: the claim is off the port already */
    }
    for (Py_ssize_t i = 0; i < self->nclaims;) {
        if (shmipc_identity_alive(self->claims[i].owner)) {
            i++;
            continue;
        }
        Claim dead;
        claim_take(self, &self->claims[i], &dead);
        claim_drop(&dead);
        i = 0; /* the drop may have run code that changed the table */
    }
}

static void claims_drop_all(Port *self) {
    for (int side = 0; side < 2; side++) {
        if (!self->own[side].owner) continue;
        Claim c;
        claim_take(self, &self->own[side], &c);
        claim_drop(&c);
    }
    while (self->nclaims > 0) {
        Claim c;
        claim_take(self, &self->claims[self->nclaims - 1], &c);
        claim_drop(&c);
    }
    if (self->claims && self->claims != self->claims_inline) {
        PyMem_Free(self->claims);
        self->claims = self->claims_inline;
        self->claims_cap = sizeof self->claims_inline / sizeof *self->claims_inline;
    }
}

/* Add a claim (its references are the table's from here): -1 with MemoryError. */
static int claim_add_slow(Port *self, const Claim *c) {
    if (self->nclaims == self->claims_cap && self->nclaims > 0) claims_purge_dead(self);
    if (self->nclaims == self->claims_cap) {
        Py_ssize_t cap = self->claims_cap ? 2 * self->claims_cap : 2;
        Claim *block = PyMem_Malloc((size_t)cap * sizeof *block);
        if (!block) {
            PyErr_NoMemory();
            return -1;
        }
        if (self->nclaims) memcpy(block, self->claims, (size_t)self->nclaims * sizeof *block);
        if (self->claims != self->claims_inline) PyMem_Free(self->claims);
        self->claims = block;
        self->claims_cap = cap;
    }
    self->claims[self->nclaims++] = *c;
    return 0;
}

static inline int claim_add(Port *self, const Claim *c) {
    if (!self->own[c->producer].owner) {
        self->own[c->producer] = *c;
        return 0;
    }
    if (self->nclaims >= self->claims_cap) return claim_add_slow(self, c);
    self->claims[self->nclaims++] = *c;
    return 0;
}

/* ---- memoryviews kept for reuse: the soft release ----------------------------------------
 *
 * Making a memoryview for a claim (its managed buffer, the View's export, GC tracking) and
 * freeing it after costs ~700 instructions, more than the ring work of the claim. So the port
 * keeps the memoryviews it handed out and points them at later claims' bytes, and no view ever
 * shows a record after its claim ended. What this relies on, from CPython's
 * Objects/memoryobject.c (3.11, unchanged in what is used here from 3.10 to 3.13):
 *   - A memoryview m shares a managed buffer b (m->mbuf) with every view registered on it
 *     (b->exports of them: m, its slices, memoryview(m), casts). b->master is the export b
 *     took from the exporter (our View) when it was made; b->master.obj holds a reference to
 *     the View. m->view is m's own copy (buf, len, shape[0], readonly; view.obj is borrowed).
 *   - m.release() (_memory_release) refuses while m->exports > 0 (buffers taken from m); else
 *     sets _Py_MEMORYVIEW_RELEASED on m, and if --b->exports reaches 0 calls mbuf_release(b):
 *     _Py_MANAGED_BUFFER_RELEASED on b, b untracked from the GC, b->master released (the
 *     View's export count and reference dropped).
 *   - Every use of m checks BASE_INACCESSIBLE(m) (RELEASED on m or on b) first and raises
 *     ValueError ("operation forbidden on released memoryview object"): len(), indexing,
 *     slicing, assignment, any buffer request (bytes(m), memoryview(m), struct, numpy),
 *     m.obj, tobytes/tolist/hex/cast/toreadonly, iteration (each step), and again after any
 *     callback that could release it (CHECK_RELEASED_AGAIN, gh-92888). Comparing a released
 *     view is identity; its repr says released; a hash cached before is returned without
 *     reading memory (reset here when the view is pointed elsewhere).
 *   - memory_dealloc asserts m->exports == 0, calls _memory_release (a no-op once RELEASED)
 *     and drops b; mbuf_dealloc asserts b->exports == 0 and calls mbuf_release, which
 *     releases b->master unless b is RELEASED already. memory_clear (the GC) is the same
 *     minus the free, and leaves m->mbuf NULL.
 * Soft release, at commit/abort/release once view_others found no other hold on the bytes
 * (so m->exports == 0 and b->exports == 1): RELEASED set on m and b->exports = 0, exactly the
 * first half of m.release(), without mbuf_release: b keeps its export of the View. From then on
 * m refuses every use, whoever holds it, as a released view does. The port keeps m (kept[]).
 * Once the port's reference is m's only one (the holder dropped it; no weak reference), nobody
 * can reach m again: the port undoes the flag (RELEASED off, b->exports = 1, the state
 * m.release() started from, all of whose asserts hold) and points b->master, m->view and the
 * View at the next claim's bytes before handing m out again. A soft-released m deallocated
 * (the port let go of it and nobody else held it) skips _memory_release; mbuf_dealloc finds
 * b->exports == 0 and releases the master: the View's export and reference are dropped, as
 * after a normal release. A soft-released m the port stops keeping while another reference
 * exists (evicted from a full kept[], or the port closing) is released for real first (undo,
 * then m.release()), so that it pins neither the View nor the mapping.
 * Every internal field is checked before it is relied on (plain_mbuf, kept_reusable), and
 * anything unexpected (a weak reference, a view released by its holder, a GC-cleared one)
 * takes the plain path: a normal release, and a new memoryview next time. All of it runs
 * under the GIL with no Python code in between; references are dropped last (a weak
 * reference's callback may run then).
 */

/* m's managed buffer if m is a plain one-dimensional bytes view over View v made by
 * PyMemoryView_FromObject (as make_view makes them), its buffer not released; else NULL. */
static _PyManagedBufferObject *plain_mbuf(PyMemoryViewObject *m, View *v) {
    _PyManagedBufferObject *b = m->mbuf;
    if (!b || b->master.obj != (PyObject *)v || (b->flags & _Py_MANAGED_BUFFER_RELEASED) ||
        (b->master.shape && b->master.shape != &b->master.len) || m->view.ndim != 1 ||
        m->view.itemsize != 1 || m->view.shape != m->ob_array || m->view.strides[0] != 1 ||
        m->view.suboffsets != NULL)
        return NULL;
    return b;
}

/* Whether kept memoryview k can be handed out for [offset, offset + len) of the mapping: the
 * port's references to it and its View are their only ones (no weak reference either), and it
 * is still as the soft release left it. Its shape (plain_mbuf) was checked before it was kept:
 * CPython never changes an existing view's dimensions, format, shape or strides pointers, nor
 * its managed buffer's exporter; what can change (references, the GC clearing it: mbuf NULL,
 * the flags) is checked here. */
static inline int kept_reusable(Port *self, struct Kept *k, Py_ssize_t offset, Py_ssize_t len) {
    PyMemoryViewObject *m = (PyMemoryViewObject *)k->mv;
    View *v = (View *)k->view;
    _PyManagedBufferObject *b = m->mbuf;
    return Py_REFCNT(m) == 1 && m->weakreflist == NULL && b && Py_REFCNT(b) == 1 &&
           (m->flags & _Py_MEMORYVIEW_RELEASED) && m->exports == 0 && b->exports == 0 &&
           !(b->flags & _Py_MANAGED_BUFFER_RELEASED) && b->master.obj == (PyObject *)v &&
           Py_REFCNT(v) == 2 && v->exports == 1 && v->src.obj == self->lease.obj &&
           offset >= 0 && len <= v->src.len - offset;
}

/* Undo kept memoryview m's soft release and point it (and its View) at len bytes at buf. */
static void kept_retarget(PyMemoryViewObject *m, View *v, char *buf, Py_ssize_t len,
                          int readonly) {
    _PyManagedBufferObject *b = m->mbuf;
    v->buf = m->view.buf = b->master.buf = buf;
    v->len = m->view.len = b->master.len = len;
    m->view.shape[0] = len;
    v->readonly = m->view.readonly = b->master.readonly = readonly;
    m->hash = -1;
    b->exports = 1;
    m->flags &= ~_Py_MEMORYVIEW_RELEASED;
}

/* memoryview.release() on m: 0, or -1 with an exception. Runs no Python code. */
static int mv_release(PyObject *m) {
    PyObject *r;
    if (memoryview_release) {
        r = memoryview_release(m, NULL);
    } else {
        static PyObject *release_name;
        if (!release_name && !(release_name = PyUnicode_InternFromString("release"))) return -1;
        r = PyObject_CallMethodNoArgs(m, release_name);
    }
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* Let go of ended View v (a reference the caller gives up): kept for the next claims with its
 * export of the mapping if nothing else refers to it and the port is open, else its export
 * is let go (the ring is not touched through it after this) and the reference dropped. */
static void view_let_go(Port *self, View *v) {
    if (Py_REFCNT(v) == 1 && self->ring && v->src.obj && v->src.obj == self->lease.obj &&
        v->exports == 0 && self->nspare < (int)(sizeof self->spare / sizeof *self->spare)) {
        v->buf = NULL;
        self->spare[self->nspare++] = (PyObject *)v;
        return;
    }
    v->buf = NULL;
    if (v->src.obj && v->exports == 0) PyBuffer_Release(&v->src);
    Py_DECREF(v);
}

/* Let go of a kept memoryview and its View (references the caller took off kept[]): one that
 * someone else still holds is released for real first (it then pins nothing); the port's
 * reference is dropped (which may run code: a weak reference's callback). */
static void kept_let_go(Port *self, struct Kept *k) {
    PyMemoryViewObject *m = (PyMemoryViewObject *)k->mv;
    View *v = (View *)k->view;
    _PyManagedBufferObject *b = m->mbuf;
    if (Py_REFCNT(m) > 1 && b && (m->flags & _Py_MEMORYVIEW_RELEASED) && b->exports == 0 &&
        b->master.obj == (PyObject *)v && !(b->flags & _Py_MANAGED_BUFFER_RELEASED)) {
        b->exports = 1; /* back to the state m.release() starts from */
        m->flags &= ~_Py_MEMORYVIEW_RELEASED;
        if (mv_release((PyObject *)m) < 0) { /* cannot fail: m->exports is 0 */
            m->flags |= _Py_MEMORYVIEW_RELEASED;
            b->exports = 0;
            PyErr_WriteUnraisable((PyObject *)m);
        }
    }
    Py_DECREF(m);
    view_let_go(self, v);
}

static void kept_drop_all(Port *self) {
    while (self->nkept > 0) { /* one at a time: a drop may run code that uses the port */
        struct Kept k = self->kept[--self->nkept];
        kept_let_go(self, &k);
    }
}

/* End claim c's view for a commit/abort/release, the View keeping its export that pins the
 * mapping for the ring call that follows (claim_finish lets go of it): -1 (BufferError,
 * nothing changed) while anything but the handed-out memoryview holds the bytes. *soft: the
 * memoryview was soft-released, to be kept; else it was released for real (or by its holder
 * before). Either way no later use of it, nor any export of the View, reaches the ring. */
static inline int claim_end_view(Port *self, Claim *c, int *soft) {
    View *v = (View *)c->view;
    PyMemoryViewObject *m = (PyMemoryViewObject *)c->mv;
    _PyManagedBufferObject *b = m->mbuf;
    *soft = 0;
    if (c->plain && b && !(m->flags & _Py_MEMORYVIEW_RELEASED) && b->master.obj == (PyObject *)v &&
        !(b->flags & _Py_MANAGED_BUFFER_RELEASED)) {
        /* view_others' count: the View's exports besides b's, other views on b, and m's own */
        if (v->exports - 1 + (b->exports - 1) + m->exports > 0) return view_in_use();
        if (m->weakreflist == NULL && self->ring) {
            /* m->exports == 0, b->exports == 1, v->exports == 1: release m softly */
            m->flags |= _Py_MEMORYVIEW_RELEASED;
            b->exports = 0;
            v->buf = NULL;
            *soft = 1;
            return 0;
        }
    }
    PyMemoryViewObject *live;
    Py_ssize_t others = view_others(v, c->mv, &live);
    if (others < 0) return -1;
    if (others > 0) return view_in_use();
    return view_end(v, live, 1);
}

/* After the ring call of a claim taken off the port: keep its soft-released memoryview for
 * later claims (the oldest kept one is let go if all places are taken), or let go of it and
 * its View. */
static inline void claim_finish(Port *self, Claim *c, int soft) {
    if (soft && self->ring) {
        struct Kept out = {NULL, NULL};
        if (self->nkept == ZC_KEEP) {
            out = self->kept[0];
            memmove(&self->kept[0], &self->kept[1], (ZC_KEEP - 1) * sizeof *self->kept);
            self->nkept--;
        }
        self->kept[self->nkept].mv = c->mv; /* the references go to the port */
        self->kept[self->nkept++].view = c->view;
        c->mv = c->view = NULL;
        if (out.mv) kept_let_go(self, &out); /* last: the port is consistent */
        return;
    }
    if (soft) { /* cannot happen (nothing closes the port in between): released for real */
        struct Kept k = {c->mv, c->view};
        c->mv = c->view = NULL;
        kept_let_go(self, &k);
        return;
    }
    Py_CLEAR(c->mv); /* may run code: the claim is off the port already */
    View *v = (View *)c->view;
    c->view = NULL;
    view_let_go(self, v);
}

/* Claim c's View over its c->len payload bytes at data index `idx` of the entered ring, and
 * the memoryview handed out over it (new references in c->view and c->mv, read-only for a
 * peek); -1 with an exception. */
static inline int make_view(Port *self, char *ring, uint64_t idx, Claim *c) {
    Py_ssize_t offset = (Py_ssize_t)(ring - (char *)self->lease.buf) +
                        SHMIPC_RING_HEADER_SIZE + (Py_ssize_t)idx;
    Py_ssize_t len = (Py_ssize_t)c->len;
    int readonly = !c->producer;
    View *v;
    int ok;
    /* A kept memoryview nobody else can reach, the latest first: a loop that drops its view
     * before the next call finds the one it just used; one that holds it in a variable
     * until the next call replaces it finds the one before. */
    for (int i = self->nkept - 1; i >= 0; i--) {
        if (!kept_reusable(self, &self->kept[i], offset, len)) continue;
        PyMemoryViewObject *m = (PyMemoryViewObject *)self->kept[i].mv;
        v = (View *)self->kept[i].view;
        self->kept[i] = self->kept[--self->nkept];
        kept_retarget(m, v, (char *)v->src.buf + offset, len, readonly);
        c->mv = (PyObject *)m; /* the kept references become the claim's */
        c->view = (PyObject *)v;
        c->plain = 1;
        return 0;
    }
    if (self->nspare > 0) { /* an ended View, its export of this mapping kept */
        v = (View *)self->spare[--self->nspare];
        ok = offset >= 0 && len <= v->src.len - offset;
        if (ok) {
            v->buf = (char *)v->src.buf + offset;
            v->len = len;
        } else {
            PyErr_SetString(PyExc_ValueError, "View's range does not fit its mapping");
        }
    } else {
        if (!(v = (View *)ViewType->tp_alloc(ViewType, 0))) return -1;
        /* A writable export (the port's lease is one), so that any View can be recycled. */
        ok = view_setup(v, self->lease.obj, offset, len, 0) == 0;
    }
    v->readonly = readonly;
    PyObject *mv = ok ? PyMemoryView_FromObject((PyObject *)v) : NULL;
    if (!mv) {
        Py_DECREF(v);
        return -1;
    }
    c->mv = mv;
    c->view = (PyObject *)v;
    c->plain = plain_mbuf((PyMemoryViewObject *)mv, v) != NULL; /* checked once, here */
    return 0;
}

static PyObject *call_slow_zc(Port *self, int op, int status, long long arg,
                              int64_t deadline) {
    if (self->slow_zc == Py_None) {
        PyErr_Format(PyExc_RuntimeError, "ring call failed (status %d)", status);
        return NULL;
    }
    PyObject *argv[4] = {PyLong_FromLong(op), PyLong_FromLong(status), PyLong_FromLongLong(arg),
                         PyLong_FromLongLong(deadline)};
    PyObject *out = NULL;
    if (argv[0] && argv[1] && argv[2] && argv[3])
        out = PyObject_Vectorcall(self->slow_zc, argv, 4, NULL);
    for (int i = 0; i < 4; i++) Py_XDECREF(argv[i]);
    return out;
}

static int zc_ready(Port *self, const char *fname) {
    if (self->slow_zc != Py_None && self->deadline != Py_None) return 0;
    PyErr_Format(PyExc_TypeError, "%s() needs a Port made with slow_zc and deadline", fname);
    return -1;
}

/* Reserve nbytes of raw_type for this thread, waiting as the deadline allows: the memoryview,
 * or NULL with the status in *status (SHMIPC_OK: an exception is set). */
static PyObject *reserve_impl(Port *self, PyObject *n_obj, int64_t deadline, int *status,
                              Py_ssize_t *nbytes) {
    *status = SHMIPC_OK;
    *nbytes = PyLong_CheckExact(n_obj) ? PyLong_AsSsize_t(n_obj)
                                       : PyNumber_AsSsize_t(n_obj, PyExc_OverflowError);
    /* OverflowError for an int too large; TypeError for a float */
    if (*nbytes == -1 && PyErr_Occurred()) return NULL;
    uint64_t me = shmipc_identity();
    if (claim_find(self, me, 1)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this thread already has a reservation on this queue: commit it");
        return NULL;
    }
    if (*nbytes < 0) {
        PyErr_Format(PyExc_ValueError, "nbytes must be >= 0, got %zd", *nbytes);
        return NULL;
    }
    uint64_t cap = self->cap, n = (uint64_t)*nbytes;
    if (n > UINT32_MAX || rec_size(n) > cap / 2) {
        *status = SHMIPC_TOOBIG;
        return NULL;
    }
    char *ring = enter(self); /* keeps the mapping while the GIL is let go below */
    if (!ring) {
        *status = SHMIPC_CLOSED;
        return NULL;
    }
    int64_t r = shmipc_ring_reserve(ring, cap, (size_t)n, self->raw_type, SHMIPC_TRY_ONLY);
    if (r == -SHMIPC_TIMEDOUT || (r == -SHMIPC_FULL && deadline != 0)) {
        Py_BEGIN_ALLOW_THREADS
        r = shmipc_ring_reserve(ring, cap, (size_t)n, self->raw_type, deadline);
        Py_END_ALLOW_THREADS
    }
    if (r < 0) {
        leave(self);
        *status = (int)-r;
        return NULL;
    }
    /* The producer lock is ours (parked: csrc/claim.c) until commit or abort. */
    Claim c = {.owner = me, .producer = 1, .ring = ring, .len = n};
    if (make_view(self, ring, (uint64_t)r, &c) < 0 || claim_add(self, &c) < 0) {
        shmipc_ring_abort(ring); /* still entered: the lease pins the mapping */
        claim_drop(&c);
        leave(self);
        return NULL;
    }
    leave(self); /* from here the claim's view pins the mapping */
    return Py_NewRef(c.mv);
}

/* reserve(nbytes, block=True, timeout=None): a writable view of nbytes in the ring. */
static PyObject *port_reserve(Port *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames) {
    PyObject *n_obj;
    int64_t deadline;
    if (zc_ready(self, "reserve") ||
        parse_blocking(self, args, PyVectorcall_NARGS(nargs), kwnames, &SIG_RESERVE,
                       &n_obj, &deadline))
        return NULL;
    int status;
    Py_ssize_t nbytes;
    PyObject *mv = reserve_impl(self, n_obj, deadline, &status, &nbytes);
    if (mv || status == SHMIPC_OK) return mv;
    return call_slow_zc(self, ZC_RESERVE, status, nbytes, deadline);
}

/* try_reserve(nbytes, deadline_ns) -> memoryview, or the status (an int) of a miss. */
static PyObject *port_try_reserve(Port *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t deadline;
    if (arg_count(nargs, 2, "try_reserve(nbytes, deadline_ns)") ||
        shmipc_as_deadline(args[1], &deadline))
        return NULL;
    int status;
    Py_ssize_t nbytes;
    PyObject *mv = reserve_impl(self, args[0], deadline, &status, &nbytes);
    if (mv || status == SHMIPC_OK) return mv;
    return PyLong_FromLong(status);
}

/* commit (publish) or abort this thread's reservation. */
static PyObject *finish_reservation(Port *self, int publish) {
    Claim *c = claim_find(self, shmipc_identity(), 1);
    if (!c) {
        PyErr_SetString(PyExc_RuntimeError, "this thread has no reservation on this queue");
        return NULL;
    }
    int soft;
    if (claim_end_view(self, c, &soft) < 0) return NULL; /* BufferError: nothing changed */
    Claim mine;
    claim_take(self, c, &mine);
    int rc = SHMIPC_OK;
    if (!publish) {
        shmipc_ring_abort(mine.ring);
    } else if (!self->ring) { /* closed by another thread: give the claim back */
        shmipc_ring_abort(mine.ring);
        rc = SHMIPC_CLOSED;
    } else {
        rc = shmipc_ring_commit(mine.ring, self->cap, (size_t)mine.len);
    }
    claim_finish(self, &mine, soft);
    if (rc == SHMIPC_OK) Py_RETURN_NONE;
    return call_slow_zc(self, publish ? ZC_COMMIT : ZC_ABORT, rc, (long long)mine.len, 0);
}

static PyObject *port_commit(Port *self, PyObject *unused) {
    return finish_reservation(self, 1);
}

static PyObject *port_abort(Port *self, PyObject *unused) {
    return finish_reservation(self, 0);
}

/* Peek at the next record for this thread, waiting as the deadline allows: the memoryview;
 * or NULL with *status (SHMIPC_OK: an exception is set, or, if none is, the next record is
 * of a type the port does not hand out, left in place, its type in *type). */
static PyObject *peek_impl(Port *self, int64_t deadline, int *status, uint32_t *type) {
    *status = SHMIPC_OK;
    *type = 0;
    uint64_t me = shmipc_identity();
    if (claim_find(self, me, 0)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this thread already peeked a record of this queue: release it");
        return NULL;
    }
    uint64_t cap = self->cap, out[2];
    char *ring = enter(self); /* keeps the mapping while the GIL is let go below */
    if (!ring) {
        *status = SHMIPC_CLOSED;
        return NULL;
    }
    int64_t r = shmipc_ring_peek(ring, cap, out, SHMIPC_TRY_ONLY);
    if (r == -SHMIPC_TIMEDOUT || (r == -SHMIPC_EMPTY && deadline != 0)) {
        Py_BEGIN_ALLOW_THREADS
        r = shmipc_ring_peek(ring, cap, out, deadline);
        Py_END_ALLOW_THREADS
    }
    if (r < 0) {
        leave(self);
        *status = (int)-r;
        return NULL;
    }
    /* The consumer lock is ours until release (or unpeek). */
    if (!fast_type(self, (uint32_t)out[1])) {
        shmipc_ring_unpeek(ring); /* it stays the next record */
        leave(self);
        *type = (uint32_t)out[1];
        return NULL;
    }
    Claim c = {.owner = me, .producer = 0, .ring = ring, .len = out[0]};
    if (make_view(self, ring, (uint64_t)r, &c) < 0 || claim_add(self, &c) < 0) {
        shmipc_ring_unpeek(ring); /* still entered: the lease pins the mapping */
        claim_drop(&c);
        leave(self);
        return NULL;
    }
    leave(self); /* from here the claim's view pins the mapping */
    return Py_NewRef(c.mv);
}

/* peek_impl, anything but its fast outcome answered by the slow path (peek, peek_next). */
static PyObject *peek_or_slow(Port *self, int64_t deadline) {
    int status;
    uint32_t type;
    PyObject *mv = peek_impl(self, deadline, &status, &type);
    if (mv || (status == SHMIPC_OK && PyErr_Occurred())) return mv;
    return call_slow_zc(self, ZC_PEEK, status, type, deadline);
}

/* peek(block=True, timeout=None): a read-only view of the next record's payload. */
static PyObject *port_peek(Port *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames) {
    int64_t deadline;
    if (zc_ready(self, "peek") ||
        parse_blocking(self, args, PyVectorcall_NARGS(nargs), kwnames, &SIG_PEEK,
                       NULL, &deadline))
        return NULL;
    return peek_or_slow(self, deadline);
}

static PyObject *finish_peek(Port *self, int consume);

/* peek_next(block=True, timeout=None): release this thread's peeked record, if it holds one,
 * then peek as peek() does: a consumer loop's step in one call. A failed release raises
 * before anything new is peeked, exactly as release() would (a BufferError, while something
 * made from the view is alive, leaves the record peeked); the arguments are checked before
 * anything is released. */
static PyObject *port_peek_next(Port *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames) {
    int64_t deadline;
    if (zc_ready(self, "peek_next") ||
        parse_blocking(self, args, PyVectorcall_NARGS(nargs), kwnames, &SIG_PEEK_NEXT,
                       NULL, &deadline))
        return NULL;
    if (claim_find(self, shmipc_identity(), 0)) {
        PyObject *r = finish_peek(self, 1);
        if (!r) return NULL;
        Py_DECREF(r);
    }
    return peek_or_slow(self, deadline);
}

/* try_peek(deadline_ns) -> memoryview, or (status, record type) of a miss. */
static PyObject *port_try_peek(Port *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t deadline;
    if (arg_count(nargs, 1, "try_peek(deadline_ns)") || shmipc_as_deadline(args[0], &deadline))
        return NULL;
    int status;
    uint32_t type;
    PyObject *mv = peek_impl(self, deadline, &status, &type);
    if (mv || (status == SHMIPC_OK && PyErr_Occurred())) return mv;
    return Py_BuildValue("(iI)", status, type);
}

/* release (consume) or unpeek this thread's peeked record. */
static PyObject *finish_peek(Port *self, int consume) {
    Claim *c = claim_find(self, shmipc_identity(), 0);
    if (!c) {
        PyErr_SetString(PyExc_RuntimeError, "this thread has not peeked a record of this queue");
        return NULL;
    }
    int soft;
    if (claim_end_view(self, c, &soft) < 0) return NULL; /* BufferError: nothing changed */
    Claim mine;
    claim_take(self, c, &mine);
    int rc = SHMIPC_OK;
    if (!consume) {
        shmipc_ring_unpeek(mine.ring);
    } else if (!self->ring) { /* closed by another thread: the record stays the next one */
        shmipc_ring_unpeek(mine.ring);
        rc = SHMIPC_CLOSED;
    } else {
        rc = shmipc_ring_release(mine.ring, self->cap);
    }
    claim_finish(self, &mine, soft);
    if (rc == SHMIPC_OK) Py_RETURN_NONE;
    return call_slow_zc(self, ZC_RELEASE, rc, (long long)mine.len, 0);
}

static PyObject *port_release(Port *self, PyObject *unused) {
    return finish_peek(self, 1);
}

/* let_go(): abort this thread's reservation and unpeek its peek, both views checked before
 * either is touched (BufferError, nothing changed). For close() on the holding thread. */
static PyObject *port_let_go(Port *self, PyObject *unused) {
    uint64_t me = shmipc_identity();
    Claim *held[2] = {claim_find(self, me, 1), claim_find(self, me, 0)};
    for (int i = 0; i < 2; i++) {
        if (!held[i]) continue;
        PyMemoryViewObject *live;
        Py_ssize_t others = view_others((View *)held[i]->view, held[i]->mv, &live);
        if (others < 0) return NULL;
        if (others > 0) return view_in_use(), NULL;
    }
    int reserved = held[0] != NULL, peeked = held[1] != NULL;
    PyObject *r;
    if (reserved) {
        if (!(r = finish_reservation(self, 0))) return NULL;
        Py_DECREF(r);
    }
    if (peeked) {
        if (!(r = finish_peek(self, 0))) return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *port_holds_claim(Port *self, PyObject *unused) {
    uint64_t me = shmipc_identity();
    return PyBool_FromLong(claim_find(self, me, 1) || claim_find(self, me, 0));
}

int shmipc_fastpath_install(void) {
    static int installed = 0;
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc = 0;
    if (!installed) {
        PyObject *module = PyImport_AddModule("shmipc._native_ext"); /* borrowed */
        PyObject *port = module ? PyType_FromSpec(&port_spec) : NULL;
        PyObject *view = port ? PyType_FromSpec(&view_spec) : NULL;
        ViewType = (PyTypeObject *)Py_XNewRef(view); /* ours for good */
        for (PyMethodDef *m = PyMemoryView_Type.tp_methods; m && m->ml_name; m++) {
            if (strcmp(m->ml_name, "release") == 0 && m->ml_flags == METH_NOARGS)
                memoryview_release = m->ml_meth;
        }
        RingMiss = view ? PyErr_NewException("shmipc._native_ext.RingMiss", NULL, NULL) : NULL;
        if (RingMiss && PyModule_AddObjectRef(module, "Port", port) == 0 &&
            PyModule_AddObjectRef(module, "View", view) == 0 &&
            PyModule_AddObjectRef(module, "RingMiss", RingMiss) == 0) {
            installed = 1;
        } else {
            PyErr_Clear();
            rc = -1;
        }
        Py_XDECREF(port);
        Py_XDECREF(view);
    }
    PyGILState_Release(gil);
    return rc;
}
