/* The life cycle the folded, pprof and flamegraph exporters share (profiles/profiles.h). */
#include "profiles/profiles.h"

int cn_profile_file_exporter_check(void *ctx, cn_component *self, cn_diag *d)
{
    cn_profile_file_exporter *x = ctx;
    if (x->directory && !x->directory[0]) {
        cn_diag_error(d, cn_options_node(cn_component_node(self), "directory"), "directory must not be empty");
        return -1;
    }
    return 0;
}

int cn_profile_file_exporter_start(cn_profile_file_exporter *x, cn_component *self, const char *suffix,
                                   cn_profile_render_fn render, void *render_arg)
{
    cn_profile_files_config cfg = {
        .component = cn_component_id(self),
        .labels = cn_component_labels(self),
        .directory = x->directory,
        .dir_mode = x->dir_mode,
        .suffix = suffix,
        .interval_ms = x->interval,
        .limits = {.max_tasks = x->max_tasks, .max_nodes = x->max_nodes, .max_segments = x->max_segments,
                   .max_agents = 10000},
        .render = render,
        .render_arg = render_arg,
        .registry = cn_component_tasks(self),
    };
    if (!(x->files = cn_profile_files_new(&cfg)))
        return -1;
    cn_info(cn_component_id(self), "writing <taskId>%s files to %s", suffix, x->directory);
    return 0;
}

cn_status cn_profile_file_exporter_export(void *ctx, const cn_chunk *chunk)
{
    return cn_profile_files_export(((cn_profile_file_exporter *)ctx)->files, chunk);
}

void cn_profile_file_exporter_tick(void *ctx, int64_t now_mono_ms)
{
    cn_profile_files_tick(((cn_profile_file_exporter *)ctx)->files, now_mono_ms);
}

void cn_profile_file_exporter_flush(void *ctx)
{
    cn_profile_file_exporter *x = ctx;
    if (x->files)
        cn_profile_files_flush(x->files);
}

void cn_profile_file_exporter_destroy(void *ctx)
{
    cn_profile_file_exporter *x = ctx;
    cn_profile_files_free(x->files);
    x->files = NULL;
}
