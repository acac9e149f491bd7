/*
 * GPT-2 (GPT2LMHeadModel), as transformers' modeling_gpt2 computes it:
 *   x = wte(ids) + wpe(positions)        (learned absolute positions, no RoPE)
 * per layer, with LayerNorms that have a weight and a bias:
 *   x = x + attn.c_proj(attention(q, k, v)),  q|k|v = attn.c_attn(ln_1(x))
 *   x = x + mlp.c_proj(gelu_tanh(mlp.c_fc(ln_2(x))))
 * attention: plain multi-head (no GQA), scale 1/sqrt(head_dim), biases on
 * c_attn and c_proj; then ln_f and the LM head, tied to wte.
 *
 * The checkpoint's linear layers are Conv1D: weights stored [in, out], the
 * transpose of nn.Linear's [out, in] that anvil's linear takes. Transpose
 * recipes (anvil_net_weight_transpose) turn them around at build time, and
 * cut the fused c_attn [H, 3H] into q, k and v (its bias [3H] by slices).
 *
 * Names are save_pretrained's ("transformer.h.0.attn.c_attn.weight"); the
 * original gpt2 checkpoint has them without "transformer.", which the
 * checkpoint lookup accepts too (src/io/checkpoint.c).
 */
#include <stdint.h>
#include <stdio.h>

#include "anvil/network.h"
#include "core/error.h"
#include "models/models.h"

#define NAME_MAX_LEN 128

/* "transformer.h.<i>.<suffix>" into buf. */
static const char *layer_name(char *buf, int64_t layer, const char *suffix)
{
    snprintf(buf, NAME_MAX_LEN, "transformer.h.%lld.%s", (long long)layer, suffix);
    return buf;
}

/* A Conv1D layer's [out, in] weight: columns [start, start + out) of the
 * checkpoint's [in, n] tensor `src`, declared under `name` in buf. */
static const char *conv1d_weight(anvil_network *net, char *buf, int64_t layer, const char *name, const char *src,
                                 int64_t start)
{
    char s[NAME_MAX_LEN];
    layer_name(s, layer, src);
    anvil_net_weight_transpose(net, layer_name(buf, layer, name), s, start);
    return buf;
}

/* The rows [start, start + out) of a Conv1D bias `src` (q, k, v of c_attn's). */
static const char *bias_slice(anvil_network *net, char *buf, int64_t layer, const char *name, const char *src,
                              int64_t start)
{
    char s[NAME_MAX_LEN];
    layer_name(s, layer, src);
    anvil_net_weight_slice(net, layer_name(buf, layer, name), s, 0, start);
    return buf;
}

anvil_status anvil_model_gpt2_build(const anvil_model_config *cfg, anvil_network *net)
{
    /* the family rules give GPT-2 these; a config that names
     * GPT2LMHeadModel with another model_type might not */
    CHECK(cfg->attention_bias && cfg->attention_out_bias && cfg->mlp_bias && !cfg->qk_norm &&
              cfg->n_kv_heads == cfg->n_heads && cfg->sliding_window == 0 && cfg->hidden_act == ANVIL_ACT_GELU_TANH &&
              cfg->head_dim * cfg->n_heads == cfg->hidden_size,
          ANVIL_ERR_UNSUPPORTED,
          "gpt2: model_type \"%s\" does not describe GPT-2 (biases everywhere, no GQA, no window, gelu_new, "
          "head_dim = n_embd / n_head)",
          cfg->model_type);
    /* the config's bounds keep these small (hidden <= 65536, layers <= 1024) */
    const int64_t hidden = cfg->hidden_size, inter = cfg->intermediate_size;
    const double eps = cfg->rms_norm_eps; /* layer_norm_epsilon */
    char w[NAME_MAX_LEN], b[NAME_MAX_LEN];

    anvil_value x = anvil_net_embedding(net, "transformer.wte.weight", cfg->vocab_size, hidden);
    x = anvil_net_pos_embedding(net, x, "transformer.wpe.weight", cfg->max_position_embeddings);
    for (int64_t l = 0; l < cfg->n_layers; l++) {
        anvil_value n = anvil_net_layernorm(net, x, layer_name(w, l, "ln_1.weight"), layer_name(b, l, "ln_1.bias"),
                                            eps);
        anvil_value qkv[3];
        static const char *const parts[3] = {"q", "k", "v"};
        for (int j = 0; j < 3; j++) {
            char wn[32], bn[32];
            snprintf(wn, sizeof wn, "attn.%s_proj.weight", parts[j]);
            snprintf(bn, sizeof bn, "attn.%s_proj.bias", parts[j]);
            qkv[j] = anvil_net_linear(net, n, conv1d_weight(net, w, l, wn, "attn.c_attn.weight", j * hidden),
                                      bias_slice(net, b, l, bn, "attn.c_attn.bias", j * hidden), hidden);
        }
        anvil_attention_params ap = {
            .layer = (int32_t)l,
            .n_heads = (int32_t)cfg->n_heads,
            .n_kv_heads = (int32_t)cfg->n_heads,
            .head_dim = (int32_t)cfg->head_dim,
        };
        anvil_value a = anvil_net_attention(net, qkv[0], qkv[1], qkv[2], &ap);
        anvil_value o = anvil_net_linear(net, a, conv1d_weight(net, w, l, "attn.o_proj.weight", "attn.c_proj.weight", 0),
                                         layer_name(b, l, "attn.c_proj.bias"), hidden);
        x = anvil_net_add(net, x, o);

        n = anvil_net_layernorm(net, x, layer_name(w, l, "ln_2.weight"), layer_name(b, l, "ln_2.bias"), eps);
        anvil_value h = anvil_net_linear(net, n, conv1d_weight(net, w, l, "mlp.fc.weight", "mlp.c_fc.weight", 0),
                                         layer_name(b, l, "mlp.c_fc.bias"), inter);
        h = anvil_net_gelu_tanh(net, h);
        anvil_value d = anvil_net_linear(net, h, conv1d_weight(net, w, l, "mlp.proj.weight", "mlp.c_proj.weight", 0),
                                         layer_name(b, l, "mlp.c_proj.bias"), hidden);
        x = anvil_net_add(net, x, d);
    }
    /* Norm only the rows that need logits: the same result for them, less work. */
    anvil_value last = anvil_net_logit_rows(net, x);
    last = anvil_net_layernorm(net, last, "transformer.ln_f.weight", "transformer.ln_f.bias", eps);
    /* lm_head is an nn.Linear ([vocab, n_embd], not Conv1D) when untied */
    const char *head = cfg->tie_word_embeddings ? "transformer.wte.weight" : "lm_head.weight";
    anvil_value logits = anvil_net_linear(net, last, head, NULL, cfg->vocab_size);
    anvil_net_set_output(net, logits);
    return anvil_network_status(net);
}
