/*
 * Extension `skywalking`, the task source under `tasks.skywalking`: proxies
 * the OAP's profile tasks to agents. It talks to the OAPs of the skywalking
 * exporter it names, with that exporter's TLS and token (the OAP client and
 * its options are shared, plugins/common/skywalking).
 *
 * The OAP keeps a per-instance log of which instance was told about which
 * task, so canopy asks getProfileTaskCommands on behalf of each agent
 * instance it has seen, with that instance's own service and name. Agents
 * query the collector's registry as often as they like; a registry listener
 * notes each instance, and one thread here asks the OAP at most once per
 * poll_interval per instance. New ProfileTaskQuery commands go into the
 * registry, from which every agent of the service picks them up.
 *
 * Agents' finish reports go the other way, to reportTaskFinish, through a
 * bounded queue that survives OAP outages (retried with backoff).
 *
 * This file is the schedule: the registry listener, the thread and the life
 * cycle, which share the per-instance polls and the finish queue under
 * t->lock. The calls to the OAP, made by the thread without the lock, are in
 * skywalking_tasks_oap.c; the OAP client itself is shared code.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "skywalking_tasks.h"

static const cn_option sw_tasks_options[] = {
    {.type = CN_OPT_STR, .name = "exporter", .offset = offsetof(sw_tasks_opts, exporter), .required = true,
     .description = "Id of the skywalking exporter whose endpoints, TLS and token are used"},
    {.type = CN_OPT_DURATION, .name = "poll_interval", .default_value = "20s",
     .offset = offsetof(sw_tasks_opts, poll_interval_ms), .min = 100, .max = 3600 * 1000,
     .description = "Least time between two getProfileTaskCommands calls for one agent instance"},
    {.type = CN_OPT_INT, .name = "max_instances", .default_value = "4096",
     .offset = offsetof(sw_tasks_opts, max_instances), .min = 1, .max = 1000000,
     .description = "Agent instances polled for; more are refused (counted and logged)"},
    {.type = CN_OPT_INT, .name = "finish_queue_size", .default_value = "1024",
     .offset = offsetof(sw_tasks_opts, finish_queue_size), .min = 1, .max = 1000000,
     .description = "Finish reports waiting for the OAP; more are dropped (counted and logged)"},
    {.type = CN_OPT_DURATION, .name = "finish_max_elapsed_time", .default_value = "10m",
     .offset = offsetof(sw_tasks_opts, finish_max_elapsed_ms), .min = 1000, .max = 24 * 3600 * 1000,
     .description = "How long a finish report is retried while the OAP is unavailable"},
    {.type = CN_OPT_DURATION, .name = "first_query_wait", .default_value = "1s",
     .offset = offsetof(sw_tasks_opts, first_query_wait_ms), .min = 0, .max = 30 * 1000,
     .description = "How long an agent instance's first query waits for canopy's first poll of the OAP for it, "
                    "so that it gets the OAP's tasks at once (0: answer from the registry at once)"},
    CN_OPT_END,
};

/* ---- helpers -------------------------------------------------------------- */

static char *instance_key(const char *service, const char *instance)
{
    size_t ls = strlen(service), li = strlen(instance);
    char *k = malloc(ls + li + 2);
    if (!k)
        return NULL;
    memcpy(k, service, ls);
    k[ls] = '\x1f';
    memcpy(k + ls + 1, instance, li + 1);
    return k;
}

static void instance_free(void *v)
{
    sw_instance *in = v;
    if (!in)
        return;
    free(in->service);
    free(in->instance);
    free(in);
}

static void finish_clear(sw_finish *f)
{
    free(f->service);
    free(f->instance);
    free(f->task_id);
    memset(f, 0, sizeof *f);
}

static void poll_clear(sw_poll *p)
{
    free(p->key);
    free(p->service);
    free(p->instance);
}

/* Jitter of +-20 %, so many collectors do not retry in lockstep. */
static int64_t jitter(unsigned *seed, int64_t ms)
{
    int64_t span = ms / 5;
    if (span <= 0)
        return ms;
    return ms - span + (int64_t)(rand_r(seed) % (unsigned)(2 * span + 1));
}

static void wait_until(sw_tasks *t, pthread_cond_t *cond, int64_t wake_mono_ms);

/*
 * Under the lock. A new instance's query is answered from the registry once
 * this returns: without the wait, its first answer would always miss the
 * OAP's running tasks (the poll it triggers ends after the reply), and the
 * agent would get them one agent poll interval (20 s) later, where talking to
 * the OAP directly gives them at once. Bounded by first_query_wait, because
 * it holds a receiver thread; instances are looked up again after each wake
 * since the lock was released.
 */
static void wait_first_poll(sw_tasks *t, const char *key)
{
    int64_t deadline = cn_mono_ms() + t->opt.first_query_wait_ms;
    while (!t->stop && cn_mono_ms() < deadline) {
        const sw_instance *in = cn_dict_get(t->instances, key);
        if (!in || in->first_poll_done)
            return;
        wait_until(t, &t->polled, deadline);
    }
}

/* ---- registry listener (called on the receiver's and admin's threads) ----- */

static void on_query(void *arg, const char *service, const char *instance, int64_t last_command_time)
{
    sw_tasks *t = arg;
    if (!service || !instance || !service[0] || !instance[0])
        return;
    char *key = instance_key(service, instance);
    if (!key)
        return; /* out of memory: this query is simply not proxied; the next one is */
    pthread_mutex_lock(&t->lock);
    if (t->stop)
        goto out;
    sw_instance *in = cn_dict_get(t->instances, key);
    if (!in) {
        if ((int64_t)cn_dict_size(t->instances) >= t->opt.max_instances) {
            cn_metric_inc(t->m_instances_refused);
            cn_log_limited(&t->rl_refused, CN_LOG_WARN, t->c->id,
                           "task source: already polling for %lld instances (max_instances); "
                           "instance %s of %s is not polled for",
                           (long long)t->opt.max_instances, instance, service);
            goto out;
        }
        in = calloc(1, sizeof *in);
        if (in) {
            in->service = cn_strdup(service);
            in->instance = cn_strdup(instance);
            in->cursor = last_command_time;
        }
        if (!in || !in->service || !in->instance || cn_dict_put(t->instances, key, in) != 0) {
            instance_free(in);
            goto out;
        }
        cn_metric_set(t->m_instances, (int64_t)cn_dict_size(t->instances));
        cn_debug(t->c->id, "task source: new agent instance %s of %s", instance, service);
        in->last_ask_ms = cn_mono_ms();
        in->asked = true;
        pthread_cond_signal(&t->cond); /* its first poll is due now */
        wait_first_poll(t, key);
        goto out;
    }
    in->last_ask_ms = cn_mono_ms();
    in->asked = true;
out:
    pthread_mutex_unlock(&t->lock);
    free(key);
}

static void on_finish(void *arg, const char *service, const char *instance, const char *task_id)
{
    sw_tasks *t = arg;
    if (!task_id || !task_id[0])
        return;
    pthread_mutex_lock(&t->lock);
    if (t->stop) {
        pthread_mutex_unlock(&t->lock);
        return;
    }
    if ((int64_t)t->fq_n >= t->opt.finish_queue_size) {
        cn_metric_inc(t->m_finish_dropped);
        cn_log_limited(&t->rl_finish, CN_LOG_WARN, t->c->id,
                       "task source: finish report of task %s by %s dropped: %zu reports already "
                       "wait for the OAP (finish_queue_size)",
                       task_id, instance ? instance : "?", t->fq_n);
        pthread_mutex_unlock(&t->lock);
        return;
    }
    sw_finish *f = &t->fq[t->fq_n];
    f->service = cn_strdup(service ? service : "");
    f->instance = cn_strdup(instance ? instance : "");
    f->task_id = cn_strdup(task_id);
    if (!f->service || !f->instance || !f->task_id) {
        finish_clear(f);
        cn_metric_inc(t->m_finish_dropped);
        cn_log_limited(&t->rl_finish, CN_LOG_WARN, t->c->id,
                       "task source: out of memory; finish report of task %s dropped", task_id);
    } else {
        f->attempts = 0;
        f->first_ms = f->next_ms = cn_mono_ms();
        t->fq_n++;
        pthread_cond_signal(&t->cond);
    }
    pthread_mutex_unlock(&t->lock);
}

/* ---- the thread ----------------------------------------------------------- */

/* Waits on `cond` (a CLOCK_MONOTONIC one) with t->lock held, until woken or the deadline. */
static void wait_until(sw_tasks *t, pthread_cond_t *cond, int64_t wake_mono_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    int64_t delta = wake_mono_ms - now_ms;
    if (delta <= 0)
        return;
    int64_t ns = (int64_t)ts.tv_nsec + (delta % 1000) * 1000000;
    ts.tv_sec += (time_t)(delta / 1000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    pthread_cond_timedwait(cond, &t->lock, &ts);
}

/*
 * Under the lock: moves the due polls and finish reports out into the
 * arrays given, forgets instances that stopped asking, and returns when the
 * next piece of work is due.
 */
static int64_t take_due(sw_tasks *t, int64_t now, sw_poll **polls, size_t *n_polls, sw_finish **fins,
                        size_t *n_fins)
{
    int64_t interval = t->opt.poll_interval_ms;
    /* An instance that stopped asking (worker exited) is forgotten after a while. */
    int64_t ttl = interval * 10 > 60000 ? interval * 10 : 60000;
    int64_t next = now + 1000;
    size_t cap = cn_dict_size(t->instances);
    *polls = cap ? calloc(cap, sizeof **polls) : NULL;
    *n_polls = 0;

    size_t pos = 0;
    const char *key;
    void *val;
    char **expired = NULL;
    size_t n_expired = 0;
    while (cn_dict_next(t->instances, &pos, &key, &val)) {
        sw_instance *in = val;
        if (now - in->last_ask_ms > ttl) {
            char **e = realloc(expired, (n_expired + 1) * sizeof *e);
            if (e) {
                expired = e;
                expired[n_expired] = cn_strdup(key);
                if (expired[n_expired])
                    n_expired++;
            }
            continue;
        }
        if (!in->asked)
            continue;
        int64_t due = in->last_poll_ms ? in->last_poll_ms + interval : now;
        if (due > now) {
            if (due < next)
                next = due;
            continue;
        }
        if (!*polls)
            continue; /* out of memory: try again on the next round */
        sw_poll *p = &(*polls)[*n_polls];
        p->key = cn_strdup(key);
        p->service = cn_strdup(in->service);
        p->instance = cn_strdup(in->instance);
        p->cursor = in->cursor;
        if (!p->key || !p->service || !p->instance) {
            poll_clear(p);
            continue;
        }
        in->asked = false;
        in->last_poll_ms = now;
        (*n_polls)++;
    }
    for (size_t i = 0; i < n_expired; i++) {
        instance_free(cn_dict_remove(t->instances, expired[i]));
        free(expired[i]);
    }
    free(expired);
    if (n_expired)
        cn_metric_set(t->m_instances, (int64_t)cn_dict_size(t->instances));

    /* Finish reports: take the due ones, keep order for the rest. */
    *fins = NULL;
    *n_fins = 0;
    size_t due_count = 0;
    for (size_t i = 0; i < t->fq_n; i++)
        due_count += t->fq[i].next_ms <= now;
    if (due_count && (*fins = calloc(due_count, sizeof **fins))) {
        size_t keep = 0;
        for (size_t i = 0; i < t->fq_n; i++) {
            if (t->fq[i].next_ms <= now)
                (*fins)[(*n_fins)++] = t->fq[i];
            else
                t->fq[keep++] = t->fq[i];
        }
        t->fq_n = keep;
    }
    for (size_t i = 0; i < t->fq_n; i++) {
        if (t->fq[i].next_ms < next)
            next = t->fq[i].next_ms;
    }
    return next;
}

static void *task_thread(void *arg)
{
    sw_tasks *t = arg;
    pthread_mutex_lock(&t->lock);
    while (!t->stop) {
        sw_poll *polls;
        sw_finish *fins;
        size_t n_polls, n_fins;
        int64_t next = take_due(t, cn_mono_ms(), &polls, &n_polls, &fins, &n_fins);
        if (n_polls == 0 && n_fins == 0) {
            free(polls);
            free(fins);
            wait_until(t, &t->cond, next);
            continue;
        }
        pthread_mutex_unlock(&t->lock);

        int64_t *cursors = n_polls ? calloc(n_polls, sizeof *cursors) : NULL;
        for (size_t i = 0; i < n_polls; i++) {
            int64_t cur = sw_tasks_poll_instance(t, &polls[i]);
            if (cursors)
                cursors[i] = cur;
        }
        int *fin_rc = n_fins ? calloc(n_fins, sizeof *fin_rc) : NULL;
        for (size_t i = 0; i < n_fins; i++) {
            int rc = sw_tasks_send_finish(t, &fins[i]);
            if (fin_rc)
                fin_rc[i] = rc;
        }

        pthread_mutex_lock(&t->lock);
        int64_t now = cn_mono_ms();
        for (size_t i = 0; i < n_polls; i++) {
            sw_instance *in = cn_dict_get(t->instances, polls[i].key);
            if (in && cursors && cursors[i] > in->cursor)
                in->cursor = cursors[i];
            /* poll_interval counts from the end of a call: a call slow to leave must not
             * bring the next one closer than poll_interval at the OAP. */
            if (in) {
                in->last_poll_ms = now;
                in->first_poll_done = true;
            }
            poll_clear(&polls[i]);
        }
        if (n_polls && t->polled_ok)
            pthread_cond_broadcast(&t->polled);
        for (size_t i = 0; i < n_fins; i++) {
            sw_finish *f = &fins[i];
            int rc = fin_rc ? fin_rc[i] : 1;
            if (rc == 1 && now - f->first_ms > t->opt.finish_max_elapsed_ms) {
                cn_log_limited(&t->rl_finish, CN_LOG_ERROR, t->c->id,
                               "task source: gave up reporting task %s finished by %s after %d attempts "
                               "(finish_max_elapsed_time)", f->task_id, f->instance, f->attempts + 1);
                rc = -1;
            }
            if (rc == 1 && (int64_t)t->fq_n < t->opt.finish_queue_size) {
                f->attempts++;
                int shift = f->attempts < 7 ? f->attempts - 1 : 6;
                int64_t backoff = (int64_t)1000 << shift; /* 1 s doubling to 64 s */
                f->next_ms = now + jitter(&t->seed, backoff);
                t->fq[t->fq_n++] = *f;
                cn_metric_inc(t->m_finish_retried);
                continue;
            }
            if (rc != 0)
                cn_metric_inc(t->m_finish_dropped);
            finish_clear(f);
        }
        free(cursors);
        free(fin_rc);
        free(polls);
        free(fins);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

/* ---- life cycle ----------------------------------------------------------- */

/* The named exporter: a configured skywalking exporter, or an error at `exporter`. */
static const cn_node *exporter_node(sw_tasks *t, cn_component *self, cn_diag *d)
{
    const cn_node *node = NULL;
    const char *type = NULL;
    if (!cn_component_peer(self, CN_EXPORTER, t->opt.exporter, &node, &type) || strcmp(type, "skywalking") != 0) {
        if (d) {
            const cn_node *at = cn_options_node(cn_component_node(self), "exporter");
            cn_diag_error(d, at ? at : cn_component_node(self),
                          "tasks::skywalking: references exporter \"%s\" which is not a configured skywalking "
                          "exporter",
                          t->opt.exporter);
        }
        return NULL;
    }
    return node;
}

static int tasks_check(void *ctx, cn_component *self, cn_diag *d)
{
    return exporter_node(ctx, self, d) ? 0 : -1;
}

static void make_metrics(sw_tasks *t)
{
    const char *l = cn_component_labels(t->self);
    t->m_polls = cn_counter("canopy_skywalking_task_polls_total",
                            "getProfileTaskCommands calls made on behalf of agent instances", l);
    t->m_poll_errors = cn_counter("canopy_skywalking_task_poll_errors_total",
                                  "getProfileTaskCommands calls that failed", l);
    t->m_commands = cn_counter("canopy_skywalking_task_commands_total",
                               "OAP profile tasks added to the task registry", l);
    t->m_instances = cn_gauge("canopy_skywalking_task_instances",
                              "Agent instances the task source polls for", l);
    t->m_instances_refused = cn_counter("canopy_skywalking_task_instances_refused_total",
                                        "Agent instances not polled for, over max_instances", l);
    t->m_finish_sent = cn_counter("canopy_skywalking_finish_reports_sent_total",
                                  "Task finish reports the OAP accepted", l);
    t->m_finish_retried = cn_counter("canopy_skywalking_finish_reports_retried_total",
                                     "Finish report attempts that failed transiently", l);
    t->m_finish_dropped = cn_counter("canopy_skywalking_finish_reports_dropped_total",
                                     "Finish reports dropped (queue full, refused, or retried too long)", l);
}

/* The exporter's client settings, as its own check already accepted them. */
static int apply_client(sw_tasks *t, const cn_node *node)
{
    cn_node view;
    if (cn_node_view(&view, node, sw_client_options, true) != 0)
        return -1;
    cn_diag scratch = {0};
    t->client_applied = true;
    int rc = cn_options_apply(sw_client_options, &t->client, &view, &scratch);
    cn_diag_free(&scratch);
    cn_node_view_free(&view);
    return rc;
}

static int tasks_start(void *ctx, cn_component *self)
{
    sw_tasks *t = ctx;
    const char *id = cn_component_id(self);
    t->self = self;
    t->c = &t->client;
    t->reg = cn_component_tasks(self);
    const cn_node *node = exporter_node(t, self, NULL);
    if (!node || apply_client(t, node) != 0 || sw_client_setup(&t->client, id, node) != 0) {
        cn_error(id, "cannot set up the client of exporter %s's OAPs", t->opt.exporter);
        return -1;
    }
    t->fq = calloc((size_t)t->opt.finish_queue_size, sizeof *t->fq);
    t->instances = cn_dict_new(64);
    if (!t->fq || !t->instances || pthread_mutex_init(&t->lock, NULL) != 0) {
        cn_error(id, "out of memory");
        return -1;
    }
    t->lock_ok = true;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&t->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        cn_error(id, "cannot create a condition variable");
        return -1;
    }
    t->cond_ok = true;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    rc = pthread_cond_init(&t->polled, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) {
        cn_error(id, "cannot create a condition variable");
        return -1;
    }
    t->polled_ok = true;
    t->slot.lock = &t->lock;
    t->seed = (unsigned)cn_mono_ns() | 1u;
    t->rl_poll.interval_ms = 30000;
    t->rl_refused.interval_ms = 60000;
    t->rl_finish.interval_ms = 10000;
    make_metrics(t);

    cn_task_listener listener = {.arg = t, .on_query = on_query, .on_finish = on_finish};
    if (cn_tasks_listen(t->reg, &listener) != 0) {
        cn_error(id, "cannot listen to the task registry");
        return -1;
    }
    if (pthread_create(&t->thread, NULL, task_thread, t) != 0) {
        cn_error(id, "cannot start the task source thread");
        pthread_mutex_lock(&t->lock);
        t->stop = true;
        pthread_mutex_unlock(&t->lock);
        return -1;
    }
    t->thread_ok = true;
    cn_info(id, "task source: proxying the profile tasks of exporter %s's OAPs, polling at most every %lld ms per "
                "agent instance",
            t->opt.exporter, (long long)t->opt.poll_interval_ms);
    return 0;
}

static void tasks_stop(void *ctx)
{
    sw_tasks *t = ctx;
    if (!t->lock_ok)
        return;
    /* Stop first: a query waiting for a first poll returns at once, so the
     * unlisten below (which waits for running callbacks) does not wait it out. */
    pthread_mutex_lock(&t->lock);
    t->stop = true;
    if (t->polled_ok)
        pthread_cond_broadcast(&t->polled);
    pthread_mutex_unlock(&t->lock);
    /* A reload keeps the registry: our callbacks must not outlive this context. */
    if (t->reg)
        cn_tasks_unlisten(t->reg, t);
    pthread_mutex_lock(&t->lock);
    /* Cut short a call to a hung OAP instead of waiting out its deadline. */
    t->slot.cancelled = true;
    if (t->slot.call)
        grpc_call_cancel(t->slot.call, NULL);
    if (t->cond_ok)
        pthread_cond_broadcast(&t->cond);
    size_t pending = t->fq_n;
    pthread_mutex_unlock(&t->lock);
    if (t->thread_ok) {
        pthread_join(t->thread, NULL);
        t->thread_ok = false;
    }
    if (pending) {
        cn_warn(cn_component_id(t->self), "task source: %zu finish report%s not delivered to the OAP before shutdown",
                pending, pending == 1 ? "" : "s");
        cn_metric_add(t->m_finish_dropped, (int64_t)pending);
    }
}

static void tasks_destroy(void *ctx)
{
    sw_tasks *t = ctx;
    tasks_stop(t);
    if (t->instances)
        cn_dict_free(t->instances, instance_free);
    if (t->fq) {
        for (size_t i = 0; i < t->fq_n; i++)
            finish_clear(&t->fq[i]);
        free(t->fq);
    }
    if (t->cond_ok)
        pthread_cond_destroy(&t->cond);
    if (t->polled_ok)
        pthread_cond_destroy(&t->polled);
    if (t->lock_ok)
        pthread_mutex_destroy(&t->lock);
    /* The options of the context itself are freed by the core. */
    sw_client_teardown(&t->client, t->client_applied ? sw_client_options : NULL);
}

const cn_plugin cn_extension_skywalking = {
    .kind = CN_EXTENSION,
    .type = "skywalking",
    .description = "Task source: proxies a SkyWalking OAP's profile tasks to the agents, through the OAPs, TLS "
                   "and token of the skywalking exporter it names.",
    .ctx_size = sizeof(sw_tasks),
    .options = sw_tasks_options,
    .cb_check = tasks_check,
    .cb_start = tasks_start,
    .cb_stop = tasks_stop,
    .cb_destroy = tasks_destroy,
};
