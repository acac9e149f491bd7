#include "core/tensor.h"

#include <stdio.h>

int64_t anvil_tensor_numel(const anvil_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->n_dims; i++)
        n *= t->shape[i];
    return n;
}

size_t anvil_tensor_nbytes(const anvil_tensor *t)
{
    const size_t n = (size_t)anvil_tensor_numel(t);
    if (t->dtype == ANVIL_DTYPE_U4)
        return n / 2 + n % 2;
    return n * anvil_dtype_size(t->dtype);
}

anvil_tensor anvil_tensor_2d(anvil_dtype dt, int64_t rows, int64_t cols, void *data)
{
    anvil_tensor t = {.dtype = dt, .n_dims = 2, .shape = {rows, cols}, .data = data};
    return t;
}

anvil_tensor anvil_tensor_1d(anvil_dtype dt, int64_t n, void *data)
{
    anvil_tensor t = {.dtype = dt, .n_dims = 1, .shape = {n}, .data = data};
    return t;
}

void anvil_shape_str(const int64_t *shape, int n_dims, char *buf, size_t cap)
{
    size_t n = 0;
    if (cap == 0)
        return;
    buf[0] = '\0';
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < n_dims && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}
