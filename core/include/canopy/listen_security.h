#ifndef CANOPY_LISTEN_SECURITY_H
#define CANOPY_LISTEN_SECURITY_H
/*
 * What every listener that agents or users reach has in common: whether its
 * host is loopback (plaintext elsewhere needs allow_insecure), and the server
 * side of TLS (the `tls:` map of the receivers). One table and one check, so
 * every receiver documents the same options and refuses the same mistakes
 * with the same words.
 */
#include <stdbool.h>
#include <stddef.h>

#include "canopy/config.h"
#include "canopy/metrics.h"

/* True for a host name only this machine can reach: localhost, ::1, 127.0.0.0/8. */
bool cn_host_is_loopback(const char *host, size_t len);
/* The host part of "host:port", "[v6]:port" or "host", as a pointer and length into hostport. */
void cn_split_host(const char *hostport, const char **host, size_t *len);

/* Same order as nng's nng_tls_auth_mode. */
enum { CN_CLIENT_AUTH_NONE, CN_CLIENT_AUTH_OPTIONAL, CN_CLIENT_AUTH_REQUIRED };
extern const char *const cn_client_auth_choices[];

/* A receiver's `tls:` map. */
typedef struct cn_server_tls {
    char *cert_file;
    char *key_file;
    char *ca_file;
    int client_auth; /* CN_CLIENT_AUTH_* */
} cn_server_tls;

/* The options of a `tls:` map, at offsets of cn_server_tls. */
extern const cn_option cn_server_tls_options[];

/* True when any TLS option is set. */
bool cn_server_tls_configured(const cn_server_tls *t);

/*
 * Checks the `tls:` map of `component_node`: cert_file and key_file both or
 * neither, client_auth with a ca_file, every file a readable PEM of the right
 * kind. Errors carry the option's position. Returns 0 or -1.
 */
int cn_server_tls_check(const cn_server_tls *t, const cn_node *component_node, cn_diag *d);

/* The connection metrics every receiver exports under the same names: one view of all agents' connections. */
typedef struct cn_conn_metrics {
    cn_metric *open;     /* gauge canopy_receiver_connections */
    cn_metric *accepted; /* canopy_receiver_connections_accepted_total */
    cn_metric *refused;  /* canopy_receiver_connections_refused_total (max_connections) */
} cn_conn_metrics;

/* Registers (or finds) them for a receiver's labels. */
cn_conn_metrics cn_conn_metrics_get(const char *labels);

#endif
