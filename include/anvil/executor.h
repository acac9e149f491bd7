/*
 * anvil/executor.h: in-flight batching over one loaded model.
 *
 * An executor owns a runtime (a model on a backend) and a thread that runs
 * the serving loop: every step it admits queued requests under a KV-cache
 * capacity policy, picks a micro-batch (decode tokens first, then prefill
 * chunks) within max_num_tokens and max_batch_size, runs one forward, samples
 * one token for every sequence that reached the end of its tokens, streams
 * the new tokens and text, and finishes what is done. KV blocks are
 * reference-counted; full blocks are kept after their request ends, keyed by
 * a hash of every token up to their end, so a later request with the same
 * prefix skips that part of its prefill. docs/executor.md describes the
 * design and its decisions.
 *
 *     anvil_executor *ex;
 *     anvil_executor_create(rt, tok, NULL, &ex);         // rt is now the executor's
 *     anvil_request req;
 *     anvil_request_init(&req);
 *     req.prompt = "Once upon a time";
 *     req.max_tokens = 64;
 *     req.sampling.temperature = 0.8f;
 *     req.sampling.seed = 42; req.has_seed = 1;
 *     req.retain_result = 1;                              // for anvil_executor_wait
 *     uint64_t id;
 *     if (anvil_executor_enqueue(ex, &req, &id) != ANVIL_OK)
 *         fprintf(stderr, "%s\n", anvil_last_error());    // a refused request
 *     anvil_result *res;
 *     anvil_executor_wait(ex, id, &res);
 *     printf("%s\n", res->sequences[0].text);
 *     anvil_result_free(res);
 *     anvil_executor_free(ex);                            // then free rt and tok
 *
 * Thread safety: every anvil_executor_* function may be called from any
 * thread at any time, except anvil_executor_free, which must not race with
 * the others. Event callbacks run on the executor's thread, one at a time,
 * without any executor lock held: they may call enqueue, cancel and stats,
 * but must not call anvil_executor_wait or anvil_executor_free, and must not
 * block (every request in the batch waits for them).
 */
#ifndef ANVIL_EXECUTOR_H
#define ANVIL_EXECUTOR_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/grammar.h"
#include "anvil/runtime.h"
#include "anvil/sampling.h"
#include "anvil/status.h"
#include "anvil/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct anvil_executor anvil_executor;
typedef struct anvil_event anvil_event; /* defined below */

/* How requests get KV-cache blocks (the names of TensorRT-LLM's policies). */
typedef enum anvil_capacity_policy {
    /* Admit a request only when blocks for its prompt and all of max_tokens
     * (for every sample or beam) can be reserved; an admitted request is
     * never paused. The default. */
    ANVIL_CAPACITY_GUARANTEED_NO_EVICT = 0,
    /* Admit a request as soon as its next step's blocks fit; when blocks run
     * out mid-decode, preempt the newest running requests (free their blocks,
     * put them back at the front of the queue, recompute them later). More
     * requests in flight; the outputs are the same. */
    ANVIL_CAPACITY_MAX_UTILIZATION = 1,
} anvil_capacity_policy;

typedef struct anvil_executor_options {
    anvil_capacity_policy policy;
    int32_t max_batch_size;   /* sequences per step; 0 or more than the runtime's: the runtime's */
    int32_t max_num_tokens;   /* tokens per step; 0 or more than the runtime's: the runtime's */
    int32_t max_queue_size;   /* requests waiting; 0: unlimited. Beyond it enqueue is ANVIL_ERR_CAPACITY */
    int32_t max_logprobs;     /* the largest `logprobs` a request may ask for; default 20 */
    int enable_prefix_caching;/* keep and reuse full KV blocks by prefix hash; default 1 */
    uint64_t seed;            /* seeds requests without their own seed; 0: from the clock */
    /* The overlap scheduler (docs/executor.md): step n + 1 is planned and
     * launched while the device runs step n, whose tokens are then
     * checked, detokenized and streamed while step n + 1 runs; the ids
     * step n sampled feed step n + 1 on the device. The outputs are the
     * same. ANVIL_OVERLAP_AUTO (the default): on where the runtime launches
     * steps ahead (anvil_runtime_launches_ahead: CUDA); ANVIL_OVERLAP_OFF;
     * ANVIL_OVERLAP_ALWAYS: also where a launch computes the step first
     * (the CPU: no gain, one step more of latency; for tests). */
    int enable_overlap;
    /* Threads that make a step's grammar masks side by side (structured
     * output: at a 128k vocabulary a mask takes 1 us to a few ms, and 64
     * of them can outlast a small model's forward). 0 (the default): half
     * the CPUs, at most 8; 1: the executor's own thread only. Made on the
     * first step with two or more constrained rows. */
    int32_t grammar_threads;
} anvil_executor_options;

enum { ANVIL_OVERLAP_OFF = 0, ANVIL_OVERLAP_AUTO = 1, ANVIL_OVERLAP_ALWAYS = 2 };

/* policy GUARANTEED_NO_EVICT, limits from the runtime, max_logprobs 20, prefix caching on,
 * overlap ANVIL_OVERLAP_AUTO. */
void anvil_executor_options_default(anvil_executor_options *o);

/*
 * One request. Everything it points to is borrowed for the duration of
 * anvil_executor_enqueue only: the executor copies what it keeps.
 * anvil_request_init sets the defaults named below.
 */
typedef struct anvil_request {
    /* ---- the prompt: token ids, or text (needs the executor's tokenizer) */
    const int32_t *prompt_ids;
    int32_t n_prompt_ids;
    const char *prompt;            /* NUL-terminated UTF-8; used when prompt_ids is NULL */
    int add_special_tokens;        /* for a text prompt (BOS as the tokenizer adds it); default 1 */

    /* ---- sampling (the order of the transforms is in docs/executor.md) */
    /* temperature (0: greedy; default 1), top_k (0 or -1: off), top_p
     * ((0, 1]; 1: off), min_p ([0, 1]; 0: off), seed (used with has_seed);
     * anvil/sampling.h. Checked as anvil_sampling_params_check. */
    anvil_sampling_params sampling;
    int has_seed;                  /* 1: sampling.seed seeds the request's own RNG, whatever else runs;
                                      0: the executor draws a seed (anvil_executor_options.seed) */
    float repetition_penalty;      /* > 0; 1: off. HF semantics over prompt + generated tokens */
    float presence_penalty;        /* [-2, 2]; OpenAI semantics over generated tokens */
    float frequency_penalty;       /* [-2, 2] */
    const anvil_logit_bias *logit_bias;
    int32_t n_logit_bias;
    int32_t n;                     /* independent samples sharing the prompt's KV blocks; default 1 */
    int32_t logprobs;              /* -1: none (default); 0: the chosen token's; k: and the top k */
    /* Structured output (anvil/grammar.h): every sample's tokens are
     * masked to those the grammar allows, the end tokens of its vocabulary
     * only where the output may end; a sample whose grammar is complete
     * (nothing may follow) ends with finish "stop". Borrowed beyond
     * enqueue, unlike the rest: the caller keeps the grammar (and its
     * vocabulary) alive until the request's FINAL event (or
     * anvil_executor_wait / generate returns). Its vocabulary must not be
     * larger than the model's logits. Not with beam search. NULL: none. */
    const anvil_grammar *grammar;

    /* ---- beam search (Hugging Face generate(num_beams=...) semantics) */
    int32_t beam_width;            /* > 1: beam search; all beams come back, best first */
    float length_penalty;          /* default 1: score = sum logprobs / generated_len ** length_penalty */
    int early_stopping;            /* 1 (default): True; 0: False (HF heuristic); -1: "never" */

    /* ---- stop conditions */
    int32_t max_tokens;            /* new tokens at most; 0: up to the context */
    int32_t min_tokens;            /* no end-of-sequence, stop token or stop string before this many */
    int ignore_eos;                /* do not stop at the model's end-of-sequence tokens */
    const int32_t *stop_token_ids; /* extra tokens that end a sequence (kept in its ids, not its text) */
    int32_t n_stop_token_ids;
    const char *const *stop;       /* stop strings, matched on the decoded text across token
                                      boundaries; the match and what follows are not output */
    int32_t n_stop;
    int skip_special_tokens;       /* in the decoded text; default 1 */

    /* ---- results */
    /* Called on the executor thread: see anvil_event. NULL: no events. */
    void (*on_event)(void *user, const anvil_event *ev);
    void *user;
    int retain_result;             /* keep the result for anvil_executor_wait */
} anvil_request;

void anvil_request_init(anvil_request *r);

/* How a sequence or a request ended. */
typedef enum anvil_request_finish {
    ANVIL_REQUEST_RUNNING = 0,     /* not finished */
    ANVIL_REQUEST_STOP,            /* end-of-sequence token, stop token or stop string */
    ANVIL_REQUEST_LENGTH,          /* max_tokens or the context */
    ANVIL_REQUEST_CANCELLED,       /* anvil_executor_cancel, or the executor was freed */
    ANVIL_REQUEST_ERROR,           /* see anvil_result.status and .error */
} anvil_request_finish;

/* "running", "stop", "length", "cancelled", "error". */
const char *anvil_request_finish_name(anvil_request_finish f);

/* One output sequence (a sample, or a beam). */
typedef struct anvil_sequence_output {
    int32_t *token_ids;            /* [n_tokens] generated ids (an end token that stopped it included) */
    int32_t n_tokens;
    char *text;                    /* decoded text (NUL-terminated; NULL without a tokenizer) */
    size_t text_len;
    anvil_request_finish finish;
    int32_t stop_token;            /* the token that stopped it, else -1 */
    int32_t stop_string;           /* index into the request's stop strings that matched, else -1 */
    /* with logprobs >= 0: [n_tokens] the chosen tokens' log-probabilities, and
     * [n_tokens * n_top] the n_top best alternatives of each step, best first.
     * Log-softmax of the raw model logits, before any penalty, bias or
     * temperature (as vLLM returns by default). NULL otherwise. */
    float *logprobs;
    anvil_token_logprob *top_logprobs;
    int32_t n_top;
    double cumulative_logprob;     /* the sum of the chosen tokens' log-probabilities */
    double score;                  /* beams: HF's sequences_scores; samples: cumulative_logprob */
} anvil_sequence_output;

/* A finished request. */
typedef struct anvil_result {
    uint64_t id;
    anvil_request_finish finish;   /* ERROR or CANCELLED for the request; else the first sequence's */
    anvil_status status;           /* ANVIL_OK unless finish is ERROR */
    char error[256];               /* the message when status is not ANVIL_OK */
    int32_t *prompt_ids;           /* [n_prompt] */
    int32_t n_prompt;
    int32_t n_cached_prompt;       /* prompt tokens whose KV came from the prefix cache */
    int32_t n_preemptions;         /* times the request was preempted and recomputed */
    int32_t n_sequences;           /* n samples, or beam_width beams sorted best first */
    anvil_sequence_output *sequences;
    double queue_s;                /* enqueue to first scheduled */
    double first_token_s;          /* enqueue to first token (0 if none) */
    double total_s;                /* enqueue to finish */
} anvil_result;

/* Frees a result (from anvil_executor_wait). NULL is a no-op. */
void anvil_result_free(anvil_result *r);

typedef enum anvil_event_kind {
    /* New tokens of one sequence (samples only; beam search streams nothing
     * because beams change until the end). */
    ANVIL_EVENT_TOKENS = 0,
    /* The request is finished: result holds every sequence. The last event
     * of every request, exactly once, whatever the reason. */
    ANVIL_EVENT_FINAL,
} anvil_event_kind;

/*
 * What a callback receives. Every pointer is borrowed for the duration of
 * the callback.
 */
struct anvil_event {
    anvil_event_kind kind;
    uint64_t request_id;
    int32_t index;                 /* TOKENS: the sample (0..n-1) */
    const int32_t *token_ids;      /* TOKENS: the new ids */
    int32_t n_tokens;
    const float *logprobs;         /* TOKENS: [n_tokens] with logprobs >= 0, else NULL */
    const anvil_token_logprob *top_logprobs; /* [n_tokens * n_top] */
    int32_t n_top;
    const char *text;              /* TOKENS: newly final text (held back while it may begin a stop
                                      string); "" without a tokenizer */
    size_t text_len;
    anvil_request_finish finish;   /* TOKENS: RUNNING, or how this sample just ended */
    const anvil_result *result;    /* FINAL: the complete result */
    /* The weights that computed the tokens: 0 as loaded, n after the n-th
     * anvil_executor_refit (FINAL: those of the request's last step). */
    uint64_t weights_version;
};

/*
 * Creates an executor over rt and starts its thread. rt is borrowed: from
 * now on only the executor's thread uses it, and it must outlive the
 * executor; the executor takes every KV block of the runtime's pool. tok
 * (optional, borrowed, must outlive the executor) enables text prompts,
 * decoded text and stop strings. opts NULL: defaults. *out is NULL on
 * failure.
 */
anvil_status anvil_executor_create(anvil_runtime *rt, const anvil_tokenizer *tok, const anvil_executor_options *opts,
                                   anvil_executor **out);

/*
 * Queues a request; *id (may be NULL) receives its id (> 0). The request is
 * checked here: an empty prompt, a prompt that fills the context, a token id
 * outside the vocabulary, an out-of-range parameter, stop strings or a text
 * prompt without a tokenizer are ANVIL_ERR_INVALID_ARG (or
 * ANVIL_ERR_CAPACITY for the context and a full queue) with a message, and
 * nothing is queued. A request that can never fit the KV cache is accepted
 * and ends with an `error` result.
 */
anvil_status anvil_executor_enqueue(anvil_executor *ex, const anvil_request *req, uint64_t *id);

/*
 * Cancels a request: at the next step its KV blocks are freed and its final
 * event says `cancelled`. A request that already finished is left alone
 * (ANVIL_OK); an id never issued is ANVIL_ERR_NOT_FOUND.
 */
anvil_status anvil_executor_cancel(anvil_executor *ex, uint64_t id);

/*
 * Waits for a request enqueued with retain_result and hands over its result
 * (*out, taken by the caller: anvil_result_free). Each result can be waited
 * for once; an id without retain_result, or already taken, is
 * ANVIL_ERR_NOT_FOUND.
 */
anvil_status anvil_executor_wait(anvil_executor *ex, uint64_t id, anvil_result **out);

/*
 * The synchronous convenience: enqueues req (as if with retain_result) and
 * waits for its result (*out, taken by the caller: anvil_result_free). A
 * refused request returns its status with *out NULL; a request that ran
 * returns ANVIL_OK, how it ended being in the result. Must not be called
 * from an event callback.
 */
anvil_status anvil_executor_generate(anvil_executor *ex, const anvil_request *req, anvil_result **out);

typedef struct anvil_executor_metrics {
    int32_t queued;                /* requests waiting (new or preempted) */
    int32_t running;               /* requests admitted */
    int32_t running_seqs;          /* their live sequences */
    int32_t kv_blocks_total;
    int32_t kv_blocks_used;        /* referenced by a running sequence */
    int32_t kv_blocks_free;        /* empty */
    int32_t kv_blocks_cached;      /* unreferenced but holding a reusable prefix (evicted LRU first) */
    int32_t kv_block_size;
    int64_t requests_finished;
    int64_t prompt_tokens;         /* prompt tokens of admitted requests */
    int64_t cached_prompt_tokens;  /* ... of which served from the prefix cache */
    int64_t computed_tokens;       /* tokens run through the model (prefill, recompute, decode) */
    int64_t generated_tokens;
    int64_t preemptions;
    int64_t steps;
    double tokens_per_s;           /* generated tokens per second over the last second or so */
    double busy_s;                 /* time spent in steps */
    /* where busy_s went: scheduling, the forward pass (and the device's
     * sampling; on a GPU the wait for it), the tokens (sampling on the
     * host, stop checks, detokenization, the events' callbacks). Under the
     * overlap scheduler forward_s is the launches plus the time the loop
     * waited for the device, and overlapped_s the part of schedule_s and
     * tokens_s that ran while a launched step was on the device (hidden
     * under it; 0 where a launch computes the step first, as on the CPU). */
    double schedule_s, forward_s, tokens_s;
    double overlapped_s;
    int64_t overlap_steps;         /* steps launched while another was on the device */
    int64_t refits;                /* anvil_executor_refit calls that replaced the weights */
    double refit_pause_s;          /* the last one's commit: how long steps waited for the copy */
    /* structured output, part of tokens_s: the grammar's masks (filled and
     * applied to the logits) and its matchers following the sampled tokens;
     * grammar_tokens counts the masks (one a constrained token) */
    double grammar_s;
    int64_t grammar_tokens;
} anvil_executor_metrics;

/* A snapshot of the counters (updated after every step). */
anvil_status anvil_executor_stats(anvil_executor *ex, anvil_executor_metrics *out);

/*
 * Replaces the model's weights with those at `weights` (a Hugging Face
 * folder or an engine file of the same model: anvil_runtime_refit_prepare
 * says what must match) while requests run. The new weights are read and
 * checked on the calling thread (seconds for a large model; the loop keeps
 * stepping meanwhile; o->progress may cancel), then the loop copies them in
 * place between two steps (anvil_runtime_refit_commit: the steps pause for
 * the copy alone) and this call returns. No step mixes old and new weights,
 * and no request fails or is cancelled: requests in flight continue with
 * the new weights from the next step, over the keys and values their
 * earlier tokens computed with the old ones (as TensorRT-LLM's refit and
 * vLLM's weight updates do). The prefix cache forgets every block: no
 * request admitted after the refit reuses KV computed with the old weights,
 * and sequences admitted before it never register blocks again. One refit
 * at a time (a second call waits for the first). On failure the weights
 * are the old ones (ANVIL_ERR_INVALID_ARG: they do not fit, the message
 * naming the first difference; ANVIL_ERR_CANCELLED: o->progress said
 * stop). Must not be called from an event callback.
 */
anvil_status anvil_executor_refit(anvil_executor *ex, const char *weights, const anvil_refit_options *o);

/*
 * Stops the loop: what is still queued or running ends as `cancelled`
 * (final events are delivered on the executor thread before it exits),
 * then the thread is joined and everything is freed, results not yet
 * waited for included. The runtime and tokenizer are not freed. NULL is a
 * no-op.
 */
void anvil_executor_free(anvil_executor *ex);

#ifdef __cplusplus
}
#endif
#endif
