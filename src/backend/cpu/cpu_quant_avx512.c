/* The int path's AVX-512 BW kernel (cpu_quant_avx512.h). */
#if defined(__x86_64__)
#include "backend/cpu/cpu_quant.h"
#include "backend/cpu/cpu_vec_avx512.h"

#define QI_VNNI 0
#define QI_ENTRY anvil_cpu_qmm_avx512
#include "backend/cpu/cpu_quant_avx512.h"

/* anvil_cpu_quant_prep_q8 (cpu_quant.h) for a weight without perm, a
 * block a step, to the byte: the same max (a NaN skipped: as a 0, which
 * never raises it), the same scalar d and reciprocal, the product's one
 * rounding, rint as the vector's round to nearest even (the scalar's
 * rintf in the default mode), the clamp, NaN to 0, and the integer sums.
 * The scalar one spent ~9 us a matmul of K = 2048 in a 1B int4 decode
 * step (2.5% of it), on every thread that prepares its own. */
QFN void anvil_cpu_quant_prep_q8_avx512(const anvil_cpu_qw *qw, const float *x, anvil_cpu_q8 a)
{
    const int64_t nb = qw->K / ANVIL_CPU_QB;
    const int u4 = qw->dt == ANVIL_DTYPE_U4;
    /* u4's positions: the block's even columns, then its odd ones */
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
    const __m512i sum_at = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512 lim = _mm512_set1_ps(127.0f), nlim = _mm512_set1_ps(-127.0f);
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * ANVIL_CPU_QB;
        __m512 v[2] = {_mm512_loadu_ps(xb), _mm512_loadu_ps(xb + 16)};
        if (u4) {
            const __m512 e = _mm512_permutex2var_ps(v[0], ev, v[1]), o = _mm512_permutex2var_ps(v[0], od, v[1]);
            v[0] = e;
            v[1] = o;
        }
        __m512 m = _mm512_setzero_ps();
        for (int h = 0; h < 2; h++) {
            const __m512 av = _mm512_abs_ps(v[h]);
            m = _mm512_max_ps(m, _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(av, av, _CMP_ORD_Q), av));
        }
        const float amax = _mm512_reduce_max_ps(m);
        const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        __m512i qi[2], qs4[2];
        for (int h = 0; h < 2; h++) {
            const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v[h], _mm512_set1_ps(id)),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m512 c = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, r, _CMP_ORD_Q),
                                                 _mm512_min_ps(_mm512_max_ps(r, nlim), lim));
            qi[h] = _mm512_cvtps_epi32(c);
            _mm_storeu_si128((__m128i *)(void *)(a.q + b * ANVIL_CPU_QB + h * 16), _mm512_cvtepi32_epi8(qi[h]));
            /* the sums of 4 positions: in lanes 0, 4, 8, 12 */
            const __m512i t = _mm512_add_epi32(qi[h], _mm512_shuffle_epi32(qi[h], _MM_PERM_CDAB));
            qs4[h] = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_BADC));
        }
        const __m512i qs = _mm512_permutex2var_epi32(qs4[0], sum_at, qs4[1]);
        _mm256_storeu_ps(a.qs + b * 8, _mm512_castps512_ps256(_mm512_cvtepi32_ps(qs)));
        _mm256_storeu_ps(a.dl + b * 8, _mm256_set1_ps(d));
    }
}
#else
typedef int anvil_cpu_quant_avx512_unused; /* ISO C: no empty translation unit */
#endif
