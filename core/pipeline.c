/*
 * Pipeline runtime: one thread per pipeline takes batches from its input
 * queue, runs them through the processors, and fans the resulting chunks out
 * to the exporters' own queues. Receivers reach it through
 * cn_receiver_submit, which never blocks.
 */
#include <stdlib.h>

#include "service.h"

/* Processors run every ~100 ms even when no data arrives, for time-based flushes. */
#define PIPELINE_TICK_MS 100

static void emit_next(cn_emitter *e, cn_chunk *chunk)
{
    cn_pipeline_emitter *pe = (cn_pipeline_emitter *)e;
    cn_pipeline *p = pe->pipeline;
    if (pe->next_stage < p->n_processors) {
        cn_component *proc = p->processors[pe->next_stage];
        proc->plugin.processor->cb_process(proc->ctx, chunk, &p->emitters[pe->next_stage + 1].base);
        return;
    }
    for (size_t i = 0; i < p->n_exporters; i++)
        if (!p->exporters[i]->rt->spool) /* a spooled exporter reads its own spool */
            cn_exporter_enqueue(p->exporters[i], cn_chunk_ref(chunk));
    cn_chunk_unref(chunk);
}

static void tick_processors(cn_pipeline *p, int64_t now)
{
    for (size_t i = 0; i < p->n_processors; i++) {
        cn_component *proc = p->processors[i];
        if (proc->plugin.processor->cb_tick)
            proc->plugin.processor->cb_tick(proc->ctx, now, &p->emitters[i + 1].base);
    }
}

static void *pipeline_main(void *arg)
{
    cn_pipeline *p = arg;
    int64_t next_tick = cn_mono_ms() + PIPELINE_TICK_MS;
    for (;;) {
        cn_batch *b = cn_queue_pop(&p->input, PIPELINE_TICK_MS);
        if (b) {
            cn_chunk *chunk = cn_chunk_from_batch(b);
            cn_batch_unref(b);
            if (chunk) {
                emit_next(&p->emitters[0].base, chunk);
            } else {
                /* The batch was already acked, so this loss must be visible. */
                cn_metric_inc(cn_counter("canopy_pipeline_dropped_batches_total",
                                         "Batches dropped inside a pipeline (out of memory).", ""));
                cn_error("pipeline", "%s: out of memory; dropped an acked batch", p->name);
            }
        } else if (cn_queue_drained(&p->input)) {
            break;
        }
        cn_metric_set(p->queue_size, (int64_t)cn_queue_len(&p->input));
        int64_t now = cn_mono_ms();
        if (now >= next_tick) {
            tick_processors(p, now);
            next_tick = now + PIPELINE_TICK_MS;
        }
    }
    /* Shutdown: every processor hands on what it still buffers, in order. */
    for (size_t i = 0; i < p->n_processors; i++) {
        cn_component *proc = p->processors[i];
        if (proc->plugin.processor->cb_drain)
            proc->plugin.processor->cb_drain(proc->ctx, &p->emitters[i + 1].base);
    }
    return NULL;
}

int cn_pipeline_start(cn_pipeline *p)
{
    if (cn_queue_init(&p->input, (size_t)p->svc->settings.pipeline_queue_size) != 0)
        return -1;
    p->emitters = calloc(p->n_processors + 1, sizeof *p->emitters);
    if (!p->emitters)
        return -1;
    for (size_t i = 0; i <= p->n_processors; i++)
        p->emitters[i] = (cn_pipeline_emitter){{emit_next}, p, i};
    char labels[160];
    snprintf(labels, sizeof labels, "pipeline=\"%s\"", p->name);
    p->queue_size = cn_gauge("canopy_pipeline_queue_size", "Batches waiting at the pipeline's input.", labels);
    p->queue_capacity = cn_gauge("canopy_pipeline_queue_capacity", "Capacity of the pipeline's input queue.", labels);
    cn_metric_set(p->queue_capacity, p->svc->settings.pipeline_queue_size);
    for (size_t i = 0; i < p->n_processors; i++) {
        cn_component *proc = p->processors[i];
        if (proc->plugin.processor->cb_start && proc->plugin.processor->cb_start(proc->ctx, proc) != 0) {
            cn_error("pipeline", "%s: processor %s failed to start", p->name, proc->id);
            return -1;
        }
        proc->started = true;
    }
    if (pthread_create(&p->thread, NULL, pipeline_main, p) != 0)
        return -1;
    p->thread_started = true;
    return 0;
}

void cn_pipeline_close_and_join(cn_pipeline *p)
{
    if (!p->thread_started)
        return;
    cn_queue_close(&p->input);
    pthread_join(p->thread, NULL);
    p->thread_started = false;
}

cn_submit_result cn_receiver_submit(cn_component *receiver, cn_batch *batch)
{
    cn_service *svc = receiver->svc;
    if (!atomic_load(&svc->accepting))
        return CN_SUBMIT_SHUTTING_DOWN;
    /* The new batch is already counted in the live bytes. */
    int64_t live = cn_batch_live_bytes();
    cn_metric_set(svc->live_bytes, live);
    if (live > svc->settings.memory_limit) {
        cn_metric_inc(svc->memory_refused);
        cn_log_limited(&svc->memory_log, CN_LOG_WARN, "service",
                       "memory_limit reached (%lld of %lld bytes held by batches): refusing new batches until "
                       "exporters catch up; agents will resend",
                       (long long)live, (long long)svc->settings.memory_limit);
        return CN_SUBMIT_MEMORY_LIMIT;
    }
    size_t reserved = 0;
    for (; reserved < receiver->n_feeds; reserved++)
        if (cn_queue_reserve(&receiver->feeds[reserved]->input) != 0)
            break;
    if (reserved < receiver->n_feeds) {
        while (reserved > 0)
            cn_queue_unreserve(&receiver->feeds[--reserved]->input);
        return atomic_load(&svc->accepting) ? CN_SUBMIT_FULL : CN_SUBMIT_SHUTTING_DOWN;
    }
    /* Spooled exporters: the batch must be in every spool before the agent is acked. */
    for (size_t i = 0; i < receiver->n_feeds; i++) {
        cn_pipeline *p = receiver->feeds[i];
        for (size_t e = 0; e < p->n_exporters; e++) {
            cn_spool *spool = p->exporters[e]->rt->spool;
            if (!spool || !batch->wire)
                continue;
            if (cn_spool_append(spool, batch->wire, batch->wire_bytes, (uint32_t)batch->n_snapshots) != CN_SPOOL_OK) {
                /* Spools written so far keep the record; the agent's resend is a duplicate
                 * that merge_by_task drops by (segment, sequence). */
                for (size_t k = 0; k < receiver->n_feeds; k++)
                    cn_queue_unreserve(&receiver->feeds[k]->input);
                return CN_SUBMIT_FULL;
            }
        }
    }
    for (size_t i = 0; i < receiver->n_feeds; i++)
        cn_queue_push_reserved(&receiver->feeds[i]->input, cn_batch_ref(batch));
    return CN_SUBMIT_OK;
}
