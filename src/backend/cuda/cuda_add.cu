/* out = a + b, in f32 (out may alias a or b: each element is read before
 * it is written, by the same thread). */
#include "backend/cuda/cuda_common.cuh"

template <typename T> __global__ void anvil_add_kernel(const T *a, const T *b, T *out, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = anvil_from_f32<T>(anvil_to_f32(a[i]) + anvil_to_f32(b[i]));
}

extern "C" anvil_status anvil_cuda_launch_add(cudaStream_t stream, const void *a, const void *b, void *out,
                                              anvil_dtype act_dt, int64_t n)
{
    if (n == 0)
        return ANVIL_OK;
    ANVIL_CUDA_DISPATCH(act_dt, anvil_add_kernel<T><<<anvil_grid_for(n, 256), 256, 0, stream>>>(
                                    (const T *)a, (const T *)b, (T *)out, n));
    return ANVIL_CUDA_LAUNCHED("add kernel");
}
