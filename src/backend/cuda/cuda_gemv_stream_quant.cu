/*
 * The streaming quantized GEMV for the few rows of a decode step (T =
 * 1..8; issue 15): the 16-bit tensor-core GEMV's arithmetic
 * (cuda_gemv_mma16_quant.cu; its step, gw_step of cuda_gemv_mma16_step.cuh,
 * is called here as it is there, on the same bytes) with
 * another way of moving the bytes, because that kernel was latency-bound
 * (session 27, ncu: 20-24% of warps active, long-scoreboard stalls, a
 * block's life one tile, so blocks ramp up and drain one by one and grids
 * of 256-384 tiles leave SMs idle at the end).
 *
 * Here (cuda_gemv_stream_map.h has the schedule and the layout, checked on
 * the CPU by tests/backend/test_cuda_stream_map.c):
 *   - persistent blocks, GSQ_MAX_BLOCKS_SM an SM at most, as many as are
 *     resident; block b takes a contiguous run of items (tile, split of K),
 *     so each block streams about the same bytes to the end of the launch;
 *   - the weights (and their scales, int4 zero points' words) move by
 *     cp.async into a GSQ_STAGES-deep ring of 8 KB stages (16 rows x 512
 *     bytes), GSQ_STAGES - 1 stages (40 KB) in flight a block, across item
 *     boundaries: the next item's bytes arrive while this one is summed;
 *   - warp w converts and multiplies step w of each stage from shared
 *     memory (int4: one LOP3 and one HSUB2 / HFMA2 for two elements; int8:
 *     PRMT; fp8: cvt.rn.f16x2.e4m3x2), mma.sync m16n8k16 with x's rows as
 *     B, f32 accumulators, the group scale applied per step (int4 groups of
 *     128, int8) or folded into the weight (int4 groups of 32 / 64) or at
 *     the end (fp8 per channel), as the mma16 GEMV does;
 *   - x's rows sit in shared memory for the whole launch: int8 / int4 as
 *     they are, fp8 W8A8 as the f16 values of their fp8 codes made by each
 *     block in its prologue (sx = max|x| / 448 or the static scale, codes
 *     fp8(x / sx) as the CPU makes them) while its first stages load;
 *   - an item's 8 warps add their partials in shared memory in a fixed
 *     order; where K is split, the partial goes to a workspace and the
 *     block that completes a tile (a counter per tile) adds its splits in
 *     the order 0..ks-1 and writes the outputs (gate/up: silu(gate) * up,
 *     each rounded to the output dtype first, as matmul + matmul +
 *     silu_mul), then sets the counter back to zero for the next launch and
 *     graph replays. So the result depends on K, N and the device only:
 *     two runs give the same bits, and q/k/v or gate/up in one launch the
 *     separate launches' bits.
 *
 * Dependent launch (docs/cuda-backend.md): the first stages of weights,
 * scales and zero points are issued before anvil_pdl_wait; x, the
 * workspace, the counters and the outputs after it.
 */
#include <string.h>

#include "backend/cuda/cuda_gemv_stream.cuh"
#include "backend/cuda/cuda_gemv_stream_quant.h"

typedef struct gsq_args {
    const uint8_t *w[GSQ_MAX_PARTS];
    const float *scales[GSQ_MAX_PARTS];
    const uint8_t *zeros[GSQ_MAX_PARTS];
    const void *bias[GSQ_MAX_PARTS];
    int bias_dt[GSQ_MAX_PARTS];
    void *out[GSQ_MAX_PARTS];
    int N[GSQ_MAX_PARTS];
    int ks[GSQ_MAX_PARTS];       /* splits of K */
    int item_end[GSQ_MAX_PARTS]; /* items of parts 0..i together */
    int cnt_base[GSQ_MAX_PARTS]; /* the part's first tile counter (silu: the gate's for both) */
    int n_parts;
    int silu;
    const void *x;
    int act; /* fp8: ANVIL_QUANT_ACT_FP8_DYNAMIC or _STATIC */
    float input_scale;
    int K, gs, G; /* G: scales a row */
    int T;        /* 1..8 */
    int steps;    /* steps a row */
    int items;
    float *ws; /* [items][128] */
    int *cnt;
} gsq_args;

/* ---------------------------------------------------------------- x's rows in shared memory */

/* x's rows into xs [T][K + GSQ_XPAD]: int as they are; fp8 as codes
 * (gsq_code_rows, sxs their scales) */
template <typename X, int S>
__device__ void gsq_x_rows(const gsq_args &a, uint16_t *xs, float *sxs, float *redm)
{
    if constexpr (S != GMW_FP8) {
        const int ld = a.K + GSQ_XPAD;
        for (int r = 0; r < a.T; r++) {
            const uint4 *src = reinterpret_cast<const uint4 *>((const X *)a.x + (int64_t)r * a.K);
            uint4 *dst = reinterpret_cast<uint4 *>(xs + (size_t)r * ld);
            for (int i = threadIdx.x; i < a.K / 8; i += blockDim.x)
                dst[i] = src[i];
        }
        __syncthreads();
    } else {
        const X *rows[GSQ_MAX_ROWS];
        for (int r = 0; r < GSQ_MAX_ROWS; r++)
            rows[r] = (const X *)a.x + (int64_t)(r < a.T ? r : 0) * a.K;
        gsq_code_rows<X>(rows, a.T, a.K, a.act, a.input_scale, xs, sxs, redm);
    }
}

/* ---------------------------------------------------------------- the schedule's cursor */

/* Where a block's stream stands: item, its part, tile and split, its steps
 * [s0, s1), and the first step of the current stage. */
typedef struct gsq_cur {
    int64_t item;
    int p, tile, sp;
    int64_t s0, s1, st;
} gsq_cur;

__device__ __forceinline__ void gsq_cur_set(gsq_cur &c, const gsq_args &a, int64_t item, int64_t end)
{
    c.item = item;
    c.p = c.tile = c.sp = 0;
    c.s0 = c.s1 = c.st = 0;
    if (item >= end)
        return;
    gsq_item(a.item_end, a.ks, a.n_parts, item, &c.p, &c.tile, &c.sp);
    gsq_split_steps(a.steps, a.ks[c.p], c.sp, &c.s0, &c.s1);
    c.st = c.s0;
}

/* the next stage; whether the one left was its item's last */
__device__ __forceinline__ bool gsq_cur_next(gsq_cur &c, const gsq_args &a, int64_t end)
{
    c.st += GSQ_STAGE_STEPS;
    if (c.st < c.s1)
        return false;
    gsq_cur_set(c, a, c.item + 1, end);
    return true;
}

/* ---------------------------------------------------------------- the ring */

/* Issues the cp.async copies of c's stage into ring slot `slot`. */
template <int S, int SPS, bool ZP>
__device__ __forceinline__ void gsq_issue(const gsq_args &a, const gsq_cur &c, uint8_t *slot)
{
    const int p = c.p;
    const int64_t rb = S == GMW_U4 ? a.K / 2 : a.K;
    const int64_t left = c.s1 - c.st;
    const int nst = left < GSQ_STAGE_STEPS ? (int)left : GSQ_STAGE_STEPS;
    const int n0 = c.tile * GSQ_TILE_ROWS;
    const uint8_t *w = a.w[p];
#pragma unroll
    for (int i = 0; i < GSQ_PIECES / GSQ_THREADS; i++) {
        int row, step, cc;
        gsq_piece((int)threadIdx.x + i * GSQ_THREADS, &row, &step, &cc);
        const int n = n0 + row;
        const bool valid = n < a.N[p] && step < nst;
        const uint8_t *src = valid ? w + (int64_t)n * rb + (c.st + step) * GSQ_STEP + 16 * cc : w;
        anvil_cp_async16(slot + gsq_w_off(step, row, cc), src, valid);
    }
    if constexpr (SPS > 0) {
        float *ss = reinterpret_cast<float *>(slot + GSQ_STAGE_W_BYTES);
        uint32_t *sz = reinterpret_cast<uint32_t *>(ss + GSQ_STAGE_STEPS * GSQ_TILE_ROWS * SPS);
        const float *sc = a.scales[p];
        const uint8_t *zr = a.zeros[p];
        const int se = gmw_step_elems(S), pe = gmw_piece_elems(S);
        for (int j = threadIdx.x; j < GSQ_STAGE_STEPS * GSQ_TILE_ROWS * SPS; j += GSQ_THREADS) {
            const int step = j / (GSQ_TILE_ROWS * SPS), row = (j / SPS) % GSQ_TILE_ROWS, q = j % SPS;
            const int n = n0 + row;
            const bool valid = n < a.N[p] && step < nst;
            const int64_t idx =
                valid ? (int64_t)n * a.G + gsq_s_col(c.st + step, q, se, pe) / a.gs : 0; /* j = gsq_s_off */
            gsq_cp_async4(ss + j, sc + idx, valid);
            if constexpr (ZP)
                gsq_cp_async4(sz + j, zr + (idx & ~(int64_t)3), valid);
        }
    }
}

/* Warp w's step of the stage in slot into acc. */
template <typename X, int S, bool FOLD, int SPS, bool ZP>
__device__ __forceinline__ void gsq_compute(const gsq_args &a, const gsq_cur &c, const uint8_t *slot,
                                            const uint16_t *xs, float (&acc)[4])
{
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    if (c.st + w >= c.s1)
        return;
    gw_buf b;
    b.w[0] = *reinterpret_cast<const uint4 *>(slot + gsq_w_off(w, g, t));
    b.w[1] = *reinterpret_cast<const uint4 *>(slot + gsq_w_off(w, g + 8, t));
    b.s[0] = b.s[1] = 1.0f;
    b.z[0] = b.z[1] = 8;
    if constexpr (SPS > 0) {
        const float *ss = reinterpret_cast<const float *>(slot + GSQ_STAGE_W_BYTES);
        const int q = SPS == 1 ? 0 : t;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int j = gsq_s_off(SPS, w, g + 8 * h, q);
            b.s[h] = ss[j];
            if constexpr (ZP) {
                const uint32_t *sz =
                    reinterpret_cast<const uint32_t *>(ss + GSQ_STAGE_STEPS * GSQ_TILE_ROWS * SPS);
                const int n = c.tile * GSQ_TILE_ROWS + g + 8 * h;
                const int64_t idx =
                    (int64_t)n * a.G + gsq_s_col(c.st + w, q, gmw_step_elems(S), gmw_piece_elems(S)) / a.gs;
                b.z[h] = (int)gsq_zp_byte(sz[j], idx);
            }
        }
    }
    const void *xg = nullptr;
    if (g < a.T)
        xg = xs + (size_t)g * (a.K + GSQ_XPAD) + (c.st + w) * gmw_step_elems(S) + gmw_piece_elems(S) * t;
    gw_step<X, S, FOLD>(b, xg, acc);
}

/* ---------------------------------------------------------------- an item's end */

/* The output (part op, row n, x row r) from its f32 sum(s). */
template <typename X, int S, bool SILU>
__device__ __forceinline__ void gsq_finish(const gsq_args &a, int op, int n, int r, float v, float v2,
                                           const float *sxs)
{
    if constexpr (S == GMW_FP8) {
        const float sxr = sxs[r];
        v = __fmul_rn(__fmul_rn(v, sxr), __ldg(a.scales[op] + n));
        if (SILU)
            v2 = __fmul_rn(__fmul_rn(v2, sxr), __ldg(a.scales[1] + n));
    }
    const float b = a.bias[op] != nullptr ? anvil_load_any(a.bias[op], a.bias_dt[op], n) : 0.0f;
    X *out = (X *)a.out[op];
    if constexpr (!SILU) {
        out[(int64_t)r * a.N[op] + n] = anvil_from_f32<X>(v + b);
    } else {
        /* as matmul + matmul + silu_mul: each product rounded to X first */
        const float b2 = a.bias[1] != nullptr ? anvil_load_any(a.bias[1], a.bias_dt[1], n) : 0.0f;
        const float gv = anvil_to_f32(anvil_from_f32<X>(v + b));
        const float uv = anvil_to_f32(anvil_from_f32<X>(v2 + b2));
        out[(int64_t)r * a.N[op] + n] = anvil_from_f32<X>(gv / (1.0f + expf(-gv)) * uv);
    }
}

/* The sum of a tile's splits of part p at o (= row i * 8 + x row r), in
 * split order (the first split's value itself, not 0 + it: -0 stays -0). */
__device__ __forceinline__ float gsq_sum_splits(const gsq_args &a, int p, int tile, int o)
{
    const float *ws = a.ws + gsq_item_of(a.item_end, a.ks, p, tile, 0) * 128 + o;
    float v = __ldcg(ws);
    for (int sp = 1; sp < a.ks[p]; sp++)
        v += __ldcg(ws + (int64_t)sp * 128);
    return v;
}

/* The 8 warps' accumulators of item c summed in warp order; then the
 * outputs, or the partial to the workspace and, for the block that
 * completes the tile, the outputs from every split. Every thread calls it
 * (barriers inside); acc is zeroed for the next item. */
template <typename X, int S, bool SILU>
__device__ void gsq_flush(const gsq_args &a, const gsq_cur &c, float (&acc)[4], float *red, int *flag,
                          const float *sxs)
{
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float *rw = red + w * 128; /* D's layout: [16 rows][8 x rows] */
    rw[g * 8 + 2 * t] = acc[0];
    rw[g * 8 + 2 * t + 1] = acc[1];
    rw[(g + 8) * 8 + 2 * t] = acc[2];
    rw[(g + 8) * 8 + 2 * t + 1] = acc[3];
#pragma unroll
    for (int i = 0; i < 4; i++)
        acc[i] = 0.0f;
    __syncthreads();
    const int o = threadIdx.x, i = o / 8, r = o % 8;
    const int n = c.tile * GSQ_TILE_ROWS + i;
    const bool direct = gsq_direct(a.ks[c.p], SILU);
    if (o < 128) {
        float v = red[o];
#pragma unroll
        for (int k = 1; k < GSQ_WARPS; k++)
            v += red[k * 128 + o];
        if (direct) {
            if (r < a.T && n < a.N[c.p])
                gsq_finish<X, S, false>(a, c.p, n, r, v, 0.0f, sxs);
        } else {
            __stcg(a.ws + c.item * 128 + o, v);
            __threadfence(); /* this partial, visible before the count */
        }
    }
    if (!direct) {
        __syncthreads();
        if (threadIdx.x == 0) {
            int *ctr = a.cnt + a.cnt_base[SILU ? 0 : c.p] + c.tile;
            const int need = SILU ? 2 * a.ks[c.p] : a.ks[c.p];
            const int last = atomicAdd(ctr, 1) == need - 1;
            if (last)
                atomicExch(ctr, 0); /* every arrival is in: zero for the next launch */
            *flag = last;
        }
        __syncthreads();
        if (*flag) {
            __threadfence(); /* the other splits' partials after their counts */
            if (o < 128 && r < a.T && n < a.N[SILU ? 0 : c.p]) {
                if constexpr (SILU)
                    gsq_finish<X, S, true>(a, 0, n, r, gsq_sum_splits(a, 0, c.tile, o),
                                           gsq_sum_splits(a, 1, c.tile, o), sxs);
                else
                    gsq_finish<X, S, false>(a, c.p, n, r, gsq_sum_splits(a, c.p, c.tile, o), 0.0f, sxs);
            }
        }
    }
    __syncthreads(); /* red and flag free for the next item */
}

/* ---------------------------------------------------------------- the kernel */

template <typename X, int S, bool FOLD, bool ZP, bool SILU>
__global__ void __launch_bounds__(GSQ_THREADS, GSQ_MAX_BLOCKS_SM) anvil_gemv_stream_quant_kernel(gsq_args a)
{
    constexpr int SPS = S == GMW_FP8 ? 0 : FOLD ? GSQ_SPS : 1;
    extern __shared__ __align__(16) uint8_t gsq_smem[];
    const int64_t slot_bytes = gsq_slot_bytes(SPS, ZP);
    uint16_t *xs = reinterpret_cast<uint16_t *>(gsq_smem + GSQ_STAGES * slot_bytes);
    float *sxs = reinterpret_cast<float *>(gsq_smem + GSQ_STAGES * slot_bytes + gsq_x_bytes(a.T, a.K));
    float *redm = sxs + 8;
    float *red = redm + GSQ_WARPS * 8;
    int *flag = reinterpret_cast<int *>(red + GSQ_WARPS * 128);

    int64_t i0, i1;
    gsq_block_items(a.items, gridDim.x, blockIdx.x, &i0, &i1);

    /* the ring's first GSQ_STAGES - 1 stages: weights, before the wait */
    gsq_cur pc;
    gsq_cur_set(pc, a, i0, i1);
    for (int s = 0; s < GSQ_STAGES - 1; s++) {
        if (pc.item < i1) {
            gsq_issue<S, SPS, ZP>(a, pc, gsq_smem + s * slot_bytes);
            gsq_cur_next(pc, a, i1);
        }
        anvil_cp_async_commit();
    }

    anvil_pdl_wait();
    anvil_pdl_launch();
    if (i0 >= i1) {
        anvil_cp_async_wait<0>();
        return;
    }
    gsq_x_rows<X, S>(a, xs, sxs, redm);

    gsq_cur cc;
    gsq_cur_set(cc, a, i0, i1);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t k = 0; cc.item < i1; k++) {
        anvil_cp_async_wait<GSQ_STAGES - 2>(); /* stage k landed (this thread's copies) */
        __syncthreads();                       /* everyone's; and slot k - 1 read by all */
        gsq_compute<X, S, FOLD, SPS, ZP>(a, cc, gsq_smem + (k % GSQ_STAGES) * slot_bytes, xs, acc);
        if (pc.item < i1) {
            gsq_issue<S, SPS, ZP>(a, pc, gsq_smem + ((k + GSQ_STAGES - 1) % GSQ_STAGES) * slot_bytes);
            gsq_cur_next(pc, a, i1);
        }
        anvil_cp_async_commit();
        const gsq_cur done = cc;
        if (gsq_cur_next(cc, a, i1))
            gsq_flush<X, S, SILU>(a, done, acc, red, flag, sxs);
    }
    anvil_cp_async_wait<0>();
}

/* ---------------------------------------------------------------- launcher */

static int gsq_scheme(anvil_dtype dt)
{
    return dt == ANVIL_DTYPE_I8 ? GMW_I8 : dt == ANVIL_DTYPE_U4 ? GMW_U4 : GMW_FP8;
}

/* int4 groups of whole steps (128 columns) scale after the mma; smaller ones fold (as the mma16 GEMV) */
static int gsq_fold(const anvil_cuda_qweight *w)
{
    return w->dt == ANVIL_DTYPE_U4 && w->gs % 128 != 0;
}

static int gsq_zp(const anvil_cuda_qweight *w)
{
    return w->dt == ANVIL_DTYPE_U4 && w->zeros != NULL;
}

static size_t gsq_smem_of(const anvil_cuda_qweight *w, int64_t T)
{
    const int scheme = gsq_scheme(w->dt);
    return (size_t)gsq_smem_bytes((int)T, w->K, gsq_sps(scheme == GMW_FP8, gsq_fold(w)), gsq_zp(w));
}

/* the device's multiprocessors, shared memory a multiprocessor and opt-in a block */
static void gsq_device(int *n_sm, int *sm_smem, int *optin)
{
    int dev = 0;
    *n_sm = 132;
    *sm_smem = 228 * 1024;
    *optin = 48 * 1024;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(n_sm, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(sm_smem, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
        cudaGetLastError();
}

extern "C" int anvil_cuda_gemv_stream_quant_ok(const anvil_cuda_qweight *w, int act, int sm,
                                               const int32_t *perm, const void *x, anvil_dtype x_dt,
                                               int64_t T, size_t smem_optin)
{
    if (T < 1 || T > GSQ_MAX_ROWS || (x_dt != ANVIL_DTYPE_BF16 && x_dt != ANVIL_DTYPE_F16) || perm != NULL ||
        sm < 80 || w->K <= 0 || w->gs <= 0 || w->K % w->gs != 0 || w->scales == NULL)
        return 0;
    if (w->dt == ANVIL_DTYPE_F8_E4M3) {
        if (act == ANVIL_QUANT_ACT_NONE || w->gs != w->K)
            return 0;
    } else if (w->dt == ANVIL_DTYPE_I8) {
        if (act != ANVIL_QUANT_ACT_NONE || w->gs % 64 != 0)
            return 0;
    } else if (w->dt == ANVIL_DTYPE_U4) {
        if (act != ANVIL_QUANT_ACT_NONE || w->gs % 32 != 0)
            return 0;
        if (w->zeros != NULL && !gsq_zp_ok((uintptr_t)w->zeros, w->K / w->gs))
            return 0;
    } else {
        return 0;
    }
    const int scheme = gsq_scheme(w->dt);
    return w->K % gmw_step_elems(scheme) == 0 && w->K <= INT32_MAX / 4 && w->N > 0 && w->N <= INT32_MAX / 4 &&
           anvil_aligned16(w->w) && anvil_aligned16(x) && ((uintptr_t)w->scales & 3) == 0 &&
           gsq_smem_of(w, T) <= smem_optin;
}

/* The launch's arguments (but x, outputs, workspace) and its grid from the
 * call; *counters: the tile counters it needs. */
static anvil_status gsq_plan(const anvil_cuda_gemv_mma_call *c, int n_sm, int sm_smem, gsq_args *a,
                             int *blocks, int64_t *counters)
{
    const int n_parts = c->n_parts;
    CHECK(n_parts >= 1 && n_parts <= GSQ_MAX_PARTS && (!c->silu || n_parts == 2), ANVIL_ERR_INVALID_ARG,
          "gemv (quantized, streaming): %d parts (1..%d; 2 with silu)", n_parts, GSQ_MAX_PARTS);
    CHECK(c->T >= 1 && c->T <= GSQ_MAX_ROWS, ANVIL_ERR_INVALID_ARG,
          "gemv (quantized, streaming): %lld rows (1..%d)", (long long)c->T, GSQ_MAX_ROWS);
    CHECK(!c->silu || c->w[0].N == c->w[1].N, ANVIL_ERR_INVALID_ARG,
          "gemv silu (quantized, streaming): gate %lld and up %lld rows", (long long)c->w[0].N,
          (long long)c->w[1].N);
    memset(a, 0, sizeof *a);
    const size_t smem = gsq_smem_of(&c->w[0], c->T);
    const int64_t B = (int64_t)n_sm * gsq_blocks_sm((int64_t)smem, sm_smem);
    const int scheme = gsq_scheme(c->w[0].dt);
    const int64_t rb = scheme == GMW_U4 ? c->w[0].K / 2 : c->w[0].K;
    const int64_t steps = rb / GSQ_STEP;
    int64_t items = 0, cnt = 0;
    for (int i = 0; i < n_parts; i++) {
        const anvil_cuda_qweight *w = &c->w[i];
        CHECK(w->dt == c->w[0].dt && w->K == c->w[0].K && w->gs == c->w[0].gs &&
                  (w->zeros != NULL) == (c->w[0].zeros != NULL),
              ANVIL_ERR_INVALID_ARG, "gemv (quantized, streaming): parts of different layouts");
        const int64_t tiles = (w->N + GSQ_TILE_ROWS - 1) / GSQ_TILE_ROWS;
        a->ks[i] = gsq_splits(tiles, steps, B);
        items += tiles * a->ks[i];
        CHECK(items <= INT32_MAX / 2, ANVIL_ERR_UNSUPPORTED, "gemv (quantized, streaming): %lld items",
              (long long)items);
        a->item_end[i] = (int)items;
        a->cnt_base[i] = (int)cnt;
        if (!gsq_direct(a->ks[i], c->silu) && !(c->silu && i == 1)) /* silu: the gate's counters count both */
            cnt += tiles;
        a->w[i] = (const uint8_t *)w->w;
        a->scales[i] = w->scales;
        a->zeros[i] = w->dt == ANVIL_DTYPE_U4 ? w->zeros : nullptr;
        a->bias[i] = c->bias[i];
        a->bias_dt[i] = c->bias[i] != NULL ? (int)c->bias_dt[i] : 0;
        a->out[i] = c->out[i];
        a->N[i] = (int)w->N;
    }
    if (c->silu)
        a->cnt_base[1] = a->cnt_base[0];
    a->n_parts = n_parts;
    a->silu = c->silu;
    a->x = c->x;
    a->act = c->act;
    a->input_scale = c->input_scale;
    a->K = (int)c->w[0].K;
    a->gs = (int)c->w[0].gs;
    a->G = (int)(c->w[0].K / c->w[0].gs);
    a->T = (int)c->T;
    a->steps = (int)steps;
    a->items = (int)items;
    *blocks = (int)(B < items ? B : items);
    *counters = cnt;
    return ANVIL_OK;
}

extern "C" size_t anvil_cuda_gemv_stream_ws_bytes(const anvil_cuda_gemv_mma_call *c)
{
    int n_sm = 0, sm_smem = 0, optin = 0;
    gsq_device(&n_sm, &sm_smem, &optin);
    gsq_args a;
    int blocks = 0;
    int64_t cnt = 0;
    if (gsq_plan(c, n_sm, sm_smem, &a, &blocks, &cnt) != ANVIL_OK) {
        anvil_clear_error();
        return 0;
    }
    return cnt > 0 ? (size_t)a.items * 128 * sizeof(float) : 0;
}

extern "C" int64_t anvil_cuda_gemv_stream_counters(const anvil_cuda_gemv_mma_call *c)
{
    int n_sm = 0, sm_smem = 0, optin = 0;
    gsq_device(&n_sm, &sm_smem, &optin);
    gsq_args a;
    int blocks = 0;
    int64_t cnt = 0;
    if (gsq_plan(c, n_sm, sm_smem, &a, &blocks, &cnt) != ANVIL_OK) {
        anvil_clear_error();
        return 0;
    }
    return cnt;
}

/* raises the kernel's dynamic shared memory limit once per device, and asks
 * for the largest shared-memory carveout: the grid is sized for
 * gsq_blocks_sm blocks an SM (two of ~87 KB at one row), which a carveout
 * the driver picked for one block would halve into a second wave */
template <typename X, int S, bool FOLD, bool ZP, bool SILU> static anvil_status gsq_set_smem(int optin)
{
    static int done[16];
    int dev = 0;
    TRY(anvil_cuda_status(cudaGetDevice(&dev), "cudaGetDevice", __FILE__, __LINE__));
    if (dev >= 0 && dev < 16 && __atomic_load_n(&done[dev], __ATOMIC_ACQUIRE))
        return ANVIL_OK;
    TRY(anvil_cuda_status(cudaFuncSetAttribute(anvil_gemv_stream_quant_kernel<X, S, FOLD, ZP, SILU>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, optin),
                          "gemv (quantized, streaming): shared memory limit", __FILE__, __LINE__));
    TRY(anvil_cuda_status(cudaFuncSetAttribute(anvil_gemv_stream_quant_kernel<X, S, FOLD, ZP, SILU>,
                                               cudaFuncAttributePreferredSharedMemoryCarveout,
                                               cudaSharedmemCarveoutMaxShared),
                          "gemv (quantized, streaming): shared memory carveout", __FILE__, __LINE__));
    if (dev >= 0 && dev < 16)
        __atomic_store_n(&done[dev], 1, __ATOMIC_RELEASE);
    return ANVIL_OK;
}

template <typename X, int S, bool FOLD, bool ZP, bool SILU>
static anvil_status gsq_launch(const anvil_cuda_gemv_mma_call *c, const gsq_args &a, int blocks, size_t smem,
                               int optin)
{
    TRY((gsq_set_smem<X, S, FOLD, ZP, SILU>(optin)));
    anvil_launch(anvil_gemv_stream_quant_kernel<X, S, FOLD, ZP, SILU>, dim3((unsigned)blocks), GSQ_THREADS,
                 smem, c->stream, c->pdl, a);
    return ANVIL_CUDA_LAUNCHED("gemv (quantized, streaming) kernel");
}

template <typename X, int S, bool FOLD, bool ZP>
static anvil_status gsq_launch_silu(const anvil_cuda_gemv_mma_call *c, const gsq_args &a, int blocks,
                                    size_t smem, int optin)
{
    return c->silu ? gsq_launch<X, S, FOLD, ZP, true>(c, a, blocks, smem, optin)
                   : gsq_launch<X, S, FOLD, ZP, false>(c, a, blocks, smem, optin);
}

template <typename X>
static anvil_status gsq_launch_scheme(const anvil_cuda_gemv_mma_call *c, const gsq_args &a, int blocks,
                                      size_t smem, int optin)
{
    const int scheme = gsq_scheme(c->w[0].dt);
    if (scheme == GMW_I8)
        return gsq_launch_silu<X, GMW_I8, false, false>(c, a, blocks, smem, optin);
    if (scheme == GMW_FP8)
        return gsq_launch_silu<X, GMW_FP8, false, false>(c, a, blocks, smem, optin);
    const int fold = gsq_fold(&c->w[0]), zp = gsq_zp(&c->w[0]);
    if (fold)
        return zp ? gsq_launch_silu<X, GMW_U4, true, true>(c, a, blocks, smem, optin)
                  : gsq_launch_silu<X, GMW_U4, true, false>(c, a, blocks, smem, optin);
    return zp ? gsq_launch_silu<X, GMW_U4, false, true>(c, a, blocks, smem, optin)
              : gsq_launch_silu<X, GMW_U4, false, false>(c, a, blocks, smem, optin);
}

extern "C" anvil_status anvil_cuda_launch_gemv_stream_quant(const anvil_cuda_gemv_mma_call *c,
                                                            const anvil_cuda_gemv_stream_ws *ws)
{
    int n_sm = 0, sm_smem = 0, optin = 0;
    gsq_device(&n_sm, &sm_smem, &optin);
    for (int i = 0; i < c->n_parts && i < GSQ_MAX_PARTS; i++) {
        const anvil_cuda_qweight *w = &c->w[i];
        CHECK(
            anvil_cuda_gemv_stream_quant_ok(w, c->act, c->sm, c->perm, c->x, c->x_dt, c->T, (size_t)optin),
            ANVIL_ERR_UNSUPPORTED,
            "gemv (quantized, streaming): %s [%lld, %lld], group %lld, %lld rows of %s (K a multiple of 128 "
            "int4 / 64 int8 and fp8 columns, no perm, aligned, shared memory)",
            anvil_dtype_name(w->dt), (long long)w->N, (long long)w->K, (long long)w->gs, (long long)c->T,
            anvil_dtype_name(c->x_dt));
        CHECK(c->bias[i] == NULL || anvil_cuda_is_float_dtype(c->bias_dt[i]), ANVIL_ERR_UNSUPPORTED,
              "gemv (quantized, streaming): bias dtype %s", anvil_dtype_name(c->bias_dt[i]));
    }
    gsq_args a;
    int blocks = 0;
    int64_t cnt = 0;
    TRY(gsq_plan(c, n_sm, sm_smem, &a, &blocks, &cnt));
    if (cnt > 0)
        CHECK(ws != NULL && ws->partials != NULL && ws->counters != NULL, ANVIL_ERR_INVALID_ARG,
              "gemv (quantized, streaming): no workspace for %lld split tiles", (long long)cnt);
    a.ws = cnt > 0 ? ws->partials : nullptr;
    a.cnt = cnt > 0 ? ws->counters : nullptr;
    const size_t smem = gsq_smem_of(&c->w[0], c->T);
    if (c->x_dt == ANVIL_DTYPE_BF16)
        return gsq_launch_scheme<__nv_bfloat16>(c, a, blocks, smem, optin);
    return gsq_launch_scheme<__half>(c, a, blocks, smem, optin);
}
