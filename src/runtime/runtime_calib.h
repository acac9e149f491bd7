/*
 * The calibration pass of a build: the model of a folder run on the CPU in
 * f32, op by op, over windows of a text, each linear group's input handed
 * to anvil_awq_observe as it is computed (AWQ, builder/awq.h), and each
 * layer's largest |k| (after RoPE, what the KV cache stores) and |v| kept
 * (an fp8 KV cache's scales: amax / 448, as vLLM's calculate_kv_scales).
 *
 * This is the one place the builder runs a model: anvil_build_engine
 * (builder/build_engine.c) calls it, a call from the builder into the
 * runtime that the layering otherwise forbids; the alternative, a second
 * forward in the builder, would duplicate the runtime's op walk.
 */
#ifndef ANVIL_RUNTIME_CALIB_H
#define ANVIL_RUNTIME_CALIB_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/status.h"
#include "builder/awq.h"

typedef struct anvil_calib_options {
    const char *text_file; /* UTF-8 text, tokenized with the model's tokenizer */
    int32_t seq_len;       /* tokens a window (each starts at position 0 with BOS) */
    int64_t max_tokens;    /* windows taken from the start while they fit in this many tokens */
    int n_threads;         /* CPU threads; 0: the CPUs */
    /* NULL, or [2 * n_kv_layers]: KV layer l's max |k| at 2l and max |v|
     * at 2l + 1 over every token of the windows (zeroed first) */
    float *kv_amax;
    int32_t n_kv_layers;   /* kv_amax's layers: the network's */
} anvil_calib_options;

/* What the pass read, for the manifest. */
typedef struct anvil_calib_info {
    uint64_t xxh64;     /* of the file's bytes */
    int64_t n_text_tokens;
    int64_t n_tokens;   /* run: windows x seq_len */
    int32_t n_windows;
} anvil_calib_info;

/*
 * Reads o->text_file, tokenizes it with model_dir's tokenizer and runs
 * model_dir's weights (f32, CPU, no fusion) over its first windows,
 * observing every value a (made for that network; NULL: no AWQ) wants,
 * and with o->kv_amax each layer's k and v. Errors: a missing
 * or unreadable file (ANVIL_ERR_NOT_FOUND / _IO), an empty one, invalid
 * UTF-8, or a text of fewer tokens than one window, or a max_tokens below
 * one window (ANVIL_ERR_INVALID_ARG), each naming the file.
 */
anvil_status anvil_calib_run(const char *model_dir, const anvil_calib_options *o, anvil_awq *a,
                             anvil_calib_info *info);

#endif
