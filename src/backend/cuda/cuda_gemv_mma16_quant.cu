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
 * Work: a block takes one tile of 16 weight rows; K is cut into
 * GMW_CHUNKS chunks fixed by the weight alone (cuda_gemv_mma16_split.h),
 * each summed by one warp from zero, and the chunks' sums are added in
 * chunk order in shared memory at the end. The block's W warps take whole
 * chunks each, W picked per launch to fill the GPU (gmw_pick_warps): the
 * bits do not depend on it. gate/up with the silu: blocks of 2 W warps,
 * the gate tile on warps 0..W-1 and the up tile of the same rows on the
 * rest, each split as a plain tile is, so that the fused launch gives the
 * separate matmuls' numbers bit for bit. q/k/v: the parts' tiles one after
 * the other in the grid.
 *
 * Bytes in flight: a lane keeps GW_U = 4 steps of its two rows loading
 * (16 bytes each: 128 bytes a lane, 4 KB a warp), refilling a step's
 * registers as soon as it is used, across its chunks; int8 / fp8 blocks
 * fit in 80 registers a thread (24 warps an SM), int4's in ~100 (20).
 * Session 30 measured the rate against the warps an SM keeps busy: 24
 * (96 KB in flight) near the copy rate, 16 (64 KB) at 55-70%. Scales and
 * zero points are loaded with their step.
 *
 * Measured (H100, session 27, one row, Llama-3-8B shapes): int4 g128
 * 1496-1958 GB/s (49-65% of copy; the SIMT GEMV 1018-1595), int8
 * 1696-2910, W8A8 1671-2971 (the SIMT GEMV with its preparation 827-1773).
 * What is left: a tile is a block's whole life (one round of loads at
 * K = 4096 int4), so blocks ramp up and drain one by one, and tiles that
 * do not fill whole waves (q/k/v's 384 on 264 int4 slots) leave SMs idle.
 *
 * Dependent launch (docs/cuda-backend.md): the first GW_U steps of weights
 * (anvil_pdl_load16), scales and zero points are loaded before
 * anvil_pdl_wait, x after.
 */
#include <string.h>

#include "backend/cuda/cuda_gemv.cuh"
#include "backend/cuda/cuda_gemv_mma16_map.h"
#include "backend/cuda/cuda_gemv_mma16_quant.h"
#include "backend/cuda/cuda_gemv_mma16_split.h"
#include "backend/cuda/cuda_gemv_mma16_step.cuh"

#define GW_U         GMW_U /* steps of loads in flight a lane */
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
 * [8], the warps' row maxima [GMW_WARPS_BLOCK][8], the chunks' partial sums
 * [slots][GMW_CHUNKS][16][8] */
static __host__ __device__ size_t gw_xcode_bytes(int scheme, int T, int64_t K)
{
    return scheme == GMW_FP8 ? ((size_t)T * (size_t)(K + GW_XPAD) * 2 + 15) / 16 * 16 : 0;
}
static size_t gw_smem_bytes(int scheme, int T, int64_t K, int slots)
{
    return gw_xcode_bytes(scheme, T, K) + (8 + GMW_WARPS_BLOCK * 8) * sizeof(float) +
           (size_t)slots * GMW_CHUNKS * 16 * 8 * sizeof(float);
}

/* ---------------------------------------------------------------- one lane's loads
 * (gw_buf, gw_step: cuda_gemv_mma16_step.cuh) */

/* The lane's rows (NULL past N) */
typedef struct gw_rows {
    const uint8_t *w[2];
    const float *sc[2];
    const uint8_t *z[2]; /* int4: NULL, zero point 8 */
} gw_rows;

/* EARLY: before anvil_pdl_wait, the weights with anvil_pdl_load16 (which
 * ptxas keeps before it; the scales' and zero points' __ldg stayed there). */
template <int S, bool EARLY = false>
__device__ __forceinline__ void gw_load(gw_buf &b, const gw_rows &rw, const gw_args &a, int st, int t)
{
    const int pe = gmw_piece_elems(S);
    const int64_t k0 = (int64_t)st * gmw_step_elems(S) + pe * t; /* the piece's first column */
    const int grp = (int)(k0 / a.gs);
#pragma unroll
    for (int h = 0; h < 2; h++) {
        if (rw.w[h] != nullptr) {
            const uint8_t *wp = rw.w[h] + (int64_t)st * GW_STEP + 16 * t;
            b.w[h] = EARLY ? anvil_pdl_load16(wp) : anvil_ld_stream16(wp);
            b.s[h] = __ldg(rw.sc[h] + grp);
            b.z[h] = S == GMW_U4 && rw.z[h] != nullptr ? (int)__ldg(rw.z[h] + grp) : 8;
        } else {
            b.w[h] = make_uint4(0, 0, 0, 0);
            b.s[h] = 0.0f;
            b.z[h] = 8;
        }
    }
}

/* ---------------------------------------------------------------- fp8: x codes (gw_div: cuda_gemv_mma16_step.cuh) */

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
            *reinterpret_cast<uint4 *>(xc + (size_t)r * (a.K + GW_XPAD) + k) = gw_code8(f, sx, rs);
        }
    }
    __syncthreads();
}

/* ---------------------------------------------------------------- the kernel */

/* The chunks' sums of a warp's accumulators (D's layout) into red[chunk]. */
__device__ __forceinline__ void gw_flush(float *red, int chunk, float (&acc)[4], int g, int t)
{
    float *p = red + (size_t)chunk * 128;
    p[g * 8 + 2 * t] = acc[0];
    p[g * 8 + 2 * t + 1] = acc[1];
    p[(g + 8) * 8 + 2 * t] = acc[2];
    p[(g + 8) * 8 + 2 * t + 1] = acc[3];
#pragma unroll
    for (int i = 0; i < 4; i++)
        acc[i] = 0.0f;
}

/* SL: tile slots a block (1; 2: gate on warps 0..W-1, up on W..2W-1); the
 * block has SL x W warps, W from the launch (blockDim). The most threads a
 * block: int8 / fp8 fit 24 warps an SM in 80 registers without spills;
 * int4 needs ~100 (it spilled ~150 bytes at 85), so its blocks stop at 16
 * warps (a 128-register bound), except MB3 (the knob's 85-register int4
 * kernel, for benchmarks). */
#define GW_MAX_THREADS(S, MB3) ((S) == GMW_U4 && !(MB3) ? 512 : GMW_WARPS_BLOCK * 32)
template <typename X, int S, bool FOLD, int SL, bool MB3 = false>
__global__ void __launch_bounds__(GW_MAX_THREADS(S, MB3), 1) anvil_gemv_mma16_quant_kernel(gw_args a)
{
    extern __shared__ __align__(16) uint8_t gw_smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int W = (int)(blockDim.x >> 5) / SL;
    const int slot = warp / W, kw = warp % W;

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

    /* this warp's chunks [c, c1), steps [s0, s1); ce: the end of chunk c */
    const int steps = (int)(rb / GW_STEP);
    int c = gmw_warp_chunk(kw, W);
    const int c1 = gmw_warp_chunk(kw + 1, W);
    const int s0 = gmw_chunk_start(steps, c), s1 = gmw_chunk_start(steps, c1);
    int ce = gmw_chunk_start(steps, c + 1);

    gw_buf bf[GW_U];
#pragma unroll
    for (int u = 0; u < GW_U; u++)
        if (s0 + u < s1)
            gw_load<S, true>(bf[u], rw, a, s0 + u, t); /* weights: before the wait */

    anvil_pdl_wait();
    anvil_pdl_launch();

    const size_t xcb = gw_xcode_bytes(S, a.T, a.K);
    __half *xc = reinterpret_cast<__half *>(gw_smem);
    float *sxs = reinterpret_cast<float *>(gw_smem + xcb);
    float *redm = sxs + 8;
    float *red = redm + GMW_WARPS_BLOCK * 8 + (size_t)slot * GMW_CHUNKS * 128; /* the slot's [GMW_CHUNKS][16][8] */
    if constexpr (S == GMW_FP8)
        gw_quant_fp8<X>(a, xc, sxs, redm);

    /* this lane's B column: x row g, at the step's piece */
    const bool xin = g < a.T;
    const int pe = gmw_piece_elems(S), se = gmw_step_elems(S);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (; c < c1 && ce <= s0; ce = gmw_chunk_start(steps, ++c + 1)) /* empty chunks (steps < GMW_CHUNKS) */
        gw_flush(red, c, acc, g, t);
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
                /* the chunks that end here (and empty ones after them) */
                for (; c < c1 && ce <= st + 1; ce = gmw_chunk_start(steps, ++c + 1))
                    gw_flush(red, c, acc, g, t);
            }
        }
    }
    __syncthreads();

    /* one thread an output (row i, x row r): the chunks summed in order */
    const float *red0 = redm + GMW_WARPS_BLOCK * 8;
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
        for (int k = 0; k < GMW_CHUNKS; k++) {
            v += red0[k * 128 + i * 8 + r];
            if (SL == 2)
                v2 += red0[(GMW_CHUNKS + k) * 128 + i * 8 + r];
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

/* The device's numbers the choice of W needs, asked once per device. */
typedef struct gw_dev {
    int n_sm, threads_sm, regs_sm, smem_sm, smem_rsv, mem_khz, bus_bits;
} gw_dev;

static anvil_status gw_dev_of(gw_dev *d)
{
    static int have[16];
    static gw_dev known[16];
    int dev = 0;
    TRY(anvil_cuda_status(cudaGetDevice(&dev), "cudaGetDevice", __FILE__, __LINE__));
    if (dev >= 0 && dev < 16 && __atomic_load_n(&have[dev], __ATOMIC_ACQUIRE)) {
        *d = known[dev];
        return ANVIL_OK;
    }
    const struct {
        cudaDeviceAttr attr;
        int *to;
    } asks[7] = {{cudaDevAttrMultiProcessorCount, &d->n_sm},
                 {cudaDevAttrMaxThreadsPerMultiProcessor, &d->threads_sm},
                 {cudaDevAttrMaxRegistersPerMultiprocessor, &d->regs_sm},
                 {cudaDevAttrMaxSharedMemoryPerMultiprocessor, &d->smem_sm},
                 {cudaDevAttrReservedSharedMemoryPerBlock, &d->smem_rsv},
                 {cudaDevAttrMemoryClockRate, &d->mem_khz},
                 {cudaDevAttrGlobalMemoryBusWidth, &d->bus_bits}};
    memset(d, 0, sizeof *d);
    for (int i = 0; i < 7; i++)
        if (cudaDeviceGetAttribute(asks[i].to, asks[i].attr, dev) != cudaSuccess) {
            (void)cudaGetLastError();
            if (i < 5)
                return ANVIL_FAIL(ANVIL_ERR_CUDA, "gemv (quantized, 16-bit tensor cores): device attribute %d",
                                  (int)asks[i].attr);
            *asks[i].to = 0; /* the memory's rate: an H100's below */
        }
    if (dev >= 0 && dev < 16) {
        known[dev] = *d;
        __atomic_store_n(&have[dev], 1, __ATOMIC_RELEASE);
    }
    return ANVIL_OK;
}

/* gmw_device for the kernel: its registers (from its attributes, asked
 * once) bound the warps an SM holds, its launch bounds the warps a block. */
template <typename X, int S, bool FOLD, int SL, bool MB3> static anvil_status gw_fit(gmw_device *out)
{
    gw_dev d;
    TRY(gw_dev_of(&d));
    static int regs_of = 0; /* 0: not asked yet (one build: the same on every device it runs) */
    int regs = __atomic_load_n(&regs_of, __ATOMIC_ACQUIRE);
    if (regs == 0) {
        cudaFuncAttributes fa;
        TRY(anvil_cuda_status(cudaFuncGetAttributes(&fa, anvil_gemv_mma16_quant_kernel<X, S, FOLD, SL, MB3>),
                              "gemv (quantized, 16-bit tensor cores): kernel attributes", __FILE__, __LINE__));
        regs = fa.numRegs > 0 ? fa.numRegs : 1;
        __atomic_store_n(&regs_of, regs, __ATOMIC_RELEASE);
    }
    const int per_warp = (regs * 32 + 255) / 256 * 256; /* registers go to warps in 256s */
    const int by_regs = d.regs_sm / per_warp, by_threads = d.threads_sm / 32;
    out->n_sm = d.n_sm > 0 ? d.n_sm : 1;
    out->warps_sm = by_regs < by_threads ? by_regs : by_threads;
    out->max_warps = GW_MAX_THREADS(S, MB3) / 32;
    out->smem_sm = d.smem_sm;
    out->smem_rsv = d.smem_rsv;
    /* 90% of the peak: two transfers a clock over the bus (an H100 SXM's 3.35 TB/s when not told) */
    const double peak = d.mem_khz > 0 && d.bus_bits > 0 ? 2.0 * d.mem_khz * 1e3 * d.bus_bits / 8.0 : 3.35e12;
    out->bw = 0.9 * peak / 1e6;
    /* int4 at 6 warps a tile: slower than 4 or 8 in 4 of the 6 shapes of session 31's sweep, where the model
     * has it fastest at q/k/v (12.3 us against 9.8 at 8) */
    out->skip = S == GMW_U4 ? 1u << 2 : 0u;
    return ANVIL_OK;
}

template <typename X, int S, bool FOLD, int SL, bool MB3 = false>
static anvil_status gw_launch(cudaStream_t stream, int pdl, const gw_args &a, unsigned blocks, int warps_knob)
{
    gmw_device d;
    TRY((gw_fit<X, S, FOLD, SL, MB3>(&d)));
    const size_t smem = gw_smem_bytes(S, a.T, a.K, SL);
    const int steps = (int)((S == GMW_U4 ? a.K / 2 : a.K) / GW_STEP);
    int W = warps_knob;
    if (W == 0) {
        W = gmw_pick_warps(&d, blocks, SL, steps, (int64_t)smem);
        if (W == 0)
            W = 4; /* nothing scored: the smallest block */
    }
    CHECK(W >= 1 && W <= GMW_CHUNKS && SL * W <= d.max_warps, ANVIL_ERR_INVALID_ARG,
          "gemv (quantized, 16-bit tensor cores): %d warps a tile (1..%d, at most %d warps a block)", W,
          GMW_CHUNKS, d.max_warps);
    if (smem > 48 * 1024)
        TRY((gw_set_smem<X, S, FOLD, SL, MB3>()));
    anvil_launch(anvil_gemv_mma16_quant_kernel<X, S, FOLD, SL, MB3>, dim3(blocks), SL * W * 32, smem, stream, pdl,
                 a);
    return ANVIL_CUDA_LAUNCHED("gemv (quantized, 16-bit tensor cores) kernel");
}

/* mb3: int4's plain kernel at 85 registers (the knob gemv_quant_tiles = 3) */
template <typename X, int S, bool FOLD>
static anvil_status gw_launch_sl(cudaStream_t stream, int pdl, const gw_args &a, int silu, int mb3, unsigned blocks,
                                 int warps)
{
    if (silu)
        return gw_launch<X, S, FOLD, 2>(stream, pdl, a, blocks, warps);
    if (S == GMW_U4 && mb3)
        return gw_launch<X, S, FOLD, 1, true>(stream, pdl, a, blocks, warps);
    return gw_launch<X, S, FOLD, 1>(stream, pdl, a, blocks, warps);
}

template <typename X>
static anvil_status gw_launch_scheme(cudaStream_t stream, int pdl, int scheme, int fold, const gw_args &a, int silu,
                                     int mb3, unsigned blocks, int warps)
{
    if (scheme == GMW_I8)
        return gw_launch_sl<X, GMW_I8, false>(stream, pdl, a, silu, 0, blocks, warps);
    if (scheme == GMW_U4)
        return fold ? gw_launch_sl<X, GMW_U4, true>(stream, pdl, a, silu, mb3, blocks, warps)
                    : gw_launch_sl<X, GMW_U4, false>(stream, pdl, a, silu, mb3, blocks, warps);
    return gw_launch_sl<X, GMW_FP8, false>(stream, pdl, a, silu, 0, blocks, warps);
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
        return gw_launch_scheme<__nv_bfloat16>(c->stream, c->pdl, scheme, fold, a, c->silu, mb3, blocks,
                                               c->warps_knob);
    return gw_launch_scheme<__half>(c->stream, c->pdl, scheme, fold, a, c->silu, mb3, blocks, c->warps_knob);
}
