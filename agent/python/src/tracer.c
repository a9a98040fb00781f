/*
 * The greenlet switch callback.
 *
 * greenlet calls the thread's trace function as tracefunc(event, (origin,
 * target)) after every switch, from inside the target. The callback is a C
 * type with tp_call, so the call lands here with greenlet's argument tuple as
 * is: no Python frame, no argument parsing.
 *
 * Rules it follows, because greenlet gives no second chance: an exception
 * escaping a trace function makes greenlet remove the trace function for the
 * whole thread and throws the exception into the target greenlet. So our own
 * work never raises (errors are cleared and counted) and never blocks (the
 * library's add takes a mutex for copying only).
 *
 * The trace function that was installed before us is chained: it is called
 * for every event, after our work, with the same arguments. If it raises, its
 * exception is passed on unchanged, exactly as greenlet would have seen it
 * without canopy (greenlet then removes the tracer, which is what it would
 * have done to the chained function anyway); that is counted.
 */
#include "cx.h"

#include <pythread.h>

/* Greenlet mode: a snapshot of a profiled origin as it leaves and of a
 * profiled target as it enters (their registry segments, or NULL). */
static void on_switch(PyObject *origin, cx_segment *origin_seg, cx_segment *target_seg)
{
    int64_t now = 0;
    if (origin_seg) {
        /* Switch-out: the origin's frames are saved in the greenlet by now. */
        PyObject *keep = NULL;
        cx_frame *leaf = cx_frame_of_greenlet(origin, &keep);
        now = cx_now_ms();
        cx_snapshot(origin_seg, leaf, now);
        Py_XDECREF(keep);
    }
    if (target_seg) {
        /* Switch-in: we run inside the target, whose frames are the current
         * ones (target.gr_frame is None while it runs). */
        if (!now)
            now = cx_now_ms();
        cx_snapshot(target_seg, cx_frame_of_tstate(PyThreadState_GET()), now);
    }
}

static PyObject *tracer_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    cx_tracer *self = (cx_tracer *)op;
    if (CX_LIKELY(self->active && PyTuple_CheckExact(args) && PyTuple_GET_SIZE(args) == 2)) {
        PyObject *pair = PyTuple_GET_ITEM(args, 1);
        if (CX_LIKELY(PyTuple_CheckExact(pair) && PyTuple_GET_SIZE(pair) == 2)) {
            PyObject *origin = PyTuple_GET_ITEM(pair, 0);
            PyObject *target = PyTuple_GET_ITEM(pair, 1);
            /* The sampler reads this to know which greenlet runs now. */
            self->current = target;
            cx.c.switches++;
            if (cx.greenlets.count) {
                int mode = atomic_load_explicit(&cx.mode, memory_order_relaxed);
                int follow = cx.follow_children && (mode == CX_MODE_GREENLET || mode == CX_MODE_SAMPLING);
                if (follow || mode == CX_MODE_GREENLET) {
                    /* Each greenlet looked up once per switch, for both uses. */
                    cx_segment *origin_seg = cx_registry_get(&cx.greenlets, (uintptr_t)origin);
                    cx_segment *target_seg = cx_registry_get(&cx.greenlets, (uintptr_t)target);
                    /* First: a child's first switch-in registers it, so
                     * greenlet mode snapshots it from this very switch on. */
                    if (follow)
                        cx_children_switch(origin, target, &origin_seg, &target_seg);
                    if (mode == CX_MODE_GREENLET)
                        on_switch(origin, origin_seg, target_seg);
                }
                if (CX_UNLIKELY(PyErr_Occurred())) {
                    PyErr_Clear();
                    cx.c.errors++;
                }
            }
        }
    }
    if (self->prev) {
        PyObject *r = PyObject_Call(self->prev, args, kwargs);
        if (!r) {
            cx.c.chained_errors++;
            /* greenlet is about to remove us from this thread. */
            self->active = 0;
        }
        return r;
    }
    Py_RETURN_NONE;
}

static void tracer_dealloc(PyObject *op)
{
    cx_tracer *self = (cx_tracer *)op;
    Py_CLEAR(self->prev);
    Py_TYPE(op)->tp_free(op);
}

static PyObject *tracer_get_prev(PyObject *op, void *closure)
{
    cx_tracer *self = (cx_tracer *)op;
    PyObject *p = self->prev ? self->prev : Py_None;
    Py_INCREF(p);
    return p;
}

static PyObject *tracer_get_active(PyObject *op, void *closure)
{
    return PyBool_FromLong(((cx_tracer *)op)->active);
}

static PyObject *tracer_get_thread_id(PyObject *op, void *closure)
{
    return PyLong_FromUnsignedLong(((cx_tracer *)op)->thread_id);
}

static PyGetSetDef tracer_getset[] = {
    {"prev", tracer_get_prev, NULL, "trace function chained by this tracer", NULL},
    {"active", tracer_get_active, NULL, "False once uninstalled", NULL},
    {"thread_id", tracer_get_thread_id, NULL, "thread the tracer was installed on", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject cx_tracer_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "canopy_agent._canopy.Tracer",
    .tp_basicsize = sizeof(cx_tracer),
    .tp_dealloc = tracer_dealloc,
    .tp_call = tracer_call,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "canopy's greenlet switch callback (install with _canopy.install_tracer())",
    .tp_getset = tracer_getset,
};
