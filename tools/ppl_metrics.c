/* The arithmetic of anvil perplexity (see ppl_metrics.h). */
#include "ppl_metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Kahan-compensated sum: 131072 terms of one size summed one by one drift
 * by ~1e-12 in the same direction, which is all of a small KL divergence
 * (tests/tools/test_ppl_metrics.c, the wide vocabulary). */
typedef struct ksum {
    double s, c;
} ksum;

static void ksum_add(ksum *k, double v)
{
    const double y = v - k->c, t = k->s + y;
    k->c = (t - k->s) - y;
    k->s = t;
}

double ppl_logsumexp(const float *x, int64_t n)
{
    double mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        const double v = x[i];
        if (isnan(v) || v == INFINITY)
            return NAN;
        if (v > mx)
            mx = v;
    }
    if (mx == -INFINITY)
        return -INFINITY;
    ksum sum = {0, 0};
    for (int64_t i = 0; i < n; i++)
        ksum_add(&sum, exp((double)x[i] - mx)); /* -inf entries add exp(-inf) = 0 */
    return mx + log(sum.s);
}

int64_t ppl_argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

int ppl_score(const float *logits, int64_t n_vocab, int32_t target, ppl_token *out)
{
    memset(out, 0, sizeof *out);
    const double lse = ppl_logsumexp(logits, n_vocab);
    if (!isfinite(lse) || target < 0 || target >= n_vocab)
        return -1;
    const double lp = (double)logits[target] - lse;
    out->nll = -lp;
    out->p = exp(lp);
    return 0;
}

int ppl_compare(const float *base, const float *model, int64_t n_vocab, int32_t target, ppl_token *out)
{
    memset(out, 0, sizeof *out);
    const double lse_b = ppl_logsumexp(base, n_vocab), lse_m = ppl_logsumexp(model, n_vocab);
    if (!isfinite(lse_b) || !isfinite(lse_m) || target < 0 || target >= n_vocab)
        return -1;
    ksum kl = {0, 0};
    for (int64_t i = 0; i < n_vocab; i++) {
        const double lpb = (double)base[i] - lse_b;
        if (lpb == -INFINITY)
            continue; /* P_i = 0 adds nothing, whatever Q_i is */
        if (model[i] == -INFINITY) {
            kl.s = INFINITY; /* Q_i = 0 < P_i (said so, not NaN from the compensation) */
            break;
        }
        ksum_add(&kl, exp(lpb) * (lpb - ((double)model[i] - lse_m)));
    }
    const double lp = (double)model[target] - lse_m, lpb = (double)base[target] - lse_b;
    out->nll = -lp;
    out->p = exp(lp);
    out->nll_base = -lpb;
    out->p_base = exp(lpb);
    out->kl = kl.s;
    out->same_top = ppl_argmax(base, n_vocab) == ppl_argmax(model, n_vocab);
    return 0;
}

int ppl_acc_init(ppl_acc *a, int has_base, int64_t cap)
{
    memset(a, 0, sizeof *a);
    a->has_base = has_base;
    a->cap = cap;
    if (has_base && cap > 0) {
        a->kl = malloc((size_t)cap * sizeof *a->kl);
        a->abs_dp = malloc((size_t)cap * sizeof *a->abs_dp);
        if (!a->kl || !a->abs_dp) {
            ppl_acc_free(a);
            return -1;
        }
    }
    return 0;
}

void ppl_acc_free(ppl_acc *a)
{
    free(a->kl);
    free(a->abs_dp);
    a->kl = a->abs_dp = NULL;
}

int ppl_acc_add(ppl_acc *a, const ppl_token *t)
{
    if (a->n >= a->cap)
        return -1;
    a->sum_nll += t->nll;
    a->sum_nll2 += t->nll * t->nll;
    if (a->has_base) {
        const double d = t->nll - t->nll_base, dp = t->p - t->p_base;
        a->sum_nll_base += t->nll_base;
        a->sum_nll_base2 += t->nll_base * t->nll_base;
        a->sum_dnll += d;
        a->sum_dnll2 += d * d;
        a->sum_kl += t->kl;
        a->sum_kl2 += t->kl * t->kl;
        a->n_same_top += t->same_top != 0;
        a->sum_dp += dp;
        a->sum_dp2 += dp * dp;
        a->kl[a->n] = t->kl;
        a->abs_dp[a->n] = fabs(dp);
    }
    a->n++;
    return 0;
}

/* The standard error of a mean from its sums: sqrt(sample variance / n). */
static double mean_err(double sum, double sum2, int64_t n)
{
    if (n < 2)
        return 0.0;
    const double mean = sum / (double)n;
    double var = (sum2 / (double)n - mean * mean) * (double)n / (double)(n - 1);
    if (var < 0.0)
        var = 0.0; /* rounding, on (nearly) constant values */
    return sqrt(var / (double)n);
}

static int cmp_double(const void *pa, const void *pb)
{
    const double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

double ppl_percentile(const double *sorted, int64_t n, double fraction)
{
    if (n <= 0)
        return 0.0;
    if (fraction <= 0.0)
        return sorted[0];
    if (fraction >= 1.0)
        return sorted[n - 1];
    const double pos = fraction * (double)(n - 1);
    const int64_t i = (int64_t)pos;
    const double f = pos - (double)i;
    const int64_t j = i + 1 < n ? i + 1 : n - 1;
    return (1.0 - f) * sorted[i] + f * sorted[j];
}

int ppl_acc_summary(ppl_acc *a, ppl_summary *s)
{
    memset(s, 0, sizeof *s);
    const int64_t n = a->n;
    if (n <= 0)
        return -1;
    s->n = n;
    s->mean_nll = a->sum_nll / (double)n;
    s->ppl = exp(s->mean_nll);
    s->ppl_err = s->ppl * mean_err(a->sum_nll, a->sum_nll2, n);
    if (!a->has_base)
        return 0;
    s->mean_nll_base = a->sum_nll_base / (double)n;
    s->base_ppl = exp(s->mean_nll_base);
    s->base_ppl_err = s->base_ppl * mean_err(a->sum_nll_base, a->sum_nll_base2, n);
    /* paired: the two perplexities' errors are strongly correlated, so the
     * ratio's error comes from the per-token differences, not from theirs */
    s->ratio = exp(a->sum_dnll / (double)n);
    s->ratio_err = s->ratio * mean_err(a->sum_dnll, a->sum_dnll2, n);
    s->kl_mean = a->sum_kl / (double)n;
    s->kl_err = mean_err(a->sum_kl, a->sum_kl2, n);
    s->top1 = (double)a->n_same_top / (double)n;
    s->top1_err = n > 1 ? sqrt(s->top1 * (1.0 - s->top1) / (double)(n - 1)) : 0.0;
    s->dp_mean = a->sum_dp / (double)n;
    s->dp_rms = sqrt(a->sum_dp2 / (double)n);
    qsort(a->kl, (size_t)n, sizeof *a->kl, cmp_double);
    qsort(a->abs_dp, (size_t)n, sizeof *a->abs_dp, cmp_double);
    s->kl_median = ppl_percentile(a->kl, n, 0.5);
    s->kl_p99 = ppl_percentile(a->kl, n, 0.99);
    s->kl_p999 = ppl_percentile(a->kl, n, 0.999);
    s->kl_max = a->kl[n - 1];
    s->abs_dp_p99 = ppl_percentile(a->abs_dp, n, 0.99);
    s->abs_dp_p999 = ppl_percentile(a->abs_dp, n, 0.999);
    s->abs_dp_max = a->abs_dp[n - 1];
    return 0;
}
