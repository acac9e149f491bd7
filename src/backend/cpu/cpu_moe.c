/*
 * The moe op on the CPU (backend.h, anvil_moe_args): the router's logits as
 * one matmul, each row's softmax and top-k, the step's (token, slot) pairs
 * sorted by expert (DeepSeek's group-limited routing and scaled weights too), then each expert's rows as one matmul_silu_mul and one
 * matmul (so an expert's weights are streamed once per step, not once per
 * token), and the weighted sum per token in ascending expert order, as
 * transformers' index_add over the experts in order. Every piece runs the
 * CPU's own ops, whose per-element arithmetic does not depend on the rows
 * around it: a token's result is the same whatever else the step holds.
 * Quantized experts (fp8, int8, int4: docs/quantization.md "Mixture of
 * experts") run the same way: each expert's slice of the stack is a
 * quantized matrix that the quantized matmul_silu_mul and matmul take.
 */
#include <math.h>
#include <string.h>

#include "backend/cpu/cpu_internal.h"
#include "core/error.h"

#define AT(base, off) ((void *)((char *)(base) + (off)))

/* The largest of the group's n probabilities. */
static float group_max(const float *p, int32_t n)
{
    float m = p[0];
    for (int32_t i = 1; i < n; i++)
        m = p[i] > m ? p[i] : m;
    return m;
}

/* DeepSeek's group_limited_greedy: the probabilities of every expert
 * outside the keep groups (of G) whose largest probability is largest
 * (the lower group on ties) set to 0, as transformers' masked_fill. No
 * storage: the last group kept (rank keep - 1) is found first; a group is
 * kept when it ranks at or above it. */
static void mask_groups(float *p, int32_t E, int32_t G, int32_t keep)
{
    const int32_t n = E / G;
    int32_t last = 0;
    for (int32_t g = 0; g < G; g++) {
        const float m = group_max(p + g * n, n);
        int32_t rank = 0;
        for (int32_t h = 0; h < G; h++) {
            const float mh = group_max(p + h * n, n);
            rank += mh > m || (mh == m && h < g);
        }
        if (rank == keep - 1)
            last = g;
    }
    const float ml = group_max(p + last * n, n);
    for (int32_t g = 0; g < G; g++) {
        const float m = group_max(p + g * n, n);
        if (!(m > ml || (m == ml && g <= last)))
            for (int32_t i = 0; i < n; i++)
                p[g * n + i] = 0.0f;
    }
}

/* Row t's top-k experts and weights from its router logits (in place:
 * logits become probabilities): softmax in f32, with G > 1 the groups
 * outside the top `keep` masked (mask_groups), the k largest (the lower
 * expert on ties, as torch.topk), divided by their sum (taken largest
 * first, as torch sums the topk values) with norm, times scale (0: 1);
 * then ids ascending, each weight with its expert. */
static void route_row(float *p, int32_t E, int32_t k, int norm, int32_t G, int32_t keep, float scale, int32_t *ids,
                      float *w)
{
    float mx = p[0];
    for (int32_t e = 1; e < E; e++)
        mx = p[e] > mx ? p[e] : mx;
    float sum = 0.0f;
    for (int32_t e = 0; e < E; e++) {
        p[e] = expf(p[e] - mx);
        sum += p[e];
    }
    for (int32_t e = 0; e < E; e++)
        p[e] /= sum;
    if (G > 1)
        mask_groups(p, E, G, keep);
    float wsum = 0.0f;
    for (int32_t j = 0; j < k; j++) {
        int32_t best = -1;
        for (int32_t e = 0; e < E; e++) {
            int taken = 0;
            for (int32_t q = 0; q < j; q++)
                taken |= ids[q] == e;
            /* strictly greater keeps the lower expert; a NaN is never picked over a number */
            if (!taken && (best < 0 || p[e] > p[best] || (isnan(p[best]) && !isnan(p[e]))))
                best = e;
        }
        ids[j] = best;
        w[j] = p[best];
        wsum += w[j];
    }
    if (norm)
        for (int32_t j = 0; j < k; j++)
            w[j] /= wsum;
    if (scale != 0.0f && scale != 1.0f)
        for (int32_t j = 0; j < k; j++)
            w[j] *= scale;
    for (int32_t j = 1; j < k; j++) /* insertion sort by expert */
        for (int32_t q = j; q > 0 && ids[q - 1] > ids[q]; q--) {
            int32_t ti = ids[q];
            ids[q] = ids[q - 1];
            ids[q - 1] = ti;
            float tw = w[q];
            w[q] = w[q - 1];
            w[q - 1] = tw;
        }
}

anvil_status anvil_cpu_op_moe(anvil_backend *be, const anvil_moe_args *a)
{
    anvil_moe_scratch L;
    TRY(anvil_moe_check_args_quant(a, &L));
    CHECK(a->x->dtype == ANVIL_DTYPE_F32 && a->out->dtype == ANVIL_DTYPE_F32, ANVIL_ERR_UNSUPPORTED,
          "cpu moe: activations are f32");
    const int64_t T = a->x->shape[0], H = a->x->shape[1], I = a->inter, Is = a->shared_inter;
    const int32_t E = a->n_experts, k = a->top_k;
    if (T == 0)
        return ANVIL_OK;
    void *s = a->scratch;
    float *logits = AT(s, L.logits), *topw = AT(s, L.topk_w), *xs = AT(s, L.xs);
    float *g = AT(s, L.g), *u = AT(s, L.u), *act = AT(s, L.a), *y = AT(s, L.y);
    int32_t *ids = AT(s, L.topk_ids), *offsets = AT(s, L.offsets), *order = AT(s, L.order);
    int32_t *row_of = AT(s, L.row_of);
    const float *x = a->x->data;
    float *out = a->out->data;

    /* the router: logits [T, E] */
    anvil_tensor lt = anvil_tensor_2d(ANVIL_DTYPE_F32, T, E, logits);
    TRY(anvil_cpu_op_matmul(be, a->x, a->router, NULL, &lt));
    for (int64_t t = 0; t < T; t++)
        route_row(logits + t * E, E, k, a->norm_topk_prob, a->n_group, a->topk_group, a->routed_scale, ids + t * k,
                  topw + t * k);

    /* the (token, slot) pairs by expert, tokens ascending within one */
    memset(offsets, 0, (size_t)(E + 1) * sizeof *offsets);
    for (int64_t r = 0; r < T * k; r++)
        offsets[ids[r] + 1]++;
    for (int32_t e = 0; e < E; e++)
        offsets[e + 1] += offsets[e];
    for (int32_t e = 0; e < E; e++) { /* offsets[e] is e's first row again at the end */
        int32_t at = offsets[e];
        for (int64_t r = 0; r < T * k; r++)
            if (ids[r] == e) {
                order[at] = (int32_t)r;
                row_of[r] = at++;
            }
    }
    for (int64_t r = 0; r < T * k; r++)
        memcpy(xs + (int64_t)row_of[r] * H, x + (r / k) * H, (size_t)H * sizeof *xs);

    /* each expert's rows: gate and up with the silu in one op, then down;
     * a quantized expert is its slice of the stack's rows and scales, which
     * the quantized matmuls take as any quantized weight */
    for (int32_t e = 0; e < E; e++) {
        const int64_t r0 = offsets[e], n = offsets[e + 1] - offsets[e];
        if (n == 0)
            continue;
        anvil_quant qg, qu, qd;
        anvil_tensor xe = anvil_tensor_2d(ANVIL_DTYPE_F32, n, H, xs + r0 * H);
        anvil_tensor wg = anvil_moe_weight_rows(a->gate_up, 2 * e * I, I, &qg);
        anvil_tensor wu = anvil_moe_weight_rows(a->gate_up, (2 * e + 1) * I, I, &qu);
        anvil_tensor wd = anvil_moe_weight_rows(a->down, e * H, H, &qd);
        anvil_tensor ge = anvil_tensor_2d(ANVIL_DTYPE_F32, n, I, g + r0 * I);
        anvil_tensor ue = anvil_tensor_2d(ANVIL_DTYPE_F32, n, I, u + r0 * I);
        anvil_tensor ae = anvil_tensor_2d(ANVIL_DTYPE_F32, n, I, act + r0 * I);
        anvil_tensor ye = anvil_tensor_2d(ANVIL_DTYPE_F32, n, H, y + r0 * H);
        TRY(anvil_cpu_op_matmul_silu_mul(be, &xe, &wg, NULL, &wu, NULL, &ge, &ue, &ae));
        TRY(anvil_cpu_op_matmul(be, &ae, &wd, NULL, &ye));
    }

    /* the shared expert, then the weighted sum (transformers: the routed
     * experts' sum, then + sigmoid(gate) * shared) */
    float *sy = NULL, *sgate = NULL;
    if (Is > 0) {
        anvil_quant qg, qu;
        anvil_tensor wg = anvil_moe_weight_rows(a->shared_gate_up, 0, Is, &qg);
        anvil_tensor wu = anvil_moe_weight_rows(a->shared_gate_up, Is, Is, &qu);
        anvil_tensor gt = anvil_tensor_2d(ANVIL_DTYPE_F32, T, Is, AT(s, L.sg));
        anvil_tensor ut = anvil_tensor_2d(ANVIL_DTYPE_F32, T, Is, AT(s, L.su));
        anvil_tensor at = anvil_tensor_2d(ANVIL_DTYPE_F32, T, Is, AT(s, L.sa));
        anvil_tensor yt = anvil_tensor_2d(ANVIL_DTYPE_F32, T, H, AT(s, L.sy));
        anvil_tensor st = anvil_tensor_2d(ANVIL_DTYPE_F32, T, 1, AT(s, L.sgate));
        TRY(anvil_cpu_op_matmul_silu_mul(be, a->x, &wg, NULL, &wu, NULL, &gt, &ut, &at));
        TRY(anvil_cpu_op_matmul(be, &at, a->shared_down, NULL, &yt));
        if (a->shared_gate != NULL) {
            TRY(anvil_cpu_op_matmul(be, a->x, a->shared_gate, NULL, &st));
            sgate = st.data;
        }
        sy = yt.data;
    }
    for (int64_t t = 0; t < T; t++) {
        float *o = out + t * H;
        for (int64_t i = 0; i < H; i++)
            o[i] = 0.0f;
        for (int32_t j = 0; j < k; j++) {
            const float wj = topw[t * k + j], *yr = y + (int64_t)row_of[t * k + j] * H;
            for (int64_t i = 0; i < H; i++)
                o[i] += yr[i] * wj;
        }
        if (sy != NULL && sgate != NULL) {
            const float gate = 1.0f / (1.0f + expf(-sgate[t]));
            for (int64_t i = 0; i < H; i++)
                o[i] += gate * sy[t * H + i];
        } else if (sy != NULL) { /* DeepSeek: the shared experts' output as it is */
            for (int64_t i = 0; i < H; i++)
                o[i] += sy[t * H + i];
        }
    }
    return ANVIL_OK;
}
