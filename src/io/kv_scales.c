/* A checkpoint's per-layer KV cache scales (kv_scales.h). */
#include "io/kv_scales.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "anvil/dtype.h"
#include "core/error.h"

anvil_status anvil_kv_scale_check(float s, const char *what)
{
    CHECK(isfinite(s) && s > 0.0f, ANVIL_ERR_FORMAT,
          "%s is %g; a KV cache scale must be finite and > 0 (the cache holds k / k_scale)", what, (double)s);
    return ANVIL_OK;
}

/* One scale tensor's value: one element of f32, bf16 or f16, checked. */
static anvil_status read_scale(const anvil_st_tensor *t, float *out)
{
    int64_t n = 1;
    for (int d = 0; d < t->n_dims; d++)
        n *= t->shape[d];
    CHECK(n == 1 && t->n_dims <= 1, ANVIL_ERR_FORMAT,
          "KV cache scale '%s' has %d dimensions and %lld elements; expected a scalar or [1]", t->name, t->n_dims,
          (long long)n);
    unsigned char b[4] = {0};
    const size_t sz = anvil_dtype_size(t->dtype);
    CHECK(t->dtype == ANVIL_DTYPE_F32 || t->dtype == ANVIL_DTYPE_BF16 || t->dtype == ANVIL_DTYPE_F16,
          ANVIL_ERR_FORMAT, "KV cache scale '%s' is %s; expected f32, bf16 or f16", t->name,
          anvil_dtype_name(t->dtype));
    TRY(anvil_st_read(t, 0, b, sz));
    float v;
    uint16_t h;
    memcpy(&h, b, sizeof h);
    if (t->dtype == ANVIL_DTYPE_F32)
        memcpy(&v, b, sizeof v);
    else
        v = t->dtype == ANVIL_DTYPE_BF16 ? anvil_bf16_to_f32(h) : anvil_f16_to_f32(h);
    char what[300];
    snprintf(what, sizeof what, "KV cache scale '%s'", t->name);
    TRY(anvil_kv_scale_check(v, what));
    *out = v;
    return ANVIL_OK;
}

static const anvil_st_tensor *find_layer(const anvil_checkpoint *ck, int32_t l, const char *suffix)
{
    char name[160];
    snprintf(name, sizeof name, "model.layers.%d.self_attn.%s", (int)l, suffix);
    return anvil_checkpoint_find(ck, name);
}

/* Layer l's two scales; *has 0 when the checkpoint has none for it. */
static anvil_status read_layer(const anvil_checkpoint *ck, int32_t l, float *ks, float *vs, int *has)
{
    *has = 0;
    const anvil_st_tensor *k = find_layer(ck, l, "k_scale"), *v = find_layer(ck, l, "v_scale");
    if (!k && !v) {
        k = find_layer(ck, l, "k_proj.k_scale");
        v = find_layer(ck, l, "v_proj.v_scale");
    }
    if (!k && !v) {
        const anvil_st_tensor *kv = find_layer(ck, l, "kv_scale");
        if (!kv)
            return ANVIL_OK;
        TRY(read_scale(kv, ks));
        *vs = *ks;
        *has = 1;
        return ANVIL_OK;
    }
    CHECK(k && v, ANVIL_ERR_FORMAT, "layer %d has a KV cache scale '%s' but no %s scale beside it", (int)l,
          (k ? k : v)->name, k ? "v" : "k");
    TRY(read_scale(k, ks));
    TRY(read_scale(v, vs));
    *has = 1;
    return ANVIL_OK;
}

anvil_status anvil_kv_scales_read(const anvil_checkpoint *ck, int declared, const char *what, int32_t n_layers,
                                  float *scales, int *found)
{
    *found = 0;
    int32_t first_with = -1, first_without = -1;
    for (int32_t l = 0; l < n_layers; l++) {
        float ks = 1.0f, vs = 1.0f;
        int has;
        anvil_status st = read_layer(ck, l, &ks, &vs, &has);
        if (st != ANVIL_OK)
            return anvil_error_wrap("%s", what);
        if (has) {
            if (first_with < 0)
                first_with = l;
            scales[2 * l] = ks;
            scales[2 * l + 1] = vs;
        } else if (first_without < 0) {
            first_without = l;
        }
    }
    CHECK(first_with < 0 || first_without < 0, ANVIL_ERR_FORMAT,
          "%s: layer %d has KV cache scales (self_attn.k_scale / v_scale) but layer %d has none; a checkpoint "
          "gives them for every layer or for none",
          what, (int)first_with, (int)first_without);
    CHECK(first_with >= 0 || !declared || n_layers == 0, ANVIL_ERR_FORMAT,
          "%s: the quantization config declares an fp8 KV cache (kv_cache_scheme / kv_cache_quant_algo) but the "
          "checkpoint has no KV cache scales (model.layers.0.self_attn.k_scale and v_scale, or k_proj.k_scale "
          "and v_proj.v_scale, or kv_scale)",
          what);
    *found = first_with >= 0;
    return ANVIL_OK;
}
