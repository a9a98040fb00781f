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

typedef struct flamegraph_ctx {
    /* options */
    char *directory;
    int64_t interval;
    int dir_mode;
    int64_t max_tasks, max_nodes, max_segments;
    int64_t width;
    /* runtime */
    cn_profile_files *files;
} flamegraph_ctx;

static const cn_option flamegraph_options[] = {
    {CN_OPT_STR, "directory", NULL, offsetof(flamegraph_ctx, directory),
     "Where <taskId>.svg files are written; created if missing.", .required = true},
    {CN_OPT_DURATION, "interval", "0s", offsetof(flamegraph_ctx, interval),
     "Also rewrite each running task's file this often (0: only when the task ends).", .min = 0,
     .max = 24 * 3600 * 1000LL},
    {CN_OPT_MODE, "directory_mode", "0755", offsetof(flamegraph_ctx, dir_mode), "Mode of directories created."},
    {CN_OPT_INT, "max_tasks", "16", offsetof(flamegraph_ctx, max_tasks),
     "Tasks held at once; ended ones are forgotten first (after their file is written). Snapshots of "
     "tasks past this, while every held task is still running, are dropped and counted.", .min = 1, .max = 100000},
    {CN_OPT_INT, "max_nodes", "20000", offsetof(flamegraph_ctx, max_nodes),
     "Call tree nodes per task (about 200 bytes each with its signature); a stack needing more is cut under "
     "a \"[truncated]\" frame and counted.", .min = 16, .max = 100000000},
    {CN_OPT_INT, "max_segments", "10000", offsetof(flamegraph_ctx, max_segments),
     "Segments per task followed for durations; the least recently seen are forgotten first.", .min = 16,
     .max = 100000000},
    {CN_OPT_INT, "width", "1200", offsetof(flamegraph_ctx, width), "Width of the SVG in pixels.", .min = 200,
     .max = 20000},
    CN_OPT_END};

static int render(const cn_calltree *t, const cn_profile_meta *meta, void *arg, FILE *out)
{
    return cn_calltree_write_svg(t, meta, (int)((flamegraph_ctx *)arg)->width, out);
}

static int flamegraph_check(void *ctx, cn_component *self, cn_diag *d)
{
    flamegraph_ctx *x = ctx;
    if (x->directory && !x->directory[0]) {
        cn_diag_error(d, cn_options_node(cn_component_node(self), "directory"), "directory must not be empty");
        return -1;
    }
    return 0;
}

static int flamegraph_start(void *ctx, cn_component *self)
{
    flamegraph_ctx *x = ctx;
    cn_profile_files_config cfg = {
        .component = cn_component_id(self),
        .labels = cn_component_labels(self),
        .directory = x->directory,
        .dir_mode = x->dir_mode,
        .suffix = ".svg",
        .interval_ms = x->interval,
        .limits = {.max_tasks = x->max_tasks, .max_nodes = x->max_nodes, .max_segments = x->max_segments,
                   .max_agents = 10000},
        .render = render,
        .render_arg = x,
        .registry = cn_component_tasks(self),
    };
    if (!(x->files = cn_profile_files_new(&cfg)))
        return -1;
    cn_info(cn_component_id(self), "writing <taskId>.svg files to %s", x->directory);
    return 0;
}

static cn_status flamegraph_export(void *ctx, const cn_chunk *chunk)
{
    return cn_profile_files_export(((flamegraph_ctx *)ctx)->files, chunk);
}

static void flamegraph_tick(void *ctx, int64_t now) { cn_profile_files_tick(((flamegraph_ctx *)ctx)->files, now); }

static void flamegraph_flush(void *ctx)
{
    flamegraph_ctx *x = ctx;
    if (x->files)
        cn_profile_files_flush(x->files);
}

static void flamegraph_destroy(void *ctx) { cn_profile_files_free(((flamegraph_ctx *)ctx)->files); }

const cn_exporter_plugin cn_exporter_flamegraph = {
    .type = "flamegraph",
    .description = "Writes <directory>/<taskId>.svg: an interactive flame graph per task (hover, click to zoom, search).",
    .ctx_size = sizeof(flamegraph_ctx),
    .options = flamegraph_options,
    .cb_check = flamegraph_check,
    .cb_start = flamegraph_start,
    .cb_export = flamegraph_export,
    .cb_tick = flamegraph_tick,
    .cb_flush = flamegraph_flush,
    .cb_destroy = flamegraph_destroy,
};
