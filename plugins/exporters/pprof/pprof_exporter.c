/*
 * Exporter `pprof`: gzipped pprof profile.proto (`go tool pprof` reads it), with
 * function and file names in the function table and line numbers in the
 * lines; sample types samples/count and wall/milliseconds (SkyWalking durations).
 *
 * Chunks build a call tree per task (plugins/common/profiles/profiles.h, cn_profile_files); the
 * file <directory>/<taskId>.pb.gz is written when the task ends (its
 * task_final chunk from merge_by_task) and, with `interval`, while it runs.
 */
#include "canopy/plugin.h"
#include "profiles/profiles.h"

/* Only the files every profile exporter writes. */
typedef struct pprof_exporter {
    cn_profile_file_exporter base;
} pprof_exporter;

static const cn_option pprof_options[] = {
    CN_PROFILE_FILE_OPTIONS(pprof_exporter, ".pb.gz"),
    CN_OPT_END};

static int render(const cn_calltree *t, const cn_profile_meta *meta, void *arg, FILE *out)
{
    (void)arg;
    return cn_calltree_write_pprof(t, meta, out);
}

static int pprof_start(void *ctx, cn_component *self)
{
    return cn_profile_file_exporter_start(&((pprof_exporter *)ctx)->base, self, ".pb.gz", render, NULL);
}

const cn_exporter_plugin cn_exporter_pprof = {
    .base =
        {
            .kind = CN_EXPORTER,
            .type = "pprof",
            .description = "Writes <directory>/<taskId>.pb.gz: a gzipped pprof profile per task (go tool pprof).",
            .ctx_size = sizeof(pprof_exporter),
            .options = pprof_options,
            .cb_check = cn_profile_file_exporter_check,
            .cb_start = pprof_start,
            .cb_destroy = cn_profile_file_exporter_destroy,
        },
    .cb_export = cn_profile_file_exporter_export,
    .cb_tick = cn_profile_file_exporter_tick,
    .cb_flush = cn_profile_file_exporter_flush,
};
