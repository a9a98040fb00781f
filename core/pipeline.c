/*
 * Pipeline runtime: the one data path. A receiver hands a batch, in the core's
 * form, to cn_receiver_submit; with a durable exporter in the pipeline the
 * batch is first appended to the pipeline's intake log, and only then may the
 * receiver ack it. One thread per pipeline takes batches from its input
 * queue, runs them through the processors (once, live or replayed), and fans
 * the resulting chunks out: durable exporters get them in their spools,
 * others in their memory queues. Nothing here knows a receiver's wire format
 * or an exporter's sink.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "durable.h"
#include "service.h"

/* Processors run every ~100 ms even when no data arrives, for time-based flushes. */
#define PIPELINE_TICK_MS 100

/* Hands a chunk to every exporter; consumes the caller's reference. */
static void fan_out(cn_pipeline *p, cn_chunk *chunk)
{
    bool has_replayed = false;
    for (size_t i = 0; i < chunk->n_batches && !has_replayed; i++)
        has_replayed = chunk->batches[i]->replayed;
    /* Replayed snapshots go to durable exporters only: the others never promised
     * to survive a crash, and may well have delivered them before it. */
    cn_chunk *live = has_replayed ? cn_chunk_without_replayed(chunk) : cn_chunk_ref(chunk);
    uint8_t *record = NULL;
    size_t record_len = 0;
    bool record_failed = false;
    for (size_t i = 0; i < p->n_exporters; i++) {
        cn_component *x = p->exporters[i];
        if (!x->rt->spool) {
            if (live && (live->n > 0 || live->task_final))
                cn_exporter_enqueue(x, cn_chunk_ref(live));
            else if (!live)
                cn_exporter_count_drop(x, chunk, "out of memory");
            continue;
        }
        /* Encoded once for every durable exporter of the pipeline. */
        if (!record && !record_failed)
            record_failed = !(record = cn_durable_encode_chunk(chunk, &record_len));
        cn_exporter_spool_put(x, record, record_len, cn_chunk_ref(chunk));
    }
    free(record);
    cn_chunk_unref(live);
    cn_chunk_unref(chunk);
}

static void emit_next(cn_emitter *e, cn_chunk *chunk)
{
    cn_pipeline_emitter *pe = (cn_pipeline_emitter *)e;
    cn_pipeline *p = pe->pipeline;
    if (pe->next_stage < p->n_processors) {
        cn_component *proc = p->processors[pe->next_stage];
        cn_processor_of(proc)->cb_process(proc->ctx, chunk, &p->emitters[pe->next_stage + 1].base);
        return;
    }
    fan_out(p, chunk);
}

static void tick_processors(cn_pipeline *p, int64_t now)
{
    for (size_t i = 0; i < p->n_processors; i++) {
        cn_component *proc = p->processors[i];
        if (cn_processor_of(proc)->cb_tick)
            cn_processor_of(proc)->cb_tick(proc->ctx, now, &p->emitters[i + 1].base);
    }
}

static void *pipeline_main(void *arg)
{
    cn_pipeline *p = arg;
    int64_t next_tick = cn_mono_ms() + PIPELINE_TICK_MS;
    for (;;) {
        cn_batch *b = cn_queue_pop(&p->input, PIPELINE_TICK_MS);
        if (b) {
            for (size_t i = 0; i < p->n_processors; i++)
                cn_metric_inc(p->processor_batches[i]);
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
        if (cn_processor_of(proc)->cb_drain)
            cn_processor_of(proc)->cb_drain(proc->ctx, &p->emitters[i + 1].base);
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
    if (p->n_processors && !(p->processor_batches = calloc(p->n_processors, sizeof *p->processor_batches)))
        return -1;
    for (size_t i = 0; i < p->n_processors; i++) {
        cn_component *proc = p->processors[i];
        char l[320];
        snprintf(l, sizeof l, "pipeline=\"%s\",processor=\"%s\"", p->name, proc->id);
        p->processor_batches[i] = cn_counter("canopy_processor_batches_total",
                                             "Batches a processor took in (each once, live or replayed).", l);
        if (proc->plugin->cb_start && proc->plugin->cb_start(proc->ctx, proc) != 0) {
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

/* A durable exporter holds chunks it could not spool in memory: take no more until it catches up. */
static bool pipeline_backlogged(const cn_pipeline *p)
{
    for (size_t i = 0; i < p->n_exporters; i++)
        if (p->exporters[i]->rt->spool && atomic_load(&p->exporters[i]->rt->backlogged))
            return true;
    return false;
}

/*
 * The intake shares its disk with the pipeline's spools. When it is full, the
 * spools whose when_full is drop_oldest give up their oldest segment, as they
 * would for their own next append: otherwise the intake would refuse every
 * batch and drop_oldest would never keep a full disk accepting. True when one
 * made room; spools on other file systems are left alone.
 */
static bool pipeline_make_room(cn_pipeline *p)
{
    struct stat intake_fs;
    if (stat(p->intake_options.directory, &intake_fs) != 0)
        return false;
    for (size_t i = 0; i < p->n_exporters; i++) {
        cn_exporter_runtime *rt = p->exporters[i]->rt;
        struct stat spool_fs;
        /* Only a spool on the intake's file system frees room the intake can use. */
        if (!rt->spool || stat(rt->common.spool.directory, &spool_fs) != 0 || spool_fs.st_dev != intake_fs.st_dev)
            continue;
        if (cn_spool_make_room(rt->spool))
            return true;
    }
    return false;
}

/* Appends the batch to the pipeline's intake log, making room on a full disk as above. */
static bool intake_append(cn_pipeline *p, cn_batch *batch)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        cn_spool_result r = cn_intake_append(p->intake, batch);
        if (r == CN_SPOOL_OK)
            return true;
        if (r != CN_SPOOL_NO_SPACE || !pipeline_make_room(p))
            return false;
    }
    return false;
}

int cn_pipeline_open_intake(cn_pipeline *p)
{
    if (!p->intake_options.directory)
        return 0;
    char name[192], labels[192];
    snprintf(name, sizeof name, "intake/%s", p->name);
    snprintf(labels, sizeof labels, "pipeline=\"%s\",log=\"intake\"", p->name);
    if (!(p->intake = cn_intake_open(&p->intake_options, name, labels)))
        return -1;
    return 0;
}

/* Hands a replayed batch to the pipeline, waiting while its queue is full. */
static void replay_push(void *arg, cn_batch *b)
{
    cn_pipeline *p = arg;
    while (cn_queue_try_push(&p->input, b) != 0) {
        struct timespec ts = {0, 10 * 1000000};
        nanosleep(&ts, NULL);
    }
}

void cn_pipeline_replay(cn_pipeline *p)
{
    if (p->intake)
        cn_intake_replay(p->intake, replay_push, p);
}

/* Process-wide: a receiver kept by a reload moves from one service to the next under it. */
static pthread_rwlock_t swap_lock = PTHREAD_RWLOCK_INITIALIZER;

void cn_service_swap_begin(void) { pthread_rwlock_wrlock(&swap_lock); }
void cn_service_swap_end(void) { pthread_rwlock_unlock(&swap_lock); }

static cn_submit_result submit(cn_component *receiver, cn_batch *batch);

cn_submit_result cn_receiver_submit(cn_component *receiver, cn_batch *batch)
{
    pthread_rwlock_rdlock(&swap_lock);
    cn_submit_result r = submit(receiver, batch);
    pthread_rwlock_unlock(&swap_lock);
    return r;
}

/* A fifth below the limit, as OpenTelemetry's memory_limiter keeps spike_limit (20 % by default) between its soft
 * and hard limits: the requests the receiver is decoding at that moment fit under the limit. */
static int64_t intake_resume_level(cn_component *receiver)
{
    pthread_rwlock_rdlock(&swap_lock); /* receiver->svc moves at a reload */
    int64_t limit = receiver->svc->settings.memory_limit;
    pthread_rwlock_unlock(&swap_lock);
    return limit - limit / 5;
}

bool cn_receiver_intake_paused(cn_component *receiver)
{
    return cn_batch_live_bytes() > intake_resume_level(receiver);
}

bool cn_receiver_await_intake(cn_component *receiver, int64_t timeout_ms)
{
    return cn_batch_wait_live_bytes(intake_resume_level(receiver), timeout_ms);
}

static cn_submit_result submit(cn_component *receiver, cn_batch *batch)
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
    /* Durable pipelines: the batch must be in their intake logs before the receiver acks it. */
    for (size_t i = 0; i < receiver->n_feeds; i++) {
        cn_pipeline *p = receiver->feeds[i];
        if (p->intake && (pipeline_backlogged(p) || !intake_append(p, batch))) {
            /* Logs written so far keep the record; the resend's copy is a duplicate
             * that merge_by_task and the delivered sets drop by (segment, sequence). */
            for (size_t k = 0; k < receiver->n_feeds; k++)
                cn_queue_unreserve(&receiver->feeds[k]->input);
            return CN_SUBMIT_FULL;
        }
    }
    for (size_t i = 0; i < receiver->n_feeds; i++)
        cn_queue_push_reserved(&receiver->feeds[i]->input, cn_batch_ref(batch));
    return CN_SUBMIT_OK;
}
