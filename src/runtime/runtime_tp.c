/*
 * Tensor parallelism in the runtime (docs/parallel.md): the network cut
 * for this rank at load (builder/shard_plan.c), and the collective ops run
 * through the runtime's communicator (anvil_runtime_options.comm), not the
 * backend.
 */
#include <stdlib.h>
#include <string.h>

#include "anvil/log.h"
#include "builder/shard_plan.h"
#include "core/checked.h"
#include "core/error.h"
#include "runtime/runtime_internal.h"

/* The KV heads this rank's attention ops hold (every layer alike). */
static anvil_status local_kv_heads(const anvil_runtime *rt, int64_t *out)
{
    *out = rt->cfg.n_kv_heads;
    for (int32_t i = 0; i < anvil_network_op_count(rt->net); i++) {
        const anvil_net_op *op = anvil_network_op(rt->net, i);
        if (op->kind != ANVIL_OP_ATTENTION)
            continue;
        CHECK(op->attn.head_dim == rt->cfg.head_dim, ANVIL_ERR_UNSUPPORTED,
              "attention layer %d has head_dim %d, the KV cache %lld", op->attn.layer, op->attn.head_dim,
              (long long)rt->cfg.head_dim);
        *out = op->attn.n_kv_heads;
    }
    return ANVIL_OK;
}

anvil_status anvil_rt_tp_setup(anvil_runtime *rt, int engine)
{
    const anvil_comm *comm = rt->opts.comm;
    const int32_t size = anvil_comm_size(comm), rank = anvil_comm_rank(comm);
    if (size > 1) {
        CHECK(!engine, ANVIL_ERR_UNSUPPORTED,
              "tensor parallelism over %d ranks loads from a model folder: engine files are one rank's for now "
              "(docs/parallel.md)",
              size);
        anvil_network *cut = NULL;
        if (anvil_network_shard(rt->net, rank, size, &cut) != ANVIL_OK)
            return anvil_error_wrap("rank %d of %d", rank, size);
        anvil_network_free(rt->net);
        rt->net = cut;
        anvil_log(ANVIL_LOG_INFO, "tensor parallelism: rank %d of %d (%s)", rank, size, anvil_comm_name(comm));
    }
    return local_kv_heads(rt, &rt->n_kv_heads);
}

anvil_status anvil_rt_tp_check_backend(const anvil_runtime *rt)
{
    const anvil_comm *comm = rt->opts.comm;
    if (anvil_comm_size(comm) == 1)
        return ANVIL_OK;
    CHECK(anvil_comm_memory_kind(comm) != ANVIL_COMM_HOST || rt->be->ops->weights_in_host_memory,
          ANVIL_ERR_UNSUPPORTED,
          "the %s communicator moves host memory, and the %s backend computes in device memory (NCCL is next: "
          "docs/parallel.md)",
          anvil_comm_name(comm), rt->be->ops->name);
    return ANVIL_OK;
}

/* Room for one all_gather's rank-ordered parts, the largest the steps can
 * ask for, made on the first gather. */
static anvil_status gather_stage(anvil_runtime *rt, size_t bytes)
{
    if (rt->tp_stage != NULL)
        return ANVIL_OK;
    size_t most = 0;
    const size_t act = anvil_dtype_size(rt->be->ops->act_dtype);
    for (int32_t i = 0; i < rt->n_ops; i++) {
        const anvil_net_op *op = anvil_network_op(rt->net, i);
        size_t b;
        const int32_t rows = op->row_kind == 0 ? rt->opts.max_num_tokens : rt->opts.max_logit_rows;
        if (op->kind == ANVIL_OP_ALL_GATHER && anvil_mul_size_ok((size_t)rows, (size_t)op->width, &b) &&
            anvil_mul_size_ok(b, act, &b) && b > most)
            most = b;
    }
    CHECK(bytes <= most, ANVIL_ERR_INTERNAL, "all_gather of %zu bytes past the planned %zu", bytes, most);
    rt->tp_stage = malloc(most ? most : 1);
    CHECK(rt->tp_stage != NULL, ANVIL_ERR_OOM, "out of memory for the all_gather buffer (%zu bytes)", most);
    return ANVIL_OK;
}

anvil_status anvil_rt_tp_collective(anvil_runtime *rt, const anvil_net_op *op, const anvil_tensor *in,
                                    anvil_tensor *out)
{
    anvil_comm *comm = rt->opts.comm;
    const anvil_dtype dt = rt->be->ops->act_dtype;
    const size_t es = anvil_dtype_size(dt);
    const int64_t rows = out->shape[0];
    /* the comm reads what the backend wrote: every queued op done first */
    TRY(rt->be->ops->synchronize(rt->be));
    if (op->kind == ANVIL_OP_ALL_REDUCE) {
        /* in place: the plan gives the sum its input's buffer (runtime_plan.c) */
        CHECK(out->data == in->data, ANVIL_ERR_INTERNAL, "all_reduce is not in place");
        return anvil_comm_all_reduce_sum(comm, out->data, rows * out->shape[1], dt);
    }
    const int32_t n = (int32_t)op->head_dim;
    CHECK(n == anvil_comm_size(comm), ANVIL_ERR_INVALID_ARG,
          "the network gathers over %d ranks; the communicator has %d", n, anvil_comm_size(comm));
    const size_t part = (size_t)rows * (size_t)in->shape[1] * es;
    TRY(gather_stage(rt, part * (size_t)n));
    TRY(anvil_comm_all_gather(comm, in->data, rt->tp_stage, part));
    /* [rank][row][cols] -> [row][rank x cols] */
    const size_t cols = (size_t)in->shape[1] * es;
    for (int64_t r = 0; r < rows; r++)
        for (int32_t k = 0; k < n; k++)
            memcpy((unsigned char *)out->data + ((size_t)r * (size_t)n + (size_t)k) * cols,
                   (const unsigned char *)rt->tp_stage + (size_t)k * part + (size_t)r * cols, cols);
    return ANVIL_OK;
}
