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

/* Greedy decoding's pick: anvil_argmax, or -1 when the row holds a NaN or
 * +inf or no value above -inf (the logits of a damaged model). */
int32_t anvil_greedy_pick(const float *x, int32_t n);

/* ---- The executor's per-request suite: min-p, penalties, bias, logprobs. */

/* A bias added to one token's logit (OpenAI logit_bias). */
typedef struct anvil_logit_bias {
    int32_t token;
    float bias;
} anvil_logit_bias;

/* A token and its log-probability. */
typedef struct anvil_token_logprob {
    int32_t token;
    float logprob;
} anvil_token_logprob;

/*
 * Logit processors that depend on the sequence so far, applied in this
 * order (vLLM's): tokens in `masked` set to -inf (end tokens before
 * min_tokens), logit bias added, repetition penalty (Hugging Face: every
 * distinct token of prompt + generated has its logit divided by the penalty
 * when positive, multiplied when negative), then frequency and presence
 * penalties (OpenAI: logit -= frequency * count + presence * (count > 0),
 * counting generated tokens only). Neutral values: penalty 1, 0, 0.
 */
typedef struct anvil_logits_processors {
    float repetition_penalty;
    float presence_penalty;
    float frequency_penalty;
    const anvil_logit_bias *bias;
    int32_t n_bias;
    const int32_t *masked;
    int32_t n_masked;
} anvil_logits_processors;

/* Applies p to logits [n_vocab] in place; ids outside the vocabulary are
 * ignored. The sampler s (of n_vocab entries) lends its scratch. */
void anvil_logits_apply(anvil_sampler *s, const anvil_logits_processors *p, float *logits, const int32_t *prompt,
                        int32_t n_prompt, const int32_t *generated, int32_t n_generated);

/*
 * anvil_sampler_sample with min-p: after temperature, tokens whose
 * probability is below min_p times the largest are dropped, then top-k and
 * top-p as before. Tokens whose logit is -inf are never chosen. A row that
 * holds a NaN or +inf, or no logit above -inf, gives -1 and draws nothing
 * (a damaged model: the caller ends the request with an error). With
 * min_p 0 and finite logits it draws exactly what anvil_sampler_sample
 * draws from the same RNG state.
 */
int32_t anvil_sampler_sample_min_p(anvil_sampler *s, const float *logits, const anvil_sampling_params *p, float min_p,
                                   anvil_rng *rng);

/*
 * The token anvil_sampler_sample_min_p picks when its draw is u: the same
 * steps with the min-p threshold given as log_min_p = logf(min_p) (or
 * -INFINITY for none) and the uniform u in [0, 1) (what anvil_rng_uniform
 * returned) given instead of drawn. Greedy parameters (temperature 0, top_k
 * 1) ignore u. A row with a NaN or +inf, or no logit above -inf, gives -1,
 * greedy or not. For backends that sample on their device: they mirror
 * this, and the CPU backend calls it.
 */
int32_t anvil_sampler_pick(anvil_sampler *s, const float *logits, const anvil_sampling_params *p, float log_min_p,
                           double u);

/* out[i] = x[i] - log(sum_j exp(x[j])), in float with a max shift, as
 * torch.log_softmax does; out may be x. */
void anvil_log_softmax(const float *x, float *out, int32_t n);

/* The k largest values of lp [n_vocab] with their ids, best first, ties
 * broken by the lower id. k <= n_vocab. */
void anvil_top_logprobs(anvil_sampler *s, const float *lp, int32_t k, anvil_token_logprob *out);

#ifdef __cplusplus
}
#endif
#endif
