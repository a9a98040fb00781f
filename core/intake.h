/*
 * A pipeline's durable intake: a write-ahead log of the batches its receivers
 * hand it, in the core's own form (durable.h), on when any of the pipeline's
 * exporters has a spool. A batch is acked only once it is in the log. Its
 * record is done when the batch is released: its snapshots went through the
 * processors (once) and every exporter either delivered them, dropped them
 * (counted), or holds them in its own spool. After a crash the records not
 * done are replayed through the processors, once, to the durable exporters.
 */
#ifndef CANOPY_INTAKE_H
#define CANOPY_INTAKE_H

#include <stdbool.h>
#include <stdint.h>

#include "canopy/batch.h"
#include "spool.h"

typedef struct cn_intake cn_intake;

/* Opens (creating) the log with the given options; NULL after logging why. */
cn_intake *cn_intake_open(const cn_spool_options *opts, const char *name, const char *labels);
void cn_intake_close(cn_intake *in);

/* Appends b; on CN_SPOOL_OK the batch's release marks its record done. */
cn_spool_result cn_intake_append(cn_intake *in, cn_batch *b);

/*
 * Reads the records a restart left and hands each, as a replayed batch, to
 * `push` (which may block until the pipeline takes it; it takes the batch's
 * reference). Returns how many batches were handed on.
 */
size_t cn_intake_replay(cn_intake *in, void (*push)(void *arg, cn_batch *b), void *arg);

/* Records below it were appended; every delivery that may hold a snapshot of one is below it. */
uint64_t cn_intake_end(cn_intake *in);
/* Where a restart would replay from (the cursor saved on disk). */
uint64_t cn_intake_saved_cursor(cn_intake *in);
/* The end of what this process replays (records from before the restart). */
uint64_t cn_intake_replay_end(cn_intake *in);
/* From now on, released batches no longer mark their records done: the
 * shutdown is abandoning undelivered data, which must be replayed. */
void cn_intake_freeze(cn_intake *in);

#endif
