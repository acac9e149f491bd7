/*
 * Preemption and recompute of requests with several sequences: n > 1
 * samples and beam searches (with end-of-sequence tokens made likely, so
 * that beams finish at different lengths) run together on a pool so small
 * that max-utilization keeps preempting them. Their results equal those of
 * each request run alone on a large pool, and those of the same mix under
 * guaranteed-no-evict (which must never preempt), with other block sizes.
 */
#include <math.h>

#include "exec_testkit.h"

#define N_MIX 10

typedef struct mix_req {
    int32_t prompt[80];
    int32_t n_prompt;
    int kind;              /* 0: n = 3 samples; 1: beams; 2: greedy */
    int32_t max_tokens;
} mix_req;

static void make_mix(mix_req *m)
{
    uint64_t rng = 99;
    for (int i = 0; i < N_MIX; i++) {
        m[i].n_prompt = 5 + (int32_t)(anvil_test_rand(&rng) % 70);
        m[i].prompt[0] = 1;
        for (int32_t k = 1; k < m[i].n_prompt; k++)
            m[i].prompt[k] = 3 + (int32_t)(anvil_test_rand(&rng) % 509);
        m[i].kind = i % 3;
        m[i].max_tokens = 10 + (int32_t)(anvil_test_rand(&rng) % 30);
    }
}

static anvil_request mix_request(const mix_req *q, int32_t eos)
{
    static anvil_logit_bias bias;
    bias.token = eos;
    bias.bias = 21.5f; /* the end token becomes a frequent choice */
    anvil_request r;
    anvil_request_init(&r);
    r.prompt_ids = q->prompt;
    r.n_prompt_ids = q->n_prompt;
    r.max_tokens = q->max_tokens;
    r.logit_bias = &bias;
    r.n_logit_bias = 1;
    r.retain_result = 1;
    if (q->kind == 0) {
        r.n = 3;
        r.sampling.temperature = 1.0f;
        r.sampling.seed = 42;
        r.has_seed = 1;
    } else if (q->kind == 1) {
        r.beam_width = 3;
        r.logprobs = 2;
    } else {
        r.sampling.temperature = 0;
    }
    return r;
}

static void expect_same(const char *what, const anvil_result *a, const anvil_result *b)
{
    assert_int_equal(a->status, ANVIL_OK);
    assert_int_equal(b->status, ANVIL_OK);
    if (a->n_sequences != b->n_sequences)
        fail_msg("%s: %d sequences vs %d", what, a->n_sequences, b->n_sequences);
    for (int32_t i = 0; i < a->n_sequences; i++) {
        const anvil_sequence_output *x = &a->sequences[i], *y = &b->sequences[i];
        char w[128];
        snprintf(w, sizeof w, "%s, sequence %d", what, i);
        kit_expect_ids(w, x->token_ids, x->n_tokens, y->token_ids, y->n_tokens);
        assert_int_equal(x->finish, y->finish);
        if (x->score != y->score)
            fail_msg("%s: score %.9g vs %.9g", w, x->score, y->score);
    }
}

/* Runs the mix together; results[i] receive the results. */
static anvil_executor_metrics run_mix(const mix_req *m, anvil_capacity_policy policy, int32_t block, int64_t kv_tokens,
                                      anvil_result **results)
{
    anvil_runtime_options o;
    kit_rt_options(&o);
    o.kv_block_size = block;
    o.kv_cache_tokens = kv_tokens;
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_executor *ex = kit_executor(rt, NULL, policy);
    const int32_t eos = anvil_runtime_config(rt)->eos_token_ids[0];
    uint64_t ids[N_MIX];
    for (int i = 0; i < N_MIX; i++) {
        anvil_request r = mix_request(&m[i], eos);
        KIT_OK(anvil_executor_enqueue(ex, &r, &ids[i]));
    }
    for (int i = 0; i < N_MIX; i++)
        KIT_OK(anvil_executor_wait(ex, ids[i], &results[i]));
    anvil_executor_metrics met = kit_idle(ex);
    assert_int_equal(met.kv_blocks_used, 0);
    anvil_executor_free(ex);
    anvil_runtime_free(rt);
    return met;
}

static void test_multi_sequence_preemption(void **state)
{
    (void)state;
    mix_req m[N_MIX];
    make_mix(m);
    anvil_result *alone[N_MIX], *res[N_MIX];

    /* each alone, large pool */
    anvil_runtime_options o;
    kit_rt_options(&o);
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_executor *ex = kit_executor(rt, NULL, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    const int32_t eos = anvil_runtime_config(rt)->eos_token_ids[0];
    int ended_early = 0;
    for (int i = 0; i < N_MIX; i++) {
        anvil_request r = mix_request(&m[i], eos);
        alone[i] = kit_run(ex, &r);
        for (int32_t k = 0; k < alone[i]->n_sequences; k++)
            ended_early += alone[i]->sequences[k].finish == ANVIL_REQUEST_STOP;
        if (m[i].kind == 1) {
            /* beams: best first; each score is its log-probabilities over its length */
            for (int32_t k = 0; k < alone[i]->n_sequences; k++) {
                const anvil_sequence_output *s = &alone[i]->sequences[k];
                if (k > 0)
                    assert_true(s->score <= alone[i]->sequences[k - 1].score);
                assert_true(s->finish == ANVIL_REQUEST_STOP || s->n_tokens == m[i].max_tokens);
            }
        }
    }
    print_message("%d sequences ended by the end token\n", ended_early);
    assert_true(ended_early >= 8 && ended_early <= 20); /* the bias made many, not all, end early */
    anvil_executor_free(ex);
    anvil_runtime_free(rt);

    /* together under max-utilization on 16 blocks of 16: preempted and recomputed */
    anvil_executor_metrics met = run_mix(m, ANVIL_CAPACITY_MAX_UTILIZATION, 16, 16 * 16, res);
    print_message("max-utilization, 16 blocks: %lld preemptions, %lld steps\n", (long long)met.preemptions,
                  (long long)met.steps);
    assert_true(met.preemptions > 0);
    for (int i = 0; i < N_MIX; i++) {
        char what[64];
        snprintf(what, sizeof what, "request %d (kind %d), max-utilization", i, m[i].kind);
        expect_same(what, res[i], alone[i]);
        anvil_result_free(res[i]);
    }
    /* guaranteed-no-evict on the same pool, and other block sizes */
    met = run_mix(m, ANVIL_CAPACITY_GUARANTEED_NO_EVICT, 16, 16 * 16, res);
    assert_int_equal(met.preemptions, 0);
    for (int i = 0; i < N_MIX; i++) {
        char what[64];
        snprintf(what, sizeof what, "request %d (kind %d), no-evict", i, m[i].kind);
        expect_same(what, res[i], alone[i]);
        anvil_result_free(res[i]);
    }
    met = run_mix(m, ANVIL_CAPACITY_MAX_UTILIZATION, 4, 4 * 64, res);
    for (int i = 0; i < N_MIX; i++) {
        char what[64];
        snprintf(what, sizeof what, "request %d (kind %d), blocks of 4", i, m[i].kind);
        expect_same(what, res[i], alone[i]);
        anvil_result_free(res[i]);
    }
    for (int i = 0; i < N_MIX; i++)
        anvil_result_free(alone[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_multi_sequence_preemption),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
