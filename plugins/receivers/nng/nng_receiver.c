/*
 * Receiver `nng`: agents send canopy.v1 Requests over nng REQ/REP. Several
 * REP contexts work at once, each a small state machine driven by its aio
 * callback: receive -> handle -> send reply -> receive. A batch is acked only
 * once every pipeline it feeds has taken it; anything refused gets an error
 * reply with a machine-readable reason, and a counter.
 *
 * Listeners: ipc:// (socket file mode and group), tcp:// (loopback only unless
 * allow_insecure) and tls+tcp:// (nng's TLS transport over mbedTLS, optional
 * client certificates). Every limit is counted per limit and logged at most
 * once per interval per limit, so one flood never hides another refusal.
 * nng_receiver.h lists the files and what each does.
 */
#include <stdio.h>
#include <stdlib.h>

#include "nng_receiver.h"

static int nng_check(void *ctx, cn_component *self, cn_diag *d)
{
    return nngrx_check_listeners(ctx, self, d);
}


static const cn_option nng_options[] = {
    {CN_OPT_STRLIST, "listen", "ipc:///tmp/canopy.sock", offsetof(nng_receiver, listen),
     "nng URLs to listen on: ipc:///path, tcp://host:port or tls+tcp://host:port. Plain tcp:// must be on "
     "a loopback address unless allow_insecure is true; tls+tcp:// needs tls.cert_file and tls.key_file."},
    {CN_OPT_SIZE, "max_message_size", "4MiB", offsetof(nng_receiver, max_message_size),
     "Largest request accepted. Larger ones (up to twice this) get a TOO_LARGE reply; beyond that nng "
     "closes the connection.",
     .min = 1024, .max = 1LL << 30},
    {CN_OPT_INT, "contexts", "16", offsetof(nng_receiver, contexts),
     "REP contexts serving requests concurrently.", .min = 1, .max = 1024},
    {CN_OPT_MODE, "ipc_permissions", "0660", offsetof(nng_receiver, ipc_permissions),
     "File mode of ipc:// sockets, so only the owner and group can connect."},
    {CN_OPT_STR, "ipc_group", NULL, offsetof(nng_receiver, ipc_group),
     "Group to own ipc:// sockets (e.g. the group the gunicorn workers run as)."},
    {CN_OPT_BOOL, "allow_insecure", "false", offsetof(nng_receiver, allow_insecure),
     "Allow plain tcp:// on non-loopback addresses (anyone who can reach the port can send data and read "
     "task definitions). Prefer tls+tcp:// with client_auth: required."},
    {CN_OPT_MAP, "tls", NULL, offsetof(nng_receiver, tls),
     "TLS of the tls+tcp:// listeners (nng's TLS transport, mbedTLS; TLS 1.2).", .sub = cn_server_tls_options},
    {CN_OPT_INT, "max_connections", "1024", offsetof(nng_receiver, max_connections),
     "Agent connections open at once, over all listeners; further ones are closed at once and counted. Each "
     "connection may hold one request of up to twice max_message_size in memory.",
     .min = 1, .max = 1000000},
    {CN_OPT_DURATION, "reply_timeout", "2s", offsetof(nng_receiver, reply_timeout),
     "A reply the connection has not taken within this long (checked every 0.5 s) closes that connection: a "
     "peer that sends "
     "requests but never reads the replies would otherwise hold every REP context. Agents read replies at "
     "once; one whose connection is closed reconnects and resends (acked as a duplicate).",
     .min = 100, .max = 3600 * 1000},
    {CN_OPT_INT, "max_snapshots_per_batch", "16384", offsetof(nng_receiver, max_snapshots_per_batch),
     "Snapshots one batch may carry.", .min = 1, .max = 10000000},
    {CN_OPT_INT, "max_strings_per_batch", "65536", offsetof(nng_receiver, max_strings_per_batch),
     "Entries in one batch's string table.", .min = 1, .max = 10000000},
    {CN_OPT_SIZE, "max_string_length", "4KiB", offsetof(nng_receiver, max_string_length),
     "Longest code signature, task id or segment id.", .min = 16, .max = 1 << 20},
    {CN_OPT_INT, "max_frames", "1024", offsetof(nng_receiver, max_frames),
     "Frames one snapshot's stack may have.", .min = 1, .max = 100000},
    {CN_OPT_INT, "max_agent_sessions", "10000", offsetof(nng_receiver, max_agent_sessions),
     "Agent sessions tracked for deduplication; the one seen longest ago is forgotten first.", .min = 16,
     .max = 10000000},
    CN_OPT_END};

static int nng_start(void *ctx, cn_component *self)
{
    nng_receiver *rx = ctx;
    if (nngrx_protocol_init(rx, self) != 0)
        return -1;
    if (!(rx->conns = nngrx_conns_new(rx)))
        return -1;
    bool has_tls_url = false;
    for (size_t i = 0; i < rx->listen.n; i++)
        has_tls_url |= nngrx_classify_url(rx->listen.v[i]) == URL_TLS;
    if (has_tls_url && nngrx_make_tls_config(rx) != 0)
        return -1;
    int rv = nng_rep0_open(&rx->sock);
    if (rv != 0) {
        cn_error(cn_component_id(self), "cannot open REP socket: %s", nng_strerror(rv));
        return -1;
    }
    rx->sock_open = true;
    /* Accept up to twice the limit so an oversized request still gets a TOO_LARGE reply. */
    nng_socket_set_size(rx->sock, NNG_OPT_RECVMAXSZ, (size_t)rx->max_message_size * 2);
    if ((rv = nng_pipe_notify(rx->sock, NNG_PIPE_EV_ADD_PRE, nngrx_pipe_event, rx->conns)) != 0 ||
        (rv = nng_pipe_notify(rx->sock, NNG_PIPE_EV_REM_POST, nngrx_pipe_event, rx->conns)) != 0) {
        cn_error(cn_component_id(self), "cannot watch connections: %s", nng_strerror(rv));
        return -1;
    }
    rx->workers = calloc((size_t)rx->contexts, sizeof *rx->workers);
    if (!rx->workers)
        return -1;
    rx->n_workers = (size_t)rx->contexts;
    for (size_t i = 0; i < rx->n_workers; i++) {
        rep_worker *w = &rx->workers[i];
        w->rx = rx;
        if ((rv = nng_aio_alloc(&w->aio, nngrx_worker_cb, w)) != 0 || (rv = nng_ctx_open(&w->ctx, rx->sock)) != 0) {
            cn_error(cn_component_id(self), "cannot create REP context: %s", nng_strerror(rv));
            return -1;
        }
        w->ctx_open = true;
    }
    if (!(rx->listeners = calloc(rx->listen.n, sizeof *rx->listeners)))
        return -1;
    nngrx_make_listener_metrics(rx);
    for (size_t i = 0; i < rx->listen.n; i++)
        if (nngrx_start_listener(rx, i) != 0)
            return -1;
    if ((rv = nng_aio_alloc(&rx->stats_aio, nngrx_stats_cb, rx)) != 0) {
        cn_error(cn_component_id(self), "cannot start the listener statistics timer: %s", nng_strerror(rv));
        return -1;
    }
    nng_sleep_aio(STATS_INTERVAL_MS, rx->stats_aio);
    if (nngrx_start_resumer(rx) != 0) {
        cn_error(cn_component_id(self), "cannot start the thread that resumes intake after memory_limit pauses");
        return -1;
    }
    for (size_t i = 0; i < rx->n_workers; i++)
        nngrx_start_worker(&rx->workers[i]);
    return 0;
}

static void nng_stop(void *ctx)
{
    nng_receiver *rx = ctx;
    if (rx->stats_aio)
        nng_aio_stop(rx->stats_aio);
    /* No new connections and requests from here on, even if nng_close below never returns. */
    for (size_t i = 0; rx->listeners && i < rx->listen.n; i++) {
        if (rx->listeners[i].started) {
            nng_listener_close(rx->listeners[i].l);
            rx->listeners[i].started = false;
        }
    }
    /* The service already refuses new batches (SHUTTING_DOWN replies); stop the workers. */
    nngrx_stop_resumer(rx);
    for (size_t i = 0; i < rx->n_workers; i++)
        if (rx->workers[i].aio)
            nng_aio_stop(rx->workers[i].aio);
    /* Contexts before the socket, as the agent's sender does with its aios. */
    for (size_t i = 0; i < rx->n_workers; i++) {
        if (rx->workers[i].ctx_open) {
            nng_ctx_close(rx->workers[i].ctx);
            rx->workers[i].ctx_open = false;
        }
    }
    if (rx->sock_open) {
        rx->sock_open = false;
        if (!nngrx_close_socket(rx)) {
            rx->close_abandoned = true;
            if (rx->conns)
                atomic_store(&rx->conns->abandoned, true);
        }
    }
}

static void nng_destroy(void *ctx)
{
    nng_receiver *rx = ctx;
    nng_stop(rx);
    /* After an abandoned close nng may still hold the workers' aios and call the
     * pipe callback: leave those allocated (the process is exiting). */
    for (size_t i = 0; !rx->close_abandoned && i < rx->n_workers; i++)
        if (rx->workers[i].aio)
            nng_aio_free(rx->workers[i].aio);
    if (!rx->close_abandoned) {
        free(rx->workers);
        nngrx_conns_free(rx->conns);
        nngrx_free_resumer(rx);
    }
    rx->workers = NULL;
    rx->n_workers = 0;
    rx->conns = NULL;
    dedup_destroy(&rx->dedup);
    if (rx->tls_config) {
        nng_tls_config_free(rx->tls_config); /* listeners held their own references */
        rx->tls_config = NULL;
    }
    if (rx->stats_aio) {
        nng_aio_free(rx->stats_aio);
        rx->stats_aio = NULL;
    }
    free(rx->listeners);
    rx->listeners = NULL;
}

const cn_plugin cn_receiver_nng = {
    .kind = CN_RECEIVER,
    .type = "nng",
    .description = "Snapshot batches and task queries from canopy agents over nng REQ/REP (ipc://, tcp://, "
                   "tls+tcp://).",
    .ctx_size = sizeof(nng_receiver),
    .options = nng_options,
    .cb_check = nng_check,
    .cb_start = nng_start,
    .cb_stop = nng_stop,
    .cb_destroy = nng_destroy,
};
