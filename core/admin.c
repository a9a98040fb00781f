/*
 * The admin HTTP API on nng's HTTP server, at service.telemetry.http.listen:
 *
 *   GET  /healthz /readyz /metrics
 *   GET  /api/v1/tasks   POST /api/v1/tasks   GET|DELETE /api/v1/tasks/{id}
 *   GET  /api/v1/tasks/{id}/flamegraph.svg | profile.pb.gz | folded
 *   GET  /ui             the web page (embedded at build time)
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
 * Handlers run on nng's threads; everything they read is thread safe
 * (metrics, the task registry, the profile store, atomic exporter flags).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "admin_internal.h"

/* The web UI, embedded by core/ui/CMakeLists.txt. */
extern const char cn_ui_index_html[], cn_ui_app_js[], cn_ui_style_css[];
extern const size_t cn_ui_index_html_len, cn_ui_app_js_len, cn_ui_style_css_len;

/* ---- replies ------------------------------------------------------------------ */

void cn_admin_reply(cn_admin *a, nng_aio *aio, uint16_t status, const char *content_type, const void *body,
                    size_t len, const char *extra_header, const char *extra_value)
{
    nng_http_res *res = NULL;
    int rv = nng_http_res_alloc(&res);
    if (rv == 0)
        rv = nng_http_res_set_status(res, status);
    if (rv == 0 && content_type)
        rv = nng_http_res_set_header(res, "Content-Type", content_type);
    if (rv == 0)
        rv = nng_http_res_set_header(res, "Cache-Control", "no-store");
    if (rv == 0 && extra_header)
        rv = nng_http_res_set_header(res, extra_header, extra_value);
    /* An empty body still needs "Content-Length: 0", or a client waits for the connection to close. */
    if (rv == 0)
        rv = len > 0 ? nng_http_res_copy_data(res, body, len) : nng_http_res_set_data(res, "", 0);
    if (rv != 0) {
        /* Out of memory: nng answers 500 itself when the handler fails. */
        if (res)
            nng_http_res_free(res);
        cn_metric_inc(a->server_errors);
        nng_aio_finish(aio, rv);
        return;
    }
    if (status >= 500)
        cn_metric_inc(a->server_errors);
    else if (status >= 400)
        cn_metric_inc(a->client_errors);
    nng_aio_set_output(aio, 0, res);
    nng_aio_finish(aio, 0);
}

void cn_admin_reply_json(cn_admin *a, nng_aio *aio, uint16_t status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) {
        static const char oom[] = "{\"error\":\"out of memory\"}";
        cn_admin_reply(a, aio, 500, "application/json", oom, sizeof oom - 1, NULL, NULL);
        return;
    }
    size_t len = strlen(text);
    text[len] = '\0';
    cn_admin_reply(a, aio, status, "application/json", text, len, NULL, NULL);
    free(text);
}

void cn_admin_reply_error(cn_admin *a, nng_aio *aio, uint16_t status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cn_admin_reply_json(a, aio, status, json_pack("{s:s}", "error", msg));
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

static bool is_loopback_host(const char *host, size_t len)
{
    if (len == 9 && strncasecmp(host, "localhost", 9) == 0)
        return true;
    if ((len == 3 && memcmp(host, "::1", 3) == 0) || (len == 5 && memcmp(host, "[::1]", 5) == 0))
        return true;
    /* 127.0.0.0/8, dotted quad */
    if (len < 7 || len > 15 || strncmp(host, "127.", 4) != 0)
        return false;
    int dots = 0;
    for (size_t i = 0; i < len; i++) {
        if (host[i] == '.')
            dots++;
        else if (host[i] < '0' || host[i] > '9')
            return false;
    }
    return dots == 3;
}

/* The host part of "host:port", "[v6]:port" or "host". */
static void split_host(const char *hostport, const char **host, size_t *len)
{
    *host = hostport;
    if (hostport[0] == '[') {
        const char *end = strchr(hostport, ']');
        *len = end ? (size_t)(end - hostport + 1) : strlen(hostport);
        return;
    }
    const char *colon = strrchr(hostport, ':');
    /* More than one colon and no brackets: a bare IPv6 address. */
    if (colon && strchr(hostport, ':') == colon)
        *len = (size_t)(colon - hostport);
    else
        *len = strlen(hostport);
}

bool cn_admin_listen_is_loopback(const char *listen)
{
    const char *host;
    size_t len;
    split_host(listen, &host, &len);
    return is_loopback_host(host, len);
}

/* Returns true when the request may go on; otherwise replies. */
static bool request_allowed(cn_admin *a, nng_aio *aio, nng_http_req *req)
{
    cn_metric_inc(a->requests);
    if (!cn_admin_authorized(a, aio, req))
        return false;
    if (!a->loopback_only)
        return true;
    const char *hostport = nng_http_req_get_header(req, "Host");
    if (!hostport)
        return true; /* HTTP/1.0 clients; they reached a loopback socket */
    const char *host;
    size_t len;
    split_host(hostport, &host, &len);
    if (is_loopback_host(host, len))
        return true;
    cn_admin_reply_error(a, aio, 403, "Host \"%s\" is not a loopback name; this admin API serves local clients only",
                         hostport);
    return false;
}

static cn_admin *admin_of(nng_aio *aio, nng_http_req **req)
{
    *req = nng_aio_get_input(aio, 0);
    return nng_http_handler_get_data(nng_aio_get_input(aio, 1));
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

static void handle_healthz(nng_aio *aio)
{
    nng_http_req *req;
    cn_admin *a = admin_of(aio, &req);
    if (!request_allowed(a, aio, req))
        return;
    cn_admin_reply(a, aio, 200, "text/plain; charset=utf-8", "ok\n", 3, NULL, NULL);
}

/* Ready unless shutting down or some exporter is dropping data past its retry budget. */
static void handle_readyz(nng_aio *aio)
{
    nng_http_req *req;
    cn_admin *a = admin_of(aio, &req);
    if (!request_allowed(a, aio, req))
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
    cn_admin_reply(a, aio, ready ? 200 : 503, "text/plain; charset=utf-8", body, used, NULL, NULL);
}

static void handle_metrics(nng_aio *aio)
{
    nng_http_req *req;
    cn_admin *a = admin_of(aio, &req);
    if (!request_allowed(a, aio, req))
        return;
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    if (!out) {
        cn_admin_reply_error(a, aio, 500, "out of memory");
        return;
    }
    cn_metrics_write_prometheus(out);
    bool failed = ferror(out) != 0;
    fclose(out);
    if (failed || !buf)
        cn_admin_reply_error(a, aio, 500, "out of memory");
    else
        cn_admin_reply(a, aio, 200, "text/plain; version=0.0.4; charset=utf-8", buf, len, NULL, NULL);
    free(buf);
}

static void handle_tasks(nng_aio *aio)
{
    nng_http_req *req;
    cn_admin *a = admin_of(aio, &req);
    if (!request_allowed(a, aio, req))
        return;
    char path[1024];
    const char *query;
    if (split_uri(nng_http_req_get_uri(req), path, sizeof path, &query) != 0) {
        cn_admin_reply_error(a, aio, 400, "malformed or too long request path");
        return;
    }
    static const char prefix[] = "/api/v1/tasks";
    cn_admin_tasks(a, aio, req, path + sizeof prefix - 1, query);
}

static void handle_ui(nng_aio *aio)
{
    nng_http_req *req;
    cn_admin *a = admin_of(aio, &req);
    if (!request_allowed(a, aio, req))
        return;
    char path[256];
    const char *query;
    if (split_uri(nng_http_req_get_uri(req), path, sizeof path, &query) != 0) {
        cn_admin_reply_error(a, aio, 404, "not found");
        return;
    }
    const char *m = nng_http_req_get_method(req);
    if (strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0) {
        cn_admin_reply(a, aio, 405, "text/plain", "method not allowed\n", 19, "Allow", "GET");
        return;
    }
    if (strcmp(path, "/ui") == 0 || strcmp(path, "/ui/") == 0 || strcmp(path, "/ui/index.html") == 0)
        cn_admin_reply(a, aio, 200, "text/html; charset=utf-8", cn_ui_index_html, cn_ui_index_html_len, NULL, NULL);
    else if (strcmp(path, "/ui/app.js") == 0)
        cn_admin_reply(a, aio, 200, "text/javascript; charset=utf-8", cn_ui_app_js, cn_ui_app_js_len, NULL, NULL);
    else if (strcmp(path, "/ui/style.css") == 0)
        cn_admin_reply(a, aio, 200, "text/css; charset=utf-8", cn_ui_style_css, cn_ui_style_css_len, NULL, NULL);
    else
        cn_admin_reply(a, aio, 404, "text/plain", "not found\n", 10, NULL, NULL);
}

static void handle_root(nng_aio *aio)
{
    nng_http_req *req;
    cn_admin *a = admin_of(aio, &req);
    if (!request_allowed(a, aio, req))
        return;
    static const char body[] = "canopy admin API: /ui /healthz /readyz /metrics /api/v1/tasks\n";
    cn_admin_reply(a, aio, 302, "text/plain; charset=utf-8", body, sizeof body - 1, "Location", "/ui/");
}

/* ---- start and stop ----------------------------------------------------------- */

static int add_handler(cn_admin *a, const char *path, void (*cb)(nng_aio *), bool tree, size_t body_max)
{
    nng_http_handler *h;
    int rv = nng_http_handler_alloc(&h, path, cb);
    if (rv != 0)
        return rv;
    /* Any method: the handlers check it and answer 405 with an Allow header. */
    if ((rv = nng_http_handler_set_method(h, NULL)) != 0 || (tree && (rv = nng_http_handler_set_tree(h)) != 0) ||
        (rv = nng_http_handler_collect_body(h, body_max > 0, body_max)) != 0 ||
        (rv = nng_http_handler_set_data(h, a, NULL)) != 0 || (rv = nng_http_server_add_handler(a->server, h)) != 0) {
        nng_http_handler_free(h);
        return rv;
    }
    return 0;
}

static void admin_free(cn_admin *a)
{
    if (!a)
        return;
    if (a->server) {
        nng_http_server_stop(a->server);
        nng_http_server_release(a->server);
    }
    nng_url_free(a->url);
    cn_admin_auth_free(a->auth);
    cn_profiles_shared_release(a->profiles);
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
    char url[512];
    snprintf(url, sizeof url, "%s://%s", cn_admin_auth_scheme(a->auth), listen);
    int rv = nng_url_parse(&a->url, url);
    if (rv != 0) {
        cn_error("admin", "service.telemetry.http.listen: \"%s\" is not host:port (%s)", listen, nng_strerror(rv));
        admin_free(a);
        return -1;
    }
    if (!(a->profiles = cn_profiles_shared_acquire(NULL))) {
        admin_free(a);
        return -1;
    }
    if ((rv = nng_http_server_hold(&a->server, a->url)) != 0 || (rv = cn_admin_auth_listen(a->auth, a->server)) != 0 ||
        (rv = add_handler(a, "/", handle_root, false, 0)) != 0 ||
        (rv = add_handler(a, "/healthz", handle_healthz, false, 0)) != 0 ||
        (rv = add_handler(a, "/readyz", handle_readyz, false, 0)) != 0 ||
        (rv = add_handler(a, "/metrics", handle_metrics, false, 0)) != 0 ||
        (rv = add_handler(a, "/api/v1/tasks", handle_tasks, true, 64 * 1024)) != 0 ||
        (rv = add_handler(a, "/ui", handle_ui, true, 0)) != 0) {
        cn_error("admin", "cannot set up the admin API on %s: %s", listen, nng_strerror(rv));
        admin_free(a);
        return -1;
    }
    if ((rv = nng_http_server_start(a->server)) != 0) {
        /* Collecting matters more than the admin API: a busy port (a second collector on the
         * host, a test) is reported loudly, and /readyz stays unreachable, but data still flows. */
        cn_error("admin", "cannot listen on %s: %s; the admin API, /metrics and the web UI are NOT served "
                          "(set service.telemetry.http.listen to a free host:port)",
                 listen, nng_strerror(rv));
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
