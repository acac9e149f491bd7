/*
 * The quantized GEMV on tensor cores, for the few rows of a decode step
 * (T = 1..8): int8 and int4 weights times int8 activations, fp8 weights
 * times fp8 activations (W8A8), one mma.sync m16n8k32 per 32 columns of 16
 * weight rows, with no per-weight conversion to float.
 *
 * Definitions (docs/quantization.md; the CPU's, so that decode on the GPU
 * gives the CPU's numbers up to the order of f32 sums):
 *   int8 / int4: each row of x' (x permuted by perm) quantized per block of
 *     32 columns, d = max|x'| / 127, q = rint(x' * (1 / d)) (0 when d = 0),
 *     as the CPU's anvil_cpu_quant_prep_q8; per block the exact integer
 *     dot sum q (v - z) (u8 x s8 mma for int4, then - z sum q; s8 x s8 for
 *     int8), scaled by fl(d s) and summed in f32.
 *   fp8 W8A8: sx = max|x'| / 448 (dynamic) or the input scale (static),
 *     codes fp8(x' / sx) (round to nearest even, saturating); the mma of
 *     the codes in f32 (products exact), times sx, times s[n]. The mma's
 *     result is added to the running f32 sum per k32 (C = 0 in the mma):
 *     Hopper's fp8 tensor cores keep fewer bits than f32 when they
 *     accumulate (DeepSeek-V3's report, about 14), so a chain of mmas over
 *     K would lose precision the CPU does not.
 * fp8 weight-only (act none) and every other layout stay on the SIMT
 * kernel (cuda_gemv_quant.cu).
 *
 * Work: a block of 8 warps takes MT tiles of 16 weight rows (MT = 1; 2 or
 * 4 through the knob gemv_quant_tiles, see the launcher); the 8 / MT warps
 * of a tile split K into contiguous ranges of 64-column steps and
 * sum their partial results in shared memory at the end, in a fixed order.
 * The fragment mapping and its loads: cuda_gemv_mma_quant_map.h.
 *
 * Activations are quantized by every block itself, into shared memory,
 * instead of by a kernel before (one dependent launch less per matmul, four
 * a layer): the block reads x from L2 (T x K x 2 bytes of bf16), so the L2
 * traffic grows by that per block. Blocks of MT tiles read 16 MT x K x b
 * weight bytes (b = 1 for int8 / fp8, 1/2 for int4): x is 2 T / (16 MT b)
 * of the block's weight bytes: at T = 1 and MT = 1, 12.5% (int8, fp8) and
 * 25% (int4) more bytes, from L2 (about 2.5x the DRAM bandwidth on an H100:
 * 5-10% of the time, overlapped with the weight stream: worth a launch of
 * ~2-3 us, four a layer). At T = 8 it is 8 times as much (100% / 200%) and
 * a "quantize once" kernel (cuda_quant_act.cu writing codes and d, the
 * GEMV reading them) would be cheaper; MT = 4 (the knob) divides it by 4.
 *
 * Bytes in flight: a lane keeps U = 4 steps of loads in flight (int8 and
 * fp8: 4 x 32 bytes, 4 KB a warp; int4 4 x 16 bytes, 2 KB a warp; twice
 * that for gate/up), two blocks of 8 warps an SM (at most 128 registers a
 * thread, __launch_bounds__): 64 KB an SM for int8/fp8, 32 KB for int4,
 * against the ~25-40 KB an H100 needs (3.35 TB/s x ~1 us over 132 SMs).
 * (int4 at U = 8 spilled 136 bytes at 128 registers.)
 *
 * Predicted time per shape (Llama-3-8B, weight bytes only, at 3.0 TB/s on
 * an H100 and 4.3 TB/s on an H200; scales add K/gs x 4 (+1) bytes a row):
 *   shape (N x K)           int8/fp8 bytes  us H100/H200   int4 bytes  us H100/H200
 *   qkv 6144 x 4096           25.2 MB        8.4 / 5.9      12.6 MB     4.2 / 2.9
 *   gate+up 2x14336 x 4096   117.4 MB       39.1 / 27.3     58.7 MB    19.6 / 13.7
 *   o 4096 x 4096             16.8 MB        5.6 / 3.9       8.4 MB     2.8 / 2.0
 *   down 4096 x 14336         58.7 MB       19.6 / 13.7     29.4 MB     9.8 / 6.8
 *   LM head 128256 x 4096    525.3 MB      175.1 / 122.2   262.7 MB    87.6 / 61.1
 * a layer (qkv + gate/up + o + down) 218 MB int8 / fp8 (72.7 us H100), 109 MB
 * int4 (36.3 us), against 436 MB of bf16 (145 us): 32 layers 2.3 ms (int8)
 * and 1.2 ms (int4) against 4.65 ms, plus the LM head and attention.
 *
 * Dependent launch (docs/cuda-backend.md): each warp's first U steps of
 * weights are loaded before anvil_pdl_wait, x after.
 */
#include <string.h>

#include "backend/cuda/cuda_gemv.cuh"
#include "backend/cuda/cuda_gemv_mma_quant_map.h"

#define GM_WARPS     8
#define GM_THREADS   (GM_WARPS * 32)
#define GM_MAX_ROWS  8 /* x rows: the mma's n8 */
#define GM_MAX_PARTS 4
#define GM_STEP      64 /* columns a step */

template <int S> struct gm_cfg {
    static constexpr int U = 4; /* steps of loads in flight (int4 at 8: 136 bytes of spills at 128 registers) */
};

/* bytes after each shared x row, so that the 8 rows' B loads of a warp fall
 * in different banks (8-byte loads: 32; 16-byte loads: 64) */
static __host__ __device__ int gm_pad(int scheme) { return scheme == GMQ_FP8 ? 64 : 32; }

typedef struct gm_args {
    const uint8_t *w[GM_MAX_PARTS];
    const float *scales[GM_MAX_PARTS];
    const uint8_t *zeros[GM_MAX_PARTS];
    const void *bias[GM_MAX_PARTS];
    int bias_dt[GM_MAX_PARTS];
    void *out[GM_MAX_PARTS];
    int N[GM_MAX_PARTS];
    int tile_end[GM_MAX_PARTS]; /* tiles of parts 0..i together */
    int n_parts;
    int silu; /* parts 0 (gate) and 1 (up), one N: out[0] = silu(x W0^T + b0) * (x W1^T + b1) */
    const void *x;
    const int32_t *perm; /* NULL or [K] */
    int *err;
    int act; /* fp8: ANVIL_QUANT_ACT_FP8_DYNAMIC or _STATIC */
    float input_scale;
    int K, gs, G; /* G: scales a row */
    int T;        /* 1..8 */
    int MT;       /* tiles a block (1, 2, 4) */
    int xs;       /* bytes a shared x row (K + pad) */
} gm_args;

/* shared memory: x codes [T][xs], then per block of 32 columns the rows' d
 * and sum q ([K / 32][8] floats and ints; int) or the rows' sx ([8]; fp8),
 * then the warps' partial sums [GM_WARPS][2][16][8] */
static size_t gm_smem_bytes(int scheme, int T, int64_t K)
{
    const size_t xs = (size_t)K + (size_t)gm_pad(scheme);
    const size_t meta = scheme == GMQ_FP8 ? 8 * sizeof(float) : (size_t)(K / 32) * 8 * 2 * sizeof(float);
    return (size_t)T * xs + meta + (size_t)GM_WARPS * 2 * 16 * 8 * sizeof(float);
}

__device__ __forceinline__ uint2 gm_ld8(const uint8_t *p)
{
    uint2 r;
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];\n" : "=r"(r.x), "=r"(r.y) : "l"(p));
    return r;
}

__device__ __forceinline__ void gm_mma_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%10,%10,%10};\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
}

__device__ __forceinline__ void gm_mma_u8s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%10,%10,%10};\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
}

__device__ __forceinline__ void gm_mma_e4m3(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%10,%10,%10};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.0f));
#else
    (void)a, (void)b0, (void)b1; /* not launched before sm_89 (the launcher's check) */
    d[0] = d[1] = d[2] = d[3] = 0.0f;
#endif
}

/* (float)i for |i| < 2^22, exactly, without I2F (a quarter of the FMA
 * rate): 1.5 * 2^23 + i as f32 bits. A block's sum is at most
 * 32 x 127 x 255 in magnitude. */
__device__ __forceinline__ float gm_i2f(int i) { return __int_as_float(0x4B400000 + i) - 12582912.0f; }

/* x'[r][k] as f32 (perm applied; an entry outside [0, K) reads 0 and flags) */
template <typename X> __device__ __forceinline__ float gm_xval(const gm_args &a, const X *xr, int k)
{
    if (a.perm == nullptr)
        return anvil_to_f32(xr[k]);
    const int32_t p = a.perm[k];
    if (p < 0 || p >= a.K) {
        anvil_flag(a.err, ANVIL_CUDA_BAD_PERM);
        return 0.0f;
    }
    return anvil_to_f32(xr[p]);
}

/* int8 / int4: every (row, block of 32) of x' quantized as the CPU does,
 * codes at gmq_x_pos, d and sum q per block and row (rows T..7: zeros). */
template <typename X, int S> __device__ void gm_quant_int(const gm_args &a, uint8_t *xq, float *dq, int *sq)
{
    const int NB = a.K / 32;
    for (int u = threadIdx.x; u < NB * GM_MAX_ROWS; u += GM_THREADS) {
        const int r = u / NB, b = u - r * NB;
        if (r >= a.T) {
            dq[b * 8 + r] = 0.0f;
            sq[b * 8 + r] = 0;
            continue;
        }
        const X *xr = (const X *)a.x + (int64_t)r * a.K;
        float v[32];
        if (a.perm == nullptr) {
#pragma unroll
            for (int c = 0; c < 4; c++) {
                float f[8];
                anvil_load_vec<X, 8>(xr + 32 * b + 8 * c, f);
#pragma unroll
                for (int i = 0; i < 8; i++)
                    v[8 * c + i] = f[i];
            }
        } else {
            for (int i = 0; i < 32; i++)
                v[i] = gm_xval<X>(a, xr, 32 * b + i);
        }
        float amax = 0.0f;
#pragma unroll
        for (int i = 0; i < 32; i++)
            amax = fabsf(v[i]) > amax ? fabsf(v[i]) : amax;
        const float d = __fdiv_rn(amax, 127.0f), id = d > 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
        uint32_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int sum = 0;
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const float rr = rintf(__fmul_rn(v[i], id));
            const int q = rr > 127.0f ? 127 : rr < -127.0f ? -127 : rr == rr ? (int)rr : 0;
            sum += q;
            /* position within the block (the step's block b & 1 adds 32, the block's own start) */
            const int pos = gmq_x_pos(S, i); /* i < 32: block 0 of a step */
            words[pos >> 2] |= ((uint32_t)q & 0xffu) << (8 * (pos & 3));
        }
        uint4 *dst = reinterpret_cast<uint4 *>(xq + (size_t)r * a.xs + 32 * b);
        dst[0] = make_uint4(words[0], words[1], words[2], words[3]);
        dst[1] = make_uint4(words[4], words[5], words[6], words[7]);
        dq[b * 8 + r] = d;
        sq[b * 8 + r] = sum;
    }
}

/* fp8: each row's sx (a block reduction for dynamic), then its codes */
template <typename X> __device__ void gm_quant_fp8(const gm_args &a, uint8_t *xq, float *sxs, float *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int r = 0; r < GM_MAX_ROWS; r++) {
        if (r >= a.T) {
            if (threadIdx.x == 0)
                sxs[r] = 0.0f;
            continue;
        }
        const X *xr = (const X *)a.x + (int64_t)r * a.K;
        float sx = a.input_scale;
        if (a.act == ANVIL_QUANT_ACT_FP8_DYNAMIC) {
            float m = 0.0f;
            for (int k = threadIdx.x; k < a.K; k += GM_THREADS)
                m = fmaxf(m, fabsf(gm_xval<X>(a, xr, k)));
            m = anvil_warp_max(m);
            if (lane == 0)
                red[warp] = m;
            __syncthreads();
            m = 0.0f;
#pragma unroll
            for (int i = 0; i < GM_WARPS; i++)
                m = fmaxf(m, red[i]);
            __syncthreads(); /* red is reused by the next row */
            sx = __fdiv_rn(m, 448.0f);
        }
        /* a row of zeros (or too small to scale) stays zeros, as on the CPU */
        const bool zero = !(sx > 0.0f);
        for (int k = threadIdx.x; k < a.K; k += GM_THREADS) {
            const float v = gm_xval<X>(a, xr, k);
            xq[(size_t)r * a.xs + k] = zero ? 0 : anvil_from_f32<__nv_fp8_e4m3>(__fdiv_rn(v, sx)).__x;
        }
        if (threadIdx.x == 0)
            sxs[r] = zero ? 0.0f : sx;
    }
}

/* One lane's loads of U steps from s (steps at or past s1 not loaded) for
 * its rows g and g + 8 (rows at or past N read nothing: zeros). */
template <int S> struct gm_buf {
    /* int8: [u][row][block] 8 bytes; int4: [u][row] 8 bytes; fp8: [u][row] 16 bytes */
    uint4 v[gm_cfg<S>::U][2];
};

template <int S>
__device__ __forceinline__ void gm_load(gm_buf<S> &bf, const uint8_t *w0, const uint8_t *w1, int s, int s1, int t)
{
    constexpr int U = gm_cfg<S>::U;
#pragma unroll
    for (int u = 0; u < U; u++) {
        const bool in = s + u < s1;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint8_t *wr = h == 0 ? w0 : w1;
            uint4 r = make_uint4(0, 0, 0, 0);
            if (in && wr != nullptr) {
                if constexpr (S == GMQ_I8) {
                    const uint2 p0 = gm_ld8(wr + gmq_load_off(S, s + u, t, 0));
                    const uint2 p1 = gm_ld8(wr + gmq_load_off(S, s + u, t, 1));
                    r = make_uint4(p0.x, p0.y, p1.x, p1.y);
                } else if constexpr (S == GMQ_U4) {
                    const uint2 p = gm_ld8(wr + gmq_load_off(S, s + u, t, 0));
                    r = make_uint4(p.x, p.y, 0, 0);
                } else {
                    r = anvil_ld_stream16(wr + gmq_load_off(S, s + u, t, 0));
                }
            }
            bf.v[u][h] = r;
        }
    }
}

/* The per-lane state of one tile: rows g and g + 8 (n0 + g, n0 + g + 8 of a part) */
typedef struct gm_tile {
    const uint8_t *w0, *w1; /* the rows' bytes, NULL past N */
    const float *sc0, *sc1; /* the rows' scales */
    const uint8_t *z0, *z1; /* int4: the rows' zero points (NULL: 8) */
} gm_tile;

/* acc += the U steps of bf (steps from s, those before s1), one tile */
template <int S>
__device__ __forceinline__ void gm_compute(const gm_args &a, const gm_buf<S> &bf, const gm_tile &tl, int s, int s1,
                                           int g, int t, const uint8_t *xq, const float *dq, const int *sq,
                                           float (&acc)[4])
{
    constexpr int U = gm_cfg<S>::U;
    const uint8_t *xrow = xq + (size_t)g * a.xs; /* this lane's B column: x row g */
    const bool xin = g < a.T;
#pragma unroll
    for (int u = 0; u < U; u++) {
        if (s + u >= s1)
            break;
        const int st = s + u;
        /* the words of rows g and g + 8 (cuda_gemv_mma_quant_map.h) */
        uint32_t v[2][4];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint4 r = bf.v[u][h];
            v[h][0] = r.x;
            v[h][1] = r.y;
            v[h][2] = r.z;
            v[h][3] = r.w;
            if constexpr (S == GMQ_U4) {
                /* the exchange with lane t ^ 2 (both lanes run it: a warp-uniform branch) */
                const uint32_t recv = __shfl_xor_sync(0xffffffffu, gmq_i4_send(t, r.x, r.y), 2);
                gmq_i4_swap(t, r.x, r.y, recv, &v[h][0], &v[h][1]);
            }
        }
#pragma unroll
        for (int m = 0; m < 2; m++) { /* the step's two k32 mmas */
            uint32_t b0 = 0, b1 = 0;
            if (xin) {
                b0 = *reinterpret_cast<const uint32_t *>(xrow + GM_STEP * st + gmq_b_pos(S, t, m, 0));
                b1 = *reinterpret_cast<const uint32_t *>(xrow + GM_STEP * st + gmq_b_pos(S, t, m, 1));
            }
            const uint32_t A[4] = {gmq_a_reg(S, v[0], m, 0), gmq_a_reg(S, v[1], m, 0), gmq_a_reg(S, v[0], m, 1),
                                   gmq_a_reg(S, v[1], m, 1)};
            if constexpr (S == GMQ_FP8) {
                float d[4];
                gm_mma_e4m3(d, A, b0, b1);
#pragma unroll
                for (int j = 0; j < 4; j++)
                    acc[j] += d[j];
            } else {
                int d[4];
                if constexpr (S == GMQ_U4)
                    gm_mma_u8s8(d, A, b0, b1);
                else
                    gm_mma_s8(d, A, b0, b1);
                const int blk = 2 * st + m, grp = (32 * blk) / a.gs;
                const float2 dx = *reinterpret_cast<const float2 *>(dq + blk * 8 + 2 * t); /* x rows 2t, 2t+1 */
                const float s0 = tl.sc0 != nullptr ? __ldg(tl.sc0 + grp) : 0.0f;
                const float s1v = tl.sc1 != nullptr ? __ldg(tl.sc1 + grp) : 0.0f;
                if constexpr (S == GMQ_U4) {
                    const int2 sx = *reinterpret_cast<const int2 *>(sq + blk * 8 + 2 * t);
                    const int z0 = tl.z0 != nullptr ? (int)__ldg(tl.z0 + grp) : 8;
                    const int z1 = tl.z1 != nullptr ? (int)__ldg(tl.z1 + grp) : 8;
                    d[0] -= z0 * sx.x;
                    d[1] -= z0 * sx.y;
                    d[2] -= z1 * sx.x;
                    d[3] -= z1 * sx.y;
                }
                acc[0] = fmaf(__fmul_rn(dx.x, s0), gm_i2f(d[0]), acc[0]);
                acc[1] = fmaf(__fmul_rn(dx.y, s0), gm_i2f(d[1]), acc[1]);
                acc[2] = fmaf(__fmul_rn(dx.x, s1v), gm_i2f(d[2]), acc[2]);
                acc[3] = fmaf(__fmul_rn(dx.y, s1v), gm_i2f(d[3]), acc[3]);
            }
        }
    }
}

/* This lane's rows of tile `tile` (a global tile index) of part p; rows
 * past N get NULL pointers. */
template <int S>
__device__ __forceinline__ gm_tile gm_tile_of(const gm_args &a, int p, int n0, int g)
{
    const int64_t rb = S == GMQ_U4 ? a.K / 2 : a.K; /* bytes a weight row */
    gm_tile tl;
    const int na = n0 + g, nb = n0 + g + 8;
    tl.w0 = na < a.N[p] ? a.w[p] + (int64_t)na * rb : nullptr;
    tl.w1 = nb < a.N[p] ? a.w[p] + (int64_t)nb * rb : nullptr;
    tl.sc0 = na < a.N[p] ? a.scales[p] + (int64_t)na * a.G : nullptr;
    tl.sc1 = nb < a.N[p] ? a.scales[p] + (int64_t)nb * a.G : nullptr;
    tl.z0 = na < a.N[p] && a.zeros[p] != nullptr ? a.zeros[p] + (int64_t)na * a.G : nullptr;
    tl.z1 = nb < a.N[p] && a.zeros[p] != nullptr ? a.zeros[p] + (int64_t)nb * a.G : nullptr;
    return tl;
}

template <typename X, int S> __global__ void __launch_bounds__(GM_THREADS, 2) anvil_gemv_mma_quant_kernel(gm_args a)
{
    extern __shared__ __align__(16) uint8_t gm_smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int MT = a.MT, KS = GM_WARPS / MT;
    const int mt = warp % MT, ks = warp / MT;

    /* this warp's tile: part p, rows n0.. */
    const int gtile = blockIdx.x * MT + mt;
    const int tiles = a.tile_end[a.silu ? 0 : a.n_parts - 1];
    int p = 0;
    while (p + 1 < a.n_parts && gtile >= a.tile_end[p])
        p++;
    const bool live = gtile < tiles;
    const int n0 = (gtile - (p > 0 ? a.tile_end[p - 1] : 0)) * 16;
    gm_tile tl = {}, tl2 = {};
    if (live) {
        tl = gm_tile_of<S>(a, p, n0, g);
        if (a.silu)
            tl2 = gm_tile_of<S>(a, 1, n0, g);
    }

    /* this warp's steps [s0, s1) */
    const int steps = a.K / GM_STEP;
    const int s0 = (int)((int64_t)steps * ks / KS), s1 = (int)((int64_t)steps * (ks + 1) / KS);

    gm_buf<S> bf, bf2;
    gm_load<S>(bf, tl.w0, tl.w1, s0, s1, t); /* weights: before the wait */
    if (a.silu)
        gm_load<S>(bf2, tl2.w0, tl2.w1, s0, s1, t);

    anvil_pdl_wait();
    anvil_pdl_launch();

    uint8_t *xq = gm_smem;
    float *meta = reinterpret_cast<float *>(gm_smem + (size_t)a.T * a.xs);
    float *dq = meta;                                                    /* int: [K/32][8] */
    int *sq = reinterpret_cast<int *>(meta + (a.K / 32) * 8);           /* int: [K/32][8] */
    float *red = S == GMQ_FP8 ? meta + 8 : meta + (a.K / 32) * 8 * 2;   /* [GM_WARPS][2][16][8] */
    if constexpr (S == GMQ_FP8)
        gm_quant_fp8<X>(a, xq, meta, red);
    else
        gm_quant_int<X, S>(a, xq, dq, sq);
    __syncthreads();

    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, acc2[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int s = s0; s < s1; s += gm_cfg<S>::U) {
        if (s != s0) {
            gm_load<S>(bf, tl.w0, tl.w1, s, s1, t);
            if (a.silu)
                gm_load<S>(bf2, tl2.w0, tl2.w1, s, s1, t);
        }
        gm_compute<S>(a, bf, tl, s, s1, g, t, xq, dq, sq, acc);
        if (a.silu)
            gm_compute<S>(a, bf2, tl2, s, s1, g, t, xq, dq, sq, acc2);
    }

    /* the warps' partial sums: red[warp][j][row][col], D's layout */
    float *rw = red + (size_t)warp * 2 * 128;
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const float *v = j == 0 ? acc : acc2;
        rw[j * 128 + g * 8 + 2 * t] = v[0];
        rw[j * 128 + g * 8 + 2 * t + 1] = v[1];
        rw[j * 128 + (g + 8) * 8 + 2 * t] = v[2];
        rw[j * 128 + (g + 8) * 8 + 2 * t + 1] = v[3];
    }
    __syncthreads();

    /* one thread an output (tile mt, row i, x row r): the K splits summed in order */
    for (int o = threadIdx.x; o < MT * 128; o += GM_THREADS) {
        const int omt = o / 128, i = (o / 8) % 16, r = o % 8;
        const int ot = blockIdx.x * MT + omt;
        if (ot >= tiles || r >= a.T)
            continue;
        int op = 0;
        while (op + 1 < a.n_parts && ot >= a.tile_end[op])
            op++;
        const int n = (ot - (op > 0 ? a.tile_end[op - 1] : 0)) * 16 + i;
        if (n >= a.N[op])
            continue;
        float v = 0.0f, v2 = 0.0f;
        for (int k = 0; k < KS; k++) {
            const float *rk = red + (size_t)(k * MT + omt) * 2 * 128;
            v += rk[i * 8 + r];
            v2 += rk[128 + i * 8 + r];
        }
        if constexpr (S == GMQ_FP8) {
            const float sxr = meta[r];
            v = __fmul_rn(__fmul_rn(v, sxr), __ldg(a.scales[op] + n));
            if (a.silu)
                v2 = __fmul_rn(__fmul_rn(v2, sxr), __ldg(a.scales[1] + n));
        }
        const float b = a.bias[op] != nullptr ? anvil_load_any(a.bias[op], a.bias_dt[op], n) : 0.0f;
        X *out = (X *)a.out[op];
        if (!a.silu) {
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

static int gm_scheme(anvil_dtype dt) { return dt == ANVIL_DTYPE_I8 ? GMQ_I8 : dt == ANVIL_DTYPE_U4 ? GMQ_U4 : GMQ_FP8; }

/* the most dynamic shared memory the kernel may ask for on this device */
static size_t gm_smem_limit(void)
{
    int dev = 0, optin = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
        cudaGetLastError();
        return 48 * 1024;
    }
    return (size_t)optin;
}

extern "C" int anvil_cuda_gemv_mma_quant_ok(const anvil_cuda_qweight *w, int act, int sm, const void *x,
                                            anvil_dtype x_dt, int64_t T)
{
    if (T < 1 || T > GM_MAX_ROWS || !anvil_cuda_is_float_dtype(x_dt))
        return 0;
    if (w->dt == ANVIL_DTYPE_F8_E4M3) {
        /* W8A8 per channel on sm_89+; weight-only fp8 stays on the SIMT GEMV */
        if (act == ANVIL_QUANT_ACT_NONE || sm < 89 || w->gs != w->K)
            return 0;
    } else if (w->dt == ANVIL_DTYPE_I8 || w->dt == ANVIL_DTYPE_U4) {
        if (act != ANVIL_QUANT_ACT_NONE || w->gs % 32 != 0)
            return 0;
    } else {
        return 0;
    }
    return w->K > 0 && w->K % GM_STEP == 0 && w->gs > 0 && w->K % w->gs == 0 && w->K <= INT32_MAX / 2 &&
           w->N > 0 && w->N <= INT32_MAX / 4 && anvil_aligned16(w->w) && anvil_aligned16(x) &&
           gm_smem_bytes(gm_scheme(w->dt), (int)T, w->K) <= gm_smem_limit();
}

/* raises the kernel's dynamic shared memory limit once per device */
template <typename X, int S> static anvil_status gm_set_smem(void)
{
    static int done[16];
    int dev = 0;
    TRY(anvil_cuda_status(cudaGetDevice(&dev), "cudaGetDevice", __FILE__, __LINE__));
    if (dev >= 0 && dev < 16 && __atomic_load_n(&done[dev], __ATOMIC_ACQUIRE))
        return ANVIL_OK;
    const size_t lim = gm_smem_limit();
    TRY(anvil_cuda_status(cudaFuncSetAttribute(anvil_gemv_mma_quant_kernel<X, S>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, (int)lim),
                          "gemv (quantized, tensor cores): shared memory limit", __FILE__, __LINE__));
    if (dev >= 0 && dev < 16)
        __atomic_store_n(&done[dev], 1, __ATOMIC_RELEASE);
    return ANVIL_OK;
}

template <typename X, int S> static anvil_status gm_launch(cudaStream_t stream, int pdl, const gm_args &a, size_t smem)
{
    TRY((gm_set_smem<X, S>()));
    const int tiles = a.tile_end[a.silu ? 0 : a.n_parts - 1];
    const dim3 grid((unsigned)((tiles + a.MT - 1) / a.MT));
    anvil_launch(anvil_gemv_mma_quant_kernel<X, S>, grid, GM_THREADS, smem, stream, pdl, a);
    return ANVIL_CUDA_LAUNCHED("gemv (quantized, tensor cores) kernel");
}

template <typename X> static anvil_status gm_launch_scheme(cudaStream_t stream, int pdl, int scheme, const gm_args &a,
                                                           size_t smem)
{
    if (scheme == GMQ_I8)
        return gm_launch<X, GMQ_I8>(stream, pdl, a, smem);
    if (scheme == GMQ_U4)
        return gm_launch<X, GMQ_U4>(stream, pdl, a, smem);
    return gm_launch<X, GMQ_FP8>(stream, pdl, a, smem);
}

extern "C" anvil_status anvil_cuda_launch_gemv_mma_quant(const anvil_cuda_gemv_mma_call *c)
{
    const int n_parts = c->n_parts;
    CHECK(n_parts >= 1 && n_parts <= GM_MAX_PARTS && (!c->silu || n_parts == 2), ANVIL_ERR_INVALID_ARG,
          "gemv (quantized, tensor cores): %d parts (1..%d; 2 with silu)", n_parts, GM_MAX_PARTS);
    CHECK(c->T >= 1 && c->T <= GM_MAX_ROWS, ANVIL_ERR_INVALID_ARG,
          "gemv (quantized, tensor cores): %lld rows (1..%d)", (long long)c->T, GM_MAX_ROWS);
    CHECK(c->x_dt == ANVIL_DTYPE_F32 || c->x_dt == ANVIL_DTYPE_BF16 || c->x_dt == ANVIL_DTYPE_F16,
          ANVIL_ERR_UNSUPPORTED, "gemv (quantized, tensor cores): x dtype %s", anvil_dtype_name(c->x_dt));
    CHECK(!c->silu || c->w[0].N == c->w[1].N, ANVIL_ERR_INVALID_ARG,
          "gemv silu (quantized, tensor cores): gate %lld and up %lld rows", (long long)c->w[0].N,
          (long long)c->w[1].N);
    gm_args a;
    memset(&a, 0, sizeof a);
    int64_t tiles = 0;
    for (int i = 0; i < n_parts; i++) {
        const anvil_cuda_qweight *w = &c->w[i];
        CHECK(anvil_cuda_gemv_mma_quant_ok(w, c->act, c->sm, c->x, c->x_dt, c->T), ANVIL_ERR_UNSUPPORTED,
              "gemv (quantized, tensor cores): %s [%lld, %lld], group %lld, %lld rows (K a multiple of 64, the "
              "group of 32, 16-byte aligned, shared memory)",
              anvil_dtype_name(w->dt), (long long)w->N, (long long)w->K, (long long)w->gs, (long long)c->T);
        CHECK(w->dt == c->w[0].dt && w->K == c->w[0].K && w->gs == c->w[0].gs, ANVIL_ERR_INVALID_ARG,
              "gemv (quantized, tensor cores): parts of different layouts");
        CHECK(c->bias[i] == NULL || anvil_cuda_is_float_dtype(c->bias_dt[i]),
              ANVIL_ERR_UNSUPPORTED, "gemv (quantized, tensor cores): bias dtype %s",
              anvil_dtype_name(c->bias_dt[i]));
        CHECK(w->scales != NULL, ANVIL_ERR_INVALID_ARG, "gemv (quantized, tensor cores): no scales");
        tiles += (w->N + 15) / 16;
        CHECK(tiles <= INT32_MAX / 8, ANVIL_ERR_UNSUPPORTED, "gemv (quantized, tensor cores): %lld tiles",
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
    const int scheme = gm_scheme(c->w[0].dt);
    a.n_parts = n_parts;
    a.silu = c->silu;
    a.x = c->x;
    a.perm = c->perm;
    a.err = c->err;
    a.act = c->act;
    a.input_scale = c->input_scale;
    a.K = (int)c->w[0].K;
    a.gs = (int)c->w[0].gs;
    a.G = (int)(c->w[0].K / c->w[0].gs);
    a.T = (int)c->T;
    a.xs = a.K + gm_pad(scheme);
    /* one tile a block unless the knob says otherwise: the grouping decides
     * the K split (8 / MT warps a tile) and so the order of the f32 sums,
     * and one choice for every shape keeps q/k/v and gate/up in one launch
     * equal to the separate matmuls bit for bit. Two blocks fit an SM (128
     * registers a thread), N / 16 blocks fill an H100's 132 SMs evenly
     * enough at the 8B's shapes (o and down 256 blocks, qkv 384, gate/up
     * 896, the LM head 8016); MT = 2 or 4 quantizes x fewer times (the
     * knob gemv_quant_tiles, for benchmarks). */
    a.MT = c->tiles_knob == 2 || c->tiles_knob == 4 ? c->tiles_knob : 1;
    const size_t smem = gm_smem_bytes(scheme, a.T, a.K);
    if (c->x_dt == ANVIL_DTYPE_F32)
        return gm_launch_scheme<float>(c->stream, c->pdl, scheme, a, smem);
    if (c->x_dt == ANVIL_DTYPE_BF16)
        return gm_launch_scheme<__nv_bfloat16>(c->stream, c->pdl, scheme, a, smem);
    return gm_launch_scheme<__half>(c->stream, c->pdl, scheme, a, smem);
}
