/*
 * A matcher: one output's position in a grammar, as a state of its own DFA
 * over full stack sets (gram_dfa.c). Advancing is one cached transition
 * per byte once a set has been seen; masks come from gram_mask.c.
 *
 * The DFA only grows; when it holds many states (a long output through a
 * recursive grammar keeps making new stacks) it is rebuilt around the
 * current state, so memory stays bounded.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "grammar/gram_internal.h"

#define MATCHER_MAX_STATES 1024 /* about 1.2 MiB of transitions at most */

static anvil_status matcher_new(const anvil_grammar *g, anvil_grammar_matcher **out)
{
    anvil_grammar_matcher *m = calloc(1, sizeof *m);
    CHECK(m, ANVIL_ERR_OOM, "out of memory");
    m->g = g;
    gram_dfa_init(&m->dfa, &g->g, g->o.max_stack_depth, g->o.max_stacks);
    m->depth_st = malloc(((size_t)g->v->max_len + 2) * sizeof *m->depth_st);
    if (!m->depth_st) {
        anvil_grammar_matcher_free(m);
        CHECK(0, ANVIL_ERR_OOM, "out of memory");
    }
    *out = m;
    return ANVIL_OK;
}

anvil_status anvil_grammar_matcher_create(const anvil_grammar *g, anvil_grammar_matcher **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "out must not be NULL");
    *out = NULL;
    CHECK(g != NULL, ANVIL_ERR_INVALID_ARG, "grammar must not be NULL");
    anvil_grammar_matcher *m = NULL; /* set by matcher_new (GCC -O3 cannot see it) */
    TRY(matcher_new(g, &m));
    const int32_t *s = &g->g.start;
    int32_t len = 1;
    anvil_status st = gram_dfa_start(&m->dfa, &s, &len, 1, 0, &m->state);
    if (st != ANVIL_OK) {
        anvil_grammar_matcher_free(m);
        return st;
    }
    *out = m;
    return ANVIL_OK;
}

/* Makes a fresh DFA in dst holding src's state (rebuild or copy). */
static anvil_status rebase(anvil_grammar_matcher *dst, const gram_dfa *src, int32_t state)
{
    const gram_dstate *s = &src->st[state];
    const int32_t **stacks = malloc(((size_t)s->n + 1) * sizeof *stacks);
    int32_t *lens = malloc(((size_t)s->n + 1) * sizeof *lens);
    anvil_status st = ANVIL_OK;
    gram_dfa fresh;
    gram_dfa_init(&fresh, src->g, src->max_depth, src->max_stacks);
    CHECK_GOTO(stacks && lens, ANVIL_ERR_OOM, done, "out of memory");
    for (int32_t k = 0; k < s->n; k++) {
        stacks[k] = src->data + src->stk[s->first + (size_t)k].off;
        lens[k] = src->stk[s->first + (size_t)k].len;
    }
    int32_t ns;
    TRY_GOTO(gram_dfa_start(&fresh, stacks, lens, s->n, s->accept, &ns), done);
    if (dst->dfa.st == src->st)
        gram_dfa_free(&dst->dfa);
    dst->dfa = fresh;
    dst->state = ns;
    memset(&fresh, 0, sizeof fresh);
done:
    gram_dfa_free(&fresh);
    free((void *)stacks);
    free(lens);
    return st;
}

anvil_status anvil_grammar_matcher_copy(const anvil_grammar_matcher *m, anvil_grammar_matcher **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "out must not be NULL");
    *out = NULL;
    CHECK(m != NULL, ANVIL_ERR_INVALID_ARG, "matcher must not be NULL");
    anvil_grammar_matcher *c = NULL;
    TRY(matcher_new(m->g, &c));
    anvil_status st = rebase(c, &m->dfa, m->state);
    if (st != ANVIL_OK) {
        anvil_grammar_matcher_free(c);
        return st;
    }
    c->done = m->done;
    *out = c;
    return ANVIL_OK;
}

void anvil_grammar_matcher_free(anvil_grammar_matcher *m)
{
    if (!m)
        return;
    gram_dfa_free(&m->dfa);
    free(m->cut);
    free(m->depth_st);
    free(m);
}

static int is_stop(const anvil_grammar_vocab *v, int32_t id)
{
    for (int i = 0; i < v->n_stop; i++)
        if (v->stop[i] == id)
            return 1;
    return 0;
}

/* Steps through bytes; *ok 0 (and the state unchanged) when they do not fit. */
static anvil_status advance(anvil_grammar_matcher *m, const char *p, size_t len, int *ok)
{
    int32_t s = m->state;
    for (size_t i = 0; i < len && s != 0; i++)
        TRY(gram_dfa_step(&m->dfa, s, (uint8_t)p[i], &s));
    *ok = s != 0 && (m->dfa.st[s].n > 0 || m->dfa.st[s].accept);
    if (!*ok)
        return ANVIL_OK;
    m->state = s;
    if (m->dfa.n_st > MATCHER_MAX_STATES)
        TRY(rebase(m, &m->dfa, m->state));
    return ANVIL_OK;
}

anvil_status anvil_grammar_matcher_accept_token(anvil_grammar_matcher *m, int32_t id)
{
    CHECK(m != NULL, ANVIL_ERR_INVALID_ARG, "matcher must not be NULL");
    const anvil_grammar_vocab *v = m->g->v;
    CHECK(id >= 0 && id < v->n, ANVIL_ERR_INVALID_ARG, "token %d is outside the vocabulary of %d", (int)id,
          (int)v->n);
    CHECK(!m->done, ANVIL_ERR_INVALID_ARG, "token %d after the end of the structured output", (int)id);
    if (is_stop(v, id)) {
        CHECK(anvil_grammar_matcher_can_end(m), ANVIL_ERR_INVALID_ARG,
              "stop token %d before the structured output is complete", (int)id);
        m->done = 1;
        return ANVIL_OK;
    }
    CHECK(v->len[id] > 0, ANVIL_ERR_INVALID_ARG, "special token %d is not allowed in structured output", (int)id);
    int ok;
    TRY(advance(m, v->pool + v->off[id], v->len[id], &ok));
    CHECK(ok, ANVIL_ERR_INVALID_ARG, "token %d does not fit the grammar here", (int)id);
    return ANVIL_OK;
}

anvil_status anvil_grammar_matcher_accept_bytes(anvil_grammar_matcher *m, const char *bytes, size_t len)
{
    CHECK(m != NULL && (bytes != NULL || len == 0), ANVIL_ERR_INVALID_ARG, "bad arguments");
    CHECK(!m->done || len == 0, ANVIL_ERR_INVALID_ARG, "bytes after the end of the structured output");
    int ok;
    TRY(advance(m, bytes, len, &ok));
    CHECK(ok, ANVIL_ERR_INVALID_ARG, "the bytes do not fit the grammar here");
    return ANVIL_OK;
}

int anvil_grammar_matcher_can_end(const anvil_grammar_matcher *m)
{
    return m && (m->done || m->dfa.st[m->state].accept);
}

int anvil_grammar_matcher_is_done(const anvil_grammar_matcher *m)
{
    return m && (m->done || m->dfa.st[m->state].n == 0);
}

anvil_status anvil_grammar_matcher_fill_mask(anvil_grammar_matcher *m, uint32_t *words, size_t n_words)
{
    CHECK(m != NULL && words != NULL, ANVIL_ERR_INVALID_ARG, "bad arguments");
    const anvil_grammar_vocab *v = m->g->v;
    size_t need = ((size_t)v->n + 31) / 32;
    CHECK(n_words >= need, ANVIL_ERR_INVALID_ARG, "mask of %zu words for a vocabulary of %d tokens (%zu words)",
          n_words, (int)v->n, need);
    memset(words, 0, n_words * sizeof *words);
    if (!m->done && m->dfa.st[m->state].n > 0)
        TRY(gram_mask_fill(m, words));
    if (anvil_grammar_matcher_can_end(m) && !m->done)
        for (int i = 0; i < v->n_stop; i++)
            words[v->stop[i] >> 5] |= 1u << (v->stop[i] & 31);
    if (m->done)
        for (int i = 0; i < v->n_stop; i++)
            words[v->stop[i] >> 5] |= 1u << (v->stop[i] & 31);
    return ANVIL_OK;
}
