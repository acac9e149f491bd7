/*
 * Pre-quantized checkpoints in the build plan (docs/quantization.md,
 * "Pre-quantized checkpoints read"): a linear weight that the folder's
 * quantization config (io/quant_config.h) says is quantized becomes a
 * stored weight of the canonical kind with its companions, filled by
 * anvil_prequant_converter, which converts the checkpoint's tensors
 * (builder/quant_convert.h) of the members each chunk touches.
 *
 *     anvil_prequant_info pi;
 *     TRY(anvil_prequant_probe(&qc, net, i, ck, &pi));   (plan time, per linear weight)
 *     if (pi.quantized) ... kinds[i] = pi.kind; after add_stored: anvil_prequant_stored(...)
 */
#ifndef ANVIL_BUILDER_PREQUANT_H
#define ANVIL_BUILDER_PREQUANT_H

#include <stdint.h>

#include "builder/build_plan.h"
#include "io/quant_config.h"

extern const anvil_stored_converter anvil_prequant_converter;

/* What one network weight becomes, found by converting it once. */
typedef struct anvil_prequant_info {
    int quantized;       /* 0: the weight reads "<module>.weight" as a plain checkpoint does */
    anvil_dtype kind;    /* F8_E4M3, I8 or U4 */
    int32_t group;
    int zeros, perm;     /* it has zero points / a column permutation */
    anvil_quant_act act;
    float input_scale;
} anvil_prequant_info;

/* Whether weight i of net (a linear's matrix) is pre-quantized under qc,
 * and what it becomes. Its tensors are read and converted once, so every
 * shape, size and value the converter checks fails here, before the plan
 * exists. A weight whose config says quantized but whose checkpoint holds
 * a plain float "<module>.weight" and no scales is not quantized. A recipe
 * other than one whole tensor (a slice of a fused checkpoint tensor) over
 * quantized tensors is ANVIL_ERR_UNSUPPORTED. */
anvil_status anvil_prequant_probe(const anvil_quant_config *qc, const anvil_network *net, int32_t i,
                                  const anvil_checkpoint *ck, anvil_prequant_info *out);

/* Whether the probed weights ws[0..n) can be stored as one (fused): one
 * kind, group and activation scheme, no permutation. */
int anvil_prequant_fusable(const anvil_prequant_info *info, const int32_t *ws, int32_t n);

#endif
