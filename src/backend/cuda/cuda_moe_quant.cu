/*
 * The moe op's grouped GEMV on quantized experts (cuda_moe_quant.h): block
 * (bx, by) is active expert by's weight rows n = bx * MQ_WARPS + warp, a
 * warp a row (with silu: its gate row and its up row), the expert's few
 * sorted rows (at most 8: one per token) in registers, so only the active
 * experts' weights are read, once, and the step needs no host sync (step
 * graphs hold it, unlike the loop over experts). Each lane reads 8
 * consecutive codes at a time (8 bytes of fp8/int8, 4 of int4; K a
 * multiple of 8, groups of a multiple of 8, so the 8 share one scale and
 * zero point) and dequantizes them as the canonical form says:
 *   fp8   fl(e4m3(v) * s)       int8  fl(v * s)       int4  fl((v - z) * s)
 * (z the group's zero point, 8 without zero points), then multiplies each
 * of the expert's rows; the warp's sums are f32. fp8 W8A8 first rounds each
 * input row to fp8 as the CPU does (each warp finds the row's max|x| over
 * K itself: no barrier, no shared memory).
 */
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_gemv_stream.cuh"
#include "backend/cuda/cuda_moe_quant.h"
#include "backend/cuda/cuda_moe_quant_map.h"

#define MQ_WARPS 8
#define MQ_MAX_ROWS 8

enum { MQ_FP8 = MQM_FP8, MQ_I8 = MQM_I8, MQ_U4 = MQM_U4 };

/* The 8 codes of a weight row from column c (c % 8 == 0) as v - z, read
 * and unpacked as cuda_moe_quant_map.h says (checked on the CPU by
 * test_cuda_moe_quant_map). */
template <int KIND>
__device__ __forceinline__ void mq_codes(const uint8_t *__restrict__ wrow, int64_t c, float z, float (&v)[8])
{
    if constexpr (KIND == MQ_U4) {
        const uint32_t p = __ldg(reinterpret_cast<const unsigned int *>(wrow + mqm_byte(KIND, c)));
#pragma unroll
        for (int i = 0; i < 8; i++)
            v[i] = (float)mqm_code(KIND, p, 0u, i) - z;
    } else {
        const uint2 p = __ldg(reinterpret_cast<const uint2 *>(wrow + mqm_byte(KIND, c)));
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint32_t b = mqm_code(KIND, p.x, p.y, i);
            if constexpr (KIND == MQ_I8) {
                v[i] = (float)(int8_t)(uint8_t)b;
            } else {
                __nv_fp8_e4m3 f;
                f.__x = (__nv_fp8_storage_t)b;
                v[i] = anvil_to_f32(f);
            }
        }
    }
}

template <typename TX, int KIND, bool SILU>
__global__ void anvil_moe_gemv_quant_kernel(const TX *__restrict__ X, const uint8_t *__restrict__ W,
                                            const float *__restrict__ scales, const uint8_t *__restrict__ zeros,
                                            int64_t K, int64_t N, int32_t group, int fp8_act, int32_t k, int32_t E,
                                            const int32_t *offsets, const int32_t *active, const int32_t *order,
                                            float *out)
{
    const int32_t slot = blockIdx.y;
    if (slot >= active[E]) /* active[E]: how many experts have rows */
        return;
    const int32_t e = active[slot];
    const int64_t n = (int64_t)blockIdx.x * MQ_WARPS + threadIdx.x / 32;
    if (n >= N) /* no barriers below: the warp may leave */
        return;
    const int lane = threadIdx.x % 32;
    const int32_t r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
    /* the stack's rows: gate e 2N + n and up e 2N + N + n; down e N + n */
    const int64_t rg = mqm_row(SILU, e, N, n), ru = rg + N;
    const int64_t row_bytes = KIND == MQ_U4 ? K / 2 : K;
    const uint8_t *wg = W + rg * row_bytes, *wu = W + ru * row_bytes;
    const TX *xr[MQ_MAX_ROWS];
#pragma unroll
    for (int i = 0; i < MQ_MAX_ROWS; i++) {
        const int32_t r = r0 + (i < rows ? i : 0);
        xr[i] = SILU ? X + (int64_t)(order[r] / k) * K : X + (int64_t)r * K;
    }
    float sx[MQ_MAX_ROWS];
#pragma unroll
    for (int i = 0; i < MQ_MAX_ROWS; i++) {
        sx[i] = 0.0f;
        if (fp8_act && i < rows) { /* W8A8: the row's scale, as the CPU's: max|x| / 448 */
            float m = 0.0f;
            for (int64_t c = lane; c < K; c += 32)
                m = fmaxf(m, fabsf(anvil_to_f32(xr[i][c])));
            sx[i] = __fdiv_rn(anvil_warp_max(m), 448.0f);
        }
    }
    float ag[MQ_MAX_ROWS], au[MQ_MAX_ROWS];
#pragma unroll
    for (int i = 0; i < MQ_MAX_ROWS; i++)
        ag[i] = au[i] = 0.0f;
    for (int64_t c = (int64_t)lane * MQM_CODES; c < K; c += MQM_STEP) {
        const int64_t ig = mqm_scale_at(rg, c, K, group), iu = mqm_scale_at(ru, c, K, group);
        const float sg = scales[ig], su = SILU ? scales[iu] : 0.0f;
        const float zg = KIND == MQ_U4 ? (zeros != nullptr ? (float)zeros[ig] : 8.0f) : 0.0f;
        const float zu = KIND == MQ_U4 && SILU ? (zeros != nullptr ? (float)zeros[iu] : 8.0f) : 0.0f;
        float vg[8], vu[8];
        mq_codes<KIND>(wg, c, zg, vg);
        if (SILU)
            mq_codes<KIND>(wu, c, zu, vu);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            vg[j] = __fmul_rn(vg[j], sg); /* W = fl((v - z) * s): one rounding, never fused into the sum */
            if (SILU)
                vu[j] = __fmul_rn(vu[j], su);
        }
#pragma unroll
        for (int i = 0; i < MQ_MAX_ROWS; i++) {
            if (i >= rows)
                break;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float xv = anvil_to_f32(xr[i][c + j]);
                if (fp8_act) /* x' = fl(fp8(x / sx) * sx); a row of zeros stays zeros */
                    xv = sx[i] > 0.0f
                             ? anvil_to_f32(anvil_from_f32<__nv_fp8_e4m3>(__fdiv_rn(xv, sx[i]))) * sx[i]
                             : 0.0f;
                ag[i] += vg[j] * xv;
                if (SILU)
                    au[i] += vu[j] * xv;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < MQ_MAX_ROWS; i++) {
        if (i >= rows)
            break;
        const float g = anvil_warp_sum(ag[i]);
        const float u = SILU ? anvil_warp_sum(au[i]) : 0.0f;
        if (lane == 0)
            out[(int64_t)(r0 + i) * N + n] = SILU ? g / (1.0f + expf(-g)) * u : g;
    }
}

extern "C" int anvil_cuda_moe_gemv_quant_ok(const anvil_tensor *w, int64_t n_tok)
{
    const anvil_quant *q = w->quant;
    if (q == NULL || q->scales == NULL || q->perm != NULL || n_tok < 1 || n_tok > MQ_MAX_ROWS || w->n_dims != 2)
        return 0;
    const int64_t K = w->shape[1];
    const bool kind_ok = w->dtype == ANVIL_DTYPE_F8_E4M3 || w->dtype == ANVIL_DTYPE_I8 || w->dtype == ANVIL_DTYPE_U4;
    const bool act_ok = q->act == ANVIL_QUANT_ACT_NONE ||
                        (q->act == ANVIL_QUANT_ACT_FP8_DYNAMIC && w->dtype == ANVIL_DTYPE_F8_E4M3);
    return kind_ok && act_ok && K % 8 == 0 && (q->group == 0 || (q->group % 8 == 0 && K % q->group == 0)) &&
           ((uintptr_t)w->data & 7) == 0;
}

extern "C" anvil_status anvil_cuda_launch_moe_experts_quant(cudaStream_t stream, int silu, const void *X,
                                                            anvil_dtype x_dt, const anvil_tensor *W, int64_t n_tok,
                                                            int32_t k, int32_t E, int64_t K, int64_t N,
                                                            const int32_t *offsets, const int32_t *active,
                                                            const int32_t *order, float *out)
{
    CHECK(n_tok > 0 && k > 0 && E > 0 && K > 0 && N > 0 && W != NULL && W->n_dims == 2 && W->shape[1] == K &&
              W->shape[0] == (int64_t)E * (silu ? 2 : 1) * N,
          ANVIL_ERR_INVALID_ARG, "moe quantized gemv: %lld tokens x %d, K %lld, N %lld", (long long)n_tok, k,
          (long long)K, (long long)N);
    CHECK(anvil_cuda_moe_gemv_quant_ok(W, n_tok), ANVIL_ERR_INVALID_ARG,
          "moe quantized gemv: a %s weight it does not take (at most %d tokens, K and groups multiples of 8, no "
          "perm, 8-byte aligned)",
          anvil_dtype_name(W->dtype), MQ_MAX_ROWS);
    CHECK(silu || x_dt == ANVIL_DTYPE_F32, ANVIL_ERR_INVALID_ARG, "moe quantized gemv: down reads f32 rows");
    CHECK((N + MQ_WARPS - 1) / MQ_WARPS <= INT32_MAX, ANVIL_ERR_INVALID_ARG, "moe quantized gemv: N too large");
    const int64_t n_pairs = n_tok * k;
    const int32_t max_active = n_pairs < E ? (int32_t)n_pairs : E; /* grid.y: slots past active[E] return */
    const dim3 grid((unsigned)((N + MQ_WARPS - 1) / MQ_WARPS), (unsigned)max_active);
    const uint8_t *w = (const uint8_t *)W->data;
    const anvil_quant *q = W->quant;
    const int fp8_act = q->act == ANVIL_QUANT_ACT_FP8_DYNAMIC;
#define MQ_LAUNCH(KIND)                                                                                     \
    do {                                                                                                    \
        if (silu)                                                                                           \
            anvil_moe_gemv_quant_kernel<T, KIND, true><<<grid, MQ_WARPS * 32, 0, stream>>>(                 \
                (const T *)X, w, q->scales, q->zeros, K, N, q->group, fp8_act, k, E, offsets, active, order, \
                out);                                                                                       \
        else                                                                                                \
            anvil_moe_gemv_quant_kernel<T, KIND, false><<<grid, MQ_WARPS * 32, 0, stream>>>(                \
                (const T *)X, w, q->scales, q->zeros, K, N, q->group, fp8_act, k, E, offsets, active, order, \
                out);                                                                                       \
    } while (0)
    ANVIL_CUDA_DISPATCH(x_dt, {
        if (W->dtype == ANVIL_DTYPE_F8_E4M3)
            MQ_LAUNCH(MQ_FP8);
        else if (W->dtype == ANVIL_DTYPE_I8)
            MQ_LAUNCH(MQ_I8);
        else
            MQ_LAUNCH(MQ_U4);
    });
#undef MQ_LAUNCH
    return ANVIL_CUDA_LAUNCHED("moe quantized gemv kernel");
}

/* ================================================================ the streaming form
 *
 * fp8 W8A8 experts (Mixtral's --quantize fp8, issue 17) on the dense
 * streaming GEMV's design (cuda_gemv_stream_quant.cu, cuda_gemv_stream.cuh,
 * the schedule of cuda_gemv_stream_map.h): persistent blocks, each a
 * contiguous run of items (active expert slot, part (gate, up; down), tile
 * of 16 stacked rows, split of K), the weights through a cp.async ring of
 * 8 KB stages, one mma16 step a warp from shared memory. The active
 * experts' count is read on the device (active[E]) and the items cut by
 * it, so only their weights are read and no host sync is needed. x: the
 * current expert's rows (at most one per token: <= 8) coded to fp8 as the
 * CPU does (sx = max|row| / 448) into shared memory when a block's item
 * reaches a new expert. Sums: the exact products of the codes in f32, then
 * * sx * s[row] (the dense W8A8 GEMV's arithmetic; the SIMT kernel above
 * multiplies x' and W after rounding each, so the two differ in the last
 * bits). Out f32 as above (gate/up: silu(g) * u unrounded). Split items go
 * through the workspace and tile counters as in the dense form.
 */

typedef struct mqs_args {
    const void *X;
    const uint8_t *W;
    const float *scales;
    int K, N, k, E;
    const int32_t *offsets, *active, *order;
    float *out;
    int parts, tiles, ks, steps, tmax; /* tmax: rows of x an expert may have (n_tok, <= 8) */
    float *ws;
    int *cnt;
} mqs_args;

typedef struct mqs_cur {
    int64_t item;
    int slot, part, tile, sp, e;
    int64_t s0, s1, st;
} mqs_cur;

__device__ __forceinline__ void mqs_cur_set(mqs_cur &c, const mqs_args &a, int64_t item, int64_t end)
{
    c.item = item;
    c.slot = c.part = c.tile = c.sp = c.e = 0;
    c.s0 = c.s1 = c.st = 0;
    if (item >= end)
        return;
    gsq_moe_item(item, a.parts, a.tiles, a.ks, &c.slot, &c.part, &c.tile, &c.sp);
    c.e = a.active[c.slot];
    gsq_split_steps(a.steps, a.ks, c.sp, &c.s0, &c.s1);
    c.st = c.s0;
}

__device__ __forceinline__ bool mqs_cur_next(mqs_cur &c, const mqs_args &a, int64_t end)
{
    c.st += GSQ_STAGE_STEPS;
    if (c.st < c.s1)
        return false;
    mqs_cur_set(c, a, c.item + 1, end);
    return true;
}

/* the stacked row of part p's row n of expert e: gate e 2N + n, up + N; down e N + n */
__device__ __forceinline__ int64_t mqs_row(const mqs_args &a, int e, int part, int n)
{
    return mqm_row(a.parts == 2, e, a.N, n) + (int64_t)part * a.N;
}

__device__ __forceinline__ void mqs_issue(const mqs_args &a, const mqs_cur &c, uint8_t *slot)
{
    const int64_t left = c.s1 - c.st;
    const int nst = left < GSQ_STAGE_STEPS ? (int)left : GSQ_STAGE_STEPS;
#pragma unroll
    for (int i = 0; i < GSQ_PIECES / GSQ_THREADS; i++) {
        int row, step, cc;
        gsq_piece((int)threadIdx.x + i * GSQ_THREADS, &row, &step, &cc);
        const int n = c.tile * GSQ_TILE_ROWS + row;
        const bool valid = n < a.N && step < nst;
        const uint8_t *src =
            valid ? a.W + mqs_row(a, c.e, c.part, n) * a.K + (c.st + step) * GSQ_STEP + 16 * cc : a.W;
        anvil_cp_async16(slot + gsq_w_off(step, row, cc), src, valid);
    }
}

/* the sum of part p's splits of a tile at o, in split order */
__device__ __forceinline__ float mqs_sum_splits(const mqs_args &a, int slot, int p, int tile, int o)
{
    const float *ws = a.ws + gsq_moe_item_of(a.parts, a.tiles, a.ks, slot, p, tile, 0) * 128 + o;
    float v = __ldcg(ws);
    for (int sp = 1; sp < a.ks; sp++)
        v += __ldcg(ws + (int64_t)sp * 128);
    return v;
}

/* out[r0 + i][n] from the sums (part 0; part 1 with the silu) */
template <bool SILU>
__device__ __forceinline__ void mqs_finish(const mqs_args &a, const mqs_cur &c, int n, int i, float v, float v2,
                                           const float *sxs)
{
    const int32_t r0 = a.offsets[c.e];
    const float g = __fmul_rn(__fmul_rn(v, sxs[i]), __ldg(a.scales + mqs_row(a, c.e, 0, n)));
    float o = g;
    if constexpr (SILU) {
        const float u = __fmul_rn(__fmul_rn(v2, sxs[i]), __ldg(a.scales + mqs_row(a, c.e, 1, n)));
        o = g / (1.0f + expf(-g)) * u;
    }
    a.out[(int64_t)(r0 + i) * a.N + n] = o;
}

template <bool SILU>
__device__ void mqs_flush(const mqs_args &a, const mqs_cur &c, int rows, float (&acc)[4], float *red, int *flag,
                          const float *sxs)
{
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float *rw = red + w * 128;
    rw[g * 8 + 2 * t] = acc[0];
    rw[g * 8 + 2 * t + 1] = acc[1];
    rw[(g + 8) * 8 + 2 * t] = acc[2];
    rw[(g + 8) * 8 + 2 * t + 1] = acc[3];
#pragma unroll
    for (int i = 0; i < 4; i++)
        acc[i] = 0.0f;
    __syncthreads();
    const int o = threadIdx.x, ii = o / 8, r = o % 8;
    const int n = c.tile * GSQ_TILE_ROWS + ii;
    const bool direct = gsq_direct(a.ks, SILU);
    if (o < 128) {
        float v = red[o];
#pragma unroll
        for (int q = 1; q < GSQ_WARPS; q++)
            v += red[q * 128 + o];
        if (direct) {
            if (r < rows && n < a.N)
                mqs_finish<false>(a, c, n, r, v, 0.0f, sxs);
        } else {
            __stcg(a.ws + c.item * 128 + o, v);
            __threadfence();
        }
    }
    if (!direct) {
        __syncthreads();
        if (threadIdx.x == 0) {
            int *ctr = a.cnt + (int64_t)c.slot * a.tiles + c.tile;
            const int last = atomicAdd(ctr, 1) == (SILU ? 2 : 1) * a.ks - 1;
            if (last)
                atomicExch(ctr, 0);
            *flag = last;
        }
        __syncthreads();
        if (*flag) {
            __threadfence();
            if (o < 128 && r < rows && n < a.N) {
                if constexpr (SILU)
                    mqs_finish<true>(a, c, n, r, mqs_sum_splits(a, c.slot, 0, c.tile, o),
                                     mqs_sum_splits(a, c.slot, 1, c.tile, o), sxs);
                else
                    mqs_finish<false>(a, c, n, r, mqs_sum_splits(a, c.slot, 0, c.tile, o), 0.0f, sxs);
            }
        }
    }
    __syncthreads();
}

template <typename XT, bool SILU>
__global__ void __launch_bounds__(GSQ_THREADS, GSQ_MAX_BLOCKS_SM) anvil_moe_stream_quant_kernel(mqs_args a)
{
    extern __shared__ __align__(16) uint8_t mqs_smem[];
    const int64_t slot_bytes = gsq_slot_bytes(0, 0);
    uint16_t *xs = reinterpret_cast<uint16_t *>(mqs_smem + GSQ_STAGES * slot_bytes);
    float *sxs = reinterpret_cast<float *>(mqs_smem + GSQ_STAGES * slot_bytes + gsq_x_bytes(a.tmax, a.K));
    float *redm = sxs + 8;
    float *red = redm + GSQ_WARPS * 8;
    int *flag = reinterpret_cast<int *>(red + GSQ_WARPS * 128);

    const int64_t items = (int64_t)a.active[a.E] * a.parts * a.tiles * a.ks;
    int64_t i0, i1;
    gsq_block_items(items, gridDim.x, blockIdx.x, &i0, &i1);
    if (i0 >= i1)
        return;
    mqs_cur pc;
    mqs_cur_set(pc, a, i0, i1);
    for (int s = 0; s < GSQ_STAGES - 1; s++) {
        if (pc.item < i1) {
            mqs_issue(a, pc, mqs_smem + s * slot_bytes);
            mqs_cur_next(pc, a, i1);
        }
        anvil_cp_async_commit();
    }
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    mqs_cur cc;
    mqs_cur_set(cc, a, i0, i1);
    int x_expert = -1, rows = 0; /* whose rows xs holds */
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t kk = 0; cc.item < i1; kk++) {
        anvil_cp_async_wait<GSQ_STAGES - 2>();
        __syncthreads();
        if (cc.e != x_expert) { /* block-uniform: code the new expert's rows */
            x_expert = cc.e;
            const int32_t r0 = a.offsets[cc.e];
            rows = a.offsets[cc.e + 1] - r0;
            rows = rows < a.tmax ? rows : a.tmax;
            const XT *xr[GSQ_MAX_ROWS];
            for (int i = 0; i < GSQ_MAX_ROWS; i++) {
                const int32_t r = r0 + (i < rows ? i : 0);
                xr[i] = SILU ? (const XT *)a.X + (int64_t)(a.order[r] / a.k) * a.K : (const XT *)a.X + (int64_t)r * a.K;
            }
            gsq_code_rows<XT>(xr, rows, a.K, ANVIL_QUANT_ACT_FP8_DYNAMIC, 0.0f, xs, sxs, redm);
        }
        const uint8_t *slot = mqs_smem + (kk % GSQ_STAGES) * slot_bytes;
        if (cc.st + w < cc.s1) {
            gw_buf b;
            b.w[0] = *reinterpret_cast<const uint4 *>(slot + gsq_w_off(w, g, t));
            b.w[1] = *reinterpret_cast<const uint4 *>(slot + gsq_w_off(w, g + 8, t));
            b.s[0] = b.s[1] = 1.0f;
            b.z[0] = b.z[1] = 8;
            const void *xg = nullptr;
            if (g < rows)
                xg = xs + (size_t)g * (a.K + GSQ_XPAD) + (cc.st + w) * gmw_step_elems(GMW_FP8) +
                     gmw_piece_elems(GMW_FP8) * t;
            gw_step<__half, GMW_FP8, false>(b, xg, acc);
        }
        if (pc.item < i1) {
            mqs_issue(a, pc, mqs_smem + ((kk + GSQ_STAGES - 1) % GSQ_STAGES) * slot_bytes);
            mqs_cur_next(pc, a, i1);
        }
        anvil_cp_async_commit();
        const mqs_cur done = cc;
        if (mqs_cur_next(cc, a, i1))
            mqs_flush<SILU>(a, done, rows, acc, red, flag, sxs);
    }
    anvil_cp_async_wait<0>();
}

static size_t mqs_smem_bytes(int64_t n_tok, int64_t K)
{
    const int tmax = (int)(n_tok < MQ_MAX_ROWS ? n_tok : MQ_MAX_ROWS);
    return (size_t)gsq_smem_bytes(tmax, K, 0, 0);
}

/* the device's multiprocessors and shared memory a multiprocessor */
static void mqs_device(int *n_sm, int *sm_smem)
{
    int dev = 0;
    *n_sm = 132;
    *sm_smem = 228 * 1024;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(n_sm, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(sm_smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) != cudaSuccess)
        cudaGetLastError();
}

extern "C" int anvil_cuda_moe_stream_quant_ok(const anvil_tensor *w, int64_t n_tok, size_t smem_optin)
{
    const anvil_quant *q = w->quant;
    if (!anvil_cuda_moe_gemv_quant_ok(w, n_tok) || w->dtype != ANVIL_DTYPE_F8_E4M3 ||
        q->act != ANVIL_QUANT_ACT_FP8_DYNAMIC || q->group != 0)
        return 0;
    const int64_t K = w->shape[1];
    return K % gmw_step_elems(GMW_FP8) == 0 && K <= INT32_MAX / 4 && w->shape[0] <= INT32_MAX / 4 &&
           ((uintptr_t)w->data & 15) == 0 && mqs_smem_bytes(n_tok, K) <= smem_optin;
}

/* the launch's schedule: splits, blocks, workspace floats and counters */
static void mqs_plan(int silu, int64_t n_tok, int32_t k, int32_t E, int64_t K, int64_t N, int *ks, int *blocks,
                     int64_t *ws_floats, int64_t *counters)
{
    int n_sm = 0, sm_smem = 0;
    mqs_device(&n_sm, &sm_smem);
    const int64_t n_pairs = n_tok * k, max_active = n_pairs < E ? n_pairs : E;
    const int64_t B = (int64_t)n_sm * gsq_blocks_sm((int64_t)mqs_smem_bytes(n_tok, K), sm_smem);
    const int64_t tiles = (N + GSQ_TILE_ROWS - 1) / GSQ_TILE_ROWS, parts = silu ? 2 : 1;
    *ks = gsq_splits(max_active * parts * tiles, K / GSQ_STEP, B);
    *blocks = (int)B;
    const int direct = gsq_direct(*ks, silu);
    *ws_floats = direct ? 0 : max_active * parts * tiles * *ks * 128;
    *counters = direct ? 0 : max_active * tiles;
}

extern "C" void anvil_cuda_moe_stream_ws(int silu, int64_t n_tok, int32_t k, int32_t E, int64_t K, int64_t N,
                                         size_t *ws_bytes, int64_t *counters)
{
    int ks = 1, blocks = 1;
    int64_t wf = 0;
    mqs_plan(silu, n_tok, k, E, K, N, &ks, &blocks, &wf, counters);
    *ws_bytes = (size_t)wf * sizeof(float);
}

template <typename XT, bool SILU> static anvil_status mqs_launch(cudaStream_t stream, const mqs_args &a, int blocks,
                                                                  size_t smem)
{
    { /* the smem limit and the largest carveout, once per device (as the dense form's gsq_set_smem) */
        static int done[16];
        int dev = 0;
        TRY(anvil_cuda_status(cudaGetDevice(&dev), "cudaGetDevice", __FILE__, __LINE__));
        if (!(dev >= 0 && dev < 16 && __atomic_load_n(&done[dev], __ATOMIC_ACQUIRE))) {
            int optin = 0;
            TRY(anvil_cuda_status(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
                                  "cudaDeviceGetAttribute", __FILE__, __LINE__));
            TRY(anvil_cuda_status(cudaFuncSetAttribute(anvil_moe_stream_quant_kernel<XT, SILU>,
                                                       cudaFuncAttributeMaxDynamicSharedMemorySize, optin),
                                  "moe streaming gemv: shared memory limit", __FILE__, __LINE__));
            TRY(anvil_cuda_status(cudaFuncSetAttribute(anvil_moe_stream_quant_kernel<XT, SILU>,
                                                       cudaFuncAttributePreferredSharedMemoryCarveout,
                                                       cudaSharedmemCarveoutMaxShared),
                                  "moe streaming gemv: shared memory carveout", __FILE__, __LINE__));
            if (dev >= 0 && dev < 16)
                __atomic_store_n(&done[dev], 1, __ATOMIC_RELEASE);
        }
    }
    anvil_moe_stream_quant_kernel<XT, SILU><<<blocks, GSQ_THREADS, smem, stream>>>(a);
    return ANVIL_CUDA_LAUNCHED("moe streaming quantized gemv kernel");
}

extern "C" anvil_status anvil_cuda_launch_moe_experts_stream(cudaStream_t stream, int silu, const void *X,
                                                             anvil_dtype x_dt, const anvil_tensor *W, int64_t n_tok,
                                                             int32_t k, int32_t E, int64_t K, int64_t N,
                                                             const int32_t *offsets, const int32_t *active,
                                                             const int32_t *order, float *out, float *ws,
                                                             int *counters, size_t smem_optin)
{
    CHECK(n_tok > 0 && k > 0 && E > 0 && K > 0 && N > 0 && N <= INT32_MAX / 4 && W != NULL && W->n_dims == 2 &&
              W->shape[1] == K && W->shape[0] == (int64_t)E * (silu ? 2 : 1) * N,
          ANVIL_ERR_INVALID_ARG, "moe streaming gemv: %lld tokens x %d, K %lld, N %lld", (long long)n_tok, k,
          (long long)K, (long long)N);
    CHECK(anvil_cuda_moe_stream_quant_ok(W, n_tok, smem_optin), ANVIL_ERR_UNSUPPORTED,
          "moe streaming gemv: a %s weight it does not take (fp8 W8A8 per channel, K a multiple of 64, at most "
          "%d tokens, shared memory)",
          anvil_dtype_name(W->dtype), MQ_MAX_ROWS);
    CHECK(silu || x_dt == ANVIL_DTYPE_F32, ANVIL_ERR_INVALID_ARG, "moe streaming gemv: down reads f32 rows");
    mqs_args a;
    memset(&a, 0, sizeof a);
    int blocks = 0;
    int64_t wf = 0, cnt = 0;
    mqs_plan(silu, n_tok, k, E, K, N, &a.ks, &blocks, &wf, &cnt);
    CHECK(cnt == 0 || (ws != NULL && counters != NULL), ANVIL_ERR_INVALID_ARG, "moe streaming gemv: no workspace");
    a.X = X;
    a.W = (const uint8_t *)W->data;
    a.scales = W->quant->scales;
    a.K = (int)K;
    a.N = (int)N;
    a.k = k;
    a.E = E;
    a.offsets = offsets;
    a.active = active;
    a.order = order;
    a.out = out;
    a.parts = silu ? 2 : 1;
    a.tiles = (int)((N + GSQ_TILE_ROWS - 1) / GSQ_TILE_ROWS);
    a.steps = (int)(K / GSQ_STEP);
    a.tmax = (int)(n_tok < MQ_MAX_ROWS ? n_tok : MQ_MAX_ROWS);
    a.ws = ws;
    a.cnt = counters;
    const size_t smem = mqs_smem_bytes(n_tok, K);
    if (silu) {
        if (x_dt == ANVIL_DTYPE_BF16)
            return mqs_launch<__nv_bfloat16, true>(stream, a, blocks, smem);
        if (x_dt == ANVIL_DTYPE_F16)
            return mqs_launch<__half, true>(stream, a, blocks, smem);
        return mqs_launch<float, true>(stream, a, blocks, smem);
    }
    return mqs_launch<float, false>(stream, a, blocks, smem);
}
