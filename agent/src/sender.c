/*
 * The sender: one native thread that keeps up to `window` requests in flight
 * over nng REQ contexts, waits for each Reply, and resends what was not
 * acked, with a doubling (capped, jittered) delay.
 *
 * Threads and ownership:
 *  - the sender thread owns the queues' logic: it picks requests for idle
 *    contexts, starts the send, and judges every finished attempt;
 *  - nng's aio callbacks only chain send -> recv and then mark the context
 *    DONE and wake the thread, so every decision happens in one place;
 *  - submitters only append to a queue under the mutex, never call nng.
 * A resend is the very same bytes (same batch_seq), so the collector's
 * (instance, session, batch_seq) deduplication makes resending safe.
 *
 * A connection can go silent without closing: nng 1.5 has been seen to leave
 * a REQ socket sending into a connection that never answers after the
 * collector was killed and restarted. So when RESET_AFTER_SILENT attempts in a
 * row got no reply and nothing was heard for as many timeouts, the thread
 * lets the attempts in flight finish and then closes and reopens the socket,
 * which dials a fresh connection. Against a collector that is simply down
 * this costs a redial every few timeouts.
 *
 * At some 700 lines this is one thing: the sections below (queues, the nng
 * side, judging an attempt, dialing, the thread) all serve that one thread's
 * loop and share its state under one mutex.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/tls/tls.h>

#include "internal.h"
#include "pem.h"

#define CN_AG_MAX_WINDOW 256u
#define CN_AG_MAX_CONTROL 256u /* queued control requests (queries, finish reports) */
#define RESET_AFTER_SILENT 3u  /* attempts in a row without a reply before the socket is reopened */

typedef struct cn_ag_req {
    struct cn_ag_req *next;
    cn_ag_kind kind;
    uint8_t *bytes;
    size_t len;
    uint64_t seq;
    uint32_t count;
    uint32_t attempts;  /* attempts started */
    int64_t not_before; /* monotonic ms; resend delay */
} cn_ag_req;

typedef struct cn_ag_queue {
    cn_ag_req *head, *tail;
    size_t n;
} cn_ag_queue;

enum { SLOT_IDLE = 0, SLOT_SEND, SLOT_RECV, SLOT_DONE };

typedef struct cn_ag_slot {
    cn_sender *s;
    nng_ctx ctx;
    nng_aio *aio;
    cn_ag_req *req;   /* the request of the attempt in flight */
    atomic_int phase; /* written by the callback while in flight */
    int result;       /* nng error of a DONE attempt */
    nng_msg *reply;   /* reply of a DONE attempt, or NULL */
} cn_ag_slot;

struct cn_sender {
    cn_sender_options o;
    char *url;
    cn_ag_done_fn done;
    void *done_arg;

    pthread_mutex_t mu;
    pthread_cond_t cv;      /* wakes the sender thread */
    pthread_cond_t idle_cv; /* signalled when nothing is pending */
    bool mu_ok, cv_ok, idle_ok;
    pthread_t thread;
    bool thread_ok;
    bool stopping;
    bool wake; /* a wakeup that arrived while the thread was busy */

    nng_socket sock;
    bool sock_open;
    nng_tls_config *tls; /* for tls+tcp:// URLs; kept to redial after a reset */
    unsigned silent;     /* attempts in a row that ended without a reply */
    int64_t last_heard_ms; /* the last reply, or the last reset */
    cn_ag_slot *slots;
    unsigned n_slots;

    cn_ag_queue ctl;   /* queries and finish reports go first: they are small */
    cn_ag_queue data;  /* batches */
    size_t pending;    /* requests alive: queued, in flight or being judged */
    cn_send_stats st;
    atomic_uint_least64_t buffered;
    uint64_t rng;
};

/* ---- queues ---- */

static void q_push_back(cn_ag_queue *q, cn_ag_req *r)
{
    r->next = NULL;
    if (q->tail)
        q->tail->next = r;
    else
        q->head = r;
    q->tail = r;
    q->n++;
}

/* A resend goes back to the front: batches keep their order as far as
 * possible, which keeps every segment's sequences arriving in order. */
static void q_push_front(cn_ag_queue *q, cn_ag_req *r)
{
    r->next = q->head;
    q->head = r;
    if (!q->tail)
        q->tail = r;
    q->n++;
}

static cn_ag_req *q_pop(cn_ag_queue *q)
{
    cn_ag_req *r = q->head;
    if (r) {
        q->head = r->next;
        if (!q->head)
            q->tail = NULL;
        q->n--;
        r->next = NULL;
    }
    return r;
}

static void req_free(cn_ag_req *r)
{
    if (r) {
        free(r->bytes);
        free(r);
    }
}

/* ---- options ---- */

void cn_sender_options_init(cn_sender_options *o)
{
    memset(o, 0, sizeof(*o));
    o->window = 4;
    o->timeout_ms = 5000;
    o->backoff_min_ms = 50;
    o->backoff_max_ms = 5000;
    o->max_attempts = 0;
    o->max_buffered_bytes = 8u << 20;
}

static void options_fix(cn_sender_options *o)
{
    if (o->window == 0)
        o->window = 4;
    if (o->window > CN_AG_MAX_WINDOW)
        o->window = CN_AG_MAX_WINDOW;
    if (o->timeout_ms == 0)
        o->timeout_ms = 5000;
    if (o->backoff_min_ms == 0)
        o->backoff_min_ms = 50;
    if (o->backoff_max_ms < o->backoff_min_ms)
        o->backoff_max_ms = o->backoff_min_ms;
    if (o->max_buffered_bytes == 0)
        o->max_buffered_bytes = 8u << 20;
}

/* ---- nng side ---- */

/* Runs on an nng thread. Chains the reply wait after a successful send;
 * anything else finishes the attempt and hands it to the sender thread. */
static void slot_cb(void *arg)
{
    cn_ag_slot *sl = arg;
    cn_sender *s = sl->s;
    int rv = nng_aio_result(sl->aio);
    nng_msg *reply = NULL;

    if (atomic_load(&sl->phase) == SLOT_SEND) {
        if (rv == 0) {
            atomic_store(&sl->phase, SLOT_RECV);
            nng_ctx_recv(sl->ctx, sl->aio);
            return;
        }
        /* A failed send leaves the message with us. */
        nng_msg *m = nng_aio_get_msg(sl->aio);
        nng_aio_set_msg(sl->aio, NULL);
        if (m)
            nng_msg_free(m);
    } else if (rv == 0) {
        reply = nng_aio_get_msg(sl->aio);
        nng_aio_set_msg(sl->aio, NULL);
    }
    pthread_mutex_lock(&s->mu);
    sl->result = rv;
    sl->reply = reply;
    atomic_store(&sl->phase, SLOT_DONE);
    s->wake = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Starts one attempt; called without the lock. */
static void slot_start(cn_ag_slot *sl)
{
    cn_sender *s = sl->s;
    nng_msg *m = NULL;
    int rv = nng_msg_alloc(&m, sl->req->len);
    if (rv == 0) {
        memcpy(nng_msg_body(m), sl->req->bytes, sl->req->len);
        nng_aio_set_msg(sl->aio, m);
        nng_aio_set_timeout(sl->aio, (nng_duration)s->o.timeout_ms);
        nng_ctx_send(sl->ctx, sl->aio);
        return;
    }
    pthread_mutex_lock(&s->mu);
    sl->result = rv;
    sl->reply = NULL;
    atomic_store(&sl->phase, SLOT_DONE);
    s->wake = true;
    pthread_mutex_unlock(&s->mu);
}

/* ---- judging an attempt ---- */

static uint32_t backoff_ms(cn_sender *s, uint32_t attempts)
{
    uint32_t shift = attempts > 1 ? attempts - 1 : 0;
    uint64_t d = (uint64_t)s->o.backoff_min_ms << (shift > 20 ? 20 : shift);
    if (d > s->o.backoff_max_ms)
        d = s->o.backoff_max_ms;
    /* +-25% jitter so a fleet of workers does not resend in lockstep. */
    s->rng ^= s->rng << 13;
    s->rng ^= s->rng >> 7;
    s->rng ^= s->rng << 17;
    uint64_t span = d / 2;
    if (span)
        d = d - d / 4 + s->rng % span;
    return (uint32_t)(d ? d : 1);
}

static bool reason_retryable(const Canopy__V1__Reply *r)
{
    return r->retryable || r->reason == CANOPY__V1__REASON__REASON_OVERLOADED ||
           r->reason == CANOPY__V1__REASON__REASON_SHUTTING_DOWN;
}

/* Called by the sender thread without the lock, for one finished attempt. */
static void attempt_finish(cn_sender *s, cn_ag_req *req, int rv, nng_msg *msg)
{
    Canopy__V1__Reply *reply = NULL;
    bool acked = false, retry = false, duplicate = false;

    if (rv == 0 && msg)
        reply = canopy__v1__reply__unpack(NULL, nng_msg_len(msg), nng_msg_body(msg));
    if (msg)
        nng_msg_free(msg);

    if (!reply) {
        retry = true; /* timeout, transport error, or a reply we cannot read */
    } else if (req->kind == CN_AG_BATCH && reply->batch_seq != 0 && reply->batch_seq != req->seq) {
        /* REQ matches replies to requests by id, so this never happens
         * with a sane collector; an ack for another batch is no ack. */
        retry = true;
    } else if (reply->reason == CANOPY__V1__REASON__REASON_OK ||
               reply->reason == CANOPY__V1__REASON__REASON_DUPLICATE) {
        acked = true;
        duplicate = reply->reason == CANOPY__V1__REASON__REASON_DUPLICATE;
    } else {
        retry = reason_retryable(reply);
    }
    /* A query is asked again by the next poll, so it is never resent. */
    if (retry && (req->kind == CN_AG_QUERY || (s->o.max_attempts && req->attempts >= s->o.max_attempts)))
        retry = false;

    if (!retry && s->done)
        s->done(s->done_arg, req->kind, acked ? CN_AG_ACKED : CN_AG_DROPPED, req->count, reply);
    if (reply)
        canopy__v1__reply__free_unpacked(reply, NULL);

    pthread_mutex_lock(&s->mu);
    if (!acked)
        s->st.errors++;
    if (rv == 0 && msg) {
        s->silent = 0;
        s->last_heard_ms = cn_ag_mono_ms(); /* and a pending reset is off: it answers after all */
    } else {
        s->silent++;
    }
    if (retry) {
        req->not_before = cn_ag_mono_ms() + backoff_ms(s, req->attempts);
        q_push_front(req->kind == CN_AG_BATCH ? &s->data : &s->ctl, req);
        pthread_mutex_unlock(&s->mu);
        return;
    }
    if (req->kind == CN_AG_BATCH) {
        if (acked) {
            s->st.batches_acked++;
            if (duplicate)
                s->st.batches_duplicate++;
        } else {
            s->st.batches_dropped++;
        }
    }
    atomic_fetch_sub(&s->buffered, req->len);
    if (--s->pending == 0)
        pthread_cond_broadcast(&s->idle_cv);
    pthread_mutex_unlock(&s->mu);
    req_free(req);
}

/* ---- dialing ---- */

/* The client TLS config for a tls+tcp:// URL: verify the collector against
 * tls_ca_file (required: an unverified TLS peer could be anyone), present the
 * client certificate when one is given. */
static int tls_config_new(const cn_sender_options *o, const char *url, nng_tls_config **out)
{
    if (!o->tls_ca_file || (o->tls_cert_file == NULL) != (o->tls_key_file == NULL))
        return -CN_EINVAL;
    nng_tls_config *cfg = NULL;
    if (nng_tls_config_alloc(&cfg, NNG_TLS_MODE_CLIENT) != 0)
        return -CN_ENOMEM;
    int rv = nng_tls_config_ca_file(cfg, o->tls_ca_file);
    if (rv == 0)
        rv = nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_REQUIRED);
    /* The name the collector's certificate must carry: given, or the URL's host. */
    char host[256] = "";
    if (rv == 0 && !o->tls_server_name) {
        const char *h = strstr(url, "://");
        h = h ? h + 3 : url;
        const char *end = h[0] == '[' ? strchr(h, ']') : strrchr(h, ':');
        if (h[0] == '[' && end)
            h++;
        size_t n = end ? (size_t)(end - h) : strlen(h);
        if (n < sizeof(host)) {
            memcpy(host, h, n);
            host[n] = '\0';
        }
    }
    const char *name = o->tls_server_name ? o->tls_server_name : host;
    if (rv == 0 && name[0])
        rv = nng_tls_config_server_name(cfg, name);
    if (rv == 0 && o->tls_cert_file) {
        char *cert = cn_pem_read(o->tls_cert_file, NULL);
        char *key = cert ? cn_pem_read(o->tls_key_file, NULL) : NULL;
        rv = cert && key ? nng_tls_config_own_cert(cfg, cert, key, NULL) : NNG_ENOENT;
        cn_pem_free_secret(key);
        free(cert);
    }
    if (rv == 0 && nng_tls_config_version(cfg, NNG_TLS_1_2, NNG_TLS_1_3) != 0)
        rv = nng_tls_config_version(cfg, NNG_TLS_1_2, NNG_TLS_1_2);
    if (rv != 0) {
        nng_tls_config_free(cfg);
        return rv == NNG_ENOMEM ? -CN_ENOMEM : -CN_EINVAL;
    }
    *out = cfg;
    return 0;
}

/* Opens the REQ socket and its contexts and dials in the background (the
 * collector may start later; nng keeps redialling), with s->tls for
 * tls+tcp:// URLs. Used at start and by a reset. */
static int socket_open(cn_sender *s)
{
    if (nng_req0_open(&s->sock) != 0)
        return -CN_ENNG;
    s->sock_open = true;
    /* Find a restarted collector quickly; our own timeout does the resends. */
    nng_socket_set_ms(s->sock, NNG_OPT_RECONNMINT, 50);
    nng_socket_set_ms(s->sock, NNG_OPT_RECONNMAXT, 1000);
    for (unsigned i = 0; i < s->n_slots; i++)
        if (nng_ctx_open(&s->slots[i].ctx, s->sock) != 0)
            return -CN_ENNG;
    nng_dialer d;
    if (nng_dialer_create(&d, s->sock, s->url) != 0)
        return -CN_EINVAL;
    if (s->tls && nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, s->tls) != 0) {
        nng_dialer_close(d);
        return -CN_ENNG;
    }
    if (nng_dialer_start(d, NNG_FLAG_NONBLOCK) != 0) {
        nng_dialer_close(d);
        return -CN_EINVAL;
    }
    return 0;
}

/* Due when enough attempts in a row went unanswered for long enough. */
static bool reset_due(const cn_sender *s, int64_t now)
{
    int64_t quiet = (int64_t)s->o.timeout_ms * RESET_AFTER_SILENT;
    return s->silent >= RESET_AFTER_SILENT && now - s->last_heard_ms >= quiet;
}

/* Reopens the socket; called by the sender thread, without the lock, while no
 * attempt is in flight (every slot IDLE, so no aio is pending). */
static void socket_reset(cn_sender *s)
{
    /* A slot turns IDLE just after its callback's last lines: let them end. */
    for (unsigned i = 0; i < s->n_slots; i++)
        nng_aio_wait(s->slots[i].aio);
    if (s->sock_open)
        nng_close(s->sock); /* closes the contexts too */
    s->sock_open = false;
    /* On failure the contexts stay closed: attempts fail at once, count as
     * silent, and the next reset tries again. */
    socket_open(s);
}

/* ---- the thread ---- */

/* Next request whose resend delay has passed; *wait_until gets the earliest
 * time a delayed head becomes ready. */
static cn_ag_req *pick(cn_sender *s, int64_t now, int64_t *wait_until)
{
    cn_ag_queue *qs[2] = {&s->ctl, &s->data};
    for (int i = 0; i < 2; i++) {
        cn_ag_req *h = qs[i]->head;
        if (!h)
            continue;
        if (h->not_before <= now)
            return q_pop(qs[i]);
        if (h->not_before < *wait_until)
            *wait_until = h->not_before;
    }
    return NULL;
}

static void *sender_main(void *arg)
{
    cn_sender *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        s->wake = false;
        for (unsigned i = 0; i < s->n_slots; i++) {
            cn_ag_slot *sl = &s->slots[i];
            if (atomic_load(&sl->phase) != SLOT_DONE)
                continue;
            cn_ag_req *req = sl->req;
            int rv = sl->result;
            nng_msg *msg = sl->reply;
            sl->req = NULL;
            sl->reply = NULL;
            atomic_store(&sl->phase, SLOT_IDLE);
            pthread_mutex_unlock(&s->mu);
            attempt_finish(s, req, rv, msg);
            pthread_mutex_lock(&s->mu);
        }
        if (s->stopping)
            break;

        int64_t now = cn_ag_mono_ms();
        int64_t wait_until = INT64_MAX;
        /* Once due, it stays due until a reply or the reset: no new attempts meanwhile. */
        if (reset_due(s, now)) {
            bool in_flight = false;
            for (unsigned i = 0; i < s->n_slots; i++)
                in_flight |= atomic_load(&s->slots[i].phase) != SLOT_IDLE;
            if (in_flight) {
                /* Their timeouts end them; each completion wakes us. */
                if (!s->wake)
                    pthread_cond_wait(&s->cv, &s->mu);
                continue;
            }
            pthread_mutex_unlock(&s->mu);
            socket_reset(s);
            pthread_mutex_lock(&s->mu);
            s->silent = 0;
            s->last_heard_ms = cn_ag_mono_ms();
            s->st.socket_resets++;
        }
        for (unsigned i = 0; i < s->n_slots; i++) {
            cn_ag_slot *sl = &s->slots[i];
            if (atomic_load(&sl->phase) != SLOT_IDLE)
                continue;
            cn_ag_req *req = pick(s, now, &wait_until);
            if (!req)
                break;
            req->attempts++;
            s->st.requests_sent++;
            s->st.bytes_sent += req->len;
            if (req->kind == CN_AG_BATCH) {
                if (req->attempts == 1)
                    s->st.batches_sent++;
                else
                    s->st.batches_resent++;
            }
            sl->req = req;
            atomic_store(&sl->phase, SLOT_SEND);
            pthread_mutex_unlock(&s->mu);
            slot_start(sl);
            pthread_mutex_lock(&s->mu);
        }

        if (s->wake || s->stopping)
            continue;
        if (wait_until == INT64_MAX) {
            pthread_cond_wait(&s->cv, &s->mu);
        } else {
            struct timespec ts = cn_ag_deadline(wait_until);
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- lifecycle ---- */

/* The one destroy path, for a fully or partly made sender. */
static void sender_destroy(cn_sender *s)
{
    if (s->thread_ok) {
        pthread_mutex_lock(&s->mu);
        s->stopping = true;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    /* Stop every aio BEFORE closing the socket: nng 1.5 panics (a freed
     * mutex) when a socket is closed under a pending context send, which is
     * the normal state while the collector is away. A stopped aio refuses
     * the receive its callback may chain, so afterwards none is ours. */
    for (unsigned i = 0; s->slots && i < s->n_slots; i++)
        if (s->slots[i].aio)
            nng_aio_stop(s->slots[i].aio);
    if (s->sock_open)
        nng_close(s->sock);
    for (unsigned i = 0; s->slots && i < s->n_slots; i++) {
        cn_ag_slot *sl = &s->slots[i];
        if (sl->aio)
            nng_aio_free(sl->aio);
        if (sl->reply)
            nng_msg_free(sl->reply);
        if (sl->req) {
            if (sl->req->kind == CN_AG_BATCH)
                s->st.batches_dropped++;
            req_free(sl->req);
        }
    }
    cn_ag_req *r;
    while ((r = q_pop(&s->ctl)) != NULL)
        req_free(r);
    while ((r = q_pop(&s->data)) != NULL) {
        s->st.batches_dropped++;
        req_free(r);
    }
    if (s->tls)
        nng_tls_config_free(s->tls);
    free(s->slots);
    free(s->url);
    if (s->idle_ok)
        pthread_cond_destroy(&s->idle_cv);
    if (s->cv_ok)
        pthread_cond_destroy(&s->cv);
    if (s->mu_ok)
        pthread_mutex_destroy(&s->mu);
    free(s);
}

int cn_ag_sender_new(const cn_sender_options *o, cn_ag_done_fn done, void *arg, cn_sender **out)
{
    if (!o || !o->url || !out)
        return -CN_EINVAL;
    *out = NULL;
    cn_sender *s = calloc(1, sizeof(*s));
    if (!s)
        return -CN_ENOMEM;
    s->o = *o;
    options_fix(&s->o);
    s->done = done;
    s->done_arg = arg;
    s->rng = cn_session_random();
    s->url = cn_ag_strdup(o->url);
    s->o.url = s->url;
    s->n_slots = s->o.window;
    s->slots = calloc(s->n_slots, sizeof(*s->slots));
    int rv = -CN_ENOMEM;
    if (!s->url || !s->slots)
        goto fail;
    if (!(s->mu_ok = pthread_mutex_init(&s->mu, NULL) == 0) || !(s->cv_ok = cn_ag_cond_init(&s->cv) == 0) ||
        !(s->idle_ok = cn_ag_cond_init(&s->idle_cv) == 0))
        goto fail;

    bool tls = strncmp(s->url, "tls+", 4) == 0;
    /* TLS files with a plain URL would silently send in clear: refuse. */
    rv = -CN_EINVAL;
    if (!tls && (o->tls_ca_file || o->tls_cert_file || o->tls_key_file || o->tls_server_name))
        goto fail;
    cn_ag_nng_mark_started();
    if (tls && (rv = tls_config_new(o, s->url, &s->tls)) != 0)
        goto fail;
    /* The TLS files were read; keep no pointers to the caller's strings. */
    s->o.tls_ca_file = s->o.tls_cert_file = s->o.tls_key_file = s->o.tls_server_name = NULL;
    rv = -CN_ENNG;
    for (unsigned i = 0; i < s->n_slots; i++) {
        cn_ag_slot *sl = &s->slots[i];
        sl->s = s;
        if (nng_aio_alloc(&sl->aio, slot_cb, sl) != 0)
            goto fail;
    }
    if ((rv = socket_open(s)) != 0)
        goto fail;
    s->last_heard_ms = cn_ag_mono_ms();
    /* Set before the thread exists: it shares a word with fields the thread
     * reads, and pthread_create orders this write before them. */
    s->thread_ok = true;
    if (pthread_create(&s->thread, NULL, sender_main, s) != 0) {
        s->thread_ok = false;
        rv = -CN_ENOMEM;
        goto fail;
    }
    *out = s;
    return 0;
fail:
    sender_destroy(s);
    return rv;
}

int cn_sender_new(const cn_sender_options *o, cn_sender **out)
{
    return cn_ag_sender_new(o, NULL, NULL, out);
}

void cn_sender_free(cn_sender *s)
{
    if (s)
        sender_destroy(s);
}

int cn_ag_sender_submit(cn_sender *s, cn_ag_kind kind, uint8_t *bytes, size_t len, uint64_t seq,
                        uint32_t count)
{
    cn_ag_req *r = calloc(1, sizeof(*r));
    pthread_mutex_lock(&s->mu);
    int rv = 0;
    if (!r)
        rv = -CN_ENOMEM;
    else if (s->stopping)
        rv = -CN_ECLOSED;
    else if (kind == CN_AG_BATCH && atomic_load(&s->buffered) + len > s->o.max_buffered_bytes)
        rv = -CN_EFULL;
    else if (kind != CN_AG_BATCH && s->ctl.n >= CN_AG_MAX_CONTROL)
        rv = -CN_EFULL;
    if (rv != 0) {
        if (kind == CN_AG_BATCH)
            s->st.batches_dropped++;
        else
            s->st.errors++;
        pthread_mutex_unlock(&s->mu);
        free(r);
        free(bytes);
        return rv;
    }
    *r = (cn_ag_req){.kind = kind, .bytes = bytes, .len = len, .seq = seq, .count = count};
    q_push_back(kind == CN_AG_BATCH ? &s->data : &s->ctl, r);
    atomic_fetch_add(&s->buffered, len);
    s->pending++;
    s->wake = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int cn_sender_submit(cn_sender *s, const void *bytes, size_t len, uint64_t batch_seq)
{
    if (!s || (!bytes && len))
        return -CN_EINVAL;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) {
        pthread_mutex_lock(&s->mu);
        s->st.batches_dropped++;
        pthread_mutex_unlock(&s->mu);
        return -CN_ENOMEM;
    }
    if (len)
        memcpy(copy, bytes, len);
    return cn_ag_sender_submit(s, CN_AG_BATCH, copy, len, batch_seq, 0);
}

uint64_t cn_ag_sender_buffered(cn_sender *s)
{
    return atomic_load(&s->buffered);
}

int cn_sender_wait_idle(cn_sender *s, uint32_t timeout_ms)
{
    if (!s)
        return -CN_EINVAL;
    int64_t deadline = cn_ag_mono_ms() + timeout_ms;
    struct timespec ts = cn_ag_deadline(deadline);
    pthread_mutex_lock(&s->mu);
    while (s->pending > 0 && cn_ag_mono_ms() < deadline)
        pthread_cond_timedwait(&s->idle_cv, &s->mu, &ts);
    int rv = s->pending == 0 ? 0 : -CN_ETIMEDOUT;
    pthread_mutex_unlock(&s->mu);
    return rv;
}

void cn_sender_stats(cn_sender *s, cn_send_stats *out)
{
    if (!s || !out)
        return;
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    out->requests_pending = s->pending;
    pthread_mutex_unlock(&s->mu);
    out->bytes_buffered = atomic_load(&s->buffered);
}
