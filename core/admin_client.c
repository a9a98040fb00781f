/*
 * `canopy task create|list|cancel`: a command line over the admin API, with
 * nng's HTTP client. The collector does the validation; this only shapes the
 * request and prints the answer.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <nng/nng.h>
#include <nng/supplemental/http/http.h>
#include <nng/supplemental/tls/tls.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "canopy/common.h"
#include "canopy/config.h"

#define DEFAULT_ADMIN "http://127.0.0.1:8888"
#define CLIENT_TIMEOUT_MS 10000
/* The options every task command takes after --admin (help text). */
#define ADMIN_AUTH_HELP                                                                                          \
    "      --token-file FILE  bearer token for an admin API that requires one (token_file on the collector)\n"     \
    "      --ca-file FILE     CA (PEM) an https:// admin API's certificate must chain to\n"

/* Where the admin API is and how to prove who we are. */
typedef struct admin_target {
    const char *url;
    const char *token_file; /* NULL: no Authorization header */
    const char *ca_file;    /* NULL: the system's default CAs for https:// */
} admin_target;

enum { OPT_TOKEN_FILE = 900, OPT_CA_FILE };

/* Authorization and TLS for one request. Returns 0, or -1 after printing why. */
static int apply_target(const admin_target *admin, const nng_url *u, nng_http_client *cli, nng_http_req *req)
{
    if (admin->token_file) {
        size_t len;
        char *token = cn_admin_read_token(admin->token_file, &len);
        if (!token) {
            fprintf(stderr, "canopy task: --token-file %s: %s\n", admin->token_file,
                    errno == EINVAL ? "empty, or holds a NUL byte" : strerror(errno));
            return -1;
        }
        char header[4200];
        snprintf(header, sizeof header, "Bearer %s", token);
        memset(token, 0, len);
        free(token);
        int rv = nng_http_req_set_header(req, "Authorization", header);
        memset(header, 0, sizeof header);
        if (rv != 0) {
            fprintf(stderr, "canopy task: %s\n", nng_strerror(rv));
            return -1;
        }
    }
    if (admin->ca_file && strcmp(u->u_scheme, "https") == 0) {
        nng_tls_config *tls = NULL;
        int rv;
        if ((rv = nng_tls_config_alloc(&tls, NNG_TLS_MODE_CLIENT)) != 0 ||
            (rv = nng_tls_config_ca_file(tls, admin->ca_file)) != 0 ||
            (rv = nng_tls_config_server_name(tls, u->u_hostname)) != 0 ||
            (rv = nng_tls_config_auth_mode(tls, NNG_TLS_AUTH_MODE_REQUIRED)) != 0 ||
            (rv = nng_http_client_set_tls(cli, tls)) != 0) {
            fprintf(stderr, "canopy task: --ca-file %s: %s\n", admin->ca_file, nng_strerror(rv));
            if (tls)
                nng_tls_config_free(tls);
            return -1;
        }
        nng_tls_config_free(tls); /* the client holds its own reference */
    }
    return 0;
}

typedef struct http_reply {
    uint16_t status;
    char *body; /* NUL-terminated */
    size_t len;
} http_reply;

/* One request to the admin API. Returns 0 (reply filled), or -1 after printing why. */
static int http_call(const admin_target *admin, const char *method, const char *path, const char *json_body,
                     http_reply *out)
{
    char url[2048];
    const char *slash = admin->url[0] && admin->url[strlen(admin->url) - 1] == '/' ? "" : "/";
    snprintf(url, sizeof url, "%s%s%s", admin->url, slash, path[0] == '/' ? path + 1 : path);
    nng_url *u = NULL;
    nng_http_client *cli = NULL;
    nng_http_req *req = NULL;
    nng_http_res *res = NULL;
    nng_aio *aio = NULL;
    int rv, rc = -1;
    memset(out, 0, sizeof *out);
    if ((rv = nng_url_parse(&u, url)) != 0) {
        fprintf(stderr, "canopy task: bad admin URL %s: %s\n", url, nng_strerror(rv));
        return -1;
    }
    if ((rv = nng_http_client_alloc(&cli, u)) != 0 || (rv = nng_http_req_alloc(&req, u)) != 0 ||
        (rv = nng_http_res_alloc(&res)) != 0 || (rv = nng_aio_alloc(&aio, NULL, NULL)) != 0 ||
        (rv = nng_http_req_set_method(req, method)) != 0 ||
        (json_body && ((rv = nng_http_req_set_header(req, "Content-Type", "application/json")) != 0 ||
                       (rv = nng_http_req_copy_data(req, json_body, strlen(json_body))) != 0))) {
        fprintf(stderr, "canopy task: %s\n", nng_strerror(rv));
        goto out;
    }
    if (apply_target(admin, u, cli, req) != 0)
        goto out;
    nng_aio_set_timeout(aio, CLIENT_TIMEOUT_MS);
    nng_http_client_transact(cli, req, res, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio)) != 0) {
        fprintf(stderr, "canopy task: cannot reach the admin API at %s: %s\n", admin->url, nng_strerror(rv));
        goto out;
    }
    void *data;
    size_t len;
    nng_http_res_get_data(res, &data, &len);
    if (!(out->body = malloc(len + 1))) {
        fprintf(stderr, "canopy task: out of memory\n");
        goto out;
    }
    if (len)
        memcpy(out->body, data, len);
    out->body[len] = '\0';
    out->len = len;
    out->status = nng_http_res_get_status(res);
    rc = 0;
out:
    nng_aio_free(aio);
    if (res)
        nng_http_res_free(res);
    if (req)
        nng_http_req_free(req);
    if (cli)
        nng_http_client_free(cli);
    nng_url_free(u);
    return rc;
}

/* Prints the API's {"error": ...} (or the raw body) for a failed call; returns 1. */
static int report_error(const http_reply *r)
{
    json_t *j = json_loadb(r->body, r->len, 0, NULL);
    const char *msg = json_string_value(json_object_get(j, "error"));
    fprintf(stderr, "canopy task: HTTP %u: %s\n", r->status, msg ? msg : r->body);
    json_decref(j);
    return 1;
}

static int parse_common(int argc, char **argv, const char *help, const struct option *extra, const char *shortopts,
                        int (*on_opt)(int ch, const char *arg, void *ctx), void *ctx, admin_target *admin, int *rc)
{
    struct option longopts[16];
    size_t n = 0;
    for (const struct option *o = extra; o && o->name && n < 11; o++) /* + 4 common + the end */
        longopts[n++] = *o;
    longopts[n++] = (struct option){"admin", required_argument, NULL, 'a'};
    longopts[n++] = (struct option){"token-file", required_argument, NULL, OPT_TOKEN_FILE};
    longopts[n++] = (struct option){"ca-file", required_argument, NULL, OPT_CA_FILE};
    longopts[n++] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[n] = (struct option){NULL, 0, NULL, 0};
    char opts[64];
    snprintf(opts, sizeof opts, "%sa:h", shortopts);
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, opts, longopts, NULL)) != -1) {
        if (ch == 'h') {
            fputs(help, stdout);
            *rc = 0;
            return -1;
        }
        if (ch == 'a' || ch == OPT_TOKEN_FILE || ch == OPT_CA_FILE) {
            *(ch == 'a' ? &admin->url : ch == OPT_TOKEN_FILE ? &admin->token_file : &admin->ca_file) = optarg;
            continue;
        }
        if (ch == '?' || !on_opt || on_opt(ch, optarg, ctx) != 0) {
            fprintf(stderr, "Run 'canopy task %s --help' for usage.\n", argv[0]);
            *rc = 2;
            return -1;
        }
    }
    return 0;
}

/* ---- create ------------------------------------------------------------------- */

typedef struct create_opts {
    json_t *body;
    bool json_out;
} create_opts;

enum { OPT_ID = 1000, OPT_JSON, OPT_CONTINUOUS, OPT_WINDOW };

static int create_opt(int ch, const char *arg, void *ctx)
{
    create_opts *c = ctx;
    static const char *const keys[] = {[0] = "service", [1] = "endpoint", [2] = "duration",
                                       [3] = "min_duration_threshold", [4] = "dump_period"};
    int k = ch == 's' ? 0 : ch == 'e' ? 1 : ch == 'd' ? 2 : ch == 'm' ? 3 : ch == 'p' ? 4 : -1;
    if (k >= 0)
        return json_object_set_new(c->body, keys[k], json_string(arg));
    if (ch == 'n') {
        int64_t v;
        if (cn_parse_int(arg, &v) != 0) {
            fprintf(stderr, "canopy task create: --max-sampling-count takes an integer\n");
            return -1;
        }
        return json_object_set_new(c->body, "max_sampling_count", json_integer(v));
    }
    if (ch == OPT_ID)
        return json_object_set_new(c->body, "id", json_string(arg));
    if (ch == OPT_CONTINUOUS)
        return json_object_set_new(c->body, "continuous", json_true());
    if (ch == OPT_WINDOW) /* the admin API says whether it goes with --continuous, as for tasks.static */
        return json_object_set_new(c->body, "window", json_string(arg));
    if (ch == OPT_JSON) {
        c->json_out = true;
        return 0;
    }
    return -1;
}

static int cmd_create(int argc, char **argv)
{
    static const char help[] =
        "Usage: canopy task create --service NAME --endpoint PATH [options]\n"
        "\n"
        "Creates a profiling task through the collector's admin API and prints its id.\n"
        "Agents of the service pick it up at their next command query.\n"
        "\n"
        "  -s, --service NAME              service whose agents profile (CANOPY_SERVICE); required\n"
        "  -e, --endpoint PATH             endpoint to profile (a WSGI request's PATH_INFO); required\n"
        "  -d, --duration DUR              how long the task runs (default 10m)\n"
        "  -m, --min-duration-threshold DUR  sample a request only once it ran this long (default 0ms)\n"
        "  -p, --dump-period DUR           time between samples in sampling mode (default 10ms)\n"
        "  -n, --max-sampling-count N      requests profiled per agent instance (default 5);\n"
        "                                  with --continuous, per agent instance and window\n"
        "      --continuous                the task never ends (until cancelled); not with --duration.\n"
        "                                  Only canopy agents run it, never SkyWalking agents or the OAP\n"
        "      --window DUR                continuous tasks: the period max-sampling-count applies to\n"
        "                                  (default 10s)\n"
        "      --id ID                     use this id instead of a generated one\n"
        "      --json                      print the created task as JSON\n"
        "      --admin URL                 the admin API (default " DEFAULT_ADMIN ")\n"
        ADMIN_AUTH_HELP
        "  -h, --help                      this help\n"
        "\n"
        "Durations: 500ms, 10s, 5m, 1h.\n";
    static const struct option extra[] = {{"service", required_argument, NULL, 's'},
                                          {"endpoint", required_argument, NULL, 'e'},
                                          {"duration", required_argument, NULL, 'd'},
                                          {"min-duration-threshold", required_argument, NULL, 'm'},
                                          {"dump-period", required_argument, NULL, 'p'},
                                          {"max-sampling-count", required_argument, NULL, 'n'},
                                          {"id", required_argument, NULL, OPT_ID},
                                          {"continuous", no_argument, NULL, OPT_CONTINUOUS},
                                          {"window", required_argument, NULL, OPT_WINDOW},
                                          {"json", no_argument, NULL, OPT_JSON},
                                          {NULL, 0, NULL, 0}};
    create_opts c = {.body = json_object()};
    admin_target admin = {.url = DEFAULT_ADMIN};
    int rc = 0;
    if (!c.body) {
        fprintf(stderr, "canopy task create: out of memory\n");
        return 1;
    }
    if (parse_common(argc, argv, help, extra, "s:e:d:m:p:n:", create_opt, &c, &admin, &rc) != 0) {
        json_decref(c.body);
        return rc;
    }
    if (optind < argc || !json_object_get(c.body, "service") || !json_object_get(c.body, "endpoint")) {
        fprintf(stderr, optind < argc ? "canopy task create: unexpected argument '%s'\n"
                                      : "canopy task create: --service and --endpoint are required%s\n",
                optind < argc ? argv[optind] : "");
        json_decref(c.body);
        return 2;
    }
    char *text = json_dumps(c.body, JSON_COMPACT);
    json_decref(c.body);
    http_reply r;
    if (!text || http_call(&admin, "POST", "/api/v1/tasks", text, &r) != 0) {
        free(text);
        return 1;
    }
    free(text);
    if (r.status != 201) {
        rc = report_error(&r);
    } else {
        json_t *j = json_loadb(r.body, r.len, 0, NULL);
        const char *id = json_string_value(json_object_get(j, "id"));
        if (c.json_out)
            printf("%s\n", r.body);
        else if (id)
            printf("%s\n", id);
        else
            rc = report_error(&r);
        json_decref(j);
    }
    free(r.body);
    return rc;
}

/* ---- list --------------------------------------------------------------------- */

static int list_opt(int ch, const char *arg, void *ctx)
{
    (void)arg;
    if (ch != OPT_JSON)
        return -1;
    *(bool *)ctx = true;
    return 0;
}

static void format_ms(int64_t ms, char *buf, size_t len)
{
    if (ms <= 0)
        snprintf(buf, len, "-");
    else if (ms < 60000)
        snprintf(buf, len, "%llds", (long long)(ms / 1000));
    else if (ms < 3600000)
        snprintf(buf, len, "%lldm%02llds", (long long)(ms / 60000), (long long)(ms / 1000 % 60));
    else
        snprintf(buf, len, "%lldh%02lldm", (long long)(ms / 3600000), (long long)(ms / 60000 % 60));
}

static int cmd_list(int argc, char **argv)
{
    static const char help[] =
        "Usage: canopy task list [--json] [--admin URL]\n"
        "\n"
        "Lists the collector's profiling tasks: status, agents and snapshots received.\n"
        "\n"
        "      --json        print the API's JSON as is\n"
        "      --admin URL   the admin API (default " DEFAULT_ADMIN ")\n"
        ADMIN_AUTH_HELP
        "  -h, --help        this help\n";
    static const struct option extra[] = {{"json", no_argument, NULL, OPT_JSON}, {NULL, 0, NULL, 0}};
    bool json_out = false;
    admin_target admin = {.url = DEFAULT_ADMIN};
    int rc = 0;
    if (parse_common(argc, argv, help, extra, "", list_opt, &json_out, &admin, &rc) != 0)
        return rc;
    if (optind < argc) {
        fprintf(stderr, "canopy task list: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    http_reply r;
    if (http_call(&admin, "GET", "/api/v1/tasks", NULL, &r) != 0)
        return 1;
    if (r.status != 200) {
        rc = report_error(&r);
        free(r.body);
        return rc;
    }
    if (json_out) {
        printf("%s\n", r.body);
        free(r.body);
        return 0;
    }
    json_t *j = json_loadb(r.body, r.len, 0, NULL);
    json_t *tasks = json_object_get(j, "tasks");
    if (!json_is_array(tasks)) {
        rc = report_error(&r);
    } else {
        printf("%-24s %-8s %-7s %-12s %-20s %7s %10s %10s\n", "ID", "STATUS", "SOURCE", "SERVICE", "ENDPOINT",
               "AGENTS", "SNAPSHOTS", "REMAINING");
        size_t i;
        json_t *t;
        json_array_foreach(tasks, i, t)
        {
            const char *svc = json_string_value(json_object_get(t, "service"));
            const char *ep = json_string_value(json_object_get(t, "endpoint"));
            char left[32];
            json_t *rem = json_object_get(t, "remaining_ms");
            if (json_is_true(json_object_get(t, "continuous")) && json_is_null(rem))
                snprintf(left, sizeof left, "continuous"); /* it has no end to count down to */
            else
                format_ms(json_integer_value(rem), left, sizeof left);
            printf("%-24s %-8s %-7s %-12s %-20s %7lld %10lld %10s\n",
                   json_string_value(json_object_get(t, "id")), json_string_value(json_object_get(t, "status")),
                   json_string_value(json_object_get(t, "source")), svc ? svc : "-", ep ? ep : "-",
                   (long long)json_integer_value(json_object_get(t, "agents")),
                   (long long)json_integer_value(json_object_get(t, "snapshots")), left);
        }
    }
    json_decref(j);
    free(r.body);
    return rc;
}

/* ---- cancel ------------------------------------------------------------------- */

static int cmd_cancel(int argc, char **argv)
{
    static const char help[] =
        "Usage: canopy task cancel ID [--admin URL]\n"
        "\n"
        "Cancels a profiling task: it ends now, agents stop profiling it at their next\n"
        "command query, and exporters write its final profile.\n"
        "\n"
        "      --admin URL   the admin API (default " DEFAULT_ADMIN ")\n"
        ADMIN_AUTH_HELP
        "  -h, --help        this help\n";
    admin_target admin = {.url = DEFAULT_ADMIN};
    int rc = 0;
    if (parse_common(argc, argv, help, NULL, "", NULL, NULL, &admin, &rc) != 0)
        return rc;
    if (optind + 1 != argc) {
        fprintf(stderr, "canopy task cancel: exactly one task ID is expected\n");
        return 2;
    }
    const char *id = argv[optind];
    char path[1024];
    size_t used = (size_t)snprintf(path, sizeof path, "/api/v1/tasks/");
    for (const unsigned char *p = (const unsigned char *)id; *p && used + 4 < sizeof path; p++) {
        bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                     *p == '_' || *p == '.';
        used += plain ? (size_t)snprintf(path + used, sizeof path - used, "%c", *p)
                      : (size_t)snprintf(path + used, sizeof path - used, "%%%02X", *p);
    }
    http_reply r;
    if (http_call(&admin, "DELETE", path, NULL, &r) != 0)
        return 1;
    if (r.status != 200)
        rc = report_error(&r);
    else
        printf("cancelled %s\n", id);
    free(r.body);
    return rc;
}

int cn_task_command(int argc, char **argv)
{
    static const char usage[] =
        "Usage: canopy task <create|list|cancel> [options]\n"
        "\n"
        "Manages profiling tasks through a running collector's admin API\n"
        "(service.telemetry.http.listen, default " DEFAULT_ADMIN ").\n"
        "\n"
        "  create   create a task and print its id\n"
        "  list     list tasks with status, agents and snapshots\n"
        "  cancel   cancel a task\n"
        "\n"
        "Run 'canopy task <command> --help' for a command's options.\n";
    if (argc < 2) {
        fputs(usage, stderr);
        return 2;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 || strcmp(sub, "help") == 0) {
        fputs(usage, stdout);
        return 0;
    }
    if (strcmp(sub, "create") == 0)
        return cmd_create(argc - 1, argv + 1);
    if (strcmp(sub, "list") == 0)
        return cmd_list(argc - 1, argv + 1);
    if (strcmp(sub, "cancel") == 0)
        return cmd_cancel(argc - 1, argv + 1);
    fprintf(stderr, "canopy task: unknown command '%s'\n\n%s", sub, usage);
    return 2;
}
