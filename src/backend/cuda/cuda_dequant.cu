/*
 * A quantized weight dequantized into the activation dtype (docs/
 * quantization.md): W[n][k] = fl((v - z) * s), then rounded to the output
 * dtype (exact in f32: the CPU's W). The matmul's slow path: every layout
 * and every row count, a plain GEMM after it (cuda_matmul_quant.c), correct
 * rather than fast (it writes and reads the whole weight in 16 or 32 bits
 * each time).
 */
#include "backend/cuda/cuda_common.cuh"

template <typename O>
__global__ void anvil_dequant_kernel(const uint8_t *__restrict__ w, int wdt, const float *__restrict__ scales,
                                     const uint8_t *__restrict__ zeros, int64_t N, int64_t K, int64_t gs,
                                     O *__restrict__ out)
{
    const int64_t n_all = N * K, G = K / gs;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_all; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t n = i / K, k = i - n * K, g = n * G + k / gs;
        float v, z = 0.0f;
        if (wdt == ANVIL_DTYPE_F8_E4M3) {
            __nv_fp8_e4m3 e;
            e.__x = w[i];
            v = anvil_to_f32(e);
        } else if (wdt == ANVIL_DTYPE_I8) {
            v = (float)(int8_t)w[i];
        } else { /* u4: element i is the low nibble of byte i / 2 when i is even */
            const uint8_t b = w[i >> 1];
            v = (float)((i & 1) ? b >> 4 : b & 15);
            z = zeros != nullptr ? (float)zeros[g] : 8.0f;
        }
        out[i] = anvil_from_f32<O>((v - z) * scales[g]);
    }
}

extern "C" anvil_status anvil_cuda_launch_dequant(cudaStream_t stream, const anvil_cuda_qweight *w, void *out,
                                                  anvil_dtype out_dt)
{
    CHECK(anvil_cuda_is_quant_dtype(w->dt), ANVIL_ERR_UNSUPPORTED, "dequantize: weight dtype %s",
          anvil_dtype_name(w->dt));
    CHECK(w->N >= 0 && w->K >= 0 && w->gs > 0 && w->K % w->gs == 0, ANVIL_ERR_INVALID_ARG,
          "dequantize: [%lld, %lld] in groups of %lld", (long long)w->N, (long long)w->K, (long long)w->gs);
    const int64_t n = w->N * w->K;
    if (n == 0)
        return ANVIL_OK;
    const uint8_t *zeros = w->dt == ANVIL_DTYPE_U4 ? w->zeros : nullptr;
    ANVIL_CUDA_DISPATCH(out_dt, anvil_dequant_kernel<T><<<anvil_grid_for(n, 256), 256, 0, stream>>>(
                                    (const uint8_t *)w->w, (int)w->dt, w->scales, zeros, w->N, w->K, w->gs, (T *)out));
    return ANVIL_CUDA_LAUNCHED("dequantize kernel");
}
