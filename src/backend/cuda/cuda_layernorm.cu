/* LayerNorm with a bias (GPT-2's ln_1, ln_2, ln_f), per row, in f32 as
 * torch.nn.LayerNorm: mean m, then the biased variance v from the squares
 * about m (two passes over the row, no E[x^2] - m^2 cancellation),
 * y = (x - m) * (1 / sqrtf(v + eps)) * w + b, rounded once to the
 * activation dtype. A block of 256 threads per row (GPT-2's rows are 768
 * to 1600 wide); the row is read three times, from L1/L2 after the first. */
#include "backend/cuda/cuda_common.cuh"

#define LN_BLOCK 256

/* The sum of v over the block (every thread gets it). */
__device__ __forceinline__ float ln_block_sum(float v, float *partial)
{
    v = anvil_warp_sum(v);
    __syncthreads(); /* partial may still be read from a previous call */
    if ((threadIdx.x & 31) == 0)
        partial[threadIdx.x >> 5] = v;
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < LN_BLOCK / 32; i++)
        total += partial[i];
    return total;
}

template <typename T>
__global__ void anvil_layernorm_kernel(const T *x, const void *w, int w_dt, const void *b, int b_dt, T *out,
                                       int64_t width, float eps)
{
    anvil_pdl_wait();
    anvil_pdl_launch();
    __shared__ float partial[LN_BLOCK / 32];
    const T *xr = x + (int64_t)blockIdx.x * width;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < width; i += LN_BLOCK)
        s += anvil_to_f32(xr[i]);
    const float mean = ln_block_sum(s, partial) / (float)width;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < width; i += LN_BLOCK) {
        const float d = anvil_to_f32(xr[i]) - mean;
        ss += d * d;
    }
    const float inv = 1.0f / sqrtf(ln_block_sum(ss, partial) / (float)width + eps);
    T *o = out + (int64_t)blockIdx.x * width;
    for (int64_t i = threadIdx.x; i < width; i += LN_BLOCK)
        o[i] = anvil_from_f32<T>((anvil_to_f32(xr[i]) - mean) * inv * anvil_load_any(w, w_dt, i) +
                                 anvil_load_any(b, b_dt, i));
}

extern "C" anvil_status anvil_cuda_launch_layernorm(cudaStream_t stream, int pdl, const void *x, const void *w,
                                                    anvil_dtype w_dt, const void *b, anvil_dtype b_dt, void *out,
                                                    anvil_dtype act_dt, int64_t rows, int64_t width, float eps)
{
    CHECK(anvil_cuda_is_float_dtype(w_dt) && anvil_cuda_is_float_dtype(b_dt), ANVIL_ERR_UNSUPPORTED,
          "layernorm: weight dtype %s, bias dtype %s", anvil_dtype_name(w_dt), anvil_dtype_name(b_dt));
    if (rows == 0 || width == 0)
        return ANVIL_OK;
    CHECK(rows <= INT32_MAX, ANVIL_ERR_UNSUPPORTED, "layernorm: %lld rows", (long long)rows);
    ANVIL_CUDA_DISPATCH(act_dt, anvil_launch(anvil_layernorm_kernel<T>, (unsigned)rows, LN_BLOCK, 0, stream, pdl,
                                             (const T *)x, w, (int)w_dt, b, (int)b_dt, (T *)out, width, eps));
    return ANVIL_CUDA_LAUNCHED("layernorm kernel");
}
