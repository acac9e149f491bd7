/*
 * A vocabulary slice's lookup on CUDA (backend.h, embedding_part; tensor
 * parallelism, docs/parallel.md): out[t] = table[ids[t] - first_id] for
 * ids in the slice, zeros for another rank's ids, which an all_reduce then
 * sums. The op (cuda_ops.c: checks) and its launcher (cuda_embedding.cu:
 * the embedding kernel with a first id).
 */
#ifndef ANVIL_BACKEND_CUDA_EMBEDDING_PART_H
#define ANVIL_BACKEND_CUDA_EMBEDDING_PART_H

#include "backend/cuda/cuda_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* table [vocab, width] holds ids [first_id, first_id + vocab); a negative
 * id sets ANVIL_CUDA_BAD_TOKEN in err. */
anvil_status anvil_cuda_launch_embedding_part(cudaStream_t stream, const void *table, anvil_dtype table_dt,
                                              int64_t vocab, int64_t first_id, const int32_t *ids, int32_t n_tokens,
                                              void *out, anvil_dtype out_dt, int64_t width, int *err);

anvil_status anvil_cuda_op_embedding_part(anvil_backend *be, const anvil_tensor *table, int64_t first_id,
                                          const anvil_step *step, anvil_tensor *out);

#ifdef __cplusplus
}
#endif
#endif
