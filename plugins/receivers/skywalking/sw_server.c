/*
 * The skywalking receiver's gRPC server on the gRPC C core: one completion
 * queue, one thread. Every call is a small state machine with at most one
 * batch of operations outstanding, so the call itself is the tag:
 *   ACCEPT  (grpc_server_request_call done) -> checks token and method
 *   READ    (one RECV_MESSAGE done)         -> a message to the handlers;
 *                                              streams read again
 *   FINISH  (status and reply sent)         -> freed
 * Streams are drained as fast as messages come (the SkyWalking Python agent
 * blocks its profiler when its queue fills), and a reply waits only for the
 * durable intake (cn_receiver_submit), never for an exporter.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "pem.h"
#include "sw_receiver.h"

/* Calls requested from the server at once: how many new calls can arrive between two loop turns. */
#define ACCEPT_DEPTH 8

typedef enum { P_ACCEPT, P_READ, P_FINISH } phase;

typedef struct swrx_call {
    int tag_kind; /* SWRX_TAG_CALL; first, as the loop reads it */
    sw_receiver *rx;
    phase phase;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    grpc_byte_buffer *recv;
    swrx_method method;
    char peer[128];
    swrx_call_state *stream; /* collectSnapshot only */
    int cancelled;           /* RECV_CLOSE_ON_SERVER */
    grpc_slice status_detail;
    swrx_reply reply;
    int64_t started_ms;      /* monotonic, when reading began */
    bool timed_out;          /* cancelled for max_call_duration */
    struct swrx_call *prev, *next; /* rx->open_calls while reading */
    bool listed;
} swrx_call;

static void open_link(swrx_call *c)
{
    sw_receiver *rx = c->rx;
    c->started_ms = cn_mono_ms();
    c->prev = NULL;
    c->next = rx->open_calls;
    if (c->next)
        c->next->prev = c;
    rx->open_calls = c;
    c->listed = true;
}

static void open_unlink(swrx_call *c)
{
    if (!c->listed)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->rx->open_calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->listed = false;
}

/*
 * Ends calls open past max_call_duration: a stream that never ends (or a
 * request that never comes) would otherwise hold its memory and a stream
 * slot for good. The cancel completes their pending read as failed, which
 * keeps what they sent and frees them.
 */
static void sweep_open_calls(sw_receiver *rx)
{
    int64_t now = cn_mono_ms();
    if (now < rx->next_sweep_ms)
        return;
    rx->next_sweep_ms = now + 500;
    for (swrx_call *c = rx->open_calls; c; c = c->next) {
        if (c->timed_out || now - c->started_ms <= rx->max_call_duration_ms)
            continue;
        c->timed_out = true;
        swrx_reply r = {0};
        swrx_refuse(rx, &r, c->method, R_TOO_LONG, GRPC_STATUS_DEADLINE_EXCEEDED, c->peer,
                    "%s open for over max_call_duration (%lld ms); ended", swrx_method_labels[c->method],
                    (long long)rx->max_call_duration_ms);
        grpc_call_cancel_with_status(c->call, GRPC_STATUS_DEADLINE_EXCEEDED, r.detail, NULL);
    }
}

/* Full method paths, and the unprefixed names older agents called (Satellite serves both). */
static swrx_method method_of(grpc_slice path)
{
    static const struct {
        const char *name;
        swrx_method m;
    } methods[] = {
        {"ProfileTask/collectSnapshot", M_COLLECT_SNAPSHOT},
        {"ProfileTask/getProfileTaskCommands", M_GET_COMMANDS},
        {"ProfileTask/reportTaskFinish", M_REPORT_FINISH},
        {"ManagementService/reportInstanceProperties", M_INSTANCE_PROPERTIES},
        {"ManagementService/keepAlive", M_KEEP_ALIVE},
    };
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
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (strlen(methods[i].name) == len && memcmp(methods[i].name, p, len) == 0)
            return methods[i].m;
    return M_OTHER;
}

static bool token_ok(const sw_receiver *rx, const grpc_metadata_array *md)
{
    if (!rx->authentication)
        return true;
    size_t want = strlen(rx->authentication);
    for (size_t i = 0; i < md->count; i++) {
        const grpc_metadata *m = &md->metadata[i];
        if (grpc_slice_str_cmp(m->key, "authentication") == 0)
            return GRPC_SLICE_LENGTH(m->value) == want &&
                   memcmp(GRPC_SLICE_START_PTR(m->value), rx->authentication, want) == 0;
    }
    return false;
}

static void call_free(swrx_call *c)
{
    c->rx->n_calls--;
    open_unlink(c);
    if (c->stream)
        swrx_stream_free(c->stream);
    if (c->recv)
        grpc_byte_buffer_destroy(c->recv);
    if (c->reply.message)
        grpc_byte_buffer_destroy(c->reply.message);
    grpc_slice_unref(c->status_detail);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    if (c->call)
        grpc_call_unref(c->call);
    free(c);
}

/* Asks the server for one more call. */
static void request_call(sw_receiver *rx)
{
    swrx_call *c = calloc(1, sizeof *c);
    if (!c) {
        cn_error(cn_component_id(rx->self), "out of memory accepting a call; %s serves fewer at once",
                 rx->listen);
        return;
    }
    c->tag_kind = SWRX_TAG_CALL;
    c->rx = rx;
    rx->n_calls++;
    c->phase = P_ACCEPT;
    c->status_detail = grpc_empty_slice();
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    if (grpc_server_request_call(rx->server, &c->call, &c->details, &c->md, rx->cq, rx->cq, c) != GRPC_CALL_OK) {
        cn_error(cn_component_id(rx->self), "grpc_server_request_call failed");
        call_free(c);
    }
}

/* Sends the reply (c->reply) and the status; the call is freed when that completes. */
static void finish(swrx_call *c)
{
    open_unlink(c);
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (c->reply.status == GRPC_STATUS_OK && c->reply.message) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = c->reply.message;
    }
    grpc_slice_unref(c->status_detail);
    c->status_detail = grpc_slice_from_copied_string(c->reply.detail);
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = c->reply.status;
    ops[n++].data.send_status_from_server.status_details = c->reply.detail[0] ? &c->status_detail : NULL;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = &c->cancelled;
    c->phase = P_FINISH;
    if (grpc_call_start_batch(c->call, ops, n, c, NULL) != GRPC_CALL_OK) {
        cn_error(cn_component_id(c->rx->self), "cannot finish a call from %s", c->peer);
        call_free(c);
    }
}

static void read_next(swrx_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->recv;
    c->phase = P_READ;
    if (grpc_call_start_batch(c->call, &op, 1, c, NULL) != GRPC_CALL_OK) {
        c->reply.status = GRPC_STATUS_INTERNAL;
        snprintf(c->reply.detail, sizeof c->reply.detail, "cannot read the call");
        finish(c);
    }
}

static void on_accept(swrx_call *c, bool ok)
{
    sw_receiver *rx = c->rx;
    if (!ok) { /* the server is shutting down */
        call_free(c);
        return;
    }
    if (!atomic_load(&rx->stopping))
        request_call(rx);
    /*
     * gRPC's peer is the gate's inner connection (127.0.0.1:<port>, one per
     * agent connection); the agent's own address replaces it, so attribution,
     * logs and metrics read as before the gate.
     */
    char *peer = grpc_call_get_peer(c->call);
    if (!peer || !swrx_gate_peer(rx->gate, peer, c->peer, sizeof c->peer))
        snprintf(c->peer, sizeof c->peer, "%s", peer ? peer : "?");
    gpr_free(peer);
    c->method = method_of(c->details.method);
    cn_metric_inc(rx->calls[c->method]);
    if (!token_ok(rx, &c->md)) {
        swrx_refuse(rx, &c->reply, c->method, R_UNAUTHENTICATED, GRPC_STATUS_UNAUTHENTICATED, c->peer,
                    "missing or wrong `authentication` metadata (SW_AGENT_AUTHENTICATION)");
        finish(c);
        return;
    }
    bool management = c->method == M_INSTANCE_PROPERTIES || c->method == M_KEEP_ALIVE;
    if (rx->up_ready && (c->method == M_OTHER || management)) {
        /* With an upstream, ManagementService goes there too (observed on the way), as Satellite does. */
        if (swrx_proxy_start(rx, &c->call, &c->details, &c->md, c->peer, c->method, &c->reply) == 0)
            call_free(c);
        else
            finish(c);
        return;
    }
    if (c->method == M_OTHER) {
        cn_metric_inc(rx->unimplemented[swrx_pt_method(c->details.method)]);
        char *path = grpc_slice_to_c_string(c->details.method);
        swrx_refuse(rx, &c->reply, c->method, R_NO_UPSTREAM, GRPC_STATUS_UNIMPLEMENTED, c->peer,
                    "%s is not served: canopy forwards other SkyWalking services only to an upstream OAP, and "
                    "receivers.%s has no `upstream` configured",
                    path ? path : "?", cn_component_id(rx->self));
        gpr_free(path);
        finish(c);
        return;
    }
    if (c->method == M_COLLECT_SNAPSHOT && !(c->stream = swrx_stream_new(rx, c->peer))) {
        swrx_refuse(rx, &c->reply, c->method, R_INTERNAL, GRPC_STATUS_RESOURCE_EXHAUSTED, c->peer, "out of memory");
        finish(c);
        return;
    }
    open_link(c);
    read_next(c);
}

static void on_read(swrx_call *c, bool ok)
{
    sw_receiver *rx = c->rx;
    grpc_byte_buffer *bb = c->recv;
    c->recv = NULL;
    if (!ok) {
        /* The peer went away, the message broke a limit (gRPC already told the client why), or we ended it. */
        if (bb)
            grpc_byte_buffer_destroy(bb);
        if (c->timed_out) {
            c->reply.status = GRPC_STATUS_DEADLINE_EXCEEDED; /* counted by the sweep */
            snprintf(c->reply.detail, sizeof c->reply.detail, "open for over max_call_duration");
        } else {
            swrx_refuse(rx, &c->reply, c->method, R_STREAM_ERROR, GRPC_STATUS_CANCELLED, c->peer,
                        "%s: reading the call failed (message over max_message_size %lld, or the agent went away)",
                        swrx_method_labels[c->method], (long long)rx->max_message_size);
        }
        if (c->stream) { /* what arrived before the failure is kept */
            swrx_reply ignored = {0};
            swrx_stream_end(rx, c->stream, &ignored);
            if (ignored.message)
                grpc_byte_buffer_destroy(ignored.message);
        }
        finish(c);
        return;
    }
    if (c->method != M_COLLECT_SNAPSHOT) {
        swrx_unary(rx, c->method, c->peer, bb, &c->reply);
        if (bb)
            grpc_byte_buffer_destroy(bb);
        finish(c);
        return;
    }
    if (!bb) { /* half-closed: the stream is complete */
        swrx_stream_end(rx, c->stream, &c->reply);
        finish(c);
        return;
    }
    int rc = swrx_stream_message(rx, c->stream, bb, &c->reply);
    grpc_byte_buffer_destroy(bb);
    if (rc != 0)
        finish(c);
    else
        read_next(c);
}

static void *server_main(void *arg)
{
    sw_receiver *rx = arg;
    for (;;) {
        gpr_timespec tick = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(500, GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(rx->cq, tick, NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        sweep_open_calls(rx);
        swrx_proxy_sweep(rx);
        swrx_expire_agents(rx);
        /* gRPC does not always carry the server's cancel-all to the proxied calls' upstream halves. */
        if (atomic_load(&rx->stopping))
            swrx_proxy_cancel_all(rx);
        if (ev.type == GRPC_OP_COMPLETE) {
            if (ev.tag == &rx->shutdown_tag)
                rx->server_down = true;
            else if (*(int *)ev.tag == SWRX_TAG_PROXY)
                swrx_proxy_event(ev.tag, ev.success);
            else {
                swrx_call *c = ev.tag;
                switch (c->phase) {
                case P_ACCEPT: on_accept(c, ev.success); break;
                case P_READ: on_read(c, ev.success); break;
                case P_FINISH: call_free(c); break;
                }
            }
        }
        /*
         * The shutdown tag can come while calls still have batches to start
         * (a proxied call's upstream half ends later): starting one on a
         * shut-down queue aborts the process, so the queue closes only once
         * no call is left.
         */
        if (rx->server_down && rx->n_calls == 0 && !rx->proxies) {
            rx->server_down = false;
            grpc_completion_queue_shutdown(rx->cq);
        }
    }
    return NULL;
}

/* Plaintext, or TLS from the PEM files (client certificates as client_auth says). NULL after logging why. */
static grpc_server_credentials *make_credentials(sw_receiver *rx)
{
    const cn_server_tls *t = &rx->tls;
    if (!t->cert_file)
        return grpc_insecure_server_credentials_create();
    const char *id = cn_component_id(rx->self);
    char *cert = cn_pem_read(t->cert_file, NULL);
    char *key = cert ? cn_pem_read(t->key_file, NULL) : NULL;
    char *ca = key && t->ca_file ? cn_pem_read(t->ca_file, NULL) : NULL;
    grpc_server_credentials *creds = NULL;
    if (!cert || !key || (t->ca_file && !ca)) {
        cn_error(id, "cannot read the tls files (cert_file, key_file, ca_file): %s", strerror(errno));
    } else {
        static const grpc_ssl_client_certificate_request_type request[] = {
            [CN_CLIENT_AUTH_NONE] = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
            [CN_CLIENT_AUTH_OPTIONAL] = GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY,
            [CN_CLIENT_AUTH_REQUIRED] = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY,
        };
        grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
        /* The credentials copy the PEM text, so ours are freed right after. */
        creds = grpc_ssl_server_credentials_create_ex(ca, &pair, 1, request[t->client_auth], NULL);
        if (!creds)
            cn_error(id, "gRPC refused the tls settings (cert_file, key_file, ca_file)");
    }
    free(cert);
    free(ca);
    cn_pem_free_secret(key); /* the key must not linger in freed memory */
    return creds;
}

int swrx_server_start(sw_receiver *rx)
{
    const char *id = cn_component_id(rx->self);
    grpc_init();
    rx->grpc_started = true;
    grpc_arg args[] = {
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = (int)rx->max_message_size},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_CONCURRENT_STREAMS,
         .value.integer = (int)rx->max_streams_per_connection},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
         .value.integer = (int)rx->handshake_timeout_ms},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_CONNECTION_IDLE_MS,
         .value.integer = (int)rx->max_connection_idle_ms},
    };
    grpc_channel_args chargs = {.num_args = sizeof args / sizeof args[0], .args = args};
    rx->server = grpc_server_create(&chargs, NULL);
    rx->cq = grpc_completion_queue_create_for_next(NULL);
    if (!rx->server || !rx->cq) {
        cn_error(id, "cannot create the gRPC server");
        return -1;
    }
    grpc_server_register_completion_queue(rx->server, rx->cq, NULL);
    grpc_server_credentials *creds = make_credentials(rx);
    if (!creds)
        return -1;
    /* Agents connect to the gate on `listen`; gRPC (TLS included) serves on a loopback port of its own. */
    int port = grpc_server_add_http2_port(rx->server, "127.0.0.1:0", creds);
    grpc_server_credentials_release(creds);
    if (port == 0) {
        cn_error(id, "cannot bind the gRPC server to a port on 127.0.0.1");
        grpc_server_destroy(rx->server); /* never started: no shutdown needed */
        rx->server = NULL;
        return -1;
    }
    grpc_server_start(rx->server);
    for (int i = 0; i < ACCEPT_DEPTH; i++)
        request_call(rx);
    /* Before the server thread: it reads rx->gate (swrx_gate_peer) from its first call on. */
    swrx_gate_config gc = {
        .id = id,
        .listen = rx->listen,
        .inner_port = port,
        .max_connections = rx->max_connections,
        .refused = rx->refused[R_CONNECTIONS],
        .conns_refused = rx->conns_refused,
        .conns_accepted = rx->conns_accepted,
        .conns_open = rx->conns_open,
        .refuse_log = &rx->refuse_log[R_CONNECTIONS],
    };
    if (swrx_gate_start(&rx->gate, &gc) != 0)
        return -1;
    if (pthread_create(&rx->thread, NULL, server_main, rx) != 0) {
        cn_error(id, "cannot start the gRPC server thread");
        return -1;
    }
    rx->thread_started = true;
    cn_info(id, "SkyWalking agents' gRPC on %s (%s%s%s; at most %lld connections)", rx->listen,
            rx->tls.cert_file ? "TLS" : "plaintext",
            rx->tls.cert_file && rx->tls.client_auth == CN_CLIENT_AUTH_REQUIRED ? ", client certificates required"
                                                                            : "",
            rx->authentication ? ", authentication token required" : "", (long long)rx->max_connections);
    return 0;
}

/* Safe on a receiver that was only partly started, and twice. */
void swrx_server_stop(sw_receiver *rx)
{
    atomic_store(&rx->stopping, true);
    if (rx->server) {
        grpc_server_shutdown_and_notify(rx->server, rx->cq, &rx->shutdown_tag);
        /* Streams never ended by their agents must not hold the shutdown. */
        grpc_server_cancel_all_calls(rx->server);
        if (rx->thread_started) {
            pthread_join(rx->thread, NULL);
            rx->thread_started = false;
        } else { /* no thread to drain: wait for the shutdown here */
            grpc_event ev;
            do
                ev = grpc_completion_queue_next(rx->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
            /* Only accepts are outstanding: no call was ever served without the thread. */
            while (ev.type == GRPC_OP_COMPLETE && ev.tag != &rx->shutdown_tag && (call_free(ev.tag), 1));
            grpc_completion_queue_shutdown(rx->cq);
            while (grpc_completion_queue_next(rx->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
                   GRPC_QUEUE_SHUTDOWN)
                ;
        }
        grpc_server_destroy(rx->server);
        rx->server = NULL;
    }
    /* After the server: the replies and GOAWAYs of its shutdown still reach the agents. */
    swrx_gate_stop(rx->gate);
    rx->gate = NULL;
    if (rx->cq) {
        grpc_completion_queue_shutdown(rx->cq); /* idempotent; the thread may have done it */
        grpc_completion_queue_destroy(rx->cq);
        rx->cq = NULL;
    }
    if (rx->grpc_started) {
        grpc_shutdown();
        rx->grpc_started = false;
    }
}
