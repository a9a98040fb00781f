/*
 * The skywalking receiver's handlers (plugins/receivers/skywalking/
 * sw_handlers.c) on raw gRPC byte buffers, with no connection: the service
 * runs for real (pipeline, exporter, task registry), so an OK stream reply
 * means the pipeline took the snapshots. Runs under ASan/UBSan (sanitize).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>

#include "skywalking/v3/management.pb-c.h"
#include "skywalking/v3/profile.pb-c.h"
#include "sw_receiver.h"
#include "testutil.h"

static cn_service *svc;
static sw_receiver *rx;

static int start_service(void **state)
{
    (void)state;
    const char *yaml = "receivers:\n"
                       "  skywalking:\n"
                       "    listen: 127.0.0.1:0\n"
                       "exporters:\n"
                       "  discard:\n"
                       "tasks:\n"
                       "  static:\n"
                       "    - {id: t-long, service: shop, endpoint: /slow, duration: 30m, dump_period: 10ms,\n"
                       "       max_sampling_count: 20}\n"
                       "    - {id: t-cont, service: shop, endpoint: /cart, continuous: true, window: 10s}\n"
                       "service:\n"
                       "  telemetry: {http: {listen: \"\"}}\n"
                       "  pipelines:\n"
                       "    profiles: {receivers: [skywalking], exporters: [discard]}\n";
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
    if (svc) {
        cn_service_stop(svc);
        cn_service_free(svc);
    }
    return 0;
}

static grpc_byte_buffer *bytes(const void *data, size_t len)
{
    grpc_slice s = grpc_slice_from_copied_buffer(data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

static grpc_byte_buffer *packed(const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    protobuf_c_message_pack(m, buf);
    grpc_byte_buffer *bb = bytes(buf, len);
    free(buf);
    return bb;
}

static Skywalking__V3__Commands *commands_of(swrx_reply *r)
{
    assert_int_equal(r->status, GRPC_STATUS_OK);
    assert_non_null(r->message);
    grpc_byte_buffer_reader reader;
    assert_true(grpc_byte_buffer_reader_init(&reader, r->message));
    grpc_slice s = grpc_byte_buffer_reader_readall(&reader);
    Skywalking__V3__Commands *c =
        skywalking__v3__commands__unpack(NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    grpc_byte_buffer_reader_destroy(&reader);
    grpc_byte_buffer_destroy(r->message);
    r->message = NULL;
    assert_non_null(c);
    return c;
}

static const char *arg(const Skywalking__V3__Command *c, const char *key)
{
    for (size_t i = 0; i < c->n_args; i++)
        if (strcmp(c->args[i]->key, key) == 0)
            return c->args[i]->value;
    return NULL;
}

/* A task outside the SkyWalking agents' ranges comes clamped, with all nine args; then nothing new.
 * The continuous task of the same service never comes: a SkyWalking agent would report it to the OAP. */
static void test_commands_clamped(void **state)
{
    (void)state;
    Skywalking__V3__ProfileTaskCommandQuery q = SKYWALKING__V3__PROFILE_TASK_COMMAND_QUERY__INIT;
    q.service = "shop";
    q.serviceinstance = "w-1";
    q.lastcommandtime = -1;
    grpc_byte_buffer *bb = packed(&q.base);
    swrx_reply r = {0};
    swrx_unary(rx, M_GET_COMMANDS, "ipv4:127.0.0.1:1", bb, &r);
    grpc_byte_buffer_destroy(bb);
    Skywalking__V3__Commands *c = commands_of(&r);
    assert_int_equal(c->n_commands, 1);
    assert_string_equal(c->commands[0]->command, "ProfileTaskQuery");
    assert_int_equal(c->commands[0]->n_args, 9);
    assert_string_equal(arg(c->commands[0], "TaskId"), "t-long");
    assert_string_equal(arg(c->commands[0], "Duration"), "15");
    assert_string_equal(arg(c->commands[0], "DumpPeriod"), "10");
    assert_string_equal(arg(c->commands[0], "MaxSamplingCount"), "9");
    q.lastcommandtime = strtoll(arg(c->commands[0], "CreateTime"), NULL, 10);
    skywalking__v3__commands__free_unpacked(c, NULL);
    bb = packed(&q.base);
    swrx_unary(rx, M_GET_COMMANDS, "ipv4:127.0.0.1:1", bb, &r);
    grpc_byte_buffer_destroy(bb);
    c = commands_of(&r);
    assert_int_equal(c->n_commands, 0);
    skywalking__v3__commands__free_unpacked(c, NULL);
}

static void test_garbage_unary(void **state)
{
    (void)state;
    grpc_byte_buffer *bb = bytes("\xff\xff\xff\xff", 4);
    swrx_reply r = {0};
    swrx_unary(rx, M_KEEP_ALIVE, "ipv4:127.0.0.1:2", bb, &r);
    grpc_byte_buffer_destroy(bb);
    assert_int_equal(r.status, GRPC_STATUS_INVALID_ARGUMENT);
    assert_null(r.message);
    swrx_unary(rx, M_REPORT_FINISH, "ipv4:127.0.0.1:2", NULL, &r); /* no message at all */
    assert_int_equal(r.status, GRPC_STATUS_INVALID_ARGUMENT);
}

/* A stream's snapshots are acked once in the pipeline; a bad message ends it with INVALID_ARGUMENT. */
static void test_stream(void **state)
{
    (void)state;
    swrx_call_state *st = swrx_stream_new(rx, "ipv4:127.0.0.1:3");
    assert_non_null(st);
    char *frames[] = {"app.py:main", "app.py:handle"};
    Skywalking__V3__ThreadStack stack = SKYWALKING__V3__THREAD_STACK__INIT;
    stack.n_codesignatures = 2;
    stack.codesignatures = frames;
    swrx_reply r = {0};
    for (int seq = 0; seq < 3; seq++) {
        Skywalking__V3__ThreadSnapshot s = SKYWALKING__V3__THREAD_SNAPSHOT__INIT;
        s.taskid = "t-long";
        s.tracesegmentid = "seg-1";
        s.sequence = seq;
        s.time = 1000 + seq;
        s.stack = &stack;
        grpc_byte_buffer *bb = packed(&s.base);
        assert_int_equal(swrx_stream_message(rx, st, bb, &r), 0);
        grpc_byte_buffer_destroy(bb);
    }
    /* No ManagementService call on this connection: the service is the task's. */
    assert_string_equal(swrx_stream_service(st), "shop");
    swrx_stream_end(rx, st, &r);
    Skywalking__V3__Commands *c = commands_of(&r);
    skywalking__v3__commands__free_unpacked(c, NULL);
    swrx_stream_free(st);

    /* A task the registry does not know leaves it "unknown". */
    st = swrx_stream_new(rx, "ipv4:127.0.0.1:4");
    assert_non_null(st);
    Skywalking__V3__ThreadSnapshot other = SKYWALKING__V3__THREAD_SNAPSHOT__INIT;
    other.taskid = "t-nobody-knows";
    other.tracesegmentid = "seg-2";
    other.stack = &stack;
    grpc_byte_buffer *ob = packed(&other.base);
    assert_int_equal(swrx_stream_message(rx, st, ob, &r), 0);
    grpc_byte_buffer_destroy(ob);
    assert_string_equal(swrx_stream_service(st), "unknown");
    swrx_stream_end(rx, st, &r);
    c = commands_of(&r);
    skywalking__v3__commands__free_unpacked(c, NULL);
    swrx_stream_free(st);

    st = swrx_stream_new(rx, "ipv4:127.0.0.1:3");
    assert_non_null(st);
    Skywalking__V3__ThreadSnapshot neg = SKYWALKING__V3__THREAD_SNAPSHOT__INIT;
    neg.taskid = "t-long";
    neg.tracesegmentid = "seg-1";
    neg.sequence = -1;
    grpc_byte_buffer *bb = packed(&neg.base);
    assert_int_equal(swrx_stream_message(rx, st, bb, &r), -1);
    grpc_byte_buffer_destroy(bb);
    assert_int_equal(r.status, GRPC_STATUS_INVALID_ARGUMENT);
    swrx_stream_free(st);
}

/* Metric labels: known SkyWalking methods by name, with or without the package; anything else is "other". */
static void test_pt_method(void **state)
{
    (void)state;
    static const struct {
        const char *path, *label;
    } cases[] = {
        {"/skywalking.v3.TraceSegmentReportService/collect", "TraceSegmentReportService/collect"},
        {"/LogReportService/collect", "LogReportService/collect"},
        {"/skywalking.v3.ManagementService/keepAlive", "ManagementService/keepAlive"},
        {"/skywalking.v3.TraceSegmentReportService/collectX", "other"},
        {"/made.up.Service/method", "other"},
        {"", "other"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        grpc_slice path = grpc_slice_from_static_string(cases[i].path);
        assert_string_equal(swrx_pt_labels[swrx_pt_method(path)], cases[i].label);
    }
    for (int i = 0; i < N_PT_METHODS; i++)
        assert_non_null(swrx_pt_labels[i]);
}

/* A ManagementService message on its way upstream names the connection's agent, and is left as it was. */
static void test_observe_management(void **state)
{
    (void)state;
    Skywalking__V3__InstanceProperties p = SKYWALKING__V3__INSTANCE_PROPERTIES__INIT;
    p.service = "shop";
    p.serviceinstance = "w1-child(42)";
    grpc_byte_buffer *bb = packed(&p.base);
    size_t len = grpc_byte_buffer_length(bb);
    swrx_observe_management(rx, M_INSTANCE_PROPERTIES, "ipv4:127.0.0.1:5555", bb);
    assert_int_equal(grpc_byte_buffer_length(bb), len);
    grpc_byte_buffer_destroy(bb);
    swrx_agent *a = cn_dict_get(rx->agents, "ipv4:127.0.0.1:5555");
    assert_non_null(a);
    assert_string_equal(a->ident, "shop\x1fw1-child(42)");
    /* Not a message at all: ignored (the OAP will answer it), nothing remembered. */
    bb = bytes("\xff\xff\xff", 3);
    swrx_observe_management(rx, M_KEEP_ALIVE, "ipv4:127.0.0.1:6666", bb);
    grpc_byte_buffer_destroy(bb);
    assert_null(cn_dict_get(rx->agents, "ipv4:127.0.0.1:6666"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_commands_clamped),
        cmocka_unit_test(test_garbage_unary),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_pt_method),
        cmocka_unit_test(test_observe_management),
    };
    return cmocka_run_group_tests(tests, start_service, stop_service);
}
