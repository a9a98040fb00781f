/*
 * Exporter `debug`: logs, per task, how many snapshots and segments arrived,
 * once per interval. Handy with `make run` to see that agents get through.
 */
#include <stdlib.h>
#include <string.h>

#include "canopy/dict.h"
#include "canopy/plugin.h"

typedef struct debug_task {
    int64_t snapshots, chunks, total;
} debug_task;

typedef struct debug_ctx {
    int64_t interval;
    int verbosity; /* 0 basic, 1 detailed */
    cn_component *self;
    cn_dict *tasks;
    int64_t next_report_ms;
} debug_ctx;

static const char *const verbosity_choices[] = {"basic", "detailed", NULL};

static const cn_option debug_options[] = {
    {CN_OPT_DURATION, "interval", "10s", offsetof(debug_ctx, interval), "How often to log the counts.", .min = 100,
     .max = 24 * 3600 * 1000},
    {CN_OPT_ENUM, "verbosity", "basic", offsetof(debug_ctx, verbosity),
     "basic: counts per task; detailed: also the first snapshot of every chunk.", .choices = verbosity_choices},
    CN_OPT_END};

static int debug_start(void *ctx, cn_component *self)
{
    debug_ctx *d = ctx;
    d->self = self;
    d->next_report_ms = cn_mono_ms() + d->interval;
    return (d->tasks = cn_dict_new(16)) ? 0 : -1;
}

static cn_status debug_export(void *ctx, const cn_chunk *chunk)
{
    debug_ctx *d = ctx;
    for (size_t i = 0; i < chunk->n || (i == 0 && chunk->task_final); i++) {
        const char *task = chunk->task_id ? chunk->task_id : cn_ref_task(&chunk->refs[i]);
        debug_task *t = cn_dict_get(d->tasks, task);
        if (!t) {
            t = calloc(1, sizeof *t);
            if (!t || cn_dict_put(d->tasks, task, t) != 0) {
                free(t);
                return CN_OK; /* counts are best effort; never hold data back for them */
            }
        }
        if (chunk->task_id) {
            t->snapshots += (int64_t)chunk->n;
            t->total += (int64_t)chunk->n;
            t->chunks++;
            break;
        }
        t->snapshots++;
        t->total++;
    }
    if (d->verbosity == 1 && chunk->n) {
        const cn_snap_ref *r = &chunk->refs[0];
        cn_info(cn_component_id(d->self), "chunk of %zu: task=%s segment=%s seq=%d frames=%zu leaf=%s from %s", chunk->n,
                cn_ref_task(r), cn_ref_segment(r), r->snap->sequence, r->snap->n_frames,
                r->snap->n_frames ? cn_ref_frame(r, r->snap->n_frames - 1) : "-", r->batch->agent->instance);
    }
    if (chunk->task_final && chunk->task_id)
        cn_info(cn_component_id(d->self), "task %s ended", chunk->task_id);
    return CN_OK;
}

static void debug_report(debug_ctx *d)
{
    size_t pos = 0;
    const char *key;
    void *value;
    while (cn_dict_next(d->tasks, &pos, &key, &value)) {
        debug_task *t = value;
        if (t->snapshots == 0)
            continue;
        cn_info(cn_component_id(d->self), "task %s: %lld snapshots in the last %llds (%lld in all)", key,
                (long long)t->snapshots, (long long)(d->interval / 1000), (long long)t->total);
        t->snapshots = 0;
    }
}

static void debug_tick(void *ctx, int64_t now)
{
    debug_ctx *d = ctx;
    if (now < d->next_report_ms)
        return;
    d->next_report_ms = now + d->interval;
    debug_report(d);
}

static void debug_flush(void *ctx) { debug_report(ctx); }

static void debug_destroy(void *ctx)
{
    debug_ctx *d = ctx;
    cn_dict_free(d->tasks, free);
}

const cn_exporter_plugin cn_exporter_debug = {
    .base =
        {
            .kind = CN_EXPORTER,
            .type = "debug",
            .description = "Logs snapshot counts per task; for trying canopy out.",
            .ctx_size = sizeof(debug_ctx),
            .options = debug_options,
            .cb_start = debug_start,
            .cb_destroy = debug_destroy,
        },
    .cb_export = debug_export,
    .cb_tick = debug_tick,
    .cb_flush = debug_flush,
};
