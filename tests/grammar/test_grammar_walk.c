/*
 * Random walks (tokens drawn uniformly from the mask: temperature 1 over
 * flat logits) on tinycode's vocabulary: every JSON output that ended with a
 * stop token parses with jansson, and every regex output matches the same
 * expression under PCRE2 (anchored at both ends), an independent engine.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>

#include "gram_testkit.h"

static anvil_grammar_vocab *g_v;

static int setup(void **state)
{
    (void)state;
    g_v = gt_tok_vocab("models/tinycode", NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    anvil_grammar_vocab_free(g_v);
    return 0;
}

static void test_json_walks_parse(void **state)
{
    (void)state;
    static const char *const schemas[] = {
        "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\",\"items\":{\"type\":\"number\"},\"maxItems\":4},"
        "\"b\":{\"enum\":[\"x\",null,{\"y\":1}]},\"c\":{\"type\":\"string\",\"maxLength\":6}},\"required\":[\"a\"]}",
        "{\"$defs\":{\"t\":{\"type\":\"object\",\"properties\":{\"k\":{\"type\":\"array\",\"items\":{\"$ref\":"
        "\"#/$defs/t\"},\"maxItems\":2}}}},\"$ref\":\"#/$defs/t\"}",
        "{\"type\":\"array\",\"prefixItems\":[{\"type\":\"integer\",\"minimum\":-3,\"maximum\":3},{\"type\":\"string\","
        "\"format\":\"date\"}],\"items\":{\"type\":\"boolean\"},\"maxItems\":5}",
    };
    uint64_t rng = 99;
    int walks = ANVIL_TEST_SANITIZED ? 4 : 12, ended_n = 0;
    for (size_t i = 0; i < sizeof schemas / sizeof schemas[0]; i++) {
        anvil_grammar *g;
        OK(anvil_grammar_compile_json_schema(g_v, schemas[i], strlen(schemas[i]), NULL, &g));
        for (int w = 0; w < walks; w++) {
            char *out;
            size_t len;
            int ended = gt_walk(g, g_v, &rng, 600, &out, &len, 0);
            if (ended) {
                json_error_t err;
                json_t *j = json_loadb(out, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
                if (!j)
                    fail_msg("schema %zu: output does not parse (%s): %s", i, err.text, out);
                json_decref(j);
                ended_n++;
            }
            free(out);
        }
        anvil_grammar_free(g);
    }
    assert_true(ended_n >= walks * 2); /* the bounded schemas always end; most walks do */
}

static void test_regex_walks_match_pcre2(void **state)
{
    (void)state;
    static const char *const res[] = {
        "[A-Z]{2}-\\d{2,4}( \\(\\w{1,3}\\))?", "(foo|bar|foobar)+x", "[\xc3\x80-\xc3\xbf]{1,4}\\.",
        "\\s?(0|[1-9]\\d{0,3})(\\.\\d{1,2})?", "[^a-z]{3}", "(ab|a)(bc|c){1,3}",
    };
    uint64_t rng = 5;
    for (size_t i = 0; i < sizeof res / sizeof res[0]; i++) {
        anvil_grammar *g;
        OK(anvil_grammar_compile_regex(g_v, res[i], strlen(res[i]), NULL, &g));
        char anchored[256];
        snprintf(anchored, sizeof anchored, "^(?:%s)$", res[i]);
        int errc;
        PCRE2_SIZE erro;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)anchored, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &errc, &erro, NULL);
        assert_non_null(re);
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
        for (int w = 0; w < 10; w++) {
            char *out;
            size_t len;
            if (gt_walk(g, g_v, &rng, 200, &out, &len, 0)) {
                int rc = pcre2_match(re, (PCRE2_SPTR)out, len, 0, 0, md, NULL);
                if (rc < 0)
                    fail_msg("%s: output \"%s\" does not match under PCRE2", res[i], out);
            }
            free(out);
        }
        pcre2_match_data_free(md);
        pcre2_code_free(re);
        anvil_grammar_free(g);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_walks_parse),
        cmocka_unit_test(test_regex_walks_match_pcre2),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
