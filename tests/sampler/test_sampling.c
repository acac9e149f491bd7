/*
 * The sampler (src/sampler/): greedy, temperature, top-k, top-p, min-p,
 * seeded determinism, poisoned rows, the checks, and the internal seam for
 * device samplers (anvil_sample_draw, anvil_sampler_pick and its margin).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/sampling.h"
#include "sampler/sampler.h"
#include "testutil.h"

#define V 64

static void fill_logits(float *l, uint64_t seed)
{
    for (int i = 0; i < V; i++)
        l[i] = 3.0f * anvil_test_randf(&seed);
}

static void test_greedy_takes_first_max(void **s)
{
    (void)s;
    float l[V];
    fill_logits(l, 7);
    l[10] = 9.0f;
    l[20] = 9.0f;
    anvil_sampler *sm;
    assert_int_equal(anvil_sampler_create(V, &sm), ANVIL_OK);
    anvil_sampling_params p;
    anvil_sampling_params_default(&p);
    p.temperature = 0.0f;
    anvil_rng rng;
    anvil_rng_seed(&rng, 1);
    assert_int_equal(anvil_sampler_sample(sm, l, &p, &rng), 10);
    p.temperature = 1.0f;
    p.top_k = 1; /* top-k 1 is greedy too */
    assert_int_equal(anvil_sampler_sample(sm, l, &p, &rng), 10);
    anvil_sampler_free(sm);
}

static void test_same_seed_same_tokens(void **s)
{
    (void)s;
    float l[V];
    fill_logits(l, 3);
    anvil_sampler *sm;
    assert_int_equal(anvil_sampler_create(V, &sm), ANVIL_OK);
    anvil_sampling_params p = {.temperature = 0.9f, .top_k = 20, .top_p = 0.9f, .seed = 1234};
    int32_t a[100], b[100];
    anvil_rng r1, r2;
    anvil_rng_seed(&r1, p.seed);
    anvil_rng_seed(&r2, p.seed);
    int differ_from_first = 0;
    for (int i = 0; i < 100; i++) {
        a[i] = anvil_sampler_sample(sm, l, &p, &r1);
        b[i] = anvil_sampler_sample(sm, l, &p, &r2);
        assert_int_equal(a[i], b[i]);
        differ_from_first |= a[i] != a[0];
    }
    assert_true(differ_from_first); /* it does sample */
    anvil_rng_seed(&r2, p.seed + 1);
    int same = 0;
    for (int i = 0; i < 100; i++)
        same += anvil_sampler_sample(sm, l, &p, &r2) == a[i];
    assert_true(same < 100);
    anvil_sampler_free(sm);
}

/* Empirical frequencies follow softmax(l / T) restricted as top-k/top-p say. */
static void check_distribution(float temperature, int32_t top_k, float top_p)
{
    float l[V];
    fill_logits(l, 11);
    /* expected probabilities */
    int order[V];
    for (int i = 0; i < V; i++)
        order[i] = i;
    for (int i = 0; i < V; i++) /* sort ids by logit, descending, ties by id */
        for (int j = i + 1; j < V; j++)
            if (l[order[j]] > l[order[i]] || (l[order[j]] == l[order[i]] && order[j] < order[i])) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    double p[V] = {0}, sum = 0;
    int m = top_k > 0 && top_k < V ? top_k : V;
    for (int i = 0; i < m; i++)
        sum += exp((l[order[i]] - l[order[0]]) / temperature);
    double cum = 0;
    int keep = m;
    for (int i = 0; i < m; i++) {
        cum += exp((l[order[i]] - l[order[0]]) / temperature) / sum;
        if (cum >= top_p) {
            keep = i + 1;
            break;
        }
    }
    double ksum = 0;
    for (int i = 0; i < keep; i++)
        ksum += exp((l[order[i]] - l[order[0]]) / temperature);
    for (int i = 0; i < keep; i++)
        p[order[i]] = exp((l[order[i]] - l[order[0]]) / temperature) / ksum;

    anvil_sampler *sm;
    assert_int_equal(anvil_sampler_create(V, &sm), ANVIL_OK);
    anvil_sampling_params sp = {.temperature = temperature, .top_k = top_k, .top_p = top_p};
    anvil_rng rng;
    anvil_rng_seed(&rng, 99);
    const int N = 40000;
    int count[V] = {0};
    for (int i = 0; i < N; i++)
        count[anvil_sampler_sample(sm, l, &sp, &rng)]++;
    for (int i = 0; i < V; i++) {
        double f = (double)count[i] / N;
        if (p[i] == 0.0)
            assert_int_equal(count[i], 0); /* filtered out: never drawn */
        else
            assert_true(fabs(f - p[i]) < 5.0 * sqrt(p[i] * (1 - p[i]) / N) + 1e-3);
    }
    anvil_sampler_free(sm);
}

static void test_distributions(void **s)
{
    (void)s;
    check_distribution(1.0f, 0, 1.0f);
    check_distribution(0.5f, 0, 1.0f);
    check_distribution(1.3f, 8, 1.0f);
    check_distribution(1.0f, 0, 0.6f);
    check_distribution(0.8f, 16, 0.9f);
}

static void test_bad_params(void **s)
{
    (void)s;
    anvil_sampling_params p = {.temperature = -1.0f, .top_p = 1.0f};
    assert_status_msg(anvil_sampling_params_check(&p), ANVIL_ERR_INVALID_ARG, "temperature must be >= 0, got -1");
    p.temperature = INFINITY;
    assert_status_msg(anvil_sampling_params_check(&p), ANVIL_ERR_INVALID_ARG, "temperature");
    p.temperature = 1.0f;
    p.top_p = 0.0f;
    assert_status_msg(anvil_sampling_params_check(&p), ANVIL_ERR_INVALID_ARG, "top_p");
    p.top_p = 1.0f;
    p.top_k = -2;
    assert_status_msg(anvil_sampling_params_check(&p), ANVIL_ERR_INVALID_ARG, "top_k");
    p.top_k = -1; /* off, as 0 */
    assert_int_equal(anvil_sampling_params_check(&p), ANVIL_OK);
    p.min_p = -0.1f;
    assert_status_msg(anvil_sampling_params_check(&p), ANVIL_ERR_INVALID_ARG, "min_p");
    p.min_p = 1.5f;
    assert_status_msg(anvil_sampling_params_check(&p), ANVIL_ERR_INVALID_ARG, "min_p");
    anvil_sampling_params_default(&p);
    assert_int_equal(anvil_sampling_params_check(&p), ANVIL_OK);
    assert_true(p.temperature == 1.0f && p.top_k == 0 && p.top_p == 1.0f && p.min_p == 0.0f && p.seed == 0);
    assert_false(anvil_sampling_is_greedy(&p));
    p.top_k = 1;
    assert_true(anvil_sampling_is_greedy(&p));
    p.top_k = 0;
    p.temperature = 0.0f;
    assert_true(anvil_sampling_is_greedy(&p));
}

/* min-p keeps exactly the tokens with p_i >= min_p * p_max. */
static void test_min_p(void **s)
{
    (void)s;
    float l[V];
    for (int i = 0; i < V; i++)
        l[i] = -5.0f;
    l[3] = 2.0f;                   /* p_max */
    l[9] = 2.0f + logf(0.30f);     /* 0.30 of it: kept with min_p 0.25 */
    l[40] = 2.0f + logf(0.20f);    /* 0.20: dropped */
    anvil_sampler *sm;
    assert_int_equal(anvil_sampler_create(V, &sm), ANVIL_OK);
    anvil_sampling_params p;
    anvil_sampling_params_default(&p);
    p.min_p = 0.25f;
    anvil_rng rng;
    anvil_rng_seed(&rng, 5);
    int count[V] = {0};
    for (int i = 0; i < 4000; i++)
        count[anvil_sampler_sample(sm, l, &p, &rng)]++;
    assert_int_equal(count[3] + count[9], 4000);
    /* p(9) = 0.3 / 1.3 among the two survivors */
    assert_true(fabs(count[9] / 4000.0 - 0.3 / 1.3) < 0.03);
    anvil_sampler_free(sm);
}

/* A NaN or +inf anywhere, or nothing above -inf: -1 and no draw, greedy
 * or not; -inf entries alone are masked tokens, never chosen. */
static void test_poisoned_rows(void **s)
{
    (void)s;
    anvil_sampler *sm;
    assert_int_equal(anvil_sampler_create(V, &sm), ANVIL_OK);
    float l[V];
    const float temps[3] = {0.0f, 1.0f, 0.7f};
    for (int kind = 0; kind < 4; kind++) {
        fill_logits(l, 21);
        if (kind == 0)
            l[17] = NAN;
        else if (kind == 1)
            l[5] = INFINITY;
        else
            for (int i = 0; i < V; i++)
                l[i] = kind == 2 ? -INFINITY : (i % 3 ? -INFINITY : NAN);
        for (int t = 0; t < 3; t++) {
            anvil_sampling_params p;
            anvil_sampling_params_default(&p);
            p.temperature = temps[t];
            p.top_p = t == 2 ? 0.8f : 1.0f;
            anvil_rng rng, before;
            anvil_rng_seed(&rng, 1);
            before = rng;
            assert_int_equal(anvil_sampler_sample(sm, l, &p, &rng), -1);
            assert_memory_equal(&rng, &before, sizeof rng);
        }
    }
    /* masked: only the finite ones */
    for (int i = 0; i < V; i++)
        l[i] = i == 7 || i == 50 ? 0.0f : -INFINITY;
    anvil_sampling_params p;
    anvil_sampling_params_default(&p);
    anvil_rng rng;
    anvil_rng_seed(&rng, 2);
    for (int i = 0; i < 200; i++) {
        const int32_t t = anvil_sampler_sample(sm, l, &p, &rng);
        assert_true(t == 7 || t == 50);
    }
    anvil_sampler_free(sm);
}

/* The seam for device samplers: the draw made once, the pick with the draw
 * given = the drawing sampler, and the margin says how close it came. */
static void test_draw_and_margin(void **s)
{
    (void)s;
    anvil_sampling_params p;
    anvil_sampling_params_default(&p);
    p.temperature = 0.7f;
    p.min_p = 0.05f;
    anvil_sample_draw d;
    anvil_sample_draw_make(&d, &p, 0.25);
    assert_false(d.greedy);
    assert_true(d.inv_temperature == 1.0f / 0.7f);
    assert_true(d.log_min_p == logf(0.05f));
    assert_true(d.u == 0.25);
    p.min_p = 0.0f;
    p.temperature = 0.0f;
    anvil_sample_draw_make(&d, &p, 0.25);
    assert_true(d.greedy && d.u == 0.0 && d.log_min_p == -INFINITY);

    anvil_sampler *sm;
    assert_int_equal(anvil_sampler_create(V, &sm), ANVIL_OK);
    float l[V];
    uint64_t r = 99;
    for (int it = 0; it < 300; it++) {
        fill_logits(l, 1000 + (uint64_t)it);
        anvil_sampling_params_default(&p);
        p.temperature = 0.3f + (float)(it % 7) * 0.3f;
        p.top_k = (int32_t[]){0, 5, 20, -1}[it % 4];
        p.top_p = it % 3 ? 1.0f : 0.8f;
        p.min_p = it % 5 == 0 ? 0.1f : 0.0f;
        anvil_rng rng, copy;
        anvil_rng_seed(&rng, anvil_test_rand(&r));
        copy = rng;
        const int32_t want = anvil_sampler_sample(sm, l, &p, &rng);
        anvil_sample_draw_make(&d, &p, anvil_rng_uniform(&copy));
        assert_memory_equal(&rng, &copy, sizeof rng); /* one uniform each */
        double margin = -1.0;
        assert_int_equal(anvil_sampler_pick(sm, l, &d), want);
        assert_int_equal(anvil_sampler_pick_margin(sm, l, &d, &margin), want);
        assert_true(margin >= 0.0 && margin <= 1.0);
    }
    /* a draw just at a boundary: margin 0 */
    for (int i = 0; i < V; i++)
        l[i] = i < 4 ? 0.0f : -INFINITY; /* four equal tokens */
    anvil_sampling_params_default(&p);
    anvil_sample_draw_make(&d, &p, 0.5);
    double margin = 1.0;
    assert_int_equal(anvil_sampler_pick_margin(sm, l, &d, &margin), 2); /* r = 2.0: not below acc 2.0 */
    assert_true(margin == 0.0);
    p.temperature = 0.0f;
    anvil_sample_draw_make(&d, &p, 0.5);
    assert_int_equal(anvil_sampler_pick_margin(sm, l, &d, &margin), 0);
    assert_true(margin == INFINITY);
    anvil_sampler_free(sm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_takes_first_max),
        cmocka_unit_test(test_same_seed_same_tokens),
        cmocka_unit_test(test_distributions),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_poisoned_rows),
        cmocka_unit_test(test_draw_and_margin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
