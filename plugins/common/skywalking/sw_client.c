/*
 * The SkyWalking OAP client (sw_client.h) on the gRPC C core: one channel per
 * configured endpoint, shared by every call of the client, and one pluck
 * completion queue per client. Channels to the same target with the same
 * settings share gRPC's subchannels, so the exporter's and the task source's
 * calls reach an OAP over one connection.
 *
 * No generated gRPC stubs exist for C, so calls are made by hand: the method
 * path as a slice, messages packed with protobuf-c into byte buffers.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "pem.h"
#include "skywalking/v3/profile.pb-c.h"
#include "skywalking/sw_client.h"

#define SW_METHOD_COLLECT "/skywalking.v3.ProfileTask/collectSnapshot"

/* Extra time past the call deadline that a pluck waits; the call's own
 * deadline is what ends a hung call, this only guards against a lost tag. */
#define SW_PLUCK_SLACK_MS 5000

/* Skip window after a failed call: 500 ms doubling per failure, capped. */
#define SW_DOWN_BASE_MS 500
#define SW_DOWN_MAX_MS 30000

static const char *const sw_code_names[] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
};

const char *sw_status_name(grpc_status_code code)
{
    if ((int)code >= 0 && (size_t)code < CN_ARRAY_LEN(sw_code_names))
        return sw_code_names[code];
    return "UNKNOWN_CODE";
}

bool sw_status_retryable(const sw_rpc_status *st)
{
    switch (st->code) {
    case GRPC_STATUS_UNAVAILABLE:
    case GRPC_STATUS_DEADLINE_EXCEEDED:
    case GRPC_STATUS_RESOURCE_EXHAUSTED:
    /* gRPC's own guidance: ABORTED is retried at a higher level. */
    case GRPC_STATUS_ABORTED:
        return true;
    /*
     * A stream the OAP reset (it is restarting or going away) ends as
     * CANCELLED on our side. Nothing was acknowledged, so it is transient;
     * only a cancel we made ourselves (shutdown) is final.
     */
    case GRPC_STATUS_CANCELLED:
        return !st->cancelled_by_us;
    default:
        return false;
    }
}

/* ---- setup and teardown --------------------------------------------------- */

static char *read_pem(const char *path, const char *what)
{
    char *text = cn_pem_read(path, NULL);
    if (!text)
        cn_error(SW_LOG, "cannot read tls.%s %s: %s", what, path,
                 errno == EINVAL ? "not a regular file" : strerror(errno));
    return text;
}

static int make_credentials(sw_client *c)
{
    if (!c->tls_enabled) {
        c->creds = grpc_insecure_credentials_create();
        return c->creds ? 0 : -1;
    }
    char *ca = NULL, *cert = NULL, *key = NULL;
    int rc = -1;
    if (c->tls.ca_file && !(ca = read_pem(c->tls.ca_file, "ca_file")))
        goto out;
    if (c->tls.cert_file && !(cert = read_pem(c->tls.cert_file, "cert_file")))
        goto out;
    if (c->tls.key_file && !(key = read_pem(c->tls.key_file, "key_file")))
        goto out;
    grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
    /* The credentials copy the PEM text, so ours are freed right after. */
    c->creds = grpc_ssl_credentials_create(ca, (cert && key) ? &pair : NULL, NULL, NULL);
    if (!c->creds) {
        cn_error(SW_LOG, "[%s] gRPC refused the TLS settings (ca_file, cert_file, key_file)", c->id);
        goto out;
    }
    rc = 0;
out:
    free(ca);
    free(cert);
    cn_pem_free_secret(key); /* a private key should not linger in freed heap memory */
    return rc;
}

static int grpc_setup(sw_client *c)
{
    grpc_init();
    c->grpc_started = true;

    if (make_credentials(c) != 0)
        return -1;

    /*
     * gRPC's default reconnect backoff grows to 120 s, so after a long OAP
     * outage the channel could sit idle for minutes after the OAP is back.
     * Cap it: the exporter's own retry policy is what paces the data.
     */
    grpc_arg args[4];
    size_t n = 0;
    args[n].type = GRPC_ARG_INTEGER;
    args[n].key = (char *)GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
    args[n].value.integer = 500;
    n++;
    args[n].type = GRPC_ARG_INTEGER;
    args[n].key = (char *)GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
    args[n].value.integer = (int)c->reconnect_backoff_max_ms;
    n++;
    args[n].type = GRPC_ARG_STRING;
    args[n].key = (char *)GRPC_ARG_PRIMARY_USER_AGENT_STRING;
    args[n].value.string = (char *)"canopy-collector";
    n++;
    if (c->tls_enabled && c->tls.server_name && c->tls.server_name[0]) {
        args[n].type = GRPC_ARG_STRING;
        args[n].key = (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
        args[n].value.string = c->tls.server_name;
        n++;
    }
    grpc_channel_args chargs = {.num_args = n, .args = args};

    for (size_t i = 0; i < c->n_eps; i++) {
        /* Never NULL: a bad target gives a "lame" channel whose calls fail. */
        c->eps[i].channel = grpc_channel_create(c->eps[i].target, c->creds, &chargs);
        if (!c->eps[i].channel) {
            cn_error(SW_LOG, "[%s] cannot create a gRPC channel to %s", c->id, c->eps[i].target);
            return -1;
        }
    }
    c->cq = grpc_completion_queue_create_for_pluck(NULL);
    if (!c->cq) {
        cn_error(SW_LOG, "[%s] cannot create a gRPC completion queue", c->id);
        return -1;
    }
    return 0;
}

void sw_client_teardown(sw_client *c, const cn_option *options)
{
    for (size_t i = 0; c->eps && i < c->n_eps; i++) {
        if (c->eps[i].channel) {
            grpc_channel_destroy(c->eps[i].channel);
            c->eps[i].channel = NULL;
        }
    }
    if (c->cq) {
        /* Every call was plucked to completion before we get here. */
        grpc_completion_queue_shutdown(c->cq);
        grpc_completion_queue_destroy(c->cq);
        c->cq = NULL;
    }
    if (c->creds) {
        grpc_channel_credentials_release(c->creds);
        c->creds = NULL;
    }
    if (c->grpc_started) {
        /* Refcounted by the library: other users of gRPC in the process are unaffected. */
        grpc_shutdown();
        c->grpc_started = false;
    }
    free(c->eps);
    c->eps = NULL;
    if (c->ep_lock_ok) {
        pthread_mutex_destroy(&c->ep_lock);
        c->ep_lock_ok = false;
    }
    if (options)
        cn_options_free(options, c);
}

/* ---- endpoint choice ------------------------------------------------------ */

sw_endpoint *sw_pick_endpoint(sw_client *c)
{
    pthread_mutex_lock(&c->ep_lock);
    int64_t now = cn_mono_ms();
    size_t chosen = c->rr_next % c->n_eps, soonest = chosen;
    bool found = false;
    for (size_t i = 0; i < c->n_eps; i++) {
        size_t k = (c->rr_next + i) % c->n_eps;
        if (c->eps[k].down_until_ms <= now) {
            chosen = k;
            found = true;
            break;
        }
        if (c->eps[k].down_until_ms < c->eps[soonest].down_until_ms)
            soonest = k;
    }
    /* All recently failed: use the one whose window ends first, rather than
     * waiting; the caller's retry policy already paces attempts. */
    if (!found)
        chosen = soonest;
    c->rr_next = chosen + 1;
    /*
     * After failures the channel sits in gRPC's own reconnect backoff and
     * would fail this call at once even if the OAP is back. Reconnect now:
     * our callers' retry policy (backoff with jitter) paces the attempts.
     */
    if (c->eps[chosen].fails > 0)
        grpc_channel_reset_connect_backoff(c->eps[chosen].channel);
    pthread_mutex_unlock(&c->ep_lock);
    return &c->eps[chosen];
}

void sw_endpoint_result(sw_client *c, sw_endpoint *ep, const sw_rpc_status *st)
{
    int prev_fails;
    pthread_mutex_lock(&c->ep_lock);
    prev_fails = ep->fails;
    if (st->code == GRPC_STATUS_OK) {
        ep->fails = 0;
        ep->down_until_ms = 0;
    } else if (sw_status_retryable(st) && !st->cancelled_by_us) {
        ep->fails++;
        int shift = ep->fails < 7 ? ep->fails - 1 : 6;
        int64_t window = (int64_t)SW_DOWN_BASE_MS << shift;
        ep->down_until_ms = cn_mono_ms() + (window < SW_DOWN_MAX_MS ? window : SW_DOWN_MAX_MS);
    }
    int fails = ep->fails;
    pthread_mutex_unlock(&c->ep_lock);

    /* Log the edges only; the per-call failures are counted and rate limited elsewhere. */
    if (st->code == GRPC_STATUS_OK && prev_fails > 0)
        cn_info(c->id, "OAP %s answers again, after %d failed call%s", ep->target, prev_fails,
                prev_fails == 1 ? "" : "s");
    else if (fails == 1 && prev_fails == 0)
        cn_warn(c->id, "OAP %s is not answering: %s: %s", ep->target, sw_status_name(st->code),
                st->detail);
}

/* ---- one call ------------------------------------------------------------- */

typedef struct sw_call {
    sw_client *c;
    grpc_call *call;
    grpc_metadata md[1];
    size_t n_md;
    grpc_metadata_array initial_md;
    grpc_metadata_array trailing_md;
    grpc_status_code status;
    grpc_slice details;
    const char *error_string;
    grpc_byte_buffer *reply;
    gpr_timespec pluck_deadline;
    sw_cancel_slot *slot;
    bool status_pending;
    /* Distinct addresses serve as the pluck tags of this call. */
    char tag_send, tag_recv, tag_status;
} sw_call;

static gpr_timespec deadline_in(int64_t ms)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static void set_status(sw_rpc_status *st, grpc_status_code code, const char *detail)
{
    st->code = code;
    st->cancelled_by_us = false;
    snprintf(st->detail, sizeof st->detail, "%s", detail ? detail : "");
}

static int call_begin(sw_client *c, sw_endpoint *ep, const char *method, sw_call *k, sw_cancel_slot *slot)
{
    memset(k, 0, sizeof *k);
    k->c = c;
    k->slot = slot;
    grpc_metadata_array_init(&k->initial_md);
    grpc_metadata_array_init(&k->trailing_md);
    k->details = grpc_empty_slice();
    if (c->authentication && c->authentication[0]) {
        /* Static slices: the key is a literal and the token lives as long as ctx. */
        k->md[0].key = grpc_slice_from_static_string("authentication");
        k->md[0].value = grpc_slice_from_static_string(c->authentication);
        k->n_md = 1;
    }
    k->pluck_deadline = deadline_in(c->timeout_ms + SW_PLUCK_SLACK_MS);
    k->call = grpc_channel_create_call(ep->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq,
                                       grpc_slice_from_static_string(method), NULL,
                                       deadline_in(c->timeout_ms), NULL);
    if (!k->call)
        return -1;
    if (slot) {
        pthread_mutex_lock(slot->lock);
        slot->call = k->call;
        if (slot->cancelled)
            grpc_call_cancel(k->call, NULL);
        pthread_mutex_unlock(slot->lock);
    }
    return 0;
}

/* Waits for one of this call's tags. Returns the event's success flag. */
static int call_wait(sw_call *k, void *tag)
{
    grpc_event ev = grpc_completion_queue_pluck(k->c->cq, tag, k->pluck_deadline, NULL);
    if (ev.type == GRPC_OP_COMPLETE)
        return ev.success;
    /*
     * The call's deadline should have ended it long ago. Cancel, then the
     * tag is guaranteed to come back.
     */
    cn_warn(k->c->id, "gRPC call outlived its deadline by %d ms; cancelling it", SW_PLUCK_SLACK_MS);
    grpc_call_cancel(k->call, NULL);
    ev = grpc_completion_queue_pluck(k->c->cq, tag, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    return ev.type == GRPC_OP_COMPLETE ? ev.success : 0;
}

/* Collects the final status and releases everything the call holds. */
static int call_end(sw_call *k, sw_rpc_status *st)
{
    if (k->status_pending) {
        call_wait(k, &k->tag_status);
        k->status_pending = false;
    }
    bool we_cancelled = false;
    if (k->slot) {
        pthread_mutex_lock(k->slot->lock);
        k->slot->call = NULL;
        we_cancelled = k->slot->cancelled;
        pthread_mutex_unlock(k->slot->lock);
    }
    char *details = grpc_slice_to_c_string(k->details);
    if (k->status == GRPC_STATUS_OK || !k->error_string || (details && details[0]))
        set_status(st, k->status, details);
    else
        set_status(st, k->status, k->error_string);
    st->cancelled_by_us = we_cancelled && k->status == GRPC_STATUS_CANCELLED;
    gpr_free(details);
    if (k->error_string)
        gpr_free((void *)k->error_string);
    grpc_slice_unref(k->details);
    grpc_metadata_array_destroy(&k->initial_md);
    grpc_metadata_array_destroy(&k->trailing_md);
    if (k->reply)
        grpc_byte_buffer_destroy(k->reply);
    if (k->call)
        grpc_call_unref(k->call);
    return st->code == GRPC_STATUS_OK ? 0 : -1;
}

/* Starts the receive of the final status, so a failing OAP ends the call early. */
static int call_start_status(sw_call *k)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.trailing_metadata = &k->trailing_md;
    op.data.recv_status_on_client.status = &k->status;
    op.data.recv_status_on_client.status_details = &k->details;
    op.data.recv_status_on_client.error_string = &k->error_string;
    if (grpc_call_start_batch(k->call, &op, 1, &k->tag_status, NULL) != GRPC_CALL_OK)
        return -1;
    k->status_pending = true;
    return 0;
}

static grpc_byte_buffer *pack_message(const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    /* grpc_slice_malloc aborts rather than return NULL, as all gpr allocations do. */
    grpc_slice s = grpc_slice_malloc(len);
    protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static ProtobufCMessage *unpack_reply(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc)
{
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return NULL;
    grpc_slice s = grpc_byte_buffer_reader_readall(&reader);
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    grpc_byte_buffer_reader_destroy(&reader);
    return m;
}

int sw_unary(sw_client *c, sw_endpoint *ep, const char *method, const ProtobufCMessage *req,
             const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp, sw_cancel_slot *slot,
             sw_rpc_status *st)
{
    sw_call k;
    if (resp)
        *resp = NULL;
    if (call_begin(c, ep, method, &k, slot) != 0) {
        set_status(st, GRPC_STATUS_INTERNAL, "cannot create a gRPC call");
        call_end(&k, st);
        set_status(st, GRPC_STATUS_INTERNAL, "cannot create a gRPC call");
        return -1;
    }
    grpc_byte_buffer *msg = pack_message(req);
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = k.n_md;
    ops[0].data.send_initial_metadata.metadata = k.n_md ? k.md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = msg;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &k.initial_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &k.reply;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &k.trailing_md;
    ops[5].data.recv_status_on_client.status = &k.status;
    ops[5].data.recv_status_on_client.status_details = &k.details;
    ops[5].data.recv_status_on_client.error_string = &k.error_string;
    grpc_call_error e = grpc_call_start_batch(k.call, ops, 6, &k.tag_status, NULL);
    if (e == GRPC_CALL_OK)
        call_wait(&k, &k.tag_status);
    else
        k.status = GRPC_STATUS_INTERNAL;
    grpc_byte_buffer_destroy(msg);
    if (e != GRPC_CALL_OK) {
        call_end(&k, st);
        set_status(st, GRPC_STATUS_INTERNAL, grpc_call_error_to_string(e));
        return -1;
    }
    if (k.status == GRPC_STATUS_OK && resp) {
        *resp = k.reply ? unpack_reply(k.reply, resp_desc) : NULL;
        if (!*resp) {
            call_end(&k, st);
            set_status(st, GRPC_STATUS_INTERNAL, "the OAP's reply could not be decoded");
            return -1;
        }
    }
    return call_end(&k, st);
}

/* ---- collectSnapshot ------------------------------------------------------ */

static grpc_byte_buffer *encode_snapshot(cn_sw_snapshot_encoder *enc, const cn_snap_ref *r)
{
    size_t len = cn_sw_snapshot_prepare(enc, r);
    if (len == 0)
        return NULL;
    /* grpc_slice_malloc aborts rather than return NULL, as all gpr allocations do. */
    grpc_slice s = grpc_slice_malloc(len);
    cn_sw_snapshot_pack(enc, GRPC_SLICE_START_PTR(s));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

int sw_collect_snapshots(sw_client *c, sw_endpoint *ep, cn_sw_snapshot_encoder *enc, sw_cancel_slot *slot,
                         const cn_snap_ref *refs, size_t n, sw_rpc_status *st)
{
    sw_call k;
    if (call_begin(c, ep, SW_METHOD_COLLECT, &k, slot) != 0) {
        call_end(&k, st);
        set_status(st, GRPC_STATUS_INTERNAL, "cannot create a gRPC call");
        return -1;
    }
    grpc_op ops[3];
    grpc_byte_buffer *cur = NULL, *next = NULL;
    bool ok = true;
    const char *local_err = NULL;
    /* Out of memory is worth a retry; gRPC refusing an operation is a bug. */
    grpc_status_code local_code = GRPC_STATUS_RESOURCE_EXHAUSTED;

    cur = encode_snapshot(enc, &refs[0]);
    if (!cur) {
        local_err = "out of memory encoding a snapshot";
        goto cancel;
    }
    for (size_t i = 0; i < n && ok; i++) {
        size_t nops = 0;
        memset(ops, 0, sizeof ops);
        if (i == 0) {
            ops[nops].op = GRPC_OP_SEND_INITIAL_METADATA;
            ops[nops].data.send_initial_metadata.count = k.n_md;
            ops[nops].data.send_initial_metadata.metadata = k.n_md ? k.md : NULL;
            nops++;
        }
        ops[nops].op = GRPC_OP_SEND_MESSAGE;
        ops[nops].data.send_message.send_message = cur;
        nops++;
        if (i + 1 == n) {
            /* Half-close with the last message: the OAP replies once it sees it. */
            ops[nops].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
            nops++;
        }
        if (grpc_call_start_batch(k.call, ops, nops, &k.tag_send, NULL) != GRPC_CALL_OK) {
            local_err = "gRPC refused a send operation";
            local_code = GRPC_STATUS_INTERNAL;
            goto cancel;
        }
        if (i == 0 && call_start_status(&k) != 0) {
            /* The send batch is in flight: take it back before giving up. */
            call_wait(&k, &k.tag_send);
            local_err = "gRPC refused the status operation";
            local_code = GRPC_STATUS_INTERNAL;
            goto cancel;
        }
        /* Encode the next snapshot while this one is on its way. */
        if (i + 1 < n) {
            next = encode_snapshot(enc, &refs[i + 1]);
        }
        ok = call_wait(&k, &k.tag_send) != 0;
        grpc_byte_buffer_destroy(cur);
        cur = next;
        next = NULL;
        if (i + 1 < n && !cur && ok) {
            local_err = "out of memory encoding a snapshot";
            goto cancel;
        }
    }
    if (cur) {
        /* A send failed, which means the call is over; the status says why. */
        grpc_byte_buffer_destroy(cur);
        cur = NULL;
    }
    if (ok) {
        memset(ops, 0, sizeof ops);
        ops[0].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[0].data.recv_initial_metadata.recv_initial_metadata = &k.initial_md;
        ops[1].op = GRPC_OP_RECV_MESSAGE;
        ops[1].data.recv_message.recv_message = &k.reply;
        if (grpc_call_start_batch(k.call, ops, 2, &k.tag_recv, NULL) == GRPC_CALL_OK)
            call_wait(&k, &k.tag_recv);
    }
    /* The reply's Commands are not used: canopy gets tasks through polling. */
    return call_end(&k, st);

cancel:
    if (cur)
        grpc_byte_buffer_destroy(cur);
    if (k.call)
        grpc_call_cancel(k.call, NULL);
    call_end(&k, st);
    set_status(st, local_code, local_err);
    return -1;
}

/* ---- options, check, setup ------------------------------------------------ */

const cn_option sw_client_tls_options[] = {
    {.type = CN_OPT_STR, .name = "ca_file", .offset = offsetof(sw_tls_opts, ca_file),
     .description = "PEM file with the CA certificates that sign the OAP's certificate; "
                    "the system's roots when unset"},
    {.type = CN_OPT_STR, .name = "cert_file", .offset = offsetof(sw_tls_opts, cert_file),
     .description = "PEM client certificate chain, for OAPs that require mutual TLS (with key_file)"},
    {.type = CN_OPT_STR, .name = "key_file", .offset = offsetof(sw_tls_opts, key_file),
     .description = "PEM private key of cert_file"},
    {.type = CN_OPT_STR, .name = "server_name", .offset = offsetof(sw_tls_opts, server_name),
     .description = "Name to verify the OAP's certificate against, when it differs from the "
                    "endpoint's host"},
    CN_OPT_END,
};

const cn_option sw_client_options[] = {SW_CLIENT_OPTIONS, CN_OPT_END};

/* host:port, [v6]:port, or a gRPC target URI such as dns:///oap:11800. */
static const char *endpoint_problem(const char *ep)
{
    if (!ep || !ep[0])
        return "is empty";
    if (strstr(ep, ":///") || strncmp(ep, "unix:", 5) == 0 || strncmp(ep, "ipv4:", 5) == 0 ||
        strncmp(ep, "ipv6:", 5) == 0)
        return NULL;
    const char *colon = strrchr(ep, ':');
    if (!colon || colon == ep)
        return "is not host:port (the OAP's gRPC port is usually 11800)";
    if (ep[0] == '[' && colon[-1] != ']')
        return "is not [ipv6]:port";
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || colon[1] == '\0' || port < 1 || port > 65535)
        return "has no valid port (1..65535)";
    for (const char *p = ep; p < colon; p++) {
        if (isspace((unsigned char)*p))
            return "contains white space";
    }
    return NULL;
}

static void check_file(cn_diag *d, const cn_node *tls_node, const char *key, const char *path)
{
    if (path && access(path, R_OK) != 0) {
        const cn_node *at = cn_options_node(tls_node, key);
        cn_diag_error(d, at ? at : tls_node, "tls.%s: cannot read %s", key, path);
    }
}

int sw_client_check(const sw_client *c, const cn_node *node, const char *owner, cn_diag *d)
{
    size_t before = d->n_errors;
    const cn_node *eps_node = cn_options_node(node, "endpoints");
    if (c->endpoints.n == 0)
        cn_diag_error(d, eps_node ? eps_node : node, "%s: endpoints lists no OAP address", owner);
    for (size_t i = 0; i < c->endpoints.n; i++) {
        const char *why = endpoint_problem(c->endpoints.v[i]);
        if (why) {
            const cn_node *at = eps_node;
            if (eps_node && eps_node->kind == CN_NODE_SEQ && i < eps_node->n)
                at = eps_node->items[i];
            cn_diag_error(d, at ? at : node, "endpoint \"%s\" %s", c->endpoints.v[i], why);
        }
    }
    if (c->authentication) {
        for (const char *p = c->authentication; *p; p++) {
            if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f) {
                const cn_node *at = cn_options_node(node, "authentication");
                cn_diag_error(d, at ? at : node, "authentication contains a control character, "
                                                 "which gRPC metadata cannot carry");
                break;
            }
        }
    }
    const cn_node *tls_node = cn_node_get(node, "tls");
    if (tls_node) {
        if ((c->tls.cert_file == NULL) != (c->tls.key_file == NULL))
            cn_diag_error(d, tls_node, "tls: cert_file and key_file go together (client certificate)");
        check_file(d, tls_node, "ca_file", c->tls.ca_file);
        check_file(d, tls_node, "cert_file", c->tls.cert_file);
        check_file(d, tls_node, "key_file", c->tls.key_file);
    } else if (c->tls.ca_file || c->tls.cert_file || c->tls.key_file) {
        cn_diag_error(d, node, "TLS files are set but tls is not");
    }
    return d->n_errors == before ? 0 : -1;
}

int sw_client_setup(sw_client *c, const char *id, const cn_node *node)
{
    c->id = id;
    c->tls_enabled = cn_node_get(node, "tls") != NULL;
    if (pthread_mutex_init(&c->ep_lock, NULL) != 0) {
        cn_error(id, "cannot create a mutex");
        return -1;
    }
    c->ep_lock_ok = true;
    if (c->endpoints.n == 0) {
        cn_error(id, "no OAP endpoint configured");
        return -1;
    }
    if (!(c->eps = calloc(c->endpoints.n, sizeof *c->eps))) {
        cn_error(id, "out of memory");
        return -1;
    }
    c->n_eps = c->endpoints.n;
    for (size_t i = 0; i < c->n_eps; i++)
        c->eps[i].target = c->endpoints.v[i];
    return grpc_setup(c);
}
