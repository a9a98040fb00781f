/*
 * The per-task profile store: chunks from batches, agents and segments,
 * task end and eviction at max_tasks, merge_by_task feeding the live
 * exporter, whose views the admin API reads, and the per-task files of the
 * profile exporters.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "profiles/profiles.h"
#include "testutil.h"

#define F(...) {__VA_ARGS__, NULL}

static cn_batch *batch_of(const char *instance, uint64_t seq, const test_snap *snaps, size_t n)
{
    uint8_t *buf;
    size_t len = test_encode_batch(instance, seq, snaps, n, &buf);
    cn_batch *b = test_decode_batch(buf, len);
    free(buf);
    return b;
}

/* A merge_by_task-like chunk: the batch's snapshots of one task, in batch order. */
static cn_chunk *task_chunk(const char *task, cn_batch *b, bool final)
{
    cn_chunk *c = cn_chunk_new(task, b ? b->n_snapshots : 0, 1);
    assert_non_null(c);
    c->task_final = final;
    if (!b)
        return c;
    for (size_t i = 0; i < b->n_snapshots; i++)
        if (strcmp(b->strings[b->snapshots[i]->task], task) == 0)
            c->refs[c->n++] = (cn_snap_ref){b, b->snapshots[i]};
    c->batches[c->n_batches++] = cn_batch_ref(b);
    return c;
}

static const test_snap snaps_a[] = {
    {"t1", "seg-1", 1000, 0, F("app.py.main: 1", "app.py.work: 2")},
    {"t1", "seg-1", 1010, 1, F("app.py.main: 1", "app.py.work: 2")},
    {"t1", "seg-2", 1005, 0, F("app.py.main: 1", "app.py.idle: 9")},
    {"t2", "seg-3", 1000, 0, F("app.py.other: 3")},
};
static const test_snap snaps_b[] = {
    {"t1", "seg-1", 1020, 2, F("app.py.main: 1", "app.py.work: 2")},
    {"t1", "seg-9", 1020, 0, F("app.py.main: 1")},
};

static void test_store(void **state)
{
    (void)state;
    cn_profiles *p = cn_profiles_new(NULL, "store=\"unit\"");
    assert_non_null(p);
    cn_batch *a = batch_of("1@host-a", 0, snaps_a, 4), *b = batch_of("2@host-b", 0, snaps_b, 2);
    /* A chunk that mixes tasks (no merge_by_task in the pipeline). */
    cn_chunk *mixed = cn_chunk_from_batch(a);
    cn_profiles_add_chunk(p, mixed);
    cn_chunk *cb = task_chunk("t1", b, false);
    cn_profiles_add_chunk(p, cb);
    cn_task_figures info;
    assert_int_equal(cn_profiles_info(p, "t1", &info), 0);
    assert_int_equal(info.snapshots, 5);
    assert_int_equal(info.agents, 2);
    assert_int_equal(info.segments, 3);
    assert_int_equal(info.first_ms, 1000);
    assert_int_equal(info.last_ms, 1020);
    assert_string_equal(info.service, "shop");
    assert_false(info.ended);
    cn_task_figures_clear(&info);
    /* seg-1 ran 0,1 (chunk one) then 2 (chunk two): one run of 20 ms across chunks. */
    cn_calltree *t = cn_profiles_clone(p, "t1", NULL);
    assert_non_null(t);
    const cn_calltree_node *nodes = cn_calltree_nodes(t);
    int64_t work_duration = -1;
    for (size_t i = 0; i < cn_calltree_node_count(t); i++)
        if (strcmp(cn_calltree_sig(t, nodes[i].sig), "app.py.work: 2") == 0)
            work_duration = nodes[i].duration_ms;
    assert_int_equal(work_duration, 20);
    cn_calltree_free(t);

    cn_task_figures *list;
    size_t n = cn_profiles_list(p, &list);
    assert_int_equal(n, 2);
    assert_string_equal(list[0].task_id, "t1"); /* oldest first */
    for (size_t i = 0; i < n; i++)
        cn_task_figures_clear(&list[i]);
    free(list);

    cn_chunk *final = task_chunk("t2", NULL, true);
    cn_profiles_add_chunk(p, final);
    assert_int_equal(cn_profiles_info(p, "t2", &info), 0);
    assert_true(info.ended);
    cn_task_figures_clear(&info);
    assert_int_equal(cn_profiles_remove(p, "t2"), 0);
    assert_int_equal(cn_profiles_remove(p, "t2"), -1);
    cn_chunk_unref(final);
    cn_chunk_unref(mixed);
    cn_chunk_unref(cb);
    cn_batch_unref(a);
    cn_batch_unref(b);
    cn_profiles_free(p);
}

static void test_max_tasks(void **state)
{
    (void)state;
    cn_profiles_limits lim = CN_PROFILES_DEFAULT_LIMITS;
    lim.max_tasks = 1;
    cn_profiles *p = cn_profiles_new(&lim, "store=\"unit-max\"");
    cn_batch *a = batch_of("1@h", 0, snaps_a, 4);
    int64_t dropped0 = cn_metric_value("canopy_profile_dropped_snapshots_total", "store=\"unit-max\"");
    cn_chunk *c1 = task_chunk("t1", a, false), *c2 = task_chunk("t2", a, false), *end1 = task_chunk("t1", NULL, true);
    cn_profiles_add_chunk(p, c1);
    /* t1 is live: t2 has no room and is dropped, counted. */
    cn_profiles_add_chunk(p, c2);
    cn_task_figures info;
    assert_int_equal(cn_profiles_info(p, "t2", &info), -1);
    assert_int_equal(cn_metric_value("canopy_profile_dropped_snapshots_total", "store=\"unit-max\"") - dropped0, 1);
    /* Once t1 ended, it makes room for t2. */
    cn_profiles_add_chunk(p, end1);
    cn_profiles_add_chunk(p, c2);
    assert_int_equal(cn_profiles_info(p, "t2", &info), 0);
    cn_task_figures_clear(&info);
    assert_int_equal(cn_profiles_info(p, "t1", &info), -1);
    cn_chunk_unref(c1);
    cn_chunk_unref(c2);
    cn_chunk_unref(end1);
    cn_batch_unref(a);
    cn_profiles_free(p);
}

/* Hands every chunk merge_by_task emits to an exporter, as the pipeline's fan-out does. */
typedef struct sink {
    cn_emitter base;
    cn_component *exporter;
    size_t chunks;
} sink;

static void sink_emit(cn_emitter *e, cn_chunk *c)
{
    sink *s = (sink *)e;
    s->chunks++;
    assert_int_equal(cn_exporter_of(s->exporter)->cb_export(s->exporter->ctx, c), CN_OK);
    cn_chunk_unref(c);
}

static void test_merge_feeds_live_views(void **state)
{
    (void)state;
    static const char yaml[] = "receivers:\n  nng:\n    listen: [ipc:///tmp/canopy-unit-prof.sock]\n"
                               "processors:\n  merge_by_task:\n    flush_interval: 1h\n"
                               "exporters:\n  live:\n    max_nodes: 1000\n"
                               "service:\n  pipelines:\n    p:\n      receivers: [nng]\n"
                               "      processors: [merge_by_task]\n      exporters: [live]\n";
    cn_diag d = {0};
    cn_service *svc = test_service(yaml, &d);
    diag_print(&d);
    assert_non_null(svc);
    cn_component *merge = svc->pipelines[0]->processors[0], *live = NULL;
    for (size_t i = 0; i < svc->n_components; i++)
        if (svc->components[i]->kind == CN_EXPORTER)
            live = svc->components[i];
    assert_non_null(live);
    assert_null(svc->views);
    assert_int_equal(merge->plugin->cb_start(merge->ctx, merge), 0);
    assert_int_equal(live->plugin->cb_start(live->ctx, live), 0);
    /* The live exporter registered its views with this service's admin API, and only one may. */
    assert_non_null(svc->views);
    assert_int_equal(cn_component_serve_views(live, svc->views, svc->views_arg), -1);
    sink out = {.base.emit = sink_emit, .exporter = live};
    cn_batch *a = batch_of("1@h", 0, snaps_a, 4), *b = batch_of("2@h", 0, snaps_b, 2);
    cn_processor_of(merge)->cb_process(merge->ctx, cn_chunk_from_batch(a), &out.base);
    cn_processor_of(merge)->cb_process(merge->ctx, cn_chunk_from_batch(b), &out.base);
    cn_batch_unref(a);
    cn_batch_unref(b);
    cn_task_figures info;
    /* Nothing flushed yet: the exporter is fed at flush. */
    assert_int_equal(svc->views->figures(svc->views_arg, "t1", &info), CN_VIEW_NOT_FOUND);
    cn_processor_of(merge)->cb_drain(merge->ctx, &out.base);
    assert_int_equal(out.chunks, 2);
    assert_int_equal(svc->views->figures(svc->views_arg, "t1", &info), CN_VIEW_OK);
    assert_int_equal(info.snapshots, 5);
    assert_int_equal(info.agents, 2);
    cn_task_figures_clear(&info);
    /* Renders by view name; an unknown view or task is not found. */
    cn_view_body body = {0};
    assert_int_equal(svc->views->render(svc->views_arg, "t1", "folded", NULL, &body), CN_VIEW_OK);
    assert_string_equal(body.content_type, "text/plain; charset=utf-8");
    assert_true(body.owned && body.len > 0);
    free((void *)body.data);
    assert_int_equal(svc->views->render(svc->views_arg, "t1", "nope", NULL, &body), CN_VIEW_NOT_FOUND);
    assert_int_equal(svc->views->render(svc->views_arg, "t9", "folded", NULL, &body), CN_VIEW_NOT_FOUND);
    cn_service_free(svc);
    cn_diag_free(&d);
}

static int render_folded(const cn_calltree *t, const cn_profile_meta *meta, void *arg, FILE *out)
{
    (void)meta;
    ++*(int *)arg;
    return cn_calltree_write_folded(t, out);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void test_profile_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/canopy-unit-files-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char sub[128];
    snprintf(sub, sizeof sub, "%s/out/deeper", dir);
    int renders = 0;
    cn_profile_files_config cfg = {.component = "folded", .labels = "component=\"folded/unit\"", .directory = sub,
                                   .suffix = ".folded", .interval_ms = 1, .limits = CN_PROFILES_DEFAULT_LIMITS,
                                   .render = render_folded, .render_arg = &renders};
    cn_profile_files *f = cn_profile_files_new(&cfg);
    assert_non_null(f);
    cn_batch *a = batch_of("1@h", 0, snaps_a, 4);
    cn_chunk *c = task_chunk("t1", a, false);
    assert_int_equal(cn_profile_files_export(f, c), CN_OK);
    /* A retried chunk (same id) is not added twice. */
    assert_int_equal(cn_profile_files_export(f, c), CN_OK);
    char path[256];
    snprintf(path, sizeof path, "%s/t1.folded", sub);
    assert_int_equal(access(path, F_OK), -1);
    /* interval: the running task's file appears at the next tick. */
    usleep(2000);
    cn_profile_files_tick(f, cn_mono_ms() + 10);
    char *text = slurp(path);
    assert_non_null(text);
    assert_non_null(strstr(text, "app.py.main: 1;app.py.work: 2 2\n"));
    assert_non_null(strstr(text, "app.py.main: 1;app.py.idle: 9 1\n"));
    free(text);
    int before = renders;
    cn_profile_files_tick(f, cn_mono_ms() + 1000);
    assert_int_equal(renders, before); /* nothing new: not rewritten */
    cn_chunk *end = task_chunk("t1", NULL, true);
    assert_int_equal(cn_profile_files_export(f, end), CN_OK);
    assert_int_equal(renders, before + 1);
    /* A task id is made safe as a file name. */
    cn_chunk *odd = cn_chunk_new("../t2", 1, 1);
    assert_non_null(odd);
    odd->refs[0] = (cn_snap_ref){a, a->snapshots[3]};
    odd->n = 1;
    odd->batches[odd->n_batches++] = cn_batch_ref(a);
    assert_int_equal(cn_profile_files_export(f, odd), CN_OK);
    cn_profile_files_flush(f);
    snprintf(path, sizeof path, "%s/_._t2.folded", sub);
    text = slurp(path);
    assert_non_null(text);
    assert_string_equal(text, "app.py.other: 3 1\n");
    free(text);
    char name[64];
    cn_profile_file_name(".hidden/x", ".svg", name, sizeof name);
    assert_string_equal(name, "_hidden_x.svg");
    cn_chunk_unref(c);
    cn_chunk_unref(end);
    cn_chunk_unref(odd);
    cn_batch_unref(a);
    cn_profile_files_free(f);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store),
        cmocka_unit_test(test_max_tasks),
        cmocka_unit_test(test_merge_feeds_live_views),
        cmocka_unit_test(test_profile_files),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    cn_metrics_reset();
    return rc;
}
