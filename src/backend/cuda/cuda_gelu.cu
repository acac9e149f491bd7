/* out = gelu_tanh(gate) * up, in f32: GELU with the tanh approximation
 * (PyTorch's approximate="tanh"), 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3))),
 * the expression of the CPU's anvil_cpu_gelu_tanh (Gemma's gated MLP); and
 * out = gelu_tanh(x), not gated (GPT-2's MLP), with the same arithmetic. */
#include "backend/cuda/cuda_common.cuh"

__device__ __forceinline__ float anvil_gelu_tanh(float g)
{
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g)));
}

template <typename T> __global__ void anvil_gelu_tanh_mul_kernel(const T *gate, const T *up, T *out, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = anvil_from_f32<T>(anvil_gelu_tanh(anvil_to_f32(gate[i])) * anvil_to_f32(up[i]));
}

/* 16 bytes per thread and access (n a multiple of V, pointers 16-byte aligned). */
template <typename T>
__global__ void anvil_gelu_tanh_mul_vec_kernel(const T *gate, const T *up, T *out, int64_t n_vec)
{
    constexpr int V = 16 / sizeof(T);
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n_vec; j += (int64_t)gridDim.x * blockDim.x) {
        float g[V], u[V];
        anvil_load_vec<T, V>(gate + j * V, g);
        anvil_load_vec<T, V>(up + j * V, u);
#pragma unroll
        for (int i = 0; i < V; i++)
            g[i] = anvil_gelu_tanh(g[i]) * u[i];
        anvil_store_vec<T, V>(out + j * V, g);
    }
}

extern "C" anvil_status anvil_cuda_launch_gelu_tanh_mul(cudaStream_t stream, const void *gate, const void *up,
                                                        void *out, anvil_dtype act_dt, int64_t n)
{
    if (n == 0)
        return ANVIL_OK;
    ANVIL_CUDA_DISPATCH(act_dt, {
        constexpr int V = 16 / sizeof(T);
        if (n % V == 0 && anvil_aligned16(gate) && anvil_aligned16(up) && anvil_aligned16(out))
            anvil_gelu_tanh_mul_vec_kernel<T><<<anvil_grid_for(n / V, 256), 256, 0, stream>>>(
                (const T *)gate, (const T *)up, (T *)out, n / V);
        else
            anvil_gelu_tanh_mul_kernel<T><<<anvil_grid_for(n, 256), 256, 0, stream>>>(
                (const T *)gate, (const T *)up, (T *)out, n);
    });
    return ANVIL_CUDA_LAUNCHED("gelu_tanh_mul kernel");
}

/* GPT-2's gelu_tanh(x), out may alias x (each element read before it is written). */
template <typename T> __global__ void anvil_gelu_tanh_kernel(const T *x, T *out, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = anvil_from_f32<T>(anvil_gelu_tanh(anvil_to_f32(x[i])));
}

template <typename T> __global__ void anvil_gelu_tanh_vec_kernel(const T *x, T *out, int64_t n_vec)
{
    constexpr int V = 16 / sizeof(T);
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n_vec; j += (int64_t)gridDim.x * blockDim.x) {
        float g[V];
        anvil_load_vec<T, V>(x + j * V, g);
#pragma unroll
        for (int i = 0; i < V; i++)
            g[i] = anvil_gelu_tanh(g[i]);
        anvil_store_vec<T, V>(out + j * V, g);
    }
}

extern "C" anvil_status anvil_cuda_launch_gelu_tanh(cudaStream_t stream, const void *x, void *out, anvil_dtype act_dt,
                                                    int64_t n)
{
    if (n == 0)
        return ANVIL_OK;
    ANVIL_CUDA_DISPATCH(act_dt, {
        constexpr int V = 16 / sizeof(T);
        if (n % V == 0 && anvil_aligned16(x) && anvil_aligned16(out))
            anvil_gelu_tanh_vec_kernel<T><<<anvil_grid_for(n / V, 256), 256, 0, stream>>>((const T *)x, (T *)out,
                                                                                          n / V);
        else
            anvil_gelu_tanh_kernel<T><<<anvil_grid_for(n, 256), 256, 0, stream>>>((const T *)x, (T *)out, n);
    });
    return ANVIL_CUDA_LAUNCHED("gelu_tanh kernel");
}
