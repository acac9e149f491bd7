/*
 * Safetensors reader, over mmap or pread.
 *
 * A file is: 8-byte little-endian header length N, N bytes of JSON
 * ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {...}}), then the data. Everything in the header is
 * checked before use: the length against the file size, the JSON, each
 * dtype, shape x dtype size == end - begin (without overflow), offsets inside
 * the data section, and no two tensors overlapping. Mapped, tensors are
 * views into the mapping and nothing is copied; read (ANVIL_ST_READ), only
 * the header is in memory and anvil_st_read fetches the bytes.
 *
 * A checkpoint folder holds either model.safetensors or a sharded set named
 * by model.safetensors.index.json ({"weight_map": {"name": "file"}}).
 *
 *     anvil_checkpoint *ck;
 *     TRY(anvil_checkpoint_open("/models/llama", &ck));
 *     const anvil_st_tensor *emb = anvil_checkpoint_find(ck, "model.embed_tokens.weight");
 *     ... emb->data is valid until anvil_checkpoint_close(ck) ...
 *
 * Handles are immutable after open: reading one from several threads at
 * once is safe. docs/checkpoints.md lists the rules in full.
 */
#ifndef ANVIL_IO_SAFETENSORS_H
#define ANVIL_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/status.h"
#include "core/tensor.h"

typedef struct anvil_safetensors anvil_safetensors;
typedef struct anvil_checkpoint anvil_checkpoint;

typedef struct anvil_st_tensor {
    const char *name; /* owned by the file/checkpoint */
    anvil_dtype dtype;
    int n_dims;
    int64_t shape[ANVIL_MAX_DIMS];
    const void *data; /* into the mapping or image; valid until the file is closed; NULL when the file
                         was opened with ANVIL_ST_READ (then anvil_st_read) */
    size_t nbytes;
    const anvil_safetensors *file; /* the file it is in (NULL in tensors made to be written) */
    uint64_t file_offset;          /* where its bytes start in that file */
} anvil_st_tensor;

/*
 * How tensor data is reached.
 *   ANVIL_ST_MMAP: the file is mapped and t->data points into the mapping
 *     (CPU weights are used in place, shared with the page cache). A file
 *     truncated while mapped raises SIGBUS at the next access to the lost
 *     pages: only for files nobody changes while they are in use.
 *   ANVIL_ST_READ: only the header is read at open; t->data is NULL and
 *     anvil_st_read copies bytes out with pread. The file stays open, so a
 *     file replaced (renamed over) is still read whole; a truncated one is
 *     an error naming it, never a signal.
 */
typedef enum anvil_st_access {
    ANVIL_ST_MMAP = 0,
    ANVIL_ST_READ,
} anvil_st_access;

/* Opens and validates one .safetensors file (only a regular file: a FIFO or
 * a device is refused without waiting on it). *out is NULL on failure; the
 * message names the file and what is wrong with it. */
anvil_status anvil_safetensors_open_ex(const char *path, anvil_st_access access, anvil_safetensors **out);

/* anvil_safetensors_open_ex(path, ANVIL_ST_MMAP, out). */
anvil_status anvil_safetensors_open(const char *path, anvil_safetensors **out);

/* Copies bytes [offset, offset + len) of t's data into dst, from memory or
 * with pread. A range outside the tensor is ANVIL_ERR_INVALID_ARG; a file
 * that no longer holds the bytes is ANVIL_ERR_IO. Safe from several threads. */
anvil_status anvil_st_read(const anvil_st_tensor *t, size_t offset, void *dst, size_t len);

/* ANVIL_ST_READ files: ANVIL_ERR_IO when the file's size or modification
 * time changed since it was opened (it was rewritten in place while read);
 * ANVIL_OK otherwise and for mapped files and images. */
anvil_status anvil_safetensors_check_unchanged(const anvil_safetensors *f);

/* Validates a safetensors image already in memory (data is borrowed and
 * must outlive the handle). For tests and the fuzzer. */
anvil_status anvil_safetensors_open_memory(const void *data, size_t len, anvil_safetensors **out);

void anvil_safetensors_close(anvil_safetensors *f); /* NULL is a no-op */
int64_t anvil_safetensors_count(const anvil_safetensors *f);
const anvil_st_tensor *anvil_safetensors_at(const anvil_safetensors *f, int64_t i);
const anvil_st_tensor *anvil_safetensors_find(const anvil_safetensors *f, const char *name);

/* Opens dir/model.safetensors, or every shard named by
 * dir/model.safetensors.index.json (checking that each listed tensor is in
 * the shard the index names), each with the given access. */
anvil_status anvil_checkpoint_open_ex(const char *dir, anvil_st_access access, anvil_checkpoint **out);
/* anvil_checkpoint_open_ex(dir, ANVIL_ST_MMAP, out). */
anvil_status anvil_checkpoint_open(const char *dir, anvil_checkpoint **out);
/* anvil_safetensors_check_unchanged on every shard. */
anvil_status anvil_checkpoint_check_unchanged(const anvil_checkpoint *c);
void anvil_checkpoint_close(anvil_checkpoint *c); /* NULL is a no-op */
int64_t anvil_checkpoint_count(const anvil_checkpoint *c);
const anvil_st_tensor *anvil_checkpoint_at(const anvil_checkpoint *c, int64_t i);
/* NULL when absent (not an error by itself: callers decide). A name that
 * starts with "transformer." is also found without it (GPT-2's original
 * checkpoint). */
const anvil_st_tensor *anvil_checkpoint_find(const anvil_checkpoint *c, const char *name);

/* Writes a safetensors file from host tensors (used by tests to make bad
 * files and by the benchmark to make random-weight models). Tensor data is
 * written straight from tensors[i].data (borrowed for the call); nbytes must
 * equal shape x dtype size. The data section is ordered by element size,
 * largest first (stable otherwise), as the reference writer does, so that
 * every tensor stays aligned to its element size; the header is padded
 * with spaces to a multiple of 8 and carries {"format": "pt"}. Names must
 * be unique. On failure the partial file is removed. */
anvil_status anvil_safetensors_write(const char *path, const anvil_st_tensor *tensors, int64_t n);

/* Fills buf with bytes [offset, offset + len) of tensor `index` (an index
 * into the array given to anvil_safetensors_write_stream). */
typedef anvil_status (*anvil_st_fill_fn)(void *user, int64_t index, void *buf, size_t offset, size_t len);

/* As anvil_safetensors_write, but the data comes from fill() in chunks of at
 * most a few MiB (tensors[i].data is ignored), so that a multi-GB
 * random-weight file never has to exist in memory. A fill error aborts the
 * write, removes the file and is returned as is. */
anvil_status anvil_safetensors_write_stream(const char *path, const anvil_st_tensor *tensors, int64_t n,
                                            anvil_st_fill_fn fill, void *user);

/* The value of a "__metadata__" key, or NULL. Borrowed from f. */
const char *anvil_safetensors_metadata(const anvil_safetensors *f, const char *key);

/* The path (or "<memory>") the handle was opened from; borrowed. */
const char *anvil_safetensors_path(const anvil_safetensors *f);

/* Helpers for indexes over several files: sort tensor pointers by name, and
 * binary-search such a sorted array (NULL when absent). */
void anvil_st_sort_by_name(const anvil_st_tensor **v, int64_t n);
const anvil_st_tensor *anvil_st_lookup(const anvil_st_tensor *const *v, int64_t n, const char *name);

/* The safetensors spelling of a dtype ("BF16"), and its inverse (-1 when the
 * name is not one anvil supports; the spelling is exact, case included). */
const char *anvil_st_dtype_name(anvil_dtype dt);
int anvil_st_dtype_parse(const char *name, anvil_dtype *out);

#endif
