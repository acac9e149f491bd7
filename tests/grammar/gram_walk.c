/*
 * gram_walk: random walks through grammars, for the python tests
 * (tests/python/test_grammar_*.py), which check the outputs with
 * independent validators (the jsonschema package, Python's re).
 *
 *   gram_walk VOCAB_DIR < requests.jsonl > results.jsonl
 *
 * Each input line is {"kind": "json_schema"|"json_object"|"regex"|"ebnf"|
 * "choice", "text": "...", "choices": [...], "walks": N, "seed": S,
 * "max_tokens": M, "max_whitespace": W}; each output line is {"ok": true,
 * "outputs": [...], "ended": [...]} (ended: the walk drew a stop token), or
 * {"ok": false, "error": "..."} when the compile refused the input. A walk
 * draws uniformly among the tokens the mask allows (temperature 1 over flat
 * logits) and stops at a stop token or max_tokens.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "anvil/grammar.h"
#include "anvil/tokenizer.h"

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

static void die(const char *what)
{
    fprintf(stderr, "gram_walk: %s: %s\n", what, anvil_last_error());
    exit(1);
}

/* One walk; returns the output (malloc'd) and whether it ended with a stop token. */
static char *walk(const anvil_grammar *g, const anvil_grammar_vocab *v, uint64_t *rng, int max_tokens, size_t *len,
                  int *ended)
{
    size_t nw = anvil_grammar_vocab_mask_words(v);
    uint32_t *w = malloc(nw * 4);
    int32_t *allowed = malloc((size_t)anvil_grammar_vocab_size(v) * sizeof *allowed);
    size_t cap = 1024, n = 0;
    char *out = malloc(cap);
    if (!w || !allowed || !out)
        exit(1);
    anvil_grammar_matcher *m;
    if (anvil_grammar_matcher_create(g, &m) != ANVIL_OK)
        die("matcher");
    *ended = 0;
    for (int step = 0; step < max_tokens; step++) {
        if (anvil_grammar_matcher_fill_mask(m, w, nw) != ANVIL_OK)
            die("fill_mask");
        int32_t k = 0;
        for (size_t i = 0; i < nw; i++)
            for (uint32_t x = w[i]; x; x &= x - 1)
                allowed[k++] = (int32_t)(i * 32 + (size_t)__builtin_ctz(x));
        if (k == 0)
            break;
        int32_t id = allowed[rng_next(rng) % (uint64_t)k];
        if (anvil_grammar_matcher_accept_token(m, id) != ANVIL_OK)
            die("accept_token");
        size_t tl;
        const char *p = anvil_grammar_vocab_token(v, id, &tl);
        if (!p) {
            *ended = 1;
            break;
        }
        while (n + tl + 1 > cap) {
            cap *= 2;
            out = realloc(out, cap);
            if (!out)
                exit(1);
        }
        memcpy(out + n, p, tl);
        n += tl;
    }
    out[n] = 0;
    *len = n;
    anvil_grammar_matcher_free(m);
    free(w);
    free(allowed);
    return out;
}

static json_t *run(const anvil_grammar_vocab *v, json_t *req)
{
    const char *kind = json_string_value(json_object_get(req, "kind"));
    const char *text = json_string_value(json_object_get(req, "text"));
    size_t text_len = text ? json_string_length(json_object_get(req, "text")) : 0;
    anvil_grammar_options o;
    anvil_grammar_options_default(&o);
    json_t *ws = json_object_get(req, "max_whitespace");
    if (json_is_integer(ws))
        o.max_whitespace = (int)json_integer_value(ws);
    anvil_grammar *g = NULL;
    anvil_status st;
    if (!kind)
        kind = "";
    if (strcmp(kind, "json_schema") == 0) {
        st = anvil_grammar_compile_json_schema(v, text, text_len, &o, &g);
    } else if (strcmp(kind, "json_object") == 0) {
        st = anvil_grammar_compile_json_object(v, &o, &g);
    } else if (strcmp(kind, "regex") == 0) {
        st = anvil_grammar_compile_regex(v, text, text_len, &o, &g);
    } else if (strcmp(kind, "ebnf") == 0) {
        st = anvil_grammar_compile_ebnf(v, text, text_len, NULL, &o, &g);
    } else if (strcmp(kind, "choice") == 0) {
        json_t *ch = json_object_get(req, "choices");
        size_t n = json_array_size(ch);
        const char **s = calloc(n + 1, sizeof *s);
        size_t *l = calloc(n + 1, sizeof *l);
        for (size_t i = 0; i < n; i++) {
            s[i] = json_string_value(json_array_get(ch, i));
            l[i] = json_string_length(json_array_get(ch, i));
        }
        st = anvil_grammar_compile_choice(v, s, l, (int)n, &o, &g);
        free(s);
        free(l);
    } else {
        return json_pack("{s:b,s:s}", "ok", 0, "error", "unknown kind");
    }
    if (st != ANVIL_OK)
        return json_pack("{s:b,s:s}", "ok", 0, "error", anvil_last_error());
    int walks = (int)json_integer_value(json_object_get(req, "walks"));
    int max_tokens = (int)json_integer_value(json_object_get(req, "max_tokens"));
    uint64_t rng = (uint64_t)json_integer_value(json_object_get(req, "seed")) * 2654435761u + 0x9E3779B97F4A7C15ull;
    json_t *outs = json_array(), *ends = json_array();
    for (int k = 0; k < (walks > 0 ? walks : 1); k++) {
        size_t len;
        int ended;
        char *s = walk(g, v, &rng, max_tokens > 0 ? max_tokens : 500, &len, &ended);
        json_t *js = json_stringn(s, len);
        /* output that is not UTF-8 shows as null: the test fails on it */
        json_array_append_new(outs, js ? js : json_null());
        json_array_append_new(ends, json_boolean(ended));
        free(s);
    }
    anvil_grammar_free(g);
    return json_pack("{s:b,s:o,s:o}", "ok", 1, "outputs", outs, "ended", ends);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gram_walk VOCAB_DIR < requests.jsonl\n");
        return 2;
    }
    anvil_tokenizer *tok;
    if (anvil_tokenizer_load(argv[1], &tok) != ANVIL_OK)
        die(argv[1]);
    int32_t stop = -1;
    for (int32_t i = 0; stop < 0 && i < 300000; i++)
        if (anvil_tokenizer_token_text(tok, i) && anvil_tokenizer_is_special(tok, i))
            stop = i;
    anvil_grammar_vocab *v;
    if (anvil_grammar_vocab_from_tokenizer(tok, 0, &stop, stop >= 0, &v) != ANVIL_OK)
        die("vocabulary");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        json_error_t err;
        json_t *req = json_loadb(line, (size_t)n, 0, &err);
        if (!req) {
            fprintf(stderr, "gram_walk: bad request line: %s\n", err.text);
            return 1;
        }
        json_t *res = run(v, req);
        char *s = json_dumps(res, JSON_COMPACT);
        puts(s);
        fflush(stdout);
        free(s);
        json_decref(res);
        json_decref(req);
    }
    free(line);
    anvil_grammar_vocab_free(v);
    anvil_tokenizer_free(tok);
    return 0;
}
