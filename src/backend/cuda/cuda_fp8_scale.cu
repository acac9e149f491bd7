/*
 * The scales of the FP8 GEMM where cuBLASLt takes no outer-vector scales
 * (cuda_matmul.c, anvil_cuda_gemm_fp8): cuBLASLt writes the unscaled f32
 * products of the fp8 codes, and this kernel multiplies each by its row's
 * activation scale and its column's weight scale, adds the bias, and rounds
 * to the activation dtype.
 */
#include "backend/cuda/cuda_common.cuh"

template <typename O>
__global__ void anvil_fp8_scale_kernel(const float *__restrict__ acc, const float *__restrict__ sx,
                                       const float *__restrict__ sw, const void *bias, int bias_dt,
                                       O *__restrict__ out, int64_t T, int64_t N)
{
    const int64_t n_all = T * N;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_all; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / N, n = i - t * N;
        const float b = bias != nullptr ? anvil_load_any(bias, bias_dt, n) : 0.0f;
        out[i] = anvil_from_f32<O>(acc[i] * (sx[t] * sw[n]) + b);
    }
}

extern "C" anvil_status anvil_cuda_launch_fp8_scale(cudaStream_t stream, const float *acc, const float *sx,
                                                    const float *sw, const void *bias, anvil_dtype bias_dt, void *out,
                                                    anvil_dtype out_dt, int64_t rows, int64_t cols)
{
    CHECK(bias == NULL || anvil_cuda_is_float_dtype(bias_dt), ANVIL_ERR_UNSUPPORTED, "fp8 scale: bias dtype %s",
          anvil_dtype_name(bias_dt));
    if (rows * cols == 0)
        return ANVIL_OK;
    ANVIL_CUDA_DISPATCH(out_dt, anvil_fp8_scale_kernel<T><<<anvil_grid_for(rows * cols, 256), 256, 0, stream>>>(
                                    acc, sx, sw, bias, (int)bias_dt, (T *)out, rows, cols));
    return ANVIL_CUDA_LAUNCHED("fp8 scale kernel");
}
