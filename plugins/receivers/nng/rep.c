/*
 * The nng receiver's REP contexts: each is a small state machine driven by
 * its aio callback (receive -> handle -> send the reply -> receive), and a
 * reply a connection does not take within reply_timeout closes it.
 */
#include <stdio.h>

#include "nng_receiver.h"

/*
 * A reply nobody took: the peer sends requests but does not read (REP sends
 * one reply at a time per connection, so its unread replies would tie up
 * every context in turn). Close that connection: nng then completes the
 * queued replies and the contexts go back to work.
 */
static void close_slow_reader(nng_receiver *rx, nng_pipe p)
{
    char who[64];
    nngrx_describe_peer(p, who, sizeof who);
    cn_metric_inc(rx->reply_timeouts);
    cn_log_limited(&rx->reply_log, CN_LOG_WARN, cn_component_id(rx->self),
                   "closed the connection from %s: it did not take a reply within reply_timeout (%lld ms)", who,
                   (long long)rx->reply_timeout);
    if (nng_pipe_id(p) > 0)
        nng_pipe_close(p);
}

/*
 * While the service is within a fifth of memory_limit a context parks before
 * it takes a request: the agents' requests wait in their connections (nng
 * reads no more from a pipe whose request nobody took), and nothing is
 * decoded only to be refused. The receiver's resumer thread sends the parked
 * contexts back to work when the batch free that ends the pause wakes it
 * (cn_receiver_await_intake), so under a load the exporters can carry a pause
 * lasts as long as the memory takes to drain. Past PAUSE_MAX_MS (an exporter
 * stuck, no spool) a context takes the request and refuses it 'overloaded' as
 * before, so the agents hear why long before their own attempt timeouts.
 *
 * Not nng_sleep_aio steps: nng 1.5.2's expire thread spins for the whole
 * millisecond in which an aio is due (it expires only aios due before now),
 * which cost 7 % of the collector's CPU with contexts pausing 5 ms at a time.
 */
enum { PAUSE_MAX_MS = 250, RESUMER_CHECK_MS = 50 /* how soon the resumer notices it must stop */ };

static void receive(rep_worker *w)
{
    w->state = WORKER_RECV;
    nng_ctx_recv(w->ctx, w->aio);
}

static void take_next_request(rep_worker *w)
{
    nng_receiver *rx = w->rx;
    if (!cn_receiver_intake_paused(rx->self)) {
        receive(w);
        return;
    }
    cn_metric_inc(rx->intake_pauses);
    pthread_mutex_lock(&rx->park_lock);
    w->parked_since_ms = cn_mono_ms();
    w->next_parked = rx->parked;
    rx->parked = w;
    pthread_cond_signal(&rx->park_cond);
    pthread_mutex_unlock(&rx->park_lock);
}

/* Takes the parked contexts to send back to work off the list: all of them, or those parked past PAUSE_MAX_MS. */
static rep_worker *unpark(nng_receiver *rx, bool all, int64_t now)
{
    rep_worker *go = NULL, **link = &rx->parked;
    while (*link) {
        rep_worker *w = *link;
        if (all || now - w->parked_since_ms >= PAUSE_MAX_MS) {
            *link = w->next_parked;
            w->next_parked = go;
            go = w;
        } else {
            link = &w->next_parked;
        }
    }
    return go;
}

static void *resume_parked(void *arg)
{
    nng_receiver *rx = arg;
    pthread_mutex_lock(&rx->park_lock);
    while (!rx->resumer_stop) {
        if (!rx->parked) {
            pthread_cond_wait(&rx->park_cond, &rx->park_lock);
            continue;
        }
        int64_t oldest = INT64_MAX;
        for (rep_worker *w = rx->parked; w; w = w->next_parked)
            if (w->parked_since_ms < oldest)
                oldest = w->parked_since_ms;
        int64_t wait = oldest + PAUSE_MAX_MS - cn_mono_ms();
        if (wait > RESUMER_CHECK_MS)
            wait = RESUMER_CHECK_MS;
        pthread_mutex_unlock(&rx->park_lock);
        bool resumed = wait > 0 && cn_receiver_await_intake(rx->self, wait);
        pthread_mutex_lock(&rx->park_lock);
        rep_worker *go = unpark(rx, resumed, cn_mono_ms());
        pthread_mutex_unlock(&rx->park_lock);
        /* Resumed, or parked long enough: take the request (and answer what submit says). */
        while (go) {
            rep_worker *next = go->next_parked;
            go->next_parked = NULL;
            receive(go);
            go = next;
        }
        pthread_mutex_lock(&rx->park_lock);
    }
    pthread_mutex_unlock(&rx->park_lock);
    return NULL;
}

int nngrx_start_resumer(nng_receiver *rx)
{
    pthread_mutex_init(&rx->park_lock, NULL);
    pthread_cond_init(&rx->park_cond, NULL);
    rx->park_ready = true;
    if (pthread_create(&rx->resumer, NULL, resume_parked, rx) != 0)
        return -1;
    rx->resumer_started = true;
    return 0;
}

/* Contexts parked from here on stay parked: they hold no aio operation, so stopping their aios waits for nothing. */
void nngrx_stop_resumer(nng_receiver *rx)
{
    if (!rx->resumer_started)
        return;
    pthread_mutex_lock(&rx->park_lock);
    rx->resumer_stop = true;
    pthread_cond_signal(&rx->park_cond);
    pthread_mutex_unlock(&rx->park_lock);
    pthread_join(rx->resumer, NULL);
    rx->resumer_started = false;
}

/* After the workers' aios stopped: none parks any more. */
void nngrx_free_resumer(nng_receiver *rx)
{
    nngrx_stop_resumer(rx);
    if (!rx->park_ready)
        return;
    pthread_cond_destroy(&rx->park_cond);
    pthread_mutex_destroy(&rx->park_lock);
    rx->park_ready = false;
}

void nngrx_start_worker(rep_worker *w) { take_next_request(w); }

void nngrx_worker_cb(void *arg)
{
    rep_worker *w = arg;
    int rv = nng_aio_result(w->aio);
    if (w->state == WORKER_SEND) {
        if (rv != 0) {
            /* The agent went away before the reply; it will resend and be deduplicated. */
            nng_msg_free(nng_aio_get_msg(w->aio));
            nng_aio_set_msg(w->aio, NULL);
        }
        atomic_store(&w->send_since_ms, 0);
    } else if (rv == 0) {
        nng_msg *in = nng_aio_get_msg(w->aio);
        nng_pipe pipe = nng_msg_get_pipe(in);
        atomic_store(&w->pipe_id, (uint32_t)nng_pipe_id(pipe));
        char peer[64];
        nngrx_describe_peer(pipe, peer, sizeof peer);
        nng_msg *out = nngrx_handle_request(w->rx, nng_msg_body(in), nng_msg_len(in), peer);
        nng_msg_free(in);
        if (out) {
            w->state = WORKER_SEND;
            nng_aio_set_msg(w->aio, out);
            /* No aio timeout here: a ctx send timing out in nng 1.5.2's REP leaves
             * nng_close hanging; the timer closes the pipe instead (nngrx_reap_slow_readers). */
            atomic_store(&w->send_since_ms, cn_mono_ms());
            nng_ctx_send(w->ctx, w->aio);
            return;
        }
        /* No memory for a reply: the agent times out and resends. */
    } else if (rv == NNG_ECLOSED || rv == NNG_ECANCELED) {
        return; /* stopping */
    }
    take_next_request(w);
}

/* Closes the connections of replies pending longer than reply_timeout. */
void nngrx_reap_slow_readers(nng_receiver *rx)
{
    int64_t now = cn_mono_ms();
    for (size_t i = 0; i < rx->n_workers; i++) {
        rep_worker *w = &rx->workers[i];
        int64_t since = atomic_load(&w->send_since_ms);
        /* The exchange makes sure one stuck reply closes its pipe once. */
        if (since && now - since >= rx->reply_timeout &&
            atomic_compare_exchange_strong(&w->send_since_ms, &since, 0)) {
            nng_pipe p = NNG_PIPE_INITIALIZER;
            p.id = atomic_load(&w->pipe_id);
            close_slow_reader(rx, p);
        }
    }
}
