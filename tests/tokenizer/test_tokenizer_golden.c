/*
 * Every golden case of SHARED/golden/tokenizers/<name>/{encode,decode}.jsonl
 * (Hugging Face tokenizers 0.23.2: Tokenizer.from_file(tokenizer.json)) must
 * come out of anvil byte for byte. The streaming detokenizer must give the
 * same text as decode on every decode case, one id at a time. Encoding is
 * also run from several threads at once on one shared tokenizer.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/tokenizer.h"
#include "testutil.h"

typedef struct golden {
    const char *name; /* golden folder */
    const char *dir;  /* tokenizer folder, relative to the shared dir */
} golden;

static const golden goldens[] = {
    {"gpt2", "tokenizers/gpt2"},
    {"llama2", "tokenizers/llama2"},
    {"llama3", "tokenizers/llama3"},
    {"mistral-7b-instruct-v0.3", "tokenizers/mistral-7b-instruct-v0.3"},
    {"phi-2", "tokenizers/phi-2"},
    {"phi-3-mini", "tokenizers/phi-3-mini"},
    {"qwen2.5", "tokenizers/qwen2.5"},
    {"smollm2-135m-instruct", "tokenizers/smollm2-135m-instruct"},
    {"stories260K", "models/stories260K"},
};
#define N_GOLDEN (sizeof goldens / sizeof goldens[0])

static anvil_tokenizer *load(const golden *g)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", anvil_test_shared_dir(), g->dir);
    anvil_tokenizer *tok = NULL;
    anvil_status st = anvil_tokenizer_load(dir, &tok);
    if (st != ANVIL_OK)
        fail_msg("loading %s: %s", dir, anvil_last_error());
    return tok;
}

/* Calls fn on every JSON line of SHARED/golden/tokenizers/<name>/<file>; returns the count. */
static int each_case(const char *name, const char *file, void (*fn)(json_t *c, void *ctx), void *ctx)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/golden/tokenizers/%s/%s", anvil_test_shared_dir(), name, file);
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("cannot open %s", path);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int count = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        json_error_t err;
        json_t *c = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, &err);
        if (!c)
            fail_msg("%s: %s", path, err.text);
        fn(c, ctx);
        json_decref(c);
        count++;
    }
    free(line);
    fclose(f);
    return count;
}

typedef struct ctx {
    anvil_tokenizer *tok;
    const char *name;
    int bad;
} ctx;

static void encode_case(json_t *c, void *vctx)
{
    ctx *x = vctx;
    json_t *text = json_object_get(c, "text"), *want = json_object_get(c, "ids");
    int add = json_is_true(json_object_get(c, "add_special_tokens"));
    int32_t *ids;
    int64_t n;
    anvil_status st = anvil_tokenizer_encode(x->tok, json_string_value(text), json_string_length(text), add, &ids, &n);
    if (st != ANVIL_OK)
        fail_msg("%s: encode failed: %s", x->name, anvil_last_error());
    int ok = (size_t)n == json_array_size(want);
    for (int64_t i = 0; ok && i < n; i++)
        ok = ids[i] == json_integer_value(json_array_get(want, (size_t)i));
    if (!ok && x->bad++ < 5)
        print_error("%s: encode mismatch for \"%.80s\" (%lld ids, want %zu)\n", x->name, json_string_value(text),
                    (long long)n, json_array_size(want));
    free(ids);
}

static int32_t *ids_of(json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    int32_t *ids = malloc((*n + 1) * sizeof *ids);
    assert_non_null(ids);
    for (size_t i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return ids;
}

/* 1 if s[0..n) is valid UTF-8 (a fresh check, independent of anvil's). */
static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char b = s[i];
        size_t l = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
        if (l == 0 || i + l > n)
            return 0;
        for (size_t k = 1; k < l; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
        i += l;
    }
    return 1;
}

/* Streams ids through a detokenizer; checks each piece is whole UTF-8 and
 * that all pieces together equal `want`. */
static int stream_matches(anvil_tokenizer *tok, const int32_t *ids, size_t n, int skip, const char *want, size_t want_len)
{
    anvil_detokenizer *d;
    assert_int_equal(anvil_detokenizer_create(tok, skip, &d), ANVIL_OK);
    char *acc = malloc(want_len * 2 + 64);
    size_t len = 0, cap = want_len * 2 + 64;
    int ok = 1;
    for (size_t i = 0; i <= n; i++) {
        const char *t;
        size_t tl;
        anvil_status st = i < n ? anvil_detokenizer_push(d, ids[i], &t, &tl) : anvil_detokenizer_flush(d, &t, &tl);
        assert_int_equal(st, ANVIL_OK);
        if (!valid_utf8((const unsigned char *)t, tl))
            ok = 0;
        if (len + tl > cap) {
            cap = (len + tl) * 2;
            acc = realloc(acc, cap);
            assert_non_null(acc);
        }
        memcpy(acc + len, t, tl);
        len += tl;
    }
    ok = ok && len == want_len && memcmp(acc, want, len) == 0;
    free(acc);
    anvil_detokenizer_free(d);
    return ok;
}

static void decode_case(json_t *c, void *vctx)
{
    ctx *x = vctx;
    size_t n;
    int32_t *ids = ids_of(json_object_get(c, "ids"), &n);
    int skip = json_is_true(json_object_get(c, "skip_special_tokens"));
    json_t *want = json_object_get(c, "text");
    char *text;
    size_t len;
    if (anvil_tokenizer_decode(x->tok, ids, (int64_t)n, skip, &text, &len) != ANVIL_OK)
        fail_msg("%s: decode failed: %s", x->name, anvil_last_error());
    if ((len != json_string_length(want) || memcmp(text, json_string_value(want), len) != 0) && x->bad++ < 5)
        print_error("%s: decode mismatch: got \"%.80s\" want \"%.80s\"\n", x->name, text, json_string_value(want));
    if (!stream_matches(x->tok, ids, n, skip, json_string_value(want), json_string_length(want)) && x->bad++ < 5)
        print_error("%s: streaming decode differs for \"%.80s\"\n", x->name, json_string_value(want));
    free(text);
    free(ids);
}

static void test_golden_encode(void **state)
{
    (void)state;
    int total = 0, bad = 0;
    for (size_t i = 0; i < N_GOLDEN; i++) {
        ctx x = {load(&goldens[i]), goldens[i].name, 0};
        total += each_case(goldens[i].name, "encode.jsonl", encode_case, &x);
        bad += x.bad;
        anvil_tokenizer_free(x.tok);
    }
    assert_int_equal(bad, 0);
    assert_true(total >= 9 * 300);
}

static void test_golden_decode_and_stream(void **state)
{
    (void)state;
    int total = 0, bad = 0;
    for (size_t i = 0; i < N_GOLDEN; i++) {
        ctx x = {load(&goldens[i]), goldens[i].name, 0};
        total += each_case(goldens[i].name, "decode.jsonl", decode_case, &x);
        bad += x.bad;
        anvil_tokenizer_free(x.tok);
    }
    assert_int_equal(bad, 0);
    assert_true(total >= 9 * 200);
}

/* Streaming over the ids of every encode case too: long texts in many
 * scripts, emoji split over byte tokens, literal special tokens. */
static void stream_encoded_case(json_t *c, void *vctx)
{
    ctx *x = vctx;
    size_t n;
    int32_t *ids = ids_of(json_object_get(c, "ids"), &n);
    for (int skip = 0; skip < 2; skip++) {
        char *text;
        size_t len;
        assert_int_equal(anvil_tokenizer_decode(x->tok, ids, (int64_t)n, skip, &text, &len), ANVIL_OK);
        if (!stream_matches(x->tok, ids, n, skip, text, len) && x->bad++ < 5)
            print_error("%s: streaming differs from decode for \"%.80s\"\n", x->name, text);
        free(text);
    }
    free(ids);
}

static void test_stream_encoded(void **state)
{
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < N_GOLDEN; i++) {
        ctx x = {load(&goldens[i]), goldens[i].name, 0};
        each_case(goldens[i].name, "encode.jsonl", stream_encoded_case, &x);
        bad += x.bad;
        anvil_tokenizer_free(x.tok);
    }
    assert_int_equal(bad, 0);
}

/* ------------------------------------------------------------ threads */

typedef struct job {
    anvil_tokenizer *tok;
    json_t *cases;
    int bad;
} job;

static void *encode_all(void *arg)
{
    job *j = arg;
    for (int rep = 0; rep < 3; rep++) {
        for (size_t i = 0; i < json_array_size(j->cases); i++) {
            json_t *c = json_array_get(j->cases, i);
            json_t *text = json_object_get(c, "text"), *want = json_object_get(c, "ids");
            int32_t *ids;
            int64_t n;
            if (anvil_tokenizer_encode(j->tok, json_string_value(text), json_string_length(text),
                                       json_is_true(json_object_get(c, "add_special_tokens")), &ids, &n) != ANVIL_OK) {
                j->bad++;
                continue;
            }
            int ok = (size_t)n == json_array_size(want);
            for (int64_t k = 0; ok && k < n; k++)
                ok = ids[k] == json_integer_value(json_array_get(want, (size_t)k));
            j->bad += !ok;
            free(ids);
        }
    }
    return NULL;
}

static void collect(json_t *c, void *arr)
{
    json_array_append(arr, c);
}

static void test_threads_share_one_tokenizer(void **state)
{
    (void)state;
    const golden *g = &goldens[2]; /* llama3 */
    anvil_tokenizer *tok = load(g);
    json_t *cases = json_array();
    each_case(g->name, "encode.jsonl", collect, cases);
    enum { N_THREADS = 4 };
    pthread_t th[N_THREADS];
    job jobs[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        jobs[i] = (job){tok, cases, 0};
        assert_int_equal(pthread_create(&th[i], NULL, encode_all, &jobs[i]), 0);
    }
    int bad = 0;
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        bad += jobs[i].bad;
    }
    assert_int_equal(bad, 0);
    json_decref(cases);
    anvil_tokenizer_free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_encode),
        cmocka_unit_test(test_golden_decode_and_stream),
        cmocka_unit_test(test_stream_encoded),
        cmocka_unit_test(test_threads_share_one_tokenizer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
