/*
 * attention on CUDA: the step's k and v into the paged cache, then one of
 * two kernels (see cuda_attn_prefill.cu and cuda_attn_decode.cu):
 *   - decode steps (every sequence brings one token) take the per-token
 *     split-K kernel, the context split so the grid fills the GPU;
 *   - any other batch takes the tiled kernel, which loads each K/V tile
 *     once for all the query rows of a run of tokens.
 * Both are correct for any batch; the knobs of cuda_backend.h pin either.
 */
#include "backend/cuda/cuda_internal.h"

#define MIN_KEYS_PER_SPLIT 64
#define MAX_SPLITS 256

static int is_aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* Splits of the context for the decode kernel: enough blocks for about two
 * waves over the SMs, each split at least MIN_KEYS_PER_SPLIT keys. */
static void choose_splits(const anvil_cuda_backend *cb, const anvil_cuda_attn *a, int32_t span, int32_t *n_splits,
                          int32_t *split_len)
{
    const int group = a->n_heads / a->n_kv_heads;
    const int rd = group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;
    const int64_t blocks = (int64_t)a->n_tokens * a->n_kv_heads * ((group + rd - 1) / rd);
    int64_t n = cb->knobs.attn_splits > 0 ? cb->knobs.attn_splits : (2 * (int64_t)cb->n_sm + blocks - 1) / blocks;
    int64_t max_n = cb->knobs.attn_splits > 0 ? span : (span + MIN_KEYS_PER_SPLIT - 1) / MIN_KEYS_PER_SPLIT;
    if (max_n > MAX_SPLITS)
        max_n = MAX_SPLITS;
    if (n > max_n)
        n = max_n;
    if (n < 1)
        n = 1;
    int64_t len = (span + n - 1) / n;
    *split_len = (int32_t)(len < 1 ? 1 : len);
    *n_splits = (int32_t)((span + *split_len - 1) / *split_len);
    if (*n_splits < 1)
        *n_splits = 1;
}

anvil_status anvil_cuda_op_attention(anvil_backend *be, const anvil_attention_args *args)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(anvil_cuda_check_attention(cb, args));
    const anvil_step *st = args->step;
    if (st->n_tokens == 0)
        return ANVIL_OK;
    CHECK(is_aligned16(args->q->data) && is_aligned16(args->k->data) && is_aligned16(args->v->data) &&
              is_aligned16(args->out->data) && is_aligned16(args->k_cache->data) &&
              is_aligned16(args->v_cache->data),
          ANVIL_ERR_UNSUPPORTED, "attention: tensors must be 16-byte aligned (as backend allocations are)");
    anvil_cuda_attn a = {
        .q = args->q->data, .k = args->k->data, .v = args->v->data,
        .k_cache = args->k_cache->data, .v_cache = args->v_cache->data, .out = args->out->data,
        .dt = cb->ops.act_dtype,
        .positions = st->positions, .seq_of_token = st->seq_of_token, .block_tables = st->block_tables,
        .slots = st->slots,
        .n_tokens = st->n_tokens, .n_seqs = st->n_seqs, .max_blocks_per_seq = st->max_blocks_per_seq,
        .block_size = st->block_size, .n_blocks = (int32_t)args->k_cache->shape[0],
        .n_heads = args->n_heads, .n_kv_heads = args->n_kv_heads, .head_dim = args->head_dim,
        .window = args->sliding_window, .scale = args->scale, .err = cb->d_err,
    };
    TRY(anvil_cuda_use(cb));
    TRY(anvil_cuda_launch_kv_write(cb->stream, &a));

    anvil_cuda_attn_kernel kernel = cb->knobs.attn_kernel;
    if (kernel == ANVIL_CUDA_ATTN_AUTO)
        kernel = st->n_tokens == st->n_seqs ? ANVIL_CUDA_ATTN_DECODE : ANVIL_CUDA_ATTN_PREFILL;
    if (kernel == ANVIL_CUDA_ATTN_PREFILL)
        return anvil_cuda_launch_attn_prefill(cb->stream, &a, cb->smem_optin);

    int32_t span = st->max_context;
    if (a.window > 0 && a.window < span)
        span = a.window;
    int32_t n_splits = 1, split_len = span;
    choose_splits(cb, &a, span, &n_splits, &split_len);
    if (n_splits > 1)
        TRY(anvil_cuda_reserve(cb, &cb->attn_ws, &cb->attn_ws_bytes, anvil_cuda_attn_decode_ws_bytes(&a, n_splits),
                               "attention: split-K workspace"));
    return anvil_cuda_launch_attn_decode(cb->stream, &a, n_splits, split_len, (float *)cb->attn_ws);
}
