/*
 * The native sampler thread.
 *
 * A real pthread, so gevent's monkey-patching cannot turn it into a greenlet
 * that only runs when the app yields. It has two jobs:
 *
 *  - Sampling (sampling and thread modes). Every dump_period it takes the
 *    GIL and snapshots what is running at that moment: in sampling mode the
 *    greenlet each switch callback reports as current, read from that
 *    thread's live frames (greenlet swaps the frame stack on every switch, so
 *    the thread's frames are the current greenlet's); in thread mode every
 *    profiled thread. When nothing is profiled it does not touch the GIL.
 *
 *  - Housekeeping, without the GIL: it watches the library's task commands
 *    and sends a task-finish report when a task's time window ends, even if
 *    the app receives no request at that moment.
 *
 * In sampling mode the main thread's greenlets are sampled through a
 * pending call rather than by taking the GIL (see pending_sample).
 *
 * It keeps one Python thread state for its whole life (created on start):
 * PyGILState_Ensure/Release per tick would create and destroy a thread state
 * each time.
 */
#include "cx.h"

#include <errno.h>
#include <pythread.h>
#include <string.h>
#include <time.h>

#define HOUSEKEEPING_MS 200

/* Py_IsFinalizing became public in 3.13; before it only the private name exists. */
static inline int cx_py_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

static pthread_t thread;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;
static int cv_ready;
static int running;
static int stopping;

/* Only the sampler thread uses this (it is large: keep it off the stack). */
static cn_command commands[CN_AGENT_MAX_COMMANDS];

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static PyThreadState *find_tstate(PyInterpreterState *interp, unsigned long thread_id)
{
    for (PyThreadState *t = PyInterpreterState_ThreadHead(interp); t; t = PyThreadState_Next(t)) {
        if (t->thread_id == thread_id)
            return t;
    }
    return NULL;
}

/* Is the segment due at this tick? Ticks jitter, so accept half a period early. */
static int due(cx_segment *seg, int64_t now, int tick_ms)
{
    if (now + tick_ms / 2 < seg->next_sample_ms)
        return 0;
    seg->next_sample_ms = now + seg->dump_period_ms;
    return 1;
}

/*
 * Sampling mode, hub in the main thread (the gevent case): the sample is
 * taken by a pending call (Py_AddPendingCall), which the main thread runs at
 * its next bytecode boundary, in whatever greenlet is running right then.
 *
 * Why not just take the GIL and look: the GIL is handed over where the main
 * thread releases it, and a gevent server releases it mostly around socket
 * calls and in the hub's event loop; a sampler that takes the GIL therefore
 * lands almost always in the hub or in the server's I/O, and almost never in
 * a request's CPU work, which is exactly what sampling mode is for. The
 * pending call interrupts the running Python code instead, so samples are
 * proportional to where time goes. (Thread mode has no such mechanism for
 * other threads and keeps GIL sampling, like sys._current_frames samplers.)
 */
static atomic_int pending;            /* a pending call is queued */
static atomic_ulong main_tid;         /* learned from the first pending call */
static atomic_int gil_path_needed = 1;/* tracers on other threads (or not known yet) */

void cx_sampler_tracers_changed(void)
{
    atomic_store(&gil_path_needed, 1);
}

static int pending_sample(void *arg)
{
    (void)arg;
    atomic_store(&pending, 0);
    unsigned long tid = PyThread_get_thread_ident();
    atomic_store(&main_tid, tid);
    int others = 0;
    if (atomic_load(&cx.mode) == CX_MODE_SAMPLING && cx.agent && cx.greenlets.count) {
        /* Runs between two bytecodes of arbitrary code: leave its error
         * state exactly as it was. */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        int64_t now = cx_now_ms();
        int tick = atomic_load(&cx.sample_period_ms);
        for (cx_tracer *t = cx.tracers; t; t = t->next) {
            if (!t->active)
                continue;
            if (t->thread_id != tid) {
                others = 1;
                continue;
            }
            cx_segment *seg = cx_registry_find(&cx.greenlets, (uintptr_t)t->current);
            /* The segment's tick, whichever of its greenlets runs now. */
            if (!seg)
                cx.c.samples_idle++;
            else if (due(cx_segment_root(seg), now, tick))
                cx_snapshot(seg, cx_frame_of_tstate(PyThreadState_GET()), now);
        }
        if (++cx.c.samples % 64 == 0)
            cx_update_sample_period();
        if (PyErr_Occurred()) {
            PyErr_Clear();
            cx.c.errors++;
        }
        PyErr_Restore(et, ev, tb);
    } else {
        for (cx_tracer *t = cx.tracers; t; t = t->next)
            others |= t->active && t->thread_id != tid;
    }
    atomic_store(&gil_path_needed, others);
    return 0;
}

/* No GIL. Queues one pending call at a time. */
static void schedule_pending(void)
{
    if (atomic_exchange(&pending, 1))
        return;
    if (Py_AddPendingCall(pending_sample, NULL) != 0) {
        atomic_store(&pending, 0); /* queue full: try at the next tick */
        __atomic_fetch_add(&cx.c.errors, 1, __ATOMIC_RELAXED);
        return;
    }
    cx_poke_eval_breaker();
}

/* GIL held. */
static void sample_tick(int tick_ms)
{
    int mode = atomic_load(&cx.mode);
    if (!cx.agent)
        return;
    int64_t now = cx_now_ms();
    PyInterpreterState *interp = PyInterpreterState_Get();
    if (mode == CX_MODE_SAMPLING) {
        unsigned long mtid = atomic_load(&main_tid);
        for (cx_tracer *t = cx.tracers; t; t = t->next) {
            /* The main thread's greenlets are sampled by pending_sample. */
            if (!t->active || (mtid && t->thread_id == mtid))
                continue;
            cx_segment *seg = cx_registry_find(&cx.greenlets, (uintptr_t)t->current);
            if (!seg || !due(cx_segment_root(seg), now, tick_ms))
                continue;
            PyThreadState *ts = find_tstate(interp, t->thread_id);
            if (ts)
                cx_snapshot(seg, cx_frame_of_tstate(ts), now);
        }
    } else if (mode == CX_MODE_THREAD) {
        for (PyThreadState *t = PyInterpreterState_ThreadHead(interp); t; t = PyThreadState_Next(t)) {
            cx_segment *seg = cx_registry_find(&cx.threads, (uintptr_t)t->thread_id);
            if (seg && due(cx_segment_root(seg), now, tick_ms))
                cx_snapshot(seg, cx_frame_of_tstate(t), now);
        }
    }
    /* end() never raises the period (it would have to scan the registry on
     * every request); do it here, once a second or so. */
    if (++cx.c.samples % 64 == 0)
        cx_update_sample_period();
    if (PyErr_Occurred()) {
        PyErr_Clear();
        cx.c.errors++;
    }
}

/* No GIL: only the library and the sampler-private task table. */
static void housekeeping(void)
{
    cn_agent *a = cx.agent;
    if (!a)
        return;
    int64_t now = cx_now_ms();

    uint64_t version = 0;
    cn_agent_commands(a, NULL, 0, &version);
    if (version != cx.commands_version) {
        size_t n = cn_agent_commands(a, commands, CN_AGENT_MAX_COMMANDS, &version);
        if (n > CN_AGENT_MAX_COMMANDS)
            n = CN_AGENT_MAX_COMMANDS;
        cx.commands_version = version;
        for (size_t i = 0; i < n; i++) {
            const cn_command *c = &commands[i];
            size_t j;
            for (j = 0; j < cx.n_tasks; j++) {
                if (strcmp(cx.tasks[j].task_id, c->task_id) == 0 &&
                    cx.tasks[j].create_time_ms == c->create_time_ms)
                    break;
            }
            if (j < cx.n_tasks)
                continue;
            if (cx.n_tasks == CX_MAX_TASKS) {
                /* Forget a task whose report is done to make room. */
                for (j = 0; j < cx.n_tasks && !cx.tasks[j].reported; j++) {
                }
                if (j == cx.n_tasks)
                    continue;
                cx.tasks[j] = cx.tasks[--cx.n_tasks];
            }
            cx_task_end *t = &cx.tasks[cx.n_tasks++];
            memset(t, 0, sizeof(*t));
            /* Same size as cn_command.task_id, which is NUL-terminated. */
            memcpy(t->task_id, c->task_id, sizeof(t->task_id));
            t->task_id[sizeof(t->task_id) - 1] = '\0';
            t->create_time_ms = c->create_time_ms;
            /* A continuous task never ends, so it is never reported finished (the collector's registry
             * says when it is cancelled: it stops coming in the commands). */
            t->end_ms = c->continuous ? INT64_MAX : c->start_time_ms + c->duration_min * 60000;
            /* A task that was over before we first saw it never ran here. */
            t->reported = t->end_ms <= now;
        }
    }
    for (size_t j = 0; j < cx.n_tasks; j++) {
        cx_task_end *t = &cx.tasks[j];
        if (!t->reported && now >= t->end_ms) {
            t->reported = 1;
            if (cn_agent_report_finish(a, t->task_id) == 0)
                __atomic_fetch_add(&cx.c.finish_reports, 1, __ATOMIC_RELAXED);
        }
    }
}

static void *sampler_main(void *arg)
{
    (void)arg;
    /* Our own thread state, made once; the GIL is dropped right away. */
    PyGILState_STATE gs = PyGILState_Ensure();
    PyThreadState *ts = PyEval_SaveThread();

    int64_t next_tick = mono_ms();
    int64_t next_house = next_tick;
    pthread_mutex_lock(&mu);
    while (!stopping) {
        int m = atomic_load(&cx.mode);
        int sampling = (m == CX_MODE_SAMPLING || m == CX_MODE_THREAD) &&
                       atomic_load(&cx.active_segments) > 0;
        int tick = atomic_load(&cx.sample_period_ms);
        if (tick < 1)
            tick = 1;
        int64_t now = mono_ms();
        int64_t wake = next_house;
        if (sampling) {
            if (next_tick < now - tick)  /* fell behind (GIL busy): don't burst */
                next_tick = now;
            if (next_tick < wake)
                wake = next_tick;
        }
        if (wake > now) {
            struct timespec abs;
            clock_gettime(CLOCK_MONOTONIC, &abs);
            int64_t d = wake - now;
            abs.tv_sec += d / 1000;
            abs.tv_nsec += (d % 1000) * 1000000;
            if (abs.tv_nsec >= 1000000000) {
                abs.tv_sec++;
                abs.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&cv, &mu, &abs);
            continue;  /* re-evaluate: woken early, or stopping, or due */
        }
        pthread_mutex_unlock(&mu);

        if (sampling && now >= next_tick) {
            next_tick += tick;
            if (!cx_py_finalizing()) {
                int gil = 1;
                if (m == CX_MODE_SAMPLING) {
                    schedule_pending();
                    gil = atomic_load(&gil_path_needed);
                }
                if (gil) {
                    PyEval_RestoreThread(ts);
                    sample_tick(tick);
                    ts = PyEval_SaveThread();
                }
            }
        }
        if (now >= next_house) {
            next_house = now + HOUSEKEEPING_MS;
            housekeeping();
        }
        pthread_mutex_lock(&mu);
    }
    pthread_mutex_unlock(&mu);

    PyEval_RestoreThread(ts);
    PyGILState_Release(gs);
    return NULL;
}

static int init_cv(void)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return -1;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&cv, &attr);
    pthread_condattr_destroy(&attr);
    return rc == 0 ? 0 : -1;
}

int cx_sampler_start(void)
{
    if (running)
        return 0;
    if (!cv_ready) {
        if (init_cv() != 0)
            return -1;
        cv_ready = 1;
    }
    stopping = 0;
    if (pthread_create(&thread, NULL, sampler_main, NULL) != 0)
        return -1;
    running = 1;
    return 0;
}

void cx_sampler_wake(void)
{
    if (!running)
        return;
    pthread_mutex_lock(&mu);
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
}

void cx_sampler_stop(void)
{
    if (!running)
        return;
    pthread_mutex_lock(&mu);
    stopping = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
    /* The thread needs the GIL to finish a tick and to drop its thread state. */
    Py_BEGIN_ALLOW_THREADS
    pthread_join(thread, NULL);
    Py_END_ALLOW_THREADS
    running = 0;
}

void cx_sampler_forget(void)
{
    /* In a fork child the thread does not exist, and mu/cv may have been
     * held by it at the moment of fork: make fresh ones. Python already
     * dropped the thread's thread state in PyOS_AfterFork_Child. */
    running = 0;
    stopping = 0;
    pthread_mutex_init(&mu, NULL);
    cv_ready = init_cv() == 0;
    cx.n_tasks = 0;
    cx.commands_version = 0;
}
