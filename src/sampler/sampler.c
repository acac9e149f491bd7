/*
 * The sampler: sampling parameters, the generator, and the pick from one
 * row of fp32 logits (temperature, min-p, top-k, top-p, the draw); the
 * executor's logit processors and log-probabilities. Arithmetic on host
 * rows only: a leaf that depends on core alone (docs/architecture.md).
 *
 * Candidates are (index, logit) pairs. Top-k keeps the k largest with a
 * partial selection; top-p then sorts the survivors (all of them when top-k
 * is off) and keeps the smallest prefix whose probability mass reaches p.
 * Ties keep the lower index first, so results do not depend on the sort's
 * stability.
 */
#include "anvil/sampling.h"

#include <math.h>
#include <stdlib.h>

#include "core/error.h"
#include "sampler/sampler.h"

typedef struct cand {
    float logit;
    int32_t id;
} cand;

struct anvil_sampler {
    int32_t n_vocab;
    cand *c;     /* [n_vocab] */
    float *prob; /* [n_vocab] */
    int32_t *counts;      /* [n_vocab] zero between calls (penalties) */
    unsigned char *seen;  /* [n_vocab] zero between calls */
};

void anvil_sampling_params_default(anvil_sampling_params *p)
{
    p->temperature = 1.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->seed = 0;
}

anvil_status anvil_sampling_params_check(const anvil_sampling_params *p)
{
    CHECK(p->temperature >= 0.0f && isfinite(p->temperature), ANVIL_ERR_INVALID_ARG,
          "temperature must be >= 0, got %g", (double)p->temperature);
    CHECK(p->top_k >= -1, ANVIL_ERR_INVALID_ARG, "top_k must be >= 0 (or -1 for off), got %d", p->top_k);
    CHECK(p->top_p > 0.0f && p->top_p <= 1.0f, ANVIL_ERR_INVALID_ARG, "top_p must be in (0, 1], got %g",
          (double)p->top_p);
    CHECK(p->min_p >= 0.0f && p->min_p <= 1.0f, ANVIL_ERR_INVALID_ARG, "min_p must be in [0, 1], got %g",
          (double)p->min_p);
    return ANVIL_OK;
}

int anvil_sampling_is_greedy(const anvil_sampling_params *p) { return p->temperature <= 0.0f || p->top_k == 1; }

void anvil_sample_draw_make(anvil_sample_draw *d, const anvil_sampling_params *p, double u)
{
    d->sampling = *p;
    d->greedy = anvil_sampling_is_greedy(p);
    d->inv_temperature = d->greedy ? 0.0f : 1.0f / p->temperature;
    d->log_min_p = p->min_p > 0.0f ? logf(p->min_p) : -INFINITY;
    d->u = d->greedy ? 0.0 : u;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void anvil_rng_seed(anvil_rng *rng, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t anvil_rng_next(anvil_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double anvil_rng_uniform(anvil_rng *rng) { return (double)(anvil_rng_next(rng) >> 11) * 0x1.0p-53; }

anvil_status anvil_sampler_create(int32_t n_vocab, anvil_sampler **out)
{
    *out = NULL;
    CHECK(n_vocab > 0, ANVIL_ERR_INVALID_ARG, "vocabulary size must be > 0");
    anvil_sampler *s = calloc(1, sizeof *s);
    CHECK(s != NULL, ANVIL_ERR_OOM, "out of memory");
    s->n_vocab = n_vocab;
    s->c = malloc((size_t)n_vocab * sizeof *s->c);
    s->prob = malloc((size_t)n_vocab * sizeof *s->prob);
    s->counts = calloc((size_t)n_vocab, sizeof *s->counts);
    s->seen = calloc((size_t)n_vocab, 1);
    if (s->c == NULL || s->prob == NULL || s->counts == NULL || s->seen == NULL) {
        anvil_sampler_free(s);
        return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory for a sampler of %d entries", n_vocab);
    }
    *out = s;
    return ANVIL_OK;
}

void anvil_sampler_free(anvil_sampler *s)
{
    if (s == NULL)
        return;
    free(s->c);
    free(s->prob);
    free(s->counts);
    free(s->seen);
    free(s);
}

int32_t anvil_argmax(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Descending by logit, then ascending by id: a total order. */
static int cand_before(const cand *a, const cand *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb)
{
    const cand *a = pa, *b = pb;
    return cand_before(a, b) ? -1 : cand_before(b, a) ? 1 : 0;
}

/* Moves the k best candidates to the front (in no order): quickselect. */
static void select_top_k(cand *c, int32_t n, int32_t k)
{
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        cand pivot = c[lo + (hi - lo) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (cand_before(&c[i], &pivot))
                i++;
            while (cand_before(&pivot, &c[j]))
                j--;
            if (i <= j) {
                cand t = c[i];
                c[i] = c[j];
                c[j] = t;
                i++;
                j--;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

/* ------------------------------------------------------------ the executor's suite */

void anvil_logits_apply(anvil_sampler *s, const anvil_logits_processors *p, float *logits, const int32_t *prompt,
                        int32_t n_prompt, const int32_t *generated, int32_t n_generated)
{
    const int32_t n = s->n_vocab;
    for (int32_t i = 0; i < p->n_masked; i++)
        if (p->masked[i] >= 0 && p->masked[i] < n)
            logits[p->masked[i]] = -INFINITY;
    for (int32_t i = 0; i < p->n_bias; i++)
        if (p->bias[i].token >= 0 && p->bias[i].token < n)
            logits[p->bias[i].token] += p->bias[i].bias;
    if (p->repetition_penalty != 1.0f) {
        /* once per distinct token: seen[] marks, then is cleared the same way */
        const float r = p->repetition_penalty;
        for (int pass = 0; pass < 2; pass++) {
            const int32_t *ids = pass ? generated : prompt;
            const int32_t m = pass ? n_generated : n_prompt;
            for (int32_t i = 0; i < m; i++) {
                int32_t t = ids[i];
                if (t < 0 || t >= n || s->seen[t])
                    continue;
                s->seen[t] = 1;
                logits[t] = logits[t] < 0.0f ? logits[t] * r : logits[t] / r;
            }
        }
        for (int32_t i = 0; i < n_prompt; i++)
            if (prompt[i] >= 0 && prompt[i] < n)
                s->seen[prompt[i]] = 0;
        for (int32_t i = 0; i < n_generated; i++)
            if (generated[i] >= 0 && generated[i] < n)
                s->seen[generated[i]] = 0;
    }
    if (p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f) {
        for (int32_t i = 0; i < n_generated; i++)
            if (generated[i] >= 0 && generated[i] < n)
                s->counts[generated[i]]++;
        for (int32_t i = 0; i < n_generated; i++) {
            int32_t t = generated[i];
            if (t < 0 || t >= n || s->counts[t] == 0)
                continue;
            logits[t] -= p->frequency_penalty * (float)s->counts[t] + p->presence_penalty;
            s->counts[t] = 0; /* applied once; also leaves counts zeroed */
        }
    }
}

int32_t anvil_greedy_pick(const float *x, int32_t n)
{
    int32_t best = -1;
    float bv = -INFINITY;
    int bad = 0;
    for (int32_t i = 0; i < n; i++) {
        bad |= !(x[i] < INFINITY);
        if (x[i] > bv) {
            bv = x[i];
            best = i;
        }
    }
    return bad ? -1 : best;
}

/*
 * The pick: d's parameters, the uniform drawn from rng or, with rng NULL,
 * taken from d->u. A poisoned row (a NaN or +inf, or no finite logit) gives
 * -1 and draws nothing: a damaged model must end its request, not sample
 * garbage. margin (may be NULL): anvil_sampler_pick_margin's. Device
 * samplers follow these steps (src/backend/cuda/cuda_sample.cu).
 */
static int32_t pick(anvil_sampler *s, const float *logits, const anvil_sample_draw *d, anvil_rng *rng, double *margin)
{
    const int32_t n = s->n_vocab;
    const anvil_sampling_params *p = &d->sampling;
    if (margin != NULL)
        *margin = INFINITY;
    if (d->greedy)
        return anvil_greedy_pick(logits, n);

    const float inv_t = d->inv_temperature;
    int32_t m = 0;
    int bad = 0;
    for (int32_t i = 0; i < n; i++) {
        bad |= !(logits[i] < INFINITY);
        if (!(logits[i] > -INFINITY))
            continue; /* -inf (masked) or NaN */
        s->c[m].logit = logits[i] * inv_t;
        s->c[m].id = i;
        m++;
    }
    if (m == 0 || bad)
        return -1;
    if (d->log_min_p > -INFINITY) {
        float max = s->c[0].logit;
        for (int32_t i = 1; i < m; i++)
            if (s->c[i].logit > max)
                max = s->c[i].logit;
        /* p_i / p_max = exp(l_i - max) >= min_p */
        const float thr = max + d->log_min_p;
        int32_t k = 0;
        for (int32_t i = 0; i < m; i++)
            if (s->c[i].logit >= thr)
                s->c[k++] = s->c[i];
        m = k;
    }
    const int32_t total = m;
    if (p->top_k > 0 && p->top_k < m) {
        select_top_k(s->c, m, p->top_k);
        m = p->top_k;
    }
    if (p->top_p < 1.0f || m < total)
        qsort(s->c, (size_t)m, sizeof *s->c, cand_cmp);

    float max = s->c[0].logit;
    if (m == total && p->top_p >= 1.0f) /* unsorted: find the max */
        for (int32_t i = 1; i < m; i++)
            if (s->c[i].logit > max)
                max = s->c[i].logit;
    double sum = 0.0;
    for (int32_t i = 0; i < m; i++) {
        s->prob[i] = expf(s->c[i].logit - max);
        sum += s->prob[i];
    }
    if (p->top_p < 1.0f) {
        /* keep the smallest prefix with mass >= top_p (at least one) */
        double cum = 0.0;
        const double target = (double)p->top_p * sum;
        int32_t keep = m;
        for (int32_t i = 0; i < m; i++) {
            cum += s->prob[i];
            if (margin != NULL)
                *margin = fmin(*margin, fabs(cum - target) / sum);
            if (keep == m && cum >= target) {
                keep = i + 1;
                if (margin == NULL)
                    break;
            }
        }
        m = keep;
        sum = 0.0;
        for (int32_t i = 0; i < m; i++)
            sum += s->prob[i];
    }
    const double r = (rng != NULL ? anvil_rng_uniform(rng) : d->u) * sum;
    double acc = 0.0;
    int32_t chosen = -1;
    for (int32_t i = 0; i < m; i++) {
        acc += s->prob[i];
        if (margin != NULL)
            *margin = fmin(*margin, fabs(acc - r) / sum);
        if (chosen < 0 && r < acc) {
            chosen = s->c[i].id;
            if (margin == NULL)
                break;
        }
    }
    return chosen >= 0 ? chosen : s->c[m - 1].id; /* r rounded up to sum: the last one */
}

int32_t anvil_sampler_sample(anvil_sampler *s, const float *logits, const anvil_sampling_params *p, anvil_rng *rng)
{
    anvil_sample_draw d;
    anvil_sample_draw_make(&d, p, 0.0);
    return pick(s, logits, &d, rng, NULL);
}

int32_t anvil_sampler_pick(anvil_sampler *s, const float *logits, const anvil_sample_draw *d)
{
    return pick(s, logits, d, NULL, NULL);
}

int32_t anvil_sampler_pick_margin(anvil_sampler *s, const float *logits, const anvil_sample_draw *d, double *margin)
{
    return pick(s, logits, d, NULL, margin);
}

void anvil_log_softmax(const float *x, float *out, int32_t n)
{
    float max = x[0];
    for (int32_t i = 1; i < n; i++)
        if (x[i] > max)
            max = x[i];
    if (!(max > -INFINITY)) { /* every entry -inf: nothing is possible */
        for (int32_t i = 0; i < n; i++)
            out[i] = -INFINITY;
        return;
    }
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++)
        sum += exp((double)x[i] - (double)max);
    const float lse = (float)log(sum);
    for (int32_t i = 0; i < n; i++)
        out[i] = (x[i] - max) - lse;
}

void anvil_top_logprobs(anvil_sampler *s, const float *lp, int32_t k, anvil_token_logprob *out)
{
    const int32_t n = s->n_vocab;
    if (k <= 0)
        return;
    if (k > n)
        k = n;
    for (int32_t i = 0; i < n; i++) {
        s->c[i].logit = lp[i];
        s->c[i].id = i;
    }
    if (k < n)
        select_top_k(s->c, n, k);
    qsort(s->c, (size_t)k, sizeof *s->c, cand_cmp);
    for (int32_t i = 0; i < k; i++) {
        out[i].token = s->c[i].id;
        out[i].logprob = s->c[i].logit;
    }
}

int anvil_sampler_mask(float *logits, int32_t n, const uint32_t *allowed)
{
    uint32_t any = 0;
    for (int32_t k = 0; (int64_t)k * 32 < n; k++) {
        const int32_t end = n - k * 32 < 32 ? n - k * 32 : 32;
        uint32_t m = allowed[k];
        if (end < 32)
            m &= (1u << end) - 1u; /* the bits past n */
        any |= m;
        if (m == 0xffffffffu)
            continue;
        for (int32_t j = 0; j < end; j++)
            if (!((m >> j) & 1u))
                logits[k * 32 + j] = -INFINITY;
    }
    return any != 0;
}
