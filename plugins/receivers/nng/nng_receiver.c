/*
 * Receiver `nng`: agents send canopy.v1 Requests over nng REQ/REP. Several
 * REP contexts work at once, each a small state machine driven by its aio
 * callback: receive -> handle -> send reply -> receive. A batch is acked only
 * once every pipeline it feeds has taken it; anything refused gets an error
 * reply with a machine-readable reason, and a counter.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "canopy/plugin.h"
#include "dedup.h"

typedef struct nng_receiver nng_receiver;

typedef enum worker_state { WORKER_RECV, WORKER_SEND } worker_state;

typedef struct rep_worker {
    nng_receiver *rx;
    nng_ctx ctx;
    nng_aio *aio;
    worker_state state;
    bool ctx_open;
} rep_worker;

/* Index = Canopy__V1__Reason; metric label values. */
static const char *const reason_labels[] = {
    "ok", "duplicate", "malformed", "unsupported_version", "index_out_of_range", "limit_exceeded",
    "too_large", "invalid", "overloaded", "shutting_down", "internal",
};
#define N_REASONS (sizeof reason_labels / sizeof reason_labels[0])

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
    /* runtime */
    cn_component *self;
    cn_batch_limits limits;
    nng_socket sock;
    bool sock_open;
    rep_worker *workers;
    size_t n_workers;
    dedup_table dedup;
    cn_metric *requests[4]; /* by body case: batch, command_query, task_finish, other */
    cn_metric *accepted_batches, *accepted_snapshots, *received_bytes, *duplicates, *agent_sessions;
    cn_metric *refused[N_REASONS];
    cn_ratelimit refuse_log;
};

static const cn_option nng_options[] = {
    {CN_OPT_STRLIST, "listen", "ipc:///tmp/canopy.sock", offsetof(nng_receiver, listen),
     "nng URLs to listen on: ipc:///path or tcp://host:port. Plain tcp:// must be on a loopback address "
     "unless allow_insecure is true."},
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
     "Allow plain tcp:// on non-loopback addresses (anyone who can reach the port can send data)."},
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

static int check_url(nng_receiver *rx, const char *url, const cn_node *at, cn_diag *d)
{
    if (strncmp(url, "ipc://", 6) == 0) {
        if (!url[6]) {
            cn_diag_error(d, at, "listen: \"%s\" has no socket path", url);
            return -1;
        }
        return 0;
    }
    bool tcp = strncmp(url, "tcp://", 6) == 0 || strncmp(url, "tcp4://", 7) == 0 || strncmp(url, "tcp6://", 7) == 0;
    if (!tcp) {
        cn_diag_error(d, at, "listen: \"%s\" must start with ipc:// or tcp://", url);
        return -1;
    }
    const char *host = strstr(url, "://") + 3;
    const char *colon = strrchr(host, ':');
    if (!colon || colon == host || !colon[1]) {
        cn_diag_error(d, at, "listen: \"%s\" must be tcp://host:port", url);
        return -1;
    }
    char h[256];
    snprintf(h, sizeof h, "%.*s", (int)(colon - host), host);
    if (!rx->allow_insecure && !host_is_loopback(h)) {
        cn_diag_error(d, at,
                      "listen: refusing plain %s on a non-loopback address: anyone who can reach it could send "
                      "data and read tasks. Listen on 127.0.0.1 or an ipc:// path, or set allow_insecure: true",
                      url);
        return -1;
    }
    return 0;
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
    for (size_t i = 0; i < rx->listen.n; i++)
        rc |= check_url(rx, rx->listen.v[i], at, d);
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

static nng_msg *refuse(nng_receiver *rx, Canopy__V1__Reason reason, uint64_t batch_seq, const char *detail,
                       const char *who)
{
    if ((size_t)reason < N_REASONS)
        cn_metric_inc(rx->refused[reason]);
    cn_log_limited(&rx->refuse_log, reason_retryable(reason) ? CN_LOG_INFO : CN_LOG_WARN, cn_component_id(rx->self),
                   "refused a request from %s: %s: %s", who, reason_labels[reason < N_REASONS ? reason : 0], detail);
    Canopy__V1__Reply reply = CANOPY__V1__REPLY__INIT;
    reply.reason = reason;
    reply.retryable = reason_retryable(reason);
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
        return refuse(rx, CANOPY__V1__REASON__REASON_OVERLOADED, b->batch_seq, "out of memory", who);
    cn_submit_result sr = cn_receiver_submit(rx->self, b);
    if (sr != CN_SUBMIT_OK) {
        dedup_release(&rx->dedup, agent->instance, agent->session, b->batch_seq);
        if (sr == CN_SUBMIT_SHUTTING_DOWN)
            return refuse(rx, CANOPY__V1__REASON__REASON_SHUTTING_DOWN, b->batch_seq,
                          "the collector is shutting down; resend later", who);
        return refuse(rx, CANOPY__V1__REASON__REASON_OVERLOADED, b->batch_seq,
                      sr == CN_SUBMIT_FULL ? "pipeline queue is full; resend later"
                                           : "memory limit reached; resend later",
                      who);
    }
    cn_metric_inc(rx->accepted_batches);
    cn_metric_add(rx->accepted_snapshots, (int64_t)b->n_snapshots);
    return ack(b->batch_seq, CANOPY__V1__REASON__REASON_OK);
}

static void set_kv(Canopy__V1__KeyStringValuePair *kv, Canopy__V1__KeyStringValuePair **slot, const char *key,
                   char *value)
{
    canopy__v1__key_string_value_pair__init(kv);
    kv->key = (char *)key;
    kv->value = value;
    *slot = kv;
}

#define N_TASK_ARGS 9

/* Replies to a command query with SkyWalking ProfileTaskQuery commands. */
static nng_msg *handle_command_query(nng_receiver *rx, const Canopy__V1__Request *req)
{
    cn_task *tasks = NULL;
    size_t n = cn_tasks_query(cn_component_tasks(rx->self), req->agent->service, req->agent->instance,
                              req->command_query->last_command_time, cn_now_ms(), &tasks);
    Canopy__V1__Reply reply = CANOPY__V1__REPLY__INIT;
    Canopy__V1__Command *cmds = n ? calloc(n, sizeof *cmds) : NULL;
    Canopy__V1__Command **cmd_ptrs = n ? calloc(n, sizeof *cmd_ptrs) : NULL;
    Canopy__V1__KeyStringValuePair *kvs = n ? calloc(n * N_TASK_ARGS, sizeof *kvs) : NULL;
    Canopy__V1__KeyStringValuePair **kv_ptrs = n ? calloc(n * N_TASK_ARGS, sizeof *kv_ptrs) : NULL;
    char (*nums)[6][24] = n ? calloc(n, sizeof *nums) : NULL;
    nng_msg *msg = NULL;
    if (n && (!cmds || !cmd_ptrs || !kvs || !kv_ptrs || !nums)) {
        msg = refuse(rx, CANOPY__V1__REASON__REASON_INTERNAL, 0, "out of memory", req->agent->instance);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const cn_task *t = &tasks[i];
        canopy__v1__command__init(&cmds[i]);
        cmds[i].command = "ProfileTaskQuery";
        cmds[i].n_args = N_TASK_ARGS;
        cmds[i].args = &kv_ptrs[i * N_TASK_ARGS];
        Canopy__V1__KeyStringValuePair *kv = &kvs[i * N_TASK_ARGS];
        Canopy__V1__KeyStringValuePair **slot = &kv_ptrs[i * N_TASK_ARGS];
        /* SkyWalking's Duration is whole minutes; round up so the agent never stops early. */
        snprintf(nums[i][0], 24, "%lld", (long long)((t->duration_ms + 59999) / 60000));
        snprintf(nums[i][1], 24, "%lld", (long long)t->min_duration_ms);
        snprintf(nums[i][2], 24, "%lld", (long long)t->dump_period_ms);
        snprintf(nums[i][3], 24, "%lld", (long long)t->max_sampling_count);
        snprintf(nums[i][4], 24, "%lld", (long long)t->start_ms);
        snprintf(nums[i][5], 24, "%lld", (long long)t->create_ms);
        set_kv(&kv[0], &slot[0], "SerialNumber", t->serial);
        set_kv(&kv[1], &slot[1], "TaskId", t->id);
        set_kv(&kv[2], &slot[2], "EndpointName", t->endpoint);
        set_kv(&kv[3], &slot[3], "Duration", nums[i][0]);
        set_kv(&kv[4], &slot[4], "MinDurationThreshold", nums[i][1]);
        set_kv(&kv[5], &slot[5], "DumpPeriod", nums[i][2]);
        set_kv(&kv[6], &slot[6], "MaxSamplingCount", nums[i][3]);
        set_kv(&kv[7], &slot[7], "StartTime", nums[i][4]);
        set_kv(&kv[8], &slot[8], "CreateTime", nums[i][5]);
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
    free(cmds);
    free(cmd_ptrs);
    free(kvs);
    free(kv_ptrs);
    free(nums);
    return msg;
}

static nng_msg *handle_request(nng_receiver *rx, nng_msg *in)
{
    size_t len = nng_msg_len(in);
    cn_metric_add(rx->received_bytes, (int64_t)len);
    char who[160] = "an agent";
    if (len > (size_t)rx->max_message_size) {
        cn_metric_inc(rx->requests[3]);
        char detail[128];
        snprintf(detail, sizeof detail, "message of %zu bytes exceeds max_message_size %lld", len,
                 (long long)rx->max_message_size);
        return refuse(rx, CANOPY__V1__REASON__REASON_TOO_LARGE, 0, detail, who);
    }
    Canopy__V1__Request *req;
    cn_arena *arena;
    cn_batch *batch;
    char detail[256] = "";
    Canopy__V1__Reason reason =
        cn_request_decode(nng_msg_body(in), len, &rx->limits, &req, &arena, &batch, detail, sizeof detail);
    if (reason != CANOPY__V1__REASON__REASON_OK) {
        cn_metric_inc(rx->requests[3]);
        return refuse(rx, reason, 0, detail, who);
    }
    snprintf(who, sizeof who, "%s (service %s)", req->agent->instance, req->agent->service);
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
        reply = refuse(rx, CANOPY__V1__REASON__REASON_INVALID, 0, "unknown request body", who);
        break;
    }
    cn_arena_free(arena);
    return reply;
}

/* ---- the REP context state machine ------------------------------------------------------ */

static void worker_cb(void *arg)
{
    rep_worker *w = arg;
    int rv = nng_aio_result(w->aio);
    if (w->state == WORKER_SEND) {
        if (rv != 0) {
            /* The agent went away before the reply; it will resend and be deduplicated. */
            nng_msg_free(nng_aio_get_msg(w->aio));
        }
    } else if (rv == 0) {
        nng_msg *in = nng_aio_get_msg(w->aio);
        nng_msg *out = handle_request(w->rx, in);
        nng_msg_free(in);
        if (out) {
            w->state = WORKER_SEND;
            nng_aio_set_msg(w->aio, out);
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

static int start_listener(nng_receiver *rx, const char *url)
{
    nng_listener l;
    int rv = nng_listener_create(&l, rx->sock, url);
    if (rv == 0 && strncmp(url, "ipc://", 6) == 0)
        rv = nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, rx->ipc_permissions);
    if (rv == 0)
        rv = nng_listener_start(l, 0);
    if (rv != 0) {
        cn_error(cn_component_id(rx->self), "cannot listen on %s: %s", url, nng_strerror(rv));
        return -1;
    }
    if (strncmp(url, "ipc://", 6) == 0 && rx->ipc_group) {
        struct group *g = getgrnam(rx->ipc_group);
        if (!g || chown(url + 6, (uid_t)-1, g->gr_gid) != 0) {
            cn_error(cn_component_id(rx->self), "cannot give %s to group %s: %s", url + 6, rx->ipc_group,
                     g ? strerror(errno) : "no such group");
            return -1;
        }
    }
    cn_info(cn_component_id(rx->self), "listening on %s", url);
    return 0;
}

static int nng_start(void *ctx, cn_component *self)
{
    nng_receiver *rx = ctx;
    rx->self = self;
    rx->limits = (cn_batch_limits){rx->max_snapshots_per_batch, rx->max_strings_per_batch, rx->max_string_length,
                                   rx->max_frames};
    const char *labels = cn_component_labels(self);
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
    rx->accepted_batches = cn_counter("canopy_receiver_accepted_batches_total", "Batches acked into the pipelines.", labels);
    rx->accepted_snapshots = cn_counter("canopy_receiver_accepted_snapshots_total",
                                        "Snapshots acked into the pipelines.", labels);
    rx->received_bytes = cn_counter("canopy_receiver_received_bytes_total", "Bytes of requests received.", labels);
    rx->duplicates = cn_counter("canopy_receiver_duplicate_batches_total",
                                "Batches received again after they were accepted (acked, not resubmitted).", labels);
    rx->agent_sessions = cn_gauge("canopy_receiver_agent_sessions", "Agent sessions tracked for deduplication.", labels);
    rx->refuse_log.interval_ms = 5000;

    if (dedup_init(&rx->dedup, (size_t)rx->max_agent_sessions) != 0)
        return -1;
    int rv = nng_rep0_open(&rx->sock);
    if (rv != 0) {
        cn_error(cn_component_id(self), "cannot open REP socket: %s", nng_strerror(rv));
        return -1;
    }
    rx->sock_open = true;
    /* Accept up to twice the limit so an oversized request still gets a TOO_LARGE reply. */
    nng_socket_set_size(rx->sock, NNG_OPT_RECVMAXSZ, (size_t)rx->max_message_size * 2);
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
    for (size_t i = 0; i < rx->listen.n; i++)
        if (start_listener(rx, rx->listen.v[i]) != 0)
            return -1;
    for (size_t i = 0; i < rx->n_workers; i++) {
        rx->workers[i].state = WORKER_RECV;
        nng_ctx_recv(rx->workers[i].ctx, rx->workers[i].aio);
    }
    return 0;
}

static void nng_stop(void *ctx)
{
    nng_receiver *rx = ctx;
    /* The service already refuses new batches (SHUTTING_DOWN replies); stop the workers. */
    for (size_t i = 0; i < rx->n_workers; i++)
        if (rx->workers[i].aio)
            nng_aio_stop(rx->workers[i].aio);
    if (rx->sock_open) {
        nng_close(rx->sock);
        rx->sock_open = false;
    }
}

static void nng_destroy(void *ctx)
{
    nng_receiver *rx = ctx;
    nng_stop(rx);
    for (size_t i = 0; i < rx->n_workers; i++) {
        if (rx->workers[i].ctx_open)
            nng_ctx_close(rx->workers[i].ctx);
        if (rx->workers[i].aio)
            nng_aio_free(rx->workers[i].aio);
    }
    free(rx->workers);
    rx->workers = NULL;
    rx->n_workers = 0;
    dedup_destroy(&rx->dedup);
}

const cn_receiver_plugin cn_receiver_nng = {
    .type = "nng",
    .description = "Snapshot batches and task queries from canopy agents over nng REQ/REP (ipc://, tcp://).",
    .ctx_size = sizeof(nng_receiver),
    .options = nng_options,
    .cb_check = nng_check,
    .cb_start = nng_start,
    .cb_stop = nng_stop,
    .cb_destroy = nng_destroy,
};
