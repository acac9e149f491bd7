/* Element types and exact fp32 <-> bf16/fp16 conversions (round to nearest
 * even, as PyTorch's .to() does), so that weights converted here match the
 * ones Hugging Face computes with bit for bit. */
#include "anvil/dtype.h"

#include <math.h>
#include <string.h>
#include <strings.h>

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

size_t anvil_dtype_size(anvil_dtype dt)
{
    switch (dt) {
    case ANVIL_DTYPE_F32: return 4;
    case ANVIL_DTYPE_F16: return 2;
    case ANVIL_DTYPE_BF16: return 2;
    case ANVIL_DTYPE_I32: return 4;
    case ANVIL_DTYPE_I64: return 8;
    case ANVIL_DTYPE_I8: return 1;
    case ANVIL_DTYPE_U8: return 1;
    case ANVIL_DTYPE_F8_E4M3: return 1;
    case ANVIL_DTYPE_U4: return 0; /* packed: anvil_tensor_nbytes */
    case ANVIL_DTYPE_COUNT: break;
    }
    return 0;
}

static const char *const dtype_names[ANVIL_DTYPE_COUNT] = {
    "f32", "f16", "bf16", "i32", "i64", "i8", "u8", "f8_e4m3", "u4",
};

const char *anvil_dtype_name(anvil_dtype dt)
{
    if ((int)dt < 0 || dt >= ANVIL_DTYPE_COUNT)
        return "?";
    return dtype_names[dt];
}

int anvil_dtype_parse(const char *name, anvil_dtype *out)
{
    static const struct {
        const char *name;
        anvil_dtype dt;
    } aliases[] = {
        {"f32", ANVIL_DTYPE_F32},      {"float32", ANVIL_DTYPE_F32}, {"float", ANVIL_DTYPE_F32},
        {"f16", ANVIL_DTYPE_F16},      {"float16", ANVIL_DTYPE_F16}, {"half", ANVIL_DTYPE_F16},
        {"fp16", ANVIL_DTYPE_F16},     {"bf16", ANVIL_DTYPE_BF16},   {"bfloat16", ANVIL_DTYPE_BF16},
        {"fp32", ANVIL_DTYPE_F32},     {"i32", ANVIL_DTYPE_I32},     {"int32", ANVIL_DTYPE_I32},
        {"i64", ANVIL_DTYPE_I64},      {"int64", ANVIL_DTYPE_I64},   {"i8", ANVIL_DTYPE_I8},
        {"int8", ANVIL_DTYPE_I8},      {"u8", ANVIL_DTYPE_U8},       {"uint8", ANVIL_DTYPE_U8},
        {"f8_e4m3", ANVIL_DTYPE_F8_E4M3}, {"float8_e4m3fn", ANVIL_DTYPE_F8_E4M3},
    };
    if (name == NULL)
        return -1;
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
        if (strcasecmp(name, aliases[i].name) == 0) {
            *out = aliases[i].dt;
            return 0;
        }
    }
    return -1;
}

float anvil_bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

uint16_t anvil_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet and signed */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float anvil_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) { /* zero or subnormal: mant * 2^-24, exact in fp32 */
        float v = (float)mant * (1.0f / 16777216.0f);
        return f32_from_bits(f32_bits(v) | sign);
    }
    if (exp == 31)
        return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t anvil_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or NaN */
        return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (ax >= 0x477ff000u) /* rounds past 65504 */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) { /* below 2^-14: a half subnormal (or zero) */
        /* Scaling by 2^24 is exact; nearbyintf rounds half to even in the
         * default rounding mode. 1024 encodes the smallest normal, as wanted. */
        float units = nearbyintf(f32_from_bits(ax) * 16777216.0f);
        return (uint16_t)(sign | (uint16_t)units);
    }
    uint32_t r = ax - ((127u - 15u) << 23);
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

void anvil_convert_to_f32(anvil_dtype src_dt, const void *src, float *dst, int64_t n)
{
    if (src_dt == ANVIL_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * 4);
    } else if (src_dt == ANVIL_DTYPE_BF16) {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = anvil_bf16_to_f32(s[i]);
    } else if (src_dt == ANVIL_DTYPE_F16) {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = anvil_f16_to_f32(s[i]);
    }
}

void anvil_convert_from_f32(anvil_dtype dst_dt, const float *src, void *dst, int64_t n)
{
    if (dst_dt == ANVIL_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * 4);
    } else if (dst_dt == ANVIL_DTYPE_BF16) {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++)
            d[i] = anvil_f32_to_bf16(src[i]);
    } else if (dst_dt == ANVIL_DTYPE_F16) {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++)
            d[i] = anvil_f32_to_f16(src[i]);
    }
}

/* Blocks of 256 are scanned with an OR of the "exponent all ones" test,
 * which compilers vectorize; only a block that holds one is searched. */
#define NONFINITE_SCAN(T, mask)                                                                                        \
    do {                                                                                                               \
        const T *p = data;                                                                                             \
        for (int64_t b = 0; b < n; b += 256) {                                                                         \
            const int64_t e = n - b < 256 ? n : b + 256;                                                               \
            unsigned hit = 0;                                                                                          \
            for (int64_t i = b; i < e; i++)                                                                            \
                hit |= (p[i] & (mask)) == (mask);                                                                      \
            if (hit)                                                                                                   \
                for (int64_t i = b; i < e; i++)                                                                        \
                    if ((p[i] & (mask)) == (mask))                                                                     \
                        return i;                                                                                      \
        }                                                                                                              \
    } while (0)

int64_t anvil_find_nonfinite(anvil_dtype dt, const void *data, int64_t n)
{
    switch (dt) {
    case ANVIL_DTYPE_F32:
        NONFINITE_SCAN(uint32_t, 0x7f800000u);
        break;
    case ANVIL_DTYPE_BF16:
        NONFINITE_SCAN(uint16_t, 0x7f80u);
        break;
    case ANVIL_DTYPE_F16:
        NONFINITE_SCAN(uint16_t, 0x7c00u);
        break;
    default:
        break;
    }
    return -1;
}

float anvil_fp8_e4m3_to_f32(uint8_t q)
{
    const unsigned e = (q >> 3) & 15u, m = q & 7u;
    float v;
    if (e == 15 && m == 7)
        v = NAN;
    else if (e == 0)
        v = ldexpf((float)m, -9); /* subnormal: m x 2^-9 */
    else
        v = ldexpf(1.0f + (float)m / 8.0f, (int)e - 7);
    return (q & 0x80) ? -v : v;
}

uint8_t anvil_f32_to_fp8_e4m3(float f)
{
    const uint32_t u = f32_bits(f);
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7f; /* NaN */
    if (a >= 0x43e00000u)
        return sign | 0x7e; /* 448 and more, infinity too: saturate */
    if (a < 0x3c800000u) {
        /* Below 2^-6, the subnormal steps of 2^-9: a x 512 is exact, and
         * rintf rounds half to even in the default rounding mode. 8 is
         * 0x08, the smallest normal. */
        return sign | (uint8_t)rintf(f32_from_bits(a) * 512.0f);
    }
    /* Round the 23-bit mantissa to 3 bits, ties to even; a carry moves
     * into the exponent. Under 448 nothing rounds past 0x7e. */
    const uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);
    const uint32_t e = (r >> 23) - 127u + 7u;
    return sign | (uint8_t)((e << 3) | ((r >> 20) & 7u));
}
