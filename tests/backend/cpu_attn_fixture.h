/*
 * cpu_attn_fixture.h: builds an attention step for the CPU backend tests.
 *
 * A case lists sequences as (tokens already cached, new tokens); the new
 * tokens of all sequences are packed back to back, so one step mixes
 * prefill chunks (n_new > 1) and decode tokens (n_new == 1). KV blocks are
 * handed out in a shuffled order (scattered, non-monotonic block tables);
 * with a sliding window, table entries wholly behind every query's window
 * are set to -1, so reading them would fail the run. The caches start full
 * of random values, which stand for the earlier tokens.
 */
#ifndef ANVIL_TESTS_CPU_ATTN_FIXTURE_H
#define ANVIL_TESTS_CPU_ATTN_FIXTURE_H

#include "cpu_testkit.h"

#define FIX_MAX_SEQS 8

typedef struct attn_case {
    int32_t head_dim, n_heads, n_kv_heads, block_size, window;
    anvil_dtype cache_dt;
    float scale; /* 0: 1 / sqrt(head_dim) */
    int n_seqs;
    struct {
        int32_t cached, n_new;
    } seqs[FIX_MAX_SEQS];
} attn_case;

typedef struct attn_fixture {
    attn_case c;
    int32_t T, n_blocks, max_blocks;
    int32_t *token_ids, *positions, *seq_of_token, *seq_starts, *seq_lens, *block_tables, *slots;
    anvil_step step;
    float *q, *k, *v;          /* [T, n_heads * hd], [T, n_kv * hd] x 2 */
    void *kc0, *vc0;           /* the caches before the step */
    size_t cache_bytes;
    float k_scale, v_scale;    /* an fp8 cache's (anvil_attention_args); 0 (as built): 1 */
    float softcap;             /* the scores' soft cap (Gemma 2); 0 (as built): none */
} attn_fixture;

static inline void *fix_calloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (p == NULL)
        fail_msg("out of memory");
    return p;
}

static inline void fix_set_step(attn_fixture *f)
{
    int32_t max_ctx = 0;
    for (int s = 0; s < f->c.n_seqs; s++)
        max_ctx = f->seq_lens[s] > max_ctx ? f->seq_lens[s] : max_ctx;
    f->step = (anvil_step){
        .n_tokens = f->T,
        .n_seqs = f->c.n_seqs,
        .max_blocks_per_seq = f->max_blocks,
        .block_size = f->c.block_size,
        .max_context = max_ctx,
        .token_ids = f->token_ids,
        .positions = f->positions,
        .seq_of_token = f->seq_of_token,
        .seq_starts = f->seq_starts,
        .seq_lens = f->seq_lens,
        .block_tables = f->block_tables,
        .slots = f->slots,
    };
}

static inline void attn_fixture_build(attn_fixture *f, const attn_case *c, uint64_t *rng)
{
    memset(f, 0, sizeof *f);
    f->c = *c;
    int32_t bs = c->block_size;
    for (int s = 0; s < c->n_seqs; s++) {
        int32_t len = c->seqs[s].cached + c->seqs[s].n_new;
        int32_t nb = (len + bs - 1) / bs;
        f->n_blocks += nb;
        f->max_blocks = nb + 1 > f->max_blocks ? nb + 1 : f->max_blocks;
        f->T += c->seqs[s].n_new;
    }
    f->n_blocks += 3; /* spare blocks nobody owns */
    int32_t *perm = fix_calloc((size_t)f->n_blocks, sizeof *perm);
    for (int32_t i = 0; i < f->n_blocks; i++)
        perm[i] = i;
    for (int32_t i = f->n_blocks - 1; i > 0; i--) {
        int32_t j = (int32_t)(anvil_test_rand(rng) % (uint64_t)(i + 1)), tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    f->token_ids = fix_calloc((size_t)f->T, 4);
    f->positions = fix_calloc((size_t)f->T, 4);
    f->seq_of_token = fix_calloc((size_t)f->T, 4);
    f->slots = fix_calloc((size_t)f->T, 4);
    f->seq_starts = fix_calloc((size_t)c->n_seqs + 1, 4);
    f->seq_lens = fix_calloc((size_t)c->n_seqs, 4);
    f->block_tables = fix_calloc((size_t)c->n_seqs * (size_t)f->max_blocks, 4);
    int32_t next_block = 0, t = 0;
    for (int s = 0; s < c->n_seqs; s++) {
        int32_t cached = c->seqs[s].cached, len = cached + c->seqs[s].n_new;
        int32_t *bt = f->block_tables + (int64_t)s * f->max_blocks;
        for (int32_t b = 0; b < f->max_blocks; b++)
            bt[b] = b < (len + bs - 1) / bs ? perm[next_block++] : -1;
        /* blocks behind every window of this step: freed (-1) */
        int32_t lo_min = anvil_cpu_window_lo(cached, c->window);
        for (int32_t b = 0; b < lo_min / bs; b++)
            bt[b] = -1;
        f->seq_starts[s] = t;
        f->seq_lens[s] = len;
        for (int32_t p = cached; p < len; p++, t++) {
            f->positions[t] = p;
            f->seq_of_token[t] = s;
            f->slots[t] = bt[p / bs] * bs + p % bs;
        }
    }
    f->seq_starts[c->n_seqs] = t;
    free(perm);
    fix_set_step(f);

    int64_t qw = (int64_t)c->n_heads * c->head_dim, kw = (int64_t)c->n_kv_heads * c->head_dim;
    f->q = fix_calloc((size_t)(f->T * qw), 4);
    f->k = fix_calloc((size_t)(f->T * kw), 4);
    f->v = fix_calloc((size_t)(f->T * kw), 4);
    kit_fill_f32(f->q, f->T * qw, rng);
    kit_fill_f32(f->k, f->T * kw, rng);
    kit_fill_f32(f->v, f->T * kw, rng);
    int64_t cache_elems = (int64_t)f->n_blocks * bs * kw;
    f->cache_bytes = (size_t)cache_elems * anvil_dtype_size(c->cache_dt);
    f->kc0 = fix_calloc(f->cache_bytes, 1);
    f->vc0 = fix_calloc(f->cache_bytes, 1);
    kit_fill_dtype(f->kc0, c->cache_dt, cache_elems, rng);
    kit_fill_dtype(f->vc0, c->cache_dt, cache_elems, rng);
}

/* A one-token step: token t of f alone, with its sequence's block table,
 * over caches kc/vc (copied into the new fixture as its starting caches). */
static inline void attn_fixture_single(const attn_fixture *f, int32_t t, const void *kc, const void *vc,
                                       attn_fixture *one)
{
    memset(one, 0, sizeof *one);
    one->c = f->c;
    one->c.n_seqs = 1;
    one->T = 1;
    one->n_blocks = f->n_blocks;
    one->max_blocks = f->max_blocks;
    int32_t s = f->seq_of_token[t];
    int64_t qw = (int64_t)f->c.n_heads * f->c.head_dim, kw = (int64_t)f->c.n_kv_heads * f->c.head_dim;
    one->token_ids = fix_calloc(1, 4);
    one->positions = fix_calloc(1, 4);
    one->seq_of_token = fix_calloc(1, 4);
    one->slots = fix_calloc(1, 4);
    one->seq_starts = fix_calloc(2, 4);
    one->seq_lens = fix_calloc(1, 4);
    one->block_tables = fix_calloc((size_t)f->max_blocks, 4);
    one->positions[0] = f->positions[t];
    one->slots[0] = f->slots[t];
    one->seq_starts[1] = 1;
    one->seq_lens[0] = f->positions[t] + 1;
    memcpy(one->block_tables, f->block_tables + (int64_t)s * f->max_blocks, (size_t)f->max_blocks * 4);
    fix_set_step(one);
    one->q = fix_calloc((size_t)qw, 4);
    one->k = fix_calloc((size_t)kw, 4);
    one->v = fix_calloc((size_t)kw, 4);
    memcpy(one->q, f->q + t * qw, (size_t)qw * 4);
    memcpy(one->k, f->k + t * kw, (size_t)kw * 4);
    memcpy(one->v, f->v + t * kw, (size_t)kw * 4);
    one->cache_bytes = f->cache_bytes;
    one->kc0 = fix_calloc(f->cache_bytes, 1);
    one->vc0 = fix_calloc(f->cache_bytes, 1);
    memcpy(one->kc0, kc, f->cache_bytes);
    memcpy(one->vc0, vc, f->cache_bytes);
}

/* The result of running the step once: out and the caches after it. */
typedef struct attn_result {
    gbuf out, kc, vc;
} attn_result;

/* Runs f on be (NULL: the reference) from fresh copies of the caches. */
static inline attn_result attn_fixture_run(const attn_fixture *f, anvil_backend *be)
{
    const attn_case *c = &f->c;
    int64_t qw = (int64_t)c->n_heads * c->head_dim, kw = (int64_t)c->n_kv_heads * c->head_dim;
    attn_result r;
    r.out = gbuf_new((size_t)(f->T * qw) * 4, 0);
    r.kc = gbuf_new(f->cache_bytes, 0);
    r.vc = gbuf_new(f->cache_bytes, 0);
    memcpy(r.kc.data, f->kc0, f->cache_bytes);
    memcpy(r.vc.data, f->vc0, f->cache_bytes);
    anvil_tensor tq = anvil_tensor_2d(ANVIL_DTYPE_F32, f->T, qw, f->q);
    anvil_tensor tk = anvil_tensor_2d(ANVIL_DTYPE_F32, f->T, kw, f->k);
    anvil_tensor tv = anvil_tensor_2d(ANVIL_DTYPE_F32, f->T, kw, f->v);
    anvil_tensor to = anvil_tensor_2d(ANVIL_DTYPE_F32, f->T, qw, r.out.data);
    anvil_tensor tkc = {.dtype = c->cache_dt, .n_dims = 4,
                        .shape = {f->n_blocks, c->block_size, c->n_kv_heads, c->head_dim}, .data = r.kc.data};
    anvil_tensor tvc = tkc;
    tvc.data = r.vc.data;
    anvil_attention_args a = {
        .q = &tq, .k = &tk, .v = &tv, .k_cache = &tkc, .v_cache = &tvc, .out = &to, .step = &f->step,
        .n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads, .head_dim = c->head_dim,
        .sliding_window = c->window, .scale = c->scale != 0 ? c->scale : 1.0f / sqrtf((float)c->head_dim),
        .k_scale = f->k_scale, .v_scale = f->v_scale, .softcap = f->softcap,
    };
    if (be == NULL)
        KIT_OK(anvil_cpu_ref_attention(&a));
    else
        KIT_OK(be->ops->attention(be, &a));
    gbuf_check(&r.out, "attention out");
    gbuf_check(&r.kc, "attention k_cache");
    gbuf_check(&r.vc, "attention v_cache");
    return r;
}

static inline void attn_result_free(attn_result *r)
{
    gbuf_free(&r->out);
    gbuf_free(&r->kc);
    gbuf_free(&r->vc);
}

static inline void attn_fixture_free(attn_fixture *f)
{
    free(f->token_ids);
    free(f->positions);
    free(f->seq_of_token);
    free(f->seq_starts);
    free(f->seq_lens);
    free(f->block_tables);
    free(f->slots);
    free(f->q);
    free(f->k);
    free(f->v);
    free(f->kc0);
    free(f->vc0);
    memset(f, 0, sizeof *f);
}

#endif
