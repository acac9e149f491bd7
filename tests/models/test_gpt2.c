/*
 * GPT-2 (src/models/gpt2.c) beyond the golden logits (test_golden_models
 * checks tests/data/models/tiny-gpt2 against transformers):
 *  - the config keys (io/model_config.c): GPT2Config's names and defaults
 *    (n_inner null: 4 n_embd), layer_norm_epsilon, activation_function; the
 *    attention switches anvil lacks refused with the key's name;
 *  - the network: wte + wpe, two LayerNorms a layer and ln_f, c_attn cut
 *    into q, k, v by transpose recipes (Conv1D weights are [in, out]), no
 *    RoPE, gelu_tanh, the head tied to wte; the fusion plan groups q/k/v
 *    only, and fused equals separate bit for bit;
 *  - the original gpt2 checkpoint's names (no "transformer." prefix) load
 *    and give the same logits;
 *  - no position past n_positions: a longer max_seq_len is refused at load,
 *    a batch that reaches past it before it runs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "anvil/model_config.h"
#include "anvil/network.h"
#include "anvil/runtime.h"
#include "builder/fuse_plan.h"
#include "builder/shard_plan.h"
#include "fusion_check.h"
#include "io/safetensors.h"
#include "testutil.h"

/* A small gpt2 config.json with `extra` keys (a JSON fragment, "" for none). */
static const char *gpt2_json(const char *extra)
{
    static char buf[2048];
    snprintf(buf, sizeof buf, "{\"architectures\": [\"GPT2LMHeadModel\"], \"model_type\": \"gpt2\"%s%s}",
             extra[0] ? ", " : "", extra);
    return buf;
}

static void test_config_keys(void **s)
{
    (void)s;
    anvil_model_config c;
    if (anvil_model_config_load(anvil_test_model_dir("tiny-gpt2"), &c) != ANVIL_OK)
        fail_msg("tiny-gpt2: %s", anvil_last_error());
    assert_int_equal(c.vocab_size, 512);
    assert_int_equal(c.hidden_size, 64);
    assert_int_equal(c.n_layers, 3);
    assert_int_equal(c.n_heads, 4);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.intermediate_size, 256); /* n_inner null */
    assert_int_equal(c.max_position_embeddings, 128);
    assert_true(c.rms_norm_eps == 1e-5);
    assert_int_equal(c.hidden_act, ANVIL_ACT_GELU_TANH);
    assert_true(c.attention_bias && c.attention_out_bias && c.mlp_bias && c.tie_word_embeddings);
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.bos_token_id, 1);

    /* absent keys: GPT2Config's defaults (gpt2 small) */
    assert_int_equal(anvil_model_config_parse(gpt2_json(""), &c), ANVIL_OK);
    assert_int_equal(c.vocab_size, 50257);
    assert_int_equal(c.hidden_size, 768);
    assert_int_equal(c.n_layers, 12);
    assert_int_equal(c.n_heads, 12);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.intermediate_size, 3072);
    assert_int_equal(c.max_position_embeddings, 1024);
    assert_true(c.rms_norm_eps == 1e-5);
    /* n_inner given; the other spelling of the tanh GELU; another eps */
    assert_int_equal(anvil_model_config_parse(gpt2_json("\"n_embd\": 32, \"n_head\": 2, \"n_inner\": 100, "
                                                        "\"activation_function\": \"gelu_pytorch_tanh\", "
                                                        "\"layer_norm_epsilon\": 1e-6, "
                                                        "\"reorder_and_upcast_attn\": true"),
                                              &c),
                     ANVIL_OK);
    assert_int_equal(c.intermediate_size, 100);
    assert_int_equal(c.head_dim, 16);
    assert_true(c.rms_norm_eps == 1e-6);

    /* what anvil lacks, refused by name */
    assert_status_msg(anvil_model_config_parse(gpt2_json("\"activation_function\": \"relu\""), &c),
                      ANVIL_ERR_UNSUPPORTED, "activation_function \"relu\"");
    assert_status_msg(anvil_model_config_parse(gpt2_json("\"activation_function\": \"gelu\""), &c),
                      ANVIL_ERR_UNSUPPORTED, "gelu_new");
    assert_status_msg(anvil_model_config_parse(gpt2_json("\"scale_attn_weights\": false"), &c),
                      ANVIL_ERR_UNSUPPORTED, "scale_attn_weights false");
    assert_status_msg(anvil_model_config_parse(gpt2_json("\"scale_attn_by_inverse_layer_idx\": true"), &c),
                      ANVIL_ERR_UNSUPPORTED, "scale_attn_by_inverse_layer_idx true");
    assert_status_msg(anvil_model_config_parse(gpt2_json("\"add_cross_attention\": true"), &c),
                      ANVIL_ERR_UNSUPPORTED, "add_cross_attention");
    /* nonsense sizes name GPT-2's own keys */
    assert_status_msg(anvil_model_config_parse(gpt2_json("\"n_positions\": 0"), &c), ANVIL_ERR_FORMAT,
                      "n_positions");
    assert_status_msg(anvil_model_config_parse(gpt2_json("\"n_embd\": 100, \"n_head\": 3"), &c), ANVIL_ERR_FORMAT,
                      "hidden_size (100)");
    assert_status_msg(anvil_model_config_parse(gpt2_json("\"layer_norm_epsilon\": 0"), &c), ANVIL_ERR_FORMAT,
                      "layer_norm_epsilon");
}

static void test_network(void **s)
{
    (void)s;
    anvil_model_config c;
    if (anvil_model_config_load(anvil_test_model_dir("tiny-gpt2"), &c) != ANVIL_OK)
        fail_msg("tiny-gpt2: %s", anvil_last_error());
    anvil_network *net = NULL;
    if (anvil_model_build_network(&c, &net) != ANVIL_OK)
        fail_msg("network: %s", anvil_last_error());
    int counts[ANVIL_OP_COUNT] = {0};
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        counts[op->kind]++;
        if (op->kind == ANVIL_OP_ATTENTION) {
            assert_int_equal(op->attn.n_kv_heads, op->attn.n_heads);
            assert_int_equal(op->attn.head_dim, 16);
            /* 1 / sqrt(head_dim) (scale_attn_weights), no cap, no window */
            assert_true(op->attn.scale == 0.25f && op->attn.softcap == 0.0f && op->attn.sliding_window == 0);
        }
        if (op->kind == ANVIL_OP_LAYERNORM) {
            assert_true(op->eps == 1e-5);
            assert_true(op->weights[0] >= 0 && op->weights[1] >= 0);
        }
    }
    assert_int_equal(anvil_network_op(net, 0)->kind, ANVIL_OP_EMBEDDING);
    assert_int_equal(anvil_network_op(net, 1)->kind, ANVIL_OP_POS_EMBEDDING);
    assert_int_equal(counts[ANVIL_OP_POS_EMBEDDING], 1);
    assert_int_equal(counts[ANVIL_OP_LAYERNORM], 2 * 3 + 1);
    assert_int_equal(counts[ANVIL_OP_GELU_TANH], 3);
    assert_int_equal(counts[ANVIL_OP_ATTENTION], 3);
    assert_int_equal(counts[ANVIL_OP_LINEAR], 6 * 3 + 1); /* q, k, v, c_proj, c_fc, mlp c_proj; the head */
    assert_int_equal(counts[ANVIL_OP_ROPE] + counts[ANVIL_OP_RMSNORM] + counts[ANVIL_OP_SILU_MUL], 0);

    /* Conv1D weights: transposed runs of the checkpoint tensors' columns */
    static const char *const qkv[3] = {"q", "k", "v"};
    for (int j = 0; j < 3; j++) {
        char name[96];
        snprintf(name, sizeof name, "transformer.h.1.attn.%s_proj.weight", qkv[j]);
        const anvil_net_weight *w = anvil_network_weight(net, anvil_network_find_weight(net, name));
        assert_non_null(w);
        assert_int_equal(w->recipe, ANVIL_RECIPE_TRANSPOSE);
        assert_string_equal(w->sources[0], "transformer.h.1.attn.c_attn.weight");
        assert_int_equal(w->start, 64 * j);
        assert_true(w->shape[0] == 64 && w->shape[1] == 64);
        snprintf(name, sizeof name, "transformer.h.1.attn.%s_proj.bias", qkv[j]);
        w = anvil_network_weight(net, anvil_network_find_weight(net, name));
        assert_non_null(w);
        assert_int_equal(w->recipe, ANVIL_RECIPE_SLICE);
        assert_string_equal(w->sources[0], "transformer.h.1.attn.c_attn.bias");
        assert_int_equal(w->start, 64 * j);
    }
    const anvil_net_weight *fc = anvil_network_weight(net, anvil_network_find_weight(net, "transformer.h.0.mlp.fc.weight"));
    assert_non_null(fc);
    assert_true(fc->recipe == ANVIL_RECIPE_TRANSPOSE && fc->shape[0] == 256 && fc->shape[1] == 64);
    /* the head is wte itself */
    const anvil_net_op *out = anvil_network_op(net, anvil_network_output(net));
    assert_int_equal(out->kind, ANVIL_OP_LINEAR);
    assert_string_equal(anvil_network_weight(net, out->weights[0])->name, "transformer.wte.weight");

    /* the fusion plan: q/k/v as one group a layer; nothing that computes an
     * rmsnorm, a rope or a silu */
    const anvil_fuse_caps caps = anvil_fuse_caps_all();
    anvil_fuse *f = NULL;
    assert_int_equal(anvil_fuse_plan(net, &caps, 0, &f), ANVIL_OK);
    anvil_fuse_merge_norm(net, &caps, f);
    int32_t k[ANVIL_FUSE_KINDS];
    anvil_fuse_counts(f, anvil_network_op_count(net), k);
    assert_int_equal(k[ANVIL_FUSE_MATMUL_MULTI], 3);
    assert_int_equal(k[ANVIL_FUSE_ADD_RMSNORM] + k[ANVIL_FUSE_NORM_MULTI] + k[ANVIL_FUSE_NORM_SILU] +
                         k[ANVIL_FUSE_SILU_MUL] + k[ANVIL_FUSE_ROPE_ATTENTION],
                     0);
    free(f);

    /* tensor parallelism: the attention's c_proj is cut along its input, a
     * run of its transposed source's rows (a transpose with a part; the cut
     * itself in tests/builder/test_shard_plan.c) */
    anvil_network *cut = NULL;
    assert_int_equal(anvil_network_shard(net, 1, 2, &cut), ANVIL_OK);
    const anvil_net_weight *cp = anvil_network_weight(cut, anvil_network_find_weight(cut, "transformer.h.0.attn.o_proj.weight"));
    assert_non_null(cp);
    assert_int_equal(cp->recipe, ANVIL_RECIPE_TRANSPOSE);
    assert_int_equal(cp->part_start, cp->shape[1]);
    anvil_network_free(cut);
    anvil_network_free(net);

    /* untied: lm_head.weight, an nn.Linear [vocab, n_embd] read as it is */
    c.tie_word_embeddings = 0;
    assert_int_equal(anvil_model_build_network(&c, &net), ANVIL_OK);
    out = anvil_network_op(net, anvil_network_output(net));
    const anvil_net_weight *head = anvil_network_weight(net, out->weights[0]);
    assert_string_equal(head->name, "lm_head.weight");
    assert_int_equal(head->recipe, ANVIL_RECIPE_TENSOR);
    anvil_network_free(net);
    /* a config that names GPT2LMHeadModel but is not GPT-2 (grouped heads) */
    c.tie_word_embeddings = 1;
    c.n_kv_heads = 2;
    assert_status_msg(anvil_model_build_network(&c, &net), ANVIL_ERR_UNSUPPORTED, "GPT-2");
    assert_null(net);
}

static void test_fused_equals_separate(void **s)
{
    (void)s;
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 2;
    fusion_diff d;
    if (fusion_compare(anvil_test_model_dir("tiny-gpt2"), &o, 6, &d) != ANVIL_OK)
        fail_msg("tiny-gpt2: %s", anvil_last_error());
    assert_true(d.rows > 0);
    if (d.max_abs != 0.0)
        print_error("tiny-gpt2: fused logits differ by up to %g\n", d.max_abs);
    assert_true(d.max_abs == 0.0);
    assert_int_equal(d.greedy_differ, 0);
}

static anvil_runtime *load(const char *dir, int32_t max_seq_len)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 2;
    o.max_num_tokens = 256;
    o.max_logit_rows = 256;
    o.max_batch_size = 2;
    o.kv_block_size = 16;
    o.kv_cache_tokens = 512;
    o.max_seq_len = max_seq_len;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", dir, anvil_last_error());
    return rt;
}

/* The logits of every position of ids (one prefill). */
static float *prefill(anvil_runtime *rt, const int32_t *ids, int32_t n)
{
    const int64_t V = anvil_runtime_config(rt)->vocab_size;
    int32_t pos[64], rows[64], blocks[4], starts[2] = {0, n};
    assert_true(n <= 64);
    assert_int_equal(anvil_runtime_kv_alloc(rt, 4, blocks), ANVIL_OK);
    for (int32_t i = 0; i < n; i++)
        pos[i] = rows[i] = i;
    float *out = malloc((size_t)n * (size_t)V * sizeof *out);
    assert_non_null(out);
    anvil_batch b = {.n_tokens = n, .token_ids = ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = 4, .n_logits = n, .logit_rows = rows};
    if (anvil_runtime_forward(rt, &b, out) != ANVIL_OK)
        fail_msg("forward: %s", anvil_last_error());
    anvil_runtime_kv_release(rt, 4, blocks);
    return out;
}

/* tiny-gpt2 with every tensor named as the original gpt2 checkpoint names
 * it ("h.0.attn.c_attn.weight", "wte.weight": no "transformer."), the other
 * files linked: it loads and gives the same logits bit for bit. */
static void test_unprefixed_names(void **s)
{
    (void)s;
    const char *src = anvil_test_model_dir("tiny-gpt2");
    char dir[1024], path[1200], from[1200];
    snprintf(dir, sizeof dir, "%s/gpt2-unprefixed", anvil_test_tmpdir());
    assert_int_equal(mkdir(dir, 0755), 0);
    static const char *const linked[] = {"config.json", "generation_config.json", "tokenizer.json",
                                         "tokenizer_config.json"};
    for (size_t i = 0; i < sizeof linked / sizeof linked[0]; i++) {
        char abs[1200];
        snprintf(from, sizeof from, "%s/%s", src, linked[i]);
        assert_non_null(realpath(from, abs));
        snprintf(path, sizeof path, "%s/%s", dir, linked[i]);
        assert_int_equal(symlink(abs, path), 0);
    }
    anvil_safetensors *f = NULL;
    snprintf(from, sizeof from, "%s/model.safetensors", src);
    if (anvil_safetensors_open(from, &f) != ANVIL_OK)
        fail_msg("%s", anvil_last_error());
    const int64_t n = anvil_safetensors_count(f);
    anvil_st_tensor *ts = calloc((size_t)n, sizeof *ts);
    assert_non_null(ts);
    int64_t renamed = 0;
    for (int64_t i = 0; i < n; i++) {
        ts[i] = *anvil_safetensors_at(f, i);
        ts[i].file = NULL;
        if (strncmp(ts[i].name, "transformer.", 12) == 0) {
            ts[i].name += 12;
            renamed++;
        }
    }
    assert_int_equal(renamed, n); /* tied: no lm_head.weight */
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (anvil_safetensors_write(path, ts, n) != ANVIL_OK)
        fail_msg("%s", anvil_last_error());
    free(ts);
    anvil_safetensors_close(f);

    const int32_t ids[] = {1, 403, 407, 261, 378, 432, 383, 286};
    anvil_runtime *a = load(src, 0), *b = load(dir, 0);
    float *la = prefill(a, ids, 8), *lb = prefill(b, ids, 8);
    assert_memory_equal(la, lb, (size_t)8 * 512 * sizeof(float));
    free(la);
    free(lb);
    anvil_runtime_free(a);
    anvil_runtime_free(b);
}

/* n_positions 128: max_seq_len 129 is refused at load (naming the key); at
 * 128, a step that reaches position 128 is refused before it runs. */
static void test_positions_past_the_table(void **s)
{
    (void)s;
    const char *dir = anvil_test_model_dir("tiny-gpt2");
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 1;
    o.max_seq_len = 129;
    anvil_runtime *rt = NULL;
    assert_status_msg(anvil_runtime_load(dir, &o, &rt), ANVIL_ERR_UNSUPPORTED, "n_positions");
    assert_null(rt);
    rt = load(dir, 0); /* n_positions from the config */
    int32_t ids[1] = {5}, pos[1] = {128}, rows[1] = {0}, starts[2] = {0, 1}, blocks[8];
    assert_int_equal(anvil_runtime_kv_alloc(rt, 8, blocks), ANVIL_OK);
    float *out = malloc(512 * sizeof *out);
    anvil_batch b = {.n_tokens = 1, .token_ids = ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = 8, .n_logits = 1, .logit_rows = rows};
    assert_status_msg(anvil_runtime_forward(rt, &b, out), ANVIL_ERR_CAPACITY, "position 128 outside the context");
    anvil_runtime_kv_release(rt, 8, blocks);
    free(out);
    anvil_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_keys),          cmocka_unit_test(test_network),
        cmocka_unit_test(test_fused_equals_separate), cmocka_unit_test(test_unprefixed_names),
        cmocka_unit_test(test_positions_past_the_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
