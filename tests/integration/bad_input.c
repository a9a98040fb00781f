/*
 * Bad input against a real collector: garbage, truncated protobuf, an index
 * out of range, an oversized message, a duplicate batch, an unsupported
 * version. Each gets a clear error reply with a machine-readable reason,
 * and a well-behaved agent is still served afterwards, its batch written
 * exactly once. Also checks command queries return the static task.
 *
 * Usage: test_bad_input /path/to/canopy
 */
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "canopy/v1/canopy.pb-c.h"

static char workdir[256];
static char url[320];
static pid_t collector_pid;
static const char *canopy_bin;

static void write_config(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/canopy.yaml", workdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "receivers:\n  nng:\n    listen: [%s]\n    max_message_size: 64KiB\n    max_frames: 64\n"
            "processors:\n  merge_by_task:\n    flush_interval: 100ms\n"
            "exporters:\n  file:\n    directory: %s/out\n"
            "service:\n  pipelines:\n    p:\n      receivers: [nng]\n      processors: [merge_by_task]\n"
            "      exporters: [file]\n"
            "tasks:\n  static:\n    - id: task-checkout\n      service: shop\n      endpoint: /checkout\n"
            "      duration: 2m\n      min_duration_threshold: 5ms\n      dump_period: 20ms\n"
            "      max_sampling_count: 3\n",
            url, workdir);
    fclose(f);
}

static int start_collector(void **state)
{
    (void)state;
    snprintf(workdir, sizeof workdir, "/tmp/canopy-bad-input-%d", (int)getpid());
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", workdir, workdir);
    assert_int_equal(system(cmd), 0);
    snprintf(url, sizeof url, "ipc://%s/canopy.sock", workdir);
    write_config();
    collector_pid = fork();
    assert_true(collector_pid >= 0);
    if (collector_pid == 0) {
        char config[512], log[512];
        snprintf(config, sizeof config, "%s/canopy.yaml", workdir);
        snprintf(log, sizeof log, "%s/canopy.log", workdir);
        if (!freopen(log, "w", stderr))
            _exit(127);
        execl(canopy_bin, "canopy", "run", "-c", config, (char *)NULL);
        _exit(127);
    }
    /* Wait for the socket to appear. */
    char sock[512];
    snprintf(sock, sizeof sock, "%s/canopy.sock", workdir);
    for (int i = 0; i < 200 && access(sock, F_OK) != 0; i++)
        usleep(25000);
    assert_int_equal(access(sock, F_OK), 0);
    return 0;
}

static int stop_collector(void **state)
{
    (void)state;
    kill(collector_pid, SIGTERM);
    int status = 0;
    waitpid(collector_pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* A clean exit leaves nothing to read: remove the work dir (a failed
     * assertion above keeps it, with canopy.log, for the reader). */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", workdir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

/* One request/reply round trip on a fresh REQ socket. */
static Canopy__V1__Reply *roundtrip(const void *data, size_t len)
{
    nng_socket s;
    assert_int_equal(nng_req0_open(&s), 0);
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 5000);
    nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, 60000);
    assert_int_equal(nng_dial(s, url, NULL, 0), 0);
    assert_int_equal(nng_send(s, (void *)data, len, 0), 0);
    void *buf = NULL;
    size_t n = 0;
    int rv = nng_recv(s, &buf, &n, NNG_FLAG_ALLOC);
    if (rv != 0)
        fprintf(stderr, "recv: %s\n", nng_strerror(rv));
    assert_int_equal(rv, 0);
    Canopy__V1__Reply *r = canopy__v1__reply__unpack(NULL, n, buf);
    nng_free(buf, n);
    nng_close(s);
    assert_non_null(r);
    return r;
}

typedef struct request_builder {
    Canopy__V1__Request req;
    Canopy__V1__AgentIdentity agent;
    Canopy__V1__SnapshotBatch batch;
    Canopy__V1__Snapshot snaps[4];
    Canopy__V1__Snapshot *snap_ptrs[4];
    uint32_t frames[4][3];
    char *strings[8];
} request_builder;

/* A valid batch: task, segment, three frames; `n` snapshots with sequences from seq0. */
static void build_batch(request_builder *b, const char *instance, uint64_t batch_seq, int n, int seq0)
{
    memset(b, 0, sizeof *b);
    canopy__v1__agent_identity__init(&b->agent);
    b->agent.service = "shop";
    b->agent.instance = (char *)instance;
    b->agent.session = 99;
    canopy__v1__snapshot_batch__init(&b->batch);
    static char *strings[] = {"task-checkout", "seg-bad-input", "app.py.main: 1", "app.py.checkout: 10",
                              "app.py.render: 30"};
    for (int i = 0; i < 5; i++)
        b->strings[i] = strings[i];
    b->batch.strings = b->strings;
    b->batch.n_strings = 5;
    b->batch.batch_seq = batch_seq;
    for (int i = 0; i < n; i++) {
        Canopy__V1__Snapshot *s = &b->snaps[i];
        canopy__v1__snapshot__init(s);
        s->task = 0;
        s->segment = 1;
        s->time_ms = 1700000000000 + i;
        s->sequence = seq0 + i;
        b->frames[i][0] = 2;
        b->frames[i][1] = 3;
        b->frames[i][2] = 4;
        s->frames = b->frames[i];
        s->n_frames = 3;
        b->snap_ptrs[i] = s;
    }
    b->batch.snapshots = b->snap_ptrs;
    b->batch.n_snapshots = (size_t)n;
    canopy__v1__request__init(&b->req);
    b->req.protocol_version = 1;
    b->req.agent = &b->agent;
    b->req.body_case = CANOPY__V1__REQUEST__BODY_BATCH;
    b->req.batch = &b->batch;
}

static Canopy__V1__Reply *send_request(const Canopy__V1__Request *req)
{
    size_t len = canopy__v1__request__get_packed_size(req);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    canopy__v1__request__pack(req, buf);
    Canopy__V1__Reply *r = roundtrip(buf, len);
    free(buf);
    return r;
}

static void expect_reason(Canopy__V1__Reply *r, Canopy__V1__Reason reason, const char *detail_part)
{
    if (r->reason != reason || (detail_part && !strstr(r->detail, detail_part)))
        fprintf(stderr, "reply: reason %d detail \"%s\"\n", r->reason, r->detail);
    assert_int_equal(r->reason, reason);
    if (detail_part)
        assert_non_null(strstr(r->detail, detail_part));
    canopy__v1__reply__free_unpacked(r, NULL);
}

static void test_garbage(void **state)
{
    (void)state;
    const char garbage[] = "\xff\xff\xff\xff\xff\x01 definitely not protobuf";
    Canopy__V1__Reply *r = roundtrip(garbage, sizeof garbage);
    assert_false(r->retryable);
    expect_reason(r, CANOPY__V1__REASON__REASON_MALFORMED, "not a canopy.v1.Request");
}

static void test_truncated(void **state)
{
    (void)state;
    request_builder b;
    build_batch(&b, "agent-trunc", 0, 2, 0);
    size_t len = canopy__v1__request__get_packed_size(&b.req);
    uint8_t *buf = malloc(len);
    canopy__v1__request__pack(&b.req, buf);
    Canopy__V1__Reply *r = roundtrip(buf, len - 9);
    assert_int_not_equal(r->reason, CANOPY__V1__REASON__REASON_OK);
    canopy__v1__reply__free_unpacked(r, NULL);
    free(buf);
}

static void test_index_out_of_range(void **state)
{
    (void)state;
    request_builder b;
    build_batch(&b, "agent-oob", 0, 2, 0);
    b.frames[1][2] = 77;
    expect_reason(send_request(&b.req), CANOPY__V1__REASON__REASON_INDEX_OUT_OF_RANGE, "frame index 77");
}

static void test_too_many_frames(void **state)
{
    (void)state;
    request_builder b;
    build_batch(&b, "agent-frames", 0, 1, 0);
    uint32_t many[100] = {0};
    for (int i = 0; i < 100; i++)
        many[i] = 2;
    b.snaps[0].frames = many;
    b.snaps[0].n_frames = 100;
    expect_reason(send_request(&b.req), CANOPY__V1__REASON__REASON_LIMIT_EXCEEDED, "100 frames, limit is 64");
}

static void test_oversized(void **state)
{
    (void)state;
    size_t len = 100 * 1024;
    char *big = malloc(len);
    memset(big, 'x', len);
    expect_reason(roundtrip(big, len), CANOPY__V1__REASON__REASON_TOO_LARGE, "exceeds max_message_size");
    free(big);
}

static void test_unsupported_version(void **state)
{
    (void)state;
    request_builder b;
    build_batch(&b, "agent-v2", 0, 1, 0);
    b.req.protocol_version = 2;
    expect_reason(send_request(&b.req), CANOPY__V1__REASON__REASON_UNSUPPORTED_VERSION, "protocol_version 2");
}

static void test_duplicate_batch_then_good_agent(void **state)
{
    (void)state;
    request_builder b;
    build_batch(&b, "agent-good", 0, 4, 0);
    expect_reason(send_request(&b.req), CANOPY__V1__REASON__REASON_OK, NULL);
    /* The same batch again, as after a lost ack: acked as DUPLICATE, not resubmitted. */
    expect_reason(send_request(&b.req), CANOPY__V1__REASON__REASON_DUPLICATE, NULL);
    build_batch(&b, "agent-good", 1, 2, 4);
    expect_reason(send_request(&b.req), CANOPY__V1__REASON__REASON_OK, NULL);
    /* Wait for merge_by_task's 100 ms flush, then count lines: 6, once each. */
    char path[512];
    snprintf(path, sizeof path, "%s/out/task-checkout.jsonl", workdir);
    int lines = 0;
    for (int attempt = 0; attempt < 100 && lines < 6; attempt++) {
        usleep(50000);
        FILE *f = fopen(path, "r");
        lines = 0;
        if (f) {
            int ch;
            while ((ch = fgetc(f)) != EOF)
                lines += ch == '\n';
            fclose(f);
        }
    }
    usleep(300000);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    lines = 0;
    char line[4096];
    int seen[6] = {0};
    while (fgets(line, sizeof line, f)) {
        lines++;
        char *p = strstr(line, "\"sequence\":");
        assert_non_null(p);
        int seq = atoi(p + 11);
        assert_true(seq >= 0 && seq < 6);
        seen[seq]++;
        assert_non_null(strstr(line, "\"codeSignatures\":[\"app.py.main: 1\",\"app.py.checkout: 10\""));
    }
    fclose(f);
    assert_int_equal(lines, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(seen[i], 1);
}

static const char *arg_value(const Canopy__V1__Command *c, const char *key)
{
    for (size_t i = 0; i < c->n_args; i++)
        if (strcmp(c->args[i]->key, key) == 0)
            return c->args[i]->value;
    return NULL;
}

static void test_command_query(void **state)
{
    (void)state;
    Canopy__V1__AgentIdentity agent = CANOPY__V1__AGENT_IDENTITY__INIT;
    agent.service = "shop";
    agent.instance = "agent-query";
    Canopy__V1__CommandQuery q = CANOPY__V1__COMMAND_QUERY__INIT;
    Canopy__V1__Request req = CANOPY__V1__REQUEST__INIT;
    req.protocol_version = 1;
    req.agent = &agent;
    req.body_case = CANOPY__V1__REQUEST__BODY_COMMAND_QUERY;
    req.command_query = &q;
    Canopy__V1__Reply *r = send_request(&req);
    assert_int_equal(r->reason, CANOPY__V1__REASON__REASON_OK);
    assert_int_equal(r->n_commands, 1);
    const Canopy__V1__Command *c = r->commands[0];
    assert_string_equal(c->command, "ProfileTaskQuery");
    assert_string_equal(arg_value(c, "TaskId"), "task-checkout");
    assert_string_equal(arg_value(c, "SerialNumber"), "task-checkout");
    assert_string_equal(arg_value(c, "EndpointName"), "/checkout");
    assert_string_equal(arg_value(c, "Duration"), "2");
    assert_string_equal(arg_value(c, "MinDurationThreshold"), "5");
    assert_string_equal(arg_value(c, "DumpPeriod"), "20");
    assert_string_equal(arg_value(c, "MaxSamplingCount"), "3");
    long long create = atoll(arg_value(c, "CreateTime"));
    assert_true(create > 1600000000000LL);
    assert_non_null(arg_value(c, "StartTime"));
    canopy__v1__reply__free_unpacked(r, NULL);
    /* Newer than the agent's lastCommandTime only. */
    q.last_command_time = create;
    r = send_request(&req);
    assert_int_equal(r->n_commands, 0);
    canopy__v1__reply__free_unpacked(r, NULL);
    /* Another service gets nothing. */
    agent.service = "billing";
    q.last_command_time = 0;
    r = send_request(&req);
    assert_int_equal(r->n_commands, 0);
    canopy__v1__reply__free_unpacked(r, NULL);
}

static void test_task_finish(void **state)
{
    (void)state;
    Canopy__V1__AgentIdentity agent = CANOPY__V1__AGENT_IDENTITY__INIT;
    agent.service = "shop";
    agent.instance = "agent-finish";
    Canopy__V1__TaskFinishReport fin = CANOPY__V1__TASK_FINISH_REPORT__INIT;
    fin.task_id = "task-checkout";
    Canopy__V1__Request req = CANOPY__V1__REQUEST__INIT;
    req.protocol_version = 1;
    req.agent = &agent;
    req.body_case = CANOPY__V1__REQUEST__BODY_TASK_FINISH;
    req.task_finish = &fin;
    expect_reason(send_request(&req), CANOPY__V1__REASON__REASON_OK, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s /path/to/canopy\n", argv[0]);
        return 2;
    }
    canopy_bin = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_index_out_of_range),
        cmocka_unit_test(test_too_many_frames),
        cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_unsupported_version),
        cmocka_unit_test(test_duplicate_batch_then_good_agent),
        cmocka_unit_test(test_command_query),
        cmocka_unit_test(test_task_finish),
    };
    return cmocka_run_group_tests(tests, start_collector, stop_collector);
}
