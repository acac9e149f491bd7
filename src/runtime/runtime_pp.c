/*
 * Pipeline parallelism in the runtime (docs/parallel.md): the network cut
 * for this rank's stage at load (builder/stage_plan.c), the job's
 * communicator split into the stage's tensor-parallel ranks and the chain
 * of stages, and the send / recv ops run through that chain, not the
 * backend. On a backend in device memory runtime_tp.c replaces both splits
 * by NCCL's (anvil_rt_tp_check_backend), so the chain moves device buffers
 * with ncclSend / ncclRecv.
 *
 * Ranks are stage-major: with T ranks a stage, rank r is TP rank r % T of
 * stage r / T. So rank 0, which leads (runtime_tp.c), runs the embedding
 * and receives the logits; and TP rank t of every stage forms one chain,
 * each stage handing its hidden state to the same TP rank of the next
 * (the TP ranks of a stage hold the same hidden state after its sums).
 */
#include <stdlib.h>

#include "anvil/log.h"
#include "builder/stage_plan.h"
#include "core/error.h"
#include "runtime/runtime_internal.h"

anvil_status anvil_rt_pp_setup(anvil_runtime *rt, int engine, int32_t *tp_rank, int32_t *tp_size)
{
    anvil_comm *comm = rt->opts.comm;
    const int32_t size = anvil_comm_size(comm), rank = anvil_comm_rank(comm);
    const int32_t P = rt->opts.pipeline_stages > 1 ? rt->opts.pipeline_stages : 1;
    rt->tp_comm = comm;
    rt->pp_stages = P;
    rt->pp_stage = 0;
    *tp_rank = rank;
    *tp_size = size;
    CHECK(rt->opts.pipeline_stages >= 0, ANVIL_ERR_INVALID_ARG, "pipeline_stages is %d (0 or more)",
          rt->opts.pipeline_stages);
    if (P == 1)
        return ANVIL_OK;
    CHECK(comm != NULL && size % P == 0, ANVIL_ERR_INVALID_ARG,
          "%d pipeline stages need a communicator whose ranks they divide (it has %d)", P, size);
    CHECK(!engine, ANVIL_ERR_UNSUPPORTED,
          "pipeline parallelism over %d stages loads from a model folder: engine files are one rank's for now "
          "(docs/parallel.md)",
          P);
    const int32_t T = size / P;
    rt->pp_stage = rank / T;
    *tp_rank = rank % T;
    *tp_size = T;
    anvil_network *cut = NULL;
    if (anvil_network_stage(rt->net, rt->pp_stage, P, &cut, &rt->kv_layer0) != ANVIL_OK)
        return anvil_error_wrap("stage %d of %d", rt->pp_stage, P);
    anvil_network_free(rt->net);
    rt->net = cut;
    /* the stage's ranks sum together; the same TP rank of every stage
     * forms a chain, ranked by stage */
    anvil_comm *stage_comm = NULL;
    TRY(anvil_comm_split(comm, rt->pp_stage, rank, &stage_comm));
    rt->tp_comm = stage_comm;
    TRY(anvil_comm_split(comm, *tp_rank, rank, &rt->pp_comm));
    CHECK(anvil_comm_rank(rt->pp_comm) == rt->pp_stage && anvil_comm_size(rt->pp_comm) == P &&
              anvil_comm_size(rt->tp_comm) == T,
          ANVIL_ERR_INTERNAL, "the split communicators have the wrong ranks");
    anvil_log(ANVIL_LOG_INFO, "pipeline parallelism: rank %d of %d is stage %d of %d (TP rank %d of %d, %s)", rank,
              size, rt->pp_stage, P, *tp_rank, T, anvil_comm_name(comm));
    return ANVIL_OK;
}

anvil_status anvil_rt_pp_transfer(anvil_runtime *rt, const anvil_net_op *op, const anvil_tensor *in,
                                  anvil_tensor *out)
{
    CHECK(rt->pp_comm != NULL && op->peer < rt->pp_stages, ANVIL_ERR_INVALID_ARG,
          "a %s op with stage %d, and this runtime has %d pipeline stages", anvil_op_kind_name(op->kind), op->peer,
          rt->pp_stages);
    const size_t bytes = (size_t)out->shape[0] * (size_t)out->shape[1] * anvil_dtype_size(out->dtype);
    /* the comm reads what the backend wrote: every queued op done first */
    TRY(rt->be->ops->synchronize(rt->be));
    if (op->kind == ANVIL_OP_SEND) {
        /* in place: the plan gives the send its input's buffer (runtime_plan.c) */
        CHECK(in != NULL && out->data == in->data, ANVIL_ERR_INTERNAL, "send is not in place");
        return anvil_comm_send(rt->pp_comm, out->data, bytes, op->peer, op->tag);
    }
    return anvil_comm_recv(rt->pp_comm, out->data, bytes, op->peer, op->tag);
}

void anvil_rt_pp_free(anvil_runtime *rt)
{
    /* the splits before the communicator they were split from */
    anvil_comm_free(rt->pp_comm);
    if (rt->tp_comm != rt->opts.comm && rt->tp_comm != rt->dev_comm)
        anvil_comm_free(rt->tp_comm);
    anvil_comm_free(rt->dev_comm);
    rt->pp_comm = NULL;
    rt->tp_comm = NULL;
    rt->dev_comm = NULL;
}
