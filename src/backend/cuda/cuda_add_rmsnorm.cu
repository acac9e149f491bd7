/*
 * The residual add and the RMSNorm that follows it, in one pass:
 * sum = a + b (rounded to the activation dtype, as the add op stores it),
 * norm = sum * (1 / sqrtf(mean(sum^2) + eps)) * w from the rounded sum (as
 * the rmsnorm op reads it). A warp per row up to 1024 wide, else a block
 * per row, each reducing as the rmsnorm op does. Each thread adds, stores and
 * squares the same elements it later normalises, re-reading its own stores,
 * so sum may alias a or b (each element is read before it is written by the
 * one thread that owns it).
 *
 * Saves, per layer and step, two launches and a read of the row: at batch 1
 * the launches are what count (~2-3 us of dependent-kernel gap each against
 * 16 KB of data).
 */
#include "backend/cuda/cuda_common.cuh"

#define AN_BLOCK 256

template <typename T> __device__ __forceinline__ float an_block_sum(float ss, float *partial)
{
    ss = anvil_warp_sum(ss);
    if ((threadIdx.x & 31) == 0)
        partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < AN_BLOCK / 32; i++)
        total += partial[i];
    return total;
}

/* Rows up to 1024 wide: a warp per row, 8 rows per block, summing in the
 * order of the rmsnorm op's warp kernel (cuda_rmsnorm.cu), so that fused
 * and separate give the same bits. */
#define AN_ROWS 8
template <typename T>
__global__ void __launch_bounds__(AN_ROWS * 32)
    anvil_add_rmsnorm_warp_kernel(const T *a, const T *b, const void *w, int w_dt, T *sum, T *norm,
                                  int64_t rows, int width, float eps)
{
    anvil_pdl_wait();
    anvil_pdl_launch();
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * AN_ROWS + (threadIdx.x >> 5);
    if (row >= rows)
        return;
    const int64_t off = row * width;
    float ss = 0.0f;
    for (int i = lane; i < width; i += 32) {
        const T s = anvil_from_f32<T>(anvil_to_f32(a[off + i]) + anvil_to_f32(b[off + i]));
        sum[off + i] = s;
        const float x = anvil_to_f32(s);
        ss += x * x;
    }
    ss = anvil_warp_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)width + eps);
    for (int i = lane; i < width; i += 32)
        norm[off + i] = anvil_from_f32<T>(anvil_to_f32(sum[off + i]) * inv * anvil_load_any(w, w_dt, i));
}

/* V weights at i (a multiple of V) as floats: one 16-byte load when the
 * weight is in T and aligned (a bf16 model's norms), else element by
 * element. The values are anvil_load_any's either way. */
template <typename T, int V>
__device__ __forceinline__ void an_load_w(const void *w, int w_dt, int w_vec, int64_t i, float (&out)[V])
{
    if (w_vec) {
        anvil_load_vec<T, V>((const T *)w + i, out);
    } else {
#pragma unroll
        for (int k = 0; k < V; k++)
            out[k] = anvil_load_any(w, w_dt, i + k);
    }
}

/* The rounded sums a thread keeps in registers between the two passes
 * (AN_KEEP x V of them: rows up to AN_KEEP * V * AN_BLOCK = 8192 wide in
 * bf16); wider rows read the rest back from sum. At batch 1 this kernel is
 * a few microseconds on the decode step's critical path, and the second
 * pass's re-read of sum (just written, from L2) was most of it. */
#define AN_KEEP 4

/* 16-byte accesses: width a multiple of V, a, b, sum and norm 16-byte
 * aligned. w_vec: the weight is in T and 16-byte aligned. */
template <typename T>
__global__ void __launch_bounds__(AN_BLOCK)
    anvil_add_rmsnorm_vec_kernel(const T *a, const T *b, const void *w, int w_dt, int w_vec, T *sum, T *norm,
                                 int64_t width, float eps)
{
    constexpr int V = 16 / sizeof(T);
    __shared__ float partial[AN_BLOCK / 32];
    const int64_t row = blockIdx.x, n_vec = width / V, off = row * width;
    /* the weight is never written: loaded before the dependent-launch wait */
    float wk[AN_KEEP][V];
#pragma unroll
    for (int it = 0; it < AN_KEEP; it++) {
        const int64_t j = threadIdx.x + (int64_t)it * AN_BLOCK;
        if (j < n_vec)
            an_load_w<T, V>(w, w_dt, w_vec, j * V, wk[it]);
    }
    anvil_pdl_wait();
    anvil_pdl_launch();
    float keep[AN_KEEP][V];
    float ss = 0.0f;
#pragma unroll
    for (int it = 0; it < AN_KEEP; it++) {
        const int64_t j = threadIdx.x + (int64_t)it * AN_BLOCK;
        if (j < n_vec) {
            float y[V];
            anvil_load_vec<T, V>(a + off + j * V, keep[it]);
            anvil_load_vec<T, V>(b + off + j * V, y);
#pragma unroll
            for (int i = 0; i < V; i++) {
                keep[it][i] = anvil_to_f32(anvil_from_f32<T>(keep[it][i] + y[i])); /* the stored sum, rounded */
                ss += keep[it][i] * keep[it][i];
            }
            anvil_store_vec<T, V>(sum + off + j * V, keep[it]);
        }
    }
    for (int64_t j = threadIdx.x + (int64_t)AN_KEEP * AN_BLOCK; j < n_vec; j += AN_BLOCK) {
        float x[V], y[V];
        anvil_load_vec<T, V>(a + off + j * V, x);
        anvil_load_vec<T, V>(b + off + j * V, y);
#pragma unroll
        for (int i = 0; i < V; i++) {
            x[i] = anvil_to_f32(anvil_from_f32<T>(x[i] + y[i]));
            ss += x[i] * x[i];
        }
        anvil_store_vec<T, V>(sum + off + j * V, x);
    }
    const float inv = 1.0f / sqrtf(an_block_sum<T>(ss, partial) / (float)width + eps);
#pragma unroll
    for (int it = 0; it < AN_KEEP; it++) {
        const int64_t j = threadIdx.x + (int64_t)it * AN_BLOCK;
        if (j < n_vec) {
            float x[V];
#pragma unroll
            for (int i = 0; i < V; i++)
                x[i] = keep[it][i] * inv * wk[it][i];
            anvil_store_vec<T, V>(norm + off + j * V, x);
        }
    }
    for (int64_t j = threadIdx.x + (int64_t)AN_KEEP * AN_BLOCK; j < n_vec; j += AN_BLOCK) {
        float x[V], wv[V];
        anvil_load_vec<T, V>(sum + off + j * V, x);
        an_load_w<T, V>(w, w_dt, w_vec, j * V, wv);
#pragma unroll
        for (int i = 0; i < V; i++)
            x[i] = x[i] * inv * wv[i];
        anvil_store_vec<T, V>(norm + off + j * V, x);
    }
}

template <typename T>
__global__ void __launch_bounds__(AN_BLOCK)
    anvil_add_rmsnorm_kernel(const T *a, const T *b, const void *w, int w_dt, T *sum, T *norm, int64_t width,
                             float eps)
{
    anvil_pdl_wait();
    anvil_pdl_launch();
    __shared__ float partial[AN_BLOCK / 32];
    const int64_t off = (int64_t)blockIdx.x * width;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < width; i += AN_BLOCK) {
        const T s = anvil_from_f32<T>(anvil_to_f32(a[off + i]) + anvil_to_f32(b[off + i]));
        sum[off + i] = s;
        const float x = anvil_to_f32(s);
        ss += x * x;
    }
    const float inv = 1.0f / sqrtf(an_block_sum<T>(ss, partial) / (float)width + eps);
    for (int64_t i = threadIdx.x; i < width; i += AN_BLOCK)
        norm[off + i] = anvil_from_f32<T>(anvil_to_f32(sum[off + i]) * inv * anvil_load_any(w, w_dt, i));
}

extern "C" anvil_status anvil_cuda_launch_add_rmsnorm(cudaStream_t stream, int pdl, const void *a, const void *b,
                                                      const void *w, anvil_dtype w_dt, void *sum, void *norm,
                                                      anvil_dtype act_dt, int64_t rows, int64_t width,
                                                      float eps)
{
    CHECK(anvil_cuda_is_float_dtype(w_dt), ANVIL_ERR_UNSUPPORTED, "add_rmsnorm: weight dtype %s",
          anvil_dtype_name(w_dt));
    CHECK(rows <= INT32_MAX, ANVIL_ERR_UNSUPPORTED, "add_rmsnorm: %lld rows", (long long)rows);
    if (rows == 0 || width == 0)
        return ANVIL_OK;
    if (width <= 1024) {
        const unsigned grid = (unsigned)((rows + AN_ROWS - 1) / AN_ROWS);
        ANVIL_CUDA_DISPATCH(act_dt, anvil_launch(anvil_add_rmsnorm_warp_kernel<T>, grid, AN_ROWS * 32, 0,
                                                 stream, pdl, (const T *)a, (const T *)b, w, (int)w_dt, (T *)sum,
                                                 (T *)norm, rows, (int)width, eps));
        return ANVIL_CUDA_LAUNCHED("add_rmsnorm kernel");
    }
    ANVIL_CUDA_DISPATCH(act_dt, {
        constexpr int V = 16 / sizeof(T);
        if (width % V == 0 && anvil_aligned16(a) && anvil_aligned16(b) && anvil_aligned16(sum) &&
            anvil_aligned16(norm))
            anvil_launch(anvil_add_rmsnorm_vec_kernel<T>, (unsigned)rows, AN_BLOCK, 0, stream, pdl, (const T *)a,
                         (const T *)b, w, (int)w_dt, (int)(w_dt == act_dt && anvil_aligned16(w)),
                         (T *)sum, (T *)norm, width, eps);
        else
            anvil_launch(anvil_add_rmsnorm_kernel<T>, (unsigned)rows, AN_BLOCK, 0, stream, pdl, (const T *)a,
                         (const T *)b, w, (int)w_dt, (T *)sum, (T *)norm, width, eps);
    });
    return ANVIL_CUDA_LAUNCHED("add_rmsnorm kernel");
}
