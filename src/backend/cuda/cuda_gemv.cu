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
#include "backend/cuda/cuda_common.cuh"

#define GV_WARPS 4
#define GV_MAX_ROWS 4

__device__ __forceinline__ uint4 anvil_ld_stream16(const void *p)
{
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

__device__ __forceinline__ float2 anvil_pair_f32(uint32_t u, __nv_bfloat16 *)
{
    __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162 *>(&u);
    return __bfloat1622float2(h);
}
__device__ __forceinline__ float2 anvil_pair_f32(uint32_t u, __half *)
{
    __half2 h = *reinterpret_cast<__half2 *>(&u);
    return __half22float2(h);
}

/* the dot of 8 packed elements of x and of w, added to acc */
template <typename T> __device__ __forceinline__ float anvil_dot8(uint4 xv, uint4 wv, float acc)
{
    const uint32_t xs[4] = {xv.x, xv.y, xv.z, xv.w}, ws[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 a = anvil_pair_f32(xs[i], (T *)nullptr), b = anvil_pair_f32(ws[i], (T *)nullptr);
        acc = fmaf(a.x, b.x, acc);
        acc = fmaf(a.y, b.y, acc);
    }
    return acc;
}

template <typename T, int R>
__global__ void __launch_bounds__(GV_WARPS * 32)
    anvil_gemv_kernel(const T *__restrict__ x, const T *__restrict__ w, const void *bias, int bias_dt, T *out,
                      int K, int N)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * GV_WARPS + warp;
    if (n >= N)
        return;
    const uint4 *wr = reinterpret_cast<const uint4 *>(w + (int64_t)n * K);
    const uint4 *xr = reinterpret_cast<const uint4 *>(x);
    const int kv = K / 8, xs = K / 8; /* 16-byte pieces per row */
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = 0.0f;
    int v = lane;
    /* eight pieces per lane in flight, then the tail */
    for (; v + 7 * 32 < kv; v += 8 * 32) {
        uint4 wv[8];
#pragma unroll
        for (int u = 0; u < 8; u++)
            wv[u] = anvil_ld_stream16(wr + v + u * 32);
#pragma unroll
        for (int u = 0; u < 8; u++)
#pragma unroll
            for (int r = 0; r < R; r++)
                acc[r] = anvil_dot8<T>(xr[(int64_t)r * xs + v + u * 32], wv[u], acc[r]);
    }
    for (; v < kv; v += 32) {
        const uint4 wv = anvil_ld_stream16(wr + v);
#pragma unroll
        for (int r = 0; r < R; r++)
            acc[r] = anvil_dot8<T>(xr[(int64_t)r * xs + v], wv, acc[r]);
    }
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = anvil_warp_sum(acc[r]);
    if (lane == 0) {
        const float b = bias != nullptr ? anvil_load_any(bias, bias_dt, n) : 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++)
            out[(int64_t)r * N + n] = anvil_from_f32<T>(acc[r] + b);
    }
}

extern "C" int anvil_cuda_gemv_ok(anvil_dtype dt, int64_t T, int64_t K, const void *x, const void *w,
                                  const void *out)
{
    return (dt == ANVIL_DTYPE_BF16 || dt == ANVIL_DTYPE_F16) && T >= 1 && T <= GV_MAX_ROWS && K % 8 == 0 &&
           K <= INT32_MAX && anvil_aligned16(x) && anvil_aligned16(w) && anvil_aligned16(out);
}

template <typename T>
static anvil_status launch_t(cudaStream_t stream, const void *x, const void *w, const void *bias, anvil_dtype bias_dt,
                             void *out, int64_t T_, int64_t K, int64_t N)
{
    const dim3 grid((unsigned)((N + GV_WARPS - 1) / GV_WARPS));
    const T *xp = (const T *)x, *wp = (const T *)w;
    T *op = (T *)out;
    switch (T_) {
    case 1: anvil_gemv_kernel<T, 1><<<grid, GV_WARPS * 32, 0, stream>>>(xp, wp, bias, (int)bias_dt, op, (int)K, (int)N); break;
    case 2: anvil_gemv_kernel<T, 2><<<grid, GV_WARPS * 32, 0, stream>>>(xp, wp, bias, (int)bias_dt, op, (int)K, (int)N); break;
    case 3: anvil_gemv_kernel<T, 3><<<grid, GV_WARPS * 32, 0, stream>>>(xp, wp, bias, (int)bias_dt, op, (int)K, (int)N); break;
    default: anvil_gemv_kernel<T, 4><<<grid, GV_WARPS * 32, 0, stream>>>(xp, wp, bias, (int)bias_dt, op, (int)K, (int)N); break;
    }
    return ANVIL_CUDA_LAUNCHED("gemv kernel");
}

extern "C" anvil_status anvil_cuda_launch_gemv(cudaStream_t stream, const void *x, const void *w, const void *bias,
                                               anvil_dtype bias_dt, void *out, anvil_dtype act_dt, int64_t T,
                                               int64_t K, int64_t N)
{
    CHECK(anvil_cuda_gemv_ok(act_dt, T, K, x, w, out), ANVIL_ERR_UNSUPPORTED,
          "gemv: %s, %lld rows of %lld (bf16/f16, 1..4 rows, K a multiple of 8, 16-byte aligned)",
          anvil_dtype_name(act_dt), (long long)T, (long long)K);
    CHECK(N <= (int64_t)65535 * 65535 && N <= INT32_MAX, ANVIL_ERR_UNSUPPORTED, "gemv: N = %lld", (long long)N);
    if (N == 0)
        return ANVIL_OK;
    if (act_dt == ANVIL_DTYPE_BF16)
        return launch_t<__nv_bfloat16>(stream, x, w, bias, bias_dt, out, T, K, N);
    return launch_t<__half>(stream, x, w, bias, bias_dt, out, T, K, N);
}
