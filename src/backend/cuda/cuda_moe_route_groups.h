/* DeepSeek-V2's MoE router on CUDA (cuda_moe_route_groups.cu): the top_k of
 * the topk_group best of G expert groups, weights times scale (0 or 1:
 * none), into topk_ids / topk_w [n_tok, k] as anvil_cuda_launch_moe_route
 * writes them. */
#ifndef ANVIL_BACKEND_CUDA_MOE_ROUTE_GROUPS_H
#define ANVIL_BACKEND_CUDA_MOE_ROUTE_GROUPS_H

#include "backend/cuda/cuda_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

anvil_status anvil_cuda_launch_moe_route_groups(cudaStream_t stream, const void *x, anvil_dtype act_dt,
                                                const void *router, anvil_dtype w_dt, int64_t n_tok, int64_t H,
                                                int32_t E, int32_t k, int norm, int32_t G, int32_t keep, float scale,
                                                int32_t *topk_ids, float *topk_w);

#ifdef __cplusplus
}
#endif
#endif
