/*
 * An engine's KV cache settings in its manifest (docs/engine.md, "kv_cache"):
 *
 *     "kv_cache": {"dtype": "fp8",            // what kv_cache_dtype auto means for it: "fp8" or "auto"
 *                  "scales": "checkpoint",    // where k_scale / v_scale came from: "checkpoint",
 *                                             //   "calibration" or "none" (then no arrays: 1.0)
 *                  "k_scale": [0.0123, ...],  // one per KV layer, finite and > 0
 *                  "v_scale": [0.0045, ...]}
 *
 * Written by anvil build (builder/build_engine.c) when the checkpoint has
 * scales or declares an fp8 KV cache, or when --kv-cache-dtype fp8 was
 * given; read back by the runtime at load. An engine without the object
 * runs as before (auto: no fp8; scales 1.0).
 */
#ifndef ANVIL_BUILDER_KV_MANIFEST_H
#define ANVIL_BUILDER_KV_MANIFEST_H

#include <stdint.h>

#include <jansson.h>

#include "anvil/status.h"
#include "io/engine_file.h"

/* The object above; scales [2 * n_layers] (k at 2l, v at 2l + 1), NULL
 * with source "none". NULL when out of memory. */
json_t *anvil_manifest_kv(int fp8, const char *source, int32_t n_layers, const float *scales);

/*
 * Reads the engine's "kv_cache" (absent: *found = *fp8 = 0, scales
 * untouched). *found: the arrays were there and scales[2 * n_layers] holds
 * them; *fp8: its dtype is "fp8". ANVIL_ERR_FORMAT naming the field for a
 * malformed object, arrays of another length than n_layers, or a scale
 * that is not finite and > 0.
 */
anvil_status anvil_manifest_read_kv(const anvil_engine_file *f, int32_t n_layers, float *scales, int *found,
                                    int *fp8);

#endif
