/*
 * The tensor-core absorbed mla kernel's maps (cuda_mla_mma.cu), in plain C
 * so that the kernel and a CPU test (tests/backend/test_cuda_mla_map.c)
 * run the same code:
 *   - the splits of a token's context: split sp of n covers the keys
 *     [sp len, (sp + 1) len) up to its position p, the last one up to p
 *     whatever the host's span said (mla_split_keys), chosen on the host
 *     by mla_choose_splits (the cost model of cuda_attention.c's
 *     tensor-core decode: the kernel streams the latents);
 *   - the copy of a tile of MLA_BN cached rows of w values (16-byte pieces
 *     of 8 elements): thread x copies piece (x + i 128) % (w / 8) of row
 *     (x + i 128) / (w / 8), i = 0, 1, ... while the row is in the tile
 *     (mla_copy_row / mla_copy_piece; mla_copy_next steps from one to the
 *     next);
 *   - the ldmatrix row addresses (elements from a shared tile's start,
 *     rows ks elements apart) that each lane hands in for the mma
 *     m16n8k16 operands: A (16 query rows x 16 of the width) from Q, B
 *     (16 keys x 16 of the width, keys as the n index) from K, and B
 *     (16 keys x 16 latent dims, transposed) from V = the latent part of
 *     the same rows;
 *   - where element e (0..3) of a lane's accumulator fragment sits (row,
 *     column of the 16 x 8 tile), and of its A fragment (row, k).
 */
#ifndef ANVIL_CUDA_MLA_MAP_H
#define ANVIL_CUDA_MLA_MAP_H

#include <stdint.h>

#ifdef __CUDACC__
#define MLM_HD __host__ __device__ __forceinline__
#else
#define MLM_HD static inline
#endif

#define MLA_BN         64  /* cached rows (keys) a tile: 16 a warp for the scores */
#define MLA_ROWS       16  /* query heads a block: the mma M dimension */
#define MLA_WARPS      4
#define MLA_THREADS    (MLA_WARPS * 32)
#define MLA_MAX_SPLITS 64  /* the output kernel keeps a factor per split in shared memory */
/* The score tile's row stride in floats: a warp's accesses (8 rows x 4
 * column pairs) fall into 2-way bank conflicts instead of 8-way with 64 */
#define MLA_SS         (MLA_BN + 8)

/* ---------------------------------------------------------------- splits */

/* The keys [*kbeg, *kend) of split sp (of n, len keys each) for a token at
 * position p; empty when *kend <= *kbeg. */
MLM_HD void mla_split_keys(int32_t sp, int32_t n, int32_t len, int32_t p, int32_t *kbeg, int32_t *kend)
{
    const int64_t b = (int64_t)sp * len;
    const int64_t e = sp == n - 1 ? (int64_t)p + 1 : (b + len < (int64_t)p + 1 ? b + len : (int64_t)p + 1);
    *kbeg = (int32_t)(b < (int64_t)p + 1 ? b : (int64_t)p + 1);
    *kend = (int32_t)e;
}

/* Splits for `blocks` blocks a split (tokens x head chunks) of which
 * per_sm fit on each of n_sm SMs, contexts up to span: the n (up to one
 * split per tile, at most MLA_MAX_SPLITS, or `force` when > 0) with the
 * least (blocks n (len + tile)) / (blocks streaming at once), len whole
 * tiles. */
MLM_HD void mla_choose_splits(int64_t blocks, int32_t per_sm, int32_t n_sm, int32_t span, int32_t force,
                              int32_t *n_splits, int32_t *split_len)
{
    if (span < 1)
        span = 1;
    int64_t max_n = (span + MLA_BN - 1) / MLA_BN, n = 1;
    if (max_n > MLA_MAX_SPLITS)
        max_n = MLA_MAX_SPLITS;
    if (force > 0) {
        n = force < max_n ? force : max_n;
    } else {
        const int64_t wave = (int64_t)(per_sm > 0 ? per_sm : 1) * (n_sm > 0 ? n_sm : 1);
        double best = 0.0;
        for (int64_t c = 1; c <= max_n; c++) {
            const int64_t len = ((span + c - 1) / c + MLA_BN - 1) / MLA_BN * MLA_BN;
            const int64_t active = blocks * c < wave ? blocks * c : wave;
            const double cost = (double)(blocks * c) * (double)(len + MLA_BN) / (double)(active > 0 ? active : 1);
            if (c == 1 || cost < best) {
                best = cost;
                n = c;
            }
        }
    }
    int64_t len = (span + n - 1) / n;
    len = (len + MLA_BN - 1) / MLA_BN * MLA_BN;
    *split_len = (int32_t)len;
    *n_splits = (int32_t)((span + len - 1) / len);
}

/* ---------------------------------------------------------------- tile copies */

/* Copy i of thread x: the tile row and the 16-byte piece (of w / 8 a row). */
MLM_HD int32_t mla_copy_row(int32_t x, int32_t i, int32_t w) { return (x + i * MLA_THREADS) / (w / 8); }
MLM_HD int32_t mla_copy_piece(int32_t x, int32_t i, int32_t w) { return (x + i * MLA_THREADS) % (w / 8); }

/* From copy i's (row, piece) to copy i + 1's, P = w / 8 pieces a row,
 * without a division (the kernel's loop; the same as the two above) */
MLM_HD void mla_copy_next(int32_t *row, int32_t *piece, int32_t P)
{
    *row += MLA_THREADS / P;
    *piece += MLA_THREADS % P;
    if (*piece >= P) {
        *piece -= P;
        *row += 1;
    }
}

/* ---------------------------------------------------------------- ldmatrix addresses */

/* A (16 rows x 16 of the width, chunk kc) from Q [16][ks], non-transposed
 * x4: matrices rows 0-7 / 8-15 x columns +0 / +8, in the A fragment's
 * register order (a0 rows 0-7 k 0-7, a1 rows 8-15, a2 k 8-15, a3 both). */
MLM_HD int32_t mla_ldm_q(int32_t lane, int32_t kc, int32_t ks)
{
    return (((lane >> 3) & 1) * 8 + (lane & 7)) * ks + (lane >> 4) * 8 + kc * 16;
}

/* B of S = Q K^T for the 16 keys [16 warp, + 16) of the tile, chunk kc of
 * the width, non-transposed x4: registers 0, 1 the B fragment of keys
 * +0..7 (k 0-7, 8-15), 2, 3 of keys +8..15. */
MLM_HD int32_t mla_ldm_k(int32_t lane, int32_t warp, int32_t kc, int32_t ks)
{
    return (warp * 16 + ((lane >> 4) & 1) * 8 + (lane & 7)) * ks + ((lane >> 3) & 1) * 8 + kc * 16;
}

/* B of O += P V for the keys [16 kc, + 16) of the tile and the latent dims
 * [d, d + 16), transposed x4: registers 0, 1 the B fragment of dims
 * d..d+7 (keys 0-7, 8-15), 2, 3 of dims d+8..d+15. */
MLM_HD int32_t mla_ldm_v(int32_t lane, int32_t kc, int32_t d, int32_t ks)
{
    return (kc * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * ks + (lane >> 4) * 8 + d;
}

/* ---------------------------------------------------------------- fragments */

/* Accumulator element e of a lane (m16n8): row and column of the tile. */
MLM_HD int32_t mla_acc_row(int32_t lane, int32_t e) { return (lane >> 2) + (e >= 2 ? 8 : 0); }
MLM_HD int32_t mla_acc_col(int32_t lane, int32_t e) { return 2 * (lane & 3) + (e & 1); }

/* A fragment register r (0..3), half h (0 low, 1 high) of a lane: row and k. */
MLM_HD int32_t mla_a_row(int32_t lane, int32_t r) { return (lane >> 2) + (r & 1) * 8; }
MLM_HD int32_t mla_a_k(int32_t lane, int32_t r, int32_t h) { return 2 * (lane & 3) + (r >> 1) * 8 + h; }

#endif
