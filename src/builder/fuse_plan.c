/*
 * Fusion plan: which neighbouring ops of the network run as one of the
 * backend's fused ops. A decode step of a Llama layer is 17 launches
 * unfused (norm, q, k, v, two ropes, the KV write, attention and its
 * combine, o, add, norm, gate, up, silu_mul, down, add); at batch 1 each
 * moves a few bytes to a few hundred MB, and the gaps between dependent
 * kernels, ~2-3 us each, add up to a fifth of the step. Fused, a layer is
 * add+norm, qkv, rope+KV write, attention (+ combine), o, add+norm,
 * gate+up+silu, down: 9.
 *
 * The patterns are matched on the op list as the model builder wrote it:
 *   add(a, b) then rmsnorm(that)                       -> add_rmsnorm
 *   linear(x) gate, linear(x) up, silu_mul(gate, up)   -> matmul_silu_mul
 *     (gate and up read by nothing else)
 *   2..ANVIL_MATMUL_MULTI_MAX linears of one x in a row -> matmul_multi
 *   rope(q), rope(k) read only by attention(q, k, v)   -> attention with
 *     rope_inv_freq (the two ropes alike)
 * and then (anvil_fuse_merge_norm, the runtime's) an add + rmsnorm group
 * with the matmul group after it that alone reads the norm
 *   -> add_rmsnorm_matmul_multi / add_rmsnorm_matmul_silu_mul
 * which on a GPU computes the norm in each GEMV block's prologue: a
 * layer's decode step is then 7 launches (attention's split-K combine
 * aside): add+norm+qkv, attention, o, add+norm+gate/up+silu, down.
 */
#include "builder/fuse_plan.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

static int token_rows(const anvil_net_op *op)
{
    return op->row_kind == 0;
}

static int same_rope(const anvil_net_op *a, const anvil_net_op *b)
{
    const anvil_rope_config *x = &a->rope, *y = &b->rope;
    return a->head_dim == b->head_dim && x->type == y->type && x->theta == y->theta &&
           x->factor == y->factor && x->low_freq_factor == y->low_freq_factor &&
           x->high_freq_factor == y->high_freq_factor && x->original_max_position == y->original_max_position &&
           x->attention_factor == y->attention_factor && x->n_ext_factors == y->n_ext_factors &&
           memcmp(x->short_factor, y->short_factor, (size_t)x->n_ext_factors * sizeof x->short_factor[0]) == 0 &&
           memcmp(x->long_factor, y->long_factor, (size_t)x->n_ext_factors * sizeof x->long_factor[0]) == 0;
}

anvil_fuse_caps anvil_fuse_caps_of(const anvil_backend_ops *ops)
{
    anvil_fuse_caps c = {0};
    if (ops) {
        c.add_rmsnorm = ops->add_rmsnorm != NULL;
        c.matmul_multi = ops->matmul_multi != NULL;
        c.matmul_silu_mul = ops->matmul_silu_mul != NULL;
        c.attention_rope = ops->attention_rope != 0;
        c.add_rmsnorm_matmul_multi = ops->add_rmsnorm_matmul_multi != NULL;
        c.add_rmsnorm_matmul_silu_mul = ops->add_rmsnorm_matmul_silu_mul != NULL;
    }
    return c;
}

anvil_fuse_caps anvil_fuse_caps_all(void)
{
    return (anvil_fuse_caps){.add_rmsnorm = 1, .matmul_multi = 1, .matmul_silu_mul = 1, .attention_rope = 1,
                             .add_rmsnorm_matmul_multi = 1, .add_rmsnorm_matmul_silu_mul = 1};
}

anvil_status anvil_fuse_plan(const anvil_network *net, const anvil_fuse_caps *ops, int disabled, anvil_fuse **out)
{
    *out = NULL;
    const int32_t n = anvil_network_op_count(net);
    anvil_fuse *f = calloc((size_t)(n > 0 ? n : 1), sizeof *f);
    int32_t *uses = calloc((size_t)(n > 0 ? n : 1), sizeof *uses);
    if (f == NULL || uses == NULL) {
        free(f);
        free(uses);
        return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    }
    for (int32_t i = 0; i < n; i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        for (int k = 0; k < 3; k++)
            if (op->inputs[k] != ANVIL_VALUE_NONE)
                uses[op->inputs[k]]++;
    }
    if (anvil_network_output(net) >= 0)
        uses[anvil_network_output(net)]++;
    if (disabled) {
        free(uses);
        *out = f;
        return ANVIL_OK;
    }

    /* attention with its ropes first: the ropes come before it */
    for (int32_t i = 0; ops->attention_rope && i < n; i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        if (op->kind != ANVIL_OP_ATTENTION || !token_rows(op))
            continue;
        const anvil_value q = op->inputs[0], k = op->inputs[1];
        if (q == ANVIL_VALUE_NONE || k == ANVIL_VALUE_NONE || q == k)
            continue;
        const anvil_net_op *rq = anvil_network_op(net, q), *rk = anvil_network_op(net, k);
        if (rq->kind != ANVIL_OP_ROPE || rk->kind != ANVIL_OP_ROPE || uses[q] != 1 || uses[k] != 1 ||
            !same_rope(rq, rk) || rq->head_dim != op->attn.head_dim || f[q].kind || f[k].kind)
            continue;
        f[i].kind = ANVIL_FUSE_ROPE_ATTENTION;
        f[i].rope_op = q;
        f[q].kind = f[k].kind = ANVIL_FUSE_SKIP;
    }

    for (int32_t i = 0; i < n; i++) {
        if (f[i].kind)
            continue;
        const anvil_net_op *op = anvil_network_op(net, i);
        if (!token_rows(op))
            continue;
        const anvil_net_op *n1 = i + 1 < n ? anvil_network_op(net, i + 1) : NULL;
        const anvil_net_op *n2 = i + 2 < n ? anvil_network_op(net, i + 2) : NULL;
        /* the fused norms compute x / rms(x) * w: a norm with a weight
         * offset (Gemma's 1 + w) runs alone */
        if (op->kind == ANVIL_OP_ADD && ops->add_rmsnorm && n1 && n1->kind == ANVIL_OP_RMSNORM &&
            n1->weight_offset == 0.0f && token_rows(n1) && n1->inputs[0] == i && !f[i + 1].kind) {
            f[i].kind = ANVIL_FUSE_ADD_RMSNORM;
            f[i + 1].kind = ANVIL_FUSE_SKIP;
            continue;
        }
        if (op->kind != ANVIL_OP_LINEAR)
            continue;
        if (ops->matmul_silu_mul && n1 && n2 && n1->kind == ANVIL_OP_LINEAR && token_rows(n1) &&
            n1->inputs[0] == op->inputs[0] && n2->kind == ANVIL_OP_SILU_MUL && token_rows(n2) &&
            n2->inputs[0] == i && n2->inputs[1] == i + 1 && uses[i] == 1 && uses[i + 1] == 1 &&
            !f[i + 1].kind && !f[i + 2].kind) {
            f[i].kind = ANVIL_FUSE_SILU_MUL;
            f[i + 1].kind = f[i + 2].kind = ANVIL_FUSE_SKIP;
            continue;
        }
        if (!ops->matmul_multi)
            continue;
        int32_t m = 1;
        while (m < ANVIL_MATMUL_MULTI_MAX && i + m < n && !f[i + m].kind) {
            const anvil_net_op *o = anvil_network_op(net, i + m);
            if (o->kind != ANVIL_OP_LINEAR || !token_rows(o) || o->inputs[0] != op->inputs[0])
                break;
            m++;
        }
        if (m < 2)
            continue;
        f[i].kind = ANVIL_FUSE_MATMUL_MULTI;
        f[i].n = (int8_t)m;
        for (int32_t j = 1; j < m; j++)
            f[i + j].kind = ANVIL_FUSE_SKIP;
    }
    free(uses);
    *out = f;
    return ANVIL_OK;
}

int32_t anvil_fuse_span(const anvil_fuse *g)
{
    switch (g->kind) {
    case ANVIL_FUSE_ADD_RMSNORM:
        return 2;
    case ANVIL_FUSE_MATMUL_MULTI:
        return g->n;
    case ANVIL_FUSE_SILU_MUL:
        return 3;
    case ANVIL_FUSE_NORM_MULTI:
        return 2 + g->n;
    case ANVIL_FUSE_NORM_SILU:
        return 5;
    default:
        return 1;
    }
}

void anvil_fuse_merge_norm(const anvil_network *net, const anvil_fuse_caps *caps, anvil_fuse *f)
{
    anvil_fuse_merge_norm_where(net, caps, f, NULL);
}

/* Whether every linear of the group at g (span linears, or gate and up) is
 * one the caller lets merge. */
static int group_ok(const anvil_fuse *f, int32_t g, const uint8_t *linear_ok)
{
    if (linear_ok == NULL)
        return 1;
    const int32_t m = f[g].kind == ANVIL_FUSE_MATMUL_MULTI ? f[g].n : f[g].kind == ANVIL_FUSE_SILU_MUL ? 2 : 1;
    for (int32_t j = 0; j < m; j++)
        if (!linear_ok[g + j])
            return 0;
    return 1;
}

void anvil_fuse_merge_norm_where(const anvil_network *net, const anvil_fuse_caps *caps, anvil_fuse *f,
                                 const uint8_t *linear_ok)
{
    const int32_t n = anvil_network_op_count(net);
    if (!caps->add_rmsnorm_matmul_multi && !caps->add_rmsnorm_matmul_silu_mul)
        return;
    for (int32_t i = 0; i + 2 < n; i++) {
        if (f[i].kind != ANVIL_FUSE_ADD_RMSNORM)
            continue;
        const int32_t norm = i + 1, g = i + 2;
        const anvil_net_op *op = anvil_network_op(net, g);
        if (op->kind != ANVIL_OP_LINEAR || !token_rows(op) || op->inputs[0] != norm || !group_ok(f, g, linear_ok))
            continue;
        /* the group after the norm must be its only reader: the fused op
         * does not keep the norm (on a GPU it lives in shared memory) */
        int32_t readers = 0;
        for (int32_t j = norm + 1; j < n; j++) {
            const anvil_net_op *o = anvil_network_op(net, j);
            for (int k = 0; k < 3; k++)
                readers += o->inputs[k] == norm;
        }
        if (anvil_network_output(net) == norm)
            readers++;
        if (f[g].kind == ANVIL_FUSE_SILU_MUL && caps->add_rmsnorm_matmul_silu_mul && readers == 2) {
            f[i].kind = ANVIL_FUSE_NORM_SILU;
            f[norm].kind = f[g].kind = ANVIL_FUSE_SKIP;
        } else if ((f[g].kind == ANVIL_FUSE_MATMUL_MULTI || f[g].kind == ANVIL_FUSE_NONE) &&
                   caps->add_rmsnorm_matmul_multi) {
            const int8_t m = f[g].kind == ANVIL_FUSE_MATMUL_MULTI ? f[g].n : 1;
            if (readers != m)
                continue;
            f[i].kind = ANVIL_FUSE_NORM_MULTI;
            f[i].n = m;
            f[norm].kind = f[g].kind = ANVIL_FUSE_SKIP;
            f[g].n = 0;
        }
    }
}

void anvil_fuse_extend_lives(const anvil_network *net, const anvil_fuse *f, int32_t *last_use)
{
    const int32_t n = anvil_network_op_count(net);
    for (int32_t i = 0; i < n; i++) {
        /* the rope group needs nothing: ropes work in place and their
         * values are read by the attention alone */
        if (f[i].kind == ANVIL_FUSE_NONE || f[i].kind == ANVIL_FUSE_SKIP ||
            f[i].kind == ANVIL_FUSE_ROPE_ATTENTION)
            continue;
        const int32_t end = i + anvil_fuse_span(&f[i]) - 1;
        /* every value the group reads, those made inside it too (the norm
         * of a NORM group is read by its linears while their outputs are
         * written) */
        for (int32_t j = i; j <= end; j++) {
            const anvil_net_op *op = anvil_network_op(net, j);
            for (int k = 0; k < 3; k++) {
                const anvil_value v = op->inputs[k];
                if (v != ANVIL_VALUE_NONE && v < end && last_use[v] < end)
                    last_use[v] = end;
            }
        }
    }
}

void anvil_fuse_counts(const anvil_fuse *f, int32_t n_ops, int32_t counts[ANVIL_FUSE_KINDS])
{
    memset(counts, 0, ANVIL_FUSE_KINDS * sizeof counts[0]);
    for (int32_t i = 0; i < n_ops; i++)
        counts[f[i].kind]++;
}
