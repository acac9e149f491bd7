/*
 * libFuzzer target for the safetensors parser: any byte string must either
 * be refused with a status (and *out == NULL) or give tensors that all lie
 * inside the input, are found by name, and agree with their shape. ASan
 * catches any read outside the input (libFuzzer hands us a buffer of
 * exactly `size` bytes); UBSan any overflow.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    anvil_safetensors *f = (anvil_safetensors *)&f; /* must be reset to NULL on failure */
    if (anvil_safetensors_open_memory(data, size, &f) != ANVIL_OK) {
        if (f != NULL || anvil_last_error()[0] == '\0')
            __builtin_trap();
        return 0;
    }
    volatile uint8_t sink = 0;
    int64_t n = anvil_safetensors_count(f);
    for (int64_t i = 0; i < n; i++) {
        const anvil_st_tensor *t = anvil_safetensors_at(f, i);
        if (t == NULL || anvil_safetensors_find(f, t->name) != t)
            __builtin_trap();
        const uint8_t *p = t->data;
        if (p < data || t->nbytes > size || p > data + size - t->nbytes)
            __builtin_trap();
        uint64_t numel = 1;
        for (int d = 0; d < t->n_dims; d++)
            numel *= (uint64_t)t->shape[d];
        if (numel * anvil_dtype_size(t->dtype) != t->nbytes)
            __builtin_trap();
        if (t->nbytes > 0)
            sink ^= p[0] ^ p[t->nbytes - 1];
    }
    if (anvil_safetensors_at(f, n) != NULL)
        __builtin_trap();
    const char *fmt = anvil_safetensors_metadata(f, "format");
    if (fmt != NULL)
        sink ^= (uint8_t)strlen(fmt);
    (void)sink;
    anvil_safetensors_close(f);
    return 0;
}
