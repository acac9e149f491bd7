/*
 * anvil/generate.h: one sequence, generated token by token on a runtime.
 *
 * The simple path used by `anvil run` and the golden tests: prefill the
 * prompt (in chunks of max_num_tokens), then sample one token per step until
 * an end-of-sequence token, max_tokens, the context limit, or the callback
 * asks to stop. Batching many sequences is the executor's job.
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
    anvil_sampling_params sampling;
    int32_t max_tokens;    /* new tokens at most */
    int ignore_eos;        /* keep going past end-of-sequence tokens */
} anvil_generate_params;

/* Called with each new token; return non-zero to stop after it. */
typedef int (*anvil_token_fn)(void *user, int32_t token);

/*
 * Generates up to params->max_tokens tokens after prompt. out_ids (capacity
 * max_tokens) receives them, *n_out their count; the end-of-sequence token
 * that stopped generation is included. KV blocks are taken from the
 * runtime's pool and given back before returning.
 */
anvil_status anvil_generate(anvil_runtime *rt, const int32_t *prompt, int32_t n_prompt,
                            const anvil_generate_params *params, anvil_token_fn on_token, void *user,
                            int32_t *out_ids, int32_t *n_out, anvil_finish_reason *finish);

#ifdef __cplusplus
}
#endif
#endif
