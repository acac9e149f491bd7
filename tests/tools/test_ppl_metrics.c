/* anvil perplexity's arithmetic (tools/ppl_metrics.c) on hand-made logits
 * with known answers. */
#include <math.h>
#include <stdlib.h>

#include "ppl_metrics.h"
#include "testutil.h"

static void test_logsumexp(void **state)
{
    (void)state;
    const float two[2] = {0.0f, 0.0f};
    assert_float_equal(ppl_logsumexp(two, 2), log(2.0), 1e-15);
    /* shifted by the maximum: no overflow at 1000 (exp(1000) is inf) */
    const float big[3] = {1000.0f, 1000.0f, -INFINITY};
    assert_float_equal(ppl_logsumexp(big, 3), 1000.0 + log(2.0), 1e-12);
    const float none[2] = {-INFINITY, -INFINITY};
    assert_true(ppl_logsumexp(none, 2) == -INFINITY);
    const float nan_row[2] = {0.0f, NAN};
    assert_true(isnan(ppl_logsumexp(nan_row, 2)));
    const float inf_row[2] = {0.0f, INFINITY};
    assert_true(isnan(ppl_logsumexp(inf_row, 2)));
}

static void test_argmax_lowest_on_ties(void **state)
{
    (void)state;
    const float x[5] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
    assert_int_equal(ppl_argmax(x, 5), 1);
    assert_int_equal(ppl_argmax(x, 1), 0);
}

static void test_score_known_probabilities(void **state)
{
    (void)state;
    /* p = (0.1, 0.2, 0.3, 0.4), shifted by 7 (softmax ignores a shift) */
    float row[4];
    for (int i = 0; i < 4; i++)
        row[i] = (float)(log(0.1 * (i + 1)) + 7.0);
    ppl_token t;
    assert_int_equal(ppl_score(row, 4, 3, &t), 0);
    assert_float_equal(t.p, 0.4, 1e-6);
    assert_float_equal(t.nll, -log(0.4), 1e-6);
    assert_float_equal(t.kl, 0.0, 0.0);             /* no base */
    assert_int_equal(ppl_score(row, 4, 4, &t), -1); /* target outside */
    row[2] = NAN;
    assert_int_equal(ppl_score(row, 4, 0, &t), -1);
}

static void test_compare_equal_rows_is_zero(void **state)
{
    (void)state;
    float row[64];
    uint64_t rng = 42;
    for (int i = 0; i < 64; i++)
        row[i] = (float)(anvil_test_rand(&rng) % 2000) / 100.0f - 10.0f;
    ppl_token t;
    assert_int_equal(ppl_compare(row, row, 64, 5, &t), 0);
    assert_true(t.kl == 0.0); /* exactly: the same terms cancel */
    assert_int_equal(t.same_top, 1);
    assert_true(t.p == t.p_base && t.nll == t.nll_base);
}

static void test_compare_known_kl_and_direction(void **state)
{
    (void)state;
    /* P = (1/2, 1/2), Q = (1/4, 3/4): KL(P||Q) = 1/2 ln(4/3), KL(Q||P) = 3/4 ln(3/2) - 1/4 ln 2 */
    const float p[2] = {0.0f, 0.0f};
    const float q[2] = {(float)log(0.25), (float)log(0.75)};
    ppl_token t;
    assert_int_equal(ppl_compare(p, q, 2, 0, &t), 0);
    assert_float_equal(t.kl, 0.5 * log(4.0 / 3.0), 1e-7);
    assert_float_equal(t.p_base, 0.5, 1e-12);
    assert_float_equal(t.p, 0.25, 1e-7);
    assert_float_equal(t.nll - t.nll_base, log(2.0), 1e-7);
    assert_int_equal(t.same_top, 0); /* P's argmax is 0 (tie, lowest), Q's is 1 */
    assert_int_equal(ppl_compare(q, p, 2, 0, &t), 0);
    assert_float_equal(t.kl, 0.75 * log(1.5) - 0.25 * log(2.0), 1e-7);
}

static void test_compare_zero_probabilities(void **state)
{
    (void)state;
    /* P gives token 2 nothing: Q's mass there costs nothing in KL(P||Q) */
    const float p[3] = {0.0f, 0.0f, -INFINITY};
    const float q[3] = {0.0f, 0.0f, 0.0f};
    ppl_token t;
    assert_int_equal(ppl_compare(p, q, 3, 1, &t), 0);
    assert_float_equal(t.kl, log(1.5), 1e-7); /* sum 1/2 ln((1/2)/(1/3)) twice */
    /* Q gives nothing where P gives 1/3: infinite */
    assert_int_equal(ppl_compare(q, p, 3, 1, &t), 0);
    assert_true(isinf(t.kl) && t.kl > 0);
    const float nan_row[3] = {0.0f, NAN, 0.0f};
    assert_int_equal(ppl_compare(p, nan_row, 3, 0, &t), -1);
    assert_int_equal(ppl_compare(nan_row, p, 3, 0, &t), -1);
}

/* A wide vocabulary in double: uniform P over V, Q with one logit raised by
 * d. KL(P||Q) = ln(Z/V) - d/V with Z = V - 1 + e^d, about 4e-8: a float
 * log-sum-exp (~1e-6 off at ln V = 11.8) would lose it entirely. */
static void test_compare_wide_vocab_precision(void **state)
{
    (void)state;
    const int64_t V = 131072;
    const double d = 0.1;
    float *p = calloc((size_t)V, sizeof *p), *q = calloc((size_t)V, sizeof *q);
    assert_non_null(p);
    assert_non_null(q);
    q[77] = (float)d;
    ppl_token t;
    assert_int_equal(ppl_compare(p, q, V, 77, &t), 0);
    const double want = log1p(expm1((double)(float)d) / (double)V) - (double)(float)d / (double)V;
    assert_true(want > 0);
    assert_true(fabs(t.kl - want) < 1e-5 * want);
    free(p);
    free(q);
}

static void test_percentile_interpolates(void **state)
{
    (void)state;
    const double v[5] = {0.0, 1.0, 2.0, 3.0, 4.0};
    assert_float_equal(ppl_percentile(v, 5, 0.5), 2.0, 1e-15);
    assert_float_equal(ppl_percentile(v, 5, 0.99), 3.96, 1e-12);
    assert_float_equal(ppl_percentile(v, 5, 0.999), 3.996, 1e-12);
    assert_float_equal(ppl_percentile(v, 5, 1.0), 4.0, 0.0);
    assert_float_equal(ppl_percentile(v, 5, 0.0), 0.0, 0.0);
    assert_float_equal(ppl_percentile(v, 1, 0.7), 0.0, 0.0);
    assert_float_equal(ppl_percentile(v, 0, 0.7), 0.0, 0.0);
}

static void test_acc_model_only(void **state)
{
    (void)state;
    ppl_acc a;
    assert_int_equal(ppl_acc_init(&a, 0, 4), 0);
    ppl_summary s;
    assert_int_equal(ppl_acc_summary(&a, &s), -1); /* nothing scored */
    const double nll[4] = {1.0, 2.0, 3.0, 4.0};
    for (int i = 0; i < 4; i++) {
        ppl_token t = {.nll = nll[i]};
        assert_int_equal(ppl_acc_add(&a, &t), 0);
    }
    ppl_token extra = {.nll = 1.0};
    assert_int_equal(ppl_acc_add(&a, &extra), -1); /* past cap */
    assert_int_equal(ppl_acc_summary(&a, &s), 0);
    assert_int_equal(s.n, 4);
    assert_float_equal(s.mean_nll, 2.5, 1e-15);
    assert_float_equal(s.ppl, exp(2.5), 1e-12);
    /* sample variance 5/3, standard error sqrt(5/12), through exp */
    assert_float_equal(s.ppl_err, exp(2.5) * sqrt(5.0 / 12.0), 1e-9);
    ppl_acc_free(&a);
}

static void test_acc_with_base(void **state)
{
    (void)state;
    ppl_acc a;
    assert_int_equal(ppl_acc_init(&a, 1, 4), 0);
    /* kl 0.1, 0.2, 0.3, 0.4; model nll = base nll + 0.1 (a constant
     * difference: the ratio is exp(0.1) with no error); top-1 agrees on 3 */
    for (int i = 0; i < 4; i++) {
        ppl_token t = {.nll_base = 1.0 + i, .nll = 1.1 + i, .kl = 0.1 * (4 - i), .same_top = i != 2};
        t.p = exp(-t.nll);
        t.p_base = exp(-t.nll_base);
        assert_int_equal(ppl_acc_add(&a, &t), 0);
    }
    ppl_summary s;
    assert_int_equal(ppl_acc_summary(&a, &s), 0);
    assert_float_equal(s.base_ppl, exp(2.5), 1e-12);
    assert_float_equal(s.ppl, exp(2.6), 1e-12);
    assert_float_equal(s.ratio, exp(0.1), 1e-12);
    assert_true(s.ratio_err < 1e-6);
    assert_float_equal(s.kl_mean, 0.25, 1e-15);
    assert_float_equal(s.kl_err, sqrt((0.05 / 3.0) / 4.0), 1e-12);
    assert_float_equal(s.kl_median, 0.25, 1e-12);
    assert_float_equal(s.kl_p99, 0.397, 1e-12);
    assert_float_equal(s.kl_max, 0.4, 1e-15);
    assert_float_equal(s.top1, 0.75, 1e-15);
    assert_float_equal(s.top1_err, sqrt(0.75 * 0.25 / 3.0), 1e-12);
    double sum = 0, sum2 = 0, mx = 0;
    for (int i = 0; i < 4; i++) {
        const double dp = exp(-(1.1 + i)) - exp(-(1.0 + i));
        sum += dp;
        sum2 += dp * dp;
        mx = fmax(mx, fabs(dp));
    }
    assert_float_equal(s.dp_mean, sum / 4, 1e-12);
    assert_float_equal(s.dp_rms, sqrt(sum2 / 4), 1e-12);
    assert_float_equal(s.abs_dp_max, mx, 1e-15);
    assert_true(s.abs_dp_p99 <= mx && s.abs_dp_p99 > 0);
    ppl_acc_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logsumexp),
        cmocka_unit_test(test_argmax_lowest_on_ties),
        cmocka_unit_test(test_score_known_probabilities),
        cmocka_unit_test(test_compare_equal_rows_is_zero),
        cmocka_unit_test(test_compare_known_kl_and_direction),
        cmocka_unit_test(test_compare_zero_probabilities),
        cmocka_unit_test(test_compare_wide_vocab_precision),
        cmocka_unit_test(test_percentile_interpolates),
        cmocka_unit_test(test_acc_model_only),
        cmocka_unit_test(test_acc_with_base),
    };
    return anvil_test_run_group(tests);
}
