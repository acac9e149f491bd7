/*
 * A Hugging Face checkpoint's KV cache scales: per layer, the k_scale and
 * v_scale an fp8 KV cache holds k and v divided by (docs/quantization.md,
 * "FP8 KV cache"), as ModelOpt and llm-compressor store them.
 *
 *     float s[2 * n_layers]; // layer l: k_scale at 2l, v_scale at 2l + 1
 *     int found;
 *     TRY(anvil_kv_scales_read(ck, qc.kv_fp8, dir, n_layers, s, &found));
 *     if (!found) ... no scales: s untouched ...
 *
 * The names of layer N's scales, tried in this order (the ones vLLM's
 * maybe_remap_kv_scale_name maps):
 *   model.layers.N.self_attn.k_scale, .v_scale          compressed-tensors, newer ModelOpt
 *   model.layers.N.self_attn.k_proj.k_scale, .v_proj.v_scale   older ModelOpt
 *   model.layers.N.self_attn.kv_scale                   the legacy single scale for both
 * Each is a scalar or a [1] tensor in f32, bf16 or f16.
 */
#ifndef ANVIL_IO_KV_SCALES_H
#define ANVIL_IO_KV_SCALES_H

#include <stdint.h>

#include "anvil/status.h"
#include "io/safetensors.h"

/*
 * Reads layers 0..n_layers-1's scales into scales[2 * n_layers]. *found:
 * 1 when every layer has them (scales filled), 0 when none has (scales
 * untouched). Errors, naming the tensor or layer (what names the folder):
 * a scale that is not finite and > 0, not one element, or not f32/bf16/f16,
 * a layer with k's scale but not v's, some layers with scales and others
 * without (ANVIL_ERR_FORMAT); declared (the config declares an fp8 KV
 * scheme: anvil_quant_config.kv_fp8) with no scales at all
 * (ANVIL_ERR_FORMAT).
 */
anvil_status anvil_kv_scales_read(const anvil_checkpoint *ck, int declared, const char *what, int32_t n_layers,
                                  float *scales, int *found);

/* ANVIL_OK when s is a usable scale (finite and > 0); else ANVIL_ERR_FORMAT
 * naming `what` (the tensor or manifest field it came from). */
anvil_status anvil_kv_scale_check(float s, const char *what);

#endif
