/*
 * A pre-quantized Hugging Face checkpoint's quantization config: which
 * format wrote it, validated, and for each linear weight which checkpoint
 * tensors hold it and which canonical scheme (docs/quantization.md) it
 * becomes. The bytes themselves are converted by src/builder/quant_convert.h.
 *
 *     anvil_quant_config qc;
 *     TRY(anvil_quant_config_load("/models/llama-awq", &qc));
 *     if (qc.format != ANVIL_QFORMAT_NONE) {
 *         anvil_quant_linear ql;
 *         TRY_GOTO(anvil_quant_config_linear(&qc, "model.layers.0.self_attn.q_proj", &ql), fail);
 *         ... ql.scheme, ql.weight ("...q_proj.qweight"), ql.scales, ql.zeros ...
 *     }
 *     anvil_quant_config_free(&qc);
 *
 * Where the config lives:
 *   - ModelOpt: hf_quant_config.json ({"producer": {"name": "modelopt"},
 *     "quantization": {"quant_algo": "FP8", "exclude_modules": [...]}}), or
 *     config.json's quantization_config with quant_method "modelopt";
 *   - config.json's quantization_config with quant_method "fp8",
 *     "compressed-tensors", "awq" or "gptq".
 * Anything else in quant_method is ANVIL_ERR_UNSUPPORTED naming it; a
 * variant anvil does not convert (3-bit, AWQ's GEMV layout, a group size
 * that does not divide a weight's width, ...) is ANVIL_ERR_UNSUPPORTED or
 * ANVIL_ERR_FORMAT naming the field. The struct is plain data after load
 * and may be read from several threads.
 */
#ifndef ANVIL_IO_QUANT_CONFIG_H
#define ANVIL_IO_QUANT_CONFIG_H

#include <stdint.h>

#include "anvil/status.h"
#include "core/tensor.h"

typedef enum anvil_qformat {
    ANVIL_QFORMAT_NONE = 0,  /* no quantization config: a plain checkpoint */
    ANVIL_QFORMAT_MODELOPT,  /* NVIDIA ModelOpt FP8: weight, weight_scale, input_scale */
    ANVIL_QFORMAT_FP8,       /* quant_method fp8: weight + weight_scale (per tensor) or weight_scale_inv (blocks) */
    ANVIL_QFORMAT_CT_FLOAT,  /* compressed-tensors float-quantized (fp8): weight, weight_scale, input_scale */
    ANVIL_QFORMAT_CT_INT,    /* compressed-tensors int-/naive-quantized (int8): weight, weight_scale */
    ANVIL_QFORMAT_CT_PACKED, /* compressed-tensors pack-quantized: weight_packed, weight_scale, weight_shape */
    ANVIL_QFORMAT_AWQ,       /* AutoAWQ GEMM: qweight [K, N/8], qzeros, scales [K/g, N] */
    ANVIL_QFORMAT_GPTQ,      /* GPTQ: qweight [K/8, N], qzeros, scales, g_idx */
} anvil_qformat;

/* The canonical scheme a weight becomes (the element dtype of its
 * anvil_quant): F8_E4M3, I8 or U4. */
typedef enum anvil_qscheme {
    ANVIL_QSCHEME_NONE = 0, /* not quantized: "<module>.weight" as it is */
    ANVIL_QSCHEME_FP8,
    ANVIL_QSCHEME_INT8,
    ANVIL_QSCHEME_INT4,
} anvil_qscheme;

typedef struct anvil_quant_config {
    anvil_qformat format;
    char method[32];      /* quant_method as written ("awq"; "modelopt" for hf_quant_config.json) */
    anvil_qscheme scheme; /* what every quantized linear becomes */
    int bits;             /* 4 or 8 */
    /* K columns per scale along the input dimension: 0 per channel (or
     * per tensor, broadcast to every row), -1 one group spanning each
     * row (GPTQ's group_size -1) */
    int32_t group;
    int32_t block_rows;      /* quant_method fp8 weight_block_size [block_rows, group]; 0 otherwise */
    int weight_per_tensor;   /* the checkpoint holds one weight scale per tensor */
    int symmetric;           /* no zero points stored (int4: the zero is 8) */
    int desc_act;            /* GPTQ act order: g_idx permutes the columns */
    int gptq_v2;             /* GPTQ checkpoint_format gptq_v2: qzeros stored as they are (v1: stored - 1) */
    anvil_quant_act act;     /* activations (fp8 W8A8) */
    int act_per_tensor_dyn;  /* compressed-tensors dynamic per-tensor activations, run per token */
    /* modules left unquantized, as the config lists them (exact names,
     * dotted suffixes, "re:" regexes for compressed-tensors, fnmatch
     * patterns for ModelOpt, substrings for modules_to_not_convert) */
    char **ignore;
    int n_ignore;
    int ignore_substring; /* match entries as substrings (transformers' modules_to_not_convert) */
    int lm_head;          /* GPTQ "lm_head": true (the LM head is quantized too) */
    /* the config declares an fp8 KV cache with static per-tensor scales
     * per layer (ModelOpt kv_cache_quant_algo "FP8", compressed-tensors
     * kv_cache_scheme float / 8 bits / tensor / static): the checkpoint
     * must hold them (io/kv_scales.h) */
    int kv_fp8;
} anvil_quant_config;

/* Longest checkpoint tensor name a description holds (incl. the NUL). */
#define ANVIL_QNAME_MAX 256

/* Which checkpoint tensors hold one linear weight. An empty name: the
 * format has no such tensor for this weight. */
typedef struct anvil_quant_linear {
    anvil_qscheme scheme; /* NONE: the module is excluded; `weight` is "<module>.weight" */
    char weight[ANVIL_QNAME_MAX];      /* elements: .weight, .qweight or .weight_packed */
    char scales[ANVIL_QNAME_MAX];      /* .weight_scale, .weight_scale_inv or .scales */
    char zeros[ANVIL_QNAME_MAX];       /* .qzeros or .weight_zero_point (asymmetric int4) */
    char g_idx[ANVIL_QNAME_MAX];       /* GPTQ .g_idx (optional without desc_act) */
    char input_scale[ANVIL_QNAME_MAX]; /* static fp8 activations' .input_scale */
    char shape[ANVIL_QNAME_MAX];       /* compressed-tensors .weight_shape */
} anvil_quant_linear;

/* Reads dir/hf_quant_config.json (preferred when present, as vLLM does)
 * or dir/config.json's quantization_config. A folder with neither gives
 * format NONE and ANVIL_OK. On failure *out is zeroed and holds nothing. */
anvil_status anvil_quant_config_load(const char *dir, anvil_quant_config *out);

/* The same from text: config_json (config.json; may be NULL) and
 * hf_quant_json (hf_quant_config.json; NULL when absent); `what` names the
 * folder in messages. For tests and for callers that already hold the
 * files. */
anvil_status anvil_quant_config_parse(const char *config_json, const char *hf_quant_json, const char *what,
                                      anvil_quant_config *out);

/* Frees the ignore list; the struct is zeroed. NULL is a no-op. */
void anvil_quant_config_free(anvil_quant_config *qc);

/* Describes the linear weight of module (its Hugging Face name without
 * ".weight", e.g. "model.layers.3.mlp.down_proj"): the tensors that hold
 * it and its scheme (NONE when the config excludes it). A name longer than
 * the buffers allow is ANVIL_ERR_INVALID_ARG. */
anvil_status anvil_quant_config_linear(const anvil_quant_config *qc, const char *module, anvil_quant_linear *out);

/* "awq", "gptq", ...: the format's short name for messages and the engine
 * manifest ("none" for NONE). */
const char *anvil_qformat_name(anvil_qformat f);
const char *anvil_qscheme_name(anvil_qscheme s);

#endif
