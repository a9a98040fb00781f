/*
 * _canopy: module functions, the snapshot path, and the agent lifecycle.
 *
 * Python (canopy_agent) decides policy: which requests to profile, task
 * admission, segment ids, modes. This file does what must be fast or must
 * not run Python code: registering the profiled greenlet/thread, taking a
 * snapshot, and handing it to the client library (cn_agent), which batches,
 * interns and ships it from its own native thread.
 *
 * Past 700 lines, it is one thing: the module's lifecycle (configure,
 * modes, tracers, shutdown, fork) and the request path (begin/end,
 * commands) share cx's state and its invariants. What tests and
 * canopy_agent.stats() read (counters, the capture hook, frame walks) is in
 * introspect.c.
 */
#include "cx.h"

#include <pythread.h>
#include <stdlib.h>
#include <string.h>

cx_state cx;

/* greenlet's C API, looked up through its capsule (the header ships inside
 * the greenlet package, not in an include directory, and we only need one
 * function). Index 4 is PyGreenlet_GetCurrent in every greenlet >= 0.4. */
#define CX_GREENLET_GETCURRENT_NUM 4
static void **greenlet_api;

PyObject *cx_greenlet_current(void)
{
    if (!greenlet_api)
        return NULL;
    PyObject *(*getcurrent)(void) = (PyObject * (*)(void)) greenlet_api[CX_GREENLET_GETCURRENT_NUM];
    return getcurrent();
}

static int import_greenlet(void)
{
    if (greenlet_api)
        return 0;
    greenlet_api = (void **)PyCapsule_Import("greenlet._C_API", 0);
    if (!greenlet_api) {
        PyErr_Clear();
        return -1;
    }
    return 0;
}

/* ---- snapshots ------------------------------------------------------------ */

int cx_snapshot(cx_segment *seg, cx_frame *leaf, int64_t now)
{
    /* A child greenlet's snapshot belongs to its owner's segment: same ids,
     * same sequence counter, same caps. */
    cx_segment *own = cx_segment_root(seg);
    if (now < own->not_before_ms) {
        cx.c.snapshots_early++;
        return 0;
    }
    if ((uint32_t)own->next_seq >= own->max_snapshots || now > own->deadline_ms) {
        cx.c.snapshots_capped++;
        return 0;
    }
    cn_agent *agent = cx.agent;
    if (!agent)
        return 0;
    size_t n = cx_walk(leaf);
    if (n == 0) {
        cx.c.snapshots_empty++;
        return 0;
    }
    if (seg->owner)
        n = cx_children_stitch(seg, n);
    cn_snapshot_in s;
    s.task = own->task;
    s.segment = own->segment;
    s.time_ms = now;
    s.sequence = own->next_seq;
    s.frames = cx.frames_buf;
    s.n_frames = n;
    if (cn_agent_add(agent, &s) != 0) {
        /* Not added: the sequence number is not used, so the segment's
         * sequences stay dense. */
        cx.c.snapshots_dropped++;
        own->dropped++;
        return 0;
    }
    if (CX_UNLIKELY(cx.capture != NULL))
        cx_capture_append(own, now, n);
    own->next_seq++;
    cx.c.snapshots++;
    return 1;
}

/* ---- helpers ------------------------------------------------------------- */

static int parse_mode(const char *s)
{
    if (strcmp(s, "greenlet") == 0)
        return CX_MODE_GREENLET;
    if (strcmp(s, "sampling") == 0)
        return CX_MODE_SAMPLING;
    if (strcmp(s, "thread") == 0)
        return CX_MODE_THREAD;
    if (strcmp(s, "off") == 0)
        return CX_MODE_OFF;
    return -1;
}

const char *cx_mode_name(int m)
{
    switch (m) {
    case CX_MODE_GREENLET: return "greenlet";
    case CX_MODE_SAMPLING: return "sampling";
    case CX_MODE_THREAD: return "thread";
    default: return "off";
    }
}

/* The sampler ticks at the smallest dump_period among live segments. */
void cx_update_sample_period(void)
{
    int best = 0;
    cx_registry *regs[2] = {&cx.greenlets, &cx.threads};
    for (int r = 0; r < 2; r++) {
        cx_registry *reg = regs[r];
        if (!reg->slots || reg->count == 0)
            continue;
        for (size_t i = 0; i <= reg->mask; i++) {
            cx_segment *s = reg->slots[i];
            if (s && (best == 0 || s->dump_period_ms < best))
                best = s->dump_period_ms;
        }
    }
    atomic_store(&cx.sample_period_ms, best > 0 ? best : 10);
}

static cx_registry *registry_for_mode(int mode)
{
    return mode == CX_MODE_THREAD ? &cx.threads : &cx.greenlets;
}

static void detach_and_free_registry(cx_registry *reg)
{
    /* Detach first: dropping a greenlet can run code (GreenletExit), which
     * can switch and re-enter the tracer, which must see a consistent table. */
    cx_registry old = *reg;
    reg->slots = NULL;
    reg->count = 0;
    reg->mask = 0;
    cx_registry_fini(&old);
}

static void end_all_segments(void)
{
    detach_and_free_registry(&cx.greenlets);
    detach_and_free_registry(&cx.threads);
    atomic_store(&cx.active_segments, 0);
}

/* Ends every segment and leaves empty registries of the same size. */
static int reset_registries(void)
{
    size_t gmax = cx.greenlets.max_count, tmax = cx.threads.max_count;
    int had = cx.greenlets.slots != NULL;
    end_all_segments();
    if (!had)
        return 0;
    if (cx_registry_init(&cx.greenlets, gmax) != 0 || cx_registry_init(&cx.threads, tmax) != 0)
        return -1;
    return 0;
}

/* ---- module functions ---------------------------------------------------- */

/*
 * The library checks the TLS options only when its native thread first dials,
 * and then only counts the failure: refuse here, synchronously, what can
 * never work. canopy_agent._config checks the same with friendlier names (and
 * the files); this guards direct callers, above all against TLS options with
 * a plain URL, which must never turn into a clear-text connection.
 * "" counts as unset (an empty environment variable).
 */
static int check_tls(const char *url, const char **ca, const char **cert, const char **key, const char **name)
{
    const char **opts[] = {ca, cert, key, name};
    bool any = false;
    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
        if (*opts[i] && !**opts[i])
            *opts[i] = NULL;
        any = any || *opts[i];
    }
    bool tls_url = url && strncmp(url, "tls+", 4) == 0;
    if (any && !tls_url) {
        PyErr_Format(PyExc_ValueError,
                     "canopy: TLS options need a tls+tcp:// url, not %s (refusing to send in clear)",
                     url ? url : CN_AGENT_DEFAULT_URL);
        return -1;
    }
    if (tls_url && !*ca) {
        PyErr_SetString(PyExc_ValueError,
                        "canopy: a tls+tcp:// url needs tls_ca_file (the collector must be verified)");
        return -1;
    }
    if ((*cert == NULL) != (*key == NULL)) {
        PyErr_SetString(PyExc_ValueError, "canopy: tls_cert_file and tls_key_file go together");
        return -1;
    }
    return 0;
}

static PyObject *m_configure(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"service", "url", "instance", "host", "max_stack_depth", "max_segments",
                             "signature_cache", "max_snapshots_per_segment", "max_segment_ms",
                             "max_batch_snapshots", "max_batch_age_ms", "max_buffered_bytes",
                             "command_poll_ms", "timeout_ms", "shutdown_timeout_ms", "tls_ca_file",
                             "tls_cert_file", "tls_key_file", "tls_server_name", NULL};
    const char *service = NULL, *url = NULL, *instance = NULL, *host = NULL;
    const char *tls_ca = NULL, *tls_cert = NULL, *tls_key = NULL, *tls_name = NULL;
    Py_ssize_t max_depth = 500, max_segments = 1024, sig_cache = 16384;
    Py_ssize_t max_snaps = 10000, max_batch = 256, max_buffered = 8 << 20;
    long long max_segment_ms = 600000;
    unsigned int batch_age = 200, poll_ms = 5000, timeout_ms = 5000, shutdown_ms = 2000;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|zzznnnnLnInIIIzzzz", kwlist, &service, &url, &instance,
                                     &host, &max_depth, &max_segments, &sig_cache, &max_snaps,
                                     &max_segment_ms, &max_batch, &batch_age, &max_buffered, &poll_ms,
                                     &timeout_ms, &shutdown_ms, &tls_ca, &tls_cert, &tls_key, &tls_name))
        return NULL;
    if (check_tls(url, &tls_ca, &tls_cert, &tls_key, &tls_name) != 0)
        return NULL;
    if (cx.agent) {
        PyErr_SetString(PyExc_RuntimeError, "canopy agent already configured; call shutdown() first");
        return NULL;
    }
    if (max_depth < 1 || max_depth > 100000 || max_segments < 1 || max_segments > 1 << 20 ||
        sig_cache < 16 || max_snaps < 1 || max_batch < 1 || max_buffered < 4096) {
        PyErr_SetString(PyExc_ValueError, "canopy: limit out of range");
        return NULL;
    }

    cn_agent_options o;
    cn_agent_options_init(&o);
    o.service = service;
    if (url)
        o.url = url;
    o.instance = instance;
    o.host = host;
    o.max_batch_snapshots = (size_t)max_batch;
    o.max_batch_age_ms = batch_age;
    o.max_buffered_bytes = (size_t)max_buffered;
    o.command_poll_ms = poll_ms;
    o.timeout_ms = timeout_ms;
    o.shutdown_timeout_ms = shutdown_ms;
    o.max_frames = 0; /* we cut stacks ourselves, keeping the leaf frames */
    /* cn_agent_new copies them: the Python strings may go once we return. */
    o.tls_ca_file = tls_ca;
    o.tls_cert_file = tls_cert;
    o.tls_key_file = tls_key;
    o.tls_server_name = tls_name;

    if (cx_frames_init((size_t)sig_cache, (size_t)max_depth) != 0)
        return PyErr_NoMemory();
    if (cx_registry_init(&cx.greenlets, (size_t)max_segments) != 0 ||
        cx_registry_init(&cx.threads, (size_t)max_segments) != 0) {
        cx_registry_fini(&cx.greenlets);
        cx_frames_fini();
        return PyErr_NoMemory();
    }
    cn_agent *agent = NULL;
    int rc = cn_agent_new(&o, &agent);
    if (rc == 0)
        rc = cn_agent_start(agent);
    if (rc != 0) {
        cn_agent_free(agent);
        cx_registry_fini(&cx.greenlets);
        cx_registry_fini(&cx.threads);
        cx_frames_fini();
        PyErr_Format(PyExc_RuntimeError, "canopy: cannot start the agent: %s", cn_agent_strerror(-rc));
        return NULL;
    }
    cx.agent = agent;
    if (atomic_load(&cx.mode) != CX_MODE_OFF) /* set_mode may have come first */
        cn_agent_set_mode(agent, cx_mode_name(atomic_load(&cx.mode)));
    memset(&cx.c, 0, sizeof(cx.c)); /* stats() describes this agent's life */
    cx.max_snapshots_per_segment = (uint32_t)max_snaps;
    cx.max_segment_ms = max_segment_ms;
    atomic_store(&cx.active_segments, 0);
    atomic_store(&cx.sample_period_ms, 10);
    cx.n_tasks = 0;
    cx.commands_version = 0;
    if (cx_sampler_start() != 0) {
        /* Greenlet mode works without it; sampling/thread mode and finish
         * reports do not. Say so rather than fail the app. */
        PyErr_WarnEx(PyExc_RuntimeWarning, "canopy: cannot start the sampler thread", 1);
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static PyObject *m_set_mode(PyObject *self, PyObject *arg)
{
    const char *s = PyUnicode_AsUTF8(arg);
    if (!s)
        return NULL;
    int m = parse_mode(s);
    if (m < 0) {
        PyErr_Format(PyExc_ValueError, "canopy: unknown mode %R (greenlet, sampling, thread, off)", arg);
        return NULL;
    }
    if ((m == CX_MODE_GREENLET || m == CX_MODE_SAMPLING) && import_greenlet() != 0) {
        PyErr_SetString(PyExc_RuntimeError, "canopy: greenlet is not importable");
        return NULL;
    }
    int old = atomic_exchange(&cx.mode, m);
    /* Batches say which mode took them (the collector labels profiles with it); "off" sends none. */
    if (cx.agent && m != CX_MODE_OFF)
        cn_agent_set_mode(cx.agent, cx_mode_name(m));
    /* Segments were registered under the old mode's keys; end them. */
    if (old != m && reset_registries() != 0)
        return PyErr_NoMemory();
    cx_sampler_wake();
    Py_RETURN_NONE;
}

static PyObject *m_get_mode(PyObject *self, PyObject *unused)
{
    return PyUnicode_FromString(cx_mode_name(atomic_load(&cx.mode)));
}

static PyObject *m_install_tracer(PyObject *self, PyObject *unused)
{
    if (import_greenlet() != 0) {
        PyErr_SetString(PyExc_RuntimeError, "canopy: greenlet is not importable");
        return NULL;
    }
    unsigned long tid = PyThread_get_thread_ident();
    PyObject *greenlet = PyImport_ImportModule("greenlet");
    if (!greenlet)
        return NULL;
    PyObject *cur = PyObject_CallMethod(greenlet, "gettrace", NULL);
    if (!cur) {
        Py_DECREF(greenlet);
        return NULL;
    }
    /* Already ours on this thread: keep it (installing twice would chain
     * ourselves and double every event). */
    if (Py_TYPE(cur) == &cx_tracer_type && ((cx_tracer *)cur)->active) {
        Py_DECREF(greenlet);
        return cur;
    }
    Py_DECREF(cur);
    cx_tracer *t = PyObject_New(cx_tracer, &cx_tracer_type);
    if (!t) {
        Py_DECREF(greenlet);
        return NULL;
    }
    t->prev = NULL;
    t->thread_id = tid;
    t->current = NULL;
    t->active = 1;
    t->next = NULL;
    PyObject *prev = PyObject_CallMethod(greenlet, "settrace", "O", (PyObject *)t);
    Py_DECREF(greenlet);
    if (!prev) {
        Py_DECREF(t);
        return NULL;
    }
    if (prev == Py_None)
        Py_DECREF(prev);
    else
        t->prev = prev; /* chained, never replaced */
    PyObject *current = cx_greenlet_current();
    t->current = current; /* borrowed by design, see cx_tracer */
    Py_XDECREF(current);
    /* Forget tracers of this thread that greenlet removed or that were
     * replaced; keep one strong ref in the list. */
    Py_INCREF(t);
    t->next = cx.tracers;
    cx.tracers = t;
    cx_sampler_tracers_changed();
    return (PyObject *)t;
}

/* Removes our tracer from the current thread if it is on top; otherwise (or
 * for other threads) turns it into a pure pass-through. */
static PyObject *m_uninstall_tracer(PyObject *self, PyObject *unused)
{
    unsigned long tid = PyThread_get_thread_ident();
    PyObject *greenlet = greenlet_api ? PyImport_ImportModule("greenlet") : NULL;
    if (!greenlet)
        PyErr_Clear();
    cx_tracer **pp = &cx.tracers;
    while (*pp) {
        cx_tracer *t = *pp;
        if (t->thread_id != tid) {
            pp = &t->next;
            continue;
        }
        t->active = 0;
        if (greenlet) {
            PyObject *cur = PyObject_CallMethod(greenlet, "gettrace", NULL);
            if (cur == (PyObject *)t) {
                PyObject *r = PyObject_CallMethod(greenlet, "settrace", "O", t->prev ? t->prev : Py_None);
                Py_XDECREF(r);
            }
            Py_XDECREF(cur);
            PyErr_Clear();
        }
        *pp = t->next;
        t->next = NULL;
        Py_DECREF(t);
    }
    Py_XDECREF(greenlet);
    Py_RETURN_NONE;
}

static PyObject *m_begin(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"task_id", "segment_id", "min_duration_ms", "dump_period_ms", "target", NULL};
    const char *task = NULL, *segid = NULL;
    Py_ssize_t tlen = 0, slen = 0;
    long long min_ms = 0;
    int dump_ms = 10;
    PyObject *target = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s#s#|LiO", kwlist, &task, &tlen, &segid, &slen, &min_ms,
                                     &dump_ms, &target))
        return NULL;
    int mode = atomic_load(&cx.mode);
    if (!cx.agent || mode == CX_MODE_OFF)
        Py_RETURN_NONE;
    if (tlen == 0 || slen == 0 || tlen > 4096 || slen > 4096) {
        PyErr_SetString(PyExc_ValueError, "canopy: task and segment ids must be 1..4096 bytes");
        return NULL;
    }
    if (dump_ms < 1)
        dump_ms = 1;
    if (min_ms < 0)
        min_ms = 0;

    uintptr_t key;
    PyObject *greenlet = NULL;
    cx_registry *reg = registry_for_mode(mode);
    if (mode == CX_MODE_THREAD) {
        if (target && target != Py_None) {
            unsigned long tid = PyLong_AsUnsignedLong(target);
            if (PyErr_Occurred())
                return NULL;
            key = (uintptr_t)tid;
        } else {
            key = (uintptr_t)PyThread_get_thread_ident();
        }
    } else {
        if (target && target != Py_None) {
            Py_INCREF(target);
            greenlet = target;
        } else {
            greenlet = cx_greenlet_current();
            if (!greenlet) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_RuntimeError, "canopy: no current greenlet");
                return NULL;
            }
        }
        key = (uintptr_t)greenlet;
    }
    if (cx_registry_get(reg, key)) {
        Py_XDECREF(greenlet);
        Py_RETURN_NONE; /* already profiled (nested middleware, re-entry) */
    }
    cx_segment *seg = malloc(sizeof(*seg) + (size_t)tlen + 1 + (size_t)slen + 1);
    if (!seg) {
        Py_XDECREF(greenlet);
        return PyErr_NoMemory();
    }
    memset(seg, 0, sizeof(*seg));
    seg->key = key;
    seg->greenlet = greenlet; /* owns the reference */
    memcpy(seg->buf, task, (size_t)tlen);
    seg->buf[tlen] = '\0';
    memcpy(seg->buf + tlen + 1, segid, (size_t)slen);
    seg->buf[tlen + 1 + slen] = '\0';
    seg->task.ptr = seg->buf;
    seg->task.len = (size_t)tlen;
    seg->task.slot = &seg->task_slot;
    seg->segment.ptr = seg->buf + tlen + 1;
    seg->segment.len = (size_t)slen;
    seg->segment.slot = &seg->segment_slot;
    int64_t now = cx_now_ms();
    seg->start_ms = now;
    seg->not_before_ms = now + min_ms;
    seg->deadline_ms = now + cx.max_segment_ms;
    seg->next_sample_ms = seg->not_before_ms;
    seg->dump_period_ms = dump_ms;
    seg->next_seq = 0;
    seg->max_snapshots = cx.max_snapshots_per_segment;
    seg->serial = ++cx.next_serial;
    if (cx_registry_put(reg, seg) != 0) {
        cx.c.registry_full++;
        cx_segment_free(seg);
        Py_RETURN_NONE;
    }
    cx.c.segments_begun++;
    int before = atomic_fetch_add(&cx.active_segments, 1);
    int period = atomic_load(&cx.sample_period_ms);
    if (before == 0 || dump_ms < period) {
        atomic_store(&cx.sample_period_ms, before == 0 || dump_ms < period ? dump_ms : period);
        if (mode != CX_MODE_GREENLET)
            cx_sampler_wake();
    }
    /* The key to pass to end(target=...), which may run elsewhere (e.g. a
     * WSGI close() called from another greenlet). */
    if (greenlet) {
        Py_INCREF(greenlet);
        return greenlet;
    }
    return PyLong_FromUnsignedLong((unsigned long)key);
}

/* Ends profiling of the current (or given) greenlet/thread. Returns how many
 * snapshots the segment produced, or -1 if it was not profiled. */
static PyObject *m_end(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"target", NULL};
    PyObject *target = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", kwlist, &target))
        return NULL;
    int mode = atomic_load(&cx.mode);
    uintptr_t key;
    cx_registry *reg = registry_for_mode(mode);
    if (mode == CX_MODE_OFF)
        return PyLong_FromLong(-1);
    if (mode == CX_MODE_THREAD) {
        if (target && target != Py_None) {
            unsigned long tid = PyLong_AsUnsignedLong(target);
            if (PyErr_Occurred())
                return NULL;
            key = (uintptr_t)tid;
        } else {
            key = (uintptr_t)PyThread_get_thread_ident();
        }
    } else {
        if (target && target != Py_None) {
            key = (uintptr_t)target;
        } else {
            PyObject *g = cx_greenlet_current();
            if (!g) {
                PyErr_Clear();
                return PyLong_FromLong(-1);
            }
            key = (uintptr_t)g;
            Py_DECREF(g); /* still alive: it is running this code */
        }
    }
    cx_segment *seg = cx_registry_get(reg, key);
    if (!seg || seg->owner) /* a child ends with its owner, not on its own */
        return PyLong_FromLong(-1);
    cx_registry_pop(reg, key);
    /* Children that outlive the request go with it (no leak, no orphan
     * entries resolving to a freed owner). */
    cx_children_end(seg);
    long n = seg->next_seq;
    /* The sampler's period is not raised here (that would scan the registry
     * on every request); sample_tick recomputes it now and then, and due()
     * keeps each segment at its own dump_period meanwhile. */
    if (atomic_fetch_sub(&cx.active_segments, 1) == 1)
        atomic_store(&cx.sample_period_ms, 10);
    cx.c.segments_ended++;
    cx_segment_free(seg); /* last: may drop the greenlet */
    return PyLong_FromLong(n);
}

static PyObject *m_is_profiled(PyObject *self, PyObject *args)
{
    PyObject *target = NULL;
    if (!PyArg_ParseTuple(args, "|O", &target))
        return NULL;
    int mode = atomic_load(&cx.mode);
    if (mode == CX_MODE_OFF)
        Py_RETURN_FALSE;
    uintptr_t key;
    if (mode == CX_MODE_THREAD) {
        key = target && target != Py_None ? (uintptr_t)PyLong_AsUnsignedLong(target)
                                          : (uintptr_t)PyThread_get_thread_ident();
        if (PyErr_Occurred())
            return NULL;
    } else if (target && target != Py_None) {
        key = (uintptr_t)target;
    } else {
        PyObject *g = cx_greenlet_current();
        if (!g) {
            PyErr_Clear();
            Py_RETURN_FALSE;
        }
        key = (uintptr_t)g;
        Py_DECREF(g);
    }
    return PyBool_FromLong(cx_registry_get(registry_for_mode(mode), key) != NULL);
}

static PyObject *m_commands_version(PyObject *self, PyObject *unused)
{
    uint64_t v = 0;
    if (cx.agent)
        cn_agent_commands(cx.agent, NULL, 0, &v);
    return PyLong_FromUnsignedLongLong(v);
}

static PyObject *m_commands(PyObject *self, PyObject *unused)
{
    uint64_t v = 0;
    if (!cx.agent)
        return Py_BuildValue("(KN)", (unsigned long long)0, PyList_New(0));
    cn_command *cmds = calloc(CN_AGENT_MAX_COMMANDS, sizeof(*cmds));
    if (!cmds)
        return PyErr_NoMemory();
    size_t n = cn_agent_commands(cx.agent, cmds, CN_AGENT_MAX_COMMANDS, &v);
    if (n > CN_AGENT_MAX_COMMANDS)
        n = CN_AGENT_MAX_COMMANDS;
    PyObject *list = PyList_New(0);
    if (!list) {
        free(cmds);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        const cn_command *c = &cmds[i];
        PyObject *d = Py_BuildValue("{s:s,s:s,s:s,s:L,s:L,s:L,s:L,s:L,s:L,s:O,s:L}", "task_id", c->task_id, "serial",
                                    c->serial, "endpoint", c->endpoint, "duration_min",
                                    (long long)c->duration_min, "min_duration_ms", (long long)c->min_duration_ms,
                                    "dump_period_ms", (long long)c->dump_period_ms, "max_sampling_count",
                                    (long long)c->max_sampling_count, "start_time_ms",
                                    (long long)c->start_time_ms, "create_time_ms", (long long)c->create_time_ms,
                                    "continuous", c->continuous ? Py_True : Py_False, "window_ms",
                                    (long long)c->window_ms);
        if (!d || PyList_Append(list, d) != 0) {
            Py_XDECREF(d);
            Py_DECREF(list);
            free(cmds);
            return NULL;
        }
        Py_DECREF(d);
    }
    free(cmds);
    return Py_BuildValue("(KN)", (unsigned long long)v, list);
}

static PyObject *m_poll_now(PyObject *self, PyObject *unused)
{
    if (cx.agent && cn_agent_poll_now(cx.agent) == 0)
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

static PyObject *m_flush(PyObject *self, PyObject *unused)
{
    if (cx.agent && cn_agent_flush(cx.agent) == 0)
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

static PyObject *m_report_finish(PyObject *self, PyObject *arg)
{
    const char *id = PyUnicode_AsUTF8(arg);
    if (!id)
        return NULL;
    if (cx.agent && cn_agent_report_finish(cx.agent, id) == 0)
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

static PyObject *m_shutdown(PyObject *self, PyObject *unused)
{
    atomic_store(&cx.mode, CX_MODE_OFF);
    cx_sampler_stop();
    PyObject *r = m_uninstall_tracer(self, NULL);
    Py_XDECREF(r);
    PyErr_Clear();
    /* Tracers installed on other threads stay in those threads' greenlet
     * state; they are pass-through now (active = 0). */
    for (cx_tracer *t = cx.tracers; t; t = t->next)
        t->active = 0;
    end_all_segments();
    cn_agent *agent = cx.agent;
    cx.agent = NULL;
    if (agent) {
        /* Waits up to shutdown_timeout_ms for acks: let the app run meanwhile. */
        Py_BEGIN_ALLOW_THREADS
        cn_agent_free(agent);
        Py_END_ALLOW_THREADS
    }
    cx_registry_fini(&cx.greenlets);
    cx_registry_fini(&cx.threads);
    cx_frames_fini();
    cx_children_clear_sites();
    Py_CLEAR(cx.capture);
    Py_RETURN_NONE;
}

/* os.register_at_fork(after_in_child=...): the sampler thread did not survive
 * the fork; the library restarts itself on first use. */
static PyObject *m_after_fork_child(PyObject *self, PyObject *unused)
{
    cx_sampler_forget();
    unsigned long tid = PyThread_get_thread_ident();
    for (cx_tracer *t = cx.tracers; t; t = t->next) {
        if (t->thread_id != tid)
            t->active = 0; /* that thread does not exist here */
    }
    /* Segments belong to the parent's requests. */
    if (reset_registries() != 0)
        return PyErr_NoMemory();
    if (cx.agent) {
        if (cx_sampler_start() != 0) {
            PyErr_WarnEx(PyExc_RuntimeWarning, "canopy: cannot restart the sampler thread after fork", 1);
            PyErr_Clear();
        }
    }
    Py_RETURN_NONE;
}

static PyObject *m_configured(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(cx.agent != NULL);
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))m_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(service, url=None, instance=None, host=None, ...): create and start the agent"},
    {"configured", m_configured, METH_NOARGS, "True between configure() and shutdown()"},
    {"set_mode", m_set_mode, METH_O, "set_mode('greenlet'|'sampling'|'thread'|'off')"},
    {"mode", m_get_mode, METH_NOARGS, "current mode"},
    {"install_tracer", m_install_tracer, METH_NOARGS,
     "install the switch callback on this thread (chaining the existing one)"},
    {"uninstall_tracer", m_uninstall_tracer, METH_NOARGS, "remove the switch callback from this thread"},
    {"begin", (PyCFunction)(void (*)(void))m_begin, METH_VARARGS | METH_KEYWORDS,
     "begin(task_id, segment_id, min_duration_ms=0, dump_period_ms=10, target=None) -> key for end(), "
     "or None if not profiled (off, already profiled, registry full)"},
    {"end", (PyCFunction)(void (*)(void))m_end, METH_VARARGS | METH_KEYWORDS,
     "end(target=None) -> snapshots taken, or -1 if not profiled"},
    {"is_profiled", m_is_profiled, METH_VARARGS, "is_profiled(target=None) -> bool"},
    {"commands", m_commands, METH_NOARGS, "(version, [command dicts]) received from the collector"},
    {"commands_version", m_commands_version, METH_NOARGS, "changes when new commands arrive"},
    {"poll_now", m_poll_now, METH_NOARGS, "ask the collector for commands now"},
    {"flush", m_flush, METH_NOARGS, "hand the current batch to the sender now"},
    {"report_finish", m_report_finish, METH_O, "queue a task-finish report"},
    {"stats", cx_py_stats, METH_NOARGS, "counters of the extension and the library"},
    {"capture", cx_py_capture, METH_VARARGS, "capture(list_or_None, limit=100000): test hook"},
    {"walk_current", cx_py_walk_current, METH_NOARGS, "signatures of the current stack, root first"},
    {"walk_greenlet", cx_py_walk_greenlet, METH_O, "signatures of a suspended greenlet, root first"},
    {"frame_walk", cx_py_frame_walk, METH_VARARGS,
     "frame_walk(name=None) -> 'fast' or 'public': the frame walker in use, after setting it to name"},
    {"follow_children", (PyCFunction)(void (*)(void))cx_py_follow_children, METH_VARARGS | METH_KEYWORDS,
     "follow_children(enabled, max_per_segment=64, skip_types=()): profile greenlets spawned by profiled ones"},
    {"thread_spawn", cx_py_thread_spawn, METH_VARARGS,
     "thread_spawn(skip=0): in a profiled thread starting another, a token for thread_child_begin(), else None"},
    {"thread_child_begin", cx_py_thread_child_begin, METH_O,
     "thread_child_begin(token): profile this thread under the starting thread's segment -> bool"},
    {"thread_child_end", cx_py_thread_child_end, METH_NOARGS, "unregister this thread if it is a followed child"},
    {"shutdown", m_shutdown, METH_NOARGS, "stop sampling, remove tracers, flush and free the agent"},
    {"after_fork_child", m_after_fork_child, METH_NOARGS, "reset after fork (child side)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "canopy_agent._canopy",
    .m_doc = "canopy agent: greenlet switch tracer, native sampler, snapshot path",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__canopy(void)
{
    if (PyType_Ready(&cx_tracer_type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m)
        return NULL;
    cx.str_gr_frame = PyUnicode_InternFromString("gr_frame");
    if (!cx.str_gr_frame)
        goto fail;
    Py_INCREF(&cx_tracer_type);
    if (PyModule_AddObject(m, "Tracer", (PyObject *)&cx_tracer_type) < 0) {
        Py_DECREF(&cx_tracer_type);
        goto fail;
    }
    if (PyModule_AddStringConstant(m, "DEFAULT_URL", CN_AGENT_DEFAULT_URL) < 0 ||
        PyModule_AddStringConstant(m, "VERSION", CN_AGENT_VERSION) < 0 ||
        PyModule_AddStringConstant(m, "BUILT_FOR_PYTHON", PY_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "FAST_FRAMES", cx_frames_fast_available()) < 0)
        goto fail;
    /* greenlet is optional (thread mode does without it). */
    (void)import_greenlet();
    atomic_store(&cx.mode, CX_MODE_OFF);
    atomic_store(&cx.sample_period_ms, 10);
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
