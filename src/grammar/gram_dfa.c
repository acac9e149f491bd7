/*
 * Sets of parse stacks as the states of a DFA over bytes, built lazily.
 *
 * A step takes every stack whose top byte class holds the byte, moves its
 * top on, and expands: a rule reference pushes one stack per alternative,
 * the end of an alternative pops back to the frame below. A reference that
 * is the last element of its alternative replaces the frame instead of
 * pushing (so x* stays flat however long it runs). Duplicate stacks met
 * during one expansion are dropped, which also ends the non-growing cycles
 * that gb_finish lets through. The resulting set is interned, and the
 * transition remembered: JSON, regexes and most grammars revisit the same
 * few sets over and over (a string's body, a number's digits), so after
 * the first visit a byte costs one table look-up.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "grammar/gram_internal.h"

#define DFA_MAX_STATES (1 << 20)

void gram_dfa_init(gram_dfa *d, const gram *g, int max_depth, int max_stacks)
{
    memset(d, 0, sizeof *d);
    d->g = g;
    d->max_depth = max_depth;
    d->max_stacks = max_stacks;
}

void gram_dfa_free(gram_dfa *d)
{
    free(d->st);
    free(d->trans);
    free(d->data);
    free(d->stk);
    free(d->ht);
    free(d->work);
    free(d->seen);
    free(d->seen_ht);
    free(d->out);
    memset(d, 0, sizeof *d);
}

void gram_dfa_reset(gram_dfa *d)
{
    d->n_st = 0;
    d->n_data = 0;
    d->n_stk = 0;
    if (d->ht)
        memset(d->ht, 0xff, d->ht_cap * sizeof *d->ht);
}

static anvil_status reserve(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return ANVIL_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    CHECK(q, ANVIL_ERR_OOM, "out of memory");
    *p = q;
    *cap = c;
    return ANVIL_OK;
}

static uint64_t hash_ints(const int32_t *p, int32_t n, uint64_t h)
{
    for (int32_t i = 0; i < n; i++) {
        h ^= (uint32_t)p[i];
        h *= 0x100000001b3ull;
        h ^= h >> 29;
    }
    return h;
}

/* ------------------------------------------------------------ one step's scratch */

static void scratch_reset(gram_dfa *d)
{
    d->n_work = 0;
    d->n_seen = 0;
    d->n_out = 0;
    d->n_seen_ent = 0;
    if (d->seen_ht)
        memset(d->seen_ht, 0, d->seen_cap * sizeof *d->seen_ht);
}

static anvil_status work_push(gram_dfa *d, const int32_t *s, int32_t len, int32_t top)
{
    /* entry: positions (len of s, then top if >= 0... stored whole), then its length */
    int32_t n = len + (top != GRAM_END ? 1 : 0);
    TRY(reserve((void **)&d->work, &d->cap_work, d->n_work + (size_t)n + 1, sizeof *d->work));
    if (len > 0)
        memcpy(d->work + d->n_work, s, (size_t)len * sizeof *s);
    if (top != GRAM_END)
        d->work[d->n_work + (size_t)len] = top;
    d->work[d->n_work + (size_t)n] = n;
    d->n_work += (size_t)n + 1;
    return ANVIL_OK;
}

/* Adds stack s to the step's seen set; *fresh 0 if it was there. *at: its offset in seen. */
static anvil_status seen_add(gram_dfa *d, const int32_t *s, int32_t len, int *fresh, size_t *at)
{
    if (d->n_seen_ent * 2 >= d->seen_cap) {
        size_t nc = d->seen_cap ? d->seen_cap * 2 : 256;
        uint32_t *t = calloc(nc, sizeof *t);
        CHECK(t, ANVIL_ERR_OOM, "out of memory");
        for (size_t i = 0; i < d->seen_cap; i++) {
            if (!d->seen_ht[i])
                continue;
            size_t o = d->seen_ht[i] - 1;
            uint64_t h = hash_ints(d->seen + o + 1, d->seen[o], 1469598103934665603ull);
            size_t j = h & (nc - 1);
            while (t[j])
                j = (j + 1) & (nc - 1);
            t[j] = d->seen_ht[i];
        }
        free(d->seen_ht);
        d->seen_ht = t;
        d->seen_cap = nc;
    }
    uint64_t h = hash_ints(s, len, 1469598103934665603ull);
    size_t j = h & (d->seen_cap - 1);
    while (d->seen_ht[j]) {
        size_t o = d->seen_ht[j] - 1;
        if (d->seen[o] == len && memcmp(d->seen + o + 1, s, (size_t)len * sizeof *s) == 0) {
            *fresh = 0;
            *at = o;
            return ANVIL_OK;
        }
        j = (j + 1) & (d->seen_cap - 1);
    }
    TRY(reserve((void **)&d->seen, &d->cap_seen, d->n_seen + (size_t)len + 1, sizeof *d->seen));
    CHECK(d->n_seen + (size_t)len + 1 < UINT32_MAX, ANVIL_ERR_INVALID_ARG, "grammar too ambiguous");
    size_t o = d->n_seen;
    d->seen[o] = len;
    memcpy(d->seen + o + 1, s, (size_t)len * sizeof *s);
    d->n_seen += (size_t)len + 1;
    d->seen_ht[j] = (uint32_t)(o + 1);
    d->n_seen_ent++;
    *fresh = 1;
    *at = o;
    return ANVIL_OK;
}

/* Expands everything on the work list into d->out (class-topped stacks). */
static anvil_status expand(gram_dfa *d, int *accept, int *popped, int *deep)
{
    const gram *g = d->g;
    int32_t *tmp = NULL;
    size_t cap_tmp = 0;
    anvil_status st = ANVIL_OK;
    size_t budget = (size_t)d->max_stacks * 16 + 4096;
    while (d->n_work > 0) {
        int32_t len = d->work[d->n_work - 1];
        size_t start = d->n_work - 1 - (size_t)len;
        TRY_GOTO(reserve((void **)&tmp, &cap_tmp, (size_t)len + 1, sizeof *tmp), done);
        memcpy(tmp, d->work + start, (size_t)len * sizeof *tmp);
        d->n_work = start;
        if (len == 0) {
            *accept = 1;
            continue;
        }
        int32_t top = tmp[len - 1];
        if (top == GRAM_BOTTOM) {
            *popped = 1;
            continue;
        }
        int fresh;
        size_t at;
        TRY_GOTO(seen_add(d, tmp, len, &fresh, &at), done);
        if (!fresh)
            continue;
        CHECK_GOTO(d->n_seen_ent <= budget, ANVIL_ERR_UNSUPPORTED, done,
                   "grammar too ambiguous: more than %zu parse stacks in one step", budget);
        int32_t e = g->elems[top];
        if (e == GRAM_END) {
            TRY_GOTO(work_push(d, tmp, len - 1, GRAM_END), done);
        } else if (e >= 0) {
            TRY_GOTO(reserve((void **)&d->out, &d->cap_out, d->n_out + 1, sizeof *d->out), done);
            d->out[d->n_out].off = at + 1;
            d->out[d->n_out].len = len;
            d->n_out++;
            CHECK_GOTO((int)d->n_out <= d->max_stacks, ANVIL_ERR_UNSUPPORTED, done,
                       "grammar too ambiguous: more than %d parse stacks at once (limit max_stacks)",
                       d->max_stacks);
        } else {
            int32_t r = GRAM_REF_RULE(e);
            int32_t base = len;
            if (g->elems[top + 1] == GRAM_END)
                base = len - 1; /* a tail call: the frame is done */
            else
                tmp[len - 1] = top + 1;
            if (base + 1 > d->max_depth) {
                *deep = 1; /* deeper than max_depth: not generated (a cut walk marks such tokens uncertain) */
                continue;
            }
            for (int32_t a = g->rule_alt0[r + 1] - 1; a >= g->rule_alt0[r]; a--)
                TRY_GOTO(work_push(d, tmp, base, g->alt_start[a]), done);
        }
    }
done:
    free(tmp);
    return st;
}

/* ------------------------------------------------------------ interning */

static int stk_cmp(const int32_t *a, int32_t la, const int32_t *b, int32_t lb)
{
    int32_t n = la < lb ? la : lb;
    for (int32_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return a[i] < b[i] ? -1 : 1;
    return la < lb ? -1 : la > lb;
}

static anvil_status ht_grow(gram_dfa *d)
{
    size_t nc = d->ht_cap ? d->ht_cap * 2 : 256;
    int32_t *t = malloc(nc * sizeof *t);
    CHECK(t, ANVIL_ERR_OOM, "out of memory");
    memset(t, 0xff, nc * sizeof *t);
    for (int32_t s = 0; s < d->n_st; s++) {
        size_t j = d->st[s].hash & (nc - 1);
        while (t[j] >= 0)
            j = (j + 1) & (nc - 1);
        t[j] = s;
    }
    free(d->ht);
    d->ht = t;
    d->ht_cap = nc;
    return ANVIL_OK;
}

/* Interns d->out (stacks in d->seen) with the flags; *id its state. */
static anvil_status intern(gram_dfa *d, int accept, int popped, int deep, int32_t *id)
{
    const int32_t *base = d->seen;
    gram_stk *o = d->out;
    size_t n = d->n_out;
    if (n == 0 && !accept && !popped && !deep && d->n_st > 0) {
        *id = 0;
        return ANVIL_OK;
    }
    /* canonical order: insertion sort (sets are small) */
    for (size_t i = 1; i < n; i++) {
        gram_stk x = o[i];
        size_t j = i;
        while (j > 0 && stk_cmp(base + o[j - 1].off, o[j - 1].len, base + x.off, x.len) > 0) {
            o[j] = o[j - 1];
            j--;
        }
        o[j] = x;
    }
    uint64_t h = 1469598103934665603ull ^ ((uint64_t)accept << 1 | (uint64_t)popped | (uint64_t)deep << 2);
    for (size_t i = 0; i < n; i++)
        h = hash_ints(base + o[i].off, o[i].len, h ^ (uint64_t)o[i].len);
    h ^= n;
    if ((size_t)(d->n_st + 1) * 2 > d->ht_cap)
        TRY(ht_grow(d));
    size_t j = h & (d->ht_cap - 1);
    for (; d->ht[j] >= 0; j = (j + 1) & (d->ht_cap - 1)) {
        const gram_dstate *s = &d->st[d->ht[j]];
        if (s->hash != h || (size_t)s->n != n || s->accept != accept || s->popped != popped || s->deep != deep)
            continue;
        size_t i = 0;
        for (; i < n; i++) {
            const gram_stk *a = &d->stk[s->first + i];
            if (stk_cmp(d->data + a->off, a->len, base + o[i].off, o[i].len) != 0)
                break;
        }
        if (i == n) {
            *id = d->ht[j];
            return ANVIL_OK;
        }
    }
    CHECK(d->n_st < DFA_MAX_STATES, ANVIL_ERR_UNSUPPORTED, "grammar too complex: more than %d parse states",
          DFA_MAX_STATES);
    size_t cap_st = (size_t)d->cap_st;
    if ((size_t)d->n_st + 1 > cap_st) {
        size_t nc = cap_st ? cap_st * 2 : 64;
        gram_dstate *s2 = realloc(d->st, nc * sizeof *s2);
        CHECK(s2, ANVIL_ERR_OOM, "out of memory");
        d->st = s2;
        int32_t *t2 = realloc(d->trans, nc * 256 * sizeof *t2);
        CHECK(t2, ANVIL_ERR_OOM, "out of memory");
        d->trans = t2;
        d->cap_st = (int32_t)nc;
    }
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += (size_t)o[i].len;
    TRY(reserve((void **)&d->data, &d->cap_data, d->n_data + total, sizeof *d->data));
    TRY(reserve((void **)&d->stk, &d->cap_stk, d->n_stk + n, sizeof *d->stk));
    gram_dstate *s = &d->st[d->n_st];
    s->first = d->n_stk;
    s->n = (int32_t)n;
    s->accept = (uint8_t)accept;
    s->popped = (uint8_t)popped;
    s->deep = (uint8_t)deep;
    s->hash = h;
    for (size_t i = 0; i < n; i++) {
        memcpy(d->data + d->n_data, base + o[i].off, (size_t)o[i].len * sizeof *d->data);
        d->stk[d->n_stk].off = d->n_data;
        d->stk[d->n_stk].len = o[i].len;
        d->n_stk++;
        d->n_data += (size_t)o[i].len;
    }
    memset(d->trans + (size_t)d->n_st * 256, 0xff, 256 * sizeof *d->trans);
    d->ht[j] = d->n_st;
    *id = d->n_st++;
    return ANVIL_OK;
}

static anvil_status ensure_dead(gram_dfa *d)
{
    if (d->n_st > 0)
        return ANVIL_OK;
    scratch_reset(d);
    int32_t id;
    TRY(intern(d, 0, 0, 0, &id)); /* state 0: no stack, nothing accepted */
    return ANVIL_OK;
}

anvil_status gram_dfa_start(gram_dfa *d, const int32_t *const *stacks, const int32_t *lens, int n, int accept,
                            int32_t *state)
{
    TRY(ensure_dead(d));
    scratch_reset(d);
    for (int i = n - 1; i >= 0; i--)
        TRY(work_push(d, stacks[i], lens[i], GRAM_END));
    int popped = 0, deep = 0;
    TRY(expand(d, &accept, &popped, &deep));
    return intern(d, accept, popped, deep, state);
}

anvil_status gram_dfa_step(gram_dfa *d, int32_t s, uint8_t c, int32_t *next)
{
    int32_t t = d->trans[(size_t)s * 256 + c];
    if (t >= 0) {
        *next = t;
        return ANVIL_OK;
    }
    const gram *g = d->g;
    scratch_reset(d);
    const gram_dstate *ds = &d->st[s];
    for (int32_t k = ds->n - 1; k >= 0; k--) {
        const gram_stk *a = &d->stk[ds->first + (size_t)k];
        const int32_t *p = d->data + a->off;
        int32_t top = p[a->len - 1];
        if (!gram_class_has(g->classes[g->elems[top]], c))
            continue;
        TRY(work_push(d, p, a->len - 1, top + 1));
    }
    int accept = 0, popped = 0, deep = 0;
    TRY(expand(d, &accept, &popped, &deep));
    TRY(intern(d, accept, popped, deep, &t));
    d->trans[(size_t)s * 256 + c] = t;
    *next = t;
    return ANVIL_OK;
}
