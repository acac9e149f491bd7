/*
 * cpu_quant.h: quantized weights on the CPU backend (docs/quantization.md,
 * the canonical form; docs/cpu-backend.md, "Quantized weights").
 *
 * A weight w [N, K] of dtype F8_E4M3, I8 or U4 with w->quant stands for
 * the f32 matrix
 *     W[n][k] = fl((v - z) * s)
 * (v the element's value, z its zero point, s its scale: core/tensor.h),
 * one rounding, the same on every path. The matmul over such a weight is
 * the f32 matmul (the dot16 of cpu_internal.h) of the prepared
 * activations x' with W: bitwise the result the f32 kernels give on the
 * dequantized matrix, so batch, thread-count and ISA invariance carry over.
 * x' is x with its columns permuted (perm) and, for fp8 activations, each
 * row rounded to fp8: x'[k] = fl(fp8(x[k] / sx) * sx).
 *
 *     TRY(anvil_cpu_check_quant_weight(w));  // from anvil_cpu_check_matmul
 *     float v = anvil_cpu_quant_value(&qw, n, k);
 */
#ifndef ANVIL_BACKEND_CPU_QUANT_H
#define ANVIL_BACKEND_CPU_QUANT_H

#include "backend/cpu/cpu_internal.h"

static inline int anvil_cpu_is_quant_dtype(anvil_dtype dt)
{
    return dt == ANVIL_DTYPE_F8_E4M3 || dt == ANVIL_DTYPE_I8 || dt == ANVIL_DTYPE_U4;
}

/* ANVIL_ERR_INVALID_ARG unless w is a 2-D quantized weight in the
 * canonical form: a quantized dtype with its quant (and quant only on
 * those), scales present, a group that divides K, zeros only for U4, fp8
 * activations only for F8_E4M3 (a static scale finite and > 0). perm's
 * entries must lie in [0, K) (checked: they index x). Zero points above
 * 15 are not checked (the builder writes them; they only change values). */
anvil_status anvil_cpu_check_quant_weight(const anvil_tensor *w);

/* A quantized weight, as the kernels read it. */
typedef struct anvil_cpu_qw {
    const void *w;        /* [N, K] elements of dt (U4: packed, low nibble first) */
    anvil_dtype dt;
    const anvil_quant *q;
    int64_t K, N;
    int64_t gs;           /* columns per scale: q->group, or K when 0 */
    int64_t G;            /* scales per row: K / gs */
} anvil_cpu_qw;

anvil_cpu_qw anvil_cpu_qw_of(const anvil_tensor *w);

/* v: the stored element's value before its zero point and scale. */
static inline float anvil_cpu_quant_raw(const anvil_cpu_qw *qw, int64_t n, int64_t k)
{
    const int64_t i = n * qw->K + k;
    const uint8_t *b = qw->w;
    switch (qw->dt) {
    case ANVIL_DTYPE_I8:
        return (float)(int8_t)b[i];
    case ANVIL_DTYPE_U4:
        return (float)((i & 1) ? b[i >> 1] >> 4 : b[i >> 1] & 15);
    default:
        return anvil_fp8_e4m3_to_f32(b[i]);
    }
}

/* W[n][k] = fl((v - z) * s). */
static inline float anvil_cpu_quant_value(const anvil_cpu_qw *qw, int64_t n, int64_t k)
{
    const int64_t g = n * qw->G + k / qw->gs;
    float z = 0.0f;
    if (qw->dt == ANVIL_DTYPE_U4)
        z = qw->q->zeros != NULL ? (float)qw->q->zeros[g] : 8.0f;
    return (anvil_cpu_quant_raw(qw, n, k) - z) * qw->q->scales[g];
}

/* Whether the activations need preparing (perm or fp8 rounding). */
static inline int anvil_cpu_quant_needs_prep(const anvil_quant *q)
{
    return q->perm != NULL || q->act != ANVIL_QUANT_ACT_NONE;
}

/* x' of one row of K activations into dst (see above): dst[k] =
 * x[perm[k]], then with fp8 activations fl(fp8(dst[k] / sx) * sx), sx =
 * max|x| / 448 (dynamic; a row of zeros stays zeros) or input_scale. */
void anvil_cpu_quant_prep_row(const anvil_quant *q, const float *x, int64_t K, float *dst);

/* Rows [n, n + nr) of W as f32 into dst (row stride ld >= K). */
void anvil_cpu_quant_dequant_rows(const anvil_cpu_qw *qw, int64_t n, int64_t nr, float *dst, int64_t ld);

/* The matmul op for a quantized w (already checked). */
anvil_status anvil_cpu_quant_matmul(anvil_cpu_backend *cb, const anvil_cpu_kernels *kern, const anvil_tensor *x,
                                    const anvil_tensor *w, const anvil_tensor *bias, anvil_tensor *out);

#endif
