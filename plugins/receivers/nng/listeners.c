/*
 * The nng receiver's listeners: what `listen` and `tls` may say (URL kinds,
 * loopback-only plain tcp://, TLS files that are really PEM certificates and
 * keys, the ipc_group), the server TLS config, and starting each listener.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nng_receiver.h"
#include "pem.h"

url_kind nngrx_classify_url(const char *url)
{
    if (strncmp(url, "ipc://", 6) == 0)
        return URL_IPC;
    if (strncmp(url, "tcp://", 6) == 0 || strncmp(url, "tcp4://", 7) == 0 || strncmp(url, "tcp6://", 7) == 0)
        return URL_TCP;
    if (strncmp(url, "tls+tcp://", 10) == 0 || strncmp(url, "tls+tcp4://", 11) == 0 ||
        strncmp(url, "tls+tcp6://", 11) == 0)
        return URL_TLS;
    return URL_BAD;
}

static int check_url(nng_receiver *rx, const char *url, const cn_node *at, cn_diag *d)
{
    url_kind kind = nngrx_classify_url(url);
    if (kind == URL_IPC) {
        if (!url[6]) {
            cn_diag_error(d, at, "listen: \"%s\" has no socket path", url);
            return -1;
        }
        return 0;
    }
    if (kind == URL_BAD) {
        cn_diag_error(d, at, "listen: \"%s\" must start with ipc://, tcp:// or tls+tcp://", url);
        return -1;
    }
    const char *host = strstr(url, "://") + 3;
    const char *colon = strrchr(host, ':');
    if (!colon || colon == host || !colon[1]) {
        cn_diag_error(d, at, "listen: \"%s\" must be %s://host:port", url, kind == URL_TLS ? "tls+tcp" : "tcp");
        return -1;
    }
    if (kind == URL_TLS) {
        /* Encrypted, and with client_auth: required only agents holding a certificate get in. */
        if (!rx->tls.cert_file || !rx->tls.key_file) {
            cn_diag_error(d, at, "listen: \"%s\" needs tls.cert_file and tls.key_file (the certificate it presents)",
                          url);
            return -1;
        }
        return 0;
    }
    char h[256];
    snprintf(h, sizeof h, "%.*s", (int)(colon - host), host);
    if (!rx->allow_insecure && !cn_host_is_loopback(h, strlen(h))) {
        cn_diag_error(d, at,
                      "listen: refusing plain %s on a non-loopback address: anyone who can reach it could send "
                      "data and read tasks. Listen on 127.0.0.1, an ipc:// path or tls+tcp:// (with tls: "
                      "cert_file, key_file), or set allow_insecure: true",
                      url);
        return -1;
    }
    return 0;
}

/* TLS applies to tls+tcp:// listeners only: set without one, it would protect nothing. */
static int check_tls(nng_receiver *rx, cn_component *self, bool has_tls_url, cn_diag *d)
{
    if (!cn_server_tls_configured(&rx->tls))
        return 0;
    int rc = 0;
    if (!has_tls_url) {
        const cn_node *node = cn_options_node(cn_component_node(self), "tls");
        /* Otherwise a user could believe agents are authenticated while they are not. */
        cn_diag_error(d, node ? node : cn_component_node(self),
                      "tls is set but no listen URL is tls+tcp://; TLS applies only to tls+tcp:// listeners");
        rc = -1;
    }
    return cn_server_tls_check(&rx->tls, cn_component_node(self), d) != 0 ? -1 : rc;
}

int nngrx_check_listeners(nng_receiver *rx, cn_component *self, cn_diag *d)
{
    const cn_node *at = cn_options_node(cn_component_node(self), "listen");
    if (rx->listen.n == 0) {
        cn_diag_error(d, at, "listen: at least one URL is required");
        return -1;
    }
    int rc = 0;
    bool has_tls_url = false;
    for (size_t i = 0; i < rx->listen.n; i++) {
        rc |= check_url(rx, rx->listen.v[i], at, d);
        has_tls_url |= nngrx_classify_url(rx->listen.v[i]) == URL_TLS;
    }
    rc |= check_tls(rx, self, has_tls_url, d);
    if (rx->ipc_group && !getgrnam(rx->ipc_group)) {
        cn_diag_error(d, cn_options_node(cn_component_node(self), "ipc_group"), "ipc_group: no group named \"%s\"",
                      rx->ipc_group);
        rc = -1;
    }
    return rc;
}

/* The server TLS config shared by every tls+tcp:// listener. */
int nngrx_make_tls_config(nng_receiver *rx)
{
    const char *id = cn_component_id(rx->self);
    const cn_server_tls *t = &rx->tls;
    char *cert = cn_pem_read(t->cert_file, NULL);
    char *key = cert ? cn_pem_read(t->key_file, NULL) : NULL;
    if (!cert || !key) {
        cn_error(id, "tls: cannot read %s: %s", cert ? t->key_file : t->cert_file, strerror(errno));
        free(cert);
        free(key);
        return -1;
    }
    int rv = nng_tls_config_alloc(&rx->tls_config, NNG_TLS_MODE_SERVER);
    const char *step = "allocate a TLS config";
    if (rv == 0) {
        step = "load tls.cert_file and tls.key_file (do they match?)";
        rv = nng_tls_config_own_cert(rx->tls_config, cert, key, NULL);
    }
    if (rv == 0 && t->ca_file) {
        step = "load tls.ca_file";
        rv = nng_tls_config_ca_file(rx->tls_config, t->ca_file);
    }
    if (rv == 0) {
        step = "set tls.client_auth";
        rv = nng_tls_config_auth_mode(rx->tls_config, (nng_tls_auth_mode)t->client_auth);
    }
    /* Nothing older than TLS 1.2; mbedTLS 2.28 (Debian 12) stops at 1.2. */
    if (rv == 0 && nng_tls_config_version(rx->tls_config, NNG_TLS_1_2, NNG_TLS_1_3) != 0) {
        step = "require TLS 1.2";
        rv = nng_tls_config_version(rx->tls_config, NNG_TLS_1_2, NNG_TLS_1_2);
    }
    cn_pem_free_secret(key); /* the key must not linger in freed memory */
    free(cert);
    if (rv != 0) {
        cn_error(id, "tls: cannot %s: %s", step, nng_strerror(rv));
        return -1;
    }
    return 0;
}

int nngrx_start_listener(nng_receiver *rx, size_t index)
{
    const char *url = rx->listen.v[index];
    nng_listener l;
    url_kind kind = nngrx_classify_url(url);
    int rv = nng_listener_create(&l, rx->sock, url);
    if (rv == 0 && kind == URL_IPC)
        rv = nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, rx->ipc_permissions);
    if (rv == 0 && kind == URL_TLS)
        rv = nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, rx->tls_config);
    if (rv == 0)
        rv = nng_listener_start(l, 0);
    if (rv != 0) {
        cn_error(cn_component_id(rx->self), "cannot listen on %s: %s", url, nng_strerror(rv));
        return -1;
    }
    rx->listeners[index].l = l;
    rx->listeners[index].started = true;
    if (kind == URL_IPC && rx->ipc_group) {
        struct group *g = getgrnam(rx->ipc_group);
        if (!g || chown(url + 6, (uid_t)-1, g->gr_gid) != 0) {
            cn_error(cn_component_id(rx->self), "cannot give %s to group %s: %s", url + 6, rx->ipc_group,
                     g ? strerror(errno) : "no such group");
            return -1;
        }
    }
    if (kind == URL_TLS)
        cn_info(cn_component_id(rx->self), "listening on %s (TLS, client certificates %s)", url,
                cn_client_auth_choices[rx->tls.client_auth]);
    else if (kind == URL_IPC)
        cn_info(cn_component_id(rx->self), "listening on %s (mode %04o%s%s)", url, rx->ipc_permissions,
                rx->ipc_group ? ", group " : "", rx->ipc_group ? rx->ipc_group : "");
    else
        cn_info(cn_component_id(rx->self), "listening on %s", url);
    return 0;
}
