/*
 * The fragment mapping of the tensor-core quantized GEMV
 * (cuda_gemv_mma_quant.cu), in plain C so that the kernel and a CPU test
 * (tests/backend/test_cuda_quant_map.c) run the same code: which k of a
 * 64-column step each byte of a lane's mma fragments holds.
 *
 * mma.sync.aligned.m16n8k32 (s8/u8 with s32 accumulators, e4m3 with f32),
 * PTX ISA "Matrix Fragments for mma.m16n8k32", with g = lane / 4 (groupID)
 * and t = lane % 4 (threadID_in_group); a register holds 4 bytes, byte i
 * the element i of its list:
 *   A (16 x 32, row major), 4 registers:
 *     a0: row g,     cols 4t + i        a1: row g + 8, cols 4t + i
 *     a2: row g,     cols 16 + 4t + i   a3: row g + 8, cols 16 + 4t + i
 *   B (32 x 8, column major), 2 registers:
 *     b0: rows 4t + i, col g             b1: rows 16 + 4t + i, col g
 *   C/D (16 x 8), 4 registers (one element each):
 *     d0: row g, col 2t   d1: row g, col 2t + 1   d2: row g + 8, col 2t
 *     d3: row g + 8, col 2t + 1
 * The 32 columns of A and rows of B (the "logical" k) may stand for any 32
 * physical k, as long as A and B agree: lane t's a0 and b0 are the same
 * logical k (4t + i), a2 and b1 too (16 + 4t + i). A's rows are weight
 * rows n0 + g and n0 + g + 8, B's columns the rows of x (T <= 8; columns
 * past T are zeros), D's rows and columns follow.
 *
 * A step is 64 physical k of a weight row: two blocks of 32 for int8/int4
 * (each mma must hold exactly one block, whose x scale d it shares), and
 * any 64 for fp8 (one scale per row of x). Lane (g, t) loads:
 *   int8: 8 bytes at 8t of each block (rows g and g + 8): an mma's a0/a2
 *         are the two words, physical k 8t + i and 8t + 4 + i of its block.
 *   int4: 8 bytes at 8t of the step's 32 bytes (two blocks of 16 bytes):
 *         lanes t = 0, 1 hold block 0's words (0, 1) and (2, 3), lanes 2, 3
 *         block 1's. One exchange with lane t ^ 2 (gmq_i4_swap) leaves each
 *         lane one word of each block: word wb(t) = 2 (t & 1) + (t >> 1).
 *         A word's 8 nibbles are k 8 wb + j (low nibble first); the low
 *         nibbles of its bytes (k 8 wb + 2i) become a0, the high ones
 *         (8 wb + 2i + 1) a2, each as a byte (gmq_i4_lo / gmq_i4_hi).
 *   fp8:  16 bytes at 16t: words 0, 1 are mma 0's a0/a2 (k 16t + i,
 *         16t + 4 + i), words 2, 3 mma 1's (16t + 8 + i, 16t + 12 + i).
 * x's codes are kept in shared memory in an order where each lane's B is
 * contiguous (gmq_x_pos): the position of physical k of a step; lane t
 * reads its b0 at gmq_b_pos(.., t, m, 0) and b1 at gmq_b_pos(.., t, m, 1),
 * 4 bytes each.
 */
#ifndef ANVIL_CUDA_GEMV_MMA_QUANT_MAP_H
#define ANVIL_CUDA_GEMV_MMA_QUANT_MAP_H

#include <stdint.h>

#ifdef __CUDACC__
#define GMQ_HD __host__ __device__ __forceinline__
#else
#define GMQ_HD static inline
#endif

enum { GMQ_I8 = 0, GMQ_U4 = 1, GMQ_FP8 = 2 };

/* int4: the word of its block (0..3) lane t holds after the exchange */
GMQ_HD int gmq_i4_word(int t) { return 2 * (t & 1) + (t >> 1); }

/* int4: what lane t sends to lane t ^ 2 (v0, v1: the lane's two loaded words) */
GMQ_HD uint32_t gmq_i4_send(int t, uint32_t v0, uint32_t v1) { return t < 2 ? v1 : v0; }

/* int4: the lane's word of block 0 and of block 1, from its loaded words and
 * the word received from lane t ^ 2 */
GMQ_HD void gmq_i4_swap(int t, uint32_t v0, uint32_t v1, uint32_t recv, uint32_t *blk0, uint32_t *blk1)
{
    *blk0 = t < 2 ? v0 : recv;
    *blk1 = t < 2 ? recv : v1;
}

/* int4: the nibbles of a word's bytes as bytes: low nibbles (even k), high (odd k) */
GMQ_HD uint32_t gmq_i4_lo(uint32_t w) { return w & 0x0f0f0f0fu; }
GMQ_HD uint32_t gmq_i4_hi(uint32_t w) { return (w >> 4) & 0x0f0f0f0fu; }

/* A's register of mma m (0, 1) for one of the lane's rows, from that row's
 * words v: int8 the two loads' words (block 0's two, block 1's two), fp8
 * the 16 bytes' four words, int4 the word of block 0 and of block 1 after
 * the exchange; hi = 0 gives a0 (row g) / a1 (row g + 8), hi = 1 a2 / a3. */
GMQ_HD uint32_t gmq_a_reg(int scheme, const uint32_t v[4], int m, int hi)
{
    if (scheme == GMQ_U4)
        return hi ? gmq_i4_hi(v[m]) : gmq_i4_lo(v[m]);
    return v[2 * m + hi];
}

/* Byte offset, in a weight row, of lane t's load for step s (the row's
 * bytes of one step: 64 int8 / fp8, 32 int4); int8 loads twice (block
 * h = 0, 1), 8 bytes each; int4 once, 8 bytes; fp8 once, 16 bytes. */
GMQ_HD int64_t gmq_load_off(int scheme, int64_t s, int t, int h)
{
    if (scheme == GMQ_I8)
        return 64 * s + 32 * h + 8 * t;
    if (scheme == GMQ_U4)
        return 32 * s + 8 * t;
    return 64 * s + 16 * t;
}

/* Position in a row of shared x codes of physical k (0..63 within a step,
 * added to 64 s): int4 puts each word's even k before its odd k. */
GMQ_HD int gmq_x_pos(int scheme, int k)
{
    if (scheme != GMQ_U4)
        return k;
    const int blk = k >> 5, w = (k & 31) >> 3, j = k & 7;
    return 32 * blk + 8 * w + 4 * (j & 1) + (j >> 1);
}

/* Position (within a step) of lane t's B register r (0, 1) of mma m (0, 1) */
GMQ_HD int gmq_b_pos(int scheme, int t, int m, int r)
{
    if (scheme == GMQ_I8)
        return 32 * m + 8 * t + 4 * r;
    if (scheme == GMQ_U4)
        return 32 * m + 8 * gmq_i4_word(t) + 4 * r;
    return 16 * t + 8 * m + 4 * r;
}

#endif
