/*
 * One snapshot as a JSON line: the keys taskId, traceSegmentId, time (epoch
 * ms), sequence, stack.codeSignatures (root first), service and
 * serviceInstance, then a newline. The file exporter writes these lines; the
 * kafka exporter sends them as record values with `format: jsonl`.
 */
#ifndef CN_COMMON_JSONL_H
#define CN_COMMON_JSONL_H

#include <stddef.h>

#include "canopy/batch.h"
#include "jsonl/json_cache.h"

/* A growing byte buffer; zero-initialise, free data with free(). */
typedef struct cn_jsonl_buf {
    char *data;
    size_t len, cap;
} cn_jsonl_buf;

/*
 * Appends r's line to out, with strings from jc (json_cache_begin'd on r's
 * chunk). Deterministic: the same snapshot gives the same bytes, which lets a
 * retried write skip what it already wrote. Returns 0, or -1 when out of
 * memory (out may then hold part of the line).
 */
int cn_jsonl_line(json_cache *jc, const cn_snap_ref *r, cn_jsonl_buf *out);

#endif
