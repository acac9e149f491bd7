/*
 * Regular expressions (vLLM's guided_regex, a JSON schema's pattern) into
 * grammar rules. The whole output must match: ^ at the start and $ at the
 * end are accepted and implied. Supported: literals, escapes (\n \t \xHH
 * \uHHHH \d \w \s and their negations), [classes], '.', groups ((...),
 * (?:...), (?P<name>...)), alternation, ? * + {m} {m,} {m,n} (lazy forms
 * match the same language). Refused with a message: backreferences,
 * lookaround, word boundaries, inline flags, Unicode properties.
 */
#include <string.h>

#include "core/error.h"
#include "grammar/gram_charclass.h"

#define REGEX_MAX_NESTING 256

typedef struct rx {
    gram_builder *b;
    gram_src s;
    int json;
} rx;

static anvil_status parse_alt(rx *x, int32_t *elem);

static int peek(const rx *x)
{
    return x->s.i < x->s.n ? (unsigned char)x->s.p[x->s.i] : -1;
}

/* {m}, {m,}, {m,n} at x->s.i (after '{'): 1 if it is one, with the bounds. */
static int parse_braces(rx *x, int *min, int *max)
{
    size_t i = x->s.i;
    long a = 0, bnd = -1;
    int nd = 0;
    while (i < x->s.n && x->s.p[i] >= '0' && x->s.p[i] <= '9') {
        if (a < 100000000)
            a = a * 10 + (x->s.p[i] - '0');
        i++;
        nd++;
    }
    if (nd == 0 && !(i < x->s.n && x->s.p[i] == ',' && i + 1 < x->s.n && x->s.p[i + 1] >= '0' && x->s.p[i + 1] <= '9'))
        return 0; /* a literal '{' (but {,n} is {0,n}, as in Python) */
    if (i < x->s.n && x->s.p[i] == '}') {
        bnd = a;
    } else if (i < x->s.n && x->s.p[i] == ',') {
        i++;
        int nd2 = 0;
        long c = 0;
        while (i < x->s.n && x->s.p[i] >= '0' && x->s.p[i] <= '9') {
            if (c < 100000000)
                c = c * 10 + (x->s.p[i] - '0');
            i++;
            nd2++;
        }
        if (i >= x->s.n || x->s.p[i] != '}')
            return 0;
        bnd = nd2 ? c : -1;
    } else {
        return 0;
    }
    x->s.i = i + 1;
    *min = (int)a;
    *max = (int)bnd;
    return 1;
}

static anvil_status parse_atom(rx *x, int32_t *elem, int *got)
{
    gram_builder *b = x->b;
    int c = peek(x);
    *got = 1;
    if (c == '(') {
        x->s.i++;
        if (peek(x) == '?') {
            x->s.i++;
            int k = peek(x);
            if (k == ':') {
                x->s.i++;
            } else if (k == 'P' || k == '<') {
                if (k == 'P')
                    x->s.i++;
                CHECK(peek(x) == '<' && x->s.i + 1 < x->s.n && x->s.p[x->s.i + 1] != '=' &&
                          x->s.p[x->s.i + 1] != '!',
                      ANVIL_ERR_UNSUPPORTED, "regular expression: lookbehind is not supported");
                while (x->s.i < x->s.n && x->s.p[x->s.i] != '>')
                    x->s.i++;
                CHECK(x->s.i < x->s.n, ANVIL_ERR_INVALID_ARG, "regular expression: unterminated group name");
                x->s.i++;
            } else {
                CHECK(k != '=' && k != '!', ANVIL_ERR_UNSUPPORTED, "regular expression: lookahead is not supported");
                CHECK(0, ANVIL_ERR_UNSUPPORTED, "regular expression: (?%c...) (flags or extensions) is not supported",
                      k < 0 ? ' ' : k);
            }
        }
        CHECK(++x->s.depth <= REGEX_MAX_NESTING, ANVIL_ERR_INVALID_ARG,
              "regular expression: groups nested deeper than %d", REGEX_MAX_NESTING);
        TRY(parse_alt(x, elem));
        x->s.depth--;
        CHECK(peek(x) == ')', ANVIL_ERR_INVALID_ARG, "regular expression: missing ) at byte %zu", x->s.i);
        x->s.i++;
        return ANVIL_OK;
    }
    gram_ranges rs = {0};
    anvil_status st = ANVIL_OK;
    if (c == '[') {
        x->s.i++;
        st = gram_bracket(&x->s, 1, &rs);
    } else if (c == '.') {
        x->s.i++;
        if ((st = gram_ranges_add(&rs, '\n', '\n')) == ANVIL_OK)
            st = gram_ranges_negate(&rs);
    } else if (c == '\\') {
        x->s.i++;
        uint32_t cp;
        st = gram_escape(&x->s, 1, &rs, &cp);
        if (st == ANVIL_OK && cp != UINT32_MAX)
            st = gram_ranges_add(&rs, cp, cp);
    } else {
        CHECK(c != '*' && c != '+' && c != '?', ANVIL_ERR_INVALID_ARG,
              "regular expression: nothing to repeat at byte %zu", x->s.i);
        uint32_t cp;
        st = gram_cp_next(&x->s, &cp);
        if (st == ANVIL_OK)
            st = gram_ranges_add(&rs, cp, cp);
    }
    if (st == ANVIL_OK)
        st = gram_set_elem(b, &rs, x->json, elem);
    gram_ranges_free(&rs);
    return st;
}

static anvil_status parse_seq(rx *x, int32_t *elem)
{
    gram_builder *b = x->b;
    int32_t r;
    TRY(gb_rule_new(b, NULL, &r));
    TRY(gb_alt(b, r));
    int n = 0;
    int32_t first = 0;
    for (;;) {
        int c = peek(x);
        if (c < 0 || c == '|' || c == ')')
            break;
        if (c == '^' && x->s.i == 0) {
            x->s.i++;
            continue;
        }
        if (c == '$' && x->s.i + 1 == x->s.n) {
            x->s.i++;
            continue;
        }
        CHECK(c != '^' && c != '$', ANVIL_ERR_UNSUPPORTED,
              "regular expression: %c inside the expression is not supported (anchors are implied)", c);
        int32_t e;
        int got;
        TRY(parse_atom(x, &e, &got));
        for (;;) {
            int q = peek(x), min, max;
            if (q == '*') {
                min = 0, max = -1;
                x->s.i++;
            } else if (q == '+') {
                min = 1, max = -1;
                x->s.i++;
            } else if (q == '?') {
                min = 0, max = 1;
                x->s.i++;
            } else if (q == '{') {
                x->s.i++;
                if (!parse_braces(x, &min, &max)) {
                    x->s.i--;
                    break;
                }
            } else {
                break;
            }
            if (peek(x) == '?')
                x->s.i++; /* lazy: the same language */
            CHECK(peek(x) != '+', ANVIL_ERR_UNSUPPORTED, "regular expression: possessive quantifiers are not supported");
            TRY(gb_repeat(b, e, min, max, "regular expression", &e));
        }
        TRY(gb_elem(b, r, e));
        if (n == 0)
            first = e;
        n++;
    }
    if (n == 1) {
        /* a one-element sequence is its element (the rule stays, unused) */
        b->rules[r].alts[0].n = 0;
        *elem = first;
        return ANVIL_OK;
    }
    *elem = GRAM_REF(r);
    return ANVIL_OK;
}

static anvil_status parse_alt(rx *x, int32_t *elem)
{
    gram_builder *b = x->b;
    int32_t e;
    TRY(parse_seq(x, &e));
    if (peek(x) != '|') {
        *elem = e;
        return ANVIL_OK;
    }
    int32_t r;
    TRY(gb_rule_new(b, NULL, &r));
    TRY(gb_alt(b, r));
    TRY(gb_elem(b, r, e));
    while (peek(x) == '|') {
        x->s.i++;
        TRY(parse_seq(x, &e));
        TRY(gb_alt(b, r));
        TRY(gb_elem(b, r, e));
    }
    *elem = GRAM_REF(r);
    return ANVIL_OK;
}

anvil_status gram_regex_parse(gram_builder *b, const char *re, size_t len, int json_escape, int32_t *elem)
{
    rx x;
    memset(&x, 0, sizeof x);
    x.b = b;
    x.s.p = re;
    x.s.n = len;
    x.s.what = json_escape ? "pattern" : "regular expression";
    x.json = json_escape;
    TRY(parse_alt(&x, elem));
    CHECK(x.s.i == x.s.n, ANVIL_ERR_INVALID_ARG, "%s: unbalanced ) at byte %zu", x.s.what, x.s.i);
    return ANVIL_OK;
}
