/*
 * Spool mode of an exporter. The receiver appends every batch to the
 * exporter's spool before acking it; this worker reads the spool back, runs
 * each batch through a private copy of the pipeline's processors, and
 * exports what they emit, retrying for as long as it takes. A record is
 * marked done only when the batch decoded from it is released after a
 * delivered (or permanently refused) export, so the committed cursor never
 * passes data the sink has not taken. After a restart, replayed snapshots
 * already in their segment's delivered set (core/hwm.c) are skipped: nothing
 * reaches the sink twice.
 */
#include <stdio.h>
#include <stdlib.h>

#include "service.h"

typedef struct spool_emitter {
    cn_emitter base;
    cn_component *exporter;
    size_t next_stage;
} spool_emitter;

typedef struct spool_worker {
    cn_component *c;
    spool_emitter *emitters; /* n_chain + 1 */
} spool_worker;

static void spool_export(cn_component *c, cn_chunk *chunk)
{
    cn_exporter_runtime *rt = c->rt;
    if (atomic_load(&rt->abandon)) {
        cn_chunk_unref(chunk);
        return;
    }
    size_t skipped = rt->hwm ? cn_hwm_filter(rt->hwm, chunk) : 0;
    if (skipped)
        cn_metric_add(rt->replay_skipped, (int64_t)skipped);
    if (chunk->n > 0 || chunk->task_final) {
        cn_status st = cn_export_with_retry(c, chunk, true);
        if (st == CN_OK && rt->hwm)
            cn_hwm_commit(rt->hwm, chunk, cn_spool_read_position(rt->spool));
        else if (st == CN_RETRY)
            atomic_store(&rt->abandon, true); /* shutdown: the records stay for the next start */
    }
    cn_chunk_unref(chunk);
}

static void spool_emit(cn_emitter *e, cn_chunk *chunk)
{
    spool_emitter *se = (spool_emitter *)e;
    cn_exporter_runtime *rt = se->exporter->rt;
    if (se->next_stage < rt->n_chain) {
        cn_component *proc = rt->chain[se->next_stage];
        proc->plugin.processor->cb_process(proc->ctx, chunk, &se[1].base);
        return;
    }
    spool_export(se->exporter, chunk);
}

static void record_released(void *arg, uint64_t seq)
{
    cn_component *c = arg;
    if (!atomic_load(&c->rt->abandon))
        cn_spool_done(c->rt->spool, seq);
}

static void process_record(spool_worker *w, uint64_t seq, void *data, size_t len)
{
    cn_exporter_runtime *rt = w->c->rt;
    Canopy__V1__Request *req;
    cn_arena *arena;
    cn_batch *b;
    cn_refusal why = {0};
    cn_batch_limits no_limits = {0}; /* checked when the batch was received */
    Canopy__V1__Reason r = cn_request_decode(data, len, &no_limits, &req, &arena, &b, &why);
    free(data);
    if (r != CANOPY__V1__REASON__REASON_OK || !b) {
        if (r == CANOPY__V1__REASON__REASON_OK)
            cn_arena_free(arena);
        cn_warn(w->c->id, "spool record %llu does not decode (%s); skipped", (unsigned long long)seq, why.detail);
        cn_spool_done(rt->spool, seq);
        return;
    }
    b->wire = NULL;
    b->replayed = seq < cn_spool_replay_end(rt->spool);
    b->on_release = record_released;
    b->release_arg = w->c;
    b->release_token = seq;
    cn_chunk *chunk = cn_chunk_from_batch(b);
    cn_batch_unref(b);
    if (chunk)
        spool_emit(&w->emitters[0].base, chunk);
    /* Out of memory: the batch was released undone only if abandoned; otherwise
     * it is marked done by record_released and its loss would be silent, so stop
     * treating later records as done and let a restart replay them. */
    else {
        cn_error(w->c->id, "out of memory decoding spool record %llu; it will be replayed after a restart",
                 (unsigned long long)seq);
        atomic_store(&rt->abandon, true);
    }
}

static void seed_hwm(void *arg, const char *task, const char *segment, int32_t seq)
{
    cn_hwm_seed(arg, task, segment, seq);
}

void *cn_exporter_spool_main(void *arg)
{
    cn_component *c = arg;
    cn_exporter_runtime *rt = c->rt;
    /* What the sink already holds beats the delivery log: a crash can fall between
     * a delivery and its log entry. */
    if (cn_spool_has_replay(rt->spool) && c->plugin.exporter->cb_recover) {
        int64_t t0 = cn_mono_ms();
        c->plugin.exporter->cb_recover(c->ctx, seed_hwm, rt->hwm);
        cn_info(c->id, "read back what the sink holds before replaying (%lld ms)", (long long)(cn_mono_ms() - t0));
    }
    spool_worker w = {c, calloc(rt->n_chain + 1, sizeof(spool_emitter))};
    if (!w.emitters) {
        cn_error(c->id, "out of memory: spool worker cannot run; data stays in the spool");
        return NULL;
    }
    for (size_t i = 0; i <= rt->n_chain; i++)
        w.emitters[i] = (spool_emitter){{spool_emit}, c, i};
    const cn_exporter_plugin *plugin = c->plugin.exporter;
    int64_t next_tick = cn_mono_ms() + 100, next_prune = cn_mono_ms() + 5000;
    while (!atomic_load(&rt->abandon)) {
        uint64_t seq;
        void *data;
        size_t len;
        int r = cn_spool_read(rt->spool, &seq, &data, &len, 100);
        if (r < 0)
            break;
        if (r == 1)
            process_record(&w, seq, data, len);
        else if (atomic_load(&rt->stopping))
            break; /* caught up with everything accepted before shutdown */
        int64_t now = cn_mono_ms();
        if (now >= next_tick) {
            for (size_t i = 0; i < rt->n_chain; i++)
                if (rt->chain[i]->plugin.processor->cb_tick)
                    rt->chain[i]->plugin.processor->cb_tick(rt->chain[i]->ctx, now, &w.emitters[i + 1].base);
            if (plugin->cb_tick)
                plugin->cb_tick(c->ctx, now);
            next_tick = now + 100;
        }
        if (now >= next_prune) {
            /* Marks only protect records a replay can return: those at or after the
             * cursor saved on disk. The committed cursor runs ahead of it until the
             * next save (and further while saves fail); pruning against it could
             * forget, and a compaction drop from the log, marks that a crash before
             * that save would still need. */
            cn_hwm_prune(rt->hwm, cn_spool_saved_cursor(rt->spool));
            next_prune = now + 5000;
        }
    }
    for (size_t i = 0; i < rt->n_chain && !atomic_load(&rt->abandon); i++)
        if (rt->chain[i]->plugin.processor->cb_drain)
            rt->chain[i]->plugin.processor->cb_drain(rt->chain[i]->ctx, &w.emitters[i + 1].base);
    if (plugin->cb_flush)
        plugin->cb_flush(c->ctx);
    if (atomic_load(&rt->abandon))
        cn_info(c->id, "stopping with undelivered records in the spool; they are replayed at the next start");
    free(w.emitters);
    return NULL;
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
    char path[4200];
    snprintf(path, sizeof path, "%s/hwm.log", o->directory);
    if (!(rt->hwm = cn_hwm_open(path, o->fsync == CN_SPOOL_FSYNC_ALWAYS, c->id, cn_spool_replay_end(rt->spool))))
        return -1;
    cn_pipeline *p = rt->pipeline;
    size_t n = p ? p->n_processors : 0;
    if (n && !(rt->chain = calloc(n, sizeof *rt->chain)))
        return -1;
    for (size_t i = 0; i < n; i++) {
        cn_component *proc = cn_processor_clone(p->processors[i]);
        if (!proc)
            return -1;
        rt->chain[rt->n_chain++] = proc;
        if (proc->plugin.processor->cb_start && proc->plugin.processor->cb_start(proc->ctx, proc) != 0)
            return -1;
        proc->started = true;
    }
    cn_info(c->id, "spool on at %s (max_size %lld bytes, fsync %s, when_full %s)", o->directory,
            (long long)o->max_size,
            o->fsync == CN_SPOOL_FSYNC_ALWAYS ? "always" : o->fsync == CN_SPOOL_FSYNC_INTERVAL ? "interval" : "never",
            o->when_full == CN_SPOOL_BLOCK ? "block" : "drop_oldest");
    return 0;
}

void cn_exporter_spool_free(cn_component *c)
{
    cn_exporter_runtime *rt = c->rt;
    /* Whatever the private processors still hold was not delivered: keep it spooled. */
    if (rt->n_chain)
        atomic_store(&rt->abandon, true);
    for (size_t i = 0; i < rt->n_chain; i++)
        cn_component_free(rt->chain[i]);
    free(rt->chain);
    rt->chain = NULL;
    rt->n_chain = 0;
    cn_spool_close(rt->spool);
    rt->spool = NULL;
    cn_hwm_close(rt->hwm);
    rt->hwm = NULL;
}
