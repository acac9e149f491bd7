/*
 * anvil_detokenizer_prime: after a prompt, the pushed ids give the text they
 * add to it, HF's decode(prompt + gen)[len(decode(prompt)):] (decode is
 * tested equal to HF's on the goldens), on every shared tokenizer
 * (SentencePiece with byte fallback, byte-level BPE): text split at random
 * token boundaries (inside characters too), random ids, runs of byte
 * tokens; pieces never end inside a character.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/tokenizer.h"
#include "testutil.h"

#define OK(expr)                                                                                             \
    do {                                                                                                     \
        anvil_status st_ = (expr);                                                                           \
        if (st_ != ANVIL_OK)                                                                                 \
            fail_msg("%s: %s", #expr, anvil_last_error());                                                   \
    } while (0)

static const char *const TOKENIZERS[] = {"tokenizers/llama2", "tokenizers/llama3",   "tokenizers/gpt2",
                                         "tokenizers/qwen2.5", "tokenizers/phi-2",   "tokenizers/mistral-7b-instruct-v0.3",
                                         "models/stories260K", "models/tinycode"};

static const char TEXT[] = "The cat sat. \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e caf\xc3\xa9 \xf0\x9f\x98\x80\xf0\x9f\x91\x8d "
                           "def f(x):\n    return x  # \xe2\x9c\x93\n\xd0\x9f\xd1\x80\xd0\xb8 \xce\xb1\xce\xb2 <s> end";

/* What gen adds to prompt: decode(prompt + gen) after decode(prompt); where
 * the generated ids change the prompt's own text (a byte-fallback run made
 * whole or invalid), from the first byte where the two differ. */
static char *text_after(const anvil_tokenizer *tok, const int32_t *p, int32_t np, const int32_t *g, int32_t ng,
                        int skip, size_t *len)
{
    int32_t all[64];
    memcpy(all, p, (size_t)np * sizeof *all);
    memcpy(all + np, g, (size_t)ng * sizeof *all);
    char *a, *b;
    size_t la, lb;
    OK(anvil_tokenizer_decode(tok, p, np, skip, &a, &la));
    OK(anvil_tokenizer_decode(tok, all, np + ng, skip, &b, &lb));
    size_t k = 0;
    while (k < la && k < lb && a[k] == b[k])
        k++;
    if (k < la)
        while (k > 0 && k < lb && ((unsigned char)b[k] & 0xC0) == 0x80)
            k--;
    char *out = malloc(lb - k + 1);
    assert_non_null(out);
    memcpy(out, b + k, lb - k + 1); /* may hold NULs (a <0x00> token) */
    *len = lb - k;
    free(a);
    free(b);
    return out;
}

/* 1 when s ends inside a UTF-8 character. */
static int ends_inside(const char *s, size_t n)
{
    size_t i = n, k = 0;
    while (i > 0 && k < 4 && ((unsigned char)s[i - 1] & 0xC0) == 0x80) {
        i--;
        k++;
    }
    if (i == 0)
        return 0;
    unsigned char c = (unsigned char)s[i - 1];
    size_t want = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return want > k + 1;
}

/* Primes d with p, pushes g, flushes: the text must be text_after. With
 * final_at_end (the last pushed id ends the text for good: not a byte
 * token), nothing may be left for the flush (the text streams, also when
 * the prompt ended inside a character). */
static void check(const anvil_tokenizer *tok, anvil_detokenizer *d, const int32_t *p, int32_t np, const int32_t *g,
                  int32_t ng, int skip, int final_at_end, const char *what)
{
    char got[4096];
    size_t n = 0;
    OK(anvil_detokenizer_prime(d, p, (size_t)np));
    for (int32_t i = 0; i <= ng; i++) {
        const char *t;
        size_t k;
        if (i < ng)
            OK(anvil_detokenizer_push(d, g[i], &t, &k));
        else
            OK(anvil_detokenizer_flush(d, &t, &k));
        if (ends_inside(t, k))
            fail_msg("%s: a piece ends inside a character", what);
        if (i == ng && final_at_end && k > 0)
            fail_msg("%s: '%.*s' held back until the flush", what, (int)k, t);
        assert_true(n + k < sizeof got);
        memcpy(got + n, t, k);
        n += k;
    }
    got[n] = '\0';
    size_t want_len;
    char *want = text_after(tok, p, np, g, ng, skip, &want_len);
    if (want_len != n || memcmp(got, want, n) != 0) {
        fprintf(stderr, "prompt:");
        for (int32_t i = 0; i < np; i++)
            fprintf(stderr, " %d", p[i]);
        fprintf(stderr, "\ngen:");
        for (int32_t i = 0; i < ng; i++)
            fprintf(stderr, " %d", g[i]);
        fail_msg("\n%s (skip %d): got '%s', expected '%s'", what, skip, got, want);
    }
    free(want);
}

static int is_byte(const anvil_tokenizer *tok, int32_t id)
{
    const char *s = anvil_tokenizer_token_text(tok, id);
    return s && strlen(s) == 6 && strncmp(s, "<0x", 3) == 0;
}

static void test_prime_matches_decode(void **state)
{
    (void)state;
    uint64_t seed = 12345;
    for (size_t t = 0; t < sizeof TOKENIZERS / sizeof TOKENIZERS[0]; t++) {
        anvil_tokenizer *tok;
        OK(anvil_tokenizer_load(anvil_test_shared_path(TOKENIZERS[t]), &tok));
        int32_t vocab = (int32_t)anvil_tokenizer_vocab_size(tok);
        /* byte-fallback tokens, to draw runs of them */
        int32_t bytes[256], n_bytes = 0;
        for (int32_t id = 0; id < vocab && n_bytes < 256; id++)
            if (is_byte(tok, id))
                bytes[n_bytes++] = id;
        int32_t *text = NULL;
        int64_t n_text = 0;
        OK(anvil_tokenizer_encode(tok, TEXT, strlen(TEXT), 1, &text, &n_text));
        anvil_detokenizer *d[2];
        OK(anvil_detokenizer_create(tok, 0, &d[0]));
        OK(anvil_detokenizer_create(tok, 1, &d[1]));
        for (int skip = 0; skip < 2; skip++) {
            /* the text split at every token boundary, continued by up to 12 ids */
            for (int64_t cut = 1; cut < n_text; cut++) {
                int32_t np = (int32_t)(cut < 20 ? cut : 20), ng = (int32_t)(n_text - cut < 12 ? n_text - cut : 12);
                /* byte fallback: a piece that is not a byte token ends what came before */
                int final_at_end = n_bytes > 0 && ng > 0 && !is_byte(tok, text[cut + ng - 1]);
                check(tok, d[skip], text + cut - np, np, text + cut, ng, skip, final_at_end, TOKENIZERS[t]);
            }
            /* random ids; with byte fallback, runs of byte tokens */
            for (int trial = 0; trial < 300; trial++) {
                int32_t p[24], g[24];
                int32_t np = 1 + (int32_t)(anvil_test_rand(&seed) % 10), ng = (int32_t)(anvil_test_rand(&seed) % 12);
                for (int32_t i = 0; i < np + ng; i++) {
                    uint64_t r = anvil_test_rand(&seed);
                    int32_t id = n_bytes > 0 && r % 3 == 0 ? bytes[(r >> 8) % (uint64_t)n_bytes]
                                                         : (int32_t)((r >> 8) % (uint64_t)vocab);
                    if (i < np)
                        p[i] = id;
                    else
                        g[i - np] = id;
                }
                check(tok, d[skip], p, np, g, ng, skip, 0, TOKENIZERS[t]);
            }
        }
        /* a skipped special token between the bytes of one character */
        int32_t special = -1;
        for (int32_t id = 0; id < vocab && special < 0 && n_bytes > 0; id++) {
            char *a;
            size_t la;
            OK(anvil_tokenizer_decode(tok, &id, 1, 1, &a, &la));
            if (la == 0 && anvil_tokenizer_is_special(tok, id))
                special = id;
            free(a);
        }
        if (special >= 0) {
            int32_t e7 = -1, x8c = -1, xab = -1;
            for (int32_t i = 0; i < n_bytes; i++) {
                const char *s = anvil_tokenizer_token_text(tok, bytes[i]);
                e7 = strcmp(s, "<0xE7>") == 0 ? bytes[i] : e7;
                x8c = strcmp(s, "<0x8C>") == 0 ? bytes[i] : x8c;
                xab = strcmp(s, "<0xAB>") == 0 ? bytes[i] : xab;
            }
            assert_true(e7 >= 0 && x8c >= 0 && xab >= 0);
            for (int k = 0; k < 8; k++) { /* the character's first byte and the special token, then others */
                int32_t p[16] = {text[1], e7, special}, g[3] = {x8c, xab, text[1]};
                for (int i = 0; i < k; i++)
                    p[3 + i] = special;
                check(tok, d[1], p, 3 + k, g, 3, 1, 1, "byte, special, bytes");
            }
        }
        /* no pushed ids: no text; the context is dropped by flush */
        const char *s;
        size_t k;
        OK(anvil_detokenizer_prime(d[1], text, (size_t)n_text));
        OK(anvil_detokenizer_flush(d[1], &s, &k));
        assert_int_equal(k, 0);
        /* prime only a new or flushed detokenizer */
        OK(anvil_detokenizer_push(d[1], text[0], &s, &k));
        assert_status_msg(anvil_detokenizer_prime(d[1], text, 1), ANVIL_ERR_INVALID_ARG, "flushed");
        OK(anvil_detokenizer_flush(d[1], &s, &k));
        OK(anvil_detokenizer_prime(d[1], NULL, 0)); /* no context: as without prime */
        OK(anvil_detokenizer_flush(d[1], &s, &k));
        free(text);
        anvil_detokenizer_free(d[0]);
        anvil_detokenizer_free(d[1]);
        anvil_tokenizer_free(tok);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prime_matches_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
