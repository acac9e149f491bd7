/*
 * The tile schedule of the grouped expert GEMMs
 * (src/backend/cuda/cuda_moe_schedule.h), checked on the CPU: no GPU
 * needed, so a schedule mistake shows up in every build.
 *
 * For routings with chosen rows per expert (empty experts, 1, bm - 1, bm,
 * bm + 1, many tiles, everything in one expert, one row each in many
 * experts, random) and each tile height (16, 32, 64 of the tensor-core
 * GEMM, the SIMT GEMM's), the prefix sum is built as the sort kernel
 * builds it (moe_tile_prefix), then every block of a launch (x from 0 to
 * moe_tiles_bound, the host's bound) asks moe_tile_find for its work, as
 * the kernels do: each sorted row must belong to exactly one block, that
 * block's expert must own the row, a block's rows must start on a tile
 * boundary of its expert and number 1..bm, and every block at or past
 * tiles[E] (and only those) must have no work. The bound must hold for
 * the worst routing of its size.
 */
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_moe_schedule.h"
#include "testutil.h"

static uint64_t rng_state = 0x70e5c4edull;

static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* Checks the schedule of one routing (counts[e] rows for expert e) at tile height bm. */
static void check_schedule(const int32_t *counts, int32_t E, int bm)
{
    int32_t *offsets = calloc((size_t)E + 1, sizeof *offsets), *tiles = calloc((size_t)E + 1, sizeof *tiles);
    assert_true(offsets && tiles);
    for (int32_t e = 0; e < E; e++)
        offsets[e + 1] = offsets[e] + counts[e];
    const int32_t n_pairs = offsets[E];
    moe_tile_prefix(offsets, E, bm, tiles);
    const int64_t bound = moe_tiles_bound(n_pairs, E, bm);
    if (tiles[E] > bound)
        fail_msg("E %d bm %d: %d tiles past the bound %lld", E, bm, tiles[E], (long long)bound);
    int32_t *owner = malloc(((size_t)n_pairs + 1) * sizeof *owner);
    assert_non_null(owner);
    for (int32_t r = 0; r < n_pairs; r++)
        owner[r] = -1;
    int32_t busy = 0;
    for (int32_t x = 0; x < (int32_t)bound + 2; x++) { /* two blocks past the bound: still idle */
        int32_t e = -7, b = -7, end = -7;
        const int has = moe_tile_find(offsets, tiles, E, bm, x, &e, &b, &end);
        if (x >= tiles[E]) {
            if (has)
                fail_msg("E %d bm %d: block %d past the %d tiles has work", E, bm, x, tiles[E]);
            continue;
        }
        if (!has)
            fail_msg("E %d bm %d: block %d of %d tiles has no work", E, bm, x, tiles[E]);
        busy++;
        assert_true(e >= 0 && e < E);
        if (!(b >= offsets[e] && end <= offsets[e + 1] && end > b && end - b <= bm && (b - offsets[e]) % bm == 0))
            fail_msg("E %d bm %d: block %d got expert %d rows [%d, %d), the expert owns [%d, %d)", E, bm, x, e, b,
                     end, offsets[e], offsets[e + 1]);
        /* a block's rows are a whole tile: the full bm unless it is the expert's last */
        if (end - b < bm && end != offsets[e + 1])
            fail_msg("E %d bm %d: block %d stops at %d inside expert %d", E, bm, x, end, e);
        for (int32_t r = b; r < end; r++) {
            if (owner[r] >= 0)
                fail_msg("E %d bm %d: row %d in blocks %d and %d", E, bm, r, owner[r], x);
            owner[r] = x;
        }
    }
    for (int32_t r = 0; r < n_pairs; r++)
        if (owner[r] < 0)
            fail_msg("E %d bm %d: row %d in no block", E, bm, r);
    assert_int_equal(busy, tiles[E]);
    free(owner);
    free(offsets);
    free(tiles);
}

static const int bms[] = {16, 32, 64, MOE_SIMT_TILE_ROWS};

static void check_all_heights(const int32_t *counts, int32_t E)
{
    for (size_t i = 0; i < sizeof bms / sizeof bms[0]; i++)
        check_schedule(counts, E, bms[i]);
}

static void test_chosen_rows(void **state)
{
    (void)state;
    const int32_t a[] = {0, 1, 15, 17, 64, 100, 3, 0};
    check_all_heights(a, 8);
    const int32_t b[] = {16, 32, 33, 63, 65, 0, 0, 128};
    check_all_heights(b, 8);
    const int32_t one[] = {0, 0, 0, 500, 0};
    check_all_heights(one, 5);
    const int32_t single[] = {7};
    check_all_heights(single, 1);
    int32_t empty_last[64] = {0};
    empty_last[0] = 1;
    check_all_heights(empty_last, 64);
    int32_t ones[60];
    for (int i = 0; i < 60; i++)
        ones[i] = i % 3 == 0 ? 1 : 0; /* few pairs, many experts: the bound's min(n_pairs, E) */
    check_all_heights(ones, 60);
}

/* Random routings of T tokens to k distinct experts each, as the route kernel makes them. */
static void test_random_routings(void **state)
{
    (void)state;
    const struct {
        int32_t T, E, k;
    } shapes[] = {{1, 8, 2}, {9, 8, 2}, {16, 8, 2}, {64, 8, 2}, {256, 8, 2}, {64, 60, 4}, {256, 60, 4},
                  {3, 4096, 8}, {1000, 128, 8}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int32_t T = shapes[s].T, E = shapes[s].E, k = shapes[s].k;
        for (int rep = 0; rep < 4; rep++) {
            int32_t *counts = calloc((size_t)E, sizeof *counts), *pick = malloc((size_t)k * sizeof *pick);
            assert_true(counts && pick);
            for (int32_t t = 0; t < T; t++)
                for (int32_t j = 0; j < k; j++) {
                    int32_t e, dup;
                    do { /* rep 1: skewed to the low experts */
                        e = (int32_t)(rnd() % (uint32_t)(rep == 1 ? (E < 3 ? E : 3) + j : E)) % E;
                        dup = 0;
                        for (int32_t q = 0; q < j; q++)
                            dup |= pick[q] == e;
                    } while (dup);
                    pick[j] = e;
                    counts[e]++;
                }
            check_all_heights(counts, E);
            free(counts);
            free(pick);
        }
    }
}

/* The bound against the worst routing: every expert with one partial tile. */
static void test_bound_is_tight_enough(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bms / sizeof bms[0]; i++) {
        const int bm = bms[i];
        const int32_t E = 8;
        int32_t counts[8];
        for (int e = 0; e < E; e++)
            counts[e] = bm + 1; /* two tiles each, the second of one row */
        int32_t offsets[9] = {0}, tiles[9];
        for (int e = 0; e < E; e++)
            offsets[e + 1] = offsets[e] + counts[e];
        moe_tile_prefix(offsets, E, bm, tiles);
        assert_int_equal(tiles[E], 2 * E);
        assert_true(moe_tiles_bound(offsets[E], E, bm) >= tiles[E]);
        check_schedule(counts, E, bm);
    }
}

/* The tile height by the average rows an expert gets. */
static void test_tile_rows(void **state)
{
    (void)state;
    assert_int_equal(moe_tile_rows(8 * 2, 8), 16);   /* Mixtral, 8 tokens: 2 rows an expert */
    assert_int_equal(moe_tile_rows(16 * 2, 8), 16);  /* 4 */
    assert_int_equal(moe_tile_rows(32 * 2, 8), 32);  /* 8 */
    assert_int_equal(moe_tile_rows(64 * 2, 8), 32);  /* 16 */
    assert_int_equal(moe_tile_rows(68 * 2, 8), 64);  /* 17 */
    assert_int_equal(moe_tile_rows(256 * 2, 8), 64); /* 64 */
    assert_int_equal(moe_tile_rows(64 * 4, 60), 32); /* Qwen-MoE: 4.3 */
    assert_int_equal(moe_tile_rows(1, 4096), 16);
    assert_int_equal(moe_tile_count(0, 16), 0);
    assert_int_equal(moe_tile_count(1, 16), 1);
    assert_int_equal(moe_tile_count(16, 16), 1);
    assert_int_equal(moe_tile_count(17, 16), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chosen_rows),
        cmocka_unit_test(test_random_routings),
        cmocka_unit_test(test_bound_is_tight_enough),
        cmocka_unit_test(test_tile_rows),
    };
    return anvil_test_group_result(cmocka_run_group_tests(tests, NULL, NULL), sizeof tests / sizeof tests[0]);
}
