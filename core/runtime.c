/*
 * Start and stop of the whole service. Start goes from the back of the graph
 * to the front (exporters, pipelines, receivers) so nothing is accepted before
 * it has somewhere to go; stop goes front to back so everything accepted is
 * drained.
 */
#include <string.h>

#include "admin.h"
#include "service.h"

static void stop_task_sources(cn_service *svc)
{
    for (size_t i = 0; i < svc->n_components; i++) {
        cn_component *c = svc->components[i];
        if (c->kind == CN_EXPORTER && c->rt->task_source_started) {
            c->plugin.exporter->cb_task_source_stop(c->ctx);
            c->rt->task_source_started = false;
        }
    }
}

static int start_task_sources(cn_service *svc)
{
    const cn_node *tasks = svc->task_sources;
    for (size_t i = 0; tasks && i < tasks->n; i++) {
        const char *key = tasks->keys[i]->scalar;
        const cn_node *exp = cn_node_get(tasks->items[i], "exporter");
        if (!exp)
            continue; /* static, max_tasks */
        for (size_t j = 0; j < svc->n_components; j++) {
            cn_component *c = svc->components[j];
            if (c->kind != CN_EXPORTER || strcmp(c->id, exp->scalar) != 0 || strcmp(c->type, key) != 0)
                continue;
            cn_diag d = {0};
            int rc = c->plugin.exporter->cb_task_source(c->ctx, c, tasks->items[i], svc->tasks, &d);
            for (size_t e = 0; e < d.n_errors; e++)
                cn_error("tasks", "%s", d.errors[e] ? d.errors[e] : "error");
            cn_diag_free(&d);
            if (rc != 0)
                return -1;
            c->rt->task_source_started = true;
        }
    }
    return 0;
}

int cn_service_start(cn_service *svc)
{
    svc->memory_refused = cn_counter("canopy_memory_limit_refused_batches_total",
                                     "Batches refused (retryable) because service.memory_limit was reached.", "");
    svc->live_bytes = cn_gauge("canopy_batch_bytes", "Bytes held by decoded batches.", "");
    svc->memory_log.interval_ms = 10000;
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
    if (start_task_sources(svc) != 0)
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
    for (size_t i = 0; i < svc->n_components; i++) {
        cn_component *c = svc->components[i];
        if (c->kind != CN_RECEIVER || c->n_feeds == 0)
            continue;
        if (c->plugin.receiver->cb_start(c->ctx, c) != 0) {
            cn_error(c->id, "failed to start");
            return -1;
        }
        c->started = true;
    }
    return 0;
}

void cn_service_stop(cn_service *svc)
{
    if (atomic_exchange(&svc->stopping, true))
        return;
    atomic_store(&svc->accepting, false);
    int64_t deadline = cn_mono_ms() + svc->settings.shutdown_timeout;
    for (size_t i = 0; i < svc->n_components; i++) {
        cn_component *c = svc->components[i];
        if (c->kind == CN_RECEIVER && c->started && c->plugin.receiver->cb_stop)
            c->plugin.receiver->cb_stop(c->ctx);
    }
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
    stop_task_sources(svc);
}
