/*
 * RoPE inverse frequencies, computed in fp32 the way transformers computes
 * them (its rope init functions), so that angles match its to the last bit
 * where the float math allows.
 */
#include "runtime/rope_table.h"

#include <float.h>
#include <math.h>

#include "core/error.h"

/* Every inverse frequency in (0, 1], as theta >= 1 and factor >= 1 (the
 * config's bounds) make them: a theta or factor far outside those (a
 * config made by hand) would otherwise turn every angle, and so every
 * logit, into NaN or noise without a word. LongRoPE divides by factors
 * down to ANVIL_MIN_ROPE_EXT_FACTOR, so its frequencies reach 1 / that. */
static anvil_status check_table(const anvil_rope_config *rope, int64_t half, const float *out)
{
    const float hi = rope->type == ANVIL_ROPE_LONGROPE ? (float)(1.0 / ANVIL_MIN_ROPE_EXT_FACTOR) : 1.0f;
    for (int64_t i = 0; i < half; i++)
        CHECK(isfinite(out[i]) && out[i] > 0.0f && out[i] <= hi * (1.0f + 1e-6f), ANVIL_ERR_FORMAT,
              "rope: inverse frequency %lld is %g (rope_theta %g, factor %g): the RoPE parameters are out of "
              "range",
              (long long)i, (double)out[i], rope->theta, rope->factor);
    return ANVIL_OK;
}

/* LongRoPE's table of ext (short_factor or long_factor): transformers'
 * 1.0 / (ext_factors * base ** (arange(0, dim, 2).float() / dim)), all in
 * float32 as torch computes it, so that angles match its to the bit where
 * powf does. */
static anvil_status longrope_table(const anvil_rope_config *rope, int64_t head_dim, const float *ext, float *out)
{
    const int64_t half = head_dim / 2;
    CHECK(rope->n_ext_factors == half && half <= ANVIL_MAX_ROPE_EXT_FACTORS, ANVIL_ERR_FORMAT,
          "rope: longrope has %d factors, head_dim %lld needs %lld", rope->n_ext_factors, (long long)head_dim,
          (long long)half);
    const float base = (float)rope->theta;
    for (int64_t i = 0; i < half; i++) {
        CHECK(isfinite(ext[i]) && ext[i] > 0.0f, ANVIL_ERR_FORMAT, "rope: longrope factor %lld is %g",
              (long long)i, (double)ext[i]);
        out[i] = 1.0f / (ext[i] * powf(base, (float)(2 * i) / (float)head_dim));
    }
    return check_table(rope, half, out);
}

/* YaRN (transformers' _compute_yarn_parameters): the correction range in
 * double as Python computes it, the ramp and the blend in float32 as torch
 * does, one rounding per operation. */
static anvil_status yarn_table(const anvil_rope_config *rope, int64_t head_dim, float *out)
{
    const double dim = (double)head_dim, base = rope->theta, omax = (double)rope->original_max_position;
    CHECK(rope->factor > 0 && omax >= 1 && rope->beta_fast > 0 && rope->beta_slow > 0, ANVIL_ERR_FORMAT,
          "rope: yarn needs factor, original_max_position_embeddings, beta_fast and beta_slow > 0");
    double low = dim * log(omax / (rope->beta_fast * 2.0 * M_PI)) / (2.0 * log(base));
    double high = dim * log(omax / (rope->beta_slow * 2.0 * M_PI)) / (2.0 * log(base));
    if (rope->truncate) {
        low = floor(low);
        high = ceil(high);
    }
    low = low > 0.0 ? low : 0.0;
    high = high < dim - 1.0 ? high : dim - 1.0;
    if (low == high)
        high += 0.001; /* transformers: prevent a singularity */
    const float factor = (float)rope->factor, flo = (float)low, span = (float)(high - low);
    const int64_t half = head_dim / 2;
    for (int64_t i = 0; i < half; i++) {
        const float pos = powf((float)base, (float)(2 * i) / (float)head_dim);
        const float extra = 1.0f / pos, inter = 1.0f / (factor * pos);
        float ramp = ((float)i - flo) / span;
        ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
        const float ef = 1.0f - ramp; /* the extrapolation factor */
        out[i] = inter * (1.0f - ef) + extra * ef;
    }
    return check_table(rope, half, out);
}

anvil_status anvil_rope_inv_freq(const anvil_rope_config *rope, int64_t head_dim, float *out)
{
    CHECK(head_dim > 0 && head_dim % 2 == 0, ANVIL_ERR_INVALID_ARG, "rope: head_dim %lld must be even",
          (long long)head_dim);
    /* narrowed to float below, where a double out of float's range is undefined */
    CHECK(isfinite(rope->theta) && rope->theta > 0 && rope->theta <= FLT_MAX, ANVIL_ERR_FORMAT,
          "rope: theta %g is out of range", rope->theta);
    if (rope->type != ANVIL_ROPE_DEFAULT)
        CHECK(fabs(rope->factor) <= FLT_MAX && fabs(rope->low_freq_factor) <= FLT_MAX &&
                  fabs(rope->high_freq_factor) <= FLT_MAX,
              ANVIL_ERR_FORMAT, "rope: scaling factors %g, %g, %g are out of range", rope->factor,
              rope->low_freq_factor, rope->high_freq_factor);
    if (rope->type == ANVIL_ROPE_LONGROPE)
        return longrope_table(rope, head_dim, rope->short_factor, out);
    if (rope->type == ANVIL_ROPE_YARN)
        return yarn_table(rope, head_dim, out);
    const int64_t half = head_dim / 2;
    const float base = (float)rope->theta;
    for (int64_t i = 0; i < half; i++)
        out[i] = 1.0f / powf(base, (float)(2 * i) / (float)head_dim);

    switch (rope->type) {
    case ANVIL_ROPE_DEFAULT:
        return check_table(rope, half, out);
    case ANVIL_ROPE_LINEAR:
        CHECK(rope->factor > 0, ANVIL_ERR_FORMAT, "rope: linear scaling factor must be > 0");
        for (int64_t i = 0; i < half; i++)
            out[i] /= (float)rope->factor;
        return check_table(rope, half, out);
    case ANVIL_ROPE_LLAMA3: {
        const float factor = (float)rope->factor;
        const float low = (float)rope->low_freq_factor, high = (float)rope->high_freq_factor;
        const float old_ctx = (float)rope->original_max_position;
        CHECK(factor > 0 && low > 0 && high > low && old_ctx > 0, ANVIL_ERR_FORMAT,
              "rope: llama3 scaling needs factor > 0 and high_freq_factor > low_freq_factor > 0");
        const float low_wavelen = old_ctx / low;
        const float high_wavelen = old_ctx / high;
        for (int64_t i = 0; i < half; i++) {
            const float f = out[i];
            const float wavelen = 2.0f * (float)M_PI / f;
            if (wavelen > low_wavelen) {
                out[i] = f / factor; /* low frequencies: fully scaled */
            } else if (wavelen >= high_wavelen) {
                /* medium: interpolate between scaled and unscaled */
                const float smooth = (old_ctx / wavelen - low) / (high - low);
                out[i] = (1.0f - smooth) * f / factor + smooth * f;
            }
            /* high frequencies stay as they are */
        }
        return check_table(rope, half, out);
    }
    case ANVIL_ROPE_LONGROPE:
    case ANVIL_ROPE_YARN:
        break; /* above */
    }
    return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "rope: unknown scaling type %d", (int)rope->type);
}

anvil_status anvil_rope_tables(const anvil_rope_config *rope, int64_t head_dim, float *table, int *n_tables,
                               int32_t *long_after, float *scale)
{
    *n_tables = 1;
    *long_after = 0;
    *scale = 1.0f;
    TRY(anvil_rope_inv_freq(rope, head_dim, table));
    if (rope->type == ANVIL_ROPE_YARN) {
        CHECK(isfinite(rope->attention_factor) && rope->attention_factor >= ANVIL_MIN_ROPE_ATTENTION_FACTOR &&
                  rope->attention_factor <= ANVIL_MAX_ROPE_ATTENTION_FACTOR,
              ANVIL_ERR_FORMAT, "rope: yarn attention_factor %g is out of range", rope->attention_factor);
        *scale = (float)rope->attention_factor;
        return ANVIL_OK;
    }
    if (rope->type != ANVIL_ROPE_LONGROPE)
        return ANVIL_OK;
    /* the config's bounds, again for a config made by hand: the threshold
     * is compared with int32 sequence lengths, the factor reaches floats */
    CHECK(rope->original_max_position >= 1 && rope->original_max_position <= ANVIL_MAX_CONTEXT, ANVIL_ERR_FORMAT,
          "rope: longrope original_max_position_embeddings %lld is out of range",
          (long long)rope->original_max_position);
    CHECK(isfinite(rope->attention_factor) && rope->attention_factor >= ANVIL_MIN_ROPE_ATTENTION_FACTOR &&
              rope->attention_factor <= ANVIL_MAX_ROPE_ATTENTION_FACTOR,
          ANVIL_ERR_FORMAT, "rope: longrope attention_factor %g is out of range", rope->attention_factor);
    TRY(longrope_table(rope, head_dim, rope->long_factor, table + head_dim / 2));
    *n_tables = 2;
    *long_after = (int32_t)rope->original_max_position;
    *scale = (float)rope->attention_factor;
    return ANVIL_OK;
}
