/*
 * Decoding and validating requests from agents, and the batch/chunk life
 * cycle. Validation happens once, here, so that every later stage can index
 * the string table without checks.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "canopy/batch.h"
#include "canopy/string_key.h"
#include "canopy/common.h"
#include "decode.h"

/* Bytes of decoded batches alive anywhere in the process: the memory limiter's input. */
static _Atomic int64_t live_batch_bytes;

/*
 * Threads in cn_batch_wait_live_bytes. wake_at_or_below is the highest level
 * any of them waits for, -1 while none waits: the batch free that brings the
 * live bytes there wakes them, and every other free costs one load. The
 * waiter publishes its level before it reads the live bytes, and a free
 * subtracts before it reads the level (both sequentially consistent), so one
 * of the two always sees the other: no wake-up is lost.
 */
static pthread_mutex_t live_wait_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t live_wait_cond;
static pthread_once_t live_wait_once = PTHREAD_ONCE_INIT;
static size_t live_waiters; /* under live_wait_lock */
static _Atomic int64_t wake_at_or_below = -1;

static void *arena_pb_alloc(void *data, size_t size) { return cn_arena_alloc(data, size); }
static void arena_pb_free(void *data, void *ptr)
{
    CN_UNUSED(data);
    CN_UNUSED(ptr); /* freed with the arena */
}

static Canopy__V1__Reason fail(Canopy__V1__Reason reason, cn_refusal *why, cn_batch_limit limit, const char *fmt,
                               ...) CN_PRINTF(4, 5);
static Canopy__V1__Reason fail(Canopy__V1__Reason reason, cn_refusal *why, cn_batch_limit limit, const char *fmt, ...)
{
    if (why) {
        why->limit = limit;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why->detail, sizeof why->detail, fmt, ap);
        va_end(ap);
    }
    return reason;
}

/* longest_string: the longest string's length when the decoder measured it, SIZE_MAX when not. */
static Canopy__V1__Reason validate_batch(const Canopy__V1__SnapshotBatch *b, const cn_batch_limits *lim,
                                         cn_refusal *why, size_t longest_string)
{
    const int64_t n_strings = (int64_t)b->n_strings;
    if (lim->max_strings && n_strings > lim->max_strings)
        return fail(CANOPY__V1__REASON__REASON_LIMIT_EXCEEDED, why, CN_LIMIT_STRINGS,
                    "string table has %lld strings, limit is %lld", (long long)n_strings,
                    (long long)lim->max_strings);
    if (lim->max_snapshots && (int64_t)b->n_snapshots > lim->max_snapshots)
        return fail(CANOPY__V1__REASON__REASON_LIMIT_EXCEEDED, why, CN_LIMIT_SNAPSHOTS,
                    "batch has %zu snapshots, limit is %lld", b->n_snapshots, (long long)lim->max_snapshots);
    if (lim->max_string_length && (longest_string == SIZE_MAX || (int64_t)longest_string > lim->max_string_length)) {
        for (size_t i = 0; i < b->n_strings; i++) {
            size_t len = strlen(b->strings[i]);
            if ((int64_t)len > lim->max_string_length)
                return fail(CANOPY__V1__REASON__REASON_LIMIT_EXCEEDED, why, CN_LIMIT_STRING_LENGTH,
                            "string %zu is %zu bytes long, limit is %lld", i, len,
                            (long long)lim->max_string_length);
        }
    }
    for (size_t i = 0; i < b->n_snapshots; i++) {
        const Canopy__V1__Snapshot *s = b->snapshots[i];
        if ((int64_t)s->task >= n_strings || (int64_t)s->segment >= n_strings)
            return fail(CANOPY__V1__REASON__REASON_INDEX_OUT_OF_RANGE, why, CN_LIMIT_NONE,
                        "snapshot %zu: task/segment index %u/%u outside %lld strings", i, s->task, s->segment,
                        (long long)n_strings);
        if (b->strings[s->task][0] == '\0' || b->strings[s->segment][0] == '\0')
            return fail(CANOPY__V1__REASON__REASON_INVALID, why, CN_LIMIT_NONE,
                        "snapshot %zu: empty task or segment id", i);
        if (s->sequence < 0)
            return fail(CANOPY__V1__REASON__REASON_INVALID, why, CN_LIMIT_NONE,
                        "snapshot %zu: negative sequence %d", i, s->sequence);
        if (lim->max_frames && (int64_t)s->n_frames > lim->max_frames)
            return fail(CANOPY__V1__REASON__REASON_LIMIT_EXCEEDED, why, CN_LIMIT_FRAMES,
                        "snapshot %zu has %zu frames, limit is %lld", i, s->n_frames,
                        (long long)lim->max_frames);
        for (size_t f = 0; f < s->n_frames; f++)
            if ((int64_t)s->frames[f] >= n_strings)
                return fail(CANOPY__V1__REASON__REASON_INDEX_OUT_OF_RANGE, why, CN_LIMIT_NONE,
                            "snapshot %zu: frame index %u outside %lld strings", i, s->frames[f],
                            (long long)n_strings);
    }
    return CANOPY__V1__REASON__REASON_OK;
}

Canopy__V1__Reason cn_batch_validate(const Canopy__V1__SnapshotBatch *b, const cn_batch_limits *lim,
                                     cn_refusal *why)
{
    return validate_batch(b, lim, why, SIZE_MAX);
}

Canopy__V1__Reason cn_request_decode(const uint8_t *data, size_t len, const cn_batch_limits *limits,
                                     Canopy__V1__Request **out_req, cn_arena **out_arena,
                                     cn_batch **out_batch, cn_refusal *why)
{
    *out_req = NULL;
    *out_arena = NULL;
    *out_batch = NULL;
    /* The direct decoder reserves exactly what it counted (a 24 KB batch of 256
     * snapshots decodes to ~54 KB); this first-block size is protobuf-c's, for
     * the requests it falls back to: its structs take about four times the wire size. */
    cn_arena *arena = cn_arena_new(len * 4 + 4096);
    if (!arena)
        return fail(CANOPY__V1__REASON__REASON_OVERLOADED, why, CN_LIMIT_NONE, "out of memory");
    Canopy__V1__Request *req = NULL;
    size_t longest_string = SIZE_MAX;
    decode_result dr = cn_decode_batch_request(data, len, arena, &req, &longest_string);
    if (dr == DECODE_NO_MEMORY) {
        cn_arena_free(arena);
        return fail(CANOPY__V1__REASON__REASON_OVERLOADED, why, CN_LIMIT_NONE, "out of memory");
    }
    if (dr == DECODE_FALLBACK) {
        ProtobufCAllocator alloc = {arena_pb_alloc, arena_pb_free, arena};
        req = canopy__v1__request__unpack(&alloc, len, data);
        longest_string = SIZE_MAX; /* protobuf-c's strings: measure them */
    }
    if (!req) {
        cn_arena_free(arena);
        return fail(CANOPY__V1__REASON__REASON_MALFORMED, why, CN_LIMIT_NONE,
                    "not a canopy.v1.Request (%zu bytes)", len);
    }
    Canopy__V1__Reason reason = CANOPY__V1__REASON__REASON_OK;
    if (req->protocol_version != 1)
        reason = fail(CANOPY__V1__REASON__REASON_UNSUPPORTED_VERSION, why, CN_LIMIT_NONE,
                      "protocol_version %u is not supported (this collector speaks 1)", req->protocol_version);
    else if (!req->agent || !req->agent->service || !req->agent->service[0] || !req->agent->instance ||
             !req->agent->instance[0])
        reason = fail(CANOPY__V1__REASON__REASON_INVALID, why, CN_LIMIT_NONE,
                      "request has no agent identity (service and instance are required)");
    else if (req->body_case == CANOPY__V1__REQUEST__BODY__NOT_SET)
        reason = fail(CANOPY__V1__REASON__REASON_INVALID, why, CN_LIMIT_NONE, "request has no body");
    else if (req->body_case == CANOPY__V1__REQUEST__BODY_BATCH)
        reason = validate_batch(req->batch, limits, why, longest_string);
    if (reason != CANOPY__V1__REASON__REASON_OK) {
        cn_arena_free(arena);
        return reason;
    }
    if (req->body_case == CANOPY__V1__REQUEST__BODY_BATCH) {
        cn_batch *b = cn_batch_wrap(arena, req->agent, req->batch, cn_now_ms());
        if (!b) {
            cn_arena_free(arena);
            return fail(CANOPY__V1__REASON__REASON_OVERLOADED, why, CN_LIMIT_NONE, "out of memory");
        }
        b->wire_bytes = len;
        *out_batch = b;
    }
    *out_req = req;
    *out_arena = arena;
    return CANOPY__V1__REASON__REASON_OK;
}

/* A batch of sb's snapshots, allocated in arena. */
static cn_batch *batch_in(cn_arena *arena, const cn_agent_identity *agent, const Canopy__V1__SnapshotBatch *sb,
                          int64_t received_ms)
{
    cn_batch *b = cn_arena_alloc(arena, sizeof *b);
    if (!b)
        return NULL;
    memset(b, 0, sizeof *b);
    atomic_init(&b->refcount, 1);
    b->agent = agent;
    b->batch_seq = sb->batch_seq;
    b->n_strings = sb->n_strings;
    b->strings = sb->strings;
    /* While the strings are in cache from decoding (canopy/string_key.h says why). */
    if (sb->n_strings) {
        uint64_t *keys = cn_arena_alloc(arena, sb->n_strings * sizeof *keys);
        if (!keys)
            return NULL;
        for (size_t i = 0; i < sb->n_strings; i++)
            keys[i] = cn_string_key(sb->strings[i], strlen(sb->strings[i]));
        b->string_keys = keys;
    }
    b->n_snapshots = sb->n_snapshots;
    b->snapshots = sb->snapshots;
    b->received_ms = received_ms;
    return b;
}

cn_batch *cn_batch_wrap(cn_arena *arena, const cn_agent_identity *agent, const Canopy__V1__SnapshotBatch *sb,
                        int64_t received_ms)
{
    cn_batch *b = batch_in(arena, agent, sb, received_ms);
    if (!b)
        return NULL;
    b->mem_bytes = cn_arena_bytes(arena);
    atomic_fetch_add_explicit(&live_batch_bytes, (int64_t)b->mem_bytes, memory_order_relaxed);
    b->arena = arena;
    return b;
}

cn_batch *cn_batch_part(cn_batch *owner, const cn_agent_identity *agent, const Canopy__V1__SnapshotBatch *sb,
                        int64_t received_ms)
{
    cn_batch *b = batch_in(owner->arena, agent, sb, received_ms);
    if (!b)
        return NULL;
    b->replayed = owner->replayed;
    b->owner = cn_batch_ref(owner);
    return b;
}

void cn_batch_unref(cn_batch *b)
{
    if (!b)
        return;
    if (atomic_fetch_sub_explicit(&b->refcount, 1, memory_order_acq_rel) == 1) {
        int64_t left = atomic_fetch_sub(&live_batch_bytes, (int64_t)b->mem_bytes) - (int64_t)b->mem_bytes;
        if (left <= atomic_load(&wake_at_or_below)) {
            pthread_mutex_lock(&live_wait_lock);
            pthread_cond_broadcast(&live_wait_cond);
            pthread_mutex_unlock(&live_wait_lock);
        }
        if (b->on_release)
            b->on_release(b->release_arg, b->release_token);
        if (b->owner)
            cn_batch_unref(b->owner); /* this batch lives in its owner's arena */
        else
            cn_arena_free(b->arena); /* the batch itself lives in its arena */
    }
}

int64_t cn_batch_live_bytes(void) { return atomic_load_explicit(&live_batch_bytes, memory_order_relaxed); }

static void live_wait_init(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* a wall clock step must not stretch the wait */
    pthread_cond_init(&live_wait_cond, &attr);
    pthread_condattr_destroy(&attr);
}

bool cn_batch_wait_live_bytes(int64_t bytes, int64_t timeout_ms)
{
    pthread_once(&live_wait_once, live_wait_init);
    struct timespec deadline = cn_deadline_after(CLOCK_MONOTONIC, timeout_ms);
    pthread_mutex_lock(&live_wait_lock);
    live_waiters++;
    if (bytes > atomic_load(&wake_at_or_below))
        atomic_store(&wake_at_or_below, bytes);
    bool reached;
    int timed_out = 0; /* the only error a valid deadline can give */
    while (!(reached = atomic_load(&live_batch_bytes) <= bytes) && !timed_out)
        timed_out = pthread_cond_timedwait(&live_wait_cond, &live_wait_lock, &deadline);
    /* A level left above what the remaining waiters need only costs them a spurious wake-up. */
    if (--live_waiters == 0)
        atomic_store(&wake_at_or_below, -1);
    pthread_mutex_unlock(&live_wait_lock);
    return reached;
}

static atomic_uint_fast64_t next_chunk_id = 1;

cn_chunk *cn_chunk_new(const char *task_id, size_t cap, size_t batch_cap)
{
    cn_chunk *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    atomic_init(&c->refcount, 1);
    c->id = atomic_fetch_add_explicit(&next_chunk_id, 1, memory_order_relaxed);
    if (task_id && !(c->task_id = strdup(task_id)))
        goto oom;
    if (cap && !(c->refs = malloc(cap * sizeof *c->refs)))
        goto oom;
    if (batch_cap && !(c->batches = malloc(batch_cap * sizeof *c->batches)))
        goto oom;
    return c;
oom:
    free(c->task_id);
    free(c->refs);
    free(c);
    return NULL;
}

cn_chunk *cn_chunk_from_batch(cn_batch *b)
{
    cn_chunk *c = cn_chunk_new(NULL, b->n_snapshots, 1);
    if (!c)
        return NULL;
    for (size_t i = 0; i < b->n_snapshots; i++)
        c->refs[i] = (cn_snap_ref){b, b->snapshots[i]};
    c->n = b->n_snapshots;
    c->batches[0] = cn_batch_ref(b);
    c->n_batches = 1;
    return c;
}

cn_chunk *cn_chunk_without_replayed(const cn_chunk *in)
{
    cn_chunk *c = cn_chunk_new(in->task_id, in->n, in->n_batches);
    if (!c)
        return NULL;
    c->task_final = in->task_final;
    for (size_t i = 0; i < in->n; i++)
        if (!in->refs[i].batch->replayed)
            c->refs[c->n++] = in->refs[i];
    for (size_t i = 0; i < in->n_batches; i++)
        if (!in->batches[i]->replayed)
            c->batches[c->n_batches++] = cn_batch_ref(in->batches[i]);
    return c;
}

void cn_chunk_unref(cn_chunk *c)
{
    if (!c)
        return;
    if (atomic_fetch_sub_explicit(&c->refcount, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < c->n_batches; i++)
        cn_batch_unref(c->batches[i]);
    free(c->batches);
    free(c->refs);
    free(c->task_id);
    free(c);
}
