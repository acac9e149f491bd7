/*
 * anvil_build_engine: a model folder (or a config with random weights)
 * into one engine file. The config, network and build plan are made as the
 * runtime makes them for a folder (with every fused op, which both
 * backends have), then the writer streams each stored tensor's bytes
 * (prepared by anvil_build_fill on several threads, scanned for NaN and
 * infinity) into the file, with the manifest: the model's files verbatim,
 * the build options, the network and the plan (docs/engine-format.md).
 */
#include "anvil/builder.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "anvil/log.h"
#include "anvil/network.h"
#include "builder/awq.h"
#include "builder/kv_manifest.h"
#include "builder/build_plan.h"
#include "builder/lm_head.h"
#include "builder/manifest.h"
#include "builder/random_weights.h"
#include "builder/shard_plan.h"
#include "core/error.h"
#include "core/fileutil.h"
#include "io/engine_file.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "io/kv_scales.h"
#include "runtime/runtime_calib.h"

void anvil_build_options_default(anvil_build_options *o)
{
    memset(o, 0, sizeof *o);
    o->weight_dtype = ANVIL_DTYPE_COUNT;
}

/* What the writer's threads share while filling. */
typedef struct build_job {
    const anvil_build_plan *plan;
    const anvil_network *net;
    const anvil_checkpoint *ck;  /* NULL: random weights */
    pthread_mutex_t mu;
    anvil_build_scratch **free_scratch; /* a pool: one per thread at most */
    int n_free;
} build_job;

static anvil_build_scratch *take_scratch(build_job *j)
{
    anvil_build_scratch *s = NULL;
    pthread_mutex_lock(&j->mu);
    if (j->n_free > 0)
        s = j->free_scratch[--j->n_free];
    pthread_mutex_unlock(&j->mu);
    if (s == NULL && anvil_build_scratch_create(&s) != ANVIL_OK)
        return NULL;
    return s;
}

static void give_scratch(build_job *j, anvil_build_scratch *s)
{
    pthread_mutex_lock(&j->mu);
    j->free_scratch[j->n_free++] = s; /* room for every thread's */
    pthread_mutex_unlock(&j->mu);
}

/* The writer's fill callback: prepared bytes, checked for NaN and inf. */
static anvil_status fill(void *user, int64_t index, size_t offset, void *dst, size_t len)
{
    build_job *j = user;
    anvil_build_scratch *sc = take_scratch(j);
    CHECK(sc != NULL, ANVIL_ERR_OOM, "out of memory for the build's buffers");
    /* no checkpoint: random weights of the plan's seed */
    const anvil_status st = anvil_build_fill(j->plan, j->net, j->ck, (int32_t)index, offset, dst, len, sc);
    give_scratch(j, sc);
    TRY(st);
    const anvil_stored *t = &j->plan->stored[index];
    if (!anvil_stored_kind_is_float(t->kind))
        return ANVIL_OK; /* quantized: the converter scanned the values it rounded */
    const size_t es = anvil_dtype_size(t->kind);
    const int64_t bad = anvil_find_nonfinite(t->kind, dst, (int64_t)(len / es));
    CHECK(bad < 0, ANVIL_ERR_FORMAT, "tensor '%s' holds a NaN or infinity at element %lld: the checkpoint is damaged",
          t->name, (long long)(offset / es) + bad);
    return ANVIL_OK;
}

/* The manifest's "files": each model file the folder (or engine) has, verbatim. */
static anvil_status files_json(anvil_model_files *mf, json_t *files)
{
    for (int i = 0; anvil_model_file_names[i]; i++) {
        const char *name = anvil_model_file_names[i];
        if (!anvil_model_files_has(mf, name))
            continue;
        const char *text;
        size_t len;
        TRY(anvil_model_files_get(mf, name, &text, &len));
        CHECK(json_object_set_new(files, name, json_stringn(text, len)) == 0, ANVIL_ERR_FORMAT,
              "%s: %s is not UTF-8 text", anvil_model_files_path(mf), name);
    }
    return ANVIL_OK;
}

/* AWQ's defaults (anvil_build_options; docs/quantization.md "AWQ"). */
#define CALIB_SEQ_LEN 512
#define CALIB_TOKENS 16384
#define CALIB_ROWS 512

/* The manifest's "build": options and provenance (ci: an AWQ build's calibration). */
static json_t *build_json(const char *model, const anvil_build_options *o, const anvil_build_plan *p,
                          const anvil_calib_info *ci, int untied)
{
    json_t *b = json_object();
    if (b == NULL)
        return NULL;
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    char abs[4096];
    const char *src = realpath(model, abs) ? abs : model;
    int ok = json_object_set_new(b, "dtype", json_string(o->weight_dtype == ANVIL_DTYPE_COUNT
                                                             ? "auto"
                                                             : anvil_dtype_name(o->weight_dtype))) == 0;
    ok &= json_object_set_new(b, "fusion", json_boolean(!o->no_fusion)) == 0;
    ok &= json_object_set_new(b, "random_weights", json_boolean(o->random_weights)) == 0;
    if (o->random_weights)
        ok &= json_object_set_new(b, "seed", json_integer((json_int_t)o->seed)) == 0;
    ok &= json_object_set_new(b, "source", json_string(src)) == 0;
    ok &= json_object_set_new(b, "created", json_string(when)) == 0;
    ok &= json_object_set_new(b, "weight_bytes", json_integer((json_int_t)p->total_bytes)) == 0;
    if (o->quantize != ANVIL_QUANTIZE_NONE) { /* what made the quantized weights (docs/quantization.md) */
        json_t *q = json_pack("{s:s, s:s}", "scheme", anvil_quantize_name(o->quantize), "method",
                              ci ? anvil_awq_converter.method : "rtn");
        if (q != NULL && o->quantize == ANVIL_QUANTIZE_INT4_WO)
            ok &= json_object_set_new(q, "group", json_integer(o->quant_group > 0 ? o->quant_group : 128)) == 0;
        if (q != NULL && o->quantize_lm_head)
            ok &= json_object_set_new(q, "lm_head", json_true()) == 0;
        if (q != NULL && o->quantize == ANVIL_QUANTIZE_FP8)
            ok &= json_object_set_new(q, "act", json_string("fp8_dynamic")) == 0;
        if (q != NULL && ci != NULL) { /* which text, and how much of it */
            const char *slash = strrchr(o->calib_file, '/');
            char hash[17];
            snprintf(hash, sizeof hash, "%016llx", (unsigned long long)ci->xxh64);
            json_t *c = json_pack("{s:s, s:s, s:I, s:I, s:i, s:i, s:b}", "file", slash ? slash + 1 : o->calib_file,
                                  "xxh64", hash, "text_tokens", (json_int_t)ci->n_text_tokens, "tokens",
                                  (json_int_t)ci->n_tokens, "seq_len", (int)(ci->n_tokens / ci->n_windows),
                                  "rows", (int)(o->calib_rows > 0 ? o->calib_rows : CALIB_ROWS), "clip",
                                  !o->calib_no_clip);
            ok &= c != NULL && json_object_set_new(q, "calib", c) == 0;
        }
        ok &= q != NULL && json_object_set_new(b, "quantization", q) == 0;
    }
    if (untied) /* the network has an LM head matrix of its own (builder/lm_head.h) */
        ok &= json_object_set_new(b, "untied_lm_head", json_string(ANVIL_UNTIED_LM_HEAD)) == 0;
    if (p->prequant.format != ANVIL_QFORMAT_NONE) { /* a pre-quantized checkpoint, converted */
        json_t *q = json_pack("{s:s, s:s, s:s}", "scheme", anvil_qscheme_name(p->prequant.scheme), "method",
                              p->prequant.method, "format", anvil_qformat_name(p->prequant.format));
        ok &= q != NULL && json_object_set_new(b, "quantization", q) == 0;
    }
    /* tuned kernel choices would go here; anvil's kernels pick at run time
     * from the shapes alone (docs/engine.md) */
    ok &= json_object_set_new(b, "kernels", json_object()) == 0;
    if (!ok) {
        json_decref(b);
        return NULL;
    }
    return b;
}

/* With random weights, model may be a config file (any name) rather than
 * a folder: its text is then the one file the engine carries. */
static anvil_status random_config_file(const char *model, int random, char **text)
{
    *text = NULL;
    struct stat sb;
    CHECK(stat(model, &sb) == 0, ANVIL_ERR_NOT_FOUND, "no model at %s", model);
    if (!random || S_ISDIR(sb.st_mode))
        return ANVIL_OK;
    size_t len;
    return anvil_read_file(model, text, &len);
}

/* The build's kv_cache_dtype: NULL or "auto" (0), "fp8" or "fp8_e4m3" (1).
 * An f32/bf16/f16 cache is chosen at run time (--kv-cache-dtype there): the
 * engine's weights do not depend on it. */
static anvil_status parse_kv_dtype(const char *name, int *fp8)
{
    *fp8 = 0;
    if (name == NULL || strcmp(name, "auto") == 0)
        return ANVIL_OK;
    CHECK(strcmp(name, "fp8") == 0 || strcmp(name, "fp8_e4m3") == 0, ANVIL_ERR_INVALID_ARG,
          "kv_cache_dtype \"%s\" (--kv-cache-dtype): a build takes auto or fp8 (an f32, bf16 or f16 cache is "
          "chosen when the engine runs)",
          name);
    *fp8 = 1;
    return ANVIL_OK;
}

/* The manifest's "kv_cache" (builder/kv_manifest.h), or NULL with nothing
 * to say (no scales, no fp8 cache asked for or declared); *oom when it
 * could not be made. ci: the calibration that gave the scales. */
static json_t *kv_json(int fp8, const char *source, int32_t n_layers, const float *scales, const char *calib_file,
                       const anvil_calib_info *ci, int *oom)
{
    *oom = 0;
    if (!fp8 && scales == NULL)
        return NULL;
    json_t *kv = anvil_manifest_kv(fp8, source, n_layers, scales);
    if (kv != NULL && ci != NULL) {
        const char *slash = strrchr(calib_file, '/');
        char hash[17];
        snprintf(hash, sizeof hash, "%016llx", (unsigned long long)ci->xxh64);
        json_t *c = json_pack("{s:s, s:s, s:I, s:I, s:i}", "file", slash ? slash + 1 : calib_file, "xxh64", hash,
                              "text_tokens", (json_int_t)ci->n_text_tokens, "tokens", (json_int_t)ci->n_tokens,
                              "seq_len", (int)(ci->n_tokens / ci->n_windows));
        if (c == NULL || json_object_set_new(kv, "calib", c) != 0) {
            json_decref(kv);
            kv = NULL;
        }
    }
    *oom = kv == NULL;
    return kv;
}

anvil_status anvil_build_engine(const char *model, const char *output, const anvil_build_options *opts)
{
    return anvil_build_engine_awq(model, output, opts, NULL, NULL);
}

anvil_status anvil_build_engine_awq(const char *model, const char *output, const anvil_build_options *opts,
                                    anvil_awq_scales_fn scales_fn, void *scales_user)
{
    CHECK(model != NULL && output != NULL, ANVIL_ERR_INVALID_ARG, "anvil_build_engine: NULL argument");
    anvil_build_options o;
    if (opts)
        o = *opts;
    else
        anvil_build_options_default(&o);
    CHECK(o.quantize >= ANVIL_QUANTIZE_NONE && o.quantize < ANVIL_QUANTIZE_COUNT, ANVIL_ERR_INVALID_ARG,
          "unknown quantization %d", (int)o.quantize);
    CHECK(o.quant_group == 0 || (o.quantize == ANVIL_QUANTIZE_INT4_WO && o.quant_group > 0), ANVIL_ERR_INVALID_ARG,
          "a group size (%d) goes with int4-wo quantization only (fp8 and int8-wo scale whole rows)",
          (int)o.quant_group);
    int kv_fp8 = 0;
    TRY(parse_kv_dtype(o.kv_cache_dtype, &kv_fp8));
    const int awq_calib = o.quantize == ANVIL_QUANTIZE_INT4_WO || o.quantize == ANVIL_QUANTIZE_INT8_WO;
    CHECK(o.calib_file == NULL || awq_calib || kv_fp8, ANVIL_ERR_INVALID_ARG,
          "a calibration file (--calib) goes with int4-wo or int8-wo quantization (AWQ) or with an fp8 KV cache "
          "(--kv-cache-dtype fp8), not with %s weights and a %s KV cache",
          anvil_quantize_name(o.quantize), o.kv_cache_dtype ? o.kv_cache_dtype : "auto");
    CHECK(o.calib_file == NULL || !o.random_weights, ANVIL_ERR_INVALID_ARG,
          "a calibration file (--calib) needs a model folder (its tokenizer and weights), not random weights");
    CHECK(!o.quantize_lm_head || o.quantize != ANVIL_QUANTIZE_NONE, ANVIL_ERR_INVALID_ARG,
          "quantizing the LM head (--quantize-lm-head) needs a scheme (--quantize)");
    CHECK(o.calib_seq_len >= 0 && o.calib_tokens >= 0 && o.calib_rows >= 0, ANVIL_ERR_INVALID_ARG,
          "negative calibration sizes");
    CHECK(o.tp_size >= 0 && (o.tp_size <= 1 || (o.tp_rank >= 0 && o.tp_rank < o.tp_size)), ANVIL_ERR_INVALID_ARG,
          "tensor-parallel rank %d of %d", o.tp_rank, o.tp_size);
    CHECK(o.tp_size <= 1 || (!o.random_weights && o.calib_file == NULL && !o.quantize_lm_head),
          ANVIL_ERR_UNSUPPORTED,
          "an engine per tensor-parallel rank (--tp %d) is built from a model folder without --random-weights, "
          "--calib or --quantize-lm-head (not yet: docs/parallel.md)",
          o.tp_size);
    char *cfg_text = NULL; /* a config file given alone (random weights) */
    TRY(random_config_file(model, o.random_weights, &cfg_text));
    const char *dir = model;
    anvil_status st = ANVIL_OK;
    anvil_model_files *mf = NULL;
    anvil_model_config cfg;
    anvil_network *net = NULL;
    anvil_checkpoint *ck = NULL;
    anvil_build_plan *plan = NULL;
    anvil_engine_writer *w = NULL;
    json_t *manifest = NULL;
    anvil_quant_config qc = {0}; /* a pre-quantized checkpoint's */
    anvil_awq *awq = NULL;
    anvil_calib_info ci, kv_ci;
    float *kv_scales = NULL; /* [2 * KV layers]: the checkpoint's or calibrated; NULL: none */
    const char *kv_source = "none";
    int kv_calibrated = 0;
    build_job job = {0};
    pthread_mutex_init(&job.mu, NULL);

    if (cfg_text != NULL) {
        TRY_GOTO(anvil_model_config_parse(cfg_text, &cfg), done);
    } else {
        TRY_GOTO(anvil_model_files_open(dir, &mf), done);
        CHECK_GOTO(!anvil_model_files_is_engine(mf), ANVIL_ERR_INVALID_ARG, done,
                   "%s is an engine already (build from the model folder)", dir);
        TRY_GOTO(anvil_model_config_load(dir, &cfg), done);
    }
    TRY_GOTO(anvil_model_build_network(&cfg, &net), done);
    if (o.tp_size > 1) { /* rank tp_rank's network, as the runtime cuts a folder's (runtime_tp.c) */
        anvil_network *cut = NULL;
        if (anvil_network_shard_ex(net, o.tp_rank, o.tp_size, 1, &cut) != ANVIL_OK) {
            st = anvil_error_wrap("rank %d of --tp %d", o.tp_rank, o.tp_size);
            goto done;
        }
        anvil_network_free(net);
        net = cut;
    }
    const int untie = o.quantize_lm_head && anvil_lm_head_is_tied(net);
    if (untie) /* the embedding stays as it is; the LM head gets a matrix of its own */
        TRY_GOTO(anvil_lm_head_untie(net), done);
    if (!o.random_weights) {
        TRY_GOTO(anvil_checkpoint_open_ex(dir, ANVIL_ST_READ, &ck), done);
        TRY_GOTO(anvil_quant_config_load(dir, &qc), done);
    }
    else if (o.weight_dtype == ANVIL_DTYPE_COUNT)
        o.weight_dtype = cfg.dtype;
    const int32_t n_kv = anvil_network_kv_layers(net);
    if (ck != NULL || kv_fp8) {
        kv_scales = malloc(((size_t)n_kv * 2 + 1) * sizeof *kv_scales);
        CHECK_GOTO(kv_scales != NULL, ANVIL_ERR_OOM, done, "out of memory");
        int found = 0;
        if (ck != NULL)
            TRY_GOTO(anvil_kv_scales_read(ck, qc.kv_fp8, dir, n_kv, kv_scales, &found), done);
        kv_source = found ? "checkpoint" : "none";
        if (found && o.calib_file != NULL && kv_fp8)
            anvil_log(ANVIL_LOG_INFO, "kv cache: the checkpoint's k/v scales are kept (not calibrated on %s)",
                      o.calib_file);
        if (!found && !(kv_fp8 && o.calib_file != NULL)) {
            free(kv_scales);
            kv_scales = NULL;
        }
        kv_calibrated = !found && kv_scales != NULL;
    }
    const anvil_fuse_caps caps = anvil_fuse_caps_all();
    const anvil_plan_options po = {.weight_dtype = o.weight_dtype,
                                   .caps = &caps,
                                   .no_fusion = o.no_fusion,
                                   .quantize = o.quantize,
                                   .quant_group = o.quant_group,
                                   .prequant = &qc,
                                   .quantize_lm_head = o.quantize_lm_head};
    TRY_GOTO(anvil_build_plan_make(net, ck, &po, &plan), done);
    plan->seed = o.seed;
    int threads = o.n_threads > 0 ? o.n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1)
        threads = 1;
    if (threads > 16 && o.n_threads <= 0)
        threads = 16;
    const anvil_calib_options co = {.text_file = o.calib_file,
                                    .seq_len = o.calib_seq_len > 0 ? o.calib_seq_len : CALIB_SEQ_LEN,
                                    .max_tokens = o.calib_tokens > 0 ? o.calib_tokens : CALIB_TOKENS,
                                    .n_threads = threads,
                                    .kv_amax = kv_calibrated ? kv_scales : NULL,
                                    .n_kv_layers = n_kv};
    if (o.calib_file != NULL && !awq_calib && kv_calibrated) /* the KV scales alone */
        TRY_GOTO(anvil_calib_run(dir, &co, NULL, &kv_ci), done);
    if (o.calib_file != NULL && awq_calib) { /* AWQ, and the KV scales in the same pass */
        const anvil_dtype kind = o.quantize == ANVIL_QUANTIZE_INT4_WO ? ANVIL_DTYPE_U4 : ANVIL_DTYPE_I8;
        TRY_GOTO(anvil_awq_create(net, plan, kind, o.quant_group > 0 ? o.quant_group : 128,
                                  o.calib_rows > 0 ? o.calib_rows : CALIB_ROWS, co.max_tokens, &awq),
                 done);
        TRY_GOTO(anvil_calib_run(dir, &co, awq, &ci), done);
        kv_ci = ci;
        TRY_GOTO(anvil_awq_search(awq, plan, net, ck, !o.calib_no_clip, threads), done);
        for (int32_t g = 0; g < awq->n_groups; g++)
            anvil_log(ANVIL_LOG_INFO, "awq: value %d (%d linears, %lld wide): alpha %.2f, error %.4g -> %.4g of RTN's",
                      awq->groups[g].input, awq->groups[g].n_linears, (long long)awq->groups[g].k,
                      (double)awq->groups[g].alpha, awq->groups[g].err_rtn,
                      awq->groups[g].err_rtn > 0 ? awq->groups[g].err_awq / awq->groups[g].err_rtn : 1.0);
        anvil_awq_attach(awq, plan);
    } else if (scales_fn != NULL) { /* tests: given scales, folded (quantized or not) */
        const anvil_dtype kind = o.quantize == ANVIL_QUANTIZE_INT4_WO   ? ANVIL_DTYPE_U4
                                 : o.quantize == ANVIL_QUANTIZE_INT8_WO ? ANVIL_DTYPE_I8
                                                                        : ANVIL_DTYPE_F32;
        TRY_GOTO(anvil_awq_create(net, plan, kind, o.quant_group > 0 ? o.quant_group : 128, 1, 1, &awq), done);
        scales_fn(scales_user, awq, net);
        anvil_awq_set_folds(awq);
        anvil_awq_attach(awq, plan);
    }

    if (kv_calibrated) { /* max |k| and |v| to scales: amax / 448, e4m3's largest */
        for (int32_t i = 0; i < 2 * n_kv; i++) {
            const float a = kv_scales[i];
            kv_scales[i] = a > 0.0f ? a / 448.0f : 1.0f; /* a layer of zeros: any scale, 1 */
            char what[96];
            snprintf(what, sizeof what, "the calibrated %s scale of layer %d", i % 2 ? "v" : "k", (int)(i / 2));
            TRY_GOTO(anvil_kv_scale_check(kv_scales[i], what), done);
        }
        kv_source = "calibration";
        anvil_log(ANVIL_LOG_INFO, "kv cache: scales calibrated on %s (layer 0: k_scale %g, v_scale %g)", o.calib_file,
                  (double)kv_scales[0], (double)kv_scales[1]);
    }
    TRY_GOTO(anvil_engine_writer_create(output, &w), done);
    for (int32_t s = 0; s < plan->n_stored; s++) {
        const anvil_stored *t = &plan->stored[s];
        anvil_engine_kind kind;
        CHECK_GOTO(anvil_engine_kind_from_dtype(t->kind, &kind) == 0, ANVIL_ERR_UNSUPPORTED, done,
                   "no engine kind for %s", anvil_dtype_name(t->kind));
        int64_t idx;
        TRY_GOTO(anvil_engine_writer_add_tensor(w, t->name, kind, t->n_dims, t->shape, &idx), done);
        CHECK_GOTO(idx == s, ANVIL_ERR_INTERNAL, done, "engine tensor %lld for stored tensor %d", (long long)idx, s);
    }
    for (int32_t s = 0; s < plan->n_stored; s++) /* the quantized weights' "scales" objects */
        if (plan->stored[s].q.scales >= 0)
            TRY_GOTO(anvil_manifest_set_quant(w, plan, s), done);
    manifest = json_object();
    json_t *files = json_object(), *m = json_object();
    CHECK_GOTO(manifest && files && m, ANVIL_ERR_OOM, done, "out of memory");
    json_object_set_new(manifest, "files", files);
    if (mf != NULL)
        TRY_GOTO(files_json(mf, files), done);
    else
        CHECK_GOTO(json_object_set_new(files, "config.json", json_string(cfg_text)) == 0, ANVIL_ERR_FORMAT, done,
                   "%s is not UTF-8 text", model);
    json_object_set_new(m, "architecture", json_string(cfg.architecture));
    json_object_set_new(m, "model_type", json_string(cfg.model_type));
    json_object_set_new(manifest, "model", m);
    json_t *b = build_json(model, &o, plan, awq ? &ci : NULL, untie), *jn = anvil_manifest_network(net), *jp = anvil_manifest_plan(plan, net);
    CHECK_GOTO(b && jn && jp, ANVIL_ERR_OOM, done, "out of memory");
    if (o.tp_size > 1) /* the runtime cuts its network as this one was (runtime_tp.c) */
        CHECK_GOTO(json_object_set_new(b, "tp", json_pack("{s:i, s:i, s:b}", "size", (int)o.tp_size, "rank",
                                                          (int)o.tp_rank, "cut_embedding", 1)) == 0,
                   ANVIL_ERR_OOM, done, "out of memory");
    json_object_set_new(manifest, "build", b);
    json_object_set_new(manifest, "network", jn);
    json_object_set_new(manifest, "plan", jp);
    int kv_oom;
    json_t *jkv = kv_json(kv_fp8 || qc.kv_fp8, kv_source, n_kv, kv_scales, o.calib_file,
                          kv_calibrated ? &kv_ci : NULL, &kv_oom);
    CHECK_GOTO(!kv_oom, ANVIL_ERR_OOM, done, "out of memory");
    if (jkv != NULL)
        json_object_set_new(manifest, "kv_cache", jkv);

    job.plan = plan;
    job.net = net;
    job.ck = ck;
    job.free_scratch = calloc((size_t)threads + 1, sizeof *job.free_scratch);
    CHECK_GOTO(job.free_scratch != NULL, ANVIL_ERR_OOM, done, "out of memory");
    st = anvil_engine_writer_finish(w, manifest, fill, &job, threads, o.progress, o.progress_user);
    w = NULL; /* finish frees it, whatever it returns */
    if (st == ANVIL_OK && ck != NULL)
        st = anvil_checkpoint_check_unchanged(ck);
    if (st != ANVIL_OK && ck != NULL)
        unlink(output); /* a checkpoint rewritten during the build: the engine is not trusted */
done:
    if (st != ANVIL_OK)
        anvil_error_wrap("building %s", model);
    anvil_engine_writer_abort(w);
    json_decref(manifest);
    for (int i = 0; i < job.n_free; i++)
        anvil_build_scratch_free(job.free_scratch[i]);
    free(job.free_scratch);
    pthread_mutex_destroy(&job.mu);
    anvil_build_plan_free(plan);
    anvil_awq_free(awq); /* after the plan's last fill */
    free(kv_scales);
    anvil_quant_config_free(&qc);
    anvil_checkpoint_close(ck);
    anvil_network_free(net);
    anvil_model_files_close(mf);
    free(cfg_text);
    return st;
}

anvil_status anvil_engine_rank_path(const char *dir, int32_t rank, char *buf, size_t cap)
{
    CHECK(dir != NULL && buf != NULL && rank >= 0, ANVIL_ERR_INVALID_ARG, "anvil_engine_rank_path: bad argument");
    const int n = snprintf(buf, cap, "%s/rank%d.engine", dir, (int)rank);
    CHECK(n > 0 && (size_t)n < cap, ANVIL_ERR_INVALID_ARG, "the path of rank %d's engine in %s is too long", rank,
          dir);
    return ANVIL_OK;
}

anvil_status anvil_build_engines_tp(const char *model, const char *dir, const anvil_build_options *opts)
{
    CHECK(model != NULL && dir != NULL && opts != NULL, ANVIL_ERR_INVALID_ARG, "anvil_build_engines_tp: NULL argument");
    CHECK(opts->tp_size >= 2, ANVIL_ERR_INVALID_ARG, "an engine per rank needs --tp 2 or more (it is %d)",
          opts->tp_size);
    struct stat sb;
    if (stat(dir, &sb) != 0)
        CHECK(mkdir(dir, 0755) == 0, ANVIL_ERR_IO, "cannot make the folder %s for the ranks' engines", dir);
    else
        CHECK(S_ISDIR(sb.st_mode), ANVIL_ERR_INVALID_ARG,
              "%s is not a folder: --tp %d writes rank0.engine ... rank%d.engine into one", dir, opts->tp_size,
              opts->tp_size - 1);
    anvil_build_options o = *opts;
    for (int32_t r = 0; r < opts->tp_size; r++) {
        char path[4096];
        TRY(anvil_engine_rank_path(dir, r, path, sizeof path));
        o.tp_rank = r;
        TRY(anvil_build_engine(model, path, &o));
        anvil_log(ANVIL_LOG_INFO, "rank %d of %d: %s", r, opts->tp_size, path);
    }
    return ANVIL_OK;
}
