/* The moe op's grouped GEMV on quantized experts (cuda_moe_quant.cu): for
 * at most 8 tokens, gate|up with the silu and down each as ONE launch over
 * every active expert, as anvil_cuda_launch_moe_experts does for dense
 * weights, with the stack's rows dequantized in registers by the canonical
 * form (docs/quantization.md): W[n][c] = fl((v - z) * s). The arithmetic is
 * the format's definition, as CUDA's weight-only GEMVs compute it: int8 /
 * int4 / fp8 weight-only with the activations as they are; fp8 W8A8
 * (ANVIL_QUANT_ACT_FP8_DYNAMIC) with each input row rounded to fp8 first as
 * the CPU rounds it (sx = max|row| / 448, x' = fl(fp8(x / sx) sx), a row of
 * zeros stays zeros); f32 sums. */
#ifndef ANVIL_BACKEND_CUDA_MOE_QUANT_H
#define ANVIL_BACKEND_CUDA_MOE_QUANT_H

#include "backend/cuda/cuda_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether the GEMV takes stacked weight w (K columns) for n_tok tokens:
 * n_tok <= 8, fp8 / int8 / int4 with scales and no perm, activations as
 * they are (or fp8 dynamic for fp8), K a multiple of 8, a group of a
 * multiple of 8 (or per channel), the weight's bytes 8-byte aligned. */
int anvil_cuda_moe_gemv_quant_ok(const anvil_tensor *w, int64_t n_tok);

/* silu 1: X = x [n_tok, K] (x_dt) read through order, W the stacked
 * gate|up [E 2N, K] (expert e's gate rows e 2N .., up rows N after), out
 * a [n_tok k, N] f32 = silu(x Wg^T) (x Wu^T) by sorted row; silu 0: X = a
 * [n_tok k, K] f32, W the stacked down [E N, K], out y [n_tok k, N] f32.
 * offsets, active, order: the sort's (anvil_cuda_launch_moe_sort). */
anvil_status anvil_cuda_launch_moe_experts_quant(cudaStream_t stream, int silu, const void *X, anvil_dtype x_dt,
                                                 const anvil_tensor *W, int64_t n_tok, int32_t k, int32_t E,
                                                 int64_t K, int64_t N, const int32_t *offsets,
                                                 const int32_t *active, const int32_t *order, float *out);

/* The streaming form (the knob matmul_quant = 7; cuda_moe_quant.cu's second
 * half): fp8 W8A8 per channel (ANVIL_QUANT_ACT_FP8_DYNAMIC) only, K a
 * multiple of 64, the expert's rows of x within the shared memory
 * (smem_optin). */
int anvil_cuda_moe_stream_quant_ok(const anvil_tensor *w, int64_t n_tok, size_t smem_optin);

/* Its workspace for one launch: partial sums (bytes) and tile counters
 * (ints, zero before a launch, left zero); both 0 when K is not split. */
void anvil_cuda_moe_stream_ws(int silu, int64_t n_tok, int32_t k, int32_t E, int64_t K, int64_t N, size_t *ws_bytes,
                              int64_t *counters);

/* As anvil_cuda_launch_moe_experts_quant, on the streaming form; ws and
 * counters as anvil_cuda_moe_stream_ws says (NULL where it says 0). */
anvil_status anvil_cuda_launch_moe_experts_stream(cudaStream_t stream, int silu, const void *X, anvil_dtype x_dt,
                                                  const anvil_tensor *W, int64_t n_tok, int32_t k, int32_t E,
                                                  int64_t K, int64_t N, const int32_t *offsets,
                                                  const int32_t *active, const int32_t *order, float *out,
                                                  float *ws, int *counters, size_t smem_optin);

#ifdef __cplusplus
}
#endif

#endif
