/*
 * The quantized GEMM on tensor cores (issue 15; Marlin's role): out[M, N] =
 * x[M, K] W^T for more rows than the GEMVs take, W int4 / int8 in the
 * canonical form's stored bytes (docs/quantization.md), x bf16 / f16.
 * Without it those rows dequantize the whole weight into 16 bits and run
 * cuBLASLt every call (cuda_matmul_quant.c, path 3).
 *
 * Arithmetic (weight-only, the format's definition, as the GEMVs and path
 * 3 compute it): v - z exact in 16 bits (the GEMV's magic numbers,
 * cuda_gemv_mma16_map.h), x as it is; the mma's products x (v - z) are
 * exact (at most 11 + 8 significant bits) and summed in f32 (the tensor
 * cores' accumulation) over one scale segment (cuda_gemm_quant_map.h: a
 * run of 32-128 int4 / 16-64 int8 columns inside one group), then
 *     acc = fmaf(segment sum, s, acc)        (s the group's f32 scale)
 * so the scale is never rounded to 16 bits and (v - z) s never formed;
 * per channel the segment is a whole step (128 / 64 columns). Then out =
 * round(acc (+ bias)) to out's dtype, once; with K split across blocks
 * the splits' f32 partials are added in a fixed order first. Against the
 * exact sum of x W, W = (v - z) s: the f32 sums' error (about K/2^23 of
 * sum |x W| in the worst case) and out's rounding (2^-9 bf16, 2^-12 f16 of
 * |out|); path 3 adds W's rounding to 16 bits (2^-9 of each |W| in bf16).
 *
 * Work: block (x, y, z) = tokens [TM x, + TM) times weight rows [128 y, +
 * 128) times K split z; token tiles are the fastest index, so the blocks
 * that read the same weight rows run side by side and share them through
 * L2. 8 warps (gqm_warps_n: 8 x 1 for TM 16, 4 x 2 otherwise); a warp owns
 * MW m16 tiles of weight rows times NW n8 tiles of tokens. Per K step (64
 * bytes of every weight row), a stage of the shared-memory ring holds the
 * block's 128 weight rows as stored, TM rows of x, and the step's scales and
 * zero points (f32); cp.async 16-byte copies keep STAGES - 1 steps in
 * flight. Scales and zero points are loaded one iteration ahead into
 * registers and stored into their stage the next iteration (no cp.async for
 * 1-byte zero points), still STAGES - 2 steps before use. Per segment a
 * lane converts its words of rows g and g + 8 of each m16 tile (int4: one
 * LOP3 and one HSUB2 / HFMA2 a pair of elements; int8: PRMT + HSUB2 (f16)
 * or the f32 bit trick (bf16)), then for each n8 token tile reads x's
 * matching columns (one 16-byte / 8-byte shared load), permutes them into B
 * fragments (int4: PRMT), and runs the segment's mmas into a zeroed d,
 * added to the accumulator times s. The epilogue stages the f32 tile in
 * shared memory and writes whole rows.
 *
 * Tiles: TM 16 (M <= 16), 64 (M <= 64), 128; K split so that a small grid
 * still fills the GPU (anvil_cuda_gemm_quant_splits): the choice depends on
 * M, N, K and the SM count only (the same bits every run on a GPU).
 */
#include <string.h>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_gemm_quant.h"
#include "backend/cuda/cuda_gemm_quant_map.h"
#include "backend/cuda/cuda_mma.cuh"

typedef struct gq_args {
    const void *x;          /* [M, K] */
    const uint8_t *w;       /* [N, row_bytes] */
    const float *scales;    /* [N, G] */
    const uint8_t *zeros;   /* int4: [N, G] or NULL (8) */
    const void *bias;       /* NULL or [N] */
    int bias_dt;
    void *out;              /* [M, N] */
    int out_dt;
    float *part;            /* splits > 1: [splits][M][N] */
    int64_t M, N, K, gs, G, row_bytes;
    int segs_per_group;     /* scale segments a group (gqm_segs_per_group) */
    int n_steps;            /* K steps */
    int split_steps;        /* steps a split */
} gq_args;

/* ---------------------------------------------------------------- 16-bit types */

template <typename X> struct gq_h;
template <> struct gq_h<__half> {
    typedef __half2 h2;
    static constexpr int bf16 = 0;
};
template <> struct gq_h<__nv_bfloat16> {
    typedef __nv_bfloat162 h2;
    static constexpr int bf16 = 1;
};

template <typename H2> __device__ __forceinline__ H2 gq_as_h2(uint32_t u)
{
    H2 h;
    memcpy(&h, &u, 4);
    return h;
}
template <typename H2> __device__ __forceinline__ uint32_t gq_as_u32(H2 h)
{
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}
__device__ __forceinline__ __half2 gq_splat(float v, __half2 *) { return __float2half2_rn(v); }
__device__ __forceinline__ __nv_bfloat162 gq_splat(float v, __nv_bfloat162 *) { return __float2bfloat162_rn(v); }

/* out's element i as out_dt (F32, BF16, F16) */
__device__ __forceinline__ void gq_store(void *out, int dt, int64_t i, float v)
{
    if (dt == ANVIL_DTYPE_F32)
        ((float *)out)[i] = v;
    else if (dt == ANVIL_DTYPE_BF16)
        ((__nv_bfloat16 *)out)[i] = __float2bfloat16_rn(v);
    else
        ((__half *)out)[i] = __float2half_rn(v);
}

/* ---------------------------------------------------------------- conversion */

/* Lane word wd (8 int4 / 4 int8 codes of one weight row) as the A-operand
 * pairs: int4 p[0..3] = v - z of (e0, e4), (e1, e5), (e2, e6), (e3, e7);
 * int8 p[0..1] = v of (e0, e1), (e2, e3). Exact (test_cuda_mma16_map). */
template <typename X, int S>
__device__ __forceinline__ void gq_convert(uint32_t wd, typename gq_h<X>::h2 zlo, typename gq_h<X>::h2 zhi,
                                           uint32_t (&p)[4])
{
    typedef typename gq_h<X>::h2 H2;
    constexpr int bf16 = gq_h<X>::bf16;
    if constexpr (S == GMW_U4) {
        uint32_t q[4];
        gmw_u4_pairs(wd, bf16, q);
        const H2 sixteenth = gq_splat(0.0625f, (H2 *)nullptr);
#pragma unroll
        for (int i = 0; i < 4; i++)
            p[i] = gq_as_u32(gmw_u4_scaled(i, bf16) ? __hfma2(gq_as_h2<H2>(q[i]), sixteenth, zhi)
                                                    : __hsub2(gq_as_h2<H2>(q[i]), zlo));
    } else if constexpr (bf16) {
        (void)zlo;
        (void)zhi;
        float f[4];
#pragma unroll
        for (int i = 0; i < 4; i++)
            f[i] = __uint_as_float(gmw_i8_f32bits(wd, i)) - 8388736.0f; /* 2^23 + 128 */
        p[0] = anvil_pack2<X>(f[0], f[1]);
        p[1] = anvil_pack2<X>(f[2], f[3]);
        p[2] = p[3] = 0;
    } else {
        (void)zlo;
        (void)zhi;
        uint32_t q[2];
        gmw_i8_pairs_f16(wd, q);
        const H2 off = gq_splat(1152.0f, (H2 *)nullptr); /* 1024 + 128 */
        p[0] = gq_as_u32(__hsub2(gq_as_h2<H2>(q[0]), off));
        p[1] = gq_as_u32(__hsub2(gq_as_h2<H2>(q[1]), off));
        p[2] = p[3] = 0;
    }
}

/* ---------------------------------------------------------------- the kernel */

template <int TM> struct gq_occupancy {
    static constexpr int min_blocks = TM <= 16 ? 2 : 1; /* registers (ptxas): <= 117 at TM 16, 139-240 above */
};

template <typename X, int S, int TM, int WPS>
__global__ void __launch_bounds__(GQM_THREADS, gq_occupancy<TM>::min_blocks) anvil_gemm_quant_kernel(const gq_args a)
{
    typedef typename gq_h<X>::h2 H2;
    constexpr int STAGES = gqm_stages(TM);
    constexpr int MW = gqm_mw(TM), NW = gqm_nw(TM);
    constexpr int NSEG = gqm_nseg(WPS);
    constexpr int WB = gqm_stage_w_bytes(), XB = gqm_stage_x_bytes(S, TM);
    constexpr int STAGE = gqm_stage_bytes(S, TM, WPS);
    constexpr int XCH = gqm_x_chunks(S), SE = gqm_step_elems(S);
    constexpr int W_PER = GQM_BN * 4 / GQM_THREADS;                    /* weight chunks a thread a step */
    constexpr int X_PER = (TM * XCH + GQM_THREADS - 1) / GQM_THREADS;   /* x chunks */
    constexpr int SZ_N = GQM_BN * NSEG;                                 /* scales (and zero points) a stage */
    constexpr int SZ_PER = (SZ_N + GQM_THREADS - 1) / GQM_THREADS;
    static_assert(GQM_BN * 4 % GQM_THREADS == 0, "weight chunks must tile the threads");
    static_assert(GQM_THREADS % (4 * 8) == 0 && GQM_THREADS % (gqm_x_chunks(S) * 4) == 0,
                  "a pass of copies keeps the rows' swizzle bits");
    static_assert(STAGES >= 3, "the scales' ring store needs a stage between store and use");
    static_assert(STAGE % 16 == 0 && WB % 16 == 0 && XB % 16 == 0, "stages of whole chunks");

    extern __shared__ uint4 gq_smem4[];
    uint8_t *const smem = reinterpret_cast<uint8_t *>(gq_smem4);

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int64_t m0 = (int64_t)blockIdx.x * TM, n0 = (int64_t)blockIdx.y * GQM_BN;
    const int st0 = (int)blockIdx.z * a.split_steps;
    const int n_steps = min(a.n_steps - st0, a.split_steps);
    const int wr0 = gqm_warp_row0(TM, warp), wt0 = gqm_warp_tok0(TM, warp);
    const X *const x = (const X *)a.x;

    /* each thread copies the same chunks of every step (cuda_gemm_quant_map.h,
     * "The copies"): chunk i of a pass is chunk 0 plus i passes of rows, in
     * global and in shared memory (so no per-chunk pointers held) */
    constexpr int WRP = gqm_w_rows_per_pass(), XRP = gqm_x_rows_per_pass(S);
    constexpr int XROW = gqm_x_row_bytes(S);
    const int w_row0 = tid >> 2, w_part = tid & 3, x_row0 = tid / XCH, x_part = tid % XCH;
    const int w_dst0 = gqm_w_chunk_off(w_row0, w_part), x_dst0 = WB + gqm_x_chunk_off(S, x_row0, x_part);
    /* local step s into stage stg; rows past M or N zero-filled */
    auto issue = [&](int s, int stg) {
        uint8_t *base = smem + stg * STAGE;
        const int64_t st = st0 + s;
#pragma unroll
        for (int i = 0; i < W_PER; i++) {
            const int64_t n = n0 + w_row0 + i * WRP;
            const bool ok = n < a.N;
            anvil_cp_async16(base + w_dst0 + i * WRP * GQM_STEP_BYTES,
                             ok ? a.w + n * a.row_bytes + st * GQM_STEP_BYTES + 16 * w_part : a.w, ok);
        }
#pragma unroll
        for (int i = 0; i < X_PER; i++) {
            if (x_row0 + i * XRP >= TM)
                continue;
            const int64_t m = m0 + x_row0 + i * XRP;
            const bool ok = m < a.M;
            anvil_cp_async16(base + x_dst0 + i * XRP * XROW, ok ? x + m * a.K + st * SE + 8 * x_part : x, ok);
        }
    };
    /* the scales and zero points of local step s (0 and 8 past the rows or the steps) */
    float sz_s[SZ_PER], sz_z[SZ_PER];
    auto sz_load = [&](int s) {
#pragma unroll
        for (int i = 0; i < SZ_PER; i++) {
            const int e = tid + i * GQM_THREADS, row = e / NSEG, sg = e % NSEG;
            float sv = 0.0f, zv = 8.0f;
            if (e < SZ_N && s < n_steps && n0 + row < a.N) {
                const int grp = (st0 + s) * NSEG + sg; /* gqm_seg_group in 32 bits (K / 16 segments fit) */
                const int64_t at = (n0 + row) * a.G + (unsigned)grp / (unsigned)a.segs_per_group;
                sv = __ldg(a.scales + at);
                if (S == GMW_U4 && a.zeros != nullptr)
                    zv = (float)__ldg(a.zeros + at);
            }
            sz_s[i] = sv;
            sz_z[i] = zv;
        }
    };
    auto sz_store = [&](int stg) {
        float *ss = reinterpret_cast<float *>(smem + stg * STAGE + WB + XB);
#pragma unroll
        for (int i = 0; i < SZ_PER; i++) {
            const int e = tid + i * GQM_THREADS;
            if (e < SZ_N) {
                ss[e] = sz_s[i];
                ss[SZ_N + e] = sz_z[i];
            }
        }
    };

    float acc[MW][NW][4];
#pragma unroll
    for (int mt = 0; mt < MW; mt++)
#pragma unroll
        for (int nt = 0; nt < NW; nt++)
            acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;

    /* the first STAGES - 1 steps on their way (empty groups past the end
     * keep the group count uniform for the waits); the scales of steps
     * 0..STAGES - 3 stored now, STAGES - 2's pending */
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < n_steps)
            issue(s, s);
        anvil_cp_async_commit();
    }
#pragma unroll
    for (int s = 0; s < STAGES - 2; s++) {
        sz_load(s);
        sz_store(s);
    }
    sz_load(STAGES - 2);

    const H2 zero2 = gq_splat(0.0f, (H2 *)nullptr);
    for (int s = 0; s < n_steps; s++) {
        anvil_cp_async_wait<STAGES - 2>(); /* this thread's chunks of step s have landed */
        __syncthreads();                   /* everyone's; every warp is done with step s - 1 */
        sz_store((s + STAGES - 2) % STAGES); /* read at step s + STAGES - 2, after a later barrier */
        sz_load(s + STAGES - 1);
        {
            const int nxt = s + STAGES - 1;
            if (nxt < n_steps)
                issue(nxt, nxt % STAGES); /* the stage step s - 1 used */
            anvil_cp_async_commit();
        }
        const uint8_t *ws = smem + (s % STAGES) * STAGE;
        const uint8_t *xs = ws + WB;
        const float *ss = reinterpret_cast<const float *>(xs + XB), *zs = ss + SZ_N;
        /* 128-token tiles: one segment at a time (unrolled, the compiler hoists
         * every segment's loads and conversions and spills at 255 registers) */
#pragma unroll(TM >= 128 ? 1 : NSEG)
        for (int sg = 0; sg < NSEG; sg++) {
            /* the segment's words of the lane's rows, converted */
            uint32_t v[MW][2][WPS][4];
            float sc[MW][2];
#pragma unroll
            for (int mt = 0; mt < MW; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int r = wr0 + mt * 16 + g + 8 * h;
                    sc[mt][h] = ss[r * NSEG + sg];
                    H2 zlo = zero2, zhi = zero2;
                    if constexpr (S == GMW_U4) {
                        const float mv = gmw_u4_magic_value(gq_h<X>::bf16), z = zs[r * NSEG + sg];
                        zlo = gq_splat(mv + z, (H2 *)nullptr);             /* M + z */
                        zhi = gq_splat(-(mv / 16.0f + z), (H2 *)nullptr); /* -(M / 16 + z) */
                    }
#pragma unroll
                    for (int jj = 0; jj < WPS; jj++) {
                        const uint32_t wd =
                            *reinterpret_cast<const uint32_t *>(ws + gqm_w_word_off(r, sg * WPS + jj, t));
                        gq_convert<X, S>(wd, zlo, zhi, v[mt][h][jj]);
                    }
                }
#pragma unroll
            for (int nt = 0; nt < NW; nt++) {
                const int xr = wt0 + nt * 8 + g; /* the lane's token row (B's column g) */
                float d[MW][4];
#pragma unroll
                for (int mt = 0; mt < MW; mt++)
                    d[mt][0] = d[mt][1] = d[mt][2] = d[mt][3] = 0.0f;
#pragma unroll
                for (int jj = 0; jj < WPS; jj++) {
                    const int j = sg * WPS + jj;
                    if constexpr (S == GMW_U4) {
                        const uint4 xv = *reinterpret_cast<const uint4 *>(xs + gqm_x_word_off(S, xr, j, t));
                        const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                        for (int mm = 0; mm < 2; mm++) {
                            const int m = 2 * j + mm;
                            const uint32_t b0 = gmw_u4_xpair(xw, m, 0), b1 = gmw_u4_xpair(xw, m, 1);
#pragma unroll
                            for (int mt = 0; mt < MW; mt++) {
                                const uint32_t A[4] = {
                                    v[mt][0][jj][gmw_u4_pair_of(m, 0)], v[mt][1][jj][gmw_u4_pair_of(m, 0)],
                                    v[mt][0][jj][gmw_u4_pair_of(m, 1)], v[mt][1][jj][gmw_u4_pair_of(m, 1)]};
                                anvil_mma16816<X>(d[mt], A, b0, b1);
                            }
                        }
                    } else {
                        const uint2 xv = *reinterpret_cast<const uint2 *>(xs + gqm_x_word_off(S, xr, j, t));
#pragma unroll
                        for (int mt = 0; mt < MW; mt++) {
                            const uint32_t A[4] = {v[mt][0][jj][0], v[mt][1][jj][0], v[mt][0][jj][1],
                                                   v[mt][1][jj][1]};
                            anvil_mma16816<X>(d[mt], A, xv.x, xv.y);
                        }
                    }
                }
                /* D: d0, d1 weight row g (tokens 2t, 2t + 1), d2, d3 row g + 8 */
#pragma unroll
                for (int mt = 0; mt < MW; mt++) {
                    acc[mt][nt][0] = fmaf(d[mt][0], sc[mt][0], acc[mt][nt][0]);
                    acc[mt][nt][1] = fmaf(d[mt][1], sc[mt][0], acc[mt][nt][1]);
                    acc[mt][nt][2] = fmaf(d[mt][2], sc[mt][1], acc[mt][nt][2]);
                    acc[mt][nt][3] = fmaf(d[mt][3], sc[mt][1], acc[mt][nt][3]);
                }
            }
        }
    }
    anvil_cp_async_wait<0>(); /* no copy outlives the loop (the trailing groups are empty) */
    __syncthreads();          /* the ring becomes the output tile */

    /* the block's f32 tile [TM][GQM_BN + 4], then whole rows out */
    constexpr int LD = gqm_out_ld();
    float *cs = reinterpret_cast<float *>(smem);
#pragma unroll
    for (int mt = 0; mt < MW; mt++)
#pragma unroll
        for (int nt = 0; nt < NW; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int r = wr0 + mt * 16 + g + 8 * (i >> 1), tok = wt0 + nt * 8 + 2 * t + (i & 1);
                cs[tok * LD + r] = acc[mt][nt][i];
            }
    __syncthreads();
    for (int e = tid; e < TM * GQM_BN; e += GQM_THREADS) {
        const int tok = e / GQM_BN, r = e % GQM_BN;
        const int64_t m = m0 + tok, n = n0 + r;
        if (m >= a.M || n >= a.N)
            continue;
        float val = cs[tok * LD + r];
        if (a.part != nullptr) {
            a.part[((int64_t)blockIdx.z * a.M + m) * a.N + n] = val;
        } else {
            if (a.bias != nullptr)
                val += anvil_load_any(a.bias, a.bias_dt, n);
            gq_store(a.out, a.out_dt, m * a.N + n, val);
        }
    }
}

/* out = sum of the splits' partials in split order (+ bias), rounded once */
__global__ void anvil_gemm_quant_reduce(const float *__restrict__ part, int splits, int64_t MN, int64_t N,
                                        const void *bias, int bias_dt, void *out, int out_dt)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < MN; i += (int64_t)gridDim.x * blockDim.x) {
        float v = part[i];
        for (int z = 1; z < splits; z++)
            v += part[(int64_t)z * MN + i];
        if (bias != nullptr)
            v += anvil_load_any(bias, bias_dt, i % N);
        gq_store(out, out_dt, i, v);
    }
}

/* ---------------------------------------------------------------- host side */

static int gq_scheme(anvil_dtype dt) { return dt == ANVIL_DTYPE_U4 ? GMW_U4 : GMW_I8; }

static int gq_float_dt(anvil_dtype dt)
{
    return dt == ANVIL_DTYPE_F32 || dt == ANVIL_DTYPE_BF16 || dt == ANVIL_DTYPE_F16;
}

extern "C" int anvil_cuda_gemm_quant_ok(const anvil_cuda_qweight *w, const int32_t *perm, int act, int sm,
                                        size_t smem_optin, const void *x, anvil_dtype x_dt, anvil_dtype out_dt)
{
    if (w->dt != ANVIL_DTYPE_U4 && w->dt != ANVIL_DTYPE_I8)
        return 0;
    const int s = gq_scheme(w->dt);
    const int wps = gqm_wps(s, w->gs);
    return sm >= 80 && perm == NULL && act == ANVIL_QUANT_ACT_NONE &&
           (x_dt == ANVIL_DTYPE_BF16 || x_dt == ANVIL_DTYPE_F16) && gq_float_dt(out_dt) && w->N >= 1 &&
           w->K >= 1 && w->K % gqm_step_elems(s) == 0 && w->gs >= 1 && w->K % w->gs == 0 && wps > 0 &&
           (w->zeros == NULL || s == GMW_U4) && w->scales != NULL && anvil_aligned16(w->w) && anvil_aligned16(x) &&
           (size_t)gqm_smem_bytes(s, 128, wps) <= smem_optin && w->K <= INT32_MAX;
}

extern "C" int anvil_cuda_gemm_quant_tile(const anvil_cuda_gemm_quant_call *c) { return gqm_tile(c->M, c->tile_m); }

extern "C" int anvil_cuda_gemm_quant_splits(const anvil_cuda_gemm_quant_call *c)
{
    return gqm_splits(c->M, c->w.N, c->w.K / gqm_step_elems(gq_scheme(c->w.dt)), anvil_cuda_gemm_quant_tile(c),
                      c->n_sm, c->splits);
}

extern "C" size_t anvil_cuda_gemm_quant_scratch_bytes(const anvil_cuda_gemm_quant_call *c)
{
    const int splits = anvil_cuda_gemm_quant_splits(c);
    return splits > 1 ? (size_t)splits * (size_t)c->M * (size_t)c->w.N * sizeof(float) : 0;
}

template <typename X, int S, int TM, int WPS>
static anvil_status gq_launch(const gq_args &a, dim3 grid, cudaStream_t stream)
{
    constexpr int smem = gqm_smem_bytes(S, TM, WPS);
    if (smem > 48 * 1024) /* a host-side attribute, no stream work: fine inside a graph capture */
        TRY(anvil_cuda_status(cudaFuncSetAttribute(anvil_gemm_quant_kernel<X, S, TM, WPS>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                              "gemm quant: shared memory limit", __FILE__, __LINE__));
    anvil_gemm_quant_kernel<X, S, TM, WPS><<<grid, GQM_THREADS, smem, stream>>>(a);
    return ANVIL_CUDA_LAUNCHED("gemm quant kernel");
}

template <typename X, int S, int TM>
static anvil_status gq_launch_wps(int wps, const gq_args &a, dim3 grid, cudaStream_t stream)
{
    if (wps == 4)
        return gq_launch<X, S, TM, 4>(a, grid, stream);
    if (wps == 2)
        return gq_launch<X, S, TM, 2>(a, grid, stream);
    return gq_launch<X, S, TM, 1>(a, grid, stream);
}

template <typename X, int S>
static anvil_status gq_launch_tm(int tm, int wps, const gq_args &a, dim3 grid, cudaStream_t stream)
{
    if (tm == 16)
        return gq_launch_wps<X, S, 16>(wps, a, grid, stream);
    if (tm == 64)
        return gq_launch_wps<X, S, 64>(wps, a, grid, stream);
    return gq_launch_wps<X, S, 128>(wps, a, grid, stream);
}

template <typename X>
static anvil_status gq_launch_s(int s, int tm, int wps, const gq_args &a, dim3 grid, cudaStream_t stream)
{
    if (s == GMW_U4)
        return gq_launch_tm<X, GMW_U4>(tm, wps, a, grid, stream);
    return gq_launch_tm<X, GMW_I8>(tm, wps, a, grid, stream);
}

extern "C" anvil_status anvil_cuda_launch_gemm_quant(const anvil_cuda_gemm_quant_call *c)
{
    const anvil_cuda_qweight *w = &c->w;
    CHECK(anvil_cuda_gemm_quant_ok(w, NULL, ANVIL_QUANT_ACT_NONE, 80, c->smem_optin, c->x, c->x_dt, c->out_dt),
          ANVIL_ERR_UNSUPPORTED, "gemm quant: %s [%lld, %lld] (group %lld) with %s x into %s", anvil_dtype_name(w->dt),
          (long long)w->N, (long long)w->K, (long long)w->gs, anvil_dtype_name(c->x_dt), anvil_dtype_name(c->out_dt));
    CHECK(c->tile_m == 0 || c->tile_m == 16 || c->tile_m == 64 || c->tile_m == 128, ANVIL_ERR_INVALID_ARG,
          "gemm quant: tiles of %d tokens (16, 64 or 128)", c->tile_m);
    CHECK(c->M >= 1 && c->out != NULL && c->x != NULL, ANVIL_ERR_INVALID_ARG, "gemm quant: M %lld",
          (long long)c->M);
    CHECK(c->bias == NULL || gq_float_dt(c->bias_dt), ANVIL_ERR_INVALID_ARG, "gemm quant: bias in %s",
          anvil_dtype_name(c->bias_dt));
    const int s = gq_scheme(w->dt), tm = anvil_cuda_gemm_quant_tile(c), splits = anvil_cuda_gemm_quant_splits(c);
    const int64_t steps = w->K / gqm_step_elems(s), m_tiles = (c->M + tm - 1) / tm;
    const int64_t n_tiles = (w->N + GQM_BN - 1) / GQM_BN;
    CHECK(m_tiles <= INT32_MAX && n_tiles <= 65535, ANVIL_ERR_INVALID_ARG, "gemm quant: M %lld, N %lld",
          (long long)c->M, (long long)w->N);
    const size_t need = anvil_cuda_gemm_quant_scratch_bytes(c);
    CHECK(need == 0 || (c->scratch != NULL && c->scratch_bytes >= need), ANVIL_ERR_INVALID_ARG,
          "gemm quant: %d K splits need %zu bytes of scratch, %zu given", splits, need, c->scratch_bytes);
    const int wps = gqm_wps(s, w->gs);
    gq_args a;
    memset(&a, 0, sizeof a);
    a.x = c->x;
    a.w = (const uint8_t *)w->w;
    a.scales = w->scales;
    a.zeros = w->zeros;
    a.bias = c->bias;
    a.bias_dt = (int)c->bias_dt;
    a.out = c->out;
    a.out_dt = (int)c->out_dt;
    a.part = splits > 1 ? c->scratch : nullptr;
    a.M = c->M;
    a.N = w->N;
    a.K = w->K;
    a.gs = w->gs;
    a.G = w->K / w->gs;
    a.row_bytes = s == GMW_U4 ? w->K / 2 : w->K;
    a.segs_per_group = (int)gqm_segs_per_group(s, wps, w->gs);
    a.n_steps = (int)steps;
    a.split_steps = (int)gqm_split_steps(steps, splits);
    const dim3 grid((unsigned)m_tiles, (unsigned)n_tiles, (unsigned)splits);
    if (c->x_dt == ANVIL_DTYPE_BF16)
        TRY(gq_launch_s<__nv_bfloat16>(s, tm, wps, a, grid, c->stream));
    else
        TRY(gq_launch_s<__half>(s, tm, wps, a, grid, c->stream));
    if (splits > 1) {
        const int64_t mn = c->M * w->N;
        anvil_gemm_quant_reduce<<<anvil_grid_for(mn, 256), 256, 0, c->stream>>>(
            c->scratch, splits, mn, w->N, c->bias, (int)c->bias_dt, c->out, (int)c->out_dt);
        TRY(ANVIL_CUDA_LAUNCHED("gemm quant split-K sum"));
    }
    return ANVIL_OK;
}
