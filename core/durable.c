/*
 * Encoding and decoding of the core's on-disk forms (durable.h). Encoding
 * builds protobuf-c messages in a scratch arena that point into the batches
 * (strings are not copied) and packs them once; decoding unpacks into one
 * arena per record, which the record's batches then live in.
 */
#include <stdlib.h>
#include <string.h>

#include "canopy/common.h"
#include "canopy/v1/durable.pb-c.h"
#include "durable.h"

#define UNUSED_STRING UINT32_MAX

static void *arena_pb_alloc(void *data, size_t size) { return cn_arena_alloc(data, size); }
static void arena_pb_free(void *data, void *ptr)
{
    CN_UNUSED(data);
    CN_UNUSED(ptr); /* freed with the arena */
}

static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *out = malloc(*len ? *len : 1);
    if (out)
        protobuf_c_message_pack(m, out);
    return out;
}

/* ---- batches ------------------------------------------------------------------ */

uint8_t *cn_durable_encode_batch(const cn_batch *b, size_t *len)
{
    Canopy__V1__SnapshotBatch sb = CANOPY__V1__SNAPSHOT_BATCH__INIT;
    sb.batch_seq = b->batch_seq;
    sb.n_strings = b->n_strings;
    sb.strings = b->strings;
    sb.n_snapshots = b->n_snapshots;
    sb.snapshots = b->snapshots;
    Canopy__V1__DurableBatch db = CANOPY__V1__DURABLE_BATCH__INIT;
    db.agent = (cn_agent_identity *)b->agent;
    db.batch = &sb;
    db.received_ms = b->received_ms;
    return pack(&db.base, len);
}

/* Validates what a record holds: written by us behind a CRC, but a damaged or
 * foreign file must not make a later stage index out of bounds. */
static bool part_valid(const Canopy__V1__DurableBatch *p)
{
    static const cn_batch_limits no_limits = {0};
    return p && p->agent && p->agent->service && p->agent->instance && p->batch &&
           cn_batch_validate(p->batch, &no_limits, NULL) == CANOPY__V1__REASON__REASON_OK;
}

cn_batch *cn_durable_decode_batch(const void *data, size_t len, const char **why)
{
    cn_arena *arena = cn_arena_new(len * 4 + 4096);
    if (!arena) {
        *why = "out of memory";
        return NULL;
    }
    ProtobufCAllocator alloc = {arena_pb_alloc, arena_pb_free, arena};
    Canopy__V1__DurableBatch *db = canopy__v1__durable_batch__unpack(&alloc, len, data);
    if (!part_valid(db)) {
        cn_arena_free(arena);
        *why = "not a valid canopy.v1.DurableBatch";
        return NULL;
    }
    cn_batch *b = cn_batch_wrap(arena, db->agent, db->batch, db->received_ms);
    if (!b) {
        cn_arena_free(arena);
        *why = "out of memory";
    }
    return b;
}

/* ---- chunks ------------------------------------------------------------------- */

/* One source batch of a chunk being encoded. */
typedef struct part_build {
    const cn_batch *src;
    uint32_t *remap; /* src string index -> the part's, UNUSED_STRING when not used yet */
    Canopy__V1__SnapshotBatch sb;
    Canopy__V1__DurableBatch db;
} part_build;

/* Finds (or adds) the part of batch b: an open-addressing table of size mask+1. */
static long part_index(part_build *parts, size_t *n_parts, long *table, size_t mask, const cn_batch *b)
{
    size_t i = (size_t)(((uintptr_t)b >> 4) * 0x9E3779B97F4A7C15ULL >> 32) & mask;
    while (table[i] >= 0) {
        if (parts[table[i]].src == b)
            return table[i];
        i = (i + 1) & mask;
    }
    table[i] = (long)*n_parts;
    parts[*n_parts].src = b;
    return (long)(*n_parts)++;
}

uint8_t *cn_durable_encode_chunk(const cn_chunk *c, size_t *len)
{
    uint8_t *out = NULL;
    cn_arena *scratch = cn_arena_new(4096 + c->n * 64);
    if (!scratch)
        return NULL;
    size_t cap = 16;
    while (cap < c->n_batches * 2 + 2)
        cap *= 2;
    size_t n_parts = 0;
    part_build *parts = cn_arena_alloc(scratch, (c->n_batches + 1) * sizeof *parts);
    long *table = cn_arena_alloc(scratch, cap * sizeof *table);
    uint32_t *order = cn_arena_alloc(scratch, (c->n ? c->n : 1) * sizeof *order);
    size_t *counts = cn_arena_alloc(scratch, (c->n_batches + 1) * sizeof *counts);
    if (!parts || !table || !order || !counts)
        goto done;
    memset(parts, 0, (c->n_batches + 1) * sizeof *parts);
    memset(counts, 0, (c->n_batches + 1) * sizeof *counts);
    for (size_t i = 0; i < cap; i++)
        table[i] = -1;
    /* Pass 1: which part each snapshot belongs to, and how many each part has. */
    for (size_t i = 0; i < c->n; i++) {
        if (n_parts > c->n_batches)
            goto done; /* a ref into a batch the chunk holds no reference on: a bug upstream */
        long p = part_index(parts, &n_parts, table, cap - 1, c->refs[i].batch);
        order[i] = (uint32_t)p;
        counts[p]++;
    }
    for (size_t p = 0; p < n_parts; p++) {
        part_build *pb = &parts[p];
        const cn_batch *src = pb->src;
        canopy__v1__snapshot_batch__init(&pb->sb);
        canopy__v1__durable_batch__init(&pb->db);
        pb->remap = cn_arena_alloc(scratch, (src->n_strings ? src->n_strings : 1) * sizeof *pb->remap);
        pb->sb.strings = cn_arena_alloc(scratch, (src->n_strings ? src->n_strings : 1) * sizeof *pb->sb.strings);
        pb->sb.snapshots = cn_arena_alloc(scratch, counts[p] * sizeof *pb->sb.snapshots);
        if (!pb->remap || !pb->sb.strings || !pb->sb.snapshots)
            goto done;
        memset(pb->remap, 0xff, src->n_strings * sizeof *pb->remap);
        pb->sb.batch_seq = src->batch_seq;
        pb->db.agent = (cn_agent_identity *)src->agent;
        pb->db.batch = &pb->sb;
        pb->db.received_ms = src->received_ms;
    }
    /* Pass 2: each snapshot with its string indices mapped to its part's table. */
    for (size_t i = 0; i < c->n; i++) {
        part_build *pb = &parts[order[i]];
        const cn_snapshot *in = c->refs[i].snap;
        cn_snapshot *s = cn_arena_alloc(scratch, sizeof *s);
        uint32_t *frames = cn_arena_alloc(scratch, (in->n_frames ? in->n_frames : 1) * sizeof *frames);
        if (!s || !frames)
            goto done;
        canopy__v1__snapshot__init(s);
        uint32_t idx[2] = {in->task, in->segment};
        for (size_t k = 0; k < 2 + in->n_frames; k++) {
            uint32_t from = k < 2 ? idx[k] : in->frames[k - 2];
            if (pb->remap[from] == UNUSED_STRING) {
                pb->remap[from] = (uint32_t)pb->sb.n_strings;
                pb->sb.strings[pb->sb.n_strings++] = pb->src->strings[from];
            }
            if (k < 2)
                idx[k] = pb->remap[from];
            else
                frames[k - 2] = pb->remap[from];
        }
        s->task = idx[0];
        s->segment = idx[1];
        s->time_ms = in->time_ms;
        s->sequence = in->sequence;
        s->n_frames = in->n_frames;
        s->frames = frames;
        pb->sb.snapshots[pb->sb.n_snapshots++] = s;
    }
    Canopy__V1__DurableBatch **part_ptrs = cn_arena_alloc(scratch, (n_parts ? n_parts : 1) * sizeof *part_ptrs);
    if (!part_ptrs)
        goto done;
    for (size_t p = 0; p < n_parts; p++)
        part_ptrs[p] = &parts[p].db;
    Canopy__V1__DurableChunk dc = CANOPY__V1__DURABLE_CHUNK__INIT;
    dc.format = 1;
    dc.task_id = c->task_id ? c->task_id : "";
    dc.task_final = c->task_final;
    dc.n_parts = n_parts;
    dc.parts = part_ptrs;
    dc.n_order = c->n;
    dc.order = order;
    out = pack(&dc.base, len);
done:
    cn_arena_free(scratch);
    return out;
}

/* A record of the spool format before this one: an agent's request, spooled as it came. */
static cn_chunk *decode_legacy(const void *data, size_t len, const char **why)
{
    static const cn_batch_limits no_limits = {0};
    Canopy__V1__Request *req;
    cn_arena *arena;
    cn_batch *b = NULL;
    cn_refusal refusal = {0};
    if (cn_request_decode(data, len, &no_limits, &req, &arena, &b, &refusal) != CANOPY__V1__REASON__REASON_OK) {
        *why = "neither a canopy.v1.DurableChunk nor an older spool record";
        return NULL;
    }
    if (!b) {
        cn_arena_free(arena);
        *why = "an older spool record without snapshots";
        return NULL;
    }
    cn_chunk *c = cn_chunk_from_batch(b);
    cn_batch_unref(b);
    if (!c)
        *why = "out of memory";
    return c;
}

cn_chunk *cn_durable_decode_chunk(const void *data, size_t len, const char **why)
{
    cn_arena *arena = cn_arena_new(len * 4 + 4096);
    if (!arena) {
        *why = "out of memory";
        return NULL;
    }
    ProtobufCAllocator alloc = {arena_pb_alloc, arena_pb_free, arena};
    Canopy__V1__DurableChunk *dc = canopy__v1__durable_chunk__unpack(&alloc, len, data);
    if (!dc || dc->format != 1) {
        cn_arena_free(arena);
        return decode_legacy(data, len, why);
    }
    *why = "not a valid canopy.v1.DurableChunk";
    for (size_t p = 0; p < dc->n_parts; p++)
        if (!part_valid(dc->parts[p])) {
            cn_arena_free(arena);
            return NULL;
        }
    /* The record's arena is owned by one carrier batch that every part holds. */
    static const Canopy__V1__SnapshotBatch empty = CANOPY__V1__SNAPSHOT_BATCH__INIT;
    static const cn_agent_identity nobody = CANOPY__V1__AGENT_IDENTITY__INIT;
    cn_batch *carrier = cn_batch_wrap(arena, &nobody, &empty, 0);
    cn_chunk *c = carrier ? cn_chunk_new(dc->task_id[0] ? dc->task_id : NULL, dc->n_order, dc->n_parts) : NULL;
    size_t *next = c ? cn_arena_alloc(arena, (dc->n_parts ? dc->n_parts : 1) * sizeof *next) : NULL;
    if (!next) {
        *why = "out of memory";
        goto fail;
    }
    for (size_t p = 0; p < dc->n_parts; p++) {
        Canopy__V1__DurableBatch *part = dc->parts[p];
        cn_batch *b = cn_batch_part(carrier, part->agent, part->batch, part->received_ms);
        if (!b) {
            *why = "out of memory";
            goto fail;
        }
        c->batches[c->n_batches++] = b;
        next[p] = 0;
    }
    c->task_final = dc->task_final;
    for (size_t i = 0; i < dc->n_order; i++) {
        uint32_t p = dc->order[i];
        if (p >= dc->n_parts || next[p] >= c->batches[p]->n_snapshots)
            goto fail; /* *why: not valid */
        cn_batch *b = c->batches[p];
        c->refs[c->n++] = (cn_snap_ref){b, b->snapshots[next[p]++]};
    }
    cn_batch_unref(carrier); /* the parts hold it now */
    return c;
fail:
    cn_chunk_unref(c);
    if (carrier)
        cn_batch_unref(carrier);
    else
        cn_arena_free(arena);
    return NULL;
}
