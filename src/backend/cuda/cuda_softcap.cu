/* The two elementwise ops of one input and a constant (Gemma 2):
 *   scale:   out = x * c, c first rounded to the activation dtype, as torch
 *            multiplies by torch.tensor(c, dtype=x.dtype) (the embedding
 *            normalizer), the product in f32;
 *   softcap: out = tanhf(x / c) * c in f32 (the final logits' cap), the
 *            expression of the CPU's anvil_cpu_softcap_score. */
#include "backend/cuda/cuda_common.cuh"

template <typename T> __global__ void anvil_scale_kernel(const T *x, float c, int softcap, T *out, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float v = anvil_to_f32(x[i]);
        out[i] = anvil_from_f32<T>(softcap ? tanhf(v / c) * c : v * c);
    }
}

extern "C" anvil_status anvil_cuda_launch_scale(cudaStream_t stream, const void *x, float c, int softcap, void *out,
                                                anvil_dtype act_dt, int64_t n)
{
    if (n == 0)
        return ANVIL_OK;
    /* scale's factor as the activation dtype holds it (RNE, as torch converts) */
    float cc = c;
    if (!softcap && act_dt == ANVIL_DTYPE_BF16)
        cc = anvil_bf16_to_f32(anvil_f32_to_bf16(c));
    else if (!softcap && act_dt == ANVIL_DTYPE_F16)
        cc = anvil_f16_to_f32(anvil_f32_to_f16(c));
    ANVIL_CUDA_DISPATCH(act_dt, anvil_scale_kernel<T><<<anvil_grid_for(n, 256), 256, 0, stream>>>(
                                    (const T *)x, cc, softcap, (T *)out, n));
    return ANVIL_CUDA_LAUNCHED(softcap ? "softcap kernel" : "scale kernel");
}
