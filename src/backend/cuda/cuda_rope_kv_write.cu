/*
 * RoPE of a step's q and k and the write of k and v into the paged cache,
 * in one launch (what the rope op twice and the KV write do in three): q is
 * rotated in place, k is rotated in place and into its cache slot, v copied
 * to its slot. The rotation is the rope op's to the bit (cuda_rope.cu: the
 * same table and angle, sincosf, the same scaling, and products rounded
 * before the sum).
 * Blocks (token, part of its work); a slot outside the cache skips the token's cache
 * writes and sets ANVIL_CUDA_BAD_SLOT, as the KV write does. An fp8 cache
 * takes the rotated k (rounded to T first, as the rope op leaves it) and v
 * divided by their scales and rounded to e4m3 (anvil_kv_put).
 */
#include "backend/cuda/cuda_common.cuh"

template <typename T, typename TC>
__device__ __forceinline__ void anvil_rotate_pair(T *xh, int i, int half, float c, float s, TC *copy, float cscale)
{
    const float x1 = anvil_to_f32(xh[i]), x2 = anvil_to_f32(xh[i + half]);
    const T y1 = anvil_from_f32<T>(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
    const T y2 = anvil_from_f32<T>(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
    xh[i] = y1;
    xh[i + half] = y2;
    if (copy != nullptr) {
        copy[i] = anvil_kv_put<T, TC>(y1, cscale);
        copy[i + half] = anvil_kv_put<T, TC>(y2, cscale);
    }
}

/* A token's work items: its rotations (q's pairs, then k's) and then v's
 * elements, blockIdx.y and threadIdx.x striding over them. */
template <typename T, typename TC>
__global__ void anvil_rope_kv_write_kernel(T *q, T *k, const T *v, TC *k_cache, TC *v_cache,
                                           const int32_t *slots, const int32_t *positions,
                                           const anvil_cuda_rope rope, int32_t n_tokens, int n_heads,
                                           int n_kv_heads, int head_dim, int64_t n_slots, float k_scale,
                                           float v_scale, int *err)
{
    anvil_pdl_wait();
    anvil_pdl_launch();
    const int half = head_dim / 2;
    const int64_t qw = (int64_t)n_heads * head_dim, kw = (int64_t)n_kv_heads * head_dim;
    const int q_pairs = n_heads * half, all_pairs = (n_heads + n_kv_heads) * half;
    const int64_t items = all_pairs + kw;
    for (int32_t t = blockIdx.x; t < n_tokens; t += gridDim.x) {
        const int64_t slot = slots[t];
        const bool slot_ok = slot >= 0 && slot < n_slots;
        if (!slot_ok && threadIdx.x == 0 && blockIdx.y == 0)
            anvil_flag(err, ANVIL_CUDA_BAD_SLOT);
        const float pos = (float)positions[t];
        const float *inv_freq = anvil_rope_table(rope, t);
        for (int64_t it = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; it < items;
             it += (int64_t)gridDim.y * blockDim.x) {
            if (it >= all_pairs) {
                const int64_t i = it - all_pairs;
                if (slot_ok)
                    v_cache[slot * kw + i] = anvil_kv_put<T, TC>(v[(int64_t)t * kw + i], v_scale);
                continue;
            }
            const int r = (int)it;
            const bool is_q = r < q_pairs;
            const int rr = is_q ? r : r - q_pairs;
            const int h = rr / half, i = rr - h * half;
            float s, c;
            sincosf(pos * inv_freq[i], &s, &c);
            c = __fmul_rn(c, rope.scale);
            s = __fmul_rn(s, rope.scale);
            if (is_q)
                anvil_rotate_pair<T, TC>(q + t * qw + (int64_t)h * head_dim, i, half, c, s, (TC *)nullptr, 1.0f);
            else
                anvil_rotate_pair<T, TC>(k + t * kw + (int64_t)h * head_dim, i, half, c, s,
                                         slot_ok ? k_cache + slot * kw + (int64_t)h * head_dim : nullptr,
                                         k_scale);
        }
    }
}

extern "C" anvil_status anvil_cuda_launch_rope_kv_write(cudaStream_t stream, const anvil_cuda_attn *a)
{
    CHECK(a->rope.inv_freq != NULL && a->head_dim % 2 == 0, ANVIL_ERR_INVALID_ARG,
          "rope_kv_write: no frequencies, or an odd head_dim %d", a->head_dim);
    CHECK(a->rope.inv_freq_long == NULL || (a->rope.seq_of_token != NULL && a->rope.seq_lens != NULL),
          ANVIL_ERR_INVALID_ARG, "rope_kv_write: two tables need the step's seq_of_token and seq_lens");
    if (a->n_tokens == 0)
        return ANVIL_OK;
    const int64_t n_slots = (int64_t)a->n_blocks * a->block_size;
    const int pairs = (a->n_heads + a->n_kv_heads) * (a->head_dim / 2);
    const unsigned threads = pairs >= 256 ? 256 : pairs >= 128 ? 128 : 64;
    /* A token's rotations and v copy spread over up to 16 blocks (each
     * thread one item): a decode step of a few tokens had one block per
     * token, and its dozen dependent rounds of loads and stores took ~12 us
     * of the step's critical path per layer (ncu, 8B, batch 1); at prefill
     * sizes the token blocks alone fill the GPU. */
    const int64_t items = pairs + (int64_t)a->n_kv_heads * a->head_dim;
    int64_t gy = (items + threads - 1) / threads;
    if (gy > 16)
        gy = 16;
    if (a->n_tokens >= 1024)
        gy = 1;
    const dim3 grid(a->n_tokens < 65535 ? (unsigned)a->n_tokens : 65535u, (unsigned)gy);
    if (a->cache_dt == ANVIL_DTYPE_F8_E4M3) {
        ANVIL_CUDA_DISPATCH(a->dt, anvil_launch(anvil_rope_kv_write_kernel<T, __nv_fp8_e4m3>, grid, threads, 0,
                                                stream, a->pdl, (T *)a->q, (T *)a->k, (const T *)a->v,
                                                (__nv_fp8_e4m3 *)a->k_cache, (__nv_fp8_e4m3 *)a->v_cache, a->slots,
                                                a->positions, a->rope, a->n_tokens, a->n_heads, a->n_kv_heads,
                                                a->head_dim, n_slots, a->k_scale, a->v_scale, a->err));
        return ANVIL_CUDA_LAUNCHED("rope_kv_write kernel (fp8)");
    }
    ANVIL_CUDA_DISPATCH(a->dt,
                        anvil_launch(anvil_rope_kv_write_kernel<T, T>, grid, threads, 0, stream, a->pdl, (T *)a->q,
                                     (T *)a->k, (const T *)a->v, (T *)a->k_cache, (T *)a->v_cache, a->slots,
                                     a->positions, a->rope, a->n_tokens, a->n_heads, a->n_kv_heads,
                                     a->head_dim, n_slots, 1.0f, 1.0f, a->err));
    return ANVIL_CUDA_LAUNCHED("rope_kv_write kernel");
}
