/*
 * The KV manager on its own: reference counts, the free list, prefix
 * registration and lookup (with the token check), LRU eviction order,
 * block copies, forgetting every prefix (a refit), and its invariants
 * after random operations.
 */
#include "exec_testkit.h"
#include "executor/kv_manager.h"

static anvil_runtime *load_small(int32_t n_blocks)
{
    anvil_runtime_options o;
    kit_rt_options(&o);
    o.kv_block_size = 4;
    o.kv_cache_tokens = 4 * n_blocks;
    return kit_load("stories260K", &o);
}

static void test_alloc_refcount(void **state)
{
    (void)state;
    anvil_runtime *rt = load_small(8);
    anvil_kv_manager *m;
    KIT_OK(anvil_kv_manager_create(rt, 1, &m));
    assert_int_equal(anvil_runtime_kv_blocks_free(rt), 0); /* it took them all */
    assert_int_equal(anvil_kv_total(m), 8);
    assert_int_equal(anvil_kv_block_size(m), 4);
    int32_t ids[8];
    KIT_OK(anvil_kv_alloc(m, 3, ids));
    assert_int_equal(anvil_kv_n_used(m), 3);
    assert_int_equal(anvil_kv_available(m), 5);
    assert_status_msg(anvil_kv_alloc(m, 6, ids + 3), ANVIL_ERR_CAPACITY, "KV cache full");
    assert_int_equal(anvil_kv_available(m), 5); /* took none */
    anvil_kv_incref(m, ids[0]);
    assert_int_equal(anvil_kv_refcount(m, ids[0]), 2);
    anvil_kv_decref(m, ids[0]);
    anvil_kv_decref(m, ids[0]);
    assert_int_equal(anvil_kv_refcount(m, ids[0]), 0);
    assert_int_equal(anvil_kv_n_free(m), 6);
    anvil_kv_decref(m, ids[1]);
    anvil_kv_decref(m, ids[2]);
    KIT_OK(anvil_kv_check(m));
    assert_int_equal(anvil_kv_n_free(m), 8);
    anvil_kv_manager_free(m);
    assert_int_equal(anvil_runtime_kv_blocks_free(rt), 8); /* given back */
    anvil_runtime_free(rt);
}

static void test_prefix_registration_and_lru(void **state)
{
    (void)state;
    anvil_runtime *rt = load_small(4);
    anvil_kv_manager *m;
    KIT_OK(anvil_kv_manager_create(rt, 1, &m));
    const int32_t toks[3][4] = {{1, 2, 3, 4}, {5, 6, 7, 8}, {9, 10, 11, 12}};
    uint64_t h[3], parent = ANVIL_KV_ROOT_HASH;
    int32_t b[3];
    KIT_OK(anvil_kv_alloc(m, 3, b));
    for (int i = 0; i < 3; i++) {
        h[i] = anvil_kv_hash(parent, toks[i], 4);
        anvil_kv_register(m, b[i], h[i], parent, toks[i]);
        parent = h[i];
    }
    /* the chain: block 1 is found only after block 0's hash */
    assert_int_equal(anvil_kv_lookup(m, h[1], h[0], toks[1]), b[1]);
    assert_int_equal(anvil_kv_lookup(m, anvil_kv_hash(ANVIL_KV_ROOT_HASH, toks[1], 4), ANVIL_KV_ROOT_HASH, toks[1]),
                     -1);
    /* the right hash with other tokens (a forged collision) misses */
    const int32_t other[4] = {1, 2, 3, 5};
    assert_int_equal(anvil_kv_lookup(m, h[0], ANVIL_KV_ROOT_HASH, other), -1);
    /* the same prefix registered twice: the first block keeps it */
    int32_t dup;
    KIT_OK(anvil_kv_alloc(m, 1, &dup));
    anvil_kv_register(m, dup, h[0], ANVIL_KV_ROOT_HASH, toks[0]);
    assert_false(anvil_kv_is_registered(m, dup));
    anvil_kv_decref(m, dup);
    assert_int_equal(anvil_kv_n_free(m), 1);

    /* released tail first (as sequences do): they become cached, LRU order 2, 1, 0 */
    anvil_kv_decref(m, b[2]);
    anvil_kv_decref(m, b[1]);
    anvil_kv_decref(m, b[0]);
    assert_int_equal(anvil_kv_n_cached(m), 3);
    assert_int_equal(anvil_kv_available(m), 4);
    /* a hit takes block 0 back out of the LRU */
    assert_int_equal(anvil_kv_lookup(m, h[0], ANVIL_KV_ROOT_HASH, toks[0]), b[0]);
    anvil_kv_incref(m, b[0]);
    assert_int_equal(anvil_kv_n_cached(m), 2);
    KIT_OK(anvil_kv_check(m));
    /* two fresh blocks: the free one, then the least recently released (b[2]) */
    int32_t x[2];
    KIT_OK(anvil_kv_alloc(m, 2, x));
    assert_int_equal(x[0], dup);
    assert_int_equal(x[1], b[2]);
    assert_int_equal(anvil_kv_lookup(m, h[2], h[1], toks[2]), -1); /* evicted, forgotten */
    assert_int_equal(anvil_kv_lookup(m, h[1], h[0], toks[1]), b[1]);
    assert_int_equal(anvil_kv_evictions(m), 1);
    KIT_OK(anvil_kv_check(m));
    anvil_kv_decref(m, x[0]);
    anvil_kv_decref(m, x[1]);
    anvil_kv_decref(m, b[0]);
    KIT_OK(anvil_kv_check(m));
    anvil_kv_manager_free(m);
    anvil_runtime_free(rt);
}

static void test_cache_off(void **state)
{
    (void)state;
    anvil_runtime *rt = load_small(2);
    anvil_kv_manager *m;
    KIT_OK(anvil_kv_manager_create(rt, 0, &m));
    const int32_t t[4] = {1, 2, 3, 4};
    int32_t b;
    KIT_OK(anvil_kv_alloc(m, 1, &b));
    uint64_t h = anvil_kv_hash(ANVIL_KV_ROOT_HASH, t, 4);
    anvil_kv_register(m, b, h, ANVIL_KV_ROOT_HASH, t);
    assert_false(anvil_kv_is_registered(m, b));
    assert_int_equal(anvil_kv_lookup(m, h, ANVIL_KV_ROOT_HASH, t), -1);
    anvil_kv_decref(m, b);
    assert_int_equal(anvil_kv_n_free(m), 2);
    anvil_kv_manager_free(m);
    anvil_runtime_free(rt);
}

static void test_copy(void **state)
{
    (void)state;
    anvil_runtime *rt = load_small(4);
    anvil_kv_manager *m;
    KIT_OK(anvil_kv_manager_create(rt, 1, &m));
    int32_t b[2];
    KIT_OK(anvil_kv_alloc(m, 2, b));
    KIT_OK(anvil_kv_copy(m, b[0], b[1], 3));
    int32_t same = b[0];
    assert_status_msg(anvil_runtime_kv_copy(rt, 1, &same, &same, 2), ANVIL_ERR_INVALID_ARG, "bad block pair");
    int32_t bad = 99;
    assert_status_msg(anvil_runtime_kv_copy(rt, 1, &b[0], &bad, 2), ANVIL_ERR_INVALID_ARG, "bad block pair");
    assert_status_msg(anvil_runtime_kv_copy(rt, 1, &b[0], &b[1], 5), ANVIL_ERR_INVALID_ARG, "block size");
    anvil_kv_decref(m, b[0]);
    anvil_kv_decref(m, b[1]);
    anvil_kv_manager_free(m);
    anvil_runtime_free(rt);
}

/* Random operations keep the invariants (lists, counts, table). */
static void test_random_operations(void **state)
{
    (void)state;
    anvil_runtime *rt = load_small(64);
    anvil_kv_manager *m;
    KIT_OK(anvil_kv_manager_create(rt, 1, &m));
    int32_t held[256];
    int n_held = 0;
    uint64_t rng = 5;
    for (int it = 0; it < 5000; it++) {
        uint64_t op = anvil_test_rand(&rng) % 5;
        if (op == 0 && n_held < 256) {
            int32_t b;
            if (anvil_kv_alloc(m, 1, &b) == ANVIL_OK)
                held[n_held++] = b;
        } else if (op == 1 && n_held > 0) {
            int i = (int)(anvil_test_rand(&rng) % (uint64_t)n_held);
            anvil_kv_decref(m, held[i]);
            held[i] = held[--n_held];
        } else if (op == 2 && n_held > 0 && n_held < 256) {
            int i = (int)(anvil_test_rand(&rng) % (uint64_t)n_held);
            anvil_kv_incref(m, held[i]);
            held[n_held++] = held[i];
        } else if (op == 3 && n_held > 0) {
            int i = (int)(anvil_test_rand(&rng) % (uint64_t)n_held);
            int32_t t[4];
            for (int k = 0; k < 4; k++)
                t[k] = (int32_t)(anvil_test_rand(&rng) % 8); /* few values: repeats happen */
            anvil_kv_register(m, held[i], anvil_kv_hash(ANVIL_KV_ROOT_HASH, t, 4), ANVIL_KV_ROOT_HASH, t);
        } else if (op == 4 && n_held < 256) {
            int32_t t[4];
            for (int k = 0; k < 4; k++)
                t[k] = (int32_t)(anvil_test_rand(&rng) % 8);
            int32_t b = anvil_kv_lookup(m, anvil_kv_hash(ANVIL_KV_ROOT_HASH, t, 4), ANVIL_KV_ROOT_HASH, t);
            if (b >= 0) {
                anvil_kv_incref(m, b);
                held[n_held++] = b;
            }
        }
        if (it % 97 == 0)
            KIT_OK(anvil_kv_check(m));
    }
    KIT_OK(anvil_kv_check(m));
    while (n_held > 0)
        anvil_kv_decref(m, held[--n_held]);
    KIT_OK(anvil_kv_check(m));
    assert_int_equal(anvil_kv_n_used(m), 0);
    anvil_kv_manager_free(m);
    anvil_runtime_free(rt);
}

/* A refit forgets every prefix: cached blocks become free, used ones stay
 * with their holders but are neither found nor cached any more. */
static void test_forget_all(void **state)
{
    (void)state;
    anvil_runtime *rt = load_small(6);
    anvil_kv_manager *m;
    KIT_OK(anvil_kv_manager_create(rt, 1, &m));
    const int32_t toks[3][4] = {{1, 2, 3, 4}, {5, 6, 7, 8}, {9, 10, 11, 12}};
    uint64_t h[3], parent = ANVIL_KV_ROOT_HASH;
    int32_t b[3];
    KIT_OK(anvil_kv_alloc(m, 3, b));
    for (int i = 0; i < 3; i++) {
        h[i] = anvil_kv_hash(parent, toks[i], 4);
        anvil_kv_register(m, b[i], h[i], parent, toks[i]);
        parent = h[i];
    }
    anvil_kv_decref(m, b[2]);
    anvil_kv_decref(m, b[1]); /* cached: 2, 1; block 0 still used */
    assert_int_equal(anvil_kv_n_cached(m), 2);
    assert_int_equal(anvil_kv_forget_all(m), 2);
    KIT_OK(anvil_kv_check(m));
    assert_int_equal(anvil_kv_n_cached(m), 0);
    assert_int_equal(anvil_kv_n_free(m), 5);
    assert_int_equal(anvil_kv_n_used(m), 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(anvil_kv_lookup(m, h[i], i ? h[i - 1] : ANVIL_KV_ROOT_HASH, toks[i]), -1);
    assert_false(anvil_kv_is_registered(m, b[0]));
    anvil_kv_decref(m, b[0]); /* unregistered: free, not cached */
    assert_int_equal(anvil_kv_n_free(m), 6);
    assert_int_equal(anvil_kv_forget_all(m), 0);
    KIT_OK(anvil_kv_check(m));
    anvil_kv_manager_free(m);
    anvil_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_refcount),
        cmocka_unit_test(test_prefix_registration_and_lru),
        cmocka_unit_test(test_cache_off),
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_forget_all),
        cmocka_unit_test(test_random_operations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
