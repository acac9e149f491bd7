/*
 * Prepared activations of a quantized matmul (docs/quantization.md): the
 * columns of x permuted by the weight's perm, and with fp8 activations
 * (W8A8) each row rounded to fp8 as the CPU rounds it: sx = max|row| / 448
 * (dynamic) or the checkpoint's input scale (static), codes fp8(x / sx)
 * (round to nearest even, saturating at +-448), values fl(code * sx).
 *
 * Blocks of up to QA_CHUNK columns of a row: each finds the row's largest
 * magnitude (dynamic only; 16-byte loads where the row allows), then writes
 * its columns. Written as f32/bf16/f16 values
 * (for the GEMV and the dequantizing GEMM) or as fp8 codes with the row's
 * scale (for cuBLASLt's FP8 GEMM, whose B scale vector sx is).
 */
#include "backend/cuda/cuda_common.cuh"

#define QA_THREADS 512
/* Columns a block writes: a decode row (K up to 14336) spreads over a few
 * blocks, each finding the row's max itself (the row is a few KB of L2), so
 * that the step does not wait on one block's two passes. */
#define QA_CHUNK (QA_THREADS * 8)

template <typename X>
__device__ __forceinline__ float qa_load(const X *xr, const int32_t *perm, int k, int K, int *err)
{
    if (perm == nullptr)
        return anvil_to_f32(xr[k]);
    const int32_t p = perm[k];
    if (p < 0 || p >= K) {
        anvil_flag(err, ANVIL_CUDA_BAD_PERM);
        return 0.0f;
    }
    return anvil_to_f32(xr[p]);
}

template <typename X, typename O>
__global__ void __launch_bounds__(QA_THREADS)
    anvil_quant_act_kernel(const X *x, const int32_t *__restrict__ perm, int act, float input_scale,
                           int K, O *__restrict__ out, float *row_scale, int *err, int vec)
{
    anvil_pdl_wait();
    anvil_pdl_launch();
    __shared__ float red[QA_THREADS / 32];
    const int64_t t = blockIdx.x;
    const X *xr = x + t * K;
    O *orow = out + t * K;
    const int k0 = blockIdx.y * QA_CHUNK, k1 = K - k0 < QA_CHUNK ? K : k0 + QA_CHUNK;
    float sx = act == ANVIL_QUANT_ACT_FP8_STATIC ? input_scale : 1.0f;
    if (act == ANVIL_QUANT_ACT_FP8_DYNAMIC) {
        float m = 0.0f;
        if (vec) { /* no perm, K a multiple of 8, x 16-byte aligned: 8 elements a load, several in flight */
#pragma unroll 4
            for (int v = threadIdx.x; v < K / 8; v += QA_THREADS) {
                float f[8];
                anvil_load_vec<X, 8>(xr + 8 * (int64_t)v, f);
#pragma unroll
                for (int i = 0; i < 8; i++)
                    m = fmaxf(m, fabsf(f[i]));
            }
        } else {
            for (int k = threadIdx.x; k < K; k += QA_THREADS)
                m = fmaxf(m, fabsf(qa_load(xr, perm, k, K, err)));
        }
        m = anvil_warp_max(m);
        if ((threadIdx.x & 31) == 0)
            red[threadIdx.x >> 5] = m;
        __syncthreads();
        m = 0.0f;
#pragma unroll
        for (int i = 0; i < QA_THREADS / 32; i++)
            m = fmaxf(m, red[i]);
        sx = __fdiv_rn(m, 448.0f);
    }
    /* a row of zeros (or too small to scale) stays zeros, as on the CPU */
    const bool zero = act != ANVIL_QUANT_ACT_NONE && !(sx > 0.0f);
    for (int k = k0 + threadIdx.x; k < k1; k += QA_THREADS) {
        const float v = qa_load(xr, perm, k, K, err);
        if constexpr (std::is_same<O, __nv_fp8_e4m3>::value) {
            orow[k] = anvil_from_f32<__nv_fp8_e4m3>(zero ? 0.0f : __fdiv_rn(v, sx));
        } else {
            float r = v;
            if (act != ANVIL_QUANT_ACT_NONE)
                r = zero ? 0.0f : anvil_to_f32(anvil_from_f32<__nv_fp8_e4m3>(__fdiv_rn(v, sx))) * sx;
            orow[k] = anvil_from_f32<O>(r);
        }
    }
    if (row_scale != nullptr && threadIdx.x == 0 && blockIdx.y == 0)
        row_scale[t] = zero ? 0.0f : sx;
}

template <typename X>
static anvil_status launch_out(cudaStream_t stream, int pdl, const X *x, const int32_t *perm, int act, float input_scale,
                               int64_t T, int64_t K, void *out, anvil_dtype out_dt, float *row_scale, int *err)
{
    const dim3 grid((unsigned)T, (unsigned)((K + QA_CHUNK - 1) / QA_CHUNK));
    const int vec = perm == nullptr && K % 8 == 0 && anvil_aligned16(x);
    switch (out_dt) {
    case ANVIL_DTYPE_F32:
        anvil_launch(anvil_quant_act_kernel<X, float>, grid, QA_THREADS, 0, stream, pdl, x, perm, act, input_scale,
                     (int)K, (float *)out, row_scale, err, vec);
        break;
    case ANVIL_DTYPE_BF16:
        anvil_launch(anvil_quant_act_kernel<X, __nv_bfloat16>, grid, QA_THREADS, 0, stream, pdl, x, perm, act,
                     input_scale, (int)K, (__nv_bfloat16 *)out, row_scale, err, vec);
        break;
    case ANVIL_DTYPE_F16:
        anvil_launch(anvil_quant_act_kernel<X, __half>, grid, QA_THREADS, 0, stream, pdl, x, perm, act, input_scale,
                     (int)K, (__half *)out, row_scale, err, vec);
        break;
    case ANVIL_DTYPE_F8_E4M3:
        anvil_launch(anvil_quant_act_kernel<X, __nv_fp8_e4m3>, grid, QA_THREADS, 0, stream, pdl, x, perm, act,
                     input_scale, (int)K, (__nv_fp8_e4m3 *)out, row_scale, err, vec);
        break;
    default:
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "quantized activations: output dtype %s", anvil_dtype_name(out_dt));
    }
    return ANVIL_CUDA_LAUNCHED("quantized activations kernel");
}

extern "C" anvil_status anvil_cuda_launch_quant_act(cudaStream_t stream, int pdl, const void *x, anvil_dtype x_dt,
                                                    const int32_t *perm, int act, float input_scale, int64_t T,
                                                    int64_t K, void *out, anvil_dtype out_dt, float *row_scale,
                                                    int *err)
{
    CHECK(T >= 0 && T <= INT32_MAX && K >= 0 && K <= INT32_MAX, ANVIL_ERR_UNSUPPORTED,
          "quantized activations: [%lld, %lld]", (long long)T, (long long)K);
    CHECK(act >= ANVIL_QUANT_ACT_NONE && act <= ANVIL_QUANT_ACT_FP8_STATIC, ANVIL_ERR_INVALID_ARG,
          "quantized activations: scheme %d", act);
    CHECK(out_dt != ANVIL_DTYPE_F8_E4M3 || (act != ANVIL_QUANT_ACT_NONE && row_scale != NULL), ANVIL_ERR_INVALID_ARG,
          "quantized activations: fp8 codes need fp8 activations and a row scale");
    if (T == 0 || K == 0)
        return ANVIL_OK;
    switch (x_dt) {
    case ANVIL_DTYPE_F32:
        return launch_out(stream, pdl, (const float *)x, perm, act, input_scale, T, K, out, out_dt, row_scale, err);
    case ANVIL_DTYPE_BF16:
        return launch_out(stream, pdl, (const __nv_bfloat16 *)x, perm, act, input_scale, T, K, out, out_dt, row_scale,
                          err);
    case ANVIL_DTYPE_F16:
        return launch_out(stream, pdl, (const __half *)x, perm, act, input_scale, T, K, out, out_dt, row_scale, err);
    default:
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "quantized activations: x dtype %s", anvil_dtype_name(x_dt));
    }
}
