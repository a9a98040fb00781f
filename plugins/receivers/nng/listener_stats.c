/*
 * The nng receiver's timer (every STATS_INTERVAL_MS): stuck replies, closed
 * connections nng keeps, nng's per-listener transport errors copied into
 * metrics, and deduplication's forgotten sessions.
 */
#include <stdio.h>
#include <string.h>

#include "nng_receiver.h"

/*
 * What nng handles inside a listener, before or instead of a request: a TLS
 * handshake that failed authentication, a peer that is not an SP/REQ peer,
 * no memory, a pipe we closed (max_connections), and "other": any other
 * close, which is mostly agents going away but also a message over twice
 * max_message_size (nng does not say which). nng counts them per listener;
 * we copy them into canopy_receiver_transport_errors_total every second and
 * log the increase of those that are always a problem (why != NULL).
 */
const char *const nngrx_transport_errors[N_TRANSPORT_ERRORS] = {"auth", "proto", "timeout", "oom", "reject", "other"};
static const char *const transport_error_why[N_TRANSPORT_ERRORS] = {
    "failed TLS authentication (no or untrusted client certificate, or the client does not trust ours)",
    "were not nng REQ peers (protocol negotiation failed)",
    "timed out during the handshake",
    "were closed for lack of memory",
    NULL, /* our own max_connections closes, logged where they happen */
    NULL, /* mostly agents that went away */
};

/* Label value: the URL with quotes and backslashes (not valid in a Prometheus label) replaced. */
static void label_escape(char *out, size_t len, const char *in)
{
    size_t i = 0;
    for (; in[i] && i + 1 < len; i++)
        out[i] = in[i] == '"' || in[i] == '\\' || in[i] == '\n' ? '_' : in[i];
    out[i] = '\0';
}

void nngrx_make_listener_metrics(nng_receiver *rx)
{
    for (size_t i = 0; i < rx->listen.n; i++) {
        char url[192], l[320];
        label_escape(url, sizeof url, rx->listen.v[i]);
        for (size_t e = 0; e < N_TRANSPORT_ERRORS; e++) {
            snprintf(l, sizeof l, "%s,listener=\"%s\",error=\"%s\"", cn_component_labels(rx->self), url,
                     nngrx_transport_errors[e]);
            rx->listeners[i].errors[e] =
                cn_counter("canopy_receiver_transport_errors_total",
                           "Connections nng closed, by listener and cause (auth: TLS authentication failed, "
                           "proto: not an nng REQ peer, timeout, oom, reject: max_connections, other: any other "
                           "close, mostly agents going away, also a message over twice max_message_size).",
                           l);
        }
    }
    for (size_t e = 0; e < N_TRANSPORT_ERRORS; e++)
        rx->transport_log[e].interval_ms = 5000;
}

/*
 * The statistics scope of listener `id`. Not nng_stat_find_listener: in nng
 * 1.5.2 it returns the socket's first listener whatever the id.
 */
static nng_stat *find_listener_scope(nng_stat *parent, int id, int depth)
{
    for (nng_stat *c = nng_stat_child(parent); c; c = nng_stat_next(c)) {
        if (nng_stat_type(c) != NNG_STAT_SCOPE)
            continue;
        if (strcmp(nng_stat_name(c), "listener") == 0) {
            for (nng_stat *v = nng_stat_child(c); v; v = nng_stat_next(v))
                if (nng_stat_type(v) == NNG_STAT_ID && strcmp(nng_stat_name(v), "id") == 0 &&
                    nng_stat_value(v) == (uint64_t)id)
                    return c;
        } else if (depth < 3) {
            nng_stat *found = find_listener_scope(c, id, depth + 1);
            if (found)
                return found;
        }
    }
    return NULL;
}

/* Copies nng's per-listener error counters into our metrics; logs increases. */
static void collect_listener_stats(nng_receiver *rx)
{
    nng_stat *root;
    if (nng_stats_get(&root) != 0)
        return; /* no memory: next time */
    for (size_t i = 0; i < rx->listen.n; i++) {
        listener_stats *ls = &rx->listeners[i];
        nng_stat *scope = ls->started ? find_listener_scope(root, nng_listener_id(ls->l), 0) : NULL;
        for (size_t e = 0; scope && e < N_TRANSPORT_ERRORS; e++) {
            nng_stat *st = nng_stat_find(scope, nngrx_transport_errors[e]);
            uint64_t v = st ? nng_stat_value(st) : 0;
            if (v <= ls->last[e])
                continue;
            cn_metric_set(ls->errors[e], (int64_t)v);
            if (transport_error_why[e])
                cn_log_limited(&rx->transport_log[e], CN_LOG_WARN, cn_component_id(rx->self),
                           "%s: %llu connection(s) %s (%llu in all)", rx->listen.v[i],
                           (unsigned long long)(v - ls->last[e]), transport_error_why[e], (unsigned long long)v);
            ls->last[e] = v;
        }
    }
    nng_stats_free(root);
}

/* max_agent_sessions: evictions are counted and logged from the timer (dedup runs under its lock). */
static void report_evictions(nng_receiver *rx)
{
    uint64_t n = dedup_evicted(&rx->dedup);
    cn_metric_set(rx->agent_sessions, (int64_t)dedup_sessions(&rx->dedup));
    if (n <= rx->evicted_logged)
        return;
    cn_metric_set(rx->evicted_sessions, (int64_t)n);
    cn_log_limited(&rx->session_log, CN_LOG_WARN, cn_component_id(rx->self),
                   "max_agent_sessions (%lld) reached: forgot %llu agent session(s) seen longest ago (%llu in all); "
                   "their resends would no longer be recognised as duplicates",
                   (long long)rx->max_agent_sessions, (unsigned long long)(n - rx->evicted_logged),
                   (unsigned long long)n);
    rx->evicted_logged = n;
}

void nngrx_stats_cb(void *arg)
{
    nng_receiver *rx = arg;
    if (nng_aio_result(rx->stats_aio) != 0)
        return; /* stopped */
    nngrx_reap_slow_readers(rx);
    nngrx_prune_closed_connections(rx->conns);
    /* nng_stats_get copies every statistic (each connection has some): once a second is plenty. */
    if (++rx->stats_ticks % 2 == 0) {
        collect_listener_stats(rx);
        report_evictions(rx);
    }
    nng_sleep_aio(STATS_INTERVAL_MS, rx->stats_aio);
}
