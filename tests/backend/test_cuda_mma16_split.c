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
 *  - the choice of W on an H100's numbers (132 SMs, 24 warps of the fp8 /
 *    int8 kernel an SM, 20 of int4's) for the Llama-3-8B shapes: the
 *    choices the header's comment argues for.
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

/* the fp8 / int8 kernel on an H100: 132 SMs, 80 registers (24 warps an SM
 * with its 24-warp blocks, 25 by registers), 228 KB of shared memory an
 * SM, 1 KB kept a block; int4's at ~104 registers (19 warps), blocks of at
 * most 16 warps */
static const gmw_device h100_8bit = {132, 25, 24, 233472, 1024};
static const gmw_device h100_int4 = {132, 19, 16, 233472, 1024};

/* shared memory of a block as the kernel asks it (gw_smem_bytes) */
static int64_t smem_of(int fp8, int T, int64_t K, int SL)
{
    const int64_t xc = fp8 ? ((int64_t)T * (K + 8) * 2 + 15) / 16 * 16 : 0;
    return xc + (8 + GMW_WARPS_BLOCK * 8) * 4 + (int64_t)SL * GMW_CHUNKS * 16 * 8 * 4;
}

static void test_pick(void **state)
{
    (void)state;
    static const struct {
        const char *what;
        int int4, fp8, T, SL;
        int64_t K, tiles;
        int want;
    } cs[] = {
        /* q/k/v: 384 tiles, 3 blocks of 8 an SM, one wave (as before) */
        {"fp8 q/k/v", 0, 1, 1, 1, 4096, 384, 8},
        /* o and down: 256 tiles, 2 blocks of 12 an SM, one wave (8: 1.9 blocks an SM) */
        {"fp8 o", 0, 1, 1, 1, 4096, 256, 12},
        {"int8 down", 0, 0, 1, 1, 14336, 256, 12},
        /* gate/up with the silu: 24-warp blocks (16 before: 64 KB in flight an SM) */
        {"fp8 gate/up silu", 0, 1, 1, 2, 4096, 896, 12},
        {"int8 gate/up silu", 0, 0, 4, 2, 4096, 896, 12},
        /* int4 K = 4096: 32 steps a row; q/k/v in 6-warp blocks, 3 an SM */
        {"int4 q/k/v", 1, 0, 1, 1, 4096, 384, 6},
        {"int4 o", 1, 0, 1, 1, 4096, 256, 8},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        const gmw_device *d = cs[i].int4 ? &h100_int4 : &h100_8bit;
        const int steps = (int)((cs[i].int4 ? cs[i].K / 2 : cs[i].K) / 64);
        const int64_t smem = smem_of(cs[i].fp8, cs[i].T, cs[i].K, cs[i].SL);
        const int W = gmw_pick_warps(d, cs[i].tiles, cs[i].SL, steps, smem);
        printf("  %-20s %4lld tiles, %3d steps: W = %2d (%d blocks an SM; scores", cs[i].what,
               (long long)cs[i].tiles, steps, W, gmw_blocks_sm(d, cs[i].SL * W, smem));
        for (int j = 0; j < GMW_N_CANDIDATES; j++)
            printf(" %d:%.2f", gmw_candidate(j), gmw_score(d, cs[i].tiles, cs[i].SL, steps, gmw_candidate(j), smem));
        printf(")\n");
        assert_int_equal(W, cs[i].want);
    }
    /* a block past the launch bounds or the shared memory scores 0 */
    assert_int_equal(gmw_blocks_sm(&h100_int4, 24, 1024), 0);
    assert_true(gmw_score(&h100_8bit, 100, 1, 64, 8, 300000) == 0.0);
    assert_int_equal(gmw_pick_warps(&h100_8bit, 100, 1, 64, 300000), 0);
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
