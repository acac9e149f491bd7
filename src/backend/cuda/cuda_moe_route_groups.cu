/*
 * DeepSeek-V2's MoE router on CUDA (backend.h, anvil_moe_args: n_group,
 * topk_group, routed_scale): one block a token, the logits a warp an
 * expert in f32, then thread 0 as the CPU's route_row (cpu_moe.c): softmax,
 * the groups outside the topk_group best (a group's best expert; the lower
 * group on ties) set to 0, the top_k (the lower expert on ties), divided by
 * their sum with norm, times the scale, ids ascending with their weights,
 * in the layout of anvil_moe_route_kernel (cuda_moe.cu), whose sort and
 * experts follow unchanged. Kept apart from that kernel while cuda_moe.cu
 * is being reworked (session 27); the two belong in one kernel.
 */
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_moe_route_groups.h"

#define ROUTE_THREADS 256

__device__ static float group_max(const float *p, int32_t n)
{
    float m = p[0];
    for (int32_t i = 1; i < n; i++)
        m = fmaxf(m, p[i]);
    return m;
}

template <typename T, typename TW>
__global__ void anvil_moe_route_groups_kernel(const T *x, const TW *router, int64_t H, int32_t E, int32_t k, int norm,
                                              int32_t G, int32_t keep, float scale, int32_t *topk_ids, float *topk_w)
{
    extern __shared__ float p[]; /* [E] */
    const int64_t t = blockIdx.x;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
    const T *xr = x + t * H;
    for (int32_t e = warp; e < E; e += n_warps) {
        const TW *wr = router + (int64_t)e * H;
        float acc = 0.0f;
        for (int64_t h = lane; h < H; h += 32)
            acc += anvil_to_f32(xr[h]) * anvil_to_f32(wr[h]);
        acc = anvil_warp_sum(acc);
        if (lane == 0)
            p[e] = acc;
    }
    __syncthreads();
    if (threadIdx.x != 0)
        return;
    float mx = p[0];
    for (int32_t e = 1; e < E; e++)
        mx = fmaxf(mx, p[e]);
    float sum = 0.0f;
    for (int32_t e = 0; e < E; e++) {
        p[e] = expf(p[e] - mx);
        sum += p[e];
    }
    for (int32_t e = 0; e < E; e++)
        p[e] /= sum;
    if (G > 1) { /* the last group kept, then every group below it zeroed */
        const int32_t n = E / G;
        int32_t last = 0;
        for (int32_t g = 0; g < G; g++) {
            const float m = group_max(p + g * n, n);
            int32_t rank = 0;
            for (int32_t h = 0; h < G; h++) {
                const float mh = group_max(p + h * n, n);
                rank += mh > m || (mh == m && h < g);
            }
            if (rank == keep - 1)
                last = g;
        }
        const float ml = group_max(p + last * n, n);
        for (int32_t g = 0; g < G; g++) {
            const float m = group_max(p + g * n, n);
            if (!(m > ml || (m == ml && g <= last)))
                for (int32_t i = 0; i < n; i++)
                    p[g * n + i] = 0.0f;
        }
    }
    int32_t *ids = topk_ids + t * k;
    float *w = topk_w + t * k;
    float wsum = 0.0f;
    for (int32_t j = 0; j < k; j++) {
        int32_t best = -1;
        for (int32_t e = 0; e < E; e++) {
            bool taken = false;
            for (int32_t q = 0; q < j; q++)
                taken |= ids[q] == e;
            if (!taken && (best < 0 || p[e] > p[best] || (isnan(p[best]) && !isnan(p[e]))))
                best = e;
        }
        ids[j] = best;
        w[j] = p[best];
        wsum += w[j];
    }
    if (norm)
        for (int32_t j = 0; j < k; j++)
            w[j] /= wsum;
    if (scale != 0.0f && scale != 1.0f)
        for (int32_t j = 0; j < k; j++)
            w[j] *= scale;
    for (int32_t j = 1; j < k; j++)
        for (int32_t q = j; q > 0 && ids[q - 1] > ids[q]; q--) {
            const int32_t ti = ids[q];
            ids[q] = ids[q - 1];
            ids[q - 1] = ti;
            const float tw = w[q];
            w[q] = w[q - 1];
            w[q - 1] = tw;
        }
}

extern "C" anvil_status anvil_cuda_launch_moe_route_groups(cudaStream_t stream, const void *x, anvil_dtype act_dt,
                                                           const void *router, anvil_dtype w_dt, int64_t n_tok,
                                                           int64_t H, int32_t E, int32_t k, int norm, int32_t G,
                                                           int32_t keep, float scale, int32_t *topk_ids,
                                                           float *topk_w)
{
    const int32_t groups = G > 1 ? G : 1;
    CHECK(n_tok > 0 && n_tok <= INT32_MAX && H > 0 && E > 0 && E <= 4096 && k > 0 && k <= E && E % groups == 0 &&
              (groups == 1 || (keep >= 1 && keep <= groups && (int64_t)keep * (E / groups) >= k)),
          ANVIL_ERR_INVALID_ARG, "moe route (groups): %lld tokens, %d experts in %d groups keeping %d, top %d",
          (long long)n_tok, E, G, keep, k);
    const size_t smem = (size_t)E * sizeof(float);
#define ROUTE_LAUNCH(TW_)                                                                                  \
    ANVIL_CUDA_DISPATCH(act_dt, anvil_moe_route_groups_kernel<T, TW_><<<(unsigned)n_tok, ROUTE_THREADS, smem, \
                                                                         stream>>>(                        \
                                    (const T *)x, (const TW_ *)router, H, E, k, norm, groups, keep, scale, topk_ids, topk_w))
    if (w_dt == ANVIL_DTYPE_F32)
        ROUTE_LAUNCH(float);
    else if (w_dt == ANVIL_DTYPE_BF16)
        ROUTE_LAUNCH(__nv_bfloat16);
    else if (w_dt == ANVIL_DTYPE_F16)
        ROUTE_LAUNCH(__half);
    else
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "moe route (groups): router dtype %s", anvil_dtype_name(w_dt));
#undef ROUTE_LAUNCH
    return ANVIL_CUDA_LAUNCHED("moe route (groups) kernel");
}
