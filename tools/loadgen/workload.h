/*
 * The simulated agent's workload: all of its batches, built and encoded up
 * front with the agent library's builder, so the timed phase measures only
 * transport and collector.
 */
#ifndef CN_LOADGEN_WORKLOAD_H
#define CN_LOADGEN_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "canopy/agent.h"

typedef struct lg_workload_config {
    int batches;       /* per agent */
    int batch_size;    /* snapshots per batch */
    int depth;         /* frames per snapshot */
    int tasks;         /* task ids "task-0".."task-{T-1}", shared by all agents */
    int segment_len;   /* snapshots per segment */
    int concurrency;   /* segments open at once (requests in flight) */
    uint64_t seed;
} lg_workload_config;

typedef struct lg_batch {
    uint8_t *bytes;    /* an encoded canopy.v1.Request */
    size_t len;
    size_t snapshots;
    uint64_t batch_seq;
} lg_batch;

/*
 * Builds cfg->batches batches for one agent. Segment ids are
 * "<instance>-seg-<k>", each segment's sequences run 0.. in order across
 * the batches, time_ms increases, frames are root first in SkyWalking's
 * "<file>.<function>: <line>" format from a fixed pool (so string tables
 * repeat). Returns 0, or -1 on allocation failure. Free with lg_batches_free.
 */
int lg_workload_build(const lg_workload_config *cfg, const cn_identity *id, int64_t start_ms,
                      lg_batch **out);
void lg_batches_free(lg_batch *b, int n);

#endif
