/*
 * Tensor parallelism in the runtime (docs/parallel.md): the network cut
 * for this rank at load (builder/shard_plan.c), and the collective ops run
 * through the runtime's communicator (anvil_runtime_options.comm, or with
 * pipeline stages the stage's part of it: runtime_pp.c), not the backend;
 * rank 0 leading the others over the whole communicator.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "anvil/builder.h"
#include "anvil/log.h"
#include "builder/shard_plan.h"
#include "io/engine_file.h"
#include "comm/comm_internal.h"
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

anvil_status anvil_rt_tp_rank_engine(const char *model_dir, const anvil_comm *comm, char *buf, size_t cap)
{
    buf[0] = '\0';
    struct stat sb;
    char first[4096];
    TRY(anvil_engine_rank_path(model_dir, 0, first, sizeof first));
    if (stat(model_dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || stat(first, &sb) != 0)
        return ANVIL_OK; /* a model folder or one engine file */
    TRY(anvil_engine_rank_path(model_dir, anvil_comm_rank(comm), buf, cap));
    CHECK(stat(buf, &sb) == 0, ANVIL_ERR_NOT_FOUND,
          "%s holds per-rank engines but no rank%d.engine: it was built for fewer ranks than this job's %d "
          "(anvil build --tp N)",
          model_dir, anvil_comm_rank(comm), anvil_comm_size(comm));
    return ANVIL_OK;
}

/* How an engine was cut (its manifest's build.tp; one rank when absent). */
static void engine_tp(const anvil_runtime *rt, int32_t *size, int32_t *rank, int *cut_embedding)
{
    const json_t *tp = json_object_get(json_object_get(anvil_engine_file_manifest(rt->engine), "build"), "tp");
    *size = tp ? (int32_t)json_integer_value(json_object_get(tp, "size")) : 1;
    *rank = tp ? (int32_t)json_integer_value(json_object_get(tp, "rank")) : 0;
    *cut_embedding = tp ? json_is_true(json_object_get(tp, "cut_embedding")) : 0;
}

anvil_status anvil_rt_tp_setup(anvil_runtime *rt, int engine)
{
    anvil_comm *comm = rt->opts.comm;
    int32_t rank, size; /* this rank's place among its stage's TP ranks */
    TRY(anvil_rt_pp_setup(rt, engine, &rank, &size));
    /* the embedding is cut by vocabulary (both backends have the slice's
     * lookup, embedding_part; the runtime refuses a step on one without
     * it); an engine is cut as its build cut it */
    int cut_embedding = 1;
    if (engine) {
        int32_t esize, erank;
        engine_tp(rt, &esize, &erank, &cut_embedding);
        CHECK(esize == size || esize == 1, ANVIL_ERR_UNSUPPORTED,
              "this engine is rank %d of a --tp %d build: run its folder with --tp %d under mpirun -np %d (this "
              "job has %d tensor-parallel rank%s)",
              erank, esize, esize, esize, size, size == 1 ? "" : "s");
        CHECK(esize == size, ANVIL_ERR_UNSUPPORTED,
              "this engine holds the whole model for one rank: --tp %d needs an engine per rank (anvil build "
              "--tp %d --output FOLDER) or a model folder",
              size, size);
        CHECK(erank == rank, ANVIL_ERR_INVALID_ARG, "rank %d of %d loaded rank %d's engine", rank, size, erank);
    }
    if (size > 1) {
        anvil_network *cut = NULL;
        if (anvil_network_shard_ex(rt->net, rank, size, cut_embedding, &cut) != ANVIL_OK)
            return anvil_error_wrap("rank %d of %d", rank, size);
        anvil_network_free(rt->net);
        rt->net = cut;
        anvil_log(ANVIL_LOG_INFO, "tensor parallelism: rank %d of %d (%s)", rank, size, anvil_comm_name(comm));
    }
    if (rt->opts.comm_lead && anvil_comm_size(comm) > 1 && anvil_comm_rank(comm) == 0) {
        /* a new lead: the followers meet it, and are released once */
        comm->lead_met = 0;
        comm->lead_ended = 0;
    }
    const anvil_net_op *out = anvil_network_op(rt->net, anvil_network_output(rt->net));
    rt->has_logits = out != NULL && out->row_kind == 1;
    return local_kv_heads(rt, &rt->n_kv_heads);
}

/* Room for one all_gather's rank-ordered parts, the largest the steps can
 * ask for (none without gathers), made at load: a step allocates nothing. */
static anvil_status gather_stage(anvil_runtime *rt)
{
    size_t most = 0;
    const size_t act = anvil_dtype_size(rt->be->ops->act_dtype);
    for (int32_t i = 0; i < anvil_network_op_count(rt->net); i++) {
        const anvil_net_op *op = anvil_network_op(rt->net, i);
        size_t b;
        const int32_t rows = op->row_kind == 0 ? rt->opts.max_num_tokens : rt->opts.max_logit_rows;
        if (op->kind != ANVIL_OP_ALL_GATHER)
            continue;
        CHECK(anvil_mul_size_ok((size_t)rows, (size_t)op->width, &b) && anvil_mul_size_ok(b, act, &b),
              ANVIL_ERR_UNSUPPORTED, "all_gather of %d rows of %lld values overflows a size", rows,
              (long long)op->width);
        if (b > most)
            most = b;
    }
    if (most == 0)
        return ANVIL_OK;
    rt->tp_stage_bytes = most;
    if (anvil_comm_memory_kind(rt->tp_comm) == ANVIL_COMM_DEVICE) { /* NCCL gathers into device memory */
        rt->tp_stage_dev = 1;
        return rt->be->ops->alloc(rt->be, most, &rt->tp_stage);
    }
    rt->tp_stage = malloc(most);
    CHECK(rt->tp_stage != NULL, ANVIL_ERR_OOM, "out of memory for the all_gather buffer (%zu bytes)", most);
    return ANVIL_OK;
}

/* The CUDA device of a device name ("cuda": 0, "cuda:N": N). */
static int device_index(const char *device)
{
    return device != NULL && strncmp(device, "cuda:", 5) == 0 ? atoi(device + 5) : 0;
}

/* The largest all_reduce the steps can ask for (bytes). */
static size_t largest_sum(const anvil_runtime *rt)
{
    size_t most = 0;
    const size_t act = anvil_dtype_size(rt->be->ops->act_dtype);
    for (int32_t i = 0; i < anvil_network_op_count(rt->net); i++) {
        const anvil_net_op *op = anvil_network_op(rt->net, i);
        const int32_t rows = op->row_kind == 0 ? rt->opts.max_num_tokens : rt->opts.max_logit_rows;
        size_t b;
        if (op->kind == ANVIL_OP_ALL_REDUCE && anvil_mul_size_ok((size_t)rows, (size_t)op->width, &b) &&
            anvil_mul_size_ok(b, act, &b) && b > most)
            most = b;
    }
    return most;
}

/* The one-shot / two-shot sums' IPC buffers hold at most this much a rank:
 * past a few MiB NCCL's ring is as fast, and a rank's memory is the model's */
#define RT_IPC_MAX_BYTES ((size_t)8 << 20)

/* A backend in device memory over a host communicator (MPI): NCCL over the
 * whole job (rt->dev_comm, which also carries the led steps' metadata),
 * and with pipeline stages its two splits in place of the host ones
 * (runtime_pp.c made those before the backend was known). */
static anvil_status open_nccl(anvil_runtime *rt)
{
    const char *dev = rt->opts.device ? rt->opts.device : "cuda";
    if (anvil_comm_create_nccl(rt->opts.comm, device_index(rt->opts.device), &rt->dev_comm) != ANVIL_OK)
        return anvil_error_wrap("%s on %s", rt->pp_comm ? "pipeline stages" : "tensor parallelism", dev);
    if (rt->pp_comm == NULL) {
        rt->tp_comm = rt->dev_comm;
        anvil_log(ANVIL_LOG_INFO, "tensor parallelism: rank %d of %d sums through NCCL on %s",
                  anvil_comm_rank(rt->dev_comm), anvil_comm_size(rt->dev_comm), dev);
        return ANVIL_OK;
    }
    /* the same colors and keys as anvil_rt_pp_setup: the stage's TP ranks,
     * and TP rank t's chain of stages */
    const int32_t rank = anvil_comm_rank(rt->opts.comm);
    const int32_t T = anvil_comm_size(rt->opts.comm) / rt->pp_stages, tp_rank = rank % T;
    anvil_comm *stage = NULL, *chain = NULL;
    anvil_status st = anvil_comm_split(rt->dev_comm, rt->pp_stage, rank, &stage);
    if (st == ANVIL_OK)
        st = anvil_comm_split(rt->dev_comm, tp_rank, rank, &chain);
    if (st != ANVIL_OK) {
        anvil_comm_free(stage);
        return anvil_error_wrap("pipeline stages on %s: splitting the NCCL communicator", dev);
    }
    if (anvil_comm_rank(chain) != rt->pp_stage || anvil_comm_size(chain) != rt->pp_stages ||
        anvil_comm_size(stage) != T) {
        anvil_comm_free(chain);
        anvil_comm_free(stage);
        return ANVIL_FAIL(ANVIL_ERR_INTERNAL, "the NCCL splits have the wrong ranks");
    }
    anvil_comm_free(rt->pp_comm);
    if (rt->tp_comm != rt->opts.comm)
        anvil_comm_free(rt->tp_comm);
    rt->tp_comm = stage;
    rt->pp_comm = chain;
    anvil_log(ANVIL_LOG_INFO, "pipeline parallelism: stage %d of %d on %s: hidden states through ncclSend/ncclRecv",
              rt->pp_stage, rt->pp_stages, dev);
    return ANVIL_OK;
}

anvil_status anvil_rt_tp_check_backend(anvil_runtime *rt)
{
    const anvil_comm *comm = rt->opts.comm;
    if (anvil_comm_size(comm) == 1)
        return ANVIL_OK;
    anvil_all_reduce_algo algo;
    TRY(anvil_all_reduce_algo_parse(rt->opts.all_reduce, &algo));
    if (anvil_comm_memory_kind(comm) == ANVIL_COMM_HOST && !rt->be->ops->weights_in_host_memory)
        TRY(open_nccl(rt));
    CHECK(anvil_comm_memory_kind(rt->tp_comm) != ANVIL_COMM_HOST || rt->be->ops->weights_in_host_memory,
          ANVIL_ERR_UNSUPPORTED, "the %s communicator moves host memory, and the %s backend computes in device memory",
          anvil_comm_name(rt->tp_comm), rt->be->ops->name);
    if (anvil_comm_size(rt->tp_comm) > 1 && anvil_comm_memory_kind(rt->tp_comm) == ANVIL_COMM_DEVICE) {
        /* every rank of the stage: the same network, so the same size */
        const size_t most = largest_sum(rt);
        TRY(anvil_comm_set_all_reduce(rt->tp_comm, algo, most < RT_IPC_MAX_BYTES ? most : RT_IPC_MAX_BYTES));
    }
    return gather_stage(rt);
}

/* The led steps' metadata (in the backend's memory) goes through the
 * communicator of that memory; headers and host arrays through opts.comm. */
static anvil_comm *meta_comm(const anvil_runtime *rt)
{
    return rt->dev_comm != NULL ? rt->dev_comm : rt->opts.comm;
}

anvil_status anvil_rt_tp_collective(anvil_runtime *rt, const anvil_net_op *op, const anvil_tensor *in,
                                    anvil_tensor *out)
{
    anvil_comm *comm = rt->tp_comm; /* the stage's ranks */
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
    CHECK(part * (size_t)n <= rt->tp_stage_bytes, ANVIL_ERR_INTERNAL, "all_gather of %zu bytes past the planned %zu",
          part * (size_t)n, rt->tp_stage_bytes);
    /* [rank][row][cols] through the stage -> [row][rank x cols] */
    return anvil_comm_all_gather_cols(comm, in->data, out->data, rt->tp_stage, rows, (size_t)in->shape[1] * es);
}

/* ------------------------------------------------------------ rank 0 leads (options.comm_lead) */

/* What rank 0 sends its followers: a header, broadcast, then its arrays. */
enum { TP_MSG_STEP = 1, TP_MSG_KV_COPY = 2, TP_MSG_END = 3 };

#define TP_STEP_ARRAYS 8

typedef struct tp_msg {
    int32_t kind;
    /* STEP: the step's counts, and where its arrays lie in the step
     * metadata (ints from its start; the layout is rank 0's) */
    int32_t n_tokens, n_seqs, n_logits, max_blocks_per_seq, max_context, n_decode, decode_max_context;
    int64_t ints;                 /* STEP: metadata ints; KV_COPY: block pairs */
    int64_t off[TP_STEP_ARRAYS];  /* STEP */
    int32_t copy_tokens;          /* KV_COPY: tokens per block copied */
} tp_msg;

static int leads(const anvil_runtime *rt)
{
    return rt->opts.comm_lead && anvil_comm_size(rt->opts.comm) > 1 && anvil_comm_rank(rt->opts.comm) == 0 &&
           !rt->tp_ended;
}

/* Rank 0's first message and a follower's first wait are preceded by a
 * barrier without a deadline: the ranks load at their own pace (a large
 * model, a slow disk), and only once all are loaded do the steps'
 * collectives run under the communicator's timeout, which then bounds
 * compute between two collectives, not a load. */
static anvil_status meet(anvil_comm *comm)
{
    const double timeout_s = anvil_comm_timeout(comm);
    TRY(anvil_comm_set_timeout(comm, 0));
    const anvil_status st = anvil_comm_barrier(comm);
    TRY(anvil_comm_set_timeout(comm, timeout_s));
    if (st != ANVIL_OK)
        return anvil_error_wrap("rank %d waiting for every rank to load", anvil_comm_rank(comm));
    return ANVIL_OK;
}

static anvil_status lead_meet(anvil_comm *comm)
{
    if (comm->lead_met)
        return ANVIL_OK;
    comm->lead_met = 1;
    return meet(comm);
}

/* The step's arrays in a fixed order, and their lengths. */
static void step_arrays(const anvil_step *s, const int32_t *a[TP_STEP_ARRAYS], int64_t n[TP_STEP_ARRAYS])
{
    const int64_t T = s->n_tokens, S = s->n_seqs;
    a[0] = s->token_ids, n[0] = T;
    a[1] = s->positions, n[1] = T;
    a[2] = s->seq_of_token, n[2] = T;
    a[3] = s->seq_starts, n[3] = S + 1;
    a[4] = s->seq_lens, n[4] = S;
    a[5] = s->block_tables, n[5] = S * s->max_blocks_per_seq;
    a[6] = s->slots, n[6] = T;
    a[7] = s->logit_rows, n[7] = s->n_logits;
}

anvil_status anvil_rt_tp_lead_step(anvil_runtime *rt, const anvil_step *s)
{
    if (!leads(rt))
        return ANVIL_OK;
    anvil_comm *comm = rt->opts.comm;
    CHECK(!comm->lead_ended, ANVIL_ERR_INVALID_ARG,
          "rank 0 released the other ranks already: a led communicator serves one runtime's steps");
    tp_msg m = {.kind = TP_MSG_STEP, .n_tokens = s->n_tokens, .n_seqs = s->n_seqs, .n_logits = s->n_logits,
                .max_blocks_per_seq = s->max_blocks_per_seq, .max_context = s->max_context,
                .n_decode = s->n_decode, .decode_max_context = s->decode_max_context};
    const int32_t *a[TP_STEP_ARRAYS];
    int64_t n[TP_STEP_ARRAYS];
    step_arrays(s, a, n);
    TRY(lead_meet(rt->opts.comm));
    const int32_t *base = rt->meta_dev;
    for (int k = 0; k < TP_STEP_ARRAYS; k++) {
        m.off[k] = a[k] - base;
        if (m.off[k] + n[k] > m.ints)
            m.ints = m.off[k] + n[k];
    }
    /* the ids as the backend holds them: placeholders resolved */
    TRY(rt->be->ops->synchronize(rt->be));
    TRY(anvil_comm_broadcast(comm, &m, sizeof m, 0));
    return anvil_comm_broadcast(meta_comm(rt), rt->meta_dev, (size_t)m.ints * sizeof(int32_t), 0);
}

anvil_status anvil_rt_tp_lead_kv_copy(anvil_runtime *rt, int32_t n, const int32_t *src, const int32_t *dst,
                                      int32_t n_tokens)
{
    if (!leads(rt) || n == 0 || n_tokens == 0)
        return ANVIL_OK;
    anvil_comm *comm = rt->opts.comm;
    tp_msg m = {.kind = TP_MSG_KV_COPY, .ints = n, .copy_tokens = n_tokens};
    TRY(lead_meet(rt->opts.comm));
    TRY(anvil_comm_broadcast(comm, &m, sizeof m, 0));
    TRY(anvil_comm_broadcast(comm, (void *)src, (size_t)n * sizeof *src, 0));
    return anvil_comm_broadcast(comm, (void *)dst, (size_t)n * sizeof *dst, 0);
}

/* Releases the followers, once per communicator (after the meeting). */
static anvil_status send_end(anvil_comm *comm)
{
    if (comm->lead_ended)
        return ANVIL_OK;
    comm->lead_ended = 1;
    TRY(lead_meet(comm));
    tp_msg m = {.kind = TP_MSG_END};
    return anvil_comm_broadcast(comm, &m, sizeof m, 0);
}

anvil_status anvil_runtime_lead_end(anvil_comm *comm)
{
    CHECK(comm != NULL && anvil_comm_rank(comm) == 0, ANVIL_ERR_INVALID_ARG,
          "anvil_runtime_lead_end: only rank 0 leads");
    if (anvil_comm_size(comm) == 1)
        return ANVIL_OK;
    return send_end(comm);
}

void anvil_rt_tp_release(anvil_runtime *rt)
{
    if (!leads(rt))
        return;
    rt->tp_ended = 1;
    if (send_end(rt->opts.comm) != ANVIL_OK)
        anvil_log(ANVIL_LOG_WARN, "releasing the other ranks: %s", anvil_last_error());
}

/* A step from rank 0: its counts checked against this runtime's limits
 * (the ranks were loaded with the same options), its metadata received
 * into the backend's step buffer, then run. */
static anvil_status follow_step(anvil_runtime *rt, const tp_msg *m)
{
    const anvil_runtime_options *o = &rt->opts;
    CHECK(m->n_tokens > 0 && m->n_tokens <= o->max_num_tokens && m->n_seqs > 0 && m->n_seqs <= o->max_batch_size &&
              m->n_logits >= 0 && m->n_logits <= o->max_logit_rows && m->max_blocks_per_seq > 0 &&
              m->max_blocks_per_seq <= rt->max_blocks_per_seq && m->ints > 0 && (size_t)m->ints <= rt->meta_ints,
          ANVIL_ERR_COMM,
          "rank 0 sent a step of %d tokens, %d sequences, %d logit rows, %d blocks a sequence, %lld ints: this "
          "rank's limits differ (load every rank with the same options)",
          m->n_tokens, m->n_seqs, m->n_logits, m->max_blocks_per_seq, (long long)m->ints);
    TRY(anvil_comm_broadcast(meta_comm(rt), rt->meta_dev, (size_t)m->ints * sizeof(int32_t), 0));
    const int32_t *base = rt->meta_dev;
    anvil_step s = {.n_tokens = m->n_tokens, .n_seqs = m->n_seqs, .n_logits = m->n_logits,
                    .max_blocks_per_seq = m->max_blocks_per_seq, .block_size = o->kv_block_size,
                    .max_context = m->max_context, .n_decode = m->n_decode,
                    .decode_max_context = m->decode_max_context};
    const int32_t *a[TP_STEP_ARRAYS];
    int64_t n[TP_STEP_ARRAYS];
    step_arrays(&s, a, n); /* the lengths */
    const int32_t **dst[TP_STEP_ARRAYS] = {&s.token_ids, &s.positions, &s.seq_of_token, &s.seq_starts,
                                           &s.seq_lens,  &s.block_tables, &s.slots,    &s.logit_rows};
    for (int k = 0; k < TP_STEP_ARRAYS; k++) {
        CHECK(m->off[k] >= 0 && m->off[k] + n[k] <= m->ints, ANVIL_ERR_COMM,
              "rank 0 sent a step whose array %d lies outside its metadata", k);
        *dst[k] = base + m->off[k];
    }
    TRY(anvil_rt_run_step(rt, &s, NULL));
    return rt->be->ops->synchronize(rt->be);
}

/* Block copies from rank 0: this rank allocates no blocks of its own (rank
 * 0's ids name its blocks), so the pairs are marked in use for the copy. */
static anvil_status follow_kv_copy(anvil_runtime *rt, const tp_msg *m)
{
    CHECK(m->ints > 0 && m->ints <= rt->n_blocks, ANVIL_ERR_COMM, "rank 0 sent a copy of %lld blocks",
          (long long)m->ints);
    const int32_t n = (int32_t)m->ints;
    int32_t *pairs = malloc((size_t)n * 2 * sizeof *pairs);
    CHECK(pairs != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = anvil_comm_broadcast(rt->opts.comm, pairs, (size_t)n * sizeof *pairs, 0);
    if (st == ANVIL_OK)
        st = anvil_comm_broadcast(rt->opts.comm, pairs + n, (size_t)n * sizeof *pairs, 0);
    for (int32_t i = 0; st == ANVIL_OK && i < 2 * n; i++)
        if (pairs[i] < 0 || pairs[i] >= rt->n_blocks)
            st = ANVIL_FAIL(ANVIL_ERR_COMM, "rank 0 sent block id %d (%d blocks)", pairs[i], rt->n_blocks);
    if (st == ANVIL_OK) {
        for (int32_t i = 0; i < 2 * n; i++)
            rt->block_used[pairs[i]] = 1;
        st = anvil_runtime_kv_copy(rt, n, pairs, pairs + n, m->copy_tokens);
        for (int32_t i = 0; i < 2 * n; i++)
            rt->block_used[pairs[i]] = 0;
    }
    free(pairs);
    return st;
}

anvil_status anvil_runtime_follow(anvil_runtime *rt)
{
    CHECK(rt != NULL, ANVIL_ERR_INVALID_ARG, "anvil_runtime_follow: NULL runtime");
    anvil_comm *comm = rt->opts.comm;
    CHECK(rt->opts.comm_lead && anvil_comm_size(comm) > 1 && anvil_comm_rank(comm) != 0, ANVIL_ERR_INVALID_ARG,
          "anvil_runtime_follow: for ranks 1.. of a communicator led by rank 0 (options.comm_lead)");
    const double timeout_s = anvil_comm_timeout(comm);
    TRY(meet(comm));
    for (;;) {
        tp_msg m;
        /* the next step may be hours away (an idle server): this wait has
         * no deadline; what follows a header comes at once, under the
         * communicator's timeout. A rank 0 that dies ends the job (mpirun). */
        TRY(anvil_comm_set_timeout(comm, 0));
        const anvil_status st = anvil_comm_broadcast(comm, &m, sizeof m, 0);
        TRY(anvil_comm_set_timeout(comm, timeout_s));
        if (st != ANVIL_OK)
            return anvil_error_wrap("rank %d waiting for rank 0's next step", anvil_comm_rank(comm));
        switch (m.kind) {
        case TP_MSG_END:
            return ANVIL_OK;
        case TP_MSG_STEP:
            if (follow_step(rt, &m) != ANVIL_OK)
                return anvil_error_wrap("rank %d following a step", anvil_comm_rank(comm));
            break;
        case TP_MSG_KV_COPY:
            if (follow_kv_copy(rt, &m) != ANVIL_OK)
                return anvil_error_wrap("rank %d following a KV copy", anvil_comm_rank(comm));
            break;
        default:
            return ANVIL_FAIL(ANVIL_ERR_COMM, "rank 0 sent message kind %d", m.kind);
        }
    }
}
