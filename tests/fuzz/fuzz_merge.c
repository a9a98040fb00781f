/*
 * Fuzz target: the merge_by_task processor fed decoded batches, through its
 * cn_processor_plugin callbacks exactly as the pipeline thread calls them.
 *
 * Input: one mode byte, then records [op][len lo][len hi][len bytes]:
 *   op & 3 == 0  decode the bytes as a canopy.v1.Request and feed its batch
 *   op & 3 == 1  feed, then tick with the clock moved on (op >> 2) * 50 ms
 *   op & 3 == 2  tick only, clock moved on (op >> 2) * 1 s (bytes ignored)
 *   op & 3 == 3  feed the same batch twice (a resend that got past dedup)
 * then cb_drain and cb_destroy. The mode byte picks the options: bit 0
 * chooses "strict" (no segment is ever forgotten early, so duplicates must
 * never pass) or "loose" (tiny max_segments_per_task and idle timeouts, so
 * eviction and sweeping run), bits 1-2 max_snapshots, bits 3-4 max_tasks.
 *
 * Invariants checked on every emitted chunk:
 *  - every snapshot belongs to the chunk's task, and its batch is one the
 *    chunk holds a reference on;
 *  - within a chunk, each segment's sequences strictly increase;
 *  - strict mode: no (task, segment, sequence) is emitted twice while the
 *    task lives (a final chunk ends it; a later snapshot starts it afresh).
 * And at the end: every snapshot fed is accounted for, emitted or counted
 * as a duplicate or a drop (nothing is dropped silently), and every batch
 * reference is released.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <string.h>

#include "canopy/dict.h"
#include "canopy/log.h"
#include "fuzz.h"
#include "service.h"

static const cn_batch_limits receiver_limits = {16384, 65536, 4096, 1024};

static cn_service *svc;
static cn_component *merge_comp;
static cn_document *option_docs[32];

static const char service_yaml[] =
    "receivers:\n  nng:\n    listen: [ipc:///tmp/canopy-fuzz-merge.sock]\n"
    "processors:\n  merge_by_task/fuzz:\n"
    "exporters:\n  discard:\n"
    "service:\n  pipelines:\n    p:\n      receivers: [nng]\n"
    "      processors: [merge_by_task/fuzz]\n      exporters: [discard]\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    cn_log_set_level(CN_LOG_OFF);
    cn_diag d = {0};
    cn_document *doc = cn_document_parse("fuzz-service.yaml", service_yaml, strlen(service_yaml), &d);
    svc = doc ? cn_service_build(doc, &d) : NULL;
    for (size_t i = 0; i < d.n_errors; i++)
        fprintf(stderr, "%s\n", d.errors[i]);
    cn_diag_free(&d);
    FUZZ_CHECK(svc && svc->n_pipelines == 1 && svc->pipelines[0]->n_processors == 1);
    merge_comp = svc->pipelines[0]->processors[0];
    return 0;
}

/* The options of one mode, parsed once. */
static const cn_node *mode_options(unsigned mode)
{
    mode &= 31;
    if (!option_docs[mode]) {
        static const int max_snapshots[] = {1, 3, 64, 8192};
        static const int max_tasks[] = {1, 2, 8, 1024};
        bool strict = mode & 1;
        char text[512];
        snprintf(text, sizeof text,
                 "flush_interval: 20ms\nmax_snapshots: %d\nmax_tasks: %d\n"
                 "max_segments_per_task: %d\nsegment_idle_timeout: %s\ntask_idle_timeout: %s\n",
                 max_snapshots[(mode >> 1) & 3], max_tasks[(mode >> 3) & 3], strict ? 100000000 : 10,
                 strict ? "168h" : "1s", strict ? "5s" : "1s");
        cn_diag d = {0};
        option_docs[mode] = cn_document_parse("fuzz-merge.yaml", text, strlen(text), &d);
        for (size_t i = 0; i < d.n_errors; i++)
            fprintf(stderr, "%s\n", d.errors[i]);
        cn_diag_free(&d);
        FUZZ_CHECK(option_docs[mode]);
    }
    return option_docs[mode]->root;
}

typedef struct harness {
    cn_emitter base;
    bool strict;
    cn_dict *emitted; /* task id -> cn_dict of "<segment>\x1f<seq>" keys */
    uint64_t fed, out;
} harness;

static void free_set(void *p) { cn_dict_free(p, NULL); }

static void on_emit(cn_emitter *e, cn_chunk *c)
{
    harness *h = (harness *)e;
    FUZZ_CHECK(c && c->task_id);
    cn_dict *last_seq = cn_dict_new(16); /* segment -> last sequence + 1, this chunk */
    cn_dict *seen = cn_dict_get(h->emitted, c->task_id);
    if (!seen && h->strict && c->n) {
        seen = cn_dict_new(16);
        FUZZ_CHECK(seen && cn_dict_put(h->emitted, c->task_id, seen) == 0);
    }
    FUZZ_CHECK(last_seq);
    for (size_t i = 0; i < c->n; i++) {
        const cn_snap_ref *r = &c->refs[i];
        bool held = false;
        for (size_t k = 0; k < c->n_batches && !held; k++)
            held = c->batches[k] == r->batch;
        FUZZ_CHECK(held);
        FUZZ_CHECK(strcmp(cn_ref_task(r), c->task_id) == 0);
        const char *seg = cn_ref_segment(r);
        int32_t seq = r->snap->sequence;
        FUZZ_CHECK(seq >= 0);
        intptr_t prev = (intptr_t)cn_dict_get(last_seq, seg); /* 0: none yet */
        FUZZ_CHECK((intptr_t)seq + 1 > prev);
        FUZZ_CHECK(cn_dict_put(last_seq, seg, (void *)((intptr_t)seq + 1)) == 0);
        for (size_t f = 0; f < r->snap->n_frames; f++)
            FUZZ_CHECK(cn_ref_frame(r, f) != NULL);
        if (h->strict) {
            size_t len = strlen(seg) + 16;
            char *key = malloc(len);
            FUZZ_CHECK(key);
            snprintf(key, len, "%s\x1f%" PRId32, seg, seq);
            if (cn_dict_get(seen, key)) {
                fprintf(stderr, "task %s segment %s sequence %d emitted twice\n", c->task_id, seg, seq);
                FUZZ_CHECK(!"a (task, segment, sequence) was emitted twice");
            }
            FUZZ_CHECK(cn_dict_put(seen, key, (void *)1) == 0);
            free(key);
        }
    }
    cn_dict_free(last_seq, NULL);
    h->out += c->n;
    if (c->task_final)
        free_set(cn_dict_remove(h->emitted, c->task_id)); /* the task ended: it may start afresh */
    cn_chunk_unref(c);
}

static void feed(const cn_processor_plugin *p, void *ctx, harness *h, cn_batch *b)
{
    cn_chunk *c = cn_chunk_from_batch(b);
    if (!c)
        return;
    h->fed += c->n;
    p->cb_process(ctx, c, &h->base);
}

static int64_t metric(const char *name)
{
    int64_t v = cn_metric_value(name, cn_component_labels(merge_comp));
    return v < 0 ? 0 : v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const cn_processor_plugin *p = cn_processor_of(merge_comp);
    const int64_t live_before = cn_batch_live_bytes();
    harness h = {.base = {on_emit}, .strict = data[0] & 1, .emitted = cn_dict_new(16)};
    FUZZ_CHECK(h.emitted);
    void *ctx = calloc(1, p->base.ctx_size);
    FUZZ_CHECK(ctx);
    cn_diag d = {0};
    int applied = cn_options_apply(p->base.options, ctx, mode_options(data[0]), &d);
    for (size_t i = 0; i < d.n_errors; i++)
        fprintf(stderr, "%s\n", d.errors[i]);
    FUZZ_CHECK(applied == 0);
    cn_diag_free(&d);
    FUZZ_CHECK(p->base.cb_start(ctx, merge_comp) == 0);
    const int64_t dups0 = metric("canopy_merge_duplicate_snapshots_total"),
                  limit0 = metric("canopy_merge_limit_dropped_snapshots_total"),
                  oom0 = metric("canopy_merge_oom_dropped_snapshots_total"),
                  evicted0 = metric("canopy_merge_evicted_segments_total");

    int64_t vclock = 0; /* virtual time added to the monotonic clock for ticks */
    size_t pos = 1;
    while (pos + 3 <= size) {
        uint8_t op = data[pos];
        size_t len = (size_t)data[pos + 1] | (size_t)data[pos + 2] << 8;
        pos += 3;
        if (len > size - pos)
            len = size - pos;
        const uint8_t *body = data + pos;
        pos += len;
        if ((op & 3) == 2) {
            vclock += (int64_t)(op >> 2) * 1000;
            p->cb_tick(ctx, cn_mono_ms() + vclock, &h.base);
            continue;
        }
        Canopy__V1__Request *req;
        cn_arena *arena;
        cn_batch *b;
        cn_refusal why;
        if (cn_request_decode(body, len, &receiver_limits, &req, &arena, &b, &why) !=
            CANOPY__V1__REASON__REASON_OK)
            continue;
        if (!b) {
            cn_arena_free(arena); /* a command query or a task finish */
            continue;
        }
        feed(p, ctx, &h, b);
        if ((op & 3) == 3)
            feed(p, ctx, &h, b);
        cn_batch_unref(b);
        if ((op & 3) == 1) {
            vclock += (int64_t)(op >> 2) * 50;
            p->cb_tick(ctx, cn_mono_ms() + vclock, &h.base);
        }
    }
    p->cb_drain(ctx, &h.base);

    /* Strict mode must never have had to forget a segment early. */
    if (h.strict)
        FUZZ_CHECK(metric("canopy_merge_evicted_segments_total") == evicted0);
    const int64_t dropped = (metric("canopy_merge_duplicate_snapshots_total") - dups0) +
                            (metric("canopy_merge_limit_dropped_snapshots_total") - limit0) +
                            (metric("canopy_merge_oom_dropped_snapshots_total") - oom0);
    if ((int64_t)h.fed != (int64_t)h.out + dropped)
        fprintf(stderr, "fed %" PRIu64 " emitted %" PRIu64 " counted as dropped %" PRId64 "\n", h.fed, h.out,
                dropped);
    FUZZ_CHECK((int64_t)h.fed == (int64_t)h.out + dropped);

    p->base.cb_destroy(ctx);
    cn_options_free(p->base.options, ctx);
    free(ctx);
    cn_dict_free(h.emitted, free_set);
    FUZZ_CHECK(cn_batch_live_bytes() == live_before);
    return 0;
}
