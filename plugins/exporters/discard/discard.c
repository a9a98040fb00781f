/* Exporter `discard`: counts what it is given and drops it. For benchmarks. */
#include "canopy/plugin.h"

typedef struct discard_ctx {
    cn_metric *snapshots;
} discard_ctx;

static int discard_start(void *ctx, cn_component *self)
{
    discard_ctx *d = ctx;
    d->snapshots = cn_counter("canopy_discard_snapshots_total", "Snapshots the discard exporter dropped on purpose.",
                              cn_component_labels(self));
    return 0;
}

static cn_status discard_export(void *ctx, const cn_chunk *chunk)
{
    discard_ctx *d = ctx;
    cn_metric_add(d->snapshots, (int64_t)chunk->n);
    return CN_OK;
}

static void discard_destroy(void *ctx) { CN_UNUSED(ctx); }

const cn_exporter_plugin cn_exporter_discard = {
    .base =
        {
            .kind = CN_EXPORTER,
            .type = "discard",
            .description = "Counts snapshots and drops them; for benchmarks.",
            .ctx_size = sizeof(discard_ctx),
            .cb_start = discard_start,
            .cb_destroy = discard_destroy,
        },
    .cb_export = discard_export,
};
