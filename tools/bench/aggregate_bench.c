/*
 * canopy-aggregate-bench: what the per-task call trees cost.
 *
 *   1. merge_by_task throughput alone, and followed by the live exporter's
 *      store (cn_profiles_add_chunk is all its cb_export does), in process
 *      (no transport): decoded batches go through cb_process and cb_drain, as
 *      on the pipeline thread, and every chunk into the store. The workload
 *      is canopy-loadgen's.
 *   2. The time to render a 100k-snapshot task (clone of the live tree plus
 *      the SVG flame graph, folded and pprof), for an app-like profile and for
 *      loadgen's random stacks, which fill the default 50000-node cap.
 *
 * Prints a Markdown table. Best of --rounds runs of the thread's CPU time: the machine is shared.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "canopy/agent.h"
#include "profiles/profiles.h"
#include "service.h"
#include "workload.h"

typedef struct batches {
    cn_batch **v;
    size_t n;
    size_t snapshots;
} batches;

static void batches_free(batches *b)
{
    for (size_t i = 0; i < b->n; i++)
        cn_batch_unref(b->v[i]);
    free(b->v);
    memset(b, 0, sizeof *b);
}

static int batches_push(batches *b, const uint8_t *bytes, size_t len)
{
    Canopy__V1__Request *req;
    cn_arena *arena;
    cn_batch *batch;
    cn_refusal why = {0};
    cn_batch_limits limits = {0};
    if (cn_request_decode(bytes, len, &limits, &req, &arena, &batch, &why) !=
            CANOPY__V1__REASON__REASON_OK ||
        !batch) {
        fprintf(stderr, "aggregate-bench: decode failed: %s\n", why.detail);
        return -1;
    }
    cn_batch **grown = realloc(b->v, (b->n + 1) * sizeof *grown);
    if (!grown) {
        cn_batch_unref(batch);
        return -1;
    }
    b->v = grown;
    b->v[b->n++] = batch;
    b->snapshots += batch->n_snapshots;
    return 0;
}

/* canopy-loadgen's batches for `agents` agents. */
static int loadgen_batches(batches *out, int agents, int per_agent, int batch_size, int depth, int tasks)
{
    for (int a = 0; a < agents; a++) {
        char instance[64];
        snprintf(instance, sizeof instance, "%d@bench", 1000 + a);
        cn_identity id = {.service = "bench", .instance = instance, .host = "bench", .pid = (uint32_t)(1000 + a),
                          .agent_version = "bench", .session = (uint64_t)a + 1};
        lg_workload_config cfg = {.batches = per_agent, .batch_size = batch_size, .depth = depth, .tasks = tasks,
                                  .segment_len = 16, .concurrency = 8, .seed = (uint64_t)a + 1};
        lg_batch *lb;
        if (lg_workload_build(&cfg, &id, 1795000000000LL + a, &lb) != 0)
            return -1;
        for (int i = 0; i < per_agent; i++)
            if (batches_push(out, lb[i].bytes, lb[i].len) != 0) {
                lg_batches_free(lb, per_agent);
                return -1;
            }
        lg_batches_free(lb, per_agent);
    }
    return 0;
}

/*
 * An app-like profile: 8 endpoints, each with 25 call paths 16 frames deep
 * under 4 shared root frames; a request (segment) of 40 snapshots moves to its
 * endpoint's next call path every 3 snapshots. About 3000 distinct nodes.
 */
static int app_batches(batches *out, int agents, int snapshots_per_agent, const char *task)
{
    enum { ROOTS = 4, ENDPOINTS = 8, PATHS = 25, DEEP = 16, SEG_LEN = 40, BATCH = 250 };
    static const char *const roots[ROOTS] = {
        "/usr/lib/python3/dist-packages/gevent/baseserver.py._handle_and_close_when_done: 34",
        "/usr/lib/python3/dist-packages/gunicorn/workers/base_async.py.handle_request: 108",
        "/srv/shop/canopy_agent/middleware.py.__call__: 131", "/srv/shop/app.py.app: 130"};
    static const char *const eps[ENDPOINTS] = {"checkout", "cart", "products", "search",
                                               "login", "orders", "profile", "health"};
    static const char *const fns[] = {"reserve_inventory", "compute_totals", "charge_payment", "sign_payment",
                                      "_remote_call", "dumps", "loads", "recv", "sendall", "execute", "fetchall",
                                      "render", "encode", "sha256", "sleep", "wait", "switch", "query"};
    char sig[192];
    cn_builder *b = cn_builder_new(NULL);
    if (!b)
        return -1;
    int rc = -1;
    for (int a = 0; a < agents; a++) {
        char instance[64];
        snprintf(instance, sizeof instance, "%d@app", 2000 + a);
        cn_identity id = {.service = "shop", .instance = instance, .host = "app", .pid = (uint32_t)(2000 + a),
                          .agent_version = "bench", .session = (uint64_t)a + 100};
        uint64_t batch_seq = 0;
        cn_builder_reset(b);
        for (int s = 0; s < snapshots_per_agent; s++) {
            int seg = s / SEG_LEN, seq = s % SEG_LEN;
            int ep = (seg * 7 + a) % ENDPOINTS, path = (seg * 3 + seq / 3) % PATHS;
            char seg_id[96];
            snprintf(seg_id, sizeof seg_id, "%s-seg-%d", instance, seg);
            char frames_text[ROOTS + 1 + DEEP][256];
            cn_str frames[ROOTS + 1 + DEEP];
            int n = 0;
            for (int r = 0; r < ROOTS; r++)
                snprintf(frames_text[n++], sizeof frames_text[0], "%s", roots[r]);
            snprintf(frames_text[n++], sizeof frames_text[0], "/srv/shop/app.py.%s: %d", eps[ep], 40 + ep * 9);
            int depth = 6 + (path * 5 + ep) % (DEEP - 5);
            for (int d = 0; d < depth; d++) {
                /* Shallow frames are shared by many paths of an endpoint; deep ones differ. */
                int k = d < 3 ? (ep + d) : (ep * 31 + path * (d - 2) + d * 7);
                snprintf(sig, sizeof sig, "/srv/shop/lib/mod%d.py.%s: %d", k % 13, fns[k % 18], 10 + k % 90);
                snprintf(frames_text[n++], sizeof frames_text[0], "%s", sig);
            }
            for (int i = 0; i < n; i++)
                frames[i] = (cn_str){frames_text[i], strlen(frames_text[i]), NULL};
            cn_snapshot_in in = {.task = {task, strlen(task), NULL},
                                 .segment = {seg_id, strlen(seg_id), NULL},
                                 .time_ms = 1795000000000LL + s * 10LL,
                                 .sequence = seq,
                                 .frames = frames,
                                 .n_frames = (size_t)n};
            if (cn_builder_add(b, &in) != 0)
                goto out;
            if (cn_builder_snapshots(b) == BATCH || s + 1 == snapshots_per_agent) {
                uint8_t *bytes;
                size_t len;
                if (cn_builder_encode(b, &id, batch_seq++, &bytes, &len) != 0)
                    goto out;
                int pushed = batches_push(out, bytes, len);
                free(bytes);
                if (pushed != 0)
                    goto out;
                cn_builder_reset(b);
            }
        }
    }
    rc = 0;
out:
    cn_builder_free(b);
    return rc;
}

/* What merge_by_task hands on goes to the live exporter's store when there is one. */
typedef struct store_emitter {
    cn_emitter base;
    cn_profiles *store;
} store_emitter;

static void store_emit(cn_emitter *e, cn_chunk *c)
{
    cn_profiles *store = ((store_emitter *)e)->store;
    if (store)
        cn_profiles_add_chunk(store, c);
    cn_chunk_unref(c);
}

static cn_service *merge_service(void)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "receivers:\n  nng:\n    listen: [ipc:///tmp/canopy-aggregate-bench.sock]\n"
             "processors:\n  merge_by_task:\n    flush_interval: 1h\n"
             "exporters:\n  discard: {}\n"
             "service:\n  pipelines:\n    p:\n      receivers: [nng]\n      processors: [merge_by_task]\n"
             "      exporters: [discard]\n");
    cn_diag d = {0};
    cn_document *doc = cn_document_parse("bench.yaml", yaml, strlen(yaml), &d);
    cn_service *svc = doc ? cn_service_build(doc, &d) : NULL;
    for (size_t i = 0; i < d.n_errors; i++)
        fprintf(stderr, "aggregate-bench: %s\n", d.errors[i]);
    cn_diag_free(&d);
    if (!svc)
        return NULL;
    cn_component *m = svc->pipelines[0]->processors[0];
    if (m->plugin->cb_start(m->ctx, m) != 0) {
        cn_service_free(svc);
        return NULL;
    }
    return svc;
}

/* This thread's CPU time: the machine is shared, and wall time would count other processes' turns. */
static int64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Feeds every batch through a fresh merge_by_task (into store, if any) and drains it; returns the CPU seconds. */
static double run_merge(cn_service *svc, const batches *in, cn_profiles *store)
{
    cn_component *m = svc->pipelines[0]->processors[0];
    store_emitter emitter = {{store_emit}, store};
    cn_emitter *out = &emitter.base;
    int64_t t0 = thread_cpu_ns();
    for (size_t i = 0; i < in->n; i++)
        cn_processor_of(m)->cb_process(m->ctx, cn_chunk_from_batch(in->v[i]), out);
    cn_processor_of(m)->cb_drain(m->ctx, out);
    return (double)(thread_cpu_ns() - t0) / 1e9;
}

typedef struct render_times {
    double clone_ms, svg_ms, folded_ms, pprof_ms;
    size_t svg_bytes, nodes;
    int64_t snapshots, truncated;
} render_times;

static double render_one(const cn_calltree *t, int kind, size_t *bytes)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    if (!out)
        return -1;
    cn_profile_meta meta = {.task_id = "bench", .service = "shop", .agents = 4};
    int64_t t0 = cn_mono_ns();
    int rc = kind == 0 ? cn_calltree_write_svg(t, &meta, 1200, out)
             : kind == 1 ? cn_calltree_write_folded(t, out)
                         : cn_calltree_write_pprof(t, &meta, out);
    fclose(out);
    double ms = (double)(cn_mono_ns() - t0) / 1e6;
    if (bytes)
        *bytes = len;
    free(buf);
    return rc == 0 ? ms : -1;
}

static int run_render(const batches *in, const char *task, int rounds, render_times *best)
{
    cn_service *svc = merge_service();
    cn_profiles *store = cn_profiles_new(NULL, "store=\"bench\"");
    cn_task_figures info;
    if (!svc || !store || (run_merge(svc, in, store), cn_profiles_info(store, task, &info) != 0)) {
        cn_profiles_free(store);
        cn_service_free(svc);
        return -1;
    }
    best->snapshots = info.snapshots;
    best->truncated = info.truncated;
    best->nodes = (size_t)info.nodes;
    cn_task_figures_clear(&info);
    best->clone_ms = best->svg_ms = best->folded_ms = best->pprof_ms = 1e9;
    for (int r = 0; r < rounds; r++) {
        int64_t t0 = cn_mono_ns();
        cn_calltree *t = cn_profiles_clone(store, task, NULL);
        double clone_ms = (double)(cn_mono_ns() - t0) / 1e6;
        if (!t)
            break;
        double svg = render_one(t, 0, &best->svg_bytes), folded = render_one(t, 1, NULL),
               pprof = render_one(t, 2, NULL);
        cn_calltree_free(t);
#define MIN_INTO(x, v) ((x) = (v) < (x) ? (v) : (x))
        MIN_INTO(best->clone_ms, clone_ms);
        MIN_INTO(best->svg_ms, svg);
        MIN_INTO(best->folded_ms, folded);
        MIN_INTO(best->pprof_ms, pprof);
    }
    cn_profiles_free(store);
    cn_service_free(svc);
    return 0;
}

/* One merge of the workload, followed by the live exporter's store when live; -1 on failure. */
static double run_live(const batches *w, bool live)
{
    cn_service *svc = merge_service();
    cn_profiles *store = live ? cn_profiles_new(NULL, "store=\"bench\"") : NULL;
    double sec = svc && (store || !live) ? run_merge(svc, w, store) : -1;
    cn_profiles_free(store);
    cn_service_free(svc);
    return sec;
}

int main(int argc, char **argv)
{
    int rounds = 3;
    static const struct option longopts[] = {{"rounds", required_argument, NULL, 'r'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "r:h", longopts, NULL)) != -1) {
        if (ch == 'r') {
            rounds = atoi(optarg);
        } else {
            printf("Usage: canopy-aggregate-bench [--rounds N]\n\n"
                   "Merge throughput with and without the per-task call trees, and the time to render a\n"
                   "100k-snapshot task as a flame graph, folded stacks and pprof. Prints a Markdown table.\n");
            return ch == 'h' ? 0 : 2;
        }
    }
    if (rounds < 1)
        rounds = 1;
    cn_log_set_level(CN_LOG_WARN);

    batches load = {0}, app = {0}, rnd = {0};
    /* 4 agents x 50 batches x 256 snapshots x 20 frames over 4 tasks: 51,200 snapshots. */
    if (loadgen_batches(&load, 4, 50, 256, 20, 4) != 0 || app_batches(&app, 4, 25000, "task-app") != 0 ||
        loadgen_batches(&rnd, 4, 100, 250, 20, 1) != 0) {
        fprintf(stderr, "aggregate-bench: cannot build the workloads\n");
        return 1;
    }

    /* Profiling aid: CANOPY_BENCH_ONLY_MERGE=load|app runs only the merges, without and with the live store. */
    const char *only = getenv("CANOPY_BENCH_ONLY_MERGE");
    if (only) {
        const batches *w = strcmp(only, "app") == 0 ? &app : &load;
        for (int on = 0; on < 2; on++) {
            double best_s = 1e9;
            for (int r = 0; r < rounds; r++) {
                double sec = run_live(w, on);
                if (sec < 0)
                    return 1;
                best_s = sec < best_s ? sec : best_s;
            }
            printf("%s live exporter %s: %.1f ns per snapshot\n", only, on ? "on" : "off", best_s * 1e9 / (double)w->snapshots);
        }
        return 0;
    }
    /* [workload][live store off, on]: best seconds */
    double best[2][2] = {{1e9, 1e9}, {1e9, 1e9}};
    const batches *work[2] = {&load, &app};
    for (int r = 0; r < rounds; r++)
        for (int w = 0; w < 2; w++)
            for (int on = 0; on < 2; on++) {
                double s = run_live(work[w], on);
                if (s < 0)
                    return 1;
                if (s < best[w][on])
                    best[w][on] = s;
            }

    render_times ra, rr;
    if (run_render(&app, "task-app", rounds, &ra) != 0 || run_render(&rnd, "task-0", rounds, &rr) != 0) {
        fprintf(stderr, "aggregate-bench: render failed\n");
        return 1;
    }

    printf("| Per-task call trees (in process, best of %d) | Value |\n| --- | --- |\n", rounds);
    const char *wnames[2] = {"loadgen workload (random stacks, 20 frames, 4 tasks)",
                             "app-like workload (1 task, 10 to 21 frames)"};
    for (int w = 0; w < 2; w++) {
        printf("| merge_by_task, %s, %zu snapshots | %.2f M snapshots/s |\n", wnames[w],
               work[w]->snapshots, (double)work[w]->snapshots / best[w][0] / 1e6);
        printf("| merge_by_task, same, then the live exporter's call trees | %.2f M snapshots/s (%.2f us per "
               "snapshot more) |\n",
               (double)work[w]->snapshots / best[w][1] / 1e6,
               (best[w][1] - best[w][0]) * 1e6 / (double)work[w]->snapshots);
    }
    const render_times *rs[2] = {&ra, &rr};
    const char *names[2] = {"app-like", "loadgen random stacks"};
    for (int i = 0; i < 2; i++) {
        const render_times *x = rs[i];
        printf("| %s task: %lld snapshots, %zu nodes%s | clone %.1f ms, SVG %.1f ms (%zu KiB), folded %.1f ms, "
               "pprof %.1f ms |\n",
               names[i], (long long)x->snapshots, x->nodes, x->truncated ? " (node cap reached)" : "", x->clone_ms,
               x->svg_ms, x->svg_bytes / 1024, x->folded_ms, x->pprof_ms);
    }
    batches_free(&load);
    batches_free(&app);
    batches_free(&rnd);
    cn_metrics_reset();
    return 0;
}
