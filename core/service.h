/*
 * The service: components built from the config, wired into pipelines, and
 * run. `validate` and `run` both call cn_service_build, so they check exactly
 * the same graph; only `run` goes on to cn_service_start.
 */
#ifndef CANOPY_SERVICE_H
#define CANOPY_SERVICE_H

#include <pthread.h>
#include <stdatomic.h>

#include "canopy/plugin.h"
#include "canopy/task_views.h"
#include "delivered.h"
#include "intake.h"
#include "queue.h"
#include "spool.h"

typedef struct cn_pipeline cn_pipeline;
typedef struct cn_service cn_service;

/* Options every exporter has, handled by the core (OpenTelemetry's names). */
typedef struct cn_exporter_common {
    struct {
        int64_t queue_size; /* chunks */
    } sending_queue;
    struct {
        bool enabled;
        int64_t initial_interval;
        int64_t max_interval;
        int64_t max_elapsed_time;
    } retry_on_failure;
    cn_spool_options spool; /* on when spool.directory is set */
} cn_exporter_common;

typedef struct cn_exporter_runtime {
    cn_exporter_common common;
    cn_queue queue;
    pthread_t thread;
    bool thread_started;
    cn_metric *sent_chunks, *sent_snapshots, *failed_snapshots, *retries, *queue_full_snapshots,
        *shutdown_dropped_snapshots, *queue_size, *queue_capacity;
    cn_ratelimit full_log, fail_log;
    /* Set while the exporter drops data past its retry budget; cleared by the next success (readiness). */
    atomic_bool failing;
    /* Durable (spool:) exporters: chunks are spooled by the pipeline and read back by the worker. */
    cn_pipeline *pipeline; /* the one pipeline a spooled exporter may be in */
    size_t n_pipelines;
    cn_spool *spool;
    cn_delivered *delivered;
    atomic_bool stopping;
    atomic_bool abandoned;  /* shutdown left undelivered data for the next start */
    atomic_bool backlogged; /* chunks that could not be spooled wait in memory: receivers refuse */
    cn_metric *replay_skipped;
} cn_exporter_runtime;

struct cn_component {
    cn_kind kind;
    char *id;     /* "type" or "type/name" */
    char *type;
    char labels[192];
    const cn_node *node;    /* the component's config value; may be NULL */
    const cn_node *id_node; /* the key, for errors */
    const cn_option *options;
    void *ctx;
    cn_service *svc;
    bool started;
    bool keep; /* a receiver that a reload hands over running (reload.c) */
    bool check_pending; /* a receiver's cb_check waits until the exporters are built */
    const cn_plugin *plugin;
    /* receivers: the pipelines fed */
    cn_pipeline **feeds;
    size_t n_feeds;
    /* exporters */
    cn_exporter_runtime *rt;
};

/* A processor's or an exporter's whole plugin: the header is its first member. */
static inline const cn_processor_plugin *cn_processor_of(const cn_component *c)
{
    return (const cn_processor_plugin *)c->plugin;
}
static inline const cn_exporter_plugin *cn_exporter_of(const cn_component *c)
{
    return (const cn_exporter_plugin *)c->plugin;
}

typedef struct cn_pipeline_emitter {
    cn_emitter base;
    cn_pipeline *pipeline;
    size_t next_stage; /* index of the processor to feed, or n_processors for fan-out */
} cn_pipeline_emitter;

struct cn_pipeline {
    char *name;
    const cn_node *node;
    cn_service *svc;
    cn_component **receivers, **processors, **exporters;
    size_t n_receivers, n_processors, n_exporters;
    cn_pipeline_emitter *emitters; /* n_processors + 1 */
    cn_intake *intake;             /* on when an exporter has a spool */
    cn_spool_options intake_options;
    cn_metric **processor_batches; /* per processor */
    cn_queue input;
    pthread_t thread;
    bool thread_started;
    cn_metric *queue_size, *queue_capacity;
};

/* service.telemetry.http: the admin API's listener and who may use it (core/admin_auth.c). */
typedef struct cn_http_settings {
    char *listen;
    bool allow_insecure;
    struct {
        char *cert_file;
        char *key_file;
    } tls;
    char *token;
    char *token_file;
} cn_http_settings;

typedef struct cn_service_settings {
    int64_t shutdown_timeout;
    int64_t pipeline_queue_size;
    int64_t memory_limit;
    struct {
        struct {
            char *level;
        } logs;
        cn_http_settings http;
    } telemetry;
} cn_service_settings;

struct cn_service {
    cn_document *doc;
    cn_service_settings settings;
    cn_component **components; /* receivers, exporters, extensions (processors live in their pipelines) */
    size_t n_components;
    cn_pipeline **pipelines;
    size_t n_pipelines;
    cn_task_registry *tasks;
    int64_t max_tasks;
    atomic_bool accepting;
    cn_metric *memory_refused, *live_bytes;
    void *admin; /* admin HTTP server state, owned by admin.c */
    /* What the admin API shows about tasks (canopy/task_views.h); set by one exporter's cb_start. */
    const cn_task_views *views;
    void *views_arg;
    const char *views_owner; /* the component id that registered them */
    cn_ratelimit memory_log;
    atomic_bool stopping;
};

/*
 * Reload (reload.c): hands the running service `old` over to `new` (built and
 * checked, not started): receivers with unchanged config keep running, the
 * rest of `old` stops as at shutdown and is freed. Returns new, which the
 * caller then starts with cn_service_start.
 */
cn_service *cn_service_reload(cn_service *old, cn_service *new);
/* Receivers hand batches over under the read side of this; a reload swaps them under the write side. */
void cn_service_swap_begin(void);
void cn_service_swap_end(void);

/* Builds and checks the whole graph. Returns NULL when d holds errors. Takes doc. */
cn_service *cn_service_build(cn_document *doc, cn_diag *d);
/* Starts exporters, pipelines, then receivers. Returns 0, or -1 (already logged). */
int cn_service_start(cn_service *svc);
/* Stops receivers, drains pipelines and exporters within shutdown_timeout. */
void cn_service_stop(cn_service *svc);
void cn_service_free(cn_service *svc);

/* Exporter runtime (exporter.c). */
int cn_exporter_runtime_start(cn_component *c);
/* Hands a chunk to the plugin until delivered (CN_OK), dropped (CN_FAIL) or, when
 * `persistent`, abandoned at the shutdown deadline (CN_RETRY; it stays spooled). */
cn_status cn_export_with_retry(cn_component *c, cn_chunk *chunk, bool persistent);
/* Durable exporters (exporter_spool.c). */
int cn_exporter_spool_start(cn_component *c);
void *cn_exporter_spool_main(void *arg);
void cn_exporter_spool_free(cn_component *c);
/* Spools one chunk (record: its durable encoding, NULL when it could not be
 * encoded), or keeps it in memory when the spool refuses; takes the chunk's
 * reference. CN_FAIL when dropped (counted). */
cn_status cn_exporter_spool_put(cn_component *c, const uint8_t *record, size_t len, cn_chunk *chunk);
void cn_component_free(cn_component *c);
void cn_exporter_enqueue(cn_component *c, cn_chunk *chunk); /* takes the ref */
/* Counts (and logs, rate limited) a chunk the exporter will not get. */
void cn_exporter_count_drop(cn_component *c, const cn_chunk *chunk, const char *why);
void cn_exporter_runtime_close(cn_component *c);
void cn_exporter_runtime_join(cn_component *c, int64_t deadline_mono_ms);
void cn_exporter_runtime_free(cn_component *c);

/* Pipeline runtime (pipeline.c). */
/* Opens the pipeline's intake log when one of its exporters is durable (before the exporters start). */
int cn_pipeline_open_intake(cn_pipeline *p);
int cn_pipeline_start(cn_pipeline *p);
/* Hands what the intake log holds from before a restart to the pipeline (after it started). */
void cn_pipeline_replay(cn_pipeline *p);
void cn_pipeline_close_and_join(cn_pipeline *p);

/* Static tasks (static_tasks.c). */
int cn_static_tasks_load(cn_task_registry *reg, const cn_node *list, int64_t now_ms, cn_diag *d);

/* The embedded default config (generated from config/canopy.yaml). */
extern const char cn_default_config[];
extern const size_t cn_default_config_len;

#endif
