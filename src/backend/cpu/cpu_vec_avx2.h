/*
 * cpu_vec_avx2.h: the 16-lane vector primitives on AVX2 + FMA + F16C, as
 * two ymm halves (lanes 0-7 and 8-15). Same contract as cpu_vec_scalar.h,
 * bit for bit. Include only from files compiled on x86-64.
 */
#ifndef ANVIL_BACKEND_CPU_VEC_H
#define ANVIL_BACKEND_CPU_VEC_H

#include <immintrin.h>

#include "backend/cpu/cpu_internal.h"

#define VEC_TARGET "avx2,fma,f16c"
#define VEC_FN __attribute__((target(VEC_TARGET)))
#ifndef ANVIL_CPU_SANITIZED
#define VEC_INLINE static inline __attribute__((always_inline, target(VEC_TARGET)))
/* tiles are unrolled fully so their accumulators live in registers */
#define VEC_UNROLL _Pragma("GCC unroll 16")
#else
#define VEC_INLINE static inline __attribute__((target(VEC_TARGET)))
#define VEC_UNROLL
#endif

typedef struct vec16 {
    __m256 lo, hi;
} vec16;

/* mask_tbl + 8 - n: lanes [0, n) all ones, 0 <= n <= 8 */
static const int32_t vec_mask_tbl[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

VEC_INLINE __m256i v_mask8(int n) { return _mm256_loadu_si256((const __m256i *)(vec_mask_tbl + 8 - n)); }

VEC_INLINE vec16 v_zero(void)
{
    vec16 r = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    return r;
}

VEC_INLINE vec16 v_set1(float x)
{
    vec16 r = {_mm256_set1_ps(x), _mm256_set1_ps(x)};
    return r;
}

VEC_INLINE vec16 v_fma(vec16 a, vec16 b, vec16 c)
{
    vec16 r = {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
    return r;
}

VEC_INLINE vec16 v_div(vec16 a, vec16 b)
{
    vec16 r = {_mm256_div_ps(a.lo, b.lo), _mm256_div_ps(a.hi, b.hi)};
    return r;
}

VEC_INLINE vec16 v_add(vec16 a, vec16 b)
{
    vec16 r = {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
    return r;
}

VEC_INLINE vec16 v_sub(vec16 a, vec16 b)
{
    vec16 r = {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)};
    return r;
}

VEC_INLINE vec16 v_mul(vec16 a, vec16 b)
{
    vec16 r = {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)};
    return r;
}

/* a > b ? a : b per lane (b when unordered) */
VEC_INLINE vec16 v_max(vec16 a, vec16 b)
{
    vec16 r = {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)};
    return r;
}

VEC_INLINE vec16 v_load(const float *p)
{
    vec16 r = {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)};
    return r;
}

VEC_INLINE vec16 v_load_n(const float *p, int n)
{
    int nlo = n < 8 ? n : 8, nhi = n > 8 ? n - 8 : 0;
    vec16 r = {_mm256_maskload_ps(p, v_mask8(nlo)), _mm256_maskload_ps(p + 8, v_mask8(nhi))};
    return r;
}

VEC_INLINE void v_store(float *p, vec16 v)
{
    _mm256_storeu_ps(p, v.lo);
    _mm256_storeu_ps(p + 8, v.hi);
}

VEC_INLINE void v_store_n(float *p, vec16 v, int n)
{
    int nlo = n < 8 ? n : 8, nhi = n > 8 ? n - 8 : 0;
    _mm256_maskstore_ps(p, v_mask8(nlo), v.lo);
    _mm256_maskstore_ps(p + 8, v_mask8(nhi), v.hi);
}

VEC_INLINE __m256 v_from_half8(__m128i h, anvil_dtype dt)
{
    if (dt == ANVIL_DTYPE_BF16) /* bf16 is the top half of an f32 */
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* The fp8 e4m3 bytes 0-7 of b as floats, exactly: e4m3's bits s.eeee.mmm
 * placed as f16's s and (eeee.mmm << 7) are the same number times 2^-8
 * (subnormals too), widened by vcvtph2ps and scaled back; e4m3's NaN
 * (eeee.mmm all ones) becomes an f16 NaN. */
VEC_INLINE __m256 v_from_fp8x8(__m128i b)
{
    const __m128i w = _mm_cvtepu8_epi16(b);
    const __m128i mag = _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x7f)), 7);
    const __m128i sign = _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x80)), 8);
    const __m128i nan = _mm_and_si128(_mm_cmpeq_epi16(mag, _mm_set1_epi16(0x3f80)), _mm_set1_epi16(0x7c00));
    return _mm256_mul_ps(_mm256_cvtph_ps(_mm_or_si128(_mm_or_si128(mag, sign), nan)), _mm256_set1_ps(256.0f));
}

VEC_INLINE vec16 v_load_w(const void *base, int64_t i, anvil_dtype dt)
{
    const char *p = (const char *)base;
    if (dt == ANVIL_DTYPE_F32)
        return v_load((const float *)(const void *)(p + i * 4));
    if (dt == ANVIL_DTYPE_F8_E4M3) {
        const __m128i b = _mm_loadu_si128((const __m128i *)(p + i));
        vec16 r = {v_from_fp8x8(b), v_from_fp8x8(_mm_srli_si128(b, 8))};
        return r;
    }
    vec16 r = {v_from_half8(_mm_loadu_si128((const __m128i *)(p + i * 2)), dt),
               v_from_half8(_mm_loadu_si128((const __m128i *)(p + i * 2 + 16)), dt)};
    return r;
}

VEC_INLINE vec16 v_load_w_n(const void *base, int64_t i, int n, anvil_dtype dt)
{
    const char *p = (const char *)base;
    if (dt == ANVIL_DTYPE_F32)
        return v_load_n((const float *)(const void *)(p + i * 4), n);
    /* no 8- or 16-bit masked load on AVX2: go through a zeroed copy */
    const size_t esz = dt == ANVIL_DTYPE_F8_E4M3 ? 1 : 2;
    uint16_t tmp[16] = {0};
    memcpy(tmp, p + i * (int64_t)esz, (size_t)n * esz);
    return v_load_w(tmp, 0, dt);
}

VEC_INLINE float v_reduce(vec16 v)
{
    __m256 s8 = _mm256_add_ps(v.lo, v.hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* exp(x) for x <= 0 as softmax needs it (Cephes expf: n = round(x log2 e),
 * r = x - n ln 2 in two steps, a degree-6 polynomial, times 2^n), within
 * 1.5 ulp of exp; below -87.3 it returns exp(-87.3) ~ 1e-38 instead of a denormal.
 * Only IEEE-exact steps (fma, mul, add, round to nearest even, exponent
 * bits), so every ISA gives the same bits. */
VEC_INLINE __m256 v_exp8(__m256 x)
{
    x = _mm256_max_ps(_mm256_set1_ps(-87.3f), x);
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

VEC_INLINE vec16 v_exp(vec16 x)
{
    vec16 r = {v_exp8(x.lo), v_exp8(x.hi)};
    return r;
}

/* out[i] = v_reduce(a[i]) for 16 vectors. */
VEC_INLINE void v_reduce16(const vec16 *a, float *out)
{
    for (int i = 0; i < 16; i++)
        out[i] = v_reduce(a[i]);
}

#endif
