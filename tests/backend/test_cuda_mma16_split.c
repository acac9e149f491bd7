/*
 * The work split of the 16-bit tensor-core quantized GEMV
 * (src/backend/cuda/cuda_gemv_mma16_split.h), checked on the CPU:
 *
 *  - the chunks of a row tile its steps, and the warps' chunks tile the
 *    chunks, for every row length and every W of 1..24;
 *  - the kernel's loop (cuda_gemv_mma16_quant.cu: the leading loop over
 *    empty chunks, then a flush after each step for the chunks that end
 *    there) emulated: every chunk flushed exactly once, by the warp that
 *    owns it, holding exactly its own steps' products;
 *  - so the sums: random products summed in f32 as the kernel sums them
 *    (each chunk from zero in step order, then the chunks in order) give
 *    the same bits at every W;
 *  - the choice of W on an H100's numbers for the Llama-3-8B shapes: the
 *    W session 31's sweep measured fastest (or within a few percent).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_gemv_mma16_split.h"
#include "testutil.h"

static void test_tiling(void **state)
{
    (void)state;
    for (int steps = 0; steps <= 300; steps++) {
        assert_int_equal(gmw_chunk_start(steps, 0), 0);
        assert_int_equal(gmw_chunk_start(steps, GMW_CHUNKS), steps);
        for (int c = 0; c < GMW_CHUNKS; c++)
            assert_true(gmw_chunk_start(steps, c) <= gmw_chunk_start(steps, c + 1));
    }
    for (int W = 1; W <= GMW_CHUNKS; W++) {
        assert_int_equal(gmw_warp_chunk(0, W), 0);
        assert_int_equal(gmw_warp_chunk(W, W), GMW_CHUNKS);
        for (int w = 0; w < W; w++)
            assert_true(gmw_warp_chunk(w, W) <= gmw_warp_chunk(w + 1, W));
    }
}

/* The kernel's loop for warp kw of W over a row of `steps` steps: which
 * chunk each step's product lands in (owner[st]), and the chunk sums
 * (sums[c], flushed[c] counts the flushes), products p[st]. */
static void emulate_warp(int steps, int W, int kw, const float *p, float *sums, int *flushed, int *owner)
{
    int c = gmw_warp_chunk(kw, W);
    const int c1 = gmw_warp_chunk(kw + 1, W);
    const int s0 = gmw_chunk_start(steps, c), s1 = gmw_chunk_start(steps, c1);
    int ce = gmw_chunk_start(steps, c + 1);
    float acc = 0.0f;
    for (; c < c1 && ce <= s0; ce = gmw_chunk_start(steps, ++c + 1)) {
        sums[c] = acc;
        flushed[c]++;
        acc = 0.0f;
    }
    for (int s = s0; s < s1; s += GMW_U)
        for (int u = 0; u < GMW_U; u++) {
            const int st = s + u;
            if (st >= s1)
                continue;
            acc += p[st];
            owner[st] = c;
            for (; c < c1 && ce <= st + 1; ce = gmw_chunk_start(steps, ++c + 1)) {
                sums[c] = acc;
                flushed[c]++;
                acc = 0.0f;
            }
        }
    assert_int_equal(c, c1); /* every chunk of the warp flushed */
}

static void test_kernel_loop(void **state)
{
    (void)state;
    uint64_t rng = 0x5917ull;
    float *p = malloc(400 * sizeof(float));
    int *owner = malloc(400 * sizeof(int));
    assert_non_null(p);
    assert_non_null(owner);
    const int lens[] = {0, 1, 2, 3, 5, 16, 23, 24, 25, 32, 47, 64, 100, 112, 224, 400};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        const int steps = lens[li];
        for (int i = 0; i < steps; i++)
            p[i] = anvil_test_randf(&rng) * 1000.0f; /* roundings in every sum */
        uint32_t first_bits = 0;
        for (int W = 1; W <= GMW_CHUNKS; W++) {
            float sums[GMW_CHUNKS];
            int flushed[GMW_CHUNKS];
            memset(flushed, 0, sizeof flushed);
            for (int i = 0; i < steps; i++)
                owner[i] = -1;
            for (int kw = 0; kw < W; kw++)
                emulate_warp(steps, W, kw, p, sums, flushed, owner);
            for (int c = 0; c < GMW_CHUNKS; c++) {
                assert_int_equal(flushed[c], 1);
                for (int st = gmw_chunk_start(steps, c); st < gmw_chunk_start(steps, c + 1); st++)
                    assert_int_equal(owner[st], c);
            }
            float v = 0.0f;
            for (int c = 0; c < GMW_CHUNKS; c++)
                v += sums[c];
            uint32_t bits;
            memcpy(&bits, &v, 4);
            if (W == 1)
                first_bits = bits;
            assert_int_equal(bits, first_bits);
        }
    }
    free(p);
    free(owner);
}

/* The kernels on an H100 (132 SMs, 228 KB of shared memory an SM, 1 KB
 * kept a block, ~2.95 TB/s): fp8's at 70 registers (28 warps an SM), int8's
 * at 80 (25), both in blocks of up to 24 warps; int4's at ~104 (19), blocks
 * of up to 16, 6 warps a tile skipped (as the launcher does). */
static const gmw_device h100_fp8 = {132, 28, 24, 233472, 1024, 2.95e6, 0};
static const gmw_device h100_int8 = {132, 25, 24, 233472, 1024, 2.95e6, 0};
static const gmw_device h100_int4 = {132, 19, 16, 233472, 1024, 2.95e6, 1u << 2};

/* shared memory of a block as the kernel asks it (gw_smem_bytes) */
static int64_t smem_of(int fp8, int T, int64_t K, int SL)
{
    const int64_t xc = fp8 ? ((int64_t)T * (K + 8) * 2 + 15) / 16 * 16 : 0;
    return xc + (8 + GMW_WARPS_BLOCK * 8) * 4 + (int64_t)SL * GMW_CHUNKS * 16 * 8 * 4;
}

/* The picks for the Llama-3-8B shapes at one row: session 31's sweep
 * measured these (or, where noted, one within 8%) fastest. */
static void test_pick(void **state)
{
    (void)state;
    static const struct {
        const char *what;
        int scheme; /* 0 int8, 1 int4, 2 fp8 */
        int SL;
        int64_t K, N;
        int want;
    } cs[] = {
        {"fp8 q/k/v", 2, 1, 4096, 6144, 8},
        {"fp8 o", 2, 1, 4096, 4096, 12},
        {"fp8 down", 2, 1, 14336, 4096, 12},       /* 24 measured 3% faster */
        {"fp8 gate/up silu", 2, 2, 4096, 14336, 6}, /* 6 and 12 the same */
        {"int8 q/k/v", 0, 1, 4096, 6144, 8},
        {"int8 o", 0, 1, 4096, 4096, 12},
        {"int8 down", 0, 1, 14336, 4096, 12},
        {"int8 gate/up silu", 0, 2, 4096, 14336, 6},
        {"int4 q/k/v", 1, 1, 4096, 6144, 4},       /* 8 measured 3% faster */
        {"int4 o", 1, 1, 4096, 4096, 8},
        {"int4 down", 1, 1, 14336, 4096, 8},
        {"int4 gate/up silu", 1, 2, 4096, 14336, 4},
        {"int4 LM head", 1, 1, 4096, 128256, 4},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        const gmw_device *d = cs[i].scheme == 1 ? &h100_int4 : cs[i].scheme == 0 ? &h100_int8 : &h100_fp8;
        const int steps = (int)((cs[i].scheme == 1 ? cs[i].K / 2 : cs[i].K) / 64);
        const int64_t tiles = (cs[i].N + 15) / 16;
        const int64_t smem = smem_of(cs[i].scheme == 2, 1, cs[i].K, cs[i].SL);
        const int W = gmw_pick_warps(d, tiles, cs[i].SL, steps, smem);
        printf("  %-18s %5lld tiles, %3d steps: W = %2d (%d blocks an SM; model us", cs[i].what, (long long)tiles,
               steps, W, gmw_blocks_sm(d, cs[i].SL * W, smem));
        for (int j = 0; j < GMW_N_CANDIDATES; j++)
            printf(" %d:%.1f", gmw_candidate(j), gmw_time(d, tiles, cs[i].SL, steps, gmw_candidate(j), smem));
        printf(")\n");
        assert_int_equal(W, cs[i].want);
    }
    /* a block past the launch bounds or the shared memory does not fit */
    assert_int_equal(gmw_blocks_sm(&h100_int4, 24, 1024), 0);
    assert_true(gmw_time(&h100_fp8, 100, 1, 64, 8, 300000) < 0.0);
    assert_int_equal(gmw_pick_warps(&h100_fp8, 100, 1, 64, 300000), 0);
    /* the busiest warp's steps */
    assert_int_equal(gmw_most_steps(64, 8), 8);
    assert_int_equal(gmw_most_steps(64, 12), 6);
    assert_int_equal(gmw_most_steps(32, 6), 6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiling),
        cmocka_unit_test(test_kernel_loop),
        cmocka_unit_test(test_pick),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
