/* The mla op on CUDA (cuda_mla.h): the checks the host can make (the step
 * arrays are device memory: the kernels check slots and block ids and flag
 * what is outside), then the two launches. */
#include <math.h>

#include "backend/cuda/cuda_mla.h"
#include "core/error.h"

anvil_status anvil_cuda_op_mla(anvil_backend *be, const anvil_mla_args *a)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    CHECK(a != NULL && a->step != NULL && a->rope != NULL && a->rope->inv_freq != NULL, ANVIL_ERR_INVALID_ARG,
          "mla: missing arguments");
    const anvil_step *st = a->step;
    CHECK(a->n_heads > 0 && a->kv_rank > 0 && a->nope_dim > 0 && a->rope_dim > 0 && a->rope_dim % 2 == 0 &&
              a->v_dim > 0 && a->scale > 0.0f && isfinite(a->scale) && a->form >= 0 && a->form <= 2,
          ANVIL_ERR_INVALID_ARG, "mla: %d heads, rank %d, dims %d/%d/%d, scale %g, form %d", a->n_heads, a->kv_rank,
          a->nope_dim, a->rope_dim, a->v_dim, (double)a->scale, a->form);
    CHECK(a->kv_rank <= ANVIL_CUDA_MLA_MAX_RANK && a->rope_dim <= ANVIL_CUDA_MLA_MAX_ROPE, ANVIL_ERR_UNSUPPORTED,
          "mla: kv_rank %d, rope_dim %d (the CUDA kernel takes up to %d and %d)", a->kv_rank, a->rope_dim,
          ANVIL_CUDA_MLA_MAX_RANK, ANVIL_CUDA_MLA_MAX_ROPE);
    CHECK(a->rope->inv_freq_long == NULL && isfinite(a->rope->scale), ANVIL_ERR_INVALID_ARG,
          "mla: one rope table and a finite scale");
    CHECK(st->block_size > 0 && st->max_blocks_per_seq > 0 && st->n_seqs >= 0 && st->n_tokens >= 0,
          ANVIL_ERR_INVALID_ARG, "mla: block_size %d, max_blocks_per_seq %d, n_seqs %d", st->block_size,
          st->max_blocks_per_seq, st->n_seqs);
    TRY(anvil_cuda_check_act(cb, a->q, "mla q"));
    TRY(anvil_cuda_check_act(cb, a->c, "mla c"));
    TRY(anvil_cuda_check_act(cb, a->k_pe, "mla k_pe"));
    TRY(anvil_cuda_check_act(cb, a->out, "mla out"));
    const int64_t T = st->n_tokens, H = a->n_heads;
    CHECK(a->q->shape[0] == T && a->q->shape[1] == H * (a->nope_dim + a->rope_dim) && a->c->shape[0] == T &&
              a->c->shape[1] == a->kv_rank && a->k_pe->shape[0] == T && a->k_pe->shape[1] == a->rope_dim &&
              a->out->shape[0] == T && a->out->shape[1] == H * a->v_dim,
          ANVIL_ERR_INVALID_ARG, "mla: q/c/k_pe/out shapes do not match %lld tokens x %d heads", (long long)T,
          a->n_heads);
    const anvil_tensor *w = a->kv_b;
    CHECK(w != NULL && w->data != NULL && w->n_dims == 2 && w->quant == NULL &&
              (w->dtype == ANVIL_DTYPE_F32 || w->dtype == ANVIL_DTYPE_BF16 || w->dtype == ANVIL_DTYPE_F16),
          ANVIL_ERR_UNSUPPORTED, "mla: kv_b must be a dense f32/bf16/f16 matrix");
    CHECK(w->shape[0] == H * (a->nope_dim + a->v_dim) && w->shape[1] == a->kv_rank, ANVIL_ERR_INVALID_ARG,
          "mla: kv_b is [%lld, %lld], want [%lld, %d]", (long long)w->shape[0], (long long)w->shape[1],
          (long long)(H * (a->nope_dim + a->v_dim)), a->kv_rank);
    const anvil_tensor *c = a->cache;
    CHECK(c != NULL && c->data != NULL && c->n_dims == 4 && c->dtype == cb->ops.act_dtype, ANVIL_ERR_UNSUPPORTED,
          "mla: the latent cache must be [n_blocks, block_size, 1, kv_rank + rope_dim] of the activation dtype");
    CHECK(c->shape[0] > 0 && c->shape[0] <= INT32_MAX && c->shape[1] == st->block_size && c->shape[2] == 1 &&
              c->shape[3] == (int64_t)a->kv_rank + a->rope_dim,
          ANVIL_ERR_INVALID_ARG, "mla: cache is [%lld, %lld, %lld, %lld], want [*, %d, 1, %d]", (long long)c->shape[0],
          (long long)c->shape[1], (long long)c->shape[2], (long long)c->shape[3], st->block_size,
          a->kv_rank + a->rope_dim);
    if (T == 0)
        return ANVIL_OK;
    CHECK(st->positions && st->seq_of_token && st->block_tables && st->slots, ANVIL_ERR_INVALID_ARG,
          "mla: step arrays missing");
    const anvil_cuda_mla m = {
        .q = a->q->data, .c = a->c->data, .k_pe = a->k_pe->data, .kv_b = w->data, .kv_b_dt = w->dtype,
        .cache = c->data, .out = a->out->data, .dt = cb->ops.act_dtype, .positions = st->positions,
        .seq_of_token = st->seq_of_token, .block_tables = st->block_tables, .slots = st->slots,
        .inv_freq = a->rope->inv_freq, .rope_scale = a->rope->scale == 0.0f ? 1.0f : a->rope->scale,
        .n_tokens = st->n_tokens, .n_seqs = st->n_seqs, .max_blocks_per_seq = st->max_blocks_per_seq,
        .block_size = st->block_size, .n_blocks = (int32_t)c->shape[0], .n_heads = a->n_heads,
        .rank = a->kv_rank, .nope = a->nope_dim, .rope = a->rope_dim, .v = a->v_dim, .scale = a->scale,
        .err = cb->d_err,
    };
    TRY(anvil_cuda_use(cb));
    return anvil_cuda_launch_mla(cb->stream, &m);
}
