/*
 * sampler/sampler.h: the sampler's internal seam, for the code that samples
 * somewhere else than anvil_sampler_sample does (a backend's sample op on
 * its device, the runtime that feeds it) and for the tests that hold a
 * device sampler to the host's.
 *
 * The sampler is a leaf: it depends on core alone, and the runtime, both
 * backends and the executor call it. The public half is anvil/sampling.h.
 *
 *     anvil_sample_draw d;
 *     anvil_sample_draw_make(&d, &params, anvil_sampling_is_greedy(&params) ? 0.0 : anvil_rng_uniform(&rng));
 *     int32_t tok = anvil_sampler_pick(s, logits, &d);   // what a device sampler must return
 *
 * A backend that samples on its device is given anvil_sample_draw rows
 * (their layout is shared with the device code) and uses the values the
 * host computed in them (greedy, inv_temperature, log_min_p, u) rather than
 * computing them again, so that its arithmetic starts from the host's.
 */
#ifndef ANVIL_SAMPLER_H
#define ANVIL_SAMPLER_H

#include <stdint.h>

#include "anvil/sampling.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * One row's pick, ready: its parameters and what the host derives from
 * them and from the generator, once. Built by anvil_sample_draw_make.
 */
typedef struct anvil_sample_draw {
    anvil_sampling_params sampling; /* the row's parameters (sampling.seed unused) */
    int32_t greedy;                 /* anvil_sampling_is_greedy: the argmax; the rest unused */
    float inv_temperature;          /* 1.0f / temperature in float, as the host divides (greedy: 0) */
    float log_min_p;                /* logf(min_p) with the host's libm; -INFINITY: no min-p */
    double u;                       /* the uniform draw in [0, 1) (anvil_rng_uniform); greedy: 0 */
} anvil_sample_draw;

/* Fills d from p and the draw u (ignored, stored as 0, for greedy p). */
void anvil_sample_draw_make(anvil_sample_draw *d, const anvil_sampling_params *p, double u);

/*
 * The token anvil_sampler_sample picks when its draw is d->u: the same
 * steps with d's values. Greedy rows ignore u. A row with a NaN or +inf, or
 * no logit above -inf, gives -1, greedy or not. The CPU backend's sample
 * op calls it; a device sampler must return the same token.
 */
int32_t anvil_sampler_pick(anvil_sampler *s, const float *logits, const anvil_sample_draw *d);

/*
 * anvil_sampler_pick, and how close its decisions came to going the other
 * way: *margin (not NULL) receives the smallest distance, relative to the
 * sum it was compared with, between top_p * sum (when top-p is on) or
 * u * sum and a running sum of the survivors' probabilities. INFINITY for
 * greedy and poisoned rows. A sampler that adds the same probabilities in
 * another order (the CUDA one sums in trees) may pick another token only
 * where the margin is within that order's rounding (~1e-12 relative for
 * double sums); the tests of device samplers allow exactly that.
 */
int32_t anvil_sampler_pick_margin(anvil_sampler *s, const float *logits, const anvil_sample_draw *d, double *margin);

/*
 * An allowed-token mask (anvil_sample_row.allowed: bit i % 32 of
 * allowed[i / 32] set = token i allowed; bits past n ignored) applied to
 * logits [n] in place: every disallowed token's logit becomes -inf.
 * Returns whether the mask allows any token of the n. The one home of
 * this loop: the executor's host path, the runtime's host sampling and the
 * CPU backend's sample op all mask with it (the CUDA op repeats it in a
 * kernel, tested against this).
 */
int anvil_sampler_mask(float *logits, int32_t n, const uint32_t *allowed);

#ifdef __cplusplus
}
#endif
#endif
