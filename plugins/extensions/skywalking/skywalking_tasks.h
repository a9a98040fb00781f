/*
 * The skywalking task source's context and the records its schedule keeps
 * (skywalking_tasks.c), shared with the calls it makes to the OAP
 * (skywalking_tasks_oap.c). Private to the extension.
 */
#ifndef CANOPY_SKYWALKING_TASKS_H
#define CANOPY_SKYWALKING_TASKS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "canopy/dict.h"
#include "canopy/plugin.h"
#include "skywalking/sw_client.h"

typedef struct sw_tasks_opts {
    char *exporter;
    int64_t poll_interval_ms;
    int64_t max_instances;
    int64_t finish_queue_size;
    int64_t finish_max_elapsed_ms;
    int64_t first_query_wait_ms;
} sw_tasks_opts;

typedef struct sw_instance {
    char *service;
    char *instance;
    /*
     * The lastCommandTime we send for it: the agent's own value at its first
     * query, then the largest CreateTime the OAP gave us for this instance.
     * Not the agent's later values: those also count tasks the registry got
     * on behalf of other instances, and the OAP would then never log this
     * instance as notified of them.
     */
    int64_t cursor;
    int64_t last_ask_ms;     /* monotonic: the agent's latest query */
    int64_t last_poll_ms;    /* monotonic: our latest poll for it; 0 = never */
    bool asked;              /* asked since our latest poll */
    bool first_poll_done;    /* the OAP answered (or failed) our first poll for it */
} sw_instance;

typedef struct sw_finish {
    char *service;
    char *instance;
    char *task_id;
    int attempts;
    int64_t first_ms;        /* monotonic */
    int64_t next_ms;         /* monotonic: not before */
} sw_finish;

/* Work copied out of the lock, done without it. */
typedef struct sw_poll {
    char *key;
    char *service;
    char *instance;
    int64_t cursor;
} sw_poll;

/* The extension's context. */
typedef struct sw_tasks {
    sw_tasks_opts opt;       /* first: the options table's offsets are the context's */
    sw_client client;        /* the named exporter's endpoints, TLS and token */
    bool client_applied;
    sw_client *c;            /* &client */
    cn_component *self;
    cn_task_registry *reg;

    pthread_mutex_t lock;
    pthread_cond_t cond;     /* wakes the task thread */
    pthread_cond_t polled;   /* the task thread finished a round of polls */
    bool lock_ok, cond_ok, polled_ok;
    pthread_t thread;
    bool thread_ok;
    bool stop;

    cn_dict *instances;      /* "service\x1finstance" -> sw_instance */
    sw_finish *fq;           /* finish reports waiting, oldest first */
    size_t fq_n;
    sw_cancel_slot slot;     /* the thread's in-flight call, cancelled by stop */
    unsigned seed;           /* rand_r state for retry jitter (task thread only) */

    cn_metric *m_polls;
    cn_metric *m_poll_errors;
    cn_metric *m_commands;
    cn_metric *m_instances;
    cn_metric *m_instances_refused;
    cn_metric *m_finish_sent;
    cn_metric *m_finish_retried;
    cn_metric *m_finish_dropped;
    cn_ratelimit rl_poll;
    cn_ratelimit rl_refused;
    cn_ratelimit rl_finish;
} sw_tasks;

/* The OAP calls (skywalking_tasks_oap.c): made on the task thread, without t->lock. */
/* Asks the OAP for p's instance's commands; returns the new cursor (largest CreateTime now in the registry), or -1. */
int64_t sw_tasks_poll_instance(sw_tasks *t, const sw_poll *p);
/* Reports f's task finished. 0: sent; 1: retry later; -1: dropped for good. */
int sw_tasks_send_finish(sw_tasks *t, const sw_finish *f);

#endif
