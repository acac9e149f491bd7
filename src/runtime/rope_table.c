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
 * logit, into NaN or noise without a word. */
static anvil_status check_table(const anvil_rope_config *rope, int64_t half, const float *out)
{
    for (int64_t i = 0; i < half; i++)
        CHECK(isfinite(out[i]) && out[i] > 0.0f && out[i] <= 1.0f + 1e-6f, ANVIL_ERR_FORMAT,
              "rope: inverse frequency %lld is %g (rope_theta %g, factor %g): the RoPE parameters are out of "
              "range",
              (long long)i, (double)out[i], rope->theta, rope->factor);
    return ANVIL_OK;
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
    }
    return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "rope: unknown scaling type %d", (int)rope->type);
}
