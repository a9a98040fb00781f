/*
 * Receiver `skywalking`: unmodified SkyWalking agents report to canopy over
 * gRPC, as they would to an OAP or to Satellite. Files:
 *   sw_receiver.c  options, config checks, metrics, start/stop/destroy
 *   sw_server.c    the gRPC server: one completion queue, one thread, each
 *                  call a small state machine (accept -> read* -> reply)
 *   sw_handlers.c  what each method does with its messages: snapshots into
 *                  batches, task commands, finish reports, ManagementService
 *   passthrough.c  every other service, forwarded as raw bytes to the
 *                  `upstream` exporter's OAP (ManagementService observed)
 *   sw_gate.c      the connection gate in front of the gRPC server:
 *                  max_connections, which gRPC 1.51 cannot enforce
 */
#ifndef CN_SW_RECEIVER_H
#define CN_SW_RECEIVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <grpc/grpc.h>

#include "canopy/dict.h"
#include "canopy/listen_security.h"
#include "canopy/plugin.h"
#include "skywalking/sw_client.h"
#include "sw_gate.h"

#define SWRX_LOG_INTERVAL_MS 10000

/* The methods counted apart; METHOD_OTHER is any other path. */
typedef enum swrx_method {
    M_COLLECT_SNAPSHOT = 0,
    M_GET_COMMANDS,
    M_REPORT_FINISH,
    M_INSTANCE_PROPERTIES,
    M_KEEP_ALIVE,
    M_OTHER,
    N_METHODS
} swrx_method;

/* Why a call was refused (metric label). */
typedef enum swrx_reason {
    R_UNAUTHENTICATED = 0,
    R_MALFORMED,      /* a message that does not decode, or lacks a field */
    R_STREAM_ERROR,   /* the read failed: message over max_message_size, the peer went away */
    R_TOO_LONG,       /* open longer than max_call_duration */
    R_NO_UPSTREAM,    /* a service other than ProfileTask/ManagementService without `upstream` */
    R_OVERLOADED,     /* the pipelines refused the batch (queue, spool or memory full) */
    R_SHUTTING_DOWN,
    R_INTERNAL,       /* out of memory */
    R_PASSTHROUGH_FULL, /* max_passthrough_calls already in flight to the upstream */
    R_CONNECTIONS,    /* a connection closed at once: max_connections open (sw_gate.c); no call */
    N_REASONS
} swrx_reason;

extern const char *const swrx_method_labels[N_METHODS];

/*
 * Methods of the services passed through (or refused when there is no
 * upstream), as metric labels: a fixed list, so an agent cannot grow the
 * metrics with made-up method names; any other is PT_OTHER.
 */
enum { PT_OTHER = 0, N_PT_METHODS = 20 };
extern const char *const swrx_pt_labels[N_PT_METHODS];
/* The label index of a method path ("/skywalking.v3.X/y", or the unprefixed alias). */
int swrx_pt_method(grpc_slice path);

/* rx->cq carries both the served calls' and the proxied calls' completions; a tag's first int says which. */
enum { SWRX_TAG_CALL = 1, SWRX_TAG_PROXY };
extern const char *const swrx_reason_labels[N_REASONS];



typedef struct sw_receiver {
    /* ---- options ---- */
    char *listen;
    bool allow_insecure;
    cn_server_tls tls;
    char *authentication;
    int64_t max_message_size;
    int64_t max_streams_per_connection;
    int64_t max_connections;
    int64_t batch_size;
    int64_t max_agents;
    int64_t agent_idle_timeout_ms;
    int64_t max_call_duration_ms;
    int64_t handshake_timeout_ms;
    int64_t max_connection_idle_ms;
    char *upstream;                    /* id of a skywalking exporter, or NULL */
    int64_t max_passthrough_calls;
    int64_t upstream_connect_timeout_ms;

    /* ---- runtime ---- */
    cn_component *self;
    bool grpc_started;
    grpc_server *server;
    swrx_gate *gate;            /* accepts on `listen`, relays to the server on 127.0.0.1:<inner port> */
    grpc_completion_queue *cq;
    pthread_t thread;
    bool thread_started;
    atomic_bool stopping;
    int shutdown_tag;           /* its address is the server-shutdown tag */
    bool server_down;           /* the shutdown tag came; the queue closes once no call is left */
    int64_t n_calls;            /* swrx_calls alive (accepts included); server thread only */
    struct swrx_call *open_calls; /* calls reading, for max_call_duration; server thread only */
    int64_t next_sweep_ms;
    uint64_t next_batch_seq;    /* only the server thread touches it */
    /* Connection (gRPC peer) -> swrx_agent its agent named; server thread only. */
    cn_dict *agents;
    int64_t next_agent_expiry_ms;
    /* Pass-through: the upstream exporter's client (its channels), and the proxied calls; server thread only. */
    sw_client up;
    bool up_applied; /* up's options were applied and need freeing */
    bool up_ready;   /* channels made: pass-through is on */
    struct swrx_proxy *proxies;
    int64_t n_proxies;
    int64_t next_proxy_sweep_ms;

    cn_metric *calls[N_METHODS];
    cn_metric *refused[N_REASONS];
    cn_metric *refused_by[N_METHODS][N_REASONS];
    cn_metric *pt_calls[N_PT_METHODS], *pt_errors[N_PT_METHODS], *pt_bytes_up[N_PT_METHODS],
        *pt_bytes_down[N_PT_METHODS], *unimplemented[N_PT_METHODS], *pt_in_flight;
    cn_metric *accepted_batches, *accepted_snapshots, *connected_agents, *clamped_tasks;
    cn_metric *conns_open, *conns_accepted, *conns_refused;
    cn_ratelimit refuse_log[N_REASONS];
    cn_ratelimit clamp_log;
} sw_receiver;

/* sw_server.c */
int swrx_server_start(sw_receiver *rx);
void swrx_server_stop(sw_receiver *rx);

/* sw_handlers.c: one call's view for the handlers. */
typedef struct swrx_call_state swrx_call_state;
/* A finished unary or stream reply: status, detail, and the packed Commands (or none). */
typedef struct swrx_reply {
    grpc_status_code status;
    char detail[256];
    grpc_byte_buffer *message; /* owned; NULL unless status is OK */
} swrx_reply;

/* Starts a collectSnapshot stream for connection `peer`. NULL when out of memory. */
swrx_call_state *swrx_stream_new(sw_receiver *rx, const char *peer);
/* One ThreadSnapshot of the stream; 0, or -1 with reply filled (the call ends). */
int swrx_stream_message(sw_receiver *rx, swrx_call_state *st, grpc_byte_buffer *bb, swrx_reply *reply);
/* The client half-closed: submits what is left, then fills the reply (OK only when all is durable). */
void swrx_stream_end(sw_receiver *rx, swrx_call_state *st, swrx_reply *reply);
void swrx_stream_free(swrx_call_state *st);
/* The service the stream's batches carry (tests). */
const char *swrx_stream_service(const swrx_call_state *st);
/* A unary call's one message (bb NULL: none came). */
void swrx_unary(sw_receiver *rx, swrx_method m, const char *peer, grpc_byte_buffer *bb, swrx_reply *reply);

/* What an agent connection said it is, and when it last said so. */
typedef struct swrx_agent {
    int64_t seen_ms;  /* monotonic */
    char ident[];     /* "service\x1finstance" */
} swrx_agent;
/* Forgets agent connections not heard from within agent_idle_timeout (every 10 s at most). */
void swrx_expire_agents(sw_receiver *rx);

/* passthrough.c */
/* Sets up the upstream client when `upstream` is set; 0, or -1 after logging. */
int swrx_upstream_start(sw_receiver *rx);
/* Frees the client; after the server (and so every proxied call) is gone. */
void swrx_upstream_destroy(sw_receiver *rx);
/*
 * Takes over an accepted server call and forwards it upstream: 0 (the call,
 * details and metadata are now the proxy's, and the caller's are reset), or
 * -1 with reply filled (the caller still owns the call and finishes it).
 */
int swrx_proxy_start(sw_receiver *rx, grpc_call **call, grpc_call_details *details, grpc_metadata_array *md,
                     const char *peer, swrx_method m, swrx_reply *reply);
/* A completion whose tag is a proxy's (SWRX_TAG_PROXY). */
void swrx_proxy_event(void *tag, bool ok);
/* Ends every proxied call's upstream half (shutdown: a hung OAP must not hold canopy's stop). */
void swrx_proxy_cancel_all(sw_receiver *rx);
/* Ends proxied calls stuck connecting or open past max_call_duration (every 0.5 s at most). */
void swrx_proxy_sweep(sw_receiver *rx);
/* sw_handlers.c: records the instance a ManagementService message names (the bytes are only read). */
void swrx_observe_management(sw_receiver *rx, swrx_method m, const char *peer, grpc_byte_buffer *bb);

/* Counts and logs (rate limited) a refusal; fills reply. */
void swrx_refuse(sw_receiver *rx, swrx_reply *reply, swrx_method m, swrx_reason r, grpc_status_code code,
                 const char *peer, const char *fmt, ...) CN_PRINTF(7, 8);

#endif
