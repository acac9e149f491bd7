/*
 * Multi-head latent attention on the CPU (backend.h, anvil_mla_args;
 * DeepSeek-V2). The cache holds one row a token: the normalized latent c
 * (kv_rank) and the rotated rope key (rope_dim); keys and values exist only
 * as products of the latent with kv_b's per-head blocks W_UK_h [nope, rank]
 * and W_UV_h [v, rank]. Two forms of the same attention:
 *
 *   expanded (a sequence with several rows in the step: a prefill chunk):
 *     one work item per (sequence, head) multiplies each cached latent
 *     through W_UK_h and W_UV_h once, then runs every row of the sequence
 *     over those keys and values, as transformers does;
 *   absorbed (one row: a decode step): one work item per (token, head)
 *     takes q_nope into the latent space (W_UK_h^T q_nope, rank wide),
 *     scores the cached latents directly, sums them by the softmax
 *     weights and maps that one latent through W_UV_h: it reads each
 *     cached row once and expands nothing.
 *
 * The two differ only in the order of the sums (q . (W c) against
 * (W^T q) . c), so they agree to float rounding; tests/backend/test_cpu_mla.c
 * holds both to the reference. Which thread runs an item never changes its
 * arithmetic, and the form depends on the sequence's own rows only, so a
 * token's result is the same whatever else the step holds.
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "backend/cpu/cpu_internal.h"
#include "core/error.h"

typedef struct mla_job {
    anvil_cpu_backend *cb;
    const anvil_mla_args *a;
    int64_t n_items;  /* (n_seqs + n_tokens) * n_heads: expanded items first, then absorbed */
    atomic_int_fast64_t next;
} mla_job;

/* Whether sequence s runs the expanded form. */
static int expanded(const anvil_mla_args *a, int32_t s)
{
    if (a->form != 0)
        return a->form == 1;
    return a->step->seq_starts[s + 1] - a->step->seq_starts[s] > 1;
}

/* x [rope_dim] rotated in interleaved pairs by position p (transformers'
 * complex apply_rotary_emb: (x0 + i x1)(cos + i sin), both times scale). */
static void rope_pairs(const anvil_mla_args *a, int32_t p, const float *x, float *out)
{
    const float scale = anvil_cpu_rope_scale(a->rope);
    for (int32_t i = 0; i < a->rope_dim / 2; i++) {
        const float angle = (float)p * a->rope->inv_freq[i];
        const float c = cosf(angle) * scale, s = sinf(angle) * scale;
        const float x0 = x[2 * i], x1 = x[2 * i + 1];
        out[2 * i] = x0 * c - x1 * s;
        out[2 * i + 1] = x0 * s + x1 * c;
    }
}

/* Cached row j of sequence s (kv_rank + rope_dim) as floats into dst. */
static void load_cached(const anvil_mla_args *a, int32_t s, int32_t j, float *dst)
{
    const anvil_step *st = a->step;
    const int64_t w = (int64_t)a->kv_rank + a->rope_dim;
    const int64_t blk = st->block_tables[(int64_t)s * st->max_blocks_per_seq + j / st->block_size];
    const int64_t row = (blk * st->block_size + j % st->block_size) * w;
    if (a->cache->dtype == ANVIL_DTYPE_F32) {
        memcpy(dst, (const float *)a->cache->data + row, (size_t)w * sizeof *dst);
        return;
    }
    for (int64_t i = 0; i < w; i++)
        dst[i] = anvil_cpu_load_elem(a->cache->data, a->cache->dtype, row + i);
}

/* y[n] = sum_r W[row0 + n][r] x[r] for n < n_rows (kv_b's rows, rank wide). */
static void rows_times(const anvil_mla_args *a, int64_t row0, int32_t n_rows, const float *x, float *y)
{
    const int64_t R = a->kv_rank;
    const anvil_dtype dt = a->kv_b->dtype;
    for (int32_t n = 0; n < n_rows; n++) {
        float acc = 0.0f;
        if (dt == ANVIL_DTYPE_F32) {
            /* loads through memcpy (anvil_cpu_load_elem with a constant
             * dtype): a weight view need not be 4-byte aligned (test_cpu_mla
             * puts kv_b 2 bytes off; UBSan stops at a misaligned float load) */
            for (int64_t r = 0; r < R; r++)
                acc += anvil_cpu_load_elem(a->kv_b->data, ANVIL_DTYPE_F32, (row0 + n) * R + r) * x[r];
        } else {
            for (int64_t r = 0; r < R; r++)
                acc += anvil_cpu_load_elem(a->kv_b->data, dt, (row0 + n) * R + r) * x[r];
        }
        y[n] = acc;
    }
}

/* scores[0..n) become softmax weights; returns their sum's inverse. */
static float softmax_in_place(float *scores, int32_t n)
{
    float m = -INFINITY, sum = 0.0f;
    for (int32_t j = 0; j < n; j++)
        m = scores[j] > m ? scores[j] : m;
    for (int32_t j = 0; j < n; j++)
        sum += scores[j] = expf(scores[j] - m);
    return 1.0f / sum;
}

static float dot(const float *x, const float *y, int64_t n)
{
    float acc = 0.0f;
    for (int64_t i = 0; i < n; i++)
        acc += x[i] * y[i];
    return acc;
}

/* Expanded form, sequence s, head h: keys and values of its cached
 * positions [0, p_max], then every row of s over them. */
static void run_expanded(const anvil_mla_args *a, int32_t s, int32_t h, float *sc)
{
    const anvil_step *st = a->step;
    const int32_t b = st->seq_starts[s], e = st->seq_starts[s + 1];
    const int32_t R = a->kv_rank, dn = a->nope_dim, dr = a->rope_dim, dv = a->v_dim;
    const int64_t qw = (int64_t)a->n_heads * (dn + dr), hrow = (int64_t)h * (dn + dv);
    int32_t n_ctx = 0;
    for (int32_t t = b; t < e; t++)
        n_ctx = st->positions[t] + 1 > n_ctx ? st->positions[t] + 1 : n_ctx;
    float *k = sc, *v = k + (int64_t)n_ctx * (dn + dr), *scores = v + (int64_t)n_ctx * dv;
    float *row = scores + n_ctx, *qh = row + R + dr;
    for (int32_t j = 0; j < n_ctx; j++) { /* k_j = [W_UK_h c_j, kpe_j], v_j = W_UV_h c_j */
        load_cached(a, s, j, row);
        rows_times(a, hrow, dn, row, k + (int64_t)j * (dn + dr));
        memcpy(k + (int64_t)j * (dn + dr) + dn, row + R, (size_t)dr * sizeof *row);
        rows_times(a, hrow + dn, dv, row, v + (int64_t)j * dv);
    }
    for (int32_t t = b; t < e; t++) {
        const int32_t p = st->positions[t];
        const float *q = (const float *)a->q->data + t * qw + (int64_t)h * (dn + dr);
        memcpy(qh, q, (size_t)dn * sizeof *qh);
        rope_pairs(a, p, q + dn, qh + dn);
        for (int32_t j = 0; j <= p; j++)
            scores[j] = dot(qh, k + (int64_t)j * (dn + dr), dn + dr) * a->scale;
        const float inv = softmax_in_place(scores, p + 1);
        float *o = (float *)a->out->data + (int64_t)t * a->n_heads * dv + (int64_t)h * dv;
        for (int32_t i = 0; i < dv; i++)
            o[i] = 0.0f;
        for (int32_t j = 0; j <= p; j++) {
            const float pj = scores[j] * inv, *vj = v + (int64_t)j * dv;
            for (int32_t i = 0; i < dv; i++)
                o[i] += pj * vj[i];
        }
    }
}

/* Absorbed form, token t, head h. */
static void run_absorbed(const anvil_mla_args *a, int32_t t, int32_t h, float *sc)
{
    const anvil_step *st = a->step;
    const int32_t s = st->seq_of_token[t], p = st->positions[t];
    const int32_t R = a->kv_rank, dn = a->nope_dim, dr = a->rope_dim, dv = a->v_dim;
    const int64_t qw = (int64_t)a->n_heads * (dn + dr), hrow = (int64_t)h * (dn + dv);
    float *qlat = sc, *qpe = qlat + R, *olat = qpe + dr, *row = olat + R, *scores = row + R + dr;
    const float *q = (const float *)a->q->data + t * qw + (int64_t)h * (dn + dr);
    /* q_lat = W_UK_h^T q_nope: kv_b's rows hrow .. hrow + dn, summed by q_nope */
    for (int32_t r = 0; r < R; r++)
        qlat[r] = 0.0f;
    for (int32_t d = 0; d < dn; d++) {
        const float qd = q[d];
        if (a->kv_b->dtype == ANVIL_DTYPE_F32) { /* memcpy loads: see rows_times */
            for (int32_t r = 0; r < R; r++)
                qlat[r] += qd * anvil_cpu_load_elem(a->kv_b->data, ANVIL_DTYPE_F32, (hrow + d) * R + r);
        } else {
            for (int32_t r = 0; r < R; r++)
                qlat[r] += qd * anvil_cpu_load_elem(a->kv_b->data, a->kv_b->dtype, (hrow + d) * R + r);
        }
    }
    rope_pairs(a, p, q + dn, qpe);
    for (int32_t j = 0; j <= p; j++) {
        load_cached(a, s, j, row);
        scores[j] = (dot(qlat, row, R) + dot(qpe, row + R, dr)) * a->scale;
    }
    const float inv = softmax_in_place(scores, p + 1);
    for (int32_t r = 0; r < R; r++)
        olat[r] = 0.0f;
    for (int32_t j = 0; j <= p; j++) {
        load_cached(a, s, j, row);
        const float pj = scores[j] * inv;
        for (int32_t r = 0; r < R; r++)
            olat[r] += pj * row[r];
    }
    rows_times(a, hrow + dn, dv, olat, (float *)a->out->data + (int64_t)t * a->n_heads * dv + (int64_t)h * dv);
}

static void mla_task(void *ctx, int ith, int nth)
{
    (void)nth;
    mla_job *job = ctx;
    const anvil_mla_args *a = job->a;
    const int64_t H = a->n_heads, n_exp = (int64_t)a->step->n_seqs * H;
    float *sc = anvil_cpu_scratch_at(job->cb, ith);
    for (;;) {
        const int64_t i = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed);
        if (i >= job->n_items)
            break;
        if (i < n_exp) {
            const int32_t s = (int32_t)(i / H);
            if (expanded(a, s))
                run_expanded(a, s, (int32_t)(i % H), sc);
        } else {
            const int32_t t = (int32_t)((i - n_exp) / H);
            if (!expanded(a, a->step->seq_of_token[t]))
                run_absorbed(a, t, (int32_t)((i - n_exp) % H), sc);
        }
    }
}

anvil_status anvil_cpu_op_mla(anvil_backend *be, const anvil_mla_args *a)
{
    TRY(anvil_cpu_check_mla(a));
    anvil_cpu_backend *cb = anvil_cpu_impl(be);
    const anvil_step *st = a->step;
    const int64_t T = st->n_tokens, R = a->kv_rank, dn = a->nope_dim, dr = a->rope_dim, dv = a->v_dim;
    if (T == 0)
        return ANVIL_OK;
    /* 1. [c, rope(k_pe)] into each token's slot, before any row reads it */
    const int64_t w = R + dr;
    CHECK(dr <= 2048, ANVIL_ERR_UNSUPPORTED, "mla: rope_dim %lld above 2048", (long long)dr);
    for (int64_t t = 0; t < T; t++) {
        float kpe[2048];
        rope_pairs(a, st->positions[t], (const float *)a->k_pe->data + t * dr, kpe);
        const int64_t at = (int64_t)st->slots[t] * w;
        const float *c = (const float *)a->c->data + t * R;
        for (int64_t i = 0; i < R; i++)
            anvil_cpu_store_elem(a->cache->data, a->cache->dtype, at + i, c[i]);
        for (int64_t i = 0; i < dr; i++)
            anvil_cpu_store_elem(a->cache->data, a->cache->dtype, at + R + i, kpe[i]);
    }
    /* 2. the attention: per-thread scratch for the larger of the forms */
    int64_t n_ctx = 1;
    for (int64_t t = 0; t < T; t++)
        n_ctx = st->positions[t] + 1 > n_ctx ? st->positions[t] + 1 : n_ctx;
    const int64_t exp_floats = n_ctx * (dn + dr + dv + 1) + w + dn + dr;
    const int64_t abs_floats = 2 * R + dr + w + n_ctx;
    const int64_t floats = exp_floats > abs_floats ? exp_floats : abs_floats;
    CHECK(floats <= INT64_MAX / 4, ANVIL_ERR_UNSUPPORTED, "mla: scratch overflow");
    TRY(anvil_cpu_scratch_reserve(cb, (size_t)floats * sizeof(float)));
    mla_job job = {.cb = cb, .a = a, .n_items = ((int64_t)st->n_seqs + T) * a->n_heads};
    atomic_init(&job.next, 0);
    anvil_threadpool_run(cb->pool, mla_task, &job);
    return ANVIL_OK;
}
