/* Hugging Face "architectures" names to the builders that describe them. */
#include <stdio.h>
#include <string.h>

#include "anvil/network.h"
#include "core/error.h"
#include "models/models.h"

typedef struct model_entry {
    const char *architecture;
    anvil_model_build_fn build;
} model_entry;

static const model_entry registry[] = {
    {"LlamaForCausalLM", anvil_model_llama_build},
    {"MistralForCausalLM", anvil_model_llama_build},
    {"Qwen2ForCausalLM", anvil_model_llama_build},
    {"Qwen3ForCausalLM", anvil_model_llama_build},
    {"Phi3ForCausalLM", anvil_model_phi3_build},
    {"Gemma2ForCausalLM", anvil_model_gemma2_build},
    {"MixtralForCausalLM", anvil_model_llama_build},
    {"Qwen2MoeForCausalLM", anvil_model_llama_build},
    {"Qwen3MoeForCausalLM", anvil_model_llama_build},
    {"GPT2LMHeadModel", anvil_model_gpt2_build},
    {"DeepseekV2ForCausalLM", anvil_model_deepseek2_build},
};

#define N_MODELS (sizeof registry / sizeof registry[0])

anvil_status anvil_model_lookup(const char *architecture, anvil_model_build_fn *out)
{
    *out = NULL;
    for (size_t i = 0; i < N_MODELS; i++) {
        if (architecture && strcmp(architecture, registry[i].architecture) == 0) {
            *out = registry[i].build;
            return ANVIL_OK;
        }
    }
    char list[512] = "";
    size_t n = 0;
    for (size_t i = 0; i < N_MODELS && n < sizeof list; i++)
        n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "", registry[i].architecture);
    return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "unsupported architecture '%s' (supported: %s)",
                      architecture ? architecture : "(none)", list);
}

anvil_status anvil_model_build_network(const anvil_model_config *cfg, anvil_network **out)
{
    *out = NULL;
    /* every size the builders derive comes from a checked config, also when
     * the caller made it by hand */
    TRY(anvil_model_config_check(cfg));
    anvil_model_build_fn build;
    TRY(anvil_model_lookup(cfg->architecture, &build));
    anvil_network *net;
    TRY(anvil_network_create(&net));
    anvil_status st = build(cfg, net);
    if (st != ANVIL_OK) {
        anvil_network_free(net);
        return st;
    }
    *out = net;
    return ANVIL_OK;
}
