/*
 * Exporter `folded`: Brendan Gregg's folded stacks, one "root;...;leaf count" line per
 * distinct stack; flamegraph.pl, inferno and speedscope open it.
 *
 * Chunks build a call tree per task (plugins/common/profiles/profiles.h, cn_profile_files); the
 * file <directory>/<taskId>.folded is written when the task ends (its
 * task_final chunk from merge_by_task) and, with `interval`, while it runs.
 */
#include "canopy/plugin.h"
#include "profiles/profiles.h"

/* Only the files every profile exporter writes. */
typedef struct folded_exporter {
    cn_profile_file_exporter base;
} folded_exporter;

static const cn_option folded_options[] = {
    CN_PROFILE_FILE_OPTIONS(folded_exporter, ".folded"),
    CN_OPT_END};

static int render(const cn_calltree *t, const cn_profile_meta *meta, void *arg, FILE *out)
{
    (void)meta;
    (void)arg;
    return cn_calltree_write_folded(t, out);
}

static int folded_start(void *ctx, cn_component *self)
{
    return cn_profile_file_exporter_start(&((folded_exporter *)ctx)->base, self, ".folded", render, NULL);
}

const cn_exporter_plugin cn_exporter_folded = {
    .base =
        {
            .kind = CN_EXPORTER,
            .type = "folded",
            .description = "Writes <directory>/<taskId>.folded: folded stacks (frame;frame;frame count) per task.",
            .ctx_size = sizeof(folded_exporter),
            .options = folded_options,
            .cb_check = cn_profile_file_exporter_check,
            .cb_start = folded_start,
            .cb_destroy = cn_profile_file_exporter_destroy,
        },
    .cb_export = cn_profile_file_exporter_export,
    .cb_tick = cn_profile_file_exporter_tick,
    .cb_flush = cn_profile_file_exporter_flush,
};
