/*
 * TLS for the admin API's own HTTP server (admin_http.c), on mbedTLS, which
 * nng's TLS transport already brings in. The server's sockets are
 * non-blocking: mbedTLS reports WANT_READ/WANT_WRITE, which map to "try again
 * when poll says so", and the handshake simply happens inside the first
 * reads.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "admin_tls.h"

struct cn_http_tls {
    mbedtls_ssl_config conf;
    mbedtls_x509_crt cert;
    mbedtls_pk_context key;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context rng;
};

void cn_http_tls_free(cn_http_tls *t)
{
    if (!t)
        return;
    mbedtls_ssl_config_free(&t->conf);
    mbedtls_x509_crt_free(&t->cert);
    mbedtls_pk_free(&t->key);
    mbedtls_ctr_drbg_free(&t->rng);
    mbedtls_entropy_free(&t->entropy);
    free(t);
}

cn_http_tls *cn_http_tls_new(const char *cert_pem, const char *key_pem, char *err, size_t err_len)
{
    cn_http_tls *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    mbedtls_ssl_config_init(&t->conf);
    mbedtls_x509_crt_init(&t->cert);
    mbedtls_pk_init(&t->key);
    mbedtls_entropy_init(&t->entropy);
    mbedtls_ctr_drbg_init(&t->rng);
    static const char pers[] = "canopy-admin";
    const char *step = "seed the random generator";
    /* The PEM parsers want the terminating NUL counted. */
    int rc = mbedtls_ctr_drbg_seed(&t->rng, mbedtls_entropy_func, &t->entropy, (const unsigned char *)pers,
                                   sizeof pers - 1);
    if (rc == 0) {
        step = "parse tls.cert_file";
        rc = mbedtls_x509_crt_parse(&t->cert, (const unsigned char *)cert_pem, strlen(cert_pem) + 1);
    }
    if (rc == 0) {
        step = "parse tls.key_file";
        rc = mbedtls_pk_parse_key(&t->key, (const unsigned char *)key_pem, strlen(key_pem) + 1, NULL, 0);
    }
    if (rc == 0) {
        step = "set up TLS";
        rc = mbedtls_ssl_config_defaults(&t->conf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                         MBEDTLS_SSL_PRESET_DEFAULT);
    }
    if (rc == 0) {
        /* Nothing older than TLS 1.2; mbedTLS 2.28 (Debian 12) stops at 1.2. */
        mbedtls_ssl_conf_min_version(&t->conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
        mbedtls_ssl_conf_rng(&t->conf, mbedtls_ctr_drbg_random, &t->rng);
        step = "use tls.cert_file with tls.key_file (do they match?)";
        rc = mbedtls_ssl_conf_own_cert(&t->conf, &t->cert, &t->key);
    }
    if (rc != 0) {
        char why[160];
        mbedtls_strerror(rc, why, sizeof why);
        snprintf(err, err_len, "cannot %s: %s", step, why);
        cn_http_tls_free(t);
        return NULL;
    }
    return t;
}

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    ssize_t n = send(*(int *)ctx, buf, len, MSG_NOSIGNAL);
    if (n >= 0)
        return (int)n;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? MBEDTLS_ERR_SSL_WANT_WRITE
                                                                     : MBEDTLS_ERR_NET_SEND_FAILED;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    ssize_t n = recv(*(int *)ctx, buf, len, 0);
    if (n > 0)
        return (int)n;
    if (n == 0)
        return MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? MBEDTLS_ERR_SSL_WANT_READ
                                                                     : MBEDTLS_ERR_NET_RECV_FAILED;
}

cn_http_tls_conn *cn_http_tls_accept(const cn_http_tls *t, int *fd)
{
    mbedtls_ssl_context *ssl = calloc(1, sizeof *ssl);
    if (!ssl)
        return NULL;
    mbedtls_ssl_init(ssl);
    if (mbedtls_ssl_setup(ssl, &t->conf) != 0) {
        mbedtls_ssl_free(ssl);
        free(ssl);
        return NULL;
    }
    mbedtls_ssl_set_bio(ssl, fd, bio_send, bio_recv, NULL);
    return (cn_http_tls_conn *)ssl;
}

void cn_http_tls_rebind(cn_http_tls_conn *c, int *fd)
{
    mbedtls_ssl_set_bio((mbedtls_ssl_context *)c, fd, bio_send, bio_recv, NULL);
}

/* mbedTLS's result as recv/send would give it: bytes, 0 at the end, or -1 with errno (EAGAIN to wait). */
static ssize_t as_syscall(int rc, bool *want_write)
{
    if (rc >= 0)
        return rc;
    *want_write = rc == MBEDTLS_ERR_SSL_WANT_WRITE;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    if (rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY)
        return 0;
    errno = ECONNRESET; /* a failed handshake (a plain-HTTP client, a bad certificate) or a broken record */
    return -1;
}

ssize_t cn_http_tls_recv(cn_http_tls_conn *c, void *buf, size_t len, bool *want_write)
{
    *want_write = false;
    return as_syscall(mbedtls_ssl_read((mbedtls_ssl_context *)c, buf, len), want_write);
}

ssize_t cn_http_tls_send(cn_http_tls_conn *c, const void *buf, size_t len, bool *want_write)
{
    *want_write = false;
    return as_syscall(mbedtls_ssl_write((mbedtls_ssl_context *)c, buf, len), want_write);
}

void cn_http_tls_close(cn_http_tls_conn *c)
{
    if (!c)
        return;
    mbedtls_ssl_context *ssl = (mbedtls_ssl_context *)c;
    mbedtls_ssl_close_notify(ssl); /* best effort: the socket is closed right after */
    mbedtls_ssl_free(ssl);
    free(ssl);
}
