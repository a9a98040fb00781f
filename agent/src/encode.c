/*
 * Encoding canopy.v1.Request messages. The builder's arrays are pointed at,
 * not copied: protobuf-c only needs the message structs around them.
 */
#include <stdlib.h>

#include "builder_internal.h"

static void identity_fill(Canopy__V1__AgentIdentity *m, const cn_identity *id)
{
    /* protobuf-c wants non-NULL strings; the casts drop const because the
     * generated structs are shared with decoding, nothing is written. */
    m->service = (char *)(id->service ? id->service : "");
    m->instance = (char *)(id->instance ? id->instance : "");
    m->host = (char *)(id->host ? id->host : "");
    m->pid = id->pid;
    m->agent_version = (char *)(id->agent_version ? id->agent_version : CN_AGENT_VERSION);
    m->session = id->session;
    m->mode = (char *)(id->mode ? id->mode : "");
}

static int pack(const Canopy__V1__Request *req, uint8_t **out, size_t *out_len)
{
    size_t n = canopy__v1__request__get_packed_size(req);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return -CN_ENOMEM;
    size_t w = canopy__v1__request__pack(req, buf);
    *out = buf;
    *out_len = w;
    return 0;
}

int cn_builder_encode(const cn_builder *b, const cn_identity *id, uint64_t batch_seq,
                      uint8_t **out, size_t *out_len)
{
    if (!b || !id || !out || !out_len)
        return -CN_EINVAL;
    char **strings = malloc((b->n_strs ? b->n_strs : 1) * sizeof(*strings));
    Canopy__V1__Snapshot *snaps = malloc((b->n_snaps ? b->n_snaps : 1) * sizeof(*snaps));
    Canopy__V1__Snapshot **ptrs = malloc((b->n_snaps ? b->n_snaps : 1) * sizeof(*ptrs));
    int rv = -CN_ENOMEM;
    if (!strings || !snaps || !ptrs)
        goto out;
    for (uint32_t i = 0; i < b->n_strs; i++)
        strings[i] = b->arena + b->strs[i].off;
    for (size_t i = 0; i < b->n_snaps; i++) {
        const cn_ag_snap *s = &b->snaps[i];
        canopy__v1__snapshot__init(&snaps[i]);
        snaps[i].task = s->task;
        snaps[i].segment = s->segment;
        snaps[i].time_ms = s->time_ms;
        snaps[i].sequence = s->sequence;
        snaps[i].n_frames = s->n_frames;
        snaps[i].frames = b->frames + s->frame_off;
        ptrs[i] = &snaps[i];
    }
    Canopy__V1__AgentIdentity ident = CANOPY__V1__AGENT_IDENTITY__INIT;
    identity_fill(&ident, id);
    Canopy__V1__SnapshotBatch batch = CANOPY__V1__SNAPSHOT_BATCH__INIT;
    batch.batch_seq = batch_seq;
    batch.n_strings = b->n_strs;
    batch.strings = strings;
    batch.n_snapshots = b->n_snaps;
    batch.snapshots = ptrs;
    Canopy__V1__Request req = CANOPY__V1__REQUEST__INIT;
    req.protocol_version = CN_PROTOCOL_VERSION;
    req.agent = &ident;
    req.body_case = CANOPY__V1__REQUEST__BODY_BATCH;
    req.batch = &batch;
    rv = pack(&req, out, out_len);
out:
    free(strings);
    free(snaps);
    free(ptrs);
    return rv;
}

int cn_encode_command_query(const cn_identity *id, int64_t last_command_time, uint8_t **out,
                            size_t *out_len)
{
    if (!id || !out || !out_len)
        return -CN_EINVAL;
    Canopy__V1__AgentIdentity ident = CANOPY__V1__AGENT_IDENTITY__INIT;
    identity_fill(&ident, id);
    Canopy__V1__CommandQuery q = CANOPY__V1__COMMAND_QUERY__INIT;
    q.last_command_time = last_command_time;
    Canopy__V1__Request req = CANOPY__V1__REQUEST__INIT;
    req.protocol_version = CN_PROTOCOL_VERSION;
    req.agent = &ident;
    req.body_case = CANOPY__V1__REQUEST__BODY_COMMAND_QUERY;
    req.command_query = &q;
    return pack(&req, out, out_len);
}

int cn_encode_task_finish(const cn_identity *id, const char *task_id, uint8_t **out,
                          size_t *out_len)
{
    if (!id || !task_id || !out || !out_len)
        return -CN_EINVAL;
    Canopy__V1__AgentIdentity ident = CANOPY__V1__AGENT_IDENTITY__INIT;
    identity_fill(&ident, id);
    Canopy__V1__TaskFinishReport f = CANOPY__V1__TASK_FINISH_REPORT__INIT;
    f.task_id = (char *)task_id;
    Canopy__V1__Request req = CANOPY__V1__REQUEST__INIT;
    req.protocol_version = CN_PROTOCOL_VERSION;
    req.agent = &ident;
    req.body_case = CANOPY__V1__REQUEST__BODY_TASK_FINISH;
    req.task_finish = &f;
    return pack(&req, out, out_len);
}
