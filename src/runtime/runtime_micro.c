/*
 * A pipeline step as micro-batches (docs/parallel.md "Micro-batches"):
 * the step's sequences split into M groups of whole sequences, each run
 * through the stage's plan as a step of its own, so that stage s computes
 * group k while stage s + 1 computes group k - 1. Every rank splits the
 * same step the same way (the split depends on the step alone), so the
 * led mode's followers need nothing more than the step.
 *
 * A group is a slice of the step: its tokens, positions, slots, sequence
 * lengths and block tables are the step's arrays at an offset; the arrays
 * that hold indices (seq_starts, seq_of_token, logit_rows) are rebased
 * into mb_meta_dev. The kernels are batch-invariant on the CPU (a row's
 * values do not depend on the rows beside it: docs/executor.md), so each
 * sequence's logits are the unsplit step's bits.
 *
 * The order of the transfers. A send may not complete before its receiver
 * posts the receive (MPI's rendezvous for large messages, NCCL), so the
 * ring of stages (stage 0 -> ... -> P-1 -> logits back to stage 0) could
 * deadlock: stage 0 sending group k to stage 1 while the last stage waits
 * to hand stage 0 the logits of an earlier group. Stages 1..P-1 run each
 * group whole (receive, compute, send); stage 0 computes group k, then
 * before sending it receives the logits of group k - P + 1 (the last stage
 * can hold group k only once stage 0 took those), then sends; the logits
 * still owed are received after the last group. Stage 0 therefore computes
 * group k while the later stages hold groups k - 1 .. k - P + 1.
 *
 * The logits of each group go to mb_logits at the group's first row (stage
 * 0 receives them there; the last stage copies its output there), and the
 * whole is copied into the output buffer at the end, where the unsplit step
 * leaves them for the download, the argmax and the sampler.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "runtime/runtime_internal.h"

#define MICRO_MAX 64 /* groups a step at most */

struct anvil_rt_micro {
    const anvil_step *steps;     /* [n] the groups */
    const int32_t *row0;         /* [n] each group's first logits row in the step */
    int32_t n, k;                /* groups, the one running */
    int32_t next_recv;           /* stage 0: the first group whose logits are not yet received */
    int send_ready;              /* stage 0: the receive before group k's sends was done */
    const anvil_net_op *recv_op; /* stage 0: the logits' recv (NULL elsewhere) */
};

anvil_status anvil_rt_micro_alloc(anvil_runtime *rt)
{
    const anvil_runtime_options *o = &rt->opts; /* (pp_micro_batches checked by resolve_options) */
    if (rt->pp_stages <= 1)
        return ANVIL_OK;
    /* downloaded seq_starts and logit_rows, then the rebased arrays: the
     * groups' seq_starts (at most S + MICRO_MAX), seq_of_token, logit_rows */
    const size_t S = (size_t)o->max_batch_size, T = (size_t)o->max_num_tokens, L = (size_t)o->max_logit_rows;
    rt->mb_ints = (S + 1 + L) + (S + MICRO_MAX + T + L);
    rt->mb_host = malloc(rt->mb_ints * sizeof(int32_t));
    CHECK(rt->mb_host != NULL, ANVIL_ERR_OOM, "out of memory for the micro-batches' metadata");
    if (rt->be->ops->alloc(rt->be, rt->mb_ints * sizeof(int32_t), &rt->mb_meta_dev) != ANVIL_OK)
        return anvil_error_wrap("the micro-batches' metadata (%zu bytes)", rt->mb_ints * sizeof(int32_t));
    if (rt->has_logits && L > 0) {
        const anvil_net_op *out = anvil_network_op(rt->net, anvil_network_output(rt->net));
        const size_t bytes = L * (size_t)out->width * anvil_dtype_size(rt->be->ops->act_dtype);
        if (rt->be->ops->alloc(rt->be, bytes, &rt->mb_logits) != ANVIL_OK)
            return anvil_error_wrap("the micro-batches' logits (%zu bytes)", bytes);
    }
    return ANVIL_OK;
}

void anvil_rt_micro_free(anvil_runtime *rt)
{
    if (rt->mb_meta_dev != NULL)
        rt->be->ops->free(rt->be, rt->mb_meta_dev);
    if (rt->mb_logits != NULL)
        rt->be->ops->free(rt->be, rt->mb_logits);
    free(rt->mb_host);
    rt->mb_meta_dev = rt->mb_logits = NULL;
    rt->mb_host = NULL;
}

/* Group k's logits rows [row0, row0 + n) of mb_logits as a tensor. */
static anvil_tensor logits_rows(const anvil_runtime *rt, int64_t width, int32_t row0, int32_t n)
{
    const size_t row_bytes = (size_t)width * anvil_dtype_size(rt->be->ops->act_dtype);
    return anvil_tensor_2d(rt->be->ops->act_dtype, n, width,
                           (char *)rt->mb_logits + (size_t)row0 * row_bytes);
}

static anvil_status receive_logits(anvil_runtime *rt, anvil_rt_micro *mb, int32_t upto)
{
    for (; mb->next_recv < upto; mb->next_recv++) {
        const anvil_step *g = &mb->steps[mb->next_recv];
        if (g->n_logits == 0) /* the last stage sends none either (its ops over logit rows skip) */
            continue;
        anvil_tensor t = logits_rows(rt, mb->recv_op->width, mb->row0[mb->next_recv], g->n_logits);
        if (anvil_rt_pp_transfer(rt, mb->recv_op, NULL, &t) != ANVIL_OK)
            return anvil_error_wrap("the logits of micro-batch %d of %d", mb->next_recv, mb->n);
    }
    return ANVIL_OK;
}

anvil_status anvil_rt_micro_before_send(anvil_runtime *rt, anvil_rt_micro *mb)
{
    if (mb->recv_op == NULL || mb->send_ready)
        return ANVIL_OK;
    mb->send_ready = 1;
    return receive_logits(rt, mb, mb->k - rt->pp_stages + 2);
}

/*
 * The groups: whole sequences, each group's tokens about T / M, at least one
 * sequence each. Returns the count (0: the step runs whole, because its
 * logit rows do not follow the groups' order, which the gathered logits
 * need).
 */
static int32_t split(const int32_t *starts, int32_t S, const int32_t *rows, int32_t L, int32_t M,
                     int32_t *bound, int32_t *lbound)
{
    const int64_t T = starts[S];
    bound[0] = 0;
    for (int32_t k = 0; k < M; k++) {
        const int64_t target = (int64_t)(k + 1) * T / M;
        int32_t e = bound[k] + 1;
        const int32_t e_max = S - (M - 1 - k);
        while (e < e_max && starts[e] < target)
            e++;
        bound[k + 1] = e;
    }
    /* the logit rows of group k are rows[lbound[k], lbound[k+1]): in order */
    int32_t k = 0;
    lbound[0] = 0;
    for (int32_t i = 0; i < L; i++) {
        while (k < M && rows[i] >= starts[bound[k + 1]])
            lbound[++k] = i;
        if (k == M || rows[i] < starts[bound[k]])
            return 0;
    }
    while (k < M)
        lbound[++k] = L;
    return M;
}

anvil_status anvil_rt_micro_run(anvil_runtime *rt, const anvil_step *s, int *ran)
{
    *ran = 0;
    const int32_t S = s->n_seqs, L = s->n_logits;
    int32_t M = rt->opts.pp_micro_batches == 0 ? rt->pp_stages : rt->opts.pp_micro_batches;
    if (M > S)
        M = S;
    if (M > MICRO_MAX)
        M = MICRO_MAX;
    /* a calibration hook sees whole steps */
    if (rt->pp_comm == NULL || M <= 1 || rt->op_hook != NULL)
        return ANVIL_OK;

    anvil_backend *be = rt->be;
    int32_t *starts = rt->mb_host, *rows = starts + S + 1, *out = rows + L;
    TRY(be->ops->download(be, starts, s->seq_starts, (size_t)(S + 1) * sizeof(int32_t)));
    if (L > 0)
        TRY(be->ops->download(be, rows, s->logit_rows, (size_t)L * sizeof(int32_t)));
    int32_t bound[MICRO_MAX + 1], lbound[MICRO_MAX + 1];
    M = split(starts, S, rows, L, M, bound, lbound);
    if (M <= 1)
        return ANVIL_OK;

    /* the rebased arrays, group after group, then one upload */
    anvil_step g[MICRO_MAX];
    int32_t row0[MICRO_MAX];
    size_t off[MICRO_MAX][3];
    int32_t *w = out;
    for (int32_t k = 0; k < M; k++) {
        const int32_t q0 = bound[k], q1 = bound[k + 1], t0 = starts[q0], t1 = starts[q1];
        off[k][0] = (size_t)(w - out);
        for (int32_t q = q0; q <= q1; q++)
            *w++ = starts[q] - t0;
        off[k][1] = (size_t)(w - out);
        for (int32_t q = q0; q < q1; q++)
            for (int32_t t = starts[q]; t < starts[q + 1]; t++)
                *w++ = q - q0;
        off[k][2] = (size_t)(w - out);
        for (int32_t i = lbound[k]; i < lbound[k + 1]; i++)
            *w++ = rows[i] - t0;
        g[k] = *s;
        g[k].n_tokens = t1 - t0;
        g[k].n_seqs = q1 - q0;
        g[k].n_logits = lbound[k + 1] - lbound[k];
        /* the first n_decode sequences of the step are its decodes; the
         * context bounds stay the step's (upper bounds, as the step ran) */
        g[k].n_decode = s->n_decode <= q0 ? 0 : s->n_decode >= q1 ? q1 - q0 : s->n_decode - q0;
        g[k].token_ids = s->token_ids + t0;
        g[k].positions = s->positions + t0;
        g[k].slots = s->slots + t0;
        g[k].seq_lens = s->seq_lens + q0;
        g[k].block_tables = s->block_tables + (size_t)q0 * (size_t)s->max_blocks_per_seq;
        row0[k] = lbound[k];
    }
    const size_t used = (size_t)(w - out);
    CHECK((size_t)(out - rt->mb_host) + used <= rt->mb_ints, ANVIL_ERR_INTERNAL,
          "micro-batch metadata overflow");
    TRY(be->ops->upload(be, rt->mb_meta_dev, out, used * sizeof(int32_t)));
    const int32_t *dev = rt->mb_meta_dev;
    for (int32_t k = 0; k < M; k++) {
        g[k].seq_starts = dev + off[k][0];
        g[k].seq_of_token = dev + off[k][1];
        g[k].logit_rows = dev + off[k][2];
    }

    const anvil_value outv = anvil_network_output(rt->net);
    const anvil_net_op *oop = anvil_network_op(rt->net, outv);
    anvil_rt_micro mb = {.steps = g, .row0 = row0, .n = M};
    if (rt->has_logits && oop->kind == ANVIL_OP_RECV)
        mb.recv_op = oop; /* stage 0: the logits come back from the last stage */
    for (mb.k = 0; mb.k < M; mb.k++) {
        mb.send_ready = 0;
        if (anvil_rt_op_loop(rt, &g[mb.k], &mb) != ANVIL_OK)
            return anvil_error_wrap("micro-batch %d of %d (%d sequences)", mb.k, M, g[mb.k].n_seqs);
        if (rt->has_logits && mb.recv_op == NULL && g[mb.k].n_logits > 0) {
            /* the last stage: its output holds the group's logits */
            const anvil_tensor src = anvil_tensor_2d(be->ops->act_dtype, g[mb.k].n_logits, oop->width,
                                                     rt->buffers[rt->value_buffer[outv]]);
            anvil_tensor dst = logits_rows(rt, oop->width, row0[mb.k], g[mb.k].n_logits);
            TRY(be->ops->scale(be, &src, 1.0f, &dst)); /* x 1 is exact: a copy */
        }
    }
    if (mb.recv_op != NULL)
        TRY(receive_logits(rt, &mb, M));
    if (rt->has_logits && L > 0) {
        const anvil_tensor src = logits_rows(rt, oop->width, 0, L);
        anvil_tensor dst =
            anvil_tensor_2d(be->ops->act_dtype, L, oop->width, rt->buffers[rt->value_buffer[outv]]);
        TRY(be->ops->scale(be, &src, 1.0f, &dst));
    }
    rt->mb_steps++;
    *ran = 1;
    return ANVIL_OK;
}
