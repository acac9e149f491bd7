/* out = silu(gate) * up = gate / (1 + expf(-gate)) * up, in f32. */
#include "backend/cuda/cuda_common.cuh"

template <typename T> __global__ void anvil_silu_mul_kernel(const T *gate, const T *up, T *out, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float g = anvil_to_f32(gate[i]);
        out[i] = anvil_from_f32<T>(g / (1.0f + expf(-g)) * anvil_to_f32(up[i]));
    }
}

extern "C" anvil_status anvil_cuda_launch_silu_mul(cudaStream_t stream, const void *gate, const void *up, void *out,
                                                   anvil_dtype act_dt, int64_t n)
{
    if (n == 0)
        return ANVIL_OK;
    ANVIL_CUDA_DISPATCH(act_dt, anvil_silu_mul_kernel<T><<<anvil_grid_for(n, 256), 256, 0, stream>>>(
                                    (const T *)gate, (const T *)up, (T *)out, n));
    return ANVIL_CUDA_LAUNCHED("silu_mul kernel");
}
