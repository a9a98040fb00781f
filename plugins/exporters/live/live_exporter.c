/*
 * Exporter `live`: a merged call tree per task, across every agent and
 * segment, kept in memory for the admin API. It registers its views with the
 * service's admin API (canopy/task_views.h): the task table's figures,
 * /api/v1/tasks/<id>/{flamegraph.svg,folded,profile.pb.gz} and the web UI at
 * /ui. Put it behind merge_by_task, whose chunks come grouped by segment in
 * sequence order and end a task with a task_final chunk.
 *
 * Chunks are added on the exporter's own thread, so building the trees never
 * slows the pipeline: when it falls behind, its queue fills and the core
 * counts what it drops (canopy_exporter_* metrics), as for any exporter.
 * A dropped chunk may be a task's final one, so the exporter also ends, every
 * second, the tasks the registry says are over: an ended task is the first
 * to make room at max_tasks.
 */
#include <stdio.h>
#include <stdlib.h>

#include "live.h"

static const cn_option live_options[] = {
    {CN_OPT_INT, "max_tasks", "32", offsetof(live_exporter, max_tasks),
     "Tasks kept; when full, the task that ended first is forgotten, and snapshots of a new task are dropped "
     "from the trees (counted) while every held task is still live.",
     .min = 1, .max = 100000},
    {CN_OPT_INT, "max_nodes", "20000", offsetof(live_exporter, max_nodes),
     "Call tree nodes per task (about 200 bytes each with its signature; an app's profile has a few thousand). "
     "A stack needing more is cut and counted under a \"[truncated]\" frame.",
     .min = 16, .max = 100000000},
    {CN_OPT_INT, "max_segments", "1024", offsetof(live_exporter, max_segments),
     "Segments per task followed for durations (about 330 bytes each at depth 20); the least recently seen are "
     "forgotten first (their next snapshot starts a new run). Only segments being profiled at once need room: "
     "agents profile at most a few per worker (canopy's 5, SkyWalking's 9).",
     .min = 16, .max = 100000000},
    {CN_OPT_INT, "max_agents", "10000", offsetof(live_exporter, max_agents),
     "Distinct agent instances counted per task; more are counted in canopy_profile_agents_over_limit_total.",
     .min = 1, .max = 100000000},
    CN_OPT_END};

static int live_start(void *ctx, cn_component *self)
{
    live_exporter *x = ctx;
    x->self = self;
    x->registry = cn_component_tasks(self);
    cn_profiles_limits limits = {.max_tasks = x->max_tasks,
                                 .max_nodes = x->max_nodes,
                                 .max_segments = x->max_segments,
                                 .max_agents = x->max_agents};
    char labels[160];
    snprintf(labels, sizeof labels, "store=\"%s\"", cn_component_id(self));
    if (!(x->store = cn_profiles_new(&limits, labels))) {
        cn_error(cn_component_id(self), "out of memory");
        return -1;
    }
    return cn_component_serve_views(self, &cn_live_views, x);
}

static cn_status live_export(void *ctx, const cn_chunk *chunk)
{
    live_exporter *x = ctx;
    cn_profiles_add_chunk(x->store, chunk);
    return CN_OK;
}

static void live_tick(void *ctx, int64_t now_mono_ms)
{
    live_exporter *x = ctx;
    if (now_mono_ms < x->next_end_check_ms)
        return;
    x->next_end_check_ms = now_mono_ms + 1000;
    cn_task_figures *tasks = NULL;
    size_t n = cn_profiles_list(x->store, &tasks);
    int64_t wall = cn_now_ms();
    for (size_t i = 0; i < n; i++) {
        if (!tasks[i].ended && cn_tasks_state(x->registry, tasks[i].task_id, wall) == CN_TASK_ENDED)
            cn_profiles_end_task(x->store, tasks[i].task_id);
        cn_task_figures_clear(&tasks[i]);
    }
    free(tasks);
}

static void live_destroy(void *ctx)
{
    live_exporter *x = ctx;
    cn_profiles_free(x->store);
    x->store = NULL;
}

const cn_exporter_plugin cn_exporter_live = {
    .base =
        {
            .kind = CN_EXPORTER,
            .type = "live",
            .description = "Keeps a call tree per task for the admin API: the task table, live flame graphs, folded "
                           "stacks and pprof at /api/v1/tasks/<id>/..., and the web UI at /ui.",
            .ctx_size = sizeof(live_exporter),
            .options = live_options,
            .cb_start = live_start,
            .cb_destroy = live_destroy,
        },
    .cb_export = live_export,
    .cb_tick = live_tick,
};
