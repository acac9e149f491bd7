/*
 * The fragment mapping of the tensor-core quantized GEMV
 * (src/backend/cuda/cuda_gemv_mma_quant_map.h), checked on the CPU: no GPU
 * needed, so a layout mistake shows up in every build.
 *
 * For each scheme, a warp is emulated over one 64-column step of 16 weight
 * rows and 8 rows of x codes: each lane loads its bytes where
 * gmq_load_off says (int4: then the exchange with lane t ^ 2, through
 * gmq_i4_send / gmq_i4_swap), builds A with gmq_a_reg and B from x codes
 * stored at gmq_x_pos and read at gmq_b_pos, as the kernel does; then the
 * mma is applied as the PTX ISA defines m16n8k32's fragments (A: a0 row g
 * cols 4t + i, a1 row g + 8, a2 row g cols 16 + 4t + i, a3 row g + 8; B: b0
 * rows 4t + i col g, b1 rows 16 + 4t + i) and its 16 x 8 result compared
 * with the plain dot products: for int8/int4 each mma m must be exactly
 * the dot over block m of the step (columns 32m..32m+31); for fp8 the two
 * mmas together the dot over the step's 64 columns. Integers stand for
 * the codes (fp8's products are exact, so the mapping is all that can go
 * wrong). The lanes' load offsets must tile the row's bytes exactly once.
 */
#include <string.h>

#include "backend/cuda/cuda_gemv_mma_quant_map.h"
#include "testutil.h"

#define ROWS 16
#define COLS 8
#define STEP 64

static uint64_t rng_state = 0x5eed1234abcdull;

static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* the element of a row's bytes at physical k (int4: nibble k, low first), as the mma reads it */
static int w_elem(int scheme, const uint8_t *row, int k)
{
    if (scheme == GMQ_U4)
        return (k & 1) ? row[k >> 1] >> 4 : row[k >> 1] & 15;
    if (scheme == GMQ_I8)
        return (int8_t)row[k];
    return row[k]; /* fp8: the code as an index */
}

static int byte_of(uint32_t w, int i, int is_signed)
{
    const uint8_t b = (uint8_t)(w >> (8 * i));
    return is_signed ? (int)(int8_t)b : (int)b;
}

static void check_scheme(int scheme)
{
    const int row_bytes = scheme == GMQ_U4 ? STEP / 2 : STEP;
    uint8_t w[ROWS][STEP];
    int8_t x[COLS][STEP];
    for (int r = 0; r < ROWS; r++)
        for (int b = 0; b < STEP; b++)
            w[r][b] = (uint8_t)rnd();
    for (int c = 0; c < COLS; c++)
        for (int k = 0; k < STEP; k++)
            x[c][k] = (int8_t)((int)(rnd() % 255) - 127);

    /* the lanes' loads tile the row's bytes once */
    int seen[STEP];
    memset(seen, 0, sizeof seen);
    const int n_loads = scheme == GMQ_I8 ? 2 : 1, load_bytes = scheme == GMQ_FP8 ? 16 : 8;
    for (int t = 0; t < 4; t++)
        for (int h = 0; h < n_loads; h++) {
            const int64_t off = gmq_load_off(scheme, 0, t, h);
            assert_true(off >= 0 && off + load_bytes <= row_bytes);
            assert_int_equal(gmq_load_off(scheme, 3, t, h), off + 3 * row_bytes);
            for (int b = 0; b < load_bytes; b++)
                seen[off + b]++;
        }
    for (int b = 0; b < row_bytes; b++)
        assert_int_equal(seen[b], 1);

    /* x codes in shared memory at gmq_x_pos: a bijection of the step */
    uint8_t xs[COLS][STEP];
    memset(seen, 0, sizeof seen);
    for (int k = 0; k < STEP; k++) {
        const int p = gmq_x_pos(scheme, k);
        assert_true(p >= 0 && p < STEP);
        seen[p]++;
        for (int c = 0; c < COLS; c++)
            xs[c][p] = (uint8_t)x[c][k];
    }
    for (int p = 0; p < STEP; p++)
        assert_int_equal(seen[p], 1);

    /* each lane's words of rows g and g + 8, as the kernel holds them */
    uint32_t v[32][2][4];
    for (int lane = 0; lane < 32; lane++) {
        const int g = lane >> 2, t = lane & 3;
        for (int h = 0; h < 2; h++) {
            const uint8_t *row = w[g + 8 * h];
            uint8_t bytes[16];
            memset(bytes, 0, sizeof bytes);
            if (scheme == GMQ_I8) {
                memcpy(bytes, row + gmq_load_off(scheme, 0, t, 0), 8);
                memcpy(bytes + 8, row + gmq_load_off(scheme, 0, t, 1), 8);
            } else {
                memcpy(bytes, row + gmq_load_off(scheme, 0, t, 0), (size_t)load_bytes);
            }
            memcpy(v[lane][h], bytes, 16);
        }
    }
    if (scheme == GMQ_U4) { /* the exchange: every lane sends, then every lane swaps */
        uint32_t sent[32][2];
        for (int lane = 0; lane < 32; lane++)
            for (int h = 0; h < 2; h++)
                sent[lane][h] = gmq_i4_send(lane & 3, v[lane][h][0], v[lane][h][1]);
        for (int lane = 0; lane < 32; lane++)
            for (int h = 0; h < 2; h++) {
                uint32_t b0, b1;
                gmq_i4_swap(lane & 3, v[lane][h][0], v[lane][h][1], sent[lane ^ 2][h], &b0, &b1);
                v[lane][h][0] = b0;
                v[lane][h][1] = b1;
            }
    }

    int64_t got[2][ROWS][COLS];
    for (int m = 0; m < 2; m++) {
        /* the fragments */
        uint32_t A[32][4], B[32][2];
        for (int lane = 0; lane < 32; lane++) {
            const int g = lane >> 2, t = lane & 3;
            A[lane][0] = gmq_a_reg(scheme, v[lane][0], m, 0);
            A[lane][1] = gmq_a_reg(scheme, v[lane][1], m, 0);
            A[lane][2] = gmq_a_reg(scheme, v[lane][0], m, 1);
            A[lane][3] = gmq_a_reg(scheme, v[lane][1], m, 1);
            for (int r = 0; r < 2; r++) {
                const int p = gmq_b_pos(scheme, t, m, r);
                assert_true(p >= 0 && p + 4 <= STEP && p % 4 == 0);
                memcpy(&B[lane][r], &xs[g][p], 4);
            }
        }
        /* the mma, from the PTX ISA's fragment layout */
        const int a_signed = scheme == GMQ_I8;
        for (int i = 0; i < ROWS; i++)
            for (int c = 0; c < COLS; c++) {
                int64_t sum = 0;
                for (int j = 0; j < 32; j++) {
                    const int ta = (j % 16) / 4, ga = i % 8;
                    const int reg = (i >= 8 ? 1 : 0) + (j >= 16 ? 2 : 0);
                    const int a = scheme == GMQ_FP8 ? byte_of(A[ga * 4 + ta][reg], j % 4, 0)
                                                    : byte_of(A[ga * 4 + ta][reg], j % 4, a_signed);
                    const int b = byte_of(B[c * 4 + ta][j >= 16], j % 4, 1);
                    sum += (int64_t)a * b;
                }
                got[m][i][c] = sum;
            }
    }

    for (int i = 0; i < ROWS; i++)
        for (int c = 0; c < COLS; c++) {
            int64_t want[2] = {0, 0};
            for (int k = 0; k < STEP; k++)
                want[k / 32] += (int64_t)w_elem(scheme, w[i], k) * x[c][k];
            if (scheme == GMQ_FP8) {
                assert_true(got[0][i][c] + got[1][i][c] == want[0] + want[1]);
            } else {
                /* one mma, one block: its x scale d applies to it alone */
                if (got[0][i][c] != want[0] || got[1][i][c] != want[1])
                    fail_msg("scheme %d row %d col %d: mma sums %lld %lld, blocks %lld %lld", scheme, i, c,
                             (long long)got[0][i][c], (long long)got[1][i][c], (long long)want[0],
                             (long long)want[1]);
            }
        }
}

static void test_map_int8(void **state)
{
    (void)state;
    for (int r = 0; r < 20; r++)
        check_scheme(GMQ_I8);
}

static void test_map_int4(void **state)
{
    (void)state;
    for (int r = 0; r < 20; r++)
        check_scheme(GMQ_U4);
}

static void test_map_fp8(void **state)
{
    (void)state;
    for (int r = 0; r < 20; r++)
        check_scheme(GMQ_FP8);
}

/* fp8 pairs physical k with one mma each: the two mmas' k sets are disjoint
 * and a lane's A bytes and B bytes name the same k (checked above through
 * the sums; here directly, as positions) */
static void test_map_same_k(void **state)
{
    (void)state;
    const int schemes[3] = {GMQ_I8, GMQ_U4, GMQ_FP8};
    for (int si = 0; si < 3; si++) {
        const int sc = schemes[si];
        int used[STEP];
        memset(used, 0, sizeof used);
        for (int m = 0; m < 2; m++)
            for (int t = 0; t < 4; t++)
                for (int r = 0; r < 2; r++)
                    for (int i = 0; i < 4; i++)
                        used[gmq_b_pos(sc, t, m, r) + i]++;
        for (int p = 0; p < STEP; p++)
            assert_int_equal(used[p], 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_int8),
        cmocka_unit_test(test_map_int4),
        cmocka_unit_test(test_map_fp8),
        cmocka_unit_test(test_map_same_k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
