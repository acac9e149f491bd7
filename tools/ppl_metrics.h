/*
 * The arithmetic of anvil perplexity (tools/cmd_perplexity.c): what one
 * scored token gives (its negative log-likelihood under a model and, against
 * a base model, the KL divergence of the two next-token distributions, the
 * two top-1 tokens and the probabilities of the true token), and the sums
 * and percentiles over many tokens, as llama.cpp's llama-perplexity (with
 * --kl-divergence) reports them. Library-free (libc and libm) so that a
 * unit test checks it on hand-made logits (tests/tools/test_ppl_metrics.c).
 *
 *     ppl_acc acc;
 *     ppl_acc_init(&acc, 1, n_tokens);
 *     for each scored token t of each window:
 *         ppl_token k;
 *         if (ppl_compare(base_row, model_row, n_vocab, t, &k) != 0) ... not finite
 *         ppl_acc_add(&acc, &k);
 *     ppl_summary s;
 *     ppl_acc_summary(&acc, &s);
 *     ppl_acc_free(&acc);
 *
 * Everything over the vocabulary is computed in double (a float sum of
 * 128k exponentials loses the digits the KL divergence of a good
 * quantization lives in).
 */
#ifndef ANVIL_TOOLS_PPL_METRICS_H
#define ANVIL_TOOLS_PPL_METRICS_H

#include <stdint.h>

/* log(sum_i exp(x[i])) in double, shifted by the largest x so no exp
 * overflows: -inf when every x is -inf (or n is 0); NaN when an x is NaN or
 * +inf. */
double ppl_logsumexp(const float *x, int64_t n);

/* The index of the largest x (the lowest index on ties, as greedy decoding
 * picks); 0 when n is 0. */
int64_t ppl_argmax(const float *x, int64_t n);

/* What one scored token gives. */
typedef struct ppl_token {
    double nll; /* -log softmax(model logits)[target], nats */
    double p;   /* softmax(model logits)[target] */
    /* against a base (ppl_compare only; zero from ppl_score) */
    double nll_base; /* -log softmax(base logits)[target] */
    double p_base;
    double kl; /* KL(base || model) = sum_i P_i (log P_i - log Q_i), P = softmax(base), Q = softmax(model) */
    int same_top; /* 1 when both argmaxes are the same token */
} ppl_token;

/* The model's row alone. 0, or -1 when the row has a NaN or +inf, or no
 * finite logit. */
int ppl_score(const float *logits, int64_t n_vocab, int32_t target, ppl_token *out);

/* Both rows (same vocabulary). 0, or -1 when either row is not finite as
 * in ppl_score. A token the base gives probability > 0 and the model
 * -inf makes kl +inf (as it is). */
int ppl_compare(const float *base, const float *model, int64_t n_vocab, int32_t target, ppl_token *out);

/* The sums over scored tokens; with a base, every token's KL and |dp| are
 * kept for the percentiles. */
typedef struct ppl_acc {
    int has_base;
    int64_t n, cap;
    double sum_nll, sum_nll2;
    double sum_nll_base, sum_nll_base2;
    double sum_dnll, sum_dnll2; /* d = nll - nll_base: the ratio's error from the paired differences */
    double sum_kl, sum_kl2;
    int64_t n_same_top;
    double sum_dp, sum_dp2; /* dp = p - p_base */
    double *kl;             /* [cap] */
    double *abs_dp;         /* [cap] */
} ppl_acc;

/* cap: the most tokens that will be added (the per-token arrays, with a
 * base). 0, or -1 out of memory (nothing to free then). */
int ppl_acc_init(ppl_acc *a, int has_base, int64_t cap);
/* 0, or -1 when cap tokens were added already. */
int ppl_acc_add(ppl_acc *a, const ppl_token *t);
void ppl_acc_free(ppl_acc *a);

/* Summary over n tokens. An error is the standard error of the mean
 * (sample variance over n - 1; 0 when n < 2), carried to perplexity
 * through exp as llama.cpp does: ppl_err = ppl * err(mean nll). */
typedef struct ppl_summary {
    int64_t n;
    double mean_nll, ppl, ppl_err;
    /* with a base: */
    double mean_nll_base, base_ppl, base_ppl_err;
    double ratio, ratio_err; /* ppl / base_ppl = exp(mean(nll - nll_base)), error from those differences */
    double kl_mean, kl_err, kl_median, kl_p99, kl_p999, kl_max;
    double top1, top1_err;  /* fraction of tokens whose top-1 agree, its binomial error */
    double dp_mean, dp_rms; /* of p - p_base */
    double abs_dp_p99, abs_dp_p999, abs_dp_max;
} ppl_summary;

/* Fills s (sorting the per-token arrays). 0, or -1 when no token was added. */
int ppl_acc_summary(ppl_acc *a, ppl_summary *s);

/* The fraction-quantile of sorted[0..n) with linear interpolation between
 * neighbours (numpy's default): position fraction * (n - 1).
 * 0 when n is 0. */
double ppl_percentile(const double *sorted, int64_t n, double fraction);

#endif
