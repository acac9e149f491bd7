/* The host side of the small CUDA ops: argument checks, then the launcher
 * of the op's kernel (cuda_<op>.cu). Matmul and attention have files of
 * their own. */
#include <math.h>

#include "backend/cuda/cuda_embedding_part.h"
#include "backend/cuda/cuda_internal.h"

anvil_status anvil_cuda_op_resolve_tokens(anvil_backend *be, const anvil_step *step, const int32_t *prev_ids)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    CHECK(step != NULL && prev_ids != NULL && (step->n_tokens == 0 || step->token_ids != NULL), ANVIL_ERR_INVALID_ARG,
          "resolve_tokens: NULL argument");
    TRY(anvil_cuda_use(cb));
    /* the step's own id array, rewritten in stream order before its embedding reads it */
    return anvil_cuda_launch_resolve_tokens(cb->stream, (int32_t *)step->token_ids, step->n_tokens, prev_ids);
}

anvil_status anvil_cuda_op_embedding(anvil_backend *be, const anvil_tensor *table, const anvil_step *step,
                                     anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(anvil_cuda_check_act(cb, out, "embedding out"));
    CHECK(table != NULL && table->data != NULL && table->n_dims == 2, ANVIL_ERR_INVALID_ARG,
          "embedding: expected a 2-D table");
    CHECK(anvil_cuda_is_float_dtype(table->dtype), ANVIL_ERR_UNSUPPORTED, "embedding: table dtype %s",
          anvil_dtype_name(table->dtype));
    CHECK(table->shape[1] == out->shape[1], ANVIL_ERR_INVALID_ARG, "embedding: table width %lld, out width %lld",
          (long long)table->shape[1], (long long)out->shape[1]);
    TRY(anvil_cuda_check_step_rows(step, out->shape[0], "embedding"));
    CHECK(step->n_tokens == 0 || step->token_ids != NULL, ANVIL_ERR_INVALID_ARG, "embedding: no token ids");
    TRY(anvil_cuda_use(cb));
    return anvil_cuda_launch_embedding(cb->stream, table->data, table->dtype, table->shape[0], step->token_ids,
                                       step->n_tokens, out->data, out->dtype, out->shape[1], cb->d_err);
}

anvil_status anvil_cuda_op_embedding_part(anvil_backend *be, const anvil_tensor *table, int64_t first_id,
                                          const anvil_step *step, anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(anvil_cuda_check_act(cb, out, "embedding out"));
    CHECK(table != NULL && table->data != NULL && table->n_dims == 2 && first_id >= 0, ANVIL_ERR_INVALID_ARG,
          "embedding: expected a 2-D table and a first id >= 0");
    CHECK(anvil_cuda_is_float_dtype(table->dtype), ANVIL_ERR_UNSUPPORTED, "embedding: table dtype %s",
          anvil_dtype_name(table->dtype));
    CHECK(table->shape[1] == out->shape[1], ANVIL_ERR_INVALID_ARG, "embedding: table width %lld, out width %lld",
          (long long)table->shape[1], (long long)out->shape[1]);
    TRY(anvil_cuda_check_step_rows(step, out->shape[0], "embedding"));
    CHECK(step->n_tokens == 0 || step->token_ids != NULL, ANVIL_ERR_INVALID_ARG, "embedding: no token ids");
    TRY(anvil_cuda_use(cb));
    return anvil_cuda_launch_embedding_part(cb->stream, table->data, table->dtype, table->shape[0], first_id,
                                            step->token_ids, step->n_tokens, out->data, out->dtype, out->shape[1],
                                            cb->d_err);
}

static anvil_status norm(anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_tensor *w, int64_t width,
                         float eps, float w_offset, anvil_tensor *out)
{
    TRY(anvil_cuda_check_act(cb, x, "rmsnorm x"));
    TRY(anvil_cuda_check_act(cb, out, "rmsnorm out"));
    TRY(anvil_cuda_check_same_shape(x, out, "rmsnorm"));
    CHECK(width > 0 && x->shape[1] % width == 0, ANVIL_ERR_INVALID_ARG,
          "rmsnorm: row width %lld is not a multiple of %lld", (long long)x->shape[1], (long long)width);
    TRY(anvil_cuda_check_vector(w, width, "rmsnorm weight"));
    CHECK(isfinite(w_offset), ANVIL_ERR_INVALID_ARG, "rmsnorm: weight offset %g", (double)w_offset);
    TRY(anvil_cuda_use(cb));
    return anvil_cuda_launch_rmsnorm(cb->stream, anvil_cuda_pdl(cb), x->data, w->data, w->dtype, out->data, out->dtype,
                                     x->shape[0] * (x->shape[1] / width), width, eps, w_offset);
}

anvil_status anvil_cuda_op_rmsnorm(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w, float eps,
                                   float w_offset, anvil_tensor *out)
{
    return norm(anvil_cuda_impl(be), x, w, x != NULL ? x->shape[1] : 0, eps, w_offset, out);
}

anvil_status anvil_cuda_op_head_rmsnorm(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                                        int32_t head_dim, float eps, anvil_tensor *out)
{
    return norm(anvil_cuda_impl(be), x, w, head_dim, eps, 0.0f, out);
}

anvil_cuda_rope anvil_cuda_rope_of(const anvil_rope_freqs *f, const anvil_step *step)
{
    anvil_cuda_rope r = {0};
    if (f == NULL)
        return r;
    r.inv_freq = f->inv_freq;
    r.inv_freq_long = f->inv_freq_long;
    r.seq_of_token = step->seq_of_token;
    r.seq_lens = step->seq_lens;
    r.long_after = f->long_after;
    r.scale = f->scale == 0.0f ? 1.0f : f->scale;
    return r;
}

anvil_status anvil_cuda_op_rope(anvil_backend *be, anvil_tensor *x, const anvil_step *step, int32_t head_dim,
                                const anvil_rope_freqs *f)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(anvil_cuda_check_act(cb, x, "rope x"));
    CHECK(head_dim > 0 && head_dim % 2 == 0 && x->shape[1] % head_dim == 0, ANVIL_ERR_INVALID_ARG,
          "rope: head_dim %d must be even and divide the row width %lld", head_dim, (long long)x->shape[1]);
    CHECK(f != NULL && f->inv_freq != NULL, ANVIL_ERR_INVALID_ARG, "rope: missing inv_freq");
    CHECK(isfinite(f->scale), ANVIL_ERR_INVALID_ARG, "rope: scale %g", (double)f->scale);
    TRY(anvil_cuda_check_step_rows(step, x->shape[0], "rope"));
    CHECK(step->n_tokens == 0 || step->positions != NULL, ANVIL_ERR_INVALID_ARG, "rope: no positions");
    /* the long table is picked by each token's sequence length */
    CHECK(step->n_tokens == 0 || f->inv_freq_long == NULL || (step->seq_of_token != NULL && step->seq_lens != NULL),
          ANVIL_ERR_INVALID_ARG, "rope: two tables need the step's seq_of_token and seq_lens");
    TRY(anvil_cuda_use(cb));
    const anvil_cuda_rope r = anvil_cuda_rope_of(f, step);
    return anvil_cuda_launch_rope(cb->stream, x->data, x->dtype, x->shape[0], x->shape[1], head_dim, step->positions,
                                  &r);
}

static anvil_status check_binary(anvil_cuda_backend *cb, const anvil_tensor *a, const anvil_tensor *b,
                                 const anvil_tensor *out)
{
    TRY(anvil_cuda_check_act(cb, a, "elementwise a"));
    TRY(anvil_cuda_check_act(cb, b, "elementwise b"));
    TRY(anvil_cuda_check_act(cb, out, "elementwise out"));
    TRY(anvil_cuda_check_same_shape(a, b, "elementwise"));
    TRY(anvil_cuda_check_same_shape(a, out, "elementwise out"));
    return anvil_cuda_use(cb);
}

anvil_status anvil_cuda_op_silu_mul(anvil_backend *be, const anvil_tensor *gate, const anvil_tensor *up,
                                    anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(check_binary(cb, gate, up, out));
    return anvil_cuda_launch_silu_mul(cb->stream, gate->data, up->data, out->data, out->dtype,
                                      anvil_tensor_numel(out));
}

anvil_status anvil_cuda_op_add(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b, anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(check_binary(cb, a, b, out));
    return anvil_cuda_launch_add(cb->stream, anvil_cuda_pdl(cb), a->data, b->data, out->data, out->dtype, anvil_tensor_numel(out));
}

anvil_status anvil_cuda_op_gelu_tanh_mul(anvil_backend *be, const anvil_tensor *gate, const anvil_tensor *up,
                                         anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(check_binary(cb, gate, up, out));
    return anvil_cuda_launch_gelu_tanh_mul(cb->stream, gate->data, up->data, out->data, out->dtype,
                                           anvil_tensor_numel(out));
}

/* scale and softcap: x and out (which may alias) of one shape */
static anvil_status check_unary(anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_tensor *out,
                                const char *what)
{
    TRY(anvil_cuda_check_act(cb, x, what));
    TRY(anvil_cuda_check_act(cb, out, what));
    TRY(anvil_cuda_check_same_shape(x, out, what));
    return anvil_cuda_use(cb);
}

anvil_status anvil_cuda_op_scale(anvil_backend *be, const anvil_tensor *x, float c, anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(check_unary(cb, x, out, "scale"));
    return anvil_cuda_launch_scale(cb->stream, x->data, c, 0, out->data, out->dtype, anvil_tensor_numel(out));
}

anvil_status anvil_cuda_op_softcap(anvil_backend *be, const anvil_tensor *x, float cap, anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    CHECK(isfinite(cap) && cap > 0, ANVIL_ERR_INVALID_ARG, "softcap: the cap must be positive, got %g", (double)cap);
    TRY(check_unary(cb, x, out, "softcap"));
    return anvil_cuda_launch_scale(cb->stream, x->data, cap, 1, out->data, out->dtype, anvil_tensor_numel(out));
}

/* ---- GPT-2's ops */

anvil_status anvil_cuda_op_layernorm(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                                     const anvil_tensor *b, float eps, anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(anvil_cuda_check_act(cb, x, "layernorm x"));
    TRY(anvil_cuda_check_act(cb, out, "layernorm out"));
    TRY(anvil_cuda_check_same_shape(x, out, "layernorm"));
    CHECK(isfinite(eps) && eps > 0, ANVIL_ERR_INVALID_ARG, "layernorm: eps must be positive, got %g", (double)eps);
    TRY(anvil_cuda_check_vector(w, x->shape[1], "layernorm weight"));
    TRY(anvil_cuda_check_vector(b, x->shape[1], "layernorm bias"));
    TRY(anvil_cuda_use(cb));
    return anvil_cuda_launch_layernorm(cb->stream, anvil_cuda_pdl(cb), x->data, w->data, w->dtype, b->data, b->dtype, out->data,
                                       out->dtype, x->shape[0], x->shape[1], eps);
}

anvil_status anvil_cuda_op_gelu_tanh(anvil_backend *be, const anvil_tensor *x, anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(check_unary(cb, x, out, "gelu_tanh"));
    return anvil_cuda_launch_gelu_tanh(cb->stream, x->data, out->data, out->dtype, anvil_tensor_numel(out));
}

anvil_status anvil_cuda_op_pos_embedding(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *table,
                                         const anvil_step *step, anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(check_unary(cb, x, out, "pos_embedding"));
    CHECK(table != NULL && table->data != NULL && table->n_dims == 2, ANVIL_ERR_INVALID_ARG,
          "pos_embedding: expected a 2-D table");
    CHECK(anvil_cuda_is_float_dtype(table->dtype), ANVIL_ERR_UNSUPPORTED, "pos_embedding: table dtype %s",
          anvil_dtype_name(table->dtype));
    CHECK(table->shape[1] == x->shape[1], ANVIL_ERR_INVALID_ARG, "pos_embedding: table width %lld, x width %lld",
          (long long)table->shape[1], (long long)x->shape[1]);
    TRY(anvil_cuda_check_step_rows(step, x->shape[0], "pos_embedding"));
    CHECK(step->n_tokens == 0 || step->positions != NULL, ANVIL_ERR_INVALID_ARG, "pos_embedding: no positions");
    /* positions live in device memory: the kernel checks them (ANVIL_CUDA_BAD_POSITION) */
    return anvil_cuda_launch_pos_embedding(cb->stream, x->data, table->data, table->dtype, table->shape[0],
                                           step->positions, step->n_tokens, out->data, out->dtype, x->shape[1],
                                           cb->d_err);
}

anvil_status anvil_cuda_op_gather_rows(anvil_backend *be, const anvil_tensor *x, const anvil_step *step,
                                       anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(anvil_cuda_check_act(cb, x, "gather_rows x"));
    TRY(anvil_cuda_check_act(cb, out, "gather_rows out"));
    CHECK(step != NULL, ANVIL_ERR_INVALID_ARG, "gather_rows: missing step");
    CHECK(out->shape[0] == step->n_logits && out->shape[1] == x->shape[1], ANVIL_ERR_INVALID_ARG,
          "gather_rows: out [%lld, %lld] for %d rows of width %lld", (long long)out->shape[0],
          (long long)out->shape[1], step->n_logits, (long long)x->shape[1]);
    CHECK(step->n_logits == 0 || step->logit_rows != NULL, ANVIL_ERR_INVALID_ARG, "gather_rows: no logit rows");
    CHECK(out->data != x->data || step->n_logits == 0, ANVIL_ERR_INVALID_ARG, "gather_rows: out must not alias x");
    TRY(anvil_cuda_use(cb));
    return anvil_cuda_launch_gather_rows(cb->stream, anvil_cuda_pdl(cb), x->data, x->shape[0], out->data, out->dtype, x->shape[1],
                                         step->logit_rows, step->n_logits, cb->d_err);
}

anvil_status anvil_cuda_op_argmax_rows(anvil_backend *be, const anvil_tensor *x, int32_t *ids)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(anvil_cuda_check_act(cb, x, "argmax_rows x"));
    CHECK(ids != NULL || x->shape[0] == 0, ANVIL_ERR_INVALID_ARG, "argmax_rows: ids is NULL");
    CHECK(x->shape[1] > 0 || x->shape[0] == 0, ANVIL_ERR_INVALID_ARG, "argmax_rows: rows of width 0");
    CHECK(x->shape[1] <= INT32_MAX, ANVIL_ERR_UNSUPPORTED, "argmax_rows: %lld columns", (long long)x->shape[1]);
    TRY(anvil_cuda_use(cb));
    return anvil_cuda_launch_argmax_rows(cb->stream, anvil_cuda_pdl(cb), x->data, x->dtype, x->shape[0], x->shape[1], ids);
}
