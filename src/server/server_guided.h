/* server_guided.h: a request's structured output fields → a compiled
 * grammar (server_guided.c; docs/server.md, "Structured output"). */
#ifndef ANVIL_SERVER_GUIDED_H
#define ANVIL_SERVER_GUIDED_H

#include <jansson.h>

#include "anvil/grammar.h"
#include "server/server_internal.h"

typedef struct srv_guided_err {
    int status;        /* 400: the client's; 500: memory, the vocabulary */
    const char *param; /* the field (a constant), NULL for a 500 */
    char msg[512];
} srv_guided_err;

/* Reads response_format and guided_json / _regex / _choice / _grammar of
 * body (response_format's type already checked) and compiles the grammar
 * they ask for into *out (taken by the caller; NULL: unconstrained).
 * 0, or -1 with *e filled. */
int srv_guided_map(srv_model *m, json_t *body, anvil_grammar **out, srv_guided_err *e);

/* The model's grammar vocabulary, built on first use (tool calls' grammars
 * use it too: server_tools.c); 0, or -1 with *e filled naming param. */
int srv_guided_vocab(srv_model *m, const anvil_grammar_vocab **out, const char *param, srv_guided_err *e);

/* The options JSON grammars are compiled with (json.dumps' whitespace). */
void srv_guided_json_options(anvil_grammar_options *o);

/* Frees the model's grammar vocabulary (with the model). */
void srv_guided_model_free(srv_model *m);

#endif
