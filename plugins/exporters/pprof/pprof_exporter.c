/*
 * Exporter `pprof`: gzipped pprof profile.proto (`go tool pprof` reads it), with
 * function and file names in the function table and line numbers in the
 * lines; sample types samples/count and wall/milliseconds (SkyWalking durations).
 *
 * Chunks build a call tree per task (canopy/profiles.h, cn_profile_files); the
 * file <directory>/<taskId>.pb.gz is written when the task ends (its
 * task_final chunk from merge_by_task) and, with `interval`, while it runs.
 */
#include "canopy/plugin.h"
#include "canopy/profiles.h"

static const cn_option pprof_options[] = {
    CN_PROFILE_EXPORTER_OPTIONS(".pb.gz"),
    CN_OPT_END};

static int render(const cn_calltree *t, const cn_profile_meta *meta, void *arg, FILE *out)
{
    (void)arg;
    return cn_calltree_write_pprof(t, meta, out);
}

static int pprof_start(void *ctx, cn_component *self)
{
    return cn_profile_exporter_start(ctx, self, ".pb.gz", render);
}

const cn_exporter_plugin cn_exporter_pprof = {
    .base =
        {
            .kind = CN_EXPORTER,
            .type = "pprof",
            .description = "Writes <directory>/<taskId>.pb.gz: a gzipped pprof profile per task (go tool pprof).",
            .ctx_size = sizeof(cn_profile_exporter),
            .options = pprof_options,
            .cb_check = cn_profile_exporter_check,
            .cb_start = pprof_start,
            .cb_destroy = cn_profile_exporter_destroy,
        },
    .cb_export = cn_profile_exporter_export,
    .cb_tick = cn_profile_exporter_tick,
    .cb_flush = cn_profile_exporter_flush,
};
