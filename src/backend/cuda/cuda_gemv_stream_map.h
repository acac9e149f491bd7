/*
 * The schedule and the shared-memory layout of the streaming quantized GEMV
 * (cuda_gemv_stream_quant.cu, issue 15), in plain C so that the kernel and
 * a CPU test (tests/cuda/test_cuda_stream_map.c) run the same code.
 *
 * Units (as the 16-bit tensor-core GEMV, cuda_gemv_mma16_map.h):
 *   - a tile: 16 weight rows of one part (q, k, v; gate, up);
 *   - a step: 64 bytes of each of a tile's rows (1 KB: 128 int4 / 64 int8
 *     or fp8 columns), one warp's mma16 step;
 *   - a stage: up to GSQ_STAGE_STEPS consecutive steps of one tile (8 KB),
 *     moved by 16-byte cp.async copies into one slot of a GSQ_STAGES deep
 *     shared-memory ring; warp w computes step w of a stage;
 *   - an item: split sp (of ks) of a tile, the steps
 *     [steps sp / ks, steps (sp + 1) / ks) of its rows. ks depends on the
 *     part's own shape (K, N) and the device's resident blocks only, never
 *     on the other parts of a launch: q/k/v and gate/up fused give the
 *     separate launches' numbers bit for bit.
 * Items are numbered part by part, tile by tile, split fastest; block b of
 * B takes the contiguous items [I b / B, I (b + 1) / B), so every block
 * streams about the same bytes to the end of the launch and walks each
 * tile's K in order. An item's partial (16 rows x 8 x rows, f32, the
 * mma's D layout) goes to a workspace; the block that brings a tile's
 * count of finished items to ks (silu: 2 ks, gate and up) sums the splits
 * in the order 0..ks-1, finishes the outputs and sets the count back to
 * zero (graph replays find it zero). A part with ks = 1 and no silu
 * writes its outputs directly.
 */
#ifndef ANVIL_CUDA_GEMV_STREAM_MAP_H
#define ANVIL_CUDA_GEMV_STREAM_MAP_H

#include <stdint.h>

#ifdef __CUDACC__
#define GSQ_HD __host__ __device__ __forceinline__
#else
#define GSQ_HD static inline
#endif

#define GSQ_STEP           64 /* bytes of a weight row a step */
#define GSQ_TILE_ROWS      16 /* weight rows a tile (the mma's m16) */
#define GSQ_STAGE_STEPS    8  /* steps a stage: one a warp */
#define GSQ_WARPS          GSQ_STAGE_STEPS
#define GSQ_THREADS        (GSQ_WARPS * 32)
#define GSQ_STAGES         6 /* ring slots: 5 stages (40 KB of weights) in flight a block */
#define GSQ_STAGE_W_BYTES  (GSQ_TILE_ROWS * GSQ_STEP * GSQ_STAGE_STEPS) /* 8 KB */
#define GSQ_PIECES         (GSQ_STAGE_W_BYTES / 16)                     /* 16-byte copies a stage: 512 */
#define GSQ_SPS            4 /* scale slots a step a row (one a lane's piece) */
#define GSQ_ITEMS_A_BLOCK  4 /* items aimed at a block: the last item's imbalance <= 1/4 */
#define GSQ_MIN_ITEM_STEPS 8 /* an item is at least a stage where K allows */
#define GSQ_MAX_PARTS      4
#define GSQ_MAX_ROWS       8 /* x rows: the mma's n8 */
#define GSQ_XPAD           8 /* 16-bit elements after each shared row of x */
#define GSQ_MAX_BLOCKS_SM  2

/* ---------------------------------------------------------------- the schedule */

/* Splits of K for a part of `tiles` tiles of `steps` steps a row, on a
 * device where `blocks` blocks of the kernel are resident: enough items for
 * GSQ_ITEMS_A_BLOCK a block from this part alone, each at least
 * GSQ_MIN_ITEM_STEPS steps (1 where the row has fewer). */
GSQ_HD int gsq_splits(int64_t tiles, int64_t steps, int64_t blocks)
{
    if (tiles < 1 || steps < 1 || blocks < 1)
        return 1;
    const int64_t want = (GSQ_ITEMS_A_BLOCK * blocks + tiles - 1) / tiles;
    int64_t cap = steps / GSQ_MIN_ITEM_STEPS;
    if (cap < 1)
        cap = 1;
    const int64_t ks = want < cap ? want : cap;
    return ks < 1 ? 1 : (int)ks;
}

/* The steps [*s0, *s1) of split sp of ks. */
GSQ_HD void gsq_split_steps(int64_t steps, int ks, int sp, int64_t *s0, int64_t *s1)
{
    *s0 = steps * sp / ks;
    *s1 = steps * (sp + 1) / ks;
}

/* Stages of the steps [s0, s1). */
GSQ_HD int64_t gsq_stages(int64_t s0, int64_t s1)
{
    return (s1 - s0 + GSQ_STAGE_STEPS - 1) / GSQ_STAGE_STEPS;
}

/* Block b's items [*i0, *i1) of I on B blocks. */
GSQ_HD void gsq_block_items(int64_t I, int64_t B, int64_t b, int64_t *i0, int64_t *i1)
{
    *i0 = I * b / B;
    *i1 = I * (b + 1) / B;
}

/* Item i: its part (item_end[p] the items of parts 0..p together), tile
 * and split (ks[p] splits in part p). */
GSQ_HD void gsq_item(const int *item_end, const int *ks, int n_parts, int64_t i, int *p, int *tile, int *sp)
{
    int q = 0;
    while (q + 1 < n_parts && i >= item_end[q])
        q++;
    const int64_t j = i - (q > 0 ? item_end[q - 1] : 0);
    *p = q;
    *tile = (int)(j / ks[q]);
    *sp = (int)(j % ks[q]);
}

/* The item number of part p's tile and split. */
GSQ_HD int64_t gsq_item_of(const int *item_end, const int *ks, int p, int tile, int sp)
{
    return (p > 0 ? item_end[p - 1] : 0) + (int64_t)tile * ks[p] + sp;
}

/* The moe experts' form (cuda_moe_quant.cu): the active experts' slots one
 * after the other, each `parts` parts (gate and up: 2; down: 1) of `tiles`
 * tiles of `ks` splits; item i is (slot, part, tile, split). */
GSQ_HD void gsq_moe_item(int64_t i, int parts, int tiles, int ks, int *slot, int *part, int *tile, int *sp)
{
    const int64_t per = (int64_t)parts * tiles * ks, j = i % per, jj = j % ((int64_t)tiles * ks);
    *slot = (int)(i / per);
    *part = (int)(j / ((int64_t)tiles * ks));
    *tile = (int)(jj / ks);
    *sp = (int)(jj % ks);
}

GSQ_HD int64_t gsq_moe_item_of(int parts, int tiles, int ks, int slot, int part, int tile, int sp)
{
    return (((int64_t)slot * parts + part) * tiles + tile) * ks + sp;
}

/* Whether part p of the launch writes its outputs without the workspace. */
GSQ_HD int gsq_direct(int ks, int silu)
{
    return ks == 1 && !silu;
}

/* Blocks resident an SM for `smem` bytes of dynamic shared memory a block
 * (sm_bytes a multiprocessor, 1 KB a block reserved by the driver). */
GSQ_HD int gsq_blocks_sm(int64_t smem, int64_t sm_bytes)
{
    const int64_t n = sm_bytes / (smem + 1024);
    return n < 1 ? 1 : n > GSQ_MAX_BLOCKS_SM ? GSQ_MAX_BLOCKS_SM : (int)n;
}

/* ---------------------------------------------------------------- shared memory */

/* Scale slots a step a row: 0 for fp8 (per channel, after the sums), 1
 * where the step lies in one group, GSQ_SPS where int4 groups of 32 / 64
 * give each lane's 32-element piece its own (fold). */
GSQ_HD int gsq_sps(int fp8, int fold)
{
    return fp8 ? 0 : fold ? GSQ_SPS : 1;
}

/* Bytes of one ring slot: the weights, the scales (f32), the zero points'
 * words (int4 with zero points: the 4-byte word holding each). */
GSQ_HD int64_t gsq_slot_bytes(int sps, int zp)
{
    return GSQ_STAGE_W_BYTES + (int64_t)GSQ_STAGE_STEPS * GSQ_TILE_ROWS * sps * 4 * (zp ? 2 : 1);
}

/* Bytes of the shared rows of x: [T][K + GSQ_XPAD] 16-bit elements (fp8: x's
 * codes as f16; int: x as it is), rounded to 16. */
GSQ_HD int64_t gsq_x_bytes(int T, int64_t K)
{
    return ((int64_t)T * (K + GSQ_XPAD) * 2 + 15) / 16 * 16;
}

/* The rest: the rows' sx [8], the warps' row maxima [8 warps][8], the
 * warps' partials [8][128], the split counter's answer [4]. */
GSQ_HD int64_t gsq_misc_bytes(void)
{
    return (8 + GSQ_WARPS * 8 + GSQ_WARPS * 128 + 4) * 4;
}

GSQ_HD int64_t gsq_smem_bytes(int T, int64_t K, int sps, int zp)
{
    return GSQ_STAGES * gsq_slot_bytes(sps, zp) + gsq_x_bytes(T, K) + gsq_misc_bytes();
}

/* Copy `piece` (0..GSQ_PIECES-1) of a stage: 16 bytes at byte 16 c of
 * step `step` of tile row `row`; consecutive pieces walk a row's bytes
 * (512 contiguous bytes of each row for 32 threads). */
GSQ_HD void gsq_piece(int piece, int *row, int *step, int *c)
{
    *row = piece / (4 * GSQ_STAGE_STEPS);
    const int q = piece % (4 * GSQ_STAGE_STEPS);
    *step = q / 4;
    *c = q % 4;
}

/* Its byte in the slot: [step][row][64 bytes], so that lane (g, t) of warp
 * `step` finds rows g and g + 8 of its step at 16 t as the mma16 GEMV's
 * lanes load them (512 contiguous bytes a row half: no bank conflicts). */
GSQ_HD int gsq_w_off(int step, int row, int c)
{
    return (step * GSQ_TILE_ROWS + row) * GSQ_STEP + 16 * c;
}

/* Scale slot (step, row, j) of a slot's scales (f32 index). */
GSQ_HD int gsq_s_off(int sps, int step, int row, int j)
{
    return (step * GSQ_TILE_ROWS + row) * sps + j;
}

/* The column whose group scale slot j of a step holds: the step's first
 * column (sps 1) or that of lane piece j (sps GSQ_SPS; piece_elems 32 for
 * int4). */
GSQ_HD int64_t gsq_s_col(int64_t step_abs, int j, int step_elems, int piece_elems)
{
    return step_abs * step_elems + (int64_t)j * piece_elems;
}

/* A zero point's byte within the 4-byte word holding it (the words copied
 * from index & ~3; the zero points' rows must then be 4-byte aligned:
 * gsq_zp_ok). */
GSQ_HD uint32_t gsq_zp_byte(uint32_t word, int64_t index)
{
    return (word >> (8 * (index & 3))) & 0xffu;
}

/* Whether zero points of G a row at address `addr` can be copied by words:
 * every row starts on a word, so no word reaches past the array. */
GSQ_HD int gsq_zp_ok(uintptr_t addr, int64_t G)
{
    return (addr & 3) == 0 && G % 4 == 0;
}

#endif
