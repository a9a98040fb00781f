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
 * Two walkers. The fast one reads the interpreter frames directly
 * (_PyInterpreterFrame, as greenlet itself does on 3.11+): it follows
 * frame->previous and reads the code object and instruction pointer, which
 * allocates nothing, whereas PyFrame_GetBack materialises a PyFrameObject for
 * every frame of the stack (2.6-3.2x the cost of a profiled switch on 3.13).
 * Its layout is per CPython minor version, so it is compiled only for the
 * versions it was written and tested against (3.11 and 3.13; see
 * canopy_agent/_support.py for the policy). The public frame API walker works
 * on any version and is the fallback: for untested interpreters run with
 * CANOPY_ALLOW_UNTESTED_PYTHON=1, and on demand (CANOPY_FRAME_WALK=public)
 * for benchmarks and as an escape hatch.
 */
#include "cx.h"

#include <frameobject.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The versions whose frame layout the fast walker knows. 3.12 is left out on
 * purpose: its layout is close to 3.11's, but no interpreter here runs it. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#define CX_FAST_FRAMES 311
#elif PY_VERSION_HEX >= 0x030D0000 && PY_VERSION_HEX < 0x030E0000
#define CX_FAST_FRAMES 313
#else
#define CX_FAST_FRAMES 0
#endif
#if CX_FAST_FRAMES
#define Py_BUILD_CORE
#include <internal/pycore_frame.h>
#undef Py_BUILD_CORE
#endif

/* The cache: open addressing with linear probing, never more than 3/4 full.
 * When a walk could overflow it, it is cleared as a whole (simple, and the
 * working set of a server is small and re-warms in a few requests). */
static cx_sig *sigs;
static size_t sig_mask;
static size_t sig_count;
static size_t sig_limit;
/* 1: walk with the public frame API (set before the agent runs; GIL held). */
static int walk_public = !CX_FAST_FRAMES;

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
char *cx_sig_format(PyCodeObject *co, int line, uint32_t *len_out)
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
        /* lasti counts code units of 2 bytes (_Py_CODEUNIT); only the fast
         * walker, which includes the internal headers, passes one. */
        line = PyCode_Addr2Line(co, lasti * 2);
    }
    uint32_t len = 0;
    char *str = cx_sig_format(co, line, &len);
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

static inline void put(cn_str *out, size_t n, cx_sig *e)
{
    out[n].ptr = e->str;
    out[n].len = e->len;
    out[n].slot = &e->slot;
}

#if CX_FAST_FRAMES
/* ---- the fast walker: _PyInterpreterFrame of 3.11 and 3.13 ---------------- */

/* sig_get turns an instruction index into a byte offset with "* 2". */
_Static_assert(sizeof(_Py_CODEUNIT) == 2, "a code unit is 2 bytes");

#if CX_FAST_FRAMES == 311
static inline _PyInterpreterFrame *fast_top(PyThreadState *tstate)
{
    return tstate->cframe ? tstate->cframe->current_frame : NULL;
}

static inline PyCodeObject *fast_code(_PyInterpreterFrame *f)
{
    return f->f_code;
}
#else /* 3.13: cframe is gone and the code object became f_executable */
static inline _PyInterpreterFrame *fast_top(PyThreadState *tstate)
{
    return tstate->current_frame;
}

static inline PyCodeObject *fast_code(_PyInterpreterFrame *f)
{
    /* Entry frames pushed by the C stack are not Python frames; their
     * f_executable is not a function's code. */
    if (f->owner == FRAME_OWNED_BY_CSTACK || !f->f_executable || !PyCode_Check(f->f_executable))
        return NULL;
    return (PyCodeObject *)f->f_executable;
}
#endif

static cx_frame *fast_frame_of_tstate(PyThreadState *tstate)
{
    return tstate ? fast_top(tstate) : NULL;
}

static size_t fast_walk(_PyInterpreterFrame *leaf, cn_str *out)
{
    size_t n = 0;
    for (_PyInterpreterFrame *f = leaf; f; f = f->previous) {
        PyCodeObject *co = fast_code(f);
        /* Frames still being set up are not part of the Python-visible
         * stack (PyFrame_GetBack skips them the same way). */
        if (!co || _PyFrame_IsIncomplete(f))
            continue;
        if (n == cx.max_depth) {
            cx.c.frames_truncated++;
            break;
        }
        cx_sig *e = sig_get(co, _PyInterpreterFrame_LASTI(f), -1);
        if (CX_UNLIKELY(!e)) {
            cx.c.errors++;
            continue;
        }
        put(out, n++, e);
    }
    return n;
}
#endif

/* ---- the public frame API: any CPython, the measured fallback ------------- */

static cx_frame *public_frame_of_tstate(PyThreadState *tstate)
{
    /* Borrowed is enough for the walk: the GIL is held throughout and the
     * thread cannot pop frames meanwhile (the thread state keeps the frame
     * object it materialised). */
    PyFrameObject *f = tstate ? PyThreadState_GetFrame(tstate) : NULL;
    Py_XDECREF(f);
    return f;
}

static size_t public_walk(PyFrameObject *leaf, cn_str *out)
{
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
        if (e)
            put(out, n++, e);
        else
            cx.c.errors++;
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    return n;
}

int cx_frames_any(PyThreadState *tstate)
{
#if CX_FAST_FRAMES
    if (CX_LIKELY(!walk_public)) {
        for (_PyInterpreterFrame *f = fast_top(tstate); f; f = f->previous) {
            if (fast_code(f) && !_PyFrame_IsIncomplete(f))
                return 1;
        }
        return 0;
    }
#endif
    return public_frame_of_tstate(tstate) != NULL;
}

/* ---- dispatch --------------------------------------------------------------- */

cx_frame *cx_frame_of_tstate(PyThreadState *tstate)
{
#if CX_FAST_FRAMES
    if (CX_LIKELY(!walk_public))
        return fast_frame_of_tstate(tstate);
#endif
    return public_frame_of_tstate(tstate);
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
#if CX_FAST_FRAMES
    if (CX_LIKELY(!walk_public))
        return ((PyFrameObject *)f)->f_frame;
#endif
    return f;
}

size_t cx_walk(cx_frame *leaf)
{
    if (!sigs || !leaf)
        return 0;
    make_room();
    size_t n;
#if CX_FAST_FRAMES
    if (CX_LIKELY(!walk_public))
        n = fast_walk(leaf, cx.frames_buf);
    else
#endif
        n = public_walk(leaf, cx.frames_buf);
    reverse(cx.frames_buf, n);
    return n;
}

int cx_frames_fast_available(void)
{
    return CX_FAST_FRAMES != 0;
}

int cx_frames_set_public(int public_api)
{
    if (!public_api && !CX_FAST_FRAMES)
        return -1;
    walk_public = public_api != 0;
    return 0;
}

int cx_frames_public(void)
{
    return walk_public;
}

PyObject *cx_py_frame_walk(PyObject *self, PyObject *args)
{
    (void)self;
    const char *name = NULL;
    if (!PyArg_ParseTuple(args, "|z", &name))
        return NULL;
    if (name) {
        int public_api = strcmp(name, "public") == 0;
        if ((!public_api && strcmp(name, "fast") != 0) || cx_frames_set_public(public_api) != 0) {
            PyErr_Format(PyExc_ValueError, "canopy: frame walk '%s' is not available in this build (%s)", name,
                         CX_FAST_FRAMES ? "fast, public" : "public");
            return NULL;
        }
    }
    return PyUnicode_FromString(walk_public ? "public" : "fast");
}
