/*
 * A gRPC client of a SkyWalking OAP on the gRPC C core, shared by the
 * plugins that talk to one: the skywalking exporter (collectSnapshot) and
 * the skywalking task source (getProfileTaskCommands, reportTaskFinish).
 *
 * Its options (endpoints, authentication, tls, timeout, reconnect backoff)
 * are declared once, here (SW_CLIENT_OPTIONS): the exporter reads them from
 * its own config, the task source from the exporter's it names, so both talk
 * to the same OAPs with the same credentials.
 */
#ifndef CN_COMMON_SW_CLIENT_H
#define CN_COMMON_SW_CLIENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

#include "canopy/plugin.h"
#include "skywalking/sw_snapshot.h"

#define SW_LOG "skywalking"

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
    /* Guarded by sw_client.ep_lock. */
    int64_t down_until_ms;  /* monotonic; round robin skips it until then */
    int fails;              /* consecutive failed calls */
} sw_endpoint;

typedef struct sw_client {
    /* ---- options (SW_CLIENT_OPTIONS) ---- */
    cn_strlist endpoints;
    char *authentication;
    sw_tls_opts tls;
    int64_t timeout_ms;
    int64_t reconnect_backoff_max_ms;

    /* ---- runtime ---- */
    const char *id;          /* the owning component's id, for logs */
    bool tls_enabled;        /* `tls:` present in the config, even empty */
    bool grpc_started;       /* grpc_init() was called and needs grpc_shutdown() */
    grpc_channel_credentials *creds;
    sw_endpoint *eps;
    size_t n_eps;
    pthread_mutex_t ep_lock;
    bool ep_lock_ok;
    size_t rr_next;
    /* Pluck queue: each thread plucks its own calls' tags. */
    grpc_completion_queue *cq;
} sw_client;

extern const cn_option sw_client_tls_options[];
/*
 * The client's option entries, for a table whose context starts with its
 * sw_client (offsets are the client's). sw_client_options is them alone.
 */
#define SW_CLIENT_OPTIONS                                                                                          \
    {.type = CN_OPT_STRLIST, .name = "endpoints", .offset = offsetof(sw_client, endpoints), .required = true,     \
     .description = "OAP gRPC addresses as host:port (default OAP port 11800); calls go round "                    \
                    "robin, and fail over to the next address when one does not answer"},                         \
        {.type = CN_OPT_STR, .name = "authentication", .offset = offsetof(sw_client, authentication),             \
         .description = "Token sent as the `authentication` metadata on every call, as the OAP's "                 \
                        "authentication setting expects"},                                                         \
        {.type = CN_OPT_MAP, .name = "tls", .offset = offsetof(sw_client, tls), .sub = sw_client_tls_options,     \
         .description = "TLS to the OAP; plaintext (the OAP's default) when absent. `tls: {}` "                    \
                        "verifies against the system's roots"},                                                    \
        {.type = CN_OPT_DURATION, .name = "timeout", .default_value = "10s",                                      \
         .offset = offsetof(sw_client, timeout_ms), .min = 1, .max = 3600 * 1000,                                 \
         .description = "Deadline of each call to the OAP; a call past it fails as DEADLINE_EXCEEDED "             \
                        "and is retried"},                                                                         \
        {.type = CN_OPT_DURATION, .name = "reconnect_backoff_max", .default_value = "5s",                         \
         .offset = offsetof(sw_client, reconnect_backoff_max_ms), .min = 100, .max = 600 * 1000,                  \
         .description = "Longest wait between reconnection attempts to an OAP that went away"}
extern const cn_option sw_client_options[];

/* Checks the options as read from `node` (for errors' positions); 0, or -1 after cn_diag_error. */
int sw_client_check(const sw_client *c, const cn_node *node, const char *owner, cn_diag *d);
/* Channels, credentials and the completion queue. `node`: where the options came from (tls present?). */
int sw_client_setup(sw_client *c, const char *id, const cn_node *node);
/* Frees what setup made and the options; safe on a client that was only partly set up. */
void sw_client_teardown(sw_client *c, const cn_option *options);

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

/* Picks the next endpoint round robin, skipping ones that failed recently. */
sw_endpoint *sw_pick_endpoint(sw_client *c);
/* Records a call's outcome; logs the transitions down and up once each. */
void sw_endpoint_result(sw_client *c, sw_endpoint *ep, const sw_rpc_status *st);

/* Transient failures that a later retry may fix. */
bool sw_status_retryable(const sw_rpc_status *st);
const char *sw_status_name(grpc_status_code code);

/*
 * A unary call: sends `req` (packed protobuf-c), unpacks the reply with
 * `resp_desc` into *resp (free with protobuf_c_message_free_unpacked) when
 * resp is not NULL. Returns 0 when the status is OK.
 */
int sw_unary(sw_client *c, sw_endpoint *ep, const char *method, const ProtobufCMessage *req,
             const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, sw_cancel_slot *slot,
             sw_rpc_status *st);

/*
 * A client-streaming collectSnapshot call carrying refs[0..n) of a chunk,
 * encoded with enc. Returns 0 when the OAP replied OK.
 */
int sw_collect_snapshots(sw_client *c, sw_endpoint *ep, cn_sw_snapshot_encoder *enc, sw_cancel_slot *slot,
                         const cn_snap_ref *refs, size_t n, sw_rpc_status *st);

#endif
