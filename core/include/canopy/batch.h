/*
 * The data model. A cn_batch is one decoded SnapshotBatch from one agent. It
 * is decoded into its own arena (protobuf-c with an arena allocator), so a
 * batch is one allocation chain freed at once, and every string stays where
 * it was decoded: stages pass references, never copies.
 *
 * A cn_chunk is what flows between stages: a list of references to snapshots
 * in batches, holding one reference on every batch it points into. A chunk is
 * immutable once emitted and shared (refcounted) by every exporter it fans
 * out to.
 */
#ifndef CANOPY_BATCH_H
#define CANOPY_BATCH_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "canopy/v1/canopy.pb-c.h"

typedef Canopy__V1__Snapshot cn_snapshot;
typedef Canopy__V1__AgentIdentity cn_agent_identity;

typedef struct cn_arena cn_arena;

typedef struct cn_batch {
    atomic_uint refcount;
    const cn_agent_identity *agent;  /* never NULL after decode */
    uint64_t batch_seq;
    size_t n_strings;
    char **strings;                  /* NUL-terminated, validated for length */
    const uint64_t *string_keys;     /* cn_string_key of each string, made with the batch */
    size_t n_snapshots;
    cn_snapshot **snapshots;         /* indices validated against n_strings */
    int64_t received_ms;             /* collector wall clock at receipt */
    size_t wire_bytes;               /* size of what the receiver got, for metrics; 0 when unknown */
    size_t mem_bytes;                /* arena bytes held, for memory accounting */
    /* Replayed from the intake log after a restart: only durable exporters get it. */
    bool replayed;
    /* Called once when the last reference goes (a spool marks its record done). */
    void (*on_release)(void *arg, uint64_t token);
    void *release_arg;
    uint64_t release_token;
    /* private */
    cn_arena *arena;
    struct cn_batch *owner; /* set when this batch lives in another's arena (cn_batch_part) */
} cn_batch;

/* Limits checked by cn_batch_decode; 0 means "no limit". */
typedef struct cn_batch_limits {
    int64_t max_snapshots;      /* per batch */
    int64_t max_strings;        /* per batch string table */
    int64_t max_string_length;  /* bytes */
    int64_t max_frames;         /* per snapshot */
} cn_batch_limits;

/* Which limit a LIMIT_EXCEEDED refusal hit, so callers can count it without reading the text. */
typedef enum cn_batch_limit {
    CN_LIMIT_NONE = 0,
    CN_LIMIT_SNAPSHOTS,
    CN_LIMIT_STRINGS,
    CN_LIMIT_STRING_LENGTH,
    CN_LIMIT_FRAMES,
} cn_batch_limit;

/* Why a request was refused: the limit hit (if any) and a human-readable detail. */
typedef struct cn_refusal {
    cn_batch_limit limit;
    char detail[256];
} cn_refusal;

/*
 * Decodes a Request. On success *out_req is the decoded request (owned by
 * *out_arena); when it carries a batch, *out_batch is a new batch holding one
 * reference that owns the arena. On failure returns a Canopy__V1__Reason other
 * than OK and fills *why.
 */
Canopy__V1__Reason cn_request_decode(const uint8_t *data, size_t len, const cn_batch_limits *limits,
                                     Canopy__V1__Request **out_req, cn_arena **out_arena,
                                     cn_batch **out_batch, cn_refusal *why);
/*
 * Makes a batch of a decoded SnapshotBatch whose memory is all in `arena`;
 * the batch takes the arena (freed with the last reference). NULL when out of
 * memory (the arena is then still the caller's). For receivers that decode
 * their own wire format into the core's form.
 */
cn_batch *cn_batch_wrap(cn_arena *arena, const cn_agent_identity *agent, const Canopy__V1__SnapshotBatch *sb,
                        int64_t received_ms);
/* A batch living in owner's arena (one record holding several batches); it holds a reference on owner. */
cn_batch *cn_batch_part(cn_batch *owner, const cn_agent_identity *agent, const Canopy__V1__SnapshotBatch *sb,
                        int64_t received_ms);
/*
 * A batch built snapshot by snapshot, for receivers whose wire format is not
 * canopy.v1 (the SkyWalking receiver, files): the same core form as a decoded
 * batch. Strings are interned into the batch's table once each.
 */
typedef struct cn_batch_builder cn_batch_builder;
cn_batch_builder *cn_batch_builder_new(const char *service, const char *instance);
/* The index of s in the batch's string table, added when new. 0, or -1 when out of memory. */
int cn_batch_builder_string(cn_batch_builder *b, const char *s, uint32_t *idx);
/* Adds a snapshot whose task, segment and frames (root first) are string indices.
 * 0, or -1 when out of memory or an index is out of range. */
int cn_batch_builder_add(cn_batch_builder *b, uint32_t task, uint32_t segment, int32_t sequence, int64_t time_ms,
                         const uint32_t *frames, size_t n_frames);
size_t cn_batch_builder_count(const cn_batch_builder *b);
/* The batch (one reference); the builder is freed either way. NULL when out of memory. */
cn_batch *cn_batch_builder_finish(cn_batch_builder *b, uint64_t batch_seq);
void cn_batch_builder_free(cn_batch_builder *b);

/* Validates a decoded batch against the limits and its own string table. */
Canopy__V1__Reason cn_batch_validate(const Canopy__V1__SnapshotBatch *b, const cn_batch_limits *limits,
                                     cn_refusal *why);

cn_arena *cn_arena_new(size_t first_block);
void *cn_arena_alloc(cn_arena *a, size_t size);
/*
 * Makes the next `size` bytes of allocations (each counted rounded up to
 * max_align_t) fit the current block, adding a block of exactly that size when
 * they do not: a caller that has counted what it needs gets one allocation
 * without slack. 0, or -1 when out of memory.
 */
int cn_arena_reserve(cn_arena *a, size_t size);
size_t cn_arena_bytes(const cn_arena *a);
void cn_arena_free(cn_arena *a);

static inline cn_batch *cn_batch_ref(cn_batch *b)
{
    atomic_fetch_add_explicit(&b->refcount, 1, memory_order_relaxed);
    return b;
}
void cn_batch_unref(cn_batch *b);
/* Bytes held by all decoded batches still alive (queued, buffered, exporting). */
int64_t cn_batch_live_bytes(void);
/*
 * Blocks until the live bytes are at most `bytes` or timeout_ms has passed;
 * true when they are. The batch free that brings them there wakes the waiter.
 */
bool cn_batch_wait_live_bytes(int64_t bytes, int64_t timeout_ms);

static inline const char *cn_batch_str(const cn_batch *b, uint32_t idx) { return b->strings[idx]; }

/* ---- chunks --------------------------------------------------------------- */

typedef struct cn_snap_ref {
    cn_batch *batch;
    const cn_snapshot *snap;
} cn_snap_ref;

typedef struct cn_chunk {
    atomic_uint refcount;
    /* Unique per process; lets an exporter recognise a retried chunk. */
    uint64_t id;
    /* Set when every snapshot belongs to this one task (merge_by_task output). */
    char *task_id;
    /* True on the last chunk of a task: the task ended; it may hold no snapshots. */
    bool task_final;
    /* Ordered by (segment, sequence) within each segment when from merge_by_task. */
    size_t n;
    cn_snap_ref *refs;
    /* One reference on each batch the refs point into. */
    size_t n_batches;
    cn_batch **batches;
} cn_chunk;

/* A chunk of every snapshot in one batch, in batch order. Takes a new batch ref. */
cn_chunk *cn_chunk_from_batch(cn_batch *b);
/*
 * An empty chunk with room for `cap` refs and `batch_cap` batches; fill refs and
 * batches (with references taken) yourself. task_id is copied when not NULL.
 */
cn_chunk *cn_chunk_new(const char *task_id, size_t cap, size_t batch_cap);
/* A copy of `in` without the snapshots of replayed batches (new batch references). */
cn_chunk *cn_chunk_without_replayed(const cn_chunk *in);
static inline cn_chunk *cn_chunk_ref(cn_chunk *c)
{
    atomic_fetch_add_explicit(&c->refcount, 1, memory_order_relaxed);
    return c;
}
void cn_chunk_unref(cn_chunk *c);

static inline const char *cn_ref_task(const cn_snap_ref *r) { return r->batch->strings[r->snap->task]; }
static inline const char *cn_ref_segment(const cn_snap_ref *r) { return r->batch->strings[r->snap->segment]; }
static inline const char *cn_ref_frame(const cn_snap_ref *r, size_t i)
{
    return r->batch->strings[r->snap->frames[i]];
}
/* The frame's cn_string_key (canopy/string_key.h). */
static inline uint64_t cn_ref_frame_key(const cn_snap_ref *r, size_t i)
{
    return r->batch->string_keys[r->snap->frames[i]];
}
/* The segment id's key: its cn_dict hash too (canopy/dict.h). */
static inline uint64_t cn_ref_segment_key(const cn_snap_ref *r) { return r->batch->string_keys[r->snap->segment]; }

#endif
