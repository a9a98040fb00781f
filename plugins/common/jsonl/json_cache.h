/*
 * JSON-encoded strings of the batches in one chunk. A chunk's snapshots share
 * a few hundred distinct strings (code signatures above all), so each string
 * is encoded by jansson once per chunk, not once per line.
 */
#ifndef CN_COMMON_JSON_CACHE_H
#define CN_COMMON_JSON_CACHE_H

#include <stddef.h>

#include "canopy/batch.h"

typedef struct json_str {
    const char *text; /* quoted and escaped */
    size_t len;
} json_str;

typedef struct json_cache json_cache;

json_cache *json_cache_new(void);
void json_cache_free(json_cache *c);
/* Prepares for a chunk's batches; forgets the previous chunk's strings. */
int json_cache_begin(json_cache *c, const cn_chunk *chunk);
/* The JSON form of batch->strings[idx]; NULL when out of memory. */
const json_str *json_cache_get(json_cache *c, const cn_batch *batch, uint32_t idx);
/* JSON form of any string (agent identity fields); valid until the next begin. */
const json_str *json_cache_encode(json_cache *c, const char *s);

#endif
