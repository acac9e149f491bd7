/* server_guided.h: a request's structured output fields → a compiled
 * grammar (server_guided.c; docs/server.md, "Structured output"). */
#ifndef ANVIL_SERVER_GUIDED_H
#define ANVIL_SERVER_GUIDED_H

#include <jansson.h>

#include "anvil/grammar.h"
#include "server/server_grammar_cache.h"
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

/* The kinds of compile a cache key names (each with fixed options: JSON's
 * are srv_guided_json_options, the others the engine's defaults). */
enum { SRV_GUIDED_JSON = 'j', SRV_GUIDED_OBJECT = 'o', SRV_GUIDED_REGEX = 'r', SRV_GUIDED_EBNF = 'e' };

/* Compiles text (len bytes; ignored for SRV_GUIDED_OBJECT) as kind against
 * v, or takes the same compile from cache (NULL: compiles). *out is a
 * reference the caller drops with anvil_grammar_free. */
anvil_status srv_guided_compile(srv_gcache *cache, const anvil_grammar_vocab *v, char kind, const char *text,
                                size_t len, anvil_grammar **out);

/* The model's compiled-grammar cache (NULL before its first constrained
 * request) and its counters (zeros before). */
srv_gcache *srv_guided_cache(srv_model *m);
void srv_guided_cache_stats(srv_model *m, srv_gcache_stats *out);

/* Frees the model's grammar vocabulary and cache (with the model). */
void srv_guided_model_free(srv_model *m);

#endif
