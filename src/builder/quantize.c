/* Round-to-nearest quantization of stored weights and their companions (quantize.h). */
#include "builder/quantize.h"

#include <math.h>
#include <string.h>

#include "core/error.h"

static const char *const quantize_names[ANVIL_QUANTIZE_COUNT] = {"none", "fp8", "int8-wo", "int4-wo"};

const char *anvil_quantize_name(anvil_quantize q)
{
    return (int)q >= 0 && q < ANVIL_QUANTIZE_COUNT ? quantize_names[q] : "?";
}

int anvil_quantize_parse(const char *name, anvil_quantize *out)
{
    for (int i = 0; name != NULL && i < ANVIL_QUANTIZE_COUNT; i++)
        if (strcmp(name, quantize_names[i]) == 0) {
            *out = (anvil_quantize)i;
            return 0;
        }
    return -1;
}

static float clampf(float v, float lo, float hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

void anvil_rtn_row(anvil_dtype kind, int32_t group, const float *x, int64_t k, uint8_t *q, float *scales,
                   uint8_t *zeros)
{
    if (kind == ANVIL_DTYPE_U4) {
        memset(q, 0, (size_t)(k / 2));
        for (int64_t g0 = 0, gi = 0; g0 < k; g0 += group, gi++) {
            float mn = 0.0f, mx = 0.0f; /* the range holds 0, so that 0 is exact and z in 0..15 */
            for (int64_t i = g0; i < g0 + group; i++) {
                mn = x[i] < mn ? x[i] : mn;
                mx = x[i] > mx ? x[i] : mx;
            }
            const float s = (mx - mn) / 15.0f;
            const float z = s > 0.0f ? clampf(nearbyintf(-mn / s), 0.0f, 15.0f) : 0.0f;
            scales[gi] = s;
            zeros[gi] = (uint8_t)z;
            for (int64_t i = g0; s > 0.0f && i < g0 + group; i++) {
                const uint8_t v = (uint8_t)clampf(nearbyintf(x[i] / s) + z, 0.0f, 15.0f);
                q[i / 2] |= (uint8_t)(i % 2 ? v << 4 : v);
            }
        }
        return;
    }
    float amax = 0.0f;
    for (int64_t i = 0; i < k; i++)
        amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    const int fp8 = kind == ANVIL_DTYPE_F8_E4M3;
    const float s = amax / (fp8 ? 448.0f : 127.0f);
    scales[0] = s;
    for (int64_t i = 0; i < k; i++) {
        if (s == 0.0f)
            q[i] = 0; /* fp8 0x00 is +0 too */
        else if (fp8)
            q[i] = anvil_f32_to_fp8_e4m3(x[i] / s);
        else
            q[i] = (uint8_t)(int8_t)clampf(nearbyintf(x[i] / s), -127.0f, 127.0f);
    }
}

/* Bytes of one row of stored tensor t's output. */
static size_t row_bytes(const anvil_stored *t, int64_t k, int64_t g)
{
    switch (t->role) {
    case ANVIL_STORED_WEIGHT: return t->kind == ANVIL_DTYPE_U4 ? (size_t)(k / 2) : (size_t)k;
    case ANVIL_STORED_SCALES: return (size_t)g * sizeof(float);
    case ANVIL_STORED_ZEROS: return (size_t)g;
    default: return 0;
    }
}

/* The f32 rows read at once (a build holds this per thread, beside its
 * 32 MiB of scratch): rows up to 1M columns. */
#define VALUES_BYTES (ANVIL_BUILD_CHUNK / 4)

anvil_status anvil_quant_fill(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                              int32_t s, size_t offset, void *dst, size_t len, anvil_build_scratch *sc,
                              anvil_quant_row_fn before)
{
    const anvil_stored *t = &p->stored[s];
    const int32_t ws = t->role == ANVIL_STORED_WEIGHT ? s : t->of;
    const anvil_stored *w = &p->stored[ws];
    CHECK(anvil_stored_kind_is_quantized(w->kind) && w->n_dims == 2 && t->role != ANVIL_STORED_PERM,
          ANVIL_ERR_INTERNAL, "rtn: '%s' is not a quantized matrix or its scales", t->name);
    const int64_t k = w->shape[1], group = w->q.group ? w->q.group : k, g = k / group;
    const size_t rb = row_bytes(t, k, g);
    const int64_t block = (int64_t)(VALUES_BYTES / sizeof(float)) / k; /* rows of values read at once */
    CHECK(block >= 1 && rb > 0, ANVIL_ERR_UNSUPPORTED, "rtn: rows of %lld columns are too long", (long long)k);
    float *vals = anvil_build_scratch_rows(sc, VALUES_BYTES + (size_t)k + (size_t)g * 5 + 64);
    CHECK(vals != NULL, ANVIL_ERR_OOM, "out of memory for the quantizer's rows");
    uint8_t *q = (uint8_t *)vals + VALUES_BYTES;
    float *scales = (float *)(q + ((size_t)k + 63) / 64 * 64);
    uint8_t *zeros = (uint8_t *)(scales + g);
    const int64_t r0 = (int64_t)(offset / rb), r1 = (int64_t)((offset + len + rb - 1) / rb);
    for (int64_t r = r0; r < r1; r += block) {
        const int64_t m = r1 - r < block ? r1 - r : block;
        TRY(anvil_build_values(p, net, ck, ws, r * k, (r + m) * k, vals, sc));
        const int64_t bad = anvil_find_nonfinite(ANVIL_DTYPE_F32, vals, m * k);
        if (bad >= 0) {
            int64_t at;
            const int32_t wi = anvil_build_member_at(p, ws, r * k + bad, &at);
            return ANVIL_FAIL(ANVIL_ERR_FORMAT, "tensor '%s' holds a NaN or infinity at element %lld: the checkpoint is damaged",
                              anvil_network_weight(net, wi)->name, (long long)at);
        }
        for (int64_t i = 0; i < m; i++) {
            if (before != NULL)
                before(p, ws, r + i, vals + i * k, k);
            anvil_rtn_row(w->kind, w->q.group, vals + i * k, k, q, scales, zeros);
            const void *out = t->role == ANVIL_STORED_WEIGHT ? (const void *)q
                              : t->role == ANVIL_STORED_SCALES ? (const void *)scales
                                                               : (const void *)zeros;
            /* the part of this row's bytes [a, b) inside the chunk */
            const size_t a = (size_t)(r + i) * rb, b = a + rb;
            const size_t lo = a > offset ? a : offset, hi = b < offset + len ? b : offset + len;
            if (lo < hi)
                memcpy((char *)dst + (lo - offset), (const char *)out + (lo - a), hi - lo);
        }
    }
    return ANVIL_OK;
}

static anvil_status rtn_fill(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                             int32_t s, size_t offset, void *dst, size_t len, anvil_build_scratch *sc)
{
    return anvil_quant_fill(p, net, ck, s, offset, dst, len, sc, NULL);
}

const anvil_stored_converter anvil_rtn_converter = {.method = "rtn", .fill = rtn_fill};
