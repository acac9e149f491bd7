/*
 * The executor's private state, shared by its files:
 *   executor.c        public API, the thread and its loop, intake, results
 *   exec_generate.c   anvil_generate: one request on an executor without a thread
 *   exec_request.c    checking and copying a request; building its result
 *   exec_scheduler.c  capacity policies, micro-batch choice, preemption
 *   exec_step.c       the packed batch, the forward, the block bookkeeping
 *   exec_sample.c     per-sequence sampling, stop conditions, streamed text
 *   exec_beam.c       beam search
 *   exec_refit.c      new weights between two steps (anvil_executor_refit)
 *
 * Everything below the "loop thread only" line is touched by the executor
 * thread alone; the rest is guarded by the mutex.
 */
#ifndef ANVIL_EXECUTOR_INTERNAL_H
#define ANVIL_EXECUTOR_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "anvil/executor.h"
#include "anvil/sampling.h"
#include "executor/kv_manager.h"

/* One sequence: a sample of a request, or a beam. Tokens [0, n_tokens) are
 * the prompt then the generated ids; the KV of [0, n_computed) is in the
 * blocks. The next step computes tokens [n_computed, ...); when it reaches
 * n_tokens its last row gives the logits of the next token. */
typedef struct xseq {
    int32_t *tokens;          /* [max_seq_len] */
    int32_t n_tokens;
    int32_t n_computed;
    int32_t *blocks;          /* [max_blocks] runtime block ids, each holding one reference */
    int32_t n_blocks;
    uint64_t *block_hash;     /* [max_blocks] chained hashes of the leading full blocks */
    int32_t n_hashed;
    uint64_t root;            /* the parent hash of its first block: the executor's kv_root when it was
                                 admitted (a refit since: its blocks are never registered) */
    anvil_rng rng;
    int32_t index;            /* sample index (events, seeds) */
    anvil_request_finish finish;
    int32_t stop_token, stop_string;

    anvil_grammar_matcher *gm; /* the request's grammar: this sample's parse (NULL: none) */

    /* outputs beyond the ids */
    float *logprobs;          /* [max_tokens] when the request wants them */
    anvil_token_logprob *top; /* [max_tokens * n_top] */
    double cum_logprob;
    float beam_score;         /* beams: the running sum of log-probabilities (float, as HF) */

    /* text: the detokenizer's final text, cut at a stop string */
    anvil_detokenizer *detok;
    char *text;
    size_t text_len, text_cap;
    size_t emitted;           /* bytes already delivered in events */
    size_t stop_scan;         /* a stop string can only start at or after this byte */

    /* placeholders at the end of tokens (the overlap scheduler): the ids a
     * launched step samples, known on the device only, oldest first
     * (0..2); tokens[n_tokens - n_pending] is the next to be accepted */
    int32_t n_pending;

    /* this step */
    int32_t sched_count;      /* tokens scheduled; 0: not in the batch */
    int32_t logit_row;        /* -1: no logits this step */
    anvil_status mask_st;     /* this step's grammar mask could not be made: the request fails after the
                                 step, with the message in its err_msg (anvil_exec_masks_give, defer) */
} xseq;

/* A finished beam hypothesis. */
typedef struct xhyp {
    int32_t *tokens;          /* generated ids */
    int32_t n_tokens;
    float score;              /* sum_logprobs / len ** length_penalty */
    double cum_logprob;
    float *logprobs;          /* [n_tokens] or NULL */
    anvil_token_logprob *top;
    int stopped;              /* ended by an end token (else by length) */
} xhyp;

typedef enum xreq_state { XREQ_WAITING = 0, XREQ_RUNNING, XREQ_FINISHED } xreq_state;

typedef struct xreq {
    uint64_t id;
    anvil_request p;          /* the request's scalars; its pointers are cleared */
    int32_t *prompt;          /* [n_prompt] */
    int32_t n_prompt;
    char **stop;              /* [n_stop] */
    int32_t n_stop;
    size_t max_stop_len;
    int32_t *stop_ids;        /* [n_stop_ids] */
    int32_t n_stop_ids;
    anvil_logit_bias *bias;   /* [n_bias] */
    int32_t n_bias;
    int32_t max_tokens;       /* resolved: at most max_seq_len - n_prompt */
    int32_t n_top;            /* top alternatives per token (logprobs > 0) */
    int beam;                 /* beam search */
    int32_t width;            /* sequences it may run at once: n, or beam_width */
    int32_t worst_blocks;     /* the most distinct blocks it can hold at once */

    xreq_state state;
    int cancel;               /* cancel at the next step */
    xseq **seqs;              /* [width] live and finished samples, or the live beams */
    int32_t n_seqs;
    int forked;               /* n > 1: the samples were split from seq 0 */

    /* beam search */
    xhyp *hyps;               /* [width] finished hypotheses, best first */
    int32_t n_hyps;
    int heuristic_open;       /* HF's is_early_stop_heuristic_unsatisfied */
    int done;                 /* beam search ended */

    /* accounting */
    int32_t n_cached_prompt;
    int32_t n_preemptions;
    int admitted_once;
    double t_enqueue, t_first_sched, t_first_token;
    anvil_status err_status;
    char err_msg[256];
} xreq;

typedef struct retained {
    uint64_t id;
    anvil_result *result;     /* NULL until finished */
} retained;

/* One entry of the step's plan. */
typedef struct plan_entry {
    xreq *r;
    xseq *s;
    int32_t start;            /* first token index */
    int32_t count;
} plan_entry;

/* A step launched on the runtime (the overlap scheduler), not yet taken:
 * its plan, each entry's logits row, and the ids once waited for. An
 * entry whose request ended meanwhile has r and s NULL (its row's id is
 * dropped, its KV was never registered). */
typedef struct launched_step {
    plan_entry *e;            /* [max_batch] */
    int32_t *row;             /* [max_batch] -1: no logits */
    int32_t *ids;             /* [max_batch] */
    int32_t n;
    int masks_pending;        /* its grammar rows' masks are not given yet (anvil_exec_masks_give) */
} launched_step;

struct anvil_executor {
    anvil_runtime *rt;
    const anvil_tokenizer *tok;
    anvil_executor_options opts;
    const anvil_model_config *cfg;
    int32_t vocab;
    int32_t max_seq_len;
    int32_t bs;
    int32_t max_blocks;       /* per sequence */
    int32_t max_batch;        /* sequences per step */
    int32_t max_tokens_step;  /* tokens per step */

    pthread_t thread;
    int thread_started;
    int inline_loop;          /* no thread: anvil_exec_run_inline runs the loop on its caller's thread */
    pthread_mutex_t mu;
    pthread_cond_t wake;      /* the loop waits for work */
    pthread_cond_t done;      /* anvil_executor_wait waits for results */

    /* ---- guarded by mu */
    xreq **inbox;
    int32_t n_inbox, cap_inbox;
    uint64_t *cancels;
    int32_t n_cancels, cap_cancels;
    uint64_t next_id;
    int stopping;
    retained *kept;
    int32_t n_kept, cap_kept;
    int32_t n_queued;         /* inbox + waiting: for max_queue_size */
    anvil_executor_metrics metrics;
    /* a refit (anvil_executor_refit): the staged weights the loop commits
     * at its next step boundary, and the outcome it reports back (on `done`) */
    anvil_refit_staging *refit_staged;
    int refit_done;
    anvil_status refit_status;
    char refit_msg[512];
    pthread_mutex_t refit_mu;  /* one refit at a time (held through its prepare and commit) */

    /* ---- loop thread only */
    xreq **round_batch;       /* what one round took from the inbox */
    int32_t cap_round_batch;
    uint64_t *round_cancels;  /* ... and from the cancels */
    int32_t cap_round_cancels;
    anvil_kv_manager *kv;
    xreq **waiting;           /* FIFO; preempted requests go back to the front */
    int32_t n_waiting, cap_waiting;
    xreq **running;           /* in admission order, oldest first */
    int32_t n_running, cap_running;

    plan_entry *plan;         /* [max_batch] */
    int32_t n_plan;
    int sched_speculative;    /* planning beside a launched step: no preemption (sched_aborted instead) */
    int sched_aborted;        /* the speculative plan needed a preemption */
    int overlap;              /* the overlap scheduler is on */
    int overlap_hidden;       /* a launch returns before the device finished (time under it is hidden) */
    launched_step fl[2];      /* launched steps not taken, fl[fl_first] the oldest */
    int fl_first, fl_count;
    int32_t *b_tokens, *b_pos, *b_starts, *b_tables, *b_rows;
    anvil_sample_row *b_sample; /* [max_batch] per logits row, when the step samples on the backend */
    int32_t b_n_pending;      /* rows of b_sample whose mask is pending (a grammar's) */
    const uint32_t **b_allowed; /* [max_batch] per logits row: its mask, or NULL (anvil_exec_masks_give) */
    uint32_t *gmasks;         /* [max_batch * (vocab + 31) / 32] the rows' grammar masks */
    int32_t *gm_todo;         /* [max_batch] the entries whose masks a step makes (exec_masks.c) */
    anvil_status *gm_st;      /* [max_batch] and how each went */
    char (*gm_msg)[256];      /* [max_batch] a failed one's message */
    struct anvil_threadpool *gm_pool; /* the mask threads (grammar_threads), made on first use */
    int32_t *b_next;          /* [max_batch] the ids it sampled */
    float *logits;            /* [max_batch * vocab] */
    float *work;              /* [vocab] processed logits */
    float *lp;                /* [vocab] log-probabilities */
    uint32_t *gmask;          /* [(vocab + 31) / 32] a grammar's allowed tokens (allocated on first use) */
    anvil_sampler *sampler;
    int32_t *hits;            /* [max_batch] prefix hits per sequence at admission */
    xreq **step_reqs;         /* [max_batch] the step's distinct requests */
    const float **beam_rows;  /* [max_batch] a beam request's logits rows */
    uint32_t *mark;           /* [n_blocks] stamps for counting distinct blocks */
    uint32_t mark_stamp;
    anvil_rng seed_rng;       /* seeds requests that bring no seed */
    /* the parent hash of every sequence's first block: ANVIL_KV_ROOT_HASH
     * mixed with the weights' generation (bumped by each refit), so that KV
     * computed with other weights is never found by a prefix lookup */
    uint64_t kv_root;
    uint64_t weights_gen;

    /* counters (copied into metrics after each step) */
    int64_t c_finished, c_prompt, c_cached, c_computed, c_generated, c_preempt, c_steps, c_refits;
    double refit_pause_s;     /* the last refit's commit */
    double busy_s;
    double schedule_s, forward_s, tokens_s; /* parts of busy_s (anvil_executor_metrics) */
    double overlapped_s;
    int64_t c_overlap_steps;
    double grammar_s;         /* masks and matchers (anvil_executor_metrics) */
    int64_t c_grammar;
    double rate_t[64];
    int64_t rate_g[64];
    int32_t rate_i;
};

/* ---- executor.c */
double anvil_exec_now(void);
/* An executor without a thread and without a tokenizer, for anvil_generate:
 * requests run only inside anvil_exec_run_inline, on its caller's thread
 * (event callbacks included); anvil_executor_free cancels what is left on
 * the calling thread. anvil_executor_wait and anvil_executor_generate must
 * not be used on it (nothing would run the requests they wait for). */
anvil_status anvil_exec_create_inline(anvil_runtime *rt, const anvil_executor_options *opts, anvil_executor **out);
/* Runs the loop on the calling thread until nothing is queued or running. */
void anvil_exec_run_inline(anvil_executor *ex);
/* Builds the result, delivers the final event, frees the request's
 * blocks and state (r is freed). */
void anvil_exec_finish_request(anvil_executor *ex, xreq *r, anvil_request_finish why);
/* Finishes r with an error (message copied from msg). */
void anvil_exec_fail_request(anvil_executor *ex, xreq *r, anvil_status st, const char *msg);
void anvil_exec_emit(anvil_executor *ex, xreq *r, const anvil_event *ev);

/* ---- exec_refit.c */
/* On the loop thread, between steps: commits a staged refit (sg, taken)
 * and reports the outcome to the waiting caller; stopping: refused. */
void anvil_exec_refit_commit(anvil_executor *ex, anvil_refit_staging *sg, int stopping);

/* ---- exec_request.c */
anvil_status anvil_exec_request_make(anvil_executor *ex, const anvil_request *req, xreq **out);
void anvil_exec_request_free(xreq *r);
anvil_status anvil_exec_seq_new(anvil_executor *ex, xreq *r, xseq **out);
void anvil_exec_seq_free(xseq *s);
/* A copy of s: tokens, a reference to each of its blocks, hashes,
 * log-probabilities, scores, RNG state. Not its text: samples fork before
 * their first token and beams decode their text at the end. */
anvil_status anvil_exec_seq_fork(anvil_executor *ex, xreq *r, const xseq *s, xseq **out);
/* Drops every block reference of s (the last block first, so that a
 * prefix's head outlives its tail in the LRU). */
void anvil_exec_seq_release(anvil_executor *ex, xseq *s);
anvil_status anvil_exec_result_build(anvil_executor *ex, xreq *r, anvil_request_finish why, anvil_result **out);
int anvil_exec_is_eos(const anvil_executor *ex, int32_t token);
int anvil_exec_is_stop_token(const xreq *r, int32_t token);

/* ---- exec_scheduler.c */
/* Fills ex->plan for this step (may preempt under max-utilization, may
 * fail requests that can never run). Beside a launched step
 * (ex->sched_speculative) it preempts nothing and fails nothing for want
 * of room: it sets ex->sched_aborted instead, and the caller drops the
 * plan (anvil_exec_unplan) and plans again once that step is taken. A
 * sequence whose pending token is known to be its last (max_tokens, the
 * context) is not planned. */
void anvil_exec_schedule(anvil_executor *ex);
void anvil_exec_unplan(anvil_executor *ex);
/* Removes r from the running list. */
void anvil_exec_running_remove(anvil_executor *ex, xreq *r);
void anvil_exec_waiting_remove(anvil_executor *ex, xreq *r);
anvil_status anvil_exec_waiting_push_back(anvil_executor *ex, xreq *r);

/* ---- exec_step.c */
/* Packs the plan into ex->b_* (b: the batch over them); the plan's
 * distinct requests go to ex->step_reqs (*n_reqs); every sequence of
 * them gets its logits row (s->logit_row, -1: none). Returns whether
 * every row can be sampled on the backend. */
int anvil_exec_build_batch(anvil_executor *ex, anvil_batch *b, int32_t *n_reqs);
/* Runs the packed plan synchronously: forward, then hands each logits row
 * to sampling or beam search; finishes what ended. */
void anvil_exec_step(anvil_executor *ex, const anvil_batch *b, int32_t n_reqs, int on_backend);
/* Registers s's blocks filled below position upto in the prefix cache. */
void anvil_exec_register_blocks(anvil_executor *ex, const xreq *r, xseq *s, int32_t upto);

/* ---- exec_overlap.c */
/* One round of the loop's work: plans, launches or runs a step, takes
 * a launched one (below). */
void anvil_exec_round(anvil_executor *ex);
/* Waits for every launched step and takes its tokens (before a refit, a
 * stop, or a step that cannot overlap). */
void anvil_exec_drain(anvil_executor *ex);
/* r ends: its entries in launched steps are dropped (their ids will not
 * be accepted) and its sequences lose their placeholders. */
void anvil_exec_forget_launched(anvil_executor *ex, xreq *r);
anvil_status anvil_exec_overlap_alloc(anvil_executor *ex);
void anvil_exec_overlap_free(anvil_executor *ex);

/* ---- exec_sample.c */
/* Samples the next token of s from its logits row and appends it; streams
 * it; sets s->finish when it ends. */
anvil_status anvil_exec_sample_seq(anvil_executor *ex, xreq *r, xseq *s, const float *row);
/* Whether s's next token can be sampled from its logits alone (on the
 * backend, by anvil_runtime_forward_sample; a grammar's mask goes with
 * it): no log-probabilities, no logit processors in effect (penalties,
 * bias, min_tokens masking), not a beam, not a request about to fork its
 * samples. */
int anvil_exec_samples_on_backend(const anvil_executor *ex, const xreq *r, const xseq *s);
/* The masks of the last launched step's grammar rows (those built with
 * mask_pending): for each entry i of e [n] with a logits row row[i] >= 0,
 * the mask of its sequence's grammar as it is now, or NULL (no grammar, or
 * the sequence ended: its row is sampled and dropped). A request whose
 * mask cannot be made fails here, or with `defer` (the synchronous step,
 * which still holds its requests) after the step (xseq.mask_st). Then the
 * runtime queues the step's sampler (anvil_runtime_forward_sample_masks;
 * its status is returned: on failure the step's wait fails). The time of
 * the masks goes to tokens_s, *fill_s (not NULL) gets it. */
anvil_status anvil_exec_masks_give(anvil_executor *ex, const plan_entry *e, const int32_t *row, int32_t n,
                                   int defer, double *fill_s);
/* Appends tok (sampled elsewhere) to s, as anvil_exec_sample_seq does after
 * its draw: stop conditions, text, the event. */
anvil_status anvil_exec_accept_token(anvil_executor *ex, xreq *r, xseq *s, int32_t tok);
/* The error that ends s's request when its logits are poisoned (a NaN or
 * +inf, or none finite: the sampler's -1), naming the step; returns it. */
anvil_status anvil_exec_nonfinite(const anvil_executor *ex, const xreq *r, const xseq *s);
/* At the end of a sequence: flushes the detokenizer and delivers the rest
 * of the text (checking stop strings once more). */
anvil_status anvil_exec_text_finish(anvil_executor *ex, xreq *r, xseq *s);

/* ---- exec_beam.c */
/* One beam-search step of r: rows[i] are the logits of r->seqs[i]. */
anvil_status anvil_exec_beam_step(anvil_executor *ex, xreq *r, const float *const *rows);

#endif
