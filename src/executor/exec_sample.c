/*
 * One sample's next token: logits processors, the draw, log-probabilities,
 * the stop conditions, and the text streamed out.
 *
 * Text. Each generated token goes through the sequence's streaming
 * detokenizer, primed with the prompt's last tokens (the text is what the
 * generated tokens add to the prompt's), whose output (never half a UTF-8
 * character) is appended to s->text. Stop strings are searched in that
 * text from s->stop_scan, the earliest byte where a match could still
 * start. Text that might be the beginning of a stop string (the longest
 * suffix equal to a prefix of one) is held back from the events until the
 * next tokens decide. A match cuts the text where it starts. The token
 * that ends a sequence (end-of-sequence or a stop token id) stays in its
 * ids but adds no text, as in vLLM.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "executor/exec_internal.h"
#include "sampler/sampler.h"

static anvil_status text_append(xseq *s, const char *p, size_t n)
{
    if (n == 0)
        return ANVIL_OK;
    if (s->text_len + n + 1 > s->text_cap) {
        size_t cap = s->text_cap ? s->text_cap : 64;
        while (cap < s->text_len + n + 1)
            cap *= 2;
        char *t = realloc(s->text, cap);
        CHECK(t != NULL, ANVIL_ERR_OOM, "out of memory");
        s->text = t;
        s->text_cap = cap;
    }
    memcpy(s->text + s->text_len, p, n);
    s->text_len += n;
    s->text[s->text_len] = '\0';
    return ANVIL_OK;
}

/* The earliest stop-string match starting at or after s->stop_scan: its
 * index, with *pos its byte offset; -1 if none. */
static int32_t find_stop(const xreq *r, const xseq *s, size_t *pos)
{
    int32_t best = -1;
    size_t best_pos = 0;
    for (int32_t i = 0; i < r->n_stop; i++) {
        const size_t len = strlen(r->stop[i]);
        if (s->text_len < len)
            continue;
        for (size_t p = s->stop_scan; p + len <= s->text_len; p++) {
            if (best >= 0 && p >= best_pos)
                break;
            if (memcmp(s->text + p, r->stop[i], len) == 0) {
                best = i;
                best_pos = p;
                break;
            }
        }
    }
    *pos = best_pos;
    return best;
}

/* Bytes at the end of the text (after stop_scan) that may begin a stop string. */
static size_t holdback(const xreq *r, const xseq *s)
{
    size_t max_k = s->text_len - s->stop_scan;
    if (r->max_stop_len == 0)
        return 0;
    if (max_k > r->max_stop_len - 1)
        max_k = r->max_stop_len - 1;
    for (size_t k = max_k; k > 0; k--) {
        for (int32_t i = 0; i < r->n_stop; i++) {
            if (strlen(r->stop[i]) > k && memcmp(s->text + s->text_len - k, r->stop[i], k) == 0)
                return k;
        }
    }
    return 0;
}

/* After new text: checks the stop strings (when min_tokens allows them).
 * Cuts the text and ends the sequence on a match. */
static void check_stop_strings(const xreq *r, xseq *s, int32_t n_gen)
{
    if (r->n_stop == 0)
        return;
    if (n_gen < r->p.min_tokens) {
        s->stop_scan = s->text_len; /* nothing generated so far may match */
        return;
    }
    size_t pos;
    int32_t i = find_stop(r, s, &pos);
    if (i >= 0) {
        s->text_len = pos;
        s->text[pos] = '\0';
        if (s->emitted > pos)
            s->emitted = pos;
        s->stop_scan = pos;
        s->finish = ANVIL_REQUEST_STOP;
        s->stop_string = i;
        return;
    }
    if (s->text_len + 1 > r->max_stop_len && s->text_len + 1 - r->max_stop_len > s->stop_scan)
        s->stop_scan = s->text_len + 1 - r->max_stop_len;
}

/* The sequence's detokenizer, primed with the prompt: the text is what the
 * generated ids add to the prompt's (HF's decode(prompt + gen) after
 * decode(prompt), as vLLM streams it), so the first word keeps the space a
 * SentencePiece decoder strips at the start of a text. */
static anvil_status ensure_detok(anvil_executor *ex, const xreq *r, xseq *s)
{
    if (s->detok != NULL)
        return ANVIL_OK;
    TRY(anvil_detokenizer_create(ex->tok, r->p.skip_special_tokens, &s->detok));
    return anvil_detokenizer_prime(s->detok, r->prompt, (size_t)r->n_prompt);
}

anvil_status anvil_exec_text_finish(anvil_executor *ex, xreq *r, xseq *s)
{
    if (ex->tok == NULL || s->detok == NULL)
        return ANVIL_OK;
    const char *t;
    size_t n;
    TRY(anvil_detokenizer_flush(s->detok, &t, &n));
    if (s->finish == ANVIL_REQUEST_STOP && s->stop_string >= 0)
        return ANVIL_OK; /* already cut: what follows the match is dropped */
    TRY(text_append(s, t, n));
    anvil_request_finish before = s->finish;
    check_stop_strings(r, s, s->n_tokens - r->n_prompt);
    if (s->finish == ANVIL_REQUEST_STOP && before != ANVIL_REQUEST_STOP)
        s->stop_token = -1; /* ended by the stop string found in the last text */
    return ANVIL_OK;
}

static void apply_min_tokens(const anvil_executor *ex, const xreq *r, float *w)
{
    if (!r->p.ignore_eos)
        for (int i = 0; i < ex->cfg->n_eos_token_ids; i++)
            if (ex->cfg->eos_token_ids[i] >= 0 && ex->cfg->eos_token_ids[i] < ex->vocab)
                w[ex->cfg->eos_token_ids[i]] = -INFINITY;
    for (int32_t i = 0; i < r->n_stop_ids; i++)
        w[r->stop_ids[i]] = -INFINITY;
}

/* s's grammar's allowed tokens now (after every token it accepted) into
 * words [(vocab + 31) / 32], counted in the grammar's time and masks. */
static anvil_status fill_mask(anvil_executor *ex, xseq *s, uint32_t *words)
{
    const size_t n = ((size_t)ex->vocab + 31) / 32;
    const double t0 = anvil_exec_now();
    memset(words, 0, n * sizeof *words);
    const anvil_status st = anvil_grammar_matcher_fill_mask(s->gm, words, n);
    ex->grammar_s += anvil_exec_now() - t0;
    ex->c_grammar++;
    return st;
}

/* A grammar's mask on the processed logits: what it does not allow is
 * -inf (its end tokens are allowed only where the output may end). Sets
 * *none when it allows nothing (no token of the vocabulary continues). */
static anvil_status apply_grammar(anvil_executor *ex, xseq *s, float *w, int *none)
{
    if (ex->gmask == NULL) {
        ex->gmask = malloc(((size_t)ex->vocab + 31) / 32 * sizeof *ex->gmask);
        CHECK(ex->gmask != NULL, ANVIL_ERR_OOM, "out of memory for a grammar mask");
    }
    TRY(fill_mask(ex, s, ex->gmask));
    const double t0 = anvil_exec_now();
    *none = !anvil_sampler_mask(w, ex->vocab, ex->gmask);
    ex->grammar_s += anvil_exec_now() - t0;
    return ANVIL_OK;
}

/* The grammar allows no token: the sequence ends here, as the engine asks
 * (a vocabulary without a byte the grammar needs), with what it has. */
static anvil_status end_by_grammar(anvil_executor *ex, xreq *r, xseq *s)
{
    s->finish = ANVIL_REQUEST_STOP;
    s->stop_token = -1;
    const size_t before = s->emitted;
    TRY(anvil_exec_text_finish(ex, r, s));
    s->emitted = s->text_len;
    if (r->p.on_event) {
        anvil_event ev = {
            .kind = ANVIL_EVENT_TOKENS,
            .request_id = r->id,
            .index = s->index,
            .token_ids = s->tokens + s->n_tokens,
            .n_tokens = 0,
            .text = s->text ? s->text + before : "",
            .text_len = s->text_len > before ? s->text_len - before : 0,
            .finish = s->finish,
            .weights_version = (uint64_t)ex->c_refits,
        };
        anvil_exec_emit(ex, r, &ev);
    }
    return ANVIL_OK;
}

anvil_status anvil_exec_sample_seq(anvil_executor *ex, xreq *r, xseq *s, const float *row)
{
    const int32_t V = ex->vocab;
    int32_t n_gen = s->n_tokens - r->n_prompt;
    float *w = ex->work;
    memcpy(w, row, (size_t)V * sizeof *w);
    if (n_gen < r->p.min_tokens)
        apply_min_tokens(ex, r, w);
    const anvil_logits_processors proc = {
        .repetition_penalty = r->p.repetition_penalty,
        .presence_penalty = r->p.presence_penalty,
        .frequency_penalty = r->p.frequency_penalty,
        .bias = r->bias,
        .n_bias = r->n_bias,
    };
    anvil_logits_apply(ex->sampler, &proc, w, r->prompt, r->n_prompt, s->tokens + r->n_prompt, n_gen);
    if (s->gm != NULL) {
        int none = 0;
        TRY(apply_grammar(ex, s, w, &none));
        if (none)
            return end_by_grammar(ex, r, s);
    }
    const int32_t tok = anvil_sampler_sample(ex->sampler, w, &r->p.sampling, &s->rng);
    if (tok < 0)
        return anvil_exec_nonfinite(ex, r, s);

    if (s->logprobs) {
        anvil_log_softmax(row, ex->lp, V);
        s->logprobs[n_gen] = ex->lp[tok];
        s->cum_logprob += ex->lp[tok];
        if (s->top)
            anvil_top_logprobs(ex->sampler, ex->lp, r->n_top, s->top + (size_t)n_gen * (size_t)r->n_top);
    }
    return anvil_exec_accept_token(ex, r, s, tok);
}

int anvil_exec_samples_on_backend(const anvil_executor *ex, const xreq *r, const xseq *s)
{
    if (r->beam || s->logprobs != NULL || (r->width > 1 && !r->forked))
        return 0;
    if (r->n_bias > 0 || r->p.repetition_penalty != 1.0f || r->p.presence_penalty != 0.0f ||
        r->p.frequency_penalty != 0.0f)
        return 0;
    /* before min_tokens, end tokens are masked (apply_min_tokens) */
    const int masks = (!r->p.ignore_eos && ex->cfg->n_eos_token_ids > 0) || r->n_stop_ids > 0;
    return !(masks && s->n_tokens - r->n_prompt < r->p.min_tokens);
}

anvil_status anvil_exec_nonfinite(const anvil_executor *ex, const xreq *r, const xseq *s)
{
    return ANVIL_FAIL(ANVIL_ERR_FORMAT,
                      "the model produced non-finite logits (NaN or infinity) at step %lld, for generated token %d "
                      "of this request: its weights or config are damaged",
                      (long long)ex->c_steps, s->n_tokens - r->n_prompt + 1);
}

anvil_status anvil_exec_accept_token(anvil_executor *ex, xreq *r, xseq *s, int32_t tok)
{
    if (tok == ANVIL_TOKEN_NONE_ALLOWED && s->gm != NULL) /* its mask allowed nothing */
        return end_by_grammar(ex, r, s);
    if (tok < 0) /* the device sampler's verdict on a poisoned row */
        return anvil_exec_nonfinite(ex, r, s);
    /* the grammar follows the token first: a token it refuses (its mask
     * was not applied) fails the request before anything is output */
    if (s->gm != NULL) {
        const double t0 = anvil_exec_now();
        const anvil_status st = anvil_grammar_matcher_accept_token(s->gm, tok);
        ex->grammar_s += anvil_exec_now() - t0;
        TRY(st);
    }
    int32_t n_gen = s->n_tokens - r->n_prompt;
    s->tokens[s->n_tokens++] = tok;
    n_gen++;
    ex->c_generated++;
    if (r->t_first_token == 0)
        r->t_first_token = anvil_exec_now();

    /* stop conditions, text */
    const size_t emitted_before = s->emitted;
    const int end_token = n_gen >= r->p.min_tokens &&
                          ((!r->p.ignore_eos && anvil_exec_is_eos(ex, tok)) || anvil_exec_is_stop_token(r, tok));
    if (end_token) {
        s->finish = ANVIL_REQUEST_STOP;
        s->stop_token = tok;
    } else if (ex->tok) {
        TRY(ensure_detok(ex, r, s));
        const char *t;
        size_t n;
        TRY(anvil_detokenizer_push(s->detok, tok, &t, &n));
        TRY(text_append(s, t, n));
        check_stop_strings(r, s, n_gen);
    }
    if (s->finish == ANVIL_REQUEST_RUNNING && s->gm != NULL && anvil_grammar_matcher_is_done(s->gm)) {
        s->finish = ANVIL_REQUEST_STOP; /* the output is complete: nothing may follow */
        s->stop_token = -1;
    }
    if (s->finish == ANVIL_REQUEST_RUNNING && (n_gen >= r->max_tokens || s->n_tokens >= ex->max_seq_len))
        s->finish = ANVIL_REQUEST_LENGTH;
    if (s->finish != ANVIL_REQUEST_RUNNING)
        TRY(anvil_exec_text_finish(ex, r, s));
    size_t upto = s->text_len;
    if (s->finish == ANVIL_REQUEST_RUNNING)
        upto -= holdback(r, s);
    if (upto < s->emitted)
        upto = s->emitted;
    s->emitted = upto;

    if (r->p.on_event) {
        anvil_event ev = {
            .kind = ANVIL_EVENT_TOKENS,
            .request_id = r->id,
            .index = s->index,
            .token_ids = &s->tokens[s->n_tokens - 1],
            .n_tokens = 1,
            .logprobs = s->logprobs ? &s->logprobs[n_gen - 1] : NULL,
            .top_logprobs = s->top ? s->top + (size_t)(n_gen - 1) * (size_t)r->n_top : NULL,
            .n_top = s->top ? r->n_top : 0,
            .text = s->text ? s->text + emitted_before : "",
            .text_len = upto > emitted_before ? upto - emitted_before : 0,
            .finish = s->finish,
            .weights_version = (uint64_t)ex->c_refits,
        };
        anvil_exec_emit(ex, r, &ev);
    }
    return ANVIL_OK;
}
