/*
 * Exporter `flamegraph`: a self-contained interactive SVG flame graph per task (hover for
 * details, click to zoom, search), drawn by the collector with no external tool.
 *
 * Chunks build a call tree per task (canopy/profiles.h, cn_profile_files); the
 * file <directory>/<taskId>.svg is written when the task ends (its
 * task_final chunk from merge_by_task) and, with `interval`, while it runs.
 */
#include "canopy/plugin.h"
#include "canopy/profiles.h"

static const cn_option flamegraph_options[] = {
    CN_PROFILE_EXPORTER_OPTIONS(".svg"),
    {CN_OPT_INT, "width", "1200", offsetof(cn_profile_exporter, width), "Width of the SVG in pixels.", .min = 200,
     .max = 20000},
    CN_OPT_END};

static int render(const cn_calltree *t, const cn_profile_meta *meta, void *arg, FILE *out)
{
    return cn_calltree_write_svg(t, meta, (int)((const cn_profile_exporter *)arg)->width, out);
}

static int flamegraph_start(void *ctx, cn_component *self)
{
    return cn_profile_exporter_start(ctx, self, ".svg", render);
}

const cn_exporter_plugin cn_exporter_flamegraph = {
    .base =
        {
            .kind = CN_EXPORTER,
            .type = "flamegraph",
            .description = "Writes <directory>/<taskId>.svg: an interactive flame graph per task (hover, click to zoom, search).",
            .ctx_size = sizeof(cn_profile_exporter),
            .options = flamegraph_options,
            .cb_check = cn_profile_exporter_check,
            .cb_start = flamegraph_start,
            .cb_destroy = cn_profile_exporter_destroy,
        },
    .cb_export = cn_profile_exporter_export,
    .cb_tick = cn_profile_exporter_tick,
    .cb_flush = cn_profile_exporter_flush,
};
