/*
 * Where the quantized grouped moe GEMV (cuda_moe_quant.cu) finds a weight
 * element, in plain C so that the kernel and a CPU test
 * (tests/backend/test_cuda_moe_quant_map.c) run the same code:
 *   - the stacked rows: gate|up [E 2N, K] (expert e's gate row n at e 2N + n,
 *     its up row N after), down [E N, K] (row e N + n);
 *   - lane l of a warp reads 8 consecutive codes from column c = 8 l, then
 *     c + 256, ...: a row's bytes at c (8 of fp8 / int8: two 32-bit words,
 *     lo then hi) or at c / 2 (4 of int4: one word, 8 nibbles, low first);
 *   - code i (0..7) of those: int4 nibble i of lo; 8-bit byte i of lo | hi
 *     (little-endian), which is column c + i;
 *   - its scale (and int4 zero point) at row * G + c / group (G = K / group,
 *     or 1 per channel): the 8 share one since group is a multiple of 8.
 */
#ifndef ANVIL_CUDA_MOE_QUANT_MAP_H
#define ANVIL_CUDA_MOE_QUANT_MAP_H

#include <stdint.h>

#ifdef __CUDACC__
#define MQM_HD __host__ __device__ __forceinline__
#else
#define MQM_HD static inline
#endif

#define MQM_CODES 8   /* codes a lane reads at once */
#define MQM_STEP 256  /* columns a warp covers at once (32 lanes x 8) */

enum { MQM_FP8 = 0, MQM_I8 = 1, MQM_U4 = 2 };

/* The stacked row of expert e's output row n (silu: the gate row; + N: up). */
MQM_HD int64_t mqm_row(int silu, int32_t e, int64_t N, int64_t n)
{
    return silu ? (int64_t)e * 2 * N + n : (int64_t)e * N + n;
}

/* Bytes from a row's start where a lane's 8 codes from column c begin. */
MQM_HD int64_t mqm_byte(int kind, int64_t c)
{
    return kind == MQM_U4 ? c / 2 : c;
}

/* Code i (0..7) of the 8 read from words lo (and hi for 8-bit kinds). */
MQM_HD uint32_t mqm_code(int kind, uint32_t lo, uint32_t hi, int i)
{
    return kind == MQM_U4 ? (lo >> (4 * i)) & 15u : ((i < 4 ? lo : hi) >> (8 * (i % 4))) & 0xffu;
}

/* The scale's (and zero point's) index of column c of stacked row r. */
MQM_HD int64_t mqm_scale_at(int64_t r, int64_t c, int64_t K, int32_t group)
{
    return group > 0 ? r * (K / group) + c / group : r;
}

#endif
