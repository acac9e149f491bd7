/*
 * anvil/model_config.h: the model hyper-parameters anvil reads from a
 * Hugging Face config.json (+ generation_config.json).
 *
 * Both key styles are accepted: the classic one (rope_theta, rope_scaling,
 * torch_dtype) that most published checkpoints use, and transformers 5's
 * (rope_parameters, dtype).
 */
#ifndef ANVIL_MODEL_CONFIG_H
#define ANVIL_MODEL_CONFIG_H

#include <stdint.h>

#include "anvil/dtype.h"
#include "anvil/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ANVIL_MAX_EOS_IDS 8

/*
 * Bounds on config.json values, checked before anything is sized from
 * them (docs/checkpoints.md has the table and the models behind each
 * number). Each is several times the largest published model's, and small
 * enough that every size derived from them fits 64-bit arithmetic and the
 * int32 indices the runtime uses. A value above its bound is
 * ANVIL_ERR_UNSUPPORTED, one below its minimum ANVIL_ERR_FORMAT; both
 * messages name the key, its value and the bound.
 */
#define ANVIL_MAX_LAYERS 1024                /* num_hidden_layers (Llama 3.1 405B: 126) */
#define ANVIL_MAX_HEADS 1024                 /* num_attention_heads, num_key_value_heads (405B: 128) */
#define ANVIL_MAX_HEAD_DIM 1024              /* head_dim (Gemma: 256) */
#define ANVIL_MAX_HIDDEN_SIZE 65536          /* hidden_size (405B: 16384) */
#define ANVIL_MAX_INTERMEDIATE_SIZE 262144   /* intermediate_size (405B: 53248) */
#define ANVIL_MAX_VOCAB_SIZE 16777216        /* vocab_size, 2^24 (Gemma: 256000) */
#define ANVIL_MAX_CONTEXT 268435456          /* 2^28 positions: max_position_embeddings, sliding_window,
                                                original_max_position_embeddings, and the runtime's
                                                max_seq_len (Llama 4 Scout: 10M) */
#define ANVIL_MIN_ROPE_THETA 1.0
#define ANVIL_MAX_ROPE_THETA 1e12
#define ANVIL_MIN_ROPE_FACTOR 1.0            /* linear and llama3 factor (transformers warns below 1) */
#define ANVIL_MAX_ROPE_FACTOR 4096.0
#define ANVIL_MIN_ROPE_FREQ_FACTOR 1e-3      /* llama3 low_freq_factor and high_freq_factor */
#define ANVIL_MAX_ROPE_FREQ_FACTOR 1e3
#define ANVIL_MAX_ROPE_EXT_FACTORS 256       /* longrope short_factor / long_factor entries, head_dim / 2:
                                                head_dim <= 512 with longrope (Phi-3: 96) */
#define ANVIL_MIN_ROPE_EXT_FACTOR 1e-3       /* each longrope short_factor / long_factor entry */
#define ANVIL_MAX_ROPE_EXT_FACTOR 4096.0
#define ANVIL_MIN_ROPE_ATTENTION_FACTOR 1e-2 /* longrope attention_factor, given or derived (Phi-3 128k: 1.19) */
#define ANVIL_MAX_ROPE_ATTENTION_FACTOR 10.0
#define ANVIL_MIN_RMS_NORM_EPS 1e-12
#define ANVIL_MAX_RMS_NORM_EPS 0.1
#define ANVIL_MAX_TEMPERATURE 100.0          /* generation_config.json */
#define ANVIL_MIN_SOFTCAP 1e-3               /* attn_logit_softcapping, final_logit_softcapping (Gemma 2: 50, 30) */
#define ANVIL_MAX_SOFTCAP 1e6
#define ANVIL_MIN_QUERY_PRE_ATTN_SCALAR 1e-3 /* query_pre_attn_scalar (Gemma 2 9B: 224) */
#define ANVIL_MAX_QUERY_PRE_ATTN_SCALAR 1e9
#define ANVIL_MAX_EXPERTS 1024              /* num_local_experts / num_experts (Qwen3-235B: 128) */
#define ANVIL_MAX_LORA_RANK 16384           /* DeepSeek-V2's q_lora_rank and kv_lora_rank (V2: 1536, 512) */
#define ANVIL_MIN_ROUTED_SCALE 1e-6         /* routed_scaling_factor (DeepSeek-V2: 16, V2-Lite: 1) */
#define ANVIL_MAX_ROUTED_SCALE 1e6
#define ANVIL_MAX_YARN_BETA 1e4             /* YaRN beta_fast, beta_slow (DeepSeek-V2: 32, 1) */
#define ANVIL_MAX_YARN_MSCALE 100.0         /* YaRN mscale, mscale_all_dim (DeepSeek-V2: 0.707) */

typedef enum anvil_rope_type {
    ANVIL_ROPE_DEFAULT = 0, /* theta ** (-2i/d) */
    ANVIL_ROPE_LINEAR,      /* positions divided by factor */
    ANVIL_ROPE_LLAMA3,      /* Llama 3.1 frequency-dependent scaling */
    ANVIL_ROPE_LONGROPE,    /* Phi-3 LongRoPE: per-frequency factors, short or long by sequence length */
    ANVIL_ROPE_YARN,        /* YaRN (DeepSeek-V2): interpolated and extrapolated frequencies ramped, cos and
                               sin times attention_factor */
} anvil_rope_type;

/*
 * LongRoPE (Phi-3 128k, Phi-3.5): inverse frequency i is
 * 1 / (ext_i * theta^(2i / head_dim)), ext being short_factor for a token
 * whose sequence is at most original_max_position long after the step that
 * computes it (anvil_step.seq_lens) and long_factor beyond; cos and sin are
 * multiplied by attention_factor either way. docs/checkpoints.md has the
 * keys and the defaults.
 */
typedef struct anvil_rope_config {
    anvil_rope_type type;
    double theta;                    /* base */
    double factor;                   /* linear, llama3; longrope: the context's extension (given, or
                                        max_position_embeddings / original_max_position) */
    double low_freq_factor;          /* llama3 */
    double high_freq_factor;         /* llama3 */
    int64_t original_max_position;   /* llama3; longrope: the length above which long_factor applies */
    double attention_factor;         /* longrope: cos and sin are multiplied by it */
    int32_t n_ext_factors;           /* longrope: head_dim / 2 entries in each of: */
    float short_factor[ANVIL_MAX_ROPE_EXT_FACTORS]; /* longrope */
    float long_factor[ANVIL_MAX_ROPE_EXT_FACTORS];  /* longrope */
    /* yarn (transformers' _compute_yarn_parameters): inverse frequency i
     * blends 1 / theta^(2i/d) and that over factor by a ramp between the
     * dimensions where beta_fast and beta_slow rotations fit
     * original_max_position (bounds floored and ceiled with truncate);
     * attention_factor (given, or get_mscale(factor, mscale) /
     * get_mscale(factor, mscale_all_dim) when both are nonzero, else
     * get_mscale(factor)) multiplies cos and sin. DeepSeek-V2 also
     * multiplies its softmax scale by get_mscale(factor, mscale_all_dim)^2
     * (src/models/deepseek2.c). */
    double beta_fast;
    double beta_slow;
    double mscale;                   /* 0: not given */
    double mscale_all_dim;           /* 0: not given */
    int truncate;
} anvil_rope_config;

/* The MLP's activation (hidden_act, Gemma's hidden_activation). */
typedef enum anvil_hidden_act {
    ANVIL_ACT_SILU = 0,  /* "silu": the Llama family */
    ANVIL_ACT_GELU_TANH, /* "gelu_pytorch_tanh": Gemma 2; "gelu_new": GPT-2 (the same function) */
} anvil_hidden_act;

typedef struct anvil_model_config {
    char architecture[64];       /* "LlamaForCausalLM", ... (the first of "architectures") */
    char model_type[32];         /* "llama", "qwen2", ... */
    int64_t vocab_size;
    int64_t hidden_size;
    int64_t intermediate_size;
    int64_t n_layers;
    int64_t n_heads;
    int64_t n_kv_heads;          /* == n_heads without grouped-query attention */
    int64_t head_dim;            /* hidden_size / n_heads unless given */
    int64_t max_position_embeddings;
    double rms_norm_eps;         /* the norms' eps (GPT-2: layer_norm_epsilon) */
    anvil_rope_config rope;
    int tie_word_embeddings;     /* LM head reuses the embedding table */
    int attention_bias;          /* biases on q/k/v (Qwen2 family) */
    int attention_out_bias;      /* bias on o_proj */
    int mlp_bias;
    int qk_norm;                 /* RMSNorm over each head of q and k (Qwen3) */
    int64_t sliding_window;      /* 0: full attention */
    /* 1: sliding_window applies only to the layers whose bit is set in
     * sliding_layers (bit l % 64 of word l / 64): Gemma 2's layer_types,
     * or its default, every even layer. 0: to every layer. */
    int per_layer_window;
    uint64_t sliding_layers[ANVIL_MAX_LAYERS / 64];
    anvil_hidden_act hidden_act;
    /* Gemma 2 (0 elsewhere): attention scale query_pre_attn_scalar^-0.5
     * (0: head_dim^-0.5); the attention logits' and the final logits'
     * soft caps, tanh(x / cap) * cap (0: none) */
    double query_pre_attn_scalar;
    double attn_logit_softcap;
    double final_logit_softcap;
    anvil_dtype dtype;           /* the checkpoint's dtype */
    int32_t bos_token_id;        /* -1 when none */
    int32_t pad_token_id;        /* -1 when none */
    int32_t eos_token_ids[ANVIL_MAX_EOS_IDS];
    int n_eos_token_ids;
    /* generation_config.json defaults (negative: not given) */
    float gen_temperature;
    int32_t gen_top_k;
    float gen_top_p;
    /* Mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE); n_experts 0: a
     * dense model. Layer l's MLP is the experts when (l + 1) %
     * decoder_sparse_step == 0 and its bit in mlp_only_layers is clear,
     * else a dense MLP of intermediate_size. */
    int32_t n_experts;           /* num_local_experts (Mixtral), num_experts (Qwen) */
    int32_t n_experts_per_tok;   /* num_experts_per_tok */
    int64_t moe_intermediate_size; /* each expert's (Mixtral: intermediate_size) */
    int64_t shared_expert_intermediate_size; /* Qwen2-MoE's shared expert; 0: none */
    int norm_topk_prob;          /* the k routing weights divided by their sum (Mixtral: always) */
    int32_t decoder_sparse_step;
    uint64_t mlp_only_layers[ANVIL_MAX_LAYERS / 64]; /* bit l % 64 of word l / 64 */
    /* DeepSeek-V2's router (0 / 1 elsewhere): experts in moe_n_group groups,
     * each token's top-k taken from the moe_topk_group groups with the
     * largest best expert (group_limited_greedy; 1 and 1: plain greedy),
     * the k weights times routed_scaling_factor (1: none) */
    int32_t moe_n_group;
    int32_t moe_topk_group;
    double routed_scaling_factor;
    /* DeepSeek-V2's layers (first_k_dense_replace): the first ones have a
     * dense MLP, the rest the experts */
    int32_t first_k_dense_replace;
    /* Multi-head latent attention (DeepSeek-V2; kv_lora_rank 0 elsewhere):
     * q from q_proj, or through a rank q_lora_rank bottleneck (q_a_proj,
     * q_a_layernorm, q_b_proj); keys and values from a normalized latent
     * of kv_lora_rank and one shared rope key of qk_rope_head_dim
     * (head_dim is that: the rotated part); each head's q and k are
     * qk_nope_head_dim + qk_rope_head_dim wide, its v v_head_dim. */
    int64_t q_lora_rank;         /* 0: a plain q_proj */
    int64_t kv_lora_rank;
    int64_t qk_nope_head_dim;
    int64_t v_head_dim;
} anvil_model_config;

/*
 * Reads dir/config.json and, when present, dir/generation_config.json.
 * A missing or mistyped required field is ANVIL_ERR_FORMAT naming the field;
 * a RoPE scaling type anvil does not implement is ANVIL_ERR_UNSUPPORTED.
 * The architecture is not checked here (the model registry does that).
 */
anvil_status anvil_model_config_load(const char *dir, anvil_model_config *out);

/* The same from config.json text already in memory (generation defaults unset). */
anvil_status anvil_model_config_parse(const char *json_text, anvil_model_config *out);

/* The config that path names: a model folder or an engine file
 * (anvil_model_config_load), or else a config.json file of any name (its
 * text alone, generation defaults unset): what --config FILE takes with
 * random weights. */
anvil_status anvil_model_config_load_path(const char *path, anvil_model_config *out);

/*
 * Checks a config made some other way (by hand, or edited after a load)
 * against the same bounds and rules the parser applies: ANVIL_OK, or the
 * parser's status and message with "model config" in place of the file
 * name. anvil_model_build_network calls it, so no size is ever derived from
 * an unchecked config.
 */
anvil_status anvil_model_config_check(const anvil_model_config *cfg);

/* YaRN's get_mscale(scale, mscale): 1 for scale <= 1, else
 * 0.1 * mscale * ln(scale) + 1 (DeepSeek-V2's softmax scale is
 * multiplied by its square with mscale_all_dim). */
double anvil_yarn_mscale(double scale, double mscale);

#ifdef __cplusplus
}
#endif
#endif
