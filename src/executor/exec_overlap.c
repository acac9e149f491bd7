/*
 * The overlap scheduler (TensorRT-LLM's overlap scheduler, vLLM's async
 * scheduling): while the device runs step n, the loop plans and launches
 * step n + 1, then takes step n's ids (stop checks, text, events, ends),
 * so the host's work of a step hides under the device's.
 *
 * Step n + 1 is planned as if every sequence that samples in step n goes
 * on: its next input is a placeholder, ANVIL_TOKEN_FROM_ROW(j) for its
 * logits row j of step n, appended to its tokens at launch (s->n_pending)
 * and resolved on the device (anvil_runtime_forward_sample_launch); when
 * step n's ids are taken, the placeholder becomes the id. A sequence that
 * step n ends (an end token, a stop string) had a slot in step n + 1: that
 * slot's id is dropped and its placeholder removed. A sequence whose
 * pending token is known to be its last (max_tokens, the context) is not
 * planned beside it.
 *
 * Grammar rows. The mask of a row of step n + 1 depends on the token its
 * sequence takes in step n, which the host learns when it takes step n.
 * So step n + 1 is launched with those masks pending (the forward alone
 * is queued), step n is taken (its tokens go through the matchers), the
 * masks are made from the matchers and given (give_masks), and only then
 * is step n + 1's sampler queued: the masks are made while the device
 * runs step n + 1's forward. A row whose sequence ended in step n is
 * sampled without a mask and dropped.
 *
 * The round goes synchronous (anvil_exec_drain, then the plain step) when
 * the plan beside a launched step has a row that needs its logits on the
 * host (log-probabilities, penalties, bias, min_tokens masking, beams,
 * an n > 1 fork), or needs a preemption (max-utilization: the launched
 * step's ends may free the blocks; the plain plan preempts as before), and
 * before a refit's commit and a stop.
 *
 * KV blocks. An ended sequence's blocks go back at once, even though a
 * launched step may still write its last slot (the dropped one). That is
 * safe because the backend runs steps in launch order (one CUDA stream;
 * on the CPU a launch computes the step before it returns): whoever gets
 * the block next is in a step launched later, so it writes after that
 * stale write, and it reads only what it wrote itself or what the prefix
 * cache holds. The prefix cache cannot hold the block: a step writes only
 * into blocks that the scheduler made private and unregistered before it
 * (ensure_blocks copies a shared or registered partly filled block), and
 * blocks are registered only when the step that filled them was taken
 * (anvil_exec_register_blocks up to the KV that step computed), never for
 * an entry whose request ended. A preemption never meets a launched step
 * (above), and a copy-on-write copy goes through the host, after the
 * stream's earlier work.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/log.h"
#include "core/error.h"
#include "executor/exec_internal.h"

anvil_status anvil_exec_overlap_alloc(anvil_executor *ex)
{
    const size_t S = (size_t)ex->max_batch;
    for (int i = 0; i < 2; i++) {
        ex->fl[i].e = malloc(S * sizeof *ex->fl[i].e);
        ex->fl[i].row = malloc(S * sizeof *ex->fl[i].row);
        ex->fl[i].ids = malloc(S * sizeof *ex->fl[i].ids);
        CHECK(ex->fl[i].e && ex->fl[i].row && ex->fl[i].ids, ANVIL_ERR_OOM,
              "out of memory for the executor's launched steps");
    }
    return ANVIL_OK;
}

void anvil_exec_overlap_free(anvil_executor *ex)
{
    for (int i = 0; i < 2; i++) {
        free(ex->fl[i].e);
        free(ex->fl[i].row);
        free(ex->fl[i].ids);
    }
}

/* The launched step that holds s's entry, other than `except`; its entry
 * is dropped. */
static void forget_seq(anvil_executor *ex, const xseq *s, const launched_step *except)
{
    for (int k = 0; k < ex->fl_count; k++) {
        launched_step *l = &ex->fl[(ex->fl_first + k) % 2];
        if (l == except)
            continue;
        for (int32_t i = 0; i < l->n; i++)
            if (l->e[i].s == s)
                l->e[i].r = NULL, l->e[i].s = NULL;
    }
}

void anvil_exec_forget_launched(anvil_executor *ex, xreq *r)
{
    for (int k = 0; k < ex->fl_count; k++) {
        launched_step *l = &ex->fl[(ex->fl_first + k) % 2];
        for (int32_t i = 0; i < l->n; i++)
            if (l->e[i].r == r)
                l->e[i].r = NULL, l->e[i].s = NULL;
    }
    for (int32_t i = 0; i < r->n_seqs; i++) {
        xseq *s = r->seqs[i];
        s->n_tokens -= s->n_pending; /* the result holds accepted tokens only */
        s->n_pending = 0;
    }
}

/* Launches the packed plan. Its sequences' KV counts as computed from
 * here on (a later step, launched after it, reads it in stream order);
 * each sampling sequence gets its placeholder. On failure the plan's
 * requests fail. */
static void launch(anvil_executor *ex, const anvil_batch *b, int32_t n_reqs)
{
    const double t0 = anvil_exec_now();
    anvil_status st = anvil_runtime_forward_sample_launch(ex->rt, b, ex->b_sample);
    ex->forward_s += anvil_exec_now() - t0;
    if (st != ANVIL_OK) {
        char msg[256];
        snprintf(msg, sizeof msg, "forward step failed: %s", anvil_last_error());
        anvil_log(ANVIL_LOG_ERROR, "executor: %s", msg);
        for (int32_t i = 0; i < ex->n_plan; i++)
            ex->plan[i].s->sched_count = 0;
        for (int32_t k = 0; k < n_reqs; k++)
            anvil_exec_fail_request(ex, ex->step_reqs[k], st, msg);
        ex->n_plan = 0;
        return;
    }
    if (ex->fl_count > 0)
        ex->c_overlap_steps++;
    launched_step *l = &ex->fl[(ex->fl_first + ex->fl_count) % 2];
    ex->fl_count++;
    l->n = ex->n_plan;
    l->masks_pending = ex->b_n_pending > 0;
    for (int32_t i = 0; i < ex->n_plan; i++) {
        plan_entry *e = &ex->plan[i];
        xseq *s = e->s;
        l->e[i] = *e;
        l->row[i] = e->start + e->count == s->n_tokens ? s->logit_row : -1;
        s->n_computed += e->count;
        s->sched_count = 0;
        if (l->row[i] >= 0) {
            s->tokens[s->n_tokens++] = ANVIL_TOKEN_FROM_ROW(l->row[i]);
            s->n_pending++;
        }
    }
    ex->c_steps++;
    ex->c_computed += b->n_tokens;
    ex->n_plan = 0;
}

static int all_finished(const xreq *r)
{
    for (int32_t i = 0; i < r->n_seqs; i++)
        if (r->seqs[i]->finish == ANVIL_REQUEST_RUNNING)
            return 0;
    return 1;
}

/* Replaces s's oldest placeholder by tok and accepts it (stop checks,
 * text, the event). A later placeholder stays if s goes on; if s ended,
 * it goes, and its launched step's slot is dropped. */
static anvil_status accept_pending(anvil_executor *ex, const launched_step *l, xreq *r, xseq *s, int32_t tok)
{
    const int32_t later = s->n_pending - 1;
    s->n_tokens -= s->n_pending;
    s->n_pending = 0;
    anvil_status st = anvil_exec_accept_token(ex, r, s, tok);
    if (st == ANVIL_OK && s->finish == ANVIL_REQUEST_RUNNING) {
        s->n_tokens += later;
        s->n_pending = later;
    } else if (later > 0) {
        forget_seq(ex, s, l);
    }
    return st;
}

/* Waits for the oldest launched step and takes its ids. */
static void take_oldest(anvil_executor *ex)
{
    launched_step *l = &ex->fl[ex->fl_first];
    const double t0 = anvil_exec_now();
    anvil_status st = anvil_runtime_forward_sample_wait(ex->rt, l->ids);
    const double t1 = anvil_exec_now();
    ex->forward_s += t1 - t0;
    if (st != ANVIL_OK) {
        char msg[256];
        snprintf(msg, sizeof msg, "forward step failed: %s", anvil_last_error());
        anvil_log(ANVIL_LOG_ERROR, "executor: %s", msg);
        for (int32_t i = 0; i < l->n; i++)
            if (l->e[i].r != NULL)
                anvil_exec_fail_request(ex, l->e[i].r, st, msg); /* drops its other entries */
    } else {
        /* the step's KV is computed: its full blocks may enter the prefix cache */
        for (int32_t i = 0; ex->opts.enable_prefix_caching && i < l->n; i++)
            if (l->e[i].s != NULL)
                anvil_exec_register_blocks(ex, l->e[i].r, l->e[i].s, l->e[i].start + l->e[i].count);
        for (int32_t i = 0; i < l->n; i++) {
            xreq *r = l->e[i].r;
            xseq *s = l->e[i].s;
            if (s == NULL || l->row[i] < 0 || s->finish != ANVIL_REQUEST_RUNNING)
                continue;
            anvil_status as = accept_pending(ex, l, r, s, l->ids[l->row[i]]);
            if (as != ANVIL_OK) {
                anvil_exec_fail_request(ex, r, as, anvil_last_error());
                continue;
            }
            if (s->finish != ANVIL_REQUEST_RUNNING) {
                anvil_exec_seq_release(ex, s); /* see the top of the file: safe beside a launched step */
                if (all_finished(r))
                    anvil_exec_finish_request(ex, r, r->seqs[0]->finish);
            }
        }
    }
    l->n = 0;
    ex->fl_first = (ex->fl_first + 1) % 2;
    ex->fl_count--;
    const double dt = anvil_exec_now() - t1;
    ex->tokens_s += dt;
    if (ex->fl_count > 0 && ex->overlap_hidden)
        ex->overlapped_s += dt;
}

/* The newest launched step's grammar masks, if it waits for them: made
 * from its sequences' matchers as they are now, after every earlier step
 * was taken; the runtime then queues its sampler. A failure there fails
 * at that step's wait (take_oldest fails its requests). */
static void give_masks(anvil_executor *ex)
{
    if (ex->fl_count == 0)
        return;
    launched_step *l = &ex->fl[(ex->fl_first + ex->fl_count - 1) % 2];
    if (!l->masks_pending)
        return;
    l->masks_pending = 0;
    double fill_s = 0.0;
    const double t0 = anvil_exec_now();
    anvil_status st = anvil_exec_masks_give(ex, l->e, l->row, l->n, 0, &fill_s);
    const double dt = anvil_exec_now() - t0;
    ex->forward_s += dt - fill_s;
    if (ex->overlap_hidden) /* under the step's forward */
        ex->overlapped_s += fill_s;
    if (st != ANVIL_OK)
        anvil_log(ANVIL_LOG_ERROR, "executor: queueing a step's sampler failed: %s", anvil_last_error());
}

void anvil_exec_drain(anvil_executor *ex)
{
    while (ex->fl_count > 0)
        take_oldest(ex);
}

void anvil_exec_round(anvil_executor *ex)
{
    anvil_batch b;
    int32_t n_reqs = 0;
    if (ex->fl_count > 0) {
        /* plan step n + 1 beside step n */
        const double t0 = anvil_exec_now();
        ex->sched_speculative = 1;
        anvil_exec_schedule(ex);
        ex->sched_speculative = 0;
        int go = !ex->sched_aborted && ex->n_plan > 0;
        if (go)
            go = anvil_exec_build_batch(ex, &b, &n_reqs);
        const double dt = anvil_exec_now() - t0;
        ex->schedule_s += dt;
        if (ex->overlap_hidden)
            ex->overlapped_s += dt;
        if (go) {
            launch(ex, &b, n_reqs);
            take_oldest(ex);
            give_masks(ex); /* step n's tokens are in the matchers now */
            return;
        }
        /* it cannot go beside step n: take step n, then plan as usual */
        anvil_exec_unplan(ex);
        anvil_exec_drain(ex);
    }
    if (ex->n_waiting == 0 && ex->n_running == 0)
        return;
    const double t0 = anvil_exec_now();
    anvil_exec_schedule(ex);
    int on_backend = 0;
    if (ex->n_plan > 0)
        on_backend = anvil_exec_build_batch(ex, &b, &n_reqs);
    ex->schedule_s += anvil_exec_now() - t0;
    if (ex->n_plan == 0)
        return;
    if (ex->overlap && on_backend) {
        launch(ex, &b, n_reqs); /* taken in the next round, after step n + 1 is launched */
        give_masks(ex);         /* made while the device runs the forward */
    } else
        anvil_exec_step(ex, &b, n_reqs, on_backend);
}
