/*
 * anvil/sampling.h: choosing the next token from logits.
 *
 * Order of the transforms, as in Hugging Face generate() and vLLM:
 * temperature, then top-k, then top-p. Temperature 0 means greedy (the
 * first index of the largest logit). The generator is xoshiro256** seeded
 * through splitmix64: the same seed gives the same tokens.
 */
#ifndef ANVIL_SAMPLING_H
#define ANVIL_SAMPLING_H

#include <stdint.h>

#include "anvil/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct anvil_sampling_params {
    float temperature;  /* 0: greedy */
    int32_t top_k;      /* 0: off */
    float top_p;        /* 1: off */
    uint64_t seed;
} anvil_sampling_params;

/* temperature 1, top_k 0, top_p 1, seed 0 */
void anvil_sampling_params_default(anvil_sampling_params *p);

/* Checks ranges: temperature >= 0, top_k >= 0, 0 < top_p <= 1. */
anvil_status anvil_sampling_params_check(const anvil_sampling_params *p);

typedef struct anvil_rng {
    uint64_t s[4];
} anvil_rng;

void anvil_rng_seed(anvil_rng *rng, uint64_t seed);
uint64_t anvil_rng_next(anvil_rng *rng);
/* Uniform in [0, 1) with 53 random bits. */
double anvil_rng_uniform(anvil_rng *rng);

typedef struct anvil_sampler anvil_sampler;

/* Scratch for a vocabulary of n_vocab entries. *out NULL on failure. */
anvil_status anvil_sampler_create(int32_t n_vocab, anvil_sampler **out);
void anvil_sampler_free(anvil_sampler *s);

/* Picks a token from logits [n_vocab] (not modified). Draws from rng only
 * when sampling (temperature > 0). */
int32_t anvil_sampler_sample(anvil_sampler *s, const float *logits, const anvil_sampling_params *p,
                             anvil_rng *rng);

/* The first index of the largest value. */
int32_t anvil_argmax(const float *x, int32_t n);

#ifdef __cplusplus
}
#endif
#endif
