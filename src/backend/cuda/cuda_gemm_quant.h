/*
 * The quantized GEMM on tensor cores (cuda_gemm_quant.cu; docs/cuda-backend.md,
 * "Quantized weights"), Marlin's role: out[M, N] = x[M, K] W^T for prefill
 * and mid-size batches, W int4 (groups of a multiple of 32, zero points or
 * not) or int8 (per channel or groups of a multiple of 16) as stored in the
 * canonical form (docs/quantization.md), x bf16 / f16 as it is (weight-only
 * arithmetic), out f32 / bf16 / f16.
 *
 *     anvil_cuda_gemm_quant_call c = {.stream = s, .w = qw, .x = x, .x_dt = dt, .M = M, .out = out,
 *                                     .out_dt = dt, .n_sm = cb->n_sm, .smem_optin = cb->smem_optin};
 *     if (anvil_cuda_gemm_quant_ok(&qw, perm, act, cb->sm, cb->smem_optin, x, dt, dt)) {
 *         size_t need = anvil_cuda_gemm_quant_scratch_bytes(&c);   // split-K partials, 0 if none
 *         ... c.scratch = a device buffer of at least `need` bytes
 *         anvil_cuda_launch_gemm_quant(&c);
 *     }
 */
#ifndef ANVIL_CUDA_GEMM_QUANT_H
#define ANVIL_CUDA_GEMM_QUANT_H

#include "backend/cuda/cuda_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct anvil_cuda_gemm_quant_call {
    cudaStream_t stream;
    anvil_cuda_qweight w;  /* I8 or U4 [N, K] */
    const void *x;         /* [M, K] in x_dt (BF16, F16), 16-byte aligned */
    anvil_dtype x_dt;
    int64_t M;             /* >= 1 */
    const void *bias;      /* NULL or [N] in bias_dt (F32, BF16, F16) */
    anvil_dtype bias_dt;
    void *out;             /* [M, N] in out_dt (F32, BF16, F16) */
    anvil_dtype out_dt;
    int n_sm;              /* the device's SMs: how many K splits fill it */
    size_t smem_optin;     /* the device's opt-in shared memory a block */
    float *scratch;        /* split-K partials: anvil_cuda_gemm_quant_scratch_bytes of them */
    size_t scratch_bytes;
    int tile_m;            /* 0: by M (16, 64 or 128 tokens a block); 16, 64, 128: forced (tests) */
    int splits;            /* 0: by the grid and n_sm; >= 1: that many K splits (capped by the steps) */
} anvil_cuda_gemm_quant_call;

/* Whether the GEMM takes w for x (x_dt) into out_dt on a device of compute
 * capability sm (80: 8.0) with smem_optin bytes of shared memory a block:
 * I8 or U4, no perm, no fp8 activations (act 0), x BF16 / F16, out F32 /
 * BF16 / F16, K a multiple of 128 (int4) / 64 (int8), int4 groups a
 * multiple of 32, int8 of 16 (or per channel), w and x 16-byte
 * aligned (w's rows then are; scales and zero points are read as single elements). */
int anvil_cuda_gemm_quant_ok(const anvil_cuda_qweight *w, const int32_t *perm, int act, int sm, size_t smem_optin,
                             const void *x, anvil_dtype x_dt, anvil_dtype out_dt);

/* Tokens a block and K splits the launch of c will use (after the caps). */
int anvil_cuda_gemm_quant_tile(const anvil_cuda_gemm_quant_call *c);
int anvil_cuda_gemm_quant_splits(const anvil_cuda_gemm_quant_call *c);

/* Bytes of scratch the launch of c needs (f32 partials [splits][M][N]; 0
 * with one split). */
size_t anvil_cuda_gemm_quant_scratch_bytes(const anvil_cuda_gemm_quant_call *c);

/* The launch (one kernel, plus a fixed-order sum of the splits' partials
 * with the bias when K is split). ANVIL_ERR_UNSUPPORTED where
 * anvil_cuda_gemm_quant_ok refuses; ANVIL_ERR_INVALID_ARG for a scratch
 * smaller than needed or a bad tile. Deterministic: the same bits for the
 * same call on the same GPU. */
anvil_status anvil_cuda_launch_gemm_quant(const anvil_cuda_gemm_quant_call *c);

#ifdef __cplusplus
}
#endif

#endif
