/*
 * Pre-quantized checkpoint tensors -> anvil's canonical quantized weight
 * (docs/quantization.md, anvil_quant in src/core/tensor.h). Pure functions
 * on host buffers: the caller finds the tensors that
 * anvil_quant_config_linear() names (io/quant_config.h) and hands them in
 * with their bytes in memory.
 *
 *     anvil_quant_sources src = {.weight = find(ql.weight), .scales = find(ql.scales), ...};
 *     anvil_qweight w;
 *     TRY(anvil_quant_convert(&qc, &src, ql.weight, &w));
 *     ... w.data (w.dtype, [w.n, w.k]), w.quant (scales, zeros, perm, act) ...
 *     anvil_qweight_free(&w);
 *
 * Every shape and size is checked against the format before a byte is
 * read: a scale tensor of the wrong shape, a packed tensor of the wrong
 * size, a g_idx that is not a grouping of the columns are
 * ANVIL_ERR_FORMAT naming the tensor, the shape found and the one
 * expected. Thread-safe (no shared state).
 */
#ifndef ANVIL_BUILDER_QUANT_CONVERT_H
#define ANVIL_BUILDER_QUANT_CONVERT_H

#include <stdint.h>

#include "anvil/status.h"
#include "core/tensor.h"
#include "io/quant_config.h"
#include "io/safetensors.h"

/* One linear weight's checkpoint tensors (borrowed; data must be host
 * memory). NULL where anvil_quant_config_linear gave no name, or where an
 * optional tensor (GPTQ's g_idx without desc_act) is absent. */
typedef struct anvil_quant_sources {
    const anvil_st_tensor *weight;      /* fp8/int8 elements or the packed int32 */
    const anvil_st_tensor *scales;
    const anvil_st_tensor *zeros;       /* AWQ/GPTQ qzeros, compressed-tensors weight_zero_point */
    const anvil_st_tensor *g_idx;       /* GPTQ */
    const anvil_st_tensor *input_scale; /* static fp8 activations */
    const anvil_st_tensor *shape;       /* compressed-tensors weight_shape */
} anvil_quant_sources;

/* A canonical quantized weight W [n, k] (out, in), owned. */
typedef struct anvil_qweight {
    anvil_dtype dtype; /* ANVIL_DTYPE_F8_E4M3, I8 or U4 */
    int64_t n, k;
    void *data;        /* n * k bytes (u4: n * k / 2, two a byte along k, low nibble first) */
    size_t nbytes;
    float *scales;     /* [n * n_groups]; n_groups = k / quant.group, 1 when group is 0 */
    int64_t n_groups;
    uint8_t *zeros;    /* u4 only, [n * n_groups], 0..15; NULL: 8 (symmetric) */
    int32_t *perm;     /* [k] or NULL */
    anvil_quant quant; /* group, act, input_scale; its pointers point at the arrays above */
} anvil_qweight;

/* Converts one weight. `what` names it in messages (its module or tensor
 * name). On failure *out is zeroed and owns nothing. */
anvil_status anvil_quant_convert(const anvil_quant_config *qc, const anvil_quant_sources *src, const char *what,
                                 anvil_qweight *out);

/* Frees what the weight owns; the struct is zeroed. NULL is a no-op. */
void anvil_qweight_free(anvil_qweight *w);

/* The matrix the weight stands for, in the checkpoint's column order:
 * out[r * k + c] (r < n, c < k) is what multiplies x[c] for output r,
 * i.e. column j of the canonical W lands at out[r * k + perm[j]]. The
 * reference the tests and the CPU's scalar path compare against. */
void anvil_qweight_dequantize(const anvil_qweight *w, float *out);

#endif
