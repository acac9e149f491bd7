/*
 * The fp8 W8A8 GEMV of one decode row (T = 1) on CUDA cores: a warp streams
 * one whole weight row (gate/up with the silu: the gate's and the up's row
 * n), blocks of GF_WARPS warps, as the bf16 GEMV (cuda_gemv.cu) does
 * (bench_gemv_quant, session 33: 8 read gate/up, down and the LM head
 * 4-36% faster than blocks of 4; 16 faster still in 8B decode).
 *
 * Why not the 16-bit tensor-core GEMV (cuda_gemv_mma16_quant.cu) here: its
 * block is one tile of 16 rows for its whole life, so the grid runs in
 * lockstep waves that ramp up and drain together; timed with the weights
 * rotated through more memory than the L2 holds (session 32, .device's
 * microbenchmark, docs/performance.md) it reads the Llama-3-8B gate/up at
 * 68% of the copy rate and the LM head at 79%, where blocks of 4 rows that
 * come and go read them at 80-89% and 89-95%. A row is a warp's: no K
 * split, no partial sums to combine.
 *
 * Arithmetic: the W8A8 definition of the tensor-core GEMV, but for the
 * order of the f32 sums. x's codes fp8(x / sx) (sx = max|x| / 448 by the
 * block, or the input scale; gw_div's quotient, round to nearest even,
 * saturating: the same codes as the other fp8 paths), kept as f16 (exact)
 * in shared memory for the block; the weight's e4m3 codes to f16 (exact,
 * cvt.rn.f16x2.e4m3x2), both to f32, their products exact in f32 (4-bit
 * significands) and summed in f32 by each lane in K order over its pieces,
 * then across the warp (a butterfly); then times sx, times s[n] (+ bias).
 *
 * Loads: a lane reads 16-byte pieces of its row, 512 bytes apart (lane,
 * lane + 32, ...: each warp load 512 contiguous bytes), U pieces in flight,
 * each refilled as soon as it is used; U divides the lane's pieces (8, 7 or
 * 4; else 8 with a tail). The first U pieces are loaded before
 * anvil_pdl_wait (weights: no kernel writes them), x after; with
 * anvil_pdl_load16, or ptxas moves them after the wait.
 */
#include <string.h>

#include "backend/cuda/cuda_gemv.cuh"
#include "backend/cuda/cuda_gemv_fp8_rows.h"
#include "backend/cuda/cuda_gemv_mma16_step.cuh"

/* Warps a block by default (rows_warps: 4, 8 or 16). 16: 8B fp8 decode
 * 3.836 ms a token against 3.902 with 8 (session 33, H100: two calls, bf16
 * the same within 0.5% across them). */
#define GF_WARPS     16
#define GF_MAX_WARPS 16
#define GF_MAX_PARTS 4
#define GF_PIECE     16    /* bytes (codes) a lane loads at once */
#define GF_ROW_STEP  512   /* a warp's load: 32 lanes x 16 bytes */
#define GF_MAX_K     24576 /* x's codes in the default 48 KB of shared memory (f16) */

typedef struct gf_args {
    const uint8_t *w[GF_MAX_PARTS];
    const float *scales[GF_MAX_PARTS];
    const void *bias[GF_MAX_PARTS];
    int bias_dt[GF_MAX_PARTS];
    void *out[GF_MAX_PARTS];
    int end[GF_MAX_PARTS]; /* rows of parts 0..i together (silu: end[0] = N, part 1 the up of those rows) */
    int n_parts;
    const void *x;
    int K;
    int act; /* ANVIL_QUANT_ACT_FP8_DYNAMIC / _STATIC */
    float input_scale;
} gf_args;

/* 4 e4m3 codes of a word as f32 (exact) */
__device__ __forceinline__ void gf_codes4(uint32_t w, float (&f)[4])
{
    const float2 a =
        __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w & 0xffffu), __NV_E4M3)));
    const float2 b =
        __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w >> 16), __NV_E4M3)));
    f[0] = a.x;
    f[1] = a.y;
    f[2] = b.x;
    f[3] = b.y;
}

/* acc + the piece's 16 weight codes . x's 16 codes (f16 at xc, 32 bytes) */
__device__ __forceinline__ float gf_dot16(const uint4 &wv, const __half *xc, float acc)
{
    const uint4 x0 = *reinterpret_cast<const uint4 *>(xc), x1 = *reinterpret_cast<const uint4 *>(xc + 8);
    const uint32_t ww[4] = {wv.x, wv.y, wv.z, wv.w};
    const uint32_t xw[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float f[4];
        gf_codes4(ww[j], f);
        __half2 h0, h1;
        memcpy(&h0, &xw[2 * j], 4);
        memcpy(&h1, &xw[2 * j + 1], 4);
        const float2 a = __half22float2(h0), b = __half22float2(h1);
        acc = fmaf(f[0], a.x, acc);
        acc = fmaf(f[1], a.y, acc);
        acc = fmaf(f[2], b.x, acc);
        acc = fmaf(f[3], b.y, acc);
    }
    return acc;
}

/* sx (dynamic: max|x| / 448 over the block; static: the input scale; 0 for
 * a row of zeros) and x's codes as f16 into xc [K], as gw_quant_fp8 makes
 * them (cuda_gemv_mma16_quant.cu): the same codes. */
template <typename X> __device__ float gf_quant_x(const gf_args &a, __half *xc, float *red)
{
    const int nthr = blockDim.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const X *x = (const X *)a.x;
    float sx;
    if (a.act == ANVIL_QUANT_ACT_FP8_DYNAMIC) {
        float m = 0.0f;
        for (int k = 8 * threadIdx.x; k < a.K; k += 8 * nthr) {
            float f[8];
            anvil_load_vec<X, 8>(x + k, f);
#pragma unroll
            for (int i = 0; i < 8; i++)
                m = fmaxf(m, fabsf(f[i]));
        }
        m = anvil_warp_max(m);
        if (lane == 0)
            red[warp] = m;
        __syncthreads();
        m = 0.0f;
        for (int i = 0; i < nthr / 32; i++)
            m = fmaxf(m, red[i]);
        sx = __fdiv_rn(m, 448.0f);
    } else {
        sx = a.input_scale;
    }
    sx = sx > 0.0f ? sx : 0.0f;
    const float rs = sx > 0.0f ? __frcp_rn(sx) : 0.0f;
    for (int k = 8 * threadIdx.x; k < a.K; k += 8 * nthr) {
        float f[8];
        anvil_load_vec<X, 8>(x + k, f);
        *reinterpret_cast<uint4 *>(xc + k) = gw_code8(f, sx, rs);
    }
    __syncthreads();
    return sx;
}

/* The lane's next piece into b: SILU pieces alternate gate (up = 0) and up.
 * EARLY: before anvil_pdl_wait (anvil_pdl_load16, which stays before it). */
template <bool SILU, bool EARLY = false>
__device__ __forceinline__ void gf_load(uint4 &b, const uint8_t *&gp, const uint8_t *&upp, int up)
{
    if (SILU && up) {
        b = EARLY ? anvil_pdl_load16(upp) : anvil_ld_stream16(upp);
        upp += GF_ROW_STEP;
    } else {
        b = EARLY ? anvil_pdl_load16(gp) : anvil_ld_stream16(gp);
        gp += GF_ROW_STEP;
    }
}

/* U pieces in flight a lane; TAIL: the lane's pieces need not be a multiple of U. */
template <typename X, int U, bool TAIL, bool SILU>
__global__ void __launch_bounds__(GF_MAX_WARPS * 32) anvil_gemv_fp8_rows_kernel(gf_args a)
{
    static_assert(!SILU || U % 2 == 0, "gate and up pieces alternate: an even U keeps a slot on one of them");
    extern __shared__ __align__(16) uint8_t gf_smem[];
    __shared__ float red[GF_MAX_WARPS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = blockIdx.x * (blockDim.x >> 5) + warp;
    const int rows = a.end[SILU ? 0 : a.n_parts - 1];
    const bool live = g < rows; /* a warp past the end still helps with x's codes */
    int p = 0;
    if (!SILU)
        while (p + 1 < a.n_parts && g >= a.end[p])
            p++;
    const int n = g - (p > 0 ? a.end[p - 1] : 0);
    const int ppl = a.K / GF_ROW_STEP;             /* pieces a lane of one row */
    const int P = live ? (SILU ? 2 : 1) * ppl : 0; /* SILU: gate and up pieces alternate (even: gate) */

    const uint8_t *gp = live ? a.w[p] + (int64_t)n * a.K + GF_PIECE * lane : nullptr;
    const uint8_t *upp = SILU && live ? a.w[1] + (int64_t)n * a.K + GF_PIECE * lane : nullptr;
    uint4 buf[U];
#pragma unroll
    for (int u = 0; u < U; u++) /* weights: before the wait */
        if (u < P)
            gf_load<SILU, true>(buf[u], gp, upp, u & 1);
    anvil_pdl_wait();
    anvil_pdl_launch();

    __half *xc = reinterpret_cast<__half *>(gf_smem);
    const float sx = gf_quant_x<X>(a, xc, red);
    if (!live)
        return;

    float acc[2] = {0.0f, 0.0f};
    const __half *xl = xc + GF_PIECE * lane; /* the x codes of the lane's next piece */
    for (int base = 0; base < P; base += U) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (TAIL && base + u >= P)
                break;
            const uint4 wv = buf[u];
            if (base + u + U < P)
                gf_load<SILU>(buf[u], gp, upp, u & 1);
            /* the piece's column: SILU pieces go gate, up of one column, then the next (U even) */
            const int h = SILU ? (u & 1) : 0;
            acc[h] = gf_dot16(wv, xl, acc[h]);
            if (!SILU || h == 1)
                xl += GF_ROW_STEP;
        }
    }
    float v = anvil_warp_sum(acc[0]);
    float v2 = SILU ? anvil_warp_sum(acc[1]) : 0.0f;
    if (lane != 0)
        return;
    v = __fmul_rn(__fmul_rn(v, sx), __ldg(a.scales[p] + n));
    const float b = a.bias[p] != nullptr ? anvil_load_any(a.bias[p], a.bias_dt[p], n) : 0.0f;
    X *out = (X *)a.out[p];
    if (!SILU) {
        out[n] = anvil_from_f32<X>(v + b);
        return;
    }
    /* as matmul + matmul + silu_mul: each product rounded to X first */
    v2 = __fmul_rn(__fmul_rn(v2, sx), __ldg(a.scales[1] + n));
    const float b2 = a.bias[1] != nullptr ? anvil_load_any(a.bias[1], a.bias_dt[1], n) : 0.0f;
    const float gv = anvil_to_f32(anvil_from_f32<X>(v + b));
    const float uv = anvil_to_f32(anvil_from_f32<X>(v2 + b2));
    out[n] = anvil_from_f32<X>(gv / (1.0f + expf(-gv)) * uv);
}

/* ---------------------------------------------------------------- launcher */

extern "C" int anvil_cuda_gemv_fp8_rows_ok(const anvil_cuda_qweight *w, int act, const int32_t *perm,
                                           const void *x, anvil_dtype x_dt, int64_t T)
{
    return w->dt == ANVIL_DTYPE_F8_E4M3 &&
           (act == ANVIL_QUANT_ACT_FP8_DYNAMIC || act == ANVIL_QUANT_ACT_FP8_STATIC) && w->gs == w->K &&
           perm == NULL && T == 1 && (x_dt == ANVIL_DTYPE_BF16 || x_dt == ANVIL_DTYPE_F16) && w->K > 0 &&
           w->K % GF_ROW_STEP == 0 && w->K <= GF_MAX_K && w->N >= 1 && w->N <= INT32_MAX - GF_MAX_WARPS &&
           anvil_aligned16(w->w) && anvil_aligned16(x);
}

/* The lane's pieces (SILU: both rows') in rounds of U: 8, 7 or 4 where one
 * divides them (SILU: 8 or 4, even), else 8 with a tail. */
static int gf_unroll(int64_t pieces, int silu)
{
    return pieces % 8 == 0 ? 8 : pieces % 7 == 0 && !silu ? 7 : pieces % 4 == 0 ? 4 : 0;
}

template <typename X, bool SILU>
static void gf_launch(const gf_args &a, int64_t pieces, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                      int pdl)
{
    switch (gf_unroll(pieces, SILU)) {
    case 8:
        anvil_launch(anvil_gemv_fp8_rows_kernel<X, 8, false, SILU>, grid, block, smem, s, pdl, a);
        break;
    case 7:
        anvil_launch(anvil_gemv_fp8_rows_kernel < X, SILU ? 8 : 7, false, SILU >, grid, block, smem, s, pdl,
                     a);
        break;
    case 4:
        anvil_launch(anvil_gemv_fp8_rows_kernel<X, 4, false, SILU>, grid, block, smem, s, pdl, a);
        break;
    default:
        anvil_launch(anvil_gemv_fp8_rows_kernel<X, 8, true, SILU>, grid, block, smem, s, pdl, a);
        break;
    }
}

extern "C" anvil_status anvil_cuda_launch_gemv_fp8_rows(const anvil_cuda_gemv_mma_call *c)
{
    CHECK(c->n_parts >= 1 && c->n_parts <= GF_MAX_PARTS && (!c->silu || c->n_parts == 2),
          ANVIL_ERR_INVALID_ARG, "gemv (fp8, rows): %d parts%s", c->n_parts,
          c->silu ? " with the silu (2)" : " (1..4)");
    gf_args a;
    memset(&a, 0, sizeof a);
    int64_t total = 0;
    for (int i = 0; i < c->n_parts; i++) {
        const anvil_cuda_qweight *w = &c->w[i];
        CHECK(
            anvil_cuda_gemv_fp8_rows_ok(w, c->act, c->perm, c->x, c->x_dt, c->T) && w->K == c->w[0].K &&
                anvil_aligned16(c->out[i]),
            ANVIL_ERR_UNSUPPORTED,
            "gemv (fp8, rows): %s [%lld, %lld], group %lld, %lld rows of %s (fp8 W8A8 per channel, one row, "
            "K a multiple of %d up to %d, no perm, aligned)",
            anvil_dtype_name(w->dt), (long long)w->N, (long long)w->K, (long long)w->gs, (long long)c->T,
            anvil_dtype_name(c->x_dt), GF_ROW_STEP, GF_MAX_K);
        CHECK(c->bias[i] == NULL || anvil_cuda_is_float_dtype(c->bias_dt[i]), ANVIL_ERR_UNSUPPORTED,
              "gemv (fp8, rows): bias dtype %s", anvil_dtype_name(c->bias_dt[i]));
        a.w[i] = (const uint8_t *)w->w;
        a.scales[i] = w->scales;
        a.bias[i] = c->bias[i];
        a.bias_dt[i] = (int)c->bias_dt[i];
        a.out[i] = c->out[i];
        total += c->silu && i == 1 ? 0 : w->N;
        CHECK(total <= INT32_MAX - GF_MAX_WARPS, ANVIL_ERR_UNSUPPORTED, "gemv (fp8, rows): %lld rows",
              (long long)total);
        a.end[i] = (int)total;
    }
    CHECK(!c->silu || c->w[1].N == c->w[0].N, ANVIL_ERR_INVALID_ARG,
          "gemv (fp8, rows): gate %lld rows, up %lld", (long long)c->w[0].N, (long long)c->w[1].N);
    a.n_parts = c->n_parts;
    a.x = c->x;
    a.K = (int)c->w[0].K;
    a.act = c->act;
    a.input_scale = c->input_scale;
    const int wpb =
        c->rows_warps == 4 || c->rows_warps == 8 || c->rows_warps == 16 ? c->rows_warps : GF_WARPS;
    const dim3 grid((unsigned)((total + wpb - 1) / wpb));
    const size_t smem = (size_t)a.K * sizeof(__half);
    const int64_t pieces = (c->silu ? 2 : 1) * (int64_t)(a.K / GF_ROW_STEP);
    if (c->x_dt == ANVIL_DTYPE_BF16) {
        if (c->silu)
            gf_launch<__nv_bfloat16, true>(a, pieces, grid, dim3(32 * wpb), smem, c->stream, c->pdl);
        else
            gf_launch<__nv_bfloat16, false>(a, pieces, grid, dim3(32 * wpb), smem, c->stream, c->pdl);
    } else {
        if (c->silu)
            gf_launch<__half, true>(a, pieces, grid, dim3(32 * wpb), smem, c->stream, c->pdl);
        else
            gf_launch<__half, false>(a, pieces, grid, dim3(32 * wpb), smem, c->stream, c->pdl);
    }
    return ANVIL_CUDA_LAUNCHED("gemv (fp8, rows) kernel");
}
