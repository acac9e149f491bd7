/*
 * The mixture-of-experts block of the Llama-family decoder (llama.c calls
 * it for the layers whose MLP is sparse): Mixtral, Qwen2-MoE and Qwen3-MoE.
 *
 *   out = moe(n): softmax router, top-k, each token's experts'
 *         down(silu(gate(n)) * up(n)) weighted and summed
 *         (+ sigmoid(shared_expert_gate(n)) * shared_expert(n), Qwen2-MoE)
 *
 * Checkpoints store each expert's matrices apart; the op takes them stacked
 * (include/anvil/network.h, anvil_net_moe), so the recipes below concatenate
 * them: gate_up [E * 2I, H] as gate_0, up_0, gate_1, up_1, ..., down
 * [E * H, I] as down_0, down_1, ...; the builder then stores each stack as
 * one tensor.
 *
 *   Mixtral:   model.layers.L.block_sparse_moe.{gate, experts.E.{w1, w3, w2}}  (w1 gate, w3 up, w2 down)
 *   Qwen MoE:  model.layers.L.mlp.{gate, experts.E.{gate,up,down}_proj,
 *              shared_expert.{gate,up,down}_proj, shared_expert_gate}
 *   DeepSeek-V2: model.layers.L.mlp.{gate, experts.E.{gate,up,down}_proj,
 *              shared_experts.{gate,up,down}_proj} (no gate on the shared
 *              experts; the router's groups and scale in anvil_moe_params)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/network.h"
#include "core/error.h"
#include "models/models.h"

#define NAME_LEN 160

int anvil_model_moe_layer(const anvil_model_config *cfg, int64_t layer)
{
    if (cfg->n_experts <= 0 || cfg->decoder_sparse_step <= 0 || layer < cfg->first_k_dense_replace)
        return 0;
    const int dense = (cfg->mlp_only_layers[layer / 64] >> (layer % 64)) & 1;
    return !dense && (layer + 1) % cfg->decoder_sparse_step == 0;
}

/* Declares `name` as the concatenation (axis 0) of the n names in srcs
 * (NAME_LEN apart). */
static void stack(anvil_network *net, const char *name, const char *srcs, int32_t n, const char **ptrs)
{
    for (int32_t i = 0; i < n; i++)
        ptrs[i] = srcs + (size_t)i * NAME_LEN;
    anvil_net_weight_concat(net, name, 0, ptrs, n);
}

anvil_value anvil_model_moe_block(anvil_network *net, const anvil_model_config *cfg, anvil_value n, int64_t layer)
{
    const int mixtral = strcmp(cfg->model_type, "mixtral") == 0;
    const int deepseek = strcmp(cfg->model_type, "deepseek_v2") == 0;
    const char *shared_pre = deepseek ? "shared_experts" : "shared_expert";
    const int32_t E = cfg->n_experts;
    const char *pre = mixtral ? "block_sparse_moe" : "mlp";
    const char *g_name = mixtral ? "w1" : "gate_proj", *u_name = mixtral ? "w3" : "up_proj";
    const char *d_name = mixtral ? "w2" : "down_proj";
    char *srcs = malloc((size_t)(2 * E) * NAME_LEN);
    const char **ptrs = malloc((size_t)(2 * E) * sizeof *ptrs);
    if (srcs == NULL || ptrs == NULL) {
        free(srcs);
        free(ptrs);
        /* an op with a NULL weight name records the failure in the network */
        anvil_error_set(ANVIL_ERR_OOM, __FILE__, __LINE__, "out of memory for %d experts' names", E);
        return anvil_net_moe(net, n, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    }
    char router[NAME_LEN], gate_up[NAME_LEN], down[NAME_LEN];
    char sgu[NAME_LEN], sdown[NAME_LEN], sgate[NAME_LEN];
    const long long l = (long long)layer;
    snprintf(router, sizeof router, "model.layers.%lld.%s.gate.weight", l, pre);
    for (int32_t e = 0; e < E; e++) {
        snprintf(srcs + (size_t)(2 * e) * NAME_LEN, NAME_LEN, "model.layers.%lld.%s.experts.%d.%s.weight", l, pre, e,
                 g_name);
        snprintf(srcs + (size_t)(2 * e + 1) * NAME_LEN, NAME_LEN, "model.layers.%lld.%s.experts.%d.%s.weight", l,
                 pre, e, u_name);
    }
    /* (not checkpoint names: the stacks the builder makes) */
    snprintf(gate_up, sizeof gate_up, "model.layers.%lld.%s.experts.stacked_gate_up", l, pre);
    stack(net, gate_up, srcs, 2 * E, ptrs);
    for (int32_t e = 0; e < E; e++)
        snprintf(srcs + (size_t)e * NAME_LEN, NAME_LEN, "model.layers.%lld.%s.experts.%d.%s.weight", l, pre, e,
                 d_name);
    snprintf(down, sizeof down, "model.layers.%lld.%s.experts.stacked_down", l, pre);
    stack(net, down, srcs, E, ptrs);
    const int shared = cfg->shared_expert_intermediate_size > 0;
    if (shared) {
        snprintf(srcs, NAME_LEN, "model.layers.%lld.mlp.%s.gate_proj.weight", l, shared_pre);
        snprintf(srcs + NAME_LEN, NAME_LEN, "model.layers.%lld.mlp.%s.up_proj.weight", l, shared_pre);
        snprintf(sgu, sizeof sgu, "model.layers.%lld.mlp.%s.stacked_gate_up", l, shared_pre);
        stack(net, sgu, srcs, 2, ptrs);
        snprintf(sdown, sizeof sdown, "model.layers.%lld.mlp.%s.down_proj.weight", l, shared_pre);
        snprintf(sgate, sizeof sgate, "model.layers.%lld.mlp.shared_expert_gate.weight", l);
    }
    free(srcs);
    free(ptrs);
    const anvil_moe_params p = {
        .n_experts = E,
        .top_k = cfg->n_experts_per_tok,
        .inter = cfg->moe_intermediate_size,
        .shared_inter = cfg->shared_expert_intermediate_size,
        .norm_topk_prob = cfg->norm_topk_prob,
        .n_group = cfg->moe_n_group > 1 ? cfg->moe_n_group : 0,
        .topk_group = cfg->moe_n_group > 1 ? cfg->moe_topk_group : 0,
        .routed_scale = cfg->routed_scaling_factor == 1.0 ? 0.0f : (float)cfg->routed_scaling_factor,
        .shared_ungated = deepseek && shared,
    };
    return anvil_net_moe(net, n, router, gate_up, down, shared ? sgu : NULL, shared ? sdown : NULL,
                         shared && !deepseek ? sgate : NULL, &p);
}
