/* The builders of each architecture family (one file each) for the registry. */
#ifndef ANVIL_MODELS_MODELS_H
#define ANVIL_MODELS_MODELS_H

#include "anvil/network.h"

/* LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, and with moe.c's
 * expert layers MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM */
anvil_status anvil_model_llama_build(const anvil_model_config *cfg, anvil_network *net);

/* Phi3ForCausalLM: fused qkv_proj and gate_up_proj, sliced by recipes */
anvil_status anvil_model_phi3_build(const anvil_model_config *cfg, anvil_network *net);

/* Gemma2ForCausalLM: (1 + w) norms around attention and MLP, GELU-tanh,
 * soft caps, alternating sliding and full layers */
anvil_status anvil_model_gemma2_build(const anvil_model_config *cfg, anvil_network *net);

/* GPT2LMHeadModel: LayerNorms with biases, learned positions, GELU MLP,
 * Conv1D (transposed) weights read through transpose recipes */
anvil_status anvil_model_gpt2_build(const anvil_model_config *cfg, anvil_network *net);

/* DeepseekV2ForCausalLM: multi-head latent attention (anvil_net_mla),
 * dense first layers, then moe.c's experts with DeepSeek's router */
anvil_status anvil_model_deepseek2_build(const anvil_model_config *cfg, anvil_network *net);

/* moe.c: the mixture-of-experts block of llama.c's decoder (Mixtral,
 * Qwen2-MoE, Qwen3-MoE) and of deepseek2.c's. moe_layer: whether layer's
 * MLP is the experts (decoder_sparse_step, mlp_only_layers,
 * first_k_dense_replace); moe_block: the op over n, its
 * stacked weights declared by recipes. */
int anvil_model_moe_layer(const anvil_model_config *cfg, int64_t layer);
anvil_value anvil_model_moe_block(anvil_network *net, const anvil_model_config *cfg, anvil_value n, int64_t layer);

#endif
