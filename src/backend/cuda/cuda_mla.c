/* The mla op on CUDA (cuda_mla.h): the checks the host can make (the step
 * arrays are device memory: the kernels check slots and block ids and flag
 * what is outside), the cache write, then per row one of the forms:
 *   - expanded on tensor cores (cuda_mla_prefill.cu) for the rows after the
 *     step's decode rows when a sequence brings several (a prefill chunk):
 *     its K_nope and V from one GEMM of the gathered latents with kv_b
 *     (the matmul op: cuBLASLt), then flash attention;
 *   - absorbed on tensor cores (cuda_mla_mma.cu) for the decode rows, and
 *     for all rows where the expanded form does not apply;
 *   - the reference kernels (cuda_mla.cu) for f32 and other shapes.
 * anvil_mla_args.form (1 expanded, 2 absorbed) and knob mla_kernel pin the
 * choice. The workspace is the attention's split-K buffer: the ops run one
 * after another on the backend's stream. */
#include <math.h>

#include "backend/cuda/cuda_mla.h"
#include "backend/cuda/cuda_mla_map.h"
#include "core/error.h"
#include "core/tensor.h"

/* The expanded form's buffers are skipped (absorbed form) beyond this */
#define XP_MAX_BYTES ((size_t)1 << 30)

/* Blocks of the tensor-core kernel an SM holds at once, from its shared
 * memory alone (the cost model's "wave"; its registers allow 2 or more) */
static int32_t mma_per_sm(const anvil_cuda_backend *cb, const anvil_cuda_mla *m)
{
    const size_t smem = anvil_cuda_mla_mma_smem(m) + 1024; /* the driver reserves 1 KiB a block */
    /* H100: 228 KiB an SM, of which a block may take smem_optin (227 KiB) */
    const size_t per_sm = (cb->smem_optin + 1024) / smem;
    return per_sm < 1 ? 1 : per_sm > 4 ? 4 : (int32_t)per_sm;
}

/* The step's span of contexts: max_context, else what the tables allow */
static int32_t step_span(const anvil_step *st)
{
    int64_t span = st->max_context > 0 ? st->max_context : (int64_t)st->max_blocks_per_seq * st->block_size;
    return span > INT32_MAX ? INT32_MAX : (int32_t)span;
}

/*
 * Whether the expanded form should take the rows after the decode rows.
 * Its GEMM expands every cached row of every prefill sequence, L =
 * max_context rows each (the host knows no tighter bound): per cached row
 * 2 rank heads (nope + v) flops (4.2 MFLOP for V2-Lite, on cuBLASLt), where
 * the absorbed form pays 2 heads (rank + rope + rank) per (row, key) (35
 * KFLOP) against the expanded attention's 2 heads (nope + rope + v) (10
 * KFLOP), on mma.sync at maybe half the GEMM's rate. So the expansion pays
 * from about a hundred rows a sequence; below 64, or when the buffers would
 * be far larger than the rows (a short chunk in a step whose decodes have
 * long contexts: L is theirs), the absorbed form runs. Measured (H100,
 * session 30, test_cuda_mla --perf, V2-Lite, chunks at the end of a 2048
 * context): the expanded form ~0.20 ms for any chunk (its cost is L's),
 * the absorbed 0.156 / 0.233 / 0.467 / 1.421 ms at 32 / 64 / 128 / 512
 * rows: the expansion pays from 64 rows at L = 32 x rows (the first guess,
 * 16 x, kept 64 rows absorbed at 0.233 against 0.201 ms).
 */
static int expand_pays(const anvil_step *st)
{
    const int32_t t0 = st->n_decode > 0 && st->n_decode < st->n_tokens ? st->n_decode : 0;
    const int64_t rows = (int64_t)st->n_tokens - t0, n_seqs = (int64_t)st->n_seqs - t0;
    if (n_seqs <= 0 || rows <= n_seqs) /* no sequence brings several rows */
        return 0;
    return rows >= 64 * n_seqs && n_seqs * (int64_t)step_span(st) <= 32 * rows;
}

/* The absorbed form's splits and workspace bytes for m's tokens */
static void plan_absorbed(const anvil_cuda_backend *cb, const anvil_step *st, const anvil_cuda_mla *m,
                          int32_t *n_splits, int32_t *split_len, size_t *bytes)
{
    const int64_t blocks = (int64_t)m->n_tokens * ((m->n_heads + MLA_ROWS - 1) / MLA_ROWS);
    mla_choose_splits(blocks, mma_per_sm(cb, m), cb->n_sm, step_span(st), cb->knobs.attn_splits, n_splits,
                      split_len);
    anvil_cuda_mla_ws L;
    anvil_cuda_mla_mma_ws(m, *n_splits, &L);
    *bytes = L.bytes;
}

/* The absorbed form on tensor cores for m's tokens (the cache written) */
static anvil_status launch_absorbed(anvil_cuda_backend *cb, const anvil_step *st, const anvil_cuda_mla *m)
{
    if (m->n_tokens == 0)
        return ANVIL_OK;
    int32_t n_splits = 1, split_len = 1;
    size_t bytes = 0;
    plan_absorbed(cb, st, m, &n_splits, &split_len, &bytes);
    TRY(anvil_cuda_reserve(cb, &cb->attn_ws, &cb->attn_ws_bytes, bytes, "mla: workspace"));
    return anvil_cuda_launch_mla_mma(cb->stream, m, n_splits, split_len, cb->attn_ws, cb->smem_optin);
}

/* Rows [n_decode, T) expanded (the decode rows before them absorbed), or
 * *done = 0 when the buffers would pass XP_MAX_BYTES */
static anvil_status launch_expanded(anvil_cuda_backend *cb, const anvil_mla_args *a, const anvil_cuda_mla *m,
                                    int *done)
{
    const anvil_step *st = a->step;
    const int32_t t0 = st->n_decode > 0 && st->n_decode < st->n_tokens ? st->n_decode : 0;
    const int32_t n_seqs = st->n_seqs - t0, L = step_span(st);
    anvil_cuda_mla_xp xp;
    size_t bytes = 0;
    anvil_cuda_mla_xp_layout(m, t0, t0, n_seqs, L, NULL, &xp, &bytes);
    *done = 0;
    if (bytes > XP_MAX_BYTES || (int64_t)n_seqs * L > INT32_MAX)
        return ANVIL_OK;
    *done = 1;
    anvil_cuda_mla md = *m; /* the decode rows [0, t0): the arrays start at row 0 */
    md.n_tokens = t0;
    int32_t n_splits = 1, split_len = 1;
    size_t abs_bytes = 0;
    if (t0 > 0)
        plan_absorbed(cb, st, &md, &n_splits, &split_len, &abs_bytes);
    /* one reservation for both (the expanded part's buffers are used after
     * the absorbed part's launches on the stream) */
    TRY(anvil_cuda_reserve(cb, &cb->attn_ws, &cb->attn_ws_bytes, bytes > abs_bytes ? bytes : abs_bytes,
                           "mla: workspace"));
    if (t0 > 0)
        TRY(anvil_cuda_launch_mla_mma(cb->stream, &md, n_splits, split_len, cb->attn_ws, cb->smem_optin));
    anvil_cuda_mla_xp_layout(m, t0, t0, n_seqs, L, cb->attn_ws, &xp, &bytes);
    TRY(anvil_cuda_launch_mla_xp_prep(cb->stream, m, &xp));
    const int64_t rows = (int64_t)n_seqs * L;
    anvil_tensor x = anvil_tensor_2d(m->dt, rows, m->rank, xp.x);
    anvil_tensor kv = anvil_tensor_2d(m->dt, rows, (int64_t)m->n_heads * (m->nope + m->v), xp.kv);
    TRY(anvil_cuda_op_matmul(&cb->be, &x, a->kv_b, NULL, &kv));
    return anvil_cuda_launch_mla_xp_attn(cb->stream, m, &xp, cb->smem_optin);
}

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
    const int knob = cb->knobs.mla_kernel;
    if (knob == 1 || !anvil_cuda_mla_mma_ok(&m, cb->smem_optin))
        return anvil_cuda_launch_mla(cb->stream, &m);
    TRY(anvil_cuda_launch_mla_cache(cb->stream, &m));
    /* expanded for prefill chunks (expand_pays), unless pinned: form 1 /
     * knob 3 expanded, form 2 / knob 2 absorbed */
    const int expand = a->form == 1 || (a->form == 0 && (knob == 3 || (knob == 0 && expand_pays(st))));
    if (expand && a->form != 2 && anvil_cuda_mla_xp_ok(&m, cb->smem_optin)) {
        int done = 0;
        TRY(launch_expanded(cb, a, &m, &done));
        if (done)
            return ANVIL_OK;
    }
    return launch_absorbed(cb, st, &m);
}
