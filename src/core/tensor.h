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

typedef struct anvil_tensor {
    anvil_dtype dtype;
    int n_dims;
    int64_t shape[ANVIL_MAX_DIMS];
    void *data; /* borrowed; host or device memory depending on the backend */
} anvil_tensor;

int64_t anvil_tensor_numel(const anvil_tensor *t);
size_t anvil_tensor_nbytes(const anvil_tensor *t);

/* A 1-D or 2-D view, for the activations ([rows, cols]) and weights. */
anvil_tensor anvil_tensor_2d(anvil_dtype dt, int64_t rows, int64_t cols, void *data);
anvil_tensor anvil_tensor_1d(anvil_dtype dt, int64_t n, void *data);

/* Writes "[a, b, c]" into buf. */
void anvil_shape_str(const int64_t *shape, int n_dims, char *buf, size_t cap);

#endif
