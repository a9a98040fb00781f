/*
 * The registry of profiled greenlets (or threads): a small open-addressing
 * hash keyed by the greenlet's address (or the thread id).
 *
 * Every greenlet switch looks up the origin and the target here, so a lookup
 * must cost next to nothing: a multiply, a mask and usually one compare.
 * The table is sized once (twice the bound on profiled segments, rounded up
 * to a power of two), so it never rehashes on the switch path, and it is
 * kept at most half full so probe chains stay short. Deletion shifts the
 * following entries back instead of leaving tombstones, so lookups never slow
 * down as segments come and go.
 */
#include "cx.h"

#include <stdlib.h>

static inline size_t key_hash(uintptr_t key)
{
    /* Greenlets are 16-byte aligned: drop the always-zero bits, then mix. */
    uint64_t h = ((uint64_t)key >> 4) * 0x9E3779B97F4A7C15ull;
    return (size_t)(h ^ (h >> 32));
}

int cx_registry_init(cx_registry *r, size_t max_count)
{
    size_t cap = 16;
    if (max_count == 0)
        max_count = 1;
    while (cap < max_count * 2)
        cap <<= 1;
    cx_segment **slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -1;
    r->slots = slots;
    r->mask = cap - 1;
    r->count = 0;
    r->max_count = max_count;
    return 0;
}

void cx_segment_free(cx_segment *seg)
{
    if (!seg)
        return;
    cx_spawn_release(seg->spawn);
    Py_XDECREF(seg->greenlet);
    free(seg);
}

void cx_registry_fini(cx_registry *r)
{
    if (!r->slots)
        return;
    for (size_t i = 0; i <= r->mask; i++) {
        cx_segment_free(r->slots[i]);
    }
    free(r->slots);
    r->slots = NULL;
    r->mask = 0;
    r->count = 0;
}

cx_segment *cx_registry_get(const cx_registry *r, uintptr_t key)
{
    if (!r->slots)
        return NULL;
    size_t i = key_hash(key) & r->mask;
    for (;;) {
        cx_segment *s = r->slots[i];
        if (!s)
            return NULL;
        if (s->key == key)
            return s;
        i = (i + 1) & r->mask;
    }
}

int cx_registry_put(cx_registry *r, cx_segment *seg)
{
    if (!r->slots || r->count >= r->max_count)
        return -1;
    size_t i = key_hash(seg->key) & r->mask;
    for (;;) {
        cx_segment *s = r->slots[i];
        if (!s)
            break;
        if (s->key == seg->key)
            return -1;
        i = (i + 1) & r->mask;
    }
    r->slots[i] = seg;
    r->count++;
    return 0;
}

cx_segment *cx_registry_pop(cx_registry *r, uintptr_t key)
{
    if (!r->slots || r->count == 0)
        return NULL;
    size_t i = key_hash(key) & r->mask;
    for (;;) {
        cx_segment *s = r->slots[i];
        if (!s)
            return NULL;
        if (s->key == key)
            break;
        i = (i + 1) & r->mask;
    }
    cx_segment *found = r->slots[i];
    r->slots[i] = NULL;
    r->count--;
    /* Backward-shift deletion: move later members of the probe chain into
     * the hole when their home slot is at or before it. */
    size_t hole = i;
    size_t j = i;
    for (;;) {
        j = (j + 1) & r->mask;
        cx_segment *s = r->slots[j];
        if (!s)
            break;
        size_t home = key_hash(s->key) & r->mask;
        /* Is home cyclically outside (hole, j]? Then s may fill the hole. */
        int in_range = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!in_range) {
            r->slots[hole] = s;
            r->slots[j] = NULL;
            hole = j;
        }
    }
    return found;
}
