/*
 * cpu_vec_avx512.h: the 16-lane vector primitives on AVX-512 (one zmm).
 * Same contract as cpu_vec_scalar.h, bit for bit. Include only from files
 * that are compiled on x86-64; the functions carry target attributes so the
 * rest of the build stays generic x86-64.
 */
#ifndef ANVIL_BACKEND_CPU_VEC_H
#define ANVIL_BACKEND_CPU_VEC_H

#include <immintrin.h>

#include "backend/cpu/cpu_internal.h"

#define VEC_TARGET "avx512f,avx512bw,avx512vl,avx2,fma,f16c"
#define VEC_FN __attribute__((target(VEC_TARGET)))
#ifndef ANVIL_CPU_SANITIZED
#define VEC_INLINE static inline __attribute__((always_inline, target(VEC_TARGET)))
/* tiles are unrolled fully so their accumulators live in registers */
#define VEC_UNROLL _Pragma("GCC unroll 16")
#else
#define VEC_INLINE static inline __attribute__((target(VEC_TARGET)))
#define VEC_UNROLL
#endif

typedef __m512 vec16;

VEC_INLINE vec16 v_zero(void) { return _mm512_setzero_ps(); }
VEC_INLINE vec16 v_set1(float x) { return _mm512_set1_ps(x); }
VEC_INLINE vec16 v_fma(vec16 a, vec16 b, vec16 c) { return _mm512_fmadd_ps(a, b, c); }
VEC_INLINE vec16 v_div(vec16 a, vec16 b) { return _mm512_div_ps(a, b); }
VEC_INLINE vec16 v_add(vec16 a, vec16 b) { return _mm512_add_ps(a, b); }
VEC_INLINE vec16 v_sub(vec16 a, vec16 b) { return _mm512_sub_ps(a, b); }
VEC_INLINE vec16 v_mul(vec16 a, vec16 b) { return _mm512_mul_ps(a, b); }
/* a > b ? a : b per lane (b when unordered) */
VEC_INLINE vec16 v_max(vec16 a, vec16 b) { return _mm512_max_ps(a, b); }
VEC_INLINE vec16 v_load(const float *p) { return _mm512_loadu_ps(p); }
VEC_INLINE __mmask16 v_mask(int n) { return (__mmask16)((1u << n) - 1u); }
VEC_INLINE vec16 v_load_n(const float *p, int n) { return _mm512_maskz_loadu_ps(v_mask(n), p); }
VEC_INLINE void v_store(float *p, vec16 v) { _mm512_storeu_ps(p, v); }
VEC_INLINE void v_store_n(float *p, vec16 v, int n) { _mm512_mask_storeu_ps(p, v_mask(n), v); }

VEC_INLINE vec16 v_from_half(__m256i h, anvil_dtype dt)
{
    if (dt == ANVIL_DTYPE_BF16) /* bf16 is the top half of an f32 */
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* 16 fp8 e4m3 bytes as floats, exactly (as cpu_vec_avx2.h's v_from_fp8x8:
 * the bits placed as an f16 2^8 times smaller, NaN kept NaN). */
VEC_INLINE vec16 v_from_fp8(__m128i b)
{
    const __m256i w = _mm256_cvtepu8_epi16(b);
    const __m256i mag = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x7f)), 7);
    const __m256i sign = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8);
    const __m256i nan =
        _mm256_and_si256(_mm256_cmpeq_epi16(mag, _mm256_set1_epi16(0x3f80)), _mm256_set1_epi16(0x7c00));
    return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_or_si256(_mm256_or_si256(mag, sign), nan)), _mm512_set1_ps(256.0f));
}

VEC_INLINE vec16 v_load_w(const void *base, int64_t i, anvil_dtype dt)
{
    if (dt == ANVIL_DTYPE_F32)
        return _mm512_loadu_ps((const char *)base + i * 4);
    if (dt == ANVIL_DTYPE_F8_E4M3)
        return v_from_fp8(_mm_loadu_si128((const __m128i *)((const char *)base + i)));
    return v_from_half(_mm256_loadu_si256((const __m256i *)((const char *)base + i * 2)), dt);
}

VEC_INLINE vec16 v_load_w_n(const void *base, int64_t i, int n, anvil_dtype dt)
{
    if (dt == ANVIL_DTYPE_F32)
        return _mm512_maskz_loadu_ps(v_mask(n), (const char *)base + i * 4);
    if (dt == ANVIL_DTYPE_F8_E4M3)
        return v_from_fp8(_mm_maskz_loadu_epi8(v_mask(n), (const char *)base + i));
    return v_from_half(_mm256_maskz_loadu_epi16(v_mask(n), (const char *)base + i * 2), dt);
}

VEC_INLINE float v_reduce(vec16 v)
{
    __m256 lo = _mm512_castps512_ps256(v);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* exp(x) for x <= 0 as softmax needs it (Cephes expf: n = round(x log2 e),
 * r = x - n ln 2 in two steps, a degree-6 polynomial, times 2^n), within
 * 1.5 ulp of exp; below -87.3 it returns exp(-87.3) ~ 1e-38 instead of a denormal.
 * Only IEEE-exact steps (fma, mul, add, round to nearest even, exponent
 * bits), so every ISA gives the same bits. */
VEC_INLINE vec16 v_exp(vec16 x)
{
    x = _mm512_max_ps(_mm512_set1_ps(-87.3f), x);
    x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

/* out[i] = v_reduce(a[i]) for 16 vectors at once: the same additions as
 * v_reduce (lane l with l + 8, then l + 4, then l + 2, then 0 with 1), but
 * two or four vectors share each shuffle and add. */
VEC_INLINE void v_reduce16(const vec16 *a, float *out)
{
    __m512 s[8], t[4], w[2];
VEC_UNROLL
    for (int k = 0; k < 8; k++) /* [a0 lo256 + hi256 | a1 lo256 + hi256] */
        s[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0xEE));
VEC_UNROLL
    for (int k = 0; k < 4; k++) /* quarters: four vectors, l + 4 */
        t[k] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * k], s[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(s[2 * k], s[2 * k + 1], 0xDD));
VEC_UNROLL
    for (int k = 0; k < 2; k++) /* l + 2 */
        w[k] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * k], t[2 * k + 1], 0x44),
                             _mm512_shuffle_ps(t[2 * k], t[2 * k + 1], 0xEE));
    /* 0 + 1: lane 4q + i now holds vector q + 4i */
    __m512 f = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(order, f));
}

#endif
