#ifndef ANVIL_RUNTIME_ROPE_TABLE_H
#define ANVIL_RUNTIME_ROPE_TABLE_H

#include "anvil/model_config.h"

/* Writes the head_dim / 2 inverse frequencies of rope into out (LongRoPE:
 * those of its short factors). */
anvil_status anvil_rope_inv_freq(const anvil_rope_config *rope, int64_t head_dim, float *out);

/*
 * Everything a rope op needs (backend.h's anvil_rope_freqs, before its
 * tables are uploaded): table[0, head_dim / 2) as anvil_rope_inv_freq
 * writes it and, for LongRoPE, table[head_dim / 2, head_dim) the inverse
 * frequencies of its long factors (*n_tables 2; else 1). *long_after: the
 * sequence length above which the long table applies; *scale: what cos and
 * sin are multiplied by (1 but for LongRoPE).
 */
anvil_status anvil_rope_tables(const anvil_rope_config *rope, int64_t head_dim, float *table, int *n_tables,
                               int32_t *long_after, float *scale);

#endif
