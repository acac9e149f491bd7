/*
 * The residual add and RMSNorm in the prologue of the GEMVs that read the
 * norm (backend.h's add_rmsnorm_matmul_multi and add_rmsnorm_matmul_silu_mul
 * for 1..4 rows): one launch where add_rmsnorm and the GEMV took two, so a
 * decode step's layer loses two of its dependent-kernel gaps (~2-3 us each
 * against 5-15 us of weight streaming per GEMV at batch 1).
 *
 * A block of NG_WARPS warps:
 *   1. loads the first pieces of its first weight row (weights: before the
 *      dependent-launch wait, so they stream in while the previous kernel
 *      drains);
 *   2. sum = a + b (rounded to T, as the add op stores it) for every row
 *      into shared memory, with the row's sum of squares, reduced in the
 *      order of the add_rmsnorm kernels (cuda_add_rmsnorm.cu: a warp per row
 *      up to 1024 wide, else 256 threads over 16-byte vectors), then each
 *      element normalised in place: x = sum * inv_rms * norm_w rounded to T,
 *      the norm op's bits. Block 0 alone also writes sum to global memory
 *      (the residual the next add reads); the other blocks only read a and
 *      b, which is why sum must alias neither;
 *   3. runs its columns as the GEMV kernels do (cuda_gemv.cu: a warp per
 *      column, its lanes' pieces of the row in the same order, x now read
 *      from shared memory), so out is what add_rmsnorm + GEMV give, bit for
 *      bit.
 * a and b (16 KB a row of 4096 in bf16) come from L2, then L1, once per
 * block; so that this prologue is paid by few blocks, the grid is one wave
 * (the blocks that fit on the device at once, from the occupancy) and each
 * block takes a run of columns, its warps striding through it.
 *
 * x in shared memory: rows x K x 2 bytes, at most NG_SMEM_MAX (48 KB, no
 * opt-in): 4 rows of 6144 or 1 row of 24576. Larger steps take the
 * separate ops (anvil_cuda_norm_gemv_ok).
 */
#include <string.h>

#include "backend/cuda/cuda_gemv.cuh"

#define NG_WARPS    8 /* 256 threads: the add_rmsnorm vector kernel's block, for its reduction order */
#define NG_THREADS  (NG_WARPS * 32)
#define NG_MAX_ROWS 4
#define NG_MAX_PARTS 4
#define NG_SMEM_MAX (48 * 1024)

typedef struct ng_args {
    const void *a, *b;            /* [T, K] */
    const void *norm_w;           /* [K] */
    int norm_w_dt;
    float eps;
    void *sum;                    /* [T, K], written by block 0 */
    const void *w[NG_MAX_PARTS];  /* silu: w[0] gate, w[1] up */
    void *out[NG_MAX_PARTS];      /* silu: out[0] */
    const void *bias[NG_MAX_PARTS];
    int bias_dt[NG_MAX_PARTS];
    int end[NG_MAX_PARTS];        /* columns of parts 0..i together; silu: end[0] = N */
    int n_parts;
    int K;
    int cols_per_block;
} ng_args;

/* acc[r] += x[r, :] . w_row (the lane's share), x in shared memory; wv holds
 * the first eight pieces when `pre` (loaded by the caller). The pieces are
 * visited in the order of anvil_gemv_row (cuda_gemv.cu). */
template <typename T, int R>
__device__ __forceinline__ void ng_row(const uint4 *xs, const uint4 *wr, int kv, int lane, float (&acc)[R],
                                       uint4 (&wv)[8], bool pre)
{
    int v = lane;
    for (; v + 7 * 32 < kv; v += 8 * 32) {
        if (!pre) {
#pragma unroll
            for (int u = 0; u < 8; u++)
                wv[u] = anvil_ld_stream16(wr + v + u * 32);
        }
        pre = false;
#pragma unroll
        for (int u = 0; u < 8; u++)
#pragma unroll
            for (int r = 0; r < R; r++)
                acc[r] = anvil_dot8<T>(xs[r * kv + v + u * 32], wv[u], acc[r]);
    }
    for (; v < kv; v += 32) {
        const uint4 w1 = anvil_ld_stream16(wr + v);
#pragma unroll
        for (int r = 0; r < R; r++)
            acc[r] = anvil_dot8<T>(xs[r * kv + v], w1, acc[r]);
    }
}

/* Column g's part and its index in it (not silu). */
__device__ __forceinline__ int ng_part(const ng_args &p, int g, int *n)
{
    int part = 0;
    while (part < p.n_parts - 1 && g >= p.end[part])
        part++;
    *n = g - (part > 0 ? p.end[part - 1] : 0);
    return part;
}

/* Step 2 of the header: rows R of a + b into xs (T elements, [R][K]) and
 * normalised there; block 0 writes sum. */
template <typename T, int R>
__device__ __forceinline__ void ng_prologue(const ng_args &p, T *xs, float (*partial)[NG_WARPS])
{
    const int K = p.K, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const T *a = (const T *)p.a, *b = (const T *)p.b;
    T *sum = (T *)p.sum;
    const bool writer = blockIdx.x == 0;
    if (K <= 1024) {
        /* a warp per row, as anvil_add_rmsnorm_warp_kernel */
        if (warp < R) {
            const int off = warp * K;
            float ss = 0.0f;
            for (int i = lane; i < K; i += 32) {
                const T s = anvil_from_f32<T>(anvil_to_f32(a[off + i]) + anvil_to_f32(b[off + i]));
                xs[off + i] = s;
                if (writer)
                    sum[off + i] = s;
                const float x = anvil_to_f32(s);
                ss += x * x;
            }
            ss = anvil_warp_sum(ss);
            const float inv = 1.0f / sqrtf(ss / (float)K + p.eps);
            for (int i = lane; i < K; i += 32)
                xs[off + i] = anvil_from_f32<T>(anvil_to_f32(xs[off + i]) * inv *
                                                anvil_load_any(p.norm_w, p.norm_w_dt, i));
        }
        return;
    }
    /* the block over 16-byte vectors, as anvil_add_rmsnorm_vec_kernel */
    constexpr int V = 16 / sizeof(T);
    const int n_vec = K / V;
    float ss[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        ss[r] = 0.0f;
        const int off = r * K;
        for (int j = threadIdx.x; j < n_vec; j += NG_THREADS) {
            float x[V], y[V];
            anvil_load_vec<T, V>(a + off + j * V, x);
            anvil_load_vec<T, V>(b + off + j * V, y);
#pragma unroll
            for (int i = 0; i < V; i++) {
                x[i] = anvil_to_f32(anvil_from_f32<T>(x[i] + y[i])); /* the stored sum, rounded */
                ss[r] += x[i] * x[i];
            }
            anvil_store_vec<T, V>(xs + off + j * V, x);
            if (writer)
                anvil_store_vec<T, V>(sum + off + j * V, x);
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        const float s = anvil_warp_sum(ss[r]);
        if (lane == 0)
            partial[r][warp] = s;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < R; r++) {
        float total = 0.0f;
#pragma unroll
        for (int i = 0; i < NG_WARPS; i++)
            total += partial[r][i];
        const float inv = 1.0f / sqrtf(total / (float)K + p.eps);
        const int off = r * K;
        /* each thread rereads only the vectors it wrote above */
        for (int j = threadIdx.x; j < n_vec; j += NG_THREADS) {
            float x[V];
            anvil_load_vec<T, V>(xs + off + j * V, x);
#pragma unroll
            for (int i = 0; i < V; i++)
                x[i] = x[i] * inv * anvil_load_any(p.norm_w, p.norm_w_dt, j * V + i);
            anvil_store_vec<T, V>(xs + off + j * V, x);
        }
    }
}

template <typename T, int R, bool SILU>
__global__ void __launch_bounds__(NG_THREADS) anvil_norm_gemv_kernel(ng_args p)
{
    extern __shared__ uint4 ng_smem[]; /* x: [R][K] of T, 16-byte aligned rows (K % 8 == 0) */
    __shared__ float partial[NG_MAX_ROWS][NG_WARPS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int total = SILU ? p.end[0] : p.end[p.n_parts - 1];
    const int c0 = blockIdx.x * p.cols_per_block;
    const int c1 = min(c0 + p.cols_per_block, total);
    const int K = p.K, kv = K / 8;

    /* 1. the first pieces of the warp's first row, before the wait */
    uint4 wv[8];
#pragma unroll
    for (int u = 0; u < 8; u++)
        wv[u] = make_uint4(0, 0, 0, 0);
    int g = c0 + warp;
    bool pre = g < c1 && lane + 7 * 32 < kv;
    if (pre) {
        const uint4 *wr;
        if (SILU) {
            wr = reinterpret_cast<const uint4 *>((const T *)p.w[0] + (int64_t)g * K);
        } else {
            int n;
            const int part = ng_part(p, g, &n);
            wr = reinterpret_cast<const uint4 *>((const T *)p.w[part] + (int64_t)n * K);
        }
#pragma unroll
        for (int u = 0; u < 8; u++)
            wv[u] = anvil_ld_stream16(wr + lane + u * 32);
    }
    anvil_pdl_wait();
    anvil_pdl_launch();

    /* 2. x = rmsnorm(a + b) into shared memory */
    ng_prologue<T, R>(p, reinterpret_cast<T *>(ng_smem), partial);
    __syncthreads();

    /* 3. the block's columns */
    const uint4 *xs = ng_smem;
    for (; g < c1; g += NG_WARPS) {
        if (SILU) {
            float ag[R], au[R];
#pragma unroll
            for (int r = 0; r < R; r++)
                ag[r] = au[r] = 0.0f;
            ng_row<T, R>(xs, reinterpret_cast<const uint4 *>((const T *)p.w[0] + (int64_t)g * K), kv, lane, ag, wv,
                         pre);
            ng_row<T, R>(xs, reinterpret_cast<const uint4 *>((const T *)p.w[1] + (int64_t)g * K), kv, lane, au, wv,
                         false);
            pre = false;
#pragma unroll
            for (int r = 0; r < R; r++) {
                ag[r] = anvil_warp_sum(ag[r]);
                au[r] = anvil_warp_sum(au[r]);
            }
            if (lane == 0) {
                const float b1 = p.bias[0] != nullptr ? anvil_load_any(p.bias[0], p.bias_dt[0], g) : 0.0f;
                const float b2 = p.bias[1] != nullptr ? anvil_load_any(p.bias[1], p.bias_dt[1], g) : 0.0f;
                T *out = (T *)p.out[0];
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const float gv = anvil_to_f32(anvil_from_f32<T>(ag[r] + b1));
                    const float uv = anvil_to_f32(anvil_from_f32<T>(au[r] + b2));
                    out[(int64_t)r * total + g] = anvil_from_f32<T>(gv / (1.0f + expf(-gv)) * uv);
                }
            }
        } else {
            int n;
            const int part = ng_part(p, g, &n);
            const int N = p.end[part] - (part > 0 ? p.end[part - 1] : 0);
            float acc[R];
#pragma unroll
            for (int r = 0; r < R; r++)
                acc[r] = 0.0f;
            ng_row<T, R>(xs, reinterpret_cast<const uint4 *>((const T *)p.w[part] + (int64_t)n * K), kv, lane, acc,
                         wv, pre);
            pre = false;
#pragma unroll
            for (int r = 0; r < R; r++)
                acc[r] = anvil_warp_sum(acc[r]);
            if (lane == 0) {
                const float bv = p.bias[part] != nullptr ? anvil_load_any(p.bias[part], p.bias_dt[part], n) : 0.0f;
                T *out = (T *)p.out[part];
#pragma unroll
                for (int r = 0; r < R; r++)
                    out[(int64_t)r * N + n] = anvil_from_f32<T>(acc[r] + bv);
            }
        }
    }
}

template <typename T, int R, bool SILU> static void *ng_kernel_ptr()
{
    return reinterpret_cast<void *>(anvil_norm_gemv_kernel<T, R, SILU>);
}

/* The kernel for (dtype, rows, silu) as a pointer, for the occupancy query. */
static void *ng_kernel_of(anvil_dtype dt, int64_t T, int silu)
{
#define NG_PICK(TY)                                                                                          \
    switch (T) {                                                                                             \
    case 1: return silu ? ng_kernel_ptr<TY, 1, true>() : ng_kernel_ptr<TY, 1, false>();                      \
    case 2: return silu ? ng_kernel_ptr<TY, 2, true>() : ng_kernel_ptr<TY, 2, false>();                      \
    case 3: return silu ? ng_kernel_ptr<TY, 3, true>() : ng_kernel_ptr<TY, 3, false>();                      \
    default: return silu ? ng_kernel_ptr<TY, 4, true>() : ng_kernel_ptr<TY, 4, false>();                     \
    }
    if (dt == ANVIL_DTYPE_BF16)
        NG_PICK(__nv_bfloat16)
    NG_PICK(__half)
#undef NG_PICK
}

extern "C" int anvil_cuda_norm_gemv_ok(anvil_dtype dt, int64_t T, int64_t K, const void *a, const void *b,
                                       const void *sum)
{
    return (dt == ANVIL_DTYPE_BF16 || dt == ANVIL_DTYPE_F16) && T >= 1 && T <= NG_MAX_ROWS && K >= 8 &&
           K % 8 == 0 && T * K * 2 <= NG_SMEM_MAX && anvil_aligned16(a) && anvil_aligned16(b) &&
           anvil_aligned16(sum);
}

extern "C" int anvil_cuda_norm_gemv_per_sm(anvil_dtype dt, int64_t T, int64_t K, int silu)
{
    int n = 0;
    const void *k = ng_kernel_of(dt, T, silu);
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, NG_THREADS, (size_t)(T * K * 2)) != cudaSuccess) {
        (void)cudaGetLastError();
        n = 1;
    }
    return n > 0 ? n : 1;
}

template <typename T, bool SILU>
static void ng_launch_t(cudaStream_t stream, int pdl, unsigned grid, const ng_args &p, int64_t rows)
{
    const size_t smem = (size_t)rows * (size_t)p.K * sizeof(T);
    switch (rows) {
    case 1:
        anvil_launch(anvil_norm_gemv_kernel<T, 1, SILU>, grid, NG_THREADS, smem, stream, pdl, p);
        break;
    case 2:
        anvil_launch(anvil_norm_gemv_kernel<T, 2, SILU>, grid, NG_THREADS, smem, stream, pdl, p);
        break;
    case 3:
        anvil_launch(anvil_norm_gemv_kernel<T, 3, SILU>, grid, NG_THREADS, smem, stream, pdl, p);
        break;
    default:
        anvil_launch(anvil_norm_gemv_kernel<T, 4, SILU>, grid, NG_THREADS, smem, stream, pdl, p);
        break;
    }
}

extern "C" anvil_status anvil_cuda_launch_norm_gemv(cudaStream_t stream, int pdl, int max_blocks,
                                                    const anvil_cuda_norm_gemv *g, anvil_dtype act_dt, int64_t T,
                                                    int64_t K)
{
    CHECK(anvil_cuda_norm_gemv_ok(act_dt, T, K, g->a, g->b, g->sum), ANVIL_ERR_UNSUPPORTED,
          "norm gemv: %s, %lld rows of %lld (bf16/f16, 1..4 rows, K a multiple of 8, rows x K x 2 <= %d bytes, "
          "16-byte aligned)",
          anvil_dtype_name(act_dt), (long long)T, (long long)K, NG_SMEM_MAX);
    CHECK(anvil_cuda_is_float_dtype(g->norm_w_dt), ANVIL_ERR_UNSUPPORTED, "norm gemv: norm weight dtype %s",
          anvil_dtype_name(g->norm_w_dt));
    const int n_parts = g->silu ? 2 : g->n_parts;
    CHECK(n_parts >= 1 && n_parts <= NG_MAX_PARTS, ANVIL_ERR_INVALID_ARG, "norm gemv: %d parts (1..%d)", n_parts,
          NG_MAX_PARTS);
    ng_args p;
    memset(&p, 0, sizeof p);
    p.a = g->a;
    p.b = g->b;
    p.norm_w = g->norm_w;
    p.norm_w_dt = (int)g->norm_w_dt;
    p.eps = g->eps;
    p.sum = g->sum;
    p.K = (int)K;
    int64_t total = 0;
    for (int i = 0; i < n_parts; i++) {
        CHECK(anvil_aligned16(g->w[i]), ANVIL_ERR_UNSUPPORTED, "norm gemv: the matrices must be 16-byte aligned");
        CHECK(g->n[i] >= 0, ANVIL_ERR_INVALID_ARG, "norm gemv: %lld columns", (long long)g->n[i]);
        p.w[i] = g->w[i];
        p.out[i] = g->silu ? g->out[0] : g->out[i];
        p.bias[i] = g->bias[i];
        p.bias_dt[i] = g->bias[i] ? (int)g->bias_dt[i] : 0;
        if (!g->silu || i == 0)
            total += g->n[i];
        CHECK(total <= INT32_MAX - NG_THREADS, ANVIL_ERR_UNSUPPORTED, "norm gemv: %lld columns", (long long)total);
        p.end[i] = (int)total;
    }
    if (g->silu) {
        CHECK(g->n[1] == g->n[0], ANVIL_ERR_INVALID_ARG, "norm gemv: gate and up of %lld and %lld columns",
              (long long)g->n[0], (long long)g->n[1]);
        p.end[1] = p.end[0];
    }
    p.n_parts = n_parts;
    /* one wave of blocks, each a run of columns; at least a column a warp */
    int64_t grid = (total + NG_WARPS - 1) / NG_WARPS;
    if (max_blocks > 0 && grid > max_blocks)
        grid = max_blocks;
    if (grid < 1)
        grid = 1;
    const int64_t per_block = (total + grid - 1) / grid;
    p.cols_per_block = (int)(per_block > 0 ? per_block : 1);
    grid = total > 0 ? (total + p.cols_per_block - 1) / p.cols_per_block : 1; /* no block without a column... */
    /* ...except with no column at all: block 0 still writes sum */
    if (act_dt == ANVIL_DTYPE_BF16) {
        if (g->silu)
            ng_launch_t<__nv_bfloat16, true>(stream, pdl, (unsigned)grid, p, T);
        else
            ng_launch_t<__nv_bfloat16, false>(stream, pdl, (unsigned)grid, p, T);
    } else {
        if (g->silu)
            ng_launch_t<__half, true>(stream, pdl, (unsigned)grid, p, T);
        else
            ng_launch_t<__half, false>(stream, pdl, (unsigned)grid, p, T);
    }
    return ANVIL_CUDA_LAUNCHED("norm gemv kernel");
}
