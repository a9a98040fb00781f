/*
 * Child greenlets: work a profiled request spawns is profiled under the
 * request's segment, and its snapshots are rooted at the spawn site:
 *
 *     handler -> fan_out -> <greenlet spawn> -> fetch_a
 *
 * Detection happens in the switch callback, where it costs nothing until a
 * greenlet runs for the first time: a greenlet's first switch-in is the only
 * switch into it with no Python frame on the thread (greenlet calls the trace
 * function before run() starts). Only then do we ask who spawned it:
 *
 *  - a gevent Greenlet records its spawner (spawning_greenlet, a weakref)
 *    and the spawner's leaf frames at the spawn (spawning_stack, code and
 *    line, at most Greenlet.spawning_stack_limit = 10 frames, immutable on
 *    the compiled class). When that chain was cut, the frames above its
 *    oldest one are taken from the spawner's stack as it is now (the
 *    spawner usually still waits in the same function, e.g. in joinall);
 *  - a raw greenlet.greenlet is attributed to the greenlet that first
 *    switches into it when that one is profiled (the usual g.switch() by its
 *    creator, whose saved frames are then exactly the spawn site), else to
 *    its parent; the spawn stack is that greenlet's saved frames.
 *
 * Recording the spawner at creation would need a hook in greenlet's or
 * gevent's constructors, which neither offers; gevent already pays for the
 * spawn stack in every Greenlet it makes.
 *
 * A spawn stack is turned into signatures once per spawn site (the parent's
 * site plus the code objects and lines of the spawner's frames) and shared,
 * refcounted, by every child spawned there; a snapshot only copies pointers.
 *
 * Thread mode has no switch to watch: canopy_agent wraps threading.Thread.
 * start, which asks thread_spawn() for a token (owner and spawn site) in the
 * starting thread and registers the new thread with it when it runs (see
 * threads.c).
 *
 * Everything here runs with the GIL held, inside the tracer or the
 * middleware's end(): errors are cleared and counted, never raised.
 */
#include "cx.h"

#include <stdlib.h>
#include <string.h>

#define MARKER "<greenlet spawn>"
/* Spawn stacks longer than this are cut at the root side (leaf kept). */
#define MAX_SPAWN_FRAMES 256
#define SITES 256 /* cached spawn sites; cleared as a whole when 3/4 full */

typedef struct site_frame {
    PyObject *code; /* strong ref: the address identifies the site */
    int line;
} site_frame;

typedef struct cx_spawn {
    uint32_t refs;
    uint32_t n;               /* frames[0..n), root first, the marker last */
    uint64_t hash;
    struct cx_spawn *parent;  /* the spawner's own site (strong ref), or NULL */
    uint32_t n_key;
    site_frame *key;          /* the spawner's frames, root first */
    cn_str *frames;
    cn_intern_slot *slots;    /* the library's per-batch index cache, per frame */
    char **strs;              /* owned signature strings (not the marker) */
} cx_spawn;

static cx_spawn *sites[SITES];
static size_t n_sites;

static PyObject *s_spawning_greenlet, *s_spawning_stack, *s_parent, *s_dead, *s_f_back, *s_f_code, *s_f_lineno;

void cx_spawn_release(cx_spawn *sp)
{
    while (sp && --sp->refs == 0) {
        cx_spawn *parent = sp->parent;
        for (uint32_t i = 0; i < sp->n_key; i++)
            Py_XDECREF(sp->key[i].code);
        if (sp->strs) {
            for (uint32_t i = 0; i < sp->n; i++)
                free(sp->strs[i]);
        }
        free(sp->key);
        free(sp->frames);
        free(sp->slots);
        free(sp->strs);
        free(sp);
        sp = parent; /* drop the reference this site held on its parent */
    }
}

void cx_children_clear_sites(void)
{
    for (size_t i = 0; i < SITES; i++) {
        cx_spawn_release(sites[i]);
        sites[i] = NULL;
    }
    n_sites = 0;
}

static uint64_t site_hash(const cx_spawn *parent, const site_frame *f, uint32_t n)
{
    uint64_t h = (uint64_t)(uintptr_t)parent * 0x9E3779B97F4A7C15ull;
    for (uint32_t i = 0; i < n; i++) {
        h ^= ((uint64_t)(uintptr_t)f[i].code >> 4) + ((uint64_t)(uint32_t)f[i].line << 40);
        h *= 0xC2B2AE3D27D4EB4Full;
        h ^= h >> 29;
    }
    return h;
}

/* Builds the site's signatures: the parent's, then the spawner's, then the marker. */
static cx_spawn *site_build(cx_spawn *parent, const site_frame *f, uint32_t n, uint64_t hash)
{
    uint32_t pn = parent ? parent->n : 0;
    uint32_t total = pn + n + 1;
    uint32_t cut = 0;
    if (total > MAX_SPAWN_FRAMES) {
        cut = total - MAX_SPAWN_FRAMES;
        total = MAX_SPAWN_FRAMES;
    }
    cx_spawn *sp = calloc(1, sizeof(*sp));
    if (!sp)
        return NULL;
    sp->refs = 1;
    sp->hash = hash;
    sp->key = calloc(n ? n : 1, sizeof(*sp->key));
    sp->frames = calloc(total, sizeof(*sp->frames));
    sp->slots = calloc(total, sizeof(*sp->slots));
    sp->strs = calloc(total, sizeof(*sp->strs));
    if (!sp->key || !sp->frames || !sp->slots || !sp->strs)
        goto fail;
    for (uint32_t i = 0; i < n; i++) {
        Py_INCREF(f[i].code);
        sp->key[i] = f[i];
        sp->n_key++;
    }
    /* All frames in order, skipping the first `cut` (root side). */
    uint32_t all = pn + n + 1;
    for (uint32_t j = cut; j < all; j++) {
        uint32_t o = j - cut;
        const char *src;
        size_t len;
        char *own = NULL;
        if (j < pn) {
            src = parent->frames[j].ptr;
            len = parent->frames[j].len;
        } else if (j < pn + n) {
            uint32_t l = 0;
            own = cx_sig_format((PyCodeObject *)f[j - pn].code, f[j - pn].line, &l);
            if (!own)
                goto fail;
            src = own;
            len = l;
        } else {
            src = MARKER;
            len = sizeof(MARKER) - 1;
        }
        if (!own && src != (const char *)MARKER) {
            own = malloc(len + 1);
            if (!own)
                goto fail;
            memcpy(own, src, len);
            own[len] = '\0';
        }
        sp->strs[o] = own; /* NULL for the marker, which is static */
        sp->frames[o].ptr = own ? own : MARKER;
        sp->frames[o].len = len;
        sp->frames[o].slot = &sp->slots[o];
        sp->n = o + 1;
    }
    if (parent) {
        parent->refs++;
        sp->parent = parent;
    }
    cx.c.spawn_sites++;
    return sp;
fail:
    cx_spawn_release(sp);
    return NULL;
}

/* The cached site, or a new one; a new reference either way (NULL: no memory). */
static cx_spawn *site_get(cx_spawn *parent, const site_frame *f, uint32_t n)
{
    uint64_t h = site_hash(parent, f, n);
    size_t i = (size_t)h & (SITES - 1);
    for (;;) {
        cx_spawn *sp = sites[i];
        if (!sp)
            break;
        if (sp->hash == h && sp->parent == parent && sp->n_key == n &&
            memcmp(sp->key, f, n * sizeof(*f)) == 0) {
            sp->refs++;
            return sp;
        }
        i = (i + 1) & (SITES - 1);
    }
    cx_spawn *sp = site_build(parent, f, n, h);
    if (!sp)
        return NULL;
    if (n_sites >= SITES * 3 / 4) {
        /* A server has few spawn sites; many means generated code. Start over
         * rather than grow: children hold their own references. */
        cx_children_clear_sites();
        i = (size_t)h & (SITES - 1);
    }
    while (sites[i])
        i = (i + 1) & (SITES - 1);
    sp->refs++;
    sites[i] = sp;
    n_sites++;
    return sp;
}

/* ---- the spawner's frames as (code, line), root first ------------------- */

typedef struct frame_list {
    site_frame f[MAX_SPAWN_FRAMES];
    uint32_t n;
} frame_list;

static frame_list scratch_a, scratch_b; /* GIL-protected scratch, off the stack */

/* A greenlet's saved frames, leaf first, through the public frame API (once
 * per child: the cost is in the spawn, not in the switches). Borrowed codes:
 * the frames keep them alive until the caller is done. */
static void saved_frames(PyObject *greenlet, frame_list *out, PyObject **keep)
{
    out->n = 0;
    *keep = NULL;
    PyObject *f = PyObject_GetAttr(greenlet, cx.str_gr_frame);
    if (!f) {
        PyErr_Clear();
        return;
    }
    if (!PyFrame_Check(f)) {
        Py_DECREF(f);
        return;
    }
    *keep = f; /* the leaf keeps every older frame, and so their codes, alive */
    PyFrameObject *fr = (PyFrameObject *)f;
    while (fr && out->n < MAX_SPAWN_FRAMES) {
        PyCodeObject *co = PyFrame_GetCode(fr);
        out->f[out->n].code = (PyObject *)co;
        out->f[out->n].line = PyFrame_GetLineNumber(fr);
        out->n++;
        Py_DECREF(co); /* the frame holds it */
        PyFrameObject *back = PyFrame_GetBack(fr);
        Py_XDECREF(back); /* borrowed is enough: *keep holds the chain */
        fr = back;
    }
}

/* gevent's spawning_stack chain (_Frame objects, leaf first). */
static int gevent_frames(PyObject *chain, frame_list *out)
{
    out->n = 0;
    Py_XINCREF(chain);
    while (chain && chain != Py_None && out->n < MAX_SPAWN_FRAMES) {
        PyObject *code = PyObject_GetAttr(chain, s_f_code);
        PyObject *line = code ? PyObject_GetAttr(chain, s_f_lineno) : NULL;
        PyObject *back = line ? PyObject_GetAttr(chain, s_f_back) : NULL;
        Py_DECREF(chain);
        chain = back;
        if (!back || !PyCode_Check(code)) {
            Py_XDECREF(code);
            Py_XDECREF(line);
            Py_XDECREF(back);
            PyErr_Clear();
            return -1;
        }
        out->f[out->n].code = code; /* the _Frame holds it; see below */
        out->f[out->n].line = (int)PyLong_AsLong(line);
        Py_DECREF(line);
        Py_DECREF(code); /* still alive: target.spawning_stack holds the chain */
        out->n++;
    }
    Py_XDECREF(chain);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return 0;
}

static void reverse_frames(frame_list *l)
{
    for (uint32_t i = 0, j = l->n ? l->n - 1 : 0; i < j; i++, j--) {
        site_frame t = l->f[i];
        l->f[i] = l->f[j];
        l->f[j] = t;
    }
}

/*
 * gevent's chain has at most 10 frames: when it was probably cut, the frames
 * above its oldest come from the spawner's stack as it is now, provided the
 * spawner still runs the frame that spawned (the usual fan-out: spawn, then
 * joinall in the same function). That frame is the leaf-most one with the
 * spawning code; the frames between it and the chain's oldest must match the
 * chain (code and line) or nothing is spliced: a guess would attribute the
 * work to the wrong caller. site is root first; on return *keep holds the
 * spawner's frames (the borrowed codes live as long as it does).
 */
static void splice_root(PyObject *spawner, frame_list *site, PyObject **keep)
{
    frame_list *now = &scratch_b; /* leaf first */
    saved_frames(spawner, now, keep);
    uint32_t n = site->n, i;
    for (i = 0; i < now->n; i++) {
        if (now->f[i].code == site->f[n - 1].code)
            break;
    }
    if (i + n > now->n)
        return;
    for (uint32_t j = 1; j < n; j++) {
        const site_frame *a = &now->f[i + j], *b = &site->f[n - 1 - j];
        if (a->code != b->code || a->line != b->line)
            return;
    }
    uint32_t above = now->n - (i + n); /* frames older than the chain's oldest */
    if (above + n > MAX_SPAWN_FRAMES)
        above = MAX_SPAWN_FRAMES - n;
    memmove(&site->f[above], &site->f[0], n * sizeof(site->f[0]));
    for (uint32_t k = 0; k < above; k++)
        site->f[k] = now->f[now->n - 1 - k];
    site->n += above;
}

/* ---- registration ----------------------------------------------------------- */

static void child_unlink(cx_segment *owner, cx_segment *child)
{
    for (cx_segment **pp = &owner->children; *pp; pp = &(*pp)->children) {
        if (*pp == child) {
            *pp = child->children;
            child->children = NULL;
            owner->n_children--;
            return;
        }
    }
}

static int is_dead(PyObject *g)
{
    PyObject *d = PyObject_GetAttr(g, s_dead);
    if (!d) {
        PyErr_Clear();
        return 0;
    }
    int dead = d == Py_True;
    Py_DECREF(d);
    return dead;
}

/* Drops the owner's dead children, to make room (rare: only at the bound). */
static void sweep_dead(cx_segment *owner)
{
    cx_segment *c = owner->children;
    while (c) {
        cx_segment *next = c->children;
        if (c->greenlet && is_dead(c->greenlet)) {
            child_unlink(owner, c);
            cx_registry_pop(&cx.greenlets, c->key);
            cx.c.children_ended++;
            cx_segment_free(c);
        }
        c = next;
    }
}

/* 1 and a new ref in *out if obj has the attribute, 0 and NULL if not, -1 on error. */
static int optional_attr(PyObject *obj, PyObject *name, PyObject **out)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyObject_GetOptionalAttr(obj, name, out);
#else
    return _PyObject_LookupAttr(obj, name, out);
#endif
}

/* gevent's Hub type, once gevent.hub is loaded (by the app: never imported here). */
static void find_hub_type(void)
{
    PyObject *name = PyUnicode_FromString("gevent.hub");
    PyObject *mod = name ? PyImport_GetModule(name) : NULL;
    Py_XDECREF(name);
    PyObject *hub = mod ? PyObject_GetAttrString(mod, "Hub") : NULL;
    Py_XDECREF(mod);
    PyObject *t = hub && PyType_Check(hub) ? PyTuple_Pack(1, hub) : NULL;
    Py_XDECREF(hub);
    PyErr_Clear();
    if (t)
        Py_XSETREF(cx.skip_types, t);
}

/* Registers target as a child of its spawner's segment; returns it, or NULL. */
static cx_segment *follow(PyObject *origin, PyObject *target)
{
    if (!cx.skip_types || PyTuple_GET_SIZE(cx.skip_types) == 0)
        find_hub_type();
    if (cx.skip_types && PyTuple_GET_SIZE(cx.skip_types) &&
        PyObject_IsInstance(target, cx.skip_types) == 1)
        return NULL; /* gevent's hub: its loop is nobody's work */

    PyObject *spawner = NULL; /* borrowed */
    PyObject *chain = NULL;   /* new ref: gevent's spawning_stack */
    PyObject *ref = NULL;
    /* Most greenlets of a raw-greenlet app lack the attribute: look it up
     * without making an AttributeError (about 1 us each). */
    if (optional_attr(target, s_spawning_greenlet, &ref) < 0)
        PyErr_Clear();
    if (ref) {
        if (PyWeakref_Check(ref)) {
#if PY_VERSION_HEX >= 0x030D0000
            /* PyWeakref_GetObject is deprecated in 3.13. Borrowed below: the
             * spawner is alive as long as the registry holds it, which is
             * all we use it for. */
            PyObject *strong = NULL;
            if (PyWeakref_GetRef(ref, &strong) < 0)
                PyErr_Clear();
            spawner = strong;
            Py_XDECREF(strong);
#else
            spawner = PyWeakref_GetObject(ref);
#endif
        }
        if (spawner == Py_None)
            spawner = NULL;
        if (spawner) {
            chain = PyObject_GetAttr(target, s_spawning_stack);
            if (!chain)
                PyErr_Clear();
        }
    } else {
        /* A raw greenlet: whoever first switches into it, if profiled. */
        if (cx_registry_get(&cx.greenlets, (uintptr_t)origin)) {
            spawner = origin;
        } else {
            PyObject *parent = PyObject_GetAttr(target, s_parent);
            if (!parent)
                PyErr_Clear();
            spawner = parent; /* borrowed below: target holds its parent */
            Py_XDECREF(parent);
        }
    }
    cx_segment *pseg = spawner ? cx_registry_get(&cx.greenlets, (uintptr_t)spawner) : NULL;
    if (!pseg) {
        Py_XDECREF(chain);
        Py_XDECREF(ref);
        return NULL;
    }
    cx_segment *owner = cx_segment_root(pseg);
    if (owner->n_children >= cx.max_children) {
        sweep_dead(owner);
        if (owner->n_children >= cx.max_children) {
            cx.c.children_dropped++;
            Py_XDECREF(chain);
            Py_XDECREF(ref);
            return NULL;
        }
    }

    /* The spawner's frames at the spawn, root first. */
    PyObject *keep = NULL;
    frame_list *site = &scratch_a;
    if (chain && chain != Py_None) {
        if (gevent_frames(chain, site) != 0)
            site->n = 0;
        reverse_frames(site);
        if (site->n >= 10 && site->n < MAX_SPAWN_FRAMES)
            splice_root(spawner, site, &keep);
    } else {
        saved_frames(spawner, site, &keep);
        reverse_frames(site);
    }

    cx_spawn *sp = site_get(pseg->spawn, site->f, site->n);
    Py_XDECREF(keep);
    Py_XDECREF(chain);
    Py_XDECREF(ref);
    if (!sp) {
        cx.c.errors++;
        return NULL;
    }
    cx_segment *c = calloc(1, sizeof(*c));
    if (!c) {
        cx_spawn_release(sp);
        cx.c.errors++;
        return NULL;
    }
    Py_INCREF(target);
    c->key = (uintptr_t)target;
    c->greenlet = target;
    c->owner = owner;
    c->spawn = sp;
    c->dump_period_ms = owner->dump_period_ms;
    if (cx_registry_put(&cx.greenlets, c) != 0) {
        cx.c.children_dropped++;
        cx.c.registry_full++;
        cx_segment_free(c); /* target is alive in the switch: no code runs */
        return NULL;
    }
    c->children = owner->children;
    owner->children = c;
    owner->n_children++;
    cx.c.children_followed++;
    return c;
}

void cx_children_switch(PyObject *origin, PyObject *target, cx_segment **origin_seg, cx_segment **target_seg)
{
    cx_segment *o = *origin_seg;
    if (o && o->owner && is_dead(origin)) {
        /* The child finished: its last switch out. origin is alive in the
         * tracer's arguments, so freeing runs no code. */
        cx_registry_pop(&cx.greenlets, o->key);
        child_unlink(o->owner, o);
        cx.c.children_ended++;
        cx_segment_free(o);
        *origin_seg = NULL;
    }
    if (*target_seg)
        return;
    /* Every later switch into a greenlet finds its saved frames in place. */
    if (cx_frames_any(PyThreadState_GET()))
        return;
    *target_seg = follow(origin, target);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        cx.c.errors++;
    }
    /* follow() ran Python code (attribute lookups), which may have ended
     * segments: the origin's is looked up again. */
    if (*origin_seg)
        *origin_seg = cx_registry_get(&cx.greenlets, (uintptr_t)origin);
}

size_t cx_children_stitch(const cx_segment *child, size_t n)
{
    const cx_spawn *sp = child->spawn;
    if (!sp || n >= cx.max_depth) {
        if (sp)
            cx.c.frames_truncated++;
        return n;
    }
    size_t k = sp->n;
    if (k > cx.max_depth - n) {
        k = cx.max_depth - n; /* SkyWalking's cap: the leaf frames stay */
        cx.c.frames_truncated++;
    }
    memmove(cx.frames_buf + k, cx.frames_buf, n * sizeof(*cx.frames_buf));
    memcpy(cx.frames_buf, sp->frames + (sp->n - k), k * sizeof(*cx.frames_buf));
    return n + k;
}

void cx_children_end(cx_segment *owner)
{
    /* Unregister them all first: freeing a child that still runs can throw
     * GreenletExit into it, which switches and re-enters the tracer. */
    /* Thread mode's segments hold no greenlet and live in cx.threads. */
    cx_registry *reg = owner->greenlet ? &cx.greenlets : &cx.threads;
    cx_segment *c = owner->children;
    for (cx_segment *i = c; i; i = i->children)
        cx_registry_pop(reg, i->key);
    owner->children = NULL;
    owner->n_children = 0;
    while (c) {
        cx_segment *next = c->children;
        cx.c.children_ended++;
        cx_segment_free(c);
        c = next;
    }
}

static int intern_names(void)
{
    if (s_dead)
        return 0;
    s_spawning_greenlet = PyUnicode_InternFromString("spawning_greenlet");
    s_spawning_stack = PyUnicode_InternFromString("spawning_stack");
    s_parent = PyUnicode_InternFromString("parent");
    s_f_back = PyUnicode_InternFromString("f_back");
    s_f_code = PyUnicode_InternFromString("f_code");
    s_f_lineno = PyUnicode_InternFromString("f_lineno");
    s_dead = PyUnicode_InternFromString("dead");
    return s_spawning_greenlet && s_spawning_stack && s_parent && s_f_back && s_f_code && s_f_lineno && s_dead
               ? 0
               : -1;
}

PyObject *cx_py_follow_children(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"enabled", "max_per_segment", "skip_types", NULL};
    int enabled = 1;
    Py_ssize_t max = 64;
    PyObject *skip = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "p|nO!", kwlist, &enabled, &max, &PyTuple_Type, &skip))
        return NULL;
    if (max < 0 || max > 1 << 20) {
        PyErr_SetString(PyExc_ValueError, "canopy: max_children_per_segment out of range (0..1048576)");
        return NULL;
    }
    if (intern_names() != 0)
        return NULL;
    if (skip) {
        Py_INCREF(skip);
        Py_XSETREF(cx.skip_types, skip);
    }
    cx.max_children = (uint32_t)max;
    cx.follow_children = enabled && max > 0;
    return PyBool_FromLong(cx.follow_children);
}

/* ---- for thread mode (threads.c) ---------------------------------------- */

cx_spawn *cx_spawn_here(cx_spawn *parent, int skip)
{
    /* The running thread's frames, leaf first, less the caller's wrappers. */
    frame_list *site = &scratch_a;
    site->n = 0;
    PyFrameObject *f = PyThreadState_GetFrame(PyThreadState_GET());
    for (int i = 0; f && i < skip; i++) {
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    PyFrameObject *keep = f; /* holds the older frames, and their codes */
    while (f && site->n < MAX_SPAWN_FRAMES) {
        PyCodeObject *co = PyFrame_GetCode(f);
        site->f[site->n].code = (PyObject *)co;
        site->f[site->n].line = PyFrame_GetLineNumber(f);
        site->n++;
        Py_DECREF(co);
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_XDECREF(back); /* borrowed: the running frames keep their objects */
        f = back;
    }
    reverse_frames(site);
    cx_spawn *sp = site_get(parent, site->f, site->n);
    Py_XDECREF(keep);
    return sp;
}

void cx_spawn_ref(cx_spawn *sp)
{
    sp->refs++;
}

void cx_children_link(cx_segment *owner, cx_segment *child)
{
    child->owner = owner;
    child->children = owner->children;
    owner->children = child;
    owner->n_children++;
    cx.c.children_followed++;
}

void cx_children_unlink(cx_segment *owner, cx_segment *child)
{
    child_unlink(owner, child);
}
