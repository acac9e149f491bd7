/*
 * One compiled grammar shared by many threads (as by the requests of a
 * server): each thread walks its own matchers through it while the others
 * fill the shared mask cache; every mask equals the one a single thread
 * computes on a fresh grammar along the same tokens. Threads go in pairs
 * along the same tokens and start together, so two of them often miss on
 * the same key at once: one computes the entry while the other waits for
 * it (gram_mask_fill's pending keys).
 */
#include <pthread.h>

#include "gram_testkit.h"

#define N_THREADS 8
#define N_STEPS 40

static const char SCHEMA[] =
    "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"},\"b\":{\"type\":\"array\",\"items\":"
    "{\"type\":\"integer\",\"minimum\":-9,\"maximum\":99},\"maxItems\":6},\"c\":{\"enum\":[\"x\",\"yy\",true]}},"
    "\"required\":[\"a\",\"b\"]}";

typedef struct job {
    const anvil_grammar *g;
    const anvil_grammar_vocab *v;
    uint64_t seed;
    int32_t tokens[N_STEPS];
    uint32_t *masks; /* (N_STEPS, words) */
    int n;
    anvil_status st;
    pthread_barrier_t *start;
} job;

static void *run(void *arg)
{
    job *j = arg;
    size_t nw = anvil_grammar_vocab_mask_words(j->v);
    anvil_grammar_matcher *m;
    if ((j->st = anvil_grammar_matcher_create(j->g, &m)) != ANVIL_OK)
        return NULL;
    uint64_t rng = j->seed;
    pthread_barrier_wait(j->start);
    for (j->n = 0; j->n < N_STEPS && !anvil_grammar_matcher_is_done(m); j->n++) {
        uint32_t *w = j->masks + (size_t)j->n * nw;
        if ((j->st = anvil_grammar_matcher_fill_mask(m, w, nw)) != ANVIL_OK)
            break;
        int32_t cnt = 0, pick;
        for (size_t i = 0; i < nw; i++)
            cnt += __builtin_popcount(w[i]);
        if (cnt == 0)
            break;
        pick = (int32_t)(anvil_test_rand(&rng) % (uint64_t)cnt);
        int32_t id = -1;
        for (size_t i = 0; i < nw && id < 0; i++)
            for (uint32_t x = w[i]; x; x &= x - 1)
                if (pick-- == 0) {
                    id = (int32_t)(i * 32 + (size_t)__builtin_ctz(x));
                    break;
                }
        j->tokens[j->n] = id;
        if ((j->st = anvil_grammar_matcher_accept_token(m, id)) != ANVIL_OK)
            break;
    }
    anvil_grammar_matcher_free(m);
    return NULL;
}

static void test_shared_grammar(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = gt_tok_vocab("models/tinycode", NULL);
    size_t nw = anvil_grammar_vocab_mask_words(v);
    anvil_grammar *shared;
    OK(anvil_grammar_compile_json_schema(v, SCHEMA, sizeof SCHEMA - 1, NULL, &shared));
    job jobs[N_THREADS];
    pthread_t th[N_THREADS];
    pthread_barrier_t start;
    assert_int_equal(pthread_barrier_init(&start, NULL, N_THREADS), 0);
    for (int t = 0; t < N_THREADS; t++) {
        memset(&jobs[t], 0, sizeof jobs[t]);
        jobs[t].g = shared;
        jobs[t].v = v;
        jobs[t].seed = 1000 + (uint64_t)(t / 2); /* pairs on the same tokens */
        jobs[t].start = &start;
        jobs[t].masks = calloc(N_STEPS * nw, 4);
        assert_non_null(jobs[t].masks);
        assert_int_equal(pthread_create(&th[t], NULL, run, &jobs[t]), 0);
    }
    for (int t = 0; t < N_THREADS; t++)
        assert_int_equal(pthread_join(th[t], NULL), 0);
    pthread_barrier_destroy(&start);
    /* the same tokens on a fresh grammar, one thread: the same masks */
    uint32_t *w = calloc(nw, 4);
    for (int t = 0; t < N_THREADS; t++) {
        OK(jobs[t].st);
        assert_true(jobs[t].n > 0);
        anvil_grammar *g;
        OK(anvil_grammar_compile_json_schema(v, SCHEMA, sizeof SCHEMA - 1, NULL, &g));
        anvil_grammar_matcher *m;
        OK(anvil_grammar_matcher_create(g, &m));
        for (int k = 0; k < jobs[t].n; k++) {
            OK(anvil_grammar_matcher_fill_mask(m, w, nw));
            assert_memory_equal(w, jobs[t].masks + (size_t)k * nw, nw * 4);
            OK(anvil_grammar_matcher_accept_token(m, jobs[t].tokens[k]));
        }
        anvil_grammar_matcher_free(m);
        anvil_grammar_free(g);
        free(jobs[t].masks);
    }
    free(w);
    anvil_grammar_free(shared);
    anvil_grammar_vocab_free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_shared_grammar)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
