/*
 * Golden tests: anvil's CPU forward against Hugging Face transformers.
 * For every prompt of every Llama-family model (and Phi-3, Gemma 2) in ../shared/golden/models
 * and GPT-2, Qwen2-MoE, Qwen3-MoE and DeepSeek-V2 in tests/data/models (Mixtral is in ../shared):
 * the logits at every position within 1e-4 x max|logit| of HF's (float32),
 * the same logits when all prompts run packed in one batch, and the greedy
 * continuation identical token for token.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/generate.h"
#include "anvil/runtime.h"
#include "io/safetensors.h"
#include "golden.h"
#include "testutil.h"

#define REL_TOL 1e-4

static anvil_runtime *load_model(const char *model)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s", anvil_test_model_dir(model));
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.max_num_tokens = 1024;
    o.max_logit_rows = 1024;
    o.max_batch_size = 8;
    o.kv_block_size = 16; /* several blocks per prompt */
    o.kv_cache_tokens = 4096;
    /* HF computes in float32: so does this comparison, KV cache included
     * (the CPU's default for these bf16 models is an f16 cache, checked
     * against the same goldens at its own tolerance in test_kv_dtype) */
    o.kv_cache_dtype = "f32";
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", model, anvil_last_error());
    return rt;
}

/* Each prompt alone, one step, logits at every row. */
static void check_prompts_alone(const char *model, anvil_runtime *rt, const golden *g)
{
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    const int32_t bs = anvil_runtime_kv_block_size(rt);
    for (int i = 0; i < g->n_cases; i++) {
        const golden_case *gc = &g->cases[i];
        int32_t n = gc->n_ids, nb = (n + bs - 1) / bs;
        int32_t *pos = malloc((size_t)n * 4), *rows = malloc((size_t)n * 4), *blocks = malloc((size_t)nb * 4);
        float *logits = malloc((size_t)n * (size_t)vocab * 4);
        assert_true(pos && rows && blocks && logits);
        for (int32_t t = 0; t < n; t++)
            pos[t] = rows[t] = t;
        assert_int_equal(anvil_runtime_kv_alloc(rt, nb, blocks), ANVIL_OK);
        int32_t starts[2] = {0, n};
        anvil_batch b = {.n_tokens = n, .token_ids = gc->ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                         .block_tables = blocks, .max_blocks_per_seq = nb, .n_logits = n, .logit_rows = rows};
        if (anvil_runtime_forward(rt, &b, logits) != ANVIL_OK)
            fail_msg("%s %s: %s", model, gc->name, anvil_last_error());
        golden_check_logits(model, "alone", gc, 0, gc->n_ids, logits, vocab, REL_TOL);
        anvil_runtime_kv_release(rt, nb, blocks);
        free(pos);
        free(rows);
        free(blocks);
        free(logits);
    }
}

/* All prompts packed in one step (blocks handed out in reverse so tables are
 * scattered): every row must match its prompt's golden logits. */
static void check_prompts_packed(const char *model, anvil_runtime *rt, const golden *g)
{
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    const int32_t bs = anvil_runtime_kv_block_size(rt);
    int32_t total = 0, max_nb = 0;
    for (int i = 0; i < g->n_cases; i++) {
        total += g->cases[i].n_ids;
        int32_t nb = (g->cases[i].n_ids + bs - 1) / bs;
        max_nb = nb > max_nb ? nb : max_nb;
    }
    int32_t *ids = malloc((size_t)total * 4), *pos = malloc((size_t)total * 4), *rows = malloc((size_t)total * 4);
    int32_t *tables = calloc((size_t)g->n_cases * max_nb, 4), starts[GOLDEN_MAX_CASES + 1];
    float *logits = malloc((size_t)total * (size_t)vocab * 4);
    assert_true(ids && pos && rows && tables && logits);
    int32_t t = 0;
    for (int i = 0; i < g->n_cases; i++) {
        const golden_case *gc = &g->cases[i];
        starts[i] = t;
        int32_t nb = (gc->n_ids + bs - 1) / bs;
        int32_t tmp[64];
        assert_true(nb <= 64);
        assert_int_equal(anvil_runtime_kv_alloc(rt, nb, tmp), ANVIL_OK);
        for (int32_t j = 0; j < nb; j++)
            tables[i * max_nb + j] = tmp[nb - 1 - j];
        for (int32_t j = 0; j < gc->n_ids; j++, t++) {
            ids[t] = gc->ids[j];
            pos[t] = j;
            rows[t] = t;
        }
    }
    starts[g->n_cases] = t;
    anvil_batch b = {.n_tokens = total, .token_ids = ids, .positions = pos, .n_seqs = g->n_cases,
                     .seq_starts = starts, .block_tables = tables, .max_blocks_per_seq = max_nb,
                     .n_logits = total, .logit_rows = rows};
    if (anvil_runtime_forward(rt, &b, logits) != ANVIL_OK)
        fail_msg("%s packed: %s", model, anvil_last_error());
    for (int i = 0; i < g->n_cases; i++) {
        golden_check_logits(model, "packed", &g->cases[i], 0, g->cases[i].n_ids,
                            logits + (size_t)starts[i] * (size_t)vocab, vocab, REL_TOL);
        int32_t nb = (g->cases[i].n_ids + bs - 1) / bs;
        anvil_runtime_kv_release(rt, nb, tables + i * max_nb);
    }
    free(ids);
    free(pos);
    free(rows);
    free(tables);
    free(logits);
}

static void check_greedy(const char *model, anvil_runtime *rt, const golden *g)
{
    for (int i = 0; i < g->n_cases; i++) {
        const golden_case *gc = &g->cases[i];
        anvil_generate_params p = {.max_tokens = gc->n_greedy};
        p.sampling.temperature = 0.0f;
        p.sampling.top_p = 1.0f;
        int32_t *out = malloc((size_t)(gc->n_greedy + 1) * 4), n_out = 0;
        assert_non_null(out);
        if (anvil_generate(rt, gc->ids, gc->n_ids, &p, NULL, NULL, out, &n_out, NULL) != ANVIL_OK)
            fail_msg("%s %s generate: %s", model, gc->name, anvil_last_error());
        assert_int_equal(n_out, gc->n_greedy);
        for (int32_t j = 0; j < n_out; j++)
            if (out[j] != gc->greedy[j])
                fail_msg("%s %s: greedy token %d is %d, HF has %d", model, gc->name, j, out[j], gc->greedy[j]);
        free(out);
    }
    assert_int_equal(anvil_runtime_kv_blocks_free(rt), anvil_runtime_kv_blocks_total(rt));
}

static void run_model(const char *model)
{
    golden g;
    golden_load(model, &g);
    anvil_runtime *rt = load_model(model);
    check_prompts_alone(model, rt, &g);
    check_prompts_packed(model, rt, &g);
    check_greedy(model, rt, &g);
    anvil_runtime_free(rt);
    golden_free(&g);
}

static void test_stories260K(void **s) { (void)s; run_model("stories260K"); }
static void test_tinycode(void **s) { (void)s; run_model("tinycode"); }
static void test_tiny_llama3(void **s) { (void)s; run_model("tiny-llama3"); }
static void test_tiny_qwen2(void **s) { (void)s; run_model("tiny-qwen2"); }
static void test_tiny_mistral(void **s) { (void)s; run_model("tiny-mistral"); }
static void test_tiny_qwen3(void **s) { (void)s; run_model("tiny-qwen3"); }
static void test_tiny_phi3(void **s) { (void)s; run_model("tiny-phi3"); }
static void test_tiny_gemma2(void **s) { (void)s; run_model("tiny-gemma2"); }
/* tests/data/models/tiny-gpt2 (scripts/make_gpt2_model.py) */
static void test_tiny_gpt2(void **s) { (void)s; run_model("tiny-gpt2"); }
/* mixture of experts: ../shared's tiny-mixtral; tests/data/models/tiny-qwen2-moe and
 * tiny-qwen3-moe (scripts/make_moe_models.py) */
static void test_tiny_mixtral(void **s) { (void)s; run_model("tiny-mixtral"); }
static void test_tiny_qwen2_moe(void **s) { (void)s; run_model("tiny-qwen2-moe"); }
static void test_tiny_qwen3_moe(void **s) { (void)s; run_model("tiny-qwen3-moe"); }
/* multi-head latent attention: tests/data/models/tiny-deepseek-v2-lite (plain q_proj, greedy
 * routing) and tiny-deepseek-v2 (q_lora, group-limited routing, scaled weights), made by
 * scripts/make_deepseek_models.py; prompts run the expanded form, greedy steps the absorbed */
static void test_tiny_deepseek_v2_lite(void **s) { (void)s; run_model("tiny-deepseek-v2-lite"); }
static void test_tiny_deepseek_v2(void **s) { (void)s; run_model("tiny-deepseek-v2"); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories260K),  cmocka_unit_test(test_tinycode),
        cmocka_unit_test(test_tiny_llama3),  cmocka_unit_test(test_tiny_qwen2),
        cmocka_unit_test(test_tiny_mistral), cmocka_unit_test(test_tiny_qwen3),
        cmocka_unit_test(test_tiny_phi3),    cmocka_unit_test(test_tiny_gemma2),
        cmocka_unit_test(test_tiny_gpt2),
        cmocka_unit_test(test_tiny_mixtral), cmocka_unit_test(test_tiny_qwen2_moe),
        cmocka_unit_test(test_tiny_qwen3_moe),
        cmocka_unit_test(test_tiny_deepseek_v2_lite), cmocka_unit_test(test_tiny_deepseek_v2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
