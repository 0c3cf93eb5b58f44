/* Argument parsing shared by the METH_FASTCALL | METH_KEYWORDS entry points of the native
 * ports (csrc/fastpath.c's Port, csrc/topic.c's TopicPort): the shape
 * `name([first,] [block=True,] timeout=None)` of Queue.put/get/reserve/peek and
 * Publisher.publish/Subscriber.receive, turned into an absolute deadline in ns
 * (-1: no deadline; 0: do not wait) by the port's `deadline` callable
 * (shmipc.sync.deadline_ns), which is called only for a finite timeout.
 *
 * The usual call passes only the positional arguments it needs and no keywords; that case is
 * answered before anything else is looked at (this is on every message's path). Error
 * messages follow CPython's for Python functions of the same signature.
 */
#ifndef SHMIPC_FASTCALL_ARGS_H
#define SHMIPC_FASTCALL_ARGS_H

#include <Python.h>
#include <stdint.h>

typedef struct {
    const char *fname;      /* for error messages: "put", "reserve", "publish", ... */
    const char *first_name; /* the required first argument's name, or NULL if there is none */
    int has_block;          /* whether `block` comes before `timeout` */
} shmipc_wait_sig;

static inline int shmipc_as_deadline(PyObject *o, int64_t *out) {
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = (int64_t)v;
    return 0;
}

/* The slow half of shmipc_parse_wait: keywords, errors, a block or timeout given. */
static int shmipc_parse_wait_slow(const shmipc_wait_sig *sig, PyObject *deadline_fn,
                                  PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                                  PyObject **first, int64_t *deadline) {
    int has_first = sig->first_name != NULL;
    int most = has_first + sig->has_block + 1;
    PyObject *block = NULL, *timeout = NULL;
    if (nargs > most) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d positional arguments", sig->fname,
                     most);
        return -1;
    }
    if (has_first) *first = nargs ? args[0] : NULL;
    Py_ssize_t at = has_first;
    if (sig->has_block && nargs > at) block = args[at++];
    if (nargs > at) timeout = args[at];
    if (kwnames) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, i), *value = args[nargs + i];
            PyObject **slot = NULL;
            if (PyUnicode_CompareWithASCIIString(key, "timeout") == 0)
                slot = &timeout;
            else if (sig->has_block && PyUnicode_CompareWithASCIIString(key, "block") == 0)
                slot = &block;
            else if (has_first && PyUnicode_CompareWithASCIIString(key, sig->first_name) == 0)
                slot = first;
            if (!slot) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                             sig->fname, key);
                return -1;
            }
            if (*slot) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%U'",
                             sig->fname, key);
                return -1;
            }
            *slot = value;
        }
    }
    if (has_first && !*first) {
        PyErr_Format(PyExc_TypeError, "%s() missing 1 required positional argument: '%s'",
                     sig->fname, sig->first_name);
        return -1;
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
    if (!deadline_fn || deadline_fn == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s() with a timeout needs a port made with deadline",
                     sig->fname);
        return -1;
    }
    PyObject *d = PyObject_CallOneArg(deadline_fn, timeout);
    if (!d) return -1;
    int rc = shmipc_as_deadline(d, deadline);
    Py_DECREF(d);
    return rc;
}

/* Parse ([first,] [block,] timeout) into *first (if the signature has one) and *deadline:
 * 0, or -1 with an exception. `nargs` is the positional count (PyVectorcall_NARGS). */
static inline int shmipc_parse_wait(const shmipc_wait_sig *sig, PyObject *deadline_fn,
                                    PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                                    PyObject **first, int64_t *deadline) {
    if (!kwnames && nargs == (sig->first_name != NULL)) { /* f(first) or f(): block, no timeout */
        if (nargs) *first = args[0];
        *deadline = -1;
        return 0;
    }
    return shmipc_parse_wait_slow(sig, deadline_fn, args, nargs, kwnames, first, deadline);
}

#endif
