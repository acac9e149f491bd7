/*
 * Multi-head latent attention on CUDA (backend.h, anvil_mla_args;
 * DeepSeek-V2): the op (cuda_mla.c: checks, the choice of form, launch)
 * and its kernels. Every call first writes the step's rows into the latent
 * cache (anvil_mla_cache_kernel, cuda_mla.cu: one block per token writes
 * [c, rope(k_pe)] into its slot, rope in interleaved pairs with cos and
 * sin times the table's scale, a slot outside the cache flagged
 * ANVIL_CUDA_BAD_SLOT). Then each row takes one of three forms:
 *   - expanded on tensor cores (cuda_mla_prefill.cu), for the rows of
 *     prefill chunks (after the step's decode rows): each sequence's
 *     latents gathered, K_nope and V of every head by one GEMM with kv_b
 *     (the matmul op), then flash attention with qk dim nope + rope and v
 *     dim v (192 / 128 for DeepSeek-V2);
 *   - absorbed on tensor cores (cuda_mla_mma.cu; bf16/f16, kv_rank 128,
 *     256 or 512, rope_dim a multiple of 16): q_abs = [W_UK_h^T q_nope,
 *     rope(q_pe)] for all heads, then per (token, 16 heads, split of the
 *     context) the MQA of those 16 rows over the cached [c, k_pe] rows on
 *     mma.m16n8k16 (each cached row read once for the 16 heads), the
 *     splits merged and out = W_UV_h o_lat;
 *   - the reference (cuda_mla.cu, anvil_mla_attn_kernel; f32, other
 *     shapes, and knob mla_kernel 1): one block per (token, head): q_lat =
 *     W_UK_h^T q_nope in shared memory, each warp an online softmax over
 *     every 8th cached position (scores q_lat . c_j + q_pe . kpe_j, the
 *     weighted latents summed per warp), the warps merged, then out =
 *     W_UV_h o_lat. Every head re-reads the latents, a prefill chunk once
 *     per row and head: right, and slow.
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
/* nope_dim above this takes the reference kernel (q_abs keeps 8 tokens' q_nope in shared memory) */
#define ANVIL_CUDA_MLA_MMA_MAX_NOPE 256

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

/* The cache write, then the reference attention kernel. */
anvil_status anvil_cuda_launch_mla(cudaStream_t stream, const anvil_cuda_mla *m);
/* The cache write alone (both forms start with it). */
anvil_status anvil_cuda_launch_mla_cache(cudaStream_t stream, const anvil_cuda_mla *m);

/* The tensor-core form's workspace: q_abs [T, n_heads, rank + rope] of the
 * act dtype at 0, the splits' (m, l) [T, n_heads, n_splits, 2] f32 at
 * ml_offset and their acc [T, n_heads, n_splits, rank] f32 at acc_offset. */
typedef struct anvil_cuda_mla_ws {
    size_t ml_offset, acc_offset, bytes;
} anvil_cuda_mla_ws;
void anvil_cuda_mla_mma_ws(const anvil_cuda_mla *m, int32_t n_splits, anvil_cuda_mla_ws *out);
/* Whether the tensor-core form takes m's dtype and sizes (and its shared
 * memory fits smem_optin); its shared memory a block. */
int anvil_cuda_mla_mma_ok(const anvil_cuda_mla *m, size_t smem_optin);
size_t anvil_cuda_mla_mma_smem(const anvil_cuda_mla *m);
/* The tensor-core absorbed form (after the cache write) for m's tokens, the
 * context of each cut into n_splits of split_len keys (cuda_mla_map.h,
 * mla_split_keys); ws holds anvil_cuda_mla_mma_ws's bytes. */
anvil_status anvil_cuda_launch_mla_mma(cudaStream_t stream, const anvil_cuda_mla *m, int32_t n_splits,
                                       int32_t split_len, void *ws, size_t smem_optin);

/* The expanded form's buffers (cuda_mla_prefill.cu), for the rows [t0,
 * n_tokens) of sequences [s0, s0 + n_seqs), L cached rows a sequence. */
typedef struct anvil_cuda_mla_xp {
    int32_t t0, s0, n_seqs, L;
    int32_t *lens; /* [n_seqs] each sequence's cached length */
    void *x;       /* [n_seqs L, rank] the latents, act dtype (rows past a length zero) */
    void *kpe;     /* [n_seqs L, rope] the rotated rope keys */
    void *kv;      /* [n_seqs L, n_heads (nope + v)] = x kv_b^T: K_nope and V of every head */
    void *q2;      /* [n_tokens - t0, n_heads, nope + rope] q with its rope part rotated */
} anvil_cuda_mla_xp;
/* The buffers' places in ws (NULL: sizes only) and the bytes they take. */
void anvil_cuda_mla_xp_layout(const anvil_cuda_mla *m, int32_t t0, int32_t s0, int32_t n_seqs, int32_t L, void *ws,
                              anvil_cuda_mla_xp *out, size_t *bytes);
/* Whether the expanded form's attention takes m (bf16/f16, nope + rope and
 * v 192 and 128, 96 and 64, or 48 and 48; the dims multiples of 8). */
int anvil_cuda_mla_xp_ok(const anvil_cuda_mla *m, size_t smem_optin);
/* The lengths, the gather of the latents and rope keys, q2. */
anvil_status anvil_cuda_launch_mla_xp_prep(cudaStream_t stream, const anvil_cuda_mla *m, const anvil_cuda_mla_xp *x);
/* The flash attention over x->kv and x->kpe into m->out's rows [t0, n_tokens). */
anvil_status anvil_cuda_launch_mla_xp_attn(cudaStream_t stream, const anvil_cuda_mla *m, const anvil_cuda_mla_xp *x,
                                           size_t smem_optin);
anvil_status anvil_cuda_op_mla(anvil_backend *be, const anvil_mla_args *args);

#ifdef __cplusplus
}
#endif
#endif
