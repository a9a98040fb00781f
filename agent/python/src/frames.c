/*
 * Frame walking and the code signature cache.
 *
 * A snapshot is the list of code signatures of a stack, "<co_filename>.
 * <co_name>: <lineno>" (SkyWalking's Python format), root first. Building
 * that string for every frame of every snapshot would dominate the cost of a
 * profiled switch, so signatures are cached per (code object, instruction):
 * after warm-up a frame costs one hash probe, and the library's per-batch
 * intern slot stored next to the string makes adding it O(1) as well.
 *
 * On CPython 3.11 the walk reads the interpreter frames directly
 * (_PyInterpreterFrame, the same approach greenlet 2.0 itself takes): it
 * follows frame->previous and reads f_code / prev_instr, which allocates
 * nothing, whereas PyFrame_GetBack would materialise a PyFrameObject for
 * every frame of the stack. Other versions use the public frame API.
 */
#include "cx.h"

#include <frameobject.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#define CX_FAST_FRAMES 1
#define Py_BUILD_CORE
#include <internal/pycore_frame.h>
#undef Py_BUILD_CORE
#else
#define CX_FAST_FRAMES 0
#endif

/* The cache: open addressing with linear probing, never more than 3/4 full.
 * When a walk could overflow it, it is cleared as a whole (simple, and the
 * working set of a server is small and re-warms in a few requests). */
static cx_sig *sigs;
static size_t sig_mask;
static size_t sig_count;
static size_t sig_limit;

static inline size_t sig_hash(const void *code, int lasti)
{
    uint64_t h = (uint64_t)(uintptr_t)code >> 4;
    h ^= (uint64_t)(uint32_t)lasti * 0x9E3779B97F4A7C15ull;
    h *= 0xC2B2AE3D27D4EB4Full;
    return (size_t)(h ^ (h >> 29));
}

int cx_frames_init(size_t cache_capacity, size_t max_depth)
{
    size_t cap = 64;
    /* Room for the requested entries at 3/4 load plus one full stack. */
    while (cap * 3 / 4 < cache_capacity + max_depth)
        cap <<= 1;
    cx_sig *t = calloc(cap, sizeof(*t));
    cn_str *buf = calloc(max_depth ? max_depth : 1, sizeof(*buf));
    if (!t || !buf) {
        free(t);
        free(buf);
        return -1;
    }
    cx_frames_fini();
    sigs = t;
    sig_mask = cap - 1;
    sig_count = 0;
    sig_limit = cap * 3 / 4;
    cx.frames_buf = buf;
    cx.max_depth = max_depth;
    return 0;
}

void cx_frames_clear(void)
{
    if (!sigs)
        return;
    for (size_t i = 0; i <= sig_mask; i++) {
        cx_sig *e = &sigs[i];
        if (e->code) {
            free(e->str);
            /* Safe: code objects run no Python code when they die, and a
             * weakref callback on a code object is not a thing servers do. */
            Py_DECREF(e->code);
        }
    }
    memset(sigs, 0, (sig_mask + 1) * sizeof(*sigs));
    sig_count = 0;
}

void cx_frames_fini(void)
{
    cx_frames_clear();
    free(sigs);
    sigs = NULL;
    sig_mask = sig_count = sig_limit = 0;
    free(cx.frames_buf);
    cx.frames_buf = NULL;
}

/* Builds "<file>.<name>: <line>" for a cache miss. */
static char *sig_format(PyCodeObject *co, int line, uint32_t *len_out)
{
    Py_ssize_t flen = 0, nlen = 0;
    const char *file = co->co_filename ? PyUnicode_AsUTF8AndSize(co->co_filename, &flen) : NULL;
    if (!file) {
        PyErr_Clear();
        file = "?";
        flen = 1;
    }
    const char *name = co->co_name ? PyUnicode_AsUTF8AndSize(co->co_name, &nlen) : NULL;
    if (!name) {
        PyErr_Clear();
        name = "?";
        nlen = 1;
    }
    size_t cap = (size_t)flen + (size_t)nlen + 16;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    int n = snprintf(s, cap, "%.*s.%.*s: %d", (int)flen, file, (int)nlen, name, line);
    if (n < 0 || (size_t)n >= cap) {
        free(s);
        return NULL;
    }
    *len_out = (uint32_t)n;
    return s;
}

static cx_sig *sig_get(PyCodeObject *co, int lasti, int line_or_neg)
{
    size_t i = sig_hash(co, lasti) & sig_mask;
    for (;;) {
        cx_sig *e = &sigs[i];
        if (e->code == (PyObject *)co && e->lasti == lasti)
            return e;
        if (!e->code)
            break;
        i = (i + 1) & sig_mask;
    }
    /* Miss. cx_walk guarantees there is room (see its reset check). */
    cx.c.sig_misses++;
    int line = line_or_neg;
    if (line < 0) {
        line = PyCode_Addr2Line(co, lasti * (int)sizeof(_Py_CODEUNIT));
    }
    uint32_t len = 0;
    char *str = sig_format(co, line, &len);
    if (!str)
        return NULL;
    cx_sig *e = &sigs[i];
    Py_INCREF(co);
    e->code = (PyObject *)co;
    e->lasti = lasti;
    e->str = str;
    e->len = len;
    e->slot.gen = 0;
    e->slot.index = 0;
    sig_count++;
    return e;
}

/* Root first, as SkyWalking wants; the walk collected leaf first. */
static void reverse(cn_str *a, size_t n)
{
    for (size_t i = 0, j = n ? n - 1 : 0; i < j; i++, j--) {
        cn_str t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static void make_room(void)
{
    if (sig_count + cx.max_depth > sig_limit) {
        cx.c.sig_resets++;
        cx_frames_clear();
    }
}

#if CX_FAST_FRAMES

cx_frame *cx_frame_of_tstate(PyThreadState *tstate)
{
    if (!tstate || !tstate->cframe)
        return NULL;
    return tstate->cframe->current_frame;
}

cx_frame *cx_frame_of_greenlet(PyObject *greenlet, PyObject **keep)
{
    *keep = NULL;
    PyObject *f = PyObject_GetAttr(greenlet, cx.str_gr_frame);
    if (!f) {
        PyErr_Clear();
        cx.c.errors++;
        return NULL;
    }
    if (!PyFrame_Check(f)) { /* None: not started, running, or dead */
        Py_DECREF(f);
        return NULL;
    }
    *keep = f; /* keeps the frame object, and so its frame data, alive */
    return ((PyFrameObject *)f)->f_frame;
}

size_t cx_walk(cx_frame *leaf)
{
    if (!sigs || !leaf)
        return 0;
    make_room();
    cn_str *out = cx.frames_buf;
    size_t n = 0;
    for (_PyInterpreterFrame *f = leaf; f; f = f->previous) {
        /* Frames still being set up are not part of the Python-visible
         * stack (PyFrame_GetBack skips them the same way). */
        if (_PyFrame_IsIncomplete(f))
            continue;
        if (n == cx.max_depth) {
            cx.c.frames_truncated++;
            break;
        }
        cx_sig *e = sig_get(f->f_code, _PyInterpreterFrame_LASTI(f), -1);
        if (CX_UNLIKELY(!e)) {
            cx.c.errors++;
            continue;
        }
        out[n].ptr = e->str;
        out[n].len = e->len;
        out[n].slot = &e->slot;
        n++;
    }
    reverse(out, n);
    return n;
}

#else /* portable: the public frame API */

cx_frame *cx_frame_of_tstate(PyThreadState *tstate)
{
    /* Borrowed is enough for the walk below: the GIL is held throughout and
     * the thread cannot pop frames meanwhile. */
    PyFrameObject *f = tstate ? PyThreadState_GetFrame(tstate) : NULL;
    Py_XDECREF(f);
    return f;
}

cx_frame *cx_frame_of_greenlet(PyObject *greenlet, PyObject **keep)
{
    *keep = NULL;
    PyObject *f = PyObject_GetAttr(greenlet, cx.str_gr_frame);
    if (!f) {
        PyErr_Clear();
        cx.c.errors++;
        return NULL;
    }
    if (!PyFrame_Check(f)) {
        Py_DECREF(f);
        return NULL;
    }
    *keep = f;
    return f;
}

size_t cx_walk(cx_frame *leaf)
{
    if (!sigs || !leaf)
        return 0;
    make_room();
    cn_str *out = cx.frames_buf;
    size_t n = 0;
    PyFrameObject *f = leaf;
    Py_INCREF(f);
    while (f) {
        if (n == cx.max_depth) {
            cx.c.frames_truncated++;
            Py_DECREF(f);
            break;
        }
        PyCodeObject *co = PyFrame_GetCode(f);
        int line = PyFrame_GetLineNumber(f);
        /* Without the instruction offset the cache is keyed by line. */
        cx_sig *e = sig_get(co, line, line);
        Py_DECREF(co);
        if (e) {
            out[n].ptr = e->str;
            out[n].len = e->len;
            out[n].slot = &e->slot;
            n++;
        } else {
            cx.c.errors++;
        }
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    reverse(out, n);
    return n;
}

#endif
