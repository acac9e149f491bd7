/*
 * The tile schedule of the grouped expert GEMMs (cuda_moe.cu), in plain C
 * so that the kernels and a CPU test (tests/backend/test_cuda_moe_schedule.c)
 * run the same code.
 *
 * A step's (token, slot) pairs are sorted by expert: expert e owns sorted
 * rows [offsets[e], offsets[e + 1]). Its rows are cut into row tiles of
 * `bm` (the last one partial); tiles[e] is the first tile of expert e,
 * tiles[E] the count, a prefix sum the sort kernel writes on the device.
 * A GEMM launch has moe_tiles_bound() blocks along x, a bound the host
 * knows without reading the counts back (so the launch can sit in a step
 * graph); block x >= tiles[E] has no work and returns at once. Block x
 * finds its expert by a binary search of tiles (moe_tile_find).
 *
 * bm (moe_tile_rows): 16, 32 or 64 rows, from the average rows an expert
 * gets (T k / E): a tile much taller than an expert's rows multiplies
 * zeros, one shorter reads the expert's weights once a tile. Measured on
 * an H100 (Mixtral layer, bf16; docs/cuda-backend.md), ms at tiles of 16 /
 * 32 / 64 rows: 16 tokens (4 rows an expert) 1.065 / 1.078 / 1.182; 64
 * tokens (16) 1.191 / 1.123 / 1.199; 256 tokens (64) 2.807 / 1.864 /
 * 1.360; one token 0.345 / 0.351 / 0.377.
 */
#ifndef ANVIL_CUDA_MOE_SCHEDULE_H
#define ANVIL_CUDA_MOE_SCHEDULE_H

#include <stdint.h>

#ifdef __CUDACC__
#define MOE_HD __host__ __device__ __forceinline__
#else
#define MOE_HD static inline
#endif

/* Row tile height of the SIMT grouped GEMM (the fallback). */
#define MOE_SIMT_TILE_ROWS 32

/* Row tile height of the tensor-core grouped GEMM for n_pairs = T k rows
 * over E experts. */
MOE_HD int moe_tile_rows(int64_t n_pairs, int32_t E)
{
    const int64_t avg = (n_pairs + E - 1) / E;
    return avg <= 4 ? 16 : avg <= 16 ? 32 : 64;
}

/* Tiles of an expert with `rows` rows. */
MOE_HD int32_t moe_tile_count(int32_t rows, int bm) { return (rows + bm - 1) / bm; }

/* An upper bound of tiles[E] whatever the routing: each expert with rows
 * has at most one partial tile, and at most min(n_pairs, E) experts have
 * rows. */
MOE_HD int64_t moe_tiles_bound(int64_t n_pairs, int32_t E, int bm)
{
    return (n_pairs + bm - 1) / bm + (n_pairs < E ? n_pairs : E);
}

/* tiles[0..E] from offsets[0..E] (the prefix sum the sort kernel writes). */
MOE_HD void moe_tile_prefix(const int32_t *offsets, int32_t E, int bm, int32_t *tiles)
{
    tiles[0] = 0;
    for (int32_t e = 0; e < E; e++)
        tiles[e + 1] = tiles[e] + moe_tile_count(offsets[e + 1] - offsets[e], bm);
}

/* Block `tile`'s expert and sorted rows [*r_begin, *r_end); 0 when the
 * block has no work (tile >= tiles[E]). */
MOE_HD int moe_tile_find(const int32_t *offsets, const int32_t *tiles, int32_t E, int bm, int32_t tile,
                         int32_t *expert, int32_t *r_begin, int32_t *r_end)
{
    if (tile < 0 || tile >= tiles[E])
        return 0;
    int32_t lo = 0, hi = E; /* tiles[lo] <= tile < tiles[hi]; experts without rows have tiles[e] == tiles[e + 1] */
    while (hi - lo > 1) {
        const int32_t mid = (lo + hi) / 2;
        if (tiles[mid] <= tile)
            lo = mid;
        else
            hi = mid;
    }
    const int32_t b = offsets[lo] + (tile - tiles[lo]) * bm;
    const int32_t end = offsets[lo + 1];
    *expert = lo;
    *r_begin = b;
    *r_end = b + bm < end ? b + bm : end;
    return 1;
}

#endif
