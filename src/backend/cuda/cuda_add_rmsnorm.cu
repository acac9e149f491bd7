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
 *
 * With codes (anvil_cuda_launch_add_rmsnorm_quant, the Q kernels): also the
 * norm's fp8 W8A8 activations, exactly as cuda_quant_act.cu makes them from
 * the stored norm (its values in T): sx = max|row| / 448 (dynamic) or the
 * input scale (static), codes fp8(v / sx), a row whose sx is not > 0 all
 * zeros with sx 0. The values quantized are the rounded ones the kernel
 * stores (kept in registers, or re-read by the thread that wrote them), so
 * the codes are those a quantization launch after this kernel would make,
 * to the bit, without its launch and its read of the row (cuda_fp8_x.c).
 */
#include "backend/cuda/cuda_common.cuh"

#define AN_BLOCK 256

/* Where the Q kernels put the fp8 codes of the norm. */
typedef struct an_quant {
    __nv_fp8_e4m3 *codes; /* [rows, width] */
    float *row_scale;     /* [rows] */
    int act;              /* ANVIL_QUANT_ACT_FP8_DYNAMIC or _STATIC */
    float input_scale;    /* static: sx */
} an_quant;

/* The row's sx from its largest magnitude m, as cuda_quant_act.cu. */
__device__ __forceinline__ float an_sx(const an_quant &q, float m)
{
    return q.act == ANVIL_QUANT_ACT_FP8_STATIC ? q.input_scale : __fdiv_rn(m, 448.0f);
}

__device__ __forceinline__ __nv_fp8_e4m3 an_code(float v, float sx, bool zero)
{
    return anvil_from_f32<__nv_fp8_e4m3>(zero ? 0.0f : __fdiv_rn(v, sx));
}

/* x as the kernels store it in T, back as a float (the value quantized). */
template <typename T> __device__ __forceinline__ float an_stored(float x)
{
    return anvil_to_f32(anvil_from_f32<T>(x));
}

/* V codes at p (aligned to V bytes when V is 4 or 8). */
template <int V> __device__ __forceinline__ void an_store_codes(__nv_fp8_e4m3 *p, const float (&v)[V], float sx, bool zero)
{
    if constexpr (V == 4 || V == 8) {
        uint32_t word[V / 4] = {};
#pragma unroll
        for (int i = 0; i < V; i++)
            word[i / 4] |= (uint32_t)an_code(v[i], sx, zero).__x << (8 * (i % 4));
        if constexpr (V == 8)
            *reinterpret_cast<uint2 *>(p) = make_uint2(word[0], word[1]);
        else
            *reinterpret_cast<uint32_t *>(p) = word[0];
    } else {
#pragma unroll
        for (int i = 0; i < V; i++)
            p[i] = an_code(v[i], sx, zero);
    }
}

/* The largest of every thread's m in the block (red: AN_BLOCK / 32 floats
 * no one else uses in this kernel). */
__device__ __forceinline__ float an_block_max(float m, float *red)
{
    m = anvil_warp_max(m);
    if ((threadIdx.x & 31) == 0)
        red[threadIdx.x >> 5] = m;
    __syncthreads();
    m = 0.0f;
#pragma unroll
    for (int i = 0; i < AN_BLOCK / 32; i++)
        m = fmaxf(m, red[i]);
    return m;
}

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
template <typename T, bool Q>
__global__ void __launch_bounds__(AN_ROWS * 32)
    anvil_add_rmsnorm_warp_kernel(const T *a, const T *b, const void *w, int w_dt, T *sum, T *norm,
                                  int64_t rows, int width, float eps, an_quant q)
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
    float m = 0.0f;
    for (int i = lane; i < width; i += 32) {
        const T y = anvil_from_f32<T>(anvil_to_f32(sum[off + i]) * inv * anvil_load_any(w, w_dt, i));
        norm[off + i] = y;
        if constexpr (Q)
            m = fmaxf(m, fabsf(anvil_to_f32(y)));
    }
    (void)m; /* (read only with codes) */
    if constexpr (Q) {
        const float sx = an_sx(q, anvil_warp_max(m));
        const bool zero = !(sx > 0.0f);
        for (int i = lane; i < width; i += 32) /* this lane's own stores */
            q.codes[off + i] = an_code(anvil_to_f32(norm[off + i]), sx, zero);
        if (lane == 0)
            q.row_scale[row] = zero ? 0.0f : sx;
    }
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
template <typename T, bool Q>
__global__ void __launch_bounds__(AN_BLOCK)
    anvil_add_rmsnorm_vec_kernel(const T *a, const T *b, const void *w, int w_dt, int w_vec, T *sum, T *norm,
                                 int64_t width, float eps, an_quant q)
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
    float m = 0.0f;
#pragma unroll
    for (int it = 0; it < AN_KEEP; it++) {
        const int64_t j = threadIdx.x + (int64_t)it * AN_BLOCK;
        if (j < n_vec) {
            float x[V];
#pragma unroll
            for (int i = 0; i < V; i++)
                x[i] = keep[it][i] * inv * wk[it][i];
            anvil_store_vec<T, V>(norm + off + j * V, x);
            if constexpr (Q) {
#pragma unroll
                for (int i = 0; i < V; i++) { /* keep the stored norm for the codes */
                    keep[it][i] = an_stored<T>(x[i]);
                    m = fmaxf(m, fabsf(keep[it][i]));
                }
            }
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
        if constexpr (Q) {
#pragma unroll
            for (int i = 0; i < V; i++)
                m = fmaxf(m, fabsf(an_stored<T>(x[i])));
        }
    }
    (void)m; /* (read only with codes) */
    if constexpr (Q) {
        __shared__ float red[AN_BLOCK / 32];
        const float sx = an_sx(q, an_block_max(m, red));
        const bool zero = !(sx > 0.0f);
#pragma unroll
        for (int it = 0; it < AN_KEEP; it++) {
            const int64_t j = threadIdx.x + (int64_t)it * AN_BLOCK;
            if (j < n_vec)
                an_store_codes<V>(q.codes + off + j * V, keep[it], sx, zero);
        }
        for (int64_t j = threadIdx.x + (int64_t)AN_KEEP * AN_BLOCK; j < n_vec; j += AN_BLOCK) {
            float x[V]; /* this thread's own stores */
            anvil_load_vec<T, V>(norm + off + j * V, x);
            an_store_codes<V>(q.codes + off + j * V, x, sx, zero);
        }
        if (threadIdx.x == 0)
            q.row_scale[row] = zero ? 0.0f : sx;
    }
}

template <typename T, bool Q>
__global__ void __launch_bounds__(AN_BLOCK)
    anvil_add_rmsnorm_kernel(const T *a, const T *b, const void *w, int w_dt, T *sum, T *norm, int64_t width,
                             float eps, an_quant q)
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
    float m = 0.0f;
    for (int64_t i = threadIdx.x; i < width; i += AN_BLOCK) {
        const T y = anvil_from_f32<T>(anvil_to_f32(sum[off + i]) * inv * anvil_load_any(w, w_dt, i));
        norm[off + i] = y;
        if constexpr (Q)
            m = fmaxf(m, fabsf(anvil_to_f32(y)));
    }
    (void)m; /* (read only with codes) */
    if constexpr (Q) {
        __shared__ float red[AN_BLOCK / 32];
        const float sx = an_sx(q, an_block_max(m, red));
        const bool zero = !(sx > 0.0f);
        for (int64_t i = threadIdx.x; i < width; i += AN_BLOCK) /* this thread's own stores */
            q.codes[off + i] = an_code(anvil_to_f32(norm[off + i]), sx, zero);
        if (threadIdx.x == 0)
            q.row_scale[blockIdx.x] = zero ? 0.0f : sx;
    }
}

template <bool Q>
static anvil_status launch(cudaStream_t stream, int pdl, const void *a, const void *b, const void *w, anvil_dtype w_dt,
                           void *sum, void *norm, anvil_dtype act_dt, int64_t rows, int64_t width, float eps,
                           an_quant q)
{
    if (width <= 1024) {
        const unsigned grid = (unsigned)((rows + AN_ROWS - 1) / AN_ROWS);
        ANVIL_CUDA_DISPATCH(act_dt, anvil_launch(anvil_add_rmsnorm_warp_kernel<T, Q>, grid, AN_ROWS * 32, 0,
                                                 stream, pdl, (const T *)a, (const T *)b, w, (int)w_dt, (T *)sum,
                                                 (T *)norm, rows, (int)width, eps, q));
        return ANVIL_CUDA_LAUNCHED("add_rmsnorm kernel");
    }
    ANVIL_CUDA_DISPATCH(act_dt, {
        constexpr int V = 16 / sizeof(T);
        if (width % V == 0 && anvil_aligned16(a) && anvil_aligned16(b) && anvil_aligned16(sum) &&
            anvil_aligned16(norm) && (!Q || anvil_aligned16(q.codes)))
            anvil_launch(anvil_add_rmsnorm_vec_kernel<T, Q>, (unsigned)rows, AN_BLOCK, 0, stream, pdl, (const T *)a,
                         (const T *)b, w, (int)w_dt, (int)(w_dt == act_dt && anvil_aligned16(w)),
                         (T *)sum, (T *)norm, width, eps, q);
        else
            anvil_launch(anvil_add_rmsnorm_kernel<T, Q>, (unsigned)rows, AN_BLOCK, 0, stream, pdl, (const T *)a,
                         (const T *)b, w, (int)w_dt, (T *)sum, (T *)norm, width, eps, q);
    });
    return ANVIL_CUDA_LAUNCHED("add_rmsnorm kernel");
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
    return launch<false>(stream, pdl, a, b, w, w_dt, sum, norm, act_dt, rows, width, eps, an_quant{});
}

extern "C" anvil_status anvil_cuda_launch_add_rmsnorm_quant(cudaStream_t stream, int pdl, const void *a,
                                                            const void *b, const void *w, anvil_dtype w_dt,
                                                            void *sum, void *norm, anvil_dtype act_dt, int64_t rows,
                                                            int64_t width, float eps, int act, float input_scale,
                                                            void *codes, float *row_scale)
{
    CHECK(anvil_cuda_is_float_dtype(w_dt), ANVIL_ERR_UNSUPPORTED, "add_rmsnorm: weight dtype %s",
          anvil_dtype_name(w_dt));
    CHECK(rows <= INT32_MAX, ANVIL_ERR_UNSUPPORTED, "add_rmsnorm: %lld rows", (long long)rows);
    CHECK((act == ANVIL_QUANT_ACT_FP8_DYNAMIC || act == ANVIL_QUANT_ACT_FP8_STATIC) && codes != NULL &&
              row_scale != NULL,
          ANVIL_ERR_INVALID_ARG, "add_rmsnorm with fp8 codes: scheme %d, codes %p, row scales %p", act, codes,
          (void *)row_scale);
    if (rows == 0 || width == 0)
        return ANVIL_OK;
    const an_quant q = {(__nv_fp8_e4m3 *)codes, row_scale, act, input_scale};
    return launch<true>(stream, pdl, a, b, w, w_dt, sum, norm, act_dt, rows, width, eps, q);
}
