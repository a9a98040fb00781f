/* Private to the live exporter (live_exporter.c, live_views.c). */
#ifndef CN_LIVE_H
#define CN_LIVE_H

#include "canopy/plugin.h"
#include "canopy/task_views.h"
#include "profiles/profiles.h"

typedef struct live_exporter {
    /* options */
    int64_t max_tasks, max_nodes, max_segments, max_agents;
    /* runtime */
    cn_component *self;
    cn_task_registry *registry;
    cn_profiles *store; /* fed on the exporter's thread, read by the admin API's */
    int64_t next_end_check_ms; /* monotonic */
} live_exporter;

/* What the live exporter shows in the admin API: its call trees and the web UI. */
extern const cn_task_views cn_live_views;

#endif
