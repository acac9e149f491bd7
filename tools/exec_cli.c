/* Shared pieces of the executor-based commands (see exec_cli.h). */
#include "exec_cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "anvil/model_config.h"
#include "cli_env.h"
#include "cli_error.h"
#include "cli_flags.h"

double exec_cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void exec_cli_opts_default(exec_cli_opts *o)
{
    memset(o, 0, sizeof *o);
    anvil_runtime_options_default(&o->rt);
    cli_env_runtime_options(&o->rt);
    anvil_executor_options_default(&o->ex);
}

int exec_cli_dtype(const char *arg, anvil_dtype *out, const char *tool)
{
    if (strcmp(arg, "auto") == 0)
        *out = ANVIL_DTYPE_COUNT;
    else if (strcmp(arg, "f32") == 0 || strcmp(arg, "float32") == 0)
        *out = ANVIL_DTYPE_F32;
    else if (strcmp(arg, "bf16") == 0 || strcmp(arg, "bfloat16") == 0)
        *out = ANVIL_DTYPE_BF16;
    else if (strcmp(arg, "f16") == 0 || strcmp(arg, "float16") == 0 || strcmp(arg, "half") == 0)
        *out = ANVIL_DTYPE_F16;
    else {
        fprintf(stderr, "%s: --dtype expects auto, f32, bf16 or f16, got '%s'\n", tool, arg);
        return -1;
    }
    return 0;
}

int exec_cli_int(const char *s, const char *flag, long min, long max, long *out, const char *tool)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "%s: %s expects an integer in %ld..%ld, got '%s'\n", tool, flag, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

int exec_cli_double(const char *s, const char *flag, double min, double max, double *out, const char *tool)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v >= min && v <= max)) {
        fprintf(stderr, "%s: %s expects a number in [%g, %g], got '%s'\n", tool, flag, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

int exec_cli_parser_init(exec_cli_parser *p, unsigned cmd, const struct option *own, const char *own_short,
                         request_values *rv, exec_cli_opts *eo, const char *tool, int argc, char **argv)
{
    p->cmd = cmd;
    p->rv = rv;
    p->eo = eo;
    p->tool = tool;
    p->argc = argc;
    p->argv = argv;
    optind = 1;
    request_flags_shortopts(cmd, own_short, p->shortopts, sizeof p->shortopts);
    if (request_flags_longopts(cmd, own, p->longopts, sizeof p->longopts / sizeof p->longopts[0]) != 0) {
        fprintf(stderr, "%s: too many flags for the parser's table (exec_cli_parser)\n", tool); /* a new flag's bug */
        return -1;
    }
    return 0;
}

int exec_cli_parser_next(exec_cli_parser *p)
{
    int c;
    while ((c = cli_getopt(p->argc, p->argv, p->shortopts, p->longopts)) != -1) {
        int r = p->eo ? exec_cli_option(p->eo, c, optarg, p->tool) : 0;
        if (r == 0)
            r = request_flags_option(p->rv, p->cmd, c, optarg, p->tool);
        if (r < 0)
            return EXEC_CLI_BAD;
        if (r == 0)
            return c;
    }
    return -1;
}

int exec_cli_parser_bad(const exec_cli_parser *p)
{
    return cli_bad_flag(p->tool, p->argv, p->shortopts, p->longopts);
}

int exec_cli_kv_dtype(const char *arg, const char **out, const char *tool)
{
    if (strcmp(arg, "auto") != 0 && strcmp(arg, "f32") != 0 && strcmp(arg, "bf16") != 0 && strcmp(arg, "f16") != 0 &&
        strcmp(arg, "fp8") != 0 && strcmp(arg, "fp8_e4m3") != 0) {
        fprintf(stderr, "%s: --kv-cache-dtype expects auto, f32, bf16, f16 or fp8, got '%s'\n", tool, arg);
        return -1;
    }
    *out = arg;
    return 0;
}

int exec_cli_random_option(exec_cli_random *r, anvil_runtime_options *ro, int opt, const char *arg,
                           const char *tool)
{
    long v;
    switch (opt) {
    case EXEC_OPT_CONFIG:
        r->config = arg;
        return 1;
    case EXEC_OPT_RANDOM:
        r->random = 1;
        return 1;
    case EXEC_OPT_WEIGHT_SEED:
        /* anvil build's --seed range: the same seed gives the same engine's values */
        if (exec_cli_int(arg, "--weight-seed", 0, 0x7fffffffL, &v, tool))
            return -1;
        ro->seed = (uint64_t)v;
        r->seed_set = 1;
        return 1;
    case EXEC_OPT_QUANTIZE:
        if (anvil_quantize_parse(arg, &ro->quantize) != 0) {
            fprintf(stderr, "%s: --quantize expects none, fp8, int8-wo or int4-wo, got '%s'\n", tool, arg);
            return -1;
        }
        r->quantize_set = 1;
        return 1;
    case EXEC_OPT_QUANTIZE_LM_HEAD:
        ro->quantize_lm_head = 1;
        r->lm_head_set = 1;
        return 1;
    default:
        return 0;
    }
}

int exec_cli_random_resolve(const exec_cli_random *r, anvil_runtime_options *ro, const char **model,
                            const char *tool)
{
    if (!r->random) {
        if (r->config != NULL || r->seed_set || r->quantize_set || r->lm_head_set) {
            fprintf(stderr, "%s: %s goes with --random-weights (a model folder or engine is --model DIR)\n", tool,
                    r->config       ? "--config"
                    : r->seed_set   ? "--weight-seed"
                    : r->quantize_set ? "--quantize"
                                      : "--quantize-lm-head");
            return -1;
        }
        if (*model == NULL) {
            fprintf(stderr, "%s: --model DIR is required (or --config FILE --random-weights; see %s --help)\n", tool,
                    tool);
            return -1;
        }
        return 0;
    }
    if (r->config == NULL) {
        fprintf(stderr, "%s: --random-weights needs --config FILE (an HF config.json: the shape to make)\n", tool);
        return -1;
    }
    if (*model != NULL) {
        fprintf(stderr, "%s: --random-weights takes the shape from --config FILE, not --model (give one)\n", tool);
        return -1;
    }
    if (r->lm_head_set && ro->quantize == ANVIL_QUANTIZE_NONE) {
        fprintf(stderr, "%s: --quantize-lm-head goes with --quantize fp8, int8-wo or int4-wo\n", tool);
        return -1;
    }
    *model = r->config;
    ro->random_weights = 1;
    if (!r->seed_set)
        ro->seed = 1; /* anvil build's default */
    return 0;
}

int exec_cli_option(exec_cli_opts *o, int opt, const char *arg, const char *tool)
{
    long v;
    double d;
    const int r = exec_cli_random_option(&o->random, &o->rt, opt, arg, tool);
    if (r != 0)
        return r;
    switch (opt) {
    case EXEC_OPT_DEVICE:
        o->rt.device = arg;
        return 1;
    case EXEC_OPT_THREADS:
        if (exec_cli_int(arg, "--threads", 0, 4096, &v, tool))
            return -1;
        o->rt.n_threads = (int)v;
        return 1;
    case EXEC_OPT_MAX_SEQ_LEN:
        if (exec_cli_int(arg, "--max-seq-len", 1, 1 << 24, &v, tool))
            return -1;
        o->rt.max_seq_len = (int32_t)v;
        return 1;
    case EXEC_OPT_MAX_BATCH:
        if (exec_cli_int(arg, "--max-batch-size", 1, 65536, &v, tool))
            return -1;
        o->rt.max_batch_size = (int32_t)v;
        o->batch_set = 1;
        return 1;
    case EXEC_OPT_MAX_TOKENS_STEP:
        if (exec_cli_int(arg, "--max-num-tokens", 1, 1 << 24, &v, tool))
            return -1;
        o->rt.max_num_tokens = (int32_t)v;
        o->tokens_set = 1;
        return 1;
    case EXEC_OPT_KV_TOKENS:
        if (exec_cli_int(arg, "--kv-cache-tokens", 1, 1L << 40, &v, tool))
            return -1;
        o->rt.kv_cache_tokens = v;
        o->kv_set = 1;
        return 1;
    case EXEC_OPT_KV_FRACTION:
        if (exec_cli_double(arg, "--kv-cache-fraction", 1e-9, 1.0, &d, tool))
            return -1;
        o->rt.kv_cache_fraction = d;
        o->kv_set = 1;
        return 1;
    case EXEC_OPT_KV_DTYPE:
        return exec_cli_kv_dtype(arg, &o->rt.kv_cache_dtype, tool) == 0 ? 1 : -1;
    case EXEC_OPT_BLOCK_SIZE:
        if (exec_cli_int(arg, "--block-size", 1, 4096, &v, tool))
            return -1;
        o->rt.kv_block_size = (int32_t)v;
        return 1;
    case EXEC_OPT_POLICY:
        /* TensorRT-LLM spells them GUARANTEED_NO_EVICT and MAX_UTILIZATION */
        if (strcmp(arg, "no-evict") == 0 || strcmp(arg, "guaranteed-no-evict") == 0 ||
            strcmp(arg, "GUARANTEED_NO_EVICT") == 0) {
            o->ex.policy = ANVIL_CAPACITY_GUARANTEED_NO_EVICT;
        } else if (strcmp(arg, "max-utilization") == 0 || strcmp(arg, "MAX_UTILIZATION") == 0) {
            o->ex.policy = ANVIL_CAPACITY_MAX_UTILIZATION;
        } else {
            fprintf(stderr, "%s: --scheduler-policy expects no-evict or max-utilization, got '%s'\n", tool, arg);
            return -1;
        }
        return 1;
    case EXEC_OPT_NO_PREFIX_CACHE:
        o->ex.enable_prefix_caching = 0;
        return 1;
    case EXEC_OPT_NO_OVERLAP:
        o->ex.enable_overlap = ANVIL_OVERLAP_OFF;
        return 1;
    case EXEC_OPT_OVERLAP:
        o->ex.enable_overlap = ANVIL_OVERLAP_ALWAYS;
        return 1;
    case EXEC_OPT_GRAMMAR_THREADS:
        if (exec_cli_int(arg, "--grammar-threads", 0, 64, &v, tool))
            return -1;
        o->ex.grammar_threads = (int32_t)v;
        return 1;
    case EXEC_OPT_DTYPE:
        return exec_cli_dtype(arg, &o->rt.weight_dtype, tool) == 0 ? 1 : -1;
    case EXEC_OPT_MMAP:
        o->rt.use_mmap = 1;
        return 1;
    default:
        return 0;
    }
}

int exec_cli_model_check(const char *path, const char *tool, anvil_model_config *cfg)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            fprintf(stderr, "%s: %s does not exist (--model takes a model folder or an engine file)\n", tool, path);
        else
            fprintf(stderr, "%s: cannot read %s: %s\n", tool, path, strerror(errno));
        return -1;
    }
    if (S_ISDIR(sb.st_mode)) {
        char cfg_path[4096];
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", path);
        snprintf(cfg_path, sizeof cfg_path, "%s/rank0.engine", path);
        if (access(cfg_path, F_OK) == 0) {
            /* anvil build --tp N's folder, run without its ranks */
            int n = 1;
            while (n < 4096) {
                snprintf(cfg_path, sizeof cfg_path, "%s/rank%d.engine", path, n);
                if (access(cfg_path, F_OK) != 0)
                    break;
                n++;
            }
            fprintf(stderr,
                    "%s: %s holds the per-rank engines of a --tp build (rank0.engine ... rank%d.engine): run it "
                    "with its ranks, mpirun -np %d anvil %s --model %s --tp %d (docs/parallel.md)\n",
                    tool, path, n - 1, n, strncmp(tool, "anvil ", 6) == 0 ? tool + 6 : tool, path, n);
            return -1;
        }
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", path);
        if (access(cfg_path, F_OK) != 0) {
            fprintf(stderr,
                    "%s: %s is not a model folder: it has no config.json (a Hugging Face model folder holds "
                    "config.json, *.safetensors and tokenizer.json)\n",
                    tool, path);
            return -1;
        }
    }
    anvil_model_config c;
    if (anvil_model_config_load(path, cfg ? cfg : &c) != ANVIL_OK) {
        anvil_cli_report("%s", tool); /* a file that is no engine is named as such */
        return -1;
    }
    return 0;
}

int exec_cli_config_check(const char *path, const char *tool, anvil_model_config *cfg)
{
    anvil_model_config c;
    if (anvil_model_config_load_path(path, cfg ? cfg : &c) != ANVIL_OK) {
        anvil_cli_report("%s: --config", tool);
        return -1;
    }
    return 0;
}

int exec_cli_gpu_sizes(const exec_cli_opts *o, anvil_runtime_options *ro, int kv)
{
    if (ro->device == NULL || strncmp(ro->device, "cuda", 4) != 0)
        return 0;
    /* a GPU is used by many sequences at once: TensorRT-LLM's and vLLM's
     * sizes (docs/cli.md); the KV cache takes 90% of what is left after
     * the weights and the activations of the largest step, as
     * TensorRT-LLM's free_gpu_memory_fraction does */
    if (!o->batch_set)
        ro->max_batch_size = 512;
    if (!o->tokens_set)
        ro->max_num_tokens = 8192;
    if (kv && !o->kv_set) {
        ro->kv_cache_tokens = 0;
        ro->kv_cache_fraction = 0.9;
    }
    return 1;
}

int exec_cli_load(exec_cli_opts *o, const char *model_dir, const char *tool, anvil_runtime **rt,
                  anvil_tokenizer **tok, anvil_executor **ex)
{
    *rt = NULL;
    *tok = NULL;
    *ex = NULL;
    const int random = o->rt.random_weights;
    if (random ? exec_cli_config_check(model_dir, tool, NULL) : exec_cli_model_check(model_dir, tool, NULL))
        return -1;
    /* a --config folder may hold a tokenizer; a config file has none (prompts as ids) */
    if (anvil_tokenizer_available(model_dir) && anvil_tokenizer_load(model_dir, tok) != ANVIL_OK) {
        anvil_cli_report("%s", tool);
        return -1;
    }
    anvil_runtime_options ro = o->rt;
    const int cuda = exec_cli_gpu_sizes(o, &ro, 1);
    if (!cuda && !o->kv_set) {
        /* room for many sequences in flight, without taking the machine */
        anvil_model_config cfg;
        if ((random ? anvil_model_config_load_path(model_dir, &cfg) : anvil_model_config_load(model_dir, &cfg)) ==
            ANVIL_OK) {
            /* bounded by the config's limits; an overflow would only raise the cap */
            int64_t ctx = ro.max_seq_len > 0 ? ro.max_seq_len : cfg.max_position_embeddings;
            ro.kv_cache_tokens = ctx <= INT64_MAX / 32 ? 32 * ctx : INT64_MAX;
            ro.kv_cache_fraction = 0.25;
        }
    }
    if (anvil_runtime_load(model_dir, &ro, rt) != ANVIL_OK) {
        anvil_cli_report("%s", tool);
        anvil_tokenizer_free(*tok);
        *tok = NULL;
        return -1;
    }
    if (cuda) {
        /* what the GPU was sized to, once, at start */
        const anvil_runtime_options *got = anvil_runtime_options_get(*rt);
        const int64_t kv = (int64_t)anvil_runtime_kv_blocks_total(*rt) * got->kv_block_size;
        fprintf(stderr, "%s: %s: up to %d sequences and %d tokens a step, a KV cache of %lld tokens\n", tool,
                got->device, got->max_batch_size, got->max_num_tokens, (long long)kv);
    }
    if (anvil_executor_create(*rt, *tok, &o->ex, ex) != ANVIL_OK) {
        anvil_cli_report("%s", tool);
        anvil_runtime_free(*rt);
        anvil_tokenizer_free(*tok);
        *rt = NULL;
        *tok = NULL;
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ requests from JSON */

void exec_cli_request_clear(exec_cli_request *r)
{
    free(r->prompt_ids);
    free(r->bias);
    request_storage_free(&r->st);
    r->prompt_ids = NULL;
    r->bias = NULL;
}

static int get_int(json_t *obj, const char *key, long lo, long hi, long *out, char *err, size_t n)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        snprintf(err, n, "'%s' must be an integer in %ld..%ld", key, lo, hi);
        return -1;
    }
    *out = (long)json_integer_value(v);
    return 1;
}

static int get_bool(json_t *obj, const char *key, int *out, char *err, size_t n)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_boolean(v)) {
        snprintf(err, n, "'%s' must be true or false", key);
        return -1;
    }
    *out = json_is_true(v);
    return 1;
}

/* The fields besides the request flags' (request_flags.c has those). */
static const char *const other_keys[] = {
    "prompt", "prompt_ids", "logit_bias", "use_beam_search", "early_stopping", "id", "best_of", NULL,
};

int exec_cli_request_from_json(json_t *obj, exec_cli_request *out, char *err, size_t n)
{
    anvil_request *r = &out->req;
    if (!json_is_object(obj)) {
        snprintf(err, n, "a request must be a JSON object");
        return -1;
    }
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val)
    {
        int ok = request_field_known(key);
        for (int i = 0; other_keys[i] && !ok; i++)
            ok = strcmp(key, other_keys[i]) == 0;
        ok = ok || exec_cli_structured_field(key);
        if (!ok) {
            snprintf(err, n, "unknown field '%s'", key);
            return -1;
        }
    }
    json_t *p = json_object_get(obj, "prompt"), *pi = json_object_get(obj, "prompt_ids");
    if (pi && !json_is_null(pi)) {
        if (!json_is_array(pi)) {
            snprintf(err, n, "'prompt_ids' must be an array of token ids");
            return -1;
        }
        size_t m = json_array_size(pi);
        out->prompt_ids = malloc((m ? m : 1) * sizeof *out->prompt_ids);
        if (out->prompt_ids == NULL)
            return snprintf(err, n, "out of memory"), -1;
        for (size_t i = 0; i < m; i++) {
            json_t *e = json_array_get(pi, i);
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX) {
                snprintf(err, n, "'prompt_ids' must hold non-negative integers");
                return -1;
            }
            out->prompt_ids[i] = (int32_t)json_integer_value(e);
        }
        r->prompt_ids = out->prompt_ids;
        r->n_prompt_ids = (int32_t)m;
    } else if (json_is_string(p)) {
        r->prompt = json_string_value(p);
    } else {
        snprintf(err, n, "a request needs 'prompt' (a string) or 'prompt_ids' (an array)");
        return -1;
    }
    if (request_fields_from_json(obj, r, &out->st, err, n) != 0)
        return -1;
    /* vLLM's use_beam_search with best_of / n as the width */
    int use_beam = 0;
    if (get_bool(obj, "use_beam_search", &use_beam, err, n) < 0)
        return -1;
    if (use_beam && r->beam_width <= 1) {
        long width = 0;
        if (get_int(obj, "best_of", 2, 65536, &width, err, n) < 0)
            return -1;
        r->beam_width = width > 1 ? (int32_t)width : r->n > 1 ? r->n : 4;
        r->n = 1;
    }
    json_t *es = json_object_get(obj, "early_stopping");
    if (json_is_boolean(es))
        r->early_stopping = json_is_true(es);
    else if (json_is_string(es) && strcmp(json_string_value(es), "never") == 0)
        r->early_stopping = -1;
    else if (es && !json_is_null(es)) {
        snprintf(err, n, "'early_stopping' must be true, false or \"never\"");
        return -1;
    }
    json_t *bias = json_object_get(obj, "logit_bias");
    if (json_is_object(bias)) {
        size_t m = json_object_size(bias), i = 0;
        out->bias = malloc((m ? m : 1) * sizeof *out->bias);
        if (out->bias == NULL)
            return snprintf(err, n, "out of memory"), -1;
        json_object_foreach(bias, key, val)
        {
            char *end = NULL;
            long t = strtol(key, &end, 10);
            if (end == key || *end != '\0' || t < 0 || t > INT32_MAX || !json_is_number(val)) {
                snprintf(err, n, "'logit_bias' maps token ids (as strings) to numbers");
                return -1;
            }
            out->bias[i].token = (int32_t)t;
            out->bias[i].bias = (float)json_number_value(val);
            i++;
        }
        r->logit_bias = out->bias;
        r->n_logit_bias = (int32_t)m;
    } else if (bias && !json_is_null(bias)) {
        snprintf(err, n, "'logit_bias' must be an object");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ results as JSON */

static json_t *ids_json(const int32_t *ids, int32_t n)
{
    json_t *a = json_array();
    for (int32_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

static json_t *real_json(double v) { return isfinite(v) ? json_real(v) : json_null(); }

json_t *exec_cli_result_json(const anvil_result *res, long index, int beam, json_t *request)
{
    json_t *o = json_object();
    json_object_set_new(o, "index", json_integer(index));
    json_object_set_new(o, "id", json_integer((json_int_t)res->id));
    json_t *choices = json_array();
    int32_t completion = 0;
    for (int32_t i = 0; i < res->n_sequences; i++) {
        const anvil_sequence_output *s = &res->sequences[i];
        json_t *c = json_object();
        json_object_set_new(c, "index", json_integer(i));
        if (s->text)
            json_object_set_new(c, "text", json_stringn(s->text, s->text_len));
        json_object_set_new(c, "token_ids", ids_json(s->token_ids, s->n_tokens));
        json_object_set_new(c, "finish_reason", json_string(anvil_request_finish_name(s->finish)));
        /* vLLM's stop_reason: the stop string that matched, or the stop token */
        json_t *stops = request ? json_object_get(request, "stop") : NULL;
        json_t *matched = NULL;
        if (s->stop_string >= 0)
            matched = json_is_string(stops) ? stops : json_array_get(stops, (size_t)s->stop_string);
        if (json_is_string(matched))
            json_object_set(c, "stop_reason", matched);
        else if (s->stop_string >= 0)
            json_object_set_new(c, "stop_reason", json_integer(s->stop_string));
        else if (s->stop_token >= 0)
            json_object_set_new(c, "stop_reason", json_integer(s->stop_token));
        if (s->logprobs) {
            json_t *lp = json_object(), *tl = json_array(), *top = json_array();
            for (int32_t k = 0; k < s->n_tokens; k++) {
                json_array_append_new(tl, real_json(s->logprobs[k]));
                if (s->top_logprobs) {
                    json_t *alts = json_array();
                    for (int32_t j = 0; j < s->n_top; j++) {
                        const anvil_token_logprob *e = &s->top_logprobs[(size_t)k * (size_t)s->n_top + (size_t)j];
                        json_t *pair = json_object();
                        json_object_set_new(pair, "token", json_integer(e->token));
                        json_object_set_new(pair, "logprob", real_json(e->logprob));
                        json_array_append_new(alts, pair);
                    }
                    json_array_append_new(top, alts);
                }
            }
            json_object_set_new(lp, "token_logprobs", tl);
            if (s->top_logprobs)
                json_object_set_new(lp, "top_logprobs", top);
            else
                json_decref(top);
            json_object_set_new(c, "logprobs", lp);
            json_object_set_new(c, "cumulative_logprob", real_json(s->cumulative_logprob));
        }
        if (beam)
            json_object_set_new(c, "score", real_json(s->score));
        json_array_append_new(choices, c);
        completion += s->n_tokens;
    }
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "finish_reason", json_string(anvil_request_finish_name(res->finish)));
    if (res->status != ANVIL_OK)
        json_object_set_new(o, "error", json_string(res->error));
    json_t *usage = json_object();
    json_object_set_new(usage, "prompt_tokens", json_integer(res->n_prompt));
    json_object_set_new(usage, "completion_tokens", json_integer(completion));
    json_object_set_new(usage, "cached_prompt_tokens", json_integer(res->n_cached_prompt));
    json_object_set_new(o, "usage", usage);
    return o;
}
