/*
 * /api/v1/tasks: the task registry and the registered task views' figures
 * (canopy/task_views.h) as JSON, task creation and cancellation, and the
 * views' renders of a task.
 *
 *   GET    /api/v1/tasks                      {"tasks": [task, ...]}
 *   POST   /api/v1/tasks                      {service, endpoint, duration, min_duration_threshold,
 *                                              dump_period, max_sampling_count[, id]
 *                                              [, continuous: true[, window]]} -> 201 task
 *   GET    /api/v1/tasks/{id}                 task
 *   DELETE /api/v1/tasks/{id}                 cancels it -> task
 *   GET    /api/v1/tasks/{id}/{view}[?query]  a render by the registered views
 *                                              (the live exporter: flamegraph.svg, profile.pb.gz, folded)
 *
 * Durations are strings ("5m", "10ms") or numbers of milliseconds.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "admin_internal.h"

#define MAX_ID_LEN 128

/* ---- task JSON ---------------------------------------------------------------- */

static const char *source_name(cn_task_source s)
{
    return s == CN_TASK_STATIC ? "static" : s == CN_TASK_ADMIN ? "admin" : s == CN_TASK_OAP ? "oap" : "unknown";
}

/* The registered views' links of a task, its id percent-encoded. */
static json_t *links(const cn_service *svc, const char *id)
{
    json_t *o = json_object();
    char *enc = malloc(strlen(id) * 3 + 1), *w = enc;
    if (!enc || !o || !svc->views)
        goto out;
    for (const unsigned char *p = (const unsigned char *)id; *p; p++) {
        bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                     *p == '_' || *p == '.' || *p == '~';
        if (plain)
            *w++ = (char)*p;
        else
            w += sprintf(w, "%%%02X", *p);
    }
    *w = '\0';
    for (const cn_task_link *l = svc->views->links; l && l->name; l++) {
        char url[600];
        snprintf(url, sizeof url, "/api/v1/tasks/%s/%s", enc, l->view);
        json_object_set_new(o, l->name, json_string(url));
    }
out:
    free(enc);
    return o;
}

void cn_task_figures_clear(cn_task_figures *f)
{
    free(f->task_id);
    free(f->service);
    memset(f, 0, sizeof *f);
}

int cn_component_serve_views(cn_component *self, const cn_task_views *views, void *arg)
{
    cn_service *svc = self->svc;
    if (svc->views) {
        cn_error(self->id, "%s already serves the admin API's task views; only one component per service can",
                 svc->views_owner);
        return -1;
    }
    svc->views = views;
    svc->views_arg = arg;
    svc->views_owner = self->id;
    return 0;
}

/* A task as JSON: registry fields when known (t may be NULL), the views' figures when any (info may be NULL). */
static json_t *task_json(const cn_service *svc, const cn_task *t, const cn_task_figures *info, int64_t now)
{
    const char *id = t ? t->id : info->task_id;
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "id", json_string(id));
    if (t) {
        cn_task_state st = t->cancelled || (!t->continuous && now >= t->start_ms + t->duration_ms) ? CN_TASK_ENDED
                           : now < t->start_ms ? CN_TASK_PENDING
                                               : CN_TASK_RUNNING;
        json_object_set_new(o, "service", json_string(t->service));
        json_object_set_new(o, "endpoint", json_string(t->endpoint));
        json_object_set_new(o, "source", json_string(source_name(t->source)));
        json_object_set_new(o, "status", json_string(cn_task_state_name(st)));
        json_object_set_new(o, "cancelled", json_boolean(t->cancelled));
        json_object_set_new(o, "start_time", json_integer(t->start_ms));
        json_object_set_new(o, "create_time", json_integer(t->create_ms));
        json_object_set_new(o, "duration_ms", json_integer(t->duration_ms));
        json_object_set_new(o, "min_duration_threshold_ms", json_integer(t->min_duration_ms));
        json_object_set_new(o, "dump_period_ms", json_integer(t->dump_period_ms));
        json_object_set_new(o, "max_sampling_count", json_integer(t->max_sampling_count));
        json_object_set_new(o, "continuous", json_boolean(t->continuous));
        json_object_set_new(o, "window_ms", t->continuous ? json_integer(t->window_ms) : json_null());
        int64_t left = st == CN_TASK_ENDED ? 0 : t->start_ms + t->duration_ms - (now > t->start_ms ? now : t->start_ms);
        /* A running continuous task has no end, so nothing remains to count down: null, not a number. */
        json_object_set_new(o, "remaining_ms",
                            t->continuous && st != CN_TASK_ENDED ? json_null() : json_integer(left));
    } else {
        /* Seen in data only (e.g. a task the registry already forgot). */
        json_object_set_new(o, "service", info->service ? json_string(info->service) : json_null());
        json_object_set_new(o, "endpoint", json_null());
        json_object_set_new(o, "source", json_string("data"));
        json_object_set_new(o, "status", json_string(info->ended ? "ended" : "unknown"));
    }
    json_object_set_new(o, "agents", json_integer(info ? info->agents : 0));
    json_object_set_new(o, "snapshots", json_integer(info ? info->snapshots : 0));
    json_object_set_new(o, "segments", json_integer(info ? info->segments : 0));
    json_object_set_new(o, "nodes", json_integer(info ? info->nodes : 0));
    json_object_set_new(o, "truncated_snapshots", json_integer(info ? info->truncated : 0));
    json_object_set_new(o, "first_snapshot_time", info && info->first_ms ? json_integer(info->first_ms) : json_null());
    json_object_set_new(o, "last_snapshot_time", info && info->last_ms ? json_integer(info->last_ms) : json_null());
    json_object_set_new(o, "links", links(svc, id));
    return o;
}

static void list_tasks(cn_admin *a, cn_http_exchange *x)
{
    int64_t now = cn_now_ms();
    cn_task *tasks = NULL;
    cn_task_figures *infos = NULL;
    const cn_service *svc = a->svc;
    size_t n = cn_tasks_list(svc->tasks, &tasks);
    size_t m = svc->views ? svc->views->list(svc->views_arg, &infos) : 0;
    bool *matched = calloc(m ? m : 1, sizeof *matched);
    json_t *arr = json_array();
    bool ok = matched && arr;
    for (size_t i = 0; ok && i < n; i++) {
        const cn_task_figures *info = NULL;
        for (size_t j = 0; j < m; j++)
            if (!matched[j] && strcmp(infos[j].task_id, tasks[i].id) == 0) {
                info = &infos[j];
                matched[j] = true;
                break;
            }
        ok = json_array_append_new(arr, task_json(svc, &tasks[i], info, now)) == 0;
    }
    for (size_t j = 0; ok && j < m; j++)
        if (!matched[j])
            ok = json_array_append_new(arr, task_json(svc, NULL, &infos[j], now)) == 0;
    for (size_t i = 0; i < n; i++)
        cn_task_clear(&tasks[i]);
    free(tasks);
    for (size_t j = 0; j < m; j++)
        cn_task_figures_clear(&infos[j]);
    free(infos);
    free(matched);
    if (!ok) {
        json_decref(arr);
        cn_admin_reply_error(a, x, 500, "out of memory");
        return;
    }
    cn_admin_reply_json(a, x, 200, json_pack("{s:o}", "tasks", arr));
}

static void get_task(cn_admin *a, cn_http_exchange *x, const char *id, uint16_t status)
{
    cn_task t = {0};
    cn_task_figures info = {0};
    const cn_service *svc = a->svc;
    bool known = cn_tasks_get(svc->tasks, id, &t) == 0;
    bool has_profile = svc->views && svc->views->figures(svc->views_arg, id, &info) == CN_VIEW_OK;
    if (!known && !has_profile) {
        cn_admin_reply_error(a, x, 404, "no task %s", id);
        return;
    }
    json_t *o = task_json(svc, known ? &t : NULL, has_profile ? &info : NULL, cn_now_ms());
    if (known)
        cn_task_clear(&t);
    if (has_profile)
        cn_task_figures_clear(&info);
    cn_admin_reply_json(a, x, o ? status : 500, o ? o : json_pack("{s:s}", "error", "out of memory"));
}

/* ---- create and cancel --------------------------------------------------------- */

/* A duration given as "5m" or as a number of milliseconds, within [min, max]. */
static int json_duration(json_t *body, const char *key, const char *def, int64_t min, int64_t max, int64_t *out,
                         char *err, size_t err_len)
{
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v)) {
        cn_parse_duration_ms(def, out);
    } else if (json_is_integer(v)) {
        *out = json_integer_value(v);
    } else if (!json_is_string(v) || cn_parse_duration_ms(json_string_value(v), out) != 0) {
        snprintf(err, err_len, "%s: a duration such as \"10ms\", \"30s\" or \"5m\" (or milliseconds) is expected",
                 key);
        return -1;
    }
    if (*out < min || *out > max) {
        snprintf(err, err_len, "%s: %lld ms is out of range (%lld ms to %lld ms)", key, (long long)*out,
                 (long long)min, (long long)max);
        return -1;
    }
    return 0;
}

static bool valid_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > MAX_ID_LEN)
        return false;
    for (const char *p = id; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
              *p == '_' || *p == '.' || *p == ':'))
            return false;
    return true;
}

static bool content_is_json(const cn_http_exchange *x)
{
    const char *ct = cn_http_header(x, "Content-Type");
    return ct && strncasecmp(ct, "application/json", 16) == 0;
}

/* The task a POST body describes, into *t (service and endpoint point into body) and id. */
static int parse_task(json_t *body, cn_task *t, char *id, size_t id_len, char *err, size_t err_len)
{
    static const char *const known[] = {"id",          "service",          "endpoint",   "duration",
                                        "min_duration_threshold", "dump_period", "max_sampling_count",
                                        "continuous",  "window",           NULL};
    const char *key;
    json_t *value;
    json_object_foreach(body, key, value)
    {
        bool ok = false;
        for (size_t i = 0; known[i] && !ok; i++)
            ok = strcmp(key, known[i]) == 0;
        if (!ok) {
            snprintf(err, err_len, "unknown field \"%.64s\"", key);
            return -1;
        }
    }
    const char *service = json_string_value(json_object_get(body, "service"));
    const char *endpoint = json_string_value(json_object_get(body, "endpoint"));
    json_t *jid = json_object_get(body, "id"), *jmax = json_object_get(body, "max_sampling_count");
    if (!service || !service[0] || strlen(service) > 256) {
        snprintf(err, err_len, "service: a non-empty string (the agents' CANOPY_SERVICE) is required");
        return -1;
    }
    if (!endpoint || !endpoint[0] || strlen(endpoint) > 1024) {
        snprintf(err, err_len, "endpoint: a non-empty string (for WSGI apps the PATH_INFO) is required");
        return -1;
    }
    if (jid && !json_is_null(jid) && (!json_is_string(jid) || !valid_id(json_string_value(jid)))) {
        snprintf(err, err_len, "id: 1 to %d characters of [A-Za-z0-9._:-]", MAX_ID_LEN);
        return -1;
    }
    t->max_sampling_count = 5;
    if (jmax && !json_is_null(jmax)) {
        if (!json_is_integer(jmax) || json_integer_value(jmax) < 1 || json_integer_value(jmax) > 100000) {
            snprintf(err, err_len, "max_sampling_count: an integer from 1 to 100000 is expected");
            return -1;
        }
        t->max_sampling_count = json_integer_value(jmax);
    }
    /* The same rules as a task in tasks.static (static_tasks.c says why continuous is a flag). */
    json_t *jcont = json_object_get(body, "continuous"), *jdur = json_object_get(body, "duration"),
           *jwin = json_object_get(body, "window");
    if (jcont && !json_is_null(jcont) && !json_is_boolean(jcont)) {
        snprintf(err, err_len, "continuous: true or false is expected");
        return -1;
    }
    t->continuous = jcont && json_is_true(jcont);
    if (t->continuous && jdur && !json_is_null(jdur)) {
        snprintf(err, err_len, "duration: a continuous task never ends; remove duration or continuous");
        return -1;
    }
    if (!t->continuous && jwin && !json_is_null(jwin)) {
        snprintf(err, err_len, "window: only a continuous task (\"continuous\": true) has a window");
        return -1;
    }
    if (t->continuous &&
        json_duration(body, "window", "10s", 1000, 3600 * 1000, &t->window_ms, err, err_len) != 0)
        return -1;
    if ((!t->continuous &&
         json_duration(body, "duration", "10m", 1000, 7 * 24 * 3600 * 1000LL, &t->duration_ms, err, err_len) != 0) ||
        json_duration(body, "min_duration_threshold", "0ms", 0, 3600 * 1000, &t->min_duration_ms, err, err_len) != 0 ||
        json_duration(body, "dump_period", "10ms", 10, 60000, &t->dump_period_ms, err, err_len) != 0)
        return -1;
    if (jid && json_is_string(jid)) {
        snprintf(id, id_len, "%s", json_string_value(jid));
    } else {
        uint8_t r[6];
        if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
            /* No entropy source: a clock-based id is still unique enough on one host. */
            uint64_t x = (uint64_t)cn_mono_ns() ^ ((uint64_t)cn_now_ms() << 20);
            memcpy(r, &x, sizeof r);
        }
        snprintf(id, id_len, "task-%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5]);
    }
    t->id = t->serial = id;
    t->service = (char *)service;
    t->endpoint = (char *)endpoint;
    t->source = CN_TASK_ADMIN;
    t->create_ms = t->start_ms = cn_now_ms();
    return 0;
}

static void create_task(cn_admin *a, cn_http_exchange *x)
{
    if (!content_is_json(x)) {
        cn_admin_reply_error(a, x, 415, "POST /api/v1/tasks takes Content-Type: application/json");
        return;
    }
    const void *data;
    size_t len;
    cn_http_body(x, &data, &len);
    json_error_t jerr;
    json_t *body = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!body || !json_is_object(body)) {
        json_decref(body);
        cn_admin_reply_error(a, x, 400, "the body must be a JSON object (%s)", body ? "not an object" : jerr.text);
        return;
    }
    char err[300], id[MAX_ID_LEN + 1];
    cn_task t = {0};
    int rc = parse_task(body, &t, id, sizeof id, err, sizeof err);
    if (rc == 0)
        rc = cn_tasks_add(a->svc->tasks, &t, err, sizeof err);
    json_decref(body); /* t's service and endpoint pointed into it */
    if (rc != 0) {
        uint16_t status = strstr(err, "already exists") ? 409 : strstr(err, "limit") ? 429 : 400;
        cn_admin_reply_error(a, x, status, "%s", err);
        return;
    }
    if (t.continuous)
        cn_info("admin", "continuous task %s created through the admin API (window %lld ms)", id,
                (long long)t.window_ms);
    else
        cn_info("admin", "task %s created through the admin API (%lld ms)", id, (long long)t.duration_ms);
    get_task(a, x, id, 201);
}

static void cancel_task(cn_admin *a, cn_http_exchange *x, const char *id)
{
    if (cn_tasks_cancel(a->svc->tasks, id) != 0) {
        cn_admin_reply_error(a, x, 404, "no task %s", id);
        return;
    }
    cn_info("admin", "task %s cancelled through the admin API", id);
    get_task(a, x, id, 200);
}

/* ---- renders ------------------------------------------------------------------ */

static void render(cn_admin *a, cn_http_exchange *x, const char *id, const char *view, const char *query)
{
    const cn_service *svc = a->svc;
    cn_view_body body = {0};
    int rc = svc->views ? svc->views->render(svc->views_arg, id, view, query, &body) : CN_VIEW_NOT_FOUND;
    if (rc == CN_VIEW_NOT_FOUND) {
        if (svc->views)
            cn_admin_reply_error(a, x, 404, "no task %s or no view %s", id, view);
        else
            cn_admin_reply_error(a, x, 404, "no task views: configure the live exporter to render tasks");
    } else if (rc != CN_VIEW_OK) {
        cn_admin_reply_error(a, x, 500, "out of memory while rendering task %s", id);
    } else if (body.attachment[0]) {
        char disp[400];
        snprintf(disp, sizeof disp, "attachment; filename=\"%s\"", body.attachment);
        cn_admin_reply(a, x, 200, body.content_type, body.data, body.len, "Content-Disposition", disp);
    } else {
        cn_admin_reply(a, x, 200, body.content_type, body.data, body.len, NULL, NULL);
    }
    if (body.owned)
        free((void *)body.data);
}

/* ---- routing ------------------------------------------------------------------ */

static void method_not_allowed(cn_admin *a, cn_http_exchange *x, const char *allow)
{
    char msg[64];
    int n = snprintf(msg, sizeof msg, "{\"error\":\"method not allowed; use %s\"}", allow);
    cn_admin_reply(a, x, 405, "application/json", msg, (size_t)n, "Allow", allow);
}

void cn_admin_tasks(cn_admin *a, cn_http_exchange *x, const char *rest, const char *query)
{
    const char *method = cn_http_method(x);
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (rest[0] == '\0' || strcmp(rest, "/") == 0) {
        if (get)
            list_tasks(a, x);
        else if (strcmp(method, "POST") == 0)
            create_task(a, x);
        else
            method_not_allowed(a, x, "GET, POST");
        return;
    }
    /* "/{id}" or "/{id}/{view}"; an id never holds '/' (valid_id), but one from an OAP might: a last
     * part that is a registered view's name is the view. */
    char id[MAX_ID_LEN * 2 + 1];
    const char *start = rest + 1, *slash = strrchr(start, '/'), *view = NULL;
    for (const cn_task_link *l = a->svc->views && slash ? a->svc->views->links : NULL; l && l->name && !view; l++)
        if (strcmp(slash + 1, l->view) == 0)
            view = l->view;
    size_t n = view ? (size_t)(slash - start) : strlen(start);
    if (n == 0 || n >= sizeof id) {
        cn_admin_reply_error(a, x, 404, "not found");
        return;
    }
    memcpy(id, start, n);
    id[n] = '\0';
    if (view) {
        if (!get)
            method_not_allowed(a, x, "GET");
        else
            render(a, x, id, view, query);
        return;
    }
    if (get)
        get_task(a, x, id, 200);
    else if (strcmp(method, "DELETE") == 0)
        cancel_task(a, x, id);
    else
        method_not_allowed(a, x, "GET, DELETE");
}
