/* Argument checks shared by the CPU reference and the optimized ops, so that
 * both accept exactly the same calls and no kernel ever indexes out of
 * bounds on a bad step (a wrong slot or block table is the runtime's bug,
 * but it must come back as a status, not as memory corruption). */
#include <limits.h>
#include <math.h>

#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/cpu_quant.h"
#include "core/error.h"

static anvil_status check_act(const anvil_tensor *t, const char *what)
{
    CHECK(t != NULL && t->data != NULL, ANVIL_ERR_INVALID_ARG, "%s: missing tensor", what);
    CHECK(t->n_dims == 2 && t->shape[0] >= 0 && t->shape[1] >= 0, ANVIL_ERR_INVALID_ARG,
          "%s: expected a 2-D activation", what);
    CHECK(t->dtype == ANVIL_DTYPE_F32, ANVIL_ERR_UNSUPPORTED, "%s: CPU activations are f32, got %s", what,
          anvil_dtype_name(t->dtype));
    return ANVIL_OK;
}

static anvil_status check_weight_dtype(const anvil_tensor *t, const char *what)
{
    CHECK(anvil_cpu_is_float_dtype(t->dtype), ANVIL_ERR_UNSUPPORTED,
          "%s: dtype %s (the CPU backend takes f32, bf16 and f16)", what, anvil_dtype_name(t->dtype));
    return ANVIL_OK;
}

static anvil_status check_vector(const anvil_tensor *w, int64_t n, const char *what)
{
    CHECK(w != NULL && w->data != NULL, ANVIL_ERR_INVALID_ARG, "%s: missing tensor", what);
    TRY(check_weight_dtype(w, what));
    CHECK(anvil_tensor_numel(w) == n && (w->n_dims == 1 || (w->n_dims == 2 && w->shape[0] == 1)),
          ANVIL_ERR_INVALID_ARG, "%s: expected [%lld]", what, (long long)n);
    return ANVIL_OK;
}

static anvil_status check_same_shape(const anvil_tensor *a, const anvil_tensor *b, const char *what)
{
    CHECK(a->shape[0] == b->shape[0] && a->shape[1] == b->shape[1], ANVIL_ERR_INVALID_ARG,
          "%s: shape [%lld, %lld] vs [%lld, %lld]", what, (long long)a->shape[0], (long long)a->shape[1],
          (long long)b->shape[0], (long long)b->shape[1]);
    return ANVIL_OK;
}

static anvil_status check_step_tokens(const anvil_step *step, int64_t rows, const char *what)
{
    CHECK(step != NULL, ANVIL_ERR_INVALID_ARG, "%s: missing step", what);
    CHECK(step->n_tokens >= 0 && step->n_tokens == rows, ANVIL_ERR_INVALID_ARG,
          "%s: %lld rows for a step of %d tokens", what, (long long)rows, step->n_tokens);
    return ANVIL_OK;
}

anvil_status anvil_cpu_check_embedding_part(const anvil_tensor *table, int64_t first_id, const anvil_step *step,
                                            const anvil_tensor *out)
{
    TRY(check_act(out, "embedding out"));
    CHECK(table != NULL && table->data != NULL && table->n_dims == 2, ANVIL_ERR_INVALID_ARG,
          "embedding: expected a 2-D table");
    TRY(check_weight_dtype(table, "embedding table"));
    CHECK(table->shape[1] == out->shape[1] && first_id >= 0, ANVIL_ERR_INVALID_ARG,
          "embedding: table width %lld, out width %lld, first id %lld", (long long)table->shape[1],
          (long long)out->shape[1], (long long)first_id);
    TRY(check_step_tokens(step, out->shape[0], "embedding"));
    CHECK(step->n_tokens == 0 || step->token_ids != NULL, ANVIL_ERR_INVALID_ARG, "embedding: no token ids");
    for (int32_t t = 0; t < step->n_tokens; t++)
        CHECK(step->token_ids[t] >= 0, ANVIL_ERR_INVALID_ARG, "embedding: token id %d at row %d",
              step->token_ids[t], t);
    return ANVIL_OK;
}

anvil_status anvil_cpu_check_embedding(const anvil_tensor *table, const anvil_step *step, const anvil_tensor *out)
{
    TRY(check_act(out, "embedding out"));
    CHECK(table != NULL && table->data != NULL && table->n_dims == 2, ANVIL_ERR_INVALID_ARG,
          "embedding: expected a 2-D table");
    TRY(check_weight_dtype(table, "embedding table"));
    CHECK(table->shape[1] == out->shape[1], ANVIL_ERR_INVALID_ARG, "embedding: table width %lld, out width %lld",
          (long long)table->shape[1], (long long)out->shape[1]);
    TRY(check_step_tokens(step, out->shape[0], "embedding"));
    CHECK(step->n_tokens == 0 || step->token_ids != NULL, ANVIL_ERR_INVALID_ARG, "embedding: no token ids");
    for (int32_t t = 0; t < step->n_tokens; t++)
        CHECK(step->token_ids[t] >= 0 && step->token_ids[t] < table->shape[0], ANVIL_ERR_INVALID_ARG,
              "embedding: token id %d at row %d outside the vocabulary [0, %lld)", step->token_ids[t], t,
              (long long)table->shape[0]);
    return ANVIL_OK;
}

anvil_status anvil_cpu_check_rmsnorm(const anvil_tensor *x, const anvil_tensor *w, int64_t width, const anvil_tensor *out)
{
    TRY(check_act(x, "rmsnorm x"));
    TRY(check_act(out, "rmsnorm out"));
    TRY(check_same_shape(x, out, "rmsnorm"));
    CHECK(width > 0 && x->shape[1] % width == 0, ANVIL_ERR_INVALID_ARG,
          "rmsnorm: row width %lld is not a multiple of %lld", (long long)x->shape[1], (long long)width);
    return check_vector(w, width, "rmsnorm weight");
}

anvil_status anvil_cpu_check_matmul(const anvil_tensor *x, const anvil_tensor *w, const anvil_tensor *bias,
                                    const anvil_tensor *out)
{
    TRY(check_act(x, "matmul x"));
    TRY(check_act(out, "matmul out"));
    CHECK(w != NULL && w->data != NULL && w->n_dims == 2, ANVIL_ERR_INVALID_ARG, "matmul: expected a 2-D weight");
    TRY(anvil_cpu_check_quant_weight(w));
    if (w->quant == NULL)
        TRY(check_weight_dtype(w, "matmul weight"));
    CHECK(w->shape[1] == x->shape[1] && w->shape[0] == out->shape[1] && x->shape[0] == out->shape[0],
          ANVIL_ERR_INVALID_ARG, "matmul: x [%lld, %lld] w [%lld, %lld] out [%lld, %lld]", (long long)x->shape[0],
          (long long)x->shape[1], (long long)w->shape[0], (long long)w->shape[1], (long long)out->shape[0],
          (long long)out->shape[1]);
    CHECK(out->data != x->data || x->shape[0] == 0, ANVIL_ERR_INVALID_ARG, "matmul: out must not alias x");
    if (bias != NULL) {
        TRY(check_vector(bias, w->shape[0], "matmul bias"));
        /* a quantized weight's bias stays in the checkpoint's dtype */
        CHECK(bias->dtype == w->dtype || bias->dtype == ANVIL_DTYPE_F32 || w->quant != NULL, ANVIL_ERR_UNSUPPORTED,
              "matmul: bias dtype %s with weight dtype %s", anvil_dtype_name(bias->dtype),
              anvil_dtype_name(w->dtype));
    }
    return ANVIL_OK;
}

anvil_status anvil_cpu_check_rope(const anvil_tensor *x, const anvil_step *step, int32_t head_dim,
                                  const anvil_rope_freqs *f)
{
    TRY(check_act(x, "rope x"));
    CHECK(head_dim > 0 && head_dim % 2 == 0 && x->shape[1] % head_dim == 0, ANVIL_ERR_INVALID_ARG,
          "rope: head_dim %d must be even and divide the row width %lld", head_dim, (long long)x->shape[1]);
    CHECK(f != NULL && f->inv_freq != NULL, ANVIL_ERR_INVALID_ARG, "rope: missing inv_freq");
    CHECK(isfinite(f->scale), ANVIL_ERR_INVALID_ARG, "rope: scale %g", (double)f->scale);
    TRY(check_step_tokens(step, x->shape[0], "rope"));
    CHECK(step->n_tokens == 0 || step->positions != NULL, ANVIL_ERR_INVALID_ARG, "rope: no positions");
    if (f->inv_freq_long == NULL || step->n_tokens == 0)
        return ANVIL_OK;
    /* the long table is picked by each token's sequence length */
    CHECK(step->seq_of_token != NULL && step->seq_lens != NULL, ANVIL_ERR_INVALID_ARG,
          "rope: two tables need the step's seq_of_token and seq_lens");
    for (int32_t t = 0; t < step->n_tokens; t++)
        CHECK(step->seq_of_token[t] >= 0 && step->seq_of_token[t] < step->n_seqs, ANVIL_ERR_INVALID_ARG,
              "rope: token %d of sequence %d (the step has %d)", t, step->seq_of_token[t], step->n_seqs);
    return ANVIL_OK;
}

anvil_status anvil_cpu_check_binary(const anvil_tensor *a, const anvil_tensor *b, const anvil_tensor *out)
{
    TRY(check_act(a, "elementwise a"));
    TRY(check_act(b, "elementwise b"));
    TRY(check_act(out, "elementwise out"));
    TRY(check_same_shape(a, b, "elementwise"));
    return check_same_shape(a, out, "elementwise out");
}

anvil_status anvil_cpu_check_unary(const anvil_tensor *x, const anvil_tensor *out, const char *what)
{
    TRY(check_act(x, what));
    TRY(check_act(out, what));
    return check_same_shape(x, out, what);
}

anvil_status anvil_cpu_check_layernorm(const anvil_tensor *x, const anvil_tensor *w, const anvil_tensor *b,
                                       float eps, const anvil_tensor *out)
{
    TRY(check_act(x, "layernorm x"));
    TRY(check_act(out, "layernorm out"));
    TRY(check_same_shape(x, out, "layernorm"));
    CHECK(isfinite(eps) && eps > 0, ANVIL_ERR_INVALID_ARG, "layernorm: eps must be positive, got %g", (double)eps);
    TRY(check_vector(w, x->shape[1], "layernorm weight"));
    return check_vector(b, x->shape[1], "layernorm bias");
}

anvil_status anvil_cpu_check_pos_embedding(const anvil_tensor *x, const anvil_tensor *table, const anvil_step *step,
                                           const anvil_tensor *out)
{
    TRY(check_act(x, "pos_embedding x"));
    TRY(check_act(out, "pos_embedding out"));
    TRY(check_same_shape(x, out, "pos_embedding"));
    CHECK(table != NULL && table->data != NULL && table->n_dims == 2, ANVIL_ERR_INVALID_ARG,
          "pos_embedding: expected a 2-D table");
    TRY(check_weight_dtype(table, "pos_embedding table"));
    CHECK(table->shape[1] == x->shape[1], ANVIL_ERR_INVALID_ARG, "pos_embedding: table width %lld, x width %lld",
          (long long)table->shape[1], (long long)x->shape[1]);
    TRY(check_step_tokens(step, x->shape[0], "pos_embedding"));
    CHECK(step->n_tokens == 0 || step->positions != NULL, ANVIL_ERR_INVALID_ARG, "pos_embedding: no positions");
    for (int32_t t = 0; t < step->n_tokens; t++)
        CHECK(step->positions[t] >= 0 && step->positions[t] < table->shape[0], ANVIL_ERR_INVALID_ARG,
              "pos_embedding: position %d at row %d outside the table's %lld positions", step->positions[t], t,
              (long long)table->shape[0]);
    return ANVIL_OK;
}

anvil_status anvil_cpu_check_gather_rows(const anvil_tensor *x, const anvil_step *step, const anvil_tensor *out)
{
    TRY(check_act(x, "gather_rows x"));
    TRY(check_act(out, "gather_rows out"));
    CHECK(step != NULL, ANVIL_ERR_INVALID_ARG, "gather_rows: missing step");
    CHECK(out->shape[0] == step->n_logits && out->shape[1] == x->shape[1], ANVIL_ERR_INVALID_ARG,
          "gather_rows: out [%lld, %lld] for %d rows of width %lld", (long long)out->shape[0],
          (long long)out->shape[1], step->n_logits, (long long)x->shape[1]);
    CHECK(step->n_logits == 0 || step->logit_rows != NULL, ANVIL_ERR_INVALID_ARG, "gather_rows: no logit rows");
    for (int32_t i = 0; i < step->n_logits; i++)
        CHECK(step->logit_rows[i] >= 0 && step->logit_rows[i] < x->shape[0], ANVIL_ERR_INVALID_ARG,
              "gather_rows: row %d outside [0, %lld)", step->logit_rows[i], (long long)x->shape[0]);
    CHECK(out->data != x->data || step->n_logits == 0, ANVIL_ERR_INVALID_ARG, "gather_rows: out must not alias x");
    return ANVIL_OK;
}

static anvil_status check_cache(const anvil_tensor *c, const anvil_attention_args *a, const char *what)
{
    CHECK(c != NULL && c->data != NULL && c->n_dims == 4, ANVIL_ERR_INVALID_ARG,
          "attention: %s must be [n_blocks, block_size, n_kv_heads, head_dim]", what);
    CHECK(anvil_cpu_is_float_dtype(c->dtype) || c->dtype == ANVIL_DTYPE_F8_E4M3, ANVIL_ERR_UNSUPPORTED,
          "attention: %s dtype %s", what, anvil_dtype_name(c->dtype));
    CHECK(c->shape[0] > 0 && c->shape[1] == a->step->block_size && c->shape[2] == a->n_kv_heads &&
              c->shape[3] == a->head_dim,
          ANVIL_ERR_INVALID_ARG, "attention: %s is [%lld, %lld, %lld, %lld], want [*, %d, %d, %d]", what,
          (long long)c->shape[0], (long long)c->shape[1], (long long)c->shape[2], (long long)c->shape[3],
          a->step->block_size, a->n_kv_heads, a->head_dim);
    return ANVIL_OK;
}

/* The step's tokens, slots and the block-table entries their queries
 * read (positions [window_lo, p]) against a paged cache of n_blocks. */
static anvil_status check_paged_step(const anvil_step *st, int64_t n_blocks, int32_t window, const char *what)
{
    const int64_t T = st->n_tokens;
    if (T == 0)
        return ANVIL_OK;
    CHECK(st->positions && st->seq_of_token && st->seq_starts && st->block_tables && st->slots,
          ANVIL_ERR_INVALID_ARG, "%s: step arrays missing", what);
    int64_t n_slots = n_blocks * st->block_size;
    CHECK(st->seq_starts[0] == 0 && st->seq_starts[st->n_seqs] == T, ANVIL_ERR_INVALID_ARG,
          "%s: seq_starts must run from 0 to n_tokens %lld", what, (long long)T);
    for (int32_t s = 0; s < st->n_seqs; s++) {
        int32_t b = st->seq_starts[s], e = st->seq_starts[s + 1];
        CHECK(b <= e, ANVIL_ERR_INVALID_ARG, "%s: seq_starts not increasing at %d", what, s);
        int32_t lo_min = INT32_MAX, p_max = -1;
        for (int32_t t = b; t < e; t++) {
            int32_t p = st->positions[t];
            CHECK(st->seq_of_token[t] == s, ANVIL_ERR_INVALID_ARG,
                  "%s: token %d is in sequence %d but seq_of_token says %d", what, t, s, st->seq_of_token[t]);
            CHECK(p >= 0 && p / st->block_size < st->max_blocks_per_seq, ANVIL_ERR_INVALID_ARG,
                  "%s: position %d of token %d outside the block table", what, p, t);
            CHECK(st->slots[t] >= 0 && st->slots[t] < n_slots, ANVIL_ERR_INVALID_ARG,
                  "%s: slot %d of token %d outside the cache [0, %lld)", what, st->slots[t], t,
                  (long long)n_slots);
            int32_t lo = anvil_cpu_window_lo(p, window);
            lo_min = lo < lo_min ? lo : lo_min;
            p_max = p > p_max ? p : p_max;
        }
        /* Only the blocks some query reads must be valid (a sliding window
         * lets the runtime free the ones behind it). */
        for (int32_t blk = lo_min / st->block_size; e > b && blk <= p_max / st->block_size; blk++) {
            int32_t id = st->block_tables[(int64_t)s * st->max_blocks_per_seq + blk];
            CHECK(id >= 0 && id < n_blocks, ANVIL_ERR_INVALID_ARG,
                  "%s: block table of sequence %d names block %d at %d, outside [0, %lld)", what, s, id, blk,
                  (long long)n_blocks);
        }
    }
    return ANVIL_OK;
}

anvil_status anvil_cpu_check_attention(const anvil_attention_args *a)
{
    CHECK(a != NULL && a->step != NULL, ANVIL_ERR_INVALID_ARG, "attention: missing arguments");
    const anvil_step *st = a->step;
    CHECK(a->n_heads > 0 && a->n_kv_heads > 0 && a->n_heads % a->n_kv_heads == 0 && a->head_dim > 0,
          ANVIL_ERR_INVALID_ARG, "attention: n_heads %d, n_kv_heads %d, head_dim %d", a->n_heads, a->n_kv_heads,
          a->head_dim);
    CHECK(a->sliding_window >= 0, ANVIL_ERR_INVALID_ARG, "attention: sliding window %d", a->sliding_window);
    CHECK(st->block_size > 0 && st->max_blocks_per_seq > 0 && st->n_seqs >= 0, ANVIL_ERR_INVALID_ARG,
          "attention: block_size %d, max_blocks_per_seq %d, n_seqs %d", st->block_size, st->max_blocks_per_seq,
          st->n_seqs);
    TRY(check_act(a->q, "attention q"));
    TRY(check_act(a->k, "attention k"));
    TRY(check_act(a->v, "attention v"));
    TRY(check_act(a->out, "attention out"));
    int64_t qw = (int64_t)a->n_heads * a->head_dim, kw = (int64_t)a->n_kv_heads * a->head_dim;
    int64_t T = st->n_tokens;
    CHECK(a->q->shape[0] == T && a->q->shape[1] == qw && a->out->shape[0] == T && a->out->shape[1] == qw &&
              a->k->shape[0] == T && a->k->shape[1] == kw && a->v->shape[0] == T && a->v->shape[1] == kw,
          ANVIL_ERR_INVALID_ARG, "attention: q/k/v/out shapes do not match %lld tokens x %d/%d heads x %d",
          (long long)T, a->n_heads, a->n_kv_heads, a->head_dim);
    CHECK(a->out->data != a->q->data || T == 0, ANVIL_ERR_INVALID_ARG, "attention: out must not alias q");
    TRY(check_cache(a->k_cache, a, "k_cache"));
    TRY(check_cache(a->v_cache, a, "v_cache"));
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
    return check_paged_step(st, a->k_cache->shape[0], a->sliding_window, "attention");
}

anvil_status anvil_cpu_check_mla(const anvil_mla_args *a)
{
    CHECK(a != NULL && a->step != NULL && a->rope != NULL && a->rope->inv_freq != NULL, ANVIL_ERR_INVALID_ARG,
          "mla: missing arguments");
    const anvil_step *st = a->step;
    CHECK(a->n_heads > 0 && a->kv_rank > 0 && a->nope_dim > 0 && a->rope_dim > 0 && a->rope_dim % 2 == 0 &&
              a->v_dim > 0 && a->scale > 0.0f && isfinite(a->scale) && a->form >= 0 && a->form <= 2,
          ANVIL_ERR_INVALID_ARG, "mla: %d heads, rank %d, dims %d/%d/%d, scale %g, form %d", a->n_heads,
          a->kv_rank, a->nope_dim, a->rope_dim, a->v_dim, (double)a->scale, a->form);
    CHECK(a->rope->inv_freq_long == NULL && isfinite(a->rope->scale), ANVIL_ERR_INVALID_ARG,
          "mla: one rope table and a finite scale");
    CHECK(st->block_size > 0 && st->max_blocks_per_seq > 0 && st->n_seqs >= 0, ANVIL_ERR_INVALID_ARG,
          "mla: block_size %d, max_blocks_per_seq %d, n_seqs %d", st->block_size, st->max_blocks_per_seq,
          st->n_seqs);
    TRY(check_act(a->q, "mla q"));
    TRY(check_act(a->c, "mla c"));
    TRY(check_act(a->k_pe, "mla k_pe"));
    TRY(check_act(a->out, "mla out"));
    const int64_t T = st->n_tokens, H = a->n_heads;
    CHECK(a->q->shape[0] == T && a->q->shape[1] == H * (a->nope_dim + a->rope_dim) && a->c->shape[0] == T &&
              a->c->shape[1] == a->kv_rank && a->k_pe->shape[0] == T && a->k_pe->shape[1] == a->rope_dim &&
              a->out->shape[0] == T && a->out->shape[1] == H * a->v_dim,
          ANVIL_ERR_INVALID_ARG, "mla: q/c/k_pe/out shapes do not match %lld tokens x %d heads", (long long)T,
          a->n_heads);
    CHECK(T == 0 || (a->out->data != a->q->data && a->out->data != a->c->data && a->out->data != a->k_pe->data),
          ANVIL_ERR_INVALID_ARG, "mla: out must not alias an input");
    const anvil_tensor *w = a->kv_b;
    CHECK(w != NULL && w->data != NULL && w->n_dims == 2 && w->quant == NULL, ANVIL_ERR_INVALID_ARG,
          "mla: kv_b must be a dense 2-D weight");
    TRY(check_weight_dtype(w, "mla kv_b"));
    CHECK(w->shape[0] == H * (a->nope_dim + a->v_dim) && w->shape[1] == a->kv_rank, ANVIL_ERR_INVALID_ARG,
          "mla: kv_b is [%lld, %lld], want [%lld, %d]", (long long)w->shape[0], (long long)w->shape[1],
          (long long)(H * (a->nope_dim + a->v_dim)), a->kv_rank);
    const anvil_tensor *c = a->cache;
    CHECK(c != NULL && c->data != NULL && c->n_dims == 4, ANVIL_ERR_INVALID_ARG,
          "mla: cache must be [n_blocks, block_size, 1, kv_rank + rope_dim]");
    CHECK(anvil_cpu_is_float_dtype(c->dtype), ANVIL_ERR_UNSUPPORTED,
          "mla: cache dtype %s (the latent cache is f32, bf16 or f16)", anvil_dtype_name(c->dtype));
    CHECK(c->shape[0] > 0 && c->shape[1] == st->block_size && c->shape[2] == 1 &&
              c->shape[3] == (int64_t)a->kv_rank + a->rope_dim,
          ANVIL_ERR_INVALID_ARG, "mla: cache is [%lld, %lld, %lld, %lld], want [*, %d, 1, %d]",
          (long long)c->shape[0], (long long)c->shape[1], (long long)c->shape[2], (long long)c->shape[3],
          st->block_size, a->kv_rank + a->rope_dim);
    return check_paged_step(st, c->shape[0], 0, "mla");
}
