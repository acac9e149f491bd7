/*
 * The vocabulary as the grammar sees it: each token's bytes (what it adds
 * to the output), and a byte trie over them in preorder, so that a mask is
 * one walk that skips every subtree the grammar rejects at its first byte.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "grammar/gram_internal.h"

typedef struct tok_ref {
    const unsigned char *p;
    uint32_t len;
    int32_t id;
} tok_ref;

static int ref_cmp(const void *a, const void *b)
{
    const tok_ref *x = a, *y = b;
    uint32_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->p, y->p, n);
    if (c)
        return c;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Builds the subtree of tokens r[lo..hi) that share their first depth bytes. */
static void build(anvil_grammar_vocab *v, const tok_ref *r, int32_t lo, int32_t hi, uint32_t depth, uint8_t byte)
{
    int32_t me = v->n_trie++;
    gram_tnode *t = &v->trie[me];
    t->lo = lo;
    t->hi = hi;
    t->byte = byte;
    int32_t i = lo;
    while (i < hi && r[i].len == depth)
        i++;
    t->n_here = i - lo;
    while (i < hi) {
        uint8_t c = r[i].p[depth];
        int32_t j = i + 1;
        while (j < hi && r[j].p[depth] == c)
            j++;
        build(v, r, i, j, depth + 1, c);
        i = j;
    }
    v->trie[me].end = v->n_trie;
}

static anvil_status vocab_index(anvil_grammar_vocab *v)
{
    anvil_status st = ANVIL_OK;
    tok_ref *r = malloc(((size_t)v->n + 1) * sizeof *r);
    CHECK(r, ANVIL_ERR_OOM, "out of memory");
    int32_t n = 0;
    size_t nodes = 1;
    for (int32_t i = 0; i < v->n; i++) {
        if (v->len[i] == 0)
            continue;
        r[n].p = (const unsigned char *)v->pool + v->off[i];
        r[n].len = v->len[i];
        r[n].id = i;
        nodes += v->len[i];
        if ((int32_t)v->len[i] > v->max_len)
            v->max_len = (int32_t)v->len[i];
        n++;
    }
    qsort(r, (size_t)n, sizeof *r, ref_cmp);
    v->sorted = malloc(((size_t)n + 1) * sizeof *v->sorted);
    v->trie = malloc(nodes * sizeof *v->trie);
    CHECK_GOTO(v->sorted && v->trie, ANVIL_ERR_OOM, done, "out of memory");
    for (int32_t i = 0; i < n; i++)
        v->sorted[i] = r[i].id;
    v->n_sorted = n;
    build(v, r, 0, n, 0, 0);
done:
    free(r);
    return st;
}

anvil_status anvil_grammar_vocab_create(int32_t n_vocab, const char *const *bytes, const size_t *lens,
                                        const int32_t *stop_ids, int n_stop, anvil_grammar_vocab **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "out must not be NULL");
    *out = NULL;
    CHECK(n_vocab > 0 && bytes && lens, ANVIL_ERR_INVALID_ARG, "a vocabulary needs n_vocab > 0, bytes and lens");
    CHECK(n_stop >= 0 && (n_stop == 0 || stop_ids), ANVIL_ERR_INVALID_ARG, "bad stop ids");
    for (int i = 0; i < n_stop; i++)
        CHECK(stop_ids[i] >= 0 && stop_ids[i] < n_vocab, ANVIL_ERR_INVALID_ARG,
              "stop id %d is outside the vocabulary of %d", (int)stop_ids[i], (int)n_vocab);
    anvil_status st = ANVIL_OK;
    anvil_grammar_vocab *v = calloc(1, sizeof *v);
    CHECK(v, ANVIL_ERR_OOM, "out of memory");
    v->n = n_vocab;
    size_t total = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        if (bytes[i])
            total += lens[i];
        CHECK_GOTO(total < UINT32_MAX && lens[i] < 65536, ANVIL_ERR_INVALID_ARG, fail,
                   "vocabulary too large (token %d)", (int)i);
    }
    v->pool = malloc(total + 1);
    v->off = calloc((size_t)n_vocab, sizeof *v->off);
    v->len = calloc((size_t)n_vocab, sizeof *v->len);
    v->stop = malloc(((size_t)n_stop + 1) * sizeof *v->stop);
    CHECK_GOTO(v->pool && v->off && v->len && v->stop, ANVIL_ERR_OOM, fail, "out of memory");
    size_t at = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        v->off[i] = (uint32_t)at;
        if (!bytes[i])
            continue;
        memcpy(v->pool + at, bytes[i], lens[i]);
        v->len[i] = (uint32_t)lens[i];
        at += lens[i];
    }
    if (n_stop)
        memcpy(v->stop, stop_ids, (size_t)n_stop * sizeof *stop_ids);
    v->n_stop = n_stop;
    for (int i = 0; i < n_stop; i++)
        v->len[stop_ids[i]] = 0; /* a stop token ends the output; it never adds bytes */
    TRY_GOTO(vocab_index(v), fail);
    *out = v;
    return ANVIL_OK;
fail:
    anvil_grammar_vocab_free(v);
    return st;
}

anvil_status anvil_grammar_vocab_from_tokenizer(const anvil_tokenizer *tok, int32_t n_vocab, const int32_t *stop_ids,
                                                int n_stop, anvil_grammar_vocab **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "out must not be NULL");
    *out = NULL;
    CHECK(tok != NULL, ANVIL_ERR_INVALID_ARG, "tokenizer must not be NULL");
    /* ids run to the largest id (vocab size counts distinct tokens) */
    int64_t n = anvil_tokenizer_vocab_size(tok);
    while (anvil_tokenizer_token_text(tok, (int32_t)n) != NULL)
        n++;
    CHECK(n > 0 && n < INT32_MAX, ANVIL_ERR_INVALID_ARG, "bad vocabulary size %lld", (long long)n);
    CHECK(n_vocab >= 0, ANVIL_ERR_INVALID_ARG, "bad vocabulary size %d", (int)n_vocab);
    int64_t n_tok = n;
    if (n_vocab > 0)
        n = n_vocab; /* ids past the tokenizer's are never allowed; tokens past n_vocab cannot be sampled */
    anvil_status st = ANVIL_OK;
    char **bytes = calloc((size_t)n, sizeof *bytes);
    size_t *lens = calloc((size_t)n, sizeof *lens);
    CHECK_GOTO(bytes && lens, ANVIL_ERR_OOM, done, "out of memory");
    for (int32_t i = 0; i < (int32_t)n && i < n_tok; i++) {
        if (!anvil_tokenizer_token_text(tok, i) || anvil_tokenizer_is_special(tok, i))
            continue;
        TRY_GOTO(anvil_tokenizer_token_bytes(tok, i, &bytes[i], &lens[i]), done);
    }
    st = anvil_grammar_vocab_create((int32_t)n, (const char *const *)bytes, lens, stop_ids, n_stop, out);
done:
    if (bytes)
        for (int64_t i = 0; i < n; i++)
            free(bytes[i]);
    free(bytes);
    free(lens);
    return st;
}

void anvil_grammar_vocab_free(anvil_grammar_vocab *v)
{
    if (!v)
        return;
    free(v->pool);
    free(v->off);
    free(v->len);
    free(v->stop);
    free(v->sorted);
    free(v->trie);
    free(v);
}

int32_t anvil_grammar_vocab_size(const anvil_grammar_vocab *v)
{
    return v ? v->n : 0;
}

size_t anvil_grammar_vocab_mask_words(const anvil_grammar_vocab *v)
{
    return v ? ((size_t)v->n + 31) / 32 : 0;
}

const char *anvil_grammar_vocab_token(const anvil_grammar_vocab *v, int32_t id, size_t *len)
{
    if (len)
        *len = 0;
    if (!v || id < 0 || id >= v->n || v->len[id] == 0)
        return NULL;
    if (len)
        *len = v->len[id];
    return v->pool + v->off[id];
}
