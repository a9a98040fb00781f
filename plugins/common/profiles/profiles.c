/*
 * The per-task profile store (see profiles/profiles.h). One mutex guards it:
 * the pipeline thread holds it for one chunk at a time, readers only long
 * enough to copy what they show.
 *
 * The hot path is per frame: a signature is interned into the task's tree
 * once per (batch, string index) per chunk through a small cache, so a frame
 * costs an array read and one integer hash probe in the tree.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/dict.h"
#include "canopy/lru.h"
#include "canopy/log.h"
#include "canopy/metrics.h"
#include "profiles/profiles.h"

#define SIG_UNSET UINT32_MAX
#define SIG_FAILED (UINT32_MAX - 1)

typedef struct prof_segment {
    cn_calltree_run run;
    cn_lru_link lru;  /* on its task's list, least recently seen first; links the spares */
    const char *id;   /* the task's dict's copy of the key */
    uint64_t id_hash; /* its cn_dict hash, for the removal */
} prof_segment;

/*
 * Segments forgotten at max_segments are kept, with their runs' buffers, for
 * the next new ones: a request is a new segment every few snapshots, and its
 * allocations (the segment, its run's path and signatures) were a tenth of
 * the live exporter's time. Evictions free a tenth of max_segments at once,
 * so this many spares cover them at the default max_segments.
 */
#define SPARE_SEGMENTS 128

typedef struct prof_task {
    char *id;
    char *service;
    cn_calltree *tree;
    cn_dict *segments; /* segment id -> prof_segment */
    cn_lru seen;       /* the segments, least recently seen first */
    cn_dict *agents;   /* instance -> non-NULL */
    cn_profiles_limits limits; /* as when the task was created */
    int64_t snapshots, segments_seen, first_ms, last_ms;
    uint64_t order;    /* creation order, for listing */
    uint64_t ended_at; /* order of its end among ends; 0 while live */
    size_t nodes_counted; /* what the nodes gauge holds for it */
} prof_task;

/* Cache of interned signatures for one (batch, task) pair, for the chunk being added. */
typedef struct sig_slot {
    const cn_batch *batch;
    const prof_task *task;
    size_t offset; /* into sig_pool: batch->n_strings entries */
} sig_slot;

struct cn_profiles {
    pthread_mutex_t lock;
    cn_profiles_limits limits;
    cn_dict *tasks; /* id -> prof_task */
    uint64_t next_order, next_end;
    sig_slot *slots;
    size_t cap_slots, used_slots;
    uint32_t *sig_pool;
    size_t pool_len, pool_cap;
    uint32_t *frames; /* signatures of the snapshot being added */
    size_t cap_frames;
    cn_lru_link *spare; /* forgotten segments for reuse, linked through lru.newer */
    size_t n_spare;
    cn_metric *m_tasks, *m_nodes, *m_snapshots, *m_truncated, *m_dropped, *m_evicted_tasks, *m_evicted_segments,
        *m_agents_over;
    cn_ratelimit drop_log;
};

/* ---- tasks --------------------------------------------------------------------- */

static void cache_reset(cn_profiles *p);

static void segment_free(void *v)
{
    prof_segment *s = v;
    cn_calltree_run_clear(&s->run);
    free(s);
}

static void task_free(prof_task *t)
{
    if (!t)
        return;
    cn_calltree_free(t->tree);
    cn_dict_free(t->segments, segment_free);
    cn_dict_free(t->agents, NULL);
    free(t->id);
    free(t->service);
    free(t);
}

static void task_forget(cn_profiles *p, prof_task *t)
{
    cn_metric_add(p->m_nodes, -(int64_t)t->nodes_counted);
    cn_metric_add(p->m_tasks, -1);
    cn_dict_remove(p->tasks, t->id);
    task_free(t);
}

/* At max_tasks, the task that ended first makes room; live tasks are never forgotten. */
static bool make_room(cn_profiles *p)
{
    prof_task *victim = NULL;
    size_t pos = 0;
    void *v;
    while (cn_dict_next(p->tasks, &pos, NULL, &v)) {
        prof_task *t = v;
        if (t->ended_at && (!victim || t->ended_at < victim->ended_at))
            victim = t;
    }
    if (!victim)
        return false;
    task_forget(p, victim);
    /* The signature cache is keyed by task address, which a new task may now reuse. */
    cache_reset(p);
    cn_metric_inc(p->m_evicted_tasks);
    return true;
}

static prof_task *task_get(cn_profiles *p, const char *id)
{
    prof_task *t = cn_dict_get(p->tasks, id);
    if (t)
        return t;
    if ((int64_t)cn_dict_size(p->tasks) >= p->limits.max_tasks && !make_room(p))
        return NULL;
    t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->limits = p->limits;
    t->order = ++p->next_order;
    if (!(t->id = strdup(id)) || !(t->tree = cn_calltree_new((size_t)t->limits.max_nodes)) ||
        !(t->segments = cn_dict_new(64)) || !(t->agents = cn_dict_new(16)) || cn_dict_put(p->tasks, id, t) != 0) {
        task_free(t);
        return NULL;
    }
    cn_metric_inc(p->m_tasks);
    return t;
}

/* Keeps a forgotten segment (whose key its task's dict no longer holds) for reuse, up to SPARE_SEGMENTS. */
static void segment_retire(cn_profiles *p, prof_segment *s)
{
    if (p->n_spare >= SPARE_SEGMENTS) {
        segment_free(s);
        return;
    }
    cn_calltree_run_reset(&s->run);
    s->id = NULL;
    s->lru.newer = p->spare;
    p->spare = &s->lru;
    p->n_spare++;
}

static prof_segment *segment_new(cn_profiles *p)
{
    if (!p->spare)
        return calloc(1, sizeof(prof_segment));
    prof_segment *s = CN_LRU_ENTRY(p->spare, prof_segment, lru);
    p->spare = s->lru.newer;
    p->n_spare--;
    s->lru = (cn_lru_link){0};
    return s;
}

/* At max_segments, the least recently seen tenth is forgotten: only their duration runs are lost. */
static void evict_segments(cn_profiles *p, prof_task *t)
{
    size_t quota = cn_dict_size(t->segments) / 10 + 1, evicted = 0;
    while (evicted < quota && t->seen.oldest) {
        prof_segment *s = CN_LRU_ENTRY(t->seen.oldest, prof_segment, lru);
        cn_lru_unlink(&t->seen, &s->lru);
        cn_dict_remove_hashed(t->segments, s->id, s->id_hash);
        segment_retire(p, s);
        evicted++;
    }
    cn_metric_add(p->m_evicted_segments, (int64_t)evicted);
}

/* hash: id's cn_dict hash, the batch's key for the string. */
static prof_segment *segment_get(cn_profiles *p, prof_task *t, const char *id, uint64_t hash)
{
    prof_segment *s = cn_dict_get_hashed(t->segments, id, hash);
    if (s)
        return s;
    if ((int64_t)cn_dict_size(t->segments) >= t->limits.max_segments)
        evict_segments(p, t);
    if (!(s = segment_new(p)))
        return NULL; /* counted without durations */
    if (!(s->id = cn_dict_put_key_hashed(t->segments, id, hash, s))) {
        segment_retire(p, s);
        return NULL;
    }
    s->id_hash = hash;
    cn_lru_push(&t->seen, &s->lru);
    t->segments_seen++;
    return s;
}

/* ---- the per-chunk signature cache ---------------------------------------------- */

static void cache_reset(cn_profiles *p)
{
    if (p->used_slots)
        memset(p->slots, 0, p->cap_slots * sizeof *p->slots);
    p->used_slots = 0;
    p->pool_len = 0;
}

static size_t slot_index(const cn_batch *b, const prof_task *t, size_t mask)
{
    uint64_t h = ((uintptr_t)b >> 4) * 0x9E3779B97F4A7C15ULL ^ ((uintptr_t)t >> 4) * 0xC2B2AE3D27D4EB4FULL;
    return (size_t)(h >> 20) & mask;
}

static int cache_grow(cn_profiles *p)
{
    size_t cap = p->cap_slots ? p->cap_slots * 2 : 64;
    sig_slot *slots = calloc(cap, sizeof *slots);
    if (!slots)
        return -1;
    for (size_t i = 0; i < p->cap_slots; i++) {
        if (!p->slots[i].batch)
            continue;
        size_t j = slot_index(p->slots[i].batch, p->slots[i].task, cap - 1);
        while (slots[j].batch)
            j = (j + 1) & (cap - 1);
        slots[j] = p->slots[i];
    }
    free(p->slots);
    p->slots = slots;
    p->cap_slots = cap;
    return 0;
}

/* The signature map of (batch, task), made on first use; also where a new agent is noticed. */
static uint32_t *cache_get(cn_profiles *p, const cn_batch *b, prof_task *t)
{
    if ((p->used_slots + 1) * 2 > p->cap_slots && cache_grow(p) != 0)
        return NULL;
    size_t mask = p->cap_slots - 1, i = slot_index(b, t, mask);
    while (p->slots[i].batch) {
        if (p->slots[i].batch == b && p->slots[i].task == t)
            return p->sig_pool + p->slots[i].offset;
        i = (i + 1) & mask;
    }
    if (p->pool_len + b->n_strings > p->pool_cap) {
        size_t cap = p->pool_cap ? p->pool_cap : 4096;
        while (cap < p->pool_len + b->n_strings)
            cap *= 2;
        uint32_t *grown = realloc(p->sig_pool, cap * sizeof *grown);
        if (!grown)
            return NULL;
        p->sig_pool = grown;
        p->pool_cap = cap;
    }
    p->slots[i] = (sig_slot){b, t, p->pool_len};
    p->used_slots++;
    uint32_t *map = p->sig_pool + p->pool_len;
    memset(map, 0xff, b->n_strings * sizeof *map);
    /* Every frame of a new map is looked up by its key: fetch the batch's keys (cold, 8 bytes a
     * string) all at once rather than one miss at a time. */
    for (size_t k = 0; k < b->n_strings; k += 64 / sizeof *b->string_keys)
        __builtin_prefetch(b->string_keys + k);
    p->pool_len += b->n_strings;

    const char *instance = b->agent->instance ? b->agent->instance : "";
    if (!t->service && b->agent->service && b->agent->service[0])
        t->service = strdup(b->agent->service); /* NULL on failure: shown as unknown */
    if (!cn_dict_get(t->agents, instance)) {
        if ((int64_t)cn_dict_size(t->agents) >= t->limits.max_agents)
            cn_metric_inc(p->m_agents_over);
        else
            cn_dict_put(t->agents, instance, (void *)1); /* out of memory: under-counted, harmless */
    }
    return map;
}

/* ---- the store ------------------------------------------------------------------ */

cn_profiles *cn_profiles_new(const cn_profiles_limits *limits, const char *labels)
{
    cn_profiles *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->limits = limits ? *limits : CN_PROFILES_DEFAULT_LIMITS;
    if (!(p->tasks = cn_dict_new(32))) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    const char *l = labels ? labels : "";
    p->m_tasks = cn_gauge("canopy_profile_tasks", "Tasks with a call tree held (live and recently ended).", l);
    p->m_nodes = cn_gauge("canopy_profile_nodes", "Call tree nodes held, over all tasks.", l);
    p->m_snapshots = cn_counter("canopy_profile_snapshots_total", "Snapshots added to per-task call trees.", l);
    p->m_truncated = cn_counter("canopy_profile_truncated_snapshots_total",
                                "Snapshots whose stack was cut because their task's call tree reached max_nodes.", l);
    p->m_dropped = cn_counter("canopy_profile_dropped_snapshots_total",
                              "Snapshots left out of the call trees because max_tasks live tasks were held.", l);
    p->m_evicted_tasks = cn_counter("canopy_profile_evicted_tasks_total",
                                    "Ended tasks forgotten to make room for new ones (max_tasks).", l);
    p->m_evicted_segments = cn_counter("canopy_profile_evicted_segments_total",
                                       "Segments forgotten early at max_segments; their next snapshot starts a new "
                                       "duration run.", l);
    p->m_agents_over = cn_counter("canopy_profile_agents_over_limit_total",
                                  "New agent instances not counted because a task reached max_agents.", l);
    p->drop_log.interval_ms = 10000;
    return p;
}

void cn_profiles_free(cn_profiles *p)
{
    if (!p)
        return;
    size_t pos = 0;
    void *v;
    while (cn_dict_next(p->tasks, &pos, NULL, &v)) {
        prof_task *t = v;
        cn_metric_add(p->m_nodes, -(int64_t)t->nodes_counted);
        cn_metric_add(p->m_tasks, -1);
        task_free(t);
    }
    cn_dict_free(p->tasks, NULL);
    while (p->spare) {
        prof_segment *s = CN_LRU_ENTRY(p->spare, prof_segment, lru);
        p->spare = s->lru.newer;
        segment_free(s);
    }
    free(p->slots);
    free(p->sig_pool);
    free(p->frames);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* Brings the nodes gauge up to date with t's tree: once per task of a chunk, not per snapshot. */
static void count_nodes(cn_profiles *p, prof_task *t)
{
    size_t nodes = cn_calltree_node_count(t->tree);
    if (nodes != t->nodes_counted) {
        cn_metric_add(p->m_nodes, (int64_t)nodes - (int64_t)t->nodes_counted);
        t->nodes_counted = nodes;
    }
}

static void end_locked(cn_profiles *p, prof_task *t)
{
    if (!t->ended_at)
        t->ended_at = ++p->next_end;
}

void cn_profiles_add_chunk(cn_profiles *p, const cn_chunk *chunk)
{
    pthread_mutex_lock(&p->lock);
    cache_reset(p);
    prof_task *t = NULL;
    const char *task_str = NULL, *seg_str = NULL;
    const cn_batch *seg_batch = NULL; /* seg_str is string seg_idx of seg_batch */
    uint32_t seg_idx = 0;
    uint64_t seg_key = 0; /* seg_str's key */
    prof_segment *seg = NULL;
    int64_t added = 0, truncated = 0, dropped = 0;
    const cn_batch *map_batch = NULL;
    const prof_task *map_task = NULL, *prev_task = NULL;
    uint32_t *map = NULL;
    const cn_snap_ref *prev = NULL; /* the last snapshot whose signatures are in p->frames */
    for (size_t i = 0; i < chunk->n; i++) {
        const cn_snap_ref *r = &chunk->refs[i];
        /* The snapshots were decoded long ago on another thread and are cold: fetch a few ahead
         * (the snapshot, then its frame indices), or each costs two cache misses in a row. */
        if (i + 8 < chunk->n)
            __builtin_prefetch(chunk->refs[i + 8].snap);
        if (i + 4 < chunk->n) {
            /* 20 frames are 80 bytes: two cache lines */
            const uint32_t *ahead = chunk->refs[i + 4].snap->frames;
            __builtin_prefetch(ahead);
            __builtin_prefetch((const char *)ahead + 64);
        }
        /* merge_by_task chunks hold one task; others may mix them. */
        const char *tid = chunk->task_id ? chunk->task_id : cn_ref_task(r);
        if (!t || (tid != task_str && strcmp(tid, task_str) != 0)) {
            if (t)
                count_nodes(p, t); /* before task_get, which may forget it */
            t = task_get(p, tid);
            task_str = tid;
            seg_str = NULL;
            seg = NULL;
            map_batch = NULL; /* task_get may have forgotten a task and cleared the cache */
            map_task = NULL;
            prev = NULL;
        }
        if (!t) {
            dropped++;
            continue;
        }
        /* Refs come grouped by segment: compare with the last one before any lookup, by string
         * index while in the same batch (its string pointers are one more cold line), by key
         * across batches. */
        if (!seg_str || r->batch != seg_batch || r->snap->segment != seg_idx) {
            const char *sid = cn_ref_segment(r);
            uint64_t key = cn_ref_segment_key(r);
            if (!seg_str || (sid != seg_str && key != seg_key)) {
                seg = segment_get(p, t, sid, key);
                seg_str = sid;
                seg_key = key;
            }
            seg_batch = r->batch;
            seg_idx = r->snap->segment;
        }
        if (r->batch != map_batch || t != map_task) {
            map = cache_get(p, r->batch, t);
            map_batch = r->batch;
            map_task = t;
        }
        const cn_snapshot *snap = r->snap;
        size_t nf = snap->n_frames;
        if (nf > p->cap_frames) {
            uint32_t *grown = realloc(p->frames, nf * sizeof *grown);
            if (!grown) {
                dropped++;
                prev = NULL;
                continue;
            }
            p->frames = grown; /* realloc keeps the previous snapshot's signatures */
            p->cap_frames = nf;
        }
        /* p->frames still holds the previous snapshot's signatures: where this one has the same
         * string indices in the same batch (the next sample of the same request, mostly), they are
         * the same signatures, and only the rest is mapped. */
        size_t f = 0;
        if (prev && prev->batch == r->batch && prev_task == t) {
            const uint32_t *a = snap->frames, *b = prev->snap->frames;
            size_t lim = nf < prev->snap->n_frames ? nf : prev->snap->n_frames;
            while (f < lim && a[f] == b[f])
                f++;
        }
        uint32_t *frames = p->frames;
        for (; f < nf; f++) {
            uint32_t idx = snap->frames[f];
            uint32_t sig = map ? map[idx] : SIG_UNSET;
            if (sig == SIG_UNSET) {
                /* By the key alone: the batch's string pointers are one more cold line. */
                uint64_t key = r->batch->string_keys[idx];
                sig = cn_calltree_find_key(t->tree, key);
                if (sig == CN_CALLTREE_NONE)
                    sig = cn_calltree_intern_key(t->tree, key, r->batch->strings[idx]);
                if (sig == CN_CALLTREE_NONE)
                    sig = SIG_FAILED;
                if (map)
                    map[idx] = sig;
            }
            frames[f] = sig == SIG_FAILED ? CN_CALLTREE_NONE : sig;
        }
        prev = r;
        prev_task = t;
        if (cn_calltree_add(t->tree, p->frames, nf, seg ? &seg->run : NULL, r->snap->sequence, r->snap->time_ms) != 0)
            truncated++;
        if (seg)
            cn_lru_touch(&t->seen, &seg->lru);
        int64_t tm = r->snap->time_ms;
        if (!t->first_ms || tm < t->first_ms)
            t->first_ms = tm;
        if (tm > t->last_ms)
            t->last_ms = tm;
        t->snapshots++;
        added++;
    }
    if (t)
        count_nodes(p, t);
    if (chunk->task_final && chunk->task_id) {
        prof_task *ft = cn_dict_get(p->tasks, chunk->task_id);
        if (ft)
            end_locked(p, ft);
    }
    /* The cache is as big as the chunk's batches' string tables: after an unusually big chunk,
     * give the memory back rather than keep the peak for the life of the process. */
    if (p->pool_cap > (1u << 20)) {
        free(p->sig_pool);
        p->sig_pool = NULL;
        p->pool_cap = p->pool_len = 0;
    }
    if (p->cap_slots > 4096) {
        free(p->slots);
        p->slots = NULL;
        p->cap_slots = p->used_slots = 0;
    }
    /* Counted before the lock is released, so whoever reads the task's figures sees these too. */
    cn_metric_add(p->m_snapshots, added);
    cn_metric_add(p->m_truncated, truncated);
    cn_metric_add(p->m_dropped, dropped);
    pthread_mutex_unlock(&p->lock);
    if (dropped) {
        cn_log_limited(&p->drop_log, CN_LOG_WARN, "profiles",
                       "%lld snapshots of task %s left out of its call tree: max_tasks (%lld) live tasks held",
                       (long long)dropped, task_str ? task_str : "?", (long long)p->limits.max_tasks);
    }
}

void cn_profiles_end_task(cn_profiles *p, const char *task_id)
{
    pthread_mutex_lock(&p->lock);
    prof_task *t = cn_dict_get(p->tasks, task_id);
    if (t)
        end_locked(p, t);
    pthread_mutex_unlock(&p->lock);
}

int cn_profiles_remove(cn_profiles *p, const char *task_id)
{
    pthread_mutex_lock(&p->lock);
    prof_task *t = cn_dict_get(p->tasks, task_id);
    if (t)
        task_forget(p, t);
    pthread_mutex_unlock(&p->lock);
    return t ? 0 : -1;
}

static int info_fill(const prof_task *t, cn_task_figures *out)
{
    memset(out, 0, sizeof *out);
    out->task_id = strdup(t->id);
    out->service = cn_strdup(t->service);
    if (!out->task_id || (t->service && !out->service)) {
        cn_task_figures_clear(out);
        return -1;
    }
    out->snapshots = t->snapshots;
    out->agents = (int64_t)cn_dict_size(t->agents);
    out->segments = t->segments_seen;
    out->nodes = (int64_t)cn_calltree_node_count(t->tree);
    out->truncated = cn_calltree_truncated(t->tree);
    out->first_ms = t->first_ms;
    out->last_ms = t->last_ms;
    out->ended = t->ended_at != 0;
    return 0;
}

int cn_profiles_info(cn_profiles *p, const char *task_id, cn_task_figures *out)
{
    pthread_mutex_lock(&p->lock);
    prof_task *t = cn_dict_get(p->tasks, task_id);
    int rc = t ? info_fill(t, out) : -1;
    pthread_mutex_unlock(&p->lock);
    return rc;
}

static int cmp_order(const void *a, const void *b)
{
    uint64_t x = (*(prof_task *const *)a)->order, y = (*(prof_task *const *)b)->order;
    return (x > y) - (x < y);
}

size_t cn_profiles_list(cn_profiles *p, cn_task_figures **out)
{
    *out = NULL;
    pthread_mutex_lock(&p->lock);
    size_t n = cn_dict_size(p->tasks), k = 0, pos = 0;
    prof_task **tasks = malloc((n ? n : 1) * sizeof *tasks);
    cn_task_figures *infos = calloc(n ? n : 1, sizeof *infos);
    void *v;
    if (tasks && infos) {
        while (cn_dict_next(p->tasks, &pos, NULL, &v))
            tasks[k++] = v;
        qsort(tasks, k, sizeof *tasks, cmp_order);
        size_t filled = 0;
        for (size_t i = 0; i < k; i++)
            if (info_fill(tasks[i], &infos[filled]) == 0)
                filled++;
        k = filled;
    } else {
        k = 0;
    }
    pthread_mutex_unlock(&p->lock);
    free(tasks);
    if (k == 0) {
        free(infos);
        return 0;
    }
    *out = infos;
    return k;
}

cn_calltree *cn_profiles_clone(cn_profiles *p, const char *task_id, cn_task_figures *info)
{
    pthread_mutex_lock(&p->lock);
    prof_task *t = cn_dict_get(p->tasks, task_id);
    cn_calltree *c = NULL;
    if (t) {
        c = cn_calltree_clone(t->tree);
        if (c && info && info_fill(t, info) != 0) {
            cn_calltree_free(c);
            c = NULL;
        }
    }
    pthread_mutex_unlock(&p->lock);
    return c;
}
