/* The int path's AVX2 kernel (cpu_quant.h): a block of 32 columns is one
 * ymm of bytes; maddubs + madd give the 8 lanes' exact integer sums
 * (u4: unsigned weights 0..15 times signed q, the zero point taken off as
 * z * (lane sum of q), exact in f32; i8: |w| times q with w's sign, the
 * sign trick), then one fma per lane with fl(d_b * s). Lanes 0-7 (even
 * blocks) and 8-15 (odd blocks) are two ymm accumulators. */
#if defined(__x86_64__)
#include "backend/cpu/cpu_quant.h"
#include "backend/cpu/cpu_vec_avx2.h"

#define QFN __attribute__((target("avx2,fma,f16c")))

/* One block b (h = b % 2: which accumulator) of R rows x TT tokens. */
VEC_INLINE void q_block(const int R, const int TT, const anvil_dtype DT, const int h, int64_t b,
                        const uint8_t *const *wr, const float *s, const float *z, const anvil_cpu_q8 *a,
                        __m256 (*acc)[4][2])
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i qv[4];
    __m256 dv[4], qsv[4];
VEC_UNROLL
    for (int j = 0; j < TT; j++) {
        qv[j] = _mm256_loadu_si256((const __m256i *)(const void *)(a[j].q + b * 32));
        dv[j] = _mm256_loadu_ps(a[j].dl + b * 8);
        if (DT == ANVIL_DTYPE_U4)
            qsv[j] = _mm256_loadu_ps(a[j].qs + b * 8);
    }
VEC_UNROLL
    for (int r = 0; r < R; r++) {
        __m256i wv, aw = _mm256_setzero_si256();
        if (DT == ANVIL_DTYPE_U4) {
            const __m128i by = _mm_loadu_si128((const __m128i *)(const void *)(wr[r] + b * 16));
            const __m128i m4 = _mm_set1_epi8(0x0F);
            wv = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(by, 4), m4), _mm_and_si128(by, m4));
        } else {
            wv = _mm256_loadu_si256((const __m256i *)(const void *)(wr[r] + b * 32));
            aw = _mm256_abs_epi8(wv);
        }
        const __m256 sv = _mm256_set1_ps(s[r]), zv = _mm256_set1_ps(z[r]);
VEC_UNROLL
        for (int j = 0; j < TT; j++) {
            const __m256i p16 = DT == ANVIL_DTYPE_U4 ? _mm256_maddubs_epi16(wv, qv[j])
                                                     : _mm256_maddubs_epi16(aw, _mm256_sign_epi8(qv[j], wv));
            __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
            if (DT == ANVIL_DTYPE_U4)
                f = _mm256_fnmadd_ps(zv, qsv[j], f);
            acc[r][j][h] = _mm256_fmadd_ps(_mm256_mul_ps(dv[j], sv), f, acc[r][j][h]);
        }
    }
}

/* The scales (and zero points) of group g of R rows. */
VEC_INLINE void q_scales(const int R, const anvil_dtype DT, const anvil_cpu_qw *qw, int64_t n, int64_t g, float *s,
                         float *z)
{
VEC_UNROLL
    for (int r = 0; r < R; r++) {
        const int64_t i = (n + r) * qw->G + g;
        s[r] = qw->q->scales[i];
        z[r] = DT == ANVIL_DTYPE_U4 ? (qw->q->zeros != NULL ? (float)qw->q->zeros[i] : 8.0f) : 0.0f;
    }
}

/* The next tile's rows (pf: R contiguous rows after this tile's), the
 * lines block b's loads cover in this tile, asked for as it streams: the
 * hardware prefetcher stops at every 4 KiB page, and an int4 row of K =
 * 2048 is 1 KiB, so each decode tile would begin with misses
 * (cpu_quant_avx512.h does the same, per pair of blocks; into L2 for
 * tiles larger than ANVIL_CPU_QPF_L1_MAX). */
VEC_INLINE void q_prefetch(const int R, const anvil_dtype DT, const uint8_t *pf, int l2, int64_t b)
{
    if (pf == NULL)
        return;
    const int64_t bb = (DT == ANVIL_DTYPE_U4 ? 16 : 32) * R; /* bytes of the R rows a block reads */
VEC_UNROLL
    for (int64_t o = 0; o < bb; o += 64) {
        if (l2)
            _mm_prefetch((const char *)pf + b * bb + o, _MM_HINT_T1);
        else
            _mm_prefetch((const char *)pf + b * bb + o, _MM_HINT_T0);
    }
}

VEC_INLINE void q_tile(const int R, const int TT, const anvil_dtype DT, const anvil_cpu_qmm *m, int64_t n, int64_t t)
{
    const anvil_cpu_qw *qw = &m->qw;
    const int64_t K = qw->K, nb = K / ANVIL_CPU_QB, bpg = qw->gs / ANVIL_CPU_QB;
    const int64_t rb = DT == ANVIL_DTYPE_U4 ? K / 2 : K; /* bytes per row */
    __m256 acc[4][4][2];
    anvil_cpu_q8 a[4];
    const uint8_t *wr[4];
    float s[4], z[4];
VEC_UNROLL
    for (int j = 0; j < TT; j++)
        a[j] = anvil_cpu_q8_at(m->xq, m->T, K, t + j);
VEC_UNROLL
    for (int r = 0; r < R; r++) {
        wr[r] = (const uint8_t *)qw->w + (n + r) * rb;
VEC_UNROLL
        for (int j = 0; j < TT; j++)
            acc[r][j][0] = acc[r][j][1] = _mm256_setzero_ps();
    }
    /* decode tiles (TT = 1: R = 4) stream whole rows, the tile driver
     * walking n upwards: the next tile's rows prefetched */
    const uint8_t *pf = TT == 1 && n + 2 * R <= qw->N ? (const uint8_t *)qw->w + (n + R) * rb : NULL;
    const int l2 = R * rb > ANVIL_CPU_QPF_L1_MAX; /* cpu_quant.h */
    int64_t g = 0, left = bpg;
    q_scales(R, DT, qw, n, 0, s, z);
    for (int64_t b = 0; b < nb; b++) {
        /* two blocks a round, so h is a constant */
        q_prefetch(R, DT, pf, l2, b);
        q_block(R, TT, DT, 0, b, wr, s, z, a, acc);
        if (--left == 0 && b + 1 < nb) {
            left = bpg;
            q_scales(R, DT, qw, n, ++g, s, z);
        }
        if (++b >= nb)
            break;
        q_prefetch(R, DT, pf, l2, b);
        q_block(R, TT, DT, 1, b, wr, s, z, a, acc);
        if (--left == 0 && b + 1 < nb) {
            left = bpg;
            q_scales(R, DT, qw, n, ++g, s, z);
        }
    }
VEC_UNROLL
    for (int r = 0; r < R; r++)
VEC_UNROLL
        for (int j = 0; j < TT; j++) {
            const vec16 v = {acc[r][j][0], acc[r][j][1]};
            m->out[(t + j) * qw->N + n + r] = anvil_cpu_qmm_out(m, n + r, v_reduce(v));
        }
}

/* dst[i] = fp8(w[i]) * s for n elements: anvil_cpu_fp8_to_f32's integer
 * steps, 8 at a time (the f32 path's dequantization of fp8 rows). */
QFN void anvil_cpu_dequant_fp8_avx2(const uint8_t *w, float s, float *dst, int64_t n)
{
    const __m256 sv = _mm256_set1_ps(s), e120 = _mm256_set1_ps(0x1p120f), qnan = _mm256_set1_ps(NAN);
    const __m256i m7f = _mm256_set1_epi32(0x7f), m80 = _mm256_set1_epi32(0x80);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(w + i)));
        const __m256i mag = _mm256_and_si256(b, m7f);
        const __m256i bits =
            _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(b, m80), 24), _mm256_slli_epi32(mag, 20));
        __m256 f = _mm256_mul_ps(_mm256_castsi256_ps(bits), e120);
        f = _mm256_blendv_ps(f, qnan, _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, m7f)));
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(f, sv));
    }
    for (; i < n; i++)
        dst[i] = anvil_cpu_fp8_to_f32(w[i]) * s;
}

#define QI_ENTRY anvil_cpu_qmm_avx2
#include "backend/cpu/cpu_quant_tmpl.h"
#else
typedef int anvil_cpu_quant_avx2_unused; /* ISO C: no empty translation unit */
#endif
