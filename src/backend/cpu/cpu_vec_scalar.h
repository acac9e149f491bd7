/*
 * cpu_vec_scalar.h: the 16-lane vector primitives in portable C.
 *
 * The kernel templates (cpu_matmul_tmpl.h, cpu_attention_tmpl.h) are
 * written against these primitives; each ISA supplies the same set with the
 * same results bit for bit:
 *  - v_fma is one fused multiply-add per lane (fmaf here; correctly rounded
 *    by C11, so this path matches the SIMD ones exactly);
 *  - partial loads fill the missing lanes with +0;
 *  - v_reduce adds lane l and l + 8, then l and l + 4, then l and l + 2,
 *    then lanes 0 and 1 (the "dot16" reduction tree).
 * Include once per translation unit, before a template.
 */
#ifndef ANVIL_BACKEND_CPU_VEC_H
#define ANVIL_BACKEND_CPU_VEC_H

#include <math.h>

#include "backend/cpu/cpu_internal.h"

#define VEC_FN
/* No forced inlining or unrolling: this path is the portable fallback, and
 * unrolling 16-lane structs by hand makes it very slow to compile. */
#define VEC_INLINE static inline
#define VEC_UNROLL

typedef struct vec16 {
    float f[16];
} vec16;

VEC_INLINE vec16 v_zero(void)
{
    vec16 r;
    for (int l = 0; l < 16; l++)
        r.f[l] = 0.0f;
    return r;
}

VEC_INLINE vec16 v_set1(float x)
{
    vec16 r;
    for (int l = 0; l < 16; l++)
        r.f[l] = x;
    return r;
}

VEC_INLINE vec16 v_fma(vec16 a, vec16 b, vec16 c)
{
    vec16 r;
    for (int l = 0; l < 16; l++)
        r.f[l] = fmaf(a.f[l], b.f[l], c.f[l]);
    return r;
}

VEC_INLINE vec16 v_div(vec16 a, vec16 b)
{
    vec16 r;
    for (int l = 0; l < 16; l++)
        r.f[l] = a.f[l] / b.f[l];
    return r;
}

VEC_INLINE vec16 v_add(vec16 a, vec16 b)
{
    vec16 r;
    for (int l = 0; l < 16; l++)
        r.f[l] = a.f[l] + b.f[l];
    return r;
}

VEC_INLINE vec16 v_sub(vec16 a, vec16 b)
{
    vec16 r;
    for (int l = 0; l < 16; l++)
        r.f[l] = a.f[l] - b.f[l];
    return r;
}

VEC_INLINE vec16 v_mul(vec16 a, vec16 b)
{
    vec16 r;
    for (int l = 0; l < 16; l++)
        r.f[l] = a.f[l] * b.f[l];
    return r;
}

/* a > b ? a : b per lane (b when unordered), as maxps does */
VEC_INLINE vec16 v_max(vec16 a, vec16 b)
{
    vec16 r;
    for (int l = 0; l < 16; l++)
        r.f[l] = a.f[l] > b.f[l] ? a.f[l] : b.f[l];
    return r;
}

VEC_INLINE vec16 v_load(const float *p)
{
    vec16 r;
    memcpy(r.f, p, sizeof r.f);
    return r;
}

/* Lanes [0, n) from p, the rest +0. 0 <= n <= 16. */
VEC_INLINE vec16 v_load_n(const float *p, int n)
{
    vec16 r = v_zero();
    memcpy(r.f, p, (size_t)n * 4);
    return r;
}

VEC_INLINE void v_store(float *p, vec16 v) { memcpy(p, v.f, sizeof v.f); }

VEC_INLINE void v_store_n(float *p, vec16 v, int n) { memcpy(p, v.f, (size_t)n * 4); }

/* Elements [i, i + 16) of an f32/bf16/f16 (or fp8 e4m3, unscaled) array, as floats. */
VEC_INLINE vec16 v_load_w(const void *base, int64_t i, anvil_dtype dt)
{
    vec16 r;
    for (int l = 0; l < 16; l++)
        r.f[l] = anvil_cpu_load_elem(base, dt, i + l);
    return r;
}

/* Elements [i, i + n) as lanes [0, n), the rest +0. */
VEC_INLINE vec16 v_load_w_n(const void *base, int64_t i, int n, anvil_dtype dt)
{
    vec16 r = v_zero();
    for (int l = 0; l < n; l++)
        r.f[l] = anvil_cpu_load_elem(base, dt, i + l);
    return r;
}

VEC_INLINE float v_reduce(vec16 v)
{
    float s8[8], s4[4];
    for (int l = 0; l < 8; l++)
        s8[l] = v.f[l] + v.f[l + 8];
    for (int l = 0; l < 4; l++)
        s4[l] = s8[l] + s8[l + 4];
    float s20 = s4[0] + s4[2], s21 = s4[1] + s4[3];
    return s20 + s21;
}

/* exp(x) for x <= 0 as softmax needs it (Cephes expf: n = round(x log2 e),
 * r = x - n ln 2 in two steps, a degree-6 polynomial, times 2^n), within
 * 1.5 ulp of exp; below -87.3 it returns exp(-87.3) ~ 1e-38 instead of a denormal.
 * Only IEEE-exact steps (fma, mul, add, round to nearest even, exponent
 * bits), so every ISA gives the same bits. */
VEC_INLINE float v_exp1(float x)
{
    if (isnan(x))
        return x;
    x = -87.3f > x ? -87.3f : x;
    x = 88.0f < x ? 88.0f : x; /* minps(88, x): x when unordered */
    float n = nearbyintf(x * 1.44269504088896341f);
    float r = fmaf(n, -0.693359375f, x);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    float y = fmaf(p, r * r, r) + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return y * scale;
}

VEC_INLINE vec16 v_exp(vec16 x)
{
    vec16 r;
    for (int l = 0; l < 16; l++)
        r.f[l] = v_exp1(x.f[l]);
    return r;
}

/* out[i] = v_reduce(a[i]) for 16 vectors. */
VEC_INLINE void v_reduce16(const vec16 *a, float *out)
{
    for (int i = 0; i < 16; i++)
        out[i] = v_reduce(a[i]);
}

#endif
