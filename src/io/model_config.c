/*
 * Hugging Face config.json (+ generation_config.json) -> anvil_model_config.
 *
 * Where a key is absent, the value is what transformers' config class for
 * that model_type would use, because that is what the published weights
 * were trained and evaluated with. Some architectural facts are not keys at
 * all (Qwen2's q/k/v biases, Qwen3's q/k norms): transformers hard-codes
 * them in the model class, so we do too, per family.
 */
#include "anvil/model_config.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/error.h"
#include "core/fileutil.h"
#include "core/json_util.h"
#include "io/model_files.h"

/* ------------------------------------------------------ per-family rules */

typedef enum bias_rule {
    BIAS_FROM_KEY, /* attention_bias applies to q, k, v and o (Llama, Qwen3, Gemma2) */
    BIAS_NONE,     /* no attention biases whatever the config says (Mistral, Mixtral, Phi-3) */
    BIAS_QKV,      /* q, k, v always biased, o never (Qwen2) */
} bias_rule;

typedef enum window_rule {
    WINDOW_NONE,     /* full attention (Llama ignores sliding_window) */
    WINDOW_FROM_KEY, /* sliding_window, null means none (Mistral, Mixtral, Phi-3) */
    WINDOW_QWEN,     /* only with use_sliding_window, on layers >= max_window_layers */
} window_rule;

typedef struct family {
    const char *model_type;
    int tie_word_embeddings; /* the config class's default */
    double rope_theta;
    double rms_norm_eps;
    bias_rule bias;
    int mlp_bias_key; /* the MLP reads mlp_bias (else never biased) */
    int qk_norm;
    window_rule window;
    /* Phi3Config: RoPE types "su" and "yarn" are older names of "longrope",
     * and original_max_position_embeddings defaults to this (0: none) */
    int64_t phi3_original_max;
} family;

static const family families[] = {
    {"llama", 0, 10000.0, 1e-6, BIAS_FROM_KEY, 1, 0, WINDOW_NONE, 0},
    {"mistral", 0, 10000.0, 1e-6, BIAS_NONE, 0, 0, WINDOW_FROM_KEY, 0},
    {"mixtral", 0, 1e6, 1e-5, BIAS_NONE, 0, 0, WINDOW_FROM_KEY, 0},
    {"qwen2", 0, 10000.0, 1e-6, BIAS_QKV, 0, 0, WINDOW_QWEN, 0},
    {"qwen3", 0, 10000.0, 1e-6, BIAS_FROM_KEY, 0, 1, WINDOW_QWEN, 0},
    {"phi3", 0, 10000.0, 1e-5, BIAS_NONE, 0, 0, WINDOW_FROM_KEY, 4096},
    {"gemma2", 1, 10000.0, 1e-6, BIAS_FROM_KEY, 0, 0, WINDOW_FROM_KEY, 0},
    {"qwen2_moe", 0, 10000.0, 1e-6, BIAS_QKV, 0, 0, WINDOW_QWEN, 0},
    {"qwen3_moe", 0, 10000.0, 1e-6, BIAS_FROM_KEY, 0, 1, WINDOW_QWEN, 0},
    /* DeepSeek-V2: multi-head latent attention and its own MoE router (parse_deepseek2) */
    {"deepseek_v2", 0, 10000.0, 1e-6, BIAS_FROM_KEY, 1, 0, WINDOW_NONE, 0},
    /* GPT-2: biases everywhere and no RoPE (parse_gpt2); its eps is layer_norm_epsilon */
    {"gpt2", 1, 10000.0, 1e-5, BIAS_FROM_KEY, 0, 0, WINDOW_NONE, 0},
};

/* Anything else gets PretrainedConfig's defaults (tied embeddings). */
static const family generic_family = {"", 1, 10000.0, 1e-6, BIAS_FROM_KEY, 1, 0, WINDOW_FROM_KEY, 0};

static const family *find_family(const char *model_type)
{
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
        if (strcmp(families[i].model_type, model_type) == 0)
            return &families[i];
    return &generic_family;
}

/* ---------------------------------------------------------------- bounds */

/* v in [lo, hi]. Below is nonsense (ANVIL_ERR_FORMAT, "must be positive"
 * when lo is 1, as users know it); above is a model anvil does not size
 * for (ANVIL_ERR_UNSUPPORTED). Either message names the key, the value and
 * the bound. */
static anvil_status int_in_range(const char *what, const char *key, int64_t v, int64_t lo, int64_t hi)
{
    if (v < lo && lo == 1)
        return ANVIL_FAIL(ANVIL_ERR_FORMAT, "%s: %s must be positive, got %lld", what, key, (long long)v);
    CHECK(v >= lo, ANVIL_ERR_FORMAT, "%s: %s is %lld; it must be at least %lld", what, key, (long long)v,
          (long long)lo);
    CHECK(v <= hi, ANVIL_ERR_UNSUPPORTED, "%s: %s is %lld; anvil supports at most %lld", what, key,
          (long long)v, (long long)hi);
    return ANVIL_OK;
}

/* The same for reals. They reach float math (RoPE tables, norms) where a
 * value like 1e-30 or 1e300 silently turns every logit into NaN, so a
 * sane range is enforced, not just the sign. */
static anvil_status real_in_range(const char *what, const char *key, double v, double lo, double hi)
{
    CHECK(isfinite(v) && v >= lo, ANVIL_ERR_FORMAT, "%s: %s is %g; it must be at least %g (and at most %g)",
          what, key, v, lo, hi);
    CHECK(v <= hi, ANVIL_ERR_UNSUPPORTED, "%s: %s is %g; anvil supports at most %g", what, key, v, hi);
    return ANVIL_OK;
}

/* A required size: present, an integer, within [1, hi]. */
static anvil_status require_size(const json_t *root, const char *key, const char *what, int64_t hi,
                                 int64_t *out)
{
    TRY(anvil_json_require_int(root, NULL, key, what, out));
    return int_in_range(what, key, *out, 1, hi);
}

/* LongRoPE's parameters (check_rope), head_dim being the config's. */
static anvil_status check_longrope(const anvil_rope_config *r, int64_t head_dim, const char *what, const char *obj)
{
    char key[96];
    CHECK(head_dim / 2 <= ANVIL_MAX_ROPE_EXT_FACTORS, ANVIL_ERR_UNSUPPORTED,
          "%s: longrope with head_dim %lld needs %lld factors; anvil supports at most %d (head_dim %d)", what,
          (long long)head_dim, (long long)(head_dim / 2), ANVIL_MAX_ROPE_EXT_FACTORS,
          2 * ANVIL_MAX_ROPE_EXT_FACTORS);
    CHECK(r->n_ext_factors == head_dim / 2, ANVIL_ERR_FORMAT,
          "%s: %s.short_factor and long_factor have %d entries; head_dim %lld needs %lld (head_dim / 2)", what,
          obj, r->n_ext_factors, (long long)head_dim, (long long)(head_dim / 2));
    for (int32_t i = 0; i < r->n_ext_factors; i++) {
        snprintf(key, sizeof key, "%s.short_factor[%d]", obj, i);
        TRY(real_in_range(what, key, r->short_factor[i], ANVIL_MIN_ROPE_EXT_FACTOR, ANVIL_MAX_ROPE_EXT_FACTOR));
        snprintf(key, sizeof key, "%s.long_factor[%d]", obj, i);
        TRY(real_in_range(what, key, r->long_factor[i], ANVIL_MIN_ROPE_EXT_FACTOR, ANVIL_MAX_ROPE_EXT_FACTOR));
    }
    snprintf(key, sizeof key, "%s.factor", obj);
    /* given, it was bounded as linear's is; derived, only its sign matters
     * (it reaches nothing but the attention factor, bounded below) */
    CHECK(isfinite(r->factor) && r->factor > 0, ANVIL_ERR_FORMAT, "%s: %s must be positive, got %g", what, key,
          r->factor);
    snprintf(key, sizeof key, "%s.attention_factor", obj);
    TRY(real_in_range(what, key, r->attention_factor, ANVIL_MIN_ROPE_ATTENTION_FACTOR,
                      ANVIL_MAX_ROPE_ATTENTION_FACTOR));
    return int_in_range(what, "original_max_position_embeddings", r->original_max_position, 1, ANVIL_MAX_CONTEXT);
}

/* YaRN's parameters (parse_yarn). */
static anvil_status check_yarn(const anvil_rope_config *r, const char *what, const char *obj)
{
    char key[96];
    snprintf(key, sizeof key, "%s.factor", obj);
    TRY(real_in_range(what, key, r->factor, ANVIL_MIN_ROPE_FACTOR, ANVIL_MAX_ROPE_FACTOR));
    snprintf(key, sizeof key, "%s.original_max_position_embeddings", obj);
    TRY(int_in_range(what, key, r->original_max_position, 1, ANVIL_MAX_CONTEXT));
    snprintf(key, sizeof key, "%s.beta_fast", obj);
    TRY(real_in_range(what, key, r->beta_fast, 1e-6, ANVIL_MAX_YARN_BETA));
    snprintf(key, sizeof key, "%s.beta_slow", obj);
    TRY(real_in_range(what, key, r->beta_slow, 1e-6, ANVIL_MAX_YARN_BETA));
    snprintf(key, sizeof key, "%s.mscale", obj);
    TRY(real_in_range(what, key, r->mscale, 0.0, ANVIL_MAX_YARN_MSCALE));
    snprintf(key, sizeof key, "%s.mscale_all_dim", obj);
    TRY(real_in_range(what, key, r->mscale_all_dim, 0.0, ANVIL_MAX_YARN_MSCALE));
    CHECK(r->truncate == 0 || r->truncate == 1, ANVIL_ERR_INVALID_ARG, "%s: %s.truncate must be 0 or 1", what,
          obj);
    snprintf(key, sizeof key, "%s.attention_factor", obj);
    return real_in_range(what, key, r->attention_factor, ANVIL_MIN_ROPE_ATTENTION_FACTOR,
                         ANVIL_MAX_ROPE_ATTENTION_FACTOR);
}

/* RoPE parameters; obj names the object they came from, for messages. */
static anvil_status check_rope(const anvil_rope_config *r, int64_t head_dim, const char *what, const char *obj)
{
    char key[96];
    CHECK(r->theta > 0, ANVIL_ERR_FORMAT, "%s: rope_theta must be positive, got %g", what, r->theta);
    TRY(real_in_range(what, "rope_theta", r->theta, ANVIL_MIN_ROPE_THETA, ANVIL_MAX_ROPE_THETA));
    switch (r->type) {
    case ANVIL_ROPE_DEFAULT:
        return ANVIL_OK;
    case ANVIL_ROPE_LONGROPE:
        return check_longrope(r, head_dim, what, obj);
    case ANVIL_ROPE_LINEAR:
    case ANVIL_ROPE_LLAMA3:
        break;
    case ANVIL_ROPE_YARN:
        return check_yarn(r, what, obj);
    default:
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "%s: RoPE type %d is not supported", what, (int)r->type);
    }
    snprintf(key, sizeof key, "%s.factor", obj);
    CHECK(r->factor > 0, ANVIL_ERR_FORMAT, "%s: %s must be positive, got %g", what, key, r->factor);
    TRY(real_in_range(what, key, r->factor, ANVIL_MIN_ROPE_FACTOR, ANVIL_MAX_ROPE_FACTOR));
    if (r->type != ANVIL_ROPE_LLAMA3)
        return ANVIL_OK;
    snprintf(key, sizeof key, "%s.low_freq_factor", obj);
    TRY(real_in_range(what, key, r->low_freq_factor, ANVIL_MIN_ROPE_FREQ_FACTOR, ANVIL_MAX_ROPE_FREQ_FACTOR));
    snprintf(key, sizeof key, "%s.high_freq_factor", obj);
    TRY(real_in_range(what, key, r->high_freq_factor, ANVIL_MIN_ROPE_FREQ_FACTOR,
                      ANVIL_MAX_ROPE_FREQ_FACTOR));
    /* compared in float, as the table is computed: equal floats would
     * divide by zero in the interpolation */
    CHECK((float)r->high_freq_factor > (float)r->low_freq_factor, ANVIL_ERR_FORMAT,
          "%s: %s.high_freq_factor (%g) must be above %s.low_freq_factor (%g)", what, obj,
          r->high_freq_factor, obj, r->low_freq_factor);
    snprintf(key, sizeof key, "%s.original_max_position_embeddings", obj);
    return int_in_range(what, key, r->original_max_position, 1, ANVIL_MAX_CONTEXT);
}

/* Every bound and rule on a parsed (or hand-made) config. The parser checks
 * each field as it reads it too, so that derived values (head_dim) are
 * computed from checked ones; this is the last word. */
static anvil_status check_config(const anvil_model_config *c, const char *what, const char *rope_obj)
{
    TRY(int_in_range(what, "vocab_size", c->vocab_size, 1, ANVIL_MAX_VOCAB_SIZE));
    TRY(int_in_range(what, "hidden_size", c->hidden_size, 1, ANVIL_MAX_HIDDEN_SIZE));
    TRY(int_in_range(what, "intermediate_size", c->intermediate_size, 1, ANVIL_MAX_INTERMEDIATE_SIZE));
    TRY(int_in_range(what, "num_hidden_layers", c->n_layers, 1, ANVIL_MAX_LAYERS));
    TRY(int_in_range(what, "num_attention_heads", c->n_heads, 1, ANVIL_MAX_HEADS));
    TRY(int_in_range(what, "num_key_value_heads", c->n_kv_heads, 1, ANVIL_MAX_HEADS));
    CHECK(c->n_heads % c->n_kv_heads == 0, ANVIL_ERR_FORMAT,
          "%s: num_attention_heads (%lld) must be a multiple of num_key_value_heads (%lld)", what,
          (long long)c->n_heads, (long long)c->n_kv_heads);
    TRY(int_in_range(what, "head_dim", c->head_dim, 1, ANVIL_MAX_HEAD_DIM));
    CHECK(c->head_dim % 2 == 0, ANVIL_ERR_FORMAT, "%s: head_dim must be even (RoPE rotates pairs), got %lld",
          what, (long long)c->head_dim);
    TRY(int_in_range(what, "max_position_embeddings", c->max_position_embeddings, 1, ANVIL_MAX_CONTEXT));
    CHECK(c->rms_norm_eps > 0, ANVIL_ERR_FORMAT, "%s: rms_norm_eps must be positive, got %g", what,
          c->rms_norm_eps);
    TRY(real_in_range(what, "rms_norm_eps", c->rms_norm_eps, ANVIL_MIN_RMS_NORM_EPS, ANVIL_MAX_RMS_NORM_EPS));
    TRY(check_rope(&c->rope, c->head_dim, what, rope_obj));
    CHECK(c->sliding_window >= 0, ANVIL_ERR_FORMAT, "%s: sliding_window must not be negative, got %lld", what,
          (long long)c->sliding_window);
    TRY(int_in_range(what, "sliding_window", c->sliding_window, 0, ANVIL_MAX_CONTEXT));
    CHECK(c->per_layer_window == 0 || c->per_layer_window == 1, ANVIL_ERR_INVALID_ARG,
          "%s: per_layer_window must be 0 or 1", what);
    CHECK(c->hidden_act == ANVIL_ACT_SILU || c->hidden_act == ANVIL_ACT_GELU_TANH, ANVIL_ERR_UNSUPPORTED,
          "%s: hidden activation %d is not supported", what, (int)c->hidden_act);
    if (c->query_pre_attn_scalar != 0)
        TRY(real_in_range(what, "query_pre_attn_scalar", c->query_pre_attn_scalar, ANVIL_MIN_QUERY_PRE_ATTN_SCALAR,
                          ANVIL_MAX_QUERY_PRE_ATTN_SCALAR));
    if (c->attn_logit_softcap != 0)
        TRY(real_in_range(what, "attn_logit_softcapping", c->attn_logit_softcap, ANVIL_MIN_SOFTCAP,
                          ANVIL_MAX_SOFTCAP));
    if (c->final_logit_softcap != 0)
        TRY(real_in_range(what, "final_logit_softcapping", c->final_logit_softcap, ANVIL_MIN_SOFTCAP,
                          ANVIL_MAX_SOFTCAP));
    CHECK(c->dtype == ANVIL_DTYPE_F32 || c->dtype == ANVIL_DTYPE_F16 || c->dtype == ANVIL_DTYPE_BF16,
          ANVIL_ERR_UNSUPPORTED, "%s: dtype %d is not supported (float32, float16, bfloat16)", what,
          (int)c->dtype);
    CHECK(c->bos_token_id >= -1 && c->pad_token_id >= -1, ANVIL_ERR_FORMAT,
          "%s: token ids must be -1 or more", what);
    CHECK(c->n_eos_token_ids >= 0 && c->n_eos_token_ids <= ANVIL_MAX_EOS_IDS, ANVIL_ERR_FORMAT,
          "%s: %d eos token ids (at most %d)", what, c->n_eos_token_ids, ANVIL_MAX_EOS_IDS);
    for (int i = 0; i < c->n_eos_token_ids; i++)
        CHECK(c->eos_token_ids[i] >= 0, ANVIL_ERR_FORMAT, "%s: eos_token_id %d is not a valid token id", what,
              c->eos_token_ids[i]);
    if (c->n_experts > 0) {
        TRY(int_in_range(what, "num_experts", c->n_experts, 1, ANVIL_MAX_EXPERTS));
        TRY(int_in_range(what, "num_experts_per_tok", c->n_experts_per_tok, 1, c->n_experts));
        TRY(int_in_range(what, "moe_intermediate_size", c->moe_intermediate_size, 1, ANVIL_MAX_INTERMEDIATE_SIZE));
        TRY(int_in_range(what, "shared_expert_intermediate_size", c->shared_expert_intermediate_size, 0,
                         ANVIL_MAX_INTERMEDIATE_SIZE));
        TRY(int_in_range(what, "decoder_sparse_step", c->decoder_sparse_step, 1, ANVIL_MAX_LAYERS));
        CHECK(c->norm_topk_prob == 0 || c->norm_topk_prob == 1, ANVIL_ERR_INVALID_ARG,
              "%s: norm_topk_prob must be 0 or 1", what);
        /* DeepSeek's router; 0 (a config made by hand) means none, as 1 does */
        const int32_t groups = c->moe_n_group > 1 ? c->moe_n_group : 1;
        TRY(int_in_range(what, "n_group", groups, 1, c->n_experts));
        CHECK(c->n_experts % groups == 0, ANVIL_ERR_FORMAT, "%s: n_group %d does not divide the %d experts", what,
              groups, c->n_experts);
        if (groups > 1) {
            TRY(int_in_range(what, "topk_group", c->moe_topk_group, 1, groups));
            CHECK((int64_t)c->moe_topk_group * (c->n_experts / groups) >= c->n_experts_per_tok, ANVIL_ERR_FORMAT,
                  "%s: topk_group %d of %d groups holds fewer experts than num_experts_per_tok %d", what,
                  c->moe_topk_group, groups, c->n_experts_per_tok);
        }
        if (c->routed_scaling_factor != 0.0)
            TRY(real_in_range(what, "routed_scaling_factor", c->routed_scaling_factor, ANVIL_MIN_ROUTED_SCALE,
                              ANVIL_MAX_ROUTED_SCALE));
        TRY(int_in_range(what, "first_k_dense_replace", c->first_k_dense_replace, 0, c->n_layers));
    }
    if (c->kv_lora_rank != 0) { /* multi-head latent attention (DeepSeek-V2) */
        TRY(int_in_range(what, "kv_lora_rank", c->kv_lora_rank, 1, ANVIL_MAX_LORA_RANK));
        TRY(int_in_range(what, "q_lora_rank", c->q_lora_rank, 0, ANVIL_MAX_LORA_RANK));
        TRY(int_in_range(what, "qk_nope_head_dim", c->qk_nope_head_dim, 1, ANVIL_MAX_HEAD_DIM));
        TRY(int_in_range(what, "v_head_dim", c->v_head_dim, 1, ANVIL_MAX_HEAD_DIM));
    }
    /* the generation defaults size nothing; parse_generation checks them */
    return ANVIL_OK;
}

anvil_status anvil_model_config_check(const anvil_model_config *cfg)
{
    CHECK(cfg != NULL, ANVIL_ERR_INVALID_ARG, "anvil_model_config_check: NULL config");
    return check_config(cfg, "model config", "rope_scaling");
}

/* ------------------------------------------------------------ token ids */

/* One token id: -1 (or any negative: some old configs write -1) or absent
 * or null means none. *present tells whether a non-null value was there. */
static anvil_status get_token_id(const json_t *obj, const char *key, const char *what, int32_t *out,
                                 int *present)
{
    int64_t v = INT64_MIN;
    TRY(anvil_json_get_int(obj, NULL, key, what, INT64_MIN, &v));
    *present = v != INT64_MIN;
    if (!*present)
        return ANVIL_OK;
    CHECK(v <= INT32_MAX, ANVIL_ERR_FORMAT, "%s: field \"%s\" (%lld) is not a valid token id", what, key,
          (long long)v);
    *out = v < 0 ? -1 : (int32_t)v;
    return ANVIL_OK;
}

/* eos_token_id: an integer or a list of them. */
static anvil_status get_eos(const json_t *obj, const char *what, anvil_model_config *c, int *present)
{
    json_t *v = json_object_get(obj, "eos_token_id");
    *present = v != NULL && !json_is_null(v);
    if (!*present)
        return ANVIL_OK;
    if (json_is_integer(v)) {
        int32_t id = -1;
        int p;
        TRY(get_token_id(obj, "eos_token_id", what, &id, &p));
        c->n_eos_token_ids = 0;
        if (id >= 0)
            c->eos_token_ids[c->n_eos_token_ids++] = id;
        return ANVIL_OK;
    }
    CHECK(json_is_array(v), ANVIL_ERR_FORMAT,
          "%s: field \"eos_token_id\" must be an integer or a list of integers, got %s", what,
          anvil_json_type_name(v));
    CHECK(json_array_size(v) <= ANVIL_MAX_EOS_IDS, ANVIL_ERR_UNSUPPORTED,
          "%s: field \"eos_token_id\" lists %zu ids, anvil keeps at most %d", what, json_array_size(v),
          ANVIL_MAX_EOS_IDS);
    c->n_eos_token_ids = 0;
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        CHECK(json_is_integer(e), ANVIL_ERR_FORMAT,
              "%s: field \"eos_token_id\" must be an integer or a list of integers, item %zu is %s", what, i,
              anvil_json_type_name(e));
        json_int_t id = json_integer_value(e);
        CHECK(id >= 0 && id <= INT32_MAX, ANVIL_ERR_FORMAT,
              "%s: eos_token_id item %zu (%lld) is not a valid token id", what, i, (long long)id);
        c->eos_token_ids[c->n_eos_token_ids++] = (int32_t)id;
    }
    return ANVIL_OK;
}

/* ------------------------------------------------------------------ RoPE */

/* obj.key: a list of head_dim / 2 numbers, each bounded, into out. */
static anvil_status parse_ext_factors(const json_t *obj, const char *obj_name, const char *key, const char *what,
                                      int64_t head_dim, float *out)
{
    const json_t *v = json_object_get(obj, key);
    CHECK(v != NULL, ANVIL_ERR_FORMAT, "%s: missing field \"%s.%s\" (longrope needs it)", what, obj_name, key);
    CHECK(json_is_array(v), ANVIL_ERR_FORMAT, "%s: field \"%s.%s\" must be a list of numbers, got %s", what,
          obj_name, key, anvil_json_type_name(v));
    const int64_t half = head_dim / 2;
    CHECK(half <= ANVIL_MAX_ROPE_EXT_FACTORS, ANVIL_ERR_UNSUPPORTED,
          "%s: longrope with head_dim %lld needs %lld factors; anvil supports at most %d (head_dim %d)", what,
          (long long)head_dim, (long long)half, ANVIL_MAX_ROPE_EXT_FACTORS, 2 * ANVIL_MAX_ROPE_EXT_FACTORS);
    CHECK((int64_t)json_array_size(v) == half, ANVIL_ERR_FORMAT,
          "%s: %s.%s has %zu entries; head_dim %lld needs %lld (head_dim / 2)", what, obj_name, key,
          json_array_size(v), (long long)head_dim, (long long)half);
    char name[96];
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        snprintf(name, sizeof name, "%s.%s[%zu]", obj_name, key, i);
        CHECK(json_is_number(e), ANVIL_ERR_FORMAT, "%s: %s must be a number, got %s", what, name,
              anvil_json_type_name(e));
        const double f = json_number_value(e);
        /* bounded before it narrows to float */
        TRY(real_in_range(what, name, f, ANVIL_MIN_ROPE_EXT_FACTOR, ANVIL_MAX_ROPE_EXT_FACTOR));
        out[i] = (float)f;
    }
    return ANVIL_OK;
}

/*
 * LongRoPE's keys, as transformers 5 resolves them (modeling_rope_utils:
 * standardize_rope_params, _compute_longrope_parameters):
 *  - original_max_position_embeddings: the top-level key (Phi-3 writes it
 *    there), else Phi3Config's default 4096 for phi3, else the key inside
 *    the RoPE object, else max_position_embeddings;
 *  - factor: the RoPE object's, else max_position_embeddings / that;
 *  - attention_factor: the RoPE object's, else 1 when factor <= 1, else
 *    sqrt(1 + ln(factor) / ln(original_max_position_embeddings)).
 */
static anvil_status parse_longrope(const json_t *root, const json_t *rope, const char *obj_name, const char *what,
                                   const family *fam, anvil_model_config *c)
{
    anvil_rope_config *r = &c->rope;
    r->type = ANVIL_ROPE_LONGROPE;
    TRY(parse_ext_factors(rope, obj_name, "short_factor", what, c->head_dim, r->short_factor));
    TRY(parse_ext_factors(rope, obj_name, "long_factor", what, c->head_dim, r->long_factor));
    r->n_ext_factors = (int32_t)(c->head_dim / 2);

    char key[96];
    const json_t *top = json_object_get(root, "original_max_position_embeddings");
    if (top != NULL && !json_is_null(top)) {
        TRY(anvil_json_require_int(root, NULL, "original_max_position_embeddings", what, &r->original_max_position));
        snprintf(key, sizeof key, "original_max_position_embeddings");
    } else {
        const int64_t def = fam->phi3_original_max > 0 ? fam->phi3_original_max : c->max_position_embeddings;
        TRY(anvil_json_get_int(rope, obj_name, "original_max_position_embeddings", what, def,
                               &r->original_max_position));
        if (fam->phi3_original_max > 0)
            r->original_max_position = fam->phi3_original_max; /* the class attribute wins, as in transformers */
        snprintf(key, sizeof key, "%s.original_max_position_embeddings", obj_name);
    }
    TRY(int_in_range(what, key, r->original_max_position, 1, ANVIL_MAX_CONTEXT));

    const json_t *f = json_object_get(rope, "factor");
    snprintf(key, sizeof key, "%s.factor", obj_name);
    if (f != NULL && !json_is_null(f)) {
        TRY(anvil_json_require_double(rope, obj_name, "factor", what, &r->factor));
        TRY(real_in_range(what, key, r->factor, ANVIL_MIN_ROPE_FACTOR, ANVIL_MAX_ROPE_FACTOR));
    } else {
        r->factor = (double)c->max_position_embeddings / (double)r->original_max_position;
    }

    const json_t *af = json_object_get(rope, "attention_factor");
    snprintf(key, sizeof key, "%s.attention_factor", obj_name);
    if (af != NULL && !json_is_null(af)) {
        TRY(anvil_json_require_double(rope, obj_name, "attention_factor", what, &r->attention_factor));
    } else if (r->factor <= 1.0) {
        r->attention_factor = 1.0;
    } else {
        /* ln(1) = 0 for an original context of 1 gives inf, which the bound refuses */
        r->attention_factor = sqrt(1.0 + log(r->factor) / log((double)r->original_max_position));
        CHECK(isfinite(r->attention_factor) && r->attention_factor >= ANVIL_MIN_ROPE_ATTENTION_FACTOR &&
                  r->attention_factor <= ANVIL_MAX_ROPE_ATTENTION_FACTOR,
              ANVIL_ERR_UNSUPPORTED,
              "%s: %s derived from factor %g and original_max_position_embeddings %lld is %g; anvil supports %g "
              "to %g",
              what, key, r->factor, (long long)r->original_max_position, r->attention_factor,
              ANVIL_MIN_ROPE_ATTENTION_FACTOR, ANVIL_MAX_ROPE_ATTENTION_FACTOR);
    }
    return real_in_range(what, key, r->attention_factor, ANVIL_MIN_ROPE_ATTENTION_FACTOR,
                         ANVIL_MAX_ROPE_ATTENTION_FACTOR);
}

/* YaRN's get_mscale (transformers' modeling_rope_utils and DeepSeek-V2's
 * yarn_get_mscale): 1 for scale <= 1, else 0.1 mscale ln(scale) + 1. */
double anvil_yarn_mscale(double scale, double mscale)
{
    return scale <= 1.0 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

/*
 * YaRN's keys, as transformers 5 resolves them (_compute_yarn_parameters):
 * factor (required), original_max_position_embeddings (else
 * max_position_embeddings, as standardize_rope_params sets it), beta_fast
 * and beta_slow (a missing or zero one: 32 and 1), mscale and
 * mscale_all_dim (none: 0), truncate (true), attention_factor (else from
 * the mscales, see anvil_rope_config).
 */
static anvil_status parse_yarn(const json_t *rope, const char *obj_name, const char *what, anvil_model_config *c)
{
    anvil_rope_config *r = &c->rope;
    r->type = ANVIL_ROPE_YARN;
    TRY(anvil_json_require_double(rope, obj_name, "factor", what, &r->factor));
    TRY(anvil_json_get_int(rope, obj_name, "original_max_position_embeddings", what, c->max_position_embeddings,
                           &r->original_max_position));
    const char *dkeys[4] = {"beta_fast", "beta_slow", "mscale", "mscale_all_dim"};
    double *dvals[4] = {&r->beta_fast, &r->beta_slow, &r->mscale, &r->mscale_all_dim};
    for (int i = 0; i < 4; i++) {
        const json_t *v = json_object_get(rope, dkeys[i]);
        *dvals[i] = 0.0;
        if (v != NULL && !json_is_null(v))
            TRY(anvil_json_require_double(rope, obj_name, dkeys[i], what, dvals[i]));
    }
    if (r->beta_fast == 0.0) /* python's `or`: absent, null and 0 alike */
        r->beta_fast = 32.0;
    if (r->beta_slow == 0.0)
        r->beta_slow = 1.0;
    TRY(anvil_json_get_bool(rope, obj_name, "truncate", what, 1, &r->truncate));
    const json_t *af = json_object_get(rope, "attention_factor");
    if (af != NULL && !json_is_null(af))
        TRY(anvil_json_require_double(rope, obj_name, "attention_factor", what, &r->attention_factor));
    else if (r->mscale != 0.0 && r->mscale_all_dim != 0.0)
        r->attention_factor =
            anvil_yarn_mscale(r->factor, r->mscale) / anvil_yarn_mscale(r->factor, r->mscale_all_dim);
    else
        r->attention_factor = anvil_yarn_mscale(r->factor, 1.0);
    return ANVIL_OK;
}

static anvil_status parse_rope(const json_t *root, const char *what, const family *fam, anvil_model_config *c)
{
    /* transformers 5 writes rope_parameters (theta inside); older configs
     * write rope_theta next to rope_scaling (null when unscaled). */
    const char *obj_name = "rope_parameters";
    json_t *rope = NULL;
    TRY(anvil_json_get_object(root, NULL, "rope_parameters", what, &rope));
    if (rope == NULL) {
        obj_name = "rope_scaling";
        TRY(anvil_json_get_object(root, NULL, "rope_scaling", what, &rope));
    }
    anvil_rope_config *r = &c->rope;
    r->type = ANVIL_ROPE_DEFAULT;
    r->factor = 1.0;
    TRY(anvil_json_get_double(root, NULL, "rope_theta", what, fam->rope_theta, &r->theta));
    double partial = 1.0;
    TRY(anvil_json_get_double(root, NULL, "partial_rotary_factor", what, 1.0, &partial));
    if (rope != NULL) {
        /* Per-layer-type parameters (Gemma 3 style) nest objects by layer type. */
        CHECK(json_object_get(rope, "full_attention") == NULL &&
                  json_object_get(rope, "sliding_attention") == NULL,
              ANVIL_ERR_UNSUPPORTED, "%s: per-layer-type %s are not supported", what, obj_name);
        TRY(anvil_json_get_double(rope, obj_name, "rope_theta", what, r->theta, &r->theta));
        TRY(anvil_json_get_double(rope, obj_name, "partial_rotary_factor", what, partial, &partial));
        /* before the type's keys: longrope's factor lists would be sized by the rotated part */
        CHECK(partial == 1.0, ANVIL_ERR_UNSUPPORTED,
              "%s: partial_rotary_factor %g is not supported (only 1.0)", what, partial);
        const char *type = NULL;
        TRY(anvil_json_get_string(rope, obj_name, "rope_type", what, NULL, &type));
        if (type == NULL) /* transformers < 4.45 spelled it "type" */
            TRY(anvil_json_get_string(rope, obj_name, "type", what, "default", &type));
        if (strcmp(type, "default") == 0) {
            r->type = ANVIL_ROPE_DEFAULT;
        } else if (strcmp(type, "linear") == 0) {
            r->type = ANVIL_ROPE_LINEAR;
            TRY(anvil_json_require_double(rope, obj_name, "factor", what, &r->factor));
        } else if (strcmp(type, "llama3") == 0) {
            r->type = ANVIL_ROPE_LLAMA3;
            TRY(anvil_json_require_double(rope, obj_name, "factor", what, &r->factor));
            TRY(anvil_json_require_double(rope, obj_name, "low_freq_factor", what, &r->low_freq_factor));
            TRY(anvil_json_require_double(rope, obj_name, "high_freq_factor", what, &r->high_freq_factor));
            TRY(anvil_json_require_int(rope, obj_name, "original_max_position_embeddings", what,
                                       &r->original_max_position));
        } else if (strcmp(type, "longrope") == 0 ||
                   (fam->phi3_original_max > 0 && (strcmp(type, "su") == 0 || strcmp(type, "yarn") == 0))) {
            TRY(parse_longrope(root, rope, obj_name, what, fam, c));
        } else if (strcmp(type, "yarn") == 0 && strcmp(c->model_type, "deepseek_v2") == 0) {
            TRY(parse_yarn(rope, obj_name, what, c));
        } else {
            return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED,
                              "%s: RoPE type \"%s\" is not supported for %s (anvil implements default, linear, "
                              "llama3, longrope, and yarn for deepseek_v2)",
                              what, type, c->model_type);
        }
    }
    CHECK(partial == 1.0, ANVIL_ERR_UNSUPPORTED, "%s: partial_rotary_factor %g is not supported (only 1.0)",
          what, partial);
    return check_rope(r, c->head_dim, what, obj_name);
}

/* ------------------------------------------------------- sliding window */

static anvil_status parse_window(const json_t *root, const char *what, const family *fam,
                                 anvil_model_config *c)
{
    c->sliding_window = 0;
    if (fam->window == WINDOW_NONE)
        return ANVIL_OK;
    if (fam->window == WINDOW_QWEN) {
        int use = 0;
        TRY(anvil_json_get_bool(root, NULL, "use_sliding_window", what, 0, &use));
        if (!use)
            return ANVIL_OK; /* Qwen ignores sliding_window then */
        int64_t max_window_layers = 28;
        TRY(anvil_json_get_int(root, NULL, "max_window_layers", what, 28, &max_window_layers));
        if (max_window_layers >= c->n_layers)
            return ANVIL_OK; /* no layer reaches the sliding ones */
        CHECK(max_window_layers <= 0, ANVIL_ERR_UNSUPPORTED,
              "%s: sliding window on layers %lld and above only (max_window_layers) is not supported", what,
              (long long)max_window_layers);
        TRY(anvil_json_require_int(root, NULL, "sliding_window", what, &c->sliding_window));
    } else {
        TRY(anvil_json_get_int(root, NULL, "sliding_window", what, 0, &c->sliding_window));
    }
    CHECK(c->sliding_window >= 0, ANVIL_ERR_FORMAT, "%s: sliding_window must not be negative, got %lld", what,
          (long long)c->sliding_window);
    return int_in_range(what, "sliding_window", c->sliding_window, 0, ANVIL_MAX_CONTEXT);
}

/* ---------------------------------------------------------------- Gemma 2 */

/* A soft cap: the family default when absent, none (0) when null. */
static anvil_status get_softcap(const json_t *root, const char *key, const char *what, double def, double *out)
{
    const json_t *v = json_object_get(root, key);
    if (v != NULL && json_is_null(v)) {
        *out = 0;
        return ANVIL_OK;
    }
    TRY(anvil_json_get_double(root, NULL, key, what, def, out));
    return real_in_range(what, key, *out, ANVIL_MIN_SOFTCAP, ANVIL_MAX_SOFTCAP);
}

/*
 * Gemma2Config's keys (transformers 5; its defaults where absent):
 * hidden_activation (gelu_pytorch_tanh, the only one anvil has),
 * query_pre_attn_scalar (256), attn_logit_softcapping (50) and
 * final_logit_softcapping (30), null meaning none, sliding_window (4096)
 * on the layers layer_types names sliding_attention; without layer_types
 * every even layer (0, 2, ...) slides, as Gemma2Config fills it in.
 */
static anvil_status parse_gemma2(const json_t *root, const char *what, anvil_model_config *c)
{
    const char *act = NULL;
    TRY(anvil_json_get_string(root, NULL, "hidden_activation", what, NULL, &act));
    if (act == NULL) /* older Gemma configs also wrote hidden_act */
        TRY(anvil_json_get_string(root, NULL, "hidden_act", what, "gelu_pytorch_tanh", &act));
    CHECK(strcmp(act, "gelu_pytorch_tanh") == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: hidden_activation \"%s\" is not supported (anvil implements gelu_pytorch_tanh for gemma2)", what,
          act);
    c->hidden_act = ANVIL_ACT_GELU_TANH;
    TRY(anvil_json_get_double(root, NULL, "query_pre_attn_scalar", what, 256.0, &c->query_pre_attn_scalar));
    TRY(real_in_range(what, "query_pre_attn_scalar", c->query_pre_attn_scalar, ANVIL_MIN_QUERY_PRE_ATTN_SCALAR,
                      ANVIL_MAX_QUERY_PRE_ATTN_SCALAR));
    TRY(get_softcap(root, "attn_logit_softcapping", what, 50.0, &c->attn_logit_softcap));
    TRY(get_softcap(root, "final_logit_softcapping", what, 30.0, &c->final_logit_softcap));
    int bidirectional = 0;
    TRY(anvil_json_get_bool(root, NULL, "use_bidirectional_attention", what, 0, &bidirectional));
    CHECK(!bidirectional, ANVIL_ERR_UNSUPPORTED,
          "%s: use_bidirectional_attention is not supported (anvil's attention is causal)", what);
    if (json_object_get(root, "sliding_window") == NULL)
        c->sliding_window = 4096;

    c->per_layer_window = 1;
    memset(c->sliding_layers, 0, sizeof c->sliding_layers);
    const json_t *types = json_object_get(root, "layer_types");
    if (types == NULL || json_is_null(types)) {
        for (int64_t l = 0; l < c->n_layers; l += 2)
            c->sliding_layers[l / 64] |= 1ull << (l % 64);
        return ANVIL_OK;
    }
    CHECK(json_is_array(types), ANVIL_ERR_FORMAT, "%s: field \"layer_types\" must be a list of strings, got %s",
          what, anvil_json_type_name(types));
    CHECK((int64_t)json_array_size(types) == c->n_layers, ANVIL_ERR_FORMAT,
          "%s: layer_types has %zu entries; num_hidden_layers is %lld", what, json_array_size(types),
          (long long)c->n_layers);
    size_t i;
    json_t *e;
    json_array_foreach(types, i, e)
    {
        CHECK(json_is_string(e), ANVIL_ERR_FORMAT, "%s: layer_types[%zu] must be a string, got %s", what, i,
              anvil_json_type_name(e));
        const char *t = json_string_value(e);
        if (strcmp(t, "sliding_attention") == 0)
            c->sliding_layers[i / 64] |= 1ull << (i % 64);
        else
            CHECK(strcmp(t, "full_attention") == 0, ANVIL_ERR_UNSUPPORTED,
                  "%s: layer_types[%zu] is \"%s\" (anvil implements sliding_attention and full_attention)", what,
                  i, t);
    }
    return ANVIL_OK;
}

/* ---------------------------------------------------------------- mixture of experts */

/* A routing key whose value anvil lacks, refused by name (DeepSeek's and
 * others' routers: sigmoid scores, group-limited top-k, scaled weights). */
static anvil_status moe_router_string(const json_t *root, const char *key, const char *want, const char *what)
{
    const char *v = NULL;
    TRY(anvil_json_get_string(root, NULL, key, what, NULL, &v));
    CHECK(v == NULL || strcmp(v, want) == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: MoE router %s \"%s\" is not supported (anvil implements \"%s\")", what, key, v, want);
    return ANVIL_OK;
}

/*
 * Mixtral (num_local_experts, its experts of intermediate_size, always
 * renormalised), Qwen2-MoE and Qwen3-MoE (num_experts of
 * moe_intermediate_size, norm_topk_prob (default false), Qwen2-MoE's
 * shared expert, dense layers by decoder_sparse_step and mlp_only_layers),
 * with transformers' defaults where a key is absent.
 */
static anvil_status parse_moe(const json_t *root, const char *what, anvil_model_config *c)
{
    const int mixtral = strcmp(c->model_type, "mixtral") == 0;
    const int qwen2 = strcmp(c->model_type, "qwen2_moe") == 0;
    int64_t v;
    /* Mixtral's key; transformers 5 also writes it for Qwen3-MoE (an alias of num_experts), which
     * published Qwen MoE configs write */
    const char *n_key = mixtral || json_object_get(root, "num_local_experts") != NULL ? "num_local_experts"
                                                                                      : "num_experts";
    TRY(anvil_json_get_int(root, NULL, n_key, what, mixtral ? 8 : qwen2 ? 60 : 128, &v));
    TRY(int_in_range(what, n_key, v, 1, ANVIL_MAX_EXPERTS));
    c->n_experts = (int32_t)v;
    TRY(anvil_json_get_int(root, NULL, "num_experts_per_tok", what, mixtral ? 2 : qwen2 ? 4 : 8, &v));
    TRY(int_in_range(what, "num_experts_per_tok", v, 1, c->n_experts));
    c->n_experts_per_tok = (int32_t)v;
    if (mixtral) {
        c->moe_intermediate_size = c->intermediate_size;
        c->norm_topk_prob = 1;
    } else {
        TRY(anvil_json_get_int(root, NULL, "moe_intermediate_size", what, qwen2 ? 1408 : 768, &v));
        TRY(int_in_range(what, "moe_intermediate_size", v, 1, ANVIL_MAX_INTERMEDIATE_SIZE));
        c->moe_intermediate_size = v;
        TRY(anvil_json_get_bool(root, NULL, "norm_topk_prob", what, 0, &c->norm_topk_prob));
    }
    c->shared_expert_intermediate_size = 0;
    if (qwen2) {
        TRY(anvil_json_get_int(root, NULL, "shared_expert_intermediate_size", what, 5632, &v));
        TRY(int_in_range(what, "shared_expert_intermediate_size", v, 0, ANVIL_MAX_INTERMEDIATE_SIZE));
        c->shared_expert_intermediate_size = v;
        int qkv_bias = 1; /* transformers 5's key; older versions always biased q, k and v */
        TRY(anvil_json_get_bool(root, NULL, "qkv_bias", what, 1, &qkv_bias));
        c->attention_bias = qkv_bias;
    }
    c->decoder_sparse_step = 1;
    memset(c->mlp_only_layers, 0, sizeof c->mlp_only_layers);
    if (!mixtral) {
        TRY(anvil_json_get_int(root, NULL, "decoder_sparse_step", what, 1, &v));
        TRY(int_in_range(what, "decoder_sparse_step", v, 1, ANVIL_MAX_LAYERS));
        c->decoder_sparse_step = (int32_t)v;
        const json_t *only = json_object_get(root, "mlp_only_layers");
        if (only != NULL && !json_is_null(only)) {
            CHECK(json_is_array(only), ANVIL_ERR_FORMAT, "%s: field \"mlp_only_layers\" must be a list of layer "
                  "indices, got %s", what, anvil_json_type_name(only));
            size_t i;
            json_t *e;
            json_array_foreach(only, i, e)
            {
                CHECK(json_is_integer(e) && json_integer_value(e) >= 0 && json_integer_value(e) < c->n_layers,
                      ANVIL_ERR_FORMAT, "%s: mlp_only_layers[%zu] must be a layer index below %lld", what, i,
                      (long long)c->n_layers);
                const int64_t l = json_integer_value(e);
                c->mlp_only_layers[l / 64] |= 1ull << (l % 64);
            }
        }
    }
    /* the one router anvil implements: softmax over every expert, plain top-k */
    TRY(moe_router_string(root, "scoring_func", "softmax", what));
    TRY(moe_router_string(root, "topk_method", "greedy", what));
    TRY(anvil_json_get_int(root, NULL, "n_group", what, 1, &v));
    CHECK(v <= 1, ANVIL_ERR_UNSUPPORTED, "%s: MoE router n_group %lld (group-limited routing) is not supported", what,
          (long long)v);
    double scale = 1.0;
    TRY(anvil_json_get_double(root, NULL, "routed_scaling_factor", what, 1.0, &scale));
    CHECK(scale == 1.0, ANVIL_ERR_UNSUPPORTED, "%s: MoE router routed_scaling_factor %g is not supported", what,
          scale);
    int sliding = 0;
    TRY(anvil_json_get_bool(root, NULL, "use_sliding_window", what, 0, &sliding));
    CHECK(!sliding || mixtral, ANVIL_ERR_UNSUPPORTED, "%s: use_sliding_window is not supported for %s", what,
          c->model_type);
    return ANVIL_OK;
}

/* ---------------------------------------------------------------- DeepSeek-V2 */

/* An integer key that may be null (transformers' Optional[int]): def when
 * absent, null_value when null. */
static anvil_status get_int_or_null(const json_t *root, const char *key, const char *what, int64_t def,
                                    int64_t null_value, int64_t *out)
{
    const json_t *v = json_object_get(root, key);
    if (v != NULL && json_is_null(v)) {
        *out = null_value;
        return ANVIL_OK;
    }
    return anvil_json_get_int(root, NULL, key, what, def, out);
}

/* A switch that must be off for deepseek_v2 (what anvil lacks there). */
static anvil_status deepseek_off(const json_t *root, const char *key, const char *what, const char *why)
{
    int v = 0;
    TRY(anvil_json_get_bool(root, NULL, key, what, 0, &v));
    CHECK(!v, ANVIL_ERR_UNSUPPORTED, "%s: %s true is not supported for deepseek_v2 (%s)", what, key, why);
    return ANVIL_OK;
}

/*
 * DeepseekV2Config's keys with its defaults (transformers 5.17,
 * models/deepseek_v2): multi-head latent attention (q_lora_rank null: a
 * plain q_proj), the experts (n_routed_experts of moe_intermediate_size,
 * n_shared_experts of the same size summed ungated, layers from
 * first_k_dense_replace on), the router (softmax scores; topk_method
 * greedy, or group_limited_greedy over n_group groups keeping topk_group;
 * routed_scaling_factor). What transformers' DeepseekV2 ignores but the
 * original remote code used (moe_layer_freq, norm_topk_prob) is refused
 * unless it is the value both agree on, and what anvil lacks (biases, other
 * routers) is refused by name. head_dim (qk_rope_head_dim) is read with
 * the other sizes in parse_config.
 */
static anvil_status parse_deepseek2(const json_t *root, const char *what, anvil_model_config *c)
{
    int64_t v;
    TRY(get_int_or_null(root, "q_lora_rank", what, 1536, 0, &v));
    TRY(int_in_range(what, "q_lora_rank", v, 0, ANVIL_MAX_LORA_RANK));
    c->q_lora_rank = v;
    TRY(anvil_json_get_int(root, NULL, "kv_lora_rank", what, 512, &c->kv_lora_rank));
    TRY(anvil_json_get_int(root, NULL, "qk_nope_head_dim", what, 128, &c->qk_nope_head_dim));
    TRY(anvil_json_get_int(root, NULL, "v_head_dim", what, 128, &c->v_head_dim));
    TRY(deepseek_off(root, "attention_bias", what, "anvil's latent attention has no biases"));
    TRY(deepseek_off(root, "mlp_bias", what, "anvil's experts have no biases"));
    const char *act = NULL;
    TRY(anvil_json_get_string(root, NULL, "hidden_act", what, "silu", &act));
    CHECK(strcmp(act, "silu") == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: hidden_act \"%s\" is not supported for deepseek_v2 (anvil implements silu)", what, act);

    TRY(get_int_or_null(root, "n_routed_experts", what, 64, 0, &v));
    CHECK(v >= 1, ANVIL_ERR_UNSUPPORTED, "%s: n_routed_experts %lld: anvil runs deepseek_v2 with experts", what,
          (long long)v);
    TRY(int_in_range(what, "n_routed_experts", v, 1, ANVIL_MAX_EXPERTS));
    c->n_experts = (int32_t)v;
    TRY(get_int_or_null(root, "num_experts_per_tok", what, 0, 0, &v));
    TRY(int_in_range(what, "num_experts_per_tok", v, 1, c->n_experts));
    c->n_experts_per_tok = (int32_t)v;
    TRY(anvil_json_get_int(root, NULL, "moe_intermediate_size", what, 1407, &v));
    TRY(int_in_range(what, "moe_intermediate_size", v, 1, ANVIL_MAX_INTERMEDIATE_SIZE));
    c->moe_intermediate_size = v;
    TRY(get_int_or_null(root, "n_shared_experts", what, 2, 0, &v));
    TRY(int_in_range(what, "n_shared_experts", v, 0, ANVIL_MAX_EXPERTS));
    c->shared_expert_intermediate_size = v * c->moe_intermediate_size; /* both bounded: no overflow */
    TRY(int_in_range(what, "moe_intermediate_size x n_shared_experts", c->shared_expert_intermediate_size, 0,
                     ANVIL_MAX_INTERMEDIATE_SIZE));
    TRY(anvil_json_get_int(root, NULL, "first_k_dense_replace", what, 0, &v));
    TRY(int_in_range(what, "first_k_dense_replace", v, 0, c->n_layers));
    c->first_k_dense_replace = (int32_t)v;
    TRY(get_int_or_null(root, "moe_layer_freq", what, 1, 1, &v));
    CHECK(v == 1, ANVIL_ERR_UNSUPPORTED,
          "%s: moe_layer_freq %lld is not supported (transformers' DeepseekV2 puts experts on every layer from "
          "first_k_dense_replace on: 1)",
          what, (long long)v);
    int norm = 0;
    TRY(anvil_json_get_bool(root, NULL, "norm_topk_prob", what, 0, &norm));
    CHECK(!norm, ANVIL_ERR_UNSUPPORTED,
          "%s: MoE router norm_topk_prob true is not supported for deepseek_v2 (transformers' DeepseekV2 "
          "ignores it, the original code divides by the sum)",
          what);
    c->norm_topk_prob = 0;
    c->decoder_sparse_step = 1;
    memset(c->mlp_only_layers, 0, sizeof c->mlp_only_layers);

    TRY(moe_router_string(root, "scoring_func", "softmax", what));
    const char *method = NULL;
    TRY(anvil_json_get_string(root, NULL, "topk_method", what, "greedy", &method));
    const int grouped = strcmp(method, "group_limited_greedy") == 0;
    CHECK(grouped || strcmp(method, "greedy") == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: MoE router topk_method \"%s\" is not supported (anvil implements greedy and "
          "group_limited_greedy)",
          what, method);
    c->moe_n_group = c->moe_topk_group = 1;
    if (grouped) {
        TRY(get_int_or_null(root, "n_group", what, 0, 0, &v));
        TRY(int_in_range(what, "n_group", v, 1, c->n_experts));
        CHECK(c->n_experts % v == 0, ANVIL_ERR_FORMAT, "%s: n_group %lld does not divide n_routed_experts %d", what,
              (long long)v, c->n_experts);
        c->moe_n_group = (int32_t)v;
        TRY(get_int_or_null(root, "topk_group", what, 0, 0, &v));
        TRY(int_in_range(what, "topk_group", v, 1, c->moe_n_group));
        c->moe_topk_group = (int32_t)v;
    }
    TRY(anvil_json_get_double(root, NULL, "routed_scaling_factor", what, 1.0, &c->routed_scaling_factor));
    return ANVIL_OK;
}

/* ---------------------------------------------------------------- GPT-2 */

/* A GPT-2 switch whose value anvil lacks: refused by name. */
static anvil_status gpt2_switch(const json_t *root, const char *key, const char *what, int def, int want,
                                const char *why)
{
    int v = def;
    TRY(anvil_json_get_bool(root, NULL, key, what, def, &v));
    CHECK(v == want, ANVIL_ERR_UNSUPPORTED, "%s: %s %s is not supported (%s)", what, key, v ? "true" : "false",
          why);
    return ANVIL_OK;
}

/*
 * GPT2Config's keys (its defaults where absent): vocab_size (50257), n_embd
 * (768), n_layer (12), n_head (12), n_positions (1024), n_inner (null: 4 *
 * n_embd), layer_norm_epsilon (1e-5, read with the other norms' eps),
 * activation_function (gelu_new; gelu_pytorch_tanh is the same function,
 * anything else is refused by name). The switches of GPT2Attention anvil
 * lacks are refused by name: scale_attn_weights false (no 1/sqrt(head_dim)),
 * scale_attn_by_inverse_layer_idx true, add_cross_attention true.
 * reorder_and_upcast_attn is accepted either way: it computes the scores
 * in f32, which anvil's attention always does.
 */
static anvil_status parse_gpt2(const json_t *root, const char *what, anvil_model_config *c)
{
    TRY(anvil_json_get_int(root, NULL, "vocab_size", what, 50257, &c->vocab_size));
    TRY(int_in_range(what, "vocab_size", c->vocab_size, 1, ANVIL_MAX_VOCAB_SIZE));
    TRY(anvil_json_get_int(root, NULL, "n_embd", what, 768, &c->hidden_size));
    TRY(int_in_range(what, "n_embd", c->hidden_size, 1, ANVIL_MAX_HIDDEN_SIZE));
    TRY(anvil_json_get_int(root, NULL, "n_layer", what, 12, &c->n_layers));
    TRY(int_in_range(what, "n_layer", c->n_layers, 1, ANVIL_MAX_LAYERS));
    TRY(anvil_json_get_int(root, NULL, "n_head", what, 12, &c->n_heads));
    TRY(int_in_range(what, "n_head", c->n_heads, 1, ANVIL_MAX_HEADS));
    TRY(anvil_json_get_int(root, NULL, "n_positions", what, 1024, &c->max_position_embeddings));
    TRY(int_in_range(what, "n_positions", c->max_position_embeddings, 1, ANVIL_MAX_CONTEXT));
    const json_t *inner = json_object_get(root, "n_inner");
    if (inner == NULL || json_is_null(inner)) {
        c->intermediate_size = 4 * c->hidden_size; /* bounded: hidden <= 65536 */
    } else {
        TRY(anvil_json_get_int(root, NULL, "n_inner", what, 0, &c->intermediate_size));
    }
    TRY(int_in_range(what, "n_inner", c->intermediate_size, 1, ANVIL_MAX_INTERMEDIATE_SIZE));
    const char *act = NULL;
    TRY(anvil_json_get_string(root, NULL, "activation_function", what, "gelu_new", &act));
    CHECK(strcmp(act, "gelu_new") == 0 || strcmp(act, "gelu_pytorch_tanh") == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: activation_function \"%s\" is not supported (anvil implements gelu_new and gelu_pytorch_tanh, "
          "the tanh approximation, for gpt2)",
          what, act);
    c->hidden_act = ANVIL_ACT_GELU_TANH;
    TRY(gpt2_switch(root, "scale_attn_weights", what, 1, 1, "anvil scales attention scores by 1/sqrt(head_dim)"));
    TRY(gpt2_switch(root, "scale_attn_by_inverse_layer_idx", what, 0, 0,
                    "anvil has no per-layer attention scale"));
    TRY(gpt2_switch(root, "add_cross_attention", what, 0, 0, "anvil runs decoder-only models"));
    int reorder = 0;
    TRY(anvil_json_get_bool(root, NULL, "reorder_and_upcast_attn", what, 0, &reorder));
    return ANVIL_OK;
}

/* ---------------------------------------------------------------- config */

/* The key RoPE parameters were read from, for messages. */
static const char *rope_obj_name(const json_t *root)
{
    const json_t *p = json_object_get(root, "rope_parameters");
    return p != NULL && !json_is_null(p) ? "rope_parameters" : "rope_scaling";
}

static anvil_status parse_config(const json_t *root, const char *what, anvil_model_config *c)
{
    CHECK(json_is_object(root), ANVIL_ERR_FORMAT, "%s: the top level must be a JSON object, got %s", what,
          anvil_json_type_name(root));

    json_t *archs = json_object_get(root, "architectures");
    if (archs != NULL && !json_is_null(archs)) {
        CHECK(json_is_array(archs), ANVIL_ERR_FORMAT,
              "%s: field \"architectures\" must be a list of strings, got %s", what,
              anvil_json_type_name(archs));
        if (json_array_size(archs) > 0) {
            json_t *a0 = json_array_get(archs, 0);
            CHECK(json_is_string(a0), ANVIL_ERR_FORMAT,
                  "%s: field \"architectures\" must be a list of strings, got %s", what,
                  anvil_json_type_name(a0));
            CHECK(strlen(json_string_value(a0)) < sizeof c->architecture, ANVIL_ERR_FORMAT,
                  "%s: architecture name \"%s\" is too long", what, json_string_value(a0));
            strcpy(c->architecture, json_string_value(a0));
        }
    }
    const char *model_type = NULL;
    TRY(anvil_json_require_string(root, NULL, "model_type", what, &model_type));
    CHECK(strlen(model_type) < sizeof c->model_type, ANVIL_ERR_FORMAT, "%s: model_type \"%s\" is too long",
          what, model_type);
    strcpy(c->model_type, model_type);
    const family *fam = find_family(model_type);

    const int gpt2 = strcmp(model_type, "gpt2") == 0;
    if (gpt2) {
        TRY(parse_gpt2(root, what, c));
    } else {
        /* each bounded as it is read: head_dim is derived from two of them */
        TRY(require_size(root, "vocab_size", what, ANVIL_MAX_VOCAB_SIZE, &c->vocab_size));
        TRY(require_size(root, "hidden_size", what, ANVIL_MAX_HIDDEN_SIZE, &c->hidden_size));
        TRY(require_size(root, "intermediate_size", what, ANVIL_MAX_INTERMEDIATE_SIZE, &c->intermediate_size));
        TRY(require_size(root, "num_hidden_layers", what, ANVIL_MAX_LAYERS, &c->n_layers));
        TRY(require_size(root, "num_attention_heads", what, ANVIL_MAX_HEADS, &c->n_heads));
        /* kept as int64 and bounded here: the runtime's max_seq_len (int32)
         * defaults to it, and a value cut to 32 bits would run silently */
        TRY(require_size(root, "max_position_embeddings", what, ANVIL_MAX_CONTEXT, &c->max_position_embeddings));
    }

    TRY(anvil_json_get_int(root, NULL, "num_key_value_heads", what, c->n_heads, &c->n_kv_heads));
    TRY(int_in_range(what, "num_key_value_heads", c->n_kv_heads, 1, ANVIL_MAX_HEADS));
    CHECK(c->n_heads % c->n_kv_heads == 0, ANVIL_ERR_FORMAT,
          "%s: num_attention_heads (%lld) must be a multiple of num_key_value_heads (%lld)", what,
          (long long)c->n_heads, (long long)c->n_kv_heads);
    /* head_dim may be absent or null: hidden_size / heads, as transformers does. */
    /* presence, not a sentinel value: any integer may be written there */
    const json_t *hd = json_object_get(root, "head_dim");
    const int head_dim_given = hd != NULL && !json_is_null(hd);
    if (strcmp(model_type, "deepseek_v2") == 0) {
        /* the rotated part of each head, as DeepseekV2Config sets head_dim */
        TRY(anvil_json_get_int(root, NULL, "qk_rope_head_dim", what, 64, &c->head_dim));
    } else if (head_dim_given) {
        TRY(anvil_json_get_int(root, NULL, "head_dim", what, 0, &c->head_dim));
    } else if (strcmp(model_type, "gemma2") == 0) {
        c->head_dim = 256; /* Gemma2Config's default, not hidden_size / heads */
    } else {
        CHECK(
            c->hidden_size % c->n_heads == 0, ANVIL_ERR_FORMAT,
            "%s: hidden_size (%lld) is not divisible by num_attention_heads (%lld) and no head_dim is given",
            what, (long long)c->hidden_size, (long long)c->n_heads);
        c->head_dim = c->hidden_size / c->n_heads;
    }
    TRY(int_in_range(what, head_dim_given ? "head_dim" : "head_dim (hidden_size / num_attention_heads)",
                     c->head_dim, 1, ANVIL_MAX_HEAD_DIM));
    CHECK(c->head_dim % 2 == 0, ANVIL_ERR_FORMAT, "%s: head_dim must be even (RoPE rotates pairs), got %lld",
          what, (long long)c->head_dim);

    const char *eps_key = gpt2 ? "layer_norm_epsilon" : "rms_norm_eps";
    TRY(anvil_json_get_double(root, NULL, eps_key, what, fam->rms_norm_eps, &c->rms_norm_eps));
    CHECK(c->rms_norm_eps > 0, ANVIL_ERR_FORMAT, "%s: %s must be positive, got %g", what, eps_key,
          c->rms_norm_eps);
    TRY(real_in_range(what, eps_key, c->rms_norm_eps, ANVIL_MIN_RMS_NORM_EPS, ANVIL_MAX_RMS_NORM_EPS));
    TRY(parse_rope(root, what, fam, c));

    TRY(anvil_json_get_bool(root, NULL, "tie_word_embeddings", what, fam->tie_word_embeddings,
                            &c->tie_word_embeddings));
    int attn_bias = 0;
    TRY(anvil_json_get_bool(root, NULL, "attention_bias", what, 0, &attn_bias));
    switch (fam->bias) {
    case BIAS_FROM_KEY:
        c->attention_bias = c->attention_out_bias = attn_bias;
        break;
    case BIAS_NONE:
        c->attention_bias = c->attention_out_bias = 0;
        break;
    case BIAS_QKV:
        c->attention_bias = 1;
        c->attention_out_bias = 0;
        break;
    }
    int mlp_bias = 0;
    TRY(anvil_json_get_bool(root, NULL, "mlp_bias", what, 0, &mlp_bias));
    c->mlp_bias = fam->mlp_bias_key ? mlp_bias : 0;
    c->qk_norm = fam->qk_norm;
    if (gpt2) /* Conv1D layers: every one has a bias */
        c->attention_bias = c->attention_out_bias = c->mlp_bias = 1;
    TRY(parse_window(root, what, fam, c));
    if (strcmp(model_type, "gemma2") == 0)
        TRY(parse_gemma2(root, what, c));
    if (strcmp(model_type, "mixtral") == 0 || strcmp(model_type, "qwen2_moe") == 0 ||
        strcmp(model_type, "qwen3_moe") == 0)
        TRY(parse_moe(root, what, c));
    if (strcmp(model_type, "deepseek_v2") == 0)
        TRY(parse_deepseek2(root, what, c));

    /* transformers 5 writes "dtype", older versions "torch_dtype". */
    const char *dtype = NULL;
    TRY(anvil_json_get_string(root, NULL, "dtype", what, NULL, &dtype));
    if (dtype == NULL)
        TRY(anvil_json_get_string(root, NULL, "torch_dtype", what, "float32", &dtype));
    CHECK(anvil_dtype_parse(dtype, &c->dtype) == 0 &&
              (c->dtype == ANVIL_DTYPE_F32 || c->dtype == ANVIL_DTYPE_F16 || c->dtype == ANVIL_DTYPE_BF16),
          ANVIL_ERR_UNSUPPORTED, "%s: dtype \"%s\" is not supported (float32, float16, bfloat16)", what,
          dtype);

    int present;
    c->bos_token_id = -1;
    c->pad_token_id = -1;
    c->n_eos_token_ids = 0;
    TRY(get_token_id(root, "bos_token_id", what, &c->bos_token_id, &present));
    TRY(get_token_id(root, "pad_token_id", what, &c->pad_token_id, &present));
    TRY(get_eos(root, what, c, &present));
    c->gen_temperature = -1.0f;
    c->gen_top_k = -1;
    c->gen_top_p = -1.0f;
    return check_config(c, what, rope_obj_name(root));
}

/* generation_config.json: sampling defaults, and bos/eos that override
 * config.json's (chat models often list several stop ids only here). */
static anvil_status parse_generation(const json_t *root, const char *what, anvil_model_config *c)
{
    double temperature, top_p;
    int64_t top_k;
    TRY(anvil_json_get_double(root, NULL, "temperature", what, -1.0, &temperature));
    TRY(anvil_json_get_int(root, NULL, "top_k", what, -1, &top_k));
    TRY(anvil_json_get_double(root, NULL, "top_p", what, -1.0, &top_p));
    CHECK(temperature == -1.0 || (temperature >= 0 && isfinite(temperature)), ANVIL_ERR_FORMAT,
          "%s: temperature must not be negative, got %g", what, temperature);
    /* narrowed to float below: a huge value would not fit */
    CHECK(temperature <= ANVIL_MAX_TEMPERATURE, ANVIL_ERR_UNSUPPORTED,
          "%s: temperature is %g; anvil supports at most %g", what, temperature, ANVIL_MAX_TEMPERATURE);
    CHECK(top_k == -1 || (top_k >= 0 && top_k <= INT32_MAX), ANVIL_ERR_FORMAT,
          "%s: top_k must not be negative, got %lld", what, (long long)top_k);
    CHECK(top_p == -1.0 || (top_p > 0 && top_p <= 1), ANVIL_ERR_FORMAT, "%s: top_p must be in (0, 1], got %g",
          what, top_p);
    c->gen_temperature = (float)temperature;
    c->gen_top_k = (int32_t)top_k;
    c->gen_top_p = (float)top_p;

    int present;
    int32_t bos = -1;
    TRY(get_token_id(root, "bos_token_id", what, &bos, &present));
    if (present)
        c->bos_token_id = bos;
    anvil_model_config eos = *c;
    TRY(get_eos(root, what, &eos, &present));
    if (present) {
        memcpy(c->eos_token_ids, eos.eos_token_ids, sizeof c->eos_token_ids);
        c->n_eos_token_ids = eos.n_eos_token_ids;
    }
    return ANVIL_OK;
}

/*
 * After JSON text failed to parse: names the key whose value jansson
 * refused, when there is one (a number too large for it, 1e999), by
 * appending it to the current message. jansson only gives the position.
 */
static void name_bad_key(const char *text, size_t len)
{
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (root != NULL) {
        json_decref(root);
        return;
    }
    /* back from the error to the nearest  "key" :  */
    size_t i = (size_t)err.position < len ? (size_t)err.position : len;
    while (i > 0 && text[i - 1] != ':' && text[i - 1] != '{' && text[i - 1] != '"')
        i--;
    if (i == 0 || text[i - 1] != ':')
        return;
    i--;
    while (i > 0 && (text[i - 1] == ' ' || text[i - 1] == '\t' || text[i - 1] == '\n' || text[i - 1] == '\r'))
        i--;
    if (i == 0 || text[i - 1] != '"')
        return;
    const size_t end = --i;
    while (i > 0 && text[i - 1] != '"')
        i--;
    if (i == 0 || end - i > 128)
        return;
    anvil_error_set(ANVIL_ERR_FORMAT, __FILE__, __LINE__, "%s (the value of \"%.*s\")", anvil_last_error(),
                    (int)(end - i), text + i);
}

anvil_status anvil_model_config_parse(const char *json_text, anvil_model_config *out)
{
    CHECK(out != NULL && json_text != NULL, ANVIL_ERR_INVALID_ARG, "anvil_model_config_parse: NULL argument");
    memset(out, 0, sizeof *out);
    json_t *root = NULL;
    anvil_status st = anvil_json_parse(json_text, strlen(json_text), "config.json", &root);
    if (st != ANVIL_OK) {
        name_bad_key(json_text, strlen(json_text));
        return st;
    }
    st = parse_config(root, "config.json", out);
    json_decref(root);
    if (st != ANVIL_OK)
        memset(out, 0, sizeof *out);
    return st;
}

/* One JSON file of the model (what: its place, for messages), parsed; a
 * number too large for it names its key. */
static anvil_status parse_model_json(const char *text, size_t len, const char *what, json_t **root)
{
    anvil_status st = anvil_json_parse(text, len, what, root);
    if (st == ANVIL_ERR_FORMAT)
        name_bad_key(text, len);
    return st;
}

anvil_status anvil_model_config_load(const char *dir, anvil_model_config *out)
{
    CHECK(out != NULL && dir != NULL, ANVIL_ERR_INVALID_ARG, "anvil_model_config_load: NULL argument");
    memset(out, 0, sizeof *out);
    anvil_model_files *mf = NULL;
    TRY(anvil_model_files_open(dir, &mf));
    char what[4200];
    const char *text;
    size_t len;
    json_t *root = NULL;
    anvil_status st = anvil_model_files_get(mf, "config.json", &text, &len);
    if (st == ANVIL_OK)
        st = parse_model_json(text, len, anvil_model_files_where(mf, "config.json", what, sizeof what), &root);
    if (st == ANVIL_OK)
        st = parse_config(root, what, out);
    json_decref(root);
    root = NULL;
    if (st == ANVIL_OK && anvil_model_files_has(mf, "generation_config.json")) {
        st = anvil_model_files_get(mf, "generation_config.json", &text, &len);
        if (st == ANVIL_OK)
            st = parse_model_json(text, len, anvil_model_files_where(mf, "generation_config.json", what, sizeof what),
                                  &root);
        if (st == ANVIL_OK && !json_is_object(root))
            st = ANVIL_FAIL(ANVIL_ERR_FORMAT, "%s: the top level must be a JSON object", what);
        if (st == ANVIL_OK)
            st = parse_generation(root, what, out);
        json_decref(root);
    }
    anvil_model_files_close(mf);
    if (st != ANVIL_OK)
        memset(out, 0, sizeof *out);
    return st;
}
