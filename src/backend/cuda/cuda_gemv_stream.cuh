/*
 * The device pieces of the streaming quantized GEMVs (the dense one,
 * cuda_gemv_stream_quant.cu, and the moe experts' one, cuda_moe_quant.cu)
 * beside the step they share with the 16-bit tensor-core GEMV
 * (cuda_gemv_mma16_step.cuh: gw_buf, gw_step, gw_div): 4-byte cp.async, and
 * the fp8 W8A8 coding of x's rows into shared memory.
 */
#ifndef ANVIL_CUDA_GEMV_STREAM_CUH
#define ANVIL_CUDA_GEMV_STREAM_CUH

#include <string.h>

#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_gemv_mma16_map.h"
#include "backend/cuda/cuda_gemv_mma16_step.cuh"
#include "backend/cuda/cuda_gemv_stream_map.h"
#include "backend/cuda/cuda_mma.cuh"

/* 4 bytes global -> shared (zeros when !valid; src then not read but mapped) */
__device__ __forceinline__ void gsq_cp_async4(void *dst, const void *src, bool valid)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(anvil_smem_u32(dst)), "l"(src),
                 "r"(valid ? 4 : 0)
                 : "memory");
}

/* ---------------------------------------------------------------- fp8 W8A8: x's codes */

/* fp8 W8A8: rows[r] (r < T, K elements of XT each): sx (sxs [8]; dynamic:
 * max|x| / 448 over the row, static: input_scale; 0 for a row of zeros)
 * and the codes fp8(x / sx) as f16 into xs [T][K + GSQ_XPAD], as the mma16
 * GEMV's gw_quant_fp8 and the CPU make them. redm [warps][8]. Every thread
 * of the block calls it (barriers inside). */
template <typename XT>
__device__ void gsq_code_rows(const XT *const *rows, int T, int K, int act, float input_scale, uint16_t *xs,
                              float *sxs, float *redm)
{
    const int nthr = blockDim.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int ld = K + GSQ_XPAD;
    if (act == ANVIL_QUANT_ACT_FP8_DYNAMIC) {
        for (int r = 0; r < T; r++) {
            const XT *xr = rows[r];
            float m = 0.0f;
            for (int k = 8 * threadIdx.x; k < K; k += 8 * nthr) {
                float f[8];
                anvil_load_vec<XT, 8>(xr + k, f);
#pragma unroll
                for (int i = 0; i < 8; i++)
                    m = fmaxf(m, fabsf(f[i]));
            }
            m = anvil_warp_max(m);
            if (lane == 0)
                redm[warp * 8 + r] = m;
        }
        __syncthreads();
        if (threadIdx.x < T) {
            float m = 0.0f;
            for (int i = 0; i < nthr / 32; i++)
                m = fmaxf(m, redm[i * 8 + threadIdx.x]);
            const float sx = __fdiv_rn(m, 448.0f);
            sxs[threadIdx.x] = sx > 0.0f ? sx : 0.0f;
        }
    } else if (threadIdx.x < T) {
        sxs[threadIdx.x] = input_scale > 0.0f ? input_scale : 0.0f;
    }
    __syncthreads();
    for (int r = 0; r < T; r++) {
        const XT *xr = rows[r];
        const float sx = sxs[r], rs = sx > 0.0f ? __frcp_rn(sx) : 0.0f;
        for (int k = 8 * threadIdx.x; k < K; k += 8 * nthr) {
            float f[8];
            anvil_load_vec<XT, 8>(xr + k, f);
            *reinterpret_cast<uint4 *>(xs + (size_t)r * ld + k) = gw_code8(f, sx, rs);
        }
    }
    __syncthreads();
}

#endif
