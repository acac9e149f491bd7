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
 *     anvil_server_start(s);            // listening; requests are served on MHD's threads
 *     ... wait for a signal ...
 *     anvil_server_shutdown(s, 10.0);   // stop accepting, finish or cancel in-flight requests
 *     anvil_server_free(s);             // frees the executors, runtimes and tokenizers
 *
 * Endpoints, error mapping and the decisions behind them: docs/server.md.
 *
 * Thread safety: create, add_model, start, shutdown and free are called from
 * one thread (the owner); the HTTP handlers run on the server's own threads.
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
    const char *host;          /* IPv4 address to bind; default "127.0.0.1" */
    int port;                  /* default 8000; 0: an ephemeral port (see anvil_server_port) */
    const char *api_key;       /* NULL or "": no authentication; else "Authorization: Bearer KEY" on /v1/ */
    size_t max_request_bytes;  /* larger bodies are 413; default 1 MiB */
    unsigned max_connections;  /* simultaneous connections; default 1024 */
} anvil_server_options;

void anvil_server_options_default(anvil_server_options *o);

/* Creates a server (not yet listening). o NULL: defaults. Strings are
 * copied. *out is NULL on failure. */
anvil_status anvil_server_create(const anvil_server_options *o, anvil_server **out);

/*
 * Adds a model served under `name` (the request's "model" field). The
 * server takes rt, tok and ex (also on failure): it frees them in
 * anvil_server_free. dir is the model folder (its chat template is loaded
 * from there); chat_template_source (may be NULL) is a template text that
 * replaces the folder's. The first model added is the default for requests
 * without "model". Must be called before anvil_server_start.
 */
anvil_status anvil_server_add_model(anvil_server *s, const char *name, const char *dir,
                                    const char *chat_template_source, anvil_runtime *rt, anvil_tokenizer *tok,
                                    anvil_executor *ex);

/* Binds and starts serving. ANVIL_ERR_IO when the address cannot be bound. */
anvil_status anvil_server_start(anvil_server *s);

/* The port bound (after start), e.g. when options.port was 0. */
int anvil_server_port(const anvil_server *s);

/* Requests being served (HTTP requests that wait on the executor). */
int anvil_server_in_flight(anvil_server *s);

/*
 * Graceful shutdown: stop accepting connections, let requests in flight
 * finish for up to timeout_s seconds, cancel the rest, wait for them to end
 * and stop the HTTP threads. Idempotent.
 */
void anvil_server_shutdown(anvil_server *s, double timeout_s);

/* Shuts down (timeout 0) if needed and frees everything. NULL is a no-op. */
void anvil_server_free(anvil_server *s);

#ifdef __cplusplus
}
#endif
#endif
