/* RMSNorm over pieces of `width` elements (a whole row for rmsnorm, one
 * head for head_rmsnorm), in f32: y = x * (1 / sqrtf(mean(x^2) + eps)) *
 * (w_offset + w), multiplied in that order as Hugging Face does (w_offset
 * 0, or Gemma's 1: (1 + w) summed in f32 from the stored w). A warp per piece up to
 * 1024 elements, a block per piece above. */
#include "backend/cuda/cuda_common.cuh"

#define NORM_WARPS 8
#define NORM_BLOCK 256

template <typename T>
__global__ void anvil_rmsnorm_warp_kernel(const T *x, const void *w, int w_dt, T *out, int64_t n_pieces,
                                          int width, float eps, float w_offset)
{
    anvil_pdl_wait();
    anvil_pdl_launch();
    const int lane = threadIdx.x & 31;
    const int64_t piece = (int64_t)blockIdx.x * NORM_WARPS + (threadIdx.x >> 5);
    if (piece >= n_pieces)
        return; /* the whole warp leaves together */
    const T *xr = x + piece * width;
    float ss = 0.0f;
    for (int i = lane; i < width; i += 32) {
        float v = anvil_to_f32(xr[i]);
        ss += v * v;
    }
    ss = anvil_warp_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)width + eps);
    T *o = out + piece * width;
    for (int i = lane; i < width; i += 32)
        o[i] = anvil_from_f32<T>(anvil_to_f32(xr[i]) * inv * (w_offset + anvil_load_any(w, w_dt, i)));
}

template <typename T>
__global__ void anvil_rmsnorm_block_kernel(const T *x, const void *w, int w_dt, T *out, int64_t width,
                                           float eps, float w_offset)
{
    anvil_pdl_wait();
    anvil_pdl_launch();
    __shared__ float partial[NORM_BLOCK / 32];
    const int64_t piece = blockIdx.x;
    const T *xr = x + piece * width;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < width; i += NORM_BLOCK) {
        float v = anvil_to_f32(xr[i]);
        ss += v * v;
    }
    ss = anvil_warp_sum(ss);
    if ((threadIdx.x & 31) == 0)
        partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < NORM_BLOCK / 32; i++)
        total += partial[i];
    const float inv = 1.0f / sqrtf(total / (float)width + eps);
    T *o = out + piece * width;
    for (int64_t i = threadIdx.x; i < width; i += NORM_BLOCK)
        o[i] = anvil_from_f32<T>(anvil_to_f32(xr[i]) * inv * (w_offset + anvil_load_any(w, w_dt, i)));
}

/* The block kernel with 16-byte accesses (width a multiple of V, x and out
 * 16-byte aligned). */
template <typename T>
__global__ void anvil_rmsnorm_block_vec_kernel(const T *x, const void *w, int w_dt, T *out, int64_t width,
                                               float eps, float w_offset)
{
    anvil_pdl_wait();
    anvil_pdl_launch();
    constexpr int V = 16 / sizeof(T);
    __shared__ float partial[NORM_BLOCK / 32];
    const int64_t piece = blockIdx.x, n_vec = width / V;
    const T *xr = x + piece * width;
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < n_vec; j += NORM_BLOCK) {
        float v[V];
        anvil_load_vec<T, V>(xr + j * V, v);
#pragma unroll
        for (int i = 0; i < V; i++)
            ss += v[i] * v[i];
    }
    ss = anvil_warp_sum(ss);
    if ((threadIdx.x & 31) == 0)
        partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < NORM_BLOCK / 32; i++)
        total += partial[i];
    const float inv = 1.0f / sqrtf(total / (float)width + eps);
    T *o = out + piece * width;
    for (int64_t j = threadIdx.x; j < n_vec; j += NORM_BLOCK) {
        float v[V];
        anvil_load_vec<T, V>(xr + j * V, v);
#pragma unroll
        for (int i = 0; i < V; i++)
            v[i] = v[i] * inv * (w_offset + anvil_load_any(w, w_dt, j * V + i));
        anvil_store_vec<T, V>(o + j * V, v);
    }
}

extern "C" anvil_status anvil_cuda_launch_rmsnorm(cudaStream_t stream, int pdl, const void *x, const void *w,
                                                  anvil_dtype w_dt, void *out, anvil_dtype act_dt,
                                                  int64_t n_pieces, int64_t width, float eps,
                                                  float w_offset)
{
    CHECK(anvil_cuda_is_float_dtype(w_dt), ANVIL_ERR_UNSUPPORTED, "rmsnorm: weight dtype %s",
          anvil_dtype_name(w_dt));
    if (n_pieces == 0 || width == 0)
        return ANVIL_OK;
    if (width <= 1024) {
        CHECK((n_pieces + NORM_WARPS - 1) / NORM_WARPS <= INT32_MAX, ANVIL_ERR_UNSUPPORTED,
              "rmsnorm: %lld rows", (long long)n_pieces);
        const unsigned grid = (unsigned)((n_pieces + NORM_WARPS - 1) / NORM_WARPS);
        ANVIL_CUDA_DISPATCH(act_dt,
                            anvil_launch(anvil_rmsnorm_warp_kernel<T>, grid, NORM_WARPS * 32, 0, stream, pdl,
                                         (const T *)x, w, (int)w_dt, (T *)out, n_pieces, (int)width, eps, w_offset));
    } else {
        CHECK(n_pieces <= INT32_MAX, ANVIL_ERR_UNSUPPORTED, "rmsnorm: %lld rows", (long long)n_pieces);
        ANVIL_CUDA_DISPATCH(act_dt, {
            constexpr int V = 16 / sizeof(T);
            if (width % V == 0 && anvil_aligned16(x) && anvil_aligned16(out))
                anvil_launch(anvil_rmsnorm_block_vec_kernel<T>, (unsigned)n_pieces, NORM_BLOCK, 0, stream, pdl,
                             (const T *)x, w, (int)w_dt, (T *)out, width, eps, w_offset);
            else
                anvil_launch(anvil_rmsnorm_block_kernel<T>, (unsigned)n_pieces, NORM_BLOCK, 0, stream, pdl,
                             (const T *)x, w, (int)w_dt, (T *)out, width, eps, w_offset);
        });
    }
    return ANVIL_CUDA_LAUNCHED("rmsnorm kernel");
}
