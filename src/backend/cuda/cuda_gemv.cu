/*
 * out[t, n] = x[t, :] . w[n, :] (+ bias[n]) for a few rows t (decode steps
 * of small batches), bf16/f16 with f32 accumulation.
 *
 * At one to four rows a matmul reads the weight once and does 2 to 8 FLOPs
 * per weight element: it is a stream over the weight at memory bandwidth.
 * cuBLASLt's choices there reach 51-84% of the copy bandwidth for the
 * Llama-3-8B shapes (the smaller the matrix, the worse); the matmul op
 * times this kernel against cuBLASLt once per shape and keeps the faster.
 *
 * A warp per output column n: each lane streams 16-byte pieces of w's row
 * (lane, lane + 32, ...; eight in flight per lane through the unrolled
 * loop, loaded past L1 so the weight does not evict x), multiplies them
 * with the matching pieces of x (L1-resident) for every row t, and the warp
 * sums its lanes at the end. K must be a multiple of 8 and the pointers
 * 16-byte aligned (anvil_cuda_gemv_ok).
 */
#include <string.h>

#include "backend/cuda/cuda_gemv.cuh"

#define GV_WARPS    4
#define GV_MAX_ROWS 4

/* Up to GV_MAX_PARTS matrices of one x in one launch (q, k and v): the
 * warps' columns run through the parts in order. */
#define GV_MAX_PARTS 4

typedef struct gv_parts {
    const void *w[GV_MAX_PARTS];
    void *out[GV_MAX_PARTS];
    const void *bias[GV_MAX_PARTS];
    int bias_dt[GV_MAX_PARTS];
    int end[GV_MAX_PARTS]; /* columns of parts 0..i together */
    int n_parts;
} gv_parts;

/* acc[r] += x[r, :] . w[u] for the lane's eight pieces at v (v + 32u). */
template <typename T, int R>
__device__ __forceinline__ void anvil_gemv_dot8x(const uint4 *xr, const uint4 (&wv)[8], int kv, int v,
                                                 float (&acc)[R])
{
#pragma unroll
    for (int u = 0; u < 8; u++)
#pragma unroll
        for (int r = 0; r < R; r++)
            acc[r] = anvil_dot8<T>(xr[(int64_t)r * kv + v + u * 32], wv[u], acc[r]);
}

/* acc[r] += x[r, :] . w_row for the rows r < R (the lane's share; the
 * caller sums the warp). With `wait`, the first weight pieces are loaded
 * before anvil_pdl_wait (anvil_pdl_load16, so that they stay before it in
 * SASS): they are weights, which no kernel writes, so under a dependent
 * launch they stream in while the kernel before still runs. */
template <typename T, int R>
__device__ __forceinline__ void anvil_gemv_row(const uint4 *xr, const uint4 *wr, int kv, int lane,
                                               float (&acc)[R], bool wait)
{
    int v = lane;
    if (wait) {
        if (v + 7 * 32 < kv) {
            uint4 wv[8];
#pragma unroll
            for (int u = 0; u < 8; u++)
                wv[u] = anvil_pdl_load16(wr + v + u * 32);
            anvil_pdl_wait();
            anvil_pdl_launch();
            anvil_gemv_dot8x<T, R>(xr, wv, kv, v, acc);
            v += 8 * 32;
        } else {
            anvil_pdl_wait();
            anvil_pdl_launch();
        }
    }
    /* eight pieces per lane in flight, then the tail */
    for (; v + 7 * 32 < kv; v += 8 * 32) {
        uint4 wv[8];
#pragma unroll
        for (int u = 0; u < 8; u++)
            wv[u] = anvil_ld_stream16(wr + v + u * 32);
        anvil_gemv_dot8x<T, R>(xr, wv, kv, v, acc);
    }
    for (; v < kv; v += 32) {
        const uint4 wv = anvil_ld_stream16(wr + v);
#pragma unroll
        for (int r = 0; r < R; r++)
            acc[r] = anvil_dot8<T>(xr[(int64_t)r * kv + v], wv, acc[r]);
    }
}

template <typename T, int R>
__global__ void __launch_bounds__(GV_WARPS * 32) anvil_gemv_kernel(const T *x, gv_parts p, int K)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = blockIdx.x * GV_WARPS + warp;
    if (g >= p.end[p.n_parts - 1])
        return;
    int part = 0;
    while (g >= p.end[part])
        part++;
    const int N = p.end[part] - (part > 0 ? p.end[part - 1] : 0);
    const int n = g - (part > 0 ? p.end[part - 1] : 0);
    const T *w = (const T *)p.w[part];
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = 0.0f;
    anvil_gemv_row<T, R>(reinterpret_cast<const uint4 *>(x),
                         reinterpret_cast<const uint4 *>(w + (int64_t)n * K), K / 8, lane, acc, true);
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = anvil_warp_sum(acc[r]);
    if (lane == 0) {
        const void *bias = p.bias[part];
        const float b = bias != nullptr ? anvil_load_any(bias, p.bias_dt[part], n) : 0.0f;
        T *out = (T *)p.out[part];
#pragma unroll
        for (int r = 0; r < R; r++)
            out[(int64_t)r * N + n] = anvil_from_f32<T>(acc[r] + b);
    }
}

/* out[:, n] = silu(x . wg[n] + bg[n]) * (x . wu[n] + bu[n]): a warp streams
 * both rows n (the gate's and the up's) and rounds each product to T before
 * the silu, as the separate matmuls and silu_mul would. */
template <typename T, int R>
__global__ void __launch_bounds__(GV_WARPS * 32)
    anvil_gemv_silu_kernel(const T *x, const T *__restrict__ wg, const void *bg, int bg_dt,
                           const T *__restrict__ wu, const void *bu, int bu_dt, T *out, int K, int N)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * GV_WARPS + warp;
    if (n >= N)
        return;
    float ag[R], au[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        ag[r] = au[r] = 0.0f;
    const uint4 *xr = reinterpret_cast<const uint4 *>(x);
    anvil_gemv_row<T, R>(xr, reinterpret_cast<const uint4 *>(wg + (int64_t)n * K), K / 8, lane, ag, true);
    anvil_gemv_row<T, R>(xr, reinterpret_cast<const uint4 *>(wu + (int64_t)n * K), K / 8, lane, au, false);
#pragma unroll
    for (int r = 0; r < R; r++) {
        ag[r] = anvil_warp_sum(ag[r]);
        au[r] = anvil_warp_sum(au[r]);
    }
    if (lane == 0) {
        const float b1 = bg != nullptr ? anvil_load_any(bg, bg_dt, n) : 0.0f;
        const float b2 = bu != nullptr ? anvil_load_any(bu, bu_dt, n) : 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float gv = anvil_to_f32(anvil_from_f32<T>(ag[r] + b1));
            const float uv = anvil_to_f32(anvil_from_f32<T>(au[r] + b2));
            out[(int64_t)r * N + n] = anvil_from_f32<T>(gv / (1.0f + expf(-gv)) * uv);
        }
    }
}

extern "C" int anvil_cuda_gemv_ok(anvil_dtype dt, int64_t T, int64_t K, const void *x, const void *w,
                                  const void *out)
{
    return (dt == ANVIL_DTYPE_BF16 || dt == ANVIL_DTYPE_F16) && T >= 1 && T <= GV_MAX_ROWS && K % 8 == 0 &&
           K <= INT32_MAX && anvil_aligned16(x) && anvil_aligned16(w) && anvil_aligned16(out);
}

template <typename T>
static anvil_status launch_t(cudaStream_t stream, int pdl, const void *x, const gv_parts *p, int64_t T_, int64_t K)
{
    const dim3 grid((unsigned)((p->end[p->n_parts - 1] + GV_WARPS - 1) / GV_WARPS));
    const T *xp = (const T *)x;
    switch (T_) {
    case 1:
        anvil_launch(anvil_gemv_kernel<T, 1>, grid, GV_WARPS * 32, 0, stream, pdl, xp, *p, (int)K);
        break;
    case 2:
        anvil_launch(anvil_gemv_kernel<T, 2>, grid, GV_WARPS * 32, 0, stream, pdl, xp, *p, (int)K);
        break;
    case 3:
        anvil_launch(anvil_gemv_kernel<T, 3>, grid, GV_WARPS * 32, 0, stream, pdl, xp, *p, (int)K);
        break;
    default:
        anvil_launch(anvil_gemv_kernel<T, 4>, grid, GV_WARPS * 32, 0, stream, pdl, xp, *p, (int)K);
        break;
    }
    return ANVIL_CUDA_LAUNCHED("gemv kernel");
}

extern "C" anvil_status anvil_cuda_launch_gemv_multi(cudaStream_t stream, int pdl, const void *x, int n_parts,
                                                     const void *const *w, const void *const *bias,
                                                     const anvil_dtype *bias_dt, void *const *out,
                                                     const int64_t *n, anvil_dtype act_dt, int64_t T,
                                                     int64_t K)
{
    CHECK(n_parts >= 1 && n_parts <= GV_MAX_PARTS, ANVIL_ERR_INVALID_ARG, "gemv: %d parts (1..%d)", n_parts,
          GV_MAX_PARTS);
    gv_parts p;
    memset(&p, 0, sizeof p);
    int64_t total = 0;
    for (int i = 0; i < n_parts; i++) {
        CHECK(anvil_cuda_gemv_ok(act_dt, T, K, x, w[i], out[i]), ANVIL_ERR_UNSUPPORTED,
              "gemv: %s, %lld rows of %lld (bf16/f16, 1..4 rows, K a multiple of 8, 16-byte aligned)",
              anvil_dtype_name(act_dt), (long long)T, (long long)K);
        total += n[i];
        CHECK(n[i] >= 0 && total <= INT32_MAX - GV_WARPS, ANVIL_ERR_UNSUPPORTED, "gemv: %lld columns",
              (long long)total);
        p.w[i] = w[i];
        p.out[i] = out[i];
        p.bias[i] = bias ? bias[i] : NULL;
        p.bias_dt[i] = bias && bias[i] ? (int)bias_dt[i] : 0;
        p.end[i] = (int)total;
    }
    p.n_parts = n_parts;
    if (total == 0)
        return ANVIL_OK;
    if (act_dt == ANVIL_DTYPE_BF16)
        return launch_t<__nv_bfloat16>(stream, pdl, x, &p, T, K);
    return launch_t<__half>(stream, pdl, x, &p, T, K);
}

extern "C" anvil_status anvil_cuda_launch_gemv(cudaStream_t stream, int pdl, const void *x, const void *w,
                                               const void *bias, anvil_dtype bias_dt, void *out,
                                               anvil_dtype act_dt, int64_t T, int64_t K, int64_t N)
{
    return anvil_cuda_launch_gemv_multi(stream, pdl, x, 1, &w, &bias, &bias_dt, &out, &N, act_dt, T, K);
}

template <typename T>
static void launch_silu_t(cudaStream_t stream, int pdl, const void *x, const void *wg, const void *bg,
                          anvil_dtype bg_dt, const void *wu, const void *bu, anvil_dtype bu_dt, void *out,
                          int64_t T_, int64_t K, int64_t N)
{
    const dim3 grid((unsigned)((N + GV_WARPS - 1) / GV_WARPS));
#define GV_SILU(R)                                                                                           \
    anvil_launch(anvil_gemv_silu_kernel<T, R>, grid, GV_WARPS * 32, 0, stream, pdl, (const T *)x, (const T *)wg,  \
                 bg, (int)bg_dt, (const T *)wu, bu, (int)bu_dt, (T *)out, (int)K, (int)N)
    switch (T_) {
    case 1:
        GV_SILU(1);
        break;
    case 2:
        GV_SILU(2);
        break;
    case 3:
        GV_SILU(3);
        break;
    default:
        GV_SILU(4);
        break;
    }
#undef GV_SILU
}

extern "C" anvil_status anvil_cuda_launch_gemv_silu_mul(cudaStream_t stream, int pdl, const void *x, const void *wg,
                                                        const void *bg, anvil_dtype bg_dt, const void *wu,
                                                        const void *bu, anvil_dtype bu_dt, void *out,
                                                        anvil_dtype act_dt, int64_t T, int64_t K, int64_t N)
{
    CHECK(anvil_cuda_gemv_ok(act_dt, T, K, x, wg, out) && anvil_aligned16(wu), ANVIL_ERR_UNSUPPORTED,
          "gemv silu: %s, %lld rows of %lld (bf16/f16, 1..4 rows, K a multiple of 8, 16-byte aligned)",
          anvil_dtype_name(act_dt), (long long)T, (long long)K);
    CHECK(N <= INT32_MAX - GV_WARPS, ANVIL_ERR_UNSUPPORTED, "gemv silu: N = %lld", (long long)N);
    if (N == 0)
        return ANVIL_OK;
    if (act_dt == ANVIL_DTYPE_BF16)
        launch_silu_t<__nv_bfloat16>(stream, pdl, x, wg, bg, bg_dt, wu, bu, bu_dt, out, T, K, N);
    else
        launch_silu_t<__half>(stream, pdl, x, wg, bg, bg_dt, wu, bu, bu_dt, out, T, K, N);
    return ANVIL_CUDA_LAUNCHED("gemv silu kernel");
}
