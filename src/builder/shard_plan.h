/*
 * Tensor parallelism: the network one rank of `size` runs (docs/parallel.md).
 *
 * The model file describes the whole model; anvil_network_shard rewrites
 * that network for rank `rank` before the build plan is made, so the plan,
 * the loader and the runtime see an ordinary network whose weights are
 * slices of the checkpoint tensors (recipes), plus the collective ops that
 * join the ranks' partial results:
 *
 *   - the linears whose outputs feed attention (q, k, v, through RoPE and
 *     head norms) are cut by output rows along heads: rank r takes query
 *     heads [r H/N, (r+1) H/N) and KV heads likewise (n_kv_heads < N: each
 *     rank takes the one KV head its query heads use, replicated);
 *   - the linears whose outputs feed the gated MLP's product (gate, up) are
 *     cut by output rows into N equal parts;
 *   - the linears that read those cut values (o_proj, down_proj) are cut by
 *     input columns, followed by an all_reduce (their bias on rank 0 only,
 *     so it is added once);
 *   - GPT-2's non-gated MLP likewise: the linear before the activation by
 *     output rows, the one after by input columns (Conv1D weights are
 *     transposes of their checkpoint tensors: rows and columns swap);
 *   - a mixture of experts: each expert's (and the shared experts')
 *     intermediate cut in N equal parts (gate/up rows, down columns; the
 *     router whole, so every rank routes alike), then an all_reduce;
 *   - multi-head latent attention (DeepSeek-V2): q's linear and the op's
 *     kv_b cut by output rows along heads, the latent and rope key whole
 *     (each rank caches the whole latent for its heads); the o_proj after
 *     it by input columns;
 *   - the embedding is cut by vocabulary rows (a lookup gives zeros for
 *     another rank's ids), followed by an all_reduce;
 *   - the LM head (the linear that makes the network's output) is cut by
 *     vocabulary rows, followed by an all_gather of the logits;
 *   - everything else (norms, residual adds, the router) is replicated.
 *
 * Weights keep their names (a tied LM head's slice is named
 * "<embedding>@lm_head"), so messages and the checkpoint checks read as
 * before.
 */
#ifndef ANVIL_BUILDER_SHARD_PLAN_H
#define ANVIL_BUILDER_SHARD_PLAN_H

#include <stdint.h>

#include "anvil/network.h"

/*
 * The network rank `rank` of `size` runs, in *out (NULL on failure). size 1
 * gives a copy. ANVIL_ERR_UNSUPPORTED names what cannot be cut: head counts
 * or widths that `size` does not divide, a KV head count that neither
 * divides nor is a multiple of `size`, an op this version cannot run on cut
 * values, a weight whose recipe cannot be sliced again (a concatenation, a
 * stack, a slice along the other axis).
 */
anvil_status anvil_network_shard(const anvil_network *net, int32_t rank, int32_t size, anvil_network **out);

/* The same, with the embedding cut by vocabulary (cut_embedding 1, as
 * anvil_network_shard) or kept whole on every rank (0: for a backend
 * without embedding_part). */
anvil_status anvil_network_shard_ex(const anvil_network *net, int32_t rank, int32_t size, int cut_embedding,
                                    anvil_network **out);

#endif
