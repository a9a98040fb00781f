/*
 * TLS for the admin API's HTTP server (admin_tls.c, on mbedTLS). Private to
 * admin_http.c and admin_auth.c.
 */
#ifndef CANOPY_ADMIN_TLS_H
#define CANOPY_ADMIN_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct cn_http_tls cn_http_tls;
typedef struct cn_http_tls_conn cn_http_tls_conn;

/* The server's certificate and key, from PEM text. NULL with a reason in err. */
cn_http_tls *cn_http_tls_new(const char *cert_pem, const char *key_pem, char *err, size_t err_len);
void cn_http_tls_free(cn_http_tls *t);

/* A TLS connection over *fd (which must stay where it is: see cn_http_tls_rebind). NULL when out of memory. */
cn_http_tls_conn *cn_http_tls_accept(const cn_http_tls *t, int *fd);
/* The connection's descriptor moved to *fd. */
void cn_http_tls_rebind(cn_http_tls_conn *c, int *fd);
/* As recv/send: bytes, 0 at the end, -1 with errno (EAGAIN: wait; *want_write: for POLLOUT, not POLLIN). */
ssize_t cn_http_tls_recv(cn_http_tls_conn *c, void *buf, size_t len, bool *want_write);
ssize_t cn_http_tls_send(cn_http_tls_conn *c, const void *buf, size_t len, bool *want_write);
void cn_http_tls_close(cn_http_tls_conn *c);

#endif
