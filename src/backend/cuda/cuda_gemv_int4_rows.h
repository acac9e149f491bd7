/*
 * The int4 GEMV of one decode row on CUDA cores with int8 activations, a
 * warp a weight row (cuda_gemv_int4_rows.cu; docs/cuda-backend.md,
 * "Quantized weights"): the CPU's int definition (x rounded to int8 per
 * block of 32 in the launch, exact integer sums per block), groups of a
 * power of two from 32 or per channel, with or without zero points, T = 1,
 * no perm, K a multiple of 32 up to 32768.
 */
#ifndef ANVIL_CUDA_GEMV_INT4_ROWS_H
#define ANVIL_CUDA_GEMV_INT4_ROWS_H

#include "backend/cuda/cuda_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether the kernel takes w for T rows of x (x_dt); act and perm as the
 * weight's anvil_quant. */
int anvil_cuda_gemv_int4_rows_ok(const anvil_cuda_qweight *w, int act, const int32_t *perm, const void *x,
                                 anvil_dtype x_dt, int64_t T);

/* The launch, the same call as the other quantized GEMVs' (parts of one x
 * as one launch, gate/up with the silu; err, sm, tiles_knob and warps_knob
 * unused). ANVIL_ERR_UNSUPPORTED where anvil_cuda_gemv_int4_rows_ok
 * refuses a part or the parts' groups differ. */
anvil_status anvil_cuda_launch_gemv_int4_rows(const anvil_cuda_gemv_mma_call *c);

#ifdef __cplusplus
}
#endif

#endif
