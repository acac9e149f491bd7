/*
 * anvil run in batch mode: many requests through the executor at once, one
 * JSON result a line, in input order.
 *
 *   anvil run --model DIR --input requests.jsonl [--output results.jsonl]
 *   anvil run --model DIR --prompt "Once upon a time" --beam-width 4
 *
 * Each input line is a JSON object with `prompt` (text) or `prompt_ids`,
 * and any of the OpenAI / vLLM sampling fields (see exec_cli.h). The
 * command-line sampling flags set the defaults for lines that omit a field.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/model_config.h"
#include "cli_signal.h"
#include "commands.h"
#include "exec_cli.h"
#include "request_flags.h"

#define TOOL "anvil run"

typedef struct batch_args {
    const char *model;
    const char *input;
    const char *output;
    const char *prompt;
    const char *prompt_ids;
    request_values rv; /* the request flags: defaults of the lines */
    exec_cli_opts eo;
} batch_args;

int anvil_run_batch_wanted(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0)
            break;
        if (strcmp(a, "--input") == 0 || strncmp(a, "--input=", 8) == 0 || strcmp(a, "--beam-width") == 0 ||
            strncmp(a, "--beam-width=", 13) == 0)
            return 1;
    }
    return 0;
}

static void batch_usage(FILE *out)
{
    fprintf(out,
            "usage: anvil run --model DIR --input FILE.jsonl [options]\n"
            "       anvil run --model DIR (--prompt TEXT | --prompt-ids IDS) --beam-width N [options]\n"
            "\n"
            "Runs every request of FILE through the executor concurrently, and prints one JSON result a\n"
            "line in input order: {\"index\", \"choices\": [{\"text\", \"token_ids\", \"finish_reason\", ...}],\n"
            "\"usage\"}. With --beam-width, every beam and its score. A line is a JSON object with\n"
            "\"prompt\" or \"prompt_ids\" and any of these fields:\n ");
    size_t col = 1;
    for (size_t i = 0; i < n_request_flags; i++) {
        if (request_flags[i].field == NULL)
            continue;
        const size_t len = strlen(request_flags[i].field) + 2;
        if (col + len > 96) {
            fputs("\n ", out);
            col = 1;
        }
        fprintf(out, " %s,", request_flags[i].field);
        col += len;
    }
    fprintf(out, "\n  logit_bias, use_beam_search, early_stopping.\n"
                 "\n"
                 "  -m, --model DIR             Hugging Face model folder or engine file\n"
                 "      --input FILE            requests, one JSON object a line ('-': stdin)\n"
                 "  -o, --output FILE           write the results there instead of stdout\n"
                 "  -p, --prompt TEXT           one prompt instead of --input\n"
                 "      --prompt-ids IDS        one prompt as comma-separated token ids\n"
                 "\n"
                 "The request flags: defaults for the lines that omit the field of the same name\n");
    request_flags_help(out, RF_BATCH);
    fprintf(out, "\n" EXEC_CLI_HELP EXEC_CLI_RANDOM_HELP "  -h, --help                  this help\n");
}

static int parse_args(int argc, char **argv, batch_args *a)
{
    enum { OPT_INPUT = 256, OPT_IDS };
    static const struct option own[] = {
        {"model", required_argument, 0, 'm'},          {"input", required_argument, 0, OPT_INPUT},
        {"output", required_argument, 0, 'o'},         {"prompt", required_argument, 0, 'p'},
        {"prompt-ids", required_argument, 0, OPT_IDS}, {"help", no_argument, 0, 'h'},
        EXEC_CLI_LONGOPTS,                             {0, 0, 0, 0},
    };
    memset(a, 0, sizeof *a);
    request_values_init(&a->rv);
    exec_cli_opts_default(&a->eo);
    exec_cli_parser p;
    if (exec_cli_parser_init(&p, RF_BATCH, own, "m:o:p:h", &a->rv, &a->eo, TOOL, argc, argv) != 0)
        return 2;
    int c;
    while ((c = exec_cli_parser_next(&p)) != -1) {
        switch (c) {
        case 'm': a->model = optarg; break;
        case OPT_INPUT: a->input = optarg; break;
        case 'o': a->output = optarg; break;
        case 'p': a->prompt = optarg; break;
        case OPT_IDS: a->prompt_ids = optarg; break;
        case 'h': batch_usage(stdout); return 0;
        case EXEC_CLI_BAD: return 2;
        default: return exec_cli_parser_bad(&p);
        }
    }
    if (optind < argc) {
        fprintf(stderr, TOOL ": unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (exec_cli_random_resolve(&a->eo.random, &a->eo.rt, &a->model, TOOL) != 0)
        return 2;
    if ((a->input != NULL) + (a->prompt != NULL) + (a->prompt_ids != NULL) != 1) {
        fprintf(stderr, TOOL ": give exactly one of --input, --prompt, --prompt-ids\n");
        return 2;
    }
    return -1;
}

/* The requests: one JSON object each (parsed from the input lines or made
 * from --prompt), or the reason a line is not one. */
typedef struct line {
    json_t *obj;
    char *error;
} line;

static int read_lines(const char *path, line **out, long *n_out)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, TOOL ": cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    line *lines = NULL;
    long n = 0, cap = 0;
    char *buf = NULL;
    size_t bcap = 0;
    ssize_t len;
    int rc = 0;
    while ((len = getline(&buf, &bcap, f)) >= 0) {
        size_t k = (size_t)len;
        while (k > 0 && (buf[k - 1] == '\n' || buf[k - 1] == '\r' || buf[k - 1] == ' '))
            k--;
        if (k == 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            line *p = realloc(lines, (size_t)cap * sizeof *p);
            if (p == NULL) {
                rc = -1;
                break;
            }
            lines = p;
        }
        line *l = &lines[n++];
        memset(l, 0, sizeof *l);
        json_error_t jerr;
        l->obj = json_loadb(buf, k, JSON_REJECT_DUPLICATES, &jerr);
        if (l->obj == NULL) {
            char msg[300];
            snprintf(msg, sizeof msg, "line %ld: %s (column %d)", n, jerr.text, jerr.column);
            l->error = strdup(msg);
        }
    }
    free(buf);
    if (f != stdin)
        fclose(f);
    if (rc != 0)
        fprintf(stderr, TOOL ": out of memory reading %s\n", path);
    *out = lines;
    *n_out = n;
    return rc;
}

static json_t *single_prompt(const batch_args *a)
{
    json_t *o = json_object();
    if (a->prompt) {
        json_object_set_new(o, "prompt", json_string(a->prompt));
        return o;
    }
    int32_t *v = NULL, n = 0;
    if (request_ids_parse(a->prompt_ids, &v, &n) != 0) {
        fprintf(stderr, TOOL ": --prompt-ids expects comma-separated token ids, got '%s'\n", a->prompt_ids);
        json_decref(o);
        return NULL;
    }
    json_t *ids = json_array();
    for (int32_t i = 0; i < n; i++)
        json_array_append_new(ids, json_integer(v[i]));
    free(v);
    json_object_set_new(o, "prompt_ids", ids);
    return o;
}

/* A line's defaults: the model's generation_config.json, then the flags. */
static void defaults(const batch_args *a, const anvil_model_config *cfg, anvil_request *r)
{
    anvil_request_init(r);
    r->max_tokens = 256;
    if (cfg->gen_temperature >= 0)
        r->sampling.temperature = cfg->gen_temperature;
    if (cfg->gen_top_k > 0 && !request_values_given(&a->rv, RQ_TEMPERATURE))
        r->sampling.top_k = cfg->gen_top_k;
    request_values_apply(&a->rv, r);
    r->retain_result = 1;
}

/* Ctrl-C while the requests run: every request still in flight is
 * cancelled (its result, with what it generated, comes back with
 * finish_reason "cancelled"), so the output keeps a line for each. */
typedef struct sigint_watch {
    anvil_executor *ex;
    const uint64_t *ids;
    long n;
    atomic_int done;
} sigint_watch;

static void *watch_main(void *arg)
{
    sigint_watch *w = arg;
    while (!atomic_load(&w->done)) {
        if (cli_sigint_seen()) {
            for (long i = 0; i < w->n; i++)
                if (w->ids[i] != 0)
                    anvil_executor_cancel(w->ex, w->ids[i]); /* one finished already: an error we ignore */
            return NULL;
        }
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int anvil_run_batch(int argc, char **argv)
{
    batch_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) {
        request_values_free(&a.rv);
        return rc;
    }
    line *lines = NULL;
    long n = 0;
    if (a.input) {
        if (read_lines(a.input, &lines, &n)) {
            request_values_free(&a.rv);
            return 1;
        }
    } else {
        lines = calloc(1, sizeof *lines);
        if (lines == NULL || (lines[0].obj = single_prompt(&a)) == NULL) {
            free(lines);
            request_values_free(&a.rv);
            return 2;
        }
        n = 1;
    }
    FILE *out = stdout;
    json_t *flag_stops = NULL; /* {"stop": --stop's strings} */
    anvil_runtime *rt = NULL;
    anvil_tokenizer *tok = NULL;
    anvil_executor *ex = NULL;
    uint64_t *ids = calloc((size_t)(n ? n : 1), sizeof *ids);
    int *beam = calloc((size_t)(n ? n : 1), sizeof *beam);
    int32_t *max_tokens = calloc((size_t)(n ? n : 1), sizeof *max_tokens);
    anvil_grammar **grams = calloc((size_t)(n ? n : 1), sizeof *grams); /* borrowed by the executor till the end */
    anvil_grammar_vocab *gvocab = NULL;
    rc = 1;
    if (ids == NULL || beam == NULL || max_tokens == NULL || grams == NULL) {
        fprintf(stderr, TOOL ": out of memory\n");
        goto done;
    }
    if (a.output && (out = fopen(a.output, "w")) == NULL) {
        fprintf(stderr, TOOL ": cannot write %s: %s\n", a.output, strerror(errno));
        out = stdout;
        goto done;
    }
    cli_sigint_install(TOOL); /* loading: Ctrl-C exits 130 */
    if (exec_cli_load(&a.eo, a.model, TOOL, &rt, &tok, &ex))
        goto done;
    const anvil_model_config *cfg = anvil_runtime_config(rt);
    flag_stops = json_object();
    json_t *stops = json_array();
    for (int32_t k = 0; k < a.rv.req.n_stop; k++)
        json_array_append_new(stops, json_string(a.rv.stop[k]));
    json_object_set_new(flag_stops, "stop", stops);
    const double t0 = exec_cli_now();
    for (long i = 0; i < n; i++) {
        line *l = &lines[i];
        if (l->error)
            continue;
        exec_cli_request q = {0};
        defaults(&a, cfg, &q.req);
        char err[300];
        if (exec_cli_request_from_json(l->obj, &q, err, sizeof err) != 0 ||
            exec_cli_request_grammar(l->obj, tok, cfg, &gvocab, &grams[i], err, sizeof err) != 0) {
            char msg[340];
            snprintf(msg, sizeof msg, "line %ld: %s", i + 1, err);
            l->error = strdup(msg);
        } else {
            q.req.grammar = grams[i];
            if (anvil_executor_enqueue(ex, &q.req, &ids[i]) != ANVIL_OK) {
                char msg[340];
                snprintf(msg, sizeof msg, "line %ld: %s", i + 1, anvil_last_error());
                l->error = strdup(msg);
            }
        }
        beam[i] = q.req.beam_width > 1;
        max_tokens[i] = q.req.max_tokens;
        exec_cli_request_clear(&q); /* the executor copied what it keeps; obj names the stop strings later */
    }
    sigint_watch watch = {.ex = ex, .ids = ids, .n = n};
    pthread_t watcher;
    cli_sigint_keep(); /* from here the first Ctrl-C cancels what runs, and every line is written */
    const int watching = pthread_create(&watcher, NULL, watch_main, &watch) == 0;
    int failed = 0;
    int64_t n_prompt = 0, n_out = 0;
    for (long i = 0; i < n; i++) {
        json_t *o;
        anvil_result *res = NULL;
        if (lines[i].error == NULL && anvil_executor_wait(ex, ids[i], &res) != ANVIL_OK) {
            char msg[340];
            snprintf(msg, sizeof msg, "line %ld: %s", i + 1, anvil_last_error());
            lines[i].error = strdup(msg);
        }
        if (res != NULL) {
            /* the stop string that matched: the line's own, else --stop's */
            json_t *named = json_object_get(lines[i].obj, "stop") ? lines[i].obj : flag_stops;
            o = exec_cli_result_json(res, i, beam[i], named);
            /* a max_tokens the context could not hold in full: say so, as anvil run --json does */
            const int32_t ctx = anvil_runtime_options_get(rt)->max_seq_len;
            if (res->status == ANVIL_OK && max_tokens[i] > 0 && (int64_t)res->n_prompt + max_tokens[i] > ctx)
                json_object_set_new(o, "context_limit",
                                    json_pack("{s:i, s:i, s:i, s:i}", "context", ctx, "prompt_tokens", res->n_prompt,
                                              "max_tokens", max_tokens[i], "max_new_tokens", ctx - res->n_prompt));
            failed |= res->status != ANVIL_OK;
            n_prompt += res->n_prompt;
            for (int32_t k = 0; k < res->n_sequences; k++)
                n_out += res->sequences[k].n_tokens;
            anvil_result_free(res);
        } else {
            o = json_object();
            json_object_set_new(o, "index", json_integer(i));
            json_object_set_new(o, "error", json_string(lines[i].error ? lines[i].error : "out of memory"));
            json_object_set_new(o, "finish_reason", json_string("error"));
            failed = 1;
        }
        char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(o);
        if (s) {
            fputs(s, out);
            fputc('\n', out);
            fflush(out);
        }
        free(s);
    }
    atomic_store(&watch.done, 1);
    if (watching)
        pthread_join(watcher, NULL);
    const double dt = exec_cli_now() - t0;
    if (cli_sigint_seen())
        fprintf(stderr, TOOL ": interrupted: the requests in flight were cancelled (finish_reason \"cancelled\")\n");
    fprintf(stderr, TOOL ": %ld requests, %lld prompt + %lld generated tokens in %.2f s (%.1f generated tokens/s)\n",
            n, (long long)n_prompt, (long long)n_out, dt, dt > 0 ? (double)n_out / dt : 0.0);
    rc = cli_sigint_seen() ? 130 : failed ? 1 : 0;
done:
    anvil_executor_free(ex);
    for (long i = 0; grams && i < n; i++)
        anvil_grammar_free(grams[i]);
    free(grams);
    anvil_grammar_vocab_free(gvocab);
    anvil_runtime_free(rt);
    anvil_tokenizer_free(tok);
    if (out != stdout)
        fclose(out);
    for (long i = 0; i < n; i++) {
        json_decref(lines[i].obj);
        free(lines[i].error);
    }
    free(lines);
    free(ids);
    free(beam);
    free(max_tokens);
    json_decref(flag_stops);
    request_values_free(&a.rv);
    return rc;
}
