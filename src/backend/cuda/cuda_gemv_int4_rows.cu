/*
 * The int4 GEMV of one decode row (T = 1) on CUDA cores with int8
 * activations: a warp streams one whole weight row (gate/up with the silu:
 * the gate's and the up's row n), blocks of GI_WARPS warps, as the fp8 row
 * GEMV (cuda_gemv_fp8_rows.cu) does for fp8.
 *
 * Why: the 16-bit tensor-core GEMV (cuda_gemv_mma16_quant.cu) reads
 * Llama-3-8B's int4 at 30-54% of the copy rate with the weights past the
 * L2 (bench_gemv_quant, session 32): a tile of 16 rows is a block's whole
 * life, one round of loads at K = 4096, so blocks ramp up and drain in
 * lockstep waves. Converting int4 to 16-bit operands costs about 1.3
 * instructions an element; here an element costs about 0.6 (a mask or a
 * shift-and-mask per 4 nibbles, one dp4a per 4 products), so that the
 * issue rate stays well under the memory time on an H100 at every shape.
 *
 * Arithmetic: the CPU's int definition (docs/quantization.md; path 0 of
 * cuda_matmul_quant.c computes the same): x quantized per block of 32
 * columns, d = max|x| / 127, q = rint(x * (1 / d)) (0 when d = 0; NaN
 * reads 0), the block's exact integer sum q (v - z) = dp4a sums - z sum q,
 * times fl(d s), summed in f32 by each lane over its blocks in K order,
 * then across the warp (a butterfly), + bias. So decode equals the CPU's
 * int path up to the order of f32 sums, and differs from the weight-only
 * definition (x as it is) by the activations' rounding, as llama.cpp's
 * MMVQ does.
 *
 * x's codes: made by each block into shared memory (every block reads x,
 * 2 K bytes, from L2; 25-50% of its weight bytes at K = 4096, from L2):
 * four threads a block of 32 (8 columns each, the block's max and sum by
 * two shuffles); each block's 32 codes as 8 words, the even columns of 8
 * then the odd ones (e0 o0 e1 o1 | e2 o2 e3 o3), the first 16 bytes of
 * every block together and the second 16 together (a lane's 16-byte reads
 * of consecutive blocks then hit distinct banks), (d, sum q) beside.
 *
 * Loads: a lane reads 16-byte pieces of its row (32 columns: one block of
 * x), 512 bytes apart (lane, lane + 32, ...: each warp load 512
 * contiguous bytes), with the piece's scale and zero point, U pieces in
 * flight, each refilled as soon as it is used. Rows whose K is not a
 * multiple of 1024 leave the last pieces of some lanes empty (the last
 * block loaded again, summed as nothing: a check a piece, in its own
 * instances, as the fp8 row GEMV measured such a check 10-35% slower). The first U pieces are loaded before
 * anvil_pdl_wait (weights, scales and zero points: no kernel writes them),
 * x after.
 */
#include <string.h>

#include "backend/cuda/cuda_gemv.cuh"
#include "backend/cuda/cuda_gemv_int4_rows.h"

/* Warps a block by default (rows_warps: 4, 8 or 16). 16: 8B int4 decode
 * 2.641 ms a token against 2.847 with 8 (session 33, H100, the knob alone
 * in one call); each block rounds x once for its rows. */
#define GI_WARPS     16
#define GI_MAX_WARPS 16
#define GI_MAX_PARTS 4
#define GI_PIECE     16    /* bytes a lane loads at once: 32 columns, one block of x */
#define GI_ROW_STEP  512   /* a warp's load: 32 lanes x 16 bytes */
#define GI_MAX_K     32768 /* x's codes, d and sums (1.25 K bytes) in the default 48 KB of shared memory */
#define GI_PER_CHAN  30    /* gshift of a per-channel weight: (32 c) >> 30 = 0 for every block c */

typedef struct gi_args {
    const uint8_t *w[GI_MAX_PARTS];
    const float *scales[GI_MAX_PARTS];
    const uint8_t *zeros[GI_MAX_PARTS]; /* NULL: 8 */
    const void *bias[GI_MAX_PARTS];
    int bias_dt[GI_MAX_PARTS];
    void *out[GI_MAX_PARTS];
    int end[GI_MAX_PARTS]; /* rows of parts 0..i together (silu: end[0] = N, part 1 the up of those rows) */
    int n_parts;
    const void *x;
    int K;
    int groups; /* scales a row: K / group */
    int gshift; /* log2(group), or GI_PER_CHAN */
} gi_args;

/* (float)i for |i| < 2^22, exactly, without I2F (a quarter of the FMA
 * rate): 1.5 * 2^23 + i as f32 bits. A block's sum is at most
 * 32 x 127 x 255 in magnitude (zero points above 15 are not checked). */
__device__ __forceinline__ float gi_i2f(int i)
{
    return __int_as_float(0x4B400000 + i) - 12582912.0f;
}

/* The larger magnitude as the CPU's quantizer picks it (a NaN never wins). */
__device__ __forceinline__ float gi_max(float m, float v)
{
    return v > m ? v : m;
}

__device__ __forceinline__ uint32_t gi_pack4(int a, int b, int c, int d)
{
    return ((uint32_t)a & 0xffu) | (((uint32_t)b & 0xffu) << 8) | (((uint32_t)c & 0xffu) << 16) |
           ((uint32_t)d << 24);
}

/* x's int8 codes, d and sum q of every block of 32 into shared memory
 * (xlo, xhi [K / 32] uint4, dq [K / 32]: d, and the sum as int bits). Four
 * consecutive threads a block, all the warp's lanes in every round (the
 * shuffles), the rounds fewer than 32 for K <= 32768. (Loading a
 * thread's next round of x before this round's arithmetic measured slower,
 * 31.7 us against 25.7 on gate/up in blocks of 16 warps: session 33.) */
template <typename X> __device__ void gi_quant_x(const gi_args &a, uint4 *xlo, uint4 *xhi, float2 *dq)
{
    const X *x = (const X *)a.x;
    const int n4 = (a.K >> 5) * 4;
    for (int base = 0; base < n4; base += blockDim.x) {
        const int u = base + threadIdx.x;
        const bool on = u < n4;
        float f[8];
        if (on) {
            anvil_load_vec<X, 8>(x + 8 * u, f);
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++)
                f[i] = 0.0f;
        }
        float m = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++)
            m = gi_max(m, fabsf(f[i]));
        m = gi_max(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = gi_max(m, __shfl_xor_sync(0xffffffffu, m, 2));
        const float d = __fdiv_rn(m, 127.0f), id = d > 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
        int q[8], s = 0;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const float rr = rintf(__fmul_rn(f[i], id)); /* one rounding, as the CPU (no fma) */
            q[i] = rr > 127.0f ? 127 : rr < -127.0f ? -127 : rr == rr ? (int)rr : 0;
            s += q[i];
        }
        s += __shfl_xor_sync(0xffffffffu, s, 1);
        s += __shfl_xor_sync(0xffffffffu, s, 2);
        if (on) {
            const int b = u >> 2, c = u & 3;
            uint4 *half = c < 2 ? xlo : xhi;
            reinterpret_cast<uint2 *>(half + b)[c & 1] =
                make_uint2(gi_pack4(q[0], q[2], q[4], q[6]), gi_pack4(q[1], q[3], q[5], q[7]));
            if (c == 0)
                dq[b] = make_float2(d, __int_as_float(s));
        }
    }
    __syncthreads();
}

/* A piece in flight: 32 codes, its group's scale and zero point. */
typedef struct gi_piece {
    uint4 w;
    float s;
    int z;
} gi_piece;

/* Where a warp's weight row is: codes, scales and zero points (NULL: 8). */
typedef struct gi_row {
    const uint8_t *w;
    const float *s;
    const uint8_t *z;
} gi_row;

__device__ __forceinline__ gi_row gi_row_of(const gi_args &a, int p, int n)
{
    gi_row r;
    r.w = a.w[p] + (int64_t)n * (a.K >> 1);
    r.s = a.scales[p] + (int64_t)n * a.groups;
    r.z = a.zeros[p] != nullptr ? a.zeros[p] + (int64_t)n * a.groups : nullptr;
    return r;
}

/* Piece of block c (of nb a row) into b. EDGE (K not a multiple of 1024
 * columns): past the row, the last block again (summed as nothing: gi_dot
 * is not called for it). EARLY: before anvil_pdl_wait (anvil_pdl_load16,
 * which stays before it). */
template <bool EDGE, bool EARLY = false>
__device__ __forceinline__ void gi_load(const gi_args &a, const gi_row &r, int c, int nb, gi_piece &b)
{
    if (EDGE)
        c = c < nb ? c : nb - 1;
    b.w = EARLY ? anvil_pdl_load16(r.w + GI_PIECE * c) : anvil_ld_stream16(r.w + GI_PIECE * c);
    const int g = (c << 5) >> a.gshift;
    b.s = __ldg(r.s + g);
    b.z = r.z != nullptr ? (int)__ldg(r.z + g) : 8;
}

/* acc + block c's fl(d s) (sum q (v - z)) */
__device__ __forceinline__ float gi_dot(const gi_piece &b, int c, const uint4 *xlo, const uint4 *xhi,
                                        const float2 *dq, float acc)
{
    const uint4 xa = xlo[c], xb = xhi[c];
    const float2 dd = dq[c];
    const uint32_t m = 0x0F0F0F0Fu;
    /* a word's low nibbles are its columns 0, 2, 4, 6, the high ones 1, 3, 5, 7: the even / odd code words */
    int dot = __dp4a((int)(b.w.x & m), (int)xa.x, 0);
    dot = __dp4a((int)((b.w.x >> 4) & m), (int)xa.y, dot);
    dot = __dp4a((int)(b.w.y & m), (int)xa.z, dot);
    dot = __dp4a((int)((b.w.y >> 4) & m), (int)xa.w, dot);
    dot = __dp4a((int)(b.w.z & m), (int)xb.x, dot);
    dot = __dp4a((int)((b.w.z >> 4) & m), (int)xb.y, dot);
    dot = __dp4a((int)(b.w.w & m), (int)xb.z, dot);
    dot = __dp4a((int)((b.w.w >> 4) & m), (int)xb.w, dot);
    dot -= b.z * __float_as_int(dd.y);
    return fmaf(gi_i2f(dot), __fmul_rn(dd.x, b.s), acc);
}

/* U pieces in flight a lane; TAIL: the lane's pieces need not be a multiple
 * of U; EDGE: K not a multiple of 1024, some lanes' last pieces empty (a
 * check per piece, which the other instances go without). */
template <typename X, int U, bool TAIL, bool EDGE, bool SILU>
__global__ void __launch_bounds__(GI_MAX_WARPS * 32) anvil_gemv_int4_rows_kernel(gi_args a)
{
    static_assert(!SILU || U % 2 == 0, "gate and up pieces alternate: an even U keeps a slot on one of them");
    extern __shared__ __align__(16) uint8_t gi_smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = blockIdx.x * (blockDim.x >> 5) + warp;
    const int rows = a.end[SILU ? 0 : a.n_parts - 1];
    const bool live = g < rows; /* a warp past the end still helps with x's codes */
    int p = 0;
    if (!SILU)
        while (p + 1 < a.n_parts && g >= a.end[p])
            p++;
    const int n = g - (p > 0 ? a.end[p - 1] : 0);
    const int nb = a.K >> 5;                       /* blocks of 32 columns (pieces) a row */
    const int ppl = (nb + 31) >> 5;                /* pieces a lane of one row, the last maybe empty */
    const int P = live ? (SILU ? 2 : 1) * ppl : 0; /* SILU: gate and up pieces alternate (even: gate) */

    gi_row row[2];
    row[0] = gi_row_of(a, p, n);
    if (SILU)
        row[1] = gi_row_of(a, 1, n);
    gi_piece buf[U];
    int cl = lane; /* the block of the lane's next load (SILU: of its next gate load) */
#pragma unroll
    for (int u = 0; u < U; u++) { /* weights: before the wait */
        if (u < P) {
            gi_load<EDGE, true>(a, row[SILU ? (u & 1) : 0], cl, nb, buf[u]);
            if (!SILU || (u & 1))
                cl += 32;
        }
    }
    anvil_pdl_wait();
    anvil_pdl_launch();

    uint4 *xlo = reinterpret_cast<uint4 *>(gi_smem);
    uint4 *xhi = xlo + nb;
    float2 *dq = reinterpret_cast<float2 *>(xhi + nb);
    gi_quant_x<X>(a, xlo, xhi, dq);
    if (!live)
        return;

    float acc[2] = {0.0f, 0.0f};
    int c = lane; /* the block of the piece in use */
    for (int base = 0; base < P; base += U) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (TAIL && base + u >= P)
                break;
            const int h =
                SILU ? (u & 1) : 0; /* SILU pieces go gate, up of one block, then the next (U even) */
            if (!EDGE || c < nb)
                acc[h] = gi_dot(buf[u], c, xlo, xhi, dq, acc[h]);
            if (!SILU || h == 1)
                c += 32;
            if (base + u + U < P) { /* the slot's next piece, once its registers are used */
                gi_load<EDGE>(a, row[h], cl, nb, buf[u]);
                if (!SILU || h == 1)
                    cl += 32;
            }
        }
    }
    float v = anvil_warp_sum(acc[0]);
    float v2 = SILU ? anvil_warp_sum(acc[1]) : 0.0f;
    if (lane != 0)
        return;
    const float bb = a.bias[p] != nullptr ? anvil_load_any(a.bias[p], a.bias_dt[p], n) : 0.0f;
    X *out = (X *)a.out[p];
    if (!SILU) {
        out[n] = anvil_from_f32<X>(v + bb);
        return;
    }
    /* as matmul + matmul + silu_mul: each product rounded to X first */
    const float b2 = a.bias[1] != nullptr ? anvil_load_any(a.bias[1], a.bias_dt[1], n) : 0.0f;
    const float gv = anvil_to_f32(anvil_from_f32<X>(v + bb));
    const float uv = anvil_to_f32(anvil_from_f32<X>(v2 + b2));
    out[n] = anvil_from_f32<X>(gv / (1.0f + expf(-gv)) * uv);
}

/* ---------------------------------------------------------------- launcher */

/* log2(gs) when gs is a power of two from 32, GI_PER_CHAN per channel, else -1 */
static int gi_shift(int64_t gs, int64_t K)
{
    if (gs == K)
        return GI_PER_CHAN;
    for (int s = 5; s < 30; s++)
        if (gs == (int64_t)1 << s)
            return s;
    return -1;
}

extern "C" int anvil_cuda_gemv_int4_rows_ok(const anvil_cuda_qweight *w, int act, const int32_t *perm,
                                            const void *x, anvil_dtype x_dt, int64_t T)
{
    return w->dt == ANVIL_DTYPE_U4 && act == ANVIL_QUANT_ACT_NONE && perm == NULL && T == 1 &&
           (x_dt == ANVIL_DTYPE_BF16 || x_dt == ANVIL_DTYPE_F16) && w->K > 0 && w->K % 32 == 0 &&
           w->K <= GI_MAX_K && gi_shift(w->gs, w->K) >= 0 && w->K % w->gs == 0 && w->N >= 1 &&
           w->N <= INT32_MAX - GI_MAX_WARPS && anvil_aligned16(w->w) && anvil_aligned16(x);
}

/* The lane's pieces (SILU: both rows') in rounds of U: 8, 7 or 4 where one
 * divides them (SILU: 8 or 4, even), else 8 with a tail; rows with empty
 * pieces (K off 1024) 8 with a tail and the check (0 then). */
static int gi_unroll(int64_t pieces, int silu, int edge)
{
    return edge ? 0 : pieces % 8 == 0 ? 8 : pieces % 7 == 0 && !silu ? 7 : pieces % 4 == 0 ? 4 : 1;
}

template <typename X, bool SILU>
static void gi_launch(const gi_args &a, int64_t pieces, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                      int pdl)
{
    switch (gi_unroll(pieces, SILU, a.K % 1024 != 0)) {
    case 8:
        anvil_launch(anvil_gemv_int4_rows_kernel<X, 8, false, false, SILU>, grid, block, smem, s, pdl, a);
        break;
    case 7:
        anvil_launch(anvil_gemv_int4_rows_kernel < X, SILU ? 8 : 7, false, false, SILU >, grid, block, smem,
                     s, pdl, a);
        break;
    case 4:
        anvil_launch(anvil_gemv_int4_rows_kernel<X, 4, false, false, SILU>, grid, block, smem, s, pdl, a);
        break;
    case 1:
        anvil_launch(anvil_gemv_int4_rows_kernel<X, 8, true, false, SILU>, grid, block, smem, s, pdl, a);
        break;
    default:
        anvil_launch(anvil_gemv_int4_rows_kernel<X, 8, true, true, SILU>, grid, block, smem, s, pdl, a);
        break;
    }
}

extern "C" anvil_status anvil_cuda_launch_gemv_int4_rows(const anvil_cuda_gemv_mma_call *c)
{
    CHECK(c->n_parts >= 1 && c->n_parts <= GI_MAX_PARTS && (!c->silu || c->n_parts == 2),
          ANVIL_ERR_INVALID_ARG, "gemv (int4, rows): %d parts%s", c->n_parts,
          c->silu ? " with the silu (2)" : " (1..4)");
    gi_args a;
    memset(&a, 0, sizeof a);
    int64_t total = 0;
    for (int i = 0; i < c->n_parts; i++) {
        const anvil_cuda_qweight *w = &c->w[i];
        CHECK(anvil_cuda_gemv_int4_rows_ok(w, c->act, c->perm, c->x, c->x_dt, c->T) && w->K == c->w[0].K &&
                  w->gs == c->w[0].gs && anvil_aligned16(c->out[i]),
              ANVIL_ERR_UNSUPPORTED,
              "gemv (int4, rows): %s [%lld, %lld], group %lld, %lld rows of %s (int4 in groups of a power of "
              "two "
              "from 32 or per channel, one row, K a multiple of 32 up to %d, no perm, aligned, one group for "
              "every part)",
              anvil_dtype_name(w->dt), (long long)w->N, (long long)w->K, (long long)w->gs, (long long)c->T,
              anvil_dtype_name(c->x_dt), GI_MAX_K);
        CHECK(c->bias[i] == NULL || anvil_cuda_is_float_dtype(c->bias_dt[i]), ANVIL_ERR_UNSUPPORTED,
              "gemv (int4, rows): bias dtype %s", anvil_dtype_name(c->bias_dt[i]));
        a.w[i] = (const uint8_t *)w->w;
        a.scales[i] = w->scales;
        a.zeros[i] = w->zeros;
        a.bias[i] = c->bias[i];
        a.bias_dt[i] = (int)c->bias_dt[i];
        a.out[i] = c->out[i];
        total += c->silu && i == 1 ? 0 : w->N;
        CHECK(total <= INT32_MAX - GI_MAX_WARPS, ANVIL_ERR_UNSUPPORTED, "gemv (int4, rows): %lld rows",
              (long long)total);
        a.end[i] = (int)total;
    }
    CHECK(!c->silu || c->w[1].N == c->w[0].N, ANVIL_ERR_INVALID_ARG,
          "gemv (int4, rows): gate %lld rows, up %lld", (long long)c->w[0].N, (long long)c->w[1].N);
    a.n_parts = c->n_parts;
    a.x = c->x;
    a.K = (int)c->w[0].K;
    a.groups = (int)(c->w[0].K / c->w[0].gs);
    a.gshift = gi_shift(c->w[0].gs, c->w[0].K);
    const int wpb =
        c->rows_warps == 4 || c->rows_warps == 8 || c->rows_warps == 16 ? c->rows_warps : GI_WARPS;
    const dim3 grid((unsigned)((total + wpb - 1) / wpb));
    const size_t smem = (size_t)(a.K / 32) * (2 * sizeof(uint4) + sizeof(float2));
    const int64_t pieces = (c->silu ? 2 : 1) * (int64_t)((a.K / 32 + 31) / 32);
    if (c->x_dt == ANVIL_DTYPE_BF16) {
        if (c->silu)
            gi_launch<__nv_bfloat16, true>(a, pieces, grid, dim3(32 * wpb), smem, c->stream, c->pdl);
        else
            gi_launch<__nv_bfloat16, false>(a, pieces, grid, dim3(32 * wpb), smem, c->stream, c->pdl);
    } else {
        if (c->silu)
            gi_launch<__half, true>(a, pieces, grid, dim3(32 * wpb), smem, c->stream, c->pdl);
        else
            gi_launch<__half, false>(a, pieces, grid, dim3(32 * wpb), smem, c->stream, c->pdl);
    }
    return ANVIL_CUDA_LAUNCHED("gemv (int4, rows) kernel");
}
