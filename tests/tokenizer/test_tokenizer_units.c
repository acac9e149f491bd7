/*
 * Unit tests of the tokenizer's pieces: UTF-8 helpers (Rust's lossy
 * decoding rules), the Oniguruma-to-PCRE2 regex translation and its
 * find_iter rules, the hash maps, the generated Unicode tables, JSON layouts
 * of tokenizer.json, small hand-written tokenizers for BPE corner cases
 * (byte fallback, unk fusing, ignore_merges, added-token flags), the
 * accessors, and the streaming detokenizer on split characters.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "anvil/tokenizer.h"
#include "testutil.h"
#include "tokenizer/tok_internal.h"

/* ------------------------------------------------------------ helpers */

static anvil_tokenizer *load_json(const char *json)
{
    anvil_tokenizer *tok = NULL;
    anvil_status st = anvil_tokenizer_load_json(json, strlen(json), &tok);
    if (st != ANVIL_OK)
        fail_msg("load: %s", anvil_last_error());
    return tok;
}

static anvil_tokenizer *load_shared(const char *rel)
{
    anvil_tokenizer *tok = NULL;
    if (anvil_tokenizer_load(anvil_test_shared_path(rel), &tok) != ANVIL_OK)
        fail_msg("load %s: %s", rel, anvil_last_error());
    return tok;
}

/* Encodes text and compares with want[0..n). */
static void expect_ids(const anvil_tokenizer *tok, const char *text, int add, const int32_t *want, int64_t n)
{
    int32_t *ids;
    int64_t got;
    assert_int_equal(anvil_tokenizer_encode(tok, text, strlen(text), add, &ids, &got), ANVIL_OK);
    if (got != n)
        print_error("\"%s\": %lld ids, want %lld\n", text, (long long)got, (long long)n);
    assert_int_equal(got, n);
    for (int64_t i = 0; i < n; i++)
        assert_int_equal(ids[i], want[i]);
    free(ids);
}

static void expect_text(const anvil_tokenizer *tok, const int32_t *ids, int64_t n, int skip, const char *want)
{
    char *text;
    size_t len;
    assert_int_equal(anvil_tokenizer_decode(tok, ids, n, skip, &text, &len), ANVIL_OK);
    assert_int_equal(len, strlen(want));
    assert_string_equal(text, want);
    free(text);
}

/* ------------------------------------------------------------ UTF-8 */

static void test_utf8_lossy_matches_rust(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t n;
        const char *out;
    } cases[] = {
        {"abc", 3, "abc"},
        {"\xC3\xA9", 2, "\xC3\xA9"},
        {"\xC3", 1, "\xEF\xBF\xBD"},                                  /* incomplete at end: one U+FFFD */
        {"\xE4\xB8", 2, "\xEF\xBF\xBD"},                              /* incomplete 3-byte prefix: one */
        {"\xE4\xB8x", 3, "\xEF\xBF\xBDx"},                            /* maximal subpart, then x */
        {"\x80\x80", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},                  /* lone continuations: one each */
        {"\xED\xA0\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* surrogate: ED then 2 x cont */
        {"\xF0\x9F\x98\x80", 4, "\xF0\x9F\x98\x80"},
        {"\xF0\x9F\x98", 3, "\xEF\xBF\xBD"},
        {"\xC0\xAF", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"}, /* overlong lead */
        {"\xF5\x80", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tok_buf b = {0};
        assert_int_equal(tok_append_lossy(&b, (const unsigned char *)cases[i].in, cases[i].n), ANVIL_OK);
        assert_int_equal(b.len, strlen(cases[i].out));
        assert_memory_equal(b.p, cases[i].out, b.len);
        tok_buf_free(&b);
    }
    assert_int_equal(tok_utf8_incomplete_tail((const unsigned char *)"a\xE4\xB8", 3), 2);
    assert_int_equal(tok_utf8_incomplete_tail((const unsigned char *)"a\xF0\x9F\x98", 4), 3);
    assert_int_equal(tok_utf8_incomplete_tail((const unsigned char *)"a\xE4\xB8\xAD", 4), 0);
    assert_int_equal(tok_utf8_incomplete_tail((const unsigned char *)"\xE4\xB8x", 3), 0);
    assert_int_equal(tok_utf8_incomplete_tail((const unsigned char *)"\xED\xA0", 2), 0); /* never valid */
    assert_true(tok_utf8_valid("h\xC3\xA9llo \xF0\x9F\x98\x80", 11));
    assert_false(tok_utf8_valid("\xED\xA0\x80", 3));
    assert_false(tok_utf8_valid("\xF4\x90\x80\x80", 4));
    assert_false(tok_utf8_valid("\xC1\xBF", 2));
    assert_false(tok_utf8_valid("abcdefgh\xE4", 9));
}

/* ------------------------------------------------------------ regex */

/* Matches of an Oniguruma pattern as "s-e,s-e,...". */
static void expect_spans(const char *pattern, const char *subject, const char *want)
{
    tok_regex re;
    if (tok_regex_compile(&re, pattern, strlen(pattern)) != ANVIL_OK)
        fail_msg("compile %s: %s", pattern, anvil_last_error());
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    tok_span *sp = NULL;
    size_t n = 0, cap = 0;
    assert_int_equal(tok_regex_find_all(&re, subject, strlen(subject), md, &sp, &n, &cap), ANVIL_OK);
    char got[512] = "";
    for (size_t i = 0; i < n; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%zu-%zu", i ? "," : "", sp[i].s, sp[i].e);
    if (strcmp(got, want) != 0)
        fail_msg("/%s/ on \"%s\": got %s, want %s", pattern, subject, got, want);
    free(sp);
    pcre2_match_data_free(md);
    tok_regex_free(&re);
}

static void test_regex_translation(void **state)
{
    (void)state;
    expect_spans("^a", "a\na", "0-1,2-3");          /* Ruby: ^ is a line anchor */
    expect_spans("a$", "a\na", "0-1,2-3");          /* and so is $ */
    expect_spans("a{,2}", "aaa", "0-2,2-3");        /* {,n} is {0,n}; no empty match right after one */
    expect_spans("\\h+", "xy0fF9g", "2-6");         /* \h: hex digit */
    expect_spans("(?m:a.b)", "a\nb", "0-3");        /* Ruby's m is dotall */
    expect_spans("\\u0041+", "xAAy", "1-3");        /* \uHHHH */
    expect_spans("", "ab", "0-0,1-1,2-2");          /* empty matches: Oniguruma's find_iter */
    expect_spans("x*", "axb", "0-0,1-2,3-3");       /* no empty match right after a match */
    expect_spans("\\s+", "a\xe1\xa0\x8e b", "4-5"); /* U+180E is not \s in Oniguruma */
    expect_spans("\\d+", "a\xd9\xa1\xd9\xa2 9", "1-5,6-7");
    expect_spans("[^\\s\\p{L}]+", "ab, 12", "2-3,4-6");
    expect_spans("(?i:'s|'t)", "it'S a'T", "2-4,6-8");
    /* a letter of a Unicode version newer than PCRE2's (the first code
     * point where the two disagree on \p{L}): taken by the exact pattern */
    uint32_t cp = tok_uset_fastdiff_gc_L.r[0][0];
    assert_true(tok_uset_has(&tok_uset_gc_L, cp));
    char subj[16] = "a";
    size_t l = tok_utf8_encode(cp, subj + 1);
    subj[1 + l] = 'b';
    subj[2 + l] = 0;
    char want[32];
    snprintf(want, sizeof want, "0-%zu", 2 + l);
    expect_spans("\\p{L}+", subj, want);
    expect_spans("\\p{Letter}+", subj, want);
}

static void test_regex_unsupported(void **state)
{
    (void)state;
    static const char *const bad[] = {"\\bword", "a\\Kb", "\\X", "[a[b]]", "[a&&b]", "\\p{Han}", "(?~abc)", "\\G"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tok_regex re;
        anvil_status st = tok_regex_compile(&re, bad[i], strlen(bad[i]));
        assert_int_equal(st, ANVIL_ERR_UNSUPPORTED);
        assert_non_null(strstr(anvil_last_error(), "regex"));
    }
}

/* ------------------------------------------------------------ maps and tables */

static void test_maps(void **state)
{
    (void)state;
    tok_strmap m;
    assert_int_equal(tok_strmap_init(&m, 4), ANVIL_OK);
    char key[32];
    for (int i = 0; i < 5000; i++) { /* grows through several rehashes */
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(tok_strmap_put(&m, key, strlen(key), i), ANVIL_OK);
    }
    assert_int_equal(tok_strmap_put(&m, "k7", 2, -7), ANVIL_OK); /* overwrite */
    assert_int_equal(tok_strmap_put(&m, "", 0, 99), ANVIL_OK);   /* empty key */
    assert_int_equal(m.n, 5001);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(tok_strmap_get(&m, key, strlen(key)), i == 7 ? -7 : i);
    }
    assert_int_equal(tok_strmap_get(&m, "", 0), 99);
    assert_int_equal(tok_strmap_get(&m, "k5000", 5), -1);
    assert_int_equal(tok_strmap_get(&m, "k1\0", 3), -1);
    tok_strmap_free(&m);

    tok_pairmap p;
    assert_int_equal(tok_pairmap_init(&p, 1), ANVIL_OK);
    for (int32_t i = 0; i < 3000; i++)
        assert_int_equal(tok_pairmap_put(&p, i, i * 7 + 1, (uint32_t)i, i + 100), ANVIL_OK);
    assert_int_equal(tok_pairmap_put(&p, 5, 36, 1, 2), ANVIL_OK); /* a later duplicate wins, as in HF */
    uint32_t rank;
    int32_t nid;
    assert_true(tok_pairmap_get(&p, 2999, 2999 * 7 + 1, &rank, &nid));
    assert_int_equal(rank, 2999);
    assert_int_equal(nid, 3099);
    assert_true(tok_pairmap_get(&p, 5, 36, &rank, &nid));
    assert_int_equal(rank, 1);
    assert_false(tok_pairmap_get(&p, 1, 1, &rank, &nid));
    tok_pairmap_free(&p);
}

static void test_unicode_tables(void **state)
{
    (void)state;
    /* the normalization guards hold for the utf8proc they were probed against */
    if (strcmp(utf8proc_unicode_version(), tok_unicode_utf8proc_version) != 0)
        fail_msg("utf8proc has Unicode %s but tok_unicode_data.c was made for %s: rerun gen_unicode_data.py",
                 utf8proc_unicode_version(), tok_unicode_utf8proc_version);
    uint32_t out[3];
    assert_int_equal(tok_lowercase('A', out), 1);
    assert_int_equal(out[0], 'a');
    assert_int_equal(tok_lowercase(0x130, out), 2); /* İ -> i + U+0307, as Rust's to_lowercase */
    assert_int_equal(out[0], 'i');
    assert_int_equal(out[1], 0x307);
    assert_int_equal(tok_lowercase(0x3A3, out), 1); /* Σ -> σ (no final-sigma rule per char) */
    assert_int_equal(out[0], 0x3C3);
    assert_true(tok_uset_has(&tok_uset_rust_whitespace, 0x85));
    assert_false(tok_uset_has(&tok_uset_onig_space, 0x180E));
    assert_true(tok_uset_has(&tok_uset_rust_numeric, 0x0661));
    assert_true(tok_uset_has(&tok_uset_gc_Nd, '7'));
    assert_true(tok_uset_has(&tok_uset_punct, '!'));
    assert_true(tok_uset_has(&tok_uset_norm_inert, 0x11938)); /* composed by utf8proc, not by HF */
    assert_true(tok_uset_has(&tok_uset_unsafe_nfc, 0x301));
    assert_false(tok_uset_has(&tok_uset_unsafe_nfc, 0x4E2D)); /* 中 */
    /* the tables are sorted, non-overlapping ranges */
    const tok_uset *sets[] = {&tok_uset_gc_L, &tok_uset_gc_Cn, &tok_uset_rx_word, &tok_uset_unsafe_nfkd};
    for (size_t s = 0; s < 4; s++)
        for (uint32_t i = 0; i < sets[s]->n; i++) {
            assert_true(sets[s]->r[i][0] <= sets[s]->r[i][1]);
            if (i)
                assert_true(sets[s]->r[i - 1][1] + 1 < sets[s]->r[i][0]);
        }
}

/* ------------------------------------------------------------ small tokenizers */

/* A SentencePiece-like BPE in an unusual JSON layout: model first, keys in
 * odd order, escapes, merges as pairs and "a b" strings and a #version line. */
static const char *SPM_JSON =
    "{\n  \"model\" : {\"merges\":[\"#version: 0.2\", [\"\\u2581\", \"a\"], \"b c\", [\"\\u2581a\",\"bc\"]],\n"
    "   \"vocab\": {\"<unk>\":0, \"<0x41>\":1, \"<0xC3>\": 2, \"<0xA9>\": 3, \"\\u2581\":4, \"a\":5, \"b\":6,"
    " \"c\":7, \"\\u2581a\":8, \"bc\":9, \"\\u2581abc\":10, \"<s>\": 11},\n"
    "   \"unk_token\": \"<unk>\", \"byte_fallback\": true, \"fuse_unk\": true, \"type\": \"BPE\"},\n"
    " \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": \"\\u2581\"},"
    " \"content\": \" \"}, {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \" \","
    " \"start\": 1, \"stop\": 0}]},\n"
    " \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\","
    " \"split\": false},\n"
    " \"added_tokens\": [{\"id\": 11, \"content\": \"<s>\", \"special\": true, \"normalized\": false,"
    " \"lstrip\": false, \"rstrip\": false, \"single_word\": false}],\n"
    " \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\","
    " \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": [],"
    " \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [11], \"tokens\": [\"<s>\"]}}},\n"
    " \"normalizer\": null, \"version\": \"1.0\", \"truncation\": null, \"padding\": null}";

static void test_spm_corner_cases(void **state)
{
    (void)state;
    anvil_tokenizer *tok = load_json(SPM_JSON);
    assert_int_equal(anvil_tokenizer_vocab_size(tok), 12);
    expect_ids(tok, "abc", 1, (int32_t[]){11, 10}, 2);            /* ▁abc through the merges */
    expect_ids(tok, "abc a", 0, (int32_t[]){10, 8}, 2);
    expect_ids(tok, "A", 0, (int32_t[]){4, 1}, 2);                /* byte fallback: <0x41> */
    expect_ids(tok, "\xC3\xA9", 0, (int32_t[]){4, 2, 3}, 3);      /* é as two byte tokens */
    expect_ids(tok, "xyz", 0, (int32_t[]){4, 0}, 2);              /* unknown chars fused into one <unk> */
    expect_ids(tok, "<s>abc", 0, (int32_t[]){11, 5, 9}, 3);       /* no ▁ after a leading special token */
    expect_ids(tok, "", 1, (int32_t[]){11}, 1);
    expect_text(tok, (int32_t[]){11, 10, 8, 2, 3}, 5, 0, "<s> abc a\xC3\xA9");
    expect_text(tok, (int32_t[]){11, 10, 8}, 3, 1, "abc a");
    expect_text(tok, (int32_t[]){2, 8}, 2, 0, "\xEF\xBF\xBD a"); /* a lone byte token: U+FFFD per byte */
    expect_text(tok, (int32_t[]){8, 999, -5}, 3, 0, "a");         /* unknown ids are skipped */
    anvil_tokenizer_free(tok);
}

/* Byte-level with ignore_merges and added tokens with lstrip/rstrip/single_word. */
static const char *BL_JSON =
    "{\"version\": \"1.0\", \"normalizer\": null, \"post_processor\": null,"
    " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true,"
    " \"use_regex\": true},"
    " \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true},"
    " \"added_tokens\": ["
    "  {\"id\": 0, \"content\": \"<m>\", \"special\": true, \"normalized\": false, \"lstrip\": true, \"rstrip\": true,"
    "   \"single_word\": false},"
    "  {\"id\": 0, \"content\": \"cat\", \"special\": false, \"normalized\": false, \"lstrip\": false,"
    "   \"rstrip\": false, \"single_word\": true}],"
    " \"model\": {\"type\": \"BPE\", \"ignore_merges\": true,"
    "  \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"t\": 3, \"\\u0120\": 4, \"ab\": 5, \"\\u0120a\": 6, \"abab\": 7,"
    "            \"ba\": 8},"
    "  \"merges\": [\"a b\", \"\\u0120 a\", \"b a\"]}}";

static void test_bytelevel_and_added_flags(void **state)
{
    (void)state;
    anvil_tokenizer *tok = load_json(BL_JSON);
    /* added tokens get the next free ids: 9 and 10 (the file's ids are ignored, as in HF) */
    assert_int_equal(anvil_tokenizer_token_id(tok, "<m>"), 9);
    assert_int_equal(anvil_tokenizer_token_id(tok, "cat"), 10);
    assert_int_equal(anvil_tokenizer_vocab_size(tok), 11);
    assert_true(anvil_tokenizer_is_special(tok, 9));
    assert_false(anvil_tokenizer_is_special(tok, 10));
    assert_string_equal(anvil_tokenizer_token_text(tok, 6), "\xC4\xA0" "a");
    assert_null(anvil_tokenizer_token_text(tok, 11));
    expect_ids(tok, "abab", 0, (int32_t[]){7}, 1);            /* ignore_merges: a whole-word hit */
    expect_ids(tok, "bab", 0, (int32_t[]){1, 5}, 2);          /* else merges, lowest rank first: a b */
    expect_ids(tok, "a  <m>  ab", 0, (int32_t[]){0, 9, 5}, 3); /* lstrip/rstrip eat the spaces */
    expect_ids(tok, "cat a", 0, (int32_t[]){10, 6}, 2);       /* single_word: a whole word */
    expect_ids(tok, "bcat", 0, (int32_t[]){1, 2, 0, 3}, 4);   /* ... not inside one */
    expect_text(tok, (int32_t[]){10, 6, 9, 5}, 4, 0, "cat a<m>ab");
    expect_text(tok, (int32_t[]){10, 6, 9, 5}, 4, 1, "cat aab");
    anvil_tokenizer_free(tok);
}

static void test_accessors_on_real_files(void **state)
{
    (void)state;
    anvil_tokenizer *tok = load_shared("tokenizers/llama3");
    assert_int_equal(anvil_tokenizer_vocab_size(tok), 128002); /* this file lists 2 added tokens */
    assert_int_equal(anvil_tokenizer_token_id(tok, "<|begin_of_text|>"), 128000);
    assert_int_equal(anvil_tokenizer_token_id(tok, "Hello"), 9906);
    assert_int_equal(anvil_tokenizer_token_id(tok, "no such token"), -1);
    assert_string_equal(anvil_tokenizer_token_text(tok, 1917), "\xC4\xA0world");
    assert_true(anvil_tokenizer_is_special(tok, 128001));
    assert_false(anvil_tokenizer_is_special(tok, 1917));
    assert_null(anvil_tokenizer_token_text(tok, -1));
    assert_null(anvil_tokenizer_token_text(tok, 1 << 30));
    anvil_tokenizer_free(tok);

    /* HF gives a normalized added token's normalized content, and does not
     * treat it as special when decoding (tokenizers 0.23.2) */
    tok = load_shared("models/stories260K");
    assert_string_equal(anvil_tokenizer_token_text(tok, 1), "\xE2\x96\x81<s>");
    assert_int_equal(anvil_tokenizer_token_id(tok, "<s>"), 1);
    assert_false(anvil_tokenizer_is_special(tok, 1));
    anvil_tokenizer_free(tok);

    /* a model folder works like a tokenizer folder, and a file path too */
    assert_int_equal(anvil_tokenizer_load(anvil_test_shared_path("tokenizers/gpt2/tokenizer.json"), &tok), ANVIL_OK);
    expect_ids(tok, "Hello world", 1, (int32_t[]){15496, 995}, 2);
    anvil_tokenizer_free(tok);
}

/* ------------------------------------------------------------ streaming */

typedef struct stream {
    char text[512];
    size_t len;
    int n_pieces, n_empty;
} stream;

static void stream_ids(const anvil_tokenizer *tok, const int32_t *ids, int n, int skip, stream *s)
{
    anvil_detokenizer *d;
    memset(s, 0, sizeof *s);
    assert_int_equal(anvil_detokenizer_create(tok, skip, &d), ANVIL_OK);
    for (int i = 0; i <= n; i++) {
        const char *t;
        size_t tl;
        assert_int_equal(i < n ? anvil_detokenizer_push(d, ids[i], &t, &tl) : anvil_detokenizer_flush(d, &t, &tl),
                         ANVIL_OK);
        assert_true(tok_utf8_valid(t, tl)); /* never half a character */
        assert_true(s->len + tl < sizeof s->text);
        memcpy(s->text + s->len, t, tl);
        s->len += tl;
        s->n_pieces++;
        s->n_empty += tl == 0;
    }
    s->text[s->len] = 0;
    anvil_detokenizer_free(d);
}

static void test_stream_holds_partial_chars(void **state)
{
    (void)state;
    /* llama2: "😀" is four byte-fallback tokens; nothing may come out before the last */
    anvil_tokenizer *tok = load_shared("tokenizers/llama2");
    int32_t *ids;
    int64_t n;
    const char *text = "Hi \xF0\x9F\x98\x80!";
    assert_int_equal(anvil_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n), ANVIL_OK);
    anvil_detokenizer *d;
    assert_int_equal(anvil_detokenizer_create(tok, 0, &d), ANVIL_OK);
    char acc[64] = "";
    for (int64_t i = 0; i < n; i++) {
        const char *t;
        size_t tl;
        assert_int_equal(anvil_detokenizer_push(d, ids[i], &t, &tl), ANVIL_OK);
        const char *tt = anvil_tokenizer_token_text(tok, ids[i]);
        if (tt && strncmp(tt, "<0x", 3) == 0)
            assert_int_equal(tl, 0); /* byte tokens are held until the run ends */
        strncat(acc, t, tl);
    }
    const char *t;
    size_t tl;
    assert_int_equal(anvil_detokenizer_flush(d, &t, &tl), ANVIL_OK);
    strncat(acc, t, tl);
    assert_string_equal(acc, text);
    anvil_detokenizer_free(d);
    free(ids);
    anvil_tokenizer_free(tok);

    /* gpt2: a char split over byte-level tokens, and a stream that ends inside one */
    tok = load_shared("tokenizers/gpt2");
    stream s;
    int32_t split_char[] = {40, 1842, 220, 171, 120, 253}; /* "I love " + the 3 bytes of U+FF1D */
    stream_ids(tok, split_char, 6, 0, &s);
    char *full;
    size_t full_len;
    assert_int_equal(anvil_tokenizer_decode(tok, split_char, 6, 0, &full, &full_len), ANVIL_OK);
    assert_string_equal(s.text, full);
    free(full);
    int32_t cut[] = {40, 171, 120}; /* ends inside a character: flush gives U+FFFD as decode does */
    stream_ids(tok, cut, 3, 0, &s);
    assert_int_equal(anvil_tokenizer_decode(tok, cut, 3, 0, &full, &full_len), ANVIL_OK);
    assert_string_equal(s.text, full);
    free(full);
    anvil_tokenizer_free(tok);
}

static void test_stream_random_ids(void **state)
{
    (void)state;
    static const char *const dirs[] = {"tokenizers/llama2", "tokenizers/gpt2", "tokenizers/qwen2.5",
                                       "tokenizers/mistral-7b-instruct-v0.3", "models/stories260K"};
    uint64_t rng = 12345;
    for (size_t k = 0; k < sizeof dirs / sizeof dirs[0]; k++) {
        anvil_tokenizer *tok = load_shared(dirs[k]);
        int64_t vs = anvil_tokenizer_vocab_size(tok);
        for (int rep = 0; rep < 300; rep++) {
            int32_t ids[24];
            int n = (int)(anvil_test_rand(&rng) % 24);
            for (int i = 0; i < n; i++) {
                uint64_t r = anvil_test_rand(&rng);
                /* lots of byte tokens (ids 3..258 in SentencePiece vocabularies) and specials */
                ids[i] = (int32_t)(r % 3 == 0 ? 3 + (r >> 8) % 256 : r % 7 == 0 ? (r >> 8) % 4 : (r >> 8) % (uint64_t)vs);
            }
            int skip = rep & 1;
            stream s;
            stream_ids(tok, ids, n, skip, &s);
            char *full;
            size_t len;
            assert_int_equal(anvil_tokenizer_decode(tok, ids, n, skip, &full, &len), ANVIL_OK);
            if (len != s.len || memcmp(full, s.text, len) != 0)
                fail_msg("%s: stream \"%s\" != decode \"%s\"", dirs[k], s.text, full);
            free(full);
        }
        anvil_tokenizer_free(tok);
    }
}

static void test_encode_rejects_bad_input(void **state)
{
    (void)state;
    anvil_tokenizer *tok = load_shared("tokenizers/gpt2");
    int32_t *ids = (int32_t *)&ids;
    int64_t n = 5;
    assert_status_msg(anvil_tokenizer_encode(tok, "a\xFF", 2, 1, &ids, &n), ANVIL_ERR_INVALID_ARG, "UTF-8");
    assert_null(ids);
    assert_int_equal(n, 0);
    assert_status_msg(anvil_tokenizer_encode(NULL, "a", 1, 1, &ids, &n), ANVIL_ERR_INVALID_ARG, NULL);
    /* embedded NUL is text like any other */
    assert_int_equal(anvil_tokenizer_encode(tok, "a\0b", 3, 1, &ids, &n), ANVIL_OK);
    assert_int_equal(n, 3);
    free(ids);
    char *text = (char *)&text;
    assert_status_msg(anvil_tokenizer_decode(tok, NULL, 3, 0, &text, NULL), ANVIL_ERR_INVALID_ARG, NULL);
    assert_null(text);
    anvil_tokenizer_free(tok);
    anvil_tokenizer_free(NULL);
    anvil_detokenizer_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_lossy_matches_rust),
        cmocka_unit_test(test_regex_translation),
        cmocka_unit_test(test_regex_unsupported),
        cmocka_unit_test(test_maps),
        cmocka_unit_test(test_unicode_tables),
        cmocka_unit_test(test_spm_corner_cases),
        cmocka_unit_test(test_bytelevel_and_added_flags),
        cmocka_unit_test(test_accessors_on_real_files),
        cmocka_unit_test(test_stream_holds_partial_chars),
        cmocka_unit_test(test_stream_random_ids),
        cmocka_unit_test(test_encode_rejects_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
