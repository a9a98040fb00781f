/* Loopback hosts and the server side of TLS, shared by every listener (see the header). */
#include "canopy/listen_security.h"

#include <string.h>
#include <strings.h>

const char *const cn_client_auth_choices[] = {"none", "optional", "required", NULL};

const cn_option cn_server_tls_options[] = {
    {CN_OPT_STR, "cert_file", NULL, offsetof(cn_server_tls, cert_file),
     "PEM certificate (chain) the receiver's TLS listeners present to agents (with key_file)."},
    {CN_OPT_STR, "key_file", NULL, offsetof(cn_server_tls, key_file), "PEM private key of cert_file."},
    {CN_OPT_STR, "ca_file", NULL, offsetof(cn_server_tls, ca_file),
     "PEM CA certificate(s) that agents' client certificates must chain to (client_auth optional or "
     "required)."},
    {CN_OPT_ENUM, "client_auth", "none", offsetof(cn_server_tls, client_auth),
     "none: agents need no certificate; optional: a certificate, when presented, must verify against "
     "ca_file; required: agents without a certificate that verifies are refused at the handshake.",
     .choices = cn_client_auth_choices},
    CN_OPT_END};

bool cn_host_is_loopback(const char *host, size_t len)
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

void cn_split_host(const char *hostport, const char **host, size_t *len)
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

bool cn_server_tls_configured(const cn_server_tls *t)
{
    return t->cert_file || t->key_file || t->ca_file || t->client_auth != CN_CLIENT_AUTH_NONE;
}

/* The node of option `name` in map `node`, else `fallback`: errors always carry a position. */
static const cn_node *opt_at(const cn_node *node, const char *name, const cn_node *fallback)
{
    const cn_node *n = node ? cn_options_node(node, name) : NULL;
    return n ? n : fallback;
}

int cn_server_tls_check(const cn_server_tls *t, const cn_node *component_node, cn_diag *d)
{
    if (!cn_server_tls_configured(t))
        return 0;
    const cn_node *node = cn_options_node(component_node, "tls");
    const cn_node *at = node ? node : component_node;
    int rc = 0;
    if (!t->cert_file || !t->key_file) {
        /* Otherwise a user could believe the agents' traffic is encrypted while it is not. */
        cn_diag_error(d, at, "tls: the server needs both cert_file and key_file (they go together)");
        rc = -1;
    }
    if (t->client_auth != CN_CLIENT_AUTH_NONE && !t->ca_file) {
        cn_diag_error(d, opt_at(node, "client_auth", at),
                      "tls.client_auth: %s needs tls.ca_file (the CA agents' certificates must chain to)",
                      cn_client_auth_choices[t->client_auth]);
        rc = -1;
    }
    if (t->cert_file && cn_diag_check_pem(d, opt_at(node, "cert_file", at), "cert_file", t->cert_file, "CERTIFICATE"))
        rc = -1;
    if (t->key_file && cn_diag_check_pem(d, opt_at(node, "key_file", at), "key_file", t->key_file, "PRIVATE KEY"))
        rc = -1;
    if (t->ca_file && cn_diag_check_pem(d, opt_at(node, "ca_file", at), "ca_file", t->ca_file, "CERTIFICATE"))
        rc = -1;
    return rc;
}

cn_conn_metrics cn_conn_metrics_get(const char *labels)
{
    return (cn_conn_metrics){
        .open = cn_gauge("canopy_receiver_connections", "Agent connections open, over all listeners.", labels),
        .accepted = cn_counter("canopy_receiver_connections_accepted_total",
                               "Agent connections accepted (nng: after the TLS handshake of tls+tcp; "
                               "skywalking: at TCP accept).",
                               labels),
        .refused = cn_counter("canopy_receiver_connections_refused_total",
                              "Connections closed at once because max_connections was reached.", labels),
    };
}
