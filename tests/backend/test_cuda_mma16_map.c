/*
 * The bit tricks and the fragment mapping of the 16-bit tensor-core
 * quantized GEMV (src/backend/cuda/cuda_gemv_mma16_map.h), checked on the
 * CPU: no GPU needed, so a conversion or layout mistake shows up in every
 * build.
 *
 *  - int4: every nibble of random words through gmw_u4_pairs (the LOP3
 *    magic-number conversion), then the kernel's HSUB2 or HFMA2 by 1/16
 *    (f16's odd pairs: the high nibbles in place) with its constants rounded to f16 / bf16 as
 *    gw_splat rounds them, for every zero point 0..15: exactly v - z, each
 *    intermediate exact in the 16-bit format; and the pair's elements are
 *    those gmw_elem names.
 *  - int4 x pairs (gmw_u4_xpair, a byte permutation): the elements of x
 *    gmw_elem names for every mma and register.
 *  - int8: every byte value through gmw_i8_pairs_f16 minus 1152 and
 *    through gmw_i8_f32bits minus 2^23 + 128: the signed value.
 *  - a warp's step emulated: 16 rows of random int4 (with zero points) and
 *    int8 codes, 8 rows of integer-valued x, each lane's A and B built as
 *    the kernel builds them (gw_step) and the mma applied as the PTX ISA
 *    defines m16n8k16's fragments; the 16 x 8 result equal to the plain
 *    dot products (integers: exact), and the lanes' pieces tiling the
 *    step's 64 bytes exactly once.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/dtype.h"
#include "backend/cuda/cuda_gemv_mma16_map.h"
#include "testutil.h"

static uint64_t rng_state = 0x16b17e57ull;

static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* a 16-bit number (f16 or bf16 bits) as a float */
static float h16(uint32_t bits, int bf16)
{
    const uint16_t u = (uint16_t)bits;
    float f;
    anvil_convert_to_f32(bf16 ? ANVIL_DTYPE_BF16 : ANVIL_DTYPE_F16, &u, &f, 1);
    return f;
}

/* v rounded to f16 / bf16 (the result of a 16-bit instruction) */
static float r16(float v, int bf16)
{
    uint16_t u;
    float f;
    const anvil_dtype dt = bf16 ? ANVIL_DTYPE_BF16 : ANVIL_DTYPE_F16;
    anvil_convert_from_f32(dt, &v, &u, 1);
    anvil_convert_to_f32(dt, &u, &f, 1);
    return f;
}

/* half h of a 32-bit pair */
static uint32_t half_of(uint32_t p, int h) { return h ? p >> 16 : p & 0xffffu; }

/* the kernel's v - z of int4 pair q (gw_step): exact, or -1000 on a rounding */
static float u4_value(uint32_t pq, int q, int h, int z, int bf16)
{
    const float mv = gmw_u4_magic_value(bf16);
    const float p = h16(half_of(pq, h), bf16);
    if (!gmw_u4_scaled(q, bf16)) {
        const float zlo = r16(mv + (float)z, bf16);
        return r16(p - zlo, bf16);
    }
    const float zhi = r16(-(mv / 16.0f + (float)z), bf16);
    /* HFMA2: one rounding of p * (1/16) + zhi; in double both are exact */
    return r16((float)((double)p * 0.0625 + (double)zhi), bf16);
}

static void test_u4_pairs(void **state)
{
    (void)state;
    for (int bf16 = 0; bf16 < 2; bf16++) {
        const float mv = gmw_u4_magic_value(bf16);
        for (int it = 0; it < 2000; it++) {
            const uint32_t w = it < 16 ? 0x11111111u * (uint32_t)it : rnd();
            uint32_t p[4];
            gmw_u4_pairs(w, bf16, p);
            for (int q = 0; q < 4; q++)
                for (int h = 0; h < 2; h++) {
                    const int e = q + 4 * h; /* the element: p[0] = (e0, e4), p[1] = (e1, e5), ... */
                    const int v = (int)((w >> (4 * e)) & 15u);
                    /* the magic number plus the nibble (times 16 for odd pairs), exact */
                    assert_true(h16(half_of(p[q], h), bf16) == mv + (float)(gmw_u4_scaled(q, bf16) ? 16 * v : v));
                    for (int z = 0; z < 16; z++)
                        assert_true(u4_value(p[q], q, h, z, bf16) == (float)(v - z));
                }
        }
    }
    /* the pairs' places in the mmas agree with gmw_elem */
    for (int m = 0; m < gmw_mmas(GMW_U4); m++)
        for (int r = 0; r < 2; r++)
            for (int h = 0; h < 2; h++)
                assert_int_equal(gmw_elem(GMW_U4, m, r, h), 8 * (m / 2) + gmw_u4_pair_of(m, r) + 4 * h);
}

static void test_u4_xpair(void **state)
{
    (void)state;
    for (int it = 0; it < 200; it++) {
        uint32_t xw[4];
        uint16_t x[8];
        for (int i = 0; i < 4; i++) {
            xw[i] = rnd();
            x[2 * i] = (uint16_t)(xw[i] & 0xffffu);
            x[2 * i + 1] = (uint16_t)(xw[i] >> 16);
        }
        for (int m = 0; m < 2; m++) /* word j = 0: mmas 0, 1 (others: the same with j) */
            for (int r = 0; r < 2; r++) {
                const uint32_t b = gmw_u4_xpair(xw, m, r);
                for (int h = 0; h < 2; h++)
                    assert_int_equal(half_of(b, h), x[gmw_elem(GMW_U4, m, r, h)]);
            }
    }
}

static void test_i8_pairs(void **state)
{
    (void)state;
    for (uint32_t b = 0; b < 256; b++)
        for (int pos = 0; pos < 4; pos++) {
            const uint32_t w = (b << (8 * pos)) | (rnd() & ~(0xffu << (8 * pos)));
            const int v = (int)(int8_t)(uint8_t)b;
            uint32_t p[2];
            gmw_i8_pairs_f16(w, p);
            /* byte pos is element pos: pair pos / 2, half pos % 2 (gmw_elem: 4m + 2r + h) */
            const float f16v = h16(half_of(p[pos / 2], pos % 2), 0);
            assert_true(r16(f16v - 1152.0f, 0) == (float)v);
            uint32_t bits = gmw_i8_f32bits(w, pos);
            float f;
            memcpy(&f, &bits, 4);
            assert_true(f - 8388736.0f == (float)v);
        }
}

/* ---------------------------------------------------------------- a warp's step */

#define ROWS 16
#define COLS 8

/* D += A B as m16n8k16 defines its fragments, from the 32 lanes' registers
 * as numbers: a[lane][reg][half], b[lane][reg][half] */
static void mma_emulate(const float a[32][4][2], const float b[32][2][2], double d[ROWS][COLS])
{
    float A[ROWS][16], B[16][COLS];
    for (int lane = 0; lane < 32; lane++) {
        const int g = lane / 4, t = lane % 4;
        for (int h = 0; h < 2; h++) {
            A[g][2 * t + h] = a[lane][0][h];
            A[g + 8][2 * t + h] = a[lane][1][h];
            A[g][2 * t + 8 + h] = a[lane][2][h];
            A[g + 8][2 * t + 8 + h] = a[lane][3][h];
            B[2 * t + h][g] = b[lane][0][h];
            B[2 * t + 8 + h][g] = b[lane][1][h];
        }
    }
    for (int i = 0; i < ROWS; i++)
        for (int j = 0; j < COLS; j++)
            for (int k = 0; k < 16; k++)
                d[i][j] += (double)A[i][k] * (double)B[k][j];
}

/* One step (64 bytes a row) of scheme s (GMW_U4 or GMW_I8) emulated as the
 * kernel runs it, against the plain dot products. */
static void run_step(int s, int bf16)
{
    const int se = gmw_step_elems(s), pe = gmw_piece_elems(s);
    uint8_t wrow[ROWS][64];
    int z[ROWS];
    float x[COLS][128];
    for (int n = 0; n < ROWS; n++) {
        for (int i = 0; i < 64; i++)
            wrow[n][i] = (uint8_t)rnd();
        z[n] = s == GMW_U4 ? (int)(rnd() % 16) : 0;
    }
    for (int c = 0; c < COLS; c++)
        for (int k = 0; k < se; k++)
            x[c][k] = (float)((int)(rnd() % 17) - 8); /* small integers: every sum exact */
    /* the plain dot products */
    double want[ROWS][COLS];
    for (int n = 0; n < ROWS; n++)
        for (int c = 0; c < COLS; c++) {
            double acc = 0.0;
            for (int k = 0; k < se; k++) {
                const int v = s == GMW_U4 ? (int)((wrow[n][k / 2] >> (4 * (k & 1))) & 15u) - z[n]
                                          : (int)(int8_t)wrow[n][k];
                acc += (double)v * x[c][k];
            }
            want[n][c] = acc;
        }
    /* the lanes' pieces tile the 64 bytes once (each lane: 16 bytes at 16 t) */
    int covered[64] = {0};
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < 16; i++)
            covered[16 * t + i]++;
    for (int i = 0; i < 64; i++)
        assert_int_equal(covered[i], 1);
    double got[ROWS][COLS];
    memset(got, 0, sizeof got);
    for (int m = 0; m < gmw_mmas(s); m++) {
        float a[32][4][2], b[32][2][2];
        for (int lane = 0; lane < 32; lane++) {
            const int g = lane / 4, t = lane % 4;
            /* the lane's pieces: rows g, g + 8, bytes 16 t .. 16 t + 15, as 4 words */
            uint32_t w[2][4];
            for (int h = 0; h < 2; h++)
                for (int j = 0; j < 4; j++)
                    memcpy(&w[h][j], &wrow[g + 8 * h][16 * t + 4 * j], 4);
            float v[2][2][2]; /* [row][reg][half] */
            for (int h = 0; h < 2; h++) {
                if (s == GMW_U4) {
                    uint32_t p[4];
                    gmw_u4_pairs(w[h][m / 2], bf16, p);
                    for (int r = 0; r < 2; r++) {
                        const int q = gmw_u4_pair_of(m, r);
                        for (int hh = 0; hh < 2; hh++)
                            v[h][r][hh] = u4_value(p[q], q, hh, z[g + 8 * h], bf16);
                    }
                } else {
                    for (int r = 0; r < 2; r++)
                        for (int hh = 0; hh < 2; hh++) {
                            if (bf16) {
                                uint32_t bits = gmw_i8_f32bits(w[h][m], 2 * r + hh);
                                float f;
                                memcpy(&f, &bits, 4);
                                v[h][r][hh] = r16(f - 8388736.0f, 1);
                            } else {
                                uint32_t p[2];
                                gmw_i8_pairs_f16(w[h][m], p);
                                v[h][r][hh] = r16(h16(half_of(p[r], hh), 0) - 1152.0f, 0);
                            }
                        }
                }
            }
            /* A = {row g reg 0, row g + 8 reg 0, row g reg 1, row g + 8 reg 1} */
            for (int hh = 0; hh < 2; hh++) {
                a[lane][0][hh] = v[0][0][hh];
                a[lane][1][hh] = v[1][0][hh];
                a[lane][2][hh] = v[0][1][hh];
                a[lane][3][hh] = v[1][1][hh];
            }
            /* B: x row g at the piece's elements */
            const float *xp = &x[g][pe * t];
            if (s == GMW_U4) {
                /* x's 8 elements of word m / 2 as 4 packed pairs, through gmw_u4_xpair */
                uint32_t xw[4];
                uint16_t bits[8];
                for (int i = 0; i < 8; i++) {
                    float f = xp[8 * (m / 2) + i];
                    anvil_convert_from_f32(bf16 ? ANVIL_DTYPE_BF16 : ANVIL_DTYPE_F16, &f, &bits[i], 1);
                }
                for (int i = 0; i < 4; i++)
                    xw[i] = (uint32_t)bits[2 * i] | ((uint32_t)bits[2 * i + 1] << 16);
                for (int r = 0; r < 2; r++) {
                    const uint32_t bb = gmw_u4_xpair(xw, m, r);
                    for (int hh = 0; hh < 2; hh++)
                        b[lane][r][hh] = h16(half_of(bb, hh), bf16);
                }
            } else {
                for (int r = 0; r < 2; r++)
                    for (int hh = 0; hh < 2; hh++)
                        b[lane][r][hh] = xp[gmw_elem(s, m, r, hh)];
            }
        }
        mma_emulate(a, b, got);
    }
    for (int n = 0; n < ROWS; n++)
        for (int c = 0; c < COLS; c++)
            if (got[n][c] != want[n][c])
                fail_msg("%s %s: row %d col %d: %g, want %g", s == GMW_U4 ? "int4" : "int8", bf16 ? "bf16" : "f16",
                         n, c, got[n][c], want[n][c]);
}

static void test_step(void **state)
{
    (void)state;
    for (int it = 0; it < 20; it++)
        for (int bf16 = 0; bf16 < 2; bf16++) {
            run_step(GMW_U4, bf16);
            run_step(GMW_I8, bf16);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_u4_pairs),
        cmocka_unit_test(test_u4_xpair),
        cmocka_unit_test(test_i8_pairs),
        cmocka_unit_test(test_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
