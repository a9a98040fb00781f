/*
 * Private to the skywalking exporter: its one context struct. The OAP client
 * it embeds (plugins/common/skywalking) is shared with the skywalking task
 * source (plugins/extensions/skywalking).
 */
#ifndef CN_SW_H
#define CN_SW_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

#include "skywalking/sw_client.h"

typedef struct sw_ctx {
    /* ---- options, filled by the core from the config map ---- */
    sw_client client; /* first: its options' offsets are the context's (SW_CLIENT_OPTIONS) */
    int64_t max_snapshots_per_call;

    /* ---- runtime ---- */
    cn_component *self;
    const char *id;          /* component id, for logs */
    /* The export thread's call in flight, so shutdown can abort it (cb_interrupt). */
    pthread_mutex_t export_lock;
    bool export_lock_ok;
    struct sw_cancel_slot *export_slot;
    /* Export thread only: encodes each snapshot (plugins/common/skywalking). */
    cn_sw_snapshot_encoder snap_enc;

    /*
     * A chunk split over several calls that failed half way: on the core's
     * retry of the same chunk, resume after the calls that the OAP accepted.
     */
    struct {
        const cn_chunk *chunk;
        const cn_snap_ref *refs;
        const cn_snapshot *first;
        size_t n;
        size_t done;
    } resume;

    /* Metrics. */
    cn_metric *m_snap_sent;
    cn_metric *m_chunks_sent;
    cn_metric *m_chunks_retry;
    cn_metric *m_chunks_failed;
    cn_metric *m_snap_failed;
    cn_metric *m_snap_continuous;
    cn_metric *m_calls_ok;
    cn_metric *m_failovers;

    cn_ratelimit rl_fail;
    cn_ratelimit rl_retry;
} sw_ctx;

#endif
