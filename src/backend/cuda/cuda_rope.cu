/* Rotate-half RoPE in place: for each head and pair i < head_dim / 2,
 * angle = (float)position * inv_freq[i] (the token's table: anvil_rope_table),
 * c and s its cosine and sine times the rope's scale, then
 * (x[i], x[i + d/2]) = (x[i] c - x[i + d/2] s, x[i + d/2] c + x[i] s).
 * Products are rounded before the sum (no FMA contraction) so that f32
 * results match the CPU reference to the last bit or two. */
#include "backend/cuda/cuda_common.cuh"

template <typename T>
__global__ void anvil_rope_kernel(T *x, int64_t n_tokens, int64_t width, int head_dim, const int32_t *positions,
                                  const anvil_cuda_rope rope)
{
    const int half = head_dim / 2;
    const int64_t pairs_per_row = width / 2;
    const int64_t total = n_tokens * pairs_per_row;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = idx / pairs_per_row;
        const int64_t r = idx - t * pairs_per_row;
        const int64_t h = r / half;
        const int i = (int)(r - h * half);
        const float angle = (float)positions[t] * anvil_rope_table(rope, t)[i];
        float s, c;
        sincosf(angle, &s, &c);
        c = __fmul_rn(c, rope.scale);
        s = __fmul_rn(s, rope.scale);
        T *xh = x + t * width + h * head_dim;
        const float x1 = anvil_to_f32(xh[i]), x2 = anvil_to_f32(xh[i + half]);
        xh[i] = anvil_from_f32<T>(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
        xh[i + half] = anvil_from_f32<T>(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
    }
}

extern "C" anvil_status anvil_cuda_launch_rope(cudaStream_t stream, void *x, anvil_dtype act_dt, int64_t n_tokens,
                                               int64_t width, int32_t head_dim, const int32_t *positions,
                                               const anvil_cuda_rope *rope)
{
    CHECK(head_dim > 0 && head_dim % 2 == 0 && width % head_dim == 0, ANVIL_ERR_INVALID_ARG,
          "rope: head_dim %d, width %lld", head_dim, (long long)width);
    CHECK(rope != NULL && rope->inv_freq != NULL &&
              (rope->inv_freq_long == NULL || (rope->seq_of_token != NULL && rope->seq_lens != NULL)),
          ANVIL_ERR_INVALID_ARG, "rope: missing tables or step arrays");
    const int64_t total = n_tokens * (width / 2);
    if (total == 0)
        return ANVIL_OK;
    ANVIL_CUDA_DISPATCH(act_dt, anvil_rope_kernel<T><<<anvil_grid_for(total, 256), 256, 0, stream>>>(
                                    (T *)x, n_tokens, width, head_dim, positions, *rope));
    return ANVIL_CUDA_LAUNCHED("rope kernel");
}
