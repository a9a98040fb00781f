/* Private to the admin HTTP API (admin.c, admin_tasks.c). */
#ifndef CANOPY_ADMIN_INTERNAL_H
#define CANOPY_ADMIN_INTERNAL_H

#include <jansson.h>

#include "admin_http.h"
#include "service.h"

typedef struct cn_admin {
    cn_service *svc;
    cn_http_server *server;
    bool loopback_only;
    struct cn_admin_auth *auth; /* TLS and the bearer token (admin_auth.c); never NULL once started */
    cn_metric *requests, *client_errors, *server_errors;
} cn_admin;

/* Answers the request with a copy of body; counts 4xx and 5xx. */
void cn_admin_reply(cn_admin *a, cn_http_exchange *x, uint16_t status, const char *content_type, const void *body,
                    size_t len, const char *extra_header, const char *extra_value);
/* Replies with the JSON text of body (reference stolen). */
void cn_admin_reply_json(cn_admin *a, cn_http_exchange *x, uint16_t status, json_t *body);
/* {"error": "..."} */
void cn_admin_reply_error(cn_admin *a, cn_http_exchange *x, uint16_t status, const char *fmt, ...) CN_PRINTF(4, 5);

/* /api/v1/tasks[/...]: rest is what follows "/api/v1/tasks" in the path, query may be NULL. */
void cn_admin_tasks(cn_admin *a, cn_http_exchange *x, const char *rest, const char *query);

/* ---- admin_auth.c: TLS on the listener, the bearer token on requests ---- */
typedef struct cn_admin_auth cn_admin_auth;
/* Reads the token and loads the certificate. NULL after logging why. */
cn_admin_auth *cn_admin_auth_new(const cn_http_settings *http);
void cn_admin_auth_free(cn_admin_auth *auth);
/* "https" with TLS, else "http". */
const char *cn_admin_auth_scheme(const cn_admin_auth *auth);
/* Puts the TLS config on the server before it starts. Returns an nng error. */
const cn_http_tls *cn_admin_auth_tls(const cn_admin_auth *auth);
/* True when the request may go on (the right bearer token, or an open path);
 * otherwise replies 401 and counts it. */
bool cn_admin_authorized(cn_admin *a, cn_http_exchange *x);
bool cn_admin_auth_secure(const cn_admin_auth *auth);
/* Whether "host:port" names a loopback host. */
bool cn_admin_listen_is_loopback(const char *listen);

/* Decodes %XX in place; returns -1 on a malformed escape or a NUL. */
int cn_admin_url_decode(char *s);

#endif
