/*
 * Building a batch in the core's form from snapshots a receiver decoded from
 * its own wire format (canopy/batch.h). Strings are interned into the
 * batch's table once each and, like everything else of the batch, live in
 * its arena.
 */
#include <stdlib.h>
#include <string.h>

#include "canopy/batch.h"
#include "canopy/common.h"
#include "canopy/dict.h"

struct cn_batch_builder {
    cn_arena *arena;
    cn_agent_identity *agent;
    cn_dict *index;         /* string -> its index + 1 */
    char **strings;         /* heap array of arena strings */
    size_t n_strings, cap_strings;
    cn_snapshot **snapshots; /* heap array of arena snapshots */
    size_t n_snapshots, cap_snapshots;
};

static char *arena_strdup(cn_arena *a, const char *s)
{
    size_t len = strlen(s) + 1;
    char *copy = cn_arena_alloc(a, len);
    if (copy)
        memcpy(copy, s, len);
    return copy;
}

void cn_batch_builder_free(cn_batch_builder *b)
{
    if (!b)
        return;
    cn_arena_free(b->arena);
    cn_dict_free(b->index, NULL);
    free(b->strings);
    free(b->snapshots);
    free(b);
}

cn_batch_builder *cn_batch_builder_new(const char *service, const char *instance)
{
    cn_batch_builder *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    if (!(b->arena = cn_arena_new(16384)) || !(b->index = cn_dict_new(256)) ||
        !(b->agent = cn_arena_alloc(b->arena, sizeof *b->agent))) {
        cn_batch_builder_free(b);
        return NULL;
    }
    canopy__v1__agent_identity__init(b->agent);
    if (!(b->agent->service = arena_strdup(b->arena, service)) ||
        !(b->agent->instance = arena_strdup(b->arena, instance))) {
        cn_batch_builder_free(b);
        return NULL;
    }
    return b;
}

int cn_batch_builder_string(cn_batch_builder *b, const char *s, uint32_t *idx)
{
    uintptr_t known = (uintptr_t)cn_dict_get(b->index, s);
    if (known) {
        *idx = (uint32_t)(known - 1);
        return 0;
    }
    if (b->n_strings == b->cap_strings) {
        size_t cap = b->cap_strings ? b->cap_strings * 2 : 64;
        char **grown = realloc(b->strings, cap * sizeof *grown);
        if (!grown)
            return -1;
        b->strings = grown;
        b->cap_strings = cap;
    }
    char *copy = arena_strdup(b->arena, s);
    if (!copy || cn_dict_put(b->index, s, (void *)(uintptr_t)(b->n_strings + 1)) != 0)
        return -1;
    *idx = (uint32_t)b->n_strings;
    b->strings[b->n_strings++] = copy;
    return 0;
}

int cn_batch_builder_add(cn_batch_builder *b, uint32_t task, uint32_t segment, int32_t sequence, int64_t time_ms,
                         const uint32_t *frames, size_t n_frames)
{
    if (task >= b->n_strings || segment >= b->n_strings)
        return -1;
    for (size_t i = 0; i < n_frames; i++)
        if (frames[i] >= b->n_strings)
            return -1;
    if (b->n_snapshots == b->cap_snapshots) {
        size_t cap = b->cap_snapshots ? b->cap_snapshots * 2 : 64;
        cn_snapshot **grown = realloc(b->snapshots, cap * sizeof *grown);
        if (!grown)
            return -1;
        b->snapshots = grown;
        b->cap_snapshots = cap;
    }
    cn_snapshot *s = cn_arena_alloc(b->arena, sizeof *s);
    uint32_t *copy = cn_arena_alloc(b->arena, (n_frames ? n_frames : 1) * sizeof *copy);
    if (!s || !copy)
        return -1;
    canopy__v1__snapshot__init(s);
    s->task = task;
    s->segment = segment;
    s->sequence = sequence;
    s->time_ms = time_ms;
    if (n_frames)
        memcpy(copy, frames, n_frames * sizeof *copy);
    s->n_frames = n_frames;
    s->frames = copy;
    b->snapshots[b->n_snapshots++] = s;
    return 0;
}

size_t cn_batch_builder_count(const cn_batch_builder *b) { return b->n_snapshots; }

cn_batch *cn_batch_builder_finish(cn_batch_builder *b, uint64_t batch_seq)
{
    cn_batch *out = NULL;
    Canopy__V1__SnapshotBatch *sb = cn_arena_alloc(b->arena, sizeof *sb);
    char **strings = cn_arena_alloc(b->arena, (b->n_strings ? b->n_strings : 1) * sizeof *strings);
    cn_snapshot **snaps = cn_arena_alloc(b->arena, (b->n_snapshots ? b->n_snapshots : 1) * sizeof *snaps);
    if (sb && strings && snaps) {
        canopy__v1__snapshot_batch__init(sb);
        memcpy(strings, b->strings, b->n_strings * sizeof *strings);
        memcpy(snaps, b->snapshots, b->n_snapshots * sizeof *snaps);
        sb->batch_seq = batch_seq;
        sb->n_strings = b->n_strings;
        sb->strings = strings;
        sb->n_snapshots = b->n_snapshots;
        sb->snapshots = snaps;
        out = cn_batch_wrap(b->arena, b->agent, sb, cn_now_ms());
    }
    if (out)
        b->arena = NULL; /* the batch owns it now */
    cn_batch_builder_free(b);
    return out;
}
