/* A plain tiled GEMM, out[T, N] = x[T, K] w[N, K]^T (+ bias), f32
 * accumulation: the fallback for the shapes cuBLASLt has no algorithm for
 * (it is correct for every shape, and slow). */
#include "backend/cuda/cuda_common.cuh"

#define GT 16

template <typename T>
__global__ void anvil_gemm_simt_kernel(const T *x, const T *w, const void *bias, int bias_dt, T *out, int64_t rows,
                                       int64_t K, int64_t N)
{
    __shared__ float xs[GT][GT + 1], ws[GT][GT + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int64_t t = (int64_t)blockIdx.y * GT + ty, n = (int64_t)blockIdx.x * GT + tx;
    const int64_t wrow = (int64_t)blockIdx.x * GT + ty; /* the weight row this thread loads */
    float acc = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += GT) {
        xs[ty][tx] = t < rows && k0 + tx < K ? anvil_to_f32(x[t * K + k0 + tx]) : 0.0f;
        ws[ty][tx] = wrow < N && k0 + tx < K ? anvil_to_f32(w[wrow * K + k0 + tx]) : 0.0f;
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GT; kk++)
            acc = fmaf(xs[ty][kk], ws[tx][kk], acc);
        __syncthreads();
    }
    if (t < rows && n < N) {
        if (bias != nullptr)
            acc += anvil_load_any(bias, bias_dt, n);
        out[t * N + n] = anvil_from_f32<T>(acc);
    }
}

extern "C" anvil_status anvil_cuda_launch_gemm_simt(cudaStream_t stream, const void *x, const void *w,
                                                    const void *bias, anvil_dtype bias_dt, void *out,
                                                    anvil_dtype act_dt, int64_t rows, int64_t K, int64_t N)
{
    CHECK(bias == NULL || anvil_cuda_is_float_dtype(bias_dt), ANVIL_ERR_UNSUPPORTED, "gemm: bias dtype %s",
          anvil_dtype_name(bias_dt));
    CHECK((rows + GT - 1) / GT <= 65535 && (N + GT - 1) / GT <= INT32_MAX, ANVIL_ERR_UNSUPPORTED,
          "gemm: [%lld, %lld] x [%lld, %lld]^T is too large for the fallback", (long long)rows, (long long)K,
          (long long)N, (long long)K);
    if (rows == 0 || N == 0)
        return ANVIL_OK;
    const dim3 grid((unsigned)((N + GT - 1) / GT), (unsigned)((rows + GT - 1) / GT)), block(GT, GT);
    ANVIL_CUDA_DISPATCH(act_dt, anvil_gemm_simt_kernel<T><<<grid, block, 0, stream>>>(
                                    (const T *)x, (const T *)w, bias, (int)bias_dt, (T *)out, rows, K, N));
    return ANVIL_CUDA_LAUNCHED("gemm fallback kernel");
}
