/*
 * The fragment mapping and the bit tricks of the 16-bit tensor-core
 * quantized GEMV (cuda_gemv_mma16_quant.cu), in plain C so that the kernel
 * and a CPU test (tests/backend/test_cuda_mma16_map.c) run the same code.
 *
 * mma.sync.aligned.m16n8k16 (f16 or bf16 operands, f32 accumulators), PTX
 * ISA "Matrix Fragments for mma.m16n8k16", g = lane / 4, t = lane % 4; a
 * register holds two 16-bit elements, the low half first:
 *   A (16 x 16, row major): a0 row g, cols 2t, 2t + 1; a1 row g + 8, same
 *     cols; a2 row g, cols 2t + 8, 2t + 9; a3 row g + 8, same cols.
 *   B (16 x 8, column major): b0 rows 2t, 2t + 1, col g; b1 rows 2t + 8,
 *     2t + 9, col g.
 *   C/D (16 x 8): d0, d1 row g, cols 2t, 2t + 1; d2, d3 row g + 8.
 * The 16 "logical" k of an mma may stand for any 16 physical k as long as
 * A and B agree; lane t's a0 and b0 are logical k 2t, 2t + 1, a2 and b1
 * 2t + 8, 2t + 9.
 *
 * A step is 64 bytes of each weight row: lane (g, t) loads 16 bytes (its
 * "piece") at byte 16 t of the step from rows g and g + 8 of a 16-row tile
 * (int4: 32 elements, int8 and fp8: 16). Its piece holds physical k
 * piece_elems * t .. of the step, and every mma takes its 4 elements of
 * each row from the lane's own piece, so the 4 lanes t of a row together
 * cover logical k 0..15 with 4 x 4 physical k of 4 different pieces.
 * gmw_elem says which element of the piece stands in mma m, register r (0:
 * a0/a1 and b0; 1: a2/a3 and b1), half h:
 *   int4: the piece's word j = m / 2 (8 nibbles, low first) gives two mmas
 *     (m = 2j, 2j + 1): the magic-number conversion turns a word into
 *     the pairs (e0, e4), (e1, e5), (e2, e6), (e3, e7), two elements an
 *     instruction (gmw_u4_pairs);
 *     mma 2j takes (e0, e4), (e1, e5), mma 2j + 1 (e2, e6), (e3, e7).
 *   int8, fp8: word m (4 elements) is mma m: (e0, e1) and (e2, e3), in
 *     their natural order (int8 through gmw_i8_pairs, fp8 through
 *     cvt.rn.f16x2.e4m3x2).
 * B is x's row g at the same physical k: int4 pairs built from 8 natural
 * elements by gmw_u4_xpair (a byte permutation), int8 / fp8 pairs natural.
 */
#ifndef ANVIL_CUDA_GEMV_MMA16_MAP_H
#define ANVIL_CUDA_GEMV_MMA16_MAP_H

#include <stdint.h>

#ifdef __CUDACC__
#define GMW_HD __host__ __device__ __forceinline__
#else
#define GMW_HD static inline
#endif

enum { GMW_I8 = 0, GMW_U4 = 1, GMW_FP8 = 2 };

/* elements of a lane's 16-byte piece, of a step (a row's 64 bytes), mmas a step */
GMW_HD int gmw_piece_elems(int s) { return s == GMW_U4 ? 32 : 16; }
GMW_HD int gmw_step_elems(int s) { return 4 * gmw_piece_elems(s); }
GMW_HD int gmw_mmas(int s) { return s == GMW_U4 ? 8 : 4; }

/* the element of the lane's piece in mma m (of the step), register r, half h */
GMW_HD int gmw_elem(int s, int m, int r, int h)
{
    if (s == GMW_U4)
        return 8 * (m >> 1) + 2 * (m & 1) + r + 4 * h;
    return 4 * m + 2 * r + h;
}

/* PRMT (__byte_perm): byte i of the result is byte (s >> 4i) & 7 of y:x */
GMW_HD uint32_t gmw_prmt(uint32_t x, uint32_t y, uint32_t s)
{
#ifdef __CUDA_ARCH__
    return __byte_perm(x, y, s);
#else
    const uint64_t v = ((uint64_t)y << 32) | x;
    uint32_t r = 0;
    for (int i = 0; i < 4; i++)
        r |= (uint32_t)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xffu) << (8 * i);
    return r;
#endif
}

/* The 16-bit magic number whose low bits the nibbles are or-ed into: f16
 * 1024 (0x6400, ulp 1 up to 2048: 10 mantissa bits take a nibble at bits
 * 0-3 or 4-7) or bf16 128 (0x4300, ulp 1 up to 256; its 7 mantissa bits
 * take a nibble at bits 0-3 only: bit 7 is the exponent's). */
GMW_HD uint32_t gmw_u4_magic(int bf16) { return bf16 ? 0x43004300u : 0x64006400u; }
GMW_HD float gmw_u4_magic_value(int bf16) { return bf16 ? 128.0f : 1024.0f; }

/* int4: the word's 8 nibbles as four pairs of 16-bit numbers (low half
 * first), one LOP3 each ((w & mask) | magic), M the magic value:
 *   p[0] = (M + e0, M + e4)        p[1] = (M + S e1, M + S e5)
 *   p[2] = (M + e2, M + e6)        p[3] = (M + S e3, M + S e7)
 * f16: S = 16, the high nibbles masked in place (FasterTransformer's: one
 * shift, w >> 8); bf16: S = 1, each pair from its own shift (w >> 4, 8,
 * 12). (p - (M + z)) and, where S = 16, (p / 16 - (M / 16 + z)) are then
 * v - z exactly, one HSUB2 / HFMA2 a pair (the kernel). */
GMW_HD int gmw_u4_scaled(int q, int bf16) { return !bf16 && (q & 1); }
GMW_HD void gmw_u4_pairs(uint32_t w, int bf16, uint32_t p[4])
{
    const uint32_t magic = gmw_u4_magic(bf16), w8 = w >> 8;
    p[0] = (w & 0x000f000fu) | magic;
    p[2] = (w8 & 0x000f000fu) | magic;
    if (bf16) {
        p[1] = ((w >> 4) & 0x000f000fu) | magic;
        p[3] = ((w >> 12) & 0x000f000fu) | magic;
    } else {
        p[1] = (w & 0x00f000f0u) | magic;
        p[3] = (w8 & 0x00f000f0u) | magic;
    }
}

/* int4: pair p of gmw_u4_pairs is mma (2j + p / 2)'s register r = p % 2 */
GMW_HD int gmw_u4_pair_of(int m, int r) { return 2 * (m & 1) + r; }

/* int4: B's register r of mma m (word j = m / 2) from x's 8 natural
 * elements of the word (xw[i] = elements 2i, 2i + 1, low first): the pair
 * (x[a], x[a + 4]) with a = 2 (m & 1) + r */
GMW_HD uint32_t gmw_u4_xpair(const uint32_t xw[4], int m, int r)
{
    const int hh = m & 1;
    return gmw_prmt(xw[hh], xw[hh + 2], r ? 0x7632u : 0x5410u);
}

/* int8 with f16 x: the word's 4 bytes (u = w ^ 0x80808080, v + 128) as two
 * f16 pairs 1024 + u: (e0, e1), (e2, e3); minus 1152 they are v exactly. */
GMW_HD void gmw_i8_pairs_f16(uint32_t w, uint32_t p[2])
{
    const uint32_t u = w ^ 0x80808080u;
    p[0] = gmw_prmt(u, 0x64646464u, 0x4140u);
    p[1] = gmw_prmt(u, 0x64646464u, 0x4342u);
}

/* int8 with bf16 x (bf16 has no magic number for 0..255 at ulp 1): byte i
 * as f32 bits 2^23 + u_i; minus 2^23 + 128 it is v exactly, then two f32
 * to a bf16 pair (exact: |v| <= 128). */
GMW_HD uint32_t gmw_i8_f32bits(uint32_t w, int i)
{
    return gmw_prmt(w ^ 0x80808080u, 0x4B000000u, 0x7540u | (uint32_t)i);
}

#endif
