/*
 * anvil/runtime.h: a model loaded onto a backend, and one forward step over
 * a packed batch with a paged KV cache.
 *
 *     anvil_runtime_options opts;
 *     anvil_runtime_options_default(&opts);
 *     anvil_runtime *rt;
 *     if (anvil_runtime_load("models/stories260K", &opts, &rt) != ANVIL_OK)
 *         fprintf(stderr, "%s\n", anvil_last_error());
 *
 * A step takes the tokens of several sequences in one flat list (no
 * padding): sequence s owns rows [seq_starts[s], seq_starts[s+1]), each row
 * has its position, and each sequence a table of KV blocks (block i holds
 * positions [i * block_size, (i + 1) * block_size)). A row at position p
 * attends to positions 0..p of its sequence: the positions before the step's
 * first row must already be in the cache from earlier steps. Logits come
 * back only for the rows listed in logit_rows.
 *
 * Thread safety: one thread at a time per runtime (the executor owns it),
 * except anvil_runtime_refit_prepare (below).
 */
#ifndef ANVIL_RUNTIME_H
#define ANVIL_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/builder.h" /* anvil_refit_options */
#include "anvil/comm.h"
#include "anvil/dtype.h"
#include "anvil/model_config.h"
#include "anvil/sampling.h"
#include "anvil/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct anvil_runtime anvil_runtime;

typedef struct anvil_runtime_options {
    const char *device;         /* "cpu" (default), "cuda", "cuda:N" */
    int n_threads;              /* CPU threads; 0: one per online CPU */
    int32_t max_num_tokens;     /* rows per step (activations are sized for it); default 512 */
    int32_t max_batch_size;     /* sequences per step; default 64 */
    int32_t max_logit_rows;     /* rows that may ask for logits in one step; default max_batch_size */
    int32_t max_seq_len;        /* positions per sequence; 0: the model's max_position_embeddings */
    int32_t kv_block_size;      /* tokens per KV block; default 32 */
    int64_t kv_cache_tokens;    /* KV pool size in tokens; 0: max_seq_len (unless kv_cache_fraction) */
    double kv_cache_fraction;   /* (0, 1]: size the KV pool to this fraction of the backend's memory
                                   left after weights and activations (with kv_cache_tokens too: the
                                   smaller of the two); 0: off */
    /* Weights converted to this on load; bf16/f16 also set the activations'
     * and KV cache's dtype, f32 makes them f32. ANVIL_DTYPE_COUNT (default):
     * weights as stored, and the compute dtype "auto": a bf16/f16
     * checkpoint (config.json's torch_dtype) computes in that dtype on
     * cuda, everything else in f32. */
    anvil_dtype weight_dtype;
    /* The KV cache's element type: "f32", "bf16", "f16", "fp8" (also
     * "fp8_e4m3": fp8 e4m3 with a scale per layer, docs/quantization.md),
     * or NULL / "auto" (default): on the CPU f16 for a model that computes
     * in bf16/f16 (config.json's torch_dtype or weight_dtype), else f32; on
     * cuda the compute dtype (docs/cpu-backend.md). A string so that new
     * types can join without an ABI change. */
    const char *kv_cache_dtype;
    int no_fusion;              /* 1: run every op of the network by itself, never the backend's fused ops
                                   (the reference the fused path is compared with); default 0 */
    /* 0 (default): weights are read into the backend's memory with pread,
     * so a checkpoint changed or truncated after the load cannot touch the
     * runtime, and one changed during it fails the load with a message.
     * 1: the checkpoint is mapped, and CPU weights are used in place from
     * the page cache (shared between processes, no copy); a file truncated
     * while mapped then kills the process with SIGBUS at the next access. */
    int use_mmap;
    int no_weight_check;        /* 1: skip the load's scan of every weight for NaN and infinity */
    /* Comparisons and diagnosis (the anvil command sets them from ANVIL_*
     * environment variables, docs/cli.md; the library reads no environment).
     * Zero is the default everywhere. */
    const char *cpu_isa;        /* CPU: "scalar", "avx2" or "avx512" instead of the best path this CPU runs */
    int no_cuda_graphs;         /* CUDA: never record or replay step graphs */
    int no_pdl;                 /* CUDA: never launch with programmatic dependent launch (sm_90+) */
    int pdl;                    /* CUDA: no effect any more: dependent launch is on on sm_90+ unless
                                   no_pdl (it was off by default outside exclusive-process compute
                                   mode for a while, then fixed: docs/cuda-backend.md) */
    const char *cuda_module;    /* CUDA: the path of the CUDA backend, libanvil-cuda.so; NULL: the one in
                                   libanvil's folder, else the dynamic loader's search path */
    int host_sampling;          /* 1: logits always come back to the host to be sampled there, even on a
                                   backend with a sample op (anvil_runtime_forward_sample) */
    int norm_gemv;              /* 1: the residual add + RMSNorm before a layer's matmuls joins them
                                   (backend.h's add_rmsnorm_matmul_*: on CUDA the GEMV blocks of a decode
                                   step normalise in their prologue). Off by default: slower on an H100
                                   (docs/performance.md). Groups whose matmuls are all fp8 W8A8 are joined
                                   either way (the norm makes their fp8 activations: docs/cuda-backend.md) */
    int attn_combine_in_kernel; /* CUDA: 1: split-K decode attention merges its splits inside the decode
                                   kernel, not in a combine kernel. Off by default: slower on an H100 */
    int cuda_matmul_quant;      /* CUDA: quantized matmuls' kernel choice, the backend knob of that name
                                   (cuda_backend.h; e.g. 7: the streaming GEMV wherever it applies);
                                   0: automatic */
    int cuda_rows_warps;        /* CUDA: the row GEMVs' warps a block (4, 8 or 16; the backend knob
                                   rows_warps, for A/B runs); 0: theirs */
    int cuda_moe_loop;          /* CUDA: the mixture-of-experts op's kernel choice, the backend knob moe_loop
                                   (cuda_backend.h; 1: the loop of matmuls over each expert's rows, also for
                                   quantized experts at <= 8 tokens); 0: automatic */
    int cuda_fp8_unshared;      /* CUDA: 1: each fp8 W8A8 matmul on the FP8 GEMM quantizes its input itself,
                                   none shares the norm's codes (session 27's path, the same bits: the knob
                                   fp8_act_share = 2), for A/B timings; 0 (default): shared */
    /* Called during the load as weights arrive (bytes prepared of the
     * weights' bytes in all), every few milliseconds and once at the end
     * with every byte, from the thread that called anvil_runtime_load (the
     * load itself runs on several threads). A nonzero return stops the
     * load: anvil_runtime_load then fails with ANVIL_ERR_CANCELLED and
     * frees what it made. NULL: none. */
    int (*progress)(void *user, size_t bytes_done, size_t bytes_total);
    void *progress_user;
    /* Tensor parallelism (docs/parallel.md): this process is rank
     * anvil_comm_rank of anvil_comm_size, which hold the model's shards and
     * run the same steps (the forward calls in the same order on every
     * rank, with the same batches); the weights are cut for this rank at
     * load (a model folder; engines are one rank's for now). Borrowed: it
     * must outlive the runtime. NULL (default): one rank. */
    anvil_comm *comm;
    /* With comm: 0 (default): every rank calls the same steps itself
     * (lockstep). 1: rank 0 alone calls them (an executor, anvil run) and
     * sends each step, with its KV block copies, to the other ranks, which
     * run them inside anvil_runtime_follow. */
    int comm_lead;
    /* With comm: its ranks form this many pipeline stages (docs/parallel.md)
     * of size / pipeline_stages tensor-parallel ranks each, stage-major:
     * rank r is TP rank r % T of stage r / T (T = size / stages), so rank 0
     * runs the embedding and receives the logits. Each stage holds its
     * layers' weights and KV cache; the last stage sends the logits to the
     * first stage, whose ranks (and the last stage's) return them (forward,
     * the sampled and greedy ids: a stage between leaves those as they
     * are). The load splits comm (anvil_comm_split, under its timeout) into
     * the stage's ranks and the chain of stages, kept by the runtime. 0 or
     * 1 (default): one stage. */
    int32_t pipeline_stages;
    /* With pipeline_stages > 1: each step's sequences run as this many
     * micro-batches (whole sequences each, about as many tokens each), so
     * stage s computes micro-batch k while stage s + 1 computes k - 1
     * (docs/parallel.md). 0 (default): as many as stages; 1: the step
     * whole; never more than the step's sequences. Every rank of a job
     * must give the same value. The logits are the unsplit step's. */
    int32_t pp_micro_batches;
    /* With comm on a device backend (NCCL): how the tensor-parallel sums
     * run: "auto" (NULL, default: by size, the measured table), "nccl",
     * "oneshot" or "twoshot" (over CUDA IPC peer buffers, for sums up to
     * 8 MiB; NCCL above). The anvil command sets it from ANVIL_ALLREDUCE.
     * Every rank of a job must give the same value (docs/parallel.md). */
    const char *all_reduce;
    /* Random weights, no checkpoint (benchmarks at a real shape with no
     * file to hold the weights): 1: model_dir names a config alone (a
     * config.json of any name, or a folder holding one; its safetensors,
     * if any, are not read) and every weight is anvil build
     * --random-weights' value for the same config, weight dtype and seed,
     * made chunk by chunk as the load copies it to the backend, so host
     * memory holds the load's chunk buffers, never the model (on a GPU).
     * weight_dtype ANVIL_DTYPE_COUNT: the config's torch_dtype, as the
     * build takes it. quantize / quant_group: the build's --quantize (RTN)
     * of the same random weights; only with random_weights (a folder is
     * quantized by anvil build). With comm, each rank's shard is random of
     * its own (not a cut of one rank's model). quantize_lm_head: the LM
     * head quantized too, as anvil build --quantize-lm-head (not with tied
     * embeddings). 0 (default): off. */
    int random_weights;
    uint64_t seed;
    anvil_quantize quantize;
    int32_t quant_group;
    int quantize_lm_head;
} anvil_runtime_options;

void anvil_runtime_options_default(anvil_runtime_options *opts);

/*
 * Loads a Hugging Face model folder (config.json, *.safetensors) or an
 * engine file onto the device of opts (NULL: defaults); with
 * opts->random_weights, a config with random weights. Errors name what is
 * wrong: an unsupported architecture, a missing tensor, a tensor whose
 * shape disagrees with the config, a malformed file. *out is NULL on
 * failure.
 */
anvil_status anvil_runtime_load(const char *model_dir, const anvil_runtime_options *opts, anvil_runtime **out);

/*
 * Tensor parallelism led by rank 0 (options.comm_lead): on every other
 * rank, runs the steps rank 0 sends, until rank 0 ends (its runtime freed,
 * or anvil_runtime_lead_end); ANVIL_OK then. Sampling happens on rank 0
 * only; each rank's KV cache follows rank 0's block ids. A failed step or
 * collective returns its error (the communicator is broken by then). The
 * ranks first meet in a barrier without a deadline (they load at their own
 * pace), and each wait for rank 0's next step has none either (a server
 * may idle for hours); everything else runs under the communicator's
 * timeout (anvil_comm_set_timeout).
 * ANVIL_ERR_INVALID_ARG on rank 0 or without comm_lead.
 */
anvil_status anvil_runtime_follow(anvil_runtime *rt);

/*
 * Rank 0 of a led communicator: tells the followers to return from
 * anvil_runtime_follow. Freeing rank 0's runtime does it; this is for a rank
 * 0 that ends without one (its load failed while the others' succeeded).
 * The followers are released once per communicator: a second call, or one
 * after rank 0's runtime was freed, does nothing.
 */
anvil_status anvil_runtime_lead_end(anvil_comm *comm);

/* Frees the runtime and everything it allocated. NULL is a no-op. */
void anvil_runtime_free(anvil_runtime *rt);

/* The model's configuration (borrowed, valid while rt lives). */
const anvil_model_config *anvil_runtime_config(const anvil_runtime *rt);

/* The options in effect after defaults were filled in (borrowed). */
const anvil_runtime_options *anvil_runtime_options_get(const anvil_runtime *rt);

/* Bytes of weights the runtime holds (as stored on the backend). */
size_t anvil_runtime_weight_bytes(const anvil_runtime *rt);

/* The dtype of the activations (see weight_dtype). */
anvil_dtype anvil_runtime_compute_dtype(const anvil_runtime *rt);

/* The dtype of the KV cache (see kv_cache_dtype). */
anvil_dtype anvil_runtime_kv_cache_dtype(const anvil_runtime *rt);

typedef struct anvil_batch {
    int32_t n_tokens;
    const int32_t *token_ids;     /* [n_tokens] */
    const int32_t *positions;     /* [n_tokens], consecutive within a sequence */
    int32_t n_seqs;
    const int32_t *seq_starts;    /* [n_seqs + 1], seq_starts[0] = 0, seq_starts[n_seqs] = n_tokens */
    const int32_t *block_tables;  /* [n_seqs * max_blocks_per_seq] */
    int32_t max_blocks_per_seq;
    int32_t n_logits;
    const int32_t *logit_rows;    /* [n_logits] rows whose logits are returned, in this order */
} anvil_batch;

/*
 * Runs one forward step. logits receives n_logits rows of vocab_size floats
 * (host memory, at least n_logits * vocab_size * 4 bytes). A batch that
 * breaks the rules above or a limit of the options is ANVIL_ERR_INVALID_ARG
 * or ANVIL_ERR_CAPACITY, and changes nothing.
 */
anvil_status anvil_runtime_forward(anvil_runtime *rt, const anvil_batch *batch, float *logits);

/*
 * The same step for greedy decoding: next_ids[i] receives the index of the
 * largest logit of logit row i (the lowest index on ties), n_logits ids.
 * On backends with a device argmax only the ids leave the device (not
 * n_logits x vocab_size logits); elsewhere the logits are downloaded and
 * scanned on the host.
 */
anvil_status anvil_runtime_forward_greedy(anvil_runtime *rt, const anvil_batch *batch, int32_t *next_ids);

/* How one logits row is sampled (anvil_runtime_forward_sample): the
 * parameters of anvil_sampler_sample, the sequence's generator and an
 * optional mask. Zero-initialize it (designated initializers or memset):
 * zero is "no mask" in every field added since. */
typedef struct anvil_sample_row {
    anvil_sampling_params sampling; /* checked as anvil_sampling_params_check; sampling.seed unused */
    anvil_rng *rng;                 /* drawn from when the row samples (NULL allowed for greedy rows) */
    /* The tokens the row may pick (a grammar's mask), NULL: all of them.
     * (vocab_size + 31) / 32 words; token i is allowed when bit i % 32 of
     * word i / 32 is set (bits past the vocabulary are ignored). The
     * others count as -inf logits before anything else (temperature,
     * min-p, top-k, top-p, the argmax): the row samples exactly as
     * anvil_sampler_sample does on its logits with those set to -inf. A
     * mask that allows no token gives ANVIL_TOKEN_NONE_ALLOWED. Borrowed:
     * read during the call. */
    const uint32_t *allowed;
    /* anvil_runtime_forward_sample_launch only: 1: the row's mask is not
     * known yet (allowed is not read); the step's sampler waits for
     * anvil_runtime_forward_sample_masks. 0 elsewhere. */
    int32_t mask_pending;
} anvil_sample_row;

/* The id of a row whose mask allowed no token (anvil_sample_row.allowed):
 * nothing was sampled and, in forward_sample, nothing drawn. */
#define ANVIL_TOKEN_NONE_ALLOWED (-2)

/*
 * The same step, sampling each logit row on the backend: next_ids[i]
 * receives what anvil_sampler_sample(logits of row i, &rows[i].sampling,
 * rows[i].rng) would return, and rows[i].rng advances exactly as that
 * call advances it (one uniform when the row samples and has a finite
 * logit, none otherwise). Every row is checked first
 * (anvil_sampling_params_check; ANVIL_ERR_INVALID_ARG naming the row).
 * Only the ids leave the device. Backends without a sample op (or with
 * host_sampling in its options) download the logits
 * and call anvil_sampler_sample itself. On the CPU the ids are
 * identical to that call's; on CUDA too except where the draw or the top-p
 * mass lands within ~1e-9 of a cumulative-probability boundary (the device
 * sums in another order; docs/cuda-backend.md). On failure no generator
 * has advanced. Rows with a mask (allowed) sample after the step's ops
 * (outside its step graph on CUDA), with the masks uploaded in one copy;
 * a row whose mask allows nothing is ANVIL_TOKEN_NONE_ALLOWED and draws
 * nothing. mask_pending is refused here (ANVIL_ERR_INVALID_ARG).
 */
anvil_status anvil_runtime_forward_sample(anvil_runtime *rt, const anvil_batch *batch, const anvil_sample_row *rows,
                                          int32_t *next_ids);

/*
 * Steps launched ahead (the executor's overlap scheduler, docs/executor.md):
 * the step of anvil_runtime_forward_sample in two halves, so that the
 * caller prepares the next step while the device runs this one.
 *
 *     launch(step n); launch(step n + 1, tokens naming step n's rows); wait(n); ...
 *
 * launch queues the step (the draws are taken from the generators now, as
 * forward_sample takes them) and returns; wait gives the ids of the oldest
 * launched step not yet waited for, waiting for that step alone. At most
 * two launched steps are not waited for at a time. In a launched batch a
 * token id < 0 is a placeholder, ANVIL_TOKEN_FROM_ROW(j): the id the
 * previous launch (the last one, waited for or not) sampled for its logits
 * row j, which on CUDA never leaves the device for this (the step's first
 * kernel reads it; the ids also go to pinned host memory for wait). A row
 * that came out poisoned (-1) feeds token 0: the caller fails its request.
 * A placeholder is refused (ANVIL_ERR_INVALID_ARG) when j is not a row of
 * the previous launch, or when a synchronous step (forward, forward_greedy,
 * forward_sample) ran since; those are themselves refused while a launched
 * step was not waited for. Unlike forward_sample, a poisoned row does not
 * give its draw back (the generator advanced at launch). A failed launch
 * advanced no generator and counts as no launch; a failed wait still takes
 * its step (the caller fails that step's requests). On the CPU a launch
 * computes the whole step before it returns (the same ids, the same
 * contract: anvil_runtime_launches_ahead says 0).
 *
 * Masks that depend on the previous step's tokens (a grammar's: the host
 * learns step n's tokens at wait(n), after step n + 1 was launched): rows
 * of a launch flagged mask_pending defer the step's sampler. The launch
 * queues the forward alone (and takes the draws, as ever); the caller
 * fills the masks and gives them with anvil_runtime_forward_sample_masks,
 * which queues the sampler; only then may that step be waited for or
 * another be launched (both refused before: ANVIL_ERR_INVALID_ARG).
 *
 *     launch(n + 1, rows with mask_pending); wait(n); fill the masks; masks(n + 1); ...
 *
 * A row of ANVIL_TOKEN_NONE_ALLOWED feeds token 0 to a placeholder, as a
 * poisoned row does. On the CPU the forward is computed at launch and
 * the sampler at masks.
 */
#define ANVIL_TOKEN_FROM_ROW(j) (-1 - (int32_t)(j))
anvil_status anvil_runtime_forward_sample_launch(anvil_runtime *rt, const anvil_batch *batch,
                                                 const anvil_sample_row *rows);
/* allowed: one pointer per logits row of the last launch; read for the
 * rows flagged mask_pending (NULL there: every token), during the call.
 * Refused (ANVIL_ERR_INVALID_ARG) when the last launch has no pending
 * mask. A failure here (a copy) leaves the step launched: its wait fails
 * with it, and no placeholder may name its rows. */
anvil_status anvil_runtime_forward_sample_masks(anvil_runtime *rt, const uint32_t *const *allowed);
/* next_ids: n_logits of that step */
anvil_status anvil_runtime_forward_sample_wait(anvil_runtime *rt, int32_t *next_ids);
/* 1 where a launch returns before the device finished (CUDA with its
 * sampler); 0 where it computes the step first (CPU, host_sampling). */
int anvil_runtime_launches_ahead(const anvil_runtime *rt);

/* ---- KV blocks: a simple pool (the executor's manager builds on it). */
int32_t anvil_runtime_kv_block_size(const anvil_runtime *rt);
int32_t anvil_runtime_kv_blocks_total(const anvil_runtime *rt);
int32_t anvil_runtime_kv_blocks_free(const anvil_runtime *rt);
/* Takes n free blocks into ids; ANVIL_ERR_CAPACITY (taking none) when fewer are free. */
anvil_status anvil_runtime_kv_alloc(anvil_runtime *rt, int32_t n, int32_t *ids);
/* Returns blocks to the pool. */
void anvil_runtime_kv_release(anvil_runtime *rt, int32_t n, const int32_t *ids);
/*
 * Copies the first n_tokens token slots of KV block src[i] into block
 * dst[i] (every layer, keys and values), for i < n: the copy-on-write of a
 * partly filled block that several sequences share. Blocks must be
 * allocated and src[i] != dst[i]; a bad id is ANVIL_ERR_INVALID_ARG and
 * copies nothing.
 */
anvil_status anvil_runtime_kv_copy(anvil_runtime *rt, int32_t n, const int32_t *src, const int32_t *dst,
                                   int32_t n_tokens);

/* ---- refit: new weights of the same shapes, in place (docs/engine.md, "Refit")
 *
 * A fine-tuned checkpoint replaces the weights of a loaded runtime without
 * a reload: the KV cache, activations, options and, on CUDA, the captured
 * step graphs stay (the weights are copied into the same allocations). In
 * two phases, so that a serving runtime pauses only for the copy:
 *
 *     anvil_refit_staging *sg;
 *     TRY(anvil_runtime_refit_prepare(rt, "ckpt-v2", NULL, &sg)); // any thread, while steps run
 *     ... between two steps, on the runtime's thread:
 *     TRY(anvil_runtime_refit_commit(rt, sg));                     // takes sg
 */
typedef struct anvil_refit_staging anvil_refit_staging;

/*
 * Reads the weights at `weights` (a Hugging Face folder or an engine file)
 * into host memory, in the form the runtime stores them (converted to its
 * kinds, fused as it fuses), scanning them for NaN and infinity (unless the
 * runtime was loaded with no_weight_check). They must fit the runtime
 * exactly: the same config (every value but the checkpoint's dtype and the
 * generation defaults: "refit changes rope_theta 10000 -> 500000: build a
 * new engine"), the same network, every tensor of the shape the config
 * implies (an engine: the runtime's stored tensors, kinds and shapes);
 * else ANVIL_ERR_INVALID_ARG naming the first difference. A NaN is
 * ANVIL_ERR_FORMAT; an unreadable source ANVIL_ERR_NOT_FOUND / ANVIL_ERR_IO.
 * The staging holds as many bytes as the runtime's weights
 * (anvil_runtime_weight_bytes). One thread; it may take long (it reads the
 * whole checkpoint); o->progress may cancel it (ANVIL_ERR_CANCELLED).
 * Nothing of rt changes: it reads only what the load fixed (config,
 * network, plan), so it may run on another thread while rt's own thread
 * runs steps. *out is NULL on failure.
 */
anvil_status anvil_runtime_refit_prepare(const anvil_runtime *rt, const char *weights, const anvil_refit_options *o,
                                         anvil_refit_staging **out);

/*
 * Copies the staged weights into the runtime's weight memory in place
 * (the same device pointers), then frees the staging (taken, also on
 * failure). Call it on the runtime's thread, between steps: the next step
 * computes with the new weights. The KV cache is kept: sequences in flight
 * continue over keys and values computed with the old weights (their
 * caller decides whether that is acceptable; the executor does as
 * TensorRT-LLM's refit and vLLM's weight updates do). On the CPU, weights
 * used in place from a mapping (use_mmap) get memory of their own first,
 * all before any copy, so a failed allocation changes nothing
 * (ANVIL_ERR_OOM); the file is then closed once no weight points into it.
 * A staging prepared for another runtime is ANVIL_ERR_INVALID_ARG. A
 * device copy that fails halfway leaves the weights mixed: the status is
 * the backend's (ANVIL_ERR_CUDA) and the message says so; free the runtime.
 */
anvil_status anvil_runtime_refit_commit(anvil_runtime *rt, anvil_refit_staging *staging);

/* Frees a staging that will not be committed. NULL is a no-op. A staging
 * is committed or freed before its runtime is freed (its pinned memory is
 * the runtime's backend's). */
void anvil_refit_staging_free(anvil_refit_staging *staging);

/* Bytes of host memory the staging holds. */
size_t anvil_refit_staging_bytes(const anvil_refit_staging *staging);

/* Prepare and commit in one call, on the runtime's thread (o NULL:
 * defaults). On failure the runtime's weights are as they were (but see
 * anvil_runtime_refit_commit on a failed device copy). */
anvil_status anvil_runtime_refit(anvil_runtime *rt, const char *weights, const anvil_refit_options *o);

#ifdef __cplusplus
}
#endif
#endif
