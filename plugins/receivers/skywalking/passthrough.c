/*
 * Pass-through: every SkyWalking service other than ProfileTask (segments,
 * logs, meters, management, configuration discovery, events, any method at
 * all) is forwarded to the `upstream` exporter's OAP, so an agent needs one
 * address, as with Satellite. Traces matter most: the SkyWalking UI shows a
 * profile only next to its trace segments.
 *
 * Messages go through as the byte buffers gRPC hands us, never decoded and
 * re-encoded, so an OAP newer than our protos still gets exactly what the
 * agent sent. The server never registers methods, so every call reaches
 * grpc_server_request_call (sw_server.c), which hands the unknown ones here;
 * the upstream call is grpc_channel_create_call with the same path on the
 * exporter's channel (one per endpoint; gRPC's shared subchannel pool lets
 * the exporter, the task source and this use one connection).
 *
 * A proxied call is two calls and three chains of operations on rx->cq, at
 * most one batch outstanding in each, so each chain's tag is fixed:
 *   up     agent RECV_MESSAGE -> upstream SEND_MESSAGE -> ... -> upstream
 *          SEND_CLOSE_FROM_CLIENT at the agent's half-close
 *   down   upstream RECV_INITIAL_METADATA -> RECV_MESSAGE -> agent
 *          SEND_MESSAGE -> ... until the upstream has no more
 *   status upstream RECV_STATUS_ON_CLIENT; once it is in and `down` is
 *          done, the agent gets the same code and message (the `finish`
 *          batch). The proxy is freed when nothing is outstanding.
 * The upstream call is the server call's child (GRPC_PROPAGATE_DEFAULTS), so
 * the agent's deadline and its cancellation carry over without our help.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "sw_receiver.h"

typedef struct pt_tag {
    int kind; /* SWRX_TAG_PROXY; first, as the server loop reads it */
    struct swrx_proxy *p;
    int chain;
} pt_tag;

enum { CH_UP, CH_DOWN, CH_STATUS, CH_FINISH, N_CHAINS };
typedef enum { UP_READ, UP_SEND, UP_CLOSE } up_phase;
typedef enum { DOWN_META, DOWN_READ, DOWN_SEND } down_phase;

typedef struct swrx_proxy {
    pt_tag tags[N_CHAINS];
    sw_receiver *rx;
    grpc_call *sc, *uc; /* the agent's (server) call, the upstream (client) call */
    grpc_call_details details;
    grpc_metadata_array agent_md, up_initial_md, up_trailing_md;
    grpc_metadata *fwd_md; /* what the upstream gets: the agent's metadata, our token */
    size_t n_fwd_md;
    sw_endpoint *ep;
    grpc_byte_buffer *up_msg, *down_msg;
    grpc_status_code status;
    grpc_slice status_details;
    int cancelled;
    int pending;            /* batches outstanding */
    up_phase up;
    down_phase down;
    bool up_done, down_done, status_in, finishing, agent_md_sent, got_up_md, ended_by_us;
    swrx_method method;     /* ManagementService's are observed */
    int label;              /* swrx_pt_labels index */
    int64_t started_ms;     /* monotonic */
    char peer[128];
    struct swrx_proxy *prev, *next; /* rx->proxies */
} swrx_proxy;

const char *const swrx_pt_labels[N_PT_METHODS] = {
    "other",
    "TraceSegmentReportService/collect",
    "TraceSegmentReportService/collectInSync",
    "LogReportService/collect",
    "MeterReportService/collect",
    "MeterReportService/collectBatch",
    "JVMMetricReportService/collect",
    "CLRMetricReportService/collect",
    "ManagementService/reportInstanceProperties",
    "ManagementService/keepAlive",
    "ConfigurationDiscoveryService/fetchConfigurations",
    "EventService/collect",
    "BrowserPerfService/collectPerfData",
    "BrowserPerfService/collectErrorLogs",
    "ProcessService/reportProcesses",
    "ContinuousProfilingService/queryPolicies",
    "ProfileTask/goProfileReport",
    "EBPFProfilingService/collectProfilingData",
    "SpanAttachedEventReportService/collect",
    "JFRService/collect",
};

int swrx_pt_method(grpc_slice path)
{
    size_t len = GRPC_SLICE_LENGTH(path);
    const char *p = (const char *)GRPC_SLICE_START_PTR(path);
    if (len > 0 && p[0] == '/') {
        p++;
        len--;
    }
    if (len > 14 && memcmp(p, "skywalking.v3.", 14) == 0) {
        p += 14;
        len -= 14;
    }
    for (int i = 1; i < N_PT_METHODS; i++)
        if (strlen(swrx_pt_labels[i]) == len && memcmp(swrx_pt_labels[i], p, len) == 0)
            return i;
    return PT_OTHER;
}

/* ---- set-up ---------------------------------------------------------------- */

int swrx_upstream_start(sw_receiver *rx)
{
    if (!rx->upstream)
        return 0;
    const char *id = cn_component_id(rx->self);
    const cn_node *node = NULL;
    const char *type = NULL;
    if (!cn_component_peer(rx->self, CN_EXPORTER, rx->upstream, &node, &type) || strcmp(type, "skywalking") != 0) {
        cn_error(id, "upstream \"%s\" is not a configured skywalking exporter", rx->upstream);
        return -1;
    }
    /* The exporter's own options, as its check already accepted them: same OAPs, TLS and token. */
    cn_node view;
    if (cn_node_view(&view, node, sw_client_options, true) != 0) {
        cn_error(id, "out of memory");
        return -1;
    }
    cn_diag scratch = {0};
    rx->up_applied = true;
    int rc = cn_options_apply(sw_client_options, &rx->up, &view, &scratch);
    cn_diag_free(&scratch);
    cn_node_view_free(&view);
    if (rc != 0 || sw_client_setup(&rx->up, id, node) != 0) {
        cn_error(id, "cannot set up the channel to upstream %s's OAPs", rx->upstream);
        return -1;
    }
    rx->up_ready = true;
    cn_info(id, "other SkyWalking services pass through to %s (%zu endpoint%s, %s), at most %lld calls at once",
            rx->upstream, rx->up.n_eps, rx->up.n_eps == 1 ? "" : "s", rx->up.tls_enabled ? "TLS" : "plaintext",
            (long long)rx->max_passthrough_calls);
    return 0;
}

void swrx_upstream_destroy(sw_receiver *rx)
{
    rx->up_ready = false;
    if (rx->up_applied || rx->up.grpc_started) {
        sw_client_teardown(&rx->up, rx->up_applied ? sw_client_options : NULL);
        rx->up_applied = false;
    }
}

/* ---- one proxied call ------------------------------------------------------ */

static void proxy_free(swrx_proxy *p)
{
    sw_receiver *rx = p->rx;
    if (p->prev)
        p->prev->next = p->next;
    else
        rx->proxies = p->next;
    if (p->next)
        p->next->prev = p->prev;
    rx->n_proxies--;
    cn_metric_set(rx->pt_in_flight, rx->n_proxies);
    if (p->up_msg)
        grpc_byte_buffer_destroy(p->up_msg);
    if (p->down_msg)
        grpc_byte_buffer_destroy(p->down_msg);
    grpc_slice_unref(p->status_details);
    free(p->fwd_md);
    grpc_metadata_array_destroy(&p->up_initial_md);
    grpc_metadata_array_destroy(&p->up_trailing_md);
    if (p->uc)
        grpc_call_unref(p->uc);
    /* The agent's metadata slices belong to its call: unref the call last. */
    grpc_metadata_array_destroy(&p->agent_md);
    grpc_call_details_destroy(&p->details);
    if (p->sc)
        grpc_call_unref(p->sc);
    free(p);
}

/* Starts one batch of a chain; false (the chain is over) when gRPC refuses it. */
static bool start(swrx_proxy *p, grpc_call *call, const grpc_op *ops, size_t n, int chain)
{
    if (grpc_call_start_batch(call, ops, n, &p->tags[chain], NULL) != GRPC_CALL_OK) {
        cn_error(cn_component_id(p->rx->self), "pass-through of %s from %s: cannot start a batch",
                 swrx_pt_labels[p->label], p->peer);
        return false;
    }
    p->pending++;
    return true;
}

/* Sends the upstream's status to the agent, once it is in and every upstream message was passed on. */
static void maybe_finish(swrx_proxy *p)
{
    if (p->finishing || !p->status_in || !p->down_done)
        return;
    p->finishing = true;
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!p->agent_md_sent) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        p->agent_md_sent = true;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = p->status;
    ops[n++].data.send_status_from_server.status_details =
        GRPC_SLICE_LENGTH(p->status_details) ? &p->status_details : NULL;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = &p->cancelled;
    start(p, p->sc, ops, n, CH_FINISH);
}

static void up_read(swrx_proxy *p)
{
    grpc_op op = {.op = GRPC_OP_RECV_MESSAGE};
    op.data.recv_message.recv_message = &p->up_msg;
    p->up = UP_READ;
    if (!start(p, p->sc, &op, 1, CH_UP)) {
        p->up_done = true;
        grpc_call_cancel(p->uc, NULL);
    }
}

static void down_read(swrx_proxy *p)
{
    grpc_op op = {.op = GRPC_OP_RECV_MESSAGE};
    op.data.recv_message.recv_message = &p->down_msg;
    p->down = DOWN_READ;
    if (!start(p, p->uc, &op, 1, CH_DOWN))
        p->down_done = true;
}

/* The agent -> OAP chain. */
static void on_up(swrx_proxy *p, bool ok)
{
    sw_receiver *rx = p->rx;
    switch (p->up) {
    case UP_READ:
        if (!ok) { /* the agent went away or was cancelled; the child call is cancelled with it */
            p->up_done = true;
            grpc_call_cancel(p->uc, NULL);
            return;
        }
        if (p->status_in) { /* the upstream already answered: nothing more to carry */
            p->up_done = true;
            return;
        }
        if (!p->up_msg) { /* half-close */
            grpc_op op = {.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT};
            p->up = UP_CLOSE;
            if (!start(p, p->uc, &op, 1, CH_UP))
                p->up_done = true;
            return;
        }
        cn_metric_add(rx->pt_bytes_up[p->label], grpc_byte_buffer_length(p->up_msg));
        if (p->method == M_INSTANCE_PROPERTIES || p->method == M_KEEP_ALIVE)
            swrx_observe_management(rx, p->method, p->peer, p->up_msg);
        grpc_op op = {.op = GRPC_OP_SEND_MESSAGE};
        op.data.send_message.send_message = p->up_msg;
        p->up = UP_SEND;
        if (!start(p, p->uc, &op, 1, CH_UP)) {
            p->up_done = true;
            grpc_call_cancel(p->uc, NULL);
        }
        return;
    case UP_SEND:
        grpc_byte_buffer_destroy(p->up_msg);
        p->up_msg = NULL;
        if (!ok || p->status_in) { /* the upstream call is over; its status says why */
            p->up_done = true;
            return;
        }
        up_read(p);
        return;
    case UP_CLOSE: p->up_done = true; return;
    }
}

/* The OAP -> agent chain. */
static void on_down(swrx_proxy *p, bool ok)
{
    sw_receiver *rx = p->rx;
    switch (p->down) {
    case DOWN_META:
        p->got_up_md = ok;
        down_read(p);
        break;
    case DOWN_READ:
        p->got_up_md = true;
        if (!ok || !p->down_msg) {
            p->down_done = true;
            break;
        }
        cn_metric_add(rx->pt_bytes_down[p->label], grpc_byte_buffer_length(p->down_msg));
        grpc_op ops[2];
        memset(ops, 0, sizeof ops);
        size_t n = 0;
        if (!p->agent_md_sent) {
            ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
            p->agent_md_sent = true;
        }
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = p->down_msg;
        p->down = DOWN_SEND;
        if (!start(p, p->sc, ops, n, CH_DOWN)) {
            p->down_done = true;
            grpc_call_cancel(p->uc, NULL);
        }
        break;
    case DOWN_SEND:
        grpc_byte_buffer_destroy(p->down_msg);
        p->down_msg = NULL;
        if (!ok) { /* the agent is gone */
            p->down_done = true;
            grpc_call_cancel(p->uc, NULL);
            break;
        }
        down_read(p);
        break;
    }
    maybe_finish(p);
}

static void on_status(swrx_proxy *p)
{
    sw_receiver *rx = p->rx;
    p->status_in = true;
    if (p->status != GRPC_STATUS_OK) {
        cn_metric_inc(rx->pt_errors[p->label]);
        sw_rpc_status st = {.code = p->status, .cancelled_by_us = p->ended_by_us};
        snprintf(st.detail, sizeof st.detail, "%.*s", (int)GRPC_SLICE_LENGTH(p->status_details),
                 (const char *)GRPC_SLICE_START_PTR(p->status_details));
        /* UNAVAILABLE marks the endpoint down for a while, so the next calls try the others first. */
        if (p->status == GRPC_STATUS_UNAVAILABLE)
            sw_endpoint_result(&rx->up, p->ep, &st);
    } else if (p->ep->fails > 0) {
        sw_rpc_status st = {.code = GRPC_STATUS_OK};
        sw_endpoint_result(&rx->up, p->ep, &st);
    }
    /* An agent still streaming has a read pending: it ends when the status goes out. */
    maybe_finish(p);
}

void swrx_proxy_event(void *tag, bool ok)
{
    pt_tag *t = tag;
    swrx_proxy *p = t->p;
    p->pending--;
    switch (t->chain) {
    case CH_UP: on_up(p, ok); break;
    case CH_DOWN: on_down(p, ok); break;
    case CH_STATUS: on_status(p); break;
    case CH_FINISH: break;
    }
    if (p->pending == 0)
        proxy_free(p);
}

/* The agent's metadata minus what is hop-by-hop or ours to set; the upstream's token in place of the agent's. */
static int forward_metadata(swrx_proxy *p)
{
    const grpc_metadata_array *md = &p->agent_md;
    p->fwd_md = calloc(md->count + 1, sizeof *p->fwd_md);
    if (!p->fwd_md)
        return -1;
    for (size_t i = 0; i < md->count; i++) {
        grpc_slice k = md->metadata[i].key;
        const char *ks = (const char *)GRPC_SLICE_START_PTR(k);
        size_t kl = GRPC_SLICE_LENGTH(k);
        if (kl == 0 || ks[0] == ':' || (kl >= 5 && memcmp(ks, "grpc-", 5) == 0) ||
            grpc_slice_str_cmp(k, "authentication") == 0 || grpc_slice_str_cmp(k, "user-agent") == 0 ||
            grpc_slice_str_cmp(k, "te") == 0 || grpc_slice_str_cmp(k, "content-type") == 0 ||
            grpc_slice_str_cmp(k, "host") == 0)
            continue;
        p->fwd_md[p->n_fwd_md++] = md->metadata[i];
    }
    if (p->rx->up.authentication) {
        grpc_metadata *m = &p->fwd_md[p->n_fwd_md++];
        m->key = grpc_slice_from_static_string("authentication");
        m->value = grpc_slice_from_static_string(p->rx->up.authentication);
    }
    return 0;
}

int swrx_proxy_start(sw_receiver *rx, grpc_call **call, grpc_call_details *details, grpc_metadata_array *md,
                     const char *peer, swrx_method m, swrx_reply *reply)
{
    int label = swrx_pt_method(details->method);
    if (rx->n_proxies >= rx->max_passthrough_calls) {
        swrx_refuse(rx, reply, m, R_PASSTHROUGH_FULL, GRPC_STATUS_RESOURCE_EXHAUSTED, peer,
                    "%s: %lld pass-through calls already in flight to the upstream OAP (max_passthrough_calls)",
                    swrx_pt_labels[label], (long long)rx->max_passthrough_calls);
        return -1;
    }
    swrx_proxy *p = calloc(1, sizeof *p);
    if (!p) {
        swrx_refuse(rx, reply, m, R_INTERNAL, GRPC_STATUS_RESOURCE_EXHAUSTED, peer, "out of memory");
        return -1;
    }
    for (int i = 0; i < N_CHAINS; i++)
        p->tags[i] = (pt_tag){.kind = SWRX_TAG_PROXY, .p = p, .chain = i};
    p->rx = rx;
    p->method = m;
    p->label = label;
    p->status_details = grpc_empty_slice();
    p->started_ms = cn_mono_ms();
    snprintf(p->peer, sizeof p->peer, "%s", peer);
    grpc_metadata_array_init(&p->up_initial_md);
    grpc_metadata_array_init(&p->up_trailing_md);
    /* Take the call over; the caller's copies are reset so it frees nothing of ours. */
    p->sc = *call;
    p->details = *details;
    p->agent_md = *md;
    *call = NULL;
    grpc_call_details_init(details);
    grpc_metadata_array_init(md);
    p->prev = NULL;
    p->next = rx->proxies;
    if (p->next)
        p->next->prev = p;
    rx->proxies = p;
    rx->n_proxies++;
    cn_metric_set(rx->pt_in_flight, rx->n_proxies);
    cn_metric_inc(rx->pt_calls[label]);

    if (forward_metadata(p) != 0) {
        p->status = GRPC_STATUS_RESOURCE_EXHAUSTED;
        p->status_details = grpc_slice_from_static_string("out of memory");
        goto local_status;
    }
    p->ep = sw_pick_endpoint(&rx->up);
    /* Deadline: the agent's, through the parent call; none of our own. */
    p->uc = grpc_channel_create_call(p->ep->channel, p->sc, GRPC_PROPAGATE_DEFAULTS, rx->cq, p->details.method,
                                     NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (!p->uc) {
        p->status = GRPC_STATUS_INTERNAL;
        p->status_details = grpc_slice_from_static_string("cannot create the upstream call");
        goto local_status;
    }
    grpc_op st = {.op = GRPC_OP_RECV_STATUS_ON_CLIENT};
    st.data.recv_status_on_client.trailing_metadata = &p->up_trailing_md;
    st.data.recv_status_on_client.status = &p->status;
    st.data.recv_status_on_client.status_details = &p->status_details;
    grpc_op meta[2];
    memset(meta, 0, sizeof meta);
    meta[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    meta[0].data.send_initial_metadata.count = p->n_fwd_md;
    meta[0].data.send_initial_metadata.metadata = p->fwd_md;
    /* No wait_for_ready: with the OAP down the call fails at once with UNAVAILABLE instead of queueing. */
    meta[1].op = GRPC_OP_RECV_INITIAL_METADATA;
    meta[1].data.recv_initial_metadata.recv_initial_metadata = &p->up_initial_md;
    p->down = DOWN_META;
    if (!start(p, p->uc, &st, 1, CH_STATUS)) {
        p->status = GRPC_STATUS_INTERNAL;
        p->status_details = grpc_slice_from_static_string("cannot start the upstream call");
        goto local_status;
    }
    if (!start(p, p->uc, meta, 2, CH_DOWN)) {
        p->down_done = true;
        grpc_call_cancel(p->uc, NULL);
    }
    up_read(p);
    return 0;

local_status: /* nothing upstream: answer the agent from here */
    cn_metric_inc(rx->pt_errors[label]);
    p->status_in = p->down_done = p->up_done = true;
    maybe_finish(p);
    if (p->pending == 0)
        proxy_free(p);
    return 0;
}

void swrx_proxy_cancel_all(sw_receiver *rx)
{
    for (swrx_proxy *p = rx->proxies; p; p = p->next) {
        if (p->status_in || p->ended_by_us || !p->uc)
            continue;
        p->ended_by_us = true;
        grpc_call_cancel_with_status(p->uc, GRPC_STATUS_UNAVAILABLE, "canopy is shutting down", NULL);
    }
}

/*
 * gRPC queues a call while its channel is connecting, and connecting to an
 * address that drops packets takes minutes: a proxied call that has heard
 * nothing from the upstream after upstream_connect_timeout while the channel
 * is still not READY ends with UNAVAILABLE, so agents never hang on a dead
 * OAP. Calls open past max_call_duration end as on the served path.
 */
void swrx_proxy_sweep(sw_receiver *rx)
{
    int64_t now = cn_mono_ms();
    if (!rx->proxies || now < rx->next_proxy_sweep_ms)
        return;
    rx->next_proxy_sweep_ms = now + 200;
    for (swrx_proxy *p = rx->proxies; p; p = p->next) {
        if (p->status_in || p->ended_by_us || !p->uc)
            continue;
        int64_t age = now - p->started_ms;
        if (!p->got_up_md && age > rx->upstream_connect_timeout_ms &&
            grpc_channel_check_connectivity_state(p->ep->channel, 0) != GRPC_CHANNEL_READY) {
            p->ended_by_us = true;
            char why[256];
            snprintf(why, sizeof why, "upstream OAP %s not reachable within upstream_connect_timeout (%lld ms)",
                     p->ep->target, (long long)rx->upstream_connect_timeout_ms);
            grpc_call_cancel_with_status(p->uc, GRPC_STATUS_UNAVAILABLE, why, NULL);
        } else if (age > rx->max_call_duration_ms) {
            p->ended_by_us = true;
            swrx_reply r = {0};
            swrx_refuse(rx, &r, p->method, R_TOO_LONG, GRPC_STATUS_DEADLINE_EXCEEDED, p->peer,
                        "%s open for over max_call_duration (%lld ms); ended", swrx_pt_labels[p->label],
                        (long long)rx->max_call_duration_ms);
            grpc_call_cancel_with_status(p->uc, GRPC_STATUS_DEADLINE_EXCEEDED, r.detail, NULL);
        }
    }
}
