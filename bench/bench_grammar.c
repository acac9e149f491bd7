/*
 * bench_grammar: the grammar engine's cost.
 *
 *   For each vocabulary (tinycode 8k, Llama 2 32k, Llama 3 128k by default):
 *   the time to build the vocabulary's trie, the time to compile each of a
 *   set of JSON schemas (and a regex, a GBNF grammar, json_object), and the
 *   time of anvil_grammar_matcher_fill_mask per token along seeded random
 *   walks (tokens drawn uniformly from the mask, as at temperature 1 over
 *   flat logits): mean and p99, with the mask cache cold (a fresh grammar:
 *   the first request with a schema), warm (the same walks again: later
 *   requests with that schema), and without the cache (cache_frames 0).
 *
 *   usage: bench_grammar [--shared DIR] [--walks N] [--tokens N] [--only NAME] [--frames N]
 *   (--frames: the mask cache's cache_frames, default the library's)
 *   Times are wall clock; "cpu mean" is the thread's CPU time per call (on a
 *   shared machine, what the call itself cost; it includes ~0.2 us of clock
 *   reading).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/grammar.h"
#include "anvil/tokenizer.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* This thread's CPU time: on a shared machine, what the call itself cost. */
static double cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

typedef struct input {
    const char *name;
    int kind; /* 0 schema, 1 regex, 2 ebnf, 3 json_object */
    const char *text;
} input;

static const input INPUTS[] = {
    {"person", 0,
     "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"integer\",\"minimum\":0,"
     "\"maximum\":150},\"email\":{\"type\":\"string\",\"format\":\"email\"},\"tags\":{\"type\":\"array\",\"items\":"
     "{\"type\":\"string\"},\"maxItems\":5}},\"required\":[\"name\",\"age\"]}"},
    {"order", 0,
     "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"string\",\"format\":\"uuid\"},\"status\":{\"enum\":"
     "[\"pending\",\"paid\",\"shipped\",\"delivered\",\"cancelled\"]},\"items\":{\"type\":\"array\",\"minItems\":1,"
     "\"maxItems\":10,\"items\":{\"type\":\"object\",\"properties\":{\"sku\":{\"type\":\"string\",\"pattern\":"
     "\"[A-Z]{3}-[0-9]{4}\"},\"qty\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":99},\"price\":{\"type\":"
     "\"number\",\"minimum\":0}},\"required\":[\"sku\",\"qty\",\"price\"]}},\"note\":{\"type\":[\"string\","
     "\"null\"]},\"date\":{\"type\":\"string\",\"format\":\"date\"}},\"required\":[\"id\",\"status\",\"items\"]}"},
    {"tree", 0,
     "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"label\":{\"type\":\"string\",\"maxLength\":20},"
     "\"children\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"},\"maxItems\":3}},\"required\":"
     "[\"label\"]}},\"$ref\":\"#/$defs/node\"}"},
    {"tool_call", 0,
     "{\"type\":\"object\",\"properties\":{\"name\":{\"const\":\"get_weather\"},\"arguments\":{\"type\":\"object\","
     "\"properties\":{\"city\":{\"type\":\"string\"},\"unit\":{\"enum\":[\"celsius\",\"fahrenheit\"]},\"days\":"
     "{\"type\":\"integer\",\"minimum\":1,\"maximum\":14}},\"required\":[\"city\",\"unit\"]}},\"required\":"
     "[\"name\",\"arguments\"]}"},
    {"json_object", 3, NULL},
    {"regex_phone", 1, "\\(\\d{3}\\) \\d{3}-\\d{4}( ext\\. \\d{1,5})?"},
    {"gbnf_list", 2,
     "root ::= \"- \" item (\"\\n- \" item)*\nitem ::= [A-Za-z ,.]{1,60}\n"},
};
#define N_INPUTS ((int)(sizeof INPUTS / sizeof INPUTS[0]))

static anvil_status compile(const anvil_grammar_vocab *v, const input *in, const anvil_grammar_options *o,
                            anvil_grammar **g)
{
    switch (in->kind) {
    case 0: return anvil_grammar_compile_json_schema(v, in->text, strlen(in->text), o, g);
    case 1: return anvil_grammar_compile_regex(v, in->text, strlen(in->text), o, g);
    case 2: return anvil_grammar_compile_ebnf(v, in->text, strlen(in->text), NULL, o, g);
    default: return anvil_grammar_compile_json_object(v, o, g);
    }
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct times {
    double *t;
    size_t n, cap;
    double cpu; /* total CPU seconds of the timed calls */
} times;

static void add_time(times *t, double s)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 1024;
        t->t = realloc(t->t, t->cap * sizeof *t->t);
        if (!t->t)
            exit(1);
    }
    t->t[t->n++] = s;
}

static void report(const char *what, times *t)
{
    if (t->n == 0)
        return;
    qsort(t->t, t->n, sizeof *t->t, cmp_d);
    double sum = 0;
    for (size_t i = 0; i < t->n; i++)
        sum += t->t[i];
    printf("    %-26s mean %8.1f us   p50 %8.1f us   p99 %8.1f us   cpu mean %8.1f us   (%zu masks)\n", what,
           sum / (double)t->n * 1e6, t->t[t->n / 2] * 1e6, t->t[(size_t)((double)t->n * 0.99)] * 1e6,
           t->cpu / (double)t->n * 1e6, t->n);
    t->n = 0;
    t->cpu = 0;
}

/* Walks with seed; each fill_mask timed into t. */
static void walks(const anvil_grammar *g, const anvil_grammar_vocab *v, int n_walks, int n_tokens, uint64_t seed,
                  times *t)
{
    size_t nw = anvil_grammar_vocab_mask_words(v);
    uint32_t *w = malloc(nw * 4);
    int32_t *allowed = malloc((size_t)anvil_grammar_vocab_size(v) * sizeof *allowed);
    for (int k = 0; k < n_walks; k++) {
        uint64_t rng = seed + (uint64_t)k * 7919 + 1;
        anvil_grammar_matcher *m;
        if (anvil_grammar_matcher_create(g, &m) != ANVIL_OK)
            exit(1);
        for (int step = 0; step < n_tokens && !anvil_grammar_matcher_is_done(m); step++) {
            double c0 = cpu_s(), t0 = now_s();
            if (anvil_grammar_matcher_fill_mask(m, w, nw) != ANVIL_OK) {
                fprintf(stderr, "fill_mask: %s\n", anvil_last_error());
                exit(1);
            }
            add_time(t, now_s() - t0);
            t->cpu += cpu_s() - c0;
            int32_t n = 0;
            for (size_t i = 0; i < nw; i++)
                for (uint32_t x = w[i]; x; x &= x - 1)
                    allowed[n++] = (int32_t)(i * 32 + (size_t)__builtin_ctz(x));
            if (n == 0)
                break;
            if (anvil_grammar_matcher_accept_token(m, allowed[rng_next(&rng) % (uint64_t)n]) != ANVIL_OK)
                exit(1);
        }
        anvil_grammar_matcher_free(m);
    }
    free(w);
    free(allowed);
}

int main(int argc, char **argv)
{
    const char *shared = "/work/shared", *only = NULL;
    int n_walks = 4, n_tokens = 200, frames = -1;
    static const struct option opts[] = {{"shared", 1, 0, 's'}, {"walks", 1, 0, 'w'}, {"tokens", 1, 0, 't'},
                                         {"only", 1, 0, 'o'},   {"frames", 1, 0, 'f'}, {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (c) {
        case 's': shared = optarg; break;
        case 'w': n_walks = atoi(optarg); break;
        case 't': n_tokens = atoi(optarg); break;
        case 'o': only = optarg; break;
        case 'f': frames = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: bench_grammar [--shared DIR] [--walks N] [--tokens N] [--only NAME] [--frames N]\n");
            return 2;
        }
    }
    static const char *const vocabs[] = {"models/tinycode", "tokenizers/llama2", "tokenizers/llama3"};
    for (int vi = 0; vi < 3; vi++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", shared, vocabs[vi]);
        anvil_tokenizer *tok;
        if (anvil_tokenizer_load(path, &tok) != ANVIL_OK) {
            fprintf(stderr, "%s: %s\n", path, anvil_last_error());
            return 1;
        }
        int32_t stop = -1;
        for (int32_t i = 0; stop < 0 && i < 300000; i++)
            if (anvil_tokenizer_token_text(tok, i) && anvil_tokenizer_is_special(tok, i))
                stop = i;
        double t0 = now_s();
        anvil_grammar_vocab *v;
        if (anvil_grammar_vocab_from_tokenizer(tok, 0, &stop, stop >= 0, &v) != ANVIL_OK) {
            fprintf(stderr, "%s\n", anvil_last_error());
            return 1;
        }
        printf("%s: %d tokens, vocabulary trie built in %.1f ms\n", vocabs[vi], (int)anvil_grammar_vocab_size(v),
               (now_s() - t0) * 1e3);
        times t = {0};
        for (int i = 0; i < N_INPUTS; i++) {
            if (only && strcmp(only, INPUTS[i].name) != 0)
                continue;
            anvil_grammar_options o;
            anvil_grammar_options_default(&o);
            if (frames >= 0)
                o.cache_frames = frames;
            anvil_grammar *g;
            int reps = 20;
            double c0 = now_s();
            for (int r = 0; r < reps; r++) {
                if (compile(v, &INPUTS[i], &o, &g) != ANVIL_OK) {
                    fprintf(stderr, "%s: %s\n", INPUTS[i].name, anvil_last_error());
                    return 1;
                }
                if (r + 1 < reps)
                    anvil_grammar_free(g);
            }
            printf("  %-12s compile %7.1f us\n", INPUTS[i].name, (now_s() - c0) / reps * 1e6);
            walks(g, v, n_walks, n_tokens, 42, &t);
            report("cache, cold (first use)", &t);
            walks(g, v, n_walks, n_tokens, 42, &t);
            report("cache, warm (same walks)", &t);
            walks(g, v, n_walks, n_tokens, 4242, &t);
            report("cache, warm (new walks)", &t);
            anvil_grammar_free(g);
            o.cache_frames = 0;
            if (compile(v, &INPUTS[i], &o, &g) != ANVIL_OK)
                return 1;
            walks(g, v, n_walks, n_tokens, 42, &t);
            report("no cache", &t);
            anvil_grammar_free(g);
        }
        free(t.t);
        anvil_grammar_vocab_free(v);
        anvil_tokenizer_free(tok);
    }
    return 0;
}
