/*
 * Mixture of experts (src/models/moe.c, the moe op) beyond the golden logits
 * (test_golden_models checks tiny-mixtral, tiny-qwen2-moe and tiny-qwen3-moe
 * against transformers):
 *  - the config keys (io/model_config.c): num_local_experts / num_experts,
 *    num_experts_per_tok, moe_intermediate_size, the shared expert,
 *    norm_topk_prob (Mixtral always; Qwen's default false), dense layers by
 *    decoder_sparse_step and mlp_only_layers, transformers' defaults where a
 *    key is absent; a router anvil lacks refused with the key's name;
 *  - the network: one moe op per sparse layer with its stacked weights'
 *    shapes, a dense MLP on the others, the recipes that stack the experts;
 *  - the fusion plan around the moe op: fused = separate, bit for bit;
 *  - an engine built from each model gives the folder's logits bit for bit.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/model_config.h"
#include "anvil/network.h"
#include "anvil/runtime.h"
#include "engine_check.h"
#include "fusion_check.h"
#include "testutil.h"

/* A small config.json of model_type `type` with `extra` keys (a JSON
 * fragment, "" for none). */
static const char *moe_json(const char *arch, const char *type, const char *extra)
{
    static char buf[2048];
    snprintf(buf, sizeof buf,
             "{\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"vocab_size\": 256,"
             " \"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 4,"
             " \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
             " \"max_position_embeddings\": 128%s%s}",
             arch, type, extra[0] ? ", " : "", extra);
    return buf;
}

static int dense(const anvil_model_config *c, int l) { return (int)((c->mlp_only_layers[l / 64] >> (l % 64)) & 1u); }

static void test_config_keys(void **s)
{
    (void)s;
    anvil_model_config c;
    if (anvil_model_config_load(anvil_test_shared_path("models/tiny-mixtral"), &c) != ANVIL_OK)
        fail_msg("tiny-mixtral: %s", anvil_last_error());
    assert_int_equal(c.n_experts, 4);
    assert_int_equal(c.n_experts_per_tok, 2);
    assert_int_equal(c.moe_intermediate_size, 160); /* Mixtral's experts are intermediate_size wide */
    assert_int_equal(c.norm_topk_prob, 1);
    assert_int_equal(c.shared_expert_intermediate_size, 0);

    char dir[1024];
    snprintf(dir, sizeof dir, "%s", anvil_test_model_dir("tiny-qwen2-moe"));
    if (anvil_model_config_load(dir, &c) != ANVIL_OK)
        fail_msg("tiny-qwen2-moe: %s", anvil_last_error());
    assert_int_equal(c.n_experts, 8);
    assert_int_equal(c.moe_intermediate_size, 32);
    assert_int_equal(c.shared_expert_intermediate_size, 48);
    assert_int_equal(c.norm_topk_prob, 0);
    assert_int_equal(c.attention_bias, 1);
    assert_true(!dense(&c, 0) && dense(&c, 1) && !dense(&c, 2));

    snprintf(dir, sizeof dir, "%s", anvil_test_model_dir("tiny-qwen3-moe"));
    if (anvil_model_config_load(dir, &c) != ANVIL_OK)
        fail_msg("tiny-qwen3-moe: %s", anvil_last_error());
    assert_int_equal(c.n_experts, 8); /* transformers 5 writes num_local_experts for Qwen3-MoE */
    assert_int_equal(c.norm_topk_prob, 1);
    assert_int_equal(c.qk_norm, 1);
    assert_int_equal(c.shared_expert_intermediate_size, 0);

    /* absent keys: the config classes' defaults */
    assert_int_equal(anvil_model_config_parse(moe_json("MixtralForCausalLM", "mixtral", ""), &c), ANVIL_OK);
    assert_true(c.n_experts == 8 && c.n_experts_per_tok == 2 && c.moe_intermediate_size == 128);
    assert_int_equal(anvil_model_config_parse(moe_json("Qwen2MoeForCausalLM", "qwen2_moe", ""), &c), ANVIL_OK);
    assert_true(c.n_experts == 60 && c.n_experts_per_tok == 4 && c.moe_intermediate_size == 1408 &&
                c.shared_expert_intermediate_size == 5632 && c.norm_topk_prob == 0 && c.decoder_sparse_step == 1);
    assert_int_equal(anvil_model_config_parse(moe_json("Qwen3MoeForCausalLM", "qwen3_moe", "\"num_experts\": 16"), &c),
                     ANVIL_OK);
    assert_true(c.n_experts == 16 && c.n_experts_per_tok == 8 && c.moe_intermediate_size == 768);

    /* what anvil lacks or cannot read: refused, naming the key */
    const char *q3 = "Qwen3MoeForCausalLM";
    assert_status_msg(anvil_model_config_parse(moe_json(q3, "qwen3_moe", "\"scoring_func\": \"sigmoid\""), &c),
                      ANVIL_ERR_UNSUPPORTED, "scoring_func \"sigmoid\"");
    assert_status_msg(
        anvil_model_config_parse(moe_json(q3, "qwen3_moe", "\"topk_method\": \"group_limited_greedy\""), &c),
        ANVIL_ERR_UNSUPPORTED, "topk_method");
    assert_status_msg(anvil_model_config_parse(moe_json(q3, "qwen3_moe", "\"n_group\": 8"), &c),
                      ANVIL_ERR_UNSUPPORTED, "n_group");
    assert_status_msg(anvil_model_config_parse(moe_json(q3, "qwen3_moe", "\"routed_scaling_factor\": 2.5"), &c),
                      ANVIL_ERR_UNSUPPORTED, "routed_scaling_factor");
    assert_status_msg(anvil_model_config_parse(
                          moe_json(q3, "qwen3_moe", "\"num_experts\": 4, \"num_experts_per_tok\": 5"), &c),
                      ANVIL_ERR_UNSUPPORTED, "num_experts_per_tok");
    assert_status_msg(anvil_model_config_parse(moe_json(q3, "qwen3_moe", "\"num_experts\": 0"), &c), ANVIL_ERR_FORMAT,
                      "num_experts");
    assert_status_msg(anvil_model_config_parse(moe_json(q3, "qwen3_moe", "\"mlp_only_layers\": [7]"), &c),
                      ANVIL_ERR_FORMAT, "mlp_only_layers[0]");
    assert_status_msg(anvil_model_config_parse(moe_json(q3, "qwen3_moe", "\"use_sliding_window\": true"), &c),
                      ANVIL_ERR_UNSUPPORTED, "use_sliding_window");
    assert_status_msg(anvil_model_config_parse(moe_json("MixtralForCausalLM", "mixtral", "\"num_local_experts\": 5000"),
                                               &c),
                      ANVIL_ERR_UNSUPPORTED, "num_local_experts");
}

static void test_network(void **s)
{
    (void)s;
    anvil_model_config c;
    /* 4 layers, every other one dense (decoder_sparse_step 2: layers 1 and 3 sparse), layer 3 dense by name */
    const char *j = moe_json("Qwen2MoeForCausalLM", "qwen2_moe",
                             "\"num_experts\": 6, \"num_experts_per_tok\": 3, \"moe_intermediate_size\": 24,"
                             " \"shared_expert_intermediate_size\": 40, \"decoder_sparse_step\": 2,"
                             " \"mlp_only_layers\": [3], \"norm_topk_prob\": true");
    assert_int_equal(anvil_model_config_parse(j, &c), ANVIL_OK);
    anvil_network *net = NULL;
    if (anvil_model_build_network(&c, &net) != ANVIL_OK)
        fail_msg("network: %s", anvil_last_error());
    int n_moe = 0, n_silu = 0;
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        n_silu += op->kind == ANVIL_OP_SILU_MUL;
        if (op->kind != ANVIL_OP_MOE)
            continue;
        n_moe++;
        assert_true(op->moe.n_experts == 6 && op->moe.top_k == 3 && op->moe.inter == 24 &&
                    op->moe.shared_inter == 40 && op->moe.norm_topk_prob == 1);
        const anvil_net_weight *gu = anvil_network_weight(net, op->weights[1]);
        const anvil_net_weight *dn = anvil_network_weight(net, op->weights[2]);
        assert_true(gu->shape[0] == 6 * 2 * 24 && gu->shape[1] == 64);
        assert_true(dn->shape[0] == 6 * 64 && dn->shape[1] == 24);
        /* the stacks: gate_0, up_0, gate_1, ... and down_0, down_1, ... of layer 1 */
        assert_int_equal(gu->recipe, ANVIL_RECIPE_CONCAT);
        assert_int_equal(gu->n_sources, 12);
        assert_string_equal(gu->sources[0], "model.layers.1.mlp.experts.0.gate_proj.weight");
        assert_string_equal(gu->sources[1], "model.layers.1.mlp.experts.0.up_proj.weight");
        assert_string_equal(gu->sources[11], "model.layers.1.mlp.experts.5.up_proj.weight");
        assert_int_equal(dn->n_sources, 6);
        assert_string_equal(dn->sources[5], "model.layers.1.mlp.experts.5.down_proj.weight");
        const anvil_net_weight *sgu = anvil_network_weight(net, op->weights[3]);
        assert_true(sgu->shape[0] == 80 && sgu->n_sources == 2);
        assert_string_equal(anvil_network_weight(net, op->weights[5])->name,
                            "model.layers.1.mlp.shared_expert_gate.weight");
    }
    assert_int_equal(n_moe, 1);  /* layer 1 (layer 3 is in mlp_only_layers) */
    assert_int_equal(n_silu, 3); /* layers 0, 2, 3: dense MLPs */
    anvil_network_free(net);

    /* Mixtral's names */
    assert_int_equal(anvil_model_config_parse(moe_json("MixtralForCausalLM", "mixtral", "\"num_local_experts\": 4"), &c),
                     ANVIL_OK);
    assert_int_equal(anvil_model_build_network(&c, &net), ANVIL_OK);
    n_moe = 0;
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        if (op->kind != ANVIL_OP_MOE)
            continue;
        n_moe++;
        assert_true(op->weights[3] < 0 && op->weights[4] < 0 && op->weights[5] < 0); /* no shared expert */
        const anvil_net_weight *gu = anvil_network_weight(net, op->weights[1]);
        if (n_moe == 1) {
            assert_string_equal(anvil_network_weight(net, op->weights[0])->name,
                                "model.layers.0.block_sparse_moe.gate.weight");
            assert_string_equal(gu->sources[0], "model.layers.0.block_sparse_moe.experts.0.w1.weight");
            assert_string_equal(gu->sources[1], "model.layers.0.block_sparse_moe.experts.0.w3.weight");
            assert_string_equal(anvil_network_weight(net, op->weights[2])->sources[3],
                                "model.layers.0.block_sparse_moe.experts.3.w2.weight");
        }
    }
    assert_int_equal(n_moe, 4);
    anvil_network_free(net);
}

static void test_fused_equals_separate(void **s)
{
    (void)s;
    const char *models[] = {"tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe"};
    for (size_t i = 0; i < 3; i++) {
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
    const char *models[] = {"tiny-mixtral", "tiny-qwen2-moe", "tiny-qwen3-moe"};
    for (size_t i = 0; i < 3; i++) {
        assert_true(engine_model_present(models[i]));
        engine_check_model(models[i], "cpu", ANVIL_DTYPE_COUNT);
        engine_check_model(models[i], "cpu", ANVIL_DTYPE_BF16);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_keys),
        cmocka_unit_test(test_network),
        cmocka_unit_test(test_fused_equals_separate),
        cmocka_unit_test(test_engine_equal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
