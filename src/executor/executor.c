/*
 * The executor: its public functions, its thread, and the loop.
 *
 * Callers talk to the loop through the mutex-guarded inbox (new requests),
 * cancel list and stop flag; the loop takes them at the top of every step,
 * so the scheduler, the KV manager and the requests' state belong to the
 * loop thread alone and need no locking. The loop sleeps on `wake` when
 * nothing is queued or running. Results kept for anvil_executor_wait are
 * handed over under the mutex, signalled on `done`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/log.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "executor/exec_internal.h"

double anvil_exec_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void anvil_executor_options_default(anvil_executor_options *o)
{
    memset(o, 0, sizeof *o);
    o->policy = ANVIL_CAPACITY_GUARANTEED_NO_EVICT;
    o->max_logprobs = 20;
    o->enable_prefix_caching = 1;
    o->enable_overlap = ANVIL_OVERLAP_AUTO;
}

/* Grows *arr (of *cap elements of size elt) to hold need elements. */
static int grow(void **arr, int32_t *cap, int32_t need, size_t elt)
{
    if (need <= *cap)
        return 1;
    int32_t nc = *cap ? *cap : 16;
    while (nc < need)
        nc *= 2;
    void *p = realloc(*arr, (size_t)nc * elt);
    if (p == NULL)
        return 0;
    *arr = p;
    *cap = nc;
    return 1;
}

/* ------------------------------------------------------------ events and results */

void anvil_exec_emit(anvil_executor *ex, xreq *r, const anvil_event *ev)
{
    (void)ex;
    if (r->p.on_event)
        r->p.on_event(r->p.user, ev);
}

/* Hands a finished result to a waiter, or frees it. */
static void publish_result(anvil_executor *ex, xreq *r, anvil_result *res)
{
    if (!r->p.retain_result) {
        anvil_result_free(res);
        return;
    }
    pthread_mutex_lock(&ex->mu);
    int found = 0;
    for (int32_t i = 0; i < ex->n_kept; i++) {
        if (ex->kept[i].id == r->id) {
            ex->kept[i].result = res;
            found = 1;
            break;
        }
    }
    pthread_cond_broadcast(&ex->done);
    pthread_mutex_unlock(&ex->mu);
    if (!found)
        anvil_result_free(res);
}

/* A result that says only how the request ended, when building the full
 * one ran out of memory. */
static anvil_result *minimal_result(const xreq *r, anvil_request_finish why)
{
    anvil_result *res = calloc(1, sizeof *res);
    if (res == NULL)
        return NULL;
    res->id = r->id;
    res->finish = ANVIL_REQUEST_ERROR;
    res->status = ANVIL_ERR_OOM;
    snprintf(res->error, sizeof res->error, "out of memory building the result (it ended as %s)",
             anvil_request_finish_name(why));
    return res;
}

void anvil_exec_finish_request(anvil_executor *ex, xreq *r, anvil_request_finish why)
{
    anvil_exec_forget_launched(ex, r); /* a launched step's ids for it are dropped */
    if (r->state == XREQ_RUNNING)
        anvil_exec_running_remove(ex, r);
    else if (r->state == XREQ_WAITING)
        anvil_exec_waiting_remove(ex, r);
    for (int32_t i = 0; i < r->n_seqs; i++) {
        xseq *s = r->seqs[i];
        anvil_exec_seq_release(ex, s);
        if (s->finish == ANVIL_REQUEST_RUNNING && !r->beam) {
            /* the rest of its text, unless the request was cut short */
            if (why != ANVIL_REQUEST_ERROR && why != ANVIL_REQUEST_CANCELLED && ex->tok)
                (void)anvil_exec_text_finish(ex, r, s);
            s->finish = why;
        }
    }
    r->state = XREQ_FINISHED;
    anvil_result *res = NULL;
    if (anvil_exec_result_build(ex, r, why, &res) != ANVIL_OK)
        res = minimal_result(r, why);
    if (res != NULL) {
        anvil_event ev = {.kind = ANVIL_EVENT_FINAL, .request_id = r->id, .finish = res->finish, .result = res,
                          .weights_version = (uint64_t)ex->c_refits};
        anvil_exec_emit(ex, r, &ev);
        publish_result(ex, r, res);
    }
    ex->c_finished++;
    anvil_exec_request_free(r);
}

void anvil_exec_fail_request(anvil_executor *ex, xreq *r, anvil_status st, const char *msg)
{
    r->err_status = st == ANVIL_OK ? ANVIL_ERR_INTERNAL : st;
    snprintf(r->err_msg, sizeof r->err_msg, "%s", msg ? msg : "");
    anvil_log(ANVIL_LOG_DEBUG, "executor: request %llu failed: %s", (unsigned long long)r->id, r->err_msg);
    anvil_exec_finish_request(ex, r, ANVIL_REQUEST_ERROR);
}

/* ------------------------------------------------------------ the loop */

/* Moves new requests into the waiting queue. Requests that can never fit
 * the KV cache end here, as errors. */
static void intake(anvil_executor *ex, xreq **batch, int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        xreq *r = batch[i];
        if (!r->p.has_seed)
            r->p.sampling.seed = anvil_rng_next(&ex->seed_rng);
        anvil_rng_seed(&r->seqs[0]->rng, r->p.sampling.seed);
        if (r->worst_blocks > anvil_kv_total(ex->kv)) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "the request needs up to %d KV blocks (%d prompt tokens + %d new, %d sequences) but the "
                     "cache has %d",
                     r->worst_blocks, r->n_prompt, r->max_tokens, r->width, anvil_kv_total(ex->kv));
            r->state = XREQ_FINISHED; /* in no list */
            anvil_exec_fail_request(ex, r, ANVIL_ERR_CAPACITY, msg);
            continue;
        }
        if (anvil_exec_waiting_push_back(ex, r) != ANVIL_OK) {
            r->state = XREQ_FINISHED;
            anvil_exec_fail_request(ex, r, ANVIL_ERR_OOM, "out of memory queueing the request");
        }
    }
}

static xreq *find_request(anvil_executor *ex, uint64_t id)
{
    for (int32_t i = 0; i < ex->n_running; i++)
        if (ex->running[i]->id == id)
            return ex->running[i];
    for (int32_t i = 0; i < ex->n_waiting; i++)
        if (ex->waiting[i]->id == id)
            return ex->waiting[i];
    return NULL;
}

static void apply_cancels(anvil_executor *ex, const uint64_t *ids, int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        xreq *r = find_request(ex, ids[i]);
        if (r != NULL)
            anvil_exec_finish_request(ex, r, ANVIL_REQUEST_CANCELLED);
    }
}

static void cancel_everything(anvil_executor *ex)
{
    while (ex->n_running > 0)
        anvil_exec_finish_request(ex, ex->running[ex->n_running - 1], ANVIL_REQUEST_CANCELLED);
    while (ex->n_waiting > 0)
        anvil_exec_finish_request(ex, ex->waiting[ex->n_waiting - 1], ANVIL_REQUEST_CANCELLED);
}

static double gen_rate(anvil_executor *ex, double now)
{
    /* the oldest sample within the last two seconds */
    const int32_t n = (int32_t)(sizeof ex->rate_t / sizeof ex->rate_t[0]);
    double t0 = now;
    int64_t g0 = ex->c_generated;
    for (int32_t k = 1; k <= n; k++) {
        int32_t i = (ex->rate_i - k + n) % n;
        if (ex->rate_t[i] <= 0 || now - ex->rate_t[i] > 2.0)
            break;
        t0 = ex->rate_t[i];
        g0 = ex->rate_g[i];
    }
    return now - t0 > 1e-3 ? (double)(ex->c_generated - g0) / (now - t0) : 0.0;
}

/* Copies the counters into the shared snapshot (called with mu held). */
static void publish_metrics(anvil_executor *ex)
{
    anvil_executor_metrics *m = &ex->metrics;
    const double now = anvil_exec_now();
    m->queued = ex->n_queued;
    m->running = ex->n_running;
    int32_t seqs = 0;
    for (int32_t i = 0; i < ex->n_running; i++)
        for (int32_t j = 0; j < ex->running[i]->n_seqs; j++)
            seqs += ex->running[i]->seqs[j]->finish == ANVIL_REQUEST_RUNNING;
    m->running_seqs = seqs;
    m->kv_blocks_total = anvil_kv_total(ex->kv);
    m->kv_blocks_used = anvil_kv_n_used(ex->kv);
    m->kv_blocks_free = anvil_kv_n_free(ex->kv);
    m->kv_blocks_cached = anvil_kv_n_cached(ex->kv);
    m->kv_block_size = ex->bs;
    m->requests_finished = ex->c_finished;
    m->prompt_tokens = ex->c_prompt;
    m->cached_prompt_tokens = ex->c_cached;
    m->computed_tokens = ex->c_computed;
    m->generated_tokens = ex->c_generated;
    m->preemptions = ex->c_preempt;
    m->steps = ex->c_steps;
    m->tokens_per_s = gen_rate(ex, now);
    m->busy_s = ex->busy_s;
    m->schedule_s = ex->schedule_s;
    m->forward_s = ex->forward_s;
    m->tokens_s = ex->tokens_s;
    m->overlapped_s = ex->overlapped_s;
    m->overlap_steps = ex->c_overlap_steps;
    m->refits = ex->c_refits;
    m->refit_pause_s = ex->refit_pause_s;
    m->grammar_s = ex->grammar_s;
    m->grammar_tokens = ex->c_grammar;
    const int32_t n = (int32_t)(sizeof ex->rate_t / sizeof ex->rate_t[0]);
    ex->rate_t[ex->rate_i] = now;
    ex->rate_g[ex->rate_i] = ex->c_generated;
    ex->rate_i = (ex->rate_i + 1) % n;
}

/* Whether the loop has anything to do (called with mu held). */
static int has_work(const anvil_executor *ex)
{
    return ex->stopping || ex->n_inbox > 0 || ex->n_cancels > 0 || ex->n_waiting > 0 || ex->n_running > 0 ||
           ex->refit_staged != NULL || ex->fl_count > 0;
}

/*
 * One round of the loop: takes the inbox, the cancels and a staged refit
 * (waiting for one of them first when `wait`), then schedules and runs one
 * step. Returns 0 once a stopping executor has cancelled everything.
 */
static int loop_round(anvil_executor *ex, int wait)
{
    pthread_mutex_lock(&ex->mu);
    while (wait && !has_work(ex))
        pthread_cond_wait(&ex->wake, &ex->mu);
    /* take the inbox and the cancels; on OOM leave them for the next round */
    int32_t n_new = 0, n_cancel = 0;
    if (grow((void **)&ex->round_batch, &ex->cap_round_batch, ex->n_inbox, sizeof *ex->round_batch)) {
        n_new = ex->n_inbox;
        if (n_new > 0)
            memcpy(ex->round_batch, ex->inbox, (size_t)n_new * sizeof *ex->round_batch);
        ex->n_inbox = 0;
    }
    if (grow((void **)&ex->round_cancels, &ex->cap_round_cancels, ex->n_cancels, sizeof *ex->round_cancels)) {
        n_cancel = ex->n_cancels;
        if (n_cancel > 0)
            memcpy(ex->round_cancels, ex->cancels, (size_t)n_cancel * sizeof *ex->round_cancels);
        ex->n_cancels = 0;
    }
    const int stopping = ex->stopping;
    anvil_refit_staging *refit = ex->refit_staged; /* new weights to commit: between two steps, here */
    ex->refit_staged = NULL;
    pthread_mutex_unlock(&ex->mu);

    if (refit != NULL) {
        anvil_exec_drain(ex); /* a step never mixes weights, and tokens are emitted under the weights that made them */
        anvil_exec_refit_commit(ex, refit, stopping);
    }
    intake(ex, ex->round_batch, n_new);
    apply_cancels(ex, ex->round_cancels, n_cancel);
    if (stopping) {
        anvil_exec_drain(ex);
        cancel_everything(ex);
        pthread_mutex_lock(&ex->mu);
        const int more = ex->n_inbox > 0; /* enqueued by a callback meanwhile: cancel those too */
        if (!more) {
            ex->n_queued = 0;
            publish_metrics(ex);
        }
        pthread_mutex_unlock(&ex->mu);
        return more;
    }
    if (ex->n_waiting > 0 || ex->n_running > 0 || ex->fl_count > 0) {
        const double t0 = anvil_exec_now();
        anvil_exec_round(ex); /* adds schedule_s, forward_s and tokens_s */
        ex->busy_s += anvil_exec_now() - t0;
    }
    pthread_mutex_lock(&ex->mu);
    ex->n_queued = ex->n_inbox + ex->n_waiting;
    publish_metrics(ex);
    pthread_mutex_unlock(&ex->mu);
    return 1;
}

static void *loop_main(void *arg)
{
    anvil_executor *ex = arg;
    while (loop_round(ex, 1))
        ;
    return NULL;
}

void anvil_exec_run_inline(anvil_executor *ex)
{
    for (;;) {
        pthread_mutex_lock(&ex->mu);
        const int work = has_work(ex);
        pthread_mutex_unlock(&ex->mu);
        if (!work || !loop_round(ex, 0))
            return;
    }
}

/* ------------------------------------------------------------ public API */

static anvil_status alloc_step_buffers(anvil_executor *ex)
{
    const size_t T = (size_t)ex->max_tokens_step, S = (size_t)ex->max_batch, V = (size_t)ex->vocab;
    ex->plan = malloc(S * sizeof *ex->plan);
    ex->b_tokens = malloc(T * sizeof *ex->b_tokens);
    ex->b_pos = malloc(T * sizeof *ex->b_pos);
    ex->b_starts = malloc((S + 1) * sizeof *ex->b_starts);
    ex->b_tables = malloc(S * (size_t)ex->max_blocks * sizeof *ex->b_tables);
    ex->b_rows = malloc(S * sizeof *ex->b_rows);
    ex->b_sample = malloc(S * sizeof *ex->b_sample);
    ex->b_next = malloc(S * sizeof *ex->b_next);
    ex->b_allowed = malloc(S * sizeof *ex->b_allowed);
    ex->gmasks = malloc(S * ((V + 31) / 32) * sizeof *ex->gmasks);
    ex->gm_todo = malloc(S * sizeof *ex->gm_todo);
    ex->gm_st = malloc(S * sizeof *ex->gm_st);
    ex->gm_msg = malloc(S * sizeof *ex->gm_msg);
    ex->hits = malloc(S * sizeof *ex->hits);
    ex->step_reqs = malloc(S * sizeof *ex->step_reqs);
    ex->beam_rows = malloc(S * sizeof *ex->beam_rows);
    ex->logits = malloc(S * V * sizeof *ex->logits);
    ex->work = malloc(V * sizeof *ex->work);
    ex->lp = malloc(V * sizeof *ex->lp);
    ex->mark = calloc((size_t)anvil_runtime_kv_blocks_total(ex->rt), sizeof *ex->mark);
    CHECK(ex->plan && ex->b_tokens && ex->b_pos && ex->b_starts && ex->b_tables && ex->b_rows && ex->b_sample && ex->b_next && ex->b_allowed && ex->gmasks && ex->gm_todo && ex->gm_st && ex->gm_msg && ex->hits && ex->step_reqs && ex->beam_rows && ex->logits &&
              ex->work && ex->lp && ex->mark,
          ANVIL_ERR_OOM, "out of memory for the executor's step buffers");
    return anvil_sampler_create(ex->vocab, &ex->sampler);
}

static void free_state(anvil_executor *ex)
{
    anvil_refit_staging_free(ex->refit_staged); /* none: the loop answers every refit before it ends */
    for (int32_t i = 0; i < ex->n_inbox; i++)
        anvil_exec_request_free(ex->inbox[i]);
    for (int32_t i = 0; i < ex->n_kept; i++)
        anvil_result_free(ex->kept[i].result);
    free(ex->inbox);
    free(ex->cancels);
    free(ex->round_batch);
    free(ex->round_cancels);
    free(ex->kept);
    free(ex->waiting);
    free(ex->running);
    free(ex->plan);
    free(ex->b_tokens);
    free(ex->b_pos);
    free(ex->b_starts);
    free(ex->b_tables);
    free(ex->b_rows);
    free(ex->b_sample);
    free(ex->b_next);
    free((void *)ex->b_allowed);
    free(ex->gmasks);
    free(ex->gm_todo);
    free(ex->gm_st);
    free(ex->gm_msg);
    anvil_threadpool_free(ex->gm_pool);
    free(ex->hits);
    free(ex->step_reqs);
    free((void *)ex->beam_rows);
    free(ex->logits);
    free(ex->work);
    free(ex->lp);
    free(ex->gmask);
    free(ex->mark);
    anvil_sampler_free(ex->sampler);
    anvil_exec_overlap_free(ex);
    anvil_kv_manager_free(ex->kv);
}

/* anvil_executor_create, with a thread (threaded) or driven by
 * anvil_exec_run_inline on its caller's thread. */
static anvil_status create(anvil_runtime *rt, const anvil_tokenizer *tok, const anvil_executor_options *opts,
                           int threaded, anvil_executor **out)
{
    *out = NULL;
    CHECK(rt != NULL, ANVIL_ERR_INVALID_ARG, "executor: no runtime");
    anvil_executor *ex = calloc(1, sizeof *ex);
    CHECK(ex != NULL, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = ANVIL_OK;
    int mu_ok = 0, wake_ok = 0, done_ok = 0, refit_ok = 0;
    if (opts)
        ex->opts = *opts;
    else
        anvil_executor_options_default(&ex->opts);
    const anvil_runtime_options *ro = anvil_runtime_options_get(rt);
    ex->rt = rt;
    ex->tok = tok;
    ex->cfg = anvil_runtime_config(rt);
    ex->vocab = (int32_t)ex->cfg->vocab_size;
    ex->max_seq_len = ro->max_seq_len;
    ex->bs = anvil_runtime_kv_block_size(rt);
    ex->max_blocks = (ro->max_seq_len + ex->bs - 1) / ex->bs;
    CHECK_GOTO(ex->opts.policy == ANVIL_CAPACITY_GUARANTEED_NO_EVICT ||
                   ex->opts.policy == ANVIL_CAPACITY_MAX_UTILIZATION,
               ANVIL_ERR_INVALID_ARG, fail, "unknown capacity policy %d", (int)ex->opts.policy);
    CHECK_GOTO(ex->opts.max_batch_size >= 0 && ex->opts.max_num_tokens >= 0 && ex->opts.max_queue_size >= 0 &&
                   ex->opts.max_logprobs >= 0,
               ANVIL_ERR_INVALID_ARG, fail, "executor options must not be negative");
    /* A step has at most one logits row per sequence, and every running
     * sequence's decode token must fit in one step. */
    int32_t mb = ro->max_batch_size < ro->max_logit_rows ? ro->max_batch_size : ro->max_logit_rows;
    if (ex->opts.max_batch_size > 0 && ex->opts.max_batch_size < mb)
        mb = ex->opts.max_batch_size;
    ex->max_tokens_step = ro->max_num_tokens;
    if (ex->opts.max_num_tokens > 0 && ex->opts.max_num_tokens < ex->max_tokens_step)
        ex->max_tokens_step = ex->opts.max_num_tokens;
    if (mb > ex->max_tokens_step)
        mb = ex->max_tokens_step;
    ex->max_batch = mb;
    ex->opts.max_batch_size = mb;
    ex->opts.max_num_tokens = ex->max_tokens_step;
    uint64_t seed = ex->opts.seed;
    if (seed == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)ex;
    }
    anvil_rng_seed(&ex->seed_rng, seed);
    ex->next_id = 1;
    ex->kv_root = ANVIL_KV_ROOT_HASH;

    TRY_GOTO(anvil_kv_manager_create(rt, ex->opts.enable_prefix_caching, &ex->kv), fail);
    TRY_GOTO(alloc_step_buffers(ex), fail);
    TRY_GOTO(anvil_exec_overlap_alloc(ex), fail);
    /* the overlap scheduler; anvil_generate's executor (no thread) runs
     * without it: its on_token may use the runtime between two steps */
    CHECK_GOTO(ex->opts.enable_overlap >= ANVIL_OVERLAP_OFF && ex->opts.enable_overlap <= ANVIL_OVERLAP_ALWAYS,
               ANVIL_ERR_INVALID_ARG, fail, "enable_overlap must be 0 (off), 1 (auto) or 2 (always), got %d",
               ex->opts.enable_overlap);
    ex->overlap_hidden = anvil_runtime_launches_ahead(rt);
    ex->overlap = threaded && (ex->opts.enable_overlap == ANVIL_OVERLAP_ALWAYS ||
                               (ex->opts.enable_overlap == ANVIL_OVERLAP_AUTO && ex->overlap_hidden));
    CHECK_GOTO(pthread_mutex_init(&ex->mu, NULL) == 0, ANVIL_ERR_INTERNAL, fail, "pthread_mutex_init failed");
    mu_ok = 1;
    CHECK_GOTO(pthread_cond_init(&ex->wake, NULL) == 0, ANVIL_ERR_INTERNAL, fail, "pthread_cond_init failed");
    wake_ok = 1;
    CHECK_GOTO(pthread_cond_init(&ex->done, NULL) == 0, ANVIL_ERR_INTERNAL, fail, "pthread_cond_init failed");
    done_ok = 1;
    CHECK_GOTO(pthread_mutex_init(&ex->refit_mu, NULL) == 0, ANVIL_ERR_INTERNAL, fail, "pthread_mutex_init failed");
    refit_ok = 1;
    pthread_mutex_lock(&ex->mu);
    publish_metrics(ex);
    pthread_mutex_unlock(&ex->mu);
    if (threaded) {
        CHECK_GOTO(pthread_create(&ex->thread, NULL, loop_main, ex) == 0, ANVIL_ERR_INTERNAL, fail,
                   "cannot start the executor thread");
        ex->thread_started = 1;
    } else {
        ex->inline_loop = 1;
    }
    anvil_log(threaded ? ANVIL_LOG_INFO : ANVIL_LOG_DEBUG,
              "executor: %d KV blocks of %d tokens, max %d sequences and %d tokens per step, %s%s",
              anvil_kv_total(ex->kv), ex->bs, ex->max_batch, ex->max_tokens_step,
              ex->opts.policy == ANVIL_CAPACITY_MAX_UTILIZATION ? "max-utilization" : "guaranteed-no-evict",
              ex->overlap ? ", overlap scheduler" : "");
    *out = ex;
    return ANVIL_OK;
fail:
    if (refit_ok)
        pthread_mutex_destroy(&ex->refit_mu);
    if (done_ok)
        pthread_cond_destroy(&ex->done);
    if (wake_ok)
        pthread_cond_destroy(&ex->wake);
    if (mu_ok)
        pthread_mutex_destroy(&ex->mu);
    free_state(ex);
    free(ex);
    return st;
}

anvil_status anvil_executor_create(anvil_runtime *rt, const anvil_tokenizer *tok, const anvil_executor_options *opts,
                                   anvil_executor **out)
{
    return create(rt, tok, opts, 1, out);
}

anvil_status anvil_exec_create_inline(anvil_runtime *rt, const anvil_executor_options *opts, anvil_executor **out)
{
    return create(rt, NULL, opts, 0, out);
}

void anvil_executor_free(anvil_executor *ex)
{
    if (ex == NULL)
        return;
    if (ex->thread_started) {
        pthread_mutex_lock(&ex->mu);
        ex->stopping = 1;
        pthread_cond_signal(&ex->wake);
        pthread_mutex_unlock(&ex->mu);
        pthread_join(ex->thread, NULL);
    } else if (ex->inline_loop) {
        pthread_mutex_lock(&ex->mu);
        ex->stopping = 1;
        pthread_mutex_unlock(&ex->mu);
        while (loop_round(ex, 0))
            ;
    }
    free_state(ex);
    pthread_mutex_destroy(&ex->refit_mu);
    pthread_cond_destroy(&ex->done);
    pthread_cond_destroy(&ex->wake);
    pthread_mutex_destroy(&ex->mu);
    free(ex);
}

anvil_status anvil_executor_enqueue(anvil_executor *ex, const anvil_request *req, uint64_t *id)
{
    if (id)
        *id = 0;
    CHECK(ex != NULL, ANVIL_ERR_INVALID_ARG, "enqueue: NULL executor");
    xreq *r = NULL;
    TRY(anvil_exec_request_make(ex, req, &r)); /* tokenizes outside the lock */
    pthread_mutex_lock(&ex->mu);
    anvil_status st = ANVIL_OK;
    if (ex->stopping) {
        st = ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "enqueue: the executor is shutting down");
    } else if (ex->opts.max_queue_size > 0 && ex->n_queued >= ex->opts.max_queue_size) {
        st = ANVIL_FAIL(ANVIL_ERR_CAPACITY, "enqueue: the queue is full (%d requests waiting)", ex->n_queued);
    } else if (!grow((void **)&ex->inbox, &ex->cap_inbox, ex->n_inbox + 1, sizeof *ex->inbox) ||
               (r->p.retain_result && !grow((void **)&ex->kept, &ex->cap_kept, ex->n_kept + 1, sizeof *ex->kept))) {
        st = ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    } else {
        r->id = ex->next_id++;
        if (r->p.retain_result)
            ex->kept[ex->n_kept++] = (retained){.id = r->id, .result = NULL};
        ex->inbox[ex->n_inbox++] = r;
        ex->n_queued++;
        if (id)
            *id = r->id;
        pthread_cond_signal(&ex->wake);
    }
    pthread_mutex_unlock(&ex->mu);
    if (st != ANVIL_OK)
        anvil_exec_request_free(r);
    return st;
}

anvil_status anvil_executor_cancel(anvil_executor *ex, uint64_t id)
{
    CHECK(ex != NULL, ANVIL_ERR_INVALID_ARG, "cancel: NULL executor");
    pthread_mutex_lock(&ex->mu);
    anvil_status st = ANVIL_OK;
    if (id == 0 || id >= ex->next_id)
        st = ANVIL_FAIL(ANVIL_ERR_NOT_FOUND, "cancel: no request %llu", (unsigned long long)id);
    else if (!grow((void **)&ex->cancels, &ex->cap_cancels, ex->n_cancels + 1, sizeof *ex->cancels))
        st = ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    else {
        ex->cancels[ex->n_cancels++] = id;
        pthread_cond_signal(&ex->wake);
    }
    pthread_mutex_unlock(&ex->mu);
    return st;
}

anvil_status anvil_executor_wait(anvil_executor *ex, uint64_t id, anvil_result **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "wait: NULL result pointer");
    *out = NULL;
    CHECK(ex != NULL, ANVIL_ERR_INVALID_ARG, "wait: NULL executor");
    pthread_mutex_lock(&ex->mu);
    for (;;) {
        int32_t i = 0;
        while (i < ex->n_kept && ex->kept[i].id != id)
            i++;
        if (i == ex->n_kept) {
            pthread_mutex_unlock(&ex->mu);
            return ANVIL_FAIL(ANVIL_ERR_NOT_FOUND, "wait: no retained result for request %llu",
                              (unsigned long long)id);
        }
        if (ex->kept[i].result != NULL) {
            *out = ex->kept[i].result;
            ex->kept[i] = ex->kept[--ex->n_kept];
            pthread_mutex_unlock(&ex->mu);
            return ANVIL_OK;
        }
        pthread_cond_wait(&ex->done, &ex->mu);
    }
}

anvil_status anvil_executor_generate(anvil_executor *ex, const anvil_request *req, anvil_result **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "generate: NULL result pointer");
    *out = NULL;
    CHECK(req != NULL, ANVIL_ERR_INVALID_ARG, "generate: NULL request");
    anvil_request r = *req;
    r.retain_result = 1;
    uint64_t id;
    TRY(anvil_executor_enqueue(ex, &r, &id));
    return anvil_executor_wait(ex, id, out);
}

anvil_status anvil_executor_stats(anvil_executor *ex, anvil_executor_metrics *out)
{
    CHECK(ex != NULL && out != NULL, ANVIL_ERR_INVALID_ARG, "stats: NULL argument");
    pthread_mutex_lock(&ex->mu);
    *out = ex->metrics;
    pthread_mutex_unlock(&ex->mu);
    return ANVIL_OK;
}
