/*
 * The admin API's HTTP/1.1 server: its own thread, its own listening socket,
 * one file descriptor kept in reserve. See admin_http.c for why it is not
 * nng's HTTP server.
 */
#ifndef CANOPY_ADMIN_HTTP_H
#define CANOPY_ADMIN_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "admin_tls.h"

typedef struct cn_http_server cn_http_server;
/* One request and its response; valid during the handler call only. */
typedef struct cn_http_exchange cn_http_exchange;
typedef void (*cn_http_handler)(cn_http_exchange *x, void *arg);

typedef struct cn_http_route {
    const char *path;
    bool tree;       /* also serves path/... */
    size_t body_max; /* largest request body taken (413 beyond); 0: none */
    cn_http_handler cb;
} cn_http_route;

/* cn_http_server_start's result when `listen` is not host:port. */
#define CN_HTTP_BAD_ADDRESS (-2)

/*
 * Listens on `listen` ("host:port", "[v6]:port") and serves `routes` (kept
 * by reference) on a new thread; `arg` goes to every handler. With tls (kept
 * by reference; NULL: plain HTTP) every connection is HTTPS. Returns 0, or
 * CN_HTTP_BAD_ADDRESS, or -1 (e.g. the port is in use), with a reason in err.
 */
int cn_http_server_start(cn_http_server **out, const char *listen, const cn_http_tls *tls,
                         const cn_http_route *routes, size_t n_routes, void *arg, char *err, size_t err_len);
/* The port it listens on (what ":0" picked); -1 on error. */
int cn_http_server_port(const cn_http_server *s);
/* Stops the thread, closes every connection and frees the server. NULL is fine. */
void cn_http_server_stop(cn_http_server *s);

const char *cn_http_method(const cn_http_exchange *x);
/* The request target as sent: path and query, not decoded. */
const char *cn_http_uri(const cn_http_exchange *x);
/* The value of header `name` (any case), NULL if absent. */
const char *cn_http_header(const cn_http_exchange *x, const char *name);
void cn_http_body(const cn_http_exchange *x, const void **data, size_t *len);
/*
 * Answers the request (a copy of body is taken). One extra header may be
 * given. Returns -1 when out of memory; the server then answers 500.
 */
int cn_http_respond(cn_http_exchange *x, uint16_t status, const char *content_type, const void *body, size_t len,
                    const char *extra_header, const char *extra_value);

#endif
