/*
 * The agent's native thread: flushes batches by age, encodes sealed batches,
 * polls for commands, and feeds the sender. It is a pthread, not a greenlet,
 * so gevent's monkey-patching never reaches it. nng is started here, on the
 * first thing to send, never on the app's threads.
 */
#include <stdlib.h>
#include <string.h>

#include "agent_internal.h"

/* Sender callback (sender thread, no sender lock held). */
static void on_done(void *arg, cn_ag_kind kind, cn_ag_outcome outcome, uint32_t count,
                    const Canopy__V1__Reply *reply)
{
    cn_ag_state *st = arg;
    pthread_mutex_lock(&st->mu);
    if (kind == CN_AG_BATCH && outcome == CN_AG_DROPPED)
        st->snapshots_dropped += count;
    if (kind == CN_AG_QUERY && outcome == CN_AG_ACKED && reply &&
        cn_ag_commands_merge(st->cmds, &st->n_cmds, CN_AGENT_MAX_COMMANDS, reply,
                             &st->last_command_time, &st->commands_received))
        st->cmd_version++;
    pthread_mutex_unlock(&st->mu);
}

/* Makes the sender (and so starts nng) on first need; false if unusable. */
static bool sender_ensure(cn_ag_state *st)
{
    if (st->sender)
        return true;
    if (st->disabled)
        return false;
    int64_t now = cn_ag_mono_ms();
    if (now < st->sender_retry_at)
        return false;
    const cn_agent_options *o = &st->agent->o;
    cn_sender_options so;
    cn_sender_options_init(&so);
    so.url = o->url;
    so.window = o->window;
    so.timeout_ms = o->timeout_ms;
    so.backoff_min_ms = o->backoff_min_ms;
    so.backoff_max_ms = o->backoff_max_ms;
    so.max_buffered_bytes = o->max_buffered_bytes;
    so.tls_ca_file = o->tls_ca_file;
    so.tls_cert_file = o->tls_cert_file;
    so.tls_key_file = o->tls_key_file;
    so.tls_server_name = o->tls_server_name;
    cn_sender *s = NULL;
    int rv = cn_ag_sender_new(&so, on_done, st, &s);
    pthread_mutex_lock(&st->mu);
    if (rv == 0) {
        st->sender = s;
    } else {
        st->errors++;
        st->sender_retry_at = now + 1000;
    }
    pthread_mutex_unlock(&st->mu);
    return rv == 0;
}

static void send_batch(cn_ag_state *st, cn_builder *b, bool have_sender)
{
    size_t n = cn_builder_snapshots(b);
    size_t est = cn_builder_size(b);
    uint8_t *bytes = NULL;
    size_t len = 0;
    /* Only this thread (or cn_agent_free after joining it) uses next_seq. */
    uint64_t seq = st->next_seq;
    /* The mode goes with each batch: the app may switch it after start. */
    cn_identity id = st->id;
    id.mode = atomic_load(&st->agent->mode);
    int rv = have_sender ? cn_builder_encode(b, &id, seq, &bytes, &len) : -CN_ECLOSED;
    bool encoded = rv == 0;
    if (encoded)
        rv = cn_ag_sender_submit(st->sender, CN_AG_BATCH, bytes, len, seq, (uint32_t)n);
    pthread_mutex_lock(&st->mu);
    if (encoded)
        st->next_seq = seq + 1;
    st->sealed_bytes -= est;
    if (rv != 0) {
        st->snapshots_dropped += n;
        if (!encoded) /* the sender counts the batches it refused */
            st->batches_dropped++;
    }
    cn_ag_recycle_locked(st, b);
    pthread_mutex_unlock(&st->mu);
}

static void send_control(cn_ag_state *st, cn_ag_kind kind, const char *task_id, int64_t last,
                         bool have_sender)
{
    uint8_t *bytes = NULL;
    size_t len = 0;
    int rv = -CN_ECLOSED;
    if (have_sender) {
        rv = kind == CN_AG_QUERY ? cn_encode_command_query(&st->id, last, &bytes, &len)
                                 : cn_encode_task_finish(&st->id, task_id, &bytes, &len);
        if (rv == 0)
            rv = cn_ag_sender_submit(st->sender, kind, bytes, len, 0, 0);
    }
    pthread_mutex_lock(&st->mu);
    if (rv != 0 && rv != -CN_EFULL) /* the sender counts what it refused */
        st->errors++;
    if (rv == 0 && kind == CN_AG_QUERY)
        st->command_queries++;
    pthread_mutex_unlock(&st->mu);
}

void cn_ag_agent_work(cn_ag_state *st, bool poll)
{
    cn_builder *sealed[CN_AG_SEALED_MAX];
    char *finish[CN_AG_FINISH_MAX];
    pthread_mutex_lock(&st->mu);
    size_t n_sealed = st->n_sealed, n_finish = st->n_finish;
    memcpy(sealed, st->sealed, n_sealed * sizeof(*sealed));
    memcpy(finish, st->finish, n_finish * sizeof(*finish));
    st->n_sealed = 0;
    st->n_finish = 0;
    int64_t last = st->last_command_time;
    pthread_mutex_unlock(&st->mu);

    if (n_sealed == 0 && n_finish == 0 && !poll)
        return;
    bool have_sender = sender_ensure(st);
    for (size_t i = 0; i < n_finish; i++) {
        send_control(st, CN_AG_FINISH, finish[i], 0, have_sender);
        free(finish[i]);
    }
    for (size_t i = 0; i < n_sealed; i++)
        send_batch(st, sealed[i], have_sender);
    if (poll)
        send_control(st, CN_AG_QUERY, NULL, last, have_sender);
}

void *cn_ag_agent_main(void *arg)
{
    cn_ag_state *st = arg;
    const cn_agent_options *o = &st->agent->o;
    pthread_mutex_lock(&st->mu);
    st->next_poll = cn_ag_mono_ms(); /* ask for commands as soon as we run */
    while (!st->stopping) {
        int64_t now = cn_ag_mono_ms();
        if (st->cur_since && now - st->cur_since >= (int64_t)o->max_batch_age_ms)
            cn_ag_seal_locked(st);
        bool poll = st->poll_now || (o->command_poll_ms && now >= st->next_poll);
        if (poll) {
            st->poll_now = false;
            st->next_poll = now + (o->command_poll_ms ? o->command_poll_ms : 0);
        }
        pthread_mutex_unlock(&st->mu);
        cn_ag_agent_work(st, poll);
        pthread_mutex_lock(&st->mu);
        if (st->stopping || st->n_sealed || st->n_finish || st->poll_now)
            continue;

        int64_t wake = INT64_MAX;
        if (st->cur_since)
            wake = st->cur_since + o->max_batch_age_ms;
        if (o->command_poll_ms && st->next_poll < wake)
            wake = st->next_poll;
        /* Without a sender yet, retry making one when it is due. */
        if (!st->sender && !st->disabled && st->sender_retry_at && st->sender_retry_at < wake &&
            (st->cur_since || st->n_sealed))
            wake = st->sender_retry_at;
        if (wake == INT64_MAX) {
            pthread_cond_wait(&st->cv, &st->mu);
        } else {
            struct timespec ts = cn_ag_deadline(wake);
            pthread_cond_timedwait(&st->cv, &st->mu, &ts);
        }
    }
    pthread_mutex_unlock(&st->mu);
    cn_ag_agent_work(st, false); /* what cn_agent_free sealed last */
    return NULL;
}
