/*
 * Beam search, step for step as Hugging Face transformers' vectorized
 * _beam_search (generate(num_beams=W, length_penalty=lp, early_stopping=...)):
 *
 *  1. each running beam's log-softmax (of the logits, then the logits
 *     processors: min_tokens, bias, penalties) plus the beam's running score;
 *  2. the best K = max(2, 1 + n_end_tokens) * W candidates over all beams,
 *     best first;
 *  3. a candidate "hits" when its token ends a sequence or it reaches
 *     max_tokens; hits among the first W candidates become finished
 *     hypotheses scored sum_logprobs / generated_len ** lp (generated_len
 *     counts the new tokens, the ending one included), keeping the best W,
 *     unless early_stopping is true and W are finished already, or HF's
 *     early-stop heuristic has closed;
 *  4. the next running beams are the best W candidates after a -1e9 penalty
 *     on hits (in float, as HF: so when fewer than W candidates go on, ended
 *     ones keep running with hopeless scores);
 *  5. stop when W hypotheses are finished (early_stopping true), when the
 *     heuristic says no running beam can beat the worst finished one, or
 *     when every candidate hit.
 * Scores are float32 sums, as in HF. The goldens in tests/executor check it.
 *
 * KV: a new beam forks its parent (shares all its blocks); the partly
 * filled last block is copied when a beam first writes into it while
 * siblings still share it (copy-on-write in the scheduler).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "executor/exec_internal.h"

typedef struct bcand {
    float score;   /* cumulative processed log-prob */
    float raw;     /* raw log-prob of the token */
    int32_t beam;  /* parent: index into r->seqs */
    int32_t token;
    int hit;
} bcand;

/* Best first; ties by the lower flat index (beam * V + token). */
static int bcand_cmp(const void *pa, const void *pb)
{
    const bcand *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    if (a->beam != b->beam)
        return a->beam < b->beam ? -1 : 1;
    return (a->token > b->token) - (a->token < b->token);
}

static int is_end(const anvil_executor *ex, const xreq *r, int32_t tok)
{
    return (!r->p.ignore_eos && anvil_exec_is_eos(ex, tok)) || anvil_exec_is_stop_token(r, tok);
}

static void hyp_free(xhyp *h)
{
    free(h->tokens);
    free(h->logprobs);
    free(h->top);
    memset(h, 0, sizeof *h);
}

/* Adds (parent's generated ids + token) with score to the best-W list. */
static anvil_status add_hyp(const xreq *r, const xseq *parent, int32_t token, float score, float raw,
                            const anvil_token_logprob *top, int stopped)
{
    xreq *rr = (xreq *)r;
    const int32_t W = r->width;
    if (r->n_hyps == W && !(score > r->hyps[W - 1].score))
        return ANVIL_OK;
    const int32_t n_gen = parent->n_tokens - r->n_prompt;
    xhyp h = {0};
    h.n_tokens = n_gen + 1;
    h.tokens = malloc((size_t)h.n_tokens * sizeof *h.tokens);
    CHECK(h.tokens != NULL, ANVIL_ERR_OOM, "out of memory");
    memcpy(h.tokens, parent->tokens + r->n_prompt, (size_t)n_gen * sizeof *h.tokens);
    h.tokens[n_gen] = token;
    h.score = score;
    h.stopped = stopped;
    h.cum_logprob = parent->cum_logprob + raw;
    if (parent->logprobs) {
        h.logprobs = malloc((size_t)h.n_tokens * sizeof *h.logprobs);
        if (h.logprobs == NULL) {
            hyp_free(&h);
            return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
        }
        memcpy(h.logprobs, parent->logprobs, (size_t)n_gen * sizeof *h.logprobs);
        h.logprobs[n_gen] = raw;
        if (parent->top && r->n_top > 0) {
            const size_t nt = (size_t)r->n_top;
            h.top = malloc((size_t)h.n_tokens * nt * sizeof *h.top);
            if (h.top == NULL) {
                hyp_free(&h);
                return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
            }
            memcpy(h.top, parent->top, (size_t)n_gen * nt * sizeof *h.top);
            memcpy(h.top + (size_t)n_gen * nt, top, nt * sizeof *h.top);
        }
    }
    if (rr->n_hyps == W)
        hyp_free(&rr->hyps[--rr->n_hyps]);
    int32_t at = rr->n_hyps;
    while (at > 0 && rr->hyps[at - 1].score < score)
        at--;
    memmove(rr->hyps + at + 1, rr->hyps + at, (size_t)(rr->n_hyps - at) * sizeof *rr->hyps);
    rr->hyps[at] = h;
    rr->n_hyps++;
    return ANVIL_OK;
}

/* Scores every beam's continuations; cands receives the best K of each. */
static anvil_status score_beams(anvil_executor *ex, xreq *r, const float *const *rows, int32_t K, bcand *cands,
                                anvil_token_logprob *tops, anvil_token_logprob *tmp)
{
    const int32_t V = ex->vocab, nb = r->n_seqs;
    const int32_t gen = r->seqs[0]->n_tokens - r->n_prompt;
    float *w = ex->work;
    const anvil_logits_processors proc = {
        .repetition_penalty = r->p.repetition_penalty,
        .presence_penalty = r->p.presence_penalty,
        .frequency_penalty = r->p.frequency_penalty,
        .bias = r->bias,
        .n_bias = r->n_bias,
    };
    for (int32_t b = 0; b < nb; b++) {
        const xseq *s = r->seqs[b];
        anvil_log_softmax(rows[b], ex->lp, V);
        memcpy(w, ex->lp, (size_t)V * sizeof *w);
        if (gen < r->p.min_tokens) {
            for (int32_t v = 0; v < V; v++)
                if (is_end(ex, r, v))
                    w[v] = -INFINITY;
        }
        /* HF applies its processors to the log-probabilities */
        anvil_logits_apply(ex->sampler, &proc, w, r->prompt, r->n_prompt, s->tokens + r->n_prompt, gen);
        for (int32_t v = 0; v < V; v++)
            w[v] += s->beam_score;
        anvil_top_logprobs(ex->sampler, w, K, tmp);
        for (int32_t k = 0; k < K; k++) {
            bcand *c = &cands[(size_t)b * (size_t)K + (size_t)k];
            c->score = tmp[k].logprob;
            c->token = tmp[k].token;
            c->beam = b;
            c->raw = ex->lp[c->token];
            c->hit = 0;
        }
        if (r->n_top > 0)
            anvil_top_logprobs(ex->sampler, ex->lp, r->n_top, tops + (size_t)b * (size_t)r->n_top);
    }
    return ANVIL_OK;
}

/* The next running beams: forks of their parents with one more token. */
static anvil_status advance(anvil_executor *ex, xreq *r, const bcand *run, int32_t W,
                            const anvil_token_logprob *tops)
{
    xseq **next = calloc((size_t)W, sizeof *next);
    CHECK(next != NULL, ANVIL_ERR_OOM, "out of memory");
    const int32_t gen = r->seqs[0]->n_tokens - r->n_prompt;
    for (int32_t i = 0; i < W; i++) {
        const bcand *c = &run[i];
        anvil_status st = anvil_exec_seq_fork(ex, r, r->seqs[c->beam], &next[i]);
        if (st != ANVIL_OK) {
            for (int32_t k = 0; k < i; k++) {
                anvil_exec_seq_release(ex, next[k]);
                anvil_exec_seq_free(next[k]);
            }
            free(next);
            return st;
        }
        xseq *s = next[i];
        s->tokens[s->n_tokens++] = c->token;
        s->beam_score = c->score;
        s->cum_logprob += c->raw;
        s->index = i;
        if (s->logprobs) {
            s->logprobs[gen] = c->raw;
            if (s->top)
                memcpy(s->top + (size_t)gen * (size_t)r->n_top, tops + (size_t)c->beam * (size_t)r->n_top,
                       (size_t)r->n_top * sizeof *s->top);
        }
    }
    for (int32_t i = 0; i < r->n_seqs; i++) {
        anvil_exec_seq_release(ex, r->seqs[i]);
        anvil_exec_seq_free(r->seqs[i]);
    }
    memcpy(r->seqs, next, (size_t)W * sizeof *next);
    r->n_seqs = W;
    free(next);
    ex->c_generated += W;
    if (r->t_first_token == 0)
        r->t_first_token = anvil_exec_now();
    return ANVIL_OK;
}

anvil_status anvil_exec_beam_step(anvil_executor *ex, xreq *r, const float *const *rows)
{
    const int32_t W = r->width, nb = r->n_seqs, V = ex->vocab;
    const int32_t n_end = (r->p.ignore_eos ? 0 : ex->cfg->n_eos_token_ids) + r->n_stop_ids;
    int32_t K = (n_end + 1 > 2 ? n_end + 1 : 2) * W;
    if (K > V)
        K = V;
    const int32_t gen = r->seqs[0]->n_tokens - r->n_prompt; /* new tokens so far */
    const size_t n_top = (size_t)(r->n_top > 0 ? r->n_top : 1);
    bcand *cands = malloc((size_t)nb * (size_t)K * sizeof *cands);
    bcand *run = malloc((size_t)K * sizeof *run);
    anvil_token_logprob *tmp = malloc((size_t)K * sizeof *tmp);
    anvil_token_logprob *tops = malloc((size_t)nb * n_top * sizeof *tops);
    anvil_status st = ANVIL_OK;
    CHECK_GOTO(cands && run && tmp && tops, ANVIL_ERR_OOM, done, "out of memory");
    TRY_GOTO(score_beams(ex, r, rows, K, cands, tops, tmp), done);
    qsort(cands, (size_t)nb * (size_t)K, sizeof *cands, bcand_cmp);

    int all_hit = 1;
    for (int32_t k = 0; k < K; k++) {
        cands[k].hit = is_end(ex, r, cands[k].token) || gen + 1 >= r->max_tokens;
        all_hit &= cands[k].hit;
    }
    /* finished hypotheses from the first W candidates */
    if (!(r->p.early_stopping == 1 && r->n_hyps == W) && r->heuristic_open) {
        const float denom = powf((float)(gen + 1), r->p.length_penalty);
        for (int32_t k = 0; k < W && k < K; k++) {
            const bcand *c = &cands[k];
            if (c->hit)
                TRY_GOTO(add_hyp(r, r->seqs[c->beam], c->token, c->score / denom, c->raw,
                                 tops + (size_t)c->beam * n_top, is_end(ex, r, c->token)),
                         done);
        }
    }
    /* the next running beams: the best W after the penalty on hits */
    for (int32_t k = 0; k < K; k++) {
        run[k] = cands[k];
        if (run[k].hit)
            run[k].score += -1.0e9f;
    }
    qsort(run, (size_t)K, sizeof *run, bcand_cmp);
    const int32_t n_run = W < K ? W : K;

    /* HF's early-stop heuristic, then the stopping rule */
    const int32_t best_len = r->p.early_stopping == -1 && r->p.length_penalty > 0.0f ? r->max_tokens : gen + 1;
    const float best_possible = run[0].score / powf((float)best_len, r->p.length_penalty);
    const float worst_fin = r->n_hyps == W ? r->hyps[W - 1].score : -1.0e9f;
    r->heuristic_open = r->heuristic_open && best_possible > worst_fin;
    const int done_now = !r->heuristic_open || (r->p.early_stopping == 1 && r->n_hyps == W) || all_hit;
    if (done_now) {
        /* fewer than W finished (rare): the best running ones fill the list */
        const float denom = powf((float)(gen + 1), r->p.length_penalty);
        for (int32_t k = 0; k < n_run && r->n_hyps < W; k++)
            TRY_GOTO(add_hyp(r, r->seqs[run[k].beam], run[k].token, run[k].score / denom, run[k].raw,
                             tops + (size_t)run[k].beam * n_top, 0),
                     done);
        r->done = 1;
        ex->c_generated += W;
        goto done;
    }
    TRY_GOTO(advance(ex, r, run, n_run, tops), done);
done:
    free(cands);
    free(run);
    free(tmp);
    free(tops);
    return st;
}
