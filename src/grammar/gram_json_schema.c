/*
 * JSON Schema into grammar rules: the subset that OpenAI's strict mode,
 * vLLM and xgrammar take (docs/grammar.md lists it keyword by keyword).
 *
 * Choices, as xgrammar's and OpenAI's:
 *  - properties come in the schema's order; optional ones may be left out;
 *    with properties given and additionalProperties absent, no other
 *    property is generated (strict); additionalProperties as a schema adds
 *    members after the listed ones, under names that are none of the listed ones.
 *  - anyOf and oneOf are alternatives (oneOf's "exactly one" is not checked);
 *    allOf with one subschema is that subschema.
 *  - numbers are bounded in length so that generation always ends: at most
 *    15 integer digits, 15 fraction digits and 3 exponent digits.
 *  - a pattern must match the whole string (a search pattern's matches are a
 *    superset: the output still validates).
 *  - whitespace between tokens: up to max_whitespace bytes of [ \t\n\r]
 *    (0: none; -1: exactly json.dumps' ", " and ": ").
 * Keywords that change the language and are not supported are refused by
 * name; annotations (title, description, default, examples, ...) and
 * unknown keywords are ignored, as JSON Schema treats unknown keywords.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/error.h"
#include "core/json_util.h"
#include "grammar/gram_internal.h"

#define NUM_DIGITS 15
#define INT_LIMIT 999999999999999LL /* 15 digits: integer bounds past it are cut to it */

typedef struct jref {
    char *ref;
    int32_t rule;
} jref;

typedef struct js {
    gram_builder *b;
    json_t *root;
    int depth;
    int32_t ws;          /* whitespace element (when has_ws) */
    int has_ws;
    int compact;         /* ", " and ": " only */
    int32_t r_string, r_char, r_value, r_number, r_integer, r_any_object;
    jref *refs;
    int n_refs, cap_refs;
    int32_t *ref_ht; /* refs by name: index + 1, 0 empty */
    size_t ref_ht_cap;
} js;

static anvil_status schema(js *x, json_t *s, int32_t *elem);

/* ------------------------------------------------------------ small pieces */

static anvil_status new_rule(js *x, const char *name, int32_t *r)
{
    TRY(gb_rule_new(x->b, name, r));
    return gb_alt(x->b, *r);
}

static anvil_status lit(js *x, int32_t r, const char *s)
{
    return gb_lit(x->b, r, s, strlen(s));
}

static anvil_status ws(js *x, int32_t r)
{
    return x->has_ws ? gb_elem(x->b, r, x->ws) : ANVIL_OK;
}

/* A separator: ',' or ':' with the whitespace around it. */
static anvil_status sep(js *x, int32_t r, char c)
{
    if (x->compact) {
        char t[3] = {c, ' ', 0};
        return lit(x, r, t);
    }
    TRY(ws(x, r));
    TRY(gb_byte(x->b, r, (unsigned char)c));
    return ws(x, r);
}

/* An element from a regex (the formats, digits). */
static anvil_status rx(js *x, const char *re, int json, int32_t *e)
{
    return gram_regex_parse(x->b, re, strlen(re), json, e);
}

static anvil_status string_char(js *x, int32_t *e)
{
    if (x->r_char >= 0) {
        *e = GRAM_REF(x->r_char);
        return ANVIL_OK;
    }
    /* any character but '"', '\\' and controls, or an escape (no lone surrogate) */
    int32_t r, el;
    TRY(gb_rule_new(x->b, "string char", &r));
    gram_ranges rs = {0};
    anvil_status st = gram_ranges_add(&rs, 0x20, 0x21);
    if (st == ANVIL_OK)
        st = gram_ranges_add(&rs, 0x23, 0x5B);
    if (st == ANVIL_OK)
        st = gram_ranges_add(&rs, 0x5D, 0x10FFFF);
    if (st == ANVIL_OK)
        st = gb_utf8_ranges(x->b, &rs, &el);
    gram_ranges_free(&rs);
    TRY(st);
    TRY(gb_alt(x->b, r));
    TRY(gb_elem(x->b, r, el));
    TRY(rx(x, "\\\\([\"\\\\/bfnrt]|u([0-9a-cA-CeEfF][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))", 0, &el));
    TRY(gb_alt(x->b, r));
    TRY(gb_elem(x->b, r, el));
    x->r_char = r;
    *e = GRAM_REF(r);
    return ANVIL_OK;
}

static anvil_status plain_string(js *x, int32_t *e)
{
    if (x->r_string < 0) {
        int32_t r, c, rep;
        TRY(string_char(x, &c));
        TRY(gb_repeat(x->b, c, 0, -1, "string", &rep));
        TRY(new_rule(x, "string", &r));
        TRY(lit(x, r, "\""));
        TRY(gb_elem(x->b, r, rep));
        TRY(lit(x, r, "\""));
        x->r_string = r;
    }
    *e = GRAM_REF(x->r_string);
    return ANVIL_OK;
}

static anvil_status number(js *x, int nonneg, int32_t *e)
{
    if (!nonneg && x->r_number >= 0) {
        *e = GRAM_REF(x->r_number);
        return ANVIL_OK;
    }
    char re[160];
    snprintf(re, sizeof re, "%s(0|[1-9][0-9]{0,%d})(\\.[0-9]{1,%d})?([eE][+-]?[0-9]{1,3})?", nonneg ? "" : "-?",
             NUM_DIGITS - 1, NUM_DIGITS);
    TRY(rx(x, re, 0, e));
    if (!nonneg)
        x->r_number = GRAM_IS_REF(*e) ? GRAM_REF_RULE(*e) : -1;
    return ANVIL_OK;
}

/* ------------------------------------------------------------ any value */

static anvil_status any_value(js *x, int32_t *e);

/* "{" members "}" with each member's value v (a free-form object). */
static anvil_status free_object(js *x, int32_t v, int32_t *e)
{
    int32_t s, mem, more, rest, r;
    TRY(plain_string(x, &s));
    TRY(new_rule(x, "member", &mem));
    TRY(gb_elem(x->b, mem, s));
    TRY(sep(x, mem, ':'));
    TRY(gb_elem(x->b, mem, v));
    /* more ::= sep member more | "" */
    TRY(new_rule(x, "members", &more));
    TRY(sep(x, more, ','));
    TRY(gb_elem(x->b, more, GRAM_REF(mem)));
    TRY(gb_elem(x->b, more, GRAM_REF(more)));
    TRY(gb_alt(x->b, more));
    TRY(new_rule(x, "members", &rest));
    TRY(gb_elem(x->b, rest, GRAM_REF(mem)));
    TRY(gb_elem(x->b, rest, GRAM_REF(more)));
    TRY(gb_alt(x->b, rest));
    TRY(new_rule(x, "object", &r));
    TRY(lit(x, r, "{"));
    if (!x->compact)
        TRY(ws(x, r));
    TRY(gb_elem(x->b, r, GRAM_REF(rest)));
    if (!x->compact)
        TRY(ws(x, r));
    TRY(lit(x, r, "}"));
    *e = GRAM_REF(r);
    return ANVIL_OK;
}

static anvil_status free_array(js *x, int32_t v, int32_t *e)
{
    int32_t more, rest, r;
    TRY(new_rule(x, "items", &more));
    TRY(sep(x, more, ','));
    TRY(gb_elem(x->b, more, v));
    TRY(gb_elem(x->b, more, GRAM_REF(more)));
    TRY(gb_alt(x->b, more));
    TRY(new_rule(x, "items", &rest));
    TRY(gb_elem(x->b, rest, v));
    TRY(gb_elem(x->b, rest, GRAM_REF(more)));
    TRY(gb_alt(x->b, rest));
    TRY(new_rule(x, "array", &r));
    TRY(lit(x, r, "["));
    if (!x->compact)
        TRY(ws(x, r));
    TRY(gb_elem(x->b, r, GRAM_REF(rest)));
    if (!x->compact)
        TRY(ws(x, r));
    TRY(lit(x, r, "]"));
    *e = GRAM_REF(r);
    return ANVIL_OK;
}

static anvil_status any_value(js *x, int32_t *e)
{
    if (x->r_value >= 0) {
        *e = GRAM_REF(x->r_value);
        return ANVIL_OK;
    }
    int32_t r, el;
    TRY(gb_rule_new(x->b, "value", &r));
    x->r_value = r; /* recursive: objects and arrays hold values */
    TRY(free_object(x, GRAM_REF(r), &el));
    if (x->r_any_object < 0)
        x->r_any_object = GRAM_REF_RULE(el);
    TRY(gb_alt(x->b, r));
    TRY(gb_elem(x->b, r, el));
    TRY(free_array(x, GRAM_REF(r), &el));
    TRY(gb_alt(x->b, r));
    TRY(gb_elem(x->b, r, el));
    TRY(plain_string(x, &el));
    TRY(gb_alt(x->b, r));
    TRY(gb_elem(x->b, r, el));
    TRY(number(x, 0, &el));
    TRY(gb_alt(x->b, r));
    TRY(gb_elem(x->b, r, el));
    static const char *const lits[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        TRY(gb_alt(x->b, r));
        TRY(lit(x, r, lits[i]));
    }
    *e = GRAM_REF(r);
    return ANVIL_OK;
}

/* ------------------------------------------------------------ keywords */

static const char *const ignored_kw[] = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "$anchor", "deprecated",
    "readOnly", "writeOnly", "contentEncoding", "contentMediaType", "$defs", "definitions", "discriminator",
    "strict", "$vocabulary", "$dynamicAnchor", "example", NULL};

static const char *const refused_kw[] = {
    "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies", "patternProperties",
    "propertyNames", "unevaluatedProperties", "unevaluatedItems", "contains", "minContains", "maxContains",
    "multipleOf", "minProperties", "maxProperties", "additionalItems", "$dynamicRef", "$recursiveRef", "nullable",
    NULL};

static int in_list(const char *k, const char *const *l)
{
    for (; *l; l++)
        if (strcmp(k, *l) == 0)
            return 1;
    return 0;
}

static anvil_status check_keywords(json_t *s)
{
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v) {
        if (strcmp(k, "uniqueItems") == 0) {
            CHECK(!json_is_true(v), ANVIL_ERR_UNSUPPORTED, "JSON schema: keyword 'uniqueItems' is not supported");
            continue;
        }
        CHECK(!in_list(k, refused_kw), ANVIL_ERR_UNSUPPORTED, "JSON schema: keyword '%s' is not supported", k);
    }
    return ANVIL_OK;
}

/* 1 when s has keywords besides annotations and the ones in allow. */
static int has_other(json_t *s, const char *const *allow)
{
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v) {
        if (!in_list(k, ignored_kw) && !in_list(k, allow) && !in_list(k, refused_kw))
            return 1;
    }
    return 0;
}

static anvil_status get_count(json_t *s, const char *key, int64_t def, int64_t *out)
{
    json_t *v = json_object_get(s, key);
    *out = def;
    if (!v)
        return ANVIL_OK;
    CHECK(json_is_integer(v) && json_integer_value(v) >= 0, ANVIL_ERR_INVALID_ARG,
          "JSON schema: '%s' must be a non-negative integer", key);
    *out = json_integer_value(v);
    return ANVIL_OK;
}

/* ------------------------------------------------------------ $ref */

static anvil_status resolve(js *x, const char *ref, json_t **out)
{
    CHECK(ref[0] == '#', ANVIL_ERR_UNSUPPORTED, "JSON schema: $ref '%s': only references inside the schema (#...) are supported",
          ref);
    json_t *cur = x->root;
    const char *p = ref + 1;
    while (*p) {
        CHECK(*p == '/', ANVIL_ERR_UNSUPPORTED, "JSON schema: $ref '%s' is not a JSON pointer", ref);
        p++;
        char tok[256];
        size_t n = 0;
        while (*p && *p != '/') {
            char c = *p++;
            if (c == '~' && (*p == '0' || *p == '1'))
                c = *p++ == '0' ? '~' : '/';
            CHECK(n < sizeof tok - 1, ANVIL_ERR_INVALID_ARG, "JSON schema: $ref '%s' too long", ref);
            tok[n++] = c;
        }
        tok[n] = 0;
        if (json_is_object(cur)) {
            cur = json_object_get(cur, tok);
        } else if (json_is_array(cur)) {
            char *end;
            long i = strtol(tok, &end, 10);
            cur = *end == 0 && n > 0 ? json_array_get(cur, (size_t)i) : NULL;
        } else {
            cur = NULL;
        }
        CHECK(cur, ANVIL_ERR_INVALID_ARG, "JSON schema: $ref '%s' points to nothing", ref);
    }
    *out = cur;
    return ANVIL_OK;
}

static uint64_t str_hash(const char *p)
{
    uint64_t h = 1469598103934665603ull;
    for (; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    return h;
}

static anvil_status ref_index(js *x)
{
    size_t nc = x->ref_ht_cap ? x->ref_ht_cap * 2 : 64;
    int32_t *t = calloc(nc, sizeof *t);
    CHECK(t, ANVIL_ERR_OOM, "out of memory");
    for (int i = 0; i < x->n_refs; i++) {
        size_t j = str_hash(x->refs[i].ref) & (nc - 1);
        while (t[j])
            j = (j + 1) & (nc - 1);
        t[j] = i + 1;
    }
    free(x->ref_ht);
    x->ref_ht = t;
    x->ref_ht_cap = nc;
    return ANVIL_OK;
}

static anvil_status ref_elem(js *x, const char *ref, int32_t *e)
{
    if (x->ref_ht_cap)
        for (size_t j = str_hash(ref) & (x->ref_ht_cap - 1); x->ref_ht[j]; j = (j + 1) & (x->ref_ht_cap - 1))
            if (strcmp(x->refs[x->ref_ht[j] - 1].ref, ref) == 0) {
                *e = GRAM_REF(x->refs[x->ref_ht[j] - 1].rule);
                return ANVIL_OK;
            }
    json_t *target;
    TRY(resolve(x, ref, &target));
    if (x->n_refs == x->cap_refs) {
        int c = x->cap_refs ? x->cap_refs * 2 : 8;
        void *q = realloc(x->refs, (size_t)c * sizeof *x->refs);
        CHECK(q, ANVIL_ERR_OOM, "out of memory");
        x->refs = q;
        x->cap_refs = c;
    }
    int32_t r;
    TRY(gb_rule_new(x->b, ref, &r));
    x->refs[x->n_refs].ref = strdup(ref);
    CHECK(x->refs[x->n_refs].ref, ANVIL_ERR_OOM, "out of memory");
    x->refs[x->n_refs].rule = r;
    x->n_refs++;
    if ((size_t)x->n_refs * 2 > x->ref_ht_cap) {
        TRY(ref_index(x)); /* doubles: amortized */
    } else {
        size_t j = str_hash(ref) & (x->ref_ht_cap - 1);
        while (x->ref_ht[j])
            j = (j + 1) & (x->ref_ht_cap - 1);
        x->ref_ht[j] = x->n_refs;
    }
    /* the rule exists before its body: a recursive $ref finds it */
    int32_t body;
    TRY(schema(x, target, &body));
    TRY(gb_alt(x->b, r));
    TRY(gb_elem(x->b, r, body));
    *e = GRAM_REF(r);
    return ANVIL_OK;
}

/* ------------------------------------------------------------ types */

static anvil_status json_text_set(js *x, json_t **vals, int n, int32_t *e)
{
    char **txt = calloc((size_t)n + 1, sizeof *txt);
    size_t *lens = calloc((size_t)n + 1, sizeof *lens);
    anvil_status st = ANVIL_OK;
    CHECK_GOTO(txt && lens, ANVIL_ERR_OOM, done, "out of memory");
    for (int i = 0; i < n; i++) {
        txt[i] = json_dumps(vals[i], JSON_ENCODE_ANY | JSON_COMPACT);
        CHECK_GOTO(txt[i], ANVIL_ERR_OOM, done, "out of memory");
        if (x->compact) {
            /* json.dumps' spacing: the compact text's separators get their space */
            json_t *v = vals[i];
            if (json_is_object(v) || json_is_array(v)) {
                free(txt[i]);
                txt[i] = json_dumps(v, JSON_ENCODE_ANY | JSON_INDENT(0));
                CHECK_GOTO(txt[i], ANVIL_ERR_OOM, done, "out of memory");
                /* JSON_INDENT(0) puts newlines; turn ",\n" into ", " and drop other newlines */
                char *w = txt[i];
                for (char *r = txt[i]; *r; r++)
                    if (*r == '\n') {
                        if (w > txt[i] && (w[-1] == ',' || w[-1] == ':'))
                            *w++ = ' ';
                    } else {
                        *w++ = *r;
                    }
                *w = 0;
            }
        }
        lens[i] = strlen(txt[i]);
    }
    int32_t r;
    TRY_GOTO(gb_literals(x->b, (const char *const *)txt, lens, n, &r), done);
    *e = GRAM_REF(r);
done:
    if (txt)
        for (int i = 0; i < n; i++)
            free(txt[i]);
    free(txt);
    free(lens);
    return st;
}

static anvil_status string_type(js *x, json_t *s, int32_t *e)
{
    json_t *pat = json_object_get(s, "pattern");
    json_t *fmt = json_object_get(s, "format");
    int64_t minl, maxl;
    TRY(get_count(s, "minLength", 0, &minl));
    TRY(get_count(s, "maxLength", -1, &maxl));
    int has_len = json_object_get(s, "minLength") || json_object_get(s, "maxLength");
    const char *re = NULL;
    if (pat) {
        CHECK(json_is_string(pat), ANVIL_ERR_INVALID_ARG, "JSON schema: 'pattern' must be a string");
        re = json_string_value(pat);
    } else if (json_is_string(fmt)) {
        const char *f = json_string_value(fmt);
        static const char *const formats[][2] = {
            {"date", "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"},
            {"time", "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"},
            {"date-time", "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
                          "(\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"},
            {"uuid", "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"},
            {"email", "[a-zA-Z0-9._%+-]{1,64}@[a-zA-Z0-9-]{1,63}(\\.[a-zA-Z0-9-]{1,63}){0,8}\\.[a-zA-Z]{2,24}"},
            {"ipv4", "((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"},
        };
        for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
            if (strcmp(f, formats[i][0]) == 0)
                re = formats[i][1];
        /* another format is an annotation (2020-12's default): any string */
    }
    int32_t r, body;
    if (re) {
        CHECK(!has_len, ANVIL_ERR_UNSUPPORTED,
              "JSON schema: 'minLength'/'maxLength' together with 'pattern' or 'format' is not supported");
        TRY(gram_regex_parse(x->b, re, strlen(re), 1, &body));
    } else if (has_len) {
        CHECK(maxl < 0 || maxl >= minl, ANVIL_ERR_INVALID_ARG, "JSON schema: maxLength is smaller than minLength");
        int32_t c;
        TRY(string_char(x, &c));
        TRY(gb_repeat(x->b, c, (int)(minl > INT32_MAX ? INT32_MAX : minl),
                      (int)(maxl > INT32_MAX ? INT32_MAX : maxl), "JSON schema string length", &body));
    } else {
        return plain_string(x, e);
    }
    TRY(new_rule(x, "string", &r));
    TRY(lit(x, r, "\""));
    TRY(gb_elem(x->b, r, body));
    TRY(lit(x, r, "\""));
    *e = GRAM_REF(r);
    return ANVIL_OK;
}

/* Non-negative integers [a, b] as digit patterns, added as alternatives of r. */
static anvil_status uint_range(js *x, int32_t r, const char *sign, long long a, long long b)
{
    if (a > b)
        return ANVIL_OK;
    if (a == 0) {
        TRY(gb_alt(x->b, r));
        TRY(lit(x, r, sign));
        TRY(lit(x, r, "0"));
        a = 1;
    }
    while (a <= b) {
        /* the largest block [a, a + m * 10^k) that is a prefix, one digit range and k free digits */
        long long p = 1;
        int k = 0;
        while (a % (p * 10) == 0 && a + p * 10 - 1 <= b) {
            p *= 10;
            k++;
        }
        long long d = (a / p) % 10;
        long long m = (b - a + 1) / p;
        if (m > 10 - d)
            m = 10 - d;
        char head[32];
        snprintf(head, sizeof head, "%lld", a / p);
        size_t hl = strlen(head);
        TRY(gb_alt(x->b, r));
        TRY(lit(x, r, sign));
        TRY(gb_lit(x->b, r, head, hl - 1));
        uint32_t set[8] = {0};
        for (long long c = d; c < d + m; c++)
            gram_class_add(set, (unsigned)('0' + c));
        int32_t el;
        TRY(gb_class(x->b, set, &el));
        TRY(gb_elem(x->b, r, el));
        if (k > 0) {
            uint32_t digits[8] = {0};
            for (unsigned c = '0'; c <= '9'; c++)
                gram_class_add(digits, c);
            TRY(gb_class(x->b, digits, &el));
            for (int i = 0; i < k; i++)
                TRY(gb_elem(x->b, r, el));
        }
        a += m * p;
    }
    return ANVIL_OK;
}

static anvil_status bound(json_t *s, const char *key, int *has, double *v)
{
    json_t *j = json_object_get(s, key);
    *has = j != NULL;
    if (!j)
        return ANVIL_OK;
    CHECK(json_is_number(j), ANVIL_ERR_INVALID_ARG, "JSON schema: '%s' must be a number", key);
    *v = json_number_value(j);
    return ANVIL_OK;
}

static anvil_status integer_type(js *x, json_t *s, int32_t *e)
{
    int hmin, hmax, hxmin, hxmax;
    double vmin = 0, vmax = 0, vxmin = 0, vxmax = 0;
    TRY(bound(s, "minimum", &hmin, &vmin));
    TRY(bound(s, "maximum", &hmax, &vmax));
    TRY(bound(s, "exclusiveMinimum", &hxmin, &vxmin));
    TRY(bound(s, "exclusiveMaximum", &hxmax, &vxmax));
    if (!hmin && !hmax && !hxmin && !hxmax) {
        if (x->r_integer < 0) {
            int32_t el;
            char re[64];
            snprintf(re, sizeof re, "-?(0|[1-9][0-9]{0,%d})", NUM_DIGITS - 1);
            TRY(rx(x, re, 0, &el));
            x->r_integer = GRAM_REF_RULE(el);
        }
        *e = GRAM_REF(x->r_integer);
        return ANVIL_OK;
    }
    double lo = -(double)INT_LIMIT, hi = (double)INT_LIMIT;
    if (hmin && vmin > lo)
        lo = vmin;
    if (hxmin && vxmin >= lo)
        lo = vxmin + (vxmin == (double)(long long)vxmin ? 1 : 0);
    if (hmax && vmax < hi)
        hi = vmax;
    if (hxmax && vxmax <= hi)
        hi = vxmax - (vxmax == (double)(long long)vxmax ? 1 : 0);
    /* integers inside [lo, hi] */
    long long a = lo < -(double)INT_LIMIT ? -INT_LIMIT : (long long)(lo >= 0 ? lo + 0.999999999 : lo);
    if ((double)a < lo)
        a++;
    long long b = hi > (double)INT_LIMIT ? INT_LIMIT : (long long)hi;
    if ((double)b > hi)
        b--;
    CHECK(a <= b, ANVIL_ERR_INVALID_ARG, "JSON schema: no integer lies between the minimum and the maximum");
    int32_t r;
    TRY(gb_rule_new(x->b, "integer range", &r));
    if (a < 0)
        TRY(uint_range(x, r, "-", b < 0 ? -b : 1, -a));
    if (b >= 0)
        TRY(uint_range(x, r, "", a > 0 ? a : 0, b));
    *e = GRAM_REF(r);
    return ANVIL_OK;
}

static anvil_status number_type(js *x, json_t *s, int32_t *e)
{
    int hmin, hmax, hxmin, hxmax;
    double vmin = 0, vmax = 0, vx = 0;
    TRY(bound(s, "minimum", &hmin, &vmin));
    TRY(bound(s, "maximum", &hmax, &vmax));
    TRY(bound(s, "exclusiveMinimum", &hxmin, &vx));
    TRY(bound(s, "exclusiveMaximum", &hxmax, &vx));
    CHECK(!hmax && !hxmin && !hxmax && (!hmin || vmin == 0), ANVIL_ERR_UNSUPPORTED,
          "JSON schema: bounds on a number are supported only as \"minimum\": 0 (use an integer type for others)");
    return number(x, hmin, e);
}

static anvil_status boolean_type(js *x, int32_t *e)
{
    int32_t r;
    TRY(new_rule(x, "boolean", &r));
    TRY(lit(x, r, "true"));
    TRY(gb_alt(x->b, r));
    TRY(lit(x, r, "false"));
    *e = GRAM_REF(r);
    return ANVIL_OK;
}

static anvil_status array_type(js *x, json_t *s, int32_t *e)
{
    json_t *items = json_object_get(s, "items");
    json_t *prefix = json_object_get(s, "prefixItems");
    CHECK(!items || json_is_object(items) || json_is_boolean(items), ANVIL_ERR_UNSUPPORTED,
          "JSON schema: 'items' must be a schema (use 'prefixItems' for tuples)");
    CHECK(!prefix || json_is_array(prefix), ANVIL_ERR_INVALID_ARG, "JSON schema: 'prefixItems' must be an array");
    int64_t minn, maxn;
    TRY(get_count(s, "minItems", 0, &minn));
    TRY(get_count(s, "maxItems", -1, &maxn));
    int64_t k = prefix ? (int64_t)json_array_size(prefix) : 0;
    int more = !json_is_false(items);
    if (!more && (maxn < 0 || maxn > k))
        maxn = k;
    CHECK(maxn < 0 || maxn >= minn, ANVIL_ERR_INVALID_ARG,
          "JSON schema: the array can hold no number of items between minItems and maxItems");
    int64_t limit = x->b->o.max_repeat;
    CHECK(minn <= limit && maxn <= limit && k <= limit, ANVIL_ERR_INVALID_ARG,
          "JSON schema: array bound %lld is over the limit of %lld (max_repeat)",
          (long long)(maxn > minn ? maxn : minn > k ? minn : k), (long long)limit);
    int32_t item = 0;
    if (more)
        TRY(items && json_is_object(items) ? schema(x, items, &item) : any_value(x, &item));
    /* rest(i): the items from index i on, i already written; built from the end */
    int64_t last = maxn >= 0 ? maxn : (minn > k ? minn : k); /* from here on the tail is uniform */
    int32_t tail = -1, tail0 = -1;                           /* rest(last) for i >= 1, and for i == 0 */
    if (maxn < 0) {
        /* loop ::= sep item loop | "" */
        TRY(new_rule(x, "items", &tail));
        TRY(sep(x, tail, ','));
        TRY(gb_elem(x->b, tail, item));
        TRY(gb_elem(x->b, tail, GRAM_REF(tail)));
        TRY(gb_alt(x->b, tail));
        if (last == 0) {
            TRY(new_rule(x, "items", &tail0));
            TRY(gb_elem(x->b, tail0, item));
            TRY(gb_elem(x->b, tail0, GRAM_REF(tail)));
            TRY(gb_alt(x->b, tail0));
        }
    } else {
        TRY(new_rule(x, "end", &tail)); /* nothing more */
        tail0 = tail;
    }
    int32_t next = last == 0 ? tail0 : tail;
    for (int64_t i = last - 1; i >= 0; i--) {
        int32_t it = item;
        if (i < k)
            TRY(schema(x, json_array_get(prefix, (size_t)i), &it));
        int32_t r;
        TRY(new_rule(x, "items", &r));
        if (i > 0)
            TRY(sep(x, r, ','));
        TRY(gb_elem(x->b, r, it));
        TRY(gb_elem(x->b, r, GRAM_REF(next)));
        if (i >= minn)
            TRY(gb_alt(x->b, r)); /* may stop here */
        next = r;
    }
    int32_t r;
    TRY(new_rule(x, "array", &r));
    TRY(lit(x, r, "["));
    if (!x->compact)
        TRY(ws(x, r));
    TRY(gb_elem(x->b, r, GRAM_REF(next)));
    if (!x->compact)
        TRY(ws(x, r));
    TRY(lit(x, r, "]"));
    *e = GRAM_REF(r);
    return ANVIL_OK;
}

/* ------------------------------------------------------------ additional members */

#define NAME_MAX_LEN 1024

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A raw (unescaped) string character not in the byte set `not`. */
static anvil_status raw_char(js *x, const uint32_t *not, int32_t *e)
{
    gram_ranges rs = {0};
    anvil_status st = ANVIL_OK;
    uint32_t lo = 0x20;
    for (uint32_t c = 0x20; c < 0x80 && st == ANVIL_OK; c++)
        if (c == '"' || c == '\\' || (not && gram_class_has(not, c))) {
            st = gram_ranges_add(&rs, lo, c - 1);
            lo = c + 1;
        }
    if (st == ANVIL_OK)
        st = gram_ranges_add(&rs, lo, 0x10FFFF);
    if (st == ANVIL_OK)
        st = gb_utf8_ranges(x->b, &rs, e);
    gram_ranges_free(&rs);
    return st;
}

/* The keys that extend names[lo..hi) (sorted, sharing their first depth
 * bytes) without being one of them: a trie whose every node may also turn
 * off into any other character. */
static anvil_status other_key_node(js *x, const char **names, size_t lo, size_t hi, size_t depth, int32_t any_rest,
                                   int32_t *rule)
{
    int32_t r;
    TRY(gb_rule_new(x->b, "additional key", &r));
    uint32_t kids[8] = {0};
    int is_name = 0;
    size_t i = lo;
    while (i < hi && names[i][depth] == 0) {
        is_name = 1;
        i++;
    }
    while (i < hi) {
        unsigned char c = (unsigned char)names[i][depth];
        size_t j = i + 1;
        while (j < hi && (unsigned char)names[j][depth] == c)
            j++;
        int32_t child;
        TRY(other_key_node(x, names, i, j, depth + 1, any_rest, &child));
        TRY(gb_alt(x->b, r));
        TRY(gb_byte(x->b, r, c));
        TRY(gb_elem(x->b, r, GRAM_REF(child)));
        gram_class_add(kids, c);
        i = j;
    }
    int32_t other;
    TRY(raw_char(x, kids, &other));
    TRY(gb_alt(x->b, r));
    TRY(gb_elem(x->b, r, other));
    TRY(gb_elem(x->b, r, any_rest));
    if (!is_name)
        TRY(gb_alt(x->b, r)); /* the key may end here */
    *rule = r;
    return ANVIL_OK;
}

/* "key": value for a key not among the n names (ASCII names only). */
static anvil_status additional_member(js *x, const char **names, size_t n, int32_t value, int32_t *e)
{
    for (size_t i = 0; i < n; i++) {
        CHECK(strlen(names[i]) <= NAME_MAX_LEN, ANVIL_ERR_UNSUPPORTED,
              "JSON schema: a property name over %d bytes next to 'additionalProperties'", NAME_MAX_LEN);
        for (const unsigned char *p = (const unsigned char *)names[i]; *p; p++)
            CHECK(*p >= 0x20 && *p < 0x7F && *p != '"' && *p != '\\', ANVIL_ERR_UNSUPPORTED,
                  "JSON schema: 'additionalProperties' as a schema next to 'properties' needs property names of "
                  "printable ASCII without quotes or backslashes ('%s')",
                  names[i]);
    }
    const char **sorted = malloc((n + 1) * sizeof *sorted);
    CHECK(sorted, ANVIL_ERR_OOM, "out of memory");
    memcpy(sorted, names, n * sizeof *names);
    qsort(sorted, n, sizeof *sorted, name_cmp);
    int32_t any = 0, rest = 0, key = 0, m;
    anvil_status st = raw_char(x, NULL, &any);
    if (st == ANVIL_OK)
        st = gb_repeat(x->b, any, 0, -1, "additional key", &rest);
    if (st == ANVIL_OK)
        st = other_key_node(x, sorted, 0, n, 0, rest, &key);
    free(sorted);
    TRY(st);
    TRY(new_rule(x, "additional member", &m));
    TRY(lit(x, m, "\""));
    TRY(gb_elem(x->b, m, GRAM_REF(key)));
    TRY(lit(x, m, "\""));
    TRY(sep(x, m, ':'));
    TRY(gb_elem(x->b, m, value));
    *e = GRAM_REF(m);
    return ANVIL_OK;
}

static anvil_status object_type(js *x, json_t *s, int32_t *e)
{
    json_t *props = json_object_get(s, "properties");
    json_t *req = json_object_get(s, "required");
    json_t *addl = json_object_get(s, "additionalProperties");
    CHECK(!props || json_is_object(props), ANVIL_ERR_INVALID_ARG, "JSON schema: 'properties' must be an object");
    CHECK(!req || json_is_array(req), ANVIL_ERR_INVALID_ARG, "JSON schema: 'required' must be an array");
    CHECK(!addl || json_is_boolean(addl) || json_is_object(addl), ANVIL_ERR_INVALID_ARG,
          "JSON schema: 'additionalProperties' must be a boolean or a schema");
    size_t n = props ? json_object_size(props) : 0;
    if (n == 0 && !json_is_false(addl)) {
        /* no listed properties: any members (of the additional schema) */
        int32_t v;
        TRY(json_is_object(addl) ? schema(x, addl, &v) : any_value(x, &v));
        CHECK(!req || json_array_size(req) == 0, ANVIL_ERR_UNSUPPORTED,
              "JSON schema: 'required' names a property that 'properties' does not define");
        return free_object(x, v, e);
    }
    for (size_t i = 0; req && i < json_array_size(req); i++) {
        json_t *name = json_array_get(req, i);
        CHECK(json_is_string(name), ANVIL_ERR_INVALID_ARG, "JSON schema: 'required' must list strings");
        CHECK(props && json_object_get(props, json_string_value(name)), ANVIL_ERR_UNSUPPORTED,
              "JSON schema: required property '%s' is not in 'properties'", json_string_value(name));
    }
    /* the members in order; state (i, first): properties i.. to go, first: nothing written yet */
    const char **keys = calloc(n + 1, sizeof *keys);
    int32_t *memb = calloc(n + 1, sizeof *memb), *reqd = calloc(n + 1, sizeof *reqd);
    int32_t *st_first = calloc(n + 2, sizeof *st_first), *st_more = calloc(n + 2, sizeof *st_more);
    anvil_status st = ANVIL_OK;
    CHECK_GOTO(keys && memb && reqd && st_first && st_more, ANVIL_ERR_OOM, done, "out of memory");
    size_t i = 0;
    const char *k;
    json_t *sub;
    json_object_foreach(props, k, sub) {
        keys[i] = k;
        for (size_t j = 0; req && j < json_array_size(req); j++)
            if (strcmp(json_string_value(json_array_get(req, j)), k) == 0)
                reqd[i] = 1;
        /* member ::= "key" : value */
        int32_t v, m;
        TRY_GOTO(schema(x, sub, &v), done);
        TRY_GOTO(new_rule(x, k, &m), done);
        json_t *ks = json_string(k);
        CHECK_GOTO(ks, ANVIL_ERR_INVALID_ARG, done, "JSON schema: property name is not UTF-8");
        char *kt = json_dumps(ks, JSON_ENCODE_ANY);
        json_decref(ks);
        CHECK_GOTO(kt, ANVIL_ERR_OOM, done, "out of memory");
        st = lit(x, m, kt);
        free(kt);
        TRY_GOTO(st, done);
        TRY_GOTO(sep(x, m, ':'), done);
        TRY_GOTO(gb_elem(x->b, m, v), done);
        memb[i] = m;
        i++;
    }
    /* from the end: rest(n) is empty; rest(i, first) */
    if (json_is_object(addl)) {
        /* after the listed members, members of the additional schema under other names */
        int32_t v = 0, am = 0;
        TRY_GOTO(schema(x, addl, &v), done);
        TRY_GOTO(additional_member(x, keys, n, v, &am), done);
        TRY_GOTO(new_rule(x, "more members", &st_more[n]), done);
        TRY_GOTO(sep(x, st_more[n], ','), done);
        TRY_GOTO(gb_elem(x->b, st_more[n], am), done);
        TRY_GOTO(gb_elem(x->b, st_more[n], GRAM_REF(st_more[n])), done);
        TRY_GOTO(gb_alt(x->b, st_more[n]), done);
        TRY_GOTO(new_rule(x, "more members", &st_first[n]), done);
        TRY_GOTO(gb_elem(x->b, st_first[n], am), done);
        TRY_GOTO(gb_elem(x->b, st_first[n], GRAM_REF(st_more[n])), done);
        TRY_GOTO(gb_alt(x->b, st_first[n]), done);
    } else {
        TRY_GOTO(new_rule(x, "end", &st_first[n]), done);
        st_more[n] = st_first[n];
    }
    for (size_t j = n; j-- > 0;) {
        for (int first = 0; first <= 1; first++) {
            int32_t r;
            TRY_GOTO(new_rule(x, "members", &r), done);
            if (!first)
                TRY_GOTO(sep(x, r, ','), done);
            TRY_GOTO(gb_elem(x->b, r, GRAM_REF(memb[j])), done);
            TRY_GOTO(gb_elem(x->b, r, GRAM_REF(st_more[j + 1])), done);
            if (!reqd[j]) {
                TRY_GOTO(gb_alt(x->b, r), done);
                TRY_GOTO(gb_elem(x->b, r, GRAM_REF(first ? st_first[j + 1] : st_more[j + 1])), done);
            }
            if (first)
                st_first[j] = r;
            else
                st_more[j] = r;
        }
    }
    int32_t r;
    TRY_GOTO(new_rule(x, "object", &r), done);
    TRY_GOTO(lit(x, r, "{"), done);
    if (!x->compact)
        TRY_GOTO(ws(x, r), done);
    TRY_GOTO(gb_elem(x->b, r, GRAM_REF(st_first[0])), done);
    if (!x->compact)
        TRY_GOTO(ws(x, r), done);
    TRY_GOTO(lit(x, r, "}"), done);
    *e = GRAM_REF(r);
done:
    free(keys);
    free(memb);
    free(reqd);
    free(st_first);
    free(st_more);
    return st;
}

static anvil_status typed(js *x, json_t *s, const char *t, int32_t *e)
{
    if (strcmp(t, "string") == 0)
        return string_type(x, s, e);
    if (strcmp(t, "integer") == 0)
        return integer_type(x, s, e);
    if (strcmp(t, "number") == 0)
        return number_type(x, s, e);
    if (strcmp(t, "boolean") == 0)
        return boolean_type(x, e);
    if (strcmp(t, "null") == 0) {
        int32_t r;
        TRY(new_rule(x, "null", &r));
        TRY(lit(x, r, "null"));
        *e = GRAM_REF(r);
        return ANVIL_OK;
    }
    if (strcmp(t, "array") == 0)
        return array_type(x, s, e);
    if (strcmp(t, "object") == 0)
        return object_type(x, s, e);
    CHECK(0, ANVIL_ERR_INVALID_ARG, "JSON schema: unknown type '%s'", t);
}

/* The type a schema without "type" means, from its keywords; NULL: any value. */
static const char *implied_type(json_t *s)
{
    static const char *const obj[] = {"properties", "required", "additionalProperties", NULL};
    static const char *const arr[] = {"items", "prefixItems", "minItems", "maxItems", NULL};
    static const char *const str[] = {"pattern", "minLength", "maxLength", "format", NULL};
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v) {
        if (in_list(k, obj))
            return "object";
        if (in_list(k, arr))
            return "array";
        if (in_list(k, str))
            return "string";
    }
    return NULL;
}

static anvil_status schema_body(js *x, json_t *s, int32_t *e)
{
    if (json_is_true(s))
        return any_value(x, e);
    CHECK(!json_is_false(s), ANVIL_ERR_INVALID_ARG, "JSON schema: the schema false matches nothing");
    CHECK(json_is_object(s), ANVIL_ERR_INVALID_ARG, "JSON schema: a schema must be an object or a boolean, not %s",
          anvil_json_type_name(s));
    TRY(check_keywords(s));
    json_t *v;
    if ((v = json_object_get(s, "$ref"))) {
        static const char *const allow[] = {"$ref", NULL};
        CHECK(json_is_string(v), ANVIL_ERR_INVALID_ARG, "JSON schema: '$ref' must be a string");
        CHECK(!has_other(s, allow), ANVIL_ERR_UNSUPPORTED, "JSON schema: '$ref' next to other keywords is not supported");
        return ref_elem(x, json_string_value(v), e);
    }
    if ((v = json_object_get(s, "const")))
        return json_text_set(x, &v, 1, e);
    if ((v = json_object_get(s, "enum"))) {
        CHECK(json_is_array(v) && json_array_size(v) > 0, ANVIL_ERR_INVALID_ARG,
              "JSON schema: 'enum' must be a non-empty array");
        CHECK((int64_t)json_array_size(v) <= x->b->o.max_enum, ANVIL_ERR_INVALID_ARG,
              "JSON schema: enum of %zu values is over the limit of %d (max_enum)", json_array_size(v),
              x->b->o.max_enum);
        int n = (int)json_array_size(v);
        json_t **vals = malloc((size_t)n * sizeof *vals);
        CHECK(vals, ANVIL_ERR_OOM, "out of memory");
        for (int i = 0; i < n; i++)
            vals[i] = json_array_get(v, (size_t)i);
        anvil_status st = json_text_set(x, vals, n, e);
        free(vals);
        return st;
    }
    json_t *any = json_object_get(s, "anyOf");
    if (!any)
        any = json_object_get(s, "oneOf");
    json_t *all = json_object_get(s, "allOf");
    if (all) {
        CHECK(json_is_array(all) && json_array_size(all) == 1 && !any, ANVIL_ERR_UNSUPPORTED,
              "JSON schema: 'allOf' is supported with one subschema only");
        static const char *const allow[] = {"allOf", NULL};
        CHECK(!has_other(s, allow), ANVIL_ERR_UNSUPPORTED, "JSON schema: 'allOf' next to other keywords is not supported");
        return schema(x, json_array_get(all, 0), e);
    }
    if (any) {
        static const char *const allow[] = {"anyOf", "oneOf", NULL};
        CHECK(json_is_array(any) && json_array_size(any) > 0, ANVIL_ERR_INVALID_ARG,
              "JSON schema: 'anyOf'/'oneOf' must be a non-empty array");
        CHECK(!(json_object_get(s, "anyOf") && json_object_get(s, "oneOf")), ANVIL_ERR_UNSUPPORTED,
              "JSON schema: 'anyOf' and 'oneOf' together are not supported");
        CHECK(!has_other(s, allow), ANVIL_ERR_UNSUPPORTED,
              "JSON schema: 'anyOf'/'oneOf' next to other keywords is not supported");
        CHECK((int64_t)json_array_size(any) <= x->b->o.max_enum, ANVIL_ERR_INVALID_ARG,
              "JSON schema: more than %d alternatives (max_enum)", x->b->o.max_enum);
        int32_t r;
        TRY(gb_rule_new(x->b, "anyOf", &r));
        for (size_t i = 0; i < json_array_size(any); i++) {
            int32_t el;
            TRY(schema(x, json_array_get(any, i), &el));
            TRY(gb_alt(x->b, r));
            TRY(gb_elem(x->b, r, el));
        }
        *e = GRAM_REF(r);
        return ANVIL_OK;
    }
    json_t *type = json_object_get(s, "type");
    if (!type) {
        const char *t = implied_type(s);
        return t ? typed(x, s, t, e) : any_value(x, e);
    }
    if (json_is_string(type))
        return typed(x, s, json_string_value(type), e);
    CHECK(json_is_array(type) && json_array_size(type) > 0, ANVIL_ERR_INVALID_ARG,
          "JSON schema: 'type' must be a string or a non-empty array of strings");
    int32_t r;
    TRY(gb_rule_new(x->b, "types", &r));
    for (size_t i = 0; i < json_array_size(type); i++) {
        json_t *t = json_array_get(type, i);
        CHECK(json_is_string(t), ANVIL_ERR_INVALID_ARG, "JSON schema: 'type' must list strings");
        int32_t el;
        TRY(typed(x, s, json_string_value(t), &el));
        TRY(gb_alt(x->b, r));
        TRY(gb_elem(x->b, r, el));
    }
    *e = GRAM_REF(r);
    return ANVIL_OK;
}

static anvil_status schema(js *x, json_t *s, int32_t *e)
{
    CHECK(x->depth < x->b->o.max_schema_depth, ANVIL_ERR_INVALID_ARG,
          "JSON schema: nested deeper than %d levels (limit max_schema_depth)", x->b->o.max_schema_depth);
    x->depth++;
    anvil_status st = schema_body(x, s, e);
    x->depth--;
    return st;
}

/* ------------------------------------------------------------ entry points */

static anvil_status js_init(js *x, gram_builder *b)
{
    memset(x, 0, sizeof *x);
    x->b = b;
    x->r_string = x->r_char = x->r_value = x->r_number = x->r_integer = x->r_any_object = -1;
    x->compact = b->o.max_whitespace < 0;
    if (b->o.max_whitespace > 0) {
        uint32_t set[8] = {0};
        gram_class_add(set, ' ');
        gram_class_add(set, '\t');
        gram_class_add(set, '\n');
        gram_class_add(set, '\r');
        int32_t c;
        TRY(gb_class(b, set, &c));
        TRY(gb_repeat(b, c, 0, b->o.max_whitespace, "whitespace", &x->ws));
        x->has_ws = 1;
    }
    return ANVIL_OK;
}

static void js_free(js *x)
{
    for (int i = 0; i < x->n_refs; i++)
        free(x->refs[i].ref);
    free(x->refs);
    free(x->ref_ht);
}

anvil_status gram_json_schema(gram_builder *b, const char *text, size_t len, int32_t *root)
{
    json_error_t err;
    json_t *doc = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err);
    CHECK(doc, ANVIL_ERR_INVALID_ARG, "JSON schema: malformed JSON at line %d, column %d: %s", err.line, err.column,
          err.text);
    js x;
    anvil_status st = js_init(&x, b);
    x.root = doc;
    int32_t e = 0;
    if (st == ANVIL_OK)
        st = schema(&x, doc, &e);
    if (st == ANVIL_OK && (st = gb_rule_new(b, "root", root)) == ANVIL_OK && (st = gb_alt(b, *root)) == ANVIL_OK)
        st = gb_elem(b, *root, e);
    js_free(&x);
    json_decref(doc);
    return st;
}

anvil_status gram_json_any_object(gram_builder *b, int32_t *root)
{
    js x;
    TRY(js_init(&x, b));
    int32_t v, e;
    anvil_status st = any_value(&x, &v);
    if (st == ANVIL_OK)
        e = GRAM_REF(x.r_any_object);
    if (st == ANVIL_OK && (st = gb_rule_new(b, "root", root)) == ANVIL_OK && (st = gb_alt(b, *root)) == ANVIL_OK)
        st = gb_elem(b, *root, e);
    js_free(&x);
    return st;
}
