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

/* Decodes %XX in place; returns -1 on a malformed escape or a NUL. */
int cn_admin_url_decode(char *s);

#endif
