/*
 * The quantized GEMV on tensor cores with 16-bit operands
 * (cuda_gemv_mma16_quant.cu; docs/cuda-backend.md, "Quantized weights"):
 * int8 / int4 weight-only with x in bf16 / f16 as it is, fp8 W8A8 per
 * channel with x's fp8 codes made in the launch; T = 1..8 rows, no perm, K
 * a multiple of 128 (int4) / 64 (int8, fp8), int4 groups of a multiple of
 * 32, int8 of 64.
 */
#ifndef ANVIL_CUDA_GEMV_MMA16_QUANT_H
#define ANVIL_CUDA_GEMV_MMA16_QUANT_H

#include "backend/cuda/cuda_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether the kernel takes w for T rows of x (x_dt) on a device of compute
 * capability sm (80: 8.0); act and perm as the weight's anvil_quant. */
int anvil_cuda_gemv_mma16_quant_ok(const anvil_cuda_qweight *w, int act, int sm, const int32_t *perm, const void *x,
                                   anvil_dtype x_dt, int64_t T);

/* The launch: the same call as the int8-activation GEMV's
 * (anvil_cuda_launch_gemv_mma_quant; err unused; tiles_knob 3: int4's plain
 * kernel at three blocks an SM, for benchmarks): parts of
 * one x as one launch, gate/up with the silu. ANVIL_ERR_UNSUPPORTED where
 * anvil_cuda_gemv_mma16_quant_ok refuses a part. */
anvil_status anvil_cuda_launch_gemv_mma16_quant(const anvil_cuda_gemv_mma_call *c);

#ifdef __cplusplus
}
#endif

#endif
