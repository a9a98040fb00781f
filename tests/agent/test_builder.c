/* Builder: interning, slots, limits, and the encoded Request round trip. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "canopy/agent.h"
#include "canopy/v1/canopy.pb-c.h"

static cn_str S(const char *s) { return (cn_str){.ptr = s, .len = strlen(s), .slot = NULL}; }

static void test_intern_dedup(void **state)
{
    (void)state;
    cn_builder *b = cn_builder_new(NULL);
    assert_non_null(b);
    uint32_t a, c, d, e;
    assert_int_equal(cn_builder_intern(b, S("/srv/app/views.py.checkout: 42"), &a), 0);
    assert_int_equal(cn_builder_intern(b, S("/srv/app/views.py.cart: 7"), &c), 0);
    assert_int_equal(cn_builder_intern(b, S("/srv/app/views.py.checkout: 42"), &d), 0);
    assert_int_equal(a, d);
    assert_int_not_equal(a, c);
    /* Not NUL-terminated input: only len bytes count. */
    const char buf[] = "abcdef";
    assert_int_equal(cn_builder_intern(b, (cn_str){buf, 3, NULL}, &e), 0);
    size_t len = 0;
    assert_string_equal(cn_builder_string(b, e, &len), "abc");
    assert_int_equal(len, 3);
    /* An embedded NUL cuts the string. */
    uint32_t f;
    assert_int_equal(cn_builder_intern(b, (cn_str){"abc\0zzz", 7, NULL}, &f), 0);
    assert_int_equal(f, e);
    assert_int_equal(cn_builder_strings(b), 3);
    cn_builder_free(b);
}

static void test_intern_many_grows_table(void **state)
{
    (void)state;
    cn_builder *b = cn_builder_new(NULL);
    assert_non_null(b);
    char s[64];
    for (uint32_t i = 0; i < 20000; i++) {
        snprintf(s, sizeof(s), "/srv/app/m%u.py.f%u: %u", i % 97, i, i % 13);
        uint32_t idx;
        assert_int_equal(cn_builder_intern(b, S(s), &idx), 0);
        assert_int_equal(idx, i);
    }
    for (uint32_t i = 0; i < 20000; i += 7) {
        snprintf(s, sizeof(s), "/srv/app/m%u.py.f%u: %u", i % 97, i, i % 13);
        uint32_t idx;
        assert_int_equal(cn_builder_intern(b, S(s), &idx), 0);
        assert_int_equal(idx, i);
    }
    assert_int_equal(cn_builder_strings(b), 20000);
    cn_builder_free(b);
}

static void test_slot_fast_path_and_generation(void **state)
{
    (void)state;
    cn_builder *b = cn_builder_new(NULL);
    assert_non_null(b);
    cn_intern_slot slot = {0, 0};
    uint32_t i1, i2, dummy;
    assert_int_equal(cn_builder_intern(b, S("zero"), &dummy), 0);
    cn_str s = {"x.py.f: 1", 9, &slot};
    assert_int_equal(cn_builder_intern(b, s, &i1), 0);
    assert_int_equal(slot.gen, cn_builder_generation(b));
    assert_int_equal(slot.index, i1);
    assert_int_equal(i1, 1);
    /* Fast path: the slot is trusted; prove no lookup happens by giving a
     * different pointer to the same slot. */
    cn_str other = {"never interned", 14, &slot};
    assert_int_equal(cn_builder_intern(b, other, &i2), 0);
    assert_int_equal(i2, i1);
    assert_int_equal(cn_builder_strings(b), 2);

    /* New batch: the slot is stale and re-interned by hash. */
    uint32_t g = cn_builder_generation(b);
    cn_builder_reset(b);
    assert_int_not_equal(cn_builder_generation(b), g);
    assert_int_equal(cn_builder_strings(b), 0);
    assert_int_equal(cn_builder_intern(b, s, &i2), 0);
    assert_int_equal(i2, 0);
    assert_int_equal(slot.gen, cn_builder_generation(b));
    assert_int_equal(slot.index, 0);

    /* reset_gen never hands out generation 0 (zeroed slots stay invalid). */
    cn_builder_reset_gen(b, 0);
    assert_int_not_equal(cn_builder_generation(b), 0);
    cn_builder_free(b);
}

static void test_limits(void **state)
{
    (void)state;
    cn_builder_limits lim = {.max_snapshots = 2, .max_frames = 3};
    cn_builder *b = cn_builder_new(&lim);
    assert_non_null(b);
    cn_str fr[5] = {S("f0"), S("f1"), S("f2"), S("f3"), S("f4")};
    cn_snapshot_in sn = {.task = S("t"), .segment = S("s"), .time_ms = 1, .sequence = 0,
                         .frames = fr, .n_frames = 5};
    assert_int_equal(cn_builder_add(b, &sn), 0);
    assert_false(cn_builder_full(b));
    sn.sequence = 1;
    assert_int_equal(cn_builder_add(b, &sn), 0);
    assert_true(cn_builder_full(b));
    sn.sequence = 2;
    assert_int_equal(cn_builder_add(b, &sn), -CN_ELIMIT);
    assert_int_equal(cn_builder_snapshots(b), 2);
    /* Leaf frames kept: f2 f3 f4 only (plus t, s). */
    uint32_t idx;
    assert_int_equal(cn_builder_strings(b), 5);
    assert_int_equal(cn_builder_intern(b, S("f0"), &idx), 0);
    assert_int_equal(idx, 5); /* f0 was never interned before */

    /* Indices outside the table are refused. */
    uint32_t bad[1] = {999};
    cn_builder_reset(b);
    uint32_t t;
    assert_int_equal(cn_builder_intern(b, S("t"), &t), 0);
    assert_int_equal(cn_builder_add_indices(b, t, t, 1, 0, bad, 1), -CN_EINVAL);
    assert_int_equal(cn_builder_add_indices(b, t, t, 1, 0, &t, 1), 0);

    /* Byte limit makes the batch full. */
    cn_builder_limits lim2 = {.max_bytes = 400};
    cn_builder *b2 = cn_builder_new(&lim2);
    assert_non_null(b2);
    int added = 0;
    char seg[32];
    while (!cn_builder_full(b2)) {
        snprintf(seg, sizeof(seg), "segment-%d", added);
        cn_snapshot_in s2 = {.task = S("t"), .segment = S(seg), .time_ms = 1, .frames = fr, .n_frames = 5};
        assert_int_equal(cn_builder_add(b2, &s2), 0);
        added++;
    }
    assert_true(added > 1 && added < 40);
    cn_identity id = {.service = "svc", .instance = "i", .host = "h", .pid = 1, .session = 2};
    uint8_t *out;
    size_t len;
    assert_int_equal(cn_builder_encode(b2, &id, 0, &out, &len), 0);
    assert_true(len <= cn_builder_size(b2)); /* the estimate is an upper bound */
    free(out);
    cn_builder_free(b2);
    cn_builder_free(b);
}

static void test_string_limits(void **state)
{
    (void)state;
    cn_builder_limits lim = {.max_string_len = 5, .max_strings = 8};
    cn_builder *b = cn_builder_new(&lim);
    assert_non_null(b);
    uint32_t i, j;
    size_t len;
    assert_int_equal(cn_builder_intern(b, S("abcdefgh"), &i), 0);
    assert_string_equal(cn_builder_string(b, i, &len), "abcde");
    /* "ab" + U+00E9 (2 bytes) + U+20AC (3 bytes): byte 5 is inside the euro
     * sign, so the cut backs off to 4 bytes. */
    assert_int_equal(cn_builder_intern(b, S("ab\xc3\xa9\xe2\x82\xac"), &j), 0);
    assert_string_equal(cn_builder_string(b, j, &len), "ab\xc3\xa9");
    assert_int_equal(len, 4);

    /* 8 strings at most: an empty batch takes any snapshot, a later one
     * that might overflow the table makes the batch full. */
    cn_builder_reset(b);
    cn_str fr[4] = {S("f0"), S("f1"), S("f2"), S("f3")};
    cn_snapshot_in sn = {.task = S("t"), .segment = S("s"), .frames = fr, .n_frames = 4};
    assert_int_equal(cn_builder_add(b, &sn), 0); /* 6 strings */
    assert_false(cn_builder_full(b));
    assert_int_equal(cn_builder_add(b, &sn), -CN_ELIMIT); /* 6 + 4 + 2 > 8 */
    sn.n_frames = 0;
    assert_int_equal(cn_builder_add(b, &sn), 0); /* 6 + 0 + 2 <= 8 */
    assert_int_equal(cn_builder_snapshots(b), 2);
    cn_builder_free(b);
}

static void test_encode_round_trip(void **state)
{
    (void)state;
    cn_builder *b = cn_builder_new(NULL);
    assert_non_null(b);
    const char *sigs[4] = {"/srv/app/wsgi.py.__call__: 10", "/srv/app/views.py.checkout: 42",
                           "/srv/app/db.py.query: 99", "/usr/lib/python3/socket.py.recv: 700"};
    cn_intern_slot slots[4] = {{0, 0}};
    for (int k = 0; k < 50; k++) {
        cn_str fr[4];
        int depth = 2 + k % 3;
        for (int i = 0; i < depth; i++)
            fr[i] = (cn_str){sigs[i], strlen(sigs[i]), &slots[i]};
        char seg[32];
        snprintf(seg, sizeof(seg), "seg-%d", k % 5);
        cn_snapshot_in sn = {.task = S(k % 2 ? "task-1" : "task-0"), .segment = S(seg),
                             .time_ms = 1700000000000LL + k, .sequence = k / 5,
                             .frames = fr, .n_frames = (size_t)depth};
        assert_int_equal(cn_builder_add(b, &sn), 0);
    }
    cn_identity id = {.service = "shop", .instance = "123@web1", .host = "web1", .pid = 123,
                      .agent_version = "9.9", .session = 0xfeedbeefcafeULL};
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(cn_builder_encode(b, &id, 7, &buf, &len), 0);
    assert_true(len > 0 && len <= cn_builder_size(b));

    Canopy__V1__Request *req = canopy__v1__request__unpack(NULL, len, buf);
    assert_non_null(req);
    assert_int_equal(req->protocol_version, 1);
    assert_string_equal(req->agent->service, "shop");
    assert_string_equal(req->agent->instance, "123@web1");
    assert_string_equal(req->agent->host, "web1");
    assert_int_equal(req->agent->pid, 123);
    assert_string_equal(req->agent->agent_version, "9.9");
    assert_true(req->agent->session == 0xfeedbeefcafeULL);
    assert_int_equal(req->body_case, CANOPY__V1__REQUEST__BODY_BATCH);
    Canopy__V1__SnapshotBatch *bt = req->batch;
    assert_int_equal(bt->batch_seq, 7);
    /* 4 signatures + 2 tasks + 5 segments, each once. */
    assert_int_equal(bt->n_strings, 11);
    for (size_t i = 0; i < bt->n_strings; i++)
        for (size_t j = i + 1; j < bt->n_strings; j++)
            assert_string_not_equal(bt->strings[i], bt->strings[j]);
    assert_int_equal(bt->n_snapshots, 50);
    for (int k = 0; k < 50; k++) {
        Canopy__V1__Snapshot *s = bt->snapshots[k];
        char seg[32];
        snprintf(seg, sizeof(seg), "seg-%d", k % 5);
        assert_string_equal(bt->strings[s->task], k % 2 ? "task-1" : "task-0");
        assert_string_equal(bt->strings[s->segment], seg);
        assert_true(s->time_ms == 1700000000000LL + k);
        assert_int_equal(s->sequence, k / 5);
        assert_int_equal(s->n_frames, (size_t)(2 + k % 3));
        for (size_t i = 0; i < s->n_frames; i++)
            assert_string_equal(bt->strings[s->frames[i]], sigs[i]); /* root first */
    }
    canopy__v1__request__free_unpacked(req, NULL);
    free(buf);

    /* An empty batch encodes too. */
    cn_builder_reset(b);
    assert_int_equal(cn_builder_encode(b, &id, 8, &buf, &len), 0);
    req = canopy__v1__request__unpack(NULL, len, buf);
    assert_non_null(req);
    assert_int_equal(req->batch->batch_seq, 8);
    assert_int_equal(req->batch->n_snapshots, 0);
    canopy__v1__request__free_unpacked(req, NULL);
    free(buf);
    cn_builder_free(b);
}

static void test_control_requests(void **state)
{
    (void)state;
    cn_identity id = {.service = "shop", .instance = "i", .host = "h", .pid = 5, .session = 9};
    uint8_t *buf;
    size_t len;
    assert_int_equal(cn_encode_command_query(&id, 1234, &buf, &len), 0);
    Canopy__V1__Request *req = canopy__v1__request__unpack(NULL, len, buf);
    assert_non_null(req);
    assert_int_equal(req->body_case, CANOPY__V1__REQUEST__BODY_COMMAND_QUERY);
    assert_int_equal(req->command_query->last_command_time, 1234);
    assert_string_equal(req->agent->agent_version, CN_AGENT_VERSION);
    canopy__v1__request__free_unpacked(req, NULL);
    free(buf);

    assert_int_equal(cn_encode_task_finish(&id, "task-9", &buf, &len), 0);
    req = canopy__v1__request__unpack(NULL, len, buf);
    assert_non_null(req);
    assert_int_equal(req->body_case, CANOPY__V1__REQUEST__BODY_TASK_FINISH);
    assert_string_equal(req->task_finish->task_id, "task-9");
    canopy__v1__request__free_unpacked(req, NULL);
    free(buf);
    assert_true(cn_session_random() != 0);
    assert_true(cn_session_random() != cn_session_random());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_intern_dedup),
        cmocka_unit_test(test_intern_many_grows_table),
        cmocka_unit_test(test_slot_fast_path_and_generation),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_string_limits),
        cmocka_unit_test(test_encode_round_trip),
        cmocka_unit_test(test_control_requests),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
