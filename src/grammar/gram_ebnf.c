/*
 * GBNF, llama.cpp's EBNF (the syntax vLLM's guided_grammar takes with its
 * xgrammar backend):
 *
 *     root  ::= "{" ws pair ("," ws pair)* "}"     # a comment
 *     pair  ::= [a-z]+ ":" ws ( num | "null" )
 *     num   ::= "-"? [0-9]{1,10}
 *     ws    ::= [ \t\n]*
 *
 * Rules are name ::= alternatives; a rule ends where the next `name ::=`
 * starts (newlines inside a rule are fine). Elements: "literal" strings,
 * [classes] with ranges and ^, '.', rule names (used before or after their
 * definition), ( groups ), and the postfix operators ? * + {m} {m,} {m,n}.
 * Left recursion that would grow the parse stack (expr ::= expr "+" term)
 * is refused by gb_finish with a message; write it with repetition.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "grammar/gram_charclass.h"

#define EBNF_MAX_NESTING 256

typedef struct eb {
    gram_builder *b;
    gram_src s;
    /* rule names: name -> rule id (a linear table with a hash) */
    struct ename {
        const char *p;
        size_t n;
        int32_t rule;
    } *names;
    size_t n_names, cap_names;
    size_t *ht;
    size_t ht_cap;
} eb;

static int is_name_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static void skip_space(eb *x)
{
    while (x->s.i < x->s.n) {
        char c = x->s.p[x->s.i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            x->s.i++;
        } else if (c == '#') {
            while (x->s.i < x->s.n && x->s.p[x->s.i] != '\n')
                x->s.i++;
        } else {
            break;
        }
    }
}

static size_t name_len(const eb *x, size_t i)
{
    size_t k = i;
    while (k < x->s.n && is_name_char((unsigned char)x->s.p[k]))
        k++;
    return k - i;
}

/* 1 when a `name ::=` starts at x->s.i. */
static int at_definition(const eb *x)
{
    size_t n = name_len(x, x->s.i);
    if (n == 0)
        return 0;
    size_t k = x->s.i + n;
    while (k < x->s.n && (x->s.p[k] == ' ' || x->s.p[k] == '\t'))
        k++;
    return k + 3 <= x->s.n && memcmp(x->s.p + k, "::=", 3) == 0;
}

static uint64_t name_hash(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    return h;
}

/* The rule named p[0..n) (made on first use). */
static anvil_status rule_of(eb *x, const char *p, size_t n, int32_t *rule)
{
    if (x->ht_cap) {
        for (size_t j = name_hash(p, n) & (x->ht_cap - 1); x->ht[j]; j = (j + 1) & (x->ht_cap - 1)) {
            const struct ename *e = &x->names[x->ht[j] - 1];
            if (e->n == n && memcmp(e->p, p, n) == 0) {
                *rule = e->rule;
                return ANVIL_OK;
            }
        }
    }
    if ((x->n_names + 1) * 2 > x->ht_cap) {
        size_t nc = x->ht_cap ? x->ht_cap * 2 : 64;
        size_t *t = calloc(nc, sizeof *t);
        CHECK(t, ANVIL_ERR_OOM, "out of memory");
        for (size_t i = 0; i < x->n_names; i++) {
            size_t j = name_hash(x->names[i].p, x->names[i].n) & (nc - 1);
            while (t[j])
                j = (j + 1) & (nc - 1);
            t[j] = i + 1;
        }
        free(x->ht);
        x->ht = t;
        x->ht_cap = nc;
    }
    if (x->n_names == x->cap_names) {
        size_t c = x->cap_names ? x->cap_names * 2 : 32;
        void *q = realloc(x->names, c * sizeof *x->names);
        CHECK(q, ANVIL_ERR_OOM, "out of memory");
        x->names = q;
        x->cap_names = c;
    }
    char buf[128];
    size_t k = n < sizeof buf - 1 ? n : sizeof buf - 1;
    memcpy(buf, p, k);
    buf[k] = 0;
    TRY(gb_rule_new(x->b, buf, rule));
    x->names[x->n_names].p = p;
    x->names[x->n_names].n = n;
    x->names[x->n_names].rule = *rule;
    size_t j = name_hash(p, n) & (x->ht_cap - 1);
    while (x->ht[j])
        j = (j + 1) & (x->ht_cap - 1);
    x->ht[j] = ++x->n_names;
    return ANVIL_OK;
}

static anvil_status parse_alts(eb *x, int32_t rule, int top);

static anvil_status parse_literal(eb *x, int32_t *elem)
{
    /* at the byte after '"' */
    gram_builder *b = x->b;
    int32_t r;
    TRY(gb_rule_new(b, NULL, &r));
    TRY(gb_alt(b, r));
    int n = 0;
    int32_t first = 0;
    for (;;) {
        CHECK(x->s.i < x->s.n, ANVIL_ERR_INVALID_ARG, "grammar: unterminated string literal");
        char c = x->s.p[x->s.i];
        if (c == '"') {
            x->s.i++;
            break;
        }
        uint32_t cp;
        if (c == '\\') {
            x->s.i++;
            TRY(gram_escape(&x->s, 0, NULL, &cp));
        } else {
            TRY(gram_cp_next(&x->s, &cp));
        }
        char buf[4];
        int k = gram_utf8_encode(cp, buf);
        TRY(gb_lit(b, r, buf, (size_t)k));
        if (n == 0)
            first = b->rules[r].alts[0].e[0];
        n += k;
    }
    if (n == 1) {
        b->rules[r].alts[0].n = 0;
        *elem = first;
        return ANVIL_OK;
    }
    *elem = GRAM_REF(r);
    return ANVIL_OK;
}

static int parse_int(eb *x, int *v)
{
    int nd = 0;
    long a = 0;
    while (x->s.i < x->s.n && x->s.p[x->s.i] >= '0' && x->s.p[x->s.i] <= '9') {
        if (a < 100000000)
            a = a * 10 + (x->s.p[x->s.i] - '0');
        x->s.i++;
        nd++;
    }
    *v = (int)a;
    return nd;
}

/* One sequence into rule's last alternative; stops at '|', ')', the end or the next definition. */
static anvil_status parse_seq(eb *x, int32_t rule, int top)
{
    gram_builder *b = x->b;
    for (;;) {
        skip_space(x);
        if (x->s.i >= x->s.n)
            return ANVIL_OK;
        char c = x->s.p[x->s.i];
        if (c == '|' || c == ')')
            return ANVIL_OK;
        if (top && at_definition(x))
            return ANVIL_OK;
        int32_t e;
        if (c == '"') {
            x->s.i++;
            TRY(parse_literal(x, &e));
        } else if (c == '[') {
            x->s.i++;
            gram_ranges rs = {0};
            anvil_status st = gram_bracket(&x->s, 0, &rs);
            if (st == ANVIL_OK)
                st = gram_set_elem(b, &rs, 0, &e);
            gram_ranges_free(&rs);
            TRY(st);
        } else if (c == '.') {
            x->s.i++;
            gram_ranges rs = {0};
            anvil_status st = gram_ranges_add(&rs, 0, 0x10FFFF);
            if (st == ANVIL_OK)
                st = gram_set_elem(b, &rs, 0, &e);
            gram_ranges_free(&rs);
            TRY(st);
        } else if (c == '(') {
            x->s.i++;
            CHECK(++x->s.depth <= EBNF_MAX_NESTING, ANVIL_ERR_INVALID_ARG, "grammar: groups nested deeper than %d",
                  EBNF_MAX_NESTING);
            int32_t g;
            TRY(gb_rule_new(b, NULL, &g));
            TRY(parse_alts(x, g, 0));
            x->s.depth--;
            skip_space(x);
            CHECK(x->s.i < x->s.n && x->s.p[x->s.i] == ')', ANVIL_ERR_INVALID_ARG,
                  "grammar: missing ) at byte %zu", x->s.i);
            x->s.i++;
            e = GRAM_REF(g);
        } else if (is_name_char((unsigned char)c)) {
            size_t n = name_len(x, x->s.i);
            int32_t r;
            TRY(rule_of(x, x->s.p + x->s.i, n, &r));
            x->s.i += n;
            e = GRAM_REF(r);
        } else {
            CHECK(0, ANVIL_ERR_INVALID_ARG, "grammar: unexpected '%c' at byte %zu", c, x->s.i);
        }
        /* postfix operators (no space before them, as llama.cpp) */
        for (;;) {
            if (x->s.i >= x->s.n)
                break;
            char q = x->s.p[x->s.i];
            int min, max;
            if (q == '*') {
                min = 0, max = -1;
            } else if (q == '+') {
                min = 1, max = -1;
            } else if (q == '?') {
                min = 0, max = 1;
            } else if (q == '{') {
                x->s.i++;
                skip_space(x);
                CHECK(parse_int(x, &min) > 0, ANVIL_ERR_INVALID_ARG, "grammar: bad {m,n} at byte %zu", x->s.i);
                skip_space(x);
                max = min;
                if (x->s.i < x->s.n && x->s.p[x->s.i] == ',') {
                    x->s.i++;
                    skip_space(x);
                    if (parse_int(x, &max) == 0)
                        max = -1;
                    skip_space(x);
                }
                CHECK(x->s.i < x->s.n && x->s.p[x->s.i] == '}', ANVIL_ERR_INVALID_ARG,
                      "grammar: bad {m,n} at byte %zu", x->s.i);
            } else {
                break;
            }
            x->s.i++;
            TRY(gb_repeat(b, e, min, max, "grammar", &e));
        }
        TRY(gb_elem(b, rule, e));
    }
}

static anvil_status parse_alts(eb *x, int32_t rule, int top)
{
    int n = 0;
    for (;;) {
        TRY(gb_alt(x->b, rule));
        CHECK(++n <= x->b->o.max_enum, ANVIL_ERR_INVALID_ARG,
              "grammar: rule '%s' has more than %d alternatives (max_enum)", x->b->rules[rule].name,
              x->b->o.max_enum);
        TRY(parse_seq(x, rule, top));
        skip_space(x);
        if (x->s.i < x->s.n && x->s.p[x->s.i] == '|') {
            x->s.i++;
            continue;
        }
        return ANVIL_OK;
    }
}

anvil_status gram_ebnf_parse(gram_builder *b, const char *text, size_t len, const char *root_name, int32_t *root)
{
    eb x;
    memset(&x, 0, sizeof x);
    x.b = b;
    x.s.p = text;
    x.s.n = len;
    x.s.what = "grammar";
    anvil_status st = ANVIL_OK;
    int n_defs = 0;
    for (;;) {
        skip_space(&x);
        if (x.s.i >= x.s.n)
            break;
        CHECK_GOTO(at_definition(&x), ANVIL_ERR_INVALID_ARG, done, "grammar: expected `name ::=` at byte %zu",
                   x.s.i);
        size_t n = name_len(&x, x.s.i);
        int32_t r;
        TRY_GOTO(rule_of(&x, x.s.p + x.s.i, n, &r), done);
        CHECK_GOTO(!b->rules[r].defined, ANVIL_ERR_INVALID_ARG, done, "grammar: rule '%s' is defined twice",
                   b->rules[r].name);
        b->rules[r].defined = 1;
        x.s.i += n;
        while (x.s.p[x.s.i] != ':')
            x.s.i++; /* spaces (at_definition checked that "::=" follows) */
        x.s.i += 3;
        TRY_GOTO(parse_alts(&x, r, 1), done);
        skip_space(&x);
        CHECK_GOTO(x.s.i >= x.s.n || at_definition(&x), ANVIL_ERR_INVALID_ARG, done,
                   "grammar: unexpected '%c' at byte %zu", x.s.p[x.s.i], x.s.i);
        n_defs++;
    }
    CHECK_GOTO(n_defs > 0, ANVIL_ERR_INVALID_ARG, done, "grammar: no rules");
    int32_t r = -1;
    for (size_t i = 0; i < x.n_names; i++)
        if (x.names[i].n == strlen(root_name) && memcmp(x.names[i].p, root_name, x.names[i].n) == 0)
            r = x.names[i].rule;
    CHECK_GOTO(r >= 0 && b->rules[r].defined, ANVIL_ERR_INVALID_ARG, done, "grammar: no rule named '%s' (the root)",
               root_name);
    for (size_t i = 0; i < x.n_names; i++)
        CHECK_GOTO(b->rules[x.names[i].rule].defined, ANVIL_ERR_INVALID_ARG, done,
                   "grammar: rule '%s' is used but never defined", b->rules[x.names[i].rule].name);
    *root = r;
done:
    free(x.names);
    free(x.ht);
    return st;
}
