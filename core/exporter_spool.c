/*
 * A durable exporter: one with a `spool:`. Its queue lives on disk: the
 * pipeline appends every chunk its processors emit (in the core's own form,
 * durable.h) to the exporter's spool, and the exporter's worker reads them
 * back and exports them, retrying for as long as it takes. A record is marked
 * done only once delivered (or permanently refused), so the committed cursor
 * never passes data the sink has not taken.
 *
 * Only a chunk that cannot be spooled (disk full, spool full with when_full:
 * block) waits in the exporter's memory queue instead; its batches then keep
 * their intake records undone until it is delivered, and while that queue is
 * half full the pipeline's receivers refuse new batches (retryable).
 *
 * After a restart, the exporter's spool and the pipeline's intake log both
 * replay; snapshots already in the exporter's delivered sets (delivered.h)
 * are skipped, so nothing reaches the sink twice.
 */
#include <stdio.h>
#include <stdlib.h>

#include "durable.h"
#include "intake.h"
#include "service.h"

/* Marks are pruned against the saved cursors this often. */
#define PRUNE_EVERY_MS 5000

static cn_delivery_pos delivery_until(cn_component *c)
{
    cn_exporter_runtime *rt = c->rt;
    return (cn_delivery_pos){cn_spool_read_position(rt->spool),
                             rt->pipeline && rt->pipeline->intake ? cn_intake_end(rt->pipeline->intake) : 0};
}

/* Exports one chunk it owns; returns false when shutdown abandoned it (it stays to be replayed). */
static bool deliver(cn_component *c, cn_chunk *chunk)
{
    cn_exporter_runtime *rt = c->rt;
    size_t skipped = cn_delivered_filter(rt->delivered, chunk);
    if (skipped)
        cn_metric_add(rt->replay_skipped, (int64_t)skipped);
    bool kept = true;
    if (chunk->n > 0 || chunk->task_final) {
        cn_status st = cn_export_with_retry(c, chunk, true);
        if (st == CN_OK)
            cn_delivered_commit(rt->delivered, chunk, delivery_until(c));
        else if (st == CN_RETRY)
            kept = false; /* shutdown: it stays for the next start */
    }
    cn_chunk_unref(chunk);
    return kept;
}

static bool deliver_record(cn_component *c, uint64_t seq, void *data, size_t len)
{
    cn_exporter_runtime *rt = c->rt;
    const char *why = NULL;
    cn_chunk *chunk = cn_durable_decode_chunk(data, len, &why);
    free(data);
    if (!chunk) {
        cn_warn(c->id, "spool record %llu cannot be read (%s); skipped", (unsigned long long)seq, why);
        cn_spool_done(rt->spool, seq);
        return true;
    }
    if (seq < cn_spool_replay_end(rt->spool))
        for (size_t i = 0; i < chunk->n_batches; i++)
            chunk->batches[i]->replayed = true;
    if (!deliver(c, chunk))
        return false;
    cn_spool_done(rt->spool, seq);
    return true;
}

static void seed_delivered(void *arg, const char *task, const char *segment, int32_t seq)
{
    cn_delivered_seed(arg, task, segment, seq);
}

void *cn_exporter_spool_main(void *arg)
{
    cn_component *c = arg;
    cn_exporter_runtime *rt = c->rt;
    const cn_exporter_plugin *plugin = cn_exporter_of(c);
    cn_intake *intake = rt->pipeline ? rt->pipeline->intake : NULL;
    bool replay = cn_spool_has_replay(rt->spool) ||
                  (intake && cn_intake_saved_cursor(intake) < cn_intake_replay_end(intake));
    /* What the sink already holds beats the delivery log: a crash can fall between
     * a delivery and its log entry. */
    if (replay && plugin->cb_recover) {
        int64_t t0 = cn_mono_ms();
        plugin->cb_recover(c->ctx, seed_delivered, rt->delivered);
        cn_info(c->id, "read back what the sink holds before replaying (%lld ms)", (long long)(cn_mono_ms() - t0));
    }
    int64_t next_tick = cn_mono_ms() + 100, next_prune = cn_mono_ms() + PRUNE_EVERY_MS;
    bool abandoned = false;
    while (!abandoned) {
        /* Chunks that could not be spooled first: their intake records wait for them. */
        cn_chunk *held = cn_queue_pop(&rt->queue, 0);
        if (held) {
            abandoned = !deliver(c, held);
            size_t left = cn_queue_len(&rt->queue);
            atomic_store(&rt->backlogged, left * 2 >= (size_t)rt->common.sending_queue.queue_size);
            cn_metric_set(rt->queue_size, (int64_t)left);
            continue;
        }
        uint64_t seq;
        void *data;
        size_t len;
        int r = cn_spool_read(rt->spool, &seq, &data, &len, 100);
        if (r < 0)
            break;
        if (r == 1)
            abandoned = !deliver_record(c, seq, data, len);
        else if (atomic_load(&rt->stopping) && cn_queue_len(&rt->queue) == 0)
            break; /* caught up with everything accepted before shutdown */
        int64_t now = cn_mono_ms();
        if (plugin->cb_tick && now >= next_tick) {
            plugin->cb_tick(c->ctx, now);
            next_tick = now + 100;
        }
        if (now >= next_prune) {
            /* Marks protect records a replay can return: those at or after the cursors
             * saved on disk, which lag the committed ones until the next save. */
            cn_delivery_pos saved = {cn_spool_saved_cursor(rt->spool), intake ? cn_intake_saved_cursor(intake) : 0};
            cn_delivered_prune(rt->delivered, saved);
            next_prune = now + PRUNE_EVERY_MS;
        }
    }
    if (plugin->cb_flush)
        plugin->cb_flush(c->ctx);
    if (abandoned) {
        atomic_store(&rt->abandoned, true);
        cn_info(c->id, "stopping with undelivered records in the spool; they are replayed at the next start");
    }
    return NULL;
}

cn_status cn_exporter_spool_put(cn_component *c, const uint8_t *record, size_t len, cn_chunk *chunk)
{
    cn_exporter_runtime *rt = c->rt;
    if (record && cn_spool_append(rt->spool, record, len, (uint32_t)chunk->n) == CN_SPOOL_OK) {
        cn_chunk_unref(chunk);
        return CN_OK;
    }
    /* Not on disk: the chunk waits in memory, holding its intake records. */
    if (cn_queue_try_push(&rt->queue, chunk) == 0) {
        size_t held = cn_queue_len(&rt->queue);
        atomic_store(&rt->backlogged, held * 2 >= (size_t)rt->common.sending_queue.queue_size);
        cn_metric_set(rt->queue_size, (int64_t)held);
        return CN_OK;
    }
    cn_metric_add(rt->queue_full_snapshots, (int64_t)chunk->n);
    cn_log_limited(&rt->full_log, CN_LOG_WARN, c->id,
                   "neither the spool nor the sending_queue has room: dropped %zu snapshots", chunk->n);
    cn_chunk_unref(chunk);
    return CN_FAIL;
}

int cn_exporter_spool_start(cn_component *c)
{
    cn_exporter_runtime *rt = c->rt;
    const cn_spool_options *o = &rt->common.spool;
    rt->replay_skipped = cn_counter("canopy_spool_replay_skipped_snapshots_total",
                                    "Replayed snapshots skipped because the exporter had delivered them before "
                                    "the restart.",
                                    c->labels);
    if (!(rt->spool = cn_spool_open(o, c->id, c->labels)))
        return -1;
    cn_intake *intake = rt->pipeline ? rt->pipeline->intake : NULL;
    cn_delivery_pos replay_end = {cn_spool_replay_end(rt->spool), intake ? cn_intake_replay_end(intake) : 0};
    char path[4200];
    /* hwm.log: the delivery log's name before it held exact sets; kept so upgrades find it. */
    snprintf(path, sizeof path, "%s/hwm.log", o->directory);
    if (!(rt->delivered = cn_delivered_open(path, o->fsync == CN_SPOOL_FSYNC_ALWAYS, c->id, replay_end)))
        return -1;
    cn_info(c->id, "spool on at %s (max_size %lld bytes, fsync %s, when_full %s)", o->directory,
            (long long)o->max_size,
            o->fsync == CN_SPOOL_FSYNC_ALWAYS ? "always" : o->fsync == CN_SPOOL_FSYNC_INTERVAL ? "interval" : "never",
            o->when_full == CN_SPOOL_BLOCK ? "block" : "drop_oldest");
    return 0;
}

void cn_exporter_spool_free(cn_component *c)
{
    cn_exporter_runtime *rt = c->rt;
    cn_spool_close(rt->spool);
    rt->spool = NULL;
    cn_delivered_close(rt->delivered);
    rt->delivered = NULL;
}
