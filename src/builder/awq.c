/* AWQ: the groups, the calibration statistics and the scale and clip searches (awq.h). */
#include "builder/awq.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "builder/quantize.h"
#include "core/error.h"

/* ------------------------------------------------------------ groups and folds */

void anvil_awq_free(anvil_awq *a)
{
    if (a == NULL)
        return;
    for (int32_t g = 0; g < a->n_groups; g++) {
        free(a->groups[g].abs_sum);
        free(a->groups[g].rows);
        free(a->groups[g].scales);
    }
    free(a->groups);
    if (a->clip)
        for (int32_t w = 0; w < a->n_weights; w++)
            free(a->clip[w]);
    free(a->clip);
    free(a->col);
    free(a->div);
    free(a->offset);
    free(a);
}

/* Ops that read value v (any input), and the last one. */
static int32_t readers(const anvil_network *net, anvil_value v, int32_t *last)
{
    int32_t n = 0;
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        for (int j = 0; j < 3; j++)
            if (op->inputs[j] == v) {
                n++;
                *last = i;
                break;
            }
    }
    return n;
}

static int32_t weight_uses(const anvil_network *net, int32_t w)
{
    int32_t n = 0;
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        for (int32_t k = 0; k < op->n_weights; k++)
            n += op->weights[k] == w;
    }
    return n;
}

/* Whether every reader of v is a linear of group g. */
static int only_group_reads(const anvil_network *net, const anvil_awq_group *g)
{
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        int reads = 0;
        for (int j = 0; j < 3; j++)
            reads |= op->inputs[j] == g->input;
        if (!reads)
            continue;
        int member = 0;
        for (int32_t m = 0; m < g->n_linears && op->kind == ANVIL_OP_LINEAR; m++)
            member |= op->n_weights > 0 && op->weights[0] == g->weights[m];
        if (!member)
            return 0;
    }
    return 1;
}

/* The linear op that makes value v, read by `reader` alone, whose weights
 * only it uses: where a group's 1/s can go as row divisors. -1: none. */
static int32_t row_fold_target(const anvil_network *net, anvil_value v, int32_t reader)
{
    if (v < 0)
        return -1;
    const anvil_net_op *p = anvil_network_op(net, v);
    int32_t last = -1;
    if (p->kind != ANVIL_OP_LINEAR || readers(net, v, &last) != 1 || last != reader)
        return -1;
    for (int32_t k = 0; k < p->n_weights; k++)
        if (p->weights[k] >= 0 && weight_uses(net, p->weights[k]) != 1)
            return -1;
    return v;
}

/* Where group g's 1/s goes (awq.h), from the op that makes its input. */
static void find_fold(const anvil_network *net, anvil_awq_group *g)
{
    g->fold = ANVIL_AWQ_FOLD_NONE;
    g->fold_weight = g->fold_bias = -1;
    if (!only_group_reads(net, g))
        return;
    const anvil_net_op *p = anvil_network_op(net, g->input);
    int32_t lin = -1;
    switch (p->kind) {
    case ANVIL_OP_RMSNORM:
        /* y = x / rms(x) * (off + w): (off + w) / s - off makes y / s; a
         * norm weight another op shares (none in the models today) would
         * change that op too */
        if (p->n_weights >= 1 && p->weights[0] >= 0 && weight_uses(net, p->weights[0]) == 1 &&
            anvil_network_weight(net, p->weights[0])->n_dims == 1) {
            g->fold = ANVIL_AWQ_FOLD_NORM;
            g->fold_weight = p->weights[0];
            g->fold_offset = p->weight_offset;
        }
        return;
    case ANVIL_OP_SILU_MUL:      /* silu(gate) * up: up's rows / s */
    case ANVIL_OP_GELU_TANH_MUL: /* Gemma's gelu_tanh(gate) * up, likewise */
        lin = row_fold_target(net, p->inputs[1], g->input);
        break;
    case ANVIL_OP_ATTENTION:
        /* o_proj's input channel h * head_dim + d is v's row h * head_dim +
         * d only where every query head has its own kv head (AutoAWQ
         * scales o_proj only then) */
        if (p->attn.n_heads == p->attn.n_kv_heads)
            lin = row_fold_target(net, p->inputs[2], g->input);
        break;
    default: return;
    }
    if (lin < 0)
        return;
    const anvil_net_op *l = anvil_network_op(net, lin);
    g->fold = ANVIL_AWQ_FOLD_ROWS;
    g->fold_weight = l->weights[0];
    g->fold_bias = l->n_weights > 1 ? l->weights[1] : -1;
}

anvil_status anvil_awq_create(const anvil_network *net, const anvil_build_plan *plan, anvil_dtype kind,
                              int32_t group, int32_t max_rows, int64_t expected_tokens, anvil_awq **out)
{
    *out = NULL;
    CHECK(kind == ANVIL_DTYPE_U4 || kind == ANVIL_DTYPE_I8 || anvil_stored_kind_is_float(kind), ANVIL_ERR_INVALID_ARG,
          "AWQ (--calib) goes with int4-wo or int8-wo weights, not %s", anvil_dtype_name(kind));
    CHECK(max_rows >= 1, ANVIL_ERR_INVALID_ARG, "AWQ: %d rows sampled per group", max_rows);
    anvil_awq *a = calloc(1, sizeof *a);
    CHECK(a != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = ANVIL_OK;
    const int32_t nops = anvil_network_op_count(net);
    a->kind = kind;
    a->group = kind == ANVIL_DTYPE_U4 ? group : 0;
    a->max_rows = max_rows;
    a->n_weights = anvil_network_weight_count(net);
    a->stride = expected_tokens > max_rows ? expected_tokens / max_rows : 1;
    a->groups = calloc((size_t)(nops ? nops : 1), sizeof *a->groups);
    a->col = calloc((size_t)(a->n_weights ? a->n_weights : 1), sizeof *a->col);
    a->div = calloc((size_t)(a->n_weights ? a->n_weights : 1), sizeof *a->div);
    a->clip = calloc((size_t)(a->n_weights ? a->n_weights : 1), sizeof *a->clip);
    a->offset = calloc((size_t)(a->n_weights ? a->n_weights : 1), sizeof *a->offset);
    CHECK_GOTO(a->groups && a->col && a->div && a->clip && a->offset, ANVIL_ERR_OOM, fail, "out of memory");
    for (int32_t i = 0; i < nops; i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        if (op->kind != ANVIL_OP_LINEAR || op->row_kind != 0 || op->n_weights < 1 || op->weights[0] < 0)
            continue;
        const int32_t w = op->weights[0], s = plan->weight_stored[w];
        if (s < 0)
            continue;
        const anvil_stored *t = &plan->stored[s];
        if (anvil_stored_kind_is_float(kind) ? !anvil_stored_kind_is_float(t->kind) || t->q.scales >= 0
                                             : t->kind != kind || t->q.scales < 0)
            continue;
        anvil_awq_group *g = NULL;
        for (int32_t j = 0; j < a->n_groups && g == NULL; j++)
            if (a->groups[j].input == op->inputs[0])
                g = &a->groups[j];
        if (g == NULL) {
            g = &a->groups[a->n_groups++];
            g->input = op->inputs[0];
            g->k = anvil_network_weight(net, w)->shape[1];
            g->alpha = -1.0f;
        }
        CHECK_GOTO(g->n_linears < ANVIL_AWQ_MAX_LINEARS, ANVIL_ERR_UNSUPPORTED, fail,
                   "AWQ: more than %d linears read one value", ANVIL_AWQ_MAX_LINEARS);
        g->weights[g->n_linears++] = w;
    }
    for (int32_t j = 0; j < a->n_groups; j++) {
        anvil_awq_group *g = &a->groups[j];
        find_fold(net, g);
        g->abs_sum = calloc((size_t)g->k, sizeof *g->abs_sum);
        g->rows = malloc((size_t)max_rows * (size_t)g->k * sizeof *g->rows);
        g->scales = malloc((size_t)g->k * sizeof *g->scales);
        CHECK_GOTO(g->abs_sum && g->rows && g->scales, ANVIL_ERR_OOM, fail,
                   "out of memory for AWQ's calibration rows (%d x %lld)", max_rows, (long long)g->k);
        for (int64_t c = 0; c < g->k; c++)
            g->scales[c] = 1.0f;
    }
    *out = a;
    return ANVIL_OK;
fail:
    anvil_awq_free(a);
    return st;
}

int anvil_awq_wants(const anvil_awq *a, anvil_value v)
{
    for (int32_t j = 0; j < a->n_groups; j++)
        if (a->groups[j].input == v)
            return 1;
    return 0;
}

anvil_status anvil_awq_observe(anvil_awq *a, anvil_value v, const float *x, int64_t n_rows, int64_t width,
                               int64_t first_token)
{
    for (int32_t j = 0; j < a->n_groups; j++) {
        anvil_awq_group *g = &a->groups[j];
        if (g->input != v)
            continue;
        CHECK(width == g->k, ANVIL_ERR_INTERNAL, "AWQ: value %d is %lld wide, not %lld", v, (long long)width,
              (long long)g->k);
        for (int64_t r = 0; r < n_rows; r++) {
            const float *row = x + r * width;
            for (int64_t c = 0; c < width; c++)
                g->abs_sum[c] += fabsf(row[c]);
            if ((first_token + r) % a->stride == 0 && g->n_rows < a->max_rows)
                memcpy(g->rows + (int64_t)g->n_rows++ * width, row, (size_t)width * sizeof *row);
        }
        g->n_seen += n_rows;
    }
    return ANVIL_OK;
}

/* ------------------------------------------------------------ searches */

/* A search's buffers and its CPU backend (the products). */
typedef struct search_ctx {
    const anvil_awq *a;
    anvil_backend *be;
    anvil_build_scratch *sc;
    float *w;   /* [n, k] the group's weights, then the transformed ones */
    float *d;   /* [n, k] dequantized - original */
    float *x;   /* [rows, k] scaled inputs */
    float *y;   /* [rows, n] */
    float *tmp; /* [k] one row */
    uint8_t *q; /* [k] codes */
    float *qs;  /* [k] scales */
    uint8_t *qz;
} search_ctx;

/* The f32 values of network weight w (all of it) into dst. */
static anvil_status weight_values(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                                  int32_t w, float *dst, anvil_build_scratch *sc)
{
    const anvil_net_weight *nw = anvil_network_weight(net, w);
    const int64_t n = nw->n_dims == 1 ? nw->shape[0] : nw->shape[0] * nw->shape[1];
    const int64_t off = p->weight_offset[w], piece = (int64_t)(ANVIL_BUILD_CHUNK / 4);
    for (int64_t e = 0; e < n; e += piece) {
        const int64_t m = n - e < piece ? n - e : piece;
        TRY(anvil_build_values(p, net, ck, p->weight_stored[w], off + e, off + e + m, dst + e, sc));
    }
    const int64_t bad = anvil_find_nonfinite(ANVIL_DTYPE_F32, dst, n);
    CHECK(bad < 0, ANVIL_ERR_FORMAT, "tensor '%s' holds a NaN or infinity at element %lld: the checkpoint is damaged",
          nw->name, (long long)bad);
    return ANVIL_OK;
}

/* x [k] replaced by its quantized value (rounded as the engine stores it,
 * dequantized as the CPU reads it). */
static void fake_quant_row(search_ctx *c, float *x, int64_t k, int32_t group)
{
    const anvil_awq *a = c->a;
    anvil_rtn_row(a->kind, group, x, k, c->q, c->qs, c->qz);
    if (a->kind == ANVIL_DTYPE_U4) {
        for (int64_t i = 0; i < k; i++) {
            const int v = i % 2 ? c->q[i / 2] >> 4 : c->q[i / 2] & 15;
            x[i] = (float)(v - (int)c->qz[i / group]) * c->qs[i / group];
        }
    } else {
        for (int64_t i = 0; i < k; i++)
            x[i] = (float)(int8_t)c->q[i] * c->qs[0];
    }
}

/* sum over rows and outputs of (x d^T)^2: x [rows, k], d [n, k]. */
static anvil_status sq_err(search_ctx *c, const float *x, int64_t rows, const float *d, int64_t n, int64_t k,
                           double *out, double *per_out)
{
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, rows, k, (void *)x);
    anvil_tensor tw = anvil_tensor_2d(ANVIL_DTYPE_F32, n, k, (void *)d);
    anvil_tensor ty = anvil_tensor_2d(ANVIL_DTYPE_F32, rows, n, c->y);
    TRY(c->be->ops->matmul(c->be, &tx, &tw, NULL, &ty));
    double e = 0.0;
    if (per_out)
        for (int64_t j = 0; j < n; j++)
            per_out[j] = 0.0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < n; j++) {
            const double v = (double)c->y[r * n + j] * c->y[r * n + j];
            e += v;
            if (per_out)
                per_out[j] += v;
        }
    *out = e;
    return ANVIL_OK;
}

/* Rows of group g's weights (every linear's, stacked). */
static int64_t group_out(const anvil_network *net, const anvil_awq_group *g)
{
    int64_t n = 0;
    for (int32_t m = 0; m < g->n_linears; m++)
        n += anvil_network_weight(net, g->weights[m])->shape[0];
    return n;
}

/* The scales of alpha from the mean |x| per channel (AutoAWQ's without its
 * "duo scaling", which divides by the mean relative |w|^(1 - alpha): on
 * tinycode that gave a larger KL, 0.0345 against 0.0324 over 20 windows). */
static void alpha_scales(const anvil_awq_group *g, float alpha, float *s)
{
    float mx = 0.0f, mn = FLT_MAX;
    for (int64_t c = 0; c < g->k; c++) {
        const double mean = g->abs_sum[c] / (double)g->n_seen;
        float v = (float)pow(mean, (double)alpha);
        v = v < 1e-4f || !isfinite(v) ? 1e-4f : v;
        s[c] = v;
        mx = v > mx ? v : mx;
        mn = v < mn ? v : mn;
    }
    const float norm = sqrtf(mx * mn);
    for (int64_t c = 0; c < g->k; c++)
        s[c] = norm > 0.0f ? s[c] / norm : 1.0f;
}

/* Group g's alpha and scales: least squared error of its outputs on the sample. */
static anvil_status search_group(search_ctx *c, anvil_awq_group *g, const anvil_network *net)
{
    const int64_t k = g->k, n = group_out(net, g), rows = g->n_rows;
    float *s = c->tmp + k; /* [k] candidate scales */

    double best = 0.0;
    float best_alpha = 0.0f;
    const int n_alpha = g->fold == ANVIL_AWQ_FOLD_NONE ? 1 : ANVIL_AWQ_GRID;
    for (int i = 0; i < n_alpha; i++) {
        const float alpha = (float)i / ANVIL_AWQ_GRID;
        alpha_scales(g, alpha, s);
        if (i == 0)
            for (int64_t ch = 0; ch < k; ch++)
                s[ch] = 1.0f; /* alpha 0: exactly round to nearest */
        for (int64_t r = 0; r < n; r++) {
            const float *w = c->w + r * k;
            float *d = c->d + r * k;
            for (int64_t ch = 0; ch < k; ch++)
                d[ch] = w[ch] * s[ch];
            fake_quant_row(c, d, k, c->a->group);
            for (int64_t ch = 0; ch < k; ch++)
                d[ch] = d[ch] / s[ch] - w[ch];
        }
        double e;
        TRY(sq_err(c, g->rows, rows, c->d, n, k, &e, NULL));
        if (i == 0)
            g->err_rtn = e;
        if (i == 0 || e < best) {
            best = e;
            best_alpha = alpha;
        }
    }
    g->alpha = best_alpha;
    g->err_awq = best;
    alpha_scales(g, best_alpha, g->scales);
    if (best_alpha == 0.0f)
        for (int64_t ch = 0; ch < k; ch++)
            g->scales[ch] = 1.0f;
    return ANVIL_OK;
}

/* Whether weight w is q_proj or k_proj (AutoAWQ clips neither: their
 * errors meet in the attention scores, not in the outputs measured here). */
static int no_clip(const anvil_network *net, int32_t w)
{
    const char *name = anvil_network_weight(net, w)->name;
    return strstr(name, "q_proj") != NULL || strstr(name, "k_proj") != NULL;
}

/* The clip values of linear weight w of group g: per (row, group of K), the
 * fraction of the largest |value| (after scaling) with the least error of
 * that group's share of the output. c->w holds the weight's transformed
 * rows [n, k], c->x the scaled inputs [rows, k]. */
static anvil_status search_clip(search_ctx *c, const anvil_awq_group *g, int32_t w, int64_t n, int64_t rows)
{
    const anvil_awq *a = c->a;
    const int64_t k = g->k, gs = a->group ? a->group : k, ng = k / gs;
    float *clip = malloc((size_t)(n * ng) * sizeof *clip);
    double *best = malloc((size_t)n * sizeof *best), *err = malloc((size_t)n * sizeof *err);
    float *xg = malloc((size_t)(rows * gs) * sizeof *xg);
    anvil_status st = ANVIL_OK;
    CHECK_GOTO(clip && best && err && xg, ANVIL_ERR_OOM, done, "out of memory for AWQ's clip search");
    for (int64_t gi = 0; gi < ng; gi++) {
        for (int64_t r = 0; r < rows; r++)
            memcpy(xg + r * gs, c->x + r * k + gi * gs, (size_t)gs * sizeof *xg);
        for (int step = 0; step < ANVIL_AWQ_CLIP_STEPS; step++) {
            const float frac = 1.0f - (float)step / ANVIL_AWQ_GRID;
            for (int64_t r = 0; r < n; r++) {
                const float *wr = c->w + r * k + gi * gs;
                float *d = c->d + r * gs;
                float mx = 0.0f;
                for (int64_t i = 0; i < gs; i++)
                    mx = fabsf(wr[i]) > mx ? fabsf(wr[i]) : mx;
                const float lim = mx * frac;
                for (int64_t i = 0; i < gs; i++)
                    d[i] = wr[i] > lim ? lim : wr[i] < -lim ? -lim : wr[i];
                fake_quant_row(c, d, gs, (int32_t)(a->group ? gs : 0));
                for (int64_t i = 0; i < gs; i++)
                    d[i] -= wr[i];
            }
            double total;
            TRY_GOTO(sq_err(c, xg, rows, c->d, n, gs, &total, err), done);
            for (int64_t r = 0; r < n; r++) {
                if (step > 0 && !(err[r] < best[r]))
                    continue; /* step 0 (no clip) first; ties keep the larger range */
                const float *wr = c->w + r * k + gi * gs;
                float mx = 0.0f;
                for (int64_t i = 0; i < gs; i++)
                    mx = fabsf(wr[i]) > mx ? fabsf(wr[i]) : mx;
                best[r] = err[r];
                /* step 0 stores no clip at all: the row's largest is kept exactly */
                clip[r * ng + gi] = step == 0 ? INFINITY : mx * frac;
            }
        }
    }
    c->a->clip[w] = clip;
    clip = NULL;
done:
    free(clip);
    free(best);
    free(err);
    free(xg);
    return st;
}

/* The transformed rows of weight w (scaled columns, divided rows) into c->w. */
static anvil_status transformed(search_ctx *c, const anvil_build_plan *p, const anvil_network *net,
                                const anvil_checkpoint *ck, int32_t w)
{
    const anvil_net_weight *nw = anvil_network_weight(net, w);
    TRY(weight_values(p, net, ck, w, c->w, c->sc));
    for (int64_t r = 0; r < nw->shape[0]; r++)
        anvil_awq_transform_row(c->a, w, r, c->w + r * nw->shape[1], nw->shape[1]);
    return ANVIL_OK;
}

void anvil_awq_set_folds(anvil_awq *a)
{
    for (int32_t j = 0; j < a->n_groups; j++) {
        const anvil_awq_group *g = &a->groups[j];
        if (g->fold == ANVIL_AWQ_FOLD_NONE)
            continue;
        for (int32_t m = 0; m < g->n_linears; m++)
            a->col[g->weights[m]] = g->scales;
        a->div[g->fold_weight] = g->scales;
        a->offset[g->fold_weight] = g->fold == ANVIL_AWQ_FOLD_NORM ? g->fold_offset : 0.0f;
        if (g->fold_bias >= 0)
            a->div[g->fold_bias] = g->scales;
    }
}

anvil_status anvil_awq_search(anvil_awq *a, const anvil_build_plan *plan, const anvil_network *net,
                              const anvil_checkpoint *ck, int clip, int threads)
{
    int64_t max_n = 1, max_k = 1;
    for (int32_t j = 0; j < a->n_groups; j++) {
        const anvil_awq_group *g = &a->groups[j];
        CHECK(g->n_seen > 0 && g->n_rows > 0, ANVIL_ERR_INVALID_ARG,
              "AWQ: the calibration pass saw no rows (value %d)", g->input);
        const int64_t n = group_out(net, g);
        max_n = n > max_n ? n : max_n;
        max_k = g->k > max_k ? g->k : max_k;
    }
    search_ctx c = {.a = a};
    anvil_status st = ANVIL_OK;
    const size_t nk = (size_t)(max_n * max_k), rk = (size_t)a->max_rows * (size_t)max_k;
    c.w = malloc(nk * sizeof *c.w);
    c.d = malloc(nk * sizeof *c.d);
    c.x = malloc(rk * sizeof *c.x);
    c.y = malloc((size_t)a->max_rows * (size_t)max_n * sizeof *c.y);
    c.tmp = malloc((size_t)max_k * 2 * sizeof *c.tmp);
    c.q = malloc((size_t)max_k);
    c.qs = malloc((size_t)max_k * sizeof *c.qs);
    c.qz = malloc((size_t)max_k);
    CHECK_GOTO(c.w && c.d && c.x && c.y && c.tmp && c.q && c.qs && c.qz, ANVIL_ERR_OOM, done,
               "out of memory for AWQ's search (%lld x %lld)", (long long)max_n, (long long)max_k);
    TRY_GOTO(anvil_build_scratch_create(&c.sc), done);
    TRY_GOTO(anvil_backend_cpu_create(threads, &c.be), done);
    /* the scales first, every group from the original weights (as AutoAWQ,
     * whose search of a layer's groups sees none of the others' scales) */
    for (int32_t j = 0; j < a->n_groups; j++) {
        anvil_awq_group *g = &a->groups[j];
        int64_t r0 = 0;
        for (int32_t m = 0; m < g->n_linears; m++) {
            TRY_GOTO(weight_values(plan, net, ck, g->weights[m], c.w + r0 * g->k, c.sc), done);
            r0 += anvil_network_weight(net, g->weights[m])->shape[0];
        }
        TRY_GOTO(search_group(&c, g, net), done);
    }
    anvil_awq_set_folds(a);
    for (int32_t j = 0; clip && j < a->n_groups; j++) {
        const anvil_awq_group *g = &a->groups[j];
        for (int64_t r = 0; r < g->n_rows; r++)
            for (int64_t ch = 0; ch < g->k; ch++)
                c.x[r * g->k + ch] = g->rows[r * g->k + ch] / g->scales[ch];
        for (int32_t m = 0; m < g->n_linears; m++) {
            if (no_clip(net, g->weights[m]))
                continue;
            TRY_GOTO(transformed(&c, plan, net, ck, g->weights[m]), done);
            TRY_GOTO(search_clip(&c, g, g->weights[m], anvil_network_weight(net, g->weights[m])->shape[0],
                                 g->n_rows),
                     done);
        }
    }
done:
    anvil_backend_free(c.be);
    anvil_build_scratch_free(c.sc);
    free(c.w);
    free(c.d);
    free(c.x);
    free(c.y);
    free(c.tmp);
    free(c.q);
    free(c.qs);
    free(c.qz);
    return st;
}
