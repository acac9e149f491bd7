/*
 * New weights for a planned network (refit.h): the checks that they fit,
 * and their bytes, from a Hugging Face folder (through the plan's recipes)
 * or an engine file (as stored).
 */
#include "builder/refit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builder/lm_head.h"
#include "builder/manifest.h"
#include "builder/quantize.h"
#include "core/error.h"
#include "io/engine_file.h"
#include "io/safetensors.h"

struct anvil_refit_source {
    const anvil_network *net;
    const anvil_build_plan *plan;
    int check_finite;
    anvil_checkpoint *ck;    /* a folder's */
    anvil_engine_file *f;    /* an engine file's */
    anvil_build_plan *fplan; /* the engine's own plan (checked equal to plan) */
};

/* ------------------------------------------------------------ the config */

/* The shortest text of v that reads back as v ("10000", "1e-05", "0.1"). */
static void fmt_double(double v, char *buf, size_t cap)
{
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, cap, "%.0f", v);
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

static anvil_status changes(const char *key, const char *from, const char *to)
{
    return ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "refit changes %s %s -> %s: build a new engine", key, from, to);
}

static anvil_status diff_i64(const char *key, int64_t want, int64_t have)
{
    if (want == have)
        return ANVIL_OK;
    char a[32], b[32];
    snprintf(a, sizeof a, "%lld", (long long)want);
    snprintf(b, sizeof b, "%lld", (long long)have);
    return changes(key, a, b);
}

static anvil_status diff_f64(const char *key, double want, double have)
{
    if (want == have || (isnan(want) && isnan(have)))
        return ANVIL_OK;
    char a[40], b[40];
    fmt_double(want, a, sizeof a);
    fmt_double(have, b, sizeof b);
    return changes(key, a, b);
}

static anvil_status diff_bool(const char *key, int want, int have)
{
    if (!want == !have)
        return ANVIL_OK;
    return changes(key, want ? "true" : "false", have ? "true" : "false");
}

static const char *rope_type_name(anvil_rope_type t)
{
    static const char *const names[] = {"default", "linear", "llama3", "longrope", "yarn"};
    return t >= 0 && t < 5 ? names[t] : "?";
}

/* [a, b, ...] of n ids, cut short when long. */
static void fmt_ids(const int32_t *ids, int n, char *buf, size_t cap)
{
    size_t at = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n && at < cap; i++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%d", i ? ", " : "", ids[i]);
    if (at < cap)
        snprintf(buf + at, cap - at, "]");
}

anvil_status anvil_refit_check_config(const anvil_model_config *want, const anvil_model_config *have)
{
    if (strcmp(want->architecture, have->architecture) != 0)
        return changes("the architecture", want->architecture, have->architecture);
    if (strcmp(want->model_type, have->model_type) != 0)
        return changes("model_type", want->model_type, have->model_type);
    TRY(diff_i64("vocab_size", want->vocab_size, have->vocab_size));
    TRY(diff_i64("hidden_size", want->hidden_size, have->hidden_size));
    TRY(diff_i64("intermediate_size", want->intermediate_size, have->intermediate_size));
    TRY(diff_i64("num_hidden_layers", want->n_layers, have->n_layers));
    TRY(diff_i64("num_attention_heads", want->n_heads, have->n_heads));
    TRY(diff_i64("num_key_value_heads", want->n_kv_heads, have->n_kv_heads));
    TRY(diff_i64("head_dim", want->head_dim, have->head_dim));
    TRY(diff_i64("max_position_embeddings", want->max_position_embeddings, have->max_position_embeddings));
    TRY(diff_f64("rms_norm_eps", want->rms_norm_eps, have->rms_norm_eps));
    const anvil_rope_config *a = &want->rope, *b = &have->rope;
    if (a->type != b->type)
        return changes("rope_scaling.rope_type", rope_type_name(a->type), rope_type_name(b->type));
    TRY(diff_f64("rope_theta", a->theta, b->theta));
    TRY(diff_f64("rope_scaling.factor", a->factor, b->factor));
    TRY(diff_f64("rope_scaling.low_freq_factor", a->low_freq_factor, b->low_freq_factor));
    TRY(diff_f64("rope_scaling.high_freq_factor", a->high_freq_factor, b->high_freq_factor));
    TRY(diff_i64("rope_scaling.original_max_position_embeddings", a->original_max_position,
                 b->original_max_position));
    TRY(diff_f64("rope_scaling.attention_factor", a->attention_factor, b->attention_factor));
    TRY(diff_i64("the number of rope_scaling.short_factor entries", a->n_ext_factors, b->n_ext_factors));
    for (int32_t i = 0; i < a->n_ext_factors && i < ANVIL_MAX_ROPE_EXT_FACTORS; i++) {
        char key[64];
        snprintf(key, sizeof key, "rope_scaling.short_factor[%d]", i);
        TRY(diff_f64(key, a->short_factor[i], b->short_factor[i]));
        snprintf(key, sizeof key, "rope_scaling.long_factor[%d]", i);
        TRY(diff_f64(key, a->long_factor[i], b->long_factor[i]));
    }
    TRY(diff_bool("tie_word_embeddings", want->tie_word_embeddings, have->tie_word_embeddings));
    /* the output bias and the q/k norms follow model_type and attention_bias */
    TRY(diff_bool("attention_bias", want->attention_bias, have->attention_bias));
    TRY(diff_bool("attention_bias (o_proj)", want->attention_out_bias, have->attention_out_bias));
    TRY(diff_bool("mlp_bias", want->mlp_bias, have->mlp_bias));
    TRY(diff_bool("qk_norm", want->qk_norm, have->qk_norm));
    TRY(diff_i64("sliding_window", want->sliding_window, have->sliding_window));
    /* the tokens that begin and end sequences: not weights, but what the
     * served model does with them would silently stay the old ones */
    TRY(diff_i64("bos_token_id", want->bos_token_id, have->bos_token_id));
    TRY(diff_i64("pad_token_id", want->pad_token_id, have->pad_token_id));
    int same = want->n_eos_token_ids == have->n_eos_token_ids;
    for (int i = 0; same && i < want->n_eos_token_ids; i++)
        same = want->eos_token_ids[i] == have->eos_token_ids[i];
    if (!same) {
        char x[128], y[128];
        fmt_ids(want->eos_token_ids, want->n_eos_token_ids, x, sizeof x);
        fmt_ids(have->eos_token_ids, have->n_eos_token_ids, y, sizeof y);
        return changes("eos_token_id", x, y);
    }
    return ANVIL_OK;
}

/* ------------------------------------------------------------ the source */

/* Re-raises the current error (a recipe that does not fit the new
 * checkpoint: missing tensor, other shape) as a refit that does not fit. */
static anvil_status does_not_fit(const char *path)
{
    return ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "%s does not fit the model: %s", path, anvil_last_error());
}

/* An engine's stored tensors must be the plan's, one for one. */
static anvil_status check_same_plan(const anvil_build_plan *want, const anvil_build_plan *have,
                                    const char *path)
{
    CHECK(want->n_stored == have->n_stored, ANVIL_ERR_INVALID_ARG,
          "%s stores %d tensors, the model %d (fused otherwise: build it with the model's fusion and dtype)",
          path, have->n_stored, want->n_stored);
    for (int32_t s = 0; s < want->n_stored; s++) {
        const anvil_stored *a = &want->stored[s], *b = &have->stored[s];
        CHECK(strcmp(a->name, b->name) == 0, ANVIL_ERR_INVALID_ARG,
              "%s: stored tensor %d is '%s', the model's is '%s' (fused otherwise: build it with the model's "
              "fusion)",
              path, s, b->name, a->name);
        CHECK(a->kind == b->kind, ANVIL_ERR_INVALID_ARG,
              "%s: tensor '%s' is stored as %s, the model's as %s: build it with --dtype %s", path, a->name,
              anvil_dtype_name(b->kind), anvil_dtype_name(a->kind), anvil_dtype_name(a->kind));
        CHECK(a->role == b->role && a->q.group == b->q.group && (a->q.zeros < 0) == (b->q.zeros < 0) &&
                  (a->q.perm < 0) == (b->q.perm < 0) && a->q.act == b->q.act,
              ANVIL_ERR_INVALID_ARG, "%s: tensor '%s' is quantized otherwise than the model's: build it with the "
              "model's --quantize", path, a->name);
        int same = a->n_dims == b->n_dims && a->n == b->n && a->bytes == b->bytes;
        for (int d = 0; same && d < a->n_dims; d++)
            same = a->shape[d] == b->shape[d];
        for (int32_t k = 0; same && k < a->n; k++)
            same = want->members[a->first + k] == have->members[b->first + k];
        if (!same) {
            char x[96], y[96];
            anvil_shape_str(a->shape, a->n_dims, x, sizeof x);
            anvil_shape_str(b->shape, b->n_dims, y, sizeof y);
            return ANVIL_FAIL(ANVIL_ERR_INVALID_ARG,
                              "%s: tensor '%s' has shape %s (of %d weights), the model's %s (of %d)", path,
                              a->name, y, b->n, x, a->n);
        }
    }
    return ANVIL_OK;
}

anvil_status anvil_refit_source_open(const char *path, const anvil_model_config *cfg,
                                     const anvil_network *net, const anvil_build_plan *plan, int check_finite,
                                     anvil_refit_source **out)
{
    *out = NULL;
    CHECK(path != NULL && path[0], ANVIL_ERR_INVALID_ARG, "refit: no weights given");

    anvil_refit_source *src = calloc(1, sizeof *src);
    CHECK(src != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = ANVIL_OK;
    anvil_network *net2 = NULL;
    json_t *jw = NULL, *jh = NULL;
    src->net = net;
    src->plan = plan;
    src->check_finite = check_finite;
    anvil_model_config have;
    TRY_GOTO(anvil_model_config_load(path, &have), fail);
    TRY_GOTO(anvil_refit_check_config(cfg, &have), fail);
    /* equal configs build equal networks today; the network is compared
     * too, so that a config field the comparison does not know yet cannot
     * slip through */
    TRY_GOTO(anvil_model_build_network(&have, &net2), fail);
    if (anvil_lm_head_was_untied(net) && anvil_lm_head_is_tied(net2))
        TRY_GOTO(anvil_lm_head_untie(net2), fail); /* the engine's LM head has its own (quantized) matrix */
    jw = anvil_manifest_network(net);
    jh = anvil_manifest_network(net2);
    CHECK_GOTO(jw && jh, ANVIL_ERR_OOM, fail, "out of memory");
    if (!json_equal(jw, jh)) {
        char why[200];
        anvil_manifest_network_diff(jw, jh, why, sizeof why);
        CHECK_GOTO(0, ANVIL_ERR_INVALID_ARG, fail,
                   "refit: the network of %s is not the model's (%s): build a new engine", path, why);
    }
    if (anvil_engine_file_is_engine(path)) {
        TRY_GOTO(anvil_engine_file_open(path, ANVIL_ST_READ, &src->f), fail);
        /* the engine's plan, read against the model's network (which it
         * was just shown to equal) */
        TRY_GOTO(anvil_manifest_read_plan(src->f, net, &src->fplan), fail);
        TRY_GOTO(check_same_plan(plan, src->fplan, path), fail);
    } else {
        /* a quantized weight is quantized again from the new checkpoint by
         * its converter: round to nearest can be; a pre-quantized
         * checkpoint's weights come from packed tensors this folder's
         * recipes do not name */
        for (int32_t s = 0; s < plan->n_stored; s++)
            CHECK_GOTO(plan->stored[s].q.scales < 0 || plan->stored[s].conv == &anvil_rtn_converter,
                       ANVIL_ERR_UNSUPPORTED, fail,
                       "refit of '%s' (%s, not quantized by anvil build --quantize) from a folder is not "
                       "supported: refit from an engine built from the new weights",
                       plan->stored[s].name, anvil_dtype_name(plan->stored[s].kind));
        TRY_GOTO(anvil_checkpoint_open_ex(path, ANVIL_ST_READ, &src->ck), fail);
        if (anvil_build_check_checkpoint(net, src->ck) != ANVIL_OK) {
            st = does_not_fit(path);
            goto fail;
        }
    }
    json_decref(jw);
    json_decref(jh);
    anvil_network_free(net2);
    *out = src;
    return ANVIL_OK;
fail:
    json_decref(jw);
    json_decref(jh);
    anvil_network_free(net2);
    anvil_refit_source_close(src);
    return st;
}

int anvil_refit_source_is_engine(const anvil_refit_source *src)
{
    return src->f != NULL;
}

anvil_status anvil_refit_source_fill(const anvil_refit_source *src, int32_t s, size_t offset, void *dst,
                                     size_t len, anvil_build_scratch *scratch)
{
    if (src->f != NULL)
        TRY(anvil_engine_file_read(src->f, s, offset, dst, len));
    else
        TRY(anvil_build_fill(src->plan, src->net, src->ck, s, offset, dst, len, scratch));
    if (!src->check_finite)
        return ANVIL_OK;
    const anvil_stored *t = &src->plan->stored[s];
    if (!anvil_stored_kind_is_float(t->kind) || t->role != ANVIL_STORED_WEIGHT)
        return ANVIL_OK; /* quantized: the converter scanned its values; an engine's scales were at its build */
    const size_t es = anvil_dtype_size(t->kind);
    const int64_t i = anvil_find_nonfinite(t->kind, dst, (int64_t)(len / es));
    if (i < 0)
        return ANVIL_OK;
    float v;
    anvil_convert_to_f32(t->kind, (const char *)dst + (size_t)i * es, &v, 1);
    int64_t at;
    const int32_t wi = anvil_build_member_at(src->plan, s, (int64_t)(offset / es) + i, &at);
    return ANVIL_FAIL(ANVIL_ERR_FORMAT, "tensor '%s' holds %s at element %lld: the new weights are damaged",
                      anvil_network_weight(src->net, wi)->name,
                      isnan(v) ? "NaN"
                      : v > 0  ? "+inf"
                               : "-inf",
                      (long long)at);
}

anvil_status anvil_refit_source_check_unchanged(const anvil_refit_source *src)
{
    return src->f ? anvil_engine_file_check_unchanged(src->f) : anvil_checkpoint_check_unchanged(src->ck);
}

void anvil_refit_source_close(anvil_refit_source *src)
{
    if (src == NULL)
        return;
    anvil_checkpoint_close(src->ck);
    anvil_engine_file_close(src->f);
    anvil_build_plan_free(src->fplan);
    free(src);
}
