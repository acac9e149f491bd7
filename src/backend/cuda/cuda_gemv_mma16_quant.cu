/*
 * The quantized GEMV on tensor cores with 16-bit operands, for the few rows
 * of a decode step (T = 1..8): the weight converted to f16 / bf16 in
 * registers, two elements an instruction, and one mma.sync m16n8k16 (f32
 * accumulators) per 16 columns of 16 weight rows, x as B (its T rows the
 * mma's n8). Issue 15: at one row the SIMT GEMV (cuda_gemv_quant.cu) spends
 * 3-4 f32 instructions an element (int4: 7-8 a byte), which bounds it by
 * the issue rate near 40% of an H100's bandwidth; here an int4 element
 * costs about 1.3 instructions and the T rows ride along in the mma.
 *
 * Arithmetic (docs/quantization.md):
 *   int8 / int4 weight-only: x as it is (bf16 or f16: the activation
 *     dtype), v - z exact in 16 bits (magic numbers, cuda_gemv_mma16_map.h),
 *     the products exact in the mma, summed in f32 over a step (64 bytes of
 *     a row: 128 int4 / 64 int8 columns), times the group's scale s in f32
 *     where the group holds whole steps (int4 groups of 128, per channel;
 *     int8 per channel or groups of 64). int4 groups of 32 / 64 fold s into
 *     the converted weight instead: fl16((v - z) * fl16(s)), about the
 *     dequantizing path's rounding (W in the activation dtype).
 *   fp8 W8A8 (per-channel weight scales; activations dynamic or static per
 *     row): x' codes fp8(x / sx) (round to nearest even, saturating; sx =
 *     max|x| / 448 or the input scale) as the CPU makes them, made by each
 *     block into shared memory as f16 (exact), the weight's e4m3 codes to
 *     f16 (exact, cvt.rn.f16x2.e4m3x2), the mma's products exact and summed
 *     in f32 (an f16 mma's accumulation; not the fp8 mma's ~14 bits), then
 *     times sx, times s[n]: the W8A8 definition, as vLLM and TensorRT-LLM
 *     keep it (no weight-only shortcut: x is rounded to fp8).
 *
 * Work: a block takes one tile of 16 weight rows, its 8 warps split K into
 * contiguous ranges of steps and sum their partial results in shared
 * memory at the end, in a fixed order. gate/up with the silu: blocks of 16
 * warps, the gate tile on warps 0-7 and the up tile of the same rows on
 * 8-15, each split as a plain tile is, so that the fused launch gives the
 * separate matmuls' numbers bit for bit. q/k/v: the parts' tiles one after
 * the other in the grid.
 *
 * Bytes in flight: a lane keeps GW_U = 4 steps of its two rows loading
 * (16 bytes each: 128 bytes a lane, 4 KB a warp), refilling a step's
 * registers as soon as it is used; two plain int4 blocks an SM (~100
 * registers), three of int8 / fp8 (85): 64-96 KB an SM, against the ~40 KB
 * an H100 needs (3 TB/s x ~1.7 us over 132 SMs). Scales and zero points
 * are loaded with their step.
 *
 * Measured (H100, session 27, one row, Llama-3-8B shapes): int4 g128
 * 1496-1958 GB/s (49-65% of copy; the SIMT GEMV 1018-1595), int8
 * 1696-2910, W8A8 1671-2971 (the SIMT GEMV with its preparation 827-1773).
 * What is left: a tile is a block's whole life (one round of loads at
 * K = 4096 int4), so blocks ramp up and drain one by one, and tiles that
 * do not fill whole waves (q/k/v's 384 on 264 int4 slots) leave SMs idle.
 *
 * Dependent launch (docs/cuda-backend.md): the first GW_U steps of weights,
 * scales and zero points are loaded before anvil_pdl_wait, x after.
 */
#include <string.h>

#include "backend/cuda/cuda_gemv.cuh"
#include "backend/cuda/cuda_gemv_mma16_map.h"
#include "backend/cuda/cuda_gemv_mma16_quant.h"

#define GW_KS        8 /* warps splitting a tile's K */
#define GW_U         4 /* steps of loads in flight a lane */
#define GW_MAX_ROWS  8 /* x rows: the mma's n8 */
#define GW_MAX_PARTS 4
#define GW_STEP      64 /* bytes of a weight row a step */
#define GW_XPAD      8  /* halves after each shared row of x codes (fp8): rows 16 bytes apart in the banks */

typedef struct gw_args {
    const uint8_t *w[GW_MAX_PARTS];
    const float *scales[GW_MAX_PARTS];
    const uint8_t *zeros[GW_MAX_PARTS];
    const void *bias[GW_MAX_PARTS];
    int bias_dt[GW_MAX_PARTS];
    void *out[GW_MAX_PARTS];
    int N[GW_MAX_PARTS];
    int tile_end[GW_MAX_PARTS]; /* tiles of parts 0..i together */
    int n_parts;
    const void *x;
    int act; /* fp8: ANVIL_QUANT_ACT_FP8_DYNAMIC or _STATIC */
    float input_scale;
    int K, gs, G; /* G: scales a row */
    int T;        /* 1..8 */
} gw_args;

/* shared memory: fp8's x codes [T][K + GW_XPAD] halves, then the rows' sx
 * [8], the warps' row maxima [16][8], the warps' partial sums
 * [slots][GW_KS][16][8] */
static __host__ __device__ size_t gw_xcode_bytes(int scheme, int T, int64_t K)
{
    return scheme == GMW_FP8 ? ((size_t)T * (size_t)(K + GW_XPAD) * 2 + 15) / 16 * 16 : 0;
}
static size_t gw_smem_bytes(int scheme, int T, int64_t K, int slots)
{
    return gw_xcode_bytes(scheme, T, K) + (8 + 16 * 8) * sizeof(float) +
           (size_t)slots * GW_KS * 16 * 8 * sizeof(float);
}

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
__device__ __forceinline__ __half2 gw_splat(float v, __half2 *) { return __float2half2_rn(v); }
__device__ __forceinline__ __nv_bfloat162 gw_splat(float v, __nv_bfloat162 *) { return __float2bfloat162_rn(v); }
__device__ __forceinline__ uint32_t gw_pack(float lo, float hi, __half *)
{
    return gw_as_u32(__floats2half2_rn(lo, hi));
}
__device__ __forceinline__ uint32_t gw_pack(float lo, float hi, __nv_bfloat16 *)
{
    return gw_as_u32(__floats2bfloat162_rn(lo, hi));
}

/* d += A B, m16n8k16, f32 accumulators */
__device__ __forceinline__ void gw_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, __half *)
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

/* The lane's rows (NULL past N) */
typedef struct gw_rows {
    const uint8_t *w[2];
    const float *sc[2];
    const uint8_t *z[2]; /* int4: NULL, zero point 8 */
} gw_rows;

template <int S> __device__ __forceinline__ void gw_load(gw_buf &b, const gw_rows &rw, const gw_args &a, int st, int t)
{
    const int pe = gmw_piece_elems(S);
    const int64_t k0 = (int64_t)st * gmw_step_elems(S) + pe * t; /* the piece's first column */
    const int grp = (int)(k0 / a.gs);
#pragma unroll
    for (int h = 0; h < 2; h++) {
        if (rw.w[h] != nullptr) {
            b.w[h] = anvil_ld_stream16(rw.w[h] + (int64_t)st * GW_STEP + 16 * t);
            b.s[h] = __ldg(rw.sc[h] + grp);
            b.z[h] = S == GMW_U4 && rw.z[h] != nullptr ? (int)__ldg(rw.z[h] + grp) : 8;
        } else {
            b.w[h] = make_uint4(0, 0, 0, 0);
            b.s[h] = 0.0f;
            b.z[h] = 8;
        }
    }
}

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
            zlo[h] = gw_splat(mv + (float)b.z[h], (H2 *)nullptr);         /* M + z */
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
                    const __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(wd & 0xffffu), __NV_E4M3);
                    const __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(wd >> 16), __NV_E4M3);
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

/* ---------------------------------------------------------------- fp8: x codes */

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

/* Each row of x: sx (dynamic: max|x| / 448 by the block; static: the input
 * scale), then its codes fp8(x / sx) as f16 into xc [T][K + GW_XPAD]; sxs
 * [8] the rows' sx (0 for a row of zeros, whose codes are 0), as the CPU. */
template <typename X> __device__ void gw_quant_fp8(const gw_args &a, __half *xc, float *sxs, float *redm)
{
    const int nthr = blockDim.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (a.act == ANVIL_QUANT_ACT_FP8_DYNAMIC) {
        for (int r = 0; r < a.T; r++) {
            const X *xr = (const X *)a.x + (int64_t)r * a.K;
            float m = 0.0f;
            for (int k = 8 * threadIdx.x; k < a.K; k += 8 * nthr) {
                float f[8];
                anvil_load_vec<X, 8>(xr + k, f);
#pragma unroll
                for (int i = 0; i < 8; i++)
                    m = fmaxf(m, fabsf(f[i]));
            }
            m = anvil_warp_max(m);
            if (lane == 0)
                redm[warp * 8 + r] = m;
        }
        __syncthreads();
        if (threadIdx.x < a.T) {
            float m = 0.0f;
            for (int i = 0; i < nthr / 32; i++)
                m = fmaxf(m, redm[i * 8 + threadIdx.x]);
            const float sx = __fdiv_rn(m, 448.0f);
            sxs[threadIdx.x] = sx > 0.0f ? sx : 0.0f;
        }
    } else if (threadIdx.x < a.T) {
        sxs[threadIdx.x] = a.input_scale > 0.0f ? a.input_scale : 0.0f;
    }
    __syncthreads();
    for (int r = 0; r < a.T; r++) {
        const X *xr = (const X *)a.x + (int64_t)r * a.K;
        const float sx = sxs[r], rs = sx > 0.0f ? __frcp_rn(sx) : 0.0f;
        for (int k = 8 * threadIdx.x; k < a.K; k += 8 * nthr) {
            float f[8];
            anvil_load_vec<X, 8>(xr + k, f);
            uint32_t o[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float q0 = sx > 0.0f ? gw_div(f[2 * i], sx, rs) : 0.0f;
                const float q1 = sx > 0.0f ? gw_div(f[2 * i + 1], sx, rs) : 0.0f;
                const __nv_fp8x2_storage_t c = __nv_cvt_float2_to_fp8x2(make_float2(q0, q1), __NV_SATFINITE, __NV_E4M3);
                o[i] = gw_as_u32(__half2(__nv_cvt_fp8x2_to_halfraw2(c, __NV_E4M3)));
            }
            *reinterpret_cast<uint4 *>(xc + (size_t)r * (a.K + GW_XPAD) + k) = make_uint4(o[0], o[1], o[2], o[3]);
        }
    }
    __syncthreads();
}

/* ---------------------------------------------------------------- the kernel */

/* SL: tile slots a block (1; 2: gate on warps 0-7, up on 8-15). Blocks an
 * SM: int8 / fp8 fit three plain blocks in 85 registers without spills
 * (q/k/v's 384 tiles then run in one wave on 132 SMs); int4 needs ~100
 * (it spilled ~150 bytes at 85): two. */
#define GW_MIN_BLOCKS(S, SL, MB3) ((SL) == 1 ? ((S) == GMW_U4 && !(MB3) ? 2 : 3) : 1)
template <typename X, int S, bool FOLD, int SL, bool MB3 = false>
__global__ void __launch_bounds__(SL * GW_KS * 32, GW_MIN_BLOCKS(S, SL, MB3)) anvil_gemv_mma16_quant_kernel(gw_args a)
{
    extern __shared__ __align__(16) uint8_t gw_smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int slot = warp / GW_KS, ks = warp % GW_KS;

    /* this warp's tile: part p, rows n0.. (silu: part = slot, the gate's tile index) */
    const int tile = blockIdx.x;
    int p = 0;
    if (SL == 1)
        while (p + 1 < a.n_parts && tile >= a.tile_end[p])
            p++;
    else
        p = slot;
    const int n0 = (SL == 1 ? tile - (p > 0 ? a.tile_end[p - 1] : 0) : tile) * 16;
    const int64_t rb = S == GMW_U4 ? a.K / 2 : a.K; /* bytes a weight row */
    gw_rows rw;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int n = n0 + g + 8 * h;
        const bool in = n < a.N[p];
        rw.w[h] = in ? a.w[p] + (int64_t)n * rb : nullptr;
        rw.sc[h] = in ? a.scales[p] + (int64_t)n * a.G : nullptr;
        rw.z[h] = in && a.zeros[p] != nullptr ? a.zeros[p] + (int64_t)n * a.G : nullptr;
    }

    /* this warp's steps [s0, s1) */
    const int steps = (int)(rb / GW_STEP);
    const int s0 = (int)((int64_t)steps * ks / GW_KS), s1 = (int)((int64_t)steps * (ks + 1) / GW_KS);

    gw_buf bf[GW_U];
#pragma unroll
    for (int u = 0; u < GW_U; u++)
        if (s0 + u < s1)
            gw_load<S>(bf[u], rw, a, s0 + u, t); /* weights: before the wait */

    anvil_pdl_wait();
    anvil_pdl_launch();

    const size_t xcb = gw_xcode_bytes(S, a.T, a.K);
    __half *xc = reinterpret_cast<__half *>(gw_smem);
    float *sxs = reinterpret_cast<float *>(gw_smem + xcb);
    float *redm = sxs + 8;
    float *red = redm + 16 * 8; /* [SL][GW_KS][16][8] */
    if constexpr (S == GMW_FP8)
        gw_quant_fp8<X>(a, xc, sxs, redm);

    /* this lane's B column: x row g, at the step's piece */
    const bool xin = g < a.T;
    const int pe = gmw_piece_elems(S), se = gmw_step_elems(S);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int s = s0; s < s1; s += GW_U) {
#pragma unroll
        for (int u = 0; u < GW_U; u++) {
            const int st = s + u;
            if (st < s1) {
                const int64_t k = (int64_t)st * se + pe * t;
                const void *xg = nullptr;
                if (xin)
                    xg = S == GMW_FP8 ? (const void *)(xc + (size_t)g * (a.K + GW_XPAD) + k)
                                      : (const void *)((const X *)a.x + (int64_t)g * a.K + k);
                gw_step<X, S, FOLD>(bf[u], xg, acc);
                if (st + GW_U < s1)
                    gw_load<S>(bf[u], rw, a, st + GW_U, t);
            }
        }
    }

    /* the warps' partial sums: red[slot][ks][row][col], D's layout */
    float *rwp = red + (size_t)(slot * GW_KS + ks) * 128;
    rwp[g * 8 + 2 * t] = acc[0];
    rwp[g * 8 + 2 * t + 1] = acc[1];
    rwp[(g + 8) * 8 + 2 * t] = acc[2];
    rwp[(g + 8) * 8 + 2 * t + 1] = acc[3];
    __syncthreads();

    /* one thread an output (row i, x row r): the K splits summed in order */
    for (int o = threadIdx.x; o < 128; o += blockDim.x) {
        const int i = o / 8, r = o % 8;
        int op = 0;
        if (SL == 1)
            while (op + 1 < a.n_parts && tile >= a.tile_end[op])
                op++;
        const int n = (SL == 1 ? tile - (op > 0 ? a.tile_end[op - 1] : 0) : tile) * 16 + i;
        if (r >= a.T || n >= a.N[op])
            continue;
        float v = 0.0f, v2 = 0.0f;
        for (int k = 0; k < GW_KS; k++) {
            v += red[k * 128 + i * 8 + r];
            if (SL == 2)
                v2 += red[(GW_KS + k) * 128 + i * 8 + r];
        }
        if constexpr (S == GMW_FP8) {
            const float sxr = sxs[r];
            v = __fmul_rn(__fmul_rn(v, sxr), __ldg(a.scales[op] + n));
            if (SL == 2)
                v2 = __fmul_rn(__fmul_rn(v2, sxr), __ldg(a.scales[1] + n));
        }
        const float b = a.bias[op] != nullptr ? anvil_load_any(a.bias[op], a.bias_dt[op], n) : 0.0f;
        X *out = (X *)a.out[op];
        if (SL == 1) {
            out[(int64_t)r * a.N[op] + n] = anvil_from_f32<X>(v + b);
        } else {
            /* as matmul + matmul + silu_mul: each product rounded to X first */
            const float b2 = a.bias[1] != nullptr ? anvil_load_any(a.bias[1], a.bias_dt[1], n) : 0.0f;
            const float gv = anvil_to_f32(anvil_from_f32<X>(v + b));
            const float uv = anvil_to_f32(anvil_from_f32<X>(v2 + b2));
            out[(int64_t)r * a.N[op] + n] = anvil_from_f32<X>(gv / (1.0f + expf(-gv)) * uv);
        }
    }
}

/* ---------------------------------------------------------------- launcher */

static int gw_scheme(anvil_dtype dt) { return dt == ANVIL_DTYPE_I8 ? GMW_I8 : dt == ANVIL_DTYPE_U4 ? GMW_U4 : GMW_FP8; }

/* int4 groups of whole steps (128 columns) scale after the mma; smaller ones fold */
static int gw_fold(const anvil_cuda_qweight *w) { return w->dt == ANVIL_DTYPE_U4 && w->gs % 128 != 0; }

static size_t gw_smem_limit(void)
{
    int dev = 0, optin = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
        cudaGetLastError();
        return 48 * 1024;
    }
    return (size_t)optin;
}

extern "C" int anvil_cuda_gemv_mma16_quant_ok(const anvil_cuda_qweight *w, int act, int sm, const int32_t *perm,
                                              const void *x, anvil_dtype x_dt, int64_t T)
{
    if (T < 1 || T > GW_MAX_ROWS || (x_dt != ANVIL_DTYPE_BF16 && x_dt != ANVIL_DTYPE_F16) || perm != NULL ||
        sm < 80 || w->K <= 0 || w->gs <= 0 || w->K % w->gs != 0)
        return 0;
    if (w->dt == ANVIL_DTYPE_F8_E4M3) {
        /* W8A8 per channel; weight-only fp8 stays on the SIMT GEMV (x is not rounded to fp8 there) */
        if (act == ANVIL_QUANT_ACT_NONE || w->gs != w->K)
            return 0;
    } else if (w->dt == ANVIL_DTYPE_I8) {
        if (act != ANVIL_QUANT_ACT_NONE || w->gs % 64 != 0)
            return 0;
    } else if (w->dt == ANVIL_DTYPE_U4) {
        if (act != ANVIL_QUANT_ACT_NONE || w->gs % 32 != 0)
            return 0;
    } else {
        return 0;
    }
    const int scheme = gw_scheme(w->dt);
    return w->K % gmw_step_elems(scheme) == 0 && w->K <= INT32_MAX / 2 && w->N > 0 && w->N <= INT32_MAX / 4 &&
           anvil_aligned16(w->w) && anvil_aligned16(x) &&
           gw_smem_bytes(scheme, (int)T, w->K, 2) <= gw_smem_limit();
}

/* raises the kernel's dynamic shared memory limit once per device */
template <typename X, int S, bool FOLD, int SL, bool MB3> static anvil_status gw_set_smem(void)
{
    static int done[16];
    int dev = 0;
    TRY(anvil_cuda_status(cudaGetDevice(&dev), "cudaGetDevice", __FILE__, __LINE__));
    if (dev >= 0 && dev < 16 && __atomic_load_n(&done[dev], __ATOMIC_ACQUIRE))
        return ANVIL_OK;
    TRY(anvil_cuda_status(cudaFuncSetAttribute(anvil_gemv_mma16_quant_kernel<X, S, FOLD, SL, MB3>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gw_smem_limit()),
                          "gemv (quantized, 16-bit tensor cores): shared memory limit", __FILE__, __LINE__));
    if (dev >= 0 && dev < 16)
        __atomic_store_n(&done[dev], 1, __ATOMIC_RELEASE);
    return ANVIL_OK;
}

template <typename X, int S, bool FOLD, int SL, bool MB3 = false>
static anvil_status gw_launch(cudaStream_t stream, int pdl, const gw_args &a, unsigned blocks)
{
    const size_t smem = gw_smem_bytes(S, a.T, a.K, SL);
    if (smem > 48 * 1024)
        TRY((gw_set_smem<X, S, FOLD, SL, MB3>()));
    anvil_launch(anvil_gemv_mma16_quant_kernel<X, S, FOLD, SL, MB3>, dim3(blocks), SL * GW_KS * 32, smem, stream,
                 pdl, a);
    return ANVIL_CUDA_LAUNCHED("gemv (quantized, 16-bit tensor cores) kernel");
}

/* mb3: int4's plain kernel at three blocks an SM (the knob gemv_quant_tiles = 3) */
template <typename X, int S, bool FOLD>
static anvil_status gw_launch_sl(cudaStream_t stream, int pdl, const gw_args &a, int silu, int mb3, unsigned blocks)
{
    if (silu)
        return gw_launch<X, S, FOLD, 2>(stream, pdl, a, blocks);
    if (S == GMW_U4 && mb3)
        return gw_launch<X, S, FOLD, 1, true>(stream, pdl, a, blocks);
    return gw_launch<X, S, FOLD, 1>(stream, pdl, a, blocks);
}

template <typename X>
static anvil_status gw_launch_scheme(cudaStream_t stream, int pdl, int scheme, int fold, const gw_args &a, int silu,
                                     int mb3, unsigned blocks)
{
    if (scheme == GMW_I8)
        return gw_launch_sl<X, GMW_I8, false>(stream, pdl, a, silu, 0, blocks);
    if (scheme == GMW_U4)
        return fold ? gw_launch_sl<X, GMW_U4, true>(stream, pdl, a, silu, mb3, blocks)
                    : gw_launch_sl<X, GMW_U4, false>(stream, pdl, a, silu, mb3, blocks);
    return gw_launch_sl<X, GMW_FP8, false>(stream, pdl, a, silu, 0, blocks);
}

extern "C" anvil_status anvil_cuda_launch_gemv_mma16_quant(const anvil_cuda_gemv_mma_call *c)
{
    const int n_parts = c->n_parts;
    CHECK(n_parts >= 1 && n_parts <= GW_MAX_PARTS && (!c->silu || n_parts == 2), ANVIL_ERR_INVALID_ARG,
          "gemv (quantized, 16-bit tensor cores): %d parts (1..%d; 2 with silu)", n_parts, GW_MAX_PARTS);
    CHECK(c->T >= 1 && c->T <= GW_MAX_ROWS, ANVIL_ERR_INVALID_ARG,
          "gemv (quantized, 16-bit tensor cores): %lld rows (1..%d)", (long long)c->T, GW_MAX_ROWS);
    CHECK(!c->silu || c->w[0].N == c->w[1].N, ANVIL_ERR_INVALID_ARG,
          "gemv silu (quantized, 16-bit tensor cores): gate %lld and up %lld rows", (long long)c->w[0].N,
          (long long)c->w[1].N);
    gw_args a;
    memset(&a, 0, sizeof a);
    int64_t tiles = 0;
    for (int i = 0; i < n_parts; i++) {
        const anvil_cuda_qweight *w = &c->w[i];
        CHECK(anvil_cuda_gemv_mma16_quant_ok(w, c->act, c->sm, c->perm, c->x, c->x_dt, c->T), ANVIL_ERR_UNSUPPORTED,
              "gemv (quantized, 16-bit tensor cores): %s [%lld, %lld], group %lld, %lld rows of %s (K a multiple "
              "of 128 int4 / 64 int8 and fp8 columns, no perm, 16-byte aligned, shared memory)",
              anvil_dtype_name(w->dt), (long long)w->N, (long long)w->K, (long long)w->gs, (long long)c->T,
              anvil_dtype_name(c->x_dt));
        CHECK(w->dt == c->w[0].dt && w->K == c->w[0].K && w->gs == c->w[0].gs, ANVIL_ERR_INVALID_ARG,
              "gemv (quantized, 16-bit tensor cores): parts of different layouts");
        CHECK(c->bias[i] == NULL || anvil_cuda_is_float_dtype(c->bias_dt[i]), ANVIL_ERR_UNSUPPORTED,
              "gemv (quantized, 16-bit tensor cores): bias dtype %s", anvil_dtype_name(c->bias_dt[i]));
        CHECK(w->scales != NULL, ANVIL_ERR_INVALID_ARG, "gemv (quantized, 16-bit tensor cores): no scales");
        tiles += (w->N + 15) / 16;
        CHECK(tiles <= INT32_MAX / 8, ANVIL_ERR_UNSUPPORTED, "gemv (quantized, 16-bit tensor cores): %lld tiles",
              (long long)tiles);
        a.w[i] = (const uint8_t *)w->w;
        a.scales[i] = w->scales;
        a.zeros[i] = w->dt == ANVIL_DTYPE_U4 ? w->zeros : nullptr;
        a.bias[i] = c->bias[i];
        a.bias_dt[i] = c->bias[i] != NULL ? (int)c->bias_dt[i] : 0;
        a.out[i] = c->out[i];
        a.N[i] = (int)w->N;
        a.tile_end[i] = (int)tiles;
    }
    const int scheme = gw_scheme(c->w[0].dt), fold = gw_fold(&c->w[0]);
    a.n_parts = n_parts;
    a.x = c->x;
    a.act = c->act;
    a.input_scale = c->input_scale;
    a.K = (int)c->w[0].K;
    a.gs = (int)c->w[0].gs;
    a.G = (int)(c->w[0].K / c->w[0].gs);
    a.T = (int)c->T;
    const unsigned blocks = (unsigned)(c->silu ? a.tile_end[0] : a.tile_end[n_parts - 1]);
    const int mb3 = c->tiles_knob == 3;
    if (c->x_dt == ANVIL_DTYPE_BF16)
        return gw_launch_scheme<__nv_bfloat16>(c->stream, c->pdl, scheme, fold, a, c->silu, mb3, blocks);
    return gw_launch_scheme<__half>(c->stream, c->pdl, scheme, fold, a, c->silu, mb3, blocks);
}
