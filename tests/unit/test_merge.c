/* merge_by_task: grouping by task, ordering within a segment, deduplication. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

typedef struct capture {
    cn_emitter base;
    cn_chunk *chunks[64];
    size_t n;
} capture;

static void capture_emit(cn_emitter *e, cn_chunk *c)
{
    capture *cap = (capture *)e;
    assert_true(cap->n < 64);
    cap->chunks[cap->n++] = c;
}

static void capture_reset(capture *cap)
{
    for (size_t i = 0; i < cap->n; i++)
        cn_chunk_unref(cap->chunks[i]);
    cap->n = 0;
}

typedef struct fixture {
    cn_service *svc;
    cn_component *merge;
    capture cap;
} fixture;

static const char yaml[] = "receivers:\n  nng:\n    listen: [ipc:///tmp/canopy-unit-merge.sock]\n"
                           "processors:\n  merge_by_task:\n    flush_interval: 1h\n    max_snapshots: 100\n"
                           "exporters:\n  discard:\n"
                           "service:\n  pipelines:\n    p:\n      receivers: [nng]\n"
                           "      processors: [merge_by_task]\n      exporters: [discard]\n"
                           "tasks:\n  static:\n    - {id: ended, service: s, endpoint: /e, duration: 1s, "
                           "start_time: 1000}\n";

/* Every snapshot flushed at once (segments are never left dirty), room for 10
 * segments per task, and a task that stays live for a week (168h). */
static const char yaml_small[] = "receivers:\n  nng:\n    listen: [ipc:///tmp/canopy-unit-merge.sock]\n"
                                 "processors:\n  merge_by_task:\n    flush_interval: 1h\n    max_snapshots: 1\n"
                                 "    max_segments_per_task: 10\n"
                                 "exporters:\n  discard:\n"
                                 "service:\n  pipelines:\n    p:\n      receivers: [nng]\n"
                                 "      processors: [merge_by_task]\n      exporters: [discard]\n"
                                 "tasks:\n  static:\n    - {id: live, service: s, endpoint: /e, duration: 168h}\n";

static int setup_with(void **state, const char *config)
{
    fixture *f = calloc(1, sizeof *f);
    cn_diag d = {0};
    f->svc = test_service(config, &d);
    diag_print(&d);
    assert_non_null(f->svc);
    f->merge = f->svc->pipelines[0]->processors[0];
    assert_int_equal(f->merge->plugin->cb_start(f->merge->ctx, f->merge), 0);
    f->cap.base.emit = capture_emit;
    *state = f;
    return 0;
}

static int setup(void **state) { return setup_with(state, yaml); }
static int setup_small(void **state) { return setup_with(state, yaml_small); }

static int teardown(void **state)
{
    fixture *f = *state;
    capture_reset(&f->cap);
    cn_service_free(f->svc);
    free(f);
    return 0;
}

static void feed(fixture *f, const char *instance, uint64_t seq, const test_snap *snaps, size_t n)
{
    uint8_t *buf;
    size_t len = test_encode_batch(instance, seq, snaps, n, &buf);
    cn_batch *b = test_decode_batch(buf, len);
    free(buf);
    cn_chunk *c = cn_chunk_from_batch(b);
    cn_batch_unref(b);
    cn_processor_of(f->merge)->cb_process(f->merge->ctx, c, &f->cap.base);
}

static void drain(fixture *f) { cn_processor_of(f->merge)->cb_drain(f->merge->ctx, &f->cap.base); }

static cn_chunk *chunk_for(fixture *f, const char *task)
{
    for (size_t i = 0; i < f->cap.n; i++)
        if (strcmp(f->cap.chunks[i]->task_id, task) == 0)
            return f->cap.chunks[i];
    return NULL;
}

static void test_groups_and_orders(void **state)
{
    fixture *f = *state;
    /* Two agents, two tasks; segment s1 arrives out of order across batches. */
    const test_snap b1[] = {
        {"t1", "s1", 10, 2, {"a", NULL}}, {"t2", "x1", 10, 0, {"a", NULL}}, {"t1", "s1", 11, 0, {"a", NULL}},
    };
    const test_snap b2[] = {
        {"t1", "s2", 12, 0, {"b", NULL}}, {"t1", "s1", 12, 1, {"a", NULL}}, {"t1", "s2", 13, 1, {"b", NULL}},
    };
    feed(f, "agent-1", 0, b1, 3);
    feed(f, "agent-2", 0, b2, 3);
    assert_int_equal(f->cap.n, 0); /* nothing flushed before the interval */
    drain(f);
    assert_int_equal(f->cap.n, 2);
    cn_chunk *t1 = chunk_for(f, "t1"), *t2 = chunk_for(f, "t2");
    assert_non_null(t1);
    assert_non_null(t2);
    assert_int_equal(t1->n, 5);
    assert_int_equal(t2->n, 1);
    /* Within each segment, sequences ascend; never renumbered. */
    int32_t last[2] = {-1, -1};
    size_t per_seg[2] = {0, 0};
    for (size_t i = 0; i < t1->n; i++) {
        int k = strcmp(cn_ref_segment(&t1->refs[i]), "s1") == 0 ? 0 : 1;
        assert_true(t1->refs[i].snap->sequence > last[k]);
        assert_string_equal(cn_ref_task(&t1->refs[i]), "t1");
        last[k] = t1->refs[i].snap->sequence;
        per_seg[k]++;
    }
    assert_int_equal(per_seg[0], 3);
    assert_int_equal(per_seg[1], 2);
    assert_int_equal(last[0], 2);
    assert_int_equal(t1->n_batches, 2); /* holds both batches it points into */
}

static void test_drops_duplicates(void **state)
{
    fixture *f = *state;
    const test_snap b1[] = {{"t1", "s1", 10, 0, {"a", NULL}}, {"t1", "s1", 11, 1, {"a", NULL}}};
    const test_snap b_dup_inside[] = {{"t1", "s1", 11, 1, {"a", NULL}}, {"t1", "s1", 12, 2, {"a", NULL}}};
    feed(f, "agent-1", 0, b1, 2);
    feed(f, "agent-1", 1, b_dup_inside, 2); /* seq 1 again, same flush */
    drain(f);
    assert_int_equal(f->cap.n, 1);
    assert_int_equal(f->cap.chunks[0]->n, 3);
    capture_reset(&f->cap);
    /* After a flush, a resent older batch must not get through again... */
    feed(f, "agent-1", 0, b1, 2);
    /* ...but a late, never-seen sequence must. */
    const test_snap late[] = {{"t1", "s1", 20, 4, {"a", NULL}}, {"t1", "s1", 19, 3, {"a", NULL}}};
    feed(f, "agent-1", 3, late, 2);
    drain(f);
    assert_int_equal(f->cap.n, 1);
    cn_chunk *c = f->cap.chunks[0];
    assert_int_equal(c->n, 2);
    assert_int_equal(c->refs[0].snap->sequence, 3);
    assert_int_equal(c->refs[1].snap->sequence, 4);
    assert_int_equal(cn_metric_value("canopy_merge_duplicate_snapshots_total", "component=\"merge_by_task\""), 3);
}

static void test_flush_on_max_snapshots(void **state)
{
    fixture *f = *state;
    test_snap snaps[150];
    for (int i = 0; i < 150; i++)
        snaps[i] = (test_snap){"big", "seg", 100 + i, i, {"f", NULL}};
    feed(f, "agent-1", 0, snaps, 150);
    assert_int_equal(f->cap.n, 1); /* max_snapshots: 100 */
    assert_int_equal(f->cap.chunks[0]->n, 100);
    drain(f);
    assert_int_equal(f->cap.n, 2);
    assert_int_equal(f->cap.chunks[1]->n, 50);
    assert_int_equal(f->cap.chunks[1]->refs[0].snap->sequence, 100);
}

static void test_task_end_flushes_final(void **state)
{
    fixture *f = *state;
    /* "ended" is a static task that started at epoch 1000 ms and ran for 1 s. */
    const test_snap b1[] = {{"ended", "s1", 10, 0, {"a", NULL}}};
    feed(f, "agent-1", 0, b1, 1);
    cn_processor_of(f->merge)->cb_tick(f->merge->ctx, cn_mono_ms(), &f->cap.base);
    assert_int_equal(f->cap.n, 1);
    assert_true(f->cap.chunks[0]->task_final);
    assert_int_equal(f->cap.chunks[0]->n, 1);
}

/* Feeds one snapshot; returns how many snapshots the flush it causes passed on (0: a duplicate). */
static size_t feed_one(fixture *f, const char *segment, int32_t seq)
{
    static uint64_t batch_seq;
    const test_snap one[] = {{"live", segment, 10, seq, {"a", NULL}}};
    size_t before = f->cap.n;
    feed(f, "agent-1", batch_seq++, one, 1);
    assert_int_equal(f->cap.n, before + 1); /* max_snapshots: 1 */
    size_t n = f->cap.chunks[f->cap.n - 1]->n;
    capture_reset(&f->cap);
    return n;
}

static void test_evicts_least_recently_seen(void **state)
{
    fixture *f = *state;
    /* Metrics are process-wide; earlier tests' services left segments counted. */
    int64_t live0 = cn_metric_value("canopy_merge_live_segments", "component=\"merge_by_task\"");
    int64_t evicted0 = cn_metric_value("canopy_merge_evicted_segments_total", "component=\"merge_by_task\"");
    char id[16];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "s%d", i);
        assert_int_equal(feed_one(f, id, 0), 1);
    }
    assert_int_equal(feed_one(f, "s0", 1), 1); /* s0 is now the most recently seen */
    /* The task is full: an 11th segment forgets the oldest tenth (10/10 + 1 = 2): s1 and s2. */
    assert_int_equal(feed_one(f, "s10", 0), 1);
    assert_int_equal(cn_metric_value("canopy_merge_evicted_segments_total", "component=\"merge_by_task\"") - evicted0, 2);
    /* Remembered segments still drop a resent sequence; forgotten ones cannot tell. */
    assert_int_equal(feed_one(f, "s0", 0), 0);
    assert_int_equal(feed_one(f, "s3", 0), 0);
    assert_int_equal(feed_one(f, "s9", 0), 0);
    assert_int_equal(feed_one(f, "s1", 0), 1);
    assert_int_equal(cn_metric_value("canopy_merge_live_segments", "component=\"merge_by_task\"") - live0, 10);
}

static void test_idle_segments_swept(void **state)
{
    fixture *f = *state;
    int64_t live0 = cn_metric_value("canopy_merge_live_segments", "component=\"merge_by_task\"");
    assert_int_equal(feed_one(f, "old", 0), 1);
    assert_int_equal(feed_one(f, "old", 0), 0);
    /* Past segment_idle_timeout (2m) the segment is forgotten; the live task stays. */
    cn_processor_of(f->merge)->cb_tick(f->merge->ctx, cn_mono_ms() + 3 * 60 * 1000, &f->cap.base);
    capture_reset(&f->cap);
    assert_int_equal(cn_metric_value("canopy_merge_live_segments", "component=\"merge_by_task\""), live0);
    assert_int_equal(feed_one(f, "old", 0), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_groups_and_orders, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drops_duplicates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_on_max_snapshots, setup, teardown),
        cmocka_unit_test_setup_teardown(test_task_end_flushes_final, setup, teardown),
        cmocka_unit_test_setup_teardown(test_evicts_least_recently_seen, setup_small, teardown),
        cmocka_unit_test_setup_teardown(test_idle_segments_swept, setup_small, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
