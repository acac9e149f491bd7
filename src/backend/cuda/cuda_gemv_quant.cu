/*
 * The weight-only GEMV of quantized weights (docs/quantization.md, the
 * canonical form): out[t, n] = sum_k x[t, k] W[n][k] (+ bias[n]) with
 * W[n][k] = (v - z) * s, for the few rows of a decode step.
 *
 * As the bf16 GEMV (cuda_gemv.cu), a stream over the weight at memory
 * bandwidth, but over fewer bytes: fp8 and int8 read one byte an element
 * (half of bf16), int4 half a byte (a quarter). A warp per output column
 * n; each lane takes 16-byte pieces of w's row (lane, lane + 32, ...;
 * eight in flight, loaded past L1 so that the weight does not evict x),
 * turns them into f32 in registers (fp8 through the cvt instructions,
 * int8 and int4 through the f32 bit trick below), multiplies them with x
 * (L1-resident) for every row t, and scales each piece's sum by its group's
 * scale (one scale per piece: the group is a multiple of the piece). The
 * warp sums its lanes at the end; f32 throughout.
 *
 * A piece is 16 elements (fp8, int8) or 32 (int4, nibble i of a 32-bit
 * word is element i: the canonical form packs the low nibble first), so K
 * and the group must be multiples of it and the pointers 16-byte aligned
 * (anvil_cuda_gemv_quant_ok); other layouts take the dequantizing path
 * (cuda_matmul_quant.c).
 *
 * Several weights of one x and one layout run as parts of one launch (q,
 * k, v: the warps' columns run through the parts), and gate + up as one
 * launch whose warps stream both rows n and write silu(gate) * up, each
 * product rounded to the output dtype first, as matmul, matmul and
 * silu_mul would (cuda_silu_mul.cu's arithmetic).
 *
 * Dependent launch (docs/cuda-backend.md): the first pieces of the weight
 * (weights: no kernel writes them) are loaded before anvil_pdl_wait, x
 * after.
 */
#include <string.h>

#include "backend/cuda/cuda_gemv.cuh"

#define GQ_WARPS    4
#define GQ_MAX_ROWS 4 /* rows a pass; more rows run several passes */
#define GQ_UNROLL   8 /* pieces in flight per lane (128 bytes, as the bf16 GEMV) */

enum { GQ_FP8 = 0, GQ_I8 = 1, GQ_U4 = 2 };

/* elements in a 16-byte piece */
template <int S> struct gq_piece {
    static constexpr int E = S == GQ_U4 ? 32 : 16;
};

/* 2^23 + i as f32 bits, for 0 <= i < 2^23: (float)i = that - 2^23, exactly,
 * in one integer op and one add (no I2F, which runs at a quarter of the
 * FMA rate and would bound int4 below the memory bandwidth). */
__device__ __forceinline__ float gq_magic(uint32_t i) { return __uint_as_float(0x4B000000u | i); }

/* The piece's E weights as f32, before the scale: fp8's value, int8's
 * value, int4's value minus the zero point z. */
template <int S> __device__ __forceinline__ void gq_decode(const uint4 &p, float z, float (&wf)[gq_piece<S>::E])
{
    const uint32_t ws[4] = {p.x, p.y, p.z, p.w};
    if constexpr (S == GQ_FP8) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const __half2_raw r =
                    __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)((ws[i] >> (16 * h)) & 0xffffu), __NV_E4M3);
                const float2 f = __half22float2(__half2(r));
                wf[4 * i + 2 * h] = f.x;
                wf[4 * i + 2 * h + 1] = f.y;
            }
        }
    } else if constexpr (S == GQ_I8) {
        /* byte b as unsigned b ^ 0x80 = v + 128 */
        const float off = 8388608.0f + 128.0f;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t u = ws[i] ^ 0x80808080u;
#pragma unroll
            for (int b = 0; b < 4; b++)
                wf[4 * i + b] = gq_magic((u >> (8 * b)) & 0xffu) - off;
        }
    } else {
        const float off = 8388608.0f + z;
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 8; j++)
                wf[8 * i + j] = gq_magic((ws[i] >> (4 * j)) & 15u) - off;
    }
}

/* Up to GQ_MAX_PARTS weights of one x and one layout in one launch (q, k
 * and v; gate and up): the warps' columns run through the parts in order. */
#define GQ_MAX_PARTS 4

/* The kernel's arguments (by value). */
typedef struct gq_args {
    const void *w[GQ_MAX_PARTS];
    const float *scales[GQ_MAX_PARTS];
    const uint8_t *zeros[GQ_MAX_PARTS];
    const void *bias[GQ_MAX_PARTS];
    int bias_dt[GQ_MAX_PARTS];
    void *out[GQ_MAX_PARTS];
    int end[GQ_MAX_PARTS]; /* columns of parts 0..i together */
    int n_parts;
    int silu; /* parts 0 (gate) and 1 (up) of one N: out[0] = silu(x W0^T + b0) * (x W1^T + b1) */
    const void *x;
    int K, gs, G; /* G: scales per row */
    int rows;     /* rows of this pass (1..GQ_MAX_ROWS) */
} gq_args;

/* acc[r] += x[r, :] . W[n, :] for the rows r < R (the lane's share; the
 * caller sums the warp): w_row the row's codes, sc and zr its scales and
 * zero points. With `wait`, the first pieces of the weight are loaded
 * before anvil_pdl_wait (weights: no kernel writes them), x after. */
template <typename X, int S, int R>
__device__ __forceinline__ void gq_row(const X *x, const uint4 *wr, const float *sc, const uint8_t *zr,
                                       int K, int per_group, int lane, float (&acc)[R], bool wait)
{
    constexpr int E = gq_piece<S>::E;
    const int np = K / E; /* pieces per row */

    /* one piece c (its 16 bytes in p): acc[r] += s * sum_i x[r, c * E + i] wf[i] */
    auto piece = [&](int c, const uint4 &p) {
        const int g = c / per_group;
        const float s = __ldg(sc + g);
        const float z = S == GQ_U4 ? (zr != nullptr ? (float)__ldg(zr + g) : 8.0f) : 0.0f;
        float wf[E];
        gq_decode<S>(p, z, wf);
#pragma unroll
        for (int r = 0; r < R; r++) {
            float xf[E];
            anvil_load_vec<X, E>(x + (int64_t)r * K + (int64_t)c * E, xf);
            /* four independent chains: a 16- or 32-long chain of dependent
             * FMAs would leave the warp waiting on their latency */
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int i = 0; i < E; i++)
                d[i & 3] = fmaf(xf[i], wf[i], d[i & 3]);
            acc[r] = fmaf((d[0] + d[1]) + (d[2] + d[3]), s, acc[r]);
        }
    };

    /* GQ_UNROLL pieces a lane in flight, the last round's predicated (a row
     * of int4 at K = 4096 is four pieces a lane: all of them at once) */
    for (int c = lane; c < np; c += GQ_UNROLL * 32) {
        uint4 wv[GQ_UNROLL];
#pragma unroll
        for (int u = 0; u < GQ_UNROLL; u++)
            if (c + u * 32 < np)
                wv[u] = anvil_ld_stream16(wr + c + u * 32);
        if (wait) {
            anvil_pdl_wait();
            anvil_pdl_launch();
            wait = false;
        }
#pragma unroll
        for (int u = 0; u < GQ_UNROLL; u++)
            if (c + u * 32 < np)
                piece(c + u * 32, wv[u]);
    }
    if (wait) { /* a lane with no piece (np < 32) */
        anvil_pdl_wait();
        anvil_pdl_launch();
    }
}

/* Column gcol's row: part p, row n of it. */
template <int S>
__device__ __forceinline__ const uint4 *gq_wrow(const gq_args &a, int p, int n)
{
    constexpr int E = gq_piece<S>::E;
    return reinterpret_cast<const uint4 *>((const char *)a.w[p] + (int64_t)n * (a.K / (E / 16)));
}

template <typename X, typename O, int S, int R>
__global__ void __launch_bounds__(GQ_WARPS * 32) anvil_gemv_quant_kernel(gq_args a)
{
    constexpr int E = gq_piece<S>::E;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gcol = blockIdx.x * GQ_WARPS + warp;
    const int cols = a.silu ? a.end[0] : a.end[a.n_parts - 1];
    if (gcol >= cols)
        return;
    int part = 0;
    while (gcol >= a.end[part])
        part++;
    const int n0 = part > 0 ? a.end[part - 1] : 0;
    const int n = gcol - n0, N = a.end[part] - n0;
    const int per_group = a.gs / E;
    const X *x = (const X *)a.x;
    float acc[R], acc2[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = acc2[r] = 0.0f;
    gq_row<X, S, R>(x, gq_wrow<S>(a, part, n), a.scales[part] + (int64_t)n * a.G,
                    a.zeros[part] != nullptr ? a.zeros[part] + (int64_t)n * a.G : nullptr, a.K, per_group, lane, acc,
                    true);
    if (a.silu) /* the up row n (part 1) beside the gate row n (part 0) */
        gq_row<X, S, R>(x, gq_wrow<S>(a, 1, n), a.scales[1] + (int64_t)n * a.G,
                        a.zeros[1] != nullptr ? a.zeros[1] + (int64_t)n * a.G : nullptr, a.K, per_group, lane, acc2,
                        false);
#pragma unroll
    for (int r = 0; r < R; r++) {
        acc[r] = anvil_warp_sum(acc[r]);
        if (a.silu)
            acc2[r] = anvil_warp_sum(acc2[r]);
    }
    if (lane == 0) {
        const void *bias = a.bias[part];
        const float b = bias != nullptr ? anvil_load_any(bias, a.bias_dt[part], n) : 0.0f;
        O *out = (O *)a.out[part];
        if (!a.silu) {
#pragma unroll
            for (int r = 0; r < R; r++)
                out[(int64_t)r * N + n] = anvil_from_f32<O>(acc[r] + b);
        } else {
            /* as matmul + matmul + silu_mul: each product rounded to O first */
            const float b2 = a.bias[1] != nullptr ? anvil_load_any(a.bias[1], a.bias_dt[1], n) : 0.0f;
#pragma unroll
            for (int r = 0; r < R; r++) {
                const float gv = anvil_to_f32(anvil_from_f32<O>(acc[r] + b));
                const float uv = anvil_to_f32(anvil_from_f32<O>(acc2[r] + b2));
                out[(int64_t)r * N + n] = anvil_from_f32<O>(gv / (1.0f + expf(-gv)) * uv);
            }
        }
    }
}

static int piece_elems(anvil_dtype dt) { return dt == ANVIL_DTYPE_U4 ? 32 : 16; }

extern "C" int anvil_cuda_gemv_quant_ok(const anvil_cuda_qweight *w, const void *x, anvil_dtype x_dt, const void *out)
{
    if (!anvil_cuda_is_quant_dtype(w->dt) || !anvil_cuda_is_float_dtype(x_dt))
        return 0;
    const int e = piece_elems(w->dt);
    return w->K > 0 && w->K % e == 0 && w->gs > 0 && w->gs % e == 0 && w->K % w->gs == 0 && w->K <= INT32_MAX / 2 &&
           w->N >= 0 && w->N <= INT32_MAX / 4 && anvil_aligned16(w->w) && anvil_aligned16(x) && anvil_aligned16(out);
}

template <typename X, typename O, int S>
static void launch_rows(cudaStream_t stream, int pdl, const gq_args &a)
{
    const int cols = a.silu ? a.end[0] : a.end[a.n_parts - 1];
    const dim3 grid((unsigned)((cols + GQ_WARPS - 1) / GQ_WARPS));
    switch (a.rows) {
    case 1:
        anvil_launch(anvil_gemv_quant_kernel<X, O, S, 1>, grid, GQ_WARPS * 32, 0, stream, pdl, a);
        break;
    case 2:
        anvil_launch(anvil_gemv_quant_kernel<X, O, S, 2>, grid, GQ_WARPS * 32, 0, stream, pdl, a);
        break;
    case 3:
        anvil_launch(anvil_gemv_quant_kernel<X, O, S, 3>, grid, GQ_WARPS * 32, 0, stream, pdl, a);
        break;
    default:
        anvil_launch(anvil_gemv_quant_kernel<X, O, S, 4>, grid, GQ_WARPS * 32, 0, stream, pdl, a);
        break;
    }
}

template <typename X, typename O>
static void launch_scheme(cudaStream_t stream, int pdl, anvil_dtype wdt, const gq_args &a)
{
    if (wdt == ANVIL_DTYPE_F8_E4M3)
        launch_rows<X, O, GQ_FP8>(stream, pdl, a);
    else if (wdt == ANVIL_DTYPE_I8)
        launch_rows<X, O, GQ_I8>(stream, pdl, a);
    else
        launch_rows<X, O, GQ_U4>(stream, pdl, a);
}

static anvil_status launch_parts(cudaStream_t stream, int pdl, int n_parts, const anvil_cuda_qweight *w,
                                 const void *x, anvil_dtype x_dt, const void *const *bias, const anvil_dtype *bias_dt,
                                 void *const *out, anvil_dtype out_dt, int64_t T, int silu)
{
    CHECK(n_parts >= 1 && n_parts <= GQ_MAX_PARTS, ANVIL_ERR_INVALID_ARG, "gemv (quantized): %d parts (1..%d)",
          n_parts, GQ_MAX_PARTS);
    CHECK(anvil_cuda_is_float_dtype(out_dt), ANVIL_ERR_UNSUPPORTED, "gemv (quantized): output dtype %s",
          anvil_dtype_name(out_dt));
    /* x is the activations (out's dtype) or prepared activations in f32 */
    CHECK(x_dt == out_dt || x_dt == ANVIL_DTYPE_F32, ANVIL_ERR_UNSUPPORTED, "gemv (quantized): x %s, out %s",
          anvil_dtype_name(x_dt), anvil_dtype_name(out_dt));
    CHECK(T >= 0, ANVIL_ERR_INVALID_ARG, "gemv (quantized): %lld rows", (long long)T);
    gq_args a;
    memset(&a, 0, sizeof a);
    int64_t total = 0;
    for (int i = 0; i < n_parts; i++) {
        CHECK(anvil_cuda_gemv_quant_ok(&w[i], x, x_dt, out[i]), ANVIL_ERR_UNSUPPORTED,
              "gemv (quantized): %s [%lld, %lld], group %lld (K and the group multiples of %d, 16-byte aligned)",
              anvil_dtype_name(w[i].dt), (long long)w[i].N, (long long)w[i].K, (long long)w[i].gs,
              piece_elems(w[i].dt));
        CHECK(w[i].dt == w[0].dt && w[i].K == w[0].K && w[i].gs == w[0].gs, ANVIL_ERR_INVALID_ARG,
              "gemv (quantized): parts of different layouts");
        CHECK(bias == NULL || bias[i] == NULL || anvil_cuda_is_float_dtype(bias_dt[i]), ANVIL_ERR_UNSUPPORTED,
              "gemv (quantized): bias dtype %s", anvil_dtype_name(bias_dt[i]));
        total += w[i].N;
        CHECK(total <= INT32_MAX - GQ_WARPS, ANVIL_ERR_UNSUPPORTED, "gemv (quantized): %lld columns",
              (long long)total);
        a.w[i] = w[i].w;
        a.scales[i] = w[i].scales;
        a.zeros[i] = w[i].dt == ANVIL_DTYPE_U4 ? w[i].zeros : nullptr;
        a.bias[i] = bias ? bias[i] : nullptr;
        a.bias_dt[i] = bias && bias[i] ? (int)bias_dt[i] : 0;
        a.end[i] = (int)total;
    }
    a.n_parts = n_parts;
    a.silu = silu;
    if (T == 0 || total == 0)
        return ANVIL_OK;
    a.K = (int)w[0].K;
    a.gs = (int)w[0].gs;
    a.G = (int)(w[0].K / w[0].gs);
    const size_t xs = anvil_dtype_size(x_dt), os = anvil_dtype_size(out_dt);
    for (int64_t t0 = 0; t0 < T; t0 += GQ_MAX_ROWS) {
        a.rows = (int)(T - t0 < GQ_MAX_ROWS ? T - t0 : GQ_MAX_ROWS);
        a.x = (const char *)x + (size_t)t0 * (size_t)w[0].K * xs;
        for (int i = 0; i < n_parts; i++)
            a.out[i] = (char *)out[i] + (size_t)t0 * (size_t)w[i].N * os;
        if (x_dt == ANVIL_DTYPE_F32 && out_dt == ANVIL_DTYPE_F32)
            launch_scheme<float, float>(stream, pdl, w[0].dt, a);
        else if (x_dt == ANVIL_DTYPE_F32 && out_dt == ANVIL_DTYPE_BF16)
            launch_scheme<float, __nv_bfloat16>(stream, pdl, w[0].dt, a);
        else if (x_dt == ANVIL_DTYPE_F32)
            launch_scheme<float, __half>(stream, pdl, w[0].dt, a);
        else if (x_dt == ANVIL_DTYPE_BF16)
            launch_scheme<__nv_bfloat16, __nv_bfloat16>(stream, pdl, w[0].dt, a);
        else
            launch_scheme<__half, __half>(stream, pdl, w[0].dt, a);
        TRY(ANVIL_CUDA_LAUNCHED("gemv (quantized) kernel"));
    }
    return ANVIL_OK;
}

extern "C" anvil_status anvil_cuda_launch_gemv_quant_multi(cudaStream_t stream, int pdl, int n_parts,
                                                           const anvil_cuda_qweight *w, const void *x,
                                                           anvil_dtype x_dt, const void *const *bias,
                                                           const anvil_dtype *bias_dt, void *const *out,
                                                           anvil_dtype out_dt, int64_t T)
{
    return launch_parts(stream, pdl, n_parts, w, x, x_dt, bias, bias_dt, out, out_dt, T, 0);
}

extern "C" anvil_status anvil_cuda_launch_gemv_quant_silu(cudaStream_t stream, int pdl, const anvil_cuda_qweight *wg,
                                                          const anvil_cuda_qweight *wu, const void *x,
                                                          anvil_dtype x_dt, const void *bg, anvil_dtype bg_dt,
                                                          const void *bu, anvil_dtype bu_dt, void *out,
                                                          anvil_dtype out_dt, int64_t T)
{
    CHECK(wg->N == wu->N, ANVIL_ERR_INVALID_ARG, "gemv silu (quantized): gate %lld and up %lld columns",
          (long long)wg->N, (long long)wu->N);
    const anvil_cuda_qweight w[2] = {*wg, *wu};
    const void *b[2] = {bg, bu};
    const anvil_dtype bdt[2] = {bg_dt, bu_dt};
    void *o[2] = {out, out};
    return launch_parts(stream, pdl, 2, w, x, x_dt, b, bdt, o, out_dt, T, 1);
}

extern "C" anvil_status anvil_cuda_launch_gemv_quant(cudaStream_t stream, int pdl, const anvil_cuda_qweight *w,
                                                     const void *x, anvil_dtype x_dt, const void *bias,
                                                     anvil_dtype bias_dt, void *out, anvil_dtype out_dt, int64_t T)
{
    return anvil_cuda_launch_gemv_quant_multi(stream, pdl, 1, w, x, x_dt, &bias, &bias_dt, &out, out_dt, T);
}
