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
 * cdef, adds `Port` and `RingMiss` to the module once at import (shmipc/_native.py).
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
#include "ring_internal.h"

/* Payloads at least this large are copied with the GIL released. */
#define BIG_COPY (64 << 10)

static PyObject *RingMiss;

typedef struct {
    PyObject_HEAD
    char *ring;       /* the ring's control block; NULL once closed */
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
} Port;

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

static int as_deadline(PyObject *o, int64_t *out) {
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = (int64_t)v;
    return 0;
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
    char *ring = self->ring;
    if (!ring) return SHMIPC_CLOSED;
    if (PyBytes_CheckExact(data))
        return put_buffer(ring, self->cap, PyBytes_AS_STRING(data),
                          (size_t)PyBytes_GET_SIZE(data), type, deadline);
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return SHMIPC_NOTBUF;
    }
    int rc = put_buffer(ring, self->cap, view.buf, (size_t)view.len, type, deadline);
    PyBuffer_Release(&view);
    return rc;
}

/* put(data, type, deadline_ns) -> status: data is bytes or any contiguous buffer. */
static PyObject *port_put(Port *self, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t type;
    int64_t deadline;
    if (arg_count(nargs, 3, "put(data, type, deadline_ns)") || as_type(args[1], &type) ||
        as_deadline(args[2], &deadline))
        return NULL;
    return PyLong_FromLong(put_object(self, args[0], type, deadline));
}

/* put_many(frames, start, type, deadline_ns) -> count | -status: stores frames[start:] (a
 * list of bytes) in order, as many as the ring takes now (at least one, waiting for room for
 * the first as the deadline allows), under one claim and one publish. A frame that is not
 * bytes ends the batch (-SHMIPC_NOTBUF if it is the first). */
static PyObject *port_put_many(Port *self, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t type;
    int64_t deadline;
    if (arg_count(nargs, 4, "put_many(frames, start, type, deadline_ns)") ||
        as_type(args[2], &type) || as_deadline(args[3], &deadline))
        return NULL;
    PyObject *frames = args[0];
    if (!PyList_CheckExact(frames)) {
        PyErr_SetString(PyExc_TypeError, "put_many() needs a list of bytes");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    char *ring = self->ring;
    uint64_t cap = self->cap;
    if (!ring) return PyLong_FromLong(-SHMIPC_CLOSED);
    if (start < 0 || start >= PyList_GET_SIZE(frames)) return PyLong_FromLong(0);

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
    char *ring = self->ring;
    uint64_t cap = self->cap;
    *rc = SHMIPC_CLOSED;
    if (!ring) return -1;
    uint64_t lens_stack[BATCH_STACK];
    char *dsts_stack[BATCH_STACK];
    uint64_t *lens = lens_stack;
    char **dsts = dsts_stack;
    if (max_items > BATCH_STACK) {
        lens = PyMem_Malloc((size_t)max_items * (sizeof *lens + sizeof *dsts));
        if (!lens) {
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
    return got;
}

/* Take the next record off the ring (waiting as the deadline allows): its payload as new
 * bytes, with its type in *type and *rc SHMIPC_OK; or NULL with the status in *rc (NULL with
 * *rc SHMIPC_OK: an exception is set, and the record stays the next one). */
static PyObject *take_record(Port *self, int64_t deadline, int *rc, uint32_t *type) {
    PyObject *payload;
    *type = 0;
    return take_records(self, 1, deadline, rc, &payload, type) == 1 ? payload : NULL;
}

/* What a fast-path record becomes (steals payload): decoded if of obj_type and `decode` is
 * asked for and set, else the payload as it is. */
static PyObject *deliver(Port *self, PyObject *payload, uint32_t type, int decode) {
    if (type != self->obj_type || !decode || self->decode == Py_None) return payload;
    PyObject *obj = PyObject_CallOneArg(self->decode, payload);
    Py_DECREF(payload);
    return obj;
}

static PyObject *take_one(Port *self, PyObject *const *args, Py_ssize_t nargs, int decode) {
    int64_t deadline;
    if (arg_count(nargs, 1, "get(deadline_ns)") || as_deadline(args[0], &deadline)) return NULL;
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

/* get_many(max_items, deadline_ns) -> list: at least one record (waiting for it as the
 * deadline allows), then those already there, up to max_items, under one lock and one
 * retire. Records of obj_type come out decoded, those of raw_type as bytes; a record of any
 * other type ends the batch before it, or, if it comes first, is handed over alone through
 * RingMiss. */
static PyObject *port_get_many(Port *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t deadline;
    if (arg_count(nargs, 2, "get_many(max_items, deadline_ns)") ||
        as_deadline(args[1], &deadline))
        return NULL;
    Py_ssize_t max_items = PyLong_AsSsize_t(args[0]);
    if (max_items == -1 && PyErr_Occurred()) return NULL;
    if (max_items < 1) {
        PyErr_SetString(PyExc_ValueError, "max_items must be >= 1");
        return NULL;
    }
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
        for (Py_ssize_t i = 0; i < count; i++) {
            if (types[i] != self->obj_type) continue;
            PyObject *obj = PyObject_CallOneArg(self->decode, PyList_GET_ITEM(out, i));
            if (!obj) {
                Py_CLEAR(out);
                break;
            }
            PyList_SetItem(out, i, obj); /* steals obj, drops the payload */
        }
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

/* Parse ([first,] block=True, timeout=None) into *first and an absolute deadline. */
static int parse_blocking(Port *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames, int has_first, const char *fname,
                          PyObject **first, int64_t *deadline) {
    PyObject *block = NULL, *timeout = NULL;
    Py_ssize_t npos = nargs;
    if (npos > has_first + 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d positional arguments", fname,
                     has_first + 2);
        return -1;
    }
    if (npos < has_first) {
        PyErr_Format(PyExc_TypeError, "%s() missing its first argument", fname);
        return -1;
    }
    if (has_first) *first = args[0];
    if (npos > has_first) block = args[has_first];
    if (npos > has_first + 1) timeout = args[has_first + 1];
    if (kwnames) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, i), *value = args[npos + i];
            PyObject **slot = NULL;
            if (PyUnicode_CompareWithASCIIString(key, "block") == 0) slot = &block;
            else if (PyUnicode_CompareWithASCIIString(key, "timeout") == 0) slot = &timeout;
            if (!slot) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                             fname, key);
                return -1;
            }
            if (*slot) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%U'",
                             fname, key);
                return -1;
            }
            *slot = value;
        }
    }
    int blocking = 1;
    if (block && (blocking = PyObject_IsTrue(block)) < 0) return -1;
    if (!blocking) {
        *deadline = 0;
        return 0;
    }
    if (!timeout || timeout == Py_None) {
        *deadline = -1;
        return 0;
    }
    PyObject *d = PyObject_CallOneArg(self->deadline, timeout);
    if (!d) return -1;
    int rc = as_deadline(d, deadline);
    Py_DECREF(d);
    return rc;
}

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
        parse_blocking(self, args, PyVectorcall_NARGS(nargs), kwnames, 1, "put", &obj,
                       &deadline))
        return NULL;
    return send_impl(self, obj, 1, deadline);
}

/* send_bytes(data, block=True, timeout=None): put a bytes-like payload as raw_type. */
static PyObject *port_send_bytes(Port *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames) {
    PyObject *obj;
    int64_t deadline;
    if (channel_ready(self, "put_bytes") ||
        parse_blocking(self, args, PyVectorcall_NARGS(nargs), kwnames, 1, "put_bytes", &obj,
                       &deadline))
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
        parse_blocking(self, args, PyVectorcall_NARGS(nargs), kwnames, 0, "get", NULL,
                       &deadline))
        return NULL;
    return recv_impl(self, 1, deadline);
}

/* recv_bytes(block=True, timeout=None): the next message's payload, undecoded. */
static PyObject *port_recv_bytes(Port *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames) {
    int64_t deadline;
    if (channel_ready(self, "get_bytes") ||
        parse_blocking(self, args, PyVectorcall_NARGS(nargs), kwnames, 0, "get_bytes", NULL,
                       &deadline))
        return NULL;
    return recv_impl(self, 0, deadline);
}

/* ---- the Port type ---------------------------------------------------------------------- */

static PyObject *port_close(Port *self, PyObject *unused) {
    /* A thread inside a call keeps its own copy of the pointer; the mapping outlives the
     * port (Python keeps the region referenced). */
    self->ring = NULL;
    Py_RETURN_NONE;
}

static int port_init(Port *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"address",     "cap",      "decode",   "obj_type",
                             "raw_type",    "encode",   "deadline", "slow_put",
                             "slow_get",    "bytes_as_is", NULL};
    PyObject *address, *decode, *encode = Py_None, *deadline = Py_None;
    PyObject *slow_put = Py_None, *slow_get = Py_None;
    PyObject *cap_obj, *obj_type_obj, *raw_type_obj;
    int bytes_as_is = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|$OOOOp", kwlist, &address, &cap_obj,
                                     &decode, &obj_type_obj, &raw_type_obj, &encode, &deadline,
                                     &slow_put, &slow_get, &bytes_as_is))
        return -1;
    unsigned long long cap = PyLong_AsUnsignedLongLong(cap_obj);
    if (cap == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    uint32_t obj_type, raw_type;
    if (as_type(obj_type_obj, &obj_type) || as_type(raw_type_obj, &raw_type)) return -1;
    if (!PyLong_Check(address)) {
        PyErr_SetString(PyExc_TypeError, "Port needs a ring's address as an int");
        return -1;
    }
    unsigned long long a = PyLong_AsUnsignedLongLong(address);
    if (a == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        a = 0; /* negative or too large: refused below */
    }
    void *p = (void *)(uintptr_t)a;
    if (!p || cap < 64 || (cap & (cap - 1))) {
        PyErr_SetString(PyExc_ValueError, "Port needs a ring's address and power-of-two capacity");
        return -1;
    }
    PyObject *callables[] = {decode, encode, deadline, slow_put, slow_get};
    for (size_t i = 0; i < sizeof callables / sizeof *callables; i++) {
        if (callables[i] != Py_None && !PyCallable_Check(callables[i])) {
            PyErr_SetString(PyExc_TypeError,
                            "decode, encode, deadline, slow_put and slow_get must be callable "
                            "or None");
            return -1;
        }
    }
    if (encode == Py_None && slow_put != Py_None) {
        PyErr_SetString(PyExc_TypeError, "a Port with slow_put needs encode");
        return -1;
    }
    self->ring = p;
    self->cap = cap;
    Py_XSETREF(self->decode, Py_NewRef(decode));
    Py_XSETREF(self->encode, Py_NewRef(encode));
    Py_XSETREF(self->deadline, Py_NewRef(deadline));
    Py_XSETREF(self->slow_put, Py_NewRef(slow_put));
    Py_XSETREF(self->slow_get, Py_NewRef(slow_get));
    self->obj_type = obj_type;
    self->raw_type = raw_type;
    self->bytes_as_is = bytes_as_is;
    return 0;
}

static int port_traverse(Port *self, visitproc visit, void *arg) {
    Py_VISIT(self->decode);
    Py_VISIT(self->encode);
    Py_VISIT(self->deadline);
    Py_VISIT(self->slow_put);
    Py_VISIT(self->slow_get);
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int port_clear(Port *self) {
    Py_CLEAR(self->decode);
    Py_CLEAR(self->encode);
    Py_CLEAR(self->deadline);
    Py_CLEAR(self->slow_put);
    Py_CLEAR(self->slow_get);
    return 0;
}

static void port_dealloc(Port *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    port_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef port_methods[] = {
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
     "send(obj, block=True, timeout=None): Queue.put in one call"},
    {"send_bytes", (PyCFunction)(void (*)(void))port_send_bytes, METH_FASTCALL | METH_KEYWORDS,
     "send_bytes(data, block=True, timeout=None): Queue.put_bytes in one call"},
    {"recv", (PyCFunction)(void (*)(void))port_recv, METH_FASTCALL | METH_KEYWORDS,
     "recv(block=True, timeout=None): Queue.get in one call"},
    {"recv_bytes", (PyCFunction)(void (*)(void))port_recv_bytes, METH_FASTCALL | METH_KEYWORDS,
     "recv_bytes(block=True, timeout=None): Queue.get_bytes in one call"},
    {"close", (PyCFunction)port_close, METH_NOARGS, "Refuse every later call."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot port_slots[] = {
    {Py_tp_doc, "A ring's hot paths: Port(address, cap, decode, obj_type, raw_type)."},
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

int shmipc_fastpath_install(void) {
    static int installed = 0;
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc = 0;
    if (!installed) {
        PyObject *module = PyImport_AddModule("shmipc._native_ext"); /* borrowed */
        PyObject *port = module ? PyType_FromSpec(&port_spec) : NULL;
        RingMiss = port ? PyErr_NewException("shmipc._native_ext.RingMiss", NULL, NULL) : NULL;
        if (RingMiss && PyModule_AddObjectRef(module, "Port", port) == 0 &&
            PyModule_AddObjectRef(module, "RingMiss", RingMiss) == 0) {
            installed = 1;
        } else {
            PyErr_Clear();
            rc = -1;
        }
        Py_XDECREF(port);
    }
    PyGILState_Release(gil);
    return rc;
}
