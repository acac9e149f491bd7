/*
 * What `anvil run --input` (run_batch.c) and `anvil bench` (cmd_bench.c)
 * share: the runtime and executor options on the command line, loading a
 * model with its tokenizer into an executor, requests read from JSON with
 * OpenAI / vLLM field names, and results written as JSON.
 */
#ifndef ANVIL_TOOLS_EXEC_CLI_H
#define ANVIL_TOOLS_EXEC_CLI_H

#include <getopt.h>
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

#include "anvil/executor.h"
#include "anvil/grammar.h"
#include "anvil/model_config.h"
#include "anvil/runtime.h"
#include "anvil/tokenizer.h"
#include "request_flags.h"

/* getopt codes of the shared options (above every tool's own) */
enum {
    EXEC_OPT_DEVICE = 1000,
    EXEC_OPT_THREADS,
    EXEC_OPT_MAX_SEQ_LEN,
    EXEC_OPT_MAX_BATCH,
    EXEC_OPT_MAX_TOKENS_STEP,
    EXEC_OPT_KV_TOKENS,
    EXEC_OPT_KV_FRACTION,
    EXEC_OPT_BLOCK_SIZE,
    EXEC_OPT_POLICY,
    EXEC_OPT_NO_PREFIX_CACHE,
    EXEC_OPT_DTYPE,
    EXEC_OPT_MMAP,
    EXEC_OPT_KV_DTYPE,
    EXEC_OPT_NO_OVERLAP,
    EXEC_OPT_OVERLAP,
    EXEC_OPT_GRAMMAR_THREADS,
    EXEC_OPT_CONFIG,
    EXEC_OPT_RANDOM,
    EXEC_OPT_WEIGHT_SEED,
    EXEC_OPT_QUANTIZE,
    EXEC_OPT_QUANTIZE_LM_HEAD,
};

/* A model with random weights and no file (anvil_runtime_options.random_weights):
 * --config FILE --random-weights [--weight-seed N] [--quantize S
 * [--quantize-lm-head]]; anvil run's own table takes the same entries. */
#define EXEC_CLI_RANDOM_LONGOPTS                                                           \
    {"config", required_argument, 0, EXEC_OPT_CONFIG},                                     \
        {"random-weights", no_argument, 0, EXEC_OPT_RANDOM},                               \
        {"weight-seed", required_argument, 0, EXEC_OPT_WEIGHT_SEED},                       \
        {"quantize", required_argument, 0, EXEC_OPT_QUANTIZE},                             \
        {"quantize-lm-head", no_argument, 0, EXEC_OPT_QUANTIZE_LM_HEAD}

#define EXEC_CLI_RANDOM_HELP                                                                              \
    "      --config FILE           with --random-weights: an HF config.json (any file name, or a folder\n" \
    "                              holding one) instead of --model\n"                                   \
    "      --random-weights        random weights made as they load (anvil build --random-weights'\n"   \
    "                              values), no file read or written: benchmarks at a real shape; no\n"  \
    "                              tokenizer (prompts as ids)\n"                                         \
    "      --weight-seed N         the random weights' seed (default 1, anvil build's --seed)\n"        \
    "      --quantize S            with --random-weights: fp8, int8-wo or int4-wo (RTN, as anvil build\n" \
    "                              --quantize)\n"                                                     \
    "      --quantize-lm-head      with --quantize: the LM head too (as anvil build; not a tied head)\n"

/* What the random-weight flags gave (see EXEC_CLI_RANDOM_LONGOPTS). */
typedef struct exec_cli_random {
    const char *config; /* --config FILE */
    int random;         /* --random-weights */
    int seed_set;       /* --weight-seed given */
    int quantize_set;   /* --quantize given */
    int lm_head_set;    /* --quantize-lm-head given */
} exec_cli_random;

/* Handles a random-weight flag into r and ro. 1: handled; 0: not one of
 * them; -1: a bad value (reported). */
int exec_cli_random_option(exec_cli_random *r, anvil_runtime_options *ro, int opt, const char *arg,
                           const char *tool);

/* After the flags: the model the command loads. With --random-weights,
 * *model becomes the --config path (and ro->random_weights is set);
 * otherwise *model (--model) must be given. -1 (reported; exit 2) for
 * --random-weights without --config or with --model, --config without
 * --random-weights, --weight-seed or --quantize without it, or no model. */
int exec_cli_random_resolve(const exec_cli_random *r, anvil_runtime_options *ro, const char **model,
                            const char *tool);

/* The shared entries of a getopt_long table. */
#define EXEC_CLI_LONGOPTS                                                                  \
    {"device", required_argument, 0, EXEC_OPT_DEVICE},                                     \
        {"threads", required_argument, 0, EXEC_OPT_THREADS},                               \
        {"max-seq-len", required_argument, 0, EXEC_OPT_MAX_SEQ_LEN},                       \
        {"max-batch-size", required_argument, 0, EXEC_OPT_MAX_BATCH},                      \
        {"max-num-tokens", required_argument, 0, EXEC_OPT_MAX_TOKENS_STEP},                \
        {"kv-cache-tokens", required_argument, 0, EXEC_OPT_KV_TOKENS},                     \
        {"kv-cache-fraction", required_argument, 0, EXEC_OPT_KV_FRACTION},                 \
        {"kv-cache-dtype", required_argument, 0, EXEC_OPT_KV_DTYPE},                       \
        {"block-size", required_argument, 0, EXEC_OPT_BLOCK_SIZE},                         \
        {"policy", required_argument, 0, EXEC_OPT_POLICY},                                 \
        {"scheduler-policy", required_argument, 0, EXEC_OPT_POLICY},                       \
        {"no-prefix-caching", no_argument, 0, EXEC_OPT_NO_PREFIX_CACHE},                  \
        {"no-overlap", no_argument, 0, EXEC_OPT_NO_OVERLAP},                               \
        {"overlap", no_argument, 0, EXEC_OPT_OVERLAP},                                     \
        {"grammar-threads", required_argument, 0, EXEC_OPT_GRAMMAR_THREADS},               \
        {"dtype", required_argument, 0, EXEC_OPT_DTYPE},                                   \
        {"mmap", no_argument, 0, EXEC_OPT_MMAP},                                           \
        EXEC_CLI_RANDOM_LONGOPTS

/* Help text for the shared options. */
#define EXEC_CLI_HELP                                                                                     \
    "      --device DEV            cpu (default), cuda or cuda:N\n"                                       \
    "      --dtype DT              auto (default: a bf16/f16 model computes in its dtype on cuda, f32\n" \
    "                              elsewhere), f32, bf16 or f16 (weights converted on load)\n"         \
    "      --threads N             CPU threads (default: all cores)\n"                                    \
    "      --max-seq-len N         context length (default: the model's)\n"                               \
    "      --max-batch-size N      sequences per step (default 64; 512 on cuda)\n"                        \
    "      --max-num-tokens N      tokens per step; longer prompts are chunked (default 512; 8192 on\n"  \
    "                              cuda)\n"                                                              \
    "      --kv-cache-tokens N     KV cache size in tokens (default: 32 contexts, at most a quarter\n"    \
    "                              of free memory; on cuda: 0.9 of the memory left, no count)\n"           \
    "      --kv-cache-fraction F   KV cache size as a fraction of the memory left after the weights\n"    \
    "      --kv-cache-dtype DT     auto (default: on the CPU f16 for a bf16/f16 model, else f32; on\n"   \
    "                              cuda the compute dtype), f32, bf16 or f16 (CPU), or fp8 (e4m3,\n"  \
    "                              1 byte an element: twice the tokens of a 16-bit cache)\n"          \
    "      --block-size N          tokens per KV block (default 32)\n"                                    \
    "      --scheduler-policy P    no-evict (guaranteed-no-evict, default) or max-utilization\n"          \
    "                              (TensorRT-LLM's capacity policies; also --policy)\n"                  \
    "      --no-prefix-caching     do not reuse the KV blocks of earlier prompts\n"                    \
    "      --no-overlap            plan and stream each step after it ran, not while the next runs\n"  \
    "                              (the overlap scheduler is on by default on cuda)\n"                \
    "      --overlap               the overlap scheduler also on the CPU (no gain there; for tests)\n" \
    "      --grammar-threads N     threads making a step's structured-output masks side by side\n"    \
    "                              (default 0: half the CPUs, at most 8; 1: none beside the loop)\n" \
    "      --mmap                  map the weights instead of reading them (CPU: shared with the page\n" \
    "                              cache; a checkpoint truncated while served then kills the process)\n"

typedef struct exec_cli_opts {
    anvil_runtime_options rt;
    anvil_executor_options ex;
    int kv_set;                 /* --kv-cache-tokens or --kv-cache-fraction given */
    int batch_set;              /* --max-batch-size given */
    int tokens_set;             /* --max-num-tokens given */
    exec_cli_random random;     /* --config, --random-weights, --weight-seed, --quantize */
} exec_cli_opts;

void exec_cli_opts_default(exec_cli_opts *o);

/* Handles a shared option. 1: handled; 0: not a shared option; -1: a bad
 * value (reported on stderr, prefixed with tool). */
int exec_cli_option(exec_cli_opts *o, int opt, const char *arg, const char *tool);

/*
 * The option loop that anvil run, run --input and anvil bench share: the
 * table's request flags of cmd (RF_RUN, RF_BATCH, RF_BENCH) go into rv, the
 * executor's flags (EXEC_CLI_LONGOPTS, when eo is not NULL) into eo, and
 * exec_cli_parser_next returns the command's own flags only:
 *
 *     exec_cli_parser p;
 *     if (exec_cli_parser_init(&p, RF_BENCH, own, "m:h", &a->rv, &a->eo, TOOL, argc, argv) != 0)
 *         return 2;
 *     while ((c = exec_cli_parser_next(&p)) != -1) {
 *         switch (c) {
 *         case 'm': ...
 *         case EXEC_CLI_BAD: return 2;               (reported)
 *         default: return exec_cli_parser_bad(&p);   (the one-line unknown-flag message)
 *         }
 *     }
 */
#define EXEC_CLI_BAD (-2)
typedef struct exec_cli_parser {
    unsigned cmd;
    request_values *rv;
    exec_cli_opts *eo;
    const char *tool;
    int argc;
    char **argv;
    struct option longopts[128];
    char shortopts[64];
} exec_cli_parser;

/* own: the command's long flags (zero-terminated); own_short its short ones
 * (getopt's syntax). Resets getopt (optind). 0, or -1 reported (the
 * table's room is too small: a programming error). */
int exec_cli_parser_init(exec_cli_parser *p, unsigned cmd, const struct option *own, const char *own_short,
                         request_values *rv, exec_cli_opts *eo, const char *tool, int argc, char **argv);

/* The next flag of the command's own (optarg set), -1 at the end, or
 * EXEC_CLI_BAD after a bad value of a shared flag (reported on stderr). */
int exec_cli_parser_next(exec_cli_parser *p);

/* After a flag the command does not know: the one-line message (the
 * closest flag), and the exit code 2. */
int exec_cli_parser_bad(const exec_cli_parser *p);

/* --dtype's value: auto (ANVIL_DTYPE_COUNT: weights as stored, compute
 * dtype auto), f32, bf16 or f16 (anvil_runtime_options.weight_dtype). 0 ok,
 * -1 reported. */
int exec_cli_dtype(const char *arg, anvil_dtype *out, const char *tool);
/* --kv-cache-dtype's value (auto, f32, bf16, f16, fp8, fp8_e4m3) into *out (the argument itself);
 * -1 with a message otherwise. */
int exec_cli_kv_dtype(const char *arg, const char **out, const char *tool);

/* Number parsing with messages: 0 ok, -1 reported. */
int exec_cli_int(const char *s, const char *flag, long min, long max, long *out, const char *tool);
int exec_cli_double(const char *s, const char *flag, double min, double max, double *out, const char *tool);

/*
 * Checks that path is a model folder or an engine file, saying plainly
 * what it is otherwise ("/x does not exist (--model takes a model folder
 * or an engine file)", "/x is not a model folder: it has no config.json",
 * "/x is neither a model folder nor an anvil engine file"), and reads its
 * config into cfg (may be NULL). 0 ok; -1 reported on stderr.
 */
int exec_cli_model_check(const char *path, const char *tool, anvil_model_config *cfg);

/* The same for random weights' --config: anything that holds a config (a
 * config.json of any name, a folder, an engine), read into cfg (may be
 * NULL). 0 ok; -1 reported on stderr. */
int exec_cli_config_check(const char *path, const char *tool, anvil_model_config *cfg);

/* On a cuda device (ro->device), the sizes that use the GPU where the flags
 * did not set them: 512 sequences and 8192 tokens a step, and (kv) a KV
 * cache of 90% of the memory left after the weights and the activations.
 * 1 when ro is a cuda device's. */
int exec_cli_gpu_sizes(const exec_cli_opts *o, anvil_runtime_options *ro, int kv);

/* Checks model_dir (exec_cli_model_check), loads it (+ its tokenizer.json when there is one) and starts an
 * executor. 0 ok; -1 reported on stderr. */
int exec_cli_load(exec_cli_opts *o, const char *model_dir, const char *tool, anvil_runtime **rt,
                  anvil_tokenizer **tok, anvil_executor **ex);

/* Storage a parsed request points into (freed by exec_cli_request_clear). */
typedef struct exec_cli_request {
    anvil_request req;
    int32_t *prompt_ids;
    request_storage st;         /* stop strings, stop token ids */
    anvil_logit_bias *bias;
} exec_cli_request;

/*
 * Fills out->req from a JSON object: `prompt` or `prompt_ids`, the
 * request flags' fields (request_flags.c: max_tokens, temperature, top_p,
 * top_k, min_p, repetition_penalty, presence_penalty, frequency_penalty,
 * seed, n, stop, stop_token_ids, logprobs, min_tokens, ignore_eos,
 * skip_special_tokens, add_special_tokens, beam_width, length_penalty) and
 * logit_bias, use_beam_search, early_stopping. Fields absent keep the values already in
 * out->req (the defaults). Strings point into obj, which must outlive the
 * request. 0 ok; -1 with a message in err.
 */
int exec_cli_request_from_json(json_t *obj, exec_cli_request *out, char *err, size_t errlen);

/* exec_grammar.c: structured output. Whether key is one of its fields
 * (response_format, guided_json, guided_regex, guided_choice,
 * guided_grammar); the grammar obj asks for (*out, taken by the caller;
 * NULL: none), compiled over *vocab, built from tok and cfg on first use
 * (taken by the caller). 0, or -1 with err. */
int exec_cli_structured_field(const char *key);
int exec_cli_request_grammar(json_t *obj, const anvil_tokenizer *tok, const anvil_model_config *cfg,
                             anvil_grammar_vocab **vocab, anvil_grammar **out, char *err, size_t n);
/* The vocabulary alone (*vocab built once, as above), for a caller that
 * times it apart from the compiles. 0, or -1 with err. */
int exec_cli_grammar_vocab(const anvil_tokenizer *tok, const anvil_model_config *cfg, anvil_grammar_vocab **vocab,
                           char *err, size_t n);
/* What decides obj's grammar, as text (its structured fields, compact with
 * sorted keys; *key malloc'd, NULL when it asks for none): equal keys
 * compile to the same grammar. 0, or -1 out of memory. */
int exec_cli_grammar_key(json_t *obj, char **key);
void exec_cli_request_clear(exec_cli_request *r);

/* One result as JSON (OpenAI-like choices, usage, finish reason); beam:
 * each choice carries its beam score; request (may be NULL): the JSON
 * request, to name the stop string that matched. */
json_t *exec_cli_result_json(const anvil_result *res, long index, int beam, json_t *request);

/* Seconds on a monotonic clock. */
double exec_cli_now(void);

#endif
