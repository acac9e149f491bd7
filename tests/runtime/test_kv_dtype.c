/*
 * The KV cache's dtype (anvil_runtime_options.kv_cache_dtype): what "auto"
 * resolves to, the refusals, the pool sized in bytes (a half cache holds
 * twice the blocks in the same memory), and a bf16 model's logits with an
 * f16 and a bf16 cache against Hugging Face's (float32) within the
 * tolerance of the cache's rounding.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/runtime.h"
#include "golden.h"
#include "runtime/runtime_plan.h"
#include "testutil.h"

static anvil_runtime *load(const char *model, const char *kv, double fraction)
{
    char rel[128];
    snprintf(rel, sizeof rel, "models/%s", model);
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.max_num_tokens = 256;
    o.max_batch_size = 8;
    o.max_logit_rows = 256;
    o.max_seq_len = 512;
    o.kv_block_size = 16;
    o.kv_cache_dtype = kv;
    o.kv_cache_fraction = fraction;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(anvil_test_shared_path(rel), &o, &rt) != ANVIL_OK)
        fail_msg("load %s (kv %s): %s", model, kv ? kv : "NULL", anvil_last_error());
    return rt;
}

static void test_auto_and_explicit(void **state)
{
    (void)state;
    static const struct {
        const char *model, *kv;
        anvil_dtype want;
    } cases[] = {
        {"stories260K", NULL, ANVIL_DTYPE_F32},   /* an f32 model: f32 */
        {"stories260K", "auto", ANVIL_DTYPE_F32},
        {"tinycode", NULL, ANVIL_DTYPE_F16},      /* a bf16 model on the CPU: f16, as llama.cpp */
        {"tiny-qwen2", "auto", ANVIL_DTYPE_F16},  /* an f16 model */
        {"tinycode", "f32", ANVIL_DTYPE_F32},
        {"tinycode", "bf16", ANVIL_DTYPE_BF16},
        {"stories260K", "f16", ANVIL_DTYPE_F16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        anvil_runtime *rt = load(cases[i].model, cases[i].kv, 0.0);
        if (anvil_runtime_kv_cache_dtype(rt) != cases[i].want)
            fail_msg("%s kv %s: %s, want %s", cases[i].model, cases[i].kv ? cases[i].kv : "NULL",
                     anvil_dtype_name(anvil_runtime_kv_cache_dtype(rt)), anvil_dtype_name(cases[i].want));
        assert_int_equal(anvil_runtime_compute_dtype(rt), ANVIL_DTYPE_F32); /* the CPU computes in f32 */
        anvil_runtime_free(rt);
    }
}

static void test_refusals(void **state)
{
    (void)state;
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.kv_cache_dtype = "fp8";
    anvil_runtime *rt = NULL;
    assert_status_msg(anvil_runtime_load(anvil_test_shared_path("models/stories260K"), &o, &rt),
                      ANVIL_ERR_INVALID_ARG, "kv_cache_dtype \"fp8\": expected auto, f32, bf16 or f16");
    assert_null(rt);
    o.kv_cache_dtype = "i32";
    assert_status_msg(anvil_runtime_load(anvil_test_shared_path("models/stories260K"), &o, &rt),
                      ANVIL_ERR_INVALID_ARG, "kv_cache_dtype");
    /* cuda keeps its cache in its compute dtype: planned without a GPU */
    anvil_model_config c;
    assert_int_equal(anvil_model_config_load(anvil_test_shared_path("models/tinycode"), &c), ANVIL_OK);
    anvil_runtime_sizes z;
    anvil_runtime_options_default(&o);
    o.device = "cuda";
    o.max_seq_len = 512;
    o.kv_cache_dtype = "f16";
    assert_status_msg(anvil_runtime_plan_sizes(&c, &o, ANVIL_DTYPE_BF16, 0, &z), ANVIL_ERR_UNSUPPORTED,
                      "the cuda backend keeps its KV cache in its compute dtype (bf16)");
    o.kv_cache_dtype = "bf16";
    assert_int_equal(anvil_runtime_plan_sizes(&c, &o, ANVIL_DTYPE_BF16, 0, &z), ANVIL_OK);
    assert_int_equal(z.kv_dtype, ANVIL_DTYPE_BF16);
    o.kv_cache_dtype = NULL;
    assert_int_equal(anvil_runtime_plan_sizes(&c, &o, ANVIL_DTYPE_BF16, 0, &z), ANVIL_OK);
    assert_int_equal(z.kv_dtype, ANVIL_DTYPE_BF16);
}

/* The pool is sized in bytes: per token, f16 is half of f32, and a pool
 * taken as a fraction of free memory holds about twice the blocks. */
static void test_pool_in_bytes(void **state)
{
    (void)state;
    anvil_model_config c;
    assert_int_equal(anvil_model_config_load(anvil_test_shared_path("models/tinycode"), &c), ANVIL_OK);
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.max_seq_len = 512;
    anvil_runtime_sizes z32, z16;
    o.kv_cache_dtype = "f32";
    assert_int_equal(anvil_runtime_plan_sizes(&c, &o, ANVIL_DTYPE_F32, 0, &z32), ANVIL_OK);
    o.kv_cache_dtype = "f16";
    assert_int_equal(anvil_runtime_plan_sizes(&c, &o, ANVIL_DTYPE_F32, 0, &z16), ANVIL_OK);
    assert_int_equal(z32.kv_bytes_per_token, 2 * z16.kv_bytes_per_token);
    assert_int_equal(z32.kv_bytes_per_token,
                     (size_t)(c.n_layers * 2 * c.n_kv_heads * c.head_dim * 4));

    /* the same fraction of free memory: twice the blocks (the free memory
     * moves a little between the loads, hence the range) */
    anvil_runtime *a = load("tinycode", "f32", 0.002), *b = load("tinycode", "f16", 0.002);
    const double ratio = (double)anvil_runtime_kv_blocks_total(b) / (double)anvil_runtime_kv_blocks_total(a);
    if (!(ratio > 1.8 && ratio < 2.2))
        fail_msg("f16 pool %d blocks, f32 pool %d: ratio %.3f, want ~2", anvil_runtime_kv_blocks_total(b),
                 anvil_runtime_kv_blocks_total(a), ratio);
    anvil_runtime_free(a);
    anvil_runtime_free(b);
}

/* Every golden prompt of a bf16 model, one step each (the prefill reads its
 * own keys back from the cache), against HF's float32 logits; returns the
 * largest error relative to max |logit| over the prompts. */
static double golden_error(const char *model, const char *kv, const golden *g)
{
    anvil_runtime *rt = load(model, kv, 0.0);
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    const int32_t bs = anvil_runtime_kv_block_size(rt);
    double worst = 0.0;
    for (int i = 0; i < g->n_cases; i++) {
        const golden_case *gc = &g->cases[i];
        const int32_t n = gc->n_ids, nb = (n + bs - 1) / bs;
        int32_t *pos = malloc((size_t)n * 4), *blocks = malloc((size_t)nb * 4);
        float *logits = malloc((size_t)n * (size_t)vocab * 4);
        assert_true(pos && blocks && logits);
        for (int32_t t = 0; t < n; t++)
            pos[t] = t;
        assert_int_equal(anvil_runtime_kv_alloc(rt, nb, blocks), ANVIL_OK);
        int32_t starts[2] = {0, n};
        anvil_batch b = {.n_tokens = n, .token_ids = gc->ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                         .block_tables = blocks, .max_blocks_per_seq = nb, .n_logits = n, .logit_rows = pos};
        if (anvil_runtime_forward(rt, &b, logits) != ANVIL_OK)
            fail_msg("%s %s: %s", model, gc->name, anvil_last_error());
        double max_ref = 0.0, max_err = 0.0;
        for (int64_t j = 0; j < (int64_t)n * vocab; j++) {
            max_ref = fmax(max_ref, fabs((double)gc->logits[j]));
            max_err = fmax(max_err, fabs((double)logits[j] - (double)gc->logits[j]));
        }
        worst = fmax(worst, max_err / max_ref);
        anvil_runtime_kv_release(rt, nb, blocks);
        free(pos);
        free(blocks);
        free(logits);
    }
    anvil_runtime_free(rt);
    return worst;
}

static void test_golden_half_caches(void **state)
{
    (void)state;
    static const char *const models[] = {"tinycode", "tiny-llama3"};
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
        golden g;
        golden_load(models[m], &g);
        const double e32 = golden_error(models[m], "f32", &g);
        const double e16 = golden_error(models[m], "f16", &g);
        const double eb16 = golden_error(models[m], "bf16", &g);
        printf("%s: logits vs HF, max error / max |logit|: f32 cache %.2e, f16 %.2e, bf16 %.2e\n", models[m], e32,
               e16, eb16);
        assert_true(e32 <= 1e-4); /* the golden tests' tolerance */
        /* f16 keeps 11 bits, bf16 8: the cache's rounding is what moves the logits */
        assert_true(e16 > e32 && e16 <= 2e-3);
        assert_true(eb16 > e16 && eb16 <= 1.5e-2);
        golden_free(&g);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auto_and_explicit),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_pool_in_bytes),
        cmocka_unit_test(test_golden_half_caches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
