/* out = silu(gate) * up = gate / (1 + expf(-gate)) * up, in f32. */
#include "backend/cuda/cuda_common.cuh"

template <typename T> __global__ void anvil_silu_mul_kernel(const T *gate, const T *up, T *out, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float g = anvil_to_f32(gate[i]);
        out[i] = anvil_from_f32<T>(g / (1.0f + expf(-g)) * anvil_to_f32(up[i]));
    }
}

/* 16 bytes per thread and access (n a multiple of V, pointers 16-byte aligned). */
template <typename T> __global__ void anvil_silu_mul_vec_kernel(const T *gate, const T *up, T *out, int64_t n_vec)
{
    constexpr int V = 16 / sizeof(T);
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n_vec; j += (int64_t)gridDim.x * blockDim.x) {
        float g[V], u[V];
        anvil_load_vec<T, V>(gate + j * V, g);
        anvil_load_vec<T, V>(up + j * V, u);
#pragma unroll
        for (int i = 0; i < V; i++)
            g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        anvil_store_vec<T, V>(out + j * V, g);
    }
}

extern "C" anvil_status anvil_cuda_launch_silu_mul(cudaStream_t stream, const void *gate, const void *up, void *out,
                                                   anvil_dtype act_dt, int64_t n)
{
    if (n == 0)
        return ANVIL_OK;
    ANVIL_CUDA_DISPATCH(act_dt, {
        constexpr int V = 16 / sizeof(T);
        if (n % V == 0 && anvil_aligned16(gate) && anvil_aligned16(up) && anvil_aligned16(out))
            anvil_silu_mul_vec_kernel<T><<<anvil_grid_for(n / V, 256), 256, 0, stream>>>(
                (const T *)gate, (const T *)up, (T *)out, n / V);
        else
            anvil_silu_mul_kernel<T><<<anvil_grid_for(n, 256), 256, 0, stream>>>((const T *)gate, (const T *)up,
                                                                               (T *)out, n);
    });
    return ANVIL_CUDA_LAUNCHED("silu_mul kernel");
}
