/* Sampling: greedy, temperature, top-k, top-p, and seeded determinism. */
#include <math.h>
#include <stdlib.h>

#include "anvil/sampling.h"
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
    assert_status_msg(anvil_sampling_params_check(&p), ANVIL_ERR_INVALID_ARG, "temperature");
    p.temperature = 1.0f;
    p.top_p = 0.0f;
    assert_status_msg(anvil_sampling_params_check(&p), ANVIL_ERR_INVALID_ARG, "top_p");
    p.top_p = 1.0f;
    p.top_k = -2;
    assert_status_msg(anvil_sampling_params_check(&p), ANVIL_ERR_INVALID_ARG, "top_k");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_takes_first_max),
        cmocka_unit_test(test_same_seed_same_tokens),
        cmocka_unit_test(test_distributions),
        cmocka_unit_test(test_bad_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
