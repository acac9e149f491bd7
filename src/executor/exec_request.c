/*
 * Requests: checking and copying what a caller enqueues, the sequences a
 * request runs, and the result it ends with.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "executor/exec_internal.h"

void anvil_request_init(anvil_request *r)
{
    memset(r, 0, sizeof *r);
    r->add_special_tokens = 1;
    anvil_sampling_params_default(&r->sampling);
    r->repetition_penalty = 1.0f;
    r->n = 1;
    r->logprobs = -1;
    r->length_penalty = 1.0f;
    r->early_stopping = 1;
    r->skip_special_tokens = 1;
}

const char *anvil_request_finish_name(anvil_request_finish f)
{
    switch (f) {
    case ANVIL_REQUEST_RUNNING: return "running";
    case ANVIL_REQUEST_STOP: return "stop";
    case ANVIL_REQUEST_LENGTH: return "length";
    case ANVIL_REQUEST_CANCELLED: return "cancelled";
    case ANVIL_REQUEST_ERROR: return "error";
    }
    return "unknown";
}

int anvil_exec_is_eos(const anvil_executor *ex, int32_t token)
{
    for (int i = 0; i < ex->cfg->n_eos_token_ids; i++)
        if (ex->cfg->eos_token_ids[i] == token)
            return 1;
    return 0;
}

int anvil_exec_is_stop_token(const xreq *r, int32_t token)
{
    for (int32_t i = 0; i < r->n_stop_ids; i++)
        if (r->stop_ids[i] == token)
            return 1;
    return 0;
}

/* ------------------------------------------------------------ sequences */

void anvil_exec_seq_free(xseq *s)
{
    if (s == NULL)
        return;
    free(s->tokens);
    free(s->blocks);
    free(s->block_hash);
    free(s->logprobs);
    free(s->top);
    free(s->text);
    anvil_detokenizer_free(s->detok);
    anvil_grammar_matcher_free(s->gm);
    free(s);
}

anvil_status anvil_exec_seq_new(anvil_executor *ex, xreq *r, xseq **out)
{
    *out = NULL;
    xseq *s = calloc(1, sizeof *s);
    CHECK(s != NULL, ANVIL_ERR_OOM, "out of memory");
    s->tokens = malloc((size_t)ex->max_seq_len * sizeof *s->tokens);
    s->blocks = malloc((size_t)ex->max_blocks * sizeof *s->blocks);
    s->block_hash = malloc((size_t)ex->max_blocks * sizeof *s->block_hash);
    int ok = s->tokens && s->blocks && s->block_hash;
    if (ok && r->p.logprobs >= 0) {
        s->logprobs = malloc((size_t)r->max_tokens * sizeof *s->logprobs);
        ok = s->logprobs != NULL;
        if (ok && r->n_top > 0) {
            s->top = malloc((size_t)r->max_tokens * (size_t)r->n_top * sizeof *s->top);
            ok = s->top != NULL;
        }
    }
    if (!ok) {
        anvil_exec_seq_free(s);
        return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory for a sequence");
    }
    if (r->p.grammar != NULL) {
        anvil_status st = anvil_grammar_matcher_create(r->p.grammar, &s->gm);
        if (st != ANVIL_OK) {
            anvil_exec_seq_free(s);
            return st;
        }
    }
    memcpy(s->tokens, r->prompt, (size_t)r->n_prompt * sizeof *s->tokens);
    s->n_tokens = r->n_prompt;
    s->stop_token = s->stop_string = -1;
    s->logit_row = -1;
    *out = s;
    return ANVIL_OK;
}

anvil_status anvil_exec_seq_fork(anvil_executor *ex, xreq *r, const xseq *src, xseq **out)
{
    xseq *s;
    TRY(anvil_exec_seq_new(ex, r, &s));
    memcpy(s->tokens, src->tokens, (size_t)src->n_tokens * sizeof *s->tokens);
    s->n_tokens = src->n_tokens;
    s->n_computed = src->n_computed;
    memcpy(s->blocks, src->blocks, (size_t)src->n_blocks * sizeof *s->blocks);
    s->n_blocks = src->n_blocks;
    for (int32_t i = 0; i < s->n_blocks; i++)
        anvil_kv_incref(ex->kv, s->blocks[i]);
    memcpy(s->block_hash, src->block_hash, (size_t)src->n_hashed * sizeof *s->block_hash);
    s->n_hashed = src->n_hashed;
    s->root = src->root;
    const int32_t n_gen = src->n_tokens - r->n_prompt;
    if (s->logprobs && n_gen > 0) {
        memcpy(s->logprobs, src->logprobs, (size_t)n_gen * sizeof *s->logprobs);
        if (s->top)
            memcpy(s->top, src->top, (size_t)n_gen * (size_t)r->n_top * sizeof *s->top);
    }
    s->cum_logprob = src->cum_logprob;
    s->beam_score = src->beam_score;
    s->rng = src->rng;
    s->index = src->index;
    if (src->gm != NULL) { /* the fork continues the parent's parse */
        anvil_grammar_matcher_free(s->gm);
        s->gm = NULL;
        anvil_status st = anvil_grammar_matcher_copy(src->gm, &s->gm);
        if (st != ANVIL_OK) {
            anvil_exec_seq_release(ex, s);
            anvil_exec_seq_free(s);
            return st;
        }
    }
    /* Text is not copied: samples fork before their first token, beams
     * decode their text once at the end. */
    *out = s;
    return ANVIL_OK;
}

void anvil_exec_seq_release(anvil_executor *ex, xseq *s)
{
    for (int32_t i = s->n_blocks - 1; i >= 0; i--)
        anvil_kv_decref(ex->kv, s->blocks[i]);
    s->n_blocks = 0;
    s->n_computed = 0;
    s->n_hashed = 0;
}

/* ------------------------------------------------------------ requests */

void anvil_exec_request_free(xreq *r)
{
    if (r == NULL)
        return;
    free(r->prompt);
    for (int32_t i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    free(r->stop_ids);
    free(r->bias);
    for (int32_t i = 0; r->seqs && i < r->n_seqs; i++)
        anvil_exec_seq_free(r->seqs[i]);
    free(r->seqs);
    for (int32_t i = 0; r->hyps && i < r->n_hyps; i++) {
        free(r->hyps[i].tokens);
        free(r->hyps[i].logprobs);
        free(r->hyps[i].top);
    }
    free(r->hyps);
    free(r);
}

static int32_t ceil_div(int64_t a, int64_t b) { return (int32_t)((a + b - 1) / b); }

/* The most distinct KV blocks the request can hold at once: the prompt's
 * full blocks shared by all its sequences, and each sequence's own blocks
 * past them, up to the KV of its last generated token but one. */
static int32_t worst_blocks(const anvil_executor *ex, const xreq *r)
{
    const int64_t kv_len = (int64_t)r->n_prompt + r->max_tokens - 1;
    const int32_t bs = ex->bs;
    const int32_t per_seq = ceil_div(kv_len, bs);
    if (r->width == 1)
        return per_seq;
    const int32_t shared = r->n_prompt / bs;
    return shared + r->width * (per_seq - shared);
}

static anvil_status check_params(const anvil_executor *ex, const anvil_request *q)
{
    TRY(anvil_sampling_params_check(&q->sampling));
    CHECK(q->repetition_penalty > 0.0f && isfinite(q->repetition_penalty), ANVIL_ERR_INVALID_ARG,
          "repetition_penalty must be > 0, got %g", (double)q->repetition_penalty);
    CHECK(q->presence_penalty >= -2.0f && q->presence_penalty <= 2.0f, ANVIL_ERR_INVALID_ARG,
          "presence_penalty must be in [-2, 2], got %g", (double)q->presence_penalty);
    CHECK(q->frequency_penalty >= -2.0f && q->frequency_penalty <= 2.0f, ANVIL_ERR_INVALID_ARG,
          "frequency_penalty must be in [-2, 2], got %g", (double)q->frequency_penalty);
    CHECK(q->n_logit_bias >= 0 && (q->n_logit_bias == 0 || q->logit_bias != NULL), ANVIL_ERR_INVALID_ARG,
          "logit_bias: %d entries but no array", q->n_logit_bias);
    for (int32_t i = 0; i < q->n_logit_bias; i++) {
        CHECK(q->logit_bias[i].token >= 0 && q->logit_bias[i].token < ex->vocab, ANVIL_ERR_INVALID_ARG,
              "logit_bias: token %d outside the vocabulary (%d)", q->logit_bias[i].token, ex->vocab);
        CHECK(q->logit_bias[i].bias >= -100.0f && q->logit_bias[i].bias <= 100.0f, ANVIL_ERR_INVALID_ARG,
              "logit_bias: the bias of token %d must be in [-100, 100], got %g", q->logit_bias[i].token,
              (double)q->logit_bias[i].bias);
    }
    CHECK(q->n >= 1 && q->n <= ex->max_batch, ANVIL_ERR_INVALID_ARG, "n must be in 1..%d (max_batch_size), got %d",
          ex->max_batch, q->n);
    const int32_t max_lp = ex->opts.max_logprobs < ex->vocab ? ex->opts.max_logprobs : ex->vocab;
    CHECK(q->logprobs >= -1 && q->logprobs <= max_lp, ANVIL_ERR_INVALID_ARG,
          "logprobs must be in -1..%d (max_logprobs), got %d", max_lp, q->logprobs);
    CHECK(q->beam_width >= 0 && q->beam_width <= ex->max_batch, ANVIL_ERR_INVALID_ARG,
          "beam_width must be in 0..%d (max_batch_size), got %d", ex->max_batch, q->beam_width);
    if (q->beam_width > 1) {
        CHECK(q->n == 1, ANVIL_ERR_INVALID_ARG, "n > 1 with beam search: every beam is returned already");
        CHECK(q->n_stop == 0, ANVIL_ERR_UNSUPPORTED, "stop strings are not supported with beam search");
        CHECK(isfinite(q->length_penalty), ANVIL_ERR_INVALID_ARG, "length_penalty must be finite");
        CHECK(q->early_stopping >= -1 && q->early_stopping <= 1, ANVIL_ERR_INVALID_ARG,
              "early_stopping must be 1 (true), 0 (false) or -1 (never), got %d", q->early_stopping);
    }
    if (q->grammar != NULL) {
        CHECK(q->beam_width <= 1, ANVIL_ERR_UNSUPPORTED,
              "structured output (a grammar, response_format or guided_*) is not supported with beam search");
        const int32_t gv = anvil_grammar_vocab_size(anvil_grammar_get_vocab(q->grammar));
        CHECK(gv <= ex->vocab, ANVIL_ERR_INVALID_ARG,
              "the grammar's vocabulary has %d tokens, more than the model's %d logits", gv, ex->vocab);
    }
    CHECK(q->max_tokens >= 0, ANVIL_ERR_INVALID_ARG, "max_tokens must be >= 0, got %d", q->max_tokens);
    CHECK(q->min_tokens >= 0, ANVIL_ERR_INVALID_ARG, "min_tokens must be >= 0, got %d", q->min_tokens);
    CHECK(q->max_tokens == 0 || q->min_tokens <= q->max_tokens, ANVIL_ERR_INVALID_ARG,
          "min_tokens (%d) exceeds max_tokens (%d)", q->min_tokens, q->max_tokens);
    CHECK(q->n_stop_token_ids >= 0 && (q->n_stop_token_ids == 0 || q->stop_token_ids != NULL),
          ANVIL_ERR_INVALID_ARG, "stop_token_ids: %d entries but no array", q->n_stop_token_ids);
    for (int32_t i = 0; i < q->n_stop_token_ids; i++)
        CHECK(q->stop_token_ids[i] >= 0 && q->stop_token_ids[i] < ex->vocab, ANVIL_ERR_INVALID_ARG,
              "stop_token_ids: %d outside the vocabulary (%d)", q->stop_token_ids[i], ex->vocab);
    CHECK(q->n_stop >= 0 && (q->n_stop == 0 || q->stop != NULL), ANVIL_ERR_INVALID_ARG,
          "stop: %d strings but no array", q->n_stop);
    CHECK(q->n_stop == 0 || ex->tok != NULL, ANVIL_ERR_INVALID_ARG,
          "stop strings need a tokenizer (the executor has none)");
    for (int32_t i = 0; i < q->n_stop; i++)
        CHECK(q->stop[i] != NULL && q->stop[i][0] != '\0', ANVIL_ERR_INVALID_ARG, "stop string %d is empty", i);
    return ANVIL_OK;
}

static anvil_status copy_prompt(const anvil_executor *ex, const anvil_request *q, xreq *r)
{
    if (q->prompt_ids != NULL) {
        CHECK(q->n_prompt_ids > 0, ANVIL_ERR_INVALID_ARG, "the prompt is empty");
        r->prompt = malloc((size_t)q->n_prompt_ids * sizeof *r->prompt);
        CHECK(r->prompt != NULL, ANVIL_ERR_OOM, "out of memory");
        memcpy(r->prompt, q->prompt_ids, (size_t)q->n_prompt_ids * sizeof *r->prompt);
        r->n_prompt = q->n_prompt_ids;
    } else {
        CHECK(q->prompt != NULL, ANVIL_ERR_INVALID_ARG, "the request has no prompt (prompt_ids or prompt)");
        CHECK(ex->tok != NULL, ANVIL_ERR_INVALID_ARG, "a text prompt needs a tokenizer (the executor has none)");
        int64_t n = 0;
        TRY(anvil_tokenizer_encode(ex->tok, q->prompt, strlen(q->prompt), q->add_special_tokens, &r->prompt, &n));
        CHECK(n > 0, ANVIL_ERR_INVALID_ARG, "the prompt is empty (it encodes to no tokens)");
        CHECK(n < INT32_MAX, ANVIL_ERR_CAPACITY, "the prompt is too long");
        r->n_prompt = (int32_t)n;
    }
    for (int32_t i = 0; i < r->n_prompt; i++)
        CHECK(r->prompt[i] >= 0 && r->prompt[i] < ex->vocab, ANVIL_ERR_INVALID_ARG,
              "prompt token %d (at %d) is outside the vocabulary (%d)", r->prompt[i], i, ex->vocab);
    CHECK(r->n_prompt < ex->max_seq_len, ANVIL_ERR_CAPACITY,
          "the prompt has %d tokens; the context holds %d, with room for at least one new token", r->n_prompt,
          ex->max_seq_len);
    return ANVIL_OK;
}

static anvil_status copy_lists(const anvil_request *q, xreq *r)
{
    if (q->n_stop > 0) {
        r->stop = calloc((size_t)q->n_stop, sizeof *r->stop);
        CHECK(r->stop != NULL, ANVIL_ERR_OOM, "out of memory");
        for (int32_t i = 0; i < q->n_stop; i++) {
            r->stop[i] = strdup(q->stop[i]);
            CHECK(r->stop[i] != NULL, ANVIL_ERR_OOM, "out of memory");
            r->n_stop = i + 1;
            size_t len = strlen(q->stop[i]);
            if (len > r->max_stop_len)
                r->max_stop_len = len;
        }
    }
    if (q->n_stop_token_ids > 0) {
        r->stop_ids = malloc((size_t)q->n_stop_token_ids * sizeof *r->stop_ids);
        CHECK(r->stop_ids != NULL, ANVIL_ERR_OOM, "out of memory");
        memcpy(r->stop_ids, q->stop_token_ids, (size_t)q->n_stop_token_ids * sizeof *r->stop_ids);
        r->n_stop_ids = q->n_stop_token_ids;
    }
    if (q->n_logit_bias > 0) {
        r->bias = malloc((size_t)q->n_logit_bias * sizeof *r->bias);
        CHECK(r->bias != NULL, ANVIL_ERR_OOM, "out of memory");
        memcpy(r->bias, q->logit_bias, (size_t)q->n_logit_bias * sizeof *r->bias);
        r->n_bias = q->n_logit_bias;
    }
    return ANVIL_OK;
}

anvil_status anvil_exec_request_make(anvil_executor *ex, const anvil_request *q, xreq **out)
{
    *out = NULL;
    CHECK(q != NULL, ANVIL_ERR_INVALID_ARG, "enqueue: NULL request");
    TRY(check_params(ex, q));
    xreq *r = calloc(1, sizeof *r);
    CHECK(r != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st;
    r->p = *q;
    r->p.prompt_ids = NULL;
    r->p.prompt = NULL;
    r->p.logit_bias = NULL;
    r->p.stop_token_ids = NULL;
    r->p.stop = NULL;
    TRY_GOTO(copy_prompt(ex, q, r), fail);
    TRY_GOTO(copy_lists(q, r), fail);
    const int32_t room = ex->max_seq_len - r->n_prompt;
    r->max_tokens = q->max_tokens == 0 || q->max_tokens > room ? room : q->max_tokens;
    CHECK_GOTO(q->min_tokens <= r->max_tokens, ANVIL_ERR_INVALID_ARG, fail,
               "min_tokens (%d) exceeds the %d tokens the context leaves", q->min_tokens, r->max_tokens);
    r->n_top = q->logprobs > 0 ? q->logprobs : 0;
    r->beam = q->beam_width > 1;
    r->width = r->beam ? q->beam_width : q->n;
    r->worst_blocks = worst_blocks(ex, r);
    r->seqs = calloc((size_t)r->width, sizeof *r->seqs);
    CHECK_GOTO(r->seqs != NULL, ANVIL_ERR_OOM, fail, "out of memory");
    if (r->beam) {
        r->hyps = calloc((size_t)r->width, sizeof *r->hyps);
        CHECK_GOTO(r->hyps != NULL, ANVIL_ERR_OOM, fail, "out of memory");
        r->heuristic_open = 1;
    }
    TRY_GOTO(anvil_exec_seq_new(ex, r, &r->seqs[0]), fail);
    r->n_seqs = 1;
    r->t_enqueue = anvil_exec_now();
    *out = r;
    return ANVIL_OK;
fail:
    anvil_exec_request_free(r);
    return st;
}

/* ------------------------------------------------------------ results */

void anvil_result_free(anvil_result *res)
{
    if (res == NULL)
        return;
    for (int32_t i = 0; res->sequences && i < res->n_sequences; i++) {
        anvil_sequence_output *o = &res->sequences[i];
        free(o->token_ids);
        free(o->text);
        free(o->logprobs);
        free(o->top_logprobs);
    }
    free(res->sequences);
    free(res->prompt_ids);
    free(res);
}

static void *dup_mem(const void *p, size_t bytes)
{
    void *q = malloc(bytes ? bytes : 1);
    if (q && bytes)
        memcpy(q, p, bytes);
    return q;
}

/* The text gen adds to the prompt (as the streamed text of a sample:
 * exec_sample.c primes its detokenizer the same way). *text is malloc'd. */
static anvil_status decode_after_prompt(const anvil_executor *ex, const xreq *r, const int32_t *gen, int32_t n_gen,
                                        char **text, size_t *len)
{
    *text = NULL;
    anvil_detokenizer *d;
    TRY(anvil_detokenizer_create(ex->tok, r->p.skip_special_tokens, &d));
    anvil_status st = anvil_detokenizer_prime(d, r->prompt, (size_t)r->n_prompt);
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (int32_t i = 0; st == ANVIL_OK && i <= n_gen; i++) {
        const char *t;
        size_t k;
        st = i < n_gen ? anvil_detokenizer_push(d, gen[i], &t, &k) : anvil_detokenizer_flush(d, &t, &k);
        if (st == ANVIL_OK && n + k + 1 > cap) {
            size_t c = cap ? cap : 64;
            while (c < n + k + 1)
                c *= 2;
            char *b = realloc(buf, c);
            if (b == NULL) {
                st = ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
            } else {
                buf = b;
                cap = c;
            }
        }
        if (st == ANVIL_OK) {
            memcpy(buf + n, t, k);
            n += k;
            buf[n] = '\0';
        }
    }
    anvil_detokenizer_free(d);
    if (st != ANVIL_OK) {
        free(buf);
        return st;
    }
    if (buf == NULL && (buf = calloc(1, 1)) == NULL)
        return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    *text = buf;
    *len = n;
    return ANVIL_OK;
}

static anvil_status fill_output(const anvil_executor *ex, const xreq *r, anvil_sequence_output *o,
                                const int32_t *gen, int32_t n_gen, const float *lps, const anvil_token_logprob *top,
                                const char *text, size_t text_len, int32_t n_decode)
{
    o->token_ids = dup_mem(gen, (size_t)n_gen * sizeof *gen);
    CHECK(o->token_ids != NULL, ANVIL_ERR_OOM, "out of memory");
    o->n_tokens = n_gen;
    if (lps) {
        o->logprobs = dup_mem(lps, (size_t)n_gen * sizeof *lps);
        CHECK(o->logprobs != NULL, ANVIL_ERR_OOM, "out of memory");
        if (top && r->n_top > 0) {
            o->top_logprobs = dup_mem(top, (size_t)n_gen * (size_t)r->n_top * sizeof *top);
            CHECK(o->top_logprobs != NULL, ANVIL_ERR_OOM, "out of memory");
            o->n_top = r->n_top;
        }
    }
    if (ex->tok == NULL)
        return ANVIL_OK;
    if (n_decode >= 0) {
        /* beams: decoded at the end, without the end token that stopped
         * them (it adds no text, as a sample's) */
        return decode_after_prompt(ex, r, gen, n_decode, &o->text, &o->text_len);
    }
    o->text = malloc(text_len + 1);
    CHECK(o->text != NULL, ANVIL_ERR_OOM, "out of memory");
    if (text_len)
        memcpy(o->text, text, text_len);
    o->text[text_len] = '\0';
    o->text_len = text_len;
    return ANVIL_OK;
}

anvil_status anvil_exec_result_build(anvil_executor *ex, xreq *r, anvil_request_finish why, anvil_result **out)
{
    *out = NULL;
    anvil_result *res = calloc(1, sizeof *res);
    CHECK(res != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = ANVIL_OK;
    res->id = r->id;
    res->status = r->err_status;
    snprintf(res->error, sizeof res->error, "%s", r->err_msg);
    res->prompt_ids = dup_mem(r->prompt, (size_t)r->n_prompt * sizeof *r->prompt);
    res->n_prompt = r->n_prompt;
    res->n_cached_prompt = r->n_cached_prompt;
    res->n_preemptions = r->n_preemptions;
    const double now = anvil_exec_now();
    res->queue_s = r->t_first_sched > 0 ? r->t_first_sched - r->t_enqueue : now - r->t_enqueue;
    res->first_token_s = r->t_first_token > 0 ? r->t_first_token - r->t_enqueue : 0.0;
    res->total_s = now - r->t_enqueue;
    CHECK_GOTO(res->prompt_ids != NULL, ANVIL_ERR_OOM, fail, "out of memory");

    const int use_hyps = r->beam && r->n_hyps > 0;
    res->n_sequences = use_hyps ? r->width : r->n_seqs;
    if (r->beam && !use_hyps)
        res->n_sequences = r->n_seqs; /* ended before any hypothesis (error, cancel) */
    res->sequences = calloc((size_t)(res->n_sequences ? res->n_sequences : 1), sizeof *res->sequences);
    CHECK_GOTO(res->sequences != NULL, ANVIL_ERR_OOM, fail, "out of memory");
    int32_t k = 0;
    if (use_hyps) {
        for (int32_t i = 0; i < r->n_hyps; i++, k++) {
            const xhyp *h = &r->hyps[i];
            anvil_sequence_output *o = &res->sequences[k];
            TRY_GOTO(fill_output(ex, r, o, h->tokens, h->n_tokens, h->logprobs, h->top, NULL, 0,
                                 h->stopped && h->n_tokens > 0 ? h->n_tokens - 1 : h->n_tokens),
                     fail);
            o->finish = h->stopped ? ANVIL_REQUEST_STOP : ANVIL_REQUEST_LENGTH;
            o->stop_token = h->stopped && h->n_tokens > 0 ? h->tokens[h->n_tokens - 1] : -1;
            o->stop_string = -1;
            o->cumulative_logprob = h->cum_logprob;
            o->score = h->score;
        }
        res->n_sequences = k;
    } else {
        for (int32_t i = 0; i < r->n_seqs; i++, k++) {
            const xseq *s = r->seqs[i];
            anvil_sequence_output *o = &res->sequences[k];
            const int32_t n_gen = s->n_tokens - r->n_prompt;
            TRY_GOTO(fill_output(ex, r, o, s->tokens + r->n_prompt, n_gen, s->logprobs, s->top, s->text, s->text_len,
                                 r->beam ? n_gen : -1),
                     fail);
            o->finish = s->finish != ANVIL_REQUEST_RUNNING ? s->finish : why;
            o->stop_token = s->stop_token;
            o->stop_string = s->stop_string;
            o->cumulative_logprob = s->cum_logprob;
            o->score = r->beam ? (double)s->beam_score : s->cum_logprob;
        }
    }
    if (why == ANVIL_REQUEST_ERROR || why == ANVIL_REQUEST_CANCELLED)
        res->finish = why;
    else
        res->finish = res->n_sequences > 0 ? res->sequences[0].finish : why;
    *out = res;
    return ANVIL_OK;
fail:
    anvil_result_free(res);
    return st;
}
