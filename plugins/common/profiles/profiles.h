/*
 * Per-task profiles: a merged call tree (profiles/calltree.h) per task, across
 * every agent and segment, plus what the admin API shows about it (agents,
 * snapshots, segments, first and last snapshot time).
 *
 * A store is thread safe: the pipeline thread feeds it chunks while the admin
 * API lists and renders it. Readers take a clone of a tree (a quick copy
 * under the lock) and render outside the lock, so rendering never stalls the
 * pipeline.
 *
 * Every store has one owner: the live exporter keeps one for the admin API,
 * and the profile exporters (folded, pprof, flamegraph) each keep their own
 * through cn_profile_files. Nothing is shared across components.
 *
 * Everything is bounded: tasks kept (ended ones are forgotten first), nodes
 * per task, segments per task, agents per task. What does not fit is counted
 * in metrics.
 */
#ifndef CN_PLUGINS_PROFILES_H
#define CN_PLUGINS_PROFILES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "canopy/batch.h"
#include "profiles/calltree.h"
#include "canopy/plugin.h"
#include "canopy/common.h"
#include "canopy/task_views.h"
#include "canopy/tasks.h"

typedef struct cn_profiles cn_profiles;

typedef struct cn_profiles_limits {
    int64_t max_tasks;    /* tasks kept; when full, the task that ended longest ago is forgotten */
    int64_t max_nodes;    /* call tree nodes per task */
    int64_t max_segments; /* segments followed per task for durations; the least recently seen go first */
    int64_t max_agents;   /* distinct agent instances counted per task */
} cn_profiles_limits;

#define CN_PROFILES_DEFAULT_LIMITS ((cn_profiles_limits){32, 20000, 10000, 10000})

/* labels: the Prometheus label set of the store's metrics, e.g. `store="live"`. */
cn_profiles *cn_profiles_new(const cn_profiles_limits *limits, const char *labels);
void cn_profiles_free(cn_profiles *p);

/*
 * Adds a chunk's snapshots, best in merge_by_task order (grouped by segment,
 * ascending sequence). Snapshots of a task the store has no room for are
 * counted and dropped. A task_final chunk marks its task ended.
 */
void cn_profiles_add_chunk(cn_profiles *p, const cn_chunk *chunk);
/* Marks a task ended (as a task_final chunk does). */
void cn_profiles_end_task(cn_profiles *p, const char *task_id);
/* Forgets a task. Returns -1 when unknown. */
int cn_profiles_remove(cn_profiles *p, const char *task_id);

/* Fills *out. Returns -1 when the task is unknown. */
int cn_profiles_info(cn_profiles *p, const char *task_id, cn_task_figures *out);
/* Every task, oldest first; free each with cn_task_figures_clear, then the array. */
size_t cn_profiles_list(cn_profiles *p, cn_task_figures **out);
/* A read-only clone of the task's tree (free with cn_calltree_free); NULL when unknown or out of memory. */
cn_calltree *cn_profiles_clone(cn_profiles *p, const char *task_id, cn_task_figures *info);

/* ---- files per task, for the profile exporters ------------------------------ */

/*
 * What the folded, pprof and flamegraph exporters share: a private store fed
 * with every chunk, and a file <directory>/<taskId><suffix> (the id made safe
 * as a file name) written when the task ends and, with interval > 0, every
 * interval while it runs. A file is written to a temporary name and renamed,
 * so readers never see a partial one. An ended task's tree is kept until the
 * store needs room, so late snapshots rewrite the whole file.
 */
typedef int (*cn_profile_render_fn)(const cn_calltree *t, const cn_profile_meta *meta, void *arg, FILE *out);

typedef struct cn_profile_files_config {
    const char *component;  /* for logs */
    const char *labels;     /* for metrics */
    const char *directory;
    int dir_mode;
    const char *suffix;     /* ".folded", ".pb.gz", ".svg" */
    int64_t interval_ms;    /* 0: only when the task ends */
    cn_profiles_limits limits;
    cn_profile_render_fn render;
    void *render_arg;
    cn_task_registry *registry; /* optional: service, endpoint and dump period for the meta */
} cn_profile_files_config;

typedef struct cn_profile_files cn_profile_files;

/* Creates the directory when missing. NULL after logging why. */
cn_profile_files *cn_profile_files_new(const cn_profile_files_config *cfg);
/* For cb_export: CN_OK, or CN_RETRY when a file could not be written (a retry never adds the chunk twice). */
cn_status cn_profile_files_export(cn_profile_files *f, const cn_chunk *chunk);
/* For cb_tick: periodic files. */
void cn_profile_files_tick(cn_profile_files *f, int64_t now_mono_ms);
/* For cb_flush: writes every task still held (shutdown). */
void cn_profile_files_flush(cn_profile_files *f);
void cn_profile_files_free(cn_profile_files *f);

/*
 * The part of a folded, pprof or flamegraph exporter's context they have in
 * common. Each plugin's context starts with it (so the shared callbacks below
 * can take the plugin's ctx), declares its options with
 * CN_PROFILE_FILE_OPTIONS and adds its own (the flamegraph's width).
 */
typedef struct cn_profile_file_exporter {
    char *directory;
    int64_t interval;
    int dir_mode;
    int64_t max_tasks, max_nodes, max_segments;
    cn_profile_files *files;
} cn_profile_file_exporter;

/* The options of a cn_profile_file_exporter that is member `base` of a plugin's context type ctx. */
#define CN_PROFILE_FILE_OPTIONS(ctx, suffix)                                                                       \
    {CN_OPT_STR, "directory", NULL, offsetof(ctx, base.directory),                                                \
     "Where <taskId>" suffix " files are written; created if missing.", .required = true},                         \
        {CN_OPT_DURATION, "interval", "0s", offsetof(ctx, base.interval),                                         \
         "Also rewrite each running task's file this often (0: only when the task ends).", .min = 0,              \
         .max = 24 * 3600 * 1000LL},                                                                               \
        {CN_OPT_MODE, "directory_mode", "0755", offsetof(ctx, base.dir_mode), "Mode of directories created."},    \
        {CN_OPT_INT, "max_tasks", "16", offsetof(ctx, base.max_tasks),                                            \
         "Tasks held at once; ended ones are forgotten first (after their file is written). Snapshots of "       \
         "tasks past this, while every held task is still running, are dropped and counted.",                    \
         .min = 1, .max = 100000},                                                                                 \
        {CN_OPT_INT, "max_nodes", "20000", offsetof(ctx, base.max_nodes),                                         \
         "Call tree nodes per task (about 200 bytes each with its signature); a stack needing more is cut "       \
         "under a \"[truncated]\" frame and counted.",                                                             \
         .min = 16, .max = 100000000},                                                                             \
        {CN_OPT_INT, "max_segments", "1024", offsetof(ctx, base.max_segments),                                    \
         "Segments per task followed for durations; the least recently seen are forgotten first. Only segments " \
         "being profiled at once need room: agents profile at most a few per worker.",                           \
         .min = 16, .max = 100000000}

/* Opens the exporter's files: for the plugin's cb_start. render_arg is handed to render. */
int cn_profile_file_exporter_start(cn_profile_file_exporter *x, cn_component *self, const char *suffix,
                                   cn_profile_render_fn render, void *render_arg);
/* The other callbacks, for a context that starts with a cn_profile_file_exporter. */
int cn_profile_file_exporter_check(void *ctx, cn_component *self, cn_diag *d);
cn_status cn_profile_file_exporter_export(void *ctx, const cn_chunk *chunk);
void cn_profile_file_exporter_tick(void *ctx, int64_t now_mono_ms);
void cn_profile_file_exporter_flush(void *ctx);
void cn_profile_file_exporter_destroy(void *ctx);

/* A task id made safe as a file name: [A-Za-z0-9._-] kept, the rest '_', never starting with '.'. */
void cn_profile_file_name(const char *task_id, const char *suffix, char *out, size_t len);

#endif
