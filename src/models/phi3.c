/*
 * Phi-3 (Phi3ForCausalLM: Phi-3 mini/medium 4k and 128k, Phi-3.5 mini): the
 * Llama decoder (llama.c) over fused checkpoint tensors, as transformers'
 * modeling_phi3 computes it:
 *   - q, k and v are the rows [0, q), [q, q + kv), [q + kv, q + 2 kv) of
 *     self_attn.qkv_proj.weight [q + 2 kv, hidden];
 *   - gate and up are the first and second halves of the rows of
 *     mlp.gate_up_proj.weight [2 intermediate, hidden]
 *     (up_states.chunk(2, dim=-1): gate first), SiLU on gate;
 *   - no biases, no q/k norms; attention scale 1 / sqrt(head_dim); RoPE
 *     default or LongRoPE (the 128k models: io/model_config.c);
 *     sliding_window from the config (Phi-3 mini 4k: 2047); resid_pdrop and
 *     embd_pdrop are training-only.
 * The slices are recipes (anvil/network.h), named as Llama's tensors are,
 * and the three (two) linears of one input stay adjacent, so the build plan
 * stores q/k/v (gate/up) back to back as one tensor again: exactly the
 * checkpoint's rows, one GEMM.
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

anvil_status anvil_model_phi3_build(const anvil_model_config *cfg, anvil_network *net)
{
    /* the config's family rules give Phi-3 none of these; a config that
     * names Phi3ForCausalLM with another model_type might */
    CHECK(!cfg->attention_bias && !cfg->attention_out_bias && !cfg->mlp_bias && !cfg->qk_norm, ANVIL_ERR_UNSUPPORTED,
          "phi3: biases or q/k norms (model_type \"%s\") are not part of Phi-3", cfg->model_type);
    /* checked as llama.c does: the config's bounds keep them small */
    const int64_t hidden = cfg->hidden_size, hd = cfg->head_dim, inter = cfg->intermediate_size;
    int64_t q_width, kv_width;
    CHECK(anvil_mul_i64_ok(cfg->n_heads, hd, &q_width) && anvil_mul_i64_ok(cfg->n_kv_heads, hd, &kv_width) &&
              q_width <= INT32_MAX && cfg->sliding_window <= INT32_MAX && cfg->n_layers <= INT32_MAX,
          ANVIL_ERR_UNSUPPORTED, "phi3: %lld heads x head_dim %lld is too large", (long long)cfg->n_heads,
          (long long)hd);
    const double eps = cfg->rms_norm_eps;
    char w[NAME_MAX_LEN], src[NAME_MAX_LEN];

    anvil_value x = anvil_net_embedding(net, "model.embed_tokens.weight", cfg->vocab_size, hidden);
    for (int64_t l = 0; l < cfg->n_layers; l++) {
        anvil_value n = anvil_net_rmsnorm(net, x, layer_name(w, l, "input_layernorm.weight"), eps);
        layer_name(src, l, "self_attn.qkv_proj.weight");
        anvil_net_weight_slice(net, layer_name(w, l, "self_attn.q_proj.weight"), src, 0, 0);
        anvil_net_weight_slice(net, layer_name(w, l, "self_attn.k_proj.weight"), src, 0, q_width);
        anvil_net_weight_slice(net, layer_name(w, l, "self_attn.v_proj.weight"), src, 0, q_width + kv_width);
        anvil_value q = anvil_net_linear(net, n, layer_name(w, l, "self_attn.q_proj.weight"), NULL, q_width);
        anvil_value k = anvil_net_linear(net, n, layer_name(w, l, "self_attn.k_proj.weight"), NULL, kv_width);
        anvil_value v = anvil_net_linear(net, n, layer_name(w, l, "self_attn.v_proj.weight"), NULL, kv_width);
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
        anvil_value o = anvil_net_linear(net, a, layer_name(w, l, "self_attn.o_proj.weight"), NULL, hidden);
        x = anvil_net_add(net, x, o);

        n = anvil_net_rmsnorm(net, x, layer_name(w, l, "post_attention_layernorm.weight"), eps);
        layer_name(src, l, "mlp.gate_up_proj.weight");
        anvil_net_weight_slice(net, layer_name(w, l, "mlp.gate_proj.weight"), src, 0, 0);
        anvil_net_weight_slice(net, layer_name(w, l, "mlp.up_proj.weight"), src, 0, inter);
        anvil_value g = anvil_net_linear(net, n, layer_name(w, l, "mlp.gate_proj.weight"), NULL, inter);
        anvil_value u = anvil_net_linear(net, n, layer_name(w, l, "mlp.up_proj.weight"), NULL, inter);
        anvil_value d = anvil_net_linear(net, anvil_net_silu_mul(net, g, u), layer_name(w, l, "mlp.down_proj.weight"),
                                         NULL, hidden);
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
