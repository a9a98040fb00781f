/*
 * _canopy: the C half of canopy_agent. Internal declarations shared by the
 * extension's files (module.c, frames.c, registry.c, tracer.c, sampler.c,
 * children.c, threads.c).
 *
 * Concurrency model. Everything that touches Python objects, the registry or
 * the signature cache runs with the GIL held: the greenlet switch callback,
 * the middleware's begin/end calls, and the native sampler thread (which
 * takes the GIL with PyGILState_Ensure before sampling). The GIL is therefore
 * the lock for all of that state. The sampler also reads a few atomics
 * without the GIL to decide whether it needs the GIL at all.
 *
 * There is one agent per process, so the state lives in one static struct
 * (cx), not in module state: the tracer callback and the native thread reach
 * it without a module lookup on the hot path.
 */
#ifndef CANOPY_CX_H
#define CANOPY_CX_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "canopy/agent.h"

#if defined(__GNUC__)
#define CX_LIKELY(x) __builtin_expect(!!(x), 1)
#define CX_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define CX_LIKELY(x) (x)
#define CX_UNLIKELY(x) (x)
#endif

typedef enum cx_mode {
    CX_MODE_OFF = 0,
    CX_MODE_GREENLET = 1,  /* snapshot on switch in/out of a profiled greenlet */
    CX_MODE_SAMPLING = 2,  /* native timer samples the running greenlet */
    CX_MODE_THREAD = 3,    /* native timer samples profiled OS threads */
} cx_mode;

/* ---- frames.c: frame walking and the signature cache ------------------- */

/* One cached code signature "<co_filename>.<co_name>: <lineno>". */
typedef struct cx_sig {
    PyObject *code;      /* strong ref, so the address cannot be reused; NULL = empty */
    int lasti;           /* instruction index the entry was made for */
    uint32_t len;
    char *str;           /* malloc'd, NUL-terminated */
    cn_intern_slot slot; /* the library's per-batch index cache for str */
} cx_sig;

int cx_frames_init(size_t cache_capacity, size_t max_depth);
void cx_frames_fini(void);
/* Drops every cached signature (e.g. after fork, or on demand). */
void cx_frames_clear(void);

/* Whether this build has the fast walker (CPython 3.11 or 3.13). */
int cx_frames_fast_available(void);
/* Chooses the walker: 1 = public frame API, 0 = fast (-1 if not built).
 * Only while no snapshot is being taken (GIL held, agent not running). */
int cx_frames_set_public(int public_api);
int cx_frames_public(void);
/* _canopy.frame_walk(name=None): sets "fast" or "public", returns the one in use. */
PyObject *cx_py_frame_walk(PyObject *self, PyObject *args);

/* Opaque leaf frame handle: a _PyInterpreterFrame* for the fast walker, a
 * PyFrameObject* for the public one. */
typedef void cx_frame;
/* The running frame of a thread (tstate may be another thread's; GIL held). */
cx_frame *cx_frame_of_tstate(PyThreadState *tstate);
/* The frame stack saved in a suspended greenlet (new ref kept in *keep, may be NULL). */
cx_frame *cx_frame_of_greenlet(PyObject *greenlet, PyObject **keep);
/*
 * Walks from the leaf frame to the root, at most max_depth frames (so the
 * leaf frames are kept when the stack is deeper), and returns the signatures
 * ROOT FIRST in cx.frames_buf. Returns the number of frames (0 = nothing).
 * Never raises: errors are cleared and counted.
 */
size_t cx_walk(cx_frame *leaf);
/* Whether the thread has a Python frame: not on a greenlet's first switch-in. */
int cx_frames_any(PyThreadState *tstate);
/* "<file>.<name>: <line>", malloc'd (NULL when out of memory). */
char *cx_sig_format(PyCodeObject *co, int line, uint32_t *len_out);

/* ---- registry.c: profiled greenlets / threads --------------------------- */

typedef struct cx_segment {
    uintptr_t key;            /* greenlet address or thread id */
    PyObject *greenlet;       /* strong ref in greenlet modes, else NULL */
    cn_str task;              /* points into buf; slot below */
    cn_str segment;
    cn_intern_slot task_slot;
    cn_intern_slot segment_slot;
    int64_t start_ms;         /* wall clock at begin */
    int64_t not_before_ms;    /* start + min_duration_threshold */
    int64_t deadline_ms;      /* start + max_segment_ms: stop snapshotting after */
    int64_t next_sample_ms;   /* sampling modes: next due tick */
    int32_t dump_period_ms;
    int32_t next_seq;         /* dense from 0; only advanced on a successful add */
    uint32_t max_snapshots;
    uint64_t dropped;         /* snapshots the library refused for this segment */
    /* Child greenlets (children.c). A child's entry resolves to its owner:
     * the owner's ids, sequence counter, caps and sampling tick serve every
     * greenlet of the segment, so sequences stay dense from 0 across them. */
    struct cx_segment *owner;    /* NULL: a request's own segment; else that segment */
    struct cx_segment *children; /* owner: first child; child: next sibling */
    struct cx_spawn *spawn;      /* child: its spawn site's frames (shared, refcounted) */
    uint32_t n_children;         /* owner: children registered now */
    uint64_t serial;             /* unique per begin(): thread ids are reused */
    char buf[];               /* task id NUL segment id NUL */
} cx_segment;

/* The segment whose ids, sequence counter and caps a snapshot of seg uses:
 * its owner for a child greenlet or thread, else seg itself. */
static inline cx_segment *cx_segment_root(cx_segment *seg)
{
    return seg->owner ? seg->owner : seg;
}

typedef struct cx_registry {
    cx_segment **slots;  /* open addressing, linear probing, no tombstones */
    size_t mask;
    size_t count;
    size_t max_count;
} cx_registry;

int cx_registry_init(cx_registry *r, size_t max_count);
void cx_registry_fini(cx_registry *r);   /* frees every segment (DECREFs) */
cx_segment *cx_registry_get(const cx_registry *r, uintptr_t key);
/* Takes ownership of seg. -1 when full or the key is already present. */
int cx_registry_put(cx_registry *r, cx_segment *seg);
/* Unlinks and returns the segment (caller frees), or NULL. */
cx_segment *cx_registry_pop(cx_registry *r, uintptr_t key);
void cx_segment_free(cx_segment *seg);

static inline cx_segment *cx_registry_find(const cx_registry *r, uintptr_t key)
{
    /* The common case on every switch: nothing is profiled. */
    if (CX_LIKELY(r->count == 0))
        return NULL;
    return cx_registry_get(r, key);
}

/* ---- tracer.c: the greenlet switch callback ------------------------------ */

typedef struct cx_tracer {
    PyObject_HEAD
    PyObject *prev;           /* chained trace function, or NULL */
    unsigned long thread_id;  /* thread it was installed on */
    PyObject *current;        /* BORROWED: greenlet running on that thread; only
                                 dereferenced when found in the registry, which
                                 holds a strong ref */
    int active;               /* 0 once uninstalled or removed by greenlet */
    struct cx_tracer *next;   /* list of installed tracers (cx.tracers) */
} cx_tracer;

extern PyTypeObject cx_tracer_type;

/* ---- sampler.c: native thread (sampling, thread mode, housekeeping) ----- */

int cx_sampler_start(void);
/* Stops and joins; call with the GIL held (it is released while joining). */
void cx_sampler_stop(void);
void cx_sampler_wake(void);
/* Sets the interpreter's eval_breaker (3.11; see breaker.c). 0 if done. */
int cx_poke_eval_breaker(void);
/* A tracer was installed: re-check which threads need GIL sampling. */
void cx_sampler_tracers_changed(void);
/* After fork in the child: the thread is gone, forget it without joining. */
void cx_sampler_forget(void);

/* ---- children.c: greenlets spawned by profiled greenlets ----------------- */

/* Called by the tracer on every switch while something is profiled and
 * children are followed: registers a greenlet on its first switch-in when its
 * spawner is profiled, and unregisters a child that just died. The caller
 * passes the registry's segments of origin and target (or NULL) and gets
 * them back current, so a switch looks each greenlet up once. Never raises. */
void cx_children_switch(PyObject *origin, PyObject *target, cx_segment **origin_seg, cx_segment **target_seg);
/* The segment's own frames are in cx.frames_buf[0..n): puts the child's spawn
 * stack in front (depth cap keeps the leaf frames). Returns the new count. */
size_t cx_children_stitch(const cx_segment *child, size_t n);
/* Unregisters and frees every child of the owner (already unregistered). */
void cx_children_end(cx_segment *owner);
void cx_spawn_release(struct cx_spawn *sp);
/* Forgets the cached spawn sites (shutdown). */
void cx_children_clear_sites(void);
/* The running thread's spawn site under parent, skipping the leaf `skip`
 * frames (a new reference; NULL when out of memory). */
struct cx_spawn *cx_spawn_here(struct cx_spawn *parent, int skip);
void cx_spawn_ref(struct cx_spawn *sp);
/* Links a registered child to its owner / unlinks it (no registry change). */
void cx_children_link(cx_segment *owner, cx_segment *child);
void cx_children_unlink(cx_segment *owner, cx_segment *child);

/* ---- threads.c: thread mode's child threads ------------------------------- */

/* Thread mode: _canopy.thread_spawn(skip=0) in the starting thread (a token,
 * or None when it is not profiled), thread_child_begin(token) and
 * thread_child_end() in the started thread. */
PyObject *cx_py_thread_spawn(PyObject *self, PyObject *args);
PyObject *cx_py_thread_child_begin(PyObject *self, PyObject *token);
PyObject *cx_py_thread_child_end(PyObject *self, PyObject *unused);
/* _canopy.follow_children(enabled, max_per_segment=64, skip_types=()) */
PyObject *cx_py_follow_children(PyObject *self, PyObject *args, PyObject *kw);

/* ---- counters ------------------------------------------------------------ */

typedef struct cx_counters {
    uint64_t switches;           /* switch/throw events seen */
    uint64_t snapshots;          /* accepted by the library */
    uint64_t snapshots_dropped;  /* refused by the library (bound reached) */
    uint64_t snapshots_capped;   /* over max_snapshots per segment or deadline */
    uint64_t snapshots_early;    /* before min_duration_threshold */
    uint64_t snapshots_empty;    /* no Python frame to report */
    uint64_t errors;             /* Python errors swallowed in callbacks */
    uint64_t chained_errors;     /* errors raised by a chained trace function */
    uint64_t sig_misses;         /* signature cache misses */
    uint64_t sig_resets;         /* cache cleared because it was full */
    uint64_t frames_truncated;   /* stacks cut at max_stack_depth */
    uint64_t samples;            /* sampler ticks that looked at the stacks */
    uint64_t samples_idle;       /* ... and found no profiled greenlet running */
    uint64_t registry_full;      /* begin refused: too many profiled at once */
    uint64_t segments_begun;
    uint64_t segments_ended;
    uint64_t finish_reports;
    uint64_t children_followed;  /* child greenlets registered under a segment */
    uint64_t children_dropped;   /* not followed: per-segment bound or registry full */
    uint64_t children_ended;     /* unregistered: died, or their segment ended */
    uint64_t spawn_sites;        /* spawn stacks built (cache misses) */
} cx_counters;

/* ---- the one agent -------------------------------------------------------- */

#define CX_MAX_TASKS 64

typedef struct cx_task_end {
    char task_id[sizeof(((cn_command *)0)->task_id)];
    int64_t create_time_ms;
    int64_t end_ms;
    int reported;
} cx_task_end;

typedef struct cx_state {
    cn_agent *agent;            /* NULL until configured */
    atomic_int mode;            /* cx_mode */
    size_t max_depth;
    cn_str *frames_buf;         /* max_depth entries, GIL-protected scratch */
    uint32_t max_snapshots_per_segment;
    int64_t max_segment_ms;

    cx_registry greenlets;      /* greenlet and sampling modes */
    cx_registry threads;        /* thread mode */
    atomic_int active_segments; /* read by the sampler without the GIL */
    atomic_int sample_period_ms;/* smallest dump_period among live segments */

    cx_tracer *tracers;         /* installed switch callbacks (strong refs) */
    PyObject *str_gr_frame;     /* interned "gr_frame" */

    int follow_children;        /* CANOPY_FOLLOW_CHILDREN */
    uint32_t max_children;      /* per segment */
    PyObject *skip_types;       /* tuple: greenlet types never followed (gevent's Hub) */
    uint64_t next_serial;       /* cx_segment.serial */

    /* task end tracking for finish reports (sampler thread only) */
    cx_task_end tasks[CX_MAX_TASKS];
    size_t n_tasks;
    uint64_t commands_version;

    /* test hook: when capture is a list, every accepted snapshot is also
     * appended to it as (task, segment, time_ms, sequence, [frames]) */
    PyObject *capture;
    Py_ssize_t capture_limit;

    cx_counters c;
} cx_state;

extern cx_state cx;

static inline int64_t cx_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Takes one snapshot of seg from the given leaf frame, if the segment's
 * rules allow it (threshold, caps). Never raises. Returns 1 if one was added.
 */
int cx_snapshot(cx_segment *seg, cx_frame *leaf, int64_t now_ms);

/* Recomputes cx.sample_period_ms from the live segments (GIL held). */
void cx_update_sample_period(void);

/* greenlet.getcurrent() through greenlet's C API; NULL if unavailable. */
PyObject *cx_greenlet_current(void);

/* "greenlet", "sampling", "thread" or "off". */
const char *cx_mode_name(int mode);

/* introspect.c: the test hook and the module's introspection functions. */
void cx_capture_append(const cx_segment *seg, int64_t now, size_t n);
PyObject *cx_py_stats(PyObject *self, PyObject *unused);
PyObject *cx_py_capture(PyObject *self, PyObject *args);
PyObject *cx_py_walk_current(PyObject *self, PyObject *unused);
PyObject *cx_py_walk_greenlet(PyObject *self, PyObject *g);

#endif
