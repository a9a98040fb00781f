/*
 * Private to the skywalking exporter: the one context struct shared by its
 * files (skywalking.c: options and export; sw_grpc.c: calls on the gRPC C
 * core; sw_tasks.c: the task source that proxies the OAP's profile tasks).
 */
#ifndef CN_SW_H
#define CN_SW_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

#include "canopy/plugin.h"
#include "skywalking/sw_snapshot.h"

#define SW_LOG "skywalking"

typedef struct sw_tasks sw_tasks;

typedef struct sw_tls_opts {
    char *ca_file;
    char *cert_file;
    char *key_file;
    char *server_name;
} sw_tls_opts;

/* One configured OAP address; its channel is shared by every call to it. */
typedef struct sw_endpoint {
    char *target;           /* "host:port" as configured (owned by the options) */
    grpc_channel *channel;
    /* Guarded by sw_ctx.ep_lock. */
    int64_t down_until_ms;  /* monotonic; round robin skips it until then */
    int fails;              /* consecutive failed calls */
} sw_endpoint;

typedef struct sw_ctx {
    /* ---- options, filled by the core from the config map ---- */
    cn_strlist endpoints;
    char *authentication;
    sw_tls_opts tls;
    int64_t timeout_ms;
    int64_t max_snapshots_per_call;
    int64_t reconnect_backoff_max_ms;

    /* ---- runtime ---- */
    cn_component *self;
    const char *id;          /* component id, for logs */
    bool tls_enabled;        /* `tls:` present in the config, even empty */
    bool grpc_started;       /* grpc_init() was called and needs grpc_shutdown() */
    grpc_channel_credentials *creds;
    sw_endpoint *eps;
    size_t n_eps;
    pthread_mutex_t ep_lock;
    bool ep_lock_ok;
    /* The export thread's call in flight, so shutdown can abort it (cb_interrupt). */
    pthread_mutex_t export_lock;
    bool export_lock_ok;
    struct sw_cancel_slot *export_slot;
    size_t rr_next;
    /* Pluck queue: the export thread and the task thread pluck their own tags. */
    grpc_completion_queue *cq;

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
    cn_metric *m_calls_ok;
    cn_metric *m_failovers;

    cn_ratelimit rl_fail;
    cn_ratelimit rl_retry;

    sw_tasks *tasks;  /* NULL unless `tasks.skywalking` names this exporter */
} sw_ctx;

/* ---- sw_grpc.c ------------------------------------------------------------ */

/* Outcome of one RPC. */
typedef struct sw_rpc_status {
    grpc_status_code code;
    bool cancelled_by_us;   /* we cancelled it (shutdown), the peer did not */
    char detail[256];
} sw_rpc_status;

/* Slot through which another thread can cancel an in-flight call. */
typedef struct sw_cancel_slot {
    pthread_mutex_t *lock;
    grpc_call *call;
    bool cancelled;
} sw_cancel_slot;

int sw_grpc_setup(sw_ctx *c);
void sw_grpc_teardown(sw_ctx *c);

/* Picks the next endpoint round robin, skipping ones that failed recently. */
sw_endpoint *sw_pick_endpoint(sw_ctx *c);
/* Records a call's outcome; logs the transitions down and up once each. */
void sw_endpoint_result(sw_ctx *c, sw_endpoint *ep, const sw_rpc_status *st);

/* Transient failures that a later retry may fix. */
bool sw_status_retryable(const sw_rpc_status *st);
const char *sw_status_name(grpc_status_code code);

/*
 * A unary call: sends `req` (packed protobuf-c), unpacks the reply with
 * `resp_desc` into *resp (free with protobuf_c_message_free_unpacked) when
 * resp is not NULL. Returns 0 when the status is OK.
 */
int sw_unary(sw_ctx *c, sw_endpoint *ep, const char *method, const ProtobufCMessage *req,
             const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, sw_cancel_slot *slot,
             sw_rpc_status *st);

/*
 * A client-streaming collectSnapshot call carrying refs[0..n) of a chunk.
 * Returns 0 when the OAP replied OK.
 */
int sw_collect_snapshots(sw_ctx *c, sw_endpoint *ep, const cn_snap_ref *refs, size_t n,
                         sw_rpc_status *st);

/* ---- sw_tasks.c ----------------------------------------------------------- */

/* Options of tasks.skywalking only, no side effects (validate). */
int sw_tasks_check(const cn_node *cfg, cn_diag *d);
int sw_tasks_start(sw_ctx *c, const cn_node *cfg, cn_task_registry *reg, cn_diag *d);
void sw_tasks_stop(sw_ctx *c);
void sw_tasks_free(sw_ctx *c);

#endif
