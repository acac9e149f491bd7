/*
 * cpu_quant_avx512.h: the int path's AVX-512 kernel (cpu_quant.h), for
 * cpu_quant_avx512.c (AVX-512 BW: maddubs + madd) and
 * cpu_quant_avx512vnni.c (vpdpbusd). Define QI_VNNI (0 or 1) and QI_ENTRY
 * first. A zmm holds two blocks of 32 columns: lanes 0-7 the even block's,
 * 8-15 the odd one's, which is the definition's lane order, so one
 * accumulator per output; an odd last block runs zero-extended (its upper
 * lanes add fma(0, 0) = nothing). The lanes' integer sums are exact either
 * way, so both variants give the bits of the other paths.
 */
#if QI_VNNI
#define QI_TARGET "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
#else
#define QI_TARGET "avx512f,avx512bw,avx512vl,avx2,fma,f16c"
#endif
#define QFN __attribute__((target(QI_TARGET)))
#ifndef ANVIL_CPU_SANITIZED
#define QI_INLINE static inline __attribute__((always_inline, target(QI_TARGET)))
#else
#define QI_INLINE static inline __attribute__((target(QI_TARGET)))
#endif

/* two per-block values as the 16 lanes: v0 in 0-7, v1 in 8-15 */
QI_INLINE __m512 q_pair(float v0, float v1)
{
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(v0)),
                                               _mm256_castps_pd(_mm256_set1_ps(v1)), 1));
}

/* Quarters 1 and 2 of a vector swapped (its own inverse): the swapped
 * lane order of q_pairs's SW. */
#define Q_SWAP 0xD8 /* _MM_SHUFFLE(3, 1, 2, 0) */

/* The 32-byte blocks b, b + 1 (one: the second zero) of R rows x TT tokens.
 * SW (u4 pairs, not one): the lanes in the swapped order [lo b, lo b + 1,
 * hi b, hi b + 1] (each a quarter: a block's 16 low nibbles, its 16 high
 * ones), which is what 32 bytes of a row give with a broadcast, a shift
 * and a mask, instead of 5 steps for the definition's [lo b, hi b, lo b +
 * 1, hi b + 1]: the activations (shared by the R rows) and the scales are
 * swapped to match, and the accumulators swapped back once at the end
 * (q_tile). Each lane's arithmetic is the definition's. */
QI_INLINE void q_pairs(const int R, const int TT, const anvil_dtype DT, const int SW, const int one, int64_t b,
                       const uint8_t *const *wr, const __m512 *sv, const __m512 *zv, const anvil_cpu_q8 *a,
                       __m512 (*acc)[4])
{
    __m512i qv[4];
    __m512 dv[4], qsv[4];
    VEC_UNROLL
    for (int j = 0; j < TT; j++) {
        if (SW) {
            const __m512i q = _mm512_loadu_si512((const void *)(a[j].q + b * 32));
            qv[j] = _mm512_shuffle_i64x2(q, q, Q_SWAP);
            const __m512 d = _mm512_loadu_ps(a[j].dl + b * 8), qs = _mm512_loadu_ps(a[j].qs + b * 8);
            dv[j] = _mm512_shuffle_f32x4(d, d, Q_SWAP);
            qsv[j] = _mm512_shuffle_f32x4(qs, qs, Q_SWAP);
        } else if (one) {
            qv[j] = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(const void *)(a[j].q + b * 32)));
            dv[j] = _mm512_zextps256_ps512(_mm256_loadu_ps(a[j].dl + b * 8));
            qsv[j] = _mm512_zextps256_ps512(_mm256_loadu_ps(a[j].qs + b * 8));
        } else {
            qv[j] = _mm512_loadu_si512((const void *)(a[j].q + b * 32));
            dv[j] = _mm512_loadu_ps(a[j].dl + b * 8);
            qsv[j] = _mm512_loadu_ps(a[j].qs + b * 8);
        }
    }
    VEC_UNROLL
    for (int r = 0; r < R; r++) {
        __m512i wv;
        if (SW) {
            /* bytes 0-31 in both halves; the low half's 16-bit lanes shift by 0, the high half's by 4 */
            const __m512i by = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(const void *)(wr[r] + b * 16)));
            const __m512i sh = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
            wv = _mm512_and_si512(_mm512_srlv_epi16(by, sh), _mm512_set1_epi8(0x0F));
        } else if (DT == ANVIL_DTYPE_U4) {
            if (one) {
                const __m128i by = _mm_loadu_si128((const __m128i *)(const void *)(wr[r] + b * 16));
                const __m128i m4 = _mm_set1_epi8(0x0F);
                wv = _mm512_zextsi256_si512(
                    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(by, 4), m4), _mm_and_si128(by, m4)));
            } else {
                const __m256i by = _mm256_loadu_si256((const __m256i *)(const void *)(wr[r] + b * 16));
                const __m256i m4 = _mm256_set1_epi8(0x0F);
                const __m256i lo = _mm256_and_si256(by, m4), hi = _mm256_and_si256(_mm256_srli_epi16(by, 4), m4);
                /* quarters [lo0, lo1, hi0, hi1] -> [lo0, hi0, lo1, hi1]: each block's low nibbles, then high */
                const __m512i t4 = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                wv = _mm512_shuffle_i64x2(t4, t4, _MM_SHUFFLE(3, 1, 2, 0));
            }
        } else {
            wv = one ? _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(const void *)(wr[r] + b * 32)))
                     : _mm512_loadu_si512((const void *)(wr[r] + b * 32));
        }
        __m512i uw = wv; /* the unsigned operand */
        __mmask64 neg = 0;
        if (DT == ANVIL_DTYPE_I8) {
            uw = _mm512_abs_epi8(wv);
            neg = _mm512_movepi8_mask(wv);
        }
        VEC_UNROLL
        for (int j = 0; j < TT; j++) {
            /* i8: q with w's sign (where w is 0, |w| is 0: the product too) */
            const __m512i qs8 =
                DT == ANVIL_DTYPE_I8 ? _mm512_mask_sub_epi8(qv[j], neg, _mm512_setzero_si512(), qv[j]) : qv[j];
#if QI_VNNI
            const __m512i i32 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), uw, qs8);
#else
            const __m512i i32 = _mm512_madd_epi16(_mm512_maddubs_epi16(uw, qs8), _mm512_set1_epi16(1));
#endif
            __m512 f = _mm512_cvtepi32_ps(i32);
            if (DT == ANVIL_DTYPE_U4)
                f = _mm512_fnmadd_ps(zv[r], qsv[j], f);
            acc[r][j] = _mm512_fmadd_ps(_mm512_mul_ps(dv[j], sv[r]), f, acc[r][j]);
        }
    }
}

/* scale (and zero point) vectors of R rows for the blocks b and b + 1 */
QI_INLINE void q_scales2(const int R, const anvil_dtype DT, const anvil_cpu_qw *qw, int64_t n, int64_t b,
                         int64_t nb, __m512 *sv, __m512 *zv)
{
    const int64_t g0 = b * ANVIL_CPU_QB / qw->gs, g1 = b + 1 < nb ? (b + 1) * ANVIL_CPU_QB / qw->gs : g0;
    VEC_UNROLL
    for (int r = 0; r < R; r++) {
        const int64_t i0 = (n + r) * qw->G + g0, i1 = (n + r) * qw->G + g1;
        sv[r] = q_pair(qw->q->scales[i0], qw->q->scales[i1]);
        if (DT == ANVIL_DTYPE_U4) {
            const uint8_t *zp = qw->q->zeros;
            zv[r] = q_pair(zp != NULL ? (float)zp[i0] : 8.0f, zp != NULL ? (float)zp[i1] : 8.0f);
        }
    }
}

/* The same for a pair inside group g (both blocks' scale and zero point
 * are the group's): broadcasts from the tile's first row's scales and
 * zero points (s, z: row n's; NULL z: 8) at a stride of G, with no
 * division for the group's index. */
QI_INLINE void q_scales_g(const int R, const anvil_dtype DT, const float *s, const uint8_t *z, int64_t G,
                          int64_t g, __m512 *sv, __m512 *zv)
{
    VEC_UNROLL
    for (int r = 0; r < R; r++) {
        sv[r] = _mm512_set1_ps(s[r * G + g]);
        if (DT == ANVIL_DTYPE_U4)
            zv[r] = _mm512_set1_ps(z != NULL ? (float)z[r * G + g] : 8.0f);
    }
}

/* The next tile's rows (pf: R contiguous rows from the row after this
 * tile's), asked for while this tile streams: the pair of blocks b
 * prefetches the lines of the next tile that this pair's loads cover in
 * this one, so the next tile's start is in cache when it begins. The
 * hardware prefetcher stops at every 4 KiB page: an int4 row of K = 2048
 * is 1 KiB, so each tile of 4 rows would otherwise begin with misses
 * (measured: decode of a 1B int4 engine 1.5x slower without it); into L2
 * when a tile is larger than ANVIL_CPU_QPF_L1_MAX (cpu_quant.h). */
QI_INLINE void q_prefetch(const int R, const anvil_dtype DT, const uint8_t *pf, int l2, int64_t b)
{
    if (pf == NULL)
        return;
    const int64_t pb = (DT == ANVIL_DTYPE_U4 ? 32 : 64) * R; /* bytes of the R rows a pair reads */
    VEC_UNROLL
    for (int64_t o = 0; o < pb; o += 64) {
        if (l2)
            _mm_prefetch((const char *)pf + (b / 2) * pb + o, _MM_HINT_T1);
        else
            _mm_prefetch((const char *)pf + (b / 2) * pb + o, _MM_HINT_T0);
    }
}

QI_INLINE void q_tile(const int R, const int TT, const anvil_dtype DT, const anvil_cpu_qmm *m, int64_t n, int64_t t)
{
    const anvil_cpu_qw *qw = &m->qw;
    const int64_t K = qw->K, nb = K / ANVIL_CPU_QB, bpg = qw->gs / ANVIL_CPU_QB;
    const int64_t rb = DT == ANVIL_DTYPE_U4 ? K / 2 : K;
    __m512 acc[4][4], sv[4], zv[4];
    anvil_cpu_q8 a[4];
    const uint8_t *wr[4];
    VEC_UNROLL
    for (int j = 0; j < TT; j++)
        a[j] = anvil_cpu_q8_at(m->xq, m->T, K, t + j);
    VEC_UNROLL
    for (int r = 0; r < R; r++) {
        wr[r] = (const uint8_t *)qw->w + (n + r) * rb;
        VEC_UNROLL
        for (int j = 0; j < TT; j++)
            acc[r][j] = _mm512_setzero_ps();
    }
    /* decode tiles (TT = 1: R = 4) stream whole rows: the next tile's rows
     * prefetched (the tile driver walks n upwards) */
    const uint8_t *pf = TT == 1 && n + 2 * R <= qw->N ? (const uint8_t *)qw->w + (n + R) * rb : NULL;
    const int l2 = R * rb > ANVIL_CPU_QPF_L1_MAX;
    /* decode tiles of u4 in the swapped lane order (q_pairs): its cost,
     * 3 shuffles of the activations a pair, is shared by the tile's 4 rows */
    const int SW = DT == ANVIL_DTYPE_U4 && TT == 1 && R == 4;
    int64_t b = 0;
    if (bpg % 2 == 0) { /* a pair never straddles two groups: scales per group */
        const float *s0 = qw->q->scales + n * qw->G;
        const uint8_t *z0 = qw->q->zeros != NULL ? qw->q->zeros + n * qw->G : NULL;
        for (int64_t g = 0; b < nb; g++) {
            q_scales_g(R, DT, s0, z0, qw->G, g, sv, zv);
            const int64_t be = b + bpg;
            for (; b + 2 <= be; b += 2) {
                q_prefetch(R, DT, pf, l2, b);
                q_pairs(R, TT, DT, SW, 0, b, wr, sv, zv, a, acc);
            }
        }
    } else {
        for (; b + 2 <= nb; b += 2) {
            q_scales2(R, DT, qw, n, b, nb, sv, zv);
            if (SW) {
                VEC_UNROLL
                for (int r = 0; r < R; r++) {
                    sv[r] = _mm512_shuffle_f32x4(sv[r], sv[r], Q_SWAP);
                    zv[r] = _mm512_shuffle_f32x4(zv[r], zv[r], Q_SWAP);
                }
            }
            q_prefetch(R, DT, pf, l2, b);
            q_pairs(R, TT, DT, SW, 0, b, wr, sv, zv, a, acc);
        }
    }
    if (SW) { /* back to the definition's lane order */
        VEC_UNROLL
        for (int r = 0; r < R; r++)
            acc[r][0] = _mm512_shuffle_f32x4(acc[r][0], acc[r][0], Q_SWAP);
    }
    if (bpg % 2 != 0 && b < nb) { /* the odd last block, in the definition's order */
        q_scales2(R, DT, qw, n, b, nb, sv, zv);
        q_pairs(R, TT, DT, 0, 1, b, wr, sv, zv, a, acc);
    }
    VEC_UNROLL
    for (int r = 0; r < R; r++)
        for (int j = 0; j < TT; j++)
            m->out[(t + j) * qw->N + n + r] = anvil_cpu_qmm_out(m, n + r, v_reduce(acc[r][j]));
}

#include "backend/cpu/cpu_quant_tmpl.h"
