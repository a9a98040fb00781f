/*
 * Who may use the admin API (service.telemetry.http): TLS on its listener and
 * a bearer token on every API call. The admin API creates and cancels
 * profiling tasks and hands out profiles of the code, so it follows the
 * receivers' rule: a listener other than loopback needs TLS (tls.cert_file,
 * tls.key_file) and a token (token_file, or token from ${env:...}), or an
 * explicit allow_insecure: true. `canopy validate` checks that rule and the
 * files, with FILE:LINE:COL.
 *
 * When a token is set it is required on every request except /healthz and
 * /readyz (load balancers and systemd probes carry no secrets), loopback or
 * not; a request without it gets 401 and is counted in
 * canopy_admin_unauthorized_total.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "admin_internal.h"

#include "pem.h"


static const char unauthorized_body[] = "{\"error\":\"missing or wrong bearer token\"}";

struct cn_admin_auth {
    char *token; /* NULL: no token required */
    size_t token_len;
    cn_metric *unauthorized;
    cn_http_tls *tls; /* NULL: plain HTTP */
};

/* service.telemetry.http's options, nested under telemetry by service.c; offsets into cn_http_settings. */
const cn_option cn_admin_http_options[] = {
    {CN_OPT_STR, "listen", "127.0.0.1:8888", 0,
     "host:port to serve on; loopback only unless allow_insecure is true."},
    {CN_OPT_BOOL, "allow_insecure", "false",
     offsetof(cn_http_settings, allow_insecure),
     "Serve the admin API on a non-loopback address (anyone who reaches it can create tasks and read "
     "profiles)."},
    {CN_OPT_MAP, "tls", NULL, offsetof(cn_http_settings, tls),
     "HTTPS for the admin API; a non-loopback listen needs it (and a token) unless allow_insecure.",
     .sub = (const cn_option[]){
         {CN_OPT_STR, "cert_file", NULL,
          offsetof(cn_http_settings, tls.cert_file) - offsetof(cn_http_settings, tls),
          "PEM certificate (chain) the admin API presents."},
         {CN_OPT_STR, "key_file", NULL,
          offsetof(cn_http_settings, tls.key_file) - offsetof(cn_http_settings, tls),
          "PEM private key of cert_file."},
         CN_OPT_END}},
    {CN_OPT_STR, "token", NULL, offsetof(cn_http_settings, token),
     "Bearer token every request but /healthz and /readyz must carry (Authorization: Bearer ...); "
     "write it as ${env:VAR}, not in the file. Alternative to token_file."},
    {CN_OPT_STR, "token_file", NULL, offsetof(cn_http_settings, token_file),
     "File holding the bearer token (one line), readable by the collector only."},
    CN_OPT_END};

char *cn_admin_read_token(const char *path, size_t *len)
{
    return cn_token_file_read(path, len);
}

static const cn_node *http_node(const cn_node *service, const char *key)
{
    const cn_node *http = cn_node_get(cn_node_get(service, "telemetry"), "http");
    return key ? cn_options_node(http, key) : http;
}

static void check_pem_file(cn_diag *d, const cn_node *at, const char *what, const char *path)
{
    char *pem = cn_pem_read(path, NULL);
    if (!pem)
        cn_diag_error(d, at, "service::telemetry::http::tls::%s: cannot read %s: %s", what, path, strerror(errno));
    else if (!strstr(pem, "-----BEGIN "))
        cn_diag_error(d, at, "service::telemetry::http::tls::%s: %s is not PEM", what, path);
    cn_pem_free_secret(pem);
}

void cn_admin_validate(const cn_http_settings *h, const cn_node *service, cn_diag *d)
{
    if (!h->listen || !h->listen[0])
        return;
    const cn_node *tls_node = cn_node_get(http_node(service, NULL), "tls");
    bool tls = h->tls.cert_file || h->tls.key_file;
    if (tls && (!h->tls.cert_file || !h->tls.key_file))
        cn_diag_error(d, tls_node, "service::telemetry::http::tls: cert_file and key_file go together");
    if (h->tls.cert_file)
        check_pem_file(d, cn_options_node(tls_node, "cert_file"), "cert_file", h->tls.cert_file);
    if (h->tls.key_file)
        check_pem_file(d, cn_options_node(tls_node, "key_file"), "key_file", h->tls.key_file);

    if (h->token && h->token_file)
        cn_diag_error(d, http_node(service, "token"), "service::telemetry::http: token and token_file are "
                                                      "alternatives; set one");
    else if (h->token && !h->token[0])
        cn_diag_error(d, http_node(service, "token"),
                      "service::telemetry::http::token is empty (is its environment variable set?)");
    bool token = h->token && h->token[0];
    if (h->token_file) {
        size_t len;
        char *t = cn_admin_read_token(h->token_file, &len);
        if (!t)
            cn_diag_error(d, http_node(service, "token_file"), "service::telemetry::http::token_file: %s: %s",
                          h->token_file, errno == EINVAL ? "empty, or holds a NUL byte" : strerror(errno));
        token = t != NULL;
        free(t);
    }
    if (!cn_admin_listen_is_loopback(h->listen) && !h->allow_insecure && !(tls && token))
        cn_diag_error(d, http_node(service, "listen"),
                      "service::telemetry::http::listen: %s is not a loopback address; the admin API creates "
                      "profiling tasks and serves profiles, so it needs tls (cert_file, key_file) and a token "
                      "(token_file, or token: ${env:...}), or allow_insecure: true",
                      h->listen);
}

/* The server's TLS, holding the certificate and key. NULL after logging why. */
static cn_http_tls *server_tls(const char *cert_file, const char *key_file)
{
    char *cert = cn_pem_read(cert_file, NULL);
    char *key = cert ? cn_pem_read(key_file, NULL) : NULL;
    cn_http_tls *tls = NULL;
    char err[256];
    if (!key)
        cn_error("admin", "tls: cannot read %s: %s", cert ? key_file : cert_file, strerror(errno));
    else if (!(tls = cn_http_tls_new(cert, key, err, sizeof err)))
        cn_error("admin", "tls: %s and %s: %s", cert_file, key_file, err);
    free(cert);
    cn_pem_free_secret(key);
    return tls;
}

void cn_admin_auth_free(cn_admin_auth *auth)
{
    if (!auth)
        return;
    if (auth->token)
        memset(auth->token, 0, auth->token_len);
    free(auth->token);
    cn_http_tls_free(auth->tls);
    free(auth);
}

cn_admin_auth *cn_admin_auth_new(const cn_http_settings *h)
{
    cn_admin_auth *auth = calloc(1, sizeof *auth);
    if (!auth) {
        cn_error("admin", "out of memory");
        return NULL;
    }
    auth->unauthorized = cn_counter("canopy_admin_unauthorized_total",
                                    "Admin API requests refused with 401 (no or wrong bearer token).", "");
    if (h->token_file && !(auth->token = cn_admin_read_token(h->token_file, &auth->token_len))) {
        cn_error("admin", "token_file %s: %s", h->token_file,
                 errno == EINVAL ? "empty, or holds a NUL byte" : strerror(errno));
        goto fail;
    }
    if (h->token && h->token[0]) {
        auth->token_len = strlen(h->token);
        if (!(auth->token = strdup(h->token))) {
            cn_error("admin", "out of memory");
            goto fail;
        }
    }
    if (h->tls.cert_file && h->tls.key_file && !(auth->tls = server_tls(h->tls.cert_file, h->tls.key_file)))
        goto fail;
    return auth;
fail:
    cn_admin_auth_free(auth);
    return NULL;
}

const char *cn_admin_auth_scheme(const cn_admin_auth *auth) { return auth->tls ? "https" : "http"; }

/* TLS and a token: safe to serve beyond loopback. */
bool cn_admin_auth_secure(const cn_admin_auth *auth) { return auth->tls && auth->token; }

const cn_http_tls *cn_admin_auth_tls(const cn_admin_auth *auth) { return auth->tls; }

/* Compares in time that depends only on the lengths, so the answer's timing
 * does not tell an attacker how much of a guess was right. */
static bool same_secret(const char *a, size_t a_len, const char *b, size_t b_len)
{
    unsigned char diff = a_len != b_len;
    for (size_t i = 0; i < a_len && i < b_len; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

/* /healthz and /readyz, with or without a query. */
static bool is_open_path(const char *uri)
{
    static const char *const open[] = {"/healthz", "/readyz"};
    for (size_t i = 0; i < sizeof open / sizeof open[0]; i++) {
        size_t n = strlen(open[i]);
        if (strncmp(uri, open[i], n) == 0 && (uri[n] == '\0' || uri[n] == '?'))
            return true;
    }
    return false;
}

bool cn_admin_authorized(cn_admin *a, cn_http_exchange *x)
{
    cn_admin_auth *auth = a->auth;
    if (!auth->token || is_open_path(cn_http_uri(x)))
        return true;
    const char *h = cn_http_header(x, "Authorization");
    static const char bearer[] = "Bearer ";
    if (h && strncasecmp(h, bearer, sizeof bearer - 1) == 0) {
        const char *given = h + sizeof bearer - 1;
        if (same_secret(given, strlen(given), auth->token, auth->token_len))
            return true;
    }
    cn_metric_inc(auth->unauthorized);
    cn_admin_reply(a, x, 401, "application/json", unauthorized_body, sizeof unauthorized_body - 1,
                   "WWW-Authenticate", "Bearer realm=\"canopy\"");
    return false;
}
