/*
 * How the 16-bit tensor-core quantized GEMV (cuda_gemv_mma16_quant.cu)
 * splits its work, in plain C so that the kernel, its launcher and a CPU
 * test (tests/backend/test_cuda_mma16_split.c) run the same code.
 *
 * The sums are fixed by the weight alone. A row of `steps` steps (64 bytes
 * each) is cut into GMW_CHUNKS chunks (chunk c: steps [steps c / C,
 * steps (c + 1) / C)); each chunk's products are summed in f32 in step
 * order by one warp, from zero, and the chunks' sums are added in chunk
 * order at the end. So the result's bits do not depend on how many warps
 * share a tile: a warp may take several whole chunks (one after the other,
 * keeping its loads in flight across them), and the launcher picks that
 * number (W, warps a tile) per launch, to fill the GPU, while q/k/v in one
 * launch, gate/up with the silu and each matrix alone give the same bits.
 *
 * Why W varies (issue 15, session 30's measurements on an H100): a block
 * is one tile of 16 weight rows, so a matrix of n tiles runs as n blocks;
 * each warp keeps GMW_U steps of loads in flight (4 KB), and the weight
 * streams near the copy rate only when an SM holds ~24 such warps for the
 * whole launch. With W fixed at 8, the attention output and the down
 * projection (256 tiles: 1.9 blocks an SM) read at 55-70% of copy, and
 * gate/up with the silu (16-warp blocks, one an SM) at 67%; q/k/v's 384
 * tiles, 2.9 blocks of 8 an SM, at 96-99%. gmw_pick_warps times each
 * candidate W with a small model (gmw_time: waves of blocks, the rounds of
 * loads of each wave's busiest warp, the bytes against the device's rate)
 * fitted to session 31's sweep of every W on an H100, where its picks came
 * within 2.4% of the best W on average over 18 shapes.
 */
#ifndef ANVIL_CUDA_GEMV_MMA16_SPLIT_H
#define ANVIL_CUDA_GEMV_MMA16_SPLIT_H

#include <stdint.h>

#ifdef __CUDACC__
#define GMS_HD __host__ __device__ __forceinline__
#else
#define GMS_HD static inline
#endif

#define GMW_CHUNKS       24 /* chunks a weight row: 24 = 8 x 3, whole for W of 4, 6, 8, 12, 24 */
#define GMW_U            4  /* steps of loads a lane keeps in flight */
#define GMW_WARPS_BLOCK  24 /* the most warps a block (both slots) */
#define GMW_N_CANDIDATES 5

/* the first step of chunk c (c = GMW_CHUNKS: steps) */
GMS_HD int gmw_chunk_start(int steps, int c) { return (int)((int64_t)steps * c / GMW_CHUNKS); }

/* warp w of W's chunks are [gmw_warp_chunk(w, W), gmw_warp_chunk(w + 1, W)) */
GMS_HD int gmw_warp_chunk(int w, int W) { return GMW_CHUNKS * w / W; }

/* the candidate W, in the order ties are broken (the first kept) */
GMS_HD int gmw_candidate(int i)
{
    return i == 0 ? 8 : i == 1 ? 12 : i == 2 ? 6 : i == 3 ? 4 : 24;
}

/* What the launcher knows of the device and the kernel. */
typedef struct gmw_device {
    int n_sm;          /* multiprocessors */
    int warps_sm;      /* warps of this kernel an SM holds by its registers (and the 64-warp limit) */
    int max_warps;     /* warps a block of this kernel may have (its launch bounds) */
    int64_t smem_sm;   /* shared memory an SM gives blocks */
    int64_t smem_rsv;  /* shared memory the system keeps a block */
    double bw;         /* bytes a microsecond the device's memory streams (~90% of its peak) */
    unsigned skip;     /* candidates not to take: bit i for gmw_candidate(i) */
} gmw_device;

/* The timing model's constants, fitted to session 31's sweep on an H100
 * (docs/performance.md): a warp's round of GMW_U steps of loads takes
 * ~4 us under load, and a wave of blocks ~2 us more (launch, the x codes,
 * the chunks' sums, the epilogue). */
#define GMW_ROUND_US 4.0
#define GMW_WAVE_US  2.0

/* Blocks of `warps` warps and smem_block bytes of shared memory an SM
 * holds (32 at most), 0 when none. */
GMS_HD int gmw_blocks_sm(const gmw_device *d, int warps, int64_t smem_block)
{
    if (warps < 1 || warps > d->max_warps)
        return 0;
    int b = d->warps_sm / warps;
    const int64_t by_smem = d->smem_sm / (smem_block + d->smem_rsv);
    if (by_smem < b)
        b = (int)by_smem;
    return b < 32 ? b : 32;
}

/* Steps of the busiest of W warps in a row of `steps` steps. */
GMS_HD int gmw_most_steps(int steps, int W)
{
    int most = 0;
    for (int w = 0; w < W; w++) {
        const int s = gmw_chunk_start(steps, gmw_warp_chunk(w + 1, W)) - gmw_chunk_start(steps, gmw_warp_chunk(w, W));
        most = s > most ? s : most;
    }
    return most;
}

/* The model's microseconds for n tiles of `steps` steps a row (64 bytes
 * of 16 rows a step), SL slots a block (2: gate and up), W warps a slot,
 * blocks of smem_block bytes of shared memory; a negative number when W
 * does not fit. The tiles run in waves of the blocks the SMs hold; a wave
 * takes the longer of its busiest warp's rounds of loads (GMW_ROUND_US for
 * each GMW_U steps, at least one round) and its bytes at the device's
 * rate, plus GMW_WAVE_US. */
GMS_HD double gmw_time(const gmw_device *d, int64_t n, int SL, int steps, int W, int64_t smem_block)
{
    const int bsm = gmw_blocks_sm(d, SL * W, smem_block);
    if (bsm == 0 || n <= 0)
        return -1.0;
    const int64_t slots = (int64_t)bsm * d->n_sm;
    const int most = gmw_most_steps(steps, W);
    const double rounds = most > GMW_U ? (double)most / GMW_U : 1.0;
    const double lat = GMW_ROUND_US * rounds;
    const double tile_bytes = 1024.0 * (double)SL * (double)steps; /* 16 rows x 64 bytes a step */
    double t = 0.0;
    for (int64_t left = n; left > 0; left -= slots) {
        const int64_t blocks = left < slots ? left : slots;
        const double io = (double)blocks * tile_bytes / d->bw;
        t += (lat > io ? lat : io) + GMW_WAVE_US;
    }
    return t;
}

/* The candidate W (gmw_candidate, not skipped) the model times fastest for
 * the launch, with blocks of smem_block bytes of shared memory; 0 if none
 * fits. */
GMS_HD int gmw_pick_warps(const gmw_device *d, int64_t n, int SL, int steps, int64_t smem_block)
{
    int best = 0;
    double best_t = 0.0;
    for (int i = 0; i < GMW_N_CANDIDATES; i++) {
        if (d->skip & (1u << i))
            continue;
        const int W = gmw_candidate(i);
        const double t = gmw_time(d, n, SL, steps, W, smem_block);
        /* a later candidate must beat the kept one by more than rounding */
        if (t >= 0.0 && (best == 0 || t < best_t * 0.999999)) {
            best_t = t;
            best = W;
        }
    }
    return best;
}

#endif
