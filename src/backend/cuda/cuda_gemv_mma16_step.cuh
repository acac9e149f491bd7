/*
 * One warp's step of the 16-bit tensor-core GEMV (cuda_gemv_mma16_quant.cu):
 * 16 bytes of two weight rows converted to f16 / bf16 pairs by the bit
 * tricks of cuda_gemv_mma16_map.h and multiplied with x on mma.sync
 * m16n8k16, and the fp8 W8A8 coding's division. Shared by that GEMV and the
 * streaming ones (cuda_gemv_stream.cuh: the dense GEMV and the moe
 * experts'), which load the same bytes their own way: one arithmetic.
 */
#ifndef ANVIL_CUDA_GEMV_MMA16_STEP_CUH
#define ANVIL_CUDA_GEMV_MMA16_STEP_CUH

#include <string.h>

#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_gemv_mma16_map.h"

/* ---------------------------------------------------------------- 16-bit types */

template <typename X> struct gw_h;
template <> struct gw_h<__half> {
    typedef __half2 h2;
    static constexpr int bf16 = 0;
};
template <> struct gw_h<__nv_bfloat16> {
    typedef __nv_bfloat162 h2;
    static constexpr int bf16 = 1;
};

template <typename H2> __device__ __forceinline__ H2 gw_as_h2(uint32_t u)
{
    H2 h;
    memcpy(&h, &u, 4);
    return h;
}
template <typename H2> __device__ __forceinline__ uint32_t gw_as_u32(H2 h)
{
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}
__device__ __forceinline__ __half2 gw_splat(float v, __half2 *)
{
    return __float2half2_rn(v);
}
__device__ __forceinline__ __nv_bfloat162 gw_splat(float v, __nv_bfloat162 *)
{
    return __float2bfloat162_rn(v);
}
__device__ __forceinline__ uint32_t gw_pack(float lo, float hi, __half *)
{
    return gw_as_u32(__floats2half2_rn(lo, hi));
}
__device__ __forceinline__ uint32_t gw_pack(float lo, float hi, __nv_bfloat16 *)
{
    return gw_as_u32(__floats2bfloat162_rn(lo, hi));
}

/* d += A B, m16n8k16, f32 accumulators */
__device__ __forceinline__ void gw_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                       __half *)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void gw_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                       __nv_bfloat16 *)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* ---------------------------------------------------------------- one lane's steps */

/* A lane's loads of one step: 16 bytes of rows g and g + 8, their scales
 * and zero points (of the lane's piece: the step's group for whole-step
 * groups). */
typedef struct gw_buf {
    uint4 w[2];
    float s[2];
    int z[2];
} gw_buf;

/* The A registers of mma m from row h's converted pairs: a0 = row g reg 0,
 * a1 = row g + 8 reg 0, a2 = row g reg 1, a3 = row g + 8 reg 1. */

/* acc += (the step's products) (x scale applied by the caller for fp8):
 * xg the lane's x row (int: global, X; fp8: shared codes, f16) at the
 * step's piece, null for rows past T. */
template <typename X, int S, bool FOLD>
__device__ __forceinline__ void gw_step(const gw_buf &b, const void *xg, float (&acc)[4])
{
    typedef typename gw_h<X>::h2 H2;
    typedef typename std::conditional<S == GMW_FP8, __half, X>::type M; /* the mma's operand type */
    constexpr int bf16 = gw_h<X>::bf16;
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const uint32_t w0[4] = {b.w[0].x, b.w[0].y, b.w[0].z, b.w[0].w};
    const uint32_t w1[4] = {b.w[1].x, b.w[1].y, b.w[1].z, b.w[1].w};
    /* x's 16-byte chunks of the lane's piece (int4: 4 of 8 elements; int8 / fp8: 2) */
    constexpr int XC = S == GMW_U4 ? 4 : 2;
    uint4 xv[XC];
#pragma unroll
    for (int c = 0; c < XC; c++)
        xv[c] = xg != nullptr ? reinterpret_cast<const uint4 *>(xg)[c] : make_uint4(0, 0, 0, 0);

    if constexpr (S == GMW_U4) {
        const float mv = gmw_u4_magic_value(bf16);
        const H2 sixteenth = gw_splat(0.0625f, (H2 *)nullptr);
        H2 zlo[2], zhi[2], sc[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            zlo[h] = gw_splat(mv + (float)b.z[h], (H2 *)nullptr);            /* M + z */
            zhi[h] = gw_splat(-(mv / 16.0f + (float)b.z[h]), (H2 *)nullptr); /* -(M / 16 + z) */
            sc[h] = gw_splat(b.s[h], (H2 *)nullptr);
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
                    H2 e = gmw_u4_scaled(q, bf16) ? __hfma2(gw_as_h2<H2>(p[h][q]), sixteenth, zhi[h])
                                                  : __hsub2(gw_as_h2<H2>(p[h][q]), zlo[h]);
                    if constexpr (FOLD)
                        e = __hmul2(e, sc[h]);
                    v[h][q] = gw_as_u32(e);
                }
            const uint32_t xw[4] = {xv[j].x, xv[j].y, xv[j].z, xv[j].w};
#pragma unroll
            for (int mm = 0; mm < 2; mm++) {
                const int m = 2 * j + mm;
                const uint32_t A[4] = {v[0][gmw_u4_pair_of(m, 0)], v[1][gmw_u4_pair_of(m, 0)],
                                       v[0][gmw_u4_pair_of(m, 1)], v[1][gmw_u4_pair_of(m, 1)]};
                gw_mma(d, A, gmw_u4_xpair(xw, m, 0), gmw_u4_xpair(xw, m, 1), (M *)nullptr);
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
                    v[h][0] = gw_as_u32(__half2(lo));
                    v[h][1] = gw_as_u32(__half2(hi));
                } else if constexpr (bf16) {
                    float f[4];
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        f[i] = __uint_as_float(gmw_i8_f32bits(wd, i)) - 8388736.0f; /* 2^23 + 128 */
                    v[h][0] = gw_pack(f[0], f[1], (X *)nullptr);
                    v[h][1] = gw_pack(f[2], f[3], (X *)nullptr);
                } else {
                    uint32_t p[2];
                    gmw_i8_pairs_f16(wd, p);
                    const H2 off = gw_splat(1152.0f, (H2 *)nullptr); /* 1024 + 128 */
                    v[h][0] = gw_as_u32(__hsub2(gw_as_h2<H2>(p[0]), off));
                    v[h][1] = gw_as_u32(__hsub2(gw_as_h2<H2>(p[1]), off));
                }
            }
            const uint32_t A[4] = {v[0][0], v[1][0], v[0][1], v[1][1]};
            gw_mma(d, A, xw[2 * m], xw[2 * m + 1], (M *)nullptr);
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

/* v / sx from r = fl(1 / sx): q = v r, then one Newton step on the
 * remainder (Markstein): the correctly rounded quotient but for rare
 * last-bit cases, which change an fp8 code only where v / sx lies within
 * an f32 ulp of a rounding midpoint of e4m3's 4-bit significand. Three
 * instructions instead of __fdiv_rn's ~15: every block codes all T x K of
 * x, which at T = 8 cost as much as its weight stream with __fdiv_rn. */
__device__ __forceinline__ float gw_div(float v, float sx, float r)
{
    if (isinf(r)) /* sx below 2^-126: no reciprocal (max|x| under ~5e-36) */
        return __fdiv_rn(v, sx);
    const float q = v * r;
    return fmaf(fmaf(-q, sx, v), r, q);
}

/* 8 values of x as their fp8 W8A8 codes, f16 pairs (exact): fp8(v / sx)
 * by gw_div (r = fl(1 / sx)), e4m3 round to nearest even, saturating; 0
 * where sx is 0 (a row of zeros). The one coding of every fp8 GEMV. */
__device__ __forceinline__ uint4 gw_code8(const float (&f)[8], float sx, float r)
{
    uint32_t o[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float q0 = sx > 0.0f ? gw_div(f[2 * i], sx, r) : 0.0f;
        const float q1 = sx > 0.0f ? gw_div(f[2 * i + 1], sx, r) : 0.0f;
        const __nv_fp8x2_storage_t c = __nv_cvt_float2_to_fp8x2(make_float2(q0, q1), __NV_SATFINITE, __NV_E4M3);
        o[i] = gw_as_u32(__half2(__nv_cvt_fp8x2_to_halfraw2(c, __NV_E4M3)));
    }
    return make_uint4(o[0], o[1], o[2], o[3]);
}

#endif
