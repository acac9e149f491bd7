/*
 * Hostile schemas, expressions and grammars: each is refused with a message
 * that names the limit or the construct, before it has used much time or
 * memory (the limits are counted as the compile goes), or is accepted and
 * then matched in linear time (no backtracking to blow up).
 */
#include "gram_testkit.h"

/* s repeated n times around a middle: prefix^n mid suffix^n (malloc'd). */
static char *nest(const char *prefix, const char *mid, const char *suffix, int n)
{
    size_t lp = strlen(prefix), lm = strlen(mid), ls = strlen(suffix);
    char *s = malloc((lp + ls) * (size_t)n + lm + 1), *w = s;
    assert_non_null(s);
    for (int i = 0; i < n; i++, w += lp)
        memcpy(w, prefix, lp);
    memcpy(w, mid, lm);
    w += lm;
    for (int i = 0; i < n; i++, w += ls)
        memcpy(w, suffix, ls);
    *w = 0;
    return s;
}

/* head, then body n times, then tail (malloc'd). */
static char *rep(const char *head, const char *body, int n, const char *tail)
{
    char *a = nest("", head, body, n);
    size_t la = strlen(a), lt = strlen(tail);
    char *s = realloc(a, la + lt + 1);
    assert_non_null(s);
    memcpy(s + la, tail, lt + 1);
    return s;
}

typedef anvil_status (*compile_fn)(const anvil_grammar_vocab *v, const char *s, anvil_grammar **g);

static anvil_status c_schema(const anvil_grammar_vocab *v, const char *s, anvil_grammar **g)
{
    return anvil_grammar_compile_json_schema(v, s, strlen(s), NULL, g);
}
static anvil_status c_regex(const anvil_grammar_vocab *v, const char *s, anvil_grammar **g)
{
    return anvil_grammar_compile_regex(v, s, strlen(s), NULL, g);
}
static anvil_status c_ebnf(const anvil_grammar_vocab *v, const char *s, anvil_grammar **g)
{
    return anvil_grammar_compile_ebnf(v, s, strlen(s), NULL, NULL, g);
}

static void refused(const anvil_grammar_vocab *v, compile_fn f, char *s, const char *needle)
{
    anvil_grammar *g = (anvil_grammar *)1;
    anvil_status st = f(v, s, &g);
    assert_null(g);
    if (st == ANVIL_OK || !strstr(anvil_last_error(), needle))
        fail_msg("%.60s...: got \"%s\", want a refusal that says \"%s\"", s, st ? anvil_last_error() : "ok", needle);
    free(s);
}

static void test_hostile_schemas(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = gt_byte_vocab();
    /* nesting over max_schema_depth, and past what jansson parses */
    refused(v, c_schema, nest("{\"type\":\"array\",\"items\":", "{}", "}", 100), "max_schema_depth");
    refused(v, c_schema, nest("{\"items\":", "{}", "}", 5000), "JSON schema");
    /* a $ref chain as deep */
    {
        size_t cap = 200 * 64 + 64, n = 0;
        char *s = malloc(cap);
        n += (size_t)snprintf(s + n, cap - n, "{\"$ref\":\"#/$defs/d0\",\"$defs\":{");
        for (int i = 0; i < 200; i++)
            n += (size_t)snprintf(s + n, cap - n, "%s\"d%d\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/d%d\"}}",
                                  i ? "," : "", i, i + 1);
        snprintf(s + n, cap - n, ",\"d200\":{}}}");
        refused(v, c_schema, s, "max_schema_depth");
    }
    /* a huge enum */
    {
        size_t cap = 20000 * 8 + 32, n = 0;
        char *s = malloc(cap);
        n += (size_t)snprintf(s + n, cap - n, "{\"enum\":[");
        for (int i = 0; i < 20000; i++)
            n += (size_t)snprintf(s + n, cap - n, "%s%d", i ? "," : "", i);
        snprintf(s + n, cap - n, "]}");
        refused(v, c_schema, s, "max_enum");
    }
    /* input over max_input */
    refused(v, c_schema, nest("", "{\"description\":\"", "xxxxxxxx", 200000), "max_input");
    /* bounds over max_repeat */
    refused(v, c_schema, strdup("{\"type\":\"string\",\"maxLength\":1000000}"), "max_repeat");
    refused(v, c_schema, strdup("{\"type\":\"array\",\"minItems\":5000}"), "max_repeat");
    /* a schema whose elements add up past max_elements: many arrays of 4096 optional items */
    refused(v, c_schema, nest("{\"type\":\"array\",\"maxItems\":4000,\"items\":", "{}", "}", 40), "max_elements");
    anvil_grammar_vocab_free(v);
}

static void test_hostile_regexes(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = gt_byte_vocab();
    refused(v, c_regex, strdup("a{1,100000}"), "max_repeat");
    refused(v, c_regex, nest("(", "a", ")", 10000), "nested deeper");
    refused(v, c_regex, nest("(a{4000})", "", "", 400), "max_elements");
    refused(v, c_regex, strdup("(a)\\1"), "backreferences");
    refused(v, c_regex, strdup("(?=a)a"), "lookahead");

    /* the classic backtracking bombs compile and match in linear time */
    static const char *const bombs[] = {"(x+x+)+y", "(a|a)*b", "(a*)*b", "(a|aa)+$", "(.*a){12}"};
    char *xs = nest("", "", "x", 20000), *as = nest("", "", "a", 20000);
    for (size_t i = 0; i < sizeof bombs / sizeof bombs[0]; i++) {
        anvil_grammar *g;
        OK(anvil_grammar_compile_regex(v, bombs[i], strlen(bombs[i]), NULL, &g));
        const char *input = i == 0 ? xs : as;
        assert_true(gt_prefix(g, input, 20000) || i == 4);
        assert_false(gt_accepts(g, input, 20000) && i != 3 && i != 4);
        anvil_grammar_free(g);
    }
    free(xs);
    free(as);
    anvil_grammar_vocab_free(v);
}

static void test_hostile_grammars(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = gt_byte_vocab();
    refused(v, c_ebnf, strdup("root ::= expr\nexpr ::= expr \"+\" term | term\nterm ::= [0-9]"), "left recursion");
    refused(v, c_ebnf, strdup("root ::= a \"x\"\na ::= b\nb ::= \"\" root"), "left recursion");
    refused(v, c_ebnf, rep("root ::= \"a\"", " | \"a\"", 20000, ""), "max_enum");
    refused(v, c_ebnf, rep("root ::= ", "(", 1000, "\"a\""), "nested deeper");
    refused(v, c_ebnf, rep("root ::= ", "(\"a\"{4000})", 300, ""), "max_elements");
    /* as ambiguous as it gets: 3000 ways to read each "a" */
    refused(v, c_ebnf, rep("root ::= (\"a\"", " | \"a\"", 3000, ")*"), "ambiguous");
    /* nesting while matching stops at max_stack_depth: deeper output is never generated */
    anvil_grammar *g;
    OK(anvil_grammar_compile_json_object(v, NULL, &g));
    char *deep = nest("{\"a\":", "", "[", 1000);
    assert_true(gt_prefix(g, deep, 5 + 100));
    assert_false(gt_prefix(g, deep, strlen(deep)));
    free(deep);
    anvil_grammar_free(g);
    anvil_grammar_vocab_free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostile_schemas),
        cmocka_unit_test(test_hostile_regexes),
        cmocka_unit_test(test_hostile_grammars),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
