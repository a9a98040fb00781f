/*
 * Metric registry. Metrics live for the whole process in a list guarded by a
 * mutex; hot paths keep the cn_metric pointer and only do atomic adds.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/metrics.h"

typedef struct metric_entry {
    cn_metric metric;
    char *name;
    char *help;
    char *labels;
    const char *type; /* "counter" or "gauge" */
    struct metric_entry *next;
} metric_entry;

static pthread_mutex_t metrics_lock = PTHREAD_MUTEX_INITIALIZER;
static metric_entry *metrics_head, *metrics_tail;
/* Where increments go when registration itself ran out of memory. */
static cn_metric scratch_metric;

static metric_entry *find_locked(const char *name, const char *labels)
{
    for (metric_entry *e = metrics_head; e; e = e->next)
        if (strcmp(e->name, name) == 0 && strcmp(e->labels, labels) == 0)
            return e;
    return NULL;
}

static cn_metric *get_or_create(const char *type, const char *name, const char *help, const char *labels)
{
    if (!labels)
        labels = "";
    pthread_mutex_lock(&metrics_lock);
    metric_entry *e = find_locked(name, labels);
    if (!e) {
        e = calloc(1, sizeof *e);
        if (e) {
            e->name = strdup(name);
            e->help = strdup(help ? help : "");
            e->labels = strdup(labels);
            e->type = type;
            if (!e->name || !e->help || !e->labels) {
                free(e->name);
                free(e->help);
                free(e->labels);
                free(e);
                e = NULL;
            } else {
                /* Keep families together: insert after the last entry of the same name. */
                metric_entry *after = NULL;
                for (metric_entry *it = metrics_head; it; it = it->next)
                    if (strcmp(it->name, name) == 0)
                        after = it;
                if (after) {
                    e->next = after->next;
                    after->next = e;
                    if (metrics_tail == after)
                        metrics_tail = e;
                } else {
                    if (metrics_tail)
                        metrics_tail->next = e;
                    else
                        metrics_head = e;
                    metrics_tail = e;
                }
            }
        }
    }
    pthread_mutex_unlock(&metrics_lock);
    return e ? &e->metric : &scratch_metric;
}

cn_metric *cn_counter(const char *name, const char *help, const char *labels)
{
    return get_or_create("counter", name, help, labels);
}

cn_metric *cn_gauge(const char *name, const char *help, const char *labels)
{
    return get_or_create("gauge", name, help, labels);
}

int64_t cn_metric_value(const char *name, const char *labels)
{
    pthread_mutex_lock(&metrics_lock);
    metric_entry *e = find_locked(name, labels ? labels : "");
    int64_t v = e ? cn_metric_get(&e->metric) : -1;
    pthread_mutex_unlock(&metrics_lock);
    return v;
}

void cn_metrics_write_prometheus(FILE *out)
{
    pthread_mutex_lock(&metrics_lock);
    const char *family = NULL;
    for (metric_entry *e = metrics_head; e; e = e->next) {
        if (!family || strcmp(family, e->name) != 0) {
            family = e->name;
            fprintf(out, "# HELP %s ", e->name);
            /* The exposition format escapes backslash and newline in HELP text. */
            for (const char *p = e->help; *p; p++) {
                if (*p == '\\')
                    fputs("\\\\", out);
                else if (*p == '\n')
                    fputs("\\n", out);
                else
                    fputc(*p, out);
            }
            fprintf(out, "\n# TYPE %s %s\n", e->name, e->type);
        }
        if (e->labels[0])
            fprintf(out, "%s{%s} %lld\n", e->name, e->labels, (long long)cn_metric_get(&e->metric));
        else
            fprintf(out, "%s %lld\n", e->name, (long long)cn_metric_get(&e->metric));
    }
    pthread_mutex_unlock(&metrics_lock);
}

void cn_metrics_reset(void)
{
    pthread_mutex_lock(&metrics_lock);
    metric_entry *e = metrics_head;
    while (e) {
        metric_entry *next = e->next;
        free(e->name);
        free(e->help);
        free(e->labels);
        free(e);
        e = next;
    }
    metrics_head = metrics_tail = NULL;
    pthread_mutex_unlock(&metrics_lock);
}
