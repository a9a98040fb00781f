/*
 * The pyroscope exporter's intervals (see pyroscope.h): snapshots go into
 * the call tree of their (task, service, endpoint, mode) and interval; an
 * interval closes `delay` after its end and each of its profiles is rendered
 * to a gzipped pprof by the same renderer the pprof files and the live
 * profiles use (profiles/calltree.h), then queued for pushing.
 *
 * Only the exporter's thread calls these, so nothing here locks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyroscope.h"

/* Separates the parts of a profile's key; no task id, service or signature holds it. */
#define KEY_SEP '\x1f'

static void run_free(void *v)
{
    cn_calltree_run *r = v;
    cn_calltree_run_clear(r);
    free(r);
}

static void profile_free(void *v)
{
    pyro_profile *prof = v;
    if (!prof)
        return;
    cn_calltree_free(prof->tree);
    cn_dict_free(prof->runs, run_free);
    free(prof->task_id);
    free(prof->service);
    free(prof->endpoint);
    free(prof->mode);
    free(prof);
}

void pyro_push_free(pyro_push *x)
{
    if (!x)
        return;
    free(x->url);
    free(x->task_id);
    free(x->body);
    free(x);
}

int pyro_windows_init(pyro_ctx *p)
{
    p->open = cn_dict_new(64);
    return p->open ? 0 : -1;
}

void pyro_windows_free(pyro_ctx *p)
{
    cn_dict_free(p->open, profile_free);
    p->open = NULL;
    while (p->pending) {
        pyro_push *x = p->pending;
        p->pending = x->next;
        pyro_push_free(x);
    }
    p->pending_tail = NULL;
    p->n_pending = 0;
    p->pending_bytes = 0;
    free(p->sigs);
    p->sigs = NULL;
    p->cap_sigs = 0;
}

static int64_t floor_to(int64_t t, int64_t step)
{
    int64_t q = t / step;
    if (t % step < 0)
        q--;
    return q * step;
}

/* What the registry says of a task, looked up once per run of its snapshots in a chunk. */
typedef struct task_facts {
    const char *id; /* the string the lookup was for (a pointer into a batch) */
    char endpoint[1024];
    int64_t period_ms;
} task_facts;

static void task_lookup(pyro_ctx *p, const char *task_id, task_facts *f)
{
    f->id = task_id;
    f->endpoint[0] = '\0';
    f->period_ms = 0;
    cn_task t;
    if (p->tasks && cn_tasks_get(p->tasks, task_id, &t) == 0) {
        snprintf(f->endpoint, sizeof f->endpoint, "%s", t.endpoint ? t.endpoint : "");
        f->period_ms = t.dump_period_ms;
        cn_task_clear(&t);
    }
}

static pyro_profile *profile_get(pyro_ctx *p, const char *task, const char *service, const task_facts *facts,
                                 const char *mode, int64_t from_ms)
{
    char key[4096];
    int n = snprintf(key, sizeof key, "%s%c%s%c%s%c%s%c%lld", task, KEY_SEP, service, KEY_SEP, facts->endpoint,
                     KEY_SEP, mode, KEY_SEP, (long long)from_ms);
    if (n < 0 || (size_t)n >= sizeof key)
        return NULL; /* counted as dropped by the caller: ids this long are refused upstream anyway */
    pyro_profile *prof = cn_dict_get(p->open, key);
    if (prof)
        return prof;
    if ((int64_t)cn_dict_size(p->open) >= p->max_profiles)
        return NULL;
    if (!(prof = calloc(1, sizeof *prof)))
        return NULL;
    prof->from_ms = from_ms;
    prof->period_ms = facts->period_ms;
    if (!(prof->task_id = strdup(task)) || !(prof->service = strdup(service)) ||
        !(prof->endpoint = strdup(facts->endpoint)) || !(prof->mode = strdup(mode)) ||
        /* Small at first: an interval's profiles are many, short-lived and mostly small, and a tree presized
         * for max_nodes faults in a page of its child table per node (docs/performance.md, issue 15). */
        !(prof->tree = cn_calltree_new_presized((size_t)p->max_nodes, 512)) || !(prof->runs = cn_dict_new(16)) ||
        cn_dict_put(p->open, key, prof) != 0) {
        profile_free(prof);
        return NULL;
    }
    cn_metric_set(p->m_open_profiles, (int64_t)cn_dict_size(p->open));
    return prof;
}

static cn_calltree_run *run_get(pyro_profile *prof, const char *segment)
{
    cn_calltree_run *r = cn_dict_get(prof->runs, segment);
    if (r)
        return r;
    if (!(r = calloc(1, sizeof *r)))
        return NULL; /* counted without its duration */
    if (cn_dict_put(prof->runs, segment, r) != 0) {
        free(r);
        return NULL;
    }
    return r;
}

static int add_snapshot(pyro_ctx *p, pyro_profile *prof, const cn_snap_ref *ref)
{
    size_t n = ref->snap->n_frames;
    if (n > p->cap_sigs) {
        size_t cap = n < 64 ? 64 : n;
        uint32_t *sigs = realloc(p->sigs, cap * sizeof *sigs);
        if (!sigs)
            return -1;
        p->sigs = sigs;
        p->cap_sigs = cap;
    }
    for (size_t i = 0; i < n; i++)
        p->sigs[i] = cn_calltree_intern_key(prof->tree, cn_ref_frame_key(ref, i),
                                            cn_ref_frame(ref, i)); /* NONE: cut there, counted */
    cn_calltree_run *run = run_get(prof, cn_ref_segment(ref));
    if (cn_calltree_add(prof->tree, p->sigs, n, run, ref->snap->sequence, ref->snap->time_ms) != 0)
        cn_metric_inc(p->m_truncated);
    prof->snapshots++;
    return 0;
}

void pyro_windows_add(pyro_ctx *p, const cn_chunk *chunk)
{
    if (chunk->id == p->last_chunk)
        return;
    p->last_chunk = chunk->id;
    int64_t now = cn_now_ms(), step = p->interval_ms;
    task_facts facts = {0};
    pyro_profile *prof = NULL;
    const cn_batch *prof_batch = NULL;
    int64_t prof_from = 0, dropped = 0, late = 0;
    for (size_t i = 0; i < chunk->n; i++) {
        const cn_snap_ref *ref = &chunk->refs[i];
        const char *task = cn_ref_task(ref);
        if (task != facts.id && (!facts.id || strcmp(task, facts.id) != 0)) {
            task_lookup(p, task, &facts);
            prof = NULL;
        }
        int64_t t = ref->snap->time_ms;
        /* A clock far ahead would hold an interval open for that long: take it as now. */
        if (t > now + step)
            t = now;
        int64_t from = floor_to(t, step);
        if (from < p->closed_until_ms) {
            /* Its interval was pushed already: it goes into the first open one rather than a second
             * push of a closed interval, so intervals stay one push each and counts still add up. */
            from = p->closed_until_ms;
            late++;
        }
        if (!prof || ref->batch != prof_batch || from != prof_from) {
            const cn_agent_identity *agent = ref->batch->agent;
            const char *mode = agent->mode && agent->mode[0] ? agent->mode : "unknown";
            prof = profile_get(p, task, agent->service, &facts, mode, from);
            prof_batch = ref->batch;
            prof_from = from;
        }
        if (!prof || add_snapshot(p, prof, ref) != 0)
            dropped++;
    }
    for (size_t i = 0; i < chunk->n_batches; i++)
        if (chunk->batches[i]->received_ms > p->watermark_ms)
            p->watermark_ms = chunk->batches[i]->received_ms;
    p->last_busy_ms = cn_mono_ms();
    if (late)
        cn_metric_add(p->m_late_snapshots, late);
    if (dropped) {
        cn_metric_add(p->m_dropped_snapshots_limit, dropped);
        cn_log_limited(&p->rl_drop, CN_LOG_WARN, p->id,
                       "dropped %lld snapshots: max_profiles (%lld interval profiles open at once) reached, or "
                       "out of memory",
                       (long long)dropped, (long long)p->max_profiles);
    }
}

/* The wall sample type that fits how the snapshots were taken. */
static cn_pprof_style style_for(const pyro_profile *prof)
{
    /* Sampling and thread modes (and SkyWalking's agents) snapshot every dump_period, so one
     * snapshot stands for one period of wall time. Greenlet mode snapshots at switches: the
     * time a frame stayed on the stack between snapshots (SkyWalking's duration) is its wall. */
    if (strcmp(prof->mode, "greenlet") != 0 && prof->period_ms > 0)
        return (cn_pprof_style){.wall = CN_PPROF_WALL_SAMPLES_NS, .period_ns = prof->period_ms * 1000000};
    return (cn_pprof_style){.wall = CN_PPROF_WALL_DURATION_NS};
}

/* Renders a closed profile into a push at the end of the pending list; false when out of memory. */
static bool queue_push(pyro_ctx *p, const pyro_profile *prof)
{
    int64_t until = prof->from_ms + p->interval_ms;
    cn_profile_meta meta = {.task_id = prof->task_id,
                            .service = prof->service,
                            .endpoint = prof->endpoint,
                            .start_ms = prof->from_ms,
                            .end_ms = until,
                            .period_ms = prof->period_ms,
                            .agents = -1};
    cn_pprof_style style = style_for(prof);
    pyro_push *x = calloc(1, sizeof *x);
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    int rc = out ? cn_calltree_write_pprof_styled(prof->tree, &meta, &style, out) : -1;
    if (out && fclose(out) != 0)
        rc = -1;
    if (rc != 0 || !x || !(x->url = pyro_ingest_url(p, prof, until)) || !(x->task_id = strdup(prof->task_id))) {
        free(buf);
        pyro_push_free(x);
        return false;
    }
    x->body = (uint8_t *)buf;
    x->len = len;
    x->from_ms = prof->from_ms;
    x->snapshots = prof->snapshots;
    if (p->pending_tail)
        p->pending_tail->next = x;
    else
        p->pending = x;
    p->pending_tail = x;
    p->n_pending++;
    p->pending_bytes += (int64_t)len;
    return true;
}

static int by_interval(const void *a, const void *b)
{
    const pyro_profile *x = *(pyro_profile *const *)a, *y = *(pyro_profile *const *)b;
    if (x->from_ms != y->from_ms)
        return x->from_ms < y->from_ms ? -1 : 1;
    int c = strcmp(x->task_id, y->task_id);
    return c ? c : strcmp(x->endpoint, y->endpoint);
}

int64_t pyro_windows_clock(const pyro_ctx *p)
{
    int64_t now = cn_now_ms();
    int64_t idle_after = p->delay_ms > 1000 ? p->delay_ms : 1000;
    if (cn_mono_ms() - p->last_busy_ms > idle_after || p->watermark_ms > now)
        return now;
    return p->watermark_ms;
}

void pyro_windows_close(pyro_ctx *p, int64_t now_ms, bool all)
{
    int64_t limit = all ? INT64_MAX : now_ms - p->delay_ms;
    if (!all) {
        int64_t closed = floor_to(limit, p->interval_ms);
        if (closed > p->closed_until_ms)
            p->closed_until_ms = closed;
    }
    size_t n = cn_dict_size(p->open), k = 0, pos = 0;
    if (n == 0)
        return;
    pyro_profile **due = calloc(n, sizeof *due);
    if (!due)
        return; /* tried again at the next tick */
    void *v;
    while (cn_dict_next(p->open, &pos, NULL, &v)) {
        pyro_profile *prof = v;
        if (all || prof->from_ms + p->interval_ms <= limit)
            due[k++] = prof;
    }
    qsort(due, k, sizeof *due, by_interval);
    for (size_t i = 0; i < k; i++) {
        pyro_profile *prof = due[i];
        if (!queue_push(p, prof)) {
            cn_metric_add(p->m_dropped_snapshots_render, prof->snapshots);
            cn_log_limited(&p->rl_drop, CN_LOG_ERROR, p->id,
                           "out of memory rendering the profile of task %s: %lld snapshots dropped", prof->task_id,
                           (long long)prof->snapshots);
        }
    }
    /* Removed after the loop: the keys are the dict's own. */
    char key[4096];
    for (size_t i = 0; i < k; i++) {
        pyro_profile *prof = due[i];
        snprintf(key, sizeof key, "%s%c%s%c%s%c%s%c%lld", prof->task_id, KEY_SEP, prof->service, KEY_SEP,
                 prof->endpoint, KEY_SEP, prof->mode, KEY_SEP, (long long)prof->from_ms);
        cn_dict_remove(p->open, key);
        profile_free(prof);
    }
    free(due);
    cn_metric_set(p->m_open_profiles, (int64_t)cn_dict_size(p->open));
    cn_metric_set(p->m_pending, (int64_t)p->n_pending);
    cn_metric_set(p->m_pending_bytes, p->pending_bytes);
}
