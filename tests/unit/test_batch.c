/* Decoding and validating agent requests. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/dict.h"
#include "canopy/string_key.h"
#include "decode.h"
#include "durable.h"
#include "testutil.h"

static Canopy__V1__Reason decode(const uint8_t *data, size_t len, const cn_batch_limits *lim, char *detail)
{
    Canopy__V1__Request *req;
    cn_arena *arena;
    cn_batch *b;
    cn_refusal why = {0};
    Canopy__V1__Reason r = cn_request_decode(data, len, lim, &req, &arena, &b, &why);
    memcpy(detail, why.detail, sizeof why.detail);
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
    req->batch->snapshots[0]->task = 5; /* a default 0 was not on the wire: the message grows */
    free(buf2);
    len2 = canopy__v1__request__get_packed_size(req);
    buf2 = malloc(len2);
    canopy__v1__request__pack(req, buf2);
    assert_int_equal(decode(buf2, len2, &lim, detail), CANOPY__V1__REASON__REASON_INDEX_OUT_OF_RANGE);
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

/* Equal content, or both refused: the direct decoder must agree with protobuf-c. */
static void compare_decoders(const uint8_t *buf, size_t len)
{
    cn_arena *a = cn_arena_new(1024);
    Canopy__V1__Request *fast = NULL;
    size_t longest = 0;
    decode_result dr = cn_decode_batch_request(buf, len, a, &fast, &longest);
    Canopy__V1__Request *ref = canopy__v1__request__unpack(NULL, len, buf);
    if (dr == DECODE_FALLBACK) {
        /* protobuf-c decides; nothing to compare */
    } else if (dr != DECODE_OK) {
        assert_null(ref);
    } else {
        assert_non_null(ref);
        assert_int_equal(fast->protocol_version, ref->protocol_version);
        assert_int_equal(fast->body_case, ref->body_case);
        assert_true((fast->agent == NULL) == (ref->agent == NULL));
        if (ref->agent) {
            assert_string_equal(fast->agent->service, ref->agent->service);
            assert_string_equal(fast->agent->instance, ref->agent->instance);
            assert_string_equal(fast->agent->host, ref->agent->host);
            assert_int_equal(fast->agent->pid, ref->agent->pid);
            assert_int_equal(fast->agent->session, ref->agent->session);
        }
        const Canopy__V1__SnapshotBatch *x = fast->batch, *y = ref->batch;
        assert_int_equal(x->batch_seq, y->batch_seq);
        assert_int_equal(x->n_strings, y->n_strings);
        size_t longest_ref = 0;
        for (size_t i = 0; i < x->n_strings; i++) {
            assert_string_equal(x->strings[i], y->strings[i]);
            if (strlen(y->strings[i]) > longest_ref)
                longest_ref = strlen(y->strings[i]);
        }
        /* Wire lengths: equal, or longer when a string holds a NUL. */
        assert_true(longest >= longest_ref);
        assert_int_equal(x->n_snapshots, y->n_snapshots);
        for (size_t i = 0; i < x->n_snapshots; i++) {
            const Canopy__V1__Snapshot *p = x->snapshots[i], *q = y->snapshots[i];
            assert_int_equal(p->task, q->task);
            assert_int_equal(p->segment, q->segment);
            assert_int_equal(p->time_ms, q->time_ms);
            assert_int_equal(p->sequence, q->sequence);
            assert_int_equal(p->n_frames, q->n_frames);
            assert_memory_equal(p->frames, q->frames, p->n_frames * sizeof *p->frames);
        }
    }
    if (ref)
        canopy__v1__request__free_unpacked(ref, NULL);
    cn_arena_free(a);
}

static void test_direct_decoder_matches_protobuf_c(void **state)
{
    (void)state;
    test_snap snaps[40];
    for (int i = 0; i < 40; i++)
        snaps[i] = (test_snap){i % 3 ? "task-a" : "task-b", i % 2 ? "seg-1" : "seg-2", 1700000000000LL + i * 10,
                               i / 2, {"main.py.<module>: 1", "app.py.handle: 20", i % 5 ? "db.py.query: 7" : NULL,
                                       NULL}};
    uint8_t *buf;
    size_t len = test_encode_batch("instance-\xc3\xa9", 123456789, snaps, 40, &buf);
    compare_decoders(buf, len);
    /* Every truncation and single-byte corruption: same verdict, same content. */
    for (size_t cut = 0; cut < len; cut++)
        compare_decoders(buf, cut);
    srand(7);
    uint8_t *mut = malloc(len);
    for (int round = 0; round < 3000; round++) {
        memcpy(mut, buf, len);
        size_t at = (size_t)rand() % len;
        mut[at] = (uint8_t)rand();
        compare_decoders(mut, len);
    }
    free(mut);
    /* Negative sequences and big times survive the varint round trip. */
    snaps[0].sequence = -5;
    snaps[0].time_ms = INT64_MAX;
    free(buf);
    len = test_encode_batch("i", 0, snaps, 1, &buf);
    compare_decoders(buf, len);
    free(buf);
}

/* Frame ids of one, two and three bytes (string tables past 128 and 16,384
 * entries), mixed within each packed field: the decoder's two-byte fast path
 * must hand every longer id to the general varint reader. */
static void test_direct_decoder_wide_ids(void **state)
{
    (void)state;
    /* Built with protobuf-c directly: test_encode_batch interns by linear search. */
    enum { SNAPS = 2600, FRAMES = 7, STRINGS = 2 + SNAPS * (FRAMES - 1) };
    static char names[STRINGS][24];
    static char *strings[STRINGS];
    static uint32_t frames[SNAPS][FRAMES];
    static Canopy__V1__Snapshot snap_structs[SNAPS];
    static Canopy__V1__Snapshot *snap_ptrs[SNAPS];
    strings[0] = "task";
    strings[1] = "seg";
    for (int i = 2; i < STRINGS; i++) {
        snprintf(names[i], sizeof names[i], "m.f%d: 1", i);
        strings[i] = names[i];
    }
    for (int i = 0; i < SNAPS; i++) {
        Canopy__V1__Snapshot *sn = &snap_structs[i];
        canopy__v1__snapshot__init(sn);
        sn->segment = 1;
        sn->time_ms = 1700000000000LL + i;
        sn->sequence = i;
        /* Frame 0 repeats (a one-byte id); the rest walk up through two and three bytes. */
        frames[i][0] = 2;
        for (int k = 1; k < FRAMES; k++)
            frames[i][k] = (uint32_t)(2 + i * (FRAMES - 1) + k - 1);
        sn->frames = frames[i];
        sn->n_frames = FRAMES;
        snap_ptrs[i] = sn;
    }
    Canopy__V1__SnapshotBatch batch = CANOPY__V1__SNAPSHOT_BATCH__INIT;
    batch.n_strings = STRINGS;
    batch.strings = strings;
    batch.n_snapshots = SNAPS;
    batch.snapshots = snap_ptrs;
    uint8_t *buf;
    size_t len = test_pack_batch(&batch, "i", &buf);
    uint8_t *mut = malloc(len);
    assert_non_null(mut);
    compare_decoders(buf, len);
    /* Truncations and corruptions inside the snapshots (they follow the strings). */
    for (size_t cut = len - 4000; cut < len; cut += 7)
        compare_decoders(buf, cut);
    srand(11);
    for (int round = 0; round < 1000; round++) {
        memcpy(mut, buf, len);
        mut[len - 1 - (size_t)rand() % 60000] = (uint8_t)rand();
        compare_decoders(mut, len);
    }
    free(mut);
    free(buf);
}

/* The spool's record checksum is CRC-32C: its published check value. */
static void test_crc32c(void **state)
{
    (void)state;
    assert_int_equal(cn_crc32("123456789", 9), 0xE3069283u);
    assert_int_equal(cn_crc32("", 0), 0);
    char big[1000];
    for (int i = 0; i < 1000; i++)
        big[i] = (char)(i * 7);
    /* Lengths not a multiple of 8 take the byte-wise tail. */
    assert_int_not_equal(cn_crc32(big, 999), cn_crc32(big, 1000));
}

/* Every string of b has its key: the stages that merge frames look signatures up by it alone. */
static void assert_keys_match(const cn_batch *b)
{
    assert_true(b->n_strings == 0 || b->string_keys != NULL);
    for (size_t i = 0; i < b->n_strings; i++)
        assert_true(b->string_keys[i] == cn_string_key(b->strings[i], strlen(b->strings[i])));
}

/* Each way a batch is made (decoded, built by a receiver, replayed from the intake log) carries the keys. */
static void test_string_keys_every_producer(void **state)
{
    (void)state;
    uint8_t *buf;
    size_t len = test_encode_batch("i-1", 3, two, 2, &buf);
    cn_batch *decoded = test_decode_batch(buf, len);
    assert_keys_match(decoded);
    /* the same strings in two batches: the same keys */
    cn_batch *again = test_decode_batch(buf, len);
    for (size_t i = 0; i < decoded->n_strings; i++)
        assert_true(decoded->string_keys[i] == again->string_keys[i]);
    cn_batch_unref(again);

    size_t dlen = 0;
    uint8_t *durable = cn_durable_encode_batch(decoded, &dlen);
    assert_non_null(durable);
    const char *why = NULL;
    cn_batch *replayed = cn_durable_decode_batch(durable, dlen, &why);
    assert_non_null(replayed);
    assert_keys_match(replayed);
    assert_int_equal(replayed->n_strings, decoded->n_strings);
    cn_batch_unref(replayed);
    free(durable);

    cn_batch_builder *bb = cn_batch_builder_new("svc", "i-2");
    assert_non_null(bb);
    uint32_t task, seg, frames[2];
    assert_int_equal(cn_batch_builder_string(bb, "task-a", &task), 0);
    assert_int_equal(cn_batch_builder_string(bb, "seg-1", &seg), 0);
    assert_int_equal(cn_batch_builder_string(bb, "app.py.main: 1", &frames[0]), 0);
    assert_int_equal(cn_batch_builder_string(bb, "app.py.handle: 20", &frames[1]), 0);
    assert_int_equal(cn_batch_builder_add(bb, task, seg, 0, 1000, frames, 2), 0);
    cn_batch *built = cn_batch_builder_finish(bb, 1);
    assert_non_null(built);
    assert_keys_match(built);
    /* a frame's key does not depend on the batch or its producer */
    assert_true(built->string_keys[frames[1]] == cn_string_key("app.py.handle: 20", 17));
    cn_batch_unref(built);
    cn_batch_unref(decoded);
    free(buf);
}

static int key_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * cn_dict hashes with string keys, so a batch's key finds what was put by the
 * string and the other way round; through growth (20,000 keys), removals
 * (tombstones), reinserts and iteration, which visits each live key once.
 */
static void test_dict_batch_keys(void **state)
{
    (void)state;
    cn_dict *d = cn_dict_new(4);
    assert_non_null(d);
    enum { N = 20000 };
    char id[48];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "segment-%08x-%d", (unsigned)i * 2654435761u, i);
        uint64_t key = cn_string_key(id, strlen(id));
        assert_int_equal(key, cn_dict_hash(id));
        const char *copy = (i & 1) ? cn_dict_put_key(d, id, (void *)(intptr_t)(i + 1))
                                   : cn_dict_put_key_hashed(d, id, key, (void *)(intptr_t)(i + 1));
        assert_non_null(copy);
        assert_string_equal(copy, id);
    }
    assert_int_equal(cn_dict_size(d), N);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "segment-%08x-%d", (unsigned)i * 2654435761u, i);
        assert_int_equal((intptr_t)cn_dict_get_hashed(d, id, cn_string_key(id, strlen(id))), i + 1);
        assert_int_equal((intptr_t)cn_dict_get(d, id), i + 1);
    }
    /* Every third key removed, half of them by the map's own copy and its hash. */
    for (int i = 0; i < N; i += 3) {
        snprintf(id, sizeof id, "segment-%08x-%d", (unsigned)i * 2654435761u, i);
        void *v = (i & 1) ? cn_dict_remove(d, id) : cn_dict_remove_hashed(d, id, cn_dict_hash(id));
        assert_int_equal((intptr_t)v, i + 1);
        assert_null(cn_dict_get(d, id));
    }
    size_t pos = 0, seen = 0;
    const char *k;
    void *v;
    while (cn_dict_next(d, &pos, &k, &v)) {
        int i = (int)(intptr_t)v - 1;
        assert_true(i >= 0 && i < N && i % 3 != 0);
        snprintf(id, sizeof id, "segment-%08x-%d", (unsigned)i * 2654435761u, i);
        assert_string_equal(k, id);
        seen++;
    }
    assert_int_equal(seen, N - (N + 2) / 3);
    assert_int_equal(cn_dict_size(d), seen);
    /* Removed keys come back through the tombstones. */
    for (int i = 0; i < N; i += 3) {
        snprintf(id, sizeof id, "segment-%08x-%d", (unsigned)i * 2654435761u, i);
        assert_non_null(cn_dict_put_key_hashed(d, id, cn_dict_hash(id), (void *)(intptr_t)(i + 1)));
    }
    assert_int_equal(cn_dict_size(d), N);
    cn_dict_free(d, NULL);
}

/*
 * Keys stand for strings (canopy/string_key.h), so different strings must get
 * different keys: every length around the 8- and 16-byte steps, strings that
 * differ only by zero padding, every single-bit change of a signature, and
 * 200,000 signatures shaped like an app's, with no collision among them.
 */
static void test_string_key_distinct(void **state)
{
    (void)state;
    const char zeros[32] = {0};
    uint64_t pad[33];
    for (size_t n = 0; n <= 32; n++)
        pad[n] = cn_string_key(zeros, n);
    qsort(pad, 33, sizeof *pad, key_cmp);
    for (size_t i = 1; i < 33; i++)
        assert_true(pad[i] != pad[i - 1]);

    char sig[64];
    snprintf(sig, sizeof sig, "/srv/app/services/payment.py.charge: 118");
    size_t len = strlen(sig);
    uint64_t base = cn_string_key(sig, len);
    char copy[64];
    memcpy(copy, sig, len + 1);
    assert_true(cn_string_key(copy, len) == base); /* content, not address */
    for (size_t at = 0; at < len; at++)
        for (int bit = 0; bit < 8; bit++) {
            copy[at] ^= (char)(1 << bit);
            assert_true(cn_string_key(copy, len) != base);
            copy[at] ^= (char)(1 << bit);
        }

    enum { N = 200000 };
    uint64_t *keys = malloc(N * sizeof *keys);
    assert_non_null(keys);
    for (int i = 0; i < N; i++) {
        char s[96];
        int n = snprintf(s, sizeof s, "/srv/app/mod%d.py.func_%d: %d", i % 97, i / 97, i % 1000);
        keys[i] = cn_string_key(s, (size_t)n);
    }
    qsort(keys, N, sizeof *keys, key_cmp);
    for (int i = 1; i < N; i++)
        assert_true(keys[i] != keys[i - 1]);
    free(keys);
}

/* A thread waiting for the live bytes to fall is woken by the free that gets them there, not by its timeout. */
typedef struct live_waiter {
    int64_t level;
    bool reached;
    int64_t waited_ms;
} live_waiter;

static void *wait_live(void *arg)
{
    live_waiter *w = arg;
    int64_t start = cn_mono_ms();
    w->reached = cn_batch_wait_live_bytes(w->level, 10000);
    w->waited_ms = cn_mono_ms() - start;
    return NULL;
}

static void test_wait_live_bytes(void **state)
{
    (void)state;
    uint8_t *buf;
    size_t len = test_encode_batch("i-1", 1, two, 2, &buf);
    int64_t before = cn_batch_live_bytes();
    /* Already there: no wait. */
    assert_true(cn_batch_wait_live_bytes(before, 0));
    cn_batch *b = test_decode_batch(buf, len);
    int64_t held = cn_batch_live_bytes();
    assert_true(held > before);
    /* Not there and nothing freed: the timeout ends the wait. */
    int64_t start = cn_mono_ms();
    assert_false(cn_batch_wait_live_bytes(before, 30));
    assert_true(cn_mono_ms() - start >= 25);
    /* Two waiters at different levels, both woken by the one free that gets below both. */
    live_waiter low = {.level = before}, high = {.level = held - 1};
    pthread_t t1, t2;
    assert_int_equal(pthread_create(&t1, NULL, wait_live, &low), 0);
    assert_int_equal(pthread_create(&t2, NULL, wait_live, &high), 0);
    struct timespec pause = {0, 50 * 1000000};
    nanosleep(&pause, NULL); /* both are waiting by now, most likely; the test holds either way */
    cn_batch_unref(b);
    assert_int_equal(pthread_join(t1, NULL), 0);
    assert_int_equal(pthread_join(t2, NULL), 0);
    assert_true(low.reached);
    assert_true(high.reached);
    assert_true(low.waited_ms < 10000); /* woken, not timed out */
    assert_true(high.waited_ms < 10000);
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
        cmocka_unit_test(test_direct_decoder_matches_protobuf_c),
        cmocka_unit_test(test_direct_decoder_wide_ids),
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_string_keys_every_producer),
        cmocka_unit_test(test_string_key_distinct),
        cmocka_unit_test(test_dict_batch_keys),
        cmocka_unit_test(test_wait_live_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
