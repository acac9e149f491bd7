/* The new keys and values of a step into the paged cache: row t of k and v
 * goes to cache slot slots[t] (block slots[t] / block_size, offset
 * slots[t] % block_size). A slot outside the cache is skipped and sets
 * ANVIL_CUDA_BAD_SLOT in the error word. An fp8 cache (TC __nv_fp8_e4m3)
 * takes k / k_scale and v / v_scale rounded to e4m3 (nearest even,
 * saturating), as the CPU reference writes it. */
#include "backend/cuda/cuda_common.cuh"

template <typename T, typename TC>
__global__ void anvil_kv_write_kernel(const T *k, const T *v, TC *k_cache, TC *v_cache, const int32_t *slots,
                                      int32_t n_tokens, int64_t kw, int64_t n_slots, float k_scale, float v_scale,
                                      int *err)
{
    for (int32_t t = blockIdx.x; t < n_tokens; t += gridDim.x) {
        const int64_t slot = slots[t];
        if (slot < 0 || slot >= n_slots) {
            if (threadIdx.x == 0)
                anvil_flag(err, ANVIL_CUDA_BAD_SLOT);
            continue;
        }
        for (int64_t i = threadIdx.x; i < kw; i += blockDim.x) {
            k_cache[slot * kw + i] = anvil_kv_put<T, TC>(k[(int64_t)t * kw + i], k_scale);
            v_cache[slot * kw + i] = anvil_kv_put<T, TC>(v[(int64_t)t * kw + i], v_scale);
        }
    }
}

extern "C" anvil_status anvil_cuda_launch_kv_write(cudaStream_t stream, const anvil_cuda_attn *a)
{
    if (a->n_tokens == 0)
        return ANVIL_OK;
    const int64_t kw = (int64_t)a->n_kv_heads * a->head_dim;
    const int64_t n_slots = (int64_t)a->n_blocks * a->block_size;
    const unsigned grid = a->n_tokens < 65535 ? (unsigned)a->n_tokens : 65535u;
    const unsigned threads = kw >= 256 ? 256 : kw >= 128 ? 128 : 64;
    if (a->cache_dt == ANVIL_DTYPE_F8_E4M3) {
        ANVIL_CUDA_DISPATCH(a->dt, anvil_kv_write_kernel<T, __nv_fp8_e4m3><<<grid, threads, 0, stream>>>(
                                       (const T *)a->k, (const T *)a->v, (__nv_fp8_e4m3 *)a->k_cache,
                                       (__nv_fp8_e4m3 *)a->v_cache, a->slots, a->n_tokens, kw, n_slots,
                                       a->k_scale, a->v_scale, a->err));
        return ANVIL_CUDA_LAUNCHED("kv_write kernel (fp8)");
    }
    ANVIL_CUDA_DISPATCH(a->dt, anvil_kv_write_kernel<T, T><<<grid, threads, 0, stream>>>(
                                   (const T *)a->k, (const T *)a->v, (T *)a->k_cache, (T *)a->v_cache, a->slots,
                                   a->n_tokens, kw, n_slots, 1.0f, 1.0f, a->err));
    return ANVIL_CUDA_LAUNCHED("kv_write kernel");
}
