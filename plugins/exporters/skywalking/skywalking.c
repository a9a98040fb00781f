/*
 * Exporter `skywalking`: sends merged snapshots to SkyWalking OAP over gRPC
 * (skywalking.v3.ProfileTask/collectSnapshot). The task source that proxies
 * the OAP's profile tasks is an extension (plugins/extensions/skywalking)
 * that reads this exporter's endpoints, TLS and token.
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

static const cn_option sw_options[] = {
    SW_CLIENT_OPTIONS,
    {.type = CN_OPT_INT, .name = "max_snapshots_per_call", .default_value = "10000",
     .offset = offsetof(sw_ctx, max_snapshots_per_call), .min = 1, .max = 10 * 1000 * 1000,
     .description = "A chunk with more snapshots is sent as several calls, so that one call "
                    "fits in its deadline; a retry resumes after the calls already accepted"},
    CN_OPT_END,
};

static int sw_check(void *vctx, cn_component *self, cn_diag *d)
{
    sw_ctx *c = vctx;
    char owner[160];
    snprintf(owner, sizeof owner, "exporter %s", cn_component_id(self));
    return sw_client_check(&c->client, cn_component_node(self), owner, d);
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
    c->m_snap_continuous = cn_counter("canopy_skywalking_snapshots_continuous_total",
                                      "Snapshots of continuous tasks, never sent: the OAP's tasks end", l);
    c->m_failovers = cn_counter("canopy_skywalking_failovers_total",
                                "Calls moved to the next OAP endpoint after a transient failure", l);
}

static int sw_start(void *vctx, cn_component *self)
{
    sw_ctx *c = vctx;
    c->self = self;
    c->id = cn_component_id(self);
    c->rl_fail.interval_ms = 10000;
    c->rl_retry.interval_ms = 10000;
    make_metrics(c);
    if (!(c->export_slot = calloc(1, sizeof *c->export_slot)) || pthread_mutex_init(&c->export_lock, NULL) != 0) {
        cn_error(c->id, "cannot create a mutex");
        return -1;
    }
    c->export_lock_ok = true;
    c->export_slot->lock = &c->export_lock;
    sw_client *cl = &c->client;
    if (sw_client_setup(cl, c->id, cn_component_node(self)) != 0)
        return -1;
    char list[512];
    size_t off = 0;
    list[0] = '\0';
    for (size_t i = 0; i < cl->n_eps && off < sizeof list; i++)
        off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", i ? ", " : "", cl->eps[i].target);
    cn_info(c->id, "sending snapshots to OAP %s (%s, %s, timeout %lld ms)", list,
            cl->tls_enabled ? "TLS" : "plaintext",
            (cl->authentication && cl->authentication[0]) ? "authentication token set" : "no token",
            (long long)cl->timeout_ms);
    return 0;
}

static void sw_destroy(void *vctx)
{
    sw_ctx *c = vctx;
    /* Partly started contexts come here too: every step checks what exists. The
     * options themselves are freed by the core (cn_options_free). */
    sw_client_teardown(&c->client, NULL);
    cn_sw_snapshot_encoder_free(&c->snap_enc);
    if (c->export_lock_ok) {
        pthread_mutex_destroy(&c->export_lock);
        c->export_lock_ok = false;
    }
    free(c->export_slot);
    c->export_slot = NULL;
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
    for (size_t attempt = 0; attempt < c->client.n_eps; attempt++) {
        sw_endpoint *ep = sw_pick_endpoint(&c->client);
        *last_ep = ep;
        int rc = sw_collect_snapshots(&c->client, ep, &c->snap_enc, c->export_slot, refs, n, st);
        sw_endpoint_result(&c->client, ep, st);
        if (rc == 0) {
            cn_metric_inc(c->m_calls_ok);
            return CN_OK;
        }
        if (!sw_status_retryable(st))
            return CN_FAIL;
        if (attempt + 1 < c->client.n_eps)
            cn_metric_inc(c->m_failovers);
    }
    return CN_RETRY;
}

/*
 * Continuous tasks are canopy's own (canopy/tasks.h): the OAP knows no such task and its tasks
 * must end, so their snapshots never go to it. They are skipped, and counted, not failed.
 */
static cn_status sw_export(void *vctx, const cn_chunk *chunk)
{
    sw_ctx *c = vctx;
    if (chunk->n == 0)
        return CN_OK; /* e.g. the final, empty chunk of a task: nothing to send */
    cn_continuous_filter skip = {.reg = cn_component_tasks(c->self)};
    if (chunk->task_id && cn_tasks_is_continuous(skip.reg, chunk->task_id)) {
        cn_metric_add(c->m_snap_continuous, (int64_t)chunk->n);
        return CN_OK;
    }

    size_t per = (size_t)c->max_snapshots_per_call;
    size_t start = resume_point(c, chunk);
    for (size_t off = start, len = 0; off < chunk->n; off += len) {
        /* The next run of at most `per` snapshots that the OAP may see; progress stays an offset
         * into the whole chunk, so a retry resumes in the same place. */
        if (!chunk->task_id && cn_continuous_filter_skips(&skip, cn_ref_task(&chunk->refs[off]))) {
            cn_metric_inc(c->m_snap_continuous);
            len = 1;
            continue;
        }
        len = 1;
        while (off + len < chunk->n && len < per &&
               (chunk->task_id || !cn_continuous_filter_skips(&skip, cn_ref_task(&chunk->refs[off + len]))))
            len++;
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

const cn_exporter_plugin cn_exporter_skywalking = {
    .base =
        {
            .kind = CN_EXPORTER,
            .type = "skywalking",
            .description = "SkyWalking OAP over gRPC: snapshots via ProfileTask/collectSnapshot (its OAPs and "
                           "credentials also serve tasks.skywalking)",
            .ctx_size = sizeof(sw_ctx),
            .options = sw_options,
            .cb_check = sw_check,
            .cb_start = sw_start,
            .cb_destroy = sw_destroy,
        },
    .cb_export = sw_export,
    .cb_interrupt = sw_interrupt,
};
