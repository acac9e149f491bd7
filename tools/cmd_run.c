/*
 * anvil run: generate from one prompt and stream the text to stdout.
 *
 *   anvil run --model DIR --prompt "Once upon a time" --max-tokens 100
 *   anvil run --model DIR --prompt-ids 1,403,407 --json
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/chat_template.h"
#include "anvil/generate.h"
#include "anvil/runtime.h"
#include "anvil/tokenizer.h"
#include "cli_env.h"
#include "cli_error.h"
#include "cli_signal.h"
#include "cli_tp.h"
#include "commands.h"
#include "exec_cli.h"
#include "request_flags.h"

typedef struct run_args {
    const char *model;
    const char *prompt;
    const char *prompt_ids;
    const char *system;
    int chat;
    int json;
    int no_echo;
    request_values rv;         /* the request flags (request_flags.c) */
    const char *refit_weights; /* --refit-weights: new weights after refit_after tokens */
    int32_t refit_after;
    int refit_after_set;
    int32_t tp;                /* --tp N: ranks of mpirun (0: not given) */
    int32_t pp;                /* --pp N: pipeline stages (0: not given) */
    double comm_timeout;       /* --comm-timeout S (< 0: not given) */
    exec_cli_random random;    /* --config FILE --random-weights: no model file */
    anvil_runtime_options rt;
} run_args;

static void run_usage(FILE *out)
{
    fprintf(out,
            "usage: anvil run --model DIR (--prompt TEXT | --prompt-ids IDS) [options]\n"
            "       anvil run --config FILE --random-weights --prompt-ids IDS [--weight-seed N] [options]\n"
            "\n"
            "Generates a continuation of one prompt and streams it to stdout. Ctrl-C stops it: the text so\n"
            "far stays (--json prints it with \"finish_reason\": \"cancelled\"), exit 130.\n"
            "\n"
            "  -m, --model DIR             Hugging Face model folder (config.json, *.safetensors,\n"
            "                              tokenizer.json) or engine file (anvil build)\n"
            "  -p, --prompt TEXT           the prompt, tokenized with the model's tokenizer (BOS added as\n"
            "                              the tokenizer does)\n"
            "      --prompt-ids IDS        the prompt as comma-separated token ids, e.g. 1,403,407\n"
            "      --chat                  wrap the prompt as a user message in the model's chat template\n"
            "      --system TEXT           with --chat: a system message before it\n"
            "      --input FILE.jsonl      batch mode: one request a line ({\"prompt\" or \"prompt_ids\",\n"
            "                              sampling fields}), run concurrently; one JSON result a line\n"
            "      --beam-width N          beam search; the JSON result carries every beam and its score\n"
            "                              (anvil run --input FILE --help: the batch flags)\n");
    request_flags_help(out, RF_RUN);
    fprintf(out,
            "      --no-echo               do not print the prompt text before the continuation\n"
            "      --json                  print one JSON object {\"prompt_ids\", \"ids\", \"text\",\n"
            "                              \"finish_reason\"} at the end instead of streaming\n"
            "      --refit-weights PATH    after --refit-after N new tokens, replace the weights with those\n"
            "                              of PATH (a folder or engine of the same model: anvil refit's\n"
            "                              rules) and go on: what a served stream that crossed a refit\n"
            "                              after N tokens generates\n"
            "      --refit-after N         (N >= 1; with --refit-weights)\n"
            "      --device DEV            cpu (default), cuda or cuda:N\n"
            "      --dtype DT              auto (default: weights as stored; a bf16/f16 model computes in\n"
            "                              its dtype on cuda, f32 elsewhere), f32, bf16 or f16: convert the\n"
            "                              weights on load (bf16/f16 on cuda: activations and KV cache too)\n"
            "      --threads N             CPU threads (default: all cores)\n"
            "      --max-seq-len N         context length (default: the model's)\n"
            "      --kv-cache-dtype DT     auto (default), f32, bf16, f16 or fp8 (e4m3, a scale per layer)\n"
            "      --mmap                  map the weights instead of reading them into memory\n"
            EXEC_CLI_RANDOM_HELP
            CLI_TP_HELP
            "  -h, --help                  this help\n");
}

static int parse_args(int argc, char **argv, run_args *a)
{
    enum { OPT_IDS = 256, OPT_NO_ECHO, OPT_CHAT, OPT_SYSTEM, OPT_JSON, OPT_DEVICE, OPT_THREADS, OPT_SEQ, OPT_DTYPE,
           OPT_MMAP, OPT_REFIT_WEIGHTS, OPT_REFIT_AFTER, OPT_KV_DTYPE, OPT_TP, OPT_PP, OPT_COMM_TIMEOUT,
           OPT_PP_MICRO };
    static const struct option own[] = {
        {"model", required_argument, 0, 'm'},          {"prompt", required_argument, 0, 'p'},
        {"prompt-ids", required_argument, 0, OPT_IDS}, {"chat", no_argument, 0, OPT_CHAT},
        {"system", required_argument, 0, OPT_SYSTEM},  {"json", no_argument, 0, OPT_JSON},
        {"no-echo", no_argument, 0, OPT_NO_ECHO},      {"device", required_argument, 0, OPT_DEVICE},
        {"threads", required_argument, 0, OPT_THREADS}, {"max-seq-len", required_argument, 0, OPT_SEQ},
        {"dtype", required_argument, 0, OPT_DTYPE},    {"mmap", no_argument, 0, OPT_MMAP},
        {"refit-weights", required_argument, 0, OPT_REFIT_WEIGHTS},
        {"refit-after", required_argument, 0, OPT_REFIT_AFTER},
        {"kv-cache-dtype", required_argument, 0, OPT_KV_DTYPE},
        {"tp", required_argument, 0, OPT_TP},          {"pp", required_argument, 0, OPT_PP},
        {"pp-micro-batches", required_argument, 0, OPT_PP_MICRO},
        {"comm-timeout", required_argument, 0, OPT_COMM_TIMEOUT},
        EXEC_CLI_RANDOM_LONGOPTS,
        {"help", no_argument, 0, 'h'},                 {0, 0, 0, 0},
    };
    memset(a, 0, sizeof *a);
    request_values_init(&a->rv);
    a->rv.req.max_tokens = 256;
    a->comm_timeout = -1;
    anvil_runtime_options_default(&a->rt);
    cli_env_runtime_options(&a->rt);
    a->rt.max_batch_size = 1;
    a->rt.max_logit_rows = 1;
    exec_cli_parser p;
    if (exec_cli_parser_init(&p, RF_RUN, own, "m:p:h", &a->rv, NULL, "anvil run", argc, argv) != 0)
        return 2;
    int c;
    long v;
    while ((c = exec_cli_parser_next(&p)) != -1) {
        const int r = exec_cli_random_option(&a->random, &a->rt, c, optarg, "anvil run");
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'p': a->prompt = optarg; break;
        case OPT_IDS: a->prompt_ids = optarg; break;
        case OPT_CHAT: a->chat = 1; break;
        case OPT_SYSTEM: a->system = optarg; break;
        case OPT_JSON: a->json = 1; break;
        case OPT_NO_ECHO: a->no_echo = 1; break;
        case OPT_DEVICE: a->rt.device = optarg; break;
        case OPT_THREADS:
            if (exec_cli_int(optarg, "--threads", 0, 4096, &v, "anvil run")) return 2;
            a->rt.n_threads = (int)v;
            break;
        case OPT_SEQ:
            if (exec_cli_int(optarg, "--max-seq-len", 1, INT32_MAX, &v, "anvil run")) return 2;
            a->rt.max_seq_len = (int32_t)v;
            break;
        case OPT_DTYPE:
            if (exec_cli_dtype(optarg, &a->rt.weight_dtype, "anvil run")) return 2;
            break;
        case OPT_MMAP: a->rt.use_mmap = 1; break;
        case OPT_TP:
            if (exec_cli_int(optarg, "--tp", 1, 4096, &v, "anvil run")) return 2;
            a->tp = (int32_t)v;
            break;
        case OPT_PP:
            if (exec_cli_int(optarg, "--pp", 1, 4096, &v, "anvil run")) return 2;
            a->pp = (int32_t)v;
            break;
        case OPT_PP_MICRO:
            if (exec_cli_int(optarg, "--pp-micro-batches", 0, 4096, &v, "anvil run")) return 2;
            a->rt.pp_micro_batches = (int32_t)v;
            break;
        case OPT_COMM_TIMEOUT:
            if (exec_cli_double(optarg, "--comm-timeout", 0, 1e7, &a->comm_timeout, "anvil run")) return 2;
            break;
        case OPT_KV_DTYPE:
            if (exec_cli_kv_dtype(optarg, &a->rt.kv_cache_dtype, "anvil run")) return 2;
            break;
        case OPT_REFIT_WEIGHTS: a->refit_weights = optarg; break;
        case OPT_REFIT_AFTER:
            if (exec_cli_int(optarg, "--refit-after", 1, INT32_MAX, &v, "anvil run")) return 2;
            a->refit_after = (int32_t)v;
            a->refit_after_set = 1;
            break;
        case 'h': run_usage(stdout); return 0;
        case EXEC_CLI_BAD: return 2;
        default: {
            /* a request flag of the executor's: say where it works */
            const char *bad = optind > 0 ? argv[optind - 1] : "";
            const request_flag *f = strncmp(bad, "--", 2) == 0 ? request_flag_find(bad + 2) : NULL;
            if (f != NULL && !(f->cmds & RF_RUN)) {
                fprintf(stderr, "anvil run: --%s works with --input FILE (the executor), not with one prompt\n",
                        f->flag);
                return 2;
            }
            return exec_cli_parser_bad(&p);
        }
        }
    }
    if (optind < argc) {
        fprintf(stderr, "anvil run: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (exec_cli_random_resolve(&a->random, &a->rt, &a->model, "anvil run") != 0)
        return 2;
    if ((a->prompt == NULL) == (a->prompt_ids == NULL)) {
        fprintf(stderr, "anvil run: give exactly one of --prompt TEXT or --prompt-ids IDS\n");
        return 2;
    }
    if ((a->chat || a->system) && a->prompt == NULL) {
        fprintf(stderr, "anvil run: --chat and --system need --prompt TEXT\n");
        return 2;
    }
    if (a->system && !a->chat) {
        fprintf(stderr, "anvil run: --system needs --chat\n");
        return 2;
    }
    if (a->refit_after_set != (a->refit_weights != NULL)) {
        fprintf(stderr, "anvil run: --refit-weights PATH and --refit-after N go together\n");
        return 2;
    }
    if (anvil_sampling_params_check(&a->rv.req.sampling) != ANVIL_OK) {
        anvil_cli_report("anvil run");
        return 2;
    }
    return -1; /* go on */
}

/* The prompt text for --chat: the template applied to [system?, user]. */
static char *render_chat(const run_args *a)
{
    anvil_chat_template *tpl = NULL;
    if (anvil_chat_template_load(a->model, &tpl) != ANVIL_OK) {
        anvil_cli_report("anvil run");
        return NULL;
    }
    json_t *msgs = json_array();
    if (a->system)
        json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "system", "content", a->system));
    json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user", "content", a->prompt));
    char *msgs_text = json_dumps(msgs, JSON_COMPACT);
    json_decref(msgs);
    anvil_chat_render_options ro = {.add_generation_prompt = 1};
    char *text = NULL;
    if (msgs_text == NULL) {
        fprintf(stderr, "anvil run: out of memory\n");
    } else if (anvil_chat_template_render(tpl, msgs_text, &ro, &text) != ANVIL_OK) {
        anvil_cli_report("anvil run: chat template");
        text = NULL;
    }
    free(msgs_text);
    anvil_chat_template_free(tpl);
    return text;
}

typedef struct stream_state {
    anvil_detokenizer *detok;
    int print_ids; /* no tokenizer: print ids */
    int quiet;     /* --json: nothing printed as it comes */
    int failed;
    int cancelled; /* Ctrl-C: stopped after the last token */
    /* --refit-weights: after refit_after tokens, on this thread between two
     * steps (the callback runs between them), as the executor commits a
     * refit: the tokens so far came from the old weights, the next step
     * computes with the new ones over the old keys and values */
    anvil_runtime *rt;
    const char *refit_weights;
    int32_t refit_after;
    int32_t n_seen;
} stream_state;

static int on_token(void *user, int32_t tok)
{
    stream_state *s = user;
    if (s->refit_weights && ++s->n_seen == s->refit_after && anvil_runtime_refit(s->rt, s->refit_weights, NULL) != ANVIL_OK) {
        s->failed = 1;
        return 1;
    }
    if (!s->quiet) {
        if (s->print_ids) {
            printf("%d ", tok);
        } else {
            const char *text;
            size_t len;
            if (anvil_detokenizer_push(s->detok, tok, &text, &len) != ANVIL_OK) {
                s->failed = 1;
                return 1;
            }
            fwrite(text, 1, len, stdout);
        }
        fflush(stdout);
    }
    if (cli_sigint_seen()) {
        s->cancelled = 1;
        return 1;
    }
    return 0;
}

/* The text of ids through the (primed) detokenizer d, into *text (malloc'd).
 * 0 ok; -1 reported on stderr. */
static int detok_all(anvil_detokenizer *d, const int32_t *ids, int32_t n, char **text, size_t *len)
{
    size_t cap = 64, at = 0;
    char *buf = malloc(cap);
    if (buf == NULL) {
        fprintf(stderr, "anvil run: out of memory\n");
        return -1;
    }
    for (int32_t i = 0; i <= n; i++) {
        const char *t;
        size_t k;
        anvil_status st = i < n ? anvil_detokenizer_push(d, ids[i], &t, &k) : anvil_detokenizer_flush(d, &t, &k);
        if (st != ANVIL_OK) {
            anvil_cli_report("anvil run");
            free(buf);
            return -1;
        }
        while (at + k + 1 > cap) {
            char *b = realloc(buf, cap * 2);
            if (b == NULL) {
                fprintf(stderr, "anvil run: out of memory\n");
                free(buf);
                return -1;
            }
            buf = b;
            cap *= 2;
        }
        memcpy(buf + at, t, k);
        at += k;
    }
    buf[at] = '\0';
    *text = buf;
    *len = at;
    return 0;
}

static const char *finish_name(anvil_finish_reason r, int cancelled)
{
    return cancelled ? "cancelled" : r == ANVIL_FINISH_STOP ? "stop" : r == ANVIL_FINISH_LENGTH ? "length" : "none";
}

int anvil_cmd_run(int argc, char **argv)
{
    if (anvil_run_batch_wanted(argc, argv))
        return anvil_run_batch(argc, argv); /* --input / --beam-width: tools/run_batch.c */
    run_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) {
        request_values_free(&a.rv);
        return rc;
    }
    rc = 1;
    anvil_comm *comm = NULL;
    if (a.tp > 1 || a.pp > 1) {
        if (a.refit_weights) {
            fprintf(stderr, "anvil run: --refit-weights is one rank's (not with --tp or --pp)\n");
            request_values_free(&a.rv);
            return 2;
        }
        if (cli_tp_join("anvil run", a.tp, a.pp, &a.model, a.comm_timeout, &a.rt, &comm) != 0) {
            request_values_free(&a.rv);
            return 1;
        }
        if (anvil_comm_rank(comm) != 0) { /* the others follow rank 0's steps */
            request_values_free(&a.rv);
            return cli_tp_follow("anvil run", a.model, &a.rt);
        }
    }
    cli_sigint_install("anvil run"); /* loading: Ctrl-C exits 130 */

    anvil_tokenizer *tok = NULL;
    anvil_runtime *rt = NULL;
    anvil_detokenizer *detok = NULL;
    int32_t *prompt = NULL, *out = NULL, n_prompt = 0, n_out = 0;
    char *chat_text = NULL, *text = NULL;

    if (a.rt.random_weights ? exec_cli_config_check(a.model, "anvil run", NULL)
                            : exec_cli_model_check(a.model, "anvil run", NULL))
        goto done;
    int have_tokenizer = anvil_tokenizer_available(a.model);
    if (have_tokenizer && anvil_tokenizer_load(a.model, &tok) != ANVIL_OK) {
        anvil_cli_report("anvil run");
        goto done;
    }
    if (a.prompt) {
        if (tok == NULL) {
            if (a.rt.random_weights)
                fprintf(stderr, "anvil run: random weights come without a tokenizer (%s has none): give the prompt "
                                "as --prompt-ids IDS\n", a.model);
            else
                fprintf(stderr, "anvil run: %s has no tokenizer.json: give the prompt as --prompt-ids IDS\n", a.model);
            goto done;
        }
        const char *ptext = a.prompt;
        int add_special = 1;
        if (a.chat) {
            if ((chat_text = render_chat(&a)) == NULL)
                goto done;
            ptext = chat_text;
            add_special = 0; /* the template writes the special tokens itself */
        }
        int64_t n64 = 0;
        if (anvil_tokenizer_encode(tok, ptext, strlen(ptext), add_special, &prompt, &n64) != ANVIL_OK) {
            anvil_cli_report("anvil run");
            goto done;
        }
        n_prompt = (int32_t)n64;
        if (n_prompt == 0) {
            fprintf(stderr, "anvil run: the prompt encodes to no tokens\n");
            goto done;
        }
    } else if (request_ids_parse(a.prompt_ids, &prompt, &n_prompt) != 0) {
        fprintf(stderr, "anvil run: --prompt-ids expects comma-separated token ids, got '%s'\n", a.prompt_ids);
        rc = 2;
        goto done;
    }

    if (anvil_runtime_load(a.model, &a.rt, &rt) != ANVIL_OK) {
        anvil_cli_report("anvil run");
        goto done;
    }
    const anvil_model_config *cfg = anvil_runtime_config(rt);
    anvil_generate_params gp = {.sampling = a.rv.req.sampling, .max_tokens = a.rv.req.max_tokens,
                                .ignore_eos = a.rv.req.ignore_eos};
    if (!request_values_given(&a.rv, RQ_TEMPERATURE) && cfg->gen_temperature >= 0)
        gp.sampling.temperature = cfg->gen_temperature;
    for (int32_t i = 0; i < n_prompt; i++) {
        if (prompt[i] < 0 || prompt[i] >= cfg->vocab_size) {
            fprintf(stderr, "anvil run: prompt token %d is outside the vocabulary (%lld)\n", prompt[i],
                    (long long)cfg->vocab_size);
            goto done;
        }
    }
    /* what the context holds, said before generating rather than found out */
    const int32_t ctx = anvil_runtime_options_get(rt)->max_seq_len;
    if (n_prompt >= ctx) {
        if (ctx < cfg->max_position_embeddings)
            fprintf(stderr,
                    "anvil run: the prompt has %d tokens and the context holds %d, so no new token fits "
                    "(--max-seq-len can go up to the model's %lld)\n",
                    n_prompt, ctx, (long long)cfg->max_position_embeddings);
        else
            fprintf(stderr,
                    "anvil run: the prompt has %d tokens and the context holds %d, so no new token fits: "
                    "shorten the prompt\n",
                    n_prompt, ctx);
        goto done;
    }
    const int32_t wanted = gp.max_tokens;
    const int shortened = gp.max_tokens > ctx - n_prompt;
    if (shortened) {
        gp.max_tokens = ctx - n_prompt;
        fprintf(stderr, "anvil run: the context holds %d tokens; the prompt has %d, so at most %d new tokens (not %d)\n",
                ctx, n_prompt, gp.max_tokens, wanted);
    }
    out = malloc((size_t)(gp.max_tokens + 1) * sizeof *out);
    if (out == NULL) {
        fprintf(stderr, "anvil run: out of memory\n");
        goto done;
    }
    stream_state ss = {.print_ids = tok == NULL, .quiet = a.json, .rt = rt, .refit_weights = a.refit_weights,
                       .refit_after = a.refit_after};
    /* the text is what the generated ids add to the prompt's (a first word
     * keeps its space after "The cat"), as the executor and the server give it */
    if (tok && (anvil_detokenizer_create(tok, 1, &detok) != ANVIL_OK ||
                anvil_detokenizer_prime(detok, prompt, (size_t)n_prompt) != ANVIL_OK)) {
        anvil_cli_report("anvil run");
        goto done;
    }
    ss.detok = detok;
    /* Like llama.cpp, show the plain prompt the story continues (not a chat
     * template's markup, not ids). */
    if (!a.json && a.prompt && !a.chat && !a.no_echo) {
        fputs(a.prompt, stdout);
        fflush(stdout);
    }
    cli_sigint_keep(); /* from here Ctrl-C keeps what was generated */
    anvil_finish_reason why = ANVIL_FINISH_NONE;
    if (cli_sigint_seen())
        ss.cancelled = 1; /* before the first step: nothing generated */
    else if (anvil_generate(rt, prompt, n_prompt, &gp, on_token, &ss, out, &n_out, &why) != ANVIL_OK) {
        fputc('\n', stderr); /* off the streamed text's line */
        anvil_cli_report("anvil run");
        goto done;
    }
    if (ss.failed) {
        fputc('\n', stderr); /* off the streamed text's line */
        anvil_cli_report("anvil run");
        goto done;
    }
    if (a.json) {
        json_t *o = json_object(), *pi = json_array(), *ids = json_array();
        for (int32_t i = 0; i < n_prompt; i++)
            json_array_append_new(pi, json_integer(prompt[i]));
        for (int32_t i = 0; i < n_out; i++)
            json_array_append_new(ids, json_integer(out[i]));
        json_object_set_new(o, "prompt_ids", pi);
        json_object_set_new(o, "ids", ids);
        if (tok) {
            size_t len = 0;
            if (detok_all(detok, out, n_out, &text, &len) != 0) {
                json_decref(o);
                goto done;
            }
            json_object_set_new(o, "text", json_stringn(text, len));
        }
        json_object_set_new(o, "finish_reason", json_string(finish_name(why, ss.cancelled)));
        if (shortened) /* the request the context could not hold in full */
            json_object_set_new(o, "context_limit",
                                json_pack("{s:i, s:i, s:i, s:i}", "context", ctx, "prompt_tokens", n_prompt,
                                          "max_tokens", wanted, "max_new_tokens", gp.max_tokens));
        char *js = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(o);
        if (js)
            puts(js);
        free(js);
    } else {
        if (detok) {
            const char *rest;
            size_t len;
            if (anvil_detokenizer_flush(detok, &rest, &len) == ANVIL_OK)
                fwrite(rest, 1, len, stdout);
        }
        putchar('\n');
    }
    fflush(stdout);
    if (ss.cancelled) {
        fprintf(stderr, "anvil run: interrupted after %d new tokens\n", n_out);
        rc = 130;
    } else {
        rc = 0;
    }
done:
    free(text);
    free(chat_text);
    free(prompt);
    free(out);
    anvil_detokenizer_free(detok);
    const int loaded = rt != NULL;
    anvil_runtime_free(rt); /* with --tp: the other ranks return */
    cli_tp_end("anvil run", comm, loaded);
    anvil_tokenizer_free(tok);
    request_values_free(&a.rv);
    return rc;
}
