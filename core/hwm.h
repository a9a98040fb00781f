/*
 * What an exporter has delivered, per segment, kept in an append-only log
 * next to its spool. After a crash the spool replays records the exporter may
 * already have delivered; replayed snapshots already delivered are skipped,
 * so each (task, segment, sequence) reaches the sink once.
 *
 * A segment's sequences usually reach a sink in order, but not always: an
 * agent's resend of an older batch can arrive after a newer one. So the
 * delivered set is exact, not a high-water mark: a watermark below which
 * every sequence was delivered, plus the sequences delivered above it.
 */
#ifndef CANOPY_HWM_H
#define CANOPY_HWM_H

#include <stdint.h>

#include "canopy/batch.h"

typedef struct cn_hwm cn_hwm;

/*
 * Loads (or creates) the log at path; a torn tail is cut. NULL on failure.
 * Marks loaded from the log are kept until the spool's cursor reaches
 * `replay_end` (the records they could protect are then committed).
 */
cn_hwm *cn_hwm_open(const char *path, bool fsync_each, const char *name, uint64_t replay_end);
void cn_hwm_close(cn_hwm *h);
/* Drops, in place, the refs of replayed batches that were delivered already.
 * Returns how many were dropped. */
size_t cn_hwm_filter(cn_hwm *h, cn_chunk *chunk);
/* Records (and logs) what a successfully exported chunk delivered. `read_pos` is
 * the spool's read position: every record holding these snapshots is below it. */
void cn_hwm_commit(cn_hwm *h, const cn_chunk *chunk, uint64_t read_pos);
/* Forgets marks whose records are all below `cursor`, the spool's cursor as
 * saved on disk (cn_spool_saved_cursor): those records are never replayed, so
 * the marks protect nothing any more. */
void cn_hwm_prune(cn_hwm *h, uint64_t cursor);
/* Records a sequence the sink reports it holds (memory only: the sink is read
 * again at every restart). */
void cn_hwm_seed(cn_hwm *h, const char *task, const char *segment, int32_t seq);

#endif
