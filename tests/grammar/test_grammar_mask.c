/*
 * Token masks on real vocabularies: tinycode's (8k, byte-level BPE),
 * Llama 2's (32k, SentencePiece with byte fallback) and Llama 3's (128k,
 * byte-level): at the states of seeded random walks through JSON schemas,
 * any JSON object, a regex and a GBNF grammar, the mask equals the brute
 * force over the whole vocabulary, with the mask cache and without it. And
 * the vocabulary's token bytes are what the tokenizer encodes.
 */
#include "gram_testkit.h"

static const char *const VOCABS[] = {"models/tinycode", "tokenizers/llama2", "tokenizers/llama3"};
#define N_VOCABS 3

/* loaded once for all cases (the 128k vocabulary takes a while) */
static anvil_tokenizer *g_tok[N_VOCABS];
static anvil_grammar_vocab *g_vocab[N_VOCABS];

static int setup(void **state)
{
    (void)state;
    for (int i = 0; i < N_VOCABS; i++)
        g_vocab[i] = gt_tok_vocab(VOCABS[i], &g_tok[i]);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < N_VOCABS; i++) {
        anvil_grammar_vocab_free(g_vocab[i]);
        anvil_tokenizer_free(g_tok[i]);
    }
    return 0;
}

/* Token bytes: the bytes of encode(text)'s ids, joined, are the text. */
static void test_token_bytes(void **state)
{
    (void)state;
    static const char text[] = "{\"name\": \"caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\", \"n\": [1, 2.5]}\n\tdef f(x):  "
                               "return x \xf0\x9f\x98\x80\n\n";
    for (size_t t = 0; t < N_VOCABS; t++) {
        anvil_tokenizer *tok = g_tok[t];
        anvil_grammar_vocab *v = g_vocab[t];
        int32_t *ids;
        int64_t n;
        OK(anvil_tokenizer_encode(tok, text, sizeof text - 1, 0, &ids, &n));
        char buf[512];
        size_t len = 0;
        for (int64_t i = 0; i < n; i++) {
            size_t tl;
            const char *p = anvil_grammar_vocab_token(v, ids[i], &tl);
            assert_non_null(p);
            assert_true(len + tl < sizeof buf);
            memcpy(buf + len, p, tl);
            len += tl;
        }
        /* SentencePiece adds a leading space to the first word: mid-text pieces keep it */
        size_t skip = len == sizeof text && buf[0] == ' ' ? 1 : 0;
        if (len - skip != sizeof text - 1 || memcmp(buf + skip, text, len - skip) != 0)
            fail_msg("%s: token bytes give \"%.*s\"", VOCABS[t], (int)len, buf);
        free(ids);
        /* special tokens have no bytes */
        for (int32_t id = 0; id < anvil_grammar_vocab_size(v); id++)
            if (anvil_tokenizer_is_special(tok, id))
                assert_null(anvil_grammar_vocab_token(v, id, NULL));
    }
}

static const char SCHEMA[] =
    "{\"type\":\"object\",\"properties\":{"
    "\"id\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":5000},"
    "\"name\":{\"type\":\"string\",\"maxLength\":12},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"red\",\"green\",\"blue\",\"x\\\"y\"]},\"maxItems\":3},"
    "\"code\":{\"type\":\"string\",\"pattern\":\"[A-Z]{2}-[0-9]{3}\"},"
    "\"child\":{\"type\":\"object\",\"properties\":{\"ok\":{\"type\":\"boolean\"},\"score\":{\"type\":\"number\"}},"
    "\"required\":[\"ok\"]}},"
    "\"required\":[\"id\",\"name\",\"child\"]}";

static const char EBNF[] = "root ::= \"[\" item (\", \" item)* \"]\"\n"
                           "item ::= [a-z]{1,6} | \"\\\"\" [^\"\\n]{0,8} \"\\\"\" | [0-9]+\n";

static const char REGEX[] = "(\\w+@[a-z]{2,8}\\.(com|org)|\\(\\d{3}\\) \\d{3}-\\d{4}|[\\u00e0-\\u00ff ]{3,10})";

static anvil_grammar *compile(anvil_grammar_vocab *v, int kind, int cache_frames)
{
    anvil_grammar_options o;
    anvil_grammar_options_default(&o);
    o.cache_frames = cache_frames;
    o.max_whitespace = 2;
    anvil_grammar *g = NULL;
    switch (kind) {
    case 0: OK(anvil_grammar_compile_json_schema(v, SCHEMA, sizeof SCHEMA - 1, &o, &g)); break;
    case 1: OK(anvil_grammar_compile_json_object(v, &o, &g)); break;
    case 2: OK(anvil_grammar_compile_regex(v, REGEX, sizeof REGEX - 1, &o, &g)); break;
    default: OK(anvil_grammar_compile_ebnf(v, EBNF, sizeof EBNF - 1, NULL, &o, &g)); break;
    }
    return g;
}

static void test_mask_brute_force(void **state)
{
    (void)state;
    uint64_t rng = 0x5eed;
    int tokens = ANVIL_TEST_SANITIZED ? 16 : 30;
    for (size_t t = 0; t < N_VOCABS; t++) {
        anvil_grammar_vocab *v = g_vocab[t];
        int big = anvil_grammar_vocab_size(v) > 100000;
        for (int kind = 0; kind < 4; kind++)
            for (int frames = 0; frames <= 4; frames += 2) {
                if (big && frames == 2)
                    continue;
                /* every step with 2 frames (many uncertain tokens), every few steps otherwise */
                int every = frames == 2 ? 1 : big ? 8 : 4;
                anvil_grammar *g = compile(v, kind, frames);
                char *out;
                size_t len;
                /* without the cache a 128k mask is a whole trie walk: fewer steps */
                gt_walk(g, v, &rng, big && frames == 0 ? tokens / 3 : tokens, &out, &len, every);
                free(out);
                anvil_grammar_free(g);
            }
    }
}

/* A forked matcher (beams) goes on independently, with the same masks as a fresh one fed the same tokens. */
static void test_copy_and_cache_sharing(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = g_vocab[0];
    anvil_grammar *g = compile(v, 0, 4);
    uint64_t rng = 7;
    char *out;
    size_t len;
    gt_walk(g, v, &rng, 30, &out, &len, 0);
    anvil_grammar_matcher *a, *b;
    OK(anvil_grammar_matcher_create(g, &a));
    OK(anvil_grammar_matcher_accept_bytes(a, out, len / 2));
    OK(anvil_grammar_matcher_copy(a, &b));
    size_t nw = anvil_grammar_vocab_mask_words(v);
    uint32_t *wa = calloc(nw, 4), *wb = calloc(nw, 4);
    OK(anvil_grammar_matcher_accept_bytes(a, out + len / 2, len - len / 2));
    OK(anvil_grammar_matcher_fill_mask(b, wb, nw));
    gt_check_mask(v, b, wa);
    OK(anvil_grammar_matcher_accept_bytes(b, out + len / 2, len - len / 2));
    OK(anvil_grammar_matcher_fill_mask(a, wa, nw));
    OK(anvil_grammar_matcher_fill_mask(b, wb, nw));
    assert_memory_equal(wa, wb, nw * 4);
    free(wa);
    free(wb);
    free(out);
    anvil_grammar_matcher_free(a);
    anvil_grammar_matcher_free(b);
    anvil_grammar_free(g);
}

/* Near max_stack_depth the cached masks still equal the brute force: a cut
 * walk's depth limit is tighter than the real one and what it drops is
 * uncertain; deeper still, the mask is a full walk. */
static void test_masks_near_depth_limit(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = g_vocab[0];
    anvil_grammar_options o;
    anvil_grammar_options_default(&o);
    o.max_stack_depth = 100;
    o.max_whitespace = 0;
    anvil_grammar *g;
    OK(anvil_grammar_compile_json_object(v, &o, &g));
    anvil_grammar_matcher *m;
    OK(anvil_grammar_matcher_create(g, &m));
    OK(anvil_grammar_matcher_accept_bytes(m, "{\"a\":", 5));
    uint32_t *w = calloc(anvil_grammar_vocab_mask_words(v), 4);
    int depth = 0;
    for (; depth < 60; depth++) {
        if (depth % 3 == 0 || depth > 20)
            gt_check_mask(v, m, w);
        if (anvil_grammar_matcher_accept_bytes(m, "[", 1) != ANVIL_OK)
            break;
    }
    assert_true(depth > 10 && depth < 60); /* the limit was reached */
    gt_check_mask(v, m, w);
    free(w);
    anvil_grammar_matcher_free(m);
    anvil_grammar_free(g);
}

/* A model's vocabulary padded past the tokenizer's ids: the padding is never allowed. */
static void test_padded_vocab(void **state)
{
    (void)state;
    int32_t n_tok = anvil_grammar_vocab_size(g_vocab[0]), stop = g_vocab[0]->stop[0];
    anvil_grammar_vocab *v;
    OK(anvil_grammar_vocab_from_tokenizer(g_tok[0], n_tok + 77, &stop, 1, &v));
    assert_int_equal(anvil_grammar_vocab_size(v), n_tok + 77);
    anvil_grammar *g = compile(v, 1, 4);
    uint64_t rng = 11;
    char *out;
    size_t len;
    gt_walk(g, v, &rng, 12, &out, &len, 3);
    free(out);
    anvil_grammar_free(g);
    anvil_grammar_vocab_free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_bytes),
        cmocka_unit_test(test_mask_brute_force),
        cmocka_unit_test(test_copy_and_cache_sharing),
        cmocka_unit_test(test_padded_vocab),
        cmocka_unit_test(test_masks_near_depth_limit),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
