/*
 * The plugin interface. A plugin is a struct of callbacks plus a config map,
 * as in Fluent Bit. The core allocates the plugin's context (ctx_size bytes,
 * zeroed), fills it from the config map, then calls the callbacks. Every
 * plugin has exactly one destroy path, cb_destroy, which must cope with a
 * context that was only partly set up (cb_start failed half way).
 *
 * Life cycle, for `validate` and `run` alike: options applied -> cb_check.
 * Only `run` goes on: cb_start -> ... -> cb_stop (receivers) -> cb_destroy.
 */
#ifndef CANOPY_PLUGIN_H
#define CANOPY_PLUGIN_H

#include "canopy/batch.h"
#include "canopy/common.h"
#include "canopy/config.h"
#include "canopy/log.h"
#include "canopy/metrics.h"
#include "canopy/tasks.h"

typedef enum cn_kind {
    CN_RECEIVER = 0,
    CN_PROCESSOR,
    CN_EXPORTER,
} cn_kind;

typedef struct cn_component cn_component;

/* ---- what the core offers to plugins -------------------------------------- */

/* "nng" or "file/debug": the id as written in the config. */
const char *cn_component_id(const cn_component *c);
/* The component's config map node (for errors in cb_check); may be NULL. */
const cn_node *cn_component_node(const cn_component *c);
/* Prometheus label set `component="<id>"`, for the component's own metrics. */
const char *cn_component_labels(const cn_component *c);
cn_task_registry *cn_component_tasks(const cn_component *c);

/* Hands a decoded batch from a receiver to every pipeline it feeds. */
typedef enum cn_submit_result {
    CN_SUBMIT_OK = 0,
    CN_SUBMIT_FULL,          /* a pipeline queue is full: retryable */
    CN_SUBMIT_MEMORY_LIMIT,  /* the memory limiter refuses: retryable */
    CN_SUBMIT_SHUTTING_DOWN, /* retryable, against a restarted collector */
} cn_submit_result;
/*
 * All or nothing: either every pipeline the receiver feeds took a reference,
 * or none did. With a durable exporter in a pipeline, the batch is in its
 * intake log when this returns CN_SUBMIT_OK: only then may the receiver ack
 * it. Never blocks on exporters. The caller keeps its own reference.
 */
cn_submit_result cn_receiver_submit(cn_component *receiver, cn_batch *batch);

/* Processors pass chunks on through an emitter; ownership of the chunk moves. */
typedef struct cn_emitter {
    void (*emit)(struct cn_emitter *e, cn_chunk *chunk);
} cn_emitter;
static inline void cn_emit(cn_emitter *e, cn_chunk *chunk) { e->emit(e, chunk); }

/* ---- the three kinds of plugin -------------------------------------------- */

typedef struct cn_receiver_plugin {
    const char *type;
    const char *description;
    size_t ctx_size;
    const cn_option *options;
    /* Checks option values without side effects. Return 0, or -1 after cn_diag_error. */
    int (*cb_check)(void *ctx, cn_component *self, cn_diag *d);
    /* Opens listeners and starts serving. Returns 0, or -1 after logging why. */
    int (*cb_start)(void *ctx, cn_component *self);
    /* Stops taking new requests and waits until in-flight ones are answered. */
    void (*cb_stop)(void *ctx);
    void (*cb_destroy)(void *ctx);
} cn_receiver_plugin;

typedef struct cn_processor_plugin {
    const char *type;
    const char *description;
    size_t ctx_size;
    const cn_option *options;
    int (*cb_check)(void *ctx, cn_component *self, cn_diag *d);
    int (*cb_start)(void *ctx, cn_component *self);
    /* Takes ownership of `in`; emits zero or more chunks. Runs on the pipeline thread. */
    void (*cb_process)(void *ctx, cn_chunk *in, cn_emitter *out);
    /* Periodic, on the pipeline thread (every ~100 ms): time-based flushes. */
    void (*cb_tick)(void *ctx, int64_t now_mono_ms, cn_emitter *out);
    /* Shutdown: emit everything still buffered. */
    void (*cb_drain)(void *ctx, cn_emitter *out);
    void (*cb_destroy)(void *ctx);
} cn_processor_plugin;

typedef struct cn_exporter_plugin {
    const char *type;
    const char *description;
    size_t ctx_size;
    const cn_option *options;
    int (*cb_check)(void *ctx, cn_component *self, cn_diag *d);
    int (*cb_start)(void *ctx, cn_component *self);
    /*
     * Exports one chunk, on the exporter's own thread. CN_OK: done. CN_RETRY:
     * the core retries the same chunk with backoff (retry_on_failure).
     * CN_FAIL: dropped and counted. Must be idempotent for a retried chunk as
     * far as the sink allows.
     */
    cn_status (*cb_export)(void *ctx, const cn_chunk *chunk);
    /* Periodic, on the exporter's thread, between exports (~100 ms). Optional. */
    void (*cb_tick)(void *ctx, int64_t now_mono_ms);
    /* Last call before destroy, on the exporter's thread: flush and close. Optional. */
    void (*cb_flush)(void *ctx);
    /*
     * Optional. `tasks.<type>: {exporter: <id>, ...}` names an exporter of this
     * type as a task source, so the plugin can feed the registry (e.g. proxy
     * an OAP's tasks) reusing its connection. The core calls it twice with the
     * `tasks.<type>` map node: while building the graph with reg == NULL, to
     * check the options only (no side effects; validate stops there), and
     * after cb_start with the registry, to start. The `exporter` key belongs
     * to the core; ignore it.
     */
    int (*cb_task_source)(void *ctx, cn_component *self, const cn_node *source_cfg,
                          cn_task_registry *reg, cn_diag *d);
    /*
     * Optional. Called from the stopping thread when service.shutdown_timeout
     * runs out while cb_export is still running (a backend that hangs). Must
     * not block and must be thread safe: it aborts the in-flight remote call,
     * and cb_export then returns CN_RETRY.
     */
    void (*cb_interrupt)(void *ctx);
    /*
     * Optional, for exactly-once delivery with a spool. After a crash the spool
     * replays records the sink may already hold. Before replaying, the core asks
     * the plugin what its sink already has: call `seen` for every (task,
     * segment, sequence) it holds. Called on the exporter's thread after
     * cb_start. A sink that cannot be read back (a remote backend) leaves it NULL
     * and relies on the core's delivery log.
     */
    void (*cb_recover)(void *ctx, void (*seen)(void *arg, const char *task, const char *segment, int32_t seq),
                       void *arg);
    /* Called before cb_destroy when cb_task_source was used; stops its threads. */
    void (*cb_task_source_stop)(void *ctx);
    void (*cb_destroy)(void *ctx);
} cn_exporter_plugin;

/* Lookup of compiled-in plugins (core/plugins.c, generated by the build). */
const cn_receiver_plugin *cn_find_receiver(const char *type);
const cn_processor_plugin *cn_find_processor(const char *type);
const cn_exporter_plugin *cn_find_exporter(const char *type);
/* Iteration for `canopy components` and the docs generator; NULL-terminated. */
extern const cn_receiver_plugin *const cn_receiver_plugins[];
extern const cn_processor_plugin *const cn_processor_plugins[];
extern const cn_exporter_plugin *const cn_exporter_plugins[];

#endif
