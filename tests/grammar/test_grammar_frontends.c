/*
 * Each front end against strings it must accept and strings it must refuse
 * (whole outputs and prefixes), over a vocabulary of single bytes.
 */
#include "gram_testkit.h"

typedef struct gcase {
    const char *in;
    int ok; /* 1: a complete output; 0: not one */
} gcase;

static void run_cases(const anvil_grammar *g, const gcase *c, int n, const char *what)
{
    for (int i = 0; i < n; i++) {
        int got = gt_accepts(g, c[i].in, strlen(c[i].in));
        if (got != c[i].ok)
            fail_msg("%s: \"%s\" %s but should %s", what, c[i].in, got ? "matches" : "does not match",
                     c[i].ok ? "match" : "not");
    }
}

static anvil_grammar *regex(anvil_grammar_vocab *v, const char *re)
{
    anvil_grammar *g;
    OK(anvil_grammar_compile_regex(v, re, strlen(re), NULL, &g));
    return g;
}

static void test_regex(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = gt_byte_vocab();
    static const struct {
        const char *re;
        gcase c[8];
    } T[] = {
        {"^[a-c]+x?$", {{"a", 1}, {"abcx", 1}, {"x", 0}, {"", 0}, {"abxx", 0}, {"cba", 1}}},
        {"(ab|cd){2,3}", {{"abcd", 1}, {"ab", 0}, {"abcdab", 1}, {"abcdabcd", 0}, {"cdcd", 1}}},
        {"\\d{3}-\\d{4}", {{"555-1234", 1}, {"55-1234", 0}, {"555-12345", 0}, {"abc-defg", 0}}},
        {"[^a-z]\\w*\\s?", {{"A", 1}, {"a", 0}, {"9_x ", 1}, {"\xc3\xa9", 1}, {"Zz  ", 0}}},
        {"caf\xc3\xa9|na\\u00efve", {{"caf\xc3\xa9", 1}, {"na\xc3\xafve", 1}, {"cafe", 0}}},
        {"[\\u0400-\\u04FF]{2}", {{"\xd0\x9f\xd1\x80", 1}, {"\xd0\x9f", 0}, {"ab", 0}}},
        {"a.c", {{"abc", 1}, {"a\xe2\x9c\x93" "c", 1}, {"a\nc", 0}, {"ac", 0}}},
        {"(a*)*b", {{"b", 1}, {"aaab", 1}, {"aa", 0}}},
        {"x{0}y{2,}", {{"yy", 1}, {"yyyy", 1}, {"xyy", 0}, {"y", 0}}},
        {"a{,2}b{c", {{"b{c", 1}, {"aab{c", 1}, {"aaab{c", 0}}},
        {"(?:a|b)(?P<n>c)\\.", {{"ac.", 1}, {"bc.", 1}, {"acx", 0}}},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        anvil_grammar *g = regex(v, T[i].re);
        int n = 0;
        while (n < 8 && T[i].c[n].in)
            n++;
        run_cases(g, T[i].c, n, T[i].re);
        anvil_grammar_free(g);
    }
    /* a partial character is a prefix, not an output */
    anvil_grammar *g = regex(v, "\xc3\xa9+");
    assert_true(gt_prefix(g, "\xc3", 1));
    assert_false(gt_accepts(g, "\xc3", 1));
    assert_false(gt_prefix(g, "\xc3\xc3", 2));
    anvil_grammar_free(g);
    anvil_grammar_vocab_free(v);
}

static void test_regex_refused(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = gt_byte_vocab();
    static const struct {
        const char *re, *msg;
    } T[] = {
        {"(a)\\1", "backreference"}, {"a(?=b)", "lookahead"}, {"(?<=a)b", "lookbehind"}, {"\\bword", "assertion"},
        {"(?i)abc", "not supported"}, {"a{2,1}", "bounds"},  {"(ab", "missing )"},     {"ab)", "unbalanced"},
        {"[a-", "unterminated"},      {"*a", "nothing to repeat"}, {"a{1,100000}", "max_repeat"},
        {"\\p{L}", "Unicode properties"}, {"a$b", "anchors"}, {"[z-a]", "out of order"},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        anvil_grammar *g = (anvil_grammar *)1;
        anvil_status st = anvil_grammar_compile_regex(v, T[i].re, strlen(T[i].re), NULL, &g);
        assert_null(g);
        assert_int_not_equal(st, ANVIL_OK);
        if (!strstr(anvil_last_error(), T[i].msg))
            fail_msg("%s: message \"%s\" does not say \"%s\"", T[i].re, anvil_last_error(), T[i].msg);
    }
    anvil_grammar_vocab_free(v);
}

static void test_ebnf(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = gt_byte_vocab();
    const char *text = "# arithmetic, right-recursive and with repetition\n"
                       "root ::= expr\n"
                       "expr ::= term (ws [-+] ws term)*\n"
                       "term ::= factor (ws [*/] ws factor)*\n"
                       "factor ::= num | \"(\" ws expr ws \")\"\n"
                       "num ::= \"-\"? [0-9]{1,3}\n"
                       "ws ::= \" \"?\n";
    anvil_grammar *g;
    OK(anvil_grammar_compile_ebnf(v, text, strlen(text), NULL, NULL, &g));
    static const gcase c[] = {{"1", 1},       {"1 + 2*3", 1},  {"(1+2) * -3", 1}, {"((7))", 1},
                              {"1 +", 0},     {"1  + 2", 0},   {"1234", 0},      {"(1", 0},
                              {"-", 0},       {"2/(3-4)", 1},  {"", 0}};
    run_cases(g, c, (int)(sizeof c / sizeof c[0]), "arithmetic");
    anvil_grammar_free(g);

    /* a named root, literals with escapes, '.', a class with escapes, a rule used before its definition */
    const char *g2 = "start ::= greet \"\\n\" rest\nrest ::= . [\\x41-\\x43\\]]\ngreet ::= \"hi\\t\\\"\" | \"\\u00e9\"";
    OK(anvil_grammar_compile_ebnf(v, g2, strlen(g2), "start", NULL, &g));
    static const gcase c2[] = {{"hi\t\"\nxA", 1}, {"\xc3\xa9\n\xe2\x9c\x93]", 1}, {"hi\t\"\nx", 0}, {"hi\nxA", 0}};
    run_cases(g, c2, 4, "escapes");
    anvil_grammar_free(g);
    anvil_grammar_vocab_free(v);
}

static void test_ebnf_refused(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = gt_byte_vocab();
    static const struct {
        const char *g, *msg;
    } T[] = {
        {"root ::= root \"a\" | \"b\"", "left recursion"},
        {"root ::= a\na ::= b \"x\"\nb ::= c? a\nc ::= \"c\"", "left recursion"},
        {"root ::= foo", "never defined"},
        {"rot ::= \"a\"", "no rule named 'root'"},
        {"root ::= \"a\"\nroot ::= \"b\"", "defined twice"},
        {"root ::= \"a", "unterminated"},
        {"root ::= (\"a\"", "missing )"},
        {"root ::= \"a\"{3,2}", "bounds"},
        {"root ::= \"a\"{99999}", "max_repeat"},
        {"root ::= [b-a]", "out of order"},
        {"::= \"a\"", "expected `name ::=`"},
        {"", "no rules"},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        anvil_grammar *g = (anvil_grammar *)1;
        anvil_status st = anvil_grammar_compile_ebnf(v, T[i].g, strlen(T[i].g), NULL, NULL, &g);
        assert_null(g);
        assert_int_not_equal(st, ANVIL_OK);
        if (!strstr(anvil_last_error(), T[i].msg))
            fail_msg("%s: message \"%s\" does not say \"%s\"", T[i].g, anvil_last_error(), T[i].msg);
    }
    /* tail recursion and nullable loops are fine */
    const char *ok = "root ::= item*\nitem ::= \"a\"? \"b\"?\n";
    anvil_grammar *g;
    OK(anvil_grammar_compile_ebnf(v, ok, strlen(ok), NULL, NULL, &g));
    assert_true(gt_accepts(g, "abba", 4));
    assert_true(gt_accepts(g, "", 0));
    anvil_grammar_free(g);
    anvil_grammar_vocab_free(v);
}

static void test_choice(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = gt_byte_vocab();
    const char *ch[] = {"yes", "no", "maybe", "noway", "no"};
    size_t l[] = {3, 2, 5, 5, 2};
    anvil_grammar *g;
    OK(anvil_grammar_compile_choice(v, ch, l, 5, NULL, &g));
    static const gcase c[] = {{"yes", 1}, {"no", 1}, {"noway", 1}, {"maybe", 1}, {"now", 0}, {"", 0}, {"yess", 0}};
    run_cases(g, c, 7, "choice");
    anvil_grammar_free(g);
    anvil_grammar_vocab_free(v);
}

static anvil_grammar *schema(anvil_grammar_vocab *v, const char *s, int ws)
{
    anvil_grammar_options o;
    anvil_grammar_options_default(&o);
    o.max_whitespace = ws;
    anvil_grammar *g;
    OK(anvil_grammar_compile_json_schema(v, s, strlen(s), &o, &g));
    return g;
}

static void test_json_schema(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = gt_byte_vocab();
    static const struct {
        const char *schema;
        int ws;
        gcase c[10];
    } T[] = {
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"string\"}},"
         "\"required\":[\"a\"]}",
         0,
         {{"{\"a\":1}", 1}, {"{\"a\":-12,\"b\":\"x\\\"y\"}", 1}, {"{\"b\":\"x\"}", 0}, {"{\"b\":\"x\",\"a\":1}", 0},
          {"{\"a\":01}", 0}, {"{\"a\":1,\"c\":2}", 0}, {"{\"a\": 1}", 0}, {"{\"a\":1,}", 0}}},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"boolean\"},\"b\":{\"type\":\"null\"}}}",
         2,
         {{"{}", 1}, {"{ \"b\" : null }", 1}, {"{\"a\":true,\n\"b\":null}", 1}, {"{\"a\":true,   \"b\":null}", 0},
          {"{,\"b\":null}", 0}}},
        {"{\"type\":\"array\",\"items\":{\"enum\":[\"x\",2,null,{\"k\":[1]}]},\"minItems\":1,\"maxItems\":3}",
         -1,
         {{"[\"x\"]", 1}, {"[2, null, {\"k\": [1]}]", 1}, {"[]", 0}, {"[2, 2, 2, 2]", 0}, {"[2,2]", 0},
          {"[\"y\"]", 0}}},
        {"{\"type\":\"array\",\"prefixItems\":[{\"type\":\"integer\",\"minimum\":-5,\"maximum\":120},"
         "{\"const\":\"k\"}],\"items\":false}",
         0,
         {{"[120,\"k\"]", 1}, {"[-5]", 1}, {"[]", 1}, {"[121]", 0}, {"[-6]", 0}, {"[7,\"k\",1]", 0}, {"[99,\"j\"]", 0},
          {"[0]", 1}, {"[-0]", 0}}},
        {"{\"type\":\"string\",\"pattern\":\"^[a-z\\\"]{2}\\\\d$\"}",
         0,
         {{"\"ab1\"", 1}, {"\"a\\\"3\"", 1}, {"\"a\"3\"", 0}, {"\"abc\"", 0}}},
        {"{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}",
         0,
         {{"\"ab\"", 1}, {"\"\xc3\xa9\\n\"", 1}, {"\"a\"", 0}, {"\"abcd\"", 0}, {"\"\\u00e9\\t\\\\\"", 1}}},
        {"{\"anyOf\":[{\"type\":\"number\",\"minimum\":0},{\"type\":[\"boolean\",\"null\"]}]}",
         0,
         {{"1.5e3", 1}, {"0", 1}, {"-1", 0}, {"true", 1}, {"null", 1}, {"1.", 0}, {"01", 0}}},
        {"{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},"
         "\"next\":{\"anyOf\":[{\"$ref\":\"#/$defs/node\"},{\"type\":\"null\"}]}},\"required\":[\"v\",\"next\"]}},"
         "\"$ref\":\"#/$defs/node\"}",
         0,
         {{"{\"v\":1,\"next\":null}", 1}, {"{\"v\":1,\"next\":{\"v\":2,\"next\":null}}", 1}, {"{\"v\":1}", 0}}},
        {"{\"type\":\"string\",\"format\":\"date\"}", 0, {{"\"2024-02-29\"", 1}, {"\"2024-13-01\"", 0}}},
        {"{\"type\":\"string\",\"format\":\"uuid\"}",
         0,
         {{"\"123e4567-e89b-12d3-a456-426614174000\"", 1}, {"\"123e4567e89b12d3a456426614174000\"", 0}}},
        {"{\"type\":\"integer\",\"exclusiveMinimum\":9,\"exclusiveMaximum\":1000}",
         0,
         {{"10", 1}, {"999", 1}, {"9", 0}, {"1000", 0}, {"500", 1}, {"0999", 0}}},
        {"{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}",
         0,
         {{"{}", 1}, {"{\"x\":1,\"y\":2}", 1}, {"{\"x\":\"1\"}", 0}}},
        {"{}", 0, {{"{\"a\":[1,{\"b\":null}],\"c\":\"d\"}", 1}, {"[true,false]", 1}, {"\"s\"", 1}, {"tru", 0}}},
        /* additional members after the listed ones, never under a listed name */
        {"{\"type\":\"object\",\"properties\":{\"ab\":{\"type\":\"integer\"},\"a\":{\"type\":\"null\"}},"
         "\"additionalProperties\":{\"type\":\"boolean\"}}",
         0,
         {{"{\"ab\":1,\"x\":true}", 1}, {"{\"abc\":false,\"b\":true}", 1}, {"{\"ab\":true}", 0},
          {"{\"a\":true}", 0}, {"{\"\":true,\"a\":null}", 0}, {"{\"a\":null,\"\":true}", 1},
          {"{\"aa\":true}", 1}, {"{}", 1}}},
        {"{\"title\":\"T\",\"description\":\"d\",\"type\":\"boolean\",\"default\":true,\"examples\":[true]}",
         0,
         {{"true", 1}, {"1", 0}}},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        anvil_grammar *g = schema(v, T[i].schema, T[i].ws);
        int n = 0;
        while (n < 10 && T[i].c[n].in)
            n++;
        run_cases(g, T[i].c, n, T[i].schema);
        anvil_grammar_free(g);
    }
    /* json_object: any object, nothing else */
    anvil_grammar *g;
    OK(anvil_grammar_compile_json_object(v, NULL, &g));
    const char *obj = "{\"a\": [1, 2.5e-3, \"\xe2\x9c\x93\"]}";
    assert_true(gt_accepts(g, obj, strlen(obj)));
    assert_false(gt_accepts(g, "[1]", 3));
    assert_false(gt_accepts(g, "\"x\"", 3));
    anvil_grammar_free(g);
    anvil_grammar_vocab_free(v);
}

static void test_json_schema_refused(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = gt_byte_vocab();
    static const struct {
        const char *s, *msg;
    } T[] = {
        {"{\"not\":{\"type\":\"string\"}}", "'not'"},
        {"{\"type\":\"object\",\"patternProperties\":{\"a\":{}}}", "'patternProperties'"},
        {"{\"type\":\"array\",\"uniqueItems\":true}", "'uniqueItems'"},
        {"{\"type\":\"number\",\"multipleOf\":2}", "'multipleOf'"},
        {"{\"type\":\"number\",\"maximum\":2.5}", "bounds on a number"},
        {"{\"type\":\"strin\"}", "unknown type 'strin'"},
        {"{\"$ref\":\"#/$defs/missing\"}", "points to nothing"},
        {"{\"$ref\":\"http://x/y.json\"}", "only references inside"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{}},\"required\":[\"b\"]}", "'b' is not in 'properties'"},
        {"{\"type\":\"array\",\"maxItems\":100000}", "max_repeat"},
        {"{\"type\":\"string\",\"pattern\":\"(a\"}", "missing )"},
        {"{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}", "no integer"},
        {"{\"allOf\":[{},{}]}", "'allOf'"},
        {"false", "matches nothing"},
        {"{\"type\":", "JSON schema"},
        {"{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/b\"},\"b\":{\"$ref\":\"#/$defs/a\"}},\"$ref\":\"#/$defs/a\"}",
         "matches nothing"},
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
        anvil_grammar *g = (anvil_grammar *)1;
        anvil_status st = anvil_grammar_compile_json_schema(v, T[i].s, strlen(T[i].s), NULL, &g);
        assert_null(g);
        assert_int_not_equal(st, ANVIL_OK);
        if (!strstr(anvil_last_error(), T[i].msg))
            fail_msg("%s: message \"%s\" does not say \"%s\"", T[i].s, anvil_last_error(), T[i].msg);
    }
    anvil_grammar_vocab_free(v);
}

/* The matcher's API: stop ids, done, copies, refusal leaves the state alone. */
static void test_matcher_api(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = gt_byte_vocab();
    anvil_grammar *g = regex(v, "ab?");
    anvil_grammar_matcher *m, *c;
    OK(anvil_grammar_matcher_create(g, &m));
    assert_false(anvil_grammar_matcher_can_end(m));
    assert_int_equal(anvil_grammar_matcher_accept_token(m, 256), ANVIL_ERR_INVALID_ARG); /* stop too early */
    assert_int_equal(anvil_grammar_matcher_accept_token(m, 'b'), ANVIL_ERR_INVALID_ARG);
    assert_non_null(strstr(anvil_last_error(), "does not fit"));
    OK(anvil_grammar_matcher_accept_token(m, 'a'));
    assert_true(anvil_grammar_matcher_can_end(m));
    assert_false(anvil_grammar_matcher_is_done(m));
    OK(anvil_grammar_matcher_copy(m, &c));
    OK(anvil_grammar_matcher_accept_token(m, 'b'));
    assert_true(anvil_grammar_matcher_is_done(m)); /* nothing can follow */
    uint32_t w[9];
    OK(anvil_grammar_matcher_fill_mask(m, w, 9));
    for (int i = 0; i < 257; i++)
        assert_int_equal(w[i >> 5] >> (i & 31) & 1, i == 256);
    /* the copy is still after "a" */
    OK(anvil_grammar_matcher_fill_mask(c, w, 9));
    for (int i = 0; i < 257; i++)
        assert_int_equal(w[i >> 5] >> (i & 31) & 1, i == 'b' || i == 256);
    OK(anvil_grammar_matcher_accept_token(c, 256));
    assert_true(anvil_grammar_matcher_is_done(c));
    assert_int_equal(anvil_grammar_matcher_accept_token(c, 'b'), ANVIL_ERR_INVALID_ARG);
    assert_int_equal(anvil_grammar_matcher_fill_mask(c, w, 8), ANVIL_ERR_INVALID_ARG); /* too small */
    anvil_grammar_matcher_free(c);
    anvil_grammar_matcher_free(m);
    anvil_grammar_matcher_free(NULL);
    anvil_grammar_free(g);
    anvil_grammar_free(NULL);
    anvil_grammar_vocab_free(v);
    anvil_grammar_vocab_free(NULL);
}

/* A long output with many distinct states (each count of a bounded
 * repetition is one) makes the matcher rebuild its DFA around its state
 * (past 1024 states): it goes on exactly. */
static void test_matcher_rebuild(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = gt_byte_vocab();
    anvil_grammar *g = regex(v, "(ab){0,1500}c");
    anvil_grammar_matcher *m;
    OK(anvil_grammar_matcher_create(g, &m));
    int rebuilt = 0;
    for (int i = 0; i < 1500; i++) {
        int32_t before = m->dfa.n_st;
        OK(anvil_grammar_matcher_accept_bytes(m, "ab", 2));
        rebuilt |= m->dfa.n_st < before;
        if (i == 1200) {
            uint32_t w[9];
            gt_check_mask(v, m, w);
        }
    }
    assert_true(rebuilt);
    assert_true(m->dfa.n_st <= 1024 + 1);
    assert_int_equal(anvil_grammar_matcher_accept_bytes(m, "a", 1), ANVIL_ERR_INVALID_ARG); /* 1500 is the most */
    assert_false(anvil_grammar_matcher_can_end(m));
    OK(anvil_grammar_matcher_accept_bytes(m, "c", 1));
    assert_true(anvil_grammar_matcher_can_end(m));
    assert_true(anvil_grammar_matcher_is_done(m));
    anvil_grammar_matcher_free(m);
    anvil_grammar_free(g);
    anvil_grammar_vocab_free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regex),        cmocka_unit_test(test_regex_refused),
        cmocka_unit_test(test_ebnf),         cmocka_unit_test(test_ebnf_refused),
        cmocka_unit_test(test_choice),       cmocka_unit_test(test_json_schema),
        cmocka_unit_test(test_json_schema_refused), cmocka_unit_test(test_matcher_api),
        cmocka_unit_test(test_matcher_rebuild),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
