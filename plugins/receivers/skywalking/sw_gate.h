/*
 * The skywalking receiver's connection gate: canopy accepts the agents'
 * TCP connections on `listen` itself, closes those past max_connections,
 * and relays the rest, byte for byte, to the gRPC server bound on a
 * loopback port of its own. Why: the gRPC C core Debian ships (1.51) has
 * no setting that caps a server's connections (see sw_gate.c).
 */
#ifndef CN_SW_GATE_H
#define CN_SW_GATE_H

#include <stddef.h>
#include <stdint.h>

#include "canopy/log.h"
#include "canopy/metrics.h"

typedef struct swrx_gate swrx_gate;

typedef struct swrx_gate_config {
    const char *id;          /* the component id, for logs */
    const char *listen;      /* host:port or [v6]:port the agents connect to */
    int inner_port;          /* the gRPC server's port on 127.0.0.1 */
    int64_t max_connections;
    cn_metric *refused;      /* canopy_receiver_refused_total{reason="connections"} */
    cn_metric *conns_refused; /* canopy_receiver_connections_refused_total */
    cn_metric *conns_accepted; /* canopy_receiver_connections_accepted_total */
    cn_metric *conns_open;   /* gauge canopy_receiver_connections */
    cn_ratelimit *refuse_log;
} swrx_gate_config;

/* Binds `listen` and starts the gate's thread: 0, or -1 after logging why (*out is then NULL). */
int swrx_gate_start(swrx_gate **out, const swrx_gate_config *cfg);
/* Wakes and joins the thread, closes every connection and descriptor, frees the gate. NULL is fine. */
void swrx_gate_stop(swrx_gate *g);
/*
 * The agent's own address for gRPC's peer of a call ("ipv4:127.0.0.1:<port>"
 * of the gate's inner connection), in gRPC's form ("ipv4:10.1.2.3:51234",
 * "ipv6:[::1]:51234"), into buf: true; false (buf untouched) when the peer
 * is not one of the gate's connections. Any thread.
 */
bool swrx_gate_peer(swrx_gate *g, const char *grpc_peer, char *buf, size_t len);

#endif
