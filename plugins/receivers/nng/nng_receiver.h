/*
 * The nng receiver's one context struct and what its files share:
 *   nng_receiver.c    options, start, stop, destroy
 *   listeners.c       listen/tls checks, the TLS config, starting listeners
 *   conns.c           max_connections, connections nng never releases
 *   rep.c             the REP context state machine, pauses at memory_limit, slow readers
 *   protocol.c        a Request's bytes in, a Reply's bytes out (no sockets)
 *   command_query.c   tasks as ProfileTaskQuery commands
 *   listener_stats.c  the timer: transport errors, evicted sessions
 *   closer.c          nng_close with a deadline
 */
#ifndef CANOPY_NNG_RECEIVER_H
#define CANOPY_NNG_RECEIVER_H

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/supplemental/tls/tls.h>
#include <pthread.h>
#include <stdatomic.h>

#include "canopy/listen_security.h"
#include "canopy/plugin.h"
#include "dedup.h"

typedef struct nng_receiver nng_receiver;

/*
 * What nng's pipe callbacks touch, apart from the receiver: nng calls them on
 * its own threads, possibly (see nngrx_close_socket) after the receiver is gone, so
 * this lives in its own allocation and is left allocated if nng never lets go.
 */
typedef struct conn_state {
    pthread_mutex_t lock;
    cn_dict *pipes; /* ids of the pipes counted against max_connections */
    cn_dict *unreaped; /* ids of closed pipes nng has not released (nngrx_prune_closed_connections) */
    int64_t max_connections;
    char id[64];    /* component id, for logs */
    cn_metric *open, *refused, *accepted, *unreaped_gauge;
    cn_ratelimit log, unreaped_log;
    atomic_bool abandoned; /* set when nngrx_close_socket gave up: callbacks do nothing */
} conn_state;

/* What the context's aio is doing. A context parked at memory_limit has no aio operation: it is on the
 * receiver's parked list instead (rep.c). */
typedef enum worker_state { WORKER_RECV, WORKER_SEND } worker_state;

typedef struct rep_worker {
    nng_receiver *rx;
    nng_ctx ctx;
    nng_aio *aio;
    worker_state state;
    /* While parked, under the receiver's park_lock: */
    struct rep_worker *next_parked;
    int64_t parked_since_ms; /* monotonic */
    bool ctx_open;
    /* The connection of the request being answered (nng_pipe id); read by the timer too. */
    _Atomic uint32_t pipe_id;
    /* Monotonic ms the reply was handed to nng, 0 when not sending; read by the timer. */
    _Atomic int64_t send_since_ms;
} rep_worker;

/* Index = Canopy__V1__Reason; metric label values (protocol.c). */
extern const char *const nngrx_reason_labels[];
#define N_REASONS 11

/* Which limit a LIMIT_EXCEEDED or TOO_LARGE refusal hit: label values of
 * canopy_receiver_limit_exceeded_total, named after the options. */
typedef enum limit_kind {
    LIMIT_MESSAGE_SIZE = 0,
    LIMIT_SNAPSHOTS,
    LIMIT_STRINGS,
    LIMIT_STRING_LENGTH,
    LIMIT_FRAMES,
    LIMIT_OTHER,
    /* Retryable (OVERLOADED): the service's limits, met when handing a batch on. */
    LIMIT_MEMORY,
    LIMIT_QUEUE,
    N_LIMITS
} limit_kind;
extern const char *const nngrx_limit_labels[];

/* none, optional, required: the order of nng_tls_auth_mode (listeners.c). */

/* nng's per-listener transport error counters we copy (listener_stats.c). */
extern const char *const nngrx_transport_errors[];
#define N_TRANSPORT_ERRORS 6
/* Listener statistics and stuck replies are looked at this often. */
#define STATS_INTERVAL_MS 500

typedef struct listener_stats {
    nng_listener l;
    bool started;
    cn_metric *errors[N_TRANSPORT_ERRORS];
    uint64_t last[N_TRANSPORT_ERRORS];
} listener_stats;


struct nng_receiver {
    /* options */
    cn_strlist listen;
    int64_t max_message_size;
    int64_t contexts;
    int ipc_permissions;
    char *ipc_group;
    bool allow_insecure;
    int64_t max_snapshots_per_batch;
    int64_t max_strings_per_batch;
    int64_t max_string_length;
    int64_t max_frames;
    int64_t max_agent_sessions;
    int64_t max_connections;
    int64_t reply_timeout;
    cn_server_tls tls; /* client_auth in nng_tls_auth_mode order */
    /* runtime */
    cn_component *self;
    cn_batch_limits limits;
    nng_socket sock;
    bool sock_open;
    rep_worker *workers;
    size_t n_workers;
    dedup_table dedup;
    cn_metric *requests[4]; /* by body case: batch, command_query, task_finish, other */
    cn_metric *accepted_batches, *accepted_snapshots, *received_bytes, *duplicates, *agent_sessions,
        *evicted_sessions;
    uint64_t evicted_logged;
    unsigned stats_ticks;
    cn_metric *refused[N_REASONS];
    cn_metric *limit_exceeded[N_LIMITS];
    cn_metric *reply_timeouts;
    cn_metric *intake_pauses; /* rep.c: times a context waited for memory_limit before a request */
    /* rep.c: contexts parked at memory_limit, and the thread that sends them back to work */
    pthread_mutex_t park_lock;
    pthread_cond_t park_cond;
    rep_worker *parked;
    bool park_ready, resumer_started, resumer_stop;
    pthread_t resumer;
    /* One per reason and per limit: a flood of one kind must not hide the others. */
    cn_ratelimit refuse_log[N_REASONS];
    cn_ratelimit limit_log[N_LIMITS];
    cn_ratelimit reply_log, session_log;
    nng_tls_config *tls_config;
    listener_stats *listeners; /* one per listen URL */
    nng_aio *stats_aio;
    cn_ratelimit transport_log[N_TRANSPORT_ERRORS];
    conn_state *conns;
    bool close_abandoned; /* nng_close never returned: leave nng's memory alone */
};

typedef enum url_kind { URL_IPC, URL_TCP, URL_TLS, URL_BAD } url_kind;

/* listeners.c */
url_kind nngrx_classify_url(const char *url);
int nngrx_check_listeners(nng_receiver *rx, cn_component *self, cn_diag *d);
int nngrx_make_tls_config(nng_receiver *rx);
int nngrx_start_listener(nng_receiver *rx, size_t index);

/* conns.c */
/* "127.0.0.1:51234" or "pid 4242": who is at the other end of p, for logs. */
void nngrx_describe_peer(nng_pipe p, char *buf, size_t len);
void nngrx_pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg);
void nngrx_prune_closed_connections(conn_state *cs);
conn_state *nngrx_conns_new(nng_receiver *rx);
void nngrx_conns_free(conn_state *cs);

/* rep.c */
int nngrx_start_resumer(nng_receiver *rx);
void nngrx_stop_resumer(nng_receiver *rx); /* before the workers' aios stop */
void nngrx_free_resumer(nng_receiver *rx);  /* after */
void nngrx_start_worker(rep_worker *w);
void nngrx_worker_cb(void *arg);
void nngrx_reap_slow_readers(nng_receiver *rx);

/* protocol.c */
/* Limits, counters and deduplication: what handling requests needs (no sockets). */
int nngrx_protocol_init(nng_receiver *rx, cn_component *self);
/*
 * Handles one request: `data` and `len` are its bytes, `peer` names the
 * sender for logs. Returns the reply, or NULL without memory for one (the
 * agent then times out and resends).
 */
nng_msg *nngrx_handle_request(nng_receiver *rx, const void *data, size_t len, const char *peer);
nng_msg *nngrx_reply_msg(const Canopy__V1__Reply *reply);
/* A refusal with `reason` (and, for LIMIT_EXCEEDED and TOO_LARGE, the limit), counted and logged. */
nng_msg *nngrx_refuse(nng_receiver *rx, Canopy__V1__Reason reason, limit_kind limit, uint64_t batch_seq,
                      const char *detail, const char *who);

/* listener_stats.c */
void nngrx_make_listener_metrics(nng_receiver *rx);
void nngrx_stats_cb(void *arg);

/* closer.c */
/* Closes rx->sock within a deadline; false when the close was abandoned. */
bool nngrx_close_socket(nng_receiver *rx);

#endif
