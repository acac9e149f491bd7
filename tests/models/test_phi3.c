/*
 * Phi-3 (src/models/phi3.c) beyond the golden logits (test_golden_models
 * checks tiny-phi3 against transformers):
 *  - the network slices qkv_proj and gate_up_proj by recipes, as
 *    transformers splits them;
 *  - the build plan stores each layer's q/k/v (gate/up) back to back as
 *    one tensor again, and its prepared bytes are the checkpoint tensor's,
 *    byte for byte (in the checkpoint's dtype and converted to f32);
 *  - the fused path equals the separate ops bit for bit, for tiny-phi3 and
 *    for a LongRoPE variant of it whose sequences start short, cross the
 *    threshold and run long;
 *  - LongRoPE end to end: with short factors 1 and long factors 2 (and
 *    attention_factor 1), a sequence up to original_max_position_embeddings
 *    gives tiny-phi3's logits and a longer one those of linear RoPE with
 *    factor 2, to the bit.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/model_config.h"
#include "anvil/network.h"
#include "anvil/runtime.h"
#include "backend/backend.h"
#include "builder/build_plan.h"
#include "anvil/dtype.h"
#include "fusion_check.h"
#include "io/safetensors.h"
#include "testutil.h"

/* A LongRoPE tiny-phi3 (head_dim 8: four factors a list): original context
 * 16, context 64 (4x); the fusion check's sequences (5, 11 and 17 tokens,
 * then 6 decode steps) are short, cross 16 and are long. */
static const char *const longrope_patch =
    "{\"max_position_embeddings\": 64, \"original_max_position_embeddings\": 16,"
    " \"rope_parameters\": {\"rope_type\": \"longrope\", \"rope_theta\": 10000.0,"
    " \"short_factor\": [1.0, 1.1, 1.3, 1.6], \"long_factor\": [1.5, 2.5, 6.0, 11.0]}}";

/* ... with the factors that make it plain RoPE below the threshold and
 * linear RoPE (factor 2) above it */
static const char *const longrope_unit_patch =
    "{\"max_position_embeddings\": 64, \"original_max_position_embeddings\": 16,"
    " \"rope_parameters\": {\"rope_type\": \"longrope\", \"rope_theta\": 10000.0, \"attention_factor\": 1.0,"
    " \"short_factor\": [1.0, 1.0, 1.0, 1.0], \"long_factor\": [2.0, 2.0, 2.0, 2.0]}}";
static const char *const linear2_patch =
    "{\"max_position_embeddings\": 64,"
    " \"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 2.0, \"rope_theta\": 10000.0}}";

static void load_config(const char *dir, anvil_model_config *c)
{
    if (anvil_model_config_load(dir, c) != ANVIL_OK)
        fail_msg("config of %s: %s", dir, anvil_last_error());
}

static void test_network_slices(void **s)
{
    (void)s;
    anvil_model_config c;
    load_config(anvil_test_shared_path("models/tiny-phi3"), &c);
    anvil_network *net = NULL;
    assert_int_equal(anvil_model_build_network(&c, &net), ANVIL_OK);
    /* hidden 64, 8 heads of 8, 8 KV heads: q, k, v 64 rows each; intermediate 160 */
    static const struct {
        const char *name, *source;
        int64_t start, rows;
    } want[] = {
        {"model.layers.2.self_attn.q_proj.weight", "model.layers.2.self_attn.qkv_proj.weight", 0, 64},
        {"model.layers.2.self_attn.k_proj.weight", "model.layers.2.self_attn.qkv_proj.weight", 64, 64},
        {"model.layers.2.self_attn.v_proj.weight", "model.layers.2.self_attn.qkv_proj.weight", 128, 64},
        {"model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.gate_up_proj.weight", 0, 160},
        {"model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.gate_up_proj.weight", 160, 160},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const int32_t wi = anvil_network_find_weight(net, want[i].name);
        assert_true(wi >= 0);
        const anvil_net_weight *w = anvil_network_weight(net, wi);
        assert_int_equal(w->recipe, ANVIL_RECIPE_SLICE);
        assert_int_equal(w->axis, 0);
        assert_int_equal(w->start, want[i].start);
        assert_int_equal(w->n_sources, 1);
        assert_string_equal(w->sources[0], want[i].source);
        assert_int_equal(w->n_dims, 2);
        assert_int_equal(w->shape[0], want[i].rows);
        assert_int_equal(w->shape[1], 64);
    }
    /* the fused tensors themselves are no weights of the network */
    assert_int_equal(anvil_network_find_weight(net, "model.layers.0.self_attn.qkv_proj.weight"), -1);
    assert_true(anvil_network_find_weight(net, "lm_head.weight") >= 0);
    anvil_network_free(net);

    /* a Phi-3 with what Phi-3 has not */
    c.attention_bias = 1;
    assert_status_msg(anvil_model_build_network(&c, &net), ANVIL_ERR_UNSUPPORTED, "not part of Phi-3");
    assert_null(net);
}

/* The stored tensor holding weight `name`, filled in chunks of 999 elements
 * (odd, so chunks cut rows and members), must be the bytes of checkpoint
 * tensor `source` in the plan's kind. */
static void check_stored(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                         const char *name, int32_t n_members, const char *source)
{
    const int32_t wi = anvil_network_find_weight(net, name);
    assert_true(wi >= 0);
    const anvil_stored *t = &p->stored[p->weight_stored[wi]];
    assert_int_equal(t->n, n_members);
    assert_int_equal(p->weight_offset[wi], 0);
    const anvil_st_tensor *st = anvil_checkpoint_find(ck, source);
    assert_non_null(st);
    const int64_t n = st->shape[0] * st->shape[1];
    assert_int_equal(t->shape[0], st->shape[0]);
    assert_int_equal(t->shape[1], st->shape[1]);
    const size_t es = anvil_dtype_size(t->kind);
    assert_int_equal(t->bytes, (size_t)n * es);
    /* the source in the plan's kind */
    void *raw = malloc(st->nbytes), *want = malloc((size_t)n * es), *got = malloc((size_t)n * es);
    float *f32 = malloc((size_t)n * sizeof(float));
    assert_true(raw && want && got && f32);
    assert_int_equal(anvil_st_read(st, 0, raw, st->nbytes), ANVIL_OK);
    anvil_convert_to_f32(st->dtype, raw, f32, n);
    anvil_convert_from_f32(t->kind, f32, want, n);
    anvil_build_scratch *sc = NULL;
    assert_int_equal(anvil_build_scratch_create(&sc), ANVIL_OK);
    const size_t chunk = 999 * es;
    for (size_t off = 0; off < t->bytes; off += chunk) {
        const size_t len = t->bytes - off < chunk ? t->bytes - off : chunk;
        assert_int_equal(anvil_build_fill(p, net, ck, p->weight_stored[wi], off, (char *)got + off, len, sc),
                         ANVIL_OK);
    }
    assert_memory_equal(got, want, t->bytes);
    anvil_build_scratch_free(sc);
    free(raw);
    free(want);
    free(got);
    free(f32);
}

static void test_plan_stores_checkpoint_rows(void **s)
{
    (void)s;
    const char *dir = anvil_test_shared_path("models/tiny-phi3");
    char dirbuf[1024];
    snprintf(dirbuf, sizeof dirbuf, "%s", dir);
    anvil_model_config c;
    load_config(dirbuf, &c);
    anvil_network *net = NULL;
    assert_int_equal(anvil_model_build_network(&c, &net), ANVIL_OK);
    anvil_checkpoint *ck = NULL;
    assert_int_equal(anvil_checkpoint_open_ex(dirbuf, ANVIL_ST_READ, &ck), ANVIL_OK);
    anvil_backend *be = NULL;
    assert_int_equal(anvil_backend_cpu_create(1, &be), ANVIL_OK);
    const anvil_dtype kinds[2] = {ANVIL_DTYPE_COUNT, ANVIL_DTYPE_F32}; /* as stored (bf16), converted */
    const anvil_fuse_caps caps = anvil_fuse_caps_of(be->ops);
    for (int k = 0; k < 2; k++) {
        anvil_plan_options o = {.weight_dtype = kinds[k], .caps = &caps};
        anvil_build_plan *p = NULL;
        assert_int_equal(anvil_build_plan_make(net, ck, &o, &p), ANVIL_OK);
        assert_int_equal(anvil_build_plan_check(p, net), ANVIL_OK);
        for (int l = 0; l < 3; l++) {
            char q[128], g[128], qkv[128], gu[128];
            snprintf(q, sizeof q, "model.layers.%d.self_attn.q_proj.weight", l);
            snprintf(qkv, sizeof qkv, "model.layers.%d.self_attn.qkv_proj.weight", l);
            snprintf(g, sizeof g, "model.layers.%d.mlp.gate_proj.weight", l);
            snprintf(gu, sizeof gu, "model.layers.%d.mlp.gate_up_proj.weight", l);
            check_stored(p, net, ck, q, 3, qkv);
            check_stored(p, net, ck, g, 2, gu);
        }
        anvil_build_plan_free(p);
    }
    /* without fusion every slice is a tensor of its own: check one */
    anvil_plan_options o = {.weight_dtype = ANVIL_DTYPE_COUNT, .caps = &caps, .no_fusion = 1};
    anvil_build_plan *p = NULL;
    assert_int_equal(anvil_build_plan_make(net, ck, &o, &p), ANVIL_OK);
    const int32_t vi = anvil_network_find_weight(net, "model.layers.1.self_attn.v_proj.weight");
    const anvil_stored *t = &p->stored[p->weight_stored[vi]];
    assert_int_equal(t->n, 1);
    const anvil_st_tensor *st = anvil_checkpoint_find(ck, "model.layers.1.self_attn.qkv_proj.weight");
    unsigned char *all = malloc(st->nbytes), *got = malloc(t->bytes);
    assert_true(all && got);
    assert_int_equal(anvil_st_read(st, 0, all, st->nbytes), ANVIL_OK);
    anvil_build_scratch *sc = NULL;
    assert_int_equal(anvil_build_scratch_create(&sc), ANVIL_OK);
    assert_int_equal(anvil_build_fill(p, net, ck, p->weight_stored[vi], 0, got, t->bytes, sc), ANVIL_OK);
    assert_memory_equal(got, all + 128 * 64 * 2, t->bytes); /* rows 128.. of qkv_proj, bf16 */
    anvil_build_scratch_free(sc);
    free(all);
    free(got);
    anvil_build_plan_free(p);
    anvil_backend_free(be);
    anvil_checkpoint_close(ck);
    anvil_network_free(net);
}

static void check_fusion(const char *name, const char *dir)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 2;
    fusion_diff d;
    anvil_status st = fusion_compare(dir, &o, 6, &d);
    if (st != ANVIL_OK)
        print_error("%s: %s\n", name, anvil_last_error());
    assert_int_equal(st, ANVIL_OK);
    assert_int_equal(d.rows, 3 * 7);
    if (d.max_abs != 0.0)
        print_error("%s: fused logits differ by up to %g\n", name, d.max_abs);
    assert_true(d.max_abs == 0.0);
    assert_int_equal(d.greedy_differ, 0);
}

static void test_fused_equals_separate(void **s)
{
    (void)s;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/tiny-phi3", anvil_test_shared_dir());
    check_fusion("tiny-phi3", dir);
    anvil_test_model_variant("tiny-phi3", "tiny-phi3-longrope", longrope_patch, dir, sizeof dir);
    anvil_model_config c;
    load_config(dir, &c);
    assert_int_equal(c.rope.type, ANVIL_ROPE_LONGROPE);
    assert_int_equal(c.rope.original_max_position, 16);
    check_fusion("tiny-phi3 longrope", dir);
}

/* The logits of every position of ids[0..n) as one prefill step (malloc'd). */
static float *prefill_logits(const char *dir, const int32_t *ids, int32_t n, int no_fusion)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 2;
    o.no_fusion = no_fusion;
    o.max_seq_len = 64;
    o.max_num_tokens = 64;
    o.max_logit_rows = 64;
    o.max_batch_size = 1;
    o.kv_block_size = 16;
    o.kv_cache_tokens = 64;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", dir, anvil_last_error());
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    int32_t pos[64], rows[64], blocks[4], starts[2] = {0, n};
    const int32_t nb = (n + 15) / 16;
    for (int32_t t = 0; t < n; t++)
        pos[t] = rows[t] = t;
    assert_int_equal(anvil_runtime_kv_alloc(rt, nb, blocks), ANVIL_OK);
    float *logits = malloc((size_t)n * (size_t)vocab * sizeof(float));
    assert_non_null(logits);
    anvil_batch b = {.n_tokens = n, .token_ids = ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = nb, .n_logits = n, .logit_rows = rows};
    if (anvil_runtime_forward(rt, &b, logits) != ANVIL_OK)
        fail_msg("forward %s: %s", dir, anvil_last_error());
    anvil_runtime_free(rt);
    return logits;
}

static void test_longrope_picks_by_length(void **s)
{
    (void)s;
    char base[1024], unit[1024], lin[1024];
    snprintf(base, sizeof base, "%s/models/tiny-phi3", anvil_test_shared_dir());
    anvil_test_model_variant("tiny-phi3", "tiny-phi3-longrope-unit", longrope_unit_patch, unit, sizeof unit);
    anvil_test_model_variant("tiny-phi3", "tiny-phi3-linear2", linear2_patch, lin, sizeof lin);
    int32_t ids[40];
    uint64_t rng = 5;
    ids[0] = 1;
    for (int i = 1; i < 40; i++)
        ids[i] = (int32_t)(anvil_test_rand(&rng) % 512);
    const size_t vocab = 512;
    for (int no_fusion = 0; no_fusion < 2; no_fusion++) {
        /* 16 tokens: at the threshold, the short factors (1: plain RoPE) */
        float *a = prefill_logits(unit, ids, 16, no_fusion), *b = prefill_logits(base, ids, 16, no_fusion);
        assert_memory_equal(a, b, 16 * vocab * sizeof(float));
        free(a);
        free(b);
        /* 17 and 40 tokens: the long factors (2: linear RoPE, factor 2) for every position */
        for (int32_t n = 17; n <= 40; n += 23) {
            a = prefill_logits(unit, ids, n, no_fusion);
            b = prefill_logits(lin, ids, n, no_fusion);
            float *c = prefill_logits(base, ids, n, no_fusion);
            assert_memory_equal(a, b, (size_t)n * vocab * sizeof(float));
            /* position 0 has no angle: the models differ from position 1 on */
            assert_memory_equal(a, c, vocab * sizeof(float));
            assert_memory_not_equal(a + vocab, c + vocab, vocab * sizeof(float));
            free(a);
            free(b);
            free(c);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_network_slices),
        cmocka_unit_test(test_plan_stores_checkpoint_rows),
        cmocka_unit_test(test_fused_equals_separate),
        cmocka_unit_test(test_longrope_picks_by_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
