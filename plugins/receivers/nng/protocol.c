/*
 * The nng receiver's request protocol: a canopy.v1 Request's bytes in, the
 * Reply's bytes out. A batch is deduplicated, then acked only once
 * cn_receiver_submit took it; anything refused gets a reason, a counter
 * (per reason and per limit) and a log line at most once per interval per
 * reason, so one flood never hides another refusal. No sockets here:
 * tests/unit/test_nng_protocol.c drives it on raw bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nng_receiver.h"

/* Index = Canopy__V1__Reason; metric label values. */
const char *const nngrx_reason_labels[N_REASONS] = {
    "ok", "duplicate", "malformed", "unsupported_version", "index_out_of_range", "limit_exceeded",
    "too_large", "invalid", "overloaded", "shutting_down", "internal",
};

const char *const nngrx_limit_labels[N_LIMITS] = {
    "max_message_size", "max_snapshots_per_batch", "max_strings_per_batch", "max_string_length", "max_frames",
    "other", "memory_limit", "queue_or_spool_full",
};

nng_msg *nngrx_reply_msg(const Canopy__V1__Reply *reply)
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
nng_msg *nngrx_refuse(nng_receiver *rx, Canopy__V1__Reason reason, limit_kind limit, uint64_t batch_seq,
                       const char *detail, const char *who)
{
    size_t r = (size_t)reason < N_REASONS ? (size_t)reason : CANOPY__V1__REASON__REASON_INTERNAL;
    cn_metric_inc(rx->refused[r]);
    cn_log_level level = reason_retryable(reason) ? CN_LOG_INFO : CN_LOG_WARN;
    if (reason == CANOPY__V1__REASON__REASON_LIMIT_EXCEEDED || reason == CANOPY__V1__REASON__REASON_TOO_LARGE) {
        cn_metric_inc(rx->limit_exceeded[limit]);
        cn_log_limited(&rx->limit_log[limit], level, cn_component_id(rx->self), "refused a request from %s: %s: %s",
                       who, nngrx_limit_labels[limit], detail);
    } else {
        cn_log_limited(&rx->refuse_log[r], level, cn_component_id(rx->self), "refused a request from %s: %s: %s",
                       who, nngrx_reason_labels[r], detail);
    }
    Canopy__V1__Reply reply = CANOPY__V1__REPLY__INIT;
    reply.reason = reason;
    reply.retryable = reason_retryable(reason);
    reply.detail = (char *)detail;
    reply.batch_seq = batch_seq;
    return nngrx_reply_msg(&reply);
}

/* A retryable refusal because a service limit was met; counted under that limit too. */
static nng_msg *refuse_overloaded(nng_receiver *rx, limit_kind k, uint64_t batch_seq, const char *detail,
                                  const char *who)
{
    cn_metric_inc(rx->refused[CANOPY__V1__REASON__REASON_OVERLOADED]);
    cn_metric_inc(rx->limit_exceeded[k]);
    cn_log_limited(&rx->limit_log[k], CN_LOG_INFO, cn_component_id(rx->self), "refused a batch from %s: %s: %s", who,
                   nngrx_limit_labels[k], detail);
    Canopy__V1__Reply reply = CANOPY__V1__REPLY__INIT;
    reply.reason = CANOPY__V1__REASON__REASON_OVERLOADED;
    reply.retryable = true;
    reply.detail = (char *)detail;
    reply.batch_seq = batch_seq;
    return nngrx_reply_msg(&reply);
}

static nng_msg *ack(uint64_t batch_seq, Canopy__V1__Reason reason)
{
    Canopy__V1__Reply reply = CANOPY__V1__REPLY__INIT;
    reply.reason = reason;
    reply.batch_seq = batch_seq;
    return nngrx_reply_msg(&reply);
}

static nng_msg *handle_batch(nng_receiver *rx, cn_batch *b, const char *who)
{
    const cn_agent_identity *agent = b->agent;
    dedup_result dr = dedup_claim(&rx->dedup, agent->instance, agent->session, b->batch_seq, b->received_ms);
    if (dr == DEDUP_SEEN) {
        cn_metric_inc(rx->duplicates);
        return ack(b->batch_seq, CANOPY__V1__REASON__REASON_DUPLICATE);
    }
    if (dr == DEDUP_NO_MEMORY)
        return nngrx_refuse(rx, CANOPY__V1__REASON__REASON_OVERLOADED, LIMIT_OTHER, b->batch_seq, "out of memory", who);
    cn_submit_result sr = cn_receiver_submit(rx->self, b);
    if (sr != CN_SUBMIT_OK) {
        dedup_release(&rx->dedup, agent->instance, agent->session, b->batch_seq);
        if (sr == CN_SUBMIT_SHUTTING_DOWN)
            return nngrx_refuse(rx, CANOPY__V1__REASON__REASON_SHUTTING_DOWN, LIMIT_OTHER, b->batch_seq,
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
    cn_task_commands q;
    if (cn_task_commands_query(cn_component_tasks(rx->self), req->agent->service, req->agent->instance,
                                req->command_query->last_command_time, CN_TASKS_WITH_CONTINUOUS, NULL, NULL,
                                &q) != 0)
        return nngrx_refuse(rx, CANOPY__V1__REASON__REASON_INTERNAL, LIMIT_OTHER, 0, "out of memory",
                            req->agent->instance);
    /* The wire form: one Command per task, its arguments in one array (no allocation per argument). */
    Canopy__V1__Command *cmds = q.n ? calloc(q.n, sizeof *cmds) : NULL;
    Canopy__V1__Command **cmd_ptrs = q.n ? calloc(q.n, sizeof *cmd_ptrs) : NULL;
    Canopy__V1__KeyStringValuePair *kvs = q.n ? calloc(q.n * CN_AGENT_COMMAND_MAX_ARGS, sizeof *kvs) : NULL;
    Canopy__V1__KeyStringValuePair **kv_ptrs = q.n ? calloc(q.n * CN_AGENT_COMMAND_MAX_ARGS, sizeof *kv_ptrs) : NULL;
    nng_msg *msg = NULL;
    if (q.n && (!cmds || !cmd_ptrs || !kvs || !kv_ptrs)) {
        msg = nngrx_refuse(rx, CANOPY__V1__REASON__REASON_INTERNAL, LIMIT_OTHER, 0, "out of memory",
                           req->agent->instance);
        goto done;
    }
    for (size_t i = 0; i < q.n; i++) {
        const cn_agent_command *c = &q.commands[i];
        canopy__v1__command__init(&cmds[i]);
        cmds[i].command = (char *)c->name;
        cmds[i].n_args = c->n_args;
        cmds[i].args = &kv_ptrs[i * CN_AGENT_COMMAND_MAX_ARGS];
        for (size_t k = 0; k < c->n_args; k++) {
            Canopy__V1__KeyStringValuePair *kv = &kvs[i * CN_AGENT_COMMAND_MAX_ARGS + k];
            canopy__v1__key_string_value_pair__init(kv);
            kv->key = (char *)c->keys[k];
            kv->value = (char *)c->values[k];
            cmds[i].args[k] = kv;
        }
        cmd_ptrs[i] = &cmds[i];
    }
    Canopy__V1__Reply reply = CANOPY__V1__REPLY__INIT;
    reply.n_commands = q.n;
    reply.commands = cmd_ptrs;
    msg = nngrx_reply_msg(&reply);
    /* Agents ask every few seconds: a cheap moment to refresh this gauge. */
    cn_metric_set(rx->agent_sessions, (int64_t)dedup_sessions(&rx->dedup));
done:
    cn_task_commands_clear(&q);
    free(cmds);
    free(cmd_ptrs);
    free(kvs);
    free(kv_ptrs);
    return msg;
}

nng_msg *nngrx_handle_request(nng_receiver *rx, const void *data, size_t len, const char *peer)
{
    cn_metric_add(rx->received_bytes, (int64_t)len);
    char who[192];
    snprintf(who, sizeof who, "%s", peer);
    if (len > (size_t)rx->max_message_size) {
        cn_metric_inc(rx->requests[3]);
        char detail[128];
        snprintf(detail, sizeof detail, "message of %zu bytes exceeds max_message_size %lld", len,
                 (long long)rx->max_message_size);
        return nngrx_refuse(rx, CANOPY__V1__REASON__REASON_TOO_LARGE, LIMIT_MESSAGE_SIZE, 0, detail, who);
    }
    Canopy__V1__Request *req;
    cn_arena *arena;
    cn_batch *batch;
    cn_refusal why = {0};
    Canopy__V1__Reason reason = cn_request_decode(data, len, &rx->limits, &req, &arena, &batch, &why);
    if (reason != CANOPY__V1__REASON__REASON_OK) {
        cn_metric_inc(rx->requests[3]);
        return nngrx_refuse(rx, reason, limit_of(why.limit), 0, why.detail, who);
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
        reply = nngrx_refuse(rx, CANOPY__V1__REASON__REASON_INVALID, LIMIT_OTHER, 0, "unknown request body", who);
        break;
    }
    cn_arena_free(arena);
    return reply;
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
        snprintf(l, sizeof l, "%s,reason=\"%s\"", labels, nngrx_reason_labels[i]);
        rx->refused[i] = cn_counter("canopy_receiver_refused_total",
                                    "Requests refused with an error reply, by reason.", l);
    }
    rx->refused[0] = rx->refused[1] = rx->refused[2];
    for (size_t i = 0; i < N_LIMITS; i++) {
        snprintf(l, sizeof l, "%s,limit=\"%s\"", labels, nngrx_limit_labels[i]);
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
    rx->intake_pauses = cn_counter("canopy_receiver_intake_pauses_total",
                                   "Times a context waited before taking a request because the service was over "
                                   "memory_limit (up to 250 ms each; the requests wait in their connections).",
                                   labels);
    rx->accepted_batches =
        cn_counter("canopy_receiver_accepted_batches_total", "Batches acked into the pipelines.", labels);
    rx->accepted_snapshots = cn_counter("canopy_receiver_accepted_snapshots_total",
                                        "Snapshots acked into the pipelines.", labels);
    rx->received_bytes = cn_counter("canopy_receiver_received_bytes_total", "Bytes of requests received.", labels);
    rx->duplicates = cn_counter("canopy_receiver_duplicate_batches_total",
                                "Batches received again after they were accepted (acked, not resubmitted).", labels);
    rx->agent_sessions =
        cn_gauge("canopy_receiver_agent_sessions", "Agent sessions tracked for deduplication.", labels);
    rx->evicted_sessions = cn_counter("canopy_receiver_evicted_sessions_total",
                                      "Agent sessions forgotten by deduplication because max_agent_sessions was "
                                      "reached (a resend from one of them would be accepted again).",
                                      labels);
    rx->session_log.interval_ms = 10000;
}

int nngrx_protocol_init(nng_receiver *rx, cn_component *self)
{
    rx->self = self;
    rx->limits = (cn_batch_limits){rx->max_snapshots_per_batch, rx->max_strings_per_batch, rx->max_string_length,
                                   rx->max_frames};
    make_metrics(rx);
    return dedup_init(&rx->dedup, (size_t)rx->max_agent_sessions);
}
