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
 * Then whole int8/int4 matmuls in the pre-quantized fixtures' layouts (no
 * zero points, varying ones, a perm, small K and N, q/k/v and gate/up as
 * one launch) through that mapping, against the CPU's int path: see
 * test_int_path_fixture_layouts.
 */
#include <math.h>
#include <stdlib.h>
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


/* ---------------------------------------------------------------- whole matmuls, the fixtures' layouts */

/*
 * The int path of the kernel over whole weights, in the layouts of the
 * pre-quantized fixtures (tests/data/quant: hidden 256, intermediate 512,
 * k/v N = 128, groups of 128; q/k/v as one launch of three parts): int4
 * without zero points (z = 8: ct-w4a16), with varying zero points (awq),
 * with zero points and a perm (gptq desc_act), int8 per channel and in
 * groups; N off a multiple of 16, T = 1..8. The fragments come from the
 * mapping above (emulated lanes, as check_scheme); what the kernel does
 * around them is mirrored here from cuda_gemv_mma_quant.cu (gm_quant_int:
 * x' = x[perm[k]] per block of 32, d = max|x'| / 127, q = rint(x' * (1 /
 * d)), the codes at gmq_x_pos, sum q; gm_compute: the block's group 32 blk
 * / gs, d - z sum q for int4 (z = 8 without zero points), fmaf(fl(d s),
 * sum, acc); the 8 warps' K ranges and their partial sums in order; the
 * parts' tiles one after another) and compared with the CPU's int path in
 * double: the same integers, so only the order of f32 sums differs (1e-5
 * of max |want|). A wrong zero point, group index, perm or part boundary
 * is an error of a whole block's weight.
 */
#define EM_MAX_T 8
#define EM_WARPS 8

typedef struct em_weight {
    int scheme; /* GMQ_I8 or GMQ_U4 */
    int N, K, gs;
    uint8_t *w;     /* [N][K] int8 or [N][K/2] nibbles, low first */
    float *scales;  /* [N][K/gs] */
    uint8_t *zeros; /* int4: [N][K/gs] or NULL (8) */
} em_weight;

static float frand(void) { return ((float)(rnd() % 2000001) / 1000000.0f) - 1.0f; }

static void em_make(em_weight *e, int scheme, int N, int K, int gs, int zeros)
{
    const int G = K / gs, rb = scheme == GMQ_U4 ? K / 2 : K;
    e->scheme = scheme;
    e->N = N;
    e->K = K;
    e->gs = gs;
    e->w = malloc((size_t)N * (size_t)rb);
    e->scales = malloc((size_t)N * (size_t)G * sizeof(float));
    e->zeros = zeros ? malloc((size_t)N * (size_t)G) : NULL;
    assert_true(e->w && e->scales && (!zeros || e->zeros));
    for (int i = 0; i < N * rb; i++)
        e->w[i] = (uint8_t)(scheme == GMQ_I8 ? (int)(rnd() % 255) - 127 : (int)rnd());
    for (int i = 0; i < N * G; i++) {
        e->scales[i] = 0.01f + 0.02f * (float)(rnd() % 1000) / 1000.0f;
        if (zeros)
            e->zeros[i] = (uint8_t)(rnd() % 16);
    }
}

static void em_free(em_weight *e)
{
    free(e->w);
    free(e->scales);
    free(e->zeros);
}

static int em_elem(const em_weight *e, int n, int k)
{
    const uint8_t *row = e->w + (size_t)n * (size_t)(e->scheme == GMQ_U4 ? e->K / 2 : e->K);
    return w_elem(e->scheme, row, k);
}

/* x' of every row quantized per block as gm_quant_int: codes [T][K] at gmq_x_pos, d and sum q [T][K/32] */
static void em_quant_x(int scheme, const float *x, const int32_t *perm, int T, int K, int8_t *codes, float *d,
                       int *sq)
{
    for (int r = 0; r < T; r++)
        for (int b = 0; b < K / 32; b++) {
            float v[32], amax = 0.0f;
            for (int i = 0; i < 32; i++) {
                const int k = 32 * b + i;
                v[i] = x[r * K + (perm ? perm[k] : k)];
                amax = fabsf(v[i]) > amax ? fabsf(v[i]) : amax;
            }
            const float db = amax / 127.0f, id = db > 0.0f ? 1.0f / db : 0.0f;
            int sum = 0;
            for (int i = 0; i < 32; i++) {
                const float rr = rintf(v[i] * id);
                const int q = rr > 127.0f ? 127 : rr < -127.0f ? -127 : (int)rr;
                sum += q;
                codes[r * K + 32 * b + gmq_x_pos(scheme, i)] = (int8_t)q;
            }
            d[r * (K / 32) + b] = db;
            sq[r * (K / 32) + b] = sum;
        }
}

/* One step's two mmas for rows n0..n0+15 of e (rows past N zero) and the x codes of T rows: sums[m][16][8] */
static void em_step(const em_weight *e, int n0, int st, const int8_t *codes, int T, int64_t sums[2][ROWS][COLS])
{
    const int sc = e->scheme, rb = sc == GMQ_U4 ? e->K / 2 : e->K;
    uint32_t v[32][2][4];
    for (int lane = 0; lane < 32; lane++) {
        const int g = lane >> 2, t = lane & 3;
        for (int h = 0; h < 2; h++) {
            const int n = n0 + g + 8 * h;
            uint8_t bytes[16];
            memset(bytes, 0, sizeof bytes);
            if (n < e->N) {
                const uint8_t *row = e->w + (size_t)n * (size_t)rb;
                if (sc == GMQ_I8) {
                    memcpy(bytes, row + gmq_load_off(sc, st, t, 0), 8);
                    memcpy(bytes + 8, row + gmq_load_off(sc, st, t, 1), 8);
                } else {
                    memcpy(bytes, row + gmq_load_off(sc, st, t, 0), 8);
                }
            }
            memcpy(v[lane][h], bytes, 16);
        }
    }
    if (sc == GMQ_U4) {
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
    for (int m = 0; m < 2; m++) {
        uint32_t A[32][4], B[32][2];
        for (int lane = 0; lane < 32; lane++) {
            const int g = lane >> 2, t = lane & 3;
            A[lane][0] = gmq_a_reg(sc, v[lane][0], m, 0);
            A[lane][1] = gmq_a_reg(sc, v[lane][1], m, 0);
            A[lane][2] = gmq_a_reg(sc, v[lane][0], m, 1);
            A[lane][3] = gmq_a_reg(sc, v[lane][1], m, 1);
            for (int r = 0; r < 2; r++) {
                B[lane][r] = 0;
                if (g < T) /* columns past T are zeros */
                    memcpy(&B[lane][r], codes + (size_t)g * (size_t)e->K + 64 * st + gmq_b_pos(sc, t, m, r), 4);
            }
        }
        for (int i = 0; i < ROWS; i++)
            for (int c = 0; c < COLS; c++) {
                int64_t sum = 0;
                for (int j = 0; j < 32; j++) {
                    const int ta = (j % 16) / 4, ga = i % 8, reg = (i >= 8 ? 1 : 0) + (j >= 16 ? 2 : 0);
                    sum += (int64_t)byte_of(A[ga * 4 + ta][reg], j % 4, sc == GMQ_I8) *
                           byte_of(B[c * 4 + ta][j >= 16], j % 4, 1);
                }
                sums[m][i][c] = sum;
            }
    }
}

/* The kernel's int path for n_parts weights of one x (one launch): out[p] [T][N_p] */
static void em_launch(const em_weight *parts, int n_parts, const float *x, const int32_t *perm, int T, float **out)
{
    const int K = parts[0].K, sc = parts[0].scheme, NB = K / 32, steps = K / 64;
    int8_t *codes = calloc((size_t)T * (size_t)K, 1);
    float *d = malloc((size_t)T * (size_t)NB * sizeof(float));
    int *sq = malloc((size_t)T * (size_t)NB * sizeof(int));
    assert_true(codes && d && sq);
    em_quant_x(sc, x, perm, T, K, codes, d, sq);
    int tile_end[4], tiles = 0;
    for (int p = 0; p < n_parts; p++)
        tile_end[p] = tiles += (parts[p].N + 15) / 16;
    for (int gtile = 0; gtile < tiles; gtile++) {
        int p = 0;
        while (p + 1 < n_parts && gtile >= tile_end[p])
            p++;
        const em_weight *e = &parts[p];
        const int n0 = (gtile - (p > 0 ? tile_end[p - 1] : 0)) * 16, G = K / e->gs;
        float red[EM_WARPS][ROWS][COLS];
        for (int ks = 0; ks < EM_WARPS; ks++) {
            float acc[ROWS][COLS];
            memset(acc, 0, sizeof acc);
            const int s0 = steps * ks / EM_WARPS, s1 = steps * (ks + 1) / EM_WARPS;
            for (int st = s0; st < s1; st++) {
                int64_t sums[2][ROWS][COLS];
                em_step(e, n0, st, codes, T, sums);
                for (int m = 0; m < 2; m++) {
                    const int blk = 2 * st + m, grp = (32 * blk) / e->gs;
                    for (int i = 0; i < ROWS; i++) {
                        const int n = n0 + i;
                        const float s = n < e->N ? e->scales[n * G + grp] : 0.0f;
                        const int z = sc != GMQ_U4 ? 0 : n < e->N && e->zeros ? e->zeros[n * G + grp] : 8;
                        for (int c = 0; c < COLS; c++) {
                            const int q = c < T ? sq[c * NB + blk] : 0;
                            const float dx = c < T ? d[c * NB + blk] : 0.0f;
                            const int64_t v = sums[m][i][c] - (int64_t)z * q;
                            acc[i][c] = fmaf(dx * s, (float)v, acc[i][c]);
                        }
                    }
                }
            }
            memcpy(red[ks], acc, sizeof acc);
        }
        for (int i = 0; i < ROWS; i++)
            for (int c = 0; c < T; c++) {
                const int n = n0 + i;
                if (n >= e->N)
                    continue;
                float v = 0.0f;
                for (int ks = 0; ks < EM_WARPS; ks++)
                    v += red[ks][i][c];
                out[p][c * e->N + n] = v;
            }
    }
    free(codes);
    free(d);
    free(sq);
}

/* The CPU's int path in double: per block, the exact sum q (v - z) times fl(d s) */
static void em_reference(const em_weight *e, const float *x, const int32_t *perm, int T, double *want)
{
    const int K = e->K, NB = K / 32, G = K / e->gs;
    int8_t *codes = malloc((size_t)T * (size_t)K);
    float *d = malloc((size_t)T * (size_t)NB * sizeof(float));
    int *sq = malloc((size_t)T * (size_t)NB * sizeof(int));
    assert_true(codes && d && sq);
    em_quant_x(GMQ_I8, x, perm, T, K, codes, d, sq); /* GMQ_I8: codes in k order */
    for (int c = 0; c < T; c++)
        for (int n = 0; n < e->N; n++) {
            double acc = 0;
            for (int b = 0; b < NB; b++) {
                const int grp = 32 * b / e->gs;
                const int z = e->scheme != GMQ_U4 ? 0 : e->zeros ? e->zeros[n * G + grp] : 8;
                int64_t s = 0;
                for (int i = 0; i < 32; i++)
                    s += (int64_t)codes[c * K + 32 * b + i] * (em_elem(e, n, 32 * b + i) - z);
                acc += (double)(d[c * NB + b] * e->scales[n * G + grp]) * (double)s;
            }
            want[c * e->N + n] = acc;
        }
    free(codes);
    free(d);
    free(sq);
}

static void em_case(const char *what, int scheme, const int *Ns, int n_parts, int K, int gs, int zeros, int with_perm)
{
    em_weight parts[4];
    for (int p = 0; p < n_parts; p++)
        em_make(&parts[p], scheme, Ns[p], K, gs, zeros);
    int32_t *perm = NULL;
    if (with_perm) { /* a shuffle, as desc_act's columns sorted by group */
        perm = malloc((size_t)K * sizeof *perm);
        assert_non_null(perm);
        for (int k = 0; k < K; k++)
            perm[k] = k;
        for (int k = K - 1; k > 0; k--) {
            const int j = (int)(rnd() % (uint32_t)(k + 1)), tmp = perm[k];
            perm[k] = perm[j];
            perm[j] = tmp;
        }
    }
    for (int T = 1; T <= EM_MAX_T; T++) {
        float *x = malloc((size_t)T * (size_t)K * sizeof *x);
        assert_non_null(x);
        for (int i = 0; i < T * K; i++)
            x[i] = frand() * (i % 7 == 0 ? 4.0f : 1.0f);
        float *out[4];
        for (int p = 0; p < n_parts; p++) {
            out[p] = malloc((size_t)T * (size_t)Ns[p] * sizeof(float));
            assert_non_null(out[p]);
            for (int i = 0; i < T * Ns[p]; i++)
                out[p][i] = NAN; /* an element left unwritten fails */
        }
        em_launch(parts, n_parts, x, perm, T, out);
        for (int p = 0; p < n_parts; p++) {
            double *want = malloc((size_t)T * (size_t)Ns[p] * sizeof *want);
            assert_non_null(want);
            em_reference(&parts[p], x, perm, T, want);
            double maxw = 0, maxd = 0;
            for (int i = 0; i < T * Ns[p]; i++) {
                maxw = fmax(maxw, fabs(want[i]));
                maxd = isfinite(out[p][i]) ? fmax(maxd, fabs(out[p][i] - want[i])) : INFINITY;
            }
            if (!(maxd <= 1e-5 * maxw))
                fail_msg("%s part %d T=%d: max |got - want| %g of max |want| %g", what, p, T, maxd, maxw);
            free(want);
            free(out[p]);
        }
        free(x);
    }
    for (int p = 0; p < n_parts; p++)
        em_free(&parts[p]);
    free(perm);
}

static void test_int_path_fixture_layouts(void **state)
{
    (void)state;
    const int qkv[3] = {256, 128, 128}, gate_up[2] = {512, 512}, down[1] = {256}, odd[2] = {40, 24};
    /* ct-w4a16: symmetric, no zero-point tensor (z = 8); q/k/v as one launch, gate/up, down (K = 512) */
    em_case("int4 g128 no zeros q/k/v", GMQ_U4, qkv, 3, 256, 128, 0, 0);
    em_case("int4 g128 no zeros gate/up", GMQ_U4, gate_up, 2, 256, 128, 0, 0);
    em_case("int4 g128 no zeros down", GMQ_U4, down, 1, 512, 128, 0, 0);
    /* awq: varying zero points */
    em_case("int4 g128 zeros q/k/v", GMQ_U4, qkv, 3, 256, 128, 1, 0);
    em_case("int4 g128 zeros down", GMQ_U4, down, 1, 512, 128, 1, 0);
    /* gptq desc_act: zero points and a perm */
    em_case("int4 g128 zeros perm q/k/v", GMQ_U4, qkv, 3, 256, 128, 1, 1);
    em_case("int4 g128 zeros perm down", GMQ_U4, down, 1, 512, 128, 1, 1);
    /* N off a multiple of 16, groups of 32 and per channel */
    em_case("int4 g32 odd N", GMQ_U4, odd, 2, 256, 32, 1, 0);
    em_case("int4 per channel", GMQ_U4, down, 1, 512, 512, 0, 0);
    /* ct-w8a16: int8 per channel; int8 in groups */
    em_case("int8 per channel q/k/v", GMQ_I8, qkv, 3, 256, 256, 0, 0);
    em_case("int8 per channel down", GMQ_I8, down, 1, 512, 512, 0, 0);
    em_case("int8 g64 odd N perm", GMQ_I8, odd, 2, 256, 64, 0, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_int8),
        cmocka_unit_test(test_map_int4),
        cmocka_unit_test(test_map_fp8),
        cmocka_unit_test(test_map_same_k),
        cmocka_unit_test(test_int_path_fixture_layouts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
