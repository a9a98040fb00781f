/*
 * The batch builder: snapshots plus a per-batch string table.
 *
 * Strings live NUL-terminated in one growing arena and are found through an
 * open-addressing hash table of indices. The hot path skips all of that: a
 * caller slot whose generation matches the builder's gives the index
 * directly. A reset only rewinds lengths, so a builder reused batch after
 * batch stops allocating once it has grown to its working size.
 */
#include <stdlib.h>
#include <string.h>

#include "builder_internal.h"

#define CN_AG_MIN_TABLE 256u

static uint32_t hash_bytes(const char *s, size_t len)
{
    /* FNV-1a: short keys (code signatures), only off the slot fast path. */
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

cn_builder *cn_builder_new(const cn_builder_limits *limits)
{
    cn_builder *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    if (limits)
        b->lim = *limits;
    b->table_cap = CN_AG_MIN_TABLE;
    b->table = calloc(b->table_cap, sizeof(*b->table));
    if (!b->table) {
        free(b);
        return NULL;
    }
    b->gen = 1;
    return b;
}

void cn_builder_free(cn_builder *b)
{
    if (!b)
        return;
    free(b->arena);
    free(b->strs);
    free(b->table);
    free(b->snaps);
    free(b->frames);
    free(b);
}

void cn_builder_reset_gen(cn_builder *b, uint32_t gen)
{
    b->gen = gen ? gen : 1;
    b->arena_len = 0;
    b->n_strs = 0;
    b->n_snaps = 0;
    b->n_frames = 0;
    b->est = 0;
    memset(b->table, 0, b->table_cap * sizeof(*b->table));
}

void cn_builder_reset(cn_builder *b)
{
    uint32_t next = b->gen + 1;
    cn_builder_reset_gen(b, next ? next : 1);
}

uint32_t cn_builder_generation(const cn_builder *b) { return b->gen; }
size_t cn_builder_snapshots(const cn_builder *b) { return b->n_snaps; }
size_t cn_builder_strings(const cn_builder *b) { return b->n_strs; }
/* The fixed part covers the request header and identity strings. */
size_t cn_builder_size(const cn_builder *b) { return b->est + 64; }

bool cn_builder_full(const cn_builder *b)
{
    if (b->lim.max_snapshots && b->n_snaps >= b->lim.max_snapshots)
        return true;
    if (b->lim.max_strings && b->n_strs >= b->lim.max_strings)
        return true;
    return b->lim.max_bytes && cn_builder_size(b) >= b->lim.max_bytes;
}

const char *cn_builder_string(const cn_builder *b, uint32_t index, size_t *len)
{
    if (index >= b->n_strs)
        return NULL;
    if (len)
        *len = b->strs[index].len;
    return b->arena + b->strs[index].off;
}

/* Doubles *cap (at least to need) and reallocs *p; 0 or -1. */
static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

static int table_grow(cn_builder *b)
{
    size_t cap = b->table_cap * 2;
    uint32_t *t = calloc(cap, sizeof(*t));
    if (!t)
        return -1;
    for (uint32_t i = 0; i < b->n_strs; i++) {
        size_t pos = b->strs[i].hash & (cap - 1);
        while (t[pos])
            pos = (pos + 1) & (cap - 1);
        t[pos] = i + 1;
    }
    free(b->table);
    b->table = t;
    b->table_cap = cap;
    return 0;
}

int cn_ag_builder_intern(cn_builder *b, const char *s, size_t len, uint32_t *index)
{
    if (!s && len)
        return -CN_EINVAL;
    if (!s)
        s = "";
    const char *nul = memchr(s, '\0', len);
    if (nul)
        len = (size_t)(nul - s);
    if (b->lim.max_string_len && len > b->lim.max_string_len) {
        /* Cut, but never inside a UTF-8 sequence: back off while the first
         * byte left out is a continuation byte. */
        len = b->lim.max_string_len;
        while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
            len--;
    }
    if (len > UINT32_MAX / 2)
        return -CN_EINVAL;

    uint32_t h = hash_bytes(s, len);
    size_t mask = b->table_cap - 1;
    size_t pos = h & mask;
    for (uint32_t slot; (slot = b->table[pos]) != 0; pos = (pos + 1) & mask) {
        const cn_ag_str *e = &b->strs[slot - 1];
        if (e->hash == h && e->len == len && memcmp(b->arena + e->off, s, len) == 0) {
            *index = slot - 1;
            return 0;
        }
    }

    /* New string: make room everywhere before changing anything. */
    if (grow((void **)&b->arena, &b->arena_cap, b->arena_len + len + 1, 1) != 0 ||
        grow((void **)&b->strs, &b->strs_cap, (size_t)b->n_strs + 1, sizeof(*b->strs)) != 0)
        return -CN_ENOMEM;
    if (((size_t)b->n_strs + 1) * 2 > b->table_cap) {
        if (table_grow(b) != 0)
            return -CN_ENOMEM;
        mask = b->table_cap - 1;
        pos = h & mask;
        while (b->table[pos])
            pos = (pos + 1) & mask;
    }
    uint32_t idx = b->n_strs++;
    b->strs[idx] = (cn_ag_str){.off = (uint32_t)b->arena_len, .len = (uint32_t)len, .hash = h};
    memcpy(b->arena + b->arena_len, s, len);
    b->arena[b->arena_len + len] = '\0';
    b->arena_len += len + 1;
    b->table[pos] = idx + 1;
    b->est += 1 + varint_len(len) + len;
    *index = idx;
    return 0;
}

int cn_builder_intern(cn_builder *b, cn_str s, uint32_t *index)
{
    if (!b || !index)
        return -CN_EINVAL;
    cn_intern_slot *slot = s.slot;
    /* The hot path: a slot filled in this generation is trusted as is; the
     * bound check only keeps a misused slot from encoding a wild index. */
    if (slot && slot->gen == b->gen && slot->index < b->n_strs) {
        *index = slot->index;
        return 0;
    }
    int rv = cn_ag_builder_intern(b, s.ptr, s.len, index);
    if (rv == 0 && slot) {
        slot->gen = b->gen;
        slot->index = *index;
    }
    return rv;
}

static size_t snapshot_size(const cn_ag_snap *sn, const uint32_t *frames)
{
    size_t fbytes = 0;
    for (uint32_t i = 0; i < sn->n_frames; i++)
        fbytes += varint_len(frames[i]);
    size_t body = 1 + varint_len(sn->task) + 1 + varint_len(sn->segment) + 1 +
                  varint_len((uint64_t)sn->time_ms) + 1 + varint_len((uint64_t)(int64_t)sn->sequence);
    if (sn->n_frames)
        body += 1 + varint_len(fbytes) + fbytes;
    return 1 + varint_len(body) + body;
}

/* Could this snapshot's strings overflow the string table? Checked before
 * interning anything (every frame might be new), except in an empty batch,
 * which must take any one snapshot. */
static bool strings_would_overflow(const cn_builder *b, size_t n_frames)
{
    return b->lim.max_strings && b->n_snaps > 0 && (size_t)b->n_strs + n_frames + 2 > b->lim.max_strings;
}

int cn_builder_add_indices(cn_builder *b, uint32_t task, uint32_t segment, int64_t time_ms,
                           int32_t sequence, const uint32_t *frames, size_t n_frames)
{
    if (!b || (!frames && n_frames))
        return -CN_EINVAL;
    if (task >= b->n_strs || segment >= b->n_strs)
        return -CN_EINVAL;
    for (size_t i = 0; i < n_frames; i++)
        if (frames[i] >= b->n_strs)
            return -CN_EINVAL;
    if (cn_builder_full(b))
        return -CN_ELIMIT;
    /* Deeper than the cap: keep the leaf (innermost) frames, SkyWalking style. */
    if (b->lim.max_frames && n_frames > b->lim.max_frames) {
        frames += n_frames - b->lim.max_frames;
        n_frames = b->lim.max_frames;
    }
    if (n_frames > UINT32_MAX || b->n_frames + n_frames > UINT32_MAX)
        return -CN_ELIMIT;
    if (grow((void **)&b->snaps, &b->snaps_cap, b->n_snaps + 1, sizeof(*b->snaps)) != 0 ||
        grow((void **)&b->frames, &b->frames_cap, b->n_frames + n_frames, sizeof(*b->frames)) != 0)
        return -CN_ENOMEM;
    cn_ag_snap *sn = &b->snaps[b->n_snaps];
    *sn = (cn_ag_snap){.task = task, .segment = segment, .time_ms = time_ms, .sequence = sequence,
                       .frame_off = (uint32_t)b->n_frames, .n_frames = (uint32_t)n_frames};
    if (n_frames)
        memcpy(b->frames + b->n_frames, frames, n_frames * sizeof(*frames));
    b->n_frames += n_frames;
    b->n_snaps++;
    b->est += snapshot_size(sn, b->frames + sn->frame_off);
    return 0;
}

int cn_builder_add(cn_builder *b, const cn_snapshot_in *s)
{
    if (!b || !s || (!s->frames && s->n_frames))
        return -CN_EINVAL;
    if (cn_builder_full(b))
        return -CN_ELIMIT;
    size_t n = s->n_frames;
    const cn_str *fr = s->frames;
    if (b->lim.max_frames && n > b->lim.max_frames) {
        fr += n - b->lim.max_frames;
        n = b->lim.max_frames;
    }
    if (strings_would_overflow(b, n))
        return -CN_ELIMIT;
    uint32_t task, seg;
    int rv = cn_builder_intern(b, s->task, &task);
    if (rv == 0)
        rv = cn_builder_intern(b, s->segment, &seg);
    if (rv != 0)
        return rv;
    /* Frames are interned straight into the frame array's spare room, so a
     * snapshot costs no temporary buffer. */
    if (n > UINT32_MAX || b->n_frames + n > UINT32_MAX)
        return -CN_ELIMIT;
    if (grow((void **)&b->frames, &b->frames_cap, b->n_frames + n, sizeof(*b->frames)) != 0)
        return -CN_ENOMEM;
    uint32_t *dst = b->frames + b->n_frames;
    for (size_t i = 0; i < n; i++) {
        rv = cn_builder_intern(b, fr[i], &dst[i]);
        if (rv != 0)
            return rv;
    }
    if (grow((void **)&b->snaps, &b->snaps_cap, b->n_snaps + 1, sizeof(*b->snaps)) != 0)
        return -CN_ENOMEM;
    cn_ag_snap *sn = &b->snaps[b->n_snaps];
    *sn = (cn_ag_snap){.task = task, .segment = seg, .time_ms = s->time_ms, .sequence = s->sequence,
                       .frame_off = (uint32_t)b->n_frames, .n_frames = (uint32_t)n};
    b->n_frames += n;
    b->n_snaps++;
    b->est += snapshot_size(sn, dst);
    return 0;
}
