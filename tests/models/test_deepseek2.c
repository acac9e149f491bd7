/*
 * DeepSeek-V2 (src/models/deepseek2.c, the mla op, moe.c's DeepSeek router)
 * beyond the golden logits (test_golden_models checks tiny-deepseek-v2-lite
 * and tiny-deepseek-v2 against transformers):
 *  - the config keys (io/model_config.c, parse_deepseek2): the published
 *    DeepSeek-V2-Lite and DeepSeek-V2 configs (remote-code style: rope_scaling
 *    with "type": "yarn", q_lora_rank null) and the tiny models'
 *    (transformers 5 style: rope_parameters); YaRN's attention factor;
 *    what anvil lacks refused with the key's name;
 *  - the network: one mla op a layer with the latent cache's geometry, the
 *    slices of kv_a_proj_with_mqa, dense layers before first_k_dense_replace,
 *    the moe ops' router parameters;
 *  - the KV pool's bytes per token: the latent and the rope key alone;
 *  - the fusion plan around the new ops: fused = separate, bit for bit;
 *  - an engine built from each tiny model gives the folder's logits bit for bit;
 *  - the executor: every golden prompt at once, prompts cut into chunks of
 *    16 rows (the expanded form for chunks, the absorbed one for decode
 *    rows, over a pool the runtime sized from the latent rows), greedy
 *    tokens equal to transformers'.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/executor.h"
#include "anvil/model_config.h"
#include "anvil/network.h"
#include "anvil/runtime.h"
#include "engine_check.h"
#include "fusion_check.h"
#include "golden.h"
#include "runtime/rope_table.h"
#include "runtime/runtime_plan.h"
#include "testutil.h"

/* deepseek-ai/DeepSeek-V2-Lite's config.json (the keys anvil reads and a
 * few it ignores), with `extra` keys appended (keys not already in it: the
 * parser refuses duplicates). */
static const char *lite_json(const char *extra)
{
    static char buf[4096];
    snprintf(buf, sizeof buf,
             "{\"architectures\": [\"DeepseekV2ForCausalLM\"], \"model_type\": \"deepseek_v2\","
             " \"vocab_size\": 102400, \"hidden_size\": 2048, \"intermediate_size\": 10944,"
             " \"moe_intermediate_size\": 1408, \"num_hidden_layers\": 27, \"num_attention_heads\": 16,"
             " \"num_key_value_heads\": 16, \"n_shared_experts\": 2, \"n_routed_experts\": 64,"
             " \"ep_size\": 1, \"routed_scaling_factor\": 1.0, \"kv_lora_rank\": 512, \"q_lora_rank\": null,"
             " \"qk_rope_head_dim\": 64, \"v_head_dim\": 128, \"qk_nope_head_dim\": 128,"
             " \"n_group\": 1, \"topk_group\": 1, \"num_experts_per_tok\": 6,"
             " \"first_k_dense_replace\": 1, \"norm_topk_prob\": false, \"scoring_func\": \"softmax\","
             " \"aux_loss_alpha\": 0.001, \"seq_aux\": true, \"hidden_act\": \"silu\","
             " \"max_position_embeddings\": 163840, \"initializer_range\": 0.02, \"rms_norm_eps\": 1e-06,"
             " \"use_cache\": true, \"bos_token_id\": 100000, \"eos_token_id\": 100001,"
             " \"pretraining_tp\": 1, \"tie_word_embeddings\": false, \"rope_theta\": 10000,"
             " \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": 40, \"mscale\": 0.707,"
             " \"mscale_all_dim\": 0.707, \"original_max_position_embeddings\": 4096, \"type\": \"yarn\"},"
             " \"attention_bias\": false, \"attention_dropout\": 0.0, \"torch_dtype\": \"bfloat16\"%s%s}",
             extra[0] ? ", " : "", extra);
    return buf;
}

/* The Lite config with one key's value replaced (key must be in it). */
static const char *lite_with(const char *key, const char *value)
{
    static char buf[4096];
    const char *base = lite_json("");
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *at = strstr(base, pat);
    assert_non_null(at);
    const char *end = at + strlen(pat);
    int depth = 0; /* the old value: up to the comma or brace that ends it */
    while (*end && !(depth == 0 && (*end == ',' || *end == '}'))) {
        depth += *end == '{' ? 1 : *end == '}' ? -1 : 0;
        end++;
    }
    snprintf(buf, sizeof buf, "%.*s%s%s%s", (int)(at - base), base, pat, value, end);
    return buf;
}

static void parse_ok(const char *json, anvil_model_config *c)
{
    if (anvil_model_config_parse(json, c) != ANVIL_OK)
        fail_msg("parse: %s", anvil_last_error());
}

static void test_config_lite(void **s)
{
    (void)s;
    anvil_model_config c;
    parse_ok(lite_json(""), &c);
    assert_string_equal(c.architecture, "DeepseekV2ForCausalLM");
    assert_int_equal(c.q_lora_rank, 0);
    assert_int_equal(c.kv_lora_rank, 512);
    assert_int_equal(c.qk_nope_head_dim, 128);
    assert_int_equal(c.head_dim, 64); /* the rotated part, as transformers sets it */
    assert_int_equal(c.v_head_dim, 128);
    assert_int_equal(c.n_experts, 64);
    assert_int_equal(c.n_experts_per_tok, 6);
    assert_int_equal(c.moe_intermediate_size, 1408);
    assert_int_equal(c.shared_expert_intermediate_size, 2 * 1408);
    assert_int_equal(c.first_k_dense_replace, 1);
    assert_int_equal(c.moe_n_group, 1);
    assert_true(c.routed_scaling_factor == 1.0);
    assert_int_equal(c.norm_topk_prob, 0);
    assert_int_equal(c.rope.type, ANVIL_ROPE_YARN);
    assert_true(c.rope.factor == 40.0);
    assert_int_equal(c.rope.original_max_position, 4096);
    assert_true(c.rope.beta_fast == 32.0 && c.rope.beta_slow == 1.0);
    assert_int_equal(c.rope.truncate, 1);
    /* mscale == mscale_all_dim: cos and sin unscaled */
    assert_true(fabs(c.rope.attention_factor - 1.0) < 1e-12);
    /* the softmax scale's factor: (0.1 * 0.707 * ln 40 + 1)^2 */
    const double m = 0.1 * 0.707 * log(40.0) + 1.0;
    assert_true(fabs(anvil_yarn_mscale(40.0, 0.707) - m) < 1e-12);
    assert_true(anvil_yarn_mscale(1.0, 0.707) == 1.0);

    /* the network: 27 mla ops over a one-head cache of 512 + 64, 26 moe ops */
    anvil_network *net;
    if (anvil_model_build_network(&c, &net) != ANVIL_OK)
        fail_msg("network: %s", anvil_last_error());
    int n_mla = 0, n_moe = 0;
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        if (op->kind == ANVIL_OP_MLA) {
            assert_int_equal(op->attn.layer, n_mla);
            assert_int_equal(op->attn.n_kv_heads, 1);
            assert_int_equal(op->attn.head_dim, 512 + 64);
            assert_int_equal(op->width, 16 * 128);
            const float want = (float)(pow(192.0, -0.5) * m * m);
            assert_float_equal(op->mla.scale, want, 1e-7f);
            n_mla++;
        }
        if (op->kind == ANVIL_OP_MOE) {
            assert_int_equal(op->moe.shared_ungated, 1);
            assert_int_equal(op->moe.shared_inter, 2816);
            assert_int_equal(op->weights[5], -1); /* no shared gate */
            n_moe++;
        }
        assert_true(op->kind != ANVIL_OP_ATTENTION);
    }
    assert_int_equal(n_mla, 27);
    assert_int_equal(n_moe, 26);
    assert_int_equal(anvil_network_kv_layers(net), 27);
    anvil_network_free(net);

    /* the KV pool: 27 layers x (512 + 64) values a token, no values cache */
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.kv_cache_dtype = "f32";
    o.max_seq_len = 4096;
    o.kv_cache_tokens = 8192;
    o.max_num_tokens = 256;
    anvil_runtime_sizes sz;
    if (anvil_runtime_plan_sizes(&c, &o, ANVIL_DTYPE_F32, 0, &sz) != ANVIL_OK)
        fail_msg("plan sizes: %s", anvil_last_error());
    assert_int_equal(sz.n_kv_layers, 27);
    assert_int_equal(sz.kv_bytes_per_token, 27 * (512 + 64) * 4);
    assert_true(sz.kv_bytes >= (size_t)8192 * 27 * (512 + 64) * 4);
    assert_true(sz.kv_bytes < (size_t)8192 * 27 * (512 + 64) * 4 + 65536);
}

/* YaRN's inverse frequencies for V2-Lite (theta 1e4, 64 rotated dims,
 * factor 40 over 4096): transformers 5.17's _compute_yarn_parameters gives
 * these float32 bits (printed from its tensor); the ramp spans several
 * pairs here, not the 4 pairs of the tiny models. rope_table.c gives the
 * same bits. */
static void test_yarn_table(void **s)
{
    (void)s;
    static const uint32_t hf[32] = {
        0x3f800000, 0x3f3ff911, 0x3f0ff59a, 0x3ed7e89b, 0x3ea1e89b, 0x3e72d423, 0x3e361887, 0x3e088d77,
        0x3dcccccd, 0x3d99940d, 0x3d6655c2, 0x3d1fc5ba, 0x3cdc321b, 0x3c968dc3, 0x3c4bf283, 0x3c088d77,
        0x3bb43959, 0x3b697066, 0x3b136a16, 0x3ab3a2cd, 0x3a4f3e37, 0x39d99312, 0x393a7753, 0x380bd471,
        0x37d1b717, 0x379d43a3, 0x376bdcf0, 0x3730df51, 0x3704a2b3, 0x36c6ecdd, 0x36952c42, 0x365fba4f,
    };
    anvil_model_config c;
    parse_ok(lite_json(""), &c);
    float inv[32];
    if (anvil_rope_inv_freq(&c.rope, 64, inv) != ANVIL_OK)
        fail_msg("yarn table: %s", anvil_last_error());
    for (int i = 0; i < 32; i++) {
        uint32_t got;
        memcpy(&got, &inv[i], 4);
        if (got != hf[i])
            fail_msg("yarn inv_freq[%d] = %a (%#x), transformers %#x", i, (double)inv[i], got, hf[i]);
    }
    float table[64];
    int n_tables = 0;
    int32_t long_after = -1;
    float scale = 0.0f;
    if (anvil_rope_tables(&c.rope, 64, table, &n_tables, &long_after, &scale) != ANVIL_OK)
        fail_msg("yarn tables: %s", anvil_last_error());
    assert_int_equal(n_tables, 1);
    assert_float_equal(scale, 1.0f, 0.0f); /* equal mscales */
}

/* deepseek-ai/DeepSeek-V2's differences from Lite */
static void test_config_v2(void **s)
{
    (void)s;
    anvil_model_config c;
    parse_ok(lite_json("\"topk_method\": \"group_limited_greedy\""), &c);
    assert_int_equal(c.moe_n_group, 1); /* n_group 1: one group, the same as greedy */
    const char *v2 = "{\"architectures\": [\"DeepseekV2ForCausalLM\"], \"model_type\": \"deepseek_v2\","
                     " \"vocab_size\": 102400, \"hidden_size\": 5120, \"intermediate_size\": 12288,"
                     " \"moe_intermediate_size\": 1536, \"num_hidden_layers\": 60, \"num_attention_heads\": 128,"
                     " \"num_key_value_heads\": 128, \"n_shared_experts\": 2, \"n_routed_experts\": 160,"
                     " \"routed_scaling_factor\": 16.0, \"kv_lora_rank\": 512, \"q_lora_rank\": 1536,"
                     " \"qk_rope_head_dim\": 64, \"v_head_dim\": 128, \"qk_nope_head_dim\": 128,"
                     " \"topk_method\": \"group_limited_greedy\", \"n_group\": 8, \"topk_group\": 3,"
                     " \"num_experts_per_tok\": 6, \"moe_layer_freq\": 1, \"first_k_dense_replace\": 1,"
                     " \"norm_topk_prob\": false, \"scoring_func\": \"softmax\", \"max_position_embeddings\": 163840,"
                     " \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000, \"rope_scaling\": {\"beta_fast\": 32,"
                     " \"beta_slow\": 1, \"factor\": 40, \"mscale\": 0.707, \"mscale_all_dim\": 0.707,"
                     " \"original_max_position_embeddings\": 4096, \"type\": \"yarn\"}, \"torch_dtype\": \"bfloat16\"}";
    parse_ok(v2, &c);
    assert_int_equal(c.q_lora_rank, 1536);
    assert_int_equal(c.moe_n_group, 8);
    assert_int_equal(c.moe_topk_group, 3);
    assert_true(c.routed_scaling_factor == 16.0);
    assert_int_equal(c.n_experts, 160);
    anvil_network *net;
    if (anvil_model_build_network(&c, &net) != ANVIL_OK)
        fail_msg("network: %s", anvil_last_error());
    int n_moe = 0;
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        if (op->kind == ANVIL_OP_MOE) {
            assert_int_equal(op->moe.n_group, 8);
            assert_int_equal(op->moe.topk_group, 3);
            assert_float_equal(op->moe.routed_scale, 16.0f, 0.0f);
            n_moe++;
        }
    }
    assert_int_equal(n_moe, 59);
    /* q through the rank-1536 bottleneck */
    assert_true(anvil_network_find_weight(net, "model.layers.7.self_attn.q_a_proj.weight") >= 0);
    assert_true(anvil_network_find_weight(net, "model.layers.7.self_attn.q_b_proj.weight") >= 0);
    assert_true(anvil_network_find_weight(net, "model.layers.7.self_attn.q_proj.weight") < 0);
    anvil_network_free(net);
}

/* The tiny models' configs (transformers 5's rope_parameters) and networks. */
static void test_tiny_models(void **s)
{
    (void)s;
    anvil_model_config c;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", anvil_test_model_dir("tiny-deepseek-v2"));
    if (anvil_model_config_load(dir, &c) != ANVIL_OK)
        fail_msg("tiny-deepseek-v2: %s", anvil_last_error());
    assert_int_equal(c.q_lora_rank, 48);
    assert_int_equal(c.kv_lora_rank, 32);
    assert_int_equal(c.head_dim, 8);
    assert_int_equal(c.moe_n_group, 4);
    assert_int_equal(c.moe_topk_group, 2);
    assert_true(c.routed_scaling_factor == 2.5);
    /* mscale 1, mscale_all_dim 0.8: (0.1 ln 4 + 1) / (0.08 ln 4 + 1) */
    const double af = (0.1 * log(4.0) + 1.0) / (0.08 * log(4.0) + 1.0);
    assert_true(fabs(c.rope.attention_factor - af) < 1e-12);
    anvil_network *net;
    if (anvil_model_build_network(&c, &net) != ANVIL_OK)
        fail_msg("network: %s", anvil_last_error());
    int n_moe = 0, n_mla = 0;
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        n_moe += op->kind == ANVIL_OP_MOE;
        if (op->kind != ANVIL_OP_MLA)
            continue;
        n_mla++;
        const anvil_net_weight *kvb = anvil_network_weight(net, op->weights[0]);
        assert_int_equal(kvb->shape[0], 4 * (16 + 24));
        assert_int_equal(kvb->shape[1], 32);
        /* c and k_pe: the two stretches of kv_a_proj_with_mqa */
        const anvil_net_op *lc = anvil_network_op(net, anvil_network_op(net, op->inputs[1])->inputs[0]);
        const anvil_net_op *lk = anvil_network_op(net, op->inputs[2]);
        assert_int_equal(lc->kind, ANVIL_OP_LINEAR);
        assert_int_equal(lk->kind, ANVIL_OP_LINEAR);
        const anvil_net_weight *wc = anvil_network_weight(net, lc->weights[0]);
        const anvil_net_weight *wk = anvil_network_weight(net, lk->weights[0]);
        assert_int_equal(wc->recipe, ANVIL_RECIPE_SLICE);
        assert_int_equal(wk->recipe, ANVIL_RECIPE_SLICE);
        assert_int_equal(wc->start, 0);
        assert_int_equal(wk->start, 32);
        assert_int_equal(wk->shape[0], 8);
        assert_string_equal(wc->sources[0], wk->sources[0]);
    }
    assert_int_equal(n_mla, 3);
    assert_int_equal(n_moe, 2); /* layer 0 dense */
    anvil_network_free(net);

    snprintf(dir, sizeof dir, "%s", anvil_test_model_dir("tiny-deepseek-v2-lite"));
    if (anvil_model_config_load(dir, &c) != ANVIL_OK)
        fail_msg("tiny-deepseek-v2-lite: %s", anvil_last_error());
    assert_int_equal(c.q_lora_rank, 0);
    assert_int_equal(c.moe_n_group, 1);
    assert_true(fabs(c.rope.attention_factor - 1.0) < 1e-12);
}

static void test_refusals(void **s)
{
    (void)s;
    anvil_model_config c;
    assert_status_msg(anvil_model_config_parse(lite_json("\"topk_method\": \"noaux_tc\""), &c), ANVIL_ERR_UNSUPPORTED,
                      "topk_method \"noaux_tc\" is not supported");
    assert_status_msg(anvil_model_config_parse(lite_with("scoring_func", "\"sigmoid\""), &c), ANVIL_ERR_UNSUPPORTED,
                      "scoring_func \"sigmoid\" is not supported");
    assert_status_msg(anvil_model_config_parse(lite_with("rope_scaling", "{\"type\": \"dynamic\", \"factor\": 2}"), &c),
                      ANVIL_ERR_UNSUPPORTED, "RoPE type \"dynamic\" is not supported");
    assert_status_msg(anvil_model_config_parse(lite_with("norm_topk_prob", "true"), &c), ANVIL_ERR_UNSUPPORTED,
                      "norm_topk_prob true is not supported");
    assert_status_msg(anvil_model_config_parse(lite_with("attention_bias", "true"), &c), ANVIL_ERR_UNSUPPORTED,
                      "attention_bias true is not supported");
    assert_status_msg(anvil_model_config_parse(lite_with("hidden_act", "\"gelu\""), &c), ANVIL_ERR_UNSUPPORTED,
                      "hidden_act \"gelu\"");
    assert_status_msg(anvil_model_config_parse(lite_json("\"moe_layer_freq\": 2"), &c), ANVIL_ERR_UNSUPPORTED,
                      "moe_layer_freq 2 is not supported");
    assert_status_msg(anvil_model_config_parse(lite_with("n_routed_experts", "null"), &c), ANVIL_ERR_UNSUPPORTED,
                      "n_routed_experts");
    /* group-limited routing: 64 experts in 6 groups; a keep of 0 */
    const char *g6 = "\"topk_method\": \"group_limited_greedy\"";
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", lite_with("n_group", "6"));
    buf[strlen(buf) - 1] = '\0';
    snprintf(buf + strlen(buf), sizeof buf - strlen(buf), ", %s}", g6);
    assert_status_msg(anvil_model_config_parse(buf, &c), ANVIL_ERR_FORMAT, "n_group 6 does not divide");
    snprintf(buf, sizeof buf, "%s", lite_with("topk_group", "0"));
    buf[strlen(buf) - 1] = '\0';
    snprintf(buf + strlen(buf), sizeof buf - strlen(buf), ", %s}", g6);
    assert_status_msg(anvil_model_config_parse(buf, &c), ANVIL_ERR_FORMAT, "topk_group");
    /* YaRN stays deepseek_v2's: a Llama config with it is refused as before */
    assert_status_msg(anvil_model_config_parse("{\"model_type\": \"llama\", \"vocab_size\": 16, \"hidden_size\": 8,"
                                               " \"intermediate_size\": 8, \"num_hidden_layers\": 1,"
                                               " \"num_attention_heads\": 2, \"max_position_embeddings\": 16,"
                                               " \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4}}",
                                               &c),
                      ANVIL_ERR_UNSUPPORTED, "RoPE type \"yarn\" is not supported for llama");
}

static void test_fused_equals_separate(void **s)
{
    (void)s;
    const char *models[] = {"tiny-deepseek-v2-lite", "tiny-deepseek-v2"};
    for (size_t i = 0; i < 2; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", anvil_test_model_dir(models[i]));
        anvil_runtime_options o;
        anvil_runtime_options_default(&o);
        o.n_threads = 2;
        fusion_diff d;
        if (fusion_compare(dir, &o, 4, &d) != ANVIL_OK)
            fail_msg("%s: %s", models[i], anvil_last_error());
        assert_true(d.rows > 0);
        if (d.max_abs != 0.0)
            print_error("%s: fused logits differ by up to %g\n", models[i], d.max_abs);
        assert_true(d.max_abs == 0.0);
        assert_int_equal(d.greedy_differ, 0);
    }
}

/* anvil build's engine (as stored, and bf16) gives the folder's logits bit for bit */
static void test_engine_equal(void **s)
{
    (void)s;
    const char *models[] = {"tiny-deepseek-v2-lite", "tiny-deepseek-v2"};
    for (size_t i = 0; i < 2; i++) {
        assert_true(engine_model_present(models[i]));
        engine_check_model(models[i], "cpu", ANVIL_DTYPE_COUNT);
        engine_check_model(models[i], "cpu", ANVIL_DTYPE_BF16);
    }
}

static void test_executor_greedy(void **s)
{
    (void)s;
    const char *models[] = {"tiny-deepseek-v2-lite", "tiny-deepseek-v2"};
    for (size_t m = 0; m < 2; m++) {
        golden g;
        golden_load(models[m], &g);
        anvil_runtime_options o;
        anvil_runtime_options_default(&o);
        o.n_threads = 2;
        o.max_num_tokens = 16; /* the 48-token prompt in chunks, decodes beside them */
        o.max_batch_size = 8;
        o.kv_block_size = 16;
        o.kv_cache_tokens = 16 * 32;
        o.kv_cache_dtype = "f32";
        anvil_runtime *rt = NULL;
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", anvil_test_model_dir(models[m]));
        if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK)
            fail_msg("%s: %s", models[m], anvil_last_error());
        anvil_executor_options eo;
        anvil_executor_options_default(&eo);
        anvil_executor *ex = NULL;
        if (anvil_executor_create(rt, NULL, &eo, &ex) != ANVIL_OK)
            fail_msg("executor: %s", anvil_last_error());
        uint64_t ids[GOLDEN_MAX_CASES];
        for (int i = 0; i < g.n_cases; i++) {
            anvil_request r;
            anvil_request_init(&r);
            r.prompt_ids = g.cases[i].ids;
            r.n_prompt_ids = g.cases[i].n_ids;
            r.sampling.temperature = 0;
            r.max_tokens = g.cases[i].n_greedy;
            r.retain_result = 1;
            if (anvil_executor_enqueue(ex, &r, &ids[i]) != ANVIL_OK)
                fail_msg("enqueue: %s", anvil_last_error());
        }
        for (int i = 0; i < g.n_cases; i++) {
            anvil_result *res = NULL;
            if (anvil_executor_wait(ex, ids[i], &res) != ANVIL_OK)
                fail_msg("wait: %s", anvil_last_error());
            assert_int_equal(res->status, ANVIL_OK);
            assert_int_equal(res->sequences[0].n_tokens, g.cases[i].n_greedy);
            for (int32_t j = 0; j < g.cases[i].n_greedy; j++)
                if (res->sequences[0].token_ids[j] != g.cases[i].greedy[j])
                    fail_msg("%s %s: executor token %d is %d, HF has %d", models[m], g.cases[i].name, j,
                             res->sequences[0].token_ids[j], g.cases[i].greedy[j]);
            anvil_result_free(res);
        }
        anvil_executor_free(ex);
        anvil_runtime_free(rt);
        golden_free(&g);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_lite),           cmocka_unit_test(test_yarn_table),
        cmocka_unit_test(test_config_v2),
        cmocka_unit_test(test_tiny_models),           cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_fused_equals_separate), cmocka_unit_test(test_engine_equal),
        cmocka_unit_test(test_executor_greedy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
