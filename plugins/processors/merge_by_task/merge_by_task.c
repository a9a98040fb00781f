/*
 * Processor `merge_by_task`: groups snapshots from every agent by task id,
 * orders them by sequence within each segment, drops repeated (segment,
 * sequence) pairs, and hands each task on as one chunk per flush.
 *
 * Snapshots are never copied: the processor keeps references into the
 * batches (and one reference on each batch) until the task is flushed.
 * Sequences are passed on exactly as the agent made them.
 *
 * A segment remembers which sequences it already emitted: a watermark below
 * which all were emitted, plus the few emitted above it (sequences can arrive
 * out of order when an agent resends an older batch). That is what makes a
 * duplicate detectable across flushes.
 *
 * Each task keeps its segments on a list in the order they were last seen,
 * so that forgetting idle ones (at max_segments_per_task, or after
 * segment_idle_timeout) costs time in proportion to what is forgotten, not
 * to how many are remembered.
 */
#include <stdlib.h>
#include <string.h>

#include "canopy/dict.h"
#include "canopy/lru.h"
#include "canopy/seqset.h"
#include "canopy/plugin.h"

typedef struct pending_snap {
    int32_t seq;
    cn_snap_ref ref;
} pending_snap;

/*
 * A segment's first pending buffer holds this many snapshots, and buffers of
 * that size freed at flushes are kept (up to SPARE_BUFFERS) for the next
 * segments: a flush frees hundreds at once, and malloc's bookkeeping for them
 * was a tenth of this processor's time. A request's segment rarely needs more.
 */
#define FIRST_PENDING 16
#define SPARE_BUFFERS 512

typedef struct merge_segment {
    cn_seqset emitted;       /* sequences already passed on */
    pending_snap *pending;
    size_t n_pending, cap_pending;
    bool unsorted;           /* pending arrived out of order */
    bool dirty;              /* on the task's dirty list */
    struct merge_segment *next_dirty;
    int64_t last_seen_ms;    /* monotonic */
    cn_lru_link lru;         /* on the task's list by last_seen_ms */
    const char *id;          /* the task's dict's copy of the key */
    uint64_t id_hash;        /* its cn_dict hash, for the removal */
} merge_segment;

typedef struct merge_task {
    char *id;
    cn_dict *segments;       /* segment id -> merge_segment */
    merge_segment *dirty;    /* segments with pending snapshots */
    cn_lru seen;             /* every segment, least recently seen first */
    size_t n_pending;
    cn_batch **batches;      /* one reference each, for the pending snapshots */
    size_t n_batches, cap_batches;
    cn_batch *last_batch;
    int64_t last_flush_ms, last_data_ms; /* monotonic */
} merge_task;

typedef struct merge_ctx {
    /* options */
    int64_t flush_interval;
    int64_t max_snapshots;
    int64_t max_tasks;
    int64_t max_segments_per_task;
    int64_t segment_idle_timeout;
    int64_t task_idle_timeout;
    /* runtime */
    cn_component *self;
    cn_task_registry *registry;
    cn_dict *tasks; /* task id -> merge_task */
    int64_t next_sweep_ms;
    pending_snap *spare[SPARE_BUFFERS]; /* FIRST_PENDING-sized buffers to reuse */
    size_t n_spare;
    /* per-batch lookup caches, indexed by string index; valid where stamp == gen */
    merge_task **task_of;
    merge_segment **segment_of;
    merge_task **segment_task;
    uint32_t *stamp;
    size_t cache_cap;
    uint32_t gen;
    cn_metric *buffered, *live_tasks, *live_segments, *evicted_segments, *duplicates, *limit_drops, *oom_drops,
        *flushes;
    cn_ratelimit limit_log;
} merge_ctx;

static const cn_option merge_options[] = {
    {CN_OPT_DURATION, "flush_interval", "1s", offsetof(merge_ctx, flush_interval),
     "Hand on each task's buffered snapshots at least this often.", .min = 1, .max = 3600 * 1000},
    {CN_OPT_INT, "max_snapshots", "8192", offsetof(merge_ctx, max_snapshots),
     "Hand on a task as soon as it buffers this many snapshots.", .min = 1, .max = 10000000},
    {CN_OPT_INT, "max_tasks", "1024", offsetof(merge_ctx, max_tasks),
     "Tasks merged at once; snapshots of further tasks are dropped and counted.", .min = 1, .max = 1000000},
    {CN_OPT_INT, "max_segments_per_task", "20000", offsetof(merge_ctx, max_segments_per_task),
     "Segments remembered per task (about 170 bytes each). When full, the least recently seen idle tenth "
     "is forgotten; if all are busy, snapshots of new segments are dropped and counted.",
     .min = 10, .max = 100000000},
    {CN_OPT_DURATION, "segment_idle_timeout", "2m", offsetof(merge_ctx, segment_idle_timeout),
     "Forget a segment (and its duplicate detection) after no snapshot for this long.", .min = 1000,
     .max = 7 * 24 * 3600 * 1000LL},
    {CN_OPT_DURATION, "task_idle_timeout", "1m", offsetof(merge_ctx, task_idle_timeout),
     "A task the registry does not know ends after no snapshot for this long.", .min = 1000,
     .max = 7 * 24 * 3600 * 1000LL},
    CN_OPT_END};

/* ---- state --------------------------------------------------------------------- */

static void segment_free(void *p)
{
    merge_segment *s = p;
    cn_seqset_clear(&s->emitted);
    free(s->pending);
    free(s);
}

static void task_free(merge_task *t)
{
    if (!t)
        return;
    cn_dict_free(t->segments, segment_free);
    for (size_t i = 0; i < t->n_batches; i++)
        cn_batch_unref(t->batches[i]);
    free(t->batches);
    free(t->id);
    free(t);
}

static merge_task *task_get(merge_ctx *m, const char *id, int64_t now)
{
    merge_task *t = cn_dict_get(m->tasks, id);
    if (t)
        return t;
    if ((int64_t)cn_dict_size(m->tasks) >= m->max_tasks)
        return NULL;
    t = calloc(1, sizeof *t);
    if (!t || !(t->id = strdup(id)) || !(t->segments = cn_dict_new(64)) || cn_dict_put(m->tasks, id, t) != 0) {
        task_free(t);
        return NULL;
    }
    t->last_flush_ms = t->last_data_ms = now;
    cn_metric_inc(m->live_tasks);
    return t;
}

/* Marks s as seen now: it moves to the new end of the list. */
static void segment_touch(merge_task *t, merge_segment *s, int64_t now)
{
    s->last_seen_ms = now;
    cn_lru_touch(&t->seen, &s->lru);
}

static void segment_forget(merge_ctx *m, merge_task *t, merge_segment *s)
{
    cn_lru_unlink(&t->seen, &s->lru);
    cn_dict_remove_hashed(t->segments, s->id, s->id_hash);
    segment_free(s);
    cn_metric_add(m->live_segments, -1);
}

/*
 * At max_segments_per_task, forget the least recently seen tenth of the
 * segments that hold no pending snapshots. Forgetting a segment only loses
 * its duplicate detection, which matters for seconds after its request
 * ended; refusing a new segment would lose data. Evicting a tenth at a time
 * keeps the (cache-invalidating) evictions rare.
 */
static void evict_segments(merge_ctx *m, merge_task *t)
{
    size_t quota = cn_dict_size(t->segments) / 10 + 1, evicted = 0;
    merge_segment *s = CN_LRU_ENTRY(t->seen.oldest, merge_segment, lru);
    while (s && evicted < quota) {
        merge_segment *newer = CN_LRU_ENTRY(s->lru.newer, merge_segment, lru);
        if (!s->dirty) {
            segment_forget(m, t, s);
            evicted++;
        }
        s = newer;
    }
    cn_metric_add(m->evicted_segments, (int64_t)evicted);
}

/* hash: id's cn_dict hash, the batch's key for the string. */
static merge_segment *segment_get(merge_ctx *m, merge_task *t, const char *id, uint64_t hash, int64_t now)
{
    merge_segment *s = cn_dict_get_hashed(t->segments, id, hash);
    if (s)
        return s;
    if ((int64_t)cn_dict_size(t->segments) >= m->max_segments_per_task) {
        evict_segments(m, t);
        /* Cached segment pointers may now dangle. */
        if (++m->gen == 0)
            m->gen = 1;
        memset(m->stamp, 0, m->cache_cap * sizeof *m->stamp);
        if ((int64_t)cn_dict_size(t->segments) >= m->max_segments_per_task)
            return NULL;
    }
    s = calloc(1, sizeof *s);
    if (!s || !(s->id = cn_dict_put_key_hashed(t->segments, id, hash, s))) {
        free(s);
        return NULL;
    }
    s->id_hash = hash;
    s->last_seen_ms = now;
    cn_lru_push(&t->seen, &s->lru);
    cn_metric_inc(m->live_segments);
    return s;
}

/* ---- flushing ------------------------------------------------------------------- */

static int cmp_pending(const void *a, const void *b)
{
    int32_t x = ((const pending_snap *)a)->seq, y = ((const pending_snap *)b)->seq;
    return (x > y) - (x < y);
}

/* Emits every pending snapshot of the task as one chunk; final marks the task's end. */
static void flush_task(merge_ctx *m, merge_task *t, bool final, int64_t now, cn_emitter *out)
{
    t->last_flush_ms = now;
    if (t->n_pending == 0 && !final)
        return;
    cn_chunk *c = cn_chunk_new(t->id, t->n_pending, 0);
    if (!c) {
        cn_metric_add(m->oom_drops, (int64_t)t->n_pending);
        cn_error(cn_component_id(m->self), "out of memory: dropped %zu snapshots of task %s", t->n_pending, t->id);
    }
    size_t dups = 0;
    for (merge_segment *s = t->dirty; s; s = s->next_dirty) {
        if (s->unsorted)
            qsort(s->pending, s->n_pending, sizeof *s->pending, cmp_pending);
        for (size_t i = 0; i < s->n_pending; i++) {
            int32_t seq = s->pending[i].seq;
            if (c && (cn_seqset_has(&s->emitted, seq) || (i > 0 && s->pending[i - 1].seq == seq))) {
                dups++; /* without a chunk every snapshot is counted once, as an out-of-memory drop */
                continue;
            }
            if (c) {
                cn_seqset_add(&s->emitted, seq, 0); /* out of memory: a later duplicate may pass */
                c->refs[c->n++] = s->pending[i].ref;
            }
        }
        s->n_pending = 0;
        s->unsorted = false;
        s->dirty = false;
        /* Most segments (requests) see one or two flushes; an idle segment keeps
         * only its duplicate-detection state, not a buffer. */
        if (s->cap_pending == FIRST_PENDING && m->n_spare < SPARE_BUFFERS)
            m->spare[m->n_spare++] = s->pending;
        else
            free(s->pending);
        s->pending = NULL;
        s->cap_pending = 0;
    }
    merge_segment *s = t->dirty;
    while (s) {
        merge_segment *next = s->next_dirty;
        s->next_dirty = NULL;
        s = next;
    }
    t->dirty = NULL;
    cn_metric_add(m->buffered, -(int64_t)t->n_pending);
    cn_metric_add(m->duplicates, (int64_t)dups);
    t->n_pending = 0;
    t->last_batch = NULL;
    if (!c) {
        for (size_t i = 0; i < t->n_batches; i++)
            cn_batch_unref(t->batches[i]);
        t->n_batches = 0;
        return;
    }
    /* The chunk takes over the batch references. */
    c->batches = t->batches;
    c->n_batches = t->n_batches;
    t->batches = NULL;
    t->n_batches = t->cap_batches = 0;
    c->task_final = final;
    cn_metric_inc(m->flushes);
    cn_emit(out, c);
}

/* ---- input ---------------------------------------------------------------------- */

static int cache_reserve(merge_ctx *m, size_t n_strings)
{
    if (n_strings <= m->cache_cap)
        return 0;
    size_t cap = m->cache_cap ? m->cache_cap : 256;
    while (cap < n_strings)
        cap *= 2;
    merge_task **task_of = realloc(m->task_of, cap * sizeof *task_of);
    if (task_of)
        m->task_of = task_of;
    merge_segment **segment_of = realloc(m->segment_of, cap * sizeof *segment_of);
    if (segment_of)
        m->segment_of = segment_of;
    merge_task **segment_task = realloc(m->segment_task, cap * sizeof *segment_task);
    if (segment_task)
        m->segment_task = segment_task;
    uint32_t *stamp = realloc(m->stamp, cap * sizeof *stamp);
    if (stamp)
        m->stamp = stamp;
    if (!task_of || !segment_of || !segment_task || !stamp)
        return -1;
    memset(m->stamp + m->cache_cap, 0, (cap - m->cache_cap) * sizeof *stamp);
    m->cache_cap = cap;
    return 0;
}

static int task_hold_batch(merge_task *t, cn_batch *b)
{
    if (t->last_batch == b)
        return 0;
    if (t->n_batches == t->cap_batches) {
        size_t cap = t->cap_batches ? t->cap_batches * 2 : 16;
        cn_batch **grown = realloc(t->batches, cap * sizeof *grown);
        if (!grown)
            return -1;
        t->batches = grown;
        t->cap_batches = cap;
    }
    t->batches[t->n_batches++] = cn_batch_ref(b);
    t->last_batch = b;
    return 0;
}

static int segment_push(merge_ctx *m, merge_segment *s, const cn_snap_ref *ref)
{
    if (!s->cap_pending && m->n_spare) {
        s->pending = m->spare[--m->n_spare];
        s->cap_pending = FIRST_PENDING;
    }
    if (s->n_pending == s->cap_pending) {
        size_t cap = s->cap_pending ? s->cap_pending * 2 : FIRST_PENDING;
        pending_snap *grown = realloc(s->pending, cap * sizeof *grown);
        if (!grown)
            return -1;
        s->pending = grown;
        s->cap_pending = cap;
    }
    int32_t seq = ref->snap->sequence;
    if (s->n_pending && s->pending[s->n_pending - 1].seq >= seq)
        s->unsorted = true;
    s->pending[s->n_pending++] = (pending_snap){seq, *ref};
    return 0;
}

static void count_drop(merge_ctx *m, cn_metric *counter, const char *why, const char *task)
{
    cn_metric_inc(counter);
    cn_log_limited(&m->limit_log, CN_LOG_WARN, cn_component_id(m->self), "dropping snapshots of task %s: %s", task,
                   why);
}

/*
 * Adds one batch's snapshots; uses per-string caches so each task and segment
 * id is looked up once per batch. A segment is marked seen at that lookup:
 * its batch's snapshots all arrive at the same `now`.
 */
static void add_refs(merge_ctx *m, const cn_snap_ref *refs, size_t n, int64_t now, cn_emitter *out)
{
    cn_batch *b = NULL;
    int64_t buffered = 0; /* added to the gauge once: an atomic add per snapshot showed in profiles */
    for (size_t i = 0; i < n; i++) {
        const cn_snap_ref *r = &refs[i];
        /* Decoded on another thread, the snapshots are cold here: fetch a few ahead. */
        if (i + 8 < n)
            __builtin_prefetch(refs[i + 8].snap);
        if (r->batch != b) {
            b = r->batch;
            if (cache_reserve(m, b->n_strings) != 0) {
                count_drop(m, m->oom_drops, "out of memory", "(any)");
                b = NULL;
                continue;
            }
            if (++m->gen == 0) { /* wrapped: clear stamps so no stale entry looks valid */
                memset(m->stamp, 0, m->cache_cap * sizeof *m->stamp);
                m->gen = 1;
            }
        }
        uint32_t ti = r->snap->task, si = r->snap->segment;
        uint32_t gen = m->gen;
        /* stamp bit 0 of a pair: task lookup done; segment lookup is keyed by its own index */
        merge_task *t;
        if (m->stamp[ti] == gen && m->task_of[ti]) {
            t = m->task_of[ti];
        } else {
            t = task_get(m, b->strings[ti], now);
            if (m->stamp[ti] != gen) {
                m->stamp[ti] = gen;
                m->segment_of[ti] = NULL;
                m->segment_task[ti] = NULL;
            }
            m->task_of[ti] = t;
            if (!t) {
                count_drop(m, m->limit_drops, "max_tasks reached (or out of memory)", b->strings[ti]);
                continue;
            }
        }
        merge_segment *s;
        if (m->stamp[si] == gen && m->segment_task[si] == t && m->segment_of[si]) {
            s = m->segment_of[si];
        } else {
            s = segment_get(m, t, b->strings[si], b->string_keys[si], now);
            if (m->stamp[si] != gen) {
                m->stamp[si] = gen;
                m->task_of[si] = NULL;
            }
            m->segment_of[si] = s;
            m->segment_task[si] = t;
            if (!s) {
                count_drop(m, m->limit_drops, "max_segments_per_task reached (or out of memory)", t->id);
                continue;
            }
            segment_touch(t, s, now);
        }
        if (task_hold_batch(t, b) != 0 || segment_push(m, s, r) != 0) {
            count_drop(m, m->oom_drops, "out of memory", t->id);
            continue;
        }
        if (!s->dirty) {
            s->dirty = true;
            s->next_dirty = t->dirty;
            t->dirty = s;
        }
        t->n_pending++;
        t->last_data_ms = now;
        buffered++;
        if ((int64_t)t->n_pending >= m->max_snapshots) {
            cn_metric_add(m->buffered, buffered); /* before the flush takes them off */
            buffered = 0;
            flush_task(m, t, false, now, out);
        }
    }
    cn_metric_add(m->buffered, buffered);
}

static void merge_process(void *ctx, cn_chunk *in, cn_emitter *out)
{
    merge_ctx *m = ctx;
    add_refs(m, in->refs, in->n, cn_mono_ms(), out);
    cn_chunk_unref(in); /* the tasks hold their own batch references */
}

/* ---- time ----------------------------------------------------------------------- */

/* Forgets segments idle past segment_idle_timeout: they are at the old end of the list. */
static void sweep_segments(merge_ctx *m, merge_task *t, int64_t now)
{
    merge_segment *s = CN_LRU_ENTRY(t->seen.oldest, merge_segment, lru);
    while (s && now - s->last_seen_ms >= m->segment_idle_timeout) {
        merge_segment *newer = CN_LRU_ENTRY(s->lru.newer, merge_segment, lru);
        if (!s->dirty)
            segment_forget(m, t, s);
        s = newer;
    }
}

static void end_task(merge_ctx *m, merge_task *t, int64_t now, cn_emitter *out)
{
    flush_task(m, t, true, now, out);
    cn_metric_add(m->live_segments, -(int64_t)cn_dict_size(t->segments));
    cn_metric_add(m->live_tasks, -1);
    char *id = strdup(t->id);
    if (id) {
        cn_dict_remove(m->tasks, id);
        free(id);
        task_free(t);
    }
    /* Cached task pointers may now dangle: invalidate every cache entry. */
    if (++m->gen == 0)
        m->gen = 1;
    memset(m->stamp, 0, m->cache_cap * sizeof *m->stamp);
}

static void merge_tick(void *ctx, int64_t now, cn_emitter *out)
{
    merge_ctx *m = ctx;
    bool sweep = now >= m->next_sweep_ms;
    if (sweep)
        m->next_sweep_ms = now + 10000;
    int64_t wall = cn_now_ms();
    merge_task **ended = NULL;
    size_t n_ended = 0, cap = 0;
    size_t pos = 0;
    void *value;
    while (cn_dict_next(m->tasks, &pos, NULL, &value)) {
        merge_task *t = value;
        cn_task_state st = cn_tasks_state(m->registry, t->id, wall);
        bool over = st == CN_TASK_ENDED || (st == CN_TASK_UNKNOWN && now - t->last_data_ms >= m->task_idle_timeout);
        if (over) {
            if (n_ended == cap) {
                cap = cap ? cap * 2 : 8;
                merge_task **grown = realloc(ended, cap * sizeof *grown);
                if (!grown)
                    continue; /* retried next tick */
                ended = grown;
            }
            ended[n_ended++] = t;
            continue;
        }
        if (now - t->last_flush_ms >= m->flush_interval)
            flush_task(m, t, false, now, out);
        if (sweep)
            sweep_segments(m, t, now);
    }
    for (size_t i = 0; i < n_ended; i++) {
        cn_info(cn_component_id(m->self), "task %s ended; final flush", ended[i]->id);
        end_task(m, ended[i], now, out);
    }
    free(ended);
}

static void merge_drain(void *ctx, cn_emitter *out)
{
    merge_ctx *m = ctx;
    size_t pos = 0;
    void *value;
    int64_t now = cn_mono_ms();
    while (cn_dict_next(m->tasks, &pos, NULL, &value))
        flush_task(m, value, false, now, out);
}

static int merge_start(void *ctx, cn_component *self)
{
    merge_ctx *m = ctx;
    m->self = self;
    m->registry = cn_component_tasks(self);
    if (!(m->tasks = cn_dict_new(64)))
        return -1;
    const char *l = cn_component_labels(self);
    m->buffered = cn_gauge("canopy_merge_buffered_snapshots", "Snapshots waiting for their task's next flush.", l);
    m->live_tasks = cn_gauge("canopy_merge_live_tasks", "Tasks being merged.", l);
    m->live_segments = cn_gauge("canopy_merge_live_segments", "Segments remembered for ordering and deduplication.", l);
    m->evicted_segments = cn_counter("canopy_merge_evicted_segments_total",
                                     "Idle segments forgotten early because max_segments_per_task was reached.", l);
    m->duplicates = cn_counter("canopy_merge_duplicate_snapshots_total",
                               "Snapshots dropped because their (segment, sequence) was already passed on.", l);
    m->limit_drops = cn_counter("canopy_merge_limit_dropped_snapshots_total",
                                "Snapshots dropped because max_tasks or max_segments_per_task was reached.", l);
    m->oom_drops = cn_counter("canopy_merge_oom_dropped_snapshots_total", "Snapshots dropped for lack of memory.", l);
    m->flushes = cn_counter("canopy_merge_flushes_total", "Chunks handed on.", l);
    m->limit_log.interval_ms = 10000;
    m->next_sweep_ms = cn_mono_ms() + 10000;
    return 0;
}

static void merge_destroy(void *ctx)
{
    merge_ctx *m = ctx;
    if (m->tasks) {
        size_t pos = 0;
        void *value;
        while (cn_dict_next(m->tasks, &pos, NULL, &value))
            task_free(value);
        cn_dict_free(m->tasks, NULL);
    }
    while (m->n_spare)
        free(m->spare[--m->n_spare]);
    free(m->task_of);
    free(m->segment_of);
    free(m->segment_task);
    free(m->stamp);
}

const cn_processor_plugin cn_processor_merge_by_task = {
    .base =
        {
            .kind = CN_PROCESSOR,
            .type = "merge_by_task",
            .description = "Groups snapshots by task across agents, orders each segment by sequence, drops duplicates.",
            .ctx_size = sizeof(merge_ctx),
            .options = merge_options,
            .cb_start = merge_start,
            .cb_destroy = merge_destroy,
        },
    .cb_process = merge_process,
    .cb_tick = merge_tick,
    .cb_drain = merge_drain,
};
