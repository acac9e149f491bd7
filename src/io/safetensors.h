/*
 * Safetensors reader over mmap.
 *
 * A file is: 8-byte little-endian header length N, N bytes of JSON
 * ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {...}}), then the data. Everything in the header is
 * checked before use: the length against the file size, the JSON, each
 * dtype, shape x dtype size == end - begin (without overflow), offsets inside
 * the data section, and no two tensors overlapping. Tensors are views into
 * the mapping; nothing is copied.
 *
 * A checkpoint folder holds either model.safetensors or a sharded set named
 * by model.safetensors.index.json ({"weight_map": {"name": "file"}}).
 */
#ifndef ANVIL_IO_SAFETENSORS_H
#define ANVIL_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/status.h"
#include "core/tensor.h"

typedef struct anvil_st_tensor {
    const char *name;   /* owned by the file/checkpoint */
    anvil_dtype dtype;
    int n_dims;
    int64_t shape[ANVIL_MAX_DIMS];
    const void *data;   /* into the mapping; valid until the file is closed */
    size_t nbytes;
} anvil_st_tensor;

typedef struct anvil_safetensors anvil_safetensors;
typedef struct anvil_checkpoint anvil_checkpoint;

/* Maps and validates one .safetensors file. *out is NULL on failure; the
 * message names the file and what is wrong with it. */
anvil_status anvil_safetensors_open(const char *path, anvil_safetensors **out);

/* Validates a safetensors image already in memory (data is borrowed and
 * must outlive the handle). For tests and the fuzzer. */
anvil_status anvil_safetensors_open_memory(const void *data, size_t len, anvil_safetensors **out);

void anvil_safetensors_close(anvil_safetensors *f); /* NULL is a no-op */
int64_t anvil_safetensors_count(const anvil_safetensors *f);
const anvil_st_tensor *anvil_safetensors_at(const anvil_safetensors *f, int64_t i);
const anvil_st_tensor *anvil_safetensors_find(const anvil_safetensors *f, const char *name);

/* Opens dir/model.safetensors, or every shard named by
 * dir/model.safetensors.index.json (checking that each listed tensor is in
 * the shard the index names). */
anvil_status anvil_checkpoint_open(const char *dir, anvil_checkpoint **out);
void anvil_checkpoint_close(anvil_checkpoint *c); /* NULL is a no-op */
int64_t anvil_checkpoint_count(const anvil_checkpoint *c);
const anvil_st_tensor *anvil_checkpoint_at(const anvil_checkpoint *c, int64_t i);
/* NULL when absent (not an error by itself: callers decide). */
const anvil_st_tensor *anvil_checkpoint_find(const anvil_checkpoint *c, const char *name);

/* Writes a safetensors file from host tensors (used by tests to make bad
 * files and by the benchmark to make random-weight models). */
anvil_status anvil_safetensors_write(const char *path, const anvil_st_tensor *tensors, int64_t n);

#endif
