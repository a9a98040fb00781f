#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/dict.h"
#include "jsonl/json_cache.h"

typedef struct batch_slot {
    const cn_batch *batch;
    json_str **strings; /* n_strings entries, filled lazily */
} batch_slot;

struct json_cache {
    cn_arena *arena;  /* per-chunk lookup arrays */
    batch_slot *slots; /* open addressing by batch pointer */
    size_t cap;
    /* Encoded strings by content, across chunks: code signatures repeat in every
     * batch, so each is encoded once, not once per batch per chunk. */
    cn_dict *encoded;
    size_t encoded_bytes;
};

/* Bound on the memory of encoded strings kept between chunks. */
#define ENCODED_MAX_BYTES (8u << 20)

json_cache *json_cache_new(void) { return calloc(1, sizeof(json_cache)); }

void json_cache_free(json_cache *c)
{
    if (!c)
        return;
    cn_dict_free(c->encoded, free);
    cn_arena_free(c->arena);
    free(c->slots);
    free(c);
}

int json_cache_begin(json_cache *c, const cn_chunk *chunk)
{
    /* Between chunks nothing points into the encoded strings: a full cache starts over. */
    if (c->encoded && c->encoded_bytes > ENCODED_MAX_BYTES) {
        cn_dict_free(c->encoded, free);
        c->encoded = NULL;
        c->encoded_bytes = 0;
    }
    if (!c->encoded && !(c->encoded = cn_dict_new(4096)))
        return -1;
    cn_arena_free(c->arena);
    c->arena = cn_arena_new(64 * 1024);
    size_t want = 16;
    while (want < chunk->n_batches * 2 + 2)
        want *= 2;
    if (want > c->cap) {
        free(c->slots);
        c->slots = malloc(want * sizeof *c->slots);
        c->cap = c->slots ? want : 0;
    }
    if (!c->arena || !c->slots)
        return -1;
    memset(c->slots, 0, c->cap * sizeof *c->slots);
    return 0;
}

static json_str *encode(json_cache *c, const char *s)
{
    json_str *out = cn_dict_get(c->encoded, s);
    if (out)
        return out;
    /* nocheck: agents' strings are not guaranteed UTF-8; jansson escapes what it must. */
    json_t *j = json_stringn_nocheck(s, strlen(s));
    if (!j)
        return NULL;
    size_t need = json_dumpb(j, NULL, 0, JSON_ENCODE_ANY);
    out = malloc(sizeof *out + need + 1);
    if (out) {
        char *text = (char *)(out + 1);
        json_dumpb(j, text, need, JSON_ENCODE_ANY);
        text[need] = '\0';
        out->text = text;
        out->len = need;
        if (cn_dict_put(c->encoded, s, out) != 0) {
            free(out);
            out = NULL;
        } else {
            c->encoded_bytes += sizeof *out + need + strlen(s) + 48;
        }
    }
    json_decref(j);
    return out;
}

const json_str *json_cache_get(json_cache *c, const cn_batch *batch, uint32_t idx)
{
    size_t mask = c->cap - 1;
    size_t i = (size_t)(((uintptr_t)batch >> 4) * 0x9E3779B97F4A7C15ULL) & mask;
    while (c->slots[i].batch && c->slots[i].batch != batch)
        i = (i + 1) & mask;
    batch_slot *slot = &c->slots[i];
    if (!slot->batch) {
        slot->strings = cn_arena_alloc(c->arena, batch->n_strings * sizeof *slot->strings);
        if (!slot->strings)
            return NULL;
        memset(slot->strings, 0, batch->n_strings * sizeof *slot->strings);
        slot->batch = batch;
    }
    if (!slot->strings[idx])
        slot->strings[idx] = encode(c, batch->strings[idx]);
    return slot->strings[idx];
}

const json_str *json_cache_encode(json_cache *c, const char *s) { return encode(c, s); }
