/*
 * cpu_gemm_avx2.h: the AVX2 GEMM (T > 8) over converted f32 weight
 * panels, k-blocked so that every operand comes from L1. Include from
 * cpu_kernels_avx2.c only, after cpu_vec_avx2.h.
 *
 * An output's dot16 keeps 16 lanes (docs/cpu-backend.md, "Batch
 * invariance"); on AVX2 they are two ymm, so a tile holding two registers
 * per output fits only 2 rows x 3 tokens in 16 ymm. But lanes 0-7 and 8-15
 * never meet before the final reduction: a pass runs one half (8 lanes) of
 * 4 tokens x 3 rows (12 accumulators + 3 panel rows + 1 x: 7 loads per 12
 * FMAs), and parks them in memory; the other half is another pass.
 *
 * Where the bytes come from decides the speed: Zen 3 moves 32 bytes a
 * cycle from L2 to L1, and a 4 x 3 tile that streams its x rows and panel
 * rows from L2 needs ~37 bytes per cycle at the FMA peak (7 lines of 64
 * bytes per 24 FMAs), so the old driver (whole-k panel, one tile at a time)
 * ran at ~48% of the peak. Here, per block of GEMM_AVX2_NB weight rows and
 * GEMM_AVX2_KC of k, the weights are converted to an f32 chunk that stays
 * in L1 while every 4-token tile of the token block passes over it; a
 * tile's 4 x chunk rows are loaded into L1 once and used by every 3-row
 * sub-panel and both halves. The accumulators are parked between k blocks
 * (in the `part` scratch, which lives in L2). L2 traffic per tile and k
 * block: the x chunk (4 KiB) and the parked lanes in and out (2 x 3 KiB)
 * for 1536 FMAs, ~13 bytes a cycle.
 *
 * Arithmetic: every lane of every output sees fma(x, w, acc) over its
 * 16-wide chunks in k order, from +0, the last chunk zero-filled past K;
 * parking is exact, and the two halves are reduced by v_reduce: the bits
 * of every other path.
 */
#ifndef ANVIL_BACKEND_CPU_GEMM_AVX2_H
#define ANVIL_BACKEND_CPU_GEMM_AVX2_H

#define GEMM_AVX2_TT 4   /* tokens per tile */
#define GEMM_AVX2_NT 3   /* weight rows per tile (a sub-panel) */
#ifndef GEMM_AVX2_NB
#define GEMM_AVX2_NB 12  /* weight rows per converted block: 4 sub-panels */
#endif
#ifndef GEMM_AVX2_KC
#define GEMM_AVX2_KC 256 /* k per block: the chunk (NB x KC floats, 12 KiB) and a tile's x chunk (4 KiB) fit L1 */
#endif
#ifndef GEMM_AVX2_TB
#define GEMM_AVX2_TB 128 /* tokens per block: the conversion of a weight chunk is shared by this many */
#endif

/* Scratch per thread: the converted chunk, the parked lanes, then the
 * token block's x, packed by k block: [k block][token][GEMM_AVX2_KC],
 * zero-filled past K (so the last chunk needs no masks, and a tile's x
 * rows are contiguous: rows a multiple of 4 KiB apart would share L1
 * sets with each other and with the chunk). */
#define GEMM_AVX2_CHUNK_FLOATS (GEMM_AVX2_NB * GEMM_AVX2_KC)
#define GEMM_AVX2_PST (GEMM_AVX2_NB * 16) /* part: [token][row][16]; a constant, so parking needs no address math */
#define GEMM_AVX2_PART_FLOATS (GEMM_AVX2_TB * GEMM_AVX2_NB * 16)

static size_t gemm_avx2_scratch(int64_t K)
{
    const size_t nkb = (size_t)((K + GEMM_AVX2_KC - 1) / GEMM_AVX2_KC);
    return (GEMM_AVX2_CHUNK_FLOATS + GEMM_AVX2_PART_FLOATS + nkb * GEMM_AVX2_TB * GEMM_AVX2_KC) * sizeof(float);
}

#define GEMM_AVX2_FMA3(T, XV)                                                                                 \
    do {                                                                                                      \
        const __m256 a_ = (XV);                                                                               \
        acc[T][0] = _mm256_fmadd_ps(a_, b0, acc[T][0]);                                                       \
        acc[T][1] = _mm256_fmadd_ps(a_, b1, acc[T][1]);                                                       \
        acc[T][2] = _mm256_fmadd_ps(a_, b2, acc[T][2]);                                                       \
    } while (0)

/* One token tile over one k block: for every 3-row sub-panel s < nsub of
 * the chunk and both halves h, lanes [8h, 8h + 8) of TT tokens x 3 rows
 * over the block's nc 16-wide chunks. x: the tile's packed rows (stride
 * GEMM_AVX2_KC). Accumulators start at +0 when first, else from part, and
 * go back to part: part + t * GEMM_AVX2_PST + (3s + j) * 16 + 8h.
 * pfx, pfp: the next tile's x rows and parked lanes, fetched into L1 a line
 * per iteration (the tile's passes have ~8 x 16 iterations for its ~112
 * lines): the hardware prefetcher sees those streams only after misses. */
VEC_INLINE void gemm_avx2_tile(const int TT, const float *x, const float *chunk, int nsub, int64_t nc, float *part,
                               int first, const float *pfx, const float *pfp)
{
    const int64_t nx = GEMM_AVX2_TT * GEMM_AVX2_KC / 16, np = GEMM_AVX2_TT * GEMM_AVX2_NB;
    for (int s = 0; s < nsub; s++)
        for (int h = 0; h < 2; h++) {
            __m256 acc[GEMM_AVX2_TT][GEMM_AVX2_NT];
            const float *w0 = chunk + s * GEMM_AVX2_NT * GEMM_AVX2_KC + 8 * h, *xh = x + 8 * h;
            float *p = part + s * GEMM_AVX2_NT * 16 + 8 * h;
VEC_UNROLL
            for (int t = 0; t < TT; t++)
VEC_UNROLL
                for (int j = 0; j < GEMM_AVX2_NT; j++)
                    acc[t][j] = first ? _mm256_setzero_ps() : _mm256_load_ps(p + t * GEMM_AVX2_PST + j * 16);
            const int64_t lb = (2 * s + h) * nc;
            for (int64_t k = 0; k < nc * 16; k += 16) {
                const int64_t l = lb + k / 16;
                if (l < nx)
                    _mm_prefetch((const char *)(pfx + l * 16), _MM_HINT_T0);
                else if (l < nx + np)
                    _mm_prefetch((const char *)(pfp + (l - nx) * 16), _MM_HINT_T0);
                const __m256 b0 = _mm256_load_ps(w0 + k), b1 = _mm256_load_ps(w0 + GEMM_AVX2_KC + k),
                             b2 = _mm256_load_ps(w0 + 2 * GEMM_AVX2_KC + k);
VEC_UNROLL
                for (int t = 0; t < TT; t++)
                    GEMM_AVX2_FMA3(t, _mm256_load_ps(xh + t * GEMM_AVX2_KC + k));
            }
VEC_UNROLL
            for (int t = 0; t < TT; t++)
VEC_UNROLL
                for (int j = 0; j < GEMM_AVX2_NT; j++)
                    _mm256_store_ps(p + t * GEMM_AVX2_PST + j * 16, acc[t][j]);
        }
}

#define GEMM_AVX2_TILE_INST(TT)                                                                                 \
    static VEC_FN void gemm_avx2_tile_##TT(const float *x, const float *chunk, int nsub, int64_t nc, float *part, \
                                           int first, const float *pfx, const float *pfp)                      \
    {                                                                                                           \
        gemm_avx2_tile(TT, x, chunk, nsub, nc, part, first, pfx, pfp);                                                    \
    }
GEMM_AVX2_TILE_INST(1)
GEMM_AVX2_TILE_INST(2)
GEMM_AVX2_TILE_INST(3)
GEMM_AVX2_TILE_INST(4)

typedef void (*gemm_avx2_tile_fn)(const float *x, const float *chunk, int nsub, int64_t nc, float *part,
                                  int first, const float *pfx, const float *pfp);
static const gemm_avx2_tile_fn gemm_avx2_tiles[GEMM_AVX2_TT] = {gemm_avx2_tile_1, gemm_avx2_tile_2,
                                                                gemm_avx2_tile_3, gemm_avx2_tile_4};

/* Converts w[n + i, k0 + c] for i < nr, c < kn to f32 into chunk row i
 * (stride GEMM_AVX2_KC), zero-filled up to the next multiple of 16 and
 * for the rows [nr, nrp) (a sub-panel's padding rows: their outputs are
 * computed and dropped). Prefetches the next block of rows [n + NB, n1)
 * into L2, a slice per k block: those rows are one contiguous run of
 * memory, read in order, far enough ahead (a whole row block) to hide the
 * memory's latency even at T = 16, where a chunk's tiles last ~1 us. A
 * chunk's own rows (12 runs of 512 bytes, 4 KiB or more apart) would
 * otherwise come from memory while the conversion waits: a quarter of the
 * time of a 16-token GEMM in a profile. */
static VEC_FN void gemm_avx2_convert(const anvil_cpu_mm *m, int64_t n, int nr, int nrp, int64_t n1, int64_t k0,
                                     int64_t kn, float *chunk)
{
    const int64_t K = m->K, esz = (int64_t)anvil_dtype_size(m->wdt);
    const int64_t k16 = kn / 16 * 16;
    const int r = (int)(kn - k16);
    const int64_t pn = n + GEMM_AVX2_NB, pnr = n1 - pn < GEMM_AVX2_NB ? n1 - pn : GEMM_AVX2_NB;
    if (pnr > 0) {
        const int64_t nkb = (K + GEMM_AVX2_KC - 1) / GEMM_AVX2_KC, kb = k0 / GEMM_AVX2_KC;
        const int64_t bytes = pnr * K * esz, lo = bytes * kb / nkb / 64 * 64, hi = bytes * (kb + 1) / nkb;
        const char *next = (const char *)m->w + pn * K * esz;
        for (int64_t b = lo; b < hi; b += 64)
            _mm_prefetch(next + b, _MM_HINT_T1);
    }
    for (int i = 0; i < nr; i++) {
        const int64_t base = (n + i) * K + k0;
        float *dst = chunk + (int64_t)i * GEMM_AVX2_KC;
        int64_t k = 0;
        switch (m->wdt) {
        case ANVIL_DTYPE_BF16:
            for (; k < k16; k += 16)
                v_store(dst + k, v_load_w(m->w, base + k, ANVIL_DTYPE_BF16));
            break;
        case ANVIL_DTYPE_F16:
            for (; k < k16; k += 16)
                v_store(dst + k, v_load_w(m->w, base + k, ANVIL_DTYPE_F16));
            break;
        default:
            for (; k < k16; k += 16)
                v_store(dst + k, v_load_w(m->w, base + k, ANVIL_DTYPE_F32));
            break;
        }
        if (r > 0)
            v_store(dst + k16, v_load_w_n(m->w, base + k16, r, m->wdt));
    }
    for (int i = nr; i < nrp; i++)
        memset(chunk + (int64_t)i * GEMM_AVX2_KC, 0, (size_t)((kn + 15) / 16 * 16) * sizeof(float));
}

/* Packs x rows [t0, t1) into xp ([k block][t - t0][GEMM_AVX2_KC], tokens
 * per block tn), each k block zero-filled past K to a multiple of 16. */
static VEC_FN void gemm_avx2_pack_x(const anvil_cpu_mm *m, int64_t t0, int64_t t1, int64_t tn, float *xp)
{
    const int64_t K = m->K;
    for (int64_t k0 = 0; k0 < K; k0 += GEMM_AVX2_KC) {
        const int64_t kn = K - k0 < GEMM_AVX2_KC ? K - k0 : GEMM_AVX2_KC, k16 = kn / 16 * 16;
        float *blk = xp + k0 / GEMM_AVX2_KC * tn * GEMM_AVX2_KC;
        for (int64_t t = t0; t < t1; t++) {
            const float *src = m->x + t * K + k0;
            float *dst = blk + (t - t0) * GEMM_AVX2_KC;
            for (int64_t k = 0; k < k16; k += 16)
                v_store(dst + k, v_load(src + k));
            if (k16 < kn)
                v_store(dst + k16, v_load_n(src + k16, (int)(kn - k16)));
        }
    }
}

/* out[t0:t1, n0:n1] for T > 8. */
static VEC_FN void mm_gemm_avx2(const anvil_cpu_mm *m, int64_t t0, int64_t t1, int64_t n0, int64_t n1,
                                float *scratch)
{
    const int64_t K = m->K, N = m->N;
    float *chunk = scratch, *part = chunk + GEMM_AVX2_CHUNK_FLOATS, *xp = part + GEMM_AVX2_PART_FLOATS;
    const int64_t pst = GEMM_AVX2_PST;
    for (int64_t tb0 = t0; tb0 < t1; tb0 += GEMM_AVX2_TB) {
        const int64_t tb1 = tb0 + GEMM_AVX2_TB < t1 ? tb0 + GEMM_AVX2_TB : t1, tn = tb1 - tb0;
        gemm_avx2_pack_x(m, tb0, tb1, tn, xp);
        for (int64_t n = n0; n < n1; n += GEMM_AVX2_NB) {
            const int nr = (int)(n1 - n < GEMM_AVX2_NB ? n1 - n : GEMM_AVX2_NB);
            const int nsub = (nr + GEMM_AVX2_NT - 1) / GEMM_AVX2_NT;
            for (int64_t k0 = 0; k0 < K; k0 += GEMM_AVX2_KC) {
                const int64_t kn = K - k0 < GEMM_AVX2_KC ? K - k0 : GEMM_AVX2_KC;
                gemm_avx2_convert(m, n, nr, nsub * GEMM_AVX2_NT, n1, k0, kn, chunk);
                const float *xb = xp + k0 / GEMM_AVX2_KC * tn * GEMM_AVX2_KC;
                for (int64_t t = 0; t < tn; t += GEMM_AVX2_TT) {
                    const int tt = (int)(tn - t < GEMM_AVX2_TT ? tn - t : GEMM_AVX2_TT);
                    /* the next tile: in this k block, else the first of the next one */
                    const int64_t tnx = t + GEMM_AVX2_TT < tn ? t + GEMM_AVX2_TT : 0;
                    const float *pfx = tnx > 0 ? xb + tnx * GEMM_AVX2_KC
                                       : k0 + kn < K ? xb + tn * GEMM_AVX2_KC : xb;
                    gemm_avx2_tiles[tt - 1](xb + t * GEMM_AVX2_KC, chunk, nsub, (kn + 15) / 16, part + t * pst,
                                            k0 == 0, pfx, part + tnx * pst);
                }
            }
            for (int64_t t = 0; t < tn; t++)
                for (int j = 0; j < nr; j++) {
                    const float s = v_reduce(v_load(part + t * pst + j * 16));
                    m->out[(tb0 + t) * N + n + j] =
                        m->bias != NULL ? s + anvil_cpu_load_elem(m->bias, m->bias_dt, n + j) : s;
                }
        }
    }
}

#endif
