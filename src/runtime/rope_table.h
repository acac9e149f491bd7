#ifndef ANVIL_RUNTIME_ROPE_TABLE_H
#define ANVIL_RUNTIME_ROPE_TABLE_H

#include "anvil/model_config.h"

/* Writes the head_dim / 2 inverse frequencies of rope into out. */
anvil_status anvil_rope_inv_freq(const anvil_rope_config *rope, int64_t head_dim, float *out);

#endif
