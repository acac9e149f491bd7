#include "anvil/generate.h"

#include <stdlib.h>

#include "core/error.h"

static int is_eos(const anvil_model_config *cfg, int32_t id)
{
    for (int i = 0; i < cfg->n_eos_token_ids; i++)
        if (cfg->eos_token_ids[i] == id)
            return 1;
    return 0;
}

/* A row of logits with a NaN or +inf, or none finite (the sampler's -1):
 * the model is damaged (poisoned weights, absurd RoPE parameters); the
 * request ends rather than emitting garbage. */
#define NONFINITE_MSG "the model produced non-finite logits (NaN or infinity) for generated token %d: its weights or config are damaged"

anvil_status anvil_generate(anvil_runtime *rt, const int32_t *prompt, int32_t n_prompt,
                            const anvil_generate_params *params, anvil_token_fn on_token, void *user,
                            int32_t *out_ids, int32_t *n_out, anvil_finish_reason *finish)
{
    *n_out = 0;
    if (finish)
        *finish = ANVIL_FINISH_NONE;
    const anvil_model_config *cfg = anvil_runtime_config(rt);
    const anvil_runtime_options *o = anvil_runtime_options_get(rt);
    CHECK(n_prompt > 0 && prompt != NULL, ANVIL_ERR_INVALID_ARG, "the prompt is empty");
    CHECK(params->max_tokens >= 0, ANVIL_ERR_INVALID_ARG, "max_tokens must be >= 0");
    TRY(anvil_sampling_params_check(&params->sampling));
    CHECK(n_prompt < o->max_seq_len, ANVIL_ERR_CAPACITY, "the prompt has %d tokens; the context holds %d",
          n_prompt, o->max_seq_len);

    const int32_t bs = anvil_runtime_kv_block_size(rt);
    int64_t total = (int64_t)n_prompt + params->max_tokens;
    if (total > o->max_seq_len)
        total = o->max_seq_len;
    const int32_t n_blocks = (int32_t)((total + bs - 1) / bs);

    anvil_status st = ANVIL_OK;
    int32_t *blocks = malloc((size_t)n_blocks * sizeof *blocks);
    int32_t *pos = malloc((size_t)o->max_num_tokens * sizeof *pos);
    int have_blocks = 0;
    CHECK_GOTO(blocks && pos, ANVIL_ERR_OOM, done, "out of memory");
    TRY_GOTO(anvil_runtime_kv_alloc(rt, n_blocks, blocks), done);
    have_blocks = 1;

    /* each token is sampled where the logits are (anvil_runtime_forward_sample:
     * on a GPU only the id comes back), drawing from rng as
     * anvil_sampler_sample would (the same token for finite logits) */
    anvil_rng rng;
    anvil_rng_seed(&rng, params->sampling.seed);
    const anvil_sample_row how = {
        .temperature = params->sampling.temperature, .top_k = params->sampling.top_k,
        .top_p = params->sampling.top_p, .min_p = 0.0f, .rng = &rng,
    };
    int32_t tok = 0;
    int32_t starts[2] = {0, 0};
    /* prefill in chunks; only the last chunk's last row is sampled (when a
     * token is wanted at all) */
    for (int32_t done_tokens = 0; done_tokens < n_prompt;) {
        int32_t n = n_prompt - done_tokens < o->max_num_tokens ? n_prompt - done_tokens : o->max_num_tokens;
        for (int32_t i = 0; i < n; i++)
            pos[i] = done_tokens + i;
        int last = done_tokens + n == n_prompt && params->max_tokens > 0;
        int32_t row = n - 1;
        starts[1] = n;
        anvil_batch b = {
            .n_tokens = n, .token_ids = prompt + done_tokens, .positions = pos,
            .n_seqs = 1, .seq_starts = starts, .block_tables = blocks, .max_blocks_per_seq = n_blocks,
            .n_logits = last ? 1 : 0, .logit_rows = &row,
        };
        TRY_GOTO(anvil_runtime_forward_sample(rt, &b, &how, &tok), done);
        CHECK_GOTO(!last || tok >= 0, ANVIL_ERR_FORMAT, done, NONFINITE_MSG, 1);
        done_tokens += n;
    }

    anvil_finish_reason why = ANVIL_FINISH_LENGTH;
    int32_t cur = n_prompt; /* position of the next token */
    while (*n_out < params->max_tokens) {
        out_ids[(*n_out)++] = tok;
        int stop = on_token ? on_token(user, tok) : 0;
        if ((!params->ignore_eos && is_eos(cfg, tok)) || stop) {
            why = ANVIL_FINISH_STOP;
            break;
        }
        if (*n_out == params->max_tokens || cur >= total)
            break; /* no room for another step */
        int32_t row = 0, in = tok;
        starts[1] = 1;
        anvil_batch b = {
            .n_tokens = 1, .token_ids = &in, .positions = &cur,
            .n_seqs = 1, .seq_starts = starts, .block_tables = blocks, .max_blocks_per_seq = n_blocks,
            .n_logits = 1, .logit_rows = &row,
        };
        TRY_GOTO(anvil_runtime_forward_sample(rt, &b, &how, &tok), done);
        CHECK_GOTO(tok >= 0, ANVIL_ERR_FORMAT, done, NONFINITE_MSG, *n_out + 1);
        cur++;
    }
    if (finish)
        *finish = why;
done:
    if (have_blocks)
        anvil_runtime_kv_release(rt, n_blocks, blocks);
    free(blocks);
    free(pos);
    return st;
}
