/* Host-side argument checks of the CUDA ops: everything that can be seen
 * without reading device memory (shapes, dtypes, aliasing, limits). The
 * contents of the step arrays are checked by the kernels themselves (see
 * the error word in cuda_internal.h). */
#include <math.h>

#include "backend/cuda/cuda_internal.h"

int anvil_cuda_is_float_dtype(anvil_dtype dt)
{
    return dt == ANVIL_DTYPE_F32 || dt == ANVIL_DTYPE_BF16 || dt == ANVIL_DTYPE_F16;
}

anvil_status anvil_cuda_check_quant(const anvil_tensor *w, const char *what)
{
    if (w == NULL)
        return ANVIL_OK;
    const anvil_quant *q = w->quant;
    const char *dn = anvil_dtype_name(w->dtype);
    if (!anvil_cuda_is_quant_dtype(w->dtype)) {
        CHECK(q == NULL, ANVIL_ERR_INVALID_ARG,
              "%s: a %s weight with quantization scales (only fp8_e4m3, i8 and u4 weights are quantized)", what, dn);
        return ANVIL_OK;
    }
    CHECK(q != NULL, ANVIL_ERR_INVALID_ARG, "%s: a %s weight without its quantization (scales)", what, dn);
    CHECK(w->n_dims == 2, ANVIL_ERR_INVALID_ARG, "%s: a quantized weight must be 2-D", what);
    const int64_t N = w->shape[0], K = w->shape[1];
    CHECK(q->scales != NULL, ANVIL_ERR_INVALID_ARG, "%s: %s weight [%lld, %lld] without scales", what, dn,
          (long long)N, (long long)K);
    CHECK(q->group >= 0 && (q->group == 0 || K % q->group == 0), ANVIL_ERR_INVALID_ARG,
          "%s: quantization group %d does not divide the weight's width %lld", what, (int)q->group, (long long)K);
    CHECK(q->zeros == NULL || w->dtype == ANVIL_DTYPE_U4, ANVIL_ERR_INVALID_ARG,
          "%s: zero points on a %s weight (only u4 has them)", what, dn);
    CHECK(q->act >= ANVIL_QUANT_ACT_NONE && q->act <= ANVIL_QUANT_ACT_FP8_STATIC, ANVIL_ERR_INVALID_ARG,
          "%s: unknown activation quantization %d", what, (int)q->act);
    CHECK(q->act == ANVIL_QUANT_ACT_NONE || w->dtype == ANVIL_DTYPE_F8_E4M3, ANVIL_ERR_INVALID_ARG,
          "%s: fp8 activations with a %s weight (only fp8_e4m3 weights take them)", what, dn);
    CHECK(q->act != ANVIL_QUANT_ACT_FP8_STATIC || (isfinite(q->input_scale) && q->input_scale > 0.0f),
          ANVIL_ERR_INVALID_ARG, "%s: static fp8 input scale %g (must be finite and > 0)", what,
          (double)q->input_scale);
    /* perm lives in device memory: the kernels check its entries (ANVIL_CUDA_BAD_PERM) */
    return ANVIL_OK;
}

anvil_status anvil_cuda_check_act(const anvil_cuda_backend *cb, const anvil_tensor *t, const char *what)
{
    CHECK(t != NULL && t->data != NULL, ANVIL_ERR_INVALID_ARG, "%s: missing tensor", what);
    CHECK(t->n_dims == 2 && t->shape[0] >= 0 && t->shape[1] >= 0, ANVIL_ERR_INVALID_ARG,
          "%s: expected a 2-D activation", what);
    CHECK(t->dtype == cb->ops.act_dtype, ANVIL_ERR_UNSUPPORTED, "%s: activations of this backend are %s, got %s",
          what, anvil_dtype_name(cb->ops.act_dtype), anvil_dtype_name(t->dtype));
    return ANVIL_OK;
}

anvil_status anvil_cuda_check_vector(const anvil_tensor *w, int64_t n, const char *what)
{
    CHECK(w != NULL && w->data != NULL, ANVIL_ERR_INVALID_ARG, "%s: missing tensor", what);
    CHECK(anvil_cuda_is_float_dtype(w->dtype), ANVIL_ERR_UNSUPPORTED, "%s: dtype %s (f32, bf16 or f16)", what,
          anvil_dtype_name(w->dtype));
    CHECK(anvil_tensor_numel(w) == n && (w->n_dims == 1 || (w->n_dims == 2 && w->shape[0] == 1)),
          ANVIL_ERR_INVALID_ARG, "%s: expected [%lld]", what, (long long)n);
    return ANVIL_OK;
}

anvil_status anvil_cuda_check_same_shape(const anvil_tensor *a, const anvil_tensor *b, const char *what)
{
    CHECK(a->shape[0] == b->shape[0] && a->shape[1] == b->shape[1], ANVIL_ERR_INVALID_ARG,
          "%s: shape [%lld, %lld] vs [%lld, %lld]", what, (long long)a->shape[0], (long long)a->shape[1],
          (long long)b->shape[0], (long long)b->shape[1]);
    return ANVIL_OK;
}

anvil_status anvil_cuda_check_step_rows(const anvil_step *step, int64_t rows, const char *what)
{
    CHECK(step != NULL, ANVIL_ERR_INVALID_ARG, "%s: missing step", what);
    CHECK(step->n_tokens >= 0 && step->n_tokens == rows, ANVIL_ERR_INVALID_ARG,
          "%s: %lld rows for a step of %d tokens", what, (long long)rows, step->n_tokens);
    return ANVIL_OK;
}

static anvil_status check_cache(const anvil_tensor *c, const anvil_attention_args *a, anvil_dtype act,
                                const char *what)
{
    CHECK(c != NULL && c->data != NULL && c->n_dims == 4, ANVIL_ERR_INVALID_ARG,
          "attention: %s must be [n_blocks, block_size, n_kv_heads, head_dim]", what);
    /* the compute dtype, or fp8 e4m3 beside bf16/f16 activations (the fp8 KV cache) */
    CHECK(c->dtype == act ||
              (c->dtype == ANVIL_DTYPE_F8_E4M3 && (act == ANVIL_DTYPE_BF16 || act == ANVIL_DTYPE_F16)),
          ANVIL_ERR_UNSUPPORTED, "attention: %s is %s; the CUDA backend keeps it in %s (or f8_e4m3 with bf16/f16)",
          what, anvil_dtype_name(c->dtype), anvil_dtype_name(act));
    CHECK(c->shape[0] > 0 && c->shape[0] <= INT32_MAX / a->step->block_size && c->shape[1] == a->step->block_size &&
              c->shape[2] == a->n_kv_heads && c->shape[3] == a->head_dim,
          ANVIL_ERR_INVALID_ARG, "attention: %s is [%lld, %lld, %lld, %lld], want [*, %d, %d, %d]", what,
          (long long)c->shape[0], (long long)c->shape[1], (long long)c->shape[2], (long long)c->shape[3],
          a->step->block_size, a->n_kv_heads, a->head_dim);
    return ANVIL_OK;
}

anvil_status anvil_cuda_check_attention(const anvil_cuda_backend *cb, const anvil_attention_args *a)
{
    CHECK(a != NULL && a->step != NULL, ANVIL_ERR_INVALID_ARG, "attention: missing arguments");
    const anvil_step *st = a->step;
    CHECK(a->n_heads > 0 && a->n_kv_heads > 0 && a->n_heads % a->n_kv_heads == 0 && a->head_dim > 0,
          ANVIL_ERR_INVALID_ARG, "attention: n_heads %d, n_kv_heads %d, head_dim %d", a->n_heads, a->n_kv_heads,
          a->head_dim);
    /* The kernels keep a head in 32 lanes x (head_dim / 32) registers with
     * vector loads of up to 8 elements. */
    CHECK(a->head_dim <= 256 && a->head_dim % 4 == 0 && (a->head_dim <= 128 || a->head_dim % 8 == 0),
          ANVIL_ERR_UNSUPPORTED,
          "attention: head_dim %d (the CUDA kernels take multiples of 4 up to 128, of 8 up to 256)", a->head_dim);
    CHECK(a->sliding_window >= 0, ANVIL_ERR_INVALID_ARG, "attention: sliding window %d", a->sliding_window);
    CHECK(st->block_size > 0 && st->max_blocks_per_seq > 0 && st->n_seqs >= 0, ANVIL_ERR_INVALID_ARG,
          "attention: block_size %d, max_blocks_per_seq %d, n_seqs %d", st->block_size, st->max_blocks_per_seq,
          st->n_seqs);
    TRY(anvil_cuda_check_act(cb, a->q, "attention q"));
    TRY(anvil_cuda_check_act(cb, a->k, "attention k"));
    TRY(anvil_cuda_check_act(cb, a->v, "attention v"));
    TRY(anvil_cuda_check_act(cb, a->out, "attention out"));
    int64_t qw = (int64_t)a->n_heads * a->head_dim, kw = (int64_t)a->n_kv_heads * a->head_dim;
    int64_t T = st->n_tokens;
    CHECK(T >= 0 && a->q->shape[0] == T && a->q->shape[1] == qw && a->out->shape[0] == T &&
              a->out->shape[1] == qw && a->k->shape[0] == T && a->k->shape[1] == kw && a->v->shape[0] == T &&
              a->v->shape[1] == kw,
          ANVIL_ERR_INVALID_ARG, "attention: q/k/v/out shapes do not match %lld tokens x %d/%d heads x %d",
          (long long)T, a->n_heads, a->n_kv_heads, a->head_dim);
    CHECK(a->out->data != a->q->data || T == 0, ANVIL_ERR_INVALID_ARG, "attention: out must not alias q");
    TRY(check_cache(a->k_cache, a, cb->ops.act_dtype, "k_cache"));
    TRY(check_cache(a->v_cache, a, cb->ops.act_dtype, "v_cache"));
    CHECK(a->k_cache->shape[0] == a->v_cache->shape[0] && a->k_cache->dtype == a->v_cache->dtype,
          ANVIL_ERR_INVALID_ARG, "attention: k_cache and v_cache differ");
    /* !(x >= 0) also catches NaN; 0 means 1 */
    CHECK(a->k_cache->dtype != ANVIL_DTYPE_F8_E4M3 ||
              (a->k_scale >= 0.0f && a->v_scale >= 0.0f && isfinite(a->k_scale) && isfinite(a->v_scale)),
          ANVIL_ERR_INVALID_ARG, "attention: fp8 KV cache scales k %g, v %g: want positive and finite (0 means 1)",
          (double)a->k_scale, (double)a->v_scale);
    CHECK(a->softcap >= 0.0f && isfinite(a->softcap), ANVIL_ERR_INVALID_ARG,
          "attention: softcap %g: want 0 (none) or positive and finite", (double)a->softcap);
    CHECK(a->softcap == 0.0f || (a->scale > 0.0f && isfinite(a->scale)), ANVIL_ERR_INVALID_ARG,
          "attention: a soft cap needs a positive scale, got %g", (double)a->scale);
    CHECK(T == 0 || (st->n_seqs > 0 && st->positions && st->seq_of_token && st->block_tables && st->slots),
          ANVIL_ERR_INVALID_ARG, "attention: step arrays missing");
    CHECK(T == 0 || st->max_context > 0, ANVIL_ERR_INVALID_ARG, "attention: max_context %d", st->max_context);
    CHECK((int64_t)st->max_blocks_per_seq * st->block_size <= INT32_MAX, ANVIL_ERR_INVALID_ARG,
          "attention: %d blocks of %d positions per sequence", st->max_blocks_per_seq, st->block_size);
    return ANVIL_OK;
}
