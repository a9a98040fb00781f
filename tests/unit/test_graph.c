/* Pipeline graph: what validate (and run) accept and refuse, with positions. */
#include <string.h>

#include "testutil.h"

static const char good[] = "receivers:\n"
                           "  nng:\n"
                           "    listen: [ipc:///tmp/canopy-unit.sock]\n"
                           "processors:\n"
                           "  merge_by_task:\n"
                           "    flush_interval: 200ms\n"
                           "exporters:\n"
                           "  file/a:\n"
                           "    directory: /tmp/canopy-unit-a\n"
                           "  discard:\n"
                           "service:\n"
                           "  shutdown_timeout: 2s\n"
                           "  pipelines:\n"
                           "    profiles:\n"
                           "      receivers: [nng]\n"
                           "      processors: [merge_by_task]\n"
                           "      exporters: [file/a, discard]\n"
                           "    raw:\n"
                           "      receivers: [nng]\n"
                           "      exporters: [discard]\n"
                           "tasks:\n"
                           "  static:\n"
                           "    - id: t-1\n"
                           "      service: shop\n"
                           "      endpoint: /checkout\n"
                           "      duration: 5m\n";

static void test_good_graph(void **state)
{
    (void)state;
    cn_diag d = {0};
    cn_service *svc = test_service(good, &d);
    diag_print(&d);
    assert_non_null(svc);
    assert_int_equal(svc->n_pipelines, 2);
    cn_pipeline *p = svc->pipelines[0];
    assert_string_equal(p->name, "profiles");
    assert_int_equal(p->n_receivers, 1);
    assert_int_equal(p->n_processors, 1);
    assert_int_equal(p->n_exporters, 2);
    assert_string_equal(p->exporters[0]->id, "file/a");
    assert_string_equal(p->exporters[0]->type, "file");
    /* One receiver feeds both pipelines; each pipeline has its own processors. */
    assert_ptr_equal(svc->pipelines[0]->receivers[0], svc->pipelines[1]->receivers[0]);
    assert_int_equal(svc->pipelines[0]->receivers[0]->n_feeds, 2);
    assert_int_equal(svc->pipelines[1]->n_processors, 0);
    assert_int_equal(svc->settings.shutdown_timeout, 2000);
    assert_int_equal(cn_tasks_state(svc->tasks, "t-1", cn_now_ms()), CN_TASK_RUNNING);
    cn_service_free(svc);
}

typedef struct bad_case {
    const char *yaml;
    const char *error;
} bad_case;

static void test_bad_graphs(void **state)
{
    (void)state;
    static const bad_case cases[] = {
        {"receivers:\n  nng:\nexporters:\n  discard:\nservice:\n  pipelines:\n    p:\n      receivers: [nng]\n"
         "      exporters: [x]\n",
         "test.yaml:9:19: service::pipelines::p: references exporter \"x\" which is not configured"},
        {"receivers:\n  nng:\nexporters:\n  discard:\nservice:\n  pipelines:\n    p:\n      receivers: [zz]\n"
         "      exporters: [discard]\n",
         "references receiver \"zz\" which is not configured"},
        {"receivers:\n  nng:\nexporters:\n  discard:\nservice:\n  pipelines:\n    p:\n      receivers: [nng]\n"
         "      processors: [batch]\n      exporters: [discard]\n",
         "references processor \"batch\" which is not configured"},
        {"receivers:\n  nng:\nexporters:\n  kafkaesque:\n", "test.yaml:4:3: unknown exporter type \"kafkaesque\""},
        {"receivers:\n  nng:\n    contexts: lots\n", "test.yaml:3:15: contexts: \"lots\" is not an integer"},
        {"receivers:\n  nng:\n    listn: [ipc:///x]\n", "test.yaml:3:5: unknown option \"listn\""},
        {"recievers:\n  nng:\n", "test.yaml:1:1: unknown top-level key \"recievers\""},
        {"receivers:\n  nng:\nexporters:\n  discard:\n", "service::pipelines: at least one pipeline is required"},
        {"receivers:\n  nng:\nexporters:\n  discard:\nservice:\n  pipelines:\n    p:\n      exporters: [discard]\n",
         "service::pipelines::p: must have at least one receiver"},
        {"receivers:\n  nng:\n    listen: tcp://0.0.0.0:4960\n",
         "refusing plain tcp://0.0.0.0:4960 on a non-loopback address"},
        {"exporters:\n  file:\n    format: jsonl\n", "missing required option \"directory\""},
        {"exporters:\n  discard:\n    sending_queue: {queue_size: 0}\n", "queue_size must be between 1 and 1000000"},
        {"tasks:\n  static:\n    - id: a\n      service: s\n      endpoint: /e\n    - id: a\n      service: s\n"
         "      endpoint: /e\n",
         "task a already exists"},
        {"tasks:\n  static:\n    - id: a\n      service: s\n      endpoint: /e\n      dump_period: 1ms\n",
         "dump_period must be between 10 and 60000"},
        {"tasks:\n  oap: {}\n", "tasks: unknown key \"oap\""},
        {"service:\n  telemetry:\n    logs:\n      level: loud\n", "\"loud\" is not one of debug, info, warn, error"},
        {"receivers:\n  nng/:\n", "receiver id \"nng/\" must be \"type\" or \"type/name\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cn_diag d = {0};
        cn_service *svc = test_service(cases[i].yaml, &d);
        if (svc || !diag_has(&d, cases[i].error)) {
            fprintf(stderr, "case %zu: expected error containing: %s\n", i, cases[i].error);
            diag_print(&d);
        }
        assert_null(svc);
        assert_true(diag_has(&d, cases[i].error));
        cn_diag_free(&d);
    }
}

static void test_default_config_is_valid(void **state)
{
    (void)state;
    cn_diag d = {0};
    cn_document *doc = cn_document_parse("default", cn_default_config, cn_default_config_len, &d);
    assert_non_null(doc);
    cn_service *svc = cn_service_build(doc, &d);
    diag_print(&d);
    assert_non_null(svc);
    cn_service_free(svc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_graph),
        cmocka_unit_test(test_bad_graphs),
        cmocka_unit_test(test_default_config_is_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
