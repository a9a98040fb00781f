/* The builder's layout, shared by builder.c (adding) and encode.c. */
#ifndef CANOPY_AGENT_BUILDER_INTERNAL_H
#define CANOPY_AGENT_BUILDER_INTERNAL_H

#include "internal.h"

typedef struct cn_ag_str {
    uint32_t off;   /* into the arena; the string is NUL-terminated there */
    uint32_t len;
    uint32_t hash;
} cn_ag_str;

typedef struct cn_ag_snap {
    uint32_t task;
    uint32_t segment;
    int64_t time_ms;
    int32_t sequence;
    uint32_t frame_off; /* into frames */
    uint32_t n_frames;
} cn_ag_snap;

struct cn_builder {
    cn_builder_limits lim;
    uint32_t gen;

    char *arena;
    size_t arena_len, arena_cap;
    cn_ag_str *strs;
    uint32_t n_strs;
    size_t strs_cap;
    uint32_t *table;    /* string index + 1; 0 is empty; power-of-two size */
    size_t table_cap;

    cn_ag_snap *snaps;
    size_t n_snaps, snaps_cap;
    uint32_t *frames;
    size_t n_frames, frames_cap;

    size_t est;         /* encoded size of strings + snapshots, upper bound */
};

/* Interns by hash (no slot). */
int cn_ag_builder_intern(cn_builder *b, const char *s, size_t len, uint32_t *index);

#endif
