/*
 * The fp8 W8A8 GEMV of one decode row on CUDA cores, a warp a weight row
 * (cuda_gemv_fp8_rows.cu; docs/cuda-backend.md, "Quantized weights"):
 * per-channel weight scales, x's fp8 codes made in the launch (dynamic or
 * static), T = 1, no perm, K a multiple of 512.
 */
#ifndef ANVIL_CUDA_GEMV_FP8_ROWS_H
#define ANVIL_CUDA_GEMV_FP8_ROWS_H

#include "backend/cuda/cuda_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether the kernel takes w for T rows of x (x_dt); act and perm as the
 * weight's anvil_quant. */
int anvil_cuda_gemv_fp8_rows_ok(const anvil_cuda_qweight *w, int act, const int32_t *perm, const void *x,
                                anvil_dtype x_dt, int64_t T);

/* The launch, the same call as the other quantized GEMVs' (parts of one x
 * as one launch, gate/up with the silu; err, tiles_knob and warps_knob
 * unused). ANVIL_ERR_UNSUPPORTED where anvil_cuda_gemv_fp8_rows_ok refuses
 * a part. */
anvil_status anvil_cuda_launch_gemv_fp8_rows(const anvil_cuda_gemv_mma_call *c);

#ifdef __cplusplus
}
#endif

#endif
