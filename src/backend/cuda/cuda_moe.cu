/*
 * The moe op's kernels (backend.h, anvil_moe_args; the host side is
 * cuda_moe.c). A step runs, whatever its number of experts:
 *   route    one block a token: the router's logits (a warp a expert, f32),
 *            softmax, top-k (the lower expert on ties), renormalisation,
 *            the k experts sorted ascending;
 *   sort     one block: each expert's rows (token order within it), the
 *            experts with rows, and each one's range of row tiles;
 *   experts  gate|up with the silu, then down, each ONE launch over every
 *            active expert: for at most 8 tokens a GEMV (a warp a weight
 *            row, 16-byte loads where K allows, the expert's few token
 *            rows in registers, so only the active experts' weights are
 *            read, once), else a grouped SIMT
 *            GEMM whose blocks each own one row tile of one expert;
 *   combine  one block a token: the k expert rows weighted and summed in
 *            ascending expert order, plus sigmoid(shared gate) times the
 *            shared expert (whose MLP runs as ordinary matmuls before).
 * Expert products stay in f32 between the kernels (scratch pieces g, a, y).
 */
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_moe_schedule.h"

/* Runs the statement(s) with `TW` the C++ type of weight dtype dt. */
#define MOE_WEIGHT_DISPATCH(dt, ...)                                                                   \
    do {                                                                                               \
        if ((dt) == ANVIL_DTYPE_F32) {                                                                 \
            typedef float TW;                                                                          \
            __VA_ARGS__;                                                                               \
        } else if ((dt) == ANVIL_DTYPE_BF16) {                                                         \
            typedef __nv_bfloat16 TW;                                                                  \
            __VA_ARGS__;                                                                               \
        } else if ((dt) == ANVIL_DTYPE_F16) {                                                          \
            typedef __half TW;                                                                         \
            __VA_ARGS__;                                                                               \
        } else {                                                                                       \
            return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "cuda moe: weight dtype %s", anvil_dtype_name(dt)); \
        }                                                                                              \
    } while (0)

#define MOE_ROUTE_THREADS 256
#define MOE_GEMV_WARPS 8
#define MOE_GEMV_MAX_ROWS 8
#define MOE_TM MOE_SIMT_TILE_ROWS
#define MOE_TN 32
#define MOE_TK 32

/* ---------------------------------------------------------------- route */

template <typename T, typename TW>
__global__ void anvil_moe_route_kernel(const T *x, const TW *router, int64_t H, int32_t E, int32_t k, int norm,
                                       int32_t *topk_ids, float *topk_w)
{
    extern __shared__ float p[]; /* [E] */
    const int64_t t = blockIdx.x;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
    const T *xr = x + t * H;
    for (int32_t e = warp; e < E; e += n_warps) {
        const TW *wr = router + (int64_t)e * H;
        float acc = 0.0f;
        for (int64_t h = lane; h < H; h += 32)
            acc += anvil_to_f32(xr[h]) * anvil_to_f32(wr[h]);
        acc = anvil_warp_sum(acc);
        if (lane == 0)
            p[e] = acc;
    }
    __syncthreads();
    if (threadIdx.x != 0)
        return;
    float mx = p[0];
    for (int32_t e = 1; e < E; e++)
        mx = fmaxf(mx, p[e]);
    float sum = 0.0f;
    for (int32_t e = 0; e < E; e++) {
        p[e] = expf(p[e] - mx);
        sum += p[e];
    }
    int32_t *ids = topk_ids + t * k;
    float *w = topk_w + t * k;
    float wsum = 0.0f;
    for (int32_t j = 0; j < k; j++) {
        int32_t best = -1;
        for (int32_t e = 0; e < E; e++) {
            bool taken = false;
            for (int32_t q = 0; q < j; q++)
                taken |= ids[q] == e;
            if (!taken && (best < 0 || p[e] > p[best] || (isnan(p[best]) && !isnan(p[e]))))
                best = e;
        }
        ids[j] = best;
        w[j] = p[best] / sum;
        wsum += w[j];
    }
    if (norm)
        for (int32_t j = 0; j < k; j++)
            w[j] /= wsum;
    for (int32_t j = 1; j < k; j++)
        for (int32_t q = j; q > 0 && ids[q - 1] > ids[q]; q--) {
            const int32_t ti = ids[q];
            ids[q] = ids[q - 1];
            ids[q - 1] = ti;
            const float tw = w[q];
            w[q] = w[q - 1];
            w[q - 1] = tw;
        }
}

/* ---------------------------------------------------------------- sort */

/* One block. offsets[E + 1]; active[0..n) the experts with rows, active[E]
 * = n; tiles[e] the first bm-row tile of expert e, tiles[E] the count
 * (cuda_moe_schedule.h); order[r] = t k + j of sorted row r, row_of the
 * inverse. */
__global__ void anvil_moe_sort_kernel(const int32_t *topk_ids, int64_t n_pairs, int32_t E, int bm, int32_t *offsets,
                                      int32_t *active, int32_t *tiles, int32_t *order, int32_t *row_of)
{
    for (int32_t e = threadIdx.x; e < E; e += blockDim.x) {
        int32_t c = 0;
        for (int64_t r = 0; r < n_pairs; r++)
            c += topk_ids[r] == e;
        offsets[e + 1] = c;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        offsets[0] = 0;
        int32_t n_active = 0;
        for (int32_t e = 0; e < E; e++) {
            const int32_t c = offsets[e + 1];
            if (c > 0)
                active[n_active++] = e;
            offsets[e + 1] = offsets[e] + c;
        }
        active[E] = n_active;
        moe_tile_prefix(offsets, E, bm, tiles);
    }
    __syncthreads();
    for (int32_t e = threadIdx.x; e < E; e += blockDim.x) {
        int32_t at = offsets[e];
        for (int64_t r = 0; r < n_pairs; r++)
            if (topk_ids[r] == e) {
                order[at] = (int32_t)r;
                row_of[r] = at++;
            }
    }
}

/* ---------------------------------------------------------------- GEMV (few tokens) */

/* Block (bx, by): active expert by, weight rows n of warps bx * MOE_GEMV_WARPS ..
 * silu: out a[r, n] = silu(x_r . Wg[n]) * (x_r . Wu[n]) for the expert's rows r
 * (x_r the token row of sorted row r: X is x [T, K] read through order / k);
 * else out y[r, n] = a_r . Wd[n] (X is a [rows, K], f32, row r itself).
 * What a warp of either GEMV kernel works on: */
template <typename TX, typename TW> struct moe_gemv_job {
    const TW *wg, *wu;                /* the gate (or down) weight row n, and with silu its up row */
    const TX *xr[MOE_GEMV_MAX_ROWS]; /* the expert's input rows (past `rows`: its first again) */
    int32_t r0, rows;                 /* the expert's sorted rows [r0, r0 + rows) */
    int64_t n;
};

/* This warp's job; false when the block's expert slot or the warp's row is
 * past the end (the warp returns: the GEMVs have no barriers). */
template <typename TX, typename TW, bool SILU>
__device__ __forceinline__ bool moe_gemv_begin(moe_gemv_job<TX, TW> &j, const TX *X, const TW *W, int64_t K,
                                               int64_t N, int64_t w_stride_e, int64_t up_off, int32_t k, int32_t E,
                                               const int32_t *offsets, const int32_t *active, const int32_t *order)
{
    const int32_t slot = blockIdx.y;
    if (slot >= active[E]) /* active[E]: how many experts have rows */
        return false;
    const int32_t e = active[slot];
    j.n = (int64_t)blockIdx.x * MOE_GEMV_WARPS + threadIdx.x / 32;
    if (j.n >= N)
        return false;
    j.r0 = offsets[e];
    j.rows = offsets[e + 1] - offsets[e];
    j.wg = W + (int64_t)e * w_stride_e + j.n * K;
    j.wu = SILU ? j.wg + up_off * K : j.wg;
#pragma unroll
    for (int i = 0; i < MOE_GEMV_MAX_ROWS; i++) {
        const int32_t r = j.r0 + (i < j.rows ? i : 0);
        j.xr[i] = SILU ? X + (int64_t)(order[r] / k) * K : X + (int64_t)r * K;
    }
    return true;
}

/* The warp's sums of each row into out[r, n] (silu(g) * u with SILU). */
template <typename TX, typename TW, bool SILU>
__device__ __forceinline__ void moe_gemv_end(const moe_gemv_job<TX, TW> &j, const float (&ag)[MOE_GEMV_MAX_ROWS],
                                             const float (&au)[MOE_GEMV_MAX_ROWS], int64_t N, float *out)
{
#pragma unroll
    for (int i = 0; i < MOE_GEMV_MAX_ROWS; i++) {
        if (i >= j.rows)
            break;
        const float g = anvil_warp_sum(ag[i]);
        const float u = SILU ? anvil_warp_sum(au[i]) : 0.0f;
        if (threadIdx.x % 32 == 0)
            out[(int64_t)(j.r0 + i) * N + j.n] = SILU ? g / (1.0f + expf(-g)) * u : g;
    }
}

template <typename TX, typename TW, bool SILU>
__global__ void anvil_moe_gemv_kernel(const TX *X, const TW *W, int64_t K, int64_t N, int64_t w_stride_e,
                                      int64_t up_off, int32_t k, int32_t E, const int32_t *offsets,
                                      const int32_t *active, const int32_t *order, float *out)
{
    moe_gemv_job<TX, TW> j;
    if (!moe_gemv_begin<TX, TW, SILU>(j, X, W, K, N, w_stride_e, up_off, k, E, offsets, active, order))
        return;
    float ag[MOE_GEMV_MAX_ROWS], au[MOE_GEMV_MAX_ROWS];
#pragma unroll
    for (int i = 0; i < MOE_GEMV_MAX_ROWS; i++)
        ag[i] = au[i] = 0.0f;
    for (int64_t c = threadIdx.x % 32; c < K; c += 32) {
        const float g = anvil_to_f32(j.wg[c]);
        const float u = SILU ? anvil_to_f32(j.wu[c]) : 0.0f;
#pragma unroll
        for (int i = 0; i < MOE_GEMV_MAX_ROWS; i++)
            if (i < j.rows) {
                const float xv = anvil_to_f32(j.xr[i][c]);
                ag[i] += g * xv;
                if (SILU)
                    au[i] += u * xv;
            }
    }
    moe_gemv_end<TX, TW, SILU>(j, ag, au, N, out);
}

/* The same with 16-byte loads: each lane keeps MOE_GEMV_PIECES pieces of
 * eight elements of each weight row in flight (a warp streams 256 x
 * MOE_GEMV_PIECES consecutive elements of a row per step: decode lives on
 * memory-level parallelism), then applies them to the expert's token rows.
 * K a multiple of 8, X and W 16-byte aligned: the launcher checks. */
#define MOE_GEMV_PIECES 4
template <typename TX, typename TW, bool SILU>
__global__ void anvil_moe_gemv_vec_kernel(const TX *__restrict__ X, const TW *__restrict__ W, int64_t K, int64_t N,
                                          int64_t w_stride_e, int64_t up_off, int32_t k, int32_t E,
                                          const int32_t *offsets, const int32_t *active, const int32_t *order,
                                          float *out)
{
    moe_gemv_job<TX, TW> j;
    if (!moe_gemv_begin<TX, TW, SILU>(j, X, W, K, N, w_stride_e, up_off, k, E, offsets, active, order))
        return;
    float ag[MOE_GEMV_MAX_ROWS], au[MOE_GEMV_MAX_ROWS];
#pragma unroll
    for (int i = 0; i < MOE_GEMV_MAX_ROWS; i++)
        ag[i] = au[i] = 0.0f;
    const int lane = threadIdx.x % 32;
    for (int64_t c0 = (int64_t)lane * 8; c0 < K; c0 += 256 * MOE_GEMV_PIECES) {
        float g[MOE_GEMV_PIECES][8], u[MOE_GEMV_PIECES][8];
#pragma unroll
        for (int p = 0; p < MOE_GEMV_PIECES; p++) {
            const int64_t c = c0 + (int64_t)p * 256;
            if (c < K) {
                anvil_load_vec<TW, 8>(j.wg + c, g[p]);
                if constexpr (SILU)
                    anvil_load_vec<TW, 8>(j.wu + c, u[p]);
            }
        }
#pragma unroll
        for (int p = 0; p < MOE_GEMV_PIECES; p++) {
            const int64_t c = c0 + (int64_t)p * 256;
            if (c >= K)
                break;
#pragma unroll
            for (int i = 0; i < MOE_GEMV_MAX_ROWS; i++)
                if (i < j.rows) {
                    float xv[8];
                    anvil_load_vec<TX, 8>(j.xr[i] + c, xv);
#pragma unroll
                    for (int q = 0; q < 8; q++) {
                        ag[i] += g[p][q] * xv[q];
                        if constexpr (SILU)
                            au[i] += u[p][q] * xv[q];
                    }
                }
        }
    }
    moe_gemv_end<TX, TW, SILU>(j, ag, au, N, out);
}

/* ---------------------------------------------------------------- grouped GEMM */

/* Block (bx, by): output columns [bx MOE_TN, +MOE_TN) of row tile by of the
 * schedule (cuda_moe_schedule.h, bm = MOE_TM). 256 threads,
 * each 2 x 2 outputs (and with SILU their up twins). Same X / out as the
 * GEMV. */
template <typename TX, typename TW, bool SILU>
__global__ void anvil_moe_gemm_kernel(const TX *X, const TW *W, int64_t K, int64_t N, int64_t w_stride_e,
                                      int64_t up_off, int32_t k, int32_t E, const int32_t *offsets,
                                      const int32_t *tiles, const int32_t *order, float *out)
{
    __shared__ float xs[MOE_TM][MOE_TK + 1];
    __shared__ float gs[MOE_TN][MOE_TK + 1];
    __shared__ float us[SILU ? MOE_TN : 1][MOE_TK + 1];
    int32_t e, r_begin, r_end;
    if (!moe_tile_find(offsets, tiles, E, MOE_TM, (int32_t)blockIdx.y, &e, &r_begin, &r_end))
        return;
    const int64_t n0 = (int64_t)blockIdx.x * MOE_TN;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float ag[2][2] = {{0, 0}, {0, 0}}, au[2][2] = {{0, 0}, {0, 0}};
    const TW *Wg = W + (int64_t)e * w_stride_e;
    for (int64_t c0 = 0; c0 < K; c0 += MOE_TK) {
        for (int i = threadIdx.x; i < MOE_TM * MOE_TK; i += blockDim.x) {
            const int rr = i / MOE_TK, cc = i % MOE_TK;
            const int32_t r = r_begin + rr;
            const int64_t c = c0 + cc;
            float v = 0.0f;
            if (r < r_end && c < K) {
                const TX *row = SILU ? X + (int64_t)(order[r] / k) * K : X + (int64_t)r * K;
                v = anvil_to_f32(row[c]);
            }
            xs[rr][cc] = v;
        }
        for (int i = threadIdx.x; i < MOE_TN * MOE_TK; i += blockDim.x) {
            const int nn = i / MOE_TK, cc = i % MOE_TK;
            const int64_t n = n0 + nn, c = c0 + cc;
            const bool in = n < N && c < K;
            gs[nn][cc] = in ? anvil_to_f32(Wg[n * K + c]) : 0.0f;
            if (SILU)
                us[nn][cc] = in ? anvil_to_f32(Wg[(up_off + n) * K + c]) : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int cc = 0; cc < MOE_TK; cc++) {
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    const float xv = xs[ty * 2 + i][cc];
                    ag[i][j] += xv * gs[tx * 2 + j][cc];
                    if (SILU)
                        au[i][j] += xv * us[tx * 2 + j][cc];
                }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int32_t r = r_begin + ty * 2 + i;
            const int64_t n = n0 + tx * 2 + j;
            if (r < r_end && n < N) {
                const float g = ag[i][j];
                out[(int64_t)r * N + n] = SILU ? g / (1.0f + expf(-g)) * au[i][j] : g;
            }
        }
}

/* ---------------------------------------------------------------- gather (the loop reference) */

template <typename T>
__global__ void anvil_moe_gather_kernel(const T *x, int64_t H, int32_t k, int64_t n_pairs, const int32_t *order, T *xs)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_pairs * H;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / H, h = i % H;
        xs[i] = x[(int64_t)(order[r] / k) * H + h];
    }
}

/* ---------------------------------------------------------------- combine */

/* One block a token: out[t] = sum_j w[t, j] y[row_of[t k + j]] (ids
 * ascending) + sigmoid(x[t] . sgw) * sy[t] with a shared expert. */
template <typename T, typename TY, typename TW>
__global__ void anvil_moe_combine_kernel(const T *x, int64_t H, int32_t k, const float *topk_w,
                                         const int32_t *row_of, const TY *y, const float *y2, const TW *sgw,
                                         const T *sy, T *out)
{
    __shared__ float red[32];
    __shared__ float gate;
    const int64_t t = blockIdx.x;
    if (sgw != nullptr) {
        float acc = 0.0f;
        for (int64_t h = threadIdx.x; h < H; h += blockDim.x)
            acc += anvil_to_f32(x[t * H + h]) * anvil_to_f32(sgw[h]);
        acc = anvil_warp_sum(acc);
        if (threadIdx.x % 32 == 0)
            red[threadIdx.x / 32] = acc;
        __syncthreads();
        if (threadIdx.x == 0) {
            float s = 0.0f;
            for (int i = 0; i < (int)(blockDim.x / 32); i++)
                s += red[i];
            gate = 1.0f / (1.0f + expf(-s));
        }
        __syncthreads();
    }
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
        float o = 0.0f;
        for (int32_t j = 0; j < k; j++) {
            const int64_t at = (int64_t)row_of[t * k + j] * H + h;
            /* y2: the second half of K of a split down GEMM, added in a fixed order */
            const float v = y2 != nullptr ? anvil_to_f32(y[at]) + y2[at] : anvil_to_f32(y[at]);
            o += v * topk_w[t * k + j];
        }
        if (sy != nullptr) /* without a gate weight (DeepSeek): the shared experts' output as it is */
            o += (sgw != nullptr ? gate : 1.0f) * anvil_to_f32(sy[t * H + h]);
        out[t * H + h] = anvil_from_f32<T>(o);
    }
}

/* ---------------------------------------------------------------- launchers */

extern "C" anvil_status anvil_cuda_launch_moe_route(cudaStream_t stream, const void *x, anvil_dtype act_dt,
                                                    const void *router, anvil_dtype w_dt, int64_t n_tok, int64_t H,
                                                    int32_t E, int32_t k, int norm, int32_t *topk_ids, float *topk_w)
{
    CHECK(n_tok > 0 && H > 0 && E > 0 && E <= 4096 && k > 0 && k <= E, ANVIL_ERR_INVALID_ARG,
          "moe route: %lld tokens, %d experts, top %d (at most 4096 experts)", (long long)n_tok, E, k);
    CHECK(n_tok <= INT32_MAX, ANVIL_ERR_INVALID_ARG, "moe route: %lld tokens", (long long)n_tok);
    ANVIL_CUDA_DISPATCH(act_dt, MOE_WEIGHT_DISPATCH(w_dt, {
        anvil_moe_route_kernel<T, TW><<<(unsigned)n_tok, MOE_ROUTE_THREADS, (size_t)E * sizeof(float), stream>>>(
            (const T *)x, (const TW *)router, H, E, k, norm, topk_ids, topk_w);
    }));
    return ANVIL_CUDA_LAUNCHED("moe route kernel");
}

extern "C" anvil_status anvil_cuda_launch_moe_sort(cudaStream_t stream, const int32_t *topk_ids, int64_t n_pairs,
                                                   int32_t E, int tile_m, int32_t *offsets, int32_t *active,
                                                   int32_t *tiles, int32_t *order, int32_t *row_of)
{
    CHECK(n_pairs > 0 && n_pairs <= INT32_MAX && E > 0 && tile_m > 0, ANVIL_ERR_INVALID_ARG,
          "moe sort: %lld rows, %d experts, tiles of %d", (long long)n_pairs, E, tile_m);
    anvil_moe_sort_kernel<<<1, 256, 0, stream>>>(topk_ids, n_pairs, E, tile_m, offsets, active, tiles, order,
                                                 row_of);
    return ANVIL_CUDA_LAUNCHED("moe sort kernel");
}

/* silu: X = x [T, K] (act dtype) through order, out a [T k, N] f32, W the
 * stacked gate|up (expert stride 2 N K, up rows N after gate rows); else X
 * = a [T k, K] f32, out y [T k, N] f32, W the stacked down (stride N K). */
extern "C" anvil_status anvil_cuda_launch_moe_experts(cudaStream_t stream, int silu, const void *X,
                                                      anvil_dtype x_dt, const void *W, anvil_dtype w_dt,
                                                      int64_t n_tok, int32_t k, int32_t E, int64_t K, int64_t N,
                                                      const int32_t *offsets, const int32_t *active,
                                                      const int32_t *tiles, const int32_t *order, float *out)
{
    CHECK(n_tok > 0 && k > 0 && E > 0 && K > 0 && N > 0 && n_tok * k <= INT32_MAX, ANVIL_ERR_INVALID_ARG,
          "moe experts: %lld tokens x %d, K %lld, N %lld", (long long)n_tok, k, (long long)K, (long long)N);
    CHECK(silu || x_dt == ANVIL_DTYPE_F32, ANVIL_ERR_INVALID_ARG, "moe experts: down reads f32 rows");
    const int64_t stride = silu ? 2 * N * K : N * K;
    const int64_t n_pairs = n_tok * k;
    if (n_tok <= MOE_GEMV_MAX_ROWS) {
        /* an expert has at most T rows: one per token */
        const int32_t max_active = n_pairs < E ? (int32_t)n_pairs : E;
        CHECK((N + MOE_GEMV_WARPS - 1) / MOE_GEMV_WARPS <= INT32_MAX, ANVIL_ERR_INVALID_ARG, "moe gemv: N too large");
        dim3 grid((unsigned)((N + MOE_GEMV_WARPS - 1) / MOE_GEMV_WARPS), (unsigned)max_active);
        const bool vec = K % 8 == 0 && anvil_aligned16(X) && anvil_aligned16(W);
        ANVIL_CUDA_DISPATCH(x_dt, MOE_WEIGHT_DISPATCH(w_dt, {
            if (vec && silu)
                anvil_moe_gemv_vec_kernel<T, TW, true><<<grid, MOE_GEMV_WARPS * 32, 0, stream>>>(
                    (const T *)X, (const TW *)W, K, N, stride, N, k, E, offsets, active, order, out);
            else if (vec)
                anvil_moe_gemv_vec_kernel<T, TW, false><<<grid, MOE_GEMV_WARPS * 32, 0, stream>>>(
                    (const T *)X, (const TW *)W, K, N, stride, 0, k, E, offsets, active, order, out);
            else if (silu)
                anvil_moe_gemv_kernel<T, TW, true><<<grid, MOE_GEMV_WARPS * 32, 0, stream>>>(
                    (const T *)X, (const TW *)W, K, N, stride, N, k, E, offsets, active, order, out);
            else
                anvil_moe_gemv_kernel<T, TW, false><<<grid, MOE_GEMV_WARPS * 32, 0, stream>>>(
                    (const T *)X, (const TW *)W, K, N, stride, 0, k, E, offsets, active, order, out);
        }));
        return ANVIL_CUDA_LAUNCHED("moe gemv kernel");
    }
    /* every expert's tiles: at most ceil(rows / TM) + one partial tile per expert */
    const int64_t max_tiles = moe_tiles_bound(n_pairs, E, MOE_TM);
    CHECK(max_tiles <= 65535 && (N + MOE_TN - 1) / MOE_TN <= INT32_MAX, ANVIL_ERR_INVALID_ARG,
          "moe gemm: %lld row tiles (at most 65535: fewer tokens a step)", (long long)max_tiles);
    dim3 grid((unsigned)((N + MOE_TN - 1) / MOE_TN), (unsigned)max_tiles);
    ANVIL_CUDA_DISPATCH(x_dt, MOE_WEIGHT_DISPATCH(w_dt, {
        if (silu)
            anvil_moe_gemm_kernel<T, TW, true><<<grid, 256, 0, stream>>>((const T *)X, (const TW *)W, K, N, stride, N,
                                                                         k, E, offsets, tiles, order, out);
        else
            anvil_moe_gemm_kernel<T, TW, false><<<grid, 256, 0, stream>>>((const T *)X, (const TW *)W, K, N, stride,
                                                                          0, k, E, offsets, tiles, order, out);
    }));
    return ANVIL_CUDA_LAUNCHED("moe gemm kernel");
}

extern "C" anvil_status anvil_cuda_launch_moe_gather(cudaStream_t stream, const void *x, anvil_dtype act_dt, int64_t H,
                                                     int32_t k, int64_t n_pairs, const int32_t *order, void *xs)
{
    CHECK(n_pairs > 0 && H > 0, ANVIL_ERR_INVALID_ARG, "moe gather: %lld rows", (long long)n_pairs);
    ANVIL_CUDA_DISPATCH(act_dt, {
        anvil_moe_gather_kernel<T><<<anvil_grid_for(n_pairs * H, 256), 256, 0, stream>>>((const T *)x, H, k, n_pairs,
                                                                                         order, (T *)xs);
    });
    return ANVIL_CUDA_LAUNCHED("moe gather kernel");
}

/* y_f32: y is f32 (the grouped path), else in act_dt (the loop); y2 (f32,
 * with y_f32): a second partial y added to y (a split down GEMM), or NULL. sgw NULL:
 * no shared expert (sy unused). */
extern "C" anvil_status anvil_cuda_launch_moe_combine(cudaStream_t stream, const void *x, anvil_dtype act_dt,
                                                      int64_t n_tok, int64_t H, int32_t k, const float *topk_w,
                                                      const int32_t *row_of, const void *y, int y_f32,
                                                      const float *y2, const void *sgw, anvil_dtype w_dt,
                                                      const void *sy, void *out)
{
    CHECK(n_tok > 0 && n_tok <= INT32_MAX && H > 0 && k > 0, ANVIL_ERR_INVALID_ARG, "moe combine: %lld tokens", (long long)n_tok);
    ANVIL_CUDA_DISPATCH(act_dt, MOE_WEIGHT_DISPATCH(w_dt, {
        if (y_f32)
            anvil_moe_combine_kernel<T, float, TW><<<(unsigned)n_tok, 256, 0, stream>>>(
                (const T *)x, H, k, topk_w, row_of, (const float *)y, y2, (const TW *)sgw, (const T *)sy,
                (T *)out);
        else
            anvil_moe_combine_kernel<T, T, TW><<<(unsigned)n_tok, 256, 0, stream>>>(
                (const T *)x, H, k, topk_w, row_of, (const T *)y, nullptr, (const TW *)sgw, (const T *)sy,
                (T *)out);
    }));
    return ANVIL_CUDA_LAUNCHED("moe combine kernel");
}
