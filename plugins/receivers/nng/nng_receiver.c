/*
 * Receiver `nng`: agents send canopy.v1 Requests over nng REQ/REP. Several
 * REP contexts work at once, each a small state machine driven by its aio
 * callback: receive -> handle -> send reply -> receive. A batch is acked only
 * once every pipeline it feeds has taken it; anything refused gets an error
 * reply with a machine-readable reason, and a counter.
 *
 * Listeners: ipc:// (socket file mode and group), tcp:// (loopback only unless
 * allow_insecure) and tls+tcp:// (nng's TLS transport over mbedTLS, optional
 * client certificates). Every limit is counted per limit and logged at most
 * once per interval per limit, so one flood never hides another refusal.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/supplemental/tls/tls.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "canopy/plugin.h"
#include "dedup.h"
#include "pem.h"

typedef struct nng_receiver nng_receiver;

/*
 * What nng's pipe callbacks touch, apart from the receiver: nng calls them on
 * its own threads, possibly (see close_socket) after the receiver is gone, so
 * this lives in its own allocation and is left allocated if nng never lets go.
 */
typedef struct conn_state {
    pthread_mutex_t lock;
    cn_dict *pipes; /* ids of the pipes counted against max_connections */
    cn_dict *unreaped; /* ids of closed pipes nng has not released (prune_closed_connections) */
    int64_t max_connections;
    char id[64];    /* component id, for logs */
    cn_metric *open, *refused, *accepted, *unreaped_gauge;
    cn_ratelimit log, unreaped_log;
    atomic_bool abandoned; /* set when close_socket gave up: callbacks do nothing */
} conn_state;

typedef enum worker_state { WORKER_RECV, WORKER_SEND } worker_state;

typedef struct rep_worker {
    nng_receiver *rx;
    nng_ctx ctx;
    nng_aio *aio;
    worker_state state;
    bool ctx_open;
    /* The connection of the request being answered (nng_pipe id); read by the timer too. */
    _Atomic uint32_t pipe_id;
    /* Monotonic ms the reply was handed to nng, 0 when not sending; read by the timer. */
    _Atomic int64_t send_since_ms;
} rep_worker;

/* Index = Canopy__V1__Reason; metric label values. */
static const char *const reason_labels[] = {
    "ok", "duplicate", "malformed", "unsupported_version", "index_out_of_range", "limit_exceeded",
    "too_large", "invalid", "overloaded", "shutting_down", "internal",
};
#define N_REASONS (sizeof reason_labels / sizeof reason_labels[0])

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
static const char *const limit_labels[] = {
    "max_message_size", "max_snapshots_per_batch", "max_strings_per_batch", "max_string_length", "max_frames",
    "other", "memory_limit", "queue_or_spool_full",
};

static const char *const client_auth_choices[] = {"none", "optional", "required", NULL};

/*
 * What nng handles inside a listener, before or instead of a request: a TLS
 * handshake that failed authentication, a peer that is not an SP/REQ peer,
 * no memory, a pipe we closed (max_connections), and "other": any other
 * close, which is mostly agents going away but also a message over twice
 * max_message_size (nng does not say which). nng counts them per listener;
 * we copy them into canopy_receiver_transport_errors_total every second and
 * log the increase of those that are always a problem (why != NULL).
 */
static const char *const transport_errors[] = {"auth", "proto", "timeout", "oom", "reject", "other"};
static const char *const transport_error_why[] = {
    "failed TLS authentication (no or untrusted client certificate, or the client does not trust ours)",
    "were not nng REQ peers (protocol negotiation failed)",
    "timed out during the handshake",
    "were closed for lack of memory",
    NULL, /* our own max_connections closes, logged where they happen */
    NULL, /* mostly agents that went away */
};
#define N_TRANSPORT_ERRORS (sizeof transport_errors / sizeof transport_errors[0])
/* Listener statistics and stuck replies are looked at this often. */
#define STATS_INTERVAL_MS 500

typedef struct listener_stats {
    nng_listener l;
    bool started;
    cn_metric *errors[N_TRANSPORT_ERRORS];
    uint64_t last[N_TRANSPORT_ERRORS];
} listener_stats;

typedef struct nng_receiver_tls {
    char *cert_file;
    char *key_file;
    char *ca_file;
    int client_auth; /* index into client_auth_choices: same order as nng_tls_auth_mode */
} nng_receiver_tls;

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
    nng_receiver_tls tls;
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

static const cn_option tls_options[] = {
    {CN_OPT_STR, "cert_file", NULL, offsetof(nng_receiver_tls, cert_file),
     "PEM certificate (chain) the tls+tcp:// listeners present to agents."},
    {CN_OPT_STR, "key_file", NULL, offsetof(nng_receiver_tls, key_file), "PEM private key of cert_file."},
    {CN_OPT_STR, "ca_file", NULL, offsetof(nng_receiver_tls, ca_file),
     "PEM CA certificate(s) that agents' client certificates must chain to (client_auth optional or "
     "required)."},
    {CN_OPT_ENUM, "client_auth", "none", offsetof(nng_receiver_tls, client_auth),
     "none: agents need no certificate; optional: a certificate, when presented, must verify against "
     "ca_file; required: agents without a certificate that verifies are refused at the handshake.",
     .choices = client_auth_choices},
    CN_OPT_END};

static const cn_option nng_options[] = {
    {CN_OPT_STRLIST, "listen", "ipc:///tmp/canopy.sock", offsetof(nng_receiver, listen),
     "nng URLs to listen on: ipc:///path, tcp://host:port or tls+tcp://host:port. Plain tcp:// must be on "
     "a loopback address unless allow_insecure is true; tls+tcp:// needs tls.cert_file and tls.key_file."},
    {CN_OPT_SIZE, "max_message_size", "4MiB", offsetof(nng_receiver, max_message_size),
     "Largest request accepted. Larger ones (up to twice this) get a TOO_LARGE reply; beyond that nng "
     "closes the connection.",
     .min = 1024, .max = 1LL << 30},
    {CN_OPT_INT, "contexts", "16", offsetof(nng_receiver, contexts),
     "REP contexts serving requests concurrently.", .min = 1, .max = 1024},
    {CN_OPT_MODE, "ipc_permissions", "0660", offsetof(nng_receiver, ipc_permissions),
     "File mode of ipc:// sockets, so only the owner and group can connect."},
    {CN_OPT_STR, "ipc_group", NULL, offsetof(nng_receiver, ipc_group),
     "Group to own ipc:// sockets (e.g. the group the gunicorn workers run as)."},
    {CN_OPT_BOOL, "allow_insecure", "false", offsetof(nng_receiver, allow_insecure),
     "Allow plain tcp:// on non-loopback addresses (anyone who can reach the port can send data and read "
     "task definitions). Prefer tls+tcp:// with client_auth: required."},
    {CN_OPT_MAP, "tls", NULL, offsetof(nng_receiver, tls),
     "TLS of the tls+tcp:// listeners (nng's TLS transport, mbedTLS; TLS 1.2).", .sub = tls_options},
    {CN_OPT_INT, "max_connections", "1024", offsetof(nng_receiver, max_connections),
     "Agent connections open at once, over all listeners; further ones are closed at once and counted. Each "
     "connection may hold one request of up to twice max_message_size in memory.",
     .min = 1, .max = 1000000},
    {CN_OPT_DURATION, "reply_timeout", "2s", offsetof(nng_receiver, reply_timeout),
     "A reply the connection has not taken within this long (checked every 0.5 s) closes that connection: a "
     "peer that sends "
     "requests but never reads the replies would otherwise hold every REP context. Agents read replies at "
     "once; one whose connection is closed reconnects and resends (acked as a duplicate).",
     .min = 100, .max = 3600 * 1000},
    {CN_OPT_INT, "max_snapshots_per_batch", "16384", offsetof(nng_receiver, max_snapshots_per_batch),
     "Snapshots one batch may carry.", .min = 1, .max = 10000000},
    {CN_OPT_INT, "max_strings_per_batch", "65536", offsetof(nng_receiver, max_strings_per_batch),
     "Entries in one batch's string table.", .min = 1, .max = 10000000},
    {CN_OPT_SIZE, "max_string_length", "4KiB", offsetof(nng_receiver, max_string_length),
     "Longest code signature, task id or segment id.", .min = 16, .max = 1 << 20},
    {CN_OPT_INT, "max_frames", "1024", offsetof(nng_receiver, max_frames),
     "Frames one snapshot's stack may have.", .min = 1, .max = 100000},
    {CN_OPT_INT, "max_agent_sessions", "10000", offsetof(nng_receiver, max_agent_sessions),
     "Agent sessions tracked for deduplication; the one seen longest ago is forgotten first.", .min = 16,
     .max = 10000000},
    CN_OPT_END};

/* ---- checks ---------------------------------------------------------------- */

/* True for tcp hosts that only this machine can reach. */
static bool host_is_loopback(const char *host)
{
    if (strcmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0 || strcmp(host, "::1") == 0)
        return true;
    struct in_addr a;
    return inet_pton(AF_INET, host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

typedef enum url_kind { URL_IPC, URL_TCP, URL_TLS, URL_BAD } url_kind;

static url_kind classify_url(const char *url)
{
    if (strncmp(url, "ipc://", 6) == 0)
        return URL_IPC;
    if (strncmp(url, "tcp://", 6) == 0 || strncmp(url, "tcp4://", 7) == 0 || strncmp(url, "tcp6://", 7) == 0)
        return URL_TCP;
    if (strncmp(url, "tls+tcp://", 10) == 0 || strncmp(url, "tls+tcp4://", 11) == 0 ||
        strncmp(url, "tls+tcp6://", 11) == 0)
        return URL_TLS;
    return URL_BAD;
}

static int check_url(nng_receiver *rx, const char *url, const cn_node *at, cn_diag *d)
{
    url_kind kind = classify_url(url);
    if (kind == URL_IPC) {
        if (!url[6]) {
            cn_diag_error(d, at, "listen: \"%s\" has no socket path", url);
            return -1;
        }
        return 0;
    }
    if (kind == URL_BAD) {
        cn_diag_error(d, at, "listen: \"%s\" must start with ipc://, tcp:// or tls+tcp://", url);
        return -1;
    }
    const char *host = strstr(url, "://") + 3;
    const char *colon = strrchr(host, ':');
    if (!colon || colon == host || !colon[1]) {
        cn_diag_error(d, at, "listen: \"%s\" must be %s://host:port", url, kind == URL_TLS ? "tls+tcp" : "tcp");
        return -1;
    }
    if (kind == URL_TLS) {
        /* Encrypted, and with client_auth: required only agents holding a certificate get in. */
        if (!rx->tls.cert_file || !rx->tls.key_file) {
            cn_diag_error(d, at, "listen: \"%s\" needs tls.cert_file and tls.key_file (the certificate it presents)",
                          url);
            return -1;
        }
        return 0;
    }
    char h[256];
    snprintf(h, sizeof h, "%.*s", (int)(colon - host), host);
    if (!rx->allow_insecure && !host_is_loopback(h)) {
        cn_diag_error(d, at,
                      "listen: refusing plain %s on a non-loopback address: anyone who can reach it could send "
                      "data and read tasks. Listen on 127.0.0.1, an ipc:// path or tls+tcp:// (with tls: "
                      "cert_file, key_file), or set allow_insecure: true",
                      url);
        return -1;
    }
    return 0;
}

/* The node of option `name` in map `node`, else `fallback`: errors always carry a position. */
static const cn_node *opt_at(const cn_node *node, const char *name, const cn_node *fallback)
{
    const cn_node *n = cn_options_node(node, name);
    return n ? n : fallback;
}

/* Whether a PEM file is readable and holds a block whose label contains `what`. */
static int check_pem(cn_diag *d, const cn_node *at, const char *key, const char *path, const char *what)
{
    char *text = cn_pem_read(path, NULL);
    if (!text) {
        cn_diag_error(d, at, "tls.%s: cannot read %s: %s", key, path,
                      errno == EINVAL ? "not a regular file" : strerror(errno));
        return -1;
    }
    bool found = cn_pem_has_block(text, what);
    cn_pem_free_secret(text); /* it may be the private key */
    if (!found) {
        cn_diag_error(d, at, "tls.%s: %s holds no PEM \"%s\" block", key, path, what);
        return -1;
    }
    return 0;
}

static int check_tls(nng_receiver *rx, cn_component *self, bool has_tls_url, cn_diag *d)
{
    const cn_node *node = cn_node_get(cn_component_node(self), "tls");
    const nng_receiver_tls *t = &rx->tls;
    bool any = t->cert_file || t->key_file || t->ca_file || t->client_auth != NNG_TLS_AUTH_MODE_NONE;
    if (!any)
        return 0;
    const cn_node *at = node ? node : cn_component_node(self);
    int rc = 0;
    if (!has_tls_url) {
        /* Otherwise a user could believe agents are authenticated while they are not. */
        cn_diag_error(d, at, "tls is set but no listen URL is tls+tcp://; TLS applies only to tls+tcp:// listeners");
        rc = -1;
    }
    if ((t->cert_file == NULL) != (t->key_file == NULL)) {
        cn_diag_error(d, at, "tls: cert_file and key_file go together");
        rc = -1;
    }
    if (t->client_auth != NNG_TLS_AUTH_MODE_NONE && !t->ca_file) {
        cn_diag_error(d, opt_at(node, "client_auth", at),
                      "tls.client_auth: %s needs tls.ca_file (the CA agents' certificates must chain to)",
                      client_auth_choices[t->client_auth]);
        rc = -1;
    }
    if (t->cert_file && check_pem(d, opt_at(node, "cert_file", at), "cert_file", t->cert_file, "CERTIFICATE"))
        rc = -1;
    if (t->key_file && check_pem(d, opt_at(node, "key_file", at), "key_file", t->key_file, "PRIVATE KEY"))
        rc = -1;
    if (t->ca_file && check_pem(d, opt_at(node, "ca_file", at), "ca_file", t->ca_file, "CERTIFICATE"))
        rc = -1;
    return rc;
}

static int nng_check(void *ctx, cn_component *self, cn_diag *d)
{
    nng_receiver *rx = ctx;
    const cn_node *at = cn_options_node(cn_component_node(self), "listen");
    if (rx->listen.n == 0) {
        cn_diag_error(d, at, "listen: at least one URL is required");
        return -1;
    }
    int rc = 0;
    bool has_tls_url = false;
    for (size_t i = 0; i < rx->listen.n; i++) {
        rc |= check_url(rx, rx->listen.v[i], at, d);
        has_tls_url |= classify_url(rx->listen.v[i]) == URL_TLS;
    }
    rc |= check_tls(rx, self, has_tls_url, d);
    if (rx->ipc_group && !getgrnam(rx->ipc_group)) {
        cn_diag_error(d, cn_options_node(cn_component_node(self), "ipc_group"), "ipc_group: no group named \"%s\"",
                      rx->ipc_group);
        rc = -1;
    }
    return rc;
}

/* ---- replies ----------------------------------------------------------------- */

static nng_msg *reply_msg(const Canopy__V1__Reply *reply)
{
    size_t len = canopy__v1__reply__get_packed_size(reply);
    nng_msg *msg;
    if (nng_msg_alloc(&msg, len) != 0)
        return NULL;
    canopy__v1__reply__pack(reply, nng_msg_body(msg));
    return msg;
}

static bool reason_retryable(Canopy__V1__Reason r)
{
    return r == CANOPY__V1__REASON__REASON_OVERLOADED || r == CANOPY__V1__REASON__REASON_SHUTTING_DOWN ||
           r == CANOPY__V1__REASON__REASON_INTERNAL;
}

/* The label of the core's limit (cn_refusal.limit) that a LIMIT_EXCEEDED refusal hit. */
static limit_kind limit_of(cn_batch_limit l)
{
    switch (l) {
    case CN_LIMIT_SNAPSHOTS: return LIMIT_SNAPSHOTS;
    case CN_LIMIT_STRINGS: return LIMIT_STRINGS;
    case CN_LIMIT_STRING_LENGTH: return LIMIT_STRING_LENGTH;
    case CN_LIMIT_FRAMES: return LIMIT_FRAMES;
    default: return LIMIT_OTHER;
    }
}

/* `limit` names the limit a LIMIT_EXCEEDED or TOO_LARGE refusal hit; ignored otherwise. */
static nng_msg *refuse(nng_receiver *rx, Canopy__V1__Reason reason, limit_kind limit, uint64_t batch_seq,
                       const char *detail, const char *who)
{
    size_t r = (size_t)reason < N_REASONS ? (size_t)reason : CANOPY__V1__REASON__REASON_INTERNAL;
    cn_metric_inc(rx->refused[r]);
    cn_log_level level = reason_retryable(reason) ? CN_LOG_INFO : CN_LOG_WARN;
    if (reason == CANOPY__V1__REASON__REASON_LIMIT_EXCEEDED || reason == CANOPY__V1__REASON__REASON_TOO_LARGE) {
        cn_metric_inc(rx->limit_exceeded[limit]);
        cn_log_limited(&rx->limit_log[limit], level, cn_component_id(rx->self), "refused a request from %s: %s: %s",
                       who, limit_labels[limit], detail);
    } else {
        cn_log_limited(&rx->refuse_log[r], level, cn_component_id(rx->self), "refused a request from %s: %s: %s",
                       who, reason_labels[r], detail);
    }
    Canopy__V1__Reply reply = CANOPY__V1__REPLY__INIT;
    reply.reason = reason;
    reply.retryable = reason_retryable(reason);
    reply.detail = (char *)detail;
    reply.batch_seq = batch_seq;
    return reply_msg(&reply);
}

/* A retryable refusal because a service limit was met; counted under that limit too. */
static nng_msg *refuse_overloaded(nng_receiver *rx, limit_kind k, uint64_t batch_seq, const char *detail,
                                  const char *who)
{
    cn_metric_inc(rx->refused[CANOPY__V1__REASON__REASON_OVERLOADED]);
    cn_metric_inc(rx->limit_exceeded[k]);
    cn_log_limited(&rx->limit_log[k], CN_LOG_INFO, cn_component_id(rx->self), "refused a batch from %s: %s: %s", who,
                   limit_labels[k], detail);
    Canopy__V1__Reply reply = CANOPY__V1__REPLY__INIT;
    reply.reason = CANOPY__V1__REASON__REASON_OVERLOADED;
    reply.retryable = true;
    reply.detail = (char *)detail;
    reply.batch_seq = batch_seq;
    return reply_msg(&reply);
}

static nng_msg *ack(uint64_t batch_seq, Canopy__V1__Reason reason)
{
    Canopy__V1__Reply reply = CANOPY__V1__REPLY__INIT;
    reply.reason = reason;
    reply.batch_seq = batch_seq;
    return reply_msg(&reply);
}

/* ---- request handling ------------------------------------------------------------- */

static nng_msg *handle_batch(nng_receiver *rx, cn_batch *b, const char *who)
{
    const cn_agent_identity *agent = b->agent;
    dedup_result dr = dedup_claim(&rx->dedup, agent->instance, agent->session, b->batch_seq, b->received_ms);
    if (dr == DEDUP_SEEN) {
        cn_metric_inc(rx->duplicates);
        return ack(b->batch_seq, CANOPY__V1__REASON__REASON_DUPLICATE);
    }
    if (dr == DEDUP_NO_MEMORY)
        return refuse(rx, CANOPY__V1__REASON__REASON_OVERLOADED, LIMIT_OTHER, b->batch_seq, "out of memory", who);
    cn_submit_result sr = cn_receiver_submit(rx->self, b);
    if (sr != CN_SUBMIT_OK) {
        dedup_release(&rx->dedup, agent->instance, agent->session, b->batch_seq);
        if (sr == CN_SUBMIT_SHUTTING_DOWN)
            return refuse(rx, CANOPY__V1__REASON__REASON_SHUTTING_DOWN, LIMIT_OTHER, b->batch_seq,
                          "the collector is shutting down; resend later", who);
        if (sr == CN_SUBMIT_MEMORY_LIMIT)
            return refuse_overloaded(rx, LIMIT_MEMORY, b->batch_seq, "memory limit reached; resend later", who);
        return refuse_overloaded(rx, LIMIT_QUEUE, b->batch_seq,
                                 "a pipeline queue (pipeline_queue_size) or an exporter's spool is full; resend later",
                                 who);
    }
    cn_metric_inc(rx->accepted_batches);
    cn_metric_add(rx->accepted_snapshots, (int64_t)b->n_snapshots);
    return ack(b->batch_seq, CANOPY__V1__REASON__REASON_OK);
}

/* Replies to a command query with the registry's tasks as agent commands (cn_agent_command_from_task). */
static nng_msg *handle_command_query(nng_receiver *rx, const Canopy__V1__Request *req)
{
    cn_task *tasks = NULL;
    size_t n = cn_tasks_query(cn_component_tasks(rx->self), req->agent->service, req->agent->instance,
                              req->command_query->last_command_time, cn_now_ms(), &tasks);
    Canopy__V1__Reply reply = CANOPY__V1__REPLY__INIT;
    cn_agent_command *forms = n ? calloc(n, sizeof *forms) : NULL;
    Canopy__V1__Command *cmds = n ? calloc(n, sizeof *cmds) : NULL;
    Canopy__V1__Command **cmd_ptrs = n ? calloc(n, sizeof *cmd_ptrs) : NULL;
    Canopy__V1__KeyStringValuePair *kvs = n ? calloc(n * CN_AGENT_COMMAND_ARGS, sizeof *kvs) : NULL;
    Canopy__V1__KeyStringValuePair **kv_ptrs = n ? calloc(n * CN_AGENT_COMMAND_ARGS, sizeof *kv_ptrs) : NULL;
    nng_msg *msg = NULL;
    if (n && (!forms || !cmds || !cmd_ptrs || !kvs || !kv_ptrs)) {
        msg = refuse(rx, CANOPY__V1__REASON__REASON_INTERNAL, LIMIT_OTHER, 0, "out of memory", req->agent->instance);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        cn_agent_command_from_task(&tasks[i], &forms[i]);
        canopy__v1__command__init(&cmds[i]);
        cmds[i].command = (char *)forms[i].name;
        cmds[i].n_args = CN_AGENT_COMMAND_ARGS;
        cmds[i].args = &kv_ptrs[i * CN_AGENT_COMMAND_ARGS];
        for (size_t k = 0; k < CN_AGENT_COMMAND_ARGS; k++) {
            Canopy__V1__KeyStringValuePair *kv = &kvs[i * CN_AGENT_COMMAND_ARGS + k];
            canopy__v1__key_string_value_pair__init(kv);
            kv->key = (char *)forms[i].keys[k];
            kv->value = (char *)forms[i].values[k];
            kv_ptrs[i * CN_AGENT_COMMAND_ARGS + k] = kv;
        }
        cmd_ptrs[i] = &cmds[i];
    }
    reply.n_commands = n;
    reply.commands = cmd_ptrs;
    msg = reply_msg(&reply);
    /* Agents ask every few seconds: a cheap moment to refresh this gauge. */
    cn_metric_set(rx->agent_sessions, (int64_t)dedup_sessions(&rx->dedup));
done:
    for (size_t i = 0; i < n; i++)
        cn_task_clear(&tasks[i]);
    free(tasks);
    free(forms);
    free(cmds);
    free(cmd_ptrs);
    free(kvs);
    free(kv_ptrs);
    return msg;
}

/* "127.0.0.1:51234" or "pid 4242": who sent it, for logs about requests that carry no identity. */
static void describe_peer(nng_pipe p, char *buf, size_t len)
{
    nng_sockaddr sa;
    int pid;
    char ip[INET6_ADDRSTRLEN];
    if (nng_pipe_id(p) < 0 || nng_pipe_get_addr(p, NNG_OPT_REMADDR, &sa) != 0) {
        snprintf(buf, len, "an agent");
    } else if (sa.s_family == NNG_AF_INET && inet_ntop(AF_INET, &sa.s_in.sa_addr, ip, sizeof ip)) {
        snprintf(buf, len, "%s:%u", ip, (unsigned)ntohs(sa.s_in.sa_port));
    } else if (sa.s_family == NNG_AF_INET6 && inet_ntop(AF_INET6, sa.s_in6.sa_addr, ip, sizeof ip)) {
        snprintf(buf, len, "[%s]:%u", ip, (unsigned)ntohs(sa.s_in6.sa_port));
    } else if (sa.s_family == NNG_AF_IPC && nng_pipe_get_int(p, NNG_OPT_IPC_PEER_PID, &pid) == 0) {
        snprintf(buf, len, "pid %d", pid);
    } else {
        snprintf(buf, len, "an agent");
    }
}

static nng_msg *handle_request(nng_receiver *rx, nng_msg *in)
{
    size_t len = nng_msg_len(in);
    cn_metric_add(rx->received_bytes, (int64_t)len);
    char peer[64], who[192];
    describe_peer(nng_msg_get_pipe(in), peer, sizeof peer);
    snprintf(who, sizeof who, "%s", peer);
    if (len > (size_t)rx->max_message_size) {
        cn_metric_inc(rx->requests[3]);
        char detail[128];
        snprintf(detail, sizeof detail, "message of %zu bytes exceeds max_message_size %lld", len,
                 (long long)rx->max_message_size);
        return refuse(rx, CANOPY__V1__REASON__REASON_TOO_LARGE, LIMIT_MESSAGE_SIZE, 0, detail, who);
    }
    Canopy__V1__Request *req;
    cn_arena *arena;
    cn_batch *batch;
    cn_refusal why = {0};
    Canopy__V1__Reason reason = cn_request_decode(nng_msg_body(in), len, &rx->limits, &req, &arena, &batch, &why);
    if (reason != CANOPY__V1__REASON__REASON_OK) {
        cn_metric_inc(rx->requests[3]);
        return refuse(rx, reason, limit_of(why.limit), 0, why.detail, who);
    }
    snprintf(who, sizeof who, "%.64s (service %.48s, %.63s)", req->agent->instance, req->agent->service, peer);
    nng_msg *reply;
    switch (req->body_case) {
    case CANOPY__V1__REQUEST__BODY_BATCH:
        cn_metric_inc(rx->requests[0]);
        reply = handle_batch(rx, batch, who);
        cn_batch_unref(batch); /* owns the arena; pipelines hold their own references */
        return reply;
    case CANOPY__V1__REQUEST__BODY_COMMAND_QUERY:
        cn_metric_inc(rx->requests[1]);
        reply = handle_command_query(rx, req);
        break;
    case CANOPY__V1__REQUEST__BODY_TASK_FINISH:
        cn_metric_inc(rx->requests[2]);
        cn_info(cn_component_id(rx->self), "%s reports task %s finished", who, req->task_finish->task_id);
        cn_tasks_report_finish(cn_component_tasks(rx->self), req->agent->service, req->agent->instance,
                               req->task_finish->task_id);
        reply = ack(0, CANOPY__V1__REASON__REASON_OK);
        break;
    default:
        reply = refuse(rx, CANOPY__V1__REASON__REASON_INVALID, LIMIT_OTHER, 0, "unknown request body", who);
        break;
    }
    cn_arena_free(arena);
    return reply;
}

/* ---- the REP context state machine ------------------------------------------------------ */

/*
 * A reply nobody took: the peer sends requests but does not read (REP sends
 * one reply at a time per connection, so its unread replies would tie up
 * every context in turn). Close that connection: nng then completes the
 * queued replies and the contexts go back to work.
 */
static void close_slow_reader(nng_receiver *rx, nng_pipe p)
{
    char who[64];
    describe_peer(p, who, sizeof who);
    cn_metric_inc(rx->reply_timeouts);
    cn_log_limited(&rx->reply_log, CN_LOG_WARN, cn_component_id(rx->self),
                   "closed the connection from %s: it did not take a reply within reply_timeout (%lld ms)", who,
                   (long long)rx->reply_timeout);
    if (nng_pipe_id(p) > 0)
        nng_pipe_close(p);
}

static void worker_cb(void *arg)
{
    rep_worker *w = arg;
    int rv = nng_aio_result(w->aio);
    if (w->state == WORKER_SEND) {
        if (rv != 0) {
            /* The agent went away before the reply; it will resend and be deduplicated. */
            nng_msg_free(nng_aio_get_msg(w->aio));
            nng_aio_set_msg(w->aio, NULL);
        }
        atomic_store(&w->send_since_ms, 0);
    } else if (rv == 0) {
        nng_msg *in = nng_aio_get_msg(w->aio);
        atomic_store(&w->pipe_id, (uint32_t)nng_pipe_id(nng_msg_get_pipe(in)));
        nng_msg *out = handle_request(w->rx, in);
        nng_msg_free(in);
        if (out) {
            w->state = WORKER_SEND;
            nng_aio_set_msg(w->aio, out);
            /* No aio timeout here: a ctx send timing out in nng 1.5.2's REP leaves
             * nng_close hanging; the timer closes the pipe instead (reap_slow_readers). */
            atomic_store(&w->send_since_ms, cn_mono_ms());
            nng_ctx_send(w->ctx, w->aio);
            return;
        }
        /* No memory for a reply: the agent times out and resends. */
    } else if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) {
        return; /* stopping */
    }
    w->state = WORKER_RECV;
    nng_ctx_recv(w->ctx, w->aio);
}

/* ---- connections ------------------------------------------------------------------------ */

/*
 * Counts connections against max_connections. nng calls this on its own
 * threads; a pipe closed in ADD_PRE never reaches the socket (no request of
 * it is read). The ids of counted pipes are kept because nng 1.5 still sends
 * REM_POST for a pipe closed in ADD_PRE, and that one must not be uncounted.
 */
static void pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    conn_state *cs = arg;
    if (atomic_load(&cs->abandoned))
        return;
    char key[16];
    snprintf(key, sizeof key, "%u", (unsigned)nng_pipe_id(p));
    if (ev == NNG_PIPE_EV_ADD_PRE) {
        pthread_mutex_lock(&cs->lock);
        size_t open = cn_dict_size(cs->pipes);
        bool admit = (int64_t)open < cs->max_connections && cn_dict_put(cs->pipes, key, cs) == 0;
        /* Set under the lock: events of two pipes must not store their counts
         * out of order (the gauge showed 3 of 4 open connections). */
        if (admit)
            cn_metric_set(cs->open, (int64_t)open + 1);
        pthread_mutex_unlock(&cs->lock);
        if (admit) {
            cn_metric_inc(cs->accepted);
            return;
        }
        char who[80];
        describe_peer(p, who, sizeof who);
        cn_metric_inc(cs->refused);
        cn_log_limited(&cs->log, CN_LOG_WARN, cs->id,
                       "refused a connection from %s: max_connections (%lld) reached (or out of memory)", who,
                       (long long)cs->max_connections);
        nng_pipe_close(p);
    } else if (ev == NNG_PIPE_EV_REM_POST) {
        pthread_mutex_lock(&cs->lock);
        if (cn_dict_remove(cs->pipes, key) != NULL)
            cn_metric_set(cs->open, (int64_t)cn_dict_size(cs->pipes));
        else if (cn_dict_remove(cs->unreaped, key) != NULL)
            cn_metric_set(cs->unreaped_gauge, (int64_t)cn_dict_size(cs->unreaped));
        pthread_mutex_unlock(&cs->lock);
    }
}

/*
 * nng 1.5.2 can stop releasing closed connections for good: its one pipe
 * reaper thread waits forever on a pipe closed while its TCP transport was
 * between the header and the body of a message (fixed in nng 1.6, "tcp:
 * finish receive aio on close"; docs/security.md). A hostile peer that
 * pipelines requests and hangs up does that within seconds. No closed
 * connection then gets REM_POST, so they would count against max_connections
 * forever and shut every agent out while the flood goes on. A TCP connection
 * whose peer address is gone (getpeername fails: the socket is closed) stops
 * counting and is shown as unreaped instead; its file descriptor stays open
 * until the process ends, which the gauge and the log make visible.
 */
static void prune_closed_connections(conn_state *cs)
{
    pthread_mutex_lock(&cs->lock);
    size_t n = cn_dict_size(cs->pipes), got = 0, pos = 0;
    uint32_t *ids = n ? malloc(n * sizeof *ids) : NULL;
    const char *key;
    void *value;
    while (ids && got < n && cn_dict_next(cs->pipes, &pos, &key, &value))
        ids[got++] = (uint32_t)strtoul(key, NULL, 10);
    pthread_mutex_unlock(&cs->lock);
    /* Asked outside the lock: nng takes its own locks, and pipe_event takes ours under them. */
    size_t dead = 0;
    for (size_t i = 0; i < got; i++) {
        nng_pipe p = NNG_PIPE_INITIALIZER;
        p.id = ids[i];
        nng_sockaddr sa;
        int rv = nng_pipe_get_addr(p, NNG_OPT_REMADDR, &sa);
        /* ENOENT: already released (REM_POST uncounts it); ipc:// addresses never fail. */
        if (rv != 0 && rv != NNG_ENOENT)
            ids[dead++] = ids[i];
    }
    size_t pruned = 0, unreaped;
    pthread_mutex_lock(&cs->lock);
    for (size_t i = 0; i < dead; i++) {
        char k[16];
        snprintf(k, sizeof k, "%u", (unsigned)ids[i]);
        if (cn_dict_remove(cs->pipes, k) != NULL) {
            pruned++;
            cn_dict_put(cs->unreaped, k, cs); /* no memory: it is just not shown */
        }
    }
    unreaped = cn_dict_size(cs->unreaped);
    if (pruned) {
        cn_metric_set(cs->open, (int64_t)cn_dict_size(cs->pipes));
        cn_metric_set(cs->unreaped_gauge, (int64_t)unreaped);
    }
    pthread_mutex_unlock(&cs->lock);
    free(ids);
    if (pruned)
        cn_log_limited(&cs->unreaped_log, CN_LOG_WARN, cs->id,
                       "%zu closed connection(s) were not released by nng (%zu in all; a known nng 1.5.2 wedge, "
                       "see docs/security.md): they no longer count against max_connections, but their file "
                       "descriptors stay open until the collector restarts",
                       pruned, unreaped);
}

static conn_state *conn_state_new(nng_receiver *rx)
{
    conn_state *cs = calloc(1, sizeof *cs);
    if (!cs)
        return NULL;
    if (!(cs->pipes = cn_dict_new(64)) || !(cs->unreaped = cn_dict_new(16)) ||
        pthread_mutex_init(&cs->lock, NULL) != 0) {
        cn_dict_free(cs->pipes, NULL);
        cn_dict_free(cs->unreaped, NULL);
        free(cs);
        return NULL;
    }
    const char *labels = cn_component_labels(rx->self);
    cs->max_connections = rx->max_connections;
    snprintf(cs->id, sizeof cs->id, "%s", cn_component_id(rx->self));
    cs->open = cn_gauge("canopy_receiver_connections", "Agent connections open, over all listeners.", labels);
    cs->accepted = cn_counter("canopy_receiver_connections_accepted_total",
                              "Agent connections accepted (after the TLS handshake for tls+tcp).", labels);
    cs->refused = cn_counter("canopy_receiver_connections_refused_total",
                             "Connections closed at once because max_connections was reached.", labels);
    cs->unreaped_gauge = cn_gauge("canopy_receiver_unreaped_connections",
                                  "Closed agent connections nng has not released, holding a file descriptor each "
                                  "(an nng 1.5.2 wedge, docs/security.md; restart the collector when it grows).",
                                  labels);
    cs->log.interval_ms = 5000;
    cs->unreaped_log.interval_ms = 10000;
    return cs;
}

static void conn_state_free(conn_state *cs)
{
    if (!cs)
        return;
    cn_dict_free(cs->pipes, NULL);
    cn_dict_free(cs->unreaped, NULL);
    pthread_mutex_destroy(&cs->lock);
    free(cs);
}

/* ---- listeners ------------------------------------------------------------------------------ */

/* The server TLS config shared by every tls+tcp:// listener. */
static int make_tls_config(nng_receiver *rx)
{
    const char *id = cn_component_id(rx->self);
    const nng_receiver_tls *t = &rx->tls;
    char *cert = cn_pem_read(t->cert_file, NULL);
    char *key = cert ? cn_pem_read(t->key_file, NULL) : NULL;
    if (!cert || !key) {
        cn_error(id, "tls: cannot read %s: %s", cert ? t->key_file : t->cert_file, strerror(errno));
        free(cert);
        free(key);
        return -1;
    }
    int rv = nng_tls_config_alloc(&rx->tls_config, NNG_TLS_MODE_SERVER);
    const char *step = "allocate a TLS config";
    if (rv == 0) {
        step = "load tls.cert_file and tls.key_file (do they match?)";
        rv = nng_tls_config_own_cert(rx->tls_config, cert, key, NULL);
    }
    if (rv == 0 && t->ca_file) {
        step = "load tls.ca_file";
        rv = nng_tls_config_ca_file(rx->tls_config, t->ca_file);
    }
    if (rv == 0) {
        step = "set tls.client_auth";
        rv = nng_tls_config_auth_mode(rx->tls_config, (nng_tls_auth_mode)t->client_auth);
    }
    /* Nothing older than TLS 1.2; mbedTLS 2.28 (Debian 12) stops at 1.2. */
    if (rv == 0 && nng_tls_config_version(rx->tls_config, NNG_TLS_1_2, NNG_TLS_1_3) != 0) {
        step = "require TLS 1.2";
        rv = nng_tls_config_version(rx->tls_config, NNG_TLS_1_2, NNG_TLS_1_2);
    }
    cn_pem_free_secret(key); /* the key must not linger in freed memory */
    free(cert);
    if (rv != 0) {
        cn_error(id, "tls: cannot %s: %s", step, nng_strerror(rv));
        return -1;
    }
    return 0;
}

static int start_listener(nng_receiver *rx, size_t index)
{
    const char *url = rx->listen.v[index];
    nng_listener l;
    url_kind kind = classify_url(url);
    int rv = nng_listener_create(&l, rx->sock, url);
    if (rv == 0 && kind == URL_IPC)
        rv = nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, rx->ipc_permissions);
    if (rv == 0 && kind == URL_TLS)
        rv = nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, rx->tls_config);
    if (rv == 0)
        rv = nng_listener_start(l, 0);
    if (rv != 0) {
        cn_error(cn_component_id(rx->self), "cannot listen on %s: %s", url, nng_strerror(rv));
        return -1;
    }
    rx->listeners[index].l = l;
    rx->listeners[index].started = true;
    if (kind == URL_IPC && rx->ipc_group) {
        struct group *g = getgrnam(rx->ipc_group);
        if (!g || chown(url + 6, (uid_t)-1, g->gr_gid) != 0) {
            cn_error(cn_component_id(rx->self), "cannot give %s to group %s: %s", url + 6, rx->ipc_group,
                     g ? strerror(errno) : "no such group");
            return -1;
        }
    }
    if (kind == URL_TLS)
        cn_info(cn_component_id(rx->self), "listening on %s (TLS, client certificates %s)", url,
                client_auth_choices[rx->tls.client_auth]);
    else if (kind == URL_IPC)
        cn_info(cn_component_id(rx->self), "listening on %s (mode %04o%s%s)", url, rx->ipc_permissions,
                rx->ipc_group ? ", group " : "", rx->ipc_group ? rx->ipc_group : "");
    else
        cn_info(cn_component_id(rx->self), "listening on %s", url);
    return 0;
}

/* Label value: the URL with quotes and backslashes (not valid in a Prometheus label) replaced. */
static void label_escape(char *out, size_t len, const char *in)
{
    size_t i = 0;
    for (; in[i] && i + 1 < len; i++)
        out[i] = in[i] == '"' || in[i] == '\\' || in[i] == '\n' ? '_' : in[i];
    out[i] = '\0';
}

static void make_listener_metrics(nng_receiver *rx)
{
    for (size_t i = 0; i < rx->listen.n; i++) {
        char url[192], l[320];
        label_escape(url, sizeof url, rx->listen.v[i]);
        for (size_t e = 0; e < N_TRANSPORT_ERRORS; e++) {
            snprintf(l, sizeof l, "%s,listener=\"%s\",error=\"%s\"", cn_component_labels(rx->self), url,
                     transport_errors[e]);
            rx->listeners[i].errors[e] =
                cn_counter("canopy_receiver_transport_errors_total",
                           "Connections nng closed, by listener and cause (auth: TLS authentication failed, "
                           "proto: not an nng REQ peer, timeout, oom, reject: max_connections, other: any other "
                           "close, mostly agents going away, also a message over twice max_message_size).",
                           l);
        }
    }
    for (size_t e = 0; e < N_TRANSPORT_ERRORS; e++)
        rx->transport_log[e].interval_ms = 5000;
}

/*
 * The statistics scope of listener `id`. Not nng_stat_find_listener: in nng
 * 1.5.2 it returns the socket's first listener whatever the id.
 */
static nng_stat *find_listener_scope(nng_stat *parent, int id, int depth)
{
    for (nng_stat *c = nng_stat_child(parent); c; c = nng_stat_next(c)) {
        if (nng_stat_type(c) != NNG_STAT_SCOPE)
            continue;
        if (strcmp(nng_stat_name(c), "listener") == 0) {
            for (nng_stat *v = nng_stat_child(c); v; v = nng_stat_next(v))
                if (nng_stat_type(v) == NNG_STAT_ID && strcmp(nng_stat_name(v), "id") == 0 &&
                    nng_stat_value(v) == (uint64_t)id)
                    return c;
        } else if (depth < 3) {
            nng_stat *found = find_listener_scope(c, id, depth + 1);
            if (found)
                return found;
        }
    }
    return NULL;
}

/* Copies nng's per-listener error counters into our metrics; logs increases. */
static void collect_listener_stats(nng_receiver *rx)
{
    nng_stat *root;
    if (nng_stats_get(&root) != 0)
        return; /* no memory: next time */
    for (size_t i = 0; i < rx->listen.n; i++) {
        listener_stats *ls = &rx->listeners[i];
        nng_stat *scope = ls->started ? find_listener_scope(root, nng_listener_id(ls->l), 0) : NULL;
        for (size_t e = 0; scope && e < N_TRANSPORT_ERRORS; e++) {
            nng_stat *st = nng_stat_find(scope, transport_errors[e]);
            uint64_t v = st ? nng_stat_value(st) : 0;
            if (v <= ls->last[e])
                continue;
            cn_metric_set(ls->errors[e], (int64_t)v);
            if (transport_error_why[e])
                cn_log_limited(&rx->transport_log[e], CN_LOG_WARN, cn_component_id(rx->self),
                           "%s: %llu connection(s) %s (%llu in all)", rx->listen.v[i],
                           (unsigned long long)(v - ls->last[e]), transport_error_why[e], (unsigned long long)v);
            ls->last[e] = v;
        }
    }
    nng_stats_free(root);
}

/* max_agent_sessions: evictions are counted and logged from the timer (dedup runs under its lock). */
static void report_evictions(nng_receiver *rx)
{
    uint64_t n = dedup_evicted(&rx->dedup);
    cn_metric_set(rx->agent_sessions, (int64_t)dedup_sessions(&rx->dedup));
    if (n <= rx->evicted_logged)
        return;
    cn_metric_set(rx->evicted_sessions, (int64_t)n);
    cn_log_limited(&rx->session_log, CN_LOG_WARN, cn_component_id(rx->self),
                   "max_agent_sessions (%lld) reached: forgot %llu agent session(s) seen longest ago (%llu in all); "
                   "their resends would no longer be recognised as duplicates",
                   (long long)rx->max_agent_sessions, (unsigned long long)(n - rx->evicted_logged),
                   (unsigned long long)n);
    rx->evicted_logged = n;
}

/* Closes the connections of replies pending longer than reply_timeout. */
static void reap_slow_readers(nng_receiver *rx)
{
    int64_t now = cn_mono_ms();
    for (size_t i = 0; i < rx->n_workers; i++) {
        rep_worker *w = &rx->workers[i];
        int64_t since = atomic_load(&w->send_since_ms);
        /* The exchange makes sure one stuck reply closes its pipe once. */
        if (since && now - since >= rx->reply_timeout &&
            atomic_compare_exchange_strong(&w->send_since_ms, &since, 0)) {
            nng_pipe p = NNG_PIPE_INITIALIZER;
            p.id = atomic_load(&w->pipe_id);
            close_slow_reader(rx, p);
        }
    }
}

static void stats_cb(void *arg)
{
    nng_receiver *rx = arg;
    if (nng_aio_result(rx->stats_aio) != 0)
        return; /* stopped */
    reap_slow_readers(rx);
    prune_closed_connections(rx->conns);
    /* nng_stats_get copies every statistic (each connection has some): once a second is plenty. */
    if (++rx->stats_ticks % 2 == 0) {
        collect_listener_stats(rx);
        report_evictions(rx);
    }
    nng_sleep_aio(STATS_INTERVAL_MS, rx->stats_aio);
}

static void make_metrics(nng_receiver *rx)
{
    const char *labels = cn_component_labels(rx->self);
    static const char *const kinds[] = {"batch", "command_query", "task_finish", "invalid"};
    char l[256];
    for (size_t i = 0; i < 4; i++) {
        snprintf(l, sizeof l, "%s,type=\"%s\"", labels, kinds[i]);
        rx->requests[i] = cn_counter("canopy_receiver_requests_total", "Requests received from agents, by type.", l);
    }
    for (size_t i = 2; i < N_REASONS; i++) {
        snprintf(l, sizeof l, "%s,reason=\"%s\"", labels, reason_labels[i]);
        rx->refused[i] = cn_counter("canopy_receiver_refused_total",
                                    "Requests refused with an error reply, by reason.", l);
    }
    rx->refused[0] = rx->refused[1] = rx->refused[2];
    for (size_t i = 0; i < N_LIMITS; i++) {
        snprintf(l, sizeof l, "%s,limit=\"%s\"", labels, limit_labels[i]);
        rx->limit_exceeded[i] = cn_counter("canopy_receiver_limit_exceeded_total",
                                           "Requests refused by the limit they met: the receiver's (limit_exceeded, "
                                           "too_large) and the service's (memory_limit, queue_or_spool_full: "
                                           "overloaded, retryable).",
                                           l);
        rx->limit_log[i].interval_ms = 5000;
    }
    for (size_t i = 0; i < N_REASONS; i++)
        rx->refuse_log[i].interval_ms = 5000;
    rx->reply_log.interval_ms = 5000;
    rx->reply_timeouts = cn_counter("canopy_receiver_reply_timeouts_total",
                                    "Connections closed because they did not take a reply within reply_timeout.",
                                    labels);
    rx->accepted_batches = cn_counter("canopy_receiver_accepted_batches_total", "Batches acked into the pipelines.", labels);
    rx->accepted_snapshots = cn_counter("canopy_receiver_accepted_snapshots_total",
                                        "Snapshots acked into the pipelines.", labels);
    rx->received_bytes = cn_counter("canopy_receiver_received_bytes_total", "Bytes of requests received.", labels);
    rx->duplicates = cn_counter("canopy_receiver_duplicate_batches_total",
                                "Batches received again after they were accepted (acked, not resubmitted).", labels);
    rx->agent_sessions = cn_gauge("canopy_receiver_agent_sessions", "Agent sessions tracked for deduplication.", labels);
    rx->evicted_sessions = cn_counter("canopy_receiver_evicted_sessions_total",
                                      "Agent sessions forgotten by deduplication because max_agent_sessions was "
                                      "reached (a resend from one of them would be accepted again).",
                                      labels);
    rx->session_log.interval_ms = 10000;
}

static int nng_start(void *ctx, cn_component *self)
{
    nng_receiver *rx = ctx;
    rx->self = self;
    rx->limits = (cn_batch_limits){rx->max_snapshots_per_batch, rx->max_strings_per_batch, rx->max_string_length,
                                   rx->max_frames};
    make_metrics(rx);

    if (dedup_init(&rx->dedup, (size_t)rx->max_agent_sessions) != 0)
        return -1;
    if (!(rx->conns = conn_state_new(rx)))
        return -1;
    bool has_tls_url = false;
    for (size_t i = 0; i < rx->listen.n; i++)
        has_tls_url |= classify_url(rx->listen.v[i]) == URL_TLS;
    if (has_tls_url && make_tls_config(rx) != 0)
        return -1;
    int rv = nng_rep0_open(&rx->sock);
    if (rv != 0) {
        cn_error(cn_component_id(self), "cannot open REP socket: %s", nng_strerror(rv));
        return -1;
    }
    rx->sock_open = true;
    /* Accept up to twice the limit so an oversized request still gets a TOO_LARGE reply. */
    nng_socket_set_size(rx->sock, NNG_OPT_RECVMAXSZ, (size_t)rx->max_message_size * 2);
    if ((rv = nng_pipe_notify(rx->sock, NNG_PIPE_EV_ADD_PRE, pipe_event, rx->conns)) != 0 ||
        (rv = nng_pipe_notify(rx->sock, NNG_PIPE_EV_REM_POST, pipe_event, rx->conns)) != 0) {
        cn_error(cn_component_id(self), "cannot watch connections: %s", nng_strerror(rv));
        return -1;
    }
    rx->workers = calloc((size_t)rx->contexts, sizeof *rx->workers);
    if (!rx->workers)
        return -1;
    rx->n_workers = (size_t)rx->contexts;
    for (size_t i = 0; i < rx->n_workers; i++) {
        rep_worker *w = &rx->workers[i];
        w->rx = rx;
        if ((rv = nng_aio_alloc(&w->aio, worker_cb, w)) != 0 || (rv = nng_ctx_open(&w->ctx, rx->sock)) != 0) {
            cn_error(cn_component_id(self), "cannot create REP context: %s", nng_strerror(rv));
            return -1;
        }
        w->ctx_open = true;
    }
    if (!(rx->listeners = calloc(rx->listen.n, sizeof *rx->listeners)))
        return -1;
    make_listener_metrics(rx);
    for (size_t i = 0; i < rx->listen.n; i++)
        if (start_listener(rx, i) != 0)
            return -1;
    if ((rv = nng_aio_alloc(&rx->stats_aio, stats_cb, rx)) != 0) {
        cn_error(cn_component_id(self), "cannot start the listener statistics timer: %s", nng_strerror(rv));
        return -1;
    }
    nng_sleep_aio(STATS_INTERVAL_MS, rx->stats_aio);
    for (size_t i = 0; i < rx->n_workers; i++) {
        rx->workers[i].state = WORKER_RECV;
        nng_ctx_recv(rx->workers[i].ctx, rx->workers[i].aio);
    }
    return 0;
}

/* ---- stopping ------------------------------------------------------------------------------ */

/* Longest wait for nng_close; see close_socket. */
#define CLOSE_TIMEOUT_MS 3000

typedef struct closer {
    nng_socket sock;
    pthread_mutex_t lock;
    pthread_cond_t cv;
    bool done;
    bool abandoned; /* the waiter left: the closer thread frees this */
} closer;

static void *closer_main(void *arg)
{
    closer *c = arg;
    nng_close(c->sock);
    pthread_mutex_lock(&c->lock);
    c->done = true;
    bool abandoned = c->abandoned;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->lock);
    if (abandoned) {
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->cv);
        free(c);
    }
    return NULL;
}

/*
 * nng_close with a deadline. nng 1.5.2 can deadlock in nng_close after a
 * flood of pipelined requests whose peers went away (nng issues #1543,
 * #1813, fixed in later releases): the tests/chaos hostile_agent test hit it.
 * The collector must still drain what it acked, so after CLOSE_TIMEOUT_MS we
 * log it and go on; the listeners are already closed, so nothing new comes
 * in. Returns false when the close was abandoned.
 */
static bool close_socket(nng_receiver *rx)
{
    closer *c = calloc(1, sizeof *c);
    pthread_t t;
    if (!c || pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c);
        nng_close(rx->sock); /* no memory for the watchdog: plain close */
        return true;
    }
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int cv_rv = pthread_cond_init(&c->cv, &attr);
    pthread_condattr_destroy(&attr);
    c->sock = rx->sock;
    if (cv_rv != 0 || pthread_create(&t, NULL, closer_main, c) != 0) {
        if (cv_rv == 0)
            pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->lock);
        free(c);
        nng_close(rx->sock);
        return true;
    }
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += CLOSE_TIMEOUT_MS / 1000;
    deadline.tv_nsec += (long)(CLOSE_TIMEOUT_MS % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&c->lock);
    while (!c->done && pthread_cond_timedwait(&c->cv, &c->lock, &deadline) == 0)
        ;
    bool done = c->done;
    if (!done)
        c->abandoned = true;
    pthread_mutex_unlock(&c->lock);
    if (done) {
        pthread_join(t, NULL);
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->lock);
        free(c);
        return true;
    }
    pthread_detach(t);
    cn_metric_inc(cn_counter("canopy_receiver_close_abandoned_total",
                             "Receiver shutdowns that went on without nng_close returning (an nng 1.5 deadlock).",
                             cn_component_labels(rx->self)));
    cn_error(cn_component_id(rx->self),
             "nng did not close the socket within %d ms (a known nng 1.5 deadlock after a flood); going on "
             "with the shutdown without it: nothing more is received, what was acked is still drained",
             CLOSE_TIMEOUT_MS);
    return false;
}

static void nng_stop(void *ctx)
{
    nng_receiver *rx = ctx;
    if (rx->stats_aio)
        nng_aio_stop(rx->stats_aio);
    /* No new connections and requests from here on, even if nng_close below never returns. */
    for (size_t i = 0; rx->listeners && i < rx->listen.n; i++) {
        if (rx->listeners[i].started) {
            nng_listener_close(rx->listeners[i].l);
            rx->listeners[i].started = false;
        }
    }
    /* The service already refuses new batches (SHUTTING_DOWN replies); stop the workers. */
    for (size_t i = 0; i < rx->n_workers; i++)
        if (rx->workers[i].aio)
            nng_aio_stop(rx->workers[i].aio);
    /* Contexts before the socket, as the agent's sender does with its aios. */
    for (size_t i = 0; i < rx->n_workers; i++) {
        if (rx->workers[i].ctx_open) {
            nng_ctx_close(rx->workers[i].ctx);
            rx->workers[i].ctx_open = false;
        }
    }
    if (rx->sock_open) {
        rx->sock_open = false;
        if (!close_socket(rx)) {
            rx->close_abandoned = true;
            if (rx->conns)
                atomic_store(&rx->conns->abandoned, true);
        }
    }
}

static void nng_destroy(void *ctx)
{
    nng_receiver *rx = ctx;
    nng_stop(rx);
    /* After an abandoned close nng may still hold the workers' aios and call the
     * pipe callback: leave those allocated (the process is exiting). */
    for (size_t i = 0; !rx->close_abandoned && i < rx->n_workers; i++)
        if (rx->workers[i].aio)
            nng_aio_free(rx->workers[i].aio);
    if (!rx->close_abandoned) {
        free(rx->workers);
        conn_state_free(rx->conns);
    }
    rx->workers = NULL;
    rx->n_workers = 0;
    rx->conns = NULL;
    dedup_destroy(&rx->dedup);
    if (rx->tls_config) {
        nng_tls_config_free(rx->tls_config); /* listeners held their own references */
        rx->tls_config = NULL;
    }
    if (rx->stats_aio) {
        nng_aio_free(rx->stats_aio);
        rx->stats_aio = NULL;
    }
    free(rx->listeners);
    rx->listeners = NULL;
}

const cn_plugin cn_receiver_nng = {
    .kind = CN_RECEIVER,
    .type = "nng",
    .description = "Snapshot batches and task queries from canopy agents over nng REQ/REP (ipc://, tcp://, "
                   "tls+tcp://).",
    .ctx_size = sizeof(nng_receiver),
    .options = nng_options,
    .cb_check = nng_check,
    .cb_start = nng_start,
    .cb_stop = nng_stop,
    .cb_destroy = nng_destroy,
};
