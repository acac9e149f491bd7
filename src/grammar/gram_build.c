/*
 * Building a grammar: rules of alternatives of elements, then one check and
 * a flat copy (gram). Every front end goes through here, so the size limits
 * (elements, repetition bounds) are counted in one place as the build goes:
 * a hostile input stops at the limit, not after it has used the memory.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "grammar/gram_internal.h"

static anvil_status grow(void **p, int32_t *cap, int32_t need, size_t elem)
{
    if (need <= *cap)
        return ANVIL_OK;
    int64_t c = *cap ? *cap : 4;
    while (c < need)
        c *= 2;
    CHECK(c < INT32_MAX, ANVIL_ERR_OOM, "grammar too large");
    void *q = realloc(*p, (size_t)c * elem);
    CHECK(q, ANVIL_ERR_OOM, "out of memory");
    *p = q;
    *cap = (int32_t)c;
    return ANVIL_OK;
}

anvil_status gb_init(gram_builder *b, const anvil_grammar_options *o)
{
    memset(b, 0, sizeof *b);
    b->o = *o;
    for (int i = 0; i < 256; i++)
        b->byte_class[i] = -1;
    b->any_class = -1;
    return ANVIL_OK;
}

void gb_free(gram_builder *b)
{
    for (int32_t r = 0; r < b->n_rules; r++) {
        for (int32_t a = 0; a < b->rules[r].n_alts; a++)
            free(b->rules[r].alts[a].e);
        free(b->rules[r].alts);
        free(b->rules[r].name);
    }
    free(b->rules);
    free(b->classes);
    memset(b, 0, sizeof *b);
}

static anvil_status count_elems(gram_builder *b, int64_t n)
{
    b->n_elems += n;
    CHECK(b->n_elems <= b->o.max_elements, ANVIL_ERR_INVALID_ARG,
          "grammar too large: more than %lld elements (limit max_elements)", (long long)b->o.max_elements);
    return ANVIL_OK;
}

anvil_status gb_rule_new(gram_builder *b, const char *name, int32_t *id)
{
    TRY(count_elems(b, 1));
    TRY(grow((void **)&b->rules, &b->cap_rules, b->n_rules + 1, sizeof *b->rules));
    gb_rule *r = &b->rules[b->n_rules];
    memset(r, 0, sizeof *r);
    char tmp[32];
    if (!name) {
        snprintf(tmp, sizeof tmp, "rule %d", (int)b->n_rules);
        name = tmp;
    }
    r->name = strdup(name);
    CHECK(r->name, ANVIL_ERR_OOM, "out of memory");
    *id = b->n_rules++;
    return ANVIL_OK;
}

anvil_status gb_alt(gram_builder *b, int32_t r)
{
    gb_rule *ru = &b->rules[r];
    TRY(count_elems(b, 1));
    TRY(grow((void **)&ru->alts, &ru->cap_alts, ru->n_alts + 1, sizeof *ru->alts));
    memset(&ru->alts[ru->n_alts], 0, sizeof ru->alts[0]);
    ru->n_alts++;
    return ANVIL_OK;
}

anvil_status gb_elem(gram_builder *b, int32_t r, int32_t e)
{
    gb_rule *ru = &b->rules[r];
    if (ru->n_alts == 0)
        TRY(gb_alt(b, r));
    gb_seq *a = &ru->alts[ru->n_alts - 1];
    TRY(count_elems(b, 1));
    TRY(grow((void **)&a->e, &a->cap, a->n + 1, sizeof *a->e));
    a->e[a->n++] = e;
    return ANVIL_OK;
}

anvil_status gb_class(gram_builder *b, const uint32_t set[8], int32_t *e)
{
    int n = 0, last = -1;
    for (int c = 0; c < 256; c++)
        if (gram_class_has(set, (unsigned)c)) {
            n++;
            last = c;
        }
    CHECK(n > 0, ANVIL_ERR_INVALID_ARG, "empty character class");
    if (n == 1 && b->byte_class[last] >= 0) {
        *e = b->byte_class[last];
        return ANVIL_OK;
    }
    if (n == 256 && b->any_class >= 0) {
        *e = b->any_class;
        return ANVIL_OK;
    }
    TRY(count_elems(b, 8));
    TRY(grow((void **)&b->classes, &b->cap_classes, b->n_classes + 1, sizeof *b->classes));
    memcpy(b->classes[b->n_classes], set, sizeof b->classes[0]);
    *e = b->n_classes++;
    if (n == 1)
        b->byte_class[last] = *e;
    if (n == 256)
        b->any_class = *e;
    return ANVIL_OK;
}

anvil_status gb_byte(gram_builder *b, int32_t r, unsigned char c)
{
    uint32_t set[8] = {0};
    gram_class_add(set, c);
    int32_t e;
    TRY(gb_class(b, set, &e));
    return gb_elem(b, r, e);
}

anvil_status gb_lit(gram_builder *b, int32_t r, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        TRY(gb_byte(b, r, (unsigned char)s[i]));
    return ANVIL_OK;
}

anvil_status gb_group(gram_builder *b, const int32_t *e, int n, int32_t *out)
{
    if (n == 1) {
        *out = e[0];
        return ANVIL_OK;
    }
    int32_t r;
    TRY(gb_rule_new(b, NULL, &r));
    TRY(gb_alt(b, r));
    for (int i = 0; i < n; i++)
        TRY(gb_elem(b, r, e[i]));
    *out = GRAM_REF(r);
    return ANVIL_OK;
}

anvil_status gb_repeat(gram_builder *b, int32_t elem, int min, int max, const char *what, int32_t *out)
{
    CHECK(min >= 0 && (max < 0 || max >= min), ANVIL_ERR_INVALID_ARG, "%s: bad repetition bounds {%d,%d}", what,
          min, max);
    CHECK(min <= b->o.max_repeat && max <= b->o.max_repeat, ANVIL_ERR_INVALID_ARG,
          "%s: repetition bound %d is over the limit of %d (max_repeat)", what, max > min ? max : min,
          b->o.max_repeat);
    /* tail: what may follow the min copies */
    int32_t tail = 0;
    int has_tail = 0;
    if (max < 0) {
        /* S ::= elem S | "" : the reference is last, so matching it reuses the frame */
        int32_t s;
        TRY(gb_rule_new(b, NULL, &s));
        TRY(gb_alt(b, s));
        TRY(gb_elem(b, s, elem));
        TRY(gb_elem(b, s, GRAM_REF(s)));
        TRY(gb_alt(b, s));
        tail = GRAM_REF(s);
        has_tail = 1;
    } else if (max > min) {
        /* O_k ::= elem O_{k-1} | "" ; O_1 ::= elem | "" */
        int32_t prev = 0;
        for (int k = 1; k <= max - min; k++) {
            int32_t o;
            TRY(gb_rule_new(b, NULL, &o));
            TRY(gb_alt(b, o));
            TRY(gb_elem(b, o, elem));
            if (k > 1)
                TRY(gb_elem(b, o, prev));
            TRY(gb_alt(b, o));
            prev = GRAM_REF(o);
        }
        tail = prev;
        has_tail = 1;
    }
    if (min == 0 && has_tail) {
        *out = tail;
        return ANVIL_OK;
    }
    int32_t r;
    TRY(gb_rule_new(b, NULL, &r));
    TRY(gb_alt(b, r));
    for (int i = 0; i < min; i++)
        TRY(gb_elem(b, r, elem));
    if (has_tail)
        TRY(gb_elem(b, r, tail));
    *out = GRAM_REF(r);
    return ANVIL_OK;
}

/* ------------------------------------------------------------ checks */

/*
 * Left recursion: expanding a rule reaches the same rule again before any
 * byte is matched. When every reference on such a cycle is the last element
 * of its alternative (x* as S ::= x S with x able to match nothing), the
 * stack does not grow and the expansion's duplicate check ends it. Any
 * other cycle would push frames forever: refused.
 */
typedef struct ledge {
    int32_t to;
    int tail;
} ledge;

static anvil_status check_left_recursion(const gram_builder *b)
{
    int32_t n = b->n_rules;
    anvil_status st = ANVIL_OK;
    uint8_t *nullable = calloc((size_t)n + 1, 1);
    int32_t *eoff = calloc((size_t)n + 1, sizeof *eoff);
    ledge *edges = NULL;
    int32_t n_edges = 0, cap_edges = 0;
    int32_t *idx = NULL, *low = NULL, *stack = NULL, *comp = NULL, *it = NULL, *call = NULL;
    uint8_t *on = NULL;
    CHECK_GOTO(nullable && eoff, ANVIL_ERR_OOM, done, "out of memory");
    for (int changed = 1; changed;) {
        changed = 0;
        for (int32_t r = 0; r < n; r++) {
            if (nullable[r])
                continue;
            for (int32_t a = 0; a < b->rules[r].n_alts && !nullable[r]; a++) {
                const gb_seq *al = &b->rules[r].alts[a];
                int all = 1;
                for (int32_t i = 0; i < al->n && all; i++)
                    all = GRAM_IS_REF(al->e[i]) && nullable[GRAM_REF_RULE(al->e[i])];
                if (all) {
                    nullable[r] = 1;
                    changed = 1;
                }
            }
        }
    }
    for (int32_t r = 0; r < n; r++) {
        eoff[r] = n_edges;
        for (int32_t a = 0; a < b->rules[r].n_alts; a++) {
            const gb_seq *al = &b->rules[r].alts[a];
            for (int32_t i = 0; i < al->n && GRAM_IS_REF(al->e[i]); i++) {
                TRY_GOTO(grow((void **)&edges, &cap_edges, n_edges + 1, sizeof *edges), done);
                edges[n_edges].to = GRAM_REF_RULE(al->e[i]);
                edges[n_edges].tail = i == al->n - 1;
                n_edges++;
                if (!nullable[GRAM_REF_RULE(al->e[i])])
                    break;
            }
        }
    }
    eoff[n] = n_edges;
    /* Tarjan's strongly connected components, iteratively (rules may be many) */
    idx = malloc((size_t)n * sizeof *idx);
    low = malloc((size_t)n * sizeof *low);
    stack = malloc((size_t)n * sizeof *stack);
    comp = malloc((size_t)n * sizeof *comp);
    it = malloc((size_t)n * sizeof *it);
    call = malloc((size_t)n * sizeof *call);
    on = calloc((size_t)n + 1, 1);
    CHECK_GOTO(idx && low && stack && comp && it && call && on, ANVIL_ERR_OOM, done, "out of memory");
    for (int32_t r = 0; r < n; r++)
        idx[r] = -1;
    int32_t counter = 0, sp = 0, n_comp = 0;
    for (int32_t s = 0; s < n; s++) {
        if (idx[s] >= 0)
            continue;
        int32_t cp = 0;
        call[cp++] = s;
        idx[s] = low[s] = counter++;
        it[s] = eoff[s];
        stack[sp++] = s;
        on[s] = 1;
        while (cp > 0) {
            int32_t v = call[cp - 1];
            if (it[v] < eoff[v + 1]) {
                int32_t w = edges[it[v]++].to;
                if (idx[w] < 0) {
                    idx[w] = low[w] = counter++;
                    it[w] = eoff[w];
                    stack[sp++] = w;
                    on[w] = 1;
                    call[cp++] = w;
                } else if (on[w] && idx[w] < low[v]) {
                    low[v] = idx[w];
                }
                continue;
            }
            if (low[v] == idx[v]) {
                int32_t w;
                do {
                    w = stack[--sp];
                    on[w] = 0;
                    comp[w] = n_comp;
                } while (w != v);
                n_comp++;
            }
            cp--;
            if (cp > 0 && low[v] < low[call[cp - 1]])
                low[call[cp - 1]] = low[v];
        }
    }
    for (int32_t r = 0; r < n; r++)
        for (int32_t k = eoff[r]; k < eoff[r + 1]; k++)
            if (!edges[k].tail && comp[edges[k].to] == comp[r])
                CHECK_GOTO(0, ANVIL_ERR_UNSUPPORTED, done,
                           "left recursion: rule '%s' can reach itself before matching anything (through '%s'); "
                           "rewrite it with repetition, e.g. a ::= b (\"op\" b)*",
                           b->rules[r].name, b->rules[edges[k].to].name);
done:
    free(nullable);
    free(eoff);
    free(edges);
    free(idx);
    free(low);
    free(stack);
    free(comp);
    free(it);
    free(call);
    free(on);
    return st;
}

/* Every rule must match some text: a ::= b, b ::= a matches nothing, and its
 * expansion would find no byte to match. */
static anvil_status check_productive(const gram_builder *b)
{
    uint8_t *prod = calloc((size_t)b->n_rules + 1, 1);
    CHECK(prod, ANVIL_ERR_OOM, "out of memory");
    for (int changed = 1; changed;) {
        changed = 0;
        for (int32_t r = 0; r < b->n_rules; r++) {
            for (int32_t a = 0; a < b->rules[r].n_alts && !prod[r]; a++) {
                const gb_seq *al = &b->rules[r].alts[a];
                int all = 1;
                for (int32_t i = 0; i < al->n && all; i++)
                    all = !GRAM_IS_REF(al->e[i]) || prod[GRAM_REF_RULE(al->e[i])];
                if (all) {
                    prod[r] = 1;
                    changed = 1;
                }
            }
        }
    }
    int32_t bad = -1;
    for (int32_t r = 0; r < b->n_rules && bad < 0; r++)
        if (!prod[r])
            bad = r;
    free(prod);
    CHECK(bad < 0, ANVIL_ERR_INVALID_ARG,
          "rule '%s' matches nothing (each of its alternatives needs itself again before any text)",
          b->rules[bad].name);
    return ANVIL_OK;
}

anvil_status gb_finish(gram_builder *b, int32_t root, gram *out)
{
    memset(out, 0, sizeof *out);
    for (int32_t r = 0; r < b->n_rules; r++) {
        CHECK(b->rules[r].n_alts > 0, ANVIL_ERR_INVALID_ARG, "rule '%s' is used but never defined",
              b->rules[r].name);
    }
    TRY(check_left_recursion(b));
    TRY(check_productive(b));
    int64_t n_elems = 2, n_alts = 0;
    for (int32_t r = 0; r < b->n_rules; r++) {
        n_alts += b->rules[r].n_alts;
        for (int32_t a = 0; a < b->rules[r].n_alts; a++)
            n_elems += b->rules[r].alts[a].n + 1;
    }
    CHECK(n_elems < INT32_MAX / 2, ANVIL_ERR_INVALID_ARG, "grammar too large");
    anvil_status st = ANVIL_OK;
    out->elems = malloc((size_t)n_elems * sizeof *out->elems);
    out->alt_start = malloc((size_t)(n_alts + 1) * sizeof *out->alt_start);
    out->rule_alt0 = malloc((size_t)(b->n_rules + 1) * sizeof *out->rule_alt0);
    out->classes = malloc(((size_t)b->n_classes + 1) * sizeof *out->classes);
    CHECK_GOTO(out->elems && out->alt_start && out->rule_alt0 && out->classes, ANVIL_ERR_OOM, fail,
               "out of memory");
    int64_t p = 0, k = 0;
    /* position 0: the start stack's reference to root, then its end */
    out->elems[p++] = GRAM_REF(root);
    out->elems[p++] = GRAM_END;
    out->start = 0;
    for (int32_t r = 0; r < b->n_rules; r++) {
        out->rule_alt0[r] = (int32_t)k;
        for (int32_t a = 0; a < b->rules[r].n_alts; a++) {
            const gb_seq *al = &b->rules[r].alts[a];
            out->alt_start[k++] = (int32_t)p;
            if (al->n > 0) /* an empty alternative has no array */
                memcpy(out->elems + p, al->e, (size_t)al->n * sizeof *al->e);
            p += al->n;
            out->elems[p++] = GRAM_END;
        }
    }
    out->rule_alt0[b->n_rules] = (int32_t)k;
    out->n_elems = p;
    out->n_rules = b->n_rules;
    if (b->n_classes > 0)
        memcpy(out->classes, b->classes, (size_t)b->n_classes * sizeof *out->classes);
    out->n_classes = b->n_classes;
    return ANVIL_OK;
fail:
    gram_free(out);
    return st;
}

void gram_free(gram *g)
{
    free(g->elems);
    free(g->alt_start);
    free(g->rule_alt0);
    free(g->classes);
    memset(g, 0, sizeof *g);
}
