/*
 * Fuzz target: a request from an agent, as the nng receiver sees it.
 * cn_request_decode + cn_batch_validate under three limit sets (the
 * receiver's defaults, tiny ones that trip every limit, none at all).
 *
 * Invariants beyond "no crash, no leak, no UB":
 *  - a refusal leaves nothing allocated and says why (a non-empty detail);
 *  - an accepted batch really is within its limits and every index it
 *    carries points into its string table (later stages index unchecked);
 *  - limits only ever refuse more: OK under tiny limits implies OK under the
 *    defaults implies OK with none;
 *  - an accepted request re-encodes to one that decodes to the same batch
 *    (when it carries no unknown fields: only protobuf-c keeps those);
 *  - differential: the collector's direct batch decoder (core/decode.c, with
 *    protobuf-c as fallback) agrees with plain protobuf-c on every input:
 *    the same batch when both accept, both refuse malformed bytes; the one
 *    allowed difference is a field number outside 1..2^29-1 (invalid in
 *    protobuf; protobuf-c keeps it as an unknown field, the direct decoder
 *    refuses the request);
 *  - the live-bytes account the memory limiter reads returns to where it was.
 */
#include <string.h>

#include "canopy/batch.h"
#include "canopy/log.h"
#include "fuzz.h"

#define N_REASONS 11

static const cn_batch_limits limit_sets[] = {
    {16384, 65536, 4096, 1024}, /* the nng receiver's defaults */
    {4, 8, 16, 3},              /* tiny: every limit path */
    {0, 0, 0, 0},               /* none: index checks only */
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    cn_log_set_level(CN_LOG_OFF);
    return 0;
}

/* Reads every byte the batch exposes, checking it against the limits. */
static void check_batch(const cn_batch *b, const cn_batch_limits *lim)
{
    FUZZ_CHECK(b->agent && b->agent->service && b->agent->service[0] && b->agent->instance &&
               b->agent->instance[0]);
    FUZZ_CHECK(!lim->max_strings || (int64_t)b->n_strings <= lim->max_strings);
    FUZZ_CHECK(!lim->max_snapshots || (int64_t)b->n_snapshots <= lim->max_snapshots);
    for (size_t i = 0; i < b->n_strings; i++) {
        FUZZ_CHECK(b->strings[i] != NULL);
        FUZZ_CHECK(!lim->max_string_length || (int64_t)strlen(b->strings[i]) <= lim->max_string_length);
    }
    for (size_t i = 0; i < b->n_snapshots; i++) {
        const cn_snapshot *s = b->snapshots[i];
        FUZZ_CHECK(s != NULL);
        FUZZ_CHECK(s->task < b->n_strings && s->segment < b->n_strings);
        FUZZ_CHECK(b->strings[s->task][0] && b->strings[s->segment][0]);
        FUZZ_CHECK(s->sequence >= 0);
        FUZZ_CHECK(!lim->max_frames || (int64_t)s->n_frames <= lim->max_frames);
        for (size_t f = 0; f < s->n_frames; f++)
            FUZZ_CHECK(s->frames[f] < b->n_strings);
    }
    /* The accessors every later stage uses, through a chunk as the pipeline builds it. */
    cn_chunk *c = cn_chunk_from_batch((cn_batch *)b);
    if (c) {
        size_t bytes = 0;
        for (size_t i = 0; i < c->n; i++) {
            bytes += strlen(cn_ref_task(&c->refs[i])) + strlen(cn_ref_segment(&c->refs[i]));
            for (size_t f = 0; f < c->refs[i].snap->n_frames; f++)
                bytes += strlen(cn_ref_frame(&c->refs[i], f));
        }
        (void)bytes;
        cn_chunk_unref(c);
    }
}

static void check_same_batch(const cn_batch *a, const cn_batch *b)
{
    FUZZ_CHECK(a->batch_seq == b->batch_seq);
    FUZZ_CHECK(a->n_strings == b->n_strings && a->n_snapshots == b->n_snapshots);
    FUZZ_CHECK(strcmp(a->agent->service, b->agent->service) == 0);
    FUZZ_CHECK(strcmp(a->agent->instance, b->agent->instance) == 0);
    FUZZ_CHECK(a->agent->session == b->agent->session);
    /* Strings compare as C strings: the wire may carry bytes after a NUL that decode drops. */
    for (size_t i = 0; i < a->n_strings; i++)
        FUZZ_CHECK(strcmp(a->strings[i], b->strings[i]) == 0);
    for (size_t i = 0; i < a->n_snapshots; i++) {
        const cn_snapshot *x = a->snapshots[i], *y = b->snapshots[i];
        FUZZ_CHECK(x->task == y->task && x->segment == y->segment && x->time_ms == y->time_ms &&
                   x->sequence == y->sequence && x->n_frames == y->n_frames);
        FUZZ_CHECK(x->n_frames == 0 || memcmp(x->frames, y->frames, x->n_frames * sizeof *x->frames) == 0);
    }
}

static bool has_unknown(const Canopy__V1__Request *r)
{
    if (r->base.n_unknown_fields || (r->agent && r->agent->base.n_unknown_fields))
        return true;
    if (r->body_case == CANOPY__V1__REQUEST__BODY_BATCH) {
        if (r->batch->base.n_unknown_fields)
            return true;
        for (size_t i = 0; i < r->batch->n_snapshots; i++)
            if (r->batch->snapshots[i]->base.n_unknown_fields)
                return true;
    }
    return false;
}

/* protobuf's wire walk, enough to find field numbers protobuf-c tolerates and the spec does not. */
static bool wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80))
            return true;
    }
    return false;
}

/* kind: 0 Request, 1 SnapshotBatch, 2 anything else (not descended into). */
static bool has_bad_field_number(const uint8_t *p, const uint8_t *end, int kind)
{
    while (p < end) {
        uint64_t key, v;
        if (!wire_varint(&p, end, &key))
            return false;
        uint64_t field = key >> 3;
        if (field == 0 || field > 0x1FFFFFFF)
            return true;
        switch (key & 7) {
        case 0:
            if (!wire_varint(&p, end, &v))
                return false;
            break;
        case 1:
            p += 8;
            break;
        case 5:
            p += 4;
            break;
        case 2:
            if (!wire_varint(&p, end, &v) || v > (uint64_t)(end - p))
                return false;
            if ((kind == 0 && (field == 2 || field == 3)) || (kind == 1 && field == 3)) {
                /* agent and snapshots hold no messages: walk them as leaves that may hold bad numbers */
                if (has_bad_field_number(p, p + v, kind == 0 && field == 3 ? 1 : 2))
                    return true;
            }
            p += v;
            break;
        default:
            return false;
        }
    }
    return false;
}

/* The fields later stages read, compared as they read them (C strings). */
static void check_same_request(const Canopy__V1__Request *a, const Canopy__V1__Request *b)
{
    FUZZ_CHECK(a->protocol_version == b->protocol_version && a->body_case == b->body_case);
    FUZZ_CHECK((a->agent == NULL) == (b->agent == NULL));
    if (a->agent) {
        FUZZ_CHECK(strcmp(a->agent->service, b->agent->service) == 0);
        FUZZ_CHECK(strcmp(a->agent->instance, b->agent->instance) == 0);
        FUZZ_CHECK(a->agent->session == b->agent->session);
    }
    if (a->body_case != CANOPY__V1__REQUEST__BODY_BATCH)
        return;
    const Canopy__V1__SnapshotBatch *x = a->batch, *y = b->batch;
    FUZZ_CHECK(x->batch_seq == y->batch_seq && x->n_strings == y->n_strings && x->n_snapshots == y->n_snapshots);
    for (size_t i = 0; i < x->n_strings; i++)
        FUZZ_CHECK(strcmp(x->strings[i], y->strings[i]) == 0);
    for (size_t i = 0; i < x->n_snapshots; i++) {
        const cn_snapshot *s = x->snapshots[i], *t = y->snapshots[i];
        FUZZ_CHECK(s->task == t->task && s->segment == t->segment && s->time_ms == t->time_ms &&
                   s->sequence == t->sequence && s->n_frames == t->n_frames);
        FUZZ_CHECK(s->n_frames == 0 || memcmp(s->frames, t->frames, s->n_frames * sizeof *s->frames) == 0);
    }
}

/* cn_request_decode without limits against plain protobuf-c. */
static void check_differential(const uint8_t *data, size_t size)
{
    static const cn_batch_limits none = {0, 0, 0, 0};
    Canopy__V1__Request *req;
    cn_arena *arena;
    cn_batch *b;
    cn_refusal why;
    Canopy__V1__Reason r = cn_request_decode(data, size, &none, &req, &arena, &b, &why);
    Canopy__V1__Request *ref = canopy__v1__request__unpack(NULL, size, data);
    if (!ref) {
        if (r != CANOPY__V1__REASON__REASON_MALFORMED)
            fprintf(stderr, "protobuf-c refuses the bytes, cn_request_decode says %d\n", r);
        FUZZ_CHECK(r == CANOPY__V1__REASON__REASON_MALFORMED);
        return;
    }
    if (r == CANOPY__V1__REASON__REASON_MALFORMED) {
        bool bad_number = has_bad_field_number(data, data + size, 0);
        if (!bad_number)
            fprintf(stderr, "cn_request_decode refuses bytes protobuf-c reads (no invalid field number)\n");
        FUZZ_CHECK(bad_number);
    } else if (r == CANOPY__V1__REASON__REASON_OK) {
        check_same_request(req, ref);
    }
    if (r == CANOPY__V1__REASON__REASON_OK) {
        if (b)
            cn_batch_unref(b);
        else
            cn_arena_free(arena);
    }
    canopy__v1__request__free_unpacked(ref, NULL);
}

static Canopy__V1__Reason decode_one(const uint8_t *data, size_t size, const cn_batch_limits *lim, bool roundtrip)
{
    Canopy__V1__Request *req = (Canopy__V1__Request *)1;
    cn_arena *arena = (cn_arena *)1;
    cn_batch *b = (cn_batch *)1;
    cn_refusal why;
    memset(&why, 0, sizeof why);
    Canopy__V1__Reason r = cn_request_decode(data, size, lim, &req, &arena, &b, &why);
    const char *detail = why.detail;
    FUZZ_CHECK((unsigned)r < N_REASONS);
    if (r != CANOPY__V1__REASON__REASON_OK) {
        FUZZ_CHECK(req == NULL && arena == NULL && b == NULL);
        FUZZ_CHECK(detail[0] != '\0');
        FUZZ_CHECK(memchr(detail, '\0', sizeof why.detail) != NULL);
        return r;
    }
    FUZZ_CHECK(req != NULL && arena != NULL);
    FUZZ_CHECK(req->protocol_version == 1);
    if (req->body_case != CANOPY__V1__REQUEST__BODY_BATCH) {
        FUZZ_CHECK(b == NULL);
        FUZZ_CHECK(req->body_case == CANOPY__V1__REQUEST__BODY_COMMAND_QUERY ||
                   req->body_case == CANOPY__V1__REQUEST__BODY_TASK_FINISH);
        if (req->body_case == CANOPY__V1__REQUEST__BODY_TASK_FINISH)
            FUZZ_CHECK(req->task_finish && req->task_finish->task_id);
        cn_arena_free(arena);
        return r;
    }
    FUZZ_CHECK(b != NULL && b->arena == arena);
    FUZZ_CHECK(b->wire_bytes == size && b->mem_bytes > 0);
    check_batch(b, lim);
    if (roundtrip && !has_unknown(req)) {
        size_t len = canopy__v1__request__get_packed_size(req);
        uint8_t *buf = malloc(len ? len : 1);
        if (buf) {
            FUZZ_CHECK(canopy__v1__request__pack(req, buf) == len);
            Canopy__V1__Request *req2;
            cn_arena *arena2;
            cn_batch *b2;
            Canopy__V1__Reason r2 = cn_request_decode(buf, len, lim, &req2, &arena2, &b2, &why);
            if (r2 != CANOPY__V1__REASON__REASON_OK)
                fprintf(stderr, "re-encoded request refused: %s\n", detail);
            FUZZ_CHECK(r2 == CANOPY__V1__REASON__REASON_OK && b2 != NULL);
            check_same_batch(b, b2);
            cn_batch_unref(b2); /* the batch owns its arena */
            free(buf);
        }
    }
    cn_batch_unref(b);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const int64_t live_before = cn_batch_live_bytes();
    check_differential(data, size);
    Canopy__V1__Reason r_default = decode_one(data, size, &limit_sets[0], true);
    Canopy__V1__Reason r_tiny = decode_one(data, size, &limit_sets[1], false);
    Canopy__V1__Reason r_none = decode_one(data, size, &limit_sets[2], false);
    if (r_tiny == CANOPY__V1__REASON__REASON_OK)
        FUZZ_CHECK(r_default == CANOPY__V1__REASON__REASON_OK);
    if (r_default == CANOPY__V1__REASON__REASON_OK)
        FUZZ_CHECK(r_none == CANOPY__V1__REASON__REASON_OK);
    /* Without limits the only refusals left are about the request itself. */
    FUZZ_CHECK(r_none != CANOPY__V1__REASON__REASON_LIMIT_EXCEEDED);
    FUZZ_CHECK(cn_batch_live_bytes() == live_before);
    return 0;
}
