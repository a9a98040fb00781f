/* Agent: flush by size and age, slots across batches, commands, finish
 * reports, flush on free, and the memory bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "canopy/agent.h"
#include "rep_server.h"

static ts_server srv;
static ts_record recs[TS_MAX_RECORDS];
static char url[128];

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static size_t count_body(int body, size_t *snapshots)
{
    size_t n = ts_server_records(&srv, recs, TS_MAX_RECORDS), k = 0;
    if (snapshots)
        *snapshots = 0;
    for (size_t i = 0; i < n; i++)
        if (recs[i].body == body) {
            k++;
            if (snapshots)
                *snapshots += recs[i].n_snapshots;
        }
    return k;
}

/* Waits until the server saw `want` requests of that body. */
static bool wait_body(int body, size_t want, int timeout_ms)
{
    for (int t = 0; t < timeout_ms; t += 10) {
        if (count_body(body, NULL) >= want)
            return true;
        sleep_ms(10);
    }
    return false;
}

static void reset_server(void)
{
    pthread_mutex_lock(&srv.mu);
    srv.n_rec = 0;
    srv.n_commands = 0;
    pthread_mutex_unlock(&srv.mu);
}

static int setup(void **state)
{
    (void)state;
    memset(&srv, 0, sizeof(srv));
    ts_url(url, sizeof(url), "agent");
    return ts_server_start(&srv, url);
}

static int teardown(void **state)
{
    (void)state;
    ts_server_stop(&srv);
    return 0;
}

static cn_agent *agent_new(size_t per_batch, uint32_t age_ms)
{
    cn_agent_options o;
    cn_agent_options_init(&o);
    o.url = url;
    o.service = "shop";
    o.max_batch_snapshots = per_batch;
    o.max_batch_age_ms = age_ms;
    o.command_poll_ms = 0;
    o.timeout_ms = 10000; /* no spurious resend on a loaded machine */
    cn_agent *a = NULL;
    assert_int_equal(cn_agent_new(&o, &a), 0);
    return a;
}

static const char *sigs[] = {
    "/srv/app/wsgi.py.__call__: 10", "/srv/app/views.py.checkout: 42", "/srv/app/db.py.query: 99",
    "/srv/app/cart.py.total: 5",     "/usr/lib/python3/socket.py.recv: 700",
};

static void add(cn_agent *a, cn_intern_slot *slots, int k, int depth)
{
    cn_str fr[8];
    for (int i = 0; i < depth; i++)
        fr[i] = (cn_str){sigs[(i + k) % 5], strlen(sigs[(i + k) % 5]), &slots[(i + k) % 5]};
    cn_snapshot_in s = {.task = {"task-0", 6, NULL}, .segment = {"seg-0", 5, NULL},
                        .time_ms = 1700000000000LL + k, .sequence = k, .frames = fr,
                        .n_frames = (size_t)depth};
    assert_int_equal(cn_agent_add(a, &s), 0);
}

static void test_batches_by_size_and_age(void **state)
{
    (void)state;
    reset_server();
    /* The age is long enough that a loaded machine (sanitizers, parallel
     * builds) never splits a batch while the 25 snapshots go in. */
    cn_agent *a = agent_new(10, 1000);
    cn_intern_slot slots[5] = {{0, 0}};
    for (int k = 0; k < 25; k++)
        add(a, slots, k, 3);
    /* two full batches at once, the last 5 snapshots after 1 s */
    assert_true(wait_body(CANOPY__V1__REQUEST__BODY_BATCH, 3, 5000));
    size_t snaps;
    assert_int_equal(count_body(CANOPY__V1__REQUEST__BODY_BATCH, &snaps), 3);
    assert_int_equal(snaps, 25);
    size_t n = ts_server_records(&srv, recs, TS_MAX_RECORDS);
    char inst[300];
    char host[256];
    gethostname(host, sizeof(host));
    snprintf(inst, sizeof(inst), "%d@%s", (int)getpid(), host);
    uint64_t seqs = 0;
    for (size_t i = 0; i < n; i++) {
        if (recs[i].body != CANOPY__V1__REQUEST__BODY_BATCH)
            continue;
        seqs |= 1ULL << recs[i].batch_seq;
        assert_string_equal(recs[i].instance, inst);
        assert_int_equal(recs[i].pid, (uint32_t)getpid());
        assert_true(recs[i].session == recs[0].session);
        /* Slots were refreshed for every batch: the first snapshot of each
         * batch decodes to its own frames. */
        int k = recs[i].first_sequence;
        char want[256];
        snprintf(want, sizeof(want), "%s|%s|%s", sigs[k % 5], sigs[(k + 1) % 5], sigs[(k + 2) % 5]);
        assert_string_equal(recs[i].first_frames, want);
        assert_string_equal(recs[i].first_task, "task-0");
        assert_true(recs[i].n_strings <= 7);
    }
    assert_int_equal(seqs, 7); /* batch_seq 0, 1, 2 */
    for (int t = 0; t < 100; t++) { /* the ack lands just after the server records */
        cn_agent_stats st;
        cn_agent_stats_get(a, &st);
        if (st.send.batches_acked == 3)
            break;
        sleep_ms(10);
    }
    cn_agent_stats st;
    cn_agent_stats_get(a, &st);
    assert_int_equal(st.snapshots_added, 25);
    assert_int_equal(st.snapshots_dropped, 0);
    assert_int_equal(st.batches_sealed, 3);
    assert_int_equal(st.send.batches_acked, 3);
    assert_int_equal(st.next_batch_seq, 3);
    cn_agent_free(a);
}

static void test_lone_snapshot_flushed_by_age(void **state)
{
    (void)state;
    reset_server();
    cn_agent *a = agent_new(100, 100);
    assert_int_equal(cn_agent_start(a), 0);
    sleep_ms(50); /* the thread is asleep with nothing to wait for */
    cn_intern_slot slots[5] = {{0, 0}};
    add(a, slots, 0, 2);
    assert_true(wait_body(CANOPY__V1__REQUEST__BODY_BATCH, 1, 2000));
    cn_agent_free(a);
}

static void test_commands_and_finish(void **state)
{
    (void)state;
    reset_server();
    pthread_mutex_lock(&srv.mu);
    srv.n_commands = 3;
    srv.command_create_base = 1000;
    pthread_mutex_unlock(&srv.mu);
    cn_agent *a = agent_new(10, 100);
    uint64_t v0 = 99;
    assert_int_equal(cn_agent_commands(a, NULL, 0, &v0), 0);
    assert_int_equal(cn_agent_poll_now(a), 0);
    uint64_t v = v0;
    for (int t = 0; t < 500 && v == v0; t++) {
        sleep_ms(10);
        cn_agent_commands(a, NULL, 0, &v);
    }
    assert_true(v != v0);
    cn_command cmds[8];
    assert_int_equal(cn_agent_commands(a, cmds, 8, NULL), 3);
    for (int i = 0; i < 3; i++) {
        char id[32];
        snprintf(id, sizeof(id), "task-%d", i);
        assert_string_equal(cmds[i].task_id, id);
        snprintf(id, sizeof(id), "serial-%d", i);
        assert_string_equal(cmds[i].serial, id);
        snprintf(id, sizeof(id), "/checkout/%d", i);
        assert_string_equal(cmds[i].endpoint, id);
        assert_int_equal(cmds[i].duration_min, 5);
        assert_int_equal(cmds[i].min_duration_ms, 10);
        assert_int_equal(cmds[i].dump_period_ms, 20);
        assert_int_equal(cmds[i].max_sampling_count, 3);
        assert_int_equal(cmds[i].create_time_ms, 1000 + i);
        assert_int_equal(cmds[i].start_time_ms, 1000 + i);
    }
    assert_int_equal(cn_agent_last_command_time(a), 1002);

    /* Same commands again: no change, version stays. (Periodic polling is
     * off here, so only the two explicit polls ask.) */
    assert_int_equal(cn_agent_poll_now(a), 0);
    assert_true(wait_body(CANOPY__V1__REQUEST__BODY_COMMAND_QUERY, 2, 5000));
    sleep_ms(50);
    uint64_t v2;
    cn_agent_commands(a, NULL, 0, &v2);
    assert_true(v2 == v);
    /* The second query carried lastCommandTime = max CreateTime. */
    size_t n = ts_server_records(&srv, recs, TS_MAX_RECORDS);
    int64_t last = -1;
    for (size_t i = 0; i < n; i++)
        if (recs[i].body == CANOPY__V1__REQUEST__BODY_COMMAND_QUERY)
            last = recs[i].last_command_time;
    assert_int_equal(last, 1002);

    assert_int_equal(cn_agent_report_finish(a, "task-1"), 0);
    assert_true(wait_body(CANOPY__V1__REQUEST__BODY_TASK_FINISH, 1, 5000));
    n = ts_server_records(&srv, recs, TS_MAX_RECORDS);
    for (size_t i = 0; i < n; i++)
        if (recs[i].body == CANOPY__V1__REQUEST__BODY_TASK_FINISH)
            assert_string_equal(recs[i].task_id, "task-1");
    cn_agent_stats st;
    for (int t = 0; t < 500; t++) { /* the second reply may still be on its way */
        cn_agent_stats_get(a, &st);
        if (st.commands_received == 6)
            break;
        sleep_ms(10);
    }
    assert_true(st.command_queries >= 2);
    assert_int_equal(st.commands_received, 6);
    assert_int_equal(st.finish_reports, 1);
    cn_agent_free(a);
}

static void test_free_flushes_and_waits(void **state)
{
    (void)state;
    reset_server();
    cn_agent *a = agent_new(100, 60000);
    cn_intern_slot slots[5] = {{0, 0}};
    for (int k = 0; k < 7; k++)
        add(a, slots, k, 4);
    cn_agent_free(a); /* flushes the young batch and waits for its ack */
    size_t snaps;
    assert_int_equal(count_body(CANOPY__V1__REQUEST__BODY_BATCH, &snaps), 1);
    assert_int_equal(snaps, 7);

    /* An agent that never started sends nothing and starts nothing. */
    reset_server();
    a = agent_new(100, 100);
    cn_agent_free(a);
    assert_int_equal(ts_server_records(&srv, recs, TS_MAX_RECORDS), 0);
}

static void test_memory_bound_drops_counted(void **state)
{
    (void)state;
    cn_agent_options o;
    cn_agent_options_init(&o);
    char nobody[128];
    ts_url(nobody, sizeof(nobody), "nobody");
    o.url = nobody;
    o.service = "shop";
    o.max_batch_snapshots = 5;
    o.max_buffered_bytes = 4096;
    o.command_poll_ms = 0;
    o.timeout_ms = 200;
    o.shutdown_timeout_ms = 100;
    cn_agent *a = NULL;
    assert_int_equal(cn_agent_new(&o, &a), 0);
    cn_intern_slot slots[5] = {{0, 0}};
    int refused = 0;
    for (int k = 0; k < 1000; k++) {
        cn_str fr[5];
        for (int i = 0; i < 5; i++)
            fr[i] = (cn_str){sigs[i], strlen(sigs[i]), &slots[i]};
        cn_snapshot_in s = {.task = {"task-0", 6, NULL}, .segment = {"seg-0", 5, NULL},
                            .time_ms = k, .sequence = k, .frames = fr, .n_frames = 5};
        if (cn_agent_add(a, &s) != 0)
            refused++;
    }
    sleep_ms(100);
    cn_agent_stats st;
    cn_agent_stats_get(a, &st);
    assert_int_equal(st.snapshots_added + (uint64_t)refused, 1000);
    assert_true(st.snapshots_dropped > 0);
    assert_true(st.send.batches_dropped > 0);
    assert_true(st.send.bytes_buffered <= 4096 + 1024);
    /* A batch here is ~300 estimated and ~250 encoded bytes, so at most
     * 4096/200 batches (plus the one being built) hold snapshots; the rest
     * were counted. */
    print_message("added %llu dropped %llu buffered %llu batches dropped %llu\n",
                  (unsigned long long)st.snapshots_added, (unsigned long long)st.snapshots_dropped,
                  (unsigned long long)st.send.bytes_buffered, (unsigned long long)st.send.batches_dropped);
    assert_true(st.snapshots_dropped >= 1000 - (4096 / 200 + 1) * 5);
    cn_agent_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batches_by_size_and_age),
        cmocka_unit_test(test_lone_snapshot_flushed_by_age),
        cmocka_unit_test(test_commands_and_finish),
        cmocka_unit_test(test_free_flushes_and_waits),
        cmocka_unit_test(test_memory_bound_drops_counted),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
