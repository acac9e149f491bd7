/*
 * cpu_reference.h: plain scalar versions of every backend op.
 *
 * These are the definition that the optimized CPU ops and the CUDA ops are
 * tested against: straight loops, one element at a time, sums in double,
 * no threads. Same arguments and the same checks as the backend ops (minus
 * the backend); tensors are host memory. They are slow on purpose.
 *
 *     anvil_tensor want = ...;
 *     TRY(anvil_cpu_ref_matmul(&x, &w, NULL, &want));
 *     TRY(be->ops->matmul(be, &x, &w, NULL, &got));
 *
 * Semantics follow Hugging Face transformers in fp32; each function says
 * exactly what it computes.
 */
#ifndef ANVIL_BACKEND_CPU_REFERENCE_H
#define ANVIL_BACKEND_CPU_REFERENCE_H

#include "backend/backend.h"

/* out[t, :] = table[token_ids[t], :] as f32. A token id outside the table is
 * ANVIL_ERR_INVALID_ARG. */
anvil_status anvil_cpu_ref_embedding(const anvil_tensor *table, const anvil_step *step, anvil_tensor *out);

/* var = mean(x^2), y = x * (1 / sqrtf(var + eps)) * (w_offset + w), per row
 * (w_offset + w in f32: Gemma's (1 + w) with w_offset 1). */
anvil_status anvil_cpu_ref_rmsnorm(const anvil_tensor *x, const anvil_tensor *w, float eps, float w_offset,
                                   anvil_tensor *out);

/* The same over each head_dim-wide piece of every row (w is [head_dim]). */
anvil_status anvil_cpu_ref_head_rmsnorm(const anvil_tensor *x, const anvil_tensor *w, int32_t head_dim, float eps,
                                        anvil_tensor *out);

/* out[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n]), summed in double.
 * A quantized w (w->quant, cpu_quant.h): sum_k x'[t, k] * W[n, k], with
 * W[n, k] = fl((v - z) * s) and x' the row permuted (perm) and, for fp8
 * activations, rounded to fp8 (anvil_cpu_quant_prep_row); int8/int4
 * weights on the int path (anvil_cpu_quant_int_path): x' quantized to int8
 * per block of 32 columns, sum_b fl(d_b * s) * sum_k q_k (v_k - z). */
anvil_status anvil_cpu_ref_matmul(const anvil_tensor *x, const anvil_tensor *w, const anvil_tensor *bias,
                                  anvil_tensor *out);

/* Rotate-half RoPE in place: for each head and i < head_dim / 2,
 * a = (float)positions[t] * inv_freq[i], c = cosf(a) * scale, s = sinf(a) * scale,
 * x[i], x[i + d/2] = x[i] * c - x[i + d/2] * s, x[i + d/2] * c + x[i] * s;
 * inv_freq is f's long table for a token whose sequence is longer than
 * f->long_after after the step (backend.h, anvil_rope_freqs). */
anvil_status anvil_cpu_ref_rope(anvil_tensor *x, const anvil_step *step, int32_t head_dim, const anvil_rope_freqs *f);

/* Writes k, v into the caches at step->slots (converted to the cache dtype;
 * an F8_E4M3 cache takes k / k_scale and v / v_scale, and reads back the
 * fp8 values times the scale, as k_j and v_j below),
 * then for every token t and head h: softmax(cap(q . k_j * scale)) over the
 * cached positions j of its sequence in [max(0, p - window + 1), p], and
 * out = sum_j softmax_j * v_j (GQA: kv head h / (n_heads / n_kv_heads));
 * cap(s) = tanhf(s / softcap) * softcap, or s when softcap is 0. */
anvil_status anvil_cpu_ref_attention(const anvil_attention_args *a);

/* out = gate / (1 + expf(-gate)) * up */
anvil_status anvil_cpu_ref_silu_mul(const anvil_tensor *gate, const anvil_tensor *up, anvil_tensor *out);

/* out = gelu_tanh(gate) * up, gelu_tanh as anvil_cpu_gelu_tanh (cpu_internal.h) */
anvil_status anvil_cpu_ref_gelu_tanh_mul(const anvil_tensor *gate, const anvil_tensor *up, anvil_tensor *out);

/* out = x * c */
anvil_status anvil_cpu_ref_scale(const anvil_tensor *x, float c, anvil_tensor *out);

/* out = tanhf(x / cap) * cap */
anvil_status anvil_cpu_ref_softcap(const anvil_tensor *x, float cap, anvil_tensor *out);

/* out = a + b */
anvil_status anvil_cpu_ref_add(const anvil_tensor *a, const anvil_tensor *b, anvil_tensor *out);

/* LayerNorm per row: m = mean(x), v = mean((x - m)^2) (sums in double),
 * out = (x - m) * (1 / sqrtf(v + eps)) * w + b. */
anvil_status anvil_cpu_ref_layernorm(const anvil_tensor *x, const anvil_tensor *w, const anvil_tensor *b, float eps,
                                     anvil_tensor *out);

/* out = gelu_tanh(x), as anvil_cpu_gelu_tanh (cpu_internal.h) */
anvil_status anvil_cpu_ref_gelu_tanh(const anvil_tensor *x, anvil_tensor *out);

/* out[t, :] = x[t, :] + table[positions[t], :] (the table as f32). A
 * position outside the table is ANVIL_ERR_INVALID_ARG. */
anvil_status anvil_cpu_ref_pos_embedding(const anvil_tensor *x, const anvil_tensor *table, const anvil_step *step,
                                         anvil_tensor *out);

/* out[i, :] = x[logit_rows[i], :] */
anvil_status anvil_cpu_ref_gather_rows(const anvil_tensor *x, const anvil_step *step, anvil_tensor *out);

/* The moe op (backend.h, anvil_moe_args), one token at a time: router
 * logits as dot products in double, softmax in f32, the k largest (the lower
 * expert on ties), each chosen expert's gated MLP (products in double,
 * rounded to f32), summed in ascending expert order with its weight (divided
 * by the k weights' sum with norm_topk_prob), plus sigmoid(shared gate) *
 * the shared expert. Uses the args' scratch (the same size as the op's). */
anvil_status anvil_cpu_ref_moe(const anvil_moe_args *a);

/* Multi-head latent attention (backend.h, anvil_mla_args) in its defining
 * form, one (token, head) at a time: the cache row written as [c,
 * rope(k_pe)] (rotation in f32 as the op), then every key and value
 * expanded from the cached latents again for each query, products and sums
 * in double; args->form is ignored (both of the op's forms are held to
 * this). */
anvil_status anvil_cpu_ref_mla(const anvil_mla_args *a);

#endif
