/*
 * The task registry. A short list under one mutex: tasks number in the tens,
 * and agents ask every few seconds, so simplicity wins over cleverness.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/common.h"
#include "canopy/metrics.h"
#include "canopy/tasks.h"

typedef struct listener_node {
    cn_task_listener l;
    struct listener_node *next;
} listener_node;

struct cn_task_registry {
    pthread_mutex_t lock;
    cn_task *tasks; /* ordered by insertion */
    size_t n, cap, max;
    /* Callbacks run under the read side; cn_tasks_unlisten takes the write side,
     * so a listener's owner may free it as soon as unlisten returns. */
    pthread_rwlock_t listeners_lock;
    listener_node *listeners;
};

cn_task_registry *cn_tasks_new(size_t max_tasks)
{
    cn_task_registry *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    pthread_mutex_init(&r->lock, NULL);
    pthread_rwlock_init(&r->listeners_lock, NULL);
    r->max = max_tasks ? max_tasks : 1024;
    return r;
}

void cn_task_clear(cn_task *t)
{
    free(t->id);
    free(t->serial);
    free(t->service);
    free(t->endpoint);
    memset(t, 0, sizeof *t);
}

void cn_tasks_free(cn_task_registry *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        cn_task_clear(&r->tasks[i]);
    free(r->tasks);
    listener_node *l = r->listeners;
    while (l) {
        listener_node *next = l->next;
        free(l);
        l = next;
    }
    pthread_rwlock_destroy(&r->listeners_lock);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static int task_copy(cn_task *dst, const cn_task *src)
{
    *dst = *src;
    dst->id = cn_strdup(src->id);
    dst->serial = cn_strdup(src->serial ? src->serial : src->id);
    dst->service = cn_strdup(src->service);
    dst->endpoint = cn_strdup(src->endpoint);
    if (!dst->id || !dst->serial || !dst->service || !dst->endpoint) {
        cn_task_clear(dst);
        return -1;
    }
    return 0;
}

static cn_task *find_locked(cn_task_registry *r, const char *id)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->tasks[i].id, id) == 0)
            return &r->tasks[i];
    return NULL;
}

static cn_task_state state_of(const cn_task *t, int64_t now_ms)
{
    /* A continuous task has no end of its own: only cancelling ends it. */
    if (t->cancelled || (!t->continuous && now_ms >= t->start_ms + t->duration_ms))
        return CN_TASK_ENDED;
    if (now_ms < t->start_ms)
        return CN_TASK_PENDING;
    return CN_TASK_RUNNING;
}

int cn_tasks_add(cn_task_registry *r, const cn_task *t, char *err, size_t err_len)
{
    if (!t->id || !t->id[0] || !t->service || !t->service[0] || !t->endpoint || !t->endpoint[0]) {
        snprintf(err, err_len, "a task needs id, service and endpoint");
        return -1;
    }
    if (t->continuous ? t->window_ms <= 0 : t->duration_ms <= 0) {
        snprintf(err, err_len, "task %s: %s must be positive", t->id, t->continuous ? "window" : "duration");
        return -1;
    }
    pthread_mutex_lock(&r->lock);
    int rc = -1;
    if (find_locked(r, t->id)) {
        snprintf(err, err_len, "task %s already exists", t->id);
    } else if (r->n >= r->max) {
        cn_metric_inc(cn_counter("canopy_tasks_refused_total",
                                 "Tasks not added because tasks.max_tasks tasks were held.", ""));
        snprintf(err, err_len, "task limit of %zu reached (tasks.max_tasks)", r->max);
    } else {
        if (r->n == r->cap) {
            size_t cap = r->cap ? r->cap * 2 : 16;
            cn_task *grown = realloc(r->tasks, cap * sizeof *grown);
            if (grown) {
                r->tasks = grown;
                r->cap = cap;
            }
        }
        if (r->n < r->cap && task_copy(&r->tasks[r->n], t) == 0) {
            r->n++;
            rc = 0;
        } else {
            snprintf(err, err_len, "out of memory");
        }
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

int cn_tasks_cancel(cn_task_registry *r, const char *id)
{
    pthread_mutex_lock(&r->lock);
    cn_task *t = find_locked(r, id);
    if (t) {
        /* The task ends now: its end time drives expiry like a natural end. */
        int64_t now = cn_now_ms();
        t->cancelled = true;
        if (t->continuous || now < t->start_ms + t->duration_ms)
            t->duration_ms = now > t->start_ms ? now - t->start_ms : 0;
    }
    pthread_mutex_unlock(&r->lock);
    return t ? 0 : -1;
}

cn_task_state cn_tasks_state(cn_task_registry *r, const char *id, int64_t now_ms)
{
    pthread_mutex_lock(&r->lock);
    cn_task *t = find_locked(r, id);
    cn_task_state s = t ? state_of(t, now_ms) : CN_TASK_UNKNOWN;
    pthread_mutex_unlock(&r->lock);
    return s;
}

int cn_tasks_get(cn_task_registry *r, const char *id, cn_task *out)
{
    pthread_mutex_lock(&r->lock);
    cn_task *t = find_locked(r, id);
    int rc = t ? task_copy(out, t) : -1;
    pthread_mutex_unlock(&r->lock);
    return rc;
}

bool cn_tasks_is_continuous(cn_task_registry *r, const char *id)
{
    if (!r || !id)
        return false;
    pthread_mutex_lock(&r->lock);
    cn_task *t = find_locked(r, id);
    bool yes = t && t->continuous;
    pthread_mutex_unlock(&r->lock);
    return yes;
}

bool cn_continuous_filter_skips(cn_continuous_filter *f, const char *task_id)
{
    if (!f->last || (task_id != f->last && (!task_id || strcmp(task_id, f->last) != 0))) {
        f->last = task_id;
        f->last_continuous = cn_tasks_is_continuous(f->reg, task_id);
    }
    return f->last_continuous;
}

/* Copies the tasks the filter accepts; keeps going past allocation failures. */
static size_t copy_matching(cn_task_registry *r, const char *service, int64_t after_create, int64_t now_ms,
                            unsigned flags, cn_task **out)
{
    *out = NULL;
    if (r->n == 0)
        return 0;
    cn_task *v = calloc(r->n, sizeof *v);
    if (!v)
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < r->n; i++) {
        const cn_task *t = &r->tasks[i];
        if (service && (strcmp(t->service, service) != 0 || t->create_ms <= after_create ||
                        state_of(t, now_ms) == CN_TASK_ENDED ||
                        (t->continuous && !(flags & CN_TASKS_WITH_CONTINUOUS))))
            continue;
        if (task_copy(&v[n], t) == 0)
            n++;
    }
    if (n == 0) {
        free(v);
        return 0;
    }
    *out = v;
    return n;
}

size_t cn_tasks_list(cn_task_registry *r, cn_task **out)
{
    pthread_mutex_lock(&r->lock);
    size_t n = copy_matching(r, NULL, 0, 0, CN_TASKS_WITH_CONTINUOUS, out);
    pthread_mutex_unlock(&r->lock);
    return n;
}

const char *cn_task_state_name(cn_task_state s)
{
    switch (s) {
    case CN_TASK_PENDING: return "pending";
    case CN_TASK_RUNNING: return "running";
    case CN_TASK_ENDED: return "ended";
    default: return "unknown";
    }
}

size_t cn_tasks_query(cn_task_registry *r, const char *service, const char *instance,
                      int64_t last_command_time, int64_t now_ms, unsigned flags, cn_task **out)
{
    pthread_rwlock_rdlock(&r->listeners_lock);
    for (listener_node *l = r->listeners; l; l = l->next)
        if (l->l.on_query)
            l->l.on_query(l->l.arg, service, instance, last_command_time);
    pthread_rwlock_unlock(&r->listeners_lock);
    pthread_mutex_lock(&r->lock);
    size_t n = copy_matching(r, service, last_command_time, now_ms, flags, out);
    pthread_mutex_unlock(&r->lock);
    return n;
}

void cn_tasks_report_finish(cn_task_registry *r, const char *service, const char *instance, const char *task_id)
{
    pthread_rwlock_rdlock(&r->listeners_lock);
    for (listener_node *l = r->listeners; l; l = l->next)
        if (l->l.on_finish)
            l->l.on_finish(l->l.arg, service, instance, task_id);
    pthread_rwlock_unlock(&r->listeners_lock);
}

int cn_tasks_listen(cn_task_registry *r, const cn_task_listener *l)
{
    listener_node *node = calloc(1, sizeof *node);
    if (!node)
        return -1;
    node->l = *l;
    pthread_rwlock_wrlock(&r->listeners_lock);
    node->next = r->listeners;
    r->listeners = node;
    pthread_rwlock_unlock(&r->listeners_lock);
    return 0;
}

void cn_tasks_unlisten(cn_task_registry *r, void *arg)
{
    pthread_rwlock_wrlock(&r->listeners_lock);
    for (listener_node **at = &r->listeners; *at;) {
        listener_node *l = *at;
        if (l->l.arg == arg) {
            *at = l->next;
            free(l);
        } else {
            at = &l->next;
        }
    }
    pthread_rwlock_unlock(&r->listeners_lock);
}

size_t cn_tasks_expire(cn_task_registry *r, int64_t now_ms, int64_t keep_ms)
{
    pthread_mutex_lock(&r->lock);
    size_t kept = 0, removed = 0;
    for (size_t i = 0; i < r->n; i++) {
        cn_task *t = &r->tasks[i];
        int64_t end = t->start_ms + t->duration_ms;
        if (state_of(t, now_ms) == CN_TASK_ENDED && now_ms >= end + keep_ms) {
            cn_task_clear(t);
            removed++;
        } else {
            r->tasks[kept++] = *t;
        }
    }
    r->n = kept;
    pthread_mutex_unlock(&r->lock);
    return removed;
}
