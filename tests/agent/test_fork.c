/*
 * Fork safety. An agent made before fork and never started in the parent
 * works in the child with a new session, batch_seq from 0 and its own
 * instance name; the parent's agent is untouched. A child of a parent that
 * already started nng refuses to send instead of crashing.
 *
 * The order matters: the first test forks before this process starts nng.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "canopy/agent.h"
#include "rep_server.h"

static ts_server srv;
static ts_record recs[TS_MAX_RECORDS];

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void add_one(cn_agent *a, int seq, int *rv)
{
    cn_str fr[2] = {{"/srv/app/wsgi.py.app: 1", 23, NULL}, {"/srv/app/v.py.f: 2", 18, NULL}};
    cn_snapshot_in s = {.task = {"task-0", 6, NULL}, .segment = {"seg-x", 5, NULL},
                        .time_ms = 1000 + seq, .sequence = seq, .frames = fr, .n_frames = 2};
    *rv = cn_agent_add(a, &s);
}

/* Runs in the child; returns the exit code (0 = good). */
static int child_main(cn_agent *a, uint64_t parent_session)
{
    int rv;
    for (int i = 0; i < 5; i++) {
        add_one(a, i, &rv);
        if (rv != 0)
            return 10;
    }
    if (cn_agent_flush(a) != 0)
        return 11;
    cn_agent_stats st;
    for (int t = 0; t < 1000; t++) {
        cn_agent_stats_get(a, &st);
        if (st.send.batches_acked == 1)
            break;
        sleep_ms(10);
    }
    if (st.send.batches_acked != 1)
        return 12;
    if (st.session == parent_session)
        return 13;
    if (st.next_batch_seq != 1 || st.snapshots_added != 5)
        return 14;
    cn_agent_free(a);
    return 0;
}

static void test_child_of_unstarted_agent_sends(void **state)
{
    (void)state;
    char url[128];
    ts_url(url, sizeof(url), "fork");
    cn_agent_options o;
    cn_agent_options_init(&o);
    o.url = url;
    o.service = "shop";
    o.command_poll_ms = 0;
    o.timeout_ms = 10000; /* no spurious resend on a loaded machine */
    cn_agent *a = NULL;
    assert_int_equal(cn_agent_new(&o, &a), 0);
    cn_agent_stats st;
    cn_agent_stats_get(a, &st);
    uint64_t parent_session = st.session;

    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(child_main(a, parent_session));

    /* nng starts in the parent only now, after the fork. */
    memset(&srv, 0, sizeof(srv));
    assert_int_equal(ts_server_start(&srv, url), 0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    size_t n = ts_server_records(&srv, recs, TS_MAX_RECORDS);
    assert_int_equal(n, 1);
    assert_int_equal(recs[0].pid, (uint32_t)pid);
    assert_int_equal(recs[0].batch_seq, 0);
    assert_true(recs[0].session != parent_session);
    char host[256], inst[300];
    gethostname(host, sizeof(host));
    snprintf(inst, sizeof(inst), "%d@%s", (int)pid, host);
    assert_string_equal(recs[0].instance, inst);

    /* The parent's own agent still has its session and starts at 0. */
    int rv;
    add_one(a, 0, &rv);
    assert_int_equal(rv, 0);
    assert_int_equal(cn_agent_flush(a), 0);
    for (int t = 0; t < 500; t++) {
        cn_agent_stats_get(a, &st);
        if (st.send.batches_acked == 1)
            break;
        sleep_ms(10);
    }
    assert_int_equal(st.send.batches_acked, 1);
    assert_true(st.session == parent_session);
    n = ts_server_records(&srv, recs, TS_MAX_RECORDS);
    assert_int_equal(n, 2);
    assert_int_equal(recs[1].pid, (uint32_t)getpid());
    assert_true(recs[1].session == parent_session);
    assert_int_equal(recs[1].batch_seq, 0);

    /* Now nng runs here; a child must not touch it: it refuses to send. */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        add_one(a, 1, &rv);
        cn_agent_stats s2;
        cn_agent_stats_get(a, &s2);
        /* no cn_agent_free: it would only drop; exit without nng. */
        _exit(rv == -CN_ECLOSED && s2.snapshots_dropped == 1 && s2.session != parent_session ? 0 : 20);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    cn_agent_free(a);
    ts_server_stop(&srv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_child_of_unstarted_agent_sends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
