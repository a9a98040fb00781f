/*
 * Start and stop of the whole service. Start goes from the back of the graph
 * to the front (exporters, pipelines, receivers) so nothing is accepted before
 * it has somewhere to go; stop goes front to back so everything accepted is
 * drained.
 */
#include <string.h>

#include "admin.h"
#include "block_cache.h"
#include "service.h"

/* Starts (or stops, in reverse) every component of one kind that has the callback. */
static int start_kind(cn_service *svc, cn_kind kind)
{
    for (size_t i = 0; i < svc->n_components; i++) {
        cn_component *c = svc->components[i];
        if (c->kind != kind || c->started || (kind == CN_RECEIVER && c->n_feeds == 0))
            continue;
        if (c->plugin->cb_start && c->plugin->cb_start(c->ctx, c) != 0) {
            cn_error(c->id, "failed to start");
            return -1;
        }
        c->started = true;
    }
    return 0;
}

static void stop_kind(cn_service *svc, cn_kind kind)
{
    for (size_t i = svc->n_components; i-- > 0;) {
        cn_component *c = svc->components[i];
        if (c->kind == kind && c->started && !c->keep && c->plugin->cb_stop)
            c->plugin->cb_stop(c->ctx);
    }
}

int cn_service_start(cn_service *svc)
{
    svc->memory_refused = cn_counter("canopy_memory_limit_refused_batches_total",
                                     "Batches refused (retryable) because service.memory_limit was reached.", "");
    svc->live_bytes = cn_gauge("canopy_batch_bytes", "Bytes held by decoded batches.", "");
    svc->memory_log.interval_ms = 10000;
    /* Batches swing between none and memory_limit in flight: cache as much, so
     * their blocks are reused rather than mapped again. */
    cn_block_cache_limit((size_t)svc->settings.memory_limit);
    /* Intake logs first: durable exporters need their replay ends. */
    for (size_t i = 0; i < svc->n_pipelines; i++) {
        if (cn_pipeline_open_intake(svc->pipelines[i]) != 0) {
            cn_error("pipeline", "%s: cannot open its intake log", svc->pipelines[i]->name);
            return -1;
        }
    }
    for (size_t i = 0; i < svc->n_components; i++) {
        cn_component *c = svc->components[i];
        if (c->kind == CN_EXPORTER && cn_exporter_runtime_start(c) != 0) {
            cn_error(c->id, "failed to start");
            return -1;
        }
    }
    /* Task sources feed the registry before agents can ask it. */
    if (start_kind(svc, CN_EXTENSION) != 0)
        return -1;
    for (size_t i = 0; i < svc->n_pipelines; i++) {
        if (cn_pipeline_start(svc->pipelines[i]) != 0) {
            cn_error("pipeline", "%s: failed to start", svc->pipelines[i]->name);
            return -1;
        }
    }
    /* What a crash left in the intake logs goes through the processors before new data. */
    for (size_t i = 0; i < svc->n_pipelines; i++)
        cn_pipeline_replay(svc->pipelines[i]);
    if (cn_admin_start(svc) != 0)
        return -1;
    atomic_store(&svc->accepting, true);
    if (start_kind(svc, CN_RECEIVER) != 0)
        return -1;
    return 0;
}

void cn_service_stop(cn_service *svc)
{
    if (atomic_exchange(&svc->stopping, true))
        return;
    atomic_store(&svc->accepting, false);
    int64_t deadline = cn_mono_ms() + svc->settings.shutdown_timeout;
    stop_kind(svc, CN_RECEIVER);
    for (size_t i = 0; i < svc->n_pipelines; i++)
        cn_pipeline_close_and_join(svc->pipelines[i]);
    for (size_t i = 0; i < svc->n_components; i++)
        if (svc->components[i]->kind == CN_EXPORTER)
            cn_exporter_runtime_close(svc->components[i]);
    for (size_t i = 0; i < svc->n_components; i++)
        if (svc->components[i]->kind == CN_EXPORTER)
            cn_exporter_runtime_join(svc->components[i], deadline);
    /* What the exporters still hold was not delivered: its intake records stay for the next start. */
    for (size_t i = 0; i < svc->n_pipelines; i++)
        if (svc->pipelines[i]->intake)
            cn_intake_freeze(svc->pipelines[i]->intake);
    /* Last: health and metrics stay up while data drains, and a stuck HTTP stop
     * (nng 1.5) cannot keep the exporters from flushing. */
    cn_admin_stop(svc);
    stop_kind(svc, CN_EXTENSION);
}
