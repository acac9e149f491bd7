/*
 * The tiling, shared-memory layout and fragment mapping of the quantized
 * GEMM on tensor cores (src/backend/cuda/cuda_gemm_quant_map.h), checked on
 * the CPU: no GPU needed, so a layout or mapping mistake shows up in every
 * build. The conversions themselves (gmw_*) are checked exhaustively by
 * test_cuda_mma16_map.
 *
 *  - columns: each mma of a step takes 16 distinct columns inside one run
 *    of 32 (int4) / 16 (int8), the step's mmas take every column once, and
 *    the x element a lane puts in B (shared read at gqm_x_word_off, then
 *    gmw_u4_xpair) is the column of the weight element it puts in A;
 *  - the stage: cp.async's chunk placement (weights, x) is a bijection
 *    onto whole 16-byte chunks of the stage, a thread's later chunks land
 *    whole passes of rows after its first (the kernel's stride form), and
 *    each lane's shared reads return the stored bytes the mapping names;
 *  - banks: the weight word reads of a warp hit 32 banks, x's 16-byte
 *    (int4) / 8-byte (int8) reads fill every bank once a phase, the
 *    epilogue's D writes hit 32 banks;
 *  - segments: every column of a segment lies in the group gqm_seg_group
 *    names (also the kernel's 32-bit form), for groups of 16-512 and per
 *    channel; gqm_wps refuses groups off the word's columns;
 *  - tiles: the warps' fragments cover the block's 128 x TM outputs once;
 *    the shared memory fits sm_80's 163 KB; the K splits are non-empty and
 *    cover the steps;
 *  - a whole block emulated: int4 (zero points or not, groups 32 / 64 /
 *    128 / per channel) and int8 (per channel, groups of 16 / 32), bf16 and
 *    f16 x, M and N short of the tile (zero-filled rows), a K split: the
 *    stage filled as the copies fill it, the scales' ring, each lane's
 *    conversion as the kernel's 16-bit instructions compute it, the mma
 *    applied as the PTX ISA defines m16n8k16's fragments, the segment sums
 *    scaled with fmaf; equal to the exact sum of x (v - z) s within the f32
 *    rounding of the scaled segment sums.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/dtype.h"
#include "backend/cuda/cuda_gemm_quant_map.h"
#include "testutil.h"

static uint64_t rng_state = 0x6e3a11c5ull;

static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

static float h16(uint32_t bits, int bf16)
{
    const uint16_t u = (uint16_t)bits;
    float f;
    anvil_convert_to_f32(bf16 ? ANVIL_DTYPE_BF16 : ANVIL_DTYPE_F16, &u, &f, 1);
    return f;
}

static uint16_t to16(float v, int bf16)
{
    uint16_t u;
    anvil_convert_from_f32(bf16 ? ANVIL_DTYPE_BF16 : ANVIL_DTYPE_F16, &v, &u, 1);
    return u;
}

static float r16(float v, int bf16) { return h16(to16(v, bf16), bf16); }

static uint32_t half_of(uint32_t p, int h) { return h ? p >> 16 : p & 0xffffu; }

static const int SCHEMES[] = {GMW_U4, GMW_I8};
static const int TILES[] = {16, 64, 128};

/* ---------------------------------------------------------------- columns */

static void test_columns(void **state)
{
    (void)state;
    for (int si = 0; si < 2; si++) {
        const int s = SCHEMES[si], n_mma = gmw_mmas(s), step = gqm_step_elems(s);
        int seen[128];
        memset(seen, 0, sizeof seen);
        for (int m = 0; m < n_mma; m++) {
            int cols[16], n = 0;
            const int j = gqm_mma_word(s, m), lo = j * gqm_word_cols(s);
            for (int t = 0; t < 4; t++)
                for (int r = 0; r < 2; r++)
                    for (int h = 0; h < 2; h++) {
                        const int c = gqm_mma_col(s, m, t, r, h);
                        assert_true(c >= lo && c < lo + gqm_word_cols(s)); /* inside word j's run */
                        /* the lane's own word */
                        assert_true(c >= gqm_w_col(s, j, t, 0) && c < gqm_w_col(s, j, t, gqm_word_elems(s)));
                        for (int i = 0; i < n; i++)
                            assert_int_not_equal(cols[i], c);
                        cols[n++] = c;
                        seen[c]++;
                    }
        }
        for (int c = 0; c < step; c++)
            assert_int_equal(seen[c], 1);

        /* x's B fragments: a stage x tile whose element (row, col) holds
         * col + 256 row; each lane's read, permuted as the kernel does */
        const int tm = 16;
        uint16_t xs[16 * 128];
        uint8_t stage[16 * 256];
        for (int row = 0; row < tm; row++)
            for (int c = 0; c < step; c++)
                xs[row * step + c] = (uint16_t)(c + 256 * row);
        for (int row = 0; row < tm; row++)
            for (int ch = 0; ch < gqm_x_chunks(s); ch++)
                memcpy(stage + gqm_x_chunk_off(s, row, ch), xs + row * step + 8 * ch, 16);
        for (int m = 0; m < n_mma; m++)
            for (int lane = 0; lane < 32; lane++) {
                const int g = lane >> 2, t = lane & 3, j = gqm_mma_word(s, m);
                for (int nt = 0; nt < 2; nt++) {
                    const int row = nt * 8 + g;
                    uint32_t b[2];
                    if (s == GMW_U4) {
                        uint32_t xw[4];
                        memcpy(xw, stage + gqm_x_word_off(s, row, j, t), 16);
                        b[0] = gmw_u4_xpair(xw, m, 0);
                        b[1] = gmw_u4_xpair(xw, m, 1);
                    } else {
                        memcpy(b, stage + gqm_x_word_off(s, row, j, t), 8);
                    }
                    for (int r = 0; r < 2; r++)
                        for (int h = 0; h < 2; h++)
                            assert_int_equal(half_of(b[r], h), gqm_mma_col(s, m, t, r, h) + 256 * row);
                }
            }
    }
}

/* ---------------------------------------------------------------- the stage */

static void test_stage(void **state)
{
    (void)state;
    /* weights: the 512 chunks of 128 rows land on distinct whole chunks */
    static uint8_t owner[GQM_BN * GQM_STEP_BYTES];
    memset(owner, 0, sizeof owner);
    for (int row = 0; row < GQM_BN; row++)
        for (int part = 0; part < 4; part++) {
            const int off = gqm_w_chunk_off(row, part);
            assert_true(off % 16 == 0 && off >= 0 && off + 16 <= gqm_stage_w_bytes());
            for (int i = 0; i < 16; i++)
                assert_int_equal(owner[off + i]++, 0);
        }
    /* each lane's word: stored bytes 16 j + 4 t .. + 3 of the step of its row */
    static uint8_t stage[GQM_BN * GQM_STEP_BYTES];
    for (int row = 0; row < GQM_BN; row++)
        for (int part = 0; part < 4; part++)
            for (int i = 0; i < 16; i++)
                stage[gqm_w_chunk_off(row, part) + i] = (uint8_t)((row * 64 + part * 16 + i) * 7 + row);
    for (int row = 0; row < GQM_BN; row++)
        for (int j = 0; j < 4; j++)
            for (int t = 0; t < 4; t++)
                for (int i = 0; i < 4; i++)
                    assert_int_equal(stage[gqm_w_word_off(row, j, t) + i],
                                     (uint8_t)((row * 64 + 16 * j + 4 * t + i) * 7 + row));
    /* the copies' passes (the kernel's stride form): thread tid's chunk i
     * lands where chunk 0 lands plus i passes of whole rows */
    for (int tid = 0; tid < GQM_THREADS; tid++) {
        for (int i = 0; i < GQM_BN * 4 / GQM_THREADS; i++) {
            const int row = tid / 4 + i * gqm_w_rows_per_pass();
            assert_int_equal((tid + i * GQM_THREADS) / 4, row);
            assert_int_equal(gqm_w_chunk_off(row, tid % 4),
                             gqm_w_chunk_off(tid / 4, tid % 4) + i * gqm_w_rows_per_pass() * GQM_STEP_BYTES);
        }
        for (int si = 0; si < 2; si++) {
            const int s = SCHEMES[si], xch = gqm_x_chunks(s);
            for (int i = 0; i < 8; i++) {
                const int c = tid + i * GQM_THREADS, row = tid / xch + i * gqm_x_rows_per_pass(s);
                assert_int_equal(c / xch, row);
                assert_int_equal(c % xch, tid % xch);
                assert_int_equal(gqm_x_chunk_off(s, row, tid % xch),
                                 gqm_x_chunk_off(s, tid / xch, tid % xch) +
                                     i * gqm_x_rows_per_pass(s) * gqm_x_row_bytes(s));
            }
        }
    }
    /* x: every tile's chunks on distinct whole chunks of the x area */
    for (int si = 0; si < 2; si++)
        for (int ti = 0; ti < 3; ti++) {
            const int s = SCHEMES[si], tm = TILES[ti], bytes = gqm_stage_x_bytes(s, tm);
            uint8_t *own = calloc((size_t)bytes, 1);
            assert_non_null(own);
            for (int row = 0; row < tm; row++)
                for (int ch = 0; ch < gqm_x_chunks(s); ch++) {
                    const int off = gqm_x_chunk_off(s, row, ch);
                    assert_true(off % 16 == 0 && off >= 0 && off + 16 <= bytes);
                    for (int i = 0; i < 16; i++)
                        assert_int_equal(own[off + i]++, 0);
                }
            free(own);
            assert_int_equal(gqm_stage_bytes(s, tm, 1) % 16, 0);
            assert_int_equal(gqm_stage_x_bytes(s, tm) % 16, 0);
        }
}

/* ---------------------------------------------------------------- banks */

static int bank(int byte) { return (byte / 4) % 32; }

static void test_banks(void **state)
{
    (void)state;
    /* weight words: 32 lanes, one 4-byte read each, rows g (+ 8) of any m16 tile */
    for (int r0 = 0; r0 < GQM_BN; r0 += 8)
        for (int j = 0; j < 4; j++) {
            int used[32] = {0};
            for (int lane = 0; lane < 32; lane++)
                assert_int_equal(used[bank(gqm_w_word_off(r0 + (lane >> 2), j, lane & 3))]++, 0);
        }
    /* x: int4 16-byte reads, 8 lanes a phase; int8 8-byte reads, 16 lanes a phase;
     * rows from any multiple of 8 (an n8 tile) */
    for (int si = 0; si < 2; si++) {
        const int s = SCHEMES[si], width = s == GMW_U4 ? 16 : 8, per_phase = 128 / width;
        for (int r0 = 0; r0 < 128; r0 += 8)
            for (int j = 0; j < 4; j++)
                for (int p = 0; p < 32 / per_phase; p++) {
                    int used[32] = {0};
                    for (int lane = p * per_phase; lane < (p + 1) * per_phase; lane++) {
                        const int off = gqm_x_word_off(s, r0 + (lane >> 2), j, lane & 3);
                        assert_int_equal(off % width, 0);
                        for (int b = 0; b < width / 4; b++)
                            assert_int_equal(used[bank(off + 4 * b)]++, 0);
                    }
                }
    }
    /* the epilogue: a warp's D writes (register i) to the f32 tile [tok][LD] */
    for (int i = 0; i < 4; i++) {
        int used[32] = {0};
        for (int lane = 0; lane < 32; lane++) {
            const int g = lane >> 2, t = lane & 3;
            const int r = g + 8 * (i >> 1), tok = 2 * t + (i & 1);
            assert_int_equal(used[bank(4 * (tok * gqm_out_ld() + r))]++, 0);
        }
    }
}

/* ---------------------------------------------------------------- segments */

static void test_segments(void **state)
{
    (void)state;
    const int64_t K = 1536; /* 12 int4 steps, 24 int8 */
    const int64_t groups[] = {8, 16, 32, 48, 64, 96, 128, 192, 256, 512, K};
    for (int si = 0; si < 2; si++) {
        const int s = SCHEMES[si], step = gqm_step_elems(s);
        for (size_t gi = 0; gi < sizeof groups / sizeof groups[0]; gi++) {
            const int64_t gs = groups[gi];
            const int wps = gqm_wps(s, gs);
            if (gs % gqm_word_cols(s) != 0) {
                assert_int_equal(wps, 0);
                continue;
            }
            assert_true(wps == 1 || wps == 2 || wps == 4);
            /* the largest: twice the columns would not divide the group (or pass the step) */
            assert_true(wps == 4 || gs % (2 * wps * gqm_word_cols(s)) != 0);
            const int nseg = gqm_nseg(wps), cols = wps * gqm_word_cols(s);
            const int64_t spg = gqm_segs_per_group(s, wps, gs);
            for (int64_t st = 0; st < K / step; st++)
                for (int sg = 0; sg < nseg; sg++) {
                    const int64_t grp = gqm_seg_group(st, sg, nseg, spg);
                    const int grp32 = (int)((unsigned)((int)st * nseg + sg) / (unsigned)spg); /* the kernel's */
                    assert_int_equal(grp, grp32);
                    for (int c = 0; c < cols; c++)
                        assert_int_equal((st * step + sg * cols + c) / gs, grp);
                }
        }
    }
}

/* ---------------------------------------------------------------- tiles and splits */

static void test_tiles(void **state)
{
    (void)state;
    for (int ti = 0; ti < 3; ti++) {
        const int tm = TILES[ti];
        int *cov = calloc((size_t)(GQM_BN * tm), sizeof *cov);
        assert_non_null(cov);
        assert_int_equal(gqm_warps_n(tm) * gqm_mw(tm) * 16, GQM_BN);
        assert_int_equal((8 / gqm_warps_n(tm)) * gqm_nw(tm) * 8, tm);
        for (int warp = 0; warp < 8; warp++)
            for (int mt = 0; mt < gqm_mw(tm); mt++)
                for (int nt = 0; nt < gqm_nw(tm); nt++)
                    for (int lane = 0; lane < 32; lane++)
                        for (int i = 0; i < 4; i++) {
                            const int r = gqm_warp_row0(tm, warp) + mt * 16 + (lane >> 2) + 8 * (i >> 1);
                            const int tok = gqm_warp_tok0(tm, warp) + nt * 8 + 2 * (lane & 3) + (i & 1);
                            assert_true(r < GQM_BN && tok < tm);
                            cov[tok * GQM_BN + r]++;
                        }
        for (int i = 0; i < GQM_BN * tm; i++)
            assert_int_equal(cov[i], 1);
        free(cov);
        for (int si = 0; si < 2; si++)
            for (int wps = 1; wps <= 4; wps *= 2) {
                assert_true(gqm_smem_bytes(SCHEMES[si], tm, wps) <= 163 * 1024);
                assert_true(gqm_smem_bytes(SCHEMES[si], tm, wps) >= tm * gqm_out_ld() * 4);
            }
    }
    assert_int_equal(gqm_tile(1, 0), 16);
    assert_int_equal(gqm_tile(17, 0), 64);
    assert_int_equal(gqm_tile(65, 0), 128);
    assert_int_equal(gqm_tile(1, 128), 128);
    /* splits: 1..16, none empty, covering the steps */
    const int64_t Ms[] = {1, 16, 64, 200, 512, 2048}, Ns[] = {1, 127, 4096, 14336}, steps[] = {1, 3, 4, 32, 112};
    for (size_t a = 0; a < 6; a++)
        for (size_t b = 0; b < 4; b++)
            for (size_t c = 0; c < 5; c++)
                for (int forced = 0; forced <= 20; forced += 5) {
                    const int tm = gqm_tile(Ms[a], 0);
                    const int sp = gqm_splits(Ms[a], Ns[b], steps[c], tm, 132, forced);
                    assert_true(sp >= 1 && sp <= GQM_MAX_SPLITS && sp <= steps[c]);
                    const int64_t per = gqm_split_steps(steps[c], sp);
                    assert_true(per * (sp - 1) < steps[c] && per * sp >= steps[c]);
                    if (forced == 0 && steps[c] < 8)
                        assert_int_equal(sp, 1); /* at least 4 steps a split */
                }
    /* the 8B shapes at 16 tokens split; at 2048 they do not */
    assert_true(gqm_splits(16, 4096, 32, 16, 132, 0) > 1);
    assert_int_equal(gqm_splits(2048, 4096, 32, 128, 132, 0), 1);
}

/* ---------------------------------------------------------------- a block emulated */

typedef struct blk {
    int s, bf16, tm, M, N, K;
    int64_t gs;
    int zeros;
    uint8_t *w;     /* [N][row bytes] */
    float *sc;      /* [N][G] */
    uint8_t *z;     /* [N][G] or NULL */
    uint16_t *x;    /* [M][K] 16-bit bits */
} blk;

/* the kernel's 16-bit values of a lane word (gq_convert): pairs p[0..3] */
static void convert(const blk *b, uint32_t wd, float z, float p[4][2])
{
    if (b->s == GMW_U4) {
        uint32_t q[4];
        gmw_u4_pairs(wd, b->bf16, q);
        const float mv = gmw_u4_magic_value(b->bf16);
        const float zlo = r16(mv + z, b->bf16), zhi = r16(-(mv / 16.0f + z), b->bf16);
        for (int i = 0; i < 4; i++)
            for (int h = 0; h < 2; h++) {
                const float e = h16(half_of(q[i], h), b->bf16);
                p[i][h] = gmw_u4_scaled(i, b->bf16) ? r16((float)((double)e * 0.0625 + (double)zhi), b->bf16)
                                                    : r16(e - zlo, b->bf16);
            }
    } else if (b->bf16) {
        for (int i = 0; i < 4; i++) {
            const uint32_t bits = gmw_i8_f32bits(wd, i);
            float f;
            memcpy(&f, &bits, 4);
            p[i / 2][i % 2] = r16(f - 8388736.0f, 1);
        }
        p[2][0] = p[2][1] = p[3][0] = p[3][1] = 0.0f;
    } else {
        uint32_t q[2];
        gmw_i8_pairs_f16(wd, q);
        for (int i = 0; i < 2; i++)
            for (int h = 0; h < 2; h++)
                p[i][h] = r16(h16(half_of(q[i], h), 0) - 1152.0f, 0);
        p[2][0] = p[2][1] = p[3][0] = p[3][1] = 0.0f;
    }
}

/* one block (x tile 0, weight tile 0) over steps [st0, st0 + n_steps): acc [GQM_BN][tm] */
static void emulate(const blk *b, int st0, int n_steps, float *acc)
{
    const int s = b->s, tm = b->tm, step = gqm_step_elems(s), rb = s == GMW_U4 ? b->K / 2 : b->K;
    const int wps = gqm_wps(s, b->gs), nseg = gqm_nseg(wps), mw = gqm_mw(tm), nw = gqm_nw(tm);
    const int64_t G = b->K / b->gs, spg = gqm_segs_per_group(s, wps, b->gs);
    const int WB = gqm_stage_w_bytes();
    uint8_t *stage = calloc((size_t)gqm_stage_bytes(s, tm, wps), 1);
    assert_non_null(stage);
    float *ss = calloc((size_t)(2 * GQM_BN * nseg), sizeof(float));
    assert_non_null(ss);
    for (int i = 0; i < GQM_BN * tm; i++)
        acc[i] = 0.0f;
    for (int ls = 0; ls < n_steps; ls++) {
        const int st = st0 + ls;
        memset(stage, 0x5a, (size_t)gqm_stage_bytes(s, tm, wps)); /* cp.async overwrites every byte read */
        for (int c = 0; c < GQM_BN * 4; c++) {
            const int row = c >> 2, part = c & 3;
            uint8_t *dst = stage + gqm_w_chunk_off(row, part);
            if (row < b->N)
                memcpy(dst, b->w + (size_t)row * rb + (size_t)st * GQM_STEP_BYTES + 16 * part, 16);
            else
                memset(dst, 0, 16);
        }
        for (int c = 0; c < tm * gqm_x_chunks(s); c++) {
            const int row = c / gqm_x_chunks(s), part = c % gqm_x_chunks(s);
            uint8_t *dst = stage + WB + gqm_x_chunk_off(s, row, part);
            if (row < b->M)
                memcpy(dst, b->x + (size_t)row * b->K + (size_t)st * step + 8 * part, 16);
            else
                memset(dst, 0, 16);
        }
        for (int e = 0; e < GQM_BN * nseg; e++) {
            const int row = e / nseg, sg = e % nseg;
            const int64_t at = (int64_t)row * G + gqm_seg_group(st, sg, nseg, spg);
            ss[e] = row < b->N ? b->sc[at] : 0.0f;
            ss[GQM_BN * nseg + e] = row < b->N && b->z != NULL ? (float)b->z[at] : 8.0f;
        }
        for (int warp = 0; warp < 8; warp++) {
            const int wr0 = gqm_warp_row0(tm, warp), wt0 = gqm_warp_tok0(tm, warp);
            for (int sg = 0; sg < nseg; sg++)
                for (int mt = 0; mt < mw; mt++)
                    for (int nt = 0; nt < nw; nt++) {
                        double d[32][4];
                        memset(d, 0, sizeof d);
                        for (int jj = 0; jj < wps; jj++) {
                            const int j = sg * wps + jj;
                            for (int mm = 0; mm < (s == GMW_U4 ? 2 : 1); mm++) {
                                const int m = s == GMW_U4 ? 2 * j + mm : j;
                                double A[16][16], B[16][8];
                                for (int lane = 0; lane < 32; lane++) {
                                    const int g = lane >> 2, t = lane & 3;
                                    float v[2][4][2];
                                    for (int h = 0; h < 2; h++) {
                                        const int r = wr0 + mt * 16 + g + 8 * h;
                                        uint32_t wd;
                                        memcpy(&wd, stage + gqm_w_word_off(r, j, t), 4);
                                        convert(b, wd, ss[GQM_BN * nseg + r * nseg + sg], v[h]);
                                    }
                                    /* A registers as the kernel builds them */
                                    for (int reg = 0; reg < 2; reg++) {
                                        const int pq = s == GMW_U4 ? gmw_u4_pair_of(m, reg) : reg;
                                        for (int hh = 0; hh < 2; hh++) {
                                            A[g][2 * t + hh + 8 * reg] = v[0][pq][hh];     /* a0 / a2 */
                                            A[g + 8][2 * t + hh + 8 * reg] = v[1][pq][hh]; /* a1 / a3 */
                                        }
                                    }
                                    const int xr = wt0 + nt * 8 + g;
                                    uint32_t bb[2];
                                    if (s == GMW_U4) {
                                        uint32_t xw[4];
                                        memcpy(xw, stage + WB + gqm_x_word_off(s, xr, j, t), 16);
                                        bb[0] = gmw_u4_xpair(xw, m, 0);
                                        bb[1] = gmw_u4_xpair(xw, m, 1);
                                    } else {
                                        memcpy(bb, stage + WB + gqm_x_word_off(s, xr, j, t), 8);
                                    }
                                    for (int reg = 0; reg < 2; reg++)
                                        for (int hh = 0; hh < 2; hh++)
                                            B[2 * t + hh + 8 * reg][g] = h16(half_of(bb[reg], hh), b->bf16);
                                }
                                /* the mma: D += A B, scattered to the lanes' d0..d3 */
                                for (int lane = 0; lane < 32; lane++) {
                                    const int g = lane >> 2, t = lane & 3;
                                    for (int i = 0; i < 4; i++) {
                                        const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
                                        double sum = 0.0;
                                        for (int k = 0; k < 16; k++)
                                            sum += A[row][k] * B[k][col];
                                        d[lane][i] += sum;
                                    }
                                }
                            }
                        }
                        for (int lane = 0; lane < 32; lane++) {
                            const int g = lane >> 2, t = lane & 3;
                            for (int i = 0; i < 4; i++) {
                                const int r = wr0 + mt * 16 + g + 8 * (i >> 1);
                                const int tok = wt0 + nt * 8 + 2 * t + (i & 1);
                                float *a = &acc[r * tm + tok];
                                *a = fmaf((float)d[lane][i], ss[r * nseg + sg], *a);
                            }
                        }
                    }
        }
    }
    free(ss);
    free(stage);
}

static void check_block(int s, int bf16, int tm, int M, int N, int K, int64_t gs, int zeros, int splits)
{
    blk b = {.s = s, .bf16 = bf16, .tm = tm, .M = M, .N = N, .K = K, .gs = gs, .zeros = zeros};
    const int rb = s == GMW_U4 ? K / 2 : K;
    const int64_t G = K / gs;
    b.w = malloc((size_t)N * rb);
    b.sc = malloc((size_t)(N * G) * sizeof(float));
    b.z = zeros ? malloc((size_t)(N * G)) : NULL;
    b.x = malloc((size_t)M * K * sizeof(uint16_t));
    assert_true(b.w && b.sc && b.x && (!zeros || b.z));
    for (int i = 0; i < N * rb; i++)
        b.w[i] = (uint8_t)rnd();
    for (int64_t i = 0; i < N * G; i++) {
        b.sc[i] = (float)(rnd() % 1000 + 1) * 1e-4f;
        if (zeros)
            b.z[i] = (uint8_t)(rnd() % 16);
    }
    for (int i = 0; i < M * K; i++)
        b.x[i] = to16(((float)(rnd() % 20001) - 10000.0f) * 1e-4f, bf16);

    /* the splits' partial tiles added in split order, as the sum kernel does */
    const int steps = K / gqm_step_elems(s);
    const int64_t per = gqm_split_steps(steps, splits);
    float *acc = malloc((size_t)(GQM_BN * tm) * sizeof(float));
    assert_non_null(acc);
    float *tot = calloc((size_t)(GQM_BN * tm), sizeof(float));
    assert_non_null(tot);
    for (int z = 0; z < splits; z++) {
        const int st0 = (int)(z * per), n = (int)(per < steps - st0 ? per : steps - st0);
        assert_true(n >= 1);
        emulate(&b, st0, n, acc);
        for (int i = 0; i < GQM_BN * tm; i++)
            tot[i] = z == 0 ? acc[i] : tot[i] + acc[i];
    }
    const int wps = gqm_wps(s, gs);
    const double nseg_total = (double)K / (wps * gqm_word_cols(s)) + splits + 1;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double want = 0.0, mag = 0.0;
            for (int k = 0; k < K; k++) {
                int v;
                if (s == GMW_U4)
                    v = (b.w[(size_t)n * rb + k / 2] >> (4 * (k & 1))) & 15;
                else
                    v = (int8_t)b.w[(size_t)n * rb + k];
                const double zz = s == GMW_U4 ? (zeros ? b.z[n * G + k / gs] : 8) : 0;
                const double wv = (v - zz) * b.sc[n * G + k / gs];
                const double xv = h16(b.x[(size_t)m * K + k], bf16);
                want += xv * wv;
                mag += fabs(xv * wv);
            }
            const double got = tot[n * tm + m];
            /* each segment's f32 sum and fmaf, each split's add round to f32: 2^-24 of sum |x W| each */
            const double tol = nseg_total * ldexp(mag, -24) + 1e-30;
            if (fabs(got - want) > tol)
                fail_msg("%s %s tm %d g %lld zeros %d splits %d: out[%d][%d] %.9g, want %.9g (tol %.3g)",
                         s == GMW_U4 ? "int4" : "int8", bf16 ? "bf16" : "f16", tm, (long long)gs, zeros, splits, m,
                         n, got, want, tol);
        }
    free(tot);
    free(acc);
    free(b.w);
    free(b.sc);
    free(b.z);
    free(b.x);
}

static void test_block(void **state)
{
    (void)state;
    /* int4: groups 32 / 64 / 128 / per channel (K), zero points or not */
    check_block(GMW_U4, 1, 16, 13, 100, 256, 32, 1, 1);
    check_block(GMW_U4, 0, 16, 16, 128, 256, 64, 1, 1);
    check_block(GMW_U4, 1, 64, 37, 77, 384, 128, 0, 1);
    check_block(GMW_U4, 0, 64, 64, 128, 256, 256, 1, 2);
    check_block(GMW_U4, 1, 128, 100, 40, 256, 32, 1, 2);
    check_block(GMW_U4, 0, 128, 128, 19, 384, 384, 0, 3);
    /* int8: per channel, groups of 16 and 32 */
    check_block(GMW_I8, 1, 16, 9, 128, 128, 128, 0, 1);
    check_block(GMW_I8, 0, 16, 16, 33, 192, 16, 0, 1);
    check_block(GMW_I8, 1, 64, 50, 128, 128, 32, 0, 2);
    check_block(GMW_I8, 0, 128, 70, 65, 192, 192, 0, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_columns),  cmocka_unit_test(test_stage), cmocka_unit_test(test_banks),
        cmocka_unit_test(test_segments), cmocka_unit_test(test_tiles), cmocka_unit_test(test_block),
    };
    return anvil_test_run_group(tests);
}
