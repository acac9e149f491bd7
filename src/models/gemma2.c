/*
 * Gemma 2 (Gemma2ForCausalLM), as transformers' modeling_gemma2 computes it:
 *   x = embed_tokens(ids) * sqrt(hidden_size)   (the factor in the
 *       activation dtype, as HF's normalizer tensor)
 * per layer, with norm(.) = x / rms(x) * (1 + w), the 1 + w taken in f32:
 *   x = x + post_attention_layernorm(o_proj(attention(input_layernorm(x))))
 *   x = x + post_feedforward_layernorm(down_proj(gelu_tanh(gate_proj(m)) * up_proj(m))),
 *       m = pre_feedforward_layernorm(x)
 * attention: scale query_pre_attn_scalar^-0.5, logits soft-capped
 * (tanh(s / cap) * cap, attn_logit_softcapping) before the mask and the
 * softmax, sliding window on the layers the config marks sliding
 * (io/model_config.c: layer_types, else every even layer), full elsewhere;
 * then the final norm (1 + w), the LM head (tied to the embeddings unless
 * the config says otherwise) and the final soft cap.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "anvil/network.h"
#include "core/checked.h"
#include "core/error.h"
#include "models/models.h"

#define NAME_MAX_LEN 128

/* "model.layers.<i>.<suffix>" into buf. */
static const char *layer_name(char *buf, int64_t layer, const char *suffix)
{
    snprintf(buf, NAME_MAX_LEN, "model.layers.%lld.%s", (long long)layer, suffix);
    return buf;
}

static int layer_slides(const anvil_model_config *cfg, int64_t l)
{
    return !cfg->per_layer_window || ((cfg->sliding_layers[l / 64] >> (l % 64)) & 1u);
}

anvil_status anvil_model_gemma2_build(const anvil_model_config *cfg, anvil_network *net)
{
    /* the family rules give Gemma 2 none of these; a config that names
     * Gemma2ForCausalLM with another model_type might */
    CHECK(!cfg->mlp_bias && !cfg->qk_norm, ANVIL_ERR_UNSUPPORTED,
          "gemma2: MLP biases or q/k norms (model_type \"%s\") are not part of Gemma 2", cfg->model_type);
    CHECK(cfg->hidden_act == ANVIL_ACT_GELU_TANH, ANVIL_ERR_UNSUPPORTED,
          "gemma2: hidden_activation must be gelu_pytorch_tanh (model_type \"%s\")", cfg->model_type);
    /* checked as llama.c does: the config's bounds keep them small */
    const int64_t hidden = cfg->hidden_size, hd = cfg->head_dim, inter = cfg->intermediate_size;
    int64_t q_width, kv_width;
    CHECK(anvil_mul_i64_ok(cfg->n_heads, hd, &q_width) && anvil_mul_i64_ok(cfg->n_kv_heads, hd, &kv_width) &&
              q_width <= INT32_MAX && cfg->sliding_window <= INT32_MAX && cfg->n_layers <= INT32_MAX,
          ANVIL_ERR_UNSUPPORTED, "gemma2: %lld heads x head_dim %lld is too large", (long long)cfg->n_heads,
          (long long)hd);
    const double eps = cfg->rms_norm_eps;
    const int bias = cfg->attention_bias;
    /* Python doubles, used as f32 scalars by torch */
    const float scale = cfg->query_pre_attn_scalar > 0 ? (float)(1.0 / sqrt(cfg->query_pre_attn_scalar)) : 0.0f;
    char w[NAME_MAX_LEN], b[NAME_MAX_LEN];

    anvil_value x = anvil_net_embedding(net, "model.embed_tokens.weight", cfg->vocab_size, hidden);
    x = anvil_net_scale(net, x, (float)sqrt((double)hidden));
    for (int64_t l = 0; l < cfg->n_layers; l++) {
        anvil_value n = anvil_net_rmsnorm_offset(net, x, layer_name(w, l, "input_layernorm.weight"), eps, 1.0f);
        anvil_value q = anvil_net_linear(net, n, layer_name(w, l, "self_attn.q_proj.weight"),
                                         bias ? layer_name(b, l, "self_attn.q_proj.bias") : NULL, q_width);
        anvil_value k = anvil_net_linear(net, n, layer_name(w, l, "self_attn.k_proj.weight"),
                                         bias ? layer_name(b, l, "self_attn.k_proj.bias") : NULL, kv_width);
        anvil_value v = anvil_net_linear(net, n, layer_name(w, l, "self_attn.v_proj.weight"),
                                         bias ? layer_name(b, l, "self_attn.v_proj.bias") : NULL, kv_width);
        q = anvil_net_rope(net, q, hd, &cfg->rope);
        k = anvil_net_rope(net, k, hd, &cfg->rope);
        anvil_attention_params ap = {
            .layer = (int32_t)l,
            .n_heads = (int32_t)cfg->n_heads,
            .n_kv_heads = (int32_t)cfg->n_kv_heads,
            .head_dim = (int32_t)hd,
            .sliding_window = layer_slides(cfg, l) ? (int32_t)cfg->sliding_window : 0,
            .scale = scale,
            .softcap = (float)cfg->attn_logit_softcap,
        };
        anvil_value a = anvil_net_attention(net, q, k, v, &ap);
        anvil_value o = anvil_net_linear(net, a, layer_name(w, l, "self_attn.o_proj.weight"),
                                         cfg->attention_out_bias ? layer_name(b, l, "self_attn.o_proj.bias")
                                                                 : NULL,
                                         hidden);
        o = anvil_net_rmsnorm_offset(net, o, layer_name(w, l, "post_attention_layernorm.weight"), eps, 1.0f);
        x = anvil_net_add(net, x, o);

        n = anvil_net_rmsnorm_offset(net, x, layer_name(w, l, "pre_feedforward_layernorm.weight"), eps, 1.0f);
        anvil_value g = anvil_net_linear(net, n, layer_name(w, l, "mlp.gate_proj.weight"), NULL, inter);
        anvil_value u = anvil_net_linear(net, n, layer_name(w, l, "mlp.up_proj.weight"), NULL, inter);
        anvil_value d = anvil_net_linear(net, anvil_net_gelu_tanh_mul(net, g, u),
                                         layer_name(w, l, "mlp.down_proj.weight"), NULL, hidden);
        d = anvil_net_rmsnorm_offset(net, d, layer_name(w, l, "post_feedforward_layernorm.weight"), eps, 1.0f);
        x = anvil_net_add(net, x, d);
    }
    /* Norm only the rows that need logits: the same result for them, less work. */
    anvil_value last = anvil_net_logit_rows(net, x);
    last = anvil_net_rmsnorm_offset(net, last, "model.norm.weight", eps, 1.0f);
    const char *head = cfg->tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    anvil_value logits = anvil_net_linear(net, last, head, NULL, cfg->vocab_size);
    if (cfg->final_logit_softcap > 0)
        logits = anvil_net_softcap(net, logits, (float)cfg->final_logit_softcap);
    anvil_net_set_output(net, logits);
    return anvil_network_status(net);
}
