/*
 * AWQ's converter (awq.h): the stored tensors an AWQ build changes, made
 * from the checkpoint's values as RTN makes them, after each row passes
 * through the searched factors:
 *
 *   - a quantized matrix: w[r][c] * col[c] / div[r], clipped to
 *     +-clip[r][c / group], then rounded by anvil_rtn_row (quantize.c);
 *   - a float tensor that a group's 1/s was folded into (an RMSNorm weight,
 *     a bias): w[r] / div[r] ((off + w[r]) / div[r] - off for a norm that
 *     multiplies by off + w, Gemma's), rounded once to the tensor's kind (bf16:
 *     to nearest even, as every conversion of the builder); an unquantized
 *     matrix (tests of the fold alone) w[r][c] * col[c] / div[r] likewise.
 *
 * Like RTN's, the fills keep no state: any chunk, any thread, same bytes.
 */
#include <math.h>
#include <string.h>

#include "builder/awq.h"
#include "builder/quantize.h"
#include "core/error.h"

void anvil_awq_transform_row(const anvil_awq *a, int32_t w, int64_t r, float *x, int64_t k)
{
    const float *col = a->col[w], *div = a->div[w], *clip = a->clip[w];
    if (k == 1 || col == NULL) { /* a 1-D weight's element r, or a matrix only its rows scale */
        const float off = a->offset[w];
        if (div != NULL)
            for (int64_t c = 0; c < k; c++)
                x[c] = off != 0.0f ? (off + x[c]) / div[r] - off : x[c] / div[r];
    } else {
        const float d = div != NULL ? div[r] : 1.0f;
        for (int64_t c = 0; c < k; c++)
            x[c] = x[c] * col[c] / d;
    }
    if (clip != NULL && k > 1) {
        const int64_t gs = a->group ? a->group : k, ng = k / gs;
        for (int64_t c = 0; c < k; c++) {
            const float lim = clip[r * ng + c / gs];
            x[c] = x[c] > lim ? lim : x[c] < -lim ? -lim : x[c];
        }
    }
}

/* anvil_quant_fill's hook: stored row r of ws is row r' of one member weight. */
static void awq_row(const anvil_build_plan *p, int32_t ws, int64_t r, float *x, int64_t k)
{
    int64_t at;
    const int32_t w = anvil_build_member_at(p, ws, r * k, &at);
    if (w >= 0)
        anvil_awq_transform_row(p->awq, w, at / k, x, k);
}

/* A float tensor with folded divisors: its values, divided, converted. */
static anvil_status fold_fill(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                              int32_t s, size_t offset, void *dst, size_t len, anvil_build_scratch *sc)
{
    const anvil_stored *t = &p->stored[s];
    const size_t es = anvil_dtype_size(t->kind);
    const int64_t e0 = (int64_t)(offset / es), n = (int64_t)(len / es);
    const int64_t piece = (int64_t)(ANVIL_BUILD_CHUNK / sizeof(float));
    float *vals = anvil_build_scratch_rows(sc, ANVIL_BUILD_CHUNK);
    CHECK(vals != NULL, ANVIL_ERR_OOM, "out of memory for AWQ's folded weights");
    for (int64_t e = 0; e < n; e += piece) {
        const int64_t m = n - e < piece ? n - e : piece;
        TRY(anvil_build_values(p, net, ck, s, e0 + e, e0 + e + m, vals, sc));
        for (int64_t i = 0; i < m; i++) {
            int64_t at;
            const int32_t w = anvil_build_member_at(p, s, e0 + e + i, &at);
            const anvil_net_weight *nw = anvil_network_weight(net, w);
            const int64_t row = nw->n_dims == 1 ? at : at / nw->shape[1];
            if (nw->n_dims == 2 && p->awq->col[w] != NULL) /* an unquantized matrix (tests of the fold) */
                vals[i] *= p->awq->col[w][at % nw->shape[1]];
            const float off = p->awq->offset[w];
            if (p->awq->div[w] != NULL) /* a norm with an offset (Gemma): (off + w) / s - off */
                vals[i] = off != 0.0f ? (off + vals[i]) / p->awq->div[w][row] - off : vals[i] / p->awq->div[w][row];
        }
        anvil_convert_from_f32(t->kind, vals, (char *)dst + (size_t)e * es, m);
    }
    return ANVIL_OK;
}

static anvil_status awq_fill(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                             int32_t s, size_t offset, void *dst, size_t len, anvil_build_scratch *sc)
{
    CHECK(p->awq != NULL, ANVIL_ERR_INTERNAL, "awq: '%s' without the plan's AWQ scales", p->stored[s].name);
    const anvil_stored *t = &p->stored[s];
    if (t->role == ANVIL_STORED_WEIGHT && anvil_stored_kind_is_float(t->kind))
        return fold_fill(p, net, ck, s, offset, dst, len, sc);
    return anvil_quant_fill(p, net, ck, s, offset, dst, len, sc, awq_row);
}

const anvil_stored_converter anvil_awq_converter = {.method = "awq", .fill = awq_fill};

void anvil_awq_attach(anvil_awq *a, anvil_build_plan *plan)
{
    plan->awq = a;
    for (int32_t s = 0; s < plan->n_stored; s++) {
        anvil_stored *t = &plan->stored[s];
        if (t->role != ANVIL_STORED_WEIGHT)
            continue;
        int touched = 0;
        for (int32_t m = 0; m < t->n; m++) {
            const int32_t w = plan->members[t->first + m];
            touched |= a->col[w] != NULL || a->div[w] != NULL || a->clip[w] != NULL;
        }
        /* a quantized matrix of the AWQ kind is made here even untouched
         * (one method for the whole build); its companions follow it */
        const int quant = t->q.scales >= 0 && t->kind == a->kind;
        if (!touched && !quant)
            continue;
        t->conv = &anvil_awq_converter;
        const int32_t comp[3] = {t->q.scales, t->q.zeros, t->q.perm};
        for (int c = 0; c < 3; c++)
            if (comp[c] >= 0)
                plan->stored[comp[c]].conv = &anvil_awq_converter;
    }
}
