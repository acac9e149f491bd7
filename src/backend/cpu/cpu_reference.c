/* The scalar reference ops (see cpu_reference.h). Obviously correct first:
 * one element at a time, no threads, dot products and sums in double. */
#include "backend/cpu/cpu_reference.h"

#include <math.h>
#include <stdlib.h>

#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/cpu_quant.h"
#include "core/error.h"

anvil_status anvil_cpu_ref_embedding(const anvil_tensor *table, const anvil_step *step, anvil_tensor *out)
{
    TRY(anvil_cpu_check_embedding(table, step, out));
    int64_t width = out->shape[1];
    float *o = out->data;
    for (int32_t t = 0; t < step->n_tokens; t++)
        for (int64_t i = 0; i < width; i++)
            o[t * width + i] = anvil_cpu_load_elem(table->data, table->dtype, step->token_ids[t] * width + i);
    return ANVIL_OK;
}

static void ref_norm_rows(const anvil_tensor *x, const anvil_tensor *w, int64_t width, float eps, float w_offset,
                          anvil_tensor *out)
{
    const float *xs = x->data;
    float *o = out->data;
    int64_t n_pieces = x->shape[0] * (x->shape[1] / width);
    for (int64_t r = 0; r < n_pieces; r++) {
        const float *xr = xs + r * width;
        double ss = 0.0;
        for (int64_t i = 0; i < width; i++)
            ss += (double)xr[i] * (double)xr[i];
        float var = (float)(ss / (double)width);
        float inv = 1.0f / sqrtf(var + eps);
        for (int64_t i = 0; i < width; i++)
            o[r * width + i] = xr[i] * inv * (w_offset + anvil_cpu_load_elem(w->data, w->dtype, i));
    }
}

anvil_status anvil_cpu_ref_rmsnorm(const anvil_tensor *x, const anvil_tensor *w, float eps, float w_offset,
                                   anvil_tensor *out)
{
    TRY(anvil_cpu_check_rmsnorm(x, w, x != NULL ? x->shape[1] : 0, out));
    if (x->shape[1] > 0)
        ref_norm_rows(x, w, x->shape[1], eps, w_offset, out);
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_head_rmsnorm(const anvil_tensor *x, const anvil_tensor *w, int32_t head_dim, float eps,
                                        anvil_tensor *out)
{
    TRY(anvil_cpu_check_rmsnorm(x, w, head_dim, out));
    ref_norm_rows(x, w, head_dim, eps, 0.0f, out);
    return ANVIL_OK;
}

/* int8/int4 weights on the int path (cpu_quant.h): each row of x
 * quantized to int8 per block of 32 (anvil_cpu_quant_prep_q8), then
 * sum over blocks b of fl(d_b * s) * sum_k q_k (v_k - z), in double. */
static anvil_status ref_matmul_quant_int(const anvil_cpu_qw *qw, const anvil_tensor *x, const anvil_tensor *bias,
                                         anvil_tensor *out)
{
    const int64_t T = x->shape[0], K = qw->K, N = qw->N, nb = K / ANVIL_CPU_QB;
    void *buf = malloc(anvil_cpu_q8_bytes(K) + 1);
    CHECK(buf != NULL, ANVIL_ERR_OOM, "matmul reference: out of memory");
    const anvil_cpu_q8 a = anvil_cpu_q8_at(buf, 1, K, 0);
    const float *xs = x->data;
    float *o = out->data;
    for (int64_t t = 0; t < T; t++) {
        anvil_cpu_quant_prep_q8(qw, xs + t * K, a);
        for (int64_t n = 0; n < N; n++) {
            double acc = 0.0;
            for (int64_t b = 0; b < nb; b++) {
                const int64_t g = n * qw->G + b * ANVIL_CPU_QB / qw->gs;
                const int z = qw->dt == ANVIL_DTYPE_U4 ? (qw->q->zeros != NULL ? qw->q->zeros[g] : 8) : 0;
                int64_t sum = 0;
                for (int p = 0; p < ANVIL_CPU_QB; p++) {
                    const int64_t k = b * ANVIL_CPU_QB + anvil_cpu_quant_kmap(qw->dt, p);
                    sum += (int64_t)a.q[b * ANVIL_CPU_QB + p] * ((int64_t)anvil_cpu_quant_raw(qw, n, k) - z);
                }
                acc += (double)(a.dl[b * 8] * qw->q->scales[g]) * (double)sum;
            }
            if (bias != NULL)
                acc += (double)anvil_cpu_load_elem(bias->data, bias->dtype, n);
            o[t * N + n] = (float)acc;
        }
    }
    free(buf);
    return ANVIL_OK;
}

/* A quantized w (cpu_quant.h): each row of x prepared (perm, fp8
 * rounding), then sum_k x'[k] * W[n][k] in double, W[n][k] = fl((v - z) * s). */
static anvil_status ref_matmul_quant(const anvil_tensor *x, const anvil_tensor *w, const anvil_tensor *bias,
                                     anvil_tensor *out)
{
    const anvil_cpu_qw qw = anvil_cpu_qw_of(w);
    if (anvil_cpu_quant_int_path(&qw))
        return ref_matmul_quant_int(&qw, x, bias, out);
    int64_t T = x->shape[0], K = x->shape[1], N = w->shape[0];
    float *xr = malloc((size_t)(K > 0 ? K : 1) * sizeof(float));
    CHECK(xr != NULL, ANVIL_ERR_OOM, "matmul reference: out of memory");
    const float *xs = x->data;
    float *o = out->data;
    for (int64_t t = 0; t < T; t++) {
        anvil_cpu_quant_prep_row(w->quant, xs + t * K, K, xr);
        for (int64_t n = 0; n < N; n++) {
            double acc = 0.0;
            for (int64_t k = 0; k < K; k++)
                acc += (double)xr[k] * (double)anvil_cpu_quant_value(&qw, n, k);
            if (bias != NULL)
                acc += (double)anvil_cpu_load_elem(bias->data, bias->dtype, n);
            o[t * N + n] = (float)acc;
        }
    }
    free(xr);
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_matmul(const anvil_tensor *x, const anvil_tensor *w, const anvil_tensor *bias,
                                  anvil_tensor *out)
{
    TRY(anvil_cpu_check_matmul(x, w, bias, out));
    if (w->quant != NULL)
        return ref_matmul_quant(x, w, bias, out);
    int64_t T = x->shape[0], K = x->shape[1], N = w->shape[0];
    const float *xs = x->data;
    float *o = out->data;
    for (int64_t t = 0; t < T; t++) {
        for (int64_t n = 0; n < N; n++) {
            double acc = 0.0;
            for (int64_t k = 0; k < K; k++)
                acc += (double)xs[t * K + k] * (double)anvil_cpu_load_elem(w->data, w->dtype, n * K + k);
            if (bias != NULL)
                acc += (double)anvil_cpu_load_elem(bias->data, bias->dtype, n);
            o[t * N + n] = (float)acc;
        }
    }
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_rope(anvil_tensor *x, const anvil_step *step, int32_t head_dim, const anvil_rope_freqs *f)
{
    TRY(anvil_cpu_check_rope(x, step, head_dim, f));
    int64_t width = x->shape[1], half = head_dim / 2;
    const float scale = anvil_cpu_rope_scale(f);
    float *xs = x->data;
    for (int32_t t = 0; t < step->n_tokens; t++) {
        const float *inv_freq = anvil_cpu_rope_table(f, step, t);
        for (int64_t h = 0; h < width / head_dim; h++) {
            float *xh = xs + t * width + h * head_dim;
            for (int64_t i = 0; i < half; i++) {
                float angle = (float)step->positions[t] * inv_freq[i];
                float c = cosf(angle) * scale, s = sinf(angle) * scale;
                float x1 = xh[i], x2 = xh[i + half];
                xh[i] = x1 * c - x2 * s;
                xh[i + half] = x2 * c + x1 * s;
            }
        }
    }
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_attention(const anvil_attention_args *a)
{
    TRY(anvil_cpu_check_attention(a));
    const anvil_step *st = a->step;
    int64_t hd = a->head_dim, T = st->n_tokens;
    int64_t kw = (int64_t)a->n_kv_heads * hd, qw = (int64_t)a->n_heads * hd;
    anvil_dtype cdt = a->k_cache->dtype;
    const float *q = a->q->data, *k = a->k->data, *v = a->v->data;
    float *out = a->out->data;
    /* an fp8 cache holds k / k_scale and reads back fp8 * k_scale (1 otherwise) */
    const float ks = anvil_cpu_kv_scale(cdt, a->k_scale), vs = anvil_cpu_kv_scale(cdt, a->v_scale);

    /* 1. the new keys and values into their slots */
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < kw; i++) {
            anvil_cpu_store_elem(a->k_cache->data, cdt, (int64_t)st->slots[t] * kw + i, k[t * kw + i] / ks);
            anvil_cpu_store_elem(a->v_cache->data, cdt, (int64_t)st->slots[t] * kw + i, v[t * kw + i] / vs);
        }
    }

    /* 2. each query over its sequence's cache */
    int32_t group = a->n_heads / a->n_kv_heads;
    double *acc = malloc((size_t)hd * sizeof *acc);
    CHECK(acc != NULL, ANVIL_ERR_OOM, "reference attention: out of memory");
    for (int64_t t = 0; t < T; t++) {
        int32_t s = st->seq_of_token[t], p = st->positions[t];
        int32_t lo = anvil_cpu_window_lo(p, a->sliding_window);
        for (int32_t h = 0; h < a->n_heads; h++) {
            int32_t g = h / group;
            const float *qh = q + t * qw + (int64_t)h * hd;
            /* pass 1: the largest score */
            float m = -INFINITY;
            for (int32_t j = lo; j <= p; j++) {
                int64_t blk = st->block_tables[(int64_t)s * st->max_blocks_per_seq + j / st->block_size];
                int64_t row = (blk * st->block_size + j % st->block_size) * kw + (int64_t)g * hd;
                double dot = 0.0;
                for (int64_t d = 0; d < hd; d++)
                    dot += (double)qh[d] * ((double)anvil_cpu_load_elem(a->k_cache->data, cdt, row + d) * ks);
                float score = anvil_cpu_softcap_score((float)dot * a->scale, a->softcap);
                m = score > m ? score : m;
            }
            /* pass 2: softmax weights and the weighted sum of values */
            double sum = 0.0;
            for (int64_t d = 0; d < hd; d++)
                acc[d] = 0.0;
            for (int32_t j = lo; j <= p; j++) {
                int64_t blk = st->block_tables[(int64_t)s * st->max_blocks_per_seq + j / st->block_size];
                int64_t row = (blk * st->block_size + j % st->block_size) * kw + (int64_t)g * hd;
                double dot = 0.0;
                for (int64_t d = 0; d < hd; d++)
                    dot += (double)qh[d] * ((double)anvil_cpu_load_elem(a->k_cache->data, cdt, row + d) * ks);
                float e = expf(anvil_cpu_softcap_score((float)dot * a->scale, a->softcap) - m);
                sum += e;
                for (int64_t d = 0; d < hd; d++)
                    acc[d] += (double)e * ((double)anvil_cpu_load_elem(a->v_cache->data, cdt, row + d) * vs);
            }
            for (int64_t d = 0; d < hd; d++)
                out[t * qw + (int64_t)h * hd + d] = (float)(acc[d] / sum);
        }
    }
    free(acc);
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_silu_mul(const anvil_tensor *gate, const anvil_tensor *up, anvil_tensor *out)
{
    TRY(anvil_cpu_check_binary(gate, up, out));
    int64_t n = anvil_tensor_numel(gate);
    const float *g = gate->data, *u = up->data;
    float *o = out->data;
    for (int64_t i = 0; i < n; i++)
        o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_gelu_tanh_mul(const anvil_tensor *gate, const anvil_tensor *up, anvil_tensor *out)
{
    TRY(anvil_cpu_check_binary(gate, up, out));
    int64_t n = anvil_tensor_numel(gate);
    const float *g = gate->data, *u = up->data;
    float *o = out->data;
    for (int64_t i = 0; i < n; i++)
        o[i] = anvil_cpu_gelu_tanh(g[i]) * u[i];
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_scale(const anvil_tensor *x, float c, anvil_tensor *out)
{
    TRY(anvil_cpu_check_unary(x, out, "scale"));
    int64_t n = anvil_tensor_numel(x);
    const float *xs = x->data;
    float *o = out->data;
    for (int64_t i = 0; i < n; i++)
        o[i] = xs[i] * c;
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_softcap(const anvil_tensor *x, float cap, anvil_tensor *out)
{
    TRY(anvil_cpu_check_unary(x, out, "softcap"));
    CHECK(isfinite(cap) && cap > 0, ANVIL_ERR_INVALID_ARG, "softcap: the cap must be positive, got %g", (double)cap);
    int64_t n = anvil_tensor_numel(x);
    const float *xs = x->data;
    float *o = out->data;
    for (int64_t i = 0; i < n; i++)
        o[i] = anvil_cpu_softcap_score(xs[i], cap);
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_add(const anvil_tensor *a, const anvil_tensor *b, anvil_tensor *out)
{
    TRY(anvil_cpu_check_binary(a, b, out));
    int64_t n = anvil_tensor_numel(a);
    const float *x = a->data, *y = b->data;
    float *o = out->data;
    for (int64_t i = 0; i < n; i++)
        o[i] = x[i] + y[i];
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_gather_rows(const anvil_tensor *x, const anvil_step *step, anvil_tensor *out)
{
    TRY(anvil_cpu_check_gather_rows(x, step, out));
    int64_t width = x->shape[1];
    const float *xs = x->data;
    float *o = out->data;
    for (int32_t i = 0; i < step->n_logits; i++)
        for (int64_t c = 0; c < width; c++)
            o[i * width + c] = xs[(int64_t)step->logit_rows[i] * width + c];
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_layernorm(const anvil_tensor *x, const anvil_tensor *w, const anvil_tensor *b, float eps,
                                     anvil_tensor *out)
{
    TRY(anvil_cpu_check_layernorm(x, w, b, eps, out));
    const int64_t rows = x->shape[0], width = x->shape[1];
    const float *xs = x->data;
    float *o = out->data;
    for (int64_t r = 0; r < rows && width > 0; r++) {
        const float *xr = xs + r * width;
        double sum = 0.0, ss = 0.0;
        for (int64_t i = 0; i < width; i++)
            sum += xr[i];
        const float mean = (float)(sum / (double)width);
        for (int64_t i = 0; i < width; i++)
            ss += ((double)xr[i] - mean) * ((double)xr[i] - mean);
        const float inv = 1.0f / sqrtf((float)(ss / (double)width) + eps);
        for (int64_t i = 0; i < width; i++)
            o[r * width + i] = (xr[i] - mean) * inv * anvil_cpu_load_elem(w->data, w->dtype, i) +
                               anvil_cpu_load_elem(b->data, b->dtype, i);
    }
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_gelu_tanh(const anvil_tensor *x, anvil_tensor *out)
{
    TRY(anvil_cpu_check_unary(x, out, "gelu_tanh"));
    int64_t n = anvil_tensor_numel(x);
    const float *xs = x->data;
    float *o = out->data;
    for (int64_t i = 0; i < n; i++)
        o[i] = anvil_cpu_gelu_tanh(xs[i]);
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_pos_embedding(const anvil_tensor *x, const anvil_tensor *table, const anvil_step *step,
                                         anvil_tensor *out)
{
    TRY(anvil_cpu_check_pos_embedding(x, table, step, out));
    const int64_t width = x->shape[1];
    const float *xs = x->data;
    float *o = out->data;
    for (int32_t t = 0; t < step->n_tokens; t++)
        for (int64_t i = 0; i < width; i++)
            o[t * width + i] = xs[t * width + i] +
                               anvil_cpu_load_elem(table->data, table->dtype, step->positions[t] * width + i);
    return ANVIL_OK;
}

/* One expert's gated MLP on one row of x (H), weights gate rows g, up rows
 * u [I, H] and down rows d [H, I] at element offsets of their tensors:
 * y = d (silu(g x) * (u x)), the products rounded to f32 as the matmul
 * ops round them. */
static void ref_expert(const float *x, int64_t H, int64_t I, const anvil_tensor *gu, int64_t g_row, int64_t u_row,
                       const anvil_tensor *dn, int64_t d_row, float *act, float *y)
{
    for (int64_t i = 0; i < I; i++) {
        double gs = 0.0, us = 0.0;
        for (int64_t h = 0; h < H; h++) {
            gs += (double)x[h] * (double)anvil_cpu_load_elem(gu->data, gu->dtype, (g_row + i) * H + h);
            us += (double)x[h] * (double)anvil_cpu_load_elem(gu->data, gu->dtype, (u_row + i) * H + h);
        }
        const float gf = (float)gs, uf = (float)us;
        act[i] = gf / (1.0f + expf(-gf)) * uf;
    }
    for (int64_t h = 0; h < H; h++) {
        double acc = 0.0;
        for (int64_t i = 0; i < I; i++)
            acc += (double)act[i] * (double)anvil_cpu_load_elem(dn->data, dn->dtype, (d_row + h) * I + i);
        y[h] = (float)acc;
    }
}

/* ref_expert for quantized weights: each expert's rows as a quantized
 * matrix (anvil_moe_weight_rows) through anvil_cpu_ref_matmul, which
 * computes the scheme's definition (activations rounded as the CPU's
 * quantized matmul rounds them) with sums in double, and the same silu. */
static anvil_status ref_expert_quant(const float *x, int64_t H, int64_t I, const anvil_tensor *gu, int64_t g_row,
                                     int64_t u_row, const anvil_tensor *dn, int64_t d_row, float *act, float *y)
{
    float *u = malloc((size_t)I * sizeof *u);
    CHECK(u != NULL, ANVIL_ERR_OOM, "moe reference: out of memory");
    anvil_quant qg, qu, qd;
    const anvil_tensor wg = anvil_moe_weight_rows(gu, g_row, I, &qg), wu = anvil_moe_weight_rows(gu, u_row, I, &qu);
    const anvil_tensor wd = anvil_moe_weight_rows(dn, d_row, H, &qd);
    const anvil_tensor xt = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, H, (void *)x);
    anvil_tensor gt = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, I, act), ut = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, I, u);
    anvil_tensor at = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, I, act), yt = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, H, y);
    anvil_status st = anvil_cpu_ref_matmul(&xt, &wg, NULL, &gt);
    if (st == ANVIL_OK)
        st = anvil_cpu_ref_matmul(&xt, &wu, NULL, &ut);
    for (int64_t i = 0; st == ANVIL_OK && i < I; i++)
        act[i] = act[i] / (1.0f + expf(-act[i])) * u[i];
    if (st == ANVIL_OK)
        st = anvil_cpu_ref_matmul(&at, &wd, NULL, &yt);
    free(u);
    return st;
}

/* One expert on one row, dense or quantized. */
static anvil_status ref_expert_any(const float *x, int64_t H, int64_t I, const anvil_tensor *gu, int64_t g_row,
                                   int64_t u_row, const anvil_tensor *dn, int64_t d_row, float *act, float *y)
{
    if (gu->quant != NULL || dn->quant != NULL)
        return ref_expert_quant(x, H, I, gu, g_row, u_row, dn, d_row, act, y);
    ref_expert(x, H, I, gu, g_row, u_row, dn, d_row, act, y);
    return ANVIL_OK;
}

anvil_status anvil_cpu_ref_moe(const anvil_moe_args *a)
{
    anvil_moe_scratch L;
    TRY(anvil_moe_check_args_quant(a, &L));
    CHECK(a->x->dtype == ANVIL_DTYPE_F32 && a->out->dtype == ANVIL_DTYPE_F32, ANVIL_ERR_UNSUPPORTED,
          "moe reference: activations are f32");
    const int64_t T = a->x->shape[0], H = a->x->shape[1], I = a->inter, Is = a->shared_inter;
    const int32_t E = a->n_experts, k = a->top_k;
    /* the scratch holds more than this needs: probabilities, one row's
     * activations and one expert output */
    float *p = a->scratch, *act = (float *)a->scratch + E, *y = act + (I > Is ? I : Is);
    int32_t *chosen = (int32_t *)(y + H); /* the k experts picked */
    const int32_t G = a->n_group > 1 ? a->n_group : 1, keep = G > 1 ? a->topk_group : 1, gsize = E / G;
    int32_t *groups = chosen + k;         /* the keep groups kept (DeepSeek's group_limited_greedy) */
    CHECK(T == 0 || a->scratch_bytes >= (size_t)(E + (I > Is ? I : Is) + H + k + keep) * sizeof(float),
          ANVIL_ERR_INVALID_ARG, "moe reference: scratch too small");
    const float scale = a->routed_scale == 0.0f ? 1.0f : a->routed_scale;
    const float *x = a->x->data;
    float *out = a->out->data;
    for (int64_t t = 0; t < T; t++) {
        const float *xr = x + t * H;
        float *o = out + t * H;
        for (int32_t e = 0; e < E; e++) {
            double acc = 0.0;
            for (int64_t h = 0; h < H; h++)
                acc += (double)xr[h] * (double)anvil_cpu_load_elem(a->router->data, a->router->dtype, e * H + h);
            p[e] = (float)acc;
        }
        float mx = p[0], sum = 0.0f;
        for (int32_t e = 1; e < E; e++)
            mx = fmaxf(mx, p[e]);
        for (int32_t e = 0; e < E; e++)
            sum += (p[e] = expf(p[e] - mx));
        /* the keep groups of the largest best expert, the lower group first on ties */
        for (int32_t j = 0; j < keep; j++) {
            int32_t best = -1;
            float best_m = 0.0f;
            for (int32_t g = 0; g < G; g++) {
                int taken = 0;
                for (int32_t q = 0; q < j; q++)
                    taken |= groups[q] == g;
                float m = p[g * gsize];
                for (int32_t e = 1; e < gsize; e++)
                    m = fmaxf(m, p[g * gsize + e]);
                if (!taken && (best < 0 || m > best_m)) {
                    best = g;
                    best_m = m;
                }
            }
            groups[j] = best;
        }
        /* the k largest of the kept groups, lower expert first on ties */
        float wsum = 0.0f;
        for (int32_t j = 0; j < k; j++) {
            int32_t best = -1;
            for (int32_t e = 0; e < E; e++) {
                int taken = 0, kept = G == 1;
                for (int32_t q = 0; q < j; q++)
                    taken |= chosen[q] == e;
                for (int32_t q = 0; q < keep; q++)
                    kept |= groups[q] == e / gsize;
                if (kept && !taken && (best < 0 || p[e] > p[best]))
                    best = e;
            }
            chosen[j] = best;
            wsum += p[best] / sum;
        }
        for (int64_t h = 0; h < H; h++)
            o[h] = 0.0f;
        for (int32_t e = 0; e < E; e++) { /* ascending expert order, as index_add over the experts */
            int sel = 0;
            for (int32_t j = 0; j < k; j++)
                sel |= chosen[j] == e;
            if (!sel)
                continue;
            float w = p[e] / sum;
            if (a->norm_topk_prob)
                w /= wsum;
            w *= scale;
            TRY(ref_expert_any(xr, H, I, a->gate_up, 2 * e * I, (2 * e + 1) * I, a->down, e * H, act, y));
            for (int64_t h = 0; h < H; h++)
                o[h] += y[h] * w;
        }
        if (Is > 0) {
            TRY(ref_expert_any(xr, H, Is, a->shared_gate_up, 0, Is, a->shared_down, 0, act, y));
            double gs = 0.0;
            for (int64_t h = 0; a->shared_gate != NULL && h < H; h++)
                gs += (double)xr[h] * (double)anvil_cpu_load_elem(a->shared_gate->data, a->shared_gate->dtype, h);
            /* no gate (DeepSeek): the shared experts' output as it is */
            const float gate = a->shared_gate != NULL ? 1.0f / (1.0f + expf(-(float)gs)) : 1.0f;
            for (int64_t h = 0; h < H; h++)
                o[h] += gate * y[h];
        }
    }
    return ANVIL_OK;
}

/* x [rope_dim] rotated in interleaved pairs by position p, as
 * transformers' complex apply_rotary_emb (and as the op: the same floats). */
static void ref_rope_pairs(const anvil_mla_args *a, int32_t p, const float *x, float *out)
{
    const float scale = anvil_cpu_rope_scale(a->rope);
    for (int32_t i = 0; i < a->rope_dim / 2; i++) {
        const float angle = (float)p * a->rope->inv_freq[i];
        const float c = cosf(angle) * scale, s = sinf(angle) * scale;
        out[2 * i] = x[2 * i] * c - x[2 * i + 1] * s;
        out[2 * i + 1] = x[2 * i] * s + x[2 * i + 1] * c;
    }
}

/* kv_b row `row` times cached row at `at` (its first kv_rank values), in double. */
static double ref_kvb_dot(const anvil_mla_args *a, int64_t row, int64_t at)
{
    double acc = 0.0;
    for (int64_t r = 0; r < a->kv_rank; r++)
        acc += (double)anvil_cpu_load_elem(a->kv_b->data, a->kv_b->dtype, row * a->kv_rank + r) *
               (double)anvil_cpu_load_elem(a->cache->data, a->cache->dtype, at + r);
    return acc;
}

anvil_status anvil_cpu_ref_mla(const anvil_mla_args *a)
{
    TRY(anvil_cpu_check_mla(a));
    const anvil_step *st = a->step;
    const int64_t T = st->n_tokens, H = a->n_heads, R = a->kv_rank, dn = a->nope_dim, dr = a->rope_dim;
    const int64_t dv = a->v_dim, w = R + dr, qw = H * (dn + dr);
    float *rot = malloc((size_t)(2 * dr + 1) * sizeof *rot);
    double *acc = malloc((size_t)(dv + 1) * sizeof *acc);
    if (rot == NULL || acc == NULL) {
        free(rot);
        free(acc);
        return ANVIL_FAIL(ANVIL_ERR_OOM, "reference mla: out of memory");
    }
    /* 1. the cache rows */
    for (int64_t t = 0; t < T; t++) {
        ref_rope_pairs(a, st->positions[t], (const float *)a->k_pe->data + t * dr, rot);
        const int64_t at = (int64_t)st->slots[t] * w;
        for (int64_t i = 0; i < R; i++)
            anvil_cpu_store_elem(a->cache->data, a->cache->dtype, at + i, ((const float *)a->c->data)[t * R + i]);
        for (int64_t i = 0; i < dr; i++)
            anvil_cpu_store_elem(a->cache->data, a->cache->dtype, at + R + i, rot[i]);
    }
    /* 2. each query over its sequence's cached positions, two passes */
    for (int64_t t = 0; t < T; t++) {
        const int32_t s = st->seq_of_token[t], p = st->positions[t];
        for (int64_t h = 0; h < H; h++) {
            const float *q = (const float *)a->q->data + t * qw + h * (dn + dr);
            ref_rope_pairs(a, p, q + dn, rot);
            const int64_t krow = h * (dn + dv), vrow = krow + dn;
            float m = -INFINITY;
            for (int pass = 0; pass < 2; pass++) {
                double sum = 0.0;
                for (int64_t i = 0; i < dv; i++)
                    acc[i] = 0.0;
                for (int32_t j = 0; j <= p; j++) {
                    const int64_t blk = st->block_tables[(int64_t)s * st->max_blocks_per_seq + j / st->block_size];
                    const int64_t at = (blk * st->block_size + j % st->block_size) * w;
                    double dot = 0.0;
                    for (int64_t d = 0; d < dn; d++) /* q_nope . (W_UK_h c_j) */
                        dot += (double)q[d] * ref_kvb_dot(a, krow + d, at);
                    for (int64_t d = 0; d < dr; d++) /* q_pe . kpe_j */
                        dot += (double)rot[d] * (double)anvil_cpu_load_elem(a->cache->data, a->cache->dtype, at + R + d);
                    const float score = (float)dot * a->scale;
                    if (pass == 0) {
                        m = score > m ? score : m;
                        continue;
                    }
                    const float e = expf(score - m);
                    sum += e;
                    for (int64_t i = 0; i < dv; i++) /* v_j = W_UV_h c_j */
                        acc[i] += (double)e * ref_kvb_dot(a, vrow + i, at);
                }
                if (pass == 1)
                    for (int64_t i = 0; i < dv; i++)
                        ((float *)a->out->data)[t * H * dv + h * dv + i] = (float)(acc[i] / sum);
            }
        }
    }
    free(rot);
    free(acc);
    return ANVIL_OK;
}
