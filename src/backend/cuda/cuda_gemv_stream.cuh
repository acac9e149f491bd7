/*
 * The device pieces of the streaming quantized GEMVs (the dense one,
 * cuda_gemv_stream_quant.cu, and the moe experts' one, cuda_moe_quant.cu):
 * one warp's mma16 step from 16 bytes of two weight rows (the 16-bit
 * tensor-core GEMV's gw_step, operand for operand, through the bit tricks
 * of cuda_gemv_mma16_map.h), 4-byte cp.async, and the fp8 W8A8 coding of
 * x's rows into shared memory.
 */
#ifndef ANVIL_CUDA_GEMV_STREAM_CUH
#define ANVIL_CUDA_GEMV_STREAM_CUH

#include <string.h>

#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_gemv_mma16_map.h"
#include "backend/cuda/cuda_gemv_stream_map.h"
#include "backend/cuda/cuda_mma.cuh"

/* ---------------------------------------------------------------- 16-bit helpers (as the mma16 GEMV's) */

template <typename X> struct gsq_h;
template <> struct gsq_h<__half> {
    typedef __half2 h2;
    static constexpr int bf16 = 0;
};
template <> struct gsq_h<__nv_bfloat16> {
    typedef __nv_bfloat162 h2;
    static constexpr int bf16 = 1;
};

template <typename H2> __device__ __forceinline__ H2 gsq_as_h2(uint32_t u)
{
    H2 h;
    memcpy(&h, &u, 4);
    return h;
}
template <typename H2> __device__ __forceinline__ uint32_t gsq_as_u32(H2 h)
{
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}
__device__ __forceinline__ __half2 gsq_splat(float v, __half2 *)
{
    return __float2half2_rn(v);
}
__device__ __forceinline__ __nv_bfloat162 gsq_splat(float v, __nv_bfloat162 *)
{
    return __float2bfloat162_rn(v);
}

/* 4 bytes global -> shared (zeros when !valid; src then not read but mapped) */
__device__ __forceinline__ void gsq_cp_async4(void *dst, const void *src, bool valid)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(anvil_smem_u32(dst)), "l"(src),
                 "r"(valid ? 4 : 0)
                 : "memory");
}

/* ---------------------------------------------------------------- one warp's step */

/* A lane's share of a step: 16 bytes of rows g and g + 8, their scales
 * and zero points. */
typedef struct gsq_buf {
    uint4 w[2];
    float s[2];
    int z[2];
} gsq_buf;

/* acc += the step's products (fp8: x scale and s[n] applied at the end):
 * xg the lane's x row (shared, 16-bit) at the step's piece, null for rows
 * past T. The mma16 GEMV's gw_step, operand for operand. */
template <typename X, int S, bool FOLD>
__device__ __forceinline__ void gsq_step(const gsq_buf &b, const void *xg, float (&acc)[4])
{
    typedef typename gsq_h<X>::h2 H2;
    typedef typename std::conditional<S == GMW_FP8, __half, X>::type M; /* the mma's operand type */
    constexpr int bf16 = gsq_h<X>::bf16;
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const uint32_t w0[4] = {b.w[0].x, b.w[0].y, b.w[0].z, b.w[0].w};
    const uint32_t w1[4] = {b.w[1].x, b.w[1].y, b.w[1].z, b.w[1].w};
    constexpr int XC = S == GMW_U4 ? 4 : 2; /* x's 16-byte chunks of the lane's piece */
    uint4 xv[XC];
#pragma unroll
    for (int c = 0; c < XC; c++)
        xv[c] = xg != nullptr ? reinterpret_cast<const uint4 *>(xg)[c] : make_uint4(0, 0, 0, 0);

    if constexpr (S == GMW_U4) {
        const float mv = gmw_u4_magic_value(bf16);
        const H2 sixteenth = gsq_splat(0.0625f, (H2 *)nullptr);
        H2 zlo[2], zhi[2], sc[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            zlo[h] = gsq_splat(mv + (float)b.z[h], (H2 *)nullptr);            /* M + z */
            zhi[h] = gsq_splat(-(mv / 16.0f + (float)b.z[h]), (H2 *)nullptr); /* -(M / 16 + z) */
            sc[h] = gsq_splat(b.s[h], (H2 *)nullptr);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t p[2][4];
            gmw_u4_pairs(w0[j], bf16, p[0]);
            gmw_u4_pairs(w1[j], bf16, p[1]);
            uint32_t v[2][4]; /* [row][pair]: v - z (times s with FOLD) */
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    H2 e = gmw_u4_scaled(q, bf16) ? __hfma2(gsq_as_h2<H2>(p[h][q]), sixteenth, zhi[h])
                                                  : __hsub2(gsq_as_h2<H2>(p[h][q]), zlo[h]);
                    if constexpr (FOLD)
                        e = __hmul2(e, sc[h]);
                    v[h][q] = gsq_as_u32(e);
                }
            const uint32_t xw[4] = {xv[j].x, xv[j].y, xv[j].z, xv[j].w};
#pragma unroll
            for (int mm = 0; mm < 2; mm++) {
                const int m = 2 * j + mm;
                const uint32_t A[4] = {v[0][gmw_u4_pair_of(m, 0)], v[1][gmw_u4_pair_of(m, 0)],
                                       v[0][gmw_u4_pair_of(m, 1)], v[1][gmw_u4_pair_of(m, 1)]};
                anvil_mma16816<M>(d, A, gmw_u4_xpair(xw, m, 0), gmw_u4_xpair(xw, m, 1));
            }
        }
    } else {
        const uint32_t xw[8] = {xv[0].x, xv[0].y, xv[0].z, xv[0].w, xv[1].x, xv[1].y, xv[1].z, xv[1].w};
#pragma unroll
        for (int m = 0; m < 4; m++) {
            uint32_t v[2][2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const uint32_t wd = h == 0 ? w0[m] : w1[m];
                if constexpr (S == GMW_FP8) {
                    const __half2_raw lo =
                        __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(wd & 0xffffu), __NV_E4M3);
                    const __half2_raw hi =
                        __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(wd >> 16), __NV_E4M3);
                    v[h][0] = gsq_as_u32(__half2(lo));
                    v[h][1] = gsq_as_u32(__half2(hi));
                } else if constexpr (bf16) {
                    float f[4];
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        f[i] = __uint_as_float(gmw_i8_f32bits(wd, i)) - 8388736.0f; /* 2^23 + 128 */
                    v[h][0] = anvil_pack2<X>(f[0], f[1]);
                    v[h][1] = anvil_pack2<X>(f[2], f[3]);
                } else {
                    uint32_t p[2];
                    gmw_i8_pairs_f16(wd, p);
                    const H2 off = gsq_splat(1152.0f, (H2 *)nullptr); /* 1024 + 128 */
                    v[h][0] = gsq_as_u32(__hsub2(gsq_as_h2<H2>(p[0]), off));
                    v[h][1] = gsq_as_u32(__hsub2(gsq_as_h2<H2>(p[1]), off));
                }
            }
            const uint32_t A[4] = {v[0][0], v[1][0], v[0][1], v[1][1]};
            anvil_mma16816<M>(d, A, xw[2 * m], xw[2 * m + 1]);
        }
    }
    if constexpr (S == GMW_FP8 || FOLD) {
#pragma unroll
        for (int i = 0; i < 4; i++)
            acc[i] += d[i];
    } else { /* the step's group scale: rows g (d0, d1) and g + 8 (d2, d3) */
        acc[0] = fmaf(d[0], b.s[0], acc[0]);
        acc[1] = fmaf(d[1], b.s[0], acc[1]);
        acc[2] = fmaf(d[2], b.s[1], acc[2]);
        acc[3] = fmaf(d[3], b.s[1], acc[3]);
    }
}

/* v / sx from r = fl(1 / sx), one Newton step: the mma16 GEMV's gw_div (its
 * comment says why, and when the last bit may differ from __fdiv_rn). */
__device__ __forceinline__ float gsq_div(float v, float sx, float r)
{
    if (isinf(r))
        return __fdiv_rn(v, sx);
    const float q = v * r;
    return fmaf(fmaf(-q, sx, v), r, q);
}

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
            uint32_t o[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float q0 = sx > 0.0f ? gsq_div(f[2 * i], sx, rs) : 0.0f;
                const float q1 = sx > 0.0f ? gsq_div(f[2 * i + 1], sx, rs) : 0.0f;
                const __nv_fp8x2_storage_t c =
                    __nv_cvt_float2_to_fp8x2(make_float2(q0, q1), __NV_SATFINITE, __NV_E4M3);
                o[i] = gsq_as_u32(__half2(__nv_cvt_fp8x2_to_halfraw2(c, __NV_E4M3)));
            }
            *reinterpret_cast<uint4 *>(xs + (size_t)r * ld + k) = make_uint4(o[0], o[1], o[2], o[3]);
        }
    }
    __syncthreads();
}

#endif
