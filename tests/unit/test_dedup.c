/* Batch deduplication by (instance, session, batch_seq). */
#include "dedup.h"
#include "testutil.h"

static void test_in_order_and_repeat(void **state)
{
    (void)state;
    dedup_table t;
    assert_int_equal(dedup_init(&t, 16), 0);
    for (uint64_t s = 0; s < 5000; s++)
        assert_int_equal(dedup_claim(&t, "a", 1, s, 0), DEDUP_NEW);
    assert_int_equal(dedup_claim(&t, "a", 1, 4999, 0), DEDUP_SEEN);
    assert_int_equal(dedup_claim(&t, "a", 1, 0, 0), DEDUP_SEEN);
    /* Another session of the same instance (a restarted agent) starts over. */
    assert_int_equal(dedup_claim(&t, "a", 2, 0, 0), DEDUP_NEW);
    dedup_destroy(&t);
}

static void test_out_of_order_and_release(void **state)
{
    (void)state;
    dedup_table t;
    assert_int_equal(dedup_init(&t, 16), 0);
    assert_int_equal(dedup_claim(&t, "a", 1, 0, 0), DEDUP_NEW);
    assert_int_equal(dedup_claim(&t, "a", 1, 3, 0), DEDUP_NEW);
    assert_int_equal(dedup_claim(&t, "a", 1, 2, 0), DEDUP_NEW);
    assert_int_equal(dedup_claim(&t, "a", 1, 1, 0), DEDUP_NEW);
    assert_int_equal(dedup_claim(&t, "a", 1, 2, 0), DEDUP_SEEN);
    /* A batch refused by a full pipeline must be accepted when resent. */
    assert_int_equal(dedup_claim(&t, "a", 1, 4, 0), DEDUP_NEW);
    dedup_release(&t, "a", 1, 4);
    assert_int_equal(dedup_claim(&t, "a", 1, 4, 0), DEDUP_NEW);
    assert_int_equal(dedup_claim(&t, "a", 1, 4, 0), DEDUP_SEEN);
    /* Far ahead: the window slides. */
    assert_int_equal(dedup_claim(&t, "a", 1, 100000, 0), DEDUP_NEW);
    assert_int_equal(dedup_claim(&t, "a", 1, 100000, 0), DEDUP_SEEN);
    assert_int_equal(dedup_claim(&t, "a", 1, 99999, 0), DEDUP_NEW);
    dedup_destroy(&t);
}

static void test_eviction(void **state)
{
    (void)state;
    dedup_table t;
    assert_int_equal(dedup_init(&t, 16), 0);
    char name[32];
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof name, "agent-%d", i);
        assert_int_equal(dedup_claim(&t, name, 1, 0, i), DEDUP_NEW);
    }
    assert_true(dedup_sessions(&t) <= 16);
    assert_int_equal(dedup_claim(&t, "agent-39", 1, 0, 100), DEDUP_SEEN);
    dedup_destroy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_in_order_and_repeat),
        cmocka_unit_test(test_out_of_order_and_release),
        cmocka_unit_test(test_eviction),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
