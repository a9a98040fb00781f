/*
 * Exporter runtime: every exporter has its own bounded queue and thread, so a
 * slow or failing exporter never blocks the pipeline or the other exporters.
 * A chunk is handed to the exporter until it succeeds, fails permanently, or
 * its retry budget (retry_on_failure) runs out; drops are always counted.
 */
#include <stdlib.h>
#include <time.h>

#include "service.h"

#define EXPORTER_TICK_MS 100


/* When shutdown must be finished by (monotonic ms); 0 while running. */
static _Atomic int64_t shutdown_deadline_ms;

static void count_drop(cn_component *c, cn_metric *counter, const cn_chunk *chunk, const char *why);

void cn_exporter_count_drop(cn_component *c, const cn_chunk *chunk, const char *why)
{
    count_drop(c, c->rt->failed_snapshots, chunk, why);
}

static void count_drop(cn_component *c, cn_metric *counter, const cn_chunk *chunk, const char *why)
{
    atomic_store(&c->rt->failing, true);
    cn_metric_add(counter, (int64_t)chunk->n);
    cn_log_limited(&c->rt->fail_log, CN_LOG_WARN, c->id, "dropped %zu snapshots%s%s: %s", chunk->n,
                   chunk->task_id ? " of task " : "", chunk->task_id ? chunk->task_id : "", why);
}

/* Sleeps up to ms, waking early when shutdown's deadline comes first. */
static void backoff_sleep(int64_t ms)
{
    int64_t until = cn_mono_ms() + ms;
    for (;;) {
        int64_t now = cn_mono_ms();
        int64_t deadline = atomic_load(&shutdown_deadline_ms);
        if (now >= until || (deadline && now >= deadline))
            return;
        int64_t step = until - now < 50 ? until - now : 50;
        struct timespec ts = {0, step * 1000000};
        nanosleep(&ts, NULL);
    }
}

cn_status cn_export_with_retry(cn_component *c, cn_chunk *chunk, bool persistent)
{
    cn_exporter_runtime *rt = c->rt;
    const cn_exporter_plugin *plugin = cn_exporter_of(c);
    int64_t started = cn_mono_ms();
    int64_t interval = rt->common.retry_on_failure.initial_interval;
    for (;;) {
        cn_status st = plugin->cb_export(c->ctx, chunk);
        if (st == CN_OK) {
            atomic_store(&rt->failing, false);
            cn_metric_inc(rt->sent_chunks);
            cn_metric_add(rt->sent_snapshots, (int64_t)chunk->n);
            return CN_OK;
        }
        if (st == CN_FAIL) {
            count_drop(c, rt->failed_snapshots, chunk, "the exporter failed permanently");
            return CN_FAIL;
        }
        int64_t now = cn_mono_ms();
        int64_t deadline = atomic_load(&shutdown_deadline_ms);
        int64_t max_elapsed = rt->common.retry_on_failure.max_elapsed_time;
        if (deadline && now >= deadline) {
            if (persistent) {
                cn_warn(c->id, "shutdown_timeout ran out while retrying; %zu snapshots stay in the spool", chunk->n);
                return CN_RETRY;
            }
            count_drop(c, rt->shutdown_dropped_snapshots, chunk, "shutdown_timeout ran out while retrying");
            return CN_FAIL;
        }
        /* A spooled chunk waits on disk, so it is never given up on. */
        if (!persistent && !rt->common.retry_on_failure.enabled) {
            count_drop(c, rt->failed_snapshots, chunk, "export failed and retry_on_failure is disabled");
            return CN_FAIL;
        }
        if (!persistent && max_elapsed > 0 && now - started >= max_elapsed) {
            count_drop(c, rt->failed_snapshots, chunk, "retry_on_failure.max_elapsed_time ran out");
            return CN_FAIL;
        }
        if (persistent && now - started >= max_elapsed && max_elapsed > 0)
            atomic_store(&rt->failing, true); /* readiness: past the budget, though nothing is dropped */
        cn_metric_inc(rt->retries);
        /* Full jitter in [interval/2, interval] spreads retries of many collectors. */
        int64_t wait = interval / 2 + (interval > 1 ? rand() % (interval / 2 + 1) : 0);
        backoff_sleep(wait);
        interval *= 2;
        if (interval > rt->common.retry_on_failure.max_interval)
            interval = rt->common.retry_on_failure.max_interval;
    }
}

static void *exporter_main(void *arg)
{
    cn_component *c = arg;
    cn_exporter_runtime *rt = c->rt;
    const cn_exporter_plugin *plugin = cn_exporter_of(c);
    int64_t next_tick = cn_mono_ms() + EXPORTER_TICK_MS;
    for (;;) {
        cn_chunk *chunk = cn_queue_pop(&rt->queue, EXPORTER_TICK_MS);
        if (chunk) {
            int64_t deadline = atomic_load(&shutdown_deadline_ms);
            if (deadline && cn_mono_ms() >= deadline)
                count_drop(c, rt->shutdown_dropped_snapshots, chunk, "shutdown_timeout ran out");
            else
                cn_export_with_retry(c, chunk, false);
            cn_chunk_unref(chunk);
        } else if (cn_queue_drained(&rt->queue)) {
            break;
        }
        cn_metric_set(rt->queue_size, (int64_t)cn_queue_len(&rt->queue));
        int64_t now = cn_mono_ms();
        if (plugin->cb_tick && now >= next_tick) {
            plugin->cb_tick(c->ctx, now);
            next_tick = now + EXPORTER_TICK_MS;
        }
    }
    if (plugin->cb_flush)
        plugin->cb_flush(c->ctx);
    return NULL;
}

int cn_exporter_runtime_start(cn_component *c)
{
    cn_exporter_runtime *rt = c->rt;
    const char *l = c->labels;
    rt->sent_chunks = cn_counter("canopy_exporter_sent_chunks_total", "Chunks the exporter delivered.", l);
    rt->sent_snapshots = cn_counter("canopy_exporter_sent_snapshots_total", "Snapshots the exporter delivered.", l);
    rt->failed_snapshots = cn_counter("canopy_exporter_failed_snapshots_total",
                                      "Snapshots dropped because export failed (permanently or past the retry budget).", l);
    rt->retries = cn_counter("canopy_exporter_retries_total", "Export attempts retried after a transient failure.", l);
    rt->queue_full_snapshots = cn_counter("canopy_exporter_queue_full_snapshots_total",
                                          "Snapshots dropped because the exporter's sending_queue was full.", l);
    rt->shutdown_dropped_snapshots = cn_counter("canopy_exporter_shutdown_dropped_snapshots_total",
                                                "Snapshots still queued when shutdown_timeout ran out.", l);
    rt->queue_size = cn_gauge("canopy_exporter_queue_size", "Chunks waiting in the exporter's queue.", l);
    rt->queue_capacity = cn_gauge("canopy_exporter_queue_capacity", "Capacity of the exporter's queue.", l);
    cn_metric_set(rt->queue_capacity, rt->common.sending_queue.queue_size);
    rt->full_log.interval_ms = 10000;
    rt->fail_log.interval_ms = 10000;
    if (cn_queue_init(&rt->queue, (size_t)rt->common.sending_queue.queue_size) != 0)
        return -1;
    if (c->plugin->cb_start && c->plugin->cb_start(c->ctx, c) != 0)
        return -1;
    c->started = true;
    if (rt->common.spool.directory && cn_exporter_spool_start(c) != 0)
        return -1;
    if (pthread_create(&rt->thread, NULL, rt->spool ? cn_exporter_spool_main : exporter_main, c) != 0)
        return -1;
    rt->thread_started = true;
    return 0;
}

void cn_exporter_enqueue(cn_component *c, cn_chunk *chunk)
{
    cn_exporter_runtime *rt = c->rt;
    if (cn_queue_try_push(&rt->queue, chunk) == 0)
        return;
    cn_metric_add(rt->queue_full_snapshots, (int64_t)chunk->n);
    cn_log_limited(&rt->full_log, CN_LOG_WARN, c->id,
                   "sending_queue is full (%lld chunks): dropped %zu snapshots; the exporter is slower than the "
                   "input or its backend is down",
                   (long long)rt->common.sending_queue.queue_size, chunk->n);
    cn_chunk_unref(chunk);
}

void cn_exporter_runtime_close(cn_component *c)
{
    if (c->rt && c->rt->queue.items)
        cn_queue_close(&c->rt->queue);
    if (c->rt && c->rt->spool) {
        atomic_store(&c->rt->stopping, true);
        cn_spool_wake(c->rt->spool);
    }
}

void cn_exporter_runtime_join(cn_component *c, int64_t deadline_mono_ms)
{
    atomic_store(&shutdown_deadline_ms, deadline_mono_ms);
    if (c->rt && c->rt->thread_started) {
        /* Wait until the deadline; then a plugin stuck in a remote call is told to abort it. */
        int64_t left = deadline_mono_ms - cn_mono_ms();
        struct timespec until = cn_deadline_after(CLOCK_REALTIME, left > 0 ? left : 0); /* pthread_timedjoin_np's clock */
        if (pthread_timedjoin_np(c->rt->thread, NULL, &until) != 0) {
            if (cn_exporter_of(c)->cb_interrupt) {
                cn_warn(c->id, "shutdown_timeout ran out during an export; aborting the call in flight");
                cn_exporter_of(c)->cb_interrupt(c->ctx);
            }
            pthread_join(c->rt->thread, NULL);
        }
        c->rt->thread_started = false;
        /* The per-chunk lines are rate limited; say once how much shutdown cost. */
        int64_t lost = cn_metric_get(c->rt->shutdown_dropped_snapshots);
        if (lost > 0)
            cn_warn(c->id, "%lld snapshots were still queued or retrying when service.shutdown_timeout ran out "
                           "and were dropped; raise shutdown_timeout to drain longer",
                    (long long)lost);
    }
}

void cn_exporter_runtime_free(cn_component *c)
{
    cn_exporter_runtime *rt = c->rt;
    if (!rt->queue.items)
        return;
    /* Only reached when start failed half way: nothing consumes the queue. */
    cn_chunk *chunk;
    cn_queue_close(&rt->queue);
    while ((chunk = cn_queue_pop(&rt->queue, 0)))
        cn_chunk_unref(chunk);
    cn_queue_destroy(&rt->queue);
}
