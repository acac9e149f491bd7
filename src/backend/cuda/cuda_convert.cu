/* Helpers of the matmul: dtype conversion of a whole tensor (a weight whose
 * dtype differs from the activations) and a bias added after a GEMM when
 * the cuBLASLt epilogue cannot take it. */
#include "backend/cuda/cuda_common.cuh"

template <typename T> __global__ void anvil_convert_kernel(const void *src, int src_dt, T *dst, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = anvil_from_f32<T>(anvil_load_any(src, src_dt, i));
}

template <typename T>
__global__ void anvil_bias_add_kernel(T *out, const void *bias, int bias_dt, int64_t rows, int64_t cols)
{
    const int64_t n = rows * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = anvil_from_f32<T>(anvil_to_f32(out[i]) + anvil_load_any(bias, bias_dt, i % cols));
}

extern "C" anvil_status anvil_cuda_launch_convert(cudaStream_t stream, const void *src, anvil_dtype src_dt, void *dst,
                                                  anvil_dtype dst_dt, int64_t n)
{
    CHECK(anvil_cuda_is_float_dtype(src_dt), ANVIL_ERR_UNSUPPORTED, "convert: dtype %s", anvil_dtype_name(src_dt));
    if (n == 0)
        return ANVIL_OK;
    ANVIL_CUDA_DISPATCH(dst_dt, anvil_convert_kernel<T><<<anvil_grid_for(n, 256), 256, 0, stream>>>(
                                    src, (int)src_dt, (T *)dst, n));
    return ANVIL_CUDA_LAUNCHED("convert kernel");
}

extern "C" anvil_status anvil_cuda_launch_bias_add(cudaStream_t stream, void *out, anvil_dtype out_dt,
                                                   const void *bias, anvil_dtype bias_dt, int64_t rows, int64_t cols)
{
    CHECK(anvil_cuda_is_float_dtype(bias_dt), ANVIL_ERR_UNSUPPORTED, "bias: dtype %s", anvil_dtype_name(bias_dt));
    if (rows * cols == 0)
        return ANVIL_OK;
    ANVIL_CUDA_DISPATCH(out_dt, anvil_bias_add_kernel<T><<<anvil_grid_for(rows * cols, 256), 256, 0, stream>>>(
                                    (T *)out, bias, (int)bias_dt, rows, cols));
    return ANVIL_CUDA_LAUNCHED("bias_add kernel");
}
