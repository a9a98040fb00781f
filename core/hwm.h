/*
 * Per-segment high-water marks of what an exporter has delivered, kept in an
 * append-only log next to its spool. After a crash the spool replays records
 * the exporter may already have delivered; since a segment's sequences reach
 * a sink dense and in order, skipping replayed snapshots at or below the
 * segment's mark is enough to deliver each (task, segment, sequence) once.
 */
#ifndef CANOPY_HWM_H
#define CANOPY_HWM_H

#include <stdint.h>

#include "canopy/batch.h"

typedef struct cn_hwm cn_hwm;

/* Loads (or creates) the log at path; a torn tail is cut. NULL on failure. */
cn_hwm *cn_hwm_open(const char *path, bool fsync_each, const char *name);
void cn_hwm_close(cn_hwm *h);
/* Drops, in place, the refs of replayed batches at or below their segment's mark.
 * Returns how many were dropped. */
size_t cn_hwm_filter(cn_hwm *h, cn_chunk *chunk);
/* Raises a segment's mark to at least seq (what a sink reports it holds). */
void cn_hwm_seed(cn_hwm *h, const char *task, const char *segment, int32_t seq);
/* Records what a successfully exported chunk delivered. */
void cn_hwm_commit(cn_hwm *h, const cn_chunk *chunk);

#endif
