/*
 * A launched step's grammar masks, made while the device runs its forward
 * (docs/executor.md, "Grammar rows").
 *
 * At a 128k-token vocabulary a mask costs from about a microsecond (a warm
 * state of the grammar's mask cache: an OR over the words) to milliseconds
 * (a new state: a walk of the vocabulary's trie), and 64 constrained rows
 * of a step can take longer than a small model's forward (1B shape on an
 * H100: ~7 ms of masks against a 2.5 ms forward, docs/performance.md). So
 * the rows are filled side by side on the executor's mask threads
 * (anvil_executor_options.grammar_threads), each thread taking the next
 * row when it finishes one (the costs are uneven). The masks do not depend
 * on the split: a matcher belongs to its sequence alone, and the grammar
 * and its vocabulary are shared read-only, the mask cache under the
 * grammar's lock (docs/grammar.md).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/threadpool.h"
#include "executor/exec_internal.h"

enum { MAX_MASK_THREADS = 64 };

typedef struct mask_job {
    anvil_executor *ex;
    const plan_entry *e;
    const int32_t *row;
    int32_t n_todo;
    atomic_int next;
    double busy[MAX_MASK_THREADS]; /* each thread's time in the matchers */
} mask_job;

static uint32_t *row_mask(const anvil_executor *ex, int32_t row)
{
    return ex->gmasks + (size_t)row * (((size_t)ex->vocab + 31) / 32);
}

/* Fills the mask of todo entry k; its status and message in gm_st / gm_msg. */
static double fill_entry(anvil_executor *ex, const plan_entry *e, const int32_t *row, int32_t k)
{
    const int32_t i = ex->gm_todo[k];
    const size_t words = ((size_t)ex->vocab + 31) / 32;
    uint32_t *m = row_mask(ex, row[i]);
    const double t0 = anvil_exec_now();
    memset(m, 0, words * sizeof *m);
    const anvil_status st = anvil_grammar_matcher_fill_mask(e[i].s->gm, m, words);
    ex->gm_st[k] = st;
    if (st != ANVIL_OK)
        snprintf(ex->gm_msg[k], sizeof ex->gm_msg[k], "%s", anvil_last_error());
    return anvil_exec_now() - t0;
}

static void mask_task(void *ctx, int ith, int nth)
{
    (void)nth;
    mask_job *j = ctx;
    double busy = 0.0;
    for (;;) {
        const int k = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (k >= j->n_todo)
            break;
        busy += fill_entry(j->ex, j->e, j->row, k);
    }
    j->busy[ith] = busy;
}

/* The mask threads: grammar_threads, or by default half the CPUs (at most
 * 8: beyond that the grammar's cache lock and memory bandwidth gain
 * little); 1 means none (the executor's thread fills every mask). */
static int mask_threads(const anvil_executor *ex)
{
    int n = ex->opts.grammar_threads;
    if (n <= 0) {
        n = anvil_cpu_count() / 2;
        n = n > 8 ? 8 : n;
    }
    n = n > MAX_MASK_THREADS ? MAX_MASK_THREADS : n;
    return n < 1 ? 1 : n;
}

anvil_status anvil_exec_masks_give(anvil_executor *ex, const plan_entry *e, const int32_t *row, int32_t n,
                                   int defer, double *fill_s)
{
    const double t0 = anvil_exec_now();
    int32_t n_todo = 0;
    for (int32_t i = 0; i < n; i++) {
        if (row[i] < 0)
            continue;
        const xseq *s = e[i].s;
        ex->b_allowed[row[i]] = NULL; /* an ended sequence's row: sampled, then dropped */
        if (s == NULL || s->gm == NULL || s->finish != ANVIL_REQUEST_RUNNING)
            continue;
        ex->gm_todo[n_todo++] = i;
    }
    const int nth = mask_threads(ex);
    if (n_todo >= 2 && nth > 1 && ex->gm_pool == NULL) {
        /* made on first use: an executor that never constrains holds no threads */
        if (anvil_threadpool_create(nth, &ex->gm_pool) != ANVIL_OK)
            ex->gm_pool = NULL; /* no threads: the masks are made here, one by one */
    }
    if (n_todo >= 2 && ex->gm_pool != NULL) {
        mask_job j = {.ex = ex, .e = e, .row = row, .n_todo = n_todo};
        atomic_init(&j.next, 0);
        anvil_threadpool_run(ex->gm_pool, mask_task, &j);
        for (int t = 0; t < anvil_threadpool_size(ex->gm_pool) && t < MAX_MASK_THREADS; t++)
            ex->grammar_s += j.busy[t];
    } else {
        for (int32_t k = 0; k < n_todo; k++)
            ex->grammar_s += fill_entry(ex, e, row, k);
    }
    ex->c_grammar += n_todo;
    for (int32_t k = 0; k < n_todo; k++) {
        const int32_t i = ex->gm_todo[k];
        /* a request failed on an earlier row of this step is gone: its
         * launched entries were dropped (anvil_exec_forget_launched) */
        xreq *r = e[i].r;
        xseq *s = e[i].s;
        if (s == NULL || s->finish != ANVIL_REQUEST_RUNNING)
            continue;
        if (ex->gm_st[k] == ANVIL_OK) {
            ex->b_allowed[row[i]] = row_mask(ex, row[i]);
        } else if (defer) {
            s->mask_st = ex->gm_st[k];
            snprintf(r->err_msg, sizeof r->err_msg, "%s", ex->gm_msg[k]);
        } else {
            anvil_exec_fail_request(ex, r, ex->gm_st[k], ex->gm_msg[k]); /* drops its launched entries */
        }
    }
    const double dt = anvil_exec_now() - t0;
    ex->tokens_s += dt;
    if (fill_s != NULL)
        *fill_s = dt;
    return anvil_runtime_forward_sample_masks(ex->rt, ex->b_allowed);
}
