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
 *  - an accepted request re-encodes to one that decodes to the same batch;
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

static Canopy__V1__Reason decode_one(const uint8_t *data, size_t size, const cn_batch_limits *lim, bool roundtrip)
{
    Canopy__V1__Request *req = (Canopy__V1__Request *)1;
    cn_arena *arena = (cn_arena *)1;
    cn_batch *b = (cn_batch *)1;
    char detail[256];
    memset(detail, 0, sizeof detail);
    Canopy__V1__Reason r = cn_request_decode(data, size, lim, &req, &arena, &b, detail, sizeof detail);
    FUZZ_CHECK((unsigned)r < N_REASONS);
    if (r != CANOPY__V1__REASON__REASON_OK) {
        FUZZ_CHECK(req == NULL && arena == NULL && b == NULL);
        FUZZ_CHECK(detail[0] != '\0');
        FUZZ_CHECK(memchr(detail, '\0', sizeof detail) != NULL);
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
    FUZZ_CHECK(b != NULL && b->request == req && b->arena == arena);
    FUZZ_CHECK(b->wire_bytes == size && b->mem_bytes > 0);
    check_batch(b, lim);
    if (roundtrip) {
        size_t len = canopy__v1__request__get_packed_size(req);
        uint8_t *buf = malloc(len ? len : 1);
        if (buf) {
            FUZZ_CHECK(canopy__v1__request__pack(req, buf) == len);
            Canopy__V1__Request *req2;
            cn_arena *arena2;
            cn_batch *b2;
            Canopy__V1__Reason r2 = cn_request_decode(buf, len, lim, &req2, &arena2, &b2, detail, sizeof detail);
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
