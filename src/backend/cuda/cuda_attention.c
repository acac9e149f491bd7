/*
 * attention on CUDA: the step's k and v into the paged cache (with the
 * rotation of q and k in the same launch when the runtime fused the ropes
 * in: cuda_rope_kv_write.cu), then one of
 * two kernels (see cuda_attn_prefill.cu and cuda_attn_decode.cu):
 *   - decode steps (every sequence brings one token) take the per-token
 *     split-K kernel, the context split so the grid fills the GPU: on
 *     tensor cores (cuda_attn_decode_mma.cu) for bf16/f16 with head_dim a
 *     multiple of 16 up to 128, else in SIMT (cuda_attn_decode.cu);
 *   - any other batch takes the tiled kernel, which loads each K/V tile
 *     once for all the query rows of a run of tokens: on tensor cores
 *     (cuda_attn_prefill_mma.cu) for bf16/f16 with head_dim a multiple of
 *     16 up to 128, else in f32 SIMT (the exact mode among others);
 *   - a mixed step whose leading sequences bring one token each
 *     (step->n_decode, as the executor plans decodes first) takes both on
 *     tensor cores: the decode kernel for those rows, the tiled one for
 *     the rest.
 * Both are correct for any batch; the knobs of cuda_backend.h pin either.
 *
 * An fp8 KV cache (F8_E4M3, with bf16/f16 activations): the KV writes
 * quantize (k / k_scale, v / v_scale), the tensor-core kernels read it for
 * head_dim 32, 64 and 128; any other head_dim, or a SIMT knob, takes the
 * SIMT tiled kernel, which reads it too (the SIMT decode kernel does not:
 * fp8 decode steps take the tiled one there, correct for any batch).
 */
#include <math.h>

#include "backend/cuda/cuda_internal.h"

#define MIN_KEYS_PER_SPLIT 32
#define MAX_SPLITS 256
/* Up to this many splits the tensor-core decode kernel merges them itself
 * (its last split block reads every split's partials for up to 16 heads,
 * a latency chain that grows with the splits); beyond, the combine kernel,
 * a block per head, does. B = 1 at context 512 takes 8, at 2048 up to 32. */
#define FUSED_COMBINE_MAX_SPLITS 32

static int is_aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* The decode kernel's blocks per SM for a's shape, asked once per shape class. */
static int decode_occupancy(anvil_cuda_backend *cb, const anvil_cuda_attn *a)
{
    const int di = a->dt == ANVIL_DTYPE_F32 ? 0 : a->dt == ANVIL_DTYPE_BF16 ? 1 : 2;
    const int hi = a->head_dim <= 32 ? 0 : a->head_dim <= 64 ? 1 : a->head_dim <= 128 ? 2 : 3;
    const int group = a->n_heads / a->n_kv_heads;
    const int gi = group <= 1 ? 0 : group <= 2 ? 1 : group <= 4 ? 2 : 3;
    int *slot = &cb->decode_occupancy[di][hi][gi];
    if (*slot == 0)
        *slot = anvil_cuda_attn_decode_blocks_per_sm(a);
    return *slot;
}

/* The same for the tensor-core decode kernel (shared memory bounds it). */
static int decode_mma_occupancy(anvil_cuda_backend *cb, const anvil_cuda_attn *a, int stages)
{
    const int di = a->dt == ANVIL_DTYPE_BF16 ? 0 : 1;
    const int hi = a->head_dim <= 32 ? 0 : a->head_dim <= 64 ? 1 : 2;
    int *slot = &cb->decode_mma_occupancy[di][hi][a->cache_dt == ANVIL_DTYPE_F8_E4M3 ? 2 : stages == 3];
    if (*slot == 0)
        *slot = anvil_cuda_attn_decode_mma_blocks_per_sm(a, stages, cb->smem_optin);
    return *slot;
}

/*
 * Splits of the context for a decode kernel whose grid is `blocks` x the
 * split count and of which `per_sm` blocks fit on an SM (splits a multiple
 * of `align` keys long where the knobs do not pin them). Each block's work
 * shrinks as 1 / n while the grid grows in waves of (per_sm x SMs): pick
 * the n (up to one split per min_keys keys) with the least time: for the
 * SIMT kernel waves x work per block, a little extra per split for the
 * combine; for the tensor-core kernel (align > 1, memory-bound) total work
 * over the blocks streaming at once, each block's work counted with a
 * fixed start of one tile.
 */
static void choose_splits(anvil_cuda_backend *cb, int64_t blocks, int per_sm, int32_t min_keys, int32_t align,
                          int32_t span, int32_t *n_splits, int32_t *split_len)
{
    int64_t n = 1;
    if (cb->knobs.attn_splits > 0) {
        n = cb->knobs.attn_splits < span ? cb->knobs.attn_splits : span;
        n = n < MAX_SPLITS ? n : MAX_SPLITS; /* the combine kernel's bound */
    } else {
        const int64_t wave = (int64_t)per_sm * cb->n_sm;
        int64_t max_n = (span + min_keys - 1) / min_keys;
        if (max_n > MAX_SPLITS)
            max_n = MAX_SPLITS;
        double best = 0;
        for (int64_t c = 1; c <= max_n; c++) {
            const int64_t len = ((span + c - 1) / c + align - 1) / align * align;
            double cost;
            if (align > 1) {
                /* the tensor-core kernel is memory-bound: what counts is how many
                 * blocks stream at once (up to a wave), and each block's work
                 * plus a fixed start (table and first-tile latency, partials:
                 * about one tile) */
                const int64_t active = blocks * c < wave ? blocks * c : wave;
                cost = (double)(blocks * c) * (double)(len + align) / (double)active / (double)span;
            } else {
                const double waves = (double)((blocks * c + wave - 1) / wave);
                /* a split adds (m, l, acc) partials to write and combine:
                 * about 1e-4 of a whole context's scan each */
                cost = waves * (double)len / (double)span + 1e-4 * (double)c;
            }
            if (c == 1 || cost < best) {
                best = cost;
                n = c;
            }
        }
    }
    if (n < 1)
        n = 1;
    int64_t len = (span + n - 1) / n;
    len = (len + align - 1) / align * align; /* whole tiles: a ragged split still pays for its last tile */
    *split_len = (int32_t)(len < 1 ? 1 : len);
    *n_splits = (int32_t)((span + *split_len - 1) / *split_len);
    if (*n_splits < 1)
        *n_splits = 1;
}

/* The per-token split-K kernel over a's tokens (each one of a sequence's
 * last), the context split by the cost model for contexts up to `span`. */
static anvil_status launch_decode(anvil_cuda_backend *cb, anvil_cuda_attn *a, anvil_cuda_attn_kernel kernel,
                                  int32_t span)
{
    if (a->window > 0 && a->window < span)
        span = a->window;
    const int group = a->n_heads / a->n_kv_heads;
    const int mma = kernel == ANVIL_CUDA_ATTN_DECODE && anvil_cuda_attn_decode_mma_ok(a);
    int32_t n_splits = 1, split_len = span;
    const int stages = cb->knobs.attn_decode_stages == 3 ? 3 : 2;
    if (mma) {
        /* 64-key tiles: a split shorter than one leaves warps idle */
        const int64_t blocks = (int64_t)a->n_tokens * a->n_kv_heads * ((group + 15) / 16);
        choose_splits(cb, blocks, decode_mma_occupancy(cb, a, stages), 64, cb->knobs.attn_splits > 0 ? 1 : 64, span,
                      &n_splits, &split_len);
    } else {
        const int rd = group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;
        const int64_t blocks = (int64_t)a->n_tokens * a->n_kv_heads * ((group + rd - 1) / rd);
        choose_splits(cb, blocks, decode_occupancy(cb, a), MIN_KEYS_PER_SPLIT, 1, span, &n_splits, &split_len);
    }
    if (n_splits > 1)
        TRY(anvil_cuda_reserve(cb, &cb->attn_ws, &cb->attn_ws_bytes, anvil_cuda_attn_decode_ws_bytes(a, n_splits),
                               "attention: split-K workspace"));
    int *counters = NULL;
    if (mma && n_splits > 1 && n_splits <= FUSED_COMBINE_MAX_SPLITS && cb->knobs.attn_combine_in_kernel) {
        /* the splits count themselves done; the last merges (and sets its
         * counter back to zero, so a grown buffer is zeroed once) */
        const size_t need = (size_t)anvil_cuda_attn_decode_mma_counters(a) * sizeof(int);
        const int grows = need > cb->attn_cnt_bytes;
        TRY(anvil_cuda_reserve(cb, &cb->attn_cnt, &cb->attn_cnt_bytes, need, "attention: split counters"));
        if (grows) {
            CUDA_TRY(cudaMemsetAsync(cb->attn_cnt, 0, cb->attn_cnt_bytes, cb->stream), "attention: split counters");
            a->pdl = 0; /* the kernel behind the memset launches plainly (anvil_cuda_pdl) */
        }
        counters = (int *)cb->attn_cnt;
    }
    if (mma)
        return anvil_cuda_launch_attn_decode_mma(cb->stream, a, n_splits, split_len, (float *)cb->attn_ws, counters,
                                                 stages, cb->smem_optin);
    return anvil_cuda_launch_attn_decode(cb->stream, a, n_splits, split_len, (float *)cb->attn_ws);
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
        .dt = cb->ops.act_dtype, .cache_dt = args->k_cache->dtype,
        .k_scale = args->k_cache->dtype == ANVIL_DTYPE_F8_E4M3 && args->k_scale != 0.0f ? args->k_scale : 1.0f,
        .v_scale = args->k_cache->dtype == ANVIL_DTYPE_F8_E4M3 && args->v_scale != 0.0f ? args->v_scale : 1.0f,
        .positions = st->positions, .seq_of_token = st->seq_of_token, .block_tables = st->block_tables,
        .slots = st->slots,
        .n_tokens = st->n_tokens, .n_seqs = st->n_seqs, .max_blocks_per_seq = st->max_blocks_per_seq,
        .block_size = st->block_size, .n_blocks = (int32_t)args->k_cache->shape[0],
        .n_heads = args->n_heads, .n_kv_heads = args->n_kv_heads, .head_dim = args->head_dim,
        .window = args->sliding_window, .scale = args->scale, .softcap = args->softcap, .err = cb->d_err,
        .rope = anvil_cuda_rope_of(args->rope, st),
        .pdl = anvil_cuda_pdl(cb),
    };
    if (args->rope != NULL)
        CHECK(args->rope->inv_freq != NULL && isfinite(args->rope->scale) &&
                  (args->rope->inv_freq_long == NULL || st->seq_lens != NULL),
              ANVIL_ERR_INVALID_ARG, "attention: rope without its tables or the step's seq_lens");
    TRY(anvil_cuda_use(cb));
    if (a.rope.inv_freq != NULL)
        TRY(anvil_cuda_launch_rope_kv_write(cb->stream, &a));
    else
        TRY(anvil_cuda_launch_kv_write(cb->stream, &a));

    anvil_cuda_attn_kernel kernel = cb->knobs.attn_kernel;
    if (kernel == ANVIL_CUDA_ATTN_AUTO && st->n_tokens != st->n_seqs && st->n_decode > 0 &&
        st->n_decode < st->n_seqs && anvil_cuda_attn_prefill_mma_ok(&a) && anvil_cuda_attn_decode_mma_ok(&a)) {
        /* a mixed step, decodes first: in the tiled kernel a block would
         * take 64 / group of the decode rows one after another, each alone
         * in a 64-row tile; the decode kernel splits their contexts over
         * the whole GPU instead. The rest goes tiled, its per-token arrays
         * offset past the decode rows (sequence indices stay the step's). */
        anvil_cuda_attn d = a, p = a;
        d.n_tokens = st->n_decode;
        TRY(launch_decode(cb, &d, ANVIL_CUDA_ATTN_DECODE, st->decode_max_context));
        const size_t row = (size_t)a.n_heads * (size_t)a.head_dim * anvil_dtype_size(a.dt);
        p.n_tokens = st->n_tokens - st->n_decode;
        p.q = (const char *)a.q + (size_t)st->n_decode * row;
        p.out = (char *)a.out + (size_t)st->n_decode * row;
        p.positions = a.positions + st->n_decode;
        p.seq_of_token = a.seq_of_token + st->n_decode;
        return anvil_cuda_launch_attn_prefill_mma(cb->stream, &p, cb->smem_optin, cb->knobs.attn_prefill_rows);
    }
    if (kernel == ANVIL_CUDA_ATTN_AUTO)
        kernel = st->n_tokens == st->n_seqs ? ANVIL_CUDA_ATTN_DECODE : ANVIL_CUDA_ATTN_PREFILL;
    if (a.cache_dt == ANVIL_DTYPE_F8_E4M3 &&
        (kernel == ANVIL_CUDA_ATTN_DECODE_SIMT ||
         (kernel == ANVIL_CUDA_ATTN_DECODE && !anvil_cuda_attn_decode_mma_ok(&a))))
        kernel = ANVIL_CUDA_ATTN_PREFILL_SIMT; /* the SIMT decode kernel reads no fp8 */
    if (kernel == ANVIL_CUDA_ATTN_PREFILL && anvil_cuda_attn_prefill_mma_ok(&a))
        return anvil_cuda_launch_attn_prefill_mma(cb->stream, &a, cb->smem_optin, cb->knobs.attn_prefill_rows);
    if (kernel == ANVIL_CUDA_ATTN_PREFILL || kernel == ANVIL_CUDA_ATTN_PREFILL_SIMT)
        return anvil_cuda_launch_attn_prefill(cb->stream, &a, cb->smem_optin);
    return launch_decode(cb, &a, kernel, st->max_context);
}
