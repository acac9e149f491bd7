/* The runtime's sizes before anything is allocated (see runtime_plan.h). */
#include "runtime/runtime_plan.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/checked.h"
#include "core/error.h"

const char *anvil_plan_fmt_bytes(size_t bytes, char *buf, size_t cap)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 6) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, cap, "%zu B", bytes);
    else
        snprintf(buf, cap, "%.1f %s", v, units[u]);
    return buf;
}

anvil_status anvil_plan_activations(const anvil_network *net, const anvil_fuse *fuse, int32_t token_rows,
                                    int32_t logit_rows, size_t act_size, int32_t *value_buffer,
                                    size_t *buffer_bytes, int32_t *n_buffers, size_t *total_bytes)
{
    const int32_t n = anvil_network_op_count(net);
    *n_buffers = 0;
    *total_bytes = 0;
    CHECK(token_rows > 0 && logit_rows > 0, ANVIL_ERR_INVALID_ARG,
          "activations: %d token rows, %d logit rows", token_rows, logit_rows);
    const anvil_value output = anvil_network_output(net);
    CHECK(n > 0 && output >= 0 && output < n, ANVIL_ERR_INVALID_ARG,
          "activations: the network has no output");
    anvil_status st = ANVIL_OK;
    int32_t *last_use = malloc((size_t)n * sizeof *last_use);
    int32_t *free_list = malloc((size_t)n * sizeof *free_list);
    unsigned char *aliased = calloc((size_t)n, 1);
    int32_t *dies_first = malloc((size_t)n * sizeof *dies_first); /* values whose last use is op i, a list */
    int32_t *dies_next = malloc((size_t)n * sizeof *dies_next);
    CHECK_GOTO(last_use && free_list && aliased && dies_first && dies_next, ANVIL_ERR_OOM, done,
               "out of memory planning %d activations", n);
    for (int32_t i = 0; i < n; i++)
        last_use[i] = i;
    for (int32_t i = 0; i < n; i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        for (int k = 0; k < 3; k++)
            if (op->inputs[k] != ANVIL_VALUE_NONE)
                last_use[op->inputs[k]] = i;
    }
    last_use[output] = n; /* read after the last op */
    anvil_fuse_extend_lives(net, fuse, last_use);
    for (int32_t i = 0; i < n; i++)
        dies_first[i] = -1;
    for (int32_t v = n - 1; v >= 0; v--) {
        dies_next[v] = -1;
        if (last_use[v] < n) {
            dies_next[v] = dies_first[last_use[v]];
            dies_first[last_use[v]] = v;
        }
    }

    int32_t n_free = 0, n_buf = 0;
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        /* in place: RoPE rotates its input, all_reduce sums into it, send
         * sends it */
        if (op->kind == ANVIL_OP_ROPE || op->kind == ANVIL_OP_ALL_REDUCE || op->kind == ANVIL_OP_SEND) {
            CHECK_GOTO(last_use[op->inputs[0]] == i, ANVIL_ERR_INTERNAL, done,
                       "%s input (op %d) is used after it", anvil_op_kind_name(op->kind), op->inputs[0]);
            value_buffer[i] = value_buffer[op->inputs[0]];
            aliased[op->inputs[0]] = 1;
        } else {
            const int32_t rows = op->row_kind == 0 ? token_rows : logit_rows;
            size_t need;
            CHECK_GOTO(op->width > 0 && anvil_mul_size_ok((size_t)rows, (size_t)op->width, &need) &&
                           anvil_mul_size_ok(need, act_size, &need),
                       ANVIL_ERR_UNSUPPORTED, done,
                       "activations: %d rows of %lld values of %zu bytes overflow a size (op %d, %s)", rows,
                       (long long)op->width, act_size, i, anvil_op_kind_name(op->kind));
            int32_t best = -1;
            for (int32_t f = 0; f < n_free; f++) {
                size_t have = buffer_bytes[free_list[f]];
                if (have >= need && (best < 0 || have < buffer_bytes[free_list[best]]))
                    best = f;
            }
            if (best >= 0) {
                value_buffer[i] = free_list[best];
                free_list[best] = free_list[--n_free];
            } else {
                CHECK_GOTO(anvil_add_size_ok(total, need, &total), ANVIL_ERR_UNSUPPORTED, done,
                           "activations: the buffers' sizes overflow");
                buffer_bytes[n_buf] = need;
                value_buffer[i] = n_buf++;
            }
        }
        /* release the buffers of every value that dies here: not only this
         * op's inputs, since a fused group extends its inputs' lives to the
         * group's last op, which need not read them (the norm before a
         * gate/up+silu group dies at the silu). A rope's input lives on as
         * the rope's output, in the same buffer. */
        for (int32_t v = dies_first[i]; v >= 0; v = dies_next[v]) {
            if (aliased[v])
                continue;
            const int32_t b = value_buffer[v];
            int dup = b == value_buffer[i] && v != i;
            for (int32_t f = 0; f < n_free && !dup; f++)
                dup = free_list[f] == b;
            if (!dup)
                free_list[n_free++] = b;
        }
    }
    *n_buffers = n_buf;
    *total_bytes = total;
done:
    free(last_use);
    free(free_list);
    free(aliased);
    free(dies_first);
    free(dies_next);
    return st;
}

anvil_status anvil_plan_kv_bytes_per_token(int64_t n_layers, int64_t n_kv_heads, int64_t head_dim,
                                           size_t act_size, size_t *out)
{
    *out = 0;
    CHECK(n_layers >= 0 && n_kv_heads > 0 && head_dim > 0, ANVIL_ERR_INVALID_ARG,
          "KV cache: %lld layers of %lld heads of %lld", (long long)n_layers, (long long)n_kv_heads,
          (long long)head_dim);
    size_t b;
    CHECK(anvil_mul_size_ok((size_t)n_layers, 2, &b) && anvil_mul_size_ok(b, (size_t)n_kv_heads, &b) &&
              anvil_mul_size_ok(b, (size_t)head_dim, &b) && anvil_mul_size_ok(b, act_size, &b),
          ANVIL_ERR_UNSUPPORTED,
          "KV cache: %lld layers x 2 x %lld heads x %lld x %zu bytes a token overflow a size",
          (long long)n_layers, (long long)n_kv_heads, (long long)head_dim, act_size);
    *out = b;
    return ANVIL_OK;
}

anvil_status anvil_plan_step_ints(const anvil_runtime_options *o, int32_t max_blocks_per_seq, size_t *out)
{
    /* prepare_step's layout: ids, positions, seq_of, slots [tokens each],
     * starts [batch + 1], lens [batch], tables [batch x blocks], rows [logit rows] */
    size_t a, b;
    *out = 0;
    CHECK(o->max_num_tokens > 0 && o->max_batch_size > 0 && o->max_logit_rows > 0 && max_blocks_per_seq > 0,
          ANVIL_ERR_INVALID_ARG, "step metadata: sizes must be positive");
    CHECK(anvil_mul_size_ok((size_t)o->max_batch_size, (size_t)max_blocks_per_seq, &b) &&
              anvil_add_size_ok(b, 4 * (size_t)o->max_num_tokens, &b) &&
              anvil_add_size_ok(b, 2 * (size_t)o->max_batch_size + 1, &b) &&
              anvil_add_size_ok(b, (size_t)o->max_logit_rows, &b) &&
              anvil_mul_size_ok(b, sizeof(int32_t), &a),
          ANVIL_ERR_UNSUPPORTED, "step metadata: %d sequences x %d KV blocks overflow a size",
          o->max_batch_size, max_blocks_per_seq);
    *out = b;
    return ANVIL_OK;
}
