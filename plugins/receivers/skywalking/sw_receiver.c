/*
 * Receiver `skywalking`: SkyWalking agents (Python, Java, Go, ...) point
 * SW_AGENT_COLLECTOR_BACKEND_SERVICES at canopy and report as to an OAP.
 * Their snapshots go through the same durable intake as canopy's own
 * agent's; their task queries are answered from the same registry. See
 * sw_receiver.h for the files.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sw_receiver.h"

const char *const swrx_method_labels[N_METHODS] = {
    "collectSnapshot", "getProfileTaskCommands", "reportTaskFinish", "reportInstanceProperties", "keepAlive",
    "other",
};
const char *const swrx_reason_labels[N_REASONS] = {
    "unauthenticated", "malformed", "stream_error", "too_long", "no_upstream", "overloaded", "shutting_down",
    "internal", "passthrough_full", "connections",
};


static const cn_option sw_options[] = {
    {CN_OPT_STR, "listen", "127.0.0.1:11800", offsetof(sw_receiver, listen),
     "host:port of the gRPC server (SkyWalking's own port by default). Plaintext must be on a loopback "
     "address unless allow_insecure is true; with tls it may be any."},
    {CN_OPT_BOOL, "allow_insecure", "false", offsetof(sw_receiver, allow_insecure),
     "Allow plaintext gRPC on a non-loopback address (anyone who can reach the port can send data and read "
     "task definitions). Prefer tls with client_auth: required."},
    {CN_OPT_MAP, "tls", NULL, offsetof(sw_receiver, tls),
     "TLS of the gRPC server (agents: SW_AGENT_FORCE_TLS and their CA); plaintext when absent.",
     .sub = cn_server_tls_options},
    {CN_OPT_STR, "authentication", NULL, offsetof(sw_receiver, authentication),
     "Token every call must carry as the `authentication` metadata (SW_AGENT_AUTHENTICATION on the agents); "
     "calls without it get UNAUTHENTICATED and are counted. None: no check."},
    {CN_OPT_SIZE, "max_message_size", "4MiB", offsetof(sw_receiver, max_message_size),
     "Largest gRPC message accepted; a larger one fails its call with RESOURCE_EXHAUSTED and is counted "
     "(reason stream_error).",
     .min = 1024, .max = 1LL << 30},
    {CN_OPT_INT, "max_streams_per_connection", "100", offsetof(sw_receiver, max_streams_per_connection),
     "Calls one agent connection may have open at once (HTTP/2 concurrent streams).", .min = 1, .max = 100000},
    {CN_OPT_INT, "max_connections", "1024", offsetof(sw_receiver, max_connections),
     "Agent connections open at once; further ones are closed as soon as they are accepted, counted "
     "(canopy_receiver_refused_total, reason connections) and logged. Connections that never finish their "
     "handshake (handshake_timeout) or stay idle (max_connection_idle) are closed and free their slot.",
     .min = 1, .max = 1000000},
    {CN_OPT_INT, "batch_size", "1024", offsetof(sw_receiver, batch_size),
     "Snapshots of a collectSnapshot stream per batch handed to the pipelines; a longer stream is handed on "
     "in several batches, and answered once all are durable.",
     .min = 1, .max = 100000},
    {CN_OPT_INT, "max_agents", "10000", offsetof(sw_receiver, max_agents),
     "Agent connections whose service and instance are remembered (from their ManagementService and "
     "getProfileTaskCommands calls); past it the oldest are forgotten.",
     .min = 16, .max = 10000000},
    {CN_OPT_DURATION, "agent_idle_timeout", "5m", offsetof(sw_receiver, agent_idle_timeout_ms),
     "An agent connection not heard from for this long is forgotten (no longer counted as connected; a "
     "later stream on it is attributed again by its next ManagementService call). SkyWalking agents send "
     "keepAlive every 30 s by default.",
     .min = 1000, .max = 24LL * 3600 * 1000},
    {CN_OPT_DURATION, "max_call_duration", "5m", offsetof(sw_receiver, max_call_duration_ms),
     "Longest a call may stay open waiting for its messages (a stream that never ends, or a unary call "
     "whose request never comes); past it the call is ended with DEADLINE_EXCEEDED and counted (reason "
     "too_long). Snapshots received before are kept. Checked every 0.5 s.",
     .min = 1000, .max = 24LL * 3600 * 1000},
    {CN_OPT_DURATION, "handshake_timeout", "10s", offsetof(sw_receiver, handshake_timeout_ms),
     "A connection that has not finished its HTTP/2 (and TLS) handshake within this long is closed: "
     "thousands of connections that never speak cannot pile up.",
     .min = 100, .max = 600 * 1000},
    {CN_OPT_DURATION, "max_connection_idle", "5m", offsetof(sw_receiver, max_connection_idle_ms),
     "A connection with no call for this long is closed (the agent reconnects on its next call; the Python "
     "agent calls every few seconds).",
     .min = 1000, .max = 24LL * 3600 * 1000},
    {CN_OPT_STR, "upstream", NULL, offsetof(sw_receiver, upstream),
     "Id of a skywalking exporter: every service other than ProfileTask (segments, logs, meters, "
     "ManagementService, configuration discovery, events, any method) is forwarded as raw bytes to its "
     "endpoints, with its TLS and token. None: ManagementService is answered here, the rest get "
     "UNIMPLEMENTED."},
    {CN_OPT_INT, "max_passthrough_calls", "1000", offsetof(sw_receiver, max_passthrough_calls),
     "Pass-through calls in flight to the upstream at once; past it an agent's call gets RESOURCE_EXHAUSTED "
     "and is counted (reason passthrough_full).",
     .min = 1, .max = 1000000},
    {CN_OPT_DURATION, "upstream_connect_timeout", "2s", offsetof(sw_receiver, upstream_connect_timeout_ms),
     "A pass-through call that has heard nothing from the upstream within this long, while the channel is "
     "not connected, ends with UNAVAILABLE: agents never hang on an OAP that is down or unreachable (one "
     "that refuses connections fails them at once).",
     .min = 100, .max = 600 * 1000},
    CN_OPT_END};

static int sw_check(void *ctx, cn_component *self, cn_diag *d)
{
    sw_receiver *rx = ctx;
    const cn_node *at = cn_options_node(cn_component_node(self), "listen");
    if (!at)
        at = cn_component_node(self);
    const char *colon = strrchr(rx->listen, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || colon == rx->listen || !end || *end || port < 0 || port > 65535) {
        cn_diag_error(d, at, "listen: %s is not host:port (e.g. 127.0.0.1:11800)", rx->listen);
        return -1;
    }
    char host[256];
    snprintf(host, sizeof host, "%.*s", (int)(colon - rx->listen), rx->listen);
    if (cn_server_tls_check(&rx->tls, cn_component_node(self), d) != 0)
        return -1;
    if (!rx->tls.cert_file && !rx->allow_insecure && !cn_host_is_loopback(host, strlen(host))) {
        cn_diag_error(d, at,
                      "listen: refusing plaintext gRPC on non-loopback %s: anyone who can reach it could send "
                      "data and read tasks. Listen on 127.0.0.1, or set allow_insecure: true",
                      rx->listen);
        return -1;
    }
    /* gRPC metadata values are printable ASCII: an agent could never send such a token. */
    for (const char *t = rx->authentication; t && *t; t++) {
        if ((unsigned char)*t < 0x20 || (unsigned char)*t > 0x7e) {
            const cn_node *an = cn_options_node(cn_component_node(self), "authentication");
            cn_diag_error(d, an ? an : cn_component_node(self),
                          "authentication contains a character gRPC metadata cannot carry (printable ASCII only)");
            return -1;
        }
    }
    if (rx->upstream) {
        const cn_node *node = NULL;
        const char *type = NULL;
        if (!cn_component_peer(self, CN_EXPORTER, rx->upstream, &node, &type) || strcmp(type, "skywalking") != 0) {
            const cn_node *un = cn_options_node(cn_component_node(self), "upstream");
            cn_diag_error(d, un ? un : cn_component_node(self),
                          "receivers::%s: upstream references exporter \"%s\" which is not a configured "
                          "skywalking exporter",
                          cn_component_id(self), rx->upstream);
            return -1;
        }
    }
    return 0;
}

static void make_metrics(sw_receiver *rx)
{
    const char *labels = cn_component_labels(rx->self);
    char l[256];
    for (size_t i = 0; i < N_METHODS; i++) {
        snprintf(l, sizeof l, "%s,type=\"%s\"", labels, swrx_method_labels[i]);
        rx->calls[i] = cn_counter("canopy_receiver_requests_total", "Requests received from agents, by type.", l);
    }
    for (size_t i = 0; i < N_REASONS; i++) {
        snprintf(l, sizeof l, "%s,reason=\"%s\"", labels, swrx_reason_labels[i]);
        rx->refused[i] = cn_counter("canopy_receiver_refused_total",
                                    "Requests refused with an error reply, by reason.", l);
        rx->refuse_log[i].interval_ms = SWRX_LOG_INTERVAL_MS;
        for (size_t m = 0; m < N_METHODS && i != R_CONNECTIONS; m++) { /* a connection is no call */
            snprintf(l, sizeof l, "%s,type=\"%s\",reason=\"%s\"", labels, swrx_method_labels[m],
                     swrx_reason_labels[i]);
            rx->refused_by[m][i] = cn_counter("canopy_skywalking_receiver_refused_total",
                                              "Calls refused with an error reply, by method (type) and reason.", l);
        }
    }
    for (size_t i = 0; i < N_PT_METHODS; i++) {
        snprintf(l, sizeof l, "%s,method=\"%s\"", labels, swrx_pt_labels[i]);
        rx->unimplemented[i] = cn_counter("canopy_skywalking_receiver_unimplemented_total",
                                          "Calls answered UNIMPLEMENTED for want of an upstream, by method.", l);
        rx->pt_calls[i] = cn_counter("canopy_skywalking_passthrough_calls_total",
                                     "Calls forwarded to the upstream OAP, by method.", l);
        rx->pt_errors[i] = cn_counter("canopy_skywalking_passthrough_errors_total",
                                      "Forwarded calls that ended with a status other than OK, by method.", l);
        snprintf(l, sizeof l, "%s,method=\"%s\",direction=\"to_upstream\"", labels, swrx_pt_labels[i]);
        rx->pt_bytes_up[i] = cn_counter("canopy_skywalking_passthrough_bytes_total",
                                        "Message bytes forwarded, by method and direction.", l);
        snprintf(l, sizeof l, "%s,method=\"%s\",direction=\"to_agent\"", labels, swrx_pt_labels[i]);
        rx->pt_bytes_down[i] = cn_counter("canopy_skywalking_passthrough_bytes_total",
                                          "Message bytes forwarded, by method and direction.", l);
    }
    rx->pt_in_flight = cn_gauge("canopy_skywalking_passthrough_in_flight",
                                "Pass-through calls open to the upstream OAP.", labels);
    rx->accepted_batches =
        cn_counter("canopy_receiver_accepted_batches_total", "Batches acked into the pipelines.", labels);
    rx->accepted_snapshots =
        cn_counter("canopy_receiver_accepted_snapshots_total", "Snapshots acked into the pipelines.", labels);
    rx->connected_agents = cn_gauge("canopy_skywalking_receiver_agents",
                                    "SkyWalking agent connections heard from within agent_idle_timeout.", labels);
    rx->clamped_tasks = cn_counter("canopy_skywalking_receiver_clamped_tasks_total",
                                   "Task commands changed or left out to fit the SkyWalking agents' ranges.",
                                   labels);
    rx->clamp_log.interval_ms = SWRX_LOG_INTERVAL_MS;
    cn_conn_metrics conns = cn_conn_metrics_get(labels);
    rx->conns_open = conns.open;
    rx->conns_accepted = conns.accepted;
    rx->conns_refused = conns.refused;
}

static void free_str(void *p) { free(p); }

static void sw_destroy(void *ctx);

static int sw_start(void *ctx, cn_component *self)
{
    sw_receiver *rx = ctx;
    rx->self = self;
    make_metrics(rx);
    /* Batch numbers only need to differ within a run: nothing deduplicates this receiver's by them. */
    rx->next_batch_seq = (uint64_t)cn_now_ms() << 16;
    if (!(rx->agents = cn_dict_new(64))) {
        cn_error(cn_component_id(self), "out of memory");
        return -1;
    }
    if (swrx_upstream_start(rx) != 0)
        return -1;
    return swrx_server_start(rx);
}

static void sw_stop(void *ctx) { swrx_server_stop(ctx); }

static void sw_destroy(void *ctx)
{
    sw_receiver *rx = ctx;
    swrx_server_stop(rx);
    swrx_upstream_destroy(rx); /* after the server: no proxied call is left on its channels */
    cn_dict_free(rx->agents, free_str);
    rx->agents = NULL;
}

const cn_plugin cn_receiver_skywalking = {
    .kind = CN_RECEIVER,
    .type = "skywalking",
    .description = "SkyWalking agents over gRPC (ProfileTask; every other service passed through to an upstream OAP), in "
                   "place of an OAP or Satellite.",
    .ctx_size = sizeof(sw_receiver),
    .options = sw_options,
    .cb_check = sw_check,
    .cb_start = sw_start,
    .cb_stop = sw_stop,
    .cb_destroy = sw_destroy,
};
