/*
 * What the skywalking receiver does with each method's messages. No sockets
 * here: sw_server.c hands in byte buffers and sends the replies.
 *
 * Attribution: a ThreadSnapshot names neither service nor instance, so a
 * stream takes them from its connection (the gRPC peer), as its agent named
 * them in reportInstanceProperties, keepAlive or getProfileTaskCommands on
 * the same channel (the Python agent opens one channel per worker and calls
 * reportInstanceProperties first).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>

#include "skywalking/v3/management.pb-c.h"
#include "skywalking/v3/profile.pb-c.h"
#include "sw_receiver.h"

struct swrx_call_state {
    char peer[128];
    char service[256], instance[256];
    bool unnamed; /* no ManagementService call named the connection: service from the first snapshot's task */
    cn_batch_builder *b;
    bool failed; /* a batch was refused: the rest of the stream is read and dropped */
    swrx_reply fail;
};

void swrx_refuse(sw_receiver *rx, swrx_reply *reply, swrx_method m, swrx_reason r, grpc_status_code code,
                 const char *peer, const char *fmt, ...)
{
    reply->status = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reply->detail, sizeof reply->detail, fmt, ap);
    va_end(ap);
    cn_metric_inc(rx->refused[r]);
    cn_metric_inc(rx->refused_by[m][r]);
    cn_log_limited(&rx->refuse_log[r], r == R_OVERLOADED || r == R_SHUTTING_DOWN ? CN_LOG_INFO : CN_LOG_WARN,
                   cn_component_id(rx->self), "refused a call from %s: %s: %s", peer, swrx_reason_labels[r],
                   reply->detail);
}

static ProtobufCMessage *unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc)
{
    grpc_byte_buffer_reader reader;
    if (!bb || !grpc_byte_buffer_reader_init(&reader, bb))
        return NULL;
    grpc_slice s = grpc_byte_buffer_reader_readall(&reader);
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    grpc_byte_buffer_reader_destroy(&reader);
    return m;
}

static grpc_byte_buffer *pack(const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    /* grpc_slice_malloc aborts rather than return NULL, as all gpr allocations do. */
    grpc_slice s = grpc_slice_malloc(len);
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static void reply_empty(swrx_reply *reply)
{
    Skywalking__V3__Commands empty = SKYWALKING__V3__COMMANDS__INIT;
    reply->status = GRPC_STATUS_OK;
    reply->message = pack(&empty.base);
}

/* Remembers what the agent on connection `peer` is; bounded by max_agents. */
static void remember_agent(sw_receiver *rx, const char *peer, const char *service, const char *instance)
{
    if (!service || !*service || !instance || !*instance)
        return;
    size_t len = strlen(service) + strlen(instance) + 2;
    swrx_agent *a = malloc(sizeof *a + len);
    if (!a)
        return; /* the stream is then named by its peer: never wrong, only less useful */
    a->seen_ms = cn_mono_ms();
    snprintf(a->ident, len, "%s\x1f%s", service, instance);
    swrx_agent *old = cn_dict_get(rx->agents, peer);
    if (old && strcmp(old->ident, a->ident) == 0) {
        old->seen_ms = a->seen_ms;
        free(a);
        return;
    }
    if (!old && (int64_t)cn_dict_size(rx->agents) >= rx->max_agents) {
        /* Full before any went idle: forget one to make room. */
        size_t pos = 0;
        const char *k;
        void *val;
        if (cn_dict_next(rx->agents, &pos, &k, &val)) {
            char key[128];
            snprintf(key, sizeof key, "%s", k);
            free(cn_dict_remove(rx->agents, key));
        }
    }
    free(cn_dict_remove(rx->agents, peer));
    if (cn_dict_put(rx->agents, peer, a) != 0)
        free(a);
    cn_metric_set(rx->connected_agents, (int64_t)cn_dict_size(rx->agents));
}

void swrx_expire_agents(sw_receiver *rx)
{
    int64_t now = cn_mono_ms();
    if (now < rx->next_agent_expiry_ms)
        return;
    /* Every 10 s, or more often for a short timeout, so an agent is forgotten at most 1.5 timeouts late. */
    rx->next_agent_expiry_ms = now + (rx->agent_idle_timeout_ms < 20000 ? rx->agent_idle_timeout_ms / 2 : 10000);
    /* Keys are collected first: the dict must not change while it is walked. */
    enum { PASS = 256 };
    char *old[PASS];
    size_t n = 0, pos = 0;
    const char *k;
    void *v;
    while (n < PASS && cn_dict_next(rx->agents, &pos, &k, &v))
        if (now - ((swrx_agent *)v)->seen_ms > rx->agent_idle_timeout_ms && (old[n] = strdup(k)))
            n++;
    for (size_t i = 0; i < n; i++) {
        free(cn_dict_remove(rx->agents, old[i]));
        free(old[i]);
    }
    cn_metric_set(rx->connected_agents, (int64_t)cn_dict_size(rx->agents));
}

swrx_call_state *swrx_stream_new(sw_receiver *rx, const char *peer)
{
    swrx_call_state *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    snprintf(st->peer, sizeof st->peer, "%s", peer);
    swrx_agent *a = cn_dict_get(rx->agents, peer);
    const char *known = a ? a->ident : NULL;
    const char *sep = known ? strchr(known, '\x1f') : NULL;
    if (a)
        a->seen_ms = cn_mono_ms();
    if (sep) {
        snprintf(st->service, sizeof st->service, "%.*s", (int)(sep - known), known);
        snprintf(st->instance, sizeof st->instance, "%s", sep + 1);
    } else {
        /* No management call on this connection yet: the instance is its address, and the service
         * the one the first snapshot's task profiles (name_from_task), else "unknown". */
        snprintf(st->service, sizeof st->service, "unknown");
        snprintf(st->instance, sizeof st->instance, "%s", peer);
        st->unnamed = true;
    }
    return st;
}

const char *swrx_stream_service(const swrx_call_state *st) { return st->service; }

/* A task is for one service: the registry names an unnamed connection's service from it. */
static void name_from_task(sw_receiver *rx, swrx_call_state *st, const char *task_id)
{
    st->unnamed = false;
    cn_task t;
    bool known = cn_tasks_get(cn_component_tasks(rx->self), task_id, &t) == 0;
    if (known) {
        if (t.service && *t.service)
            snprintf(st->service, sizeof st->service, "%s", t.service);
        cn_task_clear(&t);
    }
    cn_log_limited(&rx->refuse_log[R_MALFORMED], CN_LOG_INFO, cn_component_id(rx->self),
                   "collectSnapshot from %s before any ManagementService call on it: service \"%s\" (%s), "
                   "instance \"%s\"",
                   st->peer, st->service, known ? "its task's" : "task unknown", st->instance);
}

/* Hands the builder's batch to the pipelines; 0 once durable, else -1 with st->fail set. */
static int submit(sw_receiver *rx, swrx_call_state *st)
{
    cn_batch_builder *b = st->b;
    st->b = NULL;
    cn_batch *batch = cn_batch_builder_finish(b, ++rx->next_batch_seq);
    if (!batch) {
        swrx_refuse(rx, &st->fail, M_COLLECT_SNAPSHOT, R_INTERNAL, GRPC_STATUS_RESOURCE_EXHAUSTED, st->peer, "out of memory");
        return -1;
    }
    size_t n = batch->n_snapshots;
    cn_submit_result r = cn_receiver_submit(rx->self, batch);
    cn_batch_unref(batch);
    if (r == CN_SUBMIT_SHUTTING_DOWN) {
        swrx_refuse(rx, &st->fail, M_COLLECT_SNAPSHOT, R_SHUTTING_DOWN, GRPC_STATUS_UNAVAILABLE, st->peer,
                    "the collector is shutting down; %zu snapshots not taken", n);
        return -1;
    }
    if (r != CN_SUBMIT_OK) {
        swrx_refuse(rx, &st->fail, M_COLLECT_SNAPSHOT, R_OVERLOADED, GRPC_STATUS_UNAVAILABLE, st->peer,
                    "%s; %zu snapshots not taken",
                    r == CN_SUBMIT_MEMORY_LIMIT ? "memory limit reached"
                                                : "a pipeline queue or an exporter's spool is full",
                    n);
        return -1;
    }
    cn_metric_inc(rx->accepted_batches);
    cn_metric_add(rx->accepted_snapshots, (int64_t)n);
    return 0;
}

static int add_snapshot(sw_receiver *rx, swrx_call_state *st, const Skywalking__V3__ThreadSnapshot *s)
{
    if (st->unnamed)
        name_from_task(rx, st, s->taskid);
    if (!st->b && !(st->b = cn_batch_builder_new(st->service, st->instance)))
        return -1;
    size_t n = s->stack ? s->stack->n_codesignatures : 0;
    uint32_t *frames = malloc((n ? n : 1) * sizeof *frames), ti, si;
    int rc = frames && cn_batch_builder_string(st->b, s->taskid, &ti) == 0 &&
                     cn_batch_builder_string(st->b, s->tracesegmentid, &si) == 0
                 ? 0
                 : -1;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = cn_batch_builder_string(st->b, s->stack->codesignatures[i], &frames[i]);
    /* The agent's own sequence: downstream deduplication is by (segment, sequence). */
    if (rc == 0)
        rc = cn_batch_builder_add(st->b, ti, si, s->sequence, s->time, frames, n);
    free(frames);
    return rc;
}

int swrx_stream_message(sw_receiver *rx, swrx_call_state *st, grpc_byte_buffer *bb, swrx_reply *reply)
{
    if (st->failed)
        return 0; /* drained, so the agent is not left blocked; the reply says why */
    Skywalking__V3__ThreadSnapshot *s =
        (Skywalking__V3__ThreadSnapshot *)unpack(bb, &skywalking__v3__thread_snapshot__descriptor);
    if (!s || !*s->taskid || !*s->tracesegmentid || s->sequence < 0) {
        if (s)
            protobuf_c_message_free_unpacked(&s->base, NULL);
        swrx_refuse(rx, reply, M_COLLECT_SNAPSHOT, R_MALFORMED, GRPC_STATUS_INVALID_ARGUMENT, st->peer,
                    "a collectSnapshot message is not a ThreadSnapshot with taskId, traceSegmentId and a "
                    "sequence >= 0");
        /* What came before it is good: hand it on, so only the bad message is lost. */
        if (st->b && cn_batch_builder_count(st->b) > 0)
            submit(rx, st);
        return -1;
    }
    int rc = add_snapshot(rx, st, s);
    protobuf_c_message_free_unpacked(&s->base, NULL);
    if (rc != 0) {
        swrx_refuse(rx, &st->fail, M_COLLECT_SNAPSHOT, R_INTERNAL, GRPC_STATUS_RESOURCE_EXHAUSTED, st->peer, "out of memory");
        st->failed = true;
    } else if ((int64_t)cn_batch_builder_count(st->b) >= rx->batch_size && submit(rx, st) != 0) {
        st->failed = true;
    }
    return 0;
}

void swrx_stream_end(sw_receiver *rx, swrx_call_state *st, swrx_reply *reply)
{
    if (!st->failed && st->b && cn_batch_builder_count(st->b) > 0 && submit(rx, st) != 0)
        st->failed = true;
    if (st->failed) {
        *reply = st->fail;
        st->fail.message = NULL;
        return;
    }
    /* Every batch of the stream is durable: only now is it acknowledged. */
    reply_empty(reply);
}

void swrx_stream_free(swrx_call_state *st)
{
    cn_batch_builder_free(st->b);
    free(st);
}

/*
 * The SkyWalking agents' own ranges (the Python agent drops a command outside
 * them): Duration 1-15 min, DumpPeriod >= 10 ms, MaxSamplingCount 1-9. A
 * registry task outside them is clamped into them for these agents (canopy's
 * own agent gets it unchanged), logged with what changed.
 */
/* A cn_task_adjust_fn (arg: the receiver). */
static void clamp_task(void *arg, cn_task *t)
{
    sw_receiver *rx = arg;
    char what[160] = "";
    size_t w = 0;
    if (t->duration_ms < 60000 || t->duration_ms > 15 * 60000) {
        int64_t d = t->duration_ms < 60000 ? 60000 : 15 * 60000;
        w += (size_t)snprintf(what + w, sizeof what - w, " duration %lld ms -> %lld min", (long long)t->duration_ms,
                              (long long)d / 60000);
        t->duration_ms = d;
    }
    if (t->dump_period_ms < 10) {
        w += (size_t)snprintf(what + w, sizeof what - w, " dump_period %lld ms -> 10 ms",
                              (long long)t->dump_period_ms);
        t->dump_period_ms = 10;
    }
    if (t->max_sampling_count < 1 || t->max_sampling_count > 9) {
        int64_t m = t->max_sampling_count < 1 ? 1 : 9;
        snprintf(what + w, sizeof what - w, " max_sampling_count %lld -> %lld", (long long)t->max_sampling_count,
                 (long long)m);
        t->max_sampling_count = m;
    }
    if (what[0]) {
        cn_metric_inc(rx->clamped_tasks);
        cn_log_limited(&rx->clamp_log, CN_LOG_WARN, cn_component_id(rx->self),
                       "task %s clamped for SkyWalking agents (Duration 1-15 min, DumpPeriod >= 10 ms, "
                       "MaxSamplingCount 1-9):%s",
                       t->id, what);
    }
}

/* The registry's tasks for the agent, as SkyWalking ProfileTaskQuery commands (cn_task_commands_query). */
static void get_commands(sw_receiver *rx, const Skywalking__V3__ProfileTaskCommandQuery *q, swrx_reply *reply,
                         const char *peer)
{
    cn_task_commands cq;
    if (cn_task_commands_query(cn_component_tasks(rx->self), q->service, q->serviceinstance, q->lastcommandtime,
                                0 /* never a continuous task: the OAP's tasks end */, clamp_task, rx,
                                &cq) != 0) {
        swrx_refuse(rx, reply, M_GET_COMMANDS, R_INTERNAL, GRPC_STATUS_RESOURCE_EXHAUSTED, peer, "out of memory");
        return;
    }
    /* The wire form: one Command per task, its arguments in one array (no allocation per argument). */
    Skywalking__V3__Command *cmds = cq.n ? calloc(cq.n, sizeof *cmds) : NULL;
    Skywalking__V3__Command **cmd_ptrs = cq.n ? calloc(cq.n, sizeof *cmd_ptrs) : NULL;
    Skywalking__V3__KeyStringValuePair *kvs = cq.n ? calloc(cq.n * CN_AGENT_COMMAND_ARGS, sizeof *kvs) : NULL;
    Skywalking__V3__KeyStringValuePair **kv_ptrs = cq.n ? calloc(cq.n * CN_AGENT_COMMAND_ARGS, sizeof *kv_ptrs) : NULL;
    if (cq.n && (!cmds || !cmd_ptrs || !kvs || !kv_ptrs)) {
        swrx_refuse(rx, reply, M_GET_COMMANDS, R_INTERNAL, GRPC_STATUS_RESOURCE_EXHAUSTED, peer, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < cq.n; i++) {
        const cn_agent_command *c = &cq.commands[i];
        skywalking__v3__command__init(&cmds[i]);
        cmds[i].command = (char *)c->name;
        cmds[i].n_args = CN_AGENT_COMMAND_ARGS; /* continuous tasks (two more) are never asked for here */
        cmds[i].args = &kv_ptrs[i * CN_AGENT_COMMAND_ARGS];
        for (size_t k = 0; k < CN_AGENT_COMMAND_ARGS; k++) {
            Skywalking__V3__KeyStringValuePair *kv = &kvs[i * CN_AGENT_COMMAND_ARGS + k];
            skywalking__v3__key_string_value_pair__init(kv);
            kv->key = (char *)c->keys[k];
            kv->value = (char *)c->values[k];
            cmds[i].args[k] = kv;
        }
        cmd_ptrs[i] = &cmds[i];
    }
    Skywalking__V3__Commands out = SKYWALKING__V3__COMMANDS__INIT;
    out.n_commands = cq.n;
    out.commands = cmd_ptrs;
    reply->status = GRPC_STATUS_OK;
    reply->message = pack(&out.base);
done:
    cn_task_commands_clear(&cq);
    free(cmds);
    free(cmd_ptrs);
    free(kvs);
    free(kv_ptrs);
}

void swrx_unary(sw_receiver *rx, swrx_method m, const char *peer, grpc_byte_buffer *bb, swrx_reply *reply)
{
    static const ProtobufCMessageDescriptor *const descs[N_METHODS] = {
        [M_GET_COMMANDS] = &skywalking__v3__profile_task_command_query__descriptor,
        [M_REPORT_FINISH] = &skywalking__v3__profile_task_finish_report__descriptor,
        [M_INSTANCE_PROPERTIES] = &skywalking__v3__instance_properties__descriptor,
        [M_KEEP_ALIVE] = &skywalking__v3__instance_ping_pkg__descriptor,
    };
    ProtobufCMessage *msg = descs[m] ? unpack(bb, descs[m]) : NULL;
    if (!msg) {
        swrx_refuse(rx, reply, m, R_MALFORMED, GRPC_STATUS_INVALID_ARGUMENT, peer, "%s: not a valid %s message",
                    swrx_method_labels[m], descs[m] ? descs[m]->name : "request");
        return;
    }
    switch (m) {
    case M_GET_COMMANDS: {
        Skywalking__V3__ProfileTaskCommandQuery *q = (Skywalking__V3__ProfileTaskCommandQuery *)msg;
        remember_agent(rx, peer, q->service, q->serviceinstance);
        get_commands(rx, q, reply, peer);
        break;
    }
    case M_REPORT_FINISH: {
        Skywalking__V3__ProfileTaskFinishReport *f = (Skywalking__V3__ProfileTaskFinishReport *)msg;
        cn_info(cn_component_id(rx->self), "%.64s (service %.64s, %s) reports task %.128s finished",
                f->serviceinstance, f->service, peer, f->taskid);
        cn_tasks_report_finish(cn_component_tasks(rx->self), f->service, f->serviceinstance, f->taskid);
        reply_empty(reply);
        break;
    }
    case M_INSTANCE_PROPERTIES: {
        /* Answered here: no upstream OAP (with one, the call passes through). */
        Skywalking__V3__InstanceProperties *p = (Skywalking__V3__InstanceProperties *)msg;
        remember_agent(rx, peer, p->service, p->serviceinstance);
        reply_empty(reply);
        break;
    }
    case M_KEEP_ALIVE: {
        Skywalking__V3__InstancePingPkg *p = (Skywalking__V3__InstancePingPkg *)msg;
        remember_agent(rx, peer, p->service, p->serviceinstance);
        reply_empty(reply);
        break;
    }
    default: break;
    }
    protobuf_c_message_free_unpacked(msg, NULL);
}

void swrx_observe_management(sw_receiver *rx, swrx_method m, const char *peer, grpc_byte_buffer *bb)
{
    /* A reader leaves the buffer as it was: the same bytes still go upstream. */
    ProtobufCMessage *msg = unpack(bb, m == M_KEEP_ALIVE ? &skywalking__v3__instance_ping_pkg__descriptor
                                                         : &skywalking__v3__instance_properties__descriptor);
    if (!msg) /* not ours to judge: the OAP answers it */
        return;
    if (m == M_KEEP_ALIVE) {
        const Skywalking__V3__InstancePingPkg *p = (const Skywalking__V3__InstancePingPkg *)msg;
        remember_agent(rx, peer, p->service, p->serviceinstance);
    } else {
        const Skywalking__V3__InstanceProperties *p = (const Skywalking__V3__InstanceProperties *)msg;
        remember_agent(rx, peer, p->service, p->serviceinstance);
    }
    protobuf_c_message_free_unpacked(msg, NULL);
}
