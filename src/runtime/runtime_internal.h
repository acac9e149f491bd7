/*
 * The runtime's state, shared by its files:
 *   runtime.c        loading (weights, activations, KV cache) and the forward step
 *   runtime_refit.c  new weights of the same shapes in place (refit)
 *   runtime_sample.c the sampled steps: forward_sample, launch / masks / wait,
 *                    allowed-token masks
 *
 * The struct is opaque to everything outside src/runtime/.
 */
#ifndef ANVIL_RUNTIME_INTERNAL_H
#define ANVIL_RUNTIME_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/network.h"
#include "anvil/runtime.h"
#include "anvil/sampling.h"
#include "backend/backend.h"
#include "builder/build_plan.h"
#include "builder/fuse_plan.h"
#include "io/engine_file.h"
#include "io/safetensors.h"
#include "runtime/rope_table.h"

/* Sees op `op`'s value out [rows, width] (backend memory: host memory on
 * the CPU) of step s right after the op ran; an error stops the step. */
typedef anvil_status (*anvil_rt_op_hook)(void *user, int32_t op, const anvil_tensor *out, const anvil_step *s);

struct anvil_runtime {
    anvil_runtime_options opts;
    anvil_model_config cfg;
    int seq_len_from_config;  /* opts.max_seq_len is the config's context (no option gave one) */
    anvil_network *net;
    anvil_checkpoint *ckpt;   /* an HF folder's: kept open while weights point into it */
    anvil_quant_config prequant; /* an HF folder's quantization config (format NONE: a plain checkpoint) */
    anvil_engine_file *engine; /* an engine file's: likewise */
    anvil_backend *be;

    /* weights: the stored tensors of the build plan, each an allocation
     * (or the mapping, CPU with use_mmap), and the network's weights as
     * views into them, indexed like the network's weight list */
    anvil_build_plan *plan;
    void **stored_allocs;     /* [plan->n_stored] backend allocations (NULL where the mapping is used) */
    void **stored_data;       /* [plan->n_stored] where each stored tensor's bytes are */
    int32_t n_weights;
    anvil_tensor *weights;
    anvil_quant *quants;      /* [n_weights] the quantized weights' (weights[i].quant points here) */
    size_t weight_bytes;

    /* activations: one buffer per value, shared between values whose lives
     * do not overlap */
    int32_t n_ops;
    anvil_fuse *fuse;         /* [n_ops] which ops run fused (builder/fuse_plan.c) */
    int32_t *value_buffer;    /* [n_ops] */
    int32_t n_buffers;
    void **buffers;
    size_t *buffer_bytes;
    float **rope_tables;      /* [n_ops] backend memory, for rope ops: one table, or LongRoPE's two back to back */
    anvil_rope_freqs *rope_freqs; /* [n_ops] what rope ops (and the attention that fuses them) take */

    /* tensor parallelism (runtime_tp.c): opts.comm's rank runs rt->net cut for it */
    void *tp_stage;           /* [tp_stage_bytes] all_gather's rank-ordered parts (NULL: no gathers) */
    size_t tp_stage_bytes;
    int tp_stage_dev;         /* tp_stage is backend memory (a device communicator's), not malloc's */
    int tp_ended;             /* comm_lead, rank 0: the followers were released */
    /* pipeline parallelism (runtime_pp.c): opts.comm's ranks split into
     * this stage's TP ranks and this TP rank's chain of stages */
    anvil_comm *tp_comm;      /* the collectives' ranks: opts.comm, the stage's, or NCCL's over opts.comm for
                                 a backend in device memory (owned unless opts.comm) */
    anvil_comm *pp_comm;      /* the chain of stages (owned; NULL: one stage) */
    anvil_comm *dev_comm;     /* NCCL over opts.comm for a backend in device memory (owned; NULL: none):
                                 the led steps' metadata; tp_comm (one stage) or the parent of the
                                 stage's and the chain's NCCL splits */
    int32_t pp_stage, pp_stages;
    int32_t kv_layer0;        /* the model's attention layer that is this stage's KV layer 0 */
    int has_logits;           /* the network's output is the logits (every stage but those between) */
    /* micro-batches (runtime_micro.c), with pp_stages > 1 */
    int32_t *mb_host;         /* [mb_ints] the split's host staging */
    void *mb_meta_dev;        /* [mb_ints] the micro-batches' rebased arrays, backend memory */
    size_t mb_ints;
    void *mb_logits;          /* [max_logit_rows x vocab] the step's logits gathered (has_logits) */
    int64_t mb_steps;         /* steps run as micro-batches (tests read it) */

    /* KV cache: per layer k and v [n_blocks, block_size, n_kv_heads, head_dim],
     * n_kv_heads this rank's (the config's on one rank) */
    int64_t n_kv_heads;
    anvil_dtype kv_dtype;     /* opts.kv_cache_dtype resolved (kv_cache_dtype_for) */
    int32_t n_kv_layers;
    int32_t n_blocks;
    int32_t max_blocks_per_seq;
    anvil_tensor *k_cache, *v_cache;
    /* [n_kv_layers * 2]: layer l's k_scale and v_scale at 2l and 2l + 1,
     * what an fp8 cache holds k and v divided by (anvil_attention_args):
     * the checkpoint's or the engine's (read during load, load_kv_scales),
     * else 1 (vLLM's default); set before the KV cache is allocated */
    float *kv_scales;
    int kv_scales_given;      /* kv_scales came from the checkpoint or engine */
    int kv_fp8_default;       /* the checkpoint declares an fp8 KV cache, or the engine was built
                                 for one: kv_cache_dtype auto means fp8 */
    int32_t *free_blocks;     /* a stack of free block ids */
    int32_t n_free;
    unsigned char *block_used;

    /* step metadata staged on the host, then uploaded in one copy */
    int32_t *meta_host;
    void *meta_dev;
    void *moe_scratch;        /* the moe ops' scratch (backend.h, anvil_moe_scratch), shared by them */
    size_t moe_scratch_bytes;
    size_t meta_ints;
    void *logits_host_stage;  /* when activations are not f32 */
    void *ids_dev;            /* [max_logit_rows] argmax ids (forward_greedy), made on first use */

    /* forward_sample, made on first use */
    anvil_sample_draw *sample_host;    /* [max_logit_rows] the step's draws, staged */
    void *sample_dev;                  /* [max_logit_rows] the same on the backend */
    anvil_rng *sample_saved;           /* [max_logit_rows] generators before their draw */
    const anvil_sample_draw *step_sample; /* during a forward_sample step: run_ops samples with these */
    int host_sampling;                 /* opts.host_sampling: sample on the host always */
    anvil_sampler *host_sampler;       /* the host path (no sample op) */
    float *host_logits;                /* [max_logit_rows * vocab] for it */

    /* steps launched ahead (forward_sample_launch / _wait): the ids of
     * up to two launched steps, oldest first, each in its own host slot
     * (pinned where the backend has host_alloc) */
    int32_t *launch_ids[2];            /* [max_logit_rows] per slot, made on first use */
    int launch_pinned;                 /* the slots are the backend's host_alloc memory */
    int32_t launch_rows[2];            /* logits rows of the step in each slot */
    int launch_first;                  /* the slot of the oldest step not waited for */
    int launch_count;                  /* launched steps not waited for (0..2) */
    int32_t launch_prev_rows;          /* logits rows of the last launched step, whose ids a
                                          placeholder may name; 0: none (another forward since) */
    const int32_t *step_prev_ids;      /* during a launch with placeholders: resolve_tokens with these */
    anvil_status launch_status[2];     /* a slot whose sampling could not be queued: its wait fails so */

    /* allowed-token masks (anvil_sample_row.allowed), made on first use:
     * a masked step's draws, masked rows and masks, staged back to back
     * and uploaded in one copy (runtime_sample.c, sample_masked) */
    int32_t mask_words;                /* (vocab + 31) / 32 */
    unsigned char *mask_host;          /* draws [max_logit_rows], rows [max_logit_rows], words [n_masks * mask_words] */
    void *mask_dev;                    /* the same on the backend */
    int32_t n_masks;                   /* masks staged for the step */
    unsigned char *mask_none;          /* [max_logit_rows] the step's rows whose mask allows nothing */
    unsigned char *launch_none[2];     /* the same per launched slot, applied at wait */
    /* a launch whose sampling waits for masks (anvil_runtime_forward_sample_masks) */
    int pend;                          /* the last launched step's sampler is not queued yet */
    anvil_step pend_step;              /* its counts (for the logits tensor) */
    unsigned char *pend_rows;          /* [max_logit_rows] 1: the row's mask is pending */

    /* calibration (runtime_calib.c): called after each op of a step runs
     * by itself (fused groups are not seen), with the op's value */
    anvil_rt_op_hook op_hook;
    void *op_hook_user;
};

/* ---- runtime.c, for runtime_sample.c */
/* Checks the batch and fills the step's metadata (placeholders: see runtime.c). */
anvil_status anvil_rt_prepare_step(anvil_runtime *rt, const anvil_batch *b, anvil_step *s, int32_t prev_rows,
                                   const int32_t *prev_host, int32_t *n_ph);
/* The step's ops (through a step graph where one applies); with ids_dev the
 * argmax, or with rt->step_sample the sampler, of each logits row into it. */
anvil_status anvil_rt_run_step(anvil_runtime *rt, anvil_step *s, int32_t *ids_dev);
/* Refuses a synchronous step while a launched one was not waited for. */
anvil_status anvil_rt_check_not_launched(anvil_runtime *rt, const char *what);
/* The step with its logits downloaded to the host (f32). */
anvil_status anvil_rt_forward_logits(anvil_runtime *rt, const anvil_batch *batch, float *logits);
/* The logits of step s: [n_logits, vocab] in the backend's buffer. */
anvil_tensor anvil_rt_logits_tensor(const anvil_runtime *rt, const anvil_step *s);

/* ---- runtime_tp.c: tensor parallelism */
/* Cuts rt->net for opts.comm's rank (when it has several; refused for an
 * engine file) and sets rt->n_kv_heads. */
anvil_status anvil_rt_tp_setup(anvil_runtime *rt, int engine);
/* model_dir a folder of per-rank engines (rank0.engine ...: anvil build
 * --tp N): this rank's file into buf (comm's rank; one rank: rank 0's, so
 * that its refusal names the build); else buf "". */
anvil_status anvil_rt_tp_rank_engine(const char *model_dir, const anvil_comm *comm, char *buf, size_t cap);
/* Refuses a communicator whose memory the backend does not compute in;
 * allocates the all_gather buffer. */
anvil_status anvil_rt_tp_check_backend(anvil_runtime *rt);
/* An all_reduce (in place: out is in) or all_gather op through opts.comm. */
anvil_status anvil_rt_tp_collective(anvil_runtime *rt, const anvil_net_op *op, const anvil_tensor *in,
                                    anvil_tensor *out);
/* comm_lead, rank 0 (no-ops elsewhere): sends the step about to run (its
 * metadata as the backend holds it), a KV block copy, the end. */
anvil_status anvil_rt_tp_lead_step(anvil_runtime *rt, const anvil_step *s);
anvil_status anvil_rt_tp_lead_kv_copy(anvil_runtime *rt, int32_t n, const int32_t *src, const int32_t *dst,
                                      int32_t n_tokens);
void anvil_rt_tp_release(anvil_runtime *rt);

/* ---- runtime_pp.c: pipeline parallelism */
/* With opts.pipeline_stages > 1: cuts rt->net for this rank's stage and
 * splits opts.comm (rt->tp_comm, rt->pp_comm); else rt->tp_comm is
 * opts.comm. *tp_rank and *tp_size: this rank's place in its stage. */
anvil_status anvil_rt_pp_setup(anvil_runtime *rt, int engine, int32_t *tp_rank, int32_t *tp_size);
/* A send (in place: out is in) or recv op through rt->pp_comm. */
anvil_status anvil_rt_pp_transfer(anvil_runtime *rt, const anvil_net_op *op, const anvil_tensor *in,
                                  anvil_tensor *out);
/* Frees the communicators the setup split. */
void anvil_rt_pp_free(anvil_runtime *rt);

/* ---- runtime_micro.c: a pipeline step as micro-batches */
/* The buffers of the split, at load (pp_stages > 1). */
anvil_status anvil_rt_micro_alloc(anvil_runtime *rt);
void anvil_rt_micro_free(anvil_runtime *rt);
/* The schedule's state while a micro-batch runs (run by anvil_rt_op_loop). */
typedef struct anvil_rt_micro anvil_rt_micro;
/* Runs step s as micro-batches where that applies (*ran 1), the logits
 * left in the output buffer as the unsplit step leaves them; else *ran 0
 * and nothing ran. */
anvil_status anvil_rt_micro_run(anvil_runtime *rt, const anvil_step *s, int *ran);
/* Called by anvil_rt_op_loop before a send op of a micro-batch: stage 0
 * receives the logits the ring must drain first. */
anvil_status anvil_rt_micro_before_send(anvil_runtime *rt, anvil_rt_micro *mb);
/* Every op of step s in plan order; with mb, stage 0's receive of the
 * logits is left to the schedule. */
anvil_status anvil_rt_op_loop(anvil_runtime *rt, const anvil_step *s, anvil_rt_micro *mb);

#endif
