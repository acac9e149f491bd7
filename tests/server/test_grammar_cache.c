/* The server's compiled-grammar cache (server_grammar_cache.c) without a
 * model: the second compile of the same kind and text is a hit that returns
 * the same grammar (no compile), its masks equal an uncached compile's;
 * another kind or text is a miss; the least recently used entry goes at the
 * bound, and a grammar evicted while a request holds it stays usable until
 * that request drops it (ASan: no use after free, no leak); tool calls'
 * forcing grammars go through it; threads looking up, compiling and
 * dropping at once (TSan in CI). */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/grammar.h"
#include "server/server_grammar_cache.h"
#include "server/server_guided.h"
#include "server/server_tools.h"
#include "testutil.h"

/* A vocabulary of the 256 single bytes, a few words and a stop token. */
static anvil_grammar_vocab *vocab(void)
{
    enum { N = 256 + 4 + 1 };
    const char *bytes[N];
    size_t lens[N];
    static char b[256];
    static const char *const words[4] = {"{\"", "\": ", "true", "ab"};
    for (int i = 0; i < 256; i++) {
        b[i] = (char)i;
        bytes[i] = &b[i];
        lens[i] = 1;
    }
    for (int i = 0; i < 4; i++) {
        bytes[256 + i] = words[i];
        lens[256 + i] = strlen(words[i]);
    }
    bytes[N - 1] = NULL;
    lens[N - 1] = 0;
    int32_t stop = N - 1;
    anvil_grammar_vocab *v = NULL;
    assert_int_equal(anvil_grammar_vocab_create(N, bytes, lens, &stop, 1, &v), ANVIL_OK);
    return v;
}

static void stats(srv_gcache *c, uint64_t hits, uint64_t misses, uint64_t evictions, int32_t entries)
{
    srv_gcache_stats s;
    srv_gcache_get_stats(c, &s);
    if (s.hits != hits || s.misses != misses || s.evictions != evictions || s.entries != entries)
        fail_msg("hits %llu misses %llu evictions %llu entries %d, expected %llu %llu %llu %d",
                 (unsigned long long)s.hits, (unsigned long long)s.misses, (unsigned long long)s.evictions, s.entries,
                 (unsigned long long)hits, (unsigned long long)misses, (unsigned long long)evictions, entries);
}

/* Both grammars give the same masks along text (and after it). */
static void same_masks(const anvil_grammar *a, const anvil_grammar *b, const char *text)
{
    const size_t words = anvil_grammar_vocab_mask_words(anvil_grammar_get_vocab(a));
    uint32_t *ma = calloc(words, 4), *mb = calloc(words, 4);
    anvil_grammar_matcher *x, *y;
    assert_int_equal(anvil_grammar_matcher_create(a, &x), ANVIL_OK);
    assert_int_equal(anvil_grammar_matcher_create(b, &y), ANVIL_OK);
    for (size_t i = 0; i <= strlen(text); i++) {
        assert_int_equal(anvil_grammar_matcher_fill_mask(x, ma, words), ANVIL_OK);
        assert_int_equal(anvil_grammar_matcher_fill_mask(y, mb, words), ANVIL_OK);
        assert_memory_equal(ma, mb, words * 4);
        if (i < strlen(text)) {
            assert_int_equal(anvil_grammar_matcher_accept_bytes(x, text + i, 1), ANVIL_OK);
            assert_int_equal(anvil_grammar_matcher_accept_bytes(y, text + i, 1), ANVIL_OK);
        }
    }
    assert_true(anvil_grammar_matcher_can_end(x));
    anvil_grammar_matcher_free(x);
    anvil_grammar_matcher_free(y);
    free(ma);
    free(mb);
}

static const char SCHEMA[] = "{\"type\":\"object\",\"properties\":{\"ok\":{\"type\":\"boolean\"}},\"required\":[\"ok\"]}";

static void test_hit_equals_compile(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = vocab();
    srv_gcache *c = srv_gcache_create(4);
    assert_non_null(c);
    anvil_grammar *g1, *g2, *g3, *plain;
    assert_int_equal(srv_guided_compile(c, v, SRV_GUIDED_JSON, SCHEMA, strlen(SCHEMA), &g1), ANVIL_OK);
    stats(c, 0, 1, 0, 1);
    assert_int_equal(srv_guided_compile(c, v, SRV_GUIDED_JSON, SCHEMA, strlen(SCHEMA), &g2), ANVIL_OK);
    stats(c, 1, 1, 0, 1);
    assert_ptr_equal(g1, g2); /* reused, not recompiled */
    /* the same text as another kind is another grammar */
    assert_int_equal(srv_guided_compile(c, v, SRV_GUIDED_REGEX, SCHEMA, strlen(SCHEMA), &g3), ANVIL_OK);
    stats(c, 1, 2, 0, 2);
    assert_ptr_not_equal(g1, g3);
    /* what the cache returns masks as a fresh compile with the server's options */
    anvil_grammar_options o;
    srv_guided_json_options(&o);
    assert_int_equal(anvil_grammar_compile_json_schema(v, SCHEMA, strlen(SCHEMA), &o, &plain), ANVIL_OK);
    same_masks(g2, plain, "{\"ok\": true}");
    /* a refused text is not cached: each try is a miss with the engine's error */
    anvil_grammar *bad = NULL;
    assert_int_not_equal(srv_guided_compile(c, v, SRV_GUIDED_REGEX, "((", 2, &bad), ANVIL_OK);
    assert_int_not_equal(srv_guided_compile(c, v, SRV_GUIDED_REGEX, "((", 2, &bad), ANVIL_OK);
    assert_null(bad);
    stats(c, 1, 4, 0, 2);
    /* json_object ignores its text */
    anvil_grammar *o1, *o2;
    assert_int_equal(srv_guided_compile(c, v, SRV_GUIDED_OBJECT, NULL, 0, &o1), ANVIL_OK);
    assert_int_equal(srv_guided_compile(c, v, SRV_GUIDED_OBJECT, "x", 1, &o2), ANVIL_OK);
    assert_ptr_equal(o1, o2);
    /* no cache: every compile its own */
    anvil_grammar *n1, *n2;
    assert_int_equal(srv_guided_compile(NULL, v, SRV_GUIDED_JSON, SCHEMA, strlen(SCHEMA), &n1), ANVIL_OK);
    assert_int_equal(srv_guided_compile(NULL, v, SRV_GUIDED_JSON, SCHEMA, strlen(SCHEMA), &n2), ANVIL_OK);
    assert_ptr_not_equal(n1, n2);
    anvil_grammar *all[] = {g1, g2, g3, plain, o1, o2, n1, n2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        anvil_grammar_free(all[i]);
    srv_gcache_free(c);
    anvil_grammar_vocab_free(v);
}

static void test_eviction_keeps_users(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = vocab();
    srv_gcache *c = srv_gcache_create(2);
    anvil_grammar *a, *b, *a2, *cc, *a3;
    assert_int_equal(srv_guided_compile(c, v, SRV_GUIDED_REGEX, "a+", 2, &a), ANVIL_OK);
    assert_int_equal(srv_guided_compile(c, v, SRV_GUIDED_REGEX, "b+", 2, &b), ANVIL_OK);
    assert_int_equal(srv_guided_compile(c, v, SRV_GUIDED_REGEX, "a+", 2, &a2), ANVIL_OK); /* a: most recent */
    assert_ptr_equal(a, a2);
    stats(c, 1, 2, 0, 2);
    assert_int_equal(srv_guided_compile(c, v, SRV_GUIDED_REGEX, "c+", 2, &cc), ANVIL_OK); /* evicts b */
    stats(c, 1, 3, 1, 2);
    assert_int_equal(srv_guided_compile(c, v, SRV_GUIDED_REGEX, "a+", 2, &a3), ANVIL_OK);
    assert_ptr_equal(a, a3); /* kept: b was the least recent */
    stats(c, 2, 3, 1, 2);
    /* b is out of the cache but its request still runs with it */
    anvil_grammar_matcher *m;
    assert_int_equal(anvil_grammar_matcher_create(b, &m), ANVIL_OK);
    assert_int_equal(anvil_grammar_matcher_accept_bytes(m, "bbb", 3), ANVIL_OK);
    assert_true(anvil_grammar_matcher_can_end(m));
    anvil_grammar_matcher_free(m);
    anvil_grammar_free(b); /* its last reference: freed now */
    anvil_grammar *b2;
    assert_int_equal(srv_guided_compile(c, v, SRV_GUIDED_REGEX, "b+", 2, &b2), ANVIL_OK); /* a miss again */
    stats(c, 2, 4, 2, 2);
    /* the cache goes first (a model unloading), the requests' references after */
    srv_gcache_free(c);
    assert_int_equal(anvil_grammar_matcher_create(a, &m), ANVIL_OK);
    anvil_grammar_matcher_free(m);
    anvil_grammar *all[] = {a, a2, a3, cc, b2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        anvil_grammar_free(all[i]);
    /* capacity 0 keeps nothing */
    c = srv_gcache_create(0);
    assert_int_equal(srv_guided_compile(c, v, SRV_GUIDED_REGEX, "a+", 2, &a), ANVIL_OK);
    assert_int_equal(srv_guided_compile(c, v, SRV_GUIDED_REGEX, "a+", 2, &b), ANVIL_OK);
    assert_ptr_not_equal(a, b);
    stats(c, 0, 2, 0, 0);
    anvil_grammar_free(a);
    anvil_grammar_free(b);
    srv_gcache_free(c);
    anvil_grammar_vocab_free(v);
}

static void test_tools_hit(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = vocab();
    srv_gcache *c = srv_gcache_create(4);
    json_t *tools = json_loads("[{\"type\": \"function\", \"function\": {\"name\": \"ping\", \"parameters\": "
                               "{\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\"}}}}}]",
                               0, NULL);
    assert_non_null(tools);
    anvil_grammar *g[2];
    const char *tail;
    int status;
    char msg[256];
    for (int i = 0; i < 2; i++)
        assert_int_equal(srv_tools_force_cached(c, v, SRV_TOOLS_HERMES, tools, NULL, 1, &g[i], &tail, &status, msg,
                                                sizeof msg),
                         0);
    assert_ptr_equal(g[0], g[1]);
    stats(c, 1, 1, 0, 1);
    /* equal to the uncached forcing grammar */
    anvil_grammar_options o;
    srv_guided_json_options(&o);
    anvil_grammar *plain;
    assert_int_equal(srv_tools_force(v, &o, SRV_TOOLS_HERMES, tools, NULL, 1, &plain, &tail, &status, msg, sizeof msg),
                     0);
    same_masks(g[1], plain, "{\"name\": \"ping\", \"arguments\": {\"n\": 7}}");
    anvil_grammar_free(g[0]);
    anvil_grammar_free(g[1]);
    anvil_grammar_free(plain);
    json_decref(tools);
    srv_gcache_free(c);
    anvil_grammar_vocab_free(v);
}

typedef struct worker {
    srv_gcache *c;
    const anvil_grammar_vocab *v;
    int id, fails;
} worker;

/* Lookups, compiles, matchers and drops of 5 texts over a cache of 3. */
static void *work(void *p)
{
    worker *w = p;
    static const char *const re[5] = {"a+", "b+", "(ab)+", "[a-c]+", "a?b"};
    static const char *const ok[5] = {"aa", "b", "abab", "cab", "ab"};
    for (int i = 0; i < 60; i++) {
        const int k = (i * 7 + w->id) % 5;
        anvil_grammar *g;
        if (srv_guided_compile(w->c, w->v, SRV_GUIDED_REGEX, re[k], strlen(re[k]), &g) != ANVIL_OK) {
            w->fails++;
            continue;
        }
        anvil_grammar_matcher *m;
        if (anvil_grammar_matcher_create(g, &m) != ANVIL_OK ||
            anvil_grammar_matcher_accept_bytes(m, ok[k], strlen(ok[k])) != ANVIL_OK || !anvil_grammar_matcher_can_end(m))
            w->fails++;
        uint32_t mask[9];
        if (anvil_grammar_matcher_fill_mask(m, mask, 9) != ANVIL_OK) /* the grammar's shared mask cache */
            w->fails++;
        anvil_grammar_matcher_free(m);
        anvil_grammar_free(g);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = vocab();
    srv_gcache *c = srv_gcache_create(3);
    enum { T = 4 };
    pthread_t th[T];
    worker w[T];
    for (int i = 0; i < T; i++) {
        w[i] = (worker){.c = c, .v = v, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].fails, 0);
    }
    srv_gcache_stats s;
    srv_gcache_get_stats(c, &s);
    assert_int_equal(s.hits + s.misses, T * 60);
    assert_true(s.entries <= 3);
    assert_true(s.misses >= 5);
    srv_gcache_free(c);
    anvil_grammar_vocab_free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hit_equals_compile),
        cmocka_unit_test(test_eviction_keeps_users),
        cmocka_unit_test(test_tools_hit),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
