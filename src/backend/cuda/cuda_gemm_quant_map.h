/*
 * The tiling, shared-memory layout and fragment mapping of the quantized
 * GEMM on tensor cores (cuda_gemm_quant.cu), in plain C so that the kernel
 * and a CPU test (tests/backend/test_cuda_gemm_quant_map.c) run the same
 * code. The bit tricks that turn stored int4 / int8 codes into 16-bit
 * values are the 16-bit GEMV's (cuda_gemv_mma16_map.h, gmw_*), reused.
 *
 * out[M, N] = x[M, K] W^T. The weight is the mma's A operand (16 weight
 * rows, its m16), x its B operand (8 tokens, its n8): D[n][t] = out[t][n].
 * mma.sync.aligned.m16n8k16 (PTX ISA "Matrix Fragments for mma.m16n8k16"),
 * g = lane / 4, t = lane % 4:
 *   A: a0 row g, k 2t, 2t + 1; a1 row g + 8; a2 row g, k 2t + 8, 2t + 9; a3 row g + 8.
 *   B: b0 k 2t, 2t + 1, col g; b1 k 2t + 8, 2t + 9, col g.
 *   D: d0, d1 row g, cols 2t, 2t + 1; d2, d3 row g + 8.
 *
 * A K step is 64 bytes of every weight row as stored (docs/quantization.md:
 * int4 two a byte, low nibble first: 128 columns; int8: 64), copied by
 * cp.async into a stage of the shared-memory ring unchanged; no repacked
 * layout. A row's step is 16 words; lane (g, t) reads word 4 j + t (j =
 * 0..3, "its word j") of rows g and g + 8: word j of the four lanes t of a
 * row are 16 contiguous bytes, columns
 *   int4: 32 j .. 32 j + 31 of the step (lane t: 32 j + 8 t .. + 7),
 *   int8: 16 j .. 16 j + 15 (lane t: 16 j + 4 t .. + 3),
 * and feed int4 mmas 2 j and 2 j + 1 (int8: mma j) of the step. So every
 * mma lies inside one run of 32 (int4) / 16 (int8) columns: inside one
 * scale group whenever the group is a multiple of that, and the products
 * of one group can be summed apart and scaled once in f32 (the kernel's
 * "segments", below). Inside a word the elements stand for the mma's
 * logical k as in the GEMV (gmw_elem: int4 pairs (e0, e4), (e1, e5), ...
 * from the magic-number conversion, int8 (e0, e1), (e2, e3)); x's B
 * fragments are built to match from x's 8 (int4) / 4 (int8) natural
 * elements at the same columns (gmw_u4_xpair, a byte permutation; int8:
 * natural pairs).
 *
 * Shared memory of a stage: the weight tile [GQM_BN rows][64 bytes], its
 * 16-byte chunks XOR-swizzled by row so that the 32 lanes' 4-byte reads of
 * one word j hit 32 different banks; x's tile [TM tokens][the step's
 * columns] in the activation dtype (int4 256 bytes a row, int8 128), its
 * chunks swizzled so that a warp's 16-byte (int4) / 8-byte (int8) reads
 * are conflict-free too; the step's scales and zero points [GQM_BN][nseg]
 * as f32 (see the kernel).
 *
 * Scale segments: a step is cut into nseg = 4 / wps runs of wps words
 * (wps 1, 2 or 4: the largest whose columns divide the group); each
 * segment's products are summed by the mma in f32 starting from zero and
 * then added to the accumulator times the segment's group scale (fmaf), so
 * no 16-bit rounding of the scale or of (v - z) s is ever made.
 */
#ifndef ANVIL_CUDA_GEMM_QUANT_MAP_H
#define ANVIL_CUDA_GEMM_QUANT_MAP_H

#include <stdint.h>

#include "backend/cuda/cuda_gemv_mma16_map.h"

/* GQM_CX: also a constant expression in CUDA C++ (template arguments) */
#ifdef __CUDACC__
#define GQM_HD __host__ __device__ __forceinline__
#define GQM_CX __host__ __device__ __forceinline__ constexpr
#else
#define GQM_HD static inline
#define GQM_CX static inline
#endif

#define GQM_BN         128 /* weight rows (output columns) a block */
#define GQM_THREADS    256 /* 8 warps */
#define GQM_STEP_BYTES 64  /* bytes of a weight row a K step */

/* columns of a step (gmw: int4 128, int8 64) */
GQM_CX int gqm_step_elems(int s) { return s == GMW_U4 ? 128 : 64; }
/* columns one word j of the 4 lanes of a row covers: int4 32, int8 16 */
GQM_CX int gqm_word_cols(int s) { return s == GMW_U4 ? 32 : 16; }
/* elements of a lane's word: int4 8, int8 4 */
GQM_CX int gqm_word_elems(int s) { return s == GMW_U4 ? 8 : 4; }

/* Warps along the weight rows (the rest along the tokens) for a tile of TM
 * tokens: 8 for TM <= 32 (a warp: 16 rows, all TM tokens), else 4 (32
 * rows, TM / 2 tokens): fewer x fragments a warp per mma. */
GQM_CX int gqm_warps_n(int tm) { return tm <= 32 ? 8 : 4; }
GQM_CX int gqm_mw(int tm) { return 8 / gqm_warps_n(tm); }                     /* m16 tiles a warp */
GQM_CX int gqm_nw(int tm) { return tm / (8 * (8 / gqm_warps_n(tm))); }       /* n8 tiles a warp */
/* the warp's first weight row and token of the block's tile */
GQM_CX int gqm_warp_row0(int tm, int warp) { return (warp % gqm_warps_n(tm)) * 16 * gqm_mw(tm); }
GQM_CX int gqm_warp_tok0(int tm, int warp) { return (warp / gqm_warps_n(tm)) * 8 * gqm_nw(tm); }

/* Ring stages: 4, 3 for 128-token tiles (shared memory; sm_80's 163 KB) */
GQM_CX int gqm_stages(int tm) { return tm >= 128 ? 3 : 4; }

/* ---------------------------------------------------------------- the weight tile */

/* Byte of a stage's weight tile where chunk c (0..3: bytes 16 c of the
 * step) of row r lands: chunk c ^ ((r / 2) % 4). Lane (g, t) reads word t
 * of chunk j of rows g (and g + 8): bank (16 (g % 2) + 4 (j ^ (g / 2 % 4))
 * + t) % 32, 32 distinct banks over the warp. */
GQM_HD int gqm_w_chunk_off(int r, int c) { return r * GQM_STEP_BYTES + 16 * (c ^ ((r >> 1) & 3)); }
/* byte offset of lane t's word j of row r */
GQM_HD int gqm_w_word_off(int r, int j, int t) { return gqm_w_chunk_off(r, j) + 4 * t; }

/* column (of the step) of element e of lane t's word j */
GQM_HD int gqm_w_col(int s, int j, int t, int e) { return j * gqm_word_cols(s) + t * gqm_word_elems(s) + e; }

/* the step's word (j) that mma m takes, and the column of its fragment
 * element (register r, half h) for lane t: the GEMV's element of the word */
GQM_HD int gqm_mma_word(int s, int m) { return s == GMW_U4 ? m >> 1 : m; }
GQM_HD int gqm_mma_col(int s, int m, int t, int r, int h)
{
    return gqm_w_col(s, gqm_mma_word(s, m), t, gmw_elem(s, m, r, h) % gqm_word_elems(s));
}

/* ---------------------------------------------------------------- the x tile */

/* bytes of a token's row of x in a stage (16-bit elements) and its 16-byte chunks */
GQM_CX int gqm_x_row_bytes(int s) { return 2 * gqm_step_elems(s); }
GQM_CX int gqm_x_chunks(int s) { return gqm_x_row_bytes(s) / 16; }

/* Byte of a stage's x tile where chunk c of token row r lands.
 * int4: lane (g, t) reads chunk 4 j + t (x's 8 columns of its word j) of
 *   row g; a 16-byte read serves 8 lanes (rows g, g + 1) a phase: rows of
 *   odd r have chunk bit 2 flipped, so those 8 chunks fill 8 bank groups.
 * int8: lane (g, t) reads 8 bytes (4 columns) at chunk 2 j + t / 2, half
 *   t % 2, of row g; an 8-byte read serves 16 lanes (rows g .. g + 3) a
 *   phase: chunk ^ 2 (r % 4) spreads those rows over the 8 bank groups. */
GQM_HD int gqm_x_chunk_off(int s, int r, int c)
{
    const int sw = s == GMW_U4 ? (r & 1) << 2 : (r & 3) << 1;
    return r * gqm_x_row_bytes(s) + 16 * (c ^ sw);
}
/* byte offset of x's columns for lane t's word j, token row r: int4 16
 * bytes (8 columns), int8 8 bytes (4 columns) */
GQM_HD int gqm_x_word_off(int s, int r, int j, int t)
{
    if (s == GMW_U4)
        return gqm_x_chunk_off(s, r, 4 * j + t);
    return gqm_x_chunk_off(s, r, 2 * j + (t >> 1)) + 8 * (t & 1);
}

/* The copies: thread tid copies chunk tid % 4 of weight row tid / 4 + i
 * gqm_w_rows_per_pass() and chunk tid % xch of x row tid / xch + i
 * gqm_x_rows_per_pass(s) of every step (i = 0, 1, ...). The swizzles
 * depend on a row's bits 1-2 (weights) and 0-1 (x) only, which a pass
 * keeps, so chunk i lands i passes of whole rows after chunk 0 (the
 * kernel adds that stride; test_cuda_gemm_quant_map checks it). */
GQM_CX int gqm_w_rows_per_pass(void) { return GQM_THREADS / 4; }
GQM_CX int gqm_x_rows_per_pass(int s) { return GQM_THREADS / gqm_x_chunks(s); }

/* ---------------------------------------------------------------- scale segments */

/* Words (j) a segment: the largest of 4, 2, 1 whose columns the group
 * (gs: columns a scale; K for per channel) is a multiple of; 0 where even
 * one word's columns are not (the kernel does not take the weight). */
GQM_HD int gqm_wps(int s, int64_t gs)
{
    const int wc = gqm_word_cols(s);
    if (gs % (4 * wc) == 0)
        return 4;
    if (gs % (2 * wc) == 0)
        return 2;
    return gs % wc == 0 ? 1 : 0;
}
GQM_CX int gqm_nseg(int wps) { return 4 / wps; }

/* Segments a group spans (gs a multiple of the segment's columns), and the
 * group (scale index along K) of segment sg of step st: segment st nseg +
 * sg of the row, counted from column 0 */
GQM_HD int64_t gqm_segs_per_group(int s, int wps, int64_t gs) { return gs / (wps * gqm_word_cols(s)); }
GQM_HD int64_t gqm_seg_group(int64_t st, int sg, int nseg, int64_t segs_per_group)
{
    return (st * nseg + sg) / segs_per_group;
}

/* ---------------------------------------------------------------- stage bytes */

/* a stage: weights, x, scales and zero points (f32 [GQM_BN][nseg] each) */
GQM_CX int gqm_stage_w_bytes(void) { return GQM_BN * GQM_STEP_BYTES; }
GQM_CX int gqm_stage_x_bytes(int s, int tm) { return tm * gqm_x_row_bytes(s); }
GQM_CX int gqm_stage_sz_bytes(int wps) { return 2 * GQM_BN * gqm_nseg(wps) * 4; }
GQM_CX int gqm_stage_bytes(int s, int tm, int wps)
{
    return gqm_stage_w_bytes() + gqm_stage_x_bytes(s, tm) + gqm_stage_sz_bytes(wps);
}
/* the epilogue's f32 tile [tm][GQM_BN + 4] (4 of padding: the D fragments'
 * writes hit distinct banks) reuses the ring */
GQM_CX int gqm_out_ld(void) { return GQM_BN + 4; }
GQM_CX int gqm_smem_bytes(int s, int tm, int wps)
{
    const int ring = gqm_stages(tm) * gqm_stage_bytes(s, tm, wps);
    const int epi = tm * gqm_out_ld() * 4;
    return ring > epi ? ring : epi;
}

/* ---------------------------------------------------------------- K splits */

#define GQM_MAX_SPLITS 16

/* Tokens a block for M rows (forced: 16, 64 or 128, else by M) */
GQM_HD int gqm_tile(int64_t M, int forced)
{
    if (forced == 16 || forced == 64 || forced == 128)
        return forced;
    return M <= 16 ? 16 : M <= 64 ? 64 : 128;
}

/* K splits of a launch (forced >= 1: that many, capped): where the tiles
 * alone leave the GPU short of blocks (two an SM for tm 16, one for 64
 * and 128: what their registers (<= 117 / 139-217 / 153-240, ptxas) and
 * shared memory let run at once), as
 * many splits as the idle slots take whole (floor: a split that adds a
 * wave costs more than it gives, with the partials' traffic and the sum),
 * each of at least 4 steps (the ring's depth), at most GQM_MAX_SPLITS;
 * then as many as cutting the steps into runs of ceil(steps / splits)
 * needs, so that no split is empty. */
GQM_HD int gqm_splits(int64_t M, int64_t N, int64_t steps, int tm, int n_sm, int forced)
{
    int64_t want;
    if (forced > 0) {
        want = forced;
    } else {
        const int64_t blocks = ((M + tm - 1) / tm) * ((N + GQM_BN - 1) / GQM_BN);
        const int64_t fill = (int64_t)(tm <= 16 ? 2 : 1) * (n_sm > 0 ? n_sm : 1);
        want = blocks >= fill ? 1 : fill / blocks;
        want = want < steps / 4 ? want : steps / 4;
    }
    want = want < GQM_MAX_SPLITS ? want : GQM_MAX_SPLITS;
    want = want < steps ? want : steps;
    if (want <= 1)
        return 1;
    const int64_t per = (steps + want - 1) / want;
    return (int)((steps + per - 1) / per);
}
/* steps of each split but the last (which has the rest, at least one) */
GQM_HD int64_t gqm_split_steps(int64_t steps, int splits) { return (steps + splits - 1) / splits; }

#endif
