/*
 * Exporter `skywalking`: sends merged snapshots to SkyWalking OAP over gRPC
 * (skywalking.v3.ProfileTask/collectSnapshot), and optionally serves as the
 * task source that proxies the OAP's profile tasks to the agents (sw_tasks.c).
 *
 * One client-streaming call carries one chunk (split only past
 * max_snapshots_per_call), snapshots in the order merge_by_task made them.
 * A chunk counts as sent only when the OAP answered the call with OK.
 */
#include <ctype.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sw.h"

static const cn_option sw_tls_options[] = {
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

static const cn_option sw_options[] = {
    {.type = CN_OPT_STRLIST, .name = "endpoints", .offset = offsetof(sw_ctx, endpoints), .required = true,
     .description = "OAP gRPC addresses as host:port (default OAP port 11800); calls go round "
                    "robin, and fail over to the next address when one does not answer"},
    {.type = CN_OPT_STR, .name = "authentication", .offset = offsetof(sw_ctx, authentication),
     .description = "Token sent as the `authentication` metadata on every call, as the OAP's "
                    "authentication setting expects"},
    {.type = CN_OPT_MAP, .name = "tls", .offset = offsetof(sw_ctx, tls), .sub = sw_tls_options,
     .description = "TLS to the OAP; plaintext (the OAP's default) when absent. `tls: {}` "
                    "verifies against the system's roots"},
    {.type = CN_OPT_DURATION, .name = "timeout", .default_value = "10s", .offset = offsetof(sw_ctx, timeout_ms),
     .min = 1, .max = 3600 * 1000,
     .description = "Deadline of each call to the OAP; a call past it fails as DEADLINE_EXCEEDED "
                    "and its chunk is retried"},
    {.type = CN_OPT_INT, .name = "max_snapshots_per_call", .default_value = "10000",
     .offset = offsetof(sw_ctx, max_snapshots_per_call), .min = 1, .max = 10 * 1000 * 1000,
     .description = "A chunk with more snapshots is sent as several calls, so that one call "
                    "fits in its deadline; a retry resumes after the calls already accepted"},
    {.type = CN_OPT_DURATION, .name = "reconnect_backoff_max", .default_value = "5s",
     .offset = offsetof(sw_ctx, reconnect_backoff_max_ms), .min = 100, .max = 600 * 1000,
     .description = "Longest wait between reconnection attempts to an OAP that went away"},
    CN_OPT_END,
};

/* ---- check ---------------------------------------------------------------- */

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

static int sw_check(void *vctx, cn_component *self, cn_diag *d)
{
    sw_ctx *c = vctx;
    const cn_node *node = cn_component_node(self);
    size_t before = d->n_errors;
    const cn_node *eps_node = cn_options_node(node, "endpoints");

    if (c->endpoints.n == 0)
        cn_diag_error(d, eps_node ? eps_node : node, "exporter %s: endpoints lists no OAP address",
                      cn_component_id(self));
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

/* ---- start and destroy ---------------------------------------------------- */

static void make_metrics(sw_ctx *c)
{
    const char *l = cn_component_labels(c->self);
    c->m_snap_sent = cn_counter("canopy_skywalking_snapshots_sent_total",
                                "Snapshots the OAP accepted (the call ended OK)", l);
    c->m_snap_failed = cn_counter("canopy_skywalking_snapshots_failed_total",
                                  "Snapshots dropped because the OAP refused them for good", l);
    c->m_chunks_sent = cn_counter("canopy_skywalking_chunks_sent_total", "Chunks fully accepted by the OAP", l);
    c->m_chunks_retry = cn_counter("canopy_skywalking_chunks_retried_total",
                                   "Exports that failed transiently and were handed back for retry", l);
    c->m_chunks_failed = cn_counter("canopy_skywalking_chunks_failed_total",
                                    "Chunks dropped after a permanent error (e.g. UNAUTHENTICATED)", l);
    c->m_calls_ok = cn_counter("canopy_skywalking_collect_calls_total",
                               "collectSnapshot calls that ended OK", l);
    c->m_failovers = cn_counter("canopy_skywalking_failovers_total",
                                "Calls moved to the next OAP endpoint after a transient failure", l);
}

static int sw_start(void *vctx, cn_component *self)
{
    sw_ctx *c = vctx;
    c->self = self;
    c->id = cn_component_id(self);
    c->tls_enabled = cn_node_get(cn_component_node(self), "tls") != NULL;
    c->rl_fail.interval_ms = 10000;
    c->rl_retry.interval_ms = 10000;
    make_metrics(c);

    if (pthread_mutex_init(&c->ep_lock, NULL) != 0) {
        cn_error(c->id, "cannot create a mutex");
        return -1;
    }
    c->ep_lock_ok = true;
    if (!(c->export_slot = calloc(1, sizeof *c->export_slot)) || pthread_mutex_init(&c->export_lock, NULL) != 0) {
        cn_error(c->id, "cannot create a mutex");
        return -1;
    }
    c->export_lock_ok = true;
    c->export_slot->lock = &c->export_lock;
    if (c->endpoints.n == 0) {
        cn_error(c->id, "no OAP endpoint configured");
        return -1;
    }
    c->eps = calloc(c->endpoints.n, sizeof *c->eps);
    if (!c->eps) {
        cn_error(c->id, "out of memory");
        return -1;
    }
    c->n_eps = c->endpoints.n;
    for (size_t i = 0; i < c->n_eps; i++)
        c->eps[i].target = c->endpoints.v[i];
    if (sw_grpc_setup(c) != 0)
        return -1;

    char list[512];
    size_t off = 0;
    list[0] = '\0';
    for (size_t i = 0; i < c->n_eps && off < sizeof list; i++)
        off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", i ? ", " : "", c->eps[i].target);
    cn_info(c->id, "sending snapshots to OAP %s (%s, %s, timeout %lld ms)", list,
            c->tls_enabled ? "TLS" : "plaintext",
            (c->authentication && c->authentication[0]) ? "authentication token set" : "no token",
            (long long)c->timeout_ms);
    return 0;
}

static void sw_destroy(void *vctx)
{
    sw_ctx *c = vctx;
    /* Partly started contexts come here too: every step checks what exists. */
    if (c->tasks) {
        sw_tasks_stop(c);
        sw_tasks_free(c);
    }
    sw_grpc_teardown(c);
    free(c->eps);
    c->eps = NULL;
    cn_sw_snapshot_encoder_free(&c->snap_enc);
    if (c->ep_lock_ok) {
        pthread_mutex_destroy(&c->ep_lock);
        c->ep_lock_ok = false;
    }
    if (c->export_lock_ok) {
        pthread_mutex_destroy(&c->export_lock);
        c->export_lock_ok = false;
    }
    free(c->export_slot);
    c->export_slot = NULL;
    /* The options themselves are freed by the core (cn_options_free). */
}

/* Shutdown ran out of time during an export: abort the call, and any later one. */
static void sw_interrupt(void *vctx)
{
    sw_ctx *c = vctx;
    if (!c->export_lock_ok)
        return;
    pthread_mutex_lock(&c->export_lock);
    c->export_slot->cancelled = true;
    if (c->export_slot->call)
        grpc_call_cancel(c->export_slot->call, NULL);
    pthread_mutex_unlock(&c->export_lock);
}

/* ---- export --------------------------------------------------------------- */

/* Where to start in a chunk: after the calls a failed attempt got accepted. */
static size_t resume_point(sw_ctx *c, const cn_chunk *chunk)
{
    if (c->resume.chunk == chunk && c->resume.refs == chunk->refs && c->resume.n == chunk->n &&
        c->resume.first == chunk->refs[0].snap && c->resume.done < chunk->n)
        return c->resume.done;
    return 0;
}

static void remember_progress(sw_ctx *c, const cn_chunk *chunk, size_t done)
{
    c->resume.chunk = done ? chunk : NULL;
    c->resume.refs = chunk->refs;
    c->resume.first = chunk->refs[0].snap;
    c->resume.n = chunk->n;
    c->resume.done = done;
}

/* One call's worth of snapshots, with failover across the endpoints. */
static cn_status send_range(sw_ctx *c, const cn_snap_ref *refs, size_t n, sw_rpc_status *st,
                            sw_endpoint **last_ep)
{
    for (size_t attempt = 0; attempt < c->n_eps; attempt++) {
        sw_endpoint *ep = sw_pick_endpoint(c);
        *last_ep = ep;
        int rc = sw_collect_snapshots(c, ep, refs, n, st);
        sw_endpoint_result(c, ep, st);
        if (rc == 0) {
            cn_metric_inc(c->m_calls_ok);
            return CN_OK;
        }
        if (!sw_status_retryable(st))
            return CN_FAIL;
        if (attempt + 1 < c->n_eps)
            cn_metric_inc(c->m_failovers);
    }
    return CN_RETRY;
}

static cn_status sw_export(void *vctx, const cn_chunk *chunk)
{
    sw_ctx *c = vctx;
    if (chunk->n == 0)
        return CN_OK; /* e.g. the final, empty chunk of a task: nothing to send */

    size_t per = (size_t)c->max_snapshots_per_call;
    size_t start = resume_point(c, chunk);
    for (size_t off = start; off < chunk->n; off += per) {
        size_t len = chunk->n - off < per ? chunk->n - off : per;
        sw_rpc_status st;
        sw_endpoint *ep = NULL;
        cn_status r = send_range(c, chunk->refs + off, len, &st, &ep);
        if (r == CN_OK) {
            cn_metric_add(c->m_snap_sent, (int64_t)len);
            continue;
        }
        const char *task = chunk->task_id ? chunk->task_id : cn_ref_task(&chunk->refs[off]);
        if (st.cancelled_by_us) {
            /* Shutdown aborted the call (cb_interrupt): not the OAP's verdict. The core
             * counts it as a shutdown drop, or leaves it in the spool. */
            remember_progress(c, chunk, off);
            return CN_RETRY;
        }
        if (r == CN_RETRY) {
            remember_progress(c, chunk, off);
            cn_metric_inc(c->m_chunks_retry);
            cn_log_limited(&c->rl_retry, CN_LOG_WARN, c->id,
                           "collectSnapshot to %s failed: %s: %s; %zu snapshots of task %s stay "
                           "queued and will be retried",
                           ep->target, sw_status_name(st.code), st.detail, chunk->n - off, task);
            return CN_RETRY;
        }
        remember_progress(c, chunk, 0);
        cn_metric_inc(c->m_chunks_failed);
        cn_metric_add(c->m_snap_failed, (int64_t)(chunk->n - off));
        if (st.code == GRPC_STATUS_UNAUTHENTICATED || st.code == GRPC_STATUS_PERMISSION_DENIED)
            cn_log_limited(&c->rl_fail, CN_LOG_ERROR, c->id,
                           "OAP %s refused the authentication token (%s: %s); %zu snapshots of "
                           "task %s dropped. Check exporters.%s.authentication against the OAP's "
                           "authentication setting",
                           ep->target, sw_status_name(st.code), st.detail, chunk->n - off, task, c->id);
        else
            cn_log_limited(&c->rl_fail, CN_LOG_ERROR, c->id,
                           "OAP %s rejected collectSnapshot (%s: %s); %zu snapshots of task %s dropped",
                           ep->target, sw_status_name(st.code), st.detail, chunk->n - off, task);
        return CN_FAIL;
    }
    remember_progress(c, chunk, 0);
    cn_metric_inc(c->m_chunks_sent);
    return CN_OK;
}

/* ---- task source ---------------------------------------------------------- */

static int sw_task_source(void *vctx, cn_component *self, const cn_node *cfg, cn_task_registry *reg,
                          cn_diag *d)
{
    sw_ctx *c = vctx;
    /* Called first with no registry, while the graph is built: check only. */
    if (!reg)
        return sw_tasks_check(cfg, d);
    if (!c->self)
        c->self = self;
    return sw_tasks_start(c, cfg, reg, d);
}

static void sw_task_source_stop(void *vctx) { sw_tasks_stop(vctx); }

const cn_exporter_plugin cn_exporter_skywalking = {
    .type = "skywalking",
    .description = "SkyWalking OAP over gRPC: snapshots via ProfileTask/collectSnapshot; "
                   "also proxies the OAP's profile tasks (tasks.skywalking)",
    .ctx_size = sizeof(sw_ctx),
    .options = sw_options,
    .cb_check = sw_check,
    .cb_start = sw_start,
    .cb_export = sw_export,
    .cb_interrupt = sw_interrupt,
    .cb_task_source = sw_task_source,
    .cb_task_source_stop = sw_task_source_stop,
    .cb_destroy = sw_destroy,
};
