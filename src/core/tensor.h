/*
 * anvil_tensor: a typed view of memory that something else owns (an mmap'd
 * checkpoint, a backend buffer, an arena). Shapes are outermost first, as in
 * PyTorch and safetensors; data is dense row-major.
 */
#ifndef ANVIL_CORE_TENSOR_H
#define ANVIL_CORE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/dtype.h"

#define ANVIL_MAX_DIMS 4

/*
 * How a quantized weight's stored elements become values
 * (docs/quantization.md). A weight w [N, K] of dtype F8_E4M3, I8 or U4
 * with quant q stands for the matrix
 *     W[n][k] = (v(w[n][k]) - z) * s,   s = q->scales[n * G + k / group]
 * (G = K / group; group 0: one scale per row, G = 1, s = q->scales[n]),
 * v the element's value (fp8: its float; i8: -128..127; u4: 0..15), and z
 * 0 for fp8 and i8, q->zeros[n * G + k / group] for u4 (8 when zeros is
 * NULL: symmetric). With perm, column k of W multiplies x[:, perm[k]]
 * (GPTQ's act order, its groups made contiguous). With act FP8_* (fp8
 * weights only: W8A8), each row of x is first rounded to fp8: x' =
 * fp8(x / sx) * sx, sx = max|x row| / 448 (DYNAMIC: per token) or
 * input_scale (STATIC), so the matmul computes what an fp8 GEMM computes.
 * Every pointer is backend memory, like data.
 */
typedef enum anvil_quant_act {
    ANVIL_QUANT_ACT_NONE = 0,
    ANVIL_QUANT_ACT_FP8_DYNAMIC,
    ANVIL_QUANT_ACT_FP8_STATIC,
} anvil_quant_act;

typedef struct anvil_quant {
    int32_t group;        /* K columns per scale; 0: one scale per row */
    const float *scales;  /* [N] or [N, K / group] */
    const uint8_t *zeros; /* u4 only: [N, K / group], each 0..15; NULL: 8 */
    const int32_t *perm;  /* NULL, or [K] */
    anvil_quant_act act;
    float input_scale;    /* ANVIL_QUANT_ACT_FP8_STATIC's sx */
} anvil_quant;

typedef struct anvil_tensor {
    anvil_dtype dtype;
    int n_dims;
    int64_t shape[ANVIL_MAX_DIMS];
    void *data; /* borrowed; host or device memory depending on the backend */
    /* NULL for plain tensors; a quantized weight's scales (above). */
    const anvil_quant *quant;
} anvil_tensor;

int64_t anvil_tensor_numel(const anvil_tensor *t);
size_t anvil_tensor_nbytes(const anvil_tensor *t);

/* A 1-D or 2-D view, for the activations ([rows, cols]) and weights. */
anvil_tensor anvil_tensor_2d(anvil_dtype dt, int64_t rows, int64_t cols, void *data);
anvil_tensor anvil_tensor_1d(anvil_dtype dt, int64_t n, void *data);

/* Writes "[a, b, c]" into buf. */
void anvil_shape_str(const int64_t *shape, int n_dims, char *buf, size_t cap);

#endif
