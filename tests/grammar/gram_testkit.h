/*
 * Helpers of the grammar tests: vocabularies (single bytes, or a shared
 * tokenizer's), string checks through a matcher, the brute-force mask (does
 * the matcher accept each token's bytes?) and seeded random walks that pick
 * uniformly among the allowed tokens, as sampling at temperature 1 over
 * equal logits would.
 */
#ifndef GRAM_TESTKIT_H
#define GRAM_TESTKIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/grammar.h"
#include "anvil/tokenizer.h"
#include "grammar/gram_internal.h"
#include "testutil.h"

#define OK(expr)                                                           \
    do {                                                                   \
        anvil_status st_ = (expr);                                         \
        if (st_ != ANVIL_OK)                                               \
            fail_msg("%s: %s", #expr, anvil_last_error());                 \
    } while (0)

/* 256 one-byte tokens and a stop token (id 256). */
static inline anvil_grammar_vocab *gt_byte_vocab(void)
{
    char b[256];
    const char *p[257];
    size_t l[257];
    for (int i = 0; i < 256; i++) {
        b[i] = (char)i;
        p[i] = b + i;
        l[i] = 1;
    }
    p[256] = NULL;
    l[256] = 0;
    int32_t stop = 256;
    anvil_grammar_vocab *v;
    OK(anvil_grammar_vocab_create(257, p, l, &stop, 1, &v));
    return v;
}

/* A shared tokenizer's vocabulary (rel under ANVIL_SHARED_DIR); *tok_out may be NULL. */
static inline anvil_grammar_vocab *gt_tok_vocab(const char *rel, anvil_tokenizer **tok_out)
{
    anvil_tokenizer *tok;
    OK(anvil_tokenizer_load(anvil_test_shared_path(rel), &tok));
    /* the stop id: the tokenizer's first special token (EOS-like) */
    int32_t stop = -1;
    for (int32_t i = 0; i < (int32_t)anvil_tokenizer_vocab_size(tok) + 300 && stop < 0; i++)
        if (anvil_tokenizer_token_text(tok, i) && anvil_tokenizer_is_special(tok, i))
            stop = i;
    assert_true(stop >= 0);
    anvil_grammar_vocab *v;
    OK(anvil_grammar_vocab_from_tokenizer(tok, 0, &stop, 1, &v));
    if (tok_out)
        *tok_out = tok;
    else
        anvil_tokenizer_free(tok);
    return v;
}

/* 1 when the whole string s is a complete output of g. */
static inline int gt_accepts(const anvil_grammar *g, const char *s, size_t n)
{
    anvil_grammar_matcher *m;
    OK(anvil_grammar_matcher_create(g, &m));
    int ok = anvil_grammar_matcher_accept_bytes(m, s, n) == ANVIL_OK && anvil_grammar_matcher_can_end(m);
    anvil_grammar_matcher_free(m);
    return ok;
}

/* 1 when s is a prefix of some output of g. */
static inline int gt_prefix(const anvil_grammar *g, const char *s, size_t n)
{
    anvil_grammar_matcher *m;
    OK(anvil_grammar_matcher_create(g, &m));
    int ok = anvil_grammar_matcher_accept_bytes(m, s, n) == ANVIL_OK;
    anvil_grammar_matcher_free(m);
    return ok;
}

/*
 * Checks m's mask against the brute force: every token's bytes stepped
 * through the matcher's own transitions one by one (no trie, no cache),
 * and the stop ids by can_end.
 */
static inline void gt_check_mask(const anvil_grammar_vocab *v, anvil_grammar_matcher *m, uint32_t *words)
{
    size_t nw = anvil_grammar_vocab_mask_words(v);
    OK(anvil_grammar_matcher_fill_mask(m, words, nw));
    int32_t n = anvil_grammar_vocab_size(v);
    int done = anvil_grammar_matcher_is_done(m), can_end = anvil_grammar_matcher_can_end(m);
    for (int32_t id = 0; id < n; id++) {
        int want = 0;
        size_t len;
        const char *p = anvil_grammar_vocab_token(v, id, &len);
        if (p && !done) {
            int32_t s = m->state;
            for (size_t k = 0; k < len && s != 0; k++)
                OK(gram_dfa_step(&m->dfa, s, (uint8_t)p[k], &s));
            want = s != 0 && (m->dfa.st[s].n > 0 || m->dfa.st[s].accept);
        } else if (!p) {
            for (int i = 0; i < v->n_stop; i++)
                want |= v->stop[i] == id && can_end;
        }
        int got = (int)(words[id >> 5] >> (id & 31) & 1);
        if (got != want)
            fail_msg("token %d (%.*s): mask says %d, its bytes say %d", (int)id, (int)len, p ? p : "", got, want);
    }
    for (size_t b = (size_t)n; b < nw * 32; b++)
        assert_int_equal(words[b >> 5] >> (b & 31) & 1, 0);
}

/*
 * A random walk: tokens drawn uniformly from the mask until a stop token is
 * drawn (or max_tokens); the output's bytes into out (NUL-terminated,
 * malloc'd). Returns 1 when it ended with a stop token. Each step also
 * checks that the drawn token is accepted.
 */
static inline int gt_walk(const anvil_grammar *g, const anvil_grammar_vocab *v, uint64_t *rng, int max_tokens,
                          char **out, size_t *out_len, int check_every)
{
    size_t nw = anvil_grammar_vocab_mask_words(v);
    uint32_t *w = malloc(nw * sizeof *w);
    int32_t *allowed = malloc((size_t)anvil_grammar_vocab_size(v) * sizeof *allowed);
    size_t cap = 256, len = 0;
    char *buf = malloc(cap);
    assert_non_null(w);
    assert_non_null(allowed);
    assert_non_null(buf);
    anvil_grammar_matcher *m;
    OK(anvil_grammar_matcher_create(g, &m));
    int ended = 0;
    for (int step = 0; step < max_tokens && !ended; step++) {
        if (check_every > 0 && step % check_every == 0)
            gt_check_mask(v, m, w);
        else
            OK(anvil_grammar_matcher_fill_mask(m, w, nw));
        int32_t n = 0;
        for (size_t i = 0; i < nw; i++)
            for (uint32_t x = w[i]; x; x &= x - 1)
                allowed[n++] = (int32_t)(i * 32 + (size_t)__builtin_ctz(x));
        if (n == 0)
            fail_msg("empty mask at step %d after \"%.*s\"", step, (int)len, buf);
        int32_t id = allowed[anvil_test_rand(rng) % (uint64_t)n];
        OK(anvil_grammar_matcher_accept_token(m, id));
        size_t tl;
        const char *p = anvil_grammar_vocab_token(v, id, &tl);
        if (!p) {
            ended = 1;
            assert_true(anvil_grammar_matcher_is_done(m));
            break;
        }
        while (len + tl + 1 > cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        memcpy(buf + len, p, tl);
        len += tl;
    }
    buf[len] = 0;
    anvil_grammar_matcher_free(m);
    free(w);
    free(allowed);
    *out = buf;
    *out_len = len;
    return ended;
}

#endif
