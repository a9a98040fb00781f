/*
 * The nng receiver's connections: max_connections (counted from nng's pipe
 * events), closed connections nng never releases, and naming a peer in logs.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nng_receiver.h"

/* "127.0.0.1:51234" or "pid 4242": who sent it, for logs about requests that carry no identity. */
void nngrx_describe_peer(nng_pipe p, char *buf, size_t len)
{
    nng_sockaddr sa;
    int pid;
    char ip[INET6_ADDRSTRLEN];
    if (nng_pipe_id(p) < 0 || nng_pipe_get_addr(p, NNG_OPT_REMADDR, &sa) != 0) {
        snprintf(buf, len, "an agent");
    } else if (sa.s_family == NNG_AF_INET && inet_ntop(AF_INET, &sa.s_in.sa_addr, ip, sizeof ip)) {
        snprintf(buf, len, "%s:%u", ip, (unsigned)ntohs(sa.s_in.sa_port));
    } else if (sa.s_family == NNG_AF_INET6 && inet_ntop(AF_INET6, sa.s_in6.sa_addr, ip, sizeof ip)) {
        snprintf(buf, len, "[%s]:%u", ip, (unsigned)ntohs(sa.s_in6.sa_port));
    } else if (sa.s_family == NNG_AF_IPC && nng_pipe_get_int(p, NNG_OPT_IPC_PEER_PID, &pid) == 0) {
        snprintf(buf, len, "pid %d", pid);
    } else {
        snprintf(buf, len, "an agent");
    }
}

/*
 * Counts connections against max_connections. nng calls this on its own
 * threads; a pipe closed in ADD_PRE never reaches the socket (no request of
 * it is read). The ids of counted pipes are kept because nng 1.5 still sends
 * REM_POST for a pipe closed in ADD_PRE, and that one must not be uncounted.
 */
void nngrx_pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    conn_state *cs = arg;
    if (atomic_load(&cs->abandoned))
        return;
    char key[16];
    snprintf(key, sizeof key, "%u", (unsigned)nng_pipe_id(p));
    if (ev == NNG_PIPE_EV_ADD_PRE) {
        pthread_mutex_lock(&cs->lock);
        size_t open = cn_dict_size(cs->pipes);
        bool admit = (int64_t)open < cs->max_connections && cn_dict_put(cs->pipes, key, cs) == 0;
        /* Set under the lock: events of two pipes must not store their counts
         * out of order (the gauge showed 3 of 4 open connections). */
        if (admit)
            cn_metric_set(cs->open, (int64_t)open + 1);
        pthread_mutex_unlock(&cs->lock);
        if (admit) {
            cn_metric_inc(cs->accepted);
            return;
        }
        char who[80];
        nngrx_describe_peer(p, who, sizeof who);
        cn_metric_inc(cs->refused);
        cn_log_limited(&cs->log, CN_LOG_WARN, cs->id,
                       "refused a connection from %s: max_connections (%lld) reached (or out of memory)", who,
                       (long long)cs->max_connections);
        nng_pipe_close(p);
    } else if (ev == NNG_PIPE_EV_REM_POST) {
        pthread_mutex_lock(&cs->lock);
        if (cn_dict_remove(cs->pipes, key) != NULL)
            cn_metric_set(cs->open, (int64_t)cn_dict_size(cs->pipes));
        else if (cn_dict_remove(cs->unreaped, key) != NULL)
            cn_metric_set(cs->unreaped_gauge, (int64_t)cn_dict_size(cs->unreaped));
        pthread_mutex_unlock(&cs->lock);
    }
}

/*
 * nng 1.5.2 can stop releasing closed connections for good: its one pipe
 * reaper thread waits forever on a pipe closed while its TCP transport was
 * between the header and the body of a message (fixed in nng 1.6, "tcp:
 * finish receive aio on close"; docs/security.md). A hostile peer that
 * pipelines requests and hangs up does that within seconds. No closed
 * connection then gets REM_POST, so they would count against max_connections
 * forever and shut every agent out while the flood goes on. A TCP connection
 * whose peer address is gone (getpeername fails: the socket is closed) stops
 * counting and is shown as unreaped instead; its file descriptor stays open
 * until the process ends, which the gauge and the log make visible.
 */
void nngrx_prune_closed_connections(conn_state *cs)
{
    pthread_mutex_lock(&cs->lock);
    size_t n = cn_dict_size(cs->pipes), got = 0, pos = 0;
    uint32_t *ids = n ? malloc(n * sizeof *ids) : NULL;
    const char *key;
    void *value;
    while (ids && got < n && cn_dict_next(cs->pipes, &pos, &key, &value))
        ids[got++] = (uint32_t)strtoul(key, NULL, 10);
    pthread_mutex_unlock(&cs->lock);
    /* Asked outside the lock: nng takes its own locks, and nngrx_pipe_event takes ours under them. */
    size_t dead = 0;
    for (size_t i = 0; i < got; i++) {
        nng_pipe p = NNG_PIPE_INITIALIZER;
        p.id = ids[i];
        nng_sockaddr sa;
        int rv = nng_pipe_get_addr(p, NNG_OPT_REMADDR, &sa);
        /* ENOENT: already released (REM_POST uncounts it); ipc:// addresses never fail. */
        if (rv != 0 && rv != NNG_ENOENT)
            ids[dead++] = ids[i];
    }
    size_t pruned = 0, unreaped;
    pthread_mutex_lock(&cs->lock);
    for (size_t i = 0; i < dead; i++) {
        char k[16];
        snprintf(k, sizeof k, "%u", (unsigned)ids[i]);
        if (cn_dict_remove(cs->pipes, k) != NULL) {
            pruned++;
            cn_dict_put(cs->unreaped, k, cs); /* no memory: it is just not shown */
        }
    }
    unreaped = cn_dict_size(cs->unreaped);
    if (pruned) {
        cn_metric_set(cs->open, (int64_t)cn_dict_size(cs->pipes));
        cn_metric_set(cs->unreaped_gauge, (int64_t)unreaped);
    }
    pthread_mutex_unlock(&cs->lock);
    free(ids);
    if (pruned)
        cn_log_limited(&cs->unreaped_log, CN_LOG_WARN, cs->id,
                       "%zu closed connection(s) were not released by nng (%zu in all; a known nng 1.5.2 wedge, "
                       "see docs/security.md): they no longer count against max_connections, but their file "
                       "descriptors stay open until the collector restarts",
                       pruned, unreaped);
}

conn_state *nngrx_conns_new(nng_receiver *rx)
{
    conn_state *cs = calloc(1, sizeof *cs);
    if (!cs)
        return NULL;
    if (!(cs->pipes = cn_dict_new(64)) || !(cs->unreaped = cn_dict_new(16)) ||
        pthread_mutex_init(&cs->lock, NULL) != 0) {
        cn_dict_free(cs->pipes, NULL);
        cn_dict_free(cs->unreaped, NULL);
        free(cs);
        return NULL;
    }
    const char *labels = cn_component_labels(rx->self);
    cs->max_connections = rx->max_connections;
    snprintf(cs->id, sizeof cs->id, "%s", cn_component_id(rx->self));
    cn_conn_metrics conns = cn_conn_metrics_get(labels);
    cs->open = conns.open;
    cs->accepted = conns.accepted;
    cs->refused = conns.refused;
    cs->unreaped_gauge = cn_gauge("canopy_receiver_unreaped_connections",
                                  "Closed agent connections nng has not released, holding a file descriptor each "
                                  "(an nng 1.5.2 wedge, docs/security.md; restart the collector when it grows).",
                                  labels);
    cs->log.interval_ms = 5000;
    cs->unreaped_log.interval_ms = 10000;
    return cs;
}

void nngrx_conns_free(conn_state *cs)
{
    if (!cs)
        return;
    cn_dict_free(cs->pipes, NULL);
    cn_dict_free(cs->unreaped, NULL);
    pthread_mutex_destroy(&cs->lock);
    free(cs);
}
