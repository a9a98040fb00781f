/*
 * nng_close with a deadline, on a thread of its own: nng 1.5.2 can deadlock
 * in nng_close after a flood (see below), and the collector must still drain
 * what it acked.
 */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "nng_receiver.h"

/* Longest wait for nng_close; see nngrx_close_socket. */
#define CLOSE_TIMEOUT_MS 3000

typedef struct closer {
    nng_socket sock;
    pthread_mutex_t lock;
    pthread_cond_t cv;
    bool done;
    bool abandoned; /* the waiter left: the closer thread frees this */
} closer;

static void *closer_main(void *arg)
{
    closer *c = arg;
    nng_close(c->sock);
    pthread_mutex_lock(&c->lock);
    c->done = true;
    bool abandoned = c->abandoned;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->lock);
    if (abandoned) {
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->cv);
        free(c);
    }
    return NULL;
}

/*
 * nng_close with a deadline. nng 1.5.2 can deadlock in nng_close after a
 * flood of pipelined requests whose peers went away (nng issues #1543,
 * #1813, fixed in later releases): the tests/chaos hostile_agent test hit it.
 * The collector must still drain what it acked, so after CLOSE_TIMEOUT_MS we
 * log it and go on; the listeners are already closed, so nothing new comes
 * in. Returns false when the close was abandoned.
 */
bool nngrx_close_socket(nng_receiver *rx)
{
    closer *c = calloc(1, sizeof *c);
    pthread_t t;
    if (!c || pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c);
        nng_close(rx->sock); /* no memory for the watchdog: plain close */
        return true;
    }
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int cv_rv = pthread_cond_init(&c->cv, &attr);
    pthread_condattr_destroy(&attr);
    c->sock = rx->sock;
    if (cv_rv != 0 || pthread_create(&t, NULL, closer_main, c) != 0) {
        if (cv_rv == 0)
            pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->lock);
        free(c);
        nng_close(rx->sock);
        return true;
    }
    struct timespec deadline = cn_deadline_after(CLOCK_MONOTONIC, CLOSE_TIMEOUT_MS);
    pthread_mutex_lock(&c->lock);
    while (!c->done && pthread_cond_timedwait(&c->cv, &c->lock, &deadline) == 0)
        ;
    bool done = c->done;
    if (!done)
        c->abandoned = true;
    pthread_mutex_unlock(&c->lock);
    if (done) {
        pthread_join(t, NULL);
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->lock);
        free(c);
        return true;
    }
    pthread_detach(t);
    cn_metric_inc(cn_counter("canopy_receiver_close_abandoned_total",
                             "Receiver shutdowns that went on without nng_close returning (an nng 1.5 deadlock).",
                             cn_component_labels(rx->self)));
    cn_error(cn_component_id(rx->self),
             "nng did not close the socket within %d ms (a known nng 1.5 deadlock after a flood); going on "
             "with the shutdown without it: nothing more is received, what was acked is still drained",
             CLOSE_TIMEOUT_MS);
    return false;
}
