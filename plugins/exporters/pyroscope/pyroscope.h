/*
 * Private to the pyroscope exporter: its one context struct, shared by its
 * files:
 *   pyroscope.c          options, check, start, export, tick, flush, destroy;
 *   pyroscope_windows.c  the interval profiles: snapshots into per-interval
 *                        call trees, closed intervals rendered to pprof;
 *   pyroscope_http.c     the libcurl client and Pyroscope's /ingest URL.
 *
 * The data flow, and why (docs/pyroscope.md has the long form):
 *   chunk -> windows: each snapshot goes into the profile of its (task,
 *     service, endpoint, mode) and of the interval its time falls in;
 *     intervals are aligned to the wall clock (from = k * interval), so they
 *     never overlap or leave gaps, across restarts too.
 *   windows -> pending: an interval closes `delay` after its end (so the
 *     snapshots still on their way through agents' batches and merge_by_task
 *     make it in); each profile becomes one rendered push, queued in order.
 *   pending -> Pyroscope: pushed one by one; a 5xx or a transport error keeps
 *     the push and backs off (the exporter's retry_on_failure intervals);
 *     a 4xx drops it, counted and logged with the server's answer.
 *   backpressure: while the pending pushes are over max_pending_bytes,
 *     cb_export answers CN_RETRY without taking the chunk, so the core's
 *     retry policy and spool hold the newer snapshots instead of memory.
 */
#ifndef CN_PYROSCOPE_H
#define CN_PYROSCOPE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <curl/curl.h>

#include "canopy/dict.h"
#include "canopy/plugin.h"
#include "profiles/calltree.h"

typedef struct pyro_tls {
    char *ca_file;
    char *cert_file;
    char *key_file;
    bool insecure_skip_verify;
} pyro_tls;

typedef struct pyro_basic_auth {
    char *username;
    char *password;
} pyro_basic_auth;

/* One (task, service, endpoint, mode) in one interval, still taking snapshots. */
typedef struct pyro_profile {
    char *task_id, *service, *endpoint, *mode;
    int64_t from_ms;
    int64_t period_ms; /* the task's dump_period; 0 when the registry no longer has the task */
    cn_calltree *tree;
    cn_dict *runs;     /* segment id -> cn_calltree_run, for durations within the interval */
    int64_t snapshots;
} pyro_profile;

/* A closed interval's profile, rendered, waiting to be pushed. */
typedef struct pyro_push {
    struct pyro_push *next;
    char *url;         /* <url>/ingest?name=...&from=...&until=...&format=pprof */
    char *task_id;
    int64_t from_ms;
    int64_t snapshots;
    uint8_t *body;     /* gzipped pprof */
    size_t len;
} pyro_push;

/* What became of one HTTP request. */
typedef struct pyro_response {
    long status;             /* HTTP status; 0 when none came (transport error) */
    CURLcode curl_code;
    char error[CURL_ERROR_SIZE];
    char body[512];          /* the start of the server's answer, for logs */
    size_t body_len;
    int64_t elapsed_ms;
} pyro_response;

typedef struct pyro_ctx {
    /* ---- options, filled by the core from the config map ---- */
    char *url;
    int64_t interval_ms;
    char *name;
    cn_strlist labels; /* key, value, ... */
    char *tenant_id;
    pyro_basic_auth basic_auth;
    char *bearer_token;
    char *bearer_token_file;
    pyro_tls tls;
    int64_t timeout_ms;
    int64_t delay_ms;
    int64_t max_profiles;
    int64_t max_nodes;
    int64_t max_pending_bytes;

    /* ---- runtime ---- */
    cn_component *self;
    const char *id;        /* component id, for logs */
    cn_task_registry *tasks;
    char *base_url;        /* url without a trailing '/' */
    char *token;           /* the bearer token, read from bearer_token_file or bearer_token */
    int64_t retry_initial_ms, retry_max_ms; /* the exporter's retry_on_failure intervals */

    /* HTTP (pyroscope_http.c): one easy handle, reused, so the connection stays open. */
    CURL *curl;
    struct curl_slist *headers;
    atomic_bool interrupted;

    /* Windows (pyroscope_windows.c). */
    cn_dict *open;            /* key -> pyro_profile */
    int64_t closed_until_ms;  /* every interval ending at or before this is closed */
    /*
     * How far the exporter has caught up: the latest receipt time (wall) of a
     * batch it took. While chunks keep coming (a backlog behind a slow or
     * returning server, or steady load), intervals close by it, not by the
     * wall clock, so queued snapshots still find their interval open. Once
     * the exporter has been idle (last_busy_ms, monotonic) for `delay`, the
     * wall clock closes what is left.
     */
    int64_t watermark_ms;
    int64_t last_busy_ms;
    uint64_t last_chunk;      /* the last chunk taken: a retried chunk is never added twice */
    uint32_t *sigs;           /* the snapshot being added, as interned signatures */
    size_t cap_sigs;
    pyro_push *pending, *pending_tail;
    size_t n_pending;
    int64_t pending_bytes;
    int64_t next_attempt_ms;  /* monotonic: no push before it (backoff) */
    int64_t backoff_ms;

    /* Metrics. */
    cn_metric *m_pushes;
    cn_metric *m_bytes;
    cn_metric *m_snapshots_pushed;
    cn_metric *m_fail_4xx, *m_fail_5xx, *m_fail_transport;
    cn_metric *m_dropped_profiles;
    cn_metric *m_dropped_snapshots_4xx;
    cn_metric *m_dropped_snapshots_limit;
    cn_metric *m_dropped_snapshots_render;
    cn_metric *m_dropped_snapshots_shutdown;
    cn_metric *m_late_snapshots;
    cn_metric *m_truncated;
    cn_metric *m_pending;
    cn_metric *m_pending_bytes;
    cn_metric *m_open_profiles;
    cn_metric *m_latency_sum_ms, *m_latency_count, *m_latency_last;

    cn_ratelimit rl_fail;
    cn_ratelimit rl_retry;
    cn_ratelimit rl_drop;
} pyro_ctx;

/* ---- pyroscope_windows.c ---- */
int pyro_windows_init(pyro_ctx *p);
void pyro_windows_free(pyro_ctx *p);
/* Adds a chunk's snapshots to their intervals' profiles. */
void pyro_windows_add(pyro_ctx *p, const cn_chunk *chunk);
/* Closes every interval that ended `delay` before now_ms (all of them with `all`), queueing its pushes. */
void pyro_windows_close(pyro_ctx *p, int64_t now_ms, bool all);
/* The clock intervals close by: the watermark while busy, the wall clock once idle (see watermark_ms). */
int64_t pyro_windows_clock(const pyro_ctx *p);
void pyro_push_free(pyro_push *x);

/* ---- pyroscope_http.c ---- */
int pyro_http_open(pyro_ctx *p);
void pyro_http_close(pyro_ctx *p);
/* POSTs body to url; fills *r. 0 when an HTTP answer came (any status), -1 on a transport error. */
int pyro_http_post(pyro_ctx *p, const char *url, const uint8_t *body, size_t len, pyro_response *r);
/*
 * The push URL: <base>/ingest?name=<app>{labels}&from=<s>&until=<s>&format=pprof, with the
 * app name and label values made acceptable to Pyroscope's parser. NULL when out of memory.
 */
char *pyro_ingest_url(const pyro_ctx *p, const pyro_profile *prof, int64_t until_ms);

#endif
