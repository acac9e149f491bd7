/*
 * Pre-quantized checkpoints' configs (quant_config.h). Each format's
 * parser reads only the keys that change the bytes or their meaning, and
 * refuses the variants whose bytes anvil would misread: a wrong guess here
 * is a model that loads and talks nonsense.
 */
#include "io/quant_config.h"

#include <fnmatch.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/error.h"
#include "core/fileutil.h"
#include "core/json_util.h"

const char *anvil_qformat_name(anvil_qformat f)
{
    switch (f) {
    case ANVIL_QFORMAT_NONE: return "none";
    case ANVIL_QFORMAT_MODELOPT: return "modelopt";
    case ANVIL_QFORMAT_FP8: return "fp8";
    case ANVIL_QFORMAT_CT_FLOAT: return "compressed-tensors float-quantized";
    case ANVIL_QFORMAT_CT_INT: return "compressed-tensors int-quantized";
    case ANVIL_QFORMAT_CT_PACKED: return "compressed-tensors pack-quantized";
    case ANVIL_QFORMAT_AWQ: return "awq";
    case ANVIL_QFORMAT_GPTQ: return "gptq";
    }
    return "?";
}

const char *anvil_qscheme_name(anvil_qscheme s)
{
    switch (s) {
    case ANVIL_QSCHEME_NONE: return "none";
    case ANVIL_QSCHEME_FP8: return "fp8";
    case ANVIL_QSCHEME_INT8: return "int8";
    case ANVIL_QSCHEME_INT4: return "int4";
    }
    return "?";
}

void anvil_quant_config_free(anvil_quant_config *qc)
{
    if (!qc)
        return;
    for (int i = 0; i < qc->n_ignore; i++)
        free(qc->ignore[i]);
    free(qc->ignore);
    memset(qc, 0, sizeof *qc);
}

/* ------------------------------------------------------------- helpers */

/* Appends the strings of the array field `key` (absent or null: nothing)
 * to qc->ignore. */
static anvil_status read_ignore(const json_t *obj, const char *prefix, const char *key, const char *what,
                                anvil_quant_config *qc)
{
    const json_t *arr = json_object_get(obj, key);
    if (!arr || json_is_null(arr))
        return ANVIL_OK;
    CHECK(json_is_array(arr), ANVIL_ERR_FORMAT, "%s: %s%s%s must be an array of module names, got %s", what,
          prefix ? prefix : "", prefix ? "." : "", key, anvil_json_type_name(arr));
    size_t n = json_array_size(arr);
    char **v = realloc(qc->ignore, (size_t)(qc->n_ignore + (int)n) * sizeof *v + 1);
    CHECK(v, ANVIL_ERR_OOM, "out of memory");
    qc->ignore = v;
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_array_get(arr, i);
        CHECK(json_is_string(s), ANVIL_ERR_FORMAT, "%s: %s%s%s[%zu] must be a string, got %s", what,
              prefix ? prefix : "", prefix ? "." : "", key, i, anvil_json_type_name(s));
        char *copy = strdup(json_string_value(s));
        CHECK(copy, ANVIL_ERR_OOM, "out of memory");
        qc->ignore[qc->n_ignore++] = copy;
    }
    return ANVIL_OK;
}

/* An integer field that may also be written as a float with no fraction
 * (some exporters write 128.0); absent gives def. */
static anvil_status get_intish(const json_t *obj, const char *prefix, const char *key, const char *what,
                               int64_t def, int64_t *out)
{
    const json_t *v = json_object_get(obj, key);
    /* range first: casting a double outside int64's range is undefined */
    if (v && json_is_real(v) && fabs(json_real_value(v)) < 9.0e15 &&
        json_real_value(v) == (double)(int64_t)json_real_value(v)) {
        *out = (int64_t)json_real_value(v);
        return ANVIL_OK;
    }
    return anvil_json_get_int(obj, prefix, key, what, def, out);
}

/* --------------------------------------------------------------- modelopt */

/* hf_quant_config.json's "quantization" object, or config.json's
 * quantization_config with quant_method "modelopt" (same keys). */
static anvil_status parse_modelopt(const json_t *q, const char *prefix, const char *what, anvil_quant_config *qc)
{
    const char *algo;
    TRY(anvil_json_require_string(q, prefix, "quant_algo", what, &algo));
    qc->format = ANVIL_QFORMAT_MODELOPT;
    qc->scheme = ANVIL_QSCHEME_FP8;
    qc->bits = 8;
    qc->symmetric = 1;
    if (strcmp(algo, "FP8") == 0) {
        /* per-tensor weight scale, static per-tensor input scale */
        qc->weight_per_tensor = 1;
        qc->act = ANVIL_QUANT_ACT_FP8_STATIC;
    } else if (strcmp(algo, "FP8_PER_CHANNEL_PER_TOKEN") == 0) {
        qc->act = ANVIL_QUANT_ACT_FP8_DYNAMIC;
    } else {
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED,
                          "%s: ModelOpt quant_algo \"%s\" is not supported (anvil reads FP8 and "
                          "FP8_PER_CHANNEL_PER_TOKEN)",
                          what, algo);
    }
    TRY(read_ignore(q, prefix, "exclude_modules", what, qc));
    TRY(read_ignore(q, prefix, "ignore", what, qc));
    /* ModelOpt's KV cache: "FP8" stores k_scale / v_scale per layer (the
     * only one anvil's fp8 cache matches; NVFP4, INT8 are other caches) */
    const json_t *kv = json_object_get(q, "kv_cache_quant_algo");
    if (kv && !json_is_null(kv)) {
        CHECK(json_is_string(kv), ANVIL_ERR_FORMAT, "%s: %s.kv_cache_quant_algo must be a string or null, got %s",
              what, prefix, anvil_json_type_name(kv));
        CHECK(strcmp(json_string_value(kv), "FP8") == 0, ANVIL_ERR_UNSUPPORTED,
              "%s: %s.kv_cache_quant_algo \"%s\" is not supported (anvil's KV cache reads FP8 scales)", what, prefix,
              json_string_value(kv));
        qc->kv_fp8 = 1;
    }
    return ANVIL_OK;
}

/* -------------------------------------------------------------------- fp8 */

/* transformers' FineGrainedFP8Config (weight_block_size, weight_scale_inv)
 * and vLLM's Fp8Config for serialized per-tensor fp8 (weight_scale,
 * input_scale when activation_scheme is static). */
static anvil_status parse_fp8(const json_t *q, const char *what, anvil_quant_config *qc)
{
    const char *px = "quantization_config";
    qc->format = ANVIL_QFORMAT_FP8;
    qc->scheme = ANVIL_QSCHEME_FP8;
    qc->bits = 8;
    qc->symmetric = 1;
    const char *fmt;
    TRY(anvil_json_get_string(q, px, "fmt", what, "e4m3", &fmt));
    CHECK(strcmp(fmt, "e4m3") == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: quantization_config.fmt \"%s\" is not supported (anvil reads e4m3)", what, fmt);
    const char *scheme;
    TRY(anvil_json_get_string(q, px, "activation_scheme", what, "dynamic", &scheme));
    const json_t *block = json_object_get(q, "weight_block_size");
    if (block && !json_is_null(block)) {
        CHECK(json_is_array(block) && json_array_size(block) == 2 && json_is_integer(json_array_get(block, 0)) &&
                  json_is_integer(json_array_get(block, 1)),
              ANVIL_ERR_FORMAT, "%s: quantization_config.weight_block_size must be [rows, columns]", what);
        json_int_t br = json_integer_value(json_array_get(block, 0));
        json_int_t bc = json_integer_value(json_array_get(block, 1));
        CHECK(br > 0 && bc > 0 && br <= 65536 && bc <= 65536, ANVIL_ERR_FORMAT,
              "%s: quantization_config.weight_block_size [%lld, %lld] must be positive", what, (long long)br,
              (long long)bc);
        qc->block_rows = (int32_t)br;
        qc->group = (int32_t)bc;
        /* Block fp8 quantizes activations per token and per 128 columns,
         * which the canonical form has no name for: the weights run
         * weight-only (the activations unrounded, the more exact side). */
        CHECK(strcmp(scheme, "dynamic") == 0, ANVIL_ERR_UNSUPPORTED,
              "%s: quantization_config.activation_scheme \"%s\" with weight_block_size is not supported "
              "(anvil reads \"dynamic\")",
              what, scheme);
        qc->act = ANVIL_QUANT_ACT_NONE;
    } else {
        qc->weight_per_tensor = 1;
        if (strcmp(scheme, "static") == 0)
            qc->act = ANVIL_QUANT_ACT_FP8_STATIC;
        else if (strcmp(scheme, "dynamic") == 0)
            qc->act = ANVIL_QUANT_ACT_FP8_DYNAMIC;
        else
            return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED,
                              "%s: quantization_config.activation_scheme \"%s\" is not supported (static or "
                              "dynamic)",
                              what, scheme);
    }
    qc->ignore_substring = 1;
    TRY(read_ignore(q, px, "modules_to_not_convert", what, qc));
    TRY(read_ignore(q, px, "ignored_layers", what, qc));
    return ANVIL_OK;
}

/* ----------------------------------------------------- compressed-tensors */

static anvil_status ct_strategy(const json_t *args, const char *px, const char *what, int32_t *group,
                                int *per_tensor)
{
    const char *strategy;
    TRY(anvil_json_require_string(args, px, "strategy", what, &strategy));
    *per_tensor = 0;
    *group = 0;
    if (strcmp(strategy, "tensor") == 0) {
        *per_tensor = 1;
    } else if (strcmp(strategy, "channel") == 0) {
    } else if (strcmp(strategy, "group") == 0) {
        int64_t g;
        TRY(get_intish(args, px, "group_size", what, 0, &g));
        CHECK(g > 0 && g <= 65536, ANVIL_ERR_FORMAT, "%s: %s.group_size must be positive with strategy group, got %lld",
              what, px, (long long)g);
        *group = (int32_t)g;
    } else {
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED,
                          "%s: %s.strategy \"%s\" is not supported (tensor, channel or group)", what, px, strategy);
    }
    return ANVIL_OK;
}

/* compressed-tensors' kv_cache_scheme (llm-compressor's KV cache
 * quantization): anvil's fp8 cache is fp8 e4m3 with one static scale per
 * layer for k and one for v, so type float, 8 bits, strategy tensor,
 * symmetric, not dynamic; anything else is another cache, refused by name. */
static anvil_status parse_ct_kv(const json_t *q, const char *what, anvil_quant_config *qc)
{
    const char *px = "quantization_config.kv_cache_scheme";
    const json_t *kv = json_object_get(q, "kv_cache_scheme");
    if (!kv || json_is_null(kv))
        return ANVIL_OK;
    CHECK(json_is_object(kv), ANVIL_ERR_FORMAT, "%s: %s must be an object or null, got %s", what, px,
          anvil_json_type_name(kv));
    int64_t bits;
    TRY(get_intish(kv, px, "num_bits", what, 8, &bits));
    const char *type, *strategy;
    TRY(anvil_json_get_string(kv, px, "type", what, "int", &type));
    TRY(anvil_json_get_string(kv, px, "strategy", what, "tensor", &strategy));
    const json_t *d = json_object_get(kv, "dynamic");
    CHECK(!json_is_string(d), ANVIL_ERR_UNSUPPORTED,
          "%s: %s.dynamic \"%s\" (KV scales computed at run time) is not supported (static scales only)", what, px,
          json_string_value(d));
    int dyn, sym;
    TRY(anvil_json_get_bool(kv, px, "dynamic", what, 0, &dyn));
    TRY(anvil_json_get_bool(kv, px, "symmetric", what, 1, &sym));
    CHECK(strcmp(type, "float") == 0 && bits == 8, ANVIL_ERR_UNSUPPORTED,
          "%s: %s: type %s with num_bits %lld is not supported (anvil's KV cache is fp8: type float, 8 bits)", what,
          px, type, (long long)bits);
    CHECK(strcmp(strategy, "tensor") == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: %s.strategy \"%s\" is not supported (one k and one v scale per layer: strategy tensor)", what, px,
          strategy);
    CHECK(!dyn, ANVIL_ERR_UNSUPPORTED,
          "%s: %s.dynamic true (KV scales computed at run time) is not supported (static scales only)", what, px);
    CHECK(sym, ANVIL_ERR_UNSUPPORTED, "%s: %s.symmetric false: a KV cache with zero points is not supported", what,
          px);
    qc->kv_fp8 = 1;
    return ANVIL_OK;
}

static anvil_status parse_ct(const json_t *q, const char *what, anvil_quant_config *qc)
{
    const char *fmt;
    TRY(anvil_json_get_string(q, "quantization_config", "format", what, NULL, &fmt));
    const char *status;
    TRY(anvil_json_get_string(q, "quantization_config", "quantization_status", what, "compressed", &status));
    CHECK(strcmp(status, "compressed") == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: quantization_config.quantization_status \"%s\": only compressed checkpoints hold quantized "
          "weights",
          what, status);
    json_t *groups;
    TRY(anvil_json_get_object(q, "quantization_config", "config_groups", what, &groups));
    CHECK(groups && json_object_size(groups) > 0, ANVIL_ERR_FORMAT,
          "%s: quantization_config.config_groups is missing or empty", what);
    CHECK(json_object_size(groups) == 1, ANVIL_ERR_UNSUPPORTED,
          "%s: quantization_config.config_groups has %zu groups; anvil reads one scheme for all linears", what,
          json_object_size(groups));
    const char *gname = json_object_iter_key(json_object_iter(groups));
    const json_t *grp = json_object_iter_value(json_object_iter(groups));
    char px[160];
    snprintf(px, sizeof px, "quantization_config.config_groups.%s", gname);
    CHECK(json_is_object(grp), ANVIL_ERR_FORMAT, "%s: %s must be an object", what, px);
    /* newer writers put the format in the group too */
    TRY(anvil_json_get_string(grp, px, "format", what, fmt, &fmt));
    CHECK(fmt, ANVIL_ERR_FORMAT, "%s: quantization_config.format is missing", what);

    json_t *w;
    TRY(anvil_json_get_object(grp, px, "weights", what, &w));
    CHECK(w, ANVIL_ERR_FORMAT, "%s: %s.weights is missing", what, px);
    char wpx[192];
    snprintf(wpx, sizeof wpx, "%s.weights", px);
    int64_t bits;
    TRY(get_intish(w, wpx, "num_bits", what, 8, &bits));
    const char *type;
    TRY(anvil_json_get_string(w, wpx, "type", what, "int", &type));
    int sym;
    TRY(anvil_json_get_bool(w, wpx, "symmetric", what, 1, &sym));
    int dyn;
    TRY(anvil_json_get_bool(w, wpx, "dynamic", what, 0, &dyn));
    CHECK(!dyn, ANVIL_ERR_UNSUPPORTED, "%s: %s.dynamic true (weights quantized at run time) is not supported", what,
          wpx);
    const char *actorder = NULL;
    const json_t *ao = json_object_get(w, "actorder");
    if (ao && json_is_string(ao))
        actorder = json_string_value(ao);
    /* "weight" act order keeps the columns in place (only the quantization
     * order changed); "group" stores a g_idx anvil does not read yet. */
    CHECK(!actorder || strcmp(actorder, "weight") == 0 || strcmp(actorder, "static") == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: %s.actorder \"%s\" is not supported (weight_g_idx is not read)", what, wpx, actorder);
    int per_tensor;
    TRY(ct_strategy(w, wpx, what, &qc->group, &per_tensor));
    qc->weight_per_tensor = per_tensor;
    qc->bits = (int)bits;
    qc->symmetric = sym;

    if (strcmp(fmt, "float-quantized") == 0) {
        CHECK(strcmp(type, "float") == 0 && bits == 8, ANVIL_ERR_UNSUPPORTED,
              "%s: %s: float-quantized with type %s and num_bits %lld is not supported (float, 8: fp8 e4m3)",
              what, wpx, type, (long long)bits);
        CHECK(sym, ANVIL_ERR_UNSUPPORTED, "%s: %s.symmetric false: fp8 weights with zero points are not supported",
              what, wpx);
        qc->format = ANVIL_QFORMAT_CT_FLOAT;
        qc->scheme = ANVIL_QSCHEME_FP8;
    } else if (strcmp(fmt, "int-quantized") == 0 || strcmp(fmt, "naive-quantized") == 0) {
        CHECK(strcmp(type, "int") == 0 && bits == 8, ANVIL_ERR_UNSUPPORTED,
              "%s: %s: %s with type %s and num_bits %lld is not supported (int, 8)", what, wpx, fmt, type,
              (long long)bits);
        CHECK(sym, ANVIL_ERR_UNSUPPORTED,
              "%s: %s.symmetric false: int8 weights with zero points are not supported (the canonical int8 has "
              "none)",
              what, wpx);
        qc->format = ANVIL_QFORMAT_CT_INT;
        qc->scheme = ANVIL_QSCHEME_INT8;
    } else if (strcmp(fmt, "pack-quantized") == 0) {
        CHECK(strcmp(type, "int") == 0 && (bits == 4 || bits == 8), ANVIL_ERR_UNSUPPORTED,
              "%s: %s.num_bits %lld (type %s) is not supported in pack-quantized (int 4 or 8)", what, wpx,
              (long long)bits, type);
        CHECK(bits == 4 || sym, ANVIL_ERR_UNSUPPORTED,
              "%s: %s.symmetric false: int8 weights with zero points are not supported", what, wpx);
        qc->format = ANVIL_QFORMAT_CT_PACKED;
        qc->scheme = bits == 4 ? ANVIL_QSCHEME_INT4 : ANVIL_QSCHEME_INT8;
        CHECK(bits == 8 || !per_tensor, ANVIL_ERR_UNSUPPORTED,
              "%s: %s.strategy tensor with 4 bits is not supported (channel or group)", what, wpx);
    } else {
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED,
                          "%s: compressed-tensors format \"%s\" is not supported (float-quantized, int-quantized, "
                          "naive-quantized, pack-quantized)",
                          what, fmt);
    }

    json_t *in;
    TRY(anvil_json_get_object(grp, px, "input_activations", what, &in));
    if (in) {
        char ipx[192];
        snprintf(ipx, sizeof ipx, "%s.input_activations", px);
        CHECK(qc->scheme == ANVIL_QSCHEME_FP8, ANVIL_ERR_UNSUPPORTED,
              "%s: %s: quantized activations with %s weights are not supported (only fp8 W8A8)", what, ipx,
              anvil_qscheme_name(qc->scheme));
        int64_t ibits;
        TRY(get_intish(in, ipx, "num_bits", what, 8, &ibits));
        const char *itype;
        TRY(anvil_json_get_string(in, ipx, "type", what, "int", &itype));
        CHECK(ibits == 8 && strcmp(itype, "float") == 0, ANVIL_ERR_UNSUPPORTED,
              "%s: %s: %s %lld-bit activations are not supported (fp8 only)", what, ipx, itype, (long long)ibits);
        int idyn;
        TRY(anvil_json_get_bool(in, ipx, "dynamic", what, 0, &idyn));
        const char *istrat;
        TRY(anvil_json_get_string(in, ipx, "strategy", what, "tensor", &istrat));
        if (idyn) {
            CHECK(strcmp(istrat, "token") == 0 || strcmp(istrat, "tensor") == 0, ANVIL_ERR_UNSUPPORTED,
                  "%s: %s.strategy \"%s\" is not supported for dynamic activations (token or tensor)", what, ipx,
                  istrat);
            /* per-tensor dynamic runs per token: each row's own scale is
             * never coarser than the whole batch's */
            qc->act_per_tensor_dyn = strcmp(istrat, "tensor") == 0;
            qc->act = ANVIL_QUANT_ACT_FP8_DYNAMIC;
        } else {
            CHECK(strcmp(istrat, "tensor") == 0, ANVIL_ERR_UNSUPPORTED,
                  "%s: %s.strategy \"%s\" is not supported for static activations (tensor)", what, ipx, istrat);
            qc->act = ANVIL_QUANT_ACT_FP8_STATIC;
        }
    }
    json_t *out_act;
    TRY(anvil_json_get_object(grp, px, "output_activations", what, &out_act));
    CHECK(!out_act, ANVIL_ERR_UNSUPPORTED, "%s: %s.output_activations: quantized outputs are not supported", what, px);
    const json_t *targets = json_object_get(grp, "targets");
    if (targets && json_is_array(targets)) {
        for (size_t i = 0; i < json_array_size(targets); i++) {
            const char *t = json_string_value(json_array_get(targets, i));
            CHECK(t && strcmp(t, "Linear") == 0, ANVIL_ERR_UNSUPPORTED,
                  "%s: %s.targets[%zu] \"%s\": anvil reads schemes that target \"Linear\"", what, px, i,
                  t ? t : "(not a string)");
        }
    }
    TRY(read_ignore(q, "quantization_config", "ignore", what, qc));
    return parse_ct_kv(q, what, qc);
}

/* -------------------------------------------------------------- awq, gptq */

static anvil_status parse_int4_group(const json_t *q, const char *key, const char *what, anvil_quant_config *qc)
{
    int64_t bits, g;
    TRY(get_intish(q, "quantization_config", "bits", what, 4, &bits));
    CHECK(bits == 4, ANVIL_ERR_UNSUPPORTED, "%s: quantization_config.bits %lld is not supported (%s: 4 bits only)",
          what, (long long)bits, qc->method);
    TRY(get_intish(q, "quantization_config", key, what, 128, &g));
    CHECK(g == -1 || (g > 0 && g <= 65536), ANVIL_ERR_FORMAT,
          "%s: quantization_config.%s %lld must be positive or -1", what, key, (long long)g);
    qc->bits = 4;
    qc->group = g == -1 ? -1 : (int32_t)g;
    qc->scheme = ANVIL_QSCHEME_INT4;
    return ANVIL_OK;
}

static anvil_status parse_awq(const json_t *q, const char *what, anvil_quant_config *qc)
{
    qc->format = ANVIL_QFORMAT_AWQ;
    TRY(parse_int4_group(q, "group_size", what, qc));
    /* AutoAWQ wrote q_group_size / w_bit in some versions */
    if (!json_object_get(q, "group_size") && json_object_get(q, "q_group_size"))
        TRY(parse_int4_group(q, "q_group_size", what, qc));
    const char *version;
    TRY(anvil_json_get_string(q, "quantization_config", "version", what, "gemm", &version));
    CHECK(strcasecmp(version, "gemm") == 0, ANVIL_ERR_UNSUPPORTED,
          "%s: quantization_config.version \"%s\" is not supported (AutoAWQ's GEMM layout only)", what, version);
    int zp;
    TRY(anvil_json_get_bool(q, "quantization_config", "zero_point", what, 1, &zp));
    CHECK(zp, ANVIL_ERR_UNSUPPORTED,
          "%s: quantization_config.zero_point false is not supported (AWQ GEMM with zero points only)", what);
    qc->symmetric = 0;
    qc->ignore_substring = 1;
    TRY(read_ignore(q, "quantization_config", "modules_to_not_convert", what, qc));
    return ANVIL_OK;
}

static anvil_status parse_gptq(const json_t *q, const char *what, anvil_quant_config *qc)
{
    qc->format = ANVIL_QFORMAT_GPTQ;
    TRY(parse_int4_group(q, "group_size", what, qc));
    TRY(anvil_json_get_bool(q, "quantization_config", "desc_act", what, 0, &qc->desc_act));
    TRY(anvil_json_get_bool(q, "quantization_config", "sym", what, 1, &qc->symmetric));
    const char *ckfmt;
    TRY(anvil_json_get_string(q, "quantization_config", "checkpoint_format", what, "gptq", &ckfmt));
    if (strcmp(ckfmt, "gptq_v2") == 0)
        qc->gptq_v2 = 1;
    else
        CHECK(strcmp(ckfmt, "gptq") == 0, ANVIL_ERR_UNSUPPORTED,
              "%s: quantization_config.checkpoint_format \"%s\" is not supported (gptq or gptq_v2)", what, ckfmt);
    TRY(anvil_json_get_bool(q, "quantization_config", "lm_head", what, 0, &qc->lm_head));
    qc->ignore_substring = 1;
    TRY(read_ignore(q, "quantization_config", "modules_to_not_convert", what, qc));
    return ANVIL_OK;
}

/* ------------------------------------------------------------------ entry */

static anvil_status parse_roots(const json_t *config, const json_t *hfq, const char *what, anvil_quant_config *qc)
{
    if (hfq) {
        json_t *producer;
        TRY(anvil_json_get_object(hfq, NULL, "producer", what, &producer));
        const char *name = "modelopt";
        if (producer)
            TRY(anvil_json_get_string(producer, "producer", "name", what, "modelopt", &name));
        CHECK(strcmp(name, "modelopt") == 0, ANVIL_ERR_UNSUPPORTED,
              "%s: hf_quant_config.json producer \"%s\" is not supported (modelopt)", what, name);
        json_t *quant;
        TRY(anvil_json_get_object(hfq, NULL, "quantization", what, &quant));
        CHECK(quant, ANVIL_ERR_FORMAT, "%s: hf_quant_config.json has no \"quantization\" object", what);
        snprintf(qc->method, sizeof qc->method, "modelopt");
        return parse_modelopt(quant, "quantization", what, qc);
    }
    if (!config)
        return ANVIL_OK;
    json_t *q;
    TRY(anvil_json_get_object(config, NULL, "quantization_config", what, &q));
    if (!q)
        return ANVIL_OK;
    const char *method;
    TRY(anvil_json_require_string(q, "quantization_config", "quant_method", what, &method));
    snprintf(qc->method, sizeof qc->method, "%s", method);
    if (strcmp(method, "modelopt") == 0)
        return parse_modelopt(q, "quantization_config", what, qc);
    if (strcmp(method, "fp8") == 0)
        return parse_fp8(q, what, qc);
    if (strcmp(method, "compressed-tensors") == 0)
        return parse_ct(q, what, qc);
    if (strcmp(method, "awq") == 0)
        return parse_awq(q, what, qc);
    if (strcmp(method, "gptq") == 0)
        return parse_gptq(q, what, qc);
    return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED,
                      "%s: quantization_config.quant_method \"%s\" is not supported (anvil reads modelopt, fp8, "
                      "compressed-tensors, awq and gptq)",
                      what, method);
}

anvil_status anvil_quant_config_parse(const char *config_json, const char *hf_quant_json, const char *what,
                                      anvil_quant_config *out)
{
    memset(out, 0, sizeof *out);
    anvil_status st = ANVIL_OK;
    json_t *config = NULL, *hfq = NULL;
    char cwhat[512], hwhat[512];
    snprintf(cwhat, sizeof cwhat, "%s/config.json", what);
    snprintf(hwhat, sizeof hwhat, "%s/hf_quant_config.json", what);
    if (config_json)
        TRY_GOTO(anvil_json_parse(config_json, strlen(config_json), cwhat, &config), fail);
    if (hf_quant_json)
        TRY_GOTO(anvil_json_parse(hf_quant_json, strlen(hf_quant_json), hwhat, &hfq), fail);
    CHECK_GOTO(!config || json_is_object(config), ANVIL_ERR_FORMAT, fail, "%s: must be a JSON object", cwhat);
    CHECK_GOTO(!hfq || json_is_object(hfq), ANVIL_ERR_FORMAT, fail, "%s: must be a JSON object", hwhat);
    TRY_GOTO(parse_roots(config, hfq, hfq ? hwhat : cwhat, out), fail);
    json_decref(config);
    json_decref(hfq);
    return ANVIL_OK;
fail:
    json_decref(config);
    json_decref(hfq);
    anvil_quant_config_free(out);
    return st;
}

anvil_status anvil_quant_config_load(const char *dir, anvil_quant_config *out)
{
    memset(out, 0, sizeof *out);
    char path[4096];
    char *config = NULL, *hfq = NULL;
    size_t len;
    anvil_status st = ANVIL_OK;
    TRY(anvil_path_join(path, sizeof path, dir, "hf_quant_config.json"));
    if (anvil_file_exists(path))
        TRY_GOTO(anvil_read_file(path, &hfq, &len), done);
    TRY_GOTO(anvil_path_join(path, sizeof path, dir, "config.json"), done);
    if (anvil_file_exists(path))
        TRY_GOTO(anvil_read_file(path, &config, &len), done);
    st = anvil_quant_config_parse(config, hfq, dir, out);
done:
    free(config);
    free(hfq);
    return st;
}

/* ---------------------------------------------------------------- linears */

static int ignored(const anvil_quant_config *qc, const char *module)
{
    size_t mlen = strlen(module);
    for (int i = 0; i < qc->n_ignore; i++) {
        const char *p = qc->ignore[i];
        if (strncmp(p, "re:", 3) == 0) {
            /* compressed-tensors: Python's re.match, anchored at the start */
            regex_t re;
            char anchored[512];
            snprintf(anchored, sizeof anchored, "^(%s)", p + 3);
            if (regcomp(&re, anchored, REG_EXTENDED | REG_NOSUB) != 0)
                continue;
            int hit = regexec(&re, module, 0, NULL, 0) == 0;
            regfree(&re);
            if (hit)
                return 1;
            continue;
        }
        if (strpbrk(p, "*?[")) {
            if (fnmatch(p, module, 0) == 0)
                return 1;
            continue;
        }
        size_t plen = strlen(p);
        if (strcmp(p, module) == 0)
            return 1;
        if (plen < mlen && module[mlen - plen - 1] == '.' && strcmp(module + mlen - plen, p) == 0)
            return 1;
        if (qc->ignore_substring && strstr(module, p))
            return 1;
    }
    return 0;
}

static int is_lm_head(const char *module)
{
    size_t n = strlen(module);
    return strcmp(module, "lm_head") == 0 || (n > 8 && strcmp(module + n - 8, ".lm_head") == 0);
}

static anvil_status set_name(char *buf, const char *module, const char *suffix)
{
    int n = snprintf(buf, ANVIL_QNAME_MAX, "%s.%s", module, suffix);
    CHECK(n > 0 && n < ANVIL_QNAME_MAX, ANVIL_ERR_INVALID_ARG, "module name \"%s\" is too long", module);
    return ANVIL_OK;
}

anvil_status anvil_quant_config_linear(const anvil_quant_config *qc, const char *module, anvil_quant_linear *out)
{
    memset(out, 0, sizeof *out);
    CHECK(module && *module, ANVIL_ERR_INVALID_ARG, "module name is empty");
    int skip = qc->format == ANVIL_QFORMAT_NONE || ignored(qc, module);
    /* AutoAWQ never quantizes the LM head, GPTQ only with "lm_head": true */
    if (is_lm_head(module) && (qc->format == ANVIL_QFORMAT_AWQ || (qc->format == ANVIL_QFORMAT_GPTQ && !qc->lm_head)))
        skip = 1;
    if (skip)
        return set_name(out->weight, module, "weight");
    out->scheme = qc->scheme;
    switch (qc->format) {
    case ANVIL_QFORMAT_NONE: break;
    case ANVIL_QFORMAT_MODELOPT:
    case ANVIL_QFORMAT_CT_FLOAT:
    case ANVIL_QFORMAT_CT_INT:
        TRY(set_name(out->weight, module, "weight"));
        TRY(set_name(out->scales, module, "weight_scale"));
        if (qc->act == ANVIL_QUANT_ACT_FP8_STATIC)
            TRY(set_name(out->input_scale, module, "input_scale"));
        break;
    case ANVIL_QFORMAT_FP8:
        TRY(set_name(out->weight, module, "weight"));
        TRY(set_name(out->scales, module, qc->block_rows ? "weight_scale_inv" : "weight_scale"));
        if (qc->act == ANVIL_QUANT_ACT_FP8_STATIC)
            TRY(set_name(out->input_scale, module, "input_scale"));
        break;
    case ANVIL_QFORMAT_CT_PACKED:
        TRY(set_name(out->weight, module, "weight_packed"));
        TRY(set_name(out->scales, module, "weight_scale"));
        TRY(set_name(out->shape, module, "weight_shape"));
        if (!qc->symmetric)
            TRY(set_name(out->zeros, module, "weight_zero_point"));
        break;
    case ANVIL_QFORMAT_AWQ:
        TRY(set_name(out->weight, module, "qweight"));
        TRY(set_name(out->scales, module, "scales"));
        TRY(set_name(out->zeros, module, "qzeros"));
        break;
    case ANVIL_QFORMAT_GPTQ:
        TRY(set_name(out->weight, module, "qweight"));
        TRY(set_name(out->scales, module, "scales"));
        TRY(set_name(out->zeros, module, "qzeros"));
        TRY(set_name(out->g_idx, module, "g_idx"));
        break;
    }
    return ANVIL_OK;
}
