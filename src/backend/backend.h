/*
 * backend.h: the one seam between the model and the hardware.
 *
 * A backend is a table of function pointers (anvil_backend_ops) plus its
 * private state. The runtime allocates every buffer through it, copies data
 * in and out through it, and runs each op of the plan through it. Every op
 * of every backend is compared with the CPU backend's in tests.
 *
 * Conventions:
 *  - Activations are 2-D, [rows, cols], dense row-major; rows are the tokens
 *    of the packed batch (or the rows picked for logits).
 *  - Weights are [out, in] as Hugging Face stores them (y = x W^T + b).
 *  - Tensor data pointers are backend memory (host for CPU, device for CUDA).
 *  - Ops are asynchronous on backends that can be (CUDA: one stream);
 *    download() and synchronize() wait.
 *  - Ops return ANVIL_OK or an error (unsupported dtype combination, a CUDA
 *    failure); they never abort.
 *
 * The KV cache of one layer is two tensors, k and v, each
 * [n_blocks, block_size, n_kv_heads, head_dim]: token slot s of the cache is
 * block s / block_size, offset s % block_size.
 */
#ifndef ANVIL_BACKEND_H
#define ANVIL_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/status.h"
#include "core/tensor.h"
#include "sampler/sampler.h"

typedef struct anvil_backend anvil_backend;

/*
 * One forward step's batch metadata, in backend memory (the arrays) with
 * the counts on the host. Built by the runtime from an anvil_batch.
 * Sequences are packed back to back: sequence s owns token rows
 * [seq_starts[s], seq_starts[s + 1]). A token at position p of sequence s
 * is stored in cache slot slots[t] and attends to the cached positions
 * [max(0, p - window + 1), p] of its sequence, looked up through
 * block_tables[s * max_blocks_per_seq + p / block_size].
 */
typedef struct anvil_step {
    int32_t n_tokens;
    int32_t n_seqs;
    int32_t n_logits;
    int32_t max_blocks_per_seq;
    int32_t block_size;
    int32_t max_context;          /* the largest position + 1 in the batch */
    /* Host-side: the leading sequences that bring one token each (their
     * tokens are [0, n_decode)), and the largest position + 1 among them.
     * A backend may run those rows through its decode attention and the
     * rest through its tiled one; 0 when the batch starts with a longer
     * sequence (the executor plans decodes first). */
    int32_t n_decode;
    int32_t decode_max_context;
    const int32_t *token_ids;     /* [n_tokens] */
    const int32_t *positions;     /* [n_tokens] */
    const int32_t *seq_of_token;  /* [n_tokens] */
    const int32_t *seq_starts;    /* [n_seqs + 1] */
    const int32_t *seq_lens;      /* [n_seqs] positions in the cache after this step */
    const int32_t *block_tables;  /* [n_seqs * max_blocks_per_seq] */
    const int32_t *slots;         /* [n_tokens] */
    const int32_t *logit_rows;    /* [n_logits] */
} anvil_step;

/*
 * Allowed-token masks for some logits rows of a sample_rows call (a
 * grammar's, anvil_sample_row.allowed): mask k belongs to row rows[k];
 * token i of that row may be picked only when bit i % 32 of
 * words[k * n_words + i / 32] is set. Bits past the row's columns are
 * ignored. The counts are on the host, the arrays in backend memory.
 */
typedef struct anvil_sample_masks {
    int32_t n;               /* masked rows */
    int32_t n_words;         /* words per mask, >= (cols + 31) / 32 */
    const int32_t *rows;     /* [n] the logits row of each mask */
    const uint32_t *words;   /* [n * n_words] */
} anvil_sample_masks;

/*
 * A rope op's frequencies: tables of [head_dim / 2] floats in backend
 * memory. The angle of pair i of a token at position p is p * inv_freq[i];
 * with inv_freq_long (LongRoPE), a token of sequence s takes
 * inv_freq_long[i] instead when step->seq_lens[s] > long_after (so the
 * choice is the sequence's own, whatever else the batch holds). cos and
 * sin are multiplied by scale, rounded to float before they meet x.
 */
typedef struct anvil_rope_freqs {
    const float *inv_freq;        /* [head_dim / 2] */
    const float *inv_freq_long;   /* [head_dim / 2], or NULL: inv_freq for every token */
    int32_t long_after;           /* with inv_freq_long: the longest sequence that keeps inv_freq */
    float scale;                  /* 0 or 1: none (LongRoPE's attention factor otherwise) */
} anvil_rope_freqs;

typedef struct anvil_attention_args {
    const anvil_tensor *q;        /* [n_tokens, n_heads * head_dim] */
    const anvil_tensor *k;        /* [n_tokens, n_kv_heads * head_dim] (rotated) */
    const anvil_tensor *v;        /* [n_tokens, n_kv_heads * head_dim] */
    anvil_tensor *k_cache;        /* [n_blocks, block_size, n_kv_heads, head_dim]: F32, BF16, F16 or F8_E4M3 */
    anvil_tensor *v_cache;
    anvil_tensor *out;            /* [n_tokens, n_heads * head_dim] */
    const anvil_step *step;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t sliding_window;       /* 0: full causal attention */
    float scale;                  /* usually 1 / sqrt(head_dim) */
    float softcap;                /* 0: none; else each score s = q.k * scale becomes tanh(s / softcap) *
                                     softcap before the softmax (Gemma 2) */
    /* NULL: q and k arrive rotated. Else (backends with attention_rope
     * only) they arrive as the rope op's inputs: the backend rotates q in
     * place and k (as the rope op would, with these frequencies) before it
     * caches k and attends. */
    const anvil_rope_freqs *rope;
    /* An F8_E4M3 cache (the fp8 KV cache, docs/quantization.md) holds
     * fp8(k / k_scale) and fp8(v / v_scale), rounded to nearest even and
     * saturated at +-448; attention reads back fp8 * scale. One pair per
     * layer, host values (0 means 1, so that initializers without them
     * mean unscaled); ignored for other cache dtypes. */
    float k_scale;
    float v_scale;
} anvil_attention_args;

/*
 * A mixture-of-experts layer (transformers' Mixtral / Qwen2-MoE / Qwen3-MoE
 * sparse block) over x [T, H]:
 *   p = softmax(x router^T) in f32, per row over the E experts;
 *   the top_k largest p (the lower expert on ties, as torch.topk), divided
 *   by their sum when norm_topk_prob; with n_group > 1 (DeepSeek-V2's
 *   group_limited_greedy) only among the topk_group groups of E / n_group
 *   experts whose largest p is largest (the lower group on ties), the
 *   others' p taken as 0; then times routed_scale (0: 1);
 *   out = sum over those experts e, in ascending e, of
 *         p_e * down_e(silu(x gate_e^T) * (x up_e^T))
 *       (+ sigmoid(x shared_gate^T) * shared_down(silu(x sg^T) * (x su^T)),
 *        without the sigmoid factor when shared_gate is NULL: DeepSeek's).
 * Expert e's weights are slices of the stacked tensors: gate_e rows
 * [e 2I, e 2I + I) and up_e rows [e 2I + I, (e + 1) 2I) of gate_up, down_e
 * rows [e H, (e + 1) H) of down; the shared expert's gate rows then up rows
 * in shared_gate_up. scratch: backend memory of at least
 * anvil_moe_scratch_bytes(T, ...) bytes, the op's to use (sized once at
 * load, so a step allocates nothing).
 */
typedef struct anvil_moe_args {
    const anvil_tensor *x;              /* [T, H] */
    const anvil_tensor *router;         /* [E, H] */
    const anvil_tensor *gate_up;        /* [E * 2I, H] */
    const anvil_tensor *down;           /* [E * H, I] */
    const anvil_tensor *shared_gate_up; /* [2 Is, H], or NULL: no shared expert */
    const anvil_tensor *shared_down;    /* [H, Is] */
    const anvil_tensor *shared_gate;    /* [1, H], or NULL: the shared expert ungated */
    anvil_tensor *out;                  /* [T, H], aliases none of the above */
    int32_t n_experts;                  /* E */
    int32_t top_k;                      /* 1..E */
    int64_t inter;                      /* I */
    int64_t shared_inter;               /* Is (0 without a shared expert) */
    int32_t norm_topk_prob;
    int32_t n_group;                    /* 0 or 1: plain top-k */
    int32_t topk_group;
    float routed_scale;                 /* 0: 1 */
    void *scratch;
    size_t scratch_bytes;
} anvil_moe_args;

/*
 * Where the pieces of a moe op's scratch lie (byte offsets from its start,
 * each 256-byte aligned) for n_tokens rows, and the bytes in all; the CPU
 * and CUDA ops share it. ANVIL_ERR_UNSUPPORTED when the sizes overflow.
 */
typedef struct anvil_moe_scratch {
    size_t logits;   /* f32 [T, E] the router's logits */
    size_t topk_ids; /* i32 [T, k] each row's experts, ascending */
    size_t topk_w;   /* f32 [T, k] their weights */
    size_t offsets;  /* i32 [E + 1] where each expert's rows start among the sorted rows */
    size_t active;   /* i32 [E + 1] the experts with rows, in order, then their count */
    size_t tiles;    /* i32 [E + 1] (CUDA) the first row tile of each expert in the grouped moe GEMM, then the count */
    size_t order;    /* i32 [T k] sorted row r is (token, slot) order[r] = t k + j */
    size_t row_of;   /* i32 [T k] the sorted row of (token t, slot j) */
    size_t xs;       /* f32 [T k, H] the sorted rows of x */
    size_t g;        /* f32 [T k, I] gate products (then silu(g) * u) */
    size_t u;        /* f32 [T k, I] */
    size_t a;        /* f32 [T k, I] */
    size_t y;        /* f32 [T k, H] each sorted row's expert output */
    size_t sg;       /* f32 [T, Is] the shared expert's gate products */
    size_t su;       /* f32 [T, Is] */
    size_t sa;       /* f32 [T, Is] */
    size_t sy;       /* f32 [T, H] */
    size_t sgate;    /* f32 [T] the shared expert's gate logit */
    size_t bytes;
} anvil_moe_scratch;

anvil_status anvil_moe_scratch_layout(int64_t n_tokens, int64_t hidden, int32_t n_experts, int32_t top_k,
                                      int64_t inter, int64_t shared_inter, anvil_moe_scratch *out);
/* The checks every backend's moe op makes (shapes, dense f32/bf16/f16
 * weights, the scratch's size), with the scratch layout for args->x's rows.
 * _quant also takes quantized experts (gate_up, down, the shared expert's
 * gate_up and down in the canonical form of docs/quantization.md, scales
 * per row or per group of K, so that each expert's rows are a quantized
 * matrix of their own); the router and the shared gate stay dense. */
anvil_status anvil_moe_check_args(const anvil_moe_args *args, anvil_moe_scratch *layout);
anvil_status anvil_moe_check_args_quant(const anvil_moe_args *args, anvil_moe_scratch *layout);
/* Rows [row0, row0 + rows) of the stacked weight w as a weight of its own
 * (an expert's gate, up or down): the data at that row, and for a
 * quantized w its scales and zero points from that row, written into *q
 * (which the view points at: it must outlive the view). Pointer
 * arithmetic only, so it works on device memory too. */
anvil_tensor anvil_moe_weight_rows(const anvil_tensor *w, int64_t row0, int64_t rows, anvil_quant *q);

/*
 * Multi-head latent attention (DeepSeek-V2; include/anvil/network.h,
 * anvil_net_mla). For each token t at position p of sequence s:
 *   rotate the last rope_dim of each head of q[t] and k_pe[t] in
 *   interleaved pairs (x[2i], x[2i+1]) by p * inv_freq[i] (cos and sin
 *   times rope->scale), as transformers' complex apply_rotary_emb;
 *   cache row slots[t] (kv_rank + rope_dim wide) = [c[t], rope(k_pe[t])];
 *   for each head h, over the cached positions j <= p of s:
 *     score_j = (q_nope_h . (W_UK_h c_j) + q_pe_h . kpe_j) * scale,
 *     out[t, h] = sum_j softmax(score)_j W_UV_h c_j,
 *   W_UK_h and W_UV_h the rows [h (nope + v), h (nope + v) + nope) and
 *   [h (nope + v) + nope, (h + 1)(nope + v)) of kv_b.
 * The same numbers two ways: expanded (each cached latent through W_UK and
 * W_UV, then attention as usual: a prefill's many rows share the
 * expansion) or absorbed (q_nope through W_UK^T into the latent space,
 * attention over the latents, the weighted latent through W_UV: what a
 * decode step reads is the latents alone). form picks: 0 the backend's
 * choice (the CPU: expanded for a sequence with more than one row in the
 * step, absorbed for one row), 1 expanded, 2 absorbed.
 */
typedef struct anvil_mla_args {
    const anvil_tensor *q;        /* [T, n_heads * (nope_dim + rope_dim)], f32 */
    const anvil_tensor *c;        /* [T, kv_rank] the normalized latent */
    const anvil_tensor *k_pe;     /* [T, rope_dim], not rotated */
    const anvil_tensor *kv_b;     /* [n_heads * (nope_dim + v_dim), kv_rank], f32/bf16/f16 */
    anvil_tensor *cache;          /* [n_blocks, block_size, 1, kv_rank + rope_dim]: F32, BF16 or F16 */
    anvil_tensor *out;            /* [T, n_heads * v_dim] */
    const anvil_step *step;
    const anvil_rope_freqs *rope; /* [rope_dim / 2] */
    int32_t n_heads;
    int32_t kv_rank;
    int32_t nope_dim;
    int32_t rope_dim;
    int32_t v_dim;
    float scale;
    int32_t form;                 /* 0 the backend's choice, 1 expanded, 2 absorbed */
} anvil_mla_args;

typedef struct anvil_backend_ops {
    const char *name;
    void (*destroy)(anvil_backend *be);

    /* ---- memory */
    anvil_status (*alloc)(anvil_backend *be, size_t bytes, void **out);
    void (*free)(anvil_backend *be, void *ptr);
    anvil_status (*upload)(anvil_backend *be, void *dst, const void *src, size_t bytes);
    anvil_status (*download)(anvil_backend *be, void *dst, const void *src, size_t bytes);
    anvil_status (*synchronize)(anvil_backend *be);
    /* Free device memory in bytes (the host's available memory on CPU). */
    anvil_status (*mem_available)(anvil_backend *be, size_t *out);
    /* The dtype activations are kept in between ops (F32 on CPU). */
    anvil_dtype act_dtype;
    /* Whether weights can stay where the host mapped them (CPU: yes). */
    int weights_in_host_memory;
    /* Whether its matmuls take quantized weights (anvil_tensor.quant): the
     * runtime refuses a quantized model at load, before any upload, on a
     * backend without them (CPU and cuda: yes). */
    int quantized_weights;

    /* ---- ops */
    /* out[t] = table[ids[t]] */
    anvil_status (*embedding)(anvil_backend *be, const anvil_tensor *table, const anvil_step *step,
                              anvil_tensor *out);
    /* out = x / rms(x) * (w_offset + w), per row, w_offset + w summed in
     * f32 (0 but for Gemma's (1 + w)) */
    anvil_status (*rmsnorm)(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w, float eps,
                            float w_offset, anvil_tensor *out);
    /* The same over each head_dim-wide piece of every row (Qwen3 q/k norm). */
    anvil_status (*head_rmsnorm)(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                                 int32_t head_dim, float eps, anvil_tensor *out);
    /* out[T, N] = x[T, K] w[N, K]^T (+ bias[N]) */
    anvil_status (*matmul)(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                           const anvil_tensor *bias, anvil_tensor *out);
    /* Rotates x [T, n_heads * head_dim] in place, rotate-half (GPT-NeoX)
     * layout, with the frequencies of f (anvil_rope_freqs above): pair
     * (x[i], x[i + d/2]) becomes (x[i] c - x[i + d/2] s, x[i + d/2] c + x[i] s),
     * c and s the cosine and sine of the pair's angle times f->scale. */
    anvil_status (*rope)(anvil_backend *be, anvil_tensor *x, const anvil_step *step, int32_t head_dim,
                         const anvil_rope_freqs *f);
    /* Writes k and v into the cache at step->slots, then causal attention of
     * each query over its sequence's cached keys and values. */
    anvil_status (*attention)(anvil_backend *be, const anvil_attention_args *args);
    /* out = silu(gate) * up */
    anvil_status (*silu_mul)(anvil_backend *be, const anvil_tensor *gate, const anvil_tensor *up,
                             anvil_tensor *out);
    /* out = a + b (out may alias a or b) */
    anvil_status (*add)(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b, anvil_tensor *out);
    /* out = gelu_tanh(gate) * up: 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3))) * up */
    anvil_status (*gelu_tanh_mul)(anvil_backend *be, const anvil_tensor *gate, const anvil_tensor *up,
                                  anvil_tensor *out);
    /* out = x * c, c rounded to x's dtype first (out may alias x) */
    anvil_status (*scale)(anvil_backend *be, const anvil_tensor *x, float c, anvil_tensor *out);
    /* out = tanh(x / cap) * cap, in f32 (out may alias x) */
    anvil_status (*softcap)(anvil_backend *be, const anvil_tensor *x, float cap, anvil_tensor *out);
    /* out[i] = x[step->logit_rows[i]] */
    anvil_status (*gather_rows)(anvil_backend *be, const anvil_tensor *x, const anvil_step *step,
                                anvil_tensor *out);
    /* GPT-2's ops (the runtime refuses a model that needs one a backend lacks).
     * out = (x - mean) / sqrt(var + eps) * w + b per row, mean and biased
     * variance in f32 (torch.nn.LayerNorm); out may alias x */
    anvil_status (*layernorm)(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                              const anvil_tensor *b, float eps, anvil_tensor *out);
    /* out = gelu_tanh(x): 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) (out may alias x) */
    anvil_status (*gelu_tanh)(anvil_backend *be, const anvil_tensor *x, anvil_tensor *out);
    /* out[t] = x[t] + table[step->positions[t]], summed in f32 (learned
     * position embeddings); a position past the table's rows is
     * ANVIL_ERR_INVALID_ARG where the backend can see it (the CPU), and the
     * runtime refuses such positions before any step (max_position_embeddings);
     * out may alias x */
    anvil_status (*pos_embedding)(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *table,
                                  const anvil_step *step, anvil_tensor *out);

    /* ---- optional (NULL where a backend has none; the runtime then does
     * without) */

    /* ids[r] = the column of the largest value of row r of x [rows, cols]
     * (the lowest such column on ties), or -1 for a poisoned row (as
     * anvil_greedy_pick), ids in backend memory: greedy decoding without
     * copying the logits out. */
    anvil_status (*argmax_rows)(anvil_backend *be, const anvil_tensor *x, int32_t *ids);

    /* ids[r] = the token the sampler's anvil_sampler_pick (sampler/sampler.h)
     * picks from row r of the logits x [rows, cols] with draws[r]: its
     * parameters and the values the host derived from them (greedy,
     * 1/temperature, logf(min_p), the uniform u), used as given; -1 for a
     * poisoned row, one with a NaN or +inf or no value above -inf, greedy or
     * not (the draw was not used; the runtime's guard against a damaged
     * model). draws and ids are in backend memory: sampling without copying
     * the logits out. masks (NULL, or n 0: none) restrict some rows to the
     * tokens they allow (anvil_sample_masks): a disallowed token's logit is
     * -inf before anything else looks at the row, exactly as if the host
     * had written -inf there (so a NaN there no longer poisons the row, and
     * a row that allows nothing gives -1). The op writes those -inf into x
     * itself: a masked row's logits are not kept. */
    anvil_status (*sample_rows)(anvil_backend *be, const anvil_tensor *x, const anvil_sample_draw *draws,
                                const anvil_sample_masks *masks, int32_t *ids);

    /*
     * Step graphs: the runtime brackets the ops of a step whose launches
     * depend only on `key` (the same shapes, buffers and kernel choices;
     * the step arrays are uploaded into the same backend buffer before
     * each step) with graph_begin / graph_end. graph_begin sets *action:
     *   ANVIL_GRAPH_RUN       run the ops as usual (graph_end not called);
     *   ANVIL_GRAPH_RECORDING the ops that follow are recorded, not run;
     *                         then graph_end;
     *   ANVIL_GRAPH_REPLAYED  the graph recorded for key was launched:
     *                         skip the ops.
     * graph_end(ops_status: what the recorded ops returned) sets *ran = 1
     * when the recording was kept and launched; with *ran = 0 nothing ran
     * and the caller runs the ops as usual. Anything that changes what the
     * ops would launch (a scratch buffer reallocated, knobs) drops the
     * backend's graphs.
     */
    anvil_status (*graph_begin)(anvil_backend *be, uint64_t key, int *action);
    anvil_status (*graph_end)(anvil_backend *be, uint64_t key, anvil_status ops_status, int *ran);

    /*
     * Fused ops: one launch where the separate ops take several (decode
     * steps are bound by per-kernel latency as much as by bandwidth). The
     * runtime uses them where the network has the pattern
     * (src/builder/fuse_plan.c) and runs the separate ops elsewhere or
     * when a backend has none. Each gives what its separate ops would give,
     * on the same buffers, rounding where they round.
     */
    /* sum = a + b, norm = rmsnorm(sum) * w (add, then rmsnorm). sum may
     * alias a or b; norm aliases none of a, b, sum. */
    anvil_status (*add_rmsnorm)(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                const anvil_tensor *w, float eps, anvil_tensor *sum, anvil_tensor *norm);
    /* out[i] = x w[i]^T (+ bias[i]) for i < n (1..ANVIL_MATMUL_MULTI_MAX),
     * the matmuls of one input (q, k and v). bias[i] may be NULL. */
    anvil_status (*matmul_multi)(anvil_backend *be, const anvil_tensor *x, int n, const anvil_tensor *const *w,
                                 const anvil_tensor *const *bias, anvil_tensor *const *out);
    /* out = silu(x wg^T + bg) * (x wu^T + bu) (the biases may be NULL);
     * gate and up have the two products' shape and are the backend's to
     * use as scratch (their contents afterwards are unspecified). */
    anvil_status (*matmul_silu_mul)(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *wg,
                                    const anvil_tensor *bg, const anvil_tensor *wu, const anvil_tensor *bu,
                                    anvil_tensor *gate, anvil_tensor *up, anvil_tensor *out);
    /* The residual add and the norm before them in the same op, for the
     * GEMV sizes of decode steps: sum = a + b, x = rmsnorm(sum) * norm_w
     * (add_rmsnorm), then matmul_multi of x (w, bias, out, n) or
     * matmul_silu_mul of x (wg, bg, wu, bu, gate, up, out), each giving
     * what those two ops in a row give. x is the norm's buffer [T, K], the
     * backend's to use as scratch (its contents afterwards unspecified).
     * sum, x and the outputs alias none of a, b, sum, x or each other. */
    anvil_status (*add_rmsnorm_matmul_multi)(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                             const anvil_tensor *norm_w, float eps, anvil_tensor *sum,
                                             anvil_tensor *x, int n, const anvil_tensor *const *w,
                                             const anvil_tensor *const *bias, anvil_tensor *const *out);
    anvil_status (*add_rmsnorm_matmul_silu_mul)(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                                const anvil_tensor *norm_w, float eps, anvil_tensor *sum,
                                                anvil_tensor *x, const anvil_tensor *wg, const anvil_tensor *bg,
                                                const anvil_tensor *wu, const anvil_tensor *bu, anvil_tensor *gate,
                                                anvil_tensor *up, anvil_tensor *out);
    /* 1: attention takes rope (see anvil_attention_args) */
    int attention_rope;

    /* ---- optional: loading weights fast from several threads (NULL where
     * a backend has none: the loader then uses upload, from one thread) */
    /* Pinned host memory, from which copies to the device run at full
     * speed and asynchronously; freed with host_free. */
    anvil_status (*host_alloc)(anvil_backend *be, size_t bytes, void **out);
    void (*host_free)(anvil_backend *be, void *ptr);
    /* Copies bytes from src (memory of host_alloc) to dst on copy lane
     * `lane` (0 .. ANVIL_UPLOAD_LANES - 1) and returns before the copy is
     * done; upload_wait(lane) waits for every copy of the lane. A lane
     * belongs to one thread at a time; different lanes may be used from
     * different threads at once, and their copies overlap. */
    anvil_status (*upload_async)(anvil_backend *be, int lane, void *dst, const void *src, size_t bytes);
    anvil_status (*upload_wait)(anvil_backend *be, int lane);

    /* ---- optional: steps launched ahead (anvil_runtime_forward_sample_launch;
     * NULL where a backend has none: the runtime then resolves on the host
     * and downloads synchronously) */
    /* Rewrites the step's token ids in place (step->token_ids, backend
     * memory), in stream order: an id t < 0 becomes prev_ids[-1 - t] (the
     * id a previous step sampled for its logits row -1 - t, backend
     * memory), or 0 where that is negative (a poisoned row: its request
     * fails on the host). Ids >= 0 stay. Runs inside a step graph. */
    anvil_status (*resolve_tokens)(anvil_backend *be, const anvil_step *step, const int32_t *prev_ids);
    /* Device to host into dst (memory of host_alloc), after everything
     * queued before it, without waiting: download_wait(slot) waits for
     * that copy alone (slot 0 or 1, one copy in flight per slot) and
     * reports a kernel's invalid-data flag raised before it. */
    anvil_status (*download_async)(anvil_backend *be, int slot, void *dst, const void *src, size_t bytes);
    anvil_status (*download_wait)(anvil_backend *be, int slot);

    /* ---- mixture of experts (anvil_moe_args above); NULL: the runtime
     * refuses a model with moe ops */
    anvil_status (*moe)(anvil_backend *be, const anvil_moe_args *args);

    /* ---- multi-head latent attention (anvil_mla_args above); NULL: the
     * runtime refuses a model with mla ops at load */
    anvil_status (*mla)(anvil_backend *be, const anvil_mla_args *args);

    /* ---- a vocabulary slice's lookup (tensor parallelism, docs/parallel.md):
     * out[t] = table[ids[t] - first_id] for ids in [first_id, first_id +
     * table rows), zeros for the others (another rank's rows; an
     * all_reduce then sums the ranks' lookups). NULL: the runtime keeps the
     * embedding whole on every rank. */
    anvil_status (*embedding_part)(anvil_backend *be, const anvil_tensor *table, int64_t first_id,
                                   const anvil_step *step, anvil_tensor *out);
} anvil_backend_ops;

#define ANVIL_MATMUL_MULTI_MAX 4
#define ANVIL_UPLOAD_LANES 32

enum { ANVIL_GRAPH_RUN = 0, ANVIL_GRAPH_RECORDING = 1, ANVIL_GRAPH_REPLAYED = 2 };

struct anvil_backend {
    const anvil_backend_ops *ops;
    void *impl;
};

/*
 * How a backend is made. The runtime fills it from anvil_runtime_options;
 * nothing below reads the environment (the anvil command reads ANVIL_*
 * variables into those options, tools/cli_env.c). Zero everywhere is the
 * default: the best of everything.
 */
typedef struct anvil_backend_config {
    int n_threads;             /* CPU threads; <= 0: one per online CPU */
    anvil_dtype act_dtype;     /* CUDA: activations in F32 (the exact mode), BF16 or F16; the CPU uses F32 */
    const char *cpu_isa;       /* CPU: NULL or "": the best code path this CPU runs; "scalar", "avx2",
                                  "avx512": that one, for comparisons (the best when the CPU lacks it) */
    int no_cuda_graphs;        /* CUDA: 1: never record or replay step graphs */
    int no_pdl;                /* CUDA: 1: never launch with programmatic dependent launch (sm_90+) */
    int pdl;                   /* CUDA: kept for callers of session 31, when dependent launch was off by
                                  default outside exclusive-process mode: it is on on sm_90+ now (no_pdl
                                  turns it off) */
    int attn_combine_in_kernel; /* CUDA: 1: split-K decode attention merges its splits in the decode
                                   kernel, not in a combine kernel (the knob of the same name) */
    int cuda_matmul_quant;     /* CUDA: the knob matmul_quant (quantized matmuls' kernel choice); 0 automatic */
    int cuda_rows_warps;       /* CUDA: the knob rows_warps (the row GEMVs' warps a block); 0 theirs */
    int cuda_moe_loop;         /* CUDA: the knob moe_loop (the moe op's experts); 0 automatic */
    int cuda_fp8_unshared;     /* CUDA: 1: the knob fp8_act_share = 2 (fp8 activations not shared) */
    const char *cuda_module;   /* CUDA: the path of libanvil-cuda.so to load; NULL: the one next to
                                  libanvil, else the dynamic loader's (backend_module.h) */
} anvil_backend_config;

/* n_threads 0, act_dtype F32, the rest 0 */
void anvil_backend_config_default(anvil_backend_config *c);

/* The CPU backend. n_threads <= 0: one per online CPU. */
anvil_status anvil_backend_cpu_create(int n_threads, anvil_backend **out);
/* The same with a whole config (cpu_isa). */
anvil_status anvil_backend_cpu_create_config(const anvil_backend_config *c, anvil_backend **out);

/* The CUDA backend on device `device` (only in builds with CUDA), keeping
 * activations in act_dtype (F32 for the exact mode, BF16 or F16). */
anvil_status anvil_backend_cuda_create(int device, anvil_dtype act_dtype, anvil_backend **out);
/* The same with a whole config (act_dtype, no_cuda_graphs, no_pdl). */
anvil_status anvil_backend_cuda_create_config(int device, const anvil_backend_config *c, anvil_backend **out);

/* Creates a backend from a name: "cpu", "cuda" or "cuda:N"; c NULL: the
 * defaults. */
anvil_status anvil_backend_create(const char *name, const anvil_backend_config *c, anvil_backend **out);

/* Destroys a backend. NULL is a no-op. */
void anvil_backend_free(anvil_backend *be);

#endif
