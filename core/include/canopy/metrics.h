/*
 * Process-wide metrics: monotonic counters and gauges, each with a name, help
 * text and a fixed label set, exposed in Prometheus text format.
 * Increments are lock free; registration takes a lock and is done at start.
 */
#ifndef CANOPY_METRICS_H
#define CANOPY_METRICS_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

typedef struct cn_metric {
    _Atomic int64_t value;
} cn_metric;

/*
 * Returns the metric for (name, labels), creating it on first use; the same
 * arguments return the same metric. labels is a Prometheus label list without
 * braces, e.g. `component="nng",reason="malformed"`, or "".
 * Never returns NULL: on allocation failure a shared scratch metric is used.
 */
cn_metric *cn_counter(const char *name, const char *help, const char *labels);
cn_metric *cn_gauge(const char *name, const char *help, const char *labels);

static inline void cn_metric_add(cn_metric *m, int64_t n)
{
    atomic_fetch_add_explicit(&m->value, n, memory_order_relaxed);
}
static inline void cn_metric_inc(cn_metric *m) { cn_metric_add(m, 1); }
static inline void cn_metric_set(cn_metric *m, int64_t v)
{
    atomic_store_explicit(&m->value, v, memory_order_relaxed);
}
static inline int64_t cn_metric_get(const cn_metric *m)
{
    return atomic_load_explicit(&((cn_metric *)m)->value, memory_order_relaxed);
}

/* Value of a registered metric, or -1 when there is none (tests, summaries). */
int64_t cn_metric_value(const char *name, const char *labels);
/* Writes every metric in Prometheus text exposition format 0.0.4. */
void cn_metrics_write_prometheus(FILE *out);
/* Frees every metric; only at process exit, after all threads stopped. */
void cn_metrics_reset(void);

#endif
