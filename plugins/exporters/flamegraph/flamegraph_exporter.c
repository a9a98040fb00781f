/*
 * Exporter `flamegraph`: a self-contained interactive SVG flame graph per task (hover for
 * details, click to zoom, search), drawn by the collector with no external tool.
 *
 * Chunks build a call tree per task (plugins/common/profiles/profiles.h, cn_profile_files); the
 * file <directory>/<taskId>.svg is written when the task ends (its
 * task_final chunk from merge_by_task) and, with `interval`, while it runs.
 */
#include "canopy/plugin.h"
#include "profiles/profiles.h"

/* The files every profile exporter writes, plus the SVG's width. */
typedef struct flamegraph_exporter {
    cn_profile_file_exporter base; /* first: the shared callbacks take this context */
    int64_t width;
} flamegraph_exporter;

static const cn_option flamegraph_options[] = {
    CN_PROFILE_FILE_OPTIONS(flamegraph_exporter, ".svg"),
    {CN_OPT_INT, "width", "1200", offsetof(flamegraph_exporter, width), "Width of the SVG in pixels.", .min = 200,
     .max = 20000},
    CN_OPT_END};

static int render(const cn_calltree *t, const cn_profile_meta *meta, void *arg, FILE *out)
{
    return cn_calltree_write_svg(t, meta, (int)((const flamegraph_exporter *)arg)->width, out);
}

static int flamegraph_start(void *ctx, cn_component *self)
{
    flamegraph_exporter *x = ctx;
    return cn_profile_file_exporter_start(&x->base, self, ".svg", render, x);
}

const cn_exporter_plugin cn_exporter_flamegraph = {
    .base =
        {
            .kind = CN_EXPORTER,
            .type = "flamegraph",
            .description = "Writes <directory>/<taskId>.svg: an interactive flame graph per task (hover, click to zoom, search).",
            .ctx_size = sizeof(flamegraph_exporter),
            .options = flamegraph_options,
            .cb_check = cn_profile_file_exporter_check,
            .cb_start = flamegraph_start,
            .cb_destroy = cn_profile_file_exporter_destroy,
        },
    .cb_export = cn_profile_file_exporter_export,
    .cb_tick = cn_profile_file_exporter_tick,
    .cb_flush = cn_profile_file_exporter_flush,
};
