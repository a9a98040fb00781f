/*
 * Keeps the ipc:// listeners accepting. In nng 1.5.2 (Debian 12's) an ipc
 * listener stops accepting for good once a peer disconnects during the SP
 * handshake (nng issue #1518, fixed in nng 1.6): one `nc -U` on the socket,
 * or a worker killed while it connects, and no agent gets in again until a
 * restart, with nothing in any counter to show it.
 *
 * So every ipc_check_interval this thread dials each ipc listener from a
 * private REQ socket. A listener that does not complete the handshake twice
 * in a row is closed and opened again on the same path; its agents reconnect
 * and resend what was not acked. The probes' own connections are not
 * counted as agents' (conns.c).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nng_receiver.h"

#include <nng/protocol/reqrep0/req.h>

/* How long a probe waits for the handshake; generous, so a busy listener is not mistaken for a wedged one. */
#define PROBE_WAIT_MS 3000

typedef struct probe probe;

void nngrx_ipc_watch_arrived(nng_receiver *rx)
{
    probe *pr = &rx->ipc_watch.probe;
    if (!rx->ipc_watch.sync_ok)
        return;
    pthread_mutex_lock(&pr->lock);
    pr->connected = true;
    pthread_cond_signal(&pr->cv);
    pthread_mutex_unlock(&pr->lock);
}

static struct timespec after_ms(int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

/*
 * Whether a connection to url reaches the receiver's socket within
 * PROBE_WAIT_MS (its pipe event calls nngrx_ipc_watch_arrived). The dialing
 * side is no judge: its handshake completes while the wedged listener never
 * hands the connection on. Errors count as yes.
 */
static bool listener_answers(ipc_watch *w, const char *url)
{
    probe *pr = &w->probe;
    pthread_mutex_lock(&pr->lock);
    pr->connected = false;
    pthread_mutex_unlock(&pr->lock);
    nng_socket s;
    if (nng_req0_open(&s) != 0)
        return true; /* cannot tell: leave the listener alone */
    bool ok = true;
    if (nng_dial(s, url, NULL, NNG_FLAG_NONBLOCK) == 0) {
        struct timespec until = after_ms(PROBE_WAIT_MS);
        pthread_mutex_lock(&pr->lock);
        while (!pr->connected && !atomic_load(&w->stop) &&
               pthread_cond_timedwait(&pr->cv, &pr->lock, &until) == 0)
            ;
        ok = pr->connected || atomic_load(&w->stop);
        pthread_mutex_unlock(&pr->lock);
    }
    nng_close(s); /* its pipe callbacks are done when this returns */
    return ok;
}

static void *watch_main(void *arg)
{
    nng_receiver *rx = arg;
    ipc_watch *w = &rx->ipc_watch;
    unsigned *misses = w->misses;
    while (!atomic_load(&w->stop)) {
        struct timespec until = after_ms(rx->ipc_check_interval);
        pthread_mutex_lock(&w->probe.lock);
        while (!atomic_load(&w->stop) && pthread_cond_timedwait(&w->probe.cv, &w->probe.lock, &until) == 0)
            ;
        pthread_mutex_unlock(&w->probe.lock);
        for (size_t i = 0; i < rx->listen.n && !atomic_load(&w->stop); i++) {
            const char *url = rx->listen.v[i];
            if (nngrx_classify_url(url) != URL_IPC || !rx->listeners[i].started)
                continue;
            misses[i] = listener_answers(w, url) ? 0 : misses[i] + 1;
            if (misses[i] < 2)
                continue;
            misses[i] = 0;
            cn_metric_inc(w->restarts);
            cn_warn(cn_component_id(rx->self),
                    "%s stopped accepting connections (nng 1.5's ipc listener wedges after a peer leaves during "
                    "the handshake); reopening it: its agents reconnect and resend",
                    url);
            rx->listeners[i].started = false;
            nng_listener_close(rx->listeners[i].l);
            if (nngrx_start_listener(rx, i) != 0)
                cn_error(cn_component_id(rx->self), "%s could not be reopened; agents cannot connect to it", url);
        }
    }
    return NULL;
}

int nngrx_ipc_watch_start(nng_receiver *rx)
{
    ipc_watch *w = &rx->ipc_watch;
    bool any_ipc = false;
    for (size_t i = 0; i < rx->listen.n; i++)
        any_ipc |= nngrx_classify_url(rx->listen.v[i]) == URL_IPC;
    if (!any_ipc || rx->ipc_check_interval == 0)
        return 0;
    w->restarts = cn_counter("canopy_receiver_ipc_listener_restarts_total",
                             "ipc:// listeners reopened because they stopped completing connections (nng 1.5).",
                             cn_component_labels(rx->self));
    if (!(w->misses = calloc(rx->listen.n, sizeof *w->misses)))
        return -1;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&w->probe.cv, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0 || pthread_mutex_init(&w->probe.lock, NULL) != 0)
        return -1;
    w->sync_ok = true;
    if (pthread_create(&w->thread, NULL, watch_main, rx) != 0)
        return -1;
    w->started = true;
    return 0;
}

void nngrx_ipc_watch_stop(nng_receiver *rx)
{
    ipc_watch *w = &rx->ipc_watch;
    if (w->started) {
        pthread_mutex_lock(&w->probe.lock);
        atomic_store(&w->stop, true);
        pthread_cond_broadcast(&w->probe.cv);
        pthread_mutex_unlock(&w->probe.lock);
        pthread_join(w->thread, NULL);
        w->started = false;
    }
}

void nngrx_ipc_watch_free(nng_receiver *rx)
{
    ipc_watch *w = &rx->ipc_watch;
    nngrx_ipc_watch_stop(rx);
    if (w->sync_ok) {
        pthread_cond_destroy(&w->probe.cv);
        pthread_mutex_destroy(&w->probe.lock);
        w->sync_ok = false;
    }
    free(w->misses);
    w->misses = NULL;
}
