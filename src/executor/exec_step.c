/*
 * One step: the plan becomes a packed batch (each planned sequence's
 * tokens, positions and block table; a logits row for each sequence whose
 * chunk reaches its last token), the runtime runs it, newly filled blocks
 * enter the prefix cache, and every logits row goes to sampling (samples)
 * or beam search (beams). When no row of the step needs its logits on the
 * host (no log-probabilities, processors, beams or fork: see
 * anvil_exec_samples_on_backend), the runtime samples them where they are
 * (anvil_runtime_forward_sample) and only the ids come back; the draws are
 * the same either way. Rows with a grammar sample there too, with its
 * mask: the step is launched, the masks are made while the device runs
 * the forward, and the sampler is queued with them (forward_masked).
 * Requests whose sequences have all ended finish.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/log.h"
#include "core/error.h"
#include "executor/exec_internal.h"

/* Registers s's newly filled blocks in the prefix cache. A beam request's
 * generated blocks stay private: beams drop blocks mid-request, and the
 * guaranteed-no-evict reservation counts on nobody else holding them. A
 * sequence admitted before a refit registers nothing: its blocks mix KV of
 * the old and the new weights. */
void anvil_exec_register_blocks(anvil_executor *ex, const xreq *r, xseq *s, int32_t upto)
{
    if (s->root != ex->kv_root)
        return;
    const int32_t bs = ex->bs;
    int32_t full = upto / bs;
    if (r->beam && full > r->n_prompt / bs)
        full = r->n_prompt / bs;
    for (int32_t j = s->n_hashed; j < full; j++) {
        const uint64_t parent = j ? s->block_hash[j - 1] : s->root;
        const int32_t *t = s->tokens + (size_t)j * (size_t)bs;
        const uint64_t h = anvil_kv_hash(parent, t, bs);
        s->block_hash[j] = h;
        anvil_kv_register(ex->kv, s->blocks[j], h, parent, t);
    }
    if (full > s->n_hashed)
        s->n_hashed = full;
}

/* n > 1: the samples split from seq 0 once its prompt's logits exist. They
 * share its blocks (the partly filled last one is copied on first write). */
static anvil_status fork_samples(anvil_executor *ex, xreq *r)
{
    xseq *parent = r->seqs[0];
    for (int32_t i = 1; i < r->width; i++) {
        xseq *c;
        TRY(anvil_exec_seq_fork(ex, r, parent, &c));
        c->index = i;
        anvil_rng_seed(&c->rng, r->p.sampling.seed + (uint64_t)i);
        c->logit_row = parent->logit_row;
        r->seqs[r->n_seqs++] = c;
    }
    r->forked = 1;
    return ANVIL_OK;
}

static int all_finished(const xreq *r)
{
    for (int32_t i = 0; i < r->n_seqs; i++)
        if (r->seqs[i]->finish == ANVIL_REQUEST_RUNNING)
            return 0;
    return 1;
}

/* Samples every sequence of r that has logits; finishes r when all ended. */
static void handle_samples(anvil_executor *ex, xreq *r, int on_backend)
{
    if (!r->forked && r->width > 1 && r->seqs[0]->logit_row >= 0) {
        anvil_status st = fork_samples(ex, r);
        if (st != ANVIL_OK) {
            anvil_exec_fail_request(ex, r, st, anvil_last_error());
            return;
        }
    }
    for (int32_t i = 0; i < r->n_seqs; i++) {
        xseq *s = r->seqs[i];
        if (s->logit_row < 0 || s->finish != ANVIL_REQUEST_RUNNING)
            continue;
        if (s->mask_st != ANVIL_OK) { /* its grammar could not make the mask (forward_masked) */
            char msg[sizeof r->err_msg];
            memcpy(msg, r->err_msg, sizeof msg);
            const anvil_status mst = s->mask_st;
            s->mask_st = ANVIL_OK;
            anvil_exec_fail_request(ex, r, mst, msg);
            return;
        }
        anvil_status st = on_backend
                              ? anvil_exec_accept_token(ex, r, s, ex->b_next[s->logit_row])
                              : anvil_exec_sample_seq(ex, r, s, ex->logits + (size_t)s->logit_row * (size_t)ex->vocab);
        if (st != ANVIL_OK) {
            anvil_exec_fail_request(ex, r, st, anvil_last_error());
            return;
        }
        if (s->finish != ANVIL_REQUEST_RUNNING)
            anvil_exec_seq_release(ex, s); /* its blocks go back now, not when the last sample ends */
    }
    if (all_finished(r))
        anvil_exec_finish_request(ex, r, r->seqs[0]->finish);
}

static void handle_beams(anvil_executor *ex, xreq *r)
{
    const float **rows = ex->beam_rows;
    for (int32_t i = 0; i < r->n_seqs; i++) {
        if (r->seqs[i]->logit_row < 0)
            return; /* not every beam reached its logits: the scheduler keeps them together */
        rows[i] = ex->logits + (size_t)r->seqs[i]->logit_row * (size_t)ex->vocab;
        if (anvil_greedy_pick(rows[i], ex->vocab) < 0) { /* a NaN or +inf: a damaged model */
            anvil_status st = anvil_exec_nonfinite(ex, r, r->seqs[i]);
            anvil_exec_fail_request(ex, r, st, anvil_last_error());
            return;
        }
    }
    anvil_status st = anvil_exec_beam_step(ex, r, rows);
    if (st != ANVIL_OK) {
        anvil_exec_fail_request(ex, r, st, anvil_last_error());
        return;
    }
    if (r->done)
        anvil_exec_finish_request(ex, r, ANVIL_REQUEST_STOP);
}

int anvil_exec_build_batch(anvil_executor *ex, anvil_batch *b, int32_t *n_reqs_out)
{
    const int32_t S = ex->n_plan, MB = ex->max_blocks;
    int32_t T = 0, L = 0;
    /* the distinct requests of the plan, in plan order; only planned
     * sequences get a logits row */
    xreq **reqs = ex->step_reqs;
    int32_t n_reqs = 0;
    for (int32_t i = 0; i < S; i++) {
        xreq *r = ex->plan[i].r;
        int seen = 0;
        for (int32_t k = n_reqs - 1; k >= 0 && !seen; k--)
            seen = reqs[k] == r;
        if (!seen) {
            reqs[n_reqs++] = r;
            for (int32_t j = 0; j < r->n_seqs; j++)
                r->seqs[j]->logit_row = -1;
        }
    }
    /* sampling on the backend (only ids come back) when every row needs
     * nothing else from its logits; else the logits come to the host */
    int on_backend = 1;
    ex->b_n_pending = 0;
    for (int32_t i = 0; i < S; i++) {
        const plan_entry *e = &ex->plan[i];
        xseq *s = e->s;
        ex->b_starts[i] = T;
        for (int32_t k = 0; k < e->count; k++, T++) {
            ex->b_tokens[T] = s->tokens[e->start + k]; /* < 0: a placeholder (the overlap scheduler) */
            ex->b_pos[T] = e->start + k;
        }
        int32_t *table = ex->b_tables + (size_t)i * (size_t)MB;
        memcpy(table, s->blocks, (size_t)s->n_blocks * sizeof *table);
        for (int32_t j = s->n_blocks; j < MB; j++)
            table[j] = s->blocks[0];
        if (e->start + e->count == s->n_tokens) {
            const xreq *r = e->r;
            on_backend = on_backend && anvil_exec_samples_on_backend(ex, r, s);
            /* a grammar's mask depends on the tokens before this one, which
             * a launched step may still be computing: it comes later
             * (anvil_exec_masks_give), while the device runs the forward */
            ex->b_sample[L] = (anvil_sample_row){
                .sampling = r->p.sampling, .rng = &s->rng, .mask_pending = s->gm != NULL};
            ex->b_n_pending += s->gm != NULL;
            s->logit_row = L;
            ex->b_rows[L++] = T - 1;
        }
    }
    ex->b_starts[S] = T;
    *b = (anvil_batch){
        .n_tokens = T, .token_ids = ex->b_tokens, .positions = ex->b_pos,
        .n_seqs = S, .seq_starts = ex->b_starts, .block_tables = ex->b_tables, .max_blocks_per_seq = MB,
        .n_logits = L, .logit_rows = ex->b_rows,
    };
    *n_reqs_out = n_reqs;
    return on_backend;
}

/* The step sampled on the backend with its grammar rows' masks, made while
 * the device runs the forward: launched, masks given, waited for. */
static anvil_status forward_masked(anvil_executor *ex, const anvil_batch *b, double *fill_s)
{
    TRY(anvil_runtime_forward_sample_launch(ex->rt, b, ex->b_sample));
    int32_t *row = ex->fl[0].row; /* scratch: no step is launched here */
    for (int32_t i = 0; i < ex->n_plan; i++)
        row[i] = ex->plan[i].s->logit_row;
    const anvil_status st = anvil_exec_masks_give(ex, ex->plan, row, ex->n_plan, 1, fill_s);
    const anvil_status wst = anvil_runtime_forward_sample_wait(ex->rt, ex->b_next); /* takes the step either way */
    return st != ANVIL_OK ? st : wst;
}

void anvil_exec_step(anvil_executor *ex, const anvil_batch *b, int32_t n_reqs, int on_backend)
{
    const int32_t S = ex->n_plan, T = b->n_tokens;
    xreq **reqs = ex->step_reqs;
    on_backend = on_backend && b->n_logits > 0;
    const double t_fwd = anvil_exec_now();
    double fill_s = 0.0; /* the masks' part of the forward's time: tokens_s has it */
    anvil_status st = !on_backend            ? anvil_runtime_forward(ex->rt, b, ex->logits)
                      : ex->b_n_pending > 0 ? forward_masked(ex, b, &fill_s)
                                             : anvil_runtime_forward_sample(ex->rt, b, ex->b_sample, ex->b_next);
    if (st != ANVIL_OK) {
        char msg[256];
        snprintf(msg, sizeof msg, "forward step failed: %s", anvil_last_error());
        anvil_log(ANVIL_LOG_ERROR, "executor: %s", msg);
        for (int32_t k = 0; k < n_reqs; k++)
            anvil_exec_fail_request(ex, reqs[k], st, msg);
        return;
    }
    const double t_tok = anvil_exec_now();
    ex->forward_s += t_tok - t_fwd - fill_s;
    ex->c_steps++;
    ex->c_computed += T;
    for (int32_t i = 0; i < S; i++) {
        plan_entry *e = &ex->plan[i];
        e->s->n_computed += e->count;
        e->s->sched_count = 0;
        if (ex->opts.enable_prefix_caching)
            anvil_exec_register_blocks(ex, e->r, e->s, e->s->n_computed);
    }
    for (int32_t k = 0; k < n_reqs; k++) {
        xreq *r = reqs[k];
        if (r->beam)
            handle_beams(ex, r);
        else
            handle_samples(ex, r, on_backend);
    }
    ex->tokens_s += anvil_exec_now() - t_tok;
}
