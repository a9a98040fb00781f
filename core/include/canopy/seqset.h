/*
 * A set of a segment's sequence numbers: a watermark below which every
 * sequence is in the set, plus the few above it (sorted). Agents number a
 * segment's snapshots densely from 0 and they mostly arrive in order, so the
 * set is usually just the watermark; a resend of an older batch after a newer
 * one leaves a short list above it until the gap fills.
 *
 * Used wherever "was this (segment, sequence) already passed on" is asked:
 * merge_by_task's duplicate detection and an exporter's delivered sets.
 */
#ifndef CANOPY_SEQSET_H
#define CANOPY_SEQSET_H

#include <stdbool.h>
#include <stdint.h>

typedef struct cn_seqset {
    int32_t watermark; /* every sequence below it is in the set */
    uint32_t n_above, cap_above;
    int32_t *above;    /* sorted sequences > watermark in the set */
} cn_seqset;

bool cn_seqset_has(const cn_seqset *s, int32_t seq);
/* Adds seq. Returns 0, or -1 when out of memory or when max_above (0: no
 * limit) sequences already wait above the watermark; the set is then unchanged. */
int cn_seqset_add(cn_seqset *s, int32_t seq, uint32_t max_above);
/* Frees the list; the set is empty again. */
void cn_seqset_clear(cn_seqset *s);

#endif
