/*
 * The agent: the calls a worker makes, all of them short. Adding a snapshot
 * interns and copies under the agent mutex and, when the batch is full,
 * moves a pointer; encoding and nng happen on the agent's own threads.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_internal.h"

void cn_agent_options_init(cn_agent_options *o)
{
    memset(o, 0, sizeof(*o));
    o->url = access(CN_AGENT_SERVICE_SOCKET, F_OK) == 0 ? CN_AGENT_SERVICE_URL : CN_AGENT_DEFAULT_URL;
    o->max_batch_snapshots = 256;
    o->max_batch_age_ms = 200;
    o->max_batch_bytes = 1u << 20;
    o->window = 4;
    o->timeout_ms = 5000;
    o->backoff_min_ms = 50;
    o->backoff_max_ms = 5000;
    o->max_buffered_bytes = 8u << 20;
    o->command_poll_ms = 5000;
    o->shutdown_timeout_ms = 2000;
    o->max_frames = 1024;
    o->max_string_len = 4096;
    o->max_strings = 65536;
}

uint32_t cn_ag_next_gen(cn_agent *a)
{
    uint32_t g;
    do
        g = atomic_fetch_add(&a->gen, 1) + 1;
    while (g == 0);
    return g;
}

static cn_builder *builder_take(cn_ag_state *st)
{
    cn_agent *a = st->agent;
    cn_builder *b = st->n_spare ? st->spare[--st->n_spare] : NULL;
    if (!b) {
        cn_builder_limits lim = {.max_snapshots = a->o.max_batch_snapshots,
                                 .max_bytes = a->o.max_batch_bytes,
                                 .max_frames = a->o.max_frames,
                                 .max_string_len = a->o.max_string_len,
                                 .max_strings = a->o.max_strings};
        b = cn_builder_new(&lim);
        if (!b)
            return NULL;
    }
    cn_builder_reset_gen(b, cn_ag_next_gen(a));
    return b;
}

void cn_ag_recycle_locked(cn_ag_state *st, cn_builder *b)
{
    if (st->n_spare < CN_AG_SPARE_MAX)
        st->spare[st->n_spare++] = b;
    else
        cn_builder_free(b);
}

void cn_ag_seal_locked(cn_ag_state *st)
{
    cn_builder *b = st->cur;
    if (!b || cn_builder_snapshots(b) == 0)
        return;
    size_t n = cn_builder_snapshots(b);
    size_t est = cn_builder_size(b);
    uint64_t inflight = st->sender ? cn_ag_sender_buffered(st->sender) : 0;
    st->cur_since = 0;
    if (st->n_sealed >= CN_AG_SEALED_MAX ||
        inflight + st->sealed_bytes + est > st->agent->o.max_buffered_bytes) {
        /* Over the memory bound: drop the new batch, keep what is queued. */
        st->batches_dropped++;
        st->snapshots_dropped += n;
        cn_builder_reset_gen(b, cn_ag_next_gen(st->agent));
        return;
    }
    st->sealed[st->n_sealed++] = b;
    st->sealed_bytes += est;
    st->batches_sealed++;
    st->cur = builder_take(st);
    pthread_cond_signal(&st->cv);
}

/* ---- per-process state ---- */

static void state_destroy(cn_ag_state *st)
{
    if (!st)
        return;
    cn_sender_free(st->sender);
    cn_builder_free(st->cur);
    for (size_t i = 0; i < st->n_sealed; i++)
        cn_builder_free(st->sealed[i]);
    for (size_t i = 0; i < st->n_spare; i++)
        cn_builder_free(st->spare[i]);
    for (size_t i = 0; i < st->n_finish; i++)
        free(st->finish[i]);
    free(st->host);
    free(st->instance);
    if (st->cv_ok)
        pthread_cond_destroy(&st->cv);
    if (st->mu_ok)
        pthread_mutex_destroy(&st->mu);
    free(st);
}

static cn_ag_state *state_new(cn_agent *a)
{
    cn_ag_state *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->agent = a;
    st->pid = getpid();
    st->disabled = cn_ag_nng_inherited();
    st->host = a->host ? cn_ag_strdup(a->host) : cn_ag_hostname();
    if (!st->host)
        goto fail;
    st->instance = a->instance ? cn_ag_strdup(a->instance)
                               : cn_ag_default_instance((uint32_t)st->pid, st->host);
    if (!st->instance)
        goto fail;
    st->id = (cn_identity){.service = a->service, .instance = st->instance, .host = st->host,
                           .pid = (uint32_t)st->pid, .agent_version = CN_AGENT_VERSION,
                           .session = cn_session_random()};
    if (!(st->mu_ok = pthread_mutex_init(&st->mu, NULL) == 0) || !(st->cv_ok = cn_ag_cond_init(&st->cv) == 0))
        goto fail;
    st->cur = builder_take(st);
    if (!st->cur)
        goto fail;
    return st;
fail:
    state_destroy(st);
    return NULL;
}

/* Slow path of state_get: first use in a child of fork(). One thread makes
 * the new state; any other thread of the child waits for it. */
static cn_ag_state *state_after_fork(cn_agent *a, unsigned epoch)
{
    int zero = 0;
    if (!atomic_compare_exchange_strong(&a->resetting, &zero, 1)) {
        while (atomic_load(&a->resetting))
            sched_yield();
        return atomic_load(&a->epoch) == epoch ? atomic_load(&a->st) : NULL;
    }
    /* The inherited state is abandoned, not freed (see agent_internal.h). */
    cn_ag_state *st = state_new(a);
    if (st) {
        atomic_store(&a->st, st);
        atomic_store_explicit(&a->epoch, epoch, memory_order_release);
    }
    atomic_store(&a->resetting, 0);
    return st;
}

static inline cn_ag_state *state_get(cn_agent *a)
{
    unsigned e = cn_ag_fork_epoch();
    if (CN_AG_LIKELY(atomic_load_explicit(&a->epoch, memory_order_acquire) == e))
        return atomic_load_explicit(&a->st, memory_order_relaxed);
    return state_after_fork(a, e);
}

static int thread_start_locked(cn_ag_state *st)
{
    if (st->thread_ok)
        return 0;
    /* A child that may not use nng has nothing to run a thread for. */
    if (st->stopping || st->disabled)
        return -CN_ECLOSED;
    if (pthread_create(&st->thread, NULL, cn_ag_agent_main, st) != 0)
        return -CN_ENOMEM;
    st->thread_ok = true;
    return 0;
}

/* ---- API ---- */

static void agent_free_strings(cn_agent *a)
{
    free(a->url);
    free(a->service);
    free(a->instance);
    free(a->host);
    free(a->tls_ca_file);
    free(a->tls_cert_file);
    free(a->tls_key_file);
    free(a->tls_server_name);
}

void cn_agent_set_mode(cn_agent *a, const char *mode)
{
    if (a)
        atomic_store(&a->mode, mode);
}

int cn_agent_new(const cn_agent_options *o, cn_agent **out)
{
    if (!o || !o->service || !out)
        return -CN_EINVAL;
    *out = NULL;
    if (cn_ag_fork_init() != 0)
        return -CN_ENOMEM;
    cn_agent *a = calloc(1, sizeof(*a));
    if (!a)
        return -CN_ENOMEM;
    a->o = *o;
    a->url = cn_ag_strdup(o->url ? o->url : CN_AGENT_DEFAULT_URL);
    a->service = cn_ag_strdup(o->service);
    a->instance = cn_ag_strdup(o->instance);
    a->host = cn_ag_strdup(o->host);
    a->tls_ca_file = cn_ag_strdup(o->tls_ca_file);
    a->tls_cert_file = cn_ag_strdup(o->tls_cert_file);
    a->tls_key_file = cn_ag_strdup(o->tls_key_file);
    a->tls_server_name = cn_ag_strdup(o->tls_server_name);
    if (!a->url || !a->service || (o->instance && !a->instance) || (o->host && !a->host) ||
        (o->tls_ca_file && !a->tls_ca_file) || (o->tls_cert_file && !a->tls_cert_file) ||
        (o->tls_key_file && !a->tls_key_file) || (o->tls_server_name && !a->tls_server_name)) {
        agent_free_strings(a);
        free(a);
        return -CN_ENOMEM;
    }
    a->o.url = a->url;
    a->o.service = a->service;
    a->o.instance = a->instance;
    a->o.host = a->host;
    a->o.tls_ca_file = a->tls_ca_file;
    a->o.tls_cert_file = a->tls_cert_file;
    a->o.tls_key_file = a->tls_key_file;
    a->o.tls_server_name = a->tls_server_name;
    if (a->o.max_batch_snapshots == 0)
        a->o.max_batch_snapshots = 256;
    if (a->o.max_batch_age_ms == 0)
        a->o.max_batch_age_ms = 200;
    if (a->o.max_buffered_bytes == 0)
        a->o.max_buffered_bytes = 8u << 20;
    atomic_store(&a->epoch, cn_ag_fork_epoch());
    cn_ag_state *st = state_new(a);
    if (!st) {
        agent_free_strings(a);
        free(a);
        return -CN_ENOMEM;
    }
    atomic_store(&a->st, st);
    *out = a;
    return 0;
}

int cn_agent_start(cn_agent *a)
{
    if (!a)
        return -CN_EINVAL;
    cn_ag_state *st = state_get(a);
    if (!st)
        return -CN_ENOMEM;
    pthread_mutex_lock(&st->mu);
    int rv = thread_start_locked(st);
    pthread_mutex_unlock(&st->mu);
    return rv;
}

int cn_agent_add(cn_agent *a, const cn_snapshot_in *s)
{
    if (CN_AG_UNLIKELY(!a || !s))
        return -CN_EINVAL;
    cn_ag_state *st = state_get(a);
    if (CN_AG_UNLIKELY(!st))
        return -CN_ENOMEM;
    pthread_mutex_lock(&st->mu);
    int rv = thread_start_locked(st);
    if (rv == 0 && st->disabled)
        rv = -CN_ECLOSED;
    if (rv == 0 && !st->cur && !(st->cur = builder_take(st)))
        rv = -CN_ENOMEM;
    if (rv == 0) {
        rv = cn_builder_add(st->cur, s);
        if (rv == -CN_ELIMIT) {
            cn_ag_seal_locked(st);
            rv = st->cur ? cn_builder_add(st->cur, s) : -CN_ENOMEM;
        }
    }
    if (rv == 0) {
        st->snapshots_added++;
        if (st->cur_since == 0) {
            /* A new batch: the thread may sleep without a deadline; give it
             * one so this batch is flushed by age. Once per batch. */
            st->cur_since = cn_ag_mono_ms();
            pthread_cond_signal(&st->cv);
        }
        if (cn_builder_full(st->cur))
            cn_ag_seal_locked(st);
    } else {
        st->snapshots_dropped++;
    }
    pthread_mutex_unlock(&st->mu);
    return rv;
}

int cn_agent_flush(cn_agent *a)
{
    if (!a)
        return -CN_EINVAL;
    cn_ag_state *st = state_get(a);
    if (!st)
        return -CN_ENOMEM;
    pthread_mutex_lock(&st->mu);
    int rv = thread_start_locked(st);
    if (rv == 0)
        cn_ag_seal_locked(st);
    pthread_mutex_unlock(&st->mu);
    return rv;
}

int cn_agent_poll_now(cn_agent *a)
{
    if (!a)
        return -CN_EINVAL;
    cn_ag_state *st = state_get(a);
    if (!st)
        return -CN_ENOMEM;
    pthread_mutex_lock(&st->mu);
    int rv = thread_start_locked(st);
    if (rv == 0) {
        st->poll_now = true;
        pthread_cond_signal(&st->cv);
    }
    pthread_mutex_unlock(&st->mu);
    return rv;
}

size_t cn_agent_commands(cn_agent *a, cn_command *out, size_t cap, uint64_t *version)
{
    if (!a)
        return 0;
    cn_ag_state *st = state_get(a);
    if (!st)
        return 0;
    pthread_mutex_lock(&st->mu);
    size_t n = st->n_cmds;
    if (out)
        memcpy(out, st->cmds, (cap < n ? cap : n) * sizeof(*out));
    if (version)
        *version = st->cmd_version;
    pthread_mutex_unlock(&st->mu);
    return n;
}

int64_t cn_agent_last_command_time(cn_agent *a)
{
    cn_ag_state *st = a ? state_get(a) : NULL;
    if (!st)
        return 0;
    pthread_mutex_lock(&st->mu);
    int64_t t = st->last_command_time;
    pthread_mutex_unlock(&st->mu);
    return t;
}

int cn_agent_report_finish(cn_agent *a, const char *task_id)
{
    if (!a || !task_id)
        return -CN_EINVAL;
    cn_ag_state *st = state_get(a);
    if (!st)
        return -CN_ENOMEM;
    char *copy = cn_ag_strdup(task_id);
    pthread_mutex_lock(&st->mu);
    int rv = copy ? thread_start_locked(st) : -CN_ENOMEM;
    if (rv == 0 && st->n_finish >= CN_AG_FINISH_MAX)
        rv = -CN_EFULL;
    if (rv == 0) {
        st->finish[st->n_finish++] = copy;
        st->finish_reports++;
        pthread_cond_signal(&st->cv);
    } else {
        st->errors++;
        free(copy);
    }
    pthread_mutex_unlock(&st->mu);
    return rv;
}

void cn_agent_stats_get(cn_agent *a, cn_agent_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof(*out));
    cn_ag_state *st = a ? state_get(a) : NULL;
    if (!st)
        return;
    pthread_mutex_lock(&st->mu);
    if (st->sender)
        cn_sender_stats(st->sender, &out->send);
    out->send.batches_dropped += st->batches_dropped;
    out->send.errors += st->errors;
    out->send.bytes_buffered += st->sealed_bytes + (st->cur ? cn_builder_size(st->cur) : 0);
    out->snapshots_added = st->snapshots_added;
    out->snapshots_dropped = st->snapshots_dropped;
    out->batches_sealed = st->batches_sealed;
    out->command_queries = st->command_queries;
    out->commands_received = st->commands_received;
    out->finish_reports = st->finish_reports;
    out->session = st->id.session;
    out->next_batch_seq = st->next_seq;
    pthread_mutex_unlock(&st->mu);
}

void cn_agent_free(cn_agent *a)
{
    if (!a)
        return;
    cn_ag_state *st = state_get(a);
    if (st) {
        pthread_mutex_lock(&st->mu);
        cn_ag_seal_locked(st);
        st->stopping = true;
        pthread_cond_signal(&st->cv);
        bool joined = st->thread_ok;
        pthread_mutex_unlock(&st->mu);
        if (joined)
            pthread_join(st->thread, NULL); /* the thread drains on its way out */
        else if (st->n_sealed || st->n_finish)
            cn_ag_agent_work(st, false);
        if (st->sender)
            cn_sender_wait_idle(st->sender, a->o.shutdown_timeout_ms);
        state_destroy(st);
    }
    agent_free_strings(a);
    free(a);
}
