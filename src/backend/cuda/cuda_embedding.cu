/* Embedding gather: out[t, :] = table[ids[t], :], converted to the
 * activation dtype. An id outside the table writes zeros and sets
 * ANVIL_CUDA_BAD_TOKEN in the error word. A vocabulary slice (tensor
 * parallelism, cuda_embedding_part.h): the table's rows are ids [first_id,
 * first_id + vocab), and another rank's id writes zeros unflagged (only a
 * negative id is bad). */
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_embedding_part.h"

template <typename T>
__global__ void anvil_embedding_kernel(const void *table, int table_dt, int64_t vocab, int64_t first_id, int part,
                                       const int32_t *ids, int32_t n_tokens, T *out, int64_t width, int *err)
{
    for (int32_t t = blockIdx.x; t < n_tokens; t += gridDim.x) {
        const int64_t id = (int64_t)ids[t] - first_id;
        const bool ok = id >= 0 && id < vocab;
        if ((part ? ids[t] < 0 : !ok) && threadIdx.x == 0)
            anvil_flag(err, ANVIL_CUDA_BAD_TOKEN);
        for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
            float v = ok ? anvil_load_any(table, table_dt, id * width + i) : 0.0f;
            out[(int64_t)t * width + i] = anvil_from_f32<T>(v);
        }
    }
}

extern "C" anvil_status anvil_cuda_launch_embedding(cudaStream_t stream, const void *table, anvil_dtype table_dt,
                                                    int64_t vocab, const int32_t *ids, int32_t n_tokens, void *out,
                                                    anvil_dtype out_dt, int64_t width, int *err)
{
    CHECK(anvil_cuda_is_float_dtype(table_dt), ANVIL_ERR_UNSUPPORTED, "embedding: table dtype %s",
          anvil_dtype_name(table_dt));
    if (n_tokens == 0 || width == 0)
        return ANVIL_OK;
    const unsigned grid = n_tokens < 65535 ? (unsigned)n_tokens : 65535u;
    ANVIL_CUDA_DISPATCH(out_dt, anvil_embedding_kernel<T><<<grid, 256, 0, stream>>>(
                                    table, (int)table_dt, vocab, 0, 0, ids, n_tokens, (T *)out, width, err));
    return ANVIL_CUDA_LAUNCHED("embedding kernel");
}

extern "C" anvil_status anvil_cuda_launch_embedding_part(cudaStream_t stream, const void *table, anvil_dtype table_dt,
                                                         int64_t vocab, int64_t first_id, const int32_t *ids,
                                                         int32_t n_tokens, void *out, anvil_dtype out_dt,
                                                         int64_t width, int *err)
{
    CHECK(anvil_cuda_is_float_dtype(table_dt), ANVIL_ERR_UNSUPPORTED, "embedding: table dtype %s",
          anvil_dtype_name(table_dt));
    if (n_tokens == 0 || width == 0)
        return ANVIL_OK;
    const unsigned grid = n_tokens < 65535 ? (unsigned)n_tokens : 65535u;
    ANVIL_CUDA_DISPATCH(out_dt, anvil_embedding_kernel<T><<<grid, 256, 0, stream>>>(
                                    table, (int)table_dt, vocab, first_id, 1, ids, n_tokens, (T *)out, width, err));
    return ANVIL_CUDA_LAUNCHED("embedding kernel (a vocabulary slice)");
}

/* The overlap scheduler's placeholders (backend.h, resolve_tokens): an id
 * t < 0 becomes prev[-1 - t], the id the previous step sampled for its
 * logits row -1 - t (0 for a poisoned row's -1), before the embedding
 * reads the ids. The runtime checked every -1 - t against that step's
 * rows. */
__global__ void anvil_resolve_tokens_kernel(int32_t *ids, int32_t n_tokens, const int32_t *prev)
{
    for (int32_t t = blockIdx.x * blockDim.x + threadIdx.x; t < n_tokens; t += gridDim.x * blockDim.x) {
        const int32_t id = ids[t];
        if (id < 0) {
            const int32_t v = prev[-1 - id];
            ids[t] = v < 0 ? 0 : v;
        }
    }
}

extern "C" anvil_status anvil_cuda_launch_resolve_tokens(cudaStream_t stream, int32_t *ids, int32_t n_tokens,
                                                         const int32_t *prev)
{
    if (n_tokens == 0)
        return ANVIL_OK;
    const int32_t blocks = (n_tokens + 255) / 256 < 1024 ? (n_tokens + 255) / 256 : 1024;
    anvil_resolve_tokens_kernel<<<(unsigned)blocks, 256, 0, stream>>>(ids, n_tokens, prev);
    return ANVIL_CUDA_LAUNCHED("resolve_tokens kernel");
}
