/*
 * Quantization at build time (docs/quantization.md): round to nearest
 * (RTN), the baseline every other method is measured against.
 *
 * A quantized stored weight W [N, K] (fused q/k/v or gate/up included: they
 * are quantized row by row, so fusing concatenates rows, scales included)
 * and its companions are made by one converter, anvil_rtn_converter, from
 * the same rows of values: each fill reads the whole rows (or groups) its
 * bytes need and quantizes them again, so the build's chunks can come in
 * any order, on any thread, and never see half a row:
 *
 *     fp8      w = fp8(x / s),                  s = max|row| / 448
 *     int8-wo  w = round(x / s) in -127..127,   s = max|row| / 127
 *     int4-wo  w = round(x / s) + z in 0..15,   s = (max - min) / 15 over a group,
 *              z = round(-min / s), the range widened to hold 0 (min <= 0 <= max)
 *
 * round is to nearest, ties to even. A row (or group) of zeros has scale 0
 * and every element 0 (int4: zero point 0): nothing divides by zero.
 */
#ifndef ANVIL_BUILDER_QUANTIZE_H
#define ANVIL_BUILDER_QUANTIZE_H

#include <stdint.h>

#include "builder/build_plan.h"

extern const anvil_stored_converter anvil_rtn_converter;

/*
 * One row x [k] quantized to kind (F8_E4M3, I8: q [k] bytes; U4: q [k / 2]
 * bytes, low nibble first) with scales [k / group] (group 0: [1]) and, for
 * U4, zeros [k / group]. x must be finite; group must divide k (U4: k even).
 */
void anvil_rtn_row(anvil_dtype kind, int32_t group, const float *x, int64_t k, uint8_t *q, float *scales,
                   uint8_t *zeros);

/* Called on each row of values (stored row r of weight tensor ws, k
 * columns) before it is rounded: AWQ's scaling (builder/awq.h). */
typedef void (*anvil_quant_row_fn)(const anvil_build_plan *p, int32_t ws, int64_t r, float *x, int64_t k);

/* The RTN converter's fill (anvil_stored_converter.fill) with each row
 * passed through `before` (NULL: none) first. */
anvil_status anvil_quant_fill(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                              int32_t s, size_t offset, void *dst, size_t len, anvil_build_scratch *sc,
                              anvil_quant_row_fn before);

#endif
