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
 * While the service is over memory_limit a context waits before it takes a
 * request, PAUSE_STEP_MS at a time: the agents' requests wait in their
 * connections (nng reads no more from a pipe whose request nobody took), and
 * nothing is decoded only to be refused. Under a load the exporters can carry
 * the pause lasts a few ms; past PAUSE_MAX_MS (an exporter stuck, no spool)
 * the context takes the request and refuses it 'overloaded' as before, so the
 * agents hear why long before their own attempt timeouts.
 */
enum { PAUSE_STEP_MS = 5, PAUSE_MAX_MS = 250 };

static void take_next_request(rep_worker *w)
{
    if (w->paused_ms < PAUSE_MAX_MS && cn_receiver_intake_paused(w->rx->self)) {
        if (w->paused_ms == 0)
            cn_metric_inc(w->rx->intake_pauses);
        w->state = WORKER_PAUSE;
        w->paused_ms += PAUSE_STEP_MS;
        nng_sleep_aio(PAUSE_STEP_MS, w->aio);
        return;
    }
    w->paused_ms = 0;
    w->state = WORKER_RECV;
    nng_ctx_recv(w->ctx, w->aio);
}

void nngrx_start_worker(rep_worker *w)
{
    w->paused_ms = 0;
    take_next_request(w);
}

void nngrx_worker_cb(void *arg)
{
    rep_worker *w = arg;
    int rv = nng_aio_result(w->aio);
    if (w->state == WORKER_PAUSE) {
        if (rv == 0)
            take_next_request(w); /* the wait is over, or it waits another step */
        return;                   /* cancelled: stopping */
    }
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
