/*
 * Multi-head latent attention on CUDA (backend.h, anvil_mla_args;
 * DeepSeek-V2): the op (cuda_mla.c: checks, launch) and its kernels
 * (cuda_mla.cu). A first version, correct before fast:
 *   1. anvil_mla_cache_kernel: one block per token writes [c, rope(k_pe)]
 *      into its slot (rope in interleaved pairs, cos and sin times the
 *      table's scale), a slot outside the cache flagged ANVIL_CUDA_BAD_SLOT;
 *   2. anvil_mla_attn_kernel: one block per (token, head), every row in
 *      the absorbed form whatever args->form says: q_lat = W_UK_h^T q_nope
 *      in shared memory, each warp an online softmax over every 8th cached
 *      position (scores q_lat . c_j + q_pe . kpe_j, the weighted latents
 *      summed per warp), the warps merged, then out = W_UV_h o_lat. A
 *      prefill chunk re-reads the cached latents once per row and head
 *      (no expansion shared between rows): right, and slow for long
 *      prompts; a tiled prefill is the next step (docs/cuda-backend.md).
 * Every sum in f32; activations and the cache in the backend's act dtype,
 * kv_b in f32/bf16/f16.
 */
#ifndef ANVIL_BACKEND_CUDA_MLA_H
#define ANVIL_BACKEND_CUDA_MLA_H

#include "backend/cuda/cuda_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* kv_rank above this is refused (the kernel keeps 9 rows of it in shared memory) */
#define ANVIL_CUDA_MLA_MAX_RANK 1024
#define ANVIL_CUDA_MLA_MAX_ROPE 256

typedef struct anvil_cuda_mla {
    const void *q, *c, *k_pe; /* act dtype */
    const void *kv_b;         /* [n_heads (nope + v), rank], kv_b_dt */
    anvil_dtype kv_b_dt;
    void *cache;              /* [n_blocks * block_size, rank + rope], act dtype */
    void *out;
    anvil_dtype dt;           /* the activations' and the cache's */
    const int32_t *positions, *seq_of_token, *block_tables, *slots; /* device */
    const float *inv_freq;    /* [rope / 2], device */
    float rope_scale;         /* 1 for none */
    int32_t n_tokens, n_seqs, max_blocks_per_seq, block_size, n_blocks;
    int32_t n_heads, rank, nope, rope, v;
    float scale;
    int *err;
} anvil_cuda_mla;

anvil_status anvil_cuda_launch_mla(cudaStream_t stream, const anvil_cuda_mla *m);
anvil_status anvil_cuda_op_mla(anvil_backend *be, const anvil_mla_args *args);

#ifdef __cplusplus
}
#endif
#endif
