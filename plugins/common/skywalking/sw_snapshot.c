/* ThreadSnapshot encoding shared by the SkyWalking-speaking exporters. */
#include <stdlib.h>

#include "skywalking/sw_snapshot.h"

size_t cn_sw_snapshot_prepare(cn_sw_snapshot_encoder *e, const cn_snap_ref *r)
{
    const cn_snapshot *s = r->snap;
    if (s->n_frames > e->cap) {
        size_t cap = e->cap ? e->cap : 64;
        while (cap < s->n_frames)
            cap *= 2;
        char **grown = realloc(e->signatures, cap * sizeof *grown);
        if (!grown)
            return 0;
        e->signatures = grown;
        e->cap = cap;
    }
    /* protobuf-c wants char *; the strings are only read while packing. */
    for (size_t i = 0; i < s->n_frames; i++)
        e->signatures[i] = (char *)cn_ref_frame(r, i);
    skywalking__v3__thread_stack__init(&e->stack);
    e->stack.n_codesignatures = s->n_frames;
    e->stack.codesignatures = e->signatures;
    skywalking__v3__thread_snapshot__init(&e->msg);
    e->msg.taskid = (char *)cn_ref_task(r);
    e->msg.tracesegmentid = (char *)cn_ref_segment(r);
    e->msg.time = s->time_ms;
    e->msg.sequence = s->sequence;
    e->msg.stack = &e->stack;
    return skywalking__v3__thread_snapshot__get_packed_size(&e->msg);
}

void cn_sw_snapshot_pack(const cn_sw_snapshot_encoder *e, uint8_t *out)
{
    skywalking__v3__thread_snapshot__pack(&e->msg, out);
}

void cn_sw_snapshot_encoder_free(cn_sw_snapshot_encoder *e)
{
    free(e->signatures);
    e->signatures = NULL;
    e->cap = 0;
}
