/* Learned absolute position embeddings (GPT-2's wpe): out[t, :] = x[t, :] +
 * table[positions[t], :], summed in f32 and rounded once to the activation
 * dtype (out may alias x). A position outside the table adds nothing and
 * sets ANVIL_CUDA_BAD_POSITION in the error word (the runtime refuses such
 * positions before a step: max_position_embeddings). */
#include "backend/cuda/cuda_common.cuh"

template <typename T>
__global__ void anvil_pos_embedding_kernel(const T *x, const void *table, int table_dt, int64_t n_positions,
                                           const int32_t *positions, int32_t n_tokens, T *out, int64_t width,
                                           int *err)
{
    for (int32_t t = blockIdx.x; t < n_tokens; t += gridDim.x) {
        const int32_t p = positions[t];
        const bool ok = p >= 0 && p < n_positions;
        if (!ok && threadIdx.x == 0)
            anvil_flag(err, ANVIL_CUDA_BAD_POSITION);
        for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
            const float e = ok ? anvil_load_any(table, table_dt, (int64_t)p * width + i) : 0.0f;
            out[(int64_t)t * width + i] = anvil_from_f32<T>(anvil_to_f32(x[(int64_t)t * width + i]) + e);
        }
    }
}

extern "C" anvil_status anvil_cuda_launch_pos_embedding(cudaStream_t stream, const void *x, const void *table,
                                                        anvil_dtype table_dt, int64_t n_positions,
                                                        const int32_t *positions, int32_t n_tokens, void *out,
                                                        anvil_dtype act_dt, int64_t width, int *err)
{
    CHECK(anvil_cuda_is_float_dtype(table_dt), ANVIL_ERR_UNSUPPORTED, "pos_embedding: table dtype %s",
          anvil_dtype_name(table_dt));
    if (n_tokens == 0 || width == 0)
        return ANVIL_OK;
    const unsigned grid = n_tokens < 65535 ? (unsigned)n_tokens : 65535u;
    ANVIL_CUDA_DISPATCH(act_dt, anvil_pos_embedding_kernel<T><<<grid, 256, 0, stream>>>(
                                    (const T *)x, table, (int)table_dt, n_positions, positions, n_tokens, (T *)out,
                                    width, err));
    return ANVIL_CUDA_LAUNCHED("pos_embedding kernel");
}
