/*
 * The tensor-parallel cut of a network for one rank (builder/shard_plan.c),
 * without MPI: the networks of the golden models' configs cut for every
 * rank of 2 and 4, read back op by op and weight by weight:
 *   - q, k, v rows along heads (KV heads replicated when fewer than ranks),
 *     biases likewise; attention's head counts per rank;
 *   - gate and up rows, o_proj and down_proj columns, each followed by an
 *     all_reduce, their biases on rank 0 only;
 *   - the LM head's vocabulary rows and one all_gather; the embedding's
 *     vocabulary rows (its first id) and an all_reduce; a tied head sharing
 *     the embedding's slice, or renamed where the embedding stays whole
 *     (anvil_network_shard_ex without the cut), a head kept whole (Gemma 2's
 *     soft cap) beside a cut embedding;
 *   - GPT-2's transposed Conv1D weights (c_attn columns, c_proj rows: a
 *     transpose with a part), its non-gated MLP;
 *   - the experts of Mixtral, Qwen2-MoE (shared expert), Qwen3-MoE: each
 *     expert's intermediate cut (stacks of parts), the router whole;
 *   - DeepSeek-V2's mla: q and kv_b by heads, the latent whole;
 *   - Phi-3's fused checkpoint tensors: one slice of the source;
 *   - one rank is a copy; the refusals (heads, KV heads, arguments) with
 *     their messages.
 * The ranks' slices tile every cut tensor exactly once (checked by
 * adding up what each rank takes). tests/parallel/test_tp.c runs the cut
 * networks under mpirun against the goldens.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/model_config.h"
#include "anvil/network.h"
#include "builder/shard_plan.h"
#include "testutil.h"

static void load_cfg(const char *model, anvil_model_config *cfg)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", anvil_test_shared_dir(), model);
    if (anvil_model_config_load(dir, cfg) != ANVIL_OK)
        fail_msg("%s: %s", model, anvil_last_error());
}

static anvil_network *build(const anvil_model_config *cfg)
{
    anvil_network *net = NULL;
    if (anvil_model_build_network(cfg, &net) != ANVIL_OK)
        fail_msg("%s", anvil_last_error());
    return net;
}

static anvil_network *cut(const anvil_network *net, int32_t rank, int32_t size)
{
    anvil_network *out = NULL;
    if (anvil_network_shard(net, rank, size, &out) != ANVIL_OK)
        fail_msg("rank %d of %d: %s", rank, size, anvil_last_error());
    return out;
}

static anvil_network *build_dir(const char *dir)
{
    anvil_model_config cfg;
    if (anvil_model_config_load(dir, &cfg) != ANVIL_OK)
        fail_msg("%s: %s", dir, anvil_last_error());
    return build(&cfg);
}

static const anvil_net_weight *weight(const anvil_network *net, const char *name)
{
    int32_t i = anvil_network_find_weight(net, name);
    if (i < 0)
        fail_msg("no weight %s", name);
    return anvil_network_weight(net, i);
}

/* Weight `name` of the cut network: a slice of `source` along axis from
 * start, of shape [d0, d1] (d1 -1: a vector). */
static void check_slice(const anvil_network *net, const char *name, const char *source, int axis, int64_t start,
                        int64_t d0, int64_t d1)
{
    const anvil_net_weight *w = weight(net, name);
    if (w->recipe != ANVIL_RECIPE_SLICE || strcmp(w->sources[0], source) != 0 || w->axis != axis ||
        w->start != start || w->shape[0] != d0 || (d1 >= 0 && w->shape[1] != d1) || w->n_dims != (d1 >= 0 ? 2 : 1))
        fail_msg("%s: recipe %d of %s axis %d start %lld shape [%lld, %lld]; want a slice of %s axis %d start %lld "
                 "shape [%lld, %lld]",
                 name, w->recipe, w->sources[0], w->axis, (long long)w->start, (long long)w->shape[0],
                 (long long)w->shape[1], source, axis, (long long)start, (long long)d0, (long long)d1);
}

static void check_whole(const anvil_network *net, const char *name, int64_t d0, int64_t d1)
{
    const anvil_net_weight *w = weight(net, name);
    assert_int_equal(w->recipe, ANVIL_RECIPE_TENSOR);
    assert_int_equal(w->shape[0], d0);
    if (d1 >= 0)
        assert_int_equal(w->shape[1], d1);
}

static int32_t count_kind(const anvil_network *net, anvil_op_kind kind)
{
    int32_t n = 0;
    for (int32_t i = 0; i < anvil_network_op_count(net); i++)
        n += anvil_network_op(net, i)->kind == kind;
    return n;
}

/* The linear op that names weight `name` (its first weight). */
static const anvil_net_op *linear_of(const anvil_network *net, const char *name)
{
    int32_t w = anvil_network_find_weight(net, name);
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        if (op->kind == ANVIL_OP_LINEAR && op->weights[0] == w)
            return op;
    }
    fail_msg("no linear names %s", name);
    return NULL;
}

/* Qwen2 (q/k/v biases, untied head) with an MLP and o_proj bias, over 2
 * and 4 ranks: every rank's cut, and the slices tiling each tensor. */
static void test_llama_family_cut(void **state)
{
    (void)state;
    anvil_model_config cfg;
    load_cfg("tiny-qwen2", &cfg);
    cfg.mlp_bias = 1; /* a bias after the sum: on rank 0 only */
    cfg.attention_out_bias = 1;
    anvil_network *net = build(&cfg);
    const int64_t H = cfg.n_heads, K = cfg.n_kv_heads, hd = cfg.head_dim, D = cfg.hidden_size;
    const int64_t I = cfg.intermediate_size, V = cfg.vocab_size;
    for (int32_t size = 2; size <= 4; size += 2) {
        int64_t q_rows = 0, k_rows = 0, o_cols = 0, g_rows = 0, d_cols = 0, v_rows = 0;
        for (int32_t r = 0; r < size; r++) {
            anvil_network *c = cut(net, r, size);
            const int64_t hq = H / size, hkv = K >= size ? K / size : 1, kv0 = r * K / size;
            check_slice(c, "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight", 0,
                        r * hq * hd, hq * hd, D);
            check_slice(c, "model.layers.1.self_attn.q_proj.bias", "model.layers.1.self_attn.q_proj.bias", 0,
                        r * hq * hd, hq * hd, -1);
            check_slice(c, "model.layers.1.self_attn.k_proj.weight", "model.layers.1.self_attn.k_proj.weight", 0,
                        kv0 * hd, hkv * hd, D);
            check_slice(c, "model.layers.1.self_attn.v_proj.bias", "model.layers.1.self_attn.v_proj.bias", 0,
                        kv0 * hd, hkv * hd, -1);
            check_slice(c, "model.layers.1.self_attn.o_proj.weight", "model.layers.1.self_attn.o_proj.weight", 1,
                        r * hq * hd, D, hq * hd);
            check_slice(c, "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.gate_proj.weight", 0,
                        r * I / size, I / size, D);
            check_slice(c, "model.layers.0.mlp.up_proj.bias", "model.layers.0.mlp.up_proj.bias", 0, r * I / size,
                        I / size, -1);
            check_slice(c, "model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.down_proj.weight", 1,
                        r * I / size, D, I / size);
            check_slice(c, "lm_head.weight", "lm_head.weight", 0, r * V / size, V / size, D);
            check_slice(c, "model.embed_tokens.weight", "model.embed_tokens.weight", 0, r * V / size, V / size, D);
            assert_int_equal(anvil_network_op(c, 0)->kind, ANVIL_OP_EMBEDDING);
            assert_int_equal(anvil_network_op(c, 0)->first_id, r * V / size);
            assert_int_equal(anvil_network_op(c, 1)->kind, ANVIL_OP_ALL_REDUCE);
            check_whole(c, "model.layers.0.input_layernorm.weight", D, -1);
            /* the biases added after the sum: rank 0's alone */
            const int has_bias = r == 0;
            assert_int_equal(linear_of(c, "model.layers.0.mlp.down_proj.weight")->weights[1] >= 0, has_bias);
            assert_int_equal(linear_of(c, "model.layers.2.self_attn.o_proj.weight")->weights[1] >= 0, has_bias);
            assert_int_equal(anvil_network_find_weight(c, "model.layers.0.mlp.down_proj.bias") >= 0, has_bias);
            /* the collectives, and the ops' widths around them */
            assert_int_equal(count_kind(c, ANVIL_OP_ALL_REDUCE), 2 * cfg.n_layers + 1);
            assert_int_equal(count_kind(c, ANVIL_OP_ALL_GATHER), 1);
            const anvil_net_op *out = anvil_network_op(c, anvil_network_output(c));
            assert_int_equal(out->kind, ANVIL_OP_ALL_GATHER);
            assert_int_equal(out->width, V);
            for (int32_t i = 0; i < anvil_network_op_count(c); i++) {
                const anvil_net_op *op = anvil_network_op(c, i);
                if (op->kind == ANVIL_OP_ATTENTION) {
                    assert_int_equal(op->attn.n_heads, hq);
                    assert_int_equal(op->attn.n_kv_heads, hkv);
                    assert_int_equal(op->width, hq * hd);
                }
                if (op->kind == ANVIL_OP_ALL_REDUCE) {
                    const anvil_net_op *in = anvil_network_op(c, op->inputs[0]);
                    assert_true(in->kind == ANVIL_OP_LINEAR || in->kind == ANVIL_OP_EMBEDDING);
                    assert_int_equal(op->width, D);
                }
            }
            assert_int_equal(anvil_network_kv_layers(c), anvil_network_kv_layers(net));
            q_rows += weight(c, "model.layers.1.self_attn.q_proj.weight")->shape[0];
            k_rows += weight(c, "model.layers.1.self_attn.k_proj.weight")->shape[0];
            o_cols += weight(c, "model.layers.1.self_attn.o_proj.weight")->shape[1];
            g_rows += weight(c, "model.layers.0.mlp.gate_proj.weight")->shape[0];
            d_cols += weight(c, "model.layers.0.mlp.down_proj.weight")->shape[1];
            v_rows += weight(c, "lm_head.weight")->shape[0];
            anvil_network_free(c);
        }
        /* the parts add up to the whole (KV heads: replicated past K ranks) */
        assert_int_equal(q_rows, H * hd);
        assert_int_equal(k_rows, (size > K ? size : K) * hd);
        assert_int_equal(o_cols, H * hd);
        assert_int_equal(g_rows, I);
        assert_int_equal(d_cols, I);
        assert_int_equal(v_rows, V);
    }
    anvil_network_free(net);
}

/* A tied LM head: cut like the embedding, it shares its slice; with the
 * embedding kept whole (a backend without the slice's lookup), the head's
 * slice gets a name of its own. */
static void test_tied_head(void **state)
{
    (void)state;
    anvil_model_config cfg;
    load_cfg("tiny-qwen3", &cfg);
    assert_true(cfg.tie_word_embeddings);
    anvil_network *net = build(&cfg);
    const int64_t V = cfg.vocab_size, D = cfg.hidden_size;
    anvil_network *c = cut(net, 1, 2);
    check_slice(c, "model.embed_tokens.weight", "model.embed_tokens.weight", 0, V / 2, V / 2, D);
    assert_int_equal(anvil_network_find_weight(c, "model.embed_tokens.weight@lm_head"), -1);
    const anvil_net_op *head = anvil_network_op(c, anvil_network_op(c, anvil_network_output(c))->inputs[0]);
    assert_int_equal(head->kind, ANVIL_OP_LINEAR);
    assert_int_equal(head->weights[0], anvil_network_op(c, 0)->weights[0]);
    anvil_network_free(c);

    assert_int_equal(anvil_network_shard_ex(net, 1, 2, 0, &c), ANVIL_OK);
    check_whole(c, "model.embed_tokens.weight", V, D);
    check_slice(c, "model.embed_tokens.weight@lm_head", "model.embed_tokens.weight", 0, V / 2, V / 2, D);
    assert_int_equal(anvil_network_op(c, 0)->first_id, 0);
    assert_int_equal(anvil_network_op(c, 1)->kind, ANVIL_OP_RMSNORM); /* no sum after the whole table */
    /* the head norms stay whole: they work head by head */
    check_whole(c, "model.layers.0.self_attn.q_norm.weight", cfg.head_dim, -1);
    anvil_network_free(c);
    anvil_network_free(net);

    /* Gemma 2: the tied head before the soft cap stays whole; the embedding
     * cut beside it gets a name of its own */
    load_cfg("tiny-gemma2", &cfg);
    net = build(&cfg);
    c = cut(net, 1, 2);
    check_slice(c, "model.embed_tokens.weight@embedding", "model.embed_tokens.weight", 0, V / 2, V / 2, D);
    check_whole(c, "model.embed_tokens.weight", V, D);
    anvil_network_free(c);
    anvil_network_free(net);
}

/* GPT-2: q, k, v are transposed columns of c_attn (cut along heads), the
 * MLP's c_fc columns and c_proj rows (a transpose with a part of the
 * source's rows), both c_proj followed by a sum, their biases on rank 0. */
static void test_gpt2_cut(void **state)
{
    (void)state;
    anvil_network *net = build_dir(anvil_test_model_dir("tiny-gpt2"));
    const int64_t D = 64, I = 256, H = 4, hd = 16;
    for (int32_t size = 2; size <= 4; size += 2)
        for (int32_t r = 0; r < size; r++) {
            anvil_network *c = cut(net, r, size);
            const anvil_net_weight *k = weight(c, "transformer.h.1.attn.k_proj.weight");
            assert_int_equal(k->recipe, ANVIL_RECIPE_TRANSPOSE);
            assert_string_equal(k->sources[0], "transformer.h.1.attn.c_attn.weight");
            assert_int_equal(k->start, D + r * (H / size) * hd);
            assert_int_equal(k->shape[0], D / size);
            assert_int_equal(k->part_len, 0);
            check_slice(c, "transformer.h.1.attn.k_proj.bias", "transformer.h.1.attn.c_attn.bias", 0,
                        D + r * D / size, D / size, -1);
            const anvil_net_weight *o = weight(c, "transformer.h.1.attn.o_proj.weight");
            assert_int_equal(o->recipe, ANVIL_RECIPE_TRANSPOSE);
            assert_int_equal(o->start, 0);
            assert_int_equal(o->shape[0], D);
            assert_int_equal(o->shape[1], D / size);
            assert_int_equal(o->part_start, r * D / size);
            assert_int_equal(o->part_len, D / size);
            const anvil_net_weight *fc = weight(c, "transformer.h.0.mlp.fc.weight");
            assert_int_equal(fc->start, r * I / size);
            assert_int_equal(fc->shape[0], I / size);
            const anvil_net_weight *pr = weight(c, "transformer.h.0.mlp.proj.weight");
            assert_int_equal(pr->part_start, r * I / size);
            assert_int_equal(pr->shape[1], I / size);
            assert_int_equal(anvil_network_find_weight(c, "transformer.h.0.mlp.c_proj.bias") >= 0, r == 0);
            /* embedding, 2 a layer; the tied head shares the embedding's slice */
            assert_int_equal(count_kind(c, ANVIL_OP_ALL_REDUCE), 1 + 2 * 3);
            check_slice(c, "transformer.wte.weight", "transformer.wte.weight", 0, r * 512 / size, 512 / size, D);
            check_whole(c, "transformer.wpe.weight", weight(net, "transformer.wpe.weight")->shape[0], D);
            anvil_network_free(c);
        }
    anvil_network_free(net);
}

/* DeepSeek-V2's multi-head latent attention: q (q_b_proj, or q_proj in
 * -lite) and kv_b cut by heads, the latent and rope key (kv_a_proj_with_mqa's
 * stretches, its norm) whole, the mla op's heads and width per rank, o_proj
 * by columns and summed. */
static void test_mla_cut(void **state)
{
    (void)state;
    static const char *const models[] = {"tiny-deepseek-v2", "tiny-deepseek-v2-lite"};
    for (int m = 0; m < 2; m++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s", anvil_test_model_dir(models[m]));
        anvil_model_config cfg;
        if (anvil_model_config_load(dir, &cfg) != ANVIL_OK)
            fail_msg("%s: %s", dir, anvil_last_error());
        anvil_network *net = build(&cfg);
        const int64_t H = cfg.n_heads, dn = cfg.qk_nope_head_dim, dr = cfg.head_dim, dv = cfg.v_head_dim;
        const int64_t R = cfg.kv_lora_rank, D = cfg.hidden_size;
        const char *q = cfg.q_lora_rank > 0 ? "model.layers.1.self_attn.q_b_proj.weight"
                                            : "model.layers.1.self_attn.q_proj.weight";
        const int64_t qin = cfg.q_lora_rank > 0 ? cfg.q_lora_rank : D;
        for (int32_t size = 2; size <= 4; size += 2)
            for (int32_t r = 0; r < size; r++) {
                anvil_network *c = cut(net, r, size);
                const int64_t hq = H / size;
                check_slice(c, q, q, 0, r * hq * (dn + dr), hq * (dn + dr), qin);
                check_slice(c, "model.layers.1.self_attn.kv_b_proj.weight", "model.layers.1.self_attn.kv_b_proj.weight",
                            0, r * hq * (dn + dv), hq * (dn + dv), R);
                check_slice(c, "model.layers.1.self_attn.o_proj.weight", "model.layers.1.self_attn.o_proj.weight", 1,
                            r * hq * dv, D, hq * dv);
                check_slice(c, "model.layers.1.self_attn.kv_a_proj_with_mqa.latent",
                            "model.layers.1.self_attn.kv_a_proj_with_mqa.weight", 0, 0, R, D);
                check_slice(c, "model.layers.1.self_attn.kv_a_proj_with_mqa.rope_key",
                            "model.layers.1.self_attn.kv_a_proj_with_mqa.weight", 0, R, dr, D);
                int32_t n_mla = 0;
                for (int32_t i = 0; i < anvil_network_op_count(c); i++) {
                    const anvil_net_op *op = anvil_network_op(c, i);
                    if (op->kind != ANVIL_OP_MLA)
                        continue;
                    n_mla++;
                    assert_int_equal(op->mla.n_heads, hq);
                    assert_int_equal(op->mla.kv_rank, R);
                    assert_int_equal(op->width, hq * dv);
                    assert_int_equal(anvil_network_op(c, op->inputs[1])->width, R); /* the latent, whole */
                    assert_int_equal(anvil_network_op(c, op->inputs[2])->width, dr);
                    assert_int_equal(anvil_network_op(c, i + 2)->kind, ANVIL_OP_ALL_REDUCE); /* after o_proj */
                }
                assert_int_equal(n_mla, cfg.n_layers);
                assert_int_equal(anvil_network_kv_layers(c), cfg.n_layers);
                anvil_network_free(c);
            }
        anvil_network_free(net);
    }
}

/* Mixtral, Qwen2-MoE (a shared expert behind a gate), Qwen3-MoE: every
 * expert's gate/up rows and down columns [r I/N, (r+1) I/N) as stacks of
 * parts, the moe op's widths, the router and shared gate whole, a sum
 * after the op. */
static void test_moe_cut(void **state)
{
    (void)state;
    const char *dirs[3];
    char mixtral[512];
    snprintf(mixtral, sizeof mixtral, "%s/models/tiny-mixtral", anvil_test_shared_dir());
    dirs[0] = mixtral;
    char q2[512], q3[512];
    snprintf(q2, sizeof q2, "%s", anvil_test_model_dir("tiny-qwen2-moe"));
    snprintf(q3, sizeof q3, "%s", anvil_test_model_dir("tiny-qwen3-moe"));
    dirs[1] = q2;
    dirs[2] = q3;
    for (int m = 0; m < 3; m++) {
        anvil_network *net = build_dir(dirs[m]);
        int32_t moe = -1;
        for (int32_t i = 0; moe < 0 && i < anvil_network_op_count(net); i++)
            if (anvil_network_op(net, i)->kind == ANVIL_OP_MOE)
                moe = i;
        assert_true(moe >= 0);
        const anvil_net_op *whole = anvil_network_op(net, moe);
        const int64_t I = whole->moe.inter, Is = whole->moe.shared_inter, E = whole->moe.n_experts;
        assert_true(m != 1 || Is > 0);
        for (int32_t size = 2; size <= 4; size += 2)
            for (int32_t r = 0; r < size; r++) {
                anvil_network *c = cut(net, r, size);
                int32_t n_moe = 0;
                for (int32_t i = 0; i < anvil_network_op_count(c); i++) {
                    const anvil_net_op *op = anvil_network_op(c, i);
                    if (op->kind != ANVIL_OP_MOE)
                        continue;
                    n_moe++;
                    assert_int_equal(op->moe.inter, I / size);
                    assert_int_equal(op->moe.shared_inter, Is / size);
                    assert_int_equal(anvil_network_op(c, i + 1)->kind, ANVIL_OP_ALL_REDUCE);
                    const anvil_net_weight *gu = anvil_network_weight(c, op->weights[1]);
                    assert_int_equal(gu->recipe, ANVIL_RECIPE_CONCAT);
                    assert_int_equal(gu->n_sources, 2 * E);
                    assert_int_equal(gu->part_axis, 0);
                    assert_int_equal(gu->part_start, r * I / size);
                    assert_int_equal(gu->part_len, I / size);
                    assert_int_equal(gu->shape[0], 2 * E * I / size);
                    const anvil_net_weight *dn = anvil_network_weight(c, op->weights[2]);
                    assert_int_equal(dn->part_axis, 1);
                    assert_int_equal(dn->part_start, r * I / size);
                    assert_int_equal(dn->shape[1], I / size);
                    const anvil_net_weight *router = anvil_network_weight(c, op->weights[0]);
                    assert_int_equal(router->recipe, ANVIL_RECIPE_TENSOR);
                    assert_int_equal(router->shape[0], E);
                    if (Is > 0) {
                        const anvil_net_weight *sgu = anvil_network_weight(c, op->weights[3]);
                        assert_int_equal(sgu->part_start, r * Is / size);
                        assert_int_equal(sgu->shape[0], 2 * Is / size);
                        const anvil_net_weight *sd = anvil_network_weight(c, op->weights[4]);
                        assert_int_equal(sd->recipe, ANVIL_RECIPE_SLICE);
                        assert_int_equal(sd->axis, 1);
                        assert_int_equal(sd->start, r * Is / size);
                        assert_int_equal(anvil_network_weight(c, op->weights[5])->recipe, ANVIL_RECIPE_TENSOR);
                    }
                }
                assert_true(n_moe > 0);
                anvil_network_free(c);
            }
        anvil_network_free(net);
    }
}

/* Phi-3's q/k/v and gate/up are slices of fused tensors: a rank's part is
 * one slice of the same source. */
static void test_fused_sources(void **state)
{
    (void)state;
    anvil_model_config cfg;
    load_cfg("tiny-phi3", &cfg);
    anvil_network *net = build(&cfg);
    const int64_t H = cfg.n_heads, K = cfg.n_kv_heads, hd = cfg.head_dim, I = cfg.intermediate_size;
    for (int32_t r = 0; r < 4; r++) {
        anvil_network *c = cut(net, r, 4);
        int32_t q = -1, k = -1, up = -1;
        for (int32_t i = 0; i < anvil_network_weight_count(c); i++) {
            const anvil_net_weight *w = anvil_network_weight(c, i);
            if (w->recipe != ANVIL_RECIPE_SLICE || strncmp(w->name, "model.layers.0.", 15) != 0)
                continue;
            if (strcmp(w->sources[0], "model.layers.0.self_attn.qkv_proj.weight") == 0) {
                if (q < 0)
                    q = i;
                else if (k < 0)
                    k = i;
            }
            if (strcmp(w->sources[0], "model.layers.0.mlp.gate_up_proj.weight") == 0 && w->start >= I)
                up = i;
        }
        assert_true(q >= 0 && k >= 0 && up >= 0);
        assert_int_equal(anvil_network_weight(c, q)->start, r * (H / 4) * hd);
        assert_int_equal(anvil_network_weight(c, k)->start, H * hd + r * (K / 4) * hd);
        assert_int_equal(anvil_network_weight(c, up)->start, I + r * I / 4);
        assert_int_equal(anvil_network_weight(c, up)->shape[0], I / 4);
        anvil_network_free(c);
    }
    anvil_network_free(net);
}

/* One rank: the same network, op for op. */
static void test_one_rank_is_a_copy(void **state)
{
    (void)state;
    anvil_model_config cfg;
    load_cfg("stories260K", &cfg);
    anvil_network *net = build(&cfg);
    anvil_network *c = cut(net, 0, 1);
    assert_int_equal(anvil_network_op_count(c), anvil_network_op_count(net));
    assert_int_equal(anvil_network_weight_count(c), anvil_network_weight_count(net));
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *a = anvil_network_op(net, i), *b = anvil_network_op(c, i);
        assert_int_equal(a->kind, b->kind);
        assert_int_equal(a->width, b->width);
        for (int k = 0; k < 3; k++)
            assert_int_equal(a->inputs[k], b->inputs[k]);
        assert_int_equal(a->weights[0], b->weights[0]);
        assert_int_equal(a->weights[1], b->weights[1]);
        assert_memory_equal(&a->attn, &b->attn, sizeof a->attn);
    }
    anvil_network_free(c);
    anvil_network_free(net);
}

static void test_refusals(void **state)
{
    (void)state;
    anvil_model_config cfg;
    anvil_network *out = (anvil_network *)&out;
    load_cfg("tinycode", &cfg); /* 6 heads, 2 KV heads */
    anvil_network *net = build(&cfg);
    assert_status_msg(anvil_network_shard(net, 0, 4, &out), ANVIL_ERR_UNSUPPORTED,
                      "6 attention heads cannot be split over 4 ranks");
    assert_null(out);
    assert_status_msg(anvil_network_shard(net, 0, 3, &out), ANVIL_ERR_UNSUPPORTED,
                      "2 KV heads can be neither split over nor replicated on 3 ranks");
    assert_status_msg(anvil_network_shard(net, 2, 2, &out), ANVIL_ERR_INVALID_ARG, "rank 2 of 2");
    assert_status_msg(anvil_network_shard(net, 0, 0, &out), ANVIL_ERR_INVALID_ARG, "rank 0 of 0");
    anvil_network_free(net);
    /* an MLP width the ranks do not divide */
    load_cfg("tiny-llama3", &cfg);
    cfg.intermediate_size = 162;
    net = build(&cfg);
    assert_status_msg(anvil_network_shard(net, 0, 4, &out), ANVIL_ERR_UNSUPPORTED,
                      "162 outputs cannot be split over 4 ranks");
    assert_null(out);
    anvil_network_free(net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_family_cut), cmocka_unit_test(test_tied_head),
        cmocka_unit_test(test_gpt2_cut),         cmocka_unit_test(test_moe_cut),
        cmocka_unit_test(test_mla_cut),
        cmocka_unit_test(test_fused_sources),    cmocka_unit_test(test_one_rank_is_a_copy),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
