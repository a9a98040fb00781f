/*
 * The plugin interface. A plugin is a struct of callbacks plus a config map,
 * as in Fluent Bit. Every kind starts with the same header (cn_plugin): the
 * core allocates the plugin's context (ctx_size bytes, zeroed), fills it from
 * the config map, checks, starts, stops and destroys any plugin through it,
 * without asking what kind it is. Every plugin has exactly one destroy path,
 * cb_destroy, which must cope with a context that was only partly set up
 * (cb_start failed half way).
 *
 * Life cycle, for `validate` and `run` alike: options applied -> cb_check.
 * Only `run` goes on: cb_start -> ... -> cb_stop -> cb_destroy.
 *
 * Kinds: receivers hand batches to the pipelines (cn_receiver_submit);
 * processors turn chunks into chunks on a pipeline's thread; exporters take
 * chunks in and say whether they were delivered; extensions serve the
 * service rather than a pipeline (task sources, under `tasks.<type>`).
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
    CN_EXTENSION,
    CN_N_KINDS
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
/*
 * The config of another configured component, for plugins that build on one
 * (a task source reusing an exporter's endpoints and credentials): its map
 * node (NULL when it has no options) and type. Returns false when no
 * component of that kind has that id.
 */
bool cn_component_peer(const cn_component *self, cn_kind kind, const char *id, const cn_node **node,
                       const char **type);

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
/*
 * True while the service's decoded batches are within a fifth of memory_limit,
 * past which cn_receiver_submit refuses. A receiver that can stop reading (a socket
 * it takes requests from) waits a little before taking the next one, as
 * Fluent Bit pauses an input at mem_buf_limit: its peers' requests then wait
 * in the transport instead of being decoded only to be refused, resent after
 * a back-off, and decoded again. It should not wait forever: past a bound it
 * takes the request and answers what submit says, so a stuck exporter still
 * gets its peers a clear 'overloaded'.
 */
bool cn_receiver_intake_paused(cn_component *receiver);
/*
 * Blocks up to timeout_ms until intake is no longer paused; true when it is
 * not. The batch free that ends the pause wakes the caller: a paused receiver
 * waits on this (on a thread of its own) rather than polling with a timer.
 */
bool cn_receiver_await_intake(cn_component *receiver, int64_t timeout_ms);

/* Processors pass chunks on through an emitter; ownership of the chunk moves. */
typedef struct cn_emitter {
    void (*emit)(struct cn_emitter *e, cn_chunk *chunk);
} cn_emitter;
static inline void cn_emit(cn_emitter *e, cn_chunk *chunk) { e->emit(e, chunk); }

/* ---- the plugins ---------------------------------------------------------- */

/* What every plugin has. Receivers and extensions need nothing more. */
typedef struct cn_plugin {
    cn_kind kind;
    const char *type;
    const char *description;
    size_t ctx_size;
    const cn_option *options;
    /* Checks option values without side effects. Return 0, or -1 after cn_diag_error. Optional. */
    int (*cb_check)(void *ctx, cn_component *self, cn_diag *d);
    /* Starts serving (listeners, threads). Returns 0, or -1 after logging why. Optional. */
    int (*cb_start)(void *ctx, cn_component *self);
    /* Receivers and extensions: stop taking new work and wait until in-flight work is done. Optional. */
    void (*cb_stop)(void *ctx);
    void (*cb_destroy)(void *ctx);
} cn_plugin;

typedef struct cn_processor_plugin {
    cn_plugin base;
    /* Takes ownership of `in`; emits zero or more chunks. Runs on the pipeline thread. */
    void (*cb_process)(void *ctx, cn_chunk *in, cn_emitter *out);
    /* Periodic, on the pipeline thread (every ~100 ms): time-based flushes. Optional. */
    void (*cb_tick)(void *ctx, int64_t now_mono_ms, cn_emitter *out);
    /* Shutdown: emit everything still buffered. Optional. */
    void (*cb_drain)(void *ctx, cn_emitter *out);
} cn_processor_plugin;

typedef struct cn_exporter_plugin {
    cn_plugin base;
    /*
     * Data in, status out: exports one chunk, on the exporter's own thread.
     * CN_OK: delivered. CN_RETRY: the core retries the same chunk with backoff
     * (retry_on_failure; with a spool, for as long as it takes). CN_FAIL:
     * dropped and counted. Must be idempotent for a retried chunk as far as
     * the sink allows.
     */
    cn_status (*cb_export)(void *ctx, const cn_chunk *chunk);
    /* Periodic, on the exporter's thread, between exports (~100 ms). Optional. */
    void (*cb_tick)(void *ctx, int64_t now_mono_ms);
    /* Last call before destroy, on the exporter's thread: flush and close. Optional. */
    void (*cb_flush)(void *ctx);
    /*
     * Optional. Called from the stopping thread when service.shutdown_timeout
     * runs out while cb_export is still running (a backend that hangs). Must
     * not block and must be thread safe: it aborts the in-flight remote call,
     * and cb_export then returns CN_RETRY.
     */
    void (*cb_interrupt)(void *ctx);
    /*
     * Optional, for exactly-once delivery with a spool. After a crash the
     * intake log and the spool replay records the sink may already hold.
     * Before replaying, the core asks the plugin what its sink already has:
     * call `seen` for every (task, segment, sequence) it holds. Called on the
     * exporter's thread after cb_start. A sink that cannot be read back (a
     * remote backend) leaves it NULL and relies on the core's delivery log.
     */
    void (*cb_recover)(void *ctx, void (*seen)(void *arg, const char *task, const char *segment, int32_t seq),
                       void *arg);
} cn_exporter_plugin;

/* Compiled-in plugins (core/plugins.c, generated by the build), every kind, NULL-terminated. */
extern const cn_plugin *const cn_plugins[];
/* The plugin of that kind and type, or NULL. */
const cn_plugin *cn_find_plugin(cn_kind kind, const char *type);
/* "receiver", "processor", "exporter", "extension". */
const char *cn_kind_name(cn_kind kind);

#endif
