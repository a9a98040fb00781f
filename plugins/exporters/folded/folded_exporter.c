/*
 * Exporter `folded`: Brendan Gregg's folded stacks, one "root;...;leaf count" line per
 * distinct stack; flamegraph.pl, inferno and speedscope open it.
 *
 * Chunks build a call tree per task (canopy/profiles.h, cn_profile_files); the
 * file <directory>/<taskId>.folded is written when the task ends (its
 * task_final chunk from merge_by_task) and, with `interval`, while it runs.
 */
#include "canopy/plugin.h"
#include "canopy/profiles.h"

typedef struct folded_ctx {
    /* options */
    char *directory;
    int64_t interval;
    int dir_mode;
    int64_t max_tasks, max_nodes, max_segments;
    /* runtime */
    cn_profile_files *files;
} folded_ctx;

static const cn_option folded_options[] = {
    {CN_OPT_STR, "directory", NULL, offsetof(folded_ctx, directory),
     "Where <taskId>.folded files are written; created if missing.", .required = true},
    {CN_OPT_DURATION, "interval", "0s", offsetof(folded_ctx, interval),
     "Also rewrite each running task's file this often (0: only when the task ends).", .min = 0,
     .max = 24 * 3600 * 1000LL},
    {CN_OPT_MODE, "directory_mode", "0755", offsetof(folded_ctx, dir_mode), "Mode of directories created."},
    {CN_OPT_INT, "max_tasks", "16", offsetof(folded_ctx, max_tasks),
     "Tasks held at once; ended ones are forgotten first (after their file is written). Snapshots of "
     "tasks past this, while every held task is still running, are dropped and counted.", .min = 1, .max = 100000},
    {CN_OPT_INT, "max_nodes", "20000", offsetof(folded_ctx, max_nodes),
     "Call tree nodes per task (about 200 bytes each with its signature); a stack needing more is cut under "
     "a \"[truncated]\" frame and counted.", .min = 16, .max = 100000000},
    {CN_OPT_INT, "max_segments", "10000", offsetof(folded_ctx, max_segments),
     "Segments per task followed for durations; the least recently seen are forgotten first.", .min = 16,
     .max = 100000000},
    CN_OPT_END};

static int render(const cn_calltree *t, const cn_profile_meta *meta, void *arg, FILE *out)
{
    (void)meta;
    (void)arg;
    return cn_calltree_write_folded(t, out);
}

static int folded_check(void *ctx, cn_component *self, cn_diag *d)
{
    folded_ctx *x = ctx;
    if (x->directory && !x->directory[0]) {
        cn_diag_error(d, cn_options_node(cn_component_node(self), "directory"), "directory must not be empty");
        return -1;
    }
    return 0;
}

static int folded_start(void *ctx, cn_component *self)
{
    folded_ctx *x = ctx;
    cn_profile_files_config cfg = {
        .component = cn_component_id(self),
        .labels = cn_component_labels(self),
        .directory = x->directory,
        .dir_mode = x->dir_mode,
        .suffix = ".folded",
        .interval_ms = x->interval,
        .limits = {.max_tasks = x->max_tasks, .max_nodes = x->max_nodes, .max_segments = x->max_segments,
                   .max_agents = 10000},
        .render = render,
        .render_arg = x,
        .registry = cn_component_tasks(self),
    };
    if (!(x->files = cn_profile_files_new(&cfg)))
        return -1;
    cn_info(cn_component_id(self), "writing <taskId>.folded files to %s", x->directory);
    return 0;
}

static cn_status folded_export(void *ctx, const cn_chunk *chunk)
{
    return cn_profile_files_export(((folded_ctx *)ctx)->files, chunk);
}

static void folded_tick(void *ctx, int64_t now) { cn_profile_files_tick(((folded_ctx *)ctx)->files, now); }

static void folded_flush(void *ctx)
{
    folded_ctx *x = ctx;
    if (x->files)
        cn_profile_files_flush(x->files);
}

static void folded_destroy(void *ctx) { cn_profile_files_free(((folded_ctx *)ctx)->files); }

const cn_exporter_plugin cn_exporter_folded = {
    .type = "folded",
    .description = "Writes <directory>/<taskId>.folded: folded stacks (frame;frame;frame count) per task.",
    .ctx_size = sizeof(folded_ctx),
    .options = folded_options,
    .cb_check = folded_check,
    .cb_start = folded_start,
    .cb_export = folded_export,
    .cb_tick = folded_tick,
    .cb_flush = folded_flush,
    .cb_destroy = folded_destroy,
};
