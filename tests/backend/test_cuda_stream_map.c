/*
 * The schedule and the shared-memory layout of the streaming quantized GEMV
 * (src/backend/cuda/cuda_gemv_stream_map.h), checked on the CPU: no GPU
 * needed, so a schedule or layout mistake shows up in every build.
 *
 *  - the split choice (gsq_splits) at the Llama-3-8B shapes and odd ones:
 *    at least 1, items no shorter than a stage where K allows, enough
 *    items for the resident blocks; it depends on the part alone;
 *  - the whole schedule walked as the kernel walks it (its cursor: blocks'
 *    item runs, items' stages, warps' steps): every (part, tile, step)
 *    computed exactly once, each block's items within one of the average,
 *    every tile's items counted to ks (silu: 2 ks) exactly once, the last
 *    arrival unique whatever the order; gsq_item / gsq_item_of inverse;
 *  - the stage copy map (gsq_piece, gsq_w_off): a bijection of the 512
 *    16-byte pieces onto the slot's 8 KB, and lane (g, t) of warp w finds
 *    at gsq_w_off(w, g, t) and (w, g + 8, t) the bytes of rows g, g + 8 of
 *    step w at 16 t, as the mma16 GEMV's lanes load them; 32 threads copy
 *    512 contiguous bytes of one row;
 *  - the scale slots: every element of a lane's piece (int4: 32 columns,
 *    int8 / fp8: 16) in the group whose scale its slot holds (fold: slot
 *    t; else slot 0 for the whole step);
 *  - the zero points' words: gsq_zp_byte of the aligned word is the byte;
 *  - shared memory: the 8B shapes' batch-1 launches fit an H100 block.
 */
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_gemv_mma16_map.h"
#include "backend/cuda/cuda_gemv_stream_map.h"
#include "testutil.h"

/* ---------------------------------------------------------------- splits */

static void test_splits(void **state)
{
    (void)state;
    const int64_t blocks = 264; /* an H100 at two blocks an SM */
    /* Llama-3-8B: rows N, columns K; int4 (steps K / 128) and 8-bit (K / 64) */
    const int64_t shapes[5][2] = {{6144, 4096}, {4096, 4096}, {14336, 4096}, {4096, 14336}, {128256, 4096}};
    for (int s = 0; s < 5; s++)
        for (int bits = 0; bits < 2; bits++) {
            const int64_t tiles = shapes[s][0] / 16, steps = bits ? shapes[s][1] / 64 : shapes[s][1] / 128;
            const int ks = gsq_splits(tiles, steps, blocks);
            assert_true(ks >= 1);
            assert_true(steps / ks >= GSQ_MIN_ITEM_STEPS);
            /* enough items, or the longest useful split */
            assert_true(tiles * ks >= GSQ_ITEMS_A_BLOCK * blocks || ks == steps / GSQ_MIN_ITEM_STEPS);
        }
    /* the LM head needs no split; the down projection does */
    assert_int_equal(gsq_splits(128256 / 16, 32, blocks), 1);
    assert_true(gsq_splits(4096 / 16, 14336 / 128, blocks) > 1);
    /* short rows: one split */
    assert_int_equal(gsq_splits(4, 2, blocks), 1);
    assert_int_equal(gsq_splits(1, 1, 1), 1);
    assert_int_equal(gsq_splits(0, 5, 5), 1);
    /* the splits partition the steps */
    for (int64_t steps = 1; steps < 300; steps += 7)
        for (int ks = 1; ks <= 9; ks++) {
            int64_t prev = 0;
            for (int sp = 0; sp < ks; sp++) {
                int64_t s0, s1;
                gsq_split_steps(steps, ks, sp, &s0, &s1);
                assert_true(s0 == prev && s1 >= s0);
                prev = s1;
            }
            assert_true(prev == steps);
        }
}

/* ---------------------------------------------------------------- the whole schedule */

typedef struct sched {
    int n_parts, silu;
    int64_t N[GSQ_MAX_PARTS];
    int64_t steps, blocks;
} sched;

/* The kernel's walk (gsq_cur_set / gsq_cur_next, block by block), counting
 * every (part, row tile, step) a warp computes and every tile's finished
 * items. */
static void walk(const sched *S)
{
    int ks[GSQ_MAX_PARTS], item_end[GSQ_MAX_PARTS];
    int64_t tiles[GSQ_MAX_PARTS], items = 0;
    for (int p = 0; p < S->n_parts; p++) {
        tiles[p] = (S->N[p] + 15) / 16;
        ks[p] = gsq_splits(tiles[p], S->steps, S->blocks);
        items += tiles[p] * ks[p];
        item_end[p] = (int)items;
    }
    /* the item numbering and its inverse */
    for (int64_t i = 0; i < items; i++) {
        int p, tile, sp;
        gsq_item(item_end, ks, S->n_parts, i, &p, &tile, &sp);
        assert_true(p >= 0 && p < S->n_parts && tile >= 0 && tile < tiles[p] && sp >= 0 && sp < ks[p]);
        assert_true(gsq_item_of(item_end, ks, p, tile, sp) == i);
    }
    int64_t off[GSQ_MAX_PARTS + 1];
    off[0] = 0;
    for (int p = 0; p < S->n_parts; p++)
        off[p + 1] = off[p] + tiles[p] * S->steps;
    unsigned char *seen = calloc((size_t)off[S->n_parts], 1);
    int64_t mt = 0; /* counters [part][mt] */
    for (int p = 0; p < S->n_parts; p++)
        mt = tiles[p] > mt ? tiles[p] : mt;
    int *count = calloc((size_t)(mt * S->n_parts), sizeof(int));
    int *lasts = calloc((size_t)(mt * S->n_parts), sizeof(int));
    assert_non_null(seen);
    assert_non_null(count);
    assert_non_null(lasts);
    const int64_t B = S->blocks < items ? S->blocks : items;
    int64_t most = 0, least = items;
    for (int64_t b = B - 1; b >= 0; b--) { /* any order of blocks */
        int64_t i0, i1;
        gsq_block_items(items, B, b, &i0, &i1);
        assert_true(i0 < i1);
        most = i1 - i0 > most ? i1 - i0 : most;
        least = i1 - i0 < least ? i1 - i0 : least;
        for (int64_t it = i0; it < i1; it++) {
            int p, tile, sp;
            gsq_item(item_end, ks, S->n_parts, it, &p, &tile, &sp);
            int64_t s0, s1;
            gsq_split_steps(S->steps, ks[p], sp, &s0, &s1);
            int64_t stages = 0;
            for (int64_t st = s0; st < s1; st += GSQ_STAGE_STEPS, stages++)
                for (int w = 0; w < GSQ_WARPS; w++)
                    if (st + w < s1) {
                        unsigned char *c = &seen[off[p] + tile * S->steps + st + w];
                        assert_int_equal(*c, 0);
                        *c = 1;
                    }
            assert_true(stages == gsq_stages(s0, s1));
            /* the flush: the count of the tile (silu: the gate's for both) */
            if (!gsq_direct(ks[p], S->silu)) {
                const int cp = S->silu ? 0 : p;
                const int need = S->silu ? 2 * ks[p] : ks[p];
                int *ctr = &count[cp * mt + tile];
                const int last = (*ctr)++ == need - 1;
                if (last) {
                    lasts[cp * mt + tile]++;
                    *ctr = 0; /* as the kernel leaves it */
                }
            }
        }
    }
    for (int64_t i = 0; i < off[S->n_parts]; i++)
        assert_int_equal(seen[i], 1);
    assert_true(most - least <= 1);
    for (int p = 0; p < S->n_parts; p++)
        for (int64_t t = 0; t < tiles[p]; t++) {
            const int cp = S->silu ? 0 : p;
            if (S->silu && p == 1)
                continue;
            assert_int_equal(count[cp * mt + t], 0);
            assert_int_equal(lasts[cp * mt + t], gsq_direct(ks[p], S->silu) ? 0 : 1);
        }
    free(seen);
    free(count);
    free(lasts);
}

static void test_schedule(void **state)
{
    (void)state;
    const sched cases[] = {
        /* q/k/v at K = 4096, int4 (32 steps) and 8-bit (64) */
        {3, 0, {4096, 1024, 1024, 0}, 32, 264},
        {3, 0, {4096, 1024, 1024, 0}, 64, 264},
        /* o, gate/up with the silu, down */
        {1, 0, {4096, 0, 0, 0}, 32, 264},
        {2, 1, {14336, 14336, 0, 0}, 32, 264},
        {2, 1, {14336, 14336, 0, 0}, 64, 132},
        {1, 0, {4096, 0, 0, 0}, 112, 264},
        {1, 0, {4096, 0, 0, 0}, 224, 132},
        /* odd N, short and odd K, few blocks, more blocks than items */
        {1, 0, {45, 0, 0, 0}, 3, 264},
        {3, 0, {37, 5, 23, 0}, 13, 7},
        {4,
         0,
         {
             16,
             17,
             1,
             33,
         },
         40,
         3},
        {2, 1, {51, 51, 0, 0}, 17, 5},
        {2, 1, {16, 16, 0, 0}, 1, 1},
        {1, 0, {1, 0, 0, 0}, 1, 264},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        walk(&cases[i]);
}

/* the moe form's items: (slot, part, tile, split) and back, each once, in
 * that order (split fastest) */
static void test_moe_items(void **state)
{
    (void)state;
    const int shapes[4][3] = {{2, 896, 1}, {1, 256, 3}, {2, 5, 4}, {1, 1, 1}}; /* parts, tiles, ks */
    for (int s = 0; s < 4; s++) {
        const int parts = shapes[s][0], tiles = shapes[s][1], ks = shapes[s][2];
        for (int slots = 1; slots <= 8; slots += 7) {
            const int64_t I = (int64_t)slots * parts * tiles * ks;
            int64_t prev = -1;
            for (int64_t i = 0; i < I; i++) {
                int slot, part, tile, sp;
                gsq_moe_item(i, parts, tiles, ks, &slot, &part, &tile, &sp);
                assert_true(slot >= 0 && slot < slots && part >= 0 && part < parts && tile >= 0 &&
                            tile < tiles && sp >= 0 && sp < ks);
                const int64_t j = gsq_moe_item_of(parts, tiles, ks, slot, part, tile, sp);
                assert_true(j == i && j == prev + 1);
                prev = j;
            }
        }
    }
}

/* ---------------------------------------------------------------- the stage's layout */

static void test_copy_map(void **state)
{
    (void)state;
    int owner[GSQ_STAGE_W_BYTES / 16];
    for (int i = 0; i < GSQ_STAGE_W_BYTES / 16; i++)
        owner[i] = -1;
    for (int pc = 0; pc < GSQ_PIECES; pc++) {
        int row, step, c;
        gsq_piece(pc, &row, &step, &c);
        assert_true(row >= 0 && row < GSQ_TILE_ROWS && step >= 0 && step < GSQ_STAGE_STEPS && c >= 0 &&
                    c < 4);
        const int o = gsq_w_off(step, row, c);
        assert_true(o % 16 == 0 && o >= 0 && o < GSQ_STAGE_W_BYTES);
        assert_int_equal(owner[o / 16], -1);
        owner[o / 16] = pc;
    }
    /* 32 consecutive threads: one row's 512 contiguous bytes (step * 64 + 16 c) */
    for (int base = 0; base < GSQ_PIECES; base += 32) {
        int row0, s0, c0;
        gsq_piece(base, &row0, &s0, &c0);
        for (int i = 0; i < 32; i++) {
            int row, step, c;
            gsq_piece(base + i, &row, &step, &c);
            assert_int_equal(row, row0);
            assert_int_equal(step * GSQ_STEP + 16 * c, 16 * i);
        }
    }
    /* the lanes' reads: rows g and g + 8 of step w at byte 16 t */
    for (int w = 0; w < GSQ_WARPS; w++)
        for (int lane = 0; lane < 32; lane++) {
            const int g = lane / 4, t = lane % 4;
            for (int h = 0; h < 2; h++) {
                int row, step, c;
                gsq_piece(owner[gsq_w_off(w, g + 8 * h, t) / 16], &row, &step, &c);
                assert_int_equal(row, g + 8 * h);
                assert_int_equal(step, w);
                assert_int_equal(c, t);
            }
        }
    /* a warp's 16-byte reads of rows g (or g + 8): 512 contiguous bytes, no bank conflicts */
    for (int w = 0; w < GSQ_WARPS; w++)
        for (int h = 0; h < 2; h++)
            for (int lane = 0; lane < 32; lane++)
                assert_int_equal(gsq_w_off(w, lane / 4 + 8 * h, lane % 4) - gsq_w_off(w, 8 * h, 0),
                                 16 * lane);
}

static void test_scale_slots(void **state)
{
    (void)state;
    for (int s = 0; s < 3; s++) {
        const int se = gmw_step_elems(s), pe = gmw_piece_elems(s);
        for (int gs = 32; gs <= 512; gs *= 2) {
            const int fold = s == GMW_U4 && gs % 128 != 0;
            const int sps = gsq_sps(s == GMW_FP8, fold);
            if (s == GMW_I8 && gs % 64 != 0)
                continue; /* int8 takes groups of a multiple of 64 */
            if (s == GMW_FP8) {
                assert_int_equal(sps, 0);
                continue;
            }
            for (int64_t st = 0; st < 40; st++)
                for (int t = 0; t < 4; t++) {
                    const int j = sps == 1 ? 0 : t;
                    const int64_t grp = gsq_s_col(st, j, se, pe) / gs;
                    for (int e = 0; e < pe; e++) /* the piece's columns */
                        assert_true((st * se + (int64_t)pe * t + e) / gs == grp);
                }
        }
    }
    /* slot offsets: distinct, within the slot */
    for (int sps = 1; sps <= GSQ_SPS; sps *= GSQ_SPS) {
        int hit[GSQ_STAGE_STEPS * GSQ_TILE_ROWS * GSQ_SPS];
        memset(hit, 0, sizeof hit);
        for (int st = 0; st < GSQ_STAGE_STEPS; st++)
            for (int r = 0; r < GSQ_TILE_ROWS; r++)
                for (int j = 0; j < sps; j++) {
                    const int o = gsq_s_off(sps, st, r, j);
                    assert_true(o >= 0 && o < GSQ_STAGE_STEPS * GSQ_TILE_ROWS * sps);
                    assert_int_equal(hit[o]++, 0);
                }
    }
}

static void test_zero_points(void **state)
{
    (void)state;
    uint8_t z[64];
    for (int i = 0; i < 64; i++)
        z[i] = (uint8_t)(i * 37 + 11);
    for (int64_t idx = 0; idx < 64; idx++) {
        uint32_t word;
        memcpy(&word, z + (idx & ~(int64_t)3), 4); /* little-endian, as the GPU */
        assert_int_equal(gsq_zp_byte(word, idx), z[idx]);
    }
    assert_true(gsq_zp_ok(0x1000, 32));
    assert_false(gsq_zp_ok(0x1001, 32));
    assert_false(gsq_zp_ok(0x1000, 1)); /* per channel: a row of one byte */
    assert_false(gsq_zp_ok(0x1000, 6));
}

static void test_smem(void **state)
{
    (void)state;
    const int64_t optin = 227 * 1024, sm = 228 * 1024;
    /* batch 1 of every 8B shape and scheme fits, two blocks an SM at K = 4096 */
    const int64_t Ks[2] = {4096, 14336};
    for (int k = 0; k < 2; k++)
        for (int sps = 0; sps <= GSQ_SPS; sps++)
            for (int zp = 0; zp < 2; zp++) {
                const int64_t b = gsq_smem_bytes(1, Ks[k], sps, zp);
                assert_true(b <= optin);
                if (Ks[k] == 4096)
                    assert_int_equal(gsq_blocks_sm(b, sm), 2);
            }
    /* eight rows at K = 4096 fit; at 14336 they do not (the kernel declines) */
    assert_true(gsq_smem_bytes(8, 4096, 1, 0) <= optin);
    assert_true(gsq_smem_bytes(8, 14336, 0, 0) > optin);
    assert_int_equal(gsq_blocks_sm(200 * 1024, sm), 1);
    assert_int_equal(gsq_blocks_sm(1, sm), GSQ_MAX_BLOCKS_SM);
    /* the slot's regions stay 16-byte aligned */
    for (int sps = 0; sps <= GSQ_SPS; sps++)
        for (int zp = 0; zp < 2; zp++)
            assert_int_equal(gsq_slot_bytes(sps, zp) % 16, 0);
    assert_int_equal(gsq_x_bytes(3, 4096) % 16, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_splits),      cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_moe_items),   cmocka_unit_test(test_copy_map),
        cmocka_unit_test(test_scale_slots), cmocka_unit_test(test_zero_points),
        cmocka_unit_test(test_smem),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
