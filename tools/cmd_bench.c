/*
 * anvil bench: throughput and latency of the executor (anvil's trtllm-bench).
 *
 *   anvil bench --model DIR --num-requests 200 --input-len 128 --output-len 64:128
 *   anvil bench --model DIR --dataset requests.jsonl --request-rate 20 --json out.json
 *
 * Requests come from a synthetic dataset (random prompt ids of fixed or
 * ranged lengths, ignore_eos so each produces exactly its output length, an
 * optional shared prefix to exercise the prefix cache) or from a JSONL file
 * in `anvil run --input` form. They arrive all at once (throughput), with
 * at most --concurrency in flight (closed loop), or as a Poisson process of
 * --request-rate requests per second (open loop). Timestamps are taken in
 * the executor's event callbacks: time to first token (TTFT) from the
 * request's send time, inter-token latency (ITL) between consecutive token
 * events of a sequence, time per output token (TPOT), end-to-end latency.
 *
 * Structured output: --dataset lines may carry response_format / guided_*
 * (compiled as `anvil run --input` does, exec_grammar.c, once per distinct
 * field), and --response-format json_object or --json-schema FILE
 * constrains every synthetic request. The report adds the compile time and
 * the executor's grammar time per constrained token (grammar_s).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "anvil/model_config.h"
#include "cli_signal.h"
#include "cli_tp.h"
#include "commands.h"
#include "exec_cli.h"
#include "request_flags.h"

#define TOOL "anvil bench"

typedef struct range {
    long lo, hi;
} range;

typedef struct bench_args {
    const char *model;
    const char *dataset;
    const char *json_path;
    long num_requests;
    range input_len, output_len;
    long shared_prefix;
    long concurrency;
    double request_rate;
    request_values rv;      /* the request flags: the synthetic requests', the defaults of --dataset lines */
    int progress;
    const char *response_format; /* synthetic: "json_object" (NULL or "text": none) */
    const char *json_schema;     /* synthetic: a schema file */
    exec_cli_opts eo;
    int32_t tp;             /* --tp N (0: not given) */
    int32_t pp;             /* --pp N (0: not given) */
    double comm_timeout;    /* --comm-timeout S (< 0: not given) */
} bench_args;

/* Per request: written by the executor thread (callbacks), read by the
 * main thread after `done` is set under the bench mutex. */
typedef struct req_rec {
    double t_send, t_first, t_last, t_end;
    int32_t n_prompt, n_out, n_cached;
    double *itl;            /* gaps between token events of sample 0 */
    int32_t n_itl, cap_itl;
    int failed;
    int cancelled;          /* Ctrl-C cancelled it before it finished */
    int done;               /* its last event came (under the bench mutex) */
    uint64_t id;            /* the executor's */
    char error[256];
    struct bench *b;
} req_rec;

typedef struct bench {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long n_done;            /* guarded by mu */
    long in_flight;         /* guarded by mu */
    req_rec *recs;
} bench;

static void bench_usage(FILE *out)
{
    fprintf(out,
            "usage: anvil bench --model DIR [--dataset FILE | synthetic options] [options]\n"
            "       anvil bench --config FILE --random-weights [--weight-seed N] [options]\n"
            "\n"
            "Measures requests/s, tokens/s, time to first token and inter-token latency of the executor.\n"
            "Ctrl-C stops it and reports the requests completed so far (marked partial), exit 130.\n"
            "\n"
            "  -m, --model DIR             Hugging Face model folder or engine file\n"
            "      --dataset FILE          requests in `anvil run --input` form (JSONL)\n"
            "      --num-requests N        requests (default 100; with --dataset: its lines)\n"
            "      --input-len A[:B]       synthetic prompt length, fixed or uniform in [A, B] (default 128)\n"
            "      --output-len A[:B]      synthetic output length (ignore_eos) (default 128)\n"
            "      --shared-prefix N       synthetic prompts start with the same N tokens (default 0)\n"
            "      --concurrency N         at most N requests in flight (default: all at once)\n"
            "      --request-rate R        Poisson arrivals, R requests/s (default: all at once)\n"
            "      --json FILE             write the results as JSON\n"
            "      --no-progress           no progress bar (it shows only on a terminal)\n"
            "      --response-format TYPE  synthetic requests constrained to JSON: json_object (or text: none)\n"
            "      --json-schema FILE      synthetic requests constrained to the JSON schema in FILE\n"
            "\n"
            "The request flags: the synthetic requests' (temperature 0 unless given; request i samples with\n"
            "seed S+i, and S also seeds the dataset and the arrivals), and the defaults of --dataset lines\n");
    request_flags_help(out, RF_BENCH);
    fprintf(out, "\n" CLI_TP_HELP EXEC_CLI_HELP EXEC_CLI_RANDOM_HELP "  -h, --help                  this help\n");
}

static int parse_range(const char *s, const char *flag, range *r)
{
    char *end = NULL;
    long a = strtol(s, &end, 10), b = a;
    if (end != s && *end == ':') {
        const char *q = end + 1;
        b = strtol(q, &end, 10);
        if (end == q)
            end = (char *)s;
    }
    if (end == s || *end != '\0' || a < 1 || b < a) {
        fprintf(stderr, TOOL ": %s expects N or A:B with 1 <= A <= B, got '%s'\n", flag, s);
        return -1;
    }
    r->lo = a;
    r->hi = b;
    return 0;
}

static int parse_args(int argc, char **argv, bench_args *a)
{
    enum { OPT_DATASET = 256, OPT_NUM, OPT_IN, OPT_OUT, OPT_PREFIX, OPT_CONC, OPT_RATE, OPT_JSON, OPT_NOPROG,
           OPT_RF, OPT_SCHEMA, OPT_TP, OPT_PP, OPT_COMM_TIMEOUT,
           OPT_PP_MICRO };
    static const struct option own[] = {
        {"model", required_argument, 0, 'm'},           {"dataset", required_argument, 0, OPT_DATASET},
        {"num-requests", required_argument, 0, OPT_NUM}, {"input-len", required_argument, 0, OPT_IN},
        {"output-len", required_argument, 0, OPT_OUT},  {"shared-prefix", required_argument, 0, OPT_PREFIX},
        {"concurrency", required_argument, 0, OPT_CONC}, {"request-rate", required_argument, 0, OPT_RATE},
        {"json", required_argument, 0, OPT_JSON},       {"no-progress", no_argument, 0, OPT_NOPROG},
        {"response-format", required_argument, 0, OPT_RF}, {"json-schema", required_argument, 0, OPT_SCHEMA},
        {"tp", required_argument, 0, OPT_TP},           {"pp", required_argument, 0, OPT_PP},
        {"pp-micro-batches", required_argument, 0, OPT_PP_MICRO},
        {"comm-timeout", required_argument, 0, OPT_COMM_TIMEOUT},
        {"help", no_argument, 0, 'h'},                  EXEC_CLI_LONGOPTS,
        {0, 0, 0, 0},
    };
    memset(a, 0, sizeof *a);
    request_values_init(&a->rv);
    a->num_requests = -1;
    a->comm_timeout = -1;
    a->input_len = (range){128, 128};
    a->output_len = (range){128, 128};
    a->progress = isatty(2);
    exec_cli_opts_default(&a->eo);
    exec_cli_parser p;
    if (exec_cli_parser_init(&p, RF_BENCH, own, "m:h", &a->rv, &a->eo, TOOL, argc, argv) != 0)
        return 2;
    int c;
    while ((c = exec_cli_parser_next(&p)) != -1) {
        switch (c) {
        case 'm': a->model = optarg; break;
        case OPT_DATASET: a->dataset = optarg; break;
        case OPT_NUM:
            if (exec_cli_int(optarg, "--num-requests", 1, 100000000, &a->num_requests, TOOL))
                return 2;
            break;
        case OPT_IN:
            if (parse_range(optarg, "--input-len", &a->input_len))
                return 2;
            break;
        case OPT_OUT:
            if (parse_range(optarg, "--output-len", &a->output_len))
                return 2;
            break;
        case OPT_PREFIX:
            if (exec_cli_int(optarg, "--shared-prefix", 0, 1 << 24, &a->shared_prefix, TOOL))
                return 2;
            break;
        case OPT_CONC:
            if (exec_cli_int(optarg, "--concurrency", 1, 100000000, &a->concurrency, TOOL))
                return 2;
            break;
        case OPT_RATE:
            if (exec_cli_double(optarg, "--request-rate", 1e-6, 1e9, &a->request_rate, TOOL))
                return 2;
            break;
        case OPT_JSON: a->json_path = optarg; break;
        case OPT_NOPROG: a->progress = 0; break;
        case OPT_RF:
            if (strcmp(optarg, "json_object") != 0 && strcmp(optarg, "text") != 0) {
                fprintf(stderr, TOOL ": --response-format expects json_object or text (a schema: --json-schema "
                                "FILE), got '%s'\n", optarg);
                return 2;
            }
            a->response_format = optarg;
            break;
        case OPT_SCHEMA: a->json_schema = optarg; break;
        case OPT_TP: {
            long v;
            if (exec_cli_int(optarg, "--tp", 1, 4096, &v, TOOL))
                return 2;
            a->tp = (int32_t)v;
            break;
        }
        case OPT_PP: {
            long v;
            if (exec_cli_int(optarg, "--pp", 1, 4096, &v, TOOL))
                return 2;
            a->pp = (int32_t)v;
            break;
        }
        case OPT_PP_MICRO: {
            long v;
            if (exec_cli_int(optarg, "--pp-micro-batches", 0, 4096, &v, TOOL))
                return 2;
            a->eo.rt.pp_micro_batches = (int32_t)v;
            break;
        }
        case OPT_COMM_TIMEOUT:
            if (exec_cli_double(optarg, "--comm-timeout", 0, 1e7, &a->comm_timeout, TOOL))
                return 2;
            break;
        case 'h': bench_usage(stdout); return 0;
        case EXEC_CLI_BAD: return 2;
        default:
            if (optind > 0 && strcmp(argv[optind - 1], "--max-tokens") == 0) {
                fprintf(stderr, TOOL ": the synthetic requests' length is --output-len A[:B]; --dataset lines "
                                "give their own max_tokens\n");
                return 2;
            }
            return exec_cli_parser_bad(&p);
        }
    }
    if (optind < argc) {
        fprintf(stderr, TOOL ": unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (exec_cli_random_resolve(&a->eo.random, &a->eo.rt, &a->model, TOOL) != 0)
        return 2;
    if (a->response_format && strcmp(a->response_format, "text") == 0)
        a->response_format = NULL;
    if (a->json_schema && a->response_format) {
        fprintf(stderr, TOOL ": --json-schema and --response-format json_object are two constraints: give one\n");
        return 2;
    }
    if (a->dataset && (a->json_schema || a->response_format)) {
        fprintf(stderr, TOOL ": --response-format and --json-schema constrain the synthetic requests; --dataset "
                        "lines carry their own response_format or guided_* fields\n");
        return 2;
    }
    return -1;
}

/* ------------------------------------------------------------ callbacks */

static void on_event(void *user, const anvil_event *ev)
{
    req_rec *r = user;
    const double now = exec_cli_now();
    if (ev->kind == ANVIL_EVENT_TOKENS) {
        if (ev->index != 0)
            return;
        if (r->t_first == 0) {
            r->t_first = now;
        } else if (r->n_itl < r->cap_itl) {
            r->itl[r->n_itl++] = now - r->t_last;
        }
        r->t_last = now;
        return;
    }
    const anvil_result *res = ev->result;
    r->t_end = now;
    r->n_prompt = res->n_prompt;
    r->n_cached = res->n_cached_prompt;
    for (int32_t i = 0; i < res->n_sequences; i++)
        r->n_out += res->sequences[i].n_tokens;
    if (res->finish == ANVIL_REQUEST_CANCELLED) {
        r->cancelled = 1;
    } else if (res->status != ANVIL_OK) {
        r->failed = 1;
        snprintf(r->error, sizeof r->error, "%s", res->error);
    }
    if (r->t_first == 0 && r->n_out > 0) /* beams stream nothing: first token = end */
        r->t_first = r->t_last = now;
    bench *b = r->b;
    pthread_mutex_lock(&b->mu);
    r->done = 1;
    b->n_done++;
    b->in_flight--;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

/* ------------------------------------------------------------ datasets */

typedef struct dataset {
    exec_cli_request *reqs;
    json_t **objs;
    long n;
    int32_t *ids;           /* synthetic prompts' storage */
    /* structured output: one grammar per distinct key (exec_cli_grammar_key),
     * borrowed by the requests; freed after the executor */
    anvil_grammar_vocab *vocab;
    char **gkeys;
    anvil_grammar **grams;
    int n_grams;
    long n_constrained;
    double vocab_s, compile_s;
} dataset;

/* The grammar obj asks for (NULL: none), compiled once per distinct key. */
static int dataset_grammar(dataset *d, json_t *obj, const anvil_tokenizer *tok, const anvil_model_config *cfg,
                           anvil_grammar **out, char *err, size_t n)
{
    *out = NULL;
    char *key;
    if (exec_cli_grammar_key(obj, &key) != 0)
        return snprintf(err, n, "out of memory"), -1;
    if (key == NULL)
        return 0;
    d->n_constrained++;
    for (int i = 0; i < d->n_grams; i++)
        if (strcmp(d->gkeys[i], key) == 0) {
            free(key);
            *out = d->grams[i];
            return 0;
        }
    if (d->vocab == NULL) {
        const double t0 = exec_cli_now();
        if (exec_cli_grammar_vocab(tok, cfg, &d->vocab, err, n) != 0) {
            free(key);
            return -1;
        }
        d->vocab_s = exec_cli_now() - t0;
    }
    char **k2 = realloc(d->gkeys, (size_t)(d->n_grams + 1) * sizeof *k2);
    if (k2)
        d->gkeys = k2;
    anvil_grammar **g2 = k2 ? realloc(d->grams, (size_t)(d->n_grams + 1) * sizeof *g2) : NULL;
    if (g2)
        d->grams = g2;
    if (!k2 || !g2) {
        free(key);
        return snprintf(err, n, "out of memory"), -1;
    }
    const double t0 = exec_cli_now();
    if (exec_cli_request_grammar(obj, tok, cfg, &d->vocab, out, err, n) != 0) {
        free(key);
        return -1;
    }
    d->compile_s += exec_cli_now() - t0;
    d->gkeys[d->n_grams] = key;
    d->grams[d->n_grams++] = *out;
    return 0;
}

static void dataset_free(dataset *d)
{
    for (int i = 0; i < d->n_grams; i++) {
        anvil_grammar_free(d->grams[i]);
        free(d->gkeys[i]);
    }
    free(d->grams);
    free(d->gkeys);
    anvil_grammar_vocab_free(d->vocab);
    for (long i = 0; d->reqs && i < d->n; i++)
        exec_cli_request_clear(&d->reqs[i]);
    for (long i = 0; d->objs && i < d->n; i++)
        json_decref(d->objs[i]);
    free(d->reqs);
    free(d->objs);
    free(d->ids);
}

static long pick(range r, uint64_t *rng)
{
    if (r.hi == r.lo)
        return r.lo;
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    return r.lo + (long)(*rng % (uint64_t)(r.hi - r.lo + 1));
}

static int synthetic(const bench_args *a, const anvil_runtime *rt, const anvil_tokenizer *tok, dataset *d)
{
    const anvil_model_config *cfg = anvil_runtime_config(rt);
    const int32_t vocab = (int32_t)cfg->vocab_size;
    const long n = a->num_requests > 0 ? a->num_requests : 100;
    const uint64_t seed = a->rv.req.sampling.seed;
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ seed;
    /* usable ids: not special, not BOS/EOS/pad */
    int32_t *usable = malloc((size_t)vocab * sizeof *usable);
    int32_t n_usable = 0;
    int rc = 0;
    for (int32_t t = 0; usable && t < vocab; t++) {
        int bad = t == cfg->bos_token_id || t == cfg->pad_token_id || (tok && anvil_tokenizer_is_special(tok, t));
        for (int k = 0; k < cfg->n_eos_token_ids; k++)
            bad |= t == cfg->eos_token_ids[k];
        if (!bad)
            usable[n_usable++] = t;
    }
    long total = 0;
    long *lens = malloc((size_t)n * sizeof *lens), *outs = malloc((size_t)n * sizeof *outs);
    d->reqs = calloc((size_t)n, sizeof *d->reqs);
    if (!usable || !lens || !outs || !d->reqs || n_usable == 0) {
        fprintf(stderr, TOOL ": out of memory\n");
        free(usable);
        free(lens);
        free(outs);
        return -1;
    }
    for (long i = 0; i < n; i++) {
        lens[i] = pick(a->input_len, &rng);
        if (lens[i] < a->shared_prefix + 1)
            lens[i] = a->shared_prefix + 1;
        outs[i] = pick(a->output_len, &rng);
        total += lens[i];
    }
    d->ids = malloc((size_t)total * sizeof *d->ids);
    int32_t *prefix = malloc((size_t)(a->shared_prefix + 1) * sizeof *prefix);
    if (d->ids == NULL || prefix == NULL) {
        fprintf(stderr, TOOL ": out of memory\n");
        free(usable);
        free(lens);
        free(outs);
        free(prefix);
        return -1;
    }
    for (long k = 0; k < a->shared_prefix; k++)
        prefix[k] = usable[pick((range){0, n_usable - 1}, &rng)];
    long off = 0;
    for (long i = 0; i < n; i++) {
        int32_t *p = d->ids + off;
        for (long k = 0; k < lens[i]; k++)
            p[k] = k < a->shared_prefix ? prefix[k] : usable[pick((range){0, n_usable - 1}, &rng)];
        if (cfg->bos_token_id >= 0 && a->shared_prefix == 0)
            p[0] = cfg->bos_token_id;
        anvil_request *r = &d->reqs[i].req;
        anvil_request_init(r);
        r->sampling.temperature = 0; /* greedy unless --temperature */
        request_values_apply(&a->rv, r);
        r->prompt_ids = p;
        r->n_prompt_ids = (int32_t)lens[i];
        r->max_tokens = (int32_t)outs[i];
        r->ignore_eos = 1;
        r->sampling.seed = seed + (uint64_t)i;
        r->has_seed = 1;
        off += lens[i];
    }
    if (a->response_format || a->json_schema) {
        /* the request an OpenAI client would send, through the same compile */
        json_t *schema = NULL;
        json_error_t jerr;
        if (a->json_schema && (schema = json_load_file(a->json_schema, JSON_DECODE_ANY, &jerr)) == NULL) {
            fprintf(stderr, TOOL ": --json-schema %s: %s (line %d)\n", a->json_schema, jerr.text, jerr.line);
            rc = -1;
        }
        json_t *obj = rc ? NULL
                      : schema ? json_pack("{s:{s:s, s:{s:s, s:o}}}", "response_format", "type", "json_schema",
                                            "json_schema", "name", "bench", "schema", schema)
                               : json_pack("{s:{s:s}}", "response_format", "type", "json_object");
        char err[512];
        anvil_grammar *g = NULL;
        if (rc == 0 && obj == NULL) {
            fprintf(stderr, TOOL ": out of memory\n");
            rc = -1;
        } else if (rc == 0 && dataset_grammar(d, obj, tok, cfg, &g, err, sizeof err) != 0) {
            fprintf(stderr, TOOL ": %s: %s\n", a->json_schema ? a->json_schema : "--response-format", err);
            rc = -1;
        }
        json_decref(obj);
        for (long i = 0; rc == 0 && i < n; i++)
            d->reqs[i].req.grammar = g;
        d->n_constrained = rc == 0 ? n : 0;
    }
    d->n = n;
    free(usable);
    free(lens);
    free(outs);
    free(prefix);
    return rc;
}

static int from_file(const bench_args *a, const anvil_runtime *rt, const anvil_tokenizer *tok, dataset *d)
{
    FILE *f = fopen(a->dataset, "r");
    if (f == NULL) {
        fprintf(stderr, TOOL ": cannot open %s: %s\n", a->dataset, strerror(errno));
        return -1;
    }
    long cap = 0;
    char *buf = NULL;
    size_t bcap = 0;
    ssize_t len;
    int rc = 0;
    while (rc == 0 && (a->num_requests < 0 || d->n < a->num_requests) && (len = getline(&buf, &bcap, f)) >= 0) {
        if (len <= 1)
            continue;
        if (d->n == cap) {
            cap = cap ? cap * 2 : 64;
            exec_cli_request *rq = realloc(d->reqs, (size_t)cap * sizeof *rq);
            json_t **ob = rq ? realloc(d->objs, (size_t)cap * sizeof *ob) : NULL;
            if (rq)
                d->reqs = rq;
            if (ob)
                d->objs = ob;
            if (!rq || !ob) {
                fprintf(stderr, TOOL ": out of memory\n");
                rc = -1;
                break;
            }
        }
        json_error_t jerr;
        json_t *o = json_loadb(buf, (size_t)len, 0, &jerr);
        if (o == NULL) {
            fprintf(stderr, TOOL ": %s line %ld: %s\n", a->dataset, d->n + 1, jerr.text);
            rc = -1;
            break;
        }
        exec_cli_request *q = &d->reqs[d->n];
        memset(q, 0, sizeof *q);
        anvil_request_init(&q->req);
        q->req.max_tokens = 256;
        request_values_apply(&a->rv, &q->req);
        d->objs[d->n++] = o;
        char err[512];
        anvil_grammar *g = NULL;
        if (exec_cli_request_from_json(o, q, err, sizeof err) ||
            dataset_grammar(d, o, tok, anvil_runtime_config(rt), &g, err, sizeof err)) {
            fprintf(stderr, TOOL ": %s line %ld: %s\n", a->dataset, d->n, err);
            rc = -1;
        }
        q->req.grammar = g;
    }
    free(buf);
    fclose(f);
    if (rc == 0 && d->n == 0) {
        fprintf(stderr, TOOL ": %s holds no request\n", a->dataset);
        rc = -1;
    }
    return rc;
}

/* ------------------------------------------------------------ statistics */

static int cmp_double(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

typedef struct summary {
    double mean, p50, p90, p99, max;
    long n;
} summary;

/* Percentiles with linear interpolation (numpy's default). Sorts v. */
static summary summarize(double *v, long n)
{
    summary s = {0};
    s.n = n;
    if (n == 0)
        return s;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double sum = 0;
    for (long i = 0; i < n; i++)
        sum += v[i];
    s.mean = sum / (double)n;
    const double qs[3] = {0.5, 0.9, 0.99};
    double *outs[3] = {&s.p50, &s.p90, &s.p99};
    for (int k = 0; k < 3; k++) {
        double pos = qs[k] * (double)(n - 1);
        long i = (long)pos;
        double frac = pos - (double)i;
        *outs[k] = i + 1 < n ? v[i] + frac * (v[i + 1] - v[i]) : v[i];
    }
    s.max = v[n - 1];
    return s;
}

static json_t *summary_json(summary s, double scale)
{
    json_t *o = json_object();
    json_object_set_new(o, "mean", json_real(s.mean * scale));
    json_object_set_new(o, "p50", json_real(s.p50 * scale));
    json_object_set_new(o, "p90", json_real(s.p90 * scale));
    json_object_set_new(o, "p99", json_real(s.p99 * scale));
    json_object_set_new(o, "max", json_real(s.max * scale));
    json_object_set_new(o, "count", json_integer(s.n));
    return o;
}

static void print_summary(const char *name, summary s)
{
    printf("  %-26s mean %9.2f   p50 %9.2f   p90 %9.2f   p99 %9.2f\n", name, s.mean * 1e3, s.p50 * 1e3, s.p90 * 1e3,
           s.p99 * 1e3);
}

static void progress(long done, long total, double elapsed, int64_t gen)
{
    const int width = 30;
    int fill = total > 0 ? (int)((double)done / (double)total * width) : width;
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '=' : i == fill ? '>' : ' ';
    bar[width] = '\0';
    fprintf(stderr, "\r[%s] %ld/%ld requests  %.0f tok/s  %.1f s ", bar, done, total,
            elapsed > 0 ? (double)gen / elapsed : 0.0, elapsed);
    fflush(stderr);
}

static void cpu_model(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f == NULL)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *c = strchr(line, ':');
            if (c) {
                c++;
                while (*c == ' ')
                    c++;
                c[strcspn(c, "\n")] = '\0';
                snprintf(buf, cap, "%s", c);
            }
            break;
        }
    }
    fclose(f);
}

/* ------------------------------------------------------------ main */

static double exp_sample(uint64_t *rng, double rate)
{
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    double u = ((double)(*rng >> 11) + 0.5) * 0x1.0p-53;
    return -log(u) / rate;
}

static void wait_until(bench *b, double t)
{
    double now = exec_cli_now();
    if (t <= now)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double wake = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 + (t - now);
    ts.tv_sec = (time_t)wake;
    ts.tv_nsec = (long)((wake - (double)ts.tv_sec) * 1e9);
    pthread_cond_timedwait(&b->cv, &b->mu, &ts);
}

int anvil_cmd_bench(int argc, char **argv)
{
    bench_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) {
        request_values_free(&a.rv);
        return rc;
    }
    anvil_comm *comm = NULL;
    if (a.tp > 1 || a.pp > 1) {
        if (!a.eo.kv_set) { /* the same KV cache on every rank (cli_tp.h) */
            cli_tp_kv_tokens(&a.eo.rt, a.model);
            a.eo.kv_set = 1;
        }
        if (cli_tp_join(TOOL, a.tp, a.pp, &a.model, a.comm_timeout, &a.eo.rt, &comm) != 0) {
            request_values_free(&a.rv);
            return 1;
        }
        if (anvil_comm_rank(comm) != 0) { /* the others follow rank 0's steps */
            request_values_free(&a.rv);
            return cli_tp_follow(TOOL, a.model, &a.eo.rt);
        }
    }
    cli_sigint_install(TOOL); /* loading: Ctrl-C exits 130 */
    anvil_runtime *rt = NULL;
    anvil_tokenizer *tok = NULL;
    anvil_executor *ex = NULL;
    dataset d = {0};
    bench b = {0};
    int sync_ok = pthread_mutex_init(&b.mu, NULL) == 0 && pthread_cond_init(&b.cv, NULL) == 0;
    rc = 1;
    if (!sync_ok || exec_cli_load(&a.eo, a.model, TOOL, &rt, &tok, &ex))
        goto done;
    if (a.dataset ? from_file(&a, rt, tok, &d) : synthetic(&a, rt, tok, &d))
        goto done;
    b.recs = calloc((size_t)d.n, sizeof *b.recs);
    if (b.recs == NULL)
        goto done;
    for (long i = 0; i < d.n; i++) {
        req_rec *r = &b.recs[i];
        r->b = &b;
        r->cap_itl = d.reqs[i].req.max_tokens > 0 ? d.reqs[i].req.max_tokens : anvil_runtime_options_get(rt)->max_seq_len;
        r->itl = malloc((size_t)r->cap_itl * sizeof *r->itl);
        if (r->itl == NULL)
            goto done;
        d.reqs[i].req.on_event = on_event;
        d.reqs[i].req.user = r;
    }
    const long conc = a.concurrency > 0 ? a.concurrency : d.n;
    uint64_t arng = 0x2545f4914f6cdd1dull ^ a.rv.req.sampling.seed;
    fprintf(stderr, TOOL ": %ld requests, %s, %s\n", d.n, a.dataset ? a.dataset : "synthetic",
            a.request_rate > 0 ? "Poisson arrivals" : "closed loop");

    const double t0 = exec_cli_now();
    double next_arrival = t0, last_progress = 0;
    long sent = 0;
    int peak_used = 0, interrupted = 0;
    cli_sigint_keep(); /* from here Ctrl-C reports what completed */
    pthread_mutex_lock(&b.mu);
    while (b.n_done < d.n) {
        if (cli_sigint_seen()) {
            interrupted = 1;
            break;
        }
        const double now = exec_cli_now();
        if (sent < d.n && b.in_flight < conc && (a.request_rate <= 0 || now >= next_arrival)) {
            b.recs[sent].t_send = now;
            b.in_flight++;
            pthread_mutex_unlock(&b.mu);
            /* enqueue outside the lock: a callback may need it */
            if (anvil_executor_enqueue(ex, &d.reqs[sent].req, &b.recs[sent].id) != ANVIL_OK) {
                req_rec *r = &b.recs[sent];
                r->failed = 1;
                snprintf(r->error, sizeof r->error, "%s", anvil_last_error());
                r->t_end = exec_cli_now();
                pthread_mutex_lock(&b.mu);
                r->done = 1;
                b.in_flight--;
                b.n_done++;
            } else {
                pthread_mutex_lock(&b.mu);
            }
            sent++;
            if (a.request_rate > 0)
                next_arrival += exp_sample(&arng, a.request_rate);
            continue;
        }
        double until = now + 0.1;
        if (sent < d.n && a.request_rate > 0 && b.in_flight < conc && next_arrival < until)
            until = next_arrival;
        wait_until(&b, until);
        anvil_executor_metrics m;
        if (anvil_executor_stats(ex, &m) == ANVIL_OK && m.kv_blocks_used > peak_used)
            peak_used = m.kv_blocks_used;
        if (a.progress && exec_cli_now() - last_progress > 0.2) {
            last_progress = exec_cli_now();
            progress(b.n_done, d.n, last_progress - t0, m.generated_tokens);
        }
    }
    pthread_mutex_unlock(&b.mu);
    const double t_end = exec_cli_now();
    if (interrupted) {
        /* cancel what is in flight and wait for its last events: the
         * report counts the requests that completed before Ctrl-C */
        for (long i = 0; i < sent; i++) {
            pthread_mutex_lock(&b.mu);
            const int done_i = b.recs[i].done;
            pthread_mutex_unlock(&b.mu);
            if (!done_i)
                anvil_executor_cancel(ex, b.recs[i].id);
        }
        pthread_mutex_lock(&b.mu);
        while (b.in_flight > 0)
            wait_until(&b, exec_cli_now() + 0.1);
        pthread_mutex_unlock(&b.mu);
        if (a.progress)
            fputc('\n', stderr);
    } else if (a.progress) {
        progress(d.n, d.n, t_end - t0, 0);
        fputc('\n', stderr);
    }
    anvil_executor_metrics m;
    anvil_executor_stats(ex, &m);

    /* ---- statistics */
    long n_ok = 0, n_itl = 0, n_fail = 0, n_cancelled = 0, n_unsent = 0;
    int64_t in_tok = 0, out_tok = 0, cached = 0;
    for (long i = 0; i < d.n; i++) {
        n_itl += b.recs[i].n_itl;
        if (!b.recs[i].done || b.recs[i].cancelled) { /* Ctrl-C: not sent, or cancelled in flight */
            n_cancelled += i < sent;
            n_unsent += i >= sent;
            continue;
        }
        if (b.recs[i].failed) {
            if (n_fail++ == 0)
                fprintf(stderr, TOOL ": request %ld failed: %s\n", i, b.recs[i].error);
            continue;
        }
        n_ok++;
        in_tok += b.recs[i].n_prompt;
        out_tok += b.recs[i].n_out;
        cached += b.recs[i].n_cached;
    }
    double *ttft = malloc((size_t)(d.n + 1) * sizeof *ttft), *e2e = malloc((size_t)(d.n + 1) * sizeof *e2e);
    double *tpot = malloc((size_t)(d.n + 1) * sizeof *tpot), *itl = malloc((size_t)(n_itl + 1) * sizeof *itl);
    if (!ttft || !e2e || !tpot || !itl) {
        free(ttft);
        free(e2e);
        free(tpot);
        free(itl);
        goto done;
    }
    long k = 0, n_tpot = 0, j = 0;
    for (long i = 0; i < d.n; i++) {
        const req_rec *r = &b.recs[i];
        if (r->failed || r->cancelled || !r->done)
            continue;
        ttft[k] = r->t_first - r->t_send;
        e2e[k] = r->t_end - r->t_send;
        k++;
        if (r->n_itl > 0)
            tpot[n_tpot++] = (r->t_last - r->t_first) / (double)r->n_itl;
        for (int32_t q = 0; q < r->n_itl; q++)
            itl[j++] = r->itl[q];
    }
    const double dur = t_end - t0;
    summary s_ttft = summarize(ttft, k), s_e2e = summarize(e2e, k), s_tpot = summarize(tpot, n_tpot),
            s_itl = summarize(itl, j);
    const double hit = m.prompt_tokens > 0 ? (double)m.cached_prompt_tokens / (double)m.prompt_tokens : 0.0;
    char cpu[128];
    cpu_model(cpu, sizeof cpu);
    const anvil_runtime_options *ro = anvil_runtime_options_get(rt);
    const int threads = ro->n_threads > 0 ? ro->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);

    if (strcmp(ro->device, "cpu") == 0)
        printf("anvil bench: %s on cpu (%s, %d threads), %s KV cache\n", a.model, cpu, threads,
               anvil_dtype_name(anvil_runtime_kv_cache_dtype(rt)));
    else
        printf("anvil bench: %s on %s, %s compute (host: %s)\n", a.model, ro->device,
               anvil_dtype_name(anvil_runtime_compute_dtype(rt)), cpu);
    if (interrupted)
        printf("  PARTIAL                    interrupted after %.2f s: the %ld requests completed by then (%ld "
               "cancelled in flight, %ld not sent)\n",
               dur, n_ok + n_fail, n_cancelled, n_unsent);
    printf("  requests                   %ld ok, %ld failed, in %.2f s\n", n_ok, n_fail, dur);
    printf("  throughput                 %.2f requests/s, %.1f input tokens/s, %.1f output tokens/s\n",
           (double)n_ok / dur, (double)in_tok / dur, (double)out_tok / dur);
    printf("  tokens                     %lld input (%lld from the prefix cache, %.1f%%), %lld output\n",
           (long long)in_tok, (long long)cached, 100.0 * hit, (long long)out_tok);
    printf("  latency (ms)\n");
    print_summary("time to first token", s_ttft);
    print_summary("inter-token latency", s_itl);
    print_summary("time per output token", s_tpot);
    print_summary("end to end", s_e2e);
    printf("  KV cache                   %d blocks of %d tokens, peak %d used (%.1f%%), %lld preemptions\n",
           m.kv_blocks_total, m.kv_block_size, peak_used,
           m.kv_blocks_total ? 100.0 * peak_used / m.kv_blocks_total : 0.0, (long long)m.preemptions);
    printf("  executor                   %lld steps, %.1f%% busy, policy %s, max %d sequences and %d tokens a step\n",
           (long long)m.steps, dur > 0 ? 100.0 * m.busy_s / dur : 0.0,
           a.eo.ex.policy == ANVIL_CAPACITY_MAX_UTILIZATION ? "max-utilization" : "guaranteed-no-evict",
           ro->max_batch_size, ro->max_num_tokens);
    if (m.steps > 0)
        printf("  per step (ms)              schedule %.3f, forward %.3f, tokens %.3f (sampling on the host, stops, "
               "text, events)\n",
               1e3 * m.schedule_s / (double)m.steps, 1e3 * m.forward_s / (double)m.steps,
               1e3 * m.tokens_s / (double)m.steps);
    const double mask_us = m.grammar_tokens > 0 ? 1e6 * m.grammar_s / (double)m.grammar_tokens : 0.0;
    if (d.n_grams > 0)
        printf("  structured output          %ld of %ld requests constrained; %d distinct grammars compiled in %.2f ms "
               "(vocabulary %.2f ms, once); masks %.1f us a token (%lld tokens, %.1f%% of the tokens phase)\n",
               d.n_constrained, d.n, d.n_grams, 1e3 * d.compile_s, 1e3 * d.vocab_s, mask_us,
               (long long)m.grammar_tokens, m.tokens_s > 0 ? 100.0 * m.grammar_s / m.tokens_s : 0.0);
    if (m.steps > 0)
        printf("  overlap scheduler          %s: %lld of %lld steps launched beside the one before, %.3f ms of "
               "schedule + tokens a step hidden under the device\n",
               a.eo.ex.enable_overlap == ANVIL_OVERLAP_OFF      ? "off (--no-overlap)"
               : a.eo.ex.enable_overlap == ANVIL_OVERLAP_ALWAYS ? "always (--overlap)"
                                                                : "auto",
               (long long)m.overlap_steps, (long long)m.steps, 1e3 * m.overlapped_s / (double)m.steps);

    if (a.json_path) {
        json_t *o = json_object(), *cfgj = json_object(), *lat = json_object();
        json_object_set_new(cfgj, "model", json_string(a.model));
        if (ro->random_weights) { /* the model is a config: the weights' seed and scheme say what ran */
            json_object_set_new(cfgj, "random_weights", json_true());
            json_object_set_new(cfgj, "weight_seed", json_integer((json_int_t)ro->seed));
            json_object_set_new(cfgj, "quantize", json_string(anvil_quantize_name(ro->quantize)));
            json_object_set_new(cfgj, "quantize_lm_head", json_boolean(ro->quantize_lm_head));
        }
        json_object_set_new(cfgj, "device", json_string(ro->device));
        json_object_set_new(cfgj, "cpu", json_string(cpu));
        json_object_set_new(cfgj, "threads", json_integer(threads));
        json_object_set_new(cfgj, "dataset", a.dataset ? json_string(a.dataset) : json_string("synthetic"));
        json_object_set_new(cfgj, "input_len", json_sprintf("%ld:%ld", a.input_len.lo, a.input_len.hi));
        json_object_set_new(cfgj, "output_len", json_sprintf("%ld:%ld", a.output_len.lo, a.output_len.hi));
        json_object_set_new(cfgj, "shared_prefix", json_integer(a.shared_prefix));
        json_object_set_new(cfgj, "response_format",
                            a.json_schema ? json_string("json_schema")
                            : a.response_format ? json_string(a.response_format)
                                                : json_null());
        json_object_set_new(cfgj, "json_schema", a.json_schema ? json_string(a.json_schema) : json_null());
        json_object_set_new(cfgj, "concurrency", json_integer(conc));
        json_object_set_new(cfgj, "request_rate", a.request_rate > 0 ? json_real(a.request_rate) : json_null());
        json_object_set_new(cfgj, "policy", json_string(a.eo.ex.policy == ANVIL_CAPACITY_MAX_UTILIZATION
                                                            ? "max-utilization"
                                                            : "guaranteed-no-evict"));
        json_object_set_new(cfgj, "max_batch_size", json_integer(ro->max_batch_size));
        json_object_set_new(cfgj, "max_num_tokens", json_integer(ro->max_num_tokens));
        json_object_set_new(cfgj, "kv_block_size", json_integer(m.kv_block_size));
        json_object_set_new(cfgj, "kv_blocks", json_integer(m.kv_blocks_total));
        json_object_set_new(o, "config", cfgj);
        json_object_set_new(o, "partial", json_boolean(interrupted));
        if (interrupted) {
            json_object_set_new(o, "cancelled", json_integer(n_cancelled));
            json_object_set_new(o, "not_sent", json_integer(n_unsent));
        }
        json_object_set_new(o, "requests", json_integer(n_ok));
        json_object_set_new(o, "failed", json_integer(n_fail));
        json_object_set_new(o, "duration_s", json_real(dur));
        json_object_set_new(o, "requests_per_s", json_real((double)n_ok / dur));
        json_object_set_new(o, "input_tokens", json_integer(in_tok));
        json_object_set_new(o, "output_tokens", json_integer(out_tok));
        json_object_set_new(o, "input_tokens_per_s", json_real((double)in_tok / dur));
        json_object_set_new(o, "output_tokens_per_s", json_real((double)out_tok / dur));
        json_object_set_new(o, "prefix_hit_rate", json_real(hit));
        json_object_set_new(o, "kv_peak_blocks_used", json_integer(peak_used));
        json_object_set_new(o, "preemptions", json_integer(m.preemptions));
        json_object_set_new(o, "steps", json_integer(m.steps));
        json_object_set_new(o, "schedule_s", json_real(m.schedule_s));
        json_object_set_new(o, "forward_s", json_real(m.forward_s));
        json_object_set_new(o, "tokens_s", json_real(m.tokens_s));
        json_object_set_new(o, "overlapped_s", json_real(m.overlapped_s));
        json_object_set_new(o, "overlap_steps", json_integer(m.overlap_steps));
        json_t *gj = json_object();
        json_object_set_new(gj, "constrained_requests", json_integer(d.n_constrained));
        json_object_set_new(gj, "distinct", json_integer(d.n_grams));
        json_object_set_new(gj, "compile_s", json_real(d.compile_s));
        json_object_set_new(gj, "vocab_s", json_real(d.vocab_s));
        json_object_set_new(gj, "grammar_s", json_real(m.grammar_s));
        json_object_set_new(gj, "grammar_tokens", json_integer(m.grammar_tokens));
        json_object_set_new(gj, "mask_us_per_token", json_real(mask_us));
        json_object_set_new(o, "grammar", gj);
        json_object_set_new(lat, "ttft", summary_json(s_ttft, 1e3));
        json_object_set_new(lat, "itl", summary_json(s_itl, 1e3));
        json_object_set_new(lat, "tpot", summary_json(s_tpot, 1e3));
        json_object_set_new(lat, "e2e", summary_json(s_e2e, 1e3));
        json_object_set_new(o, "latency_ms", lat);
        if (json_dump_file(o, a.json_path, JSON_INDENT(2)) != 0)
            fprintf(stderr, TOOL ": cannot write %s\n", a.json_path);
        json_decref(o);
    }
    free(ttft);
    free(e2e);
    free(tpot);
    free(itl);
    fflush(stdout);
    rc = interrupted ? 130 : n_fail ? 1 : 0;
    if (interrupted)
        fprintf(stderr, TOOL ": interrupted: a partial report of %ld of %ld requests\n", n_ok + n_fail, d.n);
done:
    anvil_executor_free(ex);
    if (b.recs)
        for (long i = 0; i < d.n; i++)
            free(b.recs[i].itl);
    free(b.recs);
    dataset_free(&d);
    anvil_runtime_free(rt); /* with --tp: the other ranks return */
    cli_tp_end(TOOL, comm, 0);
    anvil_tokenizer_free(tok);
    if (sync_ok) {
        pthread_cond_destroy(&b.cv);
        pthread_mutex_destroy(&b.mu);
    }
    request_values_free(&a.rv);
    return rc;
}
