/*
 * The admin HTTP API at service.telemetry.http.listen:
 *
 *   GET  /healthz /readyz /metrics
 *   GET  /api/v1/tasks   POST /api/v1/tasks   GET|DELETE /api/v1/tasks/{id}
 *   GET  /api/v1/tasks/{id}/<view>   a render by the registered task views
 *   GET  /ui             the web UI of the registered task views
 *
 * Task views (canopy/task_views.h) are what an exporter (the live one)
 * registers: the admin API serves their figures, renders and UI files as
 * bytes and knows no profile format.
 *
 * A listen address in use is logged as an error but does not stop the
 * collector: data keeps flowing without the admin API.
 *
 * It listens on loopback only unless it has TLS and a bearer token
 * (admin_auth.c) or service.telemetry.http.allow_insecure is true: anyone who
 * reaches it can start profiling tasks. For the same reason
 * a loopback server also refuses requests whose Host is not a loopback name
 * (DNS rebinding), and POST needs Content-Type: application/json (a plain
 * cross-site form cannot send that without a CORS preflight we never allow).
 *
 * The server (admin_http.c) runs on a thread of its own, never behind the
 * receivers' work; everything the handlers read is thread safe
 * (metrics, the task registry, the registered views, atomic exporter flags).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "admin_internal.h"
#include "canopy/listen_security.h"


/* ---- replies ------------------------------------------------------------------ */

void cn_admin_reply(cn_admin *a, cn_http_exchange *x, uint16_t status, const char *content_type, const void *body,
                    size_t len, const char *extra_header, const char *extra_value)
{
    if (cn_http_respond(x, status, content_type, body, len, extra_header, extra_value) != 0)
        status = 500; /* out of memory: the server answers 500 itself */
    if (status >= 500)
        cn_metric_inc(a->server_errors);
    else if (status >= 400)
        cn_metric_inc(a->client_errors);
}

void cn_admin_reply_json(cn_admin *a, cn_http_exchange *x, uint16_t status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) {
        static const char oom[] = "{\"error\":\"out of memory\"}";
        cn_admin_reply(a, x, 500, "application/json", oom, sizeof oom - 1, NULL, NULL);
        return;
    }
    size_t len = strlen(text);
    text[len] = '\0';
    cn_admin_reply(a, x, status, "application/json", text, len, NULL, NULL);
    free(text);
}

void cn_admin_reply_error(cn_admin *a, cn_http_exchange *x, uint16_t status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cn_admin_reply_json(a, x, status, json_pack("{s:s}", "error", msg));
}

int cn_admin_url_decode(char *s)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (*r != '%') {
            *w++ = *r;
            continue;
        }
        int hi, lo;
        char h = r[1], l = h ? r[2] : '\0';
        hi = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        lo = l >= '0' && l <= '9' ? l - '0' : l >= 'a' && l <= 'f' ? l - 'a' + 10 : l >= 'A' && l <= 'F' ? l - 'A' + 10 : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
            return -1;
        *w++ = (char)(hi * 16 + lo);
        r += 2;
    }
    *w = '\0';
    return 0;
}

/* ---- request checks ----------------------------------------------------------- */

bool cn_admin_listen_is_loopback(const char *listen)
{
    const char *host;
    size_t len;
    cn_split_host(listen, &host, &len);
    return cn_host_is_loopback(host, len);
}

/* Returns true when the request may go on; otherwise replies. */
static bool request_allowed(cn_admin *a, cn_http_exchange *x)
{
    cn_metric_inc(a->requests);
    if (!cn_admin_authorized(a, x))
        return false;
    if (!a->loopback_only)
        return true;
    const char *hostport = cn_http_header(x, "Host");
    if (!hostport)
        return true; /* HTTP/1.0 clients; they reached a loopback socket */
    const char *host;
    size_t len;
    cn_split_host(hostport, &host, &len);
    if (cn_host_is_loopback(host, len))
        return true;
    cn_admin_reply_error(a, x, 403, "Host \"%s\" is not a loopback name; this admin API serves local clients only",
                         hostport);
    return false;
}

/* The path of a request URI, decoded, and its query (NULL if none). Returns -1 on a bad escape. */
static int split_uri(const char *uri, char *path, size_t len, const char **query)
{
    const char *q = strchr(uri, '?');
    size_t n = q ? (size_t)(q - uri) : strlen(uri);
    if (n >= len)
        return -1;
    memcpy(path, uri, n);
    path[n] = '\0';
    *query = q ? q + 1 : NULL;
    return cn_admin_url_decode(path);
}

/* ---- handlers ----------------------------------------------------------------- */

static void handle_healthz(cn_http_exchange *x, void *arg)
{
    cn_admin *a = arg;
    if (!request_allowed(a, x))
        return;
    cn_admin_reply(a, x, 200, "text/plain; charset=utf-8", "ok\n", 3, NULL, NULL);
}

/* Ready unless shutting down or some exporter is dropping data past its retry budget. */
static void handle_readyz(cn_http_exchange *x, void *arg)
{
    cn_admin *a = arg;
    if (!request_allowed(a, x))
        return;
    char body[2048];
    size_t used = 0;
    bool ready = true;
    if (atomic_load(&a->svc->stopping)) {
        ready = false;
        used += (size_t)snprintf(body + used, sizeof body - used, "shutting down\n");
    }
    for (size_t i = 0; i < a->svc->n_components; i++) {
        cn_component *c = a->svc->components[i];
        if (c->kind != CN_EXPORTER || !c->rt || !atomic_load(&c->rt->failing))
            continue;
        ready = false;
        if (used < sizeof body)
            used += (size_t)snprintf(body + used, sizeof body - used,
                                     "exporter %s is failing (dropping data past its retry budget)\n", c->id);
    }
    if (ready)
        used = (size_t)snprintf(body, sizeof body, "ready\n");
    if (used >= sizeof body)
        used = sizeof body - 1;
    cn_admin_reply(a, x, ready ? 200 : 503, "text/plain; charset=utf-8", body, used, NULL, NULL);
}

static void handle_metrics(cn_http_exchange *x, void *arg)
{
    cn_admin *a = arg;
    if (!request_allowed(a, x))
        return;
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    if (!out) {
        cn_admin_reply_error(a, x, 500, "out of memory");
        return;
    }
    cn_metrics_write_prometheus(out);
    bool failed = ferror(out) != 0;
    fclose(out);
    if (failed || !buf)
        cn_admin_reply_error(a, x, 500, "out of memory");
    else
        cn_admin_reply(a, x, 200, "text/plain; version=0.0.4; charset=utf-8", buf, len, NULL, NULL);
    free(buf);
}

static void handle_tasks(cn_http_exchange *x, void *arg)
{
    cn_admin *a = arg;
    if (!request_allowed(a, x))
        return;
    char path[1024];
    const char *query;
    if (split_uri(cn_http_uri(x), path, sizeof path, &query) != 0) {
        cn_admin_reply_error(a, x, 400, "malformed or too long request path");
        return;
    }
    static const char prefix[] = "/api/v1/tasks";
    cn_admin_tasks(a, x, path + sizeof prefix - 1, query);
}

static void handle_ui(cn_http_exchange *x, void *arg)
{
    cn_admin *a = arg;
    if (!request_allowed(a, x))
        return;
    char path[256];
    const char *query;
    if (split_uri(cn_http_uri(x), path, sizeof path, &query) != 0) {
        cn_admin_reply_error(a, x, 404, "not found");
        return;
    }
    const char *m = cn_http_method(x);
    if (strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0) {
        cn_admin_reply(a, x, 405, "text/plain", "method not allowed\n", 19, "Allow", "GET");
        return;
    }
    cn_view_body body = {0};
    const cn_service *svc = a->svc;
    if (svc->views && svc->views->asset && svc->views->asset(svc->views_arg, path + 3, &body) == CN_VIEW_OK)
        cn_admin_reply(a, x, 200, body.content_type, body.data, body.len, NULL, NULL);
    else
        cn_admin_reply(a, x, 404, "text/plain", "not found\n", 10, NULL, NULL);
    if (body.owned)
        free((void *)body.data);
}

static void handle_root(cn_http_exchange *x, void *arg)
{
    cn_admin *a = arg;
    if (!request_allowed(a, x))
        return;
    static const char body[] = "canopy admin API: /ui /healthz /readyz /metrics /api/v1/tasks\n";
    cn_admin_reply(a, x, 302, "text/plain; charset=utf-8", body, sizeof body - 1, "Location", "/ui/");
}

/* ---- start and stop ----------------------------------------------------------- */

/* Every handler takes any method: they check it and answer 405 with an Allow header. */
static const cn_http_route routes[] = {
    {"/", false, 0, handle_root},
    {"/healthz", false, 0, handle_healthz},
    {"/readyz", false, 0, handle_readyz},
    {"/metrics", false, 0, handle_metrics},
    {"/api/v1/tasks", true, 64 * 1024, handle_tasks},
    {"/ui", true, 0, handle_ui},
};

static void admin_free(cn_admin *a)
{
    if (!a)
        return;
    cn_http_server_stop(a->server);
    cn_admin_auth_free(a->auth);
    free(a);
}

int cn_admin_start(cn_service *svc)
{
    const char *listen = svc->settings.telemetry.http.listen;
    if (!listen || !listen[0]) {
        cn_info("admin", "service.telemetry.http.listen is empty: admin API disabled");
        return 0;
    }
    cn_admin *a = calloc(1, sizeof *a);
    if (!a)
        return -1;
    a->svc = svc;
    if (!(a->auth = cn_admin_auth_new(&svc->settings.telemetry.http))) {
        free(a);
        return -1;
    }
    bool loopback = cn_admin_listen_is_loopback(listen);
    /* validate refuses this config too; a config built without validate must not slip through. */
    if (!loopback && !svc->settings.telemetry.http.allow_insecure && !cn_admin_auth_secure(a->auth)) {
        cn_error("admin",
                 "service.telemetry.http.listen: %s is not a loopback address; the admin API can start profiling "
                 "tasks, so beyond loopback it needs tls and a token, or allow_insecure: true",
                 listen);
        admin_free(a);
        return -1;
    }
    a->loopback_only = loopback;
    a->requests = cn_counter("canopy_admin_requests_total", "Requests to the admin HTTP API.", "");
    a->client_errors = cn_counter("canopy_admin_client_errors_total", "Admin API requests answered 4xx.", "");
    a->server_errors = cn_counter("canopy_admin_server_errors_total", "Admin API requests answered 5xx.", "");
    char err[256];
    int rv = cn_http_server_start(&a->server, listen, cn_admin_auth_tls(a->auth), routes,
                                  sizeof routes / sizeof routes[0], a, err, sizeof err);
    if (rv == CN_HTTP_BAD_ADDRESS) {
        cn_error("admin", "service.telemetry.http.listen: %s", err);
        admin_free(a);
        return -1;
    }
    if (rv != 0) {
        /* Collecting matters more than the admin API: a busy port (a second collector on the
         * host, a test) is reported loudly, and /readyz stays unreachable, but data still flows. */
        cn_error("admin", "cannot listen on %s: %s; the admin API, /metrics and the web UI are NOT served "
                          "(set service.telemetry.http.listen to a free host:port)",
                 listen, err);
        admin_free(a);
        return 0;
    }
    svc->admin = a;
    cn_info("admin", "admin API on %s://%s (web UI at /ui, metrics at /metrics)%s", cn_admin_auth_scheme(a->auth),
            listen, cn_admin_auth_secure(a->auth) ? ", bearer token required" : "");
    return 0;
}

void cn_admin_stop(cn_service *svc)
{
    cn_admin *a = svc->admin;
    svc->admin = NULL;
    admin_free(a);
}
