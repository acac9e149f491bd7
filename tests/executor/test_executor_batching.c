/*
 * In-flight batching on the CPU backend:
 *  - greedy outputs equal Hugging Face's (the golden continuations);
 *  - batch invariance: a request's greedy output, and its sampled output
 *    with a fixed seed, are identical run alone and among 31 others (with
 *    an f32 and an fp8 KV cache) of
 *    different lengths that join and leave at different steps (some are
 *    enqueued from callbacks while others run; prompts are chunked);
 *  - streamed events carry exactly the result's tokens, one final event;
 *  - stats add up, and every block is free or cached when idle.
 */
#include <time.h>

#include "exec_testkit.h"

static void test_greedy_matches_golden(void **state)
{
    (void)state;
    kit_case cases[8];
    int n = kit_cases("stories260K", cases, 8);
    anvil_runtime_options o;
    kit_rt_options(&o);
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_executor *ex = kit_executor(rt, NULL, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    uint64_t ids[8];
    for (int i = 0; i < n; i++) {
        anvil_request r;
        anvil_request_init(&r);
        r.prompt_ids = cases[i].ids;
        r.n_prompt_ids = cases[i].n_ids;
        r.sampling.temperature = 0;
        r.max_tokens = cases[i].n_greedy;
        r.retain_result = 1;
        KIT_OK(anvil_executor_enqueue(ex, &r, &ids[i]));
    }
    for (int i = 0; i < n; i++) {
        anvil_result *res;
        KIT_OK(anvil_executor_wait(ex, ids[i], &res));
        char what[64];
        snprintf(what, sizeof what, "stories260K prompt%d greedy", i);
        assert_int_equal(res->status, ANVIL_OK);
        assert_int_equal(res->n_sequences, 1);
        kit_expect_ids(what, res->sequences[0].token_ids, res->sequences[0].n_tokens, cases[i].greedy,
                       cases[i].n_greedy);
        anvil_result_free(res);
    }
    anvil_executor_free(ex);
    anvil_runtime_free(rt);
}

/* ---- batch invariance */

#define N_REQ (ANVIL_TEST_TSAN ? 16 : 32) /* fewer under TSan (testutil.h) */

typedef struct inv_req {
    int32_t prompt[300];
    int32_t n_prompt;
    int32_t max_tokens;
    int sampled;
    uint64_t seed;
    int32_t out[128];
    int32_t n_out;
    anvil_request_finish finish;
} inv_req;

typedef struct inv_ctx inv_ctx;
typedef struct inv_slot {
    inv_ctx *c;
    int i;
} inv_slot;

struct inv_ctx {
    anvil_executor *ex;
    inv_req *reqs;
    pthread_mutex_t mu;    /* guards ids, next and fail: callbacks and the test thread both enqueue */
    uint64_t ids[N_REQ];
    int next;              /* next request to enqueue */
    int fail;
    inv_slot slots[N_REQ];
    kit_stream streams[N_REQ]; /* written by callbacks only */
};

static void make_requests(inv_req *reqs, const kit_case *cases, int n_cases)
{
    uint64_t rng = 77;
    for (int i = 0; i < N_REQ; i++) {
        inv_req *q = &reqs[i];
        memset(q, 0, sizeof *q);
        if (i < n_cases && cases[i].n_ids <= 300) {
            memcpy(q->prompt, cases[i].ids, (size_t)cases[i].n_ids * 4);
            q->n_prompt = cases[i].n_ids;
        } else {
            q->n_prompt = 1 + (int32_t)(anvil_test_rand(&rng) % 200);
            q->prompt[0] = 1; /* BOS */
            for (int32_t k = 1; k < q->n_prompt; k++)
                q->prompt[k] = 3 + (int32_t)(anvil_test_rand(&rng) % 509);
        }
        q->max_tokens = 4 + (int32_t)(anvil_test_rand(&rng) % 60);
        q->sampled = i % 2;
        q->seed = 1000 + (uint64_t)i;
    }
}

static void fill_request(anvil_request *r, const inv_req *q)
{
    anvil_request_init(r);
    r->prompt_ids = q->prompt;
    r->n_prompt_ids = q->n_prompt;
    r->max_tokens = q->max_tokens;
    if (q->sampled) {
        r->sampling.temperature = 0.9f;
        r->sampling.top_p = 0.95f;
        r->sampling.top_k = 40;
        r->sampling.seed = q->seed;
        r->has_seed = 1;
    } else {
        r->sampling.temperature = 0;
    }
    r->retain_result = 1;
}

static void enqueue_next(inv_ctx *c);

static void on_event(void *user, const anvil_event *ev)
{
    inv_slot *slot = user;
    inv_ctx *c = slot->c;
    const int i = slot->i;
    kit_on_event(&c->streams[i], ev);
    /* requests join while others run: the third token of request i lets
     * one more in */
    if (ev->kind == ANVIL_EVENT_TOKENS && c->streams[i].n_tokens[0] == 3)
        enqueue_next(c);
}

static void enqueue_next(inv_ctx *c)
{
    pthread_mutex_lock(&c->mu);
    if (c->next < N_REQ) {
        int i = c->next++;
        anvil_request r;
        fill_request(&r, &c->reqs[i]);
        r.on_event = on_event;
        c->slots[i] = (inv_slot){.c = c, .i = i};
        r.user = &c->slots[i];
        if (anvil_executor_enqueue(c->ex, &r, &c->ids[i]) != ANVIL_OK)
            c->fail = 1;
    }
    pthread_mutex_unlock(&c->mu);
}

static uint64_t id_of(inv_ctx *c, int i, int *next)
{
    pthread_mutex_lock(&c->mu);
    uint64_t id = c->ids[i];
    *next = c->next;
    pthread_mutex_unlock(&c->mu);
    return id;
}

static void run_alone(anvil_executor *ex, inv_req *q)
{
    anvil_request r;
    fill_request(&r, q);
    anvil_result *res = kit_run(ex, &r);
    assert_int_equal(res->status, ANVIL_OK);
    q->n_out = res->sequences[0].n_tokens;
    memcpy(q->out, res->sequences[0].token_ids, (size_t)q->n_out * 4);
    q->finish = res->sequences[0].finish;
    anvil_result_free(res);
}

/* kv_dtype: the runtime's kv_cache_dtype (NULL: auto, f32 for stories260K) */
static void check_invariance(anvil_capacity_policy policy, int64_t kv_tokens, const char *kv_dtype)
{
    kit_case cases[8];
    int n_cases = kit_cases("stories260K", cases, 8);
    inv_req *reqs = calloc(N_REQ, sizeof *reqs);
    inv_ctx *c = calloc(1, sizeof *c);
    assert_true(reqs && c);
    make_requests(reqs, cases, n_cases);

    anvil_runtime_options o;
    kit_rt_options(&o);
    o.kv_cache_dtype = kv_dtype;
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_executor *ex = kit_executor(rt, NULL, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    for (int i = 0; i < N_REQ; i++)
        run_alone(ex, &reqs[i]);
    anvil_executor_free(ex);
    anvil_runtime_free(rt);

    /* all together, on a fresh runtime (maybe a small pool) */
    o.kv_cache_tokens = kv_tokens;
    rt = kit_load("stories260K", &o);
    ex = kit_executor(rt, NULL, policy);
    c->ex = ex;
    c->reqs = reqs;
    pthread_mutex_init(&c->mu, NULL);
    for (int i = 0; i < 8; i++)
        enqueue_next(c);
    /* the rest join from callbacks; if the executor goes idle first, the
     * next one is added from here */
    for (int i = 0; i < N_REQ; i++) {
        int next;
        uint64_t id;
        while ((id = id_of(c, i, &next)) == 0) {
            anvil_executor_metrics m;
            KIT_OK(anvil_executor_stats(ex, &m));
            if (m.running == 0 && m.queued == 0 && next == i)
                enqueue_next(c); /* idle: no callback will */
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
        anvil_result *res;
        KIT_OK(anvil_executor_wait(ex, id, &res));
        char what[96];
        snprintf(what, sizeof what, "request %d (%s, prompt %d, max %d) in the batch", i,
                 reqs[i].sampled ? "sampled" : "greedy", reqs[i].n_prompt, reqs[i].max_tokens);
        assert_int_equal(res->status, ANVIL_OK);
        kit_expect_ids(what, res->sequences[0].token_ids, res->sequences[0].n_tokens, reqs[i].out, reqs[i].n_out);
        assert_int_equal(res->sequences[0].finish, reqs[i].finish);
        /* the stream carried the same tokens and one final event */
        kit_expect_ids("streamed tokens", c->streams[i].tokens[0], c->streams[i].n_tokens[0], reqs[i].out,
                       reqs[i].n_out);
        assert_int_equal(c->streams[i].n_final, 1);
        assert_false(c->streams[i].bad);
        anvil_result_free(res);
    }
    pthread_mutex_lock(&c->mu);
    assert_false(c->fail);
    pthread_mutex_unlock(&c->mu);
    anvil_executor_metrics m = kit_idle(ex);
    assert_int_equal(m.kv_blocks_used, 0);
    assert_int_equal(m.kv_blocks_free + m.kv_blocks_cached, m.kv_blocks_total);
    assert_int_equal(m.requests_finished, N_REQ);
    if (policy == ANVIL_CAPACITY_GUARANTEED_NO_EVICT)
        assert_int_equal(m.preemptions, 0);
    int64_t gen = 0;
    for (int i = 0; i < N_REQ; i++)
        gen += reqs[i].n_out;
    assert_int_equal(m.generated_tokens, gen);
    print_message("policy %d, %lld KV tokens (%s): %lld steps, %lld preemptions, %lld/%lld prompt tokens cached\n",
                  (int)policy, (long long)kv_tokens, kv_dtype ? kv_dtype : "auto", (long long)m.steps,
                  (long long)m.preemptions,
                  (long long)m.cached_prompt_tokens, (long long)m.prompt_tokens);
    if (kv_tokens < 4096 && policy == ANVIL_CAPACITY_MAX_UTILIZATION)
        assert_true(m.preemptions > 0); /* the small pool did force preemption */
    anvil_executor_free(ex);
    anvil_runtime_free(rt);
    pthread_mutex_destroy(&c->mu);
    free(reqs);
    free(c);
}

static void test_batch_invariance(void **state)
{
    (void)state;
    /* with an fp8 KV cache: the cache's rounding is per element, so it
     * keeps the invariance (the small pools below run the default f32) */
    check_invariance(ANVIL_CAPACITY_GUARANTEED_NO_EVICT, 16 * 512, "fp8");
}

static void test_batch_invariance_preemption(void **state)
{
    (void)state;
    /* 40 blocks of 16: a few requests at a time; max-utilization preempts */
    check_invariance(ANVIL_CAPACITY_MAX_UTILIZATION, 16 * 40, NULL);
}

static void test_batch_invariance_no_evict_small(void **state)
{
    (void)state;
    /* the same small pool under guaranteed-no-evict: fewer at once, never preempted */
    check_invariance(ANVIL_CAPACITY_GUARANTEED_NO_EVICT, 16 * 40, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_matches_golden),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_batch_invariance_preemption),
        cmocka_unit_test(test_batch_invariance_no_evict_small),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
