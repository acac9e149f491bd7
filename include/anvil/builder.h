/*
 * anvil/builder.h: making models and engines.
 *
 * For now: a model folder with random weights from a config alone, so that
 * benchmarks can run at the shape of a real model (Llama-3-8B, 3.2-1B, ...)
 * without downloading it.
 */
#ifndef ANVIL_BUILDER_H
#define ANVIL_BUILDER_H

#include <stdint.h>

#include "anvil/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Writes dir/config.json (config_json, an HF config text) and
 * dir/model.safetensors holding every weight the architecture needs, in the
 * config's dtype: norm weights 1, other weights uniform with standard
 * deviation 0.02 (as HF initializes them), from seed. dir must exist.
 */
anvil_status anvil_write_random_model(const char *dir, const char *config_json, uint64_t seed);

#ifdef __cplusplus
}
#endif
#endif
