#include "fusion_check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/sampling.h"
#include "core/error.h"

#define FC_SEQS       3
#define FC_BLOCK      8
#define FC_MAX_BLOCKS 8

static void compare_rows(const float *a, const float *b, int rows, int64_t vocab, fusion_diff *d)
{
    for (int r = 0; r < rows; r++) {
        const float *x = a + (size_t)r * (size_t)vocab, *y = b + (size_t)r * (size_t)vocab;
        for (int64_t j = 0; j < vocab; j++) {
            const double e = fabs((double)x[j] - (double)y[j]);
            if (e > d->max_abs || isnan(e))
                d->max_abs = isnan(e) ? INFINITY : e;
            if (fabs((double)y[j]) > d->max_logit)
                d->max_logit = fabs((double)y[j]);
        }
        d->greedy_differ += anvil_argmax(x, (int32_t)vocab) != anvil_argmax(y, (int32_t)vocab);
        d->rows++;
    }
}

anvil_status fusion_compare(const char *model_dir, const anvil_runtime_options *opts, int decode_steps,
                            fusion_diff *d)
{
    memset(d, 0, sizeof *d);
    anvil_status st = ANVIL_OK;
    CHECK(decode_steps >= 0 && 17 + decode_steps <= FC_MAX_BLOCKS * FC_BLOCK, ANVIL_ERR_INVALID_ARG,
          "fusion_compare: %d decode steps", decode_steps);
    anvil_runtime *rt[2] = {NULL, NULL};
    float *lg[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        anvil_runtime_options o = *opts;
        o.no_fusion = i;
        o.kv_block_size = FC_BLOCK;
        o.kv_cache_tokens = FC_SEQS * FC_MAX_BLOCKS * FC_BLOCK;
        o.max_seq_len = FC_MAX_BLOCKS * FC_BLOCK;
        o.max_num_tokens = 64;
        o.max_batch_size = FC_SEQS;
        o.max_logit_rows = FC_SEQS;
        TRY_GOTO(anvil_runtime_load(model_dir, &o, &rt[i]), done);
    }
    const int64_t vocab = anvil_runtime_config(rt[0])->vocab_size;
    for (int i = 0; i < 2; i++) {
        lg[i] = malloc((size_t)FC_SEQS * (size_t)vocab * sizeof(float));
        CHECK_GOTO(lg[i] != NULL, ANVIL_ERR_OOM, done, "out of memory");
    }
    /* prompts of 5, 11 and 17 tokens; sequence s owns blocks s, s + 3, s + 6, ... (scattered) */
    const int32_t lens[FC_SEQS] = {5, 11, 17};
    int32_t ids[64], pos[64], starts[FC_SEQS + 1], tables[FC_SEQS * FC_MAX_BLOCKS], rows[FC_SEQS];
    int32_t next[FC_SEQS], ctx[FC_SEQS];
    uint64_t seed = 12345;
    int n = 0;
    starts[0] = 0;
    for (int s = 0; s < FC_SEQS; s++) {
        for (int b = 0; b < FC_MAX_BLOCKS; b++)
            tables[s * FC_MAX_BLOCKS + b] = s + FC_SEQS * b;
        for (int t = 0; t < lens[s]; t++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            ids[n] = t == 0 ? 1 : (int32_t)((seed >> 33) % (uint64_t)vocab);
            pos[n++] = t;
        }
        starts[s + 1] = n;
        rows[s] = n - 1;
        ctx[s] = lens[s];
    }
    anvil_batch b = {.n_tokens = n,
                     .token_ids = ids,
                     .positions = pos,
                     .n_seqs = FC_SEQS,
                     .seq_starts = starts,
                     .block_tables = tables,
                     .max_blocks_per_seq = FC_MAX_BLOCKS,
                     .n_logits = FC_SEQS,
                     .logit_rows = rows};
    for (int step = 0; step <= decode_steps; step++) {
        for (int i = 0; i < 2; i++)
            TRY_GOTO(anvil_runtime_forward(rt[i], &b, lg[i]), done);
        compare_rows(lg[0], lg[1], FC_SEQS, vocab, d);
        for (int s = 0; s < FC_SEQS; s++) {
            next[s] = anvil_argmax(lg[1] + (size_t)s * (size_t)vocab, (int32_t)vocab);
            ids[s] = next[s];
            pos[s] = ctx[s]++;
            starts[s + 1] = s + 1;
            rows[s] = s;
        }
        b.n_tokens = FC_SEQS;
    }
done:
    for (int i = 0; i < 2; i++) {
        anvil_runtime_free(rt[i]);
        free(lg[i]);
    }
    return st;
}
