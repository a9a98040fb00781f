/* The JSON line of a snapshot, shared by the file and kafka exporters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonl/jsonl.h"

static int append(cn_jsonl_buf *b, const char *s, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64 * 1024;
        while (b->len + n > cap)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown)
            return -1;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

#define ADD_LIT(lit) append(out, lit, sizeof(lit) - 1)
#define ADD_JSON(js) ((js) ? append(out, (js)->text, (js)->len) : -1)

int cn_jsonl_line(json_cache *jc, const cn_snap_ref *r, cn_jsonl_buf *out)
{
    const cn_batch *b = r->batch;
    const cn_snapshot *s = r->snap;
    char num[64];
    int rc = ADD_LIT("{\"taskId\":");
    rc |= ADD_JSON(json_cache_get(jc, b, s->task));
    rc |= ADD_LIT(",\"traceSegmentId\":");
    rc |= ADD_JSON(json_cache_get(jc, b, s->segment));
    int n = snprintf(num, sizeof num, ",\"time\":%lld,\"sequence\":%d", (long long)s->time_ms, s->sequence);
    rc |= append(out, num, (size_t)n);
    rc |= ADD_LIT(",\"stack\":{\"codeSignatures\":[");
    for (size_t i = 0; i < s->n_frames; i++) {
        if (i)
            rc |= ADD_LIT(",");
        rc |= ADD_JSON(json_cache_get(jc, b, s->frames[i]));
    }
    rc |= ADD_LIT("]},\"service\":");
    rc |= ADD_JSON(json_cache_encode(jc, b->agent->service));
    rc |= ADD_LIT(",\"serviceInstance\":");
    rc |= ADD_JSON(json_cache_encode(jc, b->agent->instance));
    rc |= ADD_LIT("}\n");
    return rc ? -1 : 0;
}
