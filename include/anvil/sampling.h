/*
 * anvil/sampling.h: choosing the next token from logits.
 *
 * One set of sampling numbers, anvil_sampling_params, serves everywhere:
 * anvil_generate_params.sampling, anvil_request.sampling (the executor),
 * anvil_sample_row.sampling (anvil_runtime_forward_sample) and the
 * backends' sample op. The sampler (src/sampler/) is arithmetic on one
 * logits row and nothing else; the runtime, both backends and the executor
 * use it, and the CUDA sampler is tested against it row by row.
 *
 * Order of the transforms, as in Hugging Face generate() and vLLM:
 * temperature, min-p, top-k, top-p, then one uniform draw. Temperature 0
 * (or top_k 1) means greedy: the first index of the largest logit. The
 * generator is xoshiro256** seeded through splitmix64: the same seed gives
 * the same tokens.
 *
 *     anvil_sampling_params p;
 *     anvil_sampling_params_default(&p);
 *     p.temperature = 0.8f; p.top_p = 0.95f; p.seed = 42;
 *     anvil_sampler *s; anvil_rng rng;
 *     anvil_sampler_create(n_vocab, &s);
 *     anvil_rng_seed(&rng, p.seed);
 *     int32_t tok = anvil_sampler_sample(s, logits, &p, &rng); // -1: a poisoned row
 *     anvil_sampler_free(s);
 *
 * Thread safety: an anvil_sampler is scratch memory for one thread at a
 * time; the rest is pure functions.
 */
#ifndef ANVIL_SAMPLING_H
#define ANVIL_SAMPLING_H

#include <stdint.h>

#include "anvil/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How one token is chosen from a row of logits. */
typedef struct anvil_sampling_params {
    float temperature;  /* >= 0, finite; 0: greedy. Default 1 */
    int32_t top_k;      /* keep the k most likely; 0 (or -1): off. 1: greedy */
    float top_p;        /* (0, 1]: keep the smallest set whose probability reaches top_p; 1: off */
    float min_p;        /* [0, 1]: drop tokens less likely than min_p times the most likely; 0: off */
    uint64_t seed;      /* the generator's seed (where a caller seeds one: anvil_generate, and the
                           executor with anvil_request.has_seed); the sampler itself draws from the
                           anvil_rng it is given */
} anvil_sampling_params;

/* temperature 1, top_k 0, top_p 1, min_p 0, seed 0 */
void anvil_sampling_params_default(anvil_sampling_params *p);

/* Checks ranges: temperature finite and >= 0, top_k >= -1, 0 < top_p <= 1,
 * 0 <= min_p <= 1; ANVIL_ERR_INVALID_ARG naming the first bad one. */
anvil_status anvil_sampling_params_check(const anvil_sampling_params *p);

/* Whether p picks greedily (temperature 0 or top_k 1): no draw is used. */
int anvil_sampling_is_greedy(const anvil_sampling_params *p);

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

/*
 * Picks a token from logits [n_vocab] (not modified) with p (p->seed is
 * not used: rng is the generator). Greedy parameters give the first index
 * of the largest logit and draw nothing. Otherwise: logits divided by the
 * temperature; min-p drops tokens whose probability is below min_p times
 * the largest; top-k keeps the k largest; top-p the smallest prefix (in the
 * order "logit descending, then id ascending") whose mass reaches top_p;
 * one uniform from rng picks among the survivors. Tokens whose logit is
 * -inf are never chosen. A row that holds a NaN or +inf, or no logit above
 * -inf, gives -1 and draws nothing (a damaged model: the caller ends the
 * request with an error).
 */
int32_t anvil_sampler_sample(anvil_sampler *s, const float *logits, const anvil_sampling_params *p,
                             anvil_rng *rng);

/* The first index of the largest value. */
int32_t anvil_argmax(const float *x, int32_t n);

/* Greedy decoding's pick: anvil_argmax, or -1 when the row holds a NaN or
 * +inf or no value above -inf (the logits of a damaged model). */
int32_t anvil_greedy_pick(const float *x, int32_t n);

/* ---- The executor's per-request suite: penalties, bias, logprobs. */

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
