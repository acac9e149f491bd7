/*
 * anvil/server.h: an OpenAI-compatible HTTP server over one or more
 * executors (one per model), built on libmicrohttpd and jansson.
 *
 *     anvil_server_options o;
 *     anvil_server_options_default(&o);
 *     o.port = 8000;
 *     anvil_server *s;
 *     anvil_server_create(&o, &s);
 *     anvil_server_add_model(s, "stories", "models/stories260K", NULL, rt, tok, ex);  // takes all three
 *     anvil_server_add_model_dir(s, "code", "models/tinycode");  // known, not loaded yet
 *     anvil_server_start(s);            // listening; requests are served on MHD's threads
 *     anvil_server_load_model(s, "code");  // loads with o.runtime / o.executor
 *     ... wait for a signal ...
 *     anvil_server_shutdown(s, 10.0);   // stop accepting, finish or cancel in-flight requests
 *     anvil_server_free(s);             // frees the executors, runtimes and tokenizers
 *
 * Endpoints, error mapping and the decisions behind them: docs/server.md.
 *
 * Models are reference-counted entries of a table that changes while
 * serving: the repository API (POST /v2/repository/models/{name}/load and
 * /unload, GET /v2/repository/index) and anvil_server_load_model /
 * anvil_server_unload_model load and unload them at run time.
 *
 * Thread safety: create, start, shutdown and free are called from one
 * thread (the owner); add_model, add_model_dir, load_model, unload_model and
 * set_ready may be called from any thread between create and free; the HTTP
 * handlers run on the server's own threads.
 */
#ifndef ANVIL_SERVER_H
#define ANVIL_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "anvil/executor.h"
#include "anvil/runtime.h"
#include "anvil/status.h"
#include "anvil/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct anvil_server anvil_server;

typedef struct anvil_server_options {
    /* IPv4 or IPv6 address to bind; default "127.0.0.1". An IPv6 address
     * is bound dual-stack (IPV6_V6ONLY off): "::" serves IPv4 and IPv6 */
    const char *host;
    int port;                  /* default 8000; 0: an ephemeral port (see anvil_server_port) */
    /* NULL: no authentication; else "Authorization: Bearer KEY" on /v1/ ("" is refused by create) */
    const char *api_key;
    size_t max_request_bytes;  /* larger bodies are 413; default 1 MiB */
    unsigned max_connections;  /* simultaneous connections; default 1024 */
    /* Key of the repository API (/v2/repository/...): "Authorization: Bearer
     * KEY". NULL: api_key (the repository is as open as /v1/); "" is
     * refused by create (an empty key must not turn authentication off). */
    const char *admin_key;
    /* A folder whose every subfolder holding a model (config.json and a
     * *.safetensors file) is known under the subfolder's name; NULL: none.
     * Scanned by create (which fails when it is not a readable folder) and
     * again by the index and load requests. Models are not loaded by that:
     * see anvil_server_load_model. */
    const char *model_repo;
    /* How the server loads a model folder (anvil_server_load_model and the
     * repository API). NULL: the defaults. Copied by create. */
    const anvil_runtime_options *runtime;
    const anvil_executor_options *executor;
    /* 1: when runtime sets neither kv_cache_tokens nor kv_cache_fraction, a
     * KV cache of 32 contexts, at most a quarter of free memory (as `anvil
     * run --input`); 0: runtime's values as they are. Default 1. */
    int kv_cache_auto;
    /* A chat template text replacing the folders' own (NULL: theirs).
     * Copied by create. */
    const char *chat_template_source;
    /* Unloading a model waits this long for its requests to finish, then
     * cancels them; default 10. */
    double unload_timeout_s;
    /* A stream is written every this many executor steps (its chunks of
     * the steps between go out together), and always at its first token
     * and its end; default 1 (every step). TensorRT-LLM's stream_interval:
     * fewer writes for many streams of a fast model. */
    int stream_interval;
    /* Seconds a connection has to deliver a complete request head (request
     * line and headers), counted from its opening or from the end of its
     * previous response, so also how long an idle keep-alive connection is
     * kept. Past it the connection is closed, whatever it trickles (nginx's
     * client_header_timeout). A connection waiting on the server (a stream
     * between tokens, a request in the queue, a load) is never cut by it.
     * Default 10; 0: the default; < 0: no deadline. */
    double header_timeout_s;
    /* Simultaneous connections from one client address (nginx's
     * limit_conn); a client over it has its new connections closed at once,
     * unanswered. 0 (the default): max_connections / 2, at least 1, so one
     * address never holds every slot. Behind a proxy every client has the
     * proxy's address: set it to max_connections there. */
    unsigned max_connections_per_client;
    /* A model load (anvil_server_load_model, a repository load request)
     * that takes longer fails with ANVIL_ERR_CANCELLED and frees what it
     * made; the model stays UNAVAILABLE with the reason. Checked as the
     * weights arrive (every 16 MiB or so). Default 900; 0: the default;
     * < 0: no deadline. */
    double load_timeout_s;
    /* Origins whose pages may call the server (CORS): comma-separated,
     * e.g. "https://app.example.com,http://localhost:3000", or "*" for
     * any. NULL (the default): none (no CORS header is sent). Copied by
     * create. */
    const char *allowed_origins;
    /* How chat outputs are parsed into tool calls (vLLM's
     * --tool-call-parser): "llama3_json", "hermes" (Qwen2.5/3's
     * <tool_call>), "mistral" ([TOOL_CALLS]), "none" (never), or NULL /
     * "auto" (the default): from each model's chat template and tokenizer.
     * Another name is refused by create. */
    const char *tool_call_parser;
    /* Compiled grammars (response_format, guided_*, forced tool calls) each
     * model keeps for requests that send the same schema, expression or
     * tools again; least recently used first out. Default 64; 0: none
     * (every request compiles). */
    int grammar_cache_entries;
} anvil_server_options;

void anvil_server_options_default(anvil_server_options *o);

/* Creates a server (not yet listening). o NULL: defaults. Strings are
 * copied. *out is NULL on failure. */
anvil_status anvil_server_create(const anvil_server_options *o, anvil_server **out);

/* 1 when name is usable as a model name: 1 to 128 characters of
 * [A-Za-z0-9._-], not starting with '.', without "..". Names come from URLs
 * and name folders of the repository, so nothing else is accepted. */
int anvil_server_model_name_ok(const char *name);

/*
 * Adds a loaded model served under `name` (the request's "model" field). The
 * server takes rt, tok and ex (also on failure): it frees them when the model
 * is unloaded or in anvil_server_free. dir is the model folder (its chat
 * template is loaded from there, and a later load after an unload reads it
 * with the server's options); chat_template_source (may be NULL) is a
 * template text that replaces the folder's. The first model of the table
 * that is loaded is the default for requests without "model".
 * ANVIL_ERR_INVALID_ARG for a bad name (anvil_server_model_name_ok) or one
 * already known.
 */
anvil_status anvil_server_add_model(anvil_server *s, const char *name, const char *dir,
                                    const char *chat_template_source, anvil_runtime *rt, anvil_tokenizer *tok,
                                    anvil_executor *ex);

/*
 * Makes the model folder dir known under `name`, not loaded (state
 * UNAVAILABLE in the index) until anvil_server_load_model or a load request.
 * ANVIL_ERR_INVALID_ARG for a bad name or one already known.
 */
anvil_status anvil_server_add_model_dir(anvil_server *s, const char *name, const char *dir);

/*
 * Loads the model `name` (added with add_model_dir, or a folder of the
 * repository) with the server's runtime and executor options, on the calling
 * thread, and serves it. Idempotent: a model already loaded is ANVIL_OK; a
 * load of the same model in progress on another thread is waited for (and
 * its result returned), never repeated; an unload in progress is waited for,
 * then the model is loaded again. ANVIL_ERR_NOT_FOUND: no such model;
 * ANVIL_ERR_INVALID_ARG: a bad name, or the server is shutting down; else
 * the runtime's error when the folder does not load (its message is also the
 * index's reason).
 */
anvil_status anvil_server_load_model(anvil_server *s, const char *name);

/* Loads every model known (added ones and the repository's) that is not
 * loaded, in the table's order; stops at the first that fails. */
anvil_status anvil_server_load_all(anvil_server *s);

/*
 * The start of a shutdown, callable from any thread at any time (a thread
 * that caught SIGTERM while another still loads the models of the start):
 * loads in progress are cancelled (they fail with ANVIL_ERR_CANCELLED
 * within about 16 MiB of reading), new loads and generation requests are
 * refused, /health answers 503. anvil_server_shutdown does the rest.
 */
void anvil_server_stop_loads(anvil_server *s);

/*
 * Unloads the model `name`: new requests for it are 404 at once; requests in
 * flight get timeout_s seconds (< 0: options.unload_timeout_s) to finish,
 * then are cancelled (streams end with finish_reason "abort"); when the last
 * of them has ended the executor, runtime, KV cache, tokenizer and template
 * are freed, on this thread, before it returns. A model still loading has
 * its load cancelled (the load fails with ANVIL_ERR_CANCELLED, "cancelled
 * by an unload"). Idempotent (a model not loaded is ANVIL_OK);
 * ANVIL_ERR_NOT_FOUND: no such model.
 */
anvil_status anvil_server_unload_model(anvil_server *s, const char *name, double timeout_s);

/*
 * Replaces the weights of the loaded model `name` with those at `weights`
 * (a Hugging Face folder or an engine file of the same model; a relative
 * path is taken in the model repository, and refused without one) while it
 * serves: anvil_executor_refit, on the calling thread (the read takes as
 * long as a load's; requests in flight continue with the new weights from
 * the next step; none fails). ANVIL_ERR_NOT_FOUND: no such model, or
 * nothing at `weights`; ANVIL_ERR_INVALID_ARG: a bad name or path, a model
 * not loaded (or loading, unloading), weights that do not fit (the message
 * names the first difference); ANVIL_ERR_CANCELLED: the model was unloaded
 * or the server shut down meanwhile; else the error reading the weights.
 * On failure the model serves its old weights.
 */
anvil_status anvil_server_refit_model(anvil_server *s, const char *name, const char *weights);

/* ready 0: GET /health answers 503 {"status":"loading"} (e.g. while the
 * models of the start are loading); 1 (the default): 200. */
void anvil_server_set_ready(anvil_server *s, int ready);

/* Binds and starts serving. ANVIL_ERR_IO when the address cannot be bound. */
anvil_status anvil_server_start(anvil_server *s);

/* The port bound (after start), e.g. when options.port was 0. */
int anvil_server_port(const anvil_server *s);

/* Requests being served (HTTP requests that wait on the executor). */
int anvil_server_in_flight(anvil_server *s);

/*
 * Graceful shutdown: stop accepting connections, let requests in flight
 * finish for up to timeout_s seconds, cancel the rest, wait for them to end
 * and stop the server's event loop thread. Idempotent.
 */
void anvil_server_shutdown(anvil_server *s, double timeout_s);

/* Shuts down (timeout 0) if needed and frees everything. NULL is a no-op. */
void anvil_server_free(anvil_server *s);

#ifdef __cplusplus
}
#endif
#endif
