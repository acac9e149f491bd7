/*
 * The streaming quantized GEMV (cuda_gemv_stream_quant.cu; issue 15;
 * docs/cuda-backend.md, "The streaming quantized GEMV"): the 16-bit
 * tensor-core GEMV's arithmetic (cuda_gemv_mma16_quant.cu: int8 / int4
 * weight-only with x as it is, fp8 W8A8 per channel with x's fp8 codes made
 * in the launch) with the weights moved by cp.async into a shared-memory
 * ring and K split across persistent blocks (cuda_gemv_stream_map.h), for
 * T = 1..8 rows. Chosen by the knob matmul_quant = 7 (cuda_matmul_quant.c).
 */
#ifndef ANVIL_CUDA_GEMV_STREAM_QUANT_H
#define ANVIL_CUDA_GEMV_STREAM_QUANT_H

#include "backend/cuda/cuda_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether the kernel takes w for T rows of x (x_dt) on a device of compute
 * capability sm with smem_optin bytes of shared memory a block: bf16 / f16
 * x, no perm, int4 groups of a multiple of 32 (zero points: their rows
 * word-aligned, not per channel), int8 of 64, fp8 W8A8 per channel; K a
 * multiple of 128 (int4) / 64; x, w and the scales aligned; the ring and
 * x's rows within the shared memory. */
int anvil_cuda_gemv_stream_quant_ok(const anvil_cuda_qweight *w, int act, int sm, const int32_t *perm,
                                    const void *x, anvil_dtype x_dt, int64_t T, size_t smem_optin);

/* Where the launch keeps its partial sums and counts. */
typedef struct anvil_cuda_gemv_stream_ws {
    float *partials; /* anvil_cuda_gemv_stream_ws_bytes bytes */
    int *counters;   /* anvil_cuda_gemv_stream_counters ints: zero before the launch, left zero */
} anvil_cuda_gemv_stream_ws;

/* The workspace the call c needs on the current device (0, 0 when no part
 * splits K and there is no silu). */
size_t anvil_cuda_gemv_stream_ws_bytes(const anvil_cuda_gemv_mma_call *c);
int64_t anvil_cuda_gemv_stream_counters(const anvil_cuda_gemv_mma_call *c);

/* The launch: the same call as the 16-bit tensor-core GEMV's (tiles_knob
 * unused), parts of one x as one launch, gate/up with the silu; ws as
 * above. ANVIL_ERR_UNSUPPORTED where anvil_cuda_gemv_stream_quant_ok
 * refuses a part. */
anvil_status anvil_cuda_launch_gemv_stream_quant(const anvil_cuda_gemv_mma_call *c,
                                                 const anvil_cuda_gemv_stream_ws *ws);

#ifdef __cplusplus
}
#endif

#endif
