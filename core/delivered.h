/*
 * What a durable exporter has delivered, per (task, segment): an exact set of
 * sequences (canopy/seqset.h), kept in memory and in an append-only log in
 * the exporter's spool directory. After a crash, records are replayed from
 * the pipeline's intake log and from the exporter's spool; replayed snapshots
 * already in the set are skipped, so each (task, segment, sequence) reaches
 * the sink once.
 *
 * A mark protects against a replay only while one is possible: until both
 * the exporter's spool and the intake log have saved cursors past every
 * record that could hold its snapshots. Then it is forgotten.
 */
#ifndef CANOPY_DELIVERED_H
#define CANOPY_DELIVERED_H

#include <stdint.h>

#include "canopy/batch.h"

/* Positions in the exporter's spool and in its pipeline's intake log. */
typedef struct cn_delivery_pos {
    uint64_t spool;
    uint64_t intake;
} cn_delivery_pos;

typedef struct cn_delivered cn_delivered;

/*
 * Loads (or creates) the log at path; a torn tail is cut. NULL on failure.
 * Marks loaded from the log are kept until both cursors reach `replay_end`
 * (the ends of what is replayed after this restart).
 */
cn_delivered *cn_delivered_open(const char *path, bool fsync_each, const char *name, cn_delivery_pos replay_end);
void cn_delivered_close(cn_delivered *h);
/* Drops, in place, the refs that were delivered already (after a restart:
 * replays, and agents' resends of batches whose ack the crash lost).
 * Returns how many were dropped. */
size_t cn_delivered_filter(cn_delivered *h, cn_chunk *chunk);
/* Records (and logs) what a successfully exported chunk delivered. `until`:
 * every record that may hold these snapshots is below it, in each log. */
void cn_delivered_commit(cn_delivered *h, const cn_chunk *chunk, cn_delivery_pos until);
/* Forgets marks whose records are all below the cursors saved on disk
 * (cn_spool_saved_cursor of each): those records are never replayed. */
void cn_delivered_prune(cn_delivered *h, cn_delivery_pos saved);
/* Records a sequence the sink reports it holds (memory only: the sink is read
 * again at every restart). */
void cn_delivered_seed(cn_delivered *h, const char *task, const char *segment, int32_t seq);

#endif
