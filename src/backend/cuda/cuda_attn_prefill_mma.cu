/*
 * Tiled causal attention over the paged KV cache on tensor cores
 * (bf16/f16, head_dim a multiple of 16 up to 128): FlashAttention-2 style
 * with mma.sync.m16n8k16 (sm_80 and newer), f32 accumulation, online
 * softmax in f32.
 *
 * A block of 4 warps owns 64 query rows (16 a warp, MT 1) or 128 (two
 * m-tiles of 16 a warp, MT 2, the default where head_dim is 32, 64 or
 * 128): a run of `qt` consecutive tokens times `gh` query heads of one KV
 * head (GQA: the heads of a group read the same K/V tile). Per tile of 64 keys: the block gathers the keys' cache
 * rows through the block table into shared memory (16-byte copies, rows
 * padded by 8 elements so fragment reads hit distinct banks) with
 * cp.async, two stages deep, the next tile in flight while this one is
 * used; each warp
 * computes S = Q K^T for its 16 rows (Q fragments stay in registers for
 * the whole kernel), masks (causal, window, segment), updates the running
 * max and sum, turns P into A fragments in registers (the S accumulator
 * layout is the A operand layout) and accumulates O += P V, the V
 * fragments by transposed ldmatrix. Rows of a run
 * that belong to another sequence (mixed batches) are masked out for that
 * sequence's keys, as in the SIMT kernel (cuda_attn_prefill.cu).
 *
 * P is rounded to the input dtype for the P V product, as FlashAttention
 * does; everything else is f32 (exponentials as exp2 of scores prescaled
 * by log2 e, the scale folded into the exponent's FFMA; tiles inside every
 * row's causal window skip the mask).
 *
 * An fp8 KV cache (F8: cache_dt F8_E4M3, head_dim 32, 64 or 128): each
 * stage holds the tile's fp8 rows, and once a tile has landed the block
 * converts it (exactly) into one bf16/f16 tile that the fragments are read
 * from, as in cuda_attn_decode_mma.cu; k_scale goes into the score scale,
 * v_scale into the final 1 / l.
 */
#include <math.h>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_mma.cuh"

#define MMA_WARPS 4
#define MMA_ROWS 64  /* query rows per block: 16 per warp */
#define MMA_BN 64    /* keys per tile */
#define FULL_MASK 0xffffffffu
#define RESCALE_LOG2 8.0f /* a row's running maximum moves only when it grows by more than 2^8 */

/* 2^x, subnormal results flushed to 0 (they vanish next to the row's
 * largest p = 1 anyway): one MUFU.EX2, without exp2f's range fix-up. */
__device__ __forceinline__ float anvil_exp2_ftz(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* Launch bounds: with one m-tile a warp (MT 1), at most 168 registers, so
 * three blocks share an SM (12 warps): with two, the warps stalled on mma
 * and exp2 latencies too often (ncu, H200: 1.9 warps per scheduler, 0.4
 * eligible). With two (MT 2: 32 rows a warp, 128 a block, as
 * FlashAttention-2 does), two blocks of up to 255 registers: each K and V
 * fragment read from shared memory feeds two mma instead of one, and each
 * warp has two independent accumulator chains. */
template <int MT> struct prefill_bounds;
template <> struct prefill_bounds<1> { static constexpr int blocks = 3; };
template <> struct prefill_bounds<2> { static constexpr int blocks = 2; };

template <typename T, int HDM, bool EXACT, int MT, bool F8>
__global__ void __launch_bounds__(MMA_WARPS * 32, prefill_bounds<MT>::blocks)
    anvil_attn_prefill_mma_kernel(anvil_cuda_attn a, int gh, int qt, int n_hc)
{
    static_assert(MT == 1 || (MT == 2 && EXACT), "two m-tiles a warp need head_dim == HDM");
    static_assert(!F8 || EXACT, "an fp8 cache needs head_dim == HDM");
    constexpr int KC = HDM / 16; /* 16-wide chunks of head_dim */
    constexpr int NTO = HDM / 8; /* 8-wide tiles of the output */
    constexpr int ROWS = MMA_ROWS * MT;
    extern __shared__ uint4 mma_smem4[];
    __shared__ int row_t[ROWS], row_h[ROWS], row_p[ROWS], row_lo[ROWS], tok_seq[ROWS];
    __shared__ int key_row[2][MMA_BN]; /* cache rows of the keys of the tiles in flight */
    __shared__ int seg_klo, seg_khi;

    /* EXACT (head_dim == HDM, the usual case): every stride and bound is a
     * constant, so fragment addresses fold into the instructions' offsets
     * and the head_dim tests vanish */
    const int hd = EXACT ? HDM : a.head_dim, kst = hd + 8;
    /* two stages of (K tile, V tile), 64 rows each, padded by 8 elements;
     * with MT 2 then the block's Q rows, padded the same way */
    uint16_t *const smem = reinterpret_cast<uint16_t *>(mma_smem4);
    const int stage_elems = 2 * MMA_BN * kst;
    /* F8: two stages of fp8 K and V rows (unpadded), the converted tile, then Q */
    uint8_t *const stg8 = reinterpret_cast<uint8_t *>(mma_smem4);
    constexpr int STAGE8 = 2 * MMA_BN * HDM;
    uint16_t *const tile8 = reinterpret_cast<uint16_t *>(stg8 + 2 * STAGE8);
    uint16_t *const q_s = F8 ? tile8 + stage_elems : smem + 2 * stage_elems;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    /* Blocks start in the order of their linear index (x fastest): it
     * takes the head groups first and the runs of tokens last to first. In
     * a causal prompt the last runs have the most keys; started last, they
     * would leave the GPU waiting on a few long blocks at the end. */
    const int lin = blockIdx.y * gridDim.x + blockIdx.x;
    const int by = lin % gridDim.y, bx = gridDim.x - 1 - lin / gridDim.y;
    const int t0 = bx * qt;
    const int g = by / n_hc, hc = by - (by / n_hc) * n_hc;
    const int group = a.n_heads / a.n_kv_heads;
    const int n_tok = min(qt, a.n_tokens - t0);
    const int64_t qw = (int64_t)a.n_heads * hd, kw = (int64_t)a.n_kv_heads * hd;

    if (threadIdx.x < ROWS) {
        const int r = threadIdx.x, tl = r / gh, hh = hc * gh + r % gh;
        const bool ok = tl < n_tok && hh < group;
        const int p = ok ? a.positions[t0 + tl] : 0;
        row_t[r] = ok ? t0 + tl : -1;
        row_h[r] = g * group + hh;
        row_p[r] = p;
        row_lo[r] = anvil_window_lo(p, a.window);
        if (r < n_tok)
            tok_seq[r] = a.seq_of_token[t0 + r];
    }
    __syncthreads();

    /* this thread's rows: gq and gq + 8 of each of the warp's MT m-tiles
     * (their token, position and window are read from shared memory where
     * needed: registers are what limits the kernel) */
    auto my_row = [&](int mt, int h) { return warp * 16 * MT + mt * 16 + gq + 8 * h; };

    /* Q: with MT 1 the fragments (A operand, row-major 16 x 16 per chunk)
     * stay in registers for the whole kernel; with MT 2 they would take 64
     * registers, so the rows go to shared memory once and each tile reads
     * them back by ldmatrix */
    uint32_t qf[MT == 1 ? KC : 1][4];
    if constexpr (MT == 1) {
        const int r0 = warp * 16 + gq, r1 = r0 + 8;
        const int tr0 = row_t[r0], tr1 = row_t[r1];
        const uint32_t *q0 = tr0 >= 0 ? reinterpret_cast<const uint32_t *>((const T *)a.q + (int64_t)tr0 * qw +
                                                                           (int64_t)row_h[r0] * hd)
                                      : nullptr;
        const uint32_t *q1 = tr1 >= 0 ? reinterpret_cast<const uint32_t *>((const T *)a.q + (int64_t)tr1 * qw +
                                                                           (int64_t)row_h[r1] * hd)
                                      : nullptr;
#pragma unroll
        for (int kc = 0; kc < KC; kc++) {
            const bool in = kc * 16 < hd;
            const int w0 = kc * 8 + tq; /* 32-bit word of columns kc*16 + 2 tq */
            qf[kc][0] = in && q0 ? q0[w0] : 0u;
            qf[kc][1] = in && q1 ? q1[w0] : 0u;
            qf[kc][2] = in && q0 ? q0[w0 + 4] : 0u;
            qf[kc][3] = in && q1 ? q1[w0 + 4] : 0u;
        }
    } else {
        constexpr int P = HDM / 8; /* 16-byte pieces a row */
        for (int c = threadIdx.x; c < ROWS * P; c += MMA_WARPS * 32) {
            const int r = c / P, part = c % P;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (row_t[r] >= 0)
                v = *reinterpret_cast<const uint4 *>((const T *)a.q + (int64_t)row_t[r] * qw +
                                                     (int64_t)row_h[r] * HDM + part * 8);
            *reinterpret_cast<uint4 *>(q_s + r * kst + part * 8) = v;
        }
        /* read after the first tile's barrier */
    }

    float o[MT][NTO][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int i = 0; i < NTO; i++)
            o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
        m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.0f;
    const float sl2 = (F8 ? a.scale * a.k_scale : a.scale) * 1.4426950408889634f; /* scores into log2 units */
    /* a soft cap on raw scores: cap_out tanh(raw cap_in) = cap tanh(scaled / cap) / scale */
    const float s_raw = F8 ? a.scale * a.k_scale : a.scale;
    const float cap_in = a.softcap > 0.0f ? s_raw / a.softcap : 0.0f, cap_out = a.softcap / s_raw;

    for (int seg_begin = 0; seg_begin < n_tok;) {
        const int s = tok_seq[seg_begin];
        int seg_end = seg_begin + 1;
        while (seg_end < n_tok && tok_seq[seg_end] == s)
            seg_end++;
        /* the segment's key range: one row per thread, min/max in shared
         * memory (the first barrier: every thread has read the last
         * segment's range, even where it had no tile) */
        __syncthreads();
        if (threadIdx.x == 0)
            seg_klo = INT_MAX, seg_khi = 0;
        __syncthreads();
        if (threadIdx.x < ROWS) {
            const int r = threadIdx.x, tl = row_t[r] - t0;
            if (row_t[r] >= 0 && tl >= seg_begin && tl < seg_end) {
                atomicMin(&seg_klo, row_lo[r]);
                atomicMax(&seg_khi, row_p[r] + 1);
            }
        }
        __syncthreads();
        const int klo = seg_klo;
        int khi = seg_khi;
        const bool seq_ok = s >= 0 && s < a.n_seqs;
        if (!seq_ok) {
            if (threadIdx.x == 0)
                anvil_flag(a.err, ANVIL_CUDA_BAD_SEQ);
            khi = klo;
        }
        const int32_t *bt = a.block_tables + (seq_ok ? (int64_t)s * a.max_blocks_per_seq : 0);
        /* over this thread's rows: whether any / all are in the segment,
         * the latest window start and the earliest position (a tile
         * between them is unmasked for all) */
        auto in_seg = [&](int r) {
            const int t = row_t[r];
            return t >= 0 && t - t0 >= seg_begin && t - t0 < seg_end;
        };
        bool any_row = false, all_rows = true;
        int lo_max = INT_MIN, p_min = INT_MAX;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int r = my_row(mt, h);
                const bool i = in_seg(r);
                any_row |= i;
                all_rows &= i;
                lo_max = max(lo_max, row_lo[r]);
                p_min = min(p_min, row_p[r]);
            }
        }
        const bool any = __any_sync(FULL_MASK, any_row);

        /* The cache row of each key of tile kt into slot st of key_row (-1:
         * past the segment's keys or a bad block; zero-filled): one block
         * table read and one division per key, by the first 64 threads,
         * instead of one per 16-byte piece by every thread. Split in two
         * (row_of, then the store) so the table read's latency passes under
         * a tile's arithmetic. */
        auto row_of = [&](int kt) -> int {
            const int kj = kt + (int)threadIdx.x;
            if (threadIdx.x >= MMA_BN || kj >= khi)
                return -1;
            const int bi = kj / a.block_size;
            const int blk = bi < a.max_blocks_per_seq ? bt[bi] : -1;
            if (blk >= 0 && blk < a.n_blocks)
                return blk * a.block_size + (kj - bi * a.block_size);
            anvil_flag(a.err, ANVIL_CUDA_BAD_BLOCK);
            return -1;
        };
        auto put_row = [&](int st, int row) {
            if (threadIdx.x < MMA_BN)
                key_row[st][threadIdx.x] = row;
        };

        /* the keys of the tile whose rows are in slot st into stage st:
         * 16-byte pieces. When hd is the template's, a thread copies the
         * same piece of every (threads / pieces)-th key: shifts, no
         * division. */
        auto issue = [&](int st) {
            if constexpr (F8) { /* 16 keys' bytes a piece */
                constexpr int P8 = HDM / 16, KPP8 = MMA_WARPS * 32 / P8;
                const int part8 = threadIdx.x % P8, key08 = threadIdx.x / P8;
                uint8_t *k8 = stg8 + st * STAGE8, *v8 = k8 + MMA_BN * HDM;
                const uint8_t *kc8 = (const uint8_t *)a.k_cache, *vc8 = (const uint8_t *)a.v_cache;
                const int *kr8 = key_row[st];
#pragma unroll
                for (int i = 0; i < MMA_BN / KPP8; i++) {
                    const int key = key08 + i * KPP8, row = kr8[key];
                    const long long off = (long long)row * kw + (long long)g * HDM + part8 * 16;
                    anvil_cp_async16(k8 + key * HDM + part8 * 16, row >= 0 ? kc8 + off : kc8, row >= 0);
                    anvil_cp_async16(v8 + key * HDM + part8 * 16, row >= 0 ? vc8 + off : vc8, row >= 0);
                }
                anvil_cp_async_commit();
                return;
            }
            uint16_t *k_s = smem + st * stage_elems, *v_s = k_s + MMA_BN * kst;
            const T *kc = (const T *)a.k_cache, *vc = (const T *)a.v_cache;
            const int *kr = key_row[st];
            if (hd == HDM) {
                constexpr int P = HDM / 8, KPP = MMA_WARPS * 32 / P;
                const int part = threadIdx.x % P, key0 = threadIdx.x / P;
#pragma unroll
                for (int i = 0; i < MMA_BN / KPP; i++) {
                    const int key = key0 + i * KPP, row = kr[key];
                    const long long off = (long long)row * kw + (long long)g * HDM + part * 8;
                    anvil_cp_async16(k_s + key * kst + part * 8, row >= 0 ? kc + off : kc, row >= 0);
                    anvil_cp_async16(v_s + key * kst + part * 8, row >= 0 ? vc + off : vc, row >= 0);
                }
            } else {
                const int pieces = hd / 8;
#pragma unroll
                for (int i = 0; i < KC; i++) {
                    if (i * 16 < hd) {
                        const int c = threadIdx.x + i * MMA_WARPS * 32, key = c / pieces, part = c - key * pieces;
                        const int row = kr[key];
                        const long long off = (long long)row * kw + (long long)g * hd + part * 8;
                        anvil_cp_async16(k_s + key * kst + part * 8, row >= 0 ? kc + off : kc, row >= 0);
                        anvil_cp_async16(v_s + key * kst + part * 8, row >= 0 ? vc + off : vc, row >= 0);
                    }
                }
            }
            anvil_cp_async_commit();
        };

        const int n_tiles = khi > klo ? (khi - klo + MMA_BN - 1) / MMA_BN : 0;
        if (n_tiles > 0) {
            /* the rows of tiles 0 and 1, then tile 0 on its way */
            const int r0 = row_of(klo), r1 = n_tiles > 1 ? row_of(klo + MMA_BN) : -1;
            put_row(0, r0); /* the last reads of both slots were before the barriers above */
            put_row(1, r1);
            __syncthreads();
            issue(0);
        }
        for (int it = 0; it < n_tiles; it++) {
            const int kt = klo + it * MMA_BN;
            /* the next tile on its way while this one is used */
            if (it + 1 < n_tiles) {
                issue((it + 1) & 1);
                anvil_cp_async_wait<1>();
            } else {
                anvil_cp_async_wait<0>();
            }
            /* the rows of tile it + 2, into the slot tile it's issue has
             * finished reading; stored after the arithmetic */
            const int next_row = it + 2 < n_tiles ? row_of(kt + 2 * MMA_BN) : -1;
            __syncthreads(); /* tile it is in shared memory for every thread */
            const uint16_t *k_s = smem + (it & 1) * stage_elems, *v_s = k_s + MMA_BN * kst;
            if constexpr (F8) {
                /* the staged fp8 rows into the bf16/f16 tile (its last
                 * readers passed the barrier that ended the previous tile) */
                constexpr int P8 = HDM / 16;
                const uint8_t *src = stg8 + (it & 1) * STAGE8;
                for (int c = threadIdx.x; c < 2 * MMA_BN * P8; c += MMA_WARPS * 32) {
                    const int row = c / P8, pc = c - row * P8;
                    anvil_fp8x16_to<T>(*reinterpret_cast<const uint4 *>(src + row * HDM + pc * 16),
                                       tile8 + row * kst + pc * 16);
                }
                __syncthreads();
                k_s = tile8;
                v_s = tile8 + MMA_BN * kst;
            }
            if (any) {
            /* S = Q K^T for 16 MT rows x 64 keys: 8 tiles of 8 keys */
            float sc[MT][8][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nt = 0; nt < 8; nt++)
                    sc[mt][nt][0] = sc[mt][nt][1] = sc[mt][nt][2] = sc[mt][nt][3] = 0.0f;
            if constexpr (MT == 1) {
#pragma unroll
                for (int nt = 0; nt < 8; nt++) {
                    /* B operands of two 16-wide chunks of head_dim per ldmatrix
                     * (matrices: dims +0, +8, +16, +24 of keys nt*8..+8): one
                     * instruction where 32-bit loads took four */
                    const uint16_t *kl = k_s + (nt * 8 + (lane & 7)) * kst + (lane >> 3) * 8;
                    const uint16_t *kr = k_s + (nt * 8 + gq) * kst + 2 * tq;
#pragma unroll
                    for (int kc = 0; kc < KC; kc += 2) {
                        if ((kc + 1) * 16 < hd) {
                            uint32_t kb[4];
                            anvil_ldmatrix_x4(kb, kl + kc * 16);
                            anvil_mma16816<T>(sc[0][nt], qf[kc], kb[0], kb[1]);
                            anvil_mma16816<T>(sc[0][nt], qf[kc + 1], kb[2], kb[3]);
                        } else if (kc * 16 < hd) { /* an odd last chunk */
                            const uint32_t b0 = *reinterpret_cast<const uint32_t *>(kr + kc * 16);
                            const uint32_t b1 = *reinterpret_cast<const uint32_t *>(kr + kc * 16 + 8);
                            anvil_mma16816<T>(sc[0][nt], qf[kc], b0, b1);
                        }
                    }
                }
            } else {
                /* per pair of 16-wide chunks: both m-tiles' Q fragments by
                 * ldmatrix (lane l: row l % 16, columns + 8 (l / 16)), then
                 * each K fragment pair into four mma */
#pragma unroll
                for (int kc = 0; kc < KC; kc += 2) {
                    uint32_t qa[MT][2][4];
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        const uint16_t *qr = q_s + (warp * 16 * MT + mt * 16 + (lane & 15)) * kst + (lane >> 4) * 8;
                        anvil_ldmatrix_x4(qa[mt][0], qr + kc * 16);
                        anvil_ldmatrix_x4(qa[mt][1], qr + kc * 16 + 16);
                    }
#pragma unroll
                    for (int nt = 0; nt < 8; nt++) {
                        const uint16_t *kl = k_s + (nt * 8 + (lane & 7)) * kst + (lane >> 3) * 8;
                        uint32_t kb[4];
                        anvil_ldmatrix_x4(kb, kl + kc * 16);
#pragma unroll
                        for (int mt = 0; mt < MT; mt++) {
                            anvil_mma16816<T>(sc[mt][nt], qa[mt][0], kb[0], kb[1]);
                            anvil_mma16816<T>(sc[mt][nt], qa[mt][1], kb[2], kb[3]);
                        }
                    }
                }
            }
            /* Soft-capped scores (Gemma 2): s -> cap tanh(s / cap) on the
             * scaled score, kept in raw units (divided by the scale again)
             * so the scale stays folded into the exponent below; before
             * the mask, which must stay -inf. Monotone, so the tile max
             * below still commutes with it. Uniform: a kernel parameter. */
            if (a.softcap > 0.0f) {
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int nt = 0; nt < 8; nt++)
#pragma unroll
                        for (int e = 0; e < 4; e++)
                            sc[mt][nt][e] = cap_out * tanhf(sc[mt][nt][e] * cap_in);
            }
            /* mask, and the tile max of each of the two rows, on the raw
             * scores: the scale (with log2 e, so each p is one exp2) goes
             * into the exponent's FFMA below, max commuting with a positive
             * scale. A tile inside every row's window (most of a long
             * prompt) needs no mask: the same for the whole warp. */
            const bool full = __all_sync(FULL_MASK, all_rows && kt + MMA_BN <= khi && kt >= lo_max &&
                                                        kt + MMA_BN - 1 <= p_min);
            uint32_t pf[MT][4][4];
            float cand[MT][2];
            bool up[MT][2], any_up = false;
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                if (!full) {
#pragma unroll
                    for (int nt = 0; nt < 8; nt++) {
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int kj = kt + nt * 8 + 2 * tq + (e & 1), r = my_row(mt, e >> 1);
                            const bool valid = in_seg(r) && kj < khi && kj >= row_lo[r] && kj <= row_p[r];
                            if (!valid)
                                sc[mt][nt][e] = -INFINITY;
                        }
                    }
                }
                float mt0 = -INFINITY, mt1 = -INFINITY;
#pragma unroll
                for (int nt = 0; nt < 8; nt++) {
                    mt0 = fmaxf(mt0, fmaxf(sc[mt][nt][0], sc[mt][nt][1]));
                    mt1 = fmaxf(mt1, fmaxf(sc[mt][nt][2], sc[mt][nt][3]));
                }
                mt0 = fmaxf(mt0, __shfl_xor_sync(FULL_MASK, mt0, 1));
                mt0 = fmaxf(mt0, __shfl_xor_sync(FULL_MASK, mt0, 2));
                mt1 = fmaxf(mt1, __shfl_xor_sync(FULL_MASK, mt1, 1));
                mt1 = fmaxf(mt1, __shfl_xor_sync(FULL_MASK, mt1, 2));
                /* Running maxima in log2 units, moved only when a row's
                 * maximum grows by more than 2^RESCALE_LOG2 (the trick of
                 * FlashAttention-4): under a stale maximum a p = 2^(s - m)
                 * stays below 2^8, harmless in f32 and in P's bf16/f16,
                 * and the result O / l is the same. Most tiles of a long
                 * row then skip the multiplies of O (and P V's wait on
                 * them): the warp rescales only when one of its rows must. */
                cand[mt][0] = fmaxf(m[mt][0], mt0 * sl2);
                cand[mt][1] = fmaxf(m[mt][1], mt1 * sl2);
                up[mt][0] = cand[mt][0] > m[mt][0] + RESCALE_LOG2;
                up[mt][1] = cand[mt][1] > m[mt][1] + RESCALE_LOG2;
                any_up |= up[mt][0] || up[mt][1];
            }
            if (__any_sync(FULL_MASK, any_up)) {
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    /* a first finite maximum: c = 2^-inf = 0 (O and l are still 0) */
                    const float c0 = up[mt][0] ? anvil_exp2_ftz(m[mt][0] - cand[mt][0]) : 1.0f;
                    const float c1 = up[mt][1] ? anvil_exp2_ftz(m[mt][1] - cand[mt][1]) : 1.0f;
                    m[mt][0] = up[mt][0] ? cand[mt][0] : m[mt][0];
                    m[mt][1] = up[mt][1] ? cand[mt][1] : m[mt][1];
                    l[mt][0] *= c0;
                    l[mt][1] *= c1;
#pragma unroll
                    for (int i = 0; i < NTO; i++) {
                        o[mt][i][0] *= c0;
                        o[mt][i][1] *= c0;
                        o[mt][i][2] *= c1;
                        o[mt][i][3] *= c1;
                    }
                }
            }
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                /* P, and P as A fragments: the accumulator layout of two key tiles is one A operand.
                 * A row with no valid key yet has m = -inf: its p are 0 (exp2(-inf)), never NaN. */
                const float ms0 = m[mt][0] == -INFINITY ? 0.0f : m[mt][0];
                const float ms1 = m[mt][1] == -INFINITY ? 0.0f : m[mt][1];
#pragma unroll
                for (int nt = 0; nt < 8; nt++) {
                    const float pr0 = anvil_exp2_ftz(fmaf(sc[mt][nt][0], sl2, -ms0));
                    const float pr1 = anvil_exp2_ftz(fmaf(sc[mt][nt][1], sl2, -ms0));
                    const float pr2 = anvil_exp2_ftz(fmaf(sc[mt][nt][2], sl2, -ms1));
                    const float pr3 = anvil_exp2_ftz(fmaf(sc[mt][nt][3], sl2, -ms1));
                    l[mt][0] += pr0 + pr1;
                    l[mt][1] += pr2 + pr3;
                    const int kc2 = nt >> 1, hi = (nt & 1) * 2;
                    pf[mt][kc2][hi + 0] = anvil_pack2<T>(pr0, pr1);
                    pf[mt][kc2][hi + 1] = anvil_pack2<T>(pr2, pr3);
                }
            }
            /* O += P V: the B operands (16 keys x 8 dims) of two dim tiles per
             * transposed ldmatrix (matrices: keys +0/+8, dims +0/+8), each
             * into every m-tile */
#pragma unroll
            for (int kc2 = 0; kc2 < 4; kc2++) {
                const uint16_t *vr = v_s + (kc2 * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * kst + (lane >> 4) * 8;
#pragma unroll
                for (int nt = 0; nt < NTO; nt += 2) {
                    if (nt * 8 < hd) {
                        uint32_t vb[4];
                        anvil_ldmatrix_x4_trans(vb, vr + nt * 8);
#pragma unroll
                        for (int mt = 0; mt < MT; mt++) {
                            anvil_mma16816<T>(o[mt][nt], pf[mt][kc2], vb[0], vb[1]);
                            anvil_mma16816<T>(o[mt][nt + 1], pf[mt][kc2], vb[2], vb[3]);
                        }
                    }
                }
            }
            } /* any */
            put_row(it & 1, next_row);
            __syncthreads(); /* stage it & 1 is free for tile it + 2, whose rows are in slot it & 1 */
        }
        seg_begin = seg_end;
    }

    /* the row sums over the quad, then out = O / l */
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float lh = l[mt][h];
            lh += __shfl_xor_sync(FULL_MASK, lh, 1);
            lh += __shfl_xor_sync(FULL_MASK, lh, 2);
            float inv = lh > 0.0f ? 1.0f / lh : 0.0f;
            if constexpr (F8)
                inv *= a.v_scale; /* the values were fp8(v / v_scale) */
            const int r = my_row(mt, h), t = row_t[r];
            T *op = t >= 0 ? (T *)a.out + (int64_t)t * qw + (int64_t)row_h[r] * hd : nullptr;
            if (op == nullptr)
                continue;
#pragma unroll
            for (int nt = 0; nt < NTO; nt++) {
                if (nt * 8 < hd) {
                    const int d = nt * 8 + 2 * tq;
                    *reinterpret_cast<uint32_t *>(op + d) =
                        anvil_pack2<T>(o[mt][nt][2 * h] * inv, o[mt][nt][2 * h + 1] * inv);
                }
            }
        }
    }
}

/* shared memory: 2 stages of K and V tiles (+ the Q rows with MT 2), rows padded by 8, 2 bytes an element;
 * with an fp8 cache, 2 stages of fp8 K and V rows and one converted tile */
static size_t prefill_smem(int hd, int mt, bool f8 = false)
{
    const size_t q = (mt == 2 ? MMA_ROWS * 2 : 0) * (size_t)(hd + 8) * 2;
    if (f8)
        return 2 * 2 * MMA_BN * (size_t)hd + 2 * MMA_BN * (size_t)(hd + 8) * 2 + q;
    return (size_t)(2 * 2 * MMA_BN) * (size_t)(hd + 8) * 2 + q;
}

template <typename T, int HDM, bool EXACT, int MT, bool F8 = false>
static anvil_status launch_exact(cudaStream_t stream, const anvil_cuda_attn *a, size_t smem_optin, dim3 grid, int gh,
                                 int qt, int n_hc)
{
    const size_t smem = prefill_smem(a->head_dim, MT, F8);
    CHECK(smem <= smem_optin, ANVIL_ERR_UNSUPPORTED, "attention: head_dim %d needs %zu bytes of shared memory",
          a->head_dim, smem);
    if (smem > 48 * 1024)
        TRY(anvil_cuda_status(cudaFuncSetAttribute(anvil_attn_prefill_mma_kernel<T, HDM, EXACT, MT, F8>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                              "attention: shared memory limit", __FILE__, __LINE__));
    anvil_attn_prefill_mma_kernel<T, HDM, EXACT, MT, F8><<<grid, MMA_WARPS * 32, smem, stream>>>(*a, gh, qt, n_hc);
    return ANVIL_CUDA_LAUNCHED("attention prefill (mma) kernel");
}

template <typename T, int HDM>
static anvil_status launch(cudaStream_t stream, const anvil_cuda_attn *a, size_t smem_optin, dim3 grid, int gh,
                           int qt, int n_hc, int mt)
{
    if (a->cache_dt == ANVIL_DTYPE_F8_E4M3) /* head_dim == HDM (prefill_mma_ok); two m-tiles, to keep the compile time */
        return launch_exact<T, HDM, true, 2, true>(stream, a, smem_optin, grid, gh, qt, n_hc);
    if (a->head_dim != HDM)
        return launch_exact<T, HDM, false, 1>(stream, a, smem_optin, grid, gh, qt, n_hc);
    if (mt == 2)
        return launch_exact<T, HDM, true, 2>(stream, a, smem_optin, grid, gh, qt, n_hc);
    return launch_exact<T, HDM, true, 1>(stream, a, smem_optin, grid, gh, qt, n_hc);
}

extern "C" int anvil_cuda_attn_prefill_mma_ok(const anvil_cuda_attn *a)
{
    if (a->cache_dt == ANVIL_DTYPE_F8_E4M3) /* the fp8 kernels: head_dim a template's */
        return (a->dt == ANVIL_DTYPE_BF16 || a->dt == ANVIL_DTYPE_F16) &&
               (a->head_dim == 32 || a->head_dim == 64 || a->head_dim == 128);
    return (a->dt == ANVIL_DTYPE_BF16 || a->dt == ANVIL_DTYPE_F16) && a->cache_dt == a->dt && a->head_dim % 16 == 0 &&
           a->head_dim <= 128;
}

extern "C" anvil_status anvil_cuda_launch_attn_prefill_mma(cudaStream_t stream, const anvil_cuda_attn *a,
                                                           size_t smem_optin, int rows)
{
    CHECK(anvil_cuda_attn_prefill_mma_ok(a), ANVIL_ERR_UNSUPPORTED,
          "attention (mma): %s with head_dim %d (bf16/f16, multiples of 16 up to 128)", anvil_dtype_name(a->dt),
          a->head_dim);
    CHECK(rows == 0 || rows == 64 || rows == 128, ANVIL_ERR_INVALID_ARG, "attention (mma): %d rows a block (64, 128)",
          rows);
    if (a->n_tokens == 0)
        return ANVIL_OK;
    /* two m-tiles a warp (the default) only where head_dim is a
     * template's (32, 64, 128) */
    const int hd = a->head_dim;
    const int mt = (rows != 64 || a->cache_dt == ANVIL_DTYPE_F8_E4M3) && (hd == 32 || hd == 64 || hd == 128) ? 2 : 1;
    const int block_rows = MMA_ROWS * mt;
    const int group = a->n_heads / a->n_kv_heads;
    const int gh = group < block_rows ? group : block_rows;
    const int n_hc = (group + gh - 1) / gh;
    const int qt = block_rows / gh;
    CHECK((int64_t)a->n_kv_heads * n_hc <= 65535, ANVIL_ERR_UNSUPPORTED, "attention: %d KV heads x %d",
          a->n_kv_heads, n_hc);
    const dim3 grid((unsigned)((a->n_tokens + qt - 1) / qt), (unsigned)(a->n_kv_heads * n_hc), 1);
    if (a->dt == ANVIL_DTYPE_BF16) {
        if (hd <= 32)
            return launch<__nv_bfloat16, 32>(stream, a, smem_optin, grid, gh, qt, n_hc, mt);
        if (hd <= 64)
            return launch<__nv_bfloat16, 64>(stream, a, smem_optin, grid, gh, qt, n_hc, mt);
        return launch<__nv_bfloat16, 128>(stream, a, smem_optin, grid, gh, qt, n_hc, mt);
    }
    if (hd <= 32)
        return launch<__half, 32>(stream, a, smem_optin, grid, gh, qt, n_hc, mt);
    if (hd <= 64)
        return launch<__half, 64>(stream, a, smem_optin, grid, gh, qt, n_hc, mt);
    return launch<__half, 128>(stream, a, smem_optin, grid, gh, qt, n_hc, mt);
}
