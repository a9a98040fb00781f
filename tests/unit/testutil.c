#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

cn_service *test_service(const char *yaml, cn_diag *d)
{
    cn_document *doc = cn_document_parse("test.yaml", yaml, strlen(yaml), d);
    return doc ? cn_service_build(doc, d) : NULL;
}

int diag_has(const cn_diag *d, const char *needle)
{
    for (size_t i = 0; i < d->n_errors; i++)
        if (d->errors[i] && strstr(d->errors[i], needle))
            return 1;
    return 0;
}

void diag_print(const cn_diag *d)
{
    for (size_t i = 0; i < d->n_errors; i++)
        fprintf(stderr, "  diag: %s\n", d->errors[i]);
}

static uint32_t intern(char **table, size_t *n, const char *s)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(table[i], s) == 0)
            return (uint32_t)i;
    table[*n] = (char *)s;
    return (uint32_t)(*n)++;
}

size_t test_pack_batch(Canopy__V1__SnapshotBatch *batch, const char *instance, uint8_t **out)
{
    Canopy__V1__AgentIdentity agent = CANOPY__V1__AGENT_IDENTITY__INIT;
    agent.service = "shop";
    agent.instance = (char *)instance;
    agent.host = "test-host";
    agent.pid = 42;
    agent.session = 7;
    Canopy__V1__Request req = CANOPY__V1__REQUEST__INIT;
    req.protocol_version = 1;
    req.agent = &agent;
    req.body_case = CANOPY__V1__REQUEST__BODY_BATCH;
    req.batch = batch;
    size_t len = canopy__v1__request__get_packed_size(&req);
    *out = malloc(len ? len : 1);
    assert_non_null(*out);
    canopy__v1__request__pack(&req, *out);
    return len;
}

size_t test_encode_batch(const char *instance, uint64_t batch_seq, const test_snap *snaps, size_t n, uint8_t **out)
{
    /* At most a task, a segment and 8 frames per snapshot. */
    char **strings = calloc(n * 10 + 1, sizeof *strings);
    assert_non_null(strings);
    size_t n_strings = 0;
    Canopy__V1__Snapshot *snap_structs = calloc(n ? n : 1, sizeof *snap_structs);
    Canopy__V1__Snapshot **snap_ptrs = calloc(n ? n : 1, sizeof *snap_ptrs);
    uint32_t *frames = calloc(n * 8 + 1, sizeof *frames);
    assert_non_null(snap_structs);
    assert_non_null(snap_ptrs);
    assert_non_null(frames);
    for (size_t i = 0; i < n; i++) {
        Canopy__V1__Snapshot *s = &snap_structs[i];
        canopy__v1__snapshot__init(s);
        s->task = intern(strings, &n_strings, snaps[i].task);
        s->segment = intern(strings, &n_strings, snaps[i].segment);
        s->time_ms = snaps[i].time_ms;
        s->sequence = snaps[i].sequence;
        s->frames = &frames[i * 8];
        for (size_t f = 0; f < 8 && snaps[i].frames[f]; f++)
            s->frames[s->n_frames++] = intern(strings, &n_strings, snaps[i].frames[f]);
        snap_ptrs[i] = s;
    }
    Canopy__V1__SnapshotBatch batch = CANOPY__V1__SNAPSHOT_BATCH__INIT;
    batch.batch_seq = batch_seq;
    batch.n_strings = n_strings;
    batch.strings = strings;
    batch.n_snapshots = n;
    batch.snapshots = snap_ptrs;
    size_t len = test_pack_batch(&batch, instance, out);
    free(strings);
    free(snap_structs);
    free(snap_ptrs);
    free(frames);
    return len;
}

cn_batch *test_decode_batch(const uint8_t *data, size_t len)
{
    Canopy__V1__Request *req;
    cn_arena *arena;
    cn_batch *b;
    cn_refusal why = {0};
    cn_batch_limits lim = {0};
    Canopy__V1__Reason r = cn_request_decode(data, len, &lim, &req, &arena, &b, &why);
    if (r != CANOPY__V1__REASON__REASON_OK)
        fprintf(stderr, "decode failed: %s\n", why.detail);
    assert_int_equal(r, CANOPY__V1__REASON__REASON_OK);
    assert_non_null(b);
    return b;
}
