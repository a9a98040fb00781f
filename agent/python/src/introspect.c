/*
 * _canopy's introspection: what tests and canopy_agent.stats() read, never
 * on the snapshot path. The counters (stats()), the capture hook that copies
 * every accepted snapshot into a Python list, and the frame walks of the
 * current stack or a suspended greenlet.
 */
#include "cx.h"

#include <string.h>

/* cx.frames_buf[0..n) as a list of str (NULL on error, with the exception set). */
static PyObject *frames_to_list(size_t n)
{
    PyObject *l = PyList_New((Py_ssize_t)n);
    if (!l)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *s = PyUnicode_FromStringAndSize(cx.frames_buf[i].ptr, (Py_ssize_t)cx.frames_buf[i].len);
        if (!s) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, (Py_ssize_t)i, s);
    }
    return l;
}

/* When cx.capture is a list (tests), each accepted snapshot is appended to
 * it as (task, segment, time_ms, sequence, [frames]). */
void cx_capture_append(const cx_segment *seg, int64_t now, size_t n)
{
    if (PyList_GET_SIZE(cx.capture) >= cx.capture_limit)
        return;
    PyObject *frames = frames_to_list(n);
    if (!frames)
        goto fail;
    PyObject *t = Py_BuildValue("(s#s#LiN)", seg->task.ptr, (Py_ssize_t)seg->task.len, seg->segment.ptr,
                                (Py_ssize_t)seg->segment.len, (long long)now, (int)seg->next_seq, frames);
    if (!t)
        goto fail;
    int rc = PyList_Append(cx.capture, t);
    Py_DECREF(t);
    if (rc == 0)
        return;
fail:
    PyErr_Clear();
    cx.c.errors++;
}

static int put_u64(PyObject *d, const char *k, uint64_t v)
{
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    if (!o)
        return -1;
    int rc = PyDict_SetItemString(d, k, o);
    Py_DECREF(o);
    return rc;
}

PyObject *cx_py_stats(PyObject *self, PyObject *unused)
{
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    cx_counters c = cx.c;
    c.finish_reports = __atomic_load_n(&cx.c.finish_reports, __ATOMIC_RELAXED);
    int ok = 1;
#define PUT(k, v) ok = ok && put_u64(d, k, (uint64_t)(v)) == 0
    PUT("switches", c.switches);
    PUT("snapshots", c.snapshots);
    PUT("snapshots_dropped", c.snapshots_dropped);
    PUT("snapshots_capped", c.snapshots_capped);
    PUT("snapshots_early", c.snapshots_early);
    PUT("snapshots_empty", c.snapshots_empty);
    PUT("errors", c.errors);
    PUT("chained_errors", c.chained_errors);
    PUT("signature_misses", c.sig_misses);
    PUT("signature_resets", c.sig_resets);
    PUT("frames_truncated", c.frames_truncated);
    PUT("samples", c.samples);
    PUT("samples_idle", c.samples_idle);
    PUT("registry_full", c.registry_full);
    PUT("segments_begun", c.segments_begun);
    PUT("segments_ended", c.segments_ended);
    PUT("segments_active", (uint64_t)atomic_load(&cx.active_segments));
    PUT("finish_reports", c.finish_reports);
    PUT("children_followed", c.children_followed);
    PUT("children_dropped", c.children_dropped);
    PUT("children_ended", c.children_ended);
    PUT("spawn_sites", c.spawn_sites);
    PUT("registry_count", cx.greenlets.count + cx.threads.count);
    if (cx.agent) {
        cn_agent_stats s;
        memset(&s, 0, sizeof(s));
        cn_agent_stats_get(cx.agent, &s);
        PUT("lib_snapshots_added", s.snapshots_added);
        PUT("lib_snapshots_dropped", s.snapshots_dropped);
        PUT("batches_sealed", s.batches_sealed);
        PUT("batches_sent", s.send.batches_sent);
        PUT("batches_acked", s.send.batches_acked);
        PUT("batches_duplicate", s.send.batches_duplicate);
        PUT("batches_resent", s.send.batches_resent);
        PUT("socket_resets", s.send.socket_resets);
        PUT("batches_dropped", s.send.batches_dropped);
        PUT("requests_sent", s.send.requests_sent);
        PUT("send_errors", s.send.errors);
        PUT("bytes_sent", s.send.bytes_sent);
        PUT("bytes_buffered", s.send.bytes_buffered);
        PUT("requests_pending", s.send.requests_pending);
        PUT("command_queries", s.command_queries);
        PUT("commands_received", s.commands_received);
        PUT("finish_reports_queued", s.finish_reports);
        PUT("session", s.session);
        PUT("next_batch_seq", s.next_batch_seq);
    }
#undef PUT
    if (ok) {
        PyObject *m = PyUnicode_FromString(cx_mode_name(atomic_load(&cx.mode)));
        ok = m && PyDict_SetItemString(d, "mode", m) == 0;
        Py_XDECREF(m);
    }
    if (!ok) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

PyObject *cx_py_capture(PyObject *self, PyObject *args)
{
    PyObject *list = Py_None;
    Py_ssize_t limit = 100000;
    if (!PyArg_ParseTuple(args, "|On", &list, &limit))
        return NULL;
    if (list != Py_None && !PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "capture() takes a list or None");
        return NULL;
    }
    Py_CLEAR(cx.capture);
    if (list != Py_None) {
        Py_INCREF(list);
        cx.capture = list;
        cx.capture_limit = limit;
    }
    Py_RETURN_NONE;
}


/* Test/bench helpers: the signatures canopy would record right here, or for
 * a suspended greenlet. Root first, capped at max_stack_depth. */
PyObject *cx_py_walk_current(PyObject *self, PyObject *unused)
{
    if (!cx.frames_buf) {
        PyErr_SetString(PyExc_RuntimeError, "canopy: not configured");
        return NULL;
    }
    size_t n = cx_walk(cx_frame_of_tstate(PyThreadState_GET()));
    return frames_to_list(n);
}

PyObject *cx_py_walk_greenlet(PyObject *self, PyObject *g)
{
    if (!cx.frames_buf) {
        PyErr_SetString(PyExc_RuntimeError, "canopy: not configured");
        return NULL;
    }
    PyObject *keep = NULL;
    cx_frame *leaf = cx_frame_of_greenlet(g, &keep);
    size_t n = cx_walk(leaf);
    PyObject *l = frames_to_list(n);
    Py_XDECREF(keep);
    return l;
}
