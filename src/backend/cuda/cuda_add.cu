/* out = a + b, in f32 (out may alias a or b: each element is read before
 * it is written, by the same thread). */
#include "backend/cuda/cuda_common.cuh"

template <typename T> __global__ void anvil_add_kernel(const T *a, const T *b, T *out, int64_t n)
{
    anvil_pdl_wait();
    anvil_pdl_launch();
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = anvil_from_f32<T>(anvil_to_f32(a[i]) + anvil_to_f32(b[i]));
}

/* 16 bytes per thread and access (n a multiple of V, pointers 16-byte aligned). */
template <typename T> __global__ void anvil_add_vec_kernel(const T *a, const T *b, T *out, int64_t n_vec)
{
    anvil_pdl_wait();
    anvil_pdl_launch();
    constexpr int V = 16 / sizeof(T);
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < n_vec;
         j += (int64_t)gridDim.x * blockDim.x) {
        float x[V], y[V];
        anvil_load_vec<T, V>(a + j * V, x);
        anvil_load_vec<T, V>(b + j * V, y);
#pragma unroll
        for (int i = 0; i < V; i++)
            x[i] += y[i];
        anvil_store_vec<T, V>(out + j * V, x);
    }
}

extern "C" anvil_status anvil_cuda_launch_add(cudaStream_t stream, int pdl, const void *a, const void *b, void *out,
                                              anvil_dtype act_dt, int64_t n)
{
    if (n == 0)
        return ANVIL_OK;
    ANVIL_CUDA_DISPATCH(act_dt, {
        constexpr int V = 16 / sizeof(T);
        if (n % V == 0 && anvil_aligned16(a) && anvil_aligned16(b) && anvil_aligned16(out))
            anvil_launch(anvil_add_vec_kernel<T>, anvil_grid_for(n / V, 256), 256, 0, stream, pdl, (const T *)a,
                         (const T *)b, (T *)out, n / V);
        else
            anvil_launch(anvil_add_kernel<T>, anvil_grid_for(n, 256), 256, 0, stream, pdl, (const T *)a,
                         (const T *)b, (T *)out, n);
    });
    return ANVIL_CUDA_LAUNCHED("add kernel");
}
