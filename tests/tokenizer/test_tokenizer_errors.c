/*
 * Error paths of tokenizer loading: malformed files are ANVIL_ERR_FORMAT,
 * components anvil does not implement are ANVIL_ERR_UNSUPPORTED with a
 * message that names them, *out stays NULL, and nothing leaks (the suite
 * runs under ASan). Also every truncation of a real tokenizer.json.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/tokenizer.h"
#include "testutil.h"

/* A valid small tokenizer; %s slots let each case swap one part. */
#define TEMPLATE                                                                                                     \
    "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null,"                                              \
    " \"added_tokens\": [{\"id\": 5, \"content\": \"<s>\", \"special\": true, \"normalized\": false,"             \
    " \"lstrip\": false, \"rstrip\": false, \"single_word\": false}],"                                             \
    " \"normalizer\": %s, \"pre_tokenizer\": %s, \"post_processor\": %s, \"decoder\": %s,"                       \
    " \"model\": {\"type\": \"%s\", \"dropout\": %s, \"unk_token\": null,"                                          \
    " \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"\\u0120\": 3, \"\\u0120ab\": 4}, \"merges\": %s}}"

typedef struct parts {
    const char *norm, *pre, *post, *dec, *type, *dropout, *merges;
} parts;

static const parts ok_parts = {"null", "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}",
                               "null", "{\"type\": \"ByteLevel\"}", "BPE", "null", "[\"a b\", \"\\u0120 ab\"]"};

static anvil_status load_parts(parts p, anvil_tokenizer **out)
{
    char json[4096];
    snprintf(json, sizeof json, TEMPLATE, p.norm, p.pre, p.post, p.dec, p.type, p.dropout, p.merges);
    return anvil_tokenizer_load_json(json, strlen(json), out);
}

static void expect_fail(parts p, anvil_status want, const char *needle)
{
    anvil_tokenizer *tok = (anvil_tokenizer *)&tok;
    anvil_status st = load_parts(p, &tok);
    assert_status_msg(st, want, needle);
    assert_null(tok);
}

static void test_template_is_valid(void **state)
{
    (void)state;
    anvil_tokenizer *tok;
    assert_int_equal(load_parts(ok_parts, &tok), ANVIL_OK);
    int32_t *ids;
    int64_t n;
    assert_int_equal(anvil_tokenizer_encode(tok, "ab <s> ab", 9, 1, &ids, &n), ANVIL_OK);
    /* "ab", "Ġ" (the space before <s>), <s>, "Ġab" */
    assert_int_equal(n, 4);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 3);
    assert_int_equal(ids[2], 5);
    assert_int_equal(ids[3], 4);
    free(ids);
    anvil_tokenizer_free(tok);
}

static void test_unsupported_components_are_named(void **state)
{
    (void)state;
    parts p = ok_parts;
    p.type = "Unigram";
    expect_fail(p, ANVIL_ERR_UNSUPPORTED, "Unigram");
    p = ok_parts;
    p.type = "WordPiece";
    expect_fail(p, ANVIL_ERR_UNSUPPORTED, "WordPiece");
    p = ok_parts;
    p.dropout = "0.1";
    expect_fail(p, ANVIL_ERR_UNSUPPORTED, "dropout");
    p = ok_parts;
    p.norm = "{\"type\": \"Precompiled\", \"precompiled_charsmap\": \"AAAA\"}";
    expect_fail(p, ANVIL_ERR_UNSUPPORTED, "Precompiled");
    p = ok_parts;
    p.norm = "{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFC\"}, {\"type\": \"Fancy\"}]}";
    expect_fail(p, ANVIL_ERR_UNSUPPORTED, "Fancy");
    p = ok_parts;
    p.pre = "{\"type\": \"UnicodeScripts\"}";
    expect_fail(p, ANVIL_ERR_UNSUPPORTED, "UnicodeScripts");
    p = ok_parts;
    p.pre = "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\bfoo\"}, \"behavior\": \"Isolated\", \"invert\": false}";
    expect_fail(p, ANVIL_ERR_UNSUPPORTED, "\\b");
    p = ok_parts;
    p.pre = "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\p{Greek}\"}, \"behavior\": \"Isolated\"}";
    expect_fail(p, ANVIL_ERR_UNSUPPORTED, "Greek");
    p = ok_parts;
    p.pre = "{\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, \"behavior\": \"Shuffled\"}";
    expect_fail(p, ANVIL_ERR_UNSUPPORTED, "Shuffled");
    p = ok_parts;
    p.dec = "{\"type\": \"CTC\", \"pad_token\": \"<pad>\"}";
    expect_fail(p, ANVIL_ERR_UNSUPPORTED, "CTC");
    p = ok_parts;
    p.post = "{\"type\": \"Magic\"}";
    expect_fail(p, ANVIL_ERR_UNSUPPORTED, "Magic");
    anvil_tokenizer *tok = (anvil_tokenizer *)&tok;
    const char *v2 = "{\"version\": \"2.0\", \"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}";
    assert_status_msg(anvil_tokenizer_load_json(v2, strlen(v2), &tok), ANVIL_ERR_UNSUPPORTED, "2.0");
    assert_null(tok);
}

static void test_malformed_files(void **state)
{
    (void)state;
    parts p = ok_parts;
    p.merges = "[\"a c\"]";
    expect_fail(p, ANVIL_ERR_FORMAT, "not in the vocabulary");
    p.merges = "[\"a  b\"]";
    expect_fail(p, ANVIL_ERR_FORMAT, "one space");
    p.merges = "[[\"a\", \"b\", \"c\"]]";
    expect_fail(p, ANVIL_ERR_FORMAT, "pair");
    p.merges = "[\"a b\",]";
    expect_fail(p, ANVIL_ERR_FORMAT, "merge");
    p.merges = "[1]";
    expect_fail(p, ANVIL_ERR_FORMAT, "merge 1");
    p = ok_parts;
    p.pre = "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(unclosed\"}, \"behavior\": \"Isolated\"}";
    expect_fail(p, ANVIL_ERR_FORMAT, "compile");
    p = ok_parts;
    p.pre = "{\"type\": \"ByteLevel\", \"add_prefix_space\": \"yes\"}";
    expect_fail(p, ANVIL_ERR_FORMAT, "add_prefix_space");
    p = ok_parts;
    p.post = "{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<x>\", \"type_id\": 0}}],"
             " \"pair\": [], \"special_tokens\": {}}";
    expect_fail(p, ANVIL_ERR_FORMAT, "<x>");

    static const char *const docs[] = {
        "",                                               /* empty */
        "[]",                                             /* not an object */
        "{\"model\": {\"type\": \"BPE\"}}",               /* no vocab or merges */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1.5}, \"merges\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 01}, \"merges\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1,}, \"merges\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1}, \"merges\": []} x",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"\\ud800\": 1}, \"merges\": []}}", /* lone surrogate */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"\\q\": 1}, \"merges\": []}}",     /* bad escape */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"\xC3\x28\": 1}, \"merges\": []}}", /* bad UTF-8 */
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1}, \"merges\": [\"a\\u0000 b\"]}}",
        "{\"added_tokens\": [{\"content\": \"x\"}], \"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}",
        "{\"added_tokens\": 7, \"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}",
        "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 1}, \"merges\": [[[[[[[[[]]]]]]]]]}}",
    };
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
        anvil_tokenizer *tok = (anvil_tokenizer *)&tok;
        anvil_status st = anvil_tokenizer_load_json(docs[i], strlen(docs[i]), &tok);
        if (st != ANVIL_ERR_FORMAT)
            fail_msg("case %zu: status %s (%s)", i, anvil_status_name(st), anvil_last_error());
        assert_null(tok);
        assert_non_null(strstr(anvil_last_error(), "tokenizer.json"));
    }
    /* a document cut right after a model key's ':' (found by the fuzzer): the
     * bytes end there, with no NUL after them for a scan to stop on */
    static const char cut[] = "{\"model\":{\"type\":\"BPE\",\"vocab\":";
    char *exact = malloc(sizeof cut - 1);
    assert_non_null(exact);
    memcpy(exact, cut, sizeof cut - 1);
    anvil_tokenizer *cut_tok = NULL;
    assert_status_msg(anvil_tokenizer_load_json(exact, sizeof cut - 1, &cut_tok), ANVIL_ERR_FORMAT, "unexpected end");
    assert_null(cut_tok);
    free(exact);
    /* huge ids are refused rather than allocated */
    const char *big = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 4000000000}, \"merges\": []}}";
    anvil_tokenizer *tok;
    assert_status_msg(anvil_tokenizer_load_json(big, strlen(big), &tok), ANVIL_ERR_UNSUPPORTED, "too large");
}

static void test_missing_files(void **state)
{
    (void)state;
    anvil_tokenizer *tok = (anvil_tokenizer *)&tok;
    assert_status_msg(anvil_tokenizer_load(anvil_test_tmpdir(), &tok), ANVIL_ERR_NOT_FOUND, "tokenizer.json");
    assert_null(tok);
    assert_status_msg(anvil_tokenizer_load_file("/nonexistent/tokenizer.json", &tok), ANVIL_ERR_IO, "nonexistent");
    assert_null(tok);
    assert_status_msg(anvil_tokenizer_load(NULL, &tok), ANVIL_ERR_INVALID_ARG, NULL);
    assert_status_msg(anvil_tokenizer_load("x", NULL), ANVIL_ERR_INVALID_ARG, NULL);
}

static void test_unk_token_missing_from_vocab(void **state)
{
    (void)state;
    /* HF loads this and fails when an unknown char needs the unk token */
    const char *j = "{\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"vocab\": {\"a\": 0}, \"merges\": []}}";
    anvil_tokenizer *tok;
    assert_int_equal(anvil_tokenizer_load_json(j, strlen(j), &tok), ANVIL_OK);
    int32_t *ids;
    int64_t n;
    assert_int_equal(anvil_tokenizer_encode(tok, "aa", 2, 1, &ids, &n), ANVIL_OK);
    assert_int_equal(n, 2);
    free(ids);
    assert_status_msg(anvil_tokenizer_encode(tok, "ab", 2, 1, &ids, &n), ANVIL_ERR_FORMAT, "<unk>");
    assert_null(ids);
    anvil_tokenizer_free(tok);
}

/* Every prefix of a real file is refused cleanly (or, for the whole file, loads). */
static void test_truncated_real_file(void **state)
{
    (void)state;
    char *text;
    size_t len;
    FILE *f = fopen(anvil_test_shared_path("models/stories260K/tokenizer.json"), "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    text = malloc(len);
    assert_non_null(text);
    assert_int_equal(fread(text, 1, len, f), len);
    fclose(f);
    for (size_t cut = 0; cut < len; cut += 1 + cut / 64) {
        anvil_tokenizer *tok = (anvil_tokenizer *)&tok;
        anvil_status st = anvil_tokenizer_load_json(text, cut, &tok);
        assert_int_not_equal(st, ANVIL_OK);
        assert_null(tok);
    }
    anvil_tokenizer *tok;
    assert_int_equal(anvil_tokenizer_load_json(text, len, &tok), ANVIL_OK);
    anvil_tokenizer_free(tok);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_template_is_valid),
        cmocka_unit_test(test_unsupported_components_are_named),
        cmocka_unit_test(test_malformed_files),
        cmocka_unit_test(test_missing_files),
        cmocka_unit_test(test_unk_token_missing_from_vocab),
        cmocka_unit_test(test_truncated_real_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
