/*
 * Gemma 2 (src/models/gemma2.c) beyond the golden logits (test_golden_models
 * checks tiny-gemma2 against transformers):
 *  - the config keys (io/model_config.c): layer_types or the even-layer
 *    default, the soft caps (null: none; absent: Gemma2Config's 50 and 30),
 *    query_pre_attn_scalar, hidden_activation; what anvil lacks is refused
 *    with the key's name;
 *  - the network: the embedding scaled by sqrt(hidden), four (1 + w) norms
 *    a layer, the attention's scale, soft cap and per-layer window, the
 *    GELU-tanh gated MLP, the final soft cap;
 *  - the fusion plan leaves the (1 + w) norms alone (the fused add + norm
 *    ops compute x / rms * w), and the fused path (q/k/v and gate/up as one
 *    matmul, rope with attention) equals the separate ops bit for bit.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/model_config.h"
#include "anvil/network.h"
#include "anvil/runtime.h"
#include "builder/fuse_plan.h"
#include "fusion_check.h"
#include "testutil.h"

/* A small gemma2 config.json with `extra` keys (a JSON fragment, "" for none). */
static const char *gemma2_json(const char *extra)
{
    static char buf[2048];
    snprintf(buf, sizeof buf,
             "{\"architectures\": [\"Gemma2ForCausalLM\"], \"model_type\": \"gemma2\", \"vocab_size\": 256,"
             " \"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 4,"
             " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 16,"
             " \"max_position_embeddings\": 128%s%s}",
             extra[0] ? ", " : "", extra);
    return buf;
}

static int slides(const anvil_model_config *c, int l) { return (int)((c->sliding_layers[l / 64] >> (l % 64)) & 1u); }

static void test_config_keys(void **s)
{
    (void)s;
    anvil_model_config c;
    /* tiny-gemma2 as published by transformers 5 */
    if (anvil_model_config_load(anvil_test_shared_path("models/tiny-gemma2"), &c) != ANVIL_OK)
        fail_msg("tiny-gemma2: %s", anvil_last_error());
    assert_int_equal(c.per_layer_window, 1);
    assert_int_equal(c.sliding_window, 16);
    assert_true(slides(&c, 0) && !slides(&c, 1) && slides(&c, 2));
    assert_true(c.attn_logit_softcap == 50.0 && c.final_logit_softcap == 30.0 && c.query_pre_attn_scalar == 16.0);
    assert_int_equal(c.hidden_act, ANVIL_ACT_GELU_TANH);

    /* absent keys: Gemma2Config's defaults (even layers slide, window 4096, head_dim 256) */
    assert_int_equal(anvil_model_config_parse(gemma2_json(""), &c), ANVIL_OK);
    assert_true(slides(&c, 0) && !slides(&c, 1) && slides(&c, 2) && !slides(&c, 3));
    assert_int_equal(c.sliding_window, 4096);
    assert_true(c.attn_logit_softcap == 50.0 && c.final_logit_softcap == 30.0 && c.query_pre_attn_scalar == 256.0);
    assert_int_equal(c.tie_word_embeddings, 1);
    char no_hd[2048];
    snprintf(no_hd, sizeof no_hd, "%s", gemma2_json(""));
    char *p = strstr(no_hd, " \"head_dim\": 16,");
    assert_non_null(p);
    memmove(p, p + strlen(" \"head_dim\": 16,"), strlen(p + strlen(" \"head_dim\": 16,")) + 1);
    assert_int_equal(anvil_model_config_parse(no_hd, &c), ANVIL_OK);
    assert_int_equal(c.head_dim, 256);

    /* null caps: none; a layer_types list picks the sliding layers */
    const char *j = gemma2_json("\"attn_logit_softcapping\": null, \"final_logit_softcapping\": null,"
                                " \"query_pre_attn_scalar\": 224, \"sliding_window\": 8, \"layer_types\":"
                                " [\"full_attention\", \"full_attention\", \"sliding_attention\", \"full_attention\"]");
    assert_int_equal(anvil_model_config_parse(j, &c), ANVIL_OK);
    assert_true(c.attn_logit_softcap == 0.0 && c.final_logit_softcap == 0.0 && c.query_pre_attn_scalar == 224.0);
    assert_true(!slides(&c, 0) && !slides(&c, 1) && slides(&c, 2) && !slides(&c, 3));
    assert_int_equal(c.sliding_window, 8);

    /* what anvil lacks or cannot read: refused, naming the key */
    assert_status_msg(anvil_model_config_parse(gemma2_json("\"hidden_activation\": \"gelu\""), &c),
                      ANVIL_ERR_UNSUPPORTED, "hidden_activation \"gelu\"");
    assert_status_msg(anvil_model_config_parse(gemma2_json("\"layer_types\": [\"sliding_attention\"]"), &c),
                      ANVIL_ERR_FORMAT, "layer_types has 1 entries");
    assert_status_msg(anvil_model_config_parse(gemma2_json("\"layer_types\": [\"full_attention\", \"chunked_attention\","
                                                           " \"full_attention\", \"full_attention\"]"),
                                               &c),
                      ANVIL_ERR_UNSUPPORTED, "layer_types[1] is \"chunked_attention\"");
    assert_status_msg(anvil_model_config_parse(gemma2_json("\"layer_types\": [1, 2, 3, 4]"), &c), ANVIL_ERR_FORMAT,
                      "layer_types[0]");
    assert_status_msg(anvil_model_config_parse(gemma2_json("\"attn_logit_softcapping\": -1"), &c), ANVIL_ERR_FORMAT,
                      "attn_logit_softcapping");
    assert_status_msg(anvil_model_config_parse(gemma2_json("\"final_logit_softcapping\": 1e9"), &c),
                      ANVIL_ERR_UNSUPPORTED, "final_logit_softcapping");
    assert_status_msg(anvil_model_config_parse(gemma2_json("\"query_pre_attn_scalar\": 0"), &c), ANVIL_ERR_FORMAT,
                      "query_pre_attn_scalar");
    assert_status_msg(anvil_model_config_parse(gemma2_json("\"use_bidirectional_attention\": true"), &c),
                      ANVIL_ERR_UNSUPPORTED, "use_bidirectional_attention");

    /* a hand-made config is checked the same way before a network is built */
    assert_int_equal(anvil_model_config_parse(gemma2_json(""), &c), ANVIL_OK);
    c.attn_logit_softcap = NAN;
    anvil_network *net = NULL;
    assert_status_msg(anvil_model_build_network(&c, &net), ANVIL_ERR_FORMAT, "attn_logit_softcapping");
    assert_null(net);
}

static void test_network(void **s)
{
    (void)s;
    anvil_model_config c;
    if (anvil_model_config_load(anvil_test_shared_path("models/tiny-gemma2"), &c) != ANVIL_OK)
        fail_msg("tiny-gemma2: %s", anvil_last_error());
    anvil_network *net = NULL;
    if (anvil_model_build_network(&c, &net) != ANVIL_OK)
        fail_msg("network: %s", anvil_last_error());
    int counts[ANVIL_OP_COUNT] = {0};
    int attn = 0;
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        counts[op->kind]++;
        if (op->kind == ANVIL_OP_RMSNORM)
            assert_true(op->weight_offset == 1.0f);
        if (op->kind == ANVIL_OP_ATTENTION) {
            assert_int_equal(op->attn.layer, attn);
            assert_int_equal(op->attn.sliding_window, attn == 1 ? 0 : 16); /* sliding, full, sliding */
            assert_true(op->attn.scale == 0.25f);                         /* 16^-0.5, not head_dim's */
            assert_true(op->attn.softcap == 50.0f);
            attn++;
        }
    }
    assert_int_equal(attn, 3);
    assert_int_equal(counts[ANVIL_OP_RMSNORM], 4 * 3 + 1);
    assert_int_equal(counts[ANVIL_OP_GELU_TANH_MUL], 3);
    assert_int_equal(counts[ANVIL_OP_SILU_MUL], 0);
    assert_int_equal(counts[ANVIL_OP_SCALE], 1);
    const anvil_net_op *emb_scale = anvil_network_op(net, 1);
    assert_int_equal(emb_scale->kind, ANVIL_OP_SCALE);
    assert_true(emb_scale->scalar == 8.0f); /* sqrt(64) */
    const anvil_net_op *out = anvil_network_op(net, anvil_network_output(net));
    assert_int_equal(out->kind, ANVIL_OP_SOFTCAP);
    assert_true(out->scalar == 30.0f);

    /* the fusion plan: q/k/v and gate/up as groups, rope with attention,
     * but no add + norm group: every norm has the (1 + w) offset */
    const anvil_fuse_caps caps = anvil_fuse_caps_all();
    anvil_fuse *f = NULL;
    assert_int_equal(anvil_fuse_plan(net, &caps, 0, &f), ANVIL_OK);
    anvil_fuse_merge_norm(net, &caps, f);
    int32_t k[ANVIL_FUSE_KINDS];
    anvil_fuse_counts(f, anvil_network_op_count(net), k);
    assert_int_equal(k[ANVIL_FUSE_ADD_RMSNORM] + k[ANVIL_FUSE_NORM_MULTI] + k[ANVIL_FUSE_NORM_SILU], 0);
    assert_int_equal(k[ANVIL_FUSE_MATMUL_MULTI], 2 * 3);
    assert_int_equal(k[ANVIL_FUSE_ROPE_ATTENTION], 3);
    free(f);

    /* without a final cap (null in the config) the LM head is the output */
    c.final_logit_softcap = 0;
    anvil_network_free(net);
    assert_int_equal(anvil_model_build_network(&c, &net), ANVIL_OK);
    assert_int_equal(anvil_network_op(net, anvil_network_output(net))->kind, ANVIL_OP_LINEAR);
    anvil_network_free(net);
}

static void test_fused_equals_separate(void **s)
{
    (void)s;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/tiny-gemma2", anvil_test_shared_dir());
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 2;
    fusion_diff d;
    anvil_status st = fusion_compare(dir, &o, 6, &d);
    if (st != ANVIL_OK)
        fail_msg("tiny-gemma2: %s", anvil_last_error());
    assert_int_equal(d.rows, 3 * 7);
    if (d.max_abs != 0.0)
        print_error("tiny-gemma2: fused logits differ by up to %g\n", d.max_abs);
    assert_true(d.max_abs == 0.0);
    assert_int_equal(d.greedy_differ, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_keys),
        cmocka_unit_test(test_network),
        cmocka_unit_test(test_fused_equals_separate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
