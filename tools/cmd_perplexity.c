/*
 * anvil perplexity: how well a model predicts a text, and how far it is from
 * a base model over the same tokens (KL divergence, top-1 agreement), as
 * llama.cpp's llama-perplexity (with --kl-divergence) measures it
 * (docs/cli.md, docs/quantization.md "Accuracy").
 *
 * The text's tokens are cut into windows of --ctx tokens; each window runs
 * as one forward step from position 0 (its first token replaced by BOS where
 * the tokenizer adds one), and the second half of it is scored given the
 * first: logits rows ctx/2 .. ctx-2 predict tokens ctx/2+1 .. ctx-1, so
 * every scored token sees at least ctx/2 tokens of context. The model and the
 * base run window by window in this process, on the runtime directly (no
 * executor: one sequence, no sampling).
 */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anvil/runtime.h"
#include "anvil/tokenizer.h"
#include "cli_env.h"
#include "cli_error.h"
#include "cli_flags.h"
#include "cli_signal.h"
#include "commands.h"
#include "exec_cli.h"
#include "ppl_input.h"
#include "ppl_metrics.h"

#define TOOL        "anvil perplexity"
#define DEFAULT_CTX 512

static void usage(FILE *out)
{
    fprintf(out,
            "usage: anvil perplexity --model M (--input FILE | --ids FILE) [--base B] [options]\n\n"
            "Scores a text with a model: the tokens are cut into windows of --ctx tokens, each window\n"
            "runs from position 0 (its first token replaced by BOS where the tokenizer adds one), and the\n"
            "second half of each window is scored given the first (llama.cpp's llama-perplexity). Prints\n"
            "the perplexity, the tokens scored and the time. With --base, a second model of the same\n"
            "vocabulary runs over the same windows and the comparison follows: both perplexities and\n"
            "their ratio, the mean KL divergence KL(base || model) with its percentiles, top-1 agreement\n"
            "and the change in the true token's probability.\n\n"
            "options:\n"
            "  -m, --model M           a model folder or an engine file\n"
            "  -i, --input FILE        the text to score, encoded with the model's tokenizer (BOS first\n"
            "                          where its tokenizer adds one)\n"
            "      --ids FILE          token ids to score instead of a text: a JSON array or integers\n"
            "                          separated by spaces or commas, used as they are\n"
            "  -b, --base B            the reference: another model folder or engine file of the same\n"
            "                          tokenizer and vocabulary\n"
            "  -c, --ctx N             tokens a window (default 512, at most the model's context; the\n"
            "                          model's context when that is shorter)\n"
            "  -n, --max-tokens N      use only the first N tokens of the input (whole windows of them)\n"
            "      --device DEV        cpu (default), cuda or cuda:N, for both models\n"
            "      --threads N         CPU threads (default: all cores)\n"
            "      --dtype DT          the model's: auto (default), f32, bf16 or f16 (anvil run's --dtype)\n"
            "      --base-dtype DT     the base's, the same choices (default auto)\n"
            "      --kv-cache-dtype DT the model's KV cache, as anvil run's --kv-cache-dtype (default auto;\n"
            "                          the base's is auto)\n"
            "      --json              print one JSON object instead of the lines\n"
            "  -h, --help              this help\n");
}

typedef struct ppl_args {
    const char *model, *input, *ids, *base, *device, *kv_dtype;
    int32_t ctx;        /* 0: default */
    int64_t max_tokens; /* 0: all */
    int n_threads, json;
    anvil_dtype dtype, base_dtype;
} ppl_args;

/* 0 parsed; otherwise the exit code (0 for --help, 2 for bad usage). */
static int parse_args(int argc, char **argv, ppl_args *a, int *done)
{
    enum { OPT_IDS = 256, OPT_DEVICE, OPT_THREADS, OPT_DTYPE, OPT_BASE_DTYPE, OPT_KV_DTYPE, OPT_JSON };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},
        {"input", required_argument, 0, 'i'},
        {"ids", required_argument, 0, OPT_IDS},
        {"base", required_argument, 0, 'b'},
        {"ctx", required_argument, 0, 'c'},
        {"max-tokens", required_argument, 0, 'n'},
        {"device", required_argument, 0, OPT_DEVICE},
        {"threads", required_argument, 0, OPT_THREADS},
        {"dtype", required_argument, 0, OPT_DTYPE},
        {"base-dtype", required_argument, 0, OPT_BASE_DTYPE},
        {"kv-cache-dtype", required_argument, 0, OPT_KV_DTYPE},
        {"json", no_argument, 0, OPT_JSON},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    static const char *shortopts = "m:i:b:c:n:h";
    memset(a, 0, sizeof *a);
    a->dtype = a->base_dtype = ANVIL_DTYPE_COUNT;
    *done = 0;
    optind = 1;
    long v;
    int c;
    while ((c = cli_getopt(argc, argv, shortopts, longopts)) != -1) {
        switch (c) {
        case 'm':
            a->model = optarg;
            break;
        case 'i':
            a->input = optarg;
            break;
        case OPT_IDS:
            a->ids = optarg;
            break;
        case 'b':
            a->base = optarg;
            break;
        case 'c':
            /* 3: the smallest window that scores a token (rows ctx/2 .. ctx-2) */
            if (exec_cli_int(optarg, "--ctx", 3, ANVIL_MAX_CONTEXT, &v, TOOL))
                return 2;
            a->ctx = (int32_t)v;
            break;
        case 'n':
            if (exec_cli_int(optarg, "--max-tokens", 1, 1L << 40, &v, TOOL))
                return 2;
            a->max_tokens = v;
            break;
        case OPT_DEVICE:
            a->device = optarg;
            break;
        case OPT_THREADS:
            if (exec_cli_int(optarg, "--threads", 0, 4096, &v, TOOL))
                return 2;
            a->n_threads = (int)v;
            break;
        case OPT_DTYPE:
            if (exec_cli_dtype(optarg, &a->dtype, TOOL))
                return 2;
            break;
        case OPT_BASE_DTYPE:
            if (exec_cli_dtype(optarg, &a->base_dtype, TOOL))
                return 2;
            break;
        case OPT_KV_DTYPE:
            a->kv_dtype = optarg;
            break;
        case OPT_JSON:
            a->json = 1;
            break;
        case 'h':
            usage(stdout);
            *done = 1;
            return 0;
        default:
            return cli_bad_flag(TOOL, argv, shortopts, longopts);
        }
    }
    if (optind < argc) {
        fprintf(stderr, TOOL ": unexpected argument '%s' (see anvil perplexity --help)\n", argv[optind]);
        return 2;
    }
    if (!a->model) {
        fprintf(stderr, TOOL ": --model is required (see anvil perplexity --help)\n");
        return 2;
    }
    if (!a->input == !a->ids) {
        fprintf(stderr,
                TOOL ": give the text to score as --input FILE, or its token ids as --ids FILE (one of "
                     "them)\n");
        return 2;
    }
    return 0;
}

/* One model with what a window needs. */
typedef struct ppl_model {
    const char *path;
    anvil_runtime *rt;
    anvil_tokenizer *tok;
    anvil_model_config cfg;
    int32_t *blocks; /* [n_blocks]: the KV blocks every window reuses */
    int32_t n_blocks;
    float *logits; /* [rows * vocab] */
} ppl_model;

static void model_free(ppl_model *m)
{
    if (m->rt && m->blocks)
        anvil_runtime_kv_release(m->rt, m->n_blocks, m->blocks);
    free(m->blocks);
    free(m->logits);
    anvil_runtime_free(m->rt);
    anvil_tokenizer_free(m->tok);
    memset(m, 0, sizeof *m);
}

/* The config and (when there is one) the tokenizer: before the weights,
 * so that input and vocabulary errors come first. */
static int model_open(ppl_model *m, const char *path)
{
    m->path = path;
    if (exec_cli_model_check(path, TOOL, &m->cfg) != 0)
        return -1;
    if (anvil_tokenizer_available(path) && anvil_tokenizer_load(path, &m->tok) != ANVIL_OK) {
        anvil_cli_report(TOOL ": %s", path);
        return -1;
    }
    return 0;
}

/* The runtime sized for one window of ctx tokens with rows logits rows. */
static int model_load(ppl_model *m, const ppl_args *a, anvil_dtype dtype, const char *kv_dtype, int32_t ctx,
                      int32_t rows)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    cli_env_runtime_options(&o);
    if (a->device)
        o.device = a->device;
    o.n_threads = a->n_threads;
    o.weight_dtype = dtype;
    o.kv_cache_dtype = kv_dtype;
    o.max_num_tokens = ctx;
    o.max_batch_size = 1;
    o.max_logit_rows = rows;
    o.max_seq_len = ctx;
    o.kv_cache_tokens = ctx;
    o.kv_cache_fraction = 0;
    if (anvil_runtime_load(m->path, &o, &m->rt) != ANVIL_OK) {
        anvil_cli_report(TOOL ": loading %s", m->path);
        return -1;
    }
    const int32_t bs = anvil_runtime_kv_block_size(m->rt);
    m->n_blocks = (ctx + bs - 1) / bs;
    m->blocks = malloc((size_t)m->n_blocks * sizeof *m->blocks);
    m->logits = malloc((size_t)rows * (size_t)m->cfg.vocab_size * sizeof *m->logits);
    if (!m->blocks || !m->logits) {
        fprintf(stderr, TOOL ": out of memory for %d rows of %lld logits\n", rows,
                (long long)m->cfg.vocab_size);
        return -1;
    }
    if (anvil_runtime_kv_alloc(m->rt, m->n_blocks, m->blocks) != ANVIL_OK) {
        free(m->blocks);
        m->blocks = NULL; /* none taken */
        anvil_cli_report(TOOL ": %s", m->path);
        return -1;
    }
    return 0;
}

/* One window through one model: logits of rows [first, first + rows). */
static int model_window(ppl_model *m, const int32_t *tokens, const int32_t *positions, int32_t ctx,
                        const int32_t *logit_rows, int32_t rows)
{
    const int32_t seq_starts[2] = {0, ctx};
    const anvil_batch b = {
        .n_tokens = ctx,
        .token_ids = tokens,
        .positions = positions,
        .n_seqs = 1,
        .seq_starts = seq_starts,
        .block_tables = m->blocks,
        .max_blocks_per_seq = m->n_blocks,
        .n_logits = rows,
        .logit_rows = logit_rows,
    };
    if (anvil_runtime_forward(m->rt, &b, m->logits) != ANVIL_OK) {
        anvil_cli_report(TOOL ": %s", m->path);
        return -1;
    }
    return 0;
}

/* What a runtime computes with: the line after "model:" and the JSON keys. */
static void print_model_line(const char *what, const ppl_model *m)
{
    printf("%s: %s (weights %.1f MiB, compute %s, KV cache %s)\n", what, m->path,
           (double)anvil_runtime_weight_bytes(m->rt) / 1048576.0,
           anvil_dtype_name(anvil_runtime_compute_dtype(m->rt)),
           anvil_dtype_name(anvil_runtime_kv_cache_dtype(m->rt)));
}

static int json_model(json_t *o, const char *prefix, const ppl_model *m)
{
    char k1[64], k2[64], k3[64];
    snprintf(k1, sizeof k1, "%s_weight_bytes", prefix);
    snprintf(k2, sizeof k2, "%s_compute_dtype", prefix);
    snprintf(k3, sizeof k3, "%s_kv_cache_dtype", prefix);
    return json_object_set_new(o, k1, json_integer((json_int_t)anvil_runtime_weight_bytes(m->rt))) ||
           json_object_set_new(o, k2, json_string(anvil_dtype_name(anvil_runtime_compute_dtype(m->rt)))) ||
           json_object_set_new(o, k3, json_string(anvil_dtype_name(anvil_runtime_kv_cache_dtype(m->rt))));
}

static void print_human(const ppl_model *m, const ppl_model *b, const ppl_summary *s, int has_base,
                        int32_t ctx, int64_t windows, int64_t n_input, double seconds, int interrupted)
{
    print_model_line("model", m);
    if (has_base)
        print_model_line("base", b);
    printf("windows: %lld of %d tokens (%lld of the input's %lld tokens), %lld tokens scored%s\n",
           (long long)windows, ctx, (long long)windows * ctx, (long long)n_input, (long long)s->n,
           interrupted ? " (interrupted)" : "");
    printf("time: %.2f s (%.0f tokens/s through %s)\n", seconds,
           seconds > 0 ? (double)(windows * ctx) * (has_base ? 2 : 1) / seconds : 0.0,
           has_base ? "both models" : "the model");
    printf("perplexity: %.4f +/- %.4f\n", s->ppl, s->ppl_err);
    if (!has_base)
        return;
    printf("base perplexity: %.4f +/- %.4f\n", s->base_ppl, s->base_ppl_err);
    printf("perplexity ratio (model / base): %.3f%% +/- %.3f%%\n", 100.0 * s->ratio, 100.0 * s->ratio_err);
    printf("mean KL divergence (base || model): %.6f +/- %.6f nats\n", s->kl_mean, s->kl_err);
    printf("KL divergence median / 99%% / 99.9%% / max: %.6f / %.6f / %.6f / %.6f\n", s->kl_median, s->kl_p99,
           s->kl_p999, s->kl_max);
    printf("top-1 agreement: %.3f%% +/- %.3f%%\n", 100.0 * s->top1, 100.0 * s->top1_err);
    printf("true token's probability, model - base: mean %+.5f, RMS %.5f; |dp| 99%% / 99.9%% / max: %.5f / "
           "%.5f / "
           "%.5f\n",
           s->dp_mean, s->dp_rms, s->abs_dp_p99, s->abs_dp_p999, s->abs_dp_max);
}

static int print_json(const ppl_args *a, const ppl_model *m, const ppl_model *b, const ppl_summary *s,
                      int has_base, int32_t ctx, int64_t windows, int64_t n_input, double seconds,
                      int interrupted)
{
    json_t *o = json_pack("{s:s, s:i, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:b}", "model", a->model, "ctx", ctx,
                          "windows", (json_int_t)windows, "input_tokens", (json_int_t)n_input,
                          "tokens_scored", (json_int_t)s->n, "seconds", seconds, "mean_nll", s->mean_nll,
                          "perplexity", s->ppl, "perplexity_stderr", s->ppl_err, "interrupted", interrupted);
    if (o && has_base) {
        json_t *j =
            json_pack("{s:s, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, "
                      "s:f, s:f, s:f}",
                      "base", a->base, "base_mean_nll", s->mean_nll_base, "base_perplexity", s->base_ppl,
                      "base_perplexity_stderr", s->base_ppl_err, "perplexity_ratio", s->ratio,
                      "perplexity_ratio_stderr", s->ratio_err, "kl_mean", s->kl_mean, "kl_stderr", s->kl_err,
                      "kl_median", s->kl_median, "kl_p99", s->kl_p99, "kl_p999", s->kl_p999, "kl_max",
                      s->kl_max, "top1_agreement", s->top1, "top1_agreement_stderr", s->top1_err, "dp_mean",
                      s->dp_mean, "dp_rms", s->dp_rms, "abs_dp_p99", s->abs_dp_p99, "abs_dp_p999",
                      s->abs_dp_p999, "abs_dp_max", s->abs_dp_max);
        if (!j || json_object_update(o, j) != 0 || json_model(o, "base", b) != 0) {
            json_decref(o);
            o = NULL;
        }
        json_decref(j);
    }
    if (o && json_model(o, "model", m) != 0) {
        json_decref(o);
        o = NULL;
    }
    char *text = o ? json_dumps(o, JSON_INDENT(1) | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(o);
    if (!text) {
        fprintf(stderr, TOOL ": out of memory writing JSON\n");
        return -1;
    }
    printf("%s\n", text);
    free(text);
    return 0;
}

int anvil_cmd_perplexity(int argc, char **argv)
{
    ppl_args a;
    int done;
    int rc = parse_args(argc, argv, &a, &done);
    if (rc != 0 || done)
        return rc;
    cli_sigint_install(TOOL); /* loading: Ctrl-C exits 130 */

    rc = 1;
    ppl_model m = {0}, b = {0};
    int32_t *ids = NULL, *tokens = NULL, *positions = NULL, *logit_rows = NULL;
    int64_t n_ids = 0;
    ppl_acc acc = {0};
    const int has_base = a.base != NULL;

    if (model_open(&m, a.model) != 0 || (has_base && model_open(&b, a.base) != 0))
        goto done;
    if (has_base && ppl_check_vocab(TOOL, a.model, &m.cfg, m.tok, a.base, &b.cfg, b.tok) != 0)
        goto done;
    if (a.input) {
        if (!m.tok) {
            fprintf(stderr, TOOL ": %s has no tokenizer.json: give the token ids as --ids FILE\n", a.model);
            goto done;
        }
        if (ppl_read_text(TOOL, a.input, m.tok, &ids, &n_ids) != 0)
            goto done;
    } else if (ppl_read_ids(TOOL, a.ids, m.cfg.vocab_size, &ids, &n_ids) != 0) {
        goto done;
    }
    const char *what = a.input ? a.input : a.ids;

    /* the window: --ctx, at most what both models hold */
    int64_t max_ctx = m.cfg.max_position_embeddings;
    if (has_base && b.cfg.max_position_embeddings < max_ctx)
        max_ctx = b.cfg.max_position_embeddings;
    int32_t ctx = a.ctx;
    if (ctx == 0)
        ctx = max_ctx < DEFAULT_CTX ? (int32_t)max_ctx : DEFAULT_CTX;
    if (ctx > max_ctx) {
        fprintf(stderr, TOOL ": --ctx %d is longer than the context of %s (%lld tokens)\n", ctx,
                max_ctx == m.cfg.max_position_embeddings ? a.model : a.base, (long long)max_ctx);
        goto done;
    }
    if (ctx < 3) {
        fprintf(stderr, TOOL ": the model's context (%lld tokens) is too short to score a window\n",
                (long long)max_ctx);
        goto done;
    }
    const int64_t n_use = a.max_tokens > 0 && a.max_tokens < n_ids ? a.max_tokens : n_ids;
    if (n_use < ctx) {
        fprintf(stderr,
                TOOL ": %s gives %lld tokens%s; one window of --ctx %d needs at least %d (give more text, or "
                     "a smaller --ctx)\n",
                what, (long long)n_ids, n_use < n_ids ? " (--max-tokens keeps fewer)" : "", ctx, ctx);
        goto done;
    }
    const int64_t windows = n_use / ctx;
    const int32_t first = ctx / 2, rows = ctx - 1 - first;
    const int32_t bos = ppl_bos(m.tok);

    if (model_load(&m, &a, a.dtype, a.kv_dtype, ctx, rows) != 0 ||
        (has_base && model_load(&b, &a, a.base_dtype, NULL, ctx, rows) != 0))
        goto done;
    tokens = malloc((size_t)ctx * sizeof *tokens);
    positions = malloc((size_t)ctx * sizeof *positions);
    logit_rows = malloc((size_t)rows * sizeof *logit_rows);
    if (!tokens || !positions || !logit_rows || ppl_acc_init(&acc, has_base, windows * rows) != 0) {
        fprintf(stderr, TOOL ": out of memory\n");
        goto done;
    }
    for (int32_t i = 0; i < ctx; i++)
        positions[i] = i;
    for (int32_t r = 0; r < rows; r++)
        logit_rows[r] = first + r;

    cli_sigint_keep(); /* from here Ctrl-C stops after the window and reports what was scored */
    const int progress = isatty(STDERR_FILENO);
    const double t0 = exec_cli_now();
    int64_t w = 0;
    for (; w < windows && !cli_sigint_seen(); w++) {
        memcpy(tokens, ids + w * ctx, (size_t)ctx * sizeof *tokens);
        if (bos >= 0)
            tokens[0] = bos; /* every window starts as a text does (llama.cpp) */
        if (model_window(&m, tokens, positions, ctx, logit_rows, rows) != 0 ||
            (has_base && model_window(&b, tokens, positions, ctx, logit_rows, rows) != 0))
            goto done;
        const int64_t V = m.cfg.vocab_size;
        for (int32_t r = 0; r < rows; r++) {
            const int32_t target = tokens[first + r + 1];
            const float *ml = m.logits + (size_t)r * (size_t)V;
            ppl_token k;
            const int bad = has_base ? ppl_compare(b.logits + (size_t)r * (size_t)V, ml, V, target, &k)
                                     : ppl_score(ml, V, target, &k);
            if (bad) {
                fprintf(stderr,
                        TOOL ": window %lld, position %d: the logits are not finite (NaN or infinity)\n",
                        (long long)w, first + r);
                goto done;
            }
            ppl_acc_add(&acc, &k);
        }
        if (progress) {
            const double nll = acc.sum_nll / (double)acc.n;
            fprintf(stderr, "\r" TOOL ": window %lld/%lld, perplexity so far %.4f", (long long)w + 1,
                    (long long)windows, exp(nll));
        }
    }
    const double seconds = exec_cli_now() - t0;
    if (progress)
        fputc('\n', stderr);
    const int interrupted = w < windows;
    ppl_summary s;
    if (ppl_acc_summary(&acc, &s) != 0) {
        fprintf(stderr, TOOL ": interrupted before a window was scored\n");
        rc = 130;
        goto done;
    }
    if (a.json) {
        if (print_json(&a, &m, &b, &s, has_base, ctx, w, n_ids, seconds, interrupted) != 0)
            goto done;
    } else {
        print_human(&m, &b, &s, has_base, ctx, w, n_ids, seconds, interrupted);
    }
    rc = fflush(stdout) != 0 ? 1 : interrupted ? 130 : 0;
done:
    ppl_acc_free(&acc);
    free(tokens);
    free(positions);
    free(logit_rows);
    free(ids);
    model_free(&m);
    model_free(&b);
    return rc;
}
