/*
 * DeepSeek-V2 (DeepseekV2ForCausalLM, transformers' models/deepseek_v2):
 * multi-head latent attention and a mixture of experts with shared experts.
 *
 * Per layer (pre-norm residual), n = input_layernorm(x):
 *   q    = q_proj(n), or q_b_proj(q_a_layernorm(q_a_proj(n))) with q_lora_rank
 *          [T, heads x (qk_nope_head_dim + qk_rope_head_dim)]
 *   c    = kv_a_layernorm(rows [0, kv_lora_rank) of kv_a_proj_with_mqa (n))   the latent
 *   k_pe = rows [kv_lora_rank, + qk_rope_head_dim) of kv_a_proj_with_mqa (n)  the shared rope key
 *   h    = x + o_proj(mla(q, c, k_pe; kv_b_proj))   (anvil_net_mla: rope, latent cache, attention)
 *   x    = h + mlp(post_attention_layernorm(h)): a dense gated MLP for the
 *          first first_k_dense_replace layers, then moe.c's experts (the
 *          router's softmax, greedy or group-limited top-k, weights times
 *          routed_scaling_factor, plus the shared experts, ungated)
 * then the final norm and the LM head on the rows that need logits.
 *
 * kv_a_proj_with_mqa is one checkpoint tensor; slice recipes cut it into
 * the latent's rows and the rope key's, so the norm reads the latent alone.
 * The softmax scale is qk_head_dim^-0.5, times yarn_get_mscale(factor,
 * mscale_all_dim)^2 under YaRN with mscale_all_dim, as transformers'
 * yarn_apply_mscale.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "anvil/network.h"
#include "core/error.h"
#include "models/models.h"

#define NAME_MAX_LEN 128
/* q_a_layernorm's and kv_a_layernorm's eps: transformers builds them with
 * DeepseekV2RMSNorm's default, not rms_norm_eps */
#define LORA_NORM_EPS 1e-6

/* "model.layers.<i>.<suffix>" into buf. */
static const char *layer_name(char *buf, int64_t layer, const char *suffix)
{
    snprintf(buf, NAME_MAX_LEN, "model.layers.%lld.%s", (long long)layer, suffix);
    return buf;
}

/* The softmax scale of transformers' DeepseekV2Attention. */
static float softmax_scale(const anvil_model_config *cfg)
{
    double scale = pow((double)(cfg->qk_nope_head_dim + cfg->head_dim), -0.5);
    if (cfg->rope.type == ANVIL_ROPE_YARN && cfg->rope.mscale_all_dim != 0.0) {
        const double m = anvil_yarn_mscale(cfg->rope.factor, cfg->rope.mscale_all_dim);
        scale = scale * m * m;
    }
    return (float)scale;
}

anvil_status anvil_model_deepseek2_build(const anvil_model_config *cfg, anvil_network *net)
{
    /* the config's bounds keep every product below far below int32 */
    const int64_t hidden = cfg->hidden_size, H = cfg->n_heads, R = cfg->kv_lora_rank;
    const int64_t dn = cfg->qk_nope_head_dim, dr = cfg->head_dim, dv = cfg->v_head_dim;
    CHECK(R > 0 && dn > 0 && dv > 0 && cfg->n_experts > 0, ANVIL_ERR_UNSUPPORTED,
          "deepseek_v2: needs kv_lora_rank, qk_nope_head_dim, v_head_dim and experts (got %lld, %lld, %lld, %d)",
          (long long)R, (long long)dn, (long long)dv, cfg->n_experts);
    CHECK(!cfg->attention_bias && !cfg->mlp_bias, ANVIL_ERR_UNSUPPORTED, "deepseek_v2: biases are not supported");
    const double eps = cfg->rms_norm_eps;
    char w[NAME_MAX_LEN], src[NAME_MAX_LEN];

    anvil_value x = anvil_net_embedding(net, "model.embed_tokens.weight", cfg->vocab_size, hidden);
    for (int64_t l = 0; l < cfg->n_layers; l++) {
        anvil_value n = anvil_net_rmsnorm(net, x, layer_name(w, l, "input_layernorm.weight"), eps);
        anvil_value q;
        if (cfg->q_lora_rank > 0) {
            q = anvil_net_linear(net, n, layer_name(w, l, "self_attn.q_a_proj.weight"), NULL, cfg->q_lora_rank);
            q = anvil_net_rmsnorm(net, q, layer_name(w, l, "self_attn.q_a_layernorm.weight"), LORA_NORM_EPS);
            q = anvil_net_linear(net, q, layer_name(w, l, "self_attn.q_b_proj.weight"), NULL, H * (dn + dr));
        } else {
            q = anvil_net_linear(net, n, layer_name(w, l, "self_attn.q_proj.weight"), NULL, H * (dn + dr));
        }
        /* (not checkpoint names: the two stretches of kv_a_proj_with_mqa) */
        layer_name(src, l, "self_attn.kv_a_proj_with_mqa.weight");
        anvil_net_weight_slice(net, layer_name(w, l, "self_attn.kv_a_proj_with_mqa.latent"), src, 0, 0);
        anvil_value c = anvil_net_linear(net, n, w, NULL, R);
        c = anvil_net_rmsnorm(net, c, layer_name(w, l, "self_attn.kv_a_layernorm.weight"), LORA_NORM_EPS);
        anvil_net_weight_slice(net, layer_name(w, l, "self_attn.kv_a_proj_with_mqa.rope_key"), src, 0, R);
        anvil_value k_pe = anvil_net_linear(net, n, w, NULL, dr);
        const anvil_mla_params mp = {
            .layer = (int32_t)l,
            .n_heads = (int32_t)H,
            .kv_rank = (int32_t)R,
            .nope_dim = (int32_t)dn,
            .rope_dim = (int32_t)dr,
            .v_dim = (int32_t)dv,
            .scale = softmax_scale(cfg),
        };
        anvil_value a = anvil_net_mla(net, q, c, k_pe, layer_name(w, l, "self_attn.kv_b_proj.weight"), &cfg->rope,
                                      &mp);
        x = anvil_net_add(net, x, anvil_net_linear(net, a, layer_name(w, l, "self_attn.o_proj.weight"), NULL, hidden));

        n = anvil_net_rmsnorm(net, x, layer_name(w, l, "post_attention_layernorm.weight"), eps);
        if (anvil_model_moe_layer(cfg, l)) {
            x = anvil_net_add(net, x, anvil_model_moe_block(net, cfg, n, l));
            continue;
        }
        anvil_value g = anvil_net_linear(net, n, layer_name(w, l, "mlp.gate_proj.weight"), NULL, cfg->intermediate_size);
        anvil_value u = anvil_net_linear(net, n, layer_name(w, l, "mlp.up_proj.weight"), NULL, cfg->intermediate_size);
        anvil_value d = anvil_net_linear(net, anvil_net_silu_mul(net, g, u), layer_name(w, l, "mlp.down_proj.weight"),
                                         NULL, hidden);
        x = anvil_net_add(net, x, d);
    }
    anvil_value last = anvil_net_logit_rows(net, x);
    last = anvil_net_rmsnorm(net, last, "model.norm.weight", eps);
    const char *head = cfg->tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    anvil_net_set_output(net, anvil_net_linear(net, last, head, NULL, cfg->vocab_size));
    return anvil_network_status(net);
}
