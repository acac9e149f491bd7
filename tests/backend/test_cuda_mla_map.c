/*
 * The tensor-core mla kernel's maps (src/backend/cuda/cuda_mla_map.h,
 * which cuda_mla_mma.cu runs), emulated on the CPU (CI, no GPU):
 *  - the splits: for spans, block counts and positions, every key 0..p of
 *    a token is in exactly one split (the last one running to p even past
 *    the span), splits are whole 64-key tiles, at most MLA_MAX_SPLITS;
 *  - the tile copy: every 16-byte piece of every row of a tile copied
 *    exactly once by the block's 128 threads;
 *  - the score tile's padding: a warp's writes and reads of it meet at most
 *    2-way bank conflicts;
 *  - the attention kernel itself, warp by warp and lane by lane: the
 *    shared-memory tiles filled through the copy map and a scattered block
 *    table, the ldmatrix row addresses of Q, K and V (ldmatrix emulated
 *    from the PTX ISA's description: matrix i's row r from lane 8 i + r,
 *    register i of lane l its row l / 4, columns 2 (l % 4) and + 1; the
 *    transposed form its column l / 4, rows 2 (l % 4) and + 1), each
 *    mma.m16n8k16 emulated from the ISA's fragment layouts (written here
 *    independently of the map), the score tile written and read back
 *    through the map's fragment positions, the online softmax, P V, the
 *    partials and the output kernel's merge of the splits: o_lat must
 *    equal the attention of the q_abs rows over the latent rows computed
 *    directly in double (1e-5 of the largest value with P kept in f32,
 *    1e-2 with P rounded to bf16 as the kernel does), for V2-Lite's shape
 *    and smaller ones, 1 to 20 heads, several splits, block sizes 7/16/64;
 *  - the expanded form's flash kernel (cuda_mla_prefill.cu), one warp's 16
 *    causal rows the same way (Q fragments from the kernel's 32-bit words,
 *    K rows from the kv and kpe buffers, P from the score accumulators, V
 *    by transposed ldmatrix), against attention in double, for nope + rope
 *    / v of 192 / 128, 96 / 64 and 48 / 48 and rows up to 3 tiles in.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/dtype.h"
#include "backend/cuda/cuda_mla_map.h"
#include "testutil.h"

/* ---------------------------------------------------------------- splits and copies */

static void test_splits(void **s)
{
    (void)s;
    const int32_t spans[] = {1, 2, 63, 64, 65, 130, 512, 1000, 4096, 4097, 100000};
    const int64_t blocks[] = {1, 7, 16, 64, 132, 2048};
    int n_checked = 0;
    for (size_t a = 0; a < sizeof spans / sizeof spans[0]; a++)
        for (size_t b = 0; b < sizeof blocks / sizeof blocks[0]; b++)
            for (int32_t force = 0; force <= 70; force += 35) {
                int32_t n = 0, len = 0;
                mla_choose_splits(blocks[b], 1, 132, spans[a], force, &n, &len);
                assert_true(n >= 1 && n <= MLA_MAX_SPLITS);
                assert_true(len >= MLA_BN && len % MLA_BN == 0);
                assert_true((int64_t)n * len >= spans[a] && (int64_t)(n - 1) * len < spans[a]);
                if (force > 0)
                    assert_true(n <= force);
                /* positions below, at and past the span (max_context too small) */
                const int32_t ps[] = {0, spans[a] / 2, spans[a] - 1, spans[a] + 100};
                for (int pi = 0; pi < 4; pi++) {
                    const int32_t p = ps[pi];
                    int32_t covered = 0, next = 0;
                    for (int32_t sp = 0; sp < n; sp++) {
                        int32_t kb, ke;
                        mla_split_keys(sp, n, len, p, &kb, &ke);
                        if (ke <= kb)
                            continue;
                        assert_int_equal(kb, next); /* in order, no gap, no overlap */
                        next = ke;
                        covered += ke - kb;
                    }
                    assert_int_equal(covered, p + 1);
                    assert_int_equal(next, p + 1);
                    n_checked++;
                }
            }
    /* a bad token (p = -1): every split empty */
    for (int32_t sp = 0; sp < 5; sp++) {
        int32_t kb, ke;
        mla_split_keys(sp, 5, 64, -1, &kb, &ke);
        assert_true(ke <= kb);
    }
    /* the cost model spreads a lone decode token over the GPU and keeps a big batch whole */
    int32_t n = 0, len = 0;
    mla_choose_splits(1, 1, 132, 4096, 0, &n, &len);
    assert_true(n >= 32);
    mla_choose_splits(2048, 1, 132, 2048, 0, &n, &len);
    assert_int_equal(n, 1);
    printf("  PASS splits: %d (span, blocks, position) combinations cover each key once\n", n_checked);
}

static void test_copy_map(void **s)
{
    (void)s;
    const int32_t widths[] = {144, 160, 288, 576, 768};
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
        const int32_t w = widths[wi], P = w / 8, n_copies = (MLA_BN * P + MLA_THREADS - 1) / MLA_THREADS;
        int *count = calloc((size_t)MLA_BN * P, sizeof *count);
        assert_non_null(count);
        for (int32_t x = 0; x < MLA_THREADS; x++) {
            int32_t row = mla_copy_row(x, 0, w), pc = mla_copy_piece(x, 0, w);
            for (int32_t i = 0; i < n_copies; i++, mla_copy_next(&row, &pc, P)) {
                /* the kernel's stepping agrees with the direct map */
                assert_int_equal(row, mla_copy_row(x, i, w));
                assert_int_equal(pc, mla_copy_piece(x, i, w));
                if (row >= MLA_BN)
                    break; /* as the kernel: later copies of this thread are past the tile too */
                assert_true(pc >= 0 && pc < P);
                count[row * P + pc]++;
            }
        }
        for (int32_t k = 0; k < MLA_BN * P; k++)
            assert_int_equal(count[k], 1);
        free(count);
    }
    printf("  PASS copy map: every piece of a tile once, widths 144..768\n");
}

/* The score tile's accesses by a warp (the absorbed kernel's writes of its
 * 16 keys, its reads of P's A fragments): at most 2 distinct words a bank */
static int worst_bank_conflict(const int addr[32])
{
    int worst = 0;
    for (int b = 0; b < 32; b++) {
        int words[32], n = 0;
        for (int l = 0; l < 32; l++) {
            if (addr[l] % 32 != b)
                continue;
            int seen = 0;
            for (int i = 0; i < n; i++)
                seen |= words[i] == addr[l];
            if (!seen)
                words[n++] = addr[l];
        }
        worst = n > worst ? n : worst;
    }
    return worst;
}

static void test_score_banks(void **s)
{
    (void)s;
    int worst = 0, addr[32];
    for (int warp = 0; warp < MLA_WARPS; warp++)
        for (int nt = 0; nt < 2; nt++)
            for (int e = 0; e < 4; e++) {
                for (int l = 0; l < 32; l++)
                    addr[l] = mla_acc_row(l, e) * MLA_SS + warp * 16 + nt * 8 + mla_acc_col(l, e);
                const int w = worst_bank_conflict(addr);
                worst = w > worst ? w : worst;
            }
    for (int kc = 0; kc < 4; kc++)
        for (int r = 0; r < 4; r++)
            for (int h = 0; h < 2; h++) {
                for (int l = 0; l < 32; l++)
                    addr[l] = mla_a_row(l, r) * MLA_SS + kc * 16 + mla_a_k(l, r, h);
                const int w = worst_bank_conflict(addr);
                worst = w > worst ? w : worst;
            }
    printf("  %s score tile: at most %d-way bank conflicts (row stride %d floats)\n", worst <= 2 ? "PASS" : "FAIL",
           worst, MLA_SS);
    assert_true(worst <= 2);
}

/* ---------------------------------------------------------------- warp emulation */

/* PTX ISA, mma.m16n8k16 .bf16/.f16 fragments (g = lane / 4, t = lane % 4):
 * A a0 (g, 2t..+1), a1 (g + 8, 2t..), a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..);
 * B b0 (k 2t..+1, n g), b1 (k 2t + 8.., n g); C c0 c1 (g, 2t..+1), c2 c3 (g + 8, ..). */
static int isa_a_row(int lane, int r) { return lane / 4 + (r == 1 || r == 3 ? 8 : 0); }
static int isa_a_k(int lane, int r, int h) { return 2 * (lane % 4) + h + (r >= 2 ? 8 : 0); }
static int isa_b_k(int lane, int r, int h) { return 2 * (lane % 4) + h + (r == 1 ? 8 : 0); }
static int isa_c_row(int lane, int e) { return lane / 4 + (e >= 2 ? 8 : 0); }
static int isa_c_col(int lane, int e) { return 2 * (lane % 4) + (e % 2); }

/* ldmatrix .x4 from a float image of shared memory: addr[l] = lane l's row
 * address (elements); reg[l][i][h] = the half h of register i of lane l */
static void ldmatrix_x4(const float *sm, const int addr[32], int trans, float reg[32][4][2])
{
    for (int l = 0; l < 32; l++)
        for (int i = 0; i < 4; i++)
            for (int h = 0; h < 2; h++)
                reg[l][i][h] = trans ? sm[addr[8 * i + 2 * (l % 4) + h] + l / 4] : sm[addr[8 * i + l / 4] + 2 * (l % 4) + h];
}

/* d += A B for one warp: a[l][r][h] A's fragments, b[l][r][h] B's (r 0, 1) */
static void mma(float d[32][4], float a[32][4][2], float b[32][2][2])
{
    double A[16][16], B[16][8];
    for (int l = 0; l < 32; l++) {
        for (int r = 0; r < 4; r++)
            for (int h = 0; h < 2; h++)
                A[isa_a_row(l, r)][isa_a_k(l, r, h)] = a[l][r][h];
        for (int r = 0; r < 2; r++)
            for (int h = 0; h < 2; h++)
                B[isa_b_k(l, r, h)][l / 4] = b[l][r][h];
    }
    for (int l = 0; l < 32; l++)
        for (int e = 0; e < 4; e++) {
            double acc = 0.0;
            for (int k = 0; k < 16; k++)
                acc += A[isa_c_row(l, e)][k] * B[k][isa_c_col(l, e)];
            d[l][e] += (float)acc;
        }
}

static float bf16r(float x) { return anvil_bf16_to_f32(anvil_f32_to_bf16(x)); }

typedef struct ecase {
    int32_t H, R, dr, bs, n_seqs;
    int32_t prior[3], rows[3];
    int32_t force_splits;
} ecase;

#define NTW_MAX 16

/* One lane's state in the kernel: (m, l) of its rows g and g + 8, O of its warp's dims */
typedef struct lane_state {
    float m0, m1, l0, l1;
    float o[NTW_MAX][4];
} lane_state;

/* The kernel's block (t, hc, sp) emulated: partials into ml [H][n][2], acc [H][n][R] (this token's) */
static void emulate_block(const ecase *c, const float *qabs, const float *cache, const int32_t *bt, int32_t p,
                          int32_t hc, int32_t sp, int32_t n_splits, int32_t split_len, int round_p, float *ml,
                          float *acc)
{
    const int32_t R = c->R, w = R + c->dr, ks = w + 8, KC = w / 16, P = w / 8, DW = R / MLA_WARPS, NTW = DW / 8;
    float *qsm = calloc((size_t)MLA_ROWS * ks, sizeof(float)), *tile = calloc((size_t)MLA_BN * ks, sizeof(float));
    float ssm[MLA_ROWS * MLA_SS];
    lane_state *ls = calloc(MLA_WARPS * 32, sizeof *ls);
    assert_true(qsm && tile && ls);
    for (int i = 0; i < MLA_WARPS * 32; i++)
        ls[i].m0 = ls[i].m1 = -INFINITY;
    for (int32_t r = 0; r < MLA_ROWS; r++)
        for (int32_t j = 0; j < w; j++)
            qsm[r * ks + j] = hc * MLA_ROWS + r < c->H ? qabs[(hc * MLA_ROWS + r) * w + j] : 0.0f;
    int32_t kbeg, kend;
    mla_split_keys(sp, n_splits, split_len, p, &kbeg, &kend);
    const int32_t n_tiles = kend > kbeg ? (kend - kbeg + MLA_BN - 1) / MLA_BN : 0;
    const int32_t n_copies = (MLA_BN * P + MLA_THREADS - 1) / MLA_THREADS;
    const float sl2 = 0.1f * 1.4426950408889634f;
    for (int32_t it = 0; it < n_tiles; it++) {
        const int32_t kt = kbeg + it * MLA_BN;
        for (int32_t x = 0; x < MLA_THREADS; x++) {
            int32_t row = mla_copy_row(x, 0, w), pc = mla_copy_piece(x, 0, w);
            for (int32_t i = 0; i < n_copies; i++, mla_copy_next(&row, &pc, P)) {
                const int32_t kj = kt + row;
                if (row >= MLA_BN)
                    break;
                for (int e = 0; e < 8; e++) /* rows past kend zero-filled */
                    tile[row * ks + pc * 8 + e] =
                        kj < kend ? cache[((int64_t)bt[kj / c->bs] * c->bs + kj % c->bs) * w + pc * 8 + e] : 0.0f;
            }
        }
        /* S: each warp its 16 keys */
        for (int32_t warp = 0; warp < MLA_WARPS; warp++) {
            float sc[2][32][4];
            memset(sc, 0, sizeof sc);
            for (int32_t kc = 0; kc < KC; kc++) {
                int qa_addr[32], kb_addr[32];
                float qa[32][4][2], kb[32][4][2], b0[32][2][2], b1[32][2][2];
                for (int l = 0; l < 32; l++) {
                    qa_addr[l] = mla_ldm_q(l, kc, ks);
                    kb_addr[l] = mla_ldm_k(l, warp, kc, ks);
                }
                ldmatrix_x4(qsm, qa_addr, 0, qa);
                ldmatrix_x4(tile, kb_addr, 0, kb);
                for (int l = 0; l < 32; l++)
                    for (int h = 0; h < 2; h++) {
                        b0[l][0][h] = kb[l][0][h], b0[l][1][h] = kb[l][1][h];
                        b1[l][0][h] = kb[l][2][h], b1[l][1][h] = kb[l][3][h];
                    }
                mma(sc[0], qa, b0);
                mma(sc[1], qa, b1);
            }
            for (int nt = 0; nt < 2; nt++)
                for (int l = 0; l < 32; l++)
                    for (int e = 0; e < 4; e++) {
                        const int col = warp * 16 + nt * 8 + mla_acc_col(l, e);
                        ssm[mla_acc_row(l, e) * MLA_SS + col] = kt + col < kend ? sc[nt][l][e] * sl2 : -INFINITY;
                    }
        }
        /* every warp: softmax over the whole tile, then P V on its dims */
        for (int32_t warp = 0; warp < MLA_WARPS; warp++) {
            float pf[4][32][4][2];
            float mt0[32], mt1[32];
            for (int l = 0; l < 32; l++) {
                mt0[l] = mt1[l] = -INFINITY;
                for (int kc = 0; kc < 4; kc++)
                    for (int r = 0; r < 4; r++)
                        for (int h = 0; h < 2; h++) {
                            const float x = ssm[mla_a_row(l, r) * MLA_SS + kc * 16 + mla_a_k(l, r, h)];
                            pf[kc][l][r][h] = x;
                            if (r & 1)
                                mt1[l] = fmaxf(mt1[l], x);
                            else
                                mt0[l] = fmaxf(mt0[l], x);
                        }
            }
            for (int l = 0; l < 32; l++) { /* the quad's maxima (shfl_xor 1, 2) */
                const int q0 = l & ~3;
                float a0 = -INFINITY, a1 = -INFINITY;
                for (int j = 0; j < 4; j++)
                    a0 = fmaxf(a0, mt0[q0 + j]), a1 = fmaxf(a1, mt1[q0 + j]);
                lane_state *L = &ls[warp * 32 + l];
                const float mn0 = fmaxf(L->m0, a0), mn1 = fmaxf(L->m1, a1);
                const float c0 = mn0 == -INFINITY ? 1.0f : exp2f(L->m0 - mn0);
                const float c1 = mn1 == -INFINITY ? 1.0f : exp2f(L->m1 - mn1);
                L->m0 = mn0, L->m1 = mn1, L->l0 *= c0, L->l1 *= c1;
                for (int i = 0; i < NTW; i++)
                    L->o[i][0] *= c0, L->o[i][1] *= c0, L->o[i][2] *= c1, L->o[i][3] *= c1;
                const float ms0 = mn0 == -INFINITY ? 0.0f : mn0, ms1 = mn1 == -INFINITY ? 0.0f : mn1;
                for (int kc = 0; kc < 4; kc++)
                    for (int r = 0; r < 4; r++)
                        for (int h = 0; h < 2; h++) {
                            const float e = exp2f(pf[kc][l][r][h] - (r & 1 ? ms1 : ms0));
                            if (r & 1)
                                L->l1 += e;
                            else
                                L->l0 += e;
                            pf[kc][l][r][h] = round_p ? bf16r(e) : e;
                        }
            }
            for (int kc = 0; kc < 4; kc++)
                for (int nt = 0; nt < NTW; nt += 2) {
                    int v_addr[32];
                    float vb[32][4][2], b0[32][2][2], b1[32][2][2], d0[32][4], d1[32][4];
                    for (int l = 0; l < 32; l++)
                        v_addr[l] = mla_ldm_v(l, kc, warp * DW + nt * 8, ks);
                    ldmatrix_x4(tile, v_addr, 1, vb);
                    for (int l = 0; l < 32; l++) {
                        for (int h = 0; h < 2; h++) {
                            b0[l][0][h] = vb[l][0][h], b0[l][1][h] = vb[l][1][h];
                            b1[l][0][h] = vb[l][2][h], b1[l][1][h] = vb[l][3][h];
                        }
                        for (int e = 0; e < 4; e++)
                            d0[l][e] = ls[warp * 32 + l].o[nt][e], d1[l][e] = ls[warp * 32 + l].o[nt + 1][e];
                    }
                    mma(d0, pf[kc], b0);
                    mma(d1, pf[kc], b1);
                    for (int l = 0; l < 32; l++)
                        for (int e = 0; e < 4; e++)
                            ls[warp * 32 + l].o[nt][e] = d0[l][e], ls[warp * 32 + l].o[nt + 1][e] = d1[l][e];
                }
        }
    }
    /* the partials, as the kernel writes them */
    for (int32_t warp = 0; warp < MLA_WARPS; warp++)
        for (int l = 0; l < 32; l++) {
            float l0 = 0.0f, l1 = 0.0f;
            for (int j = 0; j < 4; j++)
                l0 += ls[warp * 32 + (l & ~3) + j].l0, l1 += ls[warp * 32 + (l & ~3) + j].l1;
            const lane_state *L = &ls[warp * 32 + l];
            const int32_t h0 = hc * MLA_ROWS + mla_acc_row(l, 0), h1 = hc * MLA_ROWS + mla_acc_row(l, 2);
            for (int nt = 0; nt < NTW; nt++) {
                const int32_t d = warp * DW + nt * 8 + mla_acc_col(l, 0);
                if (h0 < c->H)
                    acc[((int64_t)h0 * n_splits + sp) * R + d] = L->o[nt][0], acc[((int64_t)h0 * n_splits + sp) * R + d + 1] = L->o[nt][1];
                if (h1 < c->H)
                    acc[((int64_t)h1 * n_splits + sp) * R + d] = L->o[nt][2], acc[((int64_t)h1 * n_splits + sp) * R + d + 1] = L->o[nt][3];
            }
            if (warp == 0 && (l & 3) == 0) {
                if (h0 < c->H)
                    ml[(h0 * n_splits + sp) * 2] = L->m0, ml[(h0 * n_splits + sp) * 2 + 1] = l0;
                if (h1 < c->H)
                    ml[(h1 * n_splits + sp) * 2] = L->m1, ml[(h1 * n_splits + sp) * 2 + 1] = l1;
            }
        }
    free(qsm), free(tile), free(ls);
}

static float urand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

/* Every token of case c emulated and checked; returns max error / max |o_lat| */
static double run_case(const ecase *c, int round_p)
{
    uint64_t rng = 0x1234 + (uint64_t)c->R * 7 + (uint64_t)c->H;
    const int32_t R = c->R, w = R + c->dr;
    int32_t most = 0;
    for (int32_t s = 0; s < c->n_seqs; s++)
        most = c->prior[s] + c->rows[s] > most ? c->prior[s] + c->rows[s] : most;
    const int32_t maxb = (most + c->bs - 1) / c->bs, n_blocks = c->n_seqs * maxb;
    float *cache = malloc((size_t)n_blocks * c->bs * w * sizeof(float));
    int32_t *tables = malloc((size_t)n_blocks * sizeof(int32_t));
    float *qabs = malloc((size_t)c->H * w * sizeof(float));
    assert_true(cache && tables && qabs);
    for (int64_t i = 0; i < (int64_t)n_blocks * c->bs * w; i++)
        cache[i] = bf16r(urand(&rng));
    for (int32_t i = 0; i < n_blocks; i++) /* scattered: a bijection of the ids */
        tables[i] = (int32_t)(((int64_t)i * 7 + 3) % n_blocks);
    if (n_blocks % 7 == 0)
        for (int32_t i = 0; i < n_blocks; i++)
            tables[i] = n_blocks - 1 - i;
    double worst = 0.0;
    for (int32_t s = 0; s < c->n_seqs; s++)
        for (int32_t r = 0; r < c->rows[s]; r++) {
            const int32_t p = c->prior[s] + r;
            const int32_t *bt = tables + s * maxb;
            for (int64_t i = 0; i < (int64_t)c->H * w; i++)
                qabs[i] = bf16r(2.0f * urand(&rng));
            int32_t n = 0, len = 0;
            mla_choose_splits((c->H + MLA_ROWS - 1) / MLA_ROWS, 1, 132, most, c->force_splits, &n, &len);
            float *ml = malloc((size_t)c->H * n * 2 * sizeof(float)), *acc = malloc((size_t)c->H * n * R * sizeof(float));
            assert_true(ml && acc);
            for (int32_t hc = 0; hc * MLA_ROWS < c->H; hc++)
                for (int32_t sp = 0; sp < n; sp++)
                    emulate_block(c, qabs, cache, bt, p, hc, sp, n, len, round_p, ml, acc);
            /* the output kernel's merge, then the check against double */
            double me = 0.0, mw = 1e-30;
            for (int32_t h = 0; h < c->H; h++) {
                float mx = -INFINITY, L = 0.0f;
                for (int32_t sp = 0; sp < n; sp++)
                    mx = fmaxf(mx, ml[(h * n + sp) * 2]);
                for (int32_t sp = 0; sp < n; sp++)
                    L += ml[(h * n + sp) * 2] == -INFINITY ? 0.0f : ml[(h * n + sp) * 2 + 1] * exp2f(ml[(h * n + sp) * 2] - mx);
                double *pr = malloc((size_t)(p + 1) * sizeof(double)), pm = -INFINITY, ps = 0.0;
                assert_non_null(pr);
                for (int32_t j = 0; j <= p; j++) {
                    const float *row = cache + ((int64_t)bt[j / c->bs] * c->bs + j % c->bs) * w;
                    double dot = 0.0;
                    for (int32_t k = 0; k < w; k++)
                        dot += (double)qabs[h * w + k] * row[k];
                    pr[j] = dot * 0.1;
                    pm = fmax(pm, pr[j]);
                }
                for (int32_t j = 0; j <= p; j++)
                    ps += (pr[j] = exp(pr[j] - pm));
                for (int32_t d = 0; d < R; d++) {
                    float got = 0.0f;
                    for (int32_t sp = 0; sp < n; sp++) {
                        const float m2 = ml[(h * n + sp) * 2];
                        if (m2 != -INFINITY)
                            got += acc[((int64_t)h * n + sp) * R + d] * exp2f(m2 - mx);
                    }
                    got /= L;
                    double want = 0.0;
                    for (int32_t j = 0; j <= p; j++)
                        want += pr[j] * cache[((int64_t)bt[j / c->bs] * c->bs + j % c->bs) * w + d];
                    want /= ps;
                    me = fmax(me, isnan(got) ? INFINITY : fabs(got - want));
                    mw = fmax(mw, fabs(want));
                }
                free(pr);
            }
            worst = fmax(worst, me / mw);
            free(ml), free(acc);
        }
    free(cache), free(tables), free(qabs);
    return worst;
}

static void test_kernel_emulation(void **s)
{
    (void)s;
    const ecase cases[] = {
        {16, 512, 64, 16, 1, {130}, {1}, 0},                  /* V2-Lite's shape, a decode row */
        {20, 128, 16, 7, 2, {0, 200}, {3, 1}, 3},             /* two chunks of heads, 3 splits */
        {1, 128, 32, 64, 1, {63}, {2}, 0},                    /* one head, tile edge 64 */
        {12, 256, 16, 16, 1, {300}, {1}, 5},                  /* 5 splits, some past the context */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const ecase *c = &cases[i];
        const double exact = run_case(c, 0), rounded = run_case(c, 1);
        const int ok = exact <= 1e-5 && rounded <= 1e-2;
        printf("  %s emulated mla kernel H=%d R=%d rope=%d bs=%d splits=%d: %.3g (P f32, tol 1e-5), %.3g (P bf16, "
               "tol 1e-2) x max\n",
               ok ? "PASS" : "FAIL", c->H, c->R, c->dr, c->bs, c->force_splits, exact, rounded);
        assert_true(exact <= 1e-5);
        assert_true(rounded <= 1e-2);
    }
}

/* ---------------------------------------------------------------- the expanded form's kernel */

/* One warp of anvil_mla_xp_attn_kernel (cuda_mla_prefill.cu) emulated: its
 * 16 rows at positions p0 .. p0 + 15 of one sequence over keys K [n][dq]
 * and values V [n][dv] (kept in the kernel's two buffers: kv rows of
 * nope + dv with K's nope part first, kpe rows of rope), out [16][dv]. */
static void emulate_xp_warp(int dn, int dr, int dv, const float *kvb, const float *kpe, const float *q, int p0,
                            int round_p, float *out)
{
    const int dq = dn + dr, KCQ = dq / 16, NTV = dv / 8, KS = dq + 8, VS = dv + 8, PK = dq / 8, PR = PK + dv / 8;
    const int kvw = dn + dv, kend = p0 + 16;
    float *ks = calloc((size_t)MLA_BN * KS, sizeof(float)), *vs = calloc((size_t)MLA_BN * VS, sizeof(float));
    float(*o)[32][4] = calloc((size_t)NTV, sizeof *o);
    assert_true(ks && vs && o);
    float m0[32], m1[32], l0[32], l1[32];
    for (int l = 0; l < 32; l++)
        m0[l] = m1[l] = -INFINITY, l0[l] = l1[l] = 0.0f;
    const float sl2 = 0.1f * 1.4426950408889634f;
    /* Q fragments as the kernel loads them: 32-bit word w0 = 8 kc + tq of each row */
    float qf[12][32][4][2];
    assert_true(KCQ <= 12);
    for (int kc = 0; kc < KCQ; kc++)
        for (int l = 0; l < 32; l++) {
            const int w0 = kc * 8 + (l & 3), ra = l >> 2, rb = ra + 8;
            for (int h = 0; h < 2; h++) {
                qf[kc][l][0][h] = q[ra * dq + 2 * w0 + h];
                qf[kc][l][1][h] = q[rb * dq + 2 * w0 + h];
                qf[kc][l][2][h] = q[ra * dq + 2 * (w0 + 4) + h];
                qf[kc][l][3][h] = q[rb * dq + 2 * (w0 + 4) + h];
            }
        }
    for (int kt = 0; kt < kend; kt += MLA_BN) {
        for (int i = 0; i < MLA_BN * PR; i++) { /* the copy loop over all threads' pieces */
            const int row = i / PR, pc = i % PR, j = kt + row;
            for (int e8 = 0; e8 < 8; e8++) {
                if (pc < PK) {
                    const int e = pc * 8 + e8;
                    ks[row * KS + e] = j < kend ? (e < dn ? kvb[j * kvw + e] : kpe[j * dr + e - dn]) : 0.0f;
                } else {
                    const int e = (pc - PK) * 8 + e8;
                    vs[row * VS + e] = j < kend ? kvb[j * kvw + dn + e] : 0.0f;
                }
            }
        }
        float sc[8][32][4];
        memset(sc, 0, sizeof sc);
        for (int kc = 0; kc < KCQ; kc++)
            for (int np = 0; np < 4; np++) {
                int addr[32];
                float kb[32][4][2], b0[32][2][2], b1[32][2][2];
                for (int l = 0; l < 32; l++)
                    addr[l] = mla_ldm_k(l, np, kc, KS);
                ldmatrix_x4(ks, addr, 0, kb);
                for (int l = 0; l < 32; l++)
                    for (int h = 0; h < 2; h++) {
                        b0[l][0][h] = kb[l][0][h], b0[l][1][h] = kb[l][1][h];
                        b1[l][0][h] = kb[l][2][h], b1[l][1][h] = kb[l][3][h];
                    }
                mma(sc[2 * np], qf[kc], b0);
                mma(sc[2 * np + 1], qf[kc], b1);
            }
        float pf[4][32][4][2];
        for (int l = 0; l < 32; l++) {
            const int pa = p0 + (l >> 2), pb = pa + 8; /* the causal mask */
            for (int nt = 0; nt < 8; nt++)
                for (int e = 0; e < 4; e++) {
                    const int j = kt + nt * 8 + mla_acc_col(l, e);
                    const int in = e < 2 ? j <= pa : j <= pb;
                    sc[nt][l][e] = in ? sc[nt][l][e] * sl2 : -INFINITY;
                }
        }
        for (int l = 0; l < 32; l++) {
            float a0 = -INFINITY, a1 = -INFINITY; /* the quad's maxima */
            for (int qd = 0; qd < 4; qd++)
                for (int nt = 0; nt < 8; nt++) {
                    a0 = fmaxf(a0, fmaxf(sc[nt][(l & ~3) + qd][0], sc[nt][(l & ~3) + qd][1]));
                    a1 = fmaxf(a1, fmaxf(sc[nt][(l & ~3) + qd][2], sc[nt][(l & ~3) + qd][3]));
                }
            const float mn0 = fmaxf(m0[l], a0), mn1 = fmaxf(m1[l], a1);
            const float c0 = mn0 == -INFINITY ? 1.0f : exp2f(m0[l] - mn0), c1 = mn1 == -INFINITY ? 1.0f : exp2f(m1[l] - mn1);
            m0[l] = mn0, m1[l] = mn1, l0[l] *= c0, l1[l] *= c1;
            for (int i = 0; i < NTV; i++)
                o[i][l][0] *= c0, o[i][l][1] *= c0, o[i][l][2] *= c1, o[i][l][3] *= c1;
            const float ms0 = mn0 == -INFINITY ? 0.0f : mn0, ms1 = mn1 == -INFINITY ? 0.0f : mn1;
            for (int kc = 0; kc < 4; kc++)
                for (int hf = 0; hf < 2; hf++) {
                    const float *a = sc[2 * kc + hf][l];
                    const float e0 = exp2f(a[0] - ms0), e1 = exp2f(a[1] - ms0), e2 = exp2f(a[2] - ms1), e3 = exp2f(a[3] - ms1);
                    l0[l] += e0 + e1, l1[l] += e2 + e3;
                    pf[kc][l][2 * hf][0] = round_p ? bf16r(e0) : e0, pf[kc][l][2 * hf][1] = round_p ? bf16r(e1) : e1;
                    pf[kc][l][2 * hf + 1][0] = round_p ? bf16r(e2) : e2, pf[kc][l][2 * hf + 1][1] = round_p ? bf16r(e3) : e3;
                }
        }
        for (int kc = 0; kc < 4; kc++)
            for (int nt = 0; nt < NTV; nt += 2) {
                int addr[32];
                float vb[32][4][2], b0[32][2][2], b1[32][2][2];
                for (int l = 0; l < 32; l++)
                    addr[l] = mla_ldm_v(l, kc, nt * 8, VS);
                ldmatrix_x4(vs, addr, 1, vb);
                for (int l = 0; l < 32; l++)
                    for (int h = 0; h < 2; h++) {
                        b0[l][0][h] = vb[l][0][h], b0[l][1][h] = vb[l][1][h];
                        b1[l][0][h] = vb[l][2][h], b1[l][1][h] = vb[l][3][h];
                    }
                mma(o[nt], pf[kc], b0);
                mma(o[nt + 1], pf[kc], b1);
            }
    }
    for (int l = 0; l < 32; l++) {
        float la = 0.0f, lb = 0.0f;
        for (int qd = 0; qd < 4; qd++)
            la += l0[(l & ~3) + qd], lb += l1[(l & ~3) + qd];
        for (int nt = 0; nt < NTV; nt++) {
            const int d = nt * 8 + mla_acc_col(l, 0);
            out[(l >> 2) * dv + d] = o[nt][l][0] / la, out[(l >> 2) * dv + d + 1] = o[nt][l][1] / la;
            out[((l >> 2) + 8) * dv + d] = o[nt][l][2] / lb, out[((l >> 2) + 8) * dv + d + 1] = o[nt][l][3] / lb;
        }
    }
    free(ks), free(vs), free(o);
}

static void test_xp_emulation(void **s)
{
    (void)s;
    const int dims[][3] = {{128, 64, 128}, {64, 32, 64}, {32, 16, 48}}; /* nope, rope, v */
    const int p0s[] = {0, 50, 120};
    for (int di = 0; di < 3; di++)
        for (int pi = 0; pi < 3; pi++) {
            const int dn = dims[di][0], dr = dims[di][1], dv = dims[di][2], dq = dn + dr, p0 = p0s[pi], n = p0 + 16;
            uint64_t rng = 77 + (uint64_t)di * 3 + (uint64_t)pi;
            float *kvb = malloc((size_t)n * (dn + dv) * sizeof(float)), *kpe = malloc((size_t)n * dr * sizeof(float));
            float *q = malloc((size_t)16 * dq * sizeof(float)), *got = malloc((size_t)16 * dv * sizeof(float));
            assert_true(kvb && kpe && q && got);
            for (int i = 0; i < n * (dn + dv); i++)
                kvb[i] = bf16r(urand(&rng));
            for (int i = 0; i < n * dr; i++)
                kpe[i] = bf16r(urand(&rng));
            for (int i = 0; i < 16 * dq; i++)
                q[i] = bf16r(2.0f * urand(&rng));
            double worst[2] = {0.0, 0.0};
            for (int rp = 0; rp < 2; rp++) {
                emulate_xp_warp(dn, dr, dv, kvb, kpe, q, p0, rp, got);
                double me = 0.0, mw = 1e-30;
                for (int r = 0; r < 16; r++) {
                    const int p = p0 + r;
                    double *w = malloc((size_t)(p + 1) * sizeof(double)), mx = -INFINITY, sum = 0.0;
                    assert_non_null(w);
                    for (int j = 0; j <= p; j++) {
                        double dot = 0.0;
                        for (int d = 0; d < dn; d++)
                            dot += (double)q[r * dq + d] * kvb[j * (dn + dv) + d];
                        for (int d = 0; d < dr; d++)
                            dot += (double)q[r * dq + dn + d] * kpe[j * dr + d];
                        w[j] = dot * 0.1;
                        mx = fmax(mx, w[j]);
                    }
                    for (int j = 0; j <= p; j++)
                        sum += (w[j] = exp(w[j] - mx));
                    for (int d = 0; d < dv; d++) {
                        double want = 0.0;
                        for (int j = 0; j <= p; j++)
                            want += w[j] * kvb[j * (dn + dv) + dn + d];
                        want /= sum;
                        me = fmax(me, isnan(got[r * dv + d]) ? INFINITY : fabs(got[r * dv + d] - want));
                        mw = fmax(mw, fabs(want));
                    }
                    free(w);
                }
                worst[rp] = me / mw;
            }
            const int ok = worst[0] <= 1e-5 && worst[1] <= 1e-2;
            printf("  %s emulated mla prefill kernel %d + %d / %d, rows at %d..%d: %.3g (P f32), %.3g (P bf16) x max\n",
                   ok ? "PASS" : "FAIL", dn, dr, dv, p0, p0 + 15, worst[0], worst[1]);
            assert_true(worst[0] <= 1e-5);
            assert_true(worst[1] <= 1e-2);
            free(kvb), free(kpe), free(q), free(got);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_splits),
        cmocka_unit_test(test_copy_map),
        cmocka_unit_test(test_score_banks),
        cmocka_unit_test(test_kernel_emulation),
        cmocka_unit_test(test_xp_emulation),
    };
    return anvil_test_run_group(tests);
}
