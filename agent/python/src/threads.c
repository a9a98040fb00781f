/*
 * Thread mode's child threads: a threading.Thread started while a profiled
 * thread runs is profiled under that thread's segment (issue 12).
 *
 * Threads switch without telling anyone, so there is no first switch-in to
 * watch as there is for greenlets (children.c). threading has no start hook
 * either: canopy_agent wraps Thread.start (thread mode, follow_children on).
 * In the starting thread it asks thread_spawn() for a token, the owner and
 * the spawn site; the started thread's run() is wrapped to call
 * thread_child_begin(token) and, when it returns, thread_child_end().
 * A child's entry lives in cx.threads, keyed by its thread id, and resolves
 * to its owner exactly as a child greenlet's does; the owner's end() drops it.
 *
 * GIL held throughout; errors are raised to the Python wrapper, which only
 * runs in the app's threads at start and end, never in a callback.
 */
#include "cx.h"

#include <pythread.h>
#include <stdlib.h>


/* What thread_child_begin needs: the owner (by key and serial, since thread
 * ids are reused by the next request on the same worker thread) and the
 * spawn site. */
typedef struct thread_token {
    uintptr_t owner_key;
    uint64_t serial;
    struct cx_spawn *spawn;
} thread_token;

static const char TOKEN_NAME[] = "canopy_agent._canopy.thread_token";

static void token_free(PyObject *capsule)
{
    thread_token *t = PyCapsule_GetPointer(capsule, TOKEN_NAME);
    if (t) {
        cx_spawn_release(t->spawn);
        free(t);
    }
    PyErr_Clear();
}

PyObject *cx_py_thread_spawn(PyObject *self, PyObject *args)
{
    (void)self;
    int skip = 0;
    if (!PyArg_ParseTuple(args, "|i", &skip))
        return NULL;
    if (!cx.follow_children || atomic_load(&cx.mode) != CX_MODE_THREAD || !cx.agent)
        Py_RETURN_NONE;
    cx_segment *pseg = cx_registry_find(&cx.threads, (uintptr_t)PyThread_get_thread_ident());
    if (!pseg)
        Py_RETURN_NONE;
    cx_segment *owner = cx_segment_root(pseg);
    struct cx_spawn *sp = cx_spawn_here(pseg->spawn, skip);
    if (!sp)
        return PyErr_NoMemory();
    thread_token *t = malloc(sizeof(*t));
    if (!t) {
        cx_spawn_release(sp);
        return PyErr_NoMemory();
    }
    t->owner_key = owner->key;
    t->serial = owner->serial;
    t->spawn = sp;
    PyObject *cap = PyCapsule_New(t, TOKEN_NAME, token_free);
    if (!cap) {
        cx_spawn_release(sp);
        free(t);
    }
    return cap;
}

PyObject *cx_py_thread_child_begin(PyObject *self, PyObject *token)
{
    (void)self;
    thread_token *t = PyCapsule_GetPointer(token, TOKEN_NAME);
    if (!t)
        return NULL;
    if (atomic_load(&cx.mode) != CX_MODE_THREAD)
        Py_RETURN_FALSE;
    cx_segment *owner = cx_registry_find(&cx.threads, t->owner_key);
    if (!owner || owner->owner || owner->serial != t->serial)
        Py_RETURN_FALSE; /* the request ended before the thread ran */
    if (owner->n_children >= cx.max_children) {
        cx.c.children_dropped++;
        Py_RETURN_FALSE;
    }
    uintptr_t key = (uintptr_t)PyThread_get_thread_ident();
    if (cx_registry_get(&cx.threads, key))
        Py_RETURN_FALSE;
    cx_segment *c = calloc(1, sizeof(*c));
    if (!c)
        return PyErr_NoMemory();
    cx_spawn_ref(t->spawn);
    c->key = key;
    c->owner = owner;
    c->spawn = t->spawn;
    c->dump_period_ms = owner->dump_period_ms;
    if (cx_registry_put(&cx.threads, c) != 0) {
        cx.c.children_dropped++;
        cx.c.registry_full++;
        cx_segment_free(c);
        Py_RETURN_FALSE;
    }
    cx_children_link(owner, c);
    Py_RETURN_TRUE;
}

PyObject *cx_py_thread_child_end(PyObject *self, PyObject *unused)
{
    (void)self;
    uintptr_t key = (uintptr_t)PyThread_get_thread_ident();
    cx_segment *c = cx_registry_find(&cx.threads, key);
    if (!c || !c->owner)
        Py_RETURN_FALSE; /* its segment ended first, and took it along */
    cx_registry_pop(&cx.threads, key);
    cx_children_unlink(c->owner, c);
    cx.c.children_ended++;
    cx_segment_free(c);
    Py_RETURN_TRUE;
}
