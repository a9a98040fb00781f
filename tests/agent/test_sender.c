/* Sender: acks, resends after a lost reply or OVERLOADED, drops, bounds,
 * and a fresh connection after a silent one. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "canopy/agent.h"
#include "rep_server.h"

static ts_server srv; /* big: keep it off the stack */
static ts_record recs[TS_MAX_RECORDS];

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* One encoded batch of n snapshots with the given batch_seq. */
static uint8_t *make_batch(uint64_t seq, int n, size_t *len)
{
    cn_builder *b = cn_builder_new(NULL);
    assert_non_null(b);
    cn_str fr[2] = {{"/srv/app/wsgi.py.app: 1", 23, NULL}, {"/srv/app/v.py.f: 2", 18, NULL}};
    for (int i = 0; i < n; i++) {
        cn_snapshot_in s = {.task = {"task-0", 6, NULL}, .segment = {"seg-0", 5, NULL},
                            .time_ms = 1000 + i, .sequence = (int32_t)(seq * 100 + (uint64_t)i),
                            .frames = fr, .n_frames = 2};
        assert_int_equal(cn_builder_add(b, &s), 0);
    }
    cn_identity id = {.service = "svc", .instance = "test@h", .host = "h", .pid = 1, .session = 42};
    uint8_t *out = NULL;
    assert_int_equal(cn_builder_encode(b, &id, seq, &out, len), 0);
    cn_builder_free(b);
    return out;
}

static cn_sender *sender_for(const char *url, uint32_t timeout_ms, size_t max_bytes)
{
    cn_sender_options o;
    cn_sender_options_init(&o);
    o.url = url;
    o.timeout_ms = timeout_ms;
    o.backoff_min_ms = 10;
    o.backoff_max_ms = 100;
    if (max_bytes)
        o.max_buffered_bytes = max_bytes;
    cn_sender *s = NULL;
    assert_int_equal(cn_sender_new(&o, &s), 0);
    return s;
}

static void submit_batch(cn_sender *s, uint64_t seq, int n)
{
    size_t len;
    uint8_t *b = make_batch(seq, n, &len);
    assert_int_equal(cn_sender_submit(s, b, len, seq), 0);
    free(b);
}

static int server_up(void **state)
{
    (void)state;
    memset(&srv, 0, sizeof(srv));
    char url[128];
    ts_url(url, sizeof(url), "sender");
    return ts_server_start(&srv, url);
}

static int server_down(void **state)
{
    (void)state;
    ts_server_stop(&srv);
    return 0;
}

static void test_window_all_acked(void **state)
{
    (void)state;
    char url[128];
    ts_url(url, sizeof(url), "sender");
    cn_sender *s = sender_for(url, 10000, 0);
    for (uint64_t i = 0; i < 40; i++)
        submit_batch(s, i, 5);
    assert_int_equal(cn_sender_wait_idle(s, 10000), 0);
    cn_send_stats st;
    cn_sender_stats(s, &st);
    assert_int_equal(st.batches_sent, 40);
    assert_int_equal(st.batches_acked, 40);
    assert_int_equal(st.batches_resent, 0);
    assert_int_equal(st.batches_dropped, 0);
    assert_int_equal(st.bytes_buffered, 0);
    assert_int_equal(st.requests_pending, 0);
    size_t n = ts_server_records(&srv, recs, TS_MAX_RECORDS);
    assert_int_equal(n, 40);
    uint64_t seen = 0;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(recs[i].n_snapshots, 5);
        seen |= 1ULL << recs[i].batch_seq;
    }
    assert_true(seen == (1ULL << 40) - 1);
    cn_sender_free(s);
}

static void test_resend_after_lost_reply(void **state)
{
    (void)state;
    char url[128];
    ts_url(url, sizeof(url), "sender");
    pthread_mutex_lock(&srv.mu);
    srv.n_rec = 0;
    srv.drop_first = 1;
    pthread_mutex_unlock(&srv.mu);
    cn_sender *s = sender_for(url, 1000, 0);
    submit_batch(s, 77, 3);
    assert_int_equal(cn_sender_wait_idle(s, 10000), 0);
    cn_send_stats st;
    cn_sender_stats(s, &st);
    assert_int_equal(st.batches_sent, 1);
    assert_int_equal(st.batches_resent, 1);
    assert_int_equal(st.batches_acked, 1);
    assert_true(st.errors >= 1);
    size_t n = ts_server_records(&srv, recs, TS_MAX_RECORDS);
    assert_int_equal(n, 2);
    /* Dedup-safe: the resend is the same batch_seq, byte for byte. */
    assert_int_equal(recs[0].batch_seq, 77);
    assert_int_equal(recs[1].batch_seq, 77);
    assert_int_equal(recs[0].digest, recs[1].digest);
    assert_int_equal(recs[0].len, recs[1].len);
    assert_true(recs[0].session == recs[1].session);
    cn_sender_free(s);
}

static void test_resend_after_overloaded(void **state)
{
    (void)state;
    char url[128];
    ts_url(url, sizeof(url), "sender");
    pthread_mutex_lock(&srv.mu);
    srv.n_rec = 0;
    srv.overload_first = 2;
    pthread_mutex_unlock(&srv.mu);
    cn_sender *s = sender_for(url, 10000, 0);
    submit_batch(s, 5, 2);
    assert_int_equal(cn_sender_wait_idle(s, 10000), 0);
    cn_send_stats st;
    cn_sender_stats(s, &st);
    assert_int_equal(st.batches_sent, 1);
    assert_int_equal(st.batches_resent, 2);
    assert_int_equal(st.batches_acked, 1);
    assert_int_equal(st.batches_dropped, 0);
    assert_int_equal(st.errors, 2);
    size_t n = ts_server_records(&srv, recs, TS_MAX_RECORDS);
    assert_int_equal(n, 3);
    for (size_t i = 1; i < n; i++) {
        assert_int_equal(recs[i].batch_seq, 5);
        assert_int_equal(recs[i].digest, recs[0].digest);
    }
    cn_sender_free(s);
}

static void test_non_retryable_dropped(void **state)
{
    (void)state;
    char url[128];
    ts_url(url, sizeof(url), "sender");
    pthread_mutex_lock(&srv.mu);
    srv.n_rec = 0;
    srv.reject_reason = CANOPY__V1__REASON__REASON_LIMIT_EXCEEDED;
    pthread_mutex_unlock(&srv.mu);
    cn_sender *s = sender_for(url, 10000, 0);
    submit_batch(s, 1, 2);
    submit_batch(s, 2, 2);
    assert_int_equal(cn_sender_wait_idle(s, 10000), 0);
    cn_send_stats st;
    cn_sender_stats(s, &st);
    assert_int_equal(st.batches_dropped, 2);
    assert_int_equal(st.batches_acked, 0);
    assert_int_equal(st.batches_resent, 0);
    assert_int_equal(ts_server_records(&srv, recs, TS_MAX_RECORDS), 2);
    pthread_mutex_lock(&srv.mu);
    srv.reject_reason = 0;
    pthread_mutex_unlock(&srv.mu);
    cn_sender_free(s);
}

static void test_collector_starts_late(void **state)
{
    (void)state;
    char url[128];
    ts_url(url, sizeof(url), "late");
    cn_sender *s = sender_for(url, 200, 0);
    for (uint64_t i = 0; i < 3; i++)
        submit_batch(s, i, 1);
    sleep_ms(400);
    static ts_server late;
    memset(&late, 0, sizeof(late));
    assert_int_equal(ts_server_start(&late, url), 0);
    assert_int_equal(cn_sender_wait_idle(s, 10000), 0);
    cn_send_stats st;
    cn_sender_stats(s, &st);
    assert_int_equal(st.batches_acked, 3);
    assert_int_equal(st.batches_dropped, 0);
    cn_sender_free(s);
    ts_server_stop(&late);
}

static void test_memory_bound_and_attempts(void **state)
{
    (void)state;
    char url[128];
    ts_url(url, sizeof(url), "nobody");
    size_t len;
    uint8_t *b = make_batch(0, 10, &len);
    cn_sender *s = sender_for(url, 100, 2 * len + len / 2);
    assert_int_equal(cn_sender_submit(s, b, len, 0), 0);
    assert_int_equal(cn_sender_submit(s, b, len, 1), 0);
    assert_int_equal(cn_sender_submit(s, b, len, 2), -CN_EFULL);
    assert_int_equal(cn_sender_submit(s, b, len, 3), -CN_EFULL);
    cn_send_stats st;
    cn_sender_stats(s, &st);
    assert_int_equal(st.batches_dropped, 2);
    assert_int_equal(st.bytes_buffered, 2 * len);
    assert_int_equal(st.requests_pending, 2);
    assert_int_equal(cn_sender_wait_idle(s, 200), -CN_ETIMEDOUT);
    cn_sender_free(s);

    /* With a cap on attempts a batch is given up (and counted). */
    cn_sender_options o;
    cn_sender_options_init(&o);
    o.url = url;
    o.timeout_ms = 50;
    o.backoff_min_ms = 10;
    o.max_attempts = 2;
    assert_int_equal(cn_sender_new(&o, &s), 0);
    assert_int_equal(cn_sender_submit(s, b, len, 9), 0);
    assert_int_equal(cn_sender_wait_idle(s, 5000), 0);
    cn_sender_stats(s, &st);
    assert_int_equal(st.batches_sent, 1);
    assert_int_equal(st.batches_resent, 1);
    assert_int_equal(st.batches_dropped, 1);
    assert_int_equal(st.bytes_buffered, 0);
    cn_sender_free(s);
    free(b);
}

/*
 * A collector whose first connection goes silent: it speaks the SP-over-TCP
 * wire protocol by hand (an 8-byte handshake, then messages with a 64-bit
 * big-endian length), takes requests on the first connection and never
 * answers them, and answers every request on later connections with an
 * empty Reply (reason OK). That is what a wedged transport looks like to the
 * agent: the connection stays up and nothing comes back.
 */
typedef struct silent_first {
    int listen_fd;
    int port;
    pthread_t thread;
    atomic_bool stop;
    atomic_int connections, unanswered, answered;
} silent_first;

static bool read_full(int fd, void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t got = read(fd, p, n);
        if (got <= 0)
            return false;
        p += got;
        n -= (size_t)got;
    }
    return true;
}

/* Serves one connection; returns false when it is over. */
static bool silent_first_serve(silent_first *sf, int fd, bool silent)
{
    uint8_t len_be[8];
    if (!read_full(fd, len_be, 8))
        return false;
    uint64_t len = 0;
    for (int i = 0; i < 8; i++)
        len = len << 8 | len_be[i];
    if (len < 4 || len > (1u << 20))
        return false;
    uint8_t *msg = malloc(len);
    if (!msg || !read_full(fd, msg, len)) {
        free(msg);
        return false;
    }
    if (silent) {
        atomic_fetch_add(&sf->unanswered, 1);
    } else {
        /* The reply: length 4, then the request id (REQ's header) and an empty body. */
        uint8_t reply[12] = {0, 0, 0, 0, 0, 0, 0, 4, msg[0], msg[1], msg[2], msg[3]};
        if (write(fd, reply, sizeof reply) == (ssize_t)sizeof reply)
            atomic_fetch_add(&sf->answered, 1);
    }
    free(msg);
    return true;
}

static void *silent_first_main(void *arg)
{
    silent_first *sf = arg;
    struct pollfd fds[9] = {{.fd = sf->listen_fd, .events = POLLIN}};
    bool silent[9] = {false};
    int n = 1;
    while (!atomic_load(&sf->stop)) {
        if (poll(fds, (nfds_t)n, 50) <= 0)
            continue;
        for (int i = n - 1; i >= 1; i--) {
            if (fds[i].revents && !silent_first_serve(sf, fds[i].fd, silent[i])) {
                close(fds[i].fd);
                fds[i] = fds[n - 1];
                silent[i] = silent[n - 1];
                n--;
            }
        }
        if ((fds[0].revents & POLLIN) && n < 9) {
            int fd = accept(sf->listen_fd, NULL, NULL);
            /* SP handshake: "\0SP\0", the protocol (REP0 = 0x31), two reserved bytes. */
            static const uint8_t hello[8] = {0, 'S', 'P', 0, 0, 0x31, 0, 0};
            uint8_t peer[8];
            if (fd >= 0 && write(fd, hello, 8) == 8 && read_full(fd, peer, 8) && peer[5] == 0x30) {
                silent[n] = atomic_fetch_add(&sf->connections, 1) == 0;
                fds[n++] = (struct pollfd){.fd = fd, .events = POLLIN};
            } else if (fd >= 0) {
                close(fd);
            }
        }
    }
    for (int i = 1; i < n; i++)
        close(fds[i].fd);
    return NULL;
}

static void test_reset_after_silent_connection(void **state)
{
    (void)state;
    static silent_first sf;
    memset(&sf, 0, sizeof sf);
    sf.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(sf.listen_fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof addr;
    assert_int_equal(bind(sf.listen_fd, (struct sockaddr *)&addr, sizeof addr), 0);
    assert_int_equal(listen(sf.listen_fd, 8), 0);
    assert_int_equal(getsockname(sf.listen_fd, (struct sockaddr *)&addr, &alen), 0);
    sf.port = ntohs(addr.sin_port);
    assert_int_equal(pthread_create(&sf.thread, NULL, silent_first_main, &sf), 0);

    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", sf.port);
    cn_sender *s = sender_for(url, 200, 0);
    for (uint64_t i = 0; i < 5; i++)
        submit_batch(s, i, 2);
    /* Unanswered on the first connection; after three silent attempts and
     * 3 x 200 ms the socket is reopened and the new connection acks. */
    assert_int_equal(cn_sender_wait_idle(s, 10000), 0);
    cn_send_stats st;
    cn_sender_stats(s, &st);
    assert_int_equal(st.batches_acked, 5);
    assert_int_equal(st.batches_dropped, 0);
    assert_true(st.socket_resets >= 1);
    assert_true(atomic_load(&sf.unanswered) >= 3);
    assert_true(atomic_load(&sf.connections) >= 2);
    assert_true(atomic_load(&sf.answered) >= 5);
    cn_sender_free(s);
    atomic_store(&sf.stop, true);
    pthread_join(sf.thread, NULL);
    close(sf.listen_fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_all_acked),
        cmocka_unit_test(test_resend_after_lost_reply),
        cmocka_unit_test(test_resend_after_overloaded),
        cmocka_unit_test(test_non_retryable_dropped),
        cmocka_unit_test(test_collector_starts_late),
        cmocka_unit_test(test_memory_bound_and_attempts),
        cmocka_unit_test(test_reset_after_silent_connection),
    };
    return cmocka_run_group_tests(tests, server_up, server_down);
}
