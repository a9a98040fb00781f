/*
 * The nng receiver's request protocol (plugins/receivers/nng/protocol.c) on
 * raw bytes: a Request's bytes go in through nngrx_handle_request, the
 * Reply's bytes come out, with no agent connection. The service runs for
 * real (pipeline, exporter, task registry), so an ack means the pipeline
 * took the batch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nng_receiver.h"
#include "testutil.h"

static char sock_path[64];
static cn_service *svc;
static nng_receiver *rx;

static int start_service(void **state)
{
    (void)state;
    snprintf(sock_path, sizeof sock_path, "/tmp/canopy-proto-%d.sock", (int)getpid());
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "receivers:\n"
             "  nng:\n"
             "    listen: [ipc://%s]\n"
             "    max_message_size: 2KiB\n"
             "exporters:\n"
             "  discard:\n"
             "tasks:\n"
             "  static:\n"
             "    - {id: t-1, service: shop, endpoint: /checkout, duration: 5m, min_duration_threshold: 0ms,\n"
             "       dump_period: 10ms, max_sampling_count: 5}\n"
             "    - {id: t-cont, service: shop, endpoint: /cart, continuous: true, window: 5s,\n"
             "       max_sampling_count: 2}\n"
             "service:\n"
             "  telemetry: {http: {listen: \"\"}}\n"
             "  pipelines:\n"
             "    profiles: {receivers: [nng], exporters: [discard]}\n",
             sock_path);
    cn_diag d = {0};
    svc = test_service(yaml, &d);
    if (!svc) {
        diag_print(&d);
        cn_diag_free(&d);
        return -1;
    }
    cn_diag_free(&d);
    if (cn_service_start(svc) != 0)
        return -1;
    for (size_t i = 0; i < svc->n_components; i++)
        if (svc->components[i]->kind == CN_RECEIVER)
            rx = svc->components[i]->ctx;
    return rx ? 0 : -1;
}

static int stop_service(void **state)
{
    (void)state;
    cn_service_stop(svc);
    cn_service_free(svc);
    unlink(sock_path);
    return 0;
}

/* Handles `len` bytes and returns the decoded reply (free with canopy__v1__reply__free_unpacked). */
static Canopy__V1__Reply *handle(const void *data, size_t len)
{
    nng_msg *out = nngrx_handle_request(rx, data, len, "a test");
    assert_non_null(out);
    Canopy__V1__Reply *reply = canopy__v1__reply__unpack(NULL, nng_msg_len(out), nng_msg_body(out));
    nng_msg_free(out);
    assert_non_null(reply);
    return reply;
}

/* Packs req as agent "w-1" of service "shop" and handles it. */
static Canopy__V1__Reply *handle_request(Canopy__V1__Request *req)
{
    static Canopy__V1__AgentIdentity agent = CANOPY__V1__AGENT_IDENTITY__INIT;
    agent.service = "shop";
    agent.instance = "w-1";
    agent.session = 7;
    req->protocol_version = 1;
    req->agent = &agent;
    size_t len = canopy__v1__request__get_packed_size(req);
    uint8_t *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    canopy__v1__request__pack(req, buf);
    Canopy__V1__Reply *r = handle(buf, len);
    free(buf);
    return r;
}

static const test_snap snaps[] = {
    {"t-1", "seg-a", 1000, 0, {"app.py.main: 1", "app.py.handle: 9", NULL}},
    {"t-1", "seg-a", 1010, 1, {"app.py.main: 1", NULL}},
};

static void test_batch_acked_then_duplicate(void **state)
{
    (void)state;
    uint8_t *buf;
    size_t len = test_encode_batch("w-1", 3, snaps, 2, &buf);
    Canopy__V1__Reply *r = handle(buf, len);
    assert_int_equal(r->reason, CANOPY__V1__REASON__REASON_OK);
    assert_int_equal(r->batch_seq, 3);
    canopy__v1__reply__free_unpacked(r, NULL);
    /* The agent did not see the ack and resends: acked again, not submitted again. */
    r = handle(buf, len);
    assert_int_equal(r->reason, CANOPY__V1__REASON__REASON_DUPLICATE);
    assert_int_equal(r->batch_seq, 3);
    assert_false(r->retryable);
    canopy__v1__reply__free_unpacked(r, NULL);
    free(buf);
}

static void test_malformed_and_oversized(void **state)
{
    (void)state;
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0x01, 0x02};
    Canopy__V1__Reply *r = handle(junk, sizeof junk);
    assert_int_equal(r->reason, CANOPY__V1__REASON__REASON_MALFORMED);
    assert_false(r->retryable);
    assert_non_null(r->detail);
    canopy__v1__reply__free_unpacked(r, NULL);

    uint8_t *big = calloc(1, 4096); /* max_message_size is 2 KiB */
    assert_non_null(big);
    r = handle(big, 4096);
    assert_int_equal(r->reason, CANOPY__V1__REASON__REASON_TOO_LARGE);
    assert_non_null(strstr(r->detail, "max_message_size"));
    canopy__v1__reply__free_unpacked(r, NULL);
    free(big);
}

static const char *arg(const Canopy__V1__Command *c, const char *key)
{
    for (size_t i = 0; i < c->n_args; i++)
        if (strcmp(c->args[i]->key, key) == 0)
            return c->args[i]->value;
    return NULL;
}

static void test_command_query(void **state)
{
    (void)state;
    Canopy__V1__Request req = CANOPY__V1__REQUEST__INIT;
    Canopy__V1__CommandQuery q = CANOPY__V1__COMMAND_QUERY__INIT;
    req.body_case = CANOPY__V1__REQUEST__BODY_COMMAND_QUERY;
    req.command_query = &q;
    Canopy__V1__Reply *r = handle_request(&req);
    assert_int_equal(r->reason, CANOPY__V1__REASON__REASON_OK);
    assert_int_equal(r->n_commands, 2);
    assert_string_equal(r->commands[0]->command, "ProfileTaskQuery");
    assert_string_equal(arg(r->commands[0], "TaskId"), "t-1");
    assert_string_equal(arg(r->commands[0], "EndpointName"), "/checkout");
    assert_string_equal(arg(r->commands[0], "Duration"), "5"); /* minutes */
    assert_string_equal(arg(r->commands[0], "MaxSamplingCount"), "5");
    assert_int_equal(r->commands[0]->n_args, 9);
    assert_null(arg(r->commands[0], "Continuous"));
    /* canopy's agent gets the continuous task, with its window and a Duration of 0 for old agents. */
    assert_string_equal(arg(r->commands[1], "TaskId"), "t-cont");
    assert_int_equal(r->commands[1]->n_args, 11);
    assert_string_equal(arg(r->commands[1], "Continuous"), "true");
    assert_string_equal(arg(r->commands[1], "Window"), "5000");
    assert_string_equal(arg(r->commands[1], "Duration"), "0");
    assert_string_equal(arg(r->commands[1], "MaxSamplingCount"), "2");
    canopy__v1__reply__free_unpacked(r, NULL);
}

/* A continuous task never ends by itself, is never expired while running, and ends when cancelled. */
static void test_continuous_task_lifetime(void **state)
{
    (void)state;
    cn_task_registry *reg = svc->tasks;
    int64_t far = cn_now_ms() + 400LL * 24 * 3600 * 1000; /* a year on: past any duration a task may have */
    assert_true(cn_tasks_is_continuous(reg, "t-cont"));
    assert_false(cn_tasks_is_continuous(reg, "t-1"));
    assert_int_equal(cn_tasks_state(reg, "t-cont", far), CN_TASK_RUNNING);
    assert_int_equal(cn_tasks_state(reg, "t-1", far), CN_TASK_ENDED);
    cn_task *tasks = NULL;
    size_t n = cn_tasks_query(reg, "shop", "w-1", -1, far, CN_TASKS_WITH_CONTINUOUS, &tasks);
    assert_int_equal(n, 1);
    assert_string_equal(tasks[0].id, "t-cont");
    cn_task_clear(&tasks[0]);
    free(tasks);
    assert_int_equal(cn_tasks_query(reg, "shop", "w-1", -1, far, 0, &tasks), 0); /* a SkyWalking agent */
    assert_null(tasks);

    /* A second one, so the shared t-cont stays for the other tests. */
    cn_task t = {.id = "t-cont-2", .service = "shop", .endpoint = "/x", .continuous = true, .window_ms = 1000,
                 .max_sampling_count = 1, .start_ms = cn_now_ms() - 1000, .create_ms = cn_now_ms()};
    char err[200];
    assert_int_equal(cn_tasks_add(reg, &t, err, sizeof err), 0);
    t.id = "t-cont-3";
    t.window_ms = 0;
    assert_int_equal(cn_tasks_add(reg, &t, err, sizeof err), -1);
    assert_non_null(strstr(err, "window must be positive"));
    assert_int_equal(cn_tasks_expire(reg, far, 0), 1); /* only t-1, long over */
    assert_int_equal(cn_tasks_state(reg, "t-cont-2", far), CN_TASK_RUNNING);
    assert_int_equal(cn_tasks_cancel(reg, "t-cont-2"), 0);
    assert_int_equal(cn_tasks_state(reg, "t-cont-2", cn_now_ms()), CN_TASK_ENDED);
    assert_int_equal(cn_tasks_expire(reg, far, 0), 1);
    assert_int_equal(cn_tasks_state(reg, "t-cont-2", far), CN_TASK_UNKNOWN);
}

static void test_task_finish(void **state)
{
    (void)state;
    Canopy__V1__Request req = CANOPY__V1__REQUEST__INIT;
    Canopy__V1__TaskFinishReport fin = CANOPY__V1__TASK_FINISH_REPORT__INIT;
    fin.task_id = "t-1";
    req.body_case = CANOPY__V1__REQUEST__BODY_TASK_FINISH;
    req.task_finish = &fin;
    Canopy__V1__Reply *r = handle_request(&req);
    assert_int_equal(r->reason, CANOPY__V1__REASON__REASON_OK);
    assert_int_equal(r->n_commands, 0);
    canopy__v1__reply__free_unpacked(r, NULL);
}

/* A request without a body is refused as invalid, not acked. */
static void test_no_body(void **state)
{
    (void)state;
    Canopy__V1__Request req = CANOPY__V1__REQUEST__INIT;
    Canopy__V1__Reply *r = handle_request(&req);
    assert_int_not_equal(r->reason, CANOPY__V1__REASON__REASON_OK);
    assert_false(r->retryable);
    canopy__v1__reply__free_unpacked(r, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_acked_then_duplicate),
        cmocka_unit_test(test_malformed_and_oversized),
        cmocka_unit_test(test_command_query),
        cmocka_unit_test(test_task_finish),
        cmocka_unit_test(test_no_body),
        cmocka_unit_test(test_continuous_task_lifetime), /* last: it expires t-1 */
    };
    return cmocka_run_group_tests(tests, start_service, stop_service);
}
