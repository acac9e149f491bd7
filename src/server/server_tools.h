/* server_tools.h: tool calls of chat requests (server_tools.c;
 * docs/server.md, "Tool calls"). The parsers that turn a model's output
 * into OpenAI tool_calls, whole or streamed, for the families anvil serves;
 * the parser a model gets; and, for tool_choice "required" or a named
 * function, the grammar and the prompt's tail that force a valid call. */
#ifndef ANVIL_SERVER_TOOLS_H
#define ANVIL_SERVER_TOOLS_H

#include <jansson.h>
#include <stddef.h>

#include "anvil/chat_template.h"
#include "anvil/grammar.h"
#include "anvil/tokenizer.h"

/* The call syntaxes (vLLM's --tool-call-parser names). */
typedef enum srv_tool_parser {
    SRV_TOOLS_NONE = 0,  /* no parsing ("none"); a forced call is a JSON array of {name, parameters} */
    SRV_TOOLS_LLAMA3,    /* "llama3_json": {"name": .., "parameters": {..}} [; ...], after an optional <|python_tag|> */
    SRV_TOOLS_HERMES,    /* "hermes": <tool_call>{"name": .., "arguments": {..}}</tool_call>, several (Qwen2.5/3) */
    SRV_TOOLS_MISTRAL,   /* "mistral": [TOOL_CALLS][{"name": .., "arguments": {..}}, ...] */
    SRV_TOOLS_AUTO = -1  /* the option's default: from the model's template and tokenizer */
} srv_tool_parser;

/* The parser of a --tool-call-parser name ("auto" included); -2: unknown. */
int srv_tools_parser_from_name(const char *name);
const char *srv_tools_parser_name(int parser);

/* The parser for a model: markers its chat template prints for tools and
 * tool calls (<tool_call>, [TOOL_CALLS], <|python_tag|>, Llama 3's
 * "parameters" JSON), then tokens of its vocabulary; NONE when neither
 * tells. Either may be NULL. */
int srv_tools_detect(const anvil_chat_template *t, const anvil_tokenizer *tok);

/* A parsed output: the text before the calls (content, content_len bytes;
 * the whole text when there is no call) and the calls, a JSON array of
 * {"name": string, "arguments": string (JSON text)}; NULL when none. */
typedef struct srv_tools_result {
    char *content;
    size_t content_len;
    json_t *calls;
} srv_tools_result;

void srv_tools_result_free(srv_tools_result *r);

/*
 * Parses a whole output. forced: the output is what the forcing grammar of
 * srv_tools_force made (the JSON after the prompt's tail). A call that does
 * not parse (malformed JSON, no name) leaves the whole text as content, no
 * calls. 0, or -1 out of memory.
 */
int srv_tools_parse(int parser, int forced, const char *text, size_t len, srv_tools_result *out);

/* The call markers (server_tools.c, server_tools_stream.c). */
#define SRV_TOOLS_HERMES_OPEN "<tool_call>"
#define SRV_TOOLS_HERMES_CLOSE "</tool_call>"
#define SRV_TOOLS_MISTRAL_OPEN "[TOOL_CALLS]"
#define SRV_TOOLS_PYTHON_TAG "<|python_tag|>"

/*
 * The same, streamed (server_tools_stream.c): pieces pushed as they come
 * out of the model, deltas handed back at once. Content that can no longer
 * be part of a call goes out as it comes; from the first byte that may
 * start a call marker the text is held. Once a call's name is read, the
 * call goes out (SRV_TOOLS_DELTA_CALL), then its arguments as they are
 * generated (SRV_TOOLS_DELTA_ARGS), in the compact JSON text the whole
 * parse returns: a piece goes out only when no later byte can change it
 * (a number when it ends, a string's characters as they come, a brace
 * when it closes). For an output whose calls parse, the content and each
 * call's pieces put together are what srv_tools_parse of the whole text
 * gives, however the text was cut. A held marker that turns out not to
 * start a call (the whole parse finds none) goes out as content. A call
 * that breaks after its name went out (cut by max_tokens, malformed JSON)
 * keeps what went out; the rest of the output is dropped, and the end
 * reports the calls as not whole (finish_reason: the generation's own,
 * not "tool_calls"). docs/server.md, "Tool calls".
 */
typedef enum srv_tools_delta_kind {
    SRV_TOOLS_DELTA_CONTENT = 0, /* text: content */
    SRV_TOOLS_DELTA_CALL,        /* call index begins: text is its name */
    SRV_TOOLS_DELTA_ARGS,        /* text: the next piece of call index's arguments */
} srv_tools_delta_kind;

typedef struct srv_tools_delta {
    int kind;
    int index;        /* the call's, from 0 (CALL, ARGS) */
    const char *text; /* borrowed from the stream until its next push, finish or free */
    size_t len;
} srv_tools_delta;

typedef struct srv_tools_stream srv_tools_stream;

/* A stream for one output (forced: as srv_tools_parse's); NULL out of memory. */
srv_tools_stream *srv_tools_stream_new(int parser, int forced);
void srv_tools_stream_free(srv_tools_stream *s); /* NULL: no-op */
/* Appends text; *ev / *n_ev: the deltas to send now, in order (valid
 * until the next call). 0, or -1 out of memory (the stream is then
 * content only: what is held is lost, later text passes through). */
int srv_tools_stream_push(srv_tools_stream *s, const char *text, size_t len, const srv_tools_delta **ev,
                          int *n_ev);
/* The end: the last deltas (the content held, the arguments' last piece),
 * and *whole: 1 when calls went out and each is whole (what the whole parse
 * returns): the finish reason is then "tool_calls". A second finish gives
 * nothing. 0, or -1 out of memory. */
int srv_tools_stream_finish(srv_tools_stream *s, const srv_tools_delta **ev, int *n_ev, int *whole);
/* Calls that went out so far. */
int srv_tools_stream_calls(const srv_tools_stream *s);

/* A tool call's id: "call_" and 24 letters and digits; Mistral's templates
 * take only 9 letters and digits, so its parser's are that. buf >= 32. */
void srv_tools_call_id(int parser, char *buf, size_t cap);

/*
 * A forced call (tool_choice "required", or name non-NULL for a named
 * function; tools checked by the caller: an array of {"type": "function",
 * "function": {"name", "parameters"?}}): the JSON schema of the parser's
 * call object(s) whose arguments follow each tool's parameters (only the
 * named tool's), compiled against v with opts into *out, and the text that
 * ends the prompt (*tail, a constant: "<tool_call>\n", "[TOOL_CALLS]" or
 * ""), after which the model writes the JSON. parallel 0 or a name: one
 * call. 0, or
 * -1 with the engine's message in msg (the status in *status: 400 a schema
 * it refuses, 500 memory).
 */
int srv_tools_force(const anvil_grammar_vocab *v, const anvil_grammar_options *opts, int parser, json_t *tools,
                    const char *name, int parallel, anvil_grammar **out, const char **tail, int *status,
                    char *msg, size_t cap);

/* The same through the model's compiled-grammar cache (cache: server_guided.h's
 * srv_guided_cache; JSON compiled with srv_guided_json_options, not opts'). */
struct srv_gcache;
int srv_tools_force_cached(struct srv_gcache *cache, const anvil_grammar_vocab *v, int parser, json_t *tools,
                           const char *name, int parallel, anvil_grammar **out, const char **tail, int *status,
                           char *msg, size_t cap);

/* The forcing schema itself (the text srv_tools_force compiles; malloc'd),
 * for tests. NULL out of memory. */
char *srv_tools_force_schema(int parser, json_t *tools, const char *name, int parallel);

#endif
