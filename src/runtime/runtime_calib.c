/* The calibration pass of a build: AWQ, KV cache scales (runtime_calib.h). */
#include "runtime/runtime_calib.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "anvil/tokenizer.h"
#include "core/error.h"
#include "core/fileutil.h"
#include "runtime/runtime_internal.h"

typedef struct calib_pass {
    anvil_awq *a;        /* NULL: no AWQ */
    int64_t first_token; /* the window's first token in the pass's stream */
    float *kv_amax;      /* [2 * KV layers] or NULL */
    int32_t *kv_slot;    /* [ops]: where op's value goes in kv_amax (an attention's k or v input), or -1 */
} calib_pass;

/* The largest |x| of a value into *amax (a NaN as well: it fails the scale check later). */
static void kv_observe(float *amax, const anvil_tensor *out)
{
    const float *x = out->data;
    const int64_t n = out->shape[0] * out->shape[1];
    float m = *amax;
    for (int64_t i = 0; i < n; i++) {
        const float a = fabsf(x[i]);
        if (a > m || isnan(a))
            m = a;
    }
    *amax = m;
}

/* The runtime's op hook: a group's input, or an attention's k or v,
 * observed as it is computed. */
static anvil_status observe(void *user, int32_t op, const anvil_tensor *out, const anvil_step *s)
{
    (void)s;
    calib_pass *c = user;
    if (c->kv_slot != NULL && c->kv_slot[op] >= 0) {
        CHECK(out->dtype == ANVIL_DTYPE_F32 && out->n_dims == 2, ANVIL_ERR_INTERNAL,
              "calibration: op %d's value is not f32 rows", op);
        kv_observe(&c->kv_amax[c->kv_slot[op]], out);
    }
    if (c->a == NULL || !anvil_awq_wants(c->a, op))
        return ANVIL_OK;
    CHECK(out->dtype == ANVIL_DTYPE_F32 && out->n_dims == 2, ANVIL_ERR_INTERNAL,
          "calibration: op %d's value is not f32 rows", op);
    return anvil_awq_observe(c->a, op, out->data, out->shape[0], out->shape[1], c->first_token);
}

/* The text's tokens (BOS first where the tokenizer adds one) and that BOS. */
static anvil_status calib_tokens(const char *model_dir, const char *path, uint64_t *hash, int32_t **ids,
                                 int64_t *n, int32_t *bos)
{
    *ids = NULL;
    *n = 0;
    *bos = -1;
    char *text = NULL;
    size_t len = 0;
    anvil_tokenizer *tok = NULL;
    anvil_status st = anvil_read_file(path, &text, &len);
    if (st != ANVIL_OK)
        return anvil_error_wrap("the calibration file (--calib)");
    CHECK_GOTO(len > 0, ANVIL_ERR_INVALID_ARG, done, "the calibration file %s is empty (--calib takes a text file)",
               path);
    *hash = XXH64(text, len, 0);
    TRY_GOTO(anvil_tokenizer_load(model_dir, &tok), done);
    st = anvil_tokenizer_encode(tok, text, len, 1, ids, n);
    if (st != ANVIL_OK) {
        anvil_error_wrap("tokenizing the calibration file %s", path);
        goto done;
    }
    int32_t *none = NULL;
    int64_t n_none = 0;
    /* what the post-processor adds around nothing: [BOS] (Llama), [] (Qwen2) */
    TRY_GOTO(anvil_tokenizer_encode(tok, "", 0, 1, &none, &n_none), done);
    *bos = n_none >= 1 ? none[0] : -1;
    free(none);
done:
    anvil_tokenizer_free(tok);
    free(text);
    if (st != ANVIL_OK) {
        free(*ids);
        *ids = NULL;
        *n = 0;
    }
    return st;
}

anvil_status anvil_calib_run(const char *model_dir, const anvil_calib_options *o, anvil_awq *a,
                             anvil_calib_info *info)
{
    memset(info, 0, sizeof *info);
    CHECK(o->text_file != NULL && o->seq_len >= 2, ANVIL_ERR_INVALID_ARG,
          "calibration: no text file, or windows of %d tokens", o->seq_len);
    CHECK(o->max_tokens >= o->seq_len, ANVIL_ERR_INVALID_ARG,
          "calibration: %lld tokens (--calib-tokens) are fewer than one window of %d (--calib-seq-len)",
          (long long)o->max_tokens, o->seq_len);
    int32_t *ids = NULL, *pos = NULL, *blocks = NULL, *kv_slot = NULL;
    int64_t n_ids = 0;
    int32_t bos = -1, n_blocks = 0, taken = 0;
    anvil_runtime *rt = NULL;
    TRY(calib_tokens(model_dir, o->text_file, &info->xxh64, &ids, &n_ids, &bos));
    anvil_status st = ANVIL_OK;
    const int32_t L = o->seq_len;
    CHECK_GOTO(n_ids >= L, ANVIL_ERR_INVALID_ARG, done,
               "the calibration file %s gives %lld tokens, fewer than one window of %d (--calib-seq-len): give "
               "more text or shorter windows",
               o->text_file, (long long)n_ids, L);
    int64_t n_win = n_ids / L;
    if (n_win > o->max_tokens / L)
        n_win = o->max_tokens / L;
    info->n_text_tokens = n_ids;
    info->n_windows = (int32_t)n_win;
    info->n_tokens = n_win * L;
    /* the sampled rows spread over the tokens that run */
    if (a != NULL)
        a->stride = info->n_tokens > a->max_rows ? info->n_tokens / a->max_rows : 1;

    anvil_runtime_options ro;
    anvil_runtime_options_default(&ro);
    ro.device = "cpu";
    ro.n_threads = o->n_threads;
    ro.weight_dtype = ANVIL_DTYPE_F32; /* the unquantized model, in f32 (AutoAWQ runs it in fp16) */
    ro.kv_cache_dtype = "f32";
    ro.no_fusion = 1; /* every value computed by its own op, where the hook sees it */
    ro.max_num_tokens = L;
    ro.max_batch_size = 1;
    ro.max_logit_rows = 1;
    ro.max_seq_len = L;
    ro.kv_cache_tokens = L;
    TRY_GOTO(anvil_runtime_load(model_dir, &ro, &rt), done);
    const int32_t bs = anvil_runtime_kv_block_size(rt);
    n_blocks = (L + bs - 1) / bs;
    pos = malloc((size_t)L * sizeof *pos);
    blocks = malloc((size_t)n_blocks * sizeof *blocks);
    CHECK_GOTO(pos && blocks, ANVIL_ERR_OOM, done, "out of memory");
    for (int32_t i = 0; i < L; i++)
        pos[i] = i;
    TRY_GOTO(anvil_runtime_kv_alloc(rt, n_blocks, blocks), done);
    taken = 1;
    calib_pass c = {.a = a};
    if (o->kv_amax != NULL) {
        /* an attention's k input is its RoPE'd keys, v its values: what the cache stores */
        CHECK_GOTO(o->n_kv_layers == rt->n_kv_layers, ANVIL_ERR_INTERNAL, done,
                   "calibration: %d KV layers asked for, the model has %d", o->n_kv_layers, rt->n_kv_layers);
        kv_slot = malloc((size_t)rt->n_ops * sizeof *kv_slot);
        CHECK_GOTO(kv_slot != NULL, ANVIL_ERR_OOM, done, "out of memory");
        for (int32_t i = 0; i < rt->n_ops; i++)
            kv_slot[i] = -1;
        for (int32_t i = 0; i < rt->n_ops; i++) {
            const anvil_net_op *op = anvil_network_op(rt->net, i);
            if (op->kind != ANVIL_OP_ATTENTION)
                continue;
            kv_slot[op->inputs[1]] = 2 * op->attn.layer;
            kv_slot[op->inputs[2]] = 2 * op->attn.layer + 1;
        }
        memset(o->kv_amax, 0, (size_t)o->n_kv_layers * 2 * sizeof *o->kv_amax);
        c.kv_amax = o->kv_amax;
        c.kv_slot = kv_slot;
    }
    rt->op_hook = observe;
    rt->op_hook_user = &c;
    for (int64_t w = 0; w < n_win; w++) {
        int32_t *win = ids + w * L;
        if (bos >= 0)
            win[0] = bos; /* every window starts as a text does (as anvil perplexity's) */
        const int32_t seq_starts[2] = {0, L};
        const anvil_batch b = {
            .n_tokens = L,
            .token_ids = win,
            .positions = pos,
            .n_seqs = 1,
            .seq_starts = seq_starts,
            .block_tables = blocks,
            .max_blocks_per_seq = n_blocks,
            .n_logits = 0,
        };
        c.first_token = w * L;
        TRY_GOTO(anvil_runtime_forward(rt, &b, NULL), done);
    }
done:
    if (taken)
        anvil_runtime_kv_release(rt, n_blocks, blocks);
    anvil_runtime_free(rt);
    free(ids);
    free(pos);
    free(blocks);
    free(kv_slot);
    return st;
}
