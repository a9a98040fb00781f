/*
 * The live exporter's views in the admin API (canopy/task_views.h): the
 * store's figures per task, renders of a task's call tree, and the web UI.
 * Everything here runs on the admin API's thread; the store is thread safe,
 * and a render works on a clone of the tree, outside the store's lock.
 */
#include <stdlib.h>
#include <string.h>

#include "live.h"

/* The web UI, embedded by ui/CMakeLists.txt. */
extern const char cn_ui_index_html[], cn_ui_app_js[], cn_ui_style_css[];
extern const size_t cn_ui_index_html_len, cn_ui_app_js_len, cn_ui_style_css_len;

static const cn_task_link live_links[] = {
    {"flamegraph", "flamegraph.svg"},
    {"pprof", "profile.pb.gz"},
    {"folded", "folded"},
    {NULL, NULL},
};

static size_t live_list(void *arg, cn_task_figures **out)
{
    return cn_profiles_list(((live_exporter *)arg)->store, out);
}

static int live_figures(void *arg, const char *task_id, cn_task_figures *out)
{
    return cn_profiles_info(((live_exporter *)arg)->store, task_id, out) == 0 ? CN_VIEW_OK : CN_VIEW_NOT_FOUND;
}

static int query_int(const char *query, const char *key, int def)
{
    size_t klen = strlen(key);
    for (const char *p = query; p && *p;) {
        if (strncmp(p, key, klen) == 0 && p[klen] == '=')
            return atoi(p + klen + 1);
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return def;
}

static int write_view(const cn_calltree *tree, const cn_profile_meta *meta, const char *view, const char *query,
                      FILE *out)
{
    if (strcmp(view, "flamegraph.svg") == 0)
        return cn_calltree_write_svg(tree, meta, query_int(query, "width", 1200), out);
    if (strcmp(view, "profile.pb.gz") == 0)
        return cn_calltree_write_pprof(tree, meta, out);
    return cn_calltree_write_folded(tree, out);
}

static int live_render(void *arg, const char *id, const char *view, const char *query, cn_view_body *body)
{
    live_exporter *x = arg;
    bool known_view = false;
    for (const cn_task_link *l = live_links; l->name; l++)
        known_view = known_view || strcmp(view, l->view) == 0;
    if (!known_view)
        return CN_VIEW_NOT_FOUND;
    cn_task t = {0};
    cn_task_figures info = {0};
    bool known = cn_tasks_get(x->registry, id, &t) == 0;
    cn_calltree *tree = cn_profiles_clone(x->store, id, &info);
    bool empty = false;
    if (!tree) {
        if (!known)
            return CN_VIEW_NOT_FOUND;
        /* A task with no snapshot yet draws as an empty profile, so the UI can poll it. */
        tree = cn_calltree_new(1);
        empty = true;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *out = tree ? open_memstream(&buf, &len) : NULL;
    int rc = -1;
    if (out) {
        cn_profile_meta meta = {.task_id = id,
                                .service = known ? t.service : info.service,
                                .endpoint = known ? t.endpoint : NULL,
                                .start_ms = empty ? 0 : info.first_ms,
                                .end_ms = empty ? 0 : info.last_ms,
                                .period_ms = known ? t.dump_period_ms : 0,
                                .agents = empty ? 0 : info.agents};
        rc = write_view(tree, &meta, view, query, out);
        if (fclose(out) != 0)
            rc = -1;
    }
    cn_calltree_free(tree);
    if (known)
        cn_task_clear(&t);
    cn_task_figures_clear(&info);
    if (rc != 0 || !buf) {
        free(buf);
        return CN_VIEW_ERROR;
    }
    *body = (cn_view_body){.data = buf, .len = len, .owned = true};
    if (strcmp(view, "flamegraph.svg") == 0) {
        body->content_type = "image/svg+xml";
    } else if (strcmp(view, "profile.pb.gz") == 0) {
        body->content_type = "application/octet-stream";
        cn_profile_file_name(id, ".pb.gz", body->attachment, sizeof body->attachment);
    } else {
        body->content_type = "text/plain; charset=utf-8";
    }
    return CN_VIEW_OK;
}

static int live_asset(void *arg, const char *path, cn_view_body *body)
{
    (void)arg;
    if (!path[0] || strcmp(path, "/") == 0 || strcmp(path, "/index.html") == 0)
        *body = (cn_view_body){.data = cn_ui_index_html, .len = cn_ui_index_html_len,
                               .content_type = "text/html; charset=utf-8"};
    else if (strcmp(path, "/app.js") == 0)
        *body = (cn_view_body){.data = cn_ui_app_js, .len = cn_ui_app_js_len,
                               .content_type = "text/javascript; charset=utf-8"};
    else if (strcmp(path, "/style.css") == 0)
        *body = (cn_view_body){.data = cn_ui_style_css, .len = cn_ui_style_css_len,
                               .content_type = "text/css; charset=utf-8"};
    else
        return CN_VIEW_NOT_FOUND;
    return CN_VIEW_OK;
}

const cn_task_views cn_live_views = {
    .links = live_links,
    .list = live_list,
    .figures = live_figures,
    .render = live_render,
    .asset = live_asset,
};
