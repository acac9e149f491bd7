/* Random weights for benchmarks (random_model.c): the same values whether
 * they go to a safetensors folder or an engine file. */
#ifndef ANVIL_BUILDER_RANDOM_WEIGHTS_H
#define ANVIL_BUILDER_RANDOM_WEIGHTS_H

#include <stdint.h>

#include "anvil/network.h"

/* Elements [first, first + n) of network weight `weight` into out: 1 for a
 * norm's weight (its name holds "norm"), else uniform with standard
 * deviation 0.02 (as HF initializes), a function of (seed, weight, element)
 * alone. */
void anvil_random_weights(const anvil_network *net, int32_t weight, uint64_t seed, int64_t first, int64_t n,
                          float *out);

#endif
