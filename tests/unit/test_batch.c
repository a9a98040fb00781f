/* Decoding and validating agent requests. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static Canopy__V1__Reason decode(const uint8_t *data, size_t len, const cn_batch_limits *lim, char *detail)
{
    Canopy__V1__Request *req;
    cn_arena *arena;
    cn_batch *b;
    Canopy__V1__Reason r = cn_request_decode(data, len, lim, &req, &arena, &b, detail, 256);
    if (r == CANOPY__V1__REASON__REASON_OK) {
        if (b)
            cn_batch_unref(b);
        else
            cn_arena_free(arena);
    } else {
        assert_null(b);
    }
    return r;
}

static const test_snap two[] = {
    {"task-a", "seg-1", 1000, 0, {"app.py.main: 1", "app.py.handle: 20", NULL}},
    {"task-a", "seg-1", 1010, 1, {"app.py.main: 1", "app.py.handle: 21", NULL}},
};

static void test_decode_roundtrip(void **state)
{
    (void)state;
    uint8_t *buf;
    size_t len = test_encode_batch("i-1", 9, two, 2, &buf);
    cn_batch *b = test_decode_batch(buf, len);
    assert_int_equal(b->batch_seq, 9);
    assert_string_equal(b->agent->instance, "i-1");
    assert_int_equal(b->n_snapshots, 2);
    /* task, segment and the shared root frame appear once in the table */
    assert_int_equal(b->n_strings, 5);
    const cn_snapshot *s = b->snapshots[1];
    assert_string_equal(cn_batch_str(b, s->task), "task-a");
    assert_string_equal(cn_batch_str(b, s->frames[0]), "app.py.main: 1");
    assert_string_equal(cn_batch_str(b, s->frames[1]), "app.py.handle: 21");
    assert_int_equal(s->sequence, 1);
    cn_chunk *c = cn_chunk_from_batch(b);
    cn_batch_unref(b); /* the chunk keeps it alive */
    assert_int_equal(c->n, 2);
    assert_string_equal(cn_ref_segment(&c->refs[0]), "seg-1");
    cn_chunk_unref(c);
    free(buf);
}

static void test_garbage_and_truncated(void **state)
{
    (void)state;
    char detail[256];
    cn_batch_limits lim = {0};
    const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x99};
    assert_int_equal(decode(garbage, sizeof garbage, &lim, detail), CANOPY__V1__REASON__REASON_MALFORMED);
    uint8_t *buf;
    size_t len = test_encode_batch("i-1", 1, two, 2, &buf);
    for (size_t cut = 1; cut < len; cut += 7) {
        Canopy__V1__Reason r = decode(buf, len - cut, &lim, detail);
        assert_int_not_equal(r, CANOPY__V1__REASON__REASON_OK);
    }
    assert_int_equal(decode((const uint8_t *)"", 0, &lim, detail), CANOPY__V1__REASON__REASON_UNSUPPORTED_VERSION);
    free(buf);
}

static void test_index_out_of_range(void **state)
{
    (void)state;
    uint8_t *buf;
    size_t len = test_encode_batch("i-1", 1, two, 2, &buf);
    /* Re-encode with a frame index past the string table. */
    Canopy__V1__Request *req = canopy__v1__request__unpack(NULL, len, buf);
    assert_non_null(req);
    req->batch->snapshots[1]->frames[1] = 99;
    size_t len2 = canopy__v1__request__get_packed_size(req);
    uint8_t *buf2 = malloc(len2);
    canopy__v1__request__pack(req, buf2);
    char detail[256];
    cn_batch_limits lim = {0};
    assert_int_equal(decode(buf2, len2, &lim, detail), CANOPY__V1__REASON__REASON_INDEX_OUT_OF_RANGE);
    assert_non_null(strstr(detail, "snapshot 1: frame index 99"));
    req->batch->snapshots[1]->frames[1] = 1;
    req->batch->snapshots[0]->task = 5;
    canopy__v1__request__pack(req, buf2);
    assert_int_equal(decode(buf2, canopy__v1__request__get_packed_size(req), &lim, detail),
                     CANOPY__V1__REASON__REASON_INDEX_OUT_OF_RANGE);
    canopy__v1__request__free_unpacked(req, NULL);
    free(buf);
    free(buf2);
}

static void test_limits(void **state)
{
    (void)state;
    uint8_t *buf;
    size_t len = test_encode_batch("i-1", 1, two, 2, &buf);
    char detail[256];
    cn_batch_limits lim = {.max_frames = 1};
    assert_int_equal(decode(buf, len, &lim, detail), CANOPY__V1__REASON__REASON_LIMIT_EXCEEDED);
    assert_non_null(strstr(detail, "2 frames, limit is 1"));
    lim = (cn_batch_limits){.max_strings = 4};
    assert_int_equal(decode(buf, len, &lim, detail), CANOPY__V1__REASON__REASON_LIMIT_EXCEEDED);
    lim = (cn_batch_limits){.max_string_length = 8};
    assert_int_equal(decode(buf, len, &lim, detail), CANOPY__V1__REASON__REASON_LIMIT_EXCEEDED);
    assert_non_null(strstr(detail, "bytes long, limit is 8"));
    lim = (cn_batch_limits){.max_snapshots = 1};
    assert_int_equal(decode(buf, len, &lim, detail), CANOPY__V1__REASON__REASON_LIMIT_EXCEEDED);
    lim = (cn_batch_limits){.max_snapshots = 2, .max_strings = 5, .max_string_length = 64, .max_frames = 2};
    assert_int_equal(decode(buf, len, &lim, detail), CANOPY__V1__REASON__REASON_OK);
    free(buf);
}

static void test_identity_and_version(void **state)
{
    (void)state;
    char detail[256];
    cn_batch_limits lim = {0};
    uint8_t *buf;
    size_t len = test_encode_batch("i-1", 1, two, 2, &buf);
    Canopy__V1__Request *req = canopy__v1__request__unpack(NULL, len, buf);
    uint8_t out[4096];
    req->protocol_version = 2;
    size_t n = canopy__v1__request__pack(req, out);
    assert_int_equal(decode(out, n, &lim, detail), CANOPY__V1__REASON__REASON_UNSUPPORTED_VERSION);
    req->protocol_version = 1;
    char *saved = req->agent->instance;
    req->agent->instance = "";
    n = canopy__v1__request__pack(req, out);
    assert_int_equal(decode(out, n, &lim, detail), CANOPY__V1__REASON__REASON_INVALID);
    req->agent->instance = saved;
    req->batch->snapshots[0]->sequence = -4;
    n = canopy__v1__request__pack(req, out);
    assert_int_equal(decode(out, n, &lim, detail), CANOPY__V1__REASON__REASON_INVALID);
    canopy__v1__request__free_unpacked(req, NULL);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_roundtrip),
        cmocka_unit_test(test_garbage_and_truncated),
        cmocka_unit_test(test_index_out_of_range),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_identity_and_version),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
