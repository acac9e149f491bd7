/*
 * anvil/builder.h: making engines (and random-weight models).
 *
 * An engine is one file that holds everything serving a model needs: its
 * weights prepared for the runtime (converted, fused, later quantized and
 * sharded), the network's ops and fusion plan, the config, tokenizer, chat
 * template and generation config (docs/engine.md, docs/engine-format.md).
 * Every command that takes a model folder takes an engine file.
 *
 *     anvil_build_options o;
 *     anvil_build_options_default(&o);
 *     o.weight_dtype = ANVIL_DTYPE_BF16;
 *     if (anvil_build_engine("models/llama", "llama.engine", &o) != ANVIL_OK)
 *         fprintf(stderr, "%s\n", anvil_last_error());
 */
#ifndef ANVIL_BUILDER_H
#define ANVIL_BUILDER_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/dtype.h"
#include "anvil/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Writes dir/config.json (config_json, an HF config text) and
 * dir/model.safetensors holding every weight the architecture needs, in the
 * config's dtype: norm weights 1, other weights uniform with standard
 * deviation 0.02 (as HF initializes them), from seed. dir must exist.
 */
anvil_status anvil_write_random_model(const char *dir, const char *config_json, uint64_t seed);

/* Weight quantization at build time (docs/quantization.md): the linear
 * weights (q/k/v/o, gate/up/down; not the embeddings, norms or LM head)
 * rounded to nearest (RTN) with per-row or per-group scales. */
typedef enum anvil_quantize {
    ANVIL_QUANTIZE_NONE = 0,
    ANVIL_QUANTIZE_FP8,     /* "fp8": e4m3, per-channel scales, fp8 activations (dynamic, per token) */
    ANVIL_QUANTIZE_INT8_WO, /* "int8-wo": int8 symmetric, per-channel scales, activations as computed */
    ANVIL_QUANTIZE_INT4_WO, /* "int4-wo": int4 asymmetric (min/max), groups along K with zero points */
    ANVIL_QUANTIZE_COUNT,
} anvil_quantize;

/* "none", "fp8", "int8-wo", "int4-wo"; "?" for an invalid value. */
const char *anvil_quantize_name(anvil_quantize q);
/* The inverse of anvil_quantize_name; 0, or -1 when unknown. */
int anvil_quantize_parse(const char *name, anvil_quantize *out);

typedef struct anvil_build_options {
    /* Weights converted to this (f32, bf16, f16); ANVIL_DTYPE_COUNT
     * (default, "auto"): as the checkpoint stores them. It also sets the
     * compute dtype at run time, as --dtype does for a folder. */
    anvil_dtype weight_dtype;
    int no_fusion;          /* 1: no fused ops and no weights stored fused */
    int n_threads;          /* threads preparing and writing; 0: one per online CPU (at most 16) */
    /* Random weights from the config alone (model is then a config file,
     * of any name, or a folder holding config.json): norms 1, others uniform with standard
     * deviation 0.02, a function of seed. For benchmarks at a real
     * model's shape without its weights. weight_dtype COUNT: the config's
     * dtype. */
    int random_weights;
    uint64_t seed;
    /* Quantize the linear weights (ANVIL_QUANTIZE_NONE: as weight_dtype).
     * quant_group: int4's group along K (0: 128); it must divide every
     * quantized weight's K. fp8 and int8 have one scale per row. */
    anvil_quantize quantize;
    int32_t quant_group;
    /* Activation-aware scaling (AWQ, docs/quantization.md "AWQ") of the
     * int4-wo or int8-wo weights, searched on calib_file (UTF-8 text,
     * tokenized with the model's tokenizer; a model folder only): windows
     * of calib_seq_len tokens (0: 512), at most calib_tokens tokens (0:
     * 16384), calib_rows rows of each linear's input in the search (0:
     * 512). calib_no_clip: no clipping search. NULL: round to nearest. */
    const char *calib_file;
    int32_t calib_seq_len;
    int64_t calib_tokens;
    int32_t calib_rows;
    int calib_no_clip;
    /* With quantize: the LM head too, in the same scheme (default: it stays
     * in weight_dtype). Tied embeddings stay unquantized: the LM head then
     * gets a quantized copy of the matrix of its own. */
    int quantize_lm_head;
    /* The engine's KV cache (docs/quantization.md, "FP8 KV cache"): NULL
     * or "auto": the checkpoint's k/v scales go into the engine when it
     * has them, and its fp8 KV cache when its config declares one; "fp8"
     * (or "fp8_e4m3"): the engine runs an fp8 cache under kv_cache_dtype
     * auto, with the checkpoint's scales, else scales calibrated on
     * calib_file (max |k| after RoPE and max |v| over its windows / 448),
     * else 1. */
    const char *kv_cache_dtype;
    /* Tensor parallelism (docs/parallel.md): tp_size 2 or more builds the
     * engine of rank tp_rank of a --tp tp_size job, its network cut as the
     * runtime cuts a folder's (anvil_build_engines_tp writes every rank's;
     * the embedding cut by vocabulary, a tied head sharing its slice).
     * 0 or 1: one rank. */
    int32_t tp_size, tp_rank;
    /* Called as bytes are written (of all the weights' bytes); a nonzero
     * return stops the build (ANVIL_ERR_CANCELLED, no file left). May be
     * NULL. Called from the building threads, one at a time. */
    int (*progress)(void *user, size_t bytes_done, size_t bytes_total);
    void *progress_user;
} anvil_build_options;

/* auto dtype, fusion on, threads auto, no random weights. */
void anvil_build_options_default(anvil_build_options *o);

/*
 * Tensor parallelism: every rank's engine of a --tp o->tp_size job into
 * the folder dir (made when missing), as rank0.engine, rank1.engine, ...
 * (TensorRT-LLM's layout), each built as anvil_build_engine with tp_rank
 * set. `anvil run|bench|serve --model dir --tp N` under mpirun -np N loads
 * each rank's own file. Refused: tp_size < 2, random weights (a cut
 * network's random values are not the whole model's), AWQ or KV
 * calibration (they run the model on one rank), a quantized tied LM head.
 * A rank that fails leaves the ranks written before it.
 */
anvil_status anvil_build_engines_tp(const char *model, const char *dir, const anvil_build_options *o);

/* The file of rank `rank` in a folder of per-rank engines:
 * "<dir>/rank<rank>.engine" into buf (ANVIL_ERR_INVALID_ARG when it does
 * not fit cap). */
anvil_status anvil_engine_rank_path(const char *dir, int32_t rank, char *buf, size_t cap);

/*
 * Builds model (a Hugging Face folder; or, with random_weights, a
 * config.json) into the engine file `output`. Every weight is checked
 * against the config and scanned for NaN and infinity as it is prepared.
 * The file appears at `output` only when complete (a failure or a cancel
 * leaves nothing there, and an existing file untouched). o NULL: defaults.
 */
anvil_status anvil_build_engine(const char *model, const char *output, const anvil_build_options *o);

/* ---- refit: new weights of the same shapes without a rebuild (docs/engine.md, "Refit") */

typedef struct anvil_refit_options {
    /* Called as the new weights are read (bytes done of bytes in all); a
     * nonzero return stops the refit (ANVIL_ERR_CANCELLED, nothing
     * changed). Called one at a time (a live refit: from the thread that
     * prepares it). May be NULL. */
    int (*progress)(void *user, size_t bytes_done, size_t bytes_total);
    void *progress_user;
    /* Threads reading and preparing the new weights. 0: anvil_refit_engine
     * one per online CPU (at most 16); a live refit 1 on the CPU backend
     * (the serving loop keeps its cores) and 8 on a GPU's host. */
    int n_threads;
} anvil_refit_options;

/*
 * Writes an engine with `engine`'s manifest (config, network, plan, the
 * model's files, build options) and the weights of `weights` (a Hugging
 * Face folder, or another engine file), every checksum recomputed, and a
 * "refit" record (source, created) in the manifest's "build". The new
 * weights must fit exactly: the same config (values other than the dtype
 * and the generation defaults), hence the same network, and a checkpoint
 * whose tensors give every weight's shape (an engine: the same stored
 * tensors, kinds and shapes); a folder's weights are converted to the
 * engine's kinds. What does not fit is ANVIL_ERR_INVALID_ARG naming the
 * first difference ("refit changes rope_theta 10000 -> 500000: build a new
 * engine"); a NaN or infinity in the new weights is ANVIL_ERR_FORMAT.
 * output NULL: engine itself is replaced. Either way the file appears only
 * when complete: a failure or a cancel leaves output as it was. o NULL:
 * defaults (no progress, threads auto).
 */
anvil_status anvil_refit_engine(const char *engine, const char *weights, const char *output,
                                const anvil_refit_options *o);

#ifdef __cplusplus
}
#endif
#endif
