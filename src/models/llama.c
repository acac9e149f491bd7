/*
 * The Llama family: Llama 2/3/3.1/3.2, Mistral, Qwen2 and Qwen3 share one
 * decoder, differing only in switches the config carries:
 *   - grouped-query attention (n_kv_heads < n_heads), head_dim != hidden/heads
 *   - biases on q/k/v (Qwen2), RMSNorm on each head of q and k (Qwen3)
 *   - sliding-window attention (Mistral)
 *   - RoPE scaling (Llama 3.1 "llama3", linear), tied or untied LM head
 *   - mixture of experts in place of the MLP (Mixtral, Qwen2-MoE with its
 *     shared expert, Qwen3-MoE; moe.c), on every layer or those the config
 *     makes sparse
 *
 * Per layer (pre-norm residual):
 *   h = x + o_proj(attention(rope(q_norm(q_proj(n))), rope(k_norm(k_proj(n))), v_proj(n)))
 *       where n = input_layernorm(x)
 *   x = h + down_proj(silu(gate_proj(m)) * up_proj(m)), m = post_attention_layernorm(h)
 * then final norm and the LM head on the rows that need logits.
 */
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

anvil_status anvil_model_llama_build(const anvil_model_config *cfg, anvil_network *net)
{
    /* anvil_model_build_network checked the config's bounds, which keep
     * these products small; they are checked anyway, with the narrowings
     * to the int32 attention parameters, so that no bound change can make
     * them wrap */
    const int64_t hidden = cfg->hidden_size;
    const int64_t hd = cfg->head_dim;
    int64_t q_width, kv_width;
    CHECK(anvil_mul_i64_ok(cfg->n_heads, hd, &q_width) && anvil_mul_i64_ok(cfg->n_kv_heads, hd, &kv_width) &&
              q_width <= INT32_MAX && cfg->sliding_window <= INT32_MAX && cfg->n_layers <= INT32_MAX,
          ANVIL_ERR_UNSUPPORTED, "llama: %lld heads x head_dim %lld is too large", (long long)cfg->n_heads,
          (long long)hd);
    const double eps = cfg->rms_norm_eps;
    char w[NAME_MAX_LEN], b[NAME_MAX_LEN];

    anvil_value x = anvil_net_embedding(net, "model.embed_tokens.weight", cfg->vocab_size, hidden);
    for (int64_t l = 0; l < cfg->n_layers; l++) {
        anvil_value n = anvil_net_rmsnorm(net, x, layer_name(w, l, "input_layernorm.weight"), eps);
        const int bias = cfg->attention_bias;
        anvil_value q = anvil_net_linear(net, n, layer_name(w, l, "self_attn.q_proj.weight"),
                                         bias ? layer_name(b, l, "self_attn.q_proj.bias") : NULL, q_width);
        anvil_value k = anvil_net_linear(net, n, layer_name(w, l, "self_attn.k_proj.weight"),
                                         bias ? layer_name(b, l, "self_attn.k_proj.bias") : NULL, kv_width);
        anvil_value v = anvil_net_linear(net, n, layer_name(w, l, "self_attn.v_proj.weight"),
                                         bias ? layer_name(b, l, "self_attn.v_proj.bias") : NULL, kv_width);
        if (cfg->qk_norm) {
            q = anvil_net_head_rmsnorm(net, q, layer_name(w, l, "self_attn.q_norm.weight"), hd, eps);
            k = anvil_net_head_rmsnorm(net, k, layer_name(w, l, "self_attn.k_norm.weight"), hd, eps);
        }
        q = anvil_net_rope(net, q, hd, &cfg->rope);
        k = anvil_net_rope(net, k, hd, &cfg->rope);
        anvil_attention_params ap = {
            .layer = (int32_t)l,
            .n_heads = (int32_t)cfg->n_heads,
            .n_kv_heads = (int32_t)cfg->n_kv_heads,
            .head_dim = (int32_t)hd,
            .sliding_window = (int32_t)cfg->sliding_window,
        };
        anvil_value a = anvil_net_attention(net, q, k, v, &ap);
        anvil_value o = anvil_net_linear(net, a, layer_name(w, l, "self_attn.o_proj.weight"),
                                         cfg->attention_out_bias ? layer_name(b, l, "self_attn.o_proj.bias")
                                                                 : NULL,
                                         hidden);
        x = anvil_net_add(net, x, o);

        n = anvil_net_rmsnorm(net, x, layer_name(w, l, "post_attention_layernorm.weight"), eps);
        if (anvil_model_moe_layer(cfg, l)) { /* Mixtral, Qwen MoE: the experts (moe.c) */
            x = anvil_net_add(net, x, anvil_model_moe_block(net, cfg, n, l));
            continue;
        }
        const int mb = cfg->mlp_bias;
        anvil_value g = anvil_net_linear(net, n, layer_name(w, l, "mlp.gate_proj.weight"),
                                         mb ? layer_name(b, l, "mlp.gate_proj.bias") : NULL,
                                         cfg->intermediate_size);
        anvil_value u = anvil_net_linear(net, n, layer_name(w, l, "mlp.up_proj.weight"),
                                         mb ? layer_name(b, l, "mlp.up_proj.bias") : NULL,
                                         cfg->intermediate_size);
        anvil_value d = anvil_net_linear(net, anvil_net_silu_mul(net, g, u),
                                         layer_name(w, l, "mlp.down_proj.weight"),
                                         mb ? layer_name(b, l, "mlp.down_proj.bias") : NULL, hidden);
        x = anvil_net_add(net, x, d);
    }
    /* Norm only the rows that need logits: the same result for them, less work. */
    anvil_value last = anvil_net_logit_rows(net, x);
    last = anvil_net_rmsnorm(net, last, "model.norm.weight", eps);
    const char *head = cfg->tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    anvil_value logits = anvil_net_linear(net, last, head, NULL, cfg->vocab_size);
    anvil_net_set_output(net, logits);
    return anvil_network_status(net);
}
