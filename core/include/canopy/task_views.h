/*
 * What a component shows about tasks in the admin API: figures per task for
 * the task table, renders of a task in named views (served as
 * /api/v1/tasks/<id>/<view>) and the static files of a web UI (/ui/...).
 *
 * The admin API knows no profile format: it lists, links and serves what the
 * registered component hands it as bytes with a content type. The live
 * exporter (plugins/exporters/live) is the one that registers today.
 */
#ifndef CANOPY_TASK_VIEWS_H
#define CANOPY_TASK_VIEWS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cn_component cn_component;

/* One row of the task table: what the component holds for a task. */
typedef struct cn_task_figures {
    char *task_id;
    char *service;     /* NULL when unknown */
    int64_t snapshots, agents, segments, nodes, truncated;
    int64_t first_ms, last_ms; /* epoch ms of the earliest and latest snapshot; 0 when none */
    bool ended;
} cn_task_figures;

void cn_task_figures_clear(cn_task_figures *f);

/* A response body. data is freed with free() when owned is true (else it is static). */
typedef struct cn_view_body {
    const void *data;
    size_t len;
    bool owned;
    const char *content_type;
    char attachment[256]; /* a file name for Content-Disposition, or "" to show inline */
} cn_view_body;

/* A task's link in the JSON: "links": {name: "/api/v1/tasks/<id>/<view>", ...}. */
typedef struct cn_task_link {
    const char *name;
    const char *view;
} cn_task_link;

enum { CN_VIEW_OK = 0, CN_VIEW_NOT_FOUND = 1, CN_VIEW_ERROR = -1 };

typedef struct cn_task_views {
    const cn_task_link *links; /* ends with {NULL, NULL} */
    /* Every task held, oldest first; free each with cn_task_figures_clear, then the array. */
    size_t (*list)(void *arg, cn_task_figures **out);
    /* CN_VIEW_OK with *out filled, or CN_VIEW_NOT_FOUND. */
    int (*figures)(void *arg, const char *task_id, cn_task_figures *out);
    /* Renders a task in a view; query is the URL query (may be NULL). CN_VIEW_NOT_FOUND for an
     * unknown task or view, CN_VIEW_ERROR when out of memory. Called on the admin thread. */
    int (*render)(void *arg, const char *task_id, const char *view, const char *query, cn_view_body *out);
    /* A UI file by path under /ui ("" or "/" is the page). CN_VIEW_OK or CN_VIEW_NOT_FOUND. */
    int (*asset)(void *arg, const char *path, cn_view_body *out);
} cn_task_views;

/*
 * Registers views with the admin API of the component's service, from
 * cb_start. They stay registered until the service is freed: the admin API
 * starts after every exporter and stops before any is destroyed, so arg must
 * live until the component's cb_destroy. One component per service: returns
 * -1 after logging when another already registered.
 */
int cn_component_serve_views(cn_component *self, const cn_task_views *views, void *arg);

#endif
