/* The builders of each architecture family (one file each) for the registry. */
#ifndef ANVIL_MODELS_MODELS_H
#define ANVIL_MODELS_MODELS_H

#include "anvil/network.h"

/* LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM */
anvil_status anvil_model_llama_build(const anvil_model_config *cfg, anvil_network *net);

/* Phi3ForCausalLM: fused qkv_proj and gate_up_proj, sliced by recipes */
anvil_status anvil_model_phi3_build(const anvil_model_config *cfg, anvil_network *net);

/* Gemma2ForCausalLM: (1 + w) norms around attention and MLP, GELU-tanh,
 * soft caps, alternating sliding and full layers */
anvil_status anvil_model_gemma2_build(const anvil_model_config *cfg, anvil_network *net);

/* GPT2LMHeadModel: LayerNorms with biases, learned positions, GELU MLP,
 * Conv1D (transposed) weights read through transpose recipes */
anvil_status anvil_model_gpt2_build(const anvil_model_config *cfg, anvil_network *net);

#endif
