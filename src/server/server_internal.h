/* What the server's files share: the server, its models, one HTTP request in
 * flight, and the metrics. */
#ifndef ANVIL_SERVER_INTERNAL_H
#define ANVIL_SERVER_INTERNAL_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "anvil/chat_template.h"
#include "anvil/grammar.h"
#include "anvil/server.h"

#define SRV_N_BUCKETS 14

/* A latency histogram (seconds), Prometheus-style cumulative on output. */
typedef struct srv_hist {
    uint64_t counts[SRV_N_BUCKETS + 1]; /* the last: +Inf */
    double sum;
    uint64_t n;
} srv_hist;

/* A loaded model. Reference-counted: the server's table holds one
 * reference, and so does every user between srv_model_acquire and
 * srv_model_release (an HTTP request, a srv_gen in flight), so that a
 * model can be unloaded while serving (docs/server.md, "Model repository"). */
typedef struct srv_model {
    struct anvil_server *srv;
    int refs;                  /* guarded by srv->repo_mu */
    int unloading;             /* guarded by srv->repo_mu: no new references */
    int detached;              /* guarded by srv->repo_mu: off the table (an unload gave up waiting) */
    struct srv_model *next_detached;
    char *name;
    anvil_runtime *rt;
    anvil_tokenizer *tok;
    anvil_executor *ex;
    anvil_chat_template *tmpl; /* NULL: the model has none */
    int32_t max_seq_len;
    pthread_mutex_t mu;        /* guards the counters below */
    uint64_t prompt_tokens, generated_tokens;
    uint64_t finished[5];      /* by anvil_request_finish */
    srv_hist ttft, itl, e2e;
    /* structured output (server_guided.c): the grammar vocabulary, built on
     * the first constrained request, under guided_mu */
    pthread_mutex_t guided_mu;
    anvil_grammar_vocab *guided_vocab;
    struct srv_gcache *gcache; /* compiled grammars (server_grammar_cache.c), made with the vocabulary */
    int tool_parser;           /* tool-call syntax from its template (server_tools.h) + 1; 0: not read yet (guided_mu) */
} srv_model;

/* A model's state in the repository index (Triton's names). */
enum { SRV_UNAVAILABLE = 0, SRV_LOADING, SRV_READY, SRV_UNLOADING };

/* A model the server knows: a --model folder or one of the repository's.
 * Entries live as long as the server (so a thread waiting on one never
 * sees it freed); a repository folder that went away is only hidden. */
/* A load in progress (srv_model_load_dir): what can stop it. */
typedef struct srv_load_ctl {
    struct anvil_server *s;
    atomic_int cancel;         /* set by an unload of the model being loaded */
    double deadline;           /* srv_now() time past which it fails; 0: none */
    const char *why;           /* once it stopped: why (a constant string) */
} srv_load_ctl;

typedef struct srv_entry {
    char *name;
    char *dir;
    int state;                 /* SRV_* */
    char *reason;              /* UNAVAILABLE: "unloaded", a load error; NULL: never loaded */
    int in_repo;               /* found in the repository folder */
    int hidden;                /* a repository folder no longer there (and not loaded) */
    int load_failed_seq;       /* bumped by each failed load (for threads that waited on it) */
    anvil_status load_status;  /* of the last failed load */
    uint64_t n_loads, n_unloads; /* completed ones (/metrics) */
    uint64_t n_refits;         /* refits that replaced the weights (/metrics) */
    srv_model *m;              /* READY / UNLOADING: the model (the table holds one reference) */
    srv_load_ctl *loading;     /* LOADING: the load's controls (on the loading thread's stack) */
} srv_entry;

/* A suspended HTTP connection waiting for news (tokens of a stream, the end
 * of a request, a repository load): server_loop.c. Whoever has news calls
 * srv_wake; the event loop resumes the connection. */
typedef struct srv_waiter {
    struct MHD_Connection *conn; /* NULL: no connection (any longer) */
    int fd;                    /* its socket (the hang-up sweep) */
    int suspended, queued;     /* guarded by srv->wake_mu */
    struct srv_waiter *next;   /* the ready list */
} srv_waiter;

/* An open HTTP connection, from libmicrohttpd's STARTED notification to its
 * CLOSED one (its socket_context; server_http.c's on_connection). The
 * event loop closes one that has not delivered a complete request head
 * within the header deadline (docs/server.md, "Connection handling").
 * Only the loop's thread touches these. */
typedef struct srv_conn {
    int fd;                    /* its socket (shutdown() to cut it) */
    double head_deadline;      /* srv_now() by which the request head must be complete (HUGE_VAL: none) */
    unsigned since_pass;       /* the loop's n_passes when it began to wait */
    int waiting_head;          /* on the server's deadline list */
    struct srv_conn *next, *prev; /* the deadline list, earliest deadline first */
} srv_conn;

struct srv_gen;
struct srv_job;
struct srv_tools_delta;

/* A wire format of a generation's output other than OpenAI's completions
 * and chat (server_gen.c's own): Triton's generate extension
 * (server_triton.c) and OpenAI's Responses API (server_responses.c). The
 * OpenAI mapping and the executor are the same; only the bytes differ.
 * Every hook runs with g->mu held. */
typedef struct srv_wire {
    const char *id_prefix;     /* the response id's ("resp"); NULL: OpenAI's */
    /* a stream's first events, before any token; NULL: none */
    void (*start)(struct srv_gen *g);
    /* a piece of one sample's text; finish != RUNNING: its last piece */
    void (*chunk)(struct srv_gen *g, const char *text, size_t len, anvil_request_finish finish);
    /* a stream failed after its 200 went out (msg: why) */
    void (*error)(struct srv_gen *g, const char *msg);
    /* a stream's end: every prompt finished */
    void (*end)(struct srv_job *j);
    /* a non-streamed answer once every prompt finished without failure */
    void (*body)(struct srv_job *j);
    /* a non-streamed failure's body from OpenAI's error object (taken);
     * NULL: OpenAI's as it is */
    json_t *(*error_body)(json_t *openai_error);
    /* a stream's tool-call delta (a call begins, a piece of its arguments:
     * server_tools.h), before the sample's last chunk; NULL: the wire
     * takes no tools (a chat request's tools are then not parsed) */
    void (*tool)(struct srv_gen *g, const struct srv_tools_delta *d);
} srv_wire;

/* One generation request in flight: shared by the event loop that serves it
 * and the executor's callbacks (refcount 2 until the final event). */
typedef struct srv_gen {
    pthread_mutex_t mu;
    srv_waiter w;              /* its connection */
    int refs;
    struct anvil_server *srv;
    srv_model *model;
    int chat, stream, include_usage, n, echo;
    int32_t logprobs;          /* -1 none */
    int top_as_chat;           /* chat logprobs shape */
    char rid[48];
    long created;
    char *chunk_head;          /* a stream's chunks up to the choice's index (NULL: the jansson path) */
    size_t chunk_head_len;
    uint64_t head_version;     /* the weights version chunk_head names */
    uint64_t fp_version;       /* the weights version of what is formatted now (system_fingerprint) */
    json_t *stop;              /* the request's stop field (for nothing but lifetime) */
    /* output: SSE bytes (stream) or the final body */
    char *buf;
    size_t len, cap, sent;
    size_t flush_len;          /* a stream: what may be written yet (stream_interval) */
    char *rec;                 /* a stream's token events not formatted yet (server_gen.c) */
    size_t rec_len, rec_cap, rec_ready; /* rec_ready: of them, those the loop may format and send */
    int done;                  /* final event seen */
    int http_status;           /* of a non-streamed body */
    int *role_sent;            /* [n] chat streams: the role delta went out */
    double t_enqueue, t_last;
    int got_first;
    int cancelled;
    const srv_wire *wire;      /* NULL: OpenAI's completions or chat */
    json_t *wire_ctx;          /* the wire's fields of the request (Triton's id, Responses' echoed fields) */
    char *text;                /* a wire stream's text so far */
    size_t text_len, text_cap;
    int64_t seq;               /* a wire stream's events so far (Responses' sequence_number) */
    int wire_failed;           /* a wire stream's error event went out */
    int wake_every;            /* stream_interval x n: events between wake-ups */
    int unwoken;               /* chunk events since the last wake-up (-1: none yet) */
    anvil_grammar *grammar;    /* structured output (owned; the executor borrows it until the final events) */
    int tool_parser, tools_forced; /* chat with tools (tools_active): outputs parsed into tool_calls (server_tools.h) */
    int tools_active;
    struct srv_tools_stream **tools_st; /* [n_choices] a chat stream with tools: each choice's parser */
    int tools_whole;           /* a wire stream's end: its calls are whole (srv_tools_stream_finish) */
    struct srv_gen *next, *prev; /* the server's list of requests in flight */
} srv_gen;

struct anvil_server {
    anvil_server_options opts;
    char *host, *api_key, *admin_key, *allowed_origins;
    int reply_v2;              /* the loop's: the request at hand is under /v2/ (Triton's error shape) */
    /* the model table (guarded by repo_mu) */
    srv_entry **entries;
    int n_entries;
    srv_model *detached;       /* off the table, freed when their last reference goes */
    char *repo_dir;
    /* how models are loaded */
    anvil_runtime_options rt_opts;
    anvil_executor_options ex_opts;
    char *device;
    char *cpu_isa;                /* rt_opts.cpu_isa, owned */
    char *template_src;
    atomic_int ready;          /* /health 200 (else 503 "loading") */
    int tool_parser;           /* --tool-call-parser: SRV_TOOLS_AUTO (the model's) or a parser (server_tools.h) */
    struct MHD_Daemon *daemon;
    int port;
    atomic_int shutting_down;
    pthread_mutex_t repo_mu;   /* guards the model table and every srv_model's refs */
    pthread_cond_t repo_cv;    /* a reference dropped, a load or unload ended */
    atomic_uint_fast64_t cost_ns; /* CPU time of the server's own work off the event loop (srv_cost_add_times) */
    atomic_uint_fast64_t exempt_ns; /* the executor's work on the event loop (enqueue: srv_cost_exempt) */
    /* the event loop (server_loop.c) */
    pthread_t loop;
    int loop_running;
    clockid_t loop_clock;      /* its CPU clock */
    int wake_fd;               /* eventfd: the ready list got its first entry, or a request for the loop */
    pthread_mutex_t wake_mu;   /* guards the ready list and every waiter's flags */
    srv_waiter *ready_head, *ready_tail;
    int n_suspended;           /* the loop's own */
    atomic_int loop_stop, quiesce_req, closing;
    atomic_int loop_asleep;    /* the loop is in (or about to enter) poll(): srv_wake must write wake_fd */
    atomic_int n_conns;        /* open connections */
    /* connection handling (server_loop.c; the loop's own, no lock) */
    srv_conn *head_first, *head_last; /* waiting for a request head, earliest deadline first */
    unsigned n_closed;         /* connections closed: one closed during MHD_run makes the loop run it again at once */
    unsigned n_passes;         /* MHD_run calls so far */
    atomic_int n_jobs;         /* repository loads and unloads on their threads */
    struct repo_job *jobs;     /* those jobs (server_http.c), guarded by wake_mu */
    pthread_mutex_t mu;        /* guards gens, http counters */
    srv_gen *gens;
    int in_flight;
    uint64_t http_status_counts[600];
};

/* server_model.c */

/* The model named `name` (NULL: the default model), with one more reference,
 * or NULL when no such model is loaded and ready. */
srv_model *srv_model_acquire(struct anvil_server *s, const char *name);
/* Drops a reference taken by srv_model_acquire (NULL: no-op). Never frees
 * on the caller's thread (it may be an executor's): see server_model.c. */
void srv_model_release(srv_model *m);

/* A model over rt, tok and ex (taken, also on failure) with its chat
 * template (template_src, else dir's; none is fine), one reference (the
 * table's). */
anvil_status srv_model_new(struct anvil_server *s, const char *name, const char *dir, const char *template_src,
                           anvil_runtime *rt, anvil_tokenizer *tok, anvil_executor *ex, srv_model **out);
/* Loads the folder dir with the server's options into a new model. */
/* Wakes the connections of the repository jobs (at shutdown: they are
 * answered, done or not). */
void srv_http_wake_jobs(struct anvil_server *s);
anvil_status srv_model_load_dir(struct anvil_server *s, const char *name, const char *dir, srv_load_ctl *ctl,
                                srv_model **out);
/* Frees a model nobody references (the executor first: it must not run
 * while the rest goes). NULL is a no-op. */
void srv_model_free(srv_model *m);

/* CPU time of the calling thread, in ns (CLOCK_THREAD_CPUTIME_ID). */
uint64_t srv_cpu_ns(void);
/* Adds (srv_cpu_ns() - t0) x times to the server's "outside the executor"
 * CPU time (anvil_server_cpu_seconds_total in /metrics): for the server's
 * work on other threads than the event loop, whose CPU time counts whole;
 * times > 1: one of that many alike brackets, the only one timed. */
void srv_cost_add_times(struct anvil_server *s, uint64_t t0, unsigned times);
/* The executor's work done on the event loop since t0 (enqueue): not the
 * server's. */
void srv_cost_exempt(struct anvil_server *s, uint64_t t0);
/* The server's own CPU time so far, in ns. */
uint64_t srv_cost_total(struct anvil_server *s);

/* server_loop.c: the event loop */
/* Starts the loop thread over s->daemon (MHD in external epoll mode). */
anvil_status srv_loop_start(struct anvil_server *s);
/* Asks the loop to stop listening (MHD_quiesce_daemon on its thread). */
void srv_loop_quiesce(struct anvil_server *s);
/* Stops the loop: connections still suspended are resumed and closed first. */
void srv_loop_stop(struct anvil_server *s);
/* On the loop (an MHD callback): suspends w's connection until srv_wake. */
void srv_suspend(struct anvil_server *s, srv_waiter *w);
/* Any thread: w has news; a suspended connection is resumed by the loop. */
void srv_wake(struct anvil_server *s, srv_waiter *w);
/* On the loop (MHD callbacks): k's request head is awaited from now on,
 * for opts.header_timeout_s (a new connection, or a keep-alive one whose
 * response ended), and its socket watched for a hang-up meanwhile (also
 * without a deadline); k NULL: a no-op. */
void srv_conn_await_head(struct anvil_server *s, srv_conn *k);
/* The head arrived (the request's first callback): no deadline any longer. */
void srv_conn_head_done(struct anvil_server *s, srv_conn *k);
/* On the loop: a connection opened on socket fd (STARTED), awaiting its
 * first head; NULL when out of memory (then it has no deadline). */
srv_conn *srv_conn_open(struct anvil_server *s, int fd);
/* On the loop: its connection closed (CLOSED); frees k (NULL: only counts). */
void srv_conn_closed(struct anvil_server *s, srv_conn *k);

/* server_repo.c: the repository (model table, load, unload, index) */
const char *srv_state_name(int state);
/* HTTP: the index as Triton's [{"name","version","state","reason"}]; ready_only: READY ones. */
json_t *srv_repo_index_json(struct anvil_server *s, int ready_only);
/* HTTP: load / unload a model by name; returns the status, *body the answer (an index row or an error). */
int srv_repo_load_http(struct anvil_server *s, const char *name, json_t **body);
int srv_repo_unload_http(struct anvil_server *s, const char *name, json_t **body);
/* HTTP: new weights for a loaded model (weights: the body's path); the
 * status (200, 400, 404, 409, 500, 503), *body the answer. */
int srv_repo_refit_http(struct anvil_server *s, const char *name, const char *weights, json_t **body);
/* /v1/models: the loaded models as OpenAI model objects. */
json_t *srv_repo_models_json(struct anvil_server *s);
/* The loaded models, each with a reference (for /metrics); *n of them; free
 * with srv_repo_release_all. */
srv_model **srv_repo_acquire_all(struct anvil_server *s, int *n);
void srv_repo_release_all(srv_model **ms, int n);
/* Frees the whole table (anvil_server_free, after the event loop stopped). */
void srv_repo_free(struct anvil_server *s);

/* server_http.c: cancels every request in flight on model m (an unload's timeout). */
void srv_http_cancel_model(struct anvil_server *s, srv_model *m);

/* server_gen.c */
double srv_now(void);
void srv_gen_release(srv_gen *g);
/* Cancels every executor request of g (one per prompt) still running and
 * marks g cancelled (a client that went away, a shutdown, an unload); their
 * final events end the response. A no-op once g is done. */
void srv_gen_cancel(srv_gen *g);
void srv_gen_on_event(void *user, const anvil_event *ev);
int srv_gen_append(srv_gen *g, const char *s, size_t n); /* with g->mu held */
/* On the event loop, with g->mu held: formats the token events a wake-up
 * released into the stream's buffer (and releases them to the reader). */
void srv_gen_format_ready(srv_gen *g);

/* server_openai.c: builds a request from a body; on failure fills *status and *err_json */
int srv_openai_generate(struct anvil_server *s, json_t *body, int chat, srv_gen **out, int *status, json_t **err);
/* The same with another wire format's output (wire NULL: OpenAI's) and its
 * fields (wire_ctx, borrowed: the request keeps a copy). */
int srv_openai_generate_wire(struct anvil_server *s, json_t *body, int chat, const srv_wire *wire,
                             json_t *wire_ctx, srv_gen **out, int *status, json_t **err);
json_t *srv_error_json(const char *message, const char *type, const char *param, const char *code);

/* server_wire.c: what the other wire formats share */
/* Appends to g->text (a wire stream's text so far); -1 out of memory. */
int srv_gen_text_add(srv_gen *g, const char *s, size_t n);
/* Appends "data: <o>\n\n" (takes o); event: an SSE event line before it, or NULL. */
void srv_gen_sse(srv_gen *g, const char *event, json_t *o);
/* A JSON string of bytes that may not be valid UTF-8 (a lone byte token:
 * U+FFFD for each bad byte). */
json_t *srv_json_text(const char *s, size_t n);
/* Renames the fields an OpenAI error names, in its message (quoted: only
 * as 'old') and its param, to the names the client sent (Triton's
 * "text_input" for "prompt"): names[i][0] OpenAI's, names[i][1] the
 * client's. */
void srv_error_rename(json_t *err, const char *const (*names)[2], size_t n, int quoted);

/* server_triton.c: KServe v2 and Triton's generate extension */
extern const srv_wire srv_triton_wire;
/* Triton's error body {"error": "text"} (anvil's code beside it) from an
 * OpenAI error object (taken). */
json_t *srv_triton_error(json_t *openai_error);

/* A generate request's body (in) for model `model` as an OpenAI
 * completions body (*oai) and the wire's fields (*ctx), both new; -1 with
 * *status and an OpenAI error object in *err (the field named as the client
 * sent it). stream_endpoint: generate_stream. Needs no model. */
int srv_triton_map(json_t *in, const char *model, int stream_endpoint, json_t **oai, json_t **ctx, int *status,
                   json_t **err);
/* An OpenAI mapping's error about the body srv_triton_map made, in the
 * client's names ('stop' -> 'stop_words'). */
void srv_triton_rename(json_t *err, json_t *ctx);
/* After "/v2/models/": NAME[/versions/1][/VERB]: the name into name[cap],
 * *verb "" (metadata), "ready", "config", "stats", "generate" or
 * "generate_stream" or "infer". 0; -1 not such a path; -2 a version other than 1. */
int srv_triton_path(const char *rest, char *name, size_t cap, const char **verb);
json_t *srv_triton_server_metadata(void);
json_t *srv_triton_model_metadata(const srv_model *m);
json_t *srv_triton_model_config(const srv_model *m, int32_t max_batch_size);
/* Triton's statistics of the n models ms. */
json_t *srv_triton_model_stats(srv_model *const *ms, int n);

/* server_triton_infer.c: POST /v2/models/{m}/infer (KServe tensors) */
extern const srv_wire srv_triton_infer_wire;
/* An infer request (body[0, len): its JSON header of header_len bytes, 0:
 * all of it, then the binary tensors) as a generate body (*gen) and the
 * wire's fields (*infer: "binary" output, "id"), both new; -1 with *status
 * and an OpenAI error object in *err. */
int srv_triton_infer_map(const char *body, size_t len, size_t header_len, json_t **gen, json_t **infer,
                         int *status, json_t **err);

/* server_responses.c: OpenAI's Responses API */
extern const srv_wire srv_responses_wire;
/* A /v1/responses body as an OpenAI chat body (*chat) and the fields the
 * response object repeats (*ctx), both new; -1 with *status and *err (an
 * OpenAI error object). Needs no model. */
int srv_responses_map(json_t *in, json_t **chat, json_t **ctx, int *status, json_t **err);
/* A chat mapping's error in the Responses API's names ('max_tokens' ->
 * 'max_output_tokens', 'messages[2].role' -> 'input[1].role' after
 * instructions); ctx: srv_responses_map's. */
void srv_responses_rename(json_t *err, json_t *ctx);

/* server_cors.c: what browsers and proxies need of every response */
/* 1: origin is in list (--allowed-origins: comma-separated, "*" any). */
int srv_cors_allowed(const char *list, const char *origin);
/* Adds the client's X-Request-Id and, for an allowed Origin, the CORS
 * headers to r, a response to c's request. */
struct MHD_Connection;
struct MHD_Response;
void srv_http_decorate(const struct anvil_server *s, struct MHD_Connection *c, struct MHD_Response *r);
/* An OPTIONS request: 1 a CORS preflight from an allowed origin (its
 * headers added to r), -1 one from another origin, 0 a plain OPTIONS. */
int srv_cors_preflight(const struct anvil_server *s, struct MHD_Connection *c, struct MHD_Response *r);

/* server_metrics.c */
void srv_hist_add(srv_hist *h, double v);
char *srv_metrics_text(struct anvil_server *s);

#endif
