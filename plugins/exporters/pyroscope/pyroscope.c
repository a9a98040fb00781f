/*
 * Exporter `pyroscope`: every `interval`, one pprof profile per task and
 * (service, endpoint, mode) of the snapshots taken in that interval, pushed
 * to Grafana Pyroscope's ingest API (POST <url>/ingest?name=...&from=&until=
 * &format=pprof). The profiles are built by the call-tree and pprof code the
 * pprof files and the live profiles use (plugins/common/profiles), with a
 * wall sample type in nanoseconds, which Pyroscope files as its `wall`
 * profile type. pyroscope.h describes the data flow; docs/pyroscope.md the
 * settings, labels and delivery.
 *
 * This file: options, check, start, export, tick, flush, destroy.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pem.h"
#include "pyroscope.h"

static const cn_option basic_auth_options[] = {
    {CN_OPT_STR, "username", NULL, offsetof(pyro_basic_auth, username), "User name.", .required = true},
    {CN_OPT_STR, "password", NULL, offsetof(pyro_basic_auth, password),
     "Password; write it as ${env:VAR}, not in the file."},
    CN_OPT_END,
};

static const cn_option tls_options[] = {
    {CN_OPT_STR, "ca_file", NULL, offsetof(pyro_tls, ca_file),
     "PEM CA certificates the server's certificate must chain to (default: the system's)."},
    {CN_OPT_STR, "cert_file", NULL, offsetof(pyro_tls, cert_file),
     "PEM client certificate, for a server that asks for one (mutual TLS)."},
    {CN_OPT_STR, "key_file", NULL, offsetof(pyro_tls, key_file), "PEM private key of cert_file."},
    {CN_OPT_BOOL, "insecure_skip_verify", "false", offsetof(pyro_tls, insecure_skip_verify),
     "Do not verify the server's certificate (tests only: anyone in the path can read the profiles)."},
    CN_OPT_END,
};

static const cn_option pyro_options[] = {
    {CN_OPT_STR, "url", NULL, offsetof(pyro_ctx, url),
     "Pyroscope's base URL, http:// or https:// (e.g. http://pyroscope:4040); profiles go to <url>/ingest.",
     .required = true},
    {CN_OPT_DURATION, "interval", "10s", offsetof(pyro_ctx, interval_ms),
     "Length of each profile's time range, in whole seconds: every interval, each task with new snapshots gets "
     "one profile per (service, endpoint). Intervals are aligned to the clock, so they never overlap.",
     .min = 1000, .max = 3600 * 1000},
    {CN_OPT_STR, "name", NULL, offsetof(pyro_ctx, name),
     "Application name in Pyroscope (the `name` of /ingest); default: the service each agent reports."},
    {CN_OPT_STRMAP, "labels", NULL, offsetof(pyro_ctx, labels),
     "Static labels added to every profile (names of [A-Za-z0-9_.]), e.g. {env: prod, region: eu}."},
    {CN_OPT_STR, "tenant_id", NULL, offsetof(pyro_ctx, tenant_id),
     "Sent as X-Scope-OrgID, for a multi-tenant Pyroscope (or Grafana Cloud)."},
    {CN_OPT_MAP, "basic_auth", NULL, offsetof(pyro_ctx, basic_auth), "HTTP basic authentication.",
     .sub = basic_auth_options},
    {CN_OPT_STR, "bearer_token", NULL, offsetof(pyro_ctx, bearer_token),
     "Sent as Authorization: Bearer; write it as ${env:VAR}. Alternative to bearer_token_file and basic_auth."},
    {CN_OPT_STR, "bearer_token_file", NULL, offsetof(pyro_ctx, bearer_token_file),
     "File holding the bearer token (one line), read at start."},
    {CN_OPT_MAP, "tls", NULL, offsetof(pyro_ctx, tls), "TLS settings for an https:// url.", .sub = tls_options},
    {CN_OPT_DURATION, "timeout", "10s", offsetof(pyro_ctx, timeout_ms),
     "Deadline of one push (connect included); past it the push is retried.", .min = 100, .max = 600 * 1000},
    {CN_OPT_DURATION, "delay", "5s", offsetof(pyro_ctx, delay_ms),
     "How long after its end an interval is closed and pushed, so that snapshots still in agents' batches and "
     "in merge_by_task (flush_interval) make it in. A snapshot arriving later goes into the next open "
     "interval (canopy_pyroscope_late_snapshots_total).",
     .min = 0, .max = 600 * 1000},
    {CN_OPT_INT, "max_profiles", "10000", offsetof(pyro_ctx, max_profiles),
     "Interval profiles held open at once (tasks x endpoints x intervals not yet closed); snapshots that would "
     "need one more are dropped and counted.",
     .min = 1, .max = 10000000},
    {CN_OPT_INT, "max_nodes", "20000", offsetof(pyro_ctx, max_nodes),
     "Call tree nodes per profile; a stack needing more is cut under a \"[truncated]\" frame and counted.",
     .min = 16, .max = 100000000},
    {CN_OPT_SIZE, "max_pending_bytes", "64MiB", offsetof(pyro_ctx, max_pending_bytes),
     "Rendered profiles waiting for the server (it is down or slow). Past this, new chunks are handed back "
     "to the core's retry_on_failure (and wait in the spool, when there is one) instead of memory.",
     .min = 1 << 16, .max = 1LL << 40},
    CN_OPT_END,
};

/* ---- configuration -------------------------------------------------------- */

static bool label_name_ok(const char *k)
{
    if (!*k)
        return false;
    for (const char *q = k; *q; q++)
        if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') || *q == '_' ||
              *q == '.'))
            return false;
    return true;
}

static void check_file(cn_diag *d, const cn_node *at, const char *what, const char *path, bool secret)
{
    char *text = secret ? cn_token_file_read(path, NULL) : cn_pem_read(path, NULL);
    if (!text)
        cn_diag_error(d, at, "%s: cannot read %s: %s", what, path,
                      errno == EINVAL ? "empty, holds a NUL byte, or not a regular file" : strerror(errno));
    else if (!secret && !strstr(text, "-----BEGIN "))
        cn_diag_error(d, at, "%s: %s is not PEM", what, path);
    cn_pem_free_secret(text);
}

static int pyro_check(void *vctx, cn_component *self, cn_diag *d)
{
    pyro_ctx *p = vctx;
    const cn_node *node = cn_component_node(self);
    size_t before = d->n_errors;
    const char *url = p->url ? p->url : "";
    bool https = strncmp(url, "https://", 8) == 0;
    if (!https && strncmp(url, "http://", 7) != 0)
        cn_diag_error(d, cn_options_node(node, "url"), "url \"%s\" must start with http:// or https://", url);
    else if (strchr(url, '?') || strchr(url, '#'))
        cn_diag_error(d, cn_options_node(node, "url"),
                      "url \"%s\" is the server's base URL: no query or fragment (canopy adds /ingest?...)", url);
    if (p->interval_ms % 1000 != 0)
        cn_diag_error(d, cn_options_node(node, "interval"),
                      "interval must be whole seconds: Pyroscope's from and until are Unix seconds");
    if (p->name && !*p->name)
        cn_diag_error(d, cn_options_node(node, "name"), "name must not be empty (leave it out for the service)");
    const cn_node *lnode = cn_options_node(node, "labels");
    static const char *const ours[] = {"service_name", "endpoint", "task_id", "mode", "__name__", NULL};
    for (size_t i = 0; i + 1 < p->labels.n; i += 2) {
        const char *k = p->labels.v[i];
        const cn_node *at = lnode && lnode->kind == CN_NODE_MAP && i / 2 < lnode->n ? lnode->keys[i / 2] : lnode;
        if (!label_name_ok(k))
            cn_diag_error(d, at ? at : node, "label name \"%s\": Pyroscope takes only [A-Za-z0-9_.]", k);
        for (size_t j = 0; ours[j]; j++)
            if (strcmp(k, ours[j]) == 0)
                cn_diag_error(d, at ? at : node, "label \"%s\" is set by canopy for every profile", k);
    }
    int auths = (p->basic_auth.username != NULL) + (p->bearer_token != NULL) + (p->bearer_token_file != NULL);
    if (auths > 1) {
        const cn_node *at = cn_options_node(node, p->bearer_token ? "bearer_token" : "bearer_token_file");
        cn_diag_error(d, at ? at : node, "basic_auth, bearer_token and bearer_token_file: set one of them");
    }
    if (p->bearer_token && !*p->bearer_token)
        cn_diag_error(d, cn_options_node(node, "bearer_token"),
                      "bearer_token is empty (is the environment variable set?)");
    if (p->bearer_token_file)
        check_file(d, cn_options_node(node, "bearer_token_file"), "bearer_token_file", p->bearer_token_file, true);
    const cn_node *tnode = cn_node_get(node, "tls");
    if (p->tls.ca_file)
        check_file(d, cn_options_node(tnode, "ca_file"), "tls.ca_file", p->tls.ca_file, false);
    if (p->tls.cert_file)
        check_file(d, cn_options_node(tnode, "cert_file"), "tls.cert_file", p->tls.cert_file, false);
    if (p->tls.key_file)
        check_file(d, cn_options_node(tnode, "key_file"), "tls.key_file", p->tls.key_file, false);
    if ((p->tls.cert_file != NULL) != (p->tls.key_file != NULL))
        cn_diag_error(d, tnode ? tnode : node, "tls: cert_file and key_file go together");
    if (tnode && !https)
        cn_diag_error(d, tnode, "tls is set but url is not https://");
    return d->n_errors == before ? 0 : -1;
}

/* The exporter's retry_on_failure intervals (the core applies them to chunks; pushes wait as long). */
static int64_t retry_setting(const cn_node *node, const char *key, int64_t fallback)
{
    const cn_node *v = cn_node_get(cn_node_get(node, "retry_on_failure"), key);
    int64_t ms;
    if (v && v->kind == CN_NODE_SCALAR && v->scalar && cn_parse_duration_ms(v->scalar, &ms) == 0 && ms > 0)
        return ms;
    return fallback;
}

/* ---- start and destroy ---------------------------------------------------- */

static void make_metrics(pyro_ctx *p)
{
    const char *l = cn_component_labels(p->self);
    char cl[512];
    p->m_pushes = cn_counter("canopy_pyroscope_pushes_total", "Profiles Pyroscope accepted (2xx).", l);
    p->m_bytes = cn_counter("canopy_pyroscope_pushed_bytes_total", "Bytes of the accepted profiles (gzipped pprof).",
                            l);
    p->m_snapshots_pushed = cn_counter("canopy_pyroscope_pushed_snapshots_total",
                                       "Snapshots in the profiles Pyroscope accepted.", l);
    const char *help = "Pushes that failed, by class: 4xx (dropped, not retried; 408 and 429 are retried), 5xx and "
                       "transport (timeouts, refused connections; retried).";
    snprintf(cl, sizeof cl, "%s,class=\"4xx\"", l);
    p->m_fail_4xx = cn_counter("canopy_pyroscope_push_failures_total", help, cl);
    snprintf(cl, sizeof cl, "%s,class=\"5xx\"", l);
    p->m_fail_5xx = cn_counter("canopy_pyroscope_push_failures_total", help, cl);
    snprintf(cl, sizeof cl, "%s,class=\"transport\"", l);
    p->m_fail_transport = cn_counter("canopy_pyroscope_push_failures_total", help, cl);
    p->m_dropped_profiles = cn_counter("canopy_pyroscope_dropped_profiles_total",
                                       "Profiles dropped: refused by the server (4xx) or left at shutdown.", l);
    help = "Snapshots dropped, by reason: rejected (the server answered 4xx), limit (max_profiles or out of "
           "memory), render (out of memory), shutdown (not pushed when the exporter stopped).";
    snprintf(cl, sizeof cl, "%s,reason=\"rejected\"", l);
    p->m_dropped_snapshots_4xx = cn_counter("canopy_pyroscope_dropped_snapshots_total", help, cl);
    snprintf(cl, sizeof cl, "%s,reason=\"limit\"", l);
    p->m_dropped_snapshots_limit = cn_counter("canopy_pyroscope_dropped_snapshots_total", help, cl);
    snprintf(cl, sizeof cl, "%s,reason=\"render\"", l);
    p->m_dropped_snapshots_render = cn_counter("canopy_pyroscope_dropped_snapshots_total", help, cl);
    snprintf(cl, sizeof cl, "%s,reason=\"shutdown\"", l);
    p->m_dropped_snapshots_shutdown = cn_counter("canopy_pyroscope_dropped_snapshots_total", help, cl);
    p->m_late_snapshots = cn_counter("canopy_pyroscope_late_snapshots_total",
                                     "Snapshots whose interval was already pushed; added to the next open one.", l);
    p->m_truncated = cn_counter("canopy_pyroscope_truncated_stacks_total",
                                "Stacks cut by max_nodes (still counted, under a [truncated] frame).", l);
    p->m_pending = cn_gauge("canopy_pyroscope_pending_profiles", "Profiles waiting to be pushed.", l);
    p->m_pending_bytes = cn_gauge("canopy_pyroscope_pending_bytes", "Bytes of the profiles waiting to be pushed.", l);
    p->m_open_profiles = cn_gauge("canopy_pyroscope_open_profiles", "Interval profiles still taking snapshots.", l);
    p->m_latency_sum_ms = cn_counter("canopy_pyroscope_push_duration_milliseconds_total",
                                     "Time spent in push requests, answered or not (with "
                                     "canopy_pyroscope_push_requests_total: the mean push latency).", l);
    p->m_latency_count = cn_counter("canopy_pyroscope_push_requests_total", "Push requests made, answered or not.", l);
    p->m_latency_last = cn_gauge("canopy_pyroscope_push_last_duration_milliseconds",
                                 "Duration of the latest push request.", l);
}

static int pyro_start(void *vctx, cn_component *self)
{
    pyro_ctx *p = vctx;
    p->self = self;
    p->id = cn_component_id(self);
    p->tasks = cn_component_tasks(self);
    p->rl_fail.interval_ms = 10000;
    p->rl_retry.interval_ms = 10000;
    p->rl_drop.interval_ms = 10000;
    make_metrics(p);
    const cn_node *node = cn_component_node(self);
    p->retry_initial_ms = retry_setting(node, "initial_interval", 1000);
    p->retry_max_ms = retry_setting(node, "max_interval", 30000);
    size_t n = strlen(p->url);
    while (n > 0 && p->url[n - 1] == '/')
        n--;
    if (!(p->base_url = strndup(p->url, n)) || pyro_windows_init(p) != 0) {
        cn_error(p->id, "out of memory");
        return -1;
    }
    if (p->bearer_token_file) {
        if (!(p->token = cn_token_file_read(p->bearer_token_file, NULL))) {
            cn_error(p->id, "bearer_token_file %s: %s", p->bearer_token_file, strerror(errno));
            return -1;
        }
    } else if (p->bearer_token && !(p->token = strdup(p->bearer_token))) {
        cn_error(p->id, "out of memory");
        return -1;
    }
    if (pyro_http_open(p) != 0)
        return -1;
    cn_info(p->id, "pushing a profile per task and endpoint every %llds to %s/ingest (%s%s%s, timeout %lld ms)",
            (long long)(p->interval_ms / 1000), p->base_url,
            p->basic_auth.username ? "basic auth" : p->token ? "bearer token" : "no credentials",
            p->tenant_id ? ", tenant " : "", p->tenant_id ? p->tenant_id : "", (long long)p->timeout_ms);
    return 0;
}

static void pyro_destroy(void *vctx)
{
    pyro_ctx *p = vctx;
    /* Partly started contexts come here too: every step checks what exists. The options
     * themselves are freed by the core (cn_options_free). */
    pyro_http_close(p);
    pyro_windows_free(p);
    free(p->base_url);
    p->base_url = NULL;
    cn_pem_free_secret(p->token);
    p->token = NULL;
}

/* Shutdown ran out of time during a push: abort it (libcurl's progress callback reads the flag). */
static void pyro_interrupt(void *vctx) { atomic_store(&((pyro_ctx *)vctx)->interrupted, true); }

/* ---- pushing ---------------------------------------------------------------- */

static void pop_pending(pyro_ctx *p)
{
    pyro_push *x = p->pending;
    p->pending = x->next;
    if (!p->pending)
        p->pending_tail = NULL;
    p->n_pending--;
    p->pending_bytes -= (int64_t)x->len;
    pyro_push_free(x);
    cn_metric_set(p->m_pending, (int64_t)p->n_pending);
    cn_metric_set(p->m_pending_bytes, p->pending_bytes);
}

/* Outcome of one push: done (sent, or refused for good), or to be retried. */
static bool push_one(pyro_ctx *p, pyro_push *x)
{
    pyro_response r;
    int rc = pyro_http_post(p, x->url, x->body, x->len, &r);
    cn_metric_add(p->m_latency_sum_ms, r.elapsed_ms);
    cn_metric_inc(p->m_latency_count);
    cn_metric_set(p->m_latency_last, r.elapsed_ms);
    if (rc == 0 && r.status >= 200 && r.status < 300) {
        cn_metric_inc(p->m_pushes);
        cn_metric_add(p->m_bytes, (int64_t)x->len);
        cn_metric_add(p->m_snapshots_pushed, x->snapshots);
        cn_debug(p->id, "pushed %lld snapshots of task %s (%zu bytes, %lld ms)", (long long)x->snapshots, x->task_id,
                 x->len, (long long)r.elapsed_ms);
        return true;
    }
    /* 408 and 429 ask to come back later; any other 4xx will not change by sending it again. */
    if (rc == 0 && r.status >= 400 && r.status < 500 && r.status != 408 && r.status != 429) {
        cn_metric_inc(p->m_fail_4xx);
        cn_metric_inc(p->m_dropped_profiles);
        cn_metric_add(p->m_dropped_snapshots_4xx, x->snapshots);
        cn_log_limited(&p->rl_fail, CN_LOG_ERROR, p->id,
                       "Pyroscope refused the profile of task %s (HTTP %ld: %s); %lld snapshots dropped%s",
                       x->task_id, r.status, r.body_len ? r.body : "no answer body", (long long)x->snapshots,
                       r.status == 401 || r.status == 403 ? ". Check basic_auth / bearer_token / tenant_id" : "");
        return true;
    }
    if (rc != 0)
        cn_metric_inc(p->m_fail_transport);
    else if (r.status >= 400 && r.status < 500)
        cn_metric_inc(p->m_fail_4xx);
    else
        cn_metric_inc(p->m_fail_5xx);
    char what[600];
    if (rc != 0)
        snprintf(what, sizeof what, "%s", r.error);
    else
        snprintf(what, sizeof what, "HTTP %ld: %s", r.status, r.body_len ? r.body : "no answer body");
    cn_log_limited(&p->rl_retry, CN_LOG_WARN, p->id,
                   "push to %s failed (%s); %zu profiles wait and will be retried", p->base_url, what, p->n_pending);
    return false;
}

/* Pushes what is pending, oldest first, until a push must be retried (then backs off). */
static void push_pending(pyro_ctx *p)
{
    while (p->pending && !atomic_load(&p->interrupted)) {
        if (cn_mono_ms() < p->next_attempt_ms)
            return;
        bool done = push_one(p, p->pending);
        p->last_busy_ms = cn_mono_ms(); /* time spent pushing is not idle time: chunks may have queued */
        if (!done) {
            p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : p->retry_initial_ms;
            if (p->backoff_ms > p->retry_max_ms)
                p->backoff_ms = p->retry_max_ms;
            /* Jitter in [backoff/2, backoff], as the core's retries. */
            int64_t wait = p->backoff_ms / 2 + (p->backoff_ms > 1 ? rand() % (p->backoff_ms / 2 + 1) : 0);
            p->next_attempt_ms = cn_mono_ms() + wait;
            return;
        }
        p->backoff_ms = 0;
        p->next_attempt_ms = 0;
        pop_pending(p);
    }
}

static cn_status pyro_export(void *vctx, const cn_chunk *chunk)
{
    pyro_ctx *p = vctx;
    /* Pushing is cb_tick's job, between chunks; here only when the pending pushes are over their bound
     * (the core is then retrying this chunk, and no tick runs until it is taken). */
    if (p->pending_bytes > p->max_pending_bytes)
        push_pending(p);
    if (p->pending_bytes > p->max_pending_bytes && chunk->id != p->last_chunk) {
        /* The server has been away a while: the chunk waits in the core (retry_on_failure, spool). */
        cn_log_limited(&p->rl_retry, CN_LOG_WARN, p->id,
                       "%zu profiles (%lld bytes, over max_pending_bytes) wait for %s; new snapshots wait in the "
                       "exporter's queue",
                       p->n_pending, (long long)p->pending_bytes, p->base_url);
        return CN_RETRY;
    }
    pyro_windows_add(p, chunk);
    pyro_windows_close(p, pyro_windows_clock(p), false);
    return CN_OK;
}

static void pyro_tick(void *vctx, int64_t now_mono_ms)
{
    (void)now_mono_ms;
    pyro_ctx *p = vctx;
    pyro_windows_close(p, pyro_windows_clock(p), false);
    push_pending(p);
}

/* Shutdown: the open intervals are closed early (their until is the interval's end) and everything is tried once. */
static void pyro_flush(void *vctx)
{
    pyro_ctx *p = vctx;
    if (!p->open)
        return;
    pyro_windows_close(p, cn_now_ms(), true);
    p->next_attempt_ms = 0;
    while (p->pending && !atomic_load(&p->interrupted) && push_one(p, p->pending))
        pop_pending(p);
    int64_t left = 0;
    size_t profiles = p->n_pending;
    for (pyro_push *x = p->pending; x; x = x->next)
        left += x->snapshots;
    while (p->pending)
        pop_pending(p);
    if (profiles) {
        cn_metric_add(p->m_dropped_profiles, (int64_t)profiles);
        cn_metric_add(p->m_dropped_snapshots_shutdown, left);
        cn_warn(p->id, "stopping with %zu profiles (%lld snapshots) not pushed to %s: dropped", profiles,
                (long long)left, p->base_url);
    }
}

const cn_exporter_plugin cn_exporter_pyroscope = {
    .base =
        {
            .kind = CN_EXPORTER,
            .type = "pyroscope",
            .description = "Grafana Pyroscope: every interval, a pprof wall profile per task and endpoint, pushed to "
                           "its /ingest API (docs/pyroscope.md).",
            .ctx_size = sizeof(pyro_ctx),
            .options = pyro_options,
            .cb_check = pyro_check,
            .cb_start = pyro_start,
            .cb_destroy = pyro_destroy,
        },
    .cb_export = pyro_export,
    .cb_tick = pyro_tick,
    .cb_flush = pyro_flush,
    .cb_interrupt = pyro_interrupt,
};
