/* The OpenAI request mapping of server_openai.c and the generation job of
 * server_gen.c. The mapping (body -> validated request: sampling, stops,
 * prompts as token ids, n, best_of, echo, logprobs) needs no executor and no
 * HTTP, so that tests/fuzz/fuzz_server_request.c runs it on any bytes; the
 * job is what the executor's callbacks fill and the HTTP side sends. */
#ifndef ANVIL_SERVER_OPENAI_H
#define ANVIL_SERVER_OPENAI_H

#include <jansson.h>
#include <stdint.h>

#include "anvil/executor.h"
#include "server/server_internal.h"

#define SRV_MAX_STOP 16        /* stop strings (OpenAI allows 4; vLLM any) */
#define SRV_MAX_PROMPTS 128    /* prompts in one completions request */
#define SRV_MAX_N 128          /* n and best_of */
#define SRV_MAX_LOGIT_BIAS 300 /* OpenAI's limit */
#define SRV_MAX_LOGPROBS 20

/* One prompt of a request. */
typedef struct srv_prompt {
    int32_t *ids;              /* [n_ids], checked against the vocabulary */
    int32_t n_ids;
    char *echo;                /* with echo: the prompt's text (the string sent, or its ids decoded) */
    size_t echo_len;
} srv_prompt;

/* A validated request, before the executor. Owns everything it points to. */
typedef struct srv_mapped {
    srv_model *model;          /* borrowed */
    int chat, stream, include_usage, echo;
    int32_t n;                 /* choices per prompt */
    int32_t best_of;           /* samples generated per prompt (>= n); the n best are returned */
    int32_t logprobs;          /* what the client asked for: -1 none, else the top-k count */
    anvil_request req;         /* all but the prompt; its pointers go into this struct */
    char *stop[SRV_MAX_STOP];
    anvil_logit_bias *bias;
    srv_prompt *prompts;
    int32_t n_prompts;
    const srv_wire *wire;      /* the output's wire format (NULL: OpenAI's); set by the caller */
    json_t *wire_ctx;          /* its fields (borrowed) */
    anvil_grammar *grammar;    /* structured output (server_guided.c), req.grammar; NULL: none */
    int tools_active;          /* chat tools with tool_choice other than none: outputs parsed (server_tools.h) */
    int tool_parser;           /* the call syntax */
    int tools_forced;          /* required / a named function: grammar holds the forcing grammar */
} srv_mapped;

/*
 * Checks an OpenAI body (an object from json_loadb) for /v1/completions
 * (chat 0) or /v1/chat/completions (chat 1) against model m: types and
 * ranges of every field, the prompt tokenized (or the messages rendered
 * with m's chat template, then tokenized), token ids inside the vocabulary,
 * the context. Returns 0 and *out (free with srv_mapped_free), or -1 with
 * *out NULL, *status the HTTP status and *err an OpenAI error object (taken
 * by the caller) naming the parameter. Never touches the executor.
 */
int srv_openai_map(srv_model *m, json_t *body, int chat, srv_mapped **out, int *status, json_t **err);

/* Frees a mapped request; NULL is a no-op. */
void srv_mapped_free(srv_mapped *q);

/*
 * The body's "model" as a name: NULL (the default model) when absent or
 * null; -1 with *status / *err when it is not a string or holds a NUL.
 */
int srv_openai_model_name(json_t *body, const char **name, int *status, json_t **err);

/* One executor request of a job: one prompt, best_of samples. */
typedef struct srv_sub {
    struct srv_job *job;
    int32_t prompt;            /* its index in the request */
    uint64_t id;               /* the executor's id, 0 until enqueued */
    int enqueued, finished, cancel_sent;
} srv_sub;

/* A srv_gen (first, so server_http.c sees one) with what a request of
 * several prompts, echo and best_of needs. srv_gen_cancel cancels every
 * sub-request; one that ends cancelled or failed (or g.cancelled seen at an
 * event) cancels the others. */
typedef struct srv_job {
    srv_gen g;
    int32_t n_prompts, best_of, n_choices; /* n_choices = n_prompts * g.n */
    srv_sub *subs;             /* [n_prompts] */
    int32_t n_finished;
    int start_failed;          /* an enqueue failed: the others are cancelled, nothing is output */
    char **echo;               /* [n_prompts] echo text or NULL */
    size_t *echo_len;
    json_t *choices;           /* non-streamed: [n_choices] filled as prompts finish */
    int64_t prompt_tokens, completion_tokens;
    int error_sent;            /* streamed: an error chunk went out */
    anvil_request_finish failure; /* RUNNING, or ERROR / CANCELLED of some sub-request */
    anvil_status failure_status;
    char failure_msg[256];
} srv_job;

/*
 * A job for q on server s (NULL: no cost accounting) with one reference,
 * the caller's; each sub-request takes one more (under g.mu, before its
 * enqueue) that its final event drops. The job takes over a model
 * reference (srv_model_acquire) the caller holds on q->model: the last
 * srv_gen_release drops it, as does a failure here. With stream and echo,
 * the prompts' text is already in its SSE buffer. NULL when out of memory.
 */
srv_job *srv_job_new(struct anvil_server *s, const srv_mapped *q);

/* An enqueue failed after others succeeded: marks the job dead, cancels
 * what was enqueued (their final events still come and drop their
 * references). */
void srv_job_abort(srv_job *j);

#endif
