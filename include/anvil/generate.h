/*
 * anvil/generate.h: one sequence, generated token by token on a runtime.
 *
 * The simple path used by `anvil run` and the golden tests. It is the
 * executor's path (anvil/executor.h), not a second one: anvil_generate
 * runs the prompt as one request on an executor over the runtime, whose
 * scheduler prefills (in chunks of max_num_tokens) and decodes, and which
 * ends the sequence at an end-of-sequence token, max_tokens or the context,
 * or when the callback asks to stop. Batching many sequences is the
 * executor's job.
 *
 *     anvil_generate_params p = {.max_tokens = 64};
 *     anvil_sampling_params_default(&p.sampling);
 *     p.sampling.temperature = 0.8f; p.sampling.seed = 42;
 *     int32_t out[64], n_out;
 *     anvil_finish_reason why;
 *     if (anvil_generate(rt, prompt, n_prompt, &p, NULL, NULL, out, &n_out, &why) != ANVIL_OK)
 *         fprintf(stderr, "%s\n", anvil_last_error());
 */
#ifndef ANVIL_GENERATE_H
#define ANVIL_GENERATE_H

#include <stdint.h>

#include "anvil/runtime.h"
#include "anvil/sampling.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum anvil_finish_reason {
    ANVIL_FINISH_NONE = 0,
    ANVIL_FINISH_STOP,     /* an end-of-sequence token, or the callback stopped it */
    ANVIL_FINISH_LENGTH,   /* max_tokens or the context limit */
} anvil_finish_reason;

typedef struct anvil_generate_params {
    anvil_sampling_params sampling; /* as anvil_request.sampling; sampling.seed seeds the generator */
    int32_t max_tokens;    /* new tokens at most (0: none) */
    int ignore_eos;        /* keep going past end-of-sequence tokens */
} anvil_generate_params;

/* Called with each new token; return non-zero to stop after it. */
typedef int (*anvil_token_fn)(void *user, int32_t token);

/*
 * Generates up to params->max_tokens tokens after prompt, and at most as
 * many as the context leaves (prompt + generated <= max_seq_len). out_ids
 * (capacity max_tokens) receives them, *n_out their count; the
 * end-of-sequence token that stopped generation is included. on_token (may
 * be NULL) sees every token as it comes, on the calling thread, between two
 * steps (it may use the runtime, e.g. refit it); a nonzero return stops
 * generation after that token (finish STOP). The tokens are the executor's
 * for the same request (anvil_request with sampling = params->sampling,
 * has_seed 1, max_tokens, ignore_eos). Arguments the executor refuses
 * (an empty prompt, one that fills the context, a token outside the
 * vocabulary, a bad parameter) return its status and message; a damaged
 * model's non-finite logits ANVIL_ERR_FORMAT, the tokens before them in
 * out_ids. The runtime is used by the calling thread only, for the call:
 * its free KV blocks are taken and given back before returning.
 */
anvil_status anvil_generate(anvil_runtime *rt, const int32_t *prompt, int32_t n_prompt,
                            const anvil_generate_params *params, anvil_token_fn on_token, void *user,
                            int32_t *out_ids, int32_t *n_out, anvil_finish_reason *finish);

#ifdef __cplusplus
}
#endif
#endif
