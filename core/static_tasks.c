/* tasks.static: profiling tasks written in the config, started with the collector. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "docs.h"
#include "service.h"

typedef struct static_task {
    char *id;
    char *service;
    char *endpoint;
    int64_t duration;
    int64_t min_duration_threshold;
    int64_t dump_period;
    int64_t max_sampling_count;
    char *start_time;
    bool continuous;
    int64_t window;
} static_task;

static const cn_option static_task_options[] = {
    {CN_OPT_STR, "id", NULL, offsetof(static_task, id), "Task id; also the jsonl file name.", .required = true},
    {CN_OPT_STR, "service", NULL, offsetof(static_task, service), "Service (CANOPY_SERVICE) whose agents profile.",
     .required = true},
    {CN_OPT_STR, "endpoint", NULL, offsetof(static_task, endpoint),
     "Endpoint to profile; for WSGI apps the request's PATH_INFO.", .required = true},
    {CN_OPT_DURATION, "duration", "10m", offsetof(static_task, duration),
     "How long the task runs from its start. Agents are told whole minutes (rounded up). Not with continuous.",
     .min = 1000, .max = 7 * 24 * 3600 * 1000LL},
    {CN_OPT_BOOL, "continuous", "false", offsetof(static_task, continuous),
     "The task never ends (until cancelled): each canopy agent profiles at most max_sampling_count requests "
     "of the endpoint in every window, picked at random. SkyWalking agents and the OAP never see it."},
    {CN_OPT_DURATION, "window", "10s", offsetof(static_task, window),
     "Continuous tasks only: the period over which max_sampling_count applies, per agent instance.",
     .min = 1000, .max = 3600 * 1000},
    {CN_OPT_DURATION, "min_duration_threshold", "0ms", offsetof(static_task, min_duration_threshold),
     "A request is only sampled once it has run this long.", .min = 0, .max = 3600 * 1000},
    {CN_OPT_DURATION, "dump_period", "10ms", offsetof(static_task, dump_period),
     "Time between samples in sampling mode (SkyWalking requires at least 10ms).", .min = 10, .max = 60000},
    {CN_OPT_INT, "max_sampling_count", "5", offsetof(static_task, max_sampling_count),
     "Most requests (segments) profiled per agent instance (the OAP requires fewer than 10); for a continuous "
     "task, per agent instance and window.",
     .min = 1,
     .max = 100000},
    {CN_OPT_STR, "start_time", NULL, offsetof(static_task, start_time),
     "When the task starts: epoch milliseconds or RFC 3339 UTC (2026-11-22T10:00:00Z). Default: at collector start."},
    CN_OPT_END};

const cn_option *cn_static_task_options(void) { return static_task_options; }

static int parse_start_time(const char *text, int64_t *out_ms)
{
    if (cn_parse_int(text, out_ms) == 0)
        return *out_ms >= 0 ? 0 : -1;
    struct tm tm = {0};
    const char *end = strptime(text, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!end)
        return -1;
    if (*end == 'Z' && end[1] == '\0') {
        *out_ms = (int64_t)timegm(&tm) * 1000;
        return 0;
    }
    return -1;
}

int cn_static_tasks_load(cn_task_registry *reg, const cn_node *list, int64_t now_ms, cn_diag *d)
{
    size_t errors_before = d->n_errors;
    if (list->kind == CN_NODE_SCALAR && list->plain_null)
        return 0;
    if (list->kind != CN_NODE_SEQ) {
        cn_diag_error(d, list, "tasks::static must be a list of tasks, not %s", cn_node_kind_name(list));
        return -1;
    }
    for (size_t i = 0; i < list->n; i++) {
        const cn_node *item = list->items[i];
        if (item->kind != CN_NODE_MAP) {
            cn_diag_error(d, item, "tasks::static: each task must be a map, not %s", cn_node_kind_name(item));
            continue;
        }
        static_task st = {0};
        if (cn_options_apply(static_task_options, &st, item, d) == 0) {
            int64_t start = now_ms;
            /* continuous: true rather than duration: 0, so that neither a typo ("0s") nor the old meaning
             * of a duration (how long) turns into "forever"; so a continuous task with a duration is a
             * contradiction, and a window on a task that ends would be silently ignored. */
            const cn_node *duration = cn_node_get(item, "duration"), *window = cn_node_get(item, "window");
            if (st.start_time && parse_start_time(st.start_time, &start) != 0) {
                cn_diag_error(d, cn_node_get(item, "start_time"),
                              "start_time: \"%s\" is neither epoch milliseconds nor RFC 3339 UTC", st.start_time);
            } else if (st.continuous && duration) {
                cn_diag_error(d, duration, "duration: a continuous task never ends; remove duration or continuous");
            } else if (!st.continuous && window) {
                cn_diag_error(d, window, "window: only a continuous task (continuous: true) has a window");
            } else {
                cn_task t = {
                    .id = st.id,
                    .serial = st.id,
                    .service = st.service,
                    .endpoint = st.endpoint,
                    .start_ms = start,
                    .duration_ms = st.continuous ? 0 : st.duration,
                    .continuous = st.continuous,
                    .window_ms = st.continuous ? st.window : 0,
                    .min_duration_ms = st.min_duration_threshold,
                    .dump_period_ms = st.dump_period,
                    .max_sampling_count = st.max_sampling_count,
                    .create_ms = now_ms,
                    .source = CN_TASK_STATIC,
                };
                char err[256];
                if (cn_tasks_add(reg, &t, err, sizeof err) != 0)
                    cn_diag_error(d, item, "tasks::static: %s", err);
            }
        }
        cn_options_free(static_task_options, &st);
    }
    return d->n_errors > errors_before ? -1 : 0;
}
