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
#define VEC_INLINE static inline __attribute__((always_inline, target(VEC_TARGET)))
/* tiles are unrolled fully so their accumulators live in registers */
#define VEC_UNROLL _Pragma("GCC unroll 8")

typedef __m512 vec16;

VEC_INLINE vec16 v_zero(void) { return _mm512_setzero_ps(); }
VEC_INLINE vec16 v_set1(float x) { return _mm512_set1_ps(x); }
VEC_INLINE vec16 v_fma(vec16 a, vec16 b, vec16 c) { return _mm512_fmadd_ps(a, b, c); }
VEC_INLINE vec16 v_div(vec16 a, vec16 b) { return _mm512_div_ps(a, b); }
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

VEC_INLINE vec16 v_load_w(const void *base, int64_t i, anvil_dtype dt)
{
    if (dt == ANVIL_DTYPE_F32)
        return _mm512_loadu_ps((const char *)base + i * 4);
    return v_from_half(_mm256_loadu_si256((const __m256i *)((const char *)base + i * 2)), dt);
}

VEC_INLINE vec16 v_load_w_n(const void *base, int64_t i, int n, anvil_dtype dt)
{
    if (dt == ANVIL_DTYPE_F32)
        return _mm512_maskz_loadu_ps(v_mask(n), (const char *)base + i * 4);
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

#endif
